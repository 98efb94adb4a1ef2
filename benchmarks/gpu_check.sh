#!/usr/bin/env bash
# GPU check of meranet_fast on an NVIDIA machine without network (torch + triton in system python3):
# build the extension in place, run the GPU tests, run the GPU benchmarks; results go to OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Every step runs under `timeout` and the script carries on when one fails, so one failure does not
# lose the other results; the whole run stays under 8 minutes (a shared deadline caps each step).
# OUTDIR gets: env.txt, <step>.log for every step, pytest.xml, bench_model.json (MERANet-18 step,
# `meranet-fast bench --model`), bench_<op>_<dtype>.json for st_attention, ra_tail and channel_attention
# in float32 and bfloat16 (the public op with autograd against eager and torch.compile:
# `meranet-fast bench --op`), bench_kernels.json (the raw st_attention kernels,
# benchmarks/bench_gpu_st_attention.py), and steps.json (exit code and seconds of every step; 124 = timed
# out, "skipped" = the deadline came first).
# Knobs: PYTHON (default python3), MAX_JOBS (default 16), TORCH_CUDA_ARCH_LIST (default: the GPU's).
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # the real GPU path, never the interpreter

DEADLINE=$((SECONDS + 465))  # 8 minutes minus start-up slack
: > "$OUT/steps.tsv"

# step NAME LIMIT_S CMD...: run CMD with its output in OUT/NAME.log, for at most LIMIT_S seconds and
# never past the deadline; record the exit code and the duration.
step() {
    local name=$1 limit=$2 left rc start
    shift 2
    left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        echo "[gpu_check] $name: skipped, no time left" | tee -a "$OUT/$name.log"
        printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$OUT/steps.tsv"
        return
    fi
    echo "[gpu_check] $name (limit ${limit}s): $*"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$OUT/steps.tsv"
    echo "[gpu_check] $name: exit $rc after $((SECONDS - start))s"
    tail -n 5 "$OUT/$name.log"
}

{
    date -u
    nvidia-smi || echo "nvidia-smi failed"
    command -v nvcc && nvcc --version || echo "nvcc not found: the extension builds without CUDA"
    "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1

# In order of value: what fails first is what the later steps would have told least.
step build 170 "$PY" setup.py build_ext --inplace
step pytest 120 "$PY" -m pytest -q -m "cuda or triton" tests/ --junitxml "$OUT/pytest.xml"
# Issue #6's GPU targets: fused vs eager MERANet-18 step in bf16 and fp32, attention overhead over the
# vanilla ResNet (the torch.compile variant is left out: its compiles would not fit the deadline).
step bench_model 100 "$PY" -m meranet_fast.cli bench --model --device cuda --batch 2,8 --input 16x112x112 \
    --dtype bfloat16,float32 --reps 5 --models resnet3d18,meranet18-eager,meranet18-fused \
    --json "$OUT/bench_model.json"
for op in ra_tail st_attention channel_attention; do  # ra_tail is what the model runs
    for dtype in bfloat16 float32; do
        step "bench_${op}_$dtype" 60 "$PY" -m meranet_fast.cli bench --op "$op" --device cuda \
            --dtype "$dtype" --reps 30 --warmup 5 --json "$OUT/bench_${op}_$dtype.json"
    done
done
step bench_kernels 60 "$PY" benchmarks/bench_gpu_st_attention.py --json "$OUT/bench_kernels.json"

awk -F '\t' 'BEGIN { printf "[" }
    { printf "%s\n {\"step\": \"%s\", \"exit\": \"%s\", \"seconds\": %s}", (NR > 1 ? "," : ""), $1, $2, $3 }
    END { print "\n]" }' "$OUT/steps.tsv" > "$OUT/steps.json" && rm -f "$OUT/steps.tsv"
echo "[gpu_check] done in ${SECONDS}s; results in $OUT"
