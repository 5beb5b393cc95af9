"""How ASAG reaches the attention of Forge Neo's block-replacement DiTs (Flux, Chroma, Qwen-Image).

What Neo offers (backend/nn/flux.py, chroma.py, qwen.py, Feb. 2026): the model's block loop looks up
``transformer_options["patches_replace"]["dit"][("double_block" | "single_block", i)]`` and, when present,
calls ``fn(args, {"original_block": wrap})`` with ``args`` holding ``img``, ``txt`` (double blocks), ``vec``,
``pe`` (Flux/Chroma also ``attn_mask``, ``transformer_options``), expecting ``{"img", "txt"}`` / ``{"img"}``
back. Inside, the blocks call a global of the module that defines them, text tokens first:

* Flux / Chroma (Chroma imports Flux's block classes): ``attention(q, k, v, pe, mask, transformer_options)``
  with q, k, v (B, H, L, D), heads split; it applies RoPE (``apply_rope(q, k, pe)``), returns (B, L, H·D);
* Qwen-Image: ``attention_function(q, k, v, heads, mask)`` with (B, L, H·D), heads merged, RoPE already
  applied; returns (B, L, H·D). Its blocks are ``("double_block", i)``, ``block.i`` in the grammar.

Nothing consults ``patches_replace["attn1"]``. So for each selected block our replacement, present only in
the *copy* of the model options that the weak call gets, rebinds that module global to ASAG's joint
attention (:mod:`asag_lib.joint`) for the duration of the block call, and puts back exactly what was there
in ``finally`` (unless someone else rebound it meanwhile). It wraps whatever replacement another extension
had at that key, so theirs still runs in the weak pass; the main pass never sees ours. Neo runs one
generation at a time, so no other forward runs while the global is rebound.

Text length: a double block gets ``txt``; Flux's single blocks see text+image concatenated, so a
pass-through recorder on double block 0 (wrapping whatever is there) notes the text length of each weak
forward.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from einops import rearrange
from torch import nn

from asag_lib.attention import KernelOptions
from asag_lib.joint import joint_sinkhorn_attention
from asag_lib.layers import DitFamily, DitRef

_MISSING = object()


#: Per family: the module global the blocks call, and the other globals our replacement needs.
_GLOBALS: dict[str, tuple[str, tuple[str, ...]]] = {
    "flux": ("attention", ("apply_rope",)),
    "chroma": ("attention", ("apply_rope",)),
    "qwen": ("attention_function", ()),
}


def attention_module(model: nn.Module, family: DitFamily) -> types.ModuleType | None:
    """The module whose attention global the blocks call, if it has the documented names."""
    name, needed = _GLOBALS[family.name]
    for _, attr, _ in family.stacks:
        blocks = getattr(model, attr, None)
        if blocks is not None and len(blocks):
            module = sys.modules.get(type(blocks[0]).__module__)
            if module is not None and all(callable(getattr(module, n, None)) for n in (name, *needed)):
                return module
            return None
    return None


class WeakPassHook:
    """The block replacements of one sampling pass; :meth:`options` gives the weak call's model options."""

    def __init__(self, family: DitFamily, refs: list[DitRef], module: types.ModuleType, kernel: KernelOptions,
                 joint: str):
        self.family, self.refs, self.module = family, list(refs), module
        self.kernel, self.joint = kernel, joint
        self.global_name = _GLOBALS[family.name][0]
        self.n_text: int | None = None

    # --- the attention that runs inside a selected block
    def _attention(self, n_text: int) -> Callable:
        kernel, joint = self.kernel, self.joint

        def attend(q, k, v, mask):
            with torch.no_grad():
                return joint_sinkhorn_attention(q, k, v, n_text=n_text, mode=joint, mask=mask,
                                                iterations=kernel.iterations, tol=kernel.tol, rescale=kernel.rescale)

        if self.global_name == "attention_function":  # Qwen: heads merged, RoPE already applied

            def asag_joint_attention_function(q, k, v, heads, mask=None, *args, **kwargs):
                split = [rearrange(t, "b l (h d) -> b h l d", h=heads) for t in (q, k, v)]
                return rearrange(attend(*split, mask), "b h l d -> b l (h d)")

            return asag_joint_attention_function

        apply_rope = self.module.apply_rope

        def asag_joint_attention(q, k, v, pe=None, mask=None, transformer_options=None, **kwargs):
            if pe is not None:
                q, k = apply_rope(q, k, pe)
            return rearrange(attend(q, k, v, mask), "b h l d -> b l (h d)")

        return asag_joint_attention

    def _run_swapped(self, inner: Callable, args: dict, extra: dict, n_text: int) -> Any:
        module, name = self.module, self.global_name
        previous = module.__dict__.get(name, _MISSING)
        ours = self._attention(n_text)
        setattr(module, name, ours)
        try:
            return inner(args, extra)
        finally:
            if module.__dict__.get(name) is ours:
                if previous is _MISSING:
                    delattr(module, name)
                else:
                    setattr(module, name, previous)

    # --- replacement functions
    def _replacement(self, ref: DitRef, theirs: Callable | None) -> Callable:
        def inner(args: dict, extra: dict) -> Any:
            return theirs(args, extra) if theirs is not None else extra["original_block"](args)

        def asag_dit_block(args: dict, extra: dict) -> Any:
            if "txt" in args:  # a double block: text tokens come separately
                self.n_text = int(args["txt"].shape[1])
            if self.n_text is None:
                raise RuntimeError(f"ASAG: the text length is unknown at {ref} (no double block ran first)")
            return self._run_swapped(inner, args, extra, self.n_text)

        asag_dit_block.asag = True
        return asag_dit_block

    def _recorder(self, theirs: Callable | None) -> Callable:
        def asag_dit_recorder(args: dict, extra: dict) -> Any:
            self.n_text = int(args["txt"].shape[1])
            return theirs(args, extra) if theirs is not None else extra["original_block"](args)

        asag_dit_recorder.asag = True
        return asag_dit_recorder

    def active(self) -> contextlib.AbstractContextManager:
        """Nothing to install around the weak call: the replacements travel in its options."""
        return contextlib.nullcontext()

    def options(self, live: Mapping) -> dict:
        """A copy of the live model options with our block replacements; the live dict is untouched (the
        top level, ``transformer_options``, ``patches_replace`` and its ``dit`` dict are new dicts)."""
        options = dict(live)
        transformer_options = dict(options.get("transformer_options") or {})
        patches_replace = dict(transformer_options.get("patches_replace") or {})
        dit = dict(patches_replace.get("dit") or {})
        self.n_text = None
        keys = {self.family.host_key(ref): ref for ref in self.refs}
        for key, ref in keys.items():
            dit[key] = self._replacement(ref, dit.get(key))
        first_double = ("double_block", 0)
        if any(ref.stack == "single" for ref in self.refs) and first_double not in keys:
            dit[first_double] = self._recorder(dit.get(first_double))
        patches_replace["dit"] = dit
        transformer_options["patches_replace"] = patches_replace
        options["transformer_options"] = transformer_options
        return options
