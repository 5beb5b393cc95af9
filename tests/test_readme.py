"""The README states the two commands CI runs and the schema's table of controls."""

import pathlib

from asag_lib import ui

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_table_is_generated_from_the_schema():
    assert ui.render_params_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_ci_runs_exactly_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("python -m pip install -r requirements-test.txt", "python -m pytest -q"):
        assert command in readme and command in ci
