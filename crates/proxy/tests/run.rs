//! End-to-end test of `run_with`: a fake API server (an in-process tower service serving
//! list/watch of Services and EndpointSlices and accepting Events) feeds the proxy, whose
//! transactions go to `nft` inside a network namespace this test creates and deletes.
//! Skipped (with "SKIP") when not root or when `nft` / `ip` are missing.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use rk3s_proxy::{Nft, ProxyOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const TABLE: &str = "rk3s-proxy-run";

#[derive(Default)]
struct State {
    services: Vec<Value>,
    slices: Vec<Value>,
    watchers: Vec<(&'static str, mpsc::UnboundedSender<Bytes>)>,
    events: Vec<Value>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<State>>);

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(status: u16, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(v.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

impl FakeApi {
    /// Sends a watch event to every watcher of `kind`.
    fn push(&self, kind: &'static str, typ: &str, object: Value) {
        let mut st = self.0.lock().unwrap();
        let line = Bytes::from(format!("{}\n", json!({"type": typ, "object": object})));
        st.watchers
            .retain(|(k, tx)| *k != kind || tx.send(line.clone()).is_ok());
    }

    fn events(&self) -> Vec<Value> {
        self.0.lock().unwrap().events.clone()
    }

    async fn handle(self, req: Request<kube::client::Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if req.method() == http::Method::POST && path.ends_with("/events") {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            self.0.lock().unwrap().events.push(v.clone());
            return full(201, v);
        }
        let kind: &'static str = match path.as_str() {
            "/api/v1/services" => "services",
            "/apis/discovery.k8s.io/v1/endpointslices" => "endpointslices",
            _ => {
                return full(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                )
            }
        };
        if query.contains("watch=true") {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            self.0.lock().unwrap().watchers.push((kind, tx));
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::io::Error>(http_body::Frame::data(b)), rx))
            });
            return Response::builder()
                .status(200)
                .body(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())))
                .unwrap();
        }
        let st = self.0.lock().unwrap();
        let (list_kind, api_version, items) = match kind {
            "services" => ("ServiceList", "v1", st.services.clone()),
            _ => (
                "EndpointSliceList",
                "discovery.k8s.io/v1",
                st.slices.clone(),
            ),
        };
        full(
            200,
            json!({"kind": list_kind, "apiVersion": api_version, "metadata": {"resourceVersion": "10"}, "items": items}),
        )
    }
}

impl tower_service::Service<Request<kube::client::Body>> for FakeApi {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { Ok(me.handle(req).await) })
    }
}

fn service(name: &str, cluster_ip: &str, rv: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": name, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string()},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}
    })
}

fn slice(service: &str, ips: &[&str], rv: u32) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "node-a", "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": format!("{service}-x"), "resourceVersion": rv.to_string(),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
    })
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn list(ns: &Netns) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "list", "table", "ip", TABLE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn http_get(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_the_api_and_skips_bad_services() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || !Nft::host().available()
        || Command::new("ip").arg("-V").output().is_err()
    {
        eprintln!("SKIP: needs root, nft and ip");
        return;
    }
    let ns = Netns(format!("rk3sh-proxy-run-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());

    let hc_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut lb = service("lb", "10.43.0.20", 3);
    lb["spec"]["type"] = json!("LoadBalancer");
    lb["spec"]["externalTrafficPolicy"] = json!("Local");
    lb["spec"]["healthCheckNodePort"] = json!(hc_port);
    lb["spec"]["ports"][0]["nodePort"] = json!(31080);
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}});
    let api = FakeApi::default();
    {
        let mut st = api.0.lock().unwrap();
        st.services = vec![
            service("web", "10.43.0.10", 1),
            service("bad", "not-an-ip", 2),
            lb,
        ];
        st.slices = vec![
            slice("web", &["10.42.0.5", "10.42.0.6"], 4),
            slice("lb", &["10.42.0.7"], 5),
        ];
    }
    let client = kube::Client::new(api.clone(), "default");
    let opts = ProxyOptions {
        node_name: "node-a".into(),
        node_ips: vec!["127.0.0.1".parse().unwrap()],
        cluster_cidr: Some("10.42.0.0/16".into()),
        service_cidr: Some("10.43.0.0/16".into()),
        table: TABLE.into(),
        full_resync_period: Duration::from_secs(3600),
        min_sync_interval: Duration::from_millis(10),
    };
    let task = tokio::spawn(rk3s_proxy::run_with(
        client,
        opts,
        Arc::new(Nft::in_netns(&ns.0)),
    ));

    wait_for("initial rules", || {
        list(&ns).contains("10.43.0.10 . tcp . 80 : goto service-")
    })
    .await;
    let table = list(&ns);
    assert!(
        table.contains("ip daddr 10.43.0.0/16 drop"),
        "unallocated ClusterIPs are dropped:\n{table}"
    );
    assert!(
        table.contains("192.0.2.50 . tcp . 80 : goto external-"),
        "LoadBalancer ingress IP answers through the table:\n{table}"
    );
    assert!(table.contains("tcp . 31080 : goto external-"), "{table}");
    assert!(!table.contains("/bad/"));
    let stats = rk3s_proxy::last_sync().expect("a sync was recorded");
    assert_eq!(stats.services, 2);
    assert!(stats.bytes > 0);

    // The bad Service is named in a FailedToProxy Event.
    wait_for("FailedToProxy event", || {
        api.events().iter().any(|e| {
            e["reason"] == "FailedToProxy"
                && e["regarding"]["name"] == "bad"
                && e["type"] == "Warning"
        })
    })
    .await;

    // The health check answers for the ETP=Local LoadBalancer Service.
    let r = http_get(hc_port).await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains("\"localEndpoints\": 1"), "{r}");

    // Endpoints go away: the ClusterIP is rejected instead.
    let before = rk3s_proxy::last_sync().unwrap().count;
    api.push("endpointslices", "MODIFIED", slice("web", &[], 6));
    wait_for("reject rule", || {
        list(&ns).contains("10.43.0.10 . tcp . 80 comment \"ns/web:http\" : goto reject-chain")
    })
    .await;
    let stats = rk3s_proxy::last_sync().unwrap();
    assert!(stats.count > before);
    assert_eq!(stats.changed, 1);
    assert_eq!(stats.kind, rk3s_proxy::SyncKind::Incremental);

    // The bad Service is fixed: it gets rules. Then web is deleted: its rules go.
    api.push("services", "MODIFIED", service("bad", "10.43.0.30", 7));
    wait_for("fixed service", || list(&ns).contains("10.43.0.30")).await;
    api.push("services", "DELETED", service("web", "10.43.0.10", 8));
    wait_for("deleted service", || !list(&ns).contains("10.43.0.10")).await;

    // The LB Service loses its local endpoint: the health check says 503.
    api.push("endpointslices", "MODIFIED", slice("lb", &[], 9));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !http_get(hc_port).await.starts_with("HTTP/1.1 503") {
        assert!(Instant::now() < deadline, "timed out waiting for 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    task.abort();
    let _ = task.await;
    rk3s_proxy::cleanup_with(&Nft::in_netns(&ns.0), TABLE).unwrap();
    assert!(!list(&ns).contains("chain"));
}
