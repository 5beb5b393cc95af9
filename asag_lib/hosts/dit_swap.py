"""How ASAG reaches Anima's attention on Forge Neo: a per-instance swap of ``self_attn.attn_op``.

Anima (backend/nn/anima.py, Feb. 2026) has no block-replacement hook. Each block's ``self_attn`` is a
``SelfCrossAttention`` whose ``attn_op(q, k, v, transformer_options)`` is an instance attribute (set in its
``__init__``), called with q, k, v as (B, …, H, D) — token dims, then heads — and returning (B, S, H·D);
``is_selfattn`` tells the self-attention (image tokens only, text comes through ``cross_attn``). So the
plain ASAG kernel applies (no joint attention), and :meth:`SwapHook.active` sets our op on the selected
blocks' ``self_attn`` for the duration of the weak call only, then puts back exactly what each instance had
(unless someone else replaced it meanwhile). The class and the module are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from einops import rearrange
from torch import nn

from asag_lib.attention import KernelOptions, swapped_attribute
from asag_lib.layers import DitFamily, DitRef
from asag_lib.sinkhorn import sinkhorn_attention


def swappable(model: nn.Module, family: DitFamily) -> bool:
    """Whether every block has a self-attention ``self_attn`` with an ``attn_op``, as documented."""
    blocks = getattr(model, family.stacks[0][1], None)
    return bool(blocks) and all(
        getattr(getattr(b, "self_attn", None), "is_selfattn", False) and callable(getattr(b.self_attn, "attn_op", None))
        for b in blocks)


class SwapHook:
    """The selected blocks' ``self_attn`` modules and the op that replaces theirs in the weak call."""

    def __init__(self, family: DitFamily, refs: list[DitRef], model: nn.Module, kernel: KernelOptions):
        blocks = getattr(model, family.stacks[0][1])
        self.family, self.refs, self.kernel = family, list(refs), kernel
        self.modules = [blocks[ref.index].self_attn for ref in refs]

    def _op(self):
        kernel = self.kernel

        def asag_attn_op(q, k, v, transformer_options=None, **kwargs):
            heads = q.shape[-2]
            split = [rearrange(t.reshape(t.shape[0], -1, heads, t.shape[-1]), "b s h d -> b h s d") for t in (q, k, v)]
            with torch.no_grad():
                out = sinkhorn_attention(*split, iterations=kernel.iterations, tol=kernel.tol, rescale=kernel.rescale)
            return rearrange(out, "b h s d -> b s (h d)")

        return asag_attn_op

    def options(self, live: Mapping) -> Mapping:
        """The weak call runs with the live options as they are (the swap is on instances, see active)."""
        return live

    def active(self) -> contextlib.AbstractContextManager:
        """The kernel as each selected block's `attn_op` during the weak call, restored exactly after."""
        op = self._op()
        return swapped_attribute(self.modules, "attn_op", lambda module: op)
