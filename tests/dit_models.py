"""Small Flux and Chroma models for the DiT tests, written here from the structure Forge Neo documents
(docs/hosts.md, "Forge Neo facts"): what ASAG relies on is reproduced, the rest is simplified.

Reproduced: ``double_blocks`` (two streams, joint attention over text-then-image tokens) and
``single_blocks`` (one stream over the concatenation); both call this module's global
``attention(q, k, v, pe, mask, transformer_options)`` with q, k, v as (B, H, L, D), heads split, which
applies the rotary embedding through the module's ``apply_rope(q, k, pe)`` and returns (B, L, H·D); the
model's loop looks up ``transformer_options["patches_replace"]["dit"][("double_block" | "single_block", i)]``
and calls it as ``fn(args, {"original_block": wrap})``, and sets ``block_type`` / ``block_index`` /
``total_blocks``; an ``attention_mask`` keyword reaches the blocks as ``attn_mask``. Chroma's model class
reuses these block classes with model-level modulation, as Neo's Chroma imports Flux's blocks.
Simplified: modulation, MLPs, the rotary embedding's form, the embedders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def apply_rope(q: torch.Tensor, k: torch.Tensor, pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate feature pairs (2j, 2j+1) by the angles ``pe`` (B, 1, L, D/2)."""

    def rotate(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0::2], x[..., 1::2]
        cos, sin = pe.cos().to(x.dtype), pe.sin().to(x.dtype)
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    return rotate(q), rotate(k)


def attention(q, k, v, pe, mask=None, transformer_options=None):
    if pe is not None:
        q, k = apply_rope(q, k, pe)
    if mask is not None and mask.dim() == 3:
        mask = mask[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b h l d -> b l (h d)")


class Stream(nn.Module):
    """One stream's projections: qkv, a per-head q/k scale, the output projection and an MLP."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.qk_scale = nn.Parameter(torch.ones(hidden // heads))
        self.proj = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def split(self, x: torch.Tensor):
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        return q * self.qk_scale, k * self.qk_scale, v


def _modulation(vec: torch.Tensor, lin: nn.Module | None, n: int) -> list[torch.Tensor]:
    out = lin(F.silu(vec)) if lin is not None else vec
    return [c[:, None] for c in out.chunk(n, dim=-1)]


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, modulation: bool = True):
        super().__init__()
        self.img, self.txt = Stream(hidden, heads), Stream(hidden, heads)
        self.img_mod = nn.Linear(hidden, 3 * hidden) if modulation else None
        self.txt_mod = nn.Linear(hidden, 3 * hidden) if modulation else None

    def forward(self, img, txt, vec, pe, attn_mask=None, transformer_options={}):  # noqa: B006 - host signature
        vec_img, vec_txt = vec if isinstance(vec, tuple) else (vec, vec)
        i_shift, i_scale, i_gate = _modulation(vec_img, self.img_mod, 3)
        t_shift, t_scale, t_gate = _modulation(vec_txt, self.txt_mod, 3)
        iq, ik, iv = self.img.split(F.layer_norm(img, img.shape[-1:]) * (1 + i_scale) + i_shift)
        tq, tk, tv = self.txt.split(F.layer_norm(txt, txt.shape[-1:]) * (1 + t_scale) + t_shift)
        out = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe=pe,
                        mask=attn_mask, transformer_options=transformer_options)
        n_txt = txt.shape[1]
        img = img + i_gate * self.img.proj(out[:, n_txt:])
        img = img + self.img.mlp(F.layer_norm(img, img.shape[-1:]))
        txt = txt + t_gate * self.txt.proj(out[:, :n_txt])
        txt = txt + self.txt.mlp(F.layer_norm(txt, txt.shape[-1:]))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, modulation: bool = True):
        super().__init__()
        self.stream = Stream(hidden, heads)
        self.mod = nn.Linear(hidden, 3 * hidden) if modulation else None

    def forward(self, x, vec, pe, attn_mask=None, transformer_options={}):  # noqa: B006 - host signature
        shift, scale, gate = _modulation(vec, self.mod, 3)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift
        q, k, v = self.stream.split(h)
        out = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        return x + gate * (self.stream.proj(out) + self.stream.mlp(h))


def _timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    args = t.float()[:, None] * 1000 * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class IntegratedFluxTransformer2DModel(nn.Module):
    """Flux: patch size 2, text (``context``) first, then image tokens."""

    modulated_blocks = True

    def __init__(self, in_channels=4, context_dim=16, hidden=32, heads=2, depth=2, depth_single=2, seed=0,
                 dtype=torch.float32):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.patch_size = 2
            self.num_heads = heads
            self.img_in = nn.Linear(in_channels * 4, hidden)
            self.txt_in = nn.Linear(context_dim, hidden)
            self.time_in = nn.Linear(hidden, hidden)
            m = self.modulated_blocks
            self.double_blocks = nn.ModuleList([DoubleStreamBlock(hidden, heads, m) for _ in range(depth)])
            self.single_blocks = nn.ModuleList([SingleStreamBlock(hidden, heads, m) for _ in range(depth_single)])
            self.mod_out = None if m else nn.Linear(hidden, 3 * hidden)
            self.final = nn.Linear(hidden, in_channels * 4)
        self.to(dtype)

    def _vec(self, vec: torch.Tensor, kind: str):
        if self.modulated_blocks:
            return vec
        return self.mod_out(vec) if kind == "single" else (self.mod_out(vec), self.mod_out(vec))

    def forward(self, x, timestep, context, y=None, guidance=None, control=None, transformer_options={},  # noqa: B006
                **kwargs):
        b, _, h, w = x.shape
        img = rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
        img = self.img_in(img)
        txt = self.txt_in(context.to(img.dtype))
        t = torch.as_tensor(timestep).reshape(-1).expand(b)
        vec = self.time_in(_timestep_features(t, img.shape[-1]).to(img.dtype))
        n_txt, length = txt.shape[1], txt.shape[1] + img.shape[1]
        positions = torch.arange(length, dtype=torch.float64)
        freqs = 1.0 / 100.0 ** (torch.arange(self.double_blocks[0].img.qk_scale.numel() // 2) / 8)
        pe = (positions[:, None] * freqs[None]).to(torch.float32)[None, None].expand(b, 1, length, -1)
        mask = kwargs.get("attention_mask")
        replace = transformer_options.get("patches_replace", {}).get("dit", {})

        transformer_options["total_blocks"] = len(self.double_blocks)
        transformer_options["block_type"] = "double"
        for i, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = i
            args = {"img": img, "txt": txt, "vec": self._vec(vec, "double"), "pe": pe, "attn_mask": mask,
                    "transformer_options": transformer_options}
            if ("double_block", i) in replace:

                def wrap(a, block=block):
                    out_img, out_txt = block(img=a["img"], txt=a["txt"], vec=a["vec"], pe=a["pe"],
                                             attn_mask=a.get("attn_mask"),
                                             transformer_options=a.get("transformer_options"))
                    return {"img": out_img, "txt": out_txt}

                out = replace[("double_block", i)](args, {"original_block": wrap})
                img, txt = out["img"], out["txt"]
            else:
                img, txt = block(img=img, txt=txt, vec=args["vec"], pe=pe, attn_mask=mask,
                                 transformer_options=transformer_options)

        joint = torch.cat((txt, img), 1)
        transformer_options["total_blocks"] = len(self.single_blocks)
        transformer_options["block_type"] = "single"
        for i, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = i
            args = {"img": joint, "vec": self._vec(vec, "single"), "pe": pe, "attn_mask": mask,
                    "transformer_options": transformer_options}
            if ("single_block", i) in replace:

                def wrap(a, block=block):
                    return {"img": block(a["img"], vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"),
                                         transformer_options=a.get("transformer_options"))}

                joint = replace[("single_block", i)](args, {"original_block": wrap})["img"]
            else:
                joint = block(joint, vec=args["vec"], pe=pe, attn_mask=mask, transformer_options=transformer_options)

        out = self.final(joint[:, n_txt:])
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, w=w // 2, ph=2, pw=2)


class IntegratedChromaTransformer2DModel(IntegratedFluxTransformer2DModel):
    """Chroma: Flux's block classes without per-block modulation (the model computes it)."""

    modulated_blocks = False


# --------------------------------------------------------------------------------------------------
# Qwen-Image: one stack of joint blocks (``transformer_blocks``), ``("double_block", i)`` replacements; the
# attention module calls this module's global ``attention_function(q, k, v, heads, mask)`` with heads
# merged, text first, RoPE already applied; a block returns (txt, img).


def attention_function(q, k, v, heads, mask=None, **kwargs):
    split = [rearrange(t, "b l (h d) -> b h l d", h=heads) for t in (q, k, v)]
    return rearrange(F.scaled_dot_product_attention(*split, attn_mask=mask), "b h l d -> b l (h d)")


class QwenAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(hidden, hidden) for _ in range(3))
        self.to_out, self.to_add_out = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, img, txt, pe):
        def heads(x):
            return rearrange(x, "b l (h d) -> b h l d", h=self.heads)

        q = torch.cat((heads(self.add_q_proj(txt)), heads(self.to_q(img))), 2)
        k = torch.cat((heads(self.add_k_proj(txt)), heads(self.to_k(img))), 2)
        v = torch.cat((heads(self.add_v_proj(txt)), heads(self.to_v(img))), 2)
        q, k = apply_rope(q, k, pe)
        merged = [rearrange(t, "b h l d -> b l (h d)") for t in (q, k, v)]
        out = attention_function(*merged, self.heads, None)
        n_txt = txt.shape[1]
        return self.to_out(out[:, n_txt:]), self.to_add_out(out[:, :n_txt])


class QwenImageTransformerBlock(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.attn = QwenAttention(hidden, heads)
        self.img_mod, self.txt_mod = nn.Linear(hidden, 2 * hidden), nn.Linear(hidden, 2 * hidden)
        self.img_mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb=None):
        i_scale, i_gate = self.img_mod(F.silu(temb))[:, None].chunk(2, dim=-1)
        t_scale, t_gate = self.txt_mod(F.silu(temb))[:, None].chunk(2, dim=-1)
        img = F.layer_norm(hidden_states, hidden_states.shape[-1:]) * (1 + i_scale)
        txt = F.layer_norm(encoder_hidden_states, encoder_hidden_states.shape[-1:]) * (1 + t_scale)
        img_out, txt_out = self.attn(img, txt, image_rotary_emb)
        hidden_states = hidden_states + i_gate * img_out
        hidden_states = hidden_states + self.img_mlp(F.layer_norm(hidden_states, hidden_states.shape[-1:]))
        return encoder_hidden_states + t_gate * txt_out, hidden_states


class QwenImageTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, context_dim=16, hidden=32, heads=2, depth=3, seed=0, dtype=torch.float32):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.patch_size = 2
            self.img_in = nn.Linear(in_channels * 4, hidden)
            self.txt_in = nn.Linear(context_dim, hidden)
            self.time_in = nn.Linear(hidden, hidden)
            self.transformer_blocks = nn.ModuleList([QwenImageTransformerBlock(hidden, heads) for _ in range(depth)])
            self.proj_out = nn.Linear(hidden, in_channels * 4)
        self.head_dim = hidden // heads
        self.to(dtype)

    def forward(self, x, timesteps, context, attention_mask=None, guidance=None, ref_latents=None,
                transformer_options={}, control=None, **kwargs):  # noqa: B006 - host signature
        b, _, h, w = x.shape
        img = self.img_in(rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2))
        txt = self.txt_in(context.to(img.dtype))
        t = torch.as_tensor(timesteps).reshape(-1).expand(b)
        temb = self.time_in(_timestep_features(t, img.shape[-1]).to(img.dtype))
        length = txt.shape[1] + img.shape[1]
        freqs = 1.0 / 100.0 ** (torch.arange(self.head_dim // 2) / 8)
        pe = (torch.arange(length)[:, None] * freqs[None]).float()[None, None].expand(b, 1, length, -1)
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.transformer_blocks):
            if ("double_block", i) in replace:

                def wrap(a, block=block):
                    out_txt, out_img = block(hidden_states=a["img"], encoder_hidden_states=a["txt"],
                                             encoder_hidden_states_mask=None, temb=a["vec"], image_rotary_emb=a["pe"])
                    return {"txt": out_txt, "img": out_img}

                out = replace[("double_block", i)]({"img": img, "txt": txt, "vec": temb, "pe": pe},
                                                   {"original_block": wrap})
                img, txt = out["img"], out["txt"]
            else:
                txt, img = block(hidden_states=img, encoder_hidden_states=txt, encoder_hidden_states_mask=None,
                                 temb=temb, image_rotary_emb=pe)
        out = self.proj_out(img)
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, w=w // 2, ph=2, pw=2)


# --------------------------------------------------------------------------------------------------
# Anima: ``blocks``, each with ``self_attn`` (image tokens, ``is_selfattn``) and ``cross_attn`` (text); the
# attention op is the instance attribute ``attn_op(q, k, v, transformer_options)`` taking (B, T, H, W, heads, D)
# and returning (B, S, heads·D). No block-replacement hook.


def default_attn_op(q, k, v, transformer_options=None):
    b, heads = q.shape[0], q.shape[-2]
    split = [rearrange(t.reshape(b, -1, heads, t.shape[-1]), "b s h d -> b h s d") for t in (q, k, v)]
    return rearrange(F.scaled_dot_product_attention(*split), "b h s d -> b s (h d)")


class SelfCrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int | None, heads: int):
        super().__init__()
        self.is_selfattn = context_dim is None
        self.n_heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(context_dim or dim, dim, bias=False)
        self.v_proj = nn.Linear(context_dim or dim, dim, bias=False)
        self.output_proj = nn.Linear(dim, dim, bias=False)
        self.attn_op = default_attn_op

    def forward(self, x, context=None, transformer_options={}):  # noqa: B006 - host signature
        ctx = x if context is None else context
        q, k, v = (rearrange(p(t), "b ... (h d) -> b ... h d", h=self.n_heads)
                   for p, t in ((self.q_proj, x), (self.k_proj, ctx), (self.v_proj, ctx)))
        return self.output_proj(self.attn_op(q, k, v, transformer_options=transformer_options))


class AnimaBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.self_attn = SelfCrossAttention(dim, None, heads)
        self.cross_attn = SelfCrossAttention(dim, context_dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, context, emb):
        shape = x.shape
        x = x + self.self_attn(F.layer_norm(x, shape[-1:]) * (1 + emb)).reshape(shape)
        flat = x.reshape(shape[0], -1, shape[-1])
        x = x + self.cross_attn(F.layer_norm(flat, shape[-1:]), context).reshape(shape)
        return x + self.mlp(F.layer_norm(x, shape[-1:]))


class Anima(nn.Module):
    def __init__(self, in_channels=4, context_dim=16, hidden=32, heads=2, depth=3, seed=0, dtype=torch.float32):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.x_in = nn.Linear(in_channels * 4, hidden)
            self.time_in = nn.Linear(hidden, hidden)
            self.blocks = nn.ModuleList([AnimaBlock(hidden, context_dim, heads) for _ in range(depth)])
            self.x_out = nn.Linear(hidden, in_channels * 4)
        self.to(dtype)

    def forward(self, x, timesteps, context, transformer_options={}, **kwargs):  # noqa: B006 - host signature
        b = x.shape[0]
        tokens = rearrange(x, "b c (h ph) (w pw) -> b 1 h w (c ph pw)", ph=2, pw=2)
        tokens = self.x_in(tokens)
        t = torch.as_tensor(timesteps).reshape(-1).expand(b)
        emb = self.time_in(_timestep_features(t, tokens.shape[-1]).to(tokens.dtype))[:, None, None, None]
        context = context.to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, context, emb)
        out = self.x_out(tokens)
        return rearrange(out, "b 1 h w (c ph pw) -> b c (h ph) (w pw)", ph=2, pw=2)
