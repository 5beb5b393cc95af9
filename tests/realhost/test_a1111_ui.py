"""The ASAG accordion in a real A1111 page (gradio UI through headless Chromium): its title, and that
every control shows its own hint (not another control's, not A1111's own) and the visible `info=` lines sit
under their own labels. The Forge-family page (gradio 4) is checked by test_forge_ui.py with the same helpers
(browser.py).

Skipped unless ASAG_A1111_HOST names a built harness, Debian's chromium is at /usr/bin/chromium and the
`playwright` package imports. ASAG_UI_SHOTS=DIR also writes a screenshot of the opened accordion
(and of the page when the check fails, there or in the system temp folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.realhost import browser
from tests.realhost.harness import Server

HOST = os.environ.get("ASAG_A1111_HOST")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not HOST or not browser.CHROMIUM.exists(),
                                reason="set ASAG_A1111_HOST and install Debian's chromium for the UI check")

REPO = Path(__file__).resolve().parents[2]
ACCORDION = browser.accordion("txt2img")
TITLE = "ASAG: Adversarial Sinkhorn Attention Guidance"


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
        chromium = browser.launch(pw)
        try:
            page = chromium.new_page(viewport={"width": 1600, "height": 2400})
            page.goto(page_url, timeout=180_000)
            page.wait_for_selector(ACCORDION, timeout=180_000)
            accordion = page.locator(ACCORDION)
            with browser.shot_on_failure(page, "a1111-hints"):
                assert TITLE in accordion.inner_text()
                browser.open_accordions(page, "txt2img")
                titles = browser.hint_titles(page, "txt2img")
                info = browser.info_lines(page, "txt2img")
            if os.environ.get("ASAG_UI_SHOTS"):
                accordion.screenshot(path=str(browser.SHOTS / "a1111-asag-accordion.png"))
        finally:
            chromium.close()
    browser.assert_own_hints(titles)
    browser.assert_info_under_own_label(info)  # the `info=` lines under their own labels (gradio 3)
