//! NetworkPolicy enforcement for the node rk3s runs on (issue 10, scope item 4).
//!
//! [`run`] keeps reflector stores of NetworkPolicies, Pods and Namespaces (cluster-wide:
//! peers are pods of every node) and, on every change, computes which local pods are
//! restricted ([`model::compute`]), renders the desired nftables table
//! ([`render::desired`]) and applies the difference with the rules in place as ONE
//! `nft -f -` transaction. The table is `ip <table>` (and `ip6 <table>` only while local
//! restricted pods have IPv6 addresses); nothing outside it is touched.
//!
//! Invariants:
//! - pods not selected by any policy for a direction are not restricted in it; replies of
//!   allowed connections always pass; the node always reaches its own pods;
//! - a policy that cannot be used is skipped with a warning and never affects others;
//! - a failed transaction leaves the previous rules in place (nft transactions are
//!   atomic) and is retried with a full rebuild of the table; the table is also rebuilt
//!   at start and every `full_resync_period`;
//! - syncs are at least `min_sync_interval` apart (changes in between are batched).

pub mod model;
pub mod nft;
pub mod render;
pub mod selector;
mod sync;

pub use sync::run;

use std::time::Duration;

/// Options of the NetworkPolicy enforcer.
#[derive(Debug, Clone)]
pub struct NetpolOptions {
    /// This node's name: pods with `spec.nodeName` equal to it are the local pods.
    pub node_name: String,
    /// Name of the nftables table (`rk3s-netpol`), in family `ip` (and `ip6`).
    pub table: String,
    /// How often the whole table is rebuilt even without changes.
    pub full_resync_period: Duration,
    /// The minimal time between two syncs.
    pub min_sync_interval: Duration,
    /// The addresses the built-in cluster DNS server answers on for this node's pods
    /// (the node's IPs; empty when it is disabled). Policies see it as a pod
    /// `kube-system/rk3s-dns` labelled `k8s-app: kube-dns` with CoreDNS's named ports
    /// (`dns` UDP 53, `dns-tcp` TCP 53, `metrics` TCP 9153), so the usual egress rule
    /// "allow DNS to the kube-dns pods" works as on k3s, where CoreDNS runs in pods.
    pub builtin_dns_ips: Vec<std::net::IpAddr>,
}

impl Default for NetpolOptions {
    fn default() -> Self {
        NetpolOptions {
            node_name: String::new(),
            table: String::from("rk3s-netpol"),
            full_resync_period: Duration::from_secs(3600),
            min_sync_interval: Duration::from_secs(1),
            builtin_dns_ips: Vec::new(),
        }
    }
}

/// Errors of the NetworkPolicy enforcer.
#[derive(Debug, thiserror::Error)]
pub enum NetpolError {
    /// `nft` could not be run.
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
    /// `nft` rejected the script (nothing was changed).
    #[error("nft failed ({status}): {stderr}")]
    Nft {
        /// Exit status.
        status: String,
        /// What nft printed.
        stderr: String,
    },
    /// A table name nft would not accept.
    #[error("invalid table name {0:?}")]
    TableName(String),
    /// A reflector store went away (its watch task ended).
    #[error("the {0} informer stopped")]
    InformerStopped(&'static str),
}

/// Removes the enforcer's tables (`ip` and `ip6` `table`) if they exist, in one
/// transaction (for `rk3s killall`); nothing to do when `nft` is not installed.
pub fn cleanup(table: &str) -> Result<(), NetpolError> {
    nft::check_table_name(table)?;
    let script = format!(
        "{}{}",
        render::render_delete(render::Family::V4, table),
        render::render_delete(render::Family::V6, table)
    );
    match nft::apply_blocking(&script, false) {
        Err(NetpolError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod run_tests;
