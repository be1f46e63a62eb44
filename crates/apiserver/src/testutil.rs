//! Test helpers: a whole API server on a fresh SQLite store, and requests to it as the
//! cluster admin (no TLS, no socket: [`ApiServer::handle`]). Other crates' tests use them
//! through the `testutil` feature (a dev-dependency); they panic on set-up failures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::{ApiServer, Config, UserInfo};

/// The configuration of a test server on `store`, with a PKI made in `dir/server`
/// (advertised at 192.0.2.7:6443, service CIDR `10.43.0.0/24`, node ports 30000-30099).
pub fn config(
    dir: &std::path::Path,
    store: Arc<dyn rk3s_store::Store>,
) -> (Config, rk3s_pki::ServerPki) {
    let pki =
        rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.join("server"))).expect("pki");
    let config = Config {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        advertise_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        advertise_port: 6443,
        serving_cert_pem: pki.serving_cert_pem.clone(),
        serving_key_pem: pki.serving_key_pem.clone(),
        client_ca_pem: pki.ca_cert_pem.clone(),
        store,
        service_cidr: "10.43.0.0/24".into(),
        node_port_range: (30000, 30099),
        service_account_key_pem: pki.sa_key_pem.clone(),
        service_account_pub_pem: pki.sa_pub_pem.clone(),
        service_account_issuer: "https://kubernetes.default.svc.cluster.local".into(),
        token_auth_file: None,
        audit: None,
        kubelet_client: None,
        front_proxy: None,
    };
    (config, pki)
}

/// A server on a new SQLite store in `dir`, and its PKI.
pub async fn server_with_pki(dir: &std::path::Path) -> (ApiServer, rk3s_pki::ServerPki) {
    let store: Arc<dyn rk3s_store::Store> =
        Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.join("state.db")).expect("store"));
    let (config, pki) = config(dir, store);
    (ApiServer::new(&config).await.expect("server"), pki)
}

/// A server on a new SQLite store in `dir` (see [`config`]).
pub async fn server(dir: &std::path::Path) -> ApiServer {
    server_with_pki(dir).await.0
}

/// The cluster admin (`system:admin` in `system:masters`).
pub fn admin() -> UserInfo {
    UserInfo::new("system:admin", &["system:masters", "system:authenticated"])
}

/// `method path` with a JSON body, as `system:admin`: the status code and JSON answer.
pub async fn call(api: &ApiServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call_with_type(api, method, path, "application/json", body).await
}

/// Like [`call`], with the body's `content_type` (e.g. a patch type).
pub async fn call_with_type(
    api: &ApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (parts, ()) = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(())
        .expect("request")
        .into_parts();
    let body = body
        .map(|b| Bytes::from(serde_json::to_vec(&b).expect("json")))
        .unwrap_or_default();
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let resp = api.handle(parts, body, Some(admin)).await;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// An HTTPS server on 127.0.0.1 for tests (a fake kubelet or extension API server): a
/// serving certificate for `names` from the CA `ca_cert_pem`/`ca_key_pem`, client
/// certificates verified against `client_ca_pem` (optional), every request answered by
/// `answer(client certificate DER, request)`. Returns its address; it serves until the
/// runtime ends.
pub async fn https_server<F, Fut>(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[&str],
    client_ca_pem: &str,
    answer: F,
) -> SocketAddr
where
    F: Fn(Option<Vec<u8>>, hyper::Request<hyper::body::Incoming>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = crate::body::Response> + Send + 'static,
{
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (cert, key) =
        rk3s_pki::issue_serving_cert(ca_cert_pem, ca_key_pem, "test-server", &names, 1)
            .expect("serving certificate");
    let tls = crate::server::tls_config(&cert, &key, client_ca_pem).expect("tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            let answer = answer.clone();
            let svc = hyper::service::service_fn(move |req| {
                let (answer, peer) = (answer.clone(), peer.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(peer, req).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// The user name (subject CN) of a client certificate, empty if none or unreadable.
pub fn client_cn(der: Option<&[u8]>) -> String {
    der.and_then(|d| rk3s_pki::client_identity(d).ok())
        .map(|i| i.user)
        .unwrap_or_default()
}
