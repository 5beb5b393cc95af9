"""Test double of the parts of gradio 3.41 that WebUI scripts build their UI from.

Components only hold their constructor arguments; layout blocks are context managers that collect the
components created inside them. No server, no events, no rendering.
"""

from __future__ import annotations

from typing import Any

from gradio.components import Component, FormComponent

__all__ = [
    "HTML",
    "Accordion",
    "Blocks",
    "Button",
    "Checkbox",
    "Column",
    "Component",
    "Dropdown",
    "FormComponent",
    "Group",
    "Markdown",
    "Number",
    "Radio",
    "Row",
    "Slider",
    "Textbox",
    "update",
]

_open_blocks: list[Block] = []


class Block:
    """A layout container; components created while it is open become its children."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.children: list[Any] = []
        self.visible = kwargs.get("visible", True)
        self.elem_id = kwargs.get("elem_id")
        _adopt(self)

    def __enter__(self) -> Block:
        _open_blocks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _open_blocks.remove(self)


def _adopt(child: Any) -> None:
    if _open_blocks:
        _open_blocks[-1].children.append(child)


class Blocks(Block):
    pass


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Accordion(Block):
    def __init__(self, label: str = "", open: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.open = open


class Slider(FormComponent):
    def __init__(self, minimum: float = 0, maximum: float = 100, value: float | None = None, step: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(value=minimum if value is None else value, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step


class Checkbox(FormComponent):
    def __init__(self, value: bool = False, **kwargs: Any) -> None:
        super().__init__(value=value, **kwargs)


class Number(FormComponent):
    def __init__(self, value: float | None = None, precision: int | None = None, **kwargs: Any) -> None:
        super().__init__(value=value, **kwargs)
        self.precision = precision


class Textbox(FormComponent):
    def __init__(self, value: str = "", lines: int = 1, **kwargs: Any) -> None:
        super().__init__(value=value, **kwargs)
        self.lines = lines


class _Choosing(FormComponent):
    """Dropdown and Radio: `type="index"` sends the position of the chosen label instead of the label."""

    def __init__(self, choices: list[Any] | None = None, value: Any = None, type: str = "value",
                 **kwargs: Any) -> None:
        self.allow_custom_value = kwargs.pop("allow_custom_value", False)
        self.multiselect = kwargs.pop("multiselect", None)
        super().__init__(value=value, **kwargs)
        self.choices = list(choices or [])
        self.type = type


class Dropdown(_Choosing):
    pass


class Radio(_Choosing):
    pass


class HTML(Component):
    pass


class Markdown(Component):
    pass


class Button(Component):
    pass


def update(**kwargs: Any) -> dict[str, Any]:
    """What gradio 3 event handlers return to change a component."""
    return {"__type__": "update", **kwargs}


Component._adopt = staticmethod(_adopt)
