#!/usr/bin/env bash
# Fuzzes the API server with schemathesis (PyPI) against its own OpenAPI v3 documents:
# every operation of the listed group-versions gets generated requests (valid and
# invalid bodies, parameters); the check is "no 5xx and no dropped connection".
# A report, not a CI gate: it starts its own `rk3s server --disable-agent` on a free
# port with a temporary data dir and stops it at the end.
#
# Usage: bench/api_fuzz.sh [RK3S_BINARY] [EXAMPLES_PER_OPERATION] [GROUP_VERSION...]
#   defaults: target/release/rk3s (else target/debug/rk3s), 10, "api/v1 apis/apps/v1"
# Env: FUZZ_VENV (default /var/cache/rk3s-fuzz-venv), FUZZ_WORKERS (default 2),
#      FUZZ_PHASES (default fuzzing; schemathesis phases: examples,coverage,fuzzing)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
if [ -z "$bin" ]; then
  for b in "${CARGO_TARGET_DIR:-$here/target}/release/rk3s" "${CARGO_TARGET_DIR:-$here/target}/debug/rk3s"; do
    [ -x "$b" ] && { bin=$b; break; }
  done
fi
[ -x "${bin:-}" ] || { echo "no rk3s binary (build it or pass its path)" >&2; exit 2; }
examples=${2:-10}
shift $(( $# > 2 ? 2 : $# ))
gvs=("$@"); [ ${#gvs[@]} -gt 0 ] || gvs=(api/v1 apis/apps/v1)
venv=${FUZZ_VENV:-/var/cache/rk3s-fuzz-venv}
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis into $venv (PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis
fi

work=$(mktemp -d /tmp/rk3s-fuzz.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" server --disable-agent --data-dir "$work/data" --https-listen-port "$port" \
  --write-kubeconfig "$work/kubeconfig.yaml" >"$work/server.log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 120); do
  [ -s "$work/kubeconfig.yaml" ] && curl -sk "https://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
# The admin's client certificate from the kubeconfig.
python3 - "$work" <<'EOF'
import base64, re, sys
w = sys.argv[1]
text = open(f"{w}/kubeconfig.yaml").read()
for field, name in (("client-certificate-data", "cert.pem"), ("client-key-data", "key.pem")):
    m = re.search(rf"{field}:\s*(\S+)", text)
    open(f"{w}/{name}", "wb").write(base64.b64decode(m.group(1)))
EOF
curl_admin() { curl -sk --cert "$work/cert.pem" --key "$work/key.pem" "$@"; }
total_fail=0
for gv in "${gvs[@]}"; do
  curl_admin "https://127.0.0.1:$port/openapi/v3/$gv" >"$work/schema.json"
  # `watch=true` turns a list into a stream that never ends (as upstream): fuzzed
  # watches would only time out, so the parameter is left out (watches have tests).
  python3 - "$work/schema.json" <<'EOF'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
for item in d.get("paths", {}).values():
    item["parameters"] = [x for x in item.get("parameters", []) if x.get("name") != "watch"]
    for op in item.values():
        if isinstance(op, dict) and "parameters" in op:
            op["parameters"] = [x for x in op["parameters"] if x.get("name") != "watch"]
json.dump(d, open(p, "w"))
EOF
  echo "== /openapi/v3/$gv: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(len(v) for v in d["paths"].values()))' "$work/schema.json") operations, $examples examples each"
  set +e
  (cd "$work" && "$venv/bin/schemathesis" run "$work/schema.json" --url "https://127.0.0.1:$port" \
    --request-cert "$work/cert.pem" --request-cert-key "$work/key.pem" --tls-verify false \
    --checks not_a_server_error --phases "${FUZZ_PHASES:-fuzzing}" --max-examples "$examples" \
    --workers "${FUZZ_WORKERS:-2}" --request-timeout 30 --suppress-health-check all \
    --continue-on-failure --generation-deterministic) 2>&1 | tee "$work/run.log"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || total_fail=$((total_fail + 1))
done
grep -E ' (ERROR|WARN) ' "$work/server.log" | grep -v -i 'not found' | tail -20 || true
if grep -q 'panicked' "$work/server.log"; then
  echo "SERVER PANICKED:"; grep -A3 'panicked' "$work/server.log" | head -20; total_fail=$((total_fail + 1))
fi
echo "group-versions with failures: $total_fail"
exit $(( total_fail > 0 ))
