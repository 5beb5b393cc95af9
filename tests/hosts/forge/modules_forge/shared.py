"""Test double of ``modules_forge/shared.py`` for these tests: the preprocessor registry only.

ControlNet preprocessors register themselves by name; Forge's reference preprocessors keep an
``is_recording_style`` flag that is True while they run their recording call (hosts.md §14, issue 10).
"""

from __future__ import annotations

from typing import Any

supported_preprocessors: dict[str, Any] = {}


def add_supported_preprocessor(preprocessor: Any) -> None:
    supported_preprocessors[preprocessor.name] = preprocessor
