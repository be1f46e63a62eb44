//! `exec`, `attach` and `portForward`: the kubelet asks the CRI for a streaming URL
//! and proxies the client's upgraded connection (SPDY/3.1 or WebSocket) to the
//! runtime's streaming server, byte for byte after the upgrade — upstream's kubelet
//! with container stream redirection off. The runtime speaks the remotecommand and
//! portforward protocols itself.

use std::collections::HashSet;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::cri::types::{AttachRequest, ContainerState, ExecRequest};

/// Request headers that carry the upgrade negotiation to the runtime.
const FORWARDED_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "origin",
];

/// The options of an `exec`/`attach` request (query `command`, `stdin`, `stdout`,
/// `stderr`, `tty`; booleans are `1`/`true`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The command (`exec` only).
    pub command: Vec<String>,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
    /// Allocate a TTY.
    pub tty: bool,
    /// Ports (`portForward`, WebSocket clients give them in the query).
    pub ports: Vec<i32>,
}

impl StreamOptions {
    /// Parses the query of a streaming request.
    pub fn from_query(query: Option<&str>) -> Result<StreamOptions, String> {
        let mut o = StreamOptions::default();
        let truthy = |v: &str| matches!(v, "1" | "true" | "True" | "TRUE");
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "command" => o.command.push(v.into_owned()),
                "input" | "stdin" => o.stdin = truthy(&v),
                "output" | "stdout" => o.stdout = truthy(&v),
                "error" | "stderr" => o.stderr = truthy(&v),
                "tty" => o.tty = truthy(&v),
                "port" | "ports" => {
                    for p in v.split(',').filter(|p| !p.is_empty()) {
                        let n: i32 = p
                            .trim()
                            .parse()
                            .map_err(|_| format!("invalid port {p:?}"))?;
                        if !(1..=65535).contains(&n) {
                            return Err(format!("port {n} must be > 0 and <= 65535"));
                        }
                        o.ports.push(n);
                    }
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// What a streaming request targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    /// `/exec/{ns}/{pod}[/{uid}]/{container}`.
    Exec {
        /// Namespace.
        ns: String,
        /// Pod name.
        pod: String,
        /// Container name.
        container: String,
    },
    /// `/attach/{ns}/{pod}[/{uid}]/{container}`.
    Attach {
        /// Namespace.
        ns: String,
        /// Pod name.
        pod: String,
        /// Container name.
        container: String,
    },
    /// `/portForward/{ns}/{pod}[/{uid}]`.
    PortForward {
        /// Namespace.
        ns: String,
        /// Pod name.
        pod: String,
    },
}

impl StreamTarget {
    /// Recognises a streaming path; `None` for every other path.
    pub fn parse(path: &str) -> Option<StreamTarget> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let s = |x: &&str| x.to_string();
        match segs.as_slice() {
            ["exec", ns, pod, container] | ["exec", ns, pod, _, container] => {
                Some(StreamTarget::Exec {
                    ns: s(ns),
                    pod: s(pod),
                    container: s(container),
                })
            }
            ["attach", ns, pod, container] | ["attach", ns, pod, _, container] => {
                Some(StreamTarget::Attach {
                    ns: s(ns),
                    pod: s(pod),
                    container: s(container),
                })
            }
            ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
                Some(StreamTarget::PortForward {
                    ns: s(ns),
                    pod: s(pod),
                })
            }
            _ => None,
        }
    }
}

/// The kubelet response body type.
type Response = crate::server::Response;

fn text(code: u16, msg: impl Into<String>) -> Response {
    let mut r = http::Response::new(crate::server::KubeletBody::Full(Some(Bytes::from(
        msg.into(),
    ))));
    *r.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves a streaming request: resolves the container or sandbox, asks the CRI for
/// the URL and proxies the upgrade to it.
pub async fn serve(
    cri: &crate::cri::CriClient,
    target: StreamTarget,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let opts = match StreamOptions::from_query(req.uri().query()) {
        Ok(o) => o,
        Err(e) => return text(400, e),
    };
    let (ns, pod) = match &target {
        StreamTarget::Exec { ns, pod, .. }
        | StreamTarget::Attach { ns, pod, .. }
        | StreamTarget::PortForward { ns, pod } => (ns.clone(), pod.clone()),
    };
    let sandboxes = match cri.list_pod_sandboxes(None).await {
        Ok(s) => s,
        Err(e) => return text(500, e.to_string()),
    };
    let mut mine: Vec<_> = sandboxes
        .into_iter()
        .filter(|sb| {
            let m = sb.metadata.clone().unwrap_or_default();
            let n = sb
                .labels
                .get("io.kubernetes.pod.namespace")
                .cloned()
                .unwrap_or(m.namespace);
            let p = sb
                .labels
                .get("io.kubernetes.pod.name")
                .cloned()
                .unwrap_or(m.name);
            n == ns && p == pod
        })
        .collect();
    mine.sort_by_key(|s| {
        std::cmp::Reverse((
            s.state == crate::cri::types::PodSandboxState::SandboxReady as i32,
            s.created_at,
        ))
    });
    let Some(sandbox) = mine.first() else {
        return text(404, format!("pod \"{ns}/{pod}\" does not exist"));
    };
    let url = match &target {
        StreamTarget::PortForward { .. } => cri.port_forward(&sandbox.id, opts.ports.clone()).await,
        StreamTarget::Exec { container, .. } | StreamTarget::Attach { container, .. } => {
            let ids: HashSet<&str> = mine.iter().map(|s| s.id.as_str()).collect();
            let containers = match cri.list_containers(None).await {
                Ok(c) => c,
                Err(e) => return text(500, e.to_string()),
            };
            let name_of = |c: &crate::cri::types::Container| {
                c.labels
                    .get("io.kubernetes.container.name")
                    .cloned()
                    .unwrap_or_else(|| {
                        c.metadata
                            .as_ref()
                            .map(|m| m.name.clone())
                            .unwrap_or_default()
                    })
            };
            let running = containers
                .iter()
                .filter(|c| {
                    ids.contains(c.pod_sandbox_id.as_str())
                        && &name_of(c) == container
                        && c.state == ContainerState::ContainerRunning as i32
                })
                .max_by_key(|c| c.created_at);
            let Some(c) = running else {
                return text(
                    400,
                    format!("container {container} is not running in pod {ns}/{pod}"),
                );
            };
            if matches!(target, StreamTarget::Exec { .. }) {
                if opts.command.is_empty() {
                    return text(400, "command is required");
                }
                let r = ExecRequest {
                    container_id: c.id.clone(),
                    cmd: opts.command.clone(),
                    tty: opts.tty,
                    stdin: opts.stdin,
                    stdout: opts.stdout,
                    stderr: opts.stderr && !opts.tty,
                };
                cri.exec(r).await
            } else {
                let r = AttachRequest {
                    container_id: c.id.clone(),
                    stdin: opts.stdin,
                    tty: opts.tty,
                    stdout: opts.stdout,
                    stderr: opts.stderr && !opts.tty,
                };
                cri.attach(r).await
            }
        }
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return text(500, e.to_string()),
    };
    proxy_upgrade(&url, req).await
}

/// Sends `req` (its method and upgrade headers, the query appended when the URL has
/// none) to the runtime's streaming `url` over plain HTTP/1.1, and when the runtime
/// switches protocols, joins the two upgraded connections.
pub async fn proxy_upgrade(url: &str, mut req: hyper::Request<hyper::body::Incoming>) -> Response {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return text(500, format!("bad streaming URL {url:?}: {e}")),
    };
    let Some(authority) = uri.authority().cloned() else {
        return text(500, format!("streaming URL {url:?} has no host"));
    };
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let mut path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    if uri.query().is_none() {
        if let Some(q) = req.uri().query().filter(|q| !q.is_empty()) {
            path = format!("{path}?{q}");
        }
    }
    let tcp = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
        Ok(t) => t,
        Err(e) => return text(500, format!("dial {authority}: {e}")),
    };
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => return text(500, format!("streaming server {authority}: {e}")),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming server connection ended");
        }
    });
    let mut b = http::Request::builder()
        .method(req.method().clone())
        .uri(path)
        .header(http::header::HOST, authority.as_str());
    for name in FORWARDED_HEADERS {
        for v in req.headers().get_all(*name) {
            b = b.header(*name, v.clone());
        }
    }
    let Ok(upstream_req) = b.body(http_body_util::Empty::<Bytes>::new()) else {
        return text(500, "building the streaming request failed");
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = match send.send_request(upstream_req).await {
        Ok(r) => r,
        Err(e) => return text(500, format!("streaming server {authority}: {e}")),
    };
    let status = resp.status();
    let mut out = if status == http::StatusCode::SWITCHING_PROTOCOLS {
        let runtime_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (client, runtime) = match (client_upgrade.await, runtime_upgrade.await) {
                (Ok(c), Ok(r)) => (c, r),
                (c, r) => {
                    tracing::debug!(
                        client = c.is_ok(),
                        runtime = r.is_ok(),
                        "stream upgrade failed"
                    );
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut runtime = TokioIo::new(runtime);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
                tracing::debug!(error = %e, "stream ended");
            }
        });
        http::Response::new(crate::server::KubeletBody::Full(None))
    } else {
        let body = resp
            .body_mut()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        http::Response::new(crate::server::KubeletBody::Full(Some(body)))
    };
    *out.status_mut() = status;
    for (k, v) in resp.headers() {
        if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_and_options() {
        assert_eq!(
            StreamTarget::parse("/exec/default/web/c"),
            Some(StreamTarget::Exec {
                ns: "default".into(),
                pod: "web".into(),
                container: "c".into()
            })
        );
        assert_eq!(
            StreamTarget::parse("/attach/default/web/uid-1/c"),
            Some(StreamTarget::Attach {
                ns: "default".into(),
                pod: "web".into(),
                container: "c".into()
            })
        );
        assert_eq!(
            StreamTarget::parse("/portForward/ns/p"),
            Some(StreamTarget::PortForward {
                ns: "ns".into(),
                pod: "p".into()
            })
        );
        assert_eq!(StreamTarget::parse("/containerLogs/a/b/c"), None);
        let o = StreamOptions::from_query(Some(
            "command=sh&command=-c&command=echo%20hi&stdin=true&stdout=1&tty=false",
        ));
        let o = o.unwrap_or_default();
        assert_eq!(o.command, vec!["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && !o.stderr && !o.tty);
        assert_eq!(
            StreamOptions::from_query(Some("ports=80,8080")).map(|o| o.ports),
            Ok(vec![80, 8080])
        );
        assert!(StreamOptions::from_query(Some("port=70000")).is_err());
    }
}
