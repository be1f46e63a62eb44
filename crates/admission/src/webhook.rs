//! Dynamic admission webhooks (upstream
//! `staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook`):
//! `MutatingAdmissionWebhook` and `ValidatingAdmissionWebhook`.
//!
//! [`matching`] selects the webhooks of Mutating/ValidatingWebhookConfiguration
//! objects that apply to a request (rules, scope, namespaceSelector,
//! objectSelector; `matchConditions` are not evaluated: CEL is not supported,
//! so every webhook with conditions is treated as matching). [`call`] sends an
//! `admission.k8s.io/v1` AdmissionReview over HTTPS (rustls with the ring
//! provider, the webhook's `caBundle`, ALPN `http/1.1`). [`run_mutating`] and
//! [`run_validating`] run a whole phase with failure policies, timeouts, dry-run
//! side-effect checks, JSONPatch application and one reinvocation round.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rk3s_api::selector::LabelSelector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

use crate::util::arr;

/// Resolves a Service (`namespace`, `name`, `port`) to an address to dial.
pub type ServiceResolver<'a> = &'a (dyn Fn(&str, &str, u16) -> Option<SocketAddr> + Sync);

/// The user making the request, as in `AdmissionRequest.userInfo`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// User UID.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The attributes of an admission request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// Request UID (sent as `request.uid`; webhooks must echo it).
    pub uid: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// API group of the resource (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind of the object.
    pub kind: String,
    /// Resource (plural), e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `status` (empty for the main resource).
    pub subresource: String,
    /// Object name (may be empty on create with generateName).
    pub name: String,
    /// Namespace (empty for cluster-scoped; a Namespace's own name for Namespaces).
    pub namespace: String,
    /// The new object (CREATE/UPDATE/CONNECT).
    pub object: Option<Value>,
    /// The old object (UPDATE/DELETE).
    pub old_object: Option<Value>,
    /// The requesting user.
    pub user: UserInfo,
    /// Whether this is a dry run.
    pub dry_run: bool,
    /// The operation options (e.g. `CreateOptions`), if any.
    pub options: Option<Value>,
}

/// What to do when calling a webhook fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Reject the request (the default).
    Fail,
    /// Ignore the webhook.
    Ignore,
}

/// A Service reference of a webhook's `clientConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRef {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// URL path (default `/`).
    pub path: String,
    /// Port (default 443).
    pub port: u16,
}

/// A webhook that matched a request.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedWebhook {
    /// Name of the configuration object it comes from.
    pub configuration: String,
    /// The webhook's name, e.g. `x.example.com`.
    pub name: String,
    /// Whether it is a mutating webhook.
    pub mutating: bool,
    /// `clientConfig.url`.
    pub url: Option<String>,
    /// `clientConfig.service`.
    pub service: Option<ServiceRef>,
    /// `clientConfig.caBundle`, decoded (PEM).
    pub ca_bundle: Vec<u8>,
    /// `failurePolicy` (default Fail).
    pub failure_policy: FailurePolicy,
    /// `timeoutSeconds` (default 10).
    pub timeout: Duration,
    /// `sideEffects`.
    pub side_effects: String,
    /// `reinvocationPolicy: IfNeeded`.
    pub reinvoke_if_needed: bool,
}

/// A webhook's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The decoded JSONPatch (an array of operations), if any.
    pub patch: Option<Value>,
    /// Warnings to pass to the client.
    pub warnings: Vec<String>,
    /// `status.code`, if set.
    pub status_code: Option<u16>,
    /// `status.message`.
    pub status_message: String,
    /// `status.reason`.
    pub status_reason: String,
    /// `auditAnnotations`.
    pub audit_annotations: BTreeMap<String, String>,
}

/// Why a webhook call failed (subject to the failure policy).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WebhookError {
    /// The HTTP call failed (connect, TLS, timeout, status).
    #[error(
        "failed calling webhook \"{webhook}\": failed to call webhook: Post \"{url}\": {reason}"
    )]
    Call {
        /// Webhook name.
        webhook: String,
        /// The URL posted to (with `?timeout=`).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The webhook answered something unusable.
    #[error("failed calling webhook \"{webhook}\": {reason}")]
    Response {
        /// Webhook name.
        webhook: String,
        /// What was wrong.
        reason: String,
    },
}

/// A rejected admission: HTTP status code, Status `reason` and message.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{message}")]
pub struct AdmissionDenied {
    /// HTTP code of the Status (403 for denials, 500 for failed calls, 400 for dry-run refusals).
    pub code: u16,
    /// The Status `reason` (`Forbidden`, `InternalError`, `BadRequest`, or the webhook's).
    pub reason: String,
    /// The Status message, e.g. `admission webhook "x" denied the request: no`.
    pub message: String,
}

// ------------------------------------------------------------- matching

fn strs(v: &Value) -> Vec<&str> {
    arr(v).iter().filter_map(Value::as_str).collect()
}

fn rule_matches(rule: &Value, req: &Request) -> bool {
    let ops = strs(&rule["operations"]);
    if !ops.iter().any(|o| *o == "*" || *o == req.operation) {
        return false;
    }
    if !strs(&rule["apiGroups"])
        .iter()
        .any(|g| *g == "*" || *g == req.group)
    {
        return false;
    }
    if !strs(&rule["apiVersions"])
        .iter()
        .any(|v| *v == "*" || *v == req.version)
    {
        return false;
    }
    let res_ok = strs(&rule["resources"]).iter().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        (res == "*" || res == req.resource) && (sub == "*" || sub == req.subresource)
    });
    if !res_ok {
        return false;
    }
    let is_namespace_object =
        req.group.is_empty() && req.resource == "namespaces" && req.subresource.is_empty();
    match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => is_namespace_object || req.namespace.is_empty(),
        "Namespaced" => !is_namespace_object && !req.namespace.is_empty(),
        _ => true,
    }
}

fn selector_matches(sel: &Value, labels: Option<&Value>) -> bool {
    if sel.is_null() {
        return true;
    }
    match LabelSelector::from_json(sel) {
        Ok(s) => s.matches_json(labels),
        Err(e) => {
            tracing::warn!(error = %e, "invalid webhook selector; not matching");
            false
        }
    }
}

fn labels_of(obj: &Option<Value>) -> Option<&Value> {
    obj.as_ref()
        .map(|o| &o["metadata"]["labels"])
        .filter(|l| !l.is_null())
}

fn namespace_selector_matches(
    sel: &Value,
    req: &Request,
    namespace_labels: Option<&Value>,
) -> bool {
    let is_namespace_object = req.group.is_empty() && req.resource == "namespaces";
    if req.namespace.is_empty() && !is_namespace_object {
        // cluster-scoped objects are not subject to namespaceSelector
        return true;
    }
    if is_namespace_object {
        let own = labels_of(&req.object).or_else(|| labels_of(&req.old_object));
        return selector_matches(sel, own);
    }
    selector_matches(sel, namespace_labels)
}

fn object_selector_matches(sel: &Value, req: &Request) -> bool {
    if sel.is_null() || sel.as_object().is_some_and(|m| m.is_empty()) {
        return true;
    }
    selector_matches(sel, labels_of(&req.object)) && req.object.is_some()
        || selector_matches(sel, labels_of(&req.old_object)) && req.old_object.is_some()
}

fn parse_webhook(config_name: &str, mutating: bool, w: &Value) -> MatchedWebhook {
    let cc = &w["clientConfig"];
    let service = cc["service"].as_object().map(|s| ServiceRef {
        namespace: s
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        name: s
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        path: s
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string(),
        port: s
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(443),
    });
    let ca_bundle = cc["caBundle"]
        .as_str()
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .unwrap_or_default();
    MatchedWebhook {
        configuration: config_name.to_string(),
        name: w["name"].as_str().unwrap_or_default().to_string(),
        mutating,
        url: cc["url"].as_str().map(str::to_string),
        service,
        ca_bundle,
        failure_policy: if w["failurePolicy"].as_str() == Some("Ignore") {
            FailurePolicy::Ignore
        } else {
            FailurePolicy::Fail
        },
        timeout: Duration::from_secs(w["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30)),
        side_effects: w["sideEffects"].as_str().unwrap_or("Unknown").to_string(),
        reinvoke_if_needed: w["reinvocationPolicy"].as_str() == Some("IfNeeded"),
    }
}

/// Whether requests on this resource are never sent to webhooks (webhook
/// configurations and admission policies themselves, as upstream).
pub fn is_exempt(req: &Request) -> bool {
    req.group == "admissionregistration.k8s.io"
        && matches!(
            req.resource.as_str(),
            "mutatingwebhookconfigurations"
                | "validatingwebhookconfigurations"
                | "validatingadmissionpolicies"
                | "validatingadmissionpolicybindings"
                | "mutatingadmissionpolicies"
                | "mutatingadmissionpolicybindings"
        )
}

/// The webhooks of `configs` (MutatingWebhookConfiguration and/or
/// ValidatingWebhookConfiguration objects) that apply to `req`, in upstream's
/// order: configurations sorted by name, webhooks in their listed order.
/// `namespace_labels` are the labels of the request's namespace (a JSON object).
pub fn matching(
    configs: &[Value],
    req: &Request,
    namespace_labels: Option<&Value>,
) -> Vec<MatchedWebhook> {
    if is_exempt(req) {
        return Vec::new();
    }
    let mut sorted: Vec<&Value> = configs.iter().collect();
    sorted.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let mut out = Vec::new();
    for cfg in sorted {
        let mutating = cfg["kind"].as_str() == Some("MutatingWebhookConfiguration");
        let cname = cfg["metadata"]["name"].as_str().unwrap_or_default();
        for w in arr(&cfg["webhooks"]) {
            if !arr(&w["rules"]).iter().any(|r| rule_matches(r, req)) {
                continue;
            }
            if !namespace_selector_matches(&w["namespaceSelector"], req, namespace_labels) {
                continue;
            }
            if !object_selector_matches(&w["objectSelector"], req) {
                continue;
            }
            out.push(parse_webhook(cname, mutating, w));
        }
    }
    out
}

// ------------------------------------------------------------- calling

/// The AdmissionReview v1 request body for `req`.
pub fn admission_review(req: &Request) -> Value {
    let gvk = json!({"group": req.group, "version": req.version, "kind": req.kind});
    let gvr = json!({"group": req.group, "version": req.version, "resource": req.resource});
    let mut r = json!({
        "uid": req.uid,
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": req.name,
        "namespace": req.namespace,
        "operation": req.operation,
        "userInfo": {"username": req.user.username, "uid": req.user.uid, "groups": req.user.groups, "extra": req.user.extra},
        "object": req.object,
        "oldObject": req.old_object,
        "dryRun": req.dry_run,
        "options": req.options,
    });
    if !req.subresource.is_empty() {
        r["subResource"] = json!(req.subresource);
        r["requestSubResource"] = json!(req.subresource);
    }
    if req.namespace.is_empty() {
        if let Some(m) = r.as_object_mut() {
            m.remove("namespace");
        }
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": r})
}

struct Target {
    /// URL shown in errors (with `?timeout=`).
    url: String,
    host: String,
    port: u16,
    path_and_query: String,
    server_name: String,
    /// Address from the service resolver, if a Service.
    addr: Option<SocketAddr>,
}

fn timeout_param(t: Duration) -> String {
    format!("timeout={}s", t.as_secs())
}

fn target(hook: &MatchedWebhook, resolve: ServiceResolver<'_>) -> Result<Target, WebhookError> {
    let resp_err = |reason: String| WebhookError::Response {
        webhook: hook.name.clone(),
        reason,
    };
    if let Some(svc) = &hook.service {
        let host = format!("{}.{}.svc", svc.name, svc.namespace);
        let path = if svc.path.starts_with('/') {
            svc.path.clone()
        } else {
            format!("/{}", svc.path)
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let pq = format!("{path}{sep}{}", timeout_param(hook.timeout));
        let url = format!("https://{host}:{}{pq}", svc.port);
        let addr = resolve(&svc.namespace, &svc.name, svc.port);
        if addr.is_none() {
            return Err(WebhookError::Call {
                webhook: hook.name.clone(),
                url,
                reason: format!("service \"{}\" not found", svc.name),
            });
        }
        return Ok(Target {
            url,
            host: host.clone(),
            port: svc.port,
            path_and_query: pq,
            server_name: host,
            addr,
        });
    }
    let Some(raw) = &hook.url else {
        return Err(resp_err(
            "webhook has no clientConfig url or service".into(),
        ));
    };
    let Some(rest) = raw.strip_prefix("https://") else {
        return Err(resp_err(format!("webhook url {raw:?} must use https")));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let tail = if tail.is_empty() {
        "/".to_string()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_string()
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| resp_err(format!("bad webhook url {raw:?}")))?;
        let port = after
            .strip_prefix(':')
            .map(|p| p.parse::<u16>())
            .transpose()
            .map_err(|_| resp_err(format!("bad webhook url {raw:?}")))?;
        (h.to_string(), port.unwrap_or(443))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| resp_err(format!("bad webhook url {raw:?}")))?,
            ),
            None => (authority.to_string(), 443),
        }
    };
    let sep = if tail.contains('?') { '&' } else { '?' };
    let pq = format!("{tail}{sep}{}", timeout_param(hook.timeout));
    let url = format!("https://{authority}{pq}");
    Ok(Target {
        url,
        server_name: host.clone(),
        host,
        port,
        path_and_query: pq,
        addr: None,
    })
}

fn tls_config(ca_bundle: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem: Vec<u8> = if ca_bundle.is_empty() {
        std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default()
    } else {
        ca_bundle.to_vec()
    };
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("invalid caBundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn io_reason(addr: SocketAddr, e: &std::io::Error) -> String {
    let what = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        std::io::ErrorKind::ConnectionReset => "connection reset by peer".to_string(),
        _ => e.to_string(),
    };
    format!("dial tcp {addr}: connect: {what}")
}

async fn post(t: &Target, ca_bundle: &[u8], body: Vec<u8>) -> Result<(u16, Bytes), String> {
    let addr = match t.addr {
        Some(a) => a,
        None => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("dial tcp: lookup {}: {e}", t.host))?
            .next()
            .ok_or_else(|| format!("dial tcp: lookup {}: no such host", t.host))?,
    };
    let cfg = tls_config(ca_bundle)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| io_reason(addr, &e))?;
    let server_name = ServerName::try_from(t.server_name.clone())
        .map_err(|e| format!("invalid server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection closed");
        }
    });
    let host_header = if t.port == 443 {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let request = http::Request::post(t.path_and_query.as_str())
        .header(http::header::HOST, host_header)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

fn parse_response(
    hook: &MatchedWebhook,
    req: &Request,
    body: &[u8],
) -> Result<Response, WebhookError> {
    let err = |reason: String| WebhookError::Response {
        webhook: hook.name.clone(),
        reason,
    };
    let review: Value = serde_json::from_slice(body)
        .map_err(|e| err(format!("failed to decode AdmissionReview: {e}")))?;
    let r = &review["response"];
    if !r.is_object() {
        return Err(err("webhook response was absent".into()));
    }
    let uid = r["uid"].as_str().unwrap_or_default();
    if uid != req.uid {
        return Err(err(format!(
            "expected response.uid=\"{}\", got \"{uid}\"",
            req.uid
        )));
    }
    let mut out = Response {
        allowed: r["allowed"].as_bool().unwrap_or(false),
        warnings: strs(&r["warnings"])
            .into_iter()
            .map(str::to_string)
            .collect(),
        status_code: r["status"]["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok()),
        status_message: r["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        status_reason: r["status"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        audit_annotations: r["auditAnnotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        patch: None,
    };
    if let Some(p) = r["patch"].as_str().filter(|p| !p.is_empty()) {
        match r["patchType"].as_str() {
            Some("JSONPatch") => {}
            Some(other) => return Err(err(format!("unsupported patch type {other:?}"))),
            None => {
                return Err(err(
                    "webhook returned response.patch but not response.patchType".into(),
                ))
            }
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(p)
            .map_err(|e| err(format!("invalid patch encoding: {e}")))?;
        let patch: Value =
            serde_json::from_slice(&raw).map_err(|e| err(format!("invalid JSON patch: {e}")))?;
        out.patch = Some(patch);
    }
    Ok(out)
}

/// Calls one webhook with `req` and returns its answer. Honors the webhook's
/// timeout; the request goes to `clientConfig.url`, or to the Service's address
/// given by `resolve` with TLS server name `<service>.<namespace>.svc`.
pub async fn call(
    hook: &MatchedWebhook,
    req: &Request,
    resolve: ServiceResolver<'_>,
) -> Result<Response, WebhookError> {
    let body = serde_json::to_vec(&admission_review(req)).map_err(|e| WebhookError::Response {
        webhook: hook.name.clone(),
        reason: e.to_string(),
    })?;
    let bytes = post_to(hook, body, resolve).await?;
    parse_response(hook, req, &bytes)
}

/// Posts `body` to `hook` within its timeout; the answer's body when it is a 2xx.
async fn post_to(
    hook: &MatchedWebhook,
    body: Vec<u8>,
    resolve: ServiceResolver<'_>,
) -> Result<Bytes, WebhookError> {
    let t = target(hook, resolve)?;
    let call_err = |reason: String| WebhookError::Call {
        webhook: hook.name.clone(),
        url: t.url.clone(),
        reason,
    };
    let (status, bytes) =
        match tokio::time::timeout(hook.timeout, post(&t, &hook.ca_bundle, body)).await {
            Err(_) => return Err(call_err("context deadline exceeded".into())),
            Ok(Err(reason)) => return Err(call_err(reason)),
            Ok(Ok(r)) => r,
        };
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&bytes);
        return Err(WebhookError::Response {
            webhook: hook.name.clone(),
            reason: format!("an error on the server (\"{}\") has prevented the request from succeeding (status {status})", text.trim()),
        });
    }
    Ok(bytes)
}

/// Posts `body` (a review object: `ConversionReview`, ...) to the webhook with
/// client config `client_config` (the JSON of a `WebhookClientConfig`: `url` or
/// `service`, `caBundle`) and returns the answer's body: the transport admission
/// webhooks use, for the API server's other webhooks (CRD conversion). `name` is the
/// webhook's name in errors.
pub async fn post_review(
    name: &str,
    client_config: &Value,
    timeout: Duration,
    body: Vec<u8>,
    resolve: ServiceResolver<'_>,
) -> Result<Bytes, WebhookError> {
    let mut hook = parse_webhook("", false, &json!({"clientConfig": client_config}));
    hook.name = name.to_string();
    hook.timeout = timeout;
    post_to(&hook, body, resolve).await
}

// ------------------------------------------------------------- phases

fn denied(hook: &MatchedWebhook, r: &Response) -> AdmissionDenied {
    let by = format!("admission webhook \"{}\" denied the request", hook.name);
    let message = if !r.status_message.is_empty() {
        format!("{by}: {}", r.status_message)
    } else if !r.status_reason.is_empty() {
        format!("{by}: {}", r.status_reason)
    } else {
        format!("{by} without explanation")
    };
    let code = r.status_code.filter(|c| *c >= 400).unwrap_or(403);
    let reason = if r.status_reason.is_empty() {
        "Forbidden".to_string()
    } else {
        r.status_reason.clone()
    };
    AdmissionDenied {
        code,
        reason,
        message,
    }
}

fn internal(e: &WebhookError) -> AdmissionDenied {
    AdmissionDenied {
        code: 500,
        reason: "InternalError".into(),
        message: format!("Internal error occurred: {e}"),
    }
}

fn dry_run_refusal(hook: &MatchedWebhook, req: &Request) -> Option<AdmissionDenied> {
    if req.dry_run && !matches!(hook.side_effects.as_str(), "None" | "NoneOnDryRun") {
        return Some(AdmissionDenied {
            code: 400,
            reason: "BadRequest".into(),
            message: format!(
                "admission webhook \"{}\" does not support dry run",
                hook.name
            ),
        });
    }
    None
}

/// Outcome of one webhook within a phase: `Ok(Some(resp))` answered,
/// `Ok(None)` failed but ignored.
async fn invoke(
    hook: &MatchedWebhook,
    req: &Request,
    resolve: ServiceResolver<'_>,
) -> Result<Option<Response>, AdmissionDenied> {
    if let Some(d) = dry_run_refusal(hook, req) {
        return Err(d);
    }
    match call(hook, req, resolve).await {
        Ok(r) if r.allowed => Ok(Some(r)),
        Ok(r) => Err(denied(hook, &r)),
        Err(e) => match hook.failure_policy {
            FailurePolicy::Ignore => {
                tracing::warn!(webhook = %hook.name, error = %e, "failed calling webhook, failing open");
                Ok(None)
            }
            FailurePolicy::Fail => Err(internal(&e)),
        },
    }
}

fn apply_patch(hook: &MatchedWebhook, obj: &mut Value, patch: &Value) -> Result<(), WebhookError> {
    let err = |reason: String| WebhookError::Response {
        webhook: hook.name.clone(),
        reason,
    };
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| err(format!("invalid JSON patch: {e}")))?;
    let mut patched = obj.clone();
    json_patch::patch(&mut patched, &p.0)
        .map_err(|e| err(format!("JSON patch could not be applied: {e}")))?;
    *obj = patched;
    Ok(())
}

/// Runs the mutating webhooks of `configs` that match `req` in order, applying
/// their JSONPatches to the object; webhooks with `reinvocationPolicy: IfNeeded`
/// are called once more when a later webhook changed the object. Returns the
/// (possibly mutated) object and the warnings, or the rejection.
pub async fn run_mutating(
    configs: &[Value],
    req: &Request,
    namespace_labels: Option<&Value>,
    resolve: ServiceResolver<'_>,
) -> Result<(Option<Value>, Vec<String>), AdmissionDenied> {
    let hooks: Vec<MatchedWebhook> = matching(configs, req, namespace_labels)
        .into_iter()
        .filter(|h| h.mutating)
        .collect();
    let mut req = req.clone();
    let mut warnings = Vec::new();
    // index of each reinvocable webhook called, and the mutation count at that time
    let mut called: Vec<(usize, usize)> = Vec::new();
    let mut mutations = 0usize;
    let run_one = |i: usize,
                   req: &mut Request,
                   warnings: &mut Vec<String>,
                   resp: Option<Response>|
     -> Result<bool, AdmissionDenied> {
        let hook = &hooks[i];
        let Some(resp) = resp else { return Ok(false) };
        warnings.extend(resp.warnings.iter().cloned());
        let Some(patch) = &resp.patch else {
            return Ok(false);
        };
        let Some(obj) = req.object.as_mut() else {
            return Ok(false);
        };
        let before = obj.clone();
        match apply_patch(hook, obj, patch) {
            Ok(()) => Ok(*obj != before),
            Err(e) => match hook.failure_policy {
                FailurePolicy::Ignore => Ok(false),
                FailurePolicy::Fail => Err(internal(&e)),
            },
        }
    };
    for (i, hook) in hooks.iter().enumerate() {
        let resp = invoke(hook, &req, resolve).await?;
        if hook.reinvoke_if_needed {
            called.push((i, mutations));
        }
        if run_one(i, &mut req, &mut warnings, resp)? {
            mutations += 1;
        }
    }
    for (i, seen) in called {
        if mutations > seen {
            tracing::debug!(webhook = %hooks[i].name, "reinvoking webhook");
            let resp = invoke(&hooks[i], &req, resolve).await?;
            run_one(i, &mut req, &mut warnings, resp)?;
        }
    }
    Ok((req.object, warnings))
}

/// Runs the validating webhooks of `configs` that match `req` in parallel.
/// Returns the warnings, or the first rejection in webhook order.
pub async fn run_validating(
    configs: &[Value],
    req: &Request,
    namespace_labels: Option<&Value>,
    resolve: ServiceResolver<'_>,
) -> Result<Vec<String>, AdmissionDenied> {
    let hooks: Vec<MatchedWebhook> = matching(configs, req, namespace_labels)
        .into_iter()
        .filter(|h| !h.mutating)
        .collect();
    let results =
        futures_util::future::join_all(hooks.iter().map(|h| invoke(h, req, resolve))).await;
    let mut warnings = Vec::new();
    for r in results {
        if let Some(resp) = r? {
            warnings.extend(resp.warnings);
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn pod_request(op: &str) -> Request {
        Request {
            uid: "req-1".into(),
            operation: op.into(),
            version: "v1".into(),
            kind: "Pod".into(),
            resource: "pods".into(),
            name: "p".into(),
            namespace: "default".into(),
            object: Some(
                json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": {}}),
            ),
            user: UserInfo {
                username: "alice".into(),
                groups: vec!["system:authenticated".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn config(kind: &str, name: &str, webhooks: Value) -> Value {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "webhooks": webhooks})
    }

    fn hook(name: &str, rules: Value) -> Value {
        json!({"name": name, "clientConfig": {"url": "https://127.0.0.1:1/"}, "rules": rules, "sideEffects": "None",
               "admissionReviewVersions": ["v1"]})
    }

    fn names(hooks: &[MatchedWebhook]) -> Vec<&str> {
        hooks.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn rules_match_operations_resources_and_scope() {
        let cfg = config(
            "ValidatingWebhookConfiguration",
            "v",
            json!([
                hook(
                    "create-pods",
                    json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}])
                ),
                hook(
                    "all",
                    json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]}])
                ),
                hook(
                    "star-no-sub",
                    json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}])
                ),
                hook(
                    "pods-status",
                    json!([{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/status"]}])
                ),
                hook(
                    "pods-any-sub",
                    json!([{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/*"]}])
                ),
                hook(
                    "cluster-only",
                    json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}])
                ),
                hook(
                    "apps",
                    json!([{"operations": ["*"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["*"]}])
                ),
            ]),
        );
        let configs = [cfg];
        let create = pod_request("CREATE");
        assert_eq!(
            names(&matching(&configs, &create, None)),
            vec!["create-pods", "all", "star-no-sub"]
        );
        let mut status = pod_request("UPDATE");
        status.subresource = "status".into();
        assert_eq!(
            names(&matching(&configs, &status, None)),
            vec!["all", "pods-status", "pods-any-sub"]
        );
        let update = pod_request("UPDATE");
        assert_eq!(
            names(&matching(&configs, &update, None)),
            vec!["all", "star-no-sub", "pods-any-sub"]
        );
        let ns = Request {
            operation: "CREATE".into(),
            version: "v1".into(),
            kind: "Namespace".into(),
            resource: "namespaces".into(),
            name: "team".into(),
            namespace: "team".into(),
            ..Default::default()
        };
        assert_eq!(
            names(&matching(&configs, &ns, None)),
            vec!["all", "star-no-sub", "cluster-only"]
        );
        // webhook configurations themselves are never intercepted
        let exempt = Request {
            operation: "CREATE".into(),
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            resource: "validatingwebhookconfigurations".into(),
            ..Default::default()
        };
        assert!(matching(&configs, &exempt, None).is_empty());
    }

    #[test]
    fn selectors_and_defaults() {
        let mut w = hook(
            "sel",
            json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]),
        );
        w["namespaceSelector"] = json!({"matchLabels": {"env": "prod"}});
        w["objectSelector"] =
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]});
        w["failurePolicy"] = json!("Ignore");
        w["timeoutSeconds"] = json!(3);
        let configs = [config("MutatingWebhookConfiguration", "m", json!([w]))];
        let req = pod_request("CREATE");
        assert!(matching(&configs, &req, Some(&json!({"env": "dev"}))).is_empty());
        assert!(matching(&configs, &req, None).is_empty());
        let m = matching(&configs, &req, Some(&json!({"env": "prod"})));
        assert_eq!(names(&m), vec!["sel"]);
        assert!(m[0].mutating);
        assert_eq!(m[0].failure_policy, FailurePolicy::Ignore);
        assert_eq!(m[0].timeout, Duration::from_secs(3));
        let mut other = req.clone();
        other.object = Some(json!({"metadata": {"labels": {"app": "db"}}}));
        assert!(matching(&configs, &other, Some(&json!({"env": "prod"}))).is_empty());
        // cluster-scoped objects ignore namespaceSelector
        let mut cluster = req.clone();
        cluster.namespace = String::new();
        assert_eq!(matching(&configs, &cluster, Some(&json!({}))).len(), 1);
        // defaults
        let plain = [config(
            "ValidatingWebhookConfiguration",
            "v",
            json!([hook(
                "d",
                json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}])
            )]),
        )];
        let d = &matching(&plain, &req, None)[0];
        assert_eq!(
            (d.failure_policy, d.timeout, d.mutating),
            (FailurePolicy::Fail, Duration::from_secs(10), false)
        );
    }

    // ---- end-to-end against a local HTTPS webhook server

    struct Server {
        addr: SocketAddr,
        ca_b64: String,
    }

    fn answer(path: &str, review: &Value) -> Value {
        let uid = review["request"]["uid"].clone();
        match path {
            "/mutate" => {
                let patch =
                    json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}]);
                let b64 = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
                json!({"response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": b64, "warnings": ["mutated it"]}})
            }
            "/mutate-again" => {
                // adds a label counting how many times the object was seen with "mutated"
                let seen = review["request"]["object"]["metadata"]["labels"]["mutated"].is_string();
                let patch = json!([{"op": "add", "path": "/metadata/labels/second", "value": if seen { "saw-first" } else { "before-first" }}]);
                let b64 = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
                json!({"response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": b64}})
            }
            "/deny" => {
                json!({"response": {"uid": uid, "allowed": false, "status": {"code": 403, "message": "pods named p are not welcome"}}})
            }
            "/echo-user" => {
                let user = review["request"]["userInfo"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                json!({"response": {"uid": uid, "allowed": true, "warnings": [format!("user {user} op {}", review["request"]["operation"].as_str().unwrap_or_default())]}})
            }
            _ => json!({"response": {"uid": "wrong", "allowed": true}}),
        }
    }

    async fn start_server() -> Server {
        let ck = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "hooks.default.svc".to_string(),
        ])
        .expect("generate certificate");
        let cert_der = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key)
            .expect("server cert");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let query = req.uri().query().unwrap_or_default().to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        let mut out = answer(&path, &review);
                        if !query.starts_with("timeout=") {
                            out = json!({"response": {"uid": review["request"]["uid"], "allowed": false, "status": {"message": "no timeout param"}}});
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(out.to_string()),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Server {
            addr,
            ca_b64: base64::engine::general_purpose::STANDARD.encode(ck.cert.pem()),
        }
    }

    fn url_hook(server: &Server, name: &str, path: &str) -> Value {
        json!({"name": name, "clientConfig": {"url": format!("https://{}{path}", server.addr), "caBundle": server.ca_b64},
               "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
               "sideEffects": "None", "admissionReviewVersions": ["v1"]})
    }

    fn no_services(_: &str, _: &str, _: u16) -> Option<SocketAddr> {
        None
    }

    #[tokio::test]
    async fn mutating_webhook_patches_object() {
        let server = start_server().await;
        let configs = [config(
            "MutatingWebhookConfiguration",
            "m",
            json!([url_hook(&server, "label.example.com", "/mutate")]),
        )];
        let (obj, warnings) = run_mutating(&configs, &pod_request("CREATE"), None, &no_services)
            .await
            .expect("allowed");
        let obj = obj.expect("object");
        assert_eq!(obj["metadata"]["labels"]["mutated"], "yes");
        assert_eq!(obj["metadata"]["labels"]["app"], "web");
        assert_eq!(warnings, vec!["mutated it".to_string()]);
    }

    #[tokio::test]
    async fn service_reference_uses_svc_server_name() {
        let server = start_server().await;
        let addr = server.addr;
        let resolve = move |ns: &str, name: &str, port: u16| {
            (ns == "default" && name == "hooks" && port == 8443).then_some(addr)
        };
        let mut w = url_hook(&server, "svc.example.com", "");
        w["clientConfig"] = json!({"service": {"namespace": "default", "name": "hooks", "path": "/echo-user", "port": 8443}, "caBundle": server.ca_b64});
        let configs = [config("ValidatingWebhookConfiguration", "v", json!([w]))];
        let warnings = run_validating(&configs, &pod_request("CREATE"), None, &resolve)
            .await
            .expect("allowed");
        assert_eq!(warnings, vec!["user alice op CREATE".to_string()]);
    }

    #[tokio::test]
    async fn validating_denial_message() {
        let server = start_server().await;
        let configs = [config(
            "ValidatingWebhookConfiguration",
            "v",
            json!([
                url_hook(&server, "ok.example.com", "/echo-user"),
                url_hook(&server, "x.example.com", "/deny"),
            ]),
        )];
        let err = run_validating(&configs, &pod_request("CREATE"), None, &no_services)
            .await
            .unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "admission webhook \"x.example.com\" denied the request: pods named p are not welcome"
        );
    }

    #[tokio::test]
    async fn dead_url_fail_and_ignore() {
        // a port nothing listens on
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = dead.local_addr().expect("addr").port();
        drop(dead);
        let mut w = json!({"name": "dead.example.com", "clientConfig": {"url": format!("https://127.0.0.1:{port}/x")},
            "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}], "sideEffects": "None"});
        let configs = [config(
            "ValidatingWebhookConfiguration",
            "v",
            json!([w.clone()]),
        )];
        let err = run_validating(&configs, &pod_request("CREATE"), None, &no_services)
            .await
            .unwrap_err();
        assert_eq!(err.code, 500);
        assert_eq!(
            err.message,
            format!("Internal error occurred: failed calling webhook \"dead.example.com\": failed to call webhook: Post \"https://127.0.0.1:{port}/x?timeout=10s\": dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
        w["failurePolicy"] = json!("Ignore");
        let configs = [config("MutatingWebhookConfiguration", "m", json!([w]))];
        let req = pod_request("CREATE");
        let (obj, warnings) = run_mutating(&configs, &req, None, &no_services)
            .await
            .expect("ignored");
        assert_eq!(obj, req.object);
        assert!(warnings.is_empty());
    }

    #[tokio::test]
    async fn timeout_is_enforced() {
        let server = start_server().await;
        let mut w = url_hook(&server, "slow.example.com", "/slow");
        w["timeoutSeconds"] = json!(1);
        let configs = [config("ValidatingWebhookConfiguration", "v", json!([w]))];
        let started = std::time::Instant::now();
        let err = run_validating(&configs, &pod_request("CREATE"), None, &no_services)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(
            err.message,
            format!("Internal error occurred: failed calling webhook \"slow.example.com\": failed to call webhook: Post \"https://{}/slow?timeout=1s\": context deadline exceeded", server.addr)
        );
    }

    #[tokio::test]
    async fn reinvocation_and_bad_uid_and_dry_run() {
        let server = start_server().await;
        let mut first = url_hook(&server, "a.example.com", "/mutate-again");
        first["reinvocationPolicy"] = json!("IfNeeded");
        let configs = [config(
            "MutatingWebhookConfiguration",
            "m",
            json!([first, url_hook(&server, "b.example.com", "/mutate")]),
        )];
        let (obj, _) = run_mutating(&configs, &pod_request("CREATE"), None, &no_services)
            .await
            .expect("allowed");
        // a ran before b, then again after b's change
        assert_eq!(
            obj.expect("object")["metadata"]["labels"]["second"],
            "saw-first"
        );

        let configs = [config(
            "ValidatingWebhookConfiguration",
            "v",
            json!([url_hook(&server, "uid.example.com", "/wrong-uid")]),
        )];
        let err = run_validating(&configs, &pod_request("CREATE"), None, &no_services)
            .await
            .unwrap_err();
        assert_eq!(err.message, "Internal error occurred: failed calling webhook \"uid.example.com\": expected response.uid=\"req-1\", got \"wrong\"");

        let mut w = url_hook(&server, "fx.example.com", "/echo-user");
        w["sideEffects"] = json!("Some");
        let configs = [config("ValidatingWebhookConfiguration", "v", json!([w]))];
        let mut req = pod_request("CREATE");
        req.dry_run = true;
        let err = run_validating(&configs, &req, None, &no_services)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (
                400,
                "admission webhook \"fx.example.com\" does not support dry run"
            )
        );
    }
}
