"""Test double of modules.processing for these tests; images are latents and there is no VAE.

The processing objects, the process_images call order of hosts.md section 1.2, Hires. fix (latent
upscale), img2img with a mask, infotext and Processed. Leaves out styles, extra networks, face
restoration, tiling, color correction, saving, grids, token merging and prompt-editing caches.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from modules import prompt_parser, rng, sd_models, sd_samplers, sd_unet, shared

opt_C = 4
opt_f = 8

_COMMON_FIELDS: dict[str, Any] = dict(
    sd_model=None, outpath_samples=None, outpath_grids=None, prompt="", prompt_for_display=None,
    negative_prompt="", styles=None, seed=-1, subseed=-1, subseed_strength=0, seed_resize_from_h=-1,
    seed_resize_from_w=-1, seed_enable_extras=True, sampler_name=None, scheduler=None, batch_size=1,
    n_iter=1, steps=50, cfg_scale=7.0, width=512, height=512, restore_faces=None, tiling=None,
    do_not_save_samples=False, do_not_save_grid=False, extra_generation_params=None, overlay_images=None,
    eta=None, do_not_reload_embeddings=False, denoising_strength=None, ddim_discretize=None,
    s_min_uncond=None, s_churn=None, s_tmax=None, s_tmin=None, s_noise=None, override_settings=None,
    override_settings_restore_afterwards=True, sampler_index=None, refiner_checkpoint=None,
    refiner_switch_at=None, token_merging_ratio=0, token_merging_ratio_hr=0, disable_extra_networks=False,
    firstpass_image=None, comments=None,
)
"""Keyword arguments every processing object accepts (the host's dataclass fields), with defaults."""


def _run_hook(p: Any, hook: str, *args: Any, **kwargs: Any) -> None:
    """Call ScriptRunner.<hook>(p, ...) when the job has a runner that offers it."""
    runner = getattr(p, "scripts", None)
    method = getattr(runner, hook, None) if runner is not None else None
    if method is not None:
        method(p, *args, **kwargs)


_JOB_STATE: dict[str, Any] = dict(
    scripts_value=None, script_args_value=None, scripts_setup_complete=False, sampler=None,
    is_using_inpainting_conditioning=False, is_hr_pass=False, c=None, uc=None, rng=None, step_multiplier=1,
    all_prompts=None, all_negative_prompts=None, all_seeds=None, all_subseeds=None, prompts=None,
    negative_prompts=None, seeds=None, subseeds=None, iteration=0, main_prompt=None, main_negative_prompt=None,
    extra_network_data=None, user=None, sd_model_name=None, sd_model_hash=None, sd_vae_name=None,
    sd_vae_hash=None, is_api=False, refiner_checkpoint_info=None,
)
"""What a job fills in while it runs (not constructor arguments)."""


def _script_slot(slot: str) -> property:
    """`p.scripts` / `p.script_args`: once both are known, the scripts' setup() runs (once)."""

    def read(self: Any) -> Any:
        return getattr(self, slot)

    def write(self: Any, value: Any) -> None:
        setattr(self, slot, value)
        ready = self.scripts_value is not None and self.script_args_value is not None
        if ready and not self.scripts_setup_complete:
            self.setup_scripts()

    return property(read, write)


class StableDiffusionProcessing:
    """A job: its settings (constructor keywords), prompts/seeds per batch, conds and the sampler."""

    FIELDS: ClassVar[dict[str, Any]] = _COMMON_FIELDS

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self.FIELDS))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {unknown}")
        settings = {**self.FIELDS, **kwargs}
        del settings["sd_model"]
        for container, key in ((dict, "extra_generation_params"), (dict, "comments"), (list, "styles"),
                               (dict, "override_settings")):
            settings[key] = container(settings[key] or ())
        self.__dict__.update(settings)
        self.__dict__.update(_JOB_STATE)

    # -- the model and the scripts ----------------------------------------------------------------------
    sd_model = property(lambda self: shared.sd_model, lambda self, value: None,
                        doc="Always the current model (assignments are ignored).")
    scripts = _script_slot("scripts_value")
    script_args = _script_slot("script_args_value")

    def setup_scripts(self) -> None:
        """Run every alwayson script's setup(p, *args) once, through the runner."""
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def _new_sampler(self, name: str | None) -> None:
        self.sampler = sd_samplers.create_sampler(name, shared.sd_model)

    def comment(self, text: str) -> None:
        self.comments.setdefault(text, 1)

    # -- conditioning ---------------------------------------------------------------------------------
    def txt2img_image_conditioning(self, x: torch.Tensor, width: int | None = None,
                                   height: int | None = None) -> torch.Tensor:
        """Non-inpainting models get a dummy [B, 5, 1, 1] of zeros."""
        return x.new_zeros(x.shape[0], 5, 1, 1)

    def setup_prompts(self) -> None:
        total = self.batch_size * self.n_iter
        self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else [self.prompt] * total
        negative = self.negative_prompt
        self.all_negative_prompts = list(negative) if isinstance(negative, list) else [negative] * len(self.all_prompts)
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def _encode(self, prompts: list[str], negative: list[str], steps: int) -> tuple[Any, Any]:
        model = self.sd_model
        pos = prompt_parser.SdConditioning(prompts, width=self.width, height=self.height)
        neg = prompt_parser.SdConditioning(negative, is_negative_prompt=True, width=self.width, height=self.height)
        return (prompt_parser.get_multicond_learned_conditioning(model, pos, steps),
                prompt_parser.get_learned_conditioning(model, neg, steps))

    def setup_conds(self) -> None:
        self.c, self.uc = self._encode(self.prompts, self.negative_prompts, self.steps * self.step_multiplier)

    def get_conds(self) -> tuple[Any, Any]:
        return (self.c, self.uc)

    # -- the rest of the job protocol ------------------------------------------------------------------
    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError(f"{type(self).__name__} does not sample")

    def close(self) -> None:
        self.sampler = None
        self.c = self.uc = None

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        return float(self.token_merging_ratio_hr if for_hr else self.token_merging_ratio) or 0.0

    def parse_extra_network_prompts(self) -> dict:
        return {}

    def save_samples(self) -> bool:
        return False


def _latent_batch(images: Any) -> torch.Tensor:
    """A latent [4,h,w], a list of those, or a [B,4,h,w] batch, as a float batch."""
    if isinstance(images, (list, tuple)):
        images = torch.stack([torch.as_tensor(i).reshape(-1, *torch.as_tensor(i).shape[-3:])[0] for i in images])
    images = torch.as_tensor(images).float()
    return images[None] if images.dim() == 3 else images


@contextlib.contextmanager
def _hires_pass(p: StableDiffusionProcessing) -> Iterator[None]:
    """`p.is_hr_pass` is True while the hires pass samples (scripts and the refiner read it)."""
    p.is_hr_pass = True
    try:
        yield
    finally:
        p.is_hr_pass = False


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    FIELDS: ClassVar[dict[str, Any]] = {
        **_COMMON_FIELDS, "enable_hr": False, "denoising_strength": 0.75, "firstphase_width": 0,
        "firstphase_height": 0, "hr_scale": 2.0, "hr_upscaler": None, "hr_second_pass_steps": 0,
        "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
        "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": None,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.__dict__.update(hr_checkpoint_info=None, hr_upscale_to_x=0, hr_upscale_to_y=0, hr_c=None, hr_uc=None,
                             hr_prompts=None, hr_negative_prompts=None)

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        """Hires. fix: target size, hires checkpoint lookup and the hires infotext keys."""
        if self.enable_hr:
            self.hr_upscale_to_x = self.hr_resize_x or int(self.width * self.hr_scale)
            self.hr_upscale_to_y = self.hr_resize_y or int(self.height * self.hr_scale)
            self.extra_generation_params.update(self._hires_infotext())

    def _hires_infotext(self) -> dict[str, Any]:
        keys: dict[str, Any] = {"Denoising strength": self.denoising_strength, "Hires upscale": self.hr_scale,
                                "Hires steps": self.hr_second_pass_steps or None,
                                "Hires upscaler": self.hr_upscaler or "Latent"}
        wanted = self.hr_checkpoint_name
        if wanted and wanted != "Use same checkpoint":
            found = sd_models.get_closet_checkpoint_match(wanted)
            if found is None:
                raise Exception(f"Could not find checkpoint with name {wanted}")
            self.hr_checkpoint_info = found
            keys["Hires checkpoint"] = found.short_title
        if self._hr_sampler() != self.sampler_name:
            keys["Hires sampler"] = self._hr_sampler()
        return {key: value for key, value in keys.items() if value is not None}

    def _hr_sampler(self) -> str | None:
        chosen = self.hr_sampler_name
        return self.sampler_name if chosen in (None, "", "Use same sampler") else chosen

    def _hires_conds(self) -> tuple[Any, Any]:
        return self._encode(self.hr_prompts, self.hr_negative_prompts, self.hr_second_pass_steps or self.steps)

    def calculate_hr_conds(self) -> None:
        """Conds of the hires prompts for the model that is current now."""
        self.hr_c, self.hr_uc = self._hires_conds()

    def setup_conds(self) -> None:
        StableDiffusionProcessing.setup_conds(self)
        if self.enable_hr:
            n = len(self.prompts)
            self.hr_prompts = [self.hr_prompt] * n if self.hr_prompt else list(self.prompts)
            self.hr_negative_prompts = [self.hr_negative_prompt] * n if self.hr_negative_prompt else list(self.negative_prompts)
            self.calculate_hr_conds()

    def get_conds(self) -> tuple[Any, Any]:
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else (self.c, self.uc)

    def _first_pass(self, conditioning: Any, unconditional_conditioning: Any) -> torch.Tensor:
        if self.firstpass_image is not None:  # "upscale this image": only the hires pass runs
            return _latent_batch(self.firstpass_image)
        self._new_sampler(self.sampler_name)
        start_noise = self.rng.next()
        _run_hook(self, "process_before_every_sampling", x=start_noise, noise=start_noise, c=conditioning,
                  uc=unconditional_conditioning)
        return self.sampler.sample(self, start_noise, conditioning, unconditional_conditioning,
                                   image_conditioning=self.txt2img_image_conditioning(start_noise))

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """First pass, then (Hires. fix) the hires checkpoint if any and the hires pass with is_hr_pass set."""
        latents = self._first_pass(conditioning, unconditional_conditioning)
        if shared.state.interrupted or not self.enable_hr:
            return latents
        hires_model = self.hr_checkpoint_info
        if hires_model is not None and shared.sd_model.sd_checkpoint_info is not hires_model:
            sd_models.reload_model_weights(info=hires_model)  # the option keeps naming the base model
            self.hr_c, self.hr_uc = self._hires_conds()
        with _hires_pass(self):
            return self.sample_hr_pass(latents, None, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """Upscale the latents, then img2img them with fresh noise at the hires size."""
        size = (self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f)
        upscaled = F.interpolate(samples, size=size, mode="bilinear")
        self._new_sampler(self._hr_sampler())
        self.rng = rng.ImageRNG((opt_C, *size), seeds, subseeds=subseeds, subseed_strength=subseed_strength)
        fresh = self.rng.next()
        _run_hook(self, "before_hr")
        _run_hook(self, "process_before_every_sampling", x=upscaled, noise=fresh, c=self.hr_c, uc=self.hr_uc)
        return self.sampler.sample_img2img(self, upscaled, fresh, self.hr_c, self.hr_uc,
                                           steps=self.hr_second_pass_steps or self.steps,
                                           image_conditioning=self.txt2img_image_conditioning(upscaled))

    def close(self) -> None:
        super().close()
        self.hr_c = self.hr_uc = None


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    FIELDS: ClassVar[dict[str, Any]] = {
        **_COMMON_FIELDS, "init_images": None, "resize_mode": 0, "denoising_strength": 0.75,
        "image_cfg_scale": None, "mask": None, "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None,
        "mask_round": True, "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0, "initial_noise_multiplier": None, "latent_mask": None,
        "force_task_id": None,
        "init_latent": None,  # double only: the init "image" as a latent (there is no VAE)
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.__dict__.update(image_mask=None, nmask=None, image_conditioning=None)

    def _latent_masks(self, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep, repaint) at latent size from the image-sized `mask` (1 = repaint)."""
        image_mask = torch.as_tensor(self.mask).float()
        self.image_mask = image_mask
        repaint = image_mask.reshape(-1, *image_mask.shape[-2:])[:1]
        repaint = 1 - repaint if self.inpainting_mask_invert else repaint
        repaint = F.interpolate(repaint[None], size=size, mode="area")
        repaint = repaint.round() if self.mask_round else repaint
        return 1 - repaint, repaint

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        """Init latent (repeated to the batch), latent-size masks, the dummy image conditioning.

        Afterwards `mask` is 1 where the init latent is kept and `nmask` 1 where sampling shows
        (inpainting_fill 3 = latent nothing zeroes the repainted area; other fills keep the original)."""
        latent = _latent_batch(self.init_images if self.init_latent is None else self.init_latent)
        if self.batch_size > 1 and latent.shape[0] == 1:
            latent = latent.expand(self.batch_size, -1, -1, -1)
        latent = latent.clone()
        masks = None if self.mask is None else self._latent_masks(latent.shape[-2:])
        if masks:
            self.mask, self.nmask = masks
            latent = latent * self.mask if self.inpainting_fill == 3 else latent
        self.init_latent = latent
        self.image_conditioning = self.txt2img_image_conditioning(latent)
        self.extra_generation_params.update({"Denoising strength": self.denoising_strength})

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """img2img from the init latent; with a mask the kept area is pasted back at the end."""
        self._new_sampler(self.sampler_name)
        start, noise = self.init_latent, self.rng.next()
        _run_hook(self, "process_before_every_sampling", x=start, noise=noise, c=conditioning,
                  uc=unconditional_conditioning)
        result = self.sampler.sample_img2img(self, start, noise, conditioning, unconditional_conditioning,
                                             image_conditioning=self.image_conditioning)
        return result if self.mask is None else start * self.mask + result * self.nmask


# -------------------------------------------------------------------------------------------------------
# seeds, infotext, results


def get_fixed_seed(seed: Any) -> int:
    """-1, None or '' mean a random seed."""
    return random.randrange(2 ** 32 - 2) if seed in (None, "", -1) else int(seed)


def fix_seed(p: Any) -> None:
    p.seed, p.subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)


def _quote(value: Any) -> str:
    from modules import infotext_utils

    return infotext_utils.quote(value)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None) -> str:
    """'<prompt>\nNegative prompt: ...\n<Key: value, ...>' with p.extra_generation_params merged in
    (None omitted, lists indexed per image, callables called with the job's context)."""
    i = position_in_batch + iteration * p.batch_size if index is None else index
    negatives = p.all_negative_prompts if all_negative_prompts is None else all_negative_prompts
    clip_skip = shared.opts.CLIP_stop_at_last_layers
    pairs: list[tuple[str, Any]] = [
        ("Steps", p.steps), ("Sampler", p.sampler_name), ("CFG scale", p.cfg_scale),
        ("Image CFG scale", getattr(p, "image_cfg_scale", None)),
        ("Seed", all_seeds[i] if not use_main_prompt else p.all_seeds[0]),
        ("Size", f"{p.width}x{p.height}"), ("Model hash", p.sd_model_hash), ("Model", p.sd_model_name),
        ("Variation seed", all_subseeds[i] if p.subseed_strength else None),
        ("Variation seed strength", p.subseed_strength or None),
        ("Clip skip", clip_skip if clip_skip > 1 else None),
    ]
    context = dict(p=p, index=i, iteration=iteration, position_in_batch=position_in_batch, all_prompts=all_prompts,
                   all_seeds=all_seeds, all_subseeds=all_subseeds, comments=comments)
    for key, value in p.extra_generation_params.items():
        if callable(value):
            value = value(**context)
        elif isinstance(value, list):
            value = value[i] if i < len(value) else None
        pairs.append((key, value))
    merged = dict(pairs)  # a later key (extra_generation_params) replaces a built-in one
    parameters = ", ".join(f"{key}: {_quote(value)}" for key, value in merged.items() if value is not None)
    prompt = p.main_prompt if use_main_prompt else all_prompts[i]
    negative = p.main_negative_prompt if use_main_prompt else (negatives[i] if negatives else "")
    lines = [prompt, f"Negative prompt: {negative}" if negative else None, parameters]
    return "\n".join(line for line in lines if line is not None)


_FROM_JOB = ("prompt", "negative_prompt", "subseed_strength", "width", "height", "sampler_name", "cfg_scale",
             "steps", "batch_size", "denoising_strength", "sd_model_name", "sd_model_hash", "styles",
             "extra_generation_params")
"""Processed copies these from the job (extra_generation_params by reference: X/Y/Z cells share it)."""


class Processed:
    """The job's result: latents as images, infotexts, seeds."""

    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="") -> None:
        for name in _FROM_JOB:
            setattr(self, name, getattr(p, name, None))
        self.p, self.images = p, images_list
        self.seed, self.subseed, self.info = seed, subseed, info
        self.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.comments = comments or "".join(f"{text}\n" for text in p.comments)
        self.all_prompts = all_prompts or p.all_prompts or [p.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [p.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [subseed]
        self.infotexts, self.index_of_first_image = infotexts or [info for _ in images_list], index_of_first_image

    def js(self) -> str:
        """The JSON the API returns as `info`."""
        keys = ("all_prompts", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
                "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
                "sd_model_name", "sd_model_hash", "denoising_strength", "extra_generation_params",
                "index_of_first_image", "infotexts", "styles")
        data = {"prompt": self.all_prompts[0], "negative_prompt": self.all_negative_prompts[0]}
        data.update((key, getattr(self, key)) for key in keys)
        return json.dumps(data, default=str)

    def infotext(self, p: Any, index: int) -> str:
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, index=index)


# -------------------------------------------------------------------------------------------------------
# the job


def process_images(p: StableDiffusionProcessing) -> Processed:
    """before_process, override_settings (restored afterwards), model reload, then the job."""
    _run_hook(p, "before_process")
    saved = {key: shared.opts.data.get(key) for key in p.override_settings}
    try:
        for key, value in p.override_settings.items():
            shared.opts.set(key, value)
        sd_models.reload_model_weights(info=None)
        return process_images_inner(p)
    finally:
        for key, value in (saved.items() if p.override_settings_restore_afterwards else ()):
            shared.opts.set(key, value)


def _postprocess_batch(p: Any, batch: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """postprocess_batch, postprocess_batch_list, then postprocess_image per image."""
    from modules import scripts

    _run_hook(p, "postprocess_batch", batch, batch_number=n)
    listing = scripts.PostprocessBatchListArgs(list(batch))
    _run_hook(p, "postprocess_batch_list", listing, batch_number=n)
    finished = []
    for image in listing.images:
        single = scripts.PostprocessImageArgs(image)
        _run_hook(p, "postprocess_image", single)
        finished.append(single.image)
    return finished


def _start_job(p: StableDiffusionProcessing) -> None:
    """Seeds, prompts, refiner lookup, the process() hook, model name, p.init()."""
    fix_seed(p)
    p.setup_prompts()
    count = len(p.all_prompts)
    p.all_seeds = p.seed if isinstance(p.seed, list) else [p.seed + k for k in range(count)]
    p.all_subseeds = p.subseed if isinstance(p.subseed, list) else [p.subseed + k for k in range(count)]
    refiner = p.refiner_checkpoint
    if refiner not in (None, "", "None", "none") and p.refiner_switch_at:
        found = sd_models.get_closet_checkpoint_match(refiner)
        if found is None:
            raise Exception(f"Could not find checkpoint with name {refiner}")
        p.refiner_checkpoint_info = found
    _run_hook(p, "process")
    info = shared.sd_model.sd_checkpoint_info
    p.sd_model_name, p.sd_model_hash = info.name_for_extra, info.shorthash
    p.init(all_prompts=p.all_prompts, all_seeds=p.all_seeds, all_subseeds=p.all_subseeds)
    sd_unet.apply_unet(None)


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """process -> init -> per n_iter batch: model reload, before_process_batch, extra networks, process_batch,
    setup_conds, sample, postprocess_batch(_list), per-image hooks -> postprocess."""
    state = shared.state
    _start_job(p)
    images: list[torch.Tensor] = []
    infotexts: list[str] = []
    state.job_count, state.job_no = p.n_iter, 0
    for batch_number in range(p.n_iter):
        state.skipped = False
        stop = state.interrupted or state.stopping_generation
        if stop:
            break
        p.iteration = batch_number
        sd_models.reload_model_weights(info=None)  # back to the base model after a refiner/hires switch
        rows = slice(batch_number * p.batch_size, (batch_number + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[rows], p.all_negative_prompts[rows]
        p.seeds, p.subseeds = p.all_seeds[rows], p.all_subseeds[rows]
        if not p.prompts:
            break
        start = getattr(p, "init_latent", None)
        h, w = start.shape[-2:] if start is not None else (p.height // opt_f, p.width // opt_f)
        p.rng = rng.ImageRNG((opt_C, h, w), p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength)
        batch = dict(batch_number=batch_number, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        _run_hook(p, "before_process_batch", **batch)
        p.extra_network_data = {}
        _run_hook(p, "after_extra_networks_activate", **batch, extra_network_data=p.extra_network_data)
        _run_hook(p, "process_batch", **batch)
        p.setup_conds()
        latents = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                           subseed_strength=p.subseed_strength, prompts=p.prompts)
        as_images = [latent.detach().clone() for latent in latents]  # no VAE: the latents are the images
        for position, image in enumerate(_postprocess_batch(p, as_images, batch_number)):
            infotexts.append(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, None, batch_number, position))
            images.append(image)
        state.nextjob()

    result = Processed(p, images, p.all_seeds[0], infotexts[0] if infotexts else "", subseed=p.all_subseeds[0],
                       infotexts=infotexts)
    _run_hook(p, "postprocess", result)
    return result
