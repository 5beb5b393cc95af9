"""Which sampling step a Forge model call belongs to, from its sigma and the pass's sigma schedule.

Start/End mean a fraction of the sampling steps of a pass on every host (`guidance.in_window` over
`guidance.progress(i, N)`): step i of N is guided iff start <= i/N and (i/N < end or end >= 1). Forge's
post-CFG functions see only the sigma of each call, so this module maps a sigma back to the step index
of the schedule the sampler runs. Pure Python over floats; no host import.

* The pass's schedule is the host's full schedule cut at the first sigma seen (img2img and hires run the
  tail of a longer schedule; Neo hands over the full one in `transformer_options["sampling_sigmas"]`).
* A call at exactly schedule[j] starts step j; a call strictly between schedule[j+1] and schedule[j]
  (DPM2, DPM++ 2S/SDE midpoints) belongs to step j.
* Second-order samplers whose correction call lands on the next step's sigma (Heun): with
  `second_order`, a call at schedule[j] right after the first call of step j-1 is that step's
  correction, so both calls of a step share one decision.
"""

from __future__ import annotations

from collections.abc import Sequence

_REL_TOL = 1e-5


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= _REL_TOL * max(abs(a), abs(b), 1e-8)


def _index_of(values: Sequence[float], sigma: float) -> int | None:
    for i, value in enumerate(values):
        if _same(value, sigma):
            return i
    return None


class StepClock:
    """Step index and step count of the current pass, one model call at a time (one clock per pass)."""

    def __init__(self, sigmas: Sequence[float] | None, second_order: bool = False):
        self.full = None if sigmas is None else [float(s) for s in sigmas]
        self.second_order = second_order
        self.schedule: list[float] | None = None
        self._last: tuple[int, bool] | None = None  # (step, was the first call of that step)

    @property
    def known(self) -> bool:
        return bool(self.full) and len(self.full) >= 2

    def locate(self, sigma: float) -> tuple[int, int] | None:
        """(step i, steps N) for a call at `sigma`, or None when the schedule does not contain the pass."""
        if not self.known:
            return None
        if self.schedule is None:
            start = _index_of(self.full[:-1], sigma)
            if start is None:
                return None
            self.schedule = self.full[start:]
        steps = len(self.schedule) - 1
        exact = _index_of(self.schedule[:steps], sigma)
        if exact is not None:
            if self.second_order and exact > 0 and self._last == (exact - 1, True):
                step, first = exact - 1, False  # Heun's correction at the next step's sigma
            else:
                step, first = exact, True
        else:
            above = [i for i in range(steps) if self.schedule[i] > sigma]
            step, first = (above[-1] if above else 0), False
        self._last = (step, first)
        return step, steps
