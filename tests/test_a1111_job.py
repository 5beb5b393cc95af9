"""The per-job record shared by the host adapters (asag_lib/hosts/job.py): step counting, the
infotext decision (keys only on batches where a step was guided) and the end-of-job line."""

from __future__ import annotations

from types import SimpleNamespace

from asag_lib import params
from asag_lib.hosts import job as jobs


def _p(**extra):
    return SimpleNamespace(extra_generation_params=dict(extra))


def _prepared(scale=2.0):
    p = _p(Steps=20)
    job = jobs.prepare_job(p, [True, scale])
    assert job is not None
    return p, job


def test_second_order_sub_calls_count_once_and_guided_wins():
    _, job = _prepared()
    job.begin_pass()
    job.step_done(0, "outside the start/end window")
    job.step_done(0)  # the second model call of step 0 was guided
    job.step_done(1)
    job.step_done(1)
    job.begin_pass()  # hires pass: indices restart
    job.step_done(0)
    assert (job.guided_steps, job.steps_seen) == (3, 3)
    assert job.batch_guided == 3


def test_unguided_batch_loses_the_keys_and_says_why(capsys):
    p, job = _prepared()
    assert "ASAG scale" in p.extra_generation_params
    job.begin_pass()
    for i in range(4):
        job.step_done(i, "outside the start/end window")
    jobs.settle_infotext(p)
    assert not any(params.is_infotext_key(k) for k in p.extra_generation_params)
    assert p.extra_generation_params == {"Steps": 20}
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "outside the start/end window (×4)" in out and "left out" in out


def test_guided_batch_after_an_unguided_one_gets_its_keys_back():
    p, job = _prepared()
    job.begin_pass()
    job.step_done(0, "weak pass failed")
    jobs.settle_infotext(p)
    assert "ASAG scale" not in p.extra_generation_params
    job.begin_pass()
    job.step_done(0)
    jobs.settle_infotext(p)
    assert p.extra_generation_params["ASAG scale"] == "2"
    assert job.batch_guided == 0  # reset for the next batch


def test_summary_line_names_steps_passes_details_and_reasons(capsys):
    p, job = _prepared()
    job.begin_pass()
    job.detail("10 layers (middle.0-9), 1024 tokens")
    for i in range(4):
        job.step_done(i, None if i < 3 else "outside the start/end window")
    job.weak_pass(3)
    job.skip("hires pass not selected (Hires. fix setting 'first')")
    jobs.finish_job(p)
    out = capsys.readouterr().out.strip()
    assert out == ("ASAG: done: 3 of 4 steps guided, 3 weak passes, 10 layers (middle.0-9), 1024 tokens; "
                   "not guided: outside the start/end window; hires pass not selected (Hires. fix setting 'first')")
    assert jobs.get_job(p) is None


def test_no_summary_when_the_adapter_reported_nothing(capsys):
    p, _ = _prepared()
    jobs.finish_job(p)
    assert capsys.readouterr().out == ""
    assert jobs.get_job(p) is None


# ------------------------------------------------------------------------------------------------
# UI texts (the accordion title, visible info lines, where the hover hints go)


def test_accordion_title_says_what_asag_is_and_the_api_title_stays(a1111_host):
    script = a1111_host.script()
    assert script.title() == "ASAG"
    enabled = script.ui(False)[0]
    assert enabled.accordion.label == "ASAG: Adversarial Sinkhorn Attention Guidance"


def test_labels_do_not_collide_with_a1111_tooltips_and_info_lines_show(a1111_host):
    components = {c.elem_id.rsplit("_", 1)[-1]: c for c in a1111_host.script().ui(False)[1:]}
    # A1111's hints.js keys its global tooltips by label text; "Hires. fix" is one of them
    assert all(c.label not in ("Hires. fix", "Hires fix") for c in components.values())
    assert components["scale"].info and components["layers"].info


def test_hints_go_on_each_label_and_the_header_checkbox_only():
    from asag_lib import ui

    js = ui.render_hints_js()
    assert "-visible-checkbox" in js and "data-testid='block-info'" in js
    assert "!el.title" not in js  # ours are set on our own elements, whatever hints.js did before
