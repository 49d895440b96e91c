#!/usr/bin/env bash
# bench/zoo.sh with DRY=1 on the CPU (label unit): Loom's stages run at tiny shapes, a VARIANTS run gets its
# overrides (a wider model: more parameters), the breakdown's ncu and torch.profiler commands are echoed with
# --profile-step and the peer's one-step arguments, and zoo.md carries the variant column and the breakdown
# section; PEERS picks the peers. Also: a malformed VARIANTS entry and --profile-step on the CPU are refused with a clear error.
#   usage: zoo_dry_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
cd "$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

if [ ! -x "$build/loom_train_bench" ]; then  # .ci/run's sanitizer build makes only the unit-test executables
  echo "SKIP: $build has no loom_train_bench (not built there); the full build runs this test"
  exit 77
fi
mkdir -p "$tmp/bin" "$tmp/tokens" "$tmp/carry" "$tmp/baselines"
cp "$build/loom_train_bench" "$tmp/bin/"
head -c 4096 /dev/zero >"$tmp/tokens/train_000000.bin"  # carried for llm.c, whose command a dry run only echoes
XZ_OPT=-0 tar -C "$tmp/bin" -cJf "$tmp/carry/bin.tar.xz" .
XZ_OPT=-0 tar -C "$tmp/tokens" -cJf "$tmp/carry/linux-doc.tar.xz" .

run_zoo() { WORK="$tmp/work" COMMIT=test DRY=1 ZOO="gpt124m deit_s" bash bench/zoo.sh "$tmp/carry" "$tmp/baselines" "$1"; }

# Malformed VARIANTS: refused before anything runs.
for bad in "res_32:train.residual_dtype=f32" "res32" "res32:residual" "a:x=1 a:y=2"; do
  if VARIANTS=$bad run_zoo "$tmp/bad" >"$tmp/bad.log" 2>&1; then fail "VARIANTS='$bad' was accepted"; fi
  grep -q "zoo.sh: VARIANTS entry" "$tmp/bad.log" || fail "VARIANTS='$bad': no clear error: $(cat "$tmp/bad.log")"
done

VARIANTS="wide:model.d_model=96:model.n_head=3" run_zoo "$tmp/out" >"$tmp/zoo.log" 2>&1 ||
  { cat "$tmp/zoo.log"; fail "zoo.sh DRY=1 exited non-zero"; }
out=$tmp/out
for stage in loom_gpt124m loom_wide_gpt124m loom_deit_s ncu_gpt124m torchprof_gpt124m ncu_deit_s torchprof_deit_s; do
  grep -Eq "^$stage +rc=0 " "$out/stages.txt" || fail "stage $stage did not run with rc 0: $(cat "$out/stages.txt")"
done
! grep -q "loom_wide_deit_s" "$out/stages.txt" || fail "a GPT variant ran for DeiT"

# The variant's overrides reached loom_train_bench: d_model 96 instead of 64.
python3 - "$out" <<'EOF' || fail "the variant run did not get its overrides"
import json, sys
base, wide = (json.load(open(f"{sys.argv[1]}/{n}.json")) for n in ("loom_gpt124m", "loom_wide_gpt124m"))
assert wide["params"] > base["params"], (wide["params"], base["params"])
EOF

grep -q -- "zoo_breakdown.py ncu --ncu" "$out/ncu_gpt124m.log" || fail "ncu stage not echoed: $(cat "$out/ncu_gpt124m.log")"
for want in "--warmup 3 --profile-step" "train.device=cpu"; do
  grep -q -- "$want" "$out/ncu_gpt124m.log" || fail "ncu stage lacks '$want'"
done
for want in "zoo_breakdown.py torch --label torch.compile" "gpt2.py" "--steps 1 --modes compile"; do
  grep -q -- "$want" "$out/torchprof_gpt124m.log" || fail "torch.profiler stage lacks '$want'"
done
grep -q -- "deit.py --model deit_small_patch16_224 --batch 2 --steps 1 --modes eager" "$out/torchprof_deit_s.log" ||
  fail "DeiT peer profile lacks its arguments: $(cat "$out/torchprof_deit_s.log")"

grep -q "Loom wide: tok/s (×Loom), peak GiB (×Loom)" "$out/zoo.md" || fail "zoo.md has no variant column"
grep -q "Variants (Loom with these overrides): wide: model.d_model=96 model.n_head=3" "$out/zoo.md" ||
  fail "zoo.md does not name the variant's overrides"
grep -q "^## Kernel time of one training step by class" "$out/zoo.md" || fail "zoo.md has no breakdown section"
grep -q "^Loom: not run (dry run); peer: not run (dry run)" "$out/zoo.md" || fail "dry breakdown rows missing"
[ "$(cat "$out/breakdown.json")" = "{}" ] || fail "breakdown.json of a dry run is not empty"

# PEERS: an unknown peer is refused; PEERS=llmc leaves out torch.compile and eager (Loom and llm.c still run).
if PEERS="llmc cudnn" run_zoo "$tmp/badpeer" >"$tmp/badpeer.log" 2>&1; then fail "PEERS='llmc cudnn' was accepted"; fi
grep -q "zoo.sh: unknown peer 'cudnn' in PEERS" "$tmp/badpeer.log" || fail "PEERS: no clear error: $(cat "$tmp/badpeer.log")"
BREAKDOWN=0 PEERS=llmc run_zoo "$tmp/llmc" >"$tmp/llmc.log" 2>&1 || { cat "$tmp/llmc.log"; fail "PEERS=llmc exited non-zero"; }
for stage in loom_gpt124m llmc_gpt124m loom_deit_s; do
  grep -Eq "^$stage +rc=0 " "$tmp/llmc/stages.txt" || fail "PEERS=llmc: stage $stage missing: $(cat "$tmp/llmc/stages.txt")"
done
! grep -Eq "^(compile|eager)_" "$tmp/llmc/stages.txt" || fail "PEERS=llmc ran a PyTorch peer: $(cat "$tmp/llmc/stages.txt")"

# --profile-step brackets CUDA kernels: on the CPU it is an error, not a silent unprofiled step.
if "$build/loom_train_bench" --config configs/gpt_tiny.yaml --batch 2 --seq 16 --warmup 1 --profile-step \
  train.device=cpu >"$tmp/profile.log" 2>&1; then
  fail "--profile-step on the CPU exited 0"
fi
grep -q "profile-step needs train.device=cuda" "$tmp/profile.log" || fail "unclear error: $(cat "$tmp/profile.log")"
echo "zoo.sh DRY=1: stages, variant overrides, breakdown commands and tables as expected"
