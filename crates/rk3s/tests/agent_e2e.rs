//! The node agent end to end: `rk3s server` without `--disable-agent` runs real pods on
//! its own containerd with a busybox image built by `rk3s image build`.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips (with a
//! message) otherwise. Cleans up after itself: pods, sandboxes, containerd and its shims,
//! mounts, the cni0 bridge, the iptables rules and chains the CNI plugins added, and
//! the cgroups.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::*;
use common::{wait_for, Cluster};

#[test]
fn agent_runs_real_pods() {
    run_node_test("agent_runs_real_pods", &[], scenario);
}

/// Runs `kubectl attach` to a pod that prints a line every 200 ms and reads one.
fn attach(c: &Cluster, image: &str) {
    use std::io::Read;
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&pod_manifest(
            "ticker",
            image,
            "while true; do echo tick; sleep 0.2; done",
            "Always",
        )),
    );
    wait_for("ticker Running", Duration::from_secs(60), || {
        (jsonpath(c, &["get", "pod", "ticker"], "{.status.phase}") == "Running").then_some(())
    });
    let mut child = Command::new(common::kubectl_bin())
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .args(["attach", "ticker"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl attach");
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut seen = String::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if seen.contains("tick\n") {
                    let _ = tx.send(seen.clone());
                    break;
                }
            }
        });
    }
    let got = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let got = got.expect("kubectl attach printed the container's output");
    assert!(got.contains("tick"), "{got}");
    c.ok(&["delete", "pod", "ticker", "--timeout=60s"]);
}

/// Runs `kubectl port-forward` to a pod serving HTTP on 8080 and fetches a page through it.
fn port_forward(c: &Cluster, image: &str) {
    use std::io::{Read, Write};
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&pod_manifest("web", image, "busybox mkdir -p /tmp/www; echo pf-ok > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www", "Always")),
    );
    wait_for("web Running", Duration::from_secs(60), || {
        (jsonpath(c, &["get", "pod", "web"], "{.status.phase}") == "Running").then_some(())
    });
    let local = common::free_port();
    let mut pf = Command::new(common::kubectl_bin())
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .args(["port-forward", "pod/web", &format!("{local}:8080")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let fetched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("HTTP through port-forward", Duration::from_secs(30), || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .ok()?;
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            resp.contains("pf-ok").then_some(resp)
        })
    }));
    let _ = pf.kill();
    let _ = pf.wait();
    let resp = match fetched {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    };
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
        "{resp}"
    );
    c.ok(&["delete", "pod", "web", "--timeout=60s"]);
}

fn scenario(c: &mut Cluster) {
    let t0 = Instant::now();
    let node = rk3s_kubelet::node::hostname();
    wait_for("node Ready", Duration::from_secs(60), || {
        let s = jsonpath(
            c,
            &["get", "node", &node],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        );
        (s == "True").then_some(())
    });
    eprintln!("node Ready {:?} after the API server", t0.elapsed());
    let pod_cidr = jsonpath(c, &["get", "node", &node], "{.spec.podCIDR}");
    assert!(!pod_cidr.is_empty(), "node has a podCIDR");
    let labels = jsonpath(c, &["get", "node", &node], "{.metadata.labels}");
    assert!(
        labels.contains("node-role.kubernetes.io/control-plane"),
        "{labels}"
    );
    let runtime = jsonpath(
        c,
        &["get", "node", &node],
        "{.status.nodeInfo.containerRuntimeVersion}",
    );
    assert!(runtime.starts_with("containerd://"), "{runtime}");
    wait_for("default service account", Duration::from_secs(30), || {
        c.kubectl(&["get", "sa", "default"])
            .status
            .success()
            .then_some(())
    });

    // A long-running pod.
    let image = "rk3s.test/busybox:e2e";
    let created = Instant::now();
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&pod_manifest(
            "busybox",
            image,
            "echo hello; sleep 3600",
            "Always",
        )),
    );
    wait_for("busybox Running", Duration::from_secs(60), || {
        (jsonpath(c, &["get", "pod", "busybox"], "{.status.phase}") == "Running").then_some(())
    });
    let latency = created.elapsed();
    eprintln!("pod create -> Running: {latency:?} (first pod, including kubectl)");
    let ip = jsonpath(c, &["get", "pod", "busybox"], "{.status.podIP}");
    assert!(cidr_contains(&pod_cidr, &ip), "pod IP {ip} in {pod_cidr}");
    wait_for("busybox Ready", Duration::from_secs(10), || {
        (jsonpath(
            c,
            &["get", "pod", "busybox"],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        ) == "True")
            .then_some(())
    });
    let uid = jsonpath(c, &["get", "pod", "busybox"], "{.metadata.uid}");
    let log: PathBuf = c.data_dir().join(format!(
        "agent/pod-logs/default_busybox_{uid}/busybox/0.log"
    ));
    wait_for("container log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("hello"))
            .map(|_| ())
    });
    // kubectl logs goes API server -> kubelet API -> the CRI log file.
    let logs = wait_for("kubectl logs", Duration::from_secs(20), || {
        let out = c.kubectl(&["logs", "busybox"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    assert_eq!(logs.trim(), "hello", "{logs}");
    // kubectl exec: API server -> kubelet /exec -> containerd's streaming server
    // (WebSocket first, SPDY when the runtime refuses v5.channel.k8s.io).
    let hi = wait_for("kubectl exec", Duration::from_secs(30), || {
        let out = c.kubectl(&["exec", "busybox", "--", "echo", "hi"]);
        if !out.status.success() {
            eprintln!(
                "kubectl exec: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    assert_eq!(hi, "hi\n");
    // With stdin.
    let out = c.kubectl_with(
        &common::kubectl_bin(),
        &["exec", "-i", "busybox", "--", "cat"],
        Some("foo\nbar\n"),
    );
    assert!(
        out.status.success(),
        "kubectl exec -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "foo\nbar\n");
    // A failing command's exit code comes back.
    let out = c.kubectl(&["exec", "busybox", "--", "sh", "-c", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Which protocol kubectl ended up with (informational).
    let v = c.kubectl(&["exec", "-v=8", "busybox", "--", "true"]);
    for l in String::from_utf8_lossy(&v.stderr).lines().filter(|l| {
        l.contains("101 Switching")
            || l.to_lowercase().contains("fallback")
            || l.contains("Upgrade:")
    }) {
        eprintln!("exec -v=8: {l}");
    }
    // kubectl port-forward to busybox httpd.
    port_forward(c, image);
    // kubectl attach to a pod that writes every 200 ms.
    attach(c, image);
    // The service-account token volume is there.
    let sa = c
        .data_dir()
        .join(format!("agent/pods/{uid}/volumes/kubernetes.io~projected"));
    assert!(
        sa.exists(),
        "projected service account volume at {}",
        sa.display()
    );

    // Deletion stops and removes it.
    let del = Instant::now();
    c.ok(&["delete", "pod", "busybox", "--timeout=60s"]);
    eprintln!("pod delete (grace 2 s): {:?}", del.elapsed());
    wait_for("busybox gone", Duration::from_secs(30), || {
        (!c.kubectl(&["get", "pod", "busybox"]).status.success()).then_some(())
    });
    wait_for("containers removed", Duration::from_secs(30), || {
        (ctr_containers(c) == 0).then_some(())
    });

    // Runs to completion.
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&pod_manifest("done", image, "echo bye; exit 0", "Never")),
    );
    wait_for("done Succeeded", Duration::from_secs(60), || {
        (jsonpath(c, &["get", "pod", "done"], "{.status.phase}") == "Succeeded").then_some(())
    });
    let reason = jsonpath(
        c,
        &["get", "pod", "done"],
        "{.status.containerStatuses[0].state.terminated.reason}",
    );
    assert_eq!(reason, "Completed");

    // Crash loop.
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&pod_manifest("crash", image, "exit 1", "Always")),
    );
    let first = wait_for("crash CrashLoopBackOff", Duration::from_secs(60), || {
        let r = jsonpath(
            c,
            &["get", "pod", "crash"],
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        let n: u32 = jsonpath(
            c,
            &["get", "pod", "crash"],
            "{.status.containerStatuses[0].restartCount}",
        )
        .parse()
        .unwrap_or(0);
        (r == "CrashLoopBackOff").then_some(n)
    });
    let last_exit = jsonpath(
        c,
        &["get", "pod", "crash"],
        "{.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    assert_eq!(last_exit, "1");
    let later = wait_for("restart count rises", Duration::from_secs(60), || {
        let n: u32 = jsonpath(
            c,
            &["get", "pod", "crash"],
            "{.status.containerStatuses[0].restartCount}",
        )
        .parse()
        .unwrap_or(0);
        (n > first).then_some(n)
    });
    eprintln!("crash loop: restartCount {first} -> {later}");

    // An image that is not there with pullPolicy Never.
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "-f", "-"],
        Some(&pod_manifest(
            "nopull",
            "rk3s.test/absent:1",
            "true",
            "Always",
        )),
    );
    wait_for("ErrImageNeverPull", Duration::from_secs(30), || {
        let r = jsonpath(
            c,
            &["get", "pod", "nopull"],
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        (r == "ErrImageNeverPull").then_some(())
    });
    let msg = jsonpath(
        c,
        &["get", "pod", "nopull"],
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert_eq!(
        msg,
        "Container image \"rk3s.test/absent:1\" is not present with pull policy of Never"
    );

    // Pod create -> Running latency, image present, one at a time.
    let mut lat = Vec::new();
    // lat-0 serves HTTP: the fail-static check below fetches from it while rk3s is dead.
    const WEB: &str = "busybox mkdir -p /tmp/www; echo static-ok > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www";
    for i in 0..5 {
        let name = format!("lat-{i}");
        let t = Instant::now();
        c.ok_with(
            &common::kubectl_bin(),
            &["apply", "-f", "-"],
            Some(&pod_manifest(
                &name,
                image,
                if i == 0 { WEB } else { "sleep 3600" },
                "Always",
            )),
        );
        wait_for("Running", Duration::from_secs(60), || {
            (jsonpath(c, &["get", "pod", &name], "{.status.phase}") == "Running").then_some(())
        });
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!(
        "pod create -> Running (5 pods, serial, via kubectl): min {:?} median {:?} max {:?}",
        lat[0], lat[2], lat[4]
    );

    // Fail-static: kill -9 of rk3s leaves the containers running and serving; the
    // restarted agent adopts them (same container, no restart); deleting the adopted
    // pod then stops them.
    let id_before = jsonpath(
        c,
        &["get", "pod", "lat-0"],
        "{.status.containerStatuses[0].containerID}",
    );
    assert!(id_before.starts_with("containerd://"), "{id_before}");
    let web_ip = jsonpath(c, &["get", "pod", "lat-0"], "{.status.podIP}");
    assert_eq!(
        http_get(&web_ip, 8080)
            .as_deref()
            .map(|r| r.contains("static-ok")),
        Some(true),
        "lat-0 serves before the kill"
    );
    c.kill9();
    let served = wait_for(
        "lat-0 serving while rk3s is dead",
        Duration::from_secs(10),
        || http_get(&web_ip, 8080).filter(|r| r.contains("static-ok")),
    );
    assert!(
        served.starts_with("HTTP/1.") && served.contains(" 200 "),
        "{served}"
    );
    eprintln!("with rk3s killed: GET http://{web_ip}:8080/ answered 200");
    let state = format!(
        "--containerd-state-dir={}",
        c.containerd_state_dir().display()
    );
    c.restart_after_kill(&[state.as_str()]);
    let t = Instant::now();
    wait_for("node Ready after restart", Duration::from_secs(60), || {
        let s = jsonpath(
            c,
            &["get", "node", &node],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        );
        (s == "True").then_some(())
    });
    // The restarted agent's first sync of lat-0 found its container running, posted the
    // status and logged the adoption: what the API shows now is that agent's view.
    wait_for(
        "lat-0 adopted by the restarted agent",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&c.log).ok()?;
            log.lines()
                .any(|l| {
                    l.contains("adopted the running containers of the pod")
                        && l.contains("lat-0_default")
                })
                .then_some(())
        },
    );
    let id_after = jsonpath(
        c,
        &["get", "pod", "lat-0"],
        "{.status.containerStatuses[0].containerID}",
    );
    let restarts = jsonpath(
        c,
        &["get", "pod", "lat-0"],
        "{.status.containerStatuses[0].restartCount}",
    );
    let phase = jsonpath(c, &["get", "pod", "lat-0"], "{.status.phase}");
    assert_eq!(
        (id_after.as_str(), restarts.as_str(), phase.as_str()),
        (id_before.as_str(), "0", "Running"),
        "adopted after kill -9"
    );
    assert!(
        http_get(&web_ip, 8080).is_some_and(|r| r.contains("static-ok")),
        "still serving after the restart"
    );
    eprintln!(
        "after kill -9 and restart: node Ready again and pod lat-0 adopted in {:?}",
        t.elapsed()
    );
    // Deleting the adopted pod stops its containers.
    let before = ctr_containers(c);
    c.ok(&["delete", "pod", "lat-0", "--timeout=60s"]);
    let cid = id_before.trim_start_matches("containerd://").to_string();
    wait_for(
        "lat-0's container gone from containerd",
        Duration::from_secs(30),
        || {
            let ids = sh(&format!(
                "ctr --address {}/containerd.sock -n k8s.io containers ls -q",
                c.containerd_state_dir().display()
            ));
            (!ids.lines().any(|l| l.trim() == cid)).then_some(())
        },
    );
    assert!(http_get(&web_ip, 8080).is_none(), "lat-0 stopped serving");
    assert!(
        ctr_containers(c) < before,
        "fewer containers after deleting lat-0"
    );
}

/// `GET /` over HTTP/1.0 from the host; the whole answer, or None when nothing answers.
fn http_get(ip: &str, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").ok()?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    (!resp.is_empty()).then_some(resp)
}
