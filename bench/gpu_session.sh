#!/usr/bin/env bash
# One device call: GPU tests, then training throughput beside the PyTorch peers. Run from the repository root
# on the GPU machine with the packed folder (bench/pack_for_device.sh) carried:
#   bash bench/gpu_session.sh CARRIED_DIR OUTDIR [quick]
set -uo pipefail
carried=$1 out=$2 mode=${3:-full}
source "$(dirname "$0")/device_env.sh" "$carried"
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } | tee "$out/card.txt"
"$carried/loom_gpu_tests" --gtest_brief=1 > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit $?: $(grep -E '^\[  (PASSED|FAILED) ' "$out/gpu_tests.log" | tr '\n' ' ')"
grep -E '^\[  FAILED  \]' "$out/gpu_tests.log" | head -20
bash bench/train/run.sh "$carried" "$carried/baselines" "$out" "$mode"
