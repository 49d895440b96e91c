#!/usr/bin/env bash
# The controller under load (label slow): one controller on host0 (TLS), a job of 256 ranks simulated by
# loom_multinode_load on host1..host4 (64 each, every one with its own connection), heartbeating at 1 Hz for
# 60 s while rank 0 reports metrics at 10 Hz. Passes when the heartbeat round trip's p99 (measured by the
# workers) stays below 10 ms, no call fails, and the controller raises no false alarm: the job is still in its
# first attempt with no restart and every rank registered. The controller's resident memory is sampled every
# 5 s and printed; it must stay below 512 MiB.
#
#   load_test.sh SOURCE_DIR BUILD_DIR
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail
source_dir="$1" build_dir="$2"
here="$source_dir/tests/multinode"
. "$here/netns_fixture.sh"
. "$here/run_files.sh"
. "$here/controller_files.sh"
mn_require_namespaces

workers_per_host=64 seconds=60 max_rss_kib=$((512 * 1024))
work="$build_dir/multinode/controller_load"
rm -rf "$work"
mkdir -p "$work"
MN_BUILD_DIR="$build_dir"
config="$(mn_write_run gpt "$work" 10)"
mn_up 5
export LOOM_MN_PREFIX="$MN_PREFIX"
mc_setup "$work" "$build_dir" "$source_dir"
mc_serve --launcher "$here/idle_launcher.sh" --heartbeat-interval-ms 1000 --heartbeat-timeout-ms 10000
world=$((4 * workers_per_host))
job="$(mc_cli submit "$config" parallel.data=$world train.out_dir="$work/runs/job" --token-out "$work/job_token")"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$MC_PID/status"; }
echo "controller RSS before the workers: $(rss) KiB"
pids=()
for i in 1 2 3 4; do
  mn_exec "host$i" "$build_dir/loom_multinode_load" run --address "$MC_ADDRESS" --ca "$MC_CA" --job "$job" \
    --token-file "$work/job_token" --world "$world" --first-rank $(((i - 1) * workers_per_host)) \
    --ranks "$workers_per_host" --seconds "$seconds" --out "$work/latencies_$i.txt" >"$work/workers_$i.log" 2>&1 &
  pids+=($!)
done
max_rss=0
while kill -0 "${pids[@]}" 2>/dev/null; do
  now="$(rss)"
  echo "controller RSS: $now KiB"
  ((now > max_rss)) && max_rss="$now"
  sleep 5
done
fail=0
for i in 1 2 3 4; do
  wait "${pids[i - 1]}" || { echo "FAIL: the workers of host$i reported errors"; fail=1; }
  cat "$work/workers_$i.log"
done
echo "controller RSS: at most $max_rss KiB during the run (limit $max_rss_kib KiB)"
((max_rss < max_rss_kib)) || { echo "FAIL: the controller's RSS exceeded $max_rss_kib KiB"; fail=1; }
"$build_dir/loom_multinode_load" report --max-p99-ms 10 "$work"/latencies_*.txt || fail=1
mc_cli status "$job" | sed -n 1,3p
for check in "state RUNNING" "attempt 1" "restarts 0" "ranks.# $world"; do
  got="$(mc_field "$job" "${check% *}")"
  [ "$got" = "${check#* }" ] || { echo "FAIL: ${check% *} is '$got', expected '${check#* }' (a false alarm?)"; fail=1; }
done
if mc_cli status "$job" | grep -q "no heartbeat"; then echo "FAIL: a missed-heartbeat alarm was raised"; fail=1; fi
((fail == 0)) && echo "PASS: $world workers over 4 hosts, no false alarm, heartbeat p99 below 10 ms"
exit $fail
