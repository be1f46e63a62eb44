//! Admission plugins of rk3s's API server, after upstream Kubernetes:
//! LimitRanger, ResourceQuota, PodSecurity, DefaultStorageClass, NodeRestriction and the
//! Mutating/Validating admission webhooks.
//!
//! Every plugin works on `serde_json::Value` objects and is stateless: the
//! caller passes the objects the plugin needs (LimitRanges, ResourceQuotas,
//! namespace labels, StorageClasses, webhook configurations).
//!
//! Upstream's order on CREATE/UPDATE, which the API server should follow:
//! 1. mutating: NamespaceLifecycle, [`LimitRanger`] defaults
//!    ([`LimitRanger::default_pod`]), ServiceAccount,
//!    [`default_storage_class`] (PVC CREATE), Priority,
//!    DefaultTolerationSeconds, then [`webhook::run_mutating`];
//! 2. validating (after defaulting/schema validation of the mutated object):
//!    [`LimitRanger::validate`], [`podsecurity::evaluate`],
//!    [`webhook::run_validating`], and last [`quota::check`] (whose new
//!    `status.used` values the caller writes back to the ResourceQuotas).

pub mod limitranger;
pub mod noderestriction;
pub mod podsecurity;
pub mod quantity;
pub mod quota;
pub mod storageclass;
pub mod util;
pub mod webhook;

pub use limitranger::LimitRanger;
pub use quantity::Quantity;
pub use storageclass::default_storage_class;
