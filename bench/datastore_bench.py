#!/usr/bin/env python3
"""Datastore benchmark: the API bench on every backend side by side in one run.

Starts, each in turn on loopback, the external datastores from Debian's binaries
(PostgreSQL as the postgres user, MariaDB, etcd; each durable as deployed: fsync on, data
on disk, in a temp dir) and for each backend (and SQLite, and SQLite with the --baseline
binary) one `rk3s server --disable-agent --datastore-endpoint=...`, then prints in columns:
  - API ready after start, RSS idle;
  - ConfigMap creates/s from 8 clients (p50, p99) and the server's CPU per create;
  - LIST of 10,000 ConfigMaps (median of 5);
  - watch latency: one client watches ConfigMaps while another creates them one by one
    (paced): write sent -> event and write acknowledged -> event, p50/p99 (negative: the
    event arrived before the write's answer);
  - RSS after the load.
Then the SQLite file size under an hour-equivalent of churn (100 nodes' Lease renewals
every 10 s plus Events, compressed in time, compacted as the server does) through the
`sqlite_churn` example of rk3s-store (`cargo run`, skipped with --no-churn).
Cleans up every process and folder it made. Prints figures; never fails on a number.

Usage: bench/datastore_bench.py [--binary target/release/rk3s] [--baseline BINARY]
       [--objects 10000] [--clients 8] [--watch-writes 300] [--backends sqlite,postgres,mariadb,etcd]
       [--no-churn] [--churn-hours 2]
"""
import argparse, http.client, json, multiprocessing as mp, os, pwd, shutil, signal, statistics
import subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, ctx, free_port, pct, rss_mb, wait_ready  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
    """Creates `count` ConfigMaps on one connection; (latencies, failures)."""
    port, paths, ns, start, count = args
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths), timeout=60)
    lat, failed = [], 0
    for i in range(start, start + count):
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": f"cm-{i}", "labels": {"bench": "yes", "n": str(i % 10)}},
                           "data": {"key": "x" * 200}})
        t = time.perf_counter()
        try:
            conn.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body, {"Content-Type": "application/json"})
            r = conn.getresponse(); r.read()
            ok = r.status == 201
        except (OSError, http.client.HTTPException):
            conn.close(); ok = False
        lat.append(time.perf_counter() - t)
        failed += not ok
    return lat, failed


def wait_until(what, check, timeout=60, proc=None, log=None):
    """Polls check() until it is true; raises with the log if proc exits or time runs out."""
    t = time.time()
    while time.time() - t < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail(log)}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout} s: {tail(log)}")


def tail(path, n=15):
    try:
        return "\n".join(open(path, errors="replace").read().splitlines()[-n:])
    except (OSError, TypeError):
        return ""


def quiet(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw).returncode == 0


class External:
    """A datastore server process in a temp dir; stop() ends it and removes the dir."""

    def __init__(self, name):
        self.name, self.proc, self.endpoint = name, None, ""
        self.dir = tempfile.mkdtemp(prefix=f"rk3s-dsbench-{name}-")
        self.log = os.path.join(self.dir, "server.log")
        self.stop_signal = signal.SIGTERM

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def postgres_bin():
    base = "/usr/lib/postgresql"
    versions = sorted((int(v) for v in os.listdir(base) if v.isdigit()
                       and os.path.exists(f"{base}/{v}/bin/postgres")), reverse=True) if os.path.isdir(base) else []
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (Debian: postgresql-15)")
    return f"{base}/{versions[0]}/bin"


def start_postgres(s):
    """PostgreSQL (trust auth, user postgres) on a free loopback port, run as postgres."""
    s.stop_signal = signal.SIGINT  # fast shutdown
    bin_dir = postgres_bin()
    pw = pwd.getpwnam("postgres")
    os.chown(s.dir, pw.pw_uid, pw.pw_gid)
    data = os.path.join(s.dir, "data")
    as_pg = dict(user=pw.pw_uid, group=pw.pw_gid, cwd=s.dir)
    r = subprocess.run([f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       capture_output=True, text=True, **as_pg)
    if r.returncode != 0:
        raise RuntimeError(f"initdb: {r.stderr}")
    port = free_port()
    s.proc = subprocess.Popen([f"{bin_dir}/postgres", "-D", data, "-k", s.dir, "-p", str(port), "-h", "127.0.0.1",
                               "-c", "max_connections=200"],
                              stdout=subprocess.DEVNULL, stderr=open(s.log, "w"), **as_pg)
    wait_until("postgres", lambda: quiet([f"{bin_dir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]),
               proc=s.proc, log=s.log)
    s.endpoint = f"postgres://postgres@127.0.0.1:{port}/kubernetes?sslmode=disable"


def start_mariadb(s):
    """MariaDB (root, no password) on a free loopback port."""
    data = os.path.join(s.dir, "data")
    r = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       capture_output=True, text=True, cwd=s.dir)
    if r.returncode != 0:
        raise RuntimeError(f"mariadb-install-db: {r.stdout}{r.stderr}")
    port = free_port()
    s.proc = subprocess.Popen(["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}",
                               f"--socket={s.dir}/sock", f"--pid-file={s.dir}/pid", f"--log-error={s.log}",
                               f"--port={port}", "--user=root", "--bind-address=127.0.0.1", "--skip-log-bin",
                               "--innodb-buffer-pool-size=128M", "--max-connections=200"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=s.dir)
    wait_until("mariadbd", lambda: quiet(["mariadb-admin", "--no-defaults", "-h", "127.0.0.1", "-P", str(port),
                                          "-u", "root", "--connect-timeout=2", "ping"]), proc=s.proc, log=s.log)
    s.endpoint = f"mysql://root@tcp(127.0.0.1:{port})/kubernetes"


def start_etcd(s):
    """A single etcd member on free loopback ports, data on disk."""
    client, peer = free_port(), free_port()
    curl, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    s.proc = subprocess.Popen([shutil.which("etcd") or "/usr/bin/etcd", "--name", "bench",
                               "--data-dir", os.path.join(s.dir, "data"),
                               "--listen-client-urls", curl, "--advertise-client-urls", curl,
                               "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                               "--initial-cluster", f"bench={purl}", "--initial-cluster-state", "new",
                               "--logger", "zap", "--log-outputs", "stderr"],
                              stdout=subprocess.DEVNULL, stderr=open(s.log, "w"), cwd=s.dir)

    def healthy():
        try:
            return b'"health":"true"' in urllib.request.urlopen(f"{curl}/health", timeout=1).read()
        except OSError:
            return False
    wait_until("etcd", healthy, proc=s.proc, log=s.log)
    s.endpoint = curl


class Watcher(threading.Thread):
    """Watches ConfigMaps of a namespace from a resourceVersion; records when each name arrives."""

    def __init__(self, port, paths, ns, rv):
        super().__init__(daemon=True)
        self.port, self.paths, self.ns, self.rv = port, paths, ns, rv
        self.seen, self.error, self.stop = {}, None, False
        self.started = threading.Event()

    def run(self):
        try:
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx(self.paths))
            c.request("GET", f"/api/v1/namespaces/{self.ns}/configmaps?watch=1&resourceVersion={self.rv}"
                             "&allowWatchBookmarks=false")
            r = c.getresponse()
            self.started.set()
            buf = b""
            while not self.stop:
                chunk = r.read1(65536)
                if not chunk:
                    return
                now = time.perf_counter()
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        name = json.loads(line)["object"]["metadata"]["name"]
                    except (ValueError, KeyError):
                        continue
                    self.seen.setdefault(name, now)
        except (OSError, http.client.HTTPException) as e:
            self.error = e
            self.started.set()


def watch_latency(port, paths, writes):
    """Creates `writes` ConfigMaps one by one (10 ms apart) while a watcher follows them."""
    ns = "watch"
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
    c.request("POST", "/api/v1/namespaces", json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": ns}}),
              {"Content-Type": "application/json"}); c.getresponse().read()
    c.request("GET", f"/api/v1/namespaces/{ns}/configmaps"); r = c.getresponse()
    rv = json.loads(r.read())["metadata"]["resourceVersion"]
    w = Watcher(port, paths, ns, rv); w.start(); w.started.wait(10)
    time.sleep(0.3)
    sent, acked = {}, {}
    for i in range(writes):
        name = f"w-{i}"
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                           "data": {"key": "x" * 200}})
        t = time.perf_counter()
        c.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        acked[name] = time.perf_counter(); sent[name] = t
        time.sleep(0.01)
    deadline = time.perf_counter() + 10
    while len(w.seen) < writes and time.perf_counter() < deadline:
        time.sleep(0.05)
    w.stop = True
    got = [n for n in sent if n in w.seen]
    send_ev = [w.seen[n] - sent[n] for n in got]
    ack_ev = [w.seen[n] - acked[n] for n in got]
    return send_ev, ack_ev, writes - len(got)


def run_backend(label, binary, endpoint, a):
    """One rk3s server on `endpoint` (None: its SQLite file); returns a dict of figures."""
    tmp = tempfile.mkdtemp(prefix="rk3s-dsbench-")
    port = free_port()
    kc = os.path.join(tmp, "kubeconfig")
    open(os.path.join(tmp, "config.yaml"), "w").write("{}\n")
    args = [binary, "server", f"--config={tmp}/config.yaml", f"--data-dir={tmp}/data",
            f"--https-listen-port={port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--write-kubeconfig={kc}", "--disable-agent", "--log-level=warn"]
    if endpoint:
        args.append(f"--datastore-endpoint={endpoint}")
    log = os.path.join(tmp, "log")
    t0 = time.perf_counter()
    srv = subprocess.Popen(args, stderr=open(log, "w"))
    f = {"label": label}
    try:
        try:
            paths, f["ready"] = wait_ready(port, kc, tmp, t0, timeout=60)
        except SystemExit as e:
            f["error"] = f"{e}; exit {srv.poll()}: {tail(log, 5)}"
            return f
        time.sleep(1.0)
        f["rss_idle"] = rss_mb(srv.pid)
        ns = "bench"
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        c.request("POST", "/api/v1/namespaces", json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": ns}}),
                  {"Content-Type": "application/json"}); c.getresponse().read()
        per = a.objects // a.clients
        cpu0, t = cpu_seconds(srv.pid), time.perf_counter()
        with mp.Pool(a.clients) as pool:
            out = pool.map(worker, [(port, paths, ns, k * per, per) for k in range(a.clients)])
        dt = time.perf_counter() - t
        lat = [x for l, _ in out for x in l]
        f["create_failed"] = sum(n for _, n in out)
        n = per * a.clients
        f["creates"] = n / dt
        f["create_p50"], f["create_p99"] = pct(lat, .5), pct(lat, .99)
        f["cpu_per_create"] = (cpu_seconds(srv.pid) - cpu0) / n
        list_lat = []
        for _ in range(5):
            t = time.perf_counter()
            c.request("GET", f"/api/v1/namespaces/{ns}/configmaps"); r = c.getresponse(); body = r.read()
            list_lat.append(time.perf_counter() - t)
        f["list_items"] = len(json.loads(body)["items"])
        f["list"] = statistics.median(list_lat)
        send_ev, ack_ev, missed = watch_latency(port, paths, a.watch_writes)
        if send_ev:
            f["w_send50"], f["w_send99"] = pct(send_ev, .5), pct(send_ev, .99)
            f["w_ack50"], f["w_ack99"] = pct(ack_ev, .5), pct(ack_ev, .99)
        f["w_missed"] = missed
        f["rss_after"] = rss_mb(srv.pid)
        return f
    finally:
        if srv.poll() is not None and "error" not in f:
            f["error"] = f"rk3s exited with {srv.returncode}: {tail(log, 5)}"
        srv.send_signal(signal.SIGKILL); srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(results, a):
    rows = [
        ("API ready after start", lambda f: f"{f['ready']*1000:.0f} ms"),
        ("RSS idle", lambda f: f"{f['rss_idle']:.1f} MB"),
        (f"creates/s ({a.clients} clients)", lambda f: f"{f['creates']:.0f}"),
        ("creates failed", lambda f: f"{f['create_failed']}"),
        ("create p50", lambda f: f"{f['create_p50']*1000:.2f} ms"),
        ("create p99", lambda f: f"{f['create_p99']*1000:.2f} ms"),
        ("server CPU per create", lambda f: f"{f['cpu_per_create']*1e6:.0f} us"),
        ("LIST all ConfigMaps (median of 5)", lambda f: f"{f['list']*1000:.1f} ms ({f['list_items']})"),
        ("watch: write sent -> event p50", lambda f: f"{f['w_send50']*1000:.2f} ms"),
        ("watch: write sent -> event p99", lambda f: f"{f['w_send99']*1000:.2f} ms"),
        ("watch: write acked -> event p50", lambda f: f"{f['w_ack50']*1000:.2f} ms"),
        ("watch: write acked -> event p99", lambda f: f"{f['w_ack99']*1000:.2f} ms"),
        (f"watch: events missing of {a.watch_writes}", lambda f: f"{f['w_missed']}"),
        ("RSS after load", lambda f: f"{f['rss_after']:.1f} MB"),
    ]
    width = max(16, *(len(f["label"]) + 2 for f in results))
    print(f"{'':<36}" + "".join(f"{f['label']:>{width}}" for f in results))
    for name, fmt in rows:
        cells = []
        for f in results:
            try:
                cells.append(fmt(f))
            except (KeyError, TypeError):
                cells.append("-")
        print(f"{name:<36}" + "".join(f"{c:>{width}}" for c in cells))
    for f in results:
        if "error" in f:
            print(f"({f['label']}: {f['error']})")


def churn(a):
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    r = subprocess.run(["cargo", "run", "-q", "-p", "rk3s-store", "--example", "sqlite_churn", "--",
                        "--hours", str(a.churn_hours)], cwd=REPO, env=env, capture_output=True, text=True)
    print(r.stdout, end="")
    if r.returncode != 0:
        print(f"(sqlite_churn failed: {r.stderr[-2000:]})")


def main():
    ap = argparse.ArgumentParser()
    default = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release/rk3s")
    ap.add_argument("--binary", default=default)
    ap.add_argument("--baseline", help="an older rk3s binary: its SQLite figures are printed beside")
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--watch-writes", type=int, default=300)
    ap.add_argument("--backends", default="sqlite,postgres,mariadb,etcd")
    ap.add_argument("--no-churn", action="store_true")
    ap.add_argument("--churn-hours", type=int, default=2)
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)
    starters = {"postgres": ("PostgreSQL", start_postgres), "mariadb": ("MariaDB", start_mariadb),
                "etcd": ("etcd", start_etcd)}
    results = []
    print(f"rk3s datastore bench: {a.objects} ConfigMaps from {a.clients} clients, binary {binary}", flush=True)
    if a.baseline:
        results.append(run_backend("SQLite (baseline)", os.path.abspath(a.baseline), None, a))
    for b in a.backends.split(","):
        if b == "sqlite":
            results.append(run_backend("SQLite", binary, None, a))
            continue
        label, start = starters[b]
        ext = External(b)
        try:
            start(ext)
            results.append(run_backend(label, binary, ext.endpoint, a))
        except (RuntimeError, OSError, KeyError) as e:
            results.append({"label": label, "error": str(e)})
        finally:
            ext.stop()
    print_table(results, a)
    if not a.no_churn:
        churn(a)


if __name__ == "__main__":
    main()
