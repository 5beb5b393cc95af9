"""Real-host reproductions of issue 9's bugs that need the host's own code paths.

* infotext only when ASAG guided a step (bug 5): a Hires.-fix-only setting without Hires. fix, and a
  start/end window that selects no step, must leave the image and its infotext as with ASAG off;
* "Pad prompt/negative prompt" (bug 2): with a perturbation that cannot change anything (a layer that
  sees a single token, where every attention, softmax or Sinkhorn, returns V), the weak prediction equals
  the cond prediction exactly when both see the same cond, so ASAG on must give ASAG off's image. A weak
  pass that sees the unpadded cond adds s·(cond_padded − cond_unpadded) and moves the image;
* ControlNet with prompts of different token lengths at batch 2 (bug 1) is in the matrix
  (test_a1111_matrix.py, "ControlNet reference_only, long prompt + short negative, batch 2").
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.realhost.harness import max_abs_diff
from tests.realhost.jobs import LONG_PROMPT, SD15, SDXL, assert_ok, base, compare, record, with_scripts

NOTHING_GUIDED: dict[str, list[Any]] = {
    # enabled, scale, layers, iterations, tolerance, start, end, hires
    "hires pass only, Hires. fix off": [True, 3.0, "middle", 2, 0.001, 0.0, 1.0, "hires"],
    "window 0.8-0.85 selects no step of 4": [True, 3.0, "middle", 2, 0.001, 0.8, 0.85, "both"],
}


@pytest.mark.parametrize("case", list(NOTHING_GUIDED))
def test_no_asag_infotext_when_nothing_was_guided(hosts, case: str) -> None:
    asag, bare = hosts
    outcome = compare(f"infotext: {case}", asag, bare, base(), on_args=NOTHING_GUIDED[case], expect_guided=False)
    assert_ok(outcome)


# (checkpoint, size where the middle block sees one token, payload changes)
PAD_CASES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "sd15 pad off, short prompt + long negative": (SD15, 64, {"negative_prompt": LONG_PROMPT}),
    "sd15 pad on, short prompt + long negative": (SD15, 64, {"negative_prompt": LONG_PROMPT,
                                                             "override_settings": {"pad_cond_uncond": True}}),
    "sd15 pad on, long prompt + short negative": (SD15, 64, {"prompt": LONG_PROMPT,
                                                             "override_settings": {"pad_cond_uncond": True}}),
    "sd15 pad v0 on, short prompt + long negative": (SD15, 64, {"negative_prompt": LONG_PROMPT,
                                                                "override_settings": {"pad_cond_uncond_v0": True}}),
    "sd15 pad on, short prompt + long negative, batch 2": (SD15, 64, {
        "negative_prompt": LONG_PROMPT, "batch_size": 2, "override_settings": {"pad_cond_uncond": True}}),
    "sdxl pad on, short prompt + long negative": (SDXL, 32, {"negative_prompt": LONG_PROMPT,
                                                             "override_settings": {"pad_cond_uncond": True}}),
}


@pytest.mark.parametrize("case", list(PAD_CASES))
def test_weak_pass_sees_the_hosts_cond(hosts, case: str) -> None:
    """A no-op perturbation (single-token middle block) must leave the image exactly as with ASAG off."""
    asag, _ = hosts
    checkpoint, size, extra = PAD_CASES[case]
    payload = base(checkpoint, size, **extra)
    off = asag.generate(with_scripts(payload, [False]))
    on = asag.generate(with_scripts(payload, [True, 3.0, "middle", 2]))
    diffs = [max_abs_diff(a, b) for a, b in zip(on.pixels, off.pixels, strict=True)]
    from tests.realhost.jobs import Outcome

    problems = []
    if on.asag_error:
        problems.append(f"ASAG error: {on.asag_error[:300]}")
    if not all(on.guided()):
        problems.append("ASAG did not run")
    if any(diffs):
        problems.append(f"a no-op perturbation moved the image: max |on - off| = {diffs} (of 255)")
    outcome = Outcome(f"no-op weak pass: {case}", problems, [f"max diff {diffs}"], {"on": on, "off": off})
    record(outcome)
    assert_ok(outcome)
