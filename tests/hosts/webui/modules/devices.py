"""Test double of modules.devices written for these tests: CPU and float32 only; no autocast, no
half precision, no NaN checks."""

from __future__ import annotations

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
device_interrogate = cpu
device_gfpgan = cpu
device_esrgan = cpu
device_codeformer = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
unet_needs_upcast = False


def get_optimal_device() -> torch.device:
    """Always the CPU in the tests."""
    return cpu


def torch_gc() -> None:
    """Nothing to free on the CPU."""


def cond_cast_unet(tensor: torch.Tensor) -> torch.Tensor:
    """No upcasting in float32."""
    return tensor


def cond_cast_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if unet_needs_upcast else tensor


def autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    """Float32 everywhere: autocast is a no-op context."""
    return contextlib.nullcontext()


def without_autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def test_for_nans(x: torch.Tensor, where: str) -> None:
    """The double never checks for NaNs."""
