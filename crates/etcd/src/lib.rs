//! rk3s-etcd: the embedded etcd of rk3s servers, as k3s's `--cluster-init`: rk3s runs
//! Debian's `etcd` binary (3.4, package `etcd-server`) as a supervised child process and
//! keeps its state under `<data-dir>/server/db/etcd`.
//!
//! - [`config`]: one member's settings ([`MemberConfig`]) and the etcd command line built
//!   from them: client URLs `https://127.0.0.1:2379` (and `https://<advertise>:2379`),
//!   peer URL `https://<advertise>:2380`, TLS on both with client-certificate
//!   authentication against the cluster CA; [`initial_cluster`] builds etcd's
//!   `--initial-cluster` from a member list.
//! - [`process`]: [`EtcdProcess`] starts etcd and restarts it with exponential back-off
//!   (1 s doubling to 30 s, reset after a minute of running), its output in a log file
//!   and its pid in `etcd.pid`. etcd never outlives rk3s: it runs in its own process group
//!   with `PR_SET_PDEATHSIG(SIGKILL)`, set from a thread that lives as long as the
//!   process (the death signal follows the thread that forked).
//! - [`members`]: [`ClusterClient`], etcd's Cluster API (MemberAdd as a learner,
//!   MemberPromote retried until the learner has caught up, MemberList, MemberRemove)
//!   over TLS with the client certificate.
//!
//! Invariants: depends on no crate of ours; speaks etcd's gRPC through hand-written
//! `prost` messages (no `protoc`); never panics on an answer of etcd or on any input.

pub mod config;
pub mod members;
pub mod process;
mod proto;

pub use config::{initial_cluster, InitialState, MemberConfig, MemberTls};
pub use members::{ClientTls, ClusterClient, Member};
pub use process::EtcdProcess;

/// etcd's client port (k3s's).
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port (k3s's).
pub const PEER_PORT: u16 = 2380;

/// Errors of the embedded etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A file or folder could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The etcd binary could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The failure.
        source: std::io::Error,
    },
    /// etcd exited while starting; the end of its log.
    #[error("etcd exited during start-up ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// How it exited.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A setting is not valid.
    #[error("invalid etcd setting: {0}")]
    Invalid(String),
    /// TLS files could not be read or do not fit together.
    #[error("etcd client TLS: {0}")]
    Tls(String),
    /// A Cluster API call failed.
    #[error("etcd {call}: {message}")]
    Call {
        /// The call (MemberAdd, ...).
        call: &'static str,
        /// etcd's or the transport's message.
        message: String,
    },
}
