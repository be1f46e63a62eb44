//! `run` against a fake API server (a tower service answering list and watch requests
//! in-process): the informers feed the records, a watch event rebuilds them, and the
//! server answers on 127.0.0.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use http::{Request, Response};
use kube::client::Body;
use rk3s_dns::{run, DnsOptions};
use serde_json::json;
use tokio::net::{TcpListener, UdpSocket};

fn service(name: &str, ip: &str, rv: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv, "uid": format!("uid-{name}")},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn list(kind: &str, api_version: &str, items: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})).unwrap()
}

/// The fake API server: fixed lists; the first watch of Services delivers one ADDED
/// event and ends, every other watch stays open (silent) for a minute.
#[derive(Clone, Default)]
struct FakeApi {
    services_watches: Arc<AtomicUsize>,
    configmap_field_selectors: Arc<Mutex<Vec<String>>>,
}

impl tower_service::Service<Request<Body>> for FakeApi {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let me = self.clone();
        Box::pin(async move {
            let watch = query.contains("watch=true");
            if path == "/api/v1/namespaces/kube-system/configmaps" {
                me.configmap_field_selectors
                    .lock()
                    .unwrap()
                    .push(query.clone());
            }
            let body: Vec<u8> = if watch {
                if path == "/api/v1/services"
                    && me.services_watches.fetch_add(1, Ordering::SeqCst) == 0
                {
                    let ev = json!({"type": "ADDED", "object": service("late", "10.43.0.99", "2")});
                    let mut b = serde_json::to_vec(&ev).unwrap();
                    b.push(b'\n');
                    b
                } else {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Vec::new()
                }
            } else {
                match path.as_str() {
                    "/api/v1/services" => {
                        list("ServiceList", "v1", vec![service("web", "10.43.0.20", "1")])
                    }
                    "/apis/discovery.k8s.io/v1/endpointslices" => {
                        list("EndpointSliceList", "discovery.k8s.io/v1", vec![])
                    }
                    "/api/v1/nodes" => list(
                        "NodeList",
                        "v1",
                        vec![
                            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "resourceVersion": "1"},
                            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.7"}]}}),
                        ],
                    ),
                    "/api/v1/namespaces/kube-system/configmaps" => list(
                        "ConfigMapList",
                        "v1",
                        vec![
                            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns-custom", "namespace": "kube-system", "resourceVersion": "1"},
                            "data": {"extra.hosts": "10.1.1.1 registry.local\n"}}),
                        ],
                    ),
                    _ => {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
                        return Ok(Response::builder()
                            .status(404)
                            .body(Body::from(serde_json::to_vec(&status).unwrap()))
                            .unwrap());
                    }
                }
            };
            Ok(Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap())
        })
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 (bound, checked, released).
async fn free_port() -> SocketAddr {
    for _ in 0..20 {
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = u.local_addr().unwrap();
        if TcpListener::bind(addr).await.is_ok() {
            return addr;
        }
    }
    panic!("no free port");
}

async fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    s.connect(server).await.ok()?;
    let mut m = Message::new(77, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    s.send(&m.to_vec().unwrap()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..n]).ok()
}

async fn ask_until(server: SocketAddr, name: &str, want: &str) -> Message {
    for _ in 0..100 {
        if let Some(m) = ask(server, name, RecordType::A).await {
            if m.answers.iter().any(|r| r.data.to_string() == want) {
                return m;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never resolved to {want}");
}

#[tokio::test]
async fn run_serves_records_from_the_informers_and_follows_changes() {
    let api = FakeApi::default();
    let client = kube::Client::new(api.clone(), "default");
    let addr = free_port().await;
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "# no upstream\n").unwrap();
    let opts = DnsOptions {
        listen: vec![addr],
        cluster_domain: "cluster.local".into(),
        resolv_conf: Some(resolv),
        ttl: 5,
        custom_config: None,
    };
    let task = tokio::spawn(run(client, opts));

    let m = ask_until(addr, "web.default.svc.cluster.local.", "10.43.0.20").await;
    assert!(m.metadata.authoritative);
    ask_until(addr, "node-a.", "192.168.50.7").await;
    ask_until(addr, "registry.local.", "10.1.1.1").await;
    // The ADDED event of the Services watch is picked up by a rebuild.
    ask_until(addr, "late.default.svc.cluster.local.", "10.43.0.99").await;
    // No upstream in the resolv.conf file: SERVFAIL, never a public resolver.
    let m = ask(addr, "example.test.", RecordType::A)
        .await
        .expect("an answer");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    let selectors = api.configmap_field_selectors.lock().unwrap().clone();
    assert!(
        selectors
            .iter()
            .all(|q| q.contains("fieldSelector=metadata.name%3Dcoredns-custom")),
        "{selectors:?}"
    );
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test]
async fn run_rejects_bad_options() {
    let client = kube::Client::new(FakeApi::default(), "default");
    let e = run(
        client.clone(),
        DnsOptions {
            listen: vec![],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, rk3s_dns::DnsError::NoListen), "{e}");
    let e = run(
        client,
        DnsOptions {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            cluster_domain: "bad domain".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, rk3s_dns::DnsError::ClusterDomain(..)), "{e}");
}
