"""The ASAG accordion in a real A1111 page (gradio UI through headless Chromium): its title, and that
every control shows its own hint (not another control's, not A1111's own).

Skipped unless ASAG_A1111_HOST names a built harness, Debian's chromium is at /usr/bin/chromium and the
`playwright` package imports. ASAG_UI_SHOTS=DIR also writes a screenshot of the opened accordion.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from asag_lib import params
from tests.realhost.harness import Server

HOST = os.environ.get("ASAG_A1111_HOST")
CHROMIUM = Path("/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not HOST or not CHROMIUM.exists(),
                                reason="set ASAG_A1111_HOST and install Debian's chromium for the UI check")

REPO = Path(__file__).resolve().parents[2]
ACCORDION = "#script_txt2img_asag_enabled"
TITLE = "ASAG: Adversarial Sinkhorn Attention Guidance"
GRADIO_BUTTON_TITLES = {"Clear", "Reset"}  # gradio's own widget buttons (the dropdown's clear button)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    port = int(os.environ.get("ASAG_UI_PORT", "7866"))
    server = Server(Path(HOST), tmp_path_factory.mktemp("ui"), port,
                    {"asag": Path(os.environ.get("ASAG_A1111_EXTENSION", REPO)).resolve()}, script="run-ui.sh")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_every_control_shows_its_own_hint(page_url):
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            page.goto(page_url, timeout=180_000)
            page.wait_for_selector(ACCORDION, timeout=180_000)
            accordion = page.locator(ACCORDION)
            assert TITLE in accordion.inner_text()
            page.locator(f"{ACCORDION} .label-wrap").first.click()  # open it
            page.wait_for_timeout(1000)
            for summary in page.locator(f"{ACCORDION} .label-wrap").all()[1:]:  # nested "Advanced"
                summary.click()
            page.wait_for_timeout(1000)
            titles = page.evaluate("""() => {
                const app = typeof gradioApp === 'function' ? gradioApp() : document;
                const out = {};
                for (const el of app.querySelectorAll('[id^="script_txt2img_asag_"]')) {
                    const name = el.id.replace('script_txt2img_asag_', '');
                    const labelled = el.querySelectorAll('[title]');
                    out[name] = [...labelled].map(x => x.title);
                    if (el.title) out[name].push(el.title);
                }
                const box = app.querySelector('#script_txt2img_asag_enabled-visible-checkbox');
                out['enabled-header'] = box ? [box.title] : [];
                out['accordion-own'] = app.querySelector('#script_txt2img_asag_enabled').title;
                return out;
            }""")
            if os.environ.get("ASAG_UI_SHOTS"):
                accordion.screenshot(path=str(Path(os.environ["ASAG_UI_SHOTS"]) / "a1111-asag-accordion.png"))
        finally:
            browser.close()
    hints = {param.name: param.hint for param in params.PARAMS}
    assert titles["enabled-header"] == [hints["enabled"]]
    assert titles["accordion-own"] == ""  # not on the whole accordion: hovering a control shows its own
    for name, hint in hints.items():
        if name == "enabled":
            continue
        assert hint in titles.get(name, []), (name, titles.get(name))
        others = [h for h in titles.get(name, []) if h != hint and h not in GRADIO_BUTTON_TITLES]
        assert not others, (name, others)  # neither another control's hint nor A1111's own (titles[…])
