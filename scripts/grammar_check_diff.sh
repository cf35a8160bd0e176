#!/usr/bin/env bash
# Compares c_src/grammar_check.c (our pre-check of GBNF text) with llama.cpp's
# own grammar parser on random grammar text; see test/native/grammar_check_diff.cpp.
# Run it after every llama.cpp upgrade: the check must read grammars exactly
# as llama.cpp does.
#
#   scripts/grammar_check_diff.sh [ITERATIONS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."

while IFS='=' read -r key value; do
  case "$key" in LLAMA_*) export "$key=$value" ;; esac
done < <(scripts/llama_cpp.sh ensure)

out="$LLAMA_BUILD/lcx_test"
mkdir -p "$out"
cc -std=c11 -O2 -Wall -Wextra -c c_src/grammar_check.c -o "$out/grammar_check.o"
# shellcheck disable=SC2086
c++ -std=c++17 -O2 -Wall -Wextra -Ic_src -I"$LLAMA_SRC/src" -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" \
  test/native/grammar_check_diff.cpp "$out/grammar_check.o" -o "$out/grammar_check_diff" $LLAMA_LIBS $LLAMA_LDFLAGS
# a bounded address space: a runaway parse fails with bad_alloc instead of swapping
(ulimit -v 8000000 && "$out/grammar_check_diff" "${1:-200000}" "${2:-42}")
