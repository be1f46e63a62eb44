//! The API server's shared state, [`Inner`]: the datastore and watch cache, the served
//! resources and their schemas, authentication and authorization, the Service
//! allocators and observability (metrics, audit). Every request handler and
//! background loop of the server reads it; it holds no per-kind rules (those are in
//! [`crate::strategy`]).

use std::sync::Arc;

use rk3s_api::Registry;
use rk3s_openapi::OpenApi;
use rk3s_store::Store;

use crate::alloc::ServiceAllocators;
use crate::cache::WatchCache;

/// Shared state of the API server, in the parts it is made of.
pub struct Inner {
    /// The datastore.
    pub store: Arc<dyn Store>,
    /// The watch cache.
    pub cache: Arc<WatchCache>,
    /// What is served: resources and their schemas.
    pub schemas: Schemas,
    /// Authentication and authorization.
    pub auth: Auth,
    /// Service cluster IP / node port allocation (through the store).
    pub alloc: ServiceAllocators,
    /// Metrics and the audit log.
    pub observability: Observability,
    /// Advertised address (for `/api`'s serverAddressByClientCIDRs).
    pub advertise: String,
    /// The client for kubelet-backed subresources, if configured.
    pub kubelet_client: Option<crate::proxy::KubeletClient>,
    /// API groups served by code in this process (`metrics.k8s.io`).
    pub local_groups: crate::local_group::LocalGroups,
    /// Remote API groups (APIServices with `spec.service`) and the front proxy.
    pub aggregator: crate::aggregator::Aggregator,
}

/// The served resources and their schemas.
pub struct Schemas {
    /// Served resources.
    pub registry: Registry,
    /// OpenAPI documents and schema lookups (rebuilt when CRDs change).
    pub openapi_docs: std::sync::RwLock<Arc<OpenApi>>,
    /// Served custom resources: schemas, scale paths, printer columns.
    pub crds: crate::crd::CrdState,
}

/// Authentication and authorization state.
pub struct Auth {
    /// The RBAC snapshot.
    pub rbac_cache: crate::authz::RbacCache,
    /// Bearer-token authentication and service-account token issuing.
    pub token_auth: crate::authz::TokenAuth,
    /// Verifies client certificates against the cluster CA after the TLS handshake
    /// (`server::serve`); `None` if the CA could not be read (then every client
    /// certificate is refused with 401).
    pub client_cert_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// Metrics and audit.
pub struct Observability {
    /// Request metrics.
    pub metrics: crate::metrics::Metrics,
    /// The audit log, if enabled.
    pub audit: Option<crate::audit::AuditLog>,
}

impl Inner {
    /// The current OpenAPI documents.
    pub fn openapi(&self) -> Arc<OpenApi> {
        match self.schemas.openapi_docs.read() {
            Ok(o) => o.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
