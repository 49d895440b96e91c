#!/usr/bin/env bash
# The durable controller: killed with SIGKILL while a job runs across hosts, and started again on the same jobs
# folder, it takes the job up from its journal; the ranks register again and the job finishes as if nothing
# happened.
#
#   controller_restart_test.sh SOURCE_DIR BUILD_DIR
#
# Three hosts: the controller (TLS, host0's address) and the job's launcher on host0, 4 data-parallel ranks on
# host1 and host2. The job is paused after step MN_PAUSE_STEP; the controller gets SIGKILL; the job's processes
# must live on (they are no children the kernel would take with it). A new controller on the same --jobs-dir
# and address must then show the job running in attempt 1 with its history (events, metrics), get all 4 ranks
# registered again, and, once resumed, see it finish in attempt 1 with no restart: every step trained once,
# every loss and the final weights equal, bit for bit, to the run without faults (elastic_reference.sh's
# no_fault). The journal holds the job's token only as its SHA-256 hash, and never the admin token.
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
source_dir="$1" build_dir="$2"
here="$source_dir/tests/multinode"
. "$here/netns_fixture.sh"
. "$here/run_files.sh"
. "$here/controller_files.sh"
mn_require_namespaces

mc_begin_fault_test "$source_dir" "$build_dir" controller_restart
work="$MC_WORK" reference="$MC_REFERENCE"
serve_options=("${MC_SERVE_OPTIONS[@]}" --max-restarts 0)
mc_serve "${serve_options[@]}"

run_dir="$work/runs/job"
job="$(mc_cli submit "$MC_CONFIG" parallel.data=4 data.batch_size=1 train.out_dir="$run_dir" --name restart \
  --token-out "$work/job_token")"
mc_cli pause "$job" --at-step "$MN_PAUSE_STEP"
mc_wait 120 "rank 0 to pause after step $MN_PAUSE_STEP" mc_is "$job" ranks.0.paused true
fail=0
keeper="$("$build_dir/loom_multinode_tool" field gang.keeperPid <"$work/runs/controller/$job/job.json")"
ranks="$(mc_loom_pids host1 | tr '\n' ' ')$(mc_loom_pids host2 | tr '\n' ' ')"

echo "== SIGKILL to the controller (pid $MC_PID)"
kill -KILL "$MC_PID"
sleep 2
for p in $keeper $ranks; do
  kill -0 "$p" 2>/dev/null || { echo "FAIL: pid $p of the job died with the controller"; fail=1; }
done
journal="$work/runs/controller/$job/job.json"
token="$(tr -d '\n' <"$work/job_token")"
if grep -qF "$token" "$journal" || grep -qF "$(tr -d '\n' <"$work/runs/controller/admin_token")" "$journal"; then
  echo "FAIL: the journal $journal holds a token"
  fail=1
fi
if ! grep -qF "$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)" "$journal"; then
  echo "FAIL: the journal $journal lacks the job token's SHA-256"
  fail=1
fi

echo "== a new controller on the same jobs folder"
mc_serve "${serve_options[@]}"
if [ "$(mc_field "$job" state)" != RUNNING ] || [ "$(mc_field "$job" attempt)" != 1 ]; then
  echo "FAIL: the restarted controller does not show $job running in attempt 1"
  mc_cli status "$job"
  fail=1
fi
[ "$(mc_field "$job" step)" = "$MN_PAUSE_STEP" ] || { echo "FAIL: the metrics history was lost"; fail=1; }
mc_wait 60 "the 4 ranks to register again" mc_is "$job" ranks.# 4
# The job's own token (hashed in the journal) still works for its commands.
mn_exec host0 "$build_dir/loom-controller" resume "$job" --address "$MC_ADDRESS" --ca "$MC_CA" \
  --token-file "$work/job_token"
mc_wait 180 "the job to finish" mc_is "$job" state FINISHED
mc_cli status "$job"
[ "$(mc_field "$job" attempt)" = 1 ] || { echo "FAIL: the job was started again"; fail=1; }
[ "$(mc_field "$job" restarts)" = 0 ] || { echo "FAIL: the job was restarted"; fail=1; }
if ! mc_cli status "$job" | grep -q "controller restarted: took up attempt 1 again"; then
  echo "FAIL: no event of the takeover"
  fail=1
fi
steps="$(grep -c '"loss"' "$run_dir/metrics.jsonl")"
if [ "$steps" != "$MN_STEPS" ]; then echo "FAIL: $steps step records for $MN_STEPS steps: a step ran twice"; fail=1; fi
echo "== the job against the run without faults (bit for bit)"
"$build_dir/loom_multinode_tool" compare "$reference/no_fault" "$run_dir" --steps "$MN_STEPS" --exact || fail=1
((fail == 0)) && echo "PASS: the restarted controller took the job up; it finished as the uninterrupted run"
exit $fail
