"""Per-job state shared by both hosts: settings parsed and validated once, kept on the host's `p`.

Nothing here imports a host module; it only reads and writes attributes of the job object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from asag_lib import params

JOB_ATTR = "asag_job"
LOG_PREFIX = "ASAG: "
ERROR_KEY = params.INFOTEXT_PREFIX + "error"


@dataclasses.dataclass
class Job:
    """What one generation job asked for, plus what was already said about it on the console."""

    settings: Any
    said: set[str] = dataclasses.field(default_factory=set)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Host-adapter scratch space (per pass, per step); cleared by the adapter."""

    def say_once(self, message: str) -> bool:
        """Print `message` once per job; True if it was printed now."""
        if message in self.said:
            return False
        self.said.add(message)
        print(LOG_PREFIX + message, flush=True)
        return True


def pass_selected(hires: str, is_hr_pass: bool) -> bool:
    """The `hires` setting: 'both', 'first' (base pass only) or 'hires' (hires pass only)."""
    if hires == "first":
        return not is_hr_pass
    if hires == "hires":
        return is_hr_pass
    return True


def get_job(p: object) -> Job | None:
    job = getattr(p, JOB_ATTR, None)
    return job if isinstance(job, Job) else None


def clear_job(p: object) -> None:
    if JOB_ATTR in getattr(p, "__dict__", {}):
        delattr(p, JOB_ATTR)


def report_error(p: object, message: str) -> None:
    """One console line plus a note in the job's info (infotext key and comment); the job goes on."""
    print(message if message.startswith("ASAG") else LOG_PREFIX + message, flush=True)
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        extra[ERROR_KEY] = message
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(message + " ASAG was not applied.")


def strip_infotext(p: object) -> None:
    """Remove every 'ASAG …' key: X/Y/Z cells share one extra_generation_params dict."""
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        for key in [key for key in extra if params.is_infotext_key(key)]:
            del extra[key]


def prepare_job(p: object, script_args: Sequence[Any]) -> Job | None:
    """Parse and validate the script args (with X/Y/Z overrides from `p.asag_*`), write infotext and
    attach a Job to `p`. Returns None (and writes no ASAG parameters) when ASAG is off, at scale 0, or
    the input is invalid."""
    clear_job(p)
    strip_infotext(p)
    try:
        settings = params.with_overrides(params.from_script_args(script_args), p)
    except ValueError as exc:
        report_error(p, str(exc))
        return None
    if not settings.enabled or settings.scale == 0:
        # scale 0 is "off": no infotext either, so the saved image is byte-identical to one made without ASAG
        return None
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        extra.update(params.to_infotext(settings))
    job = Job(settings)
    setattr(p, JOB_ATTR, job)
    return job
