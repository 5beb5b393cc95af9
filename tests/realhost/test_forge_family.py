"""ASAG in real Forge-family hosts through the HTTP API (issue 10). Skipped unless a built host is named:

    ASAG_NEO_HOST=/work/hosts/neo ASAG_FORGE_HOST=/work/hosts/forge python -m pytest -q tests/realhost/test_forge_family.py
    ASAG_REFORGE_HOST=/work/hosts/reforge ASAG_CLASSIC_HOST=/work/hosts/classic ASAG_FORGE_FAMILY_PORT=7884 \
        python -m pytest -q tests/realhost/test_forge_family.py

Hosts are the CPU harnesses of ../shared/hosts-build/{neo,forge} (random-weight SDXL at 320 channels, its GGUF
Q8_0 UNet) and, for the `ldm_patched` hosts reForge and Forge Classic, tests/realhost/build/ldm_patched_host.sh
(the same SDXL checkpoint; no GGUF support there). The shared webui/extensions folder is never touched: the server runs with a private
`--data-dir` holding `extensions/asag` (symlinks into this checkout) and a symlink to the host's models.
Ports: ASAG_FORGE_FAMILY_PORT (default 7883). Images are noise; checks compare bytes, infotext and the
server's `ASAG:` console lines (the per-job summary line).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from asag_lib import params
from asag_lib.hosts import xyz

REPO = Path(__file__).resolve().parents[2]
HOSTS = {name: os.environ.get(var) for name, var in (("neo", "ASAG_NEO_HOST"), ("forge", "ASAG_FORGE_HOST"),
                                                    ("reforge", "ASAG_REFORGE_HOST"), ("classic", "ASAG_CLASSIC_HOST"))}
LAUNCHER = {"neo": "run_neo.sh", "forge": "run_forge.sh", "reforge": "run_reforge.sh", "classic": "run_classic.sh"}
LDM_PATCHED = ("reforge", "classic")
"""Old-Forge hosts: no `forge_additional_modules` / `hr_additional_modules`, no GGUF loader."""
AVAILABLE = [name for name, path in HOSTS.items() if path]
PORT = int(os.environ.get("ASAG_FORGE_FAMILY_PORT", "7883"))
STEPS = 4
GGUF = {"sd_model_checkpoint": "random-sdxl-320-unet-Q8_0.gguf",
        "forge_additional_modules": ["random-sdxl-320-vae.safetensors", "random-sdxl-320-clip_l.safetensors",
                                     "random-sdxl-320-clip_g.safetensors"]}
SDXL = {"sd_model_checkpoint": "random-sdxl-320.safetensors", "forge_additional_modules": []}

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="set ASAG_NEO_HOST, ASAG_FORGE_HOST, ASAG_REFORGE_HOST "
                                                      "and/or ASAG_CLASSIC_HOST to a built host")


def xyz_tail(kind: str) -> list:
    """The X/Y/Z script's arguments after the three axes (legend on, lone images on, the rest off/0): Neo adds
    `row_count`; reForge adds individual labels, skip-grid and items-per-grid; Classic has Forge main's list."""
    if kind == "reforge":  # legend, individual labels, skip grid, items per grid, lone images, sub grids, …
        return [True, False, False, 0, True, False, False, False, False, False, 0, False]
    return [True, True, False, False, False, False, False] + ([0, 0, False] if kind == "neo" else [0, False])


class Server:
    def __init__(self, kind: str, harness: Path):
        self.kind, self.harness = kind, harness
        self.url = f"http://127.0.0.1:{PORT}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"asag-{kind}-"))
        self.log = self.tmp / "server.log"
        data = self.tmp / "data"
        extension = data / "extensions" / "asag"
        extension.mkdir(parents=True)
        for entry in REPO.iterdir():  # this checkout, file by file: no .git (the host would read its remotes)
            if entry.name not in (".git", "tests", "bench", ".pytest_cache", ".ruff_cache"):
                (extension / entry.name).symlink_to(entry)
        (data / "models").symlink_to(harness / "webui" / "models")
        settings = {}
        shipped = harness / "webui" / "config.json"
        if shipped.exists():  # Neo: VERSION_UID, the checkpoint
            settings = json.loads(shipped.read_text())
        settings.update({"grid_save": False, "samples_save": False, "live_previews_enable": False,
                         "sd_model_checkpoint": SDXL["sd_model_checkpoint"]})
        (self.tmp / "config.json").write_text(json.dumps(settings))
        script = LAUNCHER[kind]
        env = dict(os.environ, PORT=str(PORT), HARNESS_GGUF_INT_SHAPES="1")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["bash", str(harness / script), "--data-dir", str(data), "--ui-config-file",
                 str(self.tmp / "ui-config.json"), "--ui-settings-file", str(self.tmp / "config.json")],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/sdapi/v1/sd-models", timeout=2)
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{kind} server exited at start; log {self.log}") from None
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"{kind} server did not answer in 600 s; log {self.log}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except Exception:
            with contextlib.suppress(Exception):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def call(self, path: str, payload: dict | None = None) -> tuple[int, dict]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=1800) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as exc:
            return exc.code, {"raw": exc.read()[:500].decode(errors="replace")}

    def txt2img(self, asag: dict | None = None, model: dict | None = None, **kw) -> Job:
        payload = {"prompt": "a red cube on a table", "negative_prompt": "blurry", "steps": STEPS, "width": 64,
                   "height": 64, "seed": 1234, "sampler_name": "Euler", "cfg_scale": 5, "batch_size": 1,
                   "override_settings": dict(model or SDXL), "override_settings_restore_afterwards": True}
        if self.kind in LDM_PATCHED:
            payload["override_settings"].pop("forge_additional_modules", None)
        elif self.kind == "forge" or kw.get("enable_hr"):
            payload["hr_additional_modules"] = ["Use same choices"]
        scripts = dict(kw.pop("alwayson_scripts", {}))
        if asag is not None:
            scripts["ASAG"] = {"args": [asag]}
        if scripts:
            payload["alwayson_scripts"] = scripts
        payload.update(kw)
        offset = len(self.log_text())
        code, answer = self.call("/sdapi/v1/txt2img", payload)
        assert code == 200, f"HTTP {code}: {str(answer)[:500]}"
        return Job(answer, self.log_text()[offset:])


def png_pixels(data: bytes) -> bytes:
    """The image data of a PNG (its IDAT stream, inflated), without its text chunks (the infotext): equal
    pixels from the host's one encoder give equal bytes. No Pillow needed in the test's Python."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return zlib.decompress(b"".join(idat))


class Job:
    def __init__(self, answer: dict, log: str):
        self.images = [png_pixels(base64.b64decode(b)) for b in answer["images"]]
        self.info = json.loads(answer["info"])
        self.infotexts = self.info["infotexts"]
        self.log = log

    def asag_lines(self) -> list[str]:
        return [line.strip() for line in self.log.splitlines() if line.strip().startswith("ASAG")]

    def summary(self) -> str:
        done = [line for line in self.asag_lines() if line.startswith("ASAG: done:")]
        assert len(done) == 1, self.asag_lines()
        return done[0]


@pytest.fixture(scope="module", params=AVAILABLE)
def host(request):
    server = Server(request.param, Path(HOSTS[request.param]))
    try:
        server.plain = server.txt2img()
        yield server
    finally:
        server.stop()
    assert "Traceback (most recent call last)" not in server.log_text(), f"traceback in {server.log}"


ON = {"enabled": True, "scale": 2.0, "layers": "middle"}


def _no_asag_keys(job: Job) -> bool:
    return not any("ASAG" in text for text in job.infotexts)


def test_off_and_scale_zero_are_byte_identical(host):
    off = host.txt2img({"enabled": False, "scale": 2.0})
    zero = host.txt2img({**ON, "scale": 0.0})
    assert off.images == host.plain.images and zero.images == host.plain.images
    assert _no_asag_keys(off) and _no_asag_keys(zero)
    assert not off.asag_lines() and not zero.asag_lines()


def test_on_differs_carries_infotext_and_says_what_it_did(host):
    on = host.txt2img(ON)
    assert on.images != host.plain.images
    assert "ASAG scale: 2" in on.infotexts[0]
    assert on.summary().startswith(f"ASAG: done: {STEPS} of {STEPS} steps guided, {STEPS} weak passes, 10 layers")
    after = host.txt2img()
    assert after.images == host.plain.images


def test_cfg_one_is_guided(host):
    """CFG 1: the hosts drop the uncond pass (reForge and Classic hand post-CFG functions `uncond=None`);
    ASAG needs only the cond prediction and still guides every step."""
    plain = host.txt2img(cfg_scale=1)
    on = host.txt2img(ON, cfg_scale=1)
    assert on.images != plain.images
    assert "ASAG scale: 2" in on.infotexts[0] and "ASAG error" not in on.infotexts[0]
    assert on.summary().startswith(f"ASAG: done: {STEPS} of {STEPS} steps guided, {STEPS} weak passes")


@pytest.mark.parametrize("bad", [{"scale": "lots"}, {"layers": "nowhere.7"}, {"hires": "sometimes"}])
def test_bad_values_give_asag_error_and_change_nothing(host, bad):
    job = host.txt2img({**ON, **bad})
    assert job.images == host.plain.images
    assert "ASAG error" in job.infotexts[0]
    assert "ASAG scale" not in job.infotexts[0]


@pytest.mark.parametrize(("choice", "guided"), [("both", STEPS + 2), ("first", STEPS), ("hires", 2)])
def test_hires_choices(host, choice, guided):
    hires = dict(enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.5, hr_upscaler="Latent")
    job = host.txt2img({**ON, "hires": choice}, **hires)
    assert job.summary().startswith(f"ASAG: done: {guided} of {guided} steps guided, {guided} weak passes")
    assert "ASAG scale: 2" in job.infotexts[0]


def test_batch_of_two(host):
    plain = host.txt2img(batch_size=2)
    on = host.txt2img(ON, batch_size=2)
    assert len(on.images) == 2 and all(a != b for a, b in zip(on.images, plain.images, strict=True))
    assert all("ASAG scale: 2" in text for text in on.infotexts)


def _axis_values(param: params.Param) -> list[str]:
    choices = xyz.make_choices(param)
    if choices is not None:
        return list(choices())[:2]
    return {"scale": ["1", "3"], "layers": ["middle", "output.1"], "iterations": ["1", "3"],
            "tolerance": ["0.001", "0.01"], "start": ["0", "0.5"], "end": ["0.5", "1"],
            "rescale": ["0", "0.5"], "blur_sigma": ["2", "5"]}[param.name]


@pytest.mark.parametrize("param", [p for p in params.PARAMS if p.xyz is not None], ids=lambda p: p.name)
def test_xyz_over_every_asag_axis(host, param):
    code, info = host.call("/sdapi/v1/script-info")
    assert code == 200
    plot = next(s for s in info if s.get("name") == "x/y/z plot" and not s.get("is_img2img"))
    label = xyz.axis_label(param)
    index = plot["args"][0]["choices"].index(label)
    values = _axis_values(param)
    dropdown = xyz.make_choices(param) is not None
    text, listed = ("", values) if dropdown else (",".join(values), [])
    job = host.txt2img(ON, script_name="x/y/z plot",
                       script_args=[index, text, listed, 0, "", [], 0, "", [], *xyz_tail(host.kind)])
    assert len(job.images) == 3, job.asag_lines()
    cells = job.infotexts[1:]
    for value, cell in zip(values, cells, strict=True):
        if param.name == "enabled":
            assert ("ASAG scale: 2" in cell) is params.coerce(param, value)
        elif param.infotext is None:  # telemetry: no key of its own, its statistics appear when it is on
            assert ("ASAG entropy: " in cell) is params.coerce(param, value), cell
        else:
            key = params.infotext_key(param)
            written = params.format_value(param, params.coerce(param, value))
            assert f"{key}: {written}" in cell or (written == params.format_value(param, param.default)
                                                   and key not in cell), (key, written, cell)
    assert "ASAG error" not in " ".join(job.infotexts)


def _red_png(size: int = 64) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes((200, 40, 40)) * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_reference_only_runs_no_extra_weak_pass(host):
    unit = {"enabled": True, "module": "reference_only", "model": "None",
            "image": base64.b64encode(_red_png()).decode(), "weight": 1.0, "resize_mode": "Crop and Resize",
            "processor_res": 64, "threshold_a": 0.5, "threshold_b": 0.5, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False}
    reference = host.txt2img(alwayson_scripts={"controlnet": {"args": [unit]}})
    both = host.txt2img(ON, alwayson_scripts={"controlnet": {"args": [unit]}})
    assert both.images != reference.images
    assert both.summary().startswith(f"ASAG: done: {STEPS} of {STEPS} steps guided, {STEPS} weak passes")


def test_gguf_sdxl_is_guided_without_traceback(host):
    if host.kind in LDM_PATCHED:
        pytest.skip(f"{host.kind} (ldm_patched) has no GGUF loader; the harness writes no GGUF file for it")
    plain = host.txt2img(model=GGUF)
    on = host.txt2img(ON, model=GGUF)
    assert on.images != plain.images
    assert "ASAG scale: 2" in on.infotexts[0] and "ASAG error" not in on.infotexts[0]
    assert on.summary().startswith(f"ASAG: done: {STEPS} of {STEPS} steps guided, {STEPS} weak passes")
    assert "Traceback" not in on.log
    again = host.txt2img(model=GGUF)
    assert again.images == plain.images
