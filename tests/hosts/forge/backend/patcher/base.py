"""Test double of backend/patcher/base.py written for these tests; leaves out LoRA, weights, devices.

What it models (docs/hosts.md §11.1, §11.2): ``model_options`` is a dict with a ``transformer_options`` dict;
attention replacements live in ``transformer_options["patches_replace"][name][key]`` with 2- or 3-tuple
keys; ``clone()`` deep-copies ``model_options``; the module-level ``set_model_options_patch_replace`` writes
the new ``transformer_options`` back into the dict it is given (the documented pitfall, §12.3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from modules_forge import forge_version


def _with_replacement(options: dict, fn: Callable, kind: str, key: tuple) -> dict:
    """Store ``fn`` at ``key`` under patches_replace[kind], copying each dict on the way, then put the new
    transformer_options into ``options`` itself."""
    replaced = dict(options.get("transformer_options", {}))
    tables = dict(replaced.get("patches_replace", {}))
    tables[kind] = {**tables.get(kind, {}), key: fn}
    replaced["patches_replace"] = tables
    options["transformer_options"] = replaced
    return options


def _with_appended(options: dict, list_name: str, fn: Callable, keep_uncond: bool) -> dict:
    options[list_name] = [*options.get(list_name, []), fn]
    if keep_uncond:
        options["disable_cfg1_optimization"] = True
    return options


def set_model_options_patch_replace(model_options: dict, patch: Callable, name: str, block_name: str,
                                    number: int, transformer_index: int | None = None) -> dict:
    """Key ``(block_name, number)``, or ``(block_name, number, transformer_index)`` when an index is given.
    The caller's dict is changed: pass a copy."""
    key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    return _with_replacement(model_options, patch, name, key)


def set_model_options_post_cfg_function(model_options: dict, post_cfg_function: Callable,
                                        disable_cfg1_optimization: bool = False) -> dict:
    return _with_appended(model_options, "sampler_post_cfg_function", post_cfg_function,
                          disable_cfg1_optimization)


class ModelPatcher:
    """Holds a model and the ``model_options`` that sampling reads; nothing is applied to weights."""

    def __init__(self, model: Any, load_device: Any, offload_device: Any, size: int = 0,
                 current_device: Any = None, **kwargs: Any):
        self.model = model
        self.load_device, self.offload_device, self.size = load_device, offload_device, size
        self.current_device = current_device or offload_device
        self.model_options: dict = {"transformer_options": {}}

    def clone(self) -> ModelPatcher:
        """Same model, same fields, ``model_options`` deep-copied. Neo (hosts.md §11.8) builds the clone
        through the constructor and copies only the fields it knows, ``model_options`` deep-copied."""
        if forge_version.version == "neo":
            twin = self.__class__(self.model, self.load_device, self.offload_device, self.size, self.current_device)
            twin.model_options = copy.deepcopy(self.model_options)
            return twin
        twin = copy.copy(self)
        twin.model_options = copy.deepcopy(self.model_options)
        return twin

    def set_model_sampler_cfg_function(self, sampler_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> None:
        """The single CFG replacement (see §11.4): it returns a noise-like tensor."""
        self.model_options.update(sampler_cfg_function=sampler_cfg_function)
        if disable_cfg1_optimization:
            self.model_options.update(disable_cfg1_optimization=True)

    def set_model_sampler_post_cfg_function(self, post_cfg_function: Callable,
                                            disable_cfg1_optimization: bool = False) -> None:
        set_model_options_post_cfg_function(self.model_options, post_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function: Callable,
                                           disable_cfg1_optimization: bool = False) -> None:
        _with_appended(self.model_options, "sampler_pre_cfg_function", pre_cfg_function,
                       disable_cfg1_optimization)

    def set_model_patch_replace(self, patch: Callable, name: str, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        set_model_options_patch_replace(self.model_options, patch, name, block_name, number, transformer_index)

    def set_model_attn1_replace(self, patch: Callable, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index=transformer_index)
