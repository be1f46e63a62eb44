//! `rk3s install` with the node agent (issue 18): install, run a Deployment, install again
//! (the upgrade): the API is back and the pods were not restarted (same container IDs);
//! then the uninstall script removes everything (no link, network namespace, nftables
//! table or process of it left). Without systemd (as CI), the fallback start is used.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::*;
use common::{free_port, kubectl_bin, wait_for};

/// Runs the uninstall script if the test did not (also on panic).
struct Uninstall(PathBuf);

impl Drop for Uninstall {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new("sh").arg(&self.0).output();
        }
    }
}

#[test]
fn node_install_upgrade_keeps_pods() {
    if let Some(why) = missing_prereqs() {
        eprintln!("SKIP node_install_upgrade_keeps_pods: {why}");
        return;
    }
    if Path::new("/run/systemd/system").is_dir() {
        eprintln!(
            "SKIP node_install_upgrade_keeps_pods: systemd runs here (this covers the fallback)"
        );
        return;
    }
    let before = HostSnapshot::take();
    if before.links.contains("cni0") {
        eprintln!("SKIP node_install_upgrade_keeps_pods: another node agent runs here");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let port = free_port();
    let name = format!("rk3s-node-test-{port}");
    let (bin, units, conf, data) = (
        t.join("bin"),
        t.join("systemd"),
        t.join("etc"),
        t.join("data"),
    );
    std::fs::create_dir_all(&conf).expect("conf");
    std::fs::write(conf.join("config.yaml"), "# test\n").expect("config");
    build_busybox_image(&data.join("agent/images/busybox.tar"), t);
    let kubeconfig = conf.join("rk3s.yaml");
    let exec = format!(
        "server --config {} --data-dir {} --https-listen-port {port} --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --write-kubeconfig {}",
        conf.join("config.yaml").display(),
        data.display(),
        kubeconfig.display()
    );
    let uninstall = bin.join(format!("{name}-uninstall.sh"));
    let _guard = Uninstall(uninstall.clone());
    let install = |from: &Path| {
        let o = Command::new(from)
            .arg("install")
            .env("INSTALL_RK3S_EXEC", &exec)
            .env("INSTALL_RK3S_NAME", &name)
            .env("INSTALL_RK3S_BIN_DIR", &bin)
            .env("INSTALL_RK3S_SYSTEMD_DIR", &units)
            .env("INSTALL_RK3S_CONFIG_DIR", &conf)
            .output()
            .expect("rk3s install");
        assert!(
            o.status.success(),
            "install: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let kubectl = |args: &[&str]| -> String {
        let o = Command::new(kubectl_bin())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let api_ready = || (kubectl(&["get", "--raw", "/readyz"]).trim() == "ok").then_some(());
    let node_ready = || {
        let s = kubectl(&[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={.items[0].status.conditions[?(@.type=="Ready")].status}"#,
        ]);
        (s == "True").then_some(())
    };
    let containers = || {
        let mut ids: Vec<String> = kubectl(&[
            "get",
            "pods",
            "-l",
            "app=keep",
            "-o",
            "jsonpath={range .items[*]}{.status.containerStatuses[0].containerID}{\"\\n\"}{end}",
        ])
        .lines()
        .map(str::to_string)
        .collect();
        ids.sort();
        ids
    };

    install(Path::new(env!("CARGO_BIN_EXE_rk3s")));
    wait_for("the installed server", Duration::from_secs(60), api_ready);
    wait_for("node Ready", Duration::from_secs(60), node_ready);
    let manifest = t.join("keep.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: keep}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: keep}}}}
  template:
    metadata: {{labels: {{app: keep}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: c, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: ["sleep", "3600"]}}
"#
        ),
    )
    .expect("manifest");
    kubectl(&["apply", "-f", &manifest.display().to_string()]);
    let ids = wait_for("2 running containers", Duration::from_secs(90), || {
        let ids = containers();
        (ids.len() == 2 && ids.iter().all(|i| i.starts_with("containerd://"))).then_some(ids)
    });

    // The upgrade: install again; the pods keep running.
    let t0 = Instant::now();
    install(&bin.join("rk3s"));
    wait_for("the upgraded server", Duration::from_secs(60), api_ready);
    eprintln!("API back {:?} after the re-install began", t0.elapsed());
    wait_for(
        "node Ready after the upgrade",
        Duration::from_secs(60),
        node_ready,
    );
    // Give the node agent a moment to re-sync its pods, then compare.
    wait_for("pods re-synced", Duration::from_secs(30), || {
        let phases = kubectl(&[
            "get",
            "pods",
            "-l",
            "app=keep",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ]);
        (phases == "Running Running").then_some(())
    });
    assert_eq!(containers(), ids, "the same containers: not restarted");
    let restarts = kubectl(&[
        "get",
        "pods",
        "-l",
        "app=keep",
        "-o",
        "jsonpath={.items[*].status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(restarts, "0 0");

    // Uninstall: nothing of it is left on the host.
    let o = Command::new("sh")
        .arg(&uninstall)
        .output()
        .expect("uninstall");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = HostSnapshot::take();
    let new_links: Vec<_> = after.links.difference(&before.links).collect();
    let new_netns: Vec<_> = after.netns.difference(&before.netns).collect();
    let new_tables: Vec<_> = after.nft_tables.difference(&before.nft_tables).collect();
    assert!(new_links.is_empty(), "links left: {new_links:?}");
    assert!(new_netns.is_empty(), "netns left: {new_netns:?}");
    assert!(
        new_tables.is_empty(),
        "nftables tables left: {new_tables:?}"
    );
    assert!(!data.exists() && !conf.exists(), "data and config removed");
    let procs = sh(&format!(
        "pgrep -af {} | grep -v pgrep || true",
        data.display()
    ));
    assert!(procs.trim().is_empty(), "processes left: {procs}");
}
