"""Triton engine for the ASAG Sinkhorn kernel (paper.md §4; the driver is `asag_lib.sinkhorn._sinkhorn_group`).

Base-2 logs throughout: S2 = c · Q Kᵀ with c = −scale · log2(e) (the adversarial cost), f2, g2 the row and
column potentials, LSE2 the base-2 log-sum-exp. Two variants, selected by ``TritonEngine(fused=…)`` (default
`FUSED`, True):

* **fused** (default), k + 1 launches of the score kernel for k iterations. `fused_kernel`: each program owns
  a block of BLOCK_M query rows of one head and sweeps the keys twice:
    sweep 1  lse_i = LSE2_j(S2_ij + g2_j)              (online LSE, flash-attention recurrence);
    sweep 2  part[r, j] = LSE2_{i in block r}(S2_ij − lse_i)  with the now-final lse of its own rows,
  written to a per-row-block partial buffer (G, n_row_blocks, n_k), fp32 and log-domain (a partial LSE per
  column, so nothing underflows however empty a column is). `col_reduce_kernel` then reduces that buffer over
  the row blocks in a fixed order (one small launch; no atomics), giving C_j = LSE2_i(S2_ij − lse_i), i.e.
  the exact column step g2_j = log2 b − log2 a − C_j with f2_i = log2 a − lse_i (the driver's ``log_cols``).
  Per iteration: 2 · n_q · n_k score dot products, 2 · n_q · n_k exp2, 2 launches (fused + reduction);
  each program loads its Q block once and streams K twice.
* **2k+1** (``fused=False``), 2k + 1 launches: one streaming LSE kernel (`lse_kernel`) per half-step, a row
  step (A = q, B = k, bias = g2) then an exact column step (A = k, B = q, bias = f2). Per iteration:
  2 · n_q · n_k dot products, 2 · n_q · n_k exp2, 2 launches; the row kernel streams K once (per block of
  rows), the column kernel streams Q once (per block of keys); O(N) extra memory.
Both end with the same row pass with V (`out_kernel`: out_i = Σ_j 2^(S2_ij + g2_j − lse_i) · V_j, and for
stats V widened to [V, k, g2]), which costs n_q · n_k dot products and exp2 plus the P·V product.
So the two do the same arithmetic and the same number of streaming sweeps; the fused one needs no column
kernel (no pass with queries and keys swapped, whose streamed operand is Q), keeps the row potentials of a
block in registers between its sweeps, and runs one score launch per iteration instead of two, at the price
of the small reduction launch and the partial buffer: 4 · n_row_blocks · n_k bytes per head,
O(N²/BLOCK_M) — 16 MiB per head at N = 16384 with BLOCK_M = 64 (d ≤ 128; 32 MiB with BLOCK_M = 32 for
d = 160). Heads go in chunks whose buffer stays within `PART_BYTES` (128 MiB), so B1 H10 N16384 D64 holds
128 MiB (8 heads, then 2), far under 1 GB; the 2k+1 variant needs O(N) (the LSE vectors). Which one
is faster on a GPU is not known yet: `bench/gpu_bench.py` times both, and the capability probe
(`asag_lib.kernel_probe`) runs both once per device and input dtype and keeps the accurate one, the faster
if both are (`CHOSEN`), so a fused kernel that fails to compile or disagrees costs only its speed.

Design choices, and why:
* Q, K, V stay in the input dtype (fp16/bf16/fp32); the score GEMMs accumulate in fp32 (`tl.dot` with fp32
  output), fp32 inputs use IEEE fp32 products (no TF32, which would cost ~1e-3), the potentials, the running
  max/sum, the partial LSEs and the output accumulator are fp32, exponentials are `exp2`. For half V the
  probabilities are rounded to V's dtype for the P·V product (as flash attention does; its accumulation
  stays fp32).
* Deterministic: every program writes only its own rows (and its own row of the partial buffer); the column
  reduction runs over the row blocks in a fixed order. No atomics, so the same inputs give the same bits.
* bf16 under the interpreter: see `_interpreter_upcast` (an interpreter limitation, not a GPU one).
* Launch configuration (`_config`): tile sizes by the bytes of the streamed tiles, two pipeline stages
  where three would not fit; a launch that runs out of shared memory or registers on some GPU is retried
  with halved blocks and one stage (`_shrinking`), so no GPU model is assumed.
* Language features: `tl.dot` (with `allow_tf32`), `tl.math.exp2`, `tl.math.log2` (Triton 2.1 has no
  `tl.exp2`), `tl.max`/`tl.sum` (along either axis), `tl.maximum`, `tl.where`, `tl.zeros`, masked loads and
  stores, `tl.program_id`, `range` loops with runtime bounds, constexpr `if`, jit helpers called from the
  kernels (`_load_rows`, `_row_block`, `_key_scores`, `_row_lse`: inlined; `_row_block` returns a tuple), the
  `num_stages` launch option: all present in Triton 2.1 (the fused variant added `tl.where`, column-axis
  reductions and [BLOCK, 1] row-state tensors). Two Triton 2.1 compiler limits shape the code: a kernel's
  names are looked up in its module's globals only (so `tl` and the helpers are made module globals by
  `_build`), and its layout pass rejects 1-D loop-carried row vectors in a kernel without a second dot ("cmpf
  requires the same encoding"), so the LSE-only kernels keep them as [BLOCK, 1] columns while `out_kernel`
  keeps the 1-D flash-attention form (which 2.1 compiles there, and the column form it does not). Triton 2.1
  aborts the process compiling `out_kernel` for sm_70/sm_75: `unsupported` makes the probe refuse that
  combination before any compile.
* Tested: every kernel under ``TRITON_INTERPRET=1`` (Triton 3.9.0) on CPU tensors against float64
  references; every launch configuration (fp16/bf16/fp32 × d 40/64/80/128/160 × with and without stats)
  compiled to a cubin for sm_80 by Triton 2.1.0 (A1111 1.10's torch 2.1.2), 2.3.1 (torch 2.3) and 3.9.0, and
  fp16 d=64 for sm_75/86/89 (and sm_90 with 3.9), without a GPU (`bench/triton_aot.py`; CI compiles the
  fp16 d=64 set with its Triton). Not yet run on a GPU: `bench/gpu.sh` runs the same tests on CUDA.

Triton is optional: nothing here imports it until a kernel is built (`available()` says whether it can be).
Kernels are built on first use; the interpreter is chosen by Triton from ``TRITON_INTERPRET`` at that time.
"""

from __future__ import annotations

import importlib.util
import os
import re

import torch
from torch import Tensor

__all__ = ["CHOSEN", "FUSED", "PART_BYTES", "FusedKernelError", "TritonEngine", "available", "device_key",
           "fused_pass", "interpreting", "lse_pass", "unsupported"]

#: The variant `TritonEngine` uses when not told: True = fused row pass (k + 1 launches), False = 2k + 1.
FUSED = True

#: The variant per ("cuda:0", input dtype) that the capability probe chose (`asag_lib.kernel_probe`: the
#: accurate one, the faster if both are); keys not in it use `FUSED`.
CHOSEN: dict[tuple[str, torch.dtype], bool] = {}

#: Bound on the fused variant's partial buffer (G, n_row_blocks, n_k) fp32 at once: heads go in chunks.
PART_BYTES = 128 * 2**20

_KERNELS: dict[bool, dict[str, object]] = {}


def available() -> bool:
    """Whether the triton package can be imported (no import is done here)."""
    return importlib.util.find_spec("triton") is not None


def unsupported(device: torch.device) -> str | None:
    """Why the kernels must not even be compiled on `device` with the installed Triton, or None.

    Triton 2.1 (A1111's torch 2.1.2) aborts the whole process, in a C++ assertion ("Unexpected mma -> mma
    layout conversion"), when it compiles the P·V kernel for GPUs older than sm_80 (seen for sm_70 and
    sm_75 with bench/triton_aot.py; 2.3 and 3.x compile it): an abort cannot be caught, so such a device is
    refused before any compile. Imports triton."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        import triton
    except Exception as exc:  # a broken install (missing library, wrong CUDA): not usable, never a crash
        return f"triton cannot be imported ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"

    version = tuple(int(x) for x in re.findall(r"\d+", triton.__version__)[:2])
    if version < (2, 2):
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 0):
            return (f"Triton {triton.__version__} cannot compile the kernels for sm_{major}{minor} "
                    "(its compiler aborts; sm_80+ or Triton >= 2.2 needed)")
    return None


def device_key(device: torch.device) -> str:
    """The device part of a `CHOSEN` key: "cuda:0" (index 0 when none is given)."""
    device = torch.device(device)
    return f"{device.type}:{device.index if device.index is not None else 0}"


def interpreting() -> bool:
    """Whether Triton will run kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _next_pow2(n: int, floor: int = 16) -> int:
    """tl.arange needs powers of two, tl.dot needs at least 16 along every dimension."""
    return max(floor, 1 << max(0, (n - 1).bit_length()))


def _build():
    """Defines the jit kernels (imports triton). Separate so that the module imports without triton."""
    # Triton 2.1's code generator looks the names a kernel uses up in its module's globals only (not in
    # this function's locals): `tl` and the jit helpers the kernels call must be module globals
    global tl, _load_rows, _row_block, _key_scores, _row_lse
    import triton
    import triton.language as tl

    @triton.jit
    def _load_rows(A, rows, row_ok, dims, d, s_an, UPCAST: tl.constexpr):
        """The [rows, dims] block of one head's A (masked; widened to fp32 where UPCAST)."""
        x = tl.load(A + rows[:, None] * s_an + dims[None, :], mask=row_ok[:, None] & (dims[None, :] < d),
                    other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _row_block(A, n_a, d, s_ag, s_an, BLOCK_A: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
        """This program's (row block, head) and its rows of A: (pid, g, rows, row_ok, dims, a)."""
        pid = tl.program_id(0)
        g = tl.program_id(1)
        rows = pid * BLOCK_A + tl.arange(0, BLOCK_A)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < n_a
        return pid, g, rows, row_ok, dims, _load_rows(A + g * s_ag, rows, row_ok, dims, d, s_an, UPCAST)

    @triton.jit
    def _key_scores(a, B, cols, col_ok, dims, d, c, s_bn, TF32: tl.constexpr, UPCAST: tl.constexpr):
        """c · a Bᵀ for the key block `cols` of one head's B (loaded transposed: [dims, cols])."""
        bt = tl.load(B + cols[None, :] * s_bn + dims[:, None], mask=col_ok[None, :] & (dims[:, None] < d),
                     other=0.0)
        if UPCAST:
            bt = bt.to(tl.float32)
        return tl.dot(a, bt, allow_tf32=TF32) * c

    @triton.jit
    def _row_lse(a, B, BIAS, n_b, dims, d, c, s_bn, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                 TF32: tl.constexpr, UPCAST: tl.constexpr):
        """LSE2_j(c · a_i · b_j + bias_j) as a [BLOCK_A, 1] column, online over the key blocks. Row state as
        [BLOCK_A, 1]: with 1-D row vectors here (and no second dot) Triton 2.1's layout pass fails ("cmpf
        requires the same encoding for all operands")."""
        m = tl.zeros([BLOCK_A, 1], dtype=tl.float32) - float("inf")  # running row max (base 2)
        z = tl.zeros([BLOCK_A, 1], dtype=tl.float32)  # running Σ 2^(s − m)
        for b0 in range(0, n_b, BLOCK_B):
            cols = b0 + tl.arange(0, BLOCK_B)
            col_ok = cols < n_b
            bias = tl.load(BIAS + cols, mask=col_ok, other=float("-inf"))
            s = _key_scores(a, B, cols, col_ok, dims, d, c, s_bn, TF32, UPCAST) + bias[None, :]
            m_new = tl.maximum(m, tl.max(s, 1)[:, None])  # finite: every block has a valid column
            z = z * tl.math.exp2(m - m_new) + tl.sum(tl.math.exp2(s - m_new), 1)[:, None]
            m = m_new
        return m + tl.math.log2(z)

    @triton.jit
    def lse_kernel(
        A, B, BIAS, LSE,
        n_a, n_b, d, c,
        s_ag, s_an, s_bg, s_bn, s_biasg, s_lseg,
        BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
        TF32: tl.constexpr, UPCAST: tl.constexpr,
    ):
        _, g, rows, row_ok, dims, a = _row_block(A, n_a, d, s_ag, s_an, BLOCK_A, BLOCK_D, UPCAST)
        lse = _row_lse(a, B + g * s_bg, BIAS + g * s_biasg, n_b, dims, d, c, s_bn, BLOCK_A, BLOCK_B, TF32, UPCAST)
        tl.store(LSE + g * s_lseg + rows[:, None], lse, mask=row_ok[:, None])

    @triton.jit
    def out_kernel(
        A, B, BIAS, LSE,
        n_a, n_b, d, c,
        s_ag, s_an, s_bg, s_bn, s_biasg, s_lseg,
        V, OUT, dv, s_vg, s_vn, s_og, s_on,  # lse_kernel's arguments, then V's and OUT's
        BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        TF32: tl.constexpr, UPCAST: tl.constexpr,
    ):
        # LSE and softmax · V (flash-attention recurrence); 1-D row vectors, which Triton 2.1 compiles here
        # (and the [BLOCK_A, 1] form of _row_lse it does not)
        _, g, rows, row_ok, dims, a = _row_block(A, n_a, d, s_ag, s_an, BLOCK_A, BLOCK_D, UPCAST)
        m = tl.zeros([BLOCK_A], dtype=tl.float32) - float("inf")  # running row max (base 2)
        z = tl.zeros([BLOCK_A], dtype=tl.float32)  # running Σ 2^(s − m)
        dvs = tl.arange(0, BLOCK_DV)
        acc = tl.zeros([BLOCK_A, BLOCK_DV], dtype=tl.float32)
        for b0 in range(0, n_b, BLOCK_B):
            cols = b0 + tl.arange(0, BLOCK_B)
            col_ok = cols < n_b
            bias = tl.load(BIAS + g * s_biasg + cols, mask=col_ok, other=float("-inf"))
            s = _key_scores(a, B + g * s_bg, cols, col_ok, dims, d, c, s_bn, TF32, UPCAST) + bias[None, :]
            m_new = tl.maximum(m, tl.max(s, 1))  # finite: every block has at least one valid column
            alpha = tl.math.exp2(m - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            z = z * alpha + tl.sum(p, 1)
            vb = _load_rows(V + g * s_vg, cols, col_ok, dvs, dv, s_vn, UPCAST)
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, allow_tf32=TF32)
            m = m_new
        tl.store(LSE + g * s_lseg + rows, m + tl.math.log2(z), mask=row_ok)
        tl.store(OUT + g * s_og + rows[:, None] * s_on + dvs[None, :], acc / z[:, None],
                 mask=row_ok[:, None] & (dvs[None, :] < dv))

    @triton.jit
    def fused_kernel(
        Q, K, BIAS, LSE, PART,
        n_q, n_k, d, c,
        s_qg, s_qn, s_kg, s_kn, s_biasg, s_lseg, s_pg, s_pr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        TF32: tl.constexpr, UPCAST: tl.constexpr,
    ):
        pid, g, rows, row_ok, dims, q = _row_block(Q, n_q, d, s_qg, s_qn, BLOCK_M, BLOCK_D, UPCAST)
        # sweep 1: lse_i = LSE2_j(S2_ij + g2_j), online over the key blocks
        lse = _row_lse(q, K + g * s_kg, BIAS + g * s_biasg, n_k, dims, d, c, s_kn, BLOCK_M, BLOCK_N, TF32, UPCAST)
        tl.store(LSE + g * s_lseg + rows[:, None], lse, mask=row_ok[:, None])
        # sweep 2: with these final row potentials, the column LSE of the row-normalised plan over this
        # block's rows, part_j = LSE2_i(S2_ij − lse_i); padded rows weigh 2^-inf = 0
        neg = tl.where(row_ok[:, None], -lse, float("-inf"))
        for b0 in range(0, n_k, BLOCK_N):
            cols = b0 + tl.arange(0, BLOCK_N)
            col_ok = cols < n_k
            x = _key_scores(q, K + g * s_kg, cols, col_ok, dims, d, c, s_kn, TF32, UPCAST) + neg
            mx = tl.max(x, 0)  # finite: every program has at least one valid row
            part = mx + tl.math.log2(tl.sum(tl.math.exp2(x - mx[None, :]), 0))
            tl.store(PART + g * s_pg + pid * s_pr + cols, part, mask=col_ok)

    @triton.jit
    def col_reduce_kernel(PART, OUT, n_rb, n_k, s_pg, s_pr, s_og, BLOCK: tl.constexpr):
        # OUT_j = LSE2_r PART[r, j], row blocks in a fixed order (deterministic, no atomics)
        pid = tl.program_id(0)
        g = tl.program_id(1)
        cols = pid * BLOCK + tl.arange(0, BLOCK)
        ok = cols < n_k
        base = PART + g * s_pg + cols
        m = tl.load(base, mask=ok, other=0.0)  # row block 0 always exists
        z = tl.zeros([BLOCK], dtype=tl.float32) + 1.0
        for r in range(1, n_rb):
            x = tl.load(base + r * s_pr, mask=ok, other=0.0)
            m_new = tl.maximum(m, x)
            z = z * tl.math.exp2(m - m_new) + tl.math.exp2(x - m_new)
            m = m_new
        tl.store(OUT + g * s_og + cols, m + tl.math.log2(z), mask=ok)

    return {"lse": lse_kernel, "out": out_kernel, "fused": fused_kernel, "reduce": col_reduce_kernel}


def _interpreter_upcast(dtype: torch.dtype) -> bool:
    """Triton's interpreter multiplies bf16 blocks as their raw uint16 bits (Triton 3.9's `create_dot`), so
    there bf16 blocks are widened to fp32 before `tl.dot`: bf16 products are exact in fp32, so this is the same
    math as the GPU's bf16 dot with fp32 accumulation. Compiled kernels never upcast."""
    return interpreting() and dtype == torch.bfloat16


def _kernel(name: str = "lse"):
    key = interpreting()
    if key not in _KERNELS:
        _KERNELS[key] = _build()
    return _KERNELS[key][name]


def _check_device(a: Tensor) -> None:
    if a.device.type != "cuda" and not interpreting():
        raise RuntimeError("the Triton path needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors")


#: Bytes of the streamed tiles (keys, and V) per pipeline stage that the launch configuration aims under.
_STAGE_BYTES = 32 * 2**10


def _config(block_d: int, block_dv: int, es_b: int, es_v: int) -> tuple[int, int, int | None]:
    """(rows per program, keys per block, pipeline stages or None for Triton's default) for a kernel that
    streams key tiles of BLOCK_D × es_b bytes per key (and V tiles of BLOCK_DV × es_v): smaller tiles for
    wide heads (d = 160 pads to 256; stats widen V to d_v + d + 1 in fp32) and fp32 inputs, and two stages
    where three would not fit, so that the tiles stay within a GPU's registers and shared memory (checked
    by compiling every configuration with Triton 2.1, 2.3 and 3.9: bench/triton_aot.py, bench/RESULTS.md).
    A launch that still runs out of resources on some GPU is retried smaller (`_shrinking`)."""
    block_a = block_b = 64 if max(block_d, block_dv) <= 128 else 32
    per_key = block_d * es_b + block_dv * es_v
    while block_b > 16 and block_b * per_key > _STAGE_BYTES:
        block_b //= 2
    if block_dv * es_v >= 1024:  # a wide fp32 accumulator: fewer rows per program
        block_a = 16
    stages = None if 3 * block_b * per_key <= 2 * _STAGE_BYTES else 2
    return block_a, block_b, stages


def _out_of_resources(exc: BaseException) -> bool:
    """Triton's OutOfResources (shared memory, registers), whatever module it lives in, or the CUDA launch
    error "too many resources requested for launch"."""
    msg = str(exc).lower()
    return type(exc).__name__ == "OutOfResources" or "out of resource" in msg or "too many resources" in msg


def _shrinking(launch, block_a: int, block_b: int, stages: int | None):
    """launch(block_a, block_b, stages); on out-of-resources, again with halved blocks and one stage."""
    while True:
        try:
            return launch(block_a, block_b, stages)
        except Exception as exc:
            if not _out_of_resources(exc) or (block_a, block_b, stages) == (16, 16, 1):
                raise
            block_a, block_b, stages = max(16, block_a // 2), max(16, block_b // 2), 1


def _stages(stages: int | None) -> dict:
    return {} if stages is None else {"num_stages": stages}


def lse_pass(a: Tensor, b: Tensor, bias: Tensor, c: float, v: Tensor | None = None,
             block_a: int | None = None, block_b: int | None = None) -> tuple[Tensor, Tensor | None]:
    """LSE2_b(c · a·bᵀ + bias) per row of a (G, n_a), and softmax · v (G, n_a, d_v) fp32 if v is given.

    a: (G, n_a, d), b: (G, n_b, d) in one dtype; bias: (G, n_b) fp32; v: (G, n_b, d_v) or None.
    """
    _check_device(a)
    a, b, bias = a.contiguous(), b.contiguous(), bias.contiguous().float()
    G, n_a, d = a.shape
    n_b = b.shape[1]
    lse = torch.empty(G, n_a, dtype=torch.float32, device=a.device)
    block_d = _next_pow2(d)
    args = (a, b, bias, lse, n_a, n_b, d, float(c),
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), bias.stride(0), lse.stride(0))
    if v is None:
        out, kernel, v_consts = None, _kernel("lse"), {}
        da, db, stages = _config(block_d, 16, b.element_size(), 0)
    else:
        v = v.contiguous()
        dv = v.shape[2]
        out = torch.empty(G, n_a, dv, dtype=torch.float32, device=a.device)
        kernel, v_consts = _kernel("out"), {"BLOCK_DV": _next_pow2(dv)}
        args += (v, out, dv, v.stride(0), v.stride(1), out.stride(0), out.stride(1))
        da, db, stages = _config(block_d, v_consts["BLOCK_DV"], b.element_size(), v.element_size())

    def launch(block_a, block_b, stages):
        kernel[(-(-n_a // block_a), G)](
            *args, BLOCK_A=block_a, BLOCK_B=block_b, BLOCK_D=block_d, TF32=False,
            UPCAST=_interpreter_upcast(a.dtype), **v_consts, **_stages(stages),
        )

    _shrinking(launch, block_a or da, block_b or db, stages)
    return lse, out


#: Keys per program of the column reduction.
_REDUCE_BLOCK = 128


def fused_pass(q: Tensor, k: Tensor, bias: Tensor, c: float, block_m: int | None = None,
               block_n: int | None = None, part_bytes: int | None = None) -> tuple[Tensor, Tensor]:
    """The fused row pass: (lse (G, n_q), col (G, n_k)) fp32, base 2, with S2 = c · q·kᵀ:

        lse_i = LSE2_j(S2_ij + bias_j),   col_j = LSE2_i(S2_ij − lse_i).

    q: (G, n_q, d), k: (G, n_k, d) in one dtype; bias: (G, n_k) fp32. Heads go in chunks whose partial
    buffer (heads, ceil(n_q / block_m), n_k) fp32 stays within `part_bytes` (default `PART_BYTES`).
    """
    _check_device(q)
    q, k, bias = q.contiguous(), k.contiguous(), bias.contiguous().float()
    G, n_q, d = q.shape
    n_k = k.shape[1]
    block_d = _next_pow2(d)
    dm, dn, stages = _config(block_d, 16, k.element_size(), 0)
    lse = torch.empty(G, n_q, dtype=torch.float32, device=q.device)
    col = torch.empty(G, n_k, dtype=torch.float32, device=q.device)
    fused, reduce = _kernel("fused"), _kernel("reduce")
    upcast = _interpreter_upcast(q.dtype)
    budget = PART_BYTES if part_bytes is None else part_bytes

    def launch(block_m, block_n, stages):
        n_rb = -(-n_q // block_m)
        chunk = max(1, min(G, budget // (n_rb * n_k * 4)))
        part = torch.empty(chunk, n_rb, n_k, dtype=torch.float32, device=q.device)
        for h0 in range(0, G, chunk):
            h1 = min(G, h0 + chunk)
            qc, kc, bc, lc, cc = q[h0:h1], k[h0:h1], bias[h0:h1], lse[h0:h1], col[h0:h1]
            fused[(n_rb, h1 - h0)](
                qc, kc, bc, lc, part,
                n_q, n_k, d, float(c),
                qc.stride(0), qc.stride(1), kc.stride(0), kc.stride(1), bc.stride(0), lc.stride(0),
                part.stride(0), part.stride(1),
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, TF32=False, UPCAST=upcast, **_stages(stages),
            )
            reduce[(-(-n_k // _REDUCE_BLOCK), h1 - h0)](
                part, cc, n_rb, n_k, part.stride(0), part.stride(1), cc.stride(0), BLOCK=_REDUCE_BLOCK,
            )

    _shrinking(launch, block_m or dm, block_n or dn, stages)
    return lse, col


class FusedKernelError(RuntimeError):
    """The fused row pass failed (compile error, resources): the 2k + 1 variant may still work."""


class TritonEngine:
    """The engine interface of `asag_lib.sinkhorn` (row_pass / col_pass) on the Triton kernels.

    q, k: (G, n, d) in the input dtype, unscaled; c = −scale · log2(e) is applied to the fp32 scores.
    fused (default: the probe's choice for this device and input dtype, `CHOSEN`, else `FUSED`): row passes
    that are not the last also return the column LSE (`fused_pass`), in log domain (``log_cols``:
    col_j = LSE2_i(S2_ij − lse_i)); False: the 2k + 1 variant.
    """

    log_cols = True

    def __init__(self, q: Tensor, k: Tensor, c: float, block_a: int | None = None, block_b: int | None = None,
                 fused: bool | None = None):
        self.q, self.k, self.c = q.contiguous(), k.contiguous(), c
        self.blocks = (block_a, block_b)
        if fused is None:
            fused = CHOSEN.get((device_key(q.device), q.dtype), FUSED)
        self.fused_cols = bool(fused)

    def row_pass(self, g2: Tensor, sel: Tensor | None, want_col: bool, vx: Tensor | None,
                 normalized: bool = True):
        q = self.q if sel is None else self.q[sel]
        k = self.k if sel is None else self.k[sel]
        if want_col and vx is None and self.fused_cols:
            try:
                lse, col = fused_pass(q, k, g2, self.c, *self.blocks)
            except torch.cuda.OutOfMemoryError:
                raise  # not this kernel's fault (the driver's policy: out of memory is re-raised)
            except Exception as exc:  # tells the probe's `reject` that the 2k + 1 variant may still work
                raise FusedKernelError(f"{type(exc).__name__}: {exc}") from exc
            return lse, col, None
        lse, out = lse_pass(q, k, g2, self.c, vx, *self.blocks)
        return lse, None, out

    def col_pass(self, f2: Tensor, sel: Tensor | None) -> Tensor:
        q = self.q if sel is None else self.q[sel]
        k = self.k if sel is None else self.k[sel]
        return lse_pass(k, q, f2, self.c, None, *self.blocks)[0]
