"""Test double of modules.sd_samplers_cfg_denoiser for these tests; no edit/unCLIP models.

The CFG denoiser's batch layout, callback order and combine step as hosts.md section 2.3 documents
them. Cond padding (pad_cond_uncond), live previews and on_mask_blend are left out too.
"""

from __future__ import annotations

from typing import Any

import torch

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoisedParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoised_callback,
    cfg_denoiser_callback,
)


def catenate_conds(conds: list[Any]) -> Any:
    """Concatenate cond batches row-wise (tensors, or SDXL dicts key by key)."""
    if isinstance(conds[0], dict):
        return prompt_parser.DictWithShape({key: torch.cat([c[key] for c in conds]) for key in conds[0]})
    return torch.cat(conds, dim=0)


def subscript_cond(cond: Any, a: int, b: int) -> Any:
    """Rows a:b of a cond batch."""
    if isinstance(cond, dict):
        return prompt_parser.DictWithShape({key: value[a:b] for key, value in cond.items()})
    return cond[a:b]


def _token_count(cond: Any) -> int:
    return cond.shape[1]


def _append_tokens(cond: Any, extra: torch.Tensor) -> Any:
    """cond with `extra` ([rows or 1, n, dim]) appended on the token axis; an SDXL dict is changed in place."""
    if isinstance(cond, dict):
        cond["crossattn"] = _append_tokens(cond["crossattn"], extra)
        return cond
    return torch.cat([cond, extra.expand(cond.shape[0], -1, -1)], dim=1)


_INITIAL_STATE: dict[str, Any] = dict(
    model_wrap=None, p=None, mask=None, nmask=None, init_latent=None, steps=None, total_steps=None, step=0,
    image_cfg_scale=None, padded_cond_uncond=False, padded_cond_uncond_v0=False, cond_scale_miltiplier=1.0,
    need_last_noise_uncond=False, last_noise_uncond=None, mask_before_denoising=False,
)
"""The denoiser's fields (hosts.md 2.4) before Sampler.initialize(p) fills them in."""


class CFGDenoiser(torch.nn.Module):
    """Wraps the sampler's model: one call evaluates every cond row and the uncond rows, then combines.

    Rows of the model batch: [cond rows, image by image (AND sub-prompts repeat an image) | B uncond rows].
    """

    def __init__(self, sampler: Any) -> None:
        super().__init__()
        for name, value in {**_INITIAL_STATE, "sampler": sampler}.items():
            setattr(self, name, getattr(type(self), name, value))  # a subclass may preset a field

    wrapper_class: Any = None
    """The sampler family's model wrapper (x0 or eps); its subclass sets it (the host has a property per subclass)."""

    @property
    def inner_model(self) -> Any:
        if self.wrapper_class is None:
            raise NotImplementedError("the sampler family's denoiser provides the model wrapper")
        if self.model_wrap is None:  # first use, or after a model switch
            self.model_wrap = self.wrapper_class(shared.sd_model)
        return self.model_wrap

    def combine_denoised(self, x_out: torch.Tensor, conds_list: list[list[tuple[int, float]]], uncond: Any,
                         cond_scale: float) -> torch.Tensor:
        """uncond_i + sum_k w_k * scale * (cond_k - uncond_i); the uncond block is the last B rows of x_out."""
        n_images = uncond.shape[0]
        uncond_out = x_out[-n_images:]
        combined = uncond_out.clone()
        for image, pairs in enumerate(conds_list):
            for row, weight in pairs:
                combined[image] += (x_out[row] - uncond_out[image]) * (weight * cond_scale)
        return combined

    def get_pred_x0(self, x_in: torch.Tensor, x_out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """k-diffusion models already predict x0."""
        return x_out

    def pad_cond_uncond(self, cond: Any, uncond: Any) -> tuple[Any, Any]:
        """Pad the shorter of the two with whole copies of the empty prompt's tokens."""
        empty = shared.sd_model.cond_stage_model_empty_prompt
        repeats = (_token_count(cond) - _token_count(uncond)) // empty.shape[1]
        if repeats:
            filler = empty.repeat(1, abs(repeats), 1)
            if repeats < 0:
                cond = _append_tokens(cond, filler)
            else:
                uncond = _append_tokens(uncond, filler)
            self.padded_cond_uncond = True
        return cond, uncond

    def pad_cond_uncond_v0(self, cond: Any, uncond: Any) -> tuple[Any, Any]:
        """The pre-1.6 padding: the uncond takes the cond's length (last token repeated, or cut)."""
        vec = uncond["crossattn"] if isinstance(uncond, dict) else uncond
        want = _token_count(cond)
        if vec.shape[1] < want:
            vec = torch.cat([vec, vec[:, -1:].expand(-1, want - vec.shape[1], -1)], dim=1)
        else:
            vec = vec[:, :want]
        self.padded_cond_uncond_v0 = True
        if isinstance(uncond, dict):
            uncond["crossattn"] = vec
            return cond, uncond
        return cond, vec

    def update_inner_model(self) -> None:
        """After a model switch: rebuild the model wrapper lazily and take the new model's conds."""
        self.model_wrap = None
        cond, uncond = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = cond
        self.sampler.sampler_extra_args["uncond"] = uncond

    # -- pieces of forward ------------------------------------------------------------------------------
    def _blend(self, latent: torch.Tensor) -> torch.Tensor:
        """Inpainting: keep the init latent where mask is 1, the sampled latent where nmask is 1."""
        return self.init_latent * self.mask + latent * self.nmask

    def _condition(self, text: Any, image_cond: torch.Tensor) -> dict[str, Any]:
        if isinstance(text, dict):
            return {**text, "c_concat": [image_cond]}
        return {"c_crossattn": [text], "c_concat": [image_cond]}

    def _skip_uncond(self, sigma_in: torch.Tensor, s_min_uncond: float) -> bool:
        """skip_early_cond, or NGMS (s_min_uncond) on odd calls below the sigma threshold."""
        opts = shared.opts
        extra = self.p.extra_generation_params if self.p is not None else {}
        early = getattr(opts, "skip_early_cond", 0.0)
        if early and self.step / max(self.total_steps or 1, 1) <= early:
            extra["Skip Early CFG"] = early
            return True
        every_step = getattr(opts, "s_min_uncond_all", False)
        if s_min_uncond and s_min_uncond > 0 and (self.step % 2 == 1 or every_step) and sigma_in[0] < s_min_uncond:
            extra["NGMS"] = s_min_uncond
            return True
        return False

    def _run_model(self, x_in: torch.Tensor, sigma_in: torch.Tensor, image_cond_in: torch.Tensor, text: Any,
                   uncond: Any, n_images: int, skip: bool) -> torch.Tensor:
        """Evaluate the inner model on all rows: one call, or slices of B rows when batch_cond_uncond is
        off, or (token lengths differ) the cond rows and the uncond rows separately."""
        rows = x_in.shape[0]
        together = shared.opts.batch_cond_uncond
        if skip or _token_count(text) == _token_count(uncond):
            pieces = [(0, rows, text if skip else catenate_conds([text, uncond]))]
            size = rows if together else n_images
        else:
            n_cond = text.shape[0]
            pieces = [(0, n_cond, text), (n_cond, rows, uncond)]
            size = n_images * 2 if together else n_images
        outputs = []
        for start, end, conds in pieces:
            for a in range(start, end, size):
                b = min(a + size, end)
                part = subscript_cond(conds, a - start, b - start)
                outputs.append(self.inner_model(x_in[a:b], sigma_in[a:b], cond=self._condition(part, image_cond_in[a:b])))
        return torch.cat(outputs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, uncond: Any, cond: Any, cond_scale: float,
                s_min_uncond: float, image_cond: torch.Tensor) -> torch.Tensor:
        state = shared.state
        if any((state.interrupted, state.skipped)):
            raise sd_samplers_common.InterruptedException()
        switched = sd_samplers_common.apply_refiner(self, sigma)
        if switched:  # the refiner's own conds
            cond, uncond = (self.sampler.sampler_extra_args[key] for key in ("cond", "uncond"))

        conds_list, text = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond_rows = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        blend_input = self.mask is not None and self.mask_before_denoising
        if blend_input:
            x = self._blend(x)

        n_images = len(conds_list)
        owner = [image for image, pairs in enumerate(conds_list) for _ in pairs] + list(range(n_images))
        order = torch.tensor(owner, dtype=torch.long, device=x.device)
        x_in, sigma_in, image_cond_in = x[order], sigma[order], image_cond[order]

        before = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps,
                                   text, uncond_rows, self)
        cfg_denoiser_callback(before)
        x_in, image_cond_in, sigma_in = before.x, before.image_cond, before.sigma
        text, uncond = before.text_cond, before.text_uncond

        skip = self._skip_uncond(sigma, s_min_uncond)
        if skip:
            x_in, sigma_in = x_in[:-n_images], sigma_in[:-n_images]
        self.padded_cond_uncond = self.padded_cond_uncond_v0 = False
        if _token_count(text) != _token_count(uncond):  # local copies (an SDXL dict in place)
            if shared.opts.pad_cond_uncond_v0:
                text, uncond = self.pad_cond_uncond_v0(text, uncond)
            elif shared.opts.pad_cond_uncond:
                text, uncond = self.pad_cond_uncond(text, uncond)
        x_out = self._run_model(x_in, sigma_in, image_cond_in, text, uncond, n_images, skip)
        firsts = [pairs[0][0] for pairs in conds_list]
        if skip:
            x_out = torch.cat([x_out, x_out[firsts]])

        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))
        self.last_noise_uncond = x_out[-n_images:].clone() if self.need_last_noise_uncond else None

        scale = 1.0 if skip else cond_scale * self.cond_scale_miltiplier
        denoised = self.combine_denoised(x_out, conds_list, uncond, scale)
        if self.mask is not None and not self.mask_before_denoising:
            denoised = self._blend(denoised)
        if self.sampler is not None:
            self.sampler.last_latent = self.get_pred_x0(x, x_out[firsts], sigma)

        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        self.step += 1
        return after.x
