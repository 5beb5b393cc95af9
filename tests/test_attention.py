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
