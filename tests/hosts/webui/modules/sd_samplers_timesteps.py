"""Test double of modules.sd_samplers_timesteps for these tests; DDIM (eta 0) only.

The model returns eps and the denoiser's `sigma` argument is a timestep; the inpainting blend happens on
the input (mask_before_denoising). Leaves out PLMS, UniPC, DDIM CFG++ and v-models.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared


class CompVisTimestepsDenoiser(torch.nn.Module):
    """eps view of the model: `wrapper(x, timesteps, cond=...)` is `apply_model(x, timesteps, cond)`."""

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.inner_model = model

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        eps = self.inner_model.apply_model(input, timesteps, **kwargs)
        return eps


class CFGDenoiserTimesteps(sd_samplers_cfg_denoiser.CFGDenoiser):
    mask_before_denoising = True

    def get_pred_x0(self, x_in: torch.Tensor, x_out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 from eps at timestep `sigma`."""
        a = shared.sd_model.alphas_cumprod[sigma.long()].reshape(-1, *([1] * (x_in.dim() - 1)))
        return (x_in - (1 - a).sqrt() * x_out) / a.sqrt()

    wrapper_class = CompVisTimestepsDenoiser


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """Deterministic DDIM from the last timestep down; `timesteps` ascending."""
    alphas = shared.sd_model.alphas_cumprod
    ones = x.new_ones(x.shape[0])
    descending = timesteps.flip(0).tolist()
    for i, (t, t_next) in enumerate(itertools.pairwise([*descending, 0])):
        eps = model(x, ones * t, **(extra_args or {}))
        x0 = (x - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()
        if callback:
            callback({"x": x, "i": i, "sigma": t, "sigma_hat": t, "denoised": x0})
        x = alphas[t_next].sqrt() * x0 + (1 - alphas[t_next]).sqrt() * eps
    return x


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: str, sd_model: Any) -> None:
        super().__init__(funcname)
        self.func = ddim
        self.model_wrap_cfg = denoiser = CFGDenoiserTimesteps(self)
        self.model_wrap = denoiser.inner_model

    def get_timesteps(self, p: Any, steps: int) -> torch.Tensor:
        """`steps` evenly spaced timesteps in [1, 999], ascending."""
        stride = max(1000 // steps, 1)
        return torch.arange(steps) * stride + 1

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        timesteps = self.get_timesteps(p, steps or p.steps)
        return self._launch(p, x, timesteps, conditioning, unconditional_conditioning, image_conditioning,
                            len(timesteps))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        """From `x` noised to timestep t_enc, over the first t_enc + 1 timesteps (descending)."""
        length, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, length)[: t_enc + 1]
        a = shared.sd_model.alphas_cumprod[timesteps[-1]]
        start = a.sqrt() * x + (1 - a).sqrt() * noise
        return self._launch(p, start, timesteps, conditioning, unconditional_conditioning, image_conditioning,
                            len(timesteps))


samplers_timesteps: list[tuple[str, str, list[str], dict[str, Any]]] = [("DDIM", "ddim", ["ddim"], {})]

samplers_data_timesteps: list[sd_samplers_common.SamplerData] = [
    sd_samplers_common.SamplerData(label, (lambda model, name=func: CompVisSampler(name, model)), names, opts)
    for label, func, names, opts in samplers_timesteps
]
