#!/usr/bin/env bash
# Packs what bench/zoo.sh needs on a bare GPU machine into one folder to carry (git-ignored under .carry/):
# loom_train_bench and loom_flash_bench with the shared libraries that machine lacks (bench/pack_for_device.sh)
# as bin.tar.xz, and the linux-doc token shards (data/linux-doc, made by scripts/setup.sh) for llm.c as
# linux-doc.tar.xz. About 25 MB; the peers (../shared/baselines, 4 MB) are carried beside it. The kernel-time
# breakdown needs nothing more: loom_train_bench --profile-step, bench/zoo_breakdown.py from the work tree, and the
# GPU machine's own ncu and PyTorch.
#   usage: bench/zoo_pack.sh BUILD_DIR DEST      e.g. bench/zoo_pack.sh build .carry/zoo
set -euo pipefail
build=$1 dest=$2
tokens=${LINUX_DOC_DIR:-data/linux-doc}
for f in "$build/loom_train_bench" "$build/loom_flash_bench" "$tokens/val_000000.bin"; do
  [ -e "$f" ] || { echo "zoo_pack.sh: missing $f" >&2; exit 1; }
done
rm -rf "$dest" && mkdir -p "$dest"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
bash "$(dirname "$0")/pack_for_device.sh" "$stage/bin" "$build/loom_train_bench" "$build/loom_flash_bench" >/dev/null
XZ_OPT="-6 -T0" tar -C "$stage/bin" -cJf "$dest/bin.tar.xz" .
XZ_OPT="-6 -T0" tar -C "$tokens" -cJf "$dest/linux-doc.tar.xz" $(cd "$tokens" && ls train_*.bin val_*.bin)
du -sh "$dest" "$dest"/*
