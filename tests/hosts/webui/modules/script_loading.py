"""Test double of modules.script_loading: import a script file as a module that sys.modules never sees."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType


def load_module(path: str) -> ModuleType:
    """Execute `path` as a module named after its file name (e.g. "xyz_grid.py"), like the WebUI does."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
