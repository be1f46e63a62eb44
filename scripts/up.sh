#!/usr/bin/env bash
# Builds rk3s, installs it as a service (`rk3s install`) and starts a single-node cluster on
# the embedded SQLite datastore.
# For a fresh Debian 12 machine, run as root. Installs what it needs from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

. scripts/lib.sh
need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  need_pkgs+=(cargo rustc)
fi
rk3s_apt_install "${need_pkgs[@]}" "${RK3S_NODE_PKGS[@]}"
rk3s_ensure_kubectl
export PATH="$HOME/.cargo/bin:$PATH"

log "building rk3s (release)"
cargo build --release -p rk3s

# Installs it as a service (rk3s.service under systemd; without systemd a background start
# with its log in /var/log/rk3s.log and pid in /run/rk3s.pid); re-running upgrades it.
log "installing rk3s (rk3s install)"
"${CARGO_TARGET_DIR:-target}/release/rk3s" install "$@"

export KUBECONFIG=/etc/rk3s/rk3s.yaml
tls=/var/lib/rk3s/server/tls
api() { curl -sf --cacert "$tls/server-ca.crt" --cert "$tls/client-admin.crt" --key "$tls/client-admin.key" "https://127.0.0.1:6443$1"; }
for _ in $(seq 1 300); do
  if [ "$(curl -sk https://127.0.0.1:6443/readyz 2>/dev/null)" = ok ]; then
    log "API server is ready; waiting for the node"
    for _ in $(seq 1 300); do
      api /api/v1/nodes 2>/dev/null | grep -q '"type":"Ready","status":"True"' && break
      sleep 0.1
    done
    if command -v kubectl >/dev/null 2>&1; then
      kubectl get nodes -o wide
    else
      api /api/v1/nodes | grep -o '"name":"[^"]*"' | head -1
    fi
    log "rk3s is ready: export KUBECONFIG=$KUBECONFIG (or use 'rk3s kubectl ...' if kubectl is installed)"
    exit 0
  fi
  if [ -f /run/rk3s.pid ] && ! kill -0 "$(cat /run/rk3s.pid)" 2>/dev/null; then
    echo "rk3s server exited; see /var/log/rk3s.log" >&2; tail -n 20 /var/log/rk3s.log >&2; exit 1
  fi
  sleep 0.1
done
echo "rk3s server did not become ready in 30 s; see /var/log/rk3s.log (or journalctl -u rk3s)" >&2
exit 1
