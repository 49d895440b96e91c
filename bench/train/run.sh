#!/usr/bin/env bash
# Training-step throughput of Loom beside the PyTorch peers, in one call on the GPU machine.
# usage: bench/train/run.sh BIN_DIR BASELINES_DIR OUTDIR [quick]
#   BIN_DIR holds loom_train_bench (and libs.tar.xz with shared libraries the GPU machine lacks).
#   Prints one table last: what, Loom, PyTorch eager, torch.compile, ratios; JSON per run in OUTDIR.
set -uo pipefail
bin=$1 baselines=$2 out=$3 mode=${4:-full}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
run() {  # name, then the command
  local name=$1; shift
  echo "== $name: $*" >&2
  "$@" 2>&1 | tee -a "$out/bench.log" >&2
}
run gpt2_124m "$bin/loom_train_bench" --config configs/gpt2_124m.yaml --batch 16 --seq 1024 --json "$out/loom_gpt2_124m.json"
run deit_b "$bin/loom_train_bench" --config configs/deit_b.yaml --batch 128 --json "$out/loom_deit_b.json"
(cd "$baselines" && run peer_gpt2_124m python3 gpt2.py --batch 16 --seq 1024 --json "$out/peer_gpt2_124m.json")
(cd "$baselines" && run peer_deit_b python3 deit.py --model deit_base_patch16_224 --batch 128 --modes eager --json "$out/peer_deit_b.json")
if [ "$mode" = full ]; then
  run gpt2_350m "$bin/loom_train_bench" --config configs/gpt2_350m.yaml --batch 8 --seq 1024 --json "$out/loom_gpt2_350m.json"
  run deit_s "$bin/loom_train_bench" --config configs/deit_s.yaml --batch 128 --json "$out/loom_deit_s.json"
  (cd "$baselines" && run peer_gpt2_350m python3 gpt2.py --layers 24 --width 1024 --heads 16 --batch 8 --seq 1024 --json "$out/peer_gpt2_350m.json")
  (cd "$baselines" && run peer_deit_s python3 deit.py --model deit_small_patch16_224 --batch 128 --modes eager --json "$out/peer_deit_s.json")
fi
python3 "$(dirname "$0")/compare.py" "$out" | tee "$out/ratios.txt"
