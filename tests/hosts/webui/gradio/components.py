"""Test double of gradio.components: the base classes the WebUI subclasses."""

from __future__ import annotations

from typing import Any


class Component:
    """Holds what the constructor was given; the attributes scripts and the WebUI read."""

    _adopt: Any = None  # set by the package so a component joins the layout block that is open

    def __init__(self, value: Any = None, *, label: str | None = None, elem_id: str | None = None,
                 visible: bool = True, interactive: bool | None = None, info: str | None = None,
                 elem_classes: list[str] | str | None = None, show_label: bool = True, **extra: Any) -> None:
        self.value = value
        self.label = label
        self.elem_id = elem_id
        self.visible = visible
        self.interactive = interactive
        self.info = info
        self.elem_classes = elem_classes
        self.show_label = show_label
        self.extra = extra
        self.choices: list[Any] | None = getattr(self, "choices", None)
        self.type: str | None = getattr(self, "type", None)
        if Component._adopt is not None:
            Component._adopt(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label={self.label!r}, elem_id={self.elem_id!r}, value={self.value!r})"


class FormComponent(Component):
    """Components that carry a value (sliders, boxes, dropdowns...)."""
