"""Benchmark of the ASAG kernel against torch SDPA and a straightforward dense Sinkhorn (not a test).

    python bench/kernel.py            # the table of bench/RESULTS.md (a few minutes on 2 cores)
    python bench/kernel.py --quick    # smoke run, small shapes
    python bench/kernel.py --runs 5 --only N=4096   # five fresh processes: each run's × SDPA and the median

Time: median of several runs, the implementations interleaved round by round so that a change of machine
load hits them alike; "× SDPA" is the median over rounds of each round's own ratio to SDPA. The ratio
also varies from process to process (by ±7 % on the 2-core VM); `--runs K` gives the median of K fresh
processes, as the targets of issue 12 are stated. Memory: each (case, implementation) runs once more in a
fresh subprocess, which resets the kernel's peak-RSS counter (/proc/self/clear_refs) after creating its
inputs and warming up on a small shape; peak extra = peak RSS during the call − RSS before it (Linux only;
"n/a" elsewhere).
Sinkhorn runs use 2 iterations and tol=0 (no early stop), fp32, logits of std ≈ 1. "ours" is the public
function (on CPU the cached linear-domain path where a head's kernel fits in half the memory budget);
"logdomain" forces the previous engines (the dense path's kept scores at N ≤ 1024, the streaming chunked
path above). `--cpu-time --threads 1` times process CPU time instead of wall time: on a machine shared
with other work that is the fairer comparison (parallel regions wait for descheduled threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asag_lib import sinkhorn as sk
from asag_lib.sinkhorn import sinkhorn_attention

ITERATIONS = 2

# name, (B, H, N, D), implementations, timing runs
FULL = [
    ("SDXL mid 1024²", (2, 20, 1024, 64), ("sdpa", "dense", "logdomain", "ours"), 7),
    ("N=4096", (2, 10, 4096, 64), ("sdpa", "dense", "logdomain", "ours"), 5),
    ("N=16384", (1, 10, 16384, 64), ("sdpa", "ours"), 2),
]
QUICK = [
    ("N=1024 small", (1, 4, 1024, 64), ("sdpa", "dense", "logdomain", "ours"), 3),
    ("N=2048 small", (1, 2, 2048, 64), ("sdpa", "dense", "logdomain", "ours"), 2),
]
CLOCK = time.perf_counter


def dense_sinkhorn(q, k, v, iterations=ITERATIONS):
    """What a first implementation does: the whole log-domain plan for every head at once."""
    n_q, n_k = q.shape[2], k.shape[2]
    log_k = -(q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    f = torch.zeros(*q.shape[:3], 1, dtype=q.dtype)
    g = torch.zeros(*k.shape[:2], 1, n_k, dtype=q.dtype)
    for _ in range(iterations):
        f = -math.log(n_q) - torch.logsumexp(log_k + g, dim=-1, keepdim=True)
        g = -math.log(n_k) - torch.logsumexp(log_k + f, dim=-2, keepdim=True)
    return n_q * torch.exp(f + log_k + g) @ v


def implementation(name):
    if name == "sdpa":
        return F.scaled_dot_product_attention
    if name == "dense":
        return dense_sinkhorn
    if name == "logdomain":
        def logdomain(q, k, v):
            path = "dense" if q.shape[2] * k.shape[2] * 4 <= 8 * 2**20 else "chunked"
            return sk._sinkhorn_attention(q, k, v, iterations=ITERATIONS, tol=0.0, scale=None, rescale=True,
                                          return_stats=False, memory_budget_bytes=None, path=path)
        return logdomain
    return lambda q, k, v: sinkhorn_attention(q, k, v, iterations=ITERATIONS, tol=0.0)


def inputs(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=gen, dtype=dtype) for _ in range(3))


def time_case(shape, impls, runs):
    q, k, v = inputs(shape)
    fns = {name: implementation(name) for name in impls}
    for fn in fns.values():  # warm-up
        fn(q, k, v)
    times = {name: [] for name in impls}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = CLOCK()
            fn(q, k, v)
            times[name].append(CLOCK() - t0)
    return times


def _status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def memory_child(name, shape):
    """Runs in a fresh process: peak extra bytes of one call."""
    fn = implementation(name)
    small = (1, 1, 256, shape[3])
    fn(*inputs(small))  # library initialisation outside the measurement
    q, k, v = inputs(shape)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_kib("VmRSS")
    out = fn(q, k, v)
    peak = _status_kib("VmHWM")
    del out
    print(json.dumps({"extra_bytes": (peak - before) * 1024}))


def measure_memory(name, shape):
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    cmd = [sys.executable, __file__, "--memory-child", name, ",".join(map(str, shape))]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["extra_bytes"]


def float64_error(shape, name="ours", heads=2):
    """Max |ours − float64 dense| / max |float64 dense| on the first `heads` heads of sample 0."""
    q, k, v = inputs(shape)
    ours = implementation(name)(q, k, v)[:1, :heads]
    ref = dense_sinkhorn(*(t[:1, :heads].double() for t in (q, k, v)))
    return ((ours.double() - ref).abs().max() / ref.abs().max()).item()


def fmt_bytes(b):
    if b is None:
        return "n/a"
    return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few runs (smoke test)")
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--only", help="run only the cases whose label contains this text")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true", help="time process CPU time, not wall time")
    parser.add_argument("--runs", type=int, default=1, help="timing runs, each in a fresh process (no memory)")
    parser.add_argument("--memory-child", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--ratios-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], tuple(int(x) for x in args.memory_child[1].split(",")))
        return
    if args.runs > 1:
        repeated_runs(args.runs)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    cases = QUICK if args.quick else FULL
    cases = [c for c in cases if args.only is None or args.only in c[0]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"fp32, {ITERATIONS} Sinkhorn iterations, tol=0, {'CPU' if args.cpu_time else 'wall'} time, "
          f"implementations interleaved; load average before: {os.getloadavg()[0]:.2f}")
    header = ("case", "B,H,N,D", "impl", "time", "× SDPA", "peak extra mem", "mem ÷ dense", "rel err f64")
    rows = []
    all_ratios = {}
    for label, shape, impls, runs in cases:
        rounds = time_case(shape, impls, runs)
        times = {name: statistics.median(ts) for name, ts in rounds.items()}
        # × SDPA: the median over rounds of the ratio within a round (the two ran seconds apart), which a
        # change of machine speed between rounds leaves alone, unlike a ratio of two medians
        ratios = {name: statistics.median(t / s for t, s in zip(ts, rounds["sdpa"], strict=True))
                  for name, ts in rounds.items()}
        all_ratios[label] = ratios
        if args.ratios_json:
            continue
        mem = {} if args.no_memory else {name: measure_memory(name, shape) for name in impls}
        err = {name: float64_error(shape, name) for name in impls if name in ("ours", "logdomain")}
        for name in impls:
            ratio = ratios[name]
            m = mem.get(name)
            m_ratio = (f"{m / mem['dense']:.3f}" if name in ("ours", "logdomain") and mem.get("dense")
                       and m is not None else "")
            e = f"{err[name]:.1e}" if err and name in err else ""
            rows.append((label, ",".join(map(str, shape)), name, f"{times[name]:.3f} s", f"{ratio:.2f}",
                         fmt_bytes(m) if not args.no_memory else "-", m_ratio, e))
    if args.ratios_json:
        print(json.dumps(all_ratios))
        return
    print_table(header, rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def repeated_runs(k):
    """Runs this script k times in fresh processes (timing only) and tabulates each run's × SDPA."""
    argv, skip = [], False
    for a in sys.argv[1:]:  # the same options, without --runs
        if skip or a == "--runs" or a.startswith("--runs="):
            skip = a == "--runs"
            continue
        argv.append(a)
    per_run = []
    for i in range(k):
        res = subprocess.run([sys.executable, __file__, *argv, "--ratios-json"], capture_output=True, text=True,
                             check=True)
        per_run.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"run {i + 1} of {k} done; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    header = ("case", "impl", *(f"run {i + 1}" for i in range(k)), "median")
    rows = []
    for label, ratios in per_run[0].items():
        for name in ratios:
            values = [run[label][name] for run in per_run]
            rows.append((label, name, *(f"{x:.2f}" for x in values), f"**{statistics.median(values):.3f}**"))
    print(f"× SDPA per run ({k} fresh processes), torch {torch.__version__}, {os.cpu_count()} CPUs")
    print_table(header, rows)


if __name__ == "__main__":
    main()
