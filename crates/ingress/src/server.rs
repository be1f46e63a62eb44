//! The listeners and the reverse proxy: plain HTTP/1.1 on the `web` addresses, TLS with
//! HTTP/2 or HTTP/1.1 (ALPN) on the `websecure` addresses; each request is routed by the
//! current [`RoutingTable`] snapshot and forwarded to a backend endpoint over HTTP/1.1
//! (keep-alive connections pooled per endpoint, see [`crate::upstream`]), `Upgrade`
//! requests (WebSocket) are spliced byte for byte once both sides switched protocols.
//!
//! Answers of the proxy itself (Traefik's): 404 when no rule matches, 503 when the
//! backend has no ready endpoint, 502 when no endpoint accepts a connection or the
//! upstream exchange fails, 504 when the response headers do not arrive within the
//! request timeout, and redirects to HTTPS for the Ingresses that ask for it.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::routes::{Entrypoint, RoutingTable, Target};
use crate::tls::CertResolver;
use crate::upstream::{Pool, UpstreamError};
use crate::IngressError;

/// The body of every response the proxy sends.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection checks its idle time.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The proxy's timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From forwarding a request until the backend's response headers (504 after).
    pub request: Duration,
    /// A client connection without traffic and without a request in flight is closed.
    pub idle: Duration,
    /// Connecting to one endpoint (then the next one is tried).
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(60),
            idle: Duration::from_secs(180),
            connect: Duration::from_secs(5),
        }
    }
}

/// The state every connection reads: the routing snapshot (swapped whole by the
/// controller), the certificates, the timeouts.
#[derive(Debug)]
pub struct State {
    routes: RwLock<Arc<RoutingTable>>,
    /// The certificates of the HTTPS listener.
    pub certs: Arc<CertResolver>,
    /// The timeouts.
    pub timeouts: Timeouts,
    /// The node name, sent as `X-Forwarded-Server`.
    pub server_name: String,
    /// Idle keep-alive connections to the backends.
    pub pool: Arc<Pool>,
}

impl State {
    /// State with an empty routing table.
    pub fn new(
        certs: Arc<CertResolver>,
        timeouts: Timeouts,
        server_name: impl Into<String>,
    ) -> State {
        State {
            routes: RwLock::new(Arc::new(RoutingTable::default())),
            certs,
            timeouts,
            server_name: server_name.into(),
            pool: Arc::new(Pool::default()),
        }
    }

    /// Replaces the routing table (requests already routed keep the old one).
    pub fn set_routes(&self, table: RoutingTable) {
        let table = Arc::new(table);
        match self.routes.write() {
            Ok(mut g) => *g = table,
            Err(p) => *p.into_inner() = table,
        }
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RoutingTable> {
        match self.routes.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Bound listening sockets, not yet serving.
#[derive(Debug)]
pub struct Listeners {
    http: Vec<TcpListener>,
    https: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every address (port 0 picks a free port).
    pub async fn bind(
        http: &[SocketAddr],
        https: &[SocketAddr],
    ) -> Result<Listeners, IngressError> {
        let mut out = Listeners {
            http: Vec::new(),
            https: Vec::new(),
        };
        for (addrs, list) in [(http, &mut out.http), (https, &mut out.https)] {
            for a in addrs {
                let l = TcpListener::bind(a)
                    .await
                    .map_err(|source| IngressError::Bind { addr: *a, source })?;
                list.push(l);
            }
        }
        Ok(out)
    }

    /// The bound plain HTTP addresses.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound HTTPS addresses.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until the future is dropped (accept errors are logged and retried).
    pub async fn serve(self, state: Arc<State>) -> Result<(), IngressError> {
        let tls_config = crate::tls::server_config(state.certs.clone())
            .map_err(|e| IngressError::Tls(e.to_string()))?;
        let acceptor = TlsAcceptor::from(Arc::new(tls_config));
        let https_port = self.https_addrs().first().map(|a| a.port()).unwrap_or(443);
        let mut tasks = JoinSet::new();
        for l in self.http {
            tasks.spawn(accept_loop(
                l,
                Entrypoint::Web,
                None,
                state.clone(),
                https_port,
            ));
        }
        for l in self.https {
            tasks.spawn(accept_loop(
                l,
                Entrypoint::WebSecure,
                Some(acceptor.clone()),
                state.clone(),
                https_port,
            ));
        }
        match tasks.join_next().await {
            None => Err(IngressError::Server("no listener".into())),
            Some(r) => Err(IngressError::Server(format!("a listener stopped: {r:?}"))),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ep: Entrypoint,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    https_port: u16,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "ingress: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let cx = Arc::new(ConnCtx {
            state: state.clone(),
            entrypoint: ep,
            peer,
            local,
            https_port,
            in_flight: AtomicUsize::new(0),
        });
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, cx, true).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_connection(s, cx, false).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "ingress: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "ingress: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// What a request needs to know of its connection.
struct ConnCtx {
    state: Arc<State>,
    entrypoint: Entrypoint,
    peer: SocketAddr,
    local: SocketAddr,
    https_port: u16,
    in_flight: AtomicUsize,
}

struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection<S>(io: S, cx: Arc<ConnCtx>, http1_only: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Activity {
        inner: io,
        start,
        last: last.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    if http1_only {
        builder = builder.http1_only();
    }
    let svc_cx = cx.clone();
    let svc = hyper::service::service_fn(move |req| {
        let cx = svc_cx.clone();
        async move { Ok::<_, Infallible>(handle(req, &cx).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle = cx.state.timeouts.idle;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %cx.peer, error = %e, "ingress: connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(IDLE_CHECK.min(idle)) => {
                let since = start.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if since >= idle && cx.in_flight.load(Ordering::SeqCst) == 0 {
                    tracing::debug!(peer = %cx.peer, "ingress: closing idle connection");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// An I/O stream that records when it last moved bytes.
struct Activity<S> {
    inner: S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Activity<S> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

/// The host a request is for: the absolute URI's authority (HTTP/2 `:authority`),
/// else the Host header.
fn request_host<B>(req: &Request<B>) -> String {
    if let Some(a) = req.uri().authority() {
        return a.as_str().to_string();
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Splits `host[:port]` (brackets kept for IPv6).
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        match host.find(']') {
            Some(i) => {
                let (h, rest) = host.split_at(i + 1);
                (h, rest.strip_prefix(':'))
            }
            None => (host, None),
        }
    } else if host.matches(':').count() == 1 {
        match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    } else {
        (host, None)
    }
}

async fn handle(req: Request<Incoming>, cx: &ConnCtx) -> Response<Body> {
    let _guard = InFlight::new(&cx.in_flight);
    let host = request_host(&req);
    let target: Arc<Target> = {
        let routes = cx.state.routes();
        match routes.lookup(cx.entrypoint, &host, req.uri().path()) {
            Some(t) => t.clone(),
            None => return text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    };
    if cx.entrypoint == Entrypoint::Web {
        if let Some(r) = target.redirect {
            return redirect(&req, &host, r.permanent, cx.https_port);
        }
    }
    if target.backend.endpoints.is_empty() {
        tracing::debug!(ingress = %target.ingress, service = %target.backend.service, "ingress: no ready endpoint");
        return text(StatusCode::SERVICE_UNAVAILABLE, "no available server\n");
    }
    forward(req, &target, cx, host).await
}

fn redirect<B>(req: &Request<B>, host: &str, permanent: bool, https_port: u16) -> Response<Body> {
    let (hostname, _) = split_host_port(host);
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = format!("https://{hostname}{port}{pq}");
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let status = match (permanent, get) {
        (true, true) => StatusCode::MOVED_PERMANENTLY,
        (true, false) => StatusCode::PERMANENT_REDIRECT,
        (false, true) => StatusCode::FOUND,
        (false, false) => StatusCode::TEMPORARY_REDIRECT,
    };
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "bad host\n"),
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1, Go's reverse proxy list), never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` +
/// `Upgrade`).
fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn client_ip(a: SocketAddr) -> IpAddr {
    a.ip().to_canonical()
}

fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

async fn forward(
    mut req: Request<Incoming>,
    target: &Target,
    cx: &ConnCtx,
    host: String,
) -> Response<Body> {
    let upgrade = upgrade_of(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.clone());
    }
    let tls = cx.entrypoint == Entrypoint::WebSecure;
    let ip = client_ip(cx.peer).to_string();
    let (_, host_port) = split_host_port(&host);
    let port = host_port
        .map(str::to_string)
        .unwrap_or_else(|| cx.local.port().to_string());
    // The client is not trusted: its X-Forwarded-* headers are replaced (Traefik's
    // default without forwardedHeaders.trustedIPs).
    set_header(&mut parts.headers, "x-forwarded-for", &ip);
    set_header(
        &mut parts.headers,
        "x-forwarded-proto",
        if tls { "https" } else { "http" },
    );
    set_header(&mut parts.headers, "x-forwarded-host", &host);
    set_header(&mut parts.headers, "x-forwarded-port", &port);
    set_header(
        &mut parts.headers,
        "x-forwarded-server",
        &cx.state.server_name,
    );
    set_header(&mut parts.headers, "x-real-ip", &ip);
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;

    let timeouts = cx.state.timeouts;
    let req = Request::from_parts(parts, body);
    let exchange =
        cx.state
            .pool
            .exchange(&target.backend, req, upgrade.is_some(), timeouts.connect);
    let (mut resp, addr) = match tokio::time::timeout(timeouts.request, exchange).await {
        Err(_) => return text(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n"),
        Ok(Err(UpstreamError::NoEndpoint)) => {
            tracing::warn!(ingress = %target.ingress, service = %target.backend.service, "ingress: no endpoint accepted a connection");
            return text(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
        }
        Ok(Err(e)) => {
            tracing::debug!(ingress = %target.ingress, service = %target.backend.service, error = %e, "ingress: upstream request failed");
            return text(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
        }
        Ok(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return text(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice(client_upgrade, upstream_upgrade, addr));
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, empty());
    }
    strip_hop_by_hop(resp.headers_mut());
    resp.map(|b| b.boxed_unsync())
}

/// Copies bytes both ways between the upgraded client and upstream connections.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    addr: SocketAddr,
) {
    let (c, u) = futures_util::future::join(client, upstream).await;
    match (c, u) {
        (Ok(c), Ok(u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(endpoint = %addr, error = %e, "ingress: upgraded connection ended");
            }
        }
        (c, u) => tracing::debug!(
            endpoint = %addr,
            client = ?c.err(),
            upstream = ?u.err(),
            "ingress: upgrade failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.io:8080"), ("a.io", Some("8080")));
        assert_eq!(split_host_port("a.io"), ("a.io", None));
        assert_eq!(split_host_port("[::1]:443"), ("[::1]", Some("443")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn redirects_as_traefik() {
        let get = Request::get("/a?b=1").body(()).unwrap();
        let post = Request::post("/a").body(()).unwrap();
        let r = redirect(&get, "h.io:80", true, 443);
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.headers()["location"], "https://h.io/a?b=1");
        assert_eq!(
            redirect(&post, "h.io", true, 443).status(),
            StatusCode::PERMANENT_REDIRECT
        );
        assert_eq!(
            redirect(&get, "h.io", false, 443).status(),
            StatusCode::FOUND
        );
        let r = redirect(&post, "h.io", false, 8443);
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.headers()["location"], "https://h.io:8443/a");
    }
}
