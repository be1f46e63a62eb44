//! The kubectl tools on real pods, end to end: `kubectl logs` (follow, tail, since,
//! timestamps, previous, containers), `kubectl exec -it` through a pty (tty, TERM, window
//! resize), `kubectl cp` both ways, `kubectl debug` (ephemeral containers), and the
//! kubelet API's authorization (bearer token -> TokenReview, SubjectAccessReview).
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins (skips otherwise);
//! runs through `common::node::run_node_test`, which leaves nothing behind.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::node::*;
use common::{kubectl_bin, wait_for, Cluster};

fn kubectl_child(c: &Cluster, args: &[&str]) -> Child {
    Command::new(kubectl_bin())
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl")
}

/// Reads the child's stdout on a thread and sends everything seen so far after each read.
fn stream_stdout(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut seen = String::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if tx.send(seen.clone()).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits until the streamed output satisfies `pred`; returns it and the time it took.
fn recv_until(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok(s) if pred(&s) => return Some(s),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// The numbers N of the `line-N` lines of `s`.
fn line_numbers(s: &str) -> Vec<u64> {
    s.lines()
        .filter_map(|l| {
            l.rsplit("line-")
                .next()
                .filter(|_| l.contains("line-"))
                .and_then(|n| n.trim().parse().ok())
        })
        .collect()
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2024-01-02T03:04:05.123Z`).
fn epoch_secs(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let hms = time.split('.').next()?;
    let h: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || h.len() != 3 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h[0] * 3600 + h[1] * 60 + h[2])
}

/// RFC 3339 UTC time of `secs` since the epoch.
fn rfc3339(secs: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const TWO_CONTAINERS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: two
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: counter
    image: rk3s.test/busybox:e2e
    imagePullPolicy: Never
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.3; done"]
  - name: side
    image: rk3s.test/busybox:e2e
    imagePullPolicy: Never
    command: ["sh", "-c", "echo from-side; echo side-err >&2; exec sleep 3600"]
"#;

const RESTARTER: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: restarter
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: r
    image: rk3s.test/busybox:e2e
    imagePullPolicy: Never
    command: ["sh", "-c", "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run-$n; if [ $n -ge 2 ]; then exec sleep 3600; fi; exit 1"]
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    emptyDir: {}
"#;

/// `kubectl logs`: -c with two containers, -f, --tail, --since, --timestamps, --previous.
fn logs(c: &Cluster) {
    apply(c, TWO_CONTAINERS);
    apply(c, RESTARTER);
    wait_running(c, "two");

    // -c picks the container; the other container's stderr is in its log too.
    let side = wait_for("logs -c side", Duration::from_secs(20), || {
        let out = c.kubectl(&["logs", "two", "-c", "side"]);
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && s.contains("side-err")).then_some(s)
    });
    // stdout and stderr reach the log through separate pipes: their order is not fixed.
    let mut lines: Vec<&str> = side.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["from-side", "side-err"], "{side}");
    let counter = c.ok(&["logs", "two", "-c", "counter"]);
    assert!(
        counter.starts_with("line-1\n") && !counter.contains("side"),
        "{counter}"
    );
    // Without -c kubectl takes the first container (and says so).
    let out = c.kubectl(&["logs", "two"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("line-1\n"));
    // A container that is not in the pod.
    let err = c.fails(&["logs", "two", "-c", "nope"], None);
    assert!(
        err.contains("container nope is not valid for pod two"),
        "{err}"
    );

    // -f: lines written after kubectl started arrive while it runs.
    wait_for("a few lines", Duration::from_secs(20), || {
        (line_numbers(&c.ok(&["logs", "two", "-c", "counter"])).len() >= 3).then_some(())
    });
    let before = line_numbers(&c.ok(&["logs", "two", "-c", "counter"]))
        .into_iter()
        .max()
        .unwrap_or(0);
    let started = Instant::now();
    let mut child = kubectl_child(c, &["logs", "-f", "two", "-c", "counter"]);
    let rx = stream_stdout(&mut child);
    let got = recv_until(&rx, Duration::from_secs(20), |s| {
        line_numbers(s).iter().any(|n| *n > before + 3)
    });
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let got = got.expect("kubectl logs -f streams lines written after it started");
    let nums = line_numbers(&got);
    assert_eq!(
        nums.first(),
        Some(&1),
        "follow starts at the beginning: {got}"
    );
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost or repeated: {nums:?}"
    );
    eprintln!(
        "logs -f: saw line {} (> {before} + 3) after {took:?}",
        nums.last().copied().unwrap_or(0)
    );
    // -f --tail=1 starts at the end.
    let mut child = kubectl_child(c, &["logs", "-f", "--tail=1", "two", "-c", "counter"]);
    let rx = stream_stdout(&mut child);
    let got = recv_until(&rx, Duration::from_secs(20), |s| line_numbers(s).len() >= 3);
    let _ = child.kill();
    let _ = child.wait();
    let nums = line_numbers(&got.expect("logs -f --tail=1 streams"));
    assert!(nums[0] > 3, "tail=1 skips the start: {nums:?}");
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");

    // --tail: the last N lines, consecutive.
    let tail = c.ok(&["logs", "--tail=2", "two", "-c", "counter"]);
    let nums = line_numbers(&tail);
    assert_eq!(nums.len(), 2, "{tail}");
    assert_eq!(nums[1], nums[0] + 1, "{tail}");
    assert!(nums[0] > 1);
    assert_eq!(c.ok(&["logs", "--tail=0", "two", "-c", "counter"]), "");

    // --timestamps: RFC 3339 with nanoseconds before each line.
    let ts = c.ok(&["logs", "--timestamps", "--tail=3", "two", "-c", "counter"]);
    assert_eq!(ts.lines().count(), 3, "{ts}");
    for l in ts.lines() {
        let (t, rest) = l.split_once(' ').unwrap_or(("", ""));
        assert!(rest.starts_with("line-"), "{l}");
        assert!(
            t.ends_with('Z') && t.contains('T') && t.contains('.'),
            "RFC3339Nano: {l}"
        );
        assert!(epoch_secs(t).is_some(), "{l}");
    }

    // --since: only recent lines (their times are within the window).
    wait_for("more than 4 s of logs", Duration::from_secs(20), || {
        (line_numbers(&c.ok(&["logs", "two", "-c", "counter"])).len() > 15).then_some(())
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let all = line_numbers(&c.ok(&["logs", "two", "-c", "counter"])).len();
    let since = c.ok(&["logs", "--since=2s", "--timestamps", "two", "-c", "counter"]);
    let n = since.lines().count();
    assert!(
        n >= 1 && n < all && n <= 10,
        "--since=2s gave {n} of {all} lines:\n{since}"
    );
    for l in since.lines() {
        let t = epoch_secs(l.split(' ').next().unwrap_or("")).expect("timestamp");
        assert!(t >= now - 3, "line older than the window: {l} (now {now})");
    }
    let since_time = rfc3339(now - 1);
    let st = c.ok(&[
        "logs",
        &format!("--since-time={since_time}"),
        "two",
        "-c",
        "counter",
    ]);
    assert!(st.lines().count() < all, "--since-time: {st}");

    // --previous: the output of the container instance before the restart.
    wait_for(
        "restarter restarted and running",
        Duration::from_secs(60),
        || {
            let n = jsonpath(
                c,
                &["get", "pod", "restarter"],
                "{.status.containerStatuses[0].restartCount}",
            );
            let running = jsonpath(
                c,
                &["get", "pod", "restarter"],
                "{.status.containerStatuses[0].state.running.startedAt}",
            );
            (n == "1" && !running.is_empty()).then_some(())
        },
    );
    let cur = wait_for("current log", Duration::from_secs(10), || {
        let s = c.ok(&["logs", "restarter"]);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(cur, "run-2\n");
    assert_eq!(c.ok(&["logs", "--previous", "restarter"]), "run-1\n");
    assert_eq!(
        c.ok(&["logs", "-p", "--timestamps", "restarter"])
            .split_once(' ')
            .map(|(_, l)| l.to_string())
            .unwrap_or_default(),
        "run-1\n"
    );
    let err = c.fails(&["logs", "--previous", "two", "-c", "side"], None);
    assert!(
        err.contains("previous terminated container \"side\" in pod \"two\" not found"),
        "{err}"
    );
    c.ok(&["delete", "pod", "restarter", "--wait=false"]);
}

/// Runs `kubectl exec -it POD -- sh` under a pty (python's `pty` module): checks the
/// shell's stdin is a tty (/dev/pts/N), TERM is set, and a window resize reaches it.
fn exec_tty(c: &Cluster, pod: &str) {
    let script = r#"
import os, pty, sys, time, select, fcntl, termios, struct
def winsz(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
winsz(fd, 30, 100)
out = b""
def read_until(needle, secs):
    global out
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            out += chunk
            if needle in out:
                return True
    return needle in out
os.write(fd, b"echo rea''dy\n")
ok = read_until(b"ready", 30)
os.write(fd, b"tty; echo TERM=$TERM; busybox stty size\n")
ok = ok and read_until(b"30 100", 15)
winsz(fd, 40, 120)
seen = False
for _ in range(50):
    os.write(fd, b"busybox stty size\n")
    if read_until(b"40 120", 0.3):
        seen = True
        break
os.write(fd, b"echo after-res''ize; exit\n")
read_until(b"after-resize", 10)
end = time.time() + 15
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.stdout.write("\nRESIZED=%s EXIT=%d\n" % (seen, os.waitstatus_to_exitcode(status)))
"#;
    let out = Command::new("python3")
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .args(["-c", script, &kubectl_bin(), "exec", "-it", pod, "--", "sh"])
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    eprintln!("exec -it transcript:\n{text}");
    assert!(
        text.lines().any(|l| l.starts_with("/dev/pts/")
            && l["/dev/pts/".len()..].chars().all(|c| c.is_ascii_digit())),
        "tty shows /dev/pts/N: {text}"
    );
    assert!(text.contains("TERM=xterm"), "{text}");
    assert!(
        text.lines().any(|l| l.trim() == "30 100"),
        "initial window size: {text}"
    );
    assert!(
        text.contains("RESIZED=True"),
        "resize reaches the container: {text}"
    );
    assert!(
        text.contains("after-resize"),
        "the session still works after the resize: {text}"
    );
    assert!(
        text.contains("EXIT=0"),
        "kubectl exec ended cleanly after exit: {text}"
    );
}

/// Runs kubectl with `args` under a pty (python's `pty` module): waits until a shell
/// answers, sends `input`, reads until kubectl exits; returns the transcript (CRs
/// removed) followed by `EXIT=<code>`.
fn pty_session(c: &Cluster, args: &[&str], input: &str) -> String {
    let script = r#"
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
out = b""
def pump(secs, needle=None):
    global out
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            out += chunk
            if needle is not None and needle in out:
                return True
    return needle is None
for _ in range(60):
    os.write(fd, b"echo rea''dy\n")
    if pump(0.5, b"ready"):
        break
os.write(fd, sys.argv[1].encode())
pump(30)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.stdout.write("\nEXIT=%d\n" % os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .args(["-c", script, input, &kubectl_bin()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// `kubectl cp` a file and a directory into the pod and back.
fn cp(c: &Cluster, pod: &str) {
    let dir = c.dir.path().join("cp");
    std::fs::create_dir_all(dir.join("tree/sub")).expect("mkdir");
    let payload: String = (0..2000).map(|i| format!("payload line {i}\n")).collect();
    std::fs::write(dir.join("up.txt"), &payload).expect("write");
    std::fs::write(dir.join("tree/a.txt"), "a\n").expect("write");
    std::fs::write(dir.join("tree/sub/b.txt"), "b\n").expect("write");
    let up = dir.join("up.txt").display().to_string();
    c.ok(&["cp", &up, &format!("{pod}:/tmp/up.txt"), "-c", pod]);
    let inside = c.ok(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "busybox wc -c < /tmp/up.txt; head -n 1 /tmp/up.txt",
    ]);
    assert_eq!(
        inside.split_whitespace().collect::<Vec<_>>()[..3],
        [payload.len().to_string().as_str(), "payload", "line"],
        "{inside}"
    );
    // A directory, recursively.
    c.ok(&[
        "cp",
        &dir.join("tree").display().to_string(),
        &format!("{pod}:/tmp/tree"),
    ]);
    assert_eq!(
        c.ok(&[
            "exec",
            pod,
            "--",
            "cat",
            "/tmp/tree/a.txt",
            "/tmp/tree/sub/b.txt"
        ]),
        "a\nb\n"
    );
    // And back: a file written in the container.
    c.ok(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 500 ]; do echo down $i; i=$((i+1)); done > /tmp/down.txt",
    ]);
    let down = dir.join("down.txt");
    c.ok(&[
        "cp",
        &format!("{pod}:/tmp/down.txt"),
        &down.display().to_string(),
    ]);
    let text = std::fs::read_to_string(&down).expect("copied file");
    assert_eq!(text.lines().count(), 500);
    assert_eq!(text.lines().last(), Some("down 499"));
    // The uploaded file round-trips unchanged.
    let back = dir.join("back.txt");
    c.ok(&[
        "cp",
        &format!("{pod}:/tmp/up.txt"),
        &back.display().to_string(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).expect("back"), payload);
    // A directory back.
    let tree_back = dir.join("tree-back");
    c.ok(&[
        "cp",
        &format!("{pod}:/tmp/tree"),
        &tree_back.display().to_string(),
    ]);
    assert_eq!(
        std::fs::read_to_string(tree_back.join("sub/b.txt")).expect("b"),
        "b\n"
    );
}

#[test]
fn node_kubectl_logs_exec_cp() {
    run_node_test("node_kubectl_logs_exec_cp", &[], |c| {
        let t0 = Instant::now();
        wait_node_ready(c);
        apply(
            c,
            &pod_manifest("shell", BUSYBOX_IMAGE, "sleep 3600", "Always"),
        );
        logs(c);
        eprintln!("logs checks done at {:?}", t0.elapsed());
        wait_running(c, "shell");
        exec_tty(c, "shell");
        eprintln!("exec -it checks done at {:?}", t0.elapsed());
        cp(c, "shell");
        eprintln!("cp checks done at {:?}", t0.elapsed());
    });
}

/// `curl -sk` against the kubelet API on this node; returns (status, body).
fn kubelet_get(path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-m", "20", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:10250{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The kubelet API authenticates bearer tokens (TokenReview) and authorizes every request
/// with a SubjectAccessReview using upstream's attributes.
fn kubelet_authz(c: &Cluster) {
    c.ok(&["create", "serviceaccount", "nobody"]);
    c.ok(&["create", "serviceaccount", "kubelet-admin"]);
    c.ok(&["create", "serviceaccount", "pods-reader"]);
    c.ok(&[
        "create",
        "clusterrolebinding",
        "kubelet-admin",
        "--clusterrole=system:kubelet-api-admin",
        "--serviceaccount=default:kubelet-admin",
    ]);
    c.ok(&[
        "create",
        "clusterrole",
        "node-pods-reader",
        "--verb=get",
        "--resource=nodes/pods",
    ]);
    c.ok(&[
        "create",
        "clusterrolebinding",
        "pods-reader",
        "--clusterrole=node-pods-reader",
        "--serviceaccount=default:pods-reader",
    ]);
    let token = |sa: &str| c.ok(&["create", "token", sa]).trim().to_string();
    let (nobody, admin, reader) = (
        token("nobody"),
        token("kubelet-admin"),
        token("pods-reader"),
    );

    // Wait for the kubelet API itself (with the admin token).
    let (code, body) = wait_for("kubelet API answers", Duration::from_secs(30), || {
        let r = kubelet_get("/pods", Some(&admin));
        (r.0 == 200).then_some(r)
    });
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("PodList JSON");
    assert_eq!(list["kind"], "PodList", "{body}");
    assert!(
        list["items"].as_array().is_some_and(|i| !i.is_empty()),
        "{body}"
    );

    // No credentials, a bad token: 401.
    assert_eq!(
        kubelet_get("/pods", None),
        (401, "Unauthorized".to_string())
    );
    assert_eq!(
        kubelet_get("/pods", Some("not-a-token")),
        (401, "Unauthorized".to_string())
    );
    // Authenticated, no RBAC: 403 with upstream's message.
    let user = "system:serviceaccount:default:nobody";
    assert_eq!(
        kubelet_get("/pods", Some(&nobody)),
        (
            403,
            format!(
                "Forbidden (user={user}, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
            )
        )
    );
    assert_eq!(
        kubelet_get("/stats/summary", Some(&nobody)),
        (
            403,
            format!("Forbidden (user={user}, verb=get, resource=nodes, subresource(s)=[stats])\n")
        )
    );
    assert_eq!(kubelet_get("/metrics/resource", Some(&nobody)).0, 403);
    assert_eq!(
        kubelet_get("/containerLogs/default/shell/shell", Some(&nobody)).0,
        403
    );
    // system:kubelet-api-admin may do everything.
    assert_eq!(kubelet_get("/stats/summary", Some(&admin)).0, 200);
    assert_eq!(kubelet_get("/metrics/resource", Some(&admin)).0, 200);
    assert_eq!(
        kubelet_get("/healthz", Some(&admin)),
        (200, "ok".to_string())
    );
    // Fine-grained: nodes/pods allows /pods but not the rest.
    assert_eq!(kubelet_get("/pods", Some(&reader)).0, 200);
    assert_eq!(
        kubelet_get("/containerLogs/default/shell/shell", Some(&reader)),
        (403, "Forbidden (user=system:serviceaccount:default:pods-reader, verb=get, resource=nodes, subresource(s)=[proxy])\n".to_string())
    );
    // kubectl through the API server still works (the API server's client certificate).
    assert_eq!(c.ok(&["logs", "shell"]), "");
}

/// `kubectl debug` adds an ephemeral container through `pods/ephemeralcontainers`; the
/// kubelet starts it in the target container's process namespace and reports it.
fn debug(c: &Cluster) {
    // The subresource: GET answers the pod.
    let got = c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/shell/ephemeralcontainers",
    ]);
    let v: serde_json::Value = serde_json::from_str(&got).expect("pod JSON");
    assert_eq!(
        (v["kind"].as_str(), v["metadata"]["name"].as_str()),
        (Some("Pod"), Some("shell")),
        "{got}"
    );

    // kubectl debug -it with a target, through a pty: the debug shell has a tty and sees
    // the target's processes.
    let transcript = pty_session(
        c,
        &[
            "debug",
            "-it",
            "shell",
            &format!("--image={BUSYBOX_IMAGE}"),
            "--image-pull-policy=Never",
            "--target=shell",
            "--container=dbg",
            "--",
            "sh",
        ],
        "tty; ps; echo got-''hello; exit\n",
    );
    assert!(transcript.contains("got-hello"), "{transcript}");
    assert!(
        transcript.lines().any(|l| l.starts_with("/dev/pts/")),
        "{transcript}"
    );
    assert!(
        transcript.contains("sleep 3600"),
        "ps in the debug container shows the target's process: {transcript}"
    );
    assert!(transcript.contains("EXIT=0"), "{transcript}");
    // The pod lists it, with its status.
    assert_eq!(
        jsonpath(
            c,
            &["get", "pod", "shell"],
            "{.spec.ephemeralContainers[0].name}"
        ),
        "dbg"
    );
    assert_eq!(
        jsonpath(
            c,
            &["get", "pod", "shell"],
            "{.spec.ephemeralContainers[0].targetContainerName}"
        ),
        "shell"
    );
    let reason = wait_for("dbg terminated", Duration::from_secs(30), || {
        let r = jsonpath(
            c,
            &["get", "pod", "shell"],
            "{.status.ephemeralContainerStatuses[0].state.terminated.reason}",
        );
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(reason, "Completed");
    assert_eq!(
        jsonpath(
            c,
            &["get", "pod", "shell"],
            "{.status.ephemeralContainerStatuses[0].ready}"
        ),
        "false"
    );
    // Its log is there too; the pod's own container kept running.
    assert!(
        c.ok(&["logs", "shell", "-c", "dbg"]).contains("got-hello"),
        "the session is in the container's log"
    );
    assert_eq!(
        jsonpath(
            c,
            &["get", "pod", "shell"],
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    assert!(!jsonpath(
        c,
        &["get", "pod", "shell"],
        "{.status.containerStatuses[0].state.running.startedAt}"
    )
    .is_empty());

    // A second one without a target, non-interactive.
    c.ok(&[
        "debug",
        "shell",
        &format!("--image={BUSYBOX_IMAGE}"),
        "--image-pull-policy=Never",
        "--container=dbg2",
        "--",
        "sh",
        "-c",
        "echo second",
    ]);
    wait_for("dbg2 ran", Duration::from_secs(30), || {
        let r = jsonpath(
            c,
            &["get", "pod", "shell"],
            r#"{.status.ephemeralContainerStatuses[?(@.name=="dbg2")].state.terminated.exitCode}"#,
        );
        (r == "0").then_some(())
    });
    assert_eq!(c.ok(&["logs", "shell", "-c", "dbg2"]), "second\n");

    // Ephemeral containers can only be added.
    let err = c.fails(
        &[
            "patch",
            "pod",
            "shell",
            "--subresource=ephemeralcontainers",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#,
        ],
        None,
    );
    assert!(
        err.contains("existing ephemeral containers \"dbg\" may not be removed"),
        "{err}"
    );
    let err = c.fails(
        &[
            "debug",
            "shell",
            &format!("--image={BUSYBOX_IMAGE}"),
            "--container=dbg3",
            "--target=nope",
            "--",
            "true",
        ],
        None,
    );
    assert!(
        err.contains("spec.ephemeralContainers[2].targetContainerName: Not found: \"nope\""),
        "{err}"
    );
    // Through the main resource the ephemeral containers do not change.
    let err = c.fails(
        &[
            "patch",
            "pod",
            "shell",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/ephemeralContainers"}]"#,
        ],
        None,
    );
    assert!(err.contains("Forbidden"), "{err}");
}

#[test]
fn node_kubelet_authz_and_debug() {
    run_node_test("node_kubelet_authz_and_debug", &[], |c| {
        let t0 = Instant::now();
        wait_node_ready(c);
        apply(
            c,
            &pod_manifest("shell", BUSYBOX_IMAGE, "sleep 3600", "Always"),
        );
        wait_running(c, "shell");
        kubelet_authz(c);
        eprintln!("kubelet authz checks done at {:?}", t0.elapsed());
        debug(c);
        eprintln!("kubectl debug checks done at {:?}", t0.elapsed());
    });
}
