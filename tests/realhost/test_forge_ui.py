"""ASAG through the real Forge-family page (issue 10, "once through the UI"): headless Chromium on Forge Neo's
and Forge main's gradio 4 txt2img tab. Skipped unless a built host is named:

    ASAG_NEO_HOST=/work/hosts/neo ASAG_FORGE_HOST=/work/hosts/forge \\
        /tmp/pwvenv/bin/python -m pytest -q tests/realhost/test_forge_ui.py

(a Python with `playwright` and this project's test requirements; Debian's chromium at /usr/bin/chromium).
Ports: ASAG_FORGE_UI_PORT (default 7890) for the first host, the next one for the second. Screenshots of
failed checks go to ASAG_UI_SHOTS (default: the system temp folder).

The server is test_forge_family's (private --data-dir, this checkout symlinked in as extensions/asag, the
host's models linked) started from a private harness folder whose start script serves the page as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from asag_lib import params
from asag_lib.hosts import xyz
from tests.realhost import browser
from tests.realhost import test_forge_family as family

HOSTS = {name: os.environ.get(var) for name, var in (("neo", "ASAG_NEO_HOST"), ("forge", "ASAG_FORGE_HOST"))}
AVAILABLE = [name for name, path in HOSTS.items() if path]
PORT = int(os.environ.get("ASAG_FORGE_UI_PORT", "7890"))
TAB = "txt2img"
ACCORDION = browser.accordion(TAB)
TITLE = "ASAG: Adversarial Sinkhorn Attention Guidance"
STEPS = 4
SCALE = "2.5"

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not AVAILABLE or not browser.CHROMIUM.exists(),
                                reason="set ASAG_NEO_HOST and/or ASAG_FORGE_HOST and install Debian's chromium")


def ui_harness(kind: str, real: Path, where: Path) -> Path:
    """A private harness folder for family.Server: its start script runs the real host with the page on.

    * Neo's harness starts API-only (run_neo.sh has --nowebui): a copy without it, its folder pinned.
    * gradio 4 serves files only under its allowed paths, which default to the data dir: with a private
      --data-dir the page's own scripts and styles in webui/ answer 403 (and onUiLoaded never runs).
    * the gallery writes each shown image to the `temp_dir` option, which defaults to DATA/tmp; a private
      --data-dir has none, so the job fails after sampling: settings name a folder that exists.
    """
    webui = where / "webui"
    webui.mkdir(parents=True)
    (webui / "models").symlink_to(real / "webui" / "models")
    shipped = real / "webui" / "config.json"
    settings = json.loads(shipped.read_text()) if shipped.exists() else {}
    (where / "tmp").mkdir()
    settings["temp_dir"] = str(where / "tmp")
    (webui / "config.json").write_text(json.dumps(settings))
    allowed = f'--gradio-allowed-path "{real / "webui"}"'
    if kind == "neo":
        text = (real / "run_neo.sh").read_text()
        lines = text.splitlines()
        folder = [i for i, line in enumerate(lines) if line.startswith("H=")]
        assert len(folder) == 1 and text.count("--nowebui ") == 1 and text.rstrip().endswith('"$@"'), "run_neo.sh?"
        lines[folder[0]] = f'H="{real}"'
        script = "\n".join(lines).replace("--nowebui ", "").rstrip()[:-len('"$@"')] + f'{allowed} "$@"\n'
        (where / "run_neo.sh").write_text(script)
    else:
        (where / "run_forge.sh").write_text(f'exec bash "{real / "run_forge_ui.sh"}" {allowed} "$@"\n')
    return where


@pytest.fixture(scope="module", params=AVAILABLE)
def host(request, tmp_path_factory):
    """(kind, server, chromium) for one host; the server log must end without a traceback."""
    kind = request.param
    harness = ui_harness(kind, Path(HOSTS[kind]), tmp_path_factory.mktemp(f"{kind}-ui") / "harness")
    saved, family.PORT = family.PORT, PORT + AVAILABLE.index(kind)  # Server reads the module's port
    try:
        server = family.Server(kind, harness)
    finally:
        family.PORT = saved
    pw = playwright.sync_playwright().start()
    try:
        yield SimpleNamespace(kind=kind, server=server, chromium=browser.launch(pw))
    finally:
        pw.stop()
        server.stop()
    assert "Traceback (most recent call last)" not in server.log_text(), f"traceback in {server.log}"


@pytest.fixture
def ui(host):
    """A fresh page per test (no control state carried over, e.g. a pasted seed or RNG override): the
    txt2img tab loaded and the host's onUiLoaded callbacks run."""
    page = host.chromium.new_page(viewport={"width": 1600, "height": 2400})
    try:
        page.goto(host.server.url, timeout=300_000)
        with browser.shot_on_failure(page, f"{host.kind}-load"):
            # inputAccordion.js makes the header's checkbox in onUiLoaded: the page's scripts ran
            page.wait_for_selector(f"{ACCORDION}-visible-checkbox", timeout=300_000)
        yield SimpleNamespace(kind=host.kind, server=host.server, page=page)
    finally:
        page.close()


def _open(page) -> None:
    header = page.locator(f"{ACCORDION} .label-wrap").first
    if "open" not in (header.get_attribute("class") or "").split():
        browser.open_accordions(page, TAB)


def _set_number(page, elem_id: str, value: str) -> None:
    """Type into a gradio slider's number box (as a user does) and leave it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Tab")


def _small_job_with_asag(page):
    """As a user would: open the accordion, tick its box, 64×64, STEPS steps, a prompt; returns the box."""
    _open(page)
    enabled = page.locator(f"{ACCORDION}-visible-checkbox")
    enabled.check()
    for elem_id, value in ((f"{TAB}_width", "64"), (f"{TAB}_height", "64"), (f"{TAB}_steps", str(STEPS))):
        _set_number(page, elem_id, value)
    page.locator(f"#{TAB}_prompt textarea").fill("a red cube on a table")
    return enabled


def _generate(ui) -> tuple[str, str]:
    """Click Generate, wait for the new image and its generation info; (infotext shown, console lines)."""
    page, offset = ui.page, len(ui.server.log_text())
    before = page.locator(f"#html_info_{TAB}").inner_text()
    page.locator(f"#{TAB}_generate").click()
    page.wait_for_function("([id, before]) => { const t = gradioApp().querySelector(id).innerText;"
                           " return t.includes('Steps:') && t !== before; }",
                           arg=[f"#html_info_{TAB}", before], timeout=600_000)
    assert page.locator(f"#{TAB}_gallery img").count() >= 1
    return page.locator(f"#html_info_{TAB}").inner_text(), ui.server.log_text()[offset:]


def _asag_lines(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if line.strip().startswith("ASAG")]


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_every_control_shows_its_own_hint(ui, tab):
    with browser.shot_on_failure(ui.page, f"{ui.kind}-{tab}-hints"):
        assert TITLE in ui.page.locator(browser.accordion(tab)).inner_text()
        if tab == TAB:  # the other tab's controls are in the page, hidden: their titles are set all the same
            _open(ui.page)
        browser.assert_own_hints(browser.hint_titles(ui.page, tab))


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_info_lines_sit_under_their_own_labels(ui, tab):
    with browser.shot_on_failure(ui.page, f"{ui.kind}-{tab}-info"):
        if tab == TAB:
            _open(ui.page)
        browser.assert_info_under_own_label(browser.info_lines(ui.page, tab))


def test_generate_with_asag_then_without(ui):
    page = ui.page
    with browser.shot_on_failure(page, f"{ui.kind}-generate"):
        enabled = _small_job_with_asag(page)
        _set_number(page, "script_txt2img_asag_scale", SCALE)

        info, log = _generate(ui)
        assert f"Steps: {STEPS}" in info and "Size: 64x64" in info, info  # the page's values reached the job
        assert f"ASAG scale: {SCALE}" in info, info
        assert "ASAG error" not in info, info
        done = [line for line in _asag_lines(log) if line.startswith("ASAG: done:")]
        assert len(done) == 1, _asag_lines(log)
        assert done[0].startswith(f"ASAG: done: {STEPS} of {STEPS} steps guided, {STEPS} weak passes"), done

        enabled.uncheck()
        info, log = _generate(ui)
        assert f"Steps: {STEPS}" in info, info
        assert "ASAG" not in info, info
        assert not _asag_lines(log), _asag_lines(log)


def test_pasted_infotext_sets_the_controls(ui):
    """The prompt box's paste button (↙) reads ASAG keys into the controls (Script.infotext_fields), ticks the
    accordion's box when `ASAG scale` is there and clears it when it is not."""
    page, expect = ui.page, playwright.expect
    with browser.shot_on_failure(page, f"{ui.kind}-paste"):
        _open(page)
        enabled = page.locator(f"{ACCORDION}-visible-checkbox")
        enabled.uncheck()
        written = ("a red cube on a table\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 7, Size: 64x64, "
                   "ASAG scale: 1.75, ASAG layers: output.1, ASAG iterations: 3")
        prompt, paste = page.locator(f"#{TAB}_prompt textarea"), page.locator(f"#tab_{TAB} #paste")
        prompt.fill(written)
        paste.click()
        expect(enabled).to_be_checked(timeout=60_000)
        expect(page.locator("#script_txt2img_asag_scale input[type=number]")).to_have_value("1.75")
        expect(page.locator("#script_txt2img_asag_iterations input[type=number]")).to_have_value("3")
        expect(page.locator("#script_txt2img_asag_layers input")).to_have_value("output.1")

        prompt.fill("a red cube on a table\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 7, Size: 64x64")
        paste.click()
        expect(enabled).not_to_be_checked(timeout=60_000)


def _choose(dropdown, choice: str) -> None:
    """Pick a choice of a gradio 4 dropdown: its list exists only while it is open, one <li aria-label=…>
    per choice."""
    dropdown.locator("input").click()
    dropdown.locator(f'ul.options li[aria-label="{choice}"]').click()


def _x_type(page):
    """The X/Y/Z plot's X type dropdown, after choosing the script on the tab."""
    _choose(page.locator(f"#tab_{TAB} #script_list"), "X/Y/Z plot")
    x_type = page.locator(f"#script_{TAB}_xyz_plot_x_type")
    x_type.wait_for(state="visible")
    return x_type


def test_xyz_plot_lists_every_asag_axis_once(ui):
    page = ui.page
    with browser.shot_on_failure(page, f"{ui.kind}-xyz"):
        x_type = _x_type(page)
        x_type.locator("input").click()
        options = x_type.locator("ul.options li").evaluate_all("items => items.map(li => li.ariaLabel)")
        page.keyboard.press("Escape")
        wanted = [xyz.axis_label(param) for param in params.PARAMS if param.xyz is not None]
        assert wanted, "no ASAG axis in the schema"
        for label in wanted:
            assert options.count(label) == 1, (label, [o for o in options if o.startswith(params.XYZ_PREFIX)])


def test_xyz_plot_over_asag_scale_runs_from_the_page(ui):
    """The plot run from the page passes the script's whole argument list (Neo's has `row_count`): the scale
    2 cell is guided (one summary line), the scale 0 cell is not."""
    page = ui.page
    with browser.shot_on_failure(page, f"{ui.kind}-xyz-run"):
        _small_job_with_asag(page)
        x_type = _x_type(page)
        # values first: choosing the axis sends them to the server and back (select_axis), which would
        # overwrite values typed while that round trip is under way
        values = page.locator(f"#script_{TAB}_xyz_plot_x_values textarea")
        values.fill("2, 0")
        _choose(x_type, xyz.axis_label(params.PARAMS_BY_NAME["scale"]))
        page.wait_for_timeout(2000)
        playwright.expect(values).to_have_value("2, 0")
        info, log = _generate(ui)
        done = [line for line in _asag_lines(log) if line.startswith("ASAG: done:")]
        assert len(done) == 1, _asag_lines(log)
        assert done[0].startswith(f"ASAG: done: {STEPS} of {STEPS} steps guided, {STEPS} weak passes"), done
        assert "ASAG scale: 2" in info, info  # the grid shows its first cell's generation info
        assert "ASAG error" not in info and "ASAG error" not in log, info
