"""Every path of the kernel on one device, every input dtype, autocast: run by bench/gpu.sh (issue 12).

Skipped unless ASAG_TEST_DEVICE names a device: `cuda` on a GPU machine (paths auto, triton, cuda, chunked),
`cpu` for `bench/gpu.sh --dry-run` (the same tests with triton in its interpreter and the CPU flash op in
place of the CUDA one). Expectations: the float64 reference of tests/test_sinkhorn.py on the same (rounded)
inputs.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

DEVICE = os.environ.get("ASAG_TEST_DEVICE")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before the first kernel is built

from asag_lib import sinkhorn as sk  # noqa: E402
from tests.test_sinkhorn import make, reference, rel_err  # noqa: E402

pytestmark = pytest.mark.skipif(DEVICE is None, reason="bench/gpu.sh sets ASAG_TEST_DEVICE (cuda, or cpu for --dry-run)")

HAS_TRITON = importlib.util.find_spec("triton") is not None
if DEVICE == "cuda":
    PATHS = ["auto", "triton", "cuda", "chunked"]
else:
    PATHS = ["auto", "triton", "flash_cpu", "chunked"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# half inputs: the reference sees the same rounded inputs; the result is rounded once (eps/2), and a GPU
# kernel may round P to the input dtype for P·V (flash-attention style)
TOL = {torch.float32: 1e-5, torch.float16: 2 * torch.finfo(torch.float16).eps,
       torch.bfloat16: 2 * torch.finfo(torch.bfloat16).eps}


def run(q, k, v, path, **kw):
    if path == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    if path == "auto":
        return sk.sinkhorn_attention(q, k, v, **kw)
    args = dict(iterations=2, tol=1e-3, scale=None, rescale=True, return_stats=False, memory_budget_bytes=None)
    args.update(kw)
    return sk._sinkhorn_attention(q, k, v, path=path, **args)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("path", PATHS)
def test_path_dtype_against_float64(path, dtype):
    q, k, v = make(2, 2, 77, 50, 64, 40, sharp=2.0, seed=31, dtype=dtype)
    out, st = run(q, k, v, path, iterations=3, tol=0.0, return_stats=True)
    r_out, r_ent, r_err, r_used = reference(q, k, v, iterations=3, tol=0.0)
    assert out.dtype == dtype and out.device.type == DEVICE
    assert rel_err(out.cpu(), r_out) <= TOL[dtype], rel_err(out.cpu(), r_out)
    assert torch.equal(st.iterations_used.cpu(), r_used)
    torch.testing.assert_close(st.row_entropy.cpu().double(), r_ent, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(st.marginal_error.cpu().double(), r_err, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_path_under_autocast(path):
    q, k, v = make(1, 2, 64, 72, 64, sharp=2.0, seed=32)
    with torch.autocast(DEVICE, dtype=torch.float16 if DEVICE == "cuda" else torch.bfloat16):
        out = run(q, k, v, path, iterations=3, tol=0.0)
    assert out.dtype == torch.float32
    assert rel_err(out.cpu(), reference(q, k, v, iterations=3, tol=0.0)[0]) <= 1e-5


@pytest.mark.parametrize("path", PATHS)
def test_path_early_stop_head_dims(path):
    for d in (40, 80, 160):
        q, k, v = make(1, 2, 33, 47, d, sharp=0.5, seed=d)
        out, st = run(q, k, v, path, iterations=5, tol=1e-3, return_stats=True)
        r_out, _, _, r_used = reference(q, k, v, iterations=5, tol=1e-3)
        assert torch.equal(st.iterations_used.cpu(), r_used)
        assert rel_err(out.cpu(), r_out) <= 1e-5
