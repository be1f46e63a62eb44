//! Scraping: every `resolution`, each Ready Node's kubelet (`status.addresses`
//! InternalIP, else ExternalIP or Hostname; `daemonEndpoints.kubeletEndpoint.Port`) is
//! asked for `/metrics/resource`, all nodes at once, each with a timeout of 90 % of the
//! resolution (metrics-server's default). A node that fails is logged and tried again at
//! the next round; it never delays or stops the others.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use serde_json::Value;

use crate::storage::Storage;
use crate::MetricsError;

/// Something that fetches a kubelet's `/metrics/resource` text.
#[async_trait::async_trait]
pub trait KubeletScraper: Send + Sync + 'static {
    /// GETs `/metrics/resource` from the kubelet at `host:port`.
    async fn metrics_resource(&self, host: &str, port: u16) -> Result<String, MetricsError>;
}

/// The API server's kubelet client (HTTPS with the cluster's kubelet client
/// certificate), as `pods/log` and `nodes/proxy` use it.
#[async_trait::async_trait]
impl KubeletScraper for rk3s_apiserver::proxy::KubeletClient {
    async fn metrics_resource(&self, host: &str, port: u16) -> Result<String, MetricsError> {
        let resp = self
            .get(host, port, "/metrics/resource")
            .await
            .map_err(|e| MetricsError::Scrape(e.message))?;
        let mut out = Vec::new();
        match resp.into_body() {
            rk3s_apiserver::body::ResponseBody::Full(b) => {
                out.extend_from_slice(b.as_deref().unwrap_or_default())
            }
            rk3s_apiserver::body::ResponseBody::Stream(mut rx) => {
                while let Some(chunk) = rx.recv().await {
                    out.extend_from_slice(&chunk);
                    if out.len() > MAX_BODY {
                        return Err(MetricsError::Scrape("answer too large".into()));
                    }
                }
            }
        }
        String::from_utf8(out).map_err(|e| MetricsError::Scrape(e.to_string()))
    }
}

/// Largest `/metrics/resource` answer read (a node with thousands of containers fits).
const MAX_BODY: usize = 64 << 20;

/// Whether the Node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The kubelet address of a Node (see the module docs).
pub fn kubelet_endpoint(node: &Node) -> Option<(String, u16)> {
    let v: Value = serde_json::to_value(node).ok()?;
    rk3s_apiserver::proxy::node_endpoint(&v)
}

/// One round: scrapes every Ready node concurrently and stores what answered.
pub async fn scrape_once(
    nodes: &Store<Node>,
    scraper: &Arc<dyn KubeletScraper>,
    storage: &Storage,
    timeout: Duration,
) {
    let all = nodes.state();
    let names: std::collections::HashSet<String> =
        all.iter().filter_map(|n| n.metadata.name.clone()).collect();
    storage.retain_nodes(|n| names.contains(n));
    let jobs = all
        .into_iter()
        .filter(|n| node_ready(n))
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let (host, port) = kubelet_endpoint(&n)?;
            Some((name, host, port))
        })
        .map(|(name, host, port)| {
            let scraper = scraper.clone();
            async move {
                let r = tokio::time::timeout(timeout, scraper.metrics_resource(&host, port)).await;
                (name, host, port, r)
            }
        });
    // Every node at once (a round lasts at most `timeout`), bounded for huge clusters.
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(MAX_CONCURRENT);
    while let Some((name, host, port, r)) = results.next().await {
        let error = match r {
            Ok(Ok(text)) => {
                let scrape = crate::prom::parse(&text, jiff::Timestamp::now());
                storage.store(&name, scrape);
                if storage.set_failing(&name, false) {
                    tracing::info!(node = %name, "scraping the kubelet works again");
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        // Logged when a node starts failing, not at every round.
        if storage.set_failing(&name, true) {
            tracing::warn!(node = %name, %host, port, %error, "scraping the kubelet failed");
        } else {
            tracing::debug!(node = %name, %host, port, %error, "scraping the kubelet failed");
        }
    }
}

/// At most this many kubelets are scraped at the same time.
const MAX_CONCURRENT: usize = 1024;
