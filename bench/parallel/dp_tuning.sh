#!/usr/bin/env bash
# Data-parallel knobs on all GPUs (gradient bucket size, NCCL channel count) for GPT-2 124M, through the real
# trainer as bench/parallel/run.sh does (run that first: it writes data/mock and the one-GPU baseline).
#   bash bench/parallel/dp_tuning.sh CARRIED_DIR OUTDIR GPUS
# Prints one line per setting from bench/parallel/compare.py's table.
set -uo pipefail
carried=$1 out=$2 gpus=$3
source "$(dirname "$0")/../device_env.sh" "$carried"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
common=(data.train=data/mock/tokens_000.bin data.val= train.max_steps=30 train.val_every=0 train.sample_every=0
        train.checkpoint_every=-1 train.log_every=10 train.progress=false data.batch_size=16
        train.overwrite=true)  # a rerun into the same OUTDIR replaces the earlier measurement
for setting in "bucket_mb=25" "bucket_mb=50" "bucket_mb=100" "bucket_mb=25 NCCL_MAX_NCHANNELS=8" \
               "bucket_mb=50 NCCL_MAX_NCHANNELS=4"; do
  read -r bucket nccl <<< "$setting"
  name="dp${gpus}_tp1_b16"
  dir="$out/${bucket/=/}${nccl:+_${nccl/=/}}"
  mkdir -p "$dir/runs"
  [ -d "$out/../parallel/runs/single_b16" ] && ln -sfn "$(cd "$out/../parallel/runs/single_b16" && pwd)" "$dir/runs/single_b16"
  env ${nccl:+$nccl} launch/loom-mpirun --np "$gpus" --gpu --loom "$carried/loom" --mpi -x --mpi LD_LIBRARY_PATH \
    ${nccl:+--mpi -x --mpi ${nccl%%=*}} -- train configs/gpt2_124m.yaml "${common[@]}" parallel.data="$gpus" \
    parallel."$bucket" train.out_dir="$dir/runs/$name" > "$dir/$name.log" 2>&1
  echo "$setting: $(python3 "$(dirname "$0")/compare.py" "$dir/runs" | grep "^$name")"
done
