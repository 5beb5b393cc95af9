"""Guidance maths and the schedule window: small pure functions over tensors.

The combination is linear, so it is exact in both eps and x0 (denoised) space: at fixed x and sigma,
x0 = x - sigma * eps, hence x0_cfg + s (x0_c - x0_w) = x - sigma (eps_cfg + s (eps_c - eps_w)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def guidance_term(cond: Tensor, weak: Tensor, scale: float) -> Tensor:
    """s * (cond - weak): the ASAG correction for one prediction."""
    return (cond - weak) * scale


def rescale_like(x: Tensor, reference: Tensor, phi: float) -> Tensor:
    """CFG-rescale: pull each sample's std of `x` towards that of `reference` by the fraction `phi`."""
    if phi == 0:
        return x
    dims = tuple(range(1, x.ndim))
    ratio = reference.std(dim=dims, keepdim=True) / x.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return x * (phi * ratio + (1.0 - phi))


def combine(guided: Tensor, cond: Tensor, weak: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """eps' = eps_guided + s (eps_cond - eps_weak), optionally rescaled towards cond's std.

    `guided` is the CFG result (or the cond prediction when CFG is off). Scale 0 returns `guided`
    itself, untouched, so the host's tensor stays bit-identical.
    """
    if scale == 0:
        return guided
    return rescale_like(guided + guidance_term(cond, weak, scale), cond, rescale)


def per_image(rows: Tensor, conds_list: Sequence[Sequence[tuple[int, float]]]) -> Tensor:
    """Reduce per-row tensors to one per image with AND-prompt weights: sum_k w_k rows[idx_k].

    `conds_list[i]` lists (row index, weight) for image i, as the host's multicond batch does.
    """
    return torch.stack([sum(rows[idx] * weight for idx, weight in entries) for entries in conds_list])


def weighted_cond(rows: Tensor, conds_list: Sequence[Sequence[tuple[int, float]]]) -> Tensor:
    """Per-image weighted mean of cond rows (the reference for rescale with AND prompts)."""
    images = []
    for entries in conds_list:
        total = sum(weight for _, weight in entries)
        if total == 0:
            images.append(rows[entries[0][0]])
        else:
            images.append(sum(rows[idx] * (weight / total) for idx, weight in entries))
    return torch.stack(images)


def in_window(progress: float, start: float, end: float) -> bool:
    """Whether sampling progress (0 = first call, towards 1) lies in [start, end); end 1 includes all."""
    return start <= progress and (progress < end or end >= 1.0)


def progress(step: int, total: int) -> float:
    """Fraction of a sampling pass done before model call `step` of `total` calls."""
    return step / total if total > 0 else 0.0


def sigma_window(start: float, end: float, percent_to_sigma: Callable[[float], float]) -> tuple[float, float]:
    """(sigma_high, sigma_low) bounds of the window for hosts that gate by sigma.

    `percent_to_sigma(0)` is the largest sigma; a window [start, end] becomes sigma_low < sigma <= sigma_high,
    with end 1 mapping to sigma_low = -inf so the last steps are included.
    """
    high = float("inf") if start <= 0 else float(percent_to_sigma(start))
    low = float("-inf") if end >= 1 else float(percent_to_sigma(end))
    return high, low


def in_sigma_window(sigma: float, window: tuple[float, float]) -> bool:
    high, low = window
    return low < sigma <= high
