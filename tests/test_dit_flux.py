"""ASAG's Flux/Chroma hook (asag_lib/hosts/dit_flux.py) on small models built from Neo's documented
structure (tests/dit_models.py): off is untouched, the weak forward differs only at the chosen blocks and
matches a float64 reference there, nothing stays patched, other extensions' replacements keep running."""

from __future__ import annotations

import copy

import pytest
import torch
from einops import rearrange

import tests.dit_models as dm
from asag_lib import layers
from asag_lib.attention import KernelOptions
from asag_lib.hosts.dit_flux import WeakPassHook, attention_module
from tests.test_joint import reference

FLUX = layers.FAMILIES["IntegratedFluxTransformer2DModel"]
CHROMA = layers.FAMILIES["IntegratedChromaTransformer2DModel"]
QWEN = layers.FAMILIES["QwenImageTransformer2DModel"]
KERNEL = KernelOptions(iterations=3, tol=0.0)
N_TEXT = 5


def model_and_inputs(cls=dm.IntegratedFluxTransformer2DModel, dtype=torch.float64, batch=2, **kw):
    model = cls(dtype=dtype, **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=g, dtype=dtype)
    context = torch.randn(batch, N_TEXT, 16, generator=g, dtype=dtype)
    return model, x, torch.full((batch,), 0.5), context


def run(model, x, t, context, options=None, **kw):
    to = (options or {}).get("transformer_options", {})
    with torch.no_grad():
        return model(x, t, context, transformer_options=dict(to), **kw)


def hook_for(model, family, spec, joint="image"):
    refs = [ref for ref, _ in layers.resolve_dit(model, family, spec)]
    return WeakPassHook(family, refs, attention_module(model, family), KERNEL, joint)


def reference_attention(n_text, joint, mask=None):
    """Neo's attention with the float64 joint reference (tests/test_joint.py) in place of softmax."""

    def attention(q, k, v, pe, mask=None, transformer_options=None):
        q, k = dm.apply_rope(q, k, pe)
        keep = None if mask is None else mask.reshape(mask.shape[0], -1)
        out = reference(q, k, v, n_text, joint, keep=keep, iterations=KERNEL.iterations, tol=KERNEL.tol)
        return rearrange(out, "b h l d -> b l (h d)")

    return attention


def expected_weak(model, x, t, context, blocks, joint, **kw):
    """The model with the reference attention at ``blocks`` (installed by forward pre/post hooks)."""
    original = dm.attention
    handles = []

    def pre(module, args, kwargs):
        dm.attention = reference_attention(N_TEXT, joint)

    def post(module, args, kwargs, out):
        dm.attention = original

    for block in blocks:
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    try:
        return run(model, x, t, context, **kw)
    finally:
        for h in handles:
            h.remove()
        dm.attention = original


@pytest.mark.parametrize("spec, joint", [("double.1", "image"), ("single.0", "image"), ("double.0,single.1", "full")])
def test_weak_forward_matches_the_float64_reference_at_the_chosen_blocks(spec, joint):
    model, x, t, c = model_and_inputs()
    hook = hook_for(model, FLUX, spec, joint)
    got = run(model, x, t, c, hook.options({}))
    blocks = [block for _, block in layers.resolve_dit(model, FLUX, spec)]
    want = expected_weak(model, x, t, c, blocks, joint)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(got, run(model, x, t, c))  # ASAG changed something
    assert dm.__dict__["attention"].__name__ == "attention"


def test_only_the_chosen_blocks_see_our_attention():
    model, x, t, c = model_and_inputs(dtype=torch.float32)
    hook = hook_for(model, FLUX, "double.1, single.0")
    seen = {}
    for stack in ("double_blocks", "single_blocks"):
        for i, block in enumerate(getattr(model, stack)):
            block.register_forward_pre_hook(
                lambda mod, args, key=(stack, i): seen.__setitem__(key, dm.attention.__name__))
    run(model, x, t, c, hook.options({}))
    assert seen == {("double_blocks", 0): "attention", ("double_blocks", 1): "asag_joint_attention",
                    ("single_blocks", 0): "asag_joint_attention", ("single_blocks", 1): "attention"}
    assert dm.attention.__name__ == "attention"


def test_off_means_the_live_options_and_the_model_are_untouched():
    model, x, t, c = model_and_inputs(dtype=torch.float32)
    theirs_calls = []

    def theirs(args, extra):
        theirs_calls.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    live = {"transformer_options": {"patches_replace": {"dit": {("double_block", 1): theirs}}}}
    snapshot = copy.copy(live["transformer_options"]["patches_replace"]["dit"])
    plain = run(model, x, t, c, live)
    hook = hook_for(model, FLUX, "double.1")
    weak_options = hook.options(live)
    assert live["transformer_options"]["patches_replace"]["dit"] == snapshot  # live options untouched
    assert weak_options["transformer_options"] is not live["transformer_options"]
    weak = run(model, x, t, c, weak_options)
    assert theirs_calls == [1, 1]  # theirs ran in the main pass and, wrapped by ours, in the weak pass
    assert torch.equal(run(model, x, t, c, live), plain)  # the main pass after a weak pass: bit-identical
    assert not torch.equal(weak, plain)


def test_an_exception_inside_the_block_leaves_nothing_patched(monkeypatch):
    model, x, t, c = model_and_inputs(dtype=torch.float32)
    hook = hook_for(model, FLUX, "double.0")
    original = dm.attention

    def boom(*args, **kwargs):
        raise RuntimeError("kernel failure")

    monkeypatch.setattr("asag_lib.hosts.dit_flux.joint_sinkhorn_attention", boom)
    with pytest.raises(RuntimeError, match="kernel failure"):
        run(model, x, t, c, hook.options({}))
    assert dm.attention is original


def test_single_blocks_only_learn_the_text_length_from_the_recorder():
    model, x, t, c = model_and_inputs()
    hook = hook_for(model, FLUX, "single.1")
    options = hook.options({})
    assert set(options["transformer_options"]["patches_replace"]["dit"]) == {("single_block", 1), ("double_block", 0)}
    run(model, x, t, c, options)
    assert hook.n_text == N_TEXT


def test_chroma_with_a_padding_mask():
    model, x, t, c = model_and_inputs(dm.IntegratedChromaTransformer2DModel, depth=1, depth_single=1)
    length = N_TEXT + 16
    mask = torch.ones(2, 1, 1, length, dtype=torch.bool)
    mask[1, ..., 3:N_TEXT] = False  # padded text of sample 1
    hook = hook_for(model, CHROMA, "middle")  # the UNet default: Chroma's early = double.0 here
    assert hook.refs == [layers.DitRef("double", 0)]
    got = run(model, x, t, c, hook.options({}), attention_mask=mask)
    original = dm.attention

    def pre(module, args, kwargs):
        dm.attention = reference_attention(N_TEXT, "image")

    h1 = model.double_blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.double_blocks[0].register_forward_hook(lambda *a, **k: setattr(dm, "attention", original),
                                                      with_kwargs=True)
    try:
        want = run(model, x, t, c, attention_mask=mask)
    finally:
        h1.remove()
        h2.remove()
        dm.attention = original
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# layer grammar on DiTs


def test_dit_presets_and_listing():
    flux = dm.IntegratedFluxTransformer2DModel(depth=3, depth_single=4)
    chroma = dm.IntegratedChromaTransformer2DModel(depth=1, depth_single=1)
    assert layers.describe_dit(layers.resolve_dit(flux, FLUX, "middle")) == "double.1"
    assert layers.describe_dit(layers.resolve_dit(flux, FLUX, "early")) == "double.1"
    assert layers.describe_dit(layers.resolve_dit(chroma, CHROMA, "middle")) == "double.0"
    assert layers.describe_dit(layers.resolve_dit(flux, FLUX, "all")) == "double.0-2, single.0-3"
    assert layers.describe_dit(layers.resolve_dit(flux, FLUX, "double.0-1; single.3, single")) == \
        "double.0-1, single.0-3"
    assert layers.describe_dit(layers.resolve_dit(flux, FLUX, "double.1-9")) == "double.1-2"
    assert layers.uses_unet_default("middle") and not layers.uses_unet_default("early")


@pytest.mark.parametrize("spec, message", [
    ("double.3", r"double\.3 does not exist in this Flux model; it has double blocks 0-2; single blocks 0-3"),
    ("single.5-9", r"single\.5-9 selects nothing"),
    ("block.0", r"has no block blocks; it has double blocks 0-2"),
    ("input.4", r"names UNet layers, but this model is a DiT \(Flux\)"),
    ("deep", r"names UNet layers"),
])
def test_dit_resolution_errors_say_what_exists(spec, message):
    flux = dm.IntegratedFluxTransformer2DModel(depth=3, depth_single=4)
    with pytest.raises(ValueError, match=message):
        layers.resolve_dit(flux, FLUX, spec)


def test_dit_items_on_a_unet_are_errors_and_syntax_is_shared():
    assert layers.validate_spec(" Double.0-4 ,single.10") == "double.0-4, single.10"
    with pytest.raises(ValueError, match="names DiT blocks"):
        layers.resolve_refs("sdxl", "double.1")
    with pytest.raises(ValueError, match="reversed"):
        layers.validate_spec("double.4-1")


# --------------------------------------------------------------------------------------------------
# Qwen-Image: heads merged, RoPE applied before the global is called, one stack of joint blocks


def qwen_reference_function(joint):
    def attention_function(q, k, v, heads, mask=None, **kwargs):
        split = [rearrange(t, "b l (h d) -> b h l d", h=heads) for t in (q, k, v)]
        out = reference(*split, N_TEXT, joint, iterations=KERNEL.iterations, tol=KERNEL.tol)
        return rearrange(out, "b h l d -> b l (h d)")

    return attention_function


@pytest.mark.parametrize("spec, joint", [("middle", "image"), ("block.0, block.2", "full")])
def test_qwen_weak_forward_matches_the_float64_reference(spec, joint):
    model, x, t, c = model_and_inputs(dm.QwenImageTransformer2DModel)
    hook = hook_for(model, QWEN, spec, joint)
    got = run(model, x, t, c, hook.options({}))
    selected = [block for _, block in layers.resolve_dit(model, QWEN, spec)]
    original = dm.attention_function
    handles = []
    for block in selected:
        handles.append(block.register_forward_pre_hook(
            lambda *a: setattr(dm, "attention_function", qwen_reference_function(joint))))
        handles.append(block.register_forward_hook(lambda *a: setattr(dm, "attention_function", original)))
    try:
        want = run(model, x, t, c)
    finally:
        for h in handles:
            h.remove()
        dm.attention_function = original
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(got, run(model, x, t, c))
    assert dm.attention_function is original
    if spec == "middle":
        assert hook.refs == [layers.DitRef("block", 1)]


def test_qwen_grammar():
    model = dm.QwenImageTransformer2DModel(depth=3)
    assert layers.describe_dit(layers.resolve_dit(model, QWEN, "all")) == "block.0-2"
    with pytest.raises(ValueError, match=r"no double blocks; it has block blocks 0-2"):
        layers.resolve_dit(model, QWEN, "double.0")


# --------------------------------------------------------------------------------------------------
# Anima: per-instance attn_op swap, image-token self-attention only (the plain kernel)


def test_anima_swap_matches_the_reference_and_restores_each_instance():
    from asag_lib.hosts.dit_swap import SwapHook, swappable
    from tests.test_sinkhorn import reference as plain_reference

    anima = layers.FAMILIES["Anima"]
    model, x, t, c = model_and_inputs(dm.Anima)
    assert swappable(model, anima)
    refs = [ref for ref, _ in layers.resolve_dit(model, anima, "middle")]
    assert refs == [layers.DitRef("block", 1)]
    hook = SwapHook(anima, refs, model, KERNEL)
    before = [b.self_attn.attn_op for b in model.blocks]
    with hook.active():
        assert model.blocks[1].self_attn.attn_op.__name__ == "asag_attn_op"
        assert model.blocks[0].self_attn.attn_op is before[0] and model.blocks[1].cross_attn.attn_op is dm.default_attn_op
        got = run(model, x, t, c)
    assert [b.self_attn.attn_op for b in model.blocks] == before
    assert "attn_op" in model.blocks[1].self_attn.__dict__  # the instance attribute the host set, put back

    def reference_op(q, k, v, transformer_options=None):
        heads = q.shape[-2]
        split = [rearrange(u.reshape(u.shape[0], -1, heads, u.shape[-1]), "b s h d -> b h s d") for u in (q, k, v)]
        out = plain_reference(*split, iterations=KERNEL.iterations, tol=KERNEL.tol)[0]
        return rearrange(out, "b h s d -> b s (h d)")

    model.blocks[1].self_attn.attn_op = reference_op
    try:
        want = run(model, x, t, c)
    finally:
        model.blocks[1].self_attn.attn_op = before[1]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(got, run(model, x, t, c))
    with pytest.raises(RuntimeError, match="boom"), hook.active():
        raise RuntimeError("boom")
    assert [b.self_attn.attn_op for b in model.blocks] == before
