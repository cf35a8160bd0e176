#!/usr/bin/env bash
# Run llama.cpp's own llama-bench (built from the pinned source, same build
# tree and flags as the NIF's static libraries) and print its JSON results.
#
#   bench/native_bench.sh MODEL THREADS [EXTRA llama-bench ARGS...]
#
# Tests: pp256, pp512 (prompt processing, n_gen = 0) and tg128 (generation,
# n_prompt = 0), 5 timed repetitions each after one untimed warm-up run.
# n_batch 2048 / n_ubatch 512 are passed explicitly (they are also the
# llama-bench and llama_context_default_params defaults, matching our Context).
# Note that llama-bench sizes each test's context as n_ctx = n_prompt + n_gen
# (padded to 256 by llama.cpp), and llama.cpp clamps n_batch/n_ubatch to that
# n_ctx, so pp256 effectively runs with n_batch = n_ubatch = 256.
#
# Only the JSON goes to stdout; build messages go to stderr.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 MODEL THREADS [EXTRA llama-bench ARGS...]" >&2
  exit 2
fi
MODEL=$1
THREADS=$2
shift 2
[ -f "$MODEL" ] || { echo "native_bench.sh: model not found: $MODEL" >&2; exit 1; }
case "$THREADS" in
  ''|*[!0-9]*|0) echo "native_bench.sh: THREADS must be a positive integer" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$("$ROOT/scripts/llama_cpp.sh" tools llama-bench | tail -n 1)"
BENCH="$BIN_DIR/llama-bench"
[ -x "$BENCH" ] || { echo "native_bench.sh: $BENCH was not built" >&2; exit 1; }

exec "$BENCH" -m "$MODEL" \
  -p 256,512 -n 128 \
  -b 2048 -ub 512 \
  -t "$THREADS" -r 5 \
  -o json "$@"
