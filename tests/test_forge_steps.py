"""The sigma -> sampling-step map the Forge adapter gates Start/End with (asag_lib/hosts/forge_steps.py).

Expected step indices are written out by hand from the call patterns of k-diffusion's samplers."""

from __future__ import annotations

from asag_lib import guidance
from asag_lib.hosts.forge_steps import StepClock

SCHEDULE = [14.6, 7.0, 3.0, 1.2, 0.4, 0.0]  # 5 steps


def _steps(clock, sigmas):
    return [clock.locate(s) for s in sigmas]


def test_euler_one_call_per_step():
    clock = StepClock(SCHEDULE)
    assert _steps(clock, SCHEDULE[:-1]) == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5)]


def test_heun_correction_shares_the_step_of_its_first_call():
    clock = StepClock(SCHEDULE, second_order=True)
    calls = [14.6, 7.0, 7.0, 3.0, 3.0, 1.2, 1.2, 0.4, 0.4]  # last step: sigma_next = 0, no correction
    assert [s for s, _ in _steps(clock, calls)] == [0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_midpoint_calls_belong_to_the_step_they_sit_in():
    clock = StepClock(SCHEDULE, second_order=True)  # DPM2 / DPM++ 2S / SDE: midpoints between sigmas
    calls = [14.6, 10.1, 7.0, 4.6, 3.0, 1.9, 1.2, 0.7, 0.4]
    assert [s for s, _ in _steps(clock, calls)] == [0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_img2img_runs_the_tail_of_the_schedule():
    clock = StepClock(SCHEDULE)
    assert _steps(clock, [3.0, 1.2, 0.4]) == [(0, 3), (1, 3), (2, 3)]


def test_unknown_schedule_or_sigma_gives_none():
    assert StepClock(None).locate(1.0) is None
    assert StepClock(SCHEDULE).locate(5.5) is None  # the first call must sit on the schedule


def test_window_selects_the_same_steps_as_the_shared_definition():
    clock = StepClock(SCHEDULE)
    picked = [i for i, n in _steps(clock, SCHEDULE[:-1]) if guidance.in_window(guidance.progress(i, n), 0.2, 0.6)]
    assert picked == [1, 2]  # 1/5 = 0.2 in, 3/5 = 0.6 out
