"""Test double of backend/sampling/sampling_function.py for these tests; no areas, masks, VRAM split.

What it models (docs/hosts.md §11.1–§11.4, §14):

* ``calc_cond_uncond_batch``: every cond/uncond entry is one chunk of the batch; compatible chunks go through
  ONE model call (chunk-major rows), with a per-call shallow copy of ``transformer_options`` carrying
  ``cond_or_uncond``, ``sigmas``, ``cond_mark``, ``cond_indices`` and ``uncond_indices``; a ``control`` found
  on the entries is given those options and evaluated once per call; ``uncond=None`` gives zeros.
* ``sampling_function_inner``: drops uncond at CFG ≈ 1 (unless ``disable_cfg1_optimization``), pre-CFG
  functions, the CFG mix (or ``sampler_cfg_function``), then each post-CFG function with the documented
  ``args`` dict (no ``cond_scale``; ``uncond`` is the original list).
* ``sampling_function``: the entry point of Forge's CFGDenoiser: compile conditions, attach
  ``controlnet_linked_list`` as ``control``, run conditioning modifiers, return (denoised, cond, uncond).
* The CFG mix multiplies by the summed AND strengths when that sum is not 1 (hosts' ``edit_strength``).
* Forge Neo (``modules_forge.forge_version.version == "neo"``, hosts.md §11.4, §11.8 and the appendix):
  ``sampling_function(..., extra_model_options)`` merges those into the patcher's options (nested dicts
  merged, lists concatenated, other values replaced) and post-CFG ``args`` carry ``cond_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from modules_forge import forge_version

from backend.sampling.condition import compile_conditions, compile_weighted_conditions

COND, UNCOND = 0, 1


def _row_weight(strength: Any, like: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(strength, dtype=like.dtype, device=like.device)
    return w.reshape(-1, *([1] * (like.ndim - 1))) if w.ndim else w.reshape([1] * like.ndim)


def _compatible_groups(chunks: Iterable[tuple[int, dict]]) -> list[list[tuple[int, dict]]]:
    """Chunks that can share one model call: same token shape, same y presence, same control chain."""
    groups: dict[tuple, list] = {}
    for marker, entry in chunks:
        conds = entry["model_conds"]
        signature = (tuple(conds["c_crossattn"].shape[1:]), "y" in conds, id(entry.get("control")))
        groups.setdefault(signature, []).append((marker, entry))
    return list(groups.values())


def _run_chunks(model: Any, group: list[tuple[int, dict]], x_in: torch.Tensor, timestep: torch.Tensor,
                model_options: dict) -> tuple[torch.Tensor, ...]:
    """One model call for a group of chunks; returns one prediction per chunk."""
    n = len(group)
    per_chunk = x_in.shape[0]
    markers = [marker for marker, _ in group]
    x = torch.cat([x_in] * n)
    t = torch.cat([timestep] * n)
    inputs: dict[str, Any] = {"c_crossattn": torch.cat([e["model_conds"]["c_crossattn"] for _, e in group])}
    if "y" in group[0][1]["model_conds"]:
        inputs["y"] = torch.cat([e["model_conds"]["y"] for _, e in group])

    mark = torch.tensor(markers).repeat_interleave(per_chunk)
    options = dict(model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = markers
    options["sigmas"] = t
    options["cond_mark"] = mark
    options["cond_indices"] = [i for i, m in enumerate(markers) if m == COND]
    options["uncond_indices"] = [i for i, m in enumerate(markers) if m == UNCOND]
    inputs["transformer_options"] = options

    chain = group[0][1].get("control")
    unit = chain
    while unit is not None:
        unit.transformer_options = options
        unit = unit.previous_controlnet
    if chain is not None:
        inputs["control"] = chain.get_control(x, t, inputs, n)

    wrapper = model_options.get("model_function_wrapper")
    if wrapper is not None:
        out = wrapper(model.apply_model, {"input": x, "timestep": t, "c": inputs, "cond_or_uncond": markers})
    else:
        out = model.apply_model(x, t, **inputs)
    return out.chunk(n)


def calc_cond_uncond_batch(model: Any, cond: list, uncond: list | None, x_in: torch.Tensor,
                           timestep: torch.Tensor, model_options: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond prediction, uncond prediction), each the strength-weighted mean over its entries."""
    chunks = [(COND, e) for e in cond] + [(UNCOND, e) for e in (uncond or [])]
    sums = {COND: torch.zeros_like(x_in), UNCOND: torch.zeros_like(x_in)}
    weights = {COND: torch.zeros_like(x_in), UNCOND: torch.zeros_like(x_in)}
    for group in _compatible_groups(chunks):
        for (marker, entry), pred in zip(group, _run_chunks(model, group, x_in, timestep, model_options),
                                         strict=True):
            w = _row_weight(entry.get("strength", 1.0), pred)
            sums[marker] = sums[marker] + pred * w
            weights[marker] = weights[marker] + w
    result = []
    for marker in (COND, UNCOND):
        seen = weights[marker] != 0  # the hosts divide by the summed strengths, negative sums included
        result.append(torch.where(seen, sums[marker] / torch.where(seen, weights[marker], 1.0), sums[marker]))
    return result[0], result[1]


def sampling_function_inner(model: Any, x: torch.Tensor, timestep: torch.Tensor, uncond: list | None,
                            cond: list, cond_scale: float, model_options: dict | None = None,
                            seed: int | None = None, return_full: bool = False):
    """CFG with pre/post functions; ``denoised`` or (denoised, cond_pred, uncond_pred)."""
    model_options = {} if model_options is None else model_options
    at_cfg_one = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    negatives = None if at_cfg_one else uncond

    for pre in model_options.get("sampler_pre_cfg_function", []):
        model, cond, negatives, x, timestep, model_options = pre(model, cond, negatives, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, negatives, x, timestep, model_options)

    custom_cfg = model_options.get("sampler_cfg_function")
    summed = sum(entry.get("strength", 1.0) for entry in cond)
    if custom_cfg is None:
        mix = cond_scale if _is_one(summed) else _row_weight(summed, cond_pred) * cond_scale
        denoised = uncond_pred + (cond_pred - uncond_pred) * mix
    else:
        noise_like = custom_cfg({"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale,
                                 "timestep": timestep, "input": x, "sigma": timestep, "cond_denoised": cond_pred,
                                 "uncond_denoised": uncond_pred, "model": model, "model_options": model_options})
        denoised = x - noise_like

    for post in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": denoised, "cond": cond, "uncond": uncond, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}
        if forge_version.version == "neo":
            args["cond_scale"] = cond_scale
        denoised = post(args)

    return (denoised, cond_pred, uncond_pred) if return_full else denoised


def _is_one(value: Any) -> bool:
    return bool(torch.all(torch.isclose(torch.as_tensor(value, dtype=torch.float64), torch.tensor(1.0,
                                                                                              dtype=torch.float64))))


def merged_options(base: dict, extra: dict | None) -> dict:
    """Neo's merge of ``extra_model_options`` into a copy of the patcher's options."""
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merged_options(out[key], value)
        elif isinstance(out.get(key), list) and isinstance(value, list):
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


def sampling_function(self: Any, denoiser_params: Any, cond_scale: float, cond_composition: list,
                      extra_model_options: dict | None = None):
    """Forge2's CFGDenoiser body: returns (denoised, cond_pred, uncond_pred). ``extra_model_options``
    exists on Neo only."""
    unet = self.inner_model.inner_model.forge_objects.unet
    model = unet.model
    model_options = unet.model_options
    if forge_version.version == "neo":
        model_options = merged_options(model_options, extra_model_options)
    elif extra_model_options is not None:
        raise TypeError("sampling_function() got an unexpected argument 'extra_model_options'")
    x, timestep = denoiser_params.x, denoiser_params.sigma
    negative = compile_conditions(denoiser_params.text_uncond)
    positive = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    chain = unet.controlnet_linked_list
    for entry in [*positive, *(negative or [])] if chain is not None else []:
        entry["control"] = chain
    job_seed = self.p.seeds[0]
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, negative, positive, cond_scale, model_options, job_seed = modifier(
            model, x, timestep, negative, positive, cond_scale, model_options, job_seed)
    return sampling_function_inner(model, x, timestep, negative, positive, cond_scale, model_options, job_seed,
                                   return_full=True)
