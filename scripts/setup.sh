#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: installs the packages the build and the
# tests need (only those missing), then builds llama.cpp and the NIF.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in elixir erlang-dev erlang-proper cmake g++ make git npm ca-certificates; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

export MIX_ENV="${MIX_ENV:-dev}"
mix compile
