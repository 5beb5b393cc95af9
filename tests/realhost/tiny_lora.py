"""Write a small random LoRA (kohya key names) for a checkpoint's UNet attention projections.

The real-host LoRA / LoRA Block Weight checks need a LoRA that fits the harness's tiny random SD1.5;
none can be downloaded, so one is made from the checkpoint's own tensor shapes (read from the
safetensors header) with seeded random weights. The file is written with a minimal safetensors writer
(8-byte header length, JSON header, raw little-endian data), so only torch is needed.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import torch

_PROJ = re.compile(r"^model\.diffusion_model\.(.+\.attn[12]\.to_(?:q|k|v|out\.0))\.weight$")


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def make_tiny_lora(checkpoint: Path, out: Path, rank: int = 4, strength: float = 0.5, seed: int = 0) -> int:
    """LoRA on every UNet attention projection of `checkpoint`; returns the number of adapted layers."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, meta in sorted(_header(checkpoint).items()):
        match = _PROJ.match(name)
        if not match or len(meta["shape"]) != 2:
            continue
        out_dim, in_dim = meta["shape"]
        key = "lora_unet_" + match.group(1).replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_dim, generator=generator) / in_dim**0.5
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_dim, rank, generator=generator) * strength / rank**0.5
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    write_safetensors(tensors, out)
    return len(tensors) // 3
