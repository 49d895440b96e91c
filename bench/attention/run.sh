#!/usr/bin/env bash
# Runs Loom's flash-attention bench and the PyTorch SDPA peers (FA2 and cuDNN backends) in the same device
# call, writes both JSONs and the logs to OUTDIR, and prints the ratio table last.
# usage: bench/attention/run.sh BENCH_BINARY BASELINES_DIR OUTDIR [extra flash_bench/attention.py args]
set -euo pipefail
bench=$1 baselines=$2 outdir=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$outdir"
"$bench" --json "$outdir/loom.json" "$@" 2>&1 | tee "$outdir/loom_bench.log"
(cd "$baselines" && PYTHONUNBUFFERED=1 python3 attention.py --json "$outdir/peer.json" "$@") 2>&1 | tee "$outdir/peer_bench.log"
python3 "$here/compare.py" "$outdir/loom.json" "$outdir/peer.json" | tee "$outdir/ratios.txt"
