//! The kubelet API (HTTPS on `:10250`), as the API server and metrics clients use it.
//!
//! Routes (GET): `/healthz`, `/pods`, `/containerLogs/{ns}/{pod}/{container}` (with
//! `follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`, `limitBytes`,
//! `previous`), `/stats/summary`, `/metrics/resource`.
//! `/exec/...`, `/attach/...`, `/portForward/...` (upgraded, see [`crate::streaming`]).
//! Not served yet: `run`, `/logs/` (node logs), `/spec`.
//!
//! Authentication: a client certificate signed by the cluster CA (its CN is the user, its
//! O values the groups); requests without one get 401 (token authentication is not wired
//! yet). Authorization: every request is described as upstream's kubelet does — verb from
//! the method (`get`, `create`, ...), resource `nodes`, name the node, subresource `stats`
//! for `/stats/*`, `metrics` for `/metrics/*`, `log` for `/logs/*`, `healthz` for
//! `/healthz`, `proxy` for everything else — and passed to the [`Authorizer`] hook.
//! [`default_authorizer`] allows `system:masters` and `kube-apiserver-kubelet-client`;
//! the agent can swap in one that sends a SubjectAccessReview.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;

use crate::cri::types::{Container, ContainerState, PodSandbox, PodSandboxState};
use crate::cri::CriClient;
use crate::logs::{self, LogOptions};
use crate::stats::{self, CgroupLayout, CpuRates, Usage};

/// Errors of starting the kubelet API server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS material is unusable.
    #[error("kubelet TLS configuration: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The authenticated user of a request (from its client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestUser {
    /// User name (certificate CN).
    pub name: String,
    /// Groups (certificate O values).
    pub groups: Vec<String>,
}

/// What a request asks to do, in the terms of upstream's kubelet authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    /// `get`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// Always `nodes`.
    pub resource: String,
    /// The node name.
    pub name: String,
    /// `stats`, `metrics`, `log`, `healthz`, `proxy`, ...
    pub subresource: String,
}

/// The authorization hook: true allows the request.
pub type Authorizer = Arc<dyn Fn(&RequestUser, &RequestAttributes) -> bool + Send + Sync>;

/// Provides the `PodList` served at `/pods` (the agent's view of its pods).
pub type PodsProvider = Arc<dyn Fn() -> Value + Send + Sync>;

/// The user name the API server presents to kubelets.
pub const APISERVER_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// Allows users in `system:masters` and [`APISERVER_CLIENT_USER`]; denies everyone else.
pub fn default_authorizer() -> Authorizer {
    Arc::new(|user: &RequestUser, _: &RequestAttributes| {
        user.name == APISERVER_CLIENT_USER || user.groups.iter().any(|g| g == "system:masters")
    })
}

/// What [`serve`] needs.
#[derive(Clone)]
pub struct KubeletServerOptions {
    /// Address to listen on (`0.0.0.0:10250`).
    pub listen: SocketAddr,
    /// This node's name (the `name` of authorization requests).
    pub node_name: String,
    /// Serving certificate (PEM), e.g. from `rk3s_pki::issue_serving_cert`.
    pub serving_cert_pem: String,
    /// Serving key (PEM).
    pub serving_key_pem: String,
    /// CA that signs client certificates (PEM).
    pub client_ca_pem: String,
    /// The container runtime.
    pub cri: CriClient,
    /// Authorization; [`default_authorizer`] when `None`.
    pub authorizer: Option<Authorizer>,
    /// The pods of `/pods`; CRI sandboxes as minimal Pods when `None`.
    pub pods: Option<PodsProvider>,
}

/// Builds the TLS configuration: the serving certificate, client certificates verified
/// against `client_ca_pem` (optional at the TLS level so the handler can answer 401),
/// ALPN h2 and http/1.1, the ring provider.
pub fn tls_config(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> Result<rustls::ServerConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds `opts.listen` and serves the kubelet API until the task is dropped.
pub async fn serve(opts: KubeletServerOptions) -> Result<(), ServerError> {
    let listener = TcpListener::bind(opts.listen).await.map_err(|e| ServerError::Listen { addr: opts.listen, source: e })?;
    serve_listener(listener, opts).await
}

/// Serves the kubelet API on an already bound listener (`opts.listen` is ignored).
pub async fn serve_listener(listener: TcpListener, opts: KubeletServerOptions) -> Result<(), ServerError> {
    let tls = tls_config(&opts.serving_cert_pem, &opts.serving_key_pem, &opts.client_ca_pem)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let api = Arc::new(KubeletApi::new(opts));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet API: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "kubelet API: TLS handshake failed");
                    return;
                }
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| rk3s_pki::client_identity(der.as_ref()).ok())
                .map(|id| RequestUser { name: id.user, groups: id.groups });
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let api = api.clone();
                let user = user.clone();
                async move { Ok::<_, Infallible>(api.handle_request(req, user.as_ref()).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "kubelet API: connection ended with error");
            }
        });
    }
}

/// The body of kubelet API responses: a buffer, or a byte stream (followed logs).
pub enum KubeletBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// Bytes read from a pipe until it closes.
    Stream(tokio::io::DuplexStream),
}

impl hyper::body::Body for KubeletBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            KubeletBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            KubeletBody::Stream(r) => {
                let mut buf = [0u8; 16 * 1024];
                let mut rb = ReadBuf::new(&mut buf);
                match Pin::new(r).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(None),
                    Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled()))))),
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, KubeletBody::Full(None))
    }
}

/// A kubelet API response.
pub type Response = http::Response<KubeletBody>;

fn text(code: u16, body: impl Into<String>) -> Response {
    respond(code, "text/plain; charset=utf-8", Bytes::from(body.into()))
}

fn json_response(v: &Value) -> Response {
    respond(200, "application/json", Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
}

fn respond(code: u16, content_type: &'static str, body: Bytes) -> Response {
    let mut r = http::Response::new(KubeletBody::Full(Some(body)));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// Describes a request for authorization as upstream's kubelet does.
pub fn request_attributes(method: &http::Method, path: &str, node_name: &str) -> RequestAttributes {
    let verb = match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    };
    let sub = if path == "/stats" || path.starts_with("/stats/") {
        "stats"
    } else if path == "/metrics" || path.starts_with("/metrics/") {
        "metrics"
    } else if path == "/logs" || path.starts_with("/logs/") {
        "log"
    } else if path == "/healthz" || path.starts_with("/healthz/") {
        "healthz"
    } else if path == "/spec" || path.starts_with("/spec/") {
        "spec"
    } else {
        "proxy"
    };
    RequestAttributes { verb: verb.into(), resource: "nodes".into(), name: node_name.into(), subresource: sub.into() }
}

/// The state behind the routes.
pub struct KubeletApi {
    node_name: String,
    cri: CriClient,
    authorizer: Authorizer,
    pods: Option<PodsProvider>,
    layout: CgroupLayout,
    cgroups: Mutex<HashMap<String, PathBuf>>,
    rates: CpuRates,
}

/// One container's sample.
struct ContainerSample {
    name: String,
    start: String,
    usage: Option<Usage>,
    nano_cores: Option<u64>,
}

/// One pod's sample.
struct PodSample {
    name: String,
    namespace: String,
    uid: String,
    start: String,
    containers: Vec<ContainerSample>,
    total: Usage,
    nano_cores: Option<u64>,
}

fn rfc3339_from_nanos(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn sandbox_meta(sb: &PodSandbox) -> (String, String, String) {
    let m = sb.metadata.clone().unwrap_or_default();
    let ns = sb.labels.get("io.kubernetes.pod.namespace").cloned().unwrap_or(m.namespace);
    let name = sb.labels.get("io.kubernetes.pod.name").cloned().unwrap_or(m.name);
    let uid = sb.labels.get("io.kubernetes.pod.uid").cloned().unwrap_or(m.uid);
    (ns, name, uid)
}

fn container_name(c: &Container) -> String {
    c.labels
        .get("io.kubernetes.container.name")
        .cloned()
        .unwrap_or_else(|| c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default())
}

fn attempt(c: &Container) -> u32 {
    c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)
}

/// Minimal Pods (metadata and phase) for the sandboxes the runtime knows.
pub fn pods_from_sandboxes(sandboxes: &[PodSandbox], node_name: &str) -> Value {
    let items: Vec<Value> = sandboxes
        .iter()
        .map(|sb| {
            let (ns, name, uid) = sandbox_meta(sb);
            let ready = sb.state == PodSandboxState::SandboxReady as i32;
            json!({
                "metadata": {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": rfc3339_from_nanos(sb.created_at)},
                "spec": {"nodeName": node_name},
                "status": {"phase": if ready { "Running" } else { "Succeeded" }},
            })
        })
        .collect();
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders the `/metrics/resource` Prometheus text from the samples.
fn render_metrics(node: Option<&Usage>, pods: &[PodSample], now_ms: i64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut family = |name: &str, typ: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {typ}");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v} {now_ms}");
        }
    };
    let clabels = |p: &PodSample, c: &ContainerSample| {
        format!("{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}", escape_label(&c.name), escape_label(&p.namespace), escape_label(&p.name))
    };
    let plabels = |p: &PodSample| format!("{{namespace=\"{}\",pod=\"{}\"}}", escape_label(&p.namespace), escape_label(&p.name));
    let per_container = |f: &dyn Fn(&ContainerSample, &Usage) -> String| -> Vec<(String, String)> {
        pods.iter()
            .flat_map(|p| p.containers.iter().filter_map(move |c| c.usage.as_ref().map(|u| (clabels(p, c), f(c, u)))))
            .collect()
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative CPU time used by the container, in core-seconds",
        per_container(&|_, u| secs(u.cpu_usage_core_nanos).to_string()),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Working set memory of the container, in bytes",
        per_container(&|_, u| u.memory_working_set_bytes.to_string()),
    );
    let starts: Vec<(String, String)> = pods
        .iter()
        .flat_map(|p| {
            p.containers.iter().filter_map(move |c| {
                let t: jiff::Timestamp = c.start.parse().ok()?;
                Some((clabels(p, c), t.as_second().to_string()))
            })
        })
        .collect();
    family("container_start_time_seconds", "gauge", "Start time of the container since the Unix epoch, in seconds", starts);
    let node_lines = |v: Option<String>| v.map(|v| vec![(String::new(), v)]).unwrap_or_default();
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative CPU time used by the node, in core-seconds",
        node_lines(node.map(|u| secs(u.cpu_usage_core_nanos).to_string())),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Working set memory of the node, in bytes",
        node_lines(node.map(|u| u.memory_working_set_bytes.to_string())),
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative CPU time used by the pod, in core-seconds",
        pods.iter().map(|p| (plabels(p), secs(p.total.cpu_usage_core_nanos).to_string())).collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Working set memory of the pod, in bytes",
        pods.iter().map(|p| (plabels(p), p.total.memory_working_set_bytes.to_string())).collect(),
    );
    let _ = writeln!(out, "# HELP resource_scrape_error 1 if there was an error while getting container metrics, 0 otherwise");
    let _ = writeln!(out, "# TYPE resource_scrape_error gauge");
    let _ = writeln!(out, "resource_scrape_error {}", if node.is_some() { 0 } else { 1 });
    out
}

impl KubeletApi {
    /// The route state for `opts`.
    pub fn new(opts: KubeletServerOptions) -> KubeletApi {
        KubeletApi {
            node_name: opts.node_name,
            cri: opts.cri,
            authorizer: opts.authorizer.unwrap_or_else(default_authorizer),
            pods: opts.pods,
            layout: CgroupLayout::detect(),
            cgroups: Mutex::new(HashMap::new()),
            rates: CpuRates::default(),
        }
    }

    /// Serves one request from the network: the streaming routes (`exec`, `attach`,
    /// `portForward`, which need the connection's upgrade) here, the others by [`KubeletApi::handle`].
    pub async fn handle_request(&self, req: hyper::Request<Incoming>, user: Option<&RequestUser>) -> Response {
        if let Some(target) = crate::streaming::StreamTarget::parse(req.uri().path()) {
            let Some(user) = user else {
                return text(401, "Unauthorized");
            };
            let attrs = request_attributes(req.method(), req.uri().path(), &self.node_name);
            if !(self.authorizer)(user, &attrs) {
                return text(
                    403,
                    format!("Forbidden (user={}, verb={}, resource={}, subresource={})", user.name, attrs.verb, attrs.resource, attrs.subresource),
                );
            }
            if req.method() != http::Method::GET && req.method() != http::Method::POST {
                return text(405, "Method Not Allowed");
            }
            return crate::streaming::serve(&self.cri, target, req).await;
        }
        let (parts, _) = req.into_parts();
        self.handle(&parts.method, parts.uri.path(), parts.uri.query(), user).await
    }

    /// Serves one request of `user` (None: no client certificate).
    pub async fn handle(&self, method: &http::Method, path: &str, query: Option<&str>, user: Option<&RequestUser>) -> Response {
        let Some(user) = user else {
            return text(401, "Unauthorized");
        };
        let attrs = request_attributes(method, path, &self.node_name);
        if !(self.authorizer)(user, &attrs) {
            return text(
                403,
                format!("Forbidden (user={}, verb={}, resource={}, subresource={})", user.name, attrs.verb, attrs.resource, attrs.subresource),
            );
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(405, "Method Not Allowed");
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["healthz"] => text(200, "ok"),
            ["pods"] => self.pods().await,
            ["containerLogs", ns, pod, container] => self.container_logs(ns, pod, container, query).await,
            ["stats", "summary"] => match self.collect().await {
                Ok((node, pods)) => json_response(&self.summary(node.as_ref(), &pods)),
                Err(e) => text(500, format!("failed to get stats: {e}")),
            },
            ["metrics", "resource"] => match self.collect().await {
                Ok((node, pods)) => {
                    let body = render_metrics(node.as_ref(), &pods, jiff::Timestamp::now().as_millisecond());
                    respond(200, "text/plain; version=0.0.4; charset=utf-8", Bytes::from(body))
                }
                Err(e) => text(500, format!("failed to get stats: {e}")),
            },
            ["exec" | "attach" | "portForward", ..] => text(400, "streaming requests need an upgradeable connection"),
            ["run", ..] => text(501, "not implemented yet by rk3s's kubelet"),
            _ => text(404, "404 page not found\n"),
        }
    }

    async fn pods(&self) -> Response {
        if let Some(p) = &self.pods {
            return json_response(&p());
        }
        match self.cri.list_pod_sandboxes(None).await {
            Ok(sbs) => json_response(&pods_from_sandboxes(&sbs, &self.node_name)),
            Err(e) => text(500, format!("failed to list pods: {e}")),
        }
    }

    /// The sandboxes of pod `ns/name`, newest first.
    async fn sandboxes_of(&self, ns: &str, name: &str) -> Result<Vec<PodSandbox>, crate::cri::CriError> {
        let mut sbs: Vec<PodSandbox> = self
            .cri
            .list_pod_sandboxes(None)
            .await?
            .into_iter()
            .filter(|sb| {
                let (n, p, _) = sandbox_meta(sb);
                n == ns && p == name
            })
            .collect();
        sbs.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(sbs)
    }

    async fn container_logs(&self, ns: &str, pod: &str, container: &str, query: Option<&str>) -> Response {
        let opts = match LogOptions::from_query(query, jiff::Timestamp::now()) {
            Ok(o) => o,
            Err(e) => return text(400, e.to_string()),
        };
        let sbs = match self.sandboxes_of(ns, pod).await {
            Ok(s) => s,
            Err(e) => return text(500, e.to_string()),
        };
        if sbs.is_empty() {
            return text(404, format!("pod \"{ns}/{pod}\" does not exist\n"));
        }
        let sandbox_ids: HashSet<&str> = sbs.iter().map(|s| s.id.as_str()).collect();
        let all = match self.cri.list_containers(None).await {
            Ok(c) => c,
            Err(e) => return text(500, e.to_string()),
        };
        let mut mine: Vec<Container> =
            all.into_iter().filter(|c| sandbox_ids.contains(c.pod_sandbox_id.as_str()) && container_name(c) == container).collect();
        // Newest instance first.
        mine.sort_by_key(|c| std::cmp::Reverse((attempt(c), c.created_at)));
        let Some(current) = mine.first() else {
            return text(400, format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"));
        };
        let path = if opts.previous {
            let prev = match mine.get(1) {
                Some(p) => self.cri.container_status(&p.id).await.ok().map(|s| PathBuf::from(s.log_path)),
                None => None,
            };
            let guessed = match (prev, attempt(current)) {
                (Some(p), _) => Some(p),
                (None, 0) => None,
                (None, n) => self
                    .cri
                    .container_status(&current.id)
                    .await
                    .ok()
                    .and_then(|s| PathBuf::from(s.log_path).parent().map(|d| d.join(format!("{}.log", n - 1))))
                    .filter(|p| p.exists()),
            };
            match guessed {
                Some(p) => p,
                None => return text(400, format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")),
            }
        } else {
            match self.cri.container_status(&current.id).await {
                Ok(s) if s.state == ContainerState::ContainerCreated as i32 => {
                    return text(400, format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"));
                }
                Ok(s) => PathBuf::from(s.log_path),
                Err(e) => return text(500, e.to_string()),
            }
        };
        if path.as_os_str().is_empty() {
            return text(500, format!("container \"{container}\" in pod \"{pod}\" has no log file"));
        }
        // The file is opened before answering so errors get a proper status.
        if let Err(e) = tokio::fs::metadata(&path).await {
            return text(500, format!("failed to read log file {}: {e}", path.display()));
        }
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let cri = self.cri.clone();
        let id = current.id.clone();
        let follow_id = if opts.previous { None } else { Some(id) };
        tokio::spawn(async move {
            let running = || {
                let cri = cri.clone();
                let id = follow_id.clone();
                async move {
                    match id {
                        Some(id) => cri.container_status(&id).await.map(|s| s.state == ContainerState::ContainerRunning as i32).unwrap_or(false),
                        None => false,
                    }
                }
            };
            if let Err(e) = logs::read_logs(&path, &opts, &mut tx, running).await {
                tracing::debug!(error = %e, "containerLogs ended");
            }
        });
        let mut r = http::Response::new(KubeletBody::Stream(rx));
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        r
    }

    fn cgroup_of(&self, id: &str) -> Option<PathBuf> {
        let cached = self.cgroups.lock().ok().and_then(|m| m.get(id).cloned());
        if let Some(rel) = cached {
            if self.layout.read(&rel).is_some() {
                return Some(rel);
            }
        }
        let rel = self.layout.find_cgroup(id)?;
        if let Ok(mut m) = self.cgroups.lock() {
            m.insert(id.to_string(), rel.clone());
        }
        Some(rel)
    }

    fn usage_of(&self, id: &str) -> Option<Usage> {
        self.cgroup_of(id).and_then(|rel| self.layout.read(&rel))
    }

    /// Samples the node and every ready pod with its running containers.
    async fn collect(&self) -> Result<(Option<Usage>, Vec<PodSample>), crate::cri::CriError> {
        let sbs = self.cri.list_pod_sandboxes(None).await?;
        let containers = self.cri.list_containers(None).await?;
        let mut by_sandbox: HashMap<&str, Vec<&Container>> = HashMap::new();
        for c in &containers {
            if c.state == ContainerState::ContainerRunning as i32 {
                by_sandbox.entry(c.pod_sandbox_id.as_str()).or_default().push(c);
            }
        }
        let mut keep = HashSet::new();
        let mut pods = Vec::new();
        for sb in sbs.iter().filter(|s| s.state == PodSandboxState::SandboxReady as i32) {
            let (namespace, name, uid) = sandbox_meta(sb);
            let mut total = self.usage_of(&sb.id).unwrap_or_default();
            let mut samples = Vec::new();
            for c in by_sandbox.get(sb.id.as_str()).map(|v| v.as_slice()).unwrap_or(&[]) {
                let usage = self.usage_of(&c.id);
                let nano_cores = usage.and_then(|u| self.rates.rate(&c.id, u.cpu_usage_core_nanos));
                keep.insert(c.id.clone());
                if let Some(u) = usage {
                    total.cpu_usage_core_nanos += u.cpu_usage_core_nanos;
                    total.memory_usage_bytes += u.memory_usage_bytes;
                    total.memory_working_set_bytes += u.memory_working_set_bytes;
                    total.memory_rss_bytes += u.memory_rss_bytes;
                    total.page_faults += u.page_faults;
                    total.major_page_faults += u.major_page_faults;
                }
                samples.push(ContainerSample { name: container_name(c), start: rfc3339_from_nanos(c.created_at), usage, nano_cores });
            }
            samples.sort_by(|a, b| a.name.cmp(&b.name));
            let key = format!("pod:{}", sb.id);
            let nano_cores = self.rates.rate(&key, total.cpu_usage_core_nanos);
            keep.insert(key);
            pods.push(PodSample { name, namespace, uid, start: rfc3339_from_nanos(sb.created_at), containers: samples, total, nano_cores });
        }
        let node = stats::node_usage();
        keep.insert("node".into());
        self.rates.retain(&keep);
        Ok((node, pods))
    }

    fn summary(&self, node: Option<&Usage>, pods: &[PodSample]) -> Value {
        let now = now_rfc3339();
        let mut node_json = json!({"nodeName": self.node_name, "systemContainers": [], "startTime": boot_time().unwrap_or_default()});
        if let Some(u) = node {
            let rate = self.rates.rate("node", u.cpu_usage_core_nanos);
            node_json["cpu"] = stats::cpu_json(&now, u, rate);
            node_json["memory"] = stats::memory_json(&now, u, stats::node_memory_total());
        }
        let pods: Vec<Value> = pods
            .iter()
            .map(|p| {
                let containers: Vec<Value> = p
                    .containers
                    .iter()
                    .map(|c| {
                        let mut v = json!({"name": c.name, "startTime": c.start});
                        if let Some(u) = &c.usage {
                            v["cpu"] = stats::cpu_json(&now, u, c.nano_cores);
                            v["memory"] = stats::memory_json(&now, u, None);
                        }
                        v
                    })
                    .collect();
                json!({
                    "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                    "startTime": p.start,
                    "containers": containers,
                    "cpu": stats::cpu_json(&now, &p.total, p.nano_cores),
                    "memory": stats::memory_json(&now, &p.total, None),
                })
            })
            .collect();
        json!({"node": node_json, "pods": pods})
    }
}

/// The boot time of the host (`btime` of /proc/stat), RFC 3339.
fn boot_time() -> Option<String> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(jiff::Timestamp::from_second(secs).ok()?.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::types::PodSandboxMetadata;

    #[test]
    fn attributes_as_upstream() {
        let a = request_attributes(&http::Method::GET, "/stats/summary", "n1");
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.name.as_str(), a.subresource.as_str()), ("get", "nodes", "n1", "stats"));
        assert_eq!(request_attributes(&http::Method::GET, "/metrics/resource", "n").subresource, "metrics");
        assert_eq!(request_attributes(&http::Method::GET, "/containerLogs/a/b/c", "n").subresource, "proxy");
        assert_eq!(request_attributes(&http::Method::GET, "/pods", "n").subresource, "proxy");
        assert_eq!(request_attributes(&http::Method::GET, "/logs/syslog", "n").subresource, "log");
        assert_eq!(request_attributes(&http::Method::GET, "/healthz", "n").subresource, "healthz");
        assert_eq!(request_attributes(&http::Method::POST, "/exec/a/b/c", "n").verb, "create");
    }

    #[test]
    fn default_authorizer_allows_masters_and_the_apiserver() {
        let auth = default_authorizer();
        let a = request_attributes(&http::Method::GET, "/pods", "n");
        let u = |name: &str, groups: &[&str]| RequestUser { name: name.into(), groups: groups.iter().map(|s| s.to_string()).collect() };
        assert!(auth(&u("system:admin", &["system:masters"]), &a));
        assert!(auth(&u(APISERVER_CLIENT_USER, &[]), &a));
        assert!(!auth(&u("system:node:x", &["system:nodes"]), &a));
    }

    #[test]
    fn sandboxes_become_minimal_pods() {
        let sb = PodSandbox {
            id: "abc".into(),
            metadata: Some(PodSandboxMetadata { name: "web".into(), uid: "u1".into(), namespace: "default".into(), attempt: 0 }),
            state: PodSandboxState::SandboxReady as i32,
            created_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let list = pods_from_sandboxes(&[sb], "node1");
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["items"][0]["metadata"]["name"], "web");
        assert_eq!(list["items"][0]["metadata"]["uid"], "u1");
        assert_eq!(list["items"][0]["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(list["items"][0]["status"]["phase"], "Running");
        assert_eq!(list["items"][0]["spec"]["nodeName"], "node1");
    }

    #[test]
    fn metrics_text() {
        let u = Usage { cpu_usage_core_nanos: 1_500_000_000, memory_working_set_bytes: 4096, ..Default::default() };
        let pods = vec![PodSample {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u".into(),
            start: "2024-01-01T00:00:00Z".into(),
            containers: vec![ContainerSample { name: "c".into(), start: "2024-01-01T00:00:01Z".into(), usage: Some(u), nano_cores: None }],
            total: u,
            nano_cores: None,
        }];
        let text = render_metrics(Some(&u), &pods, 1000);
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter\n"), "{text}");
        assert!(text.contains("container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"web\"} 1.5 1000\n"), "{text}");
        assert!(text.contains("container_memory_working_set_bytes{container=\"c\",namespace=\"default\",pod=\"web\"} 4096 1000\n"));
        assert!(text.contains("container_start_time_seconds{container=\"c\",namespace=\"default\",pod=\"web\"} 1704067201 1000\n"));
        assert!(text.contains("node_cpu_usage_seconds_total 1.5 1000\n"));
        assert!(text.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 4096 1000\n"));
        assert!(text.ends_with("resource_scrape_error 0\n"));
    }
}
