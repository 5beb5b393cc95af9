"""Test double of backend/patcher/controlnet.py for these tests; no control model, weighting, T2I.

What it models (docs/hosts.md §14): a unit is linked into ``UnetPatcher.controlnet_linked_list``; the calc
function sets ``transformer_options`` on it and calls ``get_control(x, t, cond, batched_number)`` once per
UNet call; the hint is broadcast to the rows of that call, and the result (a ``"middle"`` residual) is
added after the UNet's middle block. Each unit records what it saw in ``calls`` for the tests.

``apply_controlnet_advanced`` clones the UNet patcher and links the very unit it is given (hosts.md does not
say whether the host links a copy), so a test holding the unit can read ``calls``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def apply_controlnet_advanced(unet: Any, controlnet: ControlNet, image_bchw: torch.Tensor, strength: float,
                              start_percent: float, end_percent: float, positive_advanced_weighting=None,
                              negative_advanced_weighting=None, advanced_frame_weighting=None,
                              advanced_sigma_weighting=None, advanced_mask_weighting=None) -> Any:
    """A clone of ``unet`` with ``controlnet`` (given ``image_bchw`` as its hint) at the head of its chain."""
    controlnet.set_cond_hint(image_bchw, strength, (start_percent, end_percent))
    patched = unet.clone()
    patched.add_patched_controlnet(controlnet)
    return patched


def broadcast_image_to(tensor: torch.Tensor, target_batch_size: int, batched_number: int) -> torch.Tensor:
    """Repeat (or trim) the hint rows so every chunk of the UNet batch gets one hint per image."""
    per_chunk = target_batch_size // max(batched_number, 1)
    reps = -(-per_chunk // tensor.shape[0])
    rows = tensor.repeat(reps, 1, 1, 1)[:per_chunk]
    return rows.repeat(batched_number, 1, 1, 1)


class ControlBase:
    """Hint, strength, active percent range and the link to the previously added unit."""

    def __init__(self, device: Any = None):
        self.device: Any = device
        self.cond_hint_original: torch.Tensor | None = None
        self.strength, self.timestep_percent_range = 1.0, (0.0, 1.0)
        self.sigma_range: tuple[float, float] | None = None
        self.previous_controlnet: ControlBase | None = None
        self.transformer_options: dict = {}

    def set_cond_hint(self, cond_hint: torch.Tensor, strength: float = 1.0,
                      timestep_percent_range: tuple[float, float] = (0.0, 1.0)) -> ControlBase:
        self.cond_hint_original, self.strength = cond_hint, strength
        self.timestep_percent_range = tuple(timestep_percent_range)
        return self

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        """Turn the percent range into sigmas (high, low) before sampling starts; the whole chain."""
        unit: ControlBase | None = self
        while unit is not None:
            start, end = unit.timestep_percent_range
            unit.sigma_range = (percent_to_timestep_function(start), percent_to_timestep_function(end))
            unit = unit.previous_controlnet

    def set_previous_controlnet(self, controlnet: ControlBase | None) -> ControlBase:
        self.previous_controlnet = controlnet
        return self

    def cleanup(self) -> None:
        self.sigma_range = None

    def _active(self, t: torch.Tensor) -> bool:
        if self.sigma_range is None:
            return True
        high, low = self.sigma_range
        return low <= float(t.reshape(-1)[0]) <= high


class ControlNet(ControlBase):
    """A control unit whose "model" turns the hint into one residual per row."""

    def __init__(self, control_model: Any, global_average_pooling: bool = False, device: Any = None,
                 load_device: Any = None, manual_cast_dtype: Any = None):
        super().__init__(device=device)
        self.control_model, self.calls = control_model, []

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int) -> dict | None:
        before = self.previous_controlnet
        earlier = None if before is None else before.get_control(x_noisy, t, cond, batched_number)
        if self.cond_hint_original is None or not self._active(t):
            return earlier
        self.calls.append({"cond_or_uncond": list(self.transformer_options.get("cond_or_uncond", [])),
                           "c_crossattn": cond.get("c_crossattn"), "sigma": float(t.reshape(-1)[0])})
        hint = broadcast_image_to(self.cond_hint_original.to(x_noisy), x_noisy.shape[0], batched_number)
        residual = self.strength * hint.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
        if earlier is not None:
            residual = residual + sum(earlier.get("middle", []))
        return {"middle": [residual]}
