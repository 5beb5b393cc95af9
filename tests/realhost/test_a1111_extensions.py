"""ASAG beside the third-party extensions users run with guidance, in a real A1111 1.10.1.

Needs ASAG_A1111_EXTRAS: a folder holding clones of the extensions (install_extras.py makes it; the
commits are pinned there). Both servers of the pair load the same extras; only ASAG differs. Script
args are built from the host's /sdapi/v1/script-info (each extension's UI defaults), with the few
controls a case needs set by label, so a case does not depend on an extension's argument count.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.realhost.conftest import host_dir
from tests.realhost.harness import Server
from tests.realhost.jobs import SD15, assert_ok, base, compare
from tests.realhost.tiny_lora import make_tiny_lora


def script_args(server: Server, title: str, settings: dict[tuple[str, int], Any]) -> list[Any]:
    """The script's UI defaults with settings[(label, k)] put on the k-th control with that label."""
    code, scripts = server.call("/sdapi/v1/script-info")
    assert code == 200, scripts
    found = [s for s in scripts if s["name"] == title.lower() and not s["is_img2img"]]
    assert found, f"script {title!r} is not loaded: {sorted(s['name'] for s in scripts)}"
    args = found[0]["args"]
    values = [a.get("value") for a in args]
    for (label, k), value in settings.items():
        hits = [i for i, a in enumerate(args) if a.get("label") == label]
        assert len(hits) > k, f"{title}: no control #{k} labelled {label!r}: {[a.get('label') for a in args]}"
        values[hits[k]] = value
    return values


def _scripts(payload: dict[str, Any], title: str, args: list[Any]) -> dict[str, Any]:
    payload.setdefault("alwayson_scripts", {})[title] = {"args": args}
    return payload


@pytest.fixture(scope="module")
def lora_name(hosts_extras) -> str:
    """A tiny random LoRA for the tiny SD1.5, in a --lora-dir of the test's own (the servers of this
    module are started with it, see conftest) -- or written here and picked up by a refresh."""
    asag, bare = hosts_extras
    for server in (asag, bare):
        folder = server.data_dir / "Lora"
        folder.mkdir(exist_ok=True)
        make_tiny_lora(host_dir() / "webui" / "models" / "Stable-diffusion" / SD15, folder / "asag_tiny_lora.safetensors")
        code, _ = server.call("/sdapi/v1/refresh-loras", {})
        assert code == 200
    return "asag_tiny_lora"


def test_plain_with_extras(hosts_extras) -> None:
    asag, bare = hosts_extras
    assert_ok(compare("extras installed, all off: sdxl", asag, bare, base()))


def test_dynamic_thresholding(hosts_extras) -> None:
    asag, bare = hosts_extras
    args = script_args(asag, "Dynamic Thresholding (CFG Scale Fix)", {
        ("Enable Dynamic Thresholding (CFG Scale Fix)", 0): True, ("Mimic CFG Scale", 0): 5.0})
    payload = _scripts(base(cfg_scale=12), "Dynamic Thresholding (CFG Scale Fix)", args)
    assert_ok(compare("Dynamic Thresholding (mimic 5, cfg 12)", asag, bare, payload))


@pytest.mark.parametrize("calcmode", ["Attention", "Latent"])
def test_regional_prompter(hosts_extras, calcmode: str) -> None:
    asag, bare = hosts_extras
    args = [True, False, "Matrix", "Vertical", "Mask", "Prompt", "1,1", "", False, False, False, calcmode,
            False, "0", "0", "0", ""]
    payload = _scripts(base(size=128, prompt="a red cube BREAK a blue sphere"), "Regional Prompter", args)
    assert_ok(compare(f"Regional Prompter (Matrix, 2 regions, {calcmode})", asag, bare, payload))


@pytest.mark.parametrize("method", ["MultiDiffusion", "Mixture of Diffusers"])
def test_tiled_diffusion(hosts_extras, method: str) -> None:
    asag, bare = hosts_extras
    args = script_args(asag, "Tiled Diffusion", {
        ("Method", 0): method, ("Latent tile width", 0): 16, ("Latent tile height", 0): 16,
        ("Latent tile overlap", 0): 8, ("Latent tile batch size", 0): 2})
    args[0] = True  # 'enabled' (an InputAccordion in A1111 >= 1.7, the script's first input)
    payload = _scripts(base(size=256), "Tiled Diffusion", args)
    assert_ok(compare(f"Tiled Diffusion ({method}, 16x16 latent tiles, overlap 8) sdxl 256x256", asag, bare, payload))


def test_lora(hosts_extras, lora_name: str) -> None:
    asag, bare = hosts_extras
    payload = base(SD15, 128, prompt=f"a red cube on a table <lora:{lora_name}:1>")
    assert_ok(compare("built-in LoRA (tiny random LoRA, sd15)", asag, bare, payload))


def test_lora_block_weight(hosts_extras, lora_name: str) -> None:
    asag, bare = hosts_extras
    args = script_args(asag, "LoRA Block Weight", {("Active", 0): True})
    weights = "1,0,0,0,0,1,1,1,1,1,1,1,1,1,1,1,1"
    payload = _scripts(base(SD15, 128, prompt=f"a red cube on a table <lora:{lora_name}:1:lbw={weights}>"),
                       "LoRA Block Weight", args)
    assert_ok(compare("LoRA Block Weight (lbw, 17 weights, sd15)", asag, bare, payload))


@pytest.mark.parametrize("model", ["sdxl", "sd15"])
def test_incantations_pag_and_seg(hosts_extras, model: str) -> None:
    asag, bare = hosts_extras
    args = script_args(asag, "Incantations", {
        ("Active", 0): True,  # SEG (the first submodule)
        ("Active", 2): True,  # PAG (after SEG and S-CFG)
        ("PAG Scale", 0): 2.0})
    payload = base() if model == "sdxl" else base(SD15, 128)
    payload = _scripts(payload, "Incantations", args)
    assert_ok(compare(f"incantations PAG 2 + SEG, {model}", asag, bare, payload))
