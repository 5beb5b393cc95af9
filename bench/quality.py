"""Score guidance configurations through a running WebUI's own API (A1111 or a Forge host, `--api`).

Generates every prompt × seed × configuration through `/sdapi/v1/txt2img`, one folder per configuration
(resumable: images already on disk are skipped), then scores them with the metrics installed here and
prints mean ± 95 % CI per metric and configuration plus the paired win rate against `off`.

Configurations (`--config`, repeatable):
  off                          ASAG not sent (the host on its own)
  asag:1.5                     ASAG at scale 1.5 with its defaults
  asag:3,layers=deep           scale 3 and any ASAG parameter by its API name (README table)
  weak_model=identity:2        the first option may stand in for `asag` (here: PAG at scale 2)
  off,cfg_scale=1              txt2img fields too: cfg_scale, steps, sampler_name, scheduler, negative_prompt
A layer list keeps its commas: `asag:2,layers=input.7,output.0` (a piece without '=' continues the value).

Metrics (used when installed; missing ones are named with the pip command that adds them):
  clip         CLIPScore (torchmetrics + transformers, openai/clip-vit-large-patch14)
  imagereward  ImageReward-v1.0 (image-reward)
  hps          HPSv2.1 (hpsv2)
  fid          FID of each configuration against --reference (torchmetrics[image] + torch-fidelity)
  --scorer module:function adds a scorer of your own: function(list of (png path, prompt)) -> list of float.

Several `--url`: jobs are spread over the servers (one WebUI per GPU or machine); each job is done once,
and the jobs of a server that fails are retried on the others.
Only the standard library is needed to generate; metrics, plots (matplotlib) and grids (Pillow) are optional.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import queue
import re
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROMPTS = os.path.join(HERE, "prompts.txt")
PAYLOAD_KEYS = ("cfg_scale", "steps", "sampler_name", "scheduler", "negative_prompt")
ASAG_NAMES = ("enabled", "scale", "layers", "iterations", "tolerance", "start", "end", "hires", "rescale", "plan",
              "weak_pass", "weak_model", "blur_sigma", "telemetry", "joint")
"""The extension's API names (asag_lib/params.py); the server validates the values."""


class QualityError(RuntimeError):
    """A problem the user can fix (message says how); printed without a traceback."""


class ServerDown(RuntimeError):
    """The server did not answer (connection refused, timeout, 5xx): its jobs go to the other servers."""


# ------------------------------------------------------------------------------------------------
# configurations


@dataclasses.dataclass(frozen=True)
class Config:
    spec: str
    asag: dict[str, Any] | None
    """ASAG args by API name (dict form); None = ASAG not sent."""
    payload: dict[str, Any]

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", self.spec).strip("_") or "config"


def _value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip()


def parse_config(spec: str) -> Config:
    """`off`, `asag[:scale]`, `key=value[:scale]`, then `,key=value` options (see the module docstring)."""
    pieces: list[str] = []
    for piece in spec.split(","):
        if pieces and "=" not in piece:
            pieces[-1] += "," + piece  # a layer list: the value goes on
        else:
            pieces.append(piece.strip())
    head, options = pieces[0], pieces[1:]
    scale = None
    if ":" in head:
        head, _, scale_text = head.rpartition(":")
        try:
            scale = float(scale_text)
        except ValueError:
            raise QualityError(f"config {spec!r}: {scale_text!r} after ':' is not a scale (a number)") from None
    asag: dict[str, Any] | None
    if head == "off":
        if scale is not None:
            raise QualityError(f"config {spec!r}: 'off' takes no scale")
        asag = None
    elif head == "asag":
        asag = {"enabled": True}
    elif "=" in head:
        asag = {"enabled": True}
        options.insert(0, head)
    else:
        raise QualityError(f"config {spec!r}: starts with {head!r}; accepted: 'off', 'asag[:scale]' or "
                           "'name=value[:scale]'")
    if scale is not None:
        asag["scale"] = scale
    payload: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        key = key.strip()
        if not sep:
            raise QualityError(f"config {spec!r}: option {option!r} is not name=value")
        if key in PAYLOAD_KEYS:
            payload[key] = _value(raw)
        elif key in ASAG_NAMES:
            if asag is None:
                raise QualityError(f"config {spec!r}: ASAG option {key!r} on an 'off' configuration")
            asag[key] = _value(raw) if key not in ("layers",) else raw.strip()
        else:
            raise QualityError(f"config {spec!r}: unknown option {key!r}; accepted: ASAG parameters "
                               f"{', '.join(ASAG_NAMES)} or txt2img fields {', '.join(PAYLOAD_KEYS)}")
    return Config(spec, asag, payload)


# ------------------------------------------------------------------------------------------------
# jobs and the server client


@dataclasses.dataclass(frozen=True)
class Job:
    config: Config
    prompt_index: int
    prompt: str
    seed: int

    def path(self, out: str) -> str:
        return os.path.join(out, self.config.folder, f"{self.prompt_index:04d}-{self.seed}.png")


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+-\d+", part):
            lo, hi = map(int, part.split("-"))
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"-?\d+", part):
            seeds.append(int(part))
        elif part:
            raise QualityError(f"--seeds: {part!r} is not a seed or a range such as 0-9")
    if not seeds:
        raise QualityError("--seeds: no seed given")
    return seeds


def read_prompts(path: str, limit: int | None = None) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            prompts = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    except OSError as exc:
        raise QualityError(f"cannot read the prompt file {path}: {exc}") from None
    if not prompts:
        raise QualityError(f"the prompt file {path} has no prompts (one per line)")
    return prompts[:limit] if limit else prompts


class Client:
    """One WebUI server's API."""

    def __init__(self, url: str, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, path: str, payload: dict | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            if exc.code == 404:
                raise QualityError(f"{self.url}{path} answered 404: start the WebUI with --api") from None
            if exc.code >= 500:
                raise ServerDown(f"{self.url} answered HTTP {exc.code}: {body}") from None
            raise QualityError(f"{self.url}{path} rejected the request (HTTP {exc.code}): {body}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerDown(f"cannot reach the WebUI at {self.url} ({getattr(exc, 'reason', exc)}); is it "
                             "running, started with --api, and is the URL right?") from None

    def check(self, need_asag: bool) -> None:
        """The server answers and (when a configuration uses it) has ASAG loaded."""
        scripts = self._request("/sdapi/v1/scripts")
        names = [str(name).lower() for name in scripts.get("txt2img", [])]
        if need_asag and "asag" not in names:
            raise QualityError(f"{self.url} has no ASAG extension loaded (its txt2img scripts: "
                               f"{', '.join(names) or 'none'}); install it in the WebUI's extensions folder")

    def txt2img(self, job: Job, base: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        payload = {**base, **job.config.payload, "prompt": job.prompt, "seed": job.seed, "batch_size": 1,
                   "n_iter": 1, "send_images": True, "save_images": False}
        if job.config.asag is not None:
            payload["alwayson_scripts"] = {"ASAG": {"args": [job.config.asag]}}
        answer = self._request("/sdapi/v1/txt2img", payload)
        images = answer.get("images") or []
        if not images:
            raise QualityError(f"{self.url} returned no image for {job.config.spec!r}, prompt {job.prompt_index}")
        info = answer.get("info")
        info = json.loads(info) if isinstance(info, str) else (info or {})
        text = (info.get("infotexts") or [""])[0]
        if job.config.asag is not None and "ASAG scale" not in text:
            error = re.search(r'ASAG error: ("(?:[^"\\]|\\.)*"|[^,\n]*)', text)
            detail = f": {error.group(1)}" if error else " (no 'ASAG scale' in the image's infotext)"
            raise QualityError(f"{self.url}: ASAG did not run for {job.config.spec!r}{detail}")
        data = images[0].split(",", 1)[-1] if images[0].startswith("data:") else images[0]
        return base64.b64decode(data), info


# ------------------------------------------------------------------------------------------------
# generation: a queue shared by one worker per server


class Progress:
    def __init__(self, total: int, stream: Any = sys.stderr):
        self.total, self.done, self.stream, self.start = total, 0, stream, time.monotonic()
        self.lock = threading.Lock()

    def step(self, note: str = "") -> None:
        with self.lock:
            self.done += 1
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                              f"{100 * self.done / max(self.total, 1):3.0f}%  ETA {_duration(eta)} {note[:40]:<40}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def generate(jobs: Sequence[Job], clients: Sequence[Client], out: str, base: dict[str, Any],
             log: Callable[[str], None] = print, stream: Any = sys.stderr) -> dict[str, int]:
    """Run the jobs whose image is missing; returns {'done': n, 'skipped': n, server url: n done}."""
    todo = [job for job in jobs if not os.path.exists(job.path(out))]
    counts: dict[str, int] = {"done": 0, "skipped": len(jobs) - len(todo)}
    if not todo:
        return counts
    pending: queue.Queue[Job] = queue.Queue()
    for job in todo:
        pending.put(job)
    progress = Progress(len(todo), stream)
    lock = threading.Lock()
    alive = {client.url: True for client in clients}
    fatal: list[BaseException] = []
    remaining = [len(todo)]

    def worker(client: Client) -> None:
        try:
            work(client)
        except BaseException as exc:  # anything unexpected (a full disk…) stops every worker, never hangs one
            fatal.append(exc)

    def work(client: Client) -> None:
        while not fatal:
            with lock:
                if remaining[0] == 0:
                    return
            try:
                job = pending.get(timeout=0.2)
            except queue.Empty:
                with lock:
                    if not any(alive.values()) or remaining[0] == 0:
                        return
                continue
            try:
                png, _ = client.txt2img(job, base)
            except ServerDown as exc:
                pending.put(job)  # another server takes it
                with lock:
                    alive[client.url] = False
                log(f"\nserver {client.url} failed ({exc}); its jobs go to the other servers")
                return
            except BaseException as exc:  # a QualityError is the same on every server: stop
                fatal.append(exc)
                return
            _write_atomic(job.path(out), png)
            with lock:
                remaining[0] -= 1
                counts["done"] += 1
                counts[client.url] = counts.get(client.url, 0) + 1
            progress.step(f"{client.url} {job.config.folder}")

    threads = [threading.Thread(target=worker, args=(client,), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if fatal:
        raise fatal[0]
    if remaining[0]:
        raise QualityError(f"every server failed ({', '.join(alive)}); {remaining[0]} image(s) not made. "
                           "Rerun when a server is back: finished images are kept.")
    return counts


# ------------------------------------------------------------------------------------------------
# statistics


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile by bisection on the CDF (Simpson integration of the density); stdlib only."""
    if df <= 0:
        return math.nan
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        n = 2000
        h = x / n
        total = 0.0
        for i in range(n + 1):
            weight = 1 if i in (0, n) else (4 if i % 2 else 2)
            t = i * h
            total += weight * math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))
        return 0.5 + total * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % confidence interval, Student t); half-width NaN below 2 values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan
    return mean, t_quantile(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)


def win_rate(candidate: dict[Any, float], baseline: dict[Any, float]) -> tuple[float, int]:
    """Share of paired items (same prompt and seed) where the candidate scores higher; ties count half."""
    keys = [key for key in candidate if key in baseline]
    if not keys:
        return math.nan, 0
    wins = sum(1.0 if candidate[k] > baseline[k] else 0.5 if candidate[k] == baseline[k] else 0.0 for k in keys)
    return wins / len(keys), len(keys)


# ------------------------------------------------------------------------------------------------
# metrics


@dataclasses.dataclass
class Metric:
    name: str
    modules: tuple[str, ...]
    pip: str
    make: Callable[[argparse.Namespace], Callable[[list[tuple[str, str]]], list[float]]] | None = None
    per_set: bool = False
    """FID: one value per configuration, no per-image scores."""

    def missing(self) -> list[str]:
        return [name for name in self.modules if importlib.util.find_spec(name) is None]


def _clip_scorer(args: argparse.Namespace):
    import torch
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path="openai/clip-vit-large-patch14")

    def score(items):
        out = []
        for path, prompt in items:
            out.append(float(metric(_image_tensor(path, torch), prompt)))
        return out

    return score


def _imagereward_scorer(args: argparse.Namespace):
    import ImageReward

    model = ImageReward.load("ImageReward-v1.0")
    return lambda items: [float(model.score(prompt, path)) for path, prompt in items]


def _hps_scorer(args: argparse.Namespace):
    import hpsv2

    return lambda items: [float(hpsv2.score(path, prompt, hps_version="v2.1")[0]) for path, prompt in items]


def _image_tensor(path: str, torch: Any):
    from PIL import Image

    image = Image.open(path).convert("RGB")
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.reshape(image.height, image.width, 3).permute(2, 0, 1)


METRICS: dict[str, Metric] = {
    "clip": Metric("clip", ("torchmetrics", "transformers", "PIL"), "pip install torchmetrics transformers pillow",
                   _clip_scorer),
    "imagereward": Metric("imagereward", ("ImageReward",), "pip install image-reward", _imagereward_scorer),
    "hps": Metric("hps", ("hpsv2",), "pip install hpsv2", _hps_scorer),
    "fid": Metric("fid", ("torchmetrics", "torch_fidelity", "PIL"),
                  "pip install torchmetrics torch-fidelity pillow", None, per_set=True),
}


def fid_of(folder: str, reference: str) -> float:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=2048)
    for path, real in [(os.path.join(reference, n), True) for n in sorted(os.listdir(reference))] + \
                      [(os.path.join(folder, n), False) for n in sorted(os.listdir(folder)) if n.endswith(".png")]:
        if path.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
            fid.update(_image_tensor(path, torch).unsqueeze(0), real=real)
    return float(fid.compute())


def load_scorer(spec: str) -> tuple[str, Callable[[list[tuple[str, str]]], list[float]]]:
    module_name, _, function = spec.partition(":")
    if not function:
        raise QualityError(f"--scorer {spec!r}: give module:function")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise QualityError(f"--scorer {spec!r}: cannot import {module_name} ({exc})") from None
    finally:
        sys.path.pop(0)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise QualityError(f"--scorer {spec!r}: {module_name} has no function {function}")
    return function, fn


def score_all(metric_name: str, scorer: Callable, jobs: Sequence[Job], out: str) -> dict[str, float]:
    """Scores by image path relative to `out`, cached in out/scores/<metric>.json (resumable too)."""
    cache_path = os.path.join(out, "scores", metric_name + ".json")
    cache: dict[str, float] = {}
    if os.path.exists(cache_path):
        with open(cache_path, encoding="utf-8") as handle:
            cache = json.load(handle)
    todo = [job for job in jobs if os.path.relpath(job.path(out), out) not in cache and os.path.exists(job.path(out))]
    for start in range(0, len(todo), 16):
        chunk = todo[start:start + 16]
        values = scorer([(job.path(out), job.prompt) for job in chunk])
        if len(values) != len(chunk):
            raise QualityError(f"scorer {metric_name} returned {len(values)} scores for {len(chunk)} images")
        for job, value in zip(chunk, values, strict=True):
            cache[os.path.relpath(job.path(out), out)] = float(value)
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        with open(cache_path, "w", encoding="utf-8") as handle:
            json.dump(cache, handle, indent=0)
    return cache


# ------------------------------------------------------------------------------------------------
# report


def summarise(configs: Sequence[Config], jobs: Sequence[Job], out: str,
              scores: dict[str, dict[str, float]], set_values: dict[str, dict[str, float]]) -> dict[str, Any]:
    """{metric: {config spec: {mean, ci95, n, win_rate, pairs}}} (+ per-set metrics as {value})."""
    baseline = next((c for c in configs if c.spec == "off"), None)
    summary: dict[str, Any] = {}
    for metric, by_path in scores.items():
        per_config: dict[str, dict[Any, float]] = {}
        for job in jobs:
            rel = os.path.relpath(job.path(out), out)
            if rel in by_path:
                per_config.setdefault(job.config.spec, {})[(job.prompt_index, job.seed)] = by_path[rel]
        rows = {}
        for config in configs:
            values = per_config.get(config.spec, {})
            mean, ci = mean_ci(list(values.values()))
            row = {"mean": mean, "ci95": ci, "n": len(values)}
            if baseline is not None and config is not baseline:
                row["win_rate"], row["pairs"] = win_rate(values, per_config.get(baseline.spec, {}))
            rows[config.spec] = row
        summary[metric] = rows
    for metric, values in set_values.items():
        summary[metric] = {spec: {"value": value} for spec, value in values.items()}
    return summary


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def render_table(summary: dict[str, Any]) -> str:
    lines = ["| metric | configuration | mean ± 95 % CI | n | win rate vs off |", "|---|---|---|---|---|"]
    for metric, rows in summary.items():
        for spec, row in rows.items():
            if "value" in row:
                lines.append(f"| {metric} | {spec} | {_fmt(row['value'])} | | |")
                continue
            win = f"{100 * row['win_rate']:.1f} % of {row['pairs']}" if "win_rate" in row and row["pairs"] else ""
            lines.append(f"| {metric} | {spec} | {_fmt(row['mean'])} ± {_fmt(row['ci95'], 3)} | {row['n']} | {win} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], out: str) -> list[str]:
    """One bar chart per metric (matplotlib), mean with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    for metric, rows in summary.items():
        specs = list(rows)
        means = [rows[s].get("mean", rows[s].get("value")) for s in specs]
        errors = [0 if math.isnan(rows[s].get("ci95", 0.0)) else rows[s].get("ci95", 0.0) for s in specs]
        fig, ax = plt.subplots(figsize=(1.2 * len(specs) + 2, 3.5))
        ax.bar(range(len(specs)), means, yerr=errors, capsize=4)
        ax.set_xticks(range(len(specs)), specs, rotation=30, ha="right")
        ax.set_ylabel(metric)
        fig.tight_layout()
        path = os.path.join(out, "plots", metric + ".png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def grids(configs: Sequence[Config], prompts: Sequence[str], seeds: Sequence[int], out: str) -> list[str]:
    """One grid per prompt (Pillow): a row per configuration, a column per seed."""
    from PIL import Image, ImageDraw

    written = []
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    label_w = 160
    for index in range(len(prompts)):
        cells = [[Job(c, index, prompts[index], s).path(out) for s in seeds] for c in configs]
        first = next((p for row in cells for p in row if os.path.exists(p)), None)
        if first is None:
            continue
        with Image.open(first) as image:
            w, h = image.size
        grid = Image.new("RGB", (label_w + w * len(seeds), h * len(configs)), "white")
        draw = ImageDraw.Draw(grid)
        for r, (config, row) in enumerate(zip(configs, cells, strict=True)):
            draw.text((4, r * h + 4), config.spec, fill="black")
            for c, path in enumerate(row):
                if os.path.exists(path):
                    with Image.open(path) as image:
                        grid.paste(image.convert("RGB"), (label_w + c * w, r * h))
        path = os.path.join(out, "grids", f"{index:04d}.png")
        grid.save(path)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# command line


def _check_run_file(out: str, run: dict[str, Any]) -> None:
    """A resumed run must use the same image settings (otherwise the folders would mix two runs)."""
    path = os.path.join(out, "run.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            before = json.load(handle)
        changed = [key for key in run if key != "configs" and before.get(key) != run[key]]
        if changed:
            raise QualityError(f"{out} holds a run made with other settings ({', '.join(changed)} differ); "
                               "use another --out folder or the same settings")
    os.makedirs(out, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(run, handle, indent=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", help="WebUI base URL (repeat for several servers); "
                        "default http://127.0.0.1:7860")
    parser.add_argument("--out", default="asag-quality", help="output folder (one subfolder per configuration)")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS, help="prompt file, one prompt per line")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--seeds", default="0-1", help="seeds, e.g. 0-3 or 1,5,9")
    parser.add_argument("--config", action="append", help="configuration (repeat); default: off and asag:1.5")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--cfg", type=float, default=5.0, help="CFG scale for every configuration")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--metrics", default="clip,imagereward,hps,fid", help="metrics to use when installed")
    parser.add_argument("--scorer", action="append", default=[], help="module:function, a scorer of your own")
    parser.add_argument("--reference", help="folder of reference images for FID")
    parser.add_argument("--no-generate", action="store_true", help="only score what is on disk")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    return parser


def main(argv: Sequence[str] | None = None, stream: Any = sys.stderr) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    configs = [parse_config(spec) for spec in (args.config or ["off", "asag:1.5"])]
    if len({c.folder for c in configs}) != len(configs):
        raise QualityError("two configurations map to the same folder; make them differ")
    prompts = read_prompts(args.prompts, args.limit)
    seeds = parse_seeds(args.seeds)
    jobs = [Job(config, index, prompt, seed) for config in configs for index, prompt in enumerate(prompts)
            for seed in seeds]
    base = {"width": args.width, "height": args.height, "steps": args.steps, "sampler_name": args.sampler,
            "cfg_scale": args.cfg, "negative_prompt": args.negative}
    _check_run_file(args.out, {**base, "prompts": prompts, "seeds": seeds, "configs": [c.spec for c in configs]})

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    if not args.no_generate:
        clients = [Client(url, args.timeout) for url in (args.url or ["http://127.0.0.1:7860"])]
        need_asag = any(c.asag is not None for c in configs)
        usable = []
        for client in clients:
            try:
                client.check(need_asag)
                usable.append(client)
            except ServerDown as exc:
                say(f"skipping {client.url}: {exc}")
        if not usable:
            raise QualityError("no WebUI reachable: " + "; ".join(c.url for c in clients) +
                               ". Start it with --api (e.g. ./webui.sh --api) and check --url.")
        say(f"{len(jobs)} images ({len(configs)} configurations × {len(prompts)} prompts × {len(seeds)} seeds) "
            f"on {len(usable)} server(s) -> {args.out}")
        counts = generate(jobs, usable, args.out, base, log=say, stream=stream)
        say(f"made {counts['done']} image(s), {counts['skipped']} already there")

    scorers: list[tuple[str, Callable]] = [load_scorer(spec) for spec in args.scorer]
    set_metrics: list[str] = []
    for name in [m.strip() for m in args.metrics.split(",") if m.strip()]:
        metric = METRICS.get(name)
        if metric is None:
            raise QualityError(f"--metrics: unknown metric {name!r}; accepted: {', '.join(METRICS)}")
        missing = metric.missing()
        if missing:
            say(f"metric {name}: not installed (missing {', '.join(missing)}); add it with: {metric.pip}")
            continue
        if metric.per_set:
            if args.reference:
                set_metrics.append(name)
            else:
                say(f"metric {name}: needs --reference FOLDER (real images to compare with)")
            continue
        scorers.append((name, metric.make(args)))

    scores = {name: score_all(name, scorer, jobs, args.out) for name, scorer in scorers}
    set_values = {name: {c.spec: fid_of(os.path.join(args.out, c.folder), args.reference) for c in configs}
                  for name in set_metrics}
    summary = summarise(configs, jobs, args.out, scores, set_values)
    table = render_table(summary)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1)
    if not summary:
        say("no metric available: install one (see above) or pass --scorer module:function")
    if importlib.util.find_spec("matplotlib") is not None and summary:
        say("plots: " + ", ".join(plot(summary, args.out)))
    elif summary:
        say("plots skipped: pip install matplotlib")
    if importlib.util.find_spec("PIL") is not None:
        say(f"grids: {len(grids(configs, prompts, seeds, args.out))} in {os.path.join(args.out, 'grids')}")
    else:
        say("grids skipped: pip install pillow")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (QualityError, ServerDown) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted; finished images are kept, rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
