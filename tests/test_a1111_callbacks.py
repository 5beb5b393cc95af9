"""The A1111 adapter's CFG callbacks against a minimal stand-in of the host's denoiser call.

Written from the documented 1.10.1 behaviour (../shared/docs/hosts.md §2): rows are
[cond rows | uncond rows], the denoiser callback's fields are read back, reassigning x in the denoised
callback is ignored, the after-CFG callback's x is read back. Only what the adapter touches is modelled;
the full host doubles live under tests/hosts/ (being rewritten).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

import asag_lib.attention as attention
from asag_lib import params
from asag_lib.hosts import a1111, job
from tests.unets import build_unet


@pytest.fixture
def host(monkeypatch):
    """Fake `modules.shared`, `modules.sd_unet`, `modules.prompt_parser` holding an SD1.5-layout UNet."""
    unet = build_unet("sd15").eval()
    shared = types.SimpleNamespace(
        sd_model=types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet, conditioning_key="crossattn"),
                                       cond_stage_key="crossattn"),
        opts=types.SimpleNamespace(batch_cond_uncond=True),
        loaded_hypernetworks=[],
    )
    prompt_parser = types.SimpleNamespace(
        # cond here is already the per-call list of image rows; one subprompt of weight 1 per image
        reconstruct_multicond_batch=lambda cond, step: ([[(i, 1.0)] for i in range(cond.shape[0])], cond),
    )
    package = types.ModuleType("modules")
    package.shared, package.sd_unet, package.prompt_parser = shared, types.SimpleNamespace(current_unet=None), prompt_parser
    for name, module in (("modules", package), ("modules.shared", shared), ("modules.sd_unet", package.sd_unet),
                         ("modules.prompt_parser", prompt_parser)):
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(unet=unet, shared=shared)


def _sample(host, p, steps=2, seed=0, batch=1):
    """A tiny Euler-like loop calling the three callbacks around one [cond | uncond] UNet call per step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    cond = torch.randn(batch, 4, 768, generator=torch.Generator().manual_seed(1))
    uncond = torch.zeros(batch, 4, 768)

    def inner_model(x_in, sigma_in, cond=None):
        return host.unet(x_in, sigma_in, cond["c_crossattn"][0])

    denoiser = types.SimpleNamespace(p=p, step=0, total_steps=steps, mask=None, mask_before_denoising=False,
                                     inner_model=inner_model,
                                     sampler=types.SimpleNamespace(sampler_extra_args={"cond": cond}))
    for step in range(steps):
        sigma = torch.full((batch,), 10.0 / (step + 1))
        params_in = types.SimpleNamespace(x=torch.cat([x, x]), image_cond=torch.zeros(2 * batch, 5, 1, 1),
                                          sigma=torch.cat([sigma, sigma]), text_cond=cond, text_uncond=uncond,
                                          denoiser=denoiser)
        a1111.on_cfg_denoiser(params_in)
        with torch.no_grad():
            x_out = inner_model(params_in.x, params_in.sigma, cond={"c_crossattn": [torch.cat([params_in.text_cond,
                                                                                              params_in.text_uncond])]})
        denoised_params = types.SimpleNamespace(x=x_out, inner_model=inner_model)
        with torch.no_grad():
            a1111.on_cfg_denoised(denoised_params)
        denoised = x_out[-batch:] + 5.0 * (x_out[:batch] - x_out[-batch:])
        after = types.SimpleNamespace(x=denoised)
        a1111.on_cfg_after_cfg(after)
        x = x + (after.x - x) * 0.5
        denoiser.step += 1
    return x


def _job(host, args, seed=0, batch=1):
    p = types.SimpleNamespace(extra_generation_params={}, is_hr_pass=False)
    current = job.prepare_job(p, args)
    if current is not None:
        a1111.before_sampling(p, current, x=torch.zeros(batch, 4, 8, 8))
    return _sample(host, p, seed=seed, batch=batch), p


def _no_patch_left(unet):
    return all("forward" not in vars(module) for module in unet.modules())


def test_disabled_and_scale_zero_are_bit_identical(host):
    plain, _ = _job(host, [False])
    zero, p = _job(host, [True, 0.0, "all"])
    assert torch.equal(plain, zero) and not p.extra_generation_params
    guided, p = _job(host, [True, 2.0, "all"])
    assert not torch.equal(plain, guided) and p.extra_generation_params["ASAG scale"] == "2"
    assert _no_patch_left(host.unet)


def test_failing_weak_pass_leaves_no_patch_and_the_job_goes_on(host, monkeypatch):
    plain, _ = _job(host, [False])

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(attention, "sinkhorn_attention", broken)
    failed, p = _job(host, [True, 2.0, "all"])
    assert torch.equal(plain, failed) and _no_patch_left(host.unet)
    assert "weak pass failed" in p.extra_generation_params[job.ERROR_KEY]


def test_interrupt_in_the_weak_pass_propagates_and_leaves_no_patch(host, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attention, "sinkhorn_attention", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _job(host, [True, 2.0, "all"])
    assert _no_patch_left(host.unet)


def test_batch_composition_does_not_change_a_sample(host):
    alone, _ = _job(host, [True, 2.0, "all"], batch=1)
    pair, _ = _job(host, [True, 2.0, "all"], batch=2)
    plain, _ = _job(host, [False], batch=1)
    effect = (alone - plain).abs().max()
    assert effect > 1e-3 and (alone[0] - pair[0]).abs().max() < 1e-3 * effect


def test_bad_layer_spec_on_the_model_is_reported_and_nothing_runs(host):
    plain, _ = _job(host, [False])
    out, p = _job(host, [True, 2.0, "input.9"])
    assert torch.equal(plain, out)
    assert "input.9" in p.extra_generation_params[job.ERROR_KEY]
    assert params.infotext_key(params.PARAMS_BY_NAME["scale"]) not in p.extra_generation_params
