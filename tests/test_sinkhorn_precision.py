"""The kernel under the hosts' precision settings (issue 9 items 4 and 6, issue 12 "Precision").

Every expectation comes from the float64 reference in tests/test_sinkhorn.py (a plain dense loop).
"""

from __future__ import annotations

import math

import pytest
import torch

from asag_lib.sinkhorn import sinkhorn_attention
from tests.test_sinkhorn import PATHS, make, reference, rel_err, run

# --------------------------------------------------------------------------------------------------------
# autocast: A1111's default precision mode runs the UNet inside torch.autocast


def _require_cpu_autocast(dtype: torch.dtype) -> None:
    """torch 2.1 (A1111 1.10's) autocasts on the CPU to bfloat16 only; skip the dtypes it refuses."""
    try:
        with torch.autocast("cpu", dtype=dtype):
            pass
    except RuntimeError as exc:
        pytest.skip(f"this torch has no CPU autocast to {dtype}: {exc}")


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", PATHS)
def test_cpu_autocast_still_computes_in_float32(path, autocast_dtype):
    _require_cpu_autocast(autocast_dtype)
    q, k, v = make(2, 2, 64, 72, 64, sharp=2.0, seed=11)
    r_out, r_ent, r_err, r_used = reference(q, k, v, iterations=3, tol=0.0)
    with torch.autocast("cpu", dtype=autocast_dtype):
        out, st = run(q, k, v, path, iterations=3, tol=0.0, return_stats=True)
        assert (q @ k.transpose(-1, -2)).dtype == autocast_dtype  # the caller's autocast is back after the call
    assert out.dtype == torch.float32
    assert rel_err(out, r_out) <= 1e-5, rel_err(out, r_out)  # a bf16 GEMM gives ~1e-2
    torch.testing.assert_close(st.row_entropy.double(), r_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.marginal_error.double(), r_err, rtol=1e-4, atol=2e-6)
    assert torch.equal(st.iterations_used, r_used)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_under_autocast_match_float64_of_the_rounded_inputs(dtype):
    """--upcast-sampling / fp16 UNet under autocast: half inputs, float32 inside, result rounded once."""
    q, k, v = make(1, 3, 48, 40, 64, sharp=1.5, seed=12, dtype=dtype)
    r_out = reference(q, k, v, iterations=2, tol=0.0)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sinkhorn_attention(q, k, v, iterations=2, tol=0.0)
    assert out.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert rel_err(out, r_out) <= 2 * eps, rel_err(out, r_out)


# --------------------------------------------------------------------------------------------------------
# tol=0 never stops early; entropy stays in [0, log n_k]


def constant_key_head(seed=13):
    """Head 0: every key equal, so one iteration gives the exact plan (marginal error exactly 0);
    head 1: ordinary logits."""
    q, k, v = make(1, 2, 32, 32, 16, sharp=2.0, seed=seed)  # powers of 2: log2 n exact
    k[:, 0] = 0.0
    return q, k, v


@pytest.mark.parametrize("path", PATHS)
def test_tol_zero_runs_every_iteration_even_when_the_error_is_exactly_zero(path):
    q, k, v = constant_key_head()
    out, st = run(q, k, v, path, iterations=4, tol=0.0, return_stats=True)
    assert st.marginal_error[0, 0].item() == 0.0  # the case that froze the head before
    assert st.iterations_used.tolist() == [[4, 4]]
    r_out, _, _, r_used = reference(q, k, v, iterations=4, tol=0.0)
    assert torch.equal(st.iterations_used, r_used)
    assert rel_err(out, r_out) <= 1e-5


@pytest.mark.parametrize("path", PATHS)
def test_row_entropy_never_negative_and_never_above_log_n_k(path):
    # one key: every row-normalised plan row is [1], entropy exactly 0 (rounding made it -1e-7 before)
    q, k, v = make(2, 4, 37, 1, 80, sharp=3.0, seed=14)
    _, st = run(q, k, v, path, iterations=2, tol=0.0, return_stats=True)
    assert (st.row_entropy == 0).all(), st.row_entropy
    # constant keys: uniform rows, entropy log n_k, never above it
    q, k, v = constant_key_head()
    _, st = run(q, k, v, path, iterations=2, tol=0.0, return_stats=True)
    assert st.row_entropy[0, 0] <= torch.tensor(math.log(32), dtype=torch.float32)  # log n_k, as float32
    assert st.row_entropy[0, 0].item() == pytest.approx(math.log(32), rel=1e-6)
    assert (st.row_entropy >= 0).all()
