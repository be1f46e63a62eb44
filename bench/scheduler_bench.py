#!/usr/bin/env python3
"""Scheduler benchmark: a release `rk3s server`, N simulated nodes (`rk3s sim-nodes`), M pods
with requests created by a few parallel HTTPS clients; prints how fast they are bound (pods/s
from the first create until the last pod has a nodeName, seen through a watch). Prints
figures; never fails.

Usage: bench/scheduler_bench.py [--binary target/release/rk3s] [--nodes 1000] [--pods 10000]
                                [--clients 4] [--deadline 600]
"""
import argparse, base64, http.client, json, multiprocessing as mp, os, re, shutil, signal, socket
import ssl, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, ctx, free_port, load_kubeconfig, rss_mb  # noqa: E402

# What one simulated node offers (`rk3s sim-nodes`): 4 CPUs, 16 GiB, 110 pods.
SIM_NODE_CPU_M, SIM_NODE_MEM_MI, SIM_NODE_PODS = 4000, 16384, 110
# What each benchmark pod requests.
POD_CPU_M, POD_MEM_MI = 100, 128


def request(conn, method, path, body=None):
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {"Content-Type": "application/json"} if body is not None else {})
    r = conn.getresponse(); data = r.read()
    return r.status, data


def creator(args):
    port, paths, ns, start, count = args
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
    failed = 0
    for i in range(start, start + count):
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"p-{i}", "labels": {"bench": "yes"}},
                "spec": {"terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": "busybox",
                                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}
        for _ in range(3):
            try:
                st, _ = request(conn, "POST", f"/api/v1/namespaces/{ns}/pods", body)
                if st == 201:
                    break
            except (OSError, http.client.HTTPException):
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        else:
            failed += 1
    return failed


def cordoner(args):
    """Sets spec.unschedulable on a slice of the simulated nodes."""
    port, paths, names, unschedulable = args
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
    body = json.dumps({"spec": {"unschedulable": unschedulable}})
    for n in names:
        conn.request("PATCH", f"/api/v1/nodes/{n}", body, {"Content-Type": "application/merge-patch+json"})
        r = conn.getresponse(); r.read()
    return len(names)


class BindWatcher(threading.Thread):
    """Counts pods of a namespace that have spec.nodeName, through a watch."""

    def __init__(self, port, paths, ns, rv, target):
        super().__init__(daemon=True)
        self.port, self.paths, self.ns, self.rv, self.target = port, paths, ns, rv, target
        self.bound = set(); self.first = None; self.done_at = None; self.error = None

    def run(self):
        while self.done_at is None:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx(self.paths), timeout=600)
                conn.request("GET", f"/api/v1/namespaces/{self.ns}/pods?watch=1&resourceVersion={self.rv}"
                                    f"&allowWatchBookmarks=true&timeoutSeconds=3600")
                r = conn.getresponse()
                while self.done_at is None:
                    line = r.readline()
                    if not line:
                        break
                    ev = json.loads(line)
                    obj = ev.get("object", {})
                    rv = obj.get("metadata", {}).get("resourceVersion")
                    if rv:
                        self.rv = rv
                    if ev.get("type") in ("ADDED", "MODIFIED") and obj.get("spec", {}).get("nodeName"):
                        name = obj["metadata"]["name"]
                        if name not in self.bound:
                            self.bound.add(name)
                            if self.first is None:
                                self.first = time.perf_counter()
                            if len(self.bound) >= self.target:
                                self.done_at = time.perf_counter()
            except Exception as e:  # keep watching; report at the end
                self.error = repr(e)
                time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/rk3s")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds to wait for all pods to be bound")
    ap.add_argument("--deployment-replicas", type=int, default=1000,
                    help="then time a Deployment of this many replicas until available (0: skip)")
    ap.add_argument("--pending-first", action="store_true",
                    help="measure the scheduler alone: create the pods while every node is cordoned, "
                         "then uncordon the nodes and time the binds (the create rate no longer caps it)")
    a = ap.parse_args()
    fit = a.nodes * min(SIM_NODE_CPU_M // POD_CPU_M, SIM_NODE_MEM_MI // POD_MEM_MI, SIM_NODE_PODS)
    if a.pods > fit:
        print(f"WARNING: {a.pods} pods of {POD_CPU_M}m/{POD_MEM_MI}Mi fit at most {fit} on {a.nodes} "
              f"simulated nodes: the rest stay Pending and the run waits for the deadline")
    tmp = tempfile.mkdtemp(prefix="rk3s-sched-bench-")
    port = free_port()
    kc = os.path.join(tmp, "kubeconfig")
    open(os.path.join(tmp, "config.yaml"), "w").write("{}\n")
    t0 = time.perf_counter()
    srv = subprocess.Popen([a.binary, "server", f"--config={tmp}/config.yaml", f"--data-dir={tmp}/data",
                            f"--https-listen-port={port}", "--bind-address=127.0.0.1",
                            "--advertise-address=127.0.0.1", f"--write-kubeconfig={kc}", "--disable-agent",
                            "--log-level=warn"], stderr=open(os.path.join(tmp, "server.log"), "w"))
    sim = None
    try:
        paths = None
        while time.perf_counter() - t0 < 60:
            if os.path.exists(kc):
                try:
                    paths = paths or load_kubeconfig(kc, tmp)
                    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
                    if request(c, "GET", "/readyz")[1] == b"ok":
                        break
                except (OSError, ssl.SSLError, http.client.HTTPException):
                    pass
            time.sleep(0.02)
        if paths is None:
            print("server did not start; see", os.path.join(tmp, "server.log")); return
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        t = time.perf_counter()
        sim = subprocess.Popen([a.binary, "sim-nodes", f"--kubeconfig={kc}", f"--count={a.nodes}",
                                "--lease-interval-ms=30000"], stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(tmp, "sim.log"), "w"))
        nodes = 0
        while time.perf_counter() - t < 300:
            st, body = request(c, "GET", "/api/v1/nodes")
            if st == 200:
                nodes = len(json.loads(body).get("items", []))
                if nodes >= a.nodes:
                    break
            time.sleep(0.5)
        reg = time.perf_counter() - t
        print(f"nodes registered:              {nodes} in {reg:.1f} s")
        ns = "bench"
        request(c, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        st, body = request(c, "GET", f"/api/v1/namespaces/{ns}/pods")
        rv = json.loads(body).get("metadata", {}).get("resourceVersion", "0") if st == 200 else "0"
        w = BindWatcher(port, paths, ns, rv, a.pods)
        w.start()
        per = a.pods // a.clients
        rest = a.pods - per * a.clients
        jobs = [(port, paths, ns, k * per, per + (rest if k == a.clients - 1 else 0)) for k in range(a.clients)]
        node_names = []
        if a.pending_first:
            st, body = request(c, "GET", "/api/v1/nodes")
            node_names = [n["metadata"]["name"] for n in json.loads(body).get("items", [])]
            with mp.Pool(a.clients) as pool:
                pool.map(cordoner, [(port, paths, node_names[k::a.clients], True) for k in range(a.clients)])
        t_create = time.perf_counter()
        with mp.Pool(a.clients) as pool:
            failed = sum(pool.map(creator, jobs))
        created_in = time.perf_counter() - t_create
        if a.pending_first:
            print(f"pods created (all nodes cordoned): {a.pods - failed} in {created_in:.1f} s; "
                  f"{len(w.bound)} bound meanwhile")
            t_release = time.perf_counter()
            with mp.Pool(a.clients) as pool:
                pool.map(cordoner, [(port, paths, node_names[k::a.clients], False) for k in range(a.clients)])
            uncordoned = time.perf_counter() - t_release
            w.join(timeout=a.deadline)
            if w.done_at is not None:
                took = w.done_at - t_release
                print(f"scheduler alone: {len(w.bound)} pods bound {took:.1f} s after the uncordon began "
                      f"({len(w.bound) / took:.0f} pods/s; uncordoning {len(node_names)} nodes took {uncordoned:.1f} s)")
            else:
                print(f"scheduler alone: NOT all bound: {len(w.bound)}/{a.pods} after {a.deadline:.0f} s")
        print(f"pods created ({a.clients} clients):      {a.pods - failed} in {created_in:.1f} s "
              f"({(a.pods - failed) / created_in:.0f} /s), {failed} failed")
        w.join(timeout=max(0.0, a.deadline - (time.perf_counter() - t_create)))
        now = time.perf_counter()
        n = len(w.bound)
        if w.done_at is not None:
            total = w.done_at - t_create
            print(f"all {n} pods bound after:      {total:.1f} s from the first create "
                  f"({n / total:.0f} pods/s scheduled end-to-end)")
            print(f"last bind after last create:   {max(0.0, w.done_at - t_create - created_in):.1f} s")
        else:
            total = now - t_create
            print(f"NOT all bound: {n}/{a.pods} pods bound after {total:.1f} s ({n / total:.0f} pods/s)"
                  + (f"; watch error {w.error}" if w.error else ""))
        print(f"server RSS:                    {rss_mb(srv.pid):.1f} MB")
        cpu_pods = cpu_seconds(srv.pid)
        print(f"server CPU so far:             {cpu_pods:.1f} s")
        if a.deployment_replicas > 0:
            dns = "deploy"
            request(c, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": dns}})
            dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "big"},
                   "spec": {"replicas": a.deployment_replicas, "selector": {"matchLabels": {"app": "big"}},
                            "template": {"metadata": {"labels": {"app": "big"}},
                                         "spec": {"containers": [{"name": "c", "image": "busybox",
                                                                  "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}}}}
            t_dep = time.perf_counter()
            request(c, "POST", f"/apis/apps/v1/namespaces/{dns}/deployments", dep)
            avail = 0
            next_progress = t_dep + 15
            while time.perf_counter() - t_dep < a.deadline:
                st, body = request(c, "GET", f"/apis/apps/v1/namespaces/{dns}/deployments/big")
                if st == 200:
                    status = json.loads(body).get("status", {})
                    avail = status.get("availableReplicas", 0) or 0
                    if avail >= a.deployment_replicas:
                        break
                    if time.perf_counter() >= next_progress:
                        next_progress += 15
                        print(f"  ... {time.perf_counter() - t_dep:.0f} s: replicas {status.get('replicas', 0)}, "
                              f"ready {status.get('readyReplicas', 0)}, available {avail}", flush=True)
                time.sleep(0.2)
            took = time.perf_counter() - t_dep
            if avail >= a.deployment_replicas:
                print(f"Deployment of {a.deployment_replicas} available after: {took:.1f} s")
            else:
                print(f"Deployment NOT available: {avail}/{a.deployment_replicas} after {took:.1f} s")
            print(f"server RSS after deployment:   {rss_mb(srv.pid):.1f} MB")
            cpu_dep = cpu_seconds(srv.pid)
            print(f"server CPU for the deployment: {cpu_dep - cpu_pods:.1f} s ({cpu_dep:.1f} s in all)")
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGKILL); sim.wait()
        srv.send_signal(signal.SIGKILL); srv.wait()
        if os.environ.get("RK3S_BENCH_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a benchmark prints, never fails
        print("benchmark error:", repr(e), file=sys.stderr)
