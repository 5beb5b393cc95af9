"""Test double of Forge2's ``backend/patcher/base.py`` written for these tests; leaves out LoRA, weights, devices.

What it models (docs/hosts.md §11.1, §11.2): ``model_options`` is a dict with a ``transformer_options`` dict;
attention replacements live in ``transformer_options["patches_replace"][name][key]`` with 2- or 3-tuple
keys; ``clone()`` deep-copies ``model_options``; the module-level ``set_model_options_patch_replace`` writes
the new ``transformer_options`` back into the dict it is given (the documented pitfall, §12.3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


def _replace_key(block_name: str, number: int, transformer_index: int | None) -> tuple:
    if transformer_index is None:
        return (block_name, number)
    return (block_name, number, transformer_index)


def set_model_options_patch_replace(model_options: dict, patch: Callable, name: str, block_name: str,
                                    number: int, transformer_index: int | None = None) -> dict:
    """Copy the path transformer_options → patches_replace → [name], add the key, and store the new
    transformer_options in ``model_options`` itself (the caller's dict is changed: pass a copy)."""
    options = dict(model_options.get("transformer_options", {}))
    replacements = dict(options.get("patches_replace", {}))
    table = dict(replacements.get(name, {}))
    table[_replace_key(block_name, number, transformer_index)] = patch
    replacements[name] = table
    options["patches_replace"] = replacements
    model_options["transformer_options"] = options
    return model_options


def set_model_options_post_cfg_function(model_options: dict, post_cfg_function: Callable,
                                        disable_cfg1_optimization: bool = False) -> dict:
    """Append to ``sampler_post_cfg_function`` (a fresh list)."""
    model_options["sampler_post_cfg_function"] = [*model_options.get("sampler_post_cfg_function", []),
                                                  post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_pre_cfg_function(model_options: dict, pre_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> dict:
    """Append to ``sampler_pre_cfg_function`` (a fresh list)."""
    model_options["sampler_pre_cfg_function"] = [*model_options.get("sampler_pre_cfg_function", []),
                                                 pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


class ModelPatcher:
    """Holds a model and the ``model_options`` that sampling reads; patches are recorded, never applied to
    weights."""

    def __init__(self, model: Any, load_device: Any, offload_device: Any, size: int = 0,
                 current_device: Any = None, **kwargs: Any):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = offload_device if current_device is None else current_device
        self.size = size
        self.model_options: dict = {"transformer_options": {}}
        self.object_patches: dict = {}

    def clone(self) -> ModelPatcher:
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.model_options = copy.deepcopy(self.model_options)
        twin.object_patches = dict(self.object_patches)
        return twin

    def is_clone(self, other: Any) -> bool:
        return getattr(other, "model", None) is self.model

    # --- sampler-level functions
    def set_model_sampler_cfg_function(self, sampler_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> None:
        self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function: Callable,
                                            disable_cfg1_optimization: bool = False) -> None:
        set_model_options_post_cfg_function(self.model_options, post_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function: Callable,
                                           disable_cfg1_optimization: bool = False) -> None:
        set_model_options_pre_cfg_function(self.model_options, pre_cfg_function, disable_cfg1_optimization)

    def set_model_unet_function_wrapper(self, unet_wrapper_function: Callable) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    # --- transformer patches
    def set_model_patch(self, patch: Callable, name: str) -> None:
        patches = self.model_options["transformer_options"].setdefault("patches", {})
        patches[name] = [*patches.get(name, []), patch]

    def set_model_patch_replace(self, patch: Callable, name: str, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        set_model_options_patch_replace(self.model_options, patch, name, block_name, number, transformer_index)

    def set_model_attn1_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch: Callable, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch: Callable, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj
