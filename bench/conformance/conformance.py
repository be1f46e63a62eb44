#!/usr/bin/env python3
"""Kubernetes conformance report for rk3s: the upstream e2e suite (v1.20.2) against one
agent-mode `rk3s server` on this machine.

Subcommands (see README.md beside this file):
  build    fetch Debian bookworm's `kubernetes` source package (1.20.2) through a private apt
           sources list, install Debian's Go 1.19 if missing, build `e2e.test` and `kubectl`
  images   build the images the conformance tests use as OCI archives with `rk3s image build`
  run      start an agent-mode `rk3s server` (under the node lock) and, with --agents N, N
           `rk3s agent` nodes each in a network namespace of its own, run every [Conformance]
           test in its own e2e.test process (a pool, then the [Serial] tests alone), stop and
           clean up with `rk3s killall`, print the report
  report   per-SIG table, failed tests with their first failure line, JSON summary
  all      build + images + run: the one command for a fresh Debian 12 machine (root)

Everything goes into a cache dir (--cache, default /var/cache/rk3s-conformance-bench); every
step skips what is already there. Python 3.11 standard library only.
"""
import argparse
import collections
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time

DEFAULT_CACHE = "/var/cache/rk3s-conformance-bench"
DEFAULT_LOCK = "/var/cache/rk3s-conformance/node.lock"
# Agent nodes per subcommand when --agents is not given.
DEFAULT_AGENTS = {"run": 0, "all": 1}
K8S_VERSION = "1.20.2"
SUITE = "bookworm"
GO_BIN = "/usr/lib/go-1.19/bin"
# Debian packages the steps need (installed with apt-get when missing).
BUILD_PACKAGES = ["golang-1.19", "golang-github-modern-go-reflect2-dev", "ca-certificates"]
IMAGE_PACKAGES = ["busybox-static", "gcc", "libc6-dev", "curl", "bash", "bind9-dnsutils", "libc-bin"]
# e2e.test flags always given; see README.md for why the service-account check is off.
DEFAULT_E2E_ARGS = ["--e2e-verify-service-account=false"]
# Slow tests first balances the pool better (patterns in priority order).
DEFAULT_ORDER = ["sig-network", "DNS|Service", "webhook|Aggregator|CustomResource", "sig-apps", "sig-cli"]
NO_RK3S = "no rk3s binary: build it (cargo build --release) or pass --rk3s"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg):
    """A progress line on stderr with the wall time."""
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def run_cmd(cmd, **kw):
    """Runs a command, raising with its output's tail when it fails."""
    kw.setdefault("check", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        tail = ""
        for out in (e.stdout, e.stderr):
            if out:
                tail += (out if isinstance(out, str) else out.decode(errors="replace"))[-3000:]
        raise SystemExit(f"command failed ({e.returncode}): {' '.join(map(str, cmd))}\n{tail}")


def read_text(path):
    """A file's text (undecodable bytes replaced)."""
    with open(path, errors="replace") as f:
        return f.read()


def touch(path):
    """Creates an empty marker file."""
    with open(path, "w"):
        pass


def fmt_secs(s):
    """12m03s / 1h02m03s."""
    s = int(s)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


# ---------------------------------------------------------------------------------------------
# Pure parts: test names, e2e logs, results, the report (unit-tested in test_conformance.py)
# ---------------------------------------------------------------------------------------------

RE_TIMESTAMP = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3}: (?:FAIL: |INFO: )?")
RE_LOCATION = re.compile(r"^\s*/\S+\.go:\d+\s*$")


def go_regexp_quote(s):
    """Escapes s for a Go (RE2) regular expression, as regexp.QuoteMeta does."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", s)


def sig_of(name):
    """The SIG that owns a test: its first [sig-*] tag; 1.20's untagged `[k8s.io]` node tests
    belong to sig-node."""
    m = re.search(r"\[(sig-[a-z0-9-]+)\]", name)
    if m:
        return m.group(1)
    return "sig-node" if name.startswith("[k8s.io]") else "other"


def progress_messages(lines):
    """The JSON progress messages e2e's reporter prints ({"msg": ...}), in order; they may
    follow other output on the same line."""
    dec = json.JSONDecoder()
    for line in lines:
        i = line.find('{"msg":')
        if i < 0:
            continue
        try:
            obj, _ = dec.raw_decode(line[i:])
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("msg"), str):
            yield obj["msg"]


def list_from_dryrun(lines):
    """Test names of a `--ginkgo.dryRun` log (every selected test is reported PASSED), in order,
    without duplicates."""
    seen, out = set(), []
    for msg in progress_messages(lines):
        if msg.startswith("PASSED "):
            name = msg[len("PASSED "):]
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out


def select_tests(tests, only=(), exclude=()):
    """Tests matching every --only regex and none of the --exclude ones."""
    out = []
    for t in tests:
        if all(re.search(o, t) for o in only) and not any(re.search(x, t) for x in exclude):
            out.append(t)
    return out


def order_tests(tests, patterns, durations=None):
    """The order to start tests in, longest first so that the pool ends together: tests whose
    duration a previous run measured after the others, longest first; the others by the first
    of `patterns` they match (then those matching none), in their given order."""
    durations = durations or {}

    def rank(t):
        if t in durations:
            return (1, -durations[t])
        for i, p in enumerate(patterns):
            if re.search(p, t):
                return (0, i)
        return (0, len(patterns))
    return sorted(tests, key=rank)


def run_folders(cache):
    """Run folders under <cache>/runs with results, oldest first (by their results' time)."""
    runs = [d for d in glob.glob(os.path.join(cache, "runs", "*"))
            if os.path.exists(os.path.join(d, "results", "results.jsonl"))]
    return sorted(runs, key=lambda d: os.path.getmtime(os.path.join(d, "results", "results.jsonl")))


def previous_durations(cache, current):
    """Seconds per passed test in the newest earlier run folder under <cache>/runs."""
    runs = [d for d in run_folders(cache) if os.path.abspath(d) != current]
    for d in reversed(runs):
        res = read_results(os.path.join(d, "results", "results.jsonl"))
        out = {n: float(r["seconds"]) for n, r in res.items()
               if r.get("status") == "passed" and isinstance(r.get("seconds"), (int, float))}
        if out:
            return out
    return {}


def _failure_message(block):
    """The message lines of a ginkgo failure block, without indentation and timestamps."""
    # block: "• Failure [..]", component texts and code locations, a blank line, the message,
    # a blank line, the failure's code location.
    i = 1
    while i < len(block) and block[i].strip():
        i += 1
    msg = []
    for line in block[i:]:
        if RE_LOCATION.match(line):
            break
        msg.append(RE_TIMESTAMP.sub("", line.strip()))
    while msg and not msg[-1]:
        msg.pop()
    while msg and not msg[0]:
        msg.pop(0)
    return msg


def summarize_failure(block, limit=240):
    """One line that says why a test failed, from its ginkgo failure block."""
    msg = _failure_message(block)
    if not msg:
        return ""
    if "occurred" in msg:
        # gomega's "Unexpected error:\n <struct dump>\n message\n occurred", maybe after the
        # test's explanation: keep the explanation and the error's message
        j = msg.index("occurred")
        k = next((i for i, line in enumerate(msg[:j]) if line.startswith("Unexpected error")), None)
        if k is not None and j - 1 > k:
            prefix = " ".join(" ".join(msg[:k]).split())
            return _cut((prefix + ": " if prefix else "Unexpected error: ") + msg[j - 1], limit)
    words = []
    for line in msg[:6]:
        if line:
            words.append(line)
    return _cut(" ".join(" ".join(words).split()), limit)


def _cut(s, limit):
    return s if len(s) <= limit else s[: limit - 3] + "..."


def parse_test_log(lines):
    """Parses one e2e.test log (ginkgo -v, one test). Returns a dict: status (passed, failed or
    None when no result was printed), block (the failure block's lines), reason (one line),
    last_step (the last `STEP:` line)."""
    status, block, cur, in_block, last_step, fail_line, interrupted = None, [], [], False, "", "", False
    ran_none = False
    dec = json.JSONDecoder()
    for raw in lines:
        line = raw.rstrip("\n")
        i = line.find('{"msg":')
        if i >= 0:
            try:
                obj, _ = dec.raw_decode(line[i:])
                msg = obj.get("msg", "") if isinstance(obj, dict) else ""
            except ValueError:
                msg = ""
            if msg.startswith("PASSED ") and status is None:
                status = "passed"
            elif msg.startswith("FAILED "):
                status = "failed"
            if in_block:
                in_block, block = False, cur
            continue
        if "• Failure" in line or "• [PANICKED]" in line:
            in_block, cur = True, [line[line.find("•"):]]
            continue
        if in_block:
            if line.startswith("------------------------------"):
                in_block, block = False, cur
            else:
                cur.append(line)
            continue
        if line.startswith("Will run 0 of "):
            ran_none = True
        if "Received interrupt" in line:
            interrupted = True  # the steps after it are the clean-up of a timed-out test
        if "STEP: " in line and not interrupted:
            last_step = line[line.find("STEP: ") + 6:].strip()
        if not fail_line and ": FAIL: " in line:
            fail_line = line.split(": FAIL: ", 1)[1].strip()
    if in_block:
        block = cur
    reason = summarize_failure(block) if block else ""
    if not reason and fail_line:
        reason = fail_line
    return {"status": status, "block": block, "reason": reason, "last_step": last_step, "ran_none": ran_none}


def classify(parsed, timed_out, rc, seconds, tail=""):
    """The result of one test process: (status, reason). status is passed, failed, timeout or
    error (no result printed: e2e.test could not start, or the focus matched nothing)."""
    if timed_out:
        why = f"timed out after {seconds:.0f}s"
        if parsed["last_step"]:
            why += f" (last step: {parsed['last_step']})"
        return "timeout", _cut(why, 240)
    if parsed["status"] == "failed":
        return "failed", parsed["reason"] or "failed (no failure message found)"
    if parsed["status"] == "passed" and rc == 0:
        return "passed", ""
    if parsed["status"] == "passed":
        return "failed", f"e2e.test exited with {rc} after the test passed: {tail}".strip()
    if parsed.get("ran_none"):
        return "error", "the focus matched no test (ginkgo: Will run 0 of ... specs)"
    return "error", _cut(f"no result from e2e.test (exit code {rc}): {tail}".strip(), 240)


def read_results(path):
    """Records of a results.jsonl; a later record of a test overrides an earlier one."""
    res = collections.OrderedDict()
    if not os.path.exists(path):
        return res
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("name"), str):
                res.pop(rec["name"], None)
                res[rec["name"]] = rec
    return res


def summarize(tests, results):
    """The report's data: per-SIG counts (passed, failed, not run, total) and the failed tests.
    tests: every test of the run (selection order); results: name -> record (status passed,
    failed, timeout or error; reason). Results of tests outside `tests` are added."""
    names = list(tests) + [n for n in results if n not in set(tests)]
    by_sig = collections.OrderedDict()
    failed = []
    for name in sorted(names, key=lambda n: (sig_of(n), n)):
        rec = results.get(name)
        st = rec.get("status") if rec else None
        key = "passed" if st == "passed" else "failed" if st in ("failed", "timeout", "error") else "not_run"
        c = by_sig.setdefault(sig_of(name), {"passed": 0, "failed": 0, "not_run": 0, "total": 0})
        c[key] += 1
        c["total"] += 1
        if key == "failed":
            failed.append({"name": name, "sig": sig_of(name), "status": st,
                           "seconds": rec.get("seconds"), "reason": rec.get("reason", ""),
                           "log": rec.get("log", "")})
    tot = {"passed": 0, "failed": 0, "not_run": 0, "total": 0}
    for c in by_sig.values():
        for k in tot:
            tot[k] += c[k]
    ran = tot["passed"] + tot["failed"]
    return {"total": tot, "pass_rate": round(100.0 * tot["passed"] / ran, 1) if ran else None,
            "by_sig": by_sig, "failed": failed}


def render_report(summary, title="rk3s conformance (e2e v1.20.2)"):
    """Markdown: the per-SIG table, then each failed test with its first failure line."""
    out = [f"## {title}", "", "| SIG | passed | failed | not run | total |", "|---|---:|---:|---:|---:|"]
    for sig, c in summary["by_sig"].items():
        out.append(f"| {sig} | {c['passed']} | {c['failed']} | {c['not_run']} | {c['total']} |")
    t = summary["total"]
    out.append(f"| **all** | **{t['passed']}** | **{t['failed']}** | {t['not_run']} | {t['total']} |")
    if summary["pass_rate"] is not None:
        out += ["", f"{t['passed']} of {t['passed'] + t['failed']} tests run passed ({summary['pass_rate']}%)."]
    if summary["failed"]:
        out += ["", f"### Failed ({len(summary['failed'])})", ""]
        for f in summary["failed"]:
            tag = "" if f["status"] == "failed" else f" [{f['status']}]"
            out.append(f"- {f['name']}{tag}")
            if f["reason"]:
                out.append(f"  - {f['reason']}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# build: e2e.test and kubectl 1.20.2 from Debian bookworm's source package
# ---------------------------------------------------------------------------------------------

def dpkg_installed(pkg):
    """Whether a Debian package is installed."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def ensure_packages(pkgs):
    """Installs the Debian packages that are missing (apt-get, the system's sources)."""
    missing = [p for p in pkgs if not dpkg_installed(p)]
    if not missing:
        return
    log("installing Debian packages: " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        run_cmd(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL)
        run_cmd(cmd, env=env, stdout=subprocess.DEVNULL)


def debian_mirror():
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else the CDN."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = read_text(path)
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            if re.search(r"^Suites:.*\bbookworm\b", stanza, re.M):
                m = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if m and "security" not in m.group(1):
                    return m.group(1)
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = read_text(path).splitlines()
        except OSError:
            continue
        for line in lines:
            m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    return "http://deb.debian.org/debian"


def fetch_source(cache, mirror):
    """Downloads the `kubernetes` source package of bookworm with apt-get source, through a
    sources list, lists and cache of its own (the system's apt configuration is not touched),
    and extracts the upstream tarball. Returns the tree's path."""
    src = os.path.join(cache, "src")
    trees = [d for d in glob.glob(os.path.join(src, "kubernetes-*")) if os.path.isdir(d)]
    if trees and os.path.exists(os.path.join(src, ".extracted")):
        return trees[0]
    apt = os.path.join(cache, "apt")
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        os.makedirs(os.path.join(apt, d), exist_ok=True)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    opts = f"[signed-by={keyring}] " if os.path.exists(keyring) else ""
    with open(os.path.join(apt, "sources.list"), "w") as f:
        f.write(f"deb-src {opts}{mirror} {SUITE} main\n")
    o = ["-o", f"Dir::Etc::SourceList={apt}/sources.list", "-o", f"Dir::Etc::SourceParts={apt}/sources.list.d",
         "-o", f"Dir::State::Lists={apt}/lists", "-o", f"Dir::Cache={apt}/cache"]
    log(f"apt-get source kubernetes ({SUITE}, {mirror}) into {src}")
    run_cmd(["apt-get"] + o + ["update"], capture_output=True)
    os.makedirs(src, exist_ok=True)
    if not glob.glob(os.path.join(src, "kubernetes_*.orig.tar.*")):
        run_cmd(["apt-get"] + o + ["source", "--download-only", "kubernetes"], cwd=src, capture_output=True)
    tars = glob.glob(os.path.join(src, "kubernetes_*.orig.tar.*"))
    if not tars:
        raise SystemExit("apt-get source kubernetes gave no upstream tarball")
    top = run_cmd(["tar", "tf", tars[0]], capture_output=True, text=True).stdout.split("\n", 1)[0].split("/")[0]
    tree = os.path.join(src, top)
    if os.path.isdir(tree):
        shutil.rmtree(tree)
    log(f"extracting {os.path.basename(tars[0])}")
    run_cmd(["tar", "xf", tars[0], "-C", src])
    if not os.path.isfile(os.path.join(tree, "cmd", "kubectl", "kubectl.go")):
        raise SystemExit(f"{tree} is not a Kubernetes source tree")
    touch(os.path.join(src, ".extracted"))
    return tree


def gopath_env(tree, cache):
    """GOPATH-mode build environment of a 1.20 tree: the tree is linked as
    GOPATH/src/k8s.io/kubernetes (module mode with Go 1.19 wants go.mod updates). Returns
    (environment, the tree's path inside GOPATH)."""
    gopath = os.path.join(tree, "_output", "local", "go")
    gk = os.path.join(gopath, "src", "k8s.io", "kubernetes")
    os.makedirs(os.path.dirname(gk), exist_ok=True)
    if not os.path.islink(gk):
        os.symlink(os.path.abspath(tree), gk)
    env = dict(os.environ, PATH=GO_BIN + ":" + os.environ.get("PATH", ""), GOPATH=gopath, GO111MODULE="off",
               GOCACHE=os.path.join(cache, "go-build"), GOFLAGS="", PWD=gk)
    return env, gk


def fix_reflect2(tree):
    """The vendored modern-go/reflect2 1.0.1 crashes with Go >= 1.18 (map iteration through
    unsafe runtime internals); Debian's 1.0.2 works: put it in vendor/ instead."""
    dst = os.path.join(tree, "vendor", "github.com", "modern-go", "reflect2")
    marker = os.path.join(dst, ".rk3s-debian-1.0.2")
    if os.path.exists(marker):
        return
    deb = "/usr/share/gocode/src/github.com/modern-go/reflect2"
    if not os.path.isdir(deb):
        raise SystemExit(f"{deb} missing (Debian package golang-github-modern-go-reflect2-dev)")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(deb, dst, symlinks=True)
    gomod = os.path.join(dst, "go.mod")
    if os.path.exists(gomod):
        os.remove(gomod)
    touch(marker)


def version_ldflags():
    """-X flags that stamp v1.20.2 into kubectl/e2e.test (also the vendor/ paths GOPATH mode
    uses), so `kubectl version` says 1.20.2 as the e2e kubectl tests expect."""
    flags = []
    major, minor = K8S_VERSION.split(".")[:2]
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        for p in (pkg, "k8s.io/kubernetes/vendor/" + pkg):
            for k, v in (("gitVersion", "v" + K8S_VERSION), ("gitMajor", major), ("gitMinor", minor),
                         ("gitTreeState", "clean")):
                flags.append(f"-X {p}.{k}={v}")
    return " ".join(flags)


def go(env, gk, args, what):
    """Runs the go tool in the tree (inside GOPATH)."""
    log(what)
    t0 = time.time()
    run_cmd([os.path.join(GO_BIN, "go")] + args, cwd=gk, env=env, capture_output=True)
    log(f"{what}: done in {fmt_secs(time.time() - t0)}")


def cmd_build(a):
    """build subcommand: e2e.test and kubectl into <cache>/bin."""
    cache = os.path.abspath(a.cache)
    out = os.path.join(cache, "bin")
    e2e, kubectl = os.path.join(out, "e2e.test"), os.path.join(out, "kubectl")
    os.makedirs(out, exist_ok=True)
    if os.path.exists(e2e) and os.path.exists(kubectl) and find_tree(a):
        log(f"build: {e2e} and {kubectl} already built")
        return 0
    ensure_packages(BUILD_PACKAGES)
    tree = fetch_source(cache, a.mirror or debian_mirror())
    fix_reflect2(tree)
    env, gk = gopath_env(tree, cache)
    ld = version_ldflags()
    if not os.path.exists(kubectl):
        go(env, gk, ["build", "-ldflags", ld, "-o", kubectl + ".tmp", "./cmd/kubectl"], "go build kubectl")
        os.rename(kubectl + ".tmp", kubectl)
    if not os.path.exists(e2e):
        bindata = os.path.join(gk, "test", "e2e", "generated", "bindata.go")
        if not os.path.exists(bindata):
            # e2e.test embeds its manifests and test data (upstream's `make` generates this file)
            tool = os.path.join(out, "go-bindata")
            go(env, gk, ["build", "-o", tool, "./vendor/github.com/go-bindata/go-bindata/go-bindata"], "go build go-bindata")
            args = [tool, "-nometadata", "-o", bindata + ".tmp", "-pkg", "generated"]
            for ig in (r"\.jpg", r"\.png", r"\.md", r"BUILD(\.bazel)?"):
                args += ["-ignore", ig]
            args += ["test/conformance/testdata/...", "test/e2e/testing-manifests/...",
                     "test/e2e_node/testing-manifests/...", "test/images/...", "test/fixtures/..."]
            run_cmd(args, cwd=gk, env=env, capture_output=True)
            os.rename(bindata + ".tmp", bindata)
        go(env, gk, ["test", "-c", "-ldflags", ld, "-o", e2e + ".tmp", "./test/e2e"], "go test -c e2e.test (the long one)")
        os.rename(e2e + ".tmp", e2e)
    log(f"build: {e2e}, {kubectl}")
    return 0


def find_tree(a):
    """The Kubernetes source tree: --tree, else the one `build` extracted."""
    if getattr(a, "tree", None):
        return os.path.abspath(a.tree)
    src = os.path.join(os.path.abspath(a.cache), "src")
    if not os.path.exists(os.path.join(src, ".extracted")):
        return None
    trees = [d for d in glob.glob(os.path.join(src, "kubernetes-*")) if os.path.isdir(d)]
    return trees[0] if trees else None


# ---------------------------------------------------------------------------------------------
# images: OCI archives of the images the conformance tests run, built with `rk3s image build`
# ---------------------------------------------------------------------------------------------

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
mail:x:8:
wheel:x:10:root
www-data:x:33:
users:x:100:
nogroup:x:65534:
"""


def busybox_root(root):
    """A root filesystem of Debian's static busybox with every applet linked in place (as the
    busybox image), users and groups as in Docker's busybox image."""
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "root", "home", "tmp", "var",
              "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    applets = run_cmd(["/bin/busybox", "--list-full"], capture_output=True, text=True).stdout.split()
    for a in applets:
        if a in ("bin/busybox", "linuxrc"):
            continue
        p = os.path.join(root, a)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if not os.path.lexists(p):
            os.symlink("/bin/busybox", p)
    for name, text in (("passwd", PASSWD), ("group", GROUP), ("nsswitch.conf", "hosts: files dns\n"),
                       ("hosts", ""), ("resolv.conf", ""), ("hostname", "")):
        with open(os.path.join(root, "etc", name), "w") as f:
            f.write(text)


def add_binary(root, src, dst=None):
    """Copies a host binary into root at dst (default: its own path) with every shared library
    ldd names, at the same paths."""
    dst = dst or src
    target = os.path.join(root, dst.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        os.remove(target)
    shutil.copy2(src, target)
    r = subprocess.run(["ldd", src], capture_output=True, text=True)
    for lib in re.findall(r"(/\S+)", r.stdout if r.returncode == 0 else ""):
        t = os.path.join(root, lib.lstrip("/"))
        if not os.path.exists(t):
            os.makedirs(os.path.dirname(t), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), t)


def deb_binary(cache, package, path):
    """A binary of a Debian package without installing it (apt-get download, dpkg-deb -x)."""
    d = os.path.join(cache, "debs", package)
    p = os.path.join(d, path.lstrip("/"))
    if not os.path.exists(p):
        os.makedirs(d, exist_ok=True)
        if subprocess.run(["apt-get", "download", package], cwd=d, capture_output=True).returncode != 0:
            run_cmd(["apt-get", "update"], capture_output=True)  # a fresh machine may have no lists yet
            run_cmd(["apt-get", "download", package], cwd=d, capture_output=True)
        debs = glob.glob(os.path.join(d, f"{package}_*.deb"))
        if not debs:
            raise SystemExit(f"apt-get download {package}: no .deb")
        run_cmd(["dpkg-deb", "-x", debs[0], d])
    return p


def find_rk3s(arg, required=True):
    """The rk3s binary: --rk3s, else the repository's target/release/rk3s, else PATH."""
    for c in ([arg] if arg else []) + [os.path.join(REPO, "target", "release", "rk3s"), shutil.which("rk3s") or ""]:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    if required:
        raise SystemExit(NO_RK3S)
    return None


def archive_tags(path):
    """Image names an OCI archive holds (its index.json's io.containerd.image.name)."""
    try:
        with tarfile.open(path) as tf:
            f = tf.extractfile("index.json")
            index = json.load(f) if f else {}
    except (OSError, KeyError, ValueError, tarfile.TarError):
        return []
    out = []
    for m in index.get("manifests", []) if isinstance(index, dict) else []:
        name = (m.get("annotations") or {}).get("io.containerd.image.name") if isinstance(m, dict) else None
        if isinstance(name, str):
            out.append(name)
    return out


def archive_name(tag):
    """File name of an image's archive."""
    return re.sub(r"[/:]", "_", tag) + ".tar"


class ImageBuilder:
    """Builds the images the 1.20 conformance tests use (see README.md for what is real and
    what is a stand-in) into <images>/archives, skipping archives that exist."""

    def __init__(self, tree, images, cache, rk3s, force=False):
        self.tree, self.cache, self.rk3s, self.force = tree, cache, rk3s, force
        self.src = os.path.join(images, "src")
        self.archives = os.path.join(images, "archives")
        os.makedirs(self.src, exist_ok=True)
        os.makedirs(self.archives, exist_ok=True)
        self.env, self.gk = gopath_env(tree, cache)
        self.env["CGO_ENABLED"] = "0"

    def want(self, tag):
        """Whether the image's archive is to be built (checked before its root is built)."""
        need = self.force or not os.path.exists(os.path.join(self.archives, archive_name(tag)))
        if need and not self.rk3s:
            raise SystemExit(NO_RK3S)
        return need

    def pack(self, root, tag, *args):
        out = os.path.join(self.archives, archive_name(tag))
        if not self.rk3s:
            raise SystemExit(NO_RK3S)
        run_cmd([self.rk3s, "image", "build", "--from", root, "--tag", tag, "--output", out + ".tmp"] + list(args),
                capture_output=True)
        os.rename(out + ".tmp", out)
        log(f"image {tag}: {os.path.getsize(out) // 1024} KiB")

    def go_binary(self, name, pkg, extra_dir=None):
        out = os.path.join(self.src, name + "-bin")
        if not os.path.exists(out):
            go(self.env, extra_dir or self.gk, ["build", "-ldflags", "-s -w", "-o", out, pkg], f"go build {name}")
        return out

    def dns_tools(self, root):
        """dig, nslookup (bind9) and getent (glibc), which the DNS tests' probes run."""
        for b in ("/usr/bin/dig", "/usr/bin/nslookup", "/usr/bin/getent"):
            if os.path.exists(b):
                link = os.path.join(root, b.lstrip("/"))
                if os.path.lexists(link):
                    os.remove(link)
                add_binary(root, b)

    def agnhost_root(self):
        root = os.path.join(self.src, "agnhost")
        if os.path.exists(os.path.join(root, ".done")) and not self.force:
            return root
        binary = self.go_binary("agnhost", "./test/images/agnhost")
        busybox_root(root)
        os.makedirs(os.path.join(root, "uploads"), exist_ok=True)
        shutil.copy2(binary, os.path.join(root, "agnhost"))
        os.symlink("agnhost", os.path.join(root, "agnhost-2"))
        for f in ("localhost.crt", "localhost.key"):
            shutil.copy2(os.path.join(self.tree, "test", "images", "agnhost", "porter", f), os.path.join(root, f))
        # e2e runs curl, bash, `nc -z -u`/`-t` (OpenBSD netcat) and dig in agnhost pods
        add_binary(root, "/usr/bin/curl")
        add_binary(root, "/bin/bash")
        add_binary(root, deb_binary(self.cache, "netcat-openbsd", "/bin/nc.openbsd"), "/usr/bin/nc")
        for p in ("bin/nc", "usr/bin/nc.openbsd"):
            if os.path.lexists(os.path.join(root, p)):
                os.remove(os.path.join(root, p))
        self.dns_tools(root)
        # busybox's ash runs its own applets before PATH (`sh -c "nc ..."` would get busybox nc)
        os.remove(os.path.join(root, "bin", "sh"))
        os.symlink("bash", os.path.join(root, "bin", "sh"))
        touch(os.path.join(root, ".done"))
        return root

    def build_all(self):
        ports = lambda *ps: [x for p in ps for x in ("--port", str(p))]  # noqa: E731
        tag = "k8s.gcr.io/e2e-test-images/agnhost:2.21"
        if self.want(tag):
            self.pack(self.agnhost_root(), tag, "--entrypoint", "/agnhost", "--cmd", "pause", *ports(80, 8080, 8081, 9376))
        for name in ("kitten", "nautilus"):
            tag = f"gcr.io/kubernetes-e2e-test-images/{name}:1.0"
            if not self.want(tag):
                continue
            root = os.path.join(self.src, name)
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(self.agnhost_root(), root, symlinks=True)
            html = os.path.join(self.tree, "test", "images", name, "html")
            for f in os.listdir(html):
                shutil.copy2(os.path.join(html, f), os.path.join(root, f))
            self.pack(root, tag, "--entrypoint", "/agnhost", "--cmd", "test-webserver", *ports(80))
        simple = [("busybox", "docker.io/library/busybox:1.29", ["--cmd", "sh"]),
                  ("nonroot", "gcr.io/kubernetes-e2e-test-images/nonroot:1.0", ["--user", "1234", "--cmd", "sh"])]
        for name, tag, args in simple:
            if self.want(tag):
                root = os.path.join(self.src, name)
                busybox_root(root)
                self.pack(root, tag, *args)
        tag = "k8s.gcr.io/pause:3.2"
        if self.want(tag):
            root = os.path.join(self.src, "pause")
            os.makedirs(root, exist_ok=True)
            run_cmd(["gcc", "-Os", "-static", "-DVERSION=3.2", "-o", os.path.join(root, "pause"),
                     os.path.join(self.tree, "build", "pause", "linux", "pause.c")], capture_output=True)
            run_cmd(["strip", os.path.join(root, "pause")])
            self.pack(root, tag, "--entrypoint", "/pause")
        self.web_standins()
        tag = "gcr.io/kubernetes-e2e-test-images/nonewprivs:1.0"
        if self.want(tag):
            root = os.path.join(self.src, "nonewprivs")
            busybox_root(root)
            nnp = os.path.join(root, "usr", "local", "bin", "nnp")
            go(self.env, os.path.join(self.gk, "test", "images", "nonewprivs"),
               ["build", "-ldflags", "-s -w", "-o", nnp, "nnp.go"], "go build nnp")
            os.chmod(nnp, 0o4755)
            self.pack(root, tag, "--cmd", "nnp")
        tag = "gcr.io/kubernetes-e2e-test-images/jessie-dnsutils:1.0"
        if self.want(tag):
            root = os.path.join(self.src, "jessie-dnsutils")
            busybox_root(root)
            add_binary(root, "/bin/bash")
            self.dns_tools(root)
            self.pack(root, tag, "--cmd", "sh")
        self.sample_apiserver()
        return sorted(os.listdir(self.archives))

    def web_standins(self):
        """httpd and nginx: busybox httpd on port 80 serving their document roots."""
        sites = [("httpd", ["2.4.38-alpine", "2.4.39-alpine"], "/usr/local/apache2/htdocs",
                  "/usr/local/bin/httpd-foreground", "<html><body><h1>It works!</h1></body></html>\n",
                  ["--cmd", "httpd-foreground", "--workdir", "/usr/local/apache2",
                   "--env", "PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
                 ("nginx", ["1.14-alpine", "1.15-alpine"], "/usr/share/nginx/html", "/usr/sbin/nginx",
                  "<html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>\n",
                  ["--cmd", '["nginx","-g","daemon off;"]',
                   "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])]
        for name, versions, docroot, launcher, index, args in sites:
            tags = [f"docker.io/library/{name}:{v}" for v in versions]
            if not any(self.want(t) for t in tags):
                continue
            root = os.path.join(self.src, name)
            busybox_root(root)
            os.makedirs(os.path.join(root, docroot.lstrip("/")), exist_ok=True)
            with open(os.path.join(root, docroot.lstrip("/"), "index.html"), "w") as f:
                f.write(index)
            lp = os.path.join(root, launcher.lstrip("/"))
            if os.path.lexists(lp):
                os.remove(lp)
            with open(lp, "w") as f:
                f.write(f"#!/bin/sh\n# rk3s conformance stand-in for {name}: busybox httpd on port 80\n"
                        f"exec /bin/busybox httpd -f -p 80 -h {docroot}\n")
            os.chmod(lp, 0o755)
            for t in tags:
                if self.want(t):
                    self.pack(root, t, "--port", "80", *args)

    def sample_apiserver(self):
        """The aggregated API server test: sample-apiserver from the tree and etcd (Debian's
        etcd-server 3.4) as the image etcd:3.4.13-0 (/usr/local/bin/etcd)."""
        tag = "gcr.io/kubernetes-e2e-test-images/sample-apiserver:1.17"
        if self.want(tag):
            binary = self.go_binary("sample-apiserver", "./vendor/k8s.io/sample-apiserver")
            root = os.path.join(self.src, "sample-apiserver")
            busybox_root(root)
            shutil.copy2(binary, os.path.join(root, "sample-apiserver"))
            self.pack(root, tag, "--entrypoint", "/sample-apiserver")
        tag = "k8s.gcr.io/etcd:3.4.13-0"
        if self.want(tag):
            etcd = "/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else deb_binary(self.cache, "etcd-server", "/usr/bin/etcd")
            root = os.path.join(self.src, "etcd")
            busybox_root(root)
            add_binary(root, etcd, "/usr/local/bin/etcd")
            self.pack(root, tag, "--entrypoint", "/usr/local/bin/etcd", "--port", "2379")


def cmd_images(a):
    """images subcommand."""
    cache = os.path.abspath(a.cache)
    tree = find_tree(a)
    if not tree or not os.path.isdir(tree):
        raise SystemExit("no Kubernetes 1.20 source tree: run `build` first (or pass --tree)")
    ensure_packages(BUILD_PACKAGES + IMAGE_PACKAGES)
    fix_reflect2(tree)
    images = os.path.abspath(a.images or os.path.join(cache, "images"))
    b = ImageBuilder(tree, images, cache, find_rk3s(a.rk3s, required=False), force=a.force)
    names = b.build_all()
    log(f"images: {len(names)} archives in {b.archives}")
    return 0


# ---------------------------------------------------------------------------------------------
# run: one agent-mode rk3s server, the tests, clean-up
# ---------------------------------------------------------------------------------------------

class Interrupted(Exception):
    """SIGINT/SIGTERM during a run."""


class Node:
    """An agent-mode `rk3s server` with its own data dir, containerd state dir and port, for
    the life of the node lock."""

    def __init__(self, rk3s, workdir, port, state_dir, lock_path, kubectl, server_args):
        self.rk3s, self.port, self.kubectl, self.server_args = rk3s, port, kubectl, server_args
        self.dir = os.path.join(workdir, "node")
        self.data = os.path.join(self.dir, "data")
        self.kubeconfig = os.path.join(self.dir, "kubeconfig.yaml")
        self.state = state_dir
        self.lock_path = lock_path
        self.lock_fd = None
        self.locked = False
        self.proc = None

    def lock(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.lock_path)), exist_ok=True)
        self.lock_fd = open(self.lock_path, "a")
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for the node lock {self.lock_path} (another agent-mode rk3s runs on this machine)")
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        self.locked = True
        log(f"node lock {self.lock_path} taken")

    def unlock(self):
        if self.lock_fd:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            self.lock_fd.close()
            self.lock_fd = None
            if self.locked:
                log("node lock released")
            self.locked = False

    def start(self, archives, timeout=300):
        os.makedirs(os.path.join(self.data, "agent", "images"), exist_ok=True)
        for f in archives:
            shutil.copy2(f, os.path.join(self.data, "agent", "images", os.path.basename(f)))
        if os.path.exists(self.kubeconfig):
            os.remove(self.kubeconfig)
        cmd = [self.rk3s, "server", "--data-dir", self.data, "--containerd-state-dir", self.state,
               "--https-listen-port", str(self.port), "--write-kubeconfig", self.kubeconfig] + self.server_args
        log(f"starting rk3s server on :{self.port} (data {self.data}, containerd state {self.state}, "
            f"{len(archives)} image archives)")
        with open(os.path.join(self.dir, "server.log"), "ab") as out:
            # the server inherits the locked file: if this script dies, the lock stays held
            # for as long as the node does
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, pass_fds=(self.lock_fd.fileno(),))
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"rk3s server exited ({self.proc.returncode}); see {self.dir}/server.log")
            if os.path.exists(self.kubeconfig) and self.node_ready():
                log(f"node Ready after {time.time() - t0:.0f}s")
                self.wait_images([t for f in archives for t in archive_tags(f)])
                return
            time.sleep(1)
        raise SystemExit(f"node not Ready after {timeout}s; see {self.dir}/server.log")

    def wait_images(self, tags, timeout=180):
        """Waits until the node lists every imported image (tests would otherwise pull)."""
        t0 = time.time()
        missing = set(tags)
        while missing and time.time() - t0 < timeout:
            r = subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, "--request-timeout=10s", "get", "nodes",
                                "-o", "jsonpath={.items[*].status.images[*].names[*]}"], capture_output=True, text=True)
            if r.returncode == 0:
                missing -= set(r.stdout.split())
            if missing:
                time.sleep(2)
        if missing:
            log("WARNING: the node does not list these images: " + " ".join(sorted(missing)))
        else:
            log(f"node lists all {len(set(tags))} images")

    def node_ready(self):
        r = subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, "--request-timeout=10s", "get", "nodes",
                            "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"],
                           capture_output=True, text=True)
        return r.returncode == 0 and "True" in r.stdout.split()

    def stop(self):
        """Stops the server (by PID), runs `rk3s killall` for this data and state dir, and
        returns what is left over (empty when clean)."""
        if self.proc and self.proc.poll() is None:
            log(f"stopping rk3s server (pid {self.proc.pid})")
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log("rk3s server still alive after 60s: SIGKILL")
                self.proc.kill()
                self.proc.wait()
        r = subprocess.run([self.rk3s, "killall", "--data-dir", self.data, "--containerd-state-dir", self.state],
                           capture_output=True, text=True)
        with open(os.path.join(self.dir, "killall.log"), "w") as f:
            f.write(r.stdout + r.stderr + f"\nexit code {r.returncode}\n")
        left = leftovers([self.data, self.state])
        if r.returncode != 0:
            left.insert(0, f"rk3s killall exited with {r.returncode} (see {self.dir}/killall.log)")
        for item in left:
            log("LEFT OVER: " + item)
        if not left:
            log("rk3s killall: nothing left over")
        return left


# Agent nodes (--agents N): each `rk3s agent` runs in a network namespace of its own, joined to
# the host by a veth pair: host end 198.18.(AGENT_NET_BASE+i).1/24, namespace end .2 (the node
# IP), default route through the host end. The server stays on the host network, so the agent
# reaches the API server and supervisor at the server's node IP through that route, and
# flannel's VXLAN runs between the server's node IP and the veth addresses.
AGENT_NET_BASE = 201
AGENT_SUBNET = "198.18"


def agent_count(cmd, given):
    """The number of agent nodes: --agents when given, else the subcommand's default."""
    n = DEFAULT_AGENTS.get(cmd, 0) if given is None else given
    if not 0 <= n <= 50:
        raise SystemExit(f"--agents {n}: from 0 to 50")
    return n


def agent_network(i, port):
    """Names and addresses of agent i's (0-based) namespace and veth pair. Names carry the
    port so that they are this tool's; interface names stay within Linux's 15 characters."""
    if not 0 <= i < 50:
        raise ValueError(f"agent index {i} out of range (at most 50 agents)")
    net = f"{AGENT_SUBNET}.{AGENT_NET_BASE + i}"
    return {"netns": f"rk3sconf-{port}-a{i}", "host_if": f"rk3scf{port % 10000}a{i}"[:15],
            "host_ip": f"{net}.1", "ip": f"{net}.2", "prefix": 24, "name": f"conformance-agent-{i + 1}"}


def network_setup_cmds(n):
    """The `ip` commands that create agent network `n` (from agent_network)."""
    ns, hif = n["netns"], n["host_if"]
    return [["ip", "netns", "add", ns],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", ns],
            ["ip", "addr", "add", f"{n['host_ip']}/{n['prefix']}", "dev", hif],
            ["ip", "link", "set", hif, "up"],
            ["ip", "-n", ns, "addr", "add", f"{n['ip']}/{n['prefix']}", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "route", "add", "default", "via", n["host_ip"]]]


def rk3s_nft_tables(text):
    """(family, name) of the nftables tables named rk3s* in `nft list tables` output."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == "table" and f[2].startswith("rk3s"):
            out.append((f[1], f[2]))
    return out


def network_leftovers(netns_names=(), links=(), host_links=("cni0", "flannel.1"), before=()):
    """What a run left of the network: these namespaces, these host interfaces, and the pod
    network's host interfaces (`host_links`) and rk3s's nftables tables on the host that were
    not there `before` (this function's answer before the node started: another node's)."""
    return new_leftovers(_network_state(netns_names, links, host_links), before, netns_names, links)


def new_leftovers(now, before, netns_names, links):
    """The items of `now` that are not in `before`, and always those naming one of our own
    namespaces or veths (they are recreated by every run, so never another node's)."""
    ours = {f"network namespace {ns}" for ns in netns_names} | {f"host interface {l}" for l in links}
    return [x for x in now if x in ours or x not in set(before)]


def _network_state(netns_names, links, host_links):
    out = []
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    present = {l.split()[0] for l in r.stdout.splitlines() if l.strip()}
    out += [f"network namespace {ns}" for ns in netns_names if ns in present]
    out += [f"host interface {l}" for l in list(links) + list(host_links) if os.path.exists(f"/sys/class/net/{l}")]
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    out += [f"nftables table {fam} {name}" for fam, name in rk3s_nft_tables(r.stdout)]
    return out


class Agent:
    """An `rk3s agent` node in its own network namespace, with its own data dir, containerd
    state dir and (under it) runtime dir, joined to the run's server."""

    def __init__(self, i, rk3s, workdir, port, kubectl, kubeconfig, agent_args):
        self.i, self.rk3s, self.kubectl, self.kubeconfig, self.agent_args = i, rk3s, kubectl, kubeconfig, agent_args
        self.net = agent_network(i, port)
        self.name = self.net["name"]
        self.dir = os.path.join(workdir, f"agent-{i + 1}")
        self.data = os.path.join(self.dir, "data")
        self.state = f"/run/rk3s-conformance-{port}-a{i + 1}"
        self.proc = None
        self.netns_made = False

    def nsenter(self):
        return ["nsenter", f"--net=/run/netns/{self.net['netns']}"]

    def setup_network(self):
        if os.path.exists(f"/run/netns/{self.net['netns']}"):
            log(f"removing the namespace {self.net['netns']} a previous run left")
            subprocess.run(["ip", "netns", "del", self.net["netns"]], capture_output=True)
        if os.path.exists(f"/sys/class/net/{self.net['host_if']}"):
            subprocess.run(["ip", "link", "del", self.net["host_if"]], capture_output=True)
        self.netns_made = True
        for cmd in network_setup_cmds(self.net):
            run_cmd(cmd, capture_output=True, text=True)

    def start(self, archives, server_url, token, lock_fd):
        self.setup_network()
        images = os.path.join(self.data, "agent", "images")
        os.makedirs(images, exist_ok=True)
        for f in archives:
            dst = os.path.join(images, os.path.basename(f))
            if not os.path.exists(dst):
                try:
                    os.link(f, dst)  # the archives are only read: no 400 MB copy per agent
                except OSError:
                    shutil.copy2(f, dst)
        cmd = self.nsenter() + [self.rk3s, "agent", "--server", server_url,
                                "--token", token, "--data-dir", self.data, "--containerd-state-dir", self.state,
                                "--node-ip", self.net["ip"], "--node-name", self.name] + self.agent_args
        log(f"starting rk3s agent {self.name} in namespace {self.net['netns']} ({self.net['ip']}, data {self.data}, "
            f"containerd state {self.state})")
        with open(os.path.join(self.dir, "agent.log"), "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, pass_fds=(lock_fd.fileno(),))

    def ready(self):
        r = subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, "--request-timeout=10s", "get", "node",
                            self.name, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"],
                           capture_output=True, text=True)
        return r.returncode == 0 and r.stdout.strip() == "True"

    def images(self):
        r = subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, "--request-timeout=10s", "get", "node",
                            self.name, "-o", "jsonpath={.status.images[*].names[*]}"], capture_output=True, text=True)
        return set(r.stdout.split()) if r.returncode == 0 else set()

    def stop_process(self):
        if self.proc and self.proc.poll() is None:
            log(f"stopping rk3s agent {self.name} (pid {self.proc.pid})")
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"rk3s agent {self.name} still alive after 60s: SIGKILL")
                self.proc.kill()
                self.proc.wait()

    def clean(self):
        """`rk3s killall` for this node inside its namespace, then the namespace (with the
        veth pair, cni0, flannel.1 and the nftables tables in it); returns what is left."""
        left = []
        if self.proc is not None:
            r = subprocess.run(self.nsenter() + [self.rk3s, "killall", "--data-dir", self.data,
                                                 "--containerd-state-dir", self.state], capture_output=True, text=True)
            with open(os.path.join(self.dir, "killall.log"), "w") as f:
                f.write(r.stdout + r.stderr + f"\nexit code {r.returncode}\n")
            if r.returncode != 0:
                left.append(f"rk3s killall of {self.name} exited with {r.returncode} (see {self.dir}/killall.log)")
        if self.netns_made:
            subprocess.run(["ip", "netns", "del", self.net["netns"]], capture_output=True)
            if os.path.exists(f"/sys/class/net/{self.net['host_if']}"):
                subprocess.run(["ip", "link", "del", self.net["host_if"]], capture_output=True)
        left += leftovers([self.data, self.state])
        for item in left:
            log(f"LEFT OVER ({self.name}): " + item)
        if not left:
            log(f"rk3s killall of {self.name} and its namespace: nothing left over")
        return left


def start_agents(agents, node, archives, timeout=300):
    """Starts the agents against the running server `node` and waits until each is Ready and
    lists every imported image."""
    r = subprocess.run([node.kubectl, "--kubeconfig", node.kubeconfig, "get", "nodes", "-o",
                        "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}"],
                       capture_output=True, text=True)
    server_ip = r.stdout.split()[0] if r.returncode == 0 and r.stdout.split() else None
    if not server_ip:
        raise SystemExit(f"no InternalIP on the server's node: {r.stderr.strip()}")
    url = f"https://{server_ip}:{node.port}"
    token = read_text(os.path.join(node.data, "server", "token")).strip()
    for ag in agents:
        ag.start(archives, url, token, node.lock_fd)
    tags = {t for f in archives for t in archive_tags(f)}
    t0 = time.time()
    pending = list(agents)
    while pending and time.time() - t0 < timeout:
        for ag in list(pending):
            if ag.proc.poll() is not None:
                raise SystemExit(f"rk3s agent {ag.name} exited ({ag.proc.returncode}); see {ag.dir}/agent.log")
            if ag.ready() and not tags - ag.images():
                log(f"agent {ag.name} Ready with all {len(tags)} images after {time.time() - t0:.0f}s")
                pending.remove(ag)
        if pending:
            time.sleep(2)
    if pending:
        raise SystemExit(f"agents not Ready with their images after {timeout}s: "
                         + ", ".join(f"{ag.name} (see {ag.dir}/agent.log)" for ag in pending))


def ancestors(pid):
    """pid and its parents (their command lines may name the paths too)."""
    out = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def leftovers(paths):
    """Processes whose command line names one of paths, and mounts under them."""
    out = []
    mine = ancestors(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(p in cmd for p in paths):
            out.append(f"process {pid}: {cmd[:200]}")
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].replace("\\040", " ")
                if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in paths):
                    out.append(f"mount {mp}")
    except OSError:
        pass
    return out


def list_tests(e2e, workdir):
    """Every [Conformance] test, from a ginkgo dry run (cached in <workdir>/tests.txt)."""
    path = os.path.join(workdir, "tests.txt")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        return [l for l in read_text(path).splitlines() if l.strip()]
    dry = os.path.join(workdir, "dryrun.log")
    with open(dry, "w") as f:
        subprocess.run([e2e, "--provider=skeleton", "--kubeconfig=/dev/null", r"--ginkgo.focus=\[Conformance\]",
                        "--ginkgo.dryRun", "--ginkgo.noColor", "--ginkgo.v"], stdout=f, stderr=subprocess.STDOUT)
    tests = sorted(list_from_dryrun(read_text(dry).splitlines()))  # ginkgo's order is random
    if not tests:
        raise SystemExit(f"the dry run listed no tests; see {dry}")
    with open(path, "w") as f:
        f.write("".join(t + "\n" for t in tests))
    return tests


class Pool:
    """Runs tests, one e2e.test process each, `jobs` at a time; appends a record per test to
    results.jsonl and prints a progress line per finished test."""

    def __init__(self, a, e2e, kubectl, kubeconfig, results_dir, selected, t0):
        self.a, self.e2e, self.kubectl, self.kubeconfig = a, e2e, kubectl, kubeconfig
        self.dir = results_dir
        self.logs = os.path.join(results_dir, "tests")
        os.makedirs(self.logs, exist_ok=True)
        self.results = os.path.join(results_dir, "results.jsonl")
        self.lock = threading.Lock()
        self.procs = {}
        self.stopping = False
        self.total, self.t0 = len(selected), t0
        self.counts = collections.Counter()
        for name, rec in read_results(self.results).items():
            if name in selected:
                self.counts[rec.get("status")] += 1

    def e2e_args(self, focus, n):
        return [self.e2e, "--provider=skeleton", f"--kubeconfig={self.kubeconfig}", f"--kubectl-path={self.kubectl}",
                "--minStartupPods=0", f"--ginkgo.focus={focus}", "--ginkgo.noColor", "--ginkgo.v",
                "--ginkgo.flakeAttempts=1", "--ginkgo.slowSpecThreshold=600", "--disable-log-dump",
                f"--report-dir={os.path.join(self.dir, 'junit')}", f"--report-prefix={n:03d}"] + self.a.e2e_args

    def run_one(self, n, name):
        logf = os.path.join(self.logs, f"{n:03d}.log")
        # ginkgo matches the focus against "[Top Level] " + the test's name: anchor the end only
        cmd = self.e2e_args(go_regexp_quote(name) + "$", n)
        t0 = time.time()
        timed_out = False
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        with open(logf, "w") as lf:
            lf.write(f"# {name}\n")
            lf.flush()
            p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True)
            with self.lock:
                self.procs[n] = p
            try:
                p.wait(timeout=self.a.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                stop_group(p)
            with self.lock:
                self.procs.pop(n, None)
        secs = time.time() - t0
        with open(logf, errors="replace") as f:
            lines = f.readlines()
        tail = next((l.strip() for l in reversed(lines) if l.strip()), "")
        status, reason = classify(parse_test_log(lines), timed_out, p.returncode, secs, tail)
        if self.stopping and status != "passed":
            return  # interrupted: no result, the test reruns when the run resumes
        rec = {"name": name, "status": status, "seconds": round(secs, 1), "reason": reason,
               "log": os.path.relpath(logf, self.dir), "rc": p.returncode}
        with self.lock:
            with open(self.results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            self.counts[status] += 1
            c = self.counts
            done = sum(c.values())
            print(f"{time.strftime('%H:%M:%S')} [{done}/{self.total} {fmt_secs(time.time() - self.t0)}] "
                  f"passed {c['passed']} failed {c['failed'] + c['timeout'] + c['error']} | "
                  f"{status:7s} {secs:5.0f}s {name}", flush=True)

    def run(self, tests, index, jobs):
        queue = collections.deque(tests)

        def worker():
            while True:
                with self.lock:
                    if self.stopping or not queue:
                        return
                    t = queue.popleft()
                self.run_one(index[t], t)

        threads = []
        for i in range(max(1, jobs)):
            th = threading.Thread(target=worker, daemon=True)
            th.start()
            threads.append(th)
            if i + 1 < jobs:
                time.sleep(1)  # staggered starts: the first API calls of e2e.test are heavy
        try:
            for th in threads:
                while th.is_alive():
                    th.join(timeout=1)
        except (KeyboardInterrupt, Interrupted):
            self.stopping = True
            log("interrupted: stopping the running tests")
            with self.lock:
                procs = list(self.procs.values())
            for p in procs:
                stop_group(p, grace=20)
            for th in threads:
                th.join(timeout=90)
            raise


def stop_group(p, grace=60):
    """SIGINT to a test's process group (ginkgo then deletes its namespaces), SIGKILL after
    `grace` seconds."""
    try:
        os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=grace)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def resolve_binaries(a):
    """e2e.test and kubectl: --e2e/--kubectl, else the ones `build` made."""
    binp = os.path.join(os.path.abspath(a.cache), "bin")
    e2e = os.path.abspath(a.e2e) if a.e2e else os.path.join(binp, "e2e.test")
    kubectl = os.path.abspath(a.kubectl) if a.kubectl else os.path.join(binp, "kubectl")
    for p in (e2e, kubectl):
        if not os.access(p, os.X_OK):
            raise SystemExit(f"{p} missing: run `build` first (or pass --e2e / --kubectl)")
    return e2e, kubectl


def cmd_run(a):
    """run subcommand."""
    e2e, kubectl = resolve_binaries(a)
    rk3s = find_rk3s(a.rk3s)
    cache = os.path.abspath(a.cache)
    images = os.path.abspath(a.images or os.path.join(cache, "images"))
    archives = sorted(glob.glob(os.path.join(images, "archives", "*.tar")) if os.path.isdir(os.path.join(images, "archives"))
                      else glob.glob(os.path.join(images, "*.tar")))
    if not archives:
        raise SystemExit(f"no image archives in {images}/archives: run `images` first (or pass --images)")
    workdir = os.path.abspath(a.workdir or os.path.join(cache, "runs", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.join(workdir, "node"), exist_ok=True)
    tests = list_tests(e2e, workdir)
    selected = select_tests(tests, a.only, a.exclude)
    index = {t: i for i, t in enumerate(tests)}
    results_dir = os.path.join(workdir, "results")
    done = read_results(os.path.join(results_dir, "results.jsonl"))
    todo = [t for t in selected if t not in done]
    parallel = order_tests([t for t in todo if "[Serial]" not in t], a.order, previous_durations(cache, workdir))
    serial = [t for t in todo if "[Serial]" in t]
    with open(os.path.join(workdir, "selection.txt"), "w") as f:
        f.write("".join(t + "\n" for t in selected))
    log(f"{len(tests)} conformance tests, {len(selected)} selected, {len(selected) - len(todo)} already done, "
        f"{len(parallel)} to run in parallel ({a.jobs} jobs), {len(serial)} [Serial]; workdir {workdir}")
    if not parallel and not serial:
        write_report(workdir, selected)
        return 0
    state = a.containerd_state_dir or f"/run/rk3s-conformance-{a.port}"
    node = Node(rk3s, workdir, a.port, state, a.lock, kubectl, a.server_arg)
    agents = [Agent(i, rk3s, workdir, a.port, kubectl, node.kubeconfig, a.agent_arg) for i in range(a.agents)]
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump({"rk3s": rk3s, "e2e": e2e, "kubectl": kubectl, "images": archives, "e2e_args": a.e2e_args,
                   "jobs": a.jobs, "agents": a.agents, "timeout": a.timeout, "only": a.only, "exclude": a.exclude,
                   "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)

    def on_term(signum, frame):
        raise Interrupted()
    old = signal.signal(signal.SIGTERM, on_term)
    left, interrupted, net_before = [], False, []
    t0 = time.time()
    try:
        node.lock()
        net_before = network_leftovers(host_links=("cni0", "flannel.1"))
        for item in net_before:
            log(f"NOTE: before the run already on the host: {item} (not counted as left over)")
        node.start(archives)
        if agents:
            start_agents(agents, node, archives)
        pool = Pool(a, e2e, kubectl, node.kubeconfig, results_dir, set(selected), time.time())
        if parallel:
            pool.run(parallel, index, a.jobs)
            log(f"parallel phase done: {fmt_secs(time.time() - t0)}")
        if serial:
            pool.run(serial, index, 1)
            log(f"[Serial] phase done: {fmt_secs(time.time() - t0)}")
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
    finally:
        try:
            for ag in agents:
                ag.stop_process()
            for ag in agents:
                left += ag.clean()
            if node.proc is not None:
                left += node.stop()
                # the pod network on the host and the agents' namespaces and veths
                net = network_leftovers([ag.net["netns"] for ag in agents], [ag.net["host_if"] for ag in agents],
                                        before=net_before)
                for item in net:
                    log("LEFT OVER: " + item)
                left += net
        finally:
            node.unlock()
            signal.signal(signal.SIGTERM, old)
    if node.proc is not None and not left and not a.keep_data:
        # the node's state (image copies, containerd's content, pod volumes): ~1.5 GB a run
        shutil.rmtree(node.data, ignore_errors=True)
        for ag in agents:
            shutil.rmtree(ag.data, ignore_errors=True)
    summary = write_report(workdir, selected)
    summary["leftovers"] = left
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"run took {fmt_secs(time.time() - t0)}; report: {workdir}/report.md, {workdir}/summary.json, "
        f"failure details: {workdir}/failures.txt")
    if interrupted:
        log("interrupted: rerun with --workdir " + workdir + " to resume")
        return 130
    return 1 if left else 0


def write_report(workdir, tests=None, out=None):
    """Writes report.md, failures.txt and summary.json of a run folder (into `out`, default the
    folder), prints the report and returns the summary. Reads any folder laid out as this
    tool's: tests.txt (or selection.txt), results/results.jsonl with name/status/log records."""
    out = out or workdir
    os.makedirs(out, exist_ok=True)
    if tests is None:
        sel = os.path.join(workdir, "selection.txt")
        lst = sel if os.path.exists(sel) else os.path.join(workdir, "tests.txt")
        tests = read_text(lst).splitlines() if os.path.exists(lst) else []
        tests = [t for t in tests if t]
    results_dir = os.path.join(workdir, "results")
    results = read_results(os.path.join(results_dir, "results.jsonl"))
    blocks = {}
    for name, rec in results.items():
        if rec.get("status") == "passed":
            continue
        lp = rec.get("log", "")
        lp = lp if os.path.isabs(lp) else os.path.join(results_dir, lp)
        try:
            with open(lp, errors="replace") as f:
                lines = f.readlines()
        except OSError:
            lines = []
        parsed = parse_test_log(lines)
        if lines or not rec.get("reason"):  # from the log when there is one: the newest parsing
            tail = next((l.strip() for l in reversed(lines) if l.strip()), "")
            st = rec.get("status")
            rec["reason"] = classify(parsed, st == "timeout", rec.get("rc", 1), rec.get("seconds") or 0, tail)[1]
        blocks[name] = (lp, parsed["block"])
    summary = summarize(tests, results)
    text = render_report(summary)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "failures.txt"), "w") as f:
        for item in summary["failed"]:
            lp, block = blocks.get(item["name"], ("", []))
            f.write(f"=== {item['status'].upper()} {item['name']}\n(log: {lp})\n{item['reason']}\n")
            f.write("\n".join(block) + "\n\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(text, flush=True)
    return summary


def cmd_report(a):
    """report subcommand: the given run folder, else the newest under <cache>/runs."""
    d = a.dir
    if not d:
        runs = run_folders(os.path.abspath(a.cache))
        if not runs:
            raise SystemExit("no run folder: pass one")
        d = runs[-1]
    if not os.path.exists(os.path.join(d, "results", "results.jsonl")):
        raise SystemExit(f"{d}/results/results.jsonl missing: not a run folder")
    summary = write_report(os.path.abspath(d), out=a.out and os.path.abspath(a.out))
    if a.json:
        print(json.dumps({k: summary[k] for k in ("total", "pass_rate", "by_sig")}, indent=1))
    return 0


def cmd_all(a):
    """all subcommand: build, images, run."""
    cmd_build(a)
    cmd_images(a)
    return cmd_run(a)


def parser():
    """The command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", default=DEFAULT_CACHE, help=f"cache dir of every step (default {DEFAULT_CACHE})")
    b = argparse.ArgumentParser(add_help=False)
    b.add_argument("--mirror", help="Debian mirror for the deb-src line (default: the one apt uses)")
    im = argparse.ArgumentParser(add_help=False)
    im.add_argument("--rk3s", help="rk3s binary (default: target/release/rk3s of this repository, then PATH)")
    im.add_argument("--images", help="image folder: archives/ (default <cache>/images)")
    tr = argparse.ArgumentParser(add_help=False)
    tr.add_argument("--tree", help="Kubernetes 1.20.2 source tree (default: the one `build` extracted)")
    ib = argparse.ArgumentParser(add_help=False)
    ib.add_argument("--force", action="store_true", help="rebuild the image archives that exist")
    r = argparse.ArgumentParser(add_help=False)
    r.add_argument("--e2e", help="prebuilt e2e.test (default <cache>/bin/e2e.test)")
    r.add_argument("--kubectl", help="prebuilt kubectl 1.20 (default <cache>/bin/kubectl)")
    r.add_argument("--workdir", help="run folder (default <cache>/runs/DATE-TIME); an existing one resumes")
    r.add_argument("--jobs", type=int, default=6, help="tests at a time in the parallel phase (default 6)")
    r.add_argument("--timeout", type=int, default=720, help="seconds per test (default 720)")
    r.add_argument("--only", action="append", default=[], help="regex: run only the tests it matches (repeatable)")
    r.add_argument("--exclude", action="append", default=[], help="regex: skip the tests it matches (repeatable)")
    r.add_argument("--order", type=lambda s: [p for p in s.split(",") if p], default=DEFAULT_ORDER,
                   help="comma-separated regexes: tests matching the first start first, ...")
    r.add_argument("--e2e-arg", dest="e2e_extra", action="append", default=[],
                   help="extra e2e.test flag, e.g. --e2e-arg=--kube-api-content-type=application/json (repeatable)")
    r.add_argument("--server-arg", action="append", default=[], help="extra `rk3s server` flag (repeatable)")
    r.add_argument("--keep-data", action="store_true",
                   help="keep the node's data dir after the run (default: removed when the clean-up left nothing)")
    r.add_argument("--agents", type=int, default=None,
                   help="agent nodes to start besides the server, each `rk3s agent` in a network namespace of "
                        "its own (agent i=1..N: veth 198.18.(200+i).1/24 on the host, .2 its node IP); the tests that need two "
                        "schedulable nodes run only with >= 1 (default: 0 for run, 1 for all)")
    r.add_argument("--agent-arg", action="append", default=[], help="extra `rk3s agent` flag (repeatable)")
    r.add_argument("--port", type=int, default=26543, help="API server port (default 26543)")
    r.add_argument("--containerd-state-dir", help="containerd state dir (default /run/rk3s-conformance-PORT)")
    r.add_argument("--lock", default=DEFAULT_LOCK,
                   help=f"node lock file, held while the node runs (default {DEFAULT_LOCK})")
    p = argparse.ArgumentParser(prog="conformance.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", parents=[common, b], help="build e2e.test and kubectl 1.20.2").set_defaults(fn=cmd_build)
    sub.add_parser("images", parents=[common, im, tr, ib], help="build the test images").set_defaults(fn=cmd_images)
    sub.add_parser("run", parents=[common, im, r], help="run the conformance tests against rk3s").set_defaults(fn=cmd_run)
    rp = sub.add_parser("report", parents=[common], help="report of a run folder")
    rp.add_argument("dir", nargs="?", help="run folder (default: the newest under <cache>/runs)")
    rp.add_argument("--json", action="store_true", help="also print the JSON totals")
    rp.add_argument("--out", help="write report.md, failures.txt, summary.json here (default: the run folder)")
    rp.set_defaults(fn=cmd_report)
    sub.add_parser("all", parents=[common, b, im, tr, ib, r], help="build + images + run").set_defaults(fn=cmd_all)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    if hasattr(a, "e2e_extra"):
        a.e2e_args = DEFAULT_E2E_ARGS + a.e2e_extra
    if hasattr(a, "agents"):
        a.agents = agent_count(a.cmd, a.agents)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
