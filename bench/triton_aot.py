"""Compile the ASAG Triton kernels for NVIDIA GPUs on a machine without one (issue 12).

    python bench/triton_aot.py [--arch 80 86 ...] [--quick]

Triton's CPU interpreter (what CI runs the kernels in) does not run the GPU compiler, whose passes can
reject a kernel the interpreter accepts. This script runs that compiler, down to a cubin (Triton bundles
ptxas), for every kernel configuration `asag_lib.sinkhorn_triton` launches (input dtype × head dim × with or
without stats), and prints the shared memory each needs. Exit status 1 if any configuration fails.

Works with the Triton versions the hosts bundle: 3.x (its public API), 2.3 (A1111-era Forge, torch 2.3) and
2.1 (A1111 1.10, torch 2.1.2) through their internal compile stages: for an old version, unpack its wheel
(`pip download triton==2.1.0 --no-deps`, unzip) and put it first on PYTHONPATH. No GPU and no CUDA driver
are needed. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton

from asag_lib import sinkhorn_triton as tri

ESIZE = {"fp16": 2, "bf16": 2, "fp32": 4}
#: Pointer and scalar argument types, in order, of each kernel (constexprs excluded).
_SCALARS = {"fused": ["i32", "i32", "i32", "fp32"] + ["i32"] * 8,
            "lse": ["i32", "i32", "i32", "fp32"] + ["i32"] * 6}


def configs(quick: bool = False):
    """(label, kernel name, argument types, constexprs, pipeline stages) as the engine would launch them."""
    dtypes = ("fp16",) if quick else ("fp16", "bf16", "fp32")
    dims = (64,) if quick else (40, 64, 80, 128, 160)
    for dt in dtypes:
        ptr = "*" + dt
        for d in dims:
            bd = tri._next_pow2(d)
            bm, bn, st = tri._config(bd, 16, ESIZE[dt], 0)
            yield (f"fused {dt} d={d}", "fused", [ptr, ptr, "*fp32", "*fp32", "*fp32"] + _SCALARS["fused"],
                   dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, TF32=False, UPCAST=False), st)
            ba, bb, st = tri._config(bd, 16, ESIZE[dt], 0)
            lse_types = [ptr, ptr, "*fp32", "*fp32"] + _SCALARS["lse"]
            yield (f"lse {dt} d={d}", "lse", lse_types,
                   dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_D=bd, TF32=False, UPCAST=False), st)
            for vdt, dv, what in ((dt, d, "out"), ("fp32", 2 * d + 1, "out+stats")):
                bdv = tri._next_pow2(dv)
                ba, bb, st = tri._config(bd, bdv, ESIZE[dt], ESIZE[vdt])
                # out_kernel: lse_kernel's arguments, then V, OUT, dv and their four strides
                yield (f"{what} {dt} d={d}", "out", lse_types + ["*" + vdt, "*fp32"] + ["i32"] * 5,
                       dict(BLOCK_A=ba, BLOCK_B=bb, BLOCK_D=bd, BLOCK_DV=bdv, TF32=False, UPCAST=False), st)
    yield ("col_reduce", "reduce", ["*fp32", "*fp32", "i32", "i32", "i32", "i32", "i32"], dict(BLOCK=128), None)


def _split(fn, types, consts):
    """{index: type} of the non-constexpr arguments, {index: value} of the constexprs."""
    names = fn.arg_names
    free = [i for i, n in enumerate(names) if n not in consts]
    assert len(free) == len(types), (fn.__name__, len(free), len(types))
    return dict(zip(free, types, strict=True)), {names.index(k): v for k, v in consts.items()}


def compile_kernel(fn, types, consts, arch: int, stages: int | None) -> dict:
    """Compiles one configuration to a cubin; returns {"shared": bytes}. Raises on a compiler error."""
    major = int(triton.__version__.split(".")[0])
    minor = int(triton.__version__.split(".")[1])
    opts = {"num_warps": 4, **({"num_stages": stages} if stages else {})}
    if major >= 3:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        sig, _ = _split(fn, types, consts)
        signature = {n: sig.get(i, "constexpr") for i, n in enumerate(fn.arg_names)}
        src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        return {"shared": triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts).metadata.shared}
    if (major, minor) >= (2, 2):  # 2.2/2.3: the stages of triton.compile, without its launcher (needs libcuda)
        from triton.compiler.compiler import ASTSource, AttrsDescriptor, CUDABackend

        sig, constants = _split(fn, types, consts)
        src = ASTSource(fn=fn, signature=sig, constants=constants, attrs=AttrsDescriptor())
        backend = CUDABackend(("cuda", arch))
        options = backend.parse_options(opts)
        metadata = {"target": ("cuda", arch), **options.__dict__, **src.metadata()}
        stages_ = {}
        backend.add_stages(stages_, options)
        module = src.make_ir(options)
        for _, step in list(stages_.items())[list(stages_).index(src.ext):]:
            module = step(module, metadata)
        return {"shared": metadata.get("shared")}
    # 2.1: the stages of triton.compile, likewise
    from triton.compiler import compiler as C
    from triton.compiler.code_generator import ast_to_ttir

    sig, constants = _split(fn, types, consts)
    mod = ast_to_ttir(fn, sig, C.instance_descriptor(set(), set()), constants, debug=False, arch=arch)
    mod = C.optimize_ttgir(C.ttir_to_ttgir(C.optimize_ttir(mod, arch), 4), stages or 3, arch)
    libdevice = os.path.join(os.path.dirname(triton.__file__), "third_party", "cuda", "lib", "libdevice.10.bc")
    llir = C.ttgir_to_llir(mod, {"libdevice": libdevice}, arch)
    shared = C.get_shared_memory_size(mod)
    C.ptx_to_cubin(C.llir_to_ptx(llir, arch), arch)
    return {"shared": shared}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80], help="compute capabilities, e.g. 75 80 86 89 90")
    parser.add_argument("--quick", action="store_true", help="fp16, d=64 only")
    args = parser.parse_args()
    kernels = tri._build()
    failed = 0
    print(f"triton {triton.__version__}")
    for arch in args.arch:
        for label, name, types, consts, stages in configs(args.quick):
            blocks = "x".join(str(v) for k, v in consts.items() if k in ("BLOCK_M", "BLOCK_N", "BLOCK_A", "BLOCK_B"))
            try:
                info = compile_kernel(kernels[name], types, consts, arch, stages)
                print(f"sm_{arch}  {label:24s} blocks {blocks:7s} stages {stages or 'default':7}  shared {info['shared']} B")
            except Exception as exc:  # report every configuration, then fail
                failed += 1
                msg = str(exc).strip().splitlines()
                print(f"sm_{arch}  {label:24s} FAILED {type(exc).__name__}: {msg[-1][:200] if msg else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
