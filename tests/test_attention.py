"""The attn1 replacement and its transient instance-level patch, on real modules with host names."""

import pytest
import torch

from asag_lib import layers
from asag_lib.attention import (
    KernelOptions,
    has_patch,
    make_attn1_forward,
    make_attn1_replace,
    merge_heads,
    patched_forwards,
    split_heads,
)
from asag_lib.sinkhorn import sinkhorn_attention
from tests.unets import build_unet, make_inputs

OPTIONS = KernelOptions(iterations=2, tol=1e-3, rescale=True)


@pytest.fixture(scope="module")
def sdxl():
    return build_unet("sdxl").eval()


def _attn1(unet, spec="middle"):
    return [module for _, module in layers.resolve(unet, spec)]


def test_a1111_forward_is_the_kernel_between_the_modules_own_projections(sdxl):
    module = _attn1(sdxl)[0]
    x = torch.randn(2, 16, module.to_q.in_features, generator=torch.Generator().manual_seed(0))
    forward = make_attn1_forward(OPTIONS)
    out = forward(module, x, None, None, additional_tokens=None, n_times_crossframe_attn_in_self=0)
    h = module.heads
    with torch.no_grad():
        q, k, v = (split_heads(proj(x), h) for proj in (module.to_q, module.to_k, module.to_v))
        expected = module.to_out(merge_heads(sinkhorn_attention(q, k, v, iterations=2, tol=1e-3, scale=module.scale)))
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, module(x), atol=1e-4)  # it really is not softmax attention


def test_forge_replace_matches_the_a1111_forward(sdxl):
    module = _attn1(sdxl)[0]
    x = torch.randn(2, 16, module.to_q.in_features, generator=torch.Generator().manual_seed(1))
    replace = make_attn1_replace(OPTIONS)
    q, k, v = module.to_q(x), module.to_k(x), module.to_v(x)
    inner = q.shape[-1]
    forge = module.to_out(replace(q, k, v, {"n_heads": module.heads, "dim_head": inner // module.heads}))
    torch.testing.assert_close(forge, make_attn1_forward(OPTIONS)(module, x))


def test_forge_replace_rejects_a_head_count_that_does_not_divide():
    q = torch.randn(1, 4, 10)
    with pytest.raises(ValueError, match="n_heads=3"):
        make_attn1_replace(OPTIONS)(q, q, q, {"n_heads": 3})


def test_more_keys_than_queries_works(sdxl):
    module = _attn1(sdxl)[0]
    x = torch.randn(1, 9, module.to_q.in_features)
    context = torch.cat([x, torch.randn(1, 7, module.to_q.in_features)], dim=1)  # ControlNet reference bank
    out = make_attn1_forward(OPTIONS)(module, x, context)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_patch_changes_the_unet_and_leaves_no_trace(sdxl):
    inputs = make_inputs(sdxl, batch=1, h=8, w=8)
    modules = _attn1(sdxl)
    with torch.no_grad():
        before = sdxl(**inputs)
        with patched_forwards(modules, make_attn1_forward(OPTIONS)):
            assert all(has_patch(m) for m in modules)
            patched = sdxl(**inputs)
        after = sdxl(**inputs)
    assert not torch.allclose(before, patched)
    assert torch.equal(before, after)
    assert all("forward" not in vars(m) for m in sdxl.modules())


def test_previous_instance_forward_is_put_back_exactly(sdxl):
    module = _attn1(sdxl)[0]
    original = module.forward

    def hypertile_like(x, context=None, mask=None, **kwargs):  # an instance wrapper installed by someone else
        return original(x, context, mask, **kwargs)

    module.forward = hypertile_like
    try:
        with patched_forwards([module], make_attn1_forward(OPTIONS)):
            assert has_patch(module)
        assert vars(module)["forward"] is hypertile_like
    finally:
        del module.forward


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exceptions_and_interrupts_restore(sdxl, error):
    modules = _attn1(sdxl)
    with pytest.raises(type(error)), patched_forwards(modules, make_attn1_forward(OPTIONS)):
        raise error
    assert not any("forward" in vars(m) for m in modules)


def test_a_forward_replaced_by_someone_else_meanwhile_is_kept(sdxl):
    module = _attn1(sdxl)[0]

    def theirs(*args, **kwargs):
        raise AssertionError("not called")

    try:
        with patched_forwards([module], make_attn1_forward(OPTIONS)):
            module.forward = theirs
        assert vars(module)["forward"] is theirs
    finally:
        del module.forward


def test_options_from_settings():
    from asag_lib import params

    s = params.from_mapping({"iterations": 5, "tolerance": 0.01, "plan": "raw"})
    assert KernelOptions.from_settings(s) == KernelOptions(iterations=5, tol=0.01, rescale=False)


def test_row_selective_forward_perturbs_only_the_weak_rows(sdxl):
    from asag_lib.attention import make_row_selective_forward

    module = _attn1(sdxl)[0]
    x = torch.randn(5, 12, module.to_q.in_features, generator=torch.Generator().manual_seed(3))
    regrouped = []
    forward = make_row_selective_forward(slice(2, 4), {5, 4}, OPTIONS, on_regrouped=lambda: regrouped.append(1))
    with torch.no_grad():
        out = forward(module, x)
        plain = module(x)
        sinkhorn = make_attn1_forward(OPTIONS)(module, x[2:4])
        torch.testing.assert_close(out[[0, 1, 4]], plain[[0, 1, 4]])
        torch.testing.assert_close(out[2:4], sinkhorn)
        assert not regrouped
        odd = forward(module, x[:3])  # a regrouped batch runs unchanged and is reported
    torch.testing.assert_close(odd, plain[:3])
    assert regrouped == [1]


# ------------------------------------------------------------------------------------------------
# wiring against independent attention modules: with softmax in place of the kernel, our forward must
# reproduce the module's own output (torch's MultiheadAttention here; the real ldm/sgm CrossAttention in
# tests/realhost/test_a1111_attention.py when ASAG_A1111_HOST is set)


class SoftmaxOptions(KernelOptions):
    """Plain softmax attention where the Sinkhorn plan would go: the forward must then be the module."""

    def attend(self, q, k, v, scale=None, layer=None):
        weights = torch.softmax((q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5), -1)
        return weights @ v


def _cross_attention_from_mha(mha: torch.nn.MultiheadAttention) -> torch.nn.Module:
    """An ldm-style module (heads, scale, to_q/to_k/to_v, to_out) sharing the MHA's weights."""
    module = torch.nn.Module()
    module.heads = mha.num_heads
    module.scale = (mha.embed_dim // mha.num_heads) ** -0.5
    module.to_q = torch.nn.Linear(mha.embed_dim, mha.embed_dim, bias=False)
    module.to_k = torch.nn.Linear(mha.kdim, mha.embed_dim, bias=False)
    module.to_v = torch.nn.Linear(mha.vdim, mha.embed_dim, bias=False)
    module.to_q.weight, module.to_k.weight, module.to_v.weight = (
        mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    module.to_out = torch.nn.Sequential(mha.out_proj, torch.nn.Dropout(0.0))
    return module


@pytest.fixture
def mha():
    torch.manual_seed(0)
    # kdim != embed_dim makes torch keep separate q/k/v weights; the context has its own width
    return torch.nn.MultiheadAttention(32, 4, bias=False, kdim=24, vdim=24, batch_first=True).eval()


def _oracle(mha, x, k_ctx, v_ctx):
    with torch.no_grad():
        return mha(x, k_ctx, v_ctx, need_weights=False)[0]


def test_softmax_forward_equals_an_independent_attention_module_with_context(mha):
    module = _cross_attention_from_mha(mha)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 9, 32, generator=g), torch.randn(2, 13, 24, generator=g)
    with torch.no_grad():
        out = make_attn1_forward(SoftmaxOptions())(module, x, context)
    torch.testing.assert_close(out, _oracle(mha, x, context, context), rtol=1e-5, atol=1e-6)


def test_softmax_forward_equals_the_module_without_context():
    torch.manual_seed(0)
    # kdim 32 = embed_dim would pack q/k/v into one weight: unpack it into the three the module needs
    mha = torch.nn.MultiheadAttention(32, 4, bias=False, batch_first=True).eval()
    q, k, v = mha.in_proj_weight.detach().chunk(3)
    mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight = (torch.nn.Parameter(w.clone()) for w in (q, k, v))
    mha.kdim = mha.vdim = 32
    module = _cross_attention_from_mha(mha)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = make_attn1_forward(SoftmaxOptions())(module, x)
    torch.testing.assert_close(out, _oracle(mha, x, x, x), rtol=1e-5, atol=1e-6)


def test_softmax_forward_applies_the_context_transform(mha):
    """A1111's hypernetworks map the context for k and v separately; the forward must use both."""
    module = _cross_attention_from_mha(mha)
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 9, 32, generator=g), torch.randn(2, 13, 24, generator=g)

    def transform(mod, ctx):
        return ctx * 1.5 + 0.25, ctx.flip(1) - 0.5

    with torch.no_grad():
        out = make_attn1_forward(SoftmaxOptions(), transform)(module, x, context)
    k_ctx, v_ctx = transform(module, context)
    torch.testing.assert_close(out, _oracle(mha, x, k_ctx, v_ctx), rtol=1e-5, atol=1e-6)
