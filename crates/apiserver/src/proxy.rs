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
//! `pods/proxy`, `services/proxy` and `nodes/proxy` forward any method (with its body,
//! query and headers, credentials and hop-by-hop headers removed) and stream the
//! target's answer back unchanged, as upstream's proxy subresources: a pod by its IP
//! (which must be a global unicast address, else 400 `address not allowed`) and the
//! port named in `[scheme:]name[:port]` or its first container port; a Service through
//! a ready address of its Endpoints that belongs to a pod (503 `no endpoints available
//! for service`); a Node's kubelet with the client certificate (or another port of the
//! node, when one is named). A target that cannot be reached is upstream's 503
//! `error trying to reach service: ...`. HTTPS targets other than kubelets are not
//! verified, as upstream's proxy transport. Not yet: upgrade (WebSocket) requests
//! through these proxies, and upstream's rewriting of links in proxied HTML.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rk3s_api::ApiError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::body::{self, Response, ResponseBody};
use crate::request::{Query, RequestInfo};
use crate::state::Inner;
use crate::ApiServerError;

/// The kubelet port when a Node does not say.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// TLS material the API server uses towards kubelets.
#[derive(Clone)]
pub struct KubeletClientConfig {
    /// Client certificate and key, e.g. CN `kube-apiserver-kubelet-client`, O
    /// `system:masters`; read by every new connection, so a renewal
    /// (`LiveCert::update`) is used without a restart.
    pub client_cert: Arc<rk3s_pki::LiveCert>,
    /// The CA that signs kubelet serving certificates (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for KubeletClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClientConfig")
            .finish_non_exhaustive()
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(cfg.client_cert.clone());
        // Every connection is a full handshake (as Go's client without a session cache):
        // a resumed session would carry on the identity of a certificate since renewed.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(KubeletClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// GETs `path_and_query` from the kubelet at `host:port` and streams the answer back.
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
    ) -> Result<Response, ApiError> {
        let url = format!(
            "https://{}/{}",
            host_port(host, port),
            path_and_query.trim_start_matches('/')
        );
        let fail = |e: &dyn std::fmt::Display| ApiError::internal(format!("Get \"{url}\": {e}"));
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((host, port)),
        );
        let tcp = match connect.await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return Err(fail(&format!(
                    "dial tcp {}: connect: {e}",
                    host_port(host, port)
                )))
            }
            Err(_) => {
                return Err(fail(&format!(
                    "dial tcp {}: i/o timeout",
                    host_port(host, port)
                )))
            }
        };
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?,
        };
        let stream = self.tls.connect(name, tcp).await.map_err(|e| fail(&e))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail(&e))?;
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
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, ct.clone());
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
        let url = format!(
            "https://{}/{}",
            host_port(host, port),
            path_and_query.trim_start_matches('/')
        );
        let fail =
            |e: &dyn std::fmt::Display| ApiError::internal(format!("error dialing backend: {e}"));
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((host, port)),
        );
        let tcp = match connect.await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return Err(fail(&format!(
                    "dial tcp {}: connect: {e}",
                    host_port(host, port)
                )))
            }
            Err(_) => {
                return Err(fail(&format!(
                    "dial tcp {}: i/o timeout",
                    host_port(host, port)
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?,
        };
        let stream = self.tls.connect(name, tcp).await.map_err(|e| fail(&e))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail(&e))?;
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
        let req = b
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let mut resp = send
            .send_request(req)
            .await
            .map_err(|e| ApiError::internal(format!("{url}: {e}")))?;
        let status = resp.status();
        if status != http::StatusCode::SWITCHING_PROTOCOLS {
            let collected =
                tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect()).await;
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
                    tracing::debug!(
                        client = c.is_ok(),
                        kubelet = k.is_ok(),
                        "stream upgrade failed"
                    );
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
    let message = if message.is_empty() {
        format!("the kubelet answered {code}")
    } else {
        message
    };
    ApiError::new(code, reason, message)
}

/// The address and kubelet port of a Node object.
pub fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node
        .pointer("/status/addresses")
        .and_then(|a| a.as_array())?;
    let find = |t: &str| {
        addrs
            .iter()
            .find(|a| a.get("type").and_then(|x| x.as_str()) == Some(t))
            .and_then(|a| a.get("address").and_then(|x| x.as_str()))
            .filter(|s| !s.is_empty())
    };
    let host = find("InternalIP")
        .or_else(|| find("ExternalIP"))
        .or_else(|| find("Hostname"))?;
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
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Picks the container of a `pods/log` request as upstream: the one asked for (which
/// must exist), else the only container, else the `kubectl.kubernetes.io/default-container`
/// annotation's; otherwise a 400 listing the choices.
pub fn choose_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    let containers = names(pod, "containers");
    let inits = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    if let Some(c) = asked {
        if containers
            .iter()
            .chain(&inits)
            .chain(&ephemeral)
            .any(|n| n == c)
        {
            return Ok(c.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        )));
    }
    if containers.len() == 1 {
        return Ok(containers[0].clone());
    }
    if let Some(d) = pod
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(|d| d.as_str())
    {
        if containers.iter().any(|n| n == d) {
            return Ok(d.to_string());
        }
    }
    let mut msg = format!(
        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
        containers.join(" ")
    );
    if !inits.is_empty() {
        msg.push_str(&format!(
            " or one of the init containers: [{}]",
            inits.join(" ")
        ));
    }
    if !ephemeral.is_empty() {
        msg.push_str(&format!(
            " or one of the ephemeral containers: [{}]",
            ephemeral.join(" ")
        ));
    }
    Err(ApiError::bad_request(msg))
}

/// Checks from the pod status that the container has logs to show, with upstream's
/// kubelet messages (`... is waiting to start: ContainerCreating`, `previous terminated
/// container ... not found`).
pub fn check_log_status(pod: &Value, container: &str, previous: bool) -> Result<(), ApiError> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    let status = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .find_map(|k| {
        pod.pointer(&format!("/status/{k}"))
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter()
                    .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(container))
            })
    });
    let bad = |m: String| Err(ApiError::bad_request(m));
    let Some(st) = status else {
        // The kubelet reports a container it has not started yet as ContainerCreating.
        return bad(format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start: ContainerCreating"));
    };
    let last_terminated = st.pointer("/lastState/terminated");
    if previous {
        if last_terminated.is_none() {
            return bad(format!(
                "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
            ));
        }
        return Ok(());
    }
    if st.pointer("/state/running").is_some()
        || st.pointer("/state/terminated").is_some()
        || last_terminated.is_some()
    {
        return Ok(());
    }
    if let Some(w) = st.pointer("/state/waiting") {
        let reason = w.get("reason").and_then(|r| r.as_str()).unwrap_or("");
        let what = match reason {
            "ErrImagePull" => "image can't be pulled".to_string(),
            "ImagePullBackOff" => "trying and failing to pull image".to_string(),
            r => r.to_string(),
        };
        return bad(format!(
            "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {what}"
        ));
    }
    bad(format!(
        "container \"{container}\" in pod \"{pod_name}\" is waiting to start - no logs yet"
    ))
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
    inner.kubelet_client.as_ref().ok_or_else(|| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            "this API server has no kubelet client certificate",
        )
    })
}

fn node(inner: &Inner, name: &str) -> Result<Value, ApiError> {
    inner
        .cache
        .get(&format!("/registry/core/nodes/{name}"))
        .map(|o| o.value())
        .ok_or_else(|| ApiError::not_found_named("nodes", "", name))
}

fn no_address(node: &str) -> ApiError {
    ApiError::internal(format!(
        "no preferred addresses found; known addresses: [] for node {node:?}"
    ))
}

/// Serves `GET pods/{name}/log`.
pub async fn pod_log(
    inner: &Inner,
    parts: &http::request::Parts,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let answer = pod_log_answer(inner, ns, name, query).await?;
    if !crate::websocket::is_websocket_request(&parts.headers) {
        return Ok(answer);
    }
    log_over_websocket(parts, answer)
}

/// The log answer streamed over a WebSocket (as upstream serves `pods/log` to clients
/// that ask for one): 101, then one frame per chunk and a close frame. An error answer
/// is returned as it is.
fn log_over_websocket(
    parts: &http::request::Parts,
    answer: Response,
) -> Result<Response, ApiError> {
    if !answer.status().is_success() {
        return Ok(answer);
    }
    let key = parts
        .headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let (protocol, protocol_name) = crate::websocket::choose_reader_protocol(&parts.headers)
        .ok_or_else(|| {
            ApiError::bad_request(
                "unable to upgrade: none of the requested WebSocket protocols is supported",
            )
        })?;
    let on_upgrade = parts
        .extensions
        .get::<hyper::upgrade::OnUpgrade>()
        .cloned()
        .ok_or_else(|| ApiError::bad_request("Upgrade request required"))?;
    let rx = match answer.into_body() {
        ResponseBody::Stream(rx) => rx,
        ResponseBody::Full(b) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            if let Some(b) = b {
                let _ = tx.try_send(b);
            }
            rx
        }
    };
    tokio::spawn(crate::websocket::stream_frames(on_upgrade, protocol, rx));
    let mut r = http::Response::new(ResponseBody::Full(None));
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&crate::websocket::accept_key(key)) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&protocol_name) {
        if !protocol_name.is_empty() {
            h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    Ok(r)
}

/// The plain HTTP answer of `pods/log`.
async fn pod_log_answer(
    inner: &Inner,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    for k in ["tailLines", "sinceSeconds", "limitBytes"] {
        if let Some(v) = query.get(k) {
            let n: i64 = v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}")))?;
            let min = if k == "tailLines" { 0 } else { 1 };
            if n < min {
                let what = if min == 0 {
                    "must be greater than or equal to 0"
                } else {
                    "must be greater than 0"
                };
                let mut e = ApiError::new(
                    422,
                    "Invalid",
                    format!("PodLogOptions \"{name}\" is invalid: {k}: Invalid value: {n}: {what}"),
                );
                e.name = Some(name.to_string());
                e.kind = Some("PodLogOptions".into());
                return Err(e);
            }
        }
    }
    if query.get("sinceSeconds").is_some() && query.get("sinceTime").is_some() {
        return Err(ApiError::bad_request(
            "at most one of sinceTime or sinceSeconds may be specified",
        ));
    }
    let pod = cached_pod(inner, ns, name)
        .await
        .map(|o| o.value())
        .ok_or_else(|| ApiError::not_found_named("pods", "", name))?;
    let container = choose_container(&pod, query.get("container"))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(|n| n.as_str())
        .unwrap_or("");
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

/// `[scheme:]name[:port]` of a proxy request, as upstream's `SplitSchemeNamePort`
/// (`None` when malformed: more parts, an empty name, or a scheme other than http(s)).
pub fn split_scheme_name_port(id: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return None,
    };
    (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then_some((scheme, name, port))
}

/// The path a proxy request asks of its target: what follows `/<resource>/<id>/proxy`
/// in the request path, verbatim (`/` when nothing does).
pub fn proxied_path(raw_path: &str, resource: &str, id: &str) -> String {
    let marker = format!("/{resource}/{id}/proxy");
    let rest = raw_path
        .find(&marker)
        .map(|i| &raw_path[i + marker.len()..])
        .unwrap_or("");
    if rest.is_empty() {
        "/".to_string()
    } else {
        rest.to_string()
    }
}

/// Whether an address may be proxied to (Go's `IsGlobalUnicast`: not unspecified,
/// loopback, link-local, multicast or broadcast).
pub fn proxyable_ip(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Headers never forwarded to a proxy target: hop-by-hop ones, the client's
/// credentials (upstream's authentication filter drops them) and impersonation.
fn forwarded(name: &http::HeaderName) -> bool {
    let n = name.as_str();
    !matches!(
        n,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
            | "content-length"
    ) && !n.starts_with("impersonate-")
}

/// A TLS client that accepts any server certificate (upstream's proxy transport to
/// pods and services does not verify them either).
fn insecure_tls() -> tokio_rustls::TlsConnector {
    match rk3s_pki::unverified_client_config() {
        Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
        // The default protocol versions are always available with the ring provider.
        Err(_) => tokio_rustls::TlsConnector::from(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )),
    }
}

/// Where a proxy request goes.
pub struct ProxyTarget {
    /// Host (IP or name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS towards the target (`None`: plain HTTP).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// The name the target's certificate must carry (`None`: `host`).
    pub server_name: Option<String>,
}

/// Forwards a request to `target` and streams its answer back unchanged (status,
/// headers but hop-by-hop ones, body). Unreachable targets are upstream's 503.
pub async fn forward(
    target: ProxyTarget,
    method: &http::Method,
    path_and_query: &str,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    forward_rewriting(target, method, path_and_query, headers, body, None).await
}

/// [`forward`], rewriting the answer's links to the API server's path when `prefix`
/// is given (see [`crate::proxy_rewrite`]): HTML pages (not content-encoded), the
/// `Location` of redirects; CORS headers of the target are dropped, as upstream's
/// proxy transport does.
pub async fn forward_rewriting(
    target: ProxyTarget,
    method: &http::Method,
    path_and_query: &str,
    headers: &http::HeaderMap,
    body: Bytes,
    prefix: Option<String>,
) -> Result<Response, ApiError> {
    let addr = host_port(&target.host, target.port);
    let rewriter = prefix.map(|prefix| crate::proxy_rewrite::Rewriter {
        prefix,
        target_host: addr.clone(),
        request_host: headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string(),
    });
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error trying to reach service: {e}"),
        )
    };
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    );
    let tcp = match connect.await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(unreachable(&format!("dial tcp {addr}: connect: {e}"))),
        Err(_) => return Err(unreachable(&format!("dial tcp {addr}: i/o timeout"))),
    };
    let _ = tcp.set_nodelay(true);
    let mut send: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>> =
        match target.tls {
            Some(tls) => {
                let host = target.server_name.as_ref().unwrap_or(&target.host);
                let name = match host.parse::<IpAddr>() {
                    Ok(ip) => ServerName::IpAddress(ip.into()),
                    Err(_) => ServerName::try_from(host.clone()).map_err(|e| unreachable(&e))?,
                };
                let stream = tls.connect(name, tcp).await.map_err(|e| unreachable(&e))?;
                let (send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|e| unreachable(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "proxy connection ended");
                    }
                });
                send
            }
            None => {
                let (send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await
                        .map_err(|e| unreachable(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "proxy connection ended");
                    }
                });
                send
            }
        };
    let mut b = http::Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .header(http::header::HOST, addr.clone());
    for (k, v) in headers {
        if forwarded(k) {
            b = b.header(k, v.clone());
        }
    }
    let req = b
        .body(http_body_util::Full::new(body))
        .map_err(|e| ApiError::bad_request(format!("invalid proxy request: {e}")))?;
    let resp = send.send_request(req).await.map_err(|e| unreachable(&e))?;
    let (mut parts, mut incoming) = resp.into_parts();
    if let Some(rw) = &rewriter {
        for cors in [
            "access-control-allow-credentials",
            "access-control-allow-headers",
            "access-control-allow-methods",
            "access-control-allow-origin",
        ] {
            parts.headers.remove(cors);
        }
        if parts.status.is_redirection() {
            let location = parts
                .headers
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| rw.rewrite_url(l));
            if let Some(v) = location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
                parts.headers.insert(http::header::LOCATION, v);
            }
        }
        let html = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(crate::proxy_rewrite::is_html);
        let encoded = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        if html && !encoded {
            let page = incoming
                .collect()
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            let mut r = http::Response::new(ResponseBody::full(rw.rewrite_html(&page)));
            *r.status_mut() = parts.status;
            for (k, v) in &parts.headers {
                if forwarded(k) {
                    r.headers_mut().append(k.clone(), v.clone());
                }
            }
            return Ok(r);
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                if tx.send(data).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut r = http::Response::new(ResponseBody::Stream(rx));
    *r.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        if forwarded(k) {
            r.headers_mut().append(k.clone(), v.clone());
        }
    }
    Ok(r)
}

fn path_and_query(path: String, raw_query: Option<&str>) -> String {
    match raw_query.filter(|q| !q.is_empty()) {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The target of `pods/{id}/proxy` (`id`: `[scheme:]name[:port]`).
pub fn pod_target(pod: &Value, scheme: &str, port: &str) -> Result<ProxyTarget, ApiError> {
    let ip = pod
        .pointer("/status/podIPs/0/ip")
        .or_else(|| pod.pointer("/status/podIP"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<IpAddr>().ok())
        .filter(proxyable_ip)
        .ok_or_else(|| ApiError::bad_request("address not allowed"))?;
    let port: u16 = if port.is_empty() {
        // The first port of the first container that has one; else the scheme's.
        pod.pointer("/spec/containers")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find_map(|c| c.pointer("/ports/0/containerPort").and_then(Value::as_u64))
            })
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(if scheme == "https" { 443 } else { 80 })
    } else {
        port.parse()
            .map_err(|_| ApiError::bad_request(format!("invalid port {port:?}")))?
    };
    Ok(ProxyTarget {
        host: ip.to_string(),
        port,
        tls: (scheme == "https").then(insecure_tls),
        server_name: None,
    })
}

/// The target of `services/{id}/proxy`, as upstream's service `ResourceLocation`: the
/// Service port (by number or name), then a random ready address of its Endpoints with
/// that port that belongs to a pod of the namespace with that IP.
pub fn service_target(inner: &Inner, ns: &str, id: &str) -> Result<ProxyTarget, ApiError> {
    let (scheme, name, port) = split_scheme_name_port(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid service request {id:?}")))?;
    let mut port_name = port.to_string();
    if let Ok(number) = port.parse::<i64>() {
        let svc = inner
            .cache
            .get(&format!("/registry/core/services/{ns}/{name}"))
            .ok_or_else(|| ApiError::not_found_named("services", "", name))?;
        let ports = svc
            .object()
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let found = ports
            .iter()
            .find(|p| p.get("port").and_then(Value::as_i64) == Some(number));
        match found {
            Some(p) => {
                port_name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            }
            None => {
                return Err(ApiError::new(
                    503,
                    "ServiceUnavailable",
                    format!("no service port {number} found for service {name:?}"),
                ))
            }
        }
    }
    let eps = inner
        .cache
        .get(&format!("/registry/core/endpoints/{ns}/{name}"))
        .ok_or_else(|| ApiError::not_found_named("endpoints", "", name))?;
    let subsets = eps
        .object()
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let none = || {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("no endpoints available for service {name:?}"),
        )
    };
    if subsets.is_empty() {
        return Err(none());
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    for i in 0..subsets.len() {
        let ss = &subsets[(seed + i) % subsets.len()];
        let addrs = ss
            .get("addresses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if addrs.is_empty() {
            continue;
        }
        let ports = ss
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in ports
            .iter()
            .filter(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
        {
            let Some(port) = p
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for j in 0..addrs.len() {
                let a = &addrs[(seed + j) % addrs.len()];
                let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
                if valid_endpoint_address(inner, ns, a, ip) {
                    return Ok(ProxyTarget {
                        host: ip.to_string(),
                        port,
                        tls: (scheme == "https").then(insecure_tls),
                        server_name: None,
                    });
                }
            }
        }
    }
    Err(ApiError::new(
        503,
        "ServiceUnavailable",
        format!("no endpoints available for service {id:?}"),
    ))
}

/// upstream's `isValidAddress`: the address is a pod of this namespace that has the IP.
fn valid_endpoint_address(inner: &Inner, ns: &str, addr: &Value, ip: &str) -> bool {
    let Ok(parsed) = ip.parse::<IpAddr>() else {
        return false;
    };
    if !proxyable_ip(&parsed) {
        return false;
    }
    let Some(target) = addr.get("targetRef") else {
        return false;
    };
    if target.get("namespace").and_then(Value::as_str) != Some(ns) {
        return false;
    }
    let pod_name = target.get("name").and_then(Value::as_str).unwrap_or("");
    let Some(pod) = inner
        .cache
        .get(&format!("/registry/core/pods/{ns}/{pod_name}"))
    else {
        return false;
    };
    let ips = pod
        .object()
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ips.iter()
        .any(|p| p.get("ip").and_then(Value::as_str) == Some(ip))
}

/// Serves `nodes/{id}/proxy/{path...}`: the node's kubelet (with the client
/// certificate), or another port of the node when `id` names one.
pub async fn node_proxy(
    inner: &Inner,
    parts: &http::request::Parts,
    id: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (scheme, name, port) = split_scheme_name_port(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid node request {id:?}")))?;
    let n = node(inner, name)?;
    let (host, kubelet_port) = node_endpoint(&n).ok_or_else(|| no_address(name))?;
    let asked: Option<u16> = if port.is_empty() {
        None
    } else {
        Some(
            port.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid port {port:?}")))?,
        )
    };
    let target = match asked {
        Some(p) if p != kubelet_port => ProxyTarget {
            host,
            port: p,
            tls: (scheme == "https").then(insecure_tls),
            server_name: None,
        },
        _ => ProxyTarget {
            host,
            port: kubelet_port,
            tls: Some(client(inner)?.tls.clone()),
            server_name: None,
        },
    };
    let path = path_and_query(
        proxied_path(parts.uri.path(), "nodes", id),
        parts.uri.query(),
    );
    let prefix = crate::proxy_rewrite::path_prefix(
        parts.uri.path(),
        &proxied_path(parts.uri.path(), "nodes", id),
    );
    forward_rewriting(
        target,
        &parts.method,
        &path,
        &parts.headers,
        body,
        Some(prefix),
    )
    .await
}

/// A pod from the watch cache; when it is not there, once the cache has caught up with
/// the store (a consistent read: a pod whose create was just acknowledged is found).
async fn cached_pod(inner: &Inner, ns: &str, name: &str) -> Option<crate::cache::CachedObject> {
    let key = format!("/registry/core/pods/{ns}/{name}");
    if let Some(pod) = inner.cache.get(&key) {
        return Some(pod);
    }
    let _ = inner
        .cache
        .wait_fresh(std::time::Duration::from_secs(3))
        .await;
    inner.cache.get(&key)
}

/// Serves `pods/{id}/proxy/{path...}`.
pub async fn pod_proxy(
    inner: &Inner,
    parts: &http::request::Parts,
    ns: &str,
    id: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (scheme, name, port) = split_scheme_name_port(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid pod request {id:?}")))?;
    let pod = cached_pod(inner, ns, name)
        .await
        .ok_or_else(|| ApiError::not_found_named("pods", "", name))?;
    let target = pod_target(&pod.object(), scheme, port)?;
    let path = path_and_query(
        proxied_path(parts.uri.path(), "pods", id),
        parts.uri.query(),
    );
    let prefix = crate::proxy_rewrite::path_prefix(
        parts.uri.path(),
        &proxied_path(parts.uri.path(), "pods", id),
    );
    forward_rewriting(
        target,
        &parts.method,
        &path,
        &parts.headers,
        body,
        Some(prefix),
    )
    .await
}

/// Serves `services/{id}/proxy/{path...}`.
pub async fn service_proxy(
    inner: &Inner,
    parts: &http::request::Parts,
    ns: &str,
    id: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = service_target(inner, ns, id)?;
    let path = path_and_query(
        proxied_path(parts.uri.path(), "services", id),
        parts.uri.query(),
    );
    let prefix = crate::proxy_rewrite::path_prefix(
        parts.uri.path(),
        &proxied_path(parts.uri.path(), "services", id),
    );
    forward_rewriting(
        target,
        &parts.method,
        &path,
        &parts.headers,
        body,
        Some(prefix),
    )
    .await
}

/// Every value of a repeated query parameter, in order (`command=sh&command=-c`).
fn all_values(raw: Option<&str>, key: &str) -> Vec<String> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Serves `pods/{name}/exec|attach|portforward` (connect verbs, upgraded connections).
pub async fn pod_stream(
    inner: &Inner,
    parts: &http::request::Parts,
    ns: &str,
    name: &str,
    sub: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let Some(on_upgrade) = parts.extensions.get::<hyper::upgrade::OnUpgrade>().cloned() else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let pod = cached_pod(inner, ns, name)
        .await
        .map(|o| o.value())
        .ok_or_else(|| ApiError::not_found_named("pods", "", name))?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(|p| p.as_str())
        .unwrap_or("");
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    let path = if sub == "portforward" {
        if matches!(phase, "Succeeded" | "Failed") {
            return Err(ApiError::bad_request(format!(
                "cannot port-forward to a completed pod; current phase is {phase}"
            )));
        }
        let mut q = form_urlencoded::Serializer::new(String::new());
        for p in all_values(parts.uri.query(), "ports")
            .iter()
            .flat_map(|v| v.split(','))
            .filter(|p| !p.is_empty())
        {
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
        let (stdin, stdout, stderr, tty) = (
            query.flag("stdin"),
            query.flag("stdout"),
            query.flag("stderr"),
            query.flag("tty"),
        );
        if !stdin && !stdout && !stderr {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        if matches!(phase, "Succeeded" | "Failed") {
            let what = if sub == "exec" {
                "exec into"
            } else {
                "attach to"
            };
            return Err(ApiError::bad_request(format!(
                "cannot {what} a container in a completed pod; current phase is {phase}"
            )));
        }
        let mut q = form_urlencoded::Serializer::new(String::new());
        if sub == "exec" {
            let cmd = all_values(parts.uri.query(), "command");
            if cmd.is_empty() {
                return Err(ApiError::bad_request(
                    "you must specify at least one command for the container",
                ));
            }
            for c in &cmd {
                q.append_pair("command", c);
            }
        }
        for (k, v) in [
            ("stdin", stdin),
            ("stdout", stdout),
            ("stderr", stderr),
            ("tty", tty),
        ] {
            if v {
                q.append_pair(k, "1");
            }
        }
        format!("/{sub}/{ns}/{name}/{container}?{}", q.finish())
    };
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let n = node(inner, &node_name)?;
    let (host, port) = node_endpoint(&n).ok_or_else(|| no_address(&node_name))?;
    client(inner)?
        .upgrade(
            &host,
            port,
            &parts.method,
            &path,
            &parts.headers,
            on_upgrade,
        )
        .await
}

/// Serves the kubelet-backed subresources; `None` for every other request.
pub async fn dispatch(
    inner: &Inner,
    parts: &http::request::Parts,
    info: &RequestInfo,
    query: &Query,
    body: &Bytes,
) -> Option<Result<Response, ApiError>> {
    let sub = info.subresource.as_deref()?;
    let name = info.name.as_deref().unwrap_or("");
    let ns = info.namespace.as_deref().unwrap_or("");
    if sub == "proxy" && parts.headers.contains_key(http::header::UPGRADE) {
        return Some(Err(ApiError::bad_request(
            "upgrade requests are not proxied by this server",
        )));
    }
    match (info.group.as_str(), info.resource.as_str(), sub) {
        ("", "pods", "log") => Some(match info.verb.as_str() {
            "get" => pod_log(inner, parts, ns, name, query).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        }),
        ("", "nodes", "proxy") => Some(node_proxy(inner, parts, name, body.clone()).await),
        ("", "pods", "proxy") => Some(pod_proxy(inner, parts, ns, name, body.clone()).await),
        ("", "services", "proxy") => {
            Some(service_proxy(inner, parts, ns, name, body.clone()).await)
        }
        ("", "pods", "exec" | "attach" | "portforward") => Some(match parts.method {
            http::Method::GET | http::Method::POST => {
                pod_stream(
                    inner,
                    parts,
                    info.namespace.as_deref().unwrap_or(""),
                    name,
                    sub,
                    query,
                )
                .await
            }
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxy_ids_paths_and_addresses() {
        assert_eq!(split_scheme_name_port("web"), Some(("", "web", "")));
        assert_eq!(
            split_scheme_name_port("web:8080"),
            Some(("", "web", "8080"))
        );
        assert_eq!(
            split_scheme_name_port("https:web:443"),
            Some(("https", "web", "443"))
        );
        assert_eq!(
            split_scheme_name_port("https:web:"),
            Some(("https", "web", ""))
        );
        for bad in ["", ":80", "ftp:web:21", "a:b:c:d"] {
            assert_eq!(split_scheme_name_port(bad), None, "{bad}");
        }
        assert_eq!(
            proxied_path("/api/v1/namespaces/d/pods/web:80/proxy", "pods", "web:80"),
            "/"
        );
        assert_eq!(
            proxied_path("/api/v1/namespaces/d/pods/web:80/proxy/", "pods", "web:80"),
            "/"
        );
        assert_eq!(
            proxied_path("/api/v1/namespaces/pods/pods/x/proxy/a/b%20c/", "pods", "x"),
            "/a/b%20c/"
        );
        assert_eq!(
            proxied_path("/api/v1/nodes/n/proxy/metrics", "nodes", "n"),
            "/metrics"
        );
        for ok in ["10.42.0.5", "192.168.1.1", "8.8.8.8", "fd00::1"] {
            assert!(proxyable_ip(&ok.parse().expect("ip")), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!proxyable_ip(&bad.parse().expect("ip")), "{bad}");
        }
    }

    #[test]
    fn pod_targets_as_upstream() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "ports": [{"containerPort": 8080}, {"containerPort": 9090}]}]},
            "status": {"podIP": "10.42.0.7", "podIPs": [{"ip": "10.42.0.7"}]}});
        let t = pod_target(&pod, "", "").expect("target");
        assert_eq!(
            (t.host.as_str(), t.port, t.tls.is_some()),
            ("10.42.0.7", 8080, false)
        );
        let t = pod_target(&pod, "https", "8443").expect("target");
        assert_eq!((t.port, t.tls.is_some()), (8443, true));
        let none = json!({"spec": {"containers": [{"name": "a"}]}, "status": {}});
        let e = pod_target(&none, "", "").err().map(|e| (e.code, e.message));
        assert_eq!(e, Some((400, "address not allowed".to_string())));
        let host_net =
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"podIP": "127.0.0.1"}});
        assert!(pod_target(&host_net, "", "").is_err());
        let no_ports =
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"podIP": "10.42.0.8"}});
        assert_eq!(pod_target(&no_ports, "", "").map(|t| t.port).ok(), Some(80));
    }

    #[tokio::test]
    async fn forwarded_html_and_redirects_link_through_the_api_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\naccess-control-allow-origin: *\r\ncontent-length: 33\r\nconnection: close\r\n\r\n<a href=\"/rewriteme\">test</a>\r\n\r\n",
            b"HTTP/1.1 302 Found\r\nlocation: /login/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 20\r\nconnection: close\r\n\r\n<a href=\"/x\">y</a>\r\n",
        ];
        let server = tokio::spawn(async move {
            for a in answers {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await.expect("read");
                s.write_all(a).await.expect("write");
            }
        });
        let prefix = "/api/v1/namespaces/ns/pods/p/proxy".to_string();
        let target = || ProxyTarget {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            server_name: None,
        };
        let body_of = |resp: Response| async move {
            match resp.into_body() {
                ResponseBody::Full(b) => b.map(|b| b.to_vec()).unwrap_or_default(),
                ResponseBody::Stream(mut rx) => {
                    let mut body = Vec::new();
                    while let Some(chunk) = rx.recv().await {
                        body.extend_from_slice(&chunk);
                    }
                    body
                }
            }
        };
        let no_headers = http::HeaderMap::new();
        let get = |prefix: &String| {
            forward_rewriting(
                target(),
                &http::Method::GET,
                "/",
                &no_headers,
                Bytes::new(),
                Some(prefix.clone()),
            )
        };
        let page = get(&prefix).await.expect("page");
        assert!(page.headers().get("access-control-allow-origin").is_none());
        assert_eq!(
            String::from_utf8(body_of(page).await).expect("utf-8"),
            format!("<a href=\"{prefix}/rewriteme\">test</a>\r\n\r\n")
        );
        let redirect = get(&prefix).await.expect("redirect");
        assert_eq!(redirect.status(), 302);
        assert_eq!(
            redirect
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok()),
            Some(format!("{prefix}/login/").as_str())
        );
        // Not HTML: byte for byte.
        let text = get(&prefix).await.expect("text");
        assert_eq!(body_of(text).await, b"<a href=\"/x\">y</a>\r\n");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn forward_passes_requests_and_answers_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the 5-byte body.
            loop {
                let n = s.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                if n == 0 || String::from_utf8_lossy(&got).ends_with("hello") {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 418 I'm a teapot\r\ncontent-type: text/plain\r\nx-backend: yes\r\ncontent-length: 6\r\nconnection: close\r\n\r\nteapot").await.expect("write");
            String::from_utf8_lossy(&got).to_string()
        });
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer secret"),
        );
        headers.insert(
            "impersonate-user",
            http::HeaderValue::from_static("someone"),
        );
        headers.insert("x-client", http::HeaderValue::from_static("kept"));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        let target = ProxyTarget {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            server_name: None,
        };
        let resp = forward(
            target,
            &http::Method::PUT,
            "/a/b?x=1",
            &headers,
            Bytes::from_static(b"hello"),
        )
        .await
        .expect("forwarded");
        assert_eq!(resp.status(), 418);
        assert_eq!(
            resp.headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok()),
            Some("yes")
        );
        assert!(resp.headers().get("connection").is_none());
        let mut body = Vec::new();
        if let ResponseBody::Stream(mut rx) = resp.into_body() {
            while let Some(chunk) = rx.recv().await {
                body.extend_from_slice(&chunk);
            }
        }
        assert_eq!(body, b"teapot");
        let request = server.await.expect("server").to_ascii_lowercase();
        assert!(
            request.starts_with("put /a/b?x=1 http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("host: 127.0.0.1:{port}")),
            "{request}"
        );
        assert!(
            request.contains("x-client: kept") && request.contains("content-length: 5"),
            "{request}"
        );
        assert!(
            !request.contains("authorization") && !request.contains("impersonate-user"),
            "{request}"
        );
        // Nobody listening: upstream's 503.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let e = forward(
            ProxyTarget {
                host: "127.0.0.1".into(),
                port,
                tls: None,
                server_name: None,
            },
            &http::Method::GET,
            "/",
            &http::HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .err()
        .map(|e| (e.code, e.message));
        let (code, message) = e.expect("unreachable");
        assert_eq!(code, 503);
        assert!(
            message.starts_with(&format!(
                "error trying to reach service: dial tcp 127.0.0.1:{port}: connect: "
            )),
            "{message}"
        );
    }

    #[test]
    fn container_defaulting() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(choose_container(&one, None).ok().as_deref(), Some("a"));
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = choose_container(&two, None)
            .err()
            .map(|e| (e.code, e.message));
        assert_eq!(e, Some((400, "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]".into())));
        assert_eq!(choose_container(&two, Some("i")).ok().as_deref(), Some("i"));
        let e = choose_container(&two, Some("z")).err().map(|e| e.message);
        assert_eq!(e.as_deref(), Some("container z is not valid for pod p"));
        let mut annotated = two.clone();
        annotated["metadata"]["annotations"] =
            json!({"kubectl.kubernetes.io/default-container": "b"});
        assert_eq!(
            choose_container(&annotated, None).ok().as_deref(),
            Some("b")
        );
    }

    #[test]
    fn log_status_messages() {
        let pod =
            |st: Value| json!({"metadata": {"name": "web"}, "status": {"containerStatuses": [st]}});
        let msg = |p: &Value, prev| check_log_status(p, "c", prev).err().map(|e| e.message);
        let waiting =
            pod(json!({"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}));
        assert_eq!(
            msg(&waiting, false).as_deref(),
            Some("container \"c\" in pod \"web\" is waiting to start: ContainerCreating")
        );
        let none = json!({"metadata": {"name": "web"}, "status": {}});
        assert_eq!(
            msg(&none, false).as_deref(),
            Some("container \"c\" in pod \"web\" is waiting to start: ContainerCreating")
        );
        let pull = pod(json!({"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}));
        assert_eq!(msg(&pull, false).as_deref(), Some("container \"c\" in pod \"web\" is waiting to start: trying and failing to pull image"));
        let running = pod(json!({"name": "c", "state": {"running": {}}}));
        assert!(check_log_status(&running, "c", false).is_ok());
        assert_eq!(
            msg(&running, true).as_deref(),
            Some("previous terminated container \"c\" in pod \"web\" not found")
        );
        let crash = pod(
            json!({"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}),
        );
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
        crate::testutil::https_server(ca, ca_key, &["127.0.0.1"], ca, |peer, req| async move {
            let cn = crate::testutil::client_cn(peer.as_deref());
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            if pq == "/fail" {
                return body::bytes_response(
                    400,
                    "text/plain",
                    "container \"c\" in pod \"p\" is waiting to start: ContainerCreating\n",
                );
            }
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from(format!("{cn} {pq}\n"))).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Bytes::from_static(b"more\n")).await;
            });
            let mut r = http::Response::new(ResponseBody::Stream(rx));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            r
        })
        .await
    }

    /// A cluster PKI in a temp dir and the API server's kubelet client built from it.
    fn test_pki_and_client() -> (tempfile::TempDir, rk3s_pki::ServerPki, KubeletClient) {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let Ok(pki) = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.path())) else {
            panic!("pki")
        };
        let Ok((cert_pem, key_pem)) = rk3s_pki::issue_client_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            1,
        ) else {
            panic!("client cert")
        };
        let Ok(live) = rk3s_pki::LiveCert::from_pem(&cert_pem, &key_pem) else {
            panic!("live cert")
        };
        let Ok(client) = KubeletClient::new(&KubeletClientConfig {
            client_cert: Arc::new(live),
            ca_pem: pki.ca_cert_pem.clone(),
        }) else {
            panic!("client")
        };
        (dir, pki, client)
    }

    #[tokio::test]
    async fn kubelet_client_presents_a_renewed_certificate_on_new_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.path())).expect("pki");
        let issue = || {
            rk3s_pki::issue_client_cert_for(
                &pki.ca_cert_pem,
                &pki.ca_key_pem,
                "kube-apiserver-kubelet-client",
                &["system:masters"],
                Duration::from_secs(30),
            )
            .expect("client cert")
        };
        let (c1, k1) = issue();
        let live = Arc::new(rk3s_pki::LiveCert::from_pem(&c1, &k1).expect("live"));
        let client = KubeletClient::new(&KubeletClientConfig {
            client_cert: live.clone(),
            ca_pem: pki.ca_cert_pem.clone(),
        })
        .expect("client");
        // A kubelet that records the client certificate of each connection.
        let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
        let record = seen.clone();
        let addr = crate::testutil::https_server(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            &["127.0.0.1"],
            &pki.ca_cert_pem,
            move |peer, _req| {
                let record = record.clone();
                async move {
                    if let Some(c) = peer {
                        let mut seen = record.lock().expect("lock");
                        if seen.last() != Some(&c) {
                            seen.push(c);
                        }
                    }
                    body::bytes_response(200, "text/plain", "ok")
                }
            },
        )
        .await;
        let port = addr.port();
        let der = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .expect("pem")
                .expect("der")
                .to_vec()
        };
        let first_der = der(&c1);
        let r = client.get("127.0.0.1", port, "/healthz").await;
        assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200));
        let (c2, k2) = issue();
        live.update(&c2, &k2).expect("renewed");
        let second_der = der(&c2);
        assert_ne!(first_der, second_der);
        let r = client.get("127.0.0.1", port, "/healthz").await;
        assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200));
        assert_eq!(*seen.lock().expect("lock"), [first_der, second_der]);
        assert!(rk3s_pki::not_after(&c2).expect("c2") >= rk3s_pki::not_after(&c1).expect("c1"));
    }

    #[tokio::test]
    async fn kubelet_client_streams_and_maps_errors() {
        let (_dir, pki, c) = test_pki_and_client();
        let addr = fake_kubelet(&pki.ca_cert_pem, &pki.ca_key_pem).await;
        let r = c
            .get(
                "127.0.0.1",
                addr.port(),
                "/containerLogs/ns/p/c?follow=true",
            )
            .await;
        let Ok(r) = r else {
            panic!("get: {:?}", r.err().map(|e| e.message))
        };
        assert_eq!(r.status(), 200);
        let b = r.into_body().collect().await.map(|b| b.to_bytes());
        assert_eq!(
            b.ok().as_deref(),
            Some(&b"kube-apiserver-kubelet-client /containerLogs/ns/p/c?follow=true\nmore\n"[..])
        );
        let e = c.get("127.0.0.1", addr.port(), "/fail").await.err();
        assert_eq!(
            e.map(|e| (e.code, e.reason, e.message)),
            Some((
                400,
                "BadRequest".into(),
                "container \"c\" in pod \"p\" is waiting to start: ContainerCreating".into()
            ))
        );
        // A kubelet whose certificate is not from the cluster CA is refused.
        let Ok(other) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let Ok(pki2) = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(other.path())) else {
            panic!("pki")
        };
        let bad = fake_kubelet(&pki2.ca_cert_pem, &pki2.ca_key_pem).await;
        let e = c
            .get("127.0.0.1", bad.port(), "/healthz")
            .await
            .err()
            .map(|e| e.code);
        assert_eq!(e, Some(500));
        // Nothing listening.
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
            panic!("bind")
        };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(1);
        drop(l);
        let e = c
            .get("127.0.0.1", port, "/healthz")
            .await
            .err()
            .map(|e| e.message);
        assert!(e.as_deref().is_some_and(|m| m.contains("connect")), "{e:?}");
    }

    /// A fake kubelet that switches to the requested protocol and echoes bytes, after
    /// writing the request line and `X-Stream-Protocol-Version`; 400 without `Upgrade`.
    async fn fake_upgrading_kubelet(ca: &str, ca_key: &str) -> std::net::SocketAddr {
        use std::convert::Infallible;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok((cert, key)) =
            rk3s_pki::issue_serving_cert(ca, ca_key, "node", &["127.0.0.1".to_string()], 1)
        else {
            panic!("cert")
        };
        let Ok(tls) = crate::server::tls_config(&cert, &key, ca) else {
            panic!("tls")
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("bind")
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("addr")
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    continue;
                };
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let Some(proto) = req.headers().get("upgrade").cloned() else {
                            return Ok::<_, Infallible>(body::bytes_response(
                                400,
                                "text/plain",
                                "Upgrade request required",
                            ));
                        };
                        let line = format!(
                            "{} {} {}\n",
                            req.method(),
                            req.uri(),
                            req.headers()
                                .get("x-stream-protocol-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
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
                        r.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("Upgrade"),
                        );
                        r.headers_mut().insert(http::header::UPGRADE, proto);
                        r.headers_mut().insert(
                            "x-stream-protocol-version",
                            http::HeaderValue::from_static("v4.channel.k8s.io"),
                        );
                        Ok(r)
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .with_upgrades(),
                );
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
        let Ok(front) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("bind")
        };
        let Ok(front_addr) = front.local_addr() else {
            panic!("addr")
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = front.accept().await {
                let client = client.clone();
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        let client = client.clone();
                        async move {
                            let on = hyper::upgrade::on(&mut req);
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let r = client
                                .upgrade(
                                    "127.0.0.1",
                                    kubelet.port(),
                                    req.method(),
                                    &pq,
                                    req.headers(),
                                    on,
                                )
                                .await;
                            Ok::<_, Infallible>(r.unwrap_or_else(|e| {
                                body::bytes_response(e.code, "text/plain", e.message)
                            }))
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .with_upgrades(),
                );
            }
        });
        let Ok(mut s) = tokio::net::TcpStream::connect(front_addr).await else {
            panic!("connect")
        };
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
        assert!(
            head.to_ascii_lowercase().contains("upgrade: spdy/3.1"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "{head}"
        );
        // Bytes now flow both ways through the API server hop.
        assert!(s.write_all(b"ping").await.is_ok());
        let mut echo = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo)).await;
        assert!(matches!(r, Ok(Ok(4))), "{r:?}");
        assert_eq!(&echo, b"ping");
        // Without an upgrade the kubelet's refusal becomes an error status.
        let Ok(mut s) = tokio::net::TcpStream::connect(front_addr).await else {
            panic!("connect")
        };
        assert!(s
            .write_all(b"GET /exec/ns/p/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .is_ok());
        let mut resp = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut resp)).await;
        assert!(
            resp.starts_with("HTTP/1.1 400") && resp.ends_with("Upgrade request required"),
            "{resp}"
        );
    }

    #[test]
    fn repeated_query_values() {
        assert_eq!(
            all_values(
                Some("command=sh&stdin=1&command=-c&command=echo%20hi"),
                "command"
            ),
            vec!["sh", "-c", "echo hi"]
        );
        assert!(all_values(None, "command").is_empty());
    }

    #[test]
    fn kubelet_query_keeps_known_options() {
        let q = Query::parse(Some("container=c&follow=true&tailLines=10&timestamps=1&pretty=true&sinceTime=2024-01-01T00:00:00Z"));
        assert_eq!(
            log_query(&q),
            "follow=true&timestamps=true&tailLines=10&sinceTime=2024-01-01T00%3A00%3A00Z"
        );
        assert_eq!(kubelet_error(400, "x".into()).reason, "BadRequest");
        assert_eq!(
            kubelet_error(500, String::new()).message,
            "the kubelet answered 500"
        );
    }
}
