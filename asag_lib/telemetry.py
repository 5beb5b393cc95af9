"""Telemetry: what each layer's transport plan did over one job (paper.md "next checks": how close the
finite Sinkhorn plan gets to the entropy maximum, and how far from the marginals it stops).

Per layer, every weak-pass call adds the plan's `SinkhornStats` (`weak.plan_stats`): row entropy divided
by log n_k (1.0 = the uniform plan, the maximum), the final row-marginal error and the iterations used.
For the Sinkhorn models each call samples one (batch row, head), rotating from call to call, in a small
separate kernel call, so the image keeps its bits and the cost stays small. Nothing is read back from the device while sampling (the values stay tensors until
the job reports), and nothing here runs unless the job asked for telemetry.

Reported once per job: a console table (layer × mean/min/max), two infotext keys (`ASAG entropy`,
`ASAG marginal error`; infotext values are callables the host evaluates when it writes each image's
infotext, i.e. after that image was sampled, hosts.md §1.2/§6.1), and a JSON file next to the first saved
image of the job. Only attributes of the host's objects are used; no host module is imported.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from asag_lib import params

STATE_KEY = "telemetry"
JSON_SUFFIX = ".asag.json"
ENTROPY_KEY = params.INFOTEXT_PREFIX + "entropy"
MARGINAL_KEY = params.INFOTEXT_PREFIX + "marginal error"
METRICS = ("entropy", "marginal_error", "iterations")


def _layer_key(layer: Any) -> Any:
    # modules by identity (holding no reference to them); Forge block keys as they are
    return ("module", id(layer)) if isinstance(layer, nn.Module) else layer


class Recorder:
    """Per-layer statistics of one job's weak passes."""

    def __init__(self) -> None:
        self.names: dict[Any, str] = {}
        self._values: dict[Any, list[tuple[Tensor, Tensor, Tensor]]] = {}
        self._picks: dict[Any, int] = {}

    def name(self, layer: Any, name: str) -> None:
        """Give a layer (module or Forge key) its display name, e.g. 'middle.0.0'."""
        self.names[_layer_key(layer)] = name

    def pick(self, layer: Any, n: int) -> int:
        """Which of the n (batch row, head) slices this layer's call samples: rotates call after call."""
        key = ("pick", _layer_key(layer))
        count = self._picks.get(key, 0)
        self._picks[key] = count + 1
        return count % max(n, 1)

    def record(self, layer: Any, n_keys: int, stats: Any) -> None:
        """Add one kernel call's stats; the division by log n_k stays on the device (no sync)."""
        entropy = stats.row_entropy.detach().reshape(-1).float()
        entropy = entropy / math.log(n_keys) if n_keys > 1 else torch.ones_like(entropy)
        self._values.setdefault(_layer_key(layer), []).append(
            (entropy, stats.marginal_error.detach().reshape(-1).float(),
             stats.iterations_used.detach().reshape(-1).float()))

    def __bool__(self) -> bool:
        return bool(self._values)

    def _label(self, key: Any) -> str:
        if key in self.names:
            return self.names[key]
        return ".".join(map(str, key)) if isinstance(key, tuple) and key[:1] != ("module",) else "layer"

    def layers(self) -> dict[str, dict[str, dict[str, float]]]:
        """{layer name: {metric: {mean, min, max, n}}}, in the order the layers were first seen."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for key, calls in self._values.items():
            row: dict[str, dict[str, float]] = {}
            for index, metric in enumerate(METRICS):
                values = torch.cat([call[index].cpu() for call in calls]).double()
                row[metric] = {"mean": float(values.mean()), "min": float(values.min()),
                               "max": float(values.max()), "n": int(values.numel())}
            out[self._label(key)] = row
        return out

    def overall(self) -> dict[str, float]:
        """Means over every (call, row, head) of the job, all layers together."""
        totals = {}
        for index, metric in enumerate(METRICS):
            values = [call[index].cpu() for calls in self._values.values() for call in calls]
            totals[metric] = float(torch.cat(values).double().mean()) if values else math.nan
        return totals

    def infotext(self) -> dict[str, str]:
        if not self:
            return {}
        totals = self.overall()
        return {ENTROPY_KEY: f"{totals['entropy']:.4f}", MARGINAL_KEY: f"{totals['marginal_error']:.3g}"}

    def table(self) -> str:
        """The console table: one row per layer, mean/min/max of each metric."""
        header = f"{'layer':<16} {'entropy mean/min/max':>24} {'marginal err mean/min/max':>30} {'iters mean/min/max':>20}"
        lines = [header, "-" * len(header)]
        for name, row in self.layers().items():
            entropy, error, iters = (row[m] for m in METRICS)
            lines.append(f"{name:<16} {entropy['mean']:>8.4f}{entropy['min']:>8.4f}{entropy['max']:>8.4f} "
                         f"{error['mean']:>10.2e}{error['min']:>10.2e}{error['max']:>10.2e} "
                         f"{iters['mean']:>7.2f}{iters['min']:>6.0f}{iters['max']:>7.0f}")
        return "\n".join(lines)

    def to_dict(self, settings: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {"overall": self.overall(), "layers": self.layers()}
        if settings is not None:
            out["weak_model"] = getattr(settings, "weak_model", "asag")
            out["layers_spec"] = getattr(settings, "layers", None)
            out["iterations"] = getattr(settings, "iterations", None)
            out["tolerance"] = getattr(settings, "tolerance", None)
        return out


# ------------------------------------------------------------------------------------------------
# job-level glue (attributes only)


def recorder(job: Any) -> Recorder | None:
    """The job's recorder when its settings ask for telemetry, else None (the kernel then skips stats)."""
    if job is None or not getattr(job.settings, "telemetry", False):
        return None
    rec = job.state.get(STATE_KEY)
    if rec is None:
        rec = job.state[STATE_KEY] = Recorder()
    return rec


def attach_infotext(p: Any, rec: Recorder | None) -> None:
    """Infotext entries evaluated by the host when it writes each image's infotext (after sampling).

    They return None, which the host omits, while nothing was recorded."""
    extra = getattr(p, "extra_generation_params", None)
    if rec is None or not isinstance(extra, dict):
        return

    def value_of(key: str):
        def value(**_: Any) -> str | None:
            return rec.infotext().get(key)
        return value

    extra[ENTROPY_KEY] = value_of(ENTROPY_KEY)
    extra[MARGINAL_KEY] = value_of(MARGINAL_KEY)


def finish(job: Any) -> None:
    """End of the job: print the per-layer table once."""
    rec = job.state.get(STATE_KEY) if job is not None else None
    if rec:
        print("ASAG telemetry (entropy = row entropy / log n_keys, 1 = uniform plan):\n" + rec.table(), flush=True)


def write_json(job: Any, image_path: str) -> str | None:
    """Write (or update) the job's JSON next to its first saved image; returns the path written."""
    rec = job.state.get(STATE_KEY) if job is not None else None
    if not rec or not image_path:
        return None
    path = job.state.get("telemetry_json")
    images = job.state.setdefault("telemetry_images", [])
    if path is None:
        path = job.state["telemetry_json"] = os.path.splitext(image_path)[0] + JSON_SUFFIX
    images.append(os.path.basename(image_path))
    data = rec.to_dict(job.settings)
    data["images"] = list(images)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    return path


def on_image_saved(save_params: Any) -> None:
    """`script_callbacks.on_image_saved` callback: the JSON next to the job's images."""
    from asag_lib.hosts.job import get_job

    try:
        write_json(get_job(getattr(save_params, "p", None)), getattr(save_params, "filename", ""))
    except OSError as exc:  # a full disk must not break the host's saving
        print(f"ASAG: telemetry JSON not written ({exc})", flush=True)
