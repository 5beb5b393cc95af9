"""Adversarial Sinkhorn attention: the ASAG kernel (paper.md §4, checklist §8 item 2).

For one (batch, head) with scores S = scale · q kᵀ, the adversarial Gibbs kernel is log K = −S (cost QKᵀ,
λ = scale): mass flows preferentially to the *least* similar key. With uniform marginals a = 1/n_q and
b = 1/n_k, log-domain Sinkhorn runs on dual potentials f (rows) and g (columns), both starting at 0:

    row step     f_i = log a − LSE_j(log K_ij + g_j)
    column step  g_j = log b − LSE_i(log K_ij + f_i)

and the plan is P_ij = exp(f_i + log K_ij + g_j). After each iteration the row-marginal error
e = max_i |n_q · Σ_j P_ij − 1| is measured per (batch, head); a (batch, head) whose error is ≤ tol is
frozen (its potentials stop changing), so every sample of a batch is computed independently of the others.

Every step is a log-sum-exp over keys (or over queries) with an additive per-key (per-query) bias, which
is what a memory-efficient attention kernel computes without materialising the n_q × n_k matrix. The
kernel therefore never needs more than O(N·D) extra memory on its fast paths:

* ``flash_cpu``: torch's CPU flash-attention op, which returns the log-sum-exp alongside the output; the
  bias rides as an extra head dimension (q' = [−scale·q, 1], k' = [k, g], scale 1).
* ``cuda``: the memory-efficient CUDA op with an additive ``attn_bias`` (untested here: no GPU in CI).
* ``dense``: the score matrix of a few heads at a time kept resident and reused by every half-iteration;
  fastest for small N, used only while those heads fit the memory budget.
* ``chunked``: pure torch, recomputing scores in blocks of rows bounded by the memory budget; the
  fallback for any device or torch version.

The final output n_q · P · V is one more biased attention pass: its softmax output times the row masses
n_q · exp(f_i + lse_i). Everything is computed in float32 (float64 for float64 inputs) and cast back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PATHS", "SinkhornStats", "sinkhorn_attention"]

#: Default bound on the n_q × n_k blocks a path may hold at once (per call, all heads together).
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20

#: Internal computation paths, in the order they are preferred when capable.
PATHS = ("cuda", "flash_cpu", "dense", "chunked")


@dataclass(frozen=True)
class SinkhornStats:
    """Diagnostics of one `sinkhorn_attention` call, one value per (batch, head).

    row_entropy: mean over queries of the entropy (nats) of the row-normalised plan, float32.
    marginal_error: final max_i |n_q · Σ_j P_ij − 1|, float32.
    iterations_used: Sinkhorn iterations run before the (batch, head) was frozen or the cap reached, int64.
    """

    row_entropy: Tensor
    marginal_error: Tensor
    iterations_used: Tensor


def sinkhorn_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    iterations: int = 2,
    tol: float = 1e-3,
    scale: float | None = None,
    rescale: bool = True,
    return_stats: bool = False,
    memory_budget_bytes: int | None = None,
) -> Tensor | tuple[Tensor, SinkhornStats]:
    """Attention through the adversarial entropic transport plan (ASAG).

    q: (batch, heads, n_q, d); k: (batch, heads, n_k, d); v: (batch, heads, n_k, d_v).
    Returns (batch, heads, n_q, d_v) in q's dtype and device, and `SinkhornStats` if `return_stats`.

    iterations: maximum Sinkhorn iterations (row step then column step), >= 1.
    tol: a (batch, head) stops iterating once its max row-marginal error is <= tol; 0 never stops early.
    scale: logit scale λ, default 1/sqrt(d).
    rescale: True returns n_q · P · V, whose attention weights per query sum to ≈1 (an attention
        redistribution). False returns the raw P · V, as the only other ASAG implementation does: every
        row of P sums to ≈1/n_q, so that output is about n_q times smaller than normal attention's (the
        perturbed layer is then effectively deleted rather than redistributed).
    memory_budget_bytes: bound on the n_q × n_k score blocks held at once (default 256 MiB). The fast
        paths need only O(N·D) extra memory whatever the budget.
    """
    _validate(q, k, v, iterations, tol, scale, memory_budget_bytes)
    return _sinkhorn_attention(
        q, k, v, iterations=iterations, tol=tol, scale=scale, rescale=rescale,
        return_stats=return_stats, memory_budget_bytes=memory_budget_bytes, path=None,
    )


# --------------------------------------------------------------------------------------------------------
# validation


def _validate(q, k, v, iterations, tol, scale, memory_budget_bytes) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"sinkhorn_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"sinkhorn_attention: {name} must be 4-D (batch, heads, tokens, dim), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"sinkhorn_attention: {name} must be a floating-point tensor, got {t.dtype}")
    if q.shape[:2] != k.shape[:2] or q.shape[:2] != v.shape[:2]:
        raise ValueError(
            "sinkhorn_attention: q, k and v must share (batch, heads), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(
            f"sinkhorn_attention: q and k must share the head dim d, got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(
            f"sinkhorn_attention: k and v must share n_k (dim 2), got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if min(q.shape[2], k.shape[2], q.shape[3]) < 1:
        raise ValueError(f"sinkhorn_attention: n_q, n_k and d must be >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"sinkhorn_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"sinkhorn_attention: iterations must be an integer >= 1, got {iterations!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol >= 0) or math.isinf(tol):
        raise ValueError(f"sinkhorn_attention: tol must be a finite number >= 0 (0 = never stop early), got {tol!r}")
    if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale == 0):
        raise ValueError(f"sinkhorn_attention: scale must be a finite non-zero number or None, got {scale!r}")
    if memory_budget_bytes is not None and (
        isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, int) or memory_budget_bytes < 1
    ):
        raise ValueError(
            f"sinkhorn_attention: memory_budget_bytes must be a positive integer or None, got {memory_budget_bytes!r}"
        )


# --------------------------------------------------------------------------------------------------------
# engines: one biased log-sum-exp primitive per path, over a group of flattened (batch·head) slices
#
# row_pass(g, vx) -> (lse_rows (G, n_q), out (G, n_q, dx) | None): LSE_j(−S_ij + g_j), and if vx is given
#                    Σ_j softmax_j(−S_ij + g_j) vx_j.
# col_pass(f)     -> lse_cols (G, n_k): LSE_i(−S_ij + f_i).


class _ChunkedEngine:
    """Recomputes −S in blocks of rows (columns) so that one block stays within the budget."""

    def __init__(self, q: Tensor, k: Tensor, scale: float, budget: int):
        self.qs = q * (-scale)  # (G, n_q, d)
        self.k = k
        g, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
        per_row = g * max(n_q, n_k) * q.element_size() * 3  # scores, exp and one temporary
        self.rows = max(1, budget // per_row)

    def row_pass(self, g: Tensor, vx: Tensor | None):
        n_q = self.qs.shape[1]
        lse = self.qs.new_empty(self.qs.shape[:2])
        out = None if vx is None else self.qs.new_empty((*self.qs.shape[:2], vx.shape[-1]))
        kt = self.k.transpose(1, 2)
        for r0 in range(0, n_q, self.rows):
            r1 = min(n_q, r0 + self.rows)
            s = torch.baddbmm(g.unsqueeze(1), self.qs[:, r0:r1], kt)
            part = torch.logsumexp(s, dim=-1)
            lse[:, r0:r1] = part
            if out is not None:
                s.sub_(part.unsqueeze(-1)).exp_()
                torch.bmm(s, vx, out=out[:, r0:r1])
        return lse, out

    def col_pass(self, f: Tensor) -> Tensor:
        n_k = self.k.shape[1]
        lse = self.k.new_empty(self.k.shape[:2])
        qt = self.qs.transpose(1, 2)
        for c0 in range(0, n_k, self.rows):
            c1 = min(n_k, c0 + self.rows)
            s = torch.baddbmm(f.unsqueeze(1), self.k[:, c0:c1], qt)
            lse[:, c0:c1] = torch.logsumexp(s, dim=-1)
        return lse


class _DenseEngine:
    """Holds −S for the group's heads and reuses it in every half-iteration."""

    def __init__(self, q: Tensor, k: Tensor, scale: float):
        self.s = torch.bmm(q, k.transpose(1, 2)).mul_(-scale)  # (G, n_q, n_k)

    def row_pass(self, g: Tensor, vx: Tensor | None):
        t = self.s + g.unsqueeze(1)
        lse = torch.logsumexp(t, dim=-1)
        if vx is None:
            return lse, None
        t.sub_(lse.unsqueeze(-1)).exp_()
        return lse, torch.bmm(t, vx)

    def col_pass(self, f: Tensor) -> Tensor:
        return torch.logsumexp(self.s + f.unsqueeze(-1), dim=1)


# --------------------------------------------------------------------------------------------------------
# the Sinkhorn driver, shared by every path


def _sinkhorn_group(engine, q: Tensor, k: Tensor, v: Tensor, iterations: int, tol: float,
                    scale: float, want_stats: bool):
    """Runs Sinkhorn on one group of G flattened heads. Returns (out (G, n_q, d_v), stats tuple | None).

    out is n_q · P · V. q: (G, n_q, d), k, v: (G, n_k, ·), all in the compute dtype.
    """
    G, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    dt, dev = k.dtype, k.device
    log_a, log_b = -math.log(n_q), -math.log(n_k)
    f = torch.zeros(G, n_q, dtype=dt, device=dev)
    g = torch.zeros(G, n_k, dtype=dt, device=dev)
    frozen = torch.zeros(G, dtype=torch.bool, device=dev)
    used = torch.zeros(G, dtype=torch.int64, device=dev)
    err = torch.zeros(G, dtype=dt, device=dev)

    lse_rows, _ = engine.row_pass(g, None)
    out = None
    for it in range(iterations):
        active = ~frozen
        f = torch.where(active.unsqueeze(-1), log_a - lse_rows, f)
        g = torch.where(active.unsqueeze(-1), log_b - engine.col_pass(f), g)
        used += active.to(torch.int64)
        last = it == iterations - 1
        vx = _extended_v(v, k, g, want_stats) if last else None
        new_lse, out = engine.row_pass(g, vx)
        # frozen heads keep g, so their row LSE is unchanged; keep the old value bit for bit
        lse_rows = torch.where(active.unsqueeze(-1), new_lse, lse_rows)
        e = (f + lse_rows - log_a).exp_().sub_(1).abs_().amax(dim=-1)
        err = torch.where(active, e, err)
        frozen = frozen | (active & (err <= tol))
        if bool(frozen.all()):
            break
    if out is None:  # stopped early: one more pass for the output
        _, out = engine.row_pass(g, _extended_v(v, k, g, want_stats))

    mass = (f + lse_rows - log_a).exp_()  # n_q · Σ_j P_ij
    d_v = v.shape[-1]
    result = out[..., :d_v] * mass.unsqueeze(-1)
    if not want_stats:
        return result, None
    # entropy of softmax_j(−S_ij + g_j) = lse_i − E_p[−scale q_i·k_j + g_j]
    ek, eg = out[..., d_v:-1], out[..., -1]
    expected_logit = (q * ek).sum(-1).mul_(-scale).add_(eg)
    entropy = (lse_rows - expected_logit).mean(-1)
    return result, (entropy, err, used)


def _extended_v(v: Tensor, k: Tensor, g: Tensor, want_stats: bool) -> Tensor:
    if not want_stats:
        return v
    return torch.cat([v, k, g.unsqueeze(-1)], dim=-1)


# --------------------------------------------------------------------------------------------------------
# dispatcher


def _flash_cpu_supported(dtype: torch.dtype, device: torch.device) -> bool:
    return False


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sinkhorn_attention(q, k, v, *, iterations, tol, scale, rescale, return_stats, memory_budget_bytes, path):
    B, H, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
    cdt = _compute_dtype(q.dtype)
    qf = q.to(cdt).reshape(B * H, n_q, d)
    kf = k.to(cdt).reshape(B * H, n_k, d)
    vf = v.to(cdt).reshape(B * H, n_k, d_v)
    if path is None:
        path = "chunked"
    if path not in PATHS:
        raise ValueError(f"sinkhorn_attention: path must be one of {PATHS}, got {path!r}")

    esize = qf.element_size()
    if path == "dense":
        per_head = 3 * n_q * n_k * esize
        group = max(1, budget // per_head)
    else:
        group = B * H
        per_head = 3 * max(n_q, n_k) * esize
        group = max(1, min(group, budget // per_head))

    outs, stats = [], []
    for h0 in range(0, B * H, group):
        h1 = min(B * H, h0 + group)
        if path == "dense":
            engine = _DenseEngine(qf[h0:h1], kf[h0:h1], scale)
        else:
            engine = _ChunkedEngine(qf[h0:h1], kf[h0:h1], scale, budget)
        o, st = _sinkhorn_group(engine, qf[h0:h1], kf[h0:h1], vf[h0:h1], iterations, tol, scale, return_stats)
        outs.append(o)
        stats.append(st)
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    if not rescale:
        out = out / n_q
    out = out.reshape(B, H, n_q, d_v).to(q.dtype)
    if not return_stats:
        return out
    ent, err, used = (torch.cat(x).reshape(B, H) for x in zip(*stats, strict=True))
    return out, SinkhornStats(row_entropy=ent.float(), marginal_error=err.float(), iterations_used=used)
