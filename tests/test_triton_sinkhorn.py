"""The Triton path of the ASAG kernel against the float64 reference (issue 12).

On a CPU machine the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here before any kernel
is built); `bench/gpu.sh` runs this file with ASAG_TEST_DEVICE=cuda, compiled on the GPU. Skipped cleanly
when triton is not installed (CI installs it: requirements-test.txt). Shapes are small: the interpreter is
slow. Expectations come from `reference` (a plain float64 dense loop, tests/test_sinkhorn.py).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

DEVICE = os.environ.get("ASAG_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before the first kernel is built (Triton reads it at jit time)

pytest.importorskip("triton")

from asag_lib import sinkhorn as sk  # noqa: E402
from tests.test_sinkhorn import make, mixed_heads, reference, rel_err  # noqa: E402


def triton(q, k, v, **kw):
    args = dict(iterations=2, tol=1e-3, scale=None, rescale=True, return_stats=False, memory_budget_bytes=None)
    args.update(kw)
    return sk._sinkhorn_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), path="triton", **args)


def cpu(x):
    return x.cpu() if isinstance(x, torch.Tensor) else x


SHAPES = [  # B, H, n_q, n_k, d, d_v, sharp — head dims of SD1 (40, 80, 160), SDXL (64), DiT (128)
    (1, 2, 37, 53, 40, 40, 1.0),  # odd sizes, n_k > n_q
    (2, 1, 70, 33, 64, 24, 2.5),  # n_k < n_q, d_v != d, more than one block of rows
    (1, 1, 45, 45, 80, 80, 1.5),
    (1, 1, 24, 40, 128, 128, 1.0),
    (1, 1, 20, 17, 160, 160, 1.0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])))
def test_fp32_matches_float64_reference_with_stats(shape):
    B, H, n_q, n_k, d, d_v, sharp = shape
    q, k, v = make(B, H, n_q, n_k, d, d_v, sharp)
    out, st = triton(q, k, v, iterations=3, tol=0.0, return_stats=True)
    r_out, r_ent, r_err, r_used = reference(q, k, v, iterations=3, tol=0.0)
    assert out.shape == (B, H, n_q, d_v) and out.dtype == torch.float32
    assert rel_err(cpu(out), r_out) <= 1e-5
    assert torch.equal(cpu(st.iterations_used), r_used)
    torch.testing.assert_close(cpu(st.row_entropy).double(), r_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cpu(st.marginal_error).double(), r_err, rtol=1e-4, atol=2e-6)


def test_early_stop_is_per_head_and_rescale_false():
    q, k, v = mixed_heads()
    out, st = triton(q, k, v, iterations=6, tol=1e-3, return_stats=True)
    assert cpu(st.iterations_used).tolist() == [[1, 6]]
    r_out = reference(q, k, v, iterations=6, tol=1e-3)[0]
    assert rel_err(cpu(out), r_out) <= 1e-5
    raw = triton(q, k, v, iterations=6, tol=1e-3, rescale=False)
    assert rel_err(cpu(raw), r_out / 64) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_within_their_rounding(dtype):
    q, k, v = make(1, 2, 40, 56, 64, sharp=1.5, seed=21, dtype=dtype)
    out = triton(q, k, v, iterations=2, tol=0.0)
    assert out.dtype == dtype
    # the reference sees the same rounded inputs; the output is rounded once more (≤ eps/2), and P is
    # rounded to V's dtype for the P·V product on a GPU (flash-attention style)
    assert rel_err(cpu(out), reference(q, k, v, iterations=2, tol=0.0)[0]) <= 2 * torch.finfo(dtype).eps


def test_autocast_does_not_lower_precision():
    q, k, v = make(1, 2, 33, 40, 64, sharp=2.0, seed=22)
    with torch.autocast(DEVICE, dtype=torch.bfloat16 if DEVICE == "cpu" else torch.float16):
        out, st = triton(q, k, v, iterations=3, tol=0.0, return_stats=True)
    r_out, r_ent, _, _ = reference(q, k, v, iterations=3, tol=0.0)
    assert out.dtype == torch.float32
    assert rel_err(cpu(out), r_out) <= 1e-5
    torch.testing.assert_close(cpu(st.row_entropy).double(), r_ent, rtol=1e-5, atol=1e-5)


def test_deterministic_and_extreme_logits_exact():
    """Same inputs, same bits (no atomics); logits of ±1e4 stay finite and match (exact column step)."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 2, 40, 64, generator=gen).sign() * 40.0
    k = torch.randn(1, 2, 48, 64, generator=gen) * 40.0
    v = torch.randn(1, 2, 48, 32, generator=gen)
    a, st = triton(q, k, v, iterations=3, return_stats=True)
    b, st_b = triton(q, k, v, iterations=3, return_stats=True)
    assert torch.equal(a, b) and torch.equal(st.row_entropy, st_b.row_entropy)
    r_out, _, _, r_used = reference(q, k, v, iterations=3)
    assert rel_err(cpu(a), r_out) <= 1e-3  # fp32 rounding of logits of 1e4 is ~1e-3 absolute
    assert torch.equal(cpu(st.iterations_used), r_used)


def test_float64_inputs_are_refused_with_a_clear_error():
    q, k, v = make(1, 1, 16, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="triton path computes in float32"):
        triton(q, k, v)


def test_log2_scale_constant():
    # a wrong exp base or a dropped log2(e) shows up as a different plan for an explicit scale
    q, k, v = make(1, 1, 30, 30, 64, sharp=2.0, seed=23)
    out = triton(q, k, v, scale=0.3, iterations=2, tol=0.0)
    assert rel_err(cpu(out), reference(q, k, v, scale=0.3, iterations=2, tol=0.0)[0]) <= 1e-5
    assert math.isfinite(out.abs().max().item())
