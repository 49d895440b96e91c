#!/usr/bin/env bash
# The runs the controller's fault tests compare with (ctest fixture multinode_elastic_reference), made without
# any controller on simulated hosts laid out as in those tests (launch/loom-mpirun from host0, 2 ranks on each
# of host1 and host2):
#   BUILD_DIR/multinode/elastic_reference/no_fault       MN_STEPS steps with parallel.data = 4 (global batch 4),
#                                                        every checkpoint kept
#   BUILD_DIR/multinode/elastic_reference/layout_change  the same run up to its step-MN_FAULT_CHECKPOINT
#                                                        checkpoint (copied, with the metrics of those steps),
#                                                        then resumed on one host with parallel.data = 2 and
#                                                        train.grad_accum_steps = 2: an uninterrupted run with
#                                                        the layout change an elastic restart makes
#
#   elastic_reference.sh SOURCE_DIR BUILD_DIR
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
source_dir="$1" build_dir="$2"
here="$source_dir/tests/multinode"
. "$here/netns_fixture.sh"
. "$here/run_files.sh"
mn_require_namespaces

work="$build_dir/multinode/elastic_reference"
rm -rf "$work"
mkdir -p "$work"
MN_BUILD_DIR="$build_dir"
config="$(mn_write_elastic_run "$work")"
mn_up 3
export LOOM_MN_PREFIX="$MN_PREFIX"
printf 'host1 slots=2\nhost2 slots=2\n' >"$work/hosts_2.txt"
printf 'host1 slots=2\n' >"$work/hosts_1.txt"

run() {  # run NAME HOSTFILE OVERRIDES...
  local name="$1" hostfile="$2" status=0
  shift 2
  mn_exec host0 timeout 120 "$source_dir/launch/loom-mpirun" --hostfile "$hostfile" --net "$MN_SUBNET" \
    --rsh-agent "$here/rsh_agent.sh" --cpu --loom "$build_dir/loom" "${MN_SHARED_CORES[@]}" -- \
    train "$config" "$@" >"$work/$name.log" 2>&1 || status=$?
  if ((status != 0)); then
    cat "$work/$name.log"
    echo "FAIL: the $name run exited with $status"
    exit 1
  fi
}

echo "== no_fault: $MN_STEPS steps, 4 data ranks on host1 and host2"
run no_fault "$work/hosts_2.txt" parallel.data=4 data.batch_size=1 train.keep_checkpoints=0 \
  train.out_dir="$work/no_fault"
checkpoint="$(printf 'ckpt_%08d' "$MN_FAULT_CHECKPOINT")"
mkdir -p "$work/layout_change"
cp -r "$work/no_fault/$checkpoint" "$work/layout_change/"
awk -v last="$MN_FAULT_CHECKPOINT" 'match($0, /"step":[0-9]+/) && substr($0, RSTART + 7, RLENGTH - 7) + 0 <= last' \
  "$work/no_fault/metrics.jsonl" >"$work/layout_change/metrics.jsonl"
echo "== layout_change: from $checkpoint, 2 data ranks x 2 accumulation steps on host1"
run layout_change "$work/hosts_1.txt" parallel.data=2 train.grad_accum_steps=2 data.batch_size=1 \
  train.out_dir="$work/layout_change" train.resume=latest
grep -q "resumed from $work/layout_change/$checkpoint" "$work/layout_change.log" ||
  { echo "FAIL: layout_change did not resume from $checkpoint"; exit 1; }
touch "$work/done"
echo "PASS: reference runs in $work"
