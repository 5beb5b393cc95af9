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


def forge_variant() -> str:
    """Which Forge-family host runs us, for messages and for Neo's differences: 'neo', 'classic',
    'reforge', 'forge2' (Forge main and other `backend.*` forks), 'ldm_patched' (old Forge), or 'none'.

    `modules_forge.forge_version.version` is 'neo' on Forge Neo, 'classic' on Forge Classic and
    '1.0.0v2-…' on reForge (docs/hosts.md §10); the backend package tells Forge2 from old Forge.
    """
    if not _has_module("modules_forge"):
        return "none"
    try:
        from modules_forge import forge_version

        version = str(getattr(forge_version, "version", ""))
    except ImportError:
        version = ""
    if version in ("neo", "classic"):
        return version
    if version.startswith("1.0.0v2"):
        return "reforge"
    if _has_module("backend.sampling.sampling_function"):
        return "forge2"
    return "ldm_patched"
