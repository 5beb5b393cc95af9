"""The layer-spec grammar, one for UNets and DiTs: syntax only, no model needed (``validate_spec``).

A spec is a list of items separated by ``,`` or ``;`` (``;`` survives X/Y/Z and infotext, which split
on commas). Case and whitespace are ignored. The result is the union of the items, in model order,
without duplicates. ``N``, ``K``, ``I``, ``A``, ``B`` are non-negative decimal integers; ``A-B`` is an
inclusive range with ``A <= B``. (Markdown tables, to be copied into the README.)

UNet items (SD1.5, SD2, SDXL; resolved in :mod:`asag_lib.layers.unet`):

| Item | Selects |
|---|---|
| `middle` | every transformer of the middle block (SDXL 10, refiner 4, SD1.5/SD2 1) |
| `middle.K` | transformer K of the middle block (`middle.0` = the first one only) |
| `middle.A-B` | transformers A..B of the middle block |
| `input.N`, `output.N` | every transformer of input (output) block N (raw block id, as in the module path) |
| `input.N.K`, `output.N.K` | transformer K of that block: `input.7.3` = `input_blocks.7.1.transformer_blocks.3.attn1` |
| `input.N.A-B` | transformers A..B of that block, e.g. `output.0.0-4` |
| `input.A-B`, `input.A-B.K`, `input.A-B.C-D` | the same for every block A..B that has attention |
| `input`, `output`, `all` | every transformer of every input block / output block / the whole UNet |
| `dI`, `uI`, `m0` | pamparamm's shorthand: `d`/`u` + the ORDINAL among the input/output blocks that have attention, not the raw id. SDXL: `d0-d3` = input 4, 5, 7, 8; `u0-u5` = output 0-5. SD1.5/SD2: `d0-d5` = input 1, 2, 4, 5, 7, 8; `u0-u8` = output 3-11. Refiner: `d0-d3` = input 4, 5, 7, 8; `u0-u5` = output 3-8. `m0` = the middle block |
| `dI.K`, `dI.A-B` | transformer K (A..B) of that block, e.g. `d2.2-9`, `m0.0` |
| `dA-B`, `dA-dB` | ordinals A..B, e.g. `d0-d3`, `u1-2.0` |
| a preset name | `middle`, `middle-first`, `deep`, `deep-middle`, `outputs`, `all` |

DiT items (Flux, Chroma and the other transformer families; resolved in :mod:`asag_lib.layers.dit`):

| Item | Selects |
|---|---|
| `double.N`, `double.A-B` | joint (double-stream) block N, or A..B (Flux/Chroma `double_blocks`) |
| `single.N`, `single.A-B` | single-stream block N, or A..B (Flux/Chroma `single_blocks`) |
| `block.N`, `block.A-B` | block N of a family with one stack of blocks |
| `double`, `single`, `block` | every block of that stack |
| `early` | the family's cheap default (see :data:`asag_lib.layers.dit.FAMILIES`) |
| `all` | every block (slow) |

Items combine freely within one model kind: ``double.0-4, single.10``. Rules:

* A single number must exist, otherwise resolution is a ``ValueError`` that says what exists.
* A range selects the members that exist within it and must select at least one.
* ``middle.N.K`` is rejected (write ``middle.K``), so a number after ``middle.`` is a transformer index.
* Numbers compare as integers: ``output.1`` never matches ``output.10``, ``d1`` never ``d10``.
* Malformed specs (empty, ``input.``, ``input.8-7``, ``x3``, negative numbers) are ``ValueError``s that
  name the spec and list the accepted forms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ACCEPTED_FORMS", "DIT_PRESET_NAMES", "UNET_PRESET_NAMES", "Item", "parse_spec", "validate_spec"]

#: Preset names, UI order, the default first (their expansions live beside each model kind).
UNET_PRESET_NAMES = ("middle", "middle-first", "deep", "deep-middle", "outputs", "all")
DIT_PRESET_NAMES = ("early", "all")
DIT_STACKS = ("double", "single", "block")

_PRESETS = frozenset(UNET_PRESET_NAMES) | frozenset(DIT_PRESET_NAMES)
_SECTIONS = frozenset({"input", "output"}) | frozenset(DIT_STACKS)

ACCEPTED_FORMS = (
    "accepted forms, separated by commas: a preset (" + ", ".join(UNET_PRESET_NAMES) + "; DiT: "
    + ", ".join(DIT_PRESET_NAMES) + "); "
    "input / output / all; middle, middle.K, middle.A-B; input.N, input.N.K, input.A-B, input.A-B.K-L "
    "(same for output); shorthand dI, uI, m0 with optional .K or .A-B (I = ordinal among blocks with "
    "attention), ranges dA-B or dA-dB; DiT blocks double.N, single.N, block.N, ranges double.A-B, whole "
    "stacks double / single / block; numbers are non-negative integers, ranges A-B need A <= B"
)

_NUM = r"(\d+)(?:-(\d+))?"
_RE_CANON = re.compile(rf"(input|output)\.{_NUM}(?:\.{_NUM})?")
_RE_MIDDLE = re.compile(rf"middle(?:\.{_NUM})?")
_RE_SHORT = re.compile(r"([dmu])(\d+)(?:-\1?(\d+))?" + rf"(?:\.{_NUM})?")
_RE_DIT = re.compile(rf"(double|single|block)\.{_NUM}")

Range = tuple[int, int]


@dataclass(frozen=True)
class Item:
    """One parsed item. ``kind``: "preset", "section" (a whole UNet section or DiT stack), "blocks"
    (UNet blocks) or "dit" (DiT blocks of stack ``name``). ``ids``/``index`` None = all; ``ordinal`` =
    ids are d/u/m ordinals."""

    text: str
    kind: str
    name: str
    ids: Range | None = None
    index: Range | None = None
    ordinal: bool = False

    @property
    def is_dit(self) -> bool:
        """Whether the item only makes sense on a DiT."""
        return self.kind == "dit" or (self.kind == "section" and self.name in DIT_STACKS) or (
            self.kind == "preset" and self.name in DIT_PRESET_NAMES and self.name not in UNET_PRESET_NAMES)

    @property
    def is_unet(self) -> bool:
        """Whether the item only makes sense on a UNet."""
        return self.kind == "blocks" or (self.kind == "section" and self.name in ("input", "output")) or (
            self.kind == "preset" and self.name in UNET_PRESET_NAMES and self.name not in DIT_PRESET_NAMES)


def err(spec: str, detail: str) -> ValueError:
    return ValueError(f"invalid layer spec {spec!r}: {detail}")


def _range(spec: str, text: str, lo: str | None, hi: str | None) -> Range | None:
    if lo is None:
        return None
    a = int(lo)
    b = a if hi is None else int(hi)
    if b < a:
        raise err(spec, f"range {a}-{b} in {text!r} is reversed (write {b}-{a})")
    return (a, b)


def parse_spec(spec: str) -> tuple[Item, ...]:
    """Check the syntax of ``spec`` without a model; raises ``ValueError`` naming the spec and the forms."""
    if not isinstance(spec, str):
        raise ValueError(f"invalid layer spec {spec!r}: expected a string; {ACCEPTED_FORMS}")
    text = re.sub(r"\s+", "", spec).lower()
    if not text:
        raise err(spec, f"it is empty; {ACCEPTED_FORMS}")
    items = []
    for part in re.split(r"[,;]", text):
        if not part:
            raise err(spec, f"empty item (stray comma); {ACCEPTED_FORMS}")
        items.append(_parse_item(spec, part))
    return tuple(items)


def _parse_item(spec: str, part: str) -> Item:
    if part in _SECTIONS:
        return Item(part, "section", part)
    if part in _PRESETS:
        return Item(part, "preset", part)
    m = _RE_CANON.fullmatch(part)
    if m:
        return Item(part, "blocks", m[1], _range(spec, part, m[2], m[3]), _range(spec, part, m[4], m[5]))
    m = _RE_MIDDLE.fullmatch(part)
    if m:
        return Item(part, "blocks", "middle", (0, 0), _range(spec, part, m[1], m[2]))
    m = _RE_DIT.fullmatch(part)
    if m:
        return Item(part, "dit", m[1], _range(spec, part, m[2], m[3]))
    m = _RE_SHORT.fullmatch(part)
    if m:
        block = {"d": "input", "m": "middle", "u": "output"}[m[1]]
        return Item(part, "blocks", block, _range(spec, part, m[2], m[3]), _range(spec, part, m[4], m[5]),
                    ordinal=True)
    if re.search(r"(\.|^[a-z]+)-\d", part):
        raise err(spec, f"{part!r}: negative numbers are not allowed; {ACCEPTED_FORMS}")
    if re.fullmatch(r"middle\.\d+\.\d+(-\d+)?", part):
        raise err(spec, f"{part!r}: the middle block takes only a transformer index, write "
                        f"middle.{part.split('.', 2)[2]} (middle.K selects transformer K)")
    raise err(spec, f"cannot parse {part!r}; {ACCEPTED_FORMS}")


def validate_spec(spec: str) -> str:
    """Syntax check for UI/API input; returns the normalised spec (lower case, no whitespace, ``, ``)."""
    return ", ".join(item.text for item in parse_spec(spec))


# --------------------------------------------------------------------------------------------------
# small helpers shared by the UNet and DiT resolvers


def fmt_ids(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids) or "none"


def runs(values: list[int]) -> list[Range]:
    """Consecutive runs of sorted integers: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    out: list[Range] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def span(indices: Iterable[int]) -> str:
    """``0-2, 5`` for [0, 1, 2, 5]; ``none`` when empty."""
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs(sorted(indices))) or "none"


def select(available: list[int], want: Range | None, spec: str, what: str, listing: str,
           model: str = "UNet") -> list[int]:
    """The members of ``available`` that ``want`` names; a missing single number or an empty range is an
    error that says what exists (``listing``)."""
    if want is None:
        return list(available)
    lo, hi = want
    if lo == hi:
        if lo not in available:
            raise err(spec, f"{what} does not exist in this {model}; {listing}")
        return [lo]
    chosen = [i for i in available if lo <= i <= hi]
    if not chosen:
        raise err(spec, f"{what} selects nothing in this {model}; {listing}")
    return chosen
