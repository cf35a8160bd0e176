#!/usr/bin/env bash
# Installs npm packages that tests use as reference implementations into the
# cache, ${LLAMA_CPP_EX_NPM:-~/.cache/llama_cpp_ex/npm}, once each; prints that
# directory. Usage: scripts/npm_deps.sh PKG[@VERSION]...
# Node.js and npm are Debian's (scripts/setup.sh installs them). Nothing is
# written into the repository.
set -euo pipefail
dir="${LLAMA_CPP_EX_NPM:-${XDG_CACHE_HOME:-$HOME/.cache}/llama_cpp_ex/npm}"
mkdir -p "$dir"
missing=()
for spec in "$@"; do
  # the package name is the spec without a trailing @version (scoped names start with @)
  name="${spec%@*}"
  [ -z "$name" ] && name="$spec"
  if [ ! -f "$dir/node_modules/$name/package.json" ]; then
    missing+=("$spec")
  else
    want="${spec#"$name"}"; want="${want#@}"
    if [ -n "$want" ] && ! grep -q "\"version\": *\"$want\"" "$dir/node_modules/$name/package.json"; then
      missing+=("$spec")
    fi
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "npm_deps: installing ${missing[*]} into $dir" >&2
  npm install --silent --no-audit --no-fund --prefix "$dir" "${missing[@]}" >&2
fi
echo "$dir"
