#!/usr/bin/env bash
# Build bench/gen_lora.c against the cached llama.cpp libraries and generate
# the deterministic test LoRA adapter for a base model (once).
#
#   bench/gen_lora.sh [BASE.gguf] [SEED]
#
# BASE defaults to ../shared/models/stories260K.gguf ($LLAMA_CPP_EX_MODELS
# overrides the folder), SEED to 7. The adapter goes to
# $CACHE/models/lora-<base name>-seed<SEED>.gguf, where
# CACHE=${LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_cpp_ex}; the
# generator binary to $LLAMA_BUILD/bench/gen_lora. Nothing is written into
# the repository. The adapter path is the last line on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_cpp_ex}"
MODELS="${LLAMA_CPP_EX_MODELS:-$ROOT/../shared/models}"
BASE="${1:-$MODELS/stories260K.gguf}"
SEED="${2:-7}"
case "$SEED" in
  ''|*[!0-9]*) echo "gen_lora.sh: SEED must be a non-negative decimal integer" >&2; exit 2 ;;
esac
[ -f "$BASE" ] || { echo "gen_lora.sh: $BASE not found" >&2; exit 1; }

NAME="$(basename "$BASE" .gguf)"
OUT="$CACHE/models/lora-$NAME-seed$SEED.gguf"
SRC="$ROOT/bench/gen_lora.c"

# LLAMA_SRC, LLAMA_BUILD, LLAMA_LIBS, LLAMA_LDFLAGS, ...
ENSURE_OUT="$("$ROOT/scripts/llama_cpp.sh" ensure)"
eval "$(printf '%s\n' "$ENSURE_OUT" | grep -E '^LLAMA_[A-Z_]+=' | sed -E "s/^([A-Z_]+)=(.*)$/\1='\2'/")"
BIN_DIR="$LLAMA_BUILD/bench"
BIN="$BIN_DIR/gen_lora"

if [ -f "$OUT" ] && [ "$OUT" -nt "$SRC" ]; then
  echo "$OUT"
  exit 0
fi

if [ ! -x "$BIN" ] || [ "$SRC" -nt "$BIN" ]; then
  mkdir -p "$BIN_DIR"
  echo "gen_lora.sh: compiling $BIN" >&2
  cc -std=c11 -O2 -Wall -Wextra \
     -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" \
     -c "$SRC" -o "$BIN_DIR/gen_lora.o"
  # shellcheck disable=SC2086
  g++ -o "$BIN.tmp" "$BIN_DIR/gen_lora.o" $LLAMA_LIBS $LLAMA_LDFLAGS
  mv -f "$BIN.tmp" "$BIN"
fi

mkdir -p "$(dirname "$OUT")"
TMP="$OUT.tmp.$$"
trap 'rm -f "$TMP"' EXIT
"$BIN" "$BASE" "$TMP" "$SEED" >&2
mv -f "$TMP" "$OUT"
echo "$OUT"
