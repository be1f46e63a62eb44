//! Services, cluster DNS, ServiceLB and NetworkPolicy on the real node agent: pods reach
//! each other by Service IP and by name, the API server answers pods at
//! `kubernetes.default.svc`, NodePorts and LoadBalancer IPs answer on the node, an empty
//! Service refuses at once, ClientIP affinity sticks, and NetworkPolicies are enforced.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips otherwise.
//! The API server listens on the node's own address (pods must reach it), the cluster
//! DNS forwards to a DNS server this test runs on 127.0.0.77:53; no traffic leaves the
//! machine. Each test leaves nothing behind (`common::node::run_node_test`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::node::*;
use common::{wait_for, Cluster};

/// A minimal DNS server on 127.0.0.77:53 for the test's "outside world": A questions
/// for `outside.example.` get 198.51.100.7 (a documentation address, never contacted);
/// any other name gets NXDOMAIN.
struct FakeUpstream {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const UPSTREAM_ADDR: &str = "127.0.0.77:53";
const OUTSIDE_IP: [u8; 4] = [198, 51, 100, 7];

impl FakeUpstream {
    fn start() -> FakeUpstream {
        let sock =
            UdpSocket::bind(UPSTREAM_ADDR).expect("bind the fake upstream DNS on 127.0.0.77:53");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(resp) = answer(&buf[..n]) {
                    let _ = sock.send_to(&resp, peer);
                }
            }
        });
        FakeUpstream {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fake upstream's answer to one query (header and question echoed).
fn answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qend = i + 4;
    let name = labels.join(".");
    let known = name == "outside.example";
    let hit = known && qtype == 1;
    let mut r = Vec::new();
    r.extend_from_slice(&q[0..2]);
    let rcode = if known { 0 } else { 3 };
    r.extend_from_slice(&[0x84 | (q[2] & 0x01), 0x80 | rcode]);
    r.extend_from_slice(&[0, 1, 0, u8::from(hit), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..qend)?);
    if hit {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        r.extend_from_slice(&OUTSIDE_IP);
    }
    Some(r)
}

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: IMAGE
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /index.html, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web-sticky
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web-np
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web-lb
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: 18080, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: ext
spec:
  type: ExternalName
  externalName: outside.example
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  clusterIP: None
  selector: {app: db}
  ports:
  - {name: tcp, port: 5432}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 1
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: IMAGE
        imagePullPolicy: Never
        command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {role: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: IMAGE
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#;

/// `kubectl exec POD -- sh -c CMD`: (success, stdout + stderr).
fn exec(c: &Cluster, pod: &str, cmd: &str) -> (bool, String) {
    let out = c.kubectl(&["exec", pod, "--", "sh", "-c", cmd]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `cmd` in `pod` until it succeeds; returns its output.
fn exec_until_ok(c: &Cluster, pod: &str, cmd: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, out) = exec(c, pod, cmd);
        if ok {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "`{cmd}` in {pod} kept failing: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `nslookup ARGS` in `pod` until a word of its output is `expect` (busybox's
/// nslookup exits 1 when any of its queries fails, so its exit status says little, and it
/// applies the search path only to names without a dot); returns the output.
fn lookup(c: &Cluster, pod: &str, args: &str, expect: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = exec(c, pod, &format!("nslookup {args} 2>&1"));
        if has_word(&out, expect) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "nslookup {args} in {pod} never showed {expect:?}: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True when `word` is one of the whitespace-separated words of `text`.
fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

/// Builds an image with busybox's shell and the (static) kubectl, and imports it into
/// the cluster's containerd: an in-cluster API client for pods.
fn import_kubectl_image(c: &Cluster) {
    let root = c.path().join("kubectl-rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    std::fs::create_dir_all(root.join("tmp")).expect("rootfs tmp");
    let busybox = rk3s_kubelet::image::find_static_busybox().expect("static busybox");
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "sleep", "cat"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::copy(common::kubectl_bin(), root.join("bin/kubectl")).expect("copy kubectl");
    build_and_import_image(c, &root, KUBECTL_IMAGE, &[]);
}

const KUBECTL_IMAGE: &str = "rk3s.test/kubectl:e2e";

/// An HTTP GET of /index.html from this host; the body, or None when the connection fails.
fn http_get(addr: &str) -> Option<String> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
}

fn rk3s_tables() -> Vec<String> {
    sh("nft list tables 2>/dev/null")
        .lines()
        .filter(|l| l.contains("rk3s"))
        .map(String::from)
        .collect()
}

#[test]
fn node_services_dns_and_load_balancers() {
    if missing_prereqs().is_some() {
        eprintln!("SKIP: node prerequisites missing");
        return;
    }
    let node_ip = primary_ip();
    let _upstream = FakeUpstream::start();
    let resolv = tempfile::NamedTempFile::new().expect("resolv.conf");
    std::fs::write(resolv.path(), "nameserver 127.0.0.77\n").expect("write resolv.conf");
    let resolv_flag = format!("--resolv-conf={}", resolv.path().display());
    let advertise = format!("--advertise-address={node_ip}");
    run_node_test(
        "node_services_dns_and_load_balancers",
        &["--bind-address=0.0.0.0", &advertise, &resolv_flag],
        |c| {
            wait_node_ready(c);
            apply(c, &WEB.replace("IMAGE", BUSYBOX_IMAGE));
            c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
            c.ok(&["rollout", "status", "statefulset/db", "--timeout=90s"]);
            wait_running(c, "client");
            assert!(
                rk3s_tables().iter().any(|t| t.contains("rk3s-proxy")),
                "the proxy's table exists: {:?}",
                rk3s_tables()
            );

            // kube-dns exists as on k3s, at the cluster DNS address.
            let dns_ip = jsonpath(
                c,
                &["get", "svc", "-n", "kube-system", "kube-dns"],
                "{.spec.clusterIP}",
            );
            assert_eq!(dns_ip, "10.43.0.10");

            // The ClusterIP and every name form of the Service.
            let ip = jsonpath(c, &["get", "svc", "web"], "{.spec.clusterIP}");
            let body = exec_until_ok(
                c,
                "client",
                &format!("timeout 5 wget -q -O- http://{ip}/index.html"),
                Duration::from_secs(20),
            );
            assert!(body.starts_with("web-"), "served by a web pod: {body}");
            for name in ["web", "web.default", "web.default.svc.cluster.local"] {
                let body = exec_until_ok(
                    c,
                    "client",
                    &format!("timeout 5 wget -q -O- http://{name}/index.html"),
                    Duration::from_secs(20),
                );
                assert!(body.starts_with("web-"), "{name}: {body}");
            }

            // DNS records.
            lookup(
                c,
                "client",
                "kubernetes.default.svc.cluster.local",
                "10.43.0.1",
            );
            let out = lookup(
                c,
                "client",
                "-type=srv _http._tcp.web.default.svc.cluster.local",
                "web.default.svc.cluster.local",
            );
            assert!(has_word(&out, "80"), "SRV of the named port: {out}");
            let db_ip = jsonpath(c, &["get", "pod", "db-0"], "{.status.podIP}");
            lookup(c, "client", "db-0.db.default.svc.cluster.local", &db_ip);
            let out = lookup(c, "client", "ext.default.svc.cluster.local", "198.51.100.7");
            assert!(
                out.contains("outside.example"),
                "ExternalName as a CNAME, followed upstream: {out}"
            );
            lookup(c, "client", &ip, "web.default.svc.cluster.local");
            lookup(c, "client", "outside.example", "198.51.100.7");
            lookup(c, "client", "nosuch.default.svc.cluster.local", "NXDOMAIN");

            // The API server from a pod at https://kubernetes.default.svc, with the pod's
            // service-account token and CA (kubectl as the in-cluster client).
            import_kubectl_image(c);
            c.ok(&[
                "run",
                "incluster",
                "--image",
                KUBECTL_IMAGE,
                "--image-pull-policy=Never",
                "--",
                "sleep",
                "3600",
            ]);
            wait_running(c, "incluster");
            let out = exec_until_ok(
            c,
            "incluster",
            "sa=/var/run/secrets/kubernetes.io/serviceaccount; kubectl --server https://kubernetes.default.svc --token \"$(cat $sa/token)\" --certificate-authority $sa/ca.crt get --raw /api",
            Duration::from_secs(20),
        );
            assert!(out.contains("APIVersions"), "in-cluster API: {out}");

            // NodePort from the host.
            let np = jsonpath(c, &["get", "svc", "web-np"], "{.spec.ports[0].nodePort}");
            let addr = format!("{node_ip}:{np}");
            let body = wait_for("NodePort answers", Duration::from_secs(20), || {
                http_get(&addr)
            });
            assert!(body.starts_with("web-"), "NodePort: {body}");

            // LoadBalancer: the node's IP in the status, answering on it.
            let lb = wait_for("LoadBalancer ingress", Duration::from_secs(20), || {
                let s = jsonpath(
                    c,
                    &["get", "svc", "web-lb"],
                    "{.status.loadBalancer.ingress[0].ip}",
                );
                (!s.is_empty()).then_some(s)
            });
            assert_eq!(lb, node_ip.to_string());
            let lb_addr = format!("{lb}:18080");
            let body = wait_for("LoadBalancer answers", Duration::from_secs(20), || {
                http_get(&lb_addr)
            });
            assert!(body.starts_with("web-"), "LoadBalancer: {body}");
            c.ok(&["delete", "svc", "web-lb"]);
            wait_for(
                "LoadBalancer rules removed",
                Duration::from_secs(10),
                || http_get(&lb_addr).is_none().then_some(()),
            );

            // ClientIP affinity: 20 requests, one backend.
            let out = exec_until_ok(
            c,
            "client",
            "for i in $(seq 20); do timeout 5 wget -q -O- http://web-sticky/index.html || echo FAIL; done",
            Duration::from_secs(20),
        );
            let backends: std::collections::BTreeSet<&str> = out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            assert_eq!(
                backends.len(),
                1,
                "ClientIP affinity keeps one backend: {backends:?}"
            );
            assert!(!backends.contains("FAIL"), "{out}");

            // No endpoints: refused at once, not a time-out.
            c.ok(&["scale", "deployment/web", "--replicas=0"]);
            wait_for("no web endpoints", Duration::from_secs(30), || {
                jsonpath(
                    c,
                    &[
                        "get",
                        "endpointslices",
                        "-l",
                        "kubernetes.io/service-name=web",
                    ],
                    "{.items[*].endpoints[*].addresses[0]}",
                )
                .trim()
                .is_empty()
                .then_some(())
            });
            // The time of one `kubectl exec` of `true` is subtracted from the probe's.
            let probe = format!("timeout 10 wget -q -O- http://{ip}/index.html; echo rc=$?");
            let (out, ms) = wait_for("the empty Service refuses", Duration::from_secs(10), || {
                let t = Instant::now();
                let _ = exec(c, "client", "true");
                let base = t.elapsed();
                let t = Instant::now();
                let (_, out) = exec(c, "client", &probe);
                let took = t.elapsed().saturating_sub(base);
                out.contains("refused").then_some((out, took.as_millis()))
            });
            eprintln!("connection to an empty Service refused after ~{ms} ms");
            assert!(
                ms < 1000,
                "refused within 1 s, not a time-out: ~{ms} ms: {out}"
            );
            c.ok(&["scale", "deployment/web", "--replicas=3"]);
            c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
            let t = Instant::now();
            exec_until_ok(
                c,
                "client",
                &format!("timeout 5 wget -q -O- http://{ip}/index.html"),
                Duration::from_secs(10),
            );
            eprintln!(
                "serving again {} ms after the rollout finished",
                t.elapsed().as_millis()
            );

            c.ok(&["delete", "svc", "web", "web-np", "web-sticky", "ext", "db"]);
        },
    );
}

const POLICY_PODS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: server
  labels: {app: server}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: IMAGE
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - {name: http, containerPort: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: friend
  labels: {role: friend}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: IMAGE, imagePullPolicy: Never, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata:
  name: stranger
  labels: {role: stranger}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: IMAGE, imagePullPolicy: Never, command: ["sleep", "3600"]}
"#;

const DENY_INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
"#;

const ALLOW_FRIEND: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-friend
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: friend}}
    ports:
    - {port: http}
"#;

const EGRESS_WEB_ONLY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: egress-web-only
spec:
  podSelector: {matchLabels: {role: stranger}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {port: 8080, protocol: TCP}
"#;

#[test]
fn node_network_policies() {
    if missing_prereqs().is_some() {
        eprintln!("SKIP: node prerequisites missing");
        return;
    }
    let node_ip = primary_ip();
    let advertise = format!("--advertise-address={node_ip}");
    run_node_test(
        "node_network_policies",
        &["--bind-address=0.0.0.0", &advertise],
        |c| {
            wait_node_ready(c);
            apply(c, &POLICY_PODS.replace("IMAGE", BUSYBOX_IMAGE));
            for p in ["server", "friend", "stranger"] {
                wait_running(c, p);
            }
            let server = jsonpath(c, &["get", "pod", "server"], "{.status.podIP}");
            let get = format!("timeout 3 wget -q -O- http://{server}:8080/index.html");
            for p in ["friend", "stranger"] {
                assert!(
                    exec_until_ok(c, p, &get, Duration::from_secs(20)).contains("hello"),
                    "{p} reaches the server before any policy"
                );
            }
            // DNS works before the egress policy.
            lookup(
                c,
                "stranger",
                "kubernetes.default.svc.cluster.local",
                "10.43.0.1",
            );

            apply(c, DENY_INGRESS);
            wait_for(
                "default-deny blocks the friend",
                Duration::from_secs(10),
                || (!exec(c, "friend", &get).0).then_some(()),
            );
            assert!(
                !exec(c, "stranger", &get).0,
                "default-deny blocks the stranger"
            );

            apply(c, ALLOW_FRIEND);
            let out = exec_until_ok(c, "friend", &get, Duration::from_secs(10));
            assert!(
                out.contains("hello"),
                "the allow rule re-opens it for the friend: {out}"
            );
            assert!(!exec(c, "stranger", &get).0, "and only for the friend");

            // A label change is followed: the stranger becomes a friend, then not again.
            c.ok(&["label", "pod", "stranger", "role=friend", "--overwrite"]);
            exec_until_ok(c, "stranger", &get, Duration::from_secs(10));
            c.ok(&["label", "pod", "stranger", "role=stranger", "--overwrite"]);
            wait_for(
                "relabelled stranger blocked again",
                Duration::from_secs(10),
                || (!exec(c, "stranger", &get).0).then_some(()),
            );

            // Egress allowing only TCP 8080 blocks DNS.
            apply(c, EGRESS_WEB_ONLY);
            wait_for("egress policy blocks DNS", Duration::from_secs(10), || {
                let (_, out) = exec(
                    c,
                    "stranger",
                    "nslookup -timeout=1 -retry=1 kubernetes.default.svc.cluster.local 2>&1",
                );
                (!has_word(&out, "10.43.0.1")).then_some(())
            });
            c.ok(&["delete", "networkpolicy", "--all"]);
            lookup(
                c,
                "stranger",
                "kubernetes.default.svc.cluster.local",
                "10.43.0.1",
            );
            exec_until_ok(c, "stranger", &get, Duration::from_secs(10));
        },
    );
}
