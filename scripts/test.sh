#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end tests that
# drive the real rk3s binary with the real kubectl. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

. scripts/lib.sh
command -v cc >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1 || rk3s_apt_install build-essential pkg-config
# The end-to-end tests run real pods, Services, DNS and NetworkPolicies: the node packages.
rk3s_apt_install "${RK3S_NODE_PKGS[@]}"
if [ -z "${RK3S_TEST_KUBECTL:-}" ]; then
  rk3s_ensure_kubectl
  export RK3S_TEST_KUBECTL="$(command -v kubectl)"
fi

# Helm 4's Go SDK for the Helm end-to-end test (PyPI's helm-python-sdk: real Helm, no binary),
# in a virtualenv beside the build cache.
helm_venv="${RK3S_HELM_VENV:-${CARGO_TARGET_DIR:-/var/cache/rk3s-ci/target}/../helm-venv}"
if [ -z "${RK3S_TEST_HELM_PYTHON:-}" ]; then
  if ! "$helm_venv/bin/python" -c 'import helm_python' >/dev/null 2>&1; then
    python3 -m venv "$helm_venv" >/dev/null 2>&1 || { rk3s_apt_install python3-venv; python3 -m venv "$helm_venv"; }
    "$helm_venv/bin/python" -m pip install -q helm-python-sdk
  fi
  export RK3S_TEST_HELM_PYTHON="$helm_venv/bin/python"
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests
  cargo test --workspace --doc -q
else
  cargo test --workspace --no-fail-fast "$@"
fi
