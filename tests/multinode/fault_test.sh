#!/usr/bin/env bash
# A host of a running job dies, or drops off the network, and the controller restarts the job on the hosts
# that are left, with fewer data-parallel ranks (parallel.elastic) and the same global batch.
#
#   fault_test.sh SOURCE_DIR BUILD_DIR host_death|partition
#
# Three hosts: the controller (TLS, on host0's address) and the job's launcher on host0, the job's 4 ranks on
# host1 and host2 (2 each; rank 0 on host1). The job (elastic_reference.sh's run, min_data 2) is paused after
# step MN_PAUSE_STEP, then:
#   host_death  every process of host1 (its Open MPI daemon and ranks 0 and 1) gets SIGKILL, and its link goes
#               down (a dead machine answers nothing);
#   partition   host2's link goes down; its ranks keep running, cut off.
# The controller must notice within 10 s (heartbeat timeout 4 s), end the attempt (the surviving host's ranks of
# attempt 1 end; the controller kills only the processes of its own gang: the partitioned host's ranks are still
# alive afterwards), find the lost host unreachable (the host probe:
# probe_host.sh), and restart from the last complete checkpoint (step MN_FAULT_CHECKPOINT) on the other host with
# parallel.data 2 and train.grad_accum_steps 2. The job then finishes, and:
#   - every step's loss and the final weights equal, bit for bit, the uninterrupted run with the same layout
#     change (elastic_reference.sh's layout_change; CPU arithmetic is deterministic for a given layout);
#   - every step's loss (the last one included) is within 1e-5 (relative) of the run without faults, and the
#     final weights within 1e-4: the loss curve continues as if nothing happened;
#   - partition: once the link is back, the cut-off ranks exit by themselves (their heartbeat is answered
#     "stale"); nothing signalled them.
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
source_dir="$1" build_dir="$2" mode="$3"
here="$source_dir/tests/multinode"
. "$here/netns_fixture.sh"
. "$here/run_files.sh"
. "$here/controller_files.sh"
mn_require_namespaces
case "$mode" in
  host_death) victim=host1 survivor=host2 ;;
  partition) victim=host2 survivor=host1 ;;
  *) echo "fault_test.sh: unknown mode '$mode'"; exit 2 ;;
esac

mc_begin_fault_test "$source_dir" "$build_dir" "fault_$mode"
work="$MC_WORK" reference="$MC_REFERENCE"
mc_serve "${MC_SERVE_OPTIONS[@]}" --max-restarts 2

run_dir="$work/runs/job"
job="$(mc_cli submit "$MC_CONFIG" parallel.data=4 data.batch_size=1 train.out_dir="$run_dir" --name "$mode" \
  --token-out "$work/job_token")"
mc_cli pause "$job" --at-step "$MN_PAUSE_STEP"
mc_wait 120 "rank 0 to pause after step $MN_PAUSE_STEP" mc_is "$job" ranks.0.paused true
fail=0
step="$(mc_field "$job" step)"
if [ "$step" != "$MN_PAUSE_STEP" ]; then echo "FAIL: paused at step $step, not $MN_PAUSE_STEP"; fail=1; fi
echo "== attempt 1: $(mc_field "$job" layout | tr -d '\n'), paused at step $step"

victim_ranks="$(mc_loom_pids "$victim" | tr '\n' ' ')"
survivor_ranks="$(mc_loom_pids "$survivor" | tr '\n' ' ')"
if [ -z "$victim_ranks" ] || [ -z "$survivor_ranks" ]; then
  echo "FAIL: no ranks on $victim or $survivor"
  exit 1
fi
victim_index="${victim#host}"
fault_time="$(date +%s.%N)"
if [ "$mode" = host_death ]; then
  echo "== $victim dies: SIGKILL to every process in it, then its link goes down"
  for _ in $(seq 50); do
    pids="$(ip netns pids "$(mn_netns "$victim")")"
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086  # one pid a word
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  ip link set "${MN_PREFIX}v$victim_index" down
else
  echo "== $victim is cut off: its link goes down (ranks $victim_ranks keep running)"
  ip link set "${MN_PREFIX}v$victim_index" down
fi

mc_wait 30 "the controller to restart the job" mc_is "$job" restarts 1
status="$(mc_cli status "$job" --json)"
event="$("$build_dir/loom_multinode_tool" field events.# <<<"$status")"
detected=""
for ((i = 0; i < event; i++)); do
  if [ "$("$build_dir/loom_multinode_tool" field "events.$i.state" <<<"$status")" = RESTARTING ]; then
    detected="$("$build_dir/loom_multinode_tool" field "events.$i.unixTime" <<<"$status")"
    echo "restart event: $("$build_dir/loom_multinode_tool" field "events.$i.message" <<<"$status")"
    break
  fi
done
seconds="$(awk -v a="$fault_time" -v b="$detected" 'BEGIN { printf "%.2f", b - a }')"
echo "detected $seconds s after the fault"
if [ -z "$detected" ] || awk -v s="$seconds" 'BEGIN { exit !(s > 10) }'; then
  echo "FAIL: the fault was not detected within 10 s"
  fail=1
fi
# The ranks of attempt 1 on the host that is left end with the attempt (Open MPI's daemon there ends them when
# the controller kills mpirun); attempt 2's ranks are new processes.
# shellcheck disable=SC2317  # called through mc_wait
survivor_ranks_gone() {
  local p
  for p in $survivor_ranks; do kill -0 "$p" 2>/dev/null && return 1; done
  return 0
}
mc_wait 30 "attempt 1's ranks on $survivor ($survivor_ranks) to end" survivor_ranks_gone
if [ "$mode" = partition ]; then
  for p in $victim_ranks; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "FAIL: rank pid $p on the cut-off $victim died: the controller may only end processes of its own gang"
      fail=1
    fi
  done
fi
mc_cli resume "$job"
mc_wait 180 "the job to finish" mc_is "$job" state FINISHED
mc_cli status "$job"

expect() {  # expect PATH VALUE
  local got
  got="$(mc_field "$job" "$1")"
  if [ "$got" != "$2" ]; then echo "FAIL: $1 is '$got', expected '$2'"; fail=1; fi
}
expect attempt 2
expect restarts 1
expect layout.data 2
expect layout.gradAccumSteps 2
expect layout.hosts.# 1
expect layout.hosts.0.name "$survivor"
checkpoint="$(printf 'ckpt_%08d' "$MN_FAULT_CHECKPOINT")"
attempt_log="$work/runs/controller/$job/attempt_2.log"
if ! grep -q "resumed from $run_dir/$checkpoint at step $MN_FAULT_CHECKPOINT" "$attempt_log"; then
  echo "FAIL: attempt 2 did not resume from $checkpoint"
  fail=1
fi

echo "== the job against the uninterrupted run with the same layout change (bit for bit)"
"$build_dir/loom_multinode_tool" compare "$reference/layout_change" "$run_dir" --steps "$MN_STEPS" --exact || fail=1
echo "== the job against the run without faults (loss curve within 1e-5)"
"$build_dir/loom_multinode_tool" compare "$reference/no_fault" "$run_dir" --steps "$MN_STEPS" --loss-rtol 1e-5 \
  --weight-rtol 1e-4 || fail=1

# shellcheck disable=SC2317  # called through mc_wait
victim_ranks_gone() {
  local p
  for p in $victim_ranks; do kill -0 "$p" 2>/dev/null && return 1; done
  return 0
}
if [ "$mode" = partition ]; then
  echo "== $victim's link comes back: its ranks of attempt 1 must exit by themselves"
  ip link set "${MN_PREFIX}v$victim_index" up
  mc_wait 60 "the cut-off ranks to exit after their stale heartbeat" victim_ranks_gone
fi
((fail == 0)) && echo "PASS: $mode detected in $seconds s; the job finished on $survivor as the elastic reference"
exit $fail
