#!/usr/bin/env bash
# tests/mpi's suite (collectives, gradient sync, the distributed-training equivalence harness, errors) with
# its 4 ranks on 2 simulated hosts, 2 a host, started by launch/loom-mpirun: every collective crosses the
# bridge over TCP between hosts and uses shared memory inside one.
#
#   mpi_tests_test.sh SOURCE_DIR BUILD_DIR
#
# ProcessEnvironment.MatchesMpirunsWorld is left out: it asserts that every rank is on one host.
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
source_dir="$1" build_dir="$2"
here="$source_dir/tests/multinode"
. "$here/netns_fixture.sh"
. "$here/run_files.sh"
mn_require_namespaces

work="$build_dir/multinode/mpi_tests"
rm -rf "$work"
mkdir -p "$work"
mn_up 2
mn_hostfile "$work/hostfile" 2 2
status=0
LOOM_MN_PREFIX="$MN_PREFIX" mn_exec host0 timeout 60 "$source_dir/launch/loom-mpirun" --np 4 \
  --hostfile "$work/hostfile" --net "$MN_SUBNET" --rsh-agent "$here/rsh_agent.sh" --cpu \
  --loom "$build_dir/loom_mpi_tests" "${MN_SHARED_CORES[@]}" --mpi --display-map -- --gtest_filter=-ProcessEnvironment.MatchesMpirunsWorld >"$work/run.log" 2>&1 || status=$?
cat "$work/run.log"
if ((status != 0)); then echo "FAIL: loom_mpi_tests across 2 hosts exited with $status"; exit 1; fi
for host in host0 host1; do
  if ! grep -Eq "Data for node: $host[[:space:]].*Num procs: 2" "$work/run.log"; then
    echo "FAIL: mpirun's map does not show 2 ranks on $host"
    exit 1
  fi
done
echo "PASS: loom_mpi_tests on 2 hosts x 2 ranks"
