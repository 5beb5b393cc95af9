"""Test double of modules.processing written for these tests: the processing objects, the
process_images call order of hosts.md section 1.2, Hires. fix (latent upscale), img2img with a mask,
infotext and Processed. Images are latents (no VAE decode/encode); leaves out styles, extra networks,
face restoration, tiling, color correction, saving, grids, token merging and prompt-editing caches."""

from __future__ import annotations

import json
import random
from typing import Any

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


class StableDiffusionProcessing:
    """A job: its settings (constructor keywords), prompts/seeds per batch, conds and the sampler."""

    FIELDS: dict[str, Any] = _COMMON_FIELDS

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {sorted(unknown)}")
        values = {**self.FIELDS, **kwargs}
        values.pop("sd_model")
        for key, value in values.items():
            setattr(self, key, value)
        self.extra_generation_params = dict(self.extra_generation_params or {})
        self.comments = dict(self.comments or {})
        self.styles = list(self.styles or [])
        self.override_settings = dict(self.override_settings or {})
        self.scripts_value = None
        self.script_args_value = None
        self.scripts_setup_complete = False
        self.sampler = None
        self.is_using_inpainting_conditioning = False
        self.is_hr_pass = False
        self.c = self.uc = None
        self.rng: rng.ImageRNG | None = None
        self.step_multiplier = 1
        self.all_prompts = self.all_negative_prompts = self.all_seeds = self.all_subseeds = None
        self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
        self.iteration = 0
        self.main_prompt = self.main_negative_prompt = None
        self.extra_network_data = None
        self.user = None
        self.sd_model_name = self.sd_model_hash = None
        self.sd_vae_name = self.sd_vae_hash = None
        self.is_api = False

    # -- the model and the scripts ----------------------------------------------------------------------
    @property
    def sd_model(self) -> Any:
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value: Any) -> None:
        """Ignored: the job always uses the current model."""

    @property
    def scripts(self) -> Any:
        return self.scripts_value

    @scripts.setter
    def scripts(self, value: Any) -> None:
        self.scripts_value = value
        if self.scripts_value is not None and self.script_args_value is not None and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self) -> Any:
        return self.script_args_value

    @script_args.setter
    def script_args(self, value: Any) -> None:
        self.script_args_value = value
        if self.scripts_value is not None and self.script_args_value is not None and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self) -> None:
        """Run every alwayson script's setup(p, *args) once (runner.setup_scrips in the host)."""
        self.scripts_setup_complete = True
        runner = self.scripts
        if hasattr(runner, "setup_scrips"):
            runner.setup_scrips(self, is_ui=not self.is_api)
            return
        for script in getattr(runner, "alwayson_scripts", []):
            if self.is_api and getattr(script, "setup_for_ui_only", False):
                continue
            script.setup(self, *self.script_args[script.args_from:script.args_to])

    def comment(self, text: str) -> None:
        self.comments[text] = 1

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
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def _encode(self, prompts: list[str], negative: list[str], steps: int) -> tuple[Any, Any]:
        model = self.sd_model
        pos = prompt_parser.SdConditioning(prompts, width=self.width, height=self.height)
        neg = prompt_parser.SdConditioning(negative, is_negative_prompt=True, width=self.width, height=self.height)
        return (prompt_parser.get_multicond_learned_conditioning(model, pos, steps),
                prompt_parser.get_learned_conditioning(model, neg, steps))

    def setup_conds(self) -> None:
        self.c, self.uc = self._encode(self.prompts, self.negative_prompts, self.steps * self.step_multiplier)

    def get_conds(self) -> tuple[Any, Any]:
        return self.c, self.uc

    # -- the rest of the job protocol ------------------------------------------------------------------
    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError

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


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    FIELDS = {
        **_COMMON_FIELDS, "enable_hr": False, "denoising_strength": 0.75, "firstphase_width": 0,
        "firstphase_height": 0, "hr_scale": 2.0, "hr_upscaler": None, "hr_second_pass_steps": 0,
        "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
        "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": None,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hr_checkpoint_info = None
        self.hr_upscale_to_x = self.hr_upscale_to_y = 0
        self.hr_c = self.hr_uc = None
        self.hr_prompts = self.hr_negative_prompts = None

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        if not self.enable_hr:
            return
        self.hr_upscale_to_x = self.hr_resize_x or int(self.width * self.hr_scale)
        self.hr_upscale_to_y = self.hr_resize_y or int(self.height * self.hr_scale)
        extra = self.extra_generation_params
        extra["Denoising strength"] = self.denoising_strength
        extra["Hires upscale"] = self.hr_scale
        extra["Hires upscaler"] = self.hr_upscaler or "Latent"
        if self.hr_second_pass_steps:
            extra["Hires steps"] = self.hr_second_pass_steps
        if self.hr_checkpoint_name and self.hr_checkpoint_name != "Use same checkpoint":
            self.hr_checkpoint_info = sd_models.get_closet_checkpoint_match(self.hr_checkpoint_name)
            if self.hr_checkpoint_info is None:
                raise Exception(f"Could not find checkpoint with name {self.hr_checkpoint_name}")
            extra["Hires checkpoint"] = self.hr_checkpoint_info.short_title
        if self._hr_sampler() != self.sampler_name:
            extra["Hires sampler"] = self._hr_sampler()

    def _hr_sampler(self) -> str | None:
        if self.hr_sampler_name in (None, "", "Use same sampler"):
            return self.sampler_name
        return self.hr_sampler_name

    def calculate_hr_conds(self) -> None:
        """Conds of the hires prompts for the model that is current now."""
        self.hr_c, self.hr_uc = self._encode(self.hr_prompts, self.hr_negative_prompts,
                                             self.hr_second_pass_steps or self.steps)

    def setup_conds(self) -> None:
        super().setup_conds()
        if not self.enable_hr:
            return
        self.hr_prompts = [self.hr_prompt] * len(self.prompts) if self.hr_prompt else list(self.prompts)
        self.hr_negative_prompts = ([self.hr_negative_prompt] * len(self.prompts) if self.hr_negative_prompt
                                    else list(self.negative_prompts))
        self.calculate_hr_conds()

    def get_conds(self) -> tuple[Any, Any]:
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else (self.c, self.uc)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        if self.firstpass_image is not None:  # "upscale this image": only the hires pass runs
            samples = _latent_batch(self.firstpass_image)
        else:
            self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
            x = self.rng.next()
            _run_hook(self, "process_before_every_sampling", x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
            samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                          image_conditioning=self.txt2img_image_conditioning(x))
        if not self.enable_hr or shared.state.interrupted:
            return samples
        if self.hr_checkpoint_info is not None and shared.sd_model.sd_checkpoint_info is not self.hr_checkpoint_info:
            with sd_models.SkipWritingToConfig():
                sd_models.reload_model_weights(info=self.hr_checkpoint_info)
            self.calculate_hr_conds()
        self.is_hr_pass = True
        try:
            return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)
        finally:
            self.is_hr_pass = False

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """Upscale the latents, then img2img them with fresh noise at the hires size."""
        size = (self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f)
        latents = F.interpolate(samples, size=size, mode="bilinear")
        self.sampler = sd_samplers.create_sampler(self._hr_sampler(), self.sd_model)
        self.rng = rng.ImageRNG((opt_C, *size), seeds, subseeds=subseeds, subseed_strength=subseed_strength)
        noise = self.rng.next()
        _run_hook(self, "before_hr")
        _run_hook(self, "process_before_every_sampling", x=latents, noise=noise, c=self.hr_c, uc=self.hr_uc)
        return self.sampler.sample_img2img(self, latents, noise, self.hr_c, self.hr_uc,
                                           steps=self.hr_second_pass_steps or self.steps,
                                           image_conditioning=self.txt2img_image_conditioning(latents))

    def close(self) -> None:
        super().close()
        self.hr_c = self.hr_uc = None


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    FIELDS = {
        **_COMMON_FIELDS, "init_images": None, "resize_mode": 0, "denoising_strength": 0.75,
        "image_cfg_scale": None, "mask": None, "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None,
        "mask_round": True, "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0, "initial_noise_multiplier": None, "latent_mask": None,
        "force_task_id": None,
        "init_latent": None,  # double only: the init "image" as a latent (there is no VAE)
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_mask = None
        self.nmask = None
        self.image_conditioning = None

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        """Init latent (repeated to the batch), the latent-size masks, the dummy image conditioning.

        `mask` is an image-sized tensor, 1 where the picture is repainted. Afterwards `mask` is 1 where the
        init latent is kept and `nmask` is 1 where sampling shows (inpainting_fill 3 = latent nothing
        zeroes the repainted area; other fills keep the original)."""
        source = self.init_latent if self.init_latent is not None else self.init_images
        latent = _latent_batch(source)
        if latent.shape[0] == 1 and self.batch_size > 1:
            latent = latent.expand(self.batch_size, -1, -1, -1)
        self.init_latent = latent.clone()
        if self.mask is not None:
            self.image_mask = torch.as_tensor(self.mask).float()
            painted = self.image_mask.reshape(-1, *self.image_mask.shape[-2:])[:1]
            if self.inpainting_mask_invert:
                painted = 1 - painted
            small = F.interpolate(painted[None], size=latent.shape[-2:], mode="area")
            if self.mask_round:
                small = small.round()
            self.nmask = small
            self.mask = 1 - small
            if self.inpainting_fill == 3:
                self.init_latent = self.init_latent * self.mask
        self.image_conditioning = self.txt2img_image_conditioning(self.init_latent)
        self.extra_generation_params["Denoising strength"] = self.denoising_strength

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        noise = self.rng.next()
        _run_hook(self, "process_before_every_sampling", x=self.init_latent, noise=noise, c=conditioning,
                  uc=unconditional_conditioning)
        samples = self.sampler.sample_img2img(self, self.init_latent, noise, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            samples = self.init_latent * self.mask + samples * self.nmask
        return samples


# -------------------------------------------------------------------------------------------------------
# seeds, infotext, results


def get_fixed_seed(seed: Any) -> int:
    """-1, None or '' mean a random seed."""
    if seed in (None, "", -1):
        return int(random.randrange(4294967294))
    return int(seed)


def fix_seed(p: Any) -> None:
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def _quote(value: Any) -> str:
    from modules import infotext_utils

    return infotext_utils.quote(value)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None) -> str:
    """'<prompt>\\nNegative prompt: ...\\n<Key: value, ...>' with p.extra_generation_params merged in
    (None omitted, lists indexed per image, callables called with the job's context)."""
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    negatives = all_negative_prompts if all_negative_prompts is not None else p.all_negative_prompts
    model = shared.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    fields: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Image CFG scale": getattr(p, "image_cfg_scale", None),
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash or getattr(model, "sd_model_hash", None),
        "Model": p.sd_model_name or (info.name_for_extra if info is not None else None),
        "Variation seed": all_subseeds[index] if p.subseed_strength else None,
        "Variation seed strength": p.subseed_strength or None,
        "Clip skip": shared.opts.CLIP_stop_at_last_layers if shared.opts.CLIP_stop_at_last_layers > 1 else None,
    }
    context = dict(p=p, index=index, iteration=iteration, position_in_batch=position_in_batch,
                   all_prompts=all_prompts, all_seeds=all_seeds, all_subseeds=all_subseeds, comments=comments)
    for key, value in p.extra_generation_params.items():
        if callable(value):
            value = value(**context)
        elif isinstance(value, list):
            value = value[index] if index < len(value) else None
        fields[key] = value
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None)
    prompt = p.main_prompt if use_main_prompt else all_prompts[index]
    negative = p.main_negative_prompt if use_main_prompt else (negatives[index] if negatives else "")
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{negative_line}\n{line}"


class Processed:
    """The job's result: latents as images, infotexts, seeds; `extra_generation_params` is p's dict itself."""

    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="") -> None:
        self.images = images_list
        self.p = p
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = comments or "".join(f"{text}\n" for text in p.comments)
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.denoising_strength = p.denoising_strength
        self.sd_model_name, self.sd_model_hash = p.sd_model_name, p.sd_model_hash
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.styles = p.styles
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def js(self) -> str:
        data = {
            "prompt": self.all_prompts[0], "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0], "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed, "all_seeds": self.all_seeds, "subseed": self.subseed,
            "all_subseeds": self.all_subseeds, "subseed_strength": self.subseed_strength,
            "width": self.width, "height": self.height, "sampler_name": self.sampler_name,
            "cfg_scale": self.cfg_scale, "steps": self.steps, "batch_size": self.batch_size,
            "sd_model_name": self.sd_model_name, "sd_model_hash": self.sd_model_hash,
            "denoising_strength": self.denoising_strength, "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image, "infotexts": self.infotexts, "styles": self.styles,
        }
        return json.dumps(data, default=str)

    def infotext(self, p: Any, index: int) -> str:
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, index=index)


# -------------------------------------------------------------------------------------------------------
# the job


def process_images(p: StableDiffusionProcessing) -> Processed:
    """before_process, override_settings (restored afterwards), model reload, then the job."""
    _run_hook(p, "before_process")
    previous = {key: shared.opts.data.get(key) for key in p.override_settings}
    try:
        for key, value in p.override_settings.items():
            shared.opts.set(key, value)
        sd_models.reload_model_weights()
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for key, value in previous.items():
                shared.opts.set(key, value)


def _postprocess_batch(p: Any, batch: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    from modules import scripts

    _run_hook(p, "postprocess_batch", batch, batch_number=n)
    wrapped = scripts.PostprocessBatchListArgs(list(batch))
    _run_hook(p, "postprocess_batch_list", wrapped, batch_number=n)
    finished = []
    for image in wrapped.images:
        single = scripts.PostprocessImageArgs(image)
        _run_hook(p, "postprocess_image", single)
        finished.append(single.image)
    return finished


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """process -> init -> per n_iter batch: model reload, before_process_batch, extra networks, process_batch,
    setup_conds, sample, postprocess_batch(_list), per-image hooks -> postprocess."""
    state = shared.state
    fix_seed(p)
    p.setup_prompts()
    count = len(p.all_prompts)
    p.all_seeds = list(p.seed) if isinstance(p.seed, list) else [p.seed + i for i in range(count)]
    p.all_subseeds = list(p.subseed) if isinstance(p.subseed, list) else [p.subseed + i for i in range(count)]

    p.refiner_checkpoint_info = None
    if p.refiner_checkpoint not in (None, "", "None", "none") and p.refiner_switch_at:
        p.refiner_checkpoint_info = sd_models.get_closet_checkpoint_match(p.refiner_checkpoint)
        if p.refiner_checkpoint_info is None:
            raise Exception(f"Could not find checkpoint with name {p.refiner_checkpoint}")

    _run_hook(p, "process")
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
    sd_unet.apply_unet()

    images: list[torch.Tensor] = []
    infotexts: list[str] = []
    state.job_count = p.n_iter
    for n in range(p.n_iter):
        p.iteration = n
        state.skipped = False
        if state.interrupted or state.stopping_generation:
            break
        sd_models.reload_model_weights()  # back to the base model after a refiner/hires switch
        rows = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[rows], p.all_negative_prompts[rows]
        p.seeds, p.subseeds = p.all_seeds[rows], p.all_subseeds[rows]
        if not p.prompts:
            break
        h = (p.init_latent.shape[-2] if getattr(p, "init_latent", None) is not None else p.height // opt_f)
        w = (p.init_latent.shape[-1] if getattr(p, "init_latent", None) is not None else p.width // opt_f)
        p.rng = rng.ImageRNG((opt_C, h, w), p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength)
        batch = dict(batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        _run_hook(p, "before_process_batch", **batch)
        p.extra_network_data = {}
        _run_hook(p, "after_extra_networks_activate", **batch, extra_network_data=p.extra_network_data)
        _run_hook(p, "process_batch", **batch)
        p.setup_conds()
        samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                           subseed_strength=p.subseed_strength, prompts=p.prompts)
        decoded = [latent.detach().clone() for latent in samples]  # no VAE: the latents are the images
        for i, image in enumerate(_postprocess_batch(p, decoded, n)):
            infotexts.append(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, None, n, i))
            images.append(image)
        state.nextjob()

    result = Processed(p, images, p.all_seeds[0], infotexts[0] if infotexts else "", subseed=p.all_subseeds[0],
                       infotexts=infotexts)
    _run_hook(p, "postprocess", result)
    return result
