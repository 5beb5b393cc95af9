"""X/Y/Z plot axes for every parameter, built from the schema; the same on A1111 and Forge.

Axes set `p.asag_<name>` (read back by `params.with_overrides`). Numeric axes accept the host's range
syntax (`1-3`, `1-3 (+0.5)`, `1-3 [5]`); every value is validated before the grid starts, with a
message naming the axis and the accepted values.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from typing import Any

from asag_lib import params

XYZ_MODULE_NAMES = frozenset({"xyz_grid.py", "xy_grid.py", "scripts.xyz_grid", "scripts.xy_grid"})

_NUM = r"([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)"
_RANGE_STEP = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}\s*(?:\(\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*\))?\s*")
_RANGE_COUNT = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}\s*\[\s*(\d+)\s*\]\s*")


def axis_label(param: params.Param) -> str:
    assert param.xyz is not None
    return params.XYZ_PREFIX + param.xyz


def split_values(text: str) -> list[str]:
    """CSV split like the host's (quotes protect commas, e.g. a layer list)."""
    rows = list(csv.reader([text], skipinitialspace=True)) if text.strip() else [[]]
    return [value.strip() for value in rows[0] if value.strip()]


def _expand_range(param: params.Param, token: str) -> list[str]:
    """Expand `a-b`, `a-b (+step)` and `a-b [count]` for numeric parameters; other tokens pass through."""
    if param.kind not in (int, float):
        return [token]
    if match := _RANGE_COUNT.fullmatch(token):
        start, end, count = float(match[1]), float(match[2]), int(match[3])
        if count < 1:
            return [token]
        values = [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
    elif match := _RANGE_STEP.fullmatch(token):
        start, end = float(match[1]), float(match[2])
        step = float(match[3]) if match[3] else 1.0
        if step == 0 or (end - start) * step < 0:
            raise ValueError(
                f"ASAG X/Y/Z: range {token!r} for '{param.name}' never reaches its end; accepted: "
                f"'a-b', 'a-b (+step)' or 'a-b [count]' with {param.accepted()}"
            )
        count = int(abs(end - start) / abs(step) + 1e-9) + 1
        values = [start + step * i for i in range(count)]
    else:
        return [token]
    if param.kind is int:
        return [str(round(value)) for value in values]
    return [f"{round(value, 10):g}" for value in values]


def parse_axis_values(param: params.Param, text: str) -> list[str]:
    """The `prepare` of an axis: split, expand ranges, validate; values stay strings for `apply`."""
    values = [expanded for token in split_values(text) for expanded in _expand_range(param, token)]
    for value in values:
        params.coerce(param, value, "X/Y/Z")
    return values


def make_apply(param: params.Param) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, _values: Any) -> None:
        setattr(p, param.attr, params.coerce(param, value, "X/Y/Z"))
        if param.name != "enabled" and not hasattr(p, params.PARAMS_BY_NAME["enabled"].attr):
            # Setting any ASAG value on an axis enables ASAG for that cell.
            setattr(p, params.PARAMS_BY_NAME["enabled"].attr, True)

    return apply


def make_confirm(param: params.Param) -> Callable[[Any, Any], None]:
    def confirm(_p: Any, values: Any) -> None:
        for value in values:
            params.coerce(param, value, f"X/Y/Z axis '{axis_label(param)}'")

    return confirm


def make_choices(param: params.Param) -> Callable[[], list[str]] | None:
    """Dropdown values for booleans and enumerations (our own list: Forge Classic lacks boolean_choice).

    Layers stay free text: specs contain commas and dots, and presets are typed by name.
    """
    if param.kind is bool:
        return lambda: ["True", "False"]
    if param.choices:
        return lambda: list(param.choice_values)
    return None


def axis_options(xyz_module: Any) -> list[Any]:
    """AxisOption objects of the host's X/Y/Z module for every parameter that has an axis label."""
    options = []
    for param in params.PARAMS:
        if param.xyz is None:
            continue
        options.append(
            xyz_module.AxisOption(
                axis_label(param),
                str,
                make_apply(param),
                confirm=make_confirm(param),
                choices=make_choices(param),
                prepare=None if (param.kind is bool or param.choices) else (lambda text, _p=param: parse_axis_values(_p, text)),
            )
        )
    return options


def find_xyz_module() -> Any | None:
    """The host's loaded X/Y/Z script module (it is not importable by name: the loader never registers it)."""
    try:
        from modules import scripts
    except ImportError:
        return None
    for data in getattr(scripts, "scripts_data", []):
        if getattr(data.script_class, "__module__", None) in XYZ_MODULE_NAMES:
            return data.module
    return None


def register() -> int:
    """Add our axes to the host's X/Y/Z module, deduplicated by label; returns how many were added."""
    module = find_xyz_module()
    if module is None or not hasattr(module, "axis_options"):
        return 0
    existing = {getattr(option, "label", None) for option in module.axis_options}
    added = [option for option in axis_options(module) if option.label not in existing]
    module.axis_options.extend(added)
    return len(added)
