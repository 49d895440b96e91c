#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time (the `fuzz` ctest entries; tests/fuzz/README.md).
# Usage: run_fuzz.sh FUZZ_BUILD_DIR TARGET SEED_CORPUS_DIR [SECONDS]
# New inputs the fuzzer finds go to FUZZ_BUILD_DIR/found/TARGET (kept between runs, never into the repository),
# crash/leak/timeout reproducers to FUZZ_BUILD_DIR/artifacts/TARGET/. Exits non-zero on any crash, leak, hang
# (-timeout per input), excess memory (-rss_limit_mb) or missing binary.
set -euo pipefail
build=$1 target=$2 seeds=$3 seconds=${4:-30}
binary=$build/$target
if [[ ! -x $binary ]]; then
  echo "$binary is not built: the fuzz targets are built by scripts/setup.sh (or: cmake -S tests/fuzz -B $build" \
       "-G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang && cmake --build $build)" >&2
  exit 1
fi
found=$build/found/$target artifacts=$build/artifacts/$target
mkdir -p "$found" "$artifacts"
# Leaks are checked after every input; a finding stops the run with libFuzzer's non-zero exit code.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$found" "$seeds"
