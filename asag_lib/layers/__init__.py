"""Which attention layers ASAG perturbs, for UNets and DiTs.

* :mod:`~asag_lib.layers.grammar`: the layer-spec grammar (one for both), syntax only;
* :mod:`~asag_lib.layers.unet`: UNet layouts (SD1.5/SD2/SDXL), presets, resolution to ``attn1`` modules;
* :mod:`~asag_lib.layers.dit`: DiT families (Flux, Chroma), presets, resolution to blocks.

The UNet names are re-exported here, as ``from asag_lib import layers; layers.resolve(...)`` has always
worked; DiT names too.
"""

from asag_lib.layers.dit import (
    DIT_DEFAULT_PRESET,
    FAMILIES,
    DitFamily,
    DitLayout,
    DitRef,
    describe_dit,
    dit_layout,
    resolve_dit,
    resolve_dit_refs,
    uses_unet_default,
)
from asag_lib.layers.grammar import ACCEPTED_FORMS, parse_spec, validate_spec
from asag_lib.layers.unet import (
    DEFAULT_PRESET,
    FAMILY_LAYOUTS,
    PRESET_HELP,
    PRESETS,
    BlockInfo,
    LayerRef,
    Layout,
    describe,
    detect_family,
    layout_of,
    preset_names,
    preset_spec,
    resolve,
    resolve_refs,
    token_counts,
)

__all__ = [
    "ACCEPTED_FORMS",
    "DEFAULT_PRESET",
    "DIT_DEFAULT_PRESET",
    "FAMILIES",
    "FAMILY_LAYOUTS",
    "PRESETS",
    "PRESET_HELP",
    "BlockInfo",
    "DitFamily",
    "DitLayout",
    "DitRef",
    "LayerRef",
    "Layout",
    "describe",
    "describe_dit",
    "detect_family",
    "dit_layout",
    "layout_of",
    "parse_spec",
    "preset_names",
    "preset_spec",
    "resolve",
    "resolve_dit",
    "resolve_dit_refs",
    "resolve_refs",
    "token_counts",
    "uses_unet_default",
    "validate_spec",
]
