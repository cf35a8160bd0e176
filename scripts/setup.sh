#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: installs what the build and the tests need
# (only what is missing), then builds llama.cpp and the NIF.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_cmd elixir || need+=(elixir)
have_cmd erl && [ -n "$(ls /usr/lib/erlang/usr/include/erl_nif.h 2>/dev/null)" ] || need+=(erlang-dev)
ls -d /usr/lib/erlang/lib/proper-* >/dev/null 2>&1 || need+=(erlang-proper)
ls -d /usr/lib/erlang/lib/jiffy-* >/dev/null 2>&1 || need+=(erlang-jiffy)
ls -d /usr/lib/erlang/lib/inets-* >/dev/null 2>&1 || need+=(erlang-inets)
have_cmd cmake || need+=(cmake)
have_cmd g++ || need+=(g++)
have_cmd make || need+=(make)
have_cmd git || need+=(git)
have_cmd npm || need+=(npm)
have_cmd node || need+=(nodejs)
have_cmd curl || need+=(curl)
# the HTTP server's browser test (test/http_page_test.exs)
have_cmd chromium || need+=(chromium)
have_cmd sha256sum || need+=(coreutils)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm packages the tests drive the library with, into the cache (never the
# repository; see test/js/): the official openai client and playwright-core
# (HTTP server), @huggingface/jinja (the chat templates' reference renderer)
scripts/npm_deps.sh openai playwright-core @huggingface/jinja@0.5.11 >/dev/null ||
  echo "setup: could not install the npm test packages; the HTTP client and Jinja conformance tests will fail" >&2

mix compile
