"""The weak models: what replaces self-attention in the weak pass, one small pure function each.

Every function takes (batch, heads, tokens, dim) tensors q, k, v and returns the perturbed attention
output (batch, heads, n_q, d_v) in q's dtype, and with ``return_stats=True`` also a `SinkhornStats`
(None for a perturbation that is not a transport plan). They let one X/Y/Z grid compare ASAG with the
paper's ablations (paper.md "next checks") and with PAG and SEG at the same layers, scale and schedule.

* ``asag``       adversarial Sinkhorn plan, log K = −S (paper.md §4); today's behaviour.
* ``similarity`` the same Sinkhorn with the ordinary cost, log K = +S: OT attention without the cost
                 inversion (the ablation of the adversarial cost).
* ``random``     Sinkhorn on the scores of random q', k' with the per-head mean and std of q, k (the
                 paper's third check: does *any* disruption do?), seeded so a grid is reproducible.
* ``uniform``    the λ → 0 limit of the plan: P = 1/(n_q n_k), every query gets the mean of V.
* ``identity``   PAG (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
                 Guidance"): the attention map is the identity, output = V.
* ``blur``       SEG (Hong 2024, "Smoothed Energy Guidance"): queries Gaussian-blurred over the 2-D token
                 grid, then ordinary softmax attention; sigma = ∞ replaces every query by the mean query.

Only torch and the public Sinkhorn entry point are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from asag_lib.sinkhorn import SinkhornStats, sinkhorn_attention

NAMES = ("asag", "similarity", "random", "uniform", "identity", "blur")
SIGMA_INFINITE = 10000.0
"""A blur sigma at or above this value is ∞ (SEG's own code uses the same kind of threshold)."""

Result = Tensor | tuple[Tensor, SinkhornStats | None]


def _with_stats(out: Tensor, stats: SinkhornStats | None, return_stats: bool) -> Result:
    return (out, stats) if return_stats else out


def asag(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, iterations: int = 2,
         tol: float = 1e-3, rescale: bool = True, return_stats: bool = False, **_: Any) -> Result:
    """Adversarial Sinkhorn attention (paper.md §4): log K = −scale·q·kᵀ."""
    return sinkhorn_attention(q, k, v, iterations=iterations, tol=tol, scale=scale, rescale=rescale,
                              return_stats=return_stats)


def similarity(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, iterations: int = 2,
               tol: float = 1e-3, rescale: bool = True, return_stats: bool = False, **_: Any) -> Result:
    """Sinkhorn with the ordinary cost 1 − QKᵀ (log K = +S): the kernel's −S on −q gives +S."""
    return sinkhorn_attention(-q, k, v, iterations=iterations, tol=tol, scale=scale, rescale=rescale,
                              return_stats=return_stats)


def mix_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the job seed and shape numbers (deterministic; Python's hash() is salted)."""
    value = int(seed) & (2**64 - 1)
    for part in parts:
        value = (value * 6364136223846793005 + int(part) + 1442695040888963407) & (2**64 - 1)
    return value >> 1


def matched_noise(x: Tensor, seed: int) -> Tensor:
    """Gaussian noise with the mean and std of `x` per (batch, head), drawn on the CPU from `seed` so the
    same seed gives the same cost on every device."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(work)
    mean = xf.mean(dim=(-2, -1), keepdim=True)
    std = xf.std(dim=(-2, -1), keepdim=True) if x.shape[-2] * x.shape[-1] > 1 else torch.zeros_like(mean)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(tuple(x.shape), generator=generator, dtype=work).to(x.device)
    return (z * std + mean).to(x.dtype)


def random_cost(q: Tensor, k: Tensor, v: Tensor, *, seed: int = 0, scale: float | None = None,
                iterations: int = 2, tol: float = 1e-3, rescale: bool = True, return_stats: bool = False,
                **_: Any) -> Result:
    """Sinkhorn on the cost of random q', k' with the per-head mean/std of q, k (the scale statistics of
    QKᵀ), seeded from the job seed and the shapes so every layer gets its own reproducible cost."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    q_random = matched_noise(q, mix_seed(seed, 1, n_q, n_k, q.shape[-1]))
    k_random = matched_noise(k, mix_seed(seed, 2, n_q, n_k, k.shape[-1]))
    return sinkhorn_attention(q_random, k_random, v, iterations=iterations, tol=tol, scale=scale,
                              rescale=rescale, return_stats=return_stats)


def _plan_stats(q: Tensor, k: Tensor, entropy: float) -> SinkhornStats:
    """Stats of an exact plan (zero marginal error, no iterations) with the given row entropy."""
    shape = q.shape[:2]
    return SinkhornStats(row_entropy=torch.full(shape, entropy, device=q.device),
                         marginal_error=torch.zeros(shape, device=q.device),
                         iterations_used=torch.zeros(shape, dtype=torch.int64, device=q.device))


def uniform(q: Tensor, k: Tensor, v: Tensor, *, rescale: bool = True, return_stats: bool = False,
            **_: Any) -> Result:
    """The uniform plan P = 1/(n_q·n_k), the entropy maximum: n_q·P·V is the mean of V for every query
    (P·V, the 'raw' plan output, is that divided by n_q)."""
    n_q = q.shape[-2]
    mean = v.to(torch.float64 if v.dtype == torch.float64 else torch.float32).mean(dim=-2, keepdim=True)
    if not rescale:
        mean = mean / n_q
    out = mean.expand(*v.shape[:-2], n_q, v.shape[-1]).to(q.dtype)
    return _with_stats(out, _plan_stats(q, k, math.log(k.shape[-2])), return_stats)


def identity(q: Tensor, k: Tensor, v: Tensor, *, return_stats: bool = False, **_: Any) -> Result:
    """PAG's perturbation: the identity attention map, each query outputs its own token's value.

    With extra keys (ControlNet reference appends them after the layer's own tokens) the first n_q values
    are the queries' own."""
    n_q = q.shape[-2]
    out = v[..., :n_q, :].to(q.dtype)
    return _with_stats(out, _plan_stats(q, k, 0.0) if k.shape[-2] == n_q else None, return_stats)


def gaussian_matrix(n: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """(n, n) row-normalised Gaussian weights over positions 0..n−1; σ ≥ SIGMA_INFINITE gives the mean.

    Rows are renormalised at the borders (no padding), so σ → ∞ tends to the mean continuously."""
    if sigma >= SIGMA_INFINITE:
        return torch.full((n, n), 1.0 / n, dtype=dtype, device=device)
    pos = torch.arange(n, dtype=torch.float64)
    weights = torch.exp(-((pos[:, None] - pos[None, :]) ** 2) / (2.0 * sigma * sigma))
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def blur_queries(q: Tensor, grid: tuple[int, int], sigma: float) -> Tensor:
    """SEG's query blur: a separable 2-D Gaussian over the (h, w) token grid, in float32 (float64 stays)."""
    h, w = grid
    if h * w != q.shape[-2]:
        raise ValueError(f"ASAG blur: token grid {h}x{w} does not hold {q.shape[-2]} tokens")
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    grid_q = q.to(work).reshape(*q.shape[:-2], h, w, q.shape[-1])
    rows = gaussian_matrix(h, sigma, dtype=work, device=q.device)
    cols = gaussian_matrix(w, sigma, dtype=work, device=q.device)
    blurred = torch.einsum("ij,...jwd->...iwd", rows, grid_q)
    blurred = torch.einsum("kl,...ild->...ikd", cols, blurred)
    return blurred.reshape(q.shape).to(q.dtype)


def blur(q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int] | None = None, sigma: float = 10.0,
         scale: float | None = None, return_stats: bool = False, **_: Any) -> Result:
    """SEG: softmax attention with the queries blurred over the token grid (σ in tokens)."""
    if grid is None:
        grid = (1, q.shape[-2])
    blurred = blur_queries(q, grid, sigma)
    # fp32 accumulation whatever the input dtype, like the Sinkhorn kernel (torch 2.1 has no CPU half SDPA)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = F.scaled_dot_product_attention(blurred.to(work), k.to(work), v.to(work), scale=scale).to(q.dtype)
    return _with_stats(out, None, return_stats)


def plan_stats(name: str, q: Tensor, k: Tensor, *, pick: int = 0, scale: float | None = None, iterations: int = 2,
               tol: float = 1e-3, seed: int = 0) -> SinkhornStats | None:
    """Telemetry: the statistics of the weak model's plan, without touching the output computation.

    Exact plans (uniform, identity) are described in full. For the Sinkhorn models one (batch row, head),
    number `pick` of B·H, is re-run with `return_stats=True` on the same cost (V reduced to one column:
    the stats do not depend on V), so the output keeps the bits of the plain call and telemetry costs
    about 1/(B·H) of the kernel; rotating `pick` over the calls covers every head. Blur: None (no plan)."""
    if name == "uniform":
        return _plan_stats(q, k, math.log(k.shape[-2]))
    if name == "identity":
        return _plan_stats(q, k, 0.0) if k.shape[-2] == q.shape[-2] else None
    if name == "blur":
        return None
    if name == "asag":
        cost_q, cost_k = q, k
    elif name == "similarity":
        cost_q, cost_k = -q, k
    else:
        n_q, n_k = q.shape[-2], k.shape[-2]
        cost_q = matched_noise(q, mix_seed(seed, 1, n_q, n_k, q.shape[-1]))
        cost_k = matched_noise(k, mix_seed(seed, 2, n_q, n_k, k.shape[-1]))
    b, h = divmod(pick % (q.shape[0] * q.shape[1]), q.shape[1])
    one = (slice(b, b + 1), slice(h, h + 1))
    ones = torch.ones_like(cost_k[one][..., :1])
    _, stats = sinkhorn_attention(cost_q[one], cost_k[one], ones, iterations=iterations, tol=tol, scale=scale,
                                  return_stats=True)
    return stats


WEAK_MODELS: dict[str, Callable[..., Result]] = {
    "asag": asag, "similarity": similarity, "random": random_cost, "uniform": uniform, "identity": identity,
    "blur": blur,
}


def token_grid(n_tokens: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """The (h, w) grid of a layer's tokens, from the latent size: the UNet halves each side (rounding up,
    stride-2 convolutions with padding 1) until the count matches. Without a latent size, or if no level
    matches, the factorisation closest to the latent's aspect ratio (square if unknown)."""
    if latent_hw is not None:
        h, w = int(latent_hw[0]), int(latent_hw[1])
        while h * w > n_tokens:
            h, w = -(-h // 2), -(-w // 2)
        if h * w == n_tokens:
            return h, w
    aspect = latent_hw[0] / latent_hw[1] if latent_hw else 1.0
    divisors = [h for h in range(1, n_tokens + 1) if n_tokens % h == 0]
    # closest h/w to the aspect ratio; ties go to the smaller h
    h = min(divisors, key=lambda d: (round(abs(math.log(d * d / n_tokens / aspect)), 9), d))
    return h, n_tokens // h


def seed_of(p: Any) -> int:
    """The seed of the batch being sampled (`p.seeds[0]`, else `all_seeds[0]`, else `p.seed`)."""
    for attr in ("seeds", "all_seeds"):
        seeds = getattr(p, attr, None)
        if seeds:
            return int(seeds[0])
    seed = getattr(p, "seed", 0)
    return int(seed) if isinstance(seed, (int, float)) else 0
