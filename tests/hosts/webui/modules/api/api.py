"""Test double of A1111 1.10.1 modules/api/api.py written for these tests: txt2img/img2img request handling only (no FastAPI routes, auth, queue lock, base64 images or other endpoints)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from modules import infotext_utils, processing, scripts, shared
from modules.api import models


class HTTPException(Exception):
    """Stands in for fastapi's HTTPException; ``str()`` starts with the status code."""

    def __init__(self, status_code: int, detail: str = "") -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def script_name_to_index(name: str, scripts_list: Sequence[Any]) -> int:
    """Position of the script titled ``name`` (compared case-insensitively); HTTP 422 if there is none."""
    wanted = name.lower()
    for index, script in enumerate(scripts_list):
        if script.title().lower() == wanted:
            return index
    raise HTTPException(422, f"Script '{name}' not found")


def _position(component: Any, inputs: Sequence[Any]) -> int | None:
    """Index of this very component object in a runner's inputs (identity, not equality)."""
    return next((i for i, c in enumerate(inputs) if c is component), None)


def _cast_like(component: Any, value: Any) -> Any:
    """The API's cast: the type of the component's value applied as a constructor, so bool("False") is
    True and int("2.5") raises."""
    if component.value is None:
        return value
    return type(component.value)(value)


class Api:
    """The generation half of the host's API object. ``Api()`` reads every script's default arguments by
    calling its ``ui()`` once more (inside a gradio Blocks), as the host does at start-up."""

    def __init__(self, app: Any = None, queue_lock: Any = None) -> None:
        self.app, self.queue_lock = app, queue_lock
        self.default_script_args = {
            False: self.init_default_script_args(scripts.scripts_txt2img),
            True: self.init_default_script_args(scripts.scripts_img2img),
        }

    # -- script arguments ---------------------------------------------------------------------------
    def init_default_script_args(self, script_runner: Any) -> list[Any]:
        """Flat default args: 0 for "no selectable script", then the ``.value`` of each control of a
        fresh ``ui()`` call at the script's ``args_from``..``args_to`` slots."""
        import gradio as gr

        if script_runner is None:
            return [0]
        width = max([1] + [s.args_to or 0 for s in script_runner.scripts])
        defaults: list[Any] = [None] * width
        defaults[0] = 0
        with gr.Blocks():
            for each in script_runner.scripts:
                start, stop = each.args_from, each.args_to
                if start is None or stop is None or stop <= start:
                    continue
                fresh = each.ui(each.is_img2img) or []
                for offset, control in enumerate(fresh[:stop - start]):
                    defaults[start + offset] = control.value
        return defaults

    def get_selectable_script(self, script_name: str | None, script_runner: Any) -> tuple[Any, int | None]:
        if not script_name:
            return None, None
        index = script_name_to_index(script_name, script_runner.selectable_scripts)
        return script_runner.selectable_scripts[index], index

    def apply_infotext(self, request: models._GenerationRequest, tabname: str, *,
                       script_runner: Any) -> dict[int, Any]:
        """Parse ``request.infotext``: fields with an ``api`` name fill request fields the payload did not
        give; fields whose component is one of the runner's inputs give script args (returned by index)."""
        text = request.infotext or ""
        if not text.strip():
            return {}
        parsed = infotext_utils.parse_generation_parameters(text)
        script_values: dict[int, Any] = {}
        for field in infotext_utils.paste_fields.get(tabname, {}).get("fields", []):
            component, target = field[0], field[1]
            found = target(parsed) if callable(target) else parsed.get(target)
            if infotext_utils.is_update(found):
                found = found.get("value")
            if found is None:
                continue
            api_name = getattr(field, "api", None)
            if api_name:
                if api_name not in request.given:
                    setattr(request, api_name, _cast_like(component, found))
                    request.given.add(api_name)
                continue
            slot = _position(component, script_runner.inputs)
            if slot is not None:
                script_values[slot] = _cast_like(component, found)
        return script_values

    def init_script_args(self, request: models._GenerationRequest, default_script_args: list[Any],
                         selectable_scripts: Any, selectable_idx: int | None, script_runner: Any, *,
                         input_script_args: dict[int, Any] | None = None) -> list[Any]:
        """Defaults, then infotext values, then the selectable script's args, then each
        ``alwayson_scripts`` entry copied positionally (no conversion; missing args keep the default,
        extra ones are dropped)."""
        args = list(default_script_args)
        for index, value in (input_script_args or {}).items():
            args[index] = value

        chosen = selectable_scripts  # the host's name for the one selectable script picked by script_name
        if chosen is not None:
            args[0] = selectable_idx + 1
            given = list(request.script_args or [])
            for offset, value in enumerate(given[:chosen.args_to - chosen.args_from]):
                args[chosen.args_from + offset] = value

        for name, entry in (request.alwayson_scripts or {}).items():
            script = script_runner.scripts[script_name_to_index(name, script_runner.scripts)]
            if script in script_runner.selectable_scripts:
                raise HTTPException(422, "Cannot have a selectable script in the always on scripts params")
            given = list((entry or {}).get("args", []))
            room = script.args_to - script.args_from
            for offset, value in enumerate(given[:room]):
                args[script.args_from + offset] = value
        return args

    # -- generation ---------------------------------------------------------------------------------
    def _generate(self, request: models._GenerationRequest, *, is_img2img: bool,
                  make: Callable[..., Any]) -> dict[str, Any]:
        tabname = "img2img" if is_img2img else "txt2img"
        runner = scripts.scripts_img2img if is_img2img else scripts.scripts_txt2img
        chosen, chosen_index = self.get_selectable_script(request.script_name, runner)
        from_infotext = self.apply_infotext(request, tabname, script_runner=runner)
        args = self.init_script_args(request, self.default_script_args[is_img2img], chosen, chosen_index, runner,
                                     input_script_args=from_infotext)

        fields = request.generation_fields()
        if request.sampler_index and "sampler_name" not in fields:
            fields["sampler_name"] = request.sampler_index
        fields["do_not_save_samples"] = fields["do_not_save_grid"] = not request.save_images
        p = make(**fields)
        p.scripts = runner
        p.script_args = tuple(args)
        p.is_api = True

        shared.state.begin(job=f"scripts_{tabname}")
        try:
            result = runner.run(p, *p.script_args) if chosen is not None else None
            if result is None:  # no selectable script, or it left the job to the normal pipeline
                result = processing.process_images(p)
        finally:
            shared.state.end()
            p.close()

        return {
            "images": list(result.images) if request.send_images else [],
            "parameters": request.as_dict(),
            "info": result.js(),
            # double-only: what the driver hands to tests
            "p": p,
            "processed": result,
        }

    def text2imgapi(self, txt2imgreq: models.StableDiffusionTxt2ImgProcessingAPI) -> dict[str, Any]:
        return self._generate(txt2imgreq, is_img2img=False, make=processing.StableDiffusionProcessingTxt2Img)

    def img2imgapi(self, img2imgreq: models.StableDiffusionImg2ImgProcessingAPI) -> dict[str, Any]:
        if not img2imgreq.given & {"init_images", "init_latent"}:
            raise HTTPException(404, "Init image not found")
        return self._generate(img2imgreq, is_img2img=True, make=processing.StableDiffusionProcessingImg2Img)
