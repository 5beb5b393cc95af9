"""Test double of backend/diffusion_engine/base.py written for these tests; no loading, CLIP, VAE.

``ForgeObjects`` bundles the patchers; ``shallow_copy`` is how processing resets them before every sampling
(docs/hosts.md §11.5). Unlike the host, the engine is built from ready ``ForgeObjects`` and the model-family
flags (the host derives both from a checkpoint's config).
"""

from __future__ import annotations

from typing import Any

from modules_forge import forge_version


class ForgeObjects:
    def __init__(self, unet: Any, clip: Any, vae: Any, clipvision: Any):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self) -> ForgeObjects:
        """A new holder pointing at the same patcher objects."""
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    """What scripts reach through ``p.sd_model``: the three ForgeObjects slots and the family flags.
    Neo has no ``is_sd2``/``is_sd3`` (SD2 and SD3 were removed there)."""

    def __init__(self, forge_objects: ForgeObjects, *, is_sd1: bool = False, is_sd2: bool = False,
                 is_sdxl: bool = False, is_sd3: bool = False):
        self.forge_objects = forge_objects
        self.forge_objects_original = forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = forge_objects.shallow_copy()
        self.model_config = None
        self.is_sd1, self.is_sdxl = is_sd1, is_sdxl
        if forge_version.version != "neo":
            self.is_sd2, self.is_sd3 = is_sd2, is_sd3

    def is_webui_legacy_model(self) -> bool:
        """True for the UNet families the WebUI always supported (Forge main: and SD2/SD3; Neo: SD1 and
        SDXL only), False for Flux and other DiTs."""
        if forge_version.version == "neo":
            return bool(self.is_sd1 or self.is_sdxl)
        return bool(self.is_sd1 or self.is_sd2 or self.is_sdxl or self.is_sd3)
