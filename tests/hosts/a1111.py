"""Driver for the A1111 1.10.1 test doubles in ``tests/hosts/webui`` (no WebUI, CPU only).

The fixture ``a1111_host`` (exposed through tests/conftest.py) saves ``sys.path``/``sys.modules``,
puts ``tests/hosts/webui`` first on ``sys.path``, purges any ``modules*``, ``gradio*`` and ``scripts*``
modules, builds ``shared.sd_model`` around a small real UNet from tests/unets.py, loads the extension's
``scripts/asag.py`` with the host's loader (module named ``"asag.py"``; module-level registrations run
once), builds both tabs' UIs (two Script instances, ``args_from``/``args_to`` assigned; the built-in
Refiner accordion and the X/Y/Z plot script are present, so the extension's arguments do not start at
index 1), starts the API double, and restores everything afterwards.

Example::

    def test_something(a1111_host):
        host = a1111_host                       # sd15 by default; host.set_model("sdxl")
        res = host.txt2img(prompt="a cat", seed=1, steps=4, alwayson={"ASAG": [True, 2.0]})
        latents = res.images                     # list of [4, h, w] latents (no VAE in the double)
        ref = host.txt2img(prompt="a cat", seed=1, steps=4)   # identical job without ASAG args
        with host.without_extension():
            plain = host.txt2img(prompt="a cat", seed=1, steps=4)  # extension scripts/callbacks removed

API summary (all keyword arguments):

* ``txt2img(prompt, negative_prompt, seed, steps, cfg_scale, width, height, batch_size, n_iter, sampler,
  enable_hr, hr_scale, hr_second_pass_steps, hr_sampler, hr_checkpoint, denoising_strength,
  refiner_checkpoint, refiner_switch_at, script_args, alwayson, controlnet, firstpass_image, **p_fields)``
  -> ``Processed``. ``alwayson`` maps a script title (case-insensitive) to its positional args (list),
  overlaid on the UI defaults; ``script_args`` replaces the whole flat list. ``p_fields`` are set on
  the processing object before the job (e.g. ``s_min_uncond=...``).
* ``img2img(..., init_latent=None, init_images=None, mask=None, denoising_strength=0.75,
  inpainting_fill=1, image_cfg_scale=None)`` -> ``Processed``.
* ``api_txt2img(payload)`` / ``api_img2img(payload)``: through the API double; returns the response
  dict (``info`` is the JSON string) plus ``info_dict`` (parsed), ``p`` and ``processed``.
* ``xyz(axis_label, values, base=None, y_label=None, y_values=None, is_img2img=False)`` -> ``Processed``
  of the X/Y/Z double with ``cell_results``.
* ``paste(infotext, tab="txt2img")`` -> ``{elem_id or label: value}`` for each of the extension's
  components the paste button would change; ``paste_updates`` gives the raw update dicts.
* ``controlnet=[ControlUnit(...)]`` on a job turns the ControlNet double on for that job
  (``host.controlnet`` is the ``controlnet_double`` module: ``ControlUnit(kind="plain"|"reference",
  weight, hint, cfg_injection)``; the job's hook is ``processed.p.controlnet_hook`` until postprocess).
* ``set_model(family)``; checkpoints "sd15", "sd2", "sdxl", "sdxl-refiner" are registered.
* ``without_extension()``: context manager removing the extension's Script instances and callbacks.
* ``reload_ui()``: the UI-reload path (``script_unloaded`` callbacks, then ``load_scripts`` again).
* ``opts``, ``state``, ``shared``, ``modules`` (dict of host modules), ``errors`` (reported errors).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WEBUI_ROOT = os.path.join(HERE, "webui")
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
EXTENSION_SCRIPT = os.path.join(REPO_ROOT, "scripts", "asag.py")
FAMILIES = ("sd15", "sd2", "sdxl", "sdxl-refiner")

_PURGE_PREFIXES = ("modules", "gradio", "scripts", "controlnet_double")


def _purge_host_modules():
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in _PURGE_PREFIXES):
            del sys.modules[name]


def _ui_value(component):
    """The value gradio hands to Python for a component at its default (``type="index"`` dropdowns and
    radios send the index of the chosen label)."""
    value = component.value
    if getattr(component, "type", None) == "index" and isinstance(value, str):
        choices = [c[0] if isinstance(c, tuple) else c for c in component.choices]
        return choices.index(value) if value in choices else None
    return value


class A1111Host:
    NO_CHANGE = object()

    def __init__(self, *, family="sd15", extension=True, extension_script=EXTENSION_SCRIPT, nowebui=False,
                 model_channels=32, extra_scripts=()):
        from tests import unets

        self.family = family
        self.extension_script = extension_script if extension else None
        self.extra_scripts = list(extra_scripts)
        self.nowebui = nowebui

        mod = {name: importlib.import_module(f"modules.{name}") for name in (
            "shared", "scripts", "script_callbacks", "script_loading", "processing", "sd_models", "sd_samplers",
            "prompt_parser", "infotext_utils", "errors", "sd_samplers_common", "sd_samplers_cfg_denoiser",
            "ui_components", "sd_unet")}
        mod["api"] = importlib.import_module("modules.api.api")
        mod["api_models"] = importlib.import_module("modules.api.models")
        self.modules = mod
        self.shared = mod["shared"]
        self.opts = self.shared.opts
        self.state = self.shared.state
        self.errors = mod["errors"].reported

        sd_models = mod["sd_models"]
        sd_models.build_unet = unets.build_unet
        for fam in FAMILIES:
            sd_models.register_checkpoint(fam, fam, seed=0, model_channels=model_channels)
        self.set_model(family)
        self._build()
        self.controlnet = importlib.import_module("controlnet_double")

    # -- start-up -----------------------------------------------------------------------------------
    def _extension_files(self):
        scripts = self.modules["scripts"]
        files = []
        if self.extension_script is not None:
            files.append(scripts.ScriptFile(os.path.dirname(os.path.dirname(self.extension_script)),
                                            os.path.basename(self.extension_script), self.extension_script))
        cn = os.path.join(WEBUI_ROOT, "extensions", "sd-webui-controlnet", "scripts", "controlnet.py")
        files.append(scripts.ScriptFile(os.path.dirname(os.path.dirname(cn)), os.path.basename(cn), cn))
        for path in self.extra_scripts:
            files.append(scripts.ScriptFile(os.path.dirname(os.path.dirname(path)), os.path.basename(path), path))
        return files

    def _build(self):
        scripts = self.modules["scripts"]
        script_callbacks = self.modules["script_callbacks"]
        scripts.load_scripts(self._extension_files())
        if self.nowebui:
            self._create_ui()
            self.api = self.modules["api"].Api()
            script_callbacks.before_ui_callback()
        else:
            script_callbacks.before_ui_callback()
            self._create_ui()
            self.api = self.modules["api"].Api()
        self.txt2img_runner = scripts.scripts_txt2img
        self.img2img_runner = scripts.scripts_img2img

    def _create_ui(self):
        import gradio as gr

        scripts = self.modules["scripts"]
        infotext_utils = self.modules["infotext_utils"]
        infotext_utils.reset()
        for tab, runner, is_img2img in (("txt2img", scripts.scripts_txt2img, False),
                                        ("img2img", scripts.scripts_img2img, True)):
            scripts.scripts_current = runner
            runner.initialize_scripts(is_img2img=is_img2img)
            runner.prepare_ui()
            with gr.Blocks():
                prompt = gr.Textbox(label="Prompt")
                negative_prompt = gr.Textbox(label="Negative prompt")
                steps = gr.Slider(minimum=1, maximum=150, step=1, value=20, label="Sampling steps")
                cfg_scale = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, value=7.0, label="CFG Scale")
                width = gr.Slider(minimum=64, maximum=2048, step=8, value=512, label="Width")
                height = gr.Slider(minimum=64, maximum=2048, step=8, value=512, label="Height")
                seed = gr.Number(value=-1, label="Seed")
                runner.setup_ui_for_section("accordions")
                runner.setup_ui()
            PF = infotext_utils.PasteField
            fields = [
                PF(prompt, "Prompt", api="prompt"), PF(negative_prompt, "Negative prompt", api="negative_prompt"),
                PF(steps, "Steps", api="steps"), PF(cfg_scale, "CFG scale", api="cfg_scale"),
                PF(width, "Size-1", api="width"), PF(height, "Size-2", api="height"), PF(seed, "Seed", api="seed"),
                *runner.infotext_fields,
            ]
            infotext_utils.add_paste_fields(tab, None, fields)
        scripts.scripts_current = None

    def reload_ui(self):
        """Like the UI "Reload" button: ``script_unloaded`` callbacks, then every script re-imported."""
        self.modules["script_callbacks"].script_unloaded_callback()
        self._build()

    # -- model --------------------------------------------------------------------------------------
    def set_model(self, family):
        self.family = family
        self.opts.sd_model_checkpoint = family
        self.modules["sd_models"].reload_model_weights()
        return self.shared.sd_model

    @property
    def sd_model(self):
        return self.shared.sd_model

    @property
    def unet(self):
        return self.shared.sd_model.model.diffusion_model

    # -- scripts ------------------------------------------------------------------------------------
    def runner(self, is_img2img=False):
        return self.img2img_runner if is_img2img else self.txt2img_runner

    def script(self, title="ASAG", is_img2img=False):
        return self.runner(is_img2img).script(title)

    def default_args(self, is_img2img=False):
        """The flat ``script_args`` a UI job would send with every control at its default value."""
        runner = self.runner(is_img2img)
        return [0] + [_ui_value(c) for c in runner.inputs[1:]]

    def build_args(self, *, is_img2img=False, script_args=None, alwayson=None):
        if script_args is not None:
            return list(script_args)
        args = self.default_args(is_img2img)
        for title, values in (alwayson or {}).items():
            script = self.script(title, is_img2img)
            if script is None:
                raise KeyError(f"no script titled {title!r}")
            if isinstance(values, dict):
                values = values.get("args", [])
            n = min(len(values), script.args_to - script.args_from)
            args[script.args_from:script.args_from + n] = list(values)[:n]
        return args

    # -- jobs ---------------------------------------------------------------------------------------
    def _run(self, p, runner, args):
        self.state.begin(job="scripts_txt2img")
        try:
            p.scripts = runner
            p.script_args = tuple(args)
            processed = runner.run(p, *p.script_args)
            if processed is None:
                processed = self.modules["processing"].process_images(p)
        finally:
            self.state.end()
            p.close()
        processed.p = p
        return processed

    def _common(self, prompt, negative_prompt, seed, steps, cfg_scale, width, height, batch_size, n_iter, sampler):
        return dict(prompt=prompt, negative_prompt=negative_prompt, seed=seed, subseed=seed, steps=steps,
                    cfg_scale=cfg_scale, width=width, height=height, batch_size=batch_size, n_iter=n_iter,
                    sampler_name=sampler, do_not_save_samples=True, do_not_save_grid=True)

    def _refiner_args(self, alwayson, refiner_checkpoint, refiner_switch_at, is_img2img):
        if refiner_checkpoint is None:
            return alwayson
        alwayson = dict(alwayson or {})
        alwayson["Refiner"] = [True, refiner_checkpoint, 0.8 if refiner_switch_at is None else refiner_switch_at]
        return alwayson

    def txt2img(self, *, prompt="a photo of a cat", negative_prompt="", seed=0, steps=4, cfg_scale=5.0, width=64,
                height=64, batch_size=1, n_iter=1, sampler="Euler", enable_hr=False, hr_scale=2.0,
                hr_second_pass_steps=0, hr_sampler=None, hr_checkpoint=None, denoising_strength=0.5,
                refiner_checkpoint=None, refiner_switch_at=None, script_args=None, alwayson=None, controlnet=None,
                firstpass_image=None, **p_fields):
        processing = self.modules["processing"]
        alwayson = self._refiner_args(alwayson, refiner_checkpoint, refiner_switch_at, False)
        args = self.build_args(is_img2img=False, script_args=script_args, alwayson=alwayson)
        p = processing.StableDiffusionProcessingTxt2Img(
            **self._common(prompt, negative_prompt, seed, steps, cfg_scale, width, height, batch_size, n_iter, sampler),
            enable_hr=enable_hr, hr_scale=hr_scale, hr_second_pass_steps=hr_second_pass_steps,
            hr_sampler_name=hr_sampler, hr_checkpoint_name=hr_checkpoint, denoising_strength=denoising_strength,
            firstpass_image=firstpass_image)
        for k, v in p_fields.items():
            setattr(p, k, v)
        if controlnet is not None:
            p.controlnet_units = list(controlnet)
        return self._run(p, self.txt2img_runner, args)

    def img2img(self, *, prompt="a photo of a cat", negative_prompt="", seed=0, steps=4, cfg_scale=5.0, width=64,
                height=64, batch_size=1, n_iter=1, sampler="Euler", init_latent=None, init_images=None, mask=None,
                denoising_strength=0.75, inpainting_fill=1, image_cfg_scale=None, refiner_checkpoint=None,
                refiner_switch_at=None, script_args=None, alwayson=None, controlnet=None, **p_fields):
        import torch

        processing = self.modules["processing"]
        if init_latent is None and init_images is None:
            g = torch.Generator().manual_seed(12345)
            init_latent = torch.randn(1, 4, height // 8, width // 8, generator=g)
        alwayson = self._refiner_args(alwayson, refiner_checkpoint, refiner_switch_at, True)
        args = self.build_args(is_img2img=True, script_args=script_args, alwayson=alwayson)
        p = processing.StableDiffusionProcessingImg2Img(
            **self._common(prompt, negative_prompt, seed, steps, cfg_scale, width, height, batch_size, n_iter, sampler),
            init_images=init_images, init_latent=init_latent, mask=mask, denoising_strength=denoising_strength,
            inpainting_fill=inpainting_fill, image_cfg_scale=image_cfg_scale)
        for k, v in p_fields.items():
            setattr(p, k, v)
        if controlnet is not None:
            p.controlnet_units = list(controlnet)
        return self._run(p, self.img2img_runner, args)

    def api_txt2img(self, payload: dict):
        models = self.modules["api_models"]
        res = self.api.text2imgapi(models.StableDiffusionTxt2ImgProcessingAPI(**payload))
        res["info_dict"] = json.loads(res["info"])
        return res

    def api_img2img(self, payload: dict):
        models = self.modules["api_models"]
        res = self.api.img2imgapi(models.StableDiffusionImg2ImgProcessingAPI(**payload))
        res["info_dict"] = json.loads(res["info"])
        return res

    def xyz(self, axis_label, values, base=None, y_label=None, y_values=None, is_img2img=False, alwayson=None):
        runner = self.runner(is_img2img)
        xyz_script = runner.script("X/Y/Z plot")
        args = self.build_args(is_img2img=is_img2img, alwayson=alwayson)
        args[0] = runner.selectable_scripts.index(xyz_script) + 1
        labels = [o.label for o in xyz_script.current_axis_options]

        def put(offset, label, vals):
            opt = xyz_script.current_axis_options[labels.index(label)]
            args[xyz_script.args_from + offset] = labels.index(label)
            if opt.choices is not None:
                args[xyz_script.args_from + offset + 2] = [str(v) for v in vals]
            else:
                args[xyz_script.args_from + offset + 1] = vals if isinstance(vals, str) else ", ".join(map(str, vals))

        put(0, axis_label, values)
        if y_label is not None:
            put(3, y_label, y_values)
        call = self.img2img if is_img2img else self.txt2img
        return call(script_args=args, **(base or {}))

    # -- infotext paste -----------------------------------------------------------------------------
    def paste_updates(self, infotext, tab="txt2img", title="ASAG"):
        infotext_utils = self.modules["infotext_utils"]
        script = self.script(title, tab == "img2img")
        controls = list(script.controls or []) if script is not None else []
        fields = [f for f in infotext_utils.paste_fields[tab]["fields"] if any(f[0] is c for c in controls)]
        updates = infotext_utils.paste_values(fields, infotext)
        return [(f[0], u) for f, u in zip(fields, updates, strict=True)]

    def paste(self, infotext, tab="txt2img", title="ASAG"):
        out = {}
        for component, update in self.paste_updates(infotext, tab, title):
            if "value" in update:
                out[component.elem_id or component.label] = update["value"]
        return out

    # -- comparisons --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def without_extension(self):
        """Temporarily remove the extension's Script instances (both tabs) and every callback registered
        from its files, so the identical job runs as if the extension were not installed."""
        script_callbacks = self.modules["script_callbacks"]
        files = {os.path.abspath(f.path) for f in self._extension_files() if f.path == self.extension_script}
        saved_runners = []
        for runner in (self.txt2img_runner, self.img2img_runner):
            saved_runners.append((runner, list(runner.scripts), list(runner.alwayson_scripts)))
            runner.scripts[:] = [s for s in runner.scripts if os.path.abspath(s.filename) not in files]
            runner.alwayson_scripts[:] = [s for s in runner.alwayson_scripts if os.path.abspath(s.filename) not in files]
            runner.callback_map.clear()
        saved_callbacks = {k: list(v) for k, v in script_callbacks.callback_map.items()}
        for lst in script_callbacks.callback_map.values():
            lst[:] = [c for c in lst if os.path.abspath(c.script) not in files]
        script_callbacks.ordered_callbacks_map.clear()
        try:
            yield self
        finally:
            for runner, scripts_list, alwayson in saved_runners:
                runner.scripts[:] = scripts_list
                runner.alwayson_scripts[:] = alwayson
                runner.callback_map.clear()
            for k, v in saved_callbacks.items():
                script_callbacks.callback_map[k][:] = v
            script_callbacks.ordered_callbacks_map.clear()


@contextlib.contextmanager
def host_environment():
    """sys.path / sys.modules isolation for one host (used by the fixtures)."""
    saved_path = list(sys.path)
    saved_modules = dict(sys.modules)
    _purge_host_modules()
    sys.path.insert(0, WEBUI_ROOT)
    if REPO_ROOT not in sys.path:
        sys.path.insert(1, REPO_ROOT)
    try:
        yield
    finally:
        _purge_host_modules()
        sys.path[:] = saved_path
        for name, module in saved_modules.items():
            sys.modules.setdefault(name, module)


@pytest.fixture
def a1111_env():
    """Only the isolated import environment (``import modules.x`` resolves to the doubles)."""
    with host_environment():
        yield


@pytest.fixture
def a1111_host(request):
    """An ``A1111Host`` with the extension loaded (if scripts/asag.py exists), sd15 by default.

    Parametrise indirectly with a dict to change the defaults, e.g.
    ``@pytest.mark.parametrize("a1111_host", [{"family": "sdxl"}], indirect=True)``.
    """
    kwargs = dict(getattr(request, "param", None) or {})
    if "extension" not in kwargs:
        kwargs["extension"] = os.path.exists(kwargs.get("extension_script", EXTENSION_SCRIPT))
    with host_environment():
        host = A1111Host(**kwargs)
        try:
            yield host
        finally:
            host.state.reset()


@pytest.fixture
def a1111_host_factory():
    """Build hosts with custom options: ``host = a1111_host_factory(family="sdxl", extension=False)``.
    Only one host is live at a time (building a new one replaces the doubles' modules)."""
    with host_environment():
        def make(**kwargs):
            _purge_host_modules()
            return A1111Host(**kwargs)

        yield make
