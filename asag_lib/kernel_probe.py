"""Which Sinkhorn path a CUDA device gets: a one-time capability probe per (device, input dtype) (issue 12).

On the first call for a device and input dtype, each candidate path is run once on a tiny problem (odd sizes,
so the kernels' masks are exercised) and compared with the pure-torch ``chunked`` path on the same device:

    triton   the Triton kernels (`asag_lib.sinkhorn_triton`): skipped if triton is missing or cannot be
             imported, and never compiled where its compiler would abort the process (Triton 2.1 before
             sm_80, `sinkhorn_triton.unsupported`); both variants (fused row pass, 2k + 1) are checked, and
             the accurate one, the faster if both are, is recorded for that key in `sinkhorn_triton.CHOSEN`
             (a fused kernel that fails, here or later on a new shape, costs only its speed);
    cuda     the memory-efficient attention engine (`torch.ops.aten._scaled_dot_product_efficient_attention`);
    chunked  pure torch, the reference of the comparison, always accurate.

A candidate that raises (missing package, compile error, unsupported GPU) or disagrees is dropped; among the
accurate ones the fastest on a representative problem (1 × 4 heads × 1024 × 1024 × 64, the first call's
warm-up excluded) is kept. One console line says what was chosen and why the others were not. The decision is
cached for the process (a capability cache, not job state). A path that fails later on a real problem (a
shape the probe did not compile) is dropped for that key the same way, with one console line, and the call
is rerun on the next candidate: the user gets an image, never a crash. Other devices (Apple MPS, XPU, …)
never reach this module: they take the pure-torch path directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CANDIDATES", "choose", "forget", "reject"]

#: Preference order when timing is off or ties; the last one is the reference and always accurate.
CANDIDATES = ("triton", "cuda", "chunked")

#: B, H, n_q, n_k, d of the agreement check (odd sizes: masks and partial blocks run).
PROBE_SHAPE = (1, 2, 77, 45, 64)
#: B, H, n_q, n_k, d of the timing run.
TIMING_SHAPE = (1, 4, 1024, 1024, 64)
#: Relative agreement required with the pure-torch path, by input dtype (half inputs: P·V in half on GPU).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

_DECISIONS: dict[tuple[str, torch.dtype], list[str]] = {}


def _key(device: torch.device, dtype: torch.dtype) -> tuple[str, torch.dtype]:
    device = torch.device(device)
    index = device.index if device.index is not None else (
        torch.cuda.current_device() if device.type == "cuda" else 0)
    return f"{device.type}:{index}", dtype


def _say(message: str) -> None:
    print("ASAG: " + message, flush=True)


def _run(path: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from asag_lib import sinkhorn as sk

    return sk._sinkhorn_attention(q, k, v, iterations=2, tol=0.0, scale=None, rescale=True, return_stats=False,
                                  memory_budget_bytes=None, path=path)


def _inputs(shape, device, dtype, seed=0):
    B, H, n_q, n_k, d = shape
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=gen) for n in (n_q, n_k, n_k))
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_path(path: str, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds of one call on TIMING_SHAPE, after one warm-up call."""
    q, k, v = _inputs(TIMING_SHAPE, device, dtype, seed=1)
    _run(path, q, k, v)
    _sync(device)
    t0 = time.perf_counter()
    _run(path, q, k, v)
    _sync(device)
    return time.perf_counter() - t0


def _unavailable(path: str, device: torch.device) -> str | None:
    """Why `path` cannot run at all here, or None."""
    if path == "triton":
        from asag_lib import sinkhorn_triton

        if not sinkhorn_triton.available():
            return "triton is not installed"
        return sinkhorn_triton.unsupported(device)
    if path == "cuda" and not hasattr(torch.ops.aten, "_scaled_dot_product_efficient_attention"):
        return "this torch has no efficient-attention op"
    return None


def _check(path: str, q: Tensor, k: Tensor, v: Tensor, ref: Tensor) -> str | None:
    """Why `path` is not usable on this problem (raises or disagrees with `ref`), or None."""
    try:
        err = relative_error(_run(path, q, k, v), ref)
        if not (err <= TOLERANCE.get(q.dtype, 1e-4)):  # also catches NaN
            return f"disagrees with the pure-torch path (relative error {err:.1e})"
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return None


_VARIANT = {True: "fused", False: "2k+1"}


def _probe_triton(device: torch.device, q: Tensor, k: Tensor, v: Tensor, ref: Tensor,
                  timing: bool) -> tuple[str | None, str | None]:
    """Checks both Triton variants and records the one to use in `sinkhorn_triton.CHOSEN`.

    Returns (why Triton is not usable at all, or None; a note on the variant for the console line, or None).
    """
    from asag_lib import sinkhorn_triton

    key = _key(device, q.dtype)
    reasons = {}
    for fused in (True, False):
        sinkhorn_triton.CHOSEN[key] = fused
        reasons[fused] = _check("triton", q, k, v, ref)
    ok = [fused for fused in (True, False) if reasons[fused] is None]
    if not ok:
        del sinkhorn_triton.CHOSEN[key]
        return reasons[True], None
    note = None
    if len(ok) == 1:
        note = f"triton {_VARIANT[ok[0]]} variant ({_VARIANT[not ok[0]]} {reasons[not ok[0]]})"
    elif timing:
        times = {}
        for fused in ok:
            sinkhorn_triton.CHOSEN[key] = fused
            times[fused] = _time_path("triton", device, q.dtype)
        ok.sort(key=lambda fused: (times[fused], not fused))  # a tie keeps the fused one
        note = "triton variants timed " + ", ".join(f"{_VARIANT[f]} {times[f] * 1e3:.1f} ms" for f in ok)
    sinkhorn_triton.CHOSEN[key] = ok[0]
    return None, note


def _probe(device: torch.device, dtype: torch.dtype, timing: bool) -> tuple[list[str], list[str]]:
    """Returns (accurate paths, fastest first when timed; reasons for the others)."""
    q, k, v = _inputs(PROBE_SHAPE, device, dtype)
    ref = _run("chunked", q, k, v)
    good, why, notes = [], [], []
    for path in CANDIDATES[:-1]:
        reason = _unavailable(path, device)
        if reason is None and path == "triton":
            reason, note = _probe_triton(device, q, k, v, ref, timing)
            notes += [note] if note else []
        elif reason is None:
            reason = _check(path, q, k, v, ref)
        if reason is None:
            good.append(path)
        else:
            why.append(f"{path} {reason}")
    good.append("chunked")
    why += notes
    if timing and len(good) > 1:
        times = {p: _time_path(p, device, dtype) for p in good}
        good.sort(key=lambda p: (times[p], CANDIDATES.index(p)))
        why.insert(0, "timed " + ", ".join(f"{p} {times[p] * 1e3:.1f} ms" for p in good))
    return good, why


def choose(device: torch.device, dtype: torch.dtype, *, timing: bool = True,
           say: Callable[[str], None] = _say) -> str:
    """The path for inputs of `dtype` on `device`; probes on the first call for that key."""
    key = _key(device, dtype)
    if key not in _DECISIONS:
        good, why = _probe(torch.device(device), dtype, timing)
        _DECISIONS[key] = good
        dt = str(dtype).replace("torch.", "")
        say(f"Sinkhorn kernel on {key[0]} ({dt} inputs): {good[0]}" + (f" ({'; '.join(why)})" if why else ""))
    return _DECISIONS[key][0]


def reject(device: torch.device, dtype: torch.dtype, path: str, exc: BaseException,
           say: Callable[[str], None] = _say) -> str:
    """Drops `path` for this key after it failed on a real problem; returns the next path to use."""
    from asag_lib import sinkhorn_triton

    key = _key(device, dtype)
    paths = _DECISIONS.setdefault(key, list(CANDIDATES))
    if path == "triton" and isinstance(exc, sinkhorn_triton.FusedKernelError):
        sinkhorn_triton.CHOSEN[key] = False  # this key's Triton engine uses the 2k + 1 variant from now on
        say(f"Sinkhorn kernel on {key[0]}: the fused Triton kernel failed ({str(exc).splitlines()[0][:120]}); "
            "using its 2k+1 variant from now on")
        return path
    if path in paths and path != "chunked":
        paths.remove(path)
        say(f"Sinkhorn kernel on {key[0]}: {path} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); using {paths[0]} from now on")
    return paths[0]


def forget() -> None:
    """Clears every cached decision (tests; a new GPU driver in the same process)."""
    from asag_lib import sinkhorn_triton

    _DECISIONS.clear()
    sinkhorn_triton.CHOSEN.clear()


def relative_error(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max |b| in float64 (inf when b is all zero and a is not)."""
    a, b = a.double(), b.double()
    den = b.abs().max().item()
    num = (a - b).abs().max().item()
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)
