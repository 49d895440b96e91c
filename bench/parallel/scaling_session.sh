#!/usr/bin/env bash
# The 4-GPU scaling call (issue 8): GPU tests, NCCL equivalence tests on every GPU, then GPT-2 350M and the
# 1.3B model under data-only, tensor x data and tensor+sequence layouts, each beside NCCL's bus bandwidth.
# Global batches are chosen so that every layout has a data-parallel-only twin with the same global batch
# (loss curves compared by bench/parallel/compare.py). usage: bash bench/parallel/scaling_session.sh CARRIED OUT
set -uo pipefail
carried=$1 out=$2
bash bench/multi_gpu_session.sh "$carried" "$out/gpt2_350m" configs/gpt2_350m.yaml 8 \
  "4:1 4:1:b=2 2:2:b=4 2:2:sp:b=4 1:4 1:4:sp"
bash bench/parallel/run.sh "$carried" "$carried/baselines" "$out/gpt_1p3b" configs/gpt_1p3b.yaml 4 8 20 \
  4:1 4:1:b=4 2:2:b=8 2:2:sp:b=8 1:4:b=16 1:4:sp:b=16
