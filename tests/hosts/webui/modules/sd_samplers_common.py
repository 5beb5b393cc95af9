"""Test double of modules.sd_samplers_common for these tests; no previews, decoding or torchsde.

The sampler base (initialize, launch_sampling catching InterruptedException), SamplerData, img2img step
arithmetic and the refiner switch (by call count).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from modules import shared


@dataclasses.dataclass(frozen=True)
class SamplerData:
    """name, constructor(model) -> Sampler, aliases, options (e.g. {'second_order': True})."""

    name: str
    constructor: Callable[[Any], Any]
    aliases: list[str]
    options: dict[str, Any]

    def total_steps(self, steps: int) -> int:
        """Model calls the host expects for a pass of `steps` steps (second-order samplers: twice as
        many; their last step, to sigma 0, actually makes one call)."""
        return steps * 2 if self.options.get("second_order") else steps


class InterruptedException(BaseException):
    """Raised by the denoiser when the job is interrupted or skipped; `except Exception` misses it."""


def setup_img2img_steps(p: Any, steps: int | None = None) -> tuple[int, int]:
    """(schedule length, t_enc): img2img runs the last t_enc + 1 steps of a schedule. With an explicit
    `steps` (hires pass) or opts.img2img_fix_steps, exactly that many steps run; otherwise about
    denoising_strength x p.steps."""
    strength = min(float(p.denoising_strength), 0.999)
    if steps is not None or shared.opts.img2img_fix_steps:
        run = steps or p.steps
        length = int(run / strength) if strength > 0 else 0
        return length, run - 1
    return p.steps, int(strength * p.steps)


def _refiner_in_this_pass(p: Any) -> bool:
    """With Hires. fix, opts.hires_fix_refiner_pass picks the pass(es) the refiner may take over."""
    if not getattr(p, "enable_hr", False):
        return True
    which = getattr(shared.opts, "hires_fix_refiner_pass", "second pass")
    return which == "both passes" or (which == "second pass") == bool(p.is_hr_pass)


def apply_refiner(cfg_denoiser: Any, sigma: torch.Tensor | None = None) -> bool:
    """Swap to the refiner checkpoint once the pass is `p.refiner_switch_at` done (by call count).
    Returns True when it switched; the denoiser then re-reads cond/uncond."""
    p = cfg_denoiser.p
    if p is None or not getattr(p, "refiner_checkpoint_info", None) or not p.refiner_switch_at:
        return False
    if not _refiner_in_this_pass(p):
        return False
    done = cfg_denoiser.step / max(cfg_denoiser.total_steps, 1)
    if done < p.refiner_switch_at:
        return False
    target = p.refiner_checkpoint_info
    if shared.sd_model.sd_checkpoint_info is target:
        return False
    p.extra_generation_params["Refiner"] = target.short_title
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at

    from modules import sd_models

    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=target)
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True


class Sampler:
    """What both sampler families share: the CFG denoiser (`model_wrap_cfg`), `sampler_extra_args`,
    `last_latent`, `initialize(p)` and `launch_sampling`."""

    def __init__(self, funcname: str) -> None:
        self.__dict__.update(funcname=funcname, func=None, model_wrap=None, model_wrap_cfg=None, sampler_extra_args={},
                             last_latent=None, config=None, p=None, eta=None, s_min_uncond=0.0, stop_at=None,
                             conditioning_key="crossattn")

    def callback_state(self, d: dict) -> None:
        """Per-step callback: progress and the live latent."""
        shared.state.sampling_step = d["i"]
        self.last_latent = d["denoised"]

    def launch_sampling(self, steps: int, func: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run `func`; an interrupt (InterruptedException) ends it early with the last latent."""
        shared.state.sampling_steps, shared.state.sampling_step = steps, 0
        try:
            result = func()
        except InterruptedException:  # interrupted or skipped: keep what was sampled so far
            result = self.last_latent
        return result

    def number_of_needed_noises(self, p: Any) -> int:
        return p.steps

    def initialize(self, p: Any) -> dict:
        """Hand the job to the CFG denoiser (p, inpainting mask, step counters)."""
        self.p = p
        denoiser = self.model_wrap_cfg
        denoiser.p = p
        denoiser.mask = getattr(p, "mask", None)
        denoiser.nmask = getattr(p, "nmask", None)
        denoiser.init_latent = getattr(p, "init_latent", None)
        denoiser.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        denoiser.step = 0
        self.s_min_uncond = p.s_min_uncond if p.s_min_uncond is not None else shared.opts.s_min_uncond
        self.eta = p.eta
        return {}

    def _launch(self, p: Any, start: torch.Tensor, schedule: torch.Tensor, conditioning: Any,
                unconditional_conditioning: Any, image_conditioning: Any, steps: int, **func_kwargs: Any) -> torch.Tensor:
        """Prepare the denoiser for one pass of `steps` sampler steps over `schedule` (the steps, and the
        model calls expected for them) and run `self.func`."""
        self.initialize(p)
        denoiser = self.model_wrap_cfg
        denoiser.steps, denoiser.total_steps = steps, self.config.total_steps(steps)
        self.last_latent = start.clone()
        self.sampler_extra_args = dict(cond=conditioning, image_cond=image_conditioning, uncond=unconditional_conditioning,
                                       cond_scale=p.cfg_scale, s_min_uncond=self.s_min_uncond)

        def run() -> torch.Tensor:
            return self.func(denoiser, start, schedule, extra_args=self.sampler_extra_args,
                             callback=self.callback_state, **func_kwargs)

        return self.launch_sampling(steps, run)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError("txt2img sampling is up to the sampler family")

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        raise NotImplementedError("img2img sampling is up to the sampler family")

    def add_infotext(self, p: Any) -> None:
        """The double's samplers add nothing to the infotext."""
