#!/usr/bin/env bash
# A host that cannot reach the checkpoint folder is an error when the job starts, not at the first save.
#
#   shared_dir_test.sh SOURCE_DIR BUILD_DIR
#
# Two hosts, DP=2 (one rank each); host1 gets a private empty tmpfs over the shared folder (rsh_agent.sh,
# LOOM_MN_NO_SHARED_HOSTS), so train.out_dir there is another, empty folder. The job must fail before step 1
# with trainer/shared_out_dir.h's message naming the folder and rank 1, leaving no checkpoint or metrics.
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
source_dir="$1" build_dir="$2"
here="$source_dir/tests/multinode"
. "$here/netns_fixture.sh"
. "$here/run_files.sh"
mn_require_namespaces

work="$build_dir/multinode/shared_dir"
rm -rf "$work"
mkdir -p "$work/shared"
MN_BUILD_DIR="$build_dir"
config="$(mn_write_run gpt "$work" 10)"
mn_up 2
mn_hostfile "$work/hostfile" 2 1
run_dir="$work/shared/run"

status=0
LOOM_MN_PREFIX="$MN_PREFIX" LOOM_MN_NO_SHARED_HOSTS=host1 LOOM_MN_SHARED_DIR="$work/shared" \
  mn_exec host0 timeout 60 "$source_dir/launch/loom-mpirun" --hostfile "$work/hostfile" --net "$MN_SUBNET" \
  --rsh-agent "$here/rsh_agent.sh" --cpu --loom "$build_dir/loom" "${MN_SHARED_CORES[@]}" -- \
  train "$config" parallel.data=2 data.batch_size=2 train.out_dir="$run_dir" >"$work/run.log" 2>&1 || status=$?
cat "$work/run.log"
fail=0
if ((status == 0 || status == 124)); then
  echo "FAIL: the job should have failed at start (exit $status)"
  fail=1
fi
expected="train.out_dir $run_dir is not shared by every host: rank(s) 1 cannot read $run_dir/.loom_shared_check"
if ! grep -qF "$expected" "$work/run.log"; then
  echo "FAIL: no message '$expected'"
  fail=1
fi
if ! grep -qF "this rank, on host host1, finds no such file" "$work/run.log"; then
  echo "FAIL: rank 1 did not say which host could not see the folder"
  fail=1
fi
if compgen -G "$run_dir/ckpt_*" >/dev/null || [ -s "$run_dir/metrics.jsonl" ]; then
  echo "FAIL: the job trained or saved before failing: $(ls "$run_dir")"
  fail=1
fi
((fail == 0)) && echo "PASS: a host without the shared folder fails the job at start"
exit $fail
