#!/bin/sh
# Open MPI's rsh agent for the simulated hosts of netns_fixture.sh (mpirun -mca plm_rsh_agent): called as ssh
# would be, `rsh_agent.sh [ssh options] HOST COMMAND...`, it runs COMMAND (a shell command line, as ssh hands
# it to the remote shell) in HOST's network namespace under a UTS namespace whose hostname is HOST, and, as
# sshd does on a real host, in a session of its own: the agent process itself (mpirun's child, in the job's
# session, like the ssh client) only waits for it. So the controller's kill of a job's session reaches the
# processes of the host it runs on, and never those of the other hosts (there, Open MPI's daemon ends its ranks
# when mpirun goes away, and a rank of a replaced attempt exits when its heartbeat is answered "stale").
# LOOM_MN_PREFIX names the fixture's namespaces (mpirun's environment reaches the agent). A host listed in
# LOOM_MN_NO_SHARED_HOSTS (space-separated) gets a private, empty tmpfs over LOOM_MN_SHARED_DIR: a host that
# cannot reach the shared folder.
set -eu
while [ $# -gt 0 ]; do
  case "$1" in
    -*) shift ;;  # ssh-style options (Open MPI may add -x); nothing to do for a namespace
    *) break ;;
  esac
done
host="$1"
shift
ns="${LOOM_MN_PREFIX:?rsh_agent.sh: LOOM_MN_PREFIX is not set}h${host#host}"
case " ${LOOM_MN_NO_SHARED_HOSTS:-} " in
  *" $host "*)
    exec setsid --wait ip netns exec "$ns" unshare --uts --mount -- sh -c \
      'hostname "$0" && mount -t tmpfs loom-mn-private "$1" && eval "$2"' "$host" "${LOOM_MN_SHARED_DIR:?}" "$*" ;;
esac
exec setsid --wait ip netns exec "$ns" unshare --uts -- sh -c 'hostname "$0" && eval "$1"' "$host" "$*"
