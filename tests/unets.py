"""Small, real, runnable UNets with the exact module layout of the hosts' diffusion models.

These are test doubles for ``shared.sd_model.model.diffusion_model`` (A1111, ldm/sgm ``UNetModel``) and
for Forge's UNet, which uses the same module names. They are written from the published architecture
(``configs/inference/sd_xl_base.yaml``, ``sd_xl_refiner.yaml``, ``v1-inference.yaml``,
``v2-inference.yaml``; see docs/hosts.md §4 and §13), not copied from the host code.

What is faithful
----------------
* Block layout: which ``input_blocks`` / ``output_blocks`` carry a ``SpatialTransformer``, its depth,
  where ``Downsample`` / ``Upsample`` sit, and therefore the token count each ``attn1`` sees.
* Module names: ``input_blocks.{i}.1.transformer_blocks.{j}.attn1``, ``middle_block.1....``,
  ``output_blocks.{i}.1....``; the ``SpatialTransformer`` is sub-module ``[1]`` of its
  ``TimestepEmbedSequential`` (``[0]`` is the ``ResBlock``, ``[2]`` the ``Upsample`` where present).
* Class names (``type(m).__name__``): ``UNetModel``, ``TimestepEmbedSequential``, ``ResBlock``,
  ``Downsample``, ``Upsample``, ``SpatialTransformer``, ``BasicTransformerBlock``, ``CrossAttention``.
* ``CrossAttention`` attributes: ``to_q``/``to_k``/``to_v`` (``nn.Linear``, no bias), ``to_out`` =
  ``nn.Sequential(nn.Linear, nn.Dropout)``, ``heads``, ``scale = dim_head ** -0.5`` and **no**
  ``dim_head`` attribute (derive it as ``to_q.out_features // heads``). The sgm class also has
  ``backend``.
* Two forward signatures, both computing attention with torch SDPA in the **class-level** ``forward``
  (hosts swap the class forward; extensions patch instances):

  - ldm (``sd15``, ``sd2``): ``forward(self, x, context=None, mask=None)``;
  - sgm (``sdxl``, ``sdxl-refiner``): ``forward(self, x, context=None, mask=None,
    additional_tokens=None, n_times_crossframe_attn_in_self=0)``; sgm's
    ``BasicTransformerBlock._forward`` always passes ``additional_tokens=None,
    n_times_crossframe_attn_in_self=0`` to ``attn1`` like the real one.

  The classes are ``LdmCrossAttention`` / ``SgmCrossAttention`` (and ``LdmBasicTransformerBlock`` /
  ``SgmBasicTransformerBlock``) in this module, each with ``__name__ == "CrossAttention"``
  (``"BasicTransformerBlock"``).
* ``BasicTransformerBlock.forward`` calls ``self._forward`` (looked up on the instance, so an
  instance-level ``_forward`` patch such as ControlNet reference-only takes effect).
* Strided-conv ``Downsample`` (kernel 3, stride 2, padding 1) rounds odd sizes up (ceil). When an
  ``Upsample`` output is one larger than the skip connection (odd sizes), it is resized to the skip's
  size before the concatenation, as A1111's ``sd_hijack_unet`` ``cat`` hack and ComfyUI's
  ``output_shape`` do.
* ``context_dim`` and ``adm_in_channels`` have the real values (so real-shaped conditioning works):

  ========== ============= ================= ============ ================= ==============
  family     channel_mult  attention ds      depth        context_dim       adm_in_channels
  ========== ============= ================= ============ ================= ==============
  sd15       1,2,4,4       1,2,4 (+middle)   1            768               None
  sd2        1,2,4,4       1,2,4 (+middle)   1            1024              None
  sdxl       1,2,4         2,4 (+middle)     2,10; mid 10 2048              2816
  sdxl-refi. 1,2,4,4       2,4 (+middle ds8) 4; mid 4     1280              2560
  ========== ============= ================= ============ ================= ==============

What is scaled down
-------------------
* Widths: ``model_channels`` defaults to 32 (real: 320 / 320 / 320 / 384), so the levels have
  32/64/128(/128) channels. GroupNorm uses 32 groups as the real models (``model_channels`` < 32:
  ``model_channels // 2`` groups, so every group keeps >= 2 channels). ``model_channels`` must be a
  multiple of 8 (heads of 8 channels; sd15's 8 fixed heads).
* Heads: sd15 keeps the real fixed 8 heads (dim_head 4/8/16 at 32/64/128 channels); sd2, sdxl and the
  refiner use ``num_head_channels = 8`` (real: 64), i.e. 4/8/16 heads at 32/64/128 channels.
* Time embedding: ``4 * model_channels`` as in the real models.
* Weights: PyTorch's default init under ``torch.manual_seed(seed)`` (the global RNG is not disturbed).
  Unlike the real models, nothing is zero-initialised (``proj_out``, ``out_layers`` conv), so every
  attention layer visibly changes the output.

Cost on an idle 2-core CPU, float32, default widths (build / forward at 8×8 batch 1 / 16×16 batch 2):
sd15 ~170 ms / ~17 ms / ~55 ms; sd2 ~100 ms / ~17 ms / ~45 ms; sdxl ~490 ms / ~60 ms / ~70 ms;
sdxl-refiner ~270 ms / ~35 ms / ~60 ms. Build once per module (a ``scope="module"`` fixture) where you
can: most of the build is the real-sized ``context_dim`` / ``adm_in_channels`` projections.

Helpers: :func:`build_unet`, :func:`make_inputs` (deterministic forward kwargs), :func:`iter_attn1`,
:func:`latent_tokens`, :func:`timestep_embedding`, :data:`FAMILIES`, :data:`ATTN1_COUNTS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("sd15", "sd2", "sdxl", "sdxl-refiner")

#: Number of ``attn1`` modules per family (the real models have the same counts).
ATTN1_COUNTS = {"sd15": 16, "sd2": 16, "sdxl": 70, "sdxl-refiner": 44}


# --------------------------------------------------------------------------------------------------
# helpers


def _norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``gcd(groups, channels)`` groups (the real models: 32)."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding (cos first, then sin), shape [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def latent_tokens(h: int, w: int, level: int) -> int:
    """Tokens at a UNet level for an ``h``×``w`` latent: each downsample halves, rounding up."""
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h * w


# --------------------------------------------------------------------------------------------------
# attention


class _CrossAttentionBase(nn.Module):
    """Shared constructor of the ldm and sgm attention classes (host attributes, no ``dim_head``)."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def _attend(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.heads
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, nq, inner = q.shape
        d = inner // h
        q = q.view(b, nq, h, d).transpose(1, 2)
        k = k.view(b, -1, h, d).transpose(1, 2)
        v = v.view(b, -1, h, d).transpose(1, 2)
        attn_mask = None
        if mask is not None:  # [B, Nk] boolean: True = keep
            attn_mask = mask.reshape(b, -1).bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, nq, inner)
        return self.to_out(out)


class LdmCrossAttention(_CrossAttentionBase):
    """``ldm.modules.attention.CrossAttention`` (SD1.x / SD2.x)."""

    def forward(self, x, context=None, mask=None):
        context = x if context is None else context
        return self._attend(x, context, mask)


class SgmCrossAttention(_CrossAttentionBase):
    """``sgm.modules.attention.CrossAttention`` (SDXL)."""

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        n_tokens_to_mask = 0
        if additional_tokens is not None:
            n_tokens_to_mask = additional_tokens.shape[1]
            x = torch.cat([additional_tokens, x], dim=1)
        context = x if context is None else context
        if n_times_crossframe_attn_in_self:
            # self-attention over the keys/values of every n-th batch entry (video / cross-frame)
            n = n_times_crossframe_attn_in_self
            assert x.shape[0] % n == 0
            context = context[::n].repeat_interleave(n, dim=0)
        out = self._attend(x, context, mask)
        if n_tokens_to_mask:
            out = out[:, n_tokens_to_mask:]
        return out


for _cls in (LdmCrossAttention, SgmCrossAttention):
    _cls.__name__ = _cls.__qualname__ = "CrossAttention"


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class _BasicTransformerBlockBase(nn.Module):
    attention_cls: type[nn.Module] = LdmCrossAttention

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int, disable_self_attn: bool = False,
                 checkpoint: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = self.attention_cls(dim, context_dim=context_dim if disable_self_attn else None,
                                        heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(dim)
        self.attn2 = self.attention_cls(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint  # A1111 forces False; never used here


class LdmBasicTransformerBlock(_BasicTransformerBlockBase):
    """``ldm.modules.attention.BasicTransformerBlock``."""

    attention_cls = LdmCrossAttention

    def forward(self, x, context=None):
        return self._forward(x, context)

    def _forward(self, x, context=None):
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class SgmBasicTransformerBlock(_BasicTransformerBlockBase):
    """``sgm.modules.attention.BasicTransformerBlock``."""

    attention_cls = SgmCrossAttention

    def forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        kwargs = {"x": x}
        if context is not None:
            kwargs["context"] = context
        if additional_tokens is not None:
            kwargs["additional_tokens"] = additional_tokens
        if n_times_crossframe_attn_in_self:
            kwargs["n_times_crossframe_attn_in_self"] = n_times_crossframe_attn_in_self
        return self._forward(**kwargs)

    def _forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        x = self.attn1(
            self.norm1(x),
            context=context if self.disable_self_attn else None,
            additional_tokens=additional_tokens,
            n_times_crossframe_attn_in_self=n_times_crossframe_attn_in_self if not self.disable_self_attn else 0,
        ) + x
        x = self.attn2(self.norm2(x), context=context, additional_tokens=additional_tokens) + x
        x = self.ff(self.norm3(x)) + x
        return x


for _cls in (LdmBasicTransformerBlock, SgmBasicTransformerBlock):
    _cls.__name__ = _cls.__qualname__ = "BasicTransformerBlock"


class SpatialTransformer(nn.Module):
    """Norm, project in, ``depth`` transformer blocks over the ``h*w`` tokens, project out, residual."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int, context_dim: int,
                 use_linear: bool, block_cls: type[nn.Module], norm_groups: int = 32):
        super().__init__()
        inner_dim = n_heads * d_head
        self.in_channels = in_channels
        self.use_linear = use_linear
        self.norm = _norm(in_channels, norm_groups)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
            self.proj_out = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
            self.proj_out = nn.Conv2d(inner_dim, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [block_cls(inner_dim, n_heads, d_head, context_dim=context_dim) for _ in range(depth)]
        )

    def forward(self, x, context=None):
        if not isinstance(context, list):
            context = [context] * len(self.transformer_blocks)
        b, _, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context=context[i])
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


# --------------------------------------------------------------------------------------------------
# convolutional blocks


class TimestepBlock(nn.Module):
    """Marker base: ``forward(x, emb)``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb=None, context=None, **kwargs):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 norm_groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels = channels, out_channels
        self.in_layers = nn.Sequential(_norm(channels, norm_groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels, norm_groups), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Strided 3×3 conv: an odd size n becomes ceil(n / 2)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv; ``output_shape`` (ComfyUI/Forge style) overrides the size."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x, output_shape=None):
        size = tuple(output_shape[-2:]) if output_shape is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


# --------------------------------------------------------------------------------------------------
# the UNet


_CONFIGS = {
    # channel_mult, attention_resolutions (ds values), transformer_depth per level, middle depth,
    # context_dim, adm_in_channels, heads: ("fixed", n) or ("channels", head_channels), linear proj, sgm
    "sd15": dict(mult=(1, 2, 4, 4), attn=(4, 2, 1), depth=(1, 1, 1, 1), middle=1, context_dim=768,
                 adm=None, heads=("fixed", 8), linear=False, sgm=False),
    "sd2": dict(mult=(1, 2, 4, 4), attn=(4, 2, 1), depth=(1, 1, 1, 1), middle=1, context_dim=1024,
                adm=None, heads=("channels", 8), linear=True, sgm=False),
    "sdxl": dict(mult=(1, 2, 4), attn=(4, 2), depth=(0, 2, 10), middle=10, context_dim=2048,
                 adm=2816, heads=("channels", 8), linear=True, sgm=True),
    "sdxl-refiner": dict(mult=(1, 2, 4, 4), attn=(4, 2), depth=(4, 4, 4, 4), middle=4, context_dim=1280,
                         adm=2560, heads=("channels", 8), linear=True, sgm=True),
}


class UNetModel(nn.Module):
    """A scaled-down ldm/sgm ``UNetModel`` with the real block layout (see the module docstring)."""

    def __init__(self, family: str, model_channels: int = 32):
        super().__init__()
        if family not in _CONFIGS:
            raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
        cfg = _CONFIGS[family]
        self.family = family
        self.in_channels = self.out_channels = 4
        self.model_channels = model_channels
        self.channel_mult = cfg["mult"]
        self.num_res_blocks = 2
        self.attention_resolutions = cfg["attn"]
        self.transformer_depth = cfg["depth"]
        self.transformer_depth_middle = cfg["middle"]
        self.context_dim = cfg["context_dim"]
        self.adm_in_channels = cfg["adm"]
        self.num_classes = "sequential" if cfg["adm"] else None
        self.dtype = torch.float32
        block_cls = SgmBasicTransformerBlock if cfg["sgm"] else LdmBasicTransformerBlock
        head_mode, head_val = cfg["heads"]

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            if head_mode == "fixed":
                n_heads, d_head = head_val, ch // head_val
            else:
                n_heads, d_head = ch // head_val, head_val
            return SpatialTransformer(ch, n_heads, d_head, depth, self.context_dim, cfg["linear"], block_cls,
                                      norm_groups=ng)

        ted = model_channels * 4
        # 32 groups as the real models; narrower test widths keep >= 2 channels per group so a 1x1
        # bottom level (8x8 latent, ds8) still normalises
        ng = 32 if model_channels >= 32 else max(1, model_channels // 2)
        self.norm_groups = ng
        self.time_embed = nn.Sequential(nn.Linear(model_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
        if self.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(self.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
            )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(self.in_channels, model_channels, 3, padding=1))]
        )
        chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, ted, mult * model_channels, norm_groups=ng)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(transformer(ch, self.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ted, norm_groups=ng),
            transformer(ch, self.transformer_depth_middle),
            ResBlock(ch, ted, norm_groups=ng),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(self.num_res_blocks + 1):
                skip = chans.pop()
                layers = [ResBlock(ch + skip, ted, model_channels * mult, norm_groups=ng)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(transformer(ch, self.transformer_depth[level]))
                if level and i == self.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch, ng), nn.SiLU(), nn.Conv2d(ch, self.out_channels, 3, padding=1))

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        b = x.shape[0]
        dtype = self.time_embed[0].weight.dtype
        timesteps = torch.as_tensor(0.0 if timesteps is None else timesteps).reshape(-1)
        if timesteps.numel() == 1:
            timesteps = timesteps.expand(b)
        if context is None:
            context = torch.zeros(b, 1, self.context_dim, dtype=dtype)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if self.adm_in_channels is not None:
            if y is None:
                y = torch.zeros(b, self.adm_in_channels, dtype=dtype)
            emb = emb + self.label_emb(y.to(dtype))

        h = x.to(dtype)
        context = context.to(dtype)
        hs = []
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            skip = hs.pop()
            if h.shape[-2:] != skip.shape[-2:]:  # odd sizes: A1111's cat hack / ComfyUI's output_shape
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = module(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h).to(x.dtype)


def build_unet(family: str, *, model_channels: int = 32, seed: int = 0, dtype=torch.float32) -> UNetModel:
    """A small UNet of ``family`` ("sd15", "sd2", "sdxl", "sdxl-refiner") with weights fixed by ``seed``.

    The global RNG state is left untouched. The model is in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(family, model_channels=model_channels)
    unet = unet.to(dtype).eval()
    unet.dtype = dtype
    return unet


def iter_attn1(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every ``...transformer_blocks.{j}.attn1`` as (qualified name, module), in module order."""
    for name, module in unet.named_modules():
        if name.endswith(".attn1"):
            yield name, module


def make_inputs(unet: UNetModel, *, batch: int = 2, h: int = 16, w: int = 16, context_len: int = 4,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic forward arguments: ``unet(**make_inputs(unet))``."""
    g = torch.Generator().manual_seed(seed)
    dtype = unet.dtype
    args = {
        "x": torch.randn(batch, 4, h, w, generator=g).to(dtype),
        "timesteps": torch.full((batch,), 500.0),
        "context": torch.randn(batch, context_len, unet.context_dim, generator=g).to(dtype),
    }
    if unet.adm_in_channels is not None:
        args["y"] = torch.randn(batch, unet.adm_in_channels, generator=g).to(dtype)
    return args
