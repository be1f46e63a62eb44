//! The Kubernetes API server of rk3s.
//!
//! Map of this crate:
//! - [`server`]: TLS listener (HTTP/1.1 and HTTP/2), client-certificate authentication.
//! - [`handler`]: the entry point of every request: non-resource paths (health,
//!   version, discovery, OpenAPI) and dispatch of resource requests.
//! - [`request`]: path → [`request::RequestInfo`] (group, version, namespace, resource,
//!   name, subresource, verb), as upstream's RequestInfoFactory.
//! - [`rest`]: the generic REST layer: the verbs on resources (get, list, create,
//!   update, patch, delete, deletecollection), object semantics (uid, generation,
//!   finalizers, ...), subresources; it never names a kind, it asks the [`strategy`].
//! - [`state`]: [`state::Inner`], the shared state (store, cache, schemas, authn/authz,
//!   allocators, metrics and audit).
//! - [`storage`]: resources that are not store objects (componentstatuses, bindings,
//!   eviction, TokenRequest) behind one [`storage::RestStorage`] trait.
//! - [`output`]: JSON / Table / PartialObjectMetadata rendering by Accept header.
//! - [`fields`]: managedFields of writes that are not server-side apply.
//! - [`watch`]: watch streams served from the [`cache`].
//! - [`cache`]: the watch cache fed by one store watch.
//! - [`strategy`]: the rules of each kind (upstream's registry strategies), one file
//!   per kind; the generic REST layer in [`rest`] calls them.
//! - [`convert`]: API form <-> stored form (events.k8s.io Events are stored as core Events).
//! - [`crd`]: CustomResourceDefinitions: the CRD controller and custom-resource schemas.
//! - [`admission`]: Pod admission (ServiceAccount, Priority, DefaultTolerationSeconds,
//!   RuntimeClass), LimitRanger, DefaultStorageClass, PodSecurity, webhooks, ResourceQuota.
//! - [`alloc`]: Service cluster IPs (IPAddress objects) and node ports (a bitmap), in
//!   the store so that API servers sharing it never collide.
//! - [`authz`]: bearer tokens, impersonation, Node + RBAC authorization, review APIs.
//! - [`audit`]: the audit log (upstream policy and event formats).
//! - [`metrics`]: `/metrics` (request counts and latencies, cached objects, memory).
//! - [`bootstrap`]: objects every cluster has (namespaces, the `kubernetes` Service).
//! - [`componentstatus`]: the (deprecated) `componentstatuses` of the control plane.
//! - [`resize`]: `pods/{name}/resize` (in-place resize of container resources).
//! - [`local`]: the in-process transport (a `tower::Service`) for components in this process.
//! - [`local_group`]: API groups served by code in this process ([`local_group::LocalApiGroup`],
//!   e.g. `metrics.k8s.io`), with their local APIServices.
//!
//! Invariants: every object in the store is JSON without `metadata.resourceVersion`;
//! the resourceVersion a client sees is the store's mod revision of the key. Modules
//! depend one way: `handler -> {rest, watch} -> {strategy, output, fields, state}`;
//! per-kind rules live in `strategy/<kind>.rs` or in an admission plugin.

// ApiError (a Status with causes) is large, and errors are the rare path: not worth boxing.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod aggregator;
pub mod alloc;
pub mod apiserver_endpoints;
pub mod audit;
pub mod authz;
pub mod body;
pub mod bootstrap;
pub mod cache;
pub mod componentstatus;
pub mod convert;
pub mod crd;
pub mod crd_conversion;
pub mod ephemeral;
pub mod event_ttl;
pub mod fields;
pub mod handler;
pub mod local;
pub mod local_group;
pub mod metrics;
pub mod object;
pub mod output;
pub mod proxy;
pub mod proxy_rewrite;
pub mod request;
pub mod resize;
pub mod rest;
pub mod runtimeclass;
pub mod server;
pub mod state;
pub mod storage;
pub mod strategy;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod watch;
pub mod websocket;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use handler::ApiServer;

/// Who is making a request (user, uid, groups, extra), as upstream's `user.Info`.
pub use rk3s_auth::UserInfo;

/// Errors of starting or running the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// TLS material could not be used.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The datastore failed.
    #[error("datastore: {0}")]
    Store(#[from] rk3s_store::StoreError),
    /// Building the OpenAPI documents failed.
    #[error("openapi: {0}")]
    OpenApi(String),
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// Everything the API server needs to start.
pub struct Config {
    /// Address to listen on (`--bind-address`:`--https-listen-port`).
    pub listen: SocketAddr,
    /// Address other nodes and pods use to reach this server (the `kubernetes` endpoints).
    pub advertise_address: IpAddr,
    /// Port advertised with `advertise_address`.
    pub advertise_port: u16,
    /// Serving certificate chain (PEM).
    pub serving_cert_pem: String,
    /// Serving key (PEM).
    pub serving_key_pem: String,
    /// CA that signs client certificates (PEM).
    pub client_ca_pem: String,
    /// The datastore.
    pub store: Arc<dyn rk3s_store::Store>,
    /// Service CIDR (`--service-cidr`), e.g. `10.43.0.0/16`.
    pub service_cidr: String,
    /// NodePort range, inclusive.
    pub node_port_range: (u16, u16),
    /// Service-account signing key (PKCS#8 PEM), for TokenRequest.
    pub service_account_key_pem: String,
    /// Service-account verification key (SPKI PEM).
    pub service_account_pub_pem: String,
    /// Issuer of service-account tokens (`--service-account-issuer`).
    pub service_account_issuer: String,
    /// Contents of `--token-auth-file`, if given.
    pub token_auth_file: Option<String>,
    /// The audit log (`--audit-log-path`), if enabled.
    pub audit: Option<audit::AuditLog>,
    /// Client certificate and CA for talking to kubelets (`pods/log`, `nodes/proxy`).
    pub kubelet_client: Option<proxy::KubeletClientConfig>,
    /// The front proxy's client certificate towards extension API servers (APIServices
    /// with `spec.service`); `None`: they are called without a client certificate.
    pub front_proxy: Option<aggregator::FrontProxyConfig>,
}

/// The Kubernetes version this server speaks.
pub const KUBERNETES_VERSION: &str = "v1.33.0";
