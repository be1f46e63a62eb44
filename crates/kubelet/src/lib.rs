//! The rk3s node agent.
//!
//! For now this crate holds [`sim`]: simulated nodes in the spirit of KWOK, which
//! register Node objects, keep their Leases fresh and move the pods bound to them through
//! their phases without running containers — so controllers and the scheduler can be
//! tested and benchmarked at scale. The real agent is being built from [`containerd`]
//! (the supervised containerd and its config), [`cri`] (a CRI v1 client) and [`image`]
//! (OCI archives, the sandbox image, imports).

pub mod agent;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod events;
pub mod image;
pub mod logs;
pub mod node;
pub mod pods;
pub mod server;
pub mod sim;
pub mod static_pods;
pub mod stats;
pub mod streaming;
pub mod volumes;

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch failed.
    #[error("watch: {0}")]
    Watch(String),
}
