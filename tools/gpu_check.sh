#!/usr/bin/env bash
# Every GPU measurement BENCHMARKS.md asks for, in one call (a lent GPU machine has minutes):
#   bash tools/gpu_check.sh [OUT_DIR]
# Prints one JSON line per benchmark and keeps them in OUT_DIR/gpu_check.jsonl. The step
# benchmarks need no TensorFlow and no dataset; the CPU-stage benchmark runs only where
# TensorFlow is installed. Each command has its own time limit, so one that hangs costs only
# its share.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
log="$out/gpu_check.jsonl"
run() {  # limit_s, command...
  local limit="$1"; shift
  echo "== $*" >&2
  timeout "$limit" "$@" | tail -1 | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
run 240 python -m revisit_jax.benchmark --config configs/ours_800ep.py --augment_share
run 150 python -m revisit_jax.benchmark --config configs/moco_800ep.py
if python -c 'import tensorflow' 2>/dev/null; then
  run 120 python -m input_pipeline.benchmark --workers "$(nproc)" --seconds 20
fi
