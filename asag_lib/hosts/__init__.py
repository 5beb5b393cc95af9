"""Host adapters. `detect()` tells which WebUI we run in; each adapter imports host modules lazily."""

from __future__ import annotations

import importlib.util
from typing import Literal

Host = Literal["a1111", "forge", "none"]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect() -> Host:
    """'forge' for every Forge-family host (they ship `modules_forge`), 'a1111' when A1111's
    `modules.script_callbacks` is importable, else 'none' (plain Python, tests of the core)."""
    if _has_module("modules_forge"):
        return "forge"
    if _has_module("modules.script_callbacks"):
        return "a1111"
    return "none"
