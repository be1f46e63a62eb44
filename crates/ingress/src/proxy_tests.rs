//! Proxying tests: the listeners on 127.0.0.1 (random ports) in front of hyper backends
//! on 127.0.0.1, with a routing state built in the test (no API server).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::networking::v1::{Ingress, IngressTLS};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::routes::tests::{backend, ingress, slice, svc};
use crate::routes::{build, Sources, REDIRECT_ENTRY_POINT_ANNOTATION};
use crate::server::{Listeners, State, Timeouts};
use crate::tls::tests::{self_signed, tls_secret};
use crate::tls::{certified_key, default_certificate, CertResolver, TlsTable};

/// A backend that answers with what it saw (JSON), echoes upgraded connections, and
/// waits 2 s on `/slow`.
async fn start_backend(name: &'static str) -> SocketAddr {
    start_counting_backend(name, Arc::default(), true).await
}

/// A backend that counts its connections; without keep-alive it closes each after one
/// response.
async fn start_counting_backend(
    name: &'static str,
    connections: Arc<AtomicUsize>,
    keep_alive: bool,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| backend_handle(name, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn backend_handle(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let r = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
        return Ok(r);
    }
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = serde_json::json!({
        "name": name,
        "path": req.uri().to_string(),
        "host": h("host"),
        "xff": h("x-forwarded-for"),
        "proto": h("x-forwarded-proto"),
        "xfh": h("x-forwarded-host"),
        "xfp": h("x-forwarded-port"),
        "version": format!("{:?}", req.version()),
    });
    Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
}

/// A closed port on 127.0.0.1.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

struct Proxy {
    http: SocketAddr,
    https: SocketAddr,
    state: Arc<State>,
}

async fn start_proxy(src: &Sources, timeouts: Timeouts) -> Proxy {
    let built = build(src, "rk3s");
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    let certs = Arc::new(CertResolver::new(Arc::new(default_certificate().unwrap())));
    certs.set(built.tls);
    let state = Arc::new(State::new(certs, timeouts, "node-1"));
    state.set_routes(built.routes);
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let l = Listeners::bind(&[loopback], &[loopback]).await.unwrap();
    let (http, https) = (l.http_addrs()[0], l.https_addrs()[0]);
    tokio::spawn(l.serve(state.clone()));
    Proxy { http, https, state }
}

/// Services `a`, `b` (backends A, B), `c` (no endpoints), `d` (a closed port, then B),
/// `e` (closed ports only), and the Ingresses given.
fn sources(a: SocketAddr, b: SocketAddr, closed: u16, ings: Vec<Ingress>) -> Sources {
    Sources {
        ingresses: ings.into_iter().map(Arc::new).collect(),
        classes: vec![],
        services: vec![
            svc("ns", "a", &[(Some("http"), 80)]),
            svc("ns", "b", &[(None, 80)]),
            svc("ns", "c", &[(None, 80)]),
            svc("ns", "d", &[(None, 80)]),
            svc("ns", "e", &[(None, 80)]),
        ],
        slices: vec![
            slice(
                "ns",
                "a",
                (Some("http"), i32::from(a.port())),
                &[("127.0.0.1", Some(true))],
            ),
            slice(
                "ns",
                "b",
                (None, i32::from(b.port())),
                &[("127.0.0.1", Some(true))],
            ),
            // Endpoint order: 127.0.0.1 (closed port) and 127.0.0.2 (closed) for e.
            slice(
                "ns",
                "e",
                (None, i32::from(closed)),
                &[("127.0.0.1", Some(true)), ("127.0.0.2", Some(true))],
            ),
        ],
        secrets: vec![],
    }
}

async fn request<IO>(io: IO, req: Request<Empty<Bytes>>) -> (StatusCode, HeaderMap, String)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = s.send_request(req).await.unwrap();
    let (p, b) = r.into_parts();
    let body = b.collect().await.unwrap().to_bytes();
    (
        p.status,
        p.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    request(s, req).await
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
}

fn basic_ingresses() -> Vec<Ingress> {
    vec![ingress(
        "ns",
        "i",
        vec![
            (
                Some("a.io"),
                vec![("/", "Prefix", backend("a", Err("http")))],
            ),
            (Some("b.io"), vec![("/", "Prefix", backend("b", Ok(80)))]),
            (Some("c.io"), vec![("/", "Prefix", backend("c", Ok(80)))]),
            (Some("e.io"), vec![("/", "Prefix", backend("e", Ok(80)))]),
        ],
    )]
}

#[tokio::test]
async fn host_routing_errors_and_forwarded_headers() {
    let (a, b) = (start_backend("A").await, start_backend("B").await);
    let p = start_proxy(
        &sources(a, b, closed_port().await, basic_ingresses()),
        Timeouts::default(),
    )
    .await;

    let (st, _, body) = get(p.http, "a.io", "/x?y=1").await;
    assert_eq!(st, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["name"], "A");
    assert_eq!(v["path"], "/x?y=1");
    assert_eq!(v["host"], "a.io");
    assert_eq!(v["xff"], "127.0.0.1");
    assert_eq!(v["proto"], "http");
    assert_eq!(v["xfh"], "a.io");
    assert_eq!(v["xfp"], p.http.port().to_string());
    let (st, _, body) = get(p.http, "B.IO:8080", "/").await;
    assert_eq!(st, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["name"], "B");
    assert_eq!(v["xfp"], "8080");

    let (st, _, body) = get(p.http, "nothing.io", "/").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(body, "404 page not found\n");
    let (st, _, _) = get(p.http, "c.io", "/").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    // Every endpoint refuses: 502.
    let (st, _, _) = get(p.http, "e.io", "/").await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn connect_failure_retries_the_next_endpoint() {
    let b = start_backend("B").await;
    let closed = closed_port().await;
    let src = Sources {
        ingresses: vec![Arc::new(ingress(
            "ns",
            "i",
            vec![(None, vec![("/", "Prefix", backend("d", Ok(80)))])],
        ))],
        classes: vec![],
        services: vec![svc("ns", "d", &[(Some("http"), 80)])],
        // The same port name in two slices: a closed port and the backend.
        slices: vec![
            slice(
                "ns",
                "d",
                (Some("http"), i32::from(closed)),
                &[("127.0.0.1", Some(true))],
            ),
            slice(
                "ns",
                "d",
                (Some("http"), i32::from(b.port())),
                &[("127.0.0.1", Some(true))],
            ),
        ],
        secrets: vec![],
    };
    let p = start_proxy(&src, Timeouts::default()).await;
    for _ in 0..4 {
        let (st, _, body) = get(p.http, "any.io", "/").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(json(&body)["name"], "B");
    }
}

#[tokio::test]
async fn request_timeout_is_504_and_redirects_to_https() {
    let (a, b) = (start_backend("A").await, start_backend("B").await);
    let mut ings = basic_ingresses();
    let mut r = ingress(
        "ns",
        "r",
        vec![(
            Some("r.io"),
            vec![("/", "Prefix", backend("a", Err("http")))],
        )],
    );
    r.metadata.annotations = Some(
        [(
            REDIRECT_ENTRY_POINT_ANNOTATION.to_string(),
            "https".to_string(),
        )]
        .into(),
    );
    ings.push(r);
    let timeouts = Timeouts {
        request: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let p = start_proxy(&sources(a, b, closed_port().await, ings), timeouts).await;
    let (st, _, _) = get(p.http, "a.io", "/slow").await;
    assert_eq!(st, StatusCode::GATEWAY_TIMEOUT);
    let (st, h, _) = get(p.http, "r.io", "/p?q").await;
    assert_eq!(st, StatusCode::FOUND);
    assert_eq!(
        h["location"],
        format!("https://r.io:{}/p?q", p.https.port())
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (a, b) = (start_backend("A").await, start_backend("B").await);
    let timeouts = Timeouts {
        idle: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let p = start_proxy(
        &sources(a, b, closed_port().await, basic_ingresses()),
        timeouts,
    )
    .await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the idle connection is closed");
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    let (a, b) = (start_backend("A").await, start_backend("B").await);
    let p = start_proxy(
        &sources(a, b, closed_port().await, basic_ingresses()),
        Timeouts::default(),
    )
    .await;
    let s = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/ws")
        .header("host", "a.io")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let up = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(up);
    for msg in [&b"hello"[..], b"second message"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

/// Accepts any certificate (the tests compare the served certificate themselves).
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(roots: Option<&str>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap();
    let mut cfg = match roots {
        Some(pem) => {
            let mut store = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                store.add(c.unwrap()).unwrap();
            }
            b.with_root_certificates(store).with_no_client_auth()
        }
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let s = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), s)
        .await
}

fn served_cert(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn tls_by_sni_live_updates_and_http2() {
    let (a, b) = (start_backend("A").await, start_backend("B").await);
    let (crt_a, key_a) = self_signed(&["a.io"]);
    let (crt_w, key_w) = self_signed(&["*.w.io"]);
    let mut ings = basic_ingresses();
    ings[0].spec.as_mut().unwrap().tls = Some(vec![IngressTLS {
        hosts: Some(vec!["a.io".into()]),
        secret_name: Some("a-tls".into()),
    }]);
    let mut w = ingress(
        "ns",
        "w",
        vec![(Some("*.w.io"), vec![("/", "Prefix", backend("b", Ok(80)))])],
    );
    w.spec.as_mut().unwrap().tls = Some(vec![IngressTLS {
        hosts: Some(vec!["*.w.io".into()]),
        secret_name: Some("w-tls".into()),
    }]);
    ings.push(w);
    let mut src = sources(a, b, closed_port().await, ings);
    src.secrets = vec![
        Arc::new(tls_secret("ns", "a-tls", &crt_a, &key_a)),
        Arc::new(tls_secret("ns", "w-tls", &crt_w, &key_w)),
    ];
    let p = start_proxy(&src, Timeouts::default()).await;

    // a.io: its Secret's certificate, verified against it as the only root.
    let s = tls_connect(p.https, "a.io", client_config(Some(&crt_a), &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(served_cert(&s), der_of(&crt_a));
    let req = Request::get("/")
        .header("host", "a.io")
        .body(Empty::new())
        .unwrap();
    let (st, _, body) = request(s, req).await;
    assert_eq!(st, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["name"], "A");
    assert_eq!(v["proto"], "https");
    // Wildcard host.
    let s = tls_connect(p.https, "x.w.io", client_config(Some(&crt_w), &[]))
        .await
        .unwrap();
    assert_eq!(served_cert(&s), der_of(&crt_w));
    // No Secret for that name: the default certificate, which a.io's root rejects.
    let s = tls_connect(p.https, "b.io", client_config(None, &[]))
        .await
        .unwrap();
    let default = served_cert(&s);
    assert_ne!(default, der_of(&crt_a));
    assert_ne!(default, der_of(&crt_w));
    assert!(
        tls_connect(p.https, "b.io", client_config(Some(&crt_a), &[]))
            .await
            .is_err()
    );

    // A changed Secret is served to the next connection.
    let (crt_a2, key_a2) = self_signed(&["a.io"]);
    let mut table = TlsTable::default();
    table.add(
        "a.io",
        Arc::new(certified_key(crt_a2.as_bytes(), key_a2.as_bytes()).unwrap()),
    );
    p.state.certs.set(table);
    let s = tls_connect(p.https, "a.io", client_config(None, &[]))
        .await
        .unwrap();
    assert_eq!(served_cert(&s), der_of(&crt_a2));

    // HTTP/2 by ALPN; the backend gets HTTP/1.1.
    let s = tls_connect(p.https, "a.io", client_config(None, &[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/one", "/two"] {
        let req = Request::get(format!("https://a.io{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v = json(&String::from_utf8_lossy(&body));
        assert_eq!(v["name"], "A");
        assert_eq!(v["path"], path);
        assert_eq!(v["host"], "a.io");
        assert_eq!(v["version"], "HTTP/1.1");
    }
}

#[tokio::test]
async fn upstream_connections_are_reused_and_closed_ones_replaced() {
    let (kept, closing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = start_counting_backend("A", kept.clone(), true).await;
    let b = start_counting_backend("B", closing.clone(), false).await;
    let p = start_proxy(
        &sources(a, b, closed_port().await, basic_ingresses()),
        Timeouts::default(),
    )
    .await;
    for i in 0..5 {
        let (st, _, body) = get(p.http, "a.io", &format!("/{i}")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(json(&body)["name"], "A");
        // Let the connection go back to the pool.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        kept.load(Ordering::SeqCst),
        1,
        "one kept-alive upstream connection"
    );
    assert_eq!(p.state.pool.idle_count(), 1);
    // A backend that closes after each response: every request still succeeds.
    for i in 0..3 {
        let (st, _, body) = get(p.http, "b.io", &format!("/{i}")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(json(&body)["name"], "B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closing.load(Ordering::SeqCst), 3);
}
