"""ASAG on Flux/Chroma through the real scripts/asag.py and the Forge2 doubles (tests/hosts/forge), with
the small Neo-structured models of tests/dit_models.py in place of the doubles' DiT stand-in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tests.dit_models as dm
from asag_lib import params
from asag_lib.hosts import forge

STEPS = 2


def flux_engine(forge_host, cls=dm.IntegratedFluxTransformer2DModel, **kw):
    engine = forge_host.make_engine(dit=True, prediction="flow")
    engine.forge_objects.unet.model.diffusion_model = cls(context_dim=engine.test_context_dim, **kw)
    return engine


def is_weak(call) -> bool:
    dit = call.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    return any(getattr(fn, "asag", False) for fn in dit.values())


def asag_keys(result):
    return {k: v for k, v in result.p.extra_generation_params.items() if params.is_infotext_key(k)}


def test_off_and_scale_zero_are_bit_identical(forge_host):
    engine = flux_engine(forge_host)
    off = forge_host.txt2img(engine, forge_host.args(), cfg=1.0)
    zero = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=0.0), cfg=1.0)
    assert torch.equal(off.samples, zero.samples)
    assert not any(is_weak(c) for c in off.calls + zero.calls)
    assert not asag_keys(off) and not asag_keys(zero)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_default_layers_just_work_on_flux_at_any_cfg(forge_host, capsys, cfg):
    engine = flux_engine(forge_host)
    off = forge_host.txt2img(engine, forge_host.args(), cfg=cfg)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True), cfg=cfg)  # layers left at 'middle'
    out = capsys.readouterr().out
    assert "Flux (DiT): ASAG at 1 block(s): double.1 ('middle' is the UNet default" in out
    weak = [c for c in on.calls if is_weak(c)]
    assert len(weak) == STEPS and all(c.uncond_none for c in weak)
    assert not torch.equal(on.samples, off.samples)
    keys = asag_keys(on)  # defaults (joint 'image', layers 'middle') are left out of the infotext
    assert "ASAG scale" in keys and "ASAG joint" not in keys and "ASAG layers" not in keys
    after = forge_host.txt2img(engine, forge_host.args(), cfg=cfg)
    assert torch.equal(after.samples, off.samples)  # the next plain job is untouched
    assert dm.attention.__name__ == "attention"


def test_only_the_weak_call_carries_the_block_replacement(forge_host):
    engine = flux_engine(forge_host)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=2.0, layers="single.0"), cfg=1.0)
    weak_calls = [c for c in result.calls if is_weak(c)]
    main_calls = [c for c in result.calls if not is_weak(c)]
    assert len(weak_calls) == len(main_calls) == STEPS
    assert all(("single_block", 0) in c.model_options["transformer_options"]["patches_replace"]["dit"]
               for c in weak_calls)
    assert all("dit" not in c.model_options.get("transformer_options", {}).get("patches_replace", {})
               for c in main_calls)


def test_qwen_image_default_layers_at_cfg_one(forge_host, capsys):
    engine = flux_engine(forge_host, dm.QwenImageTransformer2DModel)
    off = forge_host.txt2img(engine, forge_host.args(), cfg=1.0)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True), cfg=1.0)
    assert "Qwen-Image (DiT): ASAG at 1 block(s): block.1 ('middle' is the UNet default" in capsys.readouterr().out
    assert len([c for c in on.calls if is_weak(c)]) == STEPS
    assert not torch.equal(on.samples, off.samples)
    assert torch.equal(forge_host.txt2img(engine, forge_host.args(), cfg=1.0).samples, off.samples)
    assert dm.attention_function.__name__ == "attention_function"


def test_anima_default_layers(forge_host, capsys):
    engine = flux_engine(forge_host, dm.Anima)
    off = forge_host.txt2img(engine, forge_host.args(), cfg=1.0)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=2.0), cfg=1.0)
    assert "Anima (DiT): ASAG at 1 block(s): block.1 ('middle' is the UNet default" in capsys.readouterr().out
    assert len(on.calls) == 2 * len(off.calls)  # one weak call per step
    assert not torch.equal(on.samples, off.samples)
    model = engine.forge_objects.unet.model.diffusion_model
    assert all(b.self_attn.attn_op is dm.default_attn_op for b in model.blocks)
    assert torch.equal(forge_host.txt2img(engine, forge_host.args(), cfg=1.0).samples, off.samples)


def test_chroma_and_full_joint(forge_host):
    engine = flux_engine(forge_host, dm.IntegratedChromaTransformer2DModel, depth=1, depth_single=1)
    off = forge_host.txt2img(engine, forge_host.args(), cfg=1.0)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, joint="full", layers="all"), cfg=1.0)
    assert len([c for c in on.calls if is_weak(c)]) == STEPS
    assert not torch.equal(on.samples, off.samples)
    assert asag_keys(on)["ASAG joint"] == "full"


def test_a_failing_weak_pass_leaves_nothing_behind(forge_host, monkeypatch, capsys):
    engine = flux_engine(forge_host)
    baseline = forge_host.txt2img(engine, forge_host.args(), cfg=1.0)

    def boom(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    with monkeypatch.context() as m:
        m.setattr("asag_lib.hosts.dit_flux.joint_sinkhorn_attention", boom)
        failed = forge_host.txt2img(engine, forge_host.args(enabled=True), cfg=1.0)
    assert "the weak pass failed (RuntimeError: kernel exploded)" in capsys.readouterr().out
    assert torch.equal(failed.samples, baseline.samples)  # guidance dropped, main pass untouched
    assert dm.attention.__name__ == "attention"
    live = engine.forge_objects_after_applying_lora.unet
    assert not [fn for fn in live.model_options.get("sampler_post_cfg_function", []) if forge.is_ours(fn)]
    assert torch.equal(forge_host.txt2img(engine, forge_host.args(), cfg=1.0).samples, baseline.samples)


def test_bad_layers_on_flux_is_one_error_and_no_pass(forge_host, capsys):
    engine = flux_engine(forge_host)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers="input.4"), cfg=1.0)
    out = capsys.readouterr().out
    assert "'layers': invalid layer spec 'input.4'" in out and "double blocks 0-1; single blocks 0-1" in out
    assert not any(is_weak(c) for c in result.calls)
    assert set(asag_keys(result)) == {"ASAG error"}


class NextDiT(nn.Module):
    """Only the class name matters: a Neo family ASAG refuses (Lumina-2 / Z-Image)."""

    def forward(self, x, timestep, context, **kwargs):
        return x * 0.5


def test_refused_family_says_why_once_and_writes_no_infotext(forge_host, capsys):
    engine = forge_host.make_engine(dit=True, prediction="flow")
    engine.forge_objects.unet.model.diffusion_model = NextDiT()
    off = forge_host.txt2img(engine, forge_host.args(), cfg=1.0)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True), cfg=1.0)
    out = capsys.readouterr().out
    assert out.count("Lumina-2 / Z-Image are not supported yet") == 1
    assert not asag_keys(on) and len(on.calls) == len(off.calls)
    assert torch.equal(on.samples, off.samples)


def test_post_cfg_combination_window_and_cond_only_call():
    """denoised + s·(cond − weak), hand-computed, through the Forge post-CFG function the DiT path shares
    with UNets; a step outside the Start/End window (a fraction of the steps) gets the host's tensor back."""
    import contextlib
    from types import SimpleNamespace

    from asag_lib.hosts import forge
    from asag_lib.hosts.forge_steps import StepClock
    from asag_lib.hosts.job import Job

    seen = []
    active = []

    def calc(model, cond, uncond, x, sigma, options):
        seen.append((uncond, options, list(active)))
        return torch.full_like(x, 0.25), None

    @contextlib.contextmanager
    def hook_active():
        active.append("on")
        try:
            yield
        finally:
            active.clear()

    job = Job(settings=None)
    # schedule of 2 steps: sigma 0.9 is step 0 (0/2 < start 0.5: not guided), sigma 0.5 is step 1 (guided)
    fn = forge.make_post_cfg(calc=calc, weak_options=lambda live: {"copied": True}, active=hook_active,
                             scale=2.0, rescale=0.0, window=(0.5, 1.0), clock=StepClock([0.9, 0.5, 0.0]),
                             job=job, p=SimpleNamespace())
    x = torch.zeros(1, 4, 2, 2)
    args = {"denoised": torch.full_like(x, 1.0), "cond_denoised": torch.full_like(x, 0.75), "cond": [{}],
            "input": x, "model": None, "model_options": {}, "sigma": torch.tensor([0.9])}
    assert fn(args) is args["denoised"] and not seen
    inside = dict(args, sigma=torch.tensor([0.5]))
    torch.testing.assert_close(fn(inside), torch.full_like(x, 1.0 + 2.0 * (0.75 - 0.25)))
    assert seen == [(None, {"copied": True}, ["on"])] and not active
    assert job.guided_steps == 1 and job.weak_passes == 1
