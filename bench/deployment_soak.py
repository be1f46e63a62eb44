#!/usr/bin/env python3
"""Deployment soak: repeats "create a Deployment of N replicas on simulated nodes, wait until
every replica is available, delete it, wait until its pods are gone" until a run stalls or
--runs runs pass (issue 16: one 1,000-replica run of four once took 307 s instead of 4-9 s).

A run that is not available after --stall seconds is a stall: the script prints what the
controllers see at that moment (Deployment, ReplicaSet and pod counts by state, the
ReplicaSet's conditions, the server's warnings), keeps the data dir and stops. Otherwise it
prints each run's time and, at the end, p50 / p90 / max. Prints figures; never fails.

Usage: bench/deployment_soak.py [--binary target/release/rk3s] [--nodes 100]
                                [--replicas 1000] [--runs 50] [--stall 60]
"""
import argparse, http.client, json, os, shutil, signal, ssl, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, ctx, free_port, load_kubeconfig, pct, rss_mb  # noqa: E402


def request(conn, method, path, body=None):
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {"Content-Type": "application/json"} if body is not None else {})
    r = conn.getresponse(); data = r.read()
    return r.status, data


class Api:
    """One HTTPS connection, re-opened when the server closes it."""

    def __init__(self, port, paths):
        self.port, self.paths, self.conn = port, paths, None

    def __call__(self, method, path, body=None):
        for _ in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx(self.paths))
                st, data = request(self.conn, method, path, body)
                return st, (json.loads(data) if data[:1] in (b"{", b"[") else {})
            except (OSError, ssl.SSLError, http.client.HTTPException):
                self.conn = None
        return 0, {}


def deployment(name, replicas):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": 0,
                                           "containers": [{"name": "c", "image": "busybox",
                                                           "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}}}}


def pod_counts(api, ns, app):
    st, body = api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{app}")
    counts = {"total": 0, "unbound": 0, "terminating": 0}
    for p in body.get("items", []) if st == 200 else []:
        counts["total"] += 1
        if not p.get("spec", {}).get("nodeName"):
            counts["unbound"] += 1
        if p.get("metadata", {}).get("deletionTimestamp"):
            counts["terminating"] += 1
        phase = p.get("status", {}).get("phase", "?")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in p.get("status", {}).get("conditions", []))
        key = f"{phase}{'/ready' if ready else ''}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def dump_stall(api, ns, name, tmp):
    print("STALL: what the controllers see now")
    st, d = api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    print("  Deployment status:", json.dumps(d.get("status", {}), sort_keys=True))
    st, rs = api("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets?labelSelector=app%3D{name}")
    for r in rs.get("items", []):
        print(f"  ReplicaSet {r['metadata']['name']}: spec.replicas {r['spec'].get('replicas')}, "
              f"status {json.dumps(r.get('status', {}), sort_keys=True)}")
    print("  pods:", json.dumps(pod_counts(api, ns, name), sort_keys=True))
    log = os.path.join(tmp, "server.log")
    lines = [line.rstrip() for line in open(log, errors="replace")
             if " WARN " in line or " ERROR " in line]
    print(f"  server warnings/errors ({len(lines)}; last 30):")
    for line in lines[-30:]:
        print("   ", line[:300])
    print("  data dir and logs kept in", tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/rk3s")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--replicas", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--stall", type=float, default=60.0, help="seconds after which a run is a stall")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rk3s-deploy-soak-")
    port = free_port()
    kc = os.path.join(tmp, "kubeconfig")
    open(os.path.join(tmp, "config.yaml"), "w").write("{}\n")
    srv = subprocess.Popen([a.binary, "server", f"--config={tmp}/config.yaml", f"--data-dir={tmp}/data",
                            f"--https-listen-port={port}", "--bind-address=127.0.0.1",
                            "--advertise-address=127.0.0.1", f"--write-kubeconfig={kc}", "--disable-agent",
                            "--log-level=info"], stderr=open(os.path.join(tmp, "server.log"), "w"))
    sim = None
    keep = False
    try:
        t0 = time.perf_counter()
        paths = None
        while time.perf_counter() - t0 < 60 and paths is None:
            if os.path.exists(kc):
                try:
                    paths = load_kubeconfig(kc, tmp)
                except (OSError, ValueError):
                    paths = None
            time.sleep(0.05)
        if paths is None:
            print("server did not start; see", os.path.join(tmp, "server.log")); keep = True; return
        api = Api(port, paths)
        while api("GET", "/readyz")[0] != 200 and time.perf_counter() - t0 < 60:
            time.sleep(0.05)
        sim = subprocess.Popen([a.binary, "sim-nodes", f"--kubeconfig={kc}", f"--count={a.nodes}",
                                "--lease-interval-ms=30000"], stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(tmp, "sim.log"), "w"))
        t = time.perf_counter()
        while time.perf_counter() - t < 120:
            st, body = api("GET", "/api/v1/nodes")
            if st == 200 and len(body.get("items", [])) >= a.nodes:
                break
            time.sleep(0.5)
        ns = "soak"
        api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        times, deletes, stalled = [], [], 0
        for i in range(a.runs):
            name = f"big-{i}"
            t_run = time.perf_counter()
            st, body = api("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(name, a.replicas))
            if st != 201:
                print(f"run {i}: create answered {st}: {body}"); keep = True; return
            avail = 0
            while time.perf_counter() - t_run < a.stall:
                st, d = api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
                avail = d.get("status", {}).get("availableReplicas", 0) or 0 if st == 200 else 0
                if avail >= a.replicas:
                    break
                time.sleep(0.1)
            took = time.perf_counter() - t_run
            if avail < a.replicas:
                print(f"run {i + 1}/{a.runs}: NOT available after {took:.1f} s ({avail}/{a.replicas})")
                dump_stall(api, ns, name, tmp)
                keep, stalled = True, 1
                break
            times.append(took)
            t_del = time.perf_counter()
            api("DELETE", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
            left = None
            while time.perf_counter() - t_del < a.stall:
                left = pod_counts(api, ns, name)["total"]
                if left == 0:
                    break
                time.sleep(0.2)
            deleted = time.perf_counter() - t_del
            deletes.append(deleted)
            print(f"run {i + 1}/{a.runs}: {a.replicas} available after {took:.2f} s; "
                  f"pods gone {deleted:.2f} s after the delete"
                  + (f" (NOT gone: {left} left)" if left else ""), flush=True)
            if left:
                keep = True
                break
        if times:
            print(f"available after: p50 {pct(times, 0.5):.2f} s, p90 {pct(times, 0.9):.2f} s, "
                  f"max {max(times):.2f} s over {len(times)} runs; pods gone after delete: "
                  f"p50 {pct(deletes, 0.5):.2f} s, max {max(deletes):.2f} s")
        print(f"stalls: {stalled} in {len(times) + stalled} runs; "
              f"server RSS {rss_mb(srv.pid):.1f} MB, CPU {cpu_seconds(srv.pid):.1f} s")
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGKILL); sim.wait()
        srv.send_signal(signal.SIGKILL); srv.wait()
        if keep or os.environ.get("RK3S_BENCH_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a benchmark prints, never fails
        print("benchmark error:", repr(e), file=sys.stderr)
