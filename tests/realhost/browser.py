"""Headless Chromium on a WebUI page (Debian's /usr/bin/chromium driven by Playwright), for the UI checks of
A1111 (gradio 3) and the Forge family (gradio 4): start the browser, read the ASAG controls' hover titles and
visible info lines, and keep a screenshot when a check fails.

Playwright is imported by the tests (`pytest.importorskip`); nothing here imports it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asag_lib import params, ui

CHROMIUM = Path("/usr/bin/chromium")
# No network beyond the page, no GPU, no first-run or background services: the machine is offline and shared.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GRADIO_BUTTON_TITLES = {"Clear", "Reset"}  # gradio's own widget buttons (the dropdown's clear button)
SHOTS = Path(os.environ.get("ASAG_UI_SHOTS") or tempfile.gettempdir())
"""Where screenshots go (ASAG_UI_SHOTS, else the system temp folder)."""


def launch(pw: Any) -> Any:
    """A headless Chromium browser from a `sync_playwright()` handle."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)


def accordion(tab: str) -> str:
    """CSS id of the ASAG accordion (InputAccordion, Script.elem_id("enabled")) on a tab."""
    return f"#script_{tab}_asag_enabled"


def open_accordions(page: Any, tab: str) -> None:
    """Open the ASAG accordion and its nested "Advanced" one (opening the InputAccordion ticks its box)."""
    page.locator(f"{accordion(tab)} .label-wrap").first.click()
    page.wait_for_timeout(1000)
    for summary in page.locator(f"{accordion(tab)} .label-wrap").all()[1:]:
        summary.click()
    page.wait_for_timeout(1000)


_TITLES_JS = """(tab) => {
    const app = typeof gradioApp === 'function' ? gradioApp() : document;
    const prefix = `script_${tab}_asag_`;
    const out = {};
    for (const el of app.querySelectorAll(`[id^="${prefix}"]`)) {
        const name = el.id.replace(prefix, '');
        out[name] = [...el.querySelectorAll('[title]')].map(x => x.title);
        if (el.title) out[name].push(el.title);
    }
    const box = app.querySelector(`#${prefix}enabled-visible-checkbox`);
    out['enabled-header'] = box ? [box.title] : [];
    out['accordion-own'] = app.querySelector(`#${prefix}enabled`).title;
    return out;
}"""


def hint_titles(page: Any, tab: str = "txt2img") -> dict[str, Any]:
    """Hover titles per ASAG control (elem_id suffix -> titles inside it), the enable box's, the accordion's."""
    return page.evaluate(_TITLES_JS, tab)


def assert_own_hints(titles: dict[str, Any]) -> None:
    """Every control carries its own hint (javascript/asag.js) and no other title: not another control's
    hint, not the host's own (hints.js), and the accordion as a whole has none."""
    hints = {param.name: param.hint for param in params.PARAMS}
    assert titles["enabled-header"] == [hints["enabled"]]
    assert titles["accordion-own"] == ""  # not on the whole accordion: hovering a control shows its own
    for name, hint in hints.items():
        if name == "enabled":
            continue
        assert hint in titles.get(name, []), (name, titles.get(name))
        others = [h for h in titles.get(name, []) if h != hint and h not in GRADIO_BUTTON_TITLES]
        assert not others, (name, others)


_INFO_JS = """(tab) => {
    // gradio's BlockTitle: <span data-testid="block-info">label</span> then, with info=, a <div> holding only
    // that text (the next <div> of a control without info holds its inputs: radio buttons, the dropdown box)
    const app = typeof gradioApp === 'function' ? gradioApp() : document;
    const prefix = `script_${tab}_asag_`;
    const out = {};
    for (const el of app.querySelectorAll(`[id^="${prefix}"]`)) {
        const name = el.id.replace(prefix, '');
        const label = el.querySelector("[data-testid='block-info']");
        const next = label && label.nextElementSibling;
        out[name] = {label: label ? label.innerText.trim() : null,
                     info: next && next.tagName === 'DIV' && !next.querySelector('input, textarea, button')
                           ? next.innerText.trim() : null,
                     text: el.innerText};
    }
    return out;
}"""


def info_lines(page: Any, tab: str = "txt2img") -> dict[str, dict[str, Any]]:
    """Per ASAG control: its label text, the info line right after it (or None), and all its text."""
    return page.evaluate(_INFO_JS, tab)


def assert_info_under_own_label(found: dict[str, dict[str, Any]]) -> None:
    """Each `info=` line (asag_lib.ui.VISIBLE_INFO) sits right under its own control's label, and no other
    control shows it or any other info line."""
    labels = {param.name: param.label for param in params.PARAMS}
    for name, info in ui.VISIBLE_INFO.items():
        assert found[name]["label"] == labels[name], (name, found[name])
        assert found[name]["info"] == info, (name, found[name])
    for name, seen in found.items():
        if name in ui.VISIBLE_INFO or name.startswith("enabled"):  # the accordion holds every control
            continue
        assert seen["info"] is None, (name, seen)
        assert not any(info in seen["text"] for info in ui.VISIBLE_INFO.values()), (name, seen)


@contextlib.contextmanager
def shot_on_failure(page: Any, name: str) -> Iterator[None]:
    """Run a check; when it fails, save a full-page screenshot as SHOTS/asag-ui-NAME.png and say where."""
    try:
        yield
    except BaseException:
        path = SHOTS / f"asag-ui-{name}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot of the failed check: {path}")  # pytest shows it with the failure
        raise
