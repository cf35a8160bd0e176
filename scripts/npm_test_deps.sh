#!/usr/bin/env bash
# Installs the npm packages the HTTP server's tests drive it with (the
# official `openai` client and `playwright-core`) into the cache,
# ${LLAMA_CPP_EX_NPM:-~/.cache/llama_cpp_ex/npm}, once; prints that directory.
# Node.js and npm are Debian's (scripts/setup.sh installs them).
set -euo pipefail
dir="${LLAMA_CPP_EX_NPM:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_cpp_ex/npm}"
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/openai" ] || [ ! -d "$dir/node_modules/playwright-core" ]; then
  echo "npm_test_deps: installing openai and playwright-core into $dir" >&2
  npm install --silent --no-audit --no-fund --prefix "$dir" openai playwright-core >&2
fi
echo "$dir"
