"""Test double of modules.script_callbacks (A1111 1.10.1): registration by file, the CFG parameter
objects, and callers that report a failing callback instead of raising.

Left out: most categories (image saved, model loaded, ...), metadata.ini ordering and the user's
callback order setting: callbacks run in registration order.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from modules import errors


class ScriptCallback(NamedTuple):
    script: str
    callback: Callable[..., Any]
    name: str | None = None


@dataclass
class CFGDenoiserParams:
    """Given to cfg_denoiser callbacks before the model call; the denoiser reads the fields back."""

    x: Any
    image_cond: Any
    sigma: Any
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


@dataclass
class CFGDenoisedParams:
    """Given to cfg_denoised callbacks after the model call (no sigma, no denoiser)."""

    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any


@dataclass
class AfterCFGCallbackParams:
    """Given to cfg_after_cfg callbacks with the combined prediction; `x` is read back."""

    x: Any
    sampling_step: int
    total_sampling_steps: int


CATEGORIES = ("app_started", "model_loaded", "ui_tabs", "ui_settings", "before_ui", "script_unloaded",
              "infotext_pasted", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component",
              "after_component")

callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{c}": [] for c in CATEGORIES}
ordered_callbacks_map: dict[str, list[ScriptCallback]] = {}


def _registering_file() -> str:
    """The file of the nearest caller outside this module (the host attributes a callback to it)."""
    for frame in inspect.stack()[1:]:
        if os.path.abspath(frame.filename) != os.path.abspath(__file__):
            return frame.filename
    return "unknown file"


def _add(category: str, callback: Callable[..., Any], name: str | None) -> None:
    callback_map[f"callbacks_{category}"].append(ScriptCallback(_registering_file(), callback, name))


def ordered_callbacks(category: str) -> list[ScriptCallback]:
    """Registration order, cached until the number of callbacks in the category changes."""
    key = f"callbacks_{category}"
    current = callback_map[key]
    cached = ordered_callbacks_map.get(key)
    if cached is None or len(cached) != len(current):
        cached = ordered_callbacks_map[key] = list(current)
    return cached


def _run_all(category: str, *args: Any) -> None:
    for entry in ordered_callbacks(category):
        try:
            entry.callback(*args)
        except Exception:
            errors.report(f"{category} callback from {entry.script} failed", exc_info=True)


def clear_callbacks() -> None:
    for entries in callback_map.values():
        entries.clear()
    ordered_callbacks_map.clear()


def remove_current_script_callbacks() -> None:
    """Drop every callback registered from the caller's file, in every category."""
    caller = os.path.abspath(_registering_file())
    for key, entries in callback_map.items():
        entries[:] = [e for e in entries if os.path.abspath(e.script) != caller]
        ordered_callbacks_map.pop(key, None)


def remove_callbacks_for_function(callback_func: Callable[..., Any]) -> None:
    for key, entries in callback_map.items():
        entries[:] = [e for e in entries if e.callback is not callback_func]
        ordered_callbacks_map.pop(key, None)


# -- registration (keyword-only name, as in the host)

def on_app_started(callback, *, name=None):
    _add("app_started", callback, name)


def on_model_loaded(callback, *, name=None):
    _add("model_loaded", callback, name)


def on_ui_tabs(callback, *, name=None):
    _add("ui_tabs", callback, name)


def on_ui_settings(callback, *, name=None):
    _add("ui_settings", callback, name)


def on_before_ui(callback, *, name=None):
    _add("before_ui", callback, name)


def on_script_unloaded(callback, *, name=None):
    _add("script_unloaded", callback, name)


def on_infotext_pasted(callback, *, name=None):
    _add("infotext_pasted", callback, name)


def on_cfg_denoiser(callback, *, name=None):
    _add("cfg_denoiser", callback, name)


def on_cfg_denoised(callback, *, name=None):
    _add("cfg_denoised", callback, name)


def on_cfg_after_cfg(callback, *, name=None):
    _add("cfg_after_cfg", callback, name)


def on_before_component(callback, *, name=None):
    _add("before_component", callback, name)


def on_after_component(callback, *, name=None):
    _add("after_component", callback, name)


# -- callers used by the rest of the host

def app_started_callback(demo, app):
    _run_all("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run_all("model_loaded", sd_model)


def ui_settings_callback():
    _run_all("ui_settings")


def before_ui_callback():
    _run_all("before_ui")


def script_unloaded_callback():
    _run_all("script_unloaded")


def infotext_pasted_callback(infotext: str, params: dict[str, Any]):
    _run_all("infotext_pasted", infotext, params)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _run_all("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _run_all("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _run_all("cfg_after_cfg", params)


def before_component_callback(component, **kwargs):
    _run_all("before_component", component, kwargs)


def after_component_callback(component, **kwargs):
    _run_all("after_component", component, kwargs)
