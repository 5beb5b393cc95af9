"""Test double of backend/sampling/condition.py for these tests; no areas, masks, guidance, padding.

A text conditioning (a tensor of cross-attention tokens, or a dict with ``crossattn`` and SDXL's ``vector``)
becomes a list of condition dicts ``{"model_conds": {"c_crossattn": …, "y": …}, "strength": …}``, each
covering the whole batch. ``compile_weighted_conditions`` makes one dict per prompt position of an AND
composition: row i of dict k uses ``cond[index]`` of row i's k-th (index, weight) pair, with that weight as
row i's strength (0 where row i has fewer parts).
"""

from __future__ import annotations

from typing import Any

import torch


def _parts(cond: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(cond, dict):
        return cond["crossattn"], cond.get("vector")
    return cond, None


def _entry(cross: torch.Tensor, vector: torch.Tensor | None, strength: Any) -> dict:
    model_conds = {"c_crossattn": cross}
    if vector is not None:
        model_conds["y"] = vector
    return {"model_conds": model_conds, "strength": strength}


def compile_conditions(cond: Any) -> list[dict] | None:
    """One condition dict for the whole batch, strength 1."""
    if cond is None:
        return None
    cross, vector = _parts(cond)
    return [_entry(cross, vector, 1.0)]


def compile_weighted_conditions(cond: Any, weights: list[list[tuple[int, float]]]) -> list[dict]:
    """One condition dict per prompt position of the composition ``weights`` (one list per batch row)."""
    cross, vector = _parts(cond)
    widest = max(len(row) for row in weights)
    out = []
    for position in range(widest):
        picks = [row[position] if position < len(row) else (row[0][0], 0.0) for row in weights]
        rows = torch.tensor([index for index, _ in picks])
        strength = torch.tensor([float(weight) for _, weight in picks])
        if bool((strength == 1.0).all()):
            strength = 1.0
        out.append(_entry(cross[rows], None if vector is None else vector[rows], strength))
    return out
