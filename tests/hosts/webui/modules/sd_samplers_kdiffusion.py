"""Test double of modules.sd_samplers_kdiffusion for these tests; Euler, Euler a and Heun only.

The default (uniform-in-timestep) sigma schedule and a CompVisDenoiser-like x0 wrapper of the model.
Leaves out k-diffusion itself, other samplers, schedulers (Karras, ...) and sampler options.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common
from tests.hosts.discrete_schedule import SigmaRange, sigma_of, timestep_of


class CompVisDenoiser(SigmaRange, torch.nn.Module):
    """x0 view of an eps model: `wrapper(x, sigma, cond=...)` scales the input, calls
    `inner_model.apply_model(x * c_in, t(sigma), cond)` and returns x - sigma * eps."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner_model = model
        alphas = model.alphas_cumprod.float()
        self.register_buffer("sigmas", ((1 - alphas) / alphas) ** 0.5, persistent=False)
        self.register_buffer("log_sigmas", self.sigmas.log(), persistent=False)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return timestep_of(self.log_sigmas, sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return sigma_of(self.log_sigmas, t)

    def get_sigmas(self, n: int) -> torch.Tensor:
        """n sigmas from sigma_max down to sigma_min (uniform in t), then 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self.t_to_sigma(t), t.new_zeros(1)])

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (input.dim() - 1)))
        eps = self.inner_model.apply_model(input / (s ** 2 + 1) ** 0.5, self.sigma_to_t(sigma), **kwargs)
        return input - eps * s


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    wrapper_class = CompVisDenoiser


def _steps(sigmas: torch.Tensor):
    return enumerate(itertools.pairwise(sigmas))


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
    """Plain Euler: one model call per step."""
    ones = x.new_ones(x.shape[0])
    for i, (s_now, s_next) in _steps(sigmas):
        denoised = model(x, s_now * ones, **(extra_args or {}))
        if callback:
            callback({"x": x, "i": i, "sigma": s_now, "sigma_hat": s_now, "denoised": denoised})
        slope = (x - denoised).div(s_now)
        x = x + slope * (s_next - s_now)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                           noise_sampler=None, **_):
    """Euler to a lower sigma, then fresh noise back up to the next sigma (eta 1)."""
    ones = x.new_ones(x.shape[0])
    for i, (s_now, s_next) in _steps(sigmas):
        denoised = model(x, s_now * ones, **(extra_args or {}))
        if callback:
            callback({"x": x, "i": i, "sigma": s_now, "sigma_hat": s_now, "denoised": denoised})
        up = (eta * (s_next ** 2 * (s_now ** 2 - s_next ** 2) / s_now ** 2) ** 0.5).clamp(max=s_next)
        down = (s_next ** 2 - up ** 2) ** 0.5
        x = x + (x - denoised).div(s_now) * (down - s_now)
        if s_next > 0:
            x = x + noise_sampler(s_now, s_next) * up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
    """Heun (Karras et al. 2022, Alg. 2 without churn): an Euler step, then the trapezoid correction
    with a second model call at the next sigma; the step callback runs between the two calls, and the
    last step (to sigma 0) is a plain Euler step with one call."""
    ones = x.new_ones(x.shape[0])
    for i, (s_now, s_next) in _steps(sigmas):
        denoised = model(x, s_now * ones, **(extra_args or {}))
        slope = (x - denoised).div(s_now)
        if callback:
            callback({"x": x, "i": i, "sigma": s_now, "sigma_hat": s_now, "denoised": denoised})
        if s_next == 0:
            x = x + slope * (s_next - s_now)
            continue
        guess = x + slope * (s_next - s_now)
        denoised_next = model(guess, s_next * ones, **(extra_args or {}))
        slope_next = (guess - denoised_next).div(s_next)
        x = x + (slope + slope_next) / 2 * (s_next - s_now)
    return x


_FUNCTIONS = {"sample_euler": sample_euler, "sample_euler_ancestral": sample_euler_ancestral, "sample_heun": sample_heun}


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: str, sd_model: Any, options: dict | None = None) -> None:
        super().__init__(funcname)
        self.func = _FUNCTIONS[funcname]
        self.options = dict(options or {})
        self.model_wrap_cfg = denoiser = CFGDenoiserKDiffusion(self)
        self.model_wrap = denoiser.inner_model

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        return self.model_wrap_cfg.inner_model.get_sigmas(steps)

    def _noise_sampler(self, p: Any):
        return lambda sigma, sigma_next: p.rng.next()

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        """From pure noise `x` (unit variance) over the whole schedule."""
        count = steps or p.steps
        schedule = self.get_sigmas(p, count)
        return self._launch(p, x * schedule[0], schedule, conditioning, unconditional_conditioning,
                            image_conditioning, len(schedule) - 1, noise_sampler=self._noise_sampler(p))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        """From `x` noised to the schedule's sigma at t_enc, over the last t_enc + 1 steps."""
        length, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        schedule = self.get_sigmas(p, length)[length - t_enc - 1:]
        return self._launch(p, x + noise * schedule[0], schedule, conditioning, unconditional_conditioning,
                            image_conditioning, len(schedule) - 1, noise_sampler=self._noise_sampler(p))


samplers_k_diffusion: list[tuple[str, str, list[str], dict[str, Any]]] = [
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a"], {"uses_ensd": True}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
]


def _constructor(funcname: str, options: dict):
    return lambda model: KDiffusionSampler(funcname, model, options)


samplers_data_k_diffusion: list[sd_samplers_common.SamplerData] = [
    sd_samplers_common.SamplerData(label, _constructor(func, opts), names, opts)
    for label, func, names, opts in samplers_k_diffusion
]
k_diffusion_samplers_map = {data.name: data for data in samplers_data_k_diffusion}
