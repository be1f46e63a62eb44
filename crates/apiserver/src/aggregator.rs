//! Remote API aggregation, as upstream's kube-aggregator: an `APIService` that names a
//! Service (`spec.service`) hands every request under `/apis/<group>/<version>` to the
//! extension API server behind that Service.
//!
//! - [`Aggregator`] holds the remote group/versions, read from the watch cache. A loop
//!   ([`start`]) checks each one as upstream's availability controller does — the Service
//!   exists and listens on `spec.service.port`, its Endpoints have an address for that
//!   port, and `GET /apis/<group>/<version>` answers 2xx over TLS verified against
//!   `spec.caBundle` for `<service>.<namespace>.svc` (or not verified with
//!   `insecureSkipTLSVerify`) — and writes the `Available` condition with upstream's
//!   reasons (`Passed`, `ServiceNotFound`, `ServicePortError`, `EndpointsNotFound`,
//!   `MissingEndpoints`, `FailedDiscoveryCheck`). The resources of the last successful
//!   check feed discovery.
//! - [`dispatch`] proxies requests that passed authentication and authorization to a
//!   ready address of the Service's Endpoints (upstream's endpoint routing), with the
//!   front-proxy client certificate and the user in `X-Remote-User`, `X-Remote-Group`
//!   and `X-Remote-Extra-<key>`; the client's credentials, impersonation headers and any
//!   `X-Remote-*` header it sent are dropped. Answers (watches too) stream back as they
//!   come. An APIService that is not available answers 503 `service unavailable`.
//! - Available remote groups are listed in `/apis`, `/apis/<group>` and aggregated
//!   discovery ([`add_groups`], [`api_group`], [`add_aggregated_groups`]).
//! - [`ensure_authentication_configmap`] publishes
//!   `kube-system/extension-apiserver-authentication`: the client CA, the CA of the
//!   front-proxy certificate and the header names, which extension servers read to trust
//!   the front proxy (upstream's `ClientCARegistrationHook`).
//!
//! Invariants: a group/version served by this process (built in, a CRD or a local group)
//! is never proxied; nothing here trusts a header the client sent about its identity.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::body::{self, Response};
use crate::state::Inner;
use crate::UserInfo;

/// Where APIServices are stored.
const APISERVICE_PREFIX: &str = "/registry/apiregistration.k8s.io/apiservices/";

/// The ConfigMap extension API servers read to trust the front proxy.
pub const AUTHENTICATION_CONFIGMAP: &str = "extension-apiserver-authentication";

/// The user the availability check asks as (upstream's `system:kube-aggregator`).
const CHECK_USER: &str = "system:kube-aggregator";

/// How long a discovery check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks run this often while some remote API is unavailable, and on every APIService
/// change.
const RECHECK_UNAVAILABLE: Duration = Duration::from_secs(3);

/// Checks of available remote APIs run this often (upstream: 30 s).
const RECHECK_AVAILABLE: Duration = Duration::from_secs(30);

/// The front proxy's identity towards extension API servers.
#[derive(Clone)]
pub struct FrontProxyConfig {
    /// Client certificate and key presented to extension API servers (upstream's
    /// `--proxy-client-cert-file`); read by every new connection, so a renewal
    /// (`LiveCert::update`) is used without a restart.
    pub client_cert: Arc<rk3s_pki::LiveCert>,
    /// The CA that signed it (`requestheader-client-ca-file`).
    pub requestheader_ca_pem: String,
    /// The common names extension servers accept (`requestheader-allowed-names`).
    pub allowed_names: Vec<String>,
}

impl std::fmt::Debug for FrontProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontProxyConfig")
            .field("allowed_names", &self.allowed_names)
            .finish_non_exhaustive()
    }
}

/// Where an APIService sends its requests, and whom it trusts there.
#[derive(Clone, PartialEq, Eq)]
struct Routing {
    name: String,
    namespace: String,
    service: String,
    port: u16,
    /// `spec.caBundle` (base64 as stored).
    ca_bundle: String,
    /// `spec.insecureSkipTLSVerify`.
    insecure: bool,
}

/// The group/version and routing of an APIService with `spec.service`.
fn routing_of(apiservice: &Value) -> Option<((String, String), Routing)> {
    let spec = apiservice.get("spec")?;
    let svc = spec.get("service").filter(|s| s.is_object())?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let (group, version) = (s(spec.get("group")), s(spec.get("version")));
    if group.is_empty() || version.is_empty() {
        return None;
    }
    Some((
        (group, version),
        Routing {
            name: crate::object::name(apiservice).unwrap_or("").to_string(),
            namespace: s(svc.get("namespace")),
            service: s(svc.get("name")),
            port: svc
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(443),
            ca_bundle: s(spec.get("caBundle")),
            insecure: spec
                .get("insecureSkipTLSVerify")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
    ))
}

/// `spec.groupPriorityMinimum` and `spec.versionPriority` of an APIService.
fn priorities(apiservice: &Value) -> (i64, i64) {
    let get = |f: &str| {
        apiservice
            .pointer(&format!("/spec/{f}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    (get("groupPriorityMinimum"), get("versionPriority"))
}

/// One remote group/version (an APIService with `spec.service`).
#[derive(Clone)]
struct Remote {
    group: String,
    version: String,
    routing: Routing,
    group_priority_minimum: i64,
    version_priority: i64,
    tls: tokio_rustls::TlsConnector,
    available: bool,
    /// The `APIResourceList` of the last successful check.
    resources: Option<Arc<Value>>,
}

/// The remote APIs and the front proxy's identity (part of [`Inner`]).
#[derive(Default)]
pub struct Aggregator {
    client: Option<Arc<rk3s_pki::LiveCert>>,
    remotes: RwLock<BTreeMap<(String, String), Remote>>,
}

/// An error of the front proxy's configuration.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// The front-proxy certificate or key could not be read.
    #[error("front-proxy client certificate: {0}")]
    ClientCertificate(String),
}

impl Aggregator {
    /// An aggregator presenting `front_proxy`'s certificate (none: no client certificate).
    pub fn new(front_proxy: Option<&FrontProxyConfig>) -> Result<Aggregator, AggregatorError> {
        let client = front_proxy.map(|fp| fp.client_cert.clone());
        Ok(Aggregator {
            client,
            remotes: RwLock::new(BTreeMap::new()),
        })
    }

    fn get(&self, group: &str, version: &str) -> Option<Remote> {
        let r = self.remotes.read().ok()?;
        r.get(&(group.to_string(), version.to_string())).cloned()
    }

    fn all(&self) -> Vec<Remote> {
        match self.remotes.read() {
            Ok(r) => r.values().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    fn set_result(&self, key: &(String, String), available: bool, resources: Option<Value>) {
        if let Ok(mut r) = self.remotes.write() {
            if let Some(remote) = r.get_mut(key) {
                remote.available = available;
                remote.resources = resources.map(Arc::new);
            }
        }
    }

    /// A TLS client for an APIService: its CA bundle (or no verification) and the
    /// front-proxy certificate.
    fn connector(&self, ca_bundle_b64: &str, insecure: bool) -> tokio_rustls::TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b,
            Err(_) => return empty_connector(),
        };
        let builder = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(rk3s_pki::AcceptAnyServerCert::new(provider))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let pem = base64::engine::general_purpose::STANDARD
                .decode(ca_bundle_b64.trim())
                .unwrap_or_default();
            for c in CertificateDer::pem_slice_iter(&pem).flatten() {
                if let Err(e) = roots.add(c) {
                    tracing::debug!(error = %e, "APIService caBundle certificate skipped");
                }
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.client {
            Some(live) => builder.with_client_cert_resolver(live.clone()),
            None => builder.with_no_client_auth(),
        };
        // Full handshakes only: a resumed session would keep a renewed certificate's
        // predecessor as the identity (Go's client resumes only with a session cache).
        config.resumption = rustls::client::Resumption::disabled();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Re-reads the APIServices from the cache: new remote ones are added (not yet
    /// available), changed ones reset, removed ones dropped.
    fn refresh(&self, inner: &Inner) {
        let (items, _) = inner.cache.list(APISERVICE_PREFIX);
        let Ok(mut remotes) = self.remotes.write() else {
            return;
        };
        let mut seen = std::collections::BTreeSet::new();
        for o in items {
            let Some((key, routing)) = routing_of(&o.object()) else {
                continue;
            };
            let priorities = priorities(&o.object());
            match remotes.get_mut(&key) {
                // Unchanged routing: keep the TLS client and the last check's result.
                Some(cur) if cur.routing == routing => {
                    (cur.group_priority_minimum, cur.version_priority) = priorities;
                }
                _ => {
                    if let Some(fresh) = self.remote_of(&o.object()) {
                        remotes.insert(key.clone(), fresh);
                    }
                }
            }
            seen.insert(key);
        }
        remotes.retain(|k, _| seen.contains(k));
    }

    fn remote_of(&self, apiservice: &Value) -> Option<Remote> {
        let ((group, version), routing) = routing_of(apiservice)?;
        let (group_priority_minimum, version_priority) = priorities(apiservice);
        Some(Remote {
            group,
            version,
            group_priority_minimum,
            version_priority,
            tls: self.connector(&routing.ca_bundle, routing.insecure),
            routing,
            available: false,
            resources: None,
        })
    }
}

fn empty_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    ))
}

/// Why an APIService is not available: upstream's condition reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// `ServiceNotFound`, `ServicePortError`, `EndpointsNotFound`, `MissingEndpoints` or
    /// `FailedDiscoveryCheck`.
    pub reason: &'static str,
    /// The condition's message, as upstream words it.
    pub message: String,
}

/// A ready address of the Service's Endpoints for the service port `port`, as
/// upstream's `ResolveEndpoint`: the port's name, then a random address of a subset
/// with that port name.
fn resolve(inner: &Inner, ns: &str, name: &str, port: u16) -> Result<(String, u16), Unavailable> {
    let svc = inner
        .cache
        .get(&format!("/registry/core/services/{ns}/{name}"))
        .ok_or_else(|| Unavailable {
            reason: "ServiceNotFound",
            message: format!("service/{name} in {ns:?} is not present"),
        })?;
    let port_name = svc
        .object()
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("port").and_then(Value::as_u64) == Some(u64::from(port)))
        })
        .map(|p| {
            p.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
        .ok_or_else(|| Unavailable {
            reason: "ServicePortError",
            message: format!("service/{name} in {ns:?} is not listening on port {port}"),
        })?;
    let eps = inner
        .cache
        .get(&format!("/registry/core/endpoints/{ns}/{name}"))
        .ok_or_else(|| Unavailable {
            reason: "EndpointsNotFound",
            message: format!("cannot find endpoints for service/{name} in {ns:?}"),
        })?;
    let mut candidates = Vec::new();
    for ss in eps
        .object()
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(p) = ss
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for a in ss
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(ip) = a.get("ip").and_then(Value::as_str) {
                candidates.push((ip.to_string(), p));
            }
        }
    }
    if candidates.is_empty() {
        return Err(Unavailable {
            reason: "MissingEndpoints",
            message: format!(
                "endpoints for service/{name} in {ns:?} have no addresses with port name {port_name:?}"
            ),
        });
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    Ok(candidates.swap_remove(seed % candidates.len()))
}

fn target(remote: &Remote, ip: String, port: u16) -> crate::proxy::ProxyTarget {
    crate::proxy::ProxyTarget {
        host: ip,
        port,
        tls: Some(remote.tls.clone()),
        server_name: Some(format!(
            "{}.{}.svc",
            remote.routing.service, remote.routing.namespace
        )),
    }
}

/// The headers sent to an extension API server for `user`: the client's own headers
/// without credentials, impersonation or `X-Remote-*`, plus the user's identity.
pub fn front_proxy_headers(client: &http::HeaderMap, user: &UserInfo) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (k, v) in client {
        if !k.as_str().starts_with("x-remote-") {
            out.append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = http::HeaderValue::from_str(&user.name) {
        out.insert("x-remote-user", v);
    }
    for g in &user.groups {
        if let Ok(v) = http::HeaderValue::from_str(g) {
            out.append("x-remote-group", v);
        }
    }
    for (key, values) in &user.extra {
        // Upstream percent-encodes extra keys (header names are case-insensitive).
        let name = format!("x-remote-extra-{}", percent_encode_key(key));
        let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                out.append(name.clone(), v);
            }
        }
    }
    out
}

fn percent_encode_key(key: &str) -> String {
    let mut s = String::new();
    for b in key.to_ascii_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Answers a request under `/apis/<group>/<version>` of a remote APIService (`None`:
/// not one). `user` passed authentication and authorization already.
pub async fn dispatch(
    inner: &Inner,
    parts: &http::request::Parts,
    path: &str,
    body: &Bytes,
    user: &UserInfo,
) -> Option<Response> {
    let rest = path.strip_prefix("/apis/")?;
    let mut it = rest.splitn(3, '/');
    let group = it.next().filter(|g| !g.is_empty())?;
    let version = it.next().filter(|v| !v.is_empty())?;
    // The remote map first: it is usually empty, and every `/apis` request comes here.
    let remote = inner.aggregator.get(group, version)?;
    if !inner
        .schemas
        .registry
        .resources_in(group, version)
        .is_empty()
    {
        return None;
    }
    if !remote.available {
        return Some(body::bytes_response(
            503,
            "text/plain; charset=utf-8",
            "service unavailable\n",
        ));
    }
    let (ip, port) = match resolve(
        inner,
        &remote.routing.namespace,
        &remote.routing.service,
        remote.routing.port,
    ) {
        Ok(a) => a,
        Err(u) => {
            return Some(body::bytes_response(
                503,
                "text/plain; charset=utf-8",
                format!("service unavailable: {}\n", u.message),
            ))
        }
    };
    let path_and_query = match parts.uri.query().filter(|q| !q.is_empty()) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let headers = front_proxy_headers(&parts.headers, user);
    Some(
        match crate::proxy::forward(
            target(&remote, ip, port),
            &parts.method,
            &path_and_query,
            &headers,
            body.clone(),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => body::error(&e),
        },
    )
}

/// One availability check: the Service, its Endpoints, then the discovery document
/// `GET /apis/<group>/<version>` as `system:kube-aggregator` (group `system:masters`).
async fn check(inner: &Inner, remote: &Remote) -> Result<Value, Unavailable> {
    let (ip, port) = resolve(
        inner,
        &remote.routing.namespace,
        &remote.routing.service,
        remote.routing.port,
    )?;
    let path = format!("/apis/{}/{}", remote.group, remote.version);
    let url = format!("https://{}{path}", host_port(&ip, port));
    let failed = |e: &dyn std::fmt::Display| Unavailable {
        reason: "FailedDiscoveryCheck",
        message: format!("failing or missing response from {url}: {e}"),
    };
    let user = UserInfo::new(CHECK_USER, &["system:masters"]);
    let mut headers = front_proxy_headers(&http::HeaderMap::new(), &user);
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let answer = tokio::time::timeout(
        CHECK_TIMEOUT,
        crate::proxy::forward(
            target(remote, ip, port),
            &http::Method::GET,
            &path,
            &headers,
            Bytes::new(),
        ),
    )
    .await
    .map_err(|_| failed(&"Client.Timeout exceeded while awaiting headers"))?
    .map_err(|e| failed(&e.message))?;
    let status = answer.status().as_u16();
    let bytes = tokio::time::timeout(CHECK_TIMEOUT, answer.into_body().collect())
        .await
        .map_err(|_| failed(&"timeout reading the answer"))?
        .map_err(|e| failed(&e))?
        .to_bytes();
    if !(200..300).contains(&status) {
        return Err(failed(&format!("bad status from {url}: {status}")));
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Writes the `Available` condition of APIService `name` when it says something else
/// (compare-and-swap; a conflict is retried by the next round).
async fn write_condition(inner: &Inner, name: &str, result: &Result<Value, Unavailable>) {
    let (status, reason, message) = match result {
        Ok(_) => ("True", "Passed", "all checks passed".to_string()),
        Err(u) => ("False", u.reason, u.message.clone()),
    };
    let key = format!("{APISERVICE_PREFIX}{name}");
    let Ok(Some(kv)) = inner.store.get(&key).await else {
        return;
    };
    let Ok(mut obj) = serde_json::from_slice::<Value>(&kv.value) else {
        return;
    };
    let current = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"))
        .cloned();
    if let Some(c) = &current {
        if c["status"] == status && c["reason"] == reason && c["message"] == message.as_str() {
            return;
        }
    }
    let transition = match &current {
        Some(c) if c["status"] == status => c
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(crate::object::now_rfc3339())),
        _ => json!(crate::object::now_rfc3339()),
    };
    let condition = json!({
        "type": "Available",
        "status": status,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    });
    let mut conditions: Vec<Value> = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != "Available");
    conditions.insert(0, condition);
    obj["status"] = json!({"conditions": conditions});
    let Ok(bytes) = serde_json::to_vec(&obj) else {
        return;
    };
    match inner.store.update(&key, bytes, kv.mod_revision).await {
        Ok(_) => tracing::info!(
            apiservice = name,
            available = status,
            reason,
            "APIService availability changed"
        ),
        Err(e) => {
            tracing::debug!(apiservice = name, error = %e, "APIService status write failed; next round retries")
        }
    }
}

/// One round: re-read the APIServices, check each remote one, record the results.
/// Returns whether every remote API is available.
pub async fn check_all(inner: &Inner) -> bool {
    inner.aggregator.refresh(inner);
    let mut all_available = true;
    for remote in inner.aggregator.all() {
        let result = check(inner, &remote).await;
        let key = (remote.group.clone(), remote.version.clone());
        if let Err(u) = &result {
            all_available = false;
            if remote.available {
                tracing::warn!(apiservice = %remote.routing.name, reason = u.reason, message = %u.message, "APIService no longer available");
            }
        }
        inner
            .aggregator
            .set_result(&key, result.is_ok(), result.as_ref().ok().cloned());
        write_condition(inner, &remote.routing.name, &result).await;
    }
    all_available
}

/// Starts the availability loop: every APIService change, then every 3 s while a
/// remote API is unavailable, every 30 s when all are.
pub fn start(inner: Arc<Inner>) {
    tokio::spawn(async move {
        let (_, _, mut live) = inner.cache.snapshot_and_subscribe(APISERVICE_PREFIX);
        loop {
            let all = check_all(&inner).await;
            let wait = if all {
                RECHECK_AVAILABLE
            } else {
                RECHECK_UNAVAILABLE
            };
            let deadline = tokio::time::sleep(wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    ev = live.recv() => match ev {
                        Ok(ev) if ev.key.starts_with(APISERVICE_PREFIX) => {
                            // Our own status writes are APIService changes too: only
                            // a change of spec (or a new or deleted one) re-checks early.
                            if inner.aggregator.spec_changed(&inner) {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        }
    });
}

impl Aggregator {
    /// Whether the remote APIServices in the cache differ from the ones held.
    fn spec_changed(&self, inner: &Inner) -> bool {
        let (items, _) = inner.cache.list(APISERVICE_PREFIX);
        let fresh: BTreeMap<(String, String), Routing> = items
            .iter()
            .filter_map(|o| routing_of(&o.object()))
            .collect();
        let held = match self.remotes.read() {
            Ok(r) => r,
            Err(_) => return true,
        };
        fresh.len() != held.len()
            || fresh
                .iter()
                .any(|(k, f)| held.get(k).is_none_or(|h| h.routing != *f))
    }
}

/// The available remote groups: name, then versions by `versionPriority` (highest
/// first, the preferred one).
fn remote_groups(inner: &Inner) -> Vec<(String, Vec<Remote>)> {
    let mut groups: BTreeMap<String, Vec<Remote>> = BTreeMap::new();
    for r in inner.aggregator.all().into_iter().filter(|r| r.available) {
        if !inner
            .schemas
            .registry
            .resources_in(&r.group, &r.version)
            .is_empty()
        {
            continue;
        }
        groups.entry(r.group.clone()).or_default().push(r);
    }
    let mut out: Vec<(String, Vec<Remote>)> = groups
        .into_iter()
        .map(|(g, mut vs)| {
            vs.sort_by(|a, b| {
                b.version_priority
                    .cmp(&a.version_priority)
                    .then_with(|| a.version.cmp(&b.version))
            });
            (g, vs)
        })
        .collect();
    // Upstream orders groups by their highest groupPriorityMinimum.
    out.sort_by(|(an, a), (bn, b)| {
        let pa = a
            .iter()
            .map(|r| r.group_priority_minimum)
            .max()
            .unwrap_or(0);
        let pb = b
            .iter()
            .map(|r| r.group_priority_minimum)
            .max()
            .unwrap_or(0);
        pb.cmp(&pa).then_with(|| an.cmp(bn))
    });
    out
}

fn version_entry(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

/// Adds the available remote groups to `/apis`'s `APIGroupList` (versions of a group
/// this process also serves are added to it).
pub fn add_groups(inner: &Inner, list: &mut Value) {
    let Some(groups) = list.get_mut("groups").and_then(Value::as_array_mut) else {
        return;
    };
    for (name, versions) in remote_groups(inner) {
        if let Some(existing) = groups.iter_mut().find(|g| g["name"] == name.as_str()) {
            if let Some(vs) = existing.get_mut("versions").and_then(Value::as_array_mut) {
                for r in &versions {
                    if !vs.iter().any(|v| v["version"] == r.version.as_str()) {
                        vs.push(version_entry(&name, &r.version));
                    }
                }
            }
            continue;
        }
        groups.push(json!({
            "name": name,
            "versions": versions.iter().map(|r| version_entry(&name, &r.version)).collect::<Vec<_>>(),
            "preferredVersion": version_entry(&name, &versions[0].version),
        }));
    }
}

/// `/apis/<group>` of a group only remote APIServices serve.
pub fn api_group(inner: &Inner, group: &str) -> Option<Value> {
    let (name, versions) = remote_groups(inner).into_iter().find(|(g, _)| g == group)?;
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": versions.iter().map(|r| version_entry(&name, &r.version)).collect::<Vec<_>>(),
        "preferredVersion": version_entry(&name, &versions[0].version),
    }))
}

/// The aggregated-discovery form of one remote version's `APIResourceList`.
fn aggregated_version(version: &str, list: Option<&Value>) -> Value {
    let items: Vec<Value> = list
        .and_then(|l| l.get("resources"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut resources: Vec<Value> = Vec::new();
    for r in items.iter() {
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() || name.contains('/') {
            continue;
        }
        let kind = r.get("kind").cloned().unwrap_or(json!(""));
        let mut m = serde_json::Map::new();
        m.insert("resource".into(), json!(name));
        m.insert(
            "responseKind".into(),
            json!({"group": "", "version": "", "kind": kind}),
        );
        let namespaced = r
            .get("namespaced")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        m.insert(
            "scope".into(),
            json!(if namespaced { "Namespaced" } else { "Cluster" }),
        );
        m.insert(
            "singularResource".into(),
            r.get("singularName").cloned().unwrap_or(json!("")),
        );
        m.insert("verbs".into(), r.get("verbs").cloned().unwrap_or(json!([])));
        for (from, to) in [("shortNames", "shortNames"), ("categories", "categories")] {
            if let Some(v) = r
                .get(from)
                .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            {
                m.insert(to.into(), v.clone());
            }
        }
        let subs: Vec<Value> = items
            .iter()
            .filter_map(|s| {
                let n = s.get("name").and_then(Value::as_str)?;
                let sub = n.strip_prefix(name)?.strip_prefix('/')?;
                Some(json!({
                    "subresource": sub,
                    "responseKind": {"group": "", "version": "", "kind": s.get("kind").cloned().unwrap_or(json!(""))},
                    "verbs": s.get("verbs").cloned().unwrap_or(json!([])),
                }))
            })
            .collect();
        if !subs.is_empty() {
            m.insert("subresources".into(), Value::Array(subs));
        }
        resources.push(Value::Object(m));
    }
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// Adds the available remote groups to aggregated discovery of `/apis`.
pub fn add_aggregated_groups(inner: &Inner, list: &mut Value) {
    let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) else {
        return;
    };
    for (name, versions) in remote_groups(inner) {
        let entries: Vec<Value> = versions
            .iter()
            .map(|r| aggregated_version(&r.version, r.resources.as_deref()))
            .collect();
        if let Some(existing) = items
            .iter_mut()
            .find(|g| g.pointer("/metadata/name") == Some(&json!(name)))
        {
            if let Some(vs) = existing.get_mut("versions").and_then(Value::as_array_mut) {
                vs.extend(entries);
            }
            continue;
        }
        items.push(json!({
            "metadata": {"name": name, "creationTimestamp": null},
            "versions": entries,
        }));
    }
}

/// Creates or updates `kube-system/extension-apiserver-authentication` with the client
/// CA and, with a front proxy, its CA, allowed names and header names.
pub async fn ensure_authentication_configmap(
    inner: &Inner,
    client_ca_pem: &str,
    front_proxy: Option<&FrontProxyConfig>,
) -> Result<(), rk3s_store::StoreError> {
    let mut data = serde_json::Map::new();
    data.insert("client-ca-file".into(), json!(client_ca_pem));
    if let Some(fp) = front_proxy {
        let list = |v: &[&str]| serde_json::to_string(v).unwrap_or_default();
        data.insert(
            "requestheader-client-ca-file".into(),
            json!(fp.requestheader_ca_pem),
        );
        data.insert(
            "requestheader-allowed-names".into(),
            json!(serde_json::to_string(&fp.allowed_names).unwrap_or_default()),
        );
        data.insert(
            "requestheader-username-headers".into(),
            json!(list(&["X-Remote-User"])),
        );
        data.insert(
            "requestheader-group-headers".into(),
            json!(list(&["X-Remote-Group"])),
        );
        data.insert(
            "requestheader-extra-headers-prefix".into(),
            json!(list(&["X-Remote-Extra-"])),
        );
    }
    let data = Value::Object(data);
    let key = format!("/registry/core/configmaps/kube-system/{AUTHENTICATION_CONFIGMAP}");
    match inner.store.get(&key).await? {
        None => {
            let obj = json!({
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {
                    "name": AUTHENTICATION_CONFIGMAP,
                    "namespace": "kube-system",
                    "uid": crate::object::new_uid(),
                    "creationTimestamp": crate::object::now_rfc3339(),
                },
                "data": data,
            });
            match inner
                .store
                .create(&key, serde_json::to_vec(&obj).unwrap_or_default())
                .await
            {
                Ok(_) | Err(rk3s_store::StoreError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(kv) => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(&kv.value) else {
                return Ok(());
            };
            if obj.get("data") == Some(&data) {
                return Ok(());
            }
            obj["data"] = data;
            match inner
                .store
                .update(
                    &key,
                    serde_json::to_vec(&obj).unwrap_or_default(),
                    kv.mod_revision,
                )
                .await
            {
                Ok(_) | Err(rk3s_store::StoreError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::testutil::{admin, call};
    use crate::ApiServer;

    #[tokio::test]
    async fn a_renewed_front_proxy_certificate_is_presented_on_new_connections() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.path())).expect("pki");
        let issue = || {
            rk3s_pki::issue_client_cert_for(
                &pki.ca_cert_pem,
                &pki.ca_key_pem,
                "system:auth-proxy",
                &[],
                Duration::from_secs(30),
            )
            .expect("front-proxy cert")
        };
        let (c1, k1) = issue();
        let live = Arc::new(rk3s_pki::LiveCert::from_pem(&c1, &k1).expect("live"));
        let aggregator = Aggregator::new(Some(&FrontProxyConfig {
            client_cert: live.clone(),
            requestheader_ca_pem: pki.ca_cert_pem.clone(),
            allowed_names: vec!["system:auth-proxy".into()],
        }))
        .expect("aggregator");
        // An extension server that records the client certificate of each connection.
        let (cert, key) = rk3s_pki::issue_serving_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "sample-api",
            &["localhost".to_string()],
            1,
        )
        .expect("serving");
        let tls = crate::server::tls_config(&cert, &key, &pki.ca_cert_pem).expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
        let record = seen.clone();
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    if let Some(c) = s.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        record.lock().expect("lock").push(c.to_vec());
                    }
                    // an answer: the client also reads the session tickets sent after
                    // the handshake
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"ok").await;
                    let _ = tokio::io::AsyncWriteExt::flush(&mut s).await;
                    open.push(s);
                }
            }
        });
        // one connector per APIService, built once: it follows the renewal
        let bundle = base64::engine::general_purpose::STANDARD.encode(&pki.ca_cert_pem);
        let connector = aggregator.connector(&bundle, false);
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut s = connector.connect(name, tcp).await.expect("handshake");
            let mut answer = [0u8; 2];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut answer)
                .await
                .expect("answer");
            assert_eq!(&answer, b"ok");
            s
        };
        let der = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .expect("pem")
                .expect("der")
                .to_vec()
        };
        let _first = connect().await;
        let (c2, k2) = issue();
        live.update(&c2, &k2).expect("renewed");
        let _second = connect().await;
        assert_eq!(*seen.lock().expect("lock"), [der(&c1), der(&c2)]);
        assert!(rk3s_pki::not_after(&c2).expect("c2") >= rk3s_pki::not_after(&c1).expect("c1"));
        server.abort();
    }

    /// An extension API server on 127.0.0.1 with a serving certificate for
    /// `sample-api.ns.svc` from `ca`: it answers its discovery document and, for any
    /// other path, echoes what it was told (client certificate CN, X-Remote-* headers,
    /// whether credentials reached it).
    async fn extension_server(ca: &rk3s_pki::ServerPki, client_ca: &str) -> u16 {
        let addr = crate::testutil::https_server(
            &ca.ca_cert_pem,
            &ca.ca_key_pem,
            &["sample-api.ns.svc"],
            client_ca,
            |peer, req| async move {
                let h = |n: &str| -> Vec<String> {
                    req.headers()
                        .get_all(n)
                        .iter()
                        .filter_map(|v| v.to_str().ok().map(String::from))
                        .collect()
                };
                let answer = if req.uri().path() == "/apis/wardle.example.com/v1alpha1" {
                    json!({"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": "wardle.example.com/v1alpha1",
                        "resources": [
                            {"name": "flunders", "singularName": "flunder", "namespaced": true, "kind": "Flunder", "verbs": ["get", "list", "create"]},
                            {"name": "flunders/status", "singularName": "", "namespaced": true, "kind": "Flunder", "verbs": ["get"]},
                        ]})
                } else {
                    json!({
                        "cn": crate::testutil::client_cn(peer.as_deref()),
                        "path": req.uri().to_string(),
                        "method": req.method().as_str(),
                        "user": h("x-remote-user"),
                        "groups": h("x-remote-group"),
                        "extra": h("x-remote-extra-scopes"),
                        "authorization": h("authorization"),
                    })
                };
                body::json(200, &answer)
            },
        )
        .await;
        addr.port()
    }

    async fn put(api: &ApiServer, key: &str, v: Value) {
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        let store = &api.inner().store;
        let r = match store.get(key).await {
            Ok(Some(kv)) => store.update(key, bytes, kv.mod_revision).await,
            _ => store.create(key, bytes).await,
        };
        assert!(r.is_ok(), "{r:?}");
    }

    async fn condition(api: &ApiServer, name: &str) -> Value {
        let (code, v) = call(
            api,
            "GET",
            &format!("/apis/apiregistration.k8s.io/v1/apiservices/{name}"),
            None,
        )
        .await;
        assert_eq!(code, 200, "{v}");
        v.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Polls until the cache shows `check` (the availability loop also runs).
    async fn settle(api: &ApiServer) {
        api.inner()
            .cache
            .wait_fresh(Duration::from_secs(5))
            .await
            .ok();
    }

    #[tokio::test]
    async fn remote_apiservices_are_checked_proxied_and_discovered() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn rk3s_store::Store> = Arc::new(
            rk3s_store::sqlite::SqliteStore::open(&dir.path().join("state.db")).expect("store"),
        );
        let (mut config, pki) = crate::testutil::config(dir.path(), store);
        let (fp_cert, fp_key) = rk3s_pki::issue_client_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "system:auth-proxy",
            &[],
            1,
        )
        .expect("front-proxy cert");
        config.front_proxy = Some(FrontProxyConfig {
            client_cert: Arc::new(rk3s_pki::LiveCert::from_pem(&fp_cert, &fp_key).expect("live")),
            requestheader_ca_pem: pki.ca_cert_pem.clone(),
            allowed_names: vec!["system:auth-proxy".into()],
        });
        let api = ApiServer::new(&config).await.expect("server");

        // The ConfigMap extension servers read.
        let (code, cm) = call(
            &api,
            "GET",
            "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
            None,
        )
        .await;
        assert_eq!(code, 200, "{cm}");
        assert_eq!(cm["data"]["client-ca-file"], pki.ca_cert_pem.as_str());
        assert_eq!(
            cm["data"]["requestheader-allowed-names"],
            "[\"system:auth-proxy\"]"
        );
        assert_eq!(
            cm["data"]["requestheader-username-headers"],
            "[\"X-Remote-User\"]"
        );
        assert_eq!(
            cm["data"]["requestheader-group-headers"],
            "[\"X-Remote-Group\"]"
        );
        assert_eq!(
            cm["data"]["requestheader-extra-headers-prefix"],
            "[\"X-Remote-Extra-\"]"
        );

        let ext_dir = tempfile::tempdir().expect("tmp");
        let ext_ca = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(ext_dir.path()))
            .expect("extension CA");
        let port = extension_server(&ext_ca, &pki.ca_cert_pem).await;
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&ext_ca.ca_cert_pem);
        let apiservice = json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1alpha1.wardle.example.com"},
            "spec": {"group": "wardle.example.com", "version": "v1alpha1",
                "service": {"namespace": "ns", "name": "sample-api", "port": 7443},
                "caBundle": ca_bundle, "groupPriorityMinimum": 2000, "versionPriority": 200},
        });
        let (code, v) = call(
            &api,
            "POST",
            "/apis/apiregistration.k8s.io/v1/apiservices",
            Some(apiservice),
        )
        .await;
        assert_eq!(code, 201, "{v}");

        // No Service yet: unavailable, requests answered 503, group not discovered.
        settle(&api).await;
        check_all(api.inner()).await;
        let c = condition(&api, "v1alpha1.wardle.example.com").await;
        assert_eq!(c["status"], "False", "{c}");
        assert_eq!(c["reason"], "ServiceNotFound");
        assert_eq!(c["message"], "service/sample-api in \"ns\" is not present");
        let (code, _) = call(
            &api,
            "GET",
            "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders",
            None,
        )
        .await;
        assert_eq!(code, 503);
        let (_, groups) = call(&api, "GET", "/apis", None).await;
        assert!(!groups.to_string().contains("wardle"), "{groups}");

        // The Service without endpoints, then with an address on the target port (the
        // store directly: validation refuses loopback endpoint addresses).
        put(&api, "/registry/core/services/ns/sample-api", json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "sample-api", "namespace": "ns", "uid": "u1"},
            "spec": {"ports": [{"port": 7443, "targetPort": 443, "protocol": "TCP"}], "clusterIP": "10.43.0.50"},
        })).await;
        settle(&api).await;
        check_all(api.inner()).await;
        let c = condition(&api, "v1alpha1.wardle.example.com").await;
        assert_eq!(c["reason"], "EndpointsNotFound", "{c}");
        put(&api, "/registry/core/endpoints/ns/sample-api", json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "sample-api", "namespace": "ns", "uid": "u2"},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": port, "protocol": "TCP"}]}],
        })).await;
        settle(&api).await;
        check_all(api.inner()).await;
        let c = condition(&api, "v1alpha1.wardle.example.com").await;
        assert_eq!(c["status"], "True", "{c}");
        assert_eq!(c["reason"], "Passed");

        // Proxied with the front proxy's identity; the client's own X-Remote-User and
        // credentials do not reach the extension server.
        let (parts, ()) = http::Request::builder()
            .method("GET")
            .uri("/apis/wardle.example.com/v1alpha1/namespaces/default/flunders?limit=5")
            .header("x-remote-user", "mallory")
            .header("authorization", "Bearer secret")
            .body(())
            .expect("request")
            .into_parts();
        let mut user = admin();
        user.extra
            .insert("scopes".into(), vec!["a".into(), "b".into()]);
        let resp = api.handle(parts, Bytes::new(), Some(user)).await;
        assert_eq!(resp.status().as_u16(), 200);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let echo: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(echo["cn"], "system:auth-proxy", "{echo}");
        assert_eq!(
            echo["path"],
            "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders?limit=5"
        );
        assert_eq!(echo["user"], json!(["system:admin"]));
        assert_eq!(
            echo["groups"],
            json!(["system:masters", "system:authenticated"])
        );
        assert_eq!(echo["extra"], json!(["a", "b"]));
        assert_eq!(echo["authorization"], json!([]));

        // Discovery: /apis, /apis/<group>, aggregated discovery, /apis/<group>/<version>.
        let (_, groups) = call(&api, "GET", "/apis", None).await;
        let wardle = groups["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == "wardle.example.com"))
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(
            wardle["preferredVersion"]["groupVersion"], "wardle.example.com/v1alpha1",
            "{groups}"
        );
        let (code, group) = call(&api, "GET", "/apis/wardle.example.com", None).await;
        assert_eq!(code, 200);
        assert_eq!(group["kind"], "APIGroup");
        let (code, list) = call(&api, "GET", "/apis/wardle.example.com/v1alpha1", None).await;
        assert_eq!(code, 200);
        assert_eq!(list["resources"][0]["name"], "flunders");
        let (parts, ()) = http::Request::builder()
            .uri("/apis")
            .header(
                "accept",
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            )
            .body(())
            .expect("request")
            .into_parts();
        let resp = api.handle(parts, Bytes::new(), Some(admin())).await;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let agg: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let item = agg["items"]
            .as_array()
            .and_then(|gs| {
                gs.iter()
                    .find(|g| g["metadata"]["name"] == "wardle.example.com")
            })
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(
            item["versions"][0]["resources"][0]["resource"], "flunders",
            "{item}"
        );
        assert_eq!(item["versions"][0]["resources"][0]["scope"], "Namespaced");
        assert_eq!(
            item["versions"][0]["resources"][0]["subresources"][0]["subresource"],
            "status"
        );

        // Endpoints gone: unavailable again, 503.
        put(
            &api,
            "/registry/core/endpoints/ns/sample-api",
            json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "sample-api", "namespace": "ns", "uid": "u2"},
            }),
        )
        .await;
        settle(&api).await;
        check_all(api.inner()).await;
        let c = condition(&api, "v1alpha1.wardle.example.com").await;
        assert_eq!(c["reason"], "MissingEndpoints", "{c}");
        assert_eq!(
            c["message"],
            "endpoints for service/sample-api in \"ns\" have no addresses with port name \"\""
        );
        let (code, _) = call(&api, "GET", "/apis/wardle.example.com/v1alpha1", None).await;
        assert_eq!(code, 503);
    }

    #[tokio::test]
    async fn a_wrong_ca_bundle_fails_the_discovery_check() {
        let dir = tempfile::tempdir().expect("tmp");
        let (api, pki) = crate::testutil::server_with_pki(dir.path()).await;
        let ext_dir = tempfile::tempdir().expect("tmp");
        let ext_ca = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(ext_dir.path()))
            .expect("extension CA");
        let port = extension_server(&ext_ca, &pki.ca_cert_pem).await;
        // Trusts the cluster CA, which did not sign the extension server's certificate.
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&pki.ca_cert_pem);
        let (code, v) = call(
            &api,
            "POST",
            "/apis/apiregistration.k8s.io/v1/apiservices",
            Some(json!({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": "v1alpha1.wardle.example.com"},
                "spec": {"group": "wardle.example.com", "version": "v1alpha1",
                    "service": {"namespace": "ns", "name": "sample-api", "port": 443},
                    "caBundle": ca_bundle, "groupPriorityMinimum": 2000, "versionPriority": 200},
            })),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        put(
            &api,
            "/registry/core/services/ns/sample-api",
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "sample-api", "namespace": "ns", "uid": "u1"},
                "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
            }),
        )
        .await;
        put(&api, "/registry/core/endpoints/ns/sample-api", json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "sample-api", "namespace": "ns", "uid": "u2"},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": port}]}],
        })).await;
        settle(&api).await;
        check_all(api.inner()).await;
        let c = condition(&api, "v1alpha1.wardle.example.com").await;
        assert_eq!(c["status"], "False", "{c}");
        assert_eq!(c["reason"], "FailedDiscoveryCheck");
        let msg = c["message"].as_str().unwrap_or("");
        assert!(
            msg.starts_with(&format!("failing or missing response from https://127.0.0.1:{port}/apis/wardle.example.com/v1alpha1: ")),
            "{msg}"
        );
        // With insecureSkipTLSVerify the same server passes.
        let (code, v) = crate::testutil::call_with_type(
            &api,
            "PATCH",
            "/apis/apiregistration.k8s.io/v1/apiservices/v1alpha1.wardle.example.com",
            "application/merge-patch+json",
            Some(json!({"spec": {"caBundle": null, "insecureSkipTLSVerify": true}})),
        )
        .await;
        assert_eq!(code, 200, "{v}");
        settle(&api).await;
        check_all(api.inner()).await;
        let c = condition(&api, "v1alpha1.wardle.example.com").await;
        assert_eq!(c["reason"], "Passed", "{c}");
    }

    #[test]
    fn front_proxy_headers_replace_the_clients_identity_headers() {
        let mut client = http::HeaderMap::new();
        client.insert("x-remote-user", http::HeaderValue::from_static("mallory"));
        client.insert(
            "x-remote-group",
            http::HeaderValue::from_static("system:masters"),
        );
        client.insert("accept", http::HeaderValue::from_static("application/json"));
        let mut user = UserInfo::new("alice", &["devs"]);
        user.extra.insert("Scopes/x".into(), vec!["v".into()]);
        let h = front_proxy_headers(&client, &user);
        let all = |n: &str| -> Vec<&str> {
            h.get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("x-remote-user"), vec!["alice"]);
        assert_eq!(all("x-remote-group"), vec!["devs"]);
        assert_eq!(all("x-remote-extra-scopes%2Fx"), vec!["v"]);
        assert_eq!(all("accept"), vec!["application/json"]);
    }
}
