"""The real-host harness's own pieces that need no host (these run in CI)."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import torch

from tests.realhost.harness import png_b64, png_pixels, strip_asag
from tests.realhost.tiny_lora import write_safetensors


def _png(width: int, height: int, colour: int, scanlines: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b""))


def test_png_filters_hand_computed() -> None:
    # 2x4 grey image [[10, 20], [15, 40], [30, 30], [0, 255]], rows filtered Sub, Paeth, Up, Average
    # (filtered bytes worked out by hand from the PNG spec's predictor definitions)
    scanlines = bytes([1, 10, 10, 4, 5, 20, 2, 15, 246, 3, 241, 240])
    assert png_pixels(_png(2, 4, 0, scanlines)) == bytes([10, 20, 15, 40, 30, 30, 0, 255])


def test_png_round_trip_rgb() -> None:
    encoded = png_b64(3, 2, lambda x, y: (x, y, 7))
    assert png_pixels(base64.b64decode(encoded)) == bytes([0, 0, 7, 1, 0, 7, 2, 0, 7, 0, 1, 7, 1, 1, 7, 2, 1, 7])


def test_strip_asag_keeps_the_rest() -> None:
    text = "a cube\nNegative prompt: blurry\nSteps: 4, Seed: 1, ASAG scale: 3, ASAG layers: middle, Version: v1.10.1"
    assert strip_asag(text) == "a cube\nNegative prompt: blurry\nSteps: 4, Seed: 1, Version: v1.10.1"


def test_safetensors_writer_layout(tmp_path) -> None:
    path = tmp_path / "t.safetensors"
    write_safetensors({"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor(3.0)}, path)
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    assert header["a"] == {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "F32", "shape": [], "data_offsets": [8, 12]}
    assert struct.unpack("<3f", data[8 + size:]) == (1.0, 2.0, 3.0)
