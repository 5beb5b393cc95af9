"""javascript/asag.js is generated from the schema's hint texts and must stay in sync."""

import pathlib

from asag_lib import params, ui

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_committed_js_equals_the_generated_one():
    committed = (ROOT / "javascript" / "asag.js").read_text(encoding="utf-8")
    assert committed == ui.render_hints_js(), "run: python -m asag_lib.ui"


def test_every_control_has_a_one_line_hint():
    for param in params.PARAMS:
        assert param.hint and "\n" not in param.hint, param.name
