"""AUTOMATIC1111 1.10.x adapter: the three CFG callbacks and the weak call on the cond rows.

Flow per model call (CFGDenoiser.forward):
  cfg_denoiser  -> decide whether this call is guided; remember the callback params (a reference, so
                   edits by later callbacks are seen) and the multicond weights.
  cfg_denoised  -> one extra call of the same inner model on the cond rows, with the chosen attn1
                   modules patched for that call only; keep delta = cond - weak per row.
  cfg_after_cfg -> denoised += s * sum_k w_k delta_k per image (masked for inpainting on samplers that
                   blend before this callback), optional rescale.

Host modules are imported inside functions. The only module-level state is what the host forces:
the link between the denoiser callback and the two later callbacks, which carry no `p` (`_current`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from asag_lib import guidance, layers, telemetry, weak
from asag_lib.attention import (
    ContextTransform,
    KernelOptions,
    make_attn1_forward,
    make_row_selective_forward,
    patched_forwards,
)
from asag_lib.hosts.job import Job, get_job, pass_selected, report_error, strip_infotext

CALLBACK_NAME = "asag"


@dataclasses.dataclass
class _Step:
    """What one guided model call needs between its three callbacks."""

    job: Job
    params: Any  # CFGDenoiserParams: x, sigma, image_cond, text_cond, text_uncond, denoiser
    conds_list: list[list[tuple[int, float]]]
    delta: Tensor | None = None
    cond_rows: Tensor | None = None
    weak_rows: tuple[int, int] | None = None
    """Batched mode: the weak rows [start, end) inserted into the main call, between cond and uncond."""
    batched_ok: bool = True


_current: list[_Step] = []
"""At most one entry: the guided call in flight (host-forced, see module docstring)."""


# ------------------------------------------------------------------------------------------------
# per sampling pass


@dataclasses.dataclass(frozen=True)
class _Target:
    unet_id: int
    refs: tuple[layers.LayerRef, ...]
    modules: tuple[torch.nn.Module, ...]


def _diffusion_model() -> Any:
    from modules import shared

    model = getattr(shared, "sd_model", None)
    return getattr(getattr(model, "model", None), "diffusion_model", None)


def _unsupported_reason(unet: Any) -> str | None:
    from modules import sd_unet

    if getattr(sd_unet, "current_unet", None) is not None:
        return ("an alternative UNet (e.g. TensorRT) is active; its attention cannot be patched, "
                "so ASAG is off for this job")
    if unet is None or not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        return ("this model has no UNet self-attention layers ASAG supports (SD3 and other DiTs are not "
                "supported); ASAG is off for this job")
    return None


def _resolve(job: Job, unet: Any, p: Any) -> _Target | None:
    """The attn1 modules of the live model for the job's layer spec, cached per model identity.

    A spec that does not fit this model is reported like any bad input (console line and a note in
    the job's info); ASAG is then off while this model samples."""
    cache: dict[int, _Target | None] = job.state.setdefault("targets", {})
    key = id(unet)
    if key in cache:
        return cache[key]
    target: _Target | None = None
    try:
        resolved = layers.resolve(unet, job.settings.layers)
    except ValueError as exc:
        if not job.state.get("guided"):
            strip_infotext(p)  # nothing was guided yet: keep 'ASAG scale' meaning that ASAG ran
        report_error(p, f"ASAG sampling: invalid value {job.settings.layers!r} for 'layers' on this model: {exc}; "
                        "ASAG is off for this model")
    else:
        target = _Target(key, tuple(ref for ref, _ in resolved), tuple(module for _, module in resolved))
    cache[key] = target
    return target


def _summary(job: Job, target: _Target, unet: Any, x: Tensor | None, is_hr: bool) -> str:
    settings = job.settings
    text = f"{len(target.refs)} layer(s) {layers.describe(target.refs)}"
    if x is not None:
        h, w = x.shape[-2:]
        counts = sorted(set(layers.token_counts(unet, target.refs, h, w).values()))
        text += f", {'/'.join(map(str, counts))} tokens per layer at {w * 8}×{h * 8}"
        big = [n for n in counts if n > 16384]
        if big:
            text += f" (warning: {max(big)} tokens make the Sinkhorn pass slow)"
    window = "" if (settings.start, settings.end) == (0.0, 1.0) else f", steps {settings.start:.0%}–{settings.end:.0%}"
    return (f"{'hires pass' if is_hr else 'sampling'}: scale {settings.scale:g}, {text}, "
            f"{settings.iterations} Sinkhorn iteration(s){window}")


def before_sampling(p: Any, job: Job, x: Tensor | None = None, **_: Any) -> None:
    """`process_before_every_sampling`: decide whether this pass is guided and resolve its layers."""
    state = job.state
    is_hr = bool(getattr(p, "is_hr_pass", False))
    state["pass_active"] = False
    if state.get("failed"):
        return
    if not pass_selected(job.settings.hires, is_hr):
        job.say_once(f"{'hires' if is_hr else 'first'} pass not guided (Hires. fix setting '{job.settings.hires}')")
        return
    unet = _diffusion_model()
    reason = _unsupported_reason(unet)
    if reason:
        job.say_once(reason)
        return
    target = _resolve(job, unet, p)
    if target is None:
        return
    job.say_once(_summary(job, target, unet, x, is_hr))
    rec = telemetry.recorder(job)
    if rec is not None:
        for ref, module in zip(target.refs, target.modules, strict=True):
            rec.name(module, str(ref))
        telemetry.attach_infotext(p, rec)
    state["pass_active"] = True
    state["guided"] = True
    state["pass_unet"] = target.unet_id  # a model change after this point is a refiner switch


# ------------------------------------------------------------------------------------------------
# batched weak pass: the weak rows ride in the main UNet call


class _OneShotInnerModel(torch.nn.Module):
    """Stands in for the denoiser's inner model for exactly one call: it puts the real one back first,
    then runs it with the selected attn1 modules patched for that call only (so no module keeps a patch
    if anything fails). An nn.Module because the host's CFGDenoiser registers `model_wrap` as a child
    module; other attributes fall through to the real inner model."""

    def __init__(self, denoiser: Any, wrapped: Any, modules: Sequence[torch.nn.Module], forward: Any):
        super().__init__()
        # plain attributes, not registered children: the denoiser, the model and the layers stay theirs
        object.__setattr__(self, "_asag", (denoiser, wrapped, tuple(modules), forward))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_asag")[1], name)

    def unwrap(self) -> None:
        denoiser, wrapped, _, _ = self._asag
        if denoiser.model_wrap is self:
            denoiser.model_wrap = wrapped

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        _, wrapped, modules, forward = self._asag
        self.unwrap()
        with patched_forwards(modules, forward):
            return wrapped(*args, **kwargs)


def _unwrap_stale(denoiser: Any) -> None:
    wrapper = getattr(denoiser, "model_wrap", None)
    if isinstance(wrapper, _OneShotInnerModel):
        wrapper.unwrap()


def _tokens(cond: Any) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[1]


def _cond_rows(cond: Any) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def _batching_blocker(step: _Step, target: _Target, unet: Any) -> str | None:
    """Why the weak rows cannot safely join the main call (None when they can)."""
    from modules import shared

    params, denoiser = step.params, step.params.denoiser
    p = denoiser.p
    if not shared.opts.batch_cond_uncond:
        return "'batch cond/uncond' is off"
    if _tokens(params.text_cond) != _tokens(params.text_uncond):
        return "prompt and negative prompt have different token lengths"
    if getattr(shared.sd_model, "cond_stage_key", None) == "edit":
        return "edit (instruct-pix2pix) models combine three fixed blocks"
    if getattr(shared.sd_model.model, "conditioning_key", None) == "crossattn-adm":
        return "unCLIP models are not batched"
    if _unet_is_hooked(unet):
        return "a UNet hook (ControlNet) caches per-batch tensors"
    if any("forward" in vars(module) for module in target.modules):
        return "another extension (e.g. Hypertile) wraps the selected layers"
    merging = getattr(p, "get_token_merging_ratio", None)
    if callable(merging) and merging(for_hr=bool(getattr(p, "is_hr_pass", False))):
        return "token merging (ToMe) changes the self-attention tokens"
    if not hasattr(denoiser, "model_wrap"):
        return "this sampler has no replaceable inner model"
    return None


def _use_batched(step: _Step, target: _Target, unet: Any) -> bool:
    mode = step.job.settings.weak_pass
    if mode == "separate" or step.job.state.get("no_batching"):
        return False
    blocker = _batching_blocker(step, target, unet)
    if mode == "batched":
        if blocker:
            step.job.say_once(f"weak pass runs as a separate call: {blocker}")
        return blocker is None
    # auto: batching saves time where the device has parallelism to spare, i.e. on a GPU
    return blocker is None and step.params.x.device.type == "cuda"


def _insert_rows(value: Any, n: int) -> Any:
    """[a | rest] -> [a | a | rest] where a is the first n rows (tensor or SDXL dict)."""
    if isinstance(value, dict):
        # keep the host's type: SDXL conds are a DictWithShape, whose `.shape` the host reads
        return type(value)({key: _insert_rows(tensor, n) for key, tensor in value.items()})
    return torch.cat([value[:n], value[:n], value[n:]])


def _batch_weak_rows(step: _Step, target: _Target) -> None:
    """Insert copies of the cond rows before the uncond rows and arm the one-shot patched inner model."""
    params = step.params
    n_cond = _cond_rows(params.text_cond)
    rows = params.x.shape[0] + n_cond
    # the whole batch, or without its uncond rows on steps where the host skips them (NGMS, skip early CFG)
    sizes = {rows, rows - len(step.conds_list)}

    def regrouped() -> None:
        step.batched_ok = False

    forward = make_row_selective_forward(slice(n_cond, 2 * n_cond), sizes, _kernel_options(step),
                                         _context_transform(), regrouped)
    denoiser = params.denoiser
    # arm the wrapper before touching the batch, so a failure leaves the host's batch as it was
    denoiser.model_wrap = _OneShotInnerModel(denoiser, denoiser.inner_model, target.modules, forward)
    params.x = _insert_rows(params.x, n_cond)
    params.sigma = _insert_rows(params.sigma, n_cond)
    params.image_cond = _insert_rows(params.image_cond, n_cond)
    params.text_cond = _insert_rows(params.text_cond, n_cond)
    step.weak_rows = (n_cond, 2 * n_cond)


# ------------------------------------------------------------------------------------------------
# callbacks


def _kernel_options(step: _Step) -> KernelOptions:
    """The weak model's options for this step: the batch's seed ('random'), the latent size ('blur'
    token grid) and the job's telemetry recorder (None when off)."""
    return KernelOptions.from_settings(step.job.settings, seed=weak.seed_of(step.params.denoiser.p),
                                       latent_hw=tuple(step.params.x.shape[-2:]),
                                       telemetry=telemetry.recorder(step.job))


def _context_transform() -> ContextTransform | None:
    """A1111's attention forwards apply loaded hypernetworks to the context; do the same when any is loaded."""
    from modules import shared

    if not getattr(shared, "loaded_hypernetworks", None):
        return None
    from modules.hypernetworks import hypernetwork

    def transform(module: torch.nn.Module, context: Tensor) -> tuple[Tensor, Tensor]:
        return hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context, module)

    return transform


def on_cfg_denoiser(params: Any) -> None:
    _current.clear()
    denoiser = getattr(params, "denoiser", None)
    _unwrap_stale(denoiser)
    job = get_job(getattr(denoiser, "p", None))
    if job is None or not job.state.get("pass_active") or job.state.get("failed"):
        return
    progress = guidance.progress(denoiser.step, denoiser.total_steps)
    if not guidance.in_window(progress, job.settings.start, job.settings.end):
        return
    from modules import prompt_parser

    conds_list, _ = prompt_parser.reconstruct_multicond_batch(denoiser.sampler.sampler_extra_args["cond"], denoiser.step)
    step = _Step(job, params, [list(entries) for entries in conds_list])
    _current.append(step)
    unet = _diffusion_model()
    target = _resolve(job, unet, denoiser.p)
    if target is not None and _use_batched(step, target, unet):
        try:
            _batch_weak_rows(step, target)
        except Exception as exc:  # fall back to the separate call; the host's batch is untouched
            _unwrap_stale(denoiser)
            job.state["no_batching"] = True
            job.say_once(f"batched weak pass unavailable ({type(exc).__name__}: {exc}); using a separate call")


def _rows(cond: Any, index: Tensor) -> Any:
    """Rows of a tensor or SDXL cond dict, as fresh tensors (ControlNet's Revision writes `vector` in place)."""
    if isinstance(cond, dict):
        return {key: value.index_select(0, index.to(value.device)) for key, value in cond.items()}
    return cond.index_select(0, index.to(cond.device))


def _condition_dict(text_cond: Any, image_cond: Tensor) -> dict[str, Any]:
    """The cond dict the host's forward builds (make_condition_dict) for these rows."""
    from modules import shared

    if getattr(shared.sd_model.model, "conditioning_key", None) == "crossattn-adm":
        return {"c_crossattn": [text_cond], "c_adm": image_cond}
    if isinstance(text_cond, dict):
        return {**text_cond, "c_concat": [image_cond]}
    return {"c_crossattn": [text_cond], "c_concat": [image_cond]}


def _weak_chunks(n_cond: int, n_images: int, n_rows: int, pad: bool) -> list[tuple[list[int], list[int]]]:
    """(cond rows, rows to send) for each weak call.

    Without a UNet hook: one call on the cond rows (or slices of one image batch each, as the host does
    when `batch_cond_uncond` is off). With a hook such as ControlNet's, whose units cache tensors at
    the first call's batch size (reference, inpaint), every call has the host's call size, padded with
    repeats of its first row; the extra outputs are discarded.
    """
    from modules import shared

    size = n_rows if shared.opts.batch_cond_uncond else n_images
    if not pad and shared.opts.batch_cond_uncond:
        size = n_cond
    chunks = []
    for start in range(0, n_cond, size):
        rows = list(range(start, min(start + size, n_cond)))
        sent = rows + [rows[0]] * (size - len(rows)) if pad else rows
        chunks.append((rows, sent))
    return chunks


def _unet_is_hooked(unet: Any) -> bool:
    """An instance-level UNet forward means a hook such as ControlNet's, which caches per-batch tensors."""
    return unet is not None and "forward" in vars(unet)


def _weak_prediction(step: _Step, inner_model: Any, target: _Target) -> Tensor:
    params = step.params
    text_cond = params.text_cond
    n_cond = _cond_rows(text_cond)
    n_images = len(step.conds_list)
    pad = _unet_is_hooked(_diffusion_model())
    forward = make_attn1_forward(_kernel_options(step), _context_transform())
    weak = torch.empty_like(params.x[:n_cond])
    with patched_forwards(target.modules, forward):
        for rows, sent in _weak_chunks(n_cond, n_images, params.x.shape[0], pad):
            index = torch.tensor(sent, dtype=torch.long)
            out = inner_model(
                _rows(params.x, index),
                _rows(params.sigma, index),
                cond=_condition_dict(_rows(text_cond, index), _rows(params.image_cond, index)),
            )
            weak[rows] = out[: len(rows)]
    return weak


def on_cfg_denoised(params: Any) -> None:
    if not _current:
        return
    step = _current[0]
    denoiser = step.params.denoiser
    if params.inner_model is not denoiser.inner_model:
        _current.clear()
        return
    job = step.job
    unet = _diffusion_model()
    target = _resolve(job, unet, denoiser.p)
    if target is None:
        _current.clear()
        return
    if target.unet_id != job.state.get("pass_unet", target.unet_id):
        job.say_once(f"model changed during sampling (refiner switch): now {len(target.refs)} layer(s) "
                     f"{layers.describe(target.refs)}")
        job.state["pass_unet"] = target.unet_id
    if step.weak_rows is not None:
        start, end = step.weak_rows
        if not step.batched_ok:
            job.say_once("the batched weak pass saw a regrouped batch; no guidance on those steps")
            _current.clear()
            return
        step.delta = params.x[:start] - params.x[start:end]
        step.cond_rows = params.x[:start] if job.settings.rescale else None
        return
    try:
        weak = _weak_prediction(step, params.inner_model, target)
    except Exception as exc:  # a failing weak pass must never break the host's sampling
        job.state["failed"] = True
        _current.clear()
        report_error(denoiser.p, f"ASAG weak pass failed ({type(exc).__name__}: {exc}); "
                                 "ASAG is off for the rest of this job")
        return
    cond_rows = params.x[: weak.shape[0]]
    step.delta = cond_rows - weak
    step.cond_rows = cond_rows if job.settings.rescale else None


def on_cfg_after_cfg(params: Any) -> None:
    if not _current:
        return
    step = _current.pop()
    if step.delta is None:
        return
    settings = step.job.settings
    denoised = params.x
    term = guidance.per_image(step.delta, step.conds_list).to(denoised.dtype) * settings.scale
    guided = denoised + term
    if settings.rescale:
        reference = guidance.weighted_cond(step.cond_rows, step.conds_list).to(guided.dtype)
        guided = guidance.rescale_like(guided, reference, settings.rescale)
    denoiser = step.params.denoiser
    if getattr(denoiser, "mask", None) is not None and not getattr(denoiser, "mask_before_denoising", False):
        # The inpainting blend already ran on k-diffusion samplers: keep preserved areas untouched.
        guided = denoised + (guided - denoised) * denoiser.nmask
    params.x = guided


CALLBACKS: Sequence[tuple[str, Any]] = (
    ("on_cfg_denoiser", on_cfg_denoiser),
    ("on_cfg_denoised", on_cfg_denoised),
    ("on_cfg_after_cfg", on_cfg_after_cfg),
)


def register() -> None:
    """Register the CFG callbacks once (the script module calls this at import; UI reloads clear the
    host's callbacks and re-import the script, so this runs again then)."""
    from modules import script_callbacks

    for registrar, callback in CALLBACKS:
        script_callbacks.remove_callbacks_for_function(callback)
        getattr(script_callbacks, registrar)(callback, name=CALLBACK_NAME)
