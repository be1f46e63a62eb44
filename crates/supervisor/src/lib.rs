//! rk3s-supervisor: how a machine joins the cluster, with k3s's protocol, paths and
//! headers (renamed for rk3s), so k3s's documentation describes it.
//!
//! - Server side, [`Supervisor`]: served on the API port beside the Kubernetes API and
//!   before its authentication (the API server hands it every path [`Supervisor::claims`]):
//!   `/cacerts` and `/ping` to anyone; under `/v1-rk3s/` to agents that present the join
//!   token (HTTP basic `node:<secret>`), a bootstrap token (bearer), or a node's client
//!   certificate: kubelet client and serving certificates, the kube-proxy and
//!   rk3s-controller client certificates (each for a key the agent keeps: the agent posts a
//!   PKCS#10 request, the server chooses the identity), the CA, the agent configuration
//!   ([`AgentConfig`]), the list of API servers and readiness.
//! - Servers joining servers, [`servers`]: the CA and keys a server started with `--server`
//!   needs (`/v1-rk3s/server-bootstrap`) and its embedded-etcd membership
//!   (`/v1-rk3s/etcd/member-add`), to the server token only.
//! - Node passwords ([`password`]): the first agent to ask for a node name's kubelet
//!   certificates stores the hash of its password in the immutable Secret
//!   `kube-system/<node>.node-password.rk3s`; another machine asking for that name with
//!   another password is refused (403) with what to do about it.
//! - Agent side, [`join`]: fetches `/cacerts` without verification, checks it against the
//!   CA hash of a full `K10...` token (a mismatch is a fatal [`JoinError::CaHashMismatch`]),
//!   then talks TLS to that CA only and collects its certificates and configuration.
//! - Agent side, [`LoadBalancer`]: a local TCP port (127.0.0.1:6444) the node's clients
//!   use, passed through to whichever API server accepts, from the `default/kubernetes`
//!   endpoints kept in the data dir, the `--server` address last.
//!
//! Invariants: depends on `rk3s-pki` (certificates, tokens), `rk3s-auth` (bootstrap
//! tokens) and the Kubernetes API through a `kube::Client` (node-password Secrets,
//! bootstrap-token Secrets, the `default/kubernetes` EndpointSlices); never on the API
//! server's internals. Private keys of agents never travel: only requests and
//! certificates do. No input panics a handler: every failure is an HTTP error answer.

mod config;
mod error;
mod https;
mod join;
pub mod loadbalancer;
pub mod password;
mod server;
pub mod servers;

pub use config::AgentConfig;
pub use error::{JoinError, SupervisorError};
pub use join::{join, read_or_create_node_password, IssuedCert, JoinOptions, Joined};
pub use loadbalancer::LoadBalancer;
pub use server::{Supervisor, SupervisorOptions};
pub use servers::{
    fetch_server_bootstrap, request_etcd_member, EtcdMembership, ServerBootstrap, ServerJoin,
};

/// The program name in paths and headers (k3s uses `k3s`).
pub const PROGRAM: &str = "rk3s";
/// The prefix of the authenticated supervisor paths (`/v1-k3s` on k3s).
pub const PATH_PREFIX: &str = "/v1-rk3s";
/// Request header naming the node an agent asks certificates for.
pub const HEADER_NODE_NAME: &str = "rk3s-Node-Name";
/// Request header carrying the node password.
pub const HEADER_NODE_PASSWORD: &str = "rk3s-Node-Password";
/// Request header with the node's IP addresses (comma-separated), for its serving cert.
pub const HEADER_NODE_IP: &str = "rk3s-Node-IP";
/// The user name of the rk3s-controller client certificate (network policy, flannel,
/// the Service proxy's helpers on agents).
pub const CONTROLLER_USER: &str = "system:rk3s-controller";
/// The user name of the kube-proxy client certificate (bound to `system:node-proxier`).
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";
