"""Test double of old Forge's ldm_patched/modules/model_base.py for these tests; no configs/variants.

The difference that matters to extensions: the predictor is ``model.model_sampling`` (no ``predictor``).
"""

from __future__ import annotations

from typing import Any

import torch
from backend.modules.k_model import predict_x0


class BaseModel(torch.nn.Module):
    def __init__(self, diffusion_model: torch.nn.Module, model_sampling: Any):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = model_sampling

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat: torch.Tensor | None = None,
                    c_crossattn: torch.Tensor | None = None, control: dict | None = None,
                    transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        return predict_x0(self.diffusion_model, self.model_sampling, x, t, c_concat, c_crossattn, control,
                          transformer_options, **kwargs)
