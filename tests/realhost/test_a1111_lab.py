"""Real A1111: the weak models over an X/Y/Z axis, telemetry in `info` and on disk, bench/quality.py end to
end. Skipped unless ASAG_A1111_HOST names a built harness; one server on ASAG_LAB_PORT (default 7901)."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realhost.conftest import REPO, host_dir
from tests.realhost.harness import Server, png_pixels

NAMES = ["asag", "similarity", "random", "uniform", "identity", "blur"]
JOB = {"prompt": "a lighthouse on a cliff", "seed": 7, "steps": 4, "width": 128, "height": 128,
       "sampler_name": "Euler", "cfg_scale": 5}
ASAG = {"enabled": True, "scale": 3.0, "layers": "all", "blur_sigma": 2.0}
SCORER = """import sys
sys.path.insert(0, HARNESS)
from harness import png_pixels


def brightness(items):
    return [sum(png_pixels(open(path, "rb").read())) for path, _ in items]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    host = host_dir()
    if host is None:
        pytest.skip("set ASAG_A1111_HOST to a built A1111 harness to run real-host checks")
    port = int(os.environ.get("ASAG_LAB_PORT", "7901"))
    extensions = {"asag": Path(os.environ.get("ASAG_A1111_EXTENSION", REPO)).resolve()}
    srv = Server(host, tmp_path_factory.mktemp("lab"), port, extensions)
    try:
        srv.start()
        code, _ = srv.call("/sdapi/v1/options", {"samples_save": True})  # private data dir: telemetry JSON
        assert code == 200
        yield srv
    finally:
        srv.stop()


def _xyz_index(server: Server, label: str) -> int:
    _, info = server.call("/sdapi/v1/script-info")
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    return xyz["args"][0]["choices"].index(label)


def test_xyz_over_the_weak_model_gives_six_different_images(server):
    axis = _xyz_index(server, "[ASAG] Weak model")
    payload = {**JOB, "script_name": "x/y/z plot",
               "script_args": [axis, "", NAMES, 0, "", [], 0, "", [], True, True, False, False, False, False,
                               False, 0, False],
               "alwayson_scripts": {"ASAG": {"args": [{**ASAG, "telemetry": True}]}}}
    result = server.generate(payload)
    cells, texts = result.pixels[1:], result.infotexts[1:]  # the grid comes first
    assert len(cells) == 6 and len(set(cells)) == 6
    for name, text in zip(NAMES, texts, strict=True):
        # the default ('asag') is left out of the infotext and restored from the defaults' version on paste
        assert ("ASAG weak model: " + name in text) == (name != "asag"), text
        assert ("ASAG entropy: " in text) == (name != "blur"), text  # blur is no transport plan
    assert "ASAG entropy: 1.0000" in texts[NAMES.index("uniform")]
    assert "ASAG entropy: 0.0000" in texts[NAMES.index("identity")]


def test_telemetry_keeps_the_pixels_and_reports_in_info_console_and_json(server):
    def job(telemetry: bool):
        return server.generate({**JOB, "save_images": True, "alwayson_scripts": {
            "ASAG": {"args": [{**ASAG, "weak_model": "random", "telemetry": telemetry}]}}})

    off, on = job(False), job(True)
    assert off.pixels == on.pixels
    assert "ASAG entropy" not in off.infotexts[0]
    fields = dict(part.split(": ", 1) for part in on.infotexts[0].splitlines()[-1].split(", ") if ": " in part)
    assert 0.0 < float(fields["ASAG entropy"]) < 1.0 and float(fields["ASAG marginal error"]) >= 0.0
    assert "ASAG telemetry" in server.new_log()
    found = sorted((server.data_dir / "outputs").rglob("*.asag.json"))
    assert len(found) == 1  # only the telemetry job wrote one
    data = json.loads(found[0].read_text())
    assert data["weak_model"] == "random" and len(data["images"]) == 1
    assert abs(data["overall"]["entropy"] - float(fields["ASAG entropy"])) < 1e-4


def test_quality_client_end_to_end_and_resume(server, tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import quality
    finally:
        sys.path.pop(0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in snow\na bowl of ramen\n")
    scorer = tmp_path / "lab_scorer.py"
    scorer.write_text(SCORER.replace("HARNESS", repr(str(REPO / "tests" / "realhost"))))
    argv = ["--url", server.url, "--out", str(tmp_path / "out"), "--prompts", str(prompts), "--seeds", "0-1",
            "--width", "64", "--height", "64", "--steps", "4", "--metrics", "", "--scorer", "lab_scorer:brightness",
            "--config", "off", "--config", "asag:1.5", "--config", "weak_model=identity:2,layers=all"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        log = io.StringIO()
        summary = quality.main(argv, stream=log)
        assert "made 12 image(s), 0 already there" in log.getvalue()
        again = io.StringIO()
        assert quality.main(argv, stream=again) == summary
        assert "made 0 image(s), 12 already there" in again.getvalue()
    finally:
        os.chdir(cwd)
    rows = summary["brightness"]
    assert [rows[c]["n"] for c in rows] == [4, 4, 4] and rows["asag:1.5"]["pairs"] == 4
    out = tmp_path / "out"
    off = png_pixels((out / "off" / "0000-0.png").read_bytes())
    assert png_pixels((out / "asag_1.5" / "0000-0.png").read_bytes()) != off
    assert png_pixels((out / "weak_model=identity_2_layers=all" / "0000-0.png").read_bytes()) != off
