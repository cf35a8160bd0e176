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

# the LLAMA_* variables the build needs (values contain spaces: export each line)
while IFS='=' read -r key value; do
  case "$key" in LLAMA_*) export "$key=$value" ;; esac
done < <(scripts/llama_cpp.sh ensure)
erts_include=$(erl -noshell -eval 'io:format("~ts/erts-~ts/include", [code:root_dir(), erlang:system_info(version)]), halt().')
make -s nif-asan MIX_APP_PATH="$PWD/_build/test/lib/llama_cpp_ex" PRIV_DIR="$PWD/priv" \
  ERTS_INCLUDE_DIR="$erts_include" LLAMA_SRC="$LLAMA_SRC" LLAMA_LIBS="$LLAMA_LIBS" LLAMA_LDFLAGS="$LLAMA_LDFLAGS"

echo "test_asan: running the model tests with $asan_rt"
LD_PRELOAD="$asan_rt $ubsan_rt" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  LLAMA_CPP_EX_NIF=llama_cpp_ex_nif_asan \
  mix test --include model --exclude slow --exclude conformance
