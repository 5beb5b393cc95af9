"""Triton engine for the ASAG Sinkhorn kernel (paper.md §4; the driver is `asag_lib.sinkhorn._sinkhorn_group`).

One jit kernel serves every half-step. For a block of rows a of A (queries in a row step, keys in a column
step) it streams over blocks of B and keeps an online base-2 log-sum-exp (the flash-attention recurrence):

    lse_a = LSE2_b(c · A_a·B_b + bias_b),    and optionally   out_a = Σ_b 2^(c·A_a·B_b + bias_b − lse_a) · V_b,

with c = −scale · log2(e) (the adversarial cost, base-2 logs). Row step: A = q, B = k, bias = g2 (the column
potential); column step: A = k, B = q, bias = f2 — the exact log-domain column step, so no column can
underflow and no fallback is needed. The last row step also multiplies by V (and, for stats, by [k, g2]).

Design choices, and why:
* Q, K, V stay in the input dtype (fp16/bf16/fp32); the score GEMMs accumulate in fp32 (`tl.dot` with fp32
  output), fp32 inputs use IEEE fp32 products (no TF32, which would cost ~1e-3), the potentials, the running
  max/sum and the output accumulator are fp32, exponentials are `exp2`. For half V the probabilities are
  rounded to V's dtype for the P·V product (as flash attention does; its accumulation stays fp32).
* Each program owns a block of rows and writes only those: no atomics, no cross-program reduction, so the
  same inputs give the same bits. Extra memory is O(N) (the LSE and the potentials) plus the O(N·D) output.
* Column sums fused into the row pass (the CPU engines' trick) would need each row's final LSE while its
  scores are still at hand, i.e. a second sweep over the keys plus an O(N²/BLOCK) partial buffer; the exact
  column kernel costs the same one sweep with O(N) memory. So k iterations are 2k + 1 sweeps over the
  scores (row, column, …, final row with V), each a single streaming pass like one attention call.
* bf16 under the interpreter: see `_interpreter_upcast` (an interpreter limitation, not a GPU one).
* Language features: `tl.dot` (with `allow_tf32`), `tl.exp2`, `tl.log2`, `tl.max`, `tl.sum`, masked loads,
  `tl.program_id`, a `range` loop: all present since Triton 2.1. Tested with Triton 3.9.0 under
  ``TRITON_INTERPRET=1`` on CPU tensors only (no GPU here); `bench/gpu.sh` runs the same tests on CUDA.

Triton is optional: nothing here imports it until a kernel is built (`available()` says whether it can be).
Kernels are built on first use; the interpreter is chosen by Triton from ``TRITON_INTERPRET`` at that time.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

__all__ = ["TritonEngine", "available", "interpreting"]

_KERNELS: dict[bool, object] = {}


def available() -> bool:
    """Whether the triton package can be imported (no import is done here)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton will run kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _next_pow2(n: int, floor: int = 16) -> int:
    """tl.arange needs powers of two, tl.dot needs at least 16 along every dimension."""
    return max(floor, 1 << max(0, (n - 1).bit_length()))


def _build():
    """Defines the jit kernel (imports triton). Separate so that the module imports without triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def lse_kernel(
        A, B, BIAS, LSE, V, OUT,
        n_a, n_b, d, dv, c,
        s_ag, s_an, s_bg, s_bn, s_biasg, s_lseg, s_vg, s_vn, s_og, s_on,
        BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_V: tl.constexpr, TF32: tl.constexpr, UPCAST: tl.constexpr,
    ):
        pid = tl.program_id(0)
        g = tl.program_id(1)
        rows = pid * BLOCK_A + tl.arange(0, BLOCK_A)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < n_a
        a = tl.load(A + g * s_ag + rows[:, None] * s_an + dims[None, :],
                    mask=row_ok[:, None] & (dims[None, :] < d), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
        m = tl.zeros([BLOCK_A], dtype=tl.float32) - float("inf")  # running row max (base 2)
        z = tl.zeros([BLOCK_A], dtype=tl.float32)  # running Σ 2^(s − m)
        dvs = tl.arange(0, BLOCK_DV)
        acc = tl.zeros([BLOCK_A, BLOCK_DV], dtype=tl.float32)
        for b0 in range(0, n_b, BLOCK_B):
            cols = b0 + tl.arange(0, BLOCK_B)
            col_ok = cols < n_b
            bt = tl.load(B + g * s_bg + cols[None, :] * s_bn + dims[:, None],
                         mask=col_ok[None, :] & (dims[:, None] < d), other=0.0)
            if UPCAST:
                bt = bt.to(tl.float32)
            bias = tl.load(BIAS + g * s_biasg + cols, mask=col_ok, other=float("-inf"))
            s = tl.dot(a, bt, allow_tf32=TF32) * c + bias[None, :]
            m_new = tl.maximum(m, tl.max(s, 1))  # finite: every block has at least one valid column
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            z = z * alpha + tl.sum(p, 1)
            if HAS_V:
                vb = tl.load(V + g * s_vg + cols[:, None] * s_vn + dvs[None, :],
                             mask=col_ok[:, None] & (dvs[None, :] < dv), other=0.0)
                if UPCAST:
                    vb = vb.to(tl.float32)
                acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, allow_tf32=TF32)
            m = m_new
        tl.store(LSE + g * s_lseg + rows, m + tl.log2(z), mask=row_ok)
        if HAS_V:
            tl.store(OUT + g * s_og + rows[:, None] * s_on + dvs[None, :], acc / z[:, None],
                     mask=row_ok[:, None] & (dvs[None, :] < dv))

    return lse_kernel


def _interpreter_upcast(dtype: torch.dtype) -> bool:
    """Triton's interpreter multiplies bf16 blocks as their raw uint16 bits (Triton 3.9's `create_dot`), so
    there bf16 blocks are widened to fp32 before `tl.dot`: bf16 products are exact in fp32, so this is the same
    math as the GPU's bf16 dot with fp32 accumulation. Compiled kernels never upcast."""
    return interpreting() and dtype == torch.bfloat16


def _kernel():
    key = interpreting()
    if key not in _KERNELS:
        _KERNELS[key] = _build()
    return _KERNELS[key]


def _blocks(block_d: int, block_dv: int) -> tuple[int, int]:
    """Smaller tiles for wide heads (d = 160 pads to 256; stats widen V to d_v + d + 1) so that the
    tiles and the fp32 accumulator fit a GPU's registers and shared memory."""
    wide = max(block_d, block_dv)
    if wide <= 128:
        return 64, 64
    return (32, 32) if wide <= 256 else (16, 32)


def lse_pass(a: Tensor, b: Tensor, bias: Tensor, c: float, v: Tensor | None = None,
             block_a: int | None = None, block_b: int | None = None) -> tuple[Tensor, Tensor | None]:
    """LSE2_b(c · a·bᵀ + bias) per row of a (G, n_a), and softmax · v (G, n_a, d_v) fp32 if v is given.

    a: (G, n_a, d), b: (G, n_b, d) in one dtype; bias: (G, n_b) fp32; v: (G, n_b, d_v) or None.
    """
    if a.device.type != "cuda" and not interpreting():
        raise RuntimeError("the Triton path needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors")
    a, b, bias = a.contiguous(), b.contiguous(), bias.contiguous().float()
    G, n_a, d = a.shape
    n_b = b.shape[1]
    lse = torch.empty(G, n_a, dtype=torch.float32, device=a.device)
    if v is not None:
        v = v.contiguous()
        dv = v.shape[2]
        out = torch.empty(G, n_a, dv, dtype=torch.float32, device=a.device)
    else:  # the kernel still takes pointers; these are never read or written
        dv, v, out = 1, lse, lse
    block_d, block_dv = _next_pow2(d), _next_pow2(dv)
    da, db = _blocks(block_d, block_dv)
    block_a, block_b = block_a or da, block_b or db
    grid = (-(-n_a // block_a), G)
    _kernel()[grid](
        a, b, bias, lse, v, out,
        n_a, n_b, d, dv, float(c),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), bias.stride(0), lse.stride(0),
        v.stride(0), v.stride(1) if v.dim() > 2 else 0, out.stride(0), out.stride(1) if out.dim() > 2 else 0,
        BLOCK_A=block_a, BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_DV=block_dv,
        HAS_V=v is not lse, TF32=False, UPCAST=_interpreter_upcast(a.dtype),
    )
    return lse, (out if v is not lse else None)


class TritonEngine:
    """The engine interface of `asag_lib.sinkhorn` (row_pass / col_pass) on the Triton kernel.

    q, k: (G, n, d) in the input dtype, unscaled; c = −scale · log2(e) is applied to the fp32 scores.
    """

    fused_cols = False

    def __init__(self, q: Tensor, k: Tensor, c: float, block_a: int | None = None, block_b: int | None = None):
        self.q, self.k, self.c = q.contiguous(), k.contiguous(), c
        self.blocks = (block_a, block_b)

    def row_pass(self, g2: Tensor, sel: Tensor | None, want_col: bool, vx: Tensor | None):
        q = self.q if sel is None else self.q[sel]
        k = self.k if sel is None else self.k[sel]
        lse, out = lse_pass(q, k, g2, self.c, vx, *self.blocks)
        return lse, None, out

    def col_pass(self, f2: Tensor, sel: Tensor | None) -> Tensor:
        q = self.q if sel is None else self.q[sel]
        k = self.k if sel is None else self.k[sel]
        return lse_pass(k, q, f2, self.c, None, *self.blocks)[0]
