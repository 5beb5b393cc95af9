"""Which self-attention (``attn1``) layers ASAG perturbs: the layer-spec grammar, presets and resolution.

Pure torch + standard library; never imports a host module. Resolution walks the host's module names
(``input_blocks`` / ``middle_block`` / ``output_blocks``, the ``SpatialTransformer`` at sub-module ``1``
of each block, ``.transformer_blocks[j].attn1``), which A1111 (ldm/sgm), Forge and ComfyUI share, so it
works on any of them without knowing their classes.

A layer is a triple (block, block id, transformer index), :class:`LayerRef`: ``("input", 7, 3)`` is
``input_blocks.7.1.transformer_blocks.3.attn1`` and also the Forge/ComfyUI ``attn1`` patch key. The
middle block has block id 0.

The grammar (shared with DiTs) is in :mod:`asag_lib.layers.grammar`; this module resolves its UNet items.

Presets
-------
Resolved from the structure of the loaded UNet, so unknown layouts work too; the per-family expansions
are in :data:`PRESETS` (attn1 counts in brackets).

| Preset | SD1.5 / SD2 (16 attn1) | SDXL base (70) | SDXL refiner (44) |
|---|---|---|---|
| `middle` (default) | `middle.0` (1) | `middle.0-9` (10) | `middle.0-3` (4) |
| `middle-first` | `middle.0` (1) | `middle.0` (1) | `middle.0` (1) |
| `deep` | `input.7-8, output.3-5` (5) | `input.7-8, output.0-2` (50) | `input.7-8, output.3-5` (20) |
| `deep-middle` | deep + middle (6) | deep + middle (60) | deep + middle (24) |
| `outputs` | `output.3-11` (9) | `output.0-5` (36) | `output.3-8` (24) |
| `all` | 16 | 70 | 44 |

``deep`` = the layers outside the middle block at the lowest resolution that has attention there (ds4
on all three families: 32×32 tokens at 1024² on SDXL). ``middle-first`` is what ersatzForge and
incantations perturb for PAG (Forge key ``("middle", 0, 0)``); ``middle`` is what Forge's PAG, ComfyUI
and pamparamm perturb by default (their 2-tuple ``("middle", 0)`` covers every middle transformer).
ASAG always patches with explicit 3-tuple keys (:attr:`LayerRef.forge_key`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from asag_lib.layers.grammar import (
    ACCEPTED_FORMS,
    UNET_PRESET_NAMES,
    Item,
    err,
    fmt_ids,
    parse_spec,
    runs,
    select,
    span,
    validate_spec,
)

__all__ = [
    "ACCEPTED_FORMS",
    "DEFAULT_PRESET",
    "FAMILY_LAYOUTS",
    "PRESETS",
    "PRESET_HELP",
    "BlockInfo",
    "LayerRef",
    "Layout",
    "describe",
    "detect_family",
    "layout_of",
    "parse_spec",
    "preset_names",
    "preset_spec",
    "resolve",
    "resolve_refs",
    "token_counts",
    "validate_spec",
]

_BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2}
_ATTR = {"input": "input_blocks", "middle": "middle_block", "output": "output_blocks"}


# --------------------------------------------------------------------------------------------------
# references and layouts


@dataclass(frozen=True)
class LayerRef:
    """One ``attn1`` layer: ``block`` in {"input", "middle", "output"}, ``block_id`` (0 for middle),
    ``index`` (position in ``transformer_blocks``)."""

    block: str
    block_id: int
    index: int

    def __post_init__(self):
        if self.block not in _BLOCK_ORDER:
            raise ValueError(f"LayerRef block must be input, middle or output, not {self.block!r}")
        if self.block == "middle" and self.block_id != 0:
            raise ValueError(f"LayerRef: the middle block has block_id 0, not {self.block_id}")
        if self.block_id < 0 or self.index < 0:
            raise ValueError(f"LayerRef ids must be non-negative: {self.block_id}, {self.index}")

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """Position in the UNet's execution order."""
        return (_BLOCK_ORDER[self.block], self.block_id, self.index)

    @property
    def module_path(self) -> str:
        """Qualified name relative to the UNet (A1111: ``shared.sd_model.model.diffusion_model``)."""
        prefix = "middle_block" if self.block == "middle" else f"{_ATTR[self.block]}.{self.block_id}"
        return f"{prefix}.1.transformer_blocks.{self.index}.attn1"

    @property
    def forge_key(self) -> tuple[str, int, int]:
        """The 3-tuple key of Forge/ComfyUI ``attn1`` patches: ``(block, block_id, transformer index)``."""
        return (self.block, self.block_id, self.index)

    def __str__(self) -> str:
        if self.block == "middle":
            return f"middle.{self.index}"
        return f"{self.block}.{self.block_id}.{self.index}"


@dataclass(frozen=True)
class BlockInfo:
    """A block that has a ``SpatialTransformer``: its depth and its resolution level (number of
    downsamplings between the latent and this block's tokens)."""

    block: str
    block_id: int
    depth: int
    level: int


@dataclass(frozen=True)
class Layout:
    """The attention-bearing blocks of a UNet, in UNet order."""

    blocks: tuple[BlockInfo, ...]

    def ids(self, block: str) -> list[int]:
        return [b.block_id for b in self.blocks if b.block == block]

    def info(self, block: str, block_id: int) -> BlockInfo | None:
        for b in self.blocks:
            if b.block == block and b.block_id == block_id:
                return b
        return None

    def refs(self) -> list[LayerRef]:
        return [LayerRef(b.block, b.block_id, j) for b in self.blocks for j in range(b.depth)]

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        return tuple((b.block, b.block_id, b.depth) for b in self.blocks)


def _make_layout(inputs: Mapping[int, tuple[int, int]], middle: tuple[int, int],
                 outputs: Mapping[int, tuple[int, int]]) -> Layout:
    blocks = [BlockInfo("input", i, d, lv) for i, (d, lv) in inputs.items()]
    blocks.append(BlockInfo("middle", 0, *middle))
    blocks += [BlockInfo("output", i, d, lv) for i, (d, lv) in outputs.items()]
    return Layout(tuple(blocks))


#: The real layouts: block id -> (transformer depth, level). See docs/hosts.md §4 and §13.2.
FAMILY_LAYOUTS: dict[str, Layout] = {
    "sd15": _make_layout(
        {1: (1, 0), 2: (1, 0), 4: (1, 1), 5: (1, 1), 7: (1, 2), 8: (1, 2)},
        (1, 3),
        {i: (1, 2 - (i - 3) // 3) for i in range(3, 12)},
    ),
    "sdxl": _make_layout(
        {4: (2, 1), 5: (2, 1), 7: (10, 2), 8: (10, 2)},
        (10, 2),
        {0: (10, 2), 1: (10, 2), 2: (10, 2), 3: (2, 1), 4: (2, 1), 5: (2, 1)},
    ),
    "sdxl-refiner": _make_layout(
        {4: (4, 1), 5: (4, 1), 7: (4, 2), 8: (4, 2)},
        (4, 3),
        {3: (4, 2), 4: (4, 2), 5: (4, 2), 6: (4, 1), 7: (4, 1), 8: (4, 1)},
    ),
}


def _unet_root(unet) -> nn.Module:
    """Accept the UNet itself or a wrapper holding it (``.diffusion_model``, ``.model.diffusion_model``)."""
    for path in ((), ("diffusion_model",), ("model", "diffusion_model"), ("model", "model", "diffusion_model")):
        obj = unet
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "input_blocks") and hasattr(obj, "output_blocks"):
            return obj
    raise ValueError(
        f"not a UNet: {type(unet).__name__} has no input_blocks/middle_block/output_blocks "
        "(expected an ldm/sgm/Forge UNetModel or a model holding one as .diffusion_model)"
    )


def _child(module: nn.Module, name: str) -> nn.Module | None:
    return dict(module.named_children()).get(name)


def _has_child_class(module: nn.Module, class_name: str) -> bool:
    return any(type(c).__name__ == class_name for c in module.children())


def _walk(unet) -> tuple[Layout, dict[LayerRef, nn.Module]]:
    root = _unet_root(unet)
    blocks: list[BlockInfo] = []
    modules: dict[LayerRef, nn.Module] = {}

    def visit(block: str, block_id: int, container: nn.Module, level: int) -> None:
        st = _child(container, "1")
        tbs = getattr(st, "transformer_blocks", None) if st is not None else None
        if tbs is None:
            return
        depth = 0
        for j, tb in enumerate(tbs):
            attn1 = getattr(tb, "attn1", None)
            if attn1 is None:
                continue
            modules[LayerRef(block, block_id, j)] = attn1
            depth = j + 1
        if depth:
            blocks.append(BlockInfo(block, block_id, depth, level))

    level = 0
    for i, container in enumerate(root.input_blocks):
        visit("input", i, container, level)
        if _has_child_class(container, "Downsample"):
            level += 1
    middle = getattr(root, "middle_block", None)
    if middle is not None:
        visit("middle", 0, middle, level)
    for i, container in enumerate(root.output_blocks):
        visit("output", i, container, level)
        if _has_child_class(container, "Upsample"):
            level = max(level - 1, 0)
    return Layout(tuple(blocks)), modules


def layout_of(unet) -> Layout:
    """The attention-bearing blocks of ``unet`` (any module tree with the hosts' names)."""
    return _walk(unet)[0]


def detect_family(unet) -> str:
    """``"sd15"`` (also SD2.x, same layout), ``"sdxl"``, ``"sdxl-refiner"`` or ``"unknown"``."""
    sig = layout_of(unet).signature() if not isinstance(unet, Layout) else unet.signature()
    for family, layout in FAMILY_LAYOUTS.items():
        if layout.signature() == sig:
            return family
    return "unknown"


# --------------------------------------------------------------------------------------------------
# presets

DEFAULT_PRESET = "middle"

#: Per-family expansion of each preset, in the grammar (documentation and UI hints; resolution computes
#: the same sets from the structure, so unknown layouts work too).
PRESETS: dict[str, dict[str, str]] = {
    "middle": {"sd15": "middle.0", "sdxl": "middle.0-9", "sdxl-refiner": "middle.0-3"},
    "middle-first": {"sd15": "middle.0", "sdxl": "middle.0", "sdxl-refiner": "middle.0"},
    "deep": {
        "sd15": "input.7-8.0, output.3-5.0",
        "sdxl": "input.7-8.0-9, output.0-2.0-9",
        "sdxl-refiner": "input.7-8.0-3, output.3-5.0-3",
    },
    "deep-middle": {
        "sd15": "input.7-8.0, middle.0, output.3-5.0",
        "sdxl": "input.7-8.0-9, middle.0-9, output.0-2.0-9",
        "sdxl-refiner": "input.7-8.0-3, middle.0-3, output.3-5.0-3",
    },
    "outputs": {"sd15": "output.3-11.0", "sdxl": "output.0-2.0-9, output.3-5.0-1",
                "sdxl-refiner": "output.3-8.0-3"},
    "all": {"sd15": "input, middle, output", "sdxl": "input, middle, output",
            "sdxl-refiner": "input, middle, output"},
}

PRESET_HELP: dict[str, str] = {
    "middle": "every transformer of the middle block (default; Forge PAG / ComfyUI / pamparamm)",
    "middle-first": "only the first transformer of the middle block (ersatzForge / incantations PAG)",
    "deep": "the lowest-resolution layers outside the middle block (SDXL: input 7-8, output 0-2)",
    "deep-middle": "deep plus the middle block",
    "outputs": "every output (decoder) block",
    "all": "every self-attention layer (slow)",
}

_FAMILY_ALIASES = {"sd15": "sd15", "sd1": "sd15", "sd2": "sd15", "sdxl": "sdxl", "sdxl-refiner": "sdxl-refiner"}


def preset_names() -> tuple[str, ...]:
    """Preset names in UI order, the default first."""
    return tuple(PRESETS)


def preset_spec(name: str, family: str) -> str:
    """The expansion of preset ``name`` for ``family`` ("sd15"/"sd2", "sdxl", "sdxl-refiner")."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown layer preset {name!r}; presets: {', '.join(PRESETS)}")
    fam = _FAMILY_ALIASES.get(family.strip().lower())
    if fam is None:
        raise ValueError(f"no preset table for model family {family!r}; families: sd15, sd2, sdxl, sdxl-refiner")
    return PRESETS[key][fam]


def _preset_refs(name: str, layout: Layout) -> list[LayerRef]:
    if name == "all":
        return layout.refs()
    if name == "middle":
        return [r for r in layout.refs() if r.block == "middle"]
    if name == "middle-first":
        return [r for r in layout.refs() if r.block == "middle"][:1]
    if name == "outputs":
        return [r for r in layout.refs() if r.block == "output"]
    outer = [b for b in layout.blocks if b.block != "middle"]
    deepest = max((b.level for b in outer), default=None)
    chosen = {(b.block, b.block_id) for b in outer if b.level == deepest}
    if name == "deep-middle":
        chosen |= {(b.block, b.block_id) for b in layout.blocks if b.block == "middle"}
    return [r for r in layout.refs() if (r.block, r.block_id) in chosen]


# --------------------------------------------------------------------------------------------------
# resolution






def _item_refs(item: Item, layout: Layout, spec: str) -> list[LayerRef]:
    if item.is_dit:
        raise err(spec, f"{item.text!r} names DiT blocks (double/single/block, early), but this model is a "
                        "UNet; UNet items are middle, input.N, output.N, dI, uI and the presets "
                        + ", ".join(UNET_PRESET_NAMES))
    if item.kind == "preset":
        refs = _preset_refs(item.name, layout)
        if not refs:
            raise err(spec, f"preset {item.name!r} selects nothing in this UNet")
        return refs
    if item.kind == "section":
        refs = [r for r in layout.refs() if r.block == item.name]
        if not refs:
            raise err(spec, f"this UNet has no {item.name} blocks with attention")
        return refs

    block = item.name
    ids = layout.ids(block)
    if item.ordinal:
        letter = {"input": "d", "middle": "m", "output": "u"}[block]
        ordinals = list(range(len(ids)))
        pairs = ", ".join(f"{letter}{o}={block}" + ("" if block == "middle" else f".{i}")
                          for o, i in enumerate(ids)) or "none"
        lo, hi = item.ids
        what = f"{letter}{lo}" if lo == hi else f"{letter}{lo}-{hi}"
        chosen_ids = [ids[o] for o in select(ordinals, item.ids, spec, what,
                                              f"{block} blocks with attention: {pairs}")]
        label = {i: f"{letter}{o}" for o, i in enumerate(ids)}
    else:
        if block == "middle":
            if not ids:
                raise err(spec, "this UNet has no middle block with attention")
            chosen_ids = [0]
            label = {0: "middle"}
        else:
            lo, hi = item.ids
            what = f"{block}.{lo}" if lo == hi else f"{block}.{lo}-{hi}"
            chosen_ids = select(ids, item.ids, spec, what, f"{block} blocks with attention: {fmt_ids(ids)}")
            label = {i: f"{block}.{i}" for i in ids}

    refs = []
    for bid in chosen_ids:
        depth = layout.info(block, bid).depth
        if item.index is None:
            indices = list(range(depth))
        else:
            lo, hi = item.index
            what = f"{label[bid]}.{lo}" if lo == hi else f"{label[bid]}.{lo}-{hi}"
            where = "the middle block" if block == "middle" else f"{block} block {bid}"
            indices = select(list(range(depth)), item.index, spec, what,
                              f"{where} has transformers {span(range(depth))}")
        refs += [LayerRef(block, bid, j) for j in indices]
    return refs






def resolve_refs(layout: Layout | str | nn.Module, spec: str) -> list[LayerRef]:
    """The layers ``spec`` selects in ``layout`` (a :class:`Layout`, a family name or a UNet), in UNet
    order, without duplicates."""
    if isinstance(layout, str):
        fam = _FAMILY_ALIASES.get(layout.strip().lower())
        if fam is None:
            raise ValueError(f"unknown model family {layout!r}; families: sd15, sd2, sdxl, sdxl-refiner")
        layout = FAMILY_LAYOUTS[fam]
    elif not isinstance(layout, Layout):
        layout = layout_of(layout)
    items = parse_spec(spec)
    seen: set[LayerRef] = set()
    for item in items:
        seen.update(_item_refs(item, layout, spec))
    return sorted(seen, key=lambda r: r.sort_key)


def resolve(unet, spec: str) -> list[tuple[LayerRef, nn.Module]]:
    """The ``attn1`` modules of ``unet`` that ``spec`` selects, as (ref, module), in UNet order."""
    layout, modules = _walk(unet)
    return [(ref, modules[ref]) for ref in resolve_refs(layout, spec)]


def describe(refs: Iterable[LayerRef | tuple[LayerRef, nn.Module]], sep: str = ", ") -> str:
    """A compact canonical string for a selection, e.g. ``"input.7-8.0-9, middle.0-9"``; it parses back
    to the same selection. ``"none"`` when empty. ``sep="; "`` gives a form without commas (X/Y/Z)."""
    flat = sorted({r[0] if isinstance(r, tuple) else r for r in refs}, key=lambda r: r.sort_key)
    if not flat:
        return "none"
    per_block: dict[tuple[str, int], list[int]] = {}
    for r in flat:
        per_block.setdefault((r.block, r.block_id), []).append(r.index)
    # group consecutive block ids of one section with the same transformer indices
    groups: list[tuple[str, int, int, tuple[int, ...]]] = []
    for (block, bid), indices in per_block.items():
        key = tuple(indices)
        if groups and groups[-1][0] == block and groups[-1][2] == bid - 1 and groups[-1][3] == key:
            groups[-1] = (block, groups[-1][1], bid, key)
        else:
            groups.append((block, bid, bid, key))
    parts = []
    for block, lo, hi, indices in groups:
        head = "middle" if block == "middle" else f"{block}.{lo}" if lo == hi else f"{block}.{lo}-{hi}"
        for a, b in runs(list(indices)):
            parts.append(f"{head}.{a}" if a == b else f"{head}.{a}-{b}")
    return sep.join(parts)


def token_counts(unet, refs: Iterable[LayerRef | tuple[LayerRef, nn.Module]], latent_h: int,
                 latent_w: int) -> dict[LayerRef, int]:
    """Tokens each layer's self-attention sees for a ``latent_h``×``latent_w`` latent. Each downsampling
    halves height and width rounding up (the strided conv), so odd sizes are exact."""
    layout = unet if isinstance(unet, Layout) else layout_of(unet)
    out: dict[LayerRef, int] = {}
    for r in refs:
        ref = r[0] if isinstance(r, tuple) else r
        info = layout.info(ref.block, ref.block_id)
        if info is None or ref.index >= info.depth:
            raise ValueError(f"layer {ref} does not exist in this UNet")
        h, w = latent_h, latent_w
        for _ in range(info.level):
            h, w = (h + 1) // 2, (w + 1) // 2
        out[ref] = h * w
    return out
