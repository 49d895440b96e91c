#!/usr/bin/env bash
# Distributed CPU training across simulated hosts reproduces single-process training.
#
#   training_test.sh SOURCE_DIR BUILD_DIR KIND HOSTS SLOTS DATA TENSOR
#
# Brings up HOSTS hosts (netns_fixture.sh) with SLOTS slots each, runs `loom train` for KIND (gpt or vit, tiny
# models on synthetic data) with parallel.data = DATA, parallel.tensor = TENSOR through launch/loom-mpirun
# from host0 (hostfile, --net with the hosts' subnet, rsh_agent.sh as the rsh agent), checkpoints to a folder
# every host shares, and compares every step's loss (1e-5) and the final weights (1e-4) with a
# single-process run of the same global batch (loom_multinode_tool compare). Also checks that mpirun placed
# the ranks as the layout needs (SLOTS ranks on each host, by slot) and that loom used the layout.
# Exit 0 pass, 1 fail, 77 skip (no namespaces here).
set -euo pipefail
source_dir="$1" build_dir="$2" kind="$3" hosts="$4" slots="$5" data="$6" tensor="$7"
here="$source_dir/tests/multinode"
# shellcheck source=netns_fixture.sh
. "$here/netns_fixture.sh"
# shellcheck source=run_files.sh
. "$here/run_files.sh"
mn_require_namespaces

steps=20
name="${kind}_h${hosts}x${slots}_dp${data}_tp${tensor}"
work="$build_dir/multinode/$name"
rm -rf "$work"
mkdir -p "$work/shared"
MN_BUILD_DIR="$build_dir"
config="$(mn_write_run "$kind" "$work" "$steps")"

echo "== reference: one process, global batch $MN_GLOBAL_BATCH"
timeout 60 "$build_dir/loom" train "$config" train.out_dir="$work/reference" >"$work/reference.log" 2>&1 ||
  { cat "$work/reference.log"; echo "FAIL: the reference run failed"; exit 1; }

mn_up "$hosts"
export LOOM_MN_PREFIX="$MN_PREFIX"
hostfile="$work/hostfile"
mn_hostfile "$hostfile" "$hosts" "$slots"

echo "== $((data * tensor)) ranks over $hosts hosts x $slots slots: data $data x tensor $tensor"
run_dir="$work/shared/run"
status=0
mn_exec host0 timeout 120 "$source_dir/launch/loom-mpirun" --hostfile "$hostfile" --net "$MN_SUBNET" \
  --rsh-agent "$here/rsh_agent.sh" --cpu --loom "$build_dir/loom" "${MN_SHARED_CORES[@]}" --mpi --display-map -- \
  train "$config" parallel.data="$data" parallel.tensor="$tensor" data.batch_size=$((MN_GLOBAL_BATCH / data)) \
  train.out_dir="$run_dir" >"$work/run.log" 2>&1 || status=$?
cat "$work/run.log"
if ((status != 0)); then echo "FAIL: the run across hosts exited with $status"; exit 1; fi

fail=0
# mpirun's map: by slot, so host I holds ranks I*SLOTS .. I*SLOTS+SLOTS-1 (a tensor group of SLOTS or fewer
# ranks stays inside a host; one of more ranks spans hosts).
for ((i = 0; i < hosts && i * slots < data * tensor; i++)); do
  want=$((data * tensor - i * slots < slots ? data * tensor - i * slots : slots))
  if ! grep -Eq "Data for node: host${i}[[:space:]].*Num procs: $want\b" "$work/run.log"; then
    echo "FAIL: mpirun's map does not show $want rank(s) on host$i"
    fail=1
  fi
  for ((r = i * slots; r < i * slots + want; r++)); do
    if ! awk -v host="host$i" -v rank="$r" '/Data for node:/ { node = $4 }
         $0 ~ "Process rank: " rank "([^0-9]|$)" && node == host { found = 1 } END { exit !found }' "$work/run.log"; then
      echo "FAIL: rank $r is not on host$i"
      fail=1
    fi
  done
done
if ! grep -q "$data data x $tensor tensor ranks" "$work/run.log"; then
  echo "FAIL: loom did not report the layout '$data data x $tensor tensor ranks'"
  fail=1
fi
"$build_dir/loom_multinode_tool" compare "$work/reference" "$run_dir" --steps "$steps" --loss-rtol 1e-5 \
  --weight-rtol 1e-4 || fail=1
((fail == 0)) && echo "PASS: $name" || echo "FAIL: $name"
exit $fail
