#!/usr/bin/env python3
"""API server benchmark: ConfigMap creates/s from 8 clients (p50/p99) and the server's CPU
time per create, the same with --concurrency requests in flight (the server's saturation
rate), GET latency, LIST latency at 10,000 ConfigMaps, and the server's RSS idle and after
the load. The loads come from bench/loadgen (rk3s-loadgen, built on first use; Python
clients when it cannot be built), and each prints the rate the client itself achieved and
its own CPU per request next to the server's, so a reader can tell which side was the limit.
With --baseline BINARY the same workload runs on that binary too (after, on a fresh data
dir) and each figure prints as `current | baseline | ratio`. Prints figures; never fails.

Usage: bench/api_bench.py [--binary target/release/rk3s] [--baseline BINARY] [--objects 10000]
                          [--clients 8] [--concurrency 64] [--loadgen PATH] [--http2]
"""
import argparse, http.client, json, os, shutil, signal, statistics, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Figures, add_binary_args, client_figures, cpu_seconds, ctx, load, loadgen, print_figures,  # noqa: E402
                      rss_mb, start_server, wait_ready)


def configmap(ns):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm-{i}", "namespace": ns, "labels": {"bench": "yes"}},
            "data": {"key": "x" * 200}}


def measure(binary, label, a, lg):
    """Runs the whole workload on a fresh server of `binary`; returns its Figures."""
    fig = Figures(label)
    tmp = tempfile.mkdtemp(prefix="rk3s-bench-")
    t0 = time.perf_counter()
    srv, port, kc = start_server(binary, tmp)
    try:
        paths, ready = wait_ready(port, kc, tmp, t0, timeout=30)
        time.sleep(1.0)
        fig.add("API ready after start", ready * 1000, "ms")
        fig.add("RSS idle", rss_mb(srv.pid), "MB", "{:.1f}")
        c0, w0 = cpu_seconds(srv.pid), time.perf_counter()
        time.sleep(5.0)
        fig.add("CPU idle (5 s), % of one core", 100.0 * (cpu_seconds(srv.pid) - c0) / (time.perf_counter() - w0),
                "%", "{:.1f}")
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        for ns in ("bench", "bench-sat"):
            c.request("POST", "/api/v1/namespaces",
                      json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                      {"Content-Type": "application/json"}); c.getresponse().read()
        ns, n = "bench", a.objects

        cpu0 = cpu_seconds(srv.pid)
        rep = load(lg, kc, paths, port, f"/api/v1/namespaces/{ns}/configmaps", n, a.clients,
                   template=configmap(ns), py_clients=a.clients, http2=a.http2)
        client_figures(fig, f"creates ({a.clients} in flight)", rep, cpu_seconds(srv.pid) - cpu0)

        step = max(1, n // 2000)
        rep = load(lg, kc, paths, port, f"/api/v1/namespaces/{ns}/configmaps/cm-{{i}}", len(range(0, n, step)),
                   a.clients, stride=step, py_clients=a.clients, http2=a.http2)
        fig.add(f"gets /s ({a.clients} in flight)", rep["rate"], "/s")
        fig.add(f"gets p50 ({a.clients} in flight)", rep["p50_ms"], "ms", "{:.2f}")

        list_lat, items = [], 0
        for _ in range(5):
            t = time.perf_counter()
            c.request("GET", f"/api/v1/namespaces/{ns}/configmaps"); r = c.getresponse(); body = r.read()
            list_lat.append(time.perf_counter() - t)
        items = len(json.loads(body).get("items", []))
        fig.add(f"LIST {items} ConfigMaps, median (incl. JSON transfer)", statistics.median(list_lat) * 1000,
                "ms", "{:.1f}")
        fig.add(f"RSS after load ({items} objects)", rss_mb(srv.pid), "MB", "{:.1f}")

        if a.concurrency > 0:
            # The saturation rate: as many creates again, into another namespace, with many in flight.
            cpu0 = cpu_seconds(srv.pid)
            rep = load(lg, kc, paths, port, "/api/v1/namespaces/bench-sat/configmaps", n, a.concurrency,
                       template=configmap("bench-sat"), py_clients=a.clients, http2=a.http2)
            client_figures(fig, f"creates ({a.concurrency} in flight)", rep, cpu_seconds(srv.pid) - cpu0)
    except (OSError, ValueError, http.client.HTTPException, SystemExit) as e:
        fig.note(f"run stopped early: {e!r}")
    finally:
        if srv.poll() is not None:
            fig.note(f"rk3s exited with {srv.returncode}")
        srv.send_signal(signal.SIGKILL); srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return fig


def main():
    ap = argparse.ArgumentParser()
    add_binary_args(ap)
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=8, help="requests in flight for the headline creates and gets")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="requests in flight for the saturation creates (0: skip them)")
    a = ap.parse_args()
    lg = None if a.python_clients else loadgen(a.loadgen)
    print(f"rk3s API bench: {a.objects} ConfigMaps, client {lg or 'python'}", flush=True)
    cur = measure(os.path.abspath(a.binary), "current", a, lg)
    base = measure(os.path.abspath(a.baseline), "baseline", a, lg) if a.baseline else None
    print_figures(cur, base)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a benchmark prints, never fails
        print("benchmark error:", repr(e), file=sys.stderr)
