"""Test double of modules.sd_models for these tests; no files, VAE, real text encoder or fp16.

Checkpoints are registered in memory (`register_checkpoint(name, family, seed=, model_channels=)`) and
loaded as a small real UNet from tests/unets.py inside a stand-in LatentDiffusion/DiffusionEngine; the
text encoder is a deterministic hash-seeded fake and every family predicts eps.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Callable
from typing import Any

import torch

from modules import devices, shared
from tests.hosts.discrete_schedule import linear_alphas_cumprod

build_unet: Callable[..., torch.nn.Module] | None = None
"""Set by the driver to tests.unets.build_unet (it builds the scaled-down real UNet)."""

checkpoints_list: dict[str, CheckpointInfo] = {}
checkpoint_aliases: dict[str, CheckpointInfo] = {}
checkpoints_loaded: collections.OrderedDict = collections.OrderedDict()
_models: dict[str, torch.nn.Module] = {}
"""Every model built so far, by checkpoint title: switching back reuses the same objects (like a large
sd_checkpoints_limit), so the UNet instances stay stable across refiner and hires switches."""


class CheckpointInfo:
    """An in-memory checkpoint: name, title, fake hashes, plus how to build it (family, seed, width)."""

    def __init__(self, name: str, family: str, seed: int = 0, model_channels: int = 32) -> None:
        digest = f"{zlib.crc32(f'{name}/{family}/{seed}'.encode()):08x}"
        self.name = self.model_name = self.name_for_extra = name
        self.filename = f"{name}.safetensors"
        self.family = family
        self.seed = seed
        self.model_channels = model_channels
        self.hash = digest
        self.sha256 = digest * 8
        self.shorthash = digest[:10]
        self.title = f"{name} [{self.shorthash}]"
        self.short_title = self.title
        self.ids = [name, self.filename, self.title, self.shorthash]
        self.metadata: dict[str, Any] = {}

    def register(self) -> None:
        checkpoints_list.update({self.title: self})
        checkpoint_aliases.update(dict.fromkeys(self.ids, self))

    def calculate_shorthash(self) -> str:
        return self.hash[:10]


def register_checkpoint(name: str, family: str, *, seed: int = 0, model_channels: int = 32) -> CheckpointInfo:
    """Make `name` loadable (double-only entry point used by the driver)."""
    info = CheckpointInfo(name, family, seed=seed, model_channels=model_channels)
    info.register()
    return info


def checkpoint_tiles(use_short: bool = False) -> list[str]:
    return [info.short_title if use_short else info.title for info in checkpoints_list.values()]


def list_models() -> None:
    """Nothing to scan: checkpoints are registered by the driver."""


def get_closet_checkpoint_match(search_string: str | None) -> CheckpointInfo | None:
    """By alias or title, else the first title containing the string (the host's spelling, 'closet')."""
    if search_string in (None, ""):
        return None
    if search_string in checkpoint_aliases:
        return checkpoint_aliases[search_string]
    bare = search_string.split(" [")[0]
    if bare in checkpoint_aliases:
        return checkpoint_aliases[bare]
    hits = sorted((t for t in checkpoints_list if search_string in t), key=len)
    return checkpoints_list[hits[0]] if hits else None


def select_checkpoint() -> CheckpointInfo:
    info = get_closet_checkpoint_match(shared.opts.sd_model_checkpoint)
    if info is None:
        if not checkpoints_list:
            raise FileNotFoundError("no checkpoints registered")
        info = next(iter(checkpoints_list.values()))
    return info


class SkipWritingToConfig:
    """Context manager: a model switch inside it leaves opts.sd_model_checkpoint alone. In the double
    reload_model_weights never writes the option, so there is nothing to switch off."""

    def __enter__(self) -> SkipWritingToConfig:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------------
# the model object


def _text_seed(text: str, salt: str) -> int:
    return zlib.crc32(f"{salt}\x00{text}".encode())


class UNetWrapper(torch.nn.Module):
    """`sd_model.model`: holds `diffusion_model` and turns the cond dict into UNet arguments."""

    def __init__(self, unet: torch.nn.Module, is_sdxl: bool) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.is_sdxl = is_sdxl
        if not is_sdxl:
            self.conditioning_key = "crossattn"

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        if self.is_sdxl:
            return self.diffusion_model(x, timesteps=t, context=cond["crossattn"], y=cond["vector"])
        context = torch.cat(list(cond["c_crossattn"]), dim=1)
        return self.diffusion_model(x, timesteps=t, context=context)


class FakeTextEncoder:
    """Deterministic stand-in for CLIP: each prompt text seeds a generator giving [77·k, context_dim]
    token embeddings (and for SDXL a pooled [adm_in_channels] vector). Equal texts give equal rows.

    As in A1111, a prompt takes one 77-token chunk per 75 tokens (here: one token per word) and every
    prompt of one encoder call is padded to the call's longest chunk count."""

    tokens = 77

    @staticmethod
    def chunks(text: str) -> int:
        return max(1, -(-len(text.split()) // 75))

    def __init__(self, family: str, context_dim: int, adm_in_channels: int | None) -> None:
        self.family = family
        self.context_dim = context_dim
        self.adm_in_channels = adm_in_channels

    def encode(self, text: str, chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        gen = torch.Generator().manual_seed(_text_seed(text, self.family))
        tokens = torch.randn(self.tokens * chunks, self.context_dim, generator=gen)
        pooled = None if self.adm_in_channels is None else torch.randn(self.adm_in_channels, generator=gen) * 0.1
        return tokens, pooled


class DoubleSdModel(torch.nn.Module):
    """What `shared.sd_model` offers the tests and the extension: `model.diffusion_model`,
    `apply_model(x, t, cond)`, `get_learned_conditioning(prompts)`, `alphas_cumprod`, the is_* flags,
    `cond_stage_key`, `sd_checkpoint_info`; SDXL families also a `conditioner`."""

    def __init__(self, info: CheckpointInfo, unet: torch.nn.Module) -> None:
        super().__init__()
        family = info.family
        self.is_sdxl = family.startswith("sdxl")
        self.is_sd2 = family == "sd2"
        self.is_sd1 = family == "sd15"
        self.is_sd3 = False
        self.is_sdxl_inpaint = False
        self.is_ssd = False
        self.model = UNetWrapper(unet, self.is_sdxl)
        self.__dict__.update(cond_stage_key="txt", parameterization="eps", latent_channels=4)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod().float(), persistent=False)
        self.encoder = FakeTextEncoder(family, unet.context_dim, unet.adm_in_channels)
        if self.is_sdxl:
            self.conditioner = self.encoder
        else:
            self.cond_stage_model = self.encoder
        empty = self.get_learned_conditioning([""])
        # what the host's padding appends: the empty prompt's tokens, [1, 77, dim] (crossattn for SDXL)
        self.cond_stage_model_empty_prompt = empty["crossattn"] if self.is_sdxl else empty
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.sd_model_hash = info.shorthash
        self.device = devices.device
        self.dtype = devices.dtype

    def get_learned_conditioning(self, prompts: list[str]) -> Any:
        chunks = max(self.encoder.chunks(text) for text in prompts)
        encoded = [self.encoder.encode(text, chunks) for text in prompts]
        crossattn = torch.stack([tokens for tokens, _ in encoded])
        if not self.is_sdxl:
            return crossattn
        return {"crossattn": crossattn, "vector": torch.stack([pooled for _, pooled in encoded])}

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, return_ids: bool = False) -> torch.Tensor:
        return self.model(x_noisy, t, cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.apply_model(x, t, cond)


def _build(info: CheckpointInfo) -> DoubleSdModel:
    if build_unet is None:
        raise RuntimeError("sd_models.build_unet is not set (the driver sets it to tests.unets.build_unet)")
    unet = build_unet(info.family, model_channels=info.model_channels, seed=info.seed)
    return DoubleSdModel(info, unet).eval()


def load_model(checkpoint_info: CheckpointInfo | None = None, already_loaded_state_dict: Any = None) -> DoubleSdModel:
    """Build (or take from the in-memory cache) the model of `checkpoint_info` and make it current."""
    from modules import script_callbacks

    info = checkpoint_info or select_checkpoint()
    model = _models.get(info.title)
    fresh = model is None
    if fresh:
        model = _models[info.title] = _build(info)
    checkpoints_loaded[info] = None
    shared.sd_model = model
    if fresh:
        script_callbacks.model_loaded_callback(model)
    return model


def reload_model_weights(sd_model: Any = None, info: CheckpointInfo | None = None, forced_reload: bool = False) -> Any:
    """Make `info` (default: opts.sd_model_checkpoint) the current model; a no-op when it already is.
    Only a freshly built model fires on_model_loaded; a cached one is swapped in silently."""
    wanted = info or select_checkpoint()
    current = shared.sd_model
    if not forced_reload and current is not None and current.sd_checkpoint_info is wanted:
        return current
    return load_model(wanted)


def unload_model_weights(sd_model: Any = None, info: Any = None) -> None:
    shared.sd_model = None


def apply_token_merging(sd_model: Any, token_merging_ratio: float) -> None:
    """ToMe is not modelled."""


def get_empty_cond(sd_model: Any) -> Any:
    return sd_model.get_learned_conditioning([""])
