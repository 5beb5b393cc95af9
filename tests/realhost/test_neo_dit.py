"""ASAG on Flux and Chroma in a real Forge Neo, through its HTTP API (skipped unless a built host is named).

    ASAG_NEO_HOST=/work/hosts/neo python -m pytest -q tests/realhost/test_neo_dit.py

The host is built by shared/hosts-build/neo (``DIT=flux,chroma``: random-weight Flux at hidden 256 with
2+2 blocks, Chroma with 1+1 blocks). The server runs from a private ``--data-dir`` (this checkout as
``extensions/asag``, the host's models linked, a private settings file) on 127.0.0.1:$ASAG_NEO_PORT
(default 7890); nothing in the host's own folder is changed. Random weights: images are noise, so images
are compared as pixels (identical / different), infotext and console lines, never visually.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
import zlib

import pytest

HOST = os.environ.get("ASAG_NEO_HOST")
PORT = int(os.environ.get("ASAG_NEO_PORT", "7890"))
URL = f"http://127.0.0.1:{PORT}"
FLUX = "random-flux-dev-h256.safetensors"
CHROMA = "random-chroma-d1s1.safetensors"
REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not HOST, reason="set ASAG_NEO_HOST to a Forge Neo built by hosts-build/neo")


def _call(path, payload=None, timeout=1800):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def pixels(png_b64: str) -> bytes:
    """The PNG's decompressed IDAT stream: equal iff the pixels are (one encoder, same filters)."""
    png = base64.b64decode(png_b64)
    pos, idat = 8, b""
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kind = png[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


class Neo:
    def __init__(self, log: pathlib.Path):
        self.log = log

    def txt2img(self, ckpt=FLUX, asag=None, **kw):
        payload = {"prompt": "a red fox in the snow", "negative_prompt": "", "steps": 4, "width": 64,
                   "height": 64, "seed": 1234, "sampler_name": "Euler", "scheduler": "Simple", "cfg_scale": 1.0,
                   "distilled_cfg_scale": 3.5, "batch_size": 1, "override_settings": {"sd_model_checkpoint": ckpt},
                   "override_settings_restore_afterwards": False, "send_images": True, "save_images": False}
        if asag is not None:
            payload["alwayson_scripts"] = {"ASAG": {"args": [asag]}}
        payload.update(kw)
        r = _call("/sdapi/v1/txt2img", payload)
        return [pixels(img) for img in r["images"]], json.loads(r["info"])["infotexts"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def tracebacks(self) -> int:
        """Tracebacks in the server log, less Neo's note that this checkout has no git remote 'origin'."""
        blocks = self.log_text().split("*** Failed reading extension data from Git repository")
        return sum(b.count("Traceback") for b in blocks[:1]) + sum(
            b.split("---", 1)[-1].count("Traceback") for b in blocks[1:])


@pytest.fixture(scope="module")
def neo(tmp_path_factory):
    host = pathlib.Path(HOST)
    data = tmp_path_factory.mktemp("neo-data")
    (data / "extensions").mkdir()
    (data / "extensions" / "asag").symlink_to(REPO)
    (data / "models").symlink_to(host / "webui" / "models")
    settings = json.loads((host / "webui" / "config.json").read_text())
    settings.update({"sd_model_checkpoint": FLUX, "grid_save": False, "samples_save": False,
                     "live_previews_enable": False})
    (data / "config.json").write_text(json.dumps(settings))
    log = data / "server.log"
    log_file = open(log, "w")  # noqa: SIM115 - held for the server's lifetime, closed in finally
    try:
        urllib.request.urlopen(URL + "/sdapi/v1/sd-models", timeout=2)
        pytest.fail(f"port {PORT} already answers")
    except urllib.error.URLError:
        pass
    proc = subprocess.Popen(
        ["bash", str(host / "run_neo.sh"), "--data-dir", str(data), "--ui-settings-file", str(data / "config.json"),
         "--ui-config-file", str(data / "ui-config.json")],
        stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ, PORT=str(PORT)),
        start_new_session=True)
    try:
        for _ in range(1200):
            try:
                urllib.request.urlopen(URL + "/sdapi/v1/sd-models", timeout=2)
                break
            except Exception:  # not up yet
                if proc.poll() is not None:
                    pytest.fail(f"Neo exited at start; see {log}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        _call("/sdapi/v1/refresh-checkpoints", {})
        yield Neo(log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log_file.close()


def asag_keys(infotext: str) -> list[str]:
    return [part.split(":")[0].strip() for part in infotext.split("\n")[-1].split(", ") if part.strip().startswith("ASAG ")]


def test_flux_off_on_infotext_and_the_next_plain_job(neo):
    plain, info_plain = neo.txt2img()
    off, info_off = neo.txt2img(asag={"enabled": False, "scale": 2.0})
    zero, info_zero = neo.txt2img(asag={"enabled": True, "scale": 0.0})
    on, info_on = neo.txt2img(asag={"enabled": True, "scale": 2.0})  # layers left at the UNet default
    after, _ = neo.txt2img()
    assert off == plain and zero == plain and info_off == info_plain and info_zero == info_plain
    assert on != plain
    # defaults (joint 'image', layers 'middle') are left out; 'ASAG defaults: 1' says which defaults apply
    assert "ASAG scale: 2" in info_on[0] and "ASAG defaults: 1" in info_on[0]
    assert "ASAG joint" not in info_on[0] and "ASAG layers" not in info_on[0]
    assert not asag_keys(info_plain[0])
    assert after == plain
    log = neo.log_text()
    assert "ASAG: Flux (DiT): ASAG at 1 block(s): double.1 ('middle' is the UNet default" in log
    assert neo.tracebacks() == 0


def test_flux_batch_two(neo):
    plain, _ = neo.txt2img(batch_size=2)
    on, infos = neo.txt2img(batch_size=2, asag={"enabled": True, "scale": 2.0, "layers": "double.0, single.1"})
    assert len(on) == 2 and on[0] != plain[0] and on[1] != plain[1]
    assert len(infos) == 2 and all("ASAG layers:" in i and "single.1" in i for i in infos)
    again, _ = neo.txt2img(batch_size=2)
    assert again == plain


def test_flux_xyz_over_scale_and_layers(neo):
    info = _call("/sdapi/v1/script-info")
    xyz = next(s for s in info if s.get("name") == "x/y/z plot" and not s.get("is_img2img"))
    choices = xyz["args"][0]["choices"]
    ix, iy = choices.index("[ASAG] Scale"), choices.index("[ASAG] Layers")
    args = [ix, "0,2", [], iy, "double.0,single.1", [], 0, "", [], True, True, False, False, False, False, False,
            0, 0, False]
    images, _ = neo.txt2img(asag={"enabled": True, "scale": 1.0}, script_name="x/y/z plot", script_args=args)
    plain, _ = neo.txt2img()
    cells = images[1:]  # grid first
    assert len(cells) == 4
    # X/Y/Z order: x varies fastest: (0, double.0), (2, double.0), (0, single.1), (2, single.1)
    assert cells[0] == plain[0] and cells[2] == plain[0]  # scale 0 is off
    assert cells[1] != plain[0] and cells[3] != plain[0] and cells[1] != cells[3]
    assert neo.tracebacks() == 0


def test_chroma_on_and_off(neo):
    plain, _ = neo.txt2img(ckpt=CHROMA)
    zero, _ = neo.txt2img(ckpt=CHROMA, asag={"enabled": True, "scale": 0.0})
    on, infos = neo.txt2img(ckpt=CHROMA, asag={"enabled": True, "scale": 2.0, "joint": "full", "layers": "all"})
    after, _ = neo.txt2img(ckpt=CHROMA)
    assert zero == plain and after == plain and on != plain
    assert "ASAG joint: full" in infos[0]
    assert "ASAG: Chroma (DiT): ASAG at 2 block(s): double.0, single.0; joint attention 'full'." in neo.log_text()
