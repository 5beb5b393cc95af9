"""The weak models (asag_lib/weak.py) against float64 references written here, and their dispatch."""

from __future__ import annotations

import math

import pytest
import torch

from asag_lib import attention, layers, params, weak
from asag_lib.attention import KernelOptions
from tests.unets import build_unet

B, H, N, D = 2, 3, 12, 5  # a 3x4 token grid


def _qkv(n_q=N, n_k=N, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n_q, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, n_k, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, n_k, D + 1, generator=g, dtype=dtype)
    return q, k, v


def sinkhorn_potentials_ref(log_k, iterations):
    """Plain log-domain Sinkhorn with uniform marginals, float64, all iterations (tol 0): the potentials
    (f (…, n_q, 1), g (…, 1, n_k)) after `iterations` row-then-column steps; P = exp(f + log K + g)."""
    n_q, n_k = log_k.shape[-2:]
    f = torch.zeros(*log_k.shape[:-1], 1, dtype=torch.float64)
    g = torch.zeros(*log_k.shape[:-2], 1, n_k, dtype=torch.float64)
    for _ in range(iterations):
        f = -math.log(n_q) - torch.logsumexp(log_k + g, dim=-1, keepdim=True)
        g = -math.log(n_k) - torch.logsumexp(log_k + f, dim=-2, keepdim=True)
    return f, g


def sinkhorn_ref(q, k, v, sign, iterations, scale=None, rescale=True):
    """n_q · P · V (or P · V) of the plan of log K = sign · scale · q kᵀ (`sinkhorn_potentials_ref`)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    log_k = sign * scale * (q.double() @ k.double().transpose(-1, -2))
    n_q = log_k.shape[-2]
    f, g = sinkhorn_potentials_ref(log_k, iterations)
    plan = torch.exp(f + log_k + g)
    out = plan @ v.double()
    return out * n_q if rescale else out


def softmax_ref(q, k, v, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(scale * q.double() @ k.double().transpose(-1, -2), dim=-1) @ v.double()


# ------------------------------------------------------------------------------------------------
# each model against its reference


@pytest.mark.parametrize("rescale", [True, False])
def test_asag_is_the_adversarial_plan(rescale):
    q, k, v = _qkv()
    out = weak.asag(q, k, v, iterations=3, tol=0.0, rescale=rescale)
    torch.testing.assert_close(out, sinkhorn_ref(q, k, v, -1, 3, rescale=rescale), rtol=1e-9, atol=1e-10)


def test_similarity_is_the_plan_with_the_ordinary_cost():
    q, k, v = _qkv(seed=1)
    out = weak.similarity(q, k, v, iterations=2, tol=0.0, scale=0.7)
    torch.testing.assert_close(out, sinkhorn_ref(q, k, v, +1, 2, scale=0.7), rtol=1e-9, atol=1e-10)
    assert not torch.allclose(out, weak.asag(q, k, v, iterations=2, tol=0.0, scale=0.7))


def test_random_cost_is_sinkhorn_on_noise_with_the_per_head_statistics_of_q_and_k(monkeypatch):
    q, k, v = _qkv(n_q=200, n_k=200, seed=2)
    q = q * 3 + 1.5  # non-trivial mean and std
    seen = []
    real = weak.sinkhorn_attention

    def spy(q2, k2, v2, **kwargs):
        seen.append((q2, k2, v2, kwargs))
        return real(q2, k2, v2, **kwargs)

    monkeypatch.setattr(weak, "sinkhorn_attention", spy)
    out = weak.random_cost(q, k, v, seed=7, iterations=2, tol=0.0)
    (q2, k2, v2, _), = seen
    assert v2 is v
    for real_x, noise in ((q, q2), (k, k2)):
        dims = (-2, -1)
        torch.testing.assert_close(noise.mean(dims), real_x.mean(dims), atol=0.05 * real_x.std(), rtol=0)
        torch.testing.assert_close(noise.std(dims), real_x.std(dims), rtol=0.05, atol=0)
        assert not torch.allclose(noise, real_x)
    torch.testing.assert_close(out, sinkhorn_ref(q2, k2, v, -1, 2), rtol=1e-9, atol=1e-10)


def test_random_cost_depends_on_q_k_only_through_their_statistics_and_on_the_seed():
    q, k, v = _qkv(seed=3)
    # a permutation of each head's entries keeps its mean and std exactly
    perm = torch.randperm(N * D, generator=torch.Generator().manual_seed(0))
    shuffled = q.reshape(B, H, -1)[..., perm].reshape(q.shape)
    a = weak.random_cost(q, k, v, seed=11)
    torch.testing.assert_close(weak.random_cost(shuffled, k, v, seed=11), a, rtol=1e-12, atol=1e-12)
    assert torch.equal(weak.random_cost(q, k, v, seed=11), a)  # reproducible
    assert not torch.allclose(weak.random_cost(q, k, v, seed=12), a)  # the seed matters
    assert not torch.allclose(weak.random_cost(q[:, :, :6], k[:, :, :6], v[:, :, :6], seed=11), a[:, :, :6])


@pytest.mark.parametrize("rescale", [True, False])
def test_uniform_is_the_mean_of_v_and_the_small_scale_limit_of_the_plan(rescale):
    q, k, v = _qkv(n_q=N, n_k=N + 4, seed=4)
    out = weak.uniform(q, k, v, rescale=rescale)
    expected = v.sum(dim=-2, keepdim=True).expand(B, H, N, D + 1) / (N + 4)
    expected = expected if rescale else expected / N
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # lambda -> 0: the Sinkhorn plan tends to the uniform plan
    limit = sinkhorn_ref(q, k, v, -1, 3, scale=1e-7, rescale=rescale)
    torch.testing.assert_close(out, limit, rtol=1e-5, atol=1e-6)


def test_identity_is_pag_output_equals_v():
    q, k, v = _qkv(seed=5)
    assert torch.equal(weak.identity(q, k, v), v)
    q, k, v = _qkv(n_q=N, n_k=N + 3, seed=5)  # reference-only: the layer's own tokens come first
    assert torch.equal(weak.identity(q, k, v), v[:, :, :N])


def blur_ref(q, grid, sigma):
    """2-D Gaussian weights over every pair of grid positions, normalised per output token."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    d2 = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    weights = torch.exp(-d2 / (2 * sigma**2)) if math.isfinite(sigma) else torch.ones_like(d2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights @ q.double()


@pytest.mark.parametrize("sigma", [0.7, 2.0, math.inf])
def test_blur_is_seg_softmax_attention_on_gaussian_blurred_queries(sigma):
    q, k, v = _qkv(seed=6)
    value = params.BLUR_SIGMA_INFINITE if math.isinf(sigma) else sigma
    out = weak.blur(q, k, v, grid=(3, 4), sigma=value, scale=0.6)
    torch.testing.assert_close(out, softmax_ref(blur_ref(q, (3, 4), sigma), k, v, scale=0.6), rtol=1e-9,
                               atol=1e-10)


def test_blur_with_infinite_sigma_gives_every_query_the_same_output_and_checks_the_grid():
    q, k, v = _qkv(seed=6)
    out = weak.blur(q, k, v, grid=(3, 4), sigma=weak.SIGMA_INFINITE)
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="grid 5x5"):
        weak.blur(q, k, v, grid=(5, 5), sigma=1.0)


def test_low_precision_inputs_keep_their_dtype():
    q, k, v = _qkv(seed=8, dtype=torch.float32)
    for name in weak.NAMES:
        out = weak.WEAK_MODELS[name](q.half(), k.half(), v.half(), grid=(3, 4), sigma=2.0)
        assert out.dtype == torch.float16 and out.shape == (B, H, N, D + 1), name


# ------------------------------------------------------------------------------------------------
# the token grid and the seed


def test_token_grid_follows_the_unet_levels_of_an_odd_latent():
    unet = build_unet("sd15")
    refs = [ref for ref, _ in layers.resolve(unet, "all")]
    latent = (13, 20)
    counts = layers.token_counts(unet, refs, *latent)
    # levels by hand: 13x20 -> 7x10 -> 4x5 -> 2x3
    expected = {260: (13, 20), 70: (7, 10), 20: (4, 5), 6: (2, 3)}
    for n in set(counts.values()):
        assert weak.token_grid(n, latent) == expected[n]
    assert weak.token_grid(12, None) == (3, 4)  # no latent size: closest to square
    assert weak.token_grid(7, (16, 16)) == (1, 7)  # no level matches: a prime has one factorisation


def test_seed_of_prefers_the_batch_seed():
    from types import SimpleNamespace

    assert weak.seed_of(SimpleNamespace(seed=-1, all_seeds=[5, 6], seeds=[6])) == 6
    assert weak.seed_of(SimpleNamespace(seed=-1, all_seeds=[5, 6], seeds=[])) == 5


# ------------------------------------------------------------------------------------------------
# dispatch


def test_default_options_call_the_kernel_exactly_as_before(monkeypatch):
    calls = []

    def fake(q, k, v, **kwargs):
        calls.append(kwargs)
        return q

    monkeypatch.setattr(attention, "sinkhorn_attention", fake)
    q, k, v = _qkv()
    KernelOptions.from_settings(params.DEFAULTS).attend(q, k, v, scale=0.5)
    assert calls == [dict(iterations=2, tol=1e-3, scale=0.5, rescale=True)]  # the call on main, unchanged


def test_dispatch_reaches_every_weak_model_with_its_options():
    q, k, v = _qkv(seed=9)
    grid_latent = (3, 4)
    expected = {
        "asag": sinkhorn_ref(q, k, v, -1, 2, scale=0.5),
        "similarity": sinkhorn_ref(q, k, v, +1, 2, scale=0.5),
        "uniform": v.mean(dim=-2, keepdim=True).expand(B, H, N, D + 1),
        "identity": v,
        "blur": softmax_ref(blur_ref(q, (3, 4), 1.5), k, v, scale=0.5),
    }
    for name, ref in expected.items():
        settings = params.from_mapping({"weak_model": name, "blur_sigma": 1.5, "tolerance": 0.0})
        out = KernelOptions.from_settings(settings, latent_hw=grid_latent).attend(q, k, v, scale=0.5)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10, msg=name)
    settings = params.from_mapping({"weak_model": "random"})
    a = KernelOptions.from_settings(settings, seed=1).attend(q, k, v)
    assert torch.equal(a, weak.random_cost(q, k, v, seed=1, tol=1e-3))
    assert not torch.equal(a, KernelOptions.from_settings(settings, seed=2).attend(q, k, v))


def test_schema_rows_are_appended_in_order_with_clear_errors():
    names = [p.name for p in params.PARAMS]
    assert names[11:14] == ["weak_model", "blur_sigma", "telemetry"]
    assert params.PARAMS_BY_NAME["weak_model"].choice_values == weak.NAMES
    assert params.from_mapping({"blur_sigma": "inf"}).blur_sigma == params.BLUR_SIGMA_INFINITE
    assert params.BLUR_SIGMA_INFINITE == weak.SIGMA_INFINITE
    with pytest.raises(ValueError, match=r"'weak_model'.*'asag', 'similarity'"):
        params.from_mapping({"weak_model": "pag"})
    with pytest.raises(ValueError, match="'blur_sigma'"):
        params.from_mapping({"blur_sigma": 0})
    assert params.from_mapping({"weak_model": "Identity (PAG)"}).weak_model == "identity"


def test_infotext_names_the_weak_model_and_pastes_back():
    plain = params.to_infotext(params.from_mapping({"enabled": True}))
    assert "ASAG weak model" not in plain  # the default is left out; pasting fills it from version 1
    assert params.from_infotext(plain)["weak_model"] == "asag"
    seg = params.to_infotext(params.from_mapping({"enabled": True, "weak_model": "blur", "blur_sigma": 3}))
    assert seg["ASAG weak model"] == "blur" and seg["ASAG blur sigma"] == "3"
    back = params.from_infotext(seg)
    assert back["weak_model"] == "blur" and back["blur_sigma"] == 3.0
    assert params.from_infotext({"ASAG scale": "2", "ASAG weak model": "Identity (PAG)"})["weak_model"] == "identity"
