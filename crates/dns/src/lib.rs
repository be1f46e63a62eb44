//! Cluster DNS for rk3s: the DNS server that runs inside the rk3s process on every node
//! (k3s runs CoreDNS pods for this), built on hickory-server.
//!
//! - [`records`]: the pure part. [`Records::build`] indexes Services, EndpointSlices,
//!   Nodes and the custom ConfigMap into the Kubernetes DNS schema (the DNS
//!   specification as CoreDNS's `kubernetes` plugin serves it, `pods insecure`);
//!   [`Records::resolve`] answers one question from it, or says to forward it.
//! - [`server`]: [`serve`] binds UDP and TCP on each listen address and answers with a
//!   hickory [`RequestHandler`](hickory_server::server::RequestHandler) over a
//!   [`RecordsHandle`] and a [`Forwarder`]; it needs no Kubernetes client.
//! - [`forward`]: upstream forwarding (UDP, TCP on truncation, rotation, timeouts) and
//!   its bounded cache.
//! - [`resolv`]: the upstreams from resolv.conf with k3s's loopback rule; [`custom`]: the
//!   `coredns-custom` ConfigMap (hosts, stub domains, upstream nameservers).
//! - [`run`]: the whole thing against a cluster: reflector stores of Services,
//!   EndpointSlices, Nodes and the custom ConfigMap (one watch each), rebuilding the
//!   records (debounced, off the async threads) when any of them changes.
//!
//! Invariants: no query causes an API call (answers come from the reflector stores'
//! snapshot in the current [`Records`]); a query never panics the server (every input is
//! validated, errors become DNS response codes); names in the cluster domain are never
//! forwarded; nothing is forwarded to a server that was not configured (no public
//! fallback resolver).

#![warn(missing_docs)]

pub mod custom;
pub mod forward;
pub mod records;
pub mod resolv;
pub mod server;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub use forward::{ForwardConfig, ForwardError, Forwarder};
pub use records::{Answer, Records, RecordsConfig, RecordsHandle, Reply, Sources, Upstream};
pub use server::{serve, DnsServer};

/// How the cluster DNS runs.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Where to serve UDP and TCP (the node IP:53; tests use 127.0.0.1:0).
    pub listen: Vec<SocketAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The upstream resolvers file; `None`: /etc/resolv.conf with k3s's loopback rule
    /// (see [`resolv`]).
    pub resolv_conf: Option<PathBuf>,
    /// The TTL of cluster answers (5).
    pub ttl: u32,
    /// The custom ConfigMap (namespace, name); `None`: `kube-system/coredns-custom`.
    pub custom_config: Option<(String, String)>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            listen: Vec::new(),
            cluster_domain: "cluster.local".into(),
            resolv_conf: None,
            ttl: 5,
            custom_config: None,
        }
    }
}

/// The cluster DNS's errors.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The cluster domain is not a DNS name.
    #[error("invalid cluster domain {0:?}: {1}")]
    ClusterDomain(String, String),
    /// No listen address was given.
    #[error("no listen address for the cluster DNS")]
    NoListen,
    /// A listen socket could not be bound.
    #[error("cluster DNS cannot bind {proto} {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// "udp" or "tcp".
        proto: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server or one of its tasks stopped.
    #[error("cluster DNS stopped: {0}")]
    Server(String),
}

/// The default custom ConfigMap, as k3s names it.
pub const DEFAULT_CUSTOM_CONFIG: (&str, &str) = ("kube-system", "coredns-custom");
/// How long start-up waits for the informers before serving anyway (CoreDNS: 5 s).
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// How long changes are gathered before the records are rebuilt.
const REBUILD_DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the resolv.conf files are read again.
const RESOLV_RELOAD: Duration = Duration::from_secs(30);

/// Runs the cluster DNS until an error (or until the future is dropped/aborted, which
/// stops every watch and socket): watches Services, EndpointSlices, Nodes and the custom
/// ConfigMap through `client`, and serves on `opts.listen`.
///
/// The client needs list/watch on services, endpointslices (discovery.k8s.io), nodes and
/// configmaps in the custom ConfigMap's namespace (CoreDNS's `system:coredns` role).
pub async fn run(client: kube::Client, opts: DnsOptions) -> Result<(), DnsError> {
    let cfg = RecordsConfig::new(&opts.cluster_domain, opts.ttl)?;
    if opts.listen.is_empty() {
        return Err(DnsError::NoListen);
    }
    let upstreams = resolv::load_upstreams(opts.resolv_conf.as_deref());
    tracing::info!(servers = ?upstreams.servers, source = ?upstreams.source, "cluster DNS upstreams");
    let forwarder = Arc::new(Forwarder::new(upstreams.servers.clone()));
    let handle = Arc::new(RecordsHandle::new(Records::empty(&cfg)));
    let (cm_ns, cm_name) = opts.custom_config.clone().unwrap_or_else(|| {
        (
            DEFAULT_CUSTOM_CONFIG.0.into(),
            DEFAULT_CUSTOM_CONFIG.1.into(),
        )
    });

    let mut tasks = JoinSet::new();
    let notify = Arc::new(Notify::new());
    let stores = Stores {
        services: reflect(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            &notify,
            &mut tasks,
        ),
        slices: reflect(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            &notify,
            &mut tasks,
        ),
        nodes: reflect(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            &notify,
            &mut tasks,
        ),
        custom: reflect(
            Api::<ConfigMap>::namespaced(client, &cm_ns),
            watcher::Config::default().fields(&format!("metadata.name={cm_name}")),
            &notify,
            &mut tasks,
        ),
        custom_name: cm_name,
    };
    let ready = async {
        let _ = stores.services.wait_until_ready().await;
        let _ = stores.slices.wait_until_ready().await;
        let _ = stores.nodes.wait_until_ready().await;
        let _ = stores.custom.wait_until_ready().await;
    };
    if tokio::time::timeout(SYNC_WAIT, ready).await.is_err() {
        tracing::warn!("cluster DNS: starting before the informers synced (cluster names may be NXDOMAIN briefly)");
    }
    let mut last_warnings = Vec::new();
    rebuild(&cfg, &stores, &handle, &mut last_warnings).await;
    tasks.spawn(rebuild_loop(
        cfg.clone(),
        stores,
        handle.clone(),
        notify,
        last_warnings,
    ));
    tasks.spawn(resolv_reload_loop(
        opts.resolv_conf.clone(),
        forwarder.clone(),
        upstreams.servers,
    ));

    let server = serve(&opts.listen, handle, forwarder).await?;
    tracing::info!(listen = ?server.local_addrs(), domain = %cfg.domain(), "cluster DNS serving");
    tokio::select! {
        r = server.wait() => Err(r.err().unwrap_or_else(|| DnsError::Server("every listener closed".into()))),
        r = tasks.join_next() => Err(DnsError::Server(format!("an internal task ended: {r:?}"))),
    }
}

/// The reflector stores the records are built from.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    custom: Store<ConfigMap>,
    custom_name: String,
}

/// Starts a watch of `api` into a new store; every change (after the initial list)
/// wakes `notify`.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    notify: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let notify = notify.clone();
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff().reflect(writer));
        let mut failing = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => {
                    failing = false;
                    notify.notify_one();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "cluster DNS: watch failed; retrying");
                    }
                    failing = true;
                }
            }
        }
    });
    reader
}

async fn rebuild(
    cfg: &RecordsConfig,
    stores: &Stores,
    handle: &RecordsHandle,
    last_warnings: &mut Vec<String>,
) {
    let sources = Sources {
        services: stores.services.state(),
        endpoint_slices: stores.slices.state(),
        nodes: stores.nodes.state(),
        custom: stores
            .custom
            .state()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(stores.custom_name.as_str())),
    };
    let cfg = cfg.clone();
    let records = match tokio::task::spawn_blocking(move || Records::build(&cfg, &sources)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cluster DNS: rebuilding the records failed; keeping the previous ones");
            return;
        }
    };
    if records.warnings() != last_warnings.as_slice() {
        for w in records.warnings() {
            if !last_warnings.contains(w) {
                tracing::warn!("cluster DNS: {w}");
            }
        }
        *last_warnings = records.warnings().to_vec();
    }
    tracing::debug!(
        services = records.service_count(),
        names = records.name_count(),
        "cluster DNS records rebuilt"
    );
    handle.store(records);
}

async fn rebuild_loop(
    cfg: RecordsConfig,
    stores: Stores,
    handle: Arc<RecordsHandle>,
    notify: Arc<Notify>,
    mut last_warnings: Vec<String>,
) {
    loop {
        notify.notified().await;
        tokio::time::sleep(REBUILD_DEBOUNCE).await;
        rebuild(&cfg, &stores, &handle, &mut last_warnings).await;
    }
}

async fn resolv_reload_loop(
    explicit: Option<PathBuf>,
    forwarder: Arc<Forwarder>,
    mut current: Vec<SocketAddr>,
) {
    loop {
        tokio::time::sleep(RESOLV_RELOAD).await;
        let u = resolv::choose_upstreams(
            explicit.as_deref(),
            std::path::Path::new(resolv::ETC_RESOLV_CONF),
            std::path::Path::new(resolv::SYSTEMD_RESOLV_CONF),
            |p| std::fs::read_to_string(p).ok(),
        );
        if u.servers != current {
            if u.servers.is_empty() {
                tracing::warn!("cluster DNS: the resolv.conf files no longer name a usable nameserver; names outside the cluster will get SERVFAIL");
            } else {
                tracing::info!(servers = ?u.servers, source = ?u.source, "cluster DNS upstreams changed");
            }
            forwarder.set_resolv_upstreams(u.servers.clone());
            current = u.servers;
        }
    }
}
