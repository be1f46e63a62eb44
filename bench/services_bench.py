#!/usr/bin/env python3
"""Service proxy and cluster DNS benchmark (root, real containerd, nftables).

Starts `rk3s server` with its node agent on a temporary data dir and prints:
  - for 1,000 / 5,000 / 10,000 Services of 10 endpoints each (Services and EndpointSlices
    created through the API, no pods; endpoint addresses are documentation addresses,
    never contacted): the time from an EndpointSlice change (PATCH acknowledged) to the
    proxy's nftables transaction committed (p50, p99), with that transaction's size and
    the proxy's own sync time for the single changed Service;
  - DNS queries per second and p50/p99 latency from inside a pod's network namespace
    to the cluster DNS address (crates/dns/examples/dns_bench.rs), next to the same
    client against the server directly from the host;
  - the proxy's in-memory renderer + real `nft` at the same sizes, in a network namespace
    of its own (crates/proxy/examples/sync_bench.rs).
Cleans up with `rk3s killall`. Prints figures; never fails on a slow machine.

Usage: bench/services_bench.py [--binary target/release/rk3s] [--sizes 1000,5000,10000]
                               [--changes 50] [--profile release]
"""
import argparse, http.client, json, os, re, shutil, subprocess, sys, tempfile, threading, time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ctx, free_port, pct, wait_ready  # noqa: E402
from pod_bench import build_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNC_RE = re.compile(r"^(\S+)Z .*proxy rules synced services=(\d+) changed=(\d+) bytes=(\d+) elapsed_ms=(\d+)")


def primary_ip():
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("10.255.255.255", 1))  # a route lookup; nothing is sent
    return s.getsockname()[0]


class Api:
    def __init__(self, port, paths):
        self.port, self.paths = port, paths
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx(self.paths))
        return c

    def req(self, method, path, body=None, ctype="application/json"):
        c = self.conn()
        c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": ctype} if body is not None else {})
        r = c.getresponse(); data = r.read()
        return r.status, data


def endpoints(i, gen=0):
    return [{"addresses": [f"198.18.{(i * 10 + j) // 250 % 250}.{(i * 10 + j) % 250 + 1}"],
             "conditions": {"ready": True}, **({"nodeName": "elsewhere"} if gen else {})} for j in range(10)]


def create_services(api, start, count, threads=8):
    def work(lo, hi):
        for i in range(lo, hi):
            name = f"b-{i}"
            st, data = api.req("POST", "/api/v1/namespaces/default/services",
                               {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                                "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
            if st not in (201, 409):
                print(f"  service {name}: {st} {data[:200]!r}"); return
            st, data = api.req("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                               {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                "metadata": {"name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
                                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                                "endpoints": endpoints(i)})
            if st not in (201, 409):
                print(f"  slice {name}: {st} {data[:200]!r}"); return
    per = (count + threads - 1) // threads
    ts = [threading.Thread(target=work, args=(start + k * per, min(start + count, start + (k + 1) * per))) for k in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()


def sync_lines(log):
    out = []
    for line in open(log, errors="replace"):
        m = SYNC_RE.match(line)
        if m:
            ts = datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()
            out.append((ts, int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5))))
    return out


def wait_synced(log, services, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        ls = sync_lines(log)
        if ls and ls[-1][1] >= services:
            return
        time.sleep(0.2)
    print(f"  proxy did not reach {services} services in {timeout} s")


def measure_changes(api, log, n_services, changes):
    lat, sizes, own = [], [], []
    for k in range(changes):
        i = (k * 7919) % n_services
        before = len(sync_lines(log))
        patch = {"endpoints": [{"addresses": [f"198.19.{k // 250 % 250}.{k % 250 + 1}"], "conditions": {"ready": True}}] + endpoints(i)[1:]}
        st, data = api.req("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/b-{i}-x", patch,
                           "application/merge-patch+json")
        t = time.time()
        if st != 200:
            print(f"  patch b-{i}-x: {st} {data[:200]!r}"); continue
        deadline = t + 30
        while time.time() < deadline:
            ls = sync_lines(log)[before:]
            done = [l for l in ls if l[2] > 0]
            if done:
                lat.append(max(0.0, done[0][0] - t)); sizes.append(done[0][3]); own.append(done[0][4]); break
            time.sleep(0.002)
    return lat, sizes, own


def run_example(pkg, example, args, profile):
    cmd = ["cargo", "run", "-q", f"--profile={profile}", "-p", pkg, "--example", example, "--"] + args
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def pod_netns(pod_ip):
    for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n"):
        ns = ns.split(" ")[0]
        if not ns:
            continue
        out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        if f" {pod_ip}/" in out:
            return ns
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/rk3s")
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--profile", default="release", help="cargo profile for the example programs")
    ap.add_argument("--skip-examples", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("services_bench needs root (real containers, nftables)")
    binary = os.path.abspath(a.binary)
    sizes = [int(s) for s in a.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="rk3s-svcbench-")
    data, state = os.path.join(tmp, "data"), os.path.join(tmp, "containerd")
    build_image(binary, tmp, os.path.join(data, "agent/images/busybox.tar"))
    port, kc, log = free_port(), os.path.join(tmp, "kubeconfig"), os.path.join(tmp, "log")
    open(os.path.join(tmp, "config.yaml"), "w").write("{}\n")
    node_ip = primary_ip()
    t0 = time.perf_counter()
    srv = subprocess.Popen([binary, "server", f"--config={tmp}/config.yaml", f"--data-dir={data}",
                            f"--https-listen-port={port}", "--bind-address=0.0.0.0", f"--advertise-address={node_ip}",
                            f"--write-kubeconfig={kc}", f"--containerd-state-dir={state}", "--log-level=info"],
                           stderr=open(log, "w"))
    try:
        paths, api_ready = wait_ready(port, kc, tmp, t0)
        api = Api(port, paths)
        print(f"API ready after {api_ready:.2f} s")
        # DNS from a pod.
        while api.req("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] != 200:
            time.sleep(0.05)
        api.req("POST", "/api/v1/namespaces/default/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dnsclient"},
                "spec": {"containers": [{"name": "c", "image": "rk3s.bench/busybox:1", "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}})
        pod_ip = None
        for _ in range(600):
            st, d = api.req("GET", "/api/v1/namespaces/default/pods/dnsclient")
            p = json.loads(d)
            if p.get("status", {}).get("phase") == "Running":
                pod_ip = p["status"].get("podIP"); break
            time.sleep(0.1)
        if not a.skip_examples:
            ns = pod_netns(pod_ip) if pod_ip else None
            subprocess.run(["cargo", "build", "-q", f"--profile={a.profile}", "-p", "rk3s-dns", "--example", "dns_bench"], cwd=REPO)
            tgt = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
            dns_bin = os.path.join(tgt, "release" if a.profile == "release" else a.profile, "examples", "dns_bench")
            if ns and os.path.exists(dns_bin):
                name = "kubernetes.default.svc.cluster.local"
                pod = subprocess.run(["ip", "netns", "exec", ns, dns_bin, "--server", "10.43.0.10:53", "--seconds", "5", "--clients", "8", "--name", name], capture_output=True, text=True)
                host = subprocess.run([dns_bin, "--server", f"{node_ip}:53", "--seconds", "5", "--clients", "8", "--name", name], capture_output=True, text=True)
                print(f"DNS from a pod (via the ClusterIP 10.43.0.10): {(pod.stdout + pod.stderr).strip()}")
                print(f"DNS from the host (the node IP, no proxy):    {(host.stdout + host.stderr).strip()}")
            else:
                print(f"DNS from a pod: skipped (pod netns {ns}, {dns_bin} exists: {os.path.exists(dns_bin)})")
        made = 0
        for n in sizes:
            t = time.perf_counter()
            create_services(api, made, n - made)
            made = n
            wait_synced(log, n)
            print(f"{n} Services x 10 endpoints created and synced in {time.perf_counter() - t:.1f} s")
            lat, size, own = measure_changes(api, log, n, a.changes)
            if lat:
                print(f"  EndpointSlice change -> rules in place: p50 {pct(lat, .5) * 1000:.1f} ms, p99 {pct(lat, .99) * 1000:.1f} ms "
                      f"({len(lat)} changes); proxy sync p50 {pct(own, .5)} ms p99 {pct(own, .99)} ms; "
                      f"transaction {pct(size, .5)} bytes (p50)")
        st = sync_lines(log)
        full = [l for l in st if l[2] >= sizes[-1] // 2]
        if full:
            print(f"  largest transaction seen: {max(l[3] for l in full)} bytes in {max(l[4] for l in full)} ms")
    finally:
        subprocess.run([binary, "killall", f"--data-dir={data}", f"--containerd-state-dir={state}"], capture_output=True)
        srv.kill(); srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if not a.skip_examples:
        print("in-memory renderer + real nft in a netns (crates/proxy/examples/sync_bench.rs):")
        print(run_example("rk3s-proxy", "sync_bench", ["--services", a.sizes, "--endpoints", "10"], a.profile))


if __name__ == "__main__":
    main()
