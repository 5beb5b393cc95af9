"""End-to-end cost of ASAG per sampling step on an SDXL-layout UNet, side by side in one run.

Scenarios (each in a fresh subprocess, so peak memory is its own):
  cfg            one UNet call on [cond | uncond] (the host without any guidance extension)
  cfg+off        the same plus ASAG's three A1111 CFG callbacks with ASAG disabled
  cfg+pag        plus a PAG-style weak call (identity attn1) on the cond rows at the chosen layers
  cfg+asag       plus ASAG's weak call (Sinkhorn attn1) on the cond rows at the same layers
  cfg+asag-bat   ASAG with the weak rows batched into the main call (row-selective attn1 patch)
  weak+tel       (--telemetry) the ASAG weak call alone, with and without telemetry, interleaved call by
                 call so both see the same machine load; reports telemetry's cost in % of the weak pass

Per-step time is the median over the measured steps; "extra MB" is the peak RSS above the CFG step's.
The UNet is the real SDXL block layout at reduced width (tests/unets.py); on a GPU use --device cuda
and a larger --width. Usage: python bench/e2e.py [--quick] [--latent 128] [--width 32] [--steps 5] [--telemetry]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCENARIOS = ("cfg", "cfg+off", "cfg+pag", "cfg+asag", "cfg+asag-bat")


def _pag_forward(self, x, context=None, mask=None, **kwargs):
    """PAG's perturbation: identity attention, each token outputs its own value."""
    return self.to_out(self.to_v(x if context is None else context))


def _disabled_callbacks_overhead():
    """ASAG's A1111 callbacks as the host calls them for a job without ASAG."""
    from asag_lib.hosts import a1111

    denoiser = types.SimpleNamespace(p=types.SimpleNamespace(), step=0, total_steps=1)
    denoiser_params = types.SimpleNamespace(denoiser=denoiser)
    denoised_params = types.SimpleNamespace(inner_model=None)
    after_params = types.SimpleNamespace(x=None)

    def run():
        a1111.on_cfg_denoiser(denoiser_params)
        a1111.on_cfg_denoised(denoised_params)
        a1111.on_cfg_after_cfg(after_params)

    return run


def run_scenario(name: str, args: argparse.Namespace) -> dict:
    import torch

    from asag_lib import layers
    from asag_lib.attention import (
        KernelOptions,
        make_attn1_forward,
        make_row_selective_forward,
        patched_forwards,
    )
    from tests.unets import build_unet

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = build_unet("sdxl", model_channels=args.width).to(device, dtype).eval()
    modules = [module for _, module in layers.resolve(unet, args.layers)]
    b, h = args.batch, args.latent
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 4, h, h, generator=g).to(device, dtype)
    cond = torch.randn(b, 77, 2048, generator=g).to(device, dtype)
    uncond = torch.randn(b, 77, 2048, generator=g).to(device, dtype)
    y = torch.randn(b, 2816, generator=g).to(device, dtype)
    t = torch.full((b,), 500.0, device=device)
    options = KernelOptions(iterations=2, tol=1e-3, rescale=True)
    off = _disabled_callbacks_overhead()

    def cfg_call():
        return unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]), torch.cat([y, y]))

    def weak_call(forward):
        with patched_forwards(modules, forward):
            return unet(x, t, cond, y)

    def step():
        if name == "cfg+asag-bat":
            forward = make_row_selective_forward(slice(b, 2 * b), {3 * b}, options)
            with patched_forwards(modules, forward):
                out = unet(torch.cat([x, x, x]), torch.cat([t, t, t]), torch.cat([cond, cond, uncond]),
                           torch.cat([y, y, y]))
            return out[:b] - out[b:2 * b]
        out = cfg_call()
        if name == "cfg+off":
            off()
        elif name == "cfg+pag":
            out = out[:b] - weak_call(_pag_forward)
        elif name == "cfg+asag":
            out = out[:b] - weak_call(make_attn1_forward(options))
        return out

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if name == "weak+tel":
        return _telemetry_cost(weak_call, options, modules, args.steps, sync)

    with torch.no_grad():
        cfg_call()  # warm-up and memory baseline: the host's own step
        sync()
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base_gpu = torch.cuda.max_memory_allocated()
            cfg_call()
            sync()
            base_gpu = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    if device.type == "cuda":
        extra_mb = max(0, torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return {"scenario": name, "seconds": statistics.median(times), "extra_mb": extra_mb,
            "layers": len(modules)}


def _telemetry_cost(weak_call, options, modules, steps: int, sync) -> dict:
    """Median weak-call time without and with telemetry, alternating the two call by call."""
    import dataclasses

    import torch

    from asag_lib import telemetry
    from asag_lib.attention import make_attn1_forward

    recorder = telemetry.Recorder()
    plain = make_attn1_forward(options)
    with_tel = make_attn1_forward(dataclasses.replace(options, telemetry=recorder))
    times: dict[str, list[float]] = {"off": [], "on": []}
    with torch.no_grad():
        same = torch.equal(weak_call(plain), weak_call(with_tel))  # also the warm-up
        for _ in range(max(steps, 3)):
            for key, forward in (("off", plain), ("on", with_tel)):
                start = time.perf_counter()
                weak_call(forward)
                sync()
                times[key].append(time.perf_counter() - start)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"scenario": "weak+tel", "seconds": off, "seconds_tel": on, "same_bits": same,
            "layers": len(modules), "entropy": recorder.overall()["entropy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=128, help="latent side (128 = a 1024x1024 image)")
    parser.add_argument("--width", type=int, default=32, help="UNet base channels (real SDXL: 320)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default="middle,outputs")
    parser.add_argument("--quick", action="store_true", help="small latent and 2 steps: a smoke run")
    parser.add_argument("--telemetry", action="store_true", help="also measure telemetry's cost (weak+tel)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--layers", default="middle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.latent, args.steps = 32, 2
    if args.child:
        print(json.dumps(run_scenario(args.child, args)))
        return

    overhead = _disabled_callbacks_overhead()
    calls = 20000
    start = time.perf_counter()
    for _ in range(calls):
        overhead()
    per_step_us = (time.perf_counter() - start) / calls * 1e6
    print(f"ASAG disabled: its three A1111 CFG callbacks cost {per_step_us:.2f} µs per model call")
    print(f"SDXL layout, width {args.width}, latent {args.latent}x{args.latent} "
          f"({args.latent * 8}px), batch {args.batch}, device {args.device}, {args.steps} steps, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    for preset in args.presets.split(","):
        rows = {}
        for name in SCENARIOS:
            command = [sys.executable, __file__, "--child", name, "--layers", preset,
                       "--latent", str(args.latent), "--width", str(args.width), "--batch", str(args.batch),
                       "--steps", str(args.steps), "--device", args.device]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows[name] = json.loads(output.strip().splitlines()[-1])
        cfg = rows["cfg"]["seconds"]
        print(f"\npreset '{preset}' ({rows['cfg+asag']['layers']} attn1 layers)")
        print(f"{'scenario':<14}{'s/step':>10}{'x cfg':>8}{'extra MB':>10}")
        for name in SCENARIOS:
            row = rows[name]
            print(f"{name:<14}{row['seconds']:>10.4f}{row['seconds'] / cfg:>8.2f}{row['extra_mb']:>10.1f}")
        if args.telemetry:
            command = [sys.executable, __file__, "--child", "weak+tel", "--layers", preset, "--latent",
                       str(args.latent), "--width", str(args.width), "--batch", str(args.batch), "--steps",
                       str(args.steps), "--device", args.device]
            tel = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
                             .splitlines()[-1])
            print(f"weak pass without / with telemetry: {tel['seconds']:.4f} / {tel['seconds_tel']:.4f} s "
                  f"(+{100 * (tel['seconds_tel'] / tel['seconds'] - 1):.1f} %), same bits: {tel['same_bits']}, "
                  f"mean normalised entropy {tel['entropy']:.4f}")
        asag, pag = rows["cfg+asag"]["seconds"], rows["cfg+pag"]["seconds"]
        print(f"ASAG/PAG step time: {asag / pag:.3f}   batched/separate ASAG: "
              f"{rows['cfg+asag-bat']['seconds'] / asag:.3f}   disabled/cfg: {rows['cfg+off']['seconds'] / cfg:.3f}")


if __name__ == "__main__":
    main()
