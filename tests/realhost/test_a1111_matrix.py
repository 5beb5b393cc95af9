"""The base configuration matrix of issue 9 in a real A1111 1.10.1 (+ ControlNet 1.1.455), via the API.

Each case runs the five-job comparison of `jobs.compare` (before / off / on / after on the server with
ASAG, and the same job on a server without it). Sizes: SDXL 64×64 (its middle block sees 2×2 tokens),
SD1.5 128×128 (its middle block sees 1 token at 64×64, where every attention returns V); 4 steps.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.realhost.jobs import (
    LONG_PROMPT,
    SD15,
    assert_ok,
    base,
    cn_unit,
    compare,
    mask,
    picture,
)

CN_MODEL = "tiny_sdxl_controlnet"


def _img2img(checkpoint: str, size: int, inpaint: bool, **extra: Any) -> dict[str, Any]:
    payload = base(checkpoint, size, init_images=[picture(size)], denoising_strength=0.6, **extra)
    if inpaint:
        payload.update(mask=mask(size), mask_blur=0, inpainting_fill=1, inpaint_full_res=False)
    return payload


def _controlnet(units: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return base(alwayson_scripts={"controlnet": {"args": units}}, **extra)


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sdxl": ("txt2img", base()),
    "sd15": ("txt2img", base(SD15, 128)),
    "sdxl+refiner(sd15 at 0.5)": ("txt2img", base(refiner_checkpoint=SD15, refiner_switch_at=0.5)),
    "sdxl hires fix (latent x2, 2 steps)": ("txt2img", base(enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                                                            hr_second_pass_steps=2, denoising_strength=0.6)),
    "sd15 hires fix (latent x2, 2 steps)": ("txt2img", base(SD15, 128, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                                                            hr_second_pass_steps=2, denoising_strength=0.6)),
    "sdxl img2img": ("img2img", _img2img("tiny_sdxl.safetensors", 64, False)),
    "sdxl inpaint (mask)": ("img2img", _img2img("tiny_sdxl.safetensors", 64, True)),
    "sd15 img2img": ("img2img", _img2img(SD15, 128, False)),
    "sd15 inpaint (mask)": ("img2img", _img2img(SD15, 128, True)),
    "sdxl batch size 2": ("txt2img", base(batch_size=2)),
    "sdxl batch count 2": ("txt2img", base(n_iter=2)),
    "sd15 batch size 2": ("txt2img", base(SD15, 128, batch_size=2)),
    "sdxl AND prompt": ("txt2img", base(prompt="a red cube AND a blue sphere :0.7")),
    "sdxl AND prompt, batch 2": ("txt2img", base(prompt="a red cube AND a blue sphere :0.7", batch_size=2)),
    "sdxl long prompt + short negative": ("txt2img", base(prompt=LONG_PROMPT)),
    "sdxl long prompt + short negative, batch 2": ("txt2img", base(prompt=LONG_PROMPT, batch_size=2)),
    "sd15 long prompt + short negative, batch 2": ("txt2img", base(SD15, 128, prompt=LONG_PROMPT, batch_size=2)),
    "sd15 short prompt + long negative": ("txt2img", base(SD15, 128, negative_prompt=LONG_PROMPT)),
    "sd15 pad on, long prompt + short negative": ("txt2img", base(SD15, 128, prompt=LONG_PROMPT,
                                                                  override_settings={"pad_cond_uncond": True})),
    "sd15 pad on, short prompt + long negative": ("txt2img", base(SD15, 128, negative_prompt=LONG_PROMPT,
                                                                  override_settings={"pad_cond_uncond": True})),
    "sdxl pad on, short prompt + long negative, batch 2": ("txt2img", base(negative_prompt=LONG_PROMPT, batch_size=2,
                                                                           override_settings={"pad_cond_uncond": True})),
    "sd15 pad v0 on, short prompt + long negative": ("txt2img", base(SD15, 128, negative_prompt=LONG_PROMPT,
                                                                     override_settings={"pad_cond_uncond_v0": True})),
    "sdxl batch cond/uncond off, batch 2": ("txt2img", base(batch_size=2, override_settings={"batch_cond_uncond": False})),
    "sdxl DDIM (eps-space sampler)": ("txt2img", base(sampler_name="DDIM")),
    "sdxl Euler a, CFG 1": ("txt2img", base(sampler_name="Euler a", cfg_scale=1)),
}
for _batch in (1, 2):
    CASES[f"ControlNet reference_only, batch {_batch}"] = ("txt2img", _controlnet([cn_unit("reference_only", 64)],
                                                                                  batch_size=_batch))
    CASES[f"ControlNet canny, batch {_batch}"] = ("txt2img", _controlnet([cn_unit("canny", 64, CN_MODEL)],
                                                                         batch_size=_batch))
    CASES[f"ControlNet inpaint_only, batch {_batch}"] = ("txt2img", _controlnet(
        [cn_unit("inpaint_only", 64, CN_MODEL, mask_image=mask(64))], batch_size=_batch))
    CASES[f"ControlNet reference_only, long prompt + short negative, batch {_batch}"] = (
        "txt2img", _controlnet([cn_unit("reference_only", 64)], batch_size=_batch, prompt=LONG_PROMPT))
    CASES[f"ControlNet inpaint_only, long prompt + short negative, batch {_batch}"] = (
        "txt2img", _controlnet([cn_unit("inpaint_only", 64, CN_MODEL, mask_image=mask(64))], batch_size=_batch,
                               prompt=LONG_PROMPT))
CASES["ControlNet reference_only + canny, long prompt + short negative, batch 2"] = (
    "txt2img", _controlnet([cn_unit("reference_only", 64), cn_unit("canny", 64, CN_MODEL)], batch_size=2,
                           prompt=LONG_PROMPT))
CASES["ControlNet reference_only, img2img inpaint, batch 2"] = (
    "img2img", {**_img2img("tiny_sdxl.safetensors", 64, True, batch_size=2),
                "alwayson_scripts": {"controlnet": {"args": [cn_unit("reference_only", 64)]}}})
CASES["ControlNet reference_only, short prompt + long negative, batch 2"] = (
    "txt2img", _controlnet([cn_unit("reference_only", 64)], batch_size=2, negative_prompt=LONG_PROMPT))
CASES["built-in Hypertile (UNet), 128x128"] = ("txt2img", base(size=128, override_settings={
    "hypertile_enable_unet": True, "hypertile_max_tile_unet": 64, "hypertile_swap_size_unet": 1}))
CASES["built-in ToMe 0.5, sd15 128x128"] = ("txt2img", base(SD15, 128, override_settings={"token_merging_ratio": 0.5}))
CASES["built-in ToMe 0.5, sdxl 128x128"] = ("txt2img", base(size=128, override_settings={"token_merging_ratio": 0.5}))


@pytest.mark.parametrize("config", list(CASES))
def test_configuration(hosts, config: str) -> None:
    asag, bare = hosts
    endpoint, payload = CASES[config]
    assert_ok(compare(config, asag, bare, payload, endpoint))
