"""Tests of the ASAG kernel against a float64 dense reference written out here (paper.md §4.3, §8)."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

from asag_lib import sinkhorn as sk
from asag_lib.sinkhorn import SinkhornStats, sinkhorn_attention

# --------------------------------------------------------------------------------------------------------
# reference: a plain float64 loop over (batch, head) of the math in the module docstring


def reference(q, k, v, *, iterations=2, tol=1e-3, scale=None, rescale=True):
    """Returns (out, row_entropy, marginal_error, iterations_used), all float64 / int64."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(B, H, n_q, v.shape[3], dtype=torch.float64)
    ent = torch.zeros(B, H, dtype=torch.float64)
    err = torch.zeros(B, H, dtype=torch.float64)
    used = torch.zeros(B, H, dtype=torch.int64)
    for b in range(B):
        for h in range(H):
            log_k = -scale * q[b, h] @ k[b, h].T
            f = torch.zeros(n_q, dtype=torch.float64)
            g = torch.zeros(n_k, dtype=torch.float64)
            for _ in range(iterations):
                f = -math.log(n_q) - torch.logsumexp(log_k + g[None, :], dim=1)
                g = -math.log(n_k) - torch.logsumexp(log_k + f[:, None], dim=0)
                used[b, h] += 1
                plan = torch.exp(f[:, None] + log_k + g[None, :])
                err[b, h] = (n_q * plan.sum(1) - 1).abs().max()
                if tol > 0 and err[b, h] <= tol:  # tol=0 never stops early
                    break
            plan = torch.exp(f[:, None] + log_k + g[None, :])
            out[b, h] = (n_q * plan if rescale else plan) @ v[b, h]
            p = plan / plan.sum(1, keepdim=True)
            ent[b, h] = -(p * torch.log(p.clamp_min(1e-300))).sum(1).mean()
    return out, ent, err, used


def run(q, k, v, path, **kw):
    """The public function for path 'auto', an internal path otherwise ('chunked_tiny' = budget of 1 byte)."""
    if path == "auto":
        return sinkhorn_attention(q, k, v, **kw)
    args = dict(iterations=2, tol=1e-3, scale=None, rescale=True, return_stats=False, memory_budget_bytes=None)
    args.update(kw)
    if path == "chunked_tiny":
        path, args["memory_budget_bytes"] = "chunked", 1
    return sk._sinkhorn_attention(q, k, v, path=path, **args)


def available_paths():
    paths = ["auto", "cached", "dense", "chunked", "chunked_tiny"]
    if sk._flash_cpu_supported(torch.float32, torch.device("cpu")):
        paths.append("flash_cpu")
    return paths


PATHS = available_paths()


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def make(B, H, n_q, n_k, d, d_v=None, sharp=1.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n_q, d, generator=gen) * sharp
    k = torch.randn(B, H, n_k, d, generator=gen)
    v = torch.randn(B, H, n_k, d_v or d, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# --------------------------------------------------------------------------------------------------------
# agreement with the reference


SHAPES = [  # B, H, n_q, n_k, d, d_v, sharp
    (2, 3, 77, 77, 64, 64, 1.0),
    (1, 2, 64, 96, 40, 40, 2.0),  # n_k > n_q (reference-mode extra keys)
    (3, 2, 50, 33, 80, 24, 1.5),  # n_k < n_q, d_v != d
    (2, 2, 128, 128, 64, 64, 3.0),  # sharp logits: several iterations matter
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])))
def test_matches_float64_reference(path, shape):
    B, H, n_q, n_k, d, d_v, sharp = shape
    q, k, v = make(B, H, n_q, n_k, d, d_v, sharp)
    for iterations, tol in ((2, 1e-3), (4, 0.0)):
        out, st = run(q, k, v, path, iterations=iterations, tol=tol, return_stats=True)
        r_out, r_ent, r_err, r_used = reference(q, k, v, iterations=iterations, tol=tol)
        assert out.shape == (B, H, n_q, d_v) and out.dtype == torch.float32
        assert rel_err(out, r_out) <= 1e-5, (path, iterations)
        assert torch.equal(st.iterations_used, r_used)
        torch.testing.assert_close(st.row_entropy.double(), r_ent, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(st.marginal_error.double(), r_err, rtol=1e-4, atol=2e-6)
        # without stats the last pass may skip its row normalisation (the cached path does): same output
        assert rel_err(run(q, k, v, path, iterations=iterations, tol=tol), r_out) <= 1e-5, (path, iterations)


@pytest.mark.parametrize("path", PATHS)
def test_float64_inputs_compute_in_float64(path):
    q, k, v = make(2, 2, 40, 56, 32, 16, sharp=2.0, dtype=torch.float64)
    out = run(q, k, v, path, iterations=3, tol=0.0)
    r_out = reference(q, k, v, iterations=3, tol=0.0)[0]
    assert out.dtype == torch.float64
    assert rel_err(out, r_out) <= 1e-10


@pytest.mark.parametrize("path", PATHS)
def test_explicit_scale(path):
    q, k, v = make(1, 2, 48, 48, 64)
    out = run(q, k, v, path, scale=0.3, iterations=3, tol=0.0)
    assert rel_err(out, reference(q, k, v, scale=0.3, iterations=3, tol=0.0)[0]) <= 1e-5


# --------------------------------------------------------------------------------------------------------
# properties of the plan, read through V = identity (then out = n_q · P)


def plan_through_identity(path, n_q, n_k, iterations, sharp=2.5, seed=1):
    q, k, _ = make(1, 2, n_q, n_k, 64, sharp=sharp, seed=seed)
    eye = torch.eye(n_k).expand(1, 2, n_k, n_k).contiguous()
    return run(q, k, eye, path, iterations=iterations, tol=0.0) / n_q  # P, (1, 2, n_q, n_k)


@pytest.mark.parametrize("path", PATHS)
def test_column_marginals_exact_after_column_step(path):
    n_q, n_k = 60, 45
    for iterations in (1, 2, 5):
        plan = plan_through_identity(path, n_q, n_k, iterations)
        cols = plan.sum(dim=2)
        torch.testing.assert_close(cols, torch.full_like(cols, 1.0 / n_k), rtol=2e-5, atol=0)


def test_rows_of_n_p_approach_one_with_more_iterations():
    n_q, n_k = 64, 64
    errors = []
    for iterations in (1, 2, 4, 8):
        rows = plan_through_identity("auto", n_q, n_k, iterations).sum(dim=3) * n_q
        errors.append((rows - 1).abs().max().item())
    assert errors[0] > 1e-2  # the test is only meaningful if one iteration leaves a visible error
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-2


def test_row_entropy_higher_than_softmax_attention():
    # self-attention-like: each query most similar to its own key, so softmax attention is peaked
    q, k, v = make(2, 3, 96, 96, 64, sharp=1.0, seed=2)
    k = 1.5 * q + 0.5 * k
    _, st = sinkhorn_attention(q, k, v, return_stats=True)
    p = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
    softmax_entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1)
    assert st.row_entropy.shape == (2, 3)
    assert (st.row_entropy > softmax_entropy + 0.5).all(), (st.row_entropy, softmax_entropy)
    assert (st.row_entropy <= math.log(96) + 1e-4).all()


# --------------------------------------------------------------------------------------------------------
# early stop and per-(batch, head) freezing


def mixed_heads(n=64, seed=3):
    """Head 0 has near-zero logits (converges in one iteration), head 1 sharp ones (does not)."""
    q, k, v = make(1, 2, n, n, 64, seed=seed)
    q[:, 0] *= 1e-3
    q[:, 1] *= 4.0
    return q, k, v


@pytest.mark.parametrize("path", PATHS)
def test_loose_tol_uses_fewer_iterations(path):
    q, k, v = make(2, 2, 64, 64, 64, sharp=1.0, seed=4)
    _, strict = run(q, k, v, path, iterations=8, tol=0.0, return_stats=True)
    _, loose = run(q, k, v, path, iterations=8, tol=0.05, return_stats=True)
    assert (strict.iterations_used == 8).all()
    assert (loose.iterations_used < 8).all()
    assert (loose.marginal_error <= 0.05).all()
    # without stats the early stop must fire just the same (the error is still computed before the last pass)
    r_loose, r_strict = reference(q, k, v, iterations=8, tol=0.05)[0], reference(q, k, v, iterations=8, tol=0.0)[0]
    assert rel_err(r_loose, r_strict) > 1e-3  # stopping early changes the output measurably
    assert rel_err(run(q, k, v, path, iterations=8, tol=0.05), r_loose) <= 1e-5


@pytest.mark.parametrize("path", PATHS)
def test_freezing_is_per_head(path):
    q, k, v = mixed_heads()
    out, st = run(q, k, v, path, iterations=6, tol=1e-3, return_stats=True)
    assert st.iterations_used.tolist() == [[1, 6]]
    assert st.marginal_error[0, 0] <= 1e-3 < st.marginal_error[0, 1]
    assert rel_err(out, reference(q, k, v, iterations=6, tol=1e-3)[0]) <= 1e-5


@pytest.mark.parametrize("path", PATHS)
def test_batch_independence(path):
    q0, k0, v0 = make(1, 2, 64, 80, 64, sharp=0.3, seed=5)  # soft: stops early
    q1, k1, v1 = make(1, 2, 64, 80, 64, sharp=5.0, seed=6)  # sharp, different scale of values
    v1 = v1 * 100
    alone, st0 = run(q0, k0, v0, path, iterations=6, tol=1e-3, return_stats=True)
    both, st = run(torch.cat([q0, q1]), torch.cat([k0, k1]), torch.cat([v0, v1]), path,
                   iterations=6, tol=1e-3, return_stats=True)
    assert (st.iterations_used[0] < st.iterations_used[1]).all()  # early stop fires for one, not the other
    assert torch.equal(st.iterations_used[0], st0.iterations_used[0])
    torch.testing.assert_close(both[:1], alone, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(st.row_entropy[:1], st0.row_entropy, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# dtypes, rescale, API surface


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_half_inputs_with_huge_logits_are_finite(dtype, path):
    gen = torch.Generator().manual_seed(7)
    n, d = 48, 64
    q = torch.randn(1, 2, n, d, generator=gen).sign() * 40.0
    k = torch.randn(1, 2, n, d, generator=gen) * 40.0
    v = torch.randn(1, 2, n, d, generator=gen)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d)
    assert logits.abs().max() > 5e3  # really the ±1e4 regime
    out, st = run(q, k, v, path, iterations=3, return_stats=True)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert torch.isfinite(st.row_entropy).all() and torch.isfinite(st.marginal_error).all()
    # and it is the float32 computation on the same (rounded) inputs, cast back
    ref = run(q.float(), k.float(), v.float(), path, iterations=3).to(dtype)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_rescale_false_is_rescaled_over_n_q(path):
    q, k, v = make(2, 2, 50, 70, 40)
    a = run(q, k, v, path, rescale=True)
    b = run(q, k, v, path, rescale=False)
    torch.testing.assert_close(b, a / 50, rtol=1e-6, atol=1e-9)
    assert b.abs().mean() < a.abs().mean() / 20


def test_stats_off_returns_plain_tensor_on_returns_stats():
    q, k, v = make(2, 3, 20, 30, 16, 8)
    out = sinkhorn_attention(q, k, v)
    assert isinstance(out, torch.Tensor)
    res = sinkhorn_attention(q, k, v, return_stats=True)
    assert isinstance(res, tuple) and len(res) == 2
    out2, st = res
    assert isinstance(st, SinkhornStats)
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-6)
    assert st.row_entropy.shape == st.marginal_error.shape == st.iterations_used.shape == (2, 3)
    assert st.iterations_used.dtype == torch.int64
    assert st.row_entropy.dtype == st.marginal_error.dtype == torch.float32
    with pytest.raises(AttributeError):
        st.row_entropy = None  # frozen dataclass


@pytest.mark.parametrize(
    ("kwargs", "shapes", "match"),
    [
        ({}, ((2, 20, 16), (1, 2, 20, 16), (1, 2, 20, 16)), r"q must be 4-D"),
        ({}, ((1, 2, 20, 16), (1, 2, 20, 8), (1, 2, 20, 16)), r"q and k must share the head dim"),
        ({}, ((1, 2, 20, 16), (1, 2, 20, 16), (1, 2, 21, 16)), r"k and v must share n_k"),
        ({}, ((1, 2, 20, 16), (2, 2, 20, 16), (2, 2, 20, 16)), r"share \(batch, heads\)"),
        ({"iterations": 0}, None, r"iterations must be an integer >= 1, got 0"),
        ({"iterations": 2.0}, None, r"iterations must be an integer >= 1"),
        ({"tol": -1e-3}, None, r"tol must be a finite number >= 0"),
        ({"tol": float("nan")}, None, r"tol must be a finite number >= 0"),
        ({"memory_budget_bytes": 0}, None, r"memory_budget_bytes must be a positive integer"),
        ({"scale": 0.0}, None, r"scale must be a finite non-zero number"),
    ],
)
def test_input_validation(kwargs, shapes, match):
    shapes = shapes or ((1, 2, 20, 16),) * 3
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        sinkhorn_attention(q, k, v, **kwargs)


def test_integer_inputs_rejected():
    q = torch.ones(1, 1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="floating-point"):
        sinkhorn_attention(q, q, q)


# --------------------------------------------------------------------------------------------------------
# extreme logits, path choice, memory


@pytest.mark.parametrize("path", PATHS)
def test_extreme_logits_match_reference_and_use_exact_column_step(path, monkeypatch):
    """Logits of ±1e4 leave some column almost empty in every row: the fused column update would be
    inaccurate there, so the score engines must fall back to the exact log-domain column step."""
    calls = []
    original = sk._ScoreEngine.col_pass
    monkeypatch.setattr(sk._ScoreEngine, "col_pass", lambda self, *a: calls.append(1) or original(self, *a))
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 2, 48, 64, generator=gen).sign() * 40.0
    k = torch.randn(2, 2, 56, 64, generator=gen) * 40.0
    v = torch.randn(2, 2, 56, 32, generator=gen)
    out, st = run(q, k, v, path, iterations=3, return_stats=True)
    r_out, r_ent, _, r_used = reference(q, k, v, iterations=3)
    assert rel_err(out, r_out) <= 1e-3  # fp32 rounding of logits of 1e4 is ~1e-3 absolute
    assert torch.equal(st.iterations_used, r_used)
    torch.testing.assert_close(st.row_entropy.double(), r_ent, rtol=1e-2, atol=1e-2)
    if path in ("auto", "cached", "dense", "chunked", "chunked_tiny"):
        assert calls, "the exact column fallback was not exercised"


def test_auto_path_choice():
    cpu = torch.device("cpu")
    big = sk.DEFAULT_MEMORY_BUDGET_BYTES
    assert sk._choose_path(cpu, torch.float32, 1024, 1024, big) == "cached"
    assert sk._choose_path(cpu, torch.float32, 4096, 4096, big) == "cached"  # 64 MiB per head <= budget / 2
    assert sk._choose_path(cpu, torch.float32, 16384, 16384, big) == "chunked"  # 1 GiB per head
    assert sk._choose_path(cpu, torch.float32, 1024, 1024, 2**20) == "chunked"  # the budget rules caching out
    with pytest.raises(ValueError, match="path must be one of"):
        run(*make(1, 1, 4, 4, 4), "nope")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_is_bounded_for_large_n():
    """N = 4096, 4 heads: the dense plan is 256 MiB (and 3× that with temporaries); ours stays O(N·D)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("cannot reset the peak-RSS counter here")

    def status_kib(key):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key))

    q, k, v = make(1, 4, 4096, 4096, 64)
    sinkhorn_attention(q[:, :1, :256], k[:, :1, :256], v[:, :1, :256])  # warm the libraries up

    def peak_extra(**kw):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = status_kib("VmRSS")
        out = sinkhorn_attention(q, k, v, tol=0.0, **kw)
        assert torch.isfinite(out).all()
        return (status_kib("VmHWM") - before) * 1024

    # a small budget: the streaming path, O(N·D + block)
    extra = peak_extra(memory_budget_bytes=16 * 2**20)
    assert extra < 48 * 2**20, f"peak extra memory {extra / 2**20:.0f} MiB"
    # the default budget (256 MiB): one head's 64 MiB kernel cached at a time, well within the budget
    extra = peak_extra()
    assert extra < sk.DEFAULT_MEMORY_BUDGET_BYTES // 2, f"peak extra memory {extra / 2**20:.0f} MiB"


# --------------------------------------------------------------------------------------------------------
# the cached (linear-domain) path's two kernel scalings and its exact fallback


@pytest.mark.parametrize("unshifted_max", [64.0, 0.0], ids=["auto-shift", "always-shift"])
@pytest.mark.parametrize("sharp", [1.0, 12.0])
def test_cached_path_both_kernel_scalings(monkeypatch, unshifted_max, sharp):
    """sharp=12 gives |scores| beyond the no-shift bound (row-max shifted kernel), sharp=1 within it."""
    monkeypatch.setattr(sk, "_UNSHIFTED_MAX", unshifted_max)
    q, k, v = make(2, 2, 70, 90, 64, 48, sharp=sharp, seed=8)
    out, st = run(q, k, v, "cached", iterations=4, tol=0.0, return_stats=True)
    r_out, r_ent, r_err, _ = reference(q, k, v, iterations=4, tol=0.0)
    assert rel_err(out, r_out) <= 1e-5
    torch.testing.assert_close(st.row_entropy.double(), r_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.marginal_error.double(), r_err, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_cached_path_products_split_by_threads_match_float64(monkeypatch, threads):
    """The cached path's matrix-vector products run on equal slices of a block's rows, one per thread, and
    the rest by gemv: no split (one thread), an even one, one with a remainder, more threads than rows.
    Its own arithmetic must give the result: the exact engine (which would mask wrong sums) never runs."""
    exact = spy_exact_row_passes(monkeypatch)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n_q in (71, 3):
            q, k, v = make(1, 2, n_q, 90, 64, sharp=2.0, seed=3)
            out, st = run(q, k, v, "cached", iterations=3, tol=0.0, return_stats=True)
            r_out, _, r_err, _ = reference(q, k, v, iterations=3, tol=0.0)
            assert rel_err(out, r_out) <= 1e-5, (threads, n_q)
            torch.testing.assert_close(st.marginal_error.double(), r_err, rtol=1e-4, atol=2e-6)
    finally:
        torch.set_num_threads(before)
    assert exact == []


def test_cached_path_groups_share_one_kernel_buffer(monkeypatch):
    """Five heads in groups of two (2, 2, 1) built into one reused buffer: every head must still match the
    reference, including the last, smaller group and a head whose logits differ wildly from its neighbours'."""
    monkeypatch.setattr(sk, "_CACHED_GROUP_BYTES", 2 * 60 * 70 * 4)
    buffers = []
    original = sk._KernelCacheEngine.__init__
    monkeypatch.setattr(sk._KernelCacheEngine, "__init__",
                        lambda self, q2, k, block, buffer=None: buffers.append(buffer) or original(self, q2, k, block, buffer))
    q, k, v = make(1, 5, 60, 70, 64, 24, seed=11)
    q[:, 2] *= 9.0  # a sharp head in the middle group: the row-max shift path
    out = run(q, k, v, "cached", iterations=3, tol=0.0)
    assert len(buffers) == 3 and all(b is buffers[0] for b in buffers) and buffers[0].shape[0] == 2
    r_out = reference(q, k, v, iterations=3, tol=0.0)[0]
    for h in range(5):
        assert rel_err(out[:, h], r_out[:, h]) <= 1e-5, h


def spy_exact_row_passes(monkeypatch) -> list:
    """The heads (`sel`) of every row pass the exact log-domain engine runs, in order."""
    heads = []
    original = sk._ScoreEngine.row_pass
    monkeypatch.setattr(sk._ScoreEngine, "row_pass",
                        lambda self, g2, sel, *a: heads.append(sel.tolist()) or original(self, g2, sel, *a))
    return heads


def extreme_head_qkv(seed: int):
    """Two heads; head 1 has logits of ±1e4, so the cached kernel underflows almost everywhere in it."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 48, 64, generator=gen)
    k = torch.randn(1, 2, 40, 64, generator=gen)
    q[:, 1] = q[:, 1].sign() * 40.0
    k[:, 1] *= 40.0
    return q, k, torch.randn(1, 2, 40, 32, generator=gen)


@pytest.mark.parametrize("stats", [True, False], ids=["stats", "no-stats"])
def test_cached_path_hands_tiny_sums_to_the_exact_engine(monkeypatch, stats):
    """Logits of ±1e4: the cached kernel underflows almost everywhere; those heads must take the exact
    log-domain row pass (and still match the reference), the ordinary head must not. Without stats the
    last pass must not skip the row sums of such a head (their bound from the previous pass is 0)."""
    heads = spy_exact_row_passes(monkeypatch)
    q, k, v = extreme_head_qkv(9)
    res = run(q, k, v, "cached", iterations=3, tol=0.0, return_stats=stats)
    out = res[0] if stats else res
    r_out, _, _, r_used = reference(q, k, v, iterations=3, tol=0.0)
    assert heads and all(h == [1] for h in heads), heads
    assert len(heads) == 4  # the first pass and all three iterations' row passes, the last one included
    assert rel_err(out[:, :1], r_out[:, :1]) <= 1e-5
    assert rel_err(out, r_out) <= 1e-3  # fp32 rounding of logits of 1e4
    if stats:
        assert torch.equal(res[1].iterations_used, r_used)


@pytest.mark.parametrize("heads", [None, [1]], ids=["all-heads", "one-head"])
def test_cached_last_pass_bounds_its_row_sums_with_the_previous_pass(monkeypatch, heads):
    """The last (unnormalised) pass takes its bound from the previous pass's row sums and column scaling:
    both checked against float64 sums written here, and 2^lse · out against the float64 plan. "one-head":
    the middle and last passes run for head 1 only (the others frozen by an early stop)."""
    gen = torch.Generator().manual_seed(14)
    q2 = torch.randn(3, 20, 16, generator=gen)
    k = torch.randn(3, 30, 16, generator=gen)
    g_mid, g_last = 3 * torch.randn(3, 30, generator=gen), 3 * torch.randn(3, 30, generator=gen)
    vx = torch.randn(3, 30, 8, generator=gen)
    s2 = q2.double() @ k.double().transpose(1, 2)
    calls = []
    floor = sk._row_sum_floor
    monkeypatch.setattr(sk, "_row_sum_floor", lambda *a: calls.append([x.clone() for x in a]) or floor(*a))
    engine = sk._KernelCacheEngine(q2, k, 2**20)
    engine.row_pass(torch.zeros(3, 30), None, True, None)
    sel = None if heads is None else torch.tensor(heads)
    pick = slice(None) if heads is None else heads
    g_mid, g_last, vx, s2 = g_mid[pick], g_last[pick], vx[pick], s2[pick]
    engine.row_pass(g_mid, sel, True, None)
    lse, _, out = engine.row_pass(g_last, sel, False, vx, normalized=False)
    assert len(calls) == 1
    r_last, lb, lb_last = (x.double() for x in calls[0])
    mid = g_mid.double() - g_mid.double().amax(-1, keepdim=True)
    last = g_last.double() - g_last.double().amax(-1, keepdim=True)
    torch.testing.assert_close(lb_last, mid)
    torch.testing.assert_close(lb, last)
    # r_last_i = Σ_j 2^(S2_ij − m_i) 2^mid_j, m_i the engine's row shift (a free per-row constant)
    expected = (s2 - engine.m[pick].double().unsqueeze(-1) + mid.unsqueeze(1)).exp2().sum(-1)
    torch.testing.assert_close(r_last, expected, rtol=1e-5, atol=0)
    plan_v = (s2 + g_last.double().unsqueeze(1)).exp2() @ vx.double()
    assert rel_err(lse.double().exp2().unsqueeze(-1) * out.double(), plan_v) <= 1e-5


def test_cached_low_heads_flags_small_and_nan_sums():
    """The cached engine's check that sends a head to the exact engine: a sum below SAFE or a NaN."""
    engine = sk._KernelCacheEngine(torch.randn(3, 4, 8), torch.randn(3, 5, 8), 2**20)
    r, col = torch.ones(3, 4), torch.ones(3, 5)
    assert engine._low_heads(r, col) is None
    r[1, 2] = float("nan")
    col[2, 0] = engine.SAFE / 2
    assert engine._low_heads(r, col).tolist() == [False, True, True]
    assert engine._low_heads(col, r).tolist() == [False, True, True]


def test_driver_sends_a_nan_or_empty_column_to_the_exact_column_step():
    """Fused column sums that are NaN or below ~1e-30 for a head: the driver must recompute that head's
    column step exactly (col_pass) and leave the other heads' fused steps alone."""

    class Stub:
        fused_cols = True

        def __init__(self):
            self.asked = []

        def row_pass(self, g2, sel, want_col, vx, normalized=True):
            G = g2.shape[0]
            col = torch.ones(G, 6)
            col[1, 3] = float("nan")
            col[2, 0] = 1e-35
            out = None if vx is None else torch.zeros(G, 4, vx.shape[2])
            return torch.zeros(G, 4), (col if want_col else None), out

        def col_pass(self, f2, sel):
            self.asked.append(sel.tolist())
            return torch.zeros(f2.shape[0], 6)

    engine = Stub()
    sk._sinkhorn_group(engine, torch.zeros(3, 4, 2), torch.zeros(3, 6, 2), torch.zeros(3, 6, 2),
                       iterations=2, tol=0.0, want_stats=False)
    assert engine.asked == [[1, 2], [1, 2]]


def test_row_sum_floor_bounds_the_next_passes_row_sums():
    """The bound that lets the cached path's last pass skip its row sums, checked in float64 against the
    row sums themselves, for kernels whose rows, and column scalings whose ratios, span many octaves."""
    gen = torch.Generator().manual_seed(12)
    for trial in range(20):
        kern = torch.rand(3, 30, 40, generator=gen, dtype=torch.float64) ** 8
        kern *= 2.0 ** torch.randint(-40, 5, (3, 30, 1), generator=gen)
        lb_last = -20 * torch.rand(3, 40, generator=gen, dtype=torch.float64)
        if trial % 2:  # independent scalings: a loose bound
            lb, spread = -20 * torch.rand(3, 40, generator=gen, dtype=torch.float64), 40.0
        else:  # the new scaling close to the old one shifted down by 3 octaves (as late iterations are)
            lb, spread = lb_last - 3 + 0.1 * torch.rand(3, 40, generator=gen, dtype=torch.float64), 0.1
        r_last = (kern * lb_last.exp2().unsqueeze(1)).sum(-1)
        r = (kern * lb.exp2().unsqueeze(1)).sum(-1)
        floor = sk._row_sum_floor(r_last.float(), lb.float(), lb_last.float()).double()
        assert (floor <= r.amin(-1) * (1 + 1e-5)).all()
        assert (floor >= r.amin(-1) * 2.0 ** -(spread + 1e-3)).all()  # not vacuous: within the ratios' span


def test_cached_path_sends_an_extreme_head_to_the_exact_engine_after_others_froze(monkeypatch):
    """Head 0 (near-zero logits) freezes after one iteration; head 1 (logits of ±1e4) keeps iterating alone
    (the engine's one-head path) and must still take the exact row pass there, as in the all-heads path."""
    heads = spy_exact_row_passes(monkeypatch)
    q, k, v = extreme_head_qkv(15)
    q[:, 0] *= 1e-3
    out, st = run(q, k, v, "cached", iterations=4, tol=1e-3, return_stats=True)
    r_out, _, _, r_used = reference(q, k, v, iterations=4, tol=1e-3)
    assert r_used.tolist() == [[1, 4]] and torch.equal(st.iterations_used, r_used)
    assert heads and all(h == [1] for h in heads) and len(heads) == 5  # first pass and 4 iterations
    assert rel_err(out[:, :1], r_out[:, :1]) <= 1e-5
    assert rel_err(out, r_out) <= 1e-3  # fp32 rounding of logits of 1e4


def test_cached_path_row_shift_absorbs_a_large_common_offset(monkeypatch):
    """Every logit ≈ +140 nats (2^200 overflows fp32): the row-max shift must absorb it, with no detour
    through the exact engine, and the plan is unchanged by a common offset."""
    monkeypatch.setattr(sk._ScoreEngine, "row_pass", lambda *a: pytest.fail("fell back to the exact engine"))
    gen = torch.Generator().manual_seed(10)
    q = 4.2 + 0.3 * torch.randn(1, 2, 40, 64, generator=gen)
    k = -4.2 + 0.3 * torch.randn(1, 2, 56, 64, generator=gen)
    v = torch.randn(1, 2, 56, 32, generator=gen)
    logits = -(q @ k.transpose(-1, -2)) / 8.0
    assert logits.min() > 120
    out = run(q, k, v, "cached", iterations=3, tol=0.0)
    assert rel_err(out, reference(q, k, v, iterations=3, tol=0.0)[0]) <= 1e-4  # fp32 rounding of logits ~140
