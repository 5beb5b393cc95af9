"""Test double of modules.sd_samplers for these tests; Euler, Euler a and DDIM only, no schedulers."""

from __future__ import annotations

from typing import Any

from modules import sd_samplers_common, sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {data.name: data for data in all_samplers}
samplers = list(all_samplers)
samplers_for_img2img = list(all_samplers)
samplers_map: dict[str, str] = {}


def find_sampler_config(name: str | None) -> sd_samplers_common.SamplerData:
    """By name or alias (case-insensitive for aliases); None means the first sampler."""
    if name is None:
        return all_samplers[0]
    if name in all_samplers_map:
        return all_samplers_map[name]
    for data in all_samplers:
        if name.lower() in (alias.lower() for alias in data.aliases) or name.lower() == data.name.lower():
            return data
    raise ValueError(f"bad sampler name: {name}")


def create_sampler(name: str | None, model: Any) -> sd_samplers_common.Sampler:
    data = find_sampler_config(name)
    made = data.constructor(model)
    made.config = data
    return made


def set_samplers() -> None:
    names = {alias.lower(): data.name for data in all_samplers for alias in (data.name, *data.aliases)}
    samplers_map.update(names)


def visible_sampler_names() -> list[str]:
    return [data.name for data in samplers]


def visible_samplers() -> list[sd_samplers_common.SamplerData]:
    return list(samplers)


def get_sampler_from_infotext(d: dict) -> str:
    return d.get("Sampler", samplers[0].name)


def get_sampler_and_scheduler(sampler_name: str, scheduler_name: str | None, *, convert_automatic: bool = True):
    return find_sampler_config(sampler_name).name, scheduler_name or "Automatic"


set_samplers()
