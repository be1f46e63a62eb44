#!/usr/bin/env python3
"""Node agent benchmark (root, real containerd): pod create -> Running latency and memory.

Starts `rk3s server` with its node agent on a temporary data dir, drops a busybox image
built by `rk3s image build` into the images folder, then prints:
  - API ready and node Ready after start;
  - idle RSS of rk3s and of its containerd (+ shims) with 0 pods;
  - create -> Running latency (p50, p99, max) for N pods created one after another, each
    measured from the POST to the watch event that shows it Running (image present);
  - RSS of rk3s and containerd (+ shims) with the first --keep pods running;
  - the time for a burst of --burst pods created at once to all be Running.
Cleans up with `rk3s killall`. With --baseline BINARY the same workload runs on that binary
too (after, on a fresh data dir) and each figure prints as `current | baseline | ratio`.
Prints figures; never fails on a slow machine.

Usage: bench/pod_bench.py [--binary target/release/rk3s] [--baseline BINARY] [--pods 100]
                          [--keep 30] [--burst 20]
"""
import argparse, http.client, json, os, shutil, signal, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Figures, add_binary_args, build_busybox_image, ctx, pct, print_figures, rss_mb,  # noqa: E402
                      start_server, wait_ready)


def pids_with_cmdline(needle):
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            cmd = open(f"/proc/{e}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            out.append(int(e))
    return out


class Watch(threading.Thread):
    """Watches pods in a namespace; records when each was first seen Running."""

    def __init__(self, port, paths, ns):
        super().__init__(daemon=True)
        self.port, self.paths, self.ns = port, paths, ns
        self.running = {}
        self.ends = 0
        self.stop = False
        self.rv = ""
        self.cv = threading.Condition()

    def run(self):
        while not self.stop:
            try:
                self.follow()
                self.ends += 1
            except (OSError, http.client.HTTPException) as e:
                self.ends += 1
                if not self.stop:
                    print(f"(watch ended: {e!r}; resuming from {self.rv})", file=sys.stderr)
                time.sleep(0.1)

    def follow(self):
        """Follows one watch from the last resourceVersion seen until it ends."""
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx(self.paths))
        c.request("GET", f"/api/v1/namespaces/{self.ns}/pods?watch=1&resourceVersion={self.rv}")
        r = c.getresponse()
        buf = b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                obj = ev.get("object", {})
                self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                name = obj.get("metadata", {}).get("name")
                if obj.get("status", {}).get("phase") == "Running" and name not in self.running:
                    with self.cv:
                        self.running[name] = time.perf_counter()
                        self.cv.notify_all()

    def wait_running(self, names, timeout):
        deadline = time.perf_counter() + timeout
        with self.cv:
            while not all(n in self.running for n in names):
                left = deadline - time.perf_counter()
                if left <= 0:
                    return False
                self.cv.wait(left)
        return True


def pod(name):
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"terminationGracePeriodSeconds": 0, "containers": [
                           {"name": "c", "image": "rk3s.bench/busybox:1", "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"]}]}})


def measure(binary, label, a):
    """Runs the whole workload on a fresh server (and containerd) of `binary`; returns its Figures."""
    fig = Figures(label)
    tmp = tempfile.mkdtemp(prefix="rk3s-podbench-")
    data = os.path.join(tmp, "data")
    state = os.path.join(tmp, "containerd")
    build_busybox_image(binary, tmp, os.path.join(data, "agent/images/busybox.tar"), "rk3s.bench/busybox:1",
                        applets=("sh", "sleep", "true"))
    t0 = time.perf_counter()
    srv, port, kc = start_server(binary, tmp, extra=[f"--containerd-state-dir={state}"], log="log")
    paths, w = None, None
    try:
        paths, api_ready = wait_ready(port, kc, tmp, t0)
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        node_ready = None
        while time.perf_counter() - t0 < 120:
            c.request("GET", "/api/v1/nodes"); r = c.getresponse(); body = json.loads(r.read())
            ok = [n for n in body.get("items", []) for cond in n.get("status", {}).get("conditions", [])
                  if cond["type"] == "Ready" and cond["status"] == "True"]
            if ok:
                node_ready = time.perf_counter() - t0
                break
            time.sleep(0.05)
        fig.add("API ready after start", api_ready * 1000, "ms")
        fig.add("node Ready after start", node_ready * 1000 if node_ready else None, "ms")
        if node_ready is None:
            raise SystemExit("node never became Ready; see " + os.path.join(tmp, "log"))
        sock = os.path.join(state, "containerd.sock")

        def containerd_rss():
            cd = [int(open(os.path.join(state, "containerd.pid")).read().strip())]
            shims = [p for p in pids_with_cmdline("containerd-shim") if p in pids_with_cmdline(sock)]
            return rss_mb(cd[0]), sum(rss_mb(p) for p in shims), len(shims)

        # The default ServiceAccount must exist before pods are admitted.
        while True:
            c.request("GET", "/api/v1/namespaces/default/serviceaccounts/default"); r = c.getresponse(); r.read()
            if r.status == 200:
                break
            time.sleep(0.05)
        time.sleep(3.0)  # let start-up work (image import, first syncs) settle before measuring idle
        idle_cd, _, _ = containerd_rss()
        fig.add("idle RSS, 0 pods: rk3s", rss_mb(srv.pid), "MB", "{:.1f}")
        fig.add("idle RSS, 0 pods: containerd", idle_cd, "MB", "{:.1f}")
        w = Watch(port, paths, "default"); w.start()
        time.sleep(0.2)
        lat = []
        for i in range(a.pods):
            name = f"p-{i}"
            t = time.perf_counter()
            c.request("POST", "/api/v1/namespaces/default/pods", pod(name), {"Content-Type": "application/json"})
            r = c.getresponse(); r.read()
            if r.status != 201:
                raise SystemExit(f"create {name}: {r.status}")
            if not w.wait_running([name], 60):
                raise SystemExit(f"{name} not Running after 60 s")
            lat.append(w.running[name] - t)
            if i + 1 == a.keep:
                time.sleep(2.0)
                keep_cd, keep_shims, nshims = containerd_rss()
                fig.add(f"RSS with {a.keep} pods: rk3s", rss_mb(srv.pid), "MB", "{:.1f}")
                fig.add(f"RSS with {a.keep} pods: containerd", keep_cd, "MB", "{:.1f}")
                fig.add(f"RSS with {a.keep} pods: {nshims} shims", keep_shims, "MB", "{:.1f}")
        what = f"create -> Running, {a.pods} pods one by one"
        fig.add(f"{what}: p50", pct(lat, .5) * 1000, "ms")
        fig.add(f"{what}: p99", pct(lat, .99) * 1000, "ms")
        fig.add(f"{what}: max", max(lat) * 1000, "ms")
        fig.add(f"{what}: mean", statistics.mean(lat) * 1000, "ms")
        fig.add(f"RSS with {a.pods} pods: rk3s", rss_mb(srv.pid), "MB", "{:.1f}")
        fig.add(f"RSS with {a.pods} pods: containerd", containerd_rss()[0], "MB", "{:.1f}")
        # Delete them all (graceful, 0 s), then a burst of N pods at once.
        t = time.perf_counter()
        c.request("DELETE", "/api/v1/namespaces/default/pods"); c.getresponse().read()
        while True:
            c.request("GET", "/api/v1/namespaces/default/pods?limit=1"); r = c.getresponse()
            if not json.loads(r.read()).get("items"):
                break
            time.sleep(0.05)
        fig.add(f"delete {a.pods} pods (until gone)", time.perf_counter() - t, "s", "{:.2f}")
        names = [f"b-{i}" for i in range(a.burst)]
        t = time.perf_counter()
        for n in names:
            c.request("POST", "/api/v1/namespaces/default/pods", pod(n), {"Content-Type": "application/json"})
            r = c.getresponse(); r.read()
        burst_ok = w.wait_running(names, 180)
        fig.add(f"burst of {a.burst} pods all Running", time.perf_counter() - t if burst_ok else None, "s", "{:.2f}")
        if not burst_ok:
            fig.note(f"the burst of {a.burst} pods TIMED OUT after 180 s")
        if w.ends:
            fig.note(f"the pod watch ended {w.ends} time(s) and was resumed")
    except (OSError, ValueError, KeyError, http.client.HTTPException, SystemExit) as e:
        fig.note(f"run stopped early: {e}")
    finally:
        try:
            if paths is not None:
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
                c.request("DELETE", "/api/v1/namespaces/default/pods"); c.getresponse().read()
                deadline = time.time() + 120
                while time.time() < deadline:
                    c.request("GET", "/api/v1/namespaces/default/pods"); r = c.getresponse()
                    if not json.loads(r.read()).get("items"):
                        break
                    time.sleep(0.5)
        except Exception as e:  # best effort: killall below cleans up anyway
            print(f"(pod deletion: {e})", file=sys.stderr)
        if w is not None:
            w.stop = True
        if srv.poll() is not None:
            fig.note(f"rk3s server exited with {srv.returncode}; its log is kept at /tmp/pod_bench_server.log")
            shutil.copy(os.path.join(tmp, "log"), "/tmp/pod_bench_server.log")
        srv.send_signal(signal.SIGKILL); srv.wait()
        subprocess.run([binary, "killall", f"--data-dir={data}", f"--containerd-state-dir={state}"],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    return fig


def main():
    ap = argparse.ArgumentParser()
    add_binary_args(ap, client=False)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--keep", type=int, default=30)
    ap.add_argument("--burst", type=int, default=20)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("pod_bench needs root (real containers)")
    cur = measure(os.path.abspath(a.binary), "current", a)
    base = measure(os.path.abspath(a.baseline), "baseline", a) if a.baseline else None
    print_figures(cur, base)


if __name__ == "__main__":
    main()
