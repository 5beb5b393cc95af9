"""Test double of backend/patcher/unet.py written for these tests; leaves out loading, LoRA, modifiers.

``UnetPatcher`` adds to ``ModelPatcher`` what extensions use during sampling (docs/hosts.md §11.1): the
ControlNet linked list (shared by reference across clones), reserved memory, a few option helpers and
``set_model_replace_all`` (3-tuple keys on every input/middle/output id × index).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backend.patcher.base import ModelPatcher

_REPLACE_ALL_BLOCKS = ("input", "middle", "output")
_REPLACE_ALL_RANGE = 16  # ids and transformer indices covered by set_model_replace_all


class UnetPatcher(ModelPatcher):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list: Any = None
        self.extra_preserved_memory_during_sampling: int = 0
        self.extra_model_patchers_during_sampling: list = []
        self.extra_concat_condition: Any = None

    def clone(self) -> UnetPatcher:
        """Also keeps the ControlNet chain (by reference) and the reserved memory."""
        twin = super().clone()
        twin.controlnet_linked_list = self.controlnet_linked_list
        twin.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        twin.extra_model_patchers_during_sampling = list(self.extra_model_patchers_during_sampling)
        twin.extra_concat_condition = self.extra_concat_condition
        return twin

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes: int) -> None:
        self.extra_preserved_memory_during_sampling += int(memory_in_bytes)

    # --- ControlNet chain: newest first, each unit points at the one added before it
    def add_patched_controlnet(self, cnet: Any) -> None:
        head = self.controlnet_linked_list
        self.controlnet_linked_list = cnet if cnet is head else cnet.set_previous_controlnet(head)

    def list_controlnets(self) -> list:
        found, unit = [], self.controlnet_linked_list
        while unit is not None and all(unit is not seen for seen in found):
            found.append(unit)
            unit = unit.previous_controlnet
        return found

    # --- option helpers
    def append_model_option(self, k: str, v: Any, ensure_uniqueness: bool = False) -> None:
        entries = self.model_options.setdefault(k, [])
        if not (ensure_uniqueness and v in entries):
            entries.append(v)

    def set_transformer_option(self, k: str, v: Any) -> None:
        self.model_options["transformer_options"][k] = v

    def add_conditioning_modifier(self, modifier: Callable, ensure_uniqueness: bool = False) -> None:
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def set_model_replace_all(self, patch: Callable, target: str = "attn1") -> None:
        """The same replacement at every (block, id, index) key, as reference-only and StyleAlign do."""
        everywhere = {(block, block_id, index): patch for block in _REPLACE_ALL_BLOCKS
                      for block_id in range(_REPLACE_ALL_RANGE) for index in range(_REPLACE_ALL_RANGE)}
        replacements = self.model_options["transformer_options"].setdefault("patches_replace", {})
        replacements.setdefault(target, {}).update(everywhere)
