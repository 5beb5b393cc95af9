"""Test double of modules.hypernetworks.hypernetwork for these tests; no loading, saving or training.

A hypernetwork is any object with `layers` mapping a context width to a (k, v) pair of callables and a
`multiplier`.
"""

from __future__ import annotations

from typing import Any

import torch


class Hypernetwork:
    """A named set of context transforms, keyed by context width."""

    def __init__(self, name: str | None = None, layers: dict[int, tuple[Any, Any]] | None = None,
                 multiplier: float = 1.0) -> None:
        self.name = name
        self.layers = dict(layers or {})
        self.multiplier = multiplier

    def set_multiplier(self, multiplier: float) -> Hypernetwork:
        self.multiplier = multiplier
        return self


def apply_single_hypernetwork(hypernetwork: Any, context_k: torch.Tensor, context_v: torch.Tensor,
                              layer: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the hypernetwork's k/v offsets for this width (scaled by its multiplier); other widths pass."""
    pair = hypernetwork.layers.get(context_k.shape[2])
    if pair is None:
        return (context_k, context_v)
    to_k, to_v = pair
    m = getattr(hypernetwork, "multiplier", 1.0)
    return context_k + to_k(context_k) * m, context_v + to_v(context_v) * m


def apply_hypernetworks(hypernetworks: list[Any], context: torch.Tensor,
                        layer: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `context` through every loaded hypernetwork in order; returns (context for k, context for v)."""
    k, v = context, context
    for hn in hypernetworks:
        k, v = apply_single_hypernetwork(hn, k, v, layer)
    return k, v
