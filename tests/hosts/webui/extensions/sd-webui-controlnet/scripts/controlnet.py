"""Test double of sd-webui-controlnet's scripts/controlnet.py for these tests; only the UNet hook part.

An AlwaysVisible script without UI that hooks the UNet in process() for jobs with `p.controlnet_units`
(set by the driver) and restores it in postprocess().
"""

from __future__ import annotations

from typing import Any

import controlnet_double
from modules import scripts, shared


class Script(scripts.Script):
    def title(self) -> str:
        return "ControlNet"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        return []

    def process(self, p: Any, *args: Any) -> None:
        units = getattr(p, "controlnet_units", None)
        if not units:
            return
        hook = controlnet_double.UnetHook(units)
        hook.hook(shared.sd_model.model.diffusion_model, p)
        p.controlnet_hook = hook

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        hook = getattr(p, "controlnet_hook", None)
        if hook is not None:
            hook.restore()
            p.controlnet_hook = None
