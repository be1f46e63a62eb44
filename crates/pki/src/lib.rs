//! rk3s-pki: the cluster PKI of `rk3s server`, modelled on k3s.
//!
//! - [`ensure_server_pki`] creates (first start) or loads (restart) the cluster CA,
//!   the kube-apiserver serving certificate, the `system:admin` client certificate,
//!   the service-account signing key pair and the server join token, under
//!   `<data-dir>/server/tls/` and `<data-dir>/server/token`.
//! - [`write_kubeconfig`] writes a k3s-style kubeconfig with embedded credentials.
//! - [`issue_client_cert`] / [`issue_serving_cert`] sign further certificates with the CA
//!   (node and user client certificates, kubelet serving certificates); the `_for`
//!   variants take the validity as a duration (the server's `--leaf-cert-validity`).
//! - [`ensure_etcd_certs`] issues the embedded etcd's server, peer and client certificates
//!   under `<data-dir>/server/tls/etcd/`.
//! - [`client_identity`] maps a verified client certificate to a user and groups, as the
//!   upstream x509 authenticator does (CN is the user name, O values are the groups).
//! - [`renewal_due`] is the one renewal rule (a leaf inside the renewal window, k3s's 90
//!   days, is re-issued): the server's own leaves, on start and while running, and the
//!   certificates agents hold, which they re-request from the supervisor while running.
//! - [`check_ca_rotation`] / [`cross_signed_ca`]: `rk3s certificate rotate-ca` (k3s's): a
//!   new CA bundle (intermediate, new root, new root cross-signed by the old CA, old CA)
//!   so whoever trusts the old CA or the new root keeps trusting the server; when the CA
//!   is such a bundle its first certificate signs the leaves and the serving certificate
//!   carries the bundle as its chain.
//! - [`LiveCert`]: a certificate every TLS handshake reads anew (server or client side),
//!   replaced by renewal without a restart.
//! - [`parse_token`] / [`token_matches`] handle k3s tokens
//!   (`K10<sha256 of the CA PEM>::<user>:<secret>` or a bare secret).

mod cert;
mod error;
mod etcd;
mod fsutil;
mod insecure;
mod kubeconfig;
mod live;
mod rotation;
mod server;
mod token;

pub use cert::{
    client_identity, describe_certificates, issue_client_cert, issue_client_cert_for,
    issue_serving_cert, issue_serving_cert_for, new_key_and_csr, sign_csr, sign_csr_for,
    verify_issued_by, CertificateSummary, ClientIdentity, CsrUsage,
};
pub use error::PkiError;
pub use etcd::{ensure_etcd_certs, EtcdCerts, ETCD_TLS_DIR};
pub use insecure::{unverified_client_config, AcceptAnyServerCert};
pub use kubeconfig::{kubeconfig_yaml, write_kubeconfig};
pub use live::LiveCert;
pub use rotation::{check_ca_rotation, cross_signed_ca, not_after, renewal_due, CaRotation};
pub use server::{
    ensure_server_pki, PkiOptions, ServerPki, ADMIN_CERT_FILE, ADMIN_KEY_FILE, CA_CERT_FILE,
    CA_KEY_FILE, CA_VALIDITY_DAYS, LEAF_VALIDITY_DAYS, RENEW_BEFORE_DAYS, SA_KEY_FILE, SA_PUB_FILE,
    SERVING_CERT_FILE, SERVING_KEY_FILE, TLS_DIR, TOKEN_FILE,
};
pub use token::{ca_cert_hash, format_token, parse_token, token_matches, ParsedToken};
