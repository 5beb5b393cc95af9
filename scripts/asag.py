"""ASAG: Adversarial Sinkhorn Attention Guidance — the AlwaysOn script for A1111 and Forge.

Only host glue lives here; everything else is in `asag_lib` (the WebUI puts this extension's folder on
sys.path while it loads scripts, so the package is imported now, at module import).
"""

from __future__ import annotations

import importlib

from modules import script_callbacks, scripts

from asag_lib import params, telemetry, ui
from asag_lib.hosts import detect, job, xyz

TITLE = "ASAG"  # also the API key in alwayson_scripts: keep it stable
LABEL = "ASAG: Adversarial Sinkhorn Attention Guidance"  # the accordion's title, says what it is

HOST = detect()
ADAPTER = importlib.import_module(f"asag_lib.hosts.{HOST}") if HOST in ("a1111", "forge") else None

if ADAPTER is not None and hasattr(ADAPTER, "register"):
    ADAPTER.register()


# At import for API-only start-up (the X/Y/Z choices are built before on_before_ui there), and again
# before every UI build (after a reload); `register` deduplicates by label.
xyz.register()
script_callbacks.on_before_ui(xyz.register)
# Infotext keeps only non-default values: pasting fills the rest from the defaults it was written with.
# No `name=` keyword: Forge Classic's registration functions take the callback only (the script failed to load
# there); removing it first keeps one registration across script reloads on every host.
script_callbacks.remove_callbacks_for_function(params.fill_pasted_infotext)
script_callbacks.on_infotext_pasted(params.fill_pasted_infotext)
if hasattr(script_callbacks, "on_image_saved"):  # telemetry JSON next to the job's saved images
    script_callbacks.remove_callbacks_for_function(telemetry.on_image_saved)
    script_callbacks.on_image_saved(telemetry.on_image_saved)


class ASAGScript(scripts.Script):
    sorting_priority = 15

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool):
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool):
        built = ui.build(self.elem_id, LABEL)
        self.infotext_fields = built.infotext_fields
        self.paste_field_names = built.paste_field_names
        return built.components

    def process(self, p, *args):
        job.prepare_job(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        current = job.get_job(p)
        if current is not None and ADAPTER is not None:
            ADAPTER.before_sampling(p, current, **kwargs)

    def postprocess_batch(self, p, *args, **kwargs):
        # after sampling and decoding, before each image's infotext is made and saved (hosts.md §1.2)
        if getattr(ADAPTER, "REPORTS_STEPS", False):
            job.settle_infotext(p)

    def postprocess(self, p, processed, *args):
        telemetry.finish(job.get_job(p))
        job.finish_job(p)
