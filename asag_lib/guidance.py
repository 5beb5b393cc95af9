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


def rescale_factor(guided_eps: Tensor, cond_eps: Tensor, phi: float) -> Tensor:
    """Per-sample factor phi * std(cond) / std(guided) + (1 - phi) for the ASAG term (eps space).

    The rescale setting scales the guidance term only (pamparamm's 'full' mode, which the official
    ComfyUI ASAG node forked): `guided_eps` is eps_cfg + s·(eps_cond − eps_weak) before rescaling and
    `cond_eps` the cond prediction. The CFG part is left to the host (and to CFG-rescale extensions).
    """
    dims = tuple(range(1, guided_eps.ndim))
    ratio = cond_eps.std(dim=dims, keepdim=True) / guided_eps.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return phi * ratio + (1.0 - phi)


def combine(guided: Tensor, cond: Tensor, weak: Tensor, scale: float, rescale: float = 0.0,
            x: Tensor | None = None) -> Tensor:
    """pred' = pred_guided + f · s (pred_cond − pred_weak), f from `rescale_factor` (1 when rescale is 0).

    `guided` is the CFG result (or the cond prediction when CFG is off). Predictions are eps, or x0
    (denoised) when the noisy input `x` is given: eps = (x − x0)/sigma, and sigma cancels in the std
    ratio, so the factor is measured in eps space on every sampler. Scale 0 returns `guided` itself,
    untouched, so the host's tensor stays bit-identical.
    """
    if scale == 0:
        return guided
    return add_term(guided, guidance_term(cond, weak, scale), cond, rescale, x)


def add_term(guided: Tensor, term: Tensor, cond: Tensor, rescale: float = 0.0, x: Tensor | None = None) -> Tensor:
    """guided + f · term, with f = `rescale_factor` measured in eps space (see `combine`)."""
    if rescale:
        def to_eps(pred: Tensor) -> Tensor:
            return pred if x is None else x - pred

        term = term * rescale_factor(to_eps(guided + term), to_eps(cond), rescale)
    return guided + term


def and_weights(weights: Sequence[float]) -> list[float]:
    """AND-prompt weights normalised to sum to 1: w_k / sum_j w_j, or w_k / sum_j |w_j| when
    sum_j w_j <= 0 (all zero: all 0). The ASAG term is then the same size whatever the number of parts."""
    total = sum(weights)
    if total <= 0:
        total = sum(abs(w) for w in weights)
    return [w / total if total else 0.0 for w in weights]


def per_image(rows: Tensor, conds_list: Sequence[Sequence[tuple[int, float]]]) -> Tensor:
    """One tensor per image: the AND-weighted mean sum_k (w_k / sum_j w_j) rows[idx_k] (`and_weights`).

    `conds_list[i]` lists (row index, weight) for image i, as the host's multicond batch does.
    """
    images = []
    for entries in conds_list:
        weights = and_weights([weight for _, weight in entries])
        images.append(sum(rows[idx] * weight for (idx, _), weight in zip(entries, weights, strict=True)))
    return torch.stack(images)


def weighted_cond(rows: Tensor, conds_list: Sequence[Sequence[tuple[int, float]]]) -> Tensor:
    """Per-image weighted mean of cond rows (the reference for rescale with AND prompts)."""
    return per_image(rows, conds_list)


def in_window(progress: float, start: float, end: float) -> bool:
    """Whether sampling progress (0 = first call, towards 1) lies in [start, end); end 1 includes all."""
    return start <= progress and (progress < end or end >= 1.0)


def progress(step: int, total: int) -> float:
    """Fraction of a sampling pass done before model call `step` of `total` calls."""
    return step / total if total > 0 else 0.0


def sampler_step(call: int, calls: int, steps: int) -> int:
    """The sampler step (0-based) that model call `call` belongs to, in a pass of `steps` steps for
    which the host expects `calls` model calls (second-order samplers: about 2 per step).

    Both calls of a second-order step get the same index, so they share one window decision. (A1111's
    `sampling_step` cannot serve: k-diffusion's step callback runs between the two calls of a Heun or
    DPM++ 2S step, so they see different values, and steps 0 and 1 of a first-order sampler both see 0.)
    """
    if steps <= 0 or calls <= 0:
        return call
    return min(call * steps // calls, steps - 1)


def step_in_window(step: int, steps: int, start: float, end: float) -> bool:
    """Step i of N is guided iff start <= i/N and (i/N < end or end >= 1)."""
    return in_window(step / steps if steps > 0 else 0.0, start, end)


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
