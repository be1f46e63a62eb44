#!/usr/bin/env python3
"""Scheduler benchmark: a release `rk3s server`, N simulated nodes (`rk3s sim-nodes`), M pods
with requests created by bench/loadgen (rk3s-loadgen, --concurrency in flight; Python
clients when it cannot be built); prints the rate the client achieved (creates/s, with its
own CPU per create) next to how fast the server binds them (pods/s from the first create
until the last pod has a nodeName, seen through a watch), then times a Deployment. With
--baseline BINARY the same workload runs on that binary too (after, on a fresh data dir) and
each figure prints as `current | baseline | ratio`. Prints figures; never fails.

Usage: bench/scheduler_bench.py [--binary target/release/rk3s] [--baseline BINARY] [--nodes 1000]
                                [--pods 10000] [--concurrency 64] [--loadgen PATH] [--deadline 600]
"""
import argparse, http.client, json, multiprocessing as mp, os, shutil, signal
import subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Figures, add_binary_args, client_figures, cpu_seconds, ctx, load, loadgen, print_figures,  # noqa: E402
                      rss_mb, start_server, wait_ready)

# What one simulated node offers (`rk3s sim-nodes`): 4 CPUs, 16 GiB, 110 pods.
SIM_NODE_CPU_M, SIM_NODE_MEM_MI, SIM_NODE_PODS = 4000, 16384, 110
# What each benchmark pod requests.
POD_CPU_M, POD_MEM_MI = 100, 128


def request(conn, method, path, body=None):
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {"Content-Type": "application/json"} if body is not None else {})
    r = conn.getresponse(); data = r.read()
    return r.status, data


def pod_template():
    """The benchmark pod; `{i}` in its name is the load generator's index."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p-{i}", "labels": {"bench": "yes"}},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"requests": {"cpu": f"{POD_CPU_M}m",
                                                                "memory": f"{POD_MEM_MI}Mi"}}}]}}


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


def measure(binary, label, a, lg):
    """Runs the whole workload on a fresh server of `binary`; returns its Figures."""
    fig = Figures(label)
    tmp = tempfile.mkdtemp(prefix="rk3s-sched-bench-")
    t0 = time.perf_counter()
    srv, port, kc = start_server(binary, tmp)
    sim = None
    try:
        paths, _ = wait_ready(port, kc, tmp, t0, timeout=60)
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        t = time.perf_counter()
        sim = subprocess.Popen([binary, "sim-nodes", f"--kubeconfig={kc}", f"--count={a.nodes}",
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
        fig.add("nodes registered", nodes)
        fig.add("nodes registered in", time.perf_counter() - t, "s", "{:.1f}")
        ns = "bench"
        request(c, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        st, body = request(c, "GET", f"/api/v1/namespaces/{ns}/pods")
        rv = json.loads(body).get("metadata", {}).get("resourceVersion", "0") if st == 200 else "0"
        w = BindWatcher(port, paths, ns, rv, a.pods)
        w.start()
        node_names = []
        if a.pending_first:
            st, body = request(c, "GET", "/api/v1/nodes")
            node_names = [n["metadata"]["name"] for n in json.loads(body).get("items", [])]
            with mp.Pool(a.clients) as pool:
                pool.map(cordoner, [(port, paths, node_names[k::a.clients], True) for k in range(a.clients)])
        cpu0 = cpu_seconds(srv.pid)
        t_create = time.perf_counter()
        rep = load(lg, kc, paths, port, f"/api/v1/namespaces/{ns}/pods", a.pods, a.concurrency,
                   template=pod_template(), py_clients=a.clients, http2=a.http2)
        created_in = time.perf_counter() - t_create
        server_cpu = cpu_seconds(srv.pid) - cpu0
        client_figures(fig, "pod creates", rep, server_cpu if a.pending_first else None)
        if not a.pending_first:
            fig.add("server CPU per pod during the creates (incl. binds)", server_cpu / max(1, a.pods) * 1e6, "us")
        if a.pending_first:
            fig.add("pods bound while all nodes cordoned", len(w.bound))
            t_release = time.perf_counter()
            with mp.Pool(a.clients) as pool:
                pool.map(cordoner, [(port, paths, node_names[k::a.clients], False) for k in range(a.clients)])
            fig.add(f"uncordoning {len(node_names)} nodes took", time.perf_counter() - t_release, "s", "{:.1f}")
            w.join(timeout=a.deadline)
            if w.done_at is not None:
                fig.add("scheduler alone: pods bound /s after the uncordon",
                        len(w.bound) / max(1e-9, w.done_at - t_release), "/s")
            else:
                fig.note(f"scheduler alone: NOT all bound: {len(w.bound)}/{a.pods} after {a.deadline:.0f} s")
        w.join(timeout=max(0.0, a.deadline - (time.perf_counter() - t_create)))
        n = len(w.bound)
        fig.add("pods bound", n)
        if w.done_at is not None:
            total = w.done_at - t_create
            fig.add("all pods bound after the first create", total, "s", "{:.1f}")
            fig.add("pods scheduled end-to-end /s (server)", n / total, "/s")
            fig.add("last bind after the last create", max(0.0, total - created_in), "s", "{:.1f}")
        else:
            total = time.perf_counter() - t_create
            fig.add("pods scheduled end-to-end /s (server)", n / total, "/s")
            fig.note(f"NOT all bound: {n}/{a.pods} pods bound after {total:.1f} s"
                     + (f"; watch error {w.error}" if w.error else ""))
        fig.add("server RSS", rss_mb(srv.pid), "MB", "{:.1f}")
        cpu_pods = cpu_seconds(srv.pid)
        fig.add("server CPU so far", cpu_pods, "s", "{:.1f}")
        if a.deployment_replicas > 0:
            deployment(fig, c, srv, a, label, cpu_pods)
    except (OSError, ValueError, http.client.HTTPException, SystemExit) as e:
        fig.note(f"run stopped early: {e!r}")
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGKILL); sim.wait()
        if srv.poll() is not None:
            fig.note(f"rk3s exited with {srv.returncode}")
        srv.send_signal(signal.SIGKILL); srv.wait()
        if os.environ.get("RK3S_BENCH_KEEP"):
            fig.note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return fig


def deployment(fig, c, srv, a, label, cpu_pods):
    """Times a Deployment of --deployment-replicas until all are available."""
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
                print(f"  ({label}) {time.perf_counter() - t_dep:.0f} s: replicas {status.get('replicas', 0)}, "
                      f"ready {status.get('readyReplicas', 0)}, available {avail}", flush=True)
        time.sleep(0.2)
    took = time.perf_counter() - t_dep
    if avail >= a.deployment_replicas:
        fig.add(f"Deployment of {a.deployment_replicas} available after", took, "s", "{:.1f}")
    else:
        fig.add(f"Deployment of {a.deployment_replicas} available after", None)
        fig.note(f"Deployment NOT available: {avail}/{a.deployment_replicas} after {took:.1f} s")
    fig.add("server RSS after the Deployment", rss_mb(srv.pid), "MB", "{:.1f}")
    fig.add("server CPU for the Deployment", cpu_seconds(srv.pid) - cpu_pods, "s", "{:.1f}")


def main():
    ap = argparse.ArgumentParser()
    add_binary_args(ap)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64, help="pod creates in flight (rk3s-loadgen)")
    ap.add_argument("--clients", type=int, default=4,
                    help="Python processes for the cordons, and for the creates without rk3s-loadgen")
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
    lg = None if a.python_clients else loadgen(a.loadgen)
    print(f"rk3s scheduler bench: {a.nodes} simulated nodes, {a.pods} pods, client {lg or 'python'}", flush=True)
    cur = measure(os.path.abspath(a.binary), "current", a, lg)
    base = measure(os.path.abspath(a.baseline), "baseline", a, lg) if a.baseline else None
    print_figures(cur, base)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a benchmark prints, never fails
        print("benchmark error:", repr(e), file=sys.stderr)
