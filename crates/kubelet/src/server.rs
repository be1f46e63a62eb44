//! The kubelet API (HTTPS on `:10250`), as the API server and metrics clients use it.
//!
//! Routes (GET): `/healthz`, `/pods`, `/containerLogs/{ns}/{pod}/{container}` (with
//! `follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`, `limitBytes`,
//! `previous`), `/stats/summary`, `/metrics/resource`.
//! `/exec/...`, `/attach/...`, `/portForward/...` (upgraded, see [`crate::streaming`]).
//! Not served yet: `run`, `/logs/` (node logs), `/spec`.
//!
//! Authentication, as upstream's kubelet with `--anonymous-auth=false` and webhook token
//! authentication: a client certificate signed by the cluster CA (its CN is the user, its
//! O values the groups), else a bearer token the API server vouches for in a TokenReview;
//! anything else gets 401 `Unauthorized`. Authorization (`--authorization-mode=Webhook`):
//! every request is described by [`request_attributes`] — verb from the method (`get`,
//! `create`, ...), resource `nodes`, name the node, subresource from the path with
//! upstream's fine-grained mapping and its `proxy` fallback — and each description is
//! sent to the API server as a SubjectAccessReview until one is allowed; otherwise 403
//! `Forbidden (user=..., verb=..., resource=nodes, subresource(s)=[...])`. Answers are
//! cached as upstream does (tokens 2 min; allowed 5 min, denied 30 s). See
//! [`WebhookAuth`]; [`default_authorizer`] is the fallback without an API server.
//!
//! The serving certificate is a `rk3s_pki::LiveCert` read at each handshake: its owner
//! (the agent, the server for its own node) renews it while the API serves.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
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

/// The authenticated user of a request (from its client certificate or bearer token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestUser {
    /// User name (certificate CN, or the TokenReview's `username`).
    pub name: String,
    /// Groups (certificate O values, or the TokenReview's `groups`).
    pub groups: Vec<String>,
}

/// What a request asks to do, in the terms of upstream's kubelet authorizer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestAttributes {
    /// `get`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// Always `nodes`.
    pub resource: String,
    /// The node name.
    pub name: String,
    /// `stats`, `metrics`, `log`, `pods`, `healthz`, `configz`, `checkpoint`, `proxy`.
    pub subresource: String,
}

/// Errors of the authentication and authorization hooks (the API server could not be
/// asked).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Authentication of bearer tokens and authorization of requests for the kubelet API
/// (upstream's `--authentication-token-webhook` and `--authorization-mode=Webhook`).
pub trait KubeletAuth: Send + Sync {
    /// The user a bearer token belongs to; `Ok(None)` when the token is not valid.
    fn authenticate_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<RequestUser>, AuthError>>;
    /// True when `user` may do `attrs`.
    fn authorize<'a>(
        &'a self,
        user: &'a RequestUser,
        attrs: &'a RequestAttributes,
    ) -> BoxFuture<'a, Result<bool, AuthError>>;
}

/// The authentication/authorization hook of the kubelet API.
pub type Authorizer = Arc<dyn KubeletAuth>;

/// Provides the `PodList` served at `/pods` (the agent's view of its pods).
pub type PodsProvider = Arc<dyn Fn() -> Value + Send + Sync>;

/// The user name the API server presents to kubelets.
pub const APISERVER_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// The static policy of [`default_authorizer`].
struct StaticAuth;

impl KubeletAuth for StaticAuth {
    fn authenticate_token<'a>(
        &'a self,
        _token: &'a str,
    ) -> BoxFuture<'a, Result<Option<RequestUser>, AuthError>> {
        Box::pin(async { Ok(None) })
    }

    fn authorize<'a>(
        &'a self,
        user: &'a RequestUser,
        _attrs: &'a RequestAttributes,
    ) -> BoxFuture<'a, Result<bool, AuthError>> {
        let ok =
            user.name == APISERVER_CLIENT_USER || user.groups.iter().any(|g| g == "system:masters");
        Box::pin(async move { Ok(ok) })
    }
}

/// Without an API server to ask: no bearer tokens; allows users in `system:masters` and
/// [`APISERVER_CLIENT_USER`], denies everyone else.
pub fn default_authorizer() -> Authorizer {
    Arc::new(StaticAuth)
}

/// How long upstream's kubelet caches webhook answers (its defaults): tokens 2 min,
/// allowed decisions 5 min, denied ones 30 s.
const TOKEN_TTL: Duration = Duration::from_secs(120);
const TOKEN_FAILURE_TTL: Duration = Duration::from_secs(10);
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Cache entries kept at most (the oldest half is dropped beyond).
const CACHE_MAX: usize = 4096;

/// A small TTL map.
struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        let map = self.map.lock().ok()?;
        map.get(k)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn put(&self, k: K, v: V, ttl: Duration) {
        if let Ok(mut map) = self.map.lock() {
            let now = Instant::now();
            if map.len() >= CACHE_MAX {
                map.retain(|_, (_, exp)| *exp > now);
                if map.len() >= CACHE_MAX {
                    map.clear();
                }
            }
            map.insert(k, (v, now + ttl));
        }
    }
}

/// Asks the API server: a TokenReview for bearer tokens, a SubjectAccessReview for every
/// request, answers cached as upstream's kubelet does.
pub struct WebhookAuth {
    client: kube::Client,
    tokens: TtlCache<[u8; 32], Option<RequestUser>>,
    decisions: TtlCache<(String, Vec<String>, RequestAttributes), bool>,
}

impl WebhookAuth {
    /// A webhook authenticator/authorizer over `client` (the node's credentials; the
    /// `system:node` role may create TokenReviews and SubjectAccessReviews).
    pub fn new(client: kube::Client) -> WebhookAuth {
        WebhookAuth {
            client,
            tokens: TtlCache::new(),
            decisions: TtlCache::new(),
        }
    }
}

/// The SubjectAccessReview the kubelet sends for `attrs` of `user`.
pub fn subject_access_review(user: &RequestUser, attrs: &RequestAttributes) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(attrs.verb.clone()),
                group: Some(String::new()),
                version: Some("v1".into()),
                resource: Some(attrs.resource.clone()),
                subresource: Some(attrs.subresource.clone()),
                name: Some(attrs.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl KubeletAuth for WebhookAuth {
    fn authenticate_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<RequestUser>, AuthError>> {
        Box::pin(async move {
            let mut key = [0u8; 32];
            key.copy_from_slice(
                ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref(),
            );
            if let Some(u) = self.tokens.get(&key) {
                return Ok(u);
            }
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let out = api
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| AuthError(format!("TokenReview: {e}")))?;
            let status = out.status.unwrap_or_default();
            let user = match (status.authenticated, status.user) {
                (Some(true), Some(u)) if u.username.as_deref().is_some_and(|n| !n.is_empty()) => {
                    Some(RequestUser {
                        name: u.username.unwrap_or_default(),
                        groups: u.groups.unwrap_or_default(),
                    })
                }
                _ => None,
            };
            let ttl = if user.is_some() {
                TOKEN_TTL
            } else {
                TOKEN_FAILURE_TTL
            };
            self.tokens.put(key, user.clone(), ttl);
            Ok(user)
        })
    }

    fn authorize<'a>(
        &'a self,
        user: &'a RequestUser,
        attrs: &'a RequestAttributes,
    ) -> BoxFuture<'a, Result<bool, AuthError>> {
        Box::pin(async move {
            let key = (user.name.clone(), user.groups.clone(), attrs.clone());
            if let Some(d) = self.decisions.get(&key) {
                return Ok(d);
            }
            let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
            let out = api
                .create(
                    &kube::api::PostParams::default(),
                    &subject_access_review(user, attrs),
                )
                .await
                .map_err(|e| AuthError(format!("SubjectAccessReview: {e}")))?;
            let allowed = out.status.is_some_and(|s| s.allowed);
            self.decisions
                .put(key, allowed, if allowed { ALLOWED_TTL } else { DENIED_TTL });
            Ok(allowed)
        })
    }
}

/// What [`serve`] needs.
#[derive(Clone)]
pub struct KubeletServerOptions {
    /// Address to listen on (`0.0.0.0:10250`).
    pub listen: SocketAddr,
    /// This node's name (the `name` of authorization requests).
    pub node_name: String,
    /// Serving certificate and key, read by every TLS handshake: a renewal
    /// (`LiveCert::update`) is presented to new connections without a restart.
    pub serving: Arc<rk3s_pki::LiveCert>,
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
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, ServerError> {
    let serving = rk3s_pki::LiveCert::from_pem(cert_pem, key_pem)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    tls_config_with(Arc::new(serving), client_ca_pem)
}

/// [`tls_config`] presenting whatever `serving` holds at each handshake.
pub fn tls_config_with(
    serving: Arc<rk3s_pki::LiveCert>,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds `opts.listen` and serves the kubelet API until the task is dropped.
pub async fn serve(opts: KubeletServerOptions) -> Result<(), ServerError> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| ServerError::Listen {
            addr: opts.listen,
            source: e,
        })?;
    serve_listener(listener, opts).await
}

/// Serves the kubelet API on an already bound listener (`opts.listen` is ignored).
pub async fn serve_listener(
    listener: TcpListener,
    opts: KubeletServerOptions,
) -> Result<(), ServerError> {
    let tls = tls_config_with(opts.serving.clone(), &opts.client_ca_pem)?;
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
                .map(|id| RequestUser {
                    name: id.user,
                    groups: id.groups,
                });
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let api = api.clone();
                let user = user.clone();
                async move { Ok::<_, Infallible>(api.handle_request(req, user.as_ref()).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
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

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            KubeletBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            KubeletBody::Stream(r) => {
                let mut buf = [0u8; 16 * 1024];
                let mut rb = ReadBuf::new(&mut buf);
                match Pin::new(r).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(None),
                    Poll::Ready(Ok(())) => {
                        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
                    }
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
    respond(
        200,
        "application/json",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

fn respond(code: u16, content_type: &'static str, body: Bytes) -> Response {
    let mut r = http::Response::new(KubeletBody::Full(Some(body)));
    *r.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// True when `path` is `base` or below it (upstream's `isSubpath`).
fn is_subpath(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Describes a request for authorization as upstream's kubelet does (with fine-grained
/// authorization, on by default since 1.33): verb from the method, resource `nodes`, name
/// the node, and one or two subresources tried in order — `pods` (for `/pods` and
/// `/runningpods/`), `healthz`, `configz` or `statusz` first, then the path's own:
/// `stats`, `metrics`, `log` (`/logs/`), `checkpoint`, or `proxy` for everything else.
pub fn request_attributes(
    method: &http::Method,
    path: &str,
    node_name: &str,
) -> Vec<RequestAttributes> {
    let verb = match *method {
        http::Method::POST => "create",
        http::Method::GET => "get",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    };
    let mut subs = Vec::new();
    if is_subpath(path, "/pods") || is_subpath(path, "/runningpods/") {
        subs.push("pods");
    } else if is_subpath(path, "/healthz") {
        subs.push("healthz");
    } else if is_subpath(path, "/configz") {
        subs.push("configz");
    } else if is_subpath(path, "/statusz") {
        subs.push("statusz");
    }
    subs.push(if is_subpath(path, "/stats/") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs/") {
        "log"
    } else if is_subpath(path, "/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    });
    subs.into_iter()
        .map(|sub| RequestAttributes {
            verb: verb.into(),
            resource: "nodes".into(),
            name: node_name.into(),
            subresource: sub.into(),
        })
        .collect()
}

/// The body of upstream's 403: `Forbidden (user=U, verb=V, resource=nodes, subresource(s)=[a b])`.
pub fn forbidden_message(user: &RequestUser, attrs: &[RequestAttributes]) -> String {
    let subs: Vec<&str> = attrs.iter().map(|a| a.subresource.as_str()).collect();
    let (verb, resource) = attrs
        .first()
        .map(|a| (a.verb.as_str(), a.resource.as_str()))
        .unwrap_or(("", "nodes"));
    format!(
        "Forbidden (user={}, verb={verb}, resource={resource}, subresource(s)=[{}])\n",
        user.name,
        subs.join(" ")
    )
}

/// The bearer token of a request's `Authorization` header.
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn sandbox_meta(sb: &PodSandbox) -> (String, String, String) {
    let m = sb.metadata.clone().unwrap_or_default();
    let ns = sb
        .labels
        .get("io.kubernetes.pod.namespace")
        .cloned()
        .unwrap_or(m.namespace);
    let name = sb
        .labels
        .get("io.kubernetes.pod.name")
        .cloned()
        .unwrap_or(m.name);
    let uid = sb
        .labels
        .get("io.kubernetes.pod.uid")
        .cloned()
        .unwrap_or(m.uid);
    (ns, name, uid)
}

fn container_name(c: &Container) -> String {
    c.labels
        .get("io.kubernetes.container.name")
        .cloned()
        .unwrap_or_else(|| {
            c.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default()
        })
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
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape_label(&c.name),
            escape_label(&p.namespace),
            escape_label(&p.name)
        )
    };
    let plabels = |p: &PodSample| {
        format!(
            "{{namespace=\"{}\",pod=\"{}\"}}",
            escape_label(&p.namespace),
            escape_label(&p.name)
        )
    };
    let per_container = |f: &dyn Fn(&ContainerSample, &Usage) -> String| -> Vec<(String, String)> {
        pods.iter()
            .flat_map(|p| {
                p.containers
                    .iter()
                    .filter_map(move |c| c.usage.as_ref().map(|u| (clabels(p, c), f(c, u))))
            })
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
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since the Unix epoch, in seconds",
        starts,
    );
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
        pods.iter()
            .map(|p| (plabels(p), secs(p.total.cpu_usage_core_nanos).to_string()))
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Working set memory of the pod, in bytes",
        pods.iter()
            .map(|p| (plabels(p), p.total.memory_working_set_bytes.to_string()))
            .collect(),
    );
    let _ = writeln!(out, "# HELP resource_scrape_error 1 if there was an error while getting container metrics, 0 otherwise");
    let _ = writeln!(out, "# TYPE resource_scrape_error gauge");
    let _ = writeln!(
        out,
        "resource_scrape_error {}",
        if node.is_some() { 0 } else { 1 }
    );
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

    /// Serves one request from the network: authenticates it (the client certificate's
    /// user `cert_user`, else a bearer token checked by TokenReview), authorizes it, then
    /// serves the streaming routes (`exec`, `attach`, `portForward`, which need the
    /// connection's upgrade) here and the others as [`KubeletApi::handle`].
    pub async fn handle_request(
        &self,
        req: hyper::Request<Incoming>,
        cert_user: Option<&RequestUser>,
    ) -> Response {
        let token_user;
        let user = match cert_user {
            Some(u) => u,
            None => {
                let Some(token) = bearer_token(req.headers()) else {
                    return text(401, "Unauthorized");
                };
                match self.authorizer.authenticate_token(token).await {
                    Ok(Some(u)) => {
                        token_user = u;
                        &token_user
                    }
                    Ok(None) => return text(401, "Unauthorized"),
                    Err(e) => {
                        tracing::warn!(error = %e, "kubelet API: unable to authenticate the request");
                        return text(401, "Unauthorized");
                    }
                }
            }
        };
        if let Some(denied) = self.authorize(user, req.method(), req.uri().path()).await {
            return denied;
        }
        if let Some(target) = crate::streaming::StreamTarget::parse(req.uri().path()) {
            if req.method() != http::Method::GET && req.method() != http::Method::POST {
                return text(405, "Method Not Allowed");
            }
            return crate::streaming::serve(&self.cri, target, req).await;
        }
        let (parts, _) = req.into_parts();
        self.route(&parts.method, parts.uri.path(), parts.uri.query())
            .await
    }

    /// Authorizes `user` for a request: `None` when one of the request's attributes is
    /// allowed, else the 403 (or 500 when the authorizer failed) to answer.
    async fn authorize(
        &self,
        user: &RequestUser,
        method: &http::Method,
        path: &str,
    ) -> Option<Response> {
        let attrs = request_attributes(method, path, &self.node_name);
        for a in &attrs {
            match self.authorizer.authorize(user, a).await {
                Ok(true) => return None,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, user = %user.name, verb = %a.verb, subresource = %a.subresource, "kubelet API: authorization error");
                    return Some(text(
                        500,
                        format!(
                            "Authorization error (user={}, verb={}, resource={}, subresource={})",
                            user.name, a.verb, a.resource, a.subresource
                        ),
                    ));
                }
            }
        }
        tracing::debug!(user = %user.name, path, "kubelet API: forbidden");
        Some(text(403, forbidden_message(user, &attrs)))
    }

    /// Serves one non-streaming request of `user` (None: not authenticated).
    pub async fn handle(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        user: Option<&RequestUser>,
    ) -> Response {
        let Some(user) = user else {
            return text(401, "Unauthorized");
        };
        if let Some(denied) = self.authorize(user, method, path).await {
            return denied;
        }
        self.route(method, path, query).await
    }

    /// Serves an authorized request.
    async fn route(&self, method: &http::Method, path: &str, query: Option<&str>) -> Response {
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(405, "Method Not Allowed");
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["healthz"] => text(200, "ok"),
            ["pods"] => self.pods().await,
            ["containerLogs", ns, pod, container] => {
                self.container_logs(ns, pod, container, query).await
            }
            ["stats", "summary"] => match self.collect().await {
                Ok((node, pods)) => json_response(&self.summary(node.as_ref(), &pods)),
                Err(e) => text(500, format!("failed to get stats: {e}")),
            },
            ["metrics", "resource"] => match self.collect().await {
                Ok((node, pods)) => {
                    let body = render_metrics(
                        node.as_ref(),
                        &pods,
                        jiff::Timestamp::now().as_millisecond(),
                    );
                    respond(
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        Bytes::from(body),
                    )
                }
                Err(e) => text(500, format!("failed to get stats: {e}")),
            },
            ["exec" | "attach" | "portForward", ..] => {
                text(400, "streaming requests need an upgradeable connection")
            }
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
    async fn sandboxes_of(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Vec<PodSandbox>, crate::cri::CriError> {
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

    async fn container_logs(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        query: Option<&str>,
    ) -> Response {
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
        let mut mine: Vec<Container> = all
            .into_iter()
            .filter(|c| {
                sandbox_ids.contains(c.pod_sandbox_id.as_str()) && container_name(c) == container
            })
            .collect();
        // Newest instance first.
        mine.sort_by_key(|c| std::cmp::Reverse((attempt(c), c.created_at)));
        let Some(current) = mine.first() else {
            return text(400, format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"));
        };
        let path = if opts.previous {
            let prev = match mine.get(1) {
                Some(p) => self
                    .cri
                    .container_status(&p.id)
                    .await
                    .ok()
                    .map(|s| PathBuf::from(s.log_path)),
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
                    .and_then(|s| {
                        PathBuf::from(s.log_path)
                            .parent()
                            .map(|d| d.join(format!("{}.log", n - 1)))
                    })
                    .filter(|p| p.exists()),
            };
            match guessed {
                Some(p) => p,
                None => {
                    return text(
                        400,
                        format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                    )
                }
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
            return text(
                500,
                format!("container \"{container}\" in pod \"{pod}\" has no log file"),
            );
        }
        // The file is opened before answering so errors get a proper status.
        if let Err(e) = tokio::fs::metadata(&path).await {
            return text(
                500,
                format!("failed to read log file {}: {e}", path.display()),
            );
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
                        Some(id) => cri
                            .container_status(&id)
                            .await
                            .map(|s| s.state == ContainerState::ContainerRunning as i32)
                            .unwrap_or(false),
                        None => false,
                    }
                }
            };
            if let Err(e) = logs::read_logs(&path, &opts, &mut tx, running).await {
                tracing::debug!(error = %e, "containerLogs ended");
            }
        });
        let mut r = http::Response::new(KubeletBody::Stream(rx));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
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
                by_sandbox
                    .entry(c.pod_sandbox_id.as_str())
                    .or_default()
                    .push(c);
            }
        }
        let mut keep = HashSet::new();
        let mut pods = Vec::new();
        for sb in sbs
            .iter()
            .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
        {
            let (namespace, name, uid) = sandbox_meta(sb);
            let mut total = self.usage_of(&sb.id).unwrap_or_default();
            let mut samples = Vec::new();
            for c in by_sandbox
                .get(sb.id.as_str())
                .map(|v| v.as_slice())
                .unwrap_or(&[])
            {
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
                samples.push(ContainerSample {
                    name: container_name(c),
                    start: rfc3339_from_nanos(c.created_at),
                    usage,
                    nano_cores,
                });
            }
            samples.sort_by(|a, b| a.name.cmp(&b.name));
            let key = format!("pod:{}", sb.id);
            let nano_cores = self.rates.rate(&key, total.cpu_usage_core_nanos);
            keep.insert(key);
            pods.push(PodSample {
                name,
                namespace,
                uid,
                start: rfc3339_from_nanos(sb.created_at),
                containers: samples,
                total,
                nano_cores,
            });
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
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(
        jiff::Timestamp::from_second(secs)
            .ok()?
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::types::PodSandboxMetadata;

    /// The serving certificate (DER) a new TLS connection to `addr` is shown.
    async fn presented(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("ca")).expect("root");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("handshake");
        tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
    }

    #[tokio::test]
    async fn a_renewed_serving_certificate_is_presented_to_new_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.path())).expect("pki");
        let issue = || {
            rk3s_pki::issue_serving_cert_for(
                &pki.ca_cert_pem,
                &pki.ca_key_pem,
                "node1",
                &["localhost".to_string()],
                Duration::from_secs(30),
            )
            .expect("serving")
        };
        let (c1, k1) = issue();
        let live = Arc::new(rk3s_pki::LiveCert::from_pem(&c1, &k1).expect("live"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
            tls_config_with(live.clone(), &pki.ca_cert_pem).expect("tls"),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(s) = acceptor.accept(tcp).await {
                    open.push(s);
                }
            }
        });
        let der = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .expect("pem")
                .expect("der")
                .to_vec()
        };
        assert_eq!(presented(addr, &pki.ca_cert_pem).await, der(&c1));
        let (c2, k2) = issue();
        live.update(&c2, &k2).expect("renewed");
        assert_eq!(presented(addr, &pki.ca_cert_pem).await, der(&c2));
        assert!(rk3s_pki::not_after(&c2).expect("c2") >= rk3s_pki::not_after(&c1).expect("c1"));
        server.abort();
    }

    fn subs(method: http::Method, path: &str) -> Vec<String> {
        request_attributes(&method, path, "n")
            .into_iter()
            .map(|a| a.subresource)
            .collect()
    }

    #[test]
    fn attributes_as_upstream() {
        let a = request_attributes(&http::Method::GET, "/stats/summary", "n1");
        assert_eq!(a.len(), 1);
        let a = &a[0];
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.subresource.as_str()
            ),
            ("get", "nodes", "n1", "stats")
        );
        assert_eq!(subs(http::Method::GET, "/metrics/resource"), ["metrics"]);
        assert_eq!(subs(http::Method::GET, "/metrics"), ["metrics"]);
        assert_eq!(
            subs(http::Method::GET, "/metricsfoo"),
            ["proxy"],
            "a prefix that is not a path segment"
        );
        assert_eq!(subs(http::Method::GET, "/containerLogs/a/b/c"), ["proxy"]);
        assert_eq!(subs(http::Method::GET, "/pods"), ["pods", "proxy"]);
        assert_eq!(subs(http::Method::GET, "/pods/"), ["pods", "proxy"]);
        assert_eq!(subs(http::Method::GET, "/runningpods/"), ["pods", "proxy"]);
        assert_eq!(subs(http::Method::GET, "/healthz"), ["healthz", "proxy"]);
        assert_eq!(
            subs(http::Method::GET, "/healthz/ping"),
            ["healthz", "proxy"]
        );
        assert_eq!(subs(http::Method::GET, "/configz"), ["configz", "proxy"]);
        assert_eq!(subs(http::Method::GET, "/logs/syslog"), ["log"]);
        assert_eq!(subs(http::Method::GET, "/logs"), ["log"]);
        assert_eq!(
            subs(http::Method::POST, "/checkpoint/ns/p/c"),
            ["checkpoint"]
        );
        assert_eq!(subs(http::Method::GET, "/spec/"), ["proxy"]);
        assert_eq!(subs(http::Method::GET, "/stats"), ["stats"]);
        let verb = |m: http::Method| request_attributes(&m, "/exec/a/b/c", "n")[0].verb.clone();
        assert_eq!(verb(http::Method::POST), "create");
        assert_eq!(verb(http::Method::GET), "get");
        assert_eq!(verb(http::Method::PUT), "update");
        assert_eq!(verb(http::Method::PATCH), "patch");
        assert_eq!(verb(http::Method::DELETE), "delete");
        assert_eq!(verb(http::Method::OPTIONS), "");
    }

    #[test]
    fn forbidden_message_as_upstream() {
        let u = RequestUser {
            name: "system:serviceaccount:default:nobody".into(),
            groups: vec![],
        };
        assert_eq!(
            forbidden_message(&u, &request_attributes(&http::Method::GET, "/pods", "n")),
            "Forbidden (user=system:serviceaccount:default:nobody, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
        );
        assert_eq!(
            forbidden_message(&u, &request_attributes(&http::Method::POST, "/exec/a/b/c", "n")),
            "Forbidden (user=system:serviceaccount:default:nobody, verb=create, resource=nodes, subresource(s)=[proxy])\n"
        );
    }

    #[test]
    fn bearer_tokens() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(v).unwrap_or(http::HeaderValue::from_static("")),
            );
            m
        };
        assert_eq!(bearer_token(&h("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer_token(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&h("Basic dXNlcg==")), None);
        assert_eq!(bearer_token(&h("Bearer ")), None);
        assert_eq!(bearer_token(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn default_authorizer_allows_masters_and_the_apiserver() {
        let auth = default_authorizer();
        let a = &request_attributes(&http::Method::GET, "/pods", "n")[0];
        let u = |name: &str, groups: &[&str]| RequestUser {
            name: name.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        };
        assert!(auth
            .authorize(&u("system:admin", &["system:masters"]), a)
            .await
            .unwrap_or(false));
        assert!(auth
            .authorize(&u(APISERVER_CLIENT_USER, &[]), a)
            .await
            .unwrap_or(false));
        assert!(!auth
            .authorize(&u("system:node:x", &["system:nodes"]), a)
            .await
            .unwrap_or(true));
        assert_eq!(auth.authenticate_token("anything").await.ok(), Some(None));
    }

    /// A fake API server: answers TokenReviews (token `good` is alice in group `devs`) and
    /// SubjectAccessReviews (alice may use `nodes/proxy`), recording the request bodies.
    #[derive(Clone, Default)]
    struct FakeApi {
        seen: Arc<Mutex<Vec<(String, Value)>>>,
    }

    impl tower_service::Service<http::Request<kube::client::Body>> for FakeApi {
        type Response = http::Response<http_body_util::Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
            let seen = self.seen.clone();
            Box::pin(async move {
                use http_body_util::BodyExt;
                let path = req.uri().path().to_string();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Ok(mut s) = seen.lock() {
                    s.push((path.clone(), obj.clone()));
                }
                let spec = obj["spec"].clone();
                obj["status"] = if path.ends_with("/tokenreviews") {
                    if spec["token"] == "good" {
                        json!({"authenticated": true, "user": {"username": "alice", "groups": ["devs", "system:authenticated"]}})
                    } else {
                        json!({"authenticated": false, "error": "invalid bearer token"})
                    }
                } else {
                    json!({"allowed": spec["user"] == "alice" && spec["resourceAttributes"]["subresource"] == "proxy"})
                };
                let mut r =
                    http::Response::new(http_body_util::Full::new(Bytes::from(obj.to_string())));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(r)
            })
        }
    }

    #[tokio::test]
    async fn webhook_asks_the_api_server_and_caches() {
        let fake = FakeApi::default();
        let auth = WebhookAuth::new(kube::Client::new(fake.clone(), "default"));
        let count = || fake.seen.lock().map(|s| s.len()).unwrap_or(0);

        let alice = auth.authenticate_token("good").await.ok().flatten();
        assert_eq!(
            alice,
            Some(RequestUser {
                name: "alice".into(),
                groups: vec!["devs".into(), "system:authenticated".into()]
            })
        );
        assert_eq!(auth.authenticate_token("bad").await.ok(), Some(None));
        assert_eq!(count(), 2);
        let (path, body) = fake.seen.lock().map(|s| s[0].clone()).unwrap_or_default();
        assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(body["spec"]["token"], "good");
        // Cached: no more TokenReviews.
        assert!(auth
            .authenticate_token("good")
            .await
            .ok()
            .flatten()
            .is_some());
        assert_eq!(auth.authenticate_token("bad").await.ok(), Some(None));
        assert_eq!(count(), 2);

        let Some(alice) = alice else { panic!("alice") };
        let attrs = request_attributes(&http::Method::GET, "/pods", "node1");
        assert!(
            !auth.authorize(&alice, &attrs[0]).await.unwrap_or(true),
            "nodes/pods is not granted"
        );
        assert!(
            auth.authorize(&alice, &attrs[1]).await.unwrap_or(false),
            "nodes/proxy is"
        );
        assert_eq!(count(), 4);
        let (path, body) = fake.seen.lock().map(|s| s[2].clone()).unwrap_or_default();
        assert_eq!(path, "/apis/authorization.k8s.io/v1/subjectaccessreviews");
        assert_eq!(body["kind"], "SubjectAccessReview");
        assert_eq!(body["spec"]["user"], "alice");
        assert_eq!(
            body["spec"]["groups"],
            json!(["devs", "system:authenticated"])
        );
        assert_eq!(
            body["spec"]["resourceAttributes"],
            json!({"verb": "get", "group": "", "version": "v1", "resource": "nodes", "subresource": "pods", "name": "node1"})
        );
        // Both decisions are cached.
        assert!(!auth.authorize(&alice, &attrs[0]).await.unwrap_or(true));
        assert!(auth.authorize(&alice, &attrs[1]).await.unwrap_or(false));
        assert_eq!(count(), 4);
        // Another user is asked about separately.
        let bob = RequestUser {
            name: "bob".into(),
            groups: vec![],
        };
        assert!(!auth.authorize(&bob, &attrs[1]).await.unwrap_or(true));
        assert_eq!(count(), 5);
    }

    #[test]
    fn sandboxes_become_minimal_pods() {
        let sb = PodSandbox {
            id: "abc".into(),
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            state: PodSandboxState::SandboxReady as i32,
            created_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let list = pods_from_sandboxes(&[sb], "node1");
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["items"][0]["metadata"]["name"], "web");
        assert_eq!(list["items"][0]["metadata"]["uid"], "u1");
        assert_eq!(
            list["items"][0]["metadata"]["creationTimestamp"],
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(list["items"][0]["status"]["phase"], "Running");
        assert_eq!(list["items"][0]["spec"]["nodeName"], "node1");
    }

    #[test]
    fn metrics_text() {
        let u = Usage {
            cpu_usage_core_nanos: 1_500_000_000,
            memory_working_set_bytes: 4096,
            ..Default::default()
        };
        let pods = vec![PodSample {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u".into(),
            start: "2024-01-01T00:00:00Z".into(),
            containers: vec![ContainerSample {
                name: "c".into(),
                start: "2024-01-01T00:00:01Z".into(),
                usage: Some(u),
                nano_cores: None,
            }],
            total: u,
            nano_cores: None,
        }];
        let text = render_metrics(Some(&u), &pods, 1000);
        assert!(
            text.contains("# TYPE container_cpu_usage_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"web\"} 1.5 1000\n"), "{text}");
        assert!(text.contains("container_memory_working_set_bytes{container=\"c\",namespace=\"default\",pod=\"web\"} 4096 1000\n"));
        assert!(text.contains("container_start_time_seconds{container=\"c\",namespace=\"default\",pod=\"web\"} 1704067201 1000\n"));
        assert!(text.contains("node_cpu_usage_seconds_total 1.5 1000\n"));
        assert!(text.contains(
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 4096 1000\n"
        ));
        assert!(text.ends_with("resource_scrape_error 0\n"));
    }
}
