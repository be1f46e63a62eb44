//! The one controller runtime of rk3s, used by the controller manager and the
//! scheduler (and meant for every other API client that reconciles: kubelet, proxy,
//! DNS, ingress): upstream's client-go machinery in one place.
//!
//! - [`informers`]: shared informers — one watch and one reflector store per resource
//!   type, secondary indexes (pods by node, by owner, by namespace, ...) and change
//!   subscriptions;
//! - [`queue`]: the per-key work queue (deduplicated, one worker per key at a time,
//!   exponential per-key back-off 5 ms · 2ⁿ up to 1000 s, reset on success);
//! - [`controller`]: [`run_controller`] — name, workers, triggers (object changes ->
//!   keys) and a reconcile function; the only loop shape controllers use;
//! - [`expectations`]: writes in flight per key, so a reconcile never acts on a cache
//!   that has not seen its own writes;
//! - [`events`]: the event recorder (events.k8s.io Events, repeats counted in a series);
//! - [`leader`]: Lease-based leader election (the `rk3s-leader` crate).
//!
//! Invariants: this crate depends on no other rk3s crate but `rk3s-leader`, talks to
//! the cluster only through a `kube::Client` (never the datastore), and every part but
//! the informers' watches and leader election works without an API server (tests feed
//! informers by hand with [`informers::SharedInformers::fake`]). A key is never
//! reconciled by two workers at once, and an event during a reconcile is never lost.

#![warn(missing_docs)]

pub mod controller;
pub mod events;
pub mod expectations;
pub mod informers;
pub mod queue;

/// Leader election on a `coordination.k8s.io` Lease.
pub use rk3s_leader as leader;

pub use controller::{for_objects, run_controller, Action, Trigger};
pub use informers::{Change, Index, InformerResource, OwnedCache, SharedInformers};
pub use queue::{Backoff, WorkQueue};
