//! `run` against a fake API server (a tower service answering lists, silent watches and
//! recording writes): the Ingress is served on 127.0.0.1 from the listed objects, its
//! status is set from the ingress Service, this node's EndpointSlice is applied, and a
//! bad Ingress gets a Warning Event without stopping the good one.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use kube::client::Body;
use rk3s_ingress::{run, IngressOptions};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})).unwrap()
}

fn ingress(name: &str, path: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1", "uid": format!("uid-{name}")},
        "spec": {"rules": [{"host": format!("{name}.io"), "http": {"paths": [
            {"path": path, "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}})
}

/// A write the fake API received: method, path, query, body.
type Write = (String, String, String, Value);

#[derive(Clone)]
struct FakeApi {
    backend: SocketAddr,
    writes: Arc<Mutex<Vec<Write>>>,
    secret_queries: Arc<Mutex<Vec<String>>>,
}

impl tower_service::Service<Request<Body>> for FakeApi {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let ok = |v: Vec<u8>| {
                Ok(Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(v))
                    .unwrap())
            };
            if method != "GET" {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                me.writes
                    .lock()
                    .unwrap()
                    .push((method, path.clone(), query, v.clone()));
                // Answer with an object of the right kind.
                let obj = if path.contains("/ingresses/") {
                    let mut i = ingress("good", "/");
                    i["status"] = v["status"].clone();
                    i
                } else if path.contains("/endpointslices/") {
                    v
                } else {
                    let mut e = v;
                    e["metadata"]["name"] = json!("ev");
                    e["metadata"]["namespace"] = json!("default");
                    e
                };
                return ok(serde_json::to_vec(&obj).unwrap());
            }
            if query.contains("watch=true") {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return ok(Vec::new());
            }
            let body = match path.as_str() {
                "/apis/networking.k8s.io/v1/ingresses" => list(
                    "IngressList",
                    "networking.k8s.io/v1",
                    vec![ingress("good", "/"), ingress("bad", "no-slash")],
                ),
                "/apis/networking.k8s.io/v1/ingressclasses" => {
                    list("IngressClassList", "networking.k8s.io/v1", vec![])
                }
                "/api/v1/services" => list(
                    "ServiceList",
                    "v1",
                    vec![
                        json!({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "1", "uid": "uid-web"},
                            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
                        json!({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "rk3s-ingress", "namespace": "kube-system", "resourceVersion": "1", "uid": "uid-ingress"},
                            "spec": {"type": "LoadBalancer", "ports": [{"name": "web", "port": 80}, {"name": "websecure", "port": 443}]},
                            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]}}}),
                    ],
                ),
                "/apis/discovery.k8s.io/v1/endpointslices" => list(
                    "EndpointSliceList",
                    "discovery.k8s.io/v1",
                    vec![
                        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": "web-1", "namespace": "default", "resourceVersion": "1",
                            "labels": {"kubernetes.io/service-name": "web"}},
                        "addressType": "IPv4",
                        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
                        "ports": [{"name": "http", "port": me.backend.port(), "protocol": "TCP"}]}),
                    ],
                ),
                "/api/v1/secrets" => {
                    me.secret_queries.lock().unwrap().push(query);
                    list("SecretList", "v1", vec![])
                }
                _ => {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
                    return Ok(Response::builder()
                        .status(404)
                        .body(Body::from(serde_json::to_vec(&status).unwrap()))
                        .unwrap());
                }
            };
            ok(body)
        })
    }
}

async fn start_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "backend saw {host}"
                        )))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn get(addr: SocketAddr, host: &str) -> Option<(StatusCode, String)> {
    let s = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let r = sender.send_request(req).await.ok()?;
    let status = r.status();
    let body = r.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn run_serves_and_writes_status_slice_and_events() {
    let backend = start_backend().await;
    let api = FakeApi {
        backend,
        writes: Arc::default(),
        secret_queries: Arc::default(),
    };
    let client = kube::Client::new(api.clone(), "default");
    let (http, https) = (free_port().await, free_port().await);
    let mut opts = IngressOptions::new("node-a", vec!["192.0.2.5".parse().unwrap()]);
    opts.http_listen = vec![http];
    opts.https_listen = vec![https];
    let task = tokio::spawn(run(client, opts));

    // The good Ingress is served, the bad one (invalid path) is not.
    let mut served = None;
    for _ in 0..100 {
        if let Some((StatusCode::OK, body)) = get(http, "good.io").await {
            served = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.as_deref(), Some("backend saw good.io"));
    assert_eq!(
        get(http, "bad.io").await.map(|r| r.0),
        Some(StatusCode::NOT_FOUND)
    );

    // Writes: the status of both Ingresses, the node's slice, an Event for the bad one.
    let mut writes = Vec::new();
    for _ in 0..100 {
        writes = api.writes.lock().unwrap().clone();
        let slice = writes
            .iter()
            .any(|w| w.1.ends_with("/endpointslices/rk3s-ingress-node-a"));
        let event = writes.iter().any(|w| w.1.contains("/events"));
        let statuses = writes.iter().filter(|w| w.1.ends_with("/status")).count();
        if slice && event && statuses == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{:#?}",
        writes.iter().map(|w| (&w.0, &w.1)).collect::<Vec<_>>()
    );
    // Each write once: the fake watches never show them, and nothing changed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = api.writes.lock().unwrap().clone();
    assert_eq!(writes.len(), 4, "{writes:#?}");
    let status = writes
        .iter()
        .find(|w| w.1 == "/apis/networking.k8s.io/v1/namespaces/default/ingresses/good/status")
        .unwrap_or_else(|| panic!("no status patch in {writes:?}"));
    assert_eq!(status.0, "PATCH");
    assert_eq!(
        status.3["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "192.0.2.10"}])
    );
    let slice = writes
        .iter()
        .find(|w| w.1 == "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/rk3s-ingress-node-a")
        .unwrap_or_else(|| panic!("no slice apply in {writes:?}"));
    assert!(slice.2.contains("fieldManager=rk3s-ingress"), "{}", slice.2);
    assert_eq!(
        slice.3["metadata"]["labels"]["kubernetes.io/service-name"],
        "rk3s-ingress"
    );
    assert_eq!(
        slice.3["metadata"]["ownerReferences"][0]["uid"],
        "uid-ingress"
    );
    assert_eq!(slice.3["endpoints"][0]["addresses"], json!(["192.0.2.5"]));
    assert_eq!(slice.3["endpoints"][0]["nodeName"], "node-a");
    assert_eq!(slice.3["ports"][0]["port"], http.port());
    let event = writes
        .iter()
        .find(|w| w.1.contains("/events"))
        .unwrap_or_else(|| panic!("no event in {writes:?}"));
    assert_eq!(event.3["reason"], "InvalidPath");
    assert_eq!(event.3["regarding"]["name"], "bad");
    assert_eq!(event.3["type"], "Warning");
    // Only TLS Secrets are watched.
    let q = api.secret_queries.lock().unwrap().clone();
    assert!(
        q.iter()
            .all(|q| q.contains("fieldSelector=type%3Dkubernetes.io%2Ftls")),
        "{q:?}"
    );
    assert!(!task.is_finished());
    task.abort();
}
