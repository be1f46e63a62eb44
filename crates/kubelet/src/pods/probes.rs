//! Container probes (startup, readiness, liveness): exec through CRI `ExecSync`,
//! `httpGet` and `tcpSocket` against the pod IP, with upstream's periods, timeouts and
//! thresholds. Each probe of a running container is a task that records its result in a
//! shared table and wakes the pod worker when the result changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::cri::CriClient;
use crate::events::{reason, EventType, Recorder};

/// The probe results of one container instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeResults {
    /// Readiness (None until the first readiness result).
    pub ready: Option<bool>,
    /// Startup probe succeeded.
    pub started: bool,
    /// Liveness (or startup) probe failed its threshold: the container must restart.
    pub must_restart: bool,
}

/// Results of every probed container instance, by container ID.
pub type ProbeTable = Arc<Mutex<HashMap<String, ProbeResults>>>;

/// Kind of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// startupProbe.
    Startup,
    /// readinessProbe.
    Readiness,
    /// livenessProbe.
    Liveness,
}

impl ProbeKind {
    /// The name upstream uses in messages (`Liveness probe failed: ...`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }
}

/// Where a probe's failures are reported: `Unhealthy` events about the probed container.
#[derive(Clone, Debug)]
pub struct ProbeEvents {
    /// The kubelet's event recorder.
    pub recorder: Recorder,
    /// The pod of the probed container.
    pub pod: Pod,
}

/// Outcome of one probe run.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success.
    Success,
    /// Failure, with a reason.
    Failure(String),
}

fn port_of(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Some(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
        }
    }
}

/// Parses the status code of an HTTP/1.x response head.
pub fn http_status(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut it = line.split_whitespace();
    let v = it.next()?;
    if !v.starts_with("HTTP/") {
        return None;
    }
    it.next()?.parse().ok()
}

/// A failed connect as Go's net package words it (`dial tcp 10.42.0.5:80: connect:
/// connection refused`).
fn dial_error(host: &str, port: u16, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
        std::io::ErrorKind::HostUnreachable => "connect: no route to host".to_string(),
        std::io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".to_string(),
        std::io::ErrorKind::TimedOut => "i/o timeout".to_string(),
        _ => {
            // "Connection reset by peer (os error 104)" -> "connection reset by peer".
            let s = e.to_string();
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_lowercase().chain(c).collect())
                .unwrap_or(s)
        }
    };
    format!("dial tcp {host}:{port}: {why}")
}

/// Sends an HTTP/1.1 request and reads the response up to the end of its status line.
async fn response_head<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
) -> Result<String, String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        n += r;
        if r == 0 || buf[..n].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn insecure_tls_config() -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // HTTPS probes do not verify the certificate, as upstream's prober.
            rk3s_pki::unverified_client_config()
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Runs a probe once.
pub async fn run_once(
    cri: &CriClient,
    container_id: &str,
    c: &Container,
    probe: &Probe,
    pod_ip: &str,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let timed_out = || Outcome::Failure(format!("command {:?} timed out", cmd.join(" ")));
        return match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            cri.exec_sync(container_id, cmd.clone(), timeout.as_secs() as i64),
        )
        .await
        {
            Ok(Ok(r)) if r.exit_code == 0 => Outcome::Success,
            // Upstream reports the command's output (stdout, then stderr) as the reason.
            Ok(Ok(r)) => {
                let mut out = r.stdout;
                out.extend_from_slice(&r.stderr);
                Outcome::Failure(String::from_utf8_lossy(&out).into_owned())
            }
            Ok(Err(crate::cri::CriError::Timeout { .. })) | Err(_) => timed_out(),
            Ok(Err(e)) => Outcome::Failure(e.to_string()),
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let Some(port) = port_of(c, &t.port) else {
            return Outcome::Failure("invalid port".into());
        };
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(dial_error(&host, port, &e)),
            Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(h) = &probe.http_get {
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let Some(port) = port_of(c, &h.port) else {
            return Outcome::Failure("invalid port".into());
        };
        let https = h.scheme.as_deref() == Some("HTTPS");
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
        for hd in h.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        req.push_str("\r\n");
        let url = format!(
            "{}://{host}:{port}{path}",
            if https { "https" } else { "http" }
        );
        let fut = async {
            let s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| dial_error(&host, port, &e))?;
            if https {
                // As upstream: TLS without verifying the pod's certificate.
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| e.to_string())?;
                let s = tokio_rustls::TlsConnector::from(insecure_tls_config()?)
                    .connect(name, s)
                    .await
                    .map_err(|e| e.to_string())?;
                response_head(s, &req).await
            } else {
                response_head(s, &req).await
            }
        };
        return match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(head)) => match http_status(&head) {
                Some(code) if (200..400).contains(&code) => Outcome::Success,
                Some(code) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
                None => Outcome::Failure(format!("Get {url:?}: malformed HTTP response")),
            },
            Ok(Err(e)) => Outcome::Failure(format!("Get {url:?}: {e}")),
            Err(_) => Outcome::Failure(format!("Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)")),
        };
    }
    if let Some(g) = &probe.grpc {
        let Ok(port) = u16::try_from(g.port) else {
            return Outcome::Failure(format!("invalid port {}", g.port));
        };
        return super::grpc_probe::check(
            pod_ip,
            port,
            g.service.as_deref().unwrap_or_default(),
            timeout,
        )
        .await;
    }
    // A probe without a handler is refused by validation; nothing to run.
    Outcome::Success
}

/// Runs one probe of a container instance until the task is aborted (or, for liveness
/// and startup, until it decides the container must restart).
#[allow(clippy::too_many_arguments)]
pub async fn probe_loop(
    cri: CriClient,
    table: ProbeTable,
    wake: Arc<Notify>,
    container_id: String,
    c: Container,
    probe: Probe,
    kind: ProbeKind,
    pod_ip: String,
    events: ProbeEvents,
) {
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    let initial = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    tokio::time::sleep(initial).await;
    let (mut ok_run, mut fail_run) = (0, 0);
    loop {
        // Readiness and liveness wait for the startup probe.
        let started = table
            .lock()
            .map(|t| t.get(&container_id).map(|r| r.started).unwrap_or(false))
            .unwrap_or(false);
        if kind == ProbeKind::Startup || started {
            let outcome = run_once(&cri, &container_id, &c, &probe, &pod_ip).await;
            match &outcome {
                Outcome::Success => {
                    ok_run += 1;
                    fail_run = 0;
                }
                Outcome::Failure(why) => {
                    fail_run += 1;
                    ok_run = 0;
                    tracing::debug!(container = %c.name, ?kind, reason = %why, "probe failed");
                    events.recorder.container_event(
                        &events.pod,
                        &c.name,
                        EventType::Warning,
                        reason::UNHEALTHY,
                        format!("{} probe failed: {why}", kind.as_str()),
                    );
                }
            }
            let mut changed = false;
            let mut done = false;
            if let Ok(mut t) = table.lock() {
                let r = t.entry(container_id.clone()).or_default();
                let before = r.clone();
                match kind {
                    ProbeKind::Startup => {
                        if ok_run >= 1 {
                            r.started = true;
                            done = true;
                        } else if fail_run >= failure_threshold {
                            r.must_restart = true;
                            done = true;
                        }
                    }
                    ProbeKind::Readiness => {
                        if ok_run >= success_threshold {
                            r.ready = Some(true);
                        } else if fail_run >= failure_threshold || r.ready.is_none() && fail_run > 0
                        {
                            r.ready = Some(false);
                        }
                    }
                    ProbeKind::Liveness => {
                        if fail_run >= failure_threshold {
                            r.must_restart = true;
                            done = true;
                        }
                    }
                }
                changed = *r != before;
            }
            if changed {
                wake.notify_one();
            }
            if done {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_line() {
        assert_eq!(http_status("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            http_status("HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(http_status("garbage"), None);
    }

    #[test]
    fn named_ports() {
        let c = Container {
            name: "c".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(port_of(&c, &IntOrString::String("http".into())), Some(8080));
        assert_eq!(port_of(&c, &IntOrString::Int(81)), Some(81));
        assert_eq!(port_of(&c, &IntOrString::String("nope".into())), None);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            return;
        };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /healthz ") {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let Some(cri) = dummy_client().await else {
            panic!("dummy CRI socket")
        };
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let get = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(port as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        let get_port = |path: &str, port: i32| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(port),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            run_once(&cri, "x", &c, &get("/healthz"), "127.0.0.1").await,
            Outcome::Success
        );
        let bad = run_once(&cri, "x", &c, &get("/bad"), "127.0.0.1").await;
        assert!(
            matches!(&bad, Outcome::Failure(m) if m.contains("statuscode: 500")),
            "{bad:?}"
        );
        let tcp = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(port as i32),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            run_once(&cri, "x", &c, &tcp, "127.0.0.1").await,
            Outcome::Success
        );
        let closed = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(1),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            run_once(&cri, "x", &c, &closed, "127.0.0.1").await,
            Outcome::Failure("dial tcp 127.0.0.1:1: connect: connection refused".into())
        );
        let refused = run_once(&cri, "x", &c, &get_port("/", 1), "127.0.0.1").await;
        assert_eq!(
            refused,
            Outcome::Failure(
                "Get \"http://127.0.0.1:1/\": dial tcp 127.0.0.1:1: connect: connection refused"
                    .into()
            )
        );
    }

    #[tokio::test]
    async fn https_probes_speak_tls_without_verifying_the_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let pki =
            rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(tmp.path().join("server")))
                .unwrap();
        // A certificate for another name: the prober must not care.
        let (cert, key) = rk3s_pki::issue_serving_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "pod",
            &["pod.example".to_string()],
            1,
        )
        .unwrap();
        let cfg = crate::server::tls_config(&cert, &key, &pki.ca_cert_pem).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let Ok(mut s) = acceptor.accept(s).await else {
                    continue;
                };
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /ready ") {
                    "204 No Content"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = s.shutdown().await;
            }
        });
        let Some(cri) = dummy_client().await else {
            panic!("dummy CRI socket")
        };
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let get = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(port as i32),
                scheme: Some("HTTPS".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            run_once(&cri, "x", &c, &get("/ready"), "127.0.0.1").await,
            Outcome::Success
        );
        assert_eq!(
            run_once(&cri, "x", &c, &get("/other"), "127.0.0.1").await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
    }

    async fn dummy_client() -> Option<CriClient> {
        // A unix socket that accepts connections is enough for the channel to connect.
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("cri.sock");
        let l = tokio::net::UnixListener::bind(&path).ok()?;
        tokio::spawn(async move {
            let _dir = dir;
            while let Ok((s, _)) = l.accept().await {
                std::mem::forget(s);
            }
        });
        CriClient::connect(&path).await.ok()
    }
}
