#!/usr/bin/env bash
# Runs Loom's flash-attention bench and the PyTorch SDPA peers (FA2 and cuDNN backends) in the same device
# call, writes both JSONs and the logs to OUTDIR, and prints the ratio table last; then (unless
# SKIP_PRUNED=1) the head dims pruning produces beside d64 (loom_flash_bench --pairs; no peer: SDPA's flash
# and cuDNN backends need equal q/k and v head dims).
# ROUNDS=N (default 1) alternates N rounds of Loom and peer (loom.rI.json, peer.rI.json); compare.py then prints
# medians over the rounds and the range of the per-round ratio to cuDNN: single cells move by up to ~10 % between
# runs in one call, more than some of the margins the table is read for.
# usage: bench/attention/run.sh BENCH_BINARY BASELINES_DIR OUTDIR [extra flash_bench/attention.py args]
set -euo pipefail
bench=$1 baselines=$2 outdir=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$outdir"
# flash_bench-only flags (--fwd-blocks, --repeat, --host-times, --no-det) are not passed to the peer.
peer_args=() skip=0
for a in "$@"; do
  if ((skip)); then skip=0; continue; fi
  case $a in --fwd-blocks|--repeat) skip=1 ;; --host-times|--no-det) ;; *) peer_args+=("$a") ;; esac
done
loom_jsons="" peer_jsons=""
for ((r = 1; r <= ${ROUNDS:-1}; r++)); do
  "$bench" --json "$outdir/loom.r$r.json" "$@" 2>&1 | tee -a "$outdir/loom_bench.log"
  (cd "$baselines" && PYTHONUNBUFFERED=1 python3 attention.py --json "$outdir/peer.r$r.json" "${peer_args[@]}") 2>&1 |
    tee -a "$outdir/peer_bench.log"
  loom_jsons+="${loom_jsons:+,}$outdir/loom.r$r.json" peer_jsons+="${peer_jsons:+,}$outdir/peer.r$r.json"
done
python3 "$here/compare.py" "$loom_jsons" "$peer_jsons" | tee "$outdir/ratios.txt"
if [ -z "${SKIP_PRUNED:-}" ]; then
  "$bench" --json "$outdir/pruned.json" --seqlens 1024 4096 \
    --pairs 8x8 16x16 24x24 32x32 40x40 48x48 56x56 72x72 96x96 128x128 32x64 64x32 48x64 64x128 128x64 32x128 \
    2>&1 | tee "$outdir/pruned.txt"
fi
