"""The attn1 replacement and the transient, instance-level patch that installs it.

Two call shapes are served by one computation:
- A1111 (ldm/sgm `CrossAttention` modules): a replacement `forward(self, x, context=None, mask=None, **kw)`
  that projects with the module's own layers (so LoRA applies), runs the Sinkhorn kernel, then `to_out`.
- Forge/ComfyUI attn1 replace functions: `fn(q, k, v, extra_options, mask=None)` with q, k, v laid out
  as (batch, tokens, heads * dim_head).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from asag_lib import weak
from asag_lib.sinkhorn import sinkhorn_attention

_MISSING = object()

ContextTransform = Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]
"""(module, context) -> (context for k, context for v); A1111 applies hypernetworks this way."""


@dataclass(frozen=True)
class KernelOptions:
    """What the weak-pass kernel needs from the user's settings (and, for some weak models, the job)."""

    iterations: int = 2
    tol: float = 1e-3
    rescale: bool = True
    weak_model: str = "asag"
    blur_sigma: float = 10.0
    seed: int = 0
    """Job seed, for the 'random' weak model."""
    latent_hw: tuple[int, int] | None = None
    """Latent (h, w) of the pass, for the 'blur' weak model's token grid."""
    telemetry: Any = None
    """A `telemetry.Recorder` when telemetry is on: the kernel then also returns its statistics."""

    @classmethod
    def from_settings(cls, settings: Any, **job: Any) -> KernelOptions:
        """`job`: seed, latent_hw, telemetry (whatever the adapter knows about the pass)."""
        return cls(iterations=settings.iterations, tol=settings.tolerance, rescale=settings.plan == "rows",
                   weak_model=getattr(settings, "weak_model", "asag"),
                   blur_sigma=getattr(settings, "blur_sigma", 10.0), **job)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, layer: Any = None) -> Tensor:
        """The weak model on (batch, heads, tokens, dim) tensors; inference only (the weak pass).

        `layer` identifies the layer for telemetry (a module or a Forge block key). The output is computed
        the same way with telemetry on or off; the statistics come from a separate small call."""
        with torch.no_grad():
            if self.weak_model == "asag":
                out = sinkhorn_attention(q, k, v, iterations=self.iterations, tol=self.tol, scale=scale,
                                         rescale=self.rescale)
            else:
                out = weak.WEAK_MODELS[self.weak_model](
                    q, k, v, scale=scale, iterations=self.iterations, tol=self.tol, rescale=self.rescale,
                    seed=self.seed, sigma=self.blur_sigma,
                    grid=weak.token_grid(q.shape[-2], self.latent_hw) if self.weak_model == "blur" else None)
            if self.telemetry is not None:
                stats = weak.plan_stats(self.weak_model, q, k, pick=self.telemetry.pick(layer, q.shape[0] * q.shape[1]),
                                        scale=scale, iterations=self.iterations, tol=self.tol, seed=self.seed)
                if stats is not None:
                    self.telemetry.record(layer, k.shape[-2], stats)
        return out


def split_heads(x: Tensor, heads: int) -> Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def merge_heads(x: Tensor) -> Tensor:
    return rearrange(x, "b h n d -> b n (h d)")


def sinkhorn_self_attention(module: nn.Module, x: Tensor, context: Tensor | None, options: KernelOptions,
                            context_transform: ContextTransform | None = None) -> Tensor:
    """The body of an ldm/sgm `CrossAttention` forward with the Sinkhorn plan in place of softmax.

    A non-None context (ControlNet reference concatenates extra tokens) gives more keys than queries.
    """
    context = x if context is None else context
    context_k, context_v = context_transform(module, context) if context_transform else (context, context)
    heads = module.heads
    q = split_heads(module.to_q(x), heads)
    k = split_heads(module.to_k(context_k), heads)
    v = split_heads(module.to_v(context_v), heads)
    out = merge_heads(options.attend(q, k, v, scale=getattr(module, "scale", None), layer=module))
    return module.to_out(out)


def make_attn1_forward(options: KernelOptions, context_transform: ContextTransform | None = None) -> Callable:
    """A forward with the hosts' replacement signature `(self, x, context=None, mask=None, **kwargs)`.

    Extra sgm arguments (additional_tokens, n_times_crossframe_attn_in_self) are accepted and ignored,
    as A1111's own replacement forwards do.
    """

    def asag_attn1_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                           **kwargs: Any) -> Tensor:
        return sinkhorn_self_attention(self, x, context, options, context_transform)

    return asag_attn1_forward


def make_row_selective_forward(weak: slice, batch_sizes: set[int], options: KernelOptions,
                               context_transform: ContextTransform | None = None,
                               on_regrouped: Callable[[], None] | None = None) -> Callable:
    """attn1 forward for a batch that carries the weak rows inside the main call: rows in `weak` get the
    Sinkhorn plan, the others the module's class-level forward (what they would run without ASAG).

    A batch whose size is not in `batch_sizes` (something regrouped it) runs unchanged and calls
    `on_regrouped`, so the caller can drop that step's guidance.
    """

    def asag_attn1_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                           **kwargs: Any) -> Tensor:
        original = type(self).forward.__get__(self)
        if x.shape[0] not in batch_sizes or (context is not None and context.shape[0] != x.shape[0]):
            if on_regrouped is not None:
                on_regrouped()
            return original(x, context, mask, **kwargs)
        start, stop = weak.start, weak.stop
        keep = torch.cat([x[:start], x[stop:]])
        keep_context = None if context is None else torch.cat([context[:start], context[stop:]])
        normal = original(keep, keep_context, mask, **kwargs)
        perturbed = sinkhorn_self_attention(self, x[start:stop], None if context is None else context[start:stop],
                                            options, context_transform)
        return torch.cat([normal[:start], perturbed.to(normal.dtype), normal[start:]])

    return asag_attn1_forward


@contextlib.contextmanager
def swapped_attribute(modules: Sequence[nn.Module], name: str, value_for: Callable[[nn.Module], Any]) -> Iterator[None]:
    """Set the instance attribute `name` of each module to `value_for(module)` for the duration of the block.

    The previous instance attribute (if any) is put back exactly in `finally`, also on exceptions and
    interrupts; class attributes are never touched. A module whose attribute someone else replaced
    meanwhile keeps theirs.
    """
    installed: list[tuple[nn.Module, object, object]] = []
    try:
        for module in modules:
            previous = module.__dict__.get(name, _MISSING)
            value = value_for(module)
            setattr(module, name, value)
            installed.append((module, previous, value))
        yield
    finally:
        for module, previous, value in reversed(installed):
            if module.__dict__.get(name) is not value:
                continue
            if previous is _MISSING:
                delattr(module, name)
            else:
                setattr(module, name, previous)


def patched_forwards(modules: Sequence[nn.Module], forward: Callable) -> contextlib.AbstractContextManager:
    """Bind `forward` as the instance attribute of each module for the duration of the block.

    The previous instance forward (e.g. Hypertile's wrapper) is put back exactly; the class-level forward,
    which A1111 swaps for its optimisations, is never touched (`swapped_attribute`).
    """
    return swapped_attribute(modules, "forward", lambda module: types.MethodType(forward, module))


def has_patch(module: nn.Module) -> bool:
    """Whether an ASAG forward is currently bound on the module (for diagnostics and tests)."""
    forward = module.__dict__.get("forward")
    return getattr(getattr(forward, "__func__", None), "__name__", "") == "asag_attn1_forward"


def make_attn1_replace(options: KernelOptions) -> Callable:
    """A Forge/ComfyUI attn1 replace function `fn(q, k, v, extra_options, mask=None)`.

    q, k, v arrive as (batch, tokens, heads * dim_head) with heads not split; keys may outnumber queries.
    """

    def asag_attn1_replace(q: Tensor, k: Tensor, v: Tensor, extra_options: dict, mask: Tensor | None = None) -> Tensor:
        heads = int(extra_options["n_heads"])
        if q.shape[-1] % heads:
            raise ValueError(f"ASAG attn1: inner dim {q.shape[-1]} is not divisible by n_heads={heads}")
        out = options.attend(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                             layer=_forge_layer_key(extra_options))
        return merge_heads(out)

    return asag_attn1_replace


def _forge_layer_key(extra_options: dict) -> tuple | None:
    """(block name, block id, transformer index): the explicit attn1 key the layer was patched under."""
    block = extra_options.get("block")
    if not block or len(block) != 2:
        return None
    return (block[0], int(block[1]), int(extra_options.get("block_index", 0)))
