"""Test double of A1111 1.10.1 scripts/xyz_grid.py written for these tests: axis parsing and the per-cell runs only (no grid image, legend, seed variation, sub-grids or settings restore)."""

from __future__ import annotations

import copy
import csv
import itertools
import re
from collections.abc import Callable
from typing import Any, ClassVar

import gradio as gr
from modules import processing, scripts, shared

# ------------------------------------------------------------------------------------------------
# helpers extensions use when they declare axes


def apply_field(field: str) -> Callable[[Any, Any, Any], None]:
    """An ``apply`` that stores the value as ``p.<field>``."""
    def setter(p: Any, value: Any, _all: Any) -> None:
        setattr(p, field, value)

    return setter


def apply_override(field: str, boolean: bool = False) -> Callable[[Any, Any, Any], None]:
    """An ``apply`` that puts the value into ``p.override_settings[field]`` ("True"/"False" as bools)."""
    def override(p: Any, x: Any, xs: Any) -> None:
        value = (x == "True") if boolean else x
        if getattr(p, "override_settings", None) is None:
            p.override_settings = {}
        p.override_settings[field] = value

    return override


def boolean_choice(reverse: bool = False) -> Callable[[], list[str]]:
    """``choices`` for an on/off axis."""
    order = ["False", "True"] if reverse else ["True", "False"]
    return lambda: list(order)


def confirm_range(min_val: float, max_val: float, axis_label: str) -> Callable[[Any, list[Any]], None]:
    """A ``confirm`` rejecting any value outside [min_val, max_val]."""
    def check(p: Any, xs: list[Any]) -> None:
        bad = [x for x in xs if not min_val <= x <= max_val]
        if bad:
            raise ValueError(f"{axis_label} value {bad[0]} out of range [{min_val}, {max_val}]")

    return check


def format_value_add_label(p: Any, opt: AxisOption, x: Any) -> str:
    shown = round(x, 8) if isinstance(x, float) else x
    return f"{opt.label}: {shown}"


def format_value(p: Any, opt: AxisOption, x: Any) -> str:
    return str(x)


def format_nothing(p: Any, opt: AxisOption, x: Any) -> str:
    return ""


def do_nothing(p: Any, x: Any, xs: Any) -> None:
    return None


def str_permutations(x: Any) -> Any:
    """Marker ``type``: the axis values become every ordering of the listed tokens."""
    return x


# ------------------------------------------------------------------------------------------------
# axis options


class AxisOption:
    """One selectable axis: how to convert, check, apply and label its values."""

    is_img2img: ClassVar[bool | None] = None
    """None: offered on both tabs."""

    def __init__(self, label: str, type: Any, apply: Callable[[Any, Any, Any], None],
                 format_value: Callable[[Any, Any, Any], str] = format_value_add_label,
                 confirm: Callable[[Any, list[Any]], None] | None = None, cost: float = 0.0,
                 choices: Callable[[], list[str]] | None = None,
                 prepare: Callable[[str], list[Any]] | None = None) -> None:
        vars(self).update(label=label, type=type, apply=apply, format_value=format_value, confirm=confirm,
                          cost=cost, choices=choices, prepare=prepare)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


class AxisOptionImg2Img(AxisOption):
    is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    is_img2img = False


axis_options: list[AxisOption] = [AxisOption(label="Nothing", type=str, apply=do_nothing, format_value=format_nothing)]
axis_options += [
    kind(label=label, type=convert, apply=apply_field(attribute))
    for kind, label, convert, attribute in (
        (AxisOption, "Seed", int, "seed"),
        (AxisOption, "Steps", int, "steps"),
        (AxisOptionTxt2Img, "Hires steps", int, "hr_second_pass_steps"),
        (AxisOption, "CFG Scale", float, "cfg_scale"),
        (AxisOption, "Sampler", str, "sampler_name"),
        (AxisOptionImg2Img, "Denoising", float, "denoising_strength"),
    )
]
"""Built-in axes (a few of the host's); extensions append their own to this list."""


# ------------------------------------------------------------------------------------------------
# value parsing

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_STEP_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\))?\s*")
_COUNT_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*")


def _split_csv(text: str) -> list[str]:
    """Comma separated tokens; double quotes protect commas inside a token."""
    if not text.strip():
        return []
    row = next(csv.reader([text], skipinitialspace=True))
    return [token.strip() for token in row if token.strip()]


def _expand_numbers(token: str, kind: type) -> list[Any]:
    """``a-b``, ``a-b (+step)`` and ``a-b [count]`` as inclusive lists; any other token unchanged."""
    counted = _COUNT_RANGE.fullmatch(token)
    if counted:
        lo, hi, count = float(counted[1]), float(counted[2]), int(counted[3])
        points = [lo + (hi - lo) * i / max(count - 1, 1) for i in range(count)]
        return [round(v) if kind is int else v for v in points]
    stepped = _STEP_RANGE.fullmatch(token)
    if stepped:
        lo, hi = float(stepped[1]), float(stepped[2])
        step = float(stepped[3]) if stepped[3] else (1.0 if hi >= lo else -1.0)
        if step == 0 or (hi - lo) * step < 0:
            return []
        n = int((hi - lo) / step + 1e-9) + 1
        return [kind(lo + i * step) for i in range(n)]
    return [token]


def axis_values(opt: AxisOption, text: str, dropdown: list[str] | None, csv_mode: bool) -> list[Any]:
    """The converted values of one axis (``confirm`` is called by the caller, once for all axes)."""
    if opt.label == "Nothing":
        return [None]
    from_dropdown = opt.choices is not None and not csv_mode
    if from_dropdown:
        tokens: list[Any] = list(dropdown or [])
    elif callable(opt.prepare):
        tokens = list(opt.prepare(text or ""))
    else:
        tokens = _split_csv(text or "")
    if opt.type in (int, float):
        tokens = [v for t in tokens for v in (_expand_numbers(t, opt.type) if isinstance(t, str) else [t])]
    if opt.type is str_permutations:
        return list(itertools.permutations(tokens))
    return [opt.type(t) for t in tokens]


# ------------------------------------------------------------------------------------------------
# the script


class Script(scripts.Script):
    """Selectable "X/Y/Z plot": one ``process_images`` per cell on a shallow copy of ``p``."""

    current_axis_options: list[AxisOption]

    def title(self) -> str:
        return "X/Y/Z plot"

    def ui(self, is_img2img: bool) -> list[Any]:
        self.current_axis_options = [o for o in axis_options if o.is_img2img in (None, is_img2img)]
        labels = [o.label for o in self.current_axis_options]
        controls: list[Any] = []
        for axis in ("x", "y", "z"):
            controls.append(gr.Dropdown(label=f"{axis.upper()} type", choices=labels, value=labels[0], type="index",
                                        elem_id=self.elem_id(f"{axis}_type")))
            controls.append(gr.Textbox(label=f"{axis.upper()} values", elem_id=self.elem_id(f"{axis}_values")))
            controls.append(gr.Dropdown(label=f"{axis.upper()} values", choices=[], value=[], multiselect=True,
                                        visible=False))
        for name, label, default in (("draw_legend", "Draw legend", True),
                                     ("include_lone_images", "Include Sub Images", False),
                                     ("include_sub_grids", "Include Sub Grids", False),
                                     ("no_fixed_seeds", "Keep -1 for seeds", False),
                                     ("vary_seeds_x", "Vary seeds for X", False),
                                     ("vary_seeds_y", "Vary seeds for Y", False),
                                     ("vary_seeds_z", "Vary seeds for Z", False)):
            controls.append(gr.Checkbox(label=label, value=default, elem_id=self.elem_id(name)))
        controls.append(gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, step=2, value=0,
                                  elem_id=self.elem_id("margin_size")))
        controls.append(gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                    elem_id=self.elem_id("csv_mode")))
        return controls

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
            z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x,
            vary_seeds_y, vary_seeds_z, margin_size, csv_mode):
        if not no_fixed_seeds:  # otherwise seeds stay -1 and every cell draws its own
            processing.fix_seed(p=p)
        if not shared.opts.return_grid:
            p.batch_size = 1

        chosen = [self.current_axis_options[i or 0] for i in (x_type, y_type, z_type)]
        texts = (x_values, y_values, z_values)
        dropdowns = (x_values_dropdown, y_values_dropdown, z_values_dropdown)
        values = [axis_values(o, t, d, csv_mode) for o, t, d in zip(chosen, texts, dropdowns, strict=True)]
        for opt, vals in zip(chosen, values, strict=True):
            if opt.confirm is not None:
                opt.confirm(p, vals)

        cells = list(itertools.product(*(range(len(v)) for v in values)))  # (ix, iy, iz)
        # the costliest axis changes least often; cells are still reported x-fastest, then y, then z
        slow_first = sorted(range(3), key=lambda a: (-chosen[a].cost, 2 - a))
        run_order = sorted(cells, key=lambda c: tuple(c[a] for a in slow_first))
        shared.state.job_count = len(cells) * p.n_iter

        results: dict[tuple[int, ...], Any] = {}
        for cell in run_order:
            pc = copy.copy(p)
            for opt, vals, i in zip(chosen, values, cell, strict=True):
                opt.apply(pc, vals[i], vals)
            results[cell] = processing.process_images(pc)

        ordered = [results[c] for c in sorted(cells, key=lambda c: (c[2], c[1], c[0]))]
        return self._combine(p, ordered)

    @staticmethod
    def _combine(p: Any, cell_results: list[Any]) -> Any:
        """One Processed for the whole plot: every cell's images and infotexts in grid order, the cells
        themselves in ``cell_results``."""
        if not cell_results:
            raise RuntimeError("X/Y/Z plot: no cell was run")
        combined = copy.copy(cell_results[0])
        combined.images = [img for res in cell_results for img in res.images]
        combined.infotexts = [text for res in cell_results for text in res.infotexts]
        combined.cell_results = cell_results
        combined.p = p
        return combined
