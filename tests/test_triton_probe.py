"""The CUDA capability probe and its fallbacks, exercised on the CPU (issue 12: "never a crash").

No GPU and no triton needed: the probe runs on "cpu" (added to the probed device types), the Triton
kernels are replaced by small torch stand-ins (or by one that raises / disagrees), and the efficient-attention
engine runs on torch's CPU flash op (same engine code, other op). Expectations come from the float64
reference of tests/test_sinkhorn.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from asag_lib import kernel_probe, sinkhorn_triton
from asag_lib import sinkhorn as sk
from tests.test_sinkhorn import make, reference, rel_err

LN2 = math.log(2.0)
needs_flash_cpu = pytest.mark.skipif(
    not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"),
    reason="this torch (< 2.2) has no CPU flash op to stand in for the efficient-attention engine")


def torch_lse_pass(a, b, bias, c, v=None, block_a=64, block_b=64):
    """What the Triton kernel computes, in plain torch (base-2 LSE of c·a·bᵀ + bias, softmax · v)."""
    s = (c * (a.float() @ b.float().transpose(1, 2)) + bias.float()[:, None, :]) * LN2
    return torch.logsumexp(s, -1) / LN2, (None if v is None else torch.softmax(s, -1) @ v.float())


def torch_fused_pass(q, k, bias, c, *rest, **kw):
    """What the fused Triton row pass computes: the row LSE with the bias, the column LSE of the row-normalised
    plan (base 2)."""
    s = c * (q.float() @ k.float().transpose(1, 2))
    lse = torch.logsumexp((s + bias.float()[:, None, :]) * LN2, -1) / LN2
    return lse, torch.logsumexp((s - lse[:, :, None]) * LN2, 1) / LN2


@pytest.fixture
def probe_on_cpu(monkeypatch):
    """The probe runs for CPU tensors, 'triton' is the torch stand-in, 'cuda' uses the CPU flash op."""
    kernel_probe.forget()
    monkeypatch.setattr(sk, "_PROBED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(sinkhorn_triton, "available", lambda: True)
    monkeypatch.setattr(sinkhorn_triton, "lse_pass", torch_lse_pass)
    monkeypatch.setattr(sinkhorn_triton, "fused_pass", torch_fused_pass)
    monkeypatch.setattr(sk, "_efficient_cuda_op", sk._flash_cpu_op)
    monkeypatch.setattr(kernel_probe, "_time_path", lambda path, device, dtype: {"triton": 1.0, "cuda": 2.0,
                                                                                 "chunked": 3.0}[path])
    yield
    kernel_probe.forget()


def lines(capsys):
    return [x for x in capsys.readouterr().out.splitlines() if x.startswith("ASAG: ")]


CPU = torch.device("cpu")


def test_working_triton_is_chosen_once_per_device_and_dtype(probe_on_cpu, capsys, monkeypatch):
    assert kernel_probe.choose(CPU, torch.float32) == "triton"
    calls = []
    monkeypatch.setattr(kernel_probe, "_probe", lambda *a: calls.append(a) or (["chunked"], []))
    assert kernel_probe.choose(CPU, torch.float32) == "triton"  # cached: no second probe
    assert calls == []
    assert kernel_probe.choose(CPU, torch.float16) == "chunked"  # another input dtype is probed on its own
    assert len(calls) == 1
    out = lines(capsys)
    assert len(out) == 2 and "cpu:0 (float32 inputs): triton" in out[0]


@needs_flash_cpu
def test_kernel_that_raises_falls_back_to_efficient_attention(probe_on_cpu, capsys, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("PTX compile error: out of resources\nmore detail")

    monkeypatch.setattr(sinkhorn_triton, "lse_pass", broken)
    assert kernel_probe.choose(CPU, torch.float32) == "cuda"
    (line,) = lines(capsys)
    assert ": cuda (" in line and "triton failed: RuntimeError: PTX compile error: out of resources" in line
    assert "more detail" not in line  # one line


@needs_flash_cpu
def test_kernel_that_disagrees_falls_back(probe_on_cpu, capsys, monkeypatch):
    def wrong(a, b, bias, c, v=None, *rest):
        lse, out = torch_lse_pass(a, b, bias, c, v)
        return lse + 0.01 * torch.arange(lse.shape[1]) / lse.shape[1], out  # rows' potentials slightly off

    monkeypatch.setattr(sinkhorn_triton, "lse_pass", wrong)
    assert kernel_probe.choose(CPU, torch.float32) == "cuda"
    (line,) = lines(capsys)
    assert "triton disagrees with the pure-torch path" in line


def test_missing_triton_and_broken_efficient_op_leave_the_pure_torch_path(probe_on_cpu, capsys, monkeypatch):
    monkeypatch.setattr(sinkhorn_triton, "available", lambda: False)
    monkeypatch.setattr(sk, "_efficient_cuda_op", lambda q, k, v: (v[..., :1], None))  # returns garbage
    assert kernel_probe.choose(CPU, torch.float32) == "chunked"
    (line,) = lines(capsys)
    assert "triton triton is not installed" in line and "cuda failed: " in line


@needs_flash_cpu
def test_fastest_accurate_path_is_chosen(probe_on_cpu, capsys, monkeypatch):
    monkeypatch.setattr(kernel_probe, "_time_path", lambda path, device, dtype: {"triton": 3.0, "cuda": 1.0,
                                                                                 "chunked": 2.0}[path])
    assert kernel_probe.choose(CPU, torch.float32) == "cuda"
    (line,) = lines(capsys)
    assert "timed cuda 1000.0 ms, chunked 2000.0 ms, triton 3000.0 ms" in line


@needs_flash_cpu
def test_public_call_uses_the_probed_path_and_survives_a_later_failure(probe_on_cpu, capsys, monkeypatch):
    used = []

    def picky(a, b, bias, c, v=None, *rest):
        used.append(a.shape[-1])
        if a.shape[-1] == 160:
            raise RuntimeError("shared memory exceeded")
        return torch_lse_pass(a, b, bias, c, v)

    monkeypatch.setattr(sinkhorn_triton, "lse_pass", picky)
    q, k, v = make(1, 2, 40, 48, 64, sharp=2.0)
    out = sk.sinkhorn_attention(q, k, v, iterations=3, tol=0.0)
    assert used and rel_err(out, reference(q, k, v, iterations=3, tol=0.0)[0]) <= 1e-5
    q, k, v = make(1, 2, 20, 24, 160, sharp=2.0, seed=1)  # the probe never tried d = 160
    out = sk.sinkhorn_attention(q, k, v, iterations=3, tol=0.0)
    assert rel_err(out, reference(q, k, v, iterations=3, tol=0.0)[0]) <= 1e-5
    assert kernel_probe.choose(CPU, torch.float32) == "cuda"  # triton dropped for this key from now on
    out_lines = lines(capsys)
    assert len(out_lines) == 2 and "triton failed (RuntimeError: shared memory exceeded); using cuda" in out_lines[1]


def test_other_devices_never_probe(monkeypatch):
    monkeypatch.setattr(kernel_probe, "choose", lambda *a, **kw: pytest.fail("probed"))
    for device in ("mps", "xpu", "cpu"):
        assert sk._choose_path(torch.device(device), torch.float32, 64, 64, 2**28) in ("cached", "chunked")
    assert sk._choose_path(torch.device("mps"), torch.float32, 64, 64, 2**28) == "chunked"


def test_a_failing_path_that_is_never_dropped_raises_instead_of_retrying_forever(probe_on_cpu, monkeypatch):
    """The fallback loop ends even if `reject` keeps returning the path that fails (a bug there must not
    hang the host's generation): a clear error naming the failures, chained to the last one."""
    attempts = []

    def broken(*a, **kw):
        attempts.append(1)
        if len(attempts) > 50:  # a BaseException: escapes the fallback loop, so an unbounded loop fails here
            pytest.fail("the fallback loop retries forever")
        raise RuntimeError("launch failed")

    monkeypatch.setattr(sinkhorn_triton, "lse_pass", broken)
    monkeypatch.setattr(sinkhorn_triton, "fused_pass", broken)
    monkeypatch.setattr(kernel_probe, "choose", lambda *a, **kw: "triton")
    monkeypatch.setattr(kernel_probe, "reject", lambda device, dtype, path, exc, **kw: path)
    q, k, v = make(1, 2, 20, 24, 64, sharp=2.0)
    with pytest.raises(RuntimeError, match=r"every Sinkhorn path failed on cpu \(triton: FusedKernelError\)$") as err:
        sk.sinkhorn_attention(q, k, v, iterations=2, tol=0.0)
    assert "launch failed" in str(err.value.__cause__)
    assert 1 < len(attempts) <= len(sk.PATHS)


# --------------------------------------------------------------------------------------------------------
# the two Triton variants (fused row pass, 2k + 1): the probe keeps the accurate one, the faster if both are


def variant_calls(monkeypatch, fused_impl=torch_fused_pass):
    """Records which kernels run: "F" fused row pass, "L" an LSE pass."""
    calls = []
    monkeypatch.setattr(sinkhorn_triton, "fused_pass", lambda *a, **kw: calls.append("F") or fused_impl(*a, **kw))
    monkeypatch.setattr(sinkhorn_triton, "lse_pass", lambda *a, **kw: calls.append("L") or torch_lse_pass(*a, **kw))
    return calls


def test_fused_variant_that_fails_leaves_triton_on_its_2k1_variant(probe_on_cpu, capsys, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("triton.CompilationError: tl.where\ndetail")

    calls = variant_calls(monkeypatch, broken)
    assert kernel_probe.choose(CPU, torch.float32) == "triton"
    (line,) = lines(capsys)
    assert "triton 2k+1 variant (fused failed: FusedKernelError: RuntimeError: triton.CompilationError: tl.where)" in line
    assert {("cpu:0", torch.float32): False} == sinkhorn_triton.CHOSEN
    q, k, v = make(1, 2, 30, 26, 64, sharp=2.0)
    calls.clear()
    out = sk.sinkhorn_attention(q, k, v, iterations=2, tol=0.0)
    assert calls == ["L"] * 5 and rel_err(out, reference(q, k, v, iterations=2, tol=0.0)[0]) <= 1e-5


def test_faster_triton_variant_is_kept(probe_on_cpu, capsys, monkeypatch):
    calls = variant_calls(monkeypatch)
    monkeypatch.setattr(kernel_probe, "_time_path", lambda path, device, dtype: (
        {"cuda": 2.0, "chunked": 3.0}[path] if path != "triton" else
        (1.5 if sinkhorn_triton.CHOSEN[("cpu:0", dtype)] else 1.0)))
    assert kernel_probe.choose(CPU, torch.float32) == "triton"
    (line,) = lines(capsys)
    assert "triton variants timed 2k+1 1000.0 ms, fused 1500.0 ms" in line
    assert {("cpu:0", torch.float32): False} == sinkhorn_triton.CHOSEN
    kernel_probe.forget()
    monkeypatch.setattr(kernel_probe, "_time_path", lambda path, device, dtype: 1.0)  # a tie keeps fused
    assert kernel_probe.choose(CPU, torch.float32) == "triton"
    assert {("cpu:0", torch.float32): True} == sinkhorn_triton.CHOSEN
    q, k, v = make(1, 2, 30, 26, 64, sharp=2.0)
    calls.clear()
    out = sk.sinkhorn_attention(q, k, v, iterations=2, tol=0.0)
    assert calls == ["F", "F", "L"] and rel_err(out, reference(q, k, v, iterations=2, tol=0.0)[0]) <= 1e-5


def test_later_failure_of_the_fused_kernel_switches_to_2k1_not_away_from_triton(probe_on_cpu, capsys,
                                                                                 monkeypatch):
    def picky(q, *rest, **kw):
        if q.shape[-1] == 160:
            raise RuntimeError("out of shared memory")
        return torch_fused_pass(q, *rest, **kw)

    calls = variant_calls(monkeypatch, picky)
    assert kernel_probe.choose(CPU, torch.float32) == "triton"
    q, k, v = make(1, 2, 20, 24, 160, sharp=2.0, seed=1)  # the probe never tried d = 160
    calls.clear()
    out = sk.sinkhorn_attention(q, k, v, iterations=3, tol=0.0)
    assert rel_err(out, reference(q, k, v, iterations=3, tol=0.0)[0]) <= 1e-5
    assert calls == ["F"] + ["L"] * 7  # the fused attempt, then the whole call again on the 2k+1 variant
    assert kernel_probe.choose(CPU, torch.float32) == "triton"
    out_lines = lines(capsys)
    assert len(out_lines) == 2 and "the fused Triton kernel failed (RuntimeError: out of shared memory); " \
        "using its 2k+1 variant from now on" in out_lines[1]


def test_triton_21_is_refused_before_compiling_for_gpus_older_than_sm80(monkeypatch):
    """Triton 2.1's compiler aborts the process on the P·V kernel for sm_70/sm_75 (bench/triton_aot.py):
    such a device must never compile it. Other versions and GPUs are not refused."""
    import sys
    import types

    fake = types.SimpleNamespace(__version__="2.1.0")
    monkeypatch.setitem(sys.modules, "triton", fake)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert "Triton 2.1.0 cannot compile the kernels for sm_75" in sinkhorn_triton.unsupported(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert sinkhorn_triton.unsupported(cuda) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    fake.__version__ = "2.3.1"
    assert sinkhorn_triton.unsupported(cuda) is None
    assert sinkhorn_triton.unsupported(torch.device("cpu")) is None
    monkeypatch.setitem(sys.modules, "triton", None)  # an install that fails to import: a reason, not a raise
    assert "triton cannot be imported (ModuleNotFoundError" in sinkhorn_triton.unsupported(cuda)


@needs_flash_cpu
def test_refused_triton_is_never_run_by_the_probe(probe_on_cpu, capsys, monkeypatch):
    calls = variant_calls(monkeypatch)
    monkeypatch.setattr(sinkhorn_triton, "unsupported", lambda device: "Triton 2.1.0 cannot compile (sm_75)")
    assert kernel_probe.choose(CPU, torch.float32) == "cuda"
    assert calls == []
    (line,) = lines(capsys)
    assert "triton Triton 2.1.0 cannot compile (sm_75)" in line
