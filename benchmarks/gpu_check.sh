#!/usr/bin/env bash
# One-shot GPU check of meranet_fast on an NVIDIA machine without network (torch + Triton in $PYTHON):
#
#   bash benchmarks/gpu_check.sh OUTDIR
#   GPU_CHECK_REHEARSAL=1 bash benchmarks/gpu_check.sh OUTDIR    # the CPU rehearsal (`make gpu-rehearsal`)
#
# A GPU is lent once, for minutes: this script must work on its first run. It checks for a GPU and nvcc
# first (one line and exit 3 within seconds when either is missing), then, each step under its own time
# limit and a shared deadline (planned to end within 6 minutes on 16 cores), in order of value:
#   build          the extension with the CUDA sources (MERANET_FORCE_CUDA=1), MAX_JOBS = all cores
#   tests_cuda     the CUDA C++ kernel tests, verbose, JUnit XML
#   tests_triton   the Triton tests, in parallel (pytest-xdist when installed), per-test timeout
#                  (pytest-timeout when installed), verbose, JUnit XML
#   triton_aot     every Triton kernel variant of the benchmarks, compiled for sm_90 on all cores
#                  (tools/triton_aot.py): register / spill / shared-memory limits checked, and Triton's
#                  cache warmed for the benchmarks' autotuning
#   bench_model    a cheap MERANet-18 benchmark (training step, batch 2 and 8, bf16, 3 reps)
#   composition    ra_tail composed in C++ against a thin Python composition of the same CUDA kernels, per
#                  call, at MERANet-18's block shapes (benchmarks/composition_overhead.py; docs/design.md §4.2)
#   bench_<op>_<dtype>  each fused op against eager, torch.compile, CUDA C++ and Triton; the JSON is
#                  rewritten after every shape, so a step cut off keeps what it measured
# OUTDIR ends with three files (the GPU machine returns at most 8, 2 folders deep, 16 MiB each):
# results.tar.gz (every log, JUnit XML and JSON; repacked after every step), summary.json (status,
# seconds and test counts of every step) and gpu_check.log (this console output). A summary table ends
# the run; the exit status is non-zero when a step failed, timed out or was skipped by the deadline.
#
# Rehearsal (GPU_CHECK_REHEARSAL=1, CPU only, in the compat venv: torch 2.11 + Triton 3.6 without fvcore
# and openpyxl, like the GPU machine): the same steps where they can run on a CPU: the build (CUDA sources
# compiled when nvcc exists), the GPU test selection collected with zero errors (and, with
# GPU_CHECK_EXPECT_TESTS, the count a full environment collects), the CUDA tests (they skip), the Triton
# tests under TRITON_INTERPRET=1, the AOT compile (a representative set), tiny CPU benchmarks through the
# same commands, and the output rules.
# Knobs: PYTHON (default python3), MAX_JOBS (default: all cores), GPU_CHECK_BUDGET (seconds, default 330).
set -u

if [ $# -ne 1 ]; then
    echo "usage: [GPU_CHECK_REHEARSAL=1] $0 OUTDIR" >&2
    exit 2
fi
REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 2

# --- Preflight: seconds, one line when something is missing. --------------------------------------------
if [ "$REHEARSAL" != 1 ]; then
    if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
        echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or fails); nothing was run" >&2
        exit 3
    fi
    if ! command -v nvcc > /dev/null 2>&1 && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
        echo "gpu_check: nvcc not found (PATH, \$CUDA_HOME or /usr/local/cuda): the CUDA kernels cannot be built" >&2
        exit 3
    fi
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
        echo "gpu_check: $PY cannot import torch or torch sees no CUDA device" >&2
        exit 3
    fi
    export MERANET_FORCE_CUDA=1
    unset TRITON_INTERPRET  # the real GPU path, never the interpreter
else
    "$PY" -c "import torch, triton" || { echo "gpu_check: $PY cannot import torch and triton" >&2; exit 3; }
    if command -v nvcc > /dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
        export MERANET_FORCE_CUDA=1
    fi
    export TRITON_INTERPRET=1
fi

mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
rm -f "$OUT/results.tar.gz" "$OUT/summary.json" "$OUT/gpu_check.log"
WORK=$(mktemp -d) || exit 2
trap 'rm -rf "$WORK"' EXIT
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

NPROC=$(nproc)
export MAX_JOBS=${MAX_JOBS:-$NPROC}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The rehearsal runs on 2 slow cores and the Triton interpreter: its limits are only a safety net.
SCALE=$([ "$REHEARSAL" = 1 ] && echo 4 || echo 1)
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET:-$((330 * SCALE))}))
: > "$WORK/steps.tsv"

# step NAME LIMIT_S CMD...: CMD with its output in WORK/NAME.log, at most LIMIT_S seconds and never past the
# deadline; the exit code and seconds go to steps.tsv, and the results are repacked.
step() {
    local name=$1 limit=$2 left rc start
    shift 2
    limit=$((limit * SCALE))
    left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        echo "[gpu_check] $name: skipped, the deadline has come" | tee -a "$WORK/$name.log"
        printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$WORK/steps.tsv"
        return
    fi
    echo "[gpu_check] $name (limit ${limit}s): $*"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$WORK/steps.tsv"
    echo "[gpu_check] $name: exit $rc after $((SECONDS - start))s"
    tail -n 4 "$WORK/$name.log"
    tar -czf "$OUT/results.tar.gz" -C "$WORK" .
}

{
    date -u
    if [ "$REHEARSAL" = 1 ]; then echo "REHEARSAL on the CPU (GPU_CHECK_REHEARSAL=1)"; else nvidia-smi; fi
    command -v nvcc && nvcc --version | tail -n 2
    echo "nproc $NPROC"
    "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'triton', triton.__version__, \
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|triton|numpy|pytest|pytest-xdist|pytest-timeout|fvcore|openpyxl|matplotlib) "
} > "$WORK/env.txt" 2>&1
cat "$WORK/env.txt"

# Test runner options: parallel Triton tests and per-test timeouts where the plugins are installed.
PYTEST=("$PY" -m pytest -p no:cacheprovider -rs)
XDIST=()
TIMEOUT=()
if "$PY" -c "import xdist" > /dev/null 2>&1; then XDIST=(-n "$NPROC"); else echo "[gpu_check] pytest-xdist missing: Triton tests run serially"; fi
if "$PY" -c "import pytest_timeout" > /dev/null 2>&1; then
    TIMEOUT=(--timeout "$([ "$REHEARSAL" = 1 ] && echo 300 || echo 90)")
else
    echo "[gpu_check] pytest-timeout missing: no per-test timeout"
fi
if [ "$REHEARSAL" = 1 ]; then
    DEVICE=cpu
else
    DEVICE=cuda
fi

step build 170 "$PY" setup.py build_ext --inplace
"$PY" -c "import meranet_fast._extension as e; print('meranet_fast._C:', e.build_info())" | tee -a "$WORK/build.log"
if [ "$REHEARSAL" = 1 ]; then
    step collect 120 "${PYTEST[@]}" --collect-only -q -m "cuda or triton" tests
    step collect_check 10 "$PY" benchmarks/gpu_check_report.py collected "$WORK/collect.log" "${GPU_CHECK_EXPECT_TESTS:-}"
fi
step tests_cuda 90 "${PYTEST[@]}" -v -m "cuda and not triton" tests "${TIMEOUT[@]}" --junitxml "$WORK/tests_cuda.xml"
step tests_triton 150 "${PYTEST[@]}" -v -m triton tests "${XDIST[@]}" "${TIMEOUT[@]}" --junitxml "$WORK/tests_triton.xml"

# The AOT compile never runs under the interpreter (it compiles the real kernels).
# The rehearsal compiles one variant per kernel, dtypes, block sizes and flags (2 cores); the GPU run all.
AOT=(--jobs "$NPROC" --json "$WORK/triton_aot.json")
[ "$REHEARSAL" = 1 ] && AOT+=(--representative)
step triton_aot 60 env -u TRITON_INTERPRET "$PY" tools/triton_aot.py "${AOT[@]}"

BENCH=("$PY" -m meranet_fast.cli bench --device "$DEVICE")
if [ "$REHEARSAL" = 1 ]; then  # the same commands on tiny CPU work
    step bench_model 120 "${BENCH[@]}" --model --batch 2 --input 2x32x32 --dtype float32 --reps 1 --warmup 0 \
        --modes train --no-profile --models meranet18-eager,meranet18-fused --json "$WORK/bench_model.json"
    step composition 60 "$PY" benchmarks/composition_overhead.py --device cpu --shapes 1x16x1x2x2 --reps 2 \
        --warmup 1 --json "$WORK/composition.json"
    for op in ra_tail st_attention channel_attention; do
        step "bench_${op}_float32" 120 "${BENCH[@]}" --op "$op" --dtype float32 --shapes 1x8x2x5x6 \
            --backends eager,cuda,triton --reps 1 --warmup 0 --json "$WORK/bench_${op}_float32.json"
    done
else
    step bench_model 75 "${BENCH[@]}" --model --batch 2,8 --input 16x112x112 --dtype bfloat16 --reps 3 --warmup 1 \
        --modes train --profile-reps 1 --models resnet3d18,meranet18-eager,meranet18-fused \
        --json "$WORK/bench_model.json"
    step composition 30 "$PY" benchmarks/composition_overhead.py --device cuda --reps 20 --warmup 3 \
        --json "$WORK/composition.json"
    for dtype in bfloat16 float32; do  # ra_tail first: it is what the model runs
        for op in ra_tail st_attention channel_attention; do
            step "bench_${op}_$dtype" 60 "${BENCH[@]}" --op "$op" --dtype "$dtype" \
                --backends eager,compile,cuda,triton --reps 20 --warmup 3 --json "$WORK/bench_${op}_$dtype.json"
        done
    done
fi

echo "[gpu_check] done in ${SECONDS}s"
"$PY" benchmarks/gpu_check_report.py summary "$WORK/steps.tsv" "$WORK" "$OUT"
status=$?
tar -czf "$OUT/results.tar.gz" -C "$WORK" .
"$PY" benchmarks/gpu_check_report.py outputs "$OUT" || status=1
exit $status
