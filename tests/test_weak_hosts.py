"""The weak-model parameter through the host doubles: A1111 (script, X/Y/Z, API) and Forge."""

from __future__ import annotations

import torch

from asag_lib import params, weak

FAST = {"steps": 1, "width": 64, "height": 64}  # one step already shows each weak model
BASE11 = [True, 2.0, "all", 2, 1e-3, 0.0, 1.0, "both", 0.0, "rows", "auto"]


def _args(weak_model, scale=2.0, enabled=True, sigma=2.0):
    return [enabled, scale, *BASE11[2:], weak_model, sigma, False]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True))



def _restored(infotext: str) -> dict:
    """What pasting this infotext restores (the last line's `ASAG …` fields, defaults filled by version)."""
    last = infotext.splitlines()[-1]
    fields = dict(part.split(": ", 1) for part in last.split(", ") if part.startswith("ASAG "))
    return params.from_infotext(fields)

def test_a1111_off_and_scale_zero_are_bit_identical_for_every_weak_model(a1111_host):
    host = a1111_host
    with host.without_extension():
        plain = host.txt2img(seed=3, **FAST)
    off = host.txt2img(seed=3, alwayson={"ASAG": _args("blur", enabled=False)}, **FAST)
    assert _same(plain, off) and off.infotexts == plain.infotexts
    for name in weak.NAMES:
        zero = host.txt2img(seed=3, alwayson={"ASAG": _args(name, scale=0.0)}, **FAST)
        assert _same(plain, zero), name
        assert zero.infotexts == plain.infotexts, name


def test_a1111_default_weak_model_is_todays_asag_bit_for_bit(a1111_host):
    host = a1111_host
    eleven = host.txt2img(seed=4, alwayson={"ASAG": BASE11}, **FAST)
    explicit = host.txt2img(seed=4, alwayson={"ASAG": _args("asag", sigma=10.0)}, **FAST)
    assert _same(eleven, explicit)
    assert eleven.infotexts == explicit.infotexts
    assert _restored(explicit.infotexts[0])["weak_model"] == "asag"  # the default: left out, pasted back


def test_a1111_xyz_over_the_weak_model_gives_six_different_images(a1111_host):
    host = a1111_host
    grid = host.xyz("[ASAG] Weak model", list(weak.NAMES), base={"seed": 3, **FAST},
                    alwayson={"ASAG": _args("asag")})
    images = [res.images[0] for res in grid.cell_results]
    assert len(images) == 6
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.equal(images[i], images[j]), (weak.NAMES[i], weak.NAMES[j])
    for name, res in zip(weak.NAMES, grid.cell_results, strict=True):
        text = res.infotexts[0]
        assert _restored(text)["weak_model"] == name and _restored(text)["blur_sigma"] == 2.0, text
    # the X/Y/Z cells equal the same jobs run on their own (no state leaks from cell to cell)
    alone = host.txt2img(seed=3, alwayson={"ASAG": _args("identity")}, **FAST)
    assert torch.equal(alone.images[0], images[weak.NAMES.index("identity")])


def test_a1111_random_is_reproducible_and_follows_the_seed(a1111_host):
    host = a1111_host
    a = host.txt2img(seed=5, alwayson={"ASAG": _args("random")}, **FAST)
    b = host.txt2img(seed=5, alwayson={"ASAG": _args("random")}, **FAST)
    assert _same(a, b)


def test_a1111_api_by_name_and_bad_value(a1111_host):
    host = a1111_host
    ok = host.api_txt2img({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1,
                           "alwayson_scripts": {"ASAG": {"args": [{"enabled": True, "scale": 2, "layers": "all",
                                                                   "weak_model": "blur", "blur_sigma": "inf"}]}}})
    assert "ASAG weak model: blur" in ok["info_dict"]["infotexts"][0]
    assert "ASAG blur sigma: 10000" in ok["info_dict"]["infotexts"][0]
    bad = host.api_txt2img({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1,
                            "alwayson_scripts": {"ASAG": {"args": [{"enabled": True, "weak_model": "pag"}]}}})
    text = bad["info_dict"]["infotexts"][0]
    assert "'weak_model'" in text and "'identity'" in text and "ASAG scale" not in text


def test_forge_every_weak_model_differs_and_scale_zero_is_identical(forge_host):
    engine = forge_host.make_engine("sd15")
    size = dict(height=64, width=64)
    off = forge_host.txt2img(engine, forge_host.args(), steps=1, **size)
    samples = []
    for name in weak.NAMES:
        zero = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=0.0, weak_model=name), steps=1, **size)
        assert torch.equal(off.samples, zero.samples), name
        on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, layers="input.1", weak_model=name,
                                                        blur_sigma=1.0), steps=1, **size)
        samples.append(on.samples)
        written = {k: v for k, v in on.p.extra_generation_params.items() if params.is_infotext_key(k)}
        assert params.from_infotext(written)["weak_model"] == name
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.equal(samples[i], samples[j]), (weak.NAMES[i], weak.NAMES[j])
