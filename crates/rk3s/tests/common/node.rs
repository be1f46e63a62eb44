//! Helpers for tests that run the real node agent (containerd, runc, CNI): prerequisites,
//! a busybox image built with `rk3s image build`, and a host snapshot + clean-up so a test
//! leaves no container, interface, iptables rule or cgroup behind.
//!
//! Such tests must be named `node_*` (or live in `agent_e2e`) so nextest runs them one at a
//! time (`.config/nextest.toml`, group `containerd`). Use [`run_node_test`].

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::Cluster;

/// The image [`build_busybox_image`] tags.
pub const BUSYBOX_IMAGE: &str = "rk3s.test/busybox:e2e";

/// Runs `scenario` against a fresh single-node cluster with the agent (busybox image in
/// its images folder, `extra` server flags), then deletes all pods, stops the server,
/// removes what the agent left on the host and asserts nothing is left behind. Skips
/// (returns) with a message when prerequisites are missing or another agent runs here.
pub fn run_node_test(name: &str, extra: &[&str], scenario: impl FnOnce(&mut Cluster)) {
    if let Some(why) = missing_prereqs() {
        eprintln!("SKIP {name}: {why}");
        return;
    }
    let before = HostSnapshot::take();
    if before.links.contains("cni0") {
        eprintln!("SKIP {name}: a cni0 bridge exists already (another node agent runs here)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    build_busybox_image(
        &dir.path().join("data/agent/images/busybox.tar"),
        dir.path(),
    );
    let mut c = Cluster::start_agent_in(dir, extra);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut c)));
    if result.is_err() {
        eprintln!(
            "--- server log ---\n{}",
            std::fs::read_to_string(&c.log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Delete what is left through the agent (so CNI DEL runs), then tear down.
    if c.child.is_some() {
        let _ = c.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=1",
            "--timeout=60s",
        ]);
    }
    cleanup(&mut c, &before);
    let after = HostSnapshot::take();
    let new_links: Vec<_> = after.links.difference(&before.links).collect();
    let new_rules: Vec<_> = after.iptables.difference(&before.iptables).collect();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(new_links.is_empty(), "links left behind: {new_links:?}");
    assert!(
        new_rules.is_empty(),
        "iptables rules left behind: {new_rules:?}"
    );
    let new_netns: Vec<_> = after.netns.difference(&before.netns).collect();
    assert!(
        new_netns.is_empty(),
        "network namespaces left behind: {new_netns:?}"
    );
    let new_tables: Vec<_> = after.nft_tables.difference(&before.nft_tables).collect();
    assert!(
        new_tables.is_empty(),
        "nftables tables left behind: {new_tables:?}"
    );
}

pub fn missing_prereqs() -> Option<String> {
    if unsafe_geteuid() != 0 {
        return Some("not root".into());
    }
    for bin in ["containerd", "runc", "ctr", "iptables-save", "ip"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!(
                "{bin} is missing (apt-get install containerd runc iptables iproute2)"
            ));
        }
    }
    for p in [
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/loopback",
    ] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} is missing (apt-get install containernetworking-plugins)"
            ));
        }
    }
    if rk3s_kubelet::image::find_static_busybox().is_err() {
        return Some("no static busybox (apt-get install busybox-static)".into());
    }
    None
}

pub fn unsafe_geteuid() -> u32 {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(1)
}

pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

pub fn iptables_lines() -> BTreeSet<String> {
    sh("iptables-save 2>/dev/null")
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with(':') || l.starts_with('*'))
        .map(|l| {
            // Counters in chain headers change all the time.
            if l.starts_with(':') {
                l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
            } else {
                l.to_string()
            }
        })
        .collect()
}

pub fn links() -> BTreeSet<String> {
    sh("ip -o link show")
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        })
        .collect()
}

/// Everything the test must put back as it was.
pub struct HostSnapshot {
    pub links: BTreeSet<String>,
    pub iptables: BTreeSet<String>,
    pub kubepods: bool,
    /// Named network namespaces of pod sandboxes (`/run/netns/cni-*`, containerd's
    /// names; namespaces other tests make for themselves are theirs to remove).
    pub netns: BTreeSet<String>,
    /// nftables tables (`family name`), ip6tables-nft's included.
    pub nft_tables: BTreeSet<String>,
}

impl HostSnapshot {
    pub fn take() -> Self {
        HostSnapshot {
            links: links(),
            iptables: iptables_lines(),
            kubepods: Path::new("/sys/fs/cgroup/memory/kubepods").exists()
                || Path::new("/sys/fs/cgroup/kubepods").exists(),
            netns: std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("cni-"))
                .collect(),
            nft_tables: sh("nft list tables 2>/dev/null")
                .lines()
                .filter_map(|l| l.strip_prefix("table "))
                .map(String::from)
                .collect(),
        }
    }
}

/// Kills the containerd whose state dir is `state` and its shims (their command line
/// names its socket).
pub fn kill_containerd(state: &Path) {
    let want = format!("-address\0{}", state.join("containerd.sock").display());
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("containerd-shim") && cmdline.contains(&want) {
            let _ = Command::new("kill")
                .args(["-KILL", &e.file_name().to_string_lossy()])
                .status();
        }
    }
    if let Ok(pid) = std::fs::read_to_string(state.join("containerd.pid")) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
}

/// Stops the cluster and removes what the agent left on the host.
pub fn cleanup(c: &mut Cluster, before: &HostSnapshot) {
    let state = c.containerd_state_dir();
    c.stop();
    kill_containerd(&state);
    std::thread::sleep(Duration::from_millis(300));
    rk3s_kubelet::containerd::unmount_under(&state);
    rk3s_kubelet::containerd::unmount_under(&c.data_dir());
    // Network namespaces containerd made for sandboxes that were not removed.
    for l in links().difference(&before.links) {
        let _ = Command::new("ip").args(["link", "del", l]).status();
    }
    // iptables: delete added rules, then added chains.
    let mut table = String::new();
    let mut chains = Vec::new();
    let save = sh("iptables-save 2>/dev/null");
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        if l.starts_with("-A ") && !before.iptables.contains(l) {
            let args: Vec<String> = shell_words(&l.replacen("-A ", "-D ", 1));
            let _ = Command::new("iptables")
                .arg("-t")
                .arg(&table)
                .args(&args)
                .status();
        }
        if let Some(h) = l.strip_prefix(':') {
            let name = h.split_whitespace().next().unwrap_or_default().to_string();
            let key = format!(":{name}");
            if !before
                .iptables
                .iter()
                .any(|b| b.split_whitespace().next() == Some(key.as_str()))
            {
                chains.push((table.clone(), name));
            }
        }
    }
    for (t, ch) in &chains {
        let _ = Command::new("iptables").args(["-t", t, "-F", ch]).status();
    }
    for (t, ch) in &chains {
        let _ = Command::new("iptables").args(["-t", t, "-X", ch]).status();
    }
    // Tables the plugins created (iptables-nft keeps empty built-in chains in them).
    for l in iptables_lines() {
        if let Some(t) = l.strip_prefix('*') {
            if !before.iptables.contains(&l) {
                let _ = Command::new("nft")
                    .args(["delete", "table", "ip", t])
                    .status();
            }
        }
    }
    // Any other table (ip6tables-nft's `ip6 nat` from the portmap plugin, ...).
    let now = HostSnapshot::take();
    for t in now.nft_tables.difference(&before.nft_tables) {
        let _ = Command::new("sh")
            .args(["-c", &format!("nft delete table {t}")])
            .status();
    }
    // Network namespaces of sandboxes that were not torn down.
    for n in now.netns.difference(&before.netns) {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    if !before.kubepods {
        for root in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/blkio",
            "/sys/fs/cgroup/cpuset",
            "/sys/fs/cgroup/devices",
            "/sys/fs/cgroup/freezer",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/hugetlb",
            "/sys/fs/cgroup/net_cls,net_prio",
            "/sys/fs/cgroup/perf_event",
        ] {
            let _ = sh(&format!("[ -d {root}/kubepods ] && find {root}/kubepods -depth -type d -exec rmdir {{}} \\; 2>/dev/null"));
        }
    }
}

/// Splits an iptables-save rule line into arguments (double quotes group words).
pub fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub fn build_busybox_image(out: &Path, work: &Path) {
    let busybox = rk3s_kubelet::image::find_static_busybox().expect("static busybox");
    let root = work.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    std::fs::create_dir_all(root.join("tmp")).expect("rootfs tmp");
    std::fs::create_dir_all(root.join("etc")).expect("rootfs etc");
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh",
        "sleep",
        "echo",
        "cat",
        "ls",
        "true",
        "false",
        "httpd",
        "wget",
        "env",
        "id",
        "hostname",
        "ip",
        "tar",
        "mkdir",
        "rm",
        "touch",
        "kill",
        "head",
        "tail",
        "grep",
        "date",
        "ps",
        "dd",
        "nc",
        "mount",
        "df",
        "stat",
        "nslookup",
        "seq",
        "wc",
        "sort",
        "timeout",
        "ssl_client",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::create_dir_all(out.parent().expect("parent")).expect("images dir");
    let o = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["image", "build", "--from"])
        .arg(&root)
        .args(["--tag", "rk3s.test/busybox:e2e", "-o"])
        .arg(out)
        .output()
        .expect("rk3s image build");
    assert!(
        o.status.success(),
        "image build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The address the kernel would use to leave this machine (never sent to): the node IP.
pub fn primary_ip() -> std::net::Ipv4Addr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    s.connect("10.255.255.255:1").expect("route lookup");
    match s.local_addr().expect("local addr").ip() {
        std::net::IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => v4,
        other => panic!("no usable IPv4 node address (got {other})"),
    }
}

/// Builds an image from the root filesystem `root` (`rk3s image build`, `extra` flags such
/// as `--entrypoint`) and imports it into the cluster's containerd.
pub fn build_and_import_image(c: &Cluster, root: &Path, tag: &str, extra: &[&str]) {
    let archive = root.with_extension("tar");
    let rk3s = env!("CARGO_BIN_EXE_rk3s");
    let o = Command::new(rk3s)
        .args(["image", "build", "--from"])
        .arg(root)
        .args(["--tag", tag, "-o"])
        .arg(&archive)
        .args(extra)
        .output()
        .expect("image build");
    assert!(
        o.status.success(),
        "image build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sock = c.containerd_state_dir().join("containerd.sock");
    let o = Command::new(rk3s)
        .args(["image", "import", "--address"])
        .arg(&sock)
        .arg(&archive)
        .output()
        .expect("image import");
    assert!(
        o.status.success(),
        "image import: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn jsonpath(c: &Cluster, args: &[&str], path: &str) -> String {
    let p = format!("jsonpath={path}");
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-o", p.as_str()]);
    let out = c.kubectl(&a);
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn pod_manifest(name: &str, image: &str, cmd: &str, restart: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 2
  containers:
  - name: {name}
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "{cmd}"]
"#
    )
}

pub fn cidr_contains(cidr: &str, ip: &str) -> bool {
    let (Ok(net), Ok(ip)) = (rk3s_core::Cidr::parse(cidr), ip.parse()) else {
        return false;
    };
    net.contains(&ip)
}

pub fn ctr_containers(c: &Cluster) -> usize {
    let sock = c.containerd_state_dir().join("containerd.sock");
    sh(&format!(
        "ctr --address {} -n k8s.io containers ls -q 2>/dev/null",
        sock.display()
    ))
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count()
}

/// Waits until this host's node is Ready and the `default` ServiceAccount exists (pods
/// are admitted); returns the node's name.
pub fn wait_node_ready(c: &Cluster) -> String {
    let node = rk3s_kubelet::node::hostname();
    super::wait_for("node Ready", Duration::from_secs(60), || {
        let s = jsonpath(
            c,
            &["get", "node", &node],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        );
        (s == "True").then_some(())
    });
    super::wait_for("default service account", Duration::from_secs(30), || {
        c.kubectl(&["get", "sa", "default"])
            .status
            .success()
            .then_some(())
    });
    node
}

/// `kubectl apply -f -` of a manifest; panics on failure.
pub fn apply(c: &Cluster, yaml: &str) {
    c.ok_with(&super::kubectl_bin(), &["apply", "-f", "-"], Some(yaml));
}

/// Waits until a pod's phase is Running.
pub fn wait_running(c: &Cluster, pod: &str) {
    super::wait_for(&format!("{pod} Running"), Duration::from_secs(60), || {
        (jsonpath(c, &["get", "pod", pod], "{.status.phase}") == "Running").then_some(())
    });
}
