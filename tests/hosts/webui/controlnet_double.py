"""Test double of sd-webui-controlnet's UNet hook (scripts/hook.py) for these tests; no real control nets.

Modelled on hosts.md section 5: cond/uncond marking of the prompt conds, an instance-level UNet forward
for the job, a guidance-window callback, and two kinds of unit. A "plain" unit adds a control computed
from the current call (broadcast hint; `cfg_injection` limits it to cond rows); a "reference" unit caches
its hint latent at the first call's batch size and re-runs a write pass in every call, so a later call
with another batch size fails with torch's "Sizes of tensors must match". Preprocessors, IP-Adapter,
Revision and the inpaint hijacks are left out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from modules import prompt_parser, script_callbacks

MARK = 1024.0
"""Value of the marker token: +MARK on positive conds, -MARK on negative ones."""


class ControlUnit:
    """One ControlNet unit of a job."""

    def __init__(self, kind: str = "plain", weight: float = 1.0, hint: torch.Tensor | None = None,
                 cfg_injection: bool = False, guidance_start: float = 0.0, guidance_end: float = 1.0) -> None:
        if kind not in ("plain", "reference"):
            raise ValueError(f"unknown unit kind {kind!r}")
        self.kind, self.weight, self.hint = kind, weight, hint
        self.cfg_injection = cfg_injection
        self.guidance_start = guidance_start
        self.guidance_end = guidance_end
        self.guidance_stopped = False
        self.write_passes = 0
        self.used_hint_cond_latent: torch.Tensor | None = None

    def hint_latent(self, like: torch.Tensor) -> torch.Tensor:
        """The hint as a [1, C, h, w] latent at the size of `like` (a fixed pattern when no hint is given)."""
        if self.hint is None:
            gen = torch.Generator().manual_seed(4321)
            base = torch.randn(1, like.shape[1], 8, 8, generator=gen)
        else:
            base = torch.as_tensor(self.hint, dtype=like.dtype).reshape(1, -1, *self.hint.shape[-2:])
            base = base[:, :1].expand(1, like.shape[1], -1, -1)
        return F.interpolate(base.to(like.dtype), size=like.shape[-2:], mode="nearest")


# ---------------------------------------------------------------------------------------------------
# cond marking


def _with_marker(cond: Any, positive: bool) -> Any:
    if isinstance(cond, dict):  # SDXL: only the cross-attention tokens carry the marker
        return {**cond, "crossattn": _with_marker(cond["crossattn"], positive)}
    marker = cond.new_full((1, cond.shape[-1]), MARK if positive else -MARK)
    return torch.cat([marker, cond], dim=0)


def mark_prompt_context(x: Any, positive: bool) -> Any:
    """A copy of the conds (lists, multicond and scheduled conds alike) with one marker token prepended."""
    if isinstance(x, list):
        return [mark_prompt_context(item, positive) for item in x]
    if isinstance(x, prompt_parser.MulticondLearnedConditioning):
        return prompt_parser.MulticondLearnedConditioning(x.shape, mark_prompt_context(x.batch, positive))
    if isinstance(x, prompt_parser.ComposableScheduledPromptConditioning):
        return prompt_parser.ComposableScheduledPromptConditioning(mark_prompt_context(x.schedules, positive), x.weight)
    if isinstance(x, prompt_parser.ScheduledPromptConditioning):
        return prompt_parser.ScheduledPromptConditioning(x.end_at_step, _with_marker(x.cond, positive))
    return x


def unmark_prompt_context(context: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int], torch.Tensor]:
    """(cond_mark [B,1,1,1] with 1 for cond rows, uncond row indices, cond row indices, context without
    the marker). An unmarked context counts as all cond."""
    first = context[:, 0, :]
    marked = bool(((first.abs() - MARK).abs() < 1e-3).all())
    if not marked:
        mark = context.new_ones(context.shape[0])
        rest = context
    else:
        mark = (first.mean(dim=-1) > 0).to(context.dtype)
        rest = context[:, 1:]
    c_rows = [i for i, m in enumerate(mark.tolist()) if m > 0.5]
    uc_rows = [i for i, m in enumerate(mark.tolist()) if m <= 0.5]
    return mark.reshape(-1, 1, 1, 1), uc_rows, c_rows, rest


# ---------------------------------------------------------------------------------------------------
# the hook


class UnetHook:
    """Installed on the job's UNet by the extension script's process(); `restore()` takes it off.
    `calls` records (batch size, cond_mark list) of every UNet call it saw."""

    def __init__(self, units: list[ControlUnit]) -> None:
        self.units = list(units)
        self.calls: list[tuple[int, list[float]]] = []
        self.model: torch.nn.Module | None = None
        self.process: Any = None
        self.cond_mark: torch.Tensor | None = None

    def hook(self, model: torch.nn.Module, process: Any) -> None:
        self.model = model
        self.process = process
        original_sample = process.sample

        def sample_with_marked_conds(conditioning, unconditional_conditioning, *args, **kwargs):
            for name, positive in (("hr_c", True), ("hr_uc", False)):
                if getattr(process, name, None) is not None:
                    setattr(process, name, mark_prompt_context(getattr(process, name), positive))
            return original_sample(mark_prompt_context(conditioning, True),
                                   mark_prompt_context(unconditional_conditioning, False), *args, **kwargs)

        process.sample = sample_with_marked_conds
        model.forward = self._make_forward(model)
        script_callbacks.on_cfg_denoiser(self.guidance_schedule_handler)

    def _make_forward(self, model: torch.nn.Module):
        def forward_with_control(x, timesteps=None, context=None, y=None, **kwargs):
            mark, _, _, context = unmark_prompt_context(context)
            self.cond_mark = mark
            self.calls.append((x.shape[0], mark.flatten().tolist()))
            out = type(model).forward(model, x, timesteps=timesteps, context=context, y=y, **kwargs)
            for unit in self.units:
                if not unit.guidance_stopped:
                    out = out + self._control(unit, x, mark)
            return out

        return forward_with_control

    def _control(self, unit: ControlUnit, x: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
        if unit.kind == "reference":
            if unit.used_hint_cond_latent is None:
                unit.used_hint_cond_latent = unit.hint_latent(x).expand(x.shape[0], -1, -1, -1).clone()
            unit.write_passes += 1
            bank = unit.used_hint_cond_latent.flatten(2).transpose(1, 2)
            own = x.flatten(2).transpose(1, 2)
            read = torch.cat([own, bank], dim=1)  # the reference tokens join this call's tokens
            return unit.weight * 0.05 * read.mean(dim=1)[:, :, None, None]
        control = unit.weight * 0.05 * unit.hint_latent(x)
        return control * mark if unit.cfg_injection else control

    def guidance_schedule_handler(self, params: Any) -> None:
        done = params.sampling_step / max(params.total_sampling_steps, 1)
        for unit in self.units:
            unit.guidance_stopped = not (unit.guidance_start <= done <= unit.guidance_end)

    def restore(self) -> None:
        script_callbacks.remove_callbacks_for_function(self.guidance_schedule_handler)
        if self.model is not None and "forward" in vars(self.model):
            del self.model.forward
        if self.process is not None and "sample" in vars(self.process):
            del self.process.sample
        self.model = self.process = None
