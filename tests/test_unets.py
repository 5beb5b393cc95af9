"""The test UNets have the hosts' documented layout (docs/hosts.md §4, §13) and run."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from tests.unets import (
    ATTN1_COUNTS,
    FAMILIES,
    LdmCrossAttention,
    SgmCrossAttention,
    build_unet,
    iter_attn1,
    latent_tokens,
    make_inputs,
)

# (input ids with attention: depth), middle depth, (output ids: depth)
EXPECTED = {
    "sd15": ({1: 1, 2: 1, 4: 1, 5: 1, 7: 1, 8: 1}, 1, {i: 1 for i in range(3, 12)}),
    "sdxl": ({4: 2, 5: 2, 7: 10, 8: 10}, 10, {0: 10, 1: 10, 2: 10, 3: 2, 4: 2, 5: 2}),
    "sdxl-refiner": ({4: 4, 5: 4, 7: 4, 8: 4}, 4, {i: 4 for i in range(3, 9)}),
}
EXPECTED["sd2"] = EXPECTED["sd15"]
CONTEXT_DIM = {"sd15": 768, "sd2": 1024, "sdxl": 2048, "sdxl-refiner": 1280}
ADM = {"sd15": None, "sd2": None, "sdxl": 2816, "sdxl-refiner": 2560}
# levels (number of downsamplings) of the input blocks that hold a Downsample, and of the output blocks
# that hold an Upsample
DOWNSAMPLE_BLOCKS = {"sd15": [3, 6, 9], "sd2": [3, 6, 9], "sdxl": [3, 6], "sdxl-refiner": [3, 6, 9]}
UPSAMPLE_BLOCKS = {"sd15": [2, 5, 8], "sd2": [2, 5, 8], "sdxl": [2, 5], "sdxl-refiner": [2, 5, 8]}


@pytest.fixture(scope="module")
def unets():
    return {f: build_unet(f) for f in FAMILIES}


def expected_paths(family):
    inputs, middle, outputs = EXPECTED[family]
    paths = [f"input_blocks.{i}.1.transformer_blocks.{j}.attn1" for i, d in inputs.items() for j in range(d)]
    paths += [f"middle_block.1.transformer_blocks.{j}.attn1" for j in range(middle)]
    paths += [f"output_blocks.{i}.1.transformer_blocks.{j}.attn1" for i, d in outputs.items() for j in range(d)]
    return paths


@pytest.mark.parametrize("family", FAMILIES)
def test_attn1_paths_and_count(unets, family):
    names = [n for n, _ in iter_attn1(unets[family])]
    assert names == expected_paths(family)
    assert len(names) == ATTN1_COUNTS[family]
    attn2 = [n for n, _ in unets[family].named_modules() if n.endswith(".attn2")]
    assert len(attn2) == ATTN1_COUNTS[family]


def test_attn1_counts_match_hosts_md():
    assert ATTN1_COUNTS == {"sd15": 16, "sd2": 16, "sdxl": 70, "sdxl-refiner": 44}
    assert {f: len(expected_paths(f)) for f in FAMILIES} == ATTN1_COUNTS


@pytest.mark.parametrize("family", FAMILIES)
def test_block_classes_and_attributes(unets, family):
    u = unets[family]
    assert type(u).__name__ == "UNetModel"
    assert u.context_dim == CONTEXT_DIM[family]
    assert u.adm_in_channels == ADM[family]
    assert u.model_channels == 32
    assert hasattr(u, "label_emb") == (ADM[family] is not None)
    assert isinstance(u.input_blocks, nn.ModuleList) and isinstance(u.output_blocks, nn.ModuleList)
    assert all(type(b).__name__ == "TimestepEmbedSequential" for b in [*u.input_blocks, *u.output_blocks])
    assert [type(m).__name__ for m in u.middle_block] == ["ResBlock", "SpatialTransformer", "ResBlock"]
    down = [i for i, b in enumerate(u.input_blocks) if any(type(c).__name__ == "Downsample" for c in b)]
    up = [i for i, b in enumerate(u.output_blocks) if any(type(c).__name__ == "Upsample" for c in b)]
    assert down == DOWNSAMPLE_BLOCKS[family]
    assert up == UPSAMPLE_BLOCKS[family]
    for i, b in enumerate(u.output_blocks):
        if i in up:  # index 2 when the block also has attention, as the real models
            assert type(b[-1]).__name__ == "Upsample"
    for name, m in u.named_modules():
        if name.endswith(".1") and type(m).__name__ == "SpatialTransformer":
            assert all(type(t).__name__ == "BasicTransformerBlock" for t in m.transformer_blocks)


@pytest.mark.parametrize("family", FAMILIES)
def test_cross_attention_host_attributes(unets, family):
    sgm = family.startswith("sdxl")
    for _, m in iter_attn1(unets[family]):
        assert type(m).__name__ == "CrossAttention"
        assert isinstance(m, SgmCrossAttention if sgm else LdmCrossAttention)
        assert not hasattr(m, "dim_head")
        for lin in (m.to_q, m.to_k, m.to_v):
            assert isinstance(lin, nn.Linear) and lin.bias is None
        assert isinstance(m.to_out, nn.Sequential)
        assert [type(x) for x in m.to_out] == [nn.Linear, nn.Dropout]
        assert m.heads > 1
        dim_head = m.to_q.out_features // m.heads
        assert m.scale == dim_head ** -0.5
        assert hasattr(m, "backend") == sgm


def test_forward_signatures():
    ldm = list(inspect.signature(LdmCrossAttention.forward).parameters)
    sgm = list(inspect.signature(SgmCrossAttention.forward).parameters)
    assert ldm == ["self", "x", "context", "mask"]
    assert sgm == ["self", "x", "context", "mask", "additional_tokens", "n_times_crossframe_attn_in_self"]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shape_and_determinism(unets, family):
    u = unets[family]
    args = make_inputs(u, batch=2, h=16, w=16)
    with torch.no_grad():
        out = u(**args)
        # determinism checked at a narrower width to keep the test cheap
        small = [build_unet(family, model_channels=8, seed=s) for s in (0, 0, 1)]
        a, b, c = (m(**make_inputs(m, batch=1, h=8, w=8)) for m in small)
    assert out.shape == (2, 4, 16, 16)
    assert torch.isfinite(out).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_build_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_unet("sd15")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("hw", [(13, 11), (8, 8), (9, 16)])
def test_token_counts_seen_by_attn1_round_up(unets, family, hw):
    """Each attn1 sees the tokens of its level; odd sizes round up at every downsampling."""
    u = unets[family]
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, a[0].shape[1]))
             for n, m in iter_attn1(u)]
    try:
        with torch.no_grad():
            out = u(**make_inputs(u, batch=1, h=hw[0], w=hw[1]))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (1, 4, *hw)
    levels = {"input": {}, "output": {}}
    lv = 0
    for i, b in enumerate(u.input_blocks):
        levels["input"][i] = lv
        lv += any(type(c).__name__ == "Downsample" for c in b)
    mid = lv
    for i, b in enumerate(u.output_blocks):
        levels["output"][i] = lv
        lv -= any(type(c).__name__ == "Upsample" for c in b)
    assert len(seen) == ATTN1_COUNTS[family]
    for name, n in seen.items():
        parts = name.split(".")
        level = mid if parts[0] == "middle_block" else levels[parts[0].split("_")[0]][int(parts[1])]
        assert n == latent_tokens(*hw, level), name


def test_latent_tokens():
    assert latent_tokens(128, 128, 1) == 4096
    assert latent_tokens(128, 128, 2) == 1024
    assert latent_tokens(125, 83, 1) == 63 * 42
    assert latent_tokens(125, 83, 3) == 16 * 11


def test_self_and_cross_attention_calls(unets):
    """attn1 gets context=None (self-attention); attn2 the text context; sgm passes the extra kwargs."""
    for family in ("sd15", "sdxl"):
        u = unets[family]
        calls = {}
        blk = u.middle_block[1].transformer_blocks[0]

        def record(name, fn, calls=calls):
            def wrapper(*args, **kwargs):
                calls[name] = kwargs
                return fn(*args, **kwargs)
            return wrapper

        blk.attn1.forward = record("attn1", blk.attn1.forward)
        blk.attn2.forward = record("attn2", blk.attn2.forward)
        try:
            with torch.no_grad():
                u(**make_inputs(u, batch=1, h=8, w=8, context_len=5))
        finally:
            del blk.attn1.forward, blk.attn2.forward
        assert calls["attn1"]["context"] is None
        assert calls["attn2"]["context"].shape == (1, 5, u.context_dim)
        if family == "sdxl":
            assert calls["attn1"]["additional_tokens"] is None
            assert calls["attn1"]["n_times_crossframe_attn_in_self"] == 0
        else:
            assert "additional_tokens" not in calls["attn1"]


def test_instance_forward_patch_changes_output(unets):
    u = unets["sdxl"]
    args = make_inputs(u, batch=1, h=8, w=8)
    attn = u.middle_block[1].transformer_blocks[3].attn1
    with torch.no_grad():
        base = u(**args)
        attn.forward = lambda x, context=None, mask=None, **kw: torch.zeros_like(x)
        try:
            patched = u(**args)
        finally:
            del attn.forward
        restored = u(**args)
    assert not torch.allclose(base, patched)
    assert torch.equal(base, restored)


def test_class_forward_swap_reaches_every_instance(unets, monkeypatch):
    """Hosts swap CrossAttention.forward at class level (A1111's optimisation switch)."""
    u = unets["sd15"]
    count = {"n": 0}
    original = LdmCrossAttention.forward

    def counting(self, x, context=None, mask=None, **kwargs):
        count["n"] += 1
        return original(self, x, context, mask)

    monkeypatch.setattr(LdmCrossAttention, "forward", counting)
    with torch.no_grad():
        u(**make_inputs(u, batch=1, h=8, w=8))
    assert count["n"] == 2 * ATTN1_COUNTS["sd15"]


def test_instance_level_underscore_forward_patch(unets):
    """ControlNet reference-only replaces BasicTransformerBlock._forward on the instance."""
    u = unets["sdxl"]
    blk = u.input_blocks[7][1].transformer_blocks[0]
    hit = []
    orig = blk._forward

    def hacked(x, context=None, **kwargs):
        hit.append(x.shape)
        return orig(x, context, **kwargs)

    blk._forward = hacked
    try:
        with torch.no_grad():
            u(**make_inputs(u, batch=1, h=8, w=8))
    finally:
        del blk._forward
    assert hit == [torch.Size([1, 4, 128])]


def test_attn1_with_longer_context_and_sgm_kwargs():
    """ControlNet reference passes more K/V tokens than queries; sgm additional tokens are stripped."""
    torch.manual_seed(0)
    ldm = LdmCrossAttention(16, heads=2, dim_head=8)
    sgm = SgmCrossAttention(16, heads=2, dim_head=8)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    assert ldm(x, context=ctx).shape == (2, 5, 16)
    assert sgm(x, context=ctx).shape == (2, 5, 16)
    extra = torch.randn(2, 3, 16)
    assert sgm(x, additional_tokens=extra).shape == (2, 5, 16)
    assert not torch.allclose(sgm(x, additional_tokens=extra), sgm(x))
    xx = torch.randn(4, 5, 16)
    cross = sgm(xx, n_times_crossframe_attn_in_self=2)
    assert torch.allclose(cross[0], sgm(xx[:1])[0], atol=1e-6)
    assert not torch.allclose(cross[1], sgm(xx[1:2])[0])


def test_y_is_used_for_sdxl(unets):
    u = unets["sdxl"]
    args = make_inputs(u, batch=1, h=8, w=8)
    with torch.no_grad():
        a = u(**args)
        b = u(**{**args, "y": args["y"] + 1})
    assert not torch.allclose(a, b)


def test_dtype_bfloat16():
    u = build_unet("sd15", dtype=torch.bfloat16)
    with torch.no_grad():
        out = u(**make_inputs(u, batch=1, h=8, w=8))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 4, 8, 8)


def test_widths_are_small(unets):
    """Scaled down: level widths 32/64/128 and 8-channel heads (sd15: 8 heads), so forwards take ms."""
    for family, u in unets.items():
        st = [m for m in u.modules() if type(m).__name__ == "SpatialTransformer"]
        assert sorted({m.in_channels for m in st}) == ([32, 64, 128] if family in ("sd15", "sd2") else [64, 128])
        assert {m.num_groups for m in u.modules() if isinstance(m, nn.GroupNorm)} == {32}
        for _, attn in iter_attn1(u):
            dim_head = attn.to_q.out_features // attn.heads
            assert dim_head == (attn.to_q.out_features // 8 if family == "sd15" else 8)
        assert sum(p.numel() for p in u.parameters()) < 60_000_000
