//! rk3s's Service proxy: kube-proxy's nftables mode, run inside the rk3s process on every
//! node.
//!
//! It watches Services and EndpointSlices (`discovery.k8s.io/v1`) and keeps one private
//! nftables table per family (`ip <table>`, and `ip6 <table>` once a Service has an IPv6
//! ClusterIP) laid out as upstream's nftables proxier lays out its own (see [`render`]):
//! ClusterIPs, NodePorts, externalIPs and LoadBalancer ingress IPs are DNATed to the
//! Service's endpoints, chosen at random per connection; Services without endpoints are
//! rejected (TCP reset / ICMP port unreachable); `externalTrafficPolicy`,
//! `internalTrafficPolicy`, `sessionAffinity: ClientIP`, `loadBalancerSourceRanges`,
//! hairpin and masquerading behave as upstream. `type: LoadBalancer` Services with
//! `externalTrafficPolicy: Local` get a health check server on their
//! `healthCheckNodePort` ([`health`]).
//!
//! Structure: [`model`] (pure: Service + EndpointSlices -> service ports and endpoints),
//! [`render`] (pure: service ports -> chains, sets, map elements, script text), [`sync`]
//! (what the kernel holds; full and incremental transactions), [`nft`] (running
//! `nft -f -`), [`conntrack`] (stale UDP flows of removed endpoints are deleted, as
//! upstream), and the watch/sync loop behind [`run`].
//!
//! Invariants:
//! - every change goes through one `nft -f -` transaction, so the table is always either
//!   the old rules or the new ones, never a mix; a failed transaction leaves the previous
//!   rules, is logged, retried with back-off, and followed by a full resync;
//! - an incremental sync rewrites only the chains, sets and map elements of Services whose
//!   spec or endpoints changed, and only those whose content differs from what was
//!   applied; a full resync happens at start, after any failure and every
//!   `full_resync_period`;
//! - a Service that makes no valid rule is skipped (a warning and a `FailedToProxy` Event
//!   name it) and never stops the rules of the others;
//! - nothing outside our own tables is touched, except the sysctls [`ensure_sysctls`] sets
//!   when [`run`] starts.

#![warn(missing_docs)]

pub mod conntrack;
pub mod health;
pub mod model;
pub mod nft;
pub mod render;
mod runner;
pub mod sync;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub use nft::{Nft, NftRunner};
pub use runner::run_with;
pub use sync::SyncKind;

/// How the proxy runs on this node.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
    /// The node's addresses (health check servers listen on them; a
    /// `loadBalancerSourceRanges` entry containing one admits the LoadBalancer IPs).
    pub node_ips: Vec<IpAddr>,
    /// The pod network, e.g. `10.42.0.0/16`: traffic to a ClusterIP from outside it is
    /// masqueraded, and pod traffic to `externalTrafficPolicy: Local` Services is
    /// short-circuited to every endpoint. Several families may be given, comma-separated.
    pub cluster_cidr: Option<String>,
    /// The Service network(s), e.g. `10.43.0.0/16` (comma-separated for dual stack):
    /// traffic to an address in it that no Service holds is dropped on the node instead
    /// of being routed off it.
    pub service_cidr: Option<String>,
    /// The nftables table name (`rk3s-proxy`), used in the `ip` and `ip6` families.
    pub table: String,
    /// How often a full resync rewrites every rule.
    pub full_resync_period: Duration,
    /// How long changes are batched before a sync.
    pub min_sync_interval: Duration,
}

/// What can stop the proxy or fail a transaction.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `nft` could not be started.
    #[error("nft is not available: {0}")]
    NftMissing(String),
    /// `nft` rejected a script.
    #[error("nft failed (exit code {code:?}): {stderr}")]
    Nft {
        /// Its exit code.
        code: Option<i32>,
        /// Its error output (truncated).
        stderr: String,
    },
    /// Writing to or waiting for `nft` failed.
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
    /// An option is unusable.
    #[error("invalid proxy option: {0}")]
    InvalidOption(String),
    /// A watch of the API ended (the client was shut down).
    #[error("the watch of {0} ended")]
    WatchEnded(&'static str),
}

/// Figures of one successful sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStats {
    /// Services with rules in the table(s) after the sync.
    pub services: usize,
    /// Services whose rules the sync changed.
    pub changed: usize,
    /// Size of the transaction(s) in bytes.
    pub bytes: usize,
    /// Time from the start of the sync to the kernel's acknowledgement.
    pub elapsed: Duration,
    /// The most thorough kind of transaction in the sync.
    pub kind: SyncKind,
    /// When the sync finished.
    pub finished_at: SystemTime,
    /// How many successful syncs this process has made so far (this one included).
    pub count: u64,
}

static LAST_SYNC: Mutex<Option<SyncStats>> = Mutex::new(None);

/// The figures of the last successful sync of this process (for benchmarks: poll it to
/// learn when a change reached the kernel).
pub fn last_sync() -> Option<SyncStats> {
    match LAST_SYNC.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

pub(crate) fn record_sync(mut stats: SyncStats) {
    let mut g = match LAST_SYNC.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    stats.count = g.as_ref().map_or(0, |s| s.count) + 1;
    *g = Some(stats);
}

/// Runs the proxy until an error: ensures the sysctls, waits for the initial lists of
/// Services and EndpointSlices, applies a full sync, then follows changes. Abort the task
/// to stop it (the rules stay; [`cleanup`] removes them).
pub async fn run(client: kube::Client, opts: ProxyOptions) -> Result<(), ProxyError> {
    ensure_sysctls();
    let nft = Nft::host();
    if !nft.available() {
        return Err(ProxyError::NftMissing(
            "`nft --version` failed: install nftables".to_string(),
        ));
    }
    run_with(client, opts, std::sync::Arc::new(nft)).await
}

/// Deletes the proxy's tables (`ip <table>` and `ip6 <table>`) if present, for
/// `rk3s killall`. A host without `nft` has no tables: that is success.
pub fn cleanup(table: &str) -> Result<(), ProxyError> {
    cleanup_with(&Nft::host(), table)
}

/// [`cleanup`] through a given runner.
pub fn cleanup_with(runner: &dyn NftRunner, table: &str) -> Result<(), ProxyError> {
    if !nft::valid_table_name(table) {
        return Err(ProxyError::InvalidOption(format!("table name {table:?}")));
    }
    match runner.apply(&nft::cleanup_script(table)) {
        Err(ProxyError::NftMissing(_)) => Ok(()),
        other => other,
    }
}

/// The sysctls the proxy needs, and their values.
pub const SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
];

/// Sets `net.ipv4.ip_forward=1` and `net.bridge.bridge-nf-call-iptables=1` (loading
/// `br_netfilter` if the latter is missing); failures are logged, not fatal.
pub fn ensure_sysctls() {
    for (name, value) in SYSCTLS {
        let path = std::path::Path::new("/proc/sys").join(name);
        if !path.exists() && name.starts_with("net/bridge/") {
            match std::process::Command::new("modprobe")
                .arg("br_netfilter")
                .status()
            {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::warn!(status = %s, "modprobe br_netfilter failed"),
                Err(e) => tracing::warn!(error = %e, "could not run modprobe br_netfilter"),
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(cur) if cur.trim() == value => continue,
            _ => {}
        }
        match std::fs::write(&path, value) {
            Ok(()) => tracing::info!(sysctl = %name.replace('/', "."), value, "set sysctl"),
            Err(e) => {
                tracing::warn!(sysctl = %name.replace('/', "."), value, error = %e, "could not set sysctl")
            }
        }
    }
}
