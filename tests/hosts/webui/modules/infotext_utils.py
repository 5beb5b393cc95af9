"""Test double of A1111 1.10.1 modules/infotext_utils.py written for these tests: parsing and pasting only (no images, styles, settings overrides, hires back-compat or default-key filling)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# One "Key: value" pair of the parameter line. A key starts with a word character and has at least two
# characters of [word, space, '-', '/']; a value is a JSON string or everything up to the next comma.
_KEY = r"\w[\w \-/]+"
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_PAIR = re.compile(rf"\s*({_KEY}):\s*({_JSON_STRING}|[^,]*)(?:,|$)")
_SIZE_LIKE = re.compile(r"(\d+)x(\d+)")
_NEGATIVE = "Negative prompt:"


class PasteField(tuple):
    """A ``(component, target)`` pair; ``api`` names the request field the API fills from it."""

    component: Any
    target: str | Callable[[dict[str, str]], Any]
    api: str | None

    def __new__(cls, component: Any, target: Any, api: str | None = None) -> PasteField:
        pair = tuple.__new__(cls, (component, target))
        pair.component, pair.target, pair.api = component, target, api
        return pair


paste_fields: dict[str, dict[str, Any]] = {}
"""Per tab name: {"init_img": ..., "fields": [...], "override_settings_component": ...}."""


def reset() -> None:
    """Forget every tab's paste fields (the driver calls this before building the UI again)."""
    paste_fields.clear()


def add_paste_fields(tabname: str, init_img: Any, fields: Sequence[Any] | None,
                     override_settings_component: Any = None) -> None:
    """Register a tab's paste targets: PasteField objects or plain (component, target) pairs."""
    paste_fields[tabname] = {
        "init_img": init_img,
        "fields": list(fields or []),
        "override_settings_component": override_settings_component,
    }


def quote(text: Any) -> Any:
    """JSON-quote a value holding ',', ':' or a newline; anything else is returned unchanged."""
    as_text = str(text)
    if not any(ch in as_text for ch in ",:\n"):
        return text
    return json.dumps(as_text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Undo ``quote``; a string that is not valid JSON is returned as it is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def _split_prompts(lines: Iterable[str]) -> tuple[str, str]:
    """Lines before 'Negative prompt:' form the prompt; that line and the rest the negative prompt."""
    positive: list[str] = []
    negative: list[str] = []
    target = positive
    for raw in lines:
        line = raw.strip()
        if line.startswith(_NEGATIVE):
            target = negative
            line = line[len(_NEGATIVE):].strip()
        target.append(line)
    return "\n".join(positive), "\n".join(negative)


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict[str, Any]:
    """Parse an infotext into {"Prompt", "Negative prompt", key: str value, ...}.

    The last line holds the parameters when it has at least three pairs. Values that look like
    ``<int>x<int>`` are split into ``Key-1``/``Key-2``. Keys in ``skip_fields`` or the setting
    ``infotext_skip_pasting`` are dropped; then the ``infotext_pasted`` callbacks may edit the result.
    """
    lines = x.strip().split("\n")
    param_line = lines.pop() if lines else ""
    if len(_PAIR.findall(param_line)) < 3:
        lines.append(param_line)
        param_line = ""

    result: dict[str, Any] = {}
    result["Prompt"], result["Negative prompt"] = _split_prompts(lines)
    for key, raw_value in _PAIR.findall(param_line):
        value = unquote(raw_value.strip())
        size = _SIZE_LIKE.fullmatch(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value

    from modules import script_callbacks, shared

    for key in [*(skip_fields or ()), *getattr(shared.opts, "infotext_skip_pasting", ())]:
        result.pop(key, None)

    script_callbacks.infotext_pasted_callback(x, result)
    return result


def is_update(value: Any) -> bool:
    """Whether a paste target returned a gradio update dict instead of a plain value."""
    return isinstance(value, dict) and value.get("__type__") == "update"


def _as_component_type(component: Any, raw: Any) -> Any:
    """Convert a pasted value like the paste button does: by the type of the component's current value,
    except that "False" means False for a bool and int components take float(raw)."""
    kind = type(component.value)
    if kind is bool:
        return False if raw == "False" else bool(raw)
    if kind is int:
        return float(raw)
    return kind(raw)


def paste_values(fields: Iterable[Sequence[Any]], infotext: str) -> list[dict[str, Any]]:
    """The gradio update, one per field, that the paste button produces for ``infotext``.

    Double-only entry point (the host wires this into a gradio event). A target is an infotext key or
    a callable given the parsed dict; a missing key or a failed conversion gives an update without
    "value" (the component keeps its value).
    """
    import gradio as gr

    parsed = parse_generation_parameters(infotext)
    updates = []
    for field in fields:
        component, target = field[0], field[1]
        found = target(parsed) if callable(target) else parsed.get(target)
        if found is None:
            updates.append(gr.update())
        elif is_update(found):
            updates.append(found)
        else:
            try:
                updates.append(gr.update(value=_as_component_type(component, found)))
            except (TypeError, ValueError):
                updates.append(gr.update())
    return updates
