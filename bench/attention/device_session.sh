#!/usr/bin/env bash
# One full device call for the flash-attention work: GPU tests, compute-sanitizer on small cases, then the
# bench grid beside the PyTorch peers (bench/attention/run.sh). Everything is prebuilt elsewhere and carried.
# usage: device_session.sh CARRY_DIR OUT_DIR [extra bench args]
#   CARRY_DIR holds loom_gpu_tests, loom_flash_bench, lib/ (shared libraries), baselines/, and these scripts.
set -uo pipefail
c=$(cd "$1" && pwd) out=$2
shift 2
export LD_LIBRARY_PATH=$c/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv; } \
  2>&1 | tee "$out/card.txt"
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 200 "$c/loom_gpu_tests" >"$out/gpu_tests.log" 2>&1
  echo "gpu tests rc=$?"
  grep -E "^\[  (FAILED|PASSED|SKIPPED)|Failure|error:|Which is|naive 16-bit error" "$out/gpu_tests.log" | head -40
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  { timeout 200 "$san" --tool memcheck "$c/loom_gpu_tests" --gtest_filter='*t17_h3*:*t197_h2_d64_causal*:*t130*full*'
    timeout 200 "$san" --tool racecheck "$c/loom_gpu_tests" --gtest_filter='*t197_h2_d64_full*:*t17_h3*causal*'
    timeout 200 "$san" --tool synccheck "$c/loom_gpu_tests" --gtest_filter='*t197_h2_d128*'; } >"$out/sanitizer.log" 2>&1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$out/sanitizer.log"
  cat "$out/sanitizer.log" >>"$out/gpu_tests.log" && rm "$out/sanitizer.log"
fi
if [ -n "${NCU:-}" ]; then  # profile one forward and one backward launch (d128, s4k, non-causal)
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  for k in flash_fwd_kernel flash_bwd_kernel; do
    timeout 120 "$ncu" -k "regex:$k" -c 1 --section SpeedOfLight --section SchedulerStats \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
      "$c/loom_flash_bench" --dims 128 --seqlens 4096 --reps 1 --warmup 0
  done >"$out/ncu.txt" 2>&1
  grep -E "^  void|Duration|One or More Eligible|issue_stalled" "$out/ncu.txt" | awk '$NF+0 > 0.05 || !/stalled/' | head -60
fi
timeout 300 "$c/run.sh" "$c/loom_flash_bench" "$c/baselines" "$out" "$@" >/dev/null 2>&1 || echo "bench rc=$?"
cat "$out/ratios.txt"
# Tuning variants (same bench, other tile choices), built elsewhere: CARRY_DIR/variants/NAME/loom_flash_bench.
for v in "$c"/variants/*/loom_flash_bench; do
  [ -x "$v" ] || continue
  echo "== variant $(basename "$(dirname "$v")")"
  timeout 60 "$v" --dims 128 64 --seqlens 2048 16384 "$@" 2>&1 | grep -v "^backend" | grep -v "^loom-det"
done
