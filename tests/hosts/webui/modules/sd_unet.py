"""Test double of modules.sd_unet for these tests; no alternative UNets are offered.

A test sets `current_unet` to pretend one (e.g. TensorRT) is active.
"""

from __future__ import annotations

from typing import Any

unet_options: list[Any] = []
current_unet_option: Any = None
current_unet: Any = None


def list_unets() -> None:
    unet_options[:] = []


def get_unet_option(option: str | None = None) -> Any:
    return None


def apply_unet(option: str | None = None) -> None:
    """Leaves `current_unet` as the test set it."""
