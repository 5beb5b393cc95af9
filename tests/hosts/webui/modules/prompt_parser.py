"""Test double of modules.prompt_parser for these tests; no prompt editing, alternation or emphasis.

AND sub-prompts with ':weight' suffixes and the conditioning containers the CFG denoiser reads; every
prompt has one schedule entry that lasts the whole pass.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch


class ScheduledPromptConditioning(NamedTuple):
    """One cond (tensor [tokens, dim] or dict of such rows) valid until `end_at_step`."""

    end_at_step: int
    cond: Any


class SdConditioning(list):
    """A list of prompt strings plus what the encoders need to know about the job."""

    def __init__(self, prompts, is_negative_prompt: bool = False, width: int | None = None,
                 height: int | None = None, copy_from: Any = None) -> None:
        super().__init__(prompts)
        source = copy_from if copy_from is not None else prompts
        self.is_negative_prompt = is_negative_prompt or getattr(source, "is_negative_prompt", False)
        self.width = width or getattr(source, "width", None)
        self.height = height or getattr(source, "height", None)


class ComposableScheduledPromptConditioning:
    """One AND sub-prompt: its schedule and its weight."""

    def __init__(self, schedules: list[ScheduledPromptConditioning], weight: float = 1.0) -> None:
        self.schedules, self.weight = schedules, weight


class MulticondLearnedConditioning:
    """The positive conds of a batch: `batch[i]` lists image i's sub-prompts."""

    def __init__(self, shape: tuple[int, ...], batch: list[list[ComposableScheduledPromptConditioning]]) -> None:
        self.shape = shape
        self.batch = batch


class DictWithShape(dict):
    """SDXL conds (`crossattn`, `vector`): a dict whose `.shape` is the cross-attention tensor's shape."""

    def __init__(self, x: dict, shape: Any = None) -> None:
        super().__init__()
        self.update(x)

    @property
    def shape(self) -> torch.Size:
        return self.get("crossattn").shape


_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"^(?P<text>.*?)\s*:\s*(?P<w>[-+]?\d*\.?\d+)\s*$", re.S)


def _split_weight(part: str) -> tuple[str, float]:
    found = _TRAILING_WEIGHT.match(part)
    if found is None:
        return part.strip(), 1.0
    return found.group("text").strip(), float(found.group("w"))


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """Per prompt the (index into the flat list, weight) of each sub-prompt; the flat list of distinct
    sub-prompt texts; and text -> index."""
    flat: list[str] = []
    where: dict[str, int] = {}
    per_prompt = []
    for full_prompt in prompts:
        entries = []
        for part in _AND.split(full_prompt):
            text, weight = _split_weight(part)
            if text not in where:
                where[text] = len(flat)
                flat.append(text)
            entries.append((where[text], weight))
        per_prompt.append(entries)
    return per_prompt, flat, where


def _row(cond: Any, i: int) -> Any:
    if isinstance(cond, dict):
        return {key: value[i] for key, value in cond.items()}
    return cond[i]


def get_learned_conditioning(model: Any, prompts: list[str], steps: int, hires_steps: int | None = None,
                             use_old_scheduling: bool = False) -> list[list[ScheduledPromptConditioning]]:
    """One single-entry schedule per prompt, encoded with `model.get_learned_conditioning`."""
    texts = SdConditioning(prompts) if not isinstance(prompts, SdConditioning) else prompts
    encoded = model.get_learned_conditioning(texts)
    return [[ScheduledPromptConditioning(steps, _row(encoded, i))] for i in range(len(texts))]


def get_multicond_learned_conditioning(model: Any, prompts: list[str], steps: int, hires_steps: int | None = None,
                                       use_old_scheduling: bool = False) -> MulticondLearnedConditioning:
    """Split AND sub-prompts, encode the distinct texts once, and keep each image's weighted list."""
    per_prompt, flat, _ = get_multicond_prompt_list(list(prompts))
    copy = SdConditioning(flat, copy_from=prompts) if isinstance(prompts, SdConditioning) else flat
    schedules = get_learned_conditioning(model, copy, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(schedules[i], w) for i, w in entries] for entries in per_prompt]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


def _active(schedules: list[ScheduledPromptConditioning], step: int) -> Any:
    for entry in schedules:
        if step <= entry.end_at_step:
            return entry.cond
    return schedules[-1].cond


def stack_conds(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack [tokens, dim] rows, repeating each row's last token to the longest length."""
    longest = max(r.shape[0] for r in rows)
    padded = [r if r.shape[0] == longest else torch.cat([r, r[-1:].expand(longest - r.shape[0], -1)]) for r in rows]
    return torch.stack(padded)


def _stack(rows: list[Any]) -> Any:
    if isinstance(rows[0], dict):
        return DictWithShape({key: _stack([r[key] for r in rows]) for key in rows[0]})
    if rows[0].dim() == 1:
        return torch.stack(rows)
    return stack_conds(rows)


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step: int) -> Any:
    """The conds active at `current_step`, one row per prompt."""
    return _stack([_active(schedules, current_step) for schedules in c])


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step: int) -> tuple[list[list[tuple[int, float]]], Any]:
    """(conds_list, tensor): every sub-prompt's row in image order, and per image its (row, weight) pairs."""
    rows: list[Any] = []
    conds_list = []
    for subprompts in c.batch:
        pairs = []
        for sub in subprompts:
            pairs.append((len(rows), sub.weight))
            rows.append(_active(sub.schedules, current_step))
        conds_list.append(pairs)
    return conds_list, _stack(rows)
