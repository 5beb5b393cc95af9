"""Test double of modules.scripts (A1111 1.10.1): the Script base class, the loader and ScriptRunner.

What it keeps from the host: two Script instances per class (one per tab), arguments as one flat list
whose slot 0 is the selected script and whose other slots are given out in UI creation order
("accordions" section first), hooks that receive their own slice of that list, and exceptions in hooks
reported instead of raised. Left out: metadata.ini ordering, postprocessing scripts, the seed and sampler
built-ins, `on_before_component` element hooks beyond a plain call.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import gradio as gr

from modules import errors, paths, script_callbacks, script_loading

AlwaysVisible = object()
"""Returned by Script.show() for scripts that run for every job, next to the selectable ones."""


@dataclass
class PostprocessImageArgs:
    image: Any


@dataclass
class PostprocessBatchListArgs:
    images: list[Any]


@dataclass
class PostSampleArgs:
    samples: Any


class Script:
    """Base class of WebUI scripts; every hook gets `p` and then the script's own argument slice."""

    name: str | None = None
    section: str | None = None
    filename: str | None = None
    args_from: int | None = None
    args_to: int | None = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname: str | None = None
    group: Any = None
    create_group = True
    infotext_fields: list[tuple[Any, Any]] | None = None
    paste_field_names: list[str] | None = None
    api_info: Any = None
    controls: list[Any] | None = None
    setup_for_ui_only = False

    def title(self) -> str:
        raise NotImplementedError

    def ui(self, is_img2img: bool) -> list[Any]:
        return []

    def show(self, is_img2img: bool) -> Any:
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        """`script_<tab>_<title>_<item>`; the tab part only for scripts shown in both tabs."""
        both_tabs = self.show(True) == self.show(False)
        tab = ("img2img_" if self.is_img2img else "txt2img_") if both_tabs else ""
        slug = "".join(ch for ch in self.title().lower().replace(" ", "_") if ch.isalnum() or ch == "_")
        return f"script_{tab}{slug}_{item_id}"


class ScriptBuiltinUI(Script):
    """Built-in UI scripts (seed, sampler, refiner): their `setup` is skipped for API jobs."""

    setup_for_ui_only = True

    def elem_id(self, item_id: str) -> str:
        """Built-ins use `<tab>_<item>` ids, without the `script_` prefix and title."""
        return f"{'img2img' if self.is_img2img else 'txt2img'}_{item_id}"


class ScriptFile(NamedTuple):
    basedir: str
    filename: str
    path: str


class ScriptClassData(NamedTuple):
    script_class: type
    path: str
    basedir: str
    module: ModuleType


scripts_data: list[ScriptClassData] = []
current_basedir = paths.script_path


def basedir() -> str:
    """The folder of the extension whose script is being loaded (the WebUI root otherwise)."""
    return current_basedir


def _builtin_files() -> list[ScriptFile]:
    found = []
    for folder in ("modules/processing_scripts", "scripts"):
        directory = os.path.join(paths.script_path, folder)
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if name.endswith(".py") and not name.startswith("_"):
                found.append(ScriptFile(paths.script_path, name, os.path.join(directory, name)))
    return found


def _script_classes(module: ModuleType) -> Iterable[type]:
    for value in list(vars(module).values()):
        if isinstance(value, type) and issubclass(value, Script) and value not in (Script, ScriptBuiltinUI) and value.__module__ == module.__name__:
            yield value


def _import_script_file(script_file: ScriptFile) -> ModuleType | None:
    """Run one script file with its extension folder on sys.path (so it can import its own packages)."""
    global current_basedir
    saved_path = list(sys.path)
    sys.path.insert(0, script_file.basedir)
    current_basedir = script_file.basedir
    try:
        return script_loading.load_module(script_file.path)
    except Exception:
        errors.report(f"Error loading script: {script_file.filename}", exc_info=True)
        return None
    finally:
        sys.path[:] = saved_path
        current_basedir = paths.script_path


def load_scripts(files: Iterable[ScriptFile] = ()) -> None:
    """Import the built-in scripts, then `files` (the double is told the extension files instead of
    scanning extensions/), after clearing every callback; then make fresh runners for both tabs."""
    global scripts_txt2img, scripts_img2img
    del scripts_data[:]
    script_callbacks.clear_callbacks()
    for script_file in [*_builtin_files(), *files]:
        module = _import_script_file(script_file)
        if module is not None:
            scripts_data.extend(ScriptClassData(cls, script_file.path, script_file.basedir, module)
                                for cls in _script_classes(module))
    scripts_txt2img, scripts_img2img = ScriptRunner(), ScriptRunner()


def _tab_fields(is_img2img: bool) -> dict[str, Any]:
    tab = "img2img" if is_img2img else "txt2img"
    return {"is_txt2img": tab == "txt2img", "is_img2img": tab == "img2img", "tabname": tab}


class ScriptRunner:
    """One tab's scripts, their UI arguments and the hook fan-out."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.titles: list[str] = []
        self.title_map: dict[str, Script] = {}
        self.infotext_fields: list[tuple[Any, Any]] = []
        self.paste_field_names: list[str] = []
        self.inputs: list[Any] = [None]
        self.callback_map: dict[str, list[Script]] = {}

    def initialize_scripts(self, is_img2img: bool) -> None:
        """One fresh instance of every loaded class for this tab, sorted into AlwaysOn and selectable."""
        instances = []
        for data in scripts_data:
            instance = data.script_class()
            vars(instance).update(filename=data.path, **_tab_fields(is_img2img))
            instances.append((instance, instance.show(is_img2img)))
        self.alwayson_scripts = [s for s, shown in instances if shown is AlwaysVisible]
        self.selectable_scripts = [s for s, shown in instances if shown and shown is not AlwaysVisible]
        for s in self.alwayson_scripts:
            s.alwayson = True
        self.scripts = [s for s, shown in instances if shown]
        self.callback_map = {}

    # -- UI
    def prepare_ui(self) -> None:
        self.inputs, self.infotext_fields, self.paste_field_names = [None], [], []

    def create_script_ui(self, script: Script) -> None:
        """Build the script's controls; their positions in `inputs` become its argument slice."""
        first = len(self.inputs)
        script.controls = list(script.ui(script.is_img2img) or [])
        self.inputs += script.controls
        script.args_from, script.args_to = first, first + len(script.controls)
        self.infotext_fields += script.infotext_fields or []
        self.paste_field_names += script.paste_field_names or []

    def setup_ui_for_section(self, section: str | None, scriptlist: list[Script] | None = None) -> None:
        pool = self.alwayson_scripts if scriptlist is None else scriptlist
        for script in [s for s in pool if not s.alwayson or s.section == section]:
            wrapper = gr.Group(visible=script.alwayson) if script.create_group else contextlib.nullcontext()
            with wrapper:
                self.create_script_ui(script)

    def setup_ui(self) -> list[Any]:
        """The remaining AlwaysOn UIs, the script dropdown in slot 0, then the selectable scripts' UIs."""
        self.title_map = {s.title().lower(): s for s in self.scripts}
        self.titles = [s.title() for s in self.selectable_scripts]
        self.setup_ui_for_section(None)
        self.inputs[0] = gr.Dropdown(label="Script", elem_id="script_list", choices=["None", *self.titles],
                                     value="None", type="index")
        self.setup_ui_for_section(None, self.selectable_scripts)
        return self.inputs

    def script(self, title: str) -> Script | None:
        return self.title_map.get(title.lower())

    # -- running
    def run(self, p, *args):
        """Run the selectable script chosen in slot 0; None when it is "None" (then the caller samples)."""
        index = args[0] if args else 0
        if not index:
            return None
        chosen = self.selectable_scripts[index - 1]
        return chosen.run(p, *args[chosen.args_from:chosen.args_to])

    def ordered_scripts(self, method_name: str) -> list[Script]:
        """AlwaysOn scripts in load order (the host also applies user and metadata.ini ordering)."""
        return self.callback_map.setdefault(method_name, list(self.alwayson_scripts))

    def _each(self, method_name: str, p, *leading: Any, **kwargs: Any) -> None:
        for script in self.ordered_scripts(method_name):
            own_args = p.script_args[script.args_from:script.args_to]
            try:
                getattr(script, method_name)(p, *leading, *own_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def setup_scrips(self, p, *, is_ui: bool = True) -> None:  # (sic) the host's name
        """`setup` of every AlwaysOn script; API jobs skip the UI-only ones."""
        wanted = [s for s in self.alwayson_scripts if is_ui or not s.setup_for_ui_only]
        for script in wanted:
            try:
                script.setup(p, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error in setup of {script.filename}", exc_info=True)

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def before_process_batch(self, p, **kwargs):
        self._each("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._each("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._each("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p):
        self._each("before_hr", p)

    def post_sample(self, p, ps: PostSampleArgs):
        self._each("post_sample", p, ps)

    def postprocess_batch(self, p, images, **kwargs):
        self._each("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._each("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._each("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)


scripts_txt2img = ScriptRunner()
scripts_img2img = ScriptRunner()
scripts_current: ScriptRunner | None = None
