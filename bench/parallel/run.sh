#!/usr/bin/env bash
# Multi-GPU training throughput through the real trainer (`loom train` under launch/loom-mpirun) on a
# synthetic, learnable token stream (make_mock_shard.py), with PyTorch's NCCL all-reduce bus bandwidth
# (shared/baselines/allreduce.py) measured in the same call. Run from the repository root on the GPU machine:
#   bash bench/parallel/run.sh CARRIED_DIR BASELINES_DIR OUTDIR CONFIG GPUS BATCH [STEPS] [LAYOUTS...]
# CARRIED_DIR holds `loom` and lib/ (bench/pack_for_device.sh). BATCH is the one-GPU run's batch (sequences).
# A layout is data:tensor[:sp][:c=COMM_TILES][:b=PER_RANK_BATCH] (default per-rank batch: BATCH, comm tiles: the
# config's); default layouts for GPUS=2:
# 2:1 1:2 1:2:sp. Prints the table of bench/parallel/compare.py last.
set -uo pipefail
carried=$1 baselines=$2 out=$3 config=$4 gpus=$5 batch=$6 steps=${7:-30}
shift $(( $# < 7 ? $# : 7 ))
layouts=("$@")
[ ${#layouts[@]} -eq 0 ] && layouts=("$gpus:1" "1:$gpus" "1:$gpus:sp")
source "$(dirname "$0")/../device_env.sh" "$carried"
mkdir -p "$out" data/mock
[ -f data/mock/tokens_000.bin ] || python3 "$(dirname "$0")/make_mock_shard.py" data/mock/tokens_000.bin 20000000
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== NCCL all-reduce bus bandwidth (PyTorch, $gpus GPUs)" >&2
(cd "$baselines" && torchrun --nproc_per_node="$gpus" allreduce.py 2>&1) | grep allreduce | tee "$out/nccl_busbw.txt"

common=(data.train=data/mock/tokens_000.bin data.val= train.max_steps="$steps" train.val_every=0
        train.sample_every=0 train.checkpoint_every=-1 train.log_every=10 train.progress=false
        train.overwrite=true)  # a rerun into the same OUTDIR replaces the earlier measurement
run() {  # name data tensor sequence per-rank-batch [comm-tiles]
  local name=$1 d=$2 t=$3 sp=$4 b=$5 tiles=${6:-} np=$(( $2 * $3 ))
  echo "== $name: $np rank(s), data $d x tensor $t, sequence parallel $sp, batch $b per data rank" >&2
  launch/loom-mpirun --np "$np" --gpu --loom "$carried/loom" --mpi -x --mpi LD_LIBRARY_PATH -- \
    train "$config" "${common[@]}" train.out_dir="$out/runs/$name" data.batch_size="$b" parallel.data="$d" \
    parallel.tensor="$t" parallel.sequence="$sp" ${tiles:+parallel.comm_tiles=$tiles} > "$out/$name.log" 2>&1
  echo "   exit $?: $(grep -E '^step +[0-9]+/' "$out/$name.log" | tail -1)" >&2
  grep -iE "error|fail" "$out/$name.log" | head -5 >&2
}
run single_b$batch 1 1 false "$batch"
for layout in "${layouts[@]}"; do
  IFS=: read -r d t rest <<< "$layout"
  sp=false b=$batch tiles=""
  for opt in ${rest//:/ }; do
    case $opt in sp) sp=true ;; b=*) b=${opt#b=} ;; c=*) tiles=${opt#c=} ;; esac
  done
  run "dp${d}_tp${t}$([ $sp = true ] && echo _sp)${tiles:+_c$tiles}_b$b" "$d" "$t" "$sp" "$b" "$tiles"
done
python3 "$(dirname "$0")/compare.py" "$out/runs" | tee "$out/scaling.txt"
