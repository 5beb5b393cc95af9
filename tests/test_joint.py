"""The joint-attention variant (asag_lib.joint) against a float64 dense reference written out here."""

from __future__ import annotations

import math

import pytest
import torch

from asag_lib.joint import joint_sinkhorn_attention
from asag_lib.sinkhorn import sinkhorn_attention


def plan_output(q, k, v, iterations, tol, scale):
    """n·P·V of the adversarial log-domain Sinkhorn plan, one (batch, head) at a time (paper.md §4.3)."""
    B, H, n, _ = q.shape
    out = torch.zeros(B, H, n, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            log_k = -scale * q[b, h] @ k[b, h].T
            f = torch.zeros(n, dtype=torch.float64)
            g = torch.zeros(n, dtype=torch.float64)
            for _ in range(iterations):
                f = -math.log(n) - torch.logsumexp(log_k + g[None, :], dim=1)
                g = -math.log(n) - torch.logsumexp(log_k + f[:, None], dim=0)
                plan = torch.exp(f[:, None] + log_k + g[None, :])
                if (n * plan.sum(1) - 1).abs().max() <= tol:
                    break
            out[b, h] = n * torch.exp(f[:, None] + log_k + g[None, :]) @ v[b, h]
    return out


def reference(q, k, v, n_text, mode, keep=None, text_first=True, iterations=3, tol=0.0):
    """Dense float64 joint ASAG; ``keep`` (B, L) bool marks open tokens (key padding)."""
    q, k, v = q.double(), k.double(), v.double()
    B, _, L, d = q.shape
    scale = 1 / math.sqrt(d)
    keep = torch.ones(B, L, dtype=torch.bool) if keep is None else keep
    s = scale * q @ k.transpose(-1, -2) + torch.where(keep, 0.0, -math.inf).double()[:, None, None, :]
    soft = torch.softmax(s, dim=-1)
    out = soft @ v
    if mode == "full":
        for b in range(B):
            idx = keep[b].nonzero().squeeze(1)
            out[b:b + 1, :, idx] = plan_output(q[b:b + 1, :, idx], k[b:b + 1, :, idx], v[b:b + 1, :, idx],
                                               iterations, tol, scale)
        return out
    text = torch.arange(L) < n_text if text_first else torch.arange(L) >= L - n_text
    image = ~text
    mass = soft[..., text].sum(-1, keepdim=True)  # softmax mass on text keys
    text_part = soft[..., text] @ v[:, :, text]  # = mass · softmax over text keys · v_T
    plan = plan_output(q[:, :, image], k[:, :, image], v[:, :, image], iterations, tol, scale)
    out[:, :, image] = text_part[:, :, image] + (1 - mass[:, :, image]) * plan
    return out


def make(B=2, H=2, L=24, d=8, seed=0, dtype=torch.float64, sharp=1.5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d, generator=gen, dtype=torch.float64) * sharp
    k = torch.randn(B, H, L, d, generator=gen, dtype=torch.float64)
    v = torch.randn(B, H, L, d, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("mode", ["image", "full"])
@pytest.mark.parametrize("text_first", [True, False])
def test_matches_the_float64_reference(mode, text_first):
    q, k, v = make()
    got = joint_sinkhorn_attention(q, k, v, n_text=7, text_first=text_first, mode=mode, iterations=3, tol=0.0)
    want = reference(q, k, v, 7, mode, text_first=text_first)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", ["image", "full"])
@pytest.mark.parametrize("form", ["bool", "additive", "bool2d"])
def test_padded_text_tokens_masked_like_the_reference(mode, form):
    q, k, v = make(B=2, L=20)
    keep = torch.ones(2, 20, dtype=torch.bool)
    keep[0, 4:6] = False  # text tokens 4, 5 of sample 0 are padding
    keep[1, 2:6] = False
    if form == "bool":
        mask = keep[:, None, None, :]
    elif form == "additive":
        mask = torch.where(keep, 0.0, -math.inf)[:, None, None, :]
    else:  # (B, L, L) as some hosts build it
        mask = keep[:, None, :].expand(2, 20, 20)
    got = joint_sinkhorn_attention(q, k, v, n_text=6, mode=mode, mask=mask, iterations=3, tol=0.0)
    want = reference(q, k, v, 6, mode, keep=keep)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    # the mask matters: without it the result differs
    assert not torch.allclose(got, joint_sinkhorn_attention(q, k, v, n_text=6, mode=mode, iterations=3, tol=0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_text_is_exactly_the_plain_kernel(dtype):
    q, k, v = make(dtype=dtype)
    for mode in ("image", "full"):
        got = joint_sinkhorn_attention(q, k, v, n_text=0, mode=mode)
        assert torch.equal(got, sinkhorn_attention(q, k, v))


def test_image_query_weights_sum_to_one():
    """v = 1 reads off each query's total weight: m on text + (1 − m)·(row of n·P) ≈ 1 once converged."""
    q, k, _ = make(L=16)
    ones = torch.ones(2, 2, 16, 1, dtype=torch.float64)
    out = joint_sinkhorn_attention(q, k, ones, n_text=5, iterations=200, tol=0.0)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-8)


def test_text_rows_are_softmax_and_the_text_mass_is_kept():
    q, k, v = make()
    out = joint_sinkhorn_attention(q, k, v, n_text=7, iterations=2)
    soft = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out[:, :, :7], soft[:, :, :7] @ v)
    # with v = 1 on text keys and 0 on image keys, an image query's output is its softmax mass on text
    v_text = torch.zeros_like(v[..., :1])
    v_text[:, :, :7] = 1
    got = joint_sinkhorn_attention(q, k, v_text, n_text=7)
    torch.testing.assert_close(got[:, :, 7:], soft[:, :, 7:, :7].sum(-1, keepdim=True))


def test_streaming_budget_does_not_change_the_result():
    q, k, v = make(L=40, dtype=torch.float32)
    big = joint_sinkhorn_attention(q, k, v, n_text=9)
    small = joint_sinkhorn_attention(q, k, v, n_text=9, memory_budget_bytes=64)
    torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_and_out(dtype):
    q, k, v = make(dtype=dtype)
    out = joint_sinkhorn_attention(q, k, v, n_text=7)
    assert out.dtype == dtype and torch.isfinite(out).all()
    want = reference(q.double(), k.double(), v.double(), 7, "image", iterations=2, tol=1e-3)
    assert (out.double() - want).abs().max() < 0.05


def test_bad_input_names_the_field():
    q, k, v = make()
    with pytest.raises(ValueError, match=r"'joint'.*'image', 'full'"):
        joint_sinkhorn_attention(q, k, v, n_text=3, mode="text")
    with pytest.raises(ValueError, match="n_text"):
        joint_sinkhorn_attention(q, k, v, n_text=24)
    closed = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    closed[..., 10, 12] = False  # an image-image entry
    with pytest.raises(ValueError, match="image-image"):
        joint_sinkhorn_attention(q, k, v, n_text=3, mask=closed)
    with pytest.raises(ValueError, match="key-padding"):
        joint_sinkhorn_attention(q, k, v, n_text=3, mode="full", mask=closed)
