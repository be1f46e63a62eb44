//! The resource metrics API of rk3s, built in as k3s ships metrics-server: the API
//! server serves `metrics.k8s.io/v1beta1` (`kubectl top nodes|pods`, the HPA) from
//! figures this crate scrapes from every Ready node's kubelet.
//!
//! - [`scrape`]: every `resolution` (15 s by default, metrics-server's), each Ready
//!   Node's kubelet `/metrics/resource` over HTTPS with the API server's kubelet client
//!   certificate; one slow or failing node never holds up the others.
//! - [`prom`]: the Prometheus text -> node and container points.
//! - [`storage`]: the last two points of each node/container; CPU is the rate between
//!   them (nano-cores), memory the last working set; stale nodes disappear.
//! - [`api`]: NodeMetrics/PodMetrics as metrics-server writes them, behind the API
//!   server's [`rk3s_apiserver::local_group::LocalApiGroup`] extension point, so
//!   requests get the API server's authentication, RBAC (`get`/`list` on
//!   `nodes.metrics.k8s.io`, `pods.metrics.k8s.io`) and discovery.
//!   `kubectl get nodes.metrics.k8s.io` gets metrics-server's Table (Name, cpu, memory,
//!   Window).
//! - [`format`]: quantities (`250m`, `12345n`, `1234Ki`) and Go durations (`15s`).
//!
//! Invariants: this crate reads the cluster only through the shared informers (Nodes,
//! Pods) and the kubelets' HTTPS API; it writes nothing to the cluster (the API server
//! writes the `v1beta1.metrics.k8s.io` APIService when the group is registered). It
//! depends on `apiserver` (the extension point and its kubelet client), `api`, `core`
//! and `runtime`. No input (a kubelet's answer, a selector) makes it panic.

#![warn(missing_docs)]
// ApiError (a Status with causes) is large, and errors are the rare path: not worth boxing.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod format;
pub mod prom;
pub mod scrape;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use rk3s_apiserver::ApiServer;
use rk3s_runtime::SharedInformers;

pub use api::MetricsApi;
pub use scrape::KubeletScraper;
pub use storage::Storage;

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The API server has no kubelet client configured (`Config::kubelet_client`).
    #[error("the API server has no kubelet client: cannot scrape kubelets")]
    NoKubeletClient,
    /// Scraping one kubelet failed.
    #[error("scrape: {0}")]
    Scrape(String),
}

/// Settings (metrics-server's flags).
#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// How often kubelets are scraped (`--metric-resolution`, default 15 s).
    pub resolution: Duration,
    /// Per-kubelet timeout (default 90 % of the resolution).
    pub scrape_timeout: Option<Duration>,
    /// How long a node's figures outlive its last successful scrape (default three
    /// resolutions: one failed round does not hide a node).
    pub stale_after: Option<Duration>,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            resolution: Duration::from_secs(15),
            scrape_timeout: None,
            stale_after: None,
        }
    }
}

impl MetricsOptions {
    fn timeout(&self) -> Duration {
        self.scrape_timeout
            .unwrap_or_else(|| self.resolution.mul_f64(0.9))
    }

    fn stale(&self) -> Duration {
        self.stale_after.unwrap_or(self.resolution * 3)
    }
}

/// Serves `metrics.k8s.io` from `api` with the API server's own kubelet client: waits
/// for the Node and Pod informers of `informers` to sync, registers the group (discovery,
/// APIService), then scrapes forever. Spawn it beside the API server.
pub async fn run(
    api: ApiServer,
    informers: SharedInformers,
    options: MetricsOptions,
) -> Result<(), MetricsError> {
    let client = api
        .inner()
        .kubelet_client
        .clone()
        .ok_or(MetricsError::NoKubeletClient)?;
    run_with(api, informers, Arc::new(client), options).await;
    Ok(())
}

/// [`run`] with another way to reach kubelets (tests: plain HTTP).
pub async fn run_with(
    api: ApiServer,
    informers: SharedInformers,
    scraper: Arc<dyn KubeletScraper>,
    options: MetricsOptions,
) {
    let nodes = informers.store::<Node>().await;
    let pods = informers.store::<Pod>().await;
    let storage = Arc::new(Storage::new(options.stale()));
    api.register_local_group(Arc::new(MetricsApi::new(
        storage.clone(),
        nodes.clone(),
        pods,
    )))
    .await;
    tracing::info!(resolution = ?options.resolution, "serving metrics.k8s.io");
    let mut tick = tokio::time::interval(options.resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        scrape::scrape_once(&nodes, &scraper, &storage, options.timeout()).await;
    }
}
