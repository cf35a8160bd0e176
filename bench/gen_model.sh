#!/usr/bin/env bash
# Build bench/gen_model.c against the cached llama.cpp libraries and generate
# the deterministic synthetic benchmark model (once per seed).
#
#   bench/gen_model.sh [SEED]     (default seed 42)
#
# The model goes to $CACHE/models/synthetic-130m-q8_0.gguf for the default
# seed and $CACHE/models/synthetic-130m-seedSEED-q8_0.gguf otherwise, where
# CACHE=${LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_cpp_ex}.
# The generator binary goes to $LLAMA_BUILD/bench/gen_model. Nothing is
# written into the repository. The model path is the last line on stdout.
set -euo pipefail

DEFAULT_SEED=42
SEED="${1:-$DEFAULT_SEED}"
case "$SEED" in
  ''|*[!0-9]*) echo "gen_model.sh: SEED must be a non-negative decimal integer" >&2; exit 2 ;;
esac
SEED=$((10#$SEED))

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_cpp_ex}"

if [ "$SEED" = "$DEFAULT_SEED" ]; then
  MODEL="$CACHE/models/synthetic-130m-q8_0.gguf"
else
  MODEL="$CACHE/models/synthetic-130m-seed$SEED-q8_0.gguf"
fi

if [ -f "$MODEL" ]; then
  echo "$MODEL"
  exit 0
fi

# LLAMA_SRC, LLAMA_BUILD, LLAMA_LIBS, LLAMA_LDFLAGS, ...
ENSURE_OUT="$("$ROOT/scripts/llama_cpp.sh" ensure)"
eval "$(printf '%s\n' "$ENSURE_OUT" | grep -E '^LLAMA_[A-Z_]+=' | sed -E "s/^([A-Z_]+)=(.*)$/\1='\2'/")"

BIN_DIR="$LLAMA_BUILD/bench"
BIN="$BIN_DIR/gen_model"
SRC="$ROOT/bench/gen_model.c"
VOCAB="$LLAMA_SRC/models/ggml-vocab-llama-spm.gguf"
[ -f "$VOCAB" ] || { echo "gen_model.sh: $VOCAB not found" >&2; exit 1; }

if [ ! -x "$BIN" ] || [ "$SRC" -nt "$BIN" ]; then
  mkdir -p "$BIN_DIR"
  echo "gen_model.sh: compiling $BIN" >&2
  # shellcheck disable=SC2086
  cc -std=c11 -O2 -Wall -Wextra \
     -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" \
     -DGEN_MODEL_DEFAULT_VOCAB="\"$VOCAB\"" \
     -c "$SRC" -o "$BIN_DIR/gen_model.o"
  # shellcheck disable=SC2086
  g++ -o "$BIN.tmp" "$BIN_DIR/gen_model.o" $LLAMA_LIBS $LLAMA_LDFLAGS
  mv -f "$BIN.tmp" "$BIN"
fi

mkdir -p "$(dirname "$MODEL")"
TMP="$MODEL.tmp.$$"
trap 'rm -f "$TMP" "$TMP.f16.tmp"' EXIT
echo "gen_model.sh: generating $MODEL (seed $SEED)" >&2
GEN_MODEL_VOCAB="$VOCAB" "$BIN" "$TMP" "$SEED" >&2
mv -f "$TMP" "$MODEL"
echo "$MODEL"
