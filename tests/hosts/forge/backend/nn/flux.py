"""Test double of backend/nn/flux.py written for these tests; leaves out the whole Flux architecture.

``IntegratedFluxTransformer2DModel`` is a tiny DiT stand-in: image and text tokens attend jointly in one
attention layer, modulated by the timestep. It has no ``input_blocks``/``middle_block``/``output_blocks``
and never reads ``transformer_options``: attn1 replacements do nothing here, as on the real DiTs
(docs/hosts.md §21.9).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tests.unets import timestep_embedding


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(self, in_channels: int = 4, context_in_dim: int = 16, hidden_size: int = 16,
                 num_heads: int = 2, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.img_in = nn.Linear(in_channels, hidden_size)
            self.txt_in = nn.Linear(context_in_dim, hidden_size)
            self.time_in = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(),
                                         nn.Linear(hidden_size, 2 * hidden_size))
            self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
            self.final = nn.Linear(hidden_size, in_channels)
        self.hidden_size, self.num_heads = hidden_size, num_heads

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, y: Any = None,
                guidance: Any = None, **kwargs: Any) -> torch.Tensor:
        b, c, height, width = x.shape
        img = self.img_in(x.reshape(b, c, -1).permute(0, 2, 1))
        txt = self.txt_in(context)
        t = torch.as_tensor(timestep, dtype=x.dtype).reshape(-1).expand(b)
        shift, scale = self.time_in(timestep_embedding(t, self.hidden_size)).chunk(2, dim=-1)
        joint = torch.cat([txt, img], dim=1) * (1 + scale[:, None]) + shift[:, None]
        heads = [p.reshape(b, joint.shape[1], self.num_heads, -1).transpose(1, 2)
                 for p in self.qkv(joint).chunk(3, dim=-1)]
        mixed = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(b, joint.shape[1], -1)
        img_out = self.final(mixed[:, txt.shape[1]:] + img)
        return img_out.permute(0, 2, 1).reshape(b, c, height, width)
