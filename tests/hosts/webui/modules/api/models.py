"""Test double of A1111 1.10.1 modules/api/models.py written for these tests: the two generation request bodies only (no pydantic, no validation, no response models)."""

from __future__ import annotations

from typing import Any

SCRIPT_FIELDS: dict[str, Any] = {
    "script_name": None,
    "script_args": [],
    "alwayson_scripts": {},
    "infotext": None,
    "send_images": True,
    "save_images": False,
    "sampler_index": None,
}
"""Request fields the API itself consumes; every other field goes to the processing object."""


class _GenerationRequest:
    """A request body: every given key becomes an attribute; generation fields not given are left to the
    processing class's own defaults, as the host's request models mirror those defaults."""

    def __init__(self, **payload: Any) -> None:
        self.given = set(payload)
        for name, default in SCRIPT_FIELDS.items():
            setattr(self, name, type(default)() if isinstance(default, (list, dict)) else default)
        for name, value in payload.items():
            setattr(self, name, value)

    def generation_fields(self) -> dict[str, Any]:
        """The given fields that are arguments of the processing object."""
        return {name: getattr(self, name) for name in self.given if name not in SCRIPT_FIELDS}

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in sorted(self.given | set(SCRIPT_FIELDS))}


class StableDiffusionTxt2ImgProcessingAPI(_GenerationRequest):
    """Body of POST /sdapi/v1/txt2img."""


class StableDiffusionImg2ImgProcessingAPI(_GenerationRequest):
    """Body of POST /sdapi/v1/img2img (``init_images`` are handed to the processing object as given)."""
