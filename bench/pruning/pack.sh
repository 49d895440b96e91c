#!/usr/bin/env bash
# Packs what bench/pruning/device_session.sh needs on a bare GPU machine into one folder to carry (git-ignored
# under .carry/): the binaries (loom, loom_prune_bench, loom_gpu_tests when built) with the shared libraries
# that machine lacks (bench/pack_for_device.sh) as bin.tar.xz, Debian's Fashion-MNIST (dataset-fashion-mnist:
# the four .gz files, already compressed) in fmnist/, and the linux-doc token shards (data/linux-doc, made by
# scripts/setup.sh) as linux-doc.tar.xz. About 55 MB in all (the carried tree may hold 64 MiB with the
# repository's 2 MB).
#   usage: bench/pruning/pack.sh BUILD_DIR DEST      e.g. bench/pruning/pack.sh build .carry/prune
set -euo pipefail
build=$1 dest=$2
fmnist=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
tokens=${LINUX_DOC_DIR:-data/linux-doc}
for f in "$build/loom" "$build/loom_prune_bench" "$fmnist/train-images-idx3-ubyte.gz" "$tokens/val_000000.bin"; do
  [ -e "$f" ] || { echo "pack.sh: missing $f" >&2; exit 1; }
done
rm -rf "$dest" && mkdir -p "$dest/fmnist"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# loom_gpu_tests too when built: part a first runs the pruning and distillation GPU tests.
tests=()
[ -x "$build/loom_gpu_tests" ] && tests=("$build/loom_gpu_tests")
bash "$(dirname "$0")/../pack_for_device.sh" "$stage/bin" "$build/loom" "$build/loom_prune_bench" "${tests[@]}" >/dev/null
XZ_OPT="-6 -T0" tar -C "$stage/bin" -cJf "$dest/bin.tar.xz" .
cp "$fmnist"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$dest/fmnist/"
XZ_OPT="-6 -T0" tar -C "$tokens" -cJf "$dest/linux-doc.tar.xz" $(cd "$tokens" && ls train_*.bin val_*.bin)
du -sh "$dest" "$dest"/*
