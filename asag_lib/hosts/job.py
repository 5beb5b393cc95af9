"""Per-job state shared by both hosts: settings parsed and validated once, kept on the host's `p`.

Nothing here imports a host module; it only reads and writes attributes of the job object.
Stable API for host adapters (A1111, Forge): `prepare_job`, `get_job`, `Job.begin_pass`, `Job.step_done`,
`Job.weak_pass`, `Job.skip`, `Job.detail`, `settle_infotext`, `finish_job`, `report_error`.

How an adapter uses it (asag_lib/hosts/a1111.py is the reference): call `job.begin_pass()` when a
sampling pass starts (process_before_every_sampling), `job.step_done(i)` when the term was applied in
sampler step i, `job.step_done(i, reason)` for a step left unguided, `job.weak_pass()` per weak
evaluation, `job.detail(...)` for the layers/tokens; then set `REPORTS_STEPS = True` at module level:
scripts/asag.py calls `settle_infotext(p)` in postprocess_batch only for such adapters, and
`finish_job(p)` in postprocess for all (it prints the summary once anything was reported).
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
    """What one generation job asked for, what was said about it on the console, and what it did.

    Host adapters report what happened through four calls, all cheap and safe to repeat:
      `begin_pass()`                 a sampling pass starts (first pass, hires pass, img2img);
      `step_done(i, reason=None)`    sampler step i of the current pass ended, guided (reason None)
                                     or not (reason says why); repeated calls for one step (the
                                     sub-calls of a second-order sampler) count once, guided wins;
      `weak_pass(n)`                 n extra (weak) model evaluations ran;
      `skip(reason)`                 something was left unguided for a reason that is not a step
                                     (a pass not selected, an unsupported model, refused layers);
    plus `detail(text)` for the summary ("10 layers (middle.0-9), 1024 tokens").
    The host-independent `settle_infotext(p)` and `finish_job(p)` read them (see there).
    """

    settings: Any
    said: set[str] = dataclasses.field(default_factory=set)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Host-adapter scratch space (per pass, per step); cleared by the adapter."""
    infotext: dict[str, str] = dataclasses.field(default_factory=dict)
    """The job's 'ASAG …' entries, written to the infotext only for batches that were guided."""
    guided_steps: int = 0
    """Sampler steps in which the ASAG term was applied, over all passes and batches of the job."""
    steps_seen: int = 0
    """Sampler steps reported by the adapter (guided or not)."""
    weak_passes: int = 0
    """Extra model evaluations run for the weak prediction."""
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Why something was not guided -> how often (steps for step reasons, occurrences otherwise)."""
    details: list[str] = dataclasses.field(default_factory=list)
    batch_guided: int = 0
    """Guided steps since the last `settle_infotext` (i.e. in the current batch)."""
    _seen: set[int] = dataclasses.field(default_factory=set, repr=False)
    _guided: set[int] = dataclasses.field(default_factory=set, repr=False)
    passes: int = 0

    def say_once(self, message: str) -> bool:
        """Print `message` once per job; True if it was printed now."""
        if message in self.said:
            return False
        self.said.add(message)
        print(LOG_PREFIX + message, flush=True)
        return True

    def begin_pass(self) -> None:
        """A new sampling pass: its step indices start again at 0."""
        self.passes += 1
        self._seen, self._guided = set(), set()

    def step_done(self, step: int, reason: str | None = None) -> None:
        """Sampler step `step` of the current pass was guided (reason None) or not (reason why)."""
        if step not in self._seen:
            self._seen.add(step)
            self.steps_seen += 1
            if reason is not None:
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if reason is None and step not in self._guided:
            self._guided.add(step)
            self.guided_steps += 1
            self.batch_guided += 1

    def weak_pass(self, calls: int = 1) -> None:
        self.weak_passes += calls

    def skip(self, reason: str) -> None:
        """Something was left unguided for `reason` (not a per-step decision)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def detail(self, text: str) -> None:
        """A fact for the end-of-job line, e.g. '10 layers (middle.0-9), 1024 tokens' (kept once)."""
        if text not in self.details:
            self.details.append(text)

    def reasons(self) -> str:
        """Why steps were not guided, e.g. 'outside the start/end window (5 steps)'."""
        if not self.skipped:
            return "no sampling step reached ASAG"
        return "; ".join(reason if count == 1 else f"{reason} (×{count})" for reason, count in self.skipped.items())

    def summary(self) -> str:
        """The end-of-job line (without the 'ASAG: ' prefix)."""
        text = f"done: {self.guided_steps} of {self.steps_seen} steps guided, {self.weak_passes} weak passes"
        if self.details:
            text += ", " + "; ".join(self.details)
        if self.skipped or not self.guided_steps:
            text += f"; not guided: {self.reasons()}"
        return text


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
    job = Job(settings, infotext=params.to_infotext(settings))
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        # written now so that anything reading the job's parameters early sees them; `settle_infotext`
        # removes them again for a batch in which nothing was guided
        extra.update(job.infotext)
    setattr(p, JOB_ATTR, job)
    return job


def settle_infotext(p: object) -> None:
    """After a batch's sampling, before its images' infotext is made: keep the 'ASAG …' keys only if
    at least one step of this batch was guided; otherwise remove them and say why, once per job.

    A1111 and Forge: call from the script's `postprocess_batch` (it runs after sampling and decoding,
    before the per-image hooks create and save each image's infotext; hosts.md §1.2). Only for an
    adapter that reports its steps through `Job.step_done` (else every image would lose its keys).
    """
    job = get_job(p)
    if job is None:
        return
    extra = getattr(p, "extra_generation_params", None)
    guided, job.batch_guided = job.batch_guided, 0
    if not isinstance(extra, dict):
        return
    if guided:
        extra.update(job.infotext)  # an earlier unguided batch may have removed them
        return
    for key in job.infotext:  # the parameters only: an 'ASAG error' note stays
        extra.pop(key, None)
    job.say_once(f"nothing was guided ({job.reasons()}); the ASAG parameters are left out of the infotext")


def finish_job(p: object) -> None:
    """At the end of a job that had ASAG enabled: one summary line on the console, then drop the job.

    Call from the script's `postprocess` (it also runs after an interrupt, not after a host error)."""
    job = get_job(p)
    if job is not None and job.steps_seen + len(job.skipped) > 0:
        print(LOG_PREFIX + job.summary(), flush=True)
    clear_job(p)
