"""Per-step cost of ASAG on a Flux-structured DiT, side by side in one run (CPU unless --device says else).

Scenarios (each in a fresh subprocess, so its peak memory is its own):
  none       one model call per step (CFG 1, guidance-distilled Flux: the host without a guidance extension)
  identity   plus a PAG-style weak call: identity attention (each token outputs its own value) at the blocks
  asag       plus ASAG's weak call: joint Sinkhorn attention (asag_lib/joint.py) at the same blocks

The model is tests/dit_models.py's Flux (Neo's block structure and replacement protocol) at a chosen
width; the weak calls go through the real hook (asag_lib/hosts/dit_flux.py) and its copied model options.
Per-step time is the median over the measured steps; "extra MB" is the peak RSS above the none scenario's.
Usage: python bench/dit.py [--latent 64] [--text 64] [--hidden 512] [--heads 8] [--blocks double.1] [--steps 5]
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCENARIOS = ("none", "identity", "asag")


def run_scenario(name: str, args: argparse.Namespace) -> dict:
    import torch
    from einops import rearrange

    import tests.dit_models as dm
    from asag_lib import layers
    from asag_lib.attention import KernelOptions
    from asag_lib.hosts.dit_flux import WeakPassHook, attention_module

    torch.set_num_threads(args.threads)
    family = layers.FAMILIES["IntegratedFluxTransformer2DModel"]
    model = dm.IntegratedFluxTransformer2DModel(context_dim=64, hidden=args.hidden, heads=args.heads,
                                                depth=args.depth, depth_single=args.depth).to(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, args.latent, args.latent, generator=g).to(args.device)
    context = torch.randn(1, args.text, 64, generator=g).to(args.device)
    t = torch.full((1,), 0.5, device=args.device)
    refs = [ref for ref, _ in layers.resolve_dit(model, family, args.blocks)]
    hook = WeakPassHook(family, refs, attention_module(model, family), KernelOptions(), "image")
    if name == "identity":
        hook._attention = lambda n_text: (  # PAG's perturbation at the same blocks
            lambda q, k, v, pe=None, mask=None, transformer_options=None, **kw: rearrange(v, "b h l d -> b l (h d)"))

    def step():
        with torch.no_grad():
            model(x, t, context, transformer_options={})
            if name != "none":
                model(x, t, context, transformer_options=dict(hook.options({})["transformer_options"]))

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    tokens = (args.latent // 2) ** 2
    return {"scenario": name, "step_s": statistics.median(times), "peak_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "image_tokens": tokens, "blocks": layers.describe_dit(refs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=64, help="latent side; image tokens = (latent/2)^2")
    ap.add_argument("--text", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--depth", type=int, default=2, help="double and single blocks each")
    ap.add_argument("--blocks", default="double.1")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args)))
        return
    rows = []
    for name in SCENARIOS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--scenario", name], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    print(f"Flux-structured DiT, {base['image_tokens']} image + {args.text} text tokens, hidden {args.hidden}, "
          f"{args.heads} heads, {args.depth}+{args.depth} blocks, weak blocks {base['blocks']}, {args.device}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| scenario | step (s) | × none | peak RSS (MB) | extra MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - base['peak_mb']:+.0f} |")


if __name__ == "__main__":
    main()
