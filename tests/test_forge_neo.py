"""Forge Neo as a first-class host, through the Forge doubles switched to Neo's documented differences
(docs/hosts.md §11.4, §11.8 and the appendix): version "neo", `sampling_function(..., extra_model_options)`
merged into the options, no `is_sd2`/`is_sd3`, `is_webui_legacy_model()` = SD1 or SDXL, `clone()` built
through the constructor, the full schedule in `transformer_options["sampling_sigmas"]`."""

from __future__ import annotations

import pytest
import torch

from asag_lib import params
from asag_lib.hosts import forge, forge_variant
from tests.hosts.forge_host import asag_replacement, controlnet_patcher

SIZE = dict(height=64, width=64)
neo = pytest.mark.parametrize("forge_host", ["neo"], indirect=True)


@pytest.mark.parametrize(("forge_host", "name"), [("neo", "neo"), ("forge2", "forge2"), ("ldm_patched", "ldm_patched")],
                         indirect=["forge_host"])
def test_variant_detection(forge_host, name):
    assert forge_variant() == name


@neo
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_sd15_and_sdxl_are_guided_on_neo(forge_host, family, capsys):
    engine = forge_host.make_engine(family)
    assert not hasattr(engine, "is_sd2") and not hasattr(engine, "is_sd3")
    off = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, layers="middle"), **SIZE)
    assert "neo (forge2 backend)" in capsys.readouterr().out
    assert len(on.weak_calls) == 2 and not torch.equal(on.samples, off.samples)
    assert on.p.extra_generation_params["ASAG scale"] == "3"
    again = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    assert torch.equal(again.samples, off.samples)


@neo
def test_flux_on_neo_is_refused_without_infotext(forge_host, capsys):
    engine = forge_host.make_engine(dit=True)
    assert not engine.is_webui_legacy_model()
    on = forge_host.txt2img(engine, forge_host.args(enabled=True), **SIZE)
    # the doubles' Flux stand-in lacks Flux's block structure, so the DiT router refuses it (hosts/dit.py)
    assert capsys.readouterr().out.count("Flux model's blocks do not have the structure ASAG knows") == 1
    assert not on.weak_calls
    assert not any(params.is_infotext_key(k) for k in on.p.extra_generation_params)


@neo
def test_extra_model_options_reach_the_weak_call(forge_host):
    engine = forge_host.make_engine("sd15")
    seen = []

    def other_post_cfg(args):
        seen.append(args["cond_scale"])
        return args["denoised"]

    extra = {"transformer_options": {"neo_extra": 7}, "sampler_post_cfg_function": [other_post_cfg]}
    live = engine.forge_objects_after_applying_lora.unet
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers="input.1"), cfg=4.0,
                                extra_model_options=extra, **SIZE)
    assert len(result.weak_calls) == 2 and seen == [4.0, 4.0]
    for call in result.weak_calls:
        assert call.model_options["transformer_options"]["neo_extra"] == 7
        assert call.replaced_by(asag_replacement) == {("input", 1, 0)}
    assert "neo_extra" not in live.model_options["transformer_options"]
    assert "sampler_post_cfg_function" not in live.model_options


@neo
def test_neo_clone_keeps_every_patch_other_extensions_made(forge_host):
    """Neo's clone() goes through the constructor: ASAG's clone must still carry what the built-ins put
    there before it (post-CFG and CFG functions as rescale CFG / mahiro / epsilon scaling, a conditioning
    modifier as the seed-variance enhancer, a model wrapper as MultiDiffusion, reserved memory as Never
    OOM, an attn2 replacement, a ControlNet unit), and they must keep working."""
    engine = forge_host.make_engine("sd15")
    ran = {"post": 0, "cfg": 0, "modifier": 0, "wrapper": 0}

    def post(args):
        ran["post"] += 1
        return args["denoised"]

    def cfg_function(args):
        ran["cfg"] += 1
        return args["input"] - (args["uncond_denoised"] + (args["cond_denoised"] - args["uncond_denoised"])
                                * args["cond_scale"])

    def modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        ran["modifier"] += 1
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    def wrapper(apply_model, call):
        ran["wrapper"] += 1
        return apply_model(call["input"], call["timestep"], **call["c"])

    def attn2(q, k, v, extra_options, mask=None):
        return q

    def builtins(p):
        unet = p.sd_model.forge_objects.unet.clone()
        unet.set_model_sampler_post_cfg_function(post)
        unet.set_model_sampler_cfg_function(cfg_function)
        unet.add_conditioning_modifier(modifier)
        unet.model_options["model_function_wrapper"] = wrapper
        unet.set_model_patch_replace(attn2, "attn2", "output", 11, 0)
        unet.add_extra_preserved_memory_during_sampling(123)
        p.sd_model.forge_objects.unet = unet

    hint = torch.rand(1, 3, 64, 64)
    control = controlnet_patcher(hint)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers="input.1"),
                                patchers=[builtins, control], **SIZE)
    handed = result.pbes_unets[-1]
    options = handed.model_options
    assert options["sampler_post_cfg_function"][0] is post and len(_ours(handed)) == 1
    assert options["sampler_cfg_function"] is cfg_function and options["conditioning_modifiers"] == [modifier]
    assert options["model_function_wrapper"] is wrapper
    assert options["transformer_options"]["patches_replace"]["attn2"][("output", 11, 0)] is attn2
    assert handed.controlnet_linked_list is control.controlnet
    assert handed.extra_preserved_memory_during_sampling > 123
    assert ran["post"] == ran["cfg"] == ran["modifier"] == 2
    assert ran["wrapper"] == 4  # main and weak call of both steps
    assert len(result.weak_calls) == 2


def _ours(unet):
    return [fn for fn in unet.model_options.get("sampler_post_cfg_function", []) if forge.is_ours(fn)]
