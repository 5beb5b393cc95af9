"""Test double of modules.paths: where the (double) WebUI lives."""

import os

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = script_path
models_path = os.path.join(script_path, "models")
extensions_dir = os.path.join(script_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
