"""Adversarial Sinkhorn attention: the ASAG kernel (paper.md §4, checklist §8 item 2).

For one (batch, head) with scores S = scale · q kᵀ, the adversarial Gibbs kernel is log K = −S (cost QKᵀ,
λ = scale): mass flows preferentially to the *least* similar key. With uniform marginals a = 1/n_q and
b = 1/n_k, log-domain Sinkhorn runs on dual potentials f (rows) and g (columns), both starting at 0:

    row step     f_i = log a − LSE_j(log K_ij + g_j)
    column step  g_j = log b − LSE_i(log K_ij + f_i)

and the plan is P_ij = exp(f_i + log K_ij + g_j). After each iteration the row-marginal error
e = max_i |n_q · Σ_j P_ij − 1| is measured per (batch, head); a (batch, head) whose error is ≤ tol is
frozen (its potentials stop changing), so every sample of a batch is computed independently of the others.

Every step is a log-sum-exp over keys (or over queries) with an additive per-key (per-query) bias. One
pass over the scores of a head gives the row step's LSE, the row-marginal error of the previous column
step, *and* the next column step (from the column sums of the row-normalised plan), so k iterations cost
k + 1 passes instead of 2k + 1; the last pass also yields the output n_q · P · V = n_q · exp(f_i + lse_i)
· softmax-attention output, and (when asked) the row entropy from the same pass with V extended by
[k, g]. Internally logs are base 2 (exp2 is accurate to an ulp and several times faster than exp on CPU).

Paths (``PATHS``), chosen by capability checks (on CUDA: a one-time probe per device and input dtype,
`asag_lib.kernel_probe`, which also drops an engine that fails on a shape the probe did not try):

* ``triton`` (CUDA; CPU tensors under ``TRITON_INTERPRET=1`` for tests): `asag_lib.sinkhorn_triton`, a fused
  row pass (row LSE, then log-domain column LSE partials reduced in a fixed order) per iteration, Q/K/V in the
  input dtype, fp32 accumulation; its 2k + 1 variant (one LSE kernel per half-step) is kept for comparison.

* ``cached`` (CPU, chosen while one head's n_q · n_k kernel fits in half the memory budget): linear-domain
  Sinkhorn on the exponentials computed once per head (`_KernelCacheEngine`); later half-steps are
  matrix–vector products (split by rows across threads), the last pass one GEMM with V; heads with
  extreme logits fall back to the exact log-domain engine.
* ``dense`` (CPU, for tests and comparison): the log-domain scores of a cache-sized group of heads are
  computed once and exponentiated again in every pass.
* ``chunked`` (CPU for larger N, and any device without a better path): pure torch, recomputing scores
  in blocks of rows sized for the cache and bounded by the memory budget, O(N·D + block) extra memory.
* ``cuda``: the memory-efficient CUDA attention op, which returns the LSE, O(N·D) memory; the bias rides
  as an extra head dimension (q' = [−scale·q, 1], k' = [k, g], scale 1). It cannot give column sums, so
  each column step is a pass of its own with queries and keys swapped. The fallback where Triton is
  missing (Windows). Its logic runs in the CPU tests through ``flash_cpu``; on CUDA only in bench/gpu.sh.
* ``flash_cpu``: the same engine on torch's CPU flash-attention op. Slower on CPU than ``dense`` and
  ``chunked`` (5 passes for 2 iterations), so never chosen automatically there; it exists so that the
  CUDA engine's logic runs in the CPU tests.

Extreme logits (|S| ~ 1e4) can leave a column almost empty in every row; the fused column update would
then lose precision, and the exact log-domain column step is run for that head instead.
Everything is computed in float32 (float64 for float64 inputs) and cast back to the input dtype. Any active
``torch.autocast`` (A1111's default ``--precision autocast``, CPU bf16 or CUDA fp16/bf16) is switched off for
the kernel's device inside the call, so no GEMM of the scores or potentials runs in half precision; the
output is cast to q's dtype, as autocast's own ops would leave it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PATHS", "SinkhornStats", "sinkhorn_attention"]

#: Default bound on the n_q × n_k blocks a path may hold at once (per call, all heads together).
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20

#: Internal computation paths, in the order they are preferred when capable.
PATHS = ("triton", "cuda", "flash_cpu", "cached", "dense", "chunked")


@dataclass(frozen=True)
class SinkhornStats:
    """Diagnostics of one `sinkhorn_attention` call, one value per (batch, head).

    row_entropy: mean over queries of the entropy (nats) of the row-normalised plan, float32, in
        [0, log n_k] (each row's value is clamped there: rounding cannot make it leave that range).
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
    tol: a (batch, head) stops iterating once its max row-marginal error is <= tol; 0 never stops early
        (every head runs `iterations` iterations, even one whose error is exactly 0).
    scale: logit scale λ, default 1/sqrt(d).
    rescale: True returns n_q · P · V, whose attention weights per query sum to ≈1 (an attention
        redistribution). False returns the raw P · V, as the only other ASAG implementation does: every
        row of P sums to ≈1/n_q, so that output is about n_q times smaller than normal attention's (the
        perturbed layer is then effectively deleted rather than redistributed).
    memory_budget_bytes: bound on the n_q × n_k score blocks held at once (default 256 MiB). The fast
        paths need only O(N·D) extra memory whatever the budget.

    Precision: scores, potentials and accumulations are float32 (float64 for float64 inputs) whatever the
    input dtype and whatever ``torch.autocast`` is active: autocast is disabled inside the call.

    Inference only: the paths work in place and are not meant to be differentiated through.
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
# engines
#
# Internally every log is base 2 (exp2 is exact to an ulp and several times faster than exp on CPU): the
# scores are S2 = q2 · kᵀ with q2 = −scale · log2(e) · q, the potentials f2 = f · log2(e), g2 = g · log2(e).
# An engine works on a group of G flattened (batch · head) slices and offers, for the heads `sel` (an index
# tensor into the group, or None for all of them; g2, f2 and vx are already restricted to `sel`):
#
# row_pass(g2, sel, want_col, vx, normalized=True)
#         -> (lse (Gs, n_q), col (Gs, n_k) | None, out (Gs, n_q, dx) | None)
#     lse_i = LSE2_j(S2_ij + g2_j); with e_ij = 2^(S2_ij + g2_j − lse_i) the row-normalised plan,
#     col_j = Σ_i e_ij (engines with fused_cols only) and out_i = Σ_j e_ij vx_j.
#     normalized=False (the last pass, when only 2^lse_i · out_i is used): an engine may return lse_i − c_i
#     and 2^c_i · out_i for any finite c_i (the cached engine skips its row sums so: c_i = log2 of the row sum).
# col_pass(f2, sel) -> lse (Gs, n_k), LSE2_i(S2_ij + f2_i): the exact column step.
#
# The column sums of the row-normalised plan give the next column step for free:
#     g2_j ← log2 b − LSE2_i(S2_ij + f2_i) = g2_j + log2 b − log2 a − log2 col_j,   f2_i = log2 a − lse_i,
# so one pass over the scores per iteration suffices. The driver falls back to col_pass for a head whose
# col_j would be too small to be accurate (a column almost empty in every row: only with extreme logits).

_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2

#: Streaming blocks of scores are sized to stay cache-resident (and within the memory budget).
_BLOCK_BYTES = 2 * 2**20

#: The dense path keeps the scores of this many bytes' worth of heads at a time (cache-resident).
_DENSE_GROUP_BYTES = 8 * 2**20

#: Fewer rows per block than this make the score GEMM inefficient; the chunked path groups heads to match.
_MIN_BLOCK_ROWS = 256

#: The cached path skips the row-max shift of its kernel while |scores| (base 2) are provably below this.
_UNSHIFTED_MAX = 64.0

#: Row blocks in which the cached path builds its kernel (GEMM, shift, exp2, first sums while in cache).
_CACHED_BUILD_BYTES = 8 * 2**20

#: Row blocks of the cached path's later passes (views of the cached kernel: no allocation).
_CACHED_PASS_BYTES = 4 * 2**20

#: The cached path holds at most this many bytes of kernels at a time (and at most half the budget): about
#: the two cores' L2, so every pass over a group finds it cached; 8 MiB was 3 % and 32 MiB 25 % slower at N=1024.
_CACHED_GROUP_BYTES = 4 * 2**20


def _shifted_exp2_(s: Tensor) -> tuple[Tensor, Tensor]:
    """In place s ← 2^(s − rowmax); returns (rowmax, rowsum), so log2-sum-exp2 = rowmax + log2(rowsum)."""
    m = s.amax(dim=-1, keepdim=True)
    s.sub_(m).exp2_()
    return m, s.sum(dim=-1, keepdim=True)


class _ScoreEngine:
    """Pure torch. keep_scores=False ("chunked"): recompute scores by blocks of rows in every pass, O(block)
    extra memory. keep_scores=True ("dense"): compute the group's scores once and reuse them."""

    fused_cols = True

    def __init__(self, q2: Tensor, k: Tensor, block_bytes: int, keep_scores: bool):
        self.q2, self.k = q2, k
        self.s2 = torch.bmm(q2, k.transpose(1, 2)) if keep_scores else None
        self.block_bytes = block_bytes

    def _rows_per_block(self, heads: int, width: int, esize: int) -> int:
        return max(1, self.block_bytes // (heads * width * esize))

    def row_pass(self, g2: Tensor, sel: Tensor | None, want_col: bool, vx: Tensor | None,
                 normalized: bool = True):
        q2 = self.q2 if sel is None else self.q2[sel]
        kt = (self.k if sel is None else self.k[sel]).transpose(1, 2)
        G, n_q = q2.shape[:2]
        n_k = kt.shape[2]
        lse = q2.new_empty(G, n_q)
        col = q2.new_zeros(G, 1, n_k) if want_col else None
        out = q2.new_empty(G, n_q, vx.shape[2]) if vx is not None else None
        bias = g2.unsqueeze(1)
        rows = self._rows_per_block(G, n_k, q2.element_size())
        for r0 in range(0, n_q, rows):
            r1 = min(n_q, r0 + rows)
            if self.s2 is None:
                s = torch.baddbmm(bias, q2[:, r0:r1], kt)
            else:
                s = (self.s2[:, r0:r1] if sel is None else self.s2[sel, r0:r1]) + bias
            m, z = _shifted_exp2_(s)
            lse[:, r0:r1] = (m + z.log2()).squeeze(-1)
            inv_z = z.reciprocal_()
            if col is not None:
                col.baddbmm_(inv_z.transpose(1, 2), s)
            if out is not None:
                torch.bmm(s, vx, out=out[:, r0:r1]).mul_(inv_z)
        return lse, (None if col is None else col.squeeze(1)), out

    def col_pass(self, f2: Tensor, sel: Tensor | None) -> Tensor:
        q2t = (self.q2 if sel is None else self.q2[sel]).transpose(1, 2)
        k = self.k if sel is None else self.k[sel]
        G, n_k = k.shape[:2]
        n_q = q2t.shape[2]
        lse = k.new_empty(G, n_k)
        bias = f2.unsqueeze(1)
        cols = self._rows_per_block(G, n_q, k.element_size())
        for c0 in range(0, n_k, cols):
            c1 = min(n_k, c0 + cols)
            if self.s2 is None:
                s = torch.baddbmm(bias, k[:, c0:c1], q2t)
            else:
                s = (self.s2[:, :, c0:c1] if sel is None else self.s2[sel, :, c0:c1]).transpose(1, 2) + bias
            m, z = _shifted_exp2_(s)
            lse[:, c0:c1] = (m + z.log2()).squeeze(-1)
        return lse


def _row_sum_floor(r_last: Tensor, lb: Tensor, lb_last: Tensor) -> Tensor:
    """Per head, a lower bound on every row sum r_i = Σ_j K_ij 2^lb_j (K >= 0) from the previous pass's
    r_last_i = Σ_j K_ij 2^lb_last_j: each term changed by a factor of at least min_j 2^(lb_j − lb_last_j)."""
    return r_last.amin(dim=-1) * (lb - lb_last).amin(dim=-1).exp2()


def _thread_slices(rows: int) -> tuple[int, int]:
    """(parts, even): the first `even` of a block's rows split into `parts` equal slices, one per thread, for
    the batched products below; the rest (all of them on one thread) go to gemv."""
    parts = min(torch.get_num_threads(), rows)
    return parts, (rows - rows % parts if parts > 1 else 0)


def _row_sums(blk: Tensor, x: Tensor, out: Tensor) -> Tensor:
    """out = blk · x for a block of contiguous rows (rows, n), computed as row vector × blockᵀ products on
    equal slices of rows, one per thread: torch's `mv` calls BLAS gemv, which runs on one thread (a DRAM-bound
    64 MiB head took 3.0 ms on one or two threads, the batch 1.3 ms on two)."""
    rows, n = blk.shape
    parts, even = _thread_slices(rows)
    if even:
        torch.bmm(x.view(1, 1, n).expand(parts, 1, n), blk[:even].view(parts, even // parts, n).transpose(1, 2),
                  out=out[:even].view(parts, 1, even // parts))
    if even < rows:
        torch.mv(blk[even:], x, out=out[even:])
    return out


def _add_col_sums_(acc: Tensor, w: Tensor, blk: Tensor) -> Tensor:
    """acc += blkᵀ · w (the w-weighted sum of the block's rows), as row vector × block products on equal
    slices of rows, one per thread, then summed (BLAS gemv with a transposed matrix runs on one thread)."""
    rows, n = blk.shape
    parts, even = _thread_slices(rows)
    if even:
        acc.add_(torch.bmm(w[:even].view(parts, 1, even // parts), blk[:even].view(parts, even // parts, n)).sum(0)[0])
    if even < rows:
        acc.addmv_(blk[even:].t(), w[even:])
    return acc


class _KernelCacheEngine:
    """Linear-domain Sinkhorn on a cached kernel ("cached", CPU): the exponentials are computed once per head.

    K_ij = 2^(S2_ij − m_i) (fp32, in place of the scores; m_i the row max, or 0 where a Cauchy–Schwarz bound
    shows |S2| <= 64 so that 2^S2 cannot overflow or underflow) is kept for the group; with the
    column scaling b_j = 2^(g2_j − max g2) every later half-step is a matrix–vector product on K:
        r = K b  (row sums: lse_i = m_i + max g2 + log2 r_i),   col = b ⊙ Kᵀ(1/r)  (column sums),
    read block by block of rows so that the second product finds the block still in cache (one read of K
    per pass), and the last pass multiplies each block by b ⊙ V while it is cached, K · (b ⊙ V) / r. Exact in exact
    arithmetic; in fp32 the entries of K that underflow (< 2^-149) are lost, which is harmless unless a row
    sum or a column sum is itself tiny. A head with a row sum or column sum below SAFE is recomputed by the
    exact log-domain engine (`_ScoreEngine`, streaming), as is every exact column step the driver asks for.
    The last pass skips its row sums where a bound from the previous pass shows them >= SAFE (they cancel).
    """

    fused_cols = True

    #: Sums this small make the underflowed entries of K (each < 2^-149 · 2^30) matter; below it: exact path.
    SAFE = 2.0**-30

    def __init__(self, q2: Tensor, k: Tensor, block_bytes: int, buffer: Tensor | None = None):
        """buffer: storage for the kernel, (at least G, n_q, n_k), reused across groups by the caller (a fresh
        n_q · n_k allocation costs ~40 % of the kernel's compute in page faults: 31 ms per 64 MiB head)."""
        self.exact = _ScoreEngine(q2, k, block_bytes, keep_scores=False)
        self.block_bytes = block_bytes
        G, n_q, n_k = q2.shape[0], q2.shape[1], k.shape[1]
        # built by blocks of rows that stay in cache: scores, row max, shifted exp2, and the first pass's
        # sums (g = 0, so b = 1) while the block is hot; for large N the kernel is then read once per pass
        kern = q2.new_empty(G, n_q, n_k) if buffer is None else buffer[:G]
        m = q2.new_zeros(G, n_q)
        r = q2.new_empty(G, n_q)
        col = q2.new_zeros(G, n_k)
        # Cauchy–Schwarz: |S2_ij| <= |q2_i| · max_j |k_j|. Where that is <= _UNSHIFTED_MAX for a head,
        # 2^S2 neither overflows nor underflows in fp32 and the row-max shift (two more sweeps) is skipped
        # (decided per head, so that a head's result never depends on which heads share its group)
        bounds = (q2.norm(dim=-1).amax(dim=-1) * k.norm(dim=-1).amax(dim=-1)).tolist()
        # larger blocks than the passes use: each GEMM call repacks k, and the block only needs to stay in L3
        rows = max(1, max(block_bytes, _CACHED_BUILD_BYTES) // (n_k * kern.element_size()))
        for h in range(G):
            kt = k[h].t()
            shift = not bounds[h] <= _UNSHIFTED_MAX
            for r0 in range(0, n_q, rows):
                blk = torch.mm(q2[h, r0 : r0 + rows], kt, out=kern[h, r0 : r0 + rows])
                if shift:
                    mb = torch.amax(blk, dim=-1, keepdim=True)
                    m[h, r0 : r0 + rows] = mb.squeeze(-1)
                    blk.sub_(mb)
                blk.exp2_()
                rb = torch.sum(blk, dim=-1, out=r[h, r0 : r0 + rows])
                _add_col_sums_(col[h], rb.reciprocal(), blk)
        self.kern, self.m = kern, m
        self._first = (m + r.log2(), r, col)
        # each head's row sums and log2 b of its latest pass: r_i ≥ r_last_i · min_j b_j / b_last_j bounds the
        # next pass's row sums from below, which lets the last pass skip them (see `_pass`)
        self.r_last, self.lb_last = r, q2.new_zeros(G, n_k)

    def _low_heads(self, *sums: Tensor) -> Tensor | None:
        """Per head, whether any of `sums` (G, n) falls below SAFE (or is NaN); None when none does: one
        global test first, as nearly every call passes it (small ops are ~15 % of a head's time at N=1024)."""
        if all(float(x.amin()) >= self.SAFE for x in sums):
            return None
        low = torch.zeros(sums[0].shape[0], dtype=torch.bool, device=sums[0].device)
        for x in sums:
            low |= ~(x.amin(dim=-1) >= self.SAFE)
        return low

    def _pass(self, kern: Tensor, m: Tensor, r_last: Tensor, lb_last: Tensor, g2: Tensor, want_col: bool,
              vx: Tensor | None, normalized: bool):
        """One pass on the heads of `kern` (a view of the cache: no copy of the kernel), with their row shifts m
        and the previous pass's row sums and log2 b. Per head, because torch's batched GEMM with one column is
        several times slower than a matrix-vector product on CPU (`_row_sums`). Returns (lse, col, out, low heads or None, r, log2 b).

        Without normalisation (the last pass) the row sums r are not computed when the previous pass's bound
        shows them all >= SAFE: the driver needs only 2^lse · out, in which r cancels (lse and out are
        returned as if r were 1), so the pass is one GEMM per block."""
        Gs, n_q, n_k = kern.shape
        gmax = g2.amax(dim=-1, keepdim=True)
        lb = g2 - gmax
        b = lb.exp2()
        skip_rows = not normalized and vx is not None and not want_col
        if skip_rows:
            skip_rows = bool((_row_sum_floor(r_last, lb, lb_last) >= self.SAFE).all())
        r = None if skip_rows else kern.new_empty(Gs, n_q)
        col = kern.new_zeros(Gs, n_k) if want_col else None
        out = None if vx is None else kern.new_empty(Gs, n_q, vx.shape[2])
        bv = None if vx is None else vx * b.unsqueeze(-1)
        # blocks are views of the cache (no allocation): sized so that the second product finds the block in
        # L2 (L3 with V, where larger blocks keep the GEMM efficient), and few enough to keep the number of
        # parallel regions low (each costs a fork and a join on every thread)
        rows = max(1, (_CACHED_PASS_BYTES if vx is None else _CACHED_BUILD_BYTES) // (n_k * kern.element_size()))
        for h, r0 in itertools.product(range(Gs), range(0, n_q, rows)):
            blk = kern[h, r0 : r0 + rows]
            if r is not None:
                rb = _row_sums(blk, b[h], r[h, r0 : r0 + rows])
                if col is not None:
                    _add_col_sums_(col[h], rb.reciprocal(), blk)  # the block is still in cache
            if out is not None:
                torch.mm(blk, bv[h], out=out[h, r0 : r0 + rows])  # so is it here: one read of K per pass
        if col is not None:
            col.mul_(b)
        if r is None:  # lse − log2 r and r · out (the contract of normalized=False)
            return m + gmax, col, out, None, None, lb
        if out is not None:
            out.div_(r.unsqueeze(-1))
        low = self._low_heads(r) if col is None else self._low_heads(r, col)
        return m + gmax + r.log2(), col, out, low, r, lb

    def row_pass(self, g2: Tensor, sel: Tensor | None, want_col: bool, vx: Tensor | None,
                 normalized: bool = True):
        first, self._first = self._first, None
        if first is not None and sel is None and vx is None and not bool(g2.any()):
            lse, r, c = first  # the driver's first pass (g = 0) was done while building the kernel
            out = None
            low = self._low_heads(r, c)
            col = c if want_col else None
        elif sel is None:
            lse, col, out, low, r, lb = self._pass(self.kern, self.m, self.r_last, self.lb_last, g2, want_col, vx,
                                                   normalized)
            if r is not None:  # the bound's reference for the next pass
                self.r_last, self.lb_last = r, lb
        else:  # one head at a time on views of the cache: indexing it would copy n_q · n_k per head
            parts = []
            for j, h in enumerate(sel.tolist()):
                one = slice(h, h + 1)
                part = self._pass(self.kern[one], self.m[one], self.r_last[one], self.lb_last[one], g2[j : j + 1],
                                  want_col, None if vx is None else vx[j : j + 1], normalized)
                if part[4] is not None:
                    self.r_last[h], self.lb_last[h] = part[4][0], part[5][0]
                parts.append(part[:4])
            lse, col, out, _ = (None if x[0] is None else torch.cat(x) for x in zip(*parts, strict=True))
            # one head per part: its `low` is None exactly when that head is fine
            low = torch.tensor([part[3] is not None for part in parts], device=g2.device)
        if low is not None and bool(low.any()):  # rare (extreme logits): those heads take the exact log-domain pass
            bad = low.nonzero().squeeze(1)
            heads = bad if sel is None else sel[bad]
            e_lse, e_col, e_out = self.exact.row_pass(g2[bad], heads, want_col, None if vx is None else vx[bad])
            lse[bad] = e_lse
            if col is not None:
                col[bad] = e_col
            if out is not None:
                out[bad] = e_out
        return lse, col, out

    def col_pass(self, f2: Tensor, sel: Tensor | None) -> Tensor:
        return self.exact.col_pass(f2, sel)


def _flash_cpu_op(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=1.0)
    return out, lse


def _efficient_cuda_op(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=1.0)[:2]
    return out, lse[..., : q.shape[2]]  # the CUDA kernel pads the LSE to a multiple of 32 queries


class _AttentionOpEngine:
    """A fused attention op that also returns the log-sum-exp, O(N·D) memory, used for every half-step.

    The bias rides as one more head dimension: q' = [−scale·q, 1], k' = [k, g] with scale 1 (natural logs,
    converted at the boundary). Head dims are zero-padded to one common multiple of 8 so that q, k and v
    agree, as the flash kernels require. The op cannot give column sums, so each column step is a pass of
    its own (queries and keys swapped).
    """

    fused_cols = False

    def __init__(self, q2: Tensor, k: Tensor, op):
        self.qn = q2 * _LN2  # −scale · q
        self.k = k
        self.op = op

    @staticmethod
    def _pack(x: Tensor, extra: Tensor, width: int) -> Tensor:
        """[x, extra, 0…] as (1, G, n, width)."""
        G, n, d = x.shape
        out = x.new_zeros(1, G, n, width)
        out[0, :, :, :d] = x
        out[0, :, :, d] = extra
        return out

    @staticmethod
    def _width(*dims: int) -> int:
        return -(-max(dims) // 8) * 8

    def row_pass(self, g2: Tensor, sel: Tensor | None, want_col: bool, vx: Tensor | None,
                 normalized: bool = True):
        qn = self.qn if sel is None else self.qn[sel]
        k = self.k if sel is None else self.k[sel]
        d = qn.shape[2]
        width = self._width(d + 1, vx.shape[2] if vx is not None else 0)
        qp = self._pack(qn, qn.new_ones(()).expand(qn.shape[:2]), width)
        kp = self._pack(k, g2 * _LN2, width)
        if vx is None:
            _, lse = self.op(qp, kp, kp)  # the op wants a value tensor; its output is unused here
            return lse[0] * _LOG2E, None, None
        vp = vx.new_zeros(1, *vx.shape[:2], width)
        vp[0, :, :, : vx.shape[2]] = vx
        out, lse = self.op(qp, kp, vp)
        return lse[0] * _LOG2E, None, out[0, :, :, : vx.shape[2]]

    def col_pass(self, f2: Tensor, sel: Tensor | None) -> Tensor:
        qn = self.qn if sel is None else self.qn[sel]
        k = self.k if sel is None else self.k[sel]
        width = self._width(qn.shape[2] + 1)
        kp = self._pack(k, k.new_ones(()).expand(k.shape[:2]), width)
        qp = self._pack(qn, f2 * _LN2, width)
        _, lse = self.op(kp, qp, qp)
        return lse[0] * _LOG2E


# --------------------------------------------------------------------------------------------------------
# the Sinkhorn driver, shared by every path


def _sinkhorn_group(engine, q2: Tensor, k: Tensor, v: Tensor, iterations: int, tol: float, want_stats: bool):
    """Runs Sinkhorn on one group of G flattened heads (base-2 units, see the engines' comment).

    Returns (n_q · P · V as (G, n_q, d_v), (row_entropy, marginal_error, iterations_used) or None).
    """
    G, n_q, n_k = q2.shape[0], q2.shape[1], k.shape[1]
    dt, dev = q2.dtype, q2.device
    la, lb = -math.log2(n_q), -math.log2(n_k)
    tiny = 1e-30 if dt != torch.float64 else 1e-280
    fused = engine.fused_cols
    f2 = torch.zeros(G, n_q, dtype=dt, device=dev)
    g2 = torch.zeros(G, n_k, dtype=dt, device=dev)
    frozen = torch.zeros(G, dtype=torch.bool, device=dev)
    used = torch.zeros(G, dtype=torch.int64, device=dev)
    err = torch.zeros(G, dtype=dt, device=dev)
    out = None

    lse, col, _ = engine.row_pass(g2, None, fused, None)
    # while no head is frozen (always with tol=0) the state is replaced whole: no index tensors, no scatter
    # (a group's bookkeeping is ~0.3 ms of small ops, as much as 20 % of a head's kernel at N=1024)
    all_active = True
    for it in range(iterations):
        # act: the indices of the heads still iterating, None for all of them
        act = None if all_active else (~frozen).nonzero().squeeze(1)
        take = (lambda x: x) if act is None else (lambda x: x[act])  # noqa: B023 (used in this iteration only)
        f_new = la - take(lse)
        if fused and getattr(engine, "log_cols", False):  # col_j = LSE2_i(S2_ij − lse_i): exact column step
            g_new = (lb - la) - take(col)
        elif fused:
            c = take(col)
            g_new = take(g2) + (lb - la) - c.log2()
            if not float(c.amin()) >= tiny:  # some column is (almost) empty, or NaN: one test for all heads
                sub = (~(c.amin(dim=-1) >= tiny)).nonzero().squeeze(1)
                g_new[sub] = lb - engine.col_pass(f_new[sub], sub if act is None else act[sub])
        else:
            g_new = lb - engine.col_pass(f_new, act)
        last = it == iterations - 1
        vx = _extended_v(take(v), take(k), g_new, want_stats) if last else None
        # the marginal error is needed to freeze heads (tol > 0, before the last pass) and for the stats only;
        # without it the last pass need not normalise its rows (only 2^lse · out is used below)
        need_err = want_stats or (tol > 0 and not last)
        lse_new, col_new, o = engine.row_pass(g_new, act, fused and not last, vx, normalized=need_err)
        e = (f_new + lse_new - la).exp2_().sub_(1).abs_().amax(dim=-1) if need_err else None
        if act is None:
            f2, g2, lse = f_new, g_new, lse_new
            used += 1
            if col_new is not None:
                col = col_new
            if e is not None:
                err = e
                if tol > 0:  # tol=0 never freezes, even a head whose error rounds to exactly 0
                    frozen = e <= tol
        else:
            f2[act], g2[act], lse[act] = f_new, g_new, lse_new
            used[act] += 1
            if col_new is not None:
                col[act] = col_new
            if e is not None:
                err[act] = e
                frozen[act] = e <= tol
        if last:
            out = o if act is None else _scatter_rows(o, act, G)
        elif tol > 0:
            n_frozen = int(frozen.sum())
            all_active = n_frozen == 0
            if n_frozen == G:
                break
    if not all_active:  # heads frozen before the last iteration have no output yet
        missing = (used < iterations).nonzero().squeeze(1)
        if missing.numel():
            sel = None if missing.numel() == G else missing
            take = (lambda x: x) if sel is None else (lambda x: x[sel])
            _, _, o = engine.row_pass(take(g2), sel, False, _extended_v(take(v), take(k), take(g2), want_stats))
            if out is None:
                out = o if sel is None else _scatter_rows(o, missing, G)
            else:
                out[missing] = o

    mass = (f2 + lse - la).exp2_()  # n_q · Σ_j P_ij
    d_v = v.shape[-1]
    result = out[..., :d_v] * mass.unsqueeze(-1)
    if not want_stats:
        return result, None
    # entropy of the row-normalised plan: LSE_j(x_ij) − E_p[x_ij] with x = S2 + g2, converted to nats
    expected = (q2 * out[..., d_v:-1]).sum(-1) + out[..., -1]
    # each row's entropy lies in [0, log n_k]; rounding in lse − expected (~ulp · |S2|) must not leave it
    # (clamped per row, and again after the mean, whose rounding could step past log n_k)
    top = math.log(n_k)
    entropy = (lse - expected).mul_(_LN2).clamp_(0.0, top).mean(-1).clamp_(0.0, top)
    return result, (entropy, err, used)


def _scatter_rows(x: Tensor, index: Tensor, G: int) -> Tensor:
    full = x.new_zeros(G, *x.shape[1:])
    full[index] = x
    return full


def _extended_v(v: Tensor, k: Tensor, g2: Tensor, want_stats: bool) -> Tensor:
    """V, or [V, k, g2] when stats are wanted: the same pass then gives E_p[k] and E_p[g2] for the entropy."""
    if not want_stats:
        return v
    return torch.cat([v.to(g2.dtype), k.to(g2.dtype), g2.unsqueeze(-1)], dim=-1)


# --------------------------------------------------------------------------------------------------------
# path choice (capability checks only) and dispatch


def _flash_cpu_supported(dtype: torch.dtype, device: torch.device) -> bool:
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.float64)
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    )


#: Device types whose path the capability probe picks (tests add "cpu" to run the probe without a GPU).
_PROBED_DEVICES = ("cuda",)


def _choose_path(device: torch.device, dtype: torch.dtype, n_q: int, n_k: int, budget: int,
                 in_dtype: torch.dtype | None = None) -> str:
    """dtype: the compute dtype; in_dtype: the inputs' (the CUDA probe decides per input dtype)."""
    if device.type in _PROBED_DEVICES and dtype == torch.float32:
        from asag_lib import kernel_probe

        return kernel_probe.choose(device, in_dtype or dtype)
    head_bytes = n_q * n_k * torch.empty((), dtype=dtype).element_size()
    if device.type == "cpu" and head_bytes <= budget // 2:
        return "cached"  # one head's kernel fits in half the budget: exponentials computed once
    return "chunked"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device):
    """A context that disables torch.autocast for `device`'s type (nullcontext where autocast has none)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type this torch's autocast does not know
        return contextlib.nullcontext()


def _sinkhorn_attention(q, k, v, *, iterations, tol, scale, rescale, return_stats, memory_budget_bytes, path):
    """`sinkhorn_attention` without validation; `path` None picks one, else one of PATHS (for tests)."""
    kw = dict(iterations=iterations, tol=tol, scale=scale, rescale=rescale, return_stats=return_stats,
              memory_budget_bytes=memory_budget_bytes)
    with _autocast_off(q.device):
        if path is not None or q.device.type not in _PROBED_DEVICES:
            return _sinkhorn_attention_fp32(q, k, v, path=path, **kw)
        budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
        path = _choose_path(q.device, _compute_dtype(q.dtype), q.shape[2], k.shape[2], budget, q.dtype)
        failures, last = [], None
        # each failure drops a path (or the fused Triton variant), so a few attempts always reach "chunked";
        # bounded all the same: a path that is not dropped must raise, not retry forever
        for _ in range(len(PATHS)):
            try:
                return _sinkhorn_attention_fp32(q, k, v, path=path, **kw)
            except torch.cuda.OutOfMemoryError:
                raise  # not the engine's fault: every path would need the memory
            except Exception as exc:
                if path == "chunked":
                    raise
                from asag_lib import kernel_probe

                failures.append(f"{path}: {type(exc).__name__}")
                last = exc
                path = kernel_probe.reject(q.device, q.dtype, path, exc)
        tried = "; ".join(dict.fromkeys(failures))
        raise RuntimeError(f"sinkhorn_attention: every Sinkhorn path failed on {q.device} ({tried})") from last


def _sinkhorn_attention_fp32(q, k, v, *, iterations, tol, scale, rescale, return_stats, memory_budget_bytes, path):
    """The body of `_sinkhorn_attention`, run with autocast off."""
    B, H, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
    cdt = _compute_dtype(q.dtype)
    if path is None:
        path = _choose_path(q.device, cdt, n_q, n_k, budget)
    if path not in PATHS:
        raise ValueError(f"sinkhorn_attention: path must be one of {PATHS}, got {path!r}")
    if path == "triton" and cdt == torch.float64:
        raise ValueError("sinkhorn_attention: the triton path computes in float32; float64 inputs take another path")
    # flattened views; each group is cast and scaled on its own (a cache-sized copy instead of one of every
    # head, whose fresh pages cost more than the copy); the triton kernel reads Q, K, V in their own dtype
    qf, kf, vf = q.reshape(B * H, n_q, d), k.reshape(B * H, n_k, d), v.reshape(B * H, n_k, d_v)
    esize = torch.empty((), dtype=cdt).element_size()
    # cache-sized blocks on CPU; on other devices (kernel-launch bound) as large as the budget allows
    block = max(1, min(_BLOCK_BYTES, budget // 2) if q.device.type == "cpu" else budget // 2)
    if path == "dense":
        # the kept scores stay cache-sized and take at most half the budget
        group = max(1, min(_DENSE_GROUP_BYTES, budget // 2) // (n_q * n_k * esize))
    elif path == "cached":
        # the cached kernels of the group: cache-sized where heads are small, else as many heads as half
        # the budget holds (the other half: the GEMM blocks and the exact engine's blocks)
        group = max(1, min(_CACHED_GROUP_BYTES, budget // 2) // (n_q * n_k * esize))
    elif path == "chunked":
        # blocks of at least _MIN_BLOCK_ROWS rows per head keep the score GEMMs efficient
        group = max(1, block // (_MIN_BLOCK_ROWS * max(n_q, n_k) * esize))
    else:
        group = B * H

    # the cached path's kernels: one buffer for every group of the call (page faults are paid once)
    buffer = q.new_empty(min(group, B * H), n_q, n_k, dtype=cdt) if path == "cached" else None
    out, stats = None, []
    for h0 in range(0, B * H, group):
        h1 = min(B * H, h0 + group)
        qg = qf[h0:h1].to(cdt) * (-scale * _LOG2E)
        kg, vg = (kf[h0:h1], vf[h0:h1]) if path == "triton" else (kf[h0:h1].to(cdt), vf[h0:h1].to(cdt))
        if path in ("dense", "chunked"):
            engine = _ScoreEngine(qg, kg, block, keep_scores=path == "dense")
        elif path == "cached":
            engine = _KernelCacheEngine(qg, kg, block, buffer)
        elif path == "triton":
            from asag_lib.sinkhorn_triton import TritonEngine

            engine = TritonEngine(qf[h0:h1], kg, -scale * _LOG2E)
        else:
            engine = _AttentionOpEngine(qg, kg, _flash_cpu_op if path == "flash_cpu" else _efficient_cuda_op)
        o, st = _sinkhorn_group(engine, qg, kg, vg, iterations, tol, return_stats)
        del engine
        if out is None:  # written group by group: no list of outputs to concatenate at the end
            out = o if h1 == B * H else o.new_empty(B * H, n_q, d_v)
        if out is not o:
            out[h0:h1] = o
        stats.append(st)
    if not rescale:
        out = out.div_(n_q)
    out = out.reshape(B, H, n_q, d_v).to(q.dtype)
    if not return_stats:
        return out
    ent, err, used = (torch.cat(x).reshape(B, H) for x in zip(*stats, strict=True))
    return out, SinkhornStats(row_entropy=ent.float(), marginal_error=err.float(), iterations_used=used)
