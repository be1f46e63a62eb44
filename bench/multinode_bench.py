#!/usr/bin/env python3
"""Multi-node benchmark (root, real containerd, network namespaces, VXLAN).

Builds three "machines" on this host, each a network namespace with a veth into a bridge
that lives in a namespace of its own (198.18.0.0/24, a benchmarking range; nothing leaves
the namespaces), starts `rk3s server` in the first and `rk3s agent` in the others, and
prints, side by side in one run:
  - the time from `rk3s agent` start to its Node Ready (each agent, from a fresh data dir);
  - TCP throughput (iperf3, 5 s) and round-trip latency (ping, 200 x 5 ms) of
      host -> host over the same veth/bridge (the baseline),
      pod -> pod on one node (the cni0 bridge),
      pod -> pod across nodes (flannel VXLAN over the same veth),
    with the ratios to the baseline.
Installs iperf3 and iputils-ping from Debian's packages when missing. Cleans up: processes, mounts,
namespaces. Prints figures; never fails on a slow machine.

Usage: bench/multinode_bench.py [--binary target/release/rk3s] [--backend vxlan|host-gw]
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pod_bench import build_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "198.18.0"
IMAGE = "rk3s.bench/busybox:1"


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True).stdout


class Cluster:
    def __init__(self, binary, tmp, backend):
        self.binary, self.tmp, self.backend = binary, tmp, backend
        self.prefix = f"rk3sbench{os.getpid() % 10000}"
        self.nodes = []  # (name, netns, ip, dir)
        self.procs = {}
        self.kubeconfig = os.path.join(tmp, "kubeconfig.yaml")

    def network(self, names):
        br = f"{self.prefix}-br"
        sh(f"ip netns add {br} && ip -n {br} link set lo up && ip -n {br} link add br0 type bridge && "
           f"ip -n {br} addr add {SUBNET}.254/24 dev br0 && ip -n {br} link set br0 up")
        for i, name in enumerate(names):
            ns, ip = f"{self.prefix}-{i}", f"{SUBNET}.{i + 1}"
            sh(f"ip netns add {ns} && ip -n {ns} link set lo up && "
               f"ip link add v{i} netns {br} type veth peer name eth0 netns {ns} && "
               f"ip -n {br} link set v{i} master br0 up && ip -n {ns} addr add {ip}/24 dev eth0 && "
               f"ip -n {ns} link set eth0 up && ip -n {ns} route add default via {SUBNET}.254")
            d = os.path.join(self.tmp, name)
            os.makedirs(d)
            open(os.path.join(d, "none.yaml"), "w").write("{}\n")
            build_image(self.binary, d, os.path.join(d, "data/agent/images/busybox.tar"))
            self.nodes.append((name, ns, ip, d))

    def spawn(self, i, args):
        name, ns, ip, d = self.nodes[i]
        log = open(os.path.join(d, "rk3s.log"), "ab")
        self.procs[i] = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", self.binary] + args,
                                         stdout=subprocess.DEVNULL, stderr=log)

    def common(self, i):
        name, ns, ip, d = self.nodes[i]
        return [f"--config={d}/none.yaml", f"--data-dir={d}/data", f"--node-ip={ip}", f"--node-name={name}",
                f"--containerd-state-dir={d}/run-containerd"]

    def kubectl(self, *args, check=True):
        kubectl = shutil.which("kubectl") or "/usr/local/lib/rk3s/bin/kubectl"
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.nodes[0][1]}", kubectl,
                            f"--kubeconfig={self.kubeconfig}"] + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {args}: {r.stderr}")
        return r.stdout

    def ready(self, name):
        out = self.kubectl("get", "node", name, "-o",
                           'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False)
        return out.strip() == "True"

    def teardown(self):
        self.kubectl("delete", "pods", "--all", "--grace-period=1", "--timeout=30s", check=False)
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for name, ns, ip, d in self.nodes:
            state = os.path.join(d, "run-containerd")
            sh(f"pkill -KILL -f 'containerd-shim.*-address {state}/containerd.sock'", check=False)
            try:
                pid = open(os.path.join(state, "containerd.pid")).read().strip()
                sh(f"kill -KILL {pid}", check=False)
            except OSError:
                pass
        time.sleep(0.5)
        for name, ns, ip, d in self.nodes:
            for m in reversed(open("/proc/self/mounts").read().splitlines()):
                mp = m.split()[1]
                if mp.startswith(d):
                    sh(f"umount -l {mp}", check=False)
            sh(f"ip netns del {ns}", check=False)
        sh(f"ip netns del {self.prefix}-br", check=False)


def pod_netns(ip):
    """The sandbox namespace (/run/netns/cni-*) holding pod IP `ip`."""
    for n in os.listdir("/run/netns"):
        if n.startswith("cni-") and re.search(rf"inet {re.escape(ip)}/", sh(f"ip -n {n} -4 addr", check=False)):
            return n
    raise RuntimeError(f"no sandbox namespace holds {ip}")


def measure(server_ns, client_ns, server_ip):
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = sh(f"ip netns exec {client_ns} iperf3 -c {server_ip} -t 5 -J", check=False)
    srv.wait(15)
    try:
        gbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        gbps = float("nan")
    ping = sh(f"ip netns exec {client_ns} ping -q -c 200 -i 0.005 {server_ip}", check=False)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", ping)
    rtt = float(m.group(2)) * 1000 if m else float("nan")
    return gbps, rtt


def main():
    ap = argparse.ArgumentParser()
    default = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release/rk3s")
    ap.add_argument("--binary", default=default)
    ap.add_argument("--backend", default="vxlan", choices=["vxlan", "host-gw"])
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    for tool, pkg in (("iperf3", "iperf3"), ("ping", "iputils-ping")):
        if not shutil.which(tool):
            sh(f"apt-get install -y -q {pkg} >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q {pkg})")
    tmp = tempfile.mkdtemp(prefix="rk3s-multinode-bench-")
    c = Cluster(os.path.abspath(a.binary), tmp, a.backend)
    try:
        c.network(["server", "agent-1", "agent-2"])
        c.spawn(0, ["server"] + c.common(0) + ["--bind-address=0.0.0.0", f"--advertise-address={SUBNET}.1",
                                              f"--write-kubeconfig={c.kubeconfig}", f"--flannel-backend={a.backend}"])
        token_file = os.path.join(c.nodes[0][3], "data/server/token")
        t0 = time.time()
        while not (os.path.exists(token_file) and c.ready("server")):
            if time.time() - t0 > 120:
                raise RuntimeError("server not Ready")
            time.sleep(0.1)
        token = open(token_file).read().strip()
        join = {}
        for i in (1, 2):
            name = c.nodes[i][0]
            t = time.perf_counter()
            c.spawn(i, ["agent", f"--server=https://{SUBNET}.1:6443", f"--token={token}"] + c.common(i))
            while not c.ready(name):
                if time.perf_counter() - t > 120:
                    raise RuntimeError(f"{name} not Ready")
                time.sleep(0.05)
            join[name] = time.perf_counter() - t
        pods = {"a": "agent-1", "b": "agent-1", "c": "agent-2"}
        for p, node in pods.items():
            c.kubectl("run", f"bench-{p}", f"--image={IMAGE}", "--image-pull-policy=Never", "--restart=Never",
                      f"--overrides={json.dumps({'spec': {'nodeName': node}})}", "--", "sleep", "3600")
        ips = {}
        t = time.time()
        while len(ips) < 3:
            if time.time() - t > 120:
                raise RuntimeError("bench pods not Running")
            for p in pods:
                out = c.kubectl("get", "pod", f"bench-{p}", "-o", "jsonpath={.status.phase} {.status.podIP}",
                                check=False).split()
                if len(out) == 2 and out[0] == "Running":
                    ips[p] = out[1]
            time.sleep(0.2)
        ns = {p: pod_netns(ip) for p, ip in ips.items()}
        host = measure(c.nodes[2][1], c.nodes[1][1], f"{SUBNET}.3")
        same = measure(ns["b"], ns["a"], ips["b"])
        cross = measure(ns["c"], ns["a"], ips["c"])
        print(f"rk3s multi-node bench ({a.backend}, binary {a.binary})")
        for name, s in join.items():
            print(f"  rk3s agent start -> Node {name} Ready: {s:.2f} s")
        print(f"  {'path':<40} {'TCP Gbit/s':>11} {'ratio':>6} {'RTT us':>8} {'ratio':>6}")
        for label, (g, r) in [("host -> host (veth + bridge, baseline)", host),
                              ("pod -> pod, one node (cni0)", same),
                              (f"pod -> pod, across nodes ({a.backend})", cross)]:
            print(f"  {label:<40} {g:>11.2f} {g / host[0]:>6.2f} {r:>8.0f} {r / host[1]:>6.2f}")
    finally:
        c.teardown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
