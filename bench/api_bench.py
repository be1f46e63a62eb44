#!/usr/bin/env python3
"""API server benchmark: creates/s from 8 clients (p50/p99) and the server's CPU time
per create, GET latency, LIST latency at 10,000 ConfigMaps, and the server's RSS idle
and after the load. Prints figures; never fails.

Usage: bench/api_bench.py [--binary target/release/rk3s] [--objects 10000] [--clients 8]
"""
import argparse, http.client, json, multiprocessing as mp, os, shutil, signal
import statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, ctx, free_port, pct, rss_mb, wait_ready  # noqa: E402

def worker(args):
    port, paths, ns, start, count = args
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
    lat = []
    for i in range(start, start + count):
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": f"cm-{i}", "labels": {"bench": "yes", "n": str(i % 10)}},
                           "data": {"key": "x" * 200}})
        t = time.perf_counter()
        conn.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body, {"Content-Type": "application/json"})
        r = conn.getresponse(); r.read()
        lat.append(time.perf_counter() - t)
        if r.status != 201:
            raise SystemExit(f"create failed: {r.status}")
    return lat

def getter(args):
    port, paths, ns, names = args
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
    lat = []
    for n in names:
        t = time.perf_counter()
        conn.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{n}")
        r = conn.getresponse(); r.read()
        lat.append(time.perf_counter() - t)
    return lat

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/rk3s")
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rk3s-bench-")
    port = free_port()
    kc = os.path.join(tmp, "kubeconfig")
    t0 = time.perf_counter()
    open(os.path.join(tmp, "config.yaml"), "w").write("{}\n")
    srv = subprocess.Popen([a.binary, "server", f"--config={tmp}/config.yaml", f"--data-dir={tmp}/data",
                            f"--https-listen-port={port}", "--bind-address=127.0.0.1",
                            "--advertise-address=127.0.0.1", f"--write-kubeconfig={kc}", "--disable-agent",
                            "--log-level=warn"], stderr=open(os.path.join(tmp, "log"), "w"))
    try:
        paths, ready = wait_ready(port, kc, tmp, t0, timeout=30)
        time.sleep(1.0)
        idle = rss_mb(srv.pid)
        c0, w0 = cpu_seconds(srv.pid), time.perf_counter()
        time.sleep(5.0)
        idle_cpu = 100.0 * (cpu_seconds(srv.pid) - c0) / (time.perf_counter() - w0)
        ns = "bench"
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        c.request("POST", "/api/v1/namespaces", json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                  {"Content-Type": "application/json"}); c.getresponse().read()
        per = a.objects // a.clients
        t = time.perf_counter()
        cpu0 = cpu_seconds(srv.pid)
        with mp.Pool(a.clients) as pool:
            lats = pool.map(worker, [(port, paths, ns, k * per, per) for k in range(a.clients)])
        dt = time.perf_counter() - t
        create_cpu = cpu_seconds(srv.pid) - cpu0
        lat = [x for l in lats for x in l]
        n = per * a.clients
        names = [f"cm-{i}" for i in range(0, n, max(1, n // 2000))]
        chunks = [names[k::a.clients] for k in range(a.clients)]
        t = time.perf_counter()
        with mp.Pool(a.clients) as pool:
            glats = pool.map(getter, [(port, paths, ns, ch) for ch in chunks])
        gdt = time.perf_counter() - t
        glat = [x for l in glats for x in l]
        list_lat = []
        for _ in range(5):
            t = time.perf_counter()
            c.request("GET", f"/api/v1/namespaces/{ns}/configmaps"); r = c.getresponse(); body = r.read()
            list_lat.append(time.perf_counter() - t)
        items = len(json.loads(body)["items"])
        after = rss_mb(srv.pid)
        print(f"api ready after start:        {ready*1000:.0f} ms")
        print(f"RSS idle:                      {idle:.1f} MB")
        print(f"CPU idle (5 s):                {idle_cpu:.1f} % of one core")
        print(f"creates ({a.clients} clients):          {n/dt:.0f} /s  (p50 {pct(lat,.5)*1000:.2f} ms, p99 {pct(lat,.99)*1000:.2f} ms)")
        print(f"server CPU per create:         {create_cpu / n * 1e6:.0f} us  ({create_cpu:.2f} s for {n})")
        print(f"gets ({a.clients} clients):             {len(glat)/gdt:.0f} /s  (p50 {pct(glat,.5)*1000:.2f} ms)")
        print(f"LIST {items} ConfigMaps:        median {statistics.median(list_lat)*1000:.1f} ms (incl. JSON transfer)")
        print(f"RSS after load ({items} objects): {after:.1f} MB")
    finally:
        srv.send_signal(signal.SIGKILL); srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
