"""Test double of modules.sd_samplers_kdiffusion written for these tests: Euler and Euler a on the
default (uniform-in-timestep) sigma schedule, with a CompVisDenoiser-like x0 wrapper of the model.
Leaves out k-diffusion itself, other samplers, schedulers (Karras, ...) and sampler options."""

from __future__ import annotations

from typing import Any

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared


class CompVisDenoiser(torch.nn.Module):
    """x0 view of an eps model: `wrapper(x, sigma, cond=...)` scales the input, calls
    `inner_model.apply_model(x * c_in, t(sigma), cond)` and returns x - sigma * eps."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner_model = model
        alphas = model.alphas_cumprod.float()
        self.register_buffer("sigmas", ((1 - alphas) / alphas) ** 0.5, persistent=False)
        self.register_buffer("log_sigmas", self.sigmas.log(), persistent=False)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for sigma: linear interpolation in log-sigma between table entries."""
        table = self.log_sigmas
        where = torch.searchsorted(table, sigma.log().clamp(table[0], table[-1]).contiguous())
        hi = where.clamp(1, len(table) - 1)
        lo = hi - 1
        frac = (sigma.log() - table[lo]) / (table[hi] - table[lo])
        return (lo + frac.clamp(0, 1)).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        lo = t.floor().long().clamp(0, len(self.sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.sigmas) - 1)
        frac = t - lo
        return (self.log_sigmas[lo] * (1 - frac) + self.log_sigmas[hi] * frac).exp()

    def get_sigmas(self, n: int) -> torch.Tensor:
        """n sigmas from sigma_max down to sigma_min (uniform in t), then 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self.t_to_sigma(t), t.new_zeros(1)])

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (input.dim() - 1)))
        eps = self.inner_model.apply_model(input / (s ** 2 + 1) ** 0.5, self.sigma_to_t(sigma), **kwargs)
        return input - eps * s


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self) -> CompVisDenoiser:
        if self.model_wrap is None:
            self.model_wrap = CompVisDenoiser(shared.sd_model)
        return self.model_wrap


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
    """Plain Euler: one model call per step."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                           noise_sampler=None, **_):
    """Euler with fresh noise each step (eta 1)."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        s_from, s_to = sigmas[i], sigmas[i + 1]
        up = (eta * (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5).clamp(max=s_to)
        down = (s_to ** 2 - up ** 2) ** 0.5
        x = x + _to_d(x, s_from, denoised) * (down - s_from)
        if s_to > 0:
            x = x + noise_sampler(s_from, s_to) * up
    return x


_FUNCTIONS = {"sample_euler": sample_euler, "sample_euler_ancestral": sample_euler_ancestral}


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: str, sd_model: Any, options: dict | None = None) -> None:
        super().__init__(funcname)
        self.func = _FUNCTIONS[funcname]
        self.options = options or {}
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        return self.model_wrap_cfg.inner_model.get_sigmas(steps)

    def _noise_sampler(self, p: Any):
        return lambda sigma, sigma_next: p.rng.next() if p.rng is not None else torch.randn_like(self.last_latent)

    def _run(self, p, x, sigmas, conditioning, unconditional_conditioning, image_conditioning, calls):
        self.initialize(p)
        self.model_wrap_cfg.steps = p.steps
        self.model_wrap_cfg.total_steps = calls
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond,
        }
        return self.launch_sampling(len(sigmas) - 1, lambda: self.func(
            self.model_wrap_cfg, x, sigmas, extra_args=self.sampler_extra_args, callback=self.callback_state,
            noise_sampler=self._noise_sampler(p)))

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        return self._run(p, x * sigmas[0], sigmas, conditioning, unconditional_conditioning, image_conditioning,
                         self.config.total_steps(steps))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        length, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, length)[length - t_enc - 1:]
        start = x + noise * sigmas[0]
        return self._run(p, start, sigmas, conditioning, unconditional_conditioning, image_conditioning, t_enc + 1)


samplers_k_diffusion = [
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a"], {"uses_ensd": True}),
]


def _constructor(funcname: str, options: dict):
    return lambda model: KDiffusionSampler(funcname, model, options)


samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, _constructor(funcname, options), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]
k_diffusion_samplers_map = {data.name: data for data in samplers_data_k_diffusion}
