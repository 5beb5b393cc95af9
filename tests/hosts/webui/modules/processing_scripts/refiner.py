"""Test double of the built-in modules/processing_scripts/refiner.py for these tests; no paste fields.

The "Refiner" accordion (args: enable, checkpoint, switch_at) hands the refiner checkpoint and the switch
point to the job.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from modules import scripts, sd_models
from modules.ui_components import InputAccordion


class ScriptRefiner(scripts.ScriptBuiltinUI):
    section = "accordions"

    def title(self) -> str:
        return "Refiner"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        with InputAccordion(False, label="Refiner", elem_id=self.elem_id("enable")) as enabled:
            choices = sd_models.checkpoint_tiles()
            checkpoint = gr.Dropdown(label="Checkpoint", choices=choices, value="", elem_id=self.elem_id("checkpoint"))
            switch_at = gr.Slider(value=0.8, label="Switch at", minimum=0.01, maximum=1.0, step=0.01,
                                  elem_id=self.elem_id("switch_at"))
        return [enabled, checkpoint, switch_at]

    def setup(self, p: Any, enable_refiner: bool, refiner_checkpoint: str, refiner_switch_at: float) -> None:
        """Only when enabled with a checkpoint chosen; processing resolves the name when the job starts."""
        if enable_refiner and refiner_checkpoint not in (None, "", "None"):
            p.refiner_checkpoint, p.refiner_switch_at = refiner_checkpoint, refiner_switch_at
