//! API machinery shared by the API server and its helpers.
//!
//! - [`resource`]: what a resource is ([`ResourceInfo`]) and the registry of every
//!   resource the server serves ([`Registry`]): the built-in table of Kubernetes 1.33
//!   plus resources added at run time (CRDs).
//! - [`status`]: [`ApiError`], the error every handler returns, rendered as a
//!   `meta.k8s.io/v1` `Status` body with upstream's codes, reasons and messages.
//! - [`discovery`]: the `/api`, `/apis`, per-group and aggregated (`apidiscovery.k8s.io/v2`)
//!   discovery documents, built from the registry.
//! - [`selector`]: label selectors and field selectors, parsed and matched as upstream
//!   (a re-export of [`rk3s_core::selector`], the one implementation).

pub mod discovery;
pub mod resource;
pub mod selector;
pub mod status;

pub use resource::{GroupVersions, Registry, ResourceInfo, Scope, Subresource};
pub use status::{ApiError, Cause};
