"""The parameter schema: one row per parameter, the single source of truth.

UI controls, their order (= the positional API order), infotext keys, paste-back, X/Y/Z axes, API
parsing and the README table all derive from `PARAMS`. New parameters are only ever appended.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asag_lib import layers

INFOTEXT_PREFIX = "ASAG "
XYZ_PREFIX = "[ASAG] "
ATTR_PREFIX = "asag_"
"""X/Y/Z cells and other extensions override a parameter by setting `p.asag_<name>`."""

BLUR_SIGMA_INFINITE = 10000.0
"""`blur_sigma` at this value (the maximum; 'inf' is accepted too) is SEG's sigma -> infinity: the mean query."""

_TRUE = frozenset({"true", "1", "yes", "on", "enabled"})
_FALSE = frozenset({"false", "0", "no", "off", "disabled", ""})


@dataclass(frozen=True)
class Param:
    """One parameter: its type, default, range and every name it goes by."""

    name: str
    kind: type
    default: Any
    label: str
    hint: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[tuple[str, str], ...] = ()
    """(canonical value, UI label) pairs for enumerations."""
    infotext: str | None = None
    xyz: str | None = None

    @property
    def attr(self) -> str:
        return ATTR_PREFIX + self.name

    @property
    def choice_values(self) -> tuple[str, ...]:
        return tuple(value for value, _ in self.choices)

    def accepted(self) -> str:
        """Human description of the accepted values, used in every error message."""
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(repr(v) for v in self.choice_values)
        if self.kind in (int, float):
            noun = "an integer" if self.kind is int else "a number"
            return f"{noun} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        if self.name == "layers":
            return "a preset name or a layer spec such as 'middle' or 'input.7-8,output.0.0-4'"
        return "a string"


PARAMS: tuple[Param, ...] = (
    Param("enabled", bool, False, "Enable ASAG", "Turn Adversarial Sinkhorn Attention Guidance on for this job.",
          xyz="Enabled"),
    Param("scale", float, 1.5, "Scale", "Guidance strength s in eps + s·(cond − weak). 0 turns the term off "
          "(bit-identical to no ASAG). Typical 1–3.", 0.0, 20.0, 0.05, infotext="scale", xyz="Scale"),
    Param("layers", str, "middle", "Layers", "Self-attention layers to perturb: a preset or a spec like "
          "'middle', 'input.7-8', 'output.0.0-4', 'm0', 'u0,u1'.", infotext="layers", xyz="Layers"),
    Param("iterations", int, 2, "Sinkhorn iterations", "Maximum Sinkhorn iterations per layer; the paper "
          "uses about 2.", 1, 20, 1, infotext="iterations", xyz="Iterations"),
    Param("tolerance", float, 1e-3, "Early-stop tolerance", "Stop iterating once every row of the plan sums "
          "to 1 within this tolerance; 0 always runs all iterations.", 0.0, 0.5, 0.0005,
          infotext="tolerance", xyz="Tolerance"),
    Param("start", float, 0.0, "Start", "Fraction of the pass's sampling steps: step i of N is guided from "
          "i/N >= start (0 = first step).", 0.0, 1.0, 0.01, infotext="start", xyz="Start"),
    Param("end", float, 1.0, "End", "Fraction of the pass's sampling steps: step i of N is guided while "
          "i/N < end (1 = up to the last step).", 0.0, 1.0, 0.01, infotext="end", xyz="End"),
    Param("hires", str, "both", "Passes with Hires. fix", "Which sampling passes get ASAG when Hires. fix is on.",
          choices=(("both", "Both passes"), ("first", "First pass only"), ("hires", "Hires pass only")),
          infotext="hires", xyz="Hires pass"),
    Param("rescale", float, 0.0, "Rescale", "Shrink the ASAG term so the guided prediction's standard "
          "deviation moves towards the cond prediction's (in eps space; CFG itself is untouched; 0 = off).",
          0.0, 1.0, 0.05,
          infotext="rescale", xyz="Rescale"),
    Param("plan", str, "rows", "Plan output", "'rows': output n·P·V, rows of the plan sum to 1 (this "
          "project's reading of the paper). 'raw': P·V as in the unofficial implementation (output shrunk "
          "about n-fold, which nearly deletes the layer).", choices=(("rows", "n·P·V (rows sum to 1)"),
          ("raw", "P·V (unofficial)")), infotext="plan", xyz="Plan output"),
    Param("weak_pass", str, "auto", "Weak pass", "How the extra weak prediction is computed: 'separate' "
          "UNet call on the cond rows, 'batched' into the main call where safe, or 'auto'.",
          choices=(("auto", "Auto"), ("separate", "Separate call"), ("batched", "Batched with CFG")),
          infotext="weak pass", xyz="Weak pass"),
    Param("weak_model", str, "asag", "Weak model", "What the weak prediction perturbs the layers with: 'asag' "
          "(adversarial Sinkhorn plan), 'similarity' (Sinkhorn with the ordinary cost), 'random' (Sinkhorn on a "
          "seeded random cost), 'uniform' (every query gets the mean of V), 'identity' (PAG: output = V) or "
          "'blur' (SEG: queries blurred over the token grid).",
          choices=(("asag", "ASAG (adversarial)"), ("similarity", "Similarity cost"), ("random", "Random cost"),
                   ("uniform", "Uniform plan"), ("identity", "Identity (PAG)"), ("blur", "Query blur (SEG)")),
          infotext="weak model", xyz="Weak model"),
    Param("blur_sigma", float, 10.0, "Blur sigma", "Gaussian sigma (in tokens) of the 'blur' weak model; "
          f"{BLUR_SIGMA_INFINITE:g} (or 'inf') means infinite: every query becomes the mean query.",
          0.5, BLUR_SIGMA_INFINITE, 0.5, infotext="blur sigma", xyz="Blur sigma"),
    Param("telemetry", bool, False, "Telemetry", "Collect the Sinkhorn plan's statistics per layer (normalised "
          "row entropy, marginal error, iterations) and report them: console table, infotext, JSON next to "
          "saved images. Does not change the image.", xyz="Telemetry"),
    Param("joint", str, "image", "Joint attention (DiT)", "Transformer models with joint text+image "
          "attention (Flux, Chroma): 'image' puts the adversarial plan on the image-image block and keeps "
          "each image token's attention to text as softmax gives it; 'full' puts it on the whole joint "
          "matrix. UNet models ignore it.", choices=(("image", "Image tokens"), ("full", "Whole joint matrix")),
          infotext="joint", xyz="Joint attention"),
)

PARAMS_BY_NAME: Mapping[str, Param] = {param.name: param for param in PARAMS}

Settings = dataclasses.make_dataclass(
    "Settings",
    [(param.name, param.kind, dataclasses.field(default=param.default)) for param in PARAMS],
    frozen=True,
    namespace={"__doc__": "Validated ASAG settings for one job (field order = API positional order)."},
)
Settings.__module__ = __name__

DEFAULTS = Settings()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _error(param: Param, value: Any, source: str, extra: str = "") -> ValueError:
    detail = f" ({extra})" if extra else ""
    return ValueError(
        f"ASAG {source}: invalid value {value!r} for '{param.name}'{detail}; accepted: {param.accepted()}"
    )


def coerce(param: Param, value: Any, source: str = "input") -> Any:
    """Convert one raw value (UI, JSON, infotext string, X/Y/Z token) to the parameter's type.

    Raises ValueError naming the field, the source and the accepted values.
    """
    if value is None:
        return param.default
    if param.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _error(param, value, source)
    if param.kind in (int, float):
        return _coerce_number(param, value, source)
    if not isinstance(value, str):
        raise _error(param, value, source)
    text = value.strip()
    if param.choices:
        lowered = text.lower()
        for canonical, label in param.choices:
            if lowered in (canonical, label.lower()):
                return canonical
        raise _error(param, value, source)
    if param.name == "layers":
        if not text:
            raise _error(param, value, source, "empty")
        try:  # syntax only: resolution against the loaded UNet happens at sampling time
            return layers.validate_spec(text)
        except ValueError as exc:
            # The grammar's message already lists the accepted forms.
            raise ValueError(f"ASAG {source}: invalid value {value!r} for 'layers': {exc}") from None
    return text


def _coerce_number(param: Param, value: Any, source: str) -> int | float:
    if isinstance(value, bool):
        raise _error(param, value, source)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise _error(param, value, source) from None
    if param.name == "blur_sigma" and number == math.inf:
        return BLUR_SIGMA_INFINITE
    if not math.isfinite(number):
        raise _error(param, value, source)
    if param.kind is int:
        if number != int(number):
            raise _error(param, value, source, "not an integer")
        number = int(number)
    lo, hi = param.minimum, param.maximum
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise _error(param, value, source, "out of range")
    return number


def _validated(values: Mapping[str, Any], source: str) -> Any:
    settings = Settings(**values)
    if settings.start > settings.end:
        raise ValueError(
            f"ASAG {source}: 'start' ({settings.start:g}) must not be after 'end' ({settings.end:g}); "
            "accepted: 0 <= start <= end <= 1"
        )
    return settings


def from_mapping(raw: Mapping[str, Any], source: str = "API", base: Any = DEFAULTS) -> Any:
    """Settings from a dict of parameter names (the dict form of the API); unknown keys are errors."""
    unknown = [key for key in raw if key not in PARAMS_BY_NAME]
    if unknown:
        raise ValueError(
            f"ASAG {source}: unknown field(s) {', '.join(map(repr, unknown))}; accepted: "
            + ", ".join(PARAMS_BY_NAME)
        )
    values = dataclasses.asdict(base)
    for key, value in raw.items():
        values[key] = coerce(PARAMS_BY_NAME[key], value, source)
    return _validated(values, source)


def from_script_args(args: Sequence[Any], source: str = "UI/API") -> Any:
    """Settings from the script's positional args; a dict in slot 0 is the dict form and wins outright.

    Missing trailing args take their defaults; extra args are ignored, as the host does.
    """
    if args and isinstance(args[0], Mapping):
        return from_mapping(args[0], source)
    values = {param.name: coerce(param, arg, source) for param, arg in zip(PARAMS, args, strict=False)}
    return from_mapping({}, source, base=Settings(**{**dataclasses.asdict(DEFAULTS), **values}))


def with_overrides(settings: Any, obj: object, source: str = "X/Y/Z") -> Any:
    """Apply `obj.asag_<name>` attributes (how X/Y/Z cells reach the script) on top of `settings`."""
    raw = {param.name: getattr(obj, param.attr) for param in PARAMS if hasattr(obj, param.attr)}
    return from_mapping(raw, source, base=settings) if raw else settings


def infotext_key(param: Param) -> str:
    assert param.infotext is not None
    return INFOTEXT_PREFIX + param.infotext


def format_value(param: Param, value: Any) -> str:
    """Value as written to infotext and X/Y/Z labels: short, never of the form '64x64'."""
    if param.kind is float:
        return f"{value:g}"
    return str(value)


INFOTEXT_VERSION = "1"
VERSION_KEY = INFOTEXT_PREFIX + "defaults"
"""Infotext writes only the values that differ from the defaults, plus `ASAG defaults: 1`, the
version of the defaults it was written against. Reading fills every missing key from *that* version's
defaults, so changing a default later cannot change what an old image's parameters mean: add the old
defaults to `DEFAULTS_BY_VERSION` under their version and bump INFOTEXT_VERSION."""

DEFAULTS_BY_VERSION: Mapping[str, Mapping[str, Any]] = {
    "1": {"scale": 1.5, "layers": "middle", "iterations": 2, "tolerance": 1e-3, "start": 0.0, "end": 1.0,
          "hires": "both", "rescale": 0.0, "plan": "rows", "weak_pass": "auto", "weak_model": "asag",
          "blur_sigma": 10.0, "telemetry": False, "joint": "image"},
}
"""Frozen copies, written out: the defaults each infotext version was written against."""


def to_infotext(settings: Any) -> dict[str, str]:
    """Infotext entries for a guided job: 'ASAG scale' always (its presence means ASAG ran), the other
    parameters only when they differ from the defaults, and the defaults' version (see VERSION_KEY)."""
    defaults = DEFAULTS_BY_VERSION[INFOTEXT_VERSION]
    entries = {}
    for param in PARAMS:
        if param.infotext is None:
            continue
        value = getattr(settings, param.name)
        if param.name == "scale" or value != defaults[param.name]:
            entries[infotext_key(param)] = format_value(param, value)
    entries[VERSION_KEY] = INFOTEXT_VERSION
    return entries


def with_infotext_defaults(fields: Mapping[str, str]) -> dict[str, str]:
    """Parsed infotext with every missing 'ASAG …' key filled from the defaults of the version the
    image was written with (fields without 'ASAG scale' come back unchanged: ASAG was off).

    Infotext from before the version key carried every key, so a missing version means version 1."""
    if infotext_key(PARAMS_BY_NAME["scale"]) not in fields:
        return dict(fields)
    version = str(fields.get(VERSION_KEY, "1"))
    defaults = DEFAULTS_BY_VERSION.get(version, DEFAULTS_BY_VERSION[INFOTEXT_VERSION])
    filled = dict(fields)
    for param in PARAMS:
        if param.infotext is not None and infotext_key(param) not in filled:
            filled[infotext_key(param)] = format_value(param, defaults[param.name])
    return filled


def fill_pasted_infotext(infotext: str, fields: dict[str, Any]) -> None:
    """`on_infotext_pasted` callback: paste, 'Send to …' and the API's `infotext` then set every control."""
    fields.update(with_infotext_defaults(fields))


def from_infotext(fields: Mapping[str, str]) -> dict[str, Any]:
    """Parameter values in parsed infotext (missing keys from the written version's defaults); enabled is
    the presence of the scale key. Invalid values are skipped (pasting must never fail)."""
    fields = with_infotext_defaults(fields)
    values: dict[str, Any] = {"enabled": infotext_key(PARAMS_BY_NAME["scale"]) in fields}
    for param in PARAMS:
        if param.infotext is None or infotext_key(param) not in fields:
            continue
        try:
            values[param.name] = coerce(param, fields[infotext_key(param)], "infotext")
        except ValueError:
            continue
    return values


def is_infotext_key(key: str) -> bool:
    return key.startswith(INFOTEXT_PREFIX)
