"""Forge-family adapter: Forge2 (`backend.*`, current main, Neo) and the `ldm_patched` hosts (old Forge,
reForge, Forge Classic).

One entry point, `before_sampling(p, job, **kwargs)`, called from the script's
`process_before_every_sampling`. It clones `p.sd_model.forge_objects.unet`, adds ONE post-CFG function and
hands the clone back. The post-CFG function computes the weak prediction with one cond-only
`calc_cond_uncond_batch` call whose `model_options` are a copy (every nested level touched) carrying
explicit 3-tuple attn1 replacements for the selected layers, and returns
`denoised + s·(cond_denoised − weak)` (exact in x0 space, see `guidance`). The live `model_options` are
never mutated (Forge's built-in PAG had that bug, docs/hosts.md §12.3).

Host modules are imported inside functions only; importing this module needs no WebUI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from asag_lib import guidance, layers, telemetry, weak
from asag_lib.attention import KernelOptions, make_attn1_replace
from asag_lib.hosts.job import Job, pass_selected, report_error, strip_infotext

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


def percent_to_sigma_fn(model: Any) -> Callable[[float], float] | None:
    """`model.predictor.percent_to_sigma` (Forge2) or `model.model_sampling.percent_to_sigma` (ldm_patched)."""
    for attr in ("predictor", "model_sampling"):
        fn = getattr(getattr(model, attr, None), "percent_to_sigma", None)
        if callable(fn):
            return fn
    return None


def unsupported_reason(p: Any, unet: Any) -> str | None:
    """Why this model cannot take attn1 replacements (Flux, SD3, other DiTs), or None for a UNet."""
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
        heads = int(getattr(module, "heads", 1))
        inner = int(module.to_q.out_features)
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
# the post-CFG function


def make_post_cfg(*, calc: Callable, replacement: Callable, keys: tuple, scale: float, rescale: float,
                  window: tuple[float, float], job: Job, p: Any) -> Callable:
    """The post-CFG function: gate by sigma window, one cond-only weak call, combine."""

    def asag_post_cfg(args: dict):
        denoised = args["denoised"]
        if job.state.get("failed"):
            return denoised
        sigma = args["sigma"]
        if not guidance.in_sigma_window(float(sigma.reshape(-1)[0]), window):
            return denoised
        cond = args.get("cond")
        if not cond:
            return denoised
        live = args["model_options"]
        shadowed = set((live.get("transformer_options") or {}).get("patches_replace", {}).get("attn1", {}))
        shadowed &= set(keys)
        if shadowed:
            job.say_once(f"{len(shadowed)} selected layer(s) already carry another extension's attn1 "
                         "replacement (reference-only, StyleAlign…); ASAG's Sinkhorn attention takes their "
                         "place in the weak pass only, the main pass keeps theirs.")
        options = with_attn1_replacements(live, replacement, keys)
        try:
            weak = calc(args["model"], cond, None, args["input"], sigma, options)[0]
        except Exception as exc:  # interrupts derive from BaseException and pass through
            message = f"the weak pass failed ({type(exc).__name__}: {exc}); ASAG is off for the rest of this job."
            job.state["failed"] = message
            report_error(p, message)
            return denoised
        return guidance.combine(denoised, args["cond_denoised"], weak, scale, rescale)

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


def before_sampling(p: Any, job: Job | None, **kwargs: Any) -> None:
    """Patch the Forge UNet for the coming sampling pass (txt2img, img2img or hires), idempotently."""
    objects = getattr(getattr(p, "sd_model", None), "forge_objects", None)
    unet = getattr(objects, "unet", None)
    if unet is None:
        if job is not None:
            job.say_once("no forge_objects.unet on this model; ASAG skipped.")
        return
    if job is None or job.state.get("error"):
        _hand_back_without_ours(p, unet)
        return
    settings = job.settings
    is_hr_pass = bool(getattr(p, "is_hr_pass", False))
    pass_name = "hires" if is_hr_pass else "first"
    if not pass_selected(settings.hires, is_hr_pass):
        job.say_once(f"not applied to the {pass_name} pass (Hires. fix setting: {settings.hires}).")
        _hand_back_without_ours(p, unet)
        return
    reason = unsupported_reason(p, unet)
    if reason is not None:
        job.say_once(reason)
        _hand_back_without_ours(p, unet)
        return
    flavour = backend_flavour()
    if flavour is None:
        job.say_once("no Forge sampling backend found (backend.sampling / ldm_patched); ASAG skipped.")
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

    to_sigma = percent_to_sigma_fn(unet.model)
    if to_sigma is None:
        if (settings.start, settings.end) != (0.0, 1.0):
            job.say_once("this host exposes no percent_to_sigma; the start/end window is ignored.")
        window = (float("inf"), float("-inf"))
    else:
        window = guidance.sigma_window(settings.start, settings.end, to_sigma)

    keys = tuple(ref.forge_key for ref, _ in selected)
    batch, h, w = _latent_hw(p, kwargs, is_hr_pass)
    rec = telemetry.recorder(job)
    if rec is not None:
        for ref, _ in selected:
            rec.name(ref.forge_key, str(ref))
        telemetry.attach_infotext(p, rec)
    kernel = KernelOptions.from_settings(settings, seed=weak.seed_of(p), latent_hw=(h, w), telemetry=rec)
    post_cfg = make_post_cfg(
        calc=calc, replacement=make_attn1_replace(kernel), keys=keys,
        scale=settings.scale, rescale=settings.rescale, window=window, job=job, p=p,
    )

    patched = unet.clone()
    _drop_ours(patched)  # never stack: the first hires call may see the base pass's UNet
    patched.set_model_sampler_post_cfg_function(post_cfg)

    tokens = layers.token_counts(diffusion_model, selected, h, w)
    preserve = getattr(patched, "add_extra_preserved_memory_during_sampling", None)
    need = memory_estimate(selected, tokens, batch)
    if callable(preserve):
        preserve(need)
        post_cfg.asag_reserved = need
    p.sd_model.forge_objects.unet = patched

    job.say_once(f"{flavour_name} backend; {len(selected)} attn1 layer(s): {layers.describe(selected)}.")
    job.say_once(f"{pass_name} pass: " + _tokens_line(tokens, h, w)
                 + f"; about {need / 2**20:.1f} MiB reserved for the Sinkhorn kernel.")
