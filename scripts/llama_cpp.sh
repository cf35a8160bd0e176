#!/usr/bin/env bash
# Fetch, verify and build the pinned llama.cpp static libraries.
#
#   scripts/llama_cpp.sh ensure        build the libraries if the cache lacks them;
#                                      prints KEY=VALUE lines (LLAMA_SRC, LLAMA_BUILD,
#                                      LLAMA_BACKEND, LLAMA_LIBS, LLAMA_LDFLAGS)
#   scripts/llama_cpp.sh src           fetch + verify the source only, print its path
#   scripts/llama_cpp.sh tools T...    build extra llama.cpp targets (llama-simple,
#                                      llama-bench, ...) in the same build tree
#
# Environment:
#   LLAMA_CPP_SRC     use this llama.cpp checkout instead of the pinned release
#   LLAMA_BACKEND     cpu | cuda | vulkan | metal (default: automatic)
#   LLAMA_CMAKE_ARGS  extra CMake flags (part of the cache key)
#   LLAMA_PORTABLE=1  build without -march=native (GGML_NATIVE=OFF)
#   LLAMA_CPP_CACHE   cache root (default: ${XDG_CACHE_HOME:-~/.cache}/llama_cpp_ex)
set -euo pipefail

PIN_PACKAGE="node-llama-cpp@3.22.1"
PIN_TARBALL="node-llama-cpp-3.22.1.tgz"
PIN_TARBALL_SHA256="a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f"
PIN_BUNDLE_SHA256="5f5d1105d5df040738d87b8290e5d17e7362131cdcfdb0831618e0ea528b4a51"
PIN_COMMIT="de3ff815ea7d559ee917f063901b8986f038abc6"

CACHE="${LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_cpp_ex}"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)}"

log() { echo "llama_cpp.sh: $*" >&2; }
die() { echo "llama_cpp.sh: error: $*" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

fetch_pinned_source() {
  local src="$CACHE/src/$PIN_COMMIT"
  if [ -f "$src/.llama_cpp_ex_verified" ]; then echo "$src"; return; fi
  command -v npm >/dev/null || die "npm is needed to fetch llama.cpp (apt-get install npm)"
  command -v git >/dev/null || die "git is needed to unpack llama.cpp"
  local dl="$CACHE/downloads"
  mkdir -p "$dl"
  if [ ! -f "$dl/$PIN_TARBALL" ]; then
    log "fetching $PIN_PACKAGE from the npm registry"
    (cd "$dl" && npm pack --silent "$PIN_PACKAGE" >/dev/null) || die "npm pack $PIN_PACKAGE failed"
  fi
  local got
  got=$(sha256_of "$dl/$PIN_TARBALL")
  if [ "$got" != "$PIN_TARBALL_SHA256" ]; then
    rm -f "$dl/$PIN_TARBALL"
    die "checksum mismatch for $PIN_TARBALL: expected $PIN_TARBALL_SHA256, got $got (file removed)"
  fi
  local tmp="$CACHE/tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  tar -xzf "$dl/$PIN_TARBALL" -C "$tmp" package/llama/gitRelease.bundle
  got=$(sha256_of "$tmp/package/llama/gitRelease.bundle")
  if [ "$got" != "$PIN_BUNDLE_SHA256" ]; then
    rm -rf "$tmp"
    die "checksum mismatch for gitRelease.bundle: expected $PIN_BUNDLE_SHA256, got $got"
  fi
  rm -rf "$src"; mkdir -p "$CACHE/src"
  git clone --quiet "$tmp/package/llama/gitRelease.bundle" "$src" 2>/dev/null || die "cloning the bundle failed"
  git -C "$src" -c advice.detachedHead=false checkout --quiet "$PIN_COMMIT" || die "commit $PIN_COMMIT not in bundle"
  rm -rf "$tmp"
  touch "$src/.llama_cpp_ex_verified"
  log "llama.cpp $PIN_COMMIT ready in $src"
  echo "$src"
}

source_dir() {
  if [ -n "${LLAMA_CPP_SRC:-}" ]; then
    [ -f "$LLAMA_CPP_SRC/include/llama.h" ] || die "LLAMA_CPP_SRC=$LLAMA_CPP_SRC has no include/llama.h"
    (cd "$LLAMA_CPP_SRC" && pwd)
  else
    fetch_pinned_source
  fi
}

source_commit() {
  git -C "$1" rev-parse HEAD 2>/dev/null || echo "unknown-$(echo "$1" | cksum | cut -d' ' -f1)"
}

has_nvidia_gpu() {
  if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then return 0; fi
  ls /dev/nvidia[0-9]* >/dev/null 2>&1
}

pick_backend() {
  case "${LLAMA_BACKEND:-auto}" in
    cpu|cuda|vulkan|metal) echo "$LLAMA_BACKEND" ;;
    auto|"")
      if [ "$(uname -s)" = "Darwin" ]; then echo metal
      elif command -v nvcc >/dev/null && has_nvidia_gpu; then echo cuda
      else echo cpu; fi ;;
    *) die "LLAMA_BACKEND must be cpu, cuda, vulkan or metal (got '$LLAMA_BACKEND')" ;;
  esac
}

cmake_flags() {
  local backend=$1
  local flags=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_CURL=OFF
    -DGGML_BACKEND_DL=OFF
    # ggml's own thread pools instead of OpenMP: the NIF gives every context a
    # pool of its own. OpenMP keeps one team per calling thread, and with
    # decodes coming from several dirty schedulers and stream threads, libgomp
    # sees more threads than CPUs and throttles its spinning (5-10x slower
    # tokens on small models).
    -DGGML_OPENMP=OFF
  )
  if [ "${LLAMA_PORTABLE:-0}" = "1" ]; then flags+=(-DGGML_NATIVE=OFF); else flags+=(-DGGML_NATIVE=ON); fi
  case "$backend" in
    cuda) flags+=(-DGGML_CUDA=ON) ;;
    vulkan) flags+=(-DGGML_VULKAN=ON) ;;
    metal) flags+=(-DGGML_METAL=ON -DGGML_METAL_EMBED_LIBRARY=ON) ;;
    cpu) ;;
  esac
  # shellcheck disable=SC2206
  [ -n "${LLAMA_CMAKE_ARGS:-}" ] && flags+=(${LLAMA_CMAKE_ARGS})
  printf '%s\n' "${flags[@]}"
}

# Library targets the NIF links, in link order.
lib_targets() {
  local backend=$1
  echo llama ggml ggml-cpu
  case "$backend" in
    cuda) echo ggml-cuda ;;
    vulkan) echo ggml-vulkan ;;
    metal) echo ggml-metal ;;
  esac
  echo ggml-base
}

main() {
  local cmd=${1:-ensure}; shift || true
  local src backend commit key build
  src=$(source_dir)
  if [ "$cmd" = "src" ]; then echo "$src"; return; fi
  backend=$(pick_backend)
  commit=$(source_commit "$src")
  mapfile -t flags < <(cmake_flags "$backend")
  key="${commit:0:12}-$backend-$(printf '%s\n' "$src" "${flags[@]}" | sha256_of /dev/stdin | cut -c1-12)"
  build="$CACHE/build/$key"
  local targets
  mapfile -t targets < <(lib_targets "$backend" | tr ' ' '\n')

  if [ ! -f "$build/CMakeCache.txt" ]; then
    command -v cmake >/dev/null || die "cmake is needed (apt-get install cmake)"
    log "configuring llama.cpp ($backend) in $build"
    mkdir -p "$CACHE/build"
    cmake -S "$src" -B "$build" "${flags[@]}" >"$build.configure.log" 2>&1 \
      || { tail -30 "$build.configure.log" >&2; die "cmake configure failed (log: $build.configure.log)"; }
  fi

  case "$cmd" in
    ensure)
      if [ ! -f "$build/.libs_built" ]; then
        log "building llama.cpp static libraries with $JOBS jobs (a few minutes, once per machine)"
        cmake --build "$build" --config Release -j "$JOBS" --target "${targets[@]}" >"$build.build.log" 2>&1 \
          || { tail -40 "$build.build.log" >&2; die "llama.cpp build failed (log: $build.build.log)"; }
        touch "$build/.libs_built"
      fi
      local libs=() t f
      for t in "${targets[@]}"; do
        f=$(find "$build" -name "lib$t.a" -print -quit)
        [ -n "$f" ] || die "lib$t.a not found under $build"
        libs+=("$f")
      done
      local ldflags="-lstdc++ -lm -lpthread"
      if grep -q '^GGML_OPENMP:BOOL=ON' "$build/CMakeCache.txt" && grep -q '^OpenMP_C_FLAGS:STRING=-fopenmp' "$build/CMakeCache.txt"; then
        ldflags="-fopenmp $ldflags"
      fi
      case "$backend" in
        cuda) ldflags="$ldflags -L${CUDA_PATH:-/usr/local/cuda}/lib64 -lcudart -lcublas -lcublasLt -lcuda" ;;
        vulkan) ldflags="$ldflags -lvulkan" ;;
        metal) ldflags="$ldflags -framework Foundation -framework Metal -framework MetalKit -framework Accelerate" ;;
      esac
      echo "LLAMA_SRC=$src"
      echo "LLAMA_COMMIT=$commit"
      echo "LLAMA_BUILD=$build"
      echo "LLAMA_BACKEND=$backend"
      echo "LLAMA_LIBS=${libs[*]}"
      echo "LLAMA_LDFLAGS=$ldflags"
      ;;
    tools)
      [ $# -gt 0 ] || die "tools: name the targets (e.g. llama-simple llama-bench)"
      if ! grep -q '^LLAMA_BUILD_TOOLS:BOOL=ON' "$build/CMakeCache.txt" || ! grep -q '^LLAMA_BUILD_EXAMPLES:BOOL=ON' "$build/CMakeCache.txt" \
        || ! grep -q '^LLAMA_BUILD_SERVER:BOOL=ON' "$build/CMakeCache.txt"; then
        # llama-server (a reference for the HTTP benchmark) without TLS: nothing here needs it
        cmake -S "$src" -B "$build" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_COMMON=ON \
          -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >>"$build.configure.log" 2>&1 \
          || die "cmake configure for tools failed"
      fi
      log "building reference tools: $*"
      cmake --build "$build" --config Release -j "$JOBS" --target "$@" >"$build.tools.log" 2>&1 \
        || { tail -40 "$build.tools.log" >&2; die "tool build failed (log: $build.tools.log)"; }
      echo "$build/bin"
      ;;
    *) die "unknown command '$cmd' (ensure | src | tools T...)" ;;
  esac
}

main "$@"
