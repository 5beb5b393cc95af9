"""AND prompts on Forge: the ASAG term is s · Σ_k (w_k / Σ_j w_j)(cond_k − weak_k) per image, normalised by
Σ_j |w_j| when Σ_j w_j <= 0 (README, "One meaning per setting"). Checked against an independent
computation: each part's cond and weak prediction from its own calc call (weak: instance-patched attn1
modules, the A1111 route), combined in float64 in the test."""

from __future__ import annotations

import pytest
import torch

from asag_lib import attention, layers, params
from asag_lib.hosts import forge

SPEC = "input.1, output.11"


def _parts(c, weights):
    from backend.sampling.condition import compile_weighted_conditions

    return compile_weighted_conditions(c, [[(k, w) for k, w in enumerate(weights)]])


@pytest.mark.parametrize("forge_host", ["forge2", "neo"], indirect=True)
@pytest.mark.parametrize("weights", [(1.0, 0.5), (2.0, -0.5, 1.0), (1.0, -1.5)])
def test_and_term_is_the_normalised_weighted_mean_of_part_differences(forge_host, weights):
    from backend.sampling import sampling_function as sf
    from backend.sampling.condition import compile_conditions

    scale, cfg = 2.0, 3.0
    engine = forge_host.make_engine("sd15")
    patched = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=scale, layers=SPEC)).pbes_unets[-1]
    live = engine.forge_objects_after_applying_lora.unet
    model = live.model
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=g) * 2
    sigma = torch.full((1,), 1.5)
    c = torch.randn(len(weights), 4, 768, generator=g)
    uc = torch.randn(1, 4, 768, generator=g)
    with torch.no_grad():
        got = sf.sampling_function_inner(model, x, sigma, compile_conditions(uc), _parts(c, weights), cfg,
                                         patched.model_options)
        host = sf.sampling_function_inner(model, x, sigma, compile_conditions(uc), _parts(c, weights), cfg,
                                          live.model_options)
        settings = params.Settings(enabled=True, scale=scale, layers=SPEC)
        modules = [m for _, m in layers.resolve(model.diffusion_model, SPEC)]
        forward = attention.make_attn1_forward(attention.KernelOptions.from_settings(settings))
        conds, weaks = [], []
        for k in range(len(weights)):
            one = compile_conditions(c[k:k + 1])
            conds.append(sf.calc_cond_uncond_batch(model, one, None, x, sigma, live.model_options)[0].double())
            with attention.patched_forwards(modules, forward):
                weaks.append(sf.calc_cond_uncond_batch(model, compile_conditions(c[k:k + 1]), None, x, sigma,
                                                       live.model_options)[0].double())
    total = sum(weights)
    norm = total if total > 0 else sum(abs(w) for w in weights)
    term = sum(w / norm * (ck - wk) for w, ck, wk in zip(weights, conds, weaks, strict=True))
    expected = host.double() + scale * term
    assert not torch.allclose(term, torch.zeros_like(term), atol=1e-4)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=2e-5)


def test_weights_summing_to_zero_skip_the_step():
    assert forge.and_factor([{"strength": 1.0}, {"strength": -1.0}]) is None
    assert forge.and_factor([{"strength": 1.0}, {}]) == 1.0
    assert forge.and_factor([{"strength": 1.0}, {"strength": -3.0}]) == pytest.approx(-2.0 / 4.0)
