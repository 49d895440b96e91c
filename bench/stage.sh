# Deadline-bounded stages of one device call; sourced by bench/pruning/device_session.sh and bench/zoo.sh.
# The sourcing script sets: start (`date +%s` when the session began), deadline (seconds after start by which
# every stage has ended), work (where full logs go) and out (what comes back from the device call).
# STAGE_MEMORY=1 also samples the card's used memory (nvidia-smi, every 200 ms) while a stage runs and writes
# its peak in MiB to $out/NAME.mem (context and every process on the card included).

# Seconds since the session started.
elapsed() { echo $(($(date +%s) - start)); }

# stage NAME LIMIT_SECONDS COMMAND...: runs it (log in $work/NAME.log; in $out whole, or its head and tail when
# long), records the wall time and exit status in $out/stages.txt. No stage runs past the deadline; one that
# cannot start 15 s before it is skipped (rc 125).
stage() {
  local name=$1 limit=$2
  shift 2
  local t0 rc ms sampler="" left=$((deadline - $(elapsed)))
  if [ "$left" -lt 15 ]; then
    printf '%-16s rc=125    0.0 s (skipped: %d s before the deadline)\n' "$name" "$left" | tee -a "$out/stages.txt"
    return 125
  fi
  [ "$limit" -le "$left" ] || limit=$left
  if [ -n "${STAGE_MEMORY:-}" ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 >"$work/$name.smi" 2>/dev/null &
    sampler=$!
  fi
  t0=$(date +%s%N)
  timeout "$limit" "$@" >"$work/$name.log" 2>&1
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    sort -n "$work/$name.smi" | tail -n 1 >"$out/$name.mem"
  fi
  printf '%-16s rc=%-3d %4d.%01d s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000 / 100)) | tee -a "$out/stages.txt"
  if [ "$(wc -l <"$work/$name.log")" -le 55 ]; then
    cp "$work/$name.log" "$out/$name.log"
  else
    { head -n 15 "$work/$name.log"; echo ...; tail -n 40 "$work/$name.log"; } >"$out/$name.log"
  fi
  [ "$rc" = 0 ] || tail -n 5 "$work/$name.log"
  return "$rc"
}
