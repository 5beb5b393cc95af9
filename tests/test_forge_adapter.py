"""The Forge adapter against minimal stand-ins of the patcher API it uses (../shared/docs/hosts.md §11).

Modelled only: `UnetPatcher.clone()` deep-copying `model_options`, `set_model_sampler_post_cfg_function`
appending to `sampler_post_cfg_function`, and `calc_cond_uncond_batch(model, cond, uncond, x, sigma,
model_options)` whose attn1 lookup takes the 3-tuple key. The full host doubles live under tests/hosts/
(being rewritten).
"""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch

from asag_lib import params
from asag_lib.hosts import forge, job


class Patcher:
    """Just what the adapter calls on Forge's UnetPatcher."""

    def __init__(self, diffusion_model):
        self.model = types.SimpleNamespace(diffusion_model=diffusion_model,
                                           predictor=types.SimpleNamespace(percent_to_sigma=lambda pct: 14.6 * (1 - pct)))
        self.model_options = {"transformer_options": {}}
        self.preserved = 0

    def clone(self):
        twin = Patcher(self.model.diffusion_model)
        twin.model = self.model
        twin.model_options = copy.deepcopy(self.model_options)
        return twin

    def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization=False):
        self.model_options.setdefault("sampler_post_cfg_function", []).append(fn)

    def add_extra_preserved_memory_during_sampling(self, memory):
        self.preserved += memory


@pytest.fixture
def host(monkeypatch):
    from tests.unets import build_unet

    calls = []

    def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
        replace = model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
        calls.append(dict(replace))
        return torch.full_like(x_in, 0.25), torch.zeros_like(x_in)

    module = types.ModuleType("backend.sampling.sampling_function")
    module.calc_cond_uncond_batch = calc_cond_uncond_batch
    for name in ("backend", "backend.sampling"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "backend.sampling.sampling_function", module)
    unet = Patcher(build_unet("sdxl"))
    p = types.SimpleNamespace(sd_model=types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=unet)),
                              extra_generation_params={}, is_hr_pass=False)
    return types.SimpleNamespace(p=p, calls=calls, unet=unet)


def _post_cfg_fns(unet):
    return [fn for fn in unet.model_options.get("sampler_post_cfg_function", []) if forge.is_ours(fn)]


def _prepare(host, args):
    current = job.prepare_job(host.p, args)
    if current is not None:
        forge.before_sampling(host.p, current, x=torch.zeros(1, 4, 16, 16))
    return current


def test_scale_zero_and_disabled_add_nothing(host):
    assert _prepare(host, [True, 0.0]) is None and _prepare(host, [False]) is None
    assert host.p.sd_model.forge_objects.unet is host.unet and not _post_cfg_fns(host.unet)


def test_one_post_cfg_function_even_when_called_again(host):
    _prepare(host, [True, 2.0, "middle"])
    patched = host.p.sd_model.forge_objects.unet
    assert patched is not host.unet and len(_post_cfg_fns(patched)) == 1
    current = job.get_job(host.p)
    forge.before_sampling(host.p, current, x=torch.zeros(1, 4, 16, 16))  # Forge2's repeated hires call
    assert len(_post_cfg_fns(host.p.sd_model.forge_objects.unet)) == 1
    assert not _post_cfg_fns(host.unet)  # the original patcher is untouched


def test_weak_call_gets_explicit_keys_and_live_options_stay_unchanged(host):
    _prepare(host, [True, 2.0, "middle"])
    patched = host.p.sd_model.forge_objects.unet
    live = {"transformer_options": {"patches_replace": {"attn1": {("middle", 0, 0): "reference"}}}}
    snapshot = copy.deepcopy(live)
    fn = _post_cfg_fns(patched)[0]
    x = torch.randn(1, 4, 16, 16)
    denoised, cond_denoised = torch.zeros_like(x), torch.ones_like(x)
    out = fn({"denoised": denoised, "cond_denoised": cond_denoised, "cond": [{}], "uncond": [{}],
              "model": None, "sigma": torch.tensor([5.0]), "input": x, "model_options": live,
              "uncond_denoised": torch.zeros_like(x)})
    assert live == snapshot  # never mutated (the bug Forge's own PAG had)
    keys = set(host.calls[0])
    assert keys == {("middle", 0, j) for j in range(10)}
    assert callable(host.calls[0][("middle", 0, 0)])  # ASAG's replacement wins over reference's in the weak call
    torch.testing.assert_close(out, denoised + 2.0 * (cond_denoised - 0.25))


def test_window_skips_steps_outside_it(host):
    _prepare(host, [True, 2.0, "middle", 2, 0.001, 0.5, 1.0])
    fn = _post_cfg_fns(host.p.sd_model.forge_objects.unet)[0]
    x = torch.randn(1, 4, 16, 16)
    args = {"denoised": x, "cond_denoised": x, "cond": [{}], "model": None, "input": x, "model_options": {}}
    assert fn({**args, "sigma": torch.tensor([14.0])}) is x and not host.calls  # early step: no weak pass
    fn({**args, "sigma": torch.tensor([2.0])})
    assert len(host.calls) == 1


def test_bad_layer_spec_is_reported_and_nothing_is_patched(host):
    _prepare(host, [True, 2.0, "input.1"])  # SDXL input block 1 has no attention
    assert not _post_cfg_fns(host.p.sd_model.forge_objects.unet)
    assert "input.1" in host.p.extra_generation_params[job.ERROR_KEY]
    assert params.infotext_key(params.PARAMS_BY_NAME["scale"]) not in host.p.extra_generation_params
