"""Test double of modules.ui_components: InputAccordion (a checkbox whose value is the accordion's open
state) and the small form helpers scripts use."""

from __future__ import annotations

from typing import Any

import gradio as gr


class InputAccordion(gr.Checkbox):
    """A hidden checkbox carrying the enabled state; `with` opens the accordion it drives."""

    def __init__(self, value: bool, **kwargs: Any) -> None:
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{id(self)}"
        label = kwargs.get("label", "Accordion")
        kwargs["elem_id"] = f"{self.accordion_id}-checkbox"
        kwargs["visible"] = False
        super().__init__(value, **kwargs)
        self.accordion = gr.Accordion(label, open=value, elem_id=self.accordion_id)

    def extra(self) -> gr.Column:
        """A column placed in the accordion's header."""
        return gr.Column(elem_id=f"{self.accordion_id}-extra")

    def __enter__(self) -> InputAccordion:
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.accordion.__exit__(*exc)


class FormRow(gr.Row):
    pass


class FormGroup(gr.Group):
    pass


class ToolButton(gr.Button):
    pass
