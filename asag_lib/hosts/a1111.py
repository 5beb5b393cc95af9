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

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
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
from asag_lib.hosts.job import Job, get_job, pass_selected, report_error

CALLBACK_NAME = "asag"
REPORTS_STEPS = True
"""This adapter reports every sampler step to the job (`Job.step_done`), so the script may drop the
infotext of batches in which nothing was guided (`job.settle_infotext`)."""
WINDOW = "outside the start/end window"


@dataclasses.dataclass
class _Step:
    """What one guided model call needs between its three callbacks."""

    job: Job
    params: Any  # CFGDenoiserParams: x, sigma, image_cond, text_cond, text_uncond, denoiser
    conds_list: list[list[tuple[int, float]]]
    index: int = 0
    """The sampler step of this model call within its pass (`guidance.sampler_step`)."""
    skip_uncond: bool = False
    """The host skips the uncond rows in this call (skip early CFG / NGMS), hosts.md §2.3 item 10."""
    delta: Tensor | None = None
    cond_rows: Tensor | None = None
    weak_rows: tuple[int, int] | None = None
    """Batched mode: the weak rows [start, end) inserted into the main call, between cond and uncond."""
    batched_ok: bool = True
    rng: tuple[Tensor, Tensor | None] | None = None
    """The global RNG state just before the host's own call of this step (see `_rng_as_host_saw`)."""


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
        report_error(p, f"ASAG sampling: invalid value {job.settings.layers!r} for 'layers' on this model: {exc}; "
                        "ASAG is off for this model")
    else:
        target = _Target(key, tuple(ref for ref, _ in resolved), tuple(module for _, module in resolved))
    cache[key] = target
    return target


def _describe(job: Job, target: _Target, unet: Any, x: Tensor | None, is_hr: bool) -> None:
    """Layers and token counts of this pass for the end-of-job line; a slow size is said at once."""
    text = f"{len(target.refs)} layers ({layers.describe(target.refs)})"
    if x is not None:
        h, w = x.shape[-2:]
        counts = sorted(set(layers.token_counts(unet, target.refs, h, w).values()))
        text += f", {'/'.join(map(str, counts))} tokens"
        big = [n for n in counts if n > 16384]
        if big:
            job.say_once(f"warning: {max(big)} tokens per layer at {w * 8}×{h * 8} make the Sinkhorn pass slow")
    job.detail(("hires pass: " if is_hr else "") + text)


def before_sampling(p: Any, job: Job, x: Tensor | None = None, **_: Any) -> None:
    """`process_before_every_sampling`: decide whether this pass is guided and resolve its layers.

    A pass that is not guided keeps its reason in `state['pass_skip']`; each of its steps is then
    reported to the job with that reason (console line once, end-of-job summary, infotext decision)."""
    state = job.state
    is_hr = bool(getattr(p, "is_hr_pass", False))
    job.begin_pass()
    state["pass_active"] = False
    state["pass_skip"] = None
    reason = _pass_skip_reason(p, job, is_hr)
    if reason:
        state["pass_skip"] = reason
        job.say_once(reason)
        return
    unet = _diffusion_model()
    target = _resolve(job, unet, p)
    if target is None:
        state["pass_skip"] = "the layer spec does not fit this model"
        return
    _describe(job, target, unet, x, is_hr)
    rec = telemetry.recorder(job)
    if rec is not None:
        for ref, module in zip(target.refs, target.modules, strict=True):
            rec.name(module, str(ref))
        telemetry.attach_infotext(p, rec)
    state["pass_active"] = True
    state["pass_unet"] = target.unet_id  # a model change after this point is a refiner switch


def _pass_skip_reason(p: Any, job: Job, is_hr: bool) -> str | None:
    if job.state.get("failed"):
        return "the weak pass failed earlier in this job"
    hires = job.settings.hires
    if not pass_selected(hires, is_hr):
        which = "hires" if is_hr else "first"
        off = "" if is_hr or getattr(p, "enable_hr", False) or hires != "hires" else " and Hires. fix is off"
        return f"{which} pass not guided (Hires. fix setting '{hires}'{off})"
    return _unsupported_reason(_diffusion_model())


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
    # build all four first: a failure part-way must leave the host's rows as they were (matched)
    grown = [_insert_rows(value, n_cond) for value in (params.x, params.sigma, params.image_cond, params.text_cond)]
    wrapper = _OneShotInnerModel(denoiser, denoiser.inner_model, target.modules, forward)
    denoiser.model_wrap = wrapper
    params.x, params.sigma, params.image_cond, params.text_cond = grown
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


def _step_index(denoiser: Any) -> tuple[int, int]:
    """(sampler step of this model call, steps of the pass): from the call counter and the calls the
    host expects for the pass (`denoiser.total_steps`, doubled for second-order samplers)."""
    steps = int(getattr(denoiser, "steps", 0) or 0)
    calls = int(getattr(denoiser, "total_steps", 0) or 0)
    return guidance.sampler_step(int(denoiser.step), calls, steps), steps


def _host_skips_uncond(params: Any, denoiser: Any) -> bool:
    """Whether the host drops the uncond rows in this call (hosts.md §2.3 item 10), recomputed from the
    same options and counters the host uses, so the weak call can be sized like the host's calls."""
    from modules import shared

    opts = shared.opts
    early = getattr(opts, "skip_early_cond", 0.0) or 0.0
    if early and denoiser.step / max(denoiser.total_steps or 1, 1) <= early:
        return True
    s_min = (getattr(denoiser.sampler, "sampler_extra_args", None) or {}).get("s_min_uncond", 0.0) or 0.0
    every = getattr(opts, "s_min_uncond_all", False)
    n_images = _cond_rows(params.text_uncond)
    sigma = params.sigma[-n_images] if params.sigma.shape[0] >= n_images else params.sigma[0]
    return bool(s_min > 0 and (denoiser.step % 2 or every) and float(sigma) < s_min)


def on_cfg_denoiser(params: Any) -> None:
    _current.clear()
    denoiser = getattr(params, "denoiser", None)
    _unwrap_stale(denoiser)
    job = get_job(getattr(denoiser, "p", None))
    if job is None:
        return
    index, steps = _step_index(denoiser)
    reason = job.state.get("pass_skip") or ("the weak pass failed earlier in this job" if job.state.get("failed")
                                            else None)
    if reason or not job.state.get("pass_active"):
        job.step_done(index, reason or "ASAG was not set up for this pass")
        return
    if not guidance.step_in_window(index, steps, job.settings.start, job.settings.end):
        job.step_done(index, WINDOW)
        return
    from modules import prompt_parser

    conds_list, _ = prompt_parser.reconstruct_multicond_batch(denoiser.sampler.sampler_extra_args["cond"], denoiser.step)
    step = _Step(job, params, [list(entries) for entries in conds_list], index=index,
                 skip_uncond=_host_skips_uncond(params, denoiser), rng=_rng_state(params.x.device))
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


def _host_text_cond(text_cond: Any, text_uncond: Any) -> Any:
    """The cond rows exactly as the host's cond calls saw them (hosts.md §2.3 item 11).

    With 'pad prompt/negative prompt' on and a cond shorter than the uncond, the host pads a local copy
    of a tensor cond with repeats of the empty prompt (an SDXL dict is padded in place, so it arrives
    here already padded). `pad_cond_uncond_v0` pads or truncates the uncond only: the cond is unchanged.
    """
    from modules import shared

    opts = shared.opts
    lengths = _tokens(text_cond), _tokens(text_uncond)
    if lengths[0] >= lengths[1] or getattr(opts, "pad_cond_uncond_v0", False) or not getattr(opts, "pad_cond_uncond", False):
        return text_cond
    empty = shared.sd_model.cond_stage_model_empty_prompt
    repeats = -((lengths[0] - lengths[1]) // empty.shape[1])  # the host's count of empty-prompt chunks
    if repeats <= 0:
        return text_cond
    tokens = text_cond["crossattn"] if isinstance(text_cond, dict) else text_cond
    padded = torch.cat([tokens, empty.to(tokens).repeat(tokens.shape[0], repeats, 1)], dim=1)
    return type(text_cond)({**text_cond, "crossattn": padded}) if isinstance(text_cond, dict) else padded


def _lengths_equal_for_host(text_cond: Any, text_uncond: Any) -> bool:
    """Whether the host runs cond and uncond rows in one batch (equal token lengths after its padding)."""
    from modules import shared

    opts = shared.opts
    cond, uncond = _tokens(text_cond), _tokens(text_uncond)
    if cond == uncond or getattr(opts, "pad_cond_uncond_v0", False):
        return True
    if not getattr(opts, "pad_cond_uncond", False):
        return False
    empty = shared.sd_model.cond_stage_model_empty_prompt.shape[1]
    repeats = (cond - uncond) // empty  # as the host computes it: < 0 pads the cond, > 0 the uncond
    if repeats < 0:
        cond -= repeats * empty
    else:
        uncond += repeats * empty
    return cond == uncond


def _host_cond_calls(n_cond: int, n_images: int, equal_lengths: bool, skip_uncond: bool,
                     together: bool) -> list[tuple[int, int]]:
    """Row ranges [a, b) of the host's model calls in this step that hold cond rows (hosts.md §2.3 item 12).

    Equal lengths (or a skip-uncond step): one call on all rows with 'batch cond/uncond', else slices
    of B rows (a slice may hold cond and uncond rows). Different lengths: the cond rows in chunks of
    2B (B without 'batch cond/uncond'), the uncond rows in a call of their own.
    """
    if equal_lengths or skip_uncond:
        rows = n_cond if skip_uncond else n_cond + n_images
        size = rows if together else n_images
    else:
        rows, size = n_cond, 2 * n_images if together else n_images
    return [(a, min(a + size, rows)) for a in range(0, n_cond, size)]


def _weak_chunks(step: _Step, n_cond: int, hooked: bool) -> list[tuple[list[int], list[int]]]:
    """(cond rows, rows to send) for each weak call.

    Without a UNet hook: one call on all cond rows (slices of B rows without 'batch cond/uncond').
    With a hook such as ControlNet's, whose units cache tensors at the size of the first call of the
    job (reference, inpaint, colorfix), every weak call has the size of the host's matching call in
    this step, the rows beyond the cond rows filled with repeats of its first cond row (their outputs
    are discarded): the weak calls then work exactly when the host's own calls do.
    """
    from modules import shared

    together = bool(shared.opts.batch_cond_uncond)
    n_images = len(step.conds_list)
    if not hooked:
        size = n_cond if together else n_images
        return [(list(range(a, min(a + size, n_cond))),) * 2 for a in range(0, n_cond, size)]
    params = step.params
    equal = _lengths_equal_for_host(params.text_cond, params.text_uncond)
    chunks = []
    for a, b in _host_cond_calls(n_cond, n_images, equal, step.skip_uncond, together):
        rows = list(range(a, min(b, n_cond)))
        chunks.append((rows, rows + [rows[0]] * (b - a - len(rows))))
    return chunks


def _unet_is_hooked(unet: Any) -> bool:
    """An instance-level UNet forward means a hook such as ControlNet's, which caches per-batch tensors."""
    return unet is not None and "forward" in vars(unet)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def _rng_as_host_saw(step: _Step) -> Iterator[None]:
    """Run the separate weak call from the global RNG state the host's own call started from, then put back
    the state the host left. Forwards that draw noise (ControlNet's reference units) then see the same noise
    as the host's cond rows, and a job with ASAG leaves the RNG exactly as one without it: A1111 encodes the
    next img2img init image from the global RNG before it reseeds (found in the real host)."""
    device = step.params.x.device
    after_host = _rng_state(device)
    if step.rng is not None:
        _set_rng_state(step.rng, device)
    try:
        yield
    finally:
        _set_rng_state(after_host, device)


def _weak_prediction(step: _Step, inner_model: Any, target: _Target) -> Tensor:
    params = step.params
    text_cond = _host_text_cond(params.text_cond, params.text_uncond)
    n_cond = _cond_rows(text_cond)
    forward = make_attn1_forward(_kernel_options(step), _context_transform())
    weak = torch.empty_like(params.x[:n_cond])
    with patched_forwards(target.modules, forward):
        for rows, sent in _weak_chunks(step, n_cond, _unet_is_hooked(_diffusion_model())):
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
    job = step.job
    if params.inner_model is not denoiser.inner_model:
        job.step_done(step.index, "another extension replaced the model for this call")
        _current.clear()
        return
    unet = _diffusion_model()
    target = _resolve(job, unet, denoiser.p)
    if target is None:
        job.step_done(step.index, "the layer spec does not fit this model")
        _current.clear()
        return
    if target.unet_id != job.state.get("pass_unet", target.unet_id):
        job.say_once(f"model changed during sampling (refiner switch): now {len(target.refs)} layer(s) "
                     f"{layers.describe(target.refs)}")
        job.detail(f"after the refiner switch {len(target.refs)} layers ({layers.describe(target.refs)})")
        job.state["pass_unet"] = target.unet_id
    if step.weak_rows is not None:
        start, end = step.weak_rows
        if not step.batched_ok:
            job.say_once("the batched weak pass saw a regrouped batch; no guidance on those steps")
            job.step_done(step.index, "another extension regrouped the batched weak rows")
            _current.clear()
            return
        job.weak_pass()
        step.delta = params.x[:start] - params.x[start:end]
        step.cond_rows = params.x[:start]
        return
    try:
        with _rng_as_host_saw(step):
            weak = _weak_prediction(step, params.inner_model, target)
    except Exception as exc:  # a failing weak pass must never break the host's sampling
        job.state["failed"] = True
        job.step_done(step.index, "the weak pass failed")
        _current.clear()
        report_error(denoiser.p, f"ASAG weak pass failed ({type(exc).__name__}: {exc}); "
                                 "ASAG is off for the rest of this job")
        return
    job.weak_pass()
    cond_rows = params.x[: weak.shape[0]]
    step.delta = cond_rows - weak
    step.cond_rows = cond_rows


def _eps_input(step: _Step) -> Tensor | None:
    """The noisy input of each image when the host's predictions are x0 (k-diffusion samplers), so the
    rescale factor is measured in eps space (eps = (x − x0)/sigma); None when they already are eps."""
    from modules import sd_samplers_timesteps

    if isinstance(step.params.denoiser, sd_samplers_timesteps.CFGDenoiserTimesteps):
        return None
    x_in = step.params.x
    return torch.stack([x_in[entries[0][0]] for entries in step.conds_list])


def on_cfg_after_cfg(params: Any) -> None:
    if not _current:
        return
    step = _current.pop()
    if step.delta is None:
        return
    settings = step.job.settings
    denoised = params.x
    # s · sum_k (w_k / sum_j w_j)(cond_k − weak_k) per image (guidance.per_image)
    term = guidance.per_image(step.delta, step.conds_list).to(denoised.dtype) * settings.scale
    guided = denoised + term
    if settings.rescale:
        cond = guidance.per_image(step.cond_rows, step.conds_list).to(denoised.dtype)
        x = _eps_input(step)
        guided = guidance.add_term(denoised, term, cond, settings.rescale, None if x is None else x.to(denoised.dtype))
    denoiser = step.params.denoiser
    if getattr(denoiser, "mask", None) is not None and not getattr(denoiser, "mask_before_denoising", False):
        # The inpainting blend already ran on k-diffusion samplers: keep preserved areas untouched.
        guided = denoised + (guided - denoised) * denoiser.nmask
    params.x = guided
    step.job.step_done(step.index)


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
