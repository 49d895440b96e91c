#!/usr/bin/env bash
# launch/loom-mpirun's host handling, through --dry-run (no root, no namespaces): hostfiles, Slurm allocations
# (fake SLURM_* values), --ranks-per-host, --net, --rsh-agent, --controller, and the checks of --np against
# the config's layout and the hosts' slots.
#
#   launcher_test.sh SOURCE_DIR
set -uo pipefail
launcher="$1/launch/loom-mpirun"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
check() {  # check DESCRIPTION CONDITION...
  local what="$1"
  shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; failures=$((failures + 1)); fi
}

# run_dry ARGS...: sets $status, $out (stdout), $err (stderr) and $cmd (the printed command as an array).
run_dry() {
  status=0
  out="$(env -u SLURM_JOB_NODELIST -u SLURM_TASKS_PER_NODE "${run_env[@]}" "$launcher" --dry-run "$@" \
    2>"$work/stderr")" || status=$?
  err="$(cat "$work/stderr")"
  cmd=()
  if ((status == 0)); then eval "cmd=($out)"; fi
}
run_env=()
# has_args A B...: the printed command holds A B ... consecutively.
has_args() {
  local i j n=$#
  local want=("$@")
  for ((i = 0; i + n <= ${#cmd[@]}; i++)); do
    for ((j = 0; j < n; j++)); do [ "${cmd[i + j]}" = "${want[j]}" ] || continue 2; done
    return 0
  done
  return 1
}
lacks_arg() { ! printf '%s\n' "${cmd[@]}" | grep -q -- "$1"; }
err_has() { [[ "$err" == *"$1"* ]]; }

config="$work/job.yaml"
printf 'model:\n  kind: gpt\nparallel:\n  data: 2\n  tensor: 2\ntrain:\n  device: cpu\n' >"$config"
flow="$work/flow.yaml"
printf 'model: {kind: gpt}\nparallel: {data: 3, tensor: 1, bucket_mb: 1}\ntrain: {device: "cpu"}\n' >"$flow"
printf '# two hosts\nhost0 slots=2\nhost1 slots=2 max_slots=4  # the second\n\n' >"$work/hosts"

run_dry --hostfile "$work/hosts" -- train "$config"
check "hostfile: -np from the layout, the hostfile passed on" \
  eval '((status == 0)) && has_args -np 4 && has_args --hostfile "$work/hosts"'
per_rank=$(($(nproc) >= 2 ? $(nproc) / 2 : 1))
if (($(nproc) >= 2)); then
  check "hostfile: CPU binding for the 2 ranks of each host" has_args --map-by "slot:PE=$per_rank" --bind-to core
else
  check "hostfile: oversubscribed, 2 ranks a host on 1 core" has_args --oversubscribe --bind-to none
fi
check "hostfile: BLAS threads per rank" has_args -x "OMP_NUM_THREADS=$per_rank"

run_dry --hostfile "$work/hosts" -- train "$config" parallel.data=4
check "hostfile: more ranks than slots is refused" \
  eval '((status == 2)) && err_has "--np 8 ranks need 8 slots, but --hostfile $work/hosts gives 4 (host0: 2, host1: 2)"'

run_dry --np 3 -- train "$config"
check "--np against the layout" \
  eval '((status == 2)) && err_has "--np 3 does not match the config'"'"'s layout: parallel.data (2) x parallel.tensor (2) = 4"'
run_dry -- train "$flow"
check "a one-line parallel: {...} mapping gives the layout" eval '((status == 0)) && has_args -np 3'
run_dry --np 3 -- train "$flow" parallel.tensor=2
check "overrides count in the layout" eval '((status == 2)) && err_has "parallel.data (3) x parallel.tensor (2) = 6"'

printf 'host0 slots=2\nhost1 slot=2\n' >"$work/bad_hosts"
run_dry --hostfile "$work/bad_hosts" -- train "$config"
check "a bad hostfile line names file and line" \
  eval '((status == 2)) && err_has "$work/bad_hosts:2: '"'"'slot=2'"'"' is not slots=N"'
run_dry --hostfile "$work/missing" -- train "$config"
check "a missing hostfile" eval '((status == 2)) && err_has "--hostfile $work/missing: cannot read it"'

run_dry --hostfile "$work/hosts" --ranks-per-host 1 -- train "$config" parallel.data=1
check "--ranks-per-host rewrites the slots" eval '((status == 0)) && has_args --host host0:1,host1:1'
run_dry --hostfile "$work/hosts" --ranks-per-host 1 -- train "$config"
check "--ranks-per-host slots are checked too" eval '((status == 2)) && err_has "gives 2 (host0: 1, host1: 1)"'

printf 'big0\nbig1\n' >"$work/no_slots"
run_dry --hostfile "$work/no_slots" -- train "$config" parallel.data=8
check "hosts without slots= are left to mpirun" eval '((status == 0)) && has_args -np 16'

run_env=(SLURM_JOB_NODELIST='node[01-03,10],gpu7,r[1-2]-n[8-9]' SLURM_TASKS_PER_NODE='2(x3),1,4,1(x4)')
run_dry -- train "$config" parallel.data=4
check "Slurm: hosts and tasks per node from the allocation" eval '((status == 0)) &&
  has_args --host node01:2,node02:2,node03:2,node10:1,gpu7:4,r1-n8:1,r1-n9:1,r2-n8:1,r2-n9:1'
run_dry -- train "$config" parallel.data=4 parallel.tensor=4
check "Slurm: the allocation's 15 tasks are the slots" \
  eval '((status == 2)) && err_has "--np 16 ranks need 16 slots, but the Slurm allocation"' &&
  check "Slurm: the message lists the hosts" err_has "node10: 1, gpu7: 4"
run_dry --hostfile "$work/hosts" -- train "$config"
check "a hostfile wins over the allocation" eval '((status == 0)) && has_args --hostfile "$work/hosts" && lacks_arg node01'
run_env=(SLURM_JOB_NODELIST='a[1-3]' SLURM_TASKS_PER_NODE='2(x2)')
run_dry -- train "$config"
check "Slurm: counts that do not match the hosts" \
  eval '((status == 2)) && err_has "SLURM_TASKS_PER_NODE='"'"'2(x2)'"'"' gives 2 counts for the 3 hosts"'
run_env=(SLURM_JOB_NODELIST='a[3-1]' SLURM_TASKS_PER_NODE='1')
run_dry -- train "$config"
check "Slurm: a backwards range" eval '((status == 2)) && err_has "range '"'"'3-1'"'"' in '"'"'a[3-1]'"'"' runs backwards"'
run_env=(SLURM_JOB_NODELIST='n[007-009]' SLURM_TASKS_PER_NODE='2(x3)')
run_dry -- train "$config" parallel.data=3
check "Slurm: zero padding is kept" eval '((status == 0)) && has_args --host n007:2,n008:2,n009:2'
run_env=()

run_dry --net 10.231.0.0/24 -- train "$config"
check "--net SUBNET: TCP and out-of-band channel, no NCCL interface" eval '((status == 0)) &&
  has_args -mca btl_tcp_if_include 10.231.0.0/24 && has_args -mca oob_tcp_if_include 10.231.0.0/24 &&
  lacks_arg NCCL_SOCKET_IFNAME'
run_dry --net eth1 -- train "$config"
check "--net IFACE: TCP, out-of-band channel and NCCL" eval '((status == 0)) &&
  has_args -mca btl_tcp_if_include eth1 && has_args -mca oob_tcp_if_include eth1 && has_args -x NCCL_SOCKET_IFNAME=eth1'
run_dry --net 'eth1; rm' -- train "$config"
check "--net: a bad value" eval '((status == 2)) && err_has "is neither an interface name"'
run_dry --rsh-agent "/path/agent --flag" --controller 10.231.0.1:50051 -- train "$config"
check "--rsh-agent and --controller" eval '((status == 0)) && has_args -mca plm_rsh_agent "/path/agent --flag" &&
  has_args -x LOOM_CONTROLLER_ADDRESS=10.231.0.1:50051'
run_dry --controller nowhere -- train "$config"
check "--controller needs HOST:PORT" eval '((status == 2)) && err_has "is not HOST:PORT"'
run_dry --ranks-per-host 2 -- train "$config"
check "--ranks-per-host needs hosts" eval '((status == 2)) && err_has "--ranks-per-host needs hosts"'
run_dry --loom /bin/true --hostfile "$work/hosts" --mpi --display-map -- train "$config"
check "the command ends with mpirun's extra arguments, then loom and its arguments" \
  eval '[ "${cmd[0]}" = mpirun ] && has_args --display-map /bin/true train "$config"'

if ((failures)); then echo "$failures check(s) failed"; exit 1; fi
echo "PASS: loom-mpirun's host handling"
