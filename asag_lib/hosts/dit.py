"""DiT (transformer) models on the Forge family: which family, route to its hook, or say why not.

Called from ``forge.before_sampling`` when the diffusion model is not a UNet. Supported (Forge Neo): Flux,
Chroma and Qwen-Image through :mod:`asag_lib.hosts.dit_flux` (block replacement), Anima through
:mod:`asag_lib.hosts.dit_swap` (per-instance ``attn_op`` swap around the weak call). The other families
Neo runs are refused with one console line and no ASAG infotext (reasons in :data:`REFUSED`, README).

Guidance is the UNet path's, through ``forge.make_post_cfg``: one post-CFG function, one cond-only weak
call with copied model options, ``denoised + s·(cond − weak)`` in x0 space (linear, so exact for
flow-matching velocity models too), Start/End as a fraction of the sampling steps (``forge_steps``), the
reference recording call skipped, the job's step counters and summary line. At CFG 1 (guidance-distilled
Flux) Neo still calls ``sampling_function_inner``, which drops only the uncond pass and still runs every
post-CFG function, so the weak pass runs without ``disable_cfg1_optimization`` (setting it would add an
uncond pass ASAG does not need).
"""

from __future__ import annotations

from typing import Any

from asag_lib import layers
from asag_lib.attention import KernelOptions
from asag_lib.hosts import dit_swap, forge
from asag_lib.hosts.dit_flux import WeakPassHook, attention_module
from asag_lib.hosts.job import Job, strip_infotext

#: Neo's other DiT families (class name of the diffusion model) and why ASAG does not run on them yet.
REFUSED: dict[str, str] = {
    "NextDiT": "Lumina-2 / Z-Image are not supported yet (no patch hook: per-instance JointAttention swap "
    "not written)",
    "WanModel": "Wan is not supported yet (spatio-temporal attention; per-block swap not written)",
    "MiniTrainDIT": "this Cosmos-style model (MiniTrainDIT without Anima's adapter) is not supported",
}

_SOFTMAX_BUDGET = 64 * 2**20


def is_dit(unet: Any) -> bool:
    """Whether the patcher's diffusion model is not a UNet (no input/middle/output blocks)."""
    model = getattr(getattr(unet, "model", None), "diffusion_model", None)
    return model is not None and not hasattr(model, "input_blocks")


def route(p: Any, job: Job, unet: Any, kwargs: dict) -> bool:
    """Handle a DiT: set up ASAG (supported family) or refuse it with one line. False for a model this
    module does not know (the caller's generic refusal applies)."""
    model = unet.model.diffusion_model
    name = type(model).__name__
    family = layers.FAMILIES.get(name)
    if family is not None and family.name == "anima":
        module = dit_swap if dit_swap.swappable(model, family) else None
    else:
        module = attention_module(model, family) if family is not None else None
    if module is not None:
        _before_sampling(p, job, unet, model, family, module, kwargs)
        return True
    reason = REFUSED.get(name) or (
        f"this {family.label} model's blocks do not have the structure ASAG knows (Neo, Feb. 2026)"
        if family is not None else None)
    if reason is not None:
        job.say_once(f"{reason}; ASAG is skipped: no extra pass is run.")
        strip_infotext(p)
        forge._hand_back_without_ours(p, unet)
        return True
    return False


def memory_estimate(model: Any, batch: int, h: int, w: int) -> int:
    """Bytes for the joint kernel at the largest block: the kernel's and the softmax parts' score budgets
    plus about eight float32 (B, L, hidden) working tensors (text length unknown here: 512 assumed)."""
    from asag_lib.sinkhorn import DEFAULT_MEMORY_BUDGET_BYTES

    patch = int(getattr(model, "patch_size", 2) or 2)
    tokens = -(-h // patch) * -(-w // patch) + 512
    hidden = int(getattr(model, "hidden_size", 3072) or 3072)
    return DEFAULT_MEMORY_BUDGET_BYTES + _SOFTMAX_BUDGET + 8 * batch * tokens * hidden * 4


def _before_sampling(p: Any, job: Job, unet: Any, model: Any, family: layers.DitFamily, module: Any,
                     kwargs: dict) -> None:
    settings = job.settings
    flavour = forge.backend_flavour()
    if flavour is None:
        job.say_once("no Forge sampling backend found (backend.sampling / ldm_patched); ASAG skipped.")
        return
    _, calc = flavour
    try:
        selected = layers.resolve_dit(model, family, settings.layers)
        if not selected:
            raise ValueError(f"layer spec {settings.layers!r} selects no block on this model")
    except ValueError as exc:
        forge._user_error(p, job, f"'layers': {exc}")
        forge._hand_back_without_ours(p, unet)
        return
    refs = [ref for ref, _ in selected]
    kernel = KernelOptions.from_settings(settings)
    if module is dit_swap:
        hook = dit_swap.SwapHook(family, refs, model, kernel)
    else:
        hook = WeakPassHook(family, refs, module, kernel, settings.joint)
    is_hr_pass = bool(getattr(p, "is_hr_pass", False))
    post_cfg = forge.make_post_cfg(calc=calc, weak_options=hook.options, active=hook.active, scale=settings.scale,
                                   rescale=settings.rescale, window=(settings.start, settings.end),
                                   clock=forge.pass_clock(p, is_hr_pass), job=job, p=p)
    patched = unet.clone()
    forge._drop_ours(patched)
    patched.set_model_sampler_post_cfg_function(post_cfg)
    batch, h, w = forge._latent_hw(p, kwargs, is_hr_pass)
    need = memory_estimate(model, batch, h, w)
    preserve = getattr(patched, "add_extra_preserved_memory_during_sampling", None)
    if callable(preserve):
        preserve(need)
        post_cfg.asag_reserved = need
    p.sd_model.forge_objects.unet = patched

    chosen = layers.describe_dit(refs)
    why = (f" ('{settings.layers}' is the UNet default; on {family.label} it stands for this family's "
           f"default, '{layers.DIT_DEFAULT_PRESET}')" if layers.uses_unet_default(settings.layers) else "")
    joint = (f"joint attention '{settings.joint}'" if module is not dit_swap
             else "self-attention over image tokens (no joint attention: 'joint' does not apply)")
    job.say_once(f"{family.label} (DiT): ASAG at {len(refs)} block(s): {chosen}{why}; {joint}.")
