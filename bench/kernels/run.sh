#!/usr/bin/env bash
# Single-kernel benchmarks beside their PyTorch peers, in one call on the GPU machine: LayerNorm forward and
# backward per width (loom_layernorm_bench, layernorm_peer.py), then the ratio table.
# usage: bench/kernels/run.sh BIN_DIR OUTDIR [extra args for both, e.g. --rows 8192 --widths 2048]
#   BIN_DIR holds loom_layernorm_bench (and lib/ with shared libraries the GPU machine lacks).
set -euo pipefail
bin=$1 out=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$bin/loom_layernorm_bench" --json "$out/loom_layernorm.json" "$@" 2>&1 | tee "$out/loom_layernorm.log"
python3 "$here/layernorm_peer.py" --json "$out/peer_layernorm.json" "$@" 2>&1 | tee "$out/peer_layernorm.log"
python3 "$here/compare.py" "$out/loom_layernorm.json" "$out/peer_layernorm.json" | tee "$out/layernorm_ratios.txt"
