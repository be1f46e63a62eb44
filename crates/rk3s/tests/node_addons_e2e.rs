//! The built-in add-ons on the real node agent (issue 14): the Ingress controller on the
//! node's ports 80 and 443, local-path volumes from the default StorageClass, the metrics
//! API (`kubectl top`, a CPU-based HorizontalPodAutoscaler) and HelmChart jobs.
//!
//! Needs root, containerd, runc, busybox-static and the CNI plugins; skips otherwise.
//! Requests go to the node's own address from this host; no traffic leaves the machine.
//! Each test leaves nothing behind (`common::node::run_node_test`).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::node::*;
use common::wait_for;

/// One HTTP/1.1 request to `addr` with `Host: host`; (status, body) or None when the
/// connection fails.
fn http(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    parse_response(&String::from_utf8_lossy(&out))
}

/// (status, body) of an HTTP/1.x response.
fn parse_response(text: &str) -> Option<(u16, String)> {
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Polls `host` + `path` on `addr` until the status is `want` and the body contains
/// `body`; returns the body.
fn wait_http(addr: SocketAddr, host: &str, path: &str, want: u16, body: &str) -> String {
    wait_for(
        &format!("{want} {body:?} for http://{host}{path} via {addr}"),
        Duration::from_secs(60),
        || match http(addr, host, path) {
            Some((s, b)) if s == want && b.contains(body) => Some(b),
            _ => None,
        },
    )
}

const BACKENDS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: svc-a}
spec:
  replicas: 1
  selector: {matchLabels: {app: svc-a}}
  template:
    metadata: {labels: {app: svc-a}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: IMAGE
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www/a && echo backend-a > /www/a/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /a/index.html, port: http}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: svc-b}
spec:
  replicas: 1
  selector: {matchLabels: {app: svc-b}}
  template:
    metadata: {labels: {app: svc-b}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: IMAGE
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www/b && echo backend-b > /www/b/index.html && exec httpd -f -p 9090 -h /www"]
        ports: [{name: http, containerPort: 9090}]
        readinessProbe: {httpGet: {path: /b/index.html, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: svc-a}
spec:
  selector: {app: svc-a}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-b}
spec:
  selector: {app: svc-b}
  ports: [{name: web, port: 8081, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing}
spec:
  selector: {app: nothing-runs-this}
  ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  tls: [{hosts: [web.example], secretName: web-tls}]
  rules:
  - host: web.example
    http:
      paths:
      - {path: /a, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
      - {path: /b, pathType: Prefix, backend: {service: {name: svc-b, port: {name: web}}}}
  - host: empty.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: nothing, port: {number: 80}}}}
"#;

/// The Service (no selector), its EndpointSlice (this host's echo server) and the Ingress
/// of the WebSocket check.
fn echo_objects(node_ip: Ipv4Addr, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  ports: [{{name: ws, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
endpoints: [{{addresses: ["{node_ip}"], conditions: {{ready: true}}}}]
ports: [{{name: ws, port: {port}, protocol: TCP}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: echo}}
spec:
  ingressClassName: rk3s
  rules:
  - host: ws.example
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{name: ws}}}}}}}}
"#
    )
}

/// A WebSocket echo server on this host (RFC 6455's handshake; echoes each small text
/// frame back unmasked), stopped on drop.
struct EchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(ip: Ipv4Addr) -> EchoServer {
        let l = TcpListener::bind((ip, 0)).expect("bind the echo server");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo_session(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        EchoServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The accept value RFC 6455 gives for its sample key `dGhlIHNhbXBsZSBub25jZQ==`.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).to_string())
}

fn echo_session(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(head) = read_head(&mut s) else {
        return;
    };
    let lower = head.to_ascii_lowercase();
    if !lower.contains("upgrade: websocket") || !head.contains(WS_KEY) {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let _ = write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
    );
    // Frames: FIN+text, masked, payload < 126 bytes.
    loop {
        let mut h = [0u8; 2];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let len = (h[1] & 0x7f) as usize;
        let mut mask = [0u8; 4];
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut mask).is_err() || s.read_exact(&mut payload).is_err() {
            return;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let mut frame = vec![0x81, len as u8];
        frame.extend_from_slice(&payload);
        if s.write_all(&frame).is_err() {
            return;
        }
    }
}

/// A WebSocket round trip through the ingress: the handshake's answer and the echoed text.
fn websocket_echo(addr: SocketAddr, host: &str, text: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .ok()?;
    let head = read_head(&mut s)?;
    if !head.starts_with("HTTP/1.1 101") {
        // Not routed yet (404) or no endpoint yet (503): the caller polls.
        return None;
    }
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).ok()?;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
    s.read_exact(&mut payload).ok()?;
    Some((head, String::from_utf8_lossy(&payload).to_string()))
}

/// An HTTPS GET through `addr` with SNI `host`, trusting only `ca_pem`: the body, or
/// None when the handshake or request fails (e.g. another certificate is served).
fn https_get(addr: SocketAddr, host: &str, path: &str, ca_pem: &str) -> Option<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?)
        .ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).ok()?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    // A peer that closes without close_notify still gave us the response.
    let _ = tls.read_to_end(&mut out);
    parse_response(&String::from_utf8_lossy(&out))
}

#[test]
fn node_ingress() {
    let node_ip = primary_ip();
    let advertise = format!("--advertise-address={node_ip}");
    run_node_test(
        "node_ingress",
        &["--bind-address=0.0.0.0", &advertise],
        |c| {
            wait_node_ready(c);
            let http80 = SocketAddr::from((node_ip, 80));
            let https443 = SocketAddr::from((node_ip, 443));

            // The built-in controller shows as k3s's Traefik does: a default IngressClass
            // and a LoadBalancer Service in kube-system with the node's address.
            wait_for("IngressClass rk3s", Duration::from_secs(30), || {
                let v = jsonpath(
                    c,
                    &["get", "ingressclass", "rk3s", "--ignore-not-found"],
                    r#"{.metadata.annotations.ingressclass\.kubernetes\.io/is-default-class}"#,
                );
                (v == "true").then_some(())
            });
            wait_for(
                "kube-system/rk3s-ingress with the node's IP",
                Duration::from_secs(30),
                || {
                    let v = jsonpath(
                        c,
                        &["get", "svc", "-n", "kube-system", "rk3s-ingress"],
                        "{.spec.type} {.status.loadBalancer.ingress[*].ip}",
                    );
                    v.starts_with("LoadBalancer")
                        .then_some(())
                        .filter(|_| v.contains(&node_ip.to_string()))
                },
            );

            apply(c, &BACKENDS.replace("IMAGE", BUSYBOX_IMAGE));
            c.ok(&["rollout", "status", "deployment/svc-a", "--timeout=90s"]);
            c.ok(&["rollout", "status", "deployment/svc-b", "--timeout=90s"]);

            // Host and path rules reach the right backends (by port number and by name).
            let t0 = Instant::now();
            wait_http(http80, "web.example", "/a/index.html", 200, "backend-a");
            eprintln!("ingress served the first request after {:?}", t0.elapsed());
            wait_http(http80, "web.example", "/b/index.html", 200, "backend-b");
            // A path no rule matches, an unknown host, a Service without endpoints.
            let (s, _) = http(http80, "web.example", "/c/index.html").expect("request");
            assert_eq!(s, 404, "no rule for /c");
            let (s, _) = http(http80, "unknown.example", "/a/index.html").expect("request");
            assert_eq!(s, 404, "unknown host");
            let (s, _) = http(http80, "empty.example", "/").expect("request");
            assert_eq!(s, 503, "Service without endpoints");

            // status.loadBalancer of the Ingress is the node's address.
            wait_for("Ingress status", Duration::from_secs(30), || {
                let v = jsonpath(
                    c,
                    &["get", "ingress", "web"],
                    "{.status.loadBalancer.ingress[*].ip}",
                );
                v.contains(&node_ip.to_string()).then_some(())
            });

            // TLS: a kubernetes.io/tls Secret created after the Ingress is served live for
            // its SNI name; the port answers before it with the default certificate.
            let cert = rcgen::generate_simple_self_signed(vec!["web.example".to_string()])
                .expect("certificate");
            let cert_pem = cert.cert.pem();
            assert!(
                https_get(https443, "web.example", "/a/index.html", &cert_pem).is_none(),
                "before the Secret exists, web.example's certificate is not served"
            );
            let crt = c.path().join("web.crt");
            let key = c.path().join("web.key");
            std::fs::write(&crt, &cert_pem).expect("write cert");
            std::fs::write(&key, cert.signing_key.serialize_pem()).expect("write key");
            c.ok(&[
                "create",
                "secret",
                "tls",
                "web-tls",
                &format!("--cert={}", crt.display()),
                &format!("--key={}", key.display()),
            ]);
            let (s, body) = wait_for(
                "HTTPS with the Secret's certificate",
                Duration::from_secs(30),
                || https_get(https443, "web.example", "/a/index.html", &cert_pem),
            );
            assert_eq!(s, 200);
            assert!(body.contains("backend-a"), "{body}");

            // WebSocket upgrade pass-through to an endpoint on this host.
            let echo = EchoServer::start(node_ip);
            apply(c, &echo_objects(node_ip, echo.port));
            let (head, text) = wait_for("WebSocket echo", Duration::from_secs(30), || {
                websocket_echo(http80, "ws.example", "hello-ws")
            });
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(head.contains(WS_ACCEPT), "{head}");
            assert_eq!(text, "hello-ws");
            drop(echo);
        },
    );
}

#[test]
fn node_local_path_storage() {
    run_node_test("node_local_path_storage", &[], |c| {
        let node = wait_node_ready(c);
        wait_for(
            "StorageClass local-path (default)",
            Duration::from_secs(30),
            || {
                let v = jsonpath(
                    c,
                    &["get", "storageclass", "local-path", "--ignore-not-found"],
                    r#"{.provisioner} {.volumeBindingMode} {.reclaimPolicy} {.metadata.annotations.storageclass\.kubernetes\.io/is-default-class}"#,
                );
                (v == "rancher.io/local-path WaitForFirstConsumer Delete true").then_some(())
            },
        );
        apply(
            c,
            r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 8Mi}}
"#,
        );
        // WaitForFirstConsumer: nothing is provisioned before a pod uses the claim.
        assert_eq!(
            jsonpath(
                c,
                &["get", "pvc", "data"],
                "{.spec.storageClassName} {.status.phase}"
            ),
            "local-path Pending"
        );
        let with_claim = |name: &str, cmd: &str| {
            format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "{cmd}"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: data}}
"#
            )
        };
        apply(
            c,
            &with_claim("writer", "echo persisted > /data/f && sleep 3600"),
        );
        wait_running(c, "writer");
        let pv = jsonpath(c, &["get", "pvc", "data"], "{.spec.volumeName}");
        assert_eq!(
            jsonpath(c, &["get", "pvc", "data"], "{.status.phase}"),
            "Bound"
        );
        assert_eq!(
            jsonpath(
                c,
                &["get", "pv", &pv],
                "{.status.phase} {.spec.persistentVolumeReclaimPolicy} {.spec.storageClassName} {.spec.claimRef.name}"
            ),
            "Bound Delete local-path data"
        );
        assert_eq!(
            jsonpath(
                c,
                &["get", "pv", &pv],
                "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"
            ),
            node,
            "the volume is pinned to the pod's node"
        );
        let path = jsonpath(c, &["get", "pv", &pv], "{.spec.hostPath.path}");
        let folder = std::path::PathBuf::from(&path);
        assert!(
            folder.starts_with(c.data_dir().join("storage")),
            "{path} is under <data-dir>/storage"
        );
        assert_eq!(
            folder.file_name().and_then(|n| n.to_str()),
            Some(format!("{pv}_default_data").as_str())
        );
        wait_for(
            "the pod's file on the node",
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(folder.join("f"))
                    .ok()
                    .filter(|s| s.trim() == "persisted")
            },
        );
        let listing = c.ok(&["get", "pv,pvc"]);
        assert!(listing.contains("local-path"), "{listing}");

        // The data outlives the pod: a new pod reads it.
        c.ok(&["delete", "pod", "writer", "--grace-period=1"]);
        apply(c, &with_claim("reader", "cat /data/f"));
        wait_for("reader's output", Duration::from_secs(60), || {
            let out = c.kubectl(&["logs", "reader"]);
            (String::from_utf8_lossy(&out.stdout).trim() == "persisted").then_some(())
        });
        c.ok(&["delete", "pod", "reader", "--grace-period=1"]);

        // Deleting the claim releases the volume: the PV and its folder are removed.
        c.ok(&["delete", "pvc", "data", "--timeout=60s"]);
        wait_for("the PV deleted", Duration::from_secs(60), || {
            c.ok(&["get", "pv", "-o", "name"])
                .trim()
                .is_empty()
                .then_some(())
        });
        wait_for("the folder removed", Duration::from_secs(30), || {
            (!folder.exists()).then_some(())
        });
    });
}

/// The value of a `kubectl top` CPU column in millicores (`250m`, `1` core).
fn millicores(s: &str) -> Option<u64> {
    match s.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => s.parse::<u64>().ok().map(|c| c * 1000),
    }
}

#[test]
fn node_metrics_top_and_hpa() {
    run_node_test("node_metrics_top_and_hpa", &[], |c| {
        let node = wait_node_ready(c);
        // The metrics API is registered as metrics-server's is.
        wait_for(
            "APIService v1beta1.metrics.k8s.io Available",
            Duration::from_secs(30),
            || {
                let v = jsonpath(
                    c,
                    &[
                        "get",
                        "apiservice",
                        "v1beta1.metrics.k8s.io",
                        "--ignore-not-found",
                    ],
                    r#"{.status.conditions[?(@.type=="Available")].status}"#,
                );
                (v == "True").then_some(())
            },
        );
        apply(
            c,
            &format!(
                r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", "while :; do :; done"]
        resources:
          requests: {{cpu: 100m, memory: 16Mi}}
          limits: {{cpu: 300m}}
"#
            ),
        );
        c.ok(&["rollout", "status", "deployment/burn", "--timeout=90s"]);

        // kubectl top nodes: the node with CPU and memory figures.
        let t0 = Instant::now();
        let nodes = wait_for("kubectl top nodes", Duration::from_secs(60), || {
            let out = c.kubectl(&["top", "nodes"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            (out.status.success() && text.contains(&node)).then_some(text)
        });
        eprintln!(
            "kubectl top nodes answered after {:?}:\n{nodes}",
            t0.elapsed()
        );
        let header: Vec<&str> = nodes
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
        );
        let row: Vec<&str> = nodes
            .lines()
            .find(|l| l.starts_with(&node))
            .expect("node row")
            .split_whitespace()
            .collect();
        assert!(millicores(row[1]).is_some(), "{row:?}");
        assert!(row[3].ends_with("Mi") || row[3].ends_with("Gi"), "{row:?}");

        // The CPU-burning pod shows more than 100m.
        let t0 = Instant::now();
        let pods = wait_for("burn pod above 100m", Duration::from_secs(60), || {
            let out = c.kubectl(&["top", "pods", "-A"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let busy = text.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 4
                    && f[1].starts_with("burn-")
                    && millicores(f[2]).is_some_and(|m| m > 100)
            });
            busy.then_some(text)
        });
        eprintln!("burn pod above 100m after {:?}:\n{pods}", t0.elapsed());
        assert!(pods.starts_with("NAMESPACE"), "{pods}");
        let containers = c.ok(&["top", "pods", "--containers"]);
        assert!(
            containers
                .lines()
                .any(|l| l.starts_with("burn-") && l.split_whitespace().nth(1) == Some("burn")),
            "{containers}"
        );

        // A 50 % CPU target on a pod using ~300 % of its request scales the Deployment up.
        c.ok(&[
            "autoscale",
            "deployment",
            "burn",
            "--cpu-percent=50",
            "--min=1",
            "--max=2",
        ]);
        let t0 = Instant::now();
        wait_for("the HPA scales burn to 2", Duration::from_secs(90), || {
            (jsonpath(c, &["get", "deployment", "burn"], "{.spec.replicas}") == "2").then_some(())
        });
        eprintln!("HPA scaled up after {:?}", t0.elapsed());
        let events = c.ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulRescale",
        ]);
        assert!(events.contains("New size: 2"), "{events}");
        c.ok(&["delete", "deployment", "burn"]);
    });
}

/// A HelmChart makes the Job helm-controller makes; the test's job image records the
/// arguments, environment and mounted files it is given (no helm binary exists here).
#[test]
fn node_helm_chart_job() {
    run_node_test("node_helm_chart_job", &[], |c| {
        wait_node_ready(c);
        let root = c.path().join("recorder-rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("rootfs");
        std::fs::create_dir_all(root.join("tmp")).expect("rootfs tmp");
        let busybox = rk3s_kubelet::image::find_static_busybox().expect("static busybox");
        std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "cat", "env", "sort", "ls", "echo"] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(
            root.join("bin/entry"),
            "#!/bin/sh\necho \"ARGS: $*\"\nenv | sort | while read -r l; do echo \"ENV: $l\"; done\nfor f in /config/* /chart/*; do [ -f \"$f\" ] && { echo \"FILE: $f\"; cat \"$f\"; echo; }; done\nexit 0\n",
        )
        .expect("entry script");
        std::fs::set_permissions(
            root.join("bin/entry"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod entry");
        build_and_import_image(
            c,
            &root,
            "rk3s.test/helm-recorder:e2e",
            &["--entrypoint", "/bin/entry"],
        );
        apply(
            c,
            r#"apiVersion: helm.cattle.io/v1
kind: HelmChart
metadata: {name: demo, namespace: kube-system}
spec:
  chart: stable/demo
  repo: https://charts.example/stable
  version: 1.2.3
  targetNamespace: demo-ns
  createNamespace: true
  jobImage: rk3s.test/helm-recorder:e2e
  set:
    replicaCount: 2
    image.tag: "v1"
  valuesContent: |-
    greeting: hello-from-values
"#,
        );
        let job = wait_for("HelmChart status.jobName", Duration::from_secs(30), || {
            Some(jsonpath(
                c,
                &["get", "helmchart", "-n", "kube-system", "demo"],
                "{.status.jobName}",
            ))
            .filter(|j| !j.is_empty())
        });
        assert_eq!(job, "helm-install-demo");
        c.ok(&[
            "wait",
            "-n",
            "kube-system",
            "--for=condition=complete",
            "job/helm-install-demo",
            "--timeout=90s",
        ]);
        let log = c.ok(&["logs", "-n", "kube-system", "job/helm-install-demo"]);
        let args = log
            .lines()
            .find_map(|l| l.strip_prefix("ARGS: "))
            .unwrap_or_else(|| panic!("no ARGS line: {log}"));
        assert!(args.starts_with("install"), "{args}");
        assert!(args.contains("replicaCount=2"), "{args}");
        assert!(args.contains("image.tag=v1"), "{args}");
        assert!(args.contains("--create-namespace"), "{args}");
        for env in [
            "NAME=demo",
            "VERSION=1.2.3",
            "REPO=https://charts.example/stable",
            // helm-controller names repo charts `<release>/<chart>` (v0.14+).
            "CHART=demo/stable/demo",
            "TARGET_NAMESPACE=demo-ns",
            "HELM_DRIVER=secret",
        ] {
            assert!(
                log.lines().any(|l| l == format!("ENV: {env}")),
                "{env} missing: {log}"
            );
        }
        assert!(
            log.lines()
                .any(|l| l.starts_with("FILE: /config/") && l.contains("HelmChart")),
            "values file mounted: {log}"
        );
        assert!(log.contains("greeting: hello-from-values"), "{log}");

        // Deleting the chart runs helm-delete-<name>, then the chart goes away.
        c.ok(&[
            "delete",
            "helmchart",
            "-n",
            "kube-system",
            "demo",
            "--wait=false",
        ]);
        wait_for("helm-delete-demo ran", Duration::from_secs(90), || {
            let out = c.kubectl(&["logs", "-n", "kube-system", "job/helm-delete-demo"]);
            let t = String::from_utf8_lossy(&out.stdout).to_string();
            t.lines()
                .any(|l| l.starts_with("ARGS: delete"))
                .then_some(())
        });
        wait_for("the HelmChart removed", Duration::from_secs(90), || {
            c.ok(&["get", "helmchart", "-n", "kube-system", "-o", "name"])
                .trim()
                .is_empty()
                .then_some(())
        });
    });
}
