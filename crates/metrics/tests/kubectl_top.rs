//! `kubectl top` (the real kubectl, `RK3S_TEST_KUBECTL` or /usr/bin/kubectl) against
//! the metrics API served over HTTPS, figures from a fake kubelet. Skipped when no
//! kubectl is installed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use rk3s_apiserver::{ApiServer, UserInfo};
use rk3s_metrics::MetricsOptions;
use serde_json::{json, Value};

mod common;
use common::{fake_kubelet, node, server_with_pki, PlainHttp};

async fn create(api: &ApiServer, path: &str, body: Value) {
    let (parts, ()) = http::Request::post(path)
        .header("content-type", "application/json")
        .body(())
        .expect("req")
        .into_parts();
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let resp = api
        .handle(parts, Bytes::from(body.to_string()), Some(admin))
        .await;
    let code = resp.status().as_u16();
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&b));
}

async fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let bin = std::env::var("RK3S_TEST_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let out = cmd.output().await.expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_reads_the_metrics_api() {
    let bin = std::env::var("RK3S_TEST_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    if !std::path::Path::new(&bin).exists() {
        eprintln!("no kubectl at {bin}: skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, pki) = server_with_pki(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = rk3s_apiserver::server::tls_config(
        &pki.serving_cert_pem,
        &pki.serving_key_pem,
        &pki.ca_cert_pem,
    )
    .expect("tls");
    tokio::spawn(rk3s_apiserver::server::serve(api.clone(), listener, tls));
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    rk3s_pki::write_kubeconfig(
        &kubeconfig,
        0o600,
        &format!("https://127.0.0.1:{}", addr.port()),
        &pki.ca_cert_pem,
        &pki.admin_cert_pem,
        &pki.admin_key_pem,
        "default",
    )
    .expect("kubeconfig");

    let port = fake_kubelet().await;
    let mut n1 = serde_json::to_value(node("n1", port, json!({"role": "worker"}))).expect("json");
    n1["apiVersion"] = json!("v1");
    n1["kind"] = json!("Node");
    create(&api, "/api/v1/nodes", n1.clone()).await;
    // kubectl computes percentages from the Node's allocatable.
    let (parts, ()) = http::Request::patch("/api/v1/nodes/n1/status")
        .header("content-type", "application/merge-patch+json")
        .body(())
        .expect("req")
        .into_parts();
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let status = json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi"}, "capacity": {"cpu": "2", "memory": "4Gi"}}});
    let resp = api
        .handle(parts, Bytes::from(status.to_string()), Some(admin))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "x"}, {"name": "side", "image": "y"}]},
    });
    create(&api, "/api/v1/namespaces/default/pods", pod.clone()).await;

    let informers = rk3s_runtime::SharedInformers::fake();
    let node_obj: Node = serde_json::from_value(n1).expect("node");
    informers.feed::<Node>(stream::iter(vec![
        Event::Init,
        Event::InitApply(node_obj),
        Event::InitDone,
    ]));
    let pod_obj: Pod = serde_json::from_value(pod).expect("pod");
    informers.feed::<Pod>(stream::iter(vec![
        Event::Init,
        Event::InitApply(pod_obj),
        Event::InitDone,
    ]));
    tokio::spawn(rk3s_metrics::run_with(
        api.clone(),
        informers,
        Arc::new(PlainHttp),
        MetricsOptions {
            resolution: Duration::from_millis(200),
            ..Default::default()
        },
    ));

    let mut nodes = String::new();
    for _ in 0..50 {
        let (ok, out, err) = kubectl(&kubeconfig, &["top", "nodes"]).await;
        if ok && out.contains("n1") {
            nodes = out;
            break;
        }
        eprintln!("kubectl top nodes: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{nodes}");
    let header: Vec<&str> = nodes
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    );
    let row: Vec<&str> = nodes
        .lines()
        .find(|l| l.starts_with("n1"))
        .expect("n1 row")
        .split_whitespace()
        .collect();
    assert_eq!(row, ["n1", "500m", "25%", "1024Mi", "25%"]);

    let (ok, pods, err) = kubectl(&kubeconfig, &["top", "pods", "-A"]).await;
    assert!(ok, "{err}");
    eprintln!("{pods}");
    let row: Vec<&str> = pods
        .lines()
        .find(|l| l.starts_with("default"))
        .expect("pod row")
        .split_whitespace()
        .collect();
    assert_eq!(row, ["default", "web-1", "260m", "11Mi"]);

    let (ok, containers, err) = kubectl(&kubeconfig, &["top", "pods", "--containers"]).await;
    assert!(ok, "{err}");
    eprintln!("{containers}");
    assert!(
        containers.lines().any(|l| {
            l.split_whitespace().collect::<Vec<_>>() == ["web-1", "web", "250m", "10Mi"]
        }),
        "{containers}"
    );
    let (ok, one, err) = kubectl(&kubeconfig, &["top", "pod", "-l", "app=web"]).await;
    assert!(ok, "{err}");
    assert!(one.contains("web-1"), "{one}");
    let (ok, raw, err) = kubectl(
        &kubeconfig,
        &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/n1"],
    )
    .await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(v["kind"], "NodeMetrics");
    // kubectl get: metrics-server's Table.
    let (ok, got, err) = kubectl(&kubeconfig, &["get", "nodes.metrics.k8s.io"]).await;
    assert!(ok, "{err}");
    eprintln!("{got}");
    let lines: Vec<Vec<&str>> = got
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "CPU", "MEMORY", "WINDOW"]);
    assert_eq!(lines[1], ["n1", "500m", "1Gi", "10s"]);
    let (ok, got, err) = kubectl(&kubeconfig, &["get", "podmetrics", "-A"]).await;
    assert!(ok, "{err}");
    eprintln!("{got}");
    assert!(
        got.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["default", "web-1", "260m", "11720327", "10s"]),
        "{got}"
    );
    // (The server's Table for APIServices has no SERVICE/AVAILABLE columns yet: read
    // the object.)
    let (ok, svc, err) = kubectl(
        &kubeconfig,
        &["get", "apiservice", "v1beta1.metrics.k8s.io", "-o", "json"],
    )
    .await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&svc).expect("json");
    assert!(v["spec"].get("service").is_none(), "{v}");
    assert_eq!(v["status"]["conditions"][0]["status"], "True");
}
