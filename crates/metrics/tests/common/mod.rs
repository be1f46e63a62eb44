//! Helpers shared by the integration tests: a whole API server on a fresh store.

#![allow(dead_code)]

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use k8s_openapi::api::core::v1::Node;
#[allow(unused_imports)] // each test binary uses some
pub use rk3s_apiserver::testutil::{server, server_with_pki};
use rk3s_apiserver::{ApiServer, UserInfo};
use rk3s_metrics::{KubeletScraper, MetricsError};
use serde_json::{json, Value};

/// GET `path` as the cluster admin: status and JSON.
pub async fn get(api: &ApiServer, path: &str) -> (u16, Value) {
    let (parts, ()) = http::Request::get(path).body(()).expect("req").into_parts();
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    let resp = api.handle(parts, Bytes::new(), Some(admin)).await;
    let code = resp.status().as_u16();
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    (code, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// Reaches kubelets over plain HTTP (the fake kubelet has no TLS).
pub struct PlainHttp;

#[async_trait::async_trait]
impl KubeletScraper for PlainHttp {
    async fn metrics_resource(&self, host: &str, port: u16) -> Result<String, MetricsError> {
        let fail = |e: &dyn std::fmt::Display| MetricsError::Scrape(e.to_string());
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| fail(&e))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| fail(&e))?;
        tokio::spawn(conn);
        let req = http::Request::get("/metrics/resource")
            .header("host", format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
        let body = resp.into_body().collect().await.map_err(|e| fail(&e))?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|e| fail(&e))
    }
}

/// A kubelet whose n-th answer (n = 0, 1, ...) is at 1_700_000_000 + 10 n seconds, with
/// the node using 0.5 cores and container `web` 0.25 cores, `side` 0.01 cores.
pub async fn fake_kubelet() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let calls = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let n = calls.fetch_add(1, Ordering::SeqCst) as f64;
                        let ms = 1_700_000_000_000i64 + (n as i64) * 10_000;
                        let body = if req.uri().path() == "/metrics/resource" {
                            format!(
                            "# TYPE node_cpu_usage_seconds_total counter\n\
                             node_cpu_usage_seconds_total {} {ms}\n\
                             node_memory_working_set_bytes 1073741824 {ms}\n\
                             container_cpu_usage_seconds_total{{container=\"web\",namespace=\"default\",pod=\"web-1\"}} {} {ms}\n\
                             container_memory_working_set_bytes{{container=\"web\",namespace=\"default\",pod=\"web-1\"}} 10485760 {ms}\n\
                             container_cpu_usage_seconds_total{{container=\"side\",namespace=\"default\",pod=\"web-1\"}} {} {ms}\n\
                             container_memory_working_set_bytes{{container=\"side\",namespace=\"default\",pod=\"web-1\"}} 1234567 {ms}\n",
                            100.0 + 5.0 * n,
                            10.0 + 2.5 * n,
                            1.0 + 0.1 * n,
                        )
                        } else {
                            String::new()
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

pub fn node(name: &str, port: u16, labels: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .expect("node")
}
