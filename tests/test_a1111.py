"""The real scripts/asag.py driven through the A1111 1.10.1 doubles (tests/hosts/webui)."""

from __future__ import annotations

import pytest
import torch

import asag_lib.attention as attention
from asag_lib import params

# SD1.5 at 64x64: `all` reaches the ds1 layers (64 tokens); the middle block there has a single token,
# where every transport plan is the identity.
ON = [True, 2.0, "all"]
FAST = {"steps": 3, "width": 64, "height": 64}


def _no_patch_left(host):
    return all("forward" not in vars(module) for module in host.unet.modules())


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True))


def _assert_float_noise(a, b, effect_of):
    """a and b differ only by float rounding: far less than ASAG's own effect on the result."""
    effect = (effect_of[0] - effect_of[1]).abs().max()
    assert effect > 1e-3
    assert (a - b).abs().max() < 1e-3 * effect


# ------------------------------------------------------------------------------------------------
# bit-identity and cleanliness


def test_disabled_and_scale_zero_are_bit_identical_and_run_no_weak_pass(a1111_host, kernel_calls):
    host = a1111_host
    with host.without_extension():
        plain = host.txt2img(seed=3, **FAST)
    disabled = host.txt2img(seed=3, **FAST)
    zero = host.txt2img(seed=3, alwayson={"ASAG": [True, 0.0, "all"]}, **FAST)
    assert _same(plain, disabled) and _same(plain, zero)
    assert kernel_calls == []
    assert _no_patch_left(host)
    assert zero.infotexts == plain.infotexts == disabled.infotexts  # byte-identical saved images


def test_enabled_changes_the_result_and_writes_infotext(a1111_host, kernel_calls):
    host = a1111_host
    plain = host.txt2img(seed=3, **FAST)
    guided = host.txt2img(seed=3, alwayson={"ASAG": ON}, **FAST)
    assert not _same(plain, guided)
    # 16 attn1 layers, one weak call per step (3 steps of Euler = 3 model calls)
    assert len(kernel_calls) == 16 * 3
    assert "ASAG scale: 2" in guided.infotexts[0] and "ASAG layers: all" in guided.infotexts[0]
    assert _no_patch_left(host)


def test_guidance_is_linear_in_scale_through_the_host(a1111_host):
    # One Euler step: the latent is affine in the denoised prediction, hence in s.
    host = a1111_host
    run = {s: host.txt2img(seed=5, steps=1, alwayson={"ASAG": [True, s, "all"]}).images[0] for s in (0.0, 1.0, 3.0)}
    torch.testing.assert_close(run[3.0] - run[0.0], 3 * (run[1.0] - run[0.0]), rtol=1e-4, atol=1e-5)


def test_weak_pass_failure_leaves_no_patch_and_the_next_job_is_unaffected(a1111_host, monkeypatch):
    host = a1111_host
    before = host.txt2img(seed=2, **FAST)

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(attention, "sinkhorn_attention", broken)
    failed = host.txt2img(seed=2, alwayson={"ASAG": ON}, **FAST)
    assert _no_patch_left(host)
    assert _same(before, failed)  # it failed on the first step, so ASAG was off for the whole job
    assert "weak pass failed" in failed.infotexts[0]
    monkeypatch.undo()
    after = host.txt2img(seed=2, **FAST)
    assert _same(before, after)


def test_an_interrupt_inside_the_weak_pass_propagates_and_leaves_no_patch(a1111_host, monkeypatch):
    host = a1111_host

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attention, "sinkhorn_attention", interrupted)
    with pytest.raises(KeyboardInterrupt):
        host.txt2img(seed=2, alwayson={"ASAG": ON}, **FAST)
    assert _no_patch_left(host)
    monkeypatch.undo()
    first = host.txt2img(seed=2, alwayson={"ASAG": ON}, **FAST)
    second = host.txt2img(seed=2, alwayson={"ASAG": ON}, **FAST)
    assert _same(first, second)


def test_batch_composition_does_not_change_a_sample(a1111_host):
    host = a1111_host
    alone = host.txt2img(seed=7, batch_size=1, alwayson={"ASAG": ON}, **FAST)
    batch = host.txt2img(seed=7, batch_size=2, alwayson={"ASAG": ON}, **FAST)
    plain = host.txt2img(seed=7, batch_size=1, **FAST)
    _assert_float_noise(alone.images[0], batch.images[0], effect_of=(alone.images[0], plain.images[0]))


# ------------------------------------------------------------------------------------------------
# host situations


@pytest.mark.parametrize("p_fields", [
    {"cfg_scale": 1.0},
    {"s_min_uncond": 100.0},
], ids=["cfg1", "ngms"])
def test_cfg1_and_skipped_uncond_steps_still_guide(a1111_host, kernel_calls, p_fields):
    host = a1111_host
    plain = host.txt2img(seed=4, **FAST, **p_fields)
    guided = host.txt2img(seed=4, alwayson={"ASAG": ON}, **FAST, **p_fields)
    assert kernel_calls and not _same(plain, guided)


def test_and_prompts_use_per_image_weights(a1111_host, kernel_calls):
    host = a1111_host
    guided = host.txt2img(prompt="a cat :0.7 AND a dog :1.3", seed=4, batch_size=2, alwayson={"ASAG": ON}, **FAST)
    plain = host.txt2img(prompt="a cat :0.7 AND a dog :1.3", seed=4, batch_size=2, **FAST)
    assert len(guided.images) == 2 and not _same(plain, guided)
    assert kernel_calls[0][0] == 4  # the weak call runs on the 4 cond rows (2 images x 2 subprompts)


def test_timestep_sampler_works(a1111_host, kernel_calls):
    host = a1111_host
    plain = host.txt2img(seed=4, sampler="DDIM", **FAST)
    guided = host.txt2img(seed=4, sampler="DDIM", alwayson={"ASAG": ON}, **FAST)
    assert kernel_calls and not _same(plain, guided)


@pytest.mark.parametrize(("hires", "weak_in_first", "weak_in_hires"), [
    ("both", True, True), ("first", True, False), ("hires", False, True),
])
def test_hires_choice_selects_the_passes(a1111_host, kernel_calls, hires, weak_in_first, weak_in_hires):
    host = a1111_host
    host.txt2img(seed=1, steps=2, enable_hr=True, hr_scale=2.0, width=64, height=64,
                 alwayson={"ASAG": [True, 1.5, "input.1", 2, 0.001, 0.0, 1.0, hires]})
    first = [c for c in kernel_calls if c[2] == 64]   # ds1 tokens of the 8x8 latent
    second = [c for c in kernel_calls if c[2] == 256]  # ds1 tokens of the 16x16 latent after the 2x hires
    assert bool(first) is weak_in_first and bool(second) is weak_in_hires


def test_schedule_window_limits_the_guided_steps(a1111_host, kernel_calls):
    host = a1111_host
    host.txt2img(seed=1, steps=4, alwayson={"ASAG": [True, 1.5, "middle-first,input.1", 2, 0.001, 0.5, 1.0]})
    assert len(kernel_calls) == 2 * 2  # 2 layers, the last 2 of 4 steps


def test_inpainting_guidance_is_masked_on_k_diffusion_samplers(a1111_host):
    host = a1111_host
    seen = []

    def capture(params):
        seen.append(params.x.clone())

    # registered after ASAG's: sees the guided denoised of each step
    host.modules["script_callbacks"].on_cfg_after_cfg(capture, name="test-capture")
    mask = torch.zeros(64, 64)
    mask[:, 32:] = 1.0  # right half is inpainted
    host.img2img(seed=1, steps=2, mask=mask)
    plain_first = seen[0]
    seen.clear()
    host.img2img(seed=1, steps=2, mask=mask, alwayson={"ASAG": ON})
    guided_first = seen[0]
    kept = guided_first[..., :, :4] - plain_first[..., :, :4]
    changed = guided_first[..., :, 4:] - plain_first[..., :, 4:]
    assert kept.abs().max() == 0 and changed.abs().max() > 0


def test_sdxl_middle_block(a1111_host, kernel_calls):
    host = a1111_host
    host.set_model("sdxl")
    guided = host.txt2img(seed=1, steps=2, width=128, height=128, alwayson={"ASAG": [True, 1.5, "middle"]})
    assert len(kernel_calls) == 10 * 2
    assert "ASAG scale: 1.5" in guided.infotexts[0] and "ASAG layers" not in guided.infotexts[0]  # the default


def test_alternative_unet_is_refused_with_a_message(a1111_host, kernel_calls, capsys):
    host = a1111_host
    host.modules["sd_unet"].current_unet = object()
    try:
        host.txt2img(seed=1, alwayson={"ASAG": ON}, **FAST)
    finally:
        host.modules["sd_unet"].current_unet = None
    assert kernel_calls == []
    assert "alternative UNet" in capsys.readouterr().out


def test_a_layer_that_does_not_exist_on_the_model_is_reported(a1111_host, kernel_calls, capsys):
    host = a1111_host
    result = host.txt2img(seed=1, alwayson={"ASAG": [True, 1.5, "input.9"]}, **FAST)
    assert kernel_calls == []
    assert "input blocks with attention: 1, 2, 4, 5, 7, 8" in capsys.readouterr().out
    assert "ASAG error" in result.infotexts[0] and "'layers'" in result.infotexts[0]
    assert "ASAG scale" not in result.infotexts[0]  # 'ASAG scale' in an infotext means ASAG ran
    assert _no_patch_left(host)


def test_host_detection(a1111_host):
    from asag_lib.hosts import detect

    assert detect() == "a1111"


# ------------------------------------------------------------------------------------------------
# the weak pass modes


def test_batched_weak_pass_equals_the_separate_call(a1111_host):
    host = a1111_host
    base = [True, 2.0, "all", 2, 0.001, 0.0, 1.0, "both", 0.0, "rows"]
    separate = host.txt2img(seed=6, batch_size=2, alwayson={"ASAG": [*base, "separate"]}, **FAST)
    batched = host.txt2img(seed=6, batch_size=2, alwayson={"ASAG": [*base, "batched"]}, **FAST)
    plain = host.txt2img(seed=6, batch_size=2, **FAST)
    for a, b, c in zip(separate.images, batched.images, plain.images, strict=True):
        _assert_float_noise(a, b, effect_of=(a, c))
    assert _no_patch_left(host)


def test_batched_weak_pass_on_sdxl_dict_conds(a1111_host):
    host = a1111_host
    host.set_model("sdxl")
    base = [True, 2.0, "middle", 2, 0.001, 0.0, 1.0, "both", 0.0, "rows"]
    job = {"seed": 6, "steps": 2, "width": 128, "height": 128}
    separate = host.txt2img(alwayson={"ASAG": [*base, "separate"]}, **job)
    batched = host.txt2img(alwayson={"ASAG": [*base, "batched"]}, **job)
    plain = host.txt2img(**job)
    _assert_float_noise(separate.images[0], batched.images[0], effect_of=(separate.images[0], plain.images[0]))


def test_hires_checkpoint_is_not_announced_as_a_refiner_switch(a1111_host, kernel_calls, capsys):
    host = a1111_host
    host.txt2img(seed=1, steps=2, enable_hr=True, hr_scale=2.0, hr_checkpoint="sd2", alwayson={"ASAG": ON}, **{
        "width": 64, "height": 64})
    out = capsys.readouterr().out
    assert "refiner switch" not in out and "hires pass: 16 layers" in out


def test_batched_falls_back_when_unsafe(a1111_host, kernel_calls, capsys):
    host = a1111_host
    host.opts.batch_cond_uncond = False
    try:
        host.txt2img(seed=6, alwayson={"ASAG": [True, 2.0, "all", 2, 0.001, 0.0, 1.0, "both", 0.0, "rows",
                                                "batched"]}, **FAST)
    finally:
        host.opts.batch_cond_uncond = True
    assert kernel_calls
    assert "separate call: 'batch cond/uncond' is off" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# API, infotext, X/Y/Z, UI


def test_api_positional_and_dict_forms_agree(a1111_host):
    host = a1111_host
    payload = {"prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64}
    positional = host.api_txt2img({**payload, "alwayson_scripts": {"ASAG": {"args": [True, 2.0, "all"]}}})
    as_dict = host.api_txt2img({**payload, "alwayson_scripts": {
        "asag": {"args": [{"enabled": "true", "scale": 2, "layers": "all"}]}}})
    assert positional["info_dict"]["infotexts"] == as_dict["info_dict"]["infotexts"]
    assert "ASAG scale: 2" in positional["info_dict"]["infotexts"][0]


def test_api_bad_value_is_reported_in_info_and_nothing_is_applied(a1111_host, kernel_calls):
    host = a1111_host
    res = host.api_txt2img({"prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64,
                            "alwayson_scripts": {"ASAG": {"args": [{"enabled": True, "scale": "lots"}]}}})
    error = res["info_dict"]["extra_generation_params"]["ASAG error"]
    assert "'scale'" in error and "from 0 to 20" in error
    assert kernel_calls == [] and _no_patch_left(host)


def test_api_false_string_disables(a1111_host, kernel_calls):
    host = a1111_host
    host.api_txt2img({"prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64,
                      "alwayson_scripts": {"ASAG": {"args": ["false", 2.0, "all"]}}})
    assert kernel_calls == []


def test_infotext_paste_restores_every_control(a1111_host):
    host = a1111_host
    settings = params.from_mapping({"enabled": True, "scale": 2.5, "layers": "input.1, middle", "iterations": 3,
                                    "tolerance": 0.01, "start": 0.1, "end": 0.8, "hires": "first", "rescale": 0.3,
                                    "plan": "raw", "weak_pass": "separate"})
    quote = host.modules["infotext_utils"].quote  # the host quotes values with commas when it writes them
    infotext = "a cat\nSteps: 3, Seed: 1, " + ", ".join(
        f"{k}: {quote(v)}" for k, v in params.to_infotext(settings).items())
    pasted = host.paste(infotext)
    script = host.script()
    by_name = {c.elem_id: c for c in script.controls} if script.controls else {}
    values = {name.removeprefix(script.elem_id("")).removesuffix("-checkbox"): value for name, value in pasted.items()}
    for param in params.PARAMS:
        if param.infotext is None and param.name != "enabled":
            continue  # telemetry: a diagnostic switch, not part of how the image was made
        assert params.coerce(param, values[param.name]) == getattr(settings, param.name), (param.name, by_name)
    assert host.paste("a cat\nSteps: 3, Seed: 1")[script.elem_id("enabled") + "-checkbox"] is False


def test_paste_field_names_are_infotext_keys(a1111_host):
    script = a1111_host.script()
    assert script.paste_field_names == [params.infotext_key(p) for p in params.PARAMS if p.infotext]


def test_ui_returns_the_schema_order_and_is_side_effect_free(a1111_host):
    host = a1111_host
    script = host.script()
    callbacks_before = {k: len(v) for k, v in host.modules["script_callbacks"].callback_map.items()}
    components = script.ui(False)
    assert [c.elem_id for c in components][1:] == [script.elem_id(p.name) for p in params.PARAMS][1:]
    assert [c.value for c in components] == [p.default for p in params.PARAMS]
    assert {k: len(v) for k, v in host.modules["script_callbacks"].callback_map.items()} == callbacks_before


def test_callbacks_are_registered_once_and_again_after_a_ui_reload(a1111_host):
    host = a1111_host
    callbacks = host.modules["script_callbacks"].callback_map

    def ours(name):
        return [c for c in callbacks[name] if getattr(c.callback, "__module__", "") == "asag_lib.hosts.a1111"]

    assert len(ours("callbacks_cfg_denoiser")) == 1
    host.reload_ui()
    assert len(ours("callbacks_cfg_denoiser")) == 1 and len(ours("callbacks_cfg_after_cfg")) == 1


def _xyz_labels(host):
    return [o.label for o in host.script("X/Y/Z plot").current_axis_options]


def test_xyz_axes_registered_once(a1111_host):
    host = a1111_host
    labels = _xyz_labels(host)
    for param in params.PARAMS:
        assert labels.count(params.XYZ_PREFIX + param.xyz) == 1


def test_xyz_axes_exist_in_api_only_mode():
    from tests.hosts.a1111 import A1111Host, host_environment

    with host_environment():
        host = A1111Host(nowebui=True)
        assert "[ASAG] Scale" in _xyz_labels(host)


def test_xyz_cells_scale_zero_is_identity_and_values_enable(a1111_host):
    host = a1111_host
    grid = host.xyz("[ASAG] Scale", "0, 2", base={"seed": 3, **FAST}, alwayson={"ASAG": [False, 1.5, "all"]})
    cells = grid.cell_results
    with host.without_extension():
        plain = host.txt2img(seed=3, **FAST)
    assert torch.equal(cells[0].images[0], plain.images[0])
    assert not torch.equal(cells[1].images[0], plain.images[0])
    assert "ASAG scale: 2" in cells[1].infotexts[0]


def test_xyz_stale_infotext_does_not_leak_into_the_next_cell(a1111_host):
    host = a1111_host
    grid = host.xyz("[ASAG] Enabled", ["True", "False"], base={"seed": 3, **FAST},
                    alwayson={"ASAG": [False, 1.5, "all"]})
    on, off = grid.cell_results
    assert "ASAG scale" in on.infotexts[0] and "ASAG" not in off.infotexts[0]


def test_xyz_bad_value_is_rejected_before_the_grid(a1111_host, kernel_calls):
    host = a1111_host
    with pytest.raises(ValueError, match=r"'iterations'.*from 1 to 20"):
        host.xyz("[ASAG] Iterations", "2, 50", base={"seed": 3, **FAST})
    assert kernel_calls == []


# ------------------------------------------------------------------------------------------------
# ControlNet and the refiner


@pytest.fixture
def controlnet_calls(a1111_host, monkeypatch):
    """(batch size, cond_mark) of every UNet call the ControlNet hook saw, kept past its restore()."""
    seen = []
    hook_class = a1111_host.controlnet.UnetHook
    real_restore = hook_class.restore

    def restore(self):
        seen.extend(self.calls)
        return real_restore(self)

    monkeypatch.setattr(hook_class, "restore", restore)
    return seen


def test_controlnet_reference_unit_keeps_working_with_a_padded_weak_batch(a1111_host, controlnet_calls, kernel_calls):
    host = a1111_host
    unit = host.controlnet.ControlUnit("reference")
    guided = host.txt2img(seed=2, batch_size=2, controlnet=[unit], alwayson={"ASAG": ON}, **FAST)
    assert "ASAG error" not in guided.infotexts[0] and kernel_calls
    sizes = {size for size, _ in controlnet_calls}
    assert sizes == {4}  # every call, weak ones included, has the main call's batch: 2 cond + 2 uncond
    assert _no_patch_left(host)


def test_controlnet_weak_call_uses_the_marked_cond_rows(a1111_host, controlnet_calls):
    host = a1111_host
    unit = host.controlnet.ControlUnit("plain", cfg_injection=True)
    host.txt2img(seed=2, controlnet=[unit], alwayson={"ASAG": ON}, **FAST)
    main = [marks for _, marks in controlnet_calls if marks == [1.0, 0.0]]
    weak = [marks for _, marks in controlnet_calls if marks == [1.0, 1.0]]
    assert len(main) == FAST["steps"] and len(weak) == FAST["steps"]


def test_refiner_switch_re_resolves_the_layers(a1111_host, kernel_calls, capsys):
    host = a1111_host
    host.set_model("sdxl")
    host.txt2img(seed=1, steps=4, width=128, height=128, refiner_checkpoint="sdxl-refiner", refiner_switch_at=0.5,
                 alwayson={"ASAG": [True, 1.5, "middle"]})
    base = [c for c in kernel_calls if c[2] == 16]     # SDXL middle: ds4 of a 16x16 latent
    refiner = [c for c in kernel_calls if c[2] == 4]   # refiner middle: ds8
    assert len(base) % 10 == 0 and base and len(refiner) % 4 == 0 and refiner
    assert "model changed during sampling (refiner switch): now 4 layer(s)" in capsys.readouterr().out
    assert _no_patch_left(host)
