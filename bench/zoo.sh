#!/usr/bin/env bash
# Issue 17's model zoo in one device call: Loom's training step beside llm.c, torch.compile and PyTorch eager
# (GPT shapes), timm eager and compiled (DeiT), and SDPA's cuDNN and flash backends (attention), printing one
# ratio table (bench/zoo_compare.py) last. Run from the repository root on the GPU machine:
#   bash bench/zoo.sh CARRY_DIR BASELINES_DIR OUT_DIR
# The device tool brings back a limited number of files (about eight): give an OUT_DIR outside $OUT and pack it,
#   bash bench/zoo.sh .carry/zoo .carry/baselines /tmp/zoo; tar -C /tmp/zoo -czf "$OUT/zoo.tar.gz" .
# CARRY_DIR (made by bench/zoo_pack.sh): bin.tar.xz (loom_train_bench, loom_flash_bench and the shared libraries
#   the GPU machine lacks) and linux-doc.tar.xz (llm.c token shards train_*.bin / val_*.bin for llm.c to read).
# BASELINES_DIR: a copy of ../shared/baselines (gpt2.py, deit.py, attention.py, common.py, llmc/train_gpt2cu).
# ZOO: the groups to run, in order (default below: the GPT sizes of the acceptance first, then DeiT-B and the
#   attention grid, then what only fills the table); a group that does not fit before the deadline is skipped
#   and shows as "not run (deadline)". The whole list may not fit one call (each torch.compile takes about a
#   minute or two): split it, e.g. ZOO="gpt124m gpt350m gpt1p3b gpt1p5b", then ZOO="deit_b attention deit_s gpt774m
#   gpt2p7b eager" with another OUT_DIR, and print one table of both: python3 bench/zoo_compare.py OUT1 OUT2.
# DEADLINE: seconds after the start by which every stage has ended (default 545, so the table comes back within
#   a 560-second call). Each run: Loom 3 warm-up + 20 timed steps (median), llm.c 30 steps (median step time
#   of the last 10), PyTorch 3 warm-up (compilation included there) + 20 timed steps (mean).
# OUT_DIR gets zoo.md (the table), card.txt, stages.txt (wall time and exit status of every run), each run's
#   JSON or log, and NAME.mem (the card's peak used memory in MiB while the run ran, sampled by nvidia-smi);
#   variants.txt (VARIANTS), ncu_NAME.json and torchprof_NAME.json (one step's kernels, each side) and
#   breakdown.json (their per-class sums) for BREAKDOWN.
# VARIANTS: extra Loom runs per GPT size with config overrides appended, e.g. VARIANTS="res32:train.residual_dtype=f32"
#   (space-separated NAME:KEY=VALUE[:KEY=VALUE...], NAME letters and digits): stage loom_NAME_SIZE right after
#   loom_SIZE, shown in the table with its tok/s and peak memory as ratios to the default Loom run.
# BREAKDOWN (default 1; 0: off): after every group has been timed, one step's kernel time by class (GEMM, attention,
#   LayerNorm, ...) for each GPT size and DeiT in ZOO: Loom's --profile-step under Nsight Compute (ncu from PATH
#   or a CUDA / Nsight Compute install; without one the breakdown is skipped and zoo.md says so) beside the peer
#   under torch.profiler (torch.compile for GPT, timm eager for DeiT), by bench/zoo_breakdown.py. Last, so it
#   only uses time the timed runs left before the deadline.
# DRY=1 runs the same plumbing on the CPU: Loom's stages with tiny shapes, the peers' and the GPU-only commands
#   (ncu and torch.profiler included) echoed (how this script is checked off the GPU; tests/unit/zoo_dry_test.sh).
set -uo pipefail
carry=$(cd "$1" && pwd)
baselines=$(cd "$2" && pwd)
mkdir -p "$3"
out=$(cd "$3" && pwd)
repo=$(pwd)
work=${WORK:-/tmp/loom_zoo}
start=$(date +%s)
deadline=${DEADLINE:-545}
zoo=${ZOO:-gpt124m gpt350m gpt1p3b gpt1p5b deit_b attention deit_s gpt774m gpt2p7b eager}
export STAGE_MEMORY=1 PYTHONUNBUFFERED=1

declare -A plan  # name -> "CONFIG LAYERS WIDTH HEADS BATCH LLMC_DESCRIPTOR" (bench/zoo_compare.py holds the list)
gpt_names=()
while read -r name rest; do
  plan[$name]=$rest gpt_names+=("$name")
done < <(python3 "$repo/bench/zoo_compare.py" --plan)
for group in $zoo; do
  case $group in
    deit_b | deit_s | attention | eager) ;;
    *) [ -n "${plan[$group]:-}" ] || {
         echo "zoo.sh: unknown group '$group' in ZOO (known: ${gpt_names[*]} deit_b deit_s attention eager)" >&2
         exit 2
       } ;;
  esac
done

declare -A variant_overrides  # NAME -> "KEY=VALUE ..." (VARIANTS)
variants=()
for spec in ${VARIANTS:-}; do
  vname=${spec%%:*}
  IFS=: read -r -a overrides <<<"${spec#*:}"
  if [[ $spec != *:* || ! $vname =~ ^[A-Za-z0-9]+$ || ${#overrides[@]} -eq 0 || -n ${variant_overrides[$vname]:-} ]]; then
    echo "zoo.sh: VARIANTS entry '$spec' is not NAME:KEY=VALUE[:KEY=VALUE...] with a new NAME of letters and digits" >&2
    exit 2
  fi
  for o in "${overrides[@]}"; do
    [[ $o == ?*=* ]] || { echo "zoo.sh: VARIANTS entry '$spec': '$o' is not KEY=VALUE" >&2; exit 2; }
  done
  variants+=("$vname") variant_overrides[$vname]="${overrides[*]}"
done

rm -rf "$work" && mkdir -p "$work/bin" "$work/shards"
untar() { python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"; }
untar "$carry/bin.tar.xz" "$work/bin" && untar "$carry/linux-doc.tar.xz" "$work/shards" || exit 1
source "$repo/bench/device_env.sh" "$work/bin"
source "$repo/bench/stage.sh"
bench=$work/bin/loom_train_bench
commit=${COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [ -n "${DRY:-}" ]; then
  echo "cpu (dry run)" >"$out/card.txt"
  peer=(echo "dry run, on the GPU:")  # the peers and loom_flash_bench need the GPU: their commands are echoed
  steps=(--steps 2 --warmup 1)
  tiny_gpt=(train.device=cpu model.n_layer=2 model.d_model=64 model.n_head=2 model.max_seq_len=32)
  tiny_vit=(train.device=cpu model.n_layer=2 model.d_model=64 model.n_head=2 model.mlp_dim=128 model.image_size=32
            model.patch_size=8)
  seq=32 dry_batch=2
  llmc_libs=""
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/card.txt" 2>&1
  peer=()
  steps=(--steps 20 --warmup 3)
  tiny_gpt=() tiny_vit=()
  seq=1024 dry_batch=""
  # llm.c needs cuDNN 9 and NVRTC from the Python packages (../shared/baselines/llmc/README.md).
  pylib() {
    python3 -c "import importlib, os; print(os.path.join(list(importlib.import_module('$1').__path__)[0], 'lib'))" \
      2>/dev/null || echo "zoo.sh: no Python package $1 here: llm.c needs the system's copy of its libraries" >&2
  }
  llmc_libs="$(pylib nvidia.cudnn):$(pylib nvidia.cuda_nvrtc):$LD_LIBRARY_PATH"
fi
{ date -u; echo "commit $commit"; } >>"$out/card.txt"
cat "$out/card.txt"
: >"$out/stages.txt"
for v in "${variants[@]}"; do echo "$v ${variant_overrides[$v]}"; done >"$out/variants.txt"

# Nsight Compute for the breakdown: on PATH, else where CUDA or a standalone Nsight Compute installs it.
breakdown=${BREAKDOWN:-1}
ncu_bin=$(command -v ncu || ls -d /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)
rm -f "$out/breakdown_skipped.txt"
if [ "$breakdown" = 1 ] && [ -z "$ncu_bin" ]; then
  if [ -n "${DRY:-}" ]; then
    ncu_bin=ncu  # echoed only
  else
    echo "no ncu (Nsight Compute) on PATH, in /usr/local/cuda*/bin or /opt/nvidia/nsight-compute: kernel-time" \
      "breakdown skipped" | tee "$out/breakdown_skipped.txt"
    breakdown=0
  fi
fi

# gpt_plan NAME: sets the caller's locals config layers width heads batch desc (bench/zoo_compare.py --plan) and
# shape (Loom's overrides for them; a dry run's tiny shape) for the GPT size NAME.
gpt_plan() {
  read -r config layers width heads batch desc <<<"${plan[$1]}"
  batch=${dry_batch:-$batch}
  shape=(model.n_layer="$layers" model.d_model="$width" model.n_head="$heads")
  [ -z "${DRY:-}" ] || shape=("${tiny_gpt[@]}")
}

# gpt NAME: Loom, llm.c (where it has the shape), torch.compile (and eager at 124M, which costs seconds there).
gpt() {
  local name=$1 config layers width heads batch desc shape
  gpt_plan "$name"
  stage "loom_$name" 120 "$bench" --config "$config" --batch "$batch" --seq "$seq" "${steps[@]}" \
    --json "$out/loom_$name.json" "${shape[@]}"
  local variant overrides
  for variant in "${variants[@]}"; do
    read -r -a overrides <<<"${variant_overrides[$variant]}"
    stage "loom_${variant}_$name" 120 "$bench" --config "$config" --batch "$batch" --seq "$seq" "${steps[@]}" \
      --json "$out/loom_${variant}_$name.json" "${shape[@]}" "${overrides[@]}"
  done
  if [ "$desc" != - ]; then
    stage "llmc_$name" 120 "${peer[@]}" env LD_LIBRARY_PATH="$llmc_libs" "$baselines/llmc/train_gpt2cu" \
      -i "$work/shards/train_*.bin" -j "$work/shards/val_*.bin" -e "$desc" -b "$batch" -t "$seq" -x 30 -v 1000 -m 2 \
      -s 0 -h 0
    [ ! -f "$work/llmc_$name.log" ] || grep -m 1 "device memory usage" "$work/llmc_$name.log" >>"$out/llmc_$name.log"
  fi
  torch_gpt "$name" compile 240
  [ "$name" != gpt124m ] || torch_gpt "$name" eager 90
}

# torch_gpt NAME MODE LIMIT: ../shared/baselines/gpt2.py at NAME's shape, one mode per process (a compile that
# runs out of time loses no other number).
torch_gpt() {
  local name=$1 mode=$2 limit=$3 config layers width heads batch desc shape
  gpt_plan "$name"
  stage "${mode}_$name" "$limit" "${peer[@]}" python3 "$baselines/gpt2.py" --layers "$layers" --width "$width" \
    --heads "$heads" --batch "$batch" --seq "$seq" --steps 20 --modes "$mode" \
    --json "$out/${mode}_$name.json"
}

declare -A timm_model=([deit_b]=deit_base_patch16_224 [deit_s]=deit_small_patch16_224)
# deit NAME: Loom (configs/NAME.yaml), timm eager and timm compiled (timm_model[NAME]) at batch 128.
deit() {
  local name=$1 model=${timm_model[$1]} config=configs/$1.yaml batch=${dry_batch:-128}
  stage "loom_$name" 120 "$bench" --config "$config" --batch "$batch" "${steps[@]}" --json "$out/loom_$name.json" \
    "${tiny_vit[@]}"
  for mode in eager compile; do
    stage "${mode}_$name" $([ $mode = eager ] && echo 90 || echo 240) "${peer[@]}" python3 "$baselines/deit.py" \
      --model "$model" --batch "$batch" --steps 20 --modes $mode --json "$out/${mode}_$name.json"
  done
}

# attention: Loom's flash attention and SDPA's cuDNN and flash backends, d64/d128 × s 1k/4k, causal and not.
attention() {
  local grid=(--dims 64 128 --seqlens 1024 4096)
  stage attention_loom 90 "${peer[@]}" "$work/bin/loom_flash_bench" "${grid[@]}" --json "$out/attention_loom.json"
  stage attention_sdpa 120 "${peer[@]}" python3 "$baselines/attention.py" "${grid[@]}" --json "$out/attention_sdpa.json"
}

# breakdown NAME CONFIG PEER_LABEL LOOM_ARGS... -- PEER_SCRIPT PEER_ARGS...: one step after 3 warm-ups of each
# under its profiler; the kernel lists go to ncu_NAME.json and torchprof_NAME.json (bench/zoo_breakdown.py).
breakdown() {
  local name=$1 config=$2 label=$3 loom_args=() peer_args
  shift 3
  while [ "$1" != -- ]; do loom_args+=("$1") && shift; done
  shift
  peer_args=("$@")
  stage "ncu_$name" 240 "${peer[@]}" python3 "$repo/bench/zoo_breakdown.py" ncu --ncu "$ncu_bin" \
    --csv "$work/ncu_$name.csv" --json "$out/ncu_$name.json" -- "$bench" --config "$config" --warmup 3 \
    --profile-step "${loom_args[@]}"
  stage "torchprof_$name" 300 "${peer[@]}" python3 "$repo/bench/zoo_breakdown.py" torch --label "$label" \
    --trace "$work/torchprof_$name.trace.json" --json "$out/torchprof_$name.json" --warmup 3 -- "${peer_args[@]}"
}

# breakdown_group GROUP: the breakdown of a ZOO group (GPT sizes against torch.compile, DeiT against timm eager).
breakdown_group() {
  local group=$1 config layers width heads batch desc shape
  case $group in
    deit_b | deit_s)
      batch=${dry_batch:-128}
      breakdown "$group" "configs/$group.yaml" "timm eager" --batch "$batch" "${tiny_vit[@]}" -- \
        "$baselines/deit.py" --model "${timm_model[$group]}" --batch "$batch" --steps 1 --modes eager ;;
    attention | eager) ;;
    *)
      gpt_plan "$group"
      breakdown "$group" "$config" torch.compile --batch "$batch" --seq "$seq" "${shape[@]}" -- \
        "$baselines/gpt2.py" --layers "$layers" --width "$width" --heads "$heads" --batch "$batch" --seq "$seq" \
        --steps 1 --modes compile ;;
  esac
}

for group in $zoo; do
  case $group in
    deit_b | deit_s) deit "$group" ;;
    attention) attention ;;
    eager) for name in "${gpt_names[@]}"; do [ "$name" = gpt124m ] || torch_gpt "$name" eager 90; done ;;
    *) gpt "$group" ;;
  esac
done
if [ "$breakdown" = 1 ]; then
  for group in $zoo; do breakdown_group "$group"; done
fi
python3 "$repo/bench/zoo_compare.py" --breakdown-json "$out/breakdown.json" "$out" | tee "$out/zoo.md"
echo "zoo: $(elapsed) s"
