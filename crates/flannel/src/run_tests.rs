//! The whole loop ([`run_with`]) in a network namespace `rk3sh-flannel-r1` of its own
//! (root), against a fake API server (an in-memory tower service): it waits for the
//! podCIDR, creates `flannel.1`, publishes the annotations with the device's real MAC,
//! installs the masquerade table, programs the peers it lists, and follows the watch
//! (a peer deleted loses its entries, a peer whose MAC and IP change gets new ones).

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::netns_tests::{have, is_root, ns_sh, sh};
use crate::plan::VXLAN_DEVICE;
use crate::{run_with, Backend, FlannelOptions, Kernel};

const NS: &str = "rk3sh-flannel-r1";

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

struct FakeApi {
    nodes: Vec<Value>,
    watch: Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>,
    patches: Mutex<Vec<Value>>,
}

fn one_frame(v: &Value) -> Body {
    StreamBody::new(stream::iter(vec![Ok(Frame::data(Bytes::from(v.to_string())))]).boxed())
}

fn node(name: &str, cidr: &str, ip: &str, mac: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv, "annotations": {
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": ip}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
}

impl FakeApi {
    async fn respond(&self, req: Request<kube::client::Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let method = req.method().clone();
        if path == "/api/v1/nodes" && query.contains("watch=true") {
            let rx = self.watch.lock().unwrap().take();
            let body: BoxStream<'static, Result<Frame<Bytes>, Infallible>> = match rx {
                Some(rx) => stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
                })
                .boxed(),
                None => stream::pending().boxed(),
            };
            return Response::new(StreamBody::new(body));
        }
        if path == "/api/v1/nodes" {
            return Response::new(one_frame(&json!({"apiVersion": "v1", "kind": "NodeList",
                "metadata": {"resourceVersion": "1"}, "items": self.nodes})));
        }
        if path == "/api/v1/nodes/node1" {
            if method == http::Method::PATCH {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let v: Value = serde_json::from_slice(&body).unwrap();
                self.patches.lock().unwrap().push(v);
            }
            return Response::new(one_frame(&self.nodes[0]));
        }
        let mut resp = Response::new(one_frame(&json!({"kind": "Status", "code": 404})));
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        resp
    }
}

struct Guard;
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `f` until it is true (10 s at most).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn the_loop_programs_peers_and_follows_the_watch() {
    if !is_root() || !have("ip") || !have("nft") || !have("bridge") {
        eprintln!(
            "SKIP the_loop_programs_peers_and_follows_the_watch: needs root, ip, bridge, nft"
        );
        return;
    }
    let _ = Command::new("ip")
        .args(["netns", "del", NS])
        .stderr(Stdio::null())
        .status();
    sh(&["ip", "netns", "add", NS]);
    let _guard = Guard;
    ns_sh(
        NS,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    );
    ns_sh(NS, &["ip", "link", "set", "eth0p", "up"]);
    ns_sh(NS, &["ip", "addr", "add", "10.99.0.1/24", "dev", "eth0"]);
    ns_sh(NS, &["ip", "link", "set", "eth0", "up"]);

    let (watch_tx, watch_rx) = mpsc::unbounded_channel::<Bytes>();
    let mut me = node(
        "node1",
        "10.42.0.0/24",
        "10.99.0.1",
        "02:00:00:00:00:01",
        "1",
    );
    me["metadata"]["annotations"] = json!({});
    let api = Arc::new(FakeApi {
        nodes: vec![
            me,
            node(
                "node2",
                "10.42.1.0/24",
                "10.99.0.2",
                "02:00:00:00:00:02",
                "1",
            ),
            node(
                "node3",
                "10.42.2.0/24",
                "10.99.0.3",
                "02:00:00:00:00:03",
                "1",
            ),
        ],
        watch: Mutex::new(Some(watch_rx)),
        patches: Mutex::new(Vec::new()),
    });
    let a2 = api.clone();
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let api = a2.clone();
        async move { Ok::<_, Infallible>(api.respond(req).await) }
    });
    let client = kube::Client::new(svc, "default");
    let kernel = Kernel::in_netns(&PathBuf::from("/run/netns").join(NS)).unwrap();
    let mut opts = FlannelOptions::new("node1", "10.99.0.1".parse().unwrap(), "10.42.0.0/16");
    opts.backend = Backend::Vxlan;
    let prefix = ["ip", "netns", "exec", NS].map(String::from).to_vec();
    let task = tokio::spawn(run_with(client, opts, kernel, prefix));

    // Empty while the device does not exist yet.
    let routes = || {
        Command::new("ip")
            .args(["-n", NS, "route", "show", "dev", VXLAN_DEVICE])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    eventually("routes to both peers", || {
        let r = routes();
        r.contains("10.42.1.0/24 via 10.42.1.0 onlink")
            && r.contains("10.42.2.0/24 via 10.42.2.0 onlink")
    })
    .await;
    // The annotations carry the device's real MAC.
    let link = ns_sh(NS, &["ip", "link", "show", VXLAN_DEVICE]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string();
    let patch = api
        .patches
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("a PATCH of node1");
    let ann = &patch["metadata"]["annotations"];
    assert_eq!(ann["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(
        ann["flannel.alpha.coreos.com/backend-data"],
        format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}")
    );
    assert_eq!(ann["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
    assert_eq!(ann["flannel.alpha.coreos.com/public-ip"], "10.99.0.1");
    ns_sh(NS, &["nft", "list", "table", "ip", "rk3s-flannel"]);
    let fdb = || ns_sh(NS, &["bridge", "fdb", "show", "dev", VXLAN_DEVICE]);
    assert!(fdb().contains("02:00:00:00:00:03 dst 10.99.0.3 self permanent"));

    // node3 is deleted; node2 moves to another IP with a new VTEP MAC.
    let del = json!({"type": "DELETED", "object": node("node3", "10.42.2.0/24", "10.99.0.3", "02:00:00:00:00:03", "2")});
    watch_tx.send(Bytes::from(format!("{del}\n"))).unwrap();
    eventually("node3's route gone", || !routes().contains("10.42.2.0/24")).await;
    assert!(!fdb().contains("10.99.0.3"));
    let moved = json!({"type": "MODIFIED", "object": node("node2", "10.42.1.0/24", "10.99.0.22", "02:00:00:00:00:22", "3")});
    watch_tx.send(Bytes::from(format!("{moved}\n"))).unwrap();
    eventually("node2's new FDB entry", || {
        let f = fdb();
        f.contains("02:00:00:00:00:22 dst 10.99.0.22 self permanent") && !f.contains("10.99.0.2 ")
    })
    .await;
    let neigh = ns_sh(NS, &["ip", "neigh", "show", "dev", VXLAN_DEVICE]);
    assert!(
        neigh.contains("10.42.1.0 lladdr 02:00:00:00:00:22 PERMANENT"),
        "{neigh}"
    );
    assert!(!task.is_finished());
    task.abort();
}
