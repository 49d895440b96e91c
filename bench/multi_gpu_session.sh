#!/usr/bin/env bash
# One device call on a multi-GPU machine: the single-GPU tests, the NCCL equivalence tests on every GPU, the
# parallel training bench (bench/parallel/run.sh) and, optionally, the single-GPU training bench beside the
# PyTorch peers (bench/train/run.sh). Run from the repository root with the packed folder carried:
#   bash bench/multi_gpu_session.sh CARRIED_DIR OUTDIR CONFIG BATCH "LAYOUTS" [peers]
set -uo pipefail
carried=$1 out=$2 config=$3 batch=$4 layouts=$5 peers=${6:-}
source "$(dirname "$0")/device_env.sh" "$carried"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$out"
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvidia-smi topo -m; } | tee "$out/card.txt"
"$carried/loom_gpu_tests" --gtest_brief=1 > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit $?: $(grep -E '^\[  (PASSED|FAILED) ' "$out/gpu_tests.log" | tr '\n' ' ')"
grep -E '^\[  FAILED  \]' "$out/gpu_tests.log" | head -20
mpirun -np "$gpus" --bind-to none -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE "$carried/loom_gpu_tests" \
  --gtest_filter='*Nccl*' > "$out/nccl_tests.log" 2>&1
echo "nccl communicator tests ($gpus ranks) exit $?"
mpirun -np "$gpus" --bind-to none -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE "$carried/loom_gpu_mpi_tests" \
  > "$out/gpu_mpi_tests.log" 2>&1
echo "gpu mpi tests ($gpus ranks) exit $?: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/gpu_mpi_tests.log" | tr '\n' ' ')"
grep -E 'FAILED|rank [0-9]+ of' "$out/gpu_mpi_tests.log" | head -20
# shellcheck disable=SC2086
bash bench/parallel/run.sh "$carried" "$carried/baselines" "$out/parallel" "$config" "$gpus" "$batch" 30 $layouts
[ "$peers" = peers ] && bash bench/train/run.sh "$carried" "$carried/baselines" "$out/train" full
exit 0
