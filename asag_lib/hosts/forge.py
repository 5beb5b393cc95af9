"""Forge-family adapter: Forge2 (`backend.*`, current main, Neo) and the `ldm_patched` hosts (old Forge,
reForge, Forge Classic).

One entry point, `before_sampling(p, job, **kwargs)`, called from the script's
`process_before_every_sampling`. It clones `p.sd_model.forge_objects.unet`, adds ONE post-CFG function and
hands the clone back. The post-CFG function computes the weak prediction with one cond-only
`calc_cond_uncond_batch` call whose `model_options` are a copy (every nested level touched) carrying
explicit 3-tuple attn1 replacements for the selected layers, and returns
`denoised + s·(cond_denoised − weak)` (exact in x0 space, see `guidance`). The live `model_options` are
never mutated (Forge's built-in PAG had that bug, docs/hosts.md §12.3).

Start/End are a fraction of the pass's sampling steps (`forge_steps`); AND prompts give the weighted mean
of per-part differences (`and_factor`); the reference preprocessors' recording call is left alone
(`in_reference_recording`); every step, weak pass and skip is reported to the shared `Job` counters.

Host modules are imported inside functions only; importing this module needs no WebUI.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from asag_lib import guidance, layers, telemetry, weak
from asag_lib.attention import KernelOptions, make_attn1_replace
from asag_lib.hosts import forge_variant as host_variant
from asag_lib.hosts.forge_steps import StepClock
from asag_lib.hosts.job import Job, pass_selected, report_error, strip_infotext

REPORTS_STEPS = True
"""Every sampler step is reported through `Job.step_done`, so the script may settle the infotext per batch."""

WINDOW = "outside the start/end window"

MARK = "asag_post_cfg"
"""Attribute set on our post-CFG function, so a UNet that already carries one is recognised (idempotency
across Forge2's triple hires call) and never gets a second."""

_FALLBACK_BUDGET = 256 * 2**20


# --------------------------------------------------------------------------------------------------
# host probing (lazy)


def backend_flavour() -> tuple[str, Callable] | None:
    """('forge2', calc) for `backend.*` hosts, ('ldm_patched', calc) for old Forge/reForge/Classic, or None.

    `calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options)` has the same signature in
    every flavour (reForge keeps it as a wrapper around `calc_cond_batch`). The full dotted submodule is
    probed, never the bare `backend` name.
    """
    try:
        from backend.sampling.sampling_function import calc_cond_uncond_batch
    except ImportError:
        pass
    else:
        return "forge2", calc_cond_uncond_batch
    try:
        from ldm_patched.modules.samplers import calc_cond_uncond_batch
    except ImportError:
        return None
    return "ldm_patched", calc_cond_uncond_batch


def replacement_unet() -> str | None:
    """The label of a UNet replacement (TensorRT and the like, `modules.sd_unet.current_unet`), if active."""
    current = getattr(sys.modules.get("modules.sd_unet"), "current_unet", None)
    if current is None:
        return None
    return str(getattr(getattr(current, "option", None), "label", None) or type(current).__name__)


def unsupported_reason(p: Any, unet: Any) -> str | None:
    """Why this model cannot take attn1 replacements (Flux, SD3, other DiTs, a TensorRT UNet), or None.

    The DiT branch is where a DiT adapter plugs in: return None for the models it handles and route them
    in `before_sampling` instead."""
    replaced = replacement_unet()
    if replaced is not None:
        return (f"a replacement UNet is active ({replaced}, e.g. TensorRT); it runs no attn1 replacement, so "
                "ASAG is skipped: no extra pass is run.")
    sd_model = getattr(p, "sd_model", None)
    diffusion_model = getattr(getattr(unet, "model", None), "diffusion_model", None)
    name = type(diffusion_model).__name__ if diffusion_model is not None else "unknown"
    is_legacy = getattr(sd_model, "is_webui_legacy_model", None)
    not_unet = diffusion_model is None or not all(
        hasattr(diffusion_model, attr) for attr in ("input_blocks", "middle_block", "output_blocks")
    )
    if not_unet or getattr(sd_model, "is_sd3", False) or (callable(is_legacy) and not is_legacy()):
        return (f"this model ({name}) is not an SD1.x/SD2.x/SDXL UNet; its attention ignores attn1 "
                "replacements (Flux, SD3 and other DiTs), so ASAG is skipped: no extra pass is run.")
    return None


# --------------------------------------------------------------------------------------------------
# pure helpers (no host needed)


def with_attn1_replacements(model_options: Mapping, fn: Callable, keys: Iterable[tuple]) -> dict:
    """A copy of `model_options` with `fn` as the attn1 replacement at every key.

    The top-level dict, `transformer_options`, `patches_replace` and `patches_replace["attn1"]` are new
    dicts; everything else is shared with the original, which is left untouched. Keys must be explicit
    3-tuples: a 2-tuple key would be shadowed by other extensions' 3-tuple keys (reference-only).
    """
    options = dict(model_options)
    transformer_options = dict(options.get("transformer_options") or {})
    patches_replace = dict(transformer_options.get("patches_replace") or {})
    attn1 = dict(patches_replace.get("attn1") or {})
    for key in keys:
        if len(key) != 3:
            raise ValueError(f"ASAG attn1 key must be (block, id, index), got {key!r}")
        attn1[tuple(key)] = fn
    patches_replace["attn1"] = attn1
    transformer_options["patches_replace"] = patches_replace
    options["transformer_options"] = transformer_options
    return options


def is_ours(fn: Any) -> bool:
    return bool(getattr(fn, MARK, False))


def carries_ours(unet: Any) -> bool:
    options = getattr(unet, "model_options", None) or {}
    return any(is_ours(fn) for fn in options.get("sampler_post_cfg_function", []))


def _drop_ours(unet: Any) -> None:
    """Remove our post-CFG function (and the memory it reserved) from a fresh clone, in place."""
    fns = unet.model_options.get("sampler_post_cfg_function")
    if not fns:
        return
    reserved = sum(getattr(fn, "asag_reserved", 0) for fn in fns if is_ours(fn))
    unet.model_options["sampler_post_cfg_function"] = [fn for fn in fns if not is_ours(fn)]
    if reserved and hasattr(unet, "extra_preserved_memory_during_sampling"):
        unet.extra_preserved_memory_during_sampling -= reserved


def attention_width(module: Any) -> tuple[int, int]:
    """(heads, heads·dim_head) of an attn1 module, from what every host's attention class carries.

    Forge's and ldm_patched's CrossAttention store `heads` and `dim_head`; the Linear layers of quantized
    UNets (bnb nf4/fp4, GGUF) have no `out_features`, so that is only a fallback (A1111's classes lack
    `dim_head`), and a module with neither is sized at the common 64 channels per head.
    """
    heads = int(getattr(module, "heads", 0) or 1)
    dim_head = getattr(module, "dim_head", None)
    if isinstance(dim_head, int) and dim_head > 0:
        return heads, heads * dim_head
    out_features = getattr(getattr(module, "to_q", None), "out_features", None)
    if isinstance(out_features, int) and out_features > 0:
        return heads, out_features
    return heads, heads * 64


def memory_estimate(selected: list, tokens: Mapping, batch: int) -> int:
    """Bytes the Sinkhorn kernel needs at the largest selected layer (layers run one after another).

    Score blocks are bounded by the kernel's memory budget (it streams past it); on top of that come the
    float32 working copies of q, k, v and the output (about six B·N·inner float32 tensors).
    """
    try:
        from asag_lib.sinkhorn import DEFAULT_MEMORY_BUDGET_BYTES as budget
    except ImportError:  # pragma: no cover - kernel module always present in a release
        budget = _FALLBACK_BUDGET
    worst = 0
    for ref, module in selected:
        n = int(tokens[ref])
        heads, inner = attention_width(module)
        scores = min(budget, batch * heads * n * n * 4)
        worst = max(worst, scores + 6 * batch * n * inner * 4)
    return worst


def _tokens_line(tokens: Mapping, h: int, w: int) -> str:
    groups: dict[int, list] = {}
    for ref, n in tokens.items():
        groups.setdefault(n, []).append(ref)
    parts = [f"{n} ({layers.describe(refs)})" for n, refs in sorted(groups.items(), reverse=True)]
    return f"tokens per layer at {w}×{h} latent: " + "; ".join(parts)


def _latent_hw(p: Any, kwargs: Mapping, is_hr_pass: bool) -> tuple[int, int, int]:
    x = kwargs.get("x")
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) == 4:
        return int(shape[0]), int(shape[2]), int(shape[3])
    if is_hr_pass:
        h = getattr(p, "hr_upscale_to_y", 0) or getattr(p, "height", 512)
        w = getattr(p, "hr_upscale_to_x", 0) or getattr(p, "width", 512)
    else:
        h, w = getattr(p, "height", 512), getattr(p, "width", 512)
    return int(getattr(p, "batch_size", 1) or 1), -(-int(h) // 8), -(-int(w) // 8)


# --------------------------------------------------------------------------------------------------
# signals read during sampling


def in_reference_recording() -> bool:
    """True while Forge's reference preprocessor records its attention bank.

    `forge_preprocessor_reference` (Forge main, Neo, reForge and Classic alike) runs the whole sampling
    function once more per step from a conditioning modifier, with its `is_recording_style` flag set for
    exactly that call; every post-CFG function runs inside it. The preprocessors are registered in
    `modules_forge.shared.supported_preprocessors`, so the flag is read there; hosts without it never record.
    """
    shared = sys.modules.get("modules_forge.shared")
    registry = getattr(shared, "supported_preprocessors", None)
    if not isinstance(registry, Mapping):
        return False
    return any(getattr(pre, "is_recording_style", False) is True for pre in registry.values())


def and_factor(cond: list) -> float | torch.Tensor | None:
    """Factor that turns Forge's (cond − weak) into the AND-prompt term Σ_k (w_k / Σ_j w_j)(cond_k − weak_k).

    Forge's calc function returns each prediction as the strength-weighted mean Σ w_k x_k / Σ w_k, so the
    difference is already the weighted mean of per-part differences when Σ w > 0 (factor 1). For Σ w < 0
    ASAG normalises by Σ |w| (README, "AND prompts"), hence Σ w / Σ |w|. Σ w = 0 leaves the host's own cond
    prediction undefined: None (no guidance). Strengths are numbers on the hosts (one per AND part); a
    per-image tensor of strengths gives a per-image factor.
    """
    weights = [entry.get("strength", 1.0) for entry in cond]
    if all(isinstance(w, (int, float)) for w in weights):
        total = float(sum(weights))
        if total > 0:
            return 1.0
        if total == 0:
            return None
        return total / float(sum(abs(w) for w in weights))
    rows = [torch.as_tensor(w, dtype=torch.float64).reshape(-1) for w in weights]
    total = sum(rows)
    if bool((total == 0).any()):
        return None
    if bool((total > 0).all()):
        return 1.0
    return torch.where(total > 0, torch.ones_like(total), total / sum(r.abs() for r in rows))


def _apply_factor(cond_denoised: torch.Tensor, weak: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """A weak prediction whose difference to cond is `factor` times the given one (factor 1: unchanged)."""
    if isinstance(factor, float):
        return weak if factor == 1.0 else cond_denoised - (cond_denoised - weak) * factor
    per_row = factor.to(weak).reshape(-1, *([1] * (weak.ndim - 1)))
    return cond_denoised - (cond_denoised - weak) * per_row


def _pass_sigmas(p: Any, is_hr_pass: bool) -> list[float] | None:
    """The full sigma schedule the coming pass cuts its steps from (Forge main, reForge, Classic), or None.

    Asks the pass's sampler (`p.sampler.get_sigmas`, already created when scripts run) for the schedule
    length the host uses (img2img and hires: `setup_img2img_steps`). `get_sigmas` writes schedule notes
    into the infotext, which the sampler writes again itself: the infotext is restored afterwards.
    """
    get_sigmas = getattr(getattr(p, "sampler", None), "get_sigmas", None)
    if not callable(get_sigmas):
        return None
    steps = int(getattr(p, "steps", 0) or 0)
    img2img = getattr(p, "init_images", None) is not None or hasattr(p, "init_latent")
    if is_hr_pass or img2img:
        try:
            from modules.sd_samplers_common import setup_img2img_steps
        except ImportError:
            return None
        requested = (getattr(p, "hr_second_pass_steps", 0) or steps) if is_hr_pass else None
        steps, _ = setup_img2img_steps(p, requested)
    extra = getattr(p, "extra_generation_params", None)
    saved = dict(extra) if isinstance(extra, dict) else None
    try:
        sigmas = get_sigmas(p, steps)
    finally:
        if saved is not None:
            extra.clear()
            extra.update(saved)
    return [float(s) for s in sigmas.reshape(-1)]


def _second_order(p: Any) -> bool:
    config = getattr(getattr(p, "sampler", None), "config", None)
    return bool((getattr(config, "options", None) or {}).get("second_order", False))


def _call_progress(p: Any) -> tuple[int, int] | None:
    """(model call, expected calls) from the pass's CFG denoiser: samplers without a sigma schedule."""
    denoiser = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
    step, total = getattr(denoiser, "step", None), getattr(denoiser, "total_steps", None)
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        return step, total
    return None


# --------------------------------------------------------------------------------------------------
# the post-CFG function


def _position(clock: StepClock, args: Mapping, sigma: float, p: Any, job: Job) -> tuple[int, int] | None:
    """(step, steps) of this call in its pass; the schedule Neo hands over wins over the precomputed one."""
    if clock.full is None:
        neo = (args.get("model_options") or {}).get("transformer_options", {}).get("sampling_sigmas")
        if neo is not None:
            clock.full = [float(s) for s in neo.reshape(-1)] if hasattr(neo, "reshape") else list(neo)
    found = clock.locate(sigma)
    if found is None:
        found = _call_progress(p)
        if found is not None:
            job.say_once("no sigma schedule for this sampler; Start/End count model calls instead of steps.")
    return found


def attn1_weak_options(replacement: Callable, keys: tuple, job: Job) -> Callable[[Mapping], dict]:
    """UNet models: the weak call's options are a copy of the live ones with ASAG's attn1 replacements."""

    def weak_options(live: Mapping) -> dict:
        shadowed = set((live.get("transformer_options") or {}).get("patches_replace", {}).get("attn1", {}))
        shadowed &= set(keys)
        if shadowed:
            job.say_once(f"{len(shadowed)} selected layer(s) already carry another extension's attn1 "
                         "replacement (reference-only, StyleAlign…); ASAG's Sinkhorn attention takes their "
                         "place in the weak pass only, the main pass keeps theirs.")
        return with_attn1_replacements(live, replacement, keys)

    return weak_options


def make_post_cfg(*, calc: Callable, weak_options: Callable[[Mapping], dict], scale: float, rescale: float,
                  window: tuple[float, float], clock: StepClock, job: Job, p: Any,
                  active: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Callable:
    """The post-CFG function: skip reference recording, gate by step window, one cond-only weak call with
    `weak_options(live options)` inside `active()` (UNets: attn1 replacements; DiTs: see hosts/dit.py)."""
    start, end = window
    begun: list = []  # the pass is registered at its first call: Forge2 builds three functions per hires job

    def asag_post_cfg(args: dict):
        denoised = args["denoised"]
        if in_reference_recording():
            return denoised
        if not begun:
            begun.append(True)
            job.begin_pass()
        sigma = args["sigma"]
        position = _position(clock, args, float(sigma.reshape(-1)[0]), p, job)
        if position is None:
            step = len(begun) - 1
            begun.append(True)
            if (start, end) != (0.0, 1.0):
                job.say_once("this sampler exposes neither a sigma schedule nor a step count; Start/End "
                             "are ignored and every call is guided.")
        else:
            step, steps = position
            if not guidance.in_window(guidance.progress(step, steps), start, end):
                job.step_done(step, WINDOW)
                return denoised
        if job.state.get("failed"):
            job.step_done(step, "the weak pass failed")
            return denoised
        cond = args.get("cond")
        factor = and_factor(cond) if cond else None
        if factor is None:
            job.step_done(step, "no cond prediction (AND weights sum to 0)" if cond else "no cond prediction")
            return denoised
        options = weak_options(args["model_options"])
        try:
            with active():
                weak = calc(args["model"], cond, None, args["input"], sigma, options)[0]
        except Exception as exc:  # interrupts derive from BaseException and pass through
            message = f"the weak pass failed ({type(exc).__name__}: {exc}); ASAG is off for the rest of this job."
            job.state["failed"] = message
            job.weak_pass()
            job.step_done(step, "the weak pass failed")
            report_error(p, message)
            return denoised
        job.weak_pass()
        job.step_done(step)
        weak = _apply_factor(args["cond_denoised"], weak, factor)
        return guidance.combine(denoised, args["cond_denoised"], weak, scale, rescale, x=args["input"])

    setattr(asag_post_cfg, MARK, True)
    return asag_post_cfg


# --------------------------------------------------------------------------------------------------
# entry point


def _hand_back_without_ours(p: Any, unet: Any) -> None:
    """A pass that must not get ASAG but sees a UNet we patched earlier (the first hires call on Forge2
    still holds the base pass's UNet): clone it without our function and hand that back."""
    if carries_ours(unet):
        clean = unet.clone()
        _drop_ours(clean)
        p.sd_model.forge_objects.unet = clean


def _user_error(p: Any, job: Job, message: str) -> None:
    """An error the user caused: one console line, a note in the job's info, ASAG off for the job."""
    job.state["error"] = message
    if message in job.said:
        return
    job.said.add(message)
    strip_infotext(p)
    report_error(p, message)


def _not_applied(p: Any, job: Job, message: str, reason: str) -> None:
    """ASAG cannot run on this model: one console line, and no ASAG claim left in the infotext."""
    job.say_once(message)
    job.skip(reason)
    if not job.guided_steps:
        strip_infotext(p)


def _refiner_note(p: Any, job: Job) -> None:
    """Forge's refiner switch reloads the model without re-running scripts (docs/hosts.md §11.5)."""
    if getattr(p, "refiner_checkpoint_info", None) is None or not getattr(p, "refiner_switch_at", None):
        return
    message = (f"the refiner takes over at {float(p.refiner_switch_at):g} of the steps; Forge re-runs no "
               "script after that switch, so ASAG guides only the steps before it.")
    if job.say_once(message):
        job.skip("the steps after the refiner switch (Forge re-runs no script there)")
        comment = getattr(p, "comment", None)
        if callable(comment):
            comment("ASAG: " + message)


def before_sampling(p: Any, job: Job | None, **kwargs: Any) -> None:
    """Patch the Forge UNet for the coming sampling pass (txt2img, img2img or hires), idempotently.

    No failure in here may leave a claim of ASAG behind: any exception hands back an unpatched UNet,
    removes the ASAG infotext (unless an earlier pass of the job was guided) and says why.
    """
    objects = getattr(getattr(p, "sd_model", None), "forge_objects", None)
    unet = getattr(objects, "unet", None)
    if unet is None:
        if job is not None:
            _not_applied(p, job, "no forge_objects.unet on this model; ASAG skipped.", "no Forge UNet")
        return
    if job is None or job.state.get("error"):
        _hand_back_without_ours(p, unet)
        return
    try:
        _patch(p, job, unet, kwargs)
    except Exception as exc:  # a host API we did not expect: never a traceback, never a false claim
        message = (f"setting up ASAG failed ({type(exc).__name__}: {exc}); ASAG is off for the rest of "
                   "this job.")
        job.state["error"] = message
        job.skip("setting up ASAG failed")
        if not job.guided_steps:
            strip_infotext(p)
        report_error(p, message)
        p.sd_model.forge_objects.unet = unet
        _hand_back_without_ours(p, unet)


def pass_clock(p: Any, is_hr_pass: bool) -> StepClock:
    """The step clock of the coming pass (Neo hands its schedule to each call instead)."""
    try:
        sigmas = None if host_variant() == "neo" else _pass_sigmas(p, is_hr_pass)
    except Exception:  # a sampler without a usable schedule: Start/End fall back to its call count
        sigmas = None
    return StepClock(sigmas, _second_order(p))


def _patch(p: Any, job: Job, unet: Any, kwargs: Mapping) -> None:
    settings = job.settings
    is_hr_pass = bool(getattr(p, "is_hr_pass", False))
    pass_name = "hires" if is_hr_pass else "first"
    if not pass_selected(settings.hires, is_hr_pass):
        if job.say_once(f"not applied to the {pass_name} pass (Hires. fix setting: {settings.hires})."):
            job.skip(f"{pass_name} pass not selected")
        _hand_back_without_ours(p, unet)
        return
    from asag_lib.hosts import dit  # DiT models (Flux, Chroma…) are set up there; lazy: dit imports forge

    if dit.is_dit(unet) and dit.route(p, job, unet, kwargs):
        return
    reason = unsupported_reason(p, unet)
    if reason is not None:
        _not_applied(p, job, reason, "unsupported model")
        _hand_back_without_ours(p, unet)
        return
    flavour = backend_flavour()
    if flavour is None:
        _not_applied(p, job, "no Forge sampling backend found (backend.sampling / ldm_patched); ASAG skipped.",
                     "no Forge sampling backend")
        return
    flavour_name, calc = flavour
    if settings.weak_pass == "batched":
        job.say_once("weak pass 'batched' is an A1111 option; on Forge the weak pass is one cond-only call.")

    diffusion_model = unet.model.diffusion_model
    try:
        selected = layers.resolve(diffusion_model, settings.layers)
        if not selected:
            raise ValueError(f"layer spec {settings.layers!r} selects no attn1 layer on this model")
    except ValueError as exc:
        _user_error(p, job, f"'layers': {exc}")
        _hand_back_without_ours(p, unet)
        return

    keys = tuple(ref.forge_key for ref, _ in selected)
    batch, h, w = _latent_hw(p, kwargs, is_hr_pass)
    rec = telemetry.recorder(job)
    if rec is not None:
        for ref, _ in selected:
            rec.name(ref.forge_key, str(ref))
        telemetry.attach_infotext(p, rec)
    kernel = KernelOptions.from_settings(settings, seed=weak.seed_of(p), latent_hw=(h, w), telemetry=rec)
    post_cfg = make_post_cfg(
        calc=calc, weak_options=attn1_weak_options(make_attn1_replace(kernel), keys, job),
        scale=settings.scale, rescale=settings.rescale, window=(settings.start, settings.end),
        clock=pass_clock(p, is_hr_pass), job=job, p=p,
    )

    tokens = layers.token_counts(diffusion_model, selected, h, w)
    need = memory_estimate(selected, tokens, batch)

    patched = unet.clone()
    _drop_ours(patched)  # never stack: the first hires call may see the base pass's UNet
    patched.set_model_sampler_post_cfg_function(post_cfg)
    preserve = getattr(patched, "add_extra_preserved_memory_during_sampling", None)
    if callable(preserve):
        preserve(need)
        post_cfg.asag_reserved = need
    p.sd_model.forge_objects.unet = patched

    _refiner_note(p, job)
    job.say_once(f"{host_variant()} ({flavour_name} backend); {len(selected)} attn1 layer(s): "
                 f"{layers.describe(selected)}.")
    job.detail(("hires pass: " if is_hr_pass else "") + f"{len(selected)} layers ({layers.describe(selected)}), "
               f"{max(tokens.values())} tokens")
    job.say_once(f"{pass_name} pass: " + _tokens_line(tokens, h, w)
                 + f"; about {need / 2**20:.1f} MiB reserved for the Sinkhorn kernel.")
