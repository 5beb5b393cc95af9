"""Pins the subtle A1111 1.10.1 rules that the host doubles in tests/hosts/webui reproduce.

Each test states the real host rule (modules/sd_samplers_cfg_denoiser.py, script_callbacks.py,
prompt_parser.py, infotext_utils.py, api/api.py, scripts/xyz_grid.py, the ControlNet hook) and checks the
double follows it. The probe extension written by ``_probe`` is a tiny AlwaysVisible script.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

PROBE = textwrap.dedent('''
    import gradio as gr
    from modules import scripts, script_callbacks
    from modules.ui_components import InputAccordion

    LOG = []
    HOOKS = {"denoiser": None, "denoised": None, "after": None}


    class Probe(scripts.Script):
        def title(self):
            return "Probe"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            with InputAccordion(False, label="Probe", elem_id=self.elem_id("enabled")) as enabled:
                scale = gr.Slider(0.0, 5.0, value=1.0, step=0.1, label="Scale", elem_id=self.elem_id("scale"))
                steps = gr.Slider(1, 10, value=2, step=1, label="Iters", elem_id=self.elem_id("iters"))
            self.infotext_fields = [(enabled, "Probe enabled"), (scale, "Probe scale"), (steps, "Probe iters")]
            self.paste_field_names = ["Probe scale"]
            return [enabled, scale, steps]

        def process(self, p, enabled, scale, iters):
            LOG.append(("process", enabled, scale, iters))
            if enabled:
                p.extra_generation_params["Probe scale"] = scale

        def process_before_every_sampling(self, p, enabled, scale, iters, **kwargs):
            LOG.append(("pbes", p.is_hr_pass, sorted(kwargs)))


    def _call(name, params):
        fn = HOOKS[name]
        if fn is not None:
            fn(params)


    script_callbacks.on_cfg_denoiser(lambda params: _call("denoiser", params), name="probe")
    script_callbacks.on_cfg_denoised(lambda params: _call("denoised", params), name="probe")
    script_callbacks.on_cfg_after_cfg(lambda params: _call("after", params), name="probe")
''')


def _probe(tmp_path):
    ext = tmp_path / "sd-webui-probe" / "scripts"
    ext.mkdir(parents=True)
    path = ext / "probe.py"
    path.write_text(PROBE)
    return str(path)


@pytest.fixture
def host(a1111_host_factory, tmp_path):
    h = a1111_host_factory(family="sd15", extension_script=_probe(tmp_path))
    h.probe = next(d.module for d in h.modules["scripts"].scripts_data if d.script_class.__name__ == "Probe")
    return h


def test_loader_names_module_after_basename_and_two_instances(host):
    import sys

    assert host.probe.__name__ == "probe.py"
    assert "probe.py" not in sys.modules and "probe" not in sys.modules
    xyz = next(d for d in host.modules["scripts"].scripts_data if d.script_class.__module__ == "xyz_grid.py")
    assert hasattr(xyz.module, "axis_options")
    t, i = host.script("Probe"), host.script("Probe", is_img2img=True)
    assert t is not i and t.is_txt2img and i.is_img2img
    assert t.args_from > 1  # the built-in Refiner accordion comes first
    assert t.args_to - t.args_from == 3


def test_no_extension_run_is_deterministic(a1111_host_factory):
    h = a1111_host_factory(family="sd15", extension=False)
    a = h.txt2img(prompt="a cat", seed=3, steps=3, batch_size=2)
    b = h.txt2img(prompt="a cat", seed=3, steps=3, batch_size=2)
    assert len(a.images) == 2
    for x, y in zip(a.images, b.images, strict=True):
        assert torch.equal(x, y)


def test_hook_order_and_hires_calls_pbes_twice(host):
    host.probe.LOG.clear()
    host.txt2img(alwayson={"Probe": [True, 2.0, 3]}, enable_hr=True, steps=2)
    assert host.probe.LOG[0] == ("process", True, 2.0, 3)
    assert host.probe.LOG[1] == ("pbes", False, ["c", "noise", "uc", "x"])
    assert host.probe.LOG[2] == ("pbes", True, ["c", "noise", "uc", "x"])


def test_reassigning_params_x_in_cfg_denoised_is_ignored_but_inplace_counts(host):
    base = host.txt2img(seed=1, steps=3).images[0]

    def reassign(params):
        params.x = params.x * 0 + 100.0

    host.probe.HOOKS["denoised"] = reassign
    same = host.txt2img(seed=1, steps=3).images[0]
    assert torch.equal(base, same)

    def inplace(params):
        params.x.mul_(0.5)

    host.probe.HOOKS["denoised"] = inplace
    changed = host.txt2img(seed=1, steps=3).images[0]
    assert not torch.equal(base, changed)


def test_after_cfg_reassignment_is_read_back(host):
    base = host.txt2img(seed=1, steps=3).images[0]
    host.probe.HOOKS["after"] = lambda params: setattr(params, "x", params.x * 0.5)
    assert not torch.equal(base, host.txt2img(seed=1, steps=3).images[0])


def test_row_layout_and_and_prompt_weights(host):
    seen = {}

    def grab(params):
        from modules import prompt_parser

        d = params.denoiser
        conds_list, _tensor = prompt_parser.reconstruct_multicond_batch(d.sampler.sampler_extra_args["cond"], d.step)
        seen.update(x=params.x.shape[0], cond=params.text_cond.shape[0], uncond=params.text_uncond.shape[0],
                    conds_list=conds_list)

    host.probe.HOOKS["denoiser"] = grab
    host.txt2img(prompt=["a cat AND a hat:0.5", "a dog"], negative_prompt="", batch_size=2, steps=2)
    assert seen["conds_list"] == [[(0, 1.0), (1, 0.5)], [(2, 1.0)]]
    assert seen["cond"] == 3 and seen["uncond"] == 2 and seen["x"] == 5


def test_combine_denoised_uses_last_b_rows_as_uncond(a1111_env):
    from modules import sd_samplers_cfg_denoiser

    d = sd_samplers_cfg_denoiser.CFGDenoiser(sampler=None)
    # rows: image0 cond a, image0 cond b (weight 0.5), image1 cond, EXTRA row, uncond0, uncond1
    x_out = torch.tensor([1.0, 2.0, 3.0, 99.0, 10.0, 20.0]).reshape(6, 1)
    conds_list = [[(0, 1.0), (1, 0.5)], [(2, 1.0)]]
    out = d.combine_denoised(x_out, conds_list, torch.zeros(2, 1), 2.0)
    assert out[0].item() == 10 + (1 - 10) * 2 + (2 - 10) * 0.5 * 2
    assert out[1].item() == 20 + (3 - 20) * 2


def test_callback_exceptions_are_reported_not_raised(host):
    def boom(params):
        raise ValueError("probe failure")

    host.probe.HOOKS["denoiser"] = boom
    n = len(host.errors)
    res = host.txt2img(steps=2)
    assert res.images
    assert len(host.errors) - n == 2  # once per denoiser call
    assert isinstance(host.errors[-1][1], ValueError)


def test_interrupted_exception_is_base_exception_and_stops_sampling(host):
    from modules import sd_samplers_common

    assert issubclass(sd_samplers_common.InterruptedException, BaseException)
    assert not issubclass(sd_samplers_common.InterruptedException, Exception)
    calls = []

    def interrupt(params):
        calls.append(1)
        host.state.interrupted = True

    host.probe.HOOKS["denoiser"] = interrupt
    res = host.txt2img(steps=4)
    assert len(calls) == 1 and res.images  # launch_sampling returned last_latent, postprocess still ran


def test_size_like_values_are_split_on_paste(a1111_env):
    from modules import infotext_utils

    params = infotext_utils.parse_generation_parameters("p\nSteps: 4, Size: 64x64, Probe tile: 64x32, Probe scale: 2.5")
    assert params["Size-1"] == "64" and params["Size-2"] == "64"
    assert params["Probe tile-1"] == "64" and "Probe tile" not in params
    assert params["Probe scale"] == "2.5"


def test_ui_paste_converts_with_component_type(host):
    got = host.paste("p\nSteps: 4, Probe enabled: False, Probe scale: 2.5, Probe iters: 3", title="Probe")
    assert got["script_txt2img_probe_enabled-checkbox"] is False
    assert got["script_txt2img_probe_scale"] == 2.5
    assert got["script_txt2img_probe_iters"] == 3.0  # int component -> float(v)


def test_api_infotext_casts_bool_false_to_true(host):
    host.probe.LOG.clear()
    host.api_txt2img({"prompt": "x", "steps": 2, "width": 64, "height": 64,
                      "infotext": "x\nSteps: 2, Probe enabled: False, Probe scale: 2.5, Probe iters: 3"})
    assert host.probe.LOG[0] == ("process", True, 2.5, 2.0) or host.probe.LOG[0][1] is True


def test_api_alwayson_args_are_positional_and_unconverted(host):
    host.probe.LOG.clear()
    res = host.api_txt2img({"prompt": "x", "steps": 2, "width": 64, "height": 64,
                            "alwayson_scripts": {"PROBE": {"args": ["yes", 3]}}})
    assert host.probe.LOG[0] == ("process", "yes", 3, 2)  # too few args -> UI default for the rest
    assert res["info_dict"]["extra_generation_params"]["Probe scale"] == 3
    with pytest.raises(Exception, match="422"):
        host.api_txt2img({"prompt": "x", "steps": 2, "alwayson_scripts": {"nope": {"args": []}}})


def test_xyz_cells_share_extra_generation_params(host):
    xyz = next(d.module for d in host.modules["scripts"].scripts_data if d.script_class.__module__ == "xyz_grid.py")

    def apply(p, x, xs):
        p.probe_on = x

    seen = []

    def record(params):
        p = params.denoiser.p
        if getattr(p, "probe_on", False):
            p.extra_generation_params["Probe cell"] = "on"
        seen.append(id(p.extra_generation_params))

    xyz.axis_options.append(xyz.AxisOption("[Probe] On", int, apply))
    host.reload_ui_axes = None
    host.probe.HOOKS["denoiser"] = record
    # the axis list is read when ui() runs: rebuild the UI like a restart would
    host._create_ui()
    res = host.xyz("[Probe] On", [1, 0], base={"steps": 1})
    assert len(res.cell_results) == 2
    assert "Probe cell: on" in res.cell_results[1].infotexts[0]  # stale key from cell 1 leaks into cell 2
    assert len(set(seen)) == 1


def test_controlnet_marks_conds_and_reference_cache_needs_same_batch(host):
    cn = host.controlnet
    shapes = []
    host.probe.HOOKS["denoiser"] = lambda params: shapes.append(tuple(params.text_cond.shape))
    plain = cn.ControlUnit("plain", cfg_injection=True)
    res = host.txt2img(steps=2, controlnet=[plain])
    assert shapes[0] == (1, 78, 768)  # one marker token row more
    hook = res.p.controlnet_hook if hasattr(res.p, "controlnet_hook") else None
    assert hook is None  # restored in postprocess
    assert "forward" not in host.unet.__dict__

    ref = cn.ControlUnit("reference")
    calls = []
    last = {}

    def keep(params):
        last["p"] = params  # CFGDenoisedParams has no sigma/text_cond: keep the denoiser params

    def extra_call(params):
        # an extension's extra UNet call on the cond rows only (batch 1 instead of the first call's 2)
        if not calls:
            calls.append(1)
            d = last["p"]
            params.inner_model(d.x[:1], d.sigma[:1], cond={"c_crossattn": [d.text_cond[:1]],
                                                           "c_concat": [d.image_cond[:1]]})

    host.probe.HOOKS["denoised"] = None
    host.probe.HOOKS["denoiser"] = None
    res = host.txt2img(steps=2, controlnet=[ref])
    assert ref.write_passes == 2 and ref.used_hint_cond_latent.shape[0] == 2
    ref2 = cn.ControlUnit("reference")
    host.probe.HOOKS["denoiser"] = keep
    host.probe.HOOKS["denoised"] = extra_call
    n = len(host.errors)
    host.txt2img(steps=2, controlnet=[ref2])
    assert calls and isinstance(host.errors[n][1], RuntimeError)  # reported by the callback caller
    assert "Sizes of tensors must match" in str(host.errors[n][1])
