#!/usr/bin/env bash
# One device call for the shape-tuned kernels (LayerNorm at every width, cross-entropy, flash attention at the
# head dims pruning produces): their GPU tests, compute-sanitizer on a few cases of each, the kernel benches
# beside PyTorch (bench/kernels/run.sh), the attention grid at two lengths with the pruned dims
# (bench/attention/run.sh), and with TRAIN=1 the GPT 1.3B training step beside the PyTorch peers.
# Run from the repository root on the GPU machine:
#   bash bench/kernels/device_session.sh CARRIED_DIR OUTDIR
# CARRIED_DIR (bench/pack_for_device.sh): loom_gpu_tests, loom_layernorm_bench, loom_cross_entropy_bench,
# loom_flash_bench (and loom_train_bench for TRAIN=1; loom_bias_grad_bench, when carried, runs after the kernel
# benches), lib/, and baselines/ (a copy of ../shared/baselines).
set -uo pipefail
c=$(cd "$1" && pwd) out=$2
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../device_env.sh" "$c"
export PYTHONUNBUFFERED=1
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; } 2>&1 | tee "$out/card.txt"

# GPU_FILTER: which device tests (default: the kernels of this session; '*' for all of them).
filter=${GPU_FILTER:-'*LayerNorm*:*CudaLossTest*:*VocabParallel*:*FlashAttention*:*CudaBiasGradient*'}
timeout "${GPU_TESTS_TIMEOUT:-300}" "$c/loom_gpu_tests" --gtest_brief=1 --gtest_filter="$filter" >"$out/gpu_tests.log" 2>&1
echo "gpu tests rc=$?: $(grep -E '^\[  (PASSED|FAILED) ' "$out/gpu_tests.log" | tr '\n' ' ')"
grep -E '^\[  FAILED  \]|Failure|naive 16-bit error' "$out/gpu_tests.log" | head -30

timeout 180 bash "$here/run.sh" "$c" "$out/kernels" >"$out/kernels.log" 2>&1 || echo "kernel benches rc=$?"
cat "$out/kernels/ratios.txt" 2>/dev/null
if [ -x "$c/loom_bias_grad_bench" ]; then
  timeout 90 "$c/loom_bias_grad_bench" >"$out/bias_grad.txt" 2>&1 || echo "bias-gradient bench rc=$?"
  cat "$out/bias_grad.txt"
fi

timeout 240 bash "$here/../attention/run.sh" "$c/loom_flash_bench" "$c/baselines" "$out/attention" --seqlens 1024 4096 \
  >"$out/attention.log" 2>&1 || echo "attention bench rc=$?"
cat "$out/attention/ratios.txt" "$out/attention/pruned.txt" 2>/dev/null

san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
{
  timeout ${SANITIZER_TIMEOUT:-150} "$san" --tool memcheck "$c/loom_gpu_tests" --gtest_filter='Grid/*t50_h1_d8_v16*:Grid/*t70_h2_d32_v128*:Grid/*t77_h1_d128_v24*:Grid/*t130_h2_d40_v72*:Widths/*.MatchesTheCpuReference/bf16_C2056:Widths/*.MatchesTheCpuReference/f32_C8192:Dtypes/CudaLossTest.CrossEntropyVectorisedAndScalarRows/bf16'
  timeout ${SANITIZER_TIMEOUT:-150} "$san" --tool racecheck "$c/loom_gpu_tests" --gtest_filter='Grid/*t70_h2_d32_v128_full*:Grid/*t77_h1_d128_v24_causal*:Widths/*.MatchesTheCpuReference/bf16_C1280:Widths/*.MatchesTheCpuReference/bf16_C768'
  timeout ${SANITIZER_TIMEOUT:-150} "$san" --tool synccheck "$c/loom_gpu_tests" --gtest_filter='Grid/*t50_h1_d8_v16_full*:Widths/*.MatchesTheCpuReference/bf16_C2560'
} >"$out/sanitizer.log" 2>&1
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED) " "$out/sanitizer.log"

if [ -n "${TRAIN:-}" ]; then
  timeout 300 "$c/loom_train_bench" --config configs/gpt_1p3b.yaml --batch 8 --seq 1024 --json "$out/loom_gpt_1p3b.json" \
    >"$out/train.log" 2>&1 || echo "train bench rc=$?"
  (cd "$c/baselines" && timeout 300 python3 gpt2.py --layers 24 --width 2048 --heads 16 --batch 8 --seq 1024 \
    --json "$out/peer_gpt_1p3b.json") >>"$out/train.log" 2>&1 || echo "train peer rc=$?"
  grep -iE "tok/s|tok_per_s|mfu" "$out/train.log" | tail -6
fi
