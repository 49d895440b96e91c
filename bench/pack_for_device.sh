#!/usr/bin/env bash
# Packs built binaries and the shared libraries a bare GPU machine may lack into one folder to carry with a
# `device` call (see bench/README.md). usage: bench/pack_for_device.sh DEST BINARY...
# System libraries (glibc, libstdc++, CUDA's driver, Open MPI, which the GPU machine has) are left out.
set -euo pipefail
dest=$1; shift
mkdir -p "$dest/lib"
for bin in "$@"; do
  cp "$bin" "$dest/"
  strip --strip-unneeded "$dest/$(basename "$bin")"  # symbols are half a binary's size; the carry is capped
  ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libstdc++*|libgcc_s*|ld-linux*|libpthread*|libdl.so*|librt.so*|libcuda.so*|libmpi*|libopen-*|libhwloc*|libevent*|libnccl*|libcublas*|libcudart*) ;;
      *) cp -L "$lib" "$dest/lib/" ;;
    esac
  done
done
du -sh "$dest"
