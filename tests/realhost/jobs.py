"""Job payloads for the real-host checks and the four-way comparison every configuration gets.

`compare` runs, for one configuration (a payload for A1111's txt2img/img2img API):
  off     server with ASAG, `[false]`
  on      server with ASAG, enabled
  after   server with ASAG, the ASAG args omitted (the script's defaults: off)
  absent  server without the extension
and checks: no HTTP error and no Traceback / `*** Error` in either server's log; `on` has no
`ASAG error` and every image's infotext claims ASAG; every `on` image differs from `off`; `off` and
`after` are byte-identical (pixels and infotexts) to `absent`. `off` = `absent` before the ASAG job
and `after` = `absent` after it is the "next plain job is byte-identical to one before" check (a plain
job before the ASAG job is not run separately: `off` is one, and equals `absent`); the machine is
shared and slow, so each configuration costs four jobs, not five.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.realhost.harness import BAD_LOG_MARKERS, Result, Server, png_b64

SDXL = "tiny_sdxl.safetensors"
SD15 = "tiny_sd15.safetensors"
LONG_PROMPT = ", ".join(
    ["a red cube on a wooden table", "soft morning light through a window", "a blue ceramic vase with flowers",
     "an old brass key beside a folded letter", "dust in the air", "a cat asleep on a green cushion",
     "rain on the glass", "a lighthouse far away on a cliff", "warm colours", "film grain",
     "a bookshelf full of worn books", "a candle that has burned down", "high detail"] * 2)
"""About 130 CLIP tokens: two 75-token chunks."""
SHORT = "blurry"
ASAG_ON: list[Any] = [True, 3.0, "middle", 2]
"""Positional API args (indices 0-3 are stable: enabled, scale, layers, iterations)."""


def base(checkpoint: str = SDXL, size: int = 64, **extra: Any) -> dict[str, Any]:
    payload = {"prompt": "a red cube on a table", "negative_prompt": SHORT, "steps": 4, "width": size,
               "height": size, "seed": 1234, "sampler_name": "DPM++ 2M", "cfg_scale": 5, "batch_size": 1,
               "override_settings": {"sd_model_checkpoint": checkpoint}}
    overrides = extra.pop("override_settings", {})
    payload.update(extra)
    payload["override_settings"].update(overrides)
    return payload


def picture(size: int) -> str:
    """A deterministic init / control image: a red square outlined in white on dark grey."""
    lo, hi = size // 4, 3 * size // 4

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        if lo <= x < hi and lo <= y < hi:
            edge = min(x - lo, hi - 1 - x, y - lo, hi - 1 - y) < 2
            return (255, 255, 255) if edge else (200, 40, 40)
        return (20 + (x * 3) % 40, 20, 20 + (y * 5) % 40)

    return png_b64(size, size, pixel)


def mask(size: int) -> str:
    """White (repaint) in the centre half, black elsewhere."""
    lo, hi = size // 4, 3 * size // 4
    return png_b64(size, size, lambda x, y: (255,) * 3 if lo <= x < hi and lo <= y < hi else (0,) * 3)


def cn_unit(module: str, size: int, model: str = "None", **extra: Any) -> dict[str, Any]:
    unit = {"enabled": True, "module": module, "model": model, "image": picture(size), "weight": 1.0,
            "resize_mode": "Crop and Resize", "processor_res": size, "threshold_a": 100, "threshold_b": 200,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", "pixel_perfect": False}
    unit.update(extra)
    return unit


def with_scripts(payload: dict[str, Any], asag: list[Any] | None) -> dict[str, Any]:
    """A copy of the payload with ASAG's args added to its alwayson_scripts (None: ASAG omitted)."""
    out = copy.deepcopy(payload)
    if asag is not None:
        out.setdefault("alwayson_scripts", {})["ASAG"] = {"args": asag}
    return out


@dataclasses.dataclass
class Outcome:
    config: str
    problems: list[str]
    notes: list[str]
    results: dict[str, Result]

    @property
    def ok(self) -> bool:
        return not self.problems


def _log_problems(server: Server, label: str) -> list[str]:
    bad = [line for line in server.new_log().splitlines() if any(m in line for m in BAD_LOG_MARKERS)]
    return [f"{label} log: {bad[0][:300]}"] if bad else []


def _run(server: Server, payload: dict[str, Any], endpoint: str, label: str, problems: list[str]) -> Result | None:
    try:
        return server.generate(payload, endpoint)
    except Exception as exc:  # report and go on: the other runs still tell something
        problems.append(f"{label}: {type(exc).__name__}: {str(exc)[:600]}")
        return None


def compare(config: str, asag: Server, bare: Server, payload: dict[str, Any], endpoint: str = "txt2img",
            on_args: list[Any] | None = None, expect_guided: bool = True) -> Outcome:
    on_args = ASAG_ON if on_args is None else on_args
    problems: list[str] = []
    notes: list[str] = []
    asag.new_log()
    bare.new_log()
    runs = {
        "off": _run(asag, with_scripts(payload, [False]), endpoint, "off", problems),
        "on": _run(asag, with_scripts(payload, on_args), endpoint, "on", problems),
        "after": _run(asag, with_scripts(payload, None), endpoint, "after", problems),
        "absent": _run(bare, with_scripts(payload, None), endpoint, "absent", problems),
    }
    problems += _log_problems(asag, "ASAG server") + _log_problems(bare, "bare server")
    off, on, after, absent = (runs[k] for k in ("off", "on", "after", "absent"))
    if on is not None:
        if on.asag_error:
            problems.append(f"on: ASAG error: {on.asag_error[:400]}")
        guided = on.guided()
        if expect_guided:
            if not all(guided):
                problems.append(f"on: infotext claims ASAG on {sum(guided)}/{len(guided)} images")
            if off is not None:
                same = [i for i, (a, b) in enumerate(zip(on.pixels, off.pixels, strict=False)) if a == b]
                if same:
                    problems.append(f"on: image(s) {same} identical to ASAG off (ASAG had no effect)")
        else:
            if any(guided):
                problems.append("on: infotext claims ASAG although nothing was guided")
            if off is not None and on.pixels != off.pixels:
                problems.append("on: nothing should be guided, yet the image differs from ASAG off")
        notes.append(f"on {on.seconds:.2f} s")
    for name, run in (("off", off), ("after", after)):
        if run is not None and absent is not None:
            if run.pixels != absent.pixels:
                problems.append(f"{name}: pixels differ from the server without ASAG"
                                + (" (something left behind by the ASAG job)" if name == "after" else ""))
            elif run.infotexts != absent.infotexts:
                problems.append(f"{name}: infotext differs from the server without ASAG: "
                                f"{run.infotexts[0][-300:]!r} vs {absent.infotexts[0][-300:]!r}")
    outcome = Outcome(config, problems, notes, {k: v for k, v in runs.items() if v is not None})
    record(outcome)
    return outcome


def _commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "?"


def record(outcome: Outcome) -> None:
    """Append one line to $ASAG_A1111_REPORT (JSON lines), for the README's compatibility table."""
    path = os.environ.get("ASAG_A1111_REPORT")
    if not path:
        return
    from tests.realhost.conftest import REPO, host_dir

    host = host_dir()
    extension = Path(os.environ.get("ASAG_A1111_EXTENSION", REPO))
    line = {"config": outcome.config, "ok": outcome.ok, "problems": outcome.problems, "notes": outcome.notes,
            "asag": _commit(extension), "asag_path": str(extension),
            "webui": _commit(host / "webui") if host else "?", "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def assert_ok(outcome: Outcome) -> None:
    assert outcome.ok, f"{outcome.config}:\n  " + "\n  ".join(outcome.problems)
