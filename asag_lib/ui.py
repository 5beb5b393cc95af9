"""Gradio controls generated from the schema (gradio and InputAccordion come from the host).

`build()` has no side effects beyond creating components: the API calls `ui()` again at start-up.
Works on gradio 3 (A1111, Forge Classic, reForge) and gradio 4 (Forge2): no `gr.X.update` anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asag_lib import layers, params

MAIN_ROWS: tuple[tuple[str, ...], ...] = (("scale", "iterations"), ("layers",), ("start", "end"), ("hires",))
"""Layout of the accordion; every parameter not listed goes into the 'Advanced' sub-accordion."""


@dataclass(frozen=True)
class BuiltUI:
    components: list[Any]
    """In PARAMS order: this is the positional argument order of the UI and the API."""
    infotext_fields: list[tuple[Any, Any]]
    paste_field_names: list[str]


def layer_choices() -> list[str]:
    """The layers dropdown offers the presets; any spec can be typed in (allow_custom_value)."""
    return list(layers.preset_names())


VISIBLE_INFO: Mapping[str, str] = {
    "scale": "Strength of the push away from the weak prediction; 0 = off. Typical 1–3.",
    "layers": "Preset, or a spec such as 'middle', 'input.7-8', 'output.0.0-4', 'u0,u1'.",
}
"""A visible line under the controls whose meaning is not obvious from the label (gradio `info=`);
every control also gets its full hint as a hover title (javascript/asag.js)."""


def _component(gr: Any, param: params.Param, elem_id: str) -> Any:
    common = {"label": param.label, "elem_id": elem_id}
    if param.name in VISIBLE_INFO:
        common["info"] = VISIBLE_INFO[param.name]
    if param.kind is bool:
        return gr.Checkbox(value=param.default, **common)
    if param.choices:
        return gr.Radio(choices=[(label, value) for value, label in param.choices], value=param.default, **common)
    if param.kind in (int, float):
        return gr.Slider(minimum=param.minimum, maximum=param.maximum, step=param.step, value=param.default,
                         **common)
    if param.name == "layers":
        return gr.Dropdown(choices=layer_choices(), value=param.default, allow_custom_value=True, **common)
    return gr.Textbox(value=param.default, **common)


def _enabled_from_infotext(fields: Mapping[str, str]) -> bool:
    # A real bool: the API's infotext path would turn the string "False" into True.
    return bool(params.from_infotext(fields)["enabled"])


def build(elem_id: Callable[[str], str], title: str = "ASAG: Adversarial Sinkhorn Attention Guidance") -> BuiltUI:
    """The accordion (titled `title`) with every control; `elem_id` is the script's Script.elem_id."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    made: dict[str, Any] = {}
    placed = {name for row in MAIN_ROWS for name in row}
    with InputAccordion(False, label=title, elem_id=elem_id("enabled")) as enabled:
        made["enabled"] = enabled
        for row in MAIN_ROWS:
            with gr.Row():
                for name in row:
                    made[name] = _component(gr, params.PARAMS_BY_NAME[name], elem_id(name))
        with gr.Accordion("Advanced", open=False):
            for param in params.PARAMS:
                if param.name != "enabled" and param.name not in placed:
                    made[param.name] = _component(gr, param, elem_id(param.name))

    components = [made[param.name] for param in params.PARAMS]
    infotext_fields: list[tuple[Any, Any]] = [(enabled, _enabled_from_infotext)]
    infotext_fields += [(made[p.name], params.infotext_key(p)) for p in params.PARAMS if p.infotext]
    paste_field_names = [params.infotext_key(p) for p in params.PARAMS if p.infotext]
    return BuiltUI(components, infotext_fields, paste_field_names)


def render_params_table() -> str:
    """The README's table of controls / API arguments, generated from the schema (a test keeps it in sync)."""
    lines = ["| # | API name | Control | Default | Accepted | Infotext key | X/Y/Z axis | What it does |",
             "|---|---|---|---|---|---|---|---|"]
    for index, param in enumerate(params.PARAMS):
        default = params.format_value(param, param.default) if param.kind is not bool else str(param.default).lower()
        key = f"`{params.infotext_key(param)}`" if param.infotext else "(presence of `ASAG scale`)"
        lines.append(f"| {index} | `{param.name}` | {param.label} | `{default}` | {param.accepted()} | {key} | "
                     f"`{params.XYZ_PREFIX}{param.xyz}` | {param.hint} |")
    return "\n".join(lines) + "\n"


def hints_by_elem_suffix() -> dict[str, str]:
    """Hint text for each control, keyed by the elem_id suffix (the parameter name)."""
    return {param.name: param.hint for param in params.PARAMS}


def render_hints_js() -> str:
    """The body of javascript/asag.js; tests check the committed file equals this."""
    hints = json.dumps(hints_by_elem_suffix(), indent=2, ensure_ascii=False)
    return JS_TEMPLATE.replace("__HINTS__", hints)


JS_TEMPLATE = """\
// ASAG hints. Generated from asag_lib/params.py by `python -m asag_lib.ui`; do not edit by hand.
// Each hint goes on the control's own label (where A1111's hints.js puts its tooltips), the enable hint
// on the accordion header's checkbox only, so hovering one control never shows another's hint.
(function () {
    const hints = __HINTS__;

    function labelOf(root) {
        return root.querySelector("[data-testid='block-info']") || root.querySelector("label") || root;
    }

    function applyHints() {
        const app = typeof gradioApp === "function" ? gradioApp() : document;
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, hint] of Object.entries(hints)) {
                // Script.elem_id() names controls script_<tab>_<title>_<name>.
                const id = `script_${tab}_asag_${name}`;
                const root = app.querySelector(`#${id}`);
                if (!root) {
                    continue;
                }
                if (name === "enabled") {
                    // InputAccordion: the header's visible checkbox and its label text
                    const box = app.querySelector(`#${id}-visible-checkbox`);
                    for (const el of [box, box && box.parentElement]) {
                        if (el) {
                            el.title = hint;
                        }
                    }
                    continue;
                }
                labelOf(root).title = hint;
            }
        }
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(applyHints);
    } else {
        document.addEventListener("DOMContentLoaded", applyHints);
    }
})();
"""


if __name__ == "__main__":
    import pathlib

    target = pathlib.Path(__file__).resolve().parent.parent / "javascript" / "asag.js"
    target.write_text(render_hints_js(), encoding="utf-8")
    print(f"wrote {target}")
