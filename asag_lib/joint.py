"""ASAG on joint text+image attention (MMDiT: Flux, Chroma, SD3), on top of :func:`sinkhorn_attention`.

paper.md §5 leaves open how the adversarial plan meets joint attention, where one sequence holds
n_t text tokens and n_i image tokens and every token attends to all of them. Two choices (``mode``):

``image`` (default; paper.md §5's recommendation, unverified)
    The paper's "self-attention" is the image–image block. With S = scale · q kᵀ (+ the host's mask) over
    the joint sequence, T the text and I the image token indices:

    * a text query t keeps its softmax row: out_t = Σ_j softmax_j(S_tj) v_j;
    * an image query i keeps the softmax mass it puts on text keys,
      m_i = Σ_{j∈T} exp(S_ij) / Σ_{j∈T∪I} exp(S_ij)  (= sigmoid(LSE_T(S_i) − LSE_I(S_i))),
      and with it the text part of its softmax output, m_i · Σ_{j∈T} softmax_{j∈T}(S_ij) v_j;
    * the rest of its mass, 1 − m_i, goes where the adversarial plan on the image–image block sends it:
      (1 − m_i) · A_i, with A = n_i · P · V_I the output of ``sinkhorn_attention(q_I, k_I, v_I)`` (its
      rows of weights n_i·P sum to 1 up to the kernel's row-marginal error, see ``tol``).

    So every image query's weights still sum to 1: m_i on text keys as softmax gives them, 1 − m_i on
    image keys redistributed by the plan. With n_t = 0, m = 0 and the result is exactly the plain kernel.

``full``
    The plan on the whole joint matrix: ``sinkhorn_attention(q, k, v)`` over all n_t + n_i tokens (text
    rows and columns take part in the transport, with uniform marginals over all tokens).

Masks. A host may mask padded text tokens (bool, True = attend, or additive float; 4-D broadcastable to
(B, H, L, L), 3-D (B, L, L), 2-D (L, L)). ``image``: the mask enters the softmax parts (text rows, m_i and
the text part); it must leave the image–image block open (a ``ValueError`` otherwise: the plan has no mask). ``full``: the mask
must be a key-padding mask (the same for every query and head, entries open or closed); closed tokens leave
the transport (both marginals), and their own query rows get the masked softmax.

Memory: the softmax parts stream over blocks of query rows (at most ``memory_budget_bytes`` of scores at
once, O(N·D) otherwise); the plan is ``sinkhorn_attention``'s, with its own bound. No N×N tensor exists.
Computed in float32 (float64 for float64 inputs); returns q's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from asag_lib.sinkhorn import sinkhorn_attention

__all__ = ["JOINT_MODES", "joint_sinkhorn_attention"]

JOINT_MODES = ("image", "full")

#: Default bound on the score block the softmax parts hold at once.
_SOFTMAX_BUDGET_BYTES = 64 * 2**20


def _additive(mask: Tensor | None, B: int, H: int, L: int, dtype: torch.dtype) -> Tensor | None:
    """The host's mask as an additive float tensor of 4 dims broadcastable to (B, H, L, L), or None."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)
    else:
        bias = mask.to(dtype)
    if bias.dim() == 3:  # (batch, L, L), as the hosts' attention functions read a 3-D mask
        bias = bias.unsqueeze(1)
    while bias.dim() < 4:  # (L, L) or (L,): shared by every sample and head
        bias = bias.unsqueeze(0)
    try:
        torch.broadcast_shapes(bias.shape, (B, H, L, L))
    except RuntimeError:
        raise ValueError(f"joint attention: mask of shape {tuple(mask.shape)} does not broadcast to "
                         f"(batch, heads, tokens, tokens) = {(B, H, L, L)}") from None
    return bias


def _rows(x: Tensor, sl: slice) -> Tensor:
    """Rows ``sl`` of a (…, L, …) mask with a possibly broadcast (size-1) query dim."""
    return x if x.shape[-2] == 1 else x[..., sl, :]


def _softmax_parts(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float, text: slice,
                   image: slice, want_split: bool, budget: int) -> tuple[Tensor, Tensor | None]:
    """Streams over query rows. want_split False: the (masked) softmax output. True: (text part of the
    output restricted to text keys, softmax over text keys only, and m = mass on text keys)."""
    B, H, n, _ = q.shape
    L = k.shape[2]
    rows = max(1, budget // max(1, B * H * L * q.element_size() * 2))
    outs, masses = [], []
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        s = torch.matmul(q[:, :, r0:r1], k.transpose(-1, -2)).mul_(scale)
        if bias is not None:
            s = s + _rows(bias, slice(r0, r1))
        if not want_split:
            outs.append(torch.matmul(torch.softmax(s, dim=-1), v))
            continue
        s_t, s_i = s[..., text], s[..., image]
        lse_t = torch.logsumexp(s_t, dim=-1, keepdim=True)
        lse_i = torch.logsumexp(s_i, dim=-1, keepdim=True)
        mass = torch.sigmoid(lse_t - lse_i)
        mass = torch.where(torch.isneginf(lse_t), torch.zeros_like(mass), mass)
        w_t = torch.exp(s_t - torch.where(torch.isneginf(lse_t), torch.zeros_like(lse_t), lse_t))
        outs.append(torch.matmul(w_t, v[:, :, text]))
        masses.append(mass)
    out = torch.cat(outs, dim=2)
    return out, (torch.cat(masses, dim=2) if want_split else None)


def joint_sinkhorn_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    n_text: int,
    text_first: bool = True,
    mode: str = "image",
    mask: Tensor | None = None,
    iterations: int = 2,
    tol: float = 1e-3,
    scale: float | None = None,
    rescale: bool = True,
    memory_budget_bytes: int | None = None,
) -> Tensor:
    """ASAG attention over a joint sequence of ``n_text`` text and the remaining image tokens.

    q, k, v: (batch, heads, L, d) with heads split, one joint sequence for queries and keys (text first
    when ``text_first``). ``mode``: "image" or "full" (module docstring). ``mask``: optional bool
    (True = attend) or additive float mask broadcastable to (batch, heads, L, L). The kernel options
    (``iterations``, ``tol``, ``scale``, ``rescale``, ``memory_budget_bytes``) go to ``sinkhorn_attention``.
    Returns (batch, heads, L, d_v) in q's dtype.
    """
    if mode not in JOINT_MODES:
        raise ValueError(f"joint attention: invalid value {mode!r} for 'joint'; accepted: "
                         + ", ".join(repr(m) for m in JOINT_MODES))
    if q.dim() != 4 or k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        raise ValueError("joint attention: q, k, v must be (batch, heads, L, d) over one joint sequence, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, L, d = q.shape
    if isinstance(n_text, bool) or not isinstance(n_text, int) or not 0 <= n_text < L:
        raise ValueError(f"joint attention: n_text must be an integer in [0, {L}), got {n_text!r}")
    kernel = dict(iterations=iterations, tol=tol, scale=scale, rescale=rescale,
                  memory_budget_bytes=memory_budget_bytes)
    budget = memory_budget_bytes or _SOFTMAX_BUDGET_BYTES
    scale_f = 1.0 / math.sqrt(d) if scale is None else float(scale)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    bias = _additive(mask, B, H, L, cdt)
    text = slice(0, n_text) if text_first else slice(L - n_text, L)
    image = slice(n_text, L) if text_first else slice(0, L - n_text)

    if mode == "full":
        return _full(q, k, v, bias, scale_f, cdt, budget, kernel)

    if bias is not None:
        block = _rows(bias, image)[..., image]
        if bool((block != 0).any()):
            raise ValueError("joint attention: the mask closes image-to-image entries; joint='image' puts the "
                             "plan on the image-image block, which has no mask (use joint='full' for a "
                             "key-padding mask, or no mask)")
    if n_text == 0:
        return sinkhorn_attention(q, k, v, **kernel)

    qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
    out = torch.empty(B, H, L, v.shape[3], dtype=cdt, device=q.device)
    text_bias = None if bias is None else _rows(bias, text)
    out[:, :, text] = _softmax_parts(qc[:, :, text], kc, vc, text_bias, scale_f, text, image, False, budget)[0]
    image_bias = None if bias is None else _rows(bias, image)
    text_part, mass = _softmax_parts(qc[:, :, image], kc, vc, image_bias, scale_f, text, image, True, budget)
    plan = sinkhorn_attention(q[:, :, image], k[:, :, image], v[:, :, image], **kernel).to(cdt)
    out[:, :, image] = mass * text_part + (1 - mass) * plan
    return out.to(q.dtype)


def _full(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float, cdt: torch.dtype, budget: int,
          kernel: dict) -> Tensor:
    if bias is None:
        return sinkhorn_attention(q, k, v, **kernel)
    B, H, L, _ = q.shape
    key = bias[:, :1, :1, :]  # one row per batch element: a key-padding mask has nothing else
    is_open = key == 0
    if not bool((bias == key).all()) or not bool((is_open | torch.isneginf(key) | (key <= -1e4)).all()):
        raise ValueError("joint attention: joint='full' takes only a key-padding mask (the same for every "
                         "query and head, each token open or closed)")
    keep_all = is_open.expand(B, 1, 1, L).reshape(B, L)
    out = torch.empty(B, H, L, v.shape[3], dtype=q.dtype, device=q.device)
    for b in range(B):
        keep = keep_all[b].nonzero().squeeze(1)
        drop = (~keep_all[b]).nonzero().squeeze(1)
        if keep.numel():
            out[b:b + 1, :, keep] = sinkhorn_attention(q[b:b + 1, :, keep], k[b:b + 1, :, keep],
                                                       v[b:b + 1, :, keep], **kernel)
        if drop.numel():
            rows = _softmax_parts(q[b:b + 1, :, drop].to(cdt), k[b:b + 1].to(cdt), v[b:b + 1].to(cdt),
                                  bias[b:b + 1] if bias.shape[0] > 1 else bias, scale, slice(0), slice(0), False,
                                  budget)[0]
            out[b:b + 1, :, drop] = rows.to(q.dtype)
    return out
