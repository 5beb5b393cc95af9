"""Driver for the Forge-family doubles: loads the real ``scripts/asag.py`` into a Forge2 (or ``ldm_patched``)
host made of tests/hosts/forge + the shared A1111 doubles in tests/hosts/webui, and runs generations the
way Forge2's ``modules/processing.py`` does:

* ``process`` once per job (the script parses args, writes infotext, attaches the job);
* before EVERY sampling: ``forge_objects = forge_objects_after_applying_lora.shallow_copy()``, then every
  script's ``process_before_every_sampling(p, *args, x=, noise=, c=, uc=)``;
* hires: ``is_hr_pass = True``, ``before_hr``, a first ``process_before_every_sampling`` WITHOUT a reset
  (it still sees the base pass's patched UNet), then the reset, then a second call: three calls per hires
  job, as observed on Forge main;
* sampling: Euler over the model's sigmas with a ``CFGDenoiser`` that calls ``sampling_function``
  (Forge2) or attaches control and calls ``ldm_patched.modules.samplers.sampling_function`` (old Forge's
  ``forge_sample``);
* ``postprocess_batch`` after sampling (before the infotext is made), ``postprocess`` at the end.

Other extensions are modelled as "patchers" run in the same hook before ASAG: a ControlNet unit
(``apply_controlnet_advanced``) and reference-only (``set_model_replace_all`` on attn1).

Every ``calc_cond_uncond_batch`` call is recorded (``host.calls``): its model_options, conds, whether
uncond was None, and which attn1 replacement ran at each layer.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from asag_lib import params
from tests.unets import build_unet

HOSTS = Path(__file__).resolve().parent
FORGE_ROOT = HOSTS / "forge"
WEBUI_ROOT = HOSTS / "webui"
REPO = HOSTS.parent.parent
SCRIPT = REPO / "scripts" / "asag.py"
_PREFIXES = ("modules", "backend", "modules_forge", "ldm_patched", "gradio")


LDM_PATCHED = {"ldm_patched": None, "reforge": "1.0.0v2-v1.10.1RC", "classic": "classic"}
"""The `ldm_patched` flavours and the `modules_forge.forge_version.version` each sets (hosts.md §10): old Forge
keeps the double's default; reForge and Forge Classic report their own."""


def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _PREFIXES)


def _classic_script_callbacks() -> None:
    """Forge Classic's `modules/script_callbacks.py` registers with `on_<category>(callback)`: its
    registration functions take no `name` keyword (A1111 1.10, Forge main, Neo and reForge do)."""
    from modules import script_callbacks

    def positional_only(register):
        def on_category(callback):
            return register(callback)

        on_category.__name__ = register.__name__
        return on_category

    for attr in [a for a in vars(script_callbacks) if a.startswith("on_")]:
        setattr(script_callbacks, attr, positional_only(getattr(script_callbacks, attr)))


@contextlib.contextmanager
def forge_environment(flavour: str = "forge2"):
    """sys.path = [forge doubles, webui doubles, …]; host modules purged before and restored after."""
    saved_path = list(sys.path)
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for name in saved:
        del sys.modules[name]
    sys.path[:0] = [str(FORGE_ROOT), str(WEBUI_ROOT)]
    try:
        if flavour in LDM_PATCHED:
            import ldm_patched.modules.samplers  # noqa: F401  (binds the shared body first)
            from modules_forge import forge_version

            # old Forge / reForge / Classic have no backend.sampling: the adapter must fall through
            sys.modules["backend.sampling.sampling_function"] = None
            if LDM_PATCHED[flavour] is not None:
                forge_version.version = LDM_PATCHED[flavour]
            if flavour == "classic":
                _classic_script_callbacks()
        elif flavour == "neo":
            from modules_forge import forge_version

            forge_version.version = "neo"  # the doubles read it where Neo differs from Forge main
        elif flavour != "forge2":
            raise ValueError(flavour)
        yield
    finally:
        sys.path[:] = saved_path
        for name in [k for k in sys.modules if _ours(k)]:
            del sys.modules[name]
        sys.modules.update(saved)


def asag_replacement(fn: Any) -> bool:
    return getattr(fn, "__name__", "") == "asag_attn1_replace"


@dataclass
class Call:
    """One ``calc_cond_uncond_batch`` call."""

    model_options: dict
    cond: list
    uncond_none: bool
    attn1: list = field(default_factory=list)
    """(3-tuple key, replacement fn or None) per attn1 evaluation."""
    x_shape: tuple = ()
    sigma: float = 0.0
    recording: bool = False
    """Made inside a reference preprocessor's recording call."""

    @property
    def weak(self) -> bool:
        return any(asag_replacement(fn) for _, fn in self.attn1)

    def replaced_by(self, predicate) -> set:
        return {key for key, fn in self.attn1 if fn is not None and predicate(fn)}


@dataclass
class Result:
    samples: torch.Tensor
    p: Any
    calls: list[Call]
    pbes_unets: list = field(default_factory=list)
    """The UnetPatcher handed back after each process_before_every_sampling round, in order."""

    @property
    def weak_calls(self) -> list[Call]:
        return [c for c in self.calls if c.weak]

    @property
    def main_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.weak and not c.recording]

    @property
    def recording_calls(self) -> list[Call]:
        return [c for c in self.calls if c.recording]


class Processing:
    """The fields of Forge2's ``StableDiffusionProcessingTxt2Img`` that this flow and the script use."""

    def __init__(self, sd_model, script_args, scripts, *, batch_size, steps, cfg_scale, seed, width, height,
                 enable_hr, hr_scale):
        self.sd_model = sd_model
        self.script_args = list(script_args)
        self.scripts = scripts
        self.batch_size = batch_size
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.hr_cfg = cfg_scale
        self.seeds = [seed]
        self.width, self.height = width, height
        self.enable_hr = enable_hr
        self.hr_upscale_to_x, self.hr_upscale_to_y = int(width * hr_scale), int(height * hr_scale)
        self.hr_second_pass_steps = 0
        self.denoising_strength = 0.5
        self.refiner_checkpoint_info, self.refiner_switch_at = None, None
        self.sampler = None
        self.is_hr_pass = False
        self.extra_generation_params: dict = {}
        self.comments: dict = {}
        self.modified_noise = None

    def comment(self, text):
        self.comments[text] = 1


class ForgeHost:
    """One Forge-family host with the ASAG script loaded through the shared ``modules.scripts`` double."""

    def __init__(self, flavour: str = "forge2"):
        self.flavour = flavour
        from modules import scripts

        self.scripts_module = scripts
        scripts.load_scripts([scripts.ScriptFile(str(REPO), "asag.py", str(SCRIPT))])
        self.runner = scripts.scripts_txt2img
        self.runner.initialize_scripts(False)
        self.runner.setup_ui()
        found = [s for s in self.runner.alwayson_scripts if s.title() == "ASAG"]
        assert found, "scripts/asag.py did not register an AlwaysOn script titled ASAG"
        self.script = found[0]
        self.calls: list[Call] = []
        self._install_recorder()

    # --- script args
    def ui_defaults(self) -> list:
        controls = self.runner.inputs[self.script.args_from:self.script.args_to]
        return [getattr(c, "value", None) for c in controls]

    def args(self, **values) -> list:
        """Positional args as the UI sends them: UI defaults, with `values` by parameter name."""
        defaults = self.ui_defaults()
        assert len(defaults) == len(params.PARAMS), (len(defaults), len(params.PARAMS))
        out = list(defaults)
        for name, value in values.items():
            out[[p.name for p in params.PARAMS].index(name)] = value
        return out

    def api_args(self, mapping: dict) -> list:
        """Forge's API: ``alwayson_scripts.ASAG.args`` must be a list; a dict in slot 0 leaves the other
        slots at their UI defaults."""
        return [mapping, *self.ui_defaults()[1:]]

    # --- recording
    def _install_recorder(self):
        from backend.sampling import sampling_function as sf

        original = sf.calc_cond_uncond_batch
        host = self

        def recording_calc(model, cond, uncond, x_in, timestep, model_options):
            call = Call(model_options=model_options, cond=cond, uncond_none=uncond is None,
                        x_shape=tuple(x_in.shape), sigma=float(timestep.reshape(-1)[0]), recording=_recording())
            unet = model.diffusion_model
            previous = getattr(unet, "attn1_log", None)
            if hasattr(unet, "attn1_log"):
                unet.attn1_log = call.attn1
            try:
                return original(model, cond, uncond, x_in, timestep, model_options)
            finally:
                if hasattr(unet, "attn1_log"):
                    unet.attn1_log = previous
                host.calls.append(call)

        recording_calc.__wrapped__ = original
        sf.calc_cond_uncond_batch = recording_calc
        if self.flavour in LDM_PATCHED:
            import ldm_patched.modules.samplers as ls

            ls.calc_cond_uncond_batch = recording_calc

    # --- models
    def make_engine(self, family: str = "sd15", *, prediction: str = "eps", dit: bool = False, seed: int = 0,
                    quantized: bool = False):
        """`quantized`: every attention Linear becomes a packed layer without in/out_features (GGUF, bnb)."""
        from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
        from backend.modules.k_prediction import Prediction, PredictionDiscreteFlow
        from backend.patcher.unet import UnetPatcher

        predictor = PredictionDiscreteFlow(shift=3.0) if prediction == "flow" else Prediction()
        if dit:
            from backend.nn.flux import IntegratedFluxTransformer2DModel

            diffusion_model = IntegratedFluxTransformer2DModel(seed=seed)
            context_dim, adm = 16, None
        else:
            from backend.nn.unet import IntegratedUNet2DConditionModel

            base = build_unet(family, seed=seed)
            diffusion_model = IntegratedUNet2DConditionModel(base)
            if quantized:
                quantize_attention_linears(diffusion_model)
            context_dim, adm = base.context_dim, base.adm_in_channels
        if self.flavour in ("forge2", "neo"):
            from backend.modules.k_model import KModel

            model = KModel(diffusion_model, k_predictor=predictor)
        else:
            from ldm_patched.modules.model_base import BaseModel

            model = BaseModel(diffusion_model, predictor)
        unet = UnetPatcher(model, load_device="cpu", offload_device="cpu")
        objects = ForgeObjects(unet, None, None, None)
        flags = {"sd15": "is_sd1", "sd2": "is_sd2", "sdxl": "is_sdxl", "sdxl-refiner": "is_sdxl"}
        engine = ForgeDiffusionEngine(objects, **({} if dit else {flags[family]: True}))
        if self.flavour in LDM_PATCHED:  # reForge's LatentDiffusion: forge_objects, no Forge2 engine flags
            engine = SimpleNamespace(forge_objects=objects, forge_objects_original=objects.shallow_copy(),
                                     forge_objects_after_applying_lora=objects.shallow_copy())
        engine.test_context_dim, engine.test_adm = context_dim, adm
        engine.test_prediction = prediction
        return engine

    # --- generation
    def txt2img(self, engine, script_args, *, steps=2, cfg=5.0, batch=1, height=64, width=64, seed=0,
                hires=False, hr_scale=2.0, hr_steps=2, denoising=0.5, patchers=(), sampler="euler",
                composition=None, extra_model_options=None) -> Result:
        """One job. `patchers` are callables fn(p) run in process_before_every_sampling before ASAG, as
        other extensions' scripts (ControlNet, reference-only). `sampler`: "euler" or "heun" (second
        order, its correction call at the next step's sigma). `composition`: AND parts per image as
        [(row, weight), …] lists over the rows of a cond with that many rows (default one row per image).
        `extra_model_options`: Neo's extra argument of sampling_function."""
        self.calls = []
        pbes_unets = []
        full = [getattr(c, "value", None) for c in self.runner.inputs]
        full[0] = 0  # the selectable-script dropdown: None
        full[self.script.args_from:self.script.args_to] = list(script_args)
        p = Processing(engine, full, self.runner, batch_size=batch, steps=steps, cfg_scale=cfg, seed=seed,
                       width=width, height=height, enable_hr=hires, hr_scale=hr_scale)
        p.hr_second_pass_steps, p.denoising_strength = hr_steps, denoising
        self.composition = composition or [[(i, 1.0)] for i in range(batch)]
        self.extra_model_options = extra_model_options
        g = torch.Generator().manual_seed(seed)
        rows = 1 + max(index for parts in self.composition for index, _ in parts)
        c, uc = self._conds(engine, rows, g)
        uc = uc[:batch] if not isinstance(uc, dict) else {k: v[:batch] for k, v in uc.items()}
        h, w = height // 8, width // 8
        noise = torch.randn(batch, 4, h, w, generator=g)

        self.runner.process(p)

        def before_every_sampling(x, nz):
            for patch in patchers:
                patch(p)
            self.runner.process_before_every_sampling(p, x=x, noise=nz, c=c, uc=uc)
            pbes_unets.append(engine.forge_objects.unet)

        engine.forge_objects = engine.forge_objects_after_applying_lora.shallow_copy()
        p.sampler = Sampler(self, engine, sampler)
        before_every_sampling(noise, noise)
        samples = self._sample(p, engine, noise, c, uc, steps, cfg, start_at=0)

        if hires:
            p.is_hr_pass = True
            samples = F.interpolate(samples, scale_factor=hr_scale, mode="nearest")
            hr_noise = torch.randn(samples.shape, generator=g)
            p.sampler = Sampler(self, engine, sampler)
            self.runner.before_hr(p)
            before_every_sampling(samples, hr_noise)  # no reset: still the base pass's UNet
            engine.forge_objects = engine.forge_objects_after_applying_lora.shallow_copy()
            before_every_sampling(samples, hr_noise)
            total = int(hr_steps / min(denoising, 0.999))  # the hosts' setup_img2img_steps
            samples = self._sample(p, engine, hr_noise, c, uc, total, p.hr_cfg, start_at=total - hr_steps,
                                   latent=samples)
            p.is_hr_pass = False

        # after decoding, before each image's infotext is made: postprocess_batch (hosts.md §1.2)
        self.runner.postprocess_batch(p, images=samples, batch_number=0)
        processed = SimpleNamespace(images=[], infotexts=[dict(p.extra_generation_params)])
        self.runner.postprocess(p, processed)
        return Result(samples=samples, p=p, calls=list(self.calls), pbes_unets=pbes_unets)

    @staticmethod
    def _conds(engine, batch, g):
        def one():
            cross = torch.randn(batch, 4, engine.test_context_dim, generator=g)
            if engine.test_adm is None:
                return cross
            return {"crossattn": cross, "vector": torch.randn(batch, engine.test_adm, generator=g)}

        return one(), one()

    def _sigmas(self, model, steps):
        predictor = getattr(model, "predictor", None) or model.model_sampling
        if predictor.prediction_type == "const":
            sig = torch.linspace(1.0, 0.0, steps + 1)
            return predictor.sigma(predictor.timestep(sig)).clamp(0, 1)
        hi, lo = float(predictor.sigma_max), float(predictor.sigma_min)
        sig = torch.exp(torch.linspace(torch.log(torch.tensor(hi)), torch.log(torch.tensor(lo)), steps))
        return torch.cat([sig, torch.zeros(1)])

    def _denoise(self, p, engine, x, sigma, c, uc, cfg):
        from backend.sampling.condition import compile_conditions, compile_weighted_conditions

        batch = x.shape[0]
        sigma_in = torch.full((batch,), float(sigma))
        composition = self.composition
        p.sampler.model_wrap_cfg.step += 1
        if self.flavour in ("forge2", "neo"):
            from backend.sampling.sampling_function import sampling_function

            denoiser = SimpleNamespace(p=p, inner_model=SimpleNamespace(inner_model=engine))
            params_ = SimpleNamespace(x=x, sigma=sigma_in, text_cond=c, text_uncond=uc, image_cond=None)
            extra = {} if self.extra_model_options is None else {"extra_model_options": self.extra_model_options}
            denoised, _, _ = sampling_function(denoiser, params_, cfg, composition, **extra)
            return denoised
        # old Forge's modules_forge/forge_sampler.forge_sample: compile, attach control, run modifiers
        from ldm_patched.modules.samplers import sampling_function

        unet = engine.forge_objects.unet
        cond = compile_weighted_conditions(c, composition)
        uncond = compile_conditions(uc)
        if unet.controlnet_linked_list is not None:
            for h in cond + uncond:
                h["control"] = unet.controlnet_linked_list
        model, options, seed = unet.model, unet.model_options, p.seeds[0]
        for modifier in options.get("conditioning_modifiers", []):
            model, x, sigma_in, uncond, cond, cfg, options, seed = modifier(model, x, sigma_in, uncond, cond, cfg,
                                                                            options, seed)
        return sampling_function(model, x, sigma_in, uncond, cond, cfg, options, seed)

    def _sample(self, p, engine, noise, c, uc, steps, cfg, *, start_at, latent=None):
        unet = engine.forge_objects.unet
        model = unet.model
        to_sigma = (getattr(model, "predictor", None) or model.model_sampling).percent_to_sigma
        for cnet in unet.list_controlnets():
            cnet.pre_run(model, to_sigma)
        full = p.sampler.get_sigmas(p, steps)
        if self.flavour == "neo":  # Neo hands the sampler's full schedule to the model options
            unet.model_options["transformer_options"]["sampling_sigmas"] = full
        sigmas = full[start_at:]
        p.sampler.model_wrap_cfg.step = -1
        p.sampler.model_wrap_cfg.total_steps = p.sampler.config.total_steps(len(sigmas) - 1)
        predictor = getattr(model, "predictor", None) or model.model_sampling
        x = noise * sigmas[0] if latent is None else predictor.noise_scaling(sigmas[0], noise, latent)
        if latent is None and predictor.prediction_type == "const":
            x = noise
        with torch.no_grad():
            for i in range(len(sigmas) - 1):
                s, s_next = sigmas[i], sigmas[i + 1]
                denoised = self._denoise(p, engine, x, s, c, uc, cfg)
                slope = (x - denoised) / s
                if p.sampler.name == "heun" and s_next > 0:  # correction at the next sigma, then average
                    trial = x + slope * (s_next - s)
                    slope_next = (trial - self._denoise(p, engine, trial, s_next, c, uc, cfg)) / s_next
                    slope = (slope + slope_next) / 2
                x = x + slope * (s_next - s)
        return x


class Sampler:
    """``p.sampler`` as scripts see it during a pass: ``get_sigmas(p, steps)`` (the schedule, with a final
    0; it writes a schedule note into the infotext as the hosts do), ``config.options["second_order"]``
    and the CFG denoiser's call counter ``model_wrap_cfg.step`` / ``total_steps``."""

    def __init__(self, host: ForgeHost, engine: Any, name: str):
        from modules.sd_samplers_common import SamplerData

        if name not in ("euler", "heun"):
            raise ValueError(name)
        self.host, self.engine, self.name = host, engine, name
        self.config = SamplerData(name, lambda model: None, [], {"second_order": name == "heun"})
        self.model_wrap_cfg = SimpleNamespace(step=0, total_steps=0)

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        p.extra_generation_params["Schedule type"] = "Double"
        model = self.engine.forge_objects.unet.model
        return self.host._sigmas(model, steps)


def _recording() -> bool:
    from modules_forge.shared import supported_preprocessors

    return any(getattr(pre, "is_recording_style", False) for pre in supported_preprocessors.values())


class QuantizedLinear(torch.nn.Module):
    """A Linear layer stored packed, as GGUF / bnb 4-bit layers are: no ``in_features``/``out_features``
    attributes, ``weight`` is a flat buffer; the matmul dequantises (here: reshapes) first."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().reshape(-1).clone(), requires_grad=False)
        self._rows = linear.weight.shape[0]
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(),
                                                                          requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.reshape(self._rows, -1).to(x), None if self.bias is None else self.bias.to(x))


def quantize_attention_linears(diffusion_model: torch.nn.Module) -> None:
    for module in list(diffusion_model.modules()):
        if hasattr(module, "to_q") and hasattr(module, "heads"):
            for name in ("to_q", "to_k", "to_v"):
                setattr(module, name, QuantizedLinear(getattr(module, name)))
            module.to_out[0] = QuantizedLinear(module.to_out[0])


# --- other extensions, as they patch the UNet in process_before_every_sampling


def controlnet_patcher(hint: torch.Tensor, strength: float = 1.0, name: str = "control"):
    """A ControlNet unit as Forge's built-in ControlNet applies it (clone, link, hand back)."""
    from backend.patcher.controlnet import ControlNet, apply_controlnet_advanced

    cnet = ControlNet(name)

    def patch(p):
        unet = p.sd_model.forge_objects.unet
        p.sd_model.forge_objects.unet = apply_controlnet_advanced(unet, cnet, hint, strength, 0.0, 1.0)

    patch.controlnet = cnet
    return patch


def reference_only_patcher(record: bool = False, name: str = "reference_only"):
    """Forge's reference-only: ``set_model_replace_all(attn1_proc, 'attn1')`` writes 3-tuple keys on every
    layer; its attention concatenates extra (reference) keys, so N_k != N_q inside it.

    With ``record``, as the built-in preprocessor does (hosts.md §14, issue 10): a preprocessor object is
    registered in ``modules_forge.shared.supported_preprocessors``, and a conditioning modifier runs the
    whole CFG body once more per step on a noised reference latent with CFG 1 and the preprocessor's
    ``is_recording_style`` set, so every post-CFG function runs inside that call; the attn1 replacement
    stores k/v there and attends to them in the real calls."""
    from modules_forge.shared import add_supported_preprocessor

    calls: list = []
    bank: dict = {}
    state = SimpleNamespace(name=name, is_recording_style=False, recordings=0)
    if record:
        add_supported_preprocessor(state)

    def reference_attn1(q, k, v, extra_options, mask=None):
        calls.append((extra_options["block"], extra_options["block_index"], list(extra_options["cond_or_uncond"])))
        heads = extra_options["n_heads"]
        b, n, inner = q.shape
        d = inner // heads
        where = (*extra_options["block"], extra_options["block_index"])
        if state.is_recording_style:
            bank[where] = (k[:1], v[:1])
            k2, v2 = k, v
        elif where in bank:
            k_r, v_r = bank[where]
            k2 = torch.cat([k, k_r.expand(b, -1, -1)], dim=1)
            v2 = torch.cat([v, v_r.expand(b, -1, -1)], dim=1)
        else:
            k2 = torch.cat([k, k.flip(1)[:, : max(1, n // 2)]], dim=1)
            v2 = torch.cat([v, v.flip(1)[:, : max(1, n // 2)] * 0.5], dim=1)
        split = [t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k2, v2)]
        out = F.scaled_dot_product_attention(*split)
        return out.transpose(1, 2).reshape(b, n, inner)

    def recording_modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        from ldm_patched.modules import samplers as ldm_samplers

        body = getattr(sys.modules.get("backend.sampling.sampling_function"), "sampling_function_inner", None)
        run = body if body is not None else ldm_samplers.sampling_function
        reference = torch.zeros_like(x) + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
        state.is_recording_style = True
        try:
            run(model, reference * timestep.reshape(-1, 1, 1, 1), timestep, uncond, cond, 1.0, model_options, seed)
        finally:
            state.is_recording_style = False
        state.recordings += 1
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    def patch(p):
        unet = p.sd_model.forge_objects.unet.clone()
        if record:
            unet.add_conditioning_modifier(recording_modifier)
        unet.set_model_replace_all(reference_attn1, "attn1")
        p.sd_model.forge_objects.unet = unet

    patch.fn = reference_attn1
    patch.calls = calls
    patch.state = state
    return patch


# --- pytest fixture (imported at the end of tests/conftest.py)

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture
    def forge_host(request):
        """A Forge2 host (or, with ``indirect`` parametrisation, ``"ldm_patched"`` or ``"neo"``) with ASAG
        loaded."""
        flavour = getattr(request, "param", "forge2")
        with forge_environment(flavour):
            yield ForgeHost(flavour)
