#!/usr/bin/env python3
"""Built-in add-ons benchmark (root, real containerd): start-up, idle memory and ingress.

Everything runs in a network namespace of its own (`eth0` with 198.18.0.1/24, a
benchmarking range, whose veth peer stays unaddressed in the namespace, and a default route
that leads nowhere): the node IP, its cni0 bridge,
nftables tables and pods live there and no packet leaves it. Prints, side by side:
  (a) start -> each part serving, p50 / p90 of --starts starts (each on a fresh data dir),
      for `rk3s server` with every add-on, the same binary with
      `--disable traefik,local-storage,metrics-server`, and the --baseline binary:
      API ready (/readyz), node Ready, DNS answering on the node IP, ingress answering 404
      on :80, StorageClass local-path present, metrics.k8s.io/v1beta1 discovery listed
      (what `kubectl top nodes` asks first), and all of them;
  (b) idle RSS (rk3s, its containerd) 30 s after everything serves, with and without;
  (c) ingress requests/s and latency (wrk, --duration s, --connections) for a small
      response: a busybox httpd pod behind a Service and an Ingress, through node_ip:80
      with the Host header vs directly at the pod IP, and the ratio.
The runs alternate between the variants. Cleans up after every run with `rk3s killall`,
then removes the namespace. Installs wrk (Debian) when missing. Prints figures; never
fails on a number.

Usage: bench/addons_bench.py [--binary target/release/rk3s] [--baseline BINARY] [--starts 10]
       [--duration 10] [--connections 16] [--skip-starts] [--skip-ingress]
"""
import argparse, http.client, json, os, random, shutil, signal, socket, struct, subprocess, sys
import tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import build_busybox_image, ctx, enter_netns, pct, rss_mb, wait_ready  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_IP = "198.18.0.1"
PORT = 6443
IMAGE = "rk3s.bench/busybox:addons"
DISABLE = "traefik,local-storage,metrics-server"
PARTS = ["api", "node", "dns", "ingress", "storage", "metrics"]
LABELS = {"api": "API ready (/readyz)", "node": "node Ready", "dns": "DNS answers on node IP",
          "ingress": "ingress 404 on :80", "storage": "StorageClass local-path",
          "metrics": "metrics.k8s.io discovery", "all": "all of the above serving"}


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True).stdout


def other_nodes():
    """`rk3s server`/`rk3s agent` processes running a node agent, and rk3s containerds."""
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit() or int(e) == os.getpid():
            continue
        try:
            args = open(f"/proc/{e}/cmdline", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        base = os.path.basename(args[0]) if args else ""
        if base.startswith("rk3s") and len(args) > 1 and (
                (args[1] == "server" and "--disable-agent" not in args) or args[1] == "agent"):
            out.append(f"{e} {' '.join(args[:4])}")
        if base == "containerd" and any(a.endswith("agent/etc/containerd/config.toml") for a in args):
            out.append(f"{e} {' '.join(args[:3])}")
    return out


def dns_answers(server, name):
    """True when `server`:53 answers an A query for `name` with NOERROR and an answer."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        s.sendto(q, (server, 53))
        data = s.recv(1500)
        rid, flags, _, an = struct.unpack(">HHHH", data[:8])
        return rid == qid and flags & 0xF == 0 and an > 0
    except OSError:
        return False
    finally:
        s.close()


def http_status(host, port, path, host_header, timeout=0.5):
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", path, headers={"Host": host_header})
        r = c.getresponse(); body = r.read(); c.close()
        return r.status, body
    except (OSError, http.client.HTTPException):
        return None, b""


class Node:
    """One `rk3s server` with its node agent on a fresh data dir inside the namespace."""

    def __init__(self, binary, extra, image=False):
        self.binary = binary
        self.tmp = tempfile.mkdtemp(prefix="rk3s-addons-bench-")
        self.data = os.path.join(self.tmp, "data")
        self.state = os.path.join(self.tmp, "containerd")
        self.kc = os.path.join(self.tmp, "kubeconfig")
        self.log = os.path.join(self.tmp, "log")
        if image:
            build_busybox_image(binary, self.tmp, os.path.join(self.data, "agent/images/busybox.tar"), IMAGE)
        open(os.path.join(self.tmp, "config.yaml"), "w").write("{}\n")
        self.args = [binary, "server", f"--config={self.tmp}/config.yaml", f"--data-dir={self.data}",
                     f"--https-listen-port={PORT}", "--bind-address=0.0.0.0", f"--advertise-address={NODE_IP}",
                     f"--node-ip={NODE_IP}", "--node-name=bench", f"--write-kubeconfig={self.kc}",
                     f"--containerd-state-dir={self.state}", "--log-level=warn"] + extra
        self.proc, self.paths = None, None

    def start(self):
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))

    def get(self, path, conn=None):
        c = conn or http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx(self.paths), timeout=5)
        c.request("GET", path); r = c.getresponse(); body = r.read()
        return r.status, body

    def send(self, method, path, obj):
        c = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx(self.paths), timeout=10)
        c.request(method, path, json.dumps(obj), {"Content-Type": "application/json"})
        r = c.getresponse(); body = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {body[:300]!r}")
        return json.loads(body)

    def wait_serving(self, parts, timeout=120):
        """Seconds from start until each part serves (None: not within timeout)."""
        try:
            self.paths, api = wait_ready(PORT, self.kc, self.tmp, self.t0, timeout=timeout)
        except SystemExit:
            return {}
        got = {"api": api}
        conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx(self.paths), timeout=5)
        checks = {
            "node": lambda: any(cond["type"] == "Ready" and cond["status"] == "True"
                                for n in json.loads(self.get("/api/v1/nodes", conn)[1]).get("items", [])
                                for cond in n.get("status", {}).get("conditions", [])),
            "dns": lambda: dns_answers(NODE_IP, "kubernetes.default.svc.cluster.local"),
            "ingress": lambda: http_status(NODE_IP, 80, "/", "no-such-host.bench")[0] == 404,
            "storage": lambda: self.get("/apis/storage.k8s.io/v1/storageclasses/local-path", conn)[0] == 200,
            "metrics": lambda: b'"nodes"' in self.get("/apis/metrics.k8s.io/v1beta1", conn)[1],
        }
        while time.perf_counter() - self.t0 < timeout:
            for p in parts:
                if p in got:
                    continue
                try:
                    ok = checks[p]()
                except (OSError, ValueError, http.client.HTTPException):
                    conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx(self.paths), timeout=5)
                    ok = False
                if ok:
                    got[p] = time.perf_counter() - self.t0
            if all(p in got for p in parts):
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        if all(p in got for p in parts):
            got["all"] = max(got[p] for p in parts)
        return got

    def rss(self):
        """(rk3s MB, containerd MB)."""
        try:
            cd = int(open(os.path.join(self.state, "containerd.pid")).read().strip())
        except (OSError, ValueError):
            cd = -1
        return rss_mb(self.proc.pid), rss_mb(cd)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL); self.proc.wait()
        subprocess.run([self.binary, "killall", f"--data-dir={self.data}", f"--containerd-state-dir={self.state}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wrk(url, host, duration, connections):
    """(requests/s, p50 ms, p99 ms, non-2xx, errors line) from one wrk run."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout

    def ms(label):
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == label:
                v = parts[1]
                for unit, k in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
                    if v.endswith(unit):
                        return float(v[:-len(unit)]) * k
        return float("nan")
    rps = next((float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec:")), float("nan"))
    non2xx = next((int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l), 0)
    errors = next((l.strip() for l in out.splitlines() if "Socket errors" in l), "")
    return rps, ms("50%"), ms("99%"), non2xx, errors


def ingress_bench(binary, a):
    n = Node(binary, [], image=True)
    try:
        n.start()
        got = n.wait_serving(["node", "ingress"])
        if "all" not in got:
            print(f"  (ingress: the node did not serve: {got}; log {n.log})"); return
        while n.get("/api/v1/namespaces/default/serviceaccounts/default")[0] != 200:
            time.sleep(0.1)
        ns = "/api/v1/namespaces/default"
        n.send("POST", f"{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                "name": "httpd", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
                "ports": [{"containerPort": 8080}]}]}})
        n.send("POST", f"{ns}/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
        n.send("POST", "/apis/networking.k8s.io/v1/namespaces/default/ingresses", {
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "bench.example", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
        pod_ip, t = None, time.time()
        while time.time() - t < 120:
            pod = json.loads(n.get(f"{ns}/pods/web")[1])
            if pod.get("status", {}).get("phase") == "Running" and pod["status"].get("podIP"):
                pod_ip = pod["status"]["podIP"]
                if (http_status(pod_ip, 8080, "/index.html", "x")[0] == 200
                        and http_status(NODE_IP, 80, "/index.html", "bench.example")[0] == 200):
                    break
            time.sleep(0.2)
        else:
            print(f"  (ingress: the web pod or its route did not answer within 120 s; log {n.log})"); return
        via = f"http://{NODE_IP}:80/index.html"
        direct = f"http://{pod_ip}:8080/index.html"
        wrk(via, "bench.example", 2, a.connections); wrk(direct, None, 2, a.connections)  # warm-up
        rows = [("through the ingress (node_ip:80, Host)", wrk(via, "bench.example", a.duration, a.connections)),
                ("directly at the pod IP", wrk(direct, None, a.duration, a.connections))]
        ing, dir_ = rows[0][1], rows[1][1]
        print(f"(c) ingress, busybox httpd, 3-byte body, wrk -t2 -c{a.connections} -d{a.duration}s:")
        print(f"  {'path':<42} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for label, (rps, p50, p99, bad, err) in rows:
            print(f"  {label:<42} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {bad:>8}" + (f"  ({err})" if err else ""))
        print(f"  {'ratio ingress / direct':<42} {ing[0] / dir_[0]:>9.2f} {ing[1] / dir_[1]:>8.2f} "
              f"{ing[2] / dir_[2]:>8.2f}")
        print(f"  rk3s RSS after the load: {n.rss()[0]:.1f} MB")
    finally:
        n.stop()


def fmt(xs):
    if not xs:
        return "-"
    return f"{pct(xs, .5)*1000:.0f} / {pct(xs, .9)*1000:.0f} ms"


def main():
    ap = argparse.ArgumentParser()
    default = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release/rk3s")
    ap.add_argument("--binary", default=default)
    ap.add_argument("--baseline", help="an older rk3s binary (no add-ons): its figures are printed beside")
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--skip-starts", action="store_true")
    ap.add_argument("--skip-ingress", action="store_true")
    ap.add_argument("--ignore-other-nodes", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("addons_bench needs root (real containers, a network namespace)")
    others = other_nodes()
    if others and not a.ignore_other_nodes:
        sys.exit("another rk3s node runs on this machine (its load would skew the figures):\n  "
                 + "\n  ".join(others))
    if not shutil.which("wrk") and not a.skip_ingress:
        sh("apt-get install -y -q wrk >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q wrk)", check=False)
    binary = os.path.abspath(a.binary)
    variants = [("all add-ons", binary, [], PARTS),
                ("--disable " + DISABLE.split(",")[0] + ",...", binary, [f"--disable={DISABLE}"],
                 ["api", "node", "dns"])]
    if a.baseline:
        variants.append(("baseline", os.path.abspath(a.baseline), [], ["api", "node", "dns"]))
    netns = f"rk3sbench-addons-{os.getpid()}"
    try:
        # eth0's peer stays in the namespace, unaddressed: the default route leads nowhere.
        sh(f"ip netns add {netns} && ip -n {netns} link set lo up && "
           f"ip -n {netns} link add eth0 type veth peer name eth0-peer && "
           f"ip -n {netns} addr add {NODE_IP}/24 dev eth0 && ip -n {netns} link set eth0-peer up && "
           f"ip -n {netns} link set eth0 up && ip -n {netns} route add default via 198.18.0.254")
        enter_netns(netns)
        print(f"rk3s add-ons bench: binary {binary}" + (f", baseline {a.baseline}" if a.baseline else ""), flush=True)
        if not a.skip_starts:
            times = {v[0]: {} for v in variants}
            rss = {}
            failed = {v[0]: 0 for v in variants}
            for i in range(a.starts):
                for label, b, extra, parts in variants:
                    n = Node(b, extra)
                    try:
                        n.start()
                        got = n.wait_serving(parts)
                        if "all" not in got:
                            failed[label] += 1
                            print(f"  ({label}, start {i + 1}: not all serving within 120 s: {sorted(got)}; "
                                  f"{open(n.log).read()[-400:]})", flush=True)
                        for k, v in got.items():
                            times[label].setdefault(k, []).append(v)
                        if i == 0 and "all" in got:
                            time.sleep(30.0)
                            rss[label] = n.rss()
                    finally:
                        n.stop()
            width = 22
            print(f"(a) start -> serving, p50 / p90 of {a.starts} starts (fresh data dir each):")
            print(f"  {'':<28}" + "".join(f"{v[0]:>{width}}" for v in variants))
            for k in PARTS + ["all"]:
                print(f"  {LABELS[k]:<28}" + "".join(f"{fmt(times[v[0]].get(k, [])):>{width}}" for v in variants))
            if any(failed.values()):
                print("  starts not serving within 120 s: " + ", ".join(f"{k} {v}" for k, v in failed.items()))
            print("(b) idle RSS 30 s after serving (first start):")
            for label in (v[0] for v in variants):
                if label in rss:
                    r, c = rss[label]
                    print(f"  {label:<28} rk3s {r:6.1f} MB + containerd {c:5.1f} MB = {r + c:6.1f} MB")
        if not a.skip_ingress:
            ingress_bench(binary, a)
    finally:
        # Leaving the namespace is not needed: deleting its name is enough once every
        # process in it is gone (the Nodes were stopped above).
        subprocess.run(["ip", "netns", "del", netns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
