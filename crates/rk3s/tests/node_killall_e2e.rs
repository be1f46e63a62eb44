//! `rk3s killall` and `rk3s check-config` end to end.
//!
//! The killall test runs the real node agent (root, containerd, runc, CNI plugins,
//! busybox-static; skips otherwise): a pod with a hostPort runs, then `rk3s killall`
//! with the cluster's data dir and containerd state dir must stop the server, the
//! containers and containerd, and remove every mount, interface, iptables chain and
//! cgroup the agent made; a second run finds nothing to do.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::node::*;
use common::{wait_for, Cluster};

fn rk3s(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(args)
        .output()
        .expect("run rk3s")
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push(format!("{name}: {cmd}"));
        }
    }
    out
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(String::from)
        .collect()
}

fn netns_entries() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

fn cni_chains() -> Vec<String> {
    iptables_lines()
        .into_iter()
        .filter(|l| l.contains("CNI-"))
        .collect()
}

/// cgroup dirs of a pod (cgroupfs driver: `.../kubepods/<qos>/pod<uid>`), any hierarchy.
fn pod_cgroups(uid: &str) -> Vec<String> {
    sh(&format!(
        "find /sys/fs/cgroup -maxdepth 5 -type d -name 'pod{uid}' 2>/dev/null"
    ))
    .lines()
    .map(String::from)
    .collect()
}

#[test]
fn node_killall_stops_pods_containerd_and_removes_the_network() {
    run_node_test(
        "node_killall_stops_pods_containerd_and_removes_the_network",
        &[],
        |c| {
            let setup = start_pod(c);
            // The service proxy and the NetworkPolicy enforcer hold their nftables tables.
            let tables = wait_for(
                "the proxy's and netpol's nftables tables",
                Duration::from_secs(20),
                || {
                    let t = sh("nft list tables 2>/dev/null");
                    (t.contains("ip rk3s-proxy") && t.contains("ip rk3s-netpol")).then_some(t)
                },
            );
            eprintln!("tables before killall:\n{tables}");
            // killall with the server still running, as k3s-killall.sh is used: the pods go
            // through CRI.
            let stdout = killall(c);
            assert!(
                stdout.contains("deleted nftables table ip rk3s-proxy"),
                "{stdout}"
            );
            assert!(stdout.contains("stopping rk3s server"), "{stdout}");
            assert!(
                stdout.contains("removed pod sandbox default/web"),
                "{stdout}"
            );
            let mut child = c.child.take().expect("server child");
            let status = wait_for("rk3s server exits", Duration::from_secs(15), || {
                child.try_wait().ok().flatten()
            });
            eprintln!("server exit status after killall: {status}");
            assert_all_gone(c, &setup);
        },
    );
}

#[test]
fn node_killall_after_kill9_kills_shims_and_removes_their_rules() {
    run_node_test(
        "node_killall_after_kill9_kills_shims_and_removes_their_rules",
        &[],
        |c| {
            let setup = start_pod(c);
            // rk3s and its containerd die; the shims and the pod keep running (fail-static).
            c.kill9();
            let pid = std::fs::read_to_string(c.containerd_state_dir().join("containerd.pid"))
                .unwrap_or_default();
            assert!(!pid.trim().is_empty(), "containerd pid file");
            sh(&format!("kill -KILL {}", pid.trim()));
            let socket = c
                .containerd_state_dir()
                .join("containerd.sock")
                .display()
                .to_string();
            wait_for("containerd gone", Duration::from_secs(10), || {
                (!processes_mentioning(&socket)
                    .iter()
                    .any(|p| p.contains(" --config ")))
                .then_some(())
            });
            assert!(
                processes_mentioning(&socket)
                    .iter()
                    .any(|p| p.contains("containerd-shim")),
                "the shim outlives containerd"
            );
            let stdout = killall(c);
            assert!(stdout.contains("killing 1 containerd shim(s)"), "{stdout}");
            assert!(stdout.contains("deleted chain CNI-DN-"), "{stdout}");
            // With the pod network (flannel) on, pods are masqueraded by its table, not
            // by a per-pod chain of the bridge plugin; both go.
            assert!(
                stdout.contains("deleted nftables table ip rk3s-flannel"),
                "the pod network's masquerade table: {stdout}"
            );
            assert!(
                stdout.contains("deleted the pod network's VXLAN device flannel.1"),
                "{stdout}"
            );
            assert!(
                stdout.contains("removed network namespace /run/netns/cni-")
                    || stdout.contains("removed network namespace /var/run/netns/cni-"),
                "{stdout}"
            );
            assert!(stdout.contains("released 1 pod IP lease(s)"), "{stdout}");
            assert_all_gone(c, &setup);
        },
    );
}

/// What a scenario saw before and after starting its pod.
struct Setup {
    uid: String,
    netns_before: BTreeSet<String>,
    chains_before: Vec<String>,
}

/// Waits for the node, starts a pod with a hostPort (so the portmap plugin adds its
/// CNI-HOSTPORT-* and CNI-DN-* chains) and checks what the agent set up for it.
fn start_pod(c: &mut Cluster) -> Setup {
    let node = rk3s_kubelet::node::hostname();
    wait_for("node Ready", Duration::from_secs(60), || {
        (jsonpath(
            c,
            &["get", "node", &node],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        ) == "True")
            .then_some(())
    });
    wait_for("default service account", Duration::from_secs(30), || {
        c.kubectl(&["get", "sa", "default"])
            .status
            .success()
            .then_some(())
    });
    let netns_before = netns_entries();
    let chains_before = cni_chains();
    let host_port = common::free_port();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: web
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
    ports:
    - containerPort: 8080
      hostPort: {host_port}
"#
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&manifest),
    );
    wait_for("web Running", Duration::from_secs(60), || {
        (jsonpath(c, &["get", "pod", "web"], "{.status.phase}") == "Running").then_some(())
    });
    let uid = jsonpath(c, &["get", "pod", "web"], "{.metadata.uid}");
    let state = c.containerd_state_dir();
    let socket = state.join("containerd.sock").display().to_string();
    let shims = processes_mentioning(&socket);
    assert!(
        shims.iter().any(|p| p.contains("containerd-shim")),
        "no shim of our containerd: {shims:?}"
    );
    assert!(links().contains("cni0"), "no cni0");
    let chains = cni_chains();
    assert!(
        chains.iter().any(|l| l.contains("CNI-HOSTPORT-DNAT")),
        "{chains:?}"
    );
    assert!(
        chains.iter().any(|l| l.contains("name: \\\"rk3s\\\"")),
        "{chains:?}"
    );
    assert!(
        !mounts_under(&state).is_empty() || !mounts_under(&c.data_dir()).is_empty(),
        "no container mounts"
    );
    assert!(!pod_cgroups(&uid).is_empty(), "no cgroup for pod {uid}");
    Setup {
        uid,
        netns_before,
        chains_before,
    }
}

/// Runs `rk3s killall` for the cluster; returns its standard output.
fn killall(c: &Cluster) -> String {
    let (data, state) = (
        c.data_dir().display().to_string(),
        c.containerd_state_dir().display().to_string(),
    );
    let t = std::time::Instant::now();
    let out = rk3s(&[
        "killall",
        "--data-dir",
        &data,
        "--containerd-state-dir",
        &state,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("rk3s killall ({:?}):\n{stdout}{stderr}", t.elapsed());
    assert!(
        out.status.success(),
        "rk3s killall failed: {stdout}{stderr}"
    );
    assert!(stdout.contains("deleted interface cni0"), "{stdout}");
    stdout
}

/// Nothing of the agent is left; a second killall has nothing to do.
fn assert_all_gone(c: &Cluster, setup: &Setup) {
    let state = c.containerd_state_dir();
    let data = c.data_dir();
    let socket = state.join("containerd.sock").display().to_string();
    assert_eq!(
        processes_mentioning(&socket),
        Vec::<String>::new(),
        "shims or containerd left"
    );
    assert_eq!(
        processes_mentioning(&data.display().to_string()),
        Vec::<String>::new(),
        "processes of the data dir left"
    );
    assert!(!links().contains("cni0"), "cni0 left");
    let veths: Vec<String> = sh("ip -o link show master cni0 2>/dev/null")
        .lines()
        .map(String::from)
        .collect();
    assert!(veths.is_empty(), "{veths:?}");
    let chains: Vec<String> = cni_chains()
        .into_iter()
        .filter(|l| !setup.chains_before.contains(l))
        .collect();
    assert!(chains.is_empty(), "CNI iptables chains left: {chains:?}");
    assert_eq!(
        mounts_under(&data),
        Vec::<String>::new(),
        "mounts left under the data dir"
    );
    assert_eq!(
        mounts_under(&state),
        Vec::<String>::new(),
        "mounts left under the state dir"
    );
    let new_netns: Vec<String> = netns_entries()
        .difference(&setup.netns_before)
        .cloned()
        .collect();
    assert!(
        new_netns.is_empty(),
        "network namespaces left: {new_netns:?}"
    );
    assert_eq!(
        pod_cgroups(&setup.uid),
        Vec::<String>::new(),
        "pod cgroups left"
    );
    assert!(!state.exists(), "state dir left");
    let leases: Vec<String> = std::fs::read_dir(data.join("agent/cni/networks/rk3s"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(leases.is_empty(), "IP leases left: {leases:?}");
    let nft = sh("nft list tables 2>/dev/null");
    assert!(
        !nft.lines().any(|l| l
            .split_whitespace()
            .nth(2)
            .is_some_and(|n| n.starts_with("rk3s"))),
        "{nft}"
    );

    // Idempotent: a second run has nothing to do.
    let out = rk3s(&[
        "killall",
        "--data-dir",
        &data.display().to_string(),
        "--containerd-state-dir",
        &state.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "second killall: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("nothing to do"), "{stdout}");
}

#[test]
fn check_config_reports_on_this_machine() {
    let out = rk3s(&["check-config"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("rk3s check-config: kernel "), "{text}");
    for section in [
        "\nkernel:\n",
        "\ncgroups:\n",
        "\nnetwork:\n",
        "\nprograms:\n",
    ] {
        assert!(text.contains(section), "{section:?} missing: {text}");
    }
    // Every row: two spaces, a status, the check, its detail.
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("  STATUS"))
        .collect();
    assert!(rows.len() > 30, "{rows:?}");
    for r in &rows {
        assert!(
            r.starts_with("  pass  ") || r.starts_with("  warn  ") || r.starts_with("  FAIL  "),
            "row {r:?}"
        );
    }
    let count = |s: &str| {
        rows.iter()
            .filter(|r| r.starts_with(&format!("  {s}  ")))
            .count()
    };
    let (pass, warn, fail) = (count("pass"), count("warn"), count("FAIL"));
    assert!(
        text.contains(&format!("Summary: {pass} pass, {warn} warn, {fail} fail")),
        "{text}"
    );
    assert_eq!(
        out.status.success(),
        fail == 0,
        "exit status follows the failures"
    );
    // The name column starts after "  STATUS  " (10 characters) and is padded.
    let row = |name: &str| {
        rows.iter()
            .find(|r| {
                r.get(10..)
                    .is_some_and(|rest| rest.starts_with(&format!("{name}  ")))
            })
            .copied()
            .unwrap_or_default()
    };
    // Facts of this machine that the report must reflect.
    for (bin, path) in [
        ("runc", sh("command -v runc")),
        ("containerd", sh("command -v containerd")),
        (
            "iptables",
            sh("command -v iptables || command -v /usr/sbin/iptables"),
        ),
    ] {
        let r = row(bin);
        if path.trim().is_empty() {
            eprintln!("note: {bin} not installed here");
            continue;
        }
        assert!(r.starts_with("  pass  "), "{bin}: {r}");
        let real = std::fs::canonicalize(path.trim()).ok();
        let shown = r
            .split_whitespace()
            .nth(2)
            .and_then(|p| std::fs::canonicalize(p).ok());
        assert_eq!(shown, real, "{bin}: {r}");
    }
    if Path::new("/usr/lib/cni/bridge").exists() {
        assert!(
            text.lines()
                .any(|l| l.starts_with("  pass ") && l.contains(" CNI plugin bridge ")),
            "{text}"
        );
    }
    if Path::new("/proc/self/ns/net").exists() {
        assert!(
            row("net namespace").starts_with("  pass  "),
            "{}",
            row("net namespace")
        );
    }
    let memory = text
        .lines()
        .find(|l| l.contains("memory controller"))
        .unwrap_or_default();
    let memory_present = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("memory\t") && l.ends_with("\t1"))
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "memory");
    if memory_present {
        assert!(memory.starts_with("  pass  "), "{memory}");
    }
    if fail > 0 || warn > 0 {
        eprintln!("note: this machine misses something (see the report above)");
    }

    // `rk3s --help` names both subcommands.
    let help = String::from_utf8_lossy(&rk3s(&["--help"]).stdout).to_string();
    let line = |cmd: &str| {
        help.lines()
            .find(|l| l.trim_start().starts_with(cmd))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("killall").contains("Stop all pods"), "{help}");
    assert!(line("check-config").contains("kernel features"), "{help}");
}
