#!/usr/bin/env bash
# `loom train` as an MPI job of 2 ranks (ctest label mpi): an error every rank meets is printed once, without
# internal check text ("check failed: ... at file:line"), and exits non-zero; a good run prints `done:` once.
#   bash tests/mpi/cli_errors_test.sh BUILD_DIR
set -uo pipefail
build=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# An llm.c token shard: 256 int32 header (magic 20240520, version 1, 4000 tokens), then uint16 tokens (any value
# fits the config's vocabulary of 65536).
{ printf '\x88\xd8\x34\x01\x01\x00\x00\x00\xa0\x0f\x00\x00'; head -c $((253 * 4)) /dev/zero; head -c 8000 /dev/urandom; } \
  >"$work/train_000000.bin"
cat >"$work/c.yaml" <<EOF_CONFIG
model: {kind: gpt, n_layer: 1, d_model: 16, n_head: 2, vocab_size: 65536, max_seq_len: 8}
data: {train: "$work/train_*.bin", batch_size: 2, seq_len: 8}
train: {max_steps: 4, device: cpu, progress: false, log_every: 2, out_dir: "$work/run"}
EOF_CONFIG

failures=0
# expect NAME EXIT_WANTED PATTERN COUNT -- LOOM ARGS...: the output holds PATTERN exactly COUNT times.
expect() {
  local name=$1 want_exit=$2 pattern=$3 count=$4
  shift 5
  local out status
  out=$(timeout 100 mpirun -np 2 --oversubscribe "$build/loom" "$@" 2>&1)
  status=$?
  local seen
  seen=$(grep -c -- "$pattern" <<<"$out")
  if [ "$want_exit" = 0 ] && [ "$status" != 0 ] || [ "$want_exit" != 0 ] && [ "$status" = 0 ] ||
     [ "$seen" != "$count" ] || grep -q "check failed" <<<"$out"; then
    echo "FAIL $name: exit $status, '$pattern' $seen times (want $count), output:"
    echo "$out"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}
expect layout 1 "loom: error: parallel.data (1) x parallel.tensor (1) must equal the number of processes (2" 1 -- \
  train "$work/c.yaml"
expect config 1 "loom: error: $work/c.yaml: override 'optim.lrr=1': optim.lrr: unknown key" 1 -- \
  train "$work/c.yaml" parallel.data=2 optim.lrr=1
expect data 1 "loom: error: data.train: " 1 -- train "$work/c.yaml" parallel.data=2 data.train="$work/none_*.bin"
expect widths 1 "loom: error: model.blocks\[0\].heads (3) must divide by parallel.tensor (2)" 1 -- \
  train "$work/c.yaml" parallel.tensor=2 model.n_head=3 model.d_model=12
expect done 0 "^done: 4 steps" 1 -- train "$work/c.yaml" parallel.data=2
expect folder 1 "holds an earlier run" 1 -- train "$work/c.yaml" parallel.data=2
exit $((failures > 0))
