//! Subresources served by the kubelets: `pods/log` and `nodes/proxy`.
//!
//! The API server finds the pod's node, the node's address (InternalIP, else
//! ExternalIP, else Hostname) and kubelet port (`status.daemonEndpoints.kubeletEndpoint`,
//! 10250 by default), and makes an HTTPS GET to the kubelet with its own client
//! certificate (`kube-apiserver-kubelet-client`), checking the kubelet's serving
//! certificate against the cluster CA. The kubelet's body is streamed back as it comes
//! (so `kubectl logs -f` is a long-lived chunked response); a kubelet error becomes a
//! `Status` with the kubelet's code and message, as upstream.
//!
//! `pods/exec`, `pods/attach` and `pods/portforward` (connect verbs, GET or POST with
//! `Upgrade: SPDY/3.1` or `Upgrade: websocket`) are proxied as raw upgraded connections
//! to the kubelet's `/exec`, `/attach` and `/portForward` endpoints: the upgrade headers
//! go to the kubelet, its `101 Switching Protocols` comes back to the client, and then
//! bytes are copied both ways. The client's `OnUpgrade` is taken from the request
//! extensions, which `handle_incoming` keeps in `parts` (upgrade requests have no body,
//! so collecting it first is harmless).
//!
//! Not yet: `pods/proxy`, `services/proxy`, and non-GET methods on `nodes/proxy`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rk3s_api::ApiError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::body::{self, Response, ResponseBody};
use crate::handler::Inner;
use crate::request::{Query, RequestInfo};
use crate::ApiServerError;

/// The kubelet port when a Node does not say.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// TLS material the API server uses towards kubelets.
#[derive(Clone)]
pub struct KubeletClientConfig {
    /// Client certificate (PEM), e.g. CN `kube-apiserver-kubelet-client`, O `system:masters`.
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    /// The CA that signs kubelet serving certificates (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for KubeletClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClientConfig").finish_non_exhaustive()
    }
}

/// A client of kubelet APIs (HTTPS with a client certificate).
#[derive(Clone)]
pub struct KubeletClient {
    tls: tokio_rustls::TlsConnector,
}

impl KubeletClient {
    /// Builds the TLS client configuration.
    pub fn new(cfg: &KubeletClientConfig) -> Result<KubeletClient, ApiServerError> {
        let tls = |e: &dyn std::fmt::Display| ApiServerError::Tls(format!("kubelet client: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(cfg.ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cfg.cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| tls(&e))?;
        let key = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes()).map_err(|e| tls(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls(&e))?;
        Ok(KubeletClient { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    /// GETs `path_and_query` from the kubelet at `host:port` and streams the answer back.
    pub async fn get(&self, host: &str, port: u16, path_and_query: &str) -> Result<Response, ApiError> {
        let url = format!("https://{}/{}", host_port(host, port), path_and_query.trim_start_matches('/'));
        let fail = |e: &dyn std::fmt::Display| ApiError::internal(format!("Get \"{url}\": {e}"));
        let connect = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host, port)));
        let tcp = match connect.await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(fail(&format!("dial tcp {}: connect: {e}", host_port(host, port)))),
            Err(_) => return Err(fail(&format!("dial tcp {}: i/o timeout", host_port(host, port)))),
        };
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?,
        };
        let stream = self.tls.connect(name, tcp).await.map_err(|e| fail(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| fail(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "kubelet connection ended");
            }
        });
        let req = http::Request::get(format!("/{}", path_and_query.trim_start_matches('/')))
            .header(http::header::HOST, host_port(host, port))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
        let (parts, mut incoming) = resp.into_parts();
        let code = parts.status.as_u16();
        if !(200..300).contains(&code) {
            let collected = tokio::time::timeout(Duration::from_secs(30), incoming.collect()).await;
            let text = match collected {
                Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
                _ => String::new(),
            };
            return Err(kubelet_error(code, text));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            while let Some(frame) = incoming.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    if tx.send(data).await.is_err() {
                        // The client went away: dropping `incoming` closes the connection.
                        break;
                    }
                }
            }
        });
        let mut r = http::Response::new(ResponseBody::Stream(rx));
        *r.status_mut() = parts.status;
        if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, ct.clone());
        }
        Ok(r)
    }
}

/// Request headers that carry an upgrade negotiation (SPDY or WebSocket) to the kubelet.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "origin",
];

impl KubeletClient {
    /// Sends an upgrade request (`method`, the upgrade headers of `headers`) to the
    /// kubelet's `path_and_query`. When the kubelet switches protocols, answers the
    /// client with its 101 and joins `client` (the client's pending upgrade) with the
    /// kubelet connection; any other answer becomes an error `Status`.
    pub async fn upgrade(
        &self,
        host: &str,
        port: u16,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        client: hyper::upgrade::OnUpgrade,
    ) -> Result<Response, ApiError> {
        let url = format!("https://{}/{}", host_port(host, port), path_and_query.trim_start_matches('/'));
        let fail = |e: &dyn std::fmt::Display| ApiError::internal(format!("error dialing backend: {e}"));
        let connect = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host, port)));
        let tcp = match connect.await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(fail(&format!("dial tcp {}: connect: {e}", host_port(host, port)))),
            Err(_) => return Err(fail(&format!("dial tcp {}: i/o timeout", host_port(host, port)))),
        };
        let _ = tcp.set_nodelay(true);
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?,
        };
        let stream = self.tls.connect(name, tcp).await.map_err(|e| fail(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| fail(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "kubelet stream connection ended");
            }
        });
        let mut b = http::Request::builder()
            .method(method.clone())
            .uri(format!("/{}", path_and_query.trim_start_matches('/')))
            .header(http::header::HOST, host_port(host, port));
        for h in UPGRADE_HEADERS {
            for v in headers.get_all(*h) {
                b = b.header(*h, v.clone());
            }
        }
        let req = b.body(http_body_util::Empty::<Bytes>::new()).map_err(|e| fail(&e))?;
        let mut resp = send.send_request(req).await.map_err(|e| ApiError::internal(format!("{url}: {e}")))?;
        let status = resp.status();
        if status != http::StatusCode::SWITCHING_PROTOCOLS {
            let collected = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect()).await;
            let text = match collected {
                Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
                _ => String::new(),
            };
            return Err(kubelet_error(status.as_u16(), text));
        }
        let backend = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (c, k) = match (client.await, backend.await) {
                (Ok(c), Ok(k)) => (c, k),
                (c, k) => {
                    tracing::debug!(client = c.is_ok(), kubelet = k.is_ok(), "stream upgrade failed");
                    return;
                }
            };
            let mut c = hyper_util::rt::TokioIo::new(c);
            let mut k = hyper_util::rt::TokioIo::new(k);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut k).await {
                tracing::debug!(error = %e, "stream ended");
            }
        });
        let mut out = http::Response::new(ResponseBody::Full(None));
        *out.status_mut() = status;
        for (k, v) in resp.headers() {
            if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
                out.headers_mut().append(k.clone(), v.clone());
            }
        }
        Ok(out)
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A kubelet's error answer as an API error (upstream's generic server response).
fn kubelet_error(code: u16, message: String) -> ApiError {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    let message = if message.is_empty() { format!("the kubelet answered {code}") } else { message };
    ApiError::new(code, reason, message)
}

/// The address and kubelet port of a Node object.
pub fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node.pointer("/status/addresses").and_then(|a| a.as_array())?;
    let find = |t: &str| {
        addrs
            .iter()
            .find(|a| a.get("type").and_then(|x| x.as_str()) == Some(t))
            .and_then(|a| a.get("address").and_then(|x| x.as_str()))
            .filter(|s| !s.is_empty())
    };
    let host = find("InternalIP").or_else(|| find("ExternalIP")).or_else(|| find("Hostname"))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(|p| p.as_u64())
        .filter(|p| *p > 0 && *p <= u16::MAX as u64)
        .map(|p| p as u16)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host.to_string(), port))
}

fn names(pod: &Value, key: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{key}"))
        .and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(String::from)).collect())
        .unwrap_or_default()
}

/// Picks the container of a `pods/log` request as upstream: the one asked for (which
/// must exist), else the only container, else the `kubectl.kubernetes.io/default-container`
/// annotation's; otherwise a 400 listing the choices.
pub fn choose_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let pod_name = pod.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
    let containers = names(pod, "containers");
    let inits = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    if let Some(c) = asked {
        if containers.iter().chain(&inits).chain(&ephemeral).any(|n| n == c) {
            return Ok(c.to_string());
        }
        return Err(ApiError::bad_request(format!("container {c} is not valid for pod {pod_name}")));
    }
    if containers.len() == 1 {
        return Ok(containers[0].clone());
    }
    if let Some(d) = pod.pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container").and_then(|d| d.as_str()) {
        if containers.iter().any(|n| n == d) {
            return Ok(d.to_string());
        }
    }
    let mut msg = format!("a container name must be specified for pod {pod_name}, choose one of: [{}]", containers.join(" "));
    if !inits.is_empty() {
        msg.push_str(&format!(" or one of the init containers: [{}]", inits.join(" ")));
    }
    if !ephemeral.is_empty() {
        msg.push_str(&format!(" or one of the ephemeral containers: [{}]", ephemeral.join(" ")));
    }
    Err(ApiError::bad_request(msg))
}

/// Checks from the pod status that the container has logs to show, with upstream's
/// kubelet messages (`... is waiting to start: ContainerCreating`, `previous terminated
/// container ... not found`).
pub fn check_log_status(pod: &Value, container: &str, previous: bool) -> Result<(), ApiError> {
    let pod_name = pod.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
    let status = ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"].iter().find_map(|k| {
        pod.pointer(&format!("/status/{k}"))
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().find(|s| s.get("name").and_then(|n| n.as_str()) == Some(container)))
    });
    let bad = |m: String| Err(ApiError::bad_request(m));
    let Some(st) = status else {
        // The kubelet reports a container it has not started yet as ContainerCreating.
        return bad(format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start: ContainerCreating"));
    };
    let last_terminated = st.pointer("/lastState/terminated");
    if previous {
        if last_terminated.is_none() {
            return bad(format!("previous terminated container \"{container}\" in pod \"{pod_name}\" not found"));
        }
        return Ok(());
    }
    if st.pointer("/state/running").is_some() || st.pointer("/state/terminated").is_some() || last_terminated.is_some() {
        return Ok(());
    }
    if let Some(w) = st.pointer("/state/waiting") {
        let reason = w.get("reason").and_then(|r| r.as_str()).unwrap_or("");
        let what = match reason {
            "ErrImagePull" => "image can't be pulled".to_string(),
            "ImagePullBackOff" => "trying and failing to pull image".to_string(),
            r => r.to_string(),
        };
        return bad(format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start: {what}"));
    }
    bad(format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start - no logs yet"))
}

/// The kubelet query of a `pods/log` request (only the options the kubelet knows).
pub fn log_query(query: &Query) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for k in ["follow", "previous", "timestamps"] {
        if query.flag(k) {
            q.append_pair(k, "true");
        }
    }
    for k in ["tailLines", "sinceSeconds", "sinceTime", "limitBytes"] {
        if let Some(v) = query.get(k) {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

fn client(inner: &Inner) -> Result<&KubeletClient, ApiError> {
    inner.kubelet_client.as_ref().ok_or_else(|| ApiError::new(503, "ServiceUnavailable", "this API server has no kubelet client certificate"))
}

fn node(inner: &Inner, name: &str) -> Result<Value, ApiError> {
    inner
        .cache
        .get(&format!("/registry/core/nodes/{name}"))
        .map(|o| (*o.object).clone())
        .ok_or_else(|| ApiError::not_found_named("nodes", "", name))
}

fn no_address(node: &str) -> ApiError {
    ApiError::internal(format!("no preferred addresses found; known addresses: [] for node {node:?}"))
}

/// Serves `GET pods/{name}/log`.
pub async fn pod_log(inner: &Inner, ns: &str, name: &str, query: &Query) -> Result<Response, ApiError> {
    for k in ["tailLines", "sinceSeconds", "limitBytes"] {
        if let Some(v) = query.get(k) {
            let n: i64 = v.parse().map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}")))?;
            let min = if k == "tailLines" { 0 } else { 1 };
            if n < min {
                let what = if min == 0 { "must be greater than or equal to 0" } else { "must be greater than 0" };
                let mut e = ApiError::new(422, "Invalid", format!("PodLogOptions \"{name}\" is invalid: {k}: Invalid value: {n}: {what}"));
                e.name = Some(name.to_string());
                e.kind = Some("PodLogOptions".into());
                return Err(e);
            }
        }
    }
    if query.get("sinceSeconds").is_some() && query.get("sinceTime").is_some() {
        return Err(ApiError::bad_request("at most one of sinceTime or sinceSeconds may be specified"));
    }
    let pod = inner
        .cache
        .get(&format!("/registry/core/pods/{ns}/{name}"))
        .map(|o| (*o.object).clone())
        .ok_or_else(|| ApiError::not_found_named("pods", "", name))?;
    let container = choose_container(&pod, query.get("container"))?;
    let node_name = pod.pointer("/spec/nodeName").and_then(|n| n.as_str()).unwrap_or("");
    if node_name.is_empty() {
        // Not scheduled: no logs, as upstream.
        return Ok(body::bytes_response(200, "text/plain", Bytes::new()));
    }
    check_log_status(&pod, &container, query.flag("previous"))?;
    let n = node(inner, node_name)?;
    let (host, port) = node_endpoint(&n).ok_or_else(|| no_address(node_name))?;
    let q = log_query(query);
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    if !q.is_empty() {
        path = format!("{path}?{q}");
    }
    client(inner)?.get(&host, port, &path).await
}

/// Serves `GET nodes/{name}/proxy/{path...}`.
pub async fn node_proxy(inner: &Inner, name: &str, rest: &[String], raw_query: Option<&str>) -> Result<Response, ApiError> {
    let n = node(inner, name)?;
    let (host, port) = node_endpoint(&n).ok_or_else(|| no_address(name))?;
    let mut path = format!("/{}", rest.join("/"));
    if let Some(q) = raw_query.filter(|q| !q.is_empty()) {
        path = format!("{path}?{q}");
    }
    client(inner)?.get(&host, port, &path).await
}

/// Every value of a repeated query parameter, in order (`command=sh&command=-c`).
fn all_values(raw: Option<&str>, key: &str) -> Vec<String> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes()).filter(|(k, _)| k == key).map(|(_, v)| v.into_owned()).collect()
}

/// Serves `pods/{name}/exec|attach|portforward` (connect verbs, upgraded connections).
pub async fn pod_stream(inner: &Inner, parts: &http::request::Parts, ns: &str, name: &str, sub: &str, query: &Query) -> Result<Response, ApiError> {
    let Some(on_upgrade) = parts.extensions.get::<hyper::upgrade::OnUpgrade>().cloned() else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let pod = inner
        .cache
        .get(&format!("/registry/core/pods/{ns}/{name}"))
        .map(|o| (*o.object).clone())
        .ok_or_else(|| ApiError::not_found_named("pods", "", name))?;
    let phase = pod.pointer("/status/phase").and_then(|p| p.as_str()).unwrap_or("");
    let node_name = pod.pointer("/spec/nodeName").and_then(|n| n.as_str()).unwrap_or("").to_string();
    let path = if sub == "portforward" {
        if matches!(phase, "Succeeded" | "Failed") {
            return Err(ApiError::bad_request(format!("cannot port-forward to a completed pod; current phase is {phase}")));
        }
        let mut q = form_urlencoded::Serializer::new(String::new());
        for p in all_values(parts.uri.query(), "ports").iter().flat_map(|v| v.split(',')).filter(|p| !p.is_empty()) {
            q.append_pair("port", p);
        }
        let q = q.finish();
        if q.is_empty() {
            format!("/portForward/{ns}/{name}")
        } else {
            format!("/portForward/{ns}/{name}?{q}")
        }
    } else {
        let container = choose_container(&pod, query.get("container"))?;
        let (stdin, stdout, stderr, tty) = (query.flag("stdin"), query.flag("stdout"), query.flag("stderr"), query.flag("tty"));
        if !stdin && !stdout && !stderr {
            return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
        }
        if matches!(phase, "Succeeded" | "Failed") {
            let what = if sub == "exec" { "exec into" } else { "attach to" };
            return Err(ApiError::bad_request(format!("cannot {what} a container in a completed pod; current phase is {phase}")));
        }
        let mut q = form_urlencoded::Serializer::new(String::new());
        if sub == "exec" {
            let cmd = all_values(parts.uri.query(), "command");
            if cmd.is_empty() {
                return Err(ApiError::bad_request("you must specify at least one command for the container"));
            }
            for c in &cmd {
                q.append_pair("command", c);
            }
        }
        for (k, v) in [("stdin", stdin), ("stdout", stdout), ("stderr", stderr), ("tty", tty)] {
            if v {
                q.append_pair(k, "1");
            }
        }
        format!("/{sub}/{ns}/{name}/{container}?{}", q.finish())
    };
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let n = node(inner, &node_name)?;
    let (host, port) = node_endpoint(&n).ok_or_else(|| no_address(&node_name))?;
    client(inner)?.upgrade(&host, port, &parts.method, &path, &parts.headers, on_upgrade).await
}

/// Serves the kubelet-backed subresources; `None` for every other request.
pub async fn dispatch(inner: &Inner, parts: &http::request::Parts, info: &RequestInfo, query: &Query) -> Option<Result<Response, ApiError>> {
    let sub = info.subresource.as_deref()?;
    let name = info.name.as_deref().unwrap_or("");
    match (info.group.as_str(), info.resource.as_str(), sub) {
        ("", "pods", "log") => Some(match info.verb.as_str() {
            "get" => pod_log(inner, info.namespace.as_deref().unwrap_or(""), name, query).await,
            _ => Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource")),
        }),
        ("", "nodes", "proxy") => Some(match info.verb.as_str() {
            "get" => node_proxy(inner, name, &info.rest, parts.uri.query()).await,
            _ => Err(ApiError::method_not_allowed("only GET is proxied to kubelets by this server")),
        }),
        ("", "pods", "exec" | "attach" | "portforward") => Some(match parts.method {
            http::Method::GET | http::Method::POST => pod_stream(inner, parts, info.namespace.as_deref().unwrap_or(""), name, sub, query).await,
            _ => Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource")),
        }),
        (_, _, "proxy") => Some(Err(ApiError::new(503, "ServiceUnavailable", format!("the subresource {sub} is not served by this server yet")))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_defaulting() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(choose_container(&one, None).ok().as_deref(), Some("a"));
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = choose_container(&two, None).err().map(|e| (e.code, e.message));
        assert_eq!(e, Some((400, "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]".into())));
        assert_eq!(choose_container(&two, Some("i")).ok().as_deref(), Some("i"));
        let e = choose_container(&two, Some("z")).err().map(|e| e.message);
        assert_eq!(e.as_deref(), Some("container z is not valid for pod p"));
        let mut annotated = two.clone();
        annotated["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/default-container": "b"});
        assert_eq!(choose_container(&annotated, None).ok().as_deref(), Some("b"));
    }

    #[test]
    fn log_status_messages() {
        let pod = |st: Value| json!({"metadata": {"name": "web"}, "status": {"containerStatuses": [st]}});
        let msg = |p: &Value, prev| check_log_status(p, "c", prev).err().map(|e| e.message);
        let waiting = pod(json!({"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}));
        assert_eq!(msg(&waiting, false).as_deref(), Some("container \"c\" in pod \"web\" is waiting to start: ContainerCreating"));
        let none = json!({"metadata": {"name": "web"}, "status": {}});
        assert_eq!(msg(&none, false).as_deref(), Some("container \"c\" in pod \"web\" is waiting to start: ContainerCreating"));
        let pull = pod(json!({"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}));
        assert_eq!(msg(&pull, false).as_deref(), Some("container \"c\" in pod \"web\" is waiting to start: trying and failing to pull image"));
        let running = pod(json!({"name": "c", "state": {"running": {}}}));
        assert!(check_log_status(&running, "c", false).is_ok());
        assert_eq!(msg(&running, true).as_deref(), Some("previous terminated container \"c\" in pod \"web\" not found"));
        let crash = pod(json!({"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}));
        assert!(check_log_status(&crash, "c", false).is_ok());
        assert!(check_log_status(&crash, "c", true).is_ok());
    }

    #[test]
    fn node_endpoints() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}}});
        assert_eq!(node_endpoint(&n), Some(("10.0.0.5".into(), 10251)));
        let h = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(node_endpoint(&h), Some(("n1".into(), DEFAULT_KUBELET_PORT)));
        assert_eq!(node_endpoint(&json!({"status": {}})), None);
        assert_eq!(host_port("fd00::1", 10250), "[fd00::1]:10250");
    }

    /// A fake kubelet: TLS with a CA-signed serving cert, client certs required; echoes
    /// the client's CN and the path, streams two chunks, or fails for `/fail`.
    async fn fake_kubelet(ca: &str, ca_key: &str) -> std::net::SocketAddr {
        use std::convert::Infallible;
        let Ok((cert, key)) = rk3s_pki::issue_serving_cert(ca, ca_key, "node", &["127.0.0.1".to_string()], 1) else { panic!("cert") };
        let Ok(tls) = crate::server::tls_config(&cert, &key, ca) else { panic!("tls") };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { panic!("bind") };
        let Ok(addr) = listener.local_addr() else { panic!("addr") };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(tcp).await else { continue };
                let cn = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|d| rk3s_pki::client_identity(d.as_ref()).ok())
                    .map(|i| i.user)
                    .unwrap_or_default();
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let cn = cn.clone();
                    async move {
                        let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                        if pq == "/fail" {
                            return Ok::<_, Infallible>(body::bytes_response(400, "text/plain", "container \"c\" in pod \"p\" is waiting to start: ContainerCreating\n"));
                        }
                        let (tx, rx) = tokio::sync::mpsc::channel(2);
                        tokio::spawn(async move {
                            let _ = tx.send(Bytes::from(format!("{cn} {pq}\n"))).await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let _ = tx.send(Bytes::from_static(b"more\n")).await;
                        });
                        let mut r = http::Response::new(ResponseBody::Stream(rx));
                        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
                        Ok(r)
                    }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc));
            }
        });
        addr
    }

    /// A cluster PKI in a temp dir and the API server's kubelet client built from it.
    fn test_pki_and_client() -> (tempfile::TempDir, rk3s_pki::ServerPki, KubeletClient) {
        let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
        let Ok(pki) = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.path())) else { panic!("pki") };
        let Ok((cert_pem, key_pem)) = rk3s_pki::issue_client_cert(&pki.ca_cert_pem, &pki.ca_key_pem, "kube-apiserver-kubelet-client", &["system:masters"], 1)
        else {
            panic!("client cert")
        };
        let Ok(client) = KubeletClient::new(&KubeletClientConfig { cert_pem, key_pem, ca_pem: pki.ca_cert_pem.clone() }) else { panic!("client") };
        (dir, pki, client)
    }

    #[tokio::test]
    async fn kubelet_client_streams_and_maps_errors() {
        let (_dir, pki, c) = test_pki_and_client();
        let addr = fake_kubelet(&pki.ca_cert_pem, &pki.ca_key_pem).await;
        let r = c.get("127.0.0.1", addr.port(), "/containerLogs/ns/p/c?follow=true").await;
        let Ok(r) = r else { panic!("get: {:?}", r.err().map(|e| e.message)) };
        assert_eq!(r.status(), 200);
        let b = r.into_body().collect().await.map(|b| b.to_bytes());
        assert_eq!(b.ok().as_deref(), Some(&b"kube-apiserver-kubelet-client /containerLogs/ns/p/c?follow=true\nmore\n"[..]));
        let e = c.get("127.0.0.1", addr.port(), "/fail").await.err();
        assert_eq!(e.map(|e| (e.code, e.reason, e.message)), Some((400, "BadRequest".into(), "container \"c\" in pod \"p\" is waiting to start: ContainerCreating".into())));
        // A kubelet whose certificate is not from the cluster CA is refused.
        let Ok(other) = tempfile::tempdir() else { panic!("tempdir") };
        let Ok(pki2) = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(other.path())) else { panic!("pki") };
        let bad = fake_kubelet(&pki2.ca_cert_pem, &pki2.ca_key_pem).await;
        let e = c.get("127.0.0.1", bad.port(), "/healthz").await.err().map(|e| e.code);
        assert_eq!(e, Some(500));
        // Nothing listening.
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else { panic!("bind") };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(1);
        drop(l);
        let e = c.get("127.0.0.1", port, "/healthz").await.err().map(|e| e.message);
        assert!(e.as_deref().is_some_and(|m| m.contains("connect")), "{e:?}");
    }

    /// A fake kubelet that switches to the requested protocol and echoes bytes, after
    /// writing the request line and `X-Stream-Protocol-Version`; 400 without `Upgrade`.
    async fn fake_upgrading_kubelet(ca: &str, ca_key: &str) -> std::net::SocketAddr {
        use std::convert::Infallible;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok((cert, key)) = rk3s_pki::issue_serving_cert(ca, ca_key, "node", &["127.0.0.1".to_string()], 1) else { panic!("cert") };
        let Ok(tls) = crate::server::tls_config(&cert, &key, ca) else { panic!("tls") };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { panic!("bind") };
        let Ok(addr) = listener.local_addr() else { panic!("addr") };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(tcp).await else { continue };
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| async move {
                    let Some(proto) = req.headers().get("upgrade").cloned() else {
                        return Ok::<_, Infallible>(body::bytes_response(400, "text/plain", "Upgrade request required"));
                    };
                    let line = format!(
                        "{} {} {}\n",
                        req.method(),
                        req.uri(),
                        req.headers().get("x-stream-protocol-version").and_then(|v| v.to_str().ok()).unwrap_or("")
                    );
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(up) = on.await else { return };
                        let mut io = hyper_util::rt::TokioIo::new(up);
                        let _ = io.write_all(line.as_bytes()).await;
                        let mut buf = [0u8; 64];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut r = http::Response::new(ResponseBody::Full(None));
                    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
                    r.headers_mut().insert(http::header::UPGRADE, proto);
                    r.headers_mut().insert("x-stream-protocol-version", http::HeaderValue::from_static("v4.channel.k8s.io"));
                    Ok(r)
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).with_upgrades());
            }
        });
        addr
    }

    #[tokio::test]
    async fn upgrades_are_joined_end_to_end() {
        use std::convert::Infallible;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_dir, pki, client) = test_pki_and_client();
        let kubelet = fake_upgrading_kubelet(&pki.ca_cert_pem, &pki.ca_key_pem).await;
        // A plain-HTTP front that proxies every request with `KubeletClient::upgrade`.
        let Ok(front) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { panic!("bind") };
        let Ok(front_addr) = front.local_addr() else { panic!("addr") };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = front.accept().await {
                let client = client.clone();
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    async move {
                        let on = hyper::upgrade::on(&mut req);
                        let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                        let r = client.upgrade("127.0.0.1", kubelet.port(), req.method(), &pq, req.headers(), on).await;
                        Ok::<_, Infallible>(r.unwrap_or_else(|e| body::bytes_response(e.code, "text/plain", e.message)))
                    }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).with_upgrades());
            }
        });
        let Ok(mut s) = tokio::net::TcpStream::connect(front_addr).await else { panic!("connect") };
        let req = "POST /exec/ns/p/c?command=echo&stdout=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n";
        assert!(s.write_all(req.as_bytes()).await.is_ok());
        let mut got = Vec::new();
        let want_line = b"POST /exec/ns/p/c?command=echo&stdout=1 v4.channel.k8s.io\n";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !got.windows(want_line.len()).any(|w| w == want_line) {
            let mut buf = [0u8; 512];
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!("read: {other:?} after {:?}", String::from_utf8_lossy(&got)),
            }
        }
        let head = String::from_utf8_lossy(&got).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.to_ascii_lowercase().contains("upgrade: spdy/3.1"), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
        // Bytes now flow both ways through the API server hop.
        assert!(s.write_all(b"ping").await.is_ok());
        let mut echo = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo)).await;
        assert!(matches!(r, Ok(Ok(4))), "{r:?}");
        assert_eq!(&echo, b"ping");
        // Without an upgrade the kubelet's refusal becomes an error status.
        let Ok(mut s) = tokio::net::TcpStream::connect(front_addr).await else { panic!("connect") };
        assert!(s.write_all(b"GET /exec/ns/p/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_ok());
        let mut resp = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut resp)).await;
        assert!(resp.starts_with("HTTP/1.1 400") && resp.ends_with("Upgrade request required"), "{resp}");
    }

    #[test]
    fn repeated_query_values() {
        assert_eq!(all_values(Some("command=sh&stdin=1&command=-c&command=echo%20hi"), "command"), vec!["sh", "-c", "echo hi"]);
        assert!(all_values(None, "command").is_empty());
    }

    #[test]
    fn kubelet_query_keeps_known_options() {
        let q = Query::parse(Some("container=c&follow=true&tailLines=10&timestamps=1&pretty=true&sinceTime=2024-01-01T00:00:00Z"));
        assert_eq!(log_query(&q), "follow=true&timestamps=true&tailLines=10&sinceTime=2024-01-01T00%3A00%3A00Z");
        assert_eq!(kubelet_error(400, "x".into()).reason, "BadRequest");
        assert_eq!(kubelet_error(500, String::new()).message, "the kubelet answered 500");
    }
}
