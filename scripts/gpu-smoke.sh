#!/usr/bin/env bash
# GPU smoke test of clip-prompt-bench on a machine with one (or more) CUDA GPU, in under 5 minutes.
#
#   bash scripts/gpu-smoke.sh [OUTPUT_DIR]        (PYTHON=/path/to/python to choose the interpreter)
#
# 1. environment: torch, CUDA, the GPU, native bf16 or not;
# 2. tests/gpu (pytest -m gpu): tiny models on CUDA for every registered method in fp16 and bf16 autocast, a
#    preempted + resumed run equal to an uninterrupted one, same-seed runs bit-identical (one process and fresh
#    processes), CPU- and GPU-filled feature caches kept apart, the README's example method on CUDA;
# 3. images/s of feature extraction (ViT-B-16, random weights, 1000 generated JPEGs) with and without workers.
# Everything goes to OUTPUT_DIR (default $TMPDIR/gpu-smoke-<time>/): smoke.log, gpu-tests.xml, feature_speed.json,
# summary.txt. Exit status 0 only if every step passed. Nothing is downloaded; caches and results stay in OUTPUT_DIR.
# Expected: 1-2 minutes on one GPU; each step has a time limit (5 minutes in all; SMOKE_TIME_FACTOR=2 doubles them).
# Dry run of the script's own logic without a GPU: BENCH_GPU_SUITE_DEVICE=cpu SMOKE_TIME_FACTOR=4
# SPEED_ARGS="--backbone tiny-test --images 100" bash scripts/gpu-smoke.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
OUT=${1:-${TMPDIR:-/tmp}/gpu-smoke-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
export BENCH_CACHE="$OUT/cache" BENCH_RESULTS="$OUT/results" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee "$OUT/smoke.log") 2>&1
status=0
summary=()
step() {  # step NAME TIMEOUT_S COMMAND...: run, time and record one step
    local name=$1 limit=$(( $2 * ${SMOKE_TIME_FACTOR:-1} )) t0=$SECONDS rc
    shift 2
    echo; echo "== $name"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    [ $rc -eq 124 ] && echo "!! $name: timed out after ${limit}s"
    summary+=("$( [ $rc -eq 0 ] && echo PASS || echo "FAIL (exit $rc)" )  $name  ($((SECONDS - t0)) s)")
    [ $rc -eq 0 ] || status=1
    return $rc
}

echo "clip-prompt-bench GPU smoke test, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), output in $OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
step "environment" 45 "$PY" - <<'PYEOF' || { printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"; exit 2; }
import sys
import torch
import bench
from bench.model.backbone import bf16_supported
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), bench from {bench.__file__}")
import os
if not torch.cuda.is_available() and os.environ.get("BENCH_GPU_SUITE_DEVICE", "cuda").startswith("cuda"):
    sys.exit("FAIL: torch sees no CUDA device (CPU-only torch build, no driver, or CUDA_VISIBLE_DEVICES empty)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"native bf16: {bf16_supported(f'cuda:{i}')}")
PYEOF

step "GPU suite: pytest -m gpu tests/gpu" 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu \
    -o addopts="" -rfEs --durations=5 --junitxml="$OUT/gpu-tests.xml"
# shellcheck disable=SC2086  # SPEED_ARGS: extra arguments, split on purpose
step "feature extraction images/s, with and without DataLoader workers" 75 \
    "$PY" scripts/gpu_feature_speed.py --device "${BENCH_GPU_SUITE_DEVICE:-cuda}" --out "$OUT/feature_speed.json" \
    ${SPEED_ARGS:-}

echo; echo "== summary"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
echo "logs: $OUT/smoke.log"
exit $status
