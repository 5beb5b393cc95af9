"""The timing half of `bench/gpu.sh` (issue 12): kernel table and end-to-end steps, as JSON and Markdown.

    python bench/gpu_bench.py OUT_DIR [--dry-run]

Kernel: fp16 inputs (fp32 on a CPU dry run), 2 Sinkhorn iterations, tol=0; each path forced by name, the
Triton path in both variants (`triton-fused`: k + 1 passes with the fused row pass, `triton-2k+1`: one LSE
kernel per half-step; peak memory includes the fused variant's partial buffer); time
is the median of interleaved runs (CUDA-synchronised), peak extra memory = peak allocated during the call −
allocated before it (CUDA only). End to end: `bench/e2e.py`'s scenarios, each in its own process, at full
SDXL width (320), fp16, 1024×1024 (latent 128), for the `middle` and `outputs` presets.
`--dry-run` runs the same code on the CPU at tiny shapes (how CI keeps it working).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asag_lib import sinkhorn as sk  # noqa: E402

KERNEL_CASES = [("N=1024 (SDXL mid)", (2, 20, 1024, 64)), ("N=4096", (2, 10, 4096, 64)),
                ("N=16384", (1, 10, 16384, 64))]
DRY_KERNEL_CASES = [("N=96 dry", (1, 2, 96, 40))]
E2E_SCENARIOS = ("cfg", "cfg+off", "cfg+pag", "cfg+asag", "cfg+asag-bat")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _path_fn(path, fused=None):
    """One call of the kernel on `path`; for "triton", `fused` picks the variant (sinkhorn_triton.FUSED)."""
    def fn(q, k, v):
        from asag_lib import sinkhorn_triton

        before = sinkhorn_triton.FUSED, sinkhorn_triton.CHOSEN
        if fused is not None:  # the variant named here, not the one the probe chose for this device
            sinkhorn_triton.FUSED, sinkhorn_triton.CHOSEN = fused, {}
        try:
            return sk._sinkhorn_attention(q, k, v, iterations=2, tol=0.0, scale=None, rescale=True,
                                          return_stats=False, memory_budget_bytes=None, path=path)
        finally:
            sinkhorn_triton.FUSED, sinkhorn_triton.CHOSEN = before
    return fn


#: The Triton engine's two variants (asag_lib/sinkhorn_triton.py): which is faster needs a GPU to tell.
TRITON_VARIANTS = {"triton-fused": True, "triton-2k+1": False}


def _impls(device):
    paths = ["cuda", "chunked"] if device.type == "cuda" else ["flash_cpu", "chunked"]
    fns = {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v)}
    for name, fused in TRITON_VARIANTS.items():
        fns[name] = _path_fn("triton", fused)
    for path in paths:
        fns[path] = _path_fn(path)
    return fns


def kernel_table(device, dtype, cases, runs):
    rows = []
    for label, shape in cases:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(*shape, generator=gen).to(device, dtype) for _ in range(3))
        ref = None
        times, mem, err, fail = {}, {}, {}, {}
        fns = _impls(device)
        for name, fn in list(fns.items()):  # warm-up (compiles), memory, agreement with the chunked path
            try:
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                out = fn(q, k, v)
                _sync(device)
                if device.type == "cuda":
                    mem[name] = torch.cuda.max_memory_allocated(device) - before
                if name == "chunked":
                    ref = out.double()
                else:
                    err[name] = out.double()
                del out
            except Exception as exc:
                fail[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
                del fns[name]
        for name in list(err):
            if name == "sdpa" or ref is None:
                err.pop(name)
                continue
            err[name] = ((err[name] - ref).abs().max() / ref.abs().max()).item()
        samples = {name: [] for name in fns}
        for _ in range(runs):
            for name, fn in fns.items():
                _sync(device)
                t0 = time.perf_counter()
                fn(q, k, v)
                _sync(device)
                samples[name].append(time.perf_counter() - t0)
        for name, ts in samples.items():
            times[name] = statistics.median(ts)
        for name in ["sdpa", *[n for n in _impls(device) if n != "sdpa"]]:
            rows.append({
                "case": label, "shape": list(shape), "impl": name, "dtype": str(dtype).replace("torch.", ""),
                "seconds": times.get(name), "x_sdpa": (times[name] / times["sdpa"]) if name in times and
                "sdpa" in times else None, "peak_extra_bytes": mem.get(name),
                "rel_err_vs_chunked": err.get(name), "error": fail.get(name),
            })
        del q, k, v, ref
    return rows


def e2e_table(device, args):
    rows = []
    for preset in args.presets.split(","):
        for name in E2E_SCENARIOS:
            cmd = [sys.executable, str(ROOT / "bench" / "e2e.py"), "--child", name, "--layers", preset,
                   "--latent", str(args.latent), "--width", str(args.width), "--batch", "1",
                   "--steps", str(args.steps), "--device", device.type]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                rows.append({"preset": preset, "scenario": name, "error": res.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append({"preset": preset, **row})
    for preset in args.presets.split(","):
        by = {r["scenario"]: r for r in rows if r["preset"] == preset and "seconds" in r}
        for r in rows:
            if r["preset"] == preset and "seconds" in r:
                r["x_cfg"] = r["seconds"] / by["cfg"]["seconds"] if "cfg" in by else None
        if {"cfg+asag", "cfg+pag", "cfg+asag-bat"} <= set(by):
            rows.append({"preset": preset, "scenario": "ratios",
                         "asag_over_pag": by["cfg+asag"]["seconds"] / by["cfg+pag"]["seconds"],
                         "batched_over_separate": by["cfg+asag-bat"]["seconds"] / by["cfg+asag"]["seconds"]})
    return rows


def _fmt(x, unit=""):
    if x is None:
        return ""
    if unit == "B":
        return f"{x / 2**20:.0f} MiB" if x < 2**30 else f"{x / 2**30:.2f} GiB"
    if unit == "s":
        return f"{x * 1e3:.2f} ms"
    return f"{x:.3g}"


def markdown(meta, kernel, e2e):
    out = [f"# bench/gpu.sh results ({meta['when']})", "",
           f"Device: {meta['device_name']}; torch {meta['torch']}, triton {meta['triton']}; "
           f"{'DRY RUN (tiny CPU shapes, not a measurement)' if meta['dry_run'] else 'full run'}.", "",
           *[f"Probe: {line}" for line in meta.get("probe", [])], "",
           "## Kernel (2 Sinkhorn iterations, tol=0)", "",
           "| case | B,H,N,D | impl | dtype | time | × SDPA | peak extra mem | rel err vs chunked | error |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in kernel:
        err = "" if r["rel_err_vs_chunked"] is None else f"{r['rel_err_vs_chunked']:.1e}"
        out.append(f"| {r['case']} | {','.join(map(str, r['shape']))} | {r['impl']} | {r['dtype']} | "
                   f"{_fmt(r['seconds'], 's')} | {_fmt(r['x_sdpa'])} | {_fmt(r['peak_extra_bytes'], 'B')} | "
                   f"{err} | "
                   f"{r['error'] or ''} |")
    out += ["", f"## End to end (SDXL layout, width {meta['width']}, latent {meta['latent']}, "
            f"{meta['e2e_dtype']}, median of {meta['steps']} steps)", "",
            "| preset | scenario | s/step | × cfg | extra MB | note |", "|---|---|---|---|---|---|"]
    for r in e2e:
        if r["scenario"] == "ratios":
            out.append(f"| {r['preset']} | ASAG/PAG {r['asag_over_pag']:.3f}; batched/separate "
                       f"{r['batched_over_separate']:.3f} | | | | |")
        elif "error" in r:
            out.append(f"| {r['preset']} | {r['scenario']} | | | | failed: {r['error']} |")
        else:
            out.append(f"| {r['preset']} | {r['scenario']} | {r['seconds']:.4f} | {_fmt(r.get('x_cfg'))} | "
                       f"{r['extra_mb']:.1f} | |")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--presets", default="middle,outputs")
    args = parser.parse_args()
    dry = args.dry_run
    device = torch.device("cpu" if dry else "cuda")
    if not dry and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device (use --dry-run on a CPU machine)")
    if dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args.width, args.latent, args.steps = (32, 8, 1) if dry else (320, 128, 5)
    kdtype = torch.float32 if dry else torch.float16
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": dry, "torch": torch.__version__,
            "triton": triton_version, "python": platform.python_version(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or "cpu", "width": args.width, "latent": args.latent, "steps": args.steps,
            "e2e_dtype": "fp16" if device.type == "cuda" else "fp32"}
    if device.type == "cuda":  # what the capability probe picks for fp16 and fp32 inputs, and why
        from asag_lib import kernel_probe

        said = []
        for dt in (torch.float16, torch.float32):
            kernel_probe.choose(device, dt, say=said.append)
        meta["probe"] = said
    print(f"kernel table on {meta['device_name']} ...", flush=True)
    kernel = kernel_table(device, kdtype, DRY_KERNEL_CASES if dry else KERNEL_CASES,
                          args.runs or (1 if dry else 5))
    print("end to end ...", flush=True)
    e2e = e2e_table(device, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps({"meta": meta, "kernel": kernel, "e2e": e2e}, indent=1))
    md = markdown(meta, kernel, e2e)
    (args.out / "gpu_bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
