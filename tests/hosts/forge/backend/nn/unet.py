"""Test double of backend/nn/unet.py written for these tests; no block patches, attn2 or attn1_patch.

``IntegratedUNet2DConditionModel`` takes the small real UNet of tests/unets.py (same weights, same module
names, so layer specs resolve against it) and runs it block by block the way Forge's UNet reports where it
is (docs/hosts.md §11.2, §11.3, §13): ``block`` = ("input"|"middle"|"output", id), ``block_index`` = position
in the SpatialTransformer, ``transformer_index`` = SpatialTransformers seen so far, ``original_shape``.
Each self-attention looks up ``transformer_options["patches_replace"]["attn1"]`` with the 3-tuple key first,
then the 2-tuple ``block``; a hit is called as ``fn(q, k, v, extra_options)`` (heads not split) and its
result goes through ``to_out``; otherwise the attn1 module itself runs. ``control["middle"]`` residuals are
added after the middle block.

Its attention modules carry ``heads`` and ``dim_head`` as Forge's ``CrossAttention`` does (hosts.md §11.3);
the replacement gets ``n_heads``/``dim_head`` from those, never from the Linear layers (quantized Linear
layers have no ``out_features``).

Test hook: when ``attn1_log`` is a list, every attn1 evaluation appends (3-tuple key, replacement or None).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tests.unets import TimestepBlock, UNetModel, timestep_embedding

_NOT_EXTRA = ("patches", "patches_replace")


class IntegratedUNet2DConditionModel(nn.Module):
    def __init__(self, unet: UNetModel):
        super().__init__()
        self.model_channels = unet.model_channels
        self.context_dim = unet.context_dim
        self.adm_in_channels = unet.adm_in_channels
        self.dtype = unet.dtype
        self.config = {"model_channels": unet.model_channels, "context_dim": unet.context_dim,
                       "adm_in_channels": unet.adm_in_channels}
        self.time_embed = unet.time_embed
        if unet.adm_in_channels is not None:
            self.label_emb = unet.label_emb
        self.input_blocks = unet.input_blocks
        self.middle_block = unet.middle_block
        self.output_blocks = unet.output_blocks
        self.out = unet.out
        self.attn1_log: list | None = None
        for module in self.modules():  # Forge's CrossAttention stores dim_head (A1111's classes do not)
            if hasattr(module, "to_q") and hasattr(module, "heads"):
                module.dim_head = module.to_q.out_features // module.heads

    # --- the forward pass
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, control: dict | None = None,
                transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        where = dict(transformer_options or {})
        where["original_shape"] = list(x.shape)
        where["transformer_index"] = 0
        emb = self._embed(timesteps, y, x.shape[0])
        context = None if context is None else context.to(self.dtype)

        h = x.to(self.dtype)
        skips = []
        for i, block in enumerate(self.input_blocks):
            where["block"] = ("input", i)
            h = self._run_block(block, h, emb, context, where)
            skips.append(h)
        where["block"] = ("middle", 0)
        h = self._run_block(self.middle_block, h, emb, context, where)
        for residual in (control or {}).get("middle", []):
            h = h + residual.to(h)
        for i, block in enumerate(self.output_blocks):
            where["block"] = ("output", i)
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = self._run_block(block, torch.cat([h, skip], dim=1), emb, context, where)
        return self.out(h).to(x.dtype)

    def _embed(self, timesteps: torch.Tensor | None, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        t = torch.as_tensor(0.0 if timesteps is None else timesteps).reshape(-1).expand(batch)
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.dtype))
        if self.adm_in_channels is not None:
            vector = torch.zeros(batch, self.adm_in_channels) if y is None else y
            emb = emb + self.label_emb(vector.to(self.dtype))
        return emb

    def _run_block(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
                   where: dict) -> torch.Tensor:
        for layer in block:
            if type(layer).__name__ == "SpatialTransformer":
                h = self._run_spatial(layer, h, context, where)
            elif isinstance(layer, TimestepBlock):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h

    def _run_spatial(self, st: nn.Module, h: torch.Tensor, context: torch.Tensor | None,
                     where: dict) -> torch.Tensor:
        b, _, height, width = h.shape
        feats = st.norm(h)
        if not st.use_linear:
            feats = st.proj_in(feats)
        tokens = feats.reshape(b, feats.shape[1], height * width).permute(0, 2, 1)
        if st.use_linear:
            tokens = st.proj_in(tokens)
        for j, tb in enumerate(st.transformer_blocks):
            where["block_index"] = j
            tokens = tokens + self._self_attention(tb.attn1, tb.norm1(tokens), where)
            tokens = tokens + tb.attn2(tb.norm2(tokens), context=context)
            tokens = tokens + tb.ff(tb.norm3(tokens))
        where["transformer_index"] += 1
        if st.use_linear:
            tokens = st.proj_out(tokens)
        feats = tokens.permute(0, 2, 1).reshape(b, -1, height, width)
        if not st.use_linear:
            feats = st.proj_out(feats)
        return feats + h

    def _self_attention(self, attn: nn.Module, n: torch.Tensor, where: dict) -> torch.Tensor:
        block = where["block"]
        key = (block[0], block[1], where["block_index"])
        table = where.get("patches_replace", {}).get("attn1", {})
        replacement = table.get(key, table.get(block))
        if self.attn1_log is not None:
            self.attn1_log.append((key, replacement))
        if replacement is None:
            return attn(n)
        extra = {k: v for k, v in where.items() if k not in _NOT_EXTRA}
        extra["n_heads"] = attn.heads
        extra["dim_head"] = attn.dim_head
        return attn.to_out(replacement(attn.to_q(n), attn.to_k(n), attn.to_v(n), extra))
