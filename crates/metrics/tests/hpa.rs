//! The HPA controller against a served metrics API: PodMetrics above the target make
//! it scale the Deployment up (limited as upstream), with upstream's status, conditions
//! and Event.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rk3s_api::ApiError;
use rk3s_apiserver::local_group::{LocalApiGroup, LocalRequest};
use rk3s_apiserver::{ApiServer, UserInfo};
use serde_json::{json, Value};

mod common;
use common::{get, server};

/// PodMetrics: every pod of the namespace uses 200m CPU in container `web`.
struct BusyPods;

#[async_trait::async_trait]
impl LocalApiGroup for BusyPods {
    fn group(&self) -> &str {
        "metrics.k8s.io"
    }
    fn version(&self) -> &str {
        "v1beta1"
    }
    fn resources(&self) -> Vec<rk3s_api::ResourceInfo> {
        rk3s_metrics::api::resources()
    }
    async fn get(&self, req: LocalRequest) -> Result<Value, ApiError> {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let items: Vec<Value> = ["web-a", "web-b"]
            .iter()
            .map(|n| {
                json!({
                    "metadata": {"name": n, "namespace": "default"},
                    "timestamp": now, "window": "15s",
                    "containers": [{"name": "web", "usage": {"cpu": "200m", "memory": "10Mi"}}],
                })
            })
            .collect();
        assert_eq!(req.label_selector.as_deref(), Some("app=web"));
        Ok(
            json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}),
        )
    }
}

async fn send(api: &ApiServer, method: &str, path: &str, ct: &str, body: Value) -> (u16, Value) {
    let (parts, ()) = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(())
        .expect("req")
        .into_parts();
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let resp = api
        .handle(parts, Bytes::from(body.to_string()), Some(admin))
        .await;
    let code = resp.status().as_u16();
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    (code, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_scales_on_pod_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = server(dir.path()).await;
    api.register_local_group(Arc::new(BusyPods)).await;
    let json_ct = "application/json";
    let container =
        json!({"name": "web", "image": "nginx", "resources": {"requests": {"cpu": "100m"}}});
    let (code, d) = send(&api, "POST", "/apis/apps/v1/namespaces/default/deployments", json_ct, json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}}},
    }))
    .await;
    assert_eq!(code, 201, "{d}");
    let long_ago = "2020-01-01T00:00:00Z";
    for name in ["web-a", "web-b"] {
        let (code, p) = send(
            &api,
            "POST",
            "/api/v1/namespaces/default/pods",
            json_ct,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"containers": [container]},
            }),
        )
        .await;
        assert_eq!(code, 201, "{p}");
        let (code, p) = send(
            &api,
            "PATCH",
            &format!("/api/v1/namespaces/default/pods/{name}/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": "Running", "startTime": long_ago,
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": long_ago}]}}),
        )
        .await;
        assert_eq!(code, 200, "{p}");
    }

    let controller = UserInfo::new("system:kube-controller-manager", &["system:masters"])
        .with_authenticated_group();
    let client = rk3s_controllers::client_over(api.local_service(controller));
    let informers = rk3s_runtime::SharedInformers::new(client.clone());
    let hpa_task = tokio::spawn(rk3s_controllers::hpa::run(client, informers));

    let (code, h) = send(&api, "POST", "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", json_ct, json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
        },
    }))
    .await;
    assert_eq!(code, 201, "{h}");

    // 200 % of the requests against 50 %: 8 wanted, at most max(2 x 2, 4) = 4 at once.
    let mut hpa = Value::Null;
    let mut last = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, v) = get(
            &api,
            "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web",
        )
        .await;
        if v.pointer("/status/desiredReplicas") == Some(&json!(4)) {
            hpa = v;
            break;
        }
        last = v;
    }
    assert_ne!(hpa, Value::Null, "the HPA never scaled: {last}");
    let (_, scale) = get(
        &api,
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    )
    .await;
    assert_eq!(scale["spec"]["replicas"], 4);
    let status = &hpa["status"];
    assert_eq!(status["currentReplicas"], 2);
    assert_eq!(
        status["currentMetrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 200, "averageValue": "200m"}}}])
    );
    assert!(status["lastScaleTime"].is_string());
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| (c["status"].clone(), c["reason"].clone()))
    };
    assert_eq!(
        cond("AbleToScale"),
        Some((json!("True"), json!("SucceededRescale")))
    );
    assert_eq!(
        cond("ScalingActive"),
        Some((json!("True"), json!("ValidMetricFound")))
    );
    assert_eq!(
        cond("ScalingLimited"),
        Some((json!("True"), json!("ScaleUpLimit")))
    );
    let mut found = false;
    for _ in 0..50 {
        let (_, evs) = get(&api, "/apis/events.k8s.io/v1/namespaces/default/events").await;
        found = evs["items"].as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["reason"] == "SuccessfulRescale"
                    && e["note"]
                        == "New size: 4; reason: cpu resource utilization (percentage of request) above target"
            })
        });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "no SuccessfulRescale event");
    hpa_task.abort();
}
