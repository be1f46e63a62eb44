//! `rk3s certificate check|rotate|rotate-ca` (k3s's command): the certificates under the
//! data dir with their expiry, the off-line rotation of the server's leaf certificates
//! (backed up, then issued anew by the next start — or by the running server's renewal
//! check), and the replacement of the cluster CA (`rotate-ca`: checked by
//! `rk3s_pki::check_ca_rotation`, a cross-signed CA unless `--force`, installed for the
//! next start).
//!
//! Renewal while running, one rule (`rk3s_pki::renewal_due`) and one loop
//! ([`renewal_loop`]) for every holder: the server's own leaves
//! ([`renew_server_certificates`]: the files, and the [`IssuedLeaf`]s it holds only in
//! memory: its node's kubelet serving certificate, the API server's client certificates
//! towards kubelets and extension API servers) and an agent's certificates (`agent.rs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// Leaf certificates are renewed within this window (the server's default).
const WARN_WITHIN_SECS: i64 = rk3s_pki::RENEW_BEFORE_DAYS as i64 * 86_400;

/// `rk3s certificate`.
#[derive(Args, Debug)]
pub struct CertificateArgs {
    /// Folder of the node's state
    #[arg(
        long,
        short = 'd',
        value_name = "DIR",
        default_value = "/var/lib/rk3s",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: CertificateCommand,
}

#[derive(Subcommand, Debug)]
enum CertificateCommand {
    /// List every certificate under the data dir with its expiry
    Check {
        /// Output format: text or json
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "table", "json"])]
        output: String,
    },
    /// Back up and remove the server's leaf certificates so they are issued anew (restart
    /// the server afterwards; the cluster CA and the service-account key are kept)
    Rotate {
        /// Only these services' certificates (repeatable): admin, api-server
        #[arg(long = "service", short = 's', value_name = "NAME", value_parser = ["admin", "api-server"])]
        services: Vec<String>,
    },
    /// Replace the cluster CA with the one staged in --path (tls/server-ca.crt and
    /// tls/server-ca.key); it must be cross-signed by the current CA unless --force.
    /// Restart the servers, then the agents, afterwards
    #[command(name = "rotate-ca")]
    RotateCa {
        /// Folder holding the new CA: <path>/tls/server-ca.{crt,key} (or <path>/server-ca.{crt,key})
        #[arg(long, value_name = "DIR")]
        path: PathBuf,
        /// Accept a CA that is not cross-signed by the current one (disruptive: every node
        /// then needs the new token)
        #[arg(long)]
        force: bool,
        /// First create, in --path, a new CA cross-signed by the current one
        #[arg(long)]
        generate: bool,
        /// The servers' datastore when not the embedded SQLite (as `rk3s server
        /// --datastore-endpoint`): the new CA goes into its bootstrap data, which every
        /// server loads when it starts
        #[arg(long, value_name = "ENDPOINT")]
        datastore_endpoint: Option<String>,
        /// TLS CA file of the datastore
        #[arg(long, value_name = "FILE")]
        datastore_cafile: Option<PathBuf>,
        /// TLS client certificate of the datastore
        #[arg(long, value_name = "FILE")]
        datastore_certfile: Option<PathBuf>,
        /// TLS client key of the datastore
        #[arg(long, value_name = "FILE")]
        datastore_keyfile: Option<PathBuf>,
        /// The servers' token (default: <data-dir>/server/token)
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
    },
}

/// The bootstrap data the servers share the CA through: the datastore and the token's
/// secret.
struct SharedCa {
    store: std::sync::Arc<dyn rk3s_store::Store>,
    secret: String,
}

impl SharedCa {
    /// Opens `--datastore-endpoint` when it names an external datastore.
    async fn open(
        data_dir: &Path,
        endpoint: Option<&str>,
        tls: crate::datastore::DatastoreTls,
        token: Option<&str>,
    ) -> anyhow::Result<Option<SharedCa>> {
        let endpoint = crate::datastore::parse_endpoint(endpoint.unwrap_or(""))?;
        if matches!(endpoint, crate::datastore::DatastoreEndpoint::Sqlite(_)) {
            return Ok(None);
        }
        let store = crate::datastore::open(&endpoint, &tls, data_dir).await?;
        let secret = crate::bootstrap_data::local_secret(&data_dir.join("server"), token)
            .context("no token: give --token or the data dir of a server")?;
        Ok(Some(SharedCa { store, secret }))
    }
}

/// One certificate found on disk.
#[derive(Debug, Clone)]
struct Found {
    file: PathBuf,
    cert: rk3s_pki::CertificateSummary,
}

fn collect(dir: &Path, out: &mut Vec<Found>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            // containerd's and pods' state are not ours to list.
            if matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("containerd" | "images" | "pods" | "storage" | "db")
            ) {
                continue;
            }
            collect(&path, out);
        } else if ft.is_file()
            && matches!(
                path.extension().and_then(|x| x.to_str()),
                Some("crt" | "pem")
            )
        {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match rk3s_pki::describe_certificates(&text, &path.display().to_string()) {
                Ok(certs) => out.extend(certs.into_iter().map(|cert| Found {
                    file: path.clone(),
                    cert,
                })),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "not a certificate"),
            }
        }
    }
}

/// Status of a certificate at `now`, as k3s prints it.
fn status(c: &rk3s_pki::CertificateSummary, now: i64) -> &'static str {
    if now < c.not_before {
        "NOT YET VALID"
    } else if now >= c.not_after {
        "EXPIRED"
    } else if c.not_after - now < WARN_WITHIN_SECS {
        "WARNING"
    } else {
        "OK"
    }
}

/// Time left: `364d`, `23h`, `12m`, `0s` (expired).
fn residual(secs: i64) -> String {
    if secs <= 0 {
        "0s".into()
    } else if secs >= 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else if secs >= 60 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn table(found: &[Found], data_dir: &Path, now: i64) -> String {
    let head = [
        "FILENAME",
        "SUBJECT",
        "USAGES",
        "EXPIRES",
        "RESIDUAL TIME",
        "STATUS",
    ]
    .map(String::from);
    let rows: Vec<[String; 6]> = found
        .iter()
        .map(|f| {
            let name = f
                .file
                .strip_prefix(data_dir)
                .unwrap_or(&f.file)
                .display()
                .to_string();
            [
                name,
                f.cert.common_name.clone(),
                f.cert.usages.join(","),
                rfc3339(f.cert.not_after),
                residual(f.cert.not_after - now),
                status(&f.cert, now).to_string(),
            ]
        })
        .collect();
    let mut width = [0usize; 6];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(&format!("{c:w$}   ", w = width[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The files of a service's certificate and key under `<data-dir>/server/tls`.
fn service_files(service: &str) -> &'static [&'static str] {
    match service {
        "admin" => &[rk3s_pki::ADMIN_CERT_FILE, rk3s_pki::ADMIN_KEY_FILE],
        "api-server" => &[rk3s_pki::SERVING_CERT_FILE, rk3s_pki::SERVING_KEY_FILE],
        _ => &[],
    }
}

/// Copies the TLS folder to `tls-<unix seconds>`; returns the backup folder.
fn backup_tls(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let tls = data_dir.join("server").join(rk3s_pki::TLS_DIR);
    let mut backup = data_dir.join("server").join(format!("tls-{}", now()));
    let mut n = 1;
    while backup.exists() {
        backup = data_dir.join("server").join(format!("tls-{}-{n}", now()));
        n += 1;
    }
    std::fs::create_dir_all(&backup).with_context(|| format!("creating {}", backup.display()))?;
    std::fs::set_permissions(&backup, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("chmod {}", backup.display()))?;
    for e in std::fs::read_dir(&tls).with_context(|| format!("reading {}", tls.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), backup.join(e.file_name()))
                .with_context(|| format!("backing up {}", e.path().display()))?;
        }
    }
    Ok(backup)
}

/// Copies the TLS folder to `tls-<unix seconds>` and removes the chosen leaf files; returns
/// the backup folder and the removed files.
fn rotate(data_dir: &Path, services: &[String]) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let tls = data_dir.join("server").join(rk3s_pki::TLS_DIR);
    if !tls.join(rk3s_pki::CA_CERT_FILE).is_file() {
        bail!("no server certificates in {}", tls.display());
    }
    let backup = backup_tls(data_dir)?;
    let chosen: Vec<&str> = if services.is_empty() {
        ["admin", "api-server"]
            .iter()
            .flat_map(|s| service_files(s).iter().copied())
            .collect()
    } else {
        services
            .iter()
            .flat_map(|s| service_files(s).iter().copied())
            .collect()
    };
    let mut removed = Vec::new();
    for f in chosen {
        let p = tls.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(f.to_string());
        }
    }
    Ok((backup, removed))
}

/// Runs `rk3s certificate ...`.
pub fn run(args: CertificateArgs) -> anyhow::Result<()> {
    match args.command {
        CertificateCommand::Check { output } => {
            let mut found = Vec::new();
            collect(&args.data_dir.join("server"), &mut found);
            collect(&args.data_dir.join("agent"), &mut found);
            if found.is_empty() {
                bail!("no certificates under {}", args.data_dir.display());
            }
            let now = now();
            if output == "json" {
                let items: Vec<serde_json::Value> = found
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "filename": f.file.display().to_string(),
                            "subject": f.cert.common_name,
                            "organizations": f.cert.organizations,
                            "usages": f.cert.usages,
                            "notBefore": rfc3339(f.cert.not_before),
                            "expiryTime": rfc3339(f.cert.not_after),
                            "residualTime": residual(f.cert.not_after - now),
                            "status": status(&f.cert, now),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print!("{}", table(&found, &args.data_dir, now));
            }
        }
        CertificateCommand::RotateCa {
            path,
            force,
            generate,
            datastore_endpoint,
            datastore_cafile,
            datastore_certfile,
            datastore_keyfile,
            token,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let tls = crate::datastore::DatastoreTls {
                ca_file: datastore_cafile,
                cert_file: datastore_certfile,
                key_file: datastore_keyfile,
            };
            let done = rt.block_on(async {
                let shared = SharedCa::open(
                    &args.data_dir,
                    datastore_endpoint.as_deref(),
                    tls,
                    token.as_deref(),
                )
                .await?;
                rotate_ca(&args.data_dir, &path, force, generate, shared.as_ref()).await
            })?;
            println!(
                "The cluster CA in {} was replaced ({}); the old files are in {}.",
                args.data_dir.join("server/tls").display(),
                if done.rotation.cross_signed {
                    "cross-signed by the old CA: nodes and clients that trust the old CA keep working"
                } else {
                    "NOT cross-signed (--force): nodes and clients must trust the new CA"
                },
                done.backup.display()
            );
            println!(
                "Restart every rk3s server, then the agents: leaf certificates are issued by \
                 the new CA at start{}.",
                if done.shared {
                    " (every server loads it from the datastore's bootstrap data)"
                } else {
                    ""
                }
            );
            if let Some(token) = done.token {
                println!("The server token from now on (nodes joined with a full token need it): {token}");
            }
        }
        CertificateCommand::Rotate { services } => {
            let (backup, removed) = rotate(&args.data_dir, &services)?;
            println!(
                "Certificates backed up to {}; removed {}. Restart rk3s server to issue new ones.",
                backup.display(),
                removed.join(", ")
            );
        }
    }
    Ok(())
}

/// What `rotate-ca` did.
#[derive(Debug)]
struct CaRotated {
    rotation: rk3s_pki::CaRotation,
    backup: PathBuf,
    /// Whether it went into the datastore's bootstrap data.
    shared: bool,
    /// The server token with the new CA hash, when the data dir holds a token.
    token: Option<String>,
}

/// Writes `data` to `path` atomically (temporary file + rename) with `mode`.
fn write_file(path: &Path, data: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("rotate-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `rotate-ca`: checks the CA staged in `path` against the current one and installs it
/// (the old TLS folder backed up) for the next start, which re-issues every leaf from it
/// (they are no longer issued by the current CA) and writes the token with its hash.
/// With `shared` (an external datastore) the current CA is the bootstrap data's, and the
/// new one is written there (and here): the key file first gains the new keys beside the
/// current one, then the certificate is replaced, then the old key dropped, so the stored
/// pair matches at every step (a CA key file may hold several keys).
async fn rotate_ca(
    data_dir: &Path,
    path: &Path,
    force: bool,
    generate: bool,
    shared: Option<&SharedCa>,
) -> anyhow::Result<CaRotated> {
    let server_dir = data_dir.join("server");
    if let Some(shared) = shared {
        match crate::bootstrap_data::load(&*shared.store, &server_dir, Some(&shared.secret)).await?
        {
            crate::bootstrap_data::Loaded::Stored { .. } => {}
            crate::bootstrap_data::Loaded::Missing => {
                bail!("the datastore holds no bootstrap data for this token: start a server first")
            }
        }
    }
    let tls = data_dir.join("server").join(rk3s_pki::TLS_DIR);
    let cert_path = tls.join(rk3s_pki::CA_CERT_FILE);
    let key_path = tls.join(rk3s_pki::CA_KEY_FILE);
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let current = read(&cert_path)?;
    if shared.is_none() && crate::snapshot::embedded_etcd_present(data_dir) {
        // Its servers share the CA through the bootstrap data in etcd, whose copy wins
        // over these files at the next start.
        bail!(
            "{} is a member of an embedded etcd cluster: its CA is shared through the \
             datastore's bootstrap data: give --datastore-endpoint (and its TLS files)",
            data_dir.display()
        );
    }
    let staged_dir = if path.join(rk3s_pki::TLS_DIR).is_dir() || generate {
        path.join(rk3s_pki::TLS_DIR)
    } else {
        path.to_path_buf()
    };
    if std::fs::canonicalize(&staged_dir).ok() == std::fs::canonicalize(&tls).ok()
        && staged_dir.exists()
    {
        bail!(
            "--path must not be the data dir's own TLS folder {}: stage the new CA elsewhere",
            tls.display()
        );
    }
    let new_cert_path = staged_dir.join(rk3s_pki::CA_CERT_FILE);
    let new_key_path = staged_dir.join(rk3s_pki::CA_KEY_FILE);
    if generate {
        if new_cert_path.exists() || new_key_path.exists() {
            bail!(
                "--generate: {} already holds a CA; remove it or drop --generate",
                staged_dir.display()
            );
        }
        std::fs::create_dir_all(&staged_dir)
            .with_context(|| format!("creating {}", staged_dir.display()))?;
        std::fs::set_permissions(
            &staged_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .with_context(|| format!("chmod {}", staged_dir.display()))?;
        let (bundle, keys) = rk3s_pki::cross_signed_ca(&current, &read(&key_path)?)?;
        write_file(&new_key_path, &keys, 0o600)?;
        write_file(&new_cert_path, &bundle, 0o644)?;
    }
    let rotation = rk3s_pki::check_ca_rotation(
        &current,
        &read(&new_cert_path)?,
        &read(&new_key_path)?,
        force,
    )?;
    let backup = backup_tls(data_dir)?;
    match shared {
        Some(shared) => {
            let (store, secret) = (&*shared.store, shared.secret.as_str());
            let (new_cert, new_key) = (&rotation.ca_cert_pem, &rotation.ca_key_pem);
            use crate::bootstrap_data::update_file;
            update_file(
                store,
                &server_dir,
                secret,
                "tls/server-ca.key",
                |p: &Path| anyhow::Ok(format!("{new_key}{}", std::fs::read_to_string(p)?)),
            )
            .await?;
            update_file(
                store,
                &server_dir,
                secret,
                "tls/server-ca.crt",
                |_: &Path| anyhow::Ok(new_cert.clone()),
            )
            .await?;
            update_file(
                store,
                &server_dir,
                secret,
                "tls/server-ca.key",
                |_: &Path| anyhow::Ok(new_key.clone()),
            )
            .await?;
        }
        None => {
            write_file(&key_path, &rotation.ca_key_pem, 0o600)?;
            write_file(&cert_path, &rotation.ca_cert_pem, 0o644)?;
        }
    }
    tracing::info!(
        cross_signed = rotation.cross_signed,
        ca_hash = %rotation.ca_hash,
        "cluster CA replaced; restart the servers, then the agents"
    );
    let token = std::fs::read_to_string(data_dir.join("server").join(rk3s_pki::TOKEN_FILE))
        .ok()
        .and_then(|t| rk3s_pki::parse_token(t.trim()).ok())
        .map(|t| rk3s_pki::format_token(&rotation.ca_cert_pem, &t.secret));
    Ok(CaRotated {
        rotation,
        backup,
        shared: shared.is_some(),
        token,
    })
}

/// Runs `step` every `interval` for as long as the process lives, logging its failures
/// (the next round tries again): the renewal loop of the server and of agents.
pub(crate) async fn renewal_loop<F, Fut>(
    what: &'static str,
    interval: std::time::Duration,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = step().await {
            let error = format!("{e:#}");
            tracing::warn!(%error, "{what}: certificate renewal failed; retrying in {interval:?}");
        }
    }
}

/// How an [`IssuedLeaf`] is issued: (certificate PEM, key PEM).
type Issue = Box<dyn Fn() -> Result<(String, String), rk3s_pki::PkiError> + Send + Sync>;

/// A leaf certificate the server issues for itself at each start and holds only in
/// memory, in a [`rk3s_pki::LiveCert`] its TLS configurations read at each handshake: the
/// API server's client certificates towards kubelets and extension API servers, and the
/// kubelet serving certificate of the server's own node. [`renew_server_certificates`]
/// re-issues it inside the renewal window, so new connections present the new one.
pub(crate) struct IssuedLeaf {
    what: &'static str,
    live: std::sync::Arc<rk3s_pki::LiveCert>,
    cert_pem: std::sync::Mutex<String>,
    issue: Issue,
}

impl IssuedLeaf {
    /// Issues the first certificate with `issue`, which also issues its renewals.
    pub(crate) fn new(
        what: &'static str,
        issue: impl Fn() -> Result<(String, String), rk3s_pki::PkiError> + Send + Sync + 'static,
    ) -> anyhow::Result<std::sync::Arc<IssuedLeaf>> {
        let (cert_pem, key_pem) = issue().with_context(|| format!("issuing the {what}"))?;
        let live = rk3s_pki::LiveCert::from_pem(&cert_pem, &key_pem)
            .with_context(|| format!("loading the {what}"))?;
        Ok(std::sync::Arc::new(IssuedLeaf {
            what,
            live: std::sync::Arc::new(live),
            cert_pem: std::sync::Mutex::new(cert_pem),
            issue: Box::new(issue),
        }))
    }

    /// The certificate the TLS configurations read.
    pub(crate) fn live(&self) -> std::sync::Arc<rk3s_pki::LiveCert> {
        self.live.clone()
    }

    /// The certificate in use (PEM).
    fn cert_pem(&self) -> String {
        self.cert_pem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-issues the certificate when it is inside the renewal window (the one rule,
    /// `rk3s_pki::renewal_due`); returns whether it did.
    pub(crate) fn renew_if_due(&self, renew_before: std::time::Duration) -> anyhow::Result<bool> {
        // an unreadable certificate is renewed too
        if !rk3s_pki::renewal_due(&self.cert_pem(), renew_before).unwrap_or(true) {
            return Ok(false);
        }
        let what = self.what;
        let (cert_pem, key_pem) = (self.issue)().with_context(|| format!("renewing the {what}"))?;
        self.live
            .update(&cert_pem, &key_pem)
            .with_context(|| format!("loading the renewed {what}"))?;
        *self.cert_pem.lock().unwrap_or_else(|p| p.into_inner()) = cert_pem;
        tracing::info!("{what} renewed; new connections use it");
        Ok(true)
    }
}

/// The kubelet serving certificate of the server's own node (as an agent's from the
/// supervisor: valid for the node name, its IP, `localhost` and `127.0.0.1`), issued by
/// the cluster CA for `validity` and renewed with the server's other leaves.
pub(crate) fn kubelet_serving_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node_name: &str,
    node_ip: std::net::IpAddr,
    validity: std::time::Duration,
) -> anyhow::Result<std::sync::Arc<IssuedLeaf>> {
    let sans = vec![
        node_name.to_string(),
        node_ip.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    let (ca, key, name) = (
        ca_cert_pem.to_string(),
        ca_key_pem.to_string(),
        node_name.to_string(),
    );
    IssuedLeaf::new("kubelet serving certificate", move || {
        rk3s_pki::issue_serving_cert_for(&ca, &key, &name, &sans, validity)
    })
}

/// Where the admin kubeconfig goes (rewritten when its client certificate is renewed).
#[derive(Clone)]
pub(crate) struct KubeconfigTarget {
    /// The kubeconfig file.
    pub(crate) path: PathBuf,
    /// Its mode.
    pub(crate) mode: u32,
    /// The server URL in it.
    pub(crate) url: String,
}

/// Renews the server's leaf certificates while it runs: every `interval`, those within
/// the renewal window are re-issued on disk (as on start), a new serving certificate is
/// presented to new connections at once and the admin kubeconfig is rewritten, so a
/// long-running server never serves an expired certificate. The in-memory `leaves`
/// are re-issued by the CA in use. A CA replaced on disk (`rotate-ca`) stops the
/// renewal of the files until the restart that puts it in use.
pub(crate) async fn renew_server_certificates(
    opts: rk3s_pki::PkiOptions,
    interval: std::time::Duration,
    serving: std::sync::Arc<rk3s_apiserver::server::ServingCert>,
    serving_pem: String,
    admin_pem: String,
    kubeconfig: KubeconfigTarget,
    leaves: Vec<std::sync::Arc<IssuedLeaf>>,
) {
    let ca_path = opts
        .server_dir
        .join(rk3s_pki::TLS_DIR)
        .join(rk3s_pki::CA_CERT_FILE);
    let ca_in_use = std::fs::read_to_string(&ca_path).unwrap_or_default();
    let state = std::sync::Arc::new(std::sync::Mutex::new((serving_pem, admin_pem)));
    renewal_loop("server", interval, move || {
        let (opts, serving, state, ca_path, ca_in_use) = (
            opts.clone(),
            serving.clone(),
            state.clone(),
            ca_path.clone(),
            ca_in_use.clone(),
        );
        let kubeconfig = kubeconfig.clone();
        let leaves = leaves.clone();
        async move {
            let renew_before = opts.renew_before;
            // each leaf is tried; the first failure is reported after the files'
            let leaves_renewed = tokio::task::spawn_blocking(move || {
                let mut failed = None;
                for leaf in &leaves {
                    if let Err(e) = leaf.renew_if_due(renew_before) {
                        failed.get_or_insert(e);
                    }
                }
                failed.map_or(Ok(()), Err)
            })
            .await
            .context("renewal task")?;
            if std::fs::read_to_string(&ca_path).unwrap_or_default() != ca_in_use {
                tracing::warn!(ca = %ca_path.display(), "the cluster CA changed on disk (rotate-ca): restart the server to use it; no renewal of its files until then");
                return leaves_renewed;
            }
            let pki = tokio::task::spawn_blocking(move || rk3s_pki::ensure_server_pki(&opts))
                .await
                .context("renewal task")??;
            let (serving_pem, admin_pem) = {
                let g = state.lock().unwrap_or_else(|p| p.into_inner());
                g.clone()
            };
            if pki.serving_cert_pem != serving_pem {
                serving
                    .update(&pki.serving_cert_pem, &pki.serving_key_pem)
                    .context("loading the renewed serving certificate")?;
                tracing::info!("serving certificate renewed; new connections get it");
                state.lock().unwrap_or_else(|p| p.into_inner()).0 = pki.serving_cert_pem.clone();
            }
            if pki.admin_cert_pem != admin_pem {
                rk3s_pki::write_kubeconfig(
                    &kubeconfig.path,
                    kubeconfig.mode,
                    &kubeconfig.url,
                    &pki.ca_cert_pem,
                    &pki.admin_cert_pem,
                    &pki.admin_key_pem,
                    "default",
                )
                .context("rewriting the admin kubeconfig")?;
                tracing::info!(kubeconfig = %kubeconfig.path.display(), "admin certificate renewed");
                state.lock().unwrap_or_else(|p| p.into_inner()).1 = pki.admin_cert_pem.clone();
            }
            leaves_renewed
        }
    })
    .await
}

/// TLS handshakes in memory, to see which certificates each side presents.
#[cfg(test)]
pub(crate) mod test_tls {
    use std::sync::Arc;

    /// The first certificate (DER) of a PEM chain.
    pub(crate) fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .expect("a certificate")
            .expect("PEM")
            .to_vec()
    }

    /// A client configuration trusting `ca_pem`, presenting `client_cert` if any.
    pub(crate) fn client_config(
        ca_pem: &str,
        client_cert: Option<Arc<rk3s_pki::LiveCert>>,
    ) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("CA")).expect("root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let mut config = match client_cert {
            Some(live) => builder.with_client_cert_resolver(live),
            None => builder.with_no_client_auth(),
        };
        // full handshakes, as the API server's clients do
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    /// A full handshake of a new connection to `server_name`: (the client certificate the
    /// server saw, the serving certificate the client saw), both DER.
    pub(crate) fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> (Option<Vec<u8>>, Vec<u8>) {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("name");
        let mut c = rustls::ClientConnection::new(client, name).expect("client");
        let mut s = rustls::ServerConnection::new(server).expect("server");
        for _ in 0..16 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("client write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).expect("server read");
                s.process_new_packets().expect("server handshake");
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("server write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("client read");
                c.process_new_packets().expect("client handshake");
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(
            !c.is_handshaking() && !s.is_handshaking(),
            "handshake incomplete"
        );
        let seen_by_server = s
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let seen_by_client = c.peer_certificates().expect("server certificate")[0].to_vec();
        (seen_by_server, seen_by_client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_leaves_follow_the_validity_and_are_renewed_while_running() {
        use std::sync::Arc;
        use test_tls::{client_config, der, handshake};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = rk3s_pki::PkiOptions::new(dir.path().join("server"));
        opts.leaf_validity = std::time::Duration::from_secs(4);
        opts.renew_before = std::time::Duration::from_secs(3);
        let pki = rk3s_pki::ensure_server_pki(&opts).expect("pki");
        let (kubelet_client, kc_leaf) =
            crate::server::kubelet_client_config(&pki, opts.leaf_validity).expect("kubelet client");
        let (front_proxy, fp_leaf) =
            crate::server::front_proxy_config(&pki, opts.leaf_validity).expect("front proxy");
        let node_ip = std::net::IpAddr::from([10, 0, 0, 5]);
        let node_leaf = kubelet_serving_leaf(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "node1",
            node_ip,
            opts.leaf_validity,
        )
        .expect("node serving");
        for leaf in [&kc_leaf, &fp_leaf, &node_leaf] {
            let left = rk3s_pki::not_after(&leaf.cert_pem()).expect("expiry") - now();
            assert!((2..=5).contains(&left), "{}: {left} s", leaf.what);
            assert!(!leaf
                .renew_if_due(std::time::Duration::from_secs(1))
                .expect("check"));
        }
        let first: Vec<String> = [&kc_leaf, &fp_leaf, &node_leaf]
            .iter()
            .map(|l| l.cert_pem())
            .collect();

        // TLS as the API server and the node's kubelet use these certificates
        let peer = rk3s_pki::issue_serving_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "peer",
            &["localhost".to_string()],
            1,
        )
        .expect("peer");
        let recorder = Arc::new(
            rk3s_kubelet::server::tls_config(&peer.0, &peer.1, &pki.ca_cert_pem).expect("tls"),
        );
        let kubelet = Arc::new(
            rk3s_kubelet::server::tls_config_with(node_leaf.live(), &pki.ca_cert_pem)
                .expect("kubelet tls"),
        );
        let kubelet_client_tls =
            client_config(&pki.ca_cert_pem, Some(kubelet_client.client_cert.clone()));
        let front_proxy_tls =
            client_config(&pki.ca_cert_pem, Some(front_proxy.client_cert.clone()));
        let plain = client_config(&pki.ca_cert_pem, None);
        let seen = || {
            [
                handshake(recorder.clone(), kubelet_client_tls.clone(), "localhost").0,
                handshake(recorder.clone(), front_proxy_tls.clone(), "localhost").0,
                Some(handshake(kubelet.clone(), plain.clone(), &node_ip.to_string()).1),
            ]
        };
        let expected = |pems: &[String]| pems.iter().map(|p| Some(der(p))).collect::<Vec<_>>();
        assert_eq!(seen().to_vec(), expected(&first));

        // the server's renewal loop re-issues them inside the window (after ~1 s)
        let kubeconfig = KubeconfigTarget {
            path: dir.path().join("admin.yaml"),
            mode: 0o600,
            url: "https://127.0.0.1:6443".into(),
        };
        let serving = Arc::new(
            rk3s_apiserver::server::ServingCert::from_pem(
                &pki.serving_cert_pem,
                &pki.serving_key_pem,
            )
            .expect("serving"),
        );
        let renewal = tokio::spawn(renew_server_certificates(
            opts.clone(),
            std::time::Duration::from_millis(200),
            serving,
            pki.serving_cert_pem.clone(),
            pki.admin_cert_pem.clone(),
            kubeconfig,
            vec![kc_leaf.clone(), fp_leaf.clone(), node_leaf.clone()],
        ));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let current = || -> Vec<String> {
            [&kc_leaf, &fp_leaf, &node_leaf]
                .iter()
                .map(|l| l.cert_pem())
                .collect()
        };
        while current().iter().zip(&first).any(|(a, b)| a == b) {
            assert!(std::time::Instant::now() < deadline, "not renewed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        renewal.abort();
        // a round in progress finishes
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let renewed = current();
        // new connections present the new certificates (same TLS configurations)
        assert_eq!(seen().to_vec(), expected(&renewed));
        for (new, old) in renewed.iter().zip(&first) {
            // issued at least a second later for the same validity
            assert!(
                rk3s_pki::not_after(new).expect("new") > rk3s_pki::not_after(old).expect("old")
            );
        }
    }

    #[test]
    fn check_lists_the_server_pki_and_rotate_renews_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        let pki = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(data.join("server")))
            .expect("pki");
        let mut found = Vec::new();
        collect(&data.join("server"), &mut found);
        let names: Vec<String> = found
            .iter()
            .map(|f| {
                f.file
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "client-admin.crt",
                "server-ca.crt",
                "serving-kube-apiserver.crt"
            ]
        );
        let t = table(&found, data, now());
        assert!(t.starts_with("FILENAME"), "{t}");
        assert!(t.contains("server/tls/serving-kube-apiserver.crt"), "{t}");
        assert!(t.contains("ServerAuth"), "{t}");
        assert!(t.contains("CertSign"), "{t}");
        assert_eq!(t.matches("   OK").count(), 3, "{t}");
        assert!(t.contains("364d") || t.contains("365d"), "{t}");

        let (backup, removed) = rotate(data, &["api-server".to_string()]).expect("rotate");
        assert_eq!(
            removed,
            ["serving-kube-apiserver.crt", "serving-kube-apiserver.key"]
        );
        assert!(backup.join("serving-kube-apiserver.crt").is_file());
        let again = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(data.join("server")))
            .expect("pki");
        assert_ne!(again.serving_cert_pem, pki.serving_cert_pem, "re-issued");
        assert_eq!(again.admin_cert_pem, pki.admin_cert_pem, "not chosen: kept");
        assert_eq!(again.ca_cert_pem, pki.ca_cert_pem, "the CA is kept");
    }

    #[tokio::test]
    async fn rotate_ca_checks_backs_up_and_installs_a_cross_signed_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        let opts = rk3s_pki::PkiOptions::new(data.join("server"));
        let pki = rk3s_pki::ensure_server_pki(&opts).expect("pki");
        let tls = data.join("server/tls");
        // the TLS folder in use is not a staging folder
        assert!(rotate_ca(data, &data.join("server"), false, false, None)
            .await
            .is_err());
        // an unrelated CA is refused without --force and changes nothing
        let other = data.join("other");
        std::fs::create_dir_all(&other).expect("dir");
        let foreign = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(data.join("x")))
            .expect("foreign");
        std::fs::write(other.join("server-ca.crt"), &foreign.ca_cert_pem).expect("w");
        std::fs::write(other.join("server-ca.key"), &foreign.ca_key_pem).expect("w");
        let err = rotate_ca(data, &other, false, false, None)
            .await
            .expect_err("refused");
        assert!(format!("{err:#}").contains("cross-signed"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(tls.join("server-ca.crt")).expect("ca"),
            pki.ca_cert_pem
        );
        // a generated cross-signed CA is installed; the old files are backed up
        let staged = data.join("staged");
        let done = rotate_ca(data, &staged, false, true, None)
            .await
            .expect("rotate-ca");
        assert!(done.rotation.cross_signed);
        assert!(staged.join("tls/server-ca.crt").is_file());
        assert_eq!(
            std::fs::read_to_string(done.backup.join("server-ca.crt")).expect("backup"),
            pki.ca_cert_pem
        );
        let installed = std::fs::read_to_string(tls.join("server-ca.crt")).expect("ca");
        assert_eq!(installed, done.rotation.ca_cert_pem);
        // --generate refuses to overwrite staged material
        assert!(rotate_ca(data, &staged, false, true, None).await.is_err());
        // the next start issues the leaves from the new CA and writes the printed token
        let again = rk3s_pki::ensure_server_pki(&opts).expect("restart");
        assert_eq!(again.ca_cert_pem, installed);
        assert_ne!(again.serving_cert_pem, pki.serving_cert_pem);
        assert_eq!(done.token.as_deref(), Some(again.token.as_str()));
        // --force accepts an unrelated CA
        let forced = rotate_ca(data, &other, true, false, None)
            .await
            .expect("forced");
        assert!(!forced.rotation.cross_signed);
    }

    #[tokio::test]
    async fn rotate_ca_writes_the_shared_bootstrap_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("a");
        let server_dir = data.join("server");
        let pki =
            rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(&server_dir)).expect("pki");
        let store: std::sync::Arc<dyn rk3s_store::Store> = std::sync::Arc::new(
            rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("store"),
        );
        assert!(
            crate::bootstrap_data::save(&*store, &server_dir, &pki.token_secret)
                .await
                .expect("save")
        );
        let shared = SharedCa {
            store: store.clone(),
            secret: pki.token_secret.clone(),
        };
        let done = rotate_ca(
            &data,
            &dir.path().join("staged"),
            false,
            true,
            Some(&shared),
        )
        .await
        .expect("rotate-ca");
        assert!(done.shared && done.rotation.cross_signed);
        // another server loads the new CA from the datastore and issues from it
        let other = dir.path().join("b/server");
        crate::bootstrap_data::load(&*store, &other, Some(&pki.token_secret))
            .await
            .expect("load");
        let theirs = std::fs::read_to_string(other.join("tls/server-ca.crt")).expect("ca");
        assert_eq!(theirs, done.rotation.ca_cert_pem);
        assert_eq!(
            std::fs::read_to_string(other.join("tls/server-ca.key")).expect("key"),
            done.rotation.ca_key_pem
        );
        let mut opts = rk3s_pki::PkiOptions::new(&other);
        opts.token = Some(pki.token_secret.clone());
        let again = rk3s_pki::ensure_server_pki(&opts).expect("pki from the stored CA");
        assert_eq!(again.ca_cert_pem, theirs);
        // this server's files were updated too
        assert_eq!(
            std::fs::read_to_string(server_dir.join("tls/server-ca.crt")).expect("ca"),
            theirs
        );
    }

    #[test]
    fn statuses_and_residual_times() {
        let c = |nb: i64, na: i64| rk3s_pki::CertificateSummary {
            common_name: "x".into(),
            organizations: vec![],
            usages: vec![],
            not_before: nb,
            not_after: na,
            is_ca: false,
        };
        assert_eq!(status(&c(0, 1000 * 86_400), 10), "OK");
        assert_eq!(status(&c(0, 10 * 86_400), 10), "WARNING");
        assert_eq!(status(&c(0, 5), 10), "EXPIRED");
        assert_eq!(status(&c(20, 50), 10), "NOT YET VALID");
        assert_eq!(residual(2 * 86_400 + 5), "2d");
        assert_eq!(residual(7200), "2h");
        assert_eq!(residual(59), "59s");
        assert_eq!(residual(-3), "0s");
    }
}
