"""Helpers shared by the benchmarks: free ports, process figures, the admin client's TLS
context from a kubeconfig, percentiles, waiting for the API server, a busybox image, and
entering a network namespace."""
import base64, ctypes, http.client, os, re, shutil, socket, ssl, subprocess, time


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
