//! The whole path: a fake kubelet (plain HTTP on 127.0.0.1) serves `/metrics/resource`,
//! the scraper reads it twice, and the API server answers `metrics.k8s.io` with the
//! rates; a node whose kubelet does not answer never stops the others.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use rk3s_metrics::MetricsOptions;
use serde_json::{json, Value};

mod common;
use common::{fake_kubelet, get, node, server, PlainHttp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_kubelet_figures_are_served_as_metrics_server_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = server(dir.path()).await;
    let port = fake_kubelet().await;
    // A port nobody listens on: that node fails every round.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let informers = rk3s_runtime::SharedInformers::fake();
    informers.feed::<Node>(stream::iter(vec![
        Event::Init,
        Event::InitApply(node("bad", dead, json!({"role": "x"}))),
        Event::InitApply(node("n1", port, json!({"role": "worker"}))),
        Event::InitDone,
    ]));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "x"}, {"name": "side", "image": "y"}]},
    }))
    .expect("pod");
    let idle: Pod = serde_json::from_value(json!({
        "metadata": {"name": "idle", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }))
    .expect("pod");
    informers.feed::<Pod>(stream::iter(vec![
        Event::Init,
        Event::InitApply(idle),
        Event::InitApply(pod),
        Event::InitDone,
    ]));
    let opts = MetricsOptions {
        resolution: Duration::from_millis(200),
        ..Default::default()
    };
    tokio::spawn(rk3s_metrics::run_with(
        api.clone(),
        informers.clone(),
        Arc::new(PlainHttp),
        opts,
    ));

    // Wait for two scrapes of n1.
    let mut nodes = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, v) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes").await;
        if code == 200 && v["items"].as_array().is_some_and(|a| !a.is_empty()) {
            nodes = v;
            break;
        }
    }
    assert_eq!(nodes["kind"], "NodeMetricsList", "{nodes}");
    assert_eq!(nodes["apiVersion"], "metrics.k8s.io/v1beta1");
    let items = nodes["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "only the node that answers: {nodes}");
    let n1 = &items[0];
    assert_eq!(n1["metadata"]["name"], "n1");
    assert_eq!(n1["metadata"]["labels"]["role"], "worker");
    assert_eq!(n1["window"], "10s");
    assert_eq!(n1["usage"]["cpu"], "500m");
    assert_eq!(n1["usage"]["memory"], "1Gi");
    let ts = n1["timestamp"].as_str().unwrap_or("");
    assert!(
        ts.ends_with('Z') && ts.parse::<jiff::Timestamp>().is_ok(),
        "{ts}"
    );

    let (code, one) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes/n1").await;
    assert_eq!(code, 200);
    assert_eq!(one["kind"], "NodeMetrics");
    let (code, st) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes/bad").await;
    assert_eq!(code, 404);
    assert_eq!(
        st["message"],
        "nodemetrics.metrics.k8s.io \"bad\" not found"
    );
    let (code, st) = get(&api, "/apis/metrics.k8s.io/v1beta1/nodes/nope").await;
    assert_eq!(
        (code, st["message"].as_str()),
        (404, Some("node \"nope\" not found"))
    );
    let (_, sel) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=role%3Dx",
    )
    .await;
    assert_eq!(sel["items"], json!([]));
    let (_, sel) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/nodes?fieldSelector=metadata.name%3Dn1",
    )
    .await;
    assert_eq!(sel["items"].as_array().map(Vec::len), Some(1));

    // Pods: every namespace (-A), one namespace, a label selector, one pod.
    let (code, pods) = get(&api, "/apis/metrics.k8s.io/v1beta1/pods").await;
    assert_eq!(code, 200, "{pods}");
    assert_eq!(pods["kind"], "PodMetricsList");
    let p = &pods["items"][0];
    assert_eq!(p["metadata"]["name"], "web-1");
    assert_eq!(p["metadata"]["namespace"], "default");
    assert_eq!(p["metadata"]["labels"]["app"], "web");
    assert_eq!(p["window"], "10s");
    assert_eq!(
        p["containers"],
        json!([
            {"name": "web", "usage": {"cpu": "250m", "memory": "10Mi"}},
            {"name": "side", "usage": {"cpu": "10m", "memory": "1234567"}},
        ])
    );
    let (_, ns) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dweb",
    )
    .await;
    assert_eq!(ns["items"].as_array().map(Vec::len), Some(1));
    let (_, other) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods",
    )
    .await;
    assert_eq!(other["items"], json!([]));
    let (code, one) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web-1",
    )
    .await;
    assert_eq!((code, &one["kind"]), (200, &json!("PodMetrics")));
    let (code, st) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope",
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(st["message"], "pod \"nope\" not found");
    // A pod without figures: metrics-server's 404 names it `namespace/name`.
    let (code, st) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/idle",
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        st["message"],
        "podmetrics.metrics.k8s.io \"default/idle\" not found"
    );
    let (code, _) = get(
        &api,
        "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=a%20in",
    )
    .await;
    assert_eq!(code, 400);

    // The APIService says the group is available.
    let (_, svc) = get(
        &api,
        "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io",
    )
    .await;
    assert_eq!(svc["status"]["conditions"][0]["status"], "True");
}
