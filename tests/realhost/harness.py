"""Drive a built A1111 1.10.x (e.g. /work/shared/hosts-build/a1111) through its HTTP API.

A `Server` starts the host's `run-api.sh` in its own process group, on 127.0.0.1, with a private
`--data-dir` (extensions are loaded from there: this extension under test is symlinked in, together
with the host's ControlNet and any third-party extensions), private settings and UI-config files, and
stops only that process group. Nothing is written into the host's own folders except what A1111 itself
caches (hash cache, compiled scripts) in the data dir.

Images are compared by their decoded pixels (the PNGs the API returns carry the infotext, which differs
between ASAG on and off); the PNG decoder below is written here because the test interpreter has no Pillow.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

# Options a job may override: A1111 restores an override afterwards only when the option is in the
# settings file, so every one we touch is named here with the host's default.
SETTINGS: dict[str, Any] = {
    "samples_save": False,
    "grid_save": False,
    "return_grid": False,
    "live_previews_enable": False,
    "sd_model_checkpoint": "tiny_sdxl.safetensors",
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "batch_cond_uncond": True,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_hr": 0.0,
    "hypertile_enable_unet": False,
    "hypertile_enable_unet_secondpass": False,
    "hypertile_max_tile_unet": 256,
    "hypertile_swap_size_unet": 3,
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
}

BAD_LOG_MARKERS = ("Traceback", "*** Error", "Downloading")


class ServerError(RuntimeError):
    pass


@dataclasses.dataclass
class Result:
    """One API job: decoded pixels per image, the infotexts and the raw info."""

    pixels: list[bytes]
    infotexts: list[str]
    info: dict[str, Any]
    seconds: float

    @property
    def asag_error(self) -> str | None:
        """The `ASAG error` note of the job's info (or of an infotext), if any."""
        params = self.info.get("extra_generation_params", {}) or {}
        if "ASAG error" in params:
            return str(params["ASAG error"])
        found = [text for text in self.infotexts if "ASAG error" in text]
        return found[0][found[0].index("ASAG error"):] if found else None

    def guided(self) -> list[bool]:
        """Per image: does its infotext claim that ASAG ran?"""
        return ["ASAG scale" in text for text in self.infotexts]


@dataclasses.dataclass
class Server:
    host: Path
    data_dir: Path
    port: int
    extensions: dict[str, Path]
    """name in DATA/extensions -> folder (symlinked)."""
    script: str = "run-api.sh"
    """The harness's start script: run-api.sh (API only) or run-ui.sh (gradio UI + API)."""
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    _log_mark: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- life cycle ---------------------------------------------------------------------------
    def prepare(self) -> None:
        ext_dir = self.data_dir / "extensions"
        ext_dir.mkdir(parents=True, exist_ok=True)
        for entry in ext_dir.iterdir():  # a rerun: drop links from an earlier layout
            if entry.is_symlink():
                entry.unlink()
        for name, target in self.extensions.items():
            (ext_dir / name).symlink_to(target)
        models = self.data_dir / "models"
        if not models.exists():
            models.symlink_to(self.host / "webui" / "models")
        (self.data_dir / "config.json").write_text(json.dumps(SETTINGS, indent=1))
        (self.data_dir / "ui-config.json").write_text("{}")
        (self.data_dir / "Lora").mkdir(exist_ok=True)  # a LoRA folder of our own (models/ is the host's)

    def start(self, timeout: float = 600.0) -> None:
        if _port_in_use(self.port):  # never talk to someone else's (or a stale) server by mistake
            raise ServerError(f"port {self.port} is already in use")
        self.prepare()
        self.log_path = self.data_dir / "server.log"
        args = ["bash", str(self.host / self.script), "--data-dir", str(self.data_dir),
                "--ui-settings-file", str(self.data_dir / "config.json"),
                "--ui-config-file", str(self.data_dir / "ui-config.json"), "--lora-dir", str(self.data_dir / "Lora")]
        with open(self.log_path, "w") as log:
            # One torch thread by default: on a shared, oversubscribed CPU, OpenMP's spinning thread teams
            # slow every job several-fold; both servers use the same setting, so comparisons hold.
            threads = os.environ.get("ASAG_A1111_THREADS", "1")
            env = dict(os.environ, PORT=str(self.port), OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        start = time.time()
        while True:
            try:
                urllib.request.urlopen(self.url + "/sdapi/v1/sd-models", timeout=5)
                break
            except Exception:  # not up yet
                if self.proc.poll() is not None or time.time() - start > timeout:
                    self.stop()
                    raise ServerError(f"A1111 did not start on port {self.port}; see {self.log_path}") from None
                time.sleep(0.5)
        self.start_seconds = time.time() - start
        # let the start-up model load finish before the first job (a job arriving during the load can
        # leave its checkpoint override in force, see the harness README)
        self.call("/sdapi/v1/options")
        # One plain job first: A1111 seeds torch's global generator when it makes a job's noise, but the
        # state before the first job depends on start-up timing (two servers without ASAG gave different
        # pixels for the same first img2img + ControlNet reference job, which encodes its image with that
        # generator before seeding). After this job both servers start from the same seeded state.
        self.generate({"prompt": "warm-up", "steps": 1, "width": 64, "height": 64, "seed": 1,
                       "override_settings": {"sd_model_checkpoint": SETTINGS["sd_model_checkpoint"]}})
        self._log_mark = self.log_text_size()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    # -- log -------------------------------------------------------------------------------------
    def log_text_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path else 0

    def new_log(self) -> str:
        """Log lines written since the last call (or since start)."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_mark)
            data = f.read()
        self._log_mark += len(data)
        return data.decode(errors="replace")

    # -- API -------------------------------------------------------------------------------------
    def call(self, path: str, payload: dict | None = None, timeout: float = 900.0) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, {"body": exc.read()[:2000].decode(errors="replace")}

    def generate(self, payload: dict, endpoint: str = "txt2img") -> Result:
        start = time.time()
        code, body = self.call(f"/sdapi/v1/{endpoint}", payload)
        seconds = time.time() - start
        if code != 200:
            raise ServerError(f"HTTP {code} from {endpoint}: {str(body)[:1500]}")
        info = json.loads(body["info"])
        return Result([png_pixels(base64.b64decode(b)) for b in body["images"]], info["infotexts"], info, seconds)


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------------------------
# PNG decoding (8-bit, non-interlaced: what Pillow writes for the API's images)


def png_pixels(data: bytes) -> bytes:
    """The unfiltered pixel bytes of a PNG (colour type 0/2/4/6, bit depth 8, no interlace)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, interlace {interlace}")
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 255
            elif kind == 4:
                upleft = prev[i - channels] if i >= channels else 0
                p = left + up - upleft
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
                line[i] = (line[i] + pred) & 255
            elif kind != 0:
                raise ValueError(f"bad PNG filter {kind}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return bytes(out)


def max_abs_diff(a: bytes, b: bytes) -> int:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0)


def strip_asag(infotext: str) -> str:
    """An infotext without its `ASAG …` keys (to compare the rest with a run without ASAG)."""
    head, sep, params = infotext.rpartition("\n")
    kept = [item for item in params.split(", ") if not item.startswith("ASAG ")]
    return head + sep + ", ".join(kept)


def png_b64(width: int, height: int, pixel) -> str:
    """A PNG (RGB, filter 0) whose pixel (x, y) is pixel(x, y) -> (r, g, b); for init images and masks."""
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return base64.b64encode(data).decode()
