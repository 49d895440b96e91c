#!/usr/bin/env bash
# Single-kernel benchmarks beside their PyTorch peers, in one call on the GPU machine: LayerNorm forward and
# backward per width (loom_layernorm_bench, layernorm_peer.py) and the fused cross-entropy at GPT-2 124M's
# shape (loom_cross_entropy_bench, cross_entropy_peer.py), then the ratio tables (compare.py).
# usage: bench/kernels/run.sh BIN_DIR OUTDIR
#   BIN_DIR holds loom_layernorm_bench and loom_cross_entropy_bench (and lib/ with shared libraries the GPU
#   machine lacks: source bench/device_env.sh BIN_DIR first).
set -euo pipefail
bin=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$bin/loom_layernorm_bench" --json "$out/loom_layernorm.json" 2>&1 | tee "$out/loom_layernorm.log"
python3 "$here/layernorm_peer.py" --json "$out/peer_layernorm.json" 2>&1 | tee "$out/peer_layernorm.log"
"$bin/loom_cross_entropy_bench" --json "$out/loom_cross_entropy.json" 2>&1 | tee "$out/loom_cross_entropy.log"
python3 "$here/cross_entropy_peer.py" --json "$out/peer_cross_entropy.json" 2>&1 | tee "$out/peer_cross_entropy.log"
python3 "$here/compare.py" "$out" | tee "$out/ratios.txt"
