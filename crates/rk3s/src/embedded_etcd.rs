//! The embedded etcd of `rk3s server` (k3s's `--cluster-init` and servers joining with
//! `--server`): wiring of `rk3s-etcd` into the server's start-up.
//!
//! - `--cluster-init`: this server's etcd starts a new cluster of one member.
//! - `--server https://FIRST:6443 --token T`: before its PKI is set up, the server fetches
//!   the cluster CA and service-account key from FIRST (`/v1-rk3s/server-bootstrap`), then
//!   asks FIRST to add it as an etcd member (`/v1-rk3s/etcd/member-add`) and starts its
//!   etcd with the answer as `--initial-cluster` and state `existing`. On restart (etcd's
//!   data dir holds a member) neither is asked again.
//! - etcd's data: `<data-dir>/server/db/etcd` (log `etcd.log` and pid `etcd.pid` beside
//!   it); TLS from the cluster CA under `<data-dir>/server/tls/etcd/`; member name = node
//!   name (`--node-name`, else the host name); client URL `https://127.0.0.1:2379` (the
//!   advertise address when that is a loopback address), peer URL
//!   `https://<advertise-address>:2380`.
//! - The datastore is then that etcd through `rk3s-store-etcd` with the etcd client
//!   certificate.
//! - When a Node is deleted, the etcd member of that name is removed (best effort: each
//!   server watches Nodes and tries; a failure is logged, never retried; the member of the
//!   server itself is never removed by itself).
//!
//! Without `--cluster-init` or `--server` nothing here runs (SQLite or
//! `--datastore-endpoint`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;

use crate::datastore::{DatastoreEndpoint, DatastoreTls};
use crate::server::ServerArgs;

/// A running embedded etcd member.
pub struct EmbeddedEtcd {
    process: rk3s_etcd::EtcdProcess,
    client: rk3s_etcd::ClusterClient,
    certs: rk3s_pki::EtcdCerts,
    name: String,
}

/// Whether the server runs the embedded etcd.
pub fn enabled(args: &ServerArgs) -> bool {
    args.cluster_init || args.server.as_deref().is_some_and(|s| !s.trim().is_empty())
}

/// etcd's data dir: `<data-dir>/server/db/etcd`.
pub fn data_dir(rk3s_data_dir: &Path) -> PathBuf {
    rk3s_data_dir.join("server").join("db").join("etcd")
}

/// The member name: the node name, lower-cased.
fn member_name(args: &ServerArgs) -> String {
    args.node_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(rk3s_kubelet::node::hostname)
        .trim()
        .to_ascii_lowercase()
}

/// Writes `data` to `path` with `mode`, creating the folder (0700).
fn write_file(path: &Path, data: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A joining server (`--server`) without a CA yet: fetches the cluster CA and the
/// service-account key from the first server and writes them where the PKI loads them,
/// so every certificate of this server chains to the cluster's CA.
async fn fetch_bootstrap(server_dir: &Path, server: &str, token: &str) -> anyhow::Result<()> {
    let tls = server_dir.join(rk3s_pki::TLS_DIR);
    if tls.join(rk3s_pki::CA_CERT_FILE).exists() {
        return Ok(());
    }
    let b = rk3s_supervisor::fetch_server_bootstrap(server, token)
        .await
        .with_context(|| format!("fetching the cluster CA and keys from {server}"))?;
    write_file(&tls.join(rk3s_pki::CA_KEY_FILE), &b.ca_key_pem, 0o600)?;
    write_file(&tls.join(rk3s_pki::CA_CERT_FILE), &b.ca_cert_pem, 0o644)?;
    write_file(
        &tls.join(rk3s_pki::SA_KEY_FILE),
        &b.service_account_key_pem,
        0o600,
    )?;
    tracing::info!(%server, "cluster CA and service-account key fetched from the server joined");
    Ok(())
}

/// Starts the embedded etcd when `--cluster-init` or `--server` is given (else `None`):
/// sets up the PKI's CA (fetched from `--server` when joining), the etcd certificates,
/// the membership and the process.
pub async fn start(
    args: &ServerArgs,
    advertise: IpAddr,
    pki_opts: &rk3s_pki::PkiOptions,
) -> anyhow::Result<Option<EmbeddedEtcd>> {
    if !enabled(args) {
        return Ok(None);
    }
    if args
        .datastore_endpoint
        .as_deref()
        .is_some_and(|e| !e.trim().is_empty())
    {
        bail!(
            "--cluster-init and --server (embedded etcd) cannot be used with --datastore-endpoint"
        );
    }
    let join = args
        .server
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let token = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let name = member_name(args);
    if let Some(server) = join {
        let Some(token) = token else {
            bail!("--server needs --token (the first server's <data-dir>/server/token)");
        };
        fetch_bootstrap(&pki_opts.server_dir, server, token).await?;
    }
    let pki = rk3s_pki::ensure_server_pki(pki_opts).context("setting up the cluster PKI")?;
    let certs = rk3s_pki::ensure_etcd_certs(
        &pki.tls_dir,
        &pki.ca_cert_pem,
        &pki.ca_key_pem,
        &name,
        &[advertise.to_string()],
    )
    .context("issuing the etcd certificates")?;
    let mut config = rk3s_etcd::MemberConfig::new(
        &name,
        data_dir(&args.data_dir),
        advertise,
        rk3s_etcd::MemberTls {
            ca_file: certs.ca_file.clone(),
            server_cert_file: certs.server_cert_file.clone(),
            server_key_file: certs.server_key_file.clone(),
            peer_cert_file: certs.peer_cert_file.clone(),
            peer_key_file: certs.peer_key_file.clone(),
        },
    );
    if let Ok(binary) = std::env::var("RK3S_ETCD_BINARY") {
        config.binary = PathBuf::from(binary);
    }
    if let (Some(server), Some(token), false) = (join, token, config.has_data()) {
        let initial =
            rk3s_supervisor::request_etcd_member(server, token, &name, &config.peer_url())
                .await
                .with_context(|| format!("joining the etcd cluster of {server}"))?;
        tracing::info!(initial_cluster = %initial, "etcd member added by the server joined");
        config.initial_cluster = initial;
        config.initial_state = rk3s_etcd::InitialState::Existing;
    }
    let local = config.local_client_url();
    let process = tokio::task::spawn_blocking(move || rk3s_etcd::EtcdProcess::start(config))
        .await
        .context("starting etcd")?
        .context("starting etcd")?;
    let client = rk3s_etcd::ClusterClient::new(
        &[local],
        &rk3s_etcd::ClientTls {
            ca_file: certs.ca_file.clone(),
            cert_file: certs.client_cert_file.clone(),
            key_file: certs.client_key_file.clone(),
        },
    )
    .context("etcd client")?;
    Ok(Some(EmbeddedEtcd {
        process,
        client,
        certs,
        name,
    }))
}

impl EmbeddedEtcd {
    /// The datastore: this member's client URL.
    pub fn datastore(&self) -> DatastoreEndpoint {
        DatastoreEndpoint::Etcd(vec![self.process.config().local_client_url()])
    }

    /// The datastore's TLS: the etcd client certificate.
    pub fn datastore_tls(&self) -> DatastoreTls {
        DatastoreTls {
            ca_file: Some(self.certs.ca_file.clone()),
            cert_file: Some(self.certs.client_cert_file.clone()),
            key_file: Some(self.certs.client_key_file.clone()),
        }
    }

    /// What the supervisor answers joining servers with.
    pub fn server_join(&self, pki: &rk3s_pki::ServerPki) -> rk3s_supervisor::ServerJoin {
        rk3s_supervisor::ServerJoin {
            bootstrap: rk3s_supervisor::ServerBootstrap {
                ca_cert_pem: pki.ca_cert_pem.clone(),
                ca_key_pem: pki.ca_key_pem.clone(),
                service_account_key_pem: pki.sa_key_pem.clone(),
            },
            etcd: Some(Arc::new(Membership(self.client.clone()))),
        }
    }

    /// Removes the etcd member of every Node deleted from now on (see the module docs).
    pub fn spawn_member_cleanup(&self, client: kube::Client) {
        let etcd = self.client.clone();
        let own = self.name.clone();
        tokio::spawn(async move {
            let api: kube::Api<Node> = kube::Api::all(client);
            let stream = kube::runtime::watcher(api, kube::runtime::watcher::Config::default());
            futures_util::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let Ok(kube::runtime::watcher::Event::Delete(node)) = event else {
                    continue;
                };
                let Some(name) = node.metadata.name else {
                    continue;
                };
                if name == own {
                    continue;
                }
                match etcd.remove_by_name(&name).await {
                    Ok(true) => {
                        tracing::info!(node = %name, "Node deleted: its etcd member was removed")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "Node deleted: its etcd member could not be removed")
                    }
                }
            }
        });
    }
}

/// The supervisor's view of the membership.
struct Membership(rk3s_etcd::ClusterClient);

#[async_trait::async_trait]
impl rk3s_supervisor::EtcdMembership for Membership {
    async fn member_add(&self, name: &str, peer_url: &str) -> Result<String, String> {
        self.0
            .add_and_describe(name, peer_url)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_files_are_written_with_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("tls").join("server-ca.key");
        write_file(&p, "KEY", 0o600).expect("write");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "KEY");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn data_dir_is_k3s_layout() {
        assert_eq!(
            data_dir(Path::new("/var/lib/rk3s")),
            PathBuf::from("/var/lib/rk3s/server/db/etcd")
        );
    }
}
