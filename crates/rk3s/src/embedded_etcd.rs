//! The embedded etcd of `rk3s server` (k3s's `--cluster-init` and servers joining with
//! `--server`): wiring of `rk3s-etcd` into the server's start-up.
//!
//! - `--cluster-init`: this server's etcd starts a new cluster of one member.
//! - `--server https://FIRST:6443 --token T`: before its PKI is set up, the server fetches
//!   the cluster CA and service-account key from FIRST (`/v1-rk3s/server-bootstrap`), then
//!   asks FIRST to add it as an etcd member (`/v1-rk3s/etcd/member-add`) and starts its
//!   etcd with the answer as `--initial-cluster` and state `existing`. On restart (etcd's
//!   data dir holds a member) neither is asked again. The member is added as a learner
//!   (as k3s): every server looks for started learners every second and promotes them,
//!   retried until etcd accepts (the learner has caught up with the leader); the joining
//!   server waits for its member to be a voter before using it as its datastore (also
//!   after a restart that interrupted that).
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
//! - `--cluster-reset` (server stopped; see [`cluster_reset`]): with
//!   `--cluster-reset-restore-path=FILE` the etcd snapshot is restored into a new data dir
//!   as a cluster of this one member (old data kept as `etcd-old-<unix seconds>`); alone,
//!   etcd runs once with `--force-new-cluster` (data kept, member list reset to itself).
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

/// How long a joining server waits for its etcd learner to catch up and be promoted.
const LEARNER_PROMOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// How often each server looks for learners to promote.
const LEARNER_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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
    let client_tls = rk3s_etcd::ClientTls {
        ca_file: certs.ca_file.clone(),
        cert_file: certs.client_cert_file.clone(),
        key_file: certs.client_key_file.clone(),
    };
    let client = rk3s_etcd::ClusterClient::new(&[local], &client_tls).context("etcd client")?;
    spawn_learner_promotion(client.clone());
    if join.is_some() {
        // A joining member starts as a learner (it serves no reads or writes): the voters
        // promote it once it has caught up (also after a restart that interrupted that).
        if client.is_learner().await.unwrap_or(true) {
            client
                .wait_until_voter(LEARNER_PROMOTE_WAIT)
                .await
                .context("waiting for this server's etcd learner to be promoted")?;
            tracing::info!(member = %name, "etcd: this server's learner is a voting member now");
        }
    }
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

/// Every few seconds, promotes the learners of the cluster that have started (as k3s's
/// servers manage learners); a member that is a learner itself cannot list members and
/// just tries again later.
fn spawn_learner_promotion(client: rk3s_etcd::ClusterClient) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LEARNER_CHECK_INTERVAL).await;
            if let Err(e) = client.promote_learners(LEARNER_PROMOTE_WAIT).await {
                tracing::debug!(error = %e, "etcd learners: member list unavailable");
            }
        }
    });
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

/// The TLS files of the member under `<data-dir>/server/tls/etcd/` (as
/// `rk3s_pki::ensure_etcd_certs` names them), for a member started outside [`start`].
fn member_tls(rk3s_data_dir: &Path) -> (rk3s_etcd::MemberTls, rk3s_etcd::ClientTls) {
    let dir = rk3s_data_dir
        .join("server")
        .join(rk3s_pki::TLS_DIR)
        .join(rk3s_pki::ETCD_TLS_DIR);
    (
        rk3s_etcd::MemberTls {
            ca_file: dir.join("server-ca.crt"),
            server_cert_file: dir.join("server-client.crt"),
            server_key_file: dir.join("server-client.key"),
            peer_cert_file: dir.join("peer-server-client.crt"),
            peer_key_file: dir.join("peer-server-client.key"),
        },
        rk3s_etcd::ClientTls {
            ca_file: dir.join("server-ca.crt"),
            cert_file: dir.join("client.crt"),
            key_file: dir.join("client.key"),
        },
    )
}

/// The pid of an etcd running on `etcd_dir` (its pid file names a live process whose
/// command line has that `--data-dir`).
fn running_etcd(etcd_dir: &Path) -> Option<u32> {
    let mut pid_file = etcd_dir.as_os_str().to_owned();
    pid_file.push(".pid");
    let pid: u32 = std::fs::read_to_string(PathBuf::from(pid_file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let dir = crate::snapshot::flag_value(&cmdline, "data-dir")?;
    (Path::new(&dir) == etcd_dir).then_some(pid)
}

/// `rk3s server --cluster-reset` on the embedded etcd, as k3s does it, with the server
/// stopped; returns what was done (the caller exits and asks for a restart):
/// - `--cluster-reset-restore-path=FILE`: FILE (an etcd snapshot, as `rk3s etcd-snapshot
///   save` writes it) is restored by `etcdctl snapshot restore` (Debian's `etcd-client`;
///   `RK3S_ETCDCTL_BINARY` overrides) into a new data dir, as a new cluster of this one
///   member (name = node name, peer URL on the advertise address); the old data dir is
///   kept beside it as `etcd-old-<unix seconds>`.
/// - without a path: this member's etcd runs once with `--force-new-cluster` (its data
///   kept, its member list reset to itself) until it answers, then stops.
pub async fn cluster_reset(args: &ServerArgs, advertise: IpAddr) -> anyhow::Result<String> {
    let etcd_dir = data_dir(&args.data_dir);
    if let Some(pid) = running_etcd(&etcd_dir) {
        bail!(
            "the etcd of {} still runs (pid {pid}): stop the server before --cluster-reset",
            etcd_dir.display()
        );
    }
    let name = member_name(args);
    let (tls, client_tls) = member_tls(&args.data_dir);
    let mut config = rk3s_etcd::MemberConfig::new(&name, etcd_dir.clone(), advertise, tls);
    if let Ok(binary) = std::env::var("RK3S_ETCD_BINARY") {
        config.binary = PathBuf::from(binary);
    }
    config
        .validate()
        .context("the etcd member of --cluster-reset")?;
    match &args.cluster_reset_restore_path {
        Some(snapshot) => {
            let snapshot = snapshot.clone();
            tokio::task::spawn_blocking(move || restore_snapshot(&config, &snapshot))
                .await
                .context("restore task")?
        }
        None => force_new_cluster(config, client_tls).await,
    }
}

/// Restores `snapshot` into the member's data dir (see [`cluster_reset`]).
fn restore_snapshot(config: &rk3s_etcd::MemberConfig, snapshot: &Path) -> anyhow::Result<String> {
    let revision = rk3s_store_etcd::snapshot_revision(snapshot)
        .with_context(|| {
            format!(
                "{} is not an etcd snapshot (a SQLite snapshot cannot be restored into etcd)",
                snapshot.display()
            )
        })?
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let db_dir = config
        .data_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&db_dir).with_context(|| format!("creating {}", db_dir.display()))?;
    let staging = db_dir.join(format!("etcd-restore-{now}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let etcdctl = std::env::var("RK3S_ETCDCTL_BINARY").unwrap_or_else(|_| "etcdctl".into());
    let peer = config.peer_url();
    let out = std::process::Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg(format!("--name={}", config.name))
        .arg(format!("--initial-cluster={}={peer}", config.name))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--data-dir={}", staging.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("{etcdctl} not found: restoring an etcd snapshot needs etcdctl (Debian's etcd-client package)")
            } else {
                anyhow::anyhow!("running {etcdctl}: {e}")
            }
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!(
            "etcdctl snapshot restore {} failed ({}): {}{}",
            snapshot.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let kept = if config.data_dir.exists() {
        let old = db_dir.join(format!("etcd-old-{now}"));
        std::fs::rename(&config.data_dir, &old)
            .with_context(|| format!("moving {} aside", config.data_dir.display()))?;
        Some(old)
    } else {
        None
    };
    std::fs::rename(&staging, &config.data_dir)
        .with_context(|| format!("moving the restored data to {}", config.data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", config.data_dir.display()))?;
    }
    tracing::info!(
        snapshot = %snapshot.display(),
        revision,
        member = %config.name,
        peer_url = %peer,
        old = ?kept,
        "etcd restored from the snapshot as a cluster of one member"
    );
    Ok(format!(
        "etcd was restored from {} (revision {revision}) as a cluster of one member{}",
        snapshot.display(),
        kept.map(|k| format!("; the old data is in {}", k.display()))
            .unwrap_or_default()
    ))
}

/// Runs the member once with `--force-new-cluster` until it answers as a cluster of one,
/// then stops it (see [`cluster_reset`]).
async fn force_new_cluster(
    config: rk3s_etcd::MemberConfig,
    client_tls: rk3s_etcd::ClientTls,
) -> anyhow::Result<String> {
    if !config.has_data() {
        bail!(
            "--cluster-reset: {} holds no etcd member to reset (give --cluster-reset-restore-path=FILE to restore a snapshot)",
            config.data_dir.display()
        );
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log_path)
        .with_context(|| format!("opening {}", config.log_path.display()))?;
    let log2 = log.try_clone().context("etcd log")?;
    let child = std::process::Command::new(&config.binary)
        .args(config.args())
        .arg("--force-new-cluster")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .with_context(|| format!("starting {}", config.binary.display()))?;
    /// Stops etcd (SIGTERM, then SIGKILL after 10 s) however the reset ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut etcd = Stop(child);
    let client = rk3s_etcd::ClusterClient::new(&[config.local_client_url()], &client_tls)
        .context("etcd client")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let members = loop {
        if let Ok(Some(status)) = etcd.0.try_wait() {
            bail!(
                "etcd --force-new-cluster exited ({status}); last log lines:\n{}",
                rk3s_etcd::process::log_tail(&config.log_path, 15)
            );
        }
        match client.member_list().await {
            Ok(members) => break members,
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(e).context("etcd --force-new-cluster did not answer within 60 s")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    drop(etcd);
    tracing::info!(member = %config.name, members = members.len(), "etcd member list reset to this member");
    Ok(format!(
        "the etcd member list was reset to this member ({}), its data kept",
        config.name
    ))
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
