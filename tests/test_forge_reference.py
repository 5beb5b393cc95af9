"""Bug 2 of issue 10: Forge's reference preprocessors (reference_only, reference_adain, …) run the CFG body
once more per step to record their attention bank, and every post-CFG function runs inside that call.
ASAG must do nothing there: one weak pass per guided step, none inside the recording."""

from __future__ import annotations

import pytest

from asag_lib.hosts import forge
from tests.hosts.forge_host import asag_replacement, reference_only_patcher

SIZE = dict(height=64, width=64)


@pytest.mark.parametrize("forge_host", ["forge2", "neo", "ldm_patched"], indirect=True)
def test_no_weak_pass_inside_the_recording_call(forge_host, capsys):
    engine = forge_host.make_engine("sd15")
    reference = reference_only_patcher(record=True)
    result = forge_host.txt2img(engine, forge_host.args(enabled=True, layers="input.1"), patchers=[reference],
                                steps=3, **SIZE)
    assert reference.state.recordings == 3 and len(result.recording_calls) == 3
    assert len(result.main_calls) == 3
    assert len(result.weak_calls) == 3  # one per guided step, none for the recordings
    assert all(not call.replaced_by(asag_replacement) for call in result.recording_calls)
    assert "ASAG: done: 3 of 3 steps guided, 3 weak passes, 1 layers (input.1.0), 64 tokens" in capsys.readouterr().out


def test_recording_signal_reads_the_preprocessor_flag(forge_host):
    reference = reference_only_patcher(record=True, name="reference_adain")
    assert not forge.in_reference_recording()
    reference.state.is_recording_style = True
    assert forge.in_reference_recording()
    reference.state.is_recording_style = False
    assert not forge.in_reference_recording()


def test_the_bank_is_recorded_only_by_the_recording_call(forge_host):
    """Reference attention runs 16 times per UNet call on SD1.5 (every attn1 layer). With ASAG on
    input.1, each of the 3 steps adds one weak call in which reference still runs on the other 15 layers,
    and nothing more: a weak pass inside the recording call would re-record the bank from a perturbed
    forward (15 more reference calls per step)."""
    engine = forge_host.make_engine("sd15")
    off_ref = reference_only_patcher(record=True)
    forge_host.txt2img(engine, forge_host.args(), patchers=[off_ref], steps=3, **SIZE)
    on_ref = reference_only_patcher(record=True)
    forge_host.txt2img(engine, forge_host.args(enabled=True, layers="input.1"), patchers=[on_ref], steps=3, **SIZE)
    assert len(off_ref.calls) == 16 * (3 + 3)  # main + recording calls
    assert len(on_ref.calls) - len(off_ref.calls) == 15 * 3
