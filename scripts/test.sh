#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end tests that
# drive the real rk3s binary with the real kubectl. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if ! command -v kubectl >/dev/null 2>&1 && [ -z "${RK3S_TEST_KUBECTL:-}" ]; then
  echo "kubectl is required for the end-to-end tests (set RK3S_TEST_KUBECTL or install it in PATH)" >&2
  exit 1
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests
  cargo test --workspace --doc -q
else
  cargo test --workspace --no-fail-fast "$@"
fi
