"""Test double of modules.sd_samplers_timesteps written for these tests: DDIM (eta 0) on uniformly
spaced timesteps. The model returns eps and the denoiser's `sigma` argument is a timestep; the inpainting
blend happens on the input (mask_before_denoising). Leaves out PLMS, UniPC, DDIM CFG++ and v-models."""

from __future__ import annotations

from typing import Any

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared


class CompVisTimestepsDenoiser(torch.nn.Module):
    """eps view of the model: `wrapper(x, timesteps, cond=...)` is `apply_model(x, timesteps, cond)`."""

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.inner_model = model

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(sd_samplers_cfg_denoiser.CFGDenoiser):
    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in: torch.Tensor, x_out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 from eps at timestep `sigma`."""
        a = shared.sd_model.alphas_cumprod[sigma.long()].reshape(-1, *([1] * (x_in.dim() - 1)))
        return (x_in - (1 - a).sqrt() * x_out) / a.sqrt()

    @property
    def inner_model(self) -> CompVisTimestepsDenoiser:
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """Deterministic DDIM from the last timestep down; `timesteps` ascending."""
    extra_args = extra_args or {}
    alphas = shared.sd_model.alphas_cumprod
    ones = x.new_ones(x.shape[0])
    steps = list(reversed(timesteps.tolist()))
    for i, t in enumerate(steps):
        a_now = alphas[t]
        a_next = alphas[steps[i + 1]] if i + 1 < len(steps) else alphas[0]
        eps = model(x, ones * t, **extra_args)
        x0 = (x - (1 - a_now).sqrt() * eps) / a_now.sqrt()
        if callback is not None:
            callback({"x": x, "i": i, "sigma": t, "sigma_hat": t, "denoised": x0})
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


_FUNCTIONS = {"ddim": ddim}


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: str, sd_model: Any) -> None:
        super().__init__(funcname)
        self.func = _FUNCTIONS[funcname]
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p: Any, steps: int) -> torch.Tensor:
        """`steps` evenly spaced timesteps in [1, 999], ascending."""
        stride = max(1000 // steps, 1)
        return torch.arange(steps) * stride + 1

    def _run(self, p, x, timesteps, conditioning, unconditional_conditioning, image_conditioning):
        self.initialize(p)
        self.model_wrap_cfg.steps = p.steps
        self.model_wrap_cfg.total_steps = len(timesteps)
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond,
        }
        return self.launch_sampling(len(timesteps), lambda: self.func(
            self.model_wrap_cfg, x, timesteps, extra_args=self.sampler_extra_args, callback=self.callback_state))

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        timesteps = self.get_timesteps(p, steps or p.steps)
        return self._run(p, x, timesteps, conditioning, unconditional_conditioning, image_conditioning)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        length, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, length)[: t_enc + 1]
        a = shared.sd_model.alphas_cumprod[timesteps[-1]]
        start = a.sqrt() * x + (1 - a).sqrt() * noise
        return self._run(p, start, timesteps, conditioning, unconditional_conditioning, image_conditioning)


samplers_timesteps = [("DDIM", "ddim", ["ddim"], {})]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, (lambda model, name=funcname: CompVisSampler(name, model)), aliases, options)
    for label, funcname, aliases, options in samplers_timesteps
]
