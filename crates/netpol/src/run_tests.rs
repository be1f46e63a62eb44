//! The watch/sync loop against a fake API server (an in-memory tower service): the
//! first sync rebuilds the table, a pod label change arriving on the watch becomes an
//! incremental sync of one set element, a failed transaction is retried as a full
//! rebuild. Scripts are recorded, never applied.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::sync::run_with;
use crate::{NetpolError, NetpolOptions};

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Lists by resource plural, and the watch streams the test feeds.
struct FakeApi {
    lists: HashMap<&'static str, Value>,
    watches: Mutex<HashMap<&'static str, mpsc::UnboundedReceiver<Bytes>>>,
}

fn one_frame(v: &Value) -> Body {
    StreamBody::new(stream::iter(vec![Ok(Frame::data(Bytes::from(v.to_string())))]).boxed())
}

impl FakeApi {
    fn respond(&self, req: &Request<kube::client::Body>) -> Response<Body> {
        let path = req.uri().path();
        let Some(plural) = ["networkpolicies", "pods", "namespaces"]
            .into_iter()
            .find(|p| path.ends_with(&format!("/{p}")))
        else {
            let mut resp = Response::new(one_frame(&json!({"kind": "Status", "code": 404})));
            *resp.status_mut() = http::StatusCode::NOT_FOUND;
            return resp;
        };
        if req.uri().query().unwrap_or_default().contains("watch=true") {
            let rx = self.watches.lock().unwrap().remove(plural);
            let body: BoxStream<'static, Result<Frame<Bytes>, Infallible>> = match rx {
                Some(rx) => stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
                })
                .boxed(),
                None => stream::pending().boxed(),
            };
            return Response::new(StreamBody::new(body));
        }
        Response::new(one_frame(&self.lists[plural]))
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn pod(name: &str, ip: &str, app: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "default", "name": name, "uid": name, "resourceVersion": rv, "labels": {"app": app}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

async fn next_script(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a sync within 10 s")
        .expect("the loop is running")
}

#[tokio::test]
async fn watch_changes_become_incremental_syncs() {
    let (pod_tx, pod_rx) = mpsc::unbounded_channel::<Bytes>();
    let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "default", "name": "allow-client", "resourceVersion": "1"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}});
    let api = Arc::new(FakeApi {
        lists: HashMap::from([
            ("networkpolicies", list("NetworkPolicyList", vec![policy])),
            (
                "pods",
                list(
                    "PodList",
                    vec![
                        pod("web", "10.42.0.2", "web", "1"),
                        pod("client", "10.42.0.3", "other", "1"),
                    ],
                ),
            ),
            (
                "namespaces",
                list(
                    "NamespaceList",
                    vec![
                        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "resourceVersion": "1"}}),
                    ],
                ),
            ),
        ]),
        watches: Mutex::new(HashMap::from([("pods", pod_rx)])),
    });
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.respond(&req)) }
    });
    let client = kube::Client::new(svc, "default");

    let (tx, mut scripts) = mpsc::unbounded_channel::<String>();
    let fail_next = Arc::new(Mutex::new(false));
    let fail = fail_next.clone();
    let applier = Arc::new(move |script: String| {
        // decide before reporting: the test arms the failure after seeing a script
        let failed = std::mem::take(&mut *fail.lock().unwrap());
        let _ = tx.send(script);
        if failed {
            Err(NetpolError::Nft {
                status: "exit status: 1".into(),
                stderr: "injected".into(),
            })
        } else {
            Ok(())
        }
    });
    let opts = NetpolOptions {
        node_name: "n1".into(),
        table: "t".into(),
        min_sync_interval: Duration::from_millis(10),
        ..Default::default()
    };
    let task = tokio::spawn(run_with(client, opts, applier));

    let first = next_script(&mut scripts).await;
    assert!(
        first.starts_with("add table ip t\ndelete table ip t\n"),
        "{first}"
    );
    assert!(
        first.contains("add element ip t ingress-pods { 10.42.0.2 : jump ing-"),
        "{first}"
    );
    let set = first
        .lines()
        .find_map(|l| l.strip_prefix("add set ip t "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_string();

    // the client pod gets the label the policy allows: one element added
    let ev = json!({"type": "MODIFIED", "object": pod("client", "10.42.0.3", "client", "2")});
    pod_tx.send(Bytes::from(format!("{ev}\n"))).unwrap();
    assert_eq!(
        next_script(&mut scripts).await,
        format!("add element ip t {set} {{ 10.42.0.3 }}\n")
    );

    // a failed transaction is retried as a full rebuild
    *fail_next.lock().unwrap() = true;
    let ev = json!({"type": "MODIFIED", "object": pod("client", "10.42.0.3", "other", "3")});
    pod_tx.send(Bytes::from(format!("{ev}\n"))).unwrap();
    assert_eq!(
        next_script(&mut scripts).await,
        format!("delete element ip t {set} {{ 10.42.0.3 }}\n")
    );
    let retry = next_script(&mut scripts).await;
    assert!(
        retry.starts_with("add table ip t\ndelete table ip t\n"),
        "{retry}"
    );
    assert!(!retry.contains("10.42.0.3"), "{retry}");

    // the pod deleted: nothing to change for web's rules, no script needed
    let ev = json!({"type": "DELETED", "object": pod("client", "10.42.0.3", "other", "4")});
    pod_tx.send(Bytes::from(format!("{ev}\n"))).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), scripts.recv())
            .await
            .is_err(),
        "no-op changes apply nothing"
    );
    task.abort();
}

#[tokio::test]
async fn bad_table_name_is_fatal() {
    let svc = tower::service_fn(|_req: Request<kube::client::Body>| async {
        Ok::<_, Infallible>(Response::new(one_frame(&json!({}))))
    });
    let client = kube::Client::new(svc, "default");
    let opts = NetpolOptions {
        node_name: "n1".into(),
        table: "bad name".into(),
        ..Default::default()
    };
    assert!(matches!(
        crate::run(client, opts).await,
        Err(NetpolError::TableName(_))
    ));
}
