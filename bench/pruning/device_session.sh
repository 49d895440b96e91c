#!/usr/bin/env bash
# Issue 14's GPU acceptance (latency-aware structural pruning), in one device call (part ab) or two (a, b).
# Run from the repository root on the GPU machine, with the folder bench/pruning/pack.sh made carried:
#   bash bench/pruning/device_session.sh ab .carry/prune "$OUT"      (the GPU tests of the pruning ops, a, b)
#   bash bench/pruning/device_session.sh a .carry/prune "$OUT"
#   bash bench/pruning/device_session.sh b .carry/prune "$OUT"
# The device tool brings back a limited number of files (about eight; part ab writes ~30): give an OUT_DIR outside
# $OUT and pack it, e.g. ... ab .carry/prune /tmp/prune; tar -C /tmp/prune -czf "$OUT/prune.tar.gz" .
# Part a (speed): DeiT-B (224/16, 1-channel Fashion-MNIST geometry, 10 classes) trained briefly (random
#   initialisation plus a few steps: the speed does not depend on the accuracy), a latency table of its block
#   on this card, one-shot pruning to a 0.54 latency target, then loom_prune_bench: predicted vs measured step
#   latency of the unpruned, random pruned and pruned shapes, and the pruned model's speed-up (training step,
#   forward only) over the unpruned one.
# Part b (accuracy): DeiT-S trained on Fashion-MNIST resized to 224, pruned to 0.5 (cubic schedule, distilling
#   from the unpruned model) and fine-tuned: test accuracy before and after, and of a control (the unpruned
#   model trained the same extra steps); GPT-2 124M trained briefly on the linux-doc corpus, pruned to 0.6 and
#   fine-tuned: validation loss before and after, and of a control; then the pruned models' measured speed-ups.
# Everything lands in OUT: summary_<part>.md (what, card, measured, ratio), stages.txt (wall time of each
# stage), the stages' log tails, the bench JSON, metrics.jsonl and pruning.svg of the pruning runs.
# DRY=1 runs the same stages on the CPU with tiny models and few steps (how this script is checked off the GPU).
set -uo pipefail
part=$1
carry=$(cd "$2" && pwd)
mkdir -p "$3"
out=$(cd "$3" && pwd)
repo=$(pwd)
work=${WORK:-/tmp/loom_prune_$part}
start=$(date +%s)
rm -rf "$work" && mkdir -p "$work/bin" "$work/data"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$carry/bin.tar.xz" "$work/bin"
source "$repo/bench/device_env.sh" "$work/bin"
loom=$work/bin/loom
bench=$work/bin/loom_prune_bench
fm=$carry/fmnist
if [ -n "${DRY:-}" ]; then
  echo "cpu (dry run)" > "$out/card.txt"
  dev=(train.device=cpu)
  # Tiny models on a CPU time noisily and their fixed parts (embeddings, heads) dominate: a target they reach.
  dry_target=(prune.target_ratio=0.9)
else
  dry_target=()
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; } > "$out/card.txt" 2>&1
  dev=(train.device=cuda train.dtype=bf16)
fi
cat "$out/card.txt"
: > "$out/stages.txt"

# The session's deadline: DEADLINE seconds after the start, 540 by default (575 for ab), so the summary is written
# within a 600-second device call (bench/stage.sh). The optional stages at the end of part b (controls, speed-ups)
# start only while enough of it is left.
default_deadline=540
[ "$part" = ab ] && default_deadline=575
deadline=${DEADLINE:-$default_deadline}
source "$repo/bench/stage.sh"
# The dense pruned checkpoint a pruning run logged ("pruning target reached: dense pruned model in DIR").
pruned_dir() { sed -n 's/.*dense pruned model in //p' "$work/$1.log" | tail -n 1; }
ckpt() { printf '%s/ckpt_%08d' "$1" "$2"; }
quiet=(train.progress=false train.checkpoint_every=0 train.val_every=0)

# The GPU tests of the pruning ops, saliency, masks, table, distillation and ViT (skipped when not carried).
gpu_tests() {
  if [ -x "$work/bin/loom_gpu_tests" ] && [ -z "${DRY:-}" ]; then
    stage gpu_tests 150 "$work/bin/loom_gpu_tests" \
      --gtest_filter="${GPU_FILTER:-*Pruning*:*Distillation*:*LatencyTable*:*Vit*:*Structure*:*Mask*}"
    grep -E '^\[  (PASSED|FAILED) ' "$work/gpu_tests.log"
  fi
}

part_a() {
  # DeiT-B. GPU: batch 256, a 4-point grid per axis (1024 block shapes), 6 random shapes.
  if [ -n "${DRY:-}" ]; then
    B=4 base_steps=3 grid=2 grid_warmup=2 grid_repeats=5 shapes=3 warmup=3 repeats=9
    tiny=(model.n_layer=2 model.d_model=128 model.n_head=4 model.mlp_dim=256 model.image_size=32 model.patch_size=8)
  else
    B=256 base_steps=20 grid=4 grid_warmup=2 grid_repeats=5 shapes=6 warmup=3 repeats=10
    tiny=()
  fi
  data=(data.train="$fm/t10k-images-idx3-ubyte.gz" data.train_labels="$fm/t10k-labels-idx1-ubyte.gz"
        data.crop_padding=0 data.horizontal_flip=false data.batch_size=$B)
  stage deit_b_base 240 "$loom" train configs/deit_b.yaml "${data[@]}" model.in_channels=1 model.num_classes=10 \
    "${tiny[@]}" optim.warmup_steps=5 optim.label_smoothing=0 train.max_steps=$base_steps train.log_every=5 \
    "${quiet[@]}" train.out_dir="$work/deit_b_base" "${dev[@]}"
  prune=(model.init_from="$(ckpt "$work/deit_b_base" $base_steps)/model.safetensors" "${data[@]}"
         prune.latency_table="$work/deit_b_table.json" prune.latency_grid.points_per_axis=$grid
         prune.latency_grid.warmup=$grid_warmup prune.latency_grid.repeats=$grid_repeats
         prune.schedule=one_shot prune.begin_step=2 prune.saliency_batches=2 prune.distill_weight=0
         train.max_steps=2 train.log_every=1 "${quiet[@]}" train.out_dir="$work/deit_b_pruned" "${dev[@]}"
         "${dry_target[@]}")
  stage deit_b_table 300 "$loom" latency-table configs/prune_deit_b.yaml "${prune[@]}" --out "$work/deit_b_table.json"
  cp "$work/deit_b_table.json" "$out/" 2>/dev/null
  stage deit_b_prune 180 "$loom" train configs/prune_deit_b.yaml "${prune[@]}"
  cp "$work/deit_b_pruned/pruning.svg" "$out/deit_b_pruning.svg" 2>/dev/null
  stage deit_b_bench 300 "$bench" --config configs/prune_deit_b.yaml "${prune[@]}" --table "$work/deit_b_table.json" \
    --shapes $shapes --pruned "$(pruned_dir deit_b_prune)" --warmup $warmup --repeats $repeats \
    --json "$out/deit_b_bench.json"
  cat "$work/deit_b_bench.log"
}

part_b() {
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$carry/linux-doc.tar.xz" \
    "$work/data/linux-doc"
  if [ -n "${DRY:-}" ]; then
    BS=8 s_base=6 s_end=4 s_total=8 BG=2 seq=64 g_base=4 g_end=4 g_total=6 every=2 val=2
    tiny_s=(model.n_layer=2 model.d_model=128 model.n_head=4 model.mlp_dim=256 model.image_size=32 model.patch_size=8)
    tiny_g=(model.n_layer=2 model.d_model=128 model.n_head=4 model.mlp_dim=256 model.max_seq_len=64)
    grid=(prune.latency_grid.points_per_axis=2 prune.latency_grid.warmup=1 prune.latency_grid.repeats=3)
  else
    BS=128 s_base=2400 s_end=300 s_total=900 BG=16 seq=1024 g_base=400 g_end=150 g_total=300 every=10 val=100
    tiny_s=() tiny_g=()
    grid=(prune.latency_grid.points_per_axis=3 prune.latency_grid.warmup=2 prune.latency_grid.repeats=5)
  fi
  schedule=(prune.schedule=cubic prune.begin_step=$every prune.every=$every prune.saliency_batches=$every)
  # DeiT-S on Fashion-MNIST resized to 224 (1 channel, 10 classes); the test set is the validation set.
  s_data=(data.train="$fm/train-images-idx3-ubyte.gz" data.train_labels="$fm/train-labels-idx1-ubyte.gz"
          data.val="$fm/t10k-images-idx3-ubyte.gz" data.val_labels="$fm/t10k-labels-idx1-ubyte.gz"
          data.crop_padding=0 data.horizontal_flip=false data.batch_size=$BS train.val_batches=$val)
  s_geometry=(model.in_channels=1 model.num_classes=10 "${tiny_s[@]}")
  s_init="$(ckpt "$work/deit_s_base" $s_base)/model.safetensors"
  stage deit_s_base 300 "$loom" train configs/deit_s.yaml "${s_data[@]}" "${s_geometry[@]}" optim.lr=5e-4 \
    optim.warmup_steps=$((s_base / 9)) optim.label_smoothing=0 train.max_steps=$s_base train.log_every=100 \
    "${quiet[@]}" train.out_dir="$work/deit_s_base" "${dev[@]}"
  s_tune=(optim.lr=2e-4 optim.warmup_steps=0 optim.label_smoothing=0 train.max_steps=$s_total train.log_every=50
          "${quiet[@]}" "${dev[@]}")
  s_prune=(model.init_from="$s_init" "${s_data[@]}" prune.latency_table="$work/deit_s_table.json" "${grid[@]}"
           "${schedule[@]}" prune.end_step=$s_end "${s_tune[@]}" train.out_dir="$work/deit_s_pruned" "${dry_target[@]}")
  stage deit_s_table 200 "$loom" latency-table configs/prune_deit_s.yaml "${s_prune[@]}" --out "$work/deit_s_table.json"
  stage deit_s_prune 300 "$loom" train configs/prune_deit_s.yaml "${s_prune[@]}"
  cp "$work/deit_s_pruned/pruning.svg" "$out/deit_s_pruning.svg" 2>/dev/null
  # GPT-2 124M on the linux-doc corpus.
  tok=$work/data/linux-doc
  g_data=(data.train="$tok/train_*.bin" data.val="$tok/val_*.bin" data.batch_size=$BG data.seq_len=$seq
          train.val_batches=$val train.sample_every=0)
  g_init="$(ckpt "$work/gpt2_base" $g_base)/model.safetensors"
  stage gpt2_base 240 "$loom" train configs/gpt2_124m.yaml "${g_data[@]}" "${tiny_g[@]}" optim.warmup_steps=$((g_base / 8)) \
    train.max_steps=$g_base train.log_every=50 "${quiet[@]}" train.out_dir="$work/gpt2_base" "${dev[@]}"
  g_tune=(optim.lr=3e-4 optim.warmup_steps=0 train.max_steps=$g_total train.log_every=50 "${quiet[@]}" "${dev[@]}")
  g_prune=(model.init_from="$g_init" "${g_data[@]}" prune.latency_table="$work/gpt2_table.json" "${grid[@]}"
           "${schedule[@]}" prune.end_step=$g_end "${g_tune[@]}" train.out_dir="$work/gpt2_pruned" "${dry_target[@]}")
  stage gpt2_table 200 "$loom" latency-table configs/prune_gpt2_124m.yaml "${g_prune[@]}" --out "$work/gpt2_table.json"
  stage gpt2_prune 240 "$loom" train configs/prune_gpt2_124m.yaml "${g_prune[@]}"
  cp "$work/gpt2_pruned/pruning.svg" "$out/gpt2_pruning.svg" 2>/dev/null
  # Controls (the unpruned models trained the same extra steps, labels only) and speed-ups, while time is left:
  # each starts only when the stages after it still fit (their time caps, measured on an H100, sum to ~210 s).
  if [ "$(elapsed)" -lt $((deadline - 210)) ]; then
    stage deit_s_control 150 "$loom" train configs/deit_s.yaml "${s_data[@]}" "${s_geometry[@]}" \
      model.init_from="$s_init" "${s_tune[@]}" train.out_dir="$work/deit_s_control"
  fi
  if [ "$(elapsed)" -lt $((deadline - 160)) ]; then
    stage gpt2_control 120 "$loom" train configs/gpt2_124m.yaml "${g_data[@]}" "${tiny_g[@]}" model.init_from="$g_init" \
      "${g_tune[@]}" train.out_dir="$work/gpt2_control"
  fi
  for m in deit_s gpt2; do
    [ "$(elapsed)" -lt $((deadline - 110)) ] || break
    config=configs/prune_deit_s.yaml prune_args=("${s_prune[@]}")
    [ $m = gpt2 ] && config=configs/prune_gpt2_124m.yaml prune_args=("${g_prune[@]}")
    stage ${m}_bench 60 "$bench" --config $config "${prune_args[@]}" --table "$work/${m}_table.json" --shapes 0 \
      --pruned "$(pruned_dir ${m}_prune)" --warmup 2 --repeats 5 --json "$out/${m}_bench.json"
  done
  for run in deit_s_base deit_s_pruned deit_s_control gpt2_base gpt2_pruned gpt2_control; do
    [ -f "$work/$run/metrics.jsonl" ] && cp "$work/$run/metrics.jsonl" "$out/$run.metrics.jsonl"
  done
}

case $part in
  a) gpu_tests; part_a ;;
  b) part_b ;;
  ab) gpu_tests; part_a; part_b ;;
  *) echo "usage: device_session.sh a|b|ab CARRY_DIR OUT_DIR" >&2; exit 2 ;;
esac
for p in a b; do
  [[ $part == *$p* ]] && python3 "$repo/bench/pruning/summarize.py" $p "$out" "$work" | tee "$out/summary_$p.md"
done
echo "session part $part: $(elapsed) s"
