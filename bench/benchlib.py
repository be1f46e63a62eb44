"""Helpers shared by the benchmarks: free ports, process figures, the admin client's TLS
context from a kubeconfig, percentiles, and waiting for the API server."""
import base64, http.client, os, re, socket, ssl, time


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
