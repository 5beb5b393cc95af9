"""Test double of backend/modules/k_model.py written for these tests; no dtypes, devices, scheduler.

``KModel.apply_model`` returns the denoised (x0) prediction (docs/hosts.md §11.1): scale the input for the
predictor, run the diffusion model on the predictor's timestep, reconstruct x0.
"""

from __future__ import annotations

from typing import Any

import torch


def predict_x0(diffusion_model: torch.nn.Module, predictor: Any, x: torch.Tensor, sigma: torch.Tensor,
               c_concat: torch.Tensor | None = None, c_crossattn: torch.Tensor | None = None,
               control: dict | None = None, transformer_options: dict | None = None,
               **kwargs: Any) -> torch.Tensor:
    """One denoised prediction; shared with the ``ldm_patched`` ``BaseModel`` double."""
    model_in = predictor.calculate_input(sigma, x)
    model_in = model_in if c_concat is None else torch.cat([model_in, c_concat], dim=1)
    extra = {"y": kwargs["y"]} if kwargs.get("y") is not None else {}
    out = diffusion_model(model_in, predictor.timestep(sigma).float(), context=c_crossattn, control=control,
                          transformer_options=transformer_options or {}, **extra)
    return predictor.calculate_denoised(sigma, out.float(), x)


class KModel(torch.nn.Module):
    """The diffusion model together with its predictor (``model.predictor``)."""

    def __init__(self, model: torch.nn.Module, diffusers_scheduler: Any = None, k_predictor: Any = None,
                 config: Any = None):
        super().__init__()
        self.diffusion_model, self.predictor = model, k_predictor

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat: torch.Tensor | None = None,
                    c_crossattn: torch.Tensor | None = None, control: dict | None = None,
                    transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        return predict_x0(self.diffusion_model, self.predictor, x, t, c_concat, c_crossattn, control,
                          transformer_options, **kwargs)
