"""SD's discrete noise schedule, shared by the A1111 and Forge doubles (both hosts sample SD models on the
same 1000-entry table of sigmas, with fractional timesteps interpolated in log-sigma)."""

from __future__ import annotations

import torch


class SigmaRange:
    """`sigma_min` / `sigma_max` of a schedule object that holds its `sigmas` table."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas.min()

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas.max()


def linear_alphas_cumprod(linear_start: float = 0.00085, linear_end: float = 0.012,
                          timesteps: int = 1000) -> torch.Tensor:
    """Cumulative alphas of SD's 'scaled linear' betas, float64."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def timestep_of(log_sigmas: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The fractional table index of `sigma`, interpolated in log-sigma, clamped to the table."""
    logs = torch.as_tensor(sigma, dtype=log_sigmas.dtype, device=log_sigmas.device).log()
    flat = logs.reshape(-1).clamp(log_sigmas[0], log_sigmas[-1])
    upper = torch.searchsorted(log_sigmas, flat.contiguous()).clamp(1, len(log_sigmas) - 1)
    lo_val, hi_val = log_sigmas[upper - 1], log_sigmas[upper]
    return (upper - 1 + (flat - lo_val) / (hi_val - lo_val)).reshape(logs.shape)


def sigma_of(log_sigmas: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
    """The sigma at a fractional table index (the inverse of `timestep_of`)."""
    t = torch.as_tensor(timestep, dtype=log_sigmas.dtype, device=log_sigmas.device).clamp(0, len(log_sigmas) - 1)
    below = t.floor().long()
    above = (below + 1).clamp(max=len(log_sigmas) - 1)
    weight = t - below
    return (log_sigmas[below] * (1 - weight) + log_sigmas[above] * weight).exp()
