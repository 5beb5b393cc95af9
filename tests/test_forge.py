"""ASAG on the Forge family, driven through the real scripts/asag.py in the doubles of tests/hosts/forge
(see tests/hosts/forge_host.py for the processing flow that is modelled)."""

from __future__ import annotations

import pytest
import torch

from asag_lib import attention, layers, params
from asag_lib.hosts import forge
from tests.hosts.forge_host import asag_replacement, controlnet_patcher, reference_only_patcher

SIZE = dict(height=64, width=64)  # 8x8 latent: SD1.5 input.1 has 64 tokens (middle only 1)
STEPS = 2  # the driver's default
L = "input.1"  # a layer where Sinkhorn visibly differs from softmax at this size


def _asag_fns(unet):
    return [fn for fn in unet.model_options.get("sampler_post_cfg_function", []) if forge.is_ours(fn)]


def _snapshot(options):
    """Structure of a model_options dict down to the attn1 keys, with object identities."""
    to = options.get("transformer_options", {})
    replace = to.get("patches_replace")
    return (
        sorted(options),
        id(to),
        sorted(map(str, to)),
        id(replace) if replace is not None else None,
        {name: (id(d), sorted(map(str, d))) for name, d in (replace or {}).items()},
        [id(fn) for fn in options.get("sampler_post_cfg_function", [])],
    )


def _keys(spec, engine):
    unet = engine.forge_objects.unet.model.diffusion_model
    return {ref.forge_key for ref, _ in layers.resolve(unet, spec)}


# --------------------------------------------------------------------------------------------------
# off means off


def test_disabled_and_scale_zero_are_bit_identical(forge_host):
    engine = forge_host.make_engine("sd15")
    off = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    zero = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=0.0), **SIZE)
    assert torch.equal(off.samples, zero.samples)
    for result in (off, zero):
        assert not result.weak_calls
        assert all(not _asag_fns(unet) for unet in result.pbes_unets)
    assert not any(params.is_infotext_key(k) for k in off.p.extra_generation_params)
    assert not any(params.is_infotext_key(k) for k in zero.p.extra_generation_params)  # scale 0 is off


def test_enabled_changes_the_result_and_runs_one_weak_call_per_model_call(forge_host):
    engine = forge_host.make_engine("sd15")
    off = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, layers=L), **SIZE)
    assert not torch.equal(off.samples, on.samples)
    assert len(on.main_calls) == len(off.calls) == STEPS
    assert len(on.weak_calls) == STEPS
    assert all(c.uncond_none for c in on.weak_calls)  # cond only
    assert on.p.extra_generation_params["ASAG scale"] == "3"


def test_live_model_options_are_never_mutated(forge_host):
    """Regression test for Forge's built-in PAG bug (set_model_options_patch_replace without .copy())."""
    engine = forge_host.make_engine("sdxl")
    live = engine.forge_objects_after_applying_lora.unet
    before = _snapshot(live.model_options)
    baseline = forge_host.txt2img(engine, forge_host.args(), height=64, width=64)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, layers="middle"), height=64, width=64)
    assert _snapshot(live.model_options) == before
    for call in on.main_calls:
        assert not call.replaced_by(asag_replacement)
        assert "patches_replace" not in call.model_options["transformer_options"]
    patched = on.pbes_unets[-1]
    assert "patches_replace" not in patched.model_options["transformer_options"]
    after = forge_host.txt2img(engine, forge_host.args(), height=64, width=64)
    assert torch.equal(after.samples, baseline.samples)


# --------------------------------------------------------------------------------------------------
# the weak call


def test_explicit_three_tuple_keys_for_every_selected_layer(forge_host):
    engine = forge_host.make_engine("sdxl")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers="middle"), height=64, width=64)
    wanted = {("middle", 0, j) for j in range(10)}
    for call in result.weak_calls:
        attn1 = call.model_options["transformer_options"]["patches_replace"]["attn1"]
        assert set(attn1) == wanted  # all 3-tuples, no ("middle", 0)
        assert all(asag_replacement(fn) for fn in attn1.values())


@pytest.mark.parametrize("spec", ["input.4.1, output.2, middle.3", "d0, u5.0"])
def test_weak_call_runs_sinkhorn_at_exactly_the_selected_layers(forge_host, monkeypatch, spec):
    engine = forge_host.make_engine("sdxl")
    wanted = _keys(spec, engine)
    counter = {"n": 0}
    real = attention.sinkhorn_attention

    def counting(*args, **kwargs):
        counter["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "sinkhorn_attention", counting)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers=spec), height=64, width=64)
    assert result.weak_calls
    for call in result.weak_calls:
        assert call.replaced_by(asag_replacement) == wanted
        assert len(call.attn1) == 70  # every other layer ran its own attention
    assert counter["n"] == len(wanted) * len(result.weak_calls)


def test_reference_only_keys_do_not_shadow_asag_and_main_pass_keeps_them(forge_host):
    engine = forge_host.make_engine("sd15")
    reference = reference_only_patcher()
    spec = "input.1, middle"
    wanted = _keys(spec, engine)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers=spec), patchers=[reference], **SIZE)
    everywhere = {key for key, _ in result.main_calls[0].attn1}
    assert len(everywhere) == 16
    for call in result.main_calls:
        assert call.replaced_by(lambda fn: fn is reference.fn) == everywhere
    assert result.weak_calls
    for call in result.weak_calls:
        assert call.replaced_by(asag_replacement) == wanted
        assert call.replaced_by(lambda fn: fn is reference.fn) == everywhere - wanted
    # the live options still carry reference's keys only
    live = result.pbes_unets[-1].model_options["transformer_options"]["patches_replace"]["attn1"]
    assert all(fn is reference.fn for fn in live.values())


def test_weak_call_receives_the_same_control_objects_as_the_cond_call(forge_host):
    engine = forge_host.make_engine("sd15")
    hint = torch.rand(1, 3, 64, 64)
    control = controlnet_patcher(hint, strength=0.7)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True), patchers=[control], cfg=5.0, **SIZE)
    cnet = control.controlnet
    assert result.weak_calls
    for main, weak in zip(result.main_calls, result.weak_calls, strict=True):
        assert [c.get("control") for c in weak.cond] == [c.get("control") for c in main.cond]
        assert all(c["control"] is cnet for c in weak.cond)
    # the ControlNet ran in every call; in the weak one on the cond rows only
    assert len(cnet.calls) == len(result.calls)
    weak_runs = [c for c in cnet.calls if c["cond_or_uncond"] == [0]]
    assert len(weak_runs) == len(result.weak_calls)
    main_runs = [c for c in cnet.calls if len(c["cond_or_uncond"]) == 2]
    for weak_run, main_run in zip(weak_runs, main_runs, strict=True):
        cond_rows = main_run["c_crossattn"][main_run["cond_or_uncond"].index(0)::2]
        assert torch.equal(weak_run["c_crossattn"], cond_rows)


def test_asag_output_equals_an_independent_computation(forge_host):
    """denoised_cfg + s·(cond − weak), with weak from instance-patched attn1 modules (the A1111 route)."""
    from backend.sampling import sampling_function as sf

    engine = forge_host.make_engine("sd15")
    scale, cfg = 2.5, 4.0
    spec = "input.1, output.11"
    p_result = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=scale, layers=spec), **SIZE)
    patched = p_result.pbes_unets[-1]
    live = engine.forge_objects_after_applying_lora.unet
    model = live.model
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3
    sigma = torch.full((2,), 2.0)
    c = torch.randn(2, 4, 768, generator=g)
    uc = torch.randn(2, 4, 768, generator=g)

    def conds():
        from backend.sampling.condition import compile_conditions, compile_weighted_conditions

        return compile_conditions(uc), compile_weighted_conditions(c, [[(0, 1.0)], [(1, 1.0)]])

    uncond, cond = conds()
    with torch.no_grad():
        got = sf.sampling_function_inner(model, x, sigma, uncond, cond, cfg, patched.model_options)
        uncond, cond = conds()
        cond_pred, uncond_pred = sf.calc_cond_uncond_batch(model, cond, uncond, x, sigma, live.model_options)
        settings = params.Settings(enabled=True, scale=scale, layers=spec)
        modules = [m for _, m in layers.resolve(model.diffusion_model, spec)]
        forward = attention.make_attn1_forward(attention.KernelOptions.from_settings(settings))
        with attention.patched_forwards(modules, forward):
            weak, _ = sf.calc_cond_uncond_batch(model, conds()[1], None, x, sigma, live.model_options)
    expected = uncond_pred + (cond_pred - uncond_pred) * cfg + scale * (cond_pred - weak)
    assert not torch.allclose(weak, cond_pred, atol=1e-4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_weak_pass_runs_at_cfg_one(forge_host):
    engine = forge_host.make_engine("sd15")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True), cfg=1.0, **SIZE)
    assert all(c.uncond_none for c in result.calls)
    assert len(result.weak_calls) == len(result.main_calls) == STEPS


# --------------------------------------------------------------------------------------------------
# life cycle


def test_exception_in_weak_pass_leaves_the_next_job_unaffected(forge_host, monkeypatch):
    engine = forge_host.make_engine("sd15")
    live = engine.forge_objects_after_applying_lora.unet
    before = _snapshot(live.model_options)
    baseline = forge_host.txt2img(engine, forge_host.args(), **SIZE)

    def boom(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    with monkeypatch.context() as m:
        m.setattr(attention, "sinkhorn_attention", boom)
        failed = forge_host.txt2img(engine, forge_host.args(enabled=True, layers=L), **SIZE)
    assert "kernel exploded" in failed.p.extra_generation_params["ASAG error"]
    assert len([c for c in failed.calls if c.uncond_none]) == 1  # tried once, then off for the rest of the job
    assert torch.equal(failed.samples, baseline.samples)
    assert _snapshot(live.model_options) == before
    after = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    assert torch.equal(after.samples, baseline.samples)
    again = forge_host.txt2img(engine, forge_host.args(enabled=True), **SIZE)
    assert len(again.weak_calls) == STEPS and "ASAG error" not in again.p.extra_generation_params


def test_triple_hires_call_is_idempotent(forge_host):
    engine = forge_host.make_engine("sd15")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True), hires=True, **SIZE)
    assert len(result.pbes_unets) == 3
    assert [len(_asag_fns(u)) for u in result.pbes_unets] == [1, 1, 1]
    reserved = [u.extra_preserved_memory_during_sampling for u in result.pbes_unets]
    assert reserved[0] > 0 and reserved[1] == reserved[2] > reserved[0]  # hires size, not base + hires
    base = [c for c in result.calls if c.x_shape[-1] == 8]
    hires = [c for c in result.calls if c.x_shape[-1] == 16]
    assert len([c for c in base if c.weak]) == STEPS and len([c for c in hires if c.weak]) == 2
    assert len(base) + len(hires) == len(result.calls)


@pytest.mark.parametrize(("choice", "base_weak", "hires_weak"), [("both", STEPS, 2), ("first", STEPS, 0), ("hires", 0, 2)])
def test_hires_choice(forge_host, choice, base_weak, hires_weak):
    engine = forge_host.make_engine("sd15")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, hires=choice), hires=True, **SIZE)
    assert len([c for c in result.weak_calls if c.x_shape[-1] == 8]) == base_weak
    assert len([c for c in result.weak_calls if c.x_shape[-1] == 16]) == hires_weak
    if choice == "first":
        # the first hires call saw the base pass's patched UNet: it must hand back one without ASAG
        assert len(_asag_fns(result.pbes_unets[0])) == 1
        assert [len(_asag_fns(u)) for u in result.pbes_unets[1:]] == [0, 0]
        assert result.pbes_unets[1].extra_preserved_memory_during_sampling == 0


@pytest.mark.parametrize("forge_host", ["forge2", "neo", "ldm_patched"], indirect=True)
@pytest.mark.parametrize("prediction", ["flow", "eps"])
def test_window_is_a_fraction_of_the_sampling_steps(forge_host, prediction):
    """Step i of N is guided iff start <= i/N < end: with 6 steps and [0.3, 0.8) that is steps 2, 3, 4
    (2/6 = 0.33, 4/6 = 0.67, 5/6 = 0.83), whatever the sigmas of the schedule are."""
    engine = forge_host.make_engine("sd15", prediction=prediction)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, start=0.3, end=0.8), steps=6, **SIZE)
    main = [c.sigma for c in result.main_calls]
    assert len(main) == 6
    assert [c.sigma for c in result.weak_calls] == [main[2], main[3], main[4]]


@pytest.mark.parametrize("forge_host", ["forge2", "neo"], indirect=True)
def test_both_calls_of_a_heun_step_share_the_decision(forge_host):
    """Heun: step i calls at sigma_i and (correction) at sigma_i+1, the last step only once: 4 steps make
    7 calls. [0.25, 0.75) guides steps 1 and 2, i.e. calls 2-5, although calls 1 and 5 sit at the sigma of
    a step outside the window."""
    engine = forge_host.make_engine("sd15")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, start=0.25, end=0.75), steps=4,
                                sampler="heun", **SIZE)
    main = [c.sigma for c in result.main_calls]
    assert len(main) == 7 and main[1] == main[2] and main[3] == main[4]
    assert [c.sigma for c in result.weak_calls] == main[2:6]


@pytest.mark.parametrize("forge_host", ["forge2", "neo", "ldm_patched"], indirect=True)
def test_hires_window_counts_the_steps_of_the_hires_pass(forge_host):
    """The hires pass runs the last 4 steps of an 8-step schedule (denoising 0.5): its own steps 0-3."""
    engine = forge_host.make_engine("sd15")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, start=0.5), steps=4, hires=True,
                                hr_steps=4, **SIZE)
    base = [c.sigma for c in result.main_calls if c.x_shape[-1] == 8]
    hires = [c.sigma for c in result.main_calls if c.x_shape[-1] == 16]
    assert len(base) == len(hires) == 4
    assert [c.sigma for c in result.weak_calls] == base[2:] + hires[2:]


def test_api_dict_in_slot_zero_wins_over_ui_defaults(forge_host):
    engine = forge_host.make_engine("sd15")
    args = forge_host.api_args({"enabled": True, "scale": 2.0, "layers": "input.1"})
    assert args[1:] == forge_host.ui_defaults()[1:]  # the host filled the other slots with UI defaults
    result = forge_host.txt2img(engine, args, **SIZE)
    extra = result.p.extra_generation_params
    assert extra["ASAG scale"] == "2" and extra["ASAG layers"] == "input.1"
    assert result.weak_calls
    assert all(c.replaced_by(asag_replacement) == {("input", 1, 0)} for c in result.weak_calls)


def test_infotext_is_the_shared_schema(forge_host):
    engine = forge_host.make_engine("sd15")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=1.25, layers="output.3-5"), **SIZE)
    settings = params.Settings(enabled=True, scale=1.25, layers="output.3-5")
    written = {k: v for k, v in result.p.extra_generation_params.items() if params.is_infotext_key(k)}
    assert written == params.to_infotext(settings)
    assert params.from_infotext(written)["scale"] == 1.25


# --------------------------------------------------------------------------------------------------
# what is refused


def test_unsupported_model_gets_a_message_and_no_extra_pass(forge_host, capsys):
    engine = forge_host.make_engine(dit=True)
    off = forge_host.txt2img(engine, forge_host.args(), height=64, width=64)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True), height=64, width=64)
    out = capsys.readouterr().out
    # the doubles' Flux stand-in lacks Flux's block structure, so the DiT router refuses it (hosts/dit.py)
    assert out.count("Flux model's blocks do not have the structure ASAG knows") == 1
    assert "no extra pass" in out
    assert not on.weak_calls and len(on.calls) == len(off.calls)
    assert all(not _asag_fns(u) for u in on.pbes_unets)
    assert torch.equal(on.samples, off.samples)


def test_sd3_flag_is_unsupported_even_with_unet_blocks(forge_host, capsys):
    engine = forge_host.make_engine("sd15")
    engine.is_sd1, engine.is_sd3 = False, True
    result = forge_host.txt2img(engine, forge_host.args(enabled=True), **SIZE)
    assert not result.weak_calls
    assert "ASAG is skipped" in capsys.readouterr().out


def test_layer_spec_missing_on_this_model_is_a_user_error(forge_host, capsys):
    engine = forge_host.make_engine("sdxl")
    baseline = forge_host.txt2img(engine, forge_host.args(), hires=True, height=64, width=64)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers="input.1"), hires=True, height=64,
                                width=64)
    out = capsys.readouterr().out
    assert out.count("'layers'") == 1  # said once per job, not once per pass
    extra = result.p.extra_generation_params
    assert "input.1" in extra["ASAG error"] and "ASAG scale" not in extra
    assert not result.weak_calls and all(not _asag_fns(u) for u in result.pbes_unets)
    assert torch.equal(result.samples, baseline.samples)


# --------------------------------------------------------------------------------------------------
# old Forge / reForge / Classic (ldm_patched)


@pytest.mark.parametrize("forge_host", ["ldm_patched"], indirect=True)
def test_ldm_patched_flavour(forge_host, capsys):
    engine = forge_host.make_engine("sd15", prediction="flow")
    model = engine.forge_objects.unet.model
    assert not hasattr(model, "predictor") and hasattr(model, "model_sampling")
    off = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, start=0.2, layers=L),
                            steps=3, **SIZE)
    assert "ldm_patched backend" in capsys.readouterr().out
    assert on.weak_calls and len(on.weak_calls) < len(on.main_calls)
    assert not torch.equal(on.samples, off.samples)
    assert all(c.replaced_by(asag_replacement) == {("input", 1, 0)} for c in on.weak_calls)


@pytest.mark.parametrize("forge_host", ["reforge", "classic"], indirect=True)
def test_reforge_and_classic_load_and_guide(forge_host, capsys):
    """reForge and Forge Classic (real hosts, issue 10): the script loads (Classic's callback registration
    takes no `name` keyword; ASAG failed to load there before), the variant is named, a job is guided and
    the infotext paste hook is registered once."""
    from modules import script_callbacks

    from asag_lib.hosts import forge_variant

    assert forge_variant() == forge_host.flavour
    pasted = [e for e in script_callbacks.callback_map["callbacks_infotext_pasted"]
              if e.callback is params.fill_pasted_infotext]
    assert len(pasted) == 1
    engine = forge_host.make_engine("sd15")
    off = forge_host.txt2img(engine, forge_host.args(), steps=3, **SIZE)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, layers=L), steps=3, **SIZE)
    assert f"{forge_host.flavour} (ldm_patched backend)" in capsys.readouterr().out
    assert on.weak_calls and not torch.equal(on.samples, off.samples)
    assert on.p.extra_generation_params["ASAG scale"] == "3"


def test_with_attn1_replacements_copies_every_level_it_touches():
    def fn(q, k, v, extra_options, mask=None):
        return q

    shared_patch = object()
    original = {"transformer_options": {"patches": {"attn1_patch": [shared_patch]},
                                        "patches_replace": {"attn1": {("input", 1, 0): "ref"}, "attn2": {}}},
                "sampler_post_cfg_function": []}
    to, replace = original["transformer_options"], original["transformer_options"]["patches_replace"]
    attn1 = replace["attn1"]
    new = forge.with_attn1_replacements(original, fn, [("input", 1, 0), ("middle", 0, 0)])
    assert new is not original and new["transformer_options"] is not to
    assert new["transformer_options"]["patches_replace"] is not replace
    assert new["transformer_options"]["patches_replace"]["attn1"] is not attn1
    assert attn1 == {("input", 1, 0): "ref"} and set(replace) == {"attn1", "attn2"}
    assert new["transformer_options"]["patches"] is to["patches"]  # untouched levels are shared
    assert new["transformer_options"]["patches_replace"]["attn1"] == {("input", 1, 0): fn, ("middle", 0, 0): fn}
    with pytest.raises(ValueError, match="block, id, index"):
        forge.with_attn1_replacements(original, fn, [("middle", 0)])


# --------------------------------------------------------------------------------------------------
# what the job reports


def test_summary_line_and_window_match_the_shared_step_function(forge_host, capsys):
    """Forge gates by the step its sigma maps to; A1111 by `guidance.sampler_step` over its call counter.
    Both must pick the same calls: Heun, 5 steps (9 calls), window [0.2, 0.6)."""
    from asag_lib import guidance

    engine = forge_host.make_engine("sd15")
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, start=0.2, end=0.6, layers=L), steps=5,
                                sampler="heun", **SIZE)
    calls = [c for c in result.calls if not c.recording]
    main = [i for i, c in enumerate(result.main_calls)]
    assert len(main) == 9
    weak_at = {c.sigma for c in result.weak_calls}
    a1111 = [i for i in main if guidance.step_in_window(guidance.sampler_step(i, 9, 5), 5, 0.2, 0.6)]
    assert [result.main_calls[i].sigma for i in a1111] == [c.sigma for c in result.weak_calls]
    assert weak_at and len(calls) == 9 + 4
    out = capsys.readouterr().out
    assert "ASAG: done: 2 of 5 steps guided, 4 weak passes" in out
    assert "outside the start/end window (×3)" in out


def test_refiner_is_said_once_in_console_and_info(forge_host, capsys):
    from types import SimpleNamespace

    engine = forge_host.make_engine("sd15")

    def refiner(p):
        p.refiner_checkpoint_info, p.refiner_switch_at = SimpleNamespace(title="refiner"), 0.5

    result = forge_host.txt2img(engine, forge_host.args(enabled=True), patchers=[refiner], hires=True, **SIZE)
    out = capsys.readouterr().out
    assert out.count("Forge re-runs no script after that switch") == 1
    assert any("refiner" in text for text in result.p.comments)


def test_replacement_unet_is_refused_without_infotext(forge_host, capsys):
    from types import SimpleNamespace

    from modules import sd_unet

    engine = forge_host.make_engine("sd15")
    off = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    sd_unet.current_unet = SimpleNamespace(option=SimpleNamespace(label="[TRT] tiny"))
    try:
        on = forge_host.txt2img(engine, forge_host.args(enabled=True), **SIZE)
    finally:
        sd_unet.current_unet = None
    out = capsys.readouterr().out
    assert out.count("a replacement UNet is active ([TRT] tiny") == 1
    assert not on.weak_calls and torch.equal(on.samples, off.samples)
    assert not any(params.is_infotext_key(k) for k in on.p.extra_generation_params)
    assert "not guided: unsupported model" in out
