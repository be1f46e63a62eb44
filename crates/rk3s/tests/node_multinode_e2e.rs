//! Several nodes on one machine: `rk3s server` and two `rk3s agent`s, each in its own
//! network namespace (a veth into a bridge that lives in a namespace of the test's own),
//! with its own data dir, containerd and runtime dir. Agents join with the server's token
//! through the supervisor and act with their own least-privilege credentials.
//!
//! Processes enter their node's namespace with `nsenter --net` (not `ip netns exec`, which
//! also remounts /sys and so hides the cgroup file systems runc needs).
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips otherwise.
//! Cleans up: every process, mount, cgroup and the namespaces (with everything in them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::node::{build_busybox_image, kill_containerd, missing_prereqs, sh, BUSYBOX_IMAGE};
use common::wait_for;

const SUBNET: &str = "198.18.0";

/// One node: its namespace, data dir and process.
struct Node {
    name: String,
    netns: String,
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn containerd_state(&self) -> PathBuf {
        self.dir.join("run-containerd")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn stop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &ch.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = ch.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// The cluster: a bridge namespace and the nodes.
struct MultiNode {
    prefix: String,
    _tmp: tempfile::TempDir,
    tmp: PathBuf,
    nodes: Vec<Node>,
    kubeconfig: PathBuf,
    token: String,
}

fn run(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl MultiNode {
    /// Creates the bridge namespace and one namespace per node (`names[0]` is the server).
    fn network(names: &[&str]) -> MultiNode {
        let tmp = tempfile::tempdir().expect("tmp");
        let prefix = format!("rk3smn{}", std::process::id() % 100_000);
        let br = format!("{prefix}-br");
        run(&format!(
            "ip netns add {br} && ip -n {br} link set lo up && \
             ip -n {br} link add br0 type bridge && ip -n {br} addr add {SUBNET}.254/24 dev br0 && \
             ip -n {br} link set br0 up"
        ));
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{prefix}-{i}");
            let ip = format!("{SUBNET}.{}", i + 1);
            run(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip link add v{i} netns {br} type veth peer name eth0 netns {ns} && \
                 ip -n {br} link set v{i} master br0 up && \
                 ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && \
                 ip -n {ns} route add default via {SUBNET}.254"
            ));
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join("none.yaml"), "{}\n").expect("config");
            nodes.push(Node {
                name: name.to_string(),
                netns: ns,
                ip,
                log: dir.join("rk3s.log"),
                dir,
                child: None,
            });
        }
        let tmp_path = tmp.path().to_path_buf();
        MultiNode {
            prefix,
            kubeconfig: tmp_path.join("kubeconfig.yaml"),
            _tmp: tmp,
            tmp: tmp_path,
            nodes,
            token: String::new(),
        }
    }

    fn spawn(&mut self, i: usize, args: &[String]) {
        let n = &mut self.nodes[i];
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", n.netns))
            .arg(env!("CARGO_BIN_EXE_rk3s"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn rk3s");
        n.child = Some(child);
    }

    fn start_server(&mut self, extra: &[&str]) {
        let n = &self.nodes[0];
        build_busybox_image(&n.data_dir().join("agent/images/busybox.tar"), &n.dir);
        let mut args = vec![
            "server".to_string(),
            format!("--config={}", n.dir.join("none.yaml").display()),
            format!("--data-dir={}", n.data_dir().display()),
            "--bind-address=0.0.0.0".into(),
            format!("--advertise-address={}", n.ip),
            format!("--node-ip={}", n.ip),
            format!("--node-name={}", n.name),
            format!("--containerd-state-dir={}", n.containerd_state().display()),
            format!("--write-kubeconfig={}", self.kubeconfig.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(0, &args);
        let token_file = self.nodes[0].data_dir().join("server/token");
        wait_for("server token", Duration::from_secs(60), || {
            self.assert_running(0);
            std::fs::read_to_string(&token_file)
                .ok()
                .filter(|t| !t.trim().is_empty())
        });
        self.token = std::fs::read_to_string(&token_file)
            .expect("token")
            .trim()
            .to_string();
        wait_for("API ready", Duration::from_secs(60), || {
            self.kubectl(&["get", "--raw", "/readyz"])
                .status
                .success()
                .then_some(())
        });
    }

    /// Panics with the log when node `i`'s process has exited.
    fn assert_running(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(ch) = n.child.as_mut() {
            if let Ok(Some(st)) = ch.try_wait() {
                panic!("{} exited with {st}:\n{}", n.name, n.log_tail());
            }
        }
    }

    fn agent_args(&self, i: usize, token: &str, extra: &[&str]) -> Vec<String> {
        let n = &self.nodes[i];
        let mut args = vec![
            "agent".to_string(),
            format!("--config={}", n.dir.join("none.yaml").display()),
            format!("--server=https://{}:6443", self.nodes[0].ip),
            format!("--token={token}"),
            format!("--data-dir={}", n.data_dir().display()),
            format!("--node-ip={}", n.ip),
            format!("--node-name={}", n.name),
            format!("--containerd-state-dir={}", n.containerd_state().display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start_agent(&mut self, i: usize, extra: &[&str]) {
        self.image(i);
        let args = self.agent_args(i, &self.token.clone(), extra);
        self.spawn(i, &args);
    }

    /// Puts the busybox image in node `i`'s images folder (imported at start).
    fn image(&self, i: usize) {
        let n = &self.nodes[i];
        if !n.data_dir().join("agent/images/busybox.tar").exists() {
            build_busybox_image(&n.data_dir().join("agent/images/busybox.tar"), &n.dir);
        }
    }

    /// Runs `rk3s agent` in node `i`'s namespace to completion (it must fail fast).
    fn agent_must_fail(&self, i: usize, args: &[String]) -> String {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.nodes[i].netns))
            .arg(env!("CARGO_BIN_EXE_rk3s"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("rk3s agent {args:?} did not exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        assert!(!out.status.success(), "rk3s agent {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// kubectl as the admin, from inside the server's namespace.
    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_in(0, &self.kubeconfig, args)
    }

    /// kubectl with `kubeconfig` from inside node `i`'s namespace.
    fn kubectl_in(&self, i: usize, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.nodes[i].netns))
            .arg(common::kubectl_bin())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .output()
            .expect("kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn apply(&self, yaml: &str) {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.nodes[0].netns))
            .arg(common::kubectl_bin())
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("apply");
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut a: Vec<&str> = args.to_vec();
        let p = format!("jsonpath={path}");
        a.extend(["-o", &p]);
        String::from_utf8_lossy(&self.kubectl(&a).stdout)
            .trim()
            .to_string()
    }

    fn node_ready(&self, name: &str) -> String {
        self.jsonpath(
            &["get", "node", name],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        )
    }

    /// Stops every node and removes what they left: containerd and shims, mounts,
    /// cgroups, then the namespaces.
    fn teardown(&mut self) {
        let _ = self.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=1",
            "--timeout=30s",
        ]);
        for i in (0..self.nodes.len()).rev() {
            self.nodes[i].stop();
        }
        for n in &self.nodes {
            kill_containerd(&n.containerd_state());
        }
        std::thread::sleep(Duration::from_millis(300));
        for n in &self.nodes {
            rk3s_kubelet::containerd::unmount_under(&n.containerd_state());
            rk3s_kubelet::containerd::unmount_under(&n.data_dir());
        }
        for n in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &n.netns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}-br", self.prefix)])
            .status();
        let _ = &self.tmp;
    }
}

/// Sandbox namespaces (`cni-*`) present now.
fn cni_netns() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("cni-"))
        .collect()
}

fn with_cluster(name: &str, scenario: impl FnOnce(&mut MultiNode)) {
    if let Some(why) = missing_prereqs() {
        eprintln!("SKIP {name}: {why}");
        return;
    }
    let netns_before = cni_netns();
    let kubepods_before = Path::new("/sys/fs/cgroup/memory/kubepods").exists()
        || Path::new("/sys/fs/cgroup/kubepods").exists();
    let mut mn = MultiNode::network(&["server", "agent-1", "agent-2"]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut mn)));
    if result.is_err() {
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"][..],
            &["get", "events", "-A"][..],
        ] {
            let out = mn.kubectl(args);
            eprintln!(
                "--- kubectl {args:?} ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for n in &mn.nodes {
            eprintln!("--- {} log ---\n{}", n.name, n.log_tail());
        }
    }
    mn.teardown();
    for n in cni_netns().difference(&netns_before) {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    if !kubepods_before {
        for root in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
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
    let left: Vec<String> = sh("ip netns list")
        .lines()
        .filter(|l| l.starts_with(&mn.prefix))
        .map(String::from)
        .collect();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn node_multinode_agents_join() {
    with_cluster("node_multinode_agents_join", |mn| {
        mn.start_server(&["--node-monitor-grace-period=20s"]);

        // A token whose CA hash is not this cluster's: the agent stops and says why.
        let secret = mn.token.rsplit(':').next().expect("secret").to_string();
        let forged = format!("K10{}::server:{secret}", "0".repeat(64));
        let args = mn.agent_args(1, &forged, &[]);
        let err = mn.agent_must_fail(1, &args);
        assert!(err.contains("does not match the token"), "{err}");

        mn.start_agent(1, &[]);
        // agent-2 joins with a bootstrap token from `rk3s token create`.
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", mn.nodes[0].netns))
            .arg(env!("CARGO_BIN_EXE_rk3s"))
            .args(["token", "create", "--ttl=1h", "--description=e2e"])
            .arg(format!("--kubeconfig={}", mn.kubeconfig.display()))
            .output()
            .expect("rk3s token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ca_hash = mn.token[3..67].to_string();
        assert!(
            bootstrap.starts_with(&format!("K10{ca_hash}::")),
            "{bootstrap}"
        );
        let list = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", mn.nodes[0].netns))
            .arg(env!("CARGO_BIN_EXE_rk3s"))
            .args(["token", "list"])
            .arg(format!("--kubeconfig={}", mn.kubeconfig.display()))
            .output()
            .expect("rk3s token list");
        let list = String::from_utf8_lossy(&list.stdout).to_string();
        let id_secret = bootstrap
            .rsplit("::")
            .next()
            .expect("id.secret")
            .to_string();
        assert!(list.contains(&id_secret) && list.contains("e2e"), "{list}");
        let args = mn.agent_args(2, &bootstrap, &["--node-label=tier=edge"]);
        mn.image(2);
        mn.spawn(2, &args);
        for name in ["server", "agent-1", "agent-2"] {
            wait_for(&format!("{name} Ready"), Duration::from_secs(120), || {
                for i in 0..3 {
                    mn.assert_running(i);
                }
                (mn.node_ready(name) == "True").then_some(())
            });
        }
        let wide = mn.ok(&["get", "nodes", "-o", "wide"]);
        for n in &mn.nodes {
            assert!(wide.contains(&n.ip), "{} missing in\n{wide}", n.ip);
        }
        let cidrs: Vec<String> = ["server", "agent-1", "agent-2"]
            .iter()
            .map(|n| mn.jsonpath(&["get", "node", n], "{.spec.podCIDR}"))
            .collect();
        assert!(cidrs.iter().all(|c| c.starts_with("10.42.")), "{cidrs:?}");
        assert_ne!(cidrs[1], cidrs[2]);
        assert_eq!(
            mn.jsonpath(&["get", "node", "agent-2"], "{.metadata.labels.tier}"),
            "edge"
        );
        // flannel's annotations, so flannel and rk3s nodes peer.
        for name in ["server", "agent-1", "agent-2"] {
            let data = wait_for(
                &format!("{name}'s flannel annotations"),
                Duration::from_secs(30),
                || {
                    let backend = mn.jsonpath(
                        &["get", "node", name],
                        r#"{.metadata.annotations.flannel\.alpha\.coreos\.com/backend-type}"#,
                    );
                    let data = mn.jsonpath(
                        &["get", "node", name],
                        r#"{.metadata.annotations.flannel\.alpha\.coreos\.com/backend-data}"#,
                    );
                    (backend == "vxlan").then_some(data)
                },
            );
            assert!(
                data.contains("\"VNI\":1") && data.contains("VtepMAC"),
                "{name}: {data}"
            );
        }
        assert!(mn
            .ok(&["get", "secret", "-n", "kube-system"])
            .contains("agent-1.node-password.rk3s"));

        // Another machine taking agent-1's name with another password is refused, with
        // k3s's advice; with --with-node-id it would get a name of its own.
        let other = mn.tmp.join("intruder");
        let mut args = mn.agent_args(2, &mn.token, &[]);
        for a in args.iter_mut() {
            if a.starts_with("--node-name=") {
                *a = "--node-name=agent-1".into();
            }
            if a.starts_with("--data-dir=") {
                *a = format!("--data-dir={}", other.display());
            }
        }
        let err = mn.agent_must_fail(2, &args);
        assert!(err.contains("node password rejected"), "{err}");
        assert!(err.contains("--with-node-id"), "{err}");
        // With --with-node-id the same machine joins under a name of its own.
        let state = other.join("run-containerd");
        args.push("--with-node-id".into());
        args.push("--lb-server-port=6445".into());
        for a in args.iter_mut() {
            if a.starts_with("--containerd-state-dir=") {
                *a = format!("--containerd-state-dir={}", state.display());
            }
        }
        let mut intruder = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", mn.nodes[2].netns))
            .arg(env!("CARGO_BIN_EXE_rk3s"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent --with-node-id");
        let id_name = wait_for("a node named agent-1-<id>", Duration::from_secs(60), || {
            mn.jsonpath(&["get", "nodes"], "{.items[*].metadata.name}")
                .split_whitespace()
                .find(|n| n.starts_with("agent-1-") && n.len() == "agent-1-".len() + 8)
                .map(String::from)
        });
        let _ = Command::new("kill")
            .args(["-TERM", &intruder.id().to_string()])
            .status();
        let _ = intruder.wait();
        kill_containerd(&state);
        rk3s_kubelet::containerd::unmount_under(&state);
        rk3s_kubelet::containerd::unmount_under(&other);
        mn.ok(&["delete", "node", &id_name]);

        // Pods run on the agents: logs and exec go through the API server to their kubelets.
        mn.apply(&format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: spread}}
spec:
  replicas: 6
  selector: {{matchLabels: {{app: spread}}}}
  template:
    metadata: {{labels: {{app: spread}}}}
    spec:
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Honor, labelSelector: {{matchLabels: {{app: spread}}}}}}
      tolerations:
      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      containers:
      - name: c
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", "echo hello from $(hostname); sleep 3600"]
"#
        ));
        wait_for("6 spread pods Running", Duration::from_secs(120), || {
            let phases = mn.jsonpath(
                &["get", "pods", "-l", "app=spread"],
                "{.items[*].status.phase}",
            );
            (phases
                .split_whitespace()
                .filter(|p| *p == "Running")
                .count()
                == 6)
                .then_some(())
        });
        let placed = mn.jsonpath(
            &["get", "pods", "-l", "app=spread"],
            "{range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        );
        for node in ["server", "agent-1", "agent-2"] {
            assert_eq!(
                placed
                    .lines()
                    .filter(|l| l.ends_with(&format!(" {node}")))
                    .count(),
                2,
                "{placed}"
            );
        }
        let on_agent = placed
            .lines()
            .find(|l| l.ends_with(" agent-1"))
            .and_then(|l| l.split_whitespace().next())
            .expect("a pod on agent-1")
            .to_string();
        let logs = mn.ok(&["logs", &on_agent]);
        assert!(logs.contains("hello from"), "{logs}");
        let out = mn.ok(&["exec", &on_agent, "--", "cat", "/etc/hostname"]);
        assert_eq!(out.trim(), on_agent);

        // The pod network across nodes: from a pod on agent-1, pods on the other nodes
        // answer at their IPs, through the Service's ClusterIP and its DNS name.
        mn.apply(&format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
      - name: web
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
        ));
        wait_for("3 web pods ready", Duration::from_secs(120), || {
            let ready = mn.jsonpath(
                &["get", "pods", "-l", "app=web"],
                r#"{.items[*].status.conditions[?(@.type=="Ready")].status}"#,
            );
            (ready.split_whitespace().filter(|s| *s == "True").count() == 3).then_some(())
        });
        let web = mn.jsonpath(
            &["get", "pods", "-l", "app=web"],
            "{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{\"\\n\"}{end}",
        );
        let web: Vec<(String, String, String)> = web
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
            })
            .collect();
        assert_eq!(web.len(), 3, "{web:?}");
        for (pod, node, ip) in &web {
            let got = mn.ok(&[
                "exec",
                &on_agent,
                "--",
                "timeout",
                "10",
                "wget",
                "-qO-",
                &format!("http://{ip}:8080/"),
            ]);
            assert_eq!(got.trim(), pod, "{pod} on {node} at {ip}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let got = mn.ok(&[
                "exec",
                &on_agent,
                "--",
                "timeout",
                "10",
                "wget",
                "-qO-",
                "http://web.default.svc.cluster.local/",
            ]);
            seen.insert(got.trim().to_string());
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen.len(), 3, "the Service answered from {seen:?} only");
        // kubectl port-forward to a pod on agent-2 (API server -> agent-2's kubelet).
        let (pf_pod, _, _) = web
            .iter()
            .find(|(_, node, _)| node == "agent-2")
            .expect("a web pod on agent-2")
            .clone();
        let mut pf = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", mn.nodes[0].netns))
            .arg(common::kubectl_bin())
            .arg(format!("--kubeconfig={}", mn.kubeconfig.display()))
            .args(["port-forward", &format!("pod/{pf_pod}"), "18080:8080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("port-forward");
        let busybox = rk3s_kubelet::image::find_static_busybox().expect("busybox");
        let forwarded = wait_for("port-forward answers", Duration::from_secs(30), || {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", mn.nodes[0].netns))
                .args(["timeout", "5"])
                .arg(&busybox)
                .args(["wget", "-qO-", "http://127.0.0.1:18080/"])
                .output()
                .ok()?;
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!body.is_empty()).then_some(body)
        });
        let _ = pf.kill();
        let _ = pf.wait();
        assert_eq!(forwarded, pf_pod);

        // The NodePort answers on every node's IP.
        let node_port = mn.jsonpath(&["get", "svc", "web"], "{.spec.ports[0].nodePort}");
        for n in &mn.nodes {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", mn.nodes[0].netns))
                .args(["timeout", "10"])
                .arg(&busybox)
                .args(["wget", "-qO-", &format!("http://{}:{node_port}/", n.ip)])
                .output()
                .expect("wget");
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(
                web.iter().any(|(p, _, _)| *p == body),
                "NodePort on {}: {body:?} {}",
                n.ip,
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // The agent's credentials are its node's, nothing more.
        let kc = mn.nodes[1].data_dir().join("agent/kubelet.kubeconfig");
        let other_ns = mn.kubectl_in(1, &kc, &["get", "secrets", "-n", "kube-system"]);
        assert!(!other_ns.status.success());
        assert!(
            String::from_utf8_lossy(&other_ns.stderr).contains("forbidden"),
            "{}",
            String::from_utf8_lossy(&other_ns.stderr)
        );
        let patch_other = mn.kubectl_in(1, &kc, &["label", "node", "agent-2", "stolen=yes"]);
        assert!(!patch_other.status.success());
        let err = String::from_utf8_lossy(&patch_other.stderr).to_string();
        assert!(
            err.contains("is not allowed to modify node \"agent-2\"") && err.contains("Forbidden")
                || err.contains("forbidden"),
            "{err}"
        );
        assert_eq!(
            mn.jsonpath(&["get", "node", "agent-2"], "{.metadata.labels.stolen}"),
            ""
        );
        // A Secret a pod on agent-1 uses is readable with agent-1's credentials; one no
        // pod of agent-1 uses is not.
        mn.ok(&["create", "secret", "generic", "used", "--from-literal=k=v"]);
        mn.ok(&[
            "create",
            "secret",
            "generic",
            "unused",
            "--from-literal=k=v",
        ]);
        mn.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: uses-secret}}
spec:
  nodeName: agent-1
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    envFrom: [{{secretRef: {{name: used}}}}]
"#
        ));
        wait_for(
            "agent-1 may read the Secret its pod uses",
            Duration::from_secs(30),
            || {
                mn.kubectl_in(1, &kc, &["get", "secret", "used"])
                    .status
                    .success()
                    .then_some(())
            },
        );
        let unused = mn.kubectl_in(1, &kc, &["get", "secret", "unused"]);
        assert!(!unused.status.success());
        assert!(String::from_utf8_lossy(&unused.stderr).contains("forbidden"));
        // The agent's clients go through its load balancer, which knows the server.
        let kubeconfig = std::fs::read_to_string(&kc).expect("kubeconfig");
        assert!(
            kubeconfig.contains("server: https://127.0.0.1:6444"),
            "{kubeconfig}"
        );
        let lb_state = std::fs::read_to_string(
            mn.nodes[1]
                .data_dir()
                .join("agent/etc/rk3s-agent-load-balancer.json"),
        )
        .expect("load balancer state");
        assert!(lb_state.contains("198.18.0.1:6443"), "{lb_state}");
        let own = mn.kubectl_in(1, &kc, &["get", "node", "agent-1"]);
        assert!(
            own.status.success(),
            "{}",
            String::from_utf8_lossy(&own.stderr)
        );

        // Stop agent-2: its node goes NotReady, its pods come back on the other nodes.
        let uid = mn.jsonpath(&["get", "node", "agent-2"], "{.metadata.uid}");
        mn.nodes[2].stop();
        wait_for("agent-2 NotReady", Duration::from_secs(60), || {
            (mn.node_ready("agent-2") != "True").then_some(())
        });
        wait_for(
            "spread pods moved off agent-2",
            Duration::from_secs(90),
            || {
                let placed = mn.jsonpath(
                &["get", "pods", "-l", "app=spread"],
                "{range .items[*]}{.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            );
                let live: Vec<&str> = placed
                    .lines()
                    .filter(|l| {
                        l.split_whitespace().count() == 2 && l.trim_end().ends_with(" Running")
                    })
                    .collect();
                (live.len() == 6 && !live.iter().any(|l| l.starts_with("agent-2 "))).then_some(())
            },
        );
        // The Service keeps answering from the pods on the nodes that are up.
        for _ in 0..10 {
            let got = mn.ok(&[
                "exec",
                &on_agent,
                "--",
                "timeout",
                "10",
                "wget",
                "-qO-",
                "http://web.default.svc.cluster.local/",
            ]);
            assert!(
                web.iter()
                    .any(|(p, node, _)| *p == got.trim() && node != "agent-2"),
                "{got:?}"
            );
        }
        // Start it again: the same node (no new registration) comes back Ready.
        let args = mn.agent_args(2, &bootstrap, &["--node-label=tier=edge"]);
        mn.spawn(2, &args);
        wait_for("agent-2 Ready again", Duration::from_secs(90), || {
            mn.assert_running(2);
            (mn.node_ready("agent-2") == "True").then_some(())
        });
        assert_eq!(
            mn.jsonpath(&["get", "node", "agent-2"], "{.metadata.uid}"),
            uid
        );
        eprintln!("{}", mn.ok(&["get", "nodes", "-o", "wide"]));
    });
}
