"""Test double of old Forge's ldm_patched/modules/samplers.py for these tests; no sampler classes.

Old Forge, reForge and Forge Classic run the same CFG body as Forge2 under these names (docs/hosts.md
§11.6): ``calc_cond_uncond_batch`` has the same signature and behaviour, and ``sampling_function`` returns
only ``denoised``. This module reuses the Forge2 double's body rather than restating it.
"""

from __future__ import annotations

from typing import Any

import torch
from backend.sampling import sampling_function as _body

calc_cond_uncond_batch = _body.calc_cond_uncond_batch


def sampling_function(model: Any, x: torch.Tensor, timestep: torch.Tensor, uncond: list | None, cond: list,
                      cond_scale: float, model_options: dict | None = None, seed: int | None = None) -> torch.Tensor:
    """CFG plus pre/post-CFG functions; the denoised prediction only."""
    return _body.sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed)
