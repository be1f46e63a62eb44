//! The rk3s controller manager: controllers with upstream's semantics, each an ordinary
//! client of the Kubernetes API through kube-rs (in the server process over the API
//! server's in-process transport), started once this process holds the
//! `kube-controller-manager` Lease in `kube-system`.
//!
//! Every controller runs on the controller runtime (`rk3s-runtime`): one
//! [`rk3s_runtime::run_controller`] each (a per-key work queue with exponential per-key
//! back-off, triggers mapping object changes to keys), reading the shared informers of
//! the leadership term ([`informers`]) and recording writes in flight with
//! [`expectations`]. Map: [`leader`] (Lease-based leader election), one module per
//! controller ([`serviceaccount`], [`replicaset`], [`deployment`], [`gc`], ...), and the
//! pure helpers they share ([`podutil`], [`workload_util`]).

pub mod clusterdns;
pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod csrsigning;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
/// Expectations (writes in flight per controller key), from the controller runtime.
pub use rk3s_runtime::expectations;
pub mod gc;
pub mod hpa;
pub mod informers;
/// Leader election (shared with the scheduler), from the controller runtime.
pub use rk3s_runtime::leader;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod podutil;
pub mod pvbinder;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod ttlafterfinished;
pub mod workload_util;

use std::time::Duration;

/// Errors of the controller manager.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch stream failed.
    #[error("watch: {0}")]
    Watch(String),
}

/// Settings of the controller manager.
#[derive(Clone, Debug)]
pub struct Options {
    /// This process's identity in leader election (e.g. the host name + a random suffix).
    pub identity: String,
    /// The cluster CA certificate (PEM), published in every namespace as
    /// `kube-root-ca.crt`.
    pub root_ca_pem: String,
    /// Lease duration for leader election.
    pub lease_duration: Duration,
    /// The cluster CA key (PEM), for signing approved CertificateSigningRequests.
    pub ca_key_pem: String,
    /// Settings of the node lifecycle, node IPAM and pod GC controllers.
    pub nodes: nodelifecycle::NodeOptions,
    /// Whether ServiceLB sets the ingress of LoadBalancer Services (false with
    /// `--disable servicelb`: such Services are left to another load balancer).
    pub servicelb: bool,
    /// The cluster DNS Service and its endpoints; `None` with `--disable coredns`.
    pub cluster_dns: Option<clusterdns::ClusterDnsOptions>,
    /// Shared informers to read instead of a registry of each leadership term's own
    /// (e.g. one registry for the controller manager and the scheduler of a process);
    /// they keep running when leadership is lost.
    pub informers: Option<informers::SharedInformers>,
}

/// Runs the controller manager forever: waits for leadership, then runs every
/// controller until leadership is lost (then waits again).
pub async fn run(client: kube::Client, opts: Options) -> Result<(), ControllerError> {
    let elector = leader::LeaderElector::new(
        client.clone(),
        "kube-system",
        "kube-controller-manager",
        &opts.identity,
        opts.lease_duration,
    );
    loop {
        let lost = elector.acquire().await;
        tracing::info!(identity = %opts.identity, "controller manager: became leader");
        let mut tasks = tokio::task::JoinSet::new();
        // One watch per resource type for every controller of this term (or of the
        // process, when given).
        let informers = opts
            .informers
            .clone()
            .unwrap_or_else(|| informers::SharedInformers::new(client.clone()));
        tasks.spawn(serviceaccount::run(
            client.clone(),
            opts.root_ca_pem.clone(),
            informers.clone(),
        ));
        tasks.spawn(namespace::run(client.clone(), informers.clone()));
        tasks.spawn(resourcequota::run(client.clone(), informers.clone()));
        tasks.spawn(endpoints::run(client.clone(), informers.clone()));
        tasks.spawn(endpointslice::run(client.clone(), informers.clone()));
        if opts.servicelb {
            tasks.spawn(servicelb::run(client.clone(), informers.clone()));
        }
        tasks.spawn(clusterdns::run(
            client.clone(),
            opts.cluster_dns.clone(),
            informers.clone(),
        ));
        tasks.spawn(nodelifecycle::run(
            client.clone(),
            opts.nodes.clone(),
            informers.clone(),
        ));
        tasks.spawn(nodeipam::run(
            client.clone(),
            opts.nodes.cluster_cidr.clone(),
            opts.nodes.node_cidr_mask_size,
            informers.clone(),
        ));
        tasks.spawn(podgc::run(
            client.clone(),
            opts.nodes.terminated_pod_gc_threshold,
            informers.clone(),
        ));
        tasks.spawn(disruption::run(client.clone(), informers.clone()));
        tasks.spawn(pvbinder::run(client.clone(), informers.clone()));
        tasks.spawn(clusterrole_aggregation::run(
            client.clone(),
            informers.clone(),
        ));
        tasks.spawn(hpa::run(client.clone(), informers.clone()));
        tasks.spawn(job::run(client.clone(), informers.clone()));
        tasks.spawn(cronjob::run(client.clone(), informers.clone()));
        tasks.spawn(ttlafterfinished::run(client.clone(), informers.clone()));
        tasks.spawn(statefulset::run(client.clone(), informers.clone()));
        tasks.spawn(daemonset::run(client.clone(), informers.clone()));
        tasks.spawn(replicaset::run(client.clone(), informers.clone()));
        tasks.spawn(deployment::run(client.clone(), informers.clone()));
        tasks.spawn(gc::run(client.clone(), informers.clone()));
        tasks.spawn(csrsigning::run(
            client.clone(),
            opts.root_ca_pem.clone(),
            opts.ca_key_pem.clone(),
            informers.clone(),
        ));
        tokio::select! {
            _ = lost => {
                tracing::warn!("controller manager: lost leadership; stopping controllers");
            }
            Some(r) = tasks.join_next() => {
                match r {
                    Ok(Err(e)) => tracing::error!(error = %e, "controller ended"),
                    Ok(Ok(())) => tracing::error!("a controller ended; restarting the controllers"),
                    Err(e) => tracing::error!(error = %e, "a controller panicked or was cancelled; restarting the controllers"),
                }
            }
        }
        tasks.abort_all();
        if opts.informers.is_none() {
            informers.stop();
        }
    }
}

/// A kube-rs client over any HTTP `tower::Service` (e.g. the API server's in-process
/// transport).
pub fn client_over<S, B>(service: S) -> kube::Client
where
    S: tower_service::Service<http::Request<kube::client::Body>, Response = http::Response<B>>
        + Send
        + Clone
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    kube::Client::new(service, "default")
}
