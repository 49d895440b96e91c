# shellcheck shell=bash
# Sourced by the multinode tests: simulated hosts on one machine. Host I ("hostI") is a Linux network
# namespace (lmn<pid>h<I>) with a veth pair (lmn<pid>v<I>) whose other end, eth0 inside the namespace, has
# address 10.231.0.(I+1)/24; the outer ends join a bridge the fixture creates (lmn<pid>br). No address goes to
# the bridge or anywhere outside the namespaces, so test traffic stays among the addresses assigned here. The
# filesystem is shared (every host sees the build tree and the test's folders), as on a cluster with NFS.
#
# Processes enter a host with `mn_exec HOST CMD...` (a network namespace plus a UTS namespace whose hostname
# is HOST, so Open MPI sees distinct nodes); mpirun reaches the other hosts through rsh_agent.sh.
#
# mn_up installs a trap that tears everything down on exit (pass or fail, or a signal): the hosts' processes
# are killed (by pid, from `ip netns pids`), then the veths, namespaces and bridge are deleted.
# Requires root, `ip` (iproute2) and `unshare` (util-linux); mn_require_namespaces exits with ctest's skip code
# (77) and a message where they are missing.

MN_SKIP=77
MN_SUBNET=10.231.0.0/24
MN_HOSTS=()

mn_require_namespaces() {
  local tool
  if [ "$(id -u)" != 0 ]; then
    echo "SKIP: multinode tests make network namespaces and need root (CI runs as root)"
    exit $MN_SKIP
  fi
  for tool in ip unshare timeout; do
    if ! command -v "$tool" >/dev/null; then
      echo "SKIP: multinode tests need '$tool' (iproute2, util-linux, coreutils)"
      exit $MN_SKIP
    fi
  done
  local probe="lmn$$probe"
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "SKIP: cannot make a network namespace here (ip netns add failed: a container without CAP_SYS_ADMIN?)"
    exit $MN_SKIP
  fi
  ip netns delete "$probe"
}

# Names are short (interface names have at most 15 characters) and carry this shell's pid, so fixtures of
# tests running at the same time do not collide; every name starts with "lmn" (checked by leftovers_test.sh).
MN_PREFIX="lmn$$"
mn_netns() { echo "${MN_PREFIX}h${1#host}"; }

mn_down() {
  local i ns pids
  trap - EXIT INT TERM
  for ((i = 0; i < ${#MN_HOSTS[@]}; i++)); do
    ns="$(mn_netns "${MN_HOSTS[i]}")"
    ip netns list | grep -qw "$ns" || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      pids="$(ip netns pids "$ns")"
      [ -z "$pids" ] && break
      kill -KILL $pids 2>/dev/null || true
      sleep 0.2
    done
    ip link delete "${MN_PREFIX}v$i" 2>/dev/null || true
    ip netns delete "$ns"
  done
  ip link delete "${MN_PREFIX}br" 2>/dev/null || true
  MN_HOSTS=()
}

# Namespaces and links of fixtures whose shell is gone (a test killed by ctest's timeout cannot run its
# trap; leftovers_test.sh reports that run): their processes are killed and the names removed.
mn_remove_stale() {
  local name owner pids
  for name in $(ip netns list | awk '{print $1}' | grep -E '^lmn[0-9]+h[0-9]+$'); do
    owner="${name#lmn}" owner="${owner%%h*}"
    kill -0 "$owner" 2>/dev/null && continue
    pids="$(ip netns pids "$name")"
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    ip netns delete "$name" 2>/dev/null || true
  done
  for name in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^lmn[0-9]+(br|v[0-9]+)$'); do
    owner="${name#lmn}" owner="${owner%%[bv]*}"
    kill -0 "$owner" 2>/dev/null || ip link delete "$name" 2>/dev/null || true
  done
}

# mn_up N: hosts host0 .. host(N-1).
mn_up() {
  local n="$1" i ns
  mn_remove_stale
  trap 'mn_status=$?; mn_down; exit $mn_status' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ip link add "${MN_PREFIX}br" type bridge
  ip link set "${MN_PREFIX}br" up
  for ((i = 0; i < n; i++)); do
    MN_HOSTS+=("host$i")
    ns="$(mn_netns "host$i")"
    ip netns add "$ns"
    ip link add "${MN_PREFIX}v$i" type veth peer name eth0 netns "$ns"
    ip link set "${MN_PREFIX}v$i" master "${MN_PREFIX}br" up
    ip -n "$ns" addr add "10.231.0.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

mn_address() { echo "10.231.0.$((${1#host} + 1))"; }

# mn_exec HOST CMD...: runs CMD on HOST (its network namespace, hostname HOST).
mn_exec() {
  local host="$1"
  shift
  ip netns exec "$(mn_netns "$host")" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$host" "$@"
}
