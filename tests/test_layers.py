"""Layer-spec grammar, presets, resolution against real module trees, describe and token counts."""

from __future__ import annotations

import dataclasses
import math

import pytest
from torch import nn

from asag_lib import layers
from asag_lib.layers import (
    FAMILY_LAYOUTS,
    PRESETS,
    LayerRef,
    describe,
    detect_family,
    layout_of,
    parse_spec,
    preset_names,
    preset_spec,
    resolve,
    resolve_refs,
    token_counts,
    validate_spec,
)
from tests.unets import FAMILIES, build_unet, iter_attn1


@pytest.fixture(scope="module")
def unets():
    return {f: build_unet(f) for f in FAMILIES}


def triples(spec, family="sdxl"):
    return [r.forge_key for r in resolve_refs(family, spec)]


def block(name, bid, indices):
    return [(name, bid, j) for j in indices]


# --------------------------------------------------------------------------------------------------
# LayerRef


def test_layerref_paths_keys_and_str():
    r = LayerRef("input", 7, 3)
    assert r.module_path == "input_blocks.7.1.transformer_blocks.3.attn1"
    assert r.forge_key == ("input", 7, 3)
    assert str(r) == "input.7.3"
    m = LayerRef("middle", 0, 0)
    assert m.module_path == "middle_block.1.transformer_blocks.0.attn1"
    assert m.forge_key == ("middle", 0, 0)
    assert str(m) == "middle.0"
    assert LayerRef("output", 10, 0).module_path == "output_blocks.10.1.transformer_blocks.0.attn1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.index = 4
    assert {LayerRef("input", 7, 3), LayerRef("input", 7, 3)} == {r}


@pytest.mark.parametrize("args", [("mid", 0, 0), ("middle", 1, 0), ("input", -1, 0), ("output", 0, -2)])
def test_layerref_rejects_invalid(args):
    with pytest.raises(ValueError):
        LayerRef(*args)


def test_str_round_trips_through_grammar():
    for ref in FAMILY_LAYOUTS["sdxl"].refs():
        assert resolve_refs("sdxl", str(ref)) == [ref]


# --------------------------------------------------------------------------------------------------
# grammar: valid specs (SDXL base unless noted)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("input.7", block("input", 7, range(10))),
        ("input.4", block("input", 4, range(2))),
        ("input.7.3", [("input", 7, 3)]),
        ("output.0.3", [("output", 0, 3)]),
        ("input.7-8", block("input", 7, range(10)) + block("input", 8, range(10))),
        ("output.0.0-4,middle", block("middle", 0, range(10)) + block("output", 0, range(5))),
        ("middle", block("middle", 0, range(10))),
        ("middle.3", [("middle", 0, 3)]),
        ("middle.0-4", block("middle", 0, range(5))),
        ("input.4-8.1", [("input", 4, 1), ("input", 5, 1), ("input", 7, 1), ("input", 8, 1)]),
        ("input.4-8", block("input", 4, range(2)) + block("input", 5, range(2))
         + block("input", 7, range(10)) + block("input", 8, range(10))),
        ("output.0-5.0-9", [k for i in range(6) for k in block("output", i, range(10 if i < 3 else 2))]),
        ("output.2-3.1-5", [*block("output", 2, range(1, 6)), ("output", 3, 1)]),
        ("input", [k for i, d in ((4, 2), (5, 2), (7, 10), (8, 10)) for k in block("input", i, range(d))]),
        ("output.5,input.5", block("input", 5, range(2)) + block("output", 5, range(2))),
        # shorthand: ordinals among attention-bearing blocks
        ("m0", block("middle", 0, range(10))),
        ("m0.0", [("middle", 0, 0)]),
        ("d0", block("input", 4, range(2))),
        ("d2.2-9", block("input", 7, range(2, 10))),
        ("d3.9", [("input", 8, 9)]),
        ("u0", block("output", 0, range(10))),
        ("u3", block("output", 3, range(2))),
        ("u5.1", [("output", 5, 1)]),
        ("d0-d3", [k for i, d in ((4, 2), (5, 2), (7, 10), (8, 10)) for k in block("input", i, range(d))]),
        ("d0-3", [k for i, d in ((4, 2), (5, 2), (7, 10), (8, 10)) for k in block("input", i, range(d))]),
        ("u1-u2.0", [("output", 1, 0), ("output", 2, 0)]),
        # case and whitespace; ';' as separator; duplicates merged; UNet order
        ("  Input.7.3 ,  MIDDLE.1 ", [("input", 7, 3), ("middle", 0, 1)]),
        ("D2 . 3 ; m0 . 0", [("input", 7, 3), ("middle", 0, 0)]),
        ("middle.2, middle, middle.0-1, m0.5", block("middle", 0, range(10))),
        ("output.0.3, input.7.3", [("input", 7, 3), ("output", 0, 3)]),
        ("input.07.03", [("input", 7, 3)]),
    ],
)
def test_valid_specs_sdxl(spec, expected):
    assert triples(spec) == expected


def test_shorthand_ordinals_per_family():
    assert triples("d0-d3", "sdxl") == triples("input.4, input.5, input.7, input.8", "sdxl")
    assert [triples(f"u{i}.0", "sdxl")[0][1] for i in range(6)] == [0, 1, 2, 3, 4, 5]
    assert [triples(f"d{i}", "sd15")[0][1] for i in range(6)] == [1, 2, 4, 5, 7, 8]
    assert [triples(f"u{i}", "sd15")[0][1] for i in range(9)] == list(range(3, 12))
    assert [triples(f"d{i}.0", "sdxl-refiner")[0][1] for i in range(4)] == [4, 5, 7, 8]
    assert [triples(f"u{i}.0", "sdxl-refiner")[0][1] for i in range(6)] == [3, 4, 5, 6, 7, 8]
    assert triples("m0", "sd15") == [("middle", 0, 0)]
    assert triples("m0", "sdxl-refiner") == block("middle", 0, range(4))


def test_one_does_not_match_ten():
    """SD1.5 output.1 does not exist; output.10 does; d1 is input 2, d10 does not exist."""
    assert triples("output.10", "sd15") == [("output", 10, 0)]
    assert triples("output.11", "sd15") == [("output", 11, 0)]
    with pytest.raises(ValueError, match=r"output\.1 does not exist"):
        triples("output.1", "sd15")
    assert triples("d1", "sd15") == [("input", 2, 0)]
    with pytest.raises(ValueError, match=r"d10 does not exist"):
        triples("d10", "sd15")
    assert triples("u1", "sd15") == [("output", 4, 0)]
    # SDXL: middle.1 is one transformer, not 1 and 10..
    assert triples("middle.1") == [("middle", 0, 1)]
    assert triples("input.7.1") == [("input", 7, 1)]


# --------------------------------------------------------------------------------------------------
# grammar: errors


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("", ["''", "empty", "accepted forms"]),
        ("   ", ["empty", "accepted forms"]),
        ("input.", ["'input.'", "cannot parse", "accepted forms", "middle.K"]),
        ("input.8-7", ["'input.8-7'", "reversed", "7-8"]),
        ("middle.5-2", ["reversed"]),
        ("d3-d1", ["reversed"]),
        ("x3", ["'x3'", "cannot parse", "accepted forms", "dI, uI, m0"]),
        ("input.-1", ["'input.-1'", "negative"]),
        ("d-1", ["negative"]),
        ("middle.0.3", ["middle.3", "only a transformer index"]),
        ("input.7,,middle", ["empty item"]),
        ("input.7,", ["empty item"]),
        ("d0-u3", ["cannot parse"]),
        ("inputs.7", ["cannot parse"]),
        ("input.7.3.1", ["cannot parse"]),
        ("middle-last", ["cannot parse"]),
    ],
)
def test_malformed_specs(spec, fragments):
    with pytest.raises(ValueError) as info:
        parse_spec(spec)
    msg = str(info.value)
    assert msg.startswith("invalid layer spec")
    for frag in fragments:
        assert frag in msg, (frag, msg)
    # resolution reports the same syntax error
    with pytest.raises(ValueError):
        resolve_refs("sdxl", spec)


def test_non_string_spec():
    with pytest.raises(ValueError, match="expected a string"):
        parse_spec(None)


@pytest.mark.parametrize(
    ("spec", "family", "fragments"),
    [
        ("input.9", "sdxl", ["'input.9'", "input.9 does not exist in this UNet",
                             "input blocks with attention: 4, 5, 7, 8"]),
        ("input.6", "sdxl", ["input.6 does not exist", "4, 5, 7, 8"]),
        ("input.7.10", "sdxl", ["input.7.10 does not exist", "input block 7 has transformers 0-9"]),
        ("input.4.2", "sdxl", ["input.4.2 does not exist", "input block 4 has transformers 0-1"]),
        ("output.0-5.5", "sdxl", ["output.3.5 does not exist", "output block 3 has transformers 0-1"]),
        ("output.6", "sdxl", ["output.6 does not exist", "output blocks with attention: 0, 1, 2, 3, 4, 5"]),
        ("output.9-20", "sdxl", ["output.9-20 selects nothing"]),
        ("middle.10", "sdxl", ["middle.10 does not exist", "the middle block has transformers 0-9"]),
        ("middle.4", "sdxl-refiner", ["middle.4 does not exist", "transformers 0-3"]),
        ("middle.1", "sd15", ["middle.1 does not exist", "transformers 0"]),
        ("input.7.9", "sdxl-refiner", ["input.7.9 does not exist", "transformers 0-3"]),
        ("output.0", "sdxl-refiner", ["output.0 does not exist", "3, 4, 5, 6, 7, 8"]),
        ("d4", "sdxl", ["d4 does not exist", "d0=input.4", "d3=input.8"]),
        ("u6", "sdxl", ["u6 does not exist", "u5=output.5"]),
        ("u9", "sd15", ["u9 does not exist", "u8=output.11"]),
        ("m1", "sdxl", ["m1 does not exist", "m0=middle"]),
        ("d2.10", "sdxl", ["d2.10 does not exist", "input block 7 has transformers 0-9"]),
        ("middle, input.9", "sdxl", ["'middle, input.9'", "input.9 does not exist"]),
    ],
)
def test_missing_layers_name_spec_and_list_what_exists(spec, family, fragments):
    with pytest.raises(ValueError) as info:
        resolve_refs(family, spec)
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


def test_validate_spec_normalises_without_unet():
    assert validate_spec("  Input.7 ; MIDDLE ") == "input.7, middle"
    assert validate_spec("input.9") == "input.9"  # existence is checked at resolution
    with pytest.raises(ValueError, match="cannot parse"):
        validate_spec("foo")


# --------------------------------------------------------------------------------------------------
# presets

PRESET_COUNTS = {
    "sd15": {"middle": 1, "middle-first": 1, "deep": 5, "deep-middle": 6, "outputs": 9, "all": 16},
    "sdxl": {"middle": 10, "middle-first": 1, "deep": 50, "deep-middle": 60, "outputs": 36, "all": 70},
    "sdxl-refiner": {"middle": 4, "middle-first": 1, "deep": 20, "deep-middle": 24, "outputs": 24, "all": 44},
}


def test_preset_names():
    names = preset_names()
    assert names[0] == layers.DEFAULT_PRESET == "middle"
    assert set(names) == {"middle", "middle-first", "deep", "deep-middle", "outputs", "all"}
    assert set(layers.PRESET_HELP) == set(names)


@pytest.mark.parametrize("family", FAMILIES)
def test_presets_resolve_to_documented_counts(unets, family):
    fam = "sd15" if family == "sd2" else family
    for name, count in PRESET_COUNTS[fam].items():
        got = resolve(unets[family], name)
        assert len(got) == count, name
        # the per-family table says the same thing as the structural resolution
        assert [r for r, _ in got] == resolve_refs(family, preset_spec(name, family)), name


def test_preset_contents():
    assert triples("middle-first") == [("middle", 0, 0)]
    assert {(b, i) for b, i, _ in triples("deep")} == {("input", 7), ("input", 8), ("output", 0), ("output", 1),
                                                       ("output", 2)}
    assert {(b, i) for b, i, _ in triples("deep", "sd15")} == {("input", 7), ("input", 8), ("output", 3),
                                                               ("output", 4), ("output", 5)}
    assert {(b, i) for b, i, _ in triples("deep", "sdxl-refiner")} == {
        ("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)}
    assert triples("deep-middle") == sorted(set(triples("deep") + triples("middle")),
                                            key=lambda t: LayerRef(*t).sort_key)
    assert triples("outputs") == triples("output")
    assert triples("all") == triples("input, middle, output")
    assert preset_spec("middle", "sdxl") == "middle.0-9"
    assert preset_spec("Middle", "sd2") == "middle.0"
    assert preset_spec("middle", "sdxl-refiner") == "middle.0-3"
    with pytest.raises(ValueError, match="unknown layer preset 'nope'; presets: middle"):
        preset_spec("nope", "sdxl")
    with pytest.raises(ValueError, match="no preset table for model family 'flux'"):
        preset_spec("middle", "flux")


def test_presets_table_covers_every_family():
    for name, per_family in PRESETS.items():
        assert set(per_family) == {"sd15", "sdxl", "sdxl-refiner"}, name


# --------------------------------------------------------------------------------------------------
# resolution against module trees


@pytest.mark.parametrize("family", FAMILIES)
def test_resolve_all_returns_the_modules_in_unet_order(unets, family):
    u = unets[family]
    got = resolve(u, "all")
    expected = list(iter_attn1(u))
    assert [r.module_path for r, _ in got] == [n for n, _ in expected]
    assert all(m is e for (_, m), (_, e) in zip(got, expected, strict=True))


def test_resolve_identity_at_documented_paths(unets):
    u = unets["sdxl"]
    got = resolve(u, "input.7.3, middle.0, output.0-2.9")
    named = dict(u.named_modules())
    assert [r.module_path for r, _ in got] == [
        "input_blocks.7.1.transformer_blocks.3.attn1",
        "middle_block.1.transformer_blocks.0.attn1",
        "output_blocks.0.1.transformer_blocks.9.attn1",
        "output_blocks.1.1.transformer_blocks.9.attn1",
        "output_blocks.2.1.transformer_blocks.9.attn1",
    ]
    for ref, module in got:
        assert module is named[ref.module_path]
    assert got[0][1] is u.input_blocks[7][1].transformer_blocks[3].attn1
    assert got[1][1] is u.middle_block[1].transformer_blocks[0].attn1


def test_resolve_dedupes_and_orders(unets):
    u = unets["sd15"]
    got = resolve(u, "output.11, d0, m0, u8, input.1, middle")
    assert [str(r) for r, _ in got] == ["input.1.0", "middle.0", "output.11.0"]
    assert len({id(m) for _, m in got}) == 3


def test_resolve_accepts_wrappers(unets):
    u = unets["sdxl"]

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = u

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

    assert [m for _, m in resolve(Wrapper(), "middle")] == [m for _, m in resolve(u, "middle")]
    with pytest.raises(ValueError, match="not a UNet"):
        resolve(nn.Linear(2, 2), "middle")


class _Seq(nn.Sequential):
    """A foreign block container (Forge-like): only the names matter."""


class _Attn(nn.Module):
    pass


class _TB(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn1 = _Attn()
        self.attn2 = _Attn()


class _ST(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([_TB() for _ in range(depth)])


class Downsample(nn.Module):
    pass


class Upsample(nn.Module):
    pass


def _foreign_unet():
    """A tree with the hosts' names but none of the test UNet classes (like Forge's IntegratedUNet)."""
    root = nn.Module()
    root.input_blocks = nn.ModuleList([
        _Seq(nn.Identity()),
        _Seq(nn.Identity(), _ST(2)),
        _Seq(Downsample()),
        _Seq(nn.Identity(), _ST(3)),
    ])
    root.middle_block = _Seq(nn.Identity(), _ST(5), nn.Identity())
    root.output_blocks = nn.ModuleList([
        _Seq(nn.Identity(), _ST(3), Upsample()),
        _Seq(nn.Identity()),
        _Seq(nn.Identity(), _ST(1)),
    ])
    return root


def test_resolve_on_a_foreign_tree():
    root = _foreign_unet()
    assert detect_family(root) == "unknown"
    refs = [r for r, _ in resolve(root, "all")]
    assert [str(r) for r in refs] == ["input.1.0", "input.1.1", "input.3.0", "input.3.1", "input.3.2",
                                      "middle.0", "middle.1", "middle.2", "middle.3", "middle.4",
                                      "output.0.0", "output.0.1", "output.0.2", "output.2.0"]
    got = resolve(root, "d1.2, u1, middle.4")
    assert got[0][1] is root.input_blocks[3][1].transformer_blocks[2].attn1
    assert got[1][1] is root.middle_block[1].transformer_blocks[4].attn1
    assert got[2][1] is root.output_blocks[2][1].transformer_blocks[0].attn1
    # deep = the lowest-resolution non-middle level (input 3 and output 0, after one downsample)
    assert describe(resolve(root, "deep")) == "input.3.0-2, output.0.0-2"
    assert token_counts(root, resolve(root, "input.1.0, input.3.0, middle.0, output.0.0, output.2.0"), 9, 7) == {
        LayerRef("input", 1, 0): 63, LayerRef("input", 3, 0): 20, LayerRef("middle", 0, 0): 20,
        LayerRef("output", 0, 0): 20, LayerRef("output", 2, 0): 63}


# --------------------------------------------------------------------------------------------------
# detect_family, describe


def test_detect_family(unets):
    assert {f: detect_family(u) for f, u in unets.items()} == {
        "sd15": "sd15", "sd2": "sd15", "sdxl": "sdxl", "sdxl-refiner": "sdxl-refiner"}
    for family, layout in FAMILY_LAYOUTS.items():
        assert layout_of(unets[family]) == layout


@pytest.mark.parametrize(
    ("spec", "family", "text"),
    [
        ("middle", "sdxl", "middle.0-9"),
        ("input.7, middle", "sdxl", "input.7.0-9, middle.0-9"),
        ("input.7-8, middle", "sdxl", "input.7-8.0-9, middle.0-9"),
        ("middle.0", "sdxl", "middle.0"),
        ("middle.0, middle.2-3, middle.9", "sdxl", "middle.0, middle.2-3, middle.9"),
        ("all", "sd15", "input.1-2.0, input.4-5.0, input.7-8.0, middle.0, output.3-11.0"),
        ("all", "sdxl", "input.4-5.0-1, input.7-8.0-9, middle.0-9, output.0-2.0-9, output.3-5.0-1"),
        ("output.2.0-9, output.3.0-1", "sdxl", "output.2.0-9, output.3.0-1"),
        ("input.5, input.7", "sdxl", "input.5.0-1, input.7.0-9"),
    ],
)
def test_describe(spec, family, text):
    refs = resolve_refs(family, spec)
    assert describe(refs) == text
    assert resolve_refs(family, describe(refs)) == refs  # round trip


def test_describe_accepts_resolve_output_and_empty(unets):
    assert describe(resolve(unets["sdxl"], "m0")) == "middle.0-9"
    assert describe([]) == "none"
    assert describe(resolve_refs("sdxl", "input.7, middle"), sep="; ") == "input.7.0-9; middle.0-9"
    # non-adjacent blocks are never merged into a range (input.5-7 would mean something else)
    assert "input.5-7" not in describe(resolve_refs("sd15", "input.5, input.7"))


# --------------------------------------------------------------------------------------------------
# token counts


def test_token_counts_sdxl_1024(unets):
    u = unets["sdxl"]
    counts = token_counts(u, resolve(u, "all"), 128, 128)
    by_block = {(r.block, r.block_id): n for r, n in counts.items()}
    assert by_block[("input", 4)] == by_block[("input", 5)] == 4096
    assert by_block[("input", 7)] == by_block[("input", 8)] == 1024
    assert by_block[("middle", 0)] == 1024
    assert [by_block[("output", i)] for i in range(6)] == [1024] * 3 + [4096] * 3
    assert len(counts) == 70


def test_token_counts_refiner_and_sd15(unets):
    r = token_counts(unets["sdxl-refiner"], resolve_refs("sdxl-refiner", "input.4.0, input.7.0, middle.0, "
                                                         "output.3.0, output.8.0"), 128, 128)
    assert list(r.values()) == [4096, 1024, 256, 1024, 4096]
    s = token_counts(unets["sd15"], resolve_refs("sd15", "input.1, input.4, input.7, middle, output.3, output.11"),
                     64, 64)
    assert list(s.values()) == [4096, 1024, 256, 64, 256, 4096]


@pytest.mark.parametrize(("h", "w"), [(125, 83), (13, 11), (104, 152), (1, 1)])
def test_token_counts_odd_sizes_round_up(unets, h, w):
    u = unets["sdxl"]
    counts = token_counts(u, resolve_refs(u, "input.4.0, middle.0, output.5.0"), h, w)
    h2, w2 = math.ceil(h / 2), math.ceil(w / 2)
    ds2, ds4 = h2 * w2, math.ceil(h2 / 2) * math.ceil(w2 / 2)
    assert list(counts.values()) == [ds2, ds4, ds2]
    if (h, w) == (125, 83):
        assert list(counts.values()) == [63 * 42, 32 * 21, 63 * 42]
    if (h, w) == (104, 152):  # 832x1216
        assert list(counts.values()) == [3952, 988, 3952]


def test_token_counts_unknown_layer(unets):
    with pytest.raises(ValueError, match=r"input\.7\.4 does not exist"):
        token_counts(unets["sdxl-refiner"], [LayerRef("input", 7, 3), LayerRef("input", 7, 4)], 8, 8)
