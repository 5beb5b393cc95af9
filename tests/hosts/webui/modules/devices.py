"""Test double of modules.devices for these tests; CPU and float32 only, no autocast or NaN checks."""

from __future__ import annotations

import contextlib

import torch

cpu = torch.device(type="cpu")
device = cpu
device_interrogate = cpu
device_gfpgan = cpu
device_esrgan = cpu
device_codeformer = cpu
dtype = dtype_vae = dtype_unet = dtype_inference = torch.float32
unet_needs_upcast: bool = False


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


_no_op = contextlib.nullcontext


def autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    """Float32 everywhere: autocast is a no-op context."""
    return _no_op()


def without_autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return _no_op()


def test_for_nans(x: torch.Tensor, where: str) -> None:
    """The double never checks for NaNs."""
