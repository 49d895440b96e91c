#!/usr/bin/env bash
# The fixture itself: hosts have their own hostname and address on the test subnet and reach each other over
# the bridge (a loom-mpirun job across them, which also hands every rank the --controller address), and
# everything is torn down even when the test using it fails.
#
#   fixture_test.sh SOURCE_DIR
#
# A child bash brings up 3 hosts, checks them, starts a process on host2 that would outlive it, and exits
# with status 3 (a failing test); this script then checks the child's status and that none of its
# namespaces, links or processes remain. Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
source_dir="$1"
here="$source_dir/tests/multinode"
. "$here/netns_fixture.sh"
mn_require_namespaces

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
bash -c '
  set -euo pipefail
  . "$1/netns_fixture.sh"
  echo "$MN_PREFIX" >"$2/prefix"
  mn_up 3
  for i in 0 1 2; do
    [ "$(mn_exec host$i hostname)" = host$i ] || { echo "host$i: hostname $(mn_exec host$i hostname)"; exit 1; }
    mn_exec host$i ip -4 -o addr show dev eth0 | grep -q "inet $(mn_address host$i)/24" ||
      { echo "host$i: no address $(mn_address host$i) on eth0"; exit 1; }
    ! mn_exec host$i ip -4 -o addr show | grep -v " lo \| eth0 " | grep -q inet ||
      { echo "host$i: an address outside lo and eth0"; exit 1; }
  done
  printf "host0 slots=1\nhost1 slots=1\nhost2 slots=1\n" >"$2/hostfile"
  # One rank a host through loom-mpirun, each printing its hostname and the controller address it got.
  LOOM_MN_PREFIX="$MN_PREFIX" mn_exec host0 timeout 60 "$1/../../launch/loom-mpirun" --np 3 --hostfile "$2/hostfile" \
    --net "$MN_SUBNET" --rsh-agent "$1/rsh_agent.sh" --controller 10.231.0.1:50051 --loom /bin/sh -- \
    -c "echo \$(hostname) \$LOOM_CONTROLLER_ADDRESS" | sort >"$2/mpi_hosts"
  mn_exec host2 sh -c "echo \$\$ >$2/sleeper; exec sleep 600" &
  for _ in $(seq 50); do [ -s "$2/sleeper" ] && break; sleep 0.1; done
  exit 3
' fixture-child "$here" "$work" || status=$?
fail=0
if ((status != 3)); then echo "FAIL: the child fixture ended with $status, not 3"; fail=1; fi
expected="host0 10.231.0.1:50051 host1 10.231.0.1:50051 host2 10.231.0.1:50051 "
if [ "$(tr '\n' ' ' <"$work/mpi_hosts" 2>/dev/null)" != "$expected" ]; then
  echo "FAIL: loom-mpirun across the hosts printed: $(cat "$work/mpi_hosts" 2>/dev/null) (want $expected)"
  fail=1
fi
prefix="$(cat "$work/prefix")"
if ip netns list | grep -q "^$prefix"; then echo "FAIL: namespaces left: $(ip netns list | grep "^$prefix")"; fail=1; fi
if ip -o link show | grep -q ": $prefix"; then echo "FAIL: links left: $(ip -o link show | grep ": $prefix")"; fail=1; fi
sleeper="$(cat "$work/sleeper" 2>/dev/null)"
if [ -z "$sleeper" ]; then
  echo "FAIL: the process on host2 did not start"
  fail=1
elif kill -0 "$sleeper" 2>/dev/null; then
  echo "FAIL: the process started on host2 (pid $sleeper) survived the teardown"
  fail=1
fi
((fail == 0)) && echo "PASS: 3 hosts up, checked, and torn down after a failure"
exit $fail
