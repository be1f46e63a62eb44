//! k3s's helm-controller for rk3s: the `helm.cattle.io/v1` kinds `HelmChart` and
//! `HelmChartConfig` (CRDs created by [`run`]) and the controller that turns each
//! HelmChart into a klipper-helm Job (`helm-install-<name>`, or `helm-delete-<name>`
//! while the chart is deleted) with its ServiceAccount, ClusterRoleBinding, values Secret
//! and content ConfigMap, named, labelled and configured as helm-controller does, so
//! k3s's HelmChart manifests (and the klipper-helm image) work unchanged.
//!
//! Invariants: an ordinary API client (`kube::Client`), depending on no crate of ours
//! but `rk3s-runtime` (work queue, Event recorder); the Job is a pure function of the
//! chart, its HelmChartConfig, the values Secrets it names and [`JobOptions`]
//! ([`job::build`], unit-tested field by field); a managed chart is never removed before
//! its delete Job completed (finalizer `wrangler.cattle.io/on-helm-chart-remove`).
//! Map: [`types`] (the kinds), [`crds`] (their CRDs), [`job`] (the objects built),
//! [`controller`] (reconcile).

pub mod controller;
pub mod crds;
pub mod job;
pub mod types;

pub use controller::{ensure_crds, run, HelmControllerOptions, FINALIZER};
pub use job::{default_job_image, JobOptions, DEFAULT_JOB_IMAGE};

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// An API request failed.
    #[error("API request: {0}")]
    Kube(#[from] kube::Error),
    /// An object did not convert.
    #[error("decoding: {0}")]
    Json(#[from] serde_json::Error),
    /// The CRDs were applied but are not served after 10 s.
    #[error("the HelmChart CRDs are not served")]
    CrdNotServed,
}
