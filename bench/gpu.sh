#!/usr/bin/env bash
# One-shot GPU check of the ASAG kernel (issue 12). Run first on any machine with an NVIDIA GPU:
#
#     bench/gpu.sh OUT_DIR            # venv on the machine's torch/triton, kernel tests on CUDA, timings
#     bench/gpu.sh --dry-run OUT_DIR  # the same code on the CPU at tiny shapes (CI runs this)
#
# Steps: 1) a venv with --system-site-packages (the GPU machine's own torch and Triton), adding only what is
# missing (pytest, einops, numpy); 2) the kernel tests on the device: every path, fp32/fp16/bf16, autocast,
# head dims, early stop, against the float64 reference (tests/test_sinkhorn_device.py,
# tests/test_triton_sinkhorn.py); 3) bench/gpu_bench.py: kernel time/peak memory vs SDPA and bench/e2e.py
# steps, written to OUT_DIR/gpu_bench.{json,md}. Test output goes to OUT_DIR/tests.txt. Exit status: that
# of the tests (timings are written either way).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "gpu.sh: unknown option $arg" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done
if [ -z "$OUT" ]; then
    echo "usage: bench/gpu.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    export TRITON_INTERPRET=1
    # one thread: many tiny parallel regions crawl on a shared, loaded CPU (bench/RESULTS.md, "Contention")
    export OMP_NUM_THREADS=1
    # a representative subset, so that CI stays fast; the GPU run takes every test of both files
    TESTS=(tests/test_sinkhorn_device.py -k "test_path_dtype_against_float64 and float32 and (triton or chunked)")
    echo "gpu.sh: dry run on the CPU (no venv; tiny shapes)"
else
    DEVICE=cuda
    TESTS=(tests/test_sinkhorn_device.py tests/test_triton_sinkhorn.py)
    VENV="$OUT/venv"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv --system-site-packages "$VENV" || { echo "gpu.sh: cannot create a venv" >&2; exit 1; }
    fi
    PY="$VENV/bin/python"
    for mod in pytest einops numpy; do
        "$PY" -c "import $mod" 2>/dev/null || "$PY" -m pip install -q "$mod" \
            || echo "gpu.sh: could not install $mod (offline?); continuing"
    done
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "gpu.sh: torch sees no CUDA device; use --dry-run on a CPU machine" >&2; exit 1; }
fi
"$PY" -c "import torch; print('torch', torch.__version__)" | tee "$OUT/versions.txt"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null | tee -a "$OUT/versions.txt" \
    || echo "triton not installed (the probe falls back)" | tee -a "$OUT/versions.txt"

echo "== kernel tests on $DEVICE"
ASAG_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$OUT/tests.txt"
TEST_RC=${PIPESTATUS[0]}

echo "== timings"
if [ "$DRY" = 1 ]; then
    "$PY" bench/gpu_bench.py "$OUT" --dry-run --presets middle
else
    "$PY" bench/gpu_bench.py "$OUT"
fi
BENCH_RC=$?
echo "gpu.sh: tests rc=$TEST_RC, bench rc=$BENCH_RC; results in $OUT"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
