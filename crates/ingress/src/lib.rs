//! The rk3s Ingress controller: an HTTP(S) reverse proxy that runs inside the rk3s
//! process on every node (k3s runs Traefik pods for this), serving the Ingresses of
//! class `rk3s` (IngressClass controller [`routes::CONTROLLER`]), `traefik`, or none.
//!
//! - [`routes`] (pure): [`routes::build`] turns Ingresses, IngressClasses, Services,
//!   EndpointSlices and TLS Secrets into an immutable [`RoutingTable`] and
//!   [`tls::TlsTable`]; the matching rules are in its doc.
//! - [`tls`]: certificates by SNI from the Secrets, a self-signed default certificate
//!   (generated at start), [`CertResolver`] read at every handshake.
//! - [`server`]: the listeners (`web`: HTTP/1.1; `websecure`: TLS with ALPN `h2` and
//!   `http/1.1`) and the proxy (X-Forwarded-*, timeouts, `Upgrade`/WebSocket
//!   splicing); [`upstream`]: pooled HTTP/1.1 keep-alive connections to the endpoints,
//!   round-robin with retry on the next endpoint when a connect fails.
//! - [`sync`]: what it writes: the node's EndpointSlice of `kube-system/rk3s-ingress`,
//!   the Ingresses' `status.loadBalancer`, Warning Events.
//! - [`run`]: all of it against a cluster, from reflector stores (one watch each for
//!   Ingresses, IngressClasses, Services, EndpointSlices and `kubernetes.io/tls`
//!   Secrets), rebuilding the tables (debounced) on any change.
//!
//! How traffic reaches the listeners: `kube-system/rk3s-ingress` (shipped in
//! `crates/deploy/manifests/ingress.yaml`) is a LoadBalancer Service without selector,
//! ports `web` 80 and `websecure` 443. ServiceLB puts the serving nodes' IPs in its
//! `status.loadBalancer.ingress`; the Service proxy then DNATs `<node IP>:80/443`
//! (`service-ips` map, LoadBalancer entries) to the Service's endpoints, which are the
//! EndpointSlices this controller keeps: every node's own IPs with ports 80/443. A
//! packet DNATed to the node's own IP:80 is delivered locally to the listener (bound to
//! the unspecified address by default); one DNATed to another node's IP is forwarded
//! there (masqueraded, as for any `externalTrafficPolicy: Cluster` Service) and served
//! by that node's listener. Caveat of `Cluster` policy with node-IP endpoints: the
//! receiving node's proxy sees its own IP as a LoadBalancer IP again and DNATs once
//! more, so a connection may hop between nodes (each hop masqueraded, so backends see a
//! node IP in X-Forwarded-For) before one node keeps it. The clean fix is
//! `externalTrafficPolicy: Local` on the Service (the proxy then keeps
//! LoadBalancer traffic on the node's own endpoint, no masquerade), which needs ServiceLB
//! to count an endpoint with this `nodeName` but no Pod `targetRef` as a local endpoint
//! (today it requires a Pod, so the manifest keeps `Cluster`). Pods reach the ingress
//! through the ClusterIP the same way. With the proxy disabled, the listeners still
//! answer on every node address.
//!
//! Invariants: no request waits on the API server (requests read the current snapshot;
//! rebuilding swaps it whole); one bad Ingress (bad host or path, missing Service,
//! invalid Secret) never keeps the others from being served: its bad parts are logged,
//! reported as an Event and skipped; no input panics the proxy; the listeners are bound
//! before the watches start, so a port conflict fails [`run`] at once. The crate
//! depends on no crate of ours; it talks to the cluster only through a `kube::Client`.

#![warn(missing_docs)]

#[cfg(test)]
mod proxy_tests;
pub mod routes;
pub mod server;
pub mod sync;
pub mod tls;
pub mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub use routes::{build, Entrypoint, RoutingTable, Sources, Warning};
pub use server::{Listeners, State, Timeouts};
pub use tls::CertResolver;

/// The IngressClass name served by default.
pub const DEFAULT_CLASS: &str = "rk3s";
/// The namespace of the ingress Service.
pub const SERVICE_NAMESPACE: &str = "kube-system";
/// The name of the ingress Service (its status is the Ingresses' status, its
/// EndpointSlices list the nodes' listeners).
pub const SERVICE_NAME: &str = "rk3s-ingress";
/// How long start-up waits for the informers before serving anyway.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// How long changes are gathered before the tables are rebuilt.
const REBUILD_DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the tables are rebuilt (and the API writes retried) without a change.
const RESYNC: Duration = Duration::from_secs(60);

/// How the Ingress controller runs.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// This node's name (the EndpointSlice's name and `nodeName`, `X-Forwarded-Server`).
    pub node_name: String,
    /// This node's IPs (the EndpointSlice's endpoints).
    pub node_ips: Vec<IpAddr>,
    /// Plain HTTP listen addresses (`web`); [`IngressOptions::new`]: `0.0.0.0:80` and
    /// each IPv6 node IP on port 80.
    pub http_listen: Vec<SocketAddr>,
    /// HTTPS listen addresses (`websecure`); default as `http_listen` with port 443.
    pub https_listen: Vec<SocketAddr>,
    /// The IngressClass name served (`rk3s`); `traefik` and classes with controller
    /// [`routes::CONTROLLER`] are served too.
    pub class_name: String,
    /// From forwarding a request until the backend's response headers (504 after).
    pub request_timeout: Duration,
    /// A client connection idle that long (no bytes, no request in flight) is closed.
    pub idle_timeout: Duration,
    /// Connecting to one backend endpoint (then the next is tried).
    pub connect_timeout: Duration,
    /// The ingress Service (namespace, name): `kube-system/rk3s-ingress`.
    pub service: (String, String),
    /// Whether to keep this node's EndpointSlice of the ingress Service.
    pub publish_endpoints: bool,
}

impl IngressOptions {
    /// The defaults for a node: listeners on every address, ports 80 and 443, class
    /// `rk3s`, request timeout 60 s, idle timeout 180 s (Traefik's), connect timeout 5 s.
    pub fn new(node_name: impl Into<String>, node_ips: Vec<IpAddr>) -> IngressOptions {
        let listen = |port: u16| {
            let mut v = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)];
            v.extend(
                node_ips
                    .iter()
                    .filter(|ip| ip.is_ipv6())
                    .map(|ip| SocketAddr::new(*ip, port)),
            );
            v
        };
        let t = Timeouts::default();
        IngressOptions {
            node_name: node_name.into(),
            http_listen: listen(80),
            https_listen: listen(443),
            node_ips,
            class_name: DEFAULT_CLASS.into(),
            request_timeout: t.request,
            idle_timeout: t.idle,
            connect_timeout: t.connect,
            service: (SERVICE_NAMESPACE.into(), SERVICE_NAME.into()),
            publish_endpoints: true,
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            request: self.request_timeout,
            idle: self.idle_timeout,
            connect: self.connect_timeout,
        }
    }
}

/// The Ingress controller's errors (each ends [`run`]; the caller restarts it).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The options are unusable.
    #[error("invalid ingress options: {0}")]
    Options(String),
    /// A listen socket could not be bound.
    #[error("ingress cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS setup failed.
    #[error("ingress TLS: {0}")]
    Tls(String),
    /// The server or one of its tasks stopped.
    #[error("ingress stopped: {0}")]
    Server(String),
}

/// Runs the Ingress controller until an error (or until the future is dropped, which
/// stops every watch and listener): binds the listeners, watches through `client`,
/// serves the Ingresses and keeps their status and this node's EndpointSlice.
///
/// The client needs list/watch on ingresses, ingressclasses, services,
/// endpointslices and secrets (all namespaces); patch on `ingresses/status`;
/// create/patch on endpointslices in the Service's namespace; create on events
/// (events.k8s.io).
pub async fn run(client: kube::Client, opts: IngressOptions) -> Result<(), IngressError> {
    if opts.http_listen.is_empty() && opts.https_listen.is_empty() {
        return Err(IngressError::Options("no listen address".into()));
    }
    if opts.node_name.is_empty() {
        return Err(IngressError::Options("no node name".into()));
    }
    let default_cert = tls::default_certificate().map_err(|e| IngressError::Tls(e.to_string()))?;
    let certs = Arc::new(CertResolver::new(Arc::new(default_cert)));
    let state = Arc::new(State::new(certs, opts.timeouts(), opts.node_name.clone()));
    let listeners = Listeners::bind(&opts.http_listen, &opts.https_listen).await?;
    tracing::info!(http = ?listeners.http_addrs(), https = ?listeners.https_addrs(), class = %opts.class_name, "ingress controller listening");

    let mut tasks = JoinSet::new();
    let notify = Arc::new(Notify::new());
    let stores = Stores {
        ingresses: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &notify,
            &mut tasks,
        ),
        classes: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &notify,
            &mut tasks,
        ),
        services: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &notify,
            &mut tasks,
        ),
        slices: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &notify,
            &mut tasks,
        ),
        secrets: reflect(
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!("type={}", tls::TLS_SECRET_TYPE)),
            &notify,
            &mut tasks,
        ),
    };
    let ready = async {
        let _ = stores.ingresses.wait_until_ready().await;
        let _ = stores.classes.wait_until_ready().await;
        let _ = stores.services.wait_until_ready().await;
        let _ = stores.slices.wait_until_ready().await;
        let _ = stores.secrets.wait_until_ready().await;
    };
    if tokio::time::timeout(SYNC_WAIT, ready).await.is_err() {
        tracing::warn!("ingress: serving before the informers synced");
    }
    let (outcome_tx, outcome_rx) = tokio::sync::watch::channel(Arc::new(Outcome::default()));
    tasks.spawn(write_loop(client, opts.clone(), stores.clone(), outcome_rx));
    tasks.spawn(rebuild_loop(
        opts.class_name.clone(),
        stores,
        state.clone(),
        notify,
        outcome_tx,
    ));
    tokio::select! {
        r = listeners.serve(state) => r,
        r = tasks.join_next() => Err(IngressError::Server(format!("an internal task ended: {r:?}"))),
    }
}

/// The reflector stores the tables are built from.
#[derive(Clone)]
struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
}

fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    notify: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let notify = notify.clone();
    let stream = watcher(api, cfg)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tasks.spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::debug!(error = %e, "ingress: watch error (retrying)"),
            }
        }
    });
    reader
}

/// What the API writes follow: the result of the last rebuild.
#[derive(Debug, Default)]
struct Outcome {
    served: Vec<routes::ObjectKey>,
    warnings: BTreeSet<Warning>,
}

/// Rebuilds the tables on every change (debounced) and swaps them in; never waits on
/// an API call (the writes follow in [`write_loop`]).
async fn rebuild_loop(
    class_name: String,
    stores: Stores,
    state: Arc<State>,
    notify: Arc<Notify>,
    outcome: tokio::sync::watch::Sender<Arc<Outcome>>,
) {
    loop {
        let src = Sources {
            ingresses: stores.ingresses.state(),
            classes: stores.classes.state(),
            services: stores.services.state(),
            slices: stores.slices.state(),
            secrets: stores.secrets.state(),
        };
        let class = class_name.clone();
        match tokio::task::spawn_blocking(move || routes::build(&src, &class)).await {
            Ok(built) => {
                tracing::debug!(
                    served = built.served.len(),
                    certificates = built.tls.len(),
                    "ingress: routing table rebuilt"
                );
                state.set_routes(built.routes);
                state.certs.set(built.tls);
                outcome.send_replace(Arc::new(Outcome {
                    served: built.served,
                    warnings: built.warnings.into_iter().collect(),
                }));
            }
            Err(e) => tracing::error!(error = %e, "ingress: building the routing table failed"),
        }
        // Wait for a change (or the periodic resync), then gather changes briefly.
        let _ = tokio::time::timeout(RESYNC, notify.notified()).await;
        tokio::time::sleep(REBUILD_DEBOUNCE).await;
    }
}

/// After each rebuild: Events for new warnings, the served Ingresses' status, this
/// node's EndpointSlices.
async fn write_loop(
    client: kube::Client,
    opts: IngressOptions,
    stores: Stores,
    mut outcome: tokio::sync::watch::Receiver<Arc<Outcome>>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "rk3s-ingress".into(),
            instance: Some(opts.node_name.clone()),
        },
    );
    let mut reported: BTreeSet<Warning> = BTreeSet::new();
    // The resourceVersion each write was based on: not written again until the watch
    // shows a newer object (a change arriving before our own write's event).
    // Per served Ingress: its generation and the status last written for it. A status
    // someone else wrote since is left alone until the Ingress's spec or the load
    // balancer's addresses change (no fight with other writers of /status).
    let mut status_written: HashMap<routes::ObjectKey, sync::StatusMark> = HashMap::new();
    let mut slice_written: HashMap<String, Option<String>> = HashMap::new();
    let web_port = opts.http_listen.first().map(|a| a.port()).unwrap_or(80);
    let websecure_port = opts.https_listen.first().map(|a| a.port()).unwrap_or(443);
    while outcome.changed().await.is_ok() {
        let now = outcome.borrow_and_update().clone();

        // Events for warnings not reported yet.
        for w in now.warnings.difference(&reported) {
            tracing::warn!(ingress = %w.ingress, reason = w.reason, "ingress: {}", w.message);
            let ing = stores
                .ingresses
                .get(&ObjectRef::new(&w.ingress.name).within(&w.ingress.namespace));
            if let Some(ing) = ing {
                let ev = Event {
                    type_: EventType::Warning,
                    reason: w.reason.to_string(),
                    note: Some(w.message.chars().take(1000).collect()),
                    action: "Sync".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &ing.object_ref(&())).await {
                    tracing::debug!(error = %e, "ingress: cannot record an Event");
                }
            }
        }
        reported = now.warnings.clone();

        // Status of the served Ingresses = the Service's load balancer status.
        let (svc_ns, svc_name) = &opts.service;
        let svc = stores
            .services
            .get(&ObjectRef::new(svc_name).within(svc_ns));
        let desired = sync::desired_status(svc.as_deref());
        for key in &now.served {
            let Some(ing) = stores
                .ingresses
                .get(&ObjectRef::new(&key.name).within(&key.namespace))
            else {
                continue;
            };
            if !sync::should_write_status(&ing, &desired, status_written.get(key)) {
                continue;
            }
            let mark = (ing.metadata.generation, desired.clone());
            match sync::patch_status(&client, &key.namespace, &key.name, &desired).await {
                Ok(()) => {
                    status_written.insert(key.clone(), mark);
                }
                Err(e) => {
                    tracing::debug!(ingress = %key, error = %e, "ingress: cannot update the status")
                }
            }
        }

        // This node's EndpointSlice(s) of the Service.
        if !opts.publish_endpoints {
            continue;
        }
        let Some(svc) = svc.as_deref() else { continue };
        for want in sync::desired_slices(
            svc,
            &opts.node_name,
            &opts.node_ips,
            web_port,
            websecure_port,
        ) {
            let name = want.metadata.name.clone().unwrap_or_default();
            let current = stores.slices.get(&ObjectRef::new(&name).within(svc_ns));
            if current
                .as_deref()
                .is_some_and(|c| sync::slice_up_to_date(c, &want))
            {
                continue;
            }
            let rv = current.and_then(|c| c.metadata.resource_version.clone());
            if slice_written.get(&name) == Some(&rv) {
                continue;
            }
            match sync::apply_slice(&client, &want).await {
                Ok(()) => {
                    tracing::info!(slice = %name, "ingress: EndpointSlice updated");
                    slice_written.insert(name, rv);
                }
                Err(e) => {
                    tracing::warn!(slice = %name, error = %e, "ingress: cannot write the EndpointSlice")
                }
            }
        }
    }
}
