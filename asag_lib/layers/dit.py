"""Which blocks of a transformer (DiT) model ASAG perturbs: family tables, presets and resolution.

Pure torch + standard library. A DiT block is a :class:`DitRef` ``(stack, index)``: ``double.1`` is
``double_blocks[1]`` of Flux/Chroma (joint text+image attention, two streams), ``single.10`` is
``single_blocks[10]`` (one stream over the concatenated text+image tokens), ``block.N`` a block of a family
with a single stack. The grammar is :mod:`asag_lib.layers.grammar`'s; UNet items are errors here, except
the UNet default ``middle``, which stands for the family default (``early``) so that a user who switches
from SDXL to a DiT without touching the layers field gets ASAG at that family's default blocks.

Presets (resolved from the live model's block counts):

| Preset | Flux / Chroma | Qwen-Image, Anima | why |
|---|---|---|---|
| `early` (default) | `double.1` (`double.0` when the model has one double block) | `block.1` | one early joint block, as diffusers' PAG-SD3 default `blocks.1` ("1st transformer block"): one extra kernel call per step, and early joint blocks set the layout that attention guidance acts on |
| `all` | every double and single block | every block | slow: one Sinkhorn kernel per block |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from asag_lib.layers.grammar import DIT_PRESET_NAMES, DIT_STACKS, Item, err, parse_spec, runs, select, span

__all__ = ["DIT_DEFAULT_PRESET", "FAMILIES", "DitFamily", "DitLayout", "DitRef", "describe_dit", "dit_layout",
           "resolve_dit", "resolve_dit_refs"]

DIT_DEFAULT_PRESET = "early"

#: UNet presets that stand for the DiT default on a DiT (the UI default, so switching models just works).
_UNET_DEFAULT_ALIASES = frozenset({"middle"})


@dataclass(frozen=True)
class DitRef:
    """One DiT block: ``stack`` in {"double", "single", "block"}, ``index`` in that stack."""

    stack: str
    index: int

    def __post_init__(self):
        if self.stack not in DIT_STACKS:
            raise ValueError(f"DitRef stack must be one of {', '.join(DIT_STACKS)}, not {self.stack!r}")
        if self.index < 0:
            raise ValueError(f"DitRef index must be non-negative, got {self.index}")

    @property
    def sort_key(self) -> tuple[int, int]:
        return (DIT_STACKS.index(self.stack), self.index)

    def __str__(self) -> str:
        return f"{self.stack}.{self.index}"


@dataclass(frozen=True)
class DitFamily:
    """A DiT family as the hosts build it: its label, and per grammar stack the module attribute holding
    the blocks and the host's block-replacement key name (``patches_replace["dit"][(key, i)]``)."""

    name: str
    label: str
    stacks: tuple[tuple[str, str, str], ...]
    """(grammar stack, attribute on the diffusion model, host key name)."""

    def host_key(self, ref: DitRef) -> tuple[str, int]:
        for stack, _, key in self.stacks:
            if stack == ref.stack:
                return (key, ref.index)
        raise ValueError(f"{self.label} has no {ref.stack} blocks")


_FLUX_STACKS = (("double", "double_blocks", "double_block"), ("single", "single_blocks", "single_block"))

#: Families whose blocks ASAG can reach, by the class name of the host's diffusion model.
FAMILIES: dict[str, DitFamily] = {
    "IntegratedFluxTransformer2DModel": DitFamily("flux", "Flux", _FLUX_STACKS),
    "IntegratedChromaTransformer2DModel": DitFamily("chroma", "Chroma", _FLUX_STACKS),
    "QwenImageTransformer2DModel": DitFamily("qwen", "Qwen-Image",
                                             (("block", "transformer_blocks", "double_block"),)),
    "Anima": DitFamily("anima", "Anima", (("block", "blocks", "double_block"),)),
}


@dataclass(frozen=True)
class DitLayout:
    """Block counts of one live DiT, per stack, in execution order."""

    family: DitFamily
    counts: tuple[tuple[str, int], ...]

    def count(self, stack: str) -> int:
        return dict(self.counts).get(stack, 0)

    def refs(self, stack: str | None = None) -> list[DitRef]:
        return [DitRef(s, i) for s, n in self.counts if stack in (None, s) for i in range(n)]

    def listing(self) -> str:
        """What exists, for error messages: ``double blocks 0-18; single blocks 0-37``."""
        return "; ".join(f"{s} blocks {span(range(n))}" for s, n in self.counts if n) or "no blocks"


def dit_layout(model: nn.Module, family: DitFamily) -> DitLayout:
    """The block counts of ``model`` (the host's diffusion model) for ``family``."""
    counts = []
    for stack, attr, _ in family.stacks:
        blocks = getattr(model, attr, None)
        counts.append((stack, len(blocks) if blocks is not None else 0))
    return DitLayout(family, tuple(counts))


def _preset_refs(name: str, layout: DitLayout) -> list[DitRef]:
    if name == "all":
        return layout.refs()
    # early: one early joint block (index 1, as PAG-SD3's blocks.1), index 0 if only one exists
    first_stack = next((s for s, n in layout.counts if n), None)
    if first_stack is None:
        return []
    return [DitRef(first_stack, min(1, layout.count(first_stack) - 1))]


def _item_refs(item: Item, layout: DitLayout, spec: str) -> list[DitRef]:
    label = layout.family.label
    if item.kind == "preset" and (item.name in DIT_PRESET_NAMES or item.name in _UNET_DEFAULT_ALIASES):
        name = DIT_DEFAULT_PRESET if item.name in _UNET_DEFAULT_ALIASES else item.name
        return _preset_refs(name, layout)
    if item.is_unet:
        raise err(spec, f"{item.text!r} names UNet layers, but this model is a DiT ({label}); DiT items are "
                        f"double.N, single.N, block.N, ranges such as double.0-4, and the presets "
                        f"{', '.join(DIT_PRESET_NAMES)} (middle, the UNet default, stands for early); "
                        f"this model has {layout.listing()}")
    n = layout.count(item.name)
    if n == 0:
        raise err(spec, f"this {label} model has no {item.name} blocks; it has {layout.listing()}")
    if item.kind == "section":
        return layout.refs(item.name)
    lo, hi = item.ids
    what = f"{item.name}.{lo}" if lo == hi else f"{item.name}.{lo}-{hi}"
    indices = select(list(range(n)), item.ids, spec, what, f"it has {layout.listing()}", model=f"{label} model")
    return [DitRef(item.name, i) for i in indices]


def resolve_dit_refs(layout: DitLayout, spec: str) -> list[DitRef]:
    """The blocks ``spec`` selects in ``layout``, in execution order, without duplicates."""
    seen: set[DitRef] = set()
    for item in parse_spec(spec):
        seen.update(_item_refs(item, layout, spec))
    return sorted(seen, key=lambda r: r.sort_key)


def resolve_dit(model: nn.Module, family: DitFamily, spec: str) -> list[tuple[DitRef, nn.Module]]:
    """The blocks of the live ``model`` that ``spec`` selects, as (ref, block module)."""
    layout = dit_layout(model, family)
    attrs = {stack: attr for stack, attr, _ in family.stacks}
    return [(ref, getattr(model, attrs[ref.stack])[ref.index]) for ref in resolve_dit_refs(layout, spec)]


def uses_unet_default(spec: str) -> bool:
    """Whether ``spec`` relies on the UNet default standing for the DiT default (said in the console)."""
    return any(item.kind == "preset" and item.name in _UNET_DEFAULT_ALIASES for item in parse_spec(spec))


def describe_dit(refs: Iterable[DitRef | tuple[DitRef, nn.Module]], sep: str = ", ") -> str:
    """Canonical compact form, e.g. ``double.0-4, single.10``; parses back to the same selection."""
    flat = sorted({r[0] if isinstance(r, tuple) else r for r in refs}, key=lambda r: r.sort_key)
    if not flat:
        return "none"
    parts = []
    for stack in DIT_STACKS:
        indices = [r.index for r in flat if r.stack == stack]
        parts += [f"{stack}.{a}" if a == b else f"{stack}.{a}-{b}" for a, b in runs(indices)]
    return sep.join(parts)
