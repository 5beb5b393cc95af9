"""Test double of modules.shared: options, job state and the loaded model, as module globals.

Only the option names the tests and the extension read are known; asking for another one is an
AttributeError, as with the real Options object.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

OPTION_DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": "sd15",
    "sd_vae": "Automatic",
    "batch_cond_uncond": True,
    "CLIP_stop_at_last_layers": 1,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "skip_early_cond": 0.0,
    "eta_noise_seed_delta": 0,
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    "always_discard_next_to_last_sigma": False,
    "sd_noise_schedule": "Default",
    "use_old_emphasis_implementation": False,
    "enable_pnginfo": True,
    "add_model_name_to_info": True,
    "add_model_hash_to_info": True,
    "infotext_styles": "Apply if any",
    "return_grid": True,
    "grid_save": False,
    "samples_save": False,
    "save_images_before_color_correction": False,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "hires_fix_use_firstpass_conds": False,
    "hires_fix_refiner_pass": "second pass",
    "sd_unet": "Automatic",
    "lora_functional": False,
    "show_progress_every_n_steps": 0,
    "live_previews_enable": False,
    "token_merging_ratio": 0.0,
    "randn_source": "CPU",
    "prioritized_callbacks_cfg_denoiser": [],
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "refiner_switch_by_sample_steps": False,
    "sd_checkpoints_limit": 1,
}


class Options:
    """Attribute view over `data`, which starts as a copy of the defaults."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        object.__setattr__(self, "data", dict(defaults))
        object.__setattr__(self, "data_labels", {key: SimpleNamespace(default=value) for key, value in defaults.items()})

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "data")
        if name in data:
            return data[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.data[name] = value

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        self.data.update({key: value})
        return True


class State:
    """The job/progress flags that samplers poll; `interrupted` stops sampling at the next step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        vars(self).update(interrupted=False, skipped=False, stopping_generation=False, job="", job_count=0,
                          job_no=0, sampling_step=0, sampling_steps=0, current_latent=None, textinfo=None)

    def begin(self, job: str = "(unknown)") -> None:
        self.reset()
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def nextjob(self) -> None:
        self.job_no, self.sampling_step = self.job_no + 1, 0


class _NoProgressBar:
    def updateTotal(self, total: int) -> None:
        pass

    def update(self) -> None:
        pass

    def clear(self) -> None:
        pass


opts = Options(OPTION_DEFAULTS)
state = State()
cmd_opts = SimpleNamespace(nowebui=False, api=True, disable_extension_access=False, lowvram=False, medvram=False,
                           no_half=True, precision="full", always_batch_cond_uncond=False)
sd_model: Any = None
loaded_hypernetworks: list[Any] = []
device = torch.device("cpu")
total_tqdm = _NoProgressBar()
