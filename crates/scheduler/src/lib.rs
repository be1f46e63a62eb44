//! rk3s scheduler: upstream kube-scheduler's default profile as a pure library
//! on k8s-openapi types.
//!
//! Filters (in upstream order): NodeUnschedulable, NodeName, TaintToleration,
//! NodeAffinity (nodeSelector + required affinity), NodePorts, NodeResourcesFit,
//! VolumeBinding (bound PVs' node affinity, unbound immediate claims), VolumeZone,
//! PodTopologySpread, InterPodAffinity. Scores (upstream default weights):
//! TaintToleration 3, NodeAffinity 2, NodeResourcesFit (LeastAllocated) 1,
//! PodTopologySpread 2, InterPodAffinity 2, BalancedAllocation 1, ImageLocality 1.
//! PostFilter: DefaultPreemption (with PodDisruptionBudgets).
//!
//! The component ([`run`]) holds the `kube-scheduler` Lease, follows nodes, pods,
//! volumes, PDBs and namespaces through the controller runtime's shared informers
//! (`rk3s-runtime`; no watch of its own), keeps a [`Snapshot`] and a
//! [`queue::SchedulingQueue`] current, and binds pods through `pods/binding` (see
//! [`runner`]).
//!
//! ```no_run
//! # use rk3s_scheduler::{Scheduler, Snapshot};
//! # let (nodes, pods, pod) = (vec![], vec![], Default::default());
//! let mut snap = Snapshot::new(nodes, pods);
//! let sched = Scheduler::default();
//! match sched.schedule(&snap, &pod) {
//!     Ok(node) => snap.add_pod(&pod, &node), // after binding
//!     Err(e) => eprintln!("{e}"),            // upstream's FailedScheduling message
//! }
//! ```

/// Leader election (shared with the controller manager), from the controller runtime.
pub use rk3s_runtime::leader;
mod plugins;
pub mod quantity;
pub mod queue;
pub mod resources;
pub mod runner;
mod scheduler;
pub mod selectors;
mod snapshot;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

pub use plugins::{Weights, MAX_NODE_SCORE};
pub use quantity::{parse_milli_value, parse_value, QuantityError};
pub use resources::{pod_non_zero_requests, pod_requests, Resources};
pub use runner::{run, RunOptions, SchedulerError};
pub use scheduler::{FitError, Preemption, Scheduler, SchedulerConfig};
pub use snapshot::{pod_key, pod_priority, Snapshot};
