"""Test double of backend/modules/k_prediction.py for these tests; no EDM, v-pred or Flux predictors.

Two predictors: ``Prediction`` (epsilon, the SD discrete linear-beta schedule: sigma_min ≈ 0.03, sigma_max ≈
14.6) and ``PredictionDiscreteFlow`` (rectified flow, ``prediction_type == "const"``, sigma in [0, 1],
model timestep = 1000·sigma, sigma of a timestep warped by ``shift``). ``percent_to_sigma`` maps the
fraction of sampling done to a sigma: 0 → above every sigma, 1 → 0; for the flow predictor it is
``1 − percent`` (the values tests/test_forge.py pins down).
"""

from __future__ import annotations

import torch

from tests.hosts.discrete_schedule import SigmaRange, linear_alphas_cumprod, sigma_of, timestep_of


class AbstractPrediction(SigmaRange, torch.nn.Module):
    """Input scaling and denoised reconstruction shared by the predictors."""

    def __init__(self, sigma_data: float = 1.0, prediction_type: str = "epsilon"):
        super().__init__()
        self.sigma_data, self.prediction_type = sigma_data, prediction_type

    def _flow(self) -> bool:
        return self.prediction_type == "const"

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self._flow():
            return noise
        scale = (_rows(sigma, noise) ** 2 + self.sigma_data ** 2).rsqrt()
        return noise * scale

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        """x0 = x − σ·output (epsilon and flow velocity alike)."""
        return model_input - model_output * _rows(sigma, model_output)

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """The noised latent a sampler starts from at ``sigma``."""
        s = _rows(sigma, noise)
        if self._flow():
            return s * noise + (1.0 - s) * latent_image
        return latent_image + noise * s

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent


def _rows(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """sigma as a tensor broadcastable over ``like``'s non-batch dimensions."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return s.reshape(s.shape[:1] + (1,) * (like.ndim - 1)) if s.ndim else s


class Prediction(AbstractPrediction):
    """Epsilon prediction on a discrete schedule of ``timesteps`` sigmas."""

    def __init__(self, sigma_data: float = 1.0, prediction_type: str = "eps", beta_schedule: str = "linear",
                 linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000):
        super().__init__(sigma_data, prediction_type)
        if beta_schedule != "linear":
            raise NotImplementedError(f"test double: only the linear beta schedule, not {beta_schedule!r}")
        alpha_bar = linear_alphas_cumprod(linear_start, linear_end, timesteps)
        self.set_sigmas(((1.0 - alpha_bar) / alpha_bar).sqrt())

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return timestep_of(self.log_sigmas, sigma)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return sigma_of(self.log_sigmas, timestep)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1e9  # above every sigma of the schedule
        if percent >= 1.0:
            return 0.0
        last = len(self.sigmas) - 1
        return float(self.sigma(torch.tensor((1.0 - percent) * last)))


class PredictionDiscreteFlow(AbstractPrediction):
    """Rectified flow (SD3-style) with a timestep ``shift``."""

    def __init__(self, sigma_data: float = 1.0, prediction_type: str = "const", shift: float = 1.0,
                 timesteps: int = 1000):
        super().__init__(sigma_data, prediction_type)
        self.shift = shift
        self.multiplier = timesteps
        grid = torch.arange(1, timesteps + 1, dtype=torch.float32)
        self.register_buffer("sigmas", self.sigma(grid), persistent=False)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float32) * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32) / self.multiplier
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def percent_to_sigma(self, percent: float) -> float:
        return min(1.0, max(0.0, 1.0 - percent))
