# shellcheck shell=bash disable=SC2034  # the variables set here are the sourcing test's
# Sourced by the multinode tests that run the job controller on host0 (after netns_fixture.sh's mn_up and
# with LOOM_MN_PREFIX exported, which the jobs' rsh agent reads): a TLS certificate for host0's address,
# `loom-controller serve` in host0 listening on that address (not loopback), and its client commands, which
# run in host0 too (the test network exists only inside the namespaces).
#
#   mc_setup WORK BUILD_DIR SOURCE_DIR   the controller's folders: WORK/runs (its runs root: train.out_dir
#                                        must lie inside) and WORK/runs/controller (jobs, journal, admin token)
#   mc_serve [SERVE OPTIONS...]          starts the controller (TLS, launcher options for the simulated hosts)
#                                        and waits until it serves; sets MC_PID. Output: WORK/controller.log
#   mc_cli COMMAND [ARGS...]             loom-controller COMMAND with the address, CA and admin token
#   mc_field JOB PATH                    one field of `status JOB --json` (loom_multinode_tool field)
#   mc_wait SECONDS WHAT COMMAND...      polls COMMAND every 0.2 s; fails the test naming WHAT at the timeout
#   mc_begin_fault_test SOURCE BUILD NAME  the start of a fault test (below)
MC_ADDRESS=10.231.0.1:50051

mc_setup() {
  MC_WORK="$1" MC_BUILD="$2" MC_SOURCE="$3"
  MC_JOBS="$MC_WORK/runs/controller"
  MC_CA="$MC_WORK/tls/cert.pem"
  mkdir -p "$MC_JOBS" "$MC_WORK/tls"
  # The workers dial an address, so the certificate names it (subjectAltName IP).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=host0 \
    -addext "subjectAltName=IP:${MC_ADDRESS%:*}" -keyout "$MC_WORK/tls/key.pem" -out "$MC_CA" >/dev/null 2>&1
}

mc_serve() {
  local here="$MC_SOURCE/tests/multinode" p
  rm -f "$MC_WORK/ready"
  mn_exec host0 "$MC_BUILD/loom-controller" serve --address "$MC_ADDRESS" --tls-cert "$MC_CA" \
    --tls-key "$MC_WORK/tls/key.pem" --tls-ca "$MC_CA" --jobs-dir "$MC_JOBS" --http-port 0 \
    --ready-file "$MC_WORK/ready" --vendor-dir "$MC_WORK" --launcher-arg=--net "--launcher-arg=$MN_SUBNET" \
    --launcher-arg=--rsh-agent "--launcher-arg=$here/rsh_agent.sh" --launcher-arg=--mpi --launcher-arg=-mca \
    --launcher-arg=--mpi --launcher-arg=mpi_yield_when_idle --launcher-arg=--mpi --launcher-arg=1 \
    "$@" >>"$MC_WORK/controller.log" 2>&1 &
  mc_wait 30 "the controller to serve" test -s "$MC_WORK/ready"
  MC_PID=""
  for p in $(ip netns pids "$(mn_netns host0)"); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$MC_BUILD/loom-controller")" ] && MC_PID="$p"
  done
  [ -n "$MC_PID" ] || { echo "FAIL: no loom-controller process in host0"; exit 1; }
}

mc_cli() {
  local command="$1"
  shift
  mn_exec host0 "$MC_BUILD/loom-controller" "$command" --address "$MC_ADDRESS" --ca "$MC_CA" \
    --token-file "$MC_JOBS/admin_token" "$@"
}

mc_field() {
  mc_cli status "$1" --json | "$MC_BUILD/loom_multinode_tool" field "$2"
}

mc_wait() {
  local seconds="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "FAIL: waited ${seconds} s for $what"
      [ -f "$MC_WORK/controller.log" ] && tail -n 40 "$MC_WORK/controller.log"
      exit 1
    fi
    sleep 0.2
  done
}

# mc_is JOB PATH VALUE: the status field equals VALUE (for mc_wait).
mc_is() { [ "$(mc_field "$1" "$2")" = "$3" ]; }

# mc_loom_pids HOST: the pids of build/loom processes (ranks) in HOST's namespace.
mc_loom_pids() {
  local p
  for p in $(ip netns pids "$(mn_netns "$1")"); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$MC_BUILD/loom")" ] && echo "$p"
  done
}

# mc_begin_fault_test SOURCE_DIR BUILD_DIR NAME: the start every controller fault test shares.
# Checks that elastic_reference.sh's runs exist (MC_REFERENCE), makes a fresh MC_WORK = BUILD_DIR/multinode/NAME
# with the elastic run's config (MC_CONFIG), brings up host0 .. host2, sets the controller up, writes the
# cluster's hostfile (host1 and host2, 2 slots each) and fills MC_SERVE_OPTIONS: that hostfile, probe_host.sh as
# the host probe, heartbeats every 0.5 s with a 4 s timeout.
mc_begin_fault_test() {
  local source_dir="$1" build_dir="$2"
  MC_REFERENCE="$build_dir/multinode/elastic_reference"
  if [ ! -f "$MC_REFERENCE/done" ]; then
    echo "FAIL: no reference runs in $MC_REFERENCE (multinode_elastic_reference)"
    exit 1
  fi
  local work="$build_dir/multinode/$3"
  rm -rf "$work"
  mkdir -p "$work"
  MN_BUILD_DIR="$build_dir"
  MC_CONFIG="$(mn_write_elastic_run "$work")"
  mn_up 3
  export LOOM_MN_PREFIX="$MN_PREFIX"
  mc_setup "$work" "$build_dir" "$source_dir"
  printf 'host1 slots=2\nhost2 slots=2\n' >"$work/hosts.txt"
  MC_SERVE_OPTIONS=(--hostfile "$work/hosts.txt" --host-probe "exec $source_dir/tests/multinode/probe_host.sh \"\$1\""
    --probe-timeout-ms 5000 --heartbeat-interval-ms 500 --heartbeat-timeout-ms 4000 --register-timeout-ms 60000)
}
