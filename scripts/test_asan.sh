#!/usr/bin/env bash
# Runs the model tests against the NIF built with AddressSanitizer and
# UndefinedBehaviorSanitizer (llama.cpp itself is not instrumented). Any
# report fails the run. Leak detection is off: the BEAM does not free
# everything at exit by design; leaks are checked by counting live objects.
set -euo pipefail
cd "$(dirname "$0")/.."
export MIX_ENV=test

asan_rt=$(${CC:-gcc} -print-file-name=libasan.so)
ubsan_rt=$(${CC:-gcc} -print-file-name=libubsan.so)
if [ ! -e "$asan_rt" ] || [ ! -e "$ubsan_rt" ]; then
  echo "test_asan: SKIPPED: the compiler has no AddressSanitizer/UBSan runtime (libasan.so, libubsan.so)" >&2
  exit 0
fi
mix compile
# _build/test/lib/llama_cpp_ex/priv/llama_cpp_ex_nif_asan.so, next to the normal
# library (objects in _build/test/lib/llama_cpp_ex/obj_asan)
mix compile.llama_cpp_ex --asan

echo "test_asan: running the suite (without :slow and :conformance) with $asan_rt"
LD_PRELOAD="$asan_rt $ubsan_rt" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  LLAMA_CPP_EX_NIF=llama_cpp_ex_nif_asan \
  mix test --exclude slow --exclude conformance
