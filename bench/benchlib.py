"""Helpers shared by the benchmarks: free ports, process figures, the admin client's TLS
context from a kubeconfig, percentiles, starting and waiting for the API server, the
rk3s-loadgen load generator (with a Python fallback), figures printed beside a baseline
run's, a busybox image, and entering a network namespace."""
import base64, ctypes, http.client, json, multiprocessing as mp, os, re, resource, shutil, socket, ssl
import subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def rss_mb(pid):
    """Resident set size of a process in MB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_kubeconfig(path, tmp):
    """Writes the kubeconfig's CA, client certificate and key to files in tmp."""
    text = open(path).read()
    paths = {}
    for k in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
        m = re.search(k + r":\s*(\S+)", text)
        p = os.path.join(tmp, k); open(p, "wb").write(base64.b64decode(m.group(1))); paths[k] = p
    return paths


def ctx(paths):
    """A TLS context that trusts the cluster CA and presents the admin client certificate."""
    c = ssl.create_default_context(cafile=paths["certificate-authority-data"])
    c.load_cert_chain(paths["client-certificate-data"], paths["client-key-data"])
    return c


def pct(xs, p):
    """The p-quantile (0..1) of xs."""
    xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * p))]


def wait_ready(port, kubeconfig, tmp, t0, timeout=60):
    """Polls /readyz until the server answers ok; returns (client TLS paths, seconds since t0)."""
    paths = None
    while time.perf_counter() - t0 < timeout:
        if os.path.exists(kubeconfig):
            try:
                paths = paths or load_kubeconfig(kubeconfig, tmp)
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
                c.request("GET", "/readyz"); r = c.getresponse()
                if r.read() == b"ok":
                    return paths, time.perf_counter() - t0
            except (OSError, ssl.SSLError, http.client.HTTPException):
                pass
        time.sleep(0.01)
    raise SystemExit(f"API server not ready after {timeout} s")


def start_server(binary, tmp, extra=("--disable-agent",), log="server.log"):
    """Starts `rk3s server` on a free loopback port with its data, config and kubeconfig in
    tmp (warnings logged to tmp/LOG); returns (process, port, kubeconfig path)."""
    port = free_port()
    kc = os.path.join(tmp, "kubeconfig")
    open(os.path.join(tmp, "config.yaml"), "w").write("{}\n")
    srv = subprocess.Popen([binary, "server", f"--config={tmp}/config.yaml", f"--data-dir={tmp}/data",
                            f"--https-listen-port={port}", "--bind-address=127.0.0.1",
                            "--advertise-address=127.0.0.1", f"--write-kubeconfig={kc}",
                            "--log-level=warn", *extra], stderr=open(os.path.join(tmp, log), "w"))
    return srv, port, kc


def add_binary_args(ap, client=True):
    """The options every bench shares: --binary and --baseline, and with `client` those that
    pick the load generator (--loadgen, --python-clients, --http2)."""
    ap.add_argument("--binary", default="target/release/rk3s")
    ap.add_argument("--baseline", help="another rk3s binary: the same workload runs on it after, "
                                       "and each figure prints as current | baseline | ratio")
    if client:
        ap.add_argument("--loadgen", help="rk3s-loadgen binary (default: cargo build --release -p rk3s-loadgen)")
        ap.add_argument("--python-clients", action="store_true", help="use the Python clients, not rk3s-loadgen")
        ap.add_argument("--http2", action="store_true", help="rk3s-loadgen speaks HTTP/2")


def children_cpu():
    """User + system CPU seconds of the children waited for so far (the load generator's)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_loadgen_cache = {}


def loadgen(path=None):
    """The rk3s-loadgen binary: `path` when given, else built once with `cargo build --release
    -p rk3s-loadgen` (CARGO_TARGET_DIR, or target/ in the repository); None when it cannot be
    had, and the benchmark falls back to its Python clients."""
    if path:
        return os.path.abspath(path) if os.access(path, os.X_OK) else None
    if "built" not in _loadgen_cache:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
        r = subprocess.run(["cargo", "build", "--release", "-q", "-p", "rk3s-loadgen"], cwd=REPO,
                           env=dict(os.environ, CARGO_TARGET_DIR=target), capture_output=True, text=True)
        out = os.path.join(target, "release", "rk3s-loadgen")
        if r.returncode != 0 or not os.access(out, os.X_OK):
            print(f"(rk3s-loadgen could not be built, using the Python clients: {r.stderr.strip()[-500:]})",
                  file=sys.stderr)
            out = None
        _loadgen_cache["built"] = out
    return _loadgen_cache["built"]


def _py_client(args):
    """One Python client of the fallback: requests for indexes start, start+stride, ... with
    up to 3 retries on a 429, a 5xx or a connection error; returns (latencies, failed)."""
    port, paths, method, path, body, start, count, stride = args
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
    lat, failed = [], 0
    for k in range(count):
        i = str(start + k * stride)
        p, b = path.replace("{i}", i), body.replace("{i}", i) if body is not None else None
        t = time.perf_counter()
        for attempt in range(4):
            try:
                conn.request(method, p, b, {"Content-Type": "application/json"} if b is not None else {})
                r = conn.getresponse(); r.read()
                if 200 <= r.status < 300 or (r.status == 409 and attempt > 0 and b is not None):
                    break
                if r.status != 429 and r.status < 500:
                    failed += 1; break
            except (OSError, http.client.HTTPException):
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx(paths))
        else:
            failed += 1
        lat.append(time.perf_counter() - t)
    return lat, failed


def load(lg, kubeconfig, paths, port, path, count, concurrency, template=None, start=0, stride=1,
         py_clients=8, http2=False):
    """Sends `count` requests to `path` (POSTs of the JSON `template` when given, else GETs),
    `{i}` in both standing for the request's index (start + k * stride), with `concurrency`
    in flight through rk3s-loadgen `lg` (or `py_clients` Python processes when lg is None).
    Returns the client's report: count, ok, failed, seconds, rate (answers/s the client got),
    p50_ms, p99_ms, max_ms, client_cpu (s) and client ("rk3s-loadgen" or "python, N processes")."""
    body = json.dumps(template) if template is not None else None
    cpu0 = children_cpu()
    if lg:
        args = [lg, "create" if body is not None else "get", f"--kubeconfig={kubeconfig}", f"--path={path}",
                f"--count={count}", f"--start={start}", f"--stride={stride}", f"--concurrency={concurrency}"]
        if http2:
            args.append("--http2")
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            if body is not None:
                f.write(body); f.flush(); args.insert(2, f"--template={f.name}")
            r = subprocess.run(args, capture_output=True, text=True)
        if r.stderr.strip():
            print(r.stderr.strip()[-1000:], file=sys.stderr)
        try:
            rep = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            rep = {"count": count, "ok": 0, "failed": count, "seconds": 0, "rate": 0,
                   "p50_ms": None, "p99_ms": None, "max_ms": None}
        rep["client"] = "rk3s-loadgen" + (", HTTP/2" if http2 else "")
    else:
        per, rest = divmod(count, py_clients)
        jobs, first = [], 0
        for c in range(py_clients):
            n = per + (1 if c < rest else 0)
            jobs.append((port, paths, "POST" if body is not None else "GET", path, body,
                         start + first * stride, n, stride))
            first += n
        t = time.perf_counter()
        with mp.Pool(py_clients) as pool:
            res = pool.map(_py_client, jobs)
        dt = time.perf_counter() - t
        lat = sorted(x for l, _ in res for x in l)
        failed = sum(f for _, f in res)
        rep = {"count": count, "ok": count - failed, "failed": failed, "seconds": dt,
               "rate": (count - failed) / dt if dt > 0 else 0,
               "p50_ms": pct(lat, .5) * 1000 if lat else None, "p99_ms": pct(lat, .99) * 1000 if lat else None,
               "max_ms": lat[-1] * 1000 if lat else None, "client": f"python, {py_clients} processes"}
    rep["client_cpu"] = children_cpu() - cpu0
    return rep


class Figures:
    """The figures of one run, in print order, to print alone or beside a baseline run's."""

    def __init__(self, label):
        self.label, self.rows, self.notes = label, [], []

    def add(self, name, value, unit="", fmt="{:.0f}"):
        """Records a figure; value None prints as "-"."""
        self.rows.append((name, value, unit, fmt))

    def note(self, text):
        """Records a line of text printed after the figures."""
        self.notes.append(text)


def print_figures(cur, base=None):
    """Prints each figure of cur, with `current | baseline | ratio` when base is given."""
    def cell(row):
        if row is None or row[1] is None:
            return "-"
        _, v, unit, fmt = row
        return (fmt.format(v) + (" " + unit if unit else "")) if isinstance(v, (int, float)) else str(v)
    names = [r[0] for r in cur.rows] + ([r[0] for r in base.rows if r[0] not in {c[0] for c in cur.rows}]
                                        if base else [])
    width = max([len(n) for n in names] + [20]) + 2
    mine = {r[0]: r for r in cur.rows}
    theirs = {r[0]: r for r in base.rows} if base else {}
    if base is not None:
        print(f"{'':<{width}} {cur.label:>18} | {base.label:>18} | ratio")
    for n in names:
        if base is None:
            print(f"{n + ':':<{width}} {cell(mine.get(n))}")
            continue
        a, b = mine.get(n), theirs.get(n)
        ratio = "-"
        if a and b and isinstance(a[1], (int, float)) and isinstance(b[1], (int, float)) and b[1]:
            ratio = f"{a[1] / b[1]:.2f}"
        print(f"{n + ':':<{width}} {cell(a):>18} | {cell(b):>18} | {ratio}")
    for f in ([cur, base] if base else [cur]):
        for t in f.notes:
            print(f"({f.label}: {t})" if base else t)


def client_figures(fig, what, rep, server_cpu=None):
    """Adds the figures of one load phase: the client's rate, latencies and failures, the
    client's own CPU per request (what it could reach on one core), and, given the server's
    CPU seconds for the phase, the server's CPU per request."""
    fig.add(f"{what} /s (client: {rep['client']})", rep["rate"], "/s")
    fig.add(f"{what} p50", rep["p50_ms"], "ms", "{:.2f}")
    fig.add(f"{what} p99", rep["p99_ms"], "ms", "{:.2f}")
    fig.add(f"{what} failed", rep["failed"], "")
    n = max(1, rep["ok"] + rep["failed"])
    fig.add(f"{what}: client CPU per request", rep["client_cpu"] / n * 1e6, "us")
    if server_cpu is not None:
        fig.add(f"{what}: server CPU per request", server_cpu / n * 1e6, "us")


BUSYBOX_APPLETS = ("sh", "sleep", "echo", "cat", "ls", "true", "false", "httpd", "wget", "env", "mkdir",
                   "rm", "touch", "kill", "head", "tail", "grep", "date", "ps", "nc", "nslookup", "seq", "wc")


def build_busybox_image(binary, work, out, tag, applets=BUSYBOX_APPLETS):
    """Builds an OCI archive `out` of the static busybox with `applets` linked in /bin
    (`rk3s image build --from ROOTFS`, as crates/rk3s/tests/common/node.rs does)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    root = os.path.join(work, "busybox-rootfs")
    for d in ("bin", "tmp", "etc"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(busybox, os.path.join(root, "bin/busybox"))
    for applet in applets:
        link = os.path.join(root, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run([binary, "image", "build", "--from", root, "--tag", tag, "-o", out],
                   check=True, stdout=subprocess.DEVNULL)


def enter_netns(name):
    """Moves the calling thread (call it from the main thread before starting any other)
    into the network namespace /run/netns/NAME; children started later inherit it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
