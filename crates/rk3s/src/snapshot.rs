//! `rk3s etcd-snapshot` (k3s's command and flags), the server's scheduled snapshots
//! (`--etcd-snapshot-schedule-cron`, `--etcd-snapshot-retention`) and the SQLite restore of
//! `rk3s server --cluster-reset --cluster-reset-restore-path=FILE` (the embedded etcd's
//! restore is in `embedded_etcd.rs`).
//!
//! Snapshots are files named as k3s names them, `<name>-<node>-<unix seconds>`, in
//! `<data-dir>/server/db/snapshots` unless `--etcd-snapshot-dir` says otherwise; each is a
//! consistent copy of the datastore at one revision, of one of two kinds ([`Source`]):
//! - the embedded SQLite: SQLite's online backup (`rk3s_store::sqlite::snapshot`);
//! - etcd, embedded (`--cluster-init`: found by its data dir, reached at the client URL
//!   the running etcd listens on, with the etcd client certificate) or external
//!   (`--datastore-endpoint=http(s)://...`): etcd's Maintenance/Snapshot RPC, the file
//!   `etcdctl snapshot save` writes (`rk3s_store_etcd`).
//!
//! PostgreSQL and MySQL have their own backup tools: `etcd-snapshot` refuses them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// The datastore file of a data dir (the embedded SQLite).
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server/db/state.db")
}

/// The default snapshot folder of a data dir.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server/db/snapshots")
}

/// Flags every `etcd-snapshot` subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Folder of the server's state
    #[arg(
        long,
        short = 'd',
        value_name = "DIR",
        default_value = "/var/lib/rk3s",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Folder of the snapshots (default: <data-dir>/server/db/snapshots)
    #[arg(
        long = "etcd-snapshot-dir",
        alias = "dir",
        value_name = "DIR",
        global = true
    )]
    pub dir: Option<PathBuf>,
    /// Node name in snapshot names (default: the hostname)
    #[arg(long, value_name = "NAME", env = "RK3S_NODE_NAME", global = true)]
    pub node_name: Option<String>,
    /// Datastore to snapshot: empty for the server's own (embedded etcd when its data dir
    /// holds one, else the embedded SQLite); http(s)://HOST:PORT[,...] for an external etcd
    #[arg(
        long,
        value_name = "URL",
        env = "RK3S_DATASTORE_ENDPOINT",
        global = true
    )]
    pub datastore_endpoint: Option<String>,
    /// CA certificate file of an external etcd (TLS)
    #[arg(
        long,
        value_name = "FILE",
        env = "RK3S_DATASTORE_CAFILE",
        global = true
    )]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate file for an external etcd (TLS)
    #[arg(
        long,
        value_name = "FILE",
        env = "RK3S_DATASTORE_CERTFILE",
        global = true
    )]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key file for an external etcd (TLS)
    #[arg(
        long,
        value_name = "FILE",
        env = "RK3S_DATASTORE_KEYFILE",
        global = true
    )]
    pub datastore_keyfile: Option<PathBuf>,
}

impl CommonArgs {
    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| default_dir(&self.data_dir))
    }
    fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(hostname)
    }

    /// The datastore `save` snapshots (see the module docs).
    fn source(&self) -> anyhow::Result<Source> {
        let endpoint = self
            .datastore_endpoint
            .as_deref()
            .map(str::trim)
            .unwrap_or("");
        if endpoint.is_empty() {
            if embedded_etcd_present(&self.data_dir) {
                return Ok(embedded_etcd_source(&self.data_dir));
            }
            return Ok(Source::Sqlite(db_path(&self.data_dir)));
        }
        let tls = crate::datastore::DatastoreTls {
            ca_file: self.datastore_cafile.clone(),
            cert_file: self.datastore_certfile.clone(),
            key_file: self.datastore_keyfile.clone(),
        };
        match crate::datastore::parse_endpoint(endpoint)? {
            crate::datastore::DatastoreEndpoint::Sqlite(None) => {
                Ok(Source::Sqlite(db_path(&self.data_dir)))
            }
            crate::datastore::DatastoreEndpoint::Sqlite(Some(file)) => Ok(Source::Sqlite(file)),
            datastore => Source::for_datastore(&datastore, &tls, &self.data_dir).ok_or_else(|| {
                anyhow::anyhow!(
                    "etcd-snapshot takes snapshots of SQLite and etcd only: back up PostgreSQL and MySQL with their own tools"
                )
            }),
        }
    }
}

/// The datastore a snapshot is taken of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The SQLite file at this path.
    Sqlite(PathBuf),
    /// An etcd cluster (embedded or external): its client URLs and TLS files.
    Etcd {
        /// Client URLs of its members.
        endpoints: Vec<String>,
        /// TLS files for `https://` URLs.
        tls: rk3s_store_etcd::TlsFiles,
    },
}

impl Source {
    /// The snapshot source of a server's datastore: the embedded SQLite (the default
    /// file) or etcd; `None` for the others (PostgreSQL, MySQL, a SQLite file named by
    /// `--datastore-endpoint`), which scheduled snapshots leave alone.
    pub fn for_datastore(
        datastore: &crate::datastore::DatastoreEndpoint,
        tls: &crate::datastore::DatastoreTls,
        data_dir: &Path,
    ) -> Option<Source> {
        match datastore {
            crate::datastore::DatastoreEndpoint::Sqlite(None) => {
                Some(Source::Sqlite(db_path(data_dir)))
            }
            crate::datastore::DatastoreEndpoint::Etcd(endpoints) => Some(Source::Etcd {
                endpoints: endpoints.clone(),
                tls: rk3s_store_etcd::TlsFiles {
                    ca_file: tls.ca_file.clone(),
                    cert_file: tls.cert_file.clone(),
                    key_file: tls.key_file.clone(),
                },
            }),
            _ => None,
        }
    }
}

/// Whether the data dir holds an embedded etcd member (`--cluster-init` / `--server`).
pub fn embedded_etcd_present(data_dir: &Path) -> bool {
    crate::embedded_etcd::data_dir(data_dir)
        .join("member")
        .is_dir()
}

/// The embedded etcd of a data dir: the client URL its running etcd listens on (from its
/// pid file and command line; `https://127.0.0.1:2379` when none runs) and the etcd
/// client certificate under `<data-dir>/server/tls/etcd/`.
fn embedded_etcd_source(data_dir: &Path) -> Source {
    let etcd_dir = crate::embedded_etcd::data_dir(data_dir);
    let mut pid_file = etcd_dir.clone().into_os_string();
    pid_file.push(".pid");
    let url = std::fs::read_to_string(PathBuf::from(pid_file))
        .ok()
        .and_then(|pid| std::fs::read(format!("/proc/{}/cmdline", pid.trim())).ok())
        .and_then(|cmdline| listen_client_url(&cmdline, &etcd_dir))
        .unwrap_or_else(|| format!("https://127.0.0.1:{}", rk3s_etcd::CLIENT_PORT));
    let tls = data_dir
        .join("server")
        .join(rk3s_pki::TLS_DIR)
        .join(rk3s_pki::ETCD_TLS_DIR);
    Source::Etcd {
        endpoints: vec![url],
        tls: rk3s_store_etcd::TlsFiles {
            ca_file: Some(tls.join("server-ca.crt")),
            cert_file: Some(tls.join("client.crt")),
            key_file: Some(tls.join("client.key")),
        },
    }
}

/// The value of `--<flag>` (`--flag VALUE` or `--flag=VALUE`) in a command line
/// (NUL-separated, as in `/proc/<pid>/cmdline`).
pub(crate) fn flag_value(cmdline: &[u8], flag: &str) -> Option<String> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    let (bare, eq) = (format!("--{flag}"), format!("--{flag}="));
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == bare {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_string)
        }
    })
}

/// The first `--listen-client-urls` URL of an etcd command line (NUL-separated, as in
/// `/proc/<pid>/cmdline`), when it is the etcd of `etcd_dir` (`--data-dir`).
fn listen_client_url(cmdline: &[u8], etcd_dir: &Path) -> Option<String> {
    if flag_value(cmdline, "data-dir")
        .map(PathBuf::from)
        .as_deref()
        != Some(etcd_dir)
    {
        return None;
    }
    flag_value(cmdline, "listen-client-urls")?
        .split(',')
        .map(str::trim)
        .find(|u| !u.is_empty())
        .map(str::to_string)
}

/// `rk3s etcd-snapshot`: snapshots of the datastore.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Take a snapshot now (the server may be running)
    Save {
        /// Name prefix of the snapshot
        #[arg(long, default_value = "on-demand")]
        name: String,
    },
    /// List the snapshots
    #[command(alias = "list")]
    Ls {
        /// Output format: table or json
        #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Delete snapshots by name
    #[command(alias = "rm")]
    Delete {
        /// Snapshot names
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete all but the newest snapshots with a name prefix
    Prune {
        /// Name prefix of the snapshots to prune
        #[arg(long, default_value = "on-demand")]
        name: String,
        /// Snapshots to keep
        #[arg(
            long = "snapshot-retention",
            alias = "etcd-snapshot-retention",
            default_value_t = 5
        )]
        retention: usize,
    },
}

/// One snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// File name.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Unix seconds from the name (the file's mtime when the name has none).
    pub created: i64,
}

/// The unix seconds at the end of a k3s-style snapshot name (`...-<seconds>`).
fn created_from_name(name: &str) -> Option<i64> {
    name.rsplit('-').next()?.parse().ok()
}

/// The snapshots in `dir`, oldest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() || name.ends_with(".partial") {
            continue;
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        out.push(Snapshot {
            created: created_from_name(&name).unwrap_or(mtime),
            name,
            path: e.path(),
            size: meta.len(),
        });
    }
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(out)
}

/// A snapshot just taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The snapshot file.
    pub path: PathBuf,
    /// The datastore revision it holds: every write up to it, none after.
    pub revision: i64,
    /// Its size in bytes.
    pub size: u64,
}

/// A free name `<prefix>-<node>-<now>` in `dir` (two snapshots within one second get
/// distinct names).
fn next_path(dir: &Path, prefix: &str, node: &str) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = dir.join(format!("{prefix}-{node}-{now}"));
    let mut n = 1;
    while out.exists() {
        out = dir.join(format!("{prefix}-{node}-{}", now + n));
        n += 1;
    }
    out
}

/// Takes a snapshot of `source` named `<prefix>-<node>-<now>` in `dir`.
pub async fn save(source: &Source, dir: &Path, prefix: &str, node: &str) -> anyhow::Result<Saved> {
    let out = next_path(dir, prefix, node);
    match source {
        Source::Sqlite(db) => {
            let db = db.clone();
            let info = tokio::task::spawn_blocking(move || {
                rk3s_store::sqlite::snapshot::save(&db, &out)
                    .with_context(|| format!("saving snapshot {}", out.display()))
            })
            .await
            .context("snapshot task")??;
            Ok(Saved {
                path: info.path,
                revision: info.revision,
                size: info.size,
            })
        }
        Source::Etcd { endpoints, tls } => {
            let store = rk3s_store_etcd::EtcdStore::connect(&rk3s_store_etcd::EtcdConfig {
                endpoints: endpoints.clone(),
                tls: tls.clone(),
                connect_timeout: Some(std::time::Duration::from_secs(10)),
            })
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            let stats = store
                .snapshot_to_file(&out)
                .await
                .with_context(|| format!("saving snapshot {}", out.display()))?;
            let path = stats.path.clone();
            let revision =
                tokio::task::spawn_blocking(move || rk3s_store_etcd::snapshot_revision(&path))
                    .await
                    .context("snapshot task")?
                    .with_context(|| format!("reading snapshot {}", out.display()))?;
            Ok(Saved {
                path: stats.path,
                revision: revision.unwrap_or(0),
                size: stats.size,
            })
        }
    }
}

/// Deletes all but the newest `keep` snapshots whose names start with `<prefix>-<node>-`;
/// returns the deleted names.
pub fn prune(dir: &Path, prefix: &str, node: &str, keep: usize) -> anyhow::Result<Vec<String>> {
    let start = format!("{prefix}-{node}-");
    let mine: Vec<Snapshot> = list(dir)?
        .into_iter()
        .filter(|s| s.name.starts_with(&start) && created_from_name(&s.name).is_some())
        .collect();
    let excess = mine.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for s in mine.into_iter().take(excess) {
        std::fs::remove_file(&s.path).with_context(|| format!("deleting {}", s.path.display()))?;
        deleted.push(s.name);
    }
    Ok(deleted)
}

/// Runs `rk3s etcd-snapshot ...`.
pub fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    let dir = args.common.dir();
    match args.command {
        SnapshotCommand::Save { name } => {
            check_name(&name)?;
            let source = args.common.source()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let info = runtime.block_on(save(&source, &dir, &name, &args.common.node()))?;
            println!(
                "Snapshot {} saved (revision {}, {} bytes)",
                info.path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                info.revision,
                info.size
            );
        }
        SnapshotCommand::Ls { output } => {
            let snaps = list(&dir)?;
            if output == "json" {
                let items: Vec<serde_json::Value> = snaps
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name,
                            "location": format!("file://{}", s.path.display()),
                            "size": s.size,
                            "createdAt": rfc3339(s.created),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print!("{}", table(&snaps));
            }
        }
        SnapshotCommand::Delete { names } => {
            for n in names {
                check_name(&n)?;
                let p = dir.join(&n);
                if !p.is_file() {
                    bail!("no snapshot {n:?} in {}", dir.display());
                }
                std::fs::remove_file(&p).with_context(|| format!("deleting {}", p.display()))?;
                println!("Snapshot {n} deleted");
            }
        }
        SnapshotCommand::Prune { name, retention } => {
            check_name(&name)?;
            for n in prune(&dir, &name, &args.common.node(), retention)? {
                println!("Snapshot {n} deleted");
            }
        }
    }
    Ok(())
}

/// A snapshot name or prefix is one path component.
fn check_name(n: &str) -> anyhow::Result<()> {
    if n.is_empty() || n.contains('/') || n == "." || n == ".." {
        bail!("invalid snapshot name {n:?}");
    }
    Ok(())
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// k3s's `etcd-snapshot ls` table: Name, Location, Size, Created.
fn table(snaps: &[Snapshot]) -> String {
    let rows: Vec<[String; 4]> = snaps
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                format!("file://{}", s.path.display()),
                s.size.to_string(),
                rfc3339(s.created),
            ]
        })
        .collect();
    let head = ["Name", "Location", "Size", "Created"].map(String::from);
    let mut width = [0usize; 4];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(rows.iter()) {
        let line = format!(
            "{:w0$} {:w1$} {:w2$} {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `--cluster-reset --cluster-reset-restore-path=FILE`: replaces the datastore with the
/// snapshot (the old files kept beside it). The caller then exits, as k3s does, and the
/// user restarts without the flags.
pub fn restore(data_dir: &Path, snapshot: &Path) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (revision, kept) =
        rk3s_store::sqlite::snapshot::restore(snapshot, &db_path(data_dir), &now.to_string())
            .with_context(|| format!("restoring {}", snapshot.display()))?;
    tracing::info!(
        snapshot = %snapshot.display(),
        revision,
        old = ?kept,
        "datastore restored from the snapshot"
    );
    Ok(())
}

/// Scheduled snapshots: `<name>-<node>-<time>` at each time of `schedule` (UTC), keeping the
/// newest `retention`. Runs until the process ends; failures are logged and retried at
/// the next time.
pub async fn run_schedule(
    source: Source,
    dir: PathBuf,
    name: String,
    node: String,
    schedule: rk3s_core::cron::Schedule,
    retention: usize,
) {
    let tz = jiff::tz::TimeZone::UTC;
    loop {
        let now = jiff::Timestamp::now();
        let Some(next) = schedule.next(now, &tz) else {
            tracing::warn!("the snapshot schedule never fires; scheduled snapshots are off");
            return;
        };
        let wait = next.duration_since(now).unsigned_abs();
        tokio::time::sleep(wait).await;
        let result = match save(&source, &dir, &name, &node).await {
            Ok(info) => {
                let (o, n, nd) = (dir.clone(), name.clone(), node.clone());
                tokio::task::spawn_blocking(move || {
                    prune(&o, &n, &nd, retention).map(|pruned| (info, pruned))
                })
                .await
            }
            Err(e) => Ok(Err(e)),
        };
        match result {
            Ok(Ok((info, pruned))) => tracing::info!(
                snapshot = %info.path.display(),
                revision = info.revision,
                size = info.size,
                pruned = pruned.len(),
                "scheduled snapshot saved"
            ),
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "scheduled snapshot failed"),
            Err(e) => tracing::warn!(error = %e, "scheduled snapshot task failed"),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pruning() {
        assert_eq!(
            created_from_name("on-demand-node1-1700000000"),
            Some(1_700_000_000)
        );
        assert_eq!(created_from_name("weird"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        for t in [100, 300, 200, 400] {
            std::fs::write(dir.path().join(format!("etcd-snapshot-n1-{t}")), b"x").expect("w");
        }
        std::fs::write(dir.path().join("etcd-snapshot-n2-50"), b"x").expect("w");
        std::fs::write(dir.path().join("on-demand-n1-10"), b"x").expect("w");
        let names: Vec<String> = list(dir.path())
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "on-demand-n1-10",
                "etcd-snapshot-n2-50",
                "etcd-snapshot-n1-100",
                "etcd-snapshot-n1-200",
                "etcd-snapshot-n1-300",
                "etcd-snapshot-n1-400"
            ]
        );
        let deleted = prune(dir.path(), "etcd-snapshot", "n1", 2).expect("prune");
        assert_eq!(deleted, ["etcd-snapshot-n1-100", "etcd-snapshot-n1-200"]);
        let left = list(dir.path()).expect("list").len();
        assert_eq!(left, 4, "other nodes' and other prefixes' snapshots stay");
        let t = table(&list(dir.path()).expect("list"));
        assert!(t.starts_with("Name "), "{t}");
        assert!(t.contains("file://"), "{t}");
        assert!(t.contains("1970-01-01T00:00:10Z"), "{t}");
        assert!(check_name("../x").is_err());
    }

    #[test]
    fn embedded_etcd_url_comes_from_its_command_line() {
        let dir = Path::new("/d/server/db/etcd");
        let cmdline = b"etcd\0--name\0s1\0--data-dir\0/d/server/db/etcd\0--listen-client-urls\0https://127.0.0.61:2379,https://10.0.0.1:2379\0";
        assert_eq!(
            listen_client_url(cmdline, dir).as_deref(),
            Some("https://127.0.0.61:2379")
        );
        let eq =
            b"etcd\0--data-dir=/d/server/db/etcd\0--listen-client-urls=https://127.0.0.1:2379\0";
        assert_eq!(
            listen_client_url(eq, dir).as_deref(),
            Some("https://127.0.0.1:2379")
        );
        // Another etcd (a stale pid file naming some other process): not ours.
        let other = b"etcd\0--data-dir=/other\0--listen-client-urls=https://127.0.0.1:2379\0";
        assert_eq!(listen_client_url(other, dir), None);
        assert_eq!(listen_client_url(b"sleep\x0010\0", dir), None);

        // A data dir without a running etcd: the default URL and the client certificate.
        let data = tempfile::tempdir().expect("tempdir");
        assert!(!embedded_etcd_present(data.path()));
        std::fs::create_dir_all(data.path().join("server/db/etcd/member")).expect("mkdir");
        assert!(embedded_etcd_present(data.path()));
        let Source::Etcd { endpoints, tls } = embedded_etcd_source(data.path()) else {
            panic!("not etcd");
        };
        assert_eq!(endpoints, ["https://127.0.0.1:2379"]);
        assert_eq!(
            tls.cert_file,
            Some(data.path().join("server/tls/etcd/client.crt"))
        );
    }

    #[test]
    fn sources_of_datastores() {
        use crate::datastore::{DatastoreEndpoint, DatastoreTls};
        let data = Path::new("/var/lib/rk3s");
        let tls = DatastoreTls {
            ca_file: Some(PathBuf::from("/ca")),
            ..Default::default()
        };
        assert_eq!(
            Source::for_datastore(&DatastoreEndpoint::Sqlite(None), &tls, data),
            Some(Source::Sqlite(PathBuf::from(
                "/var/lib/rk3s/server/db/state.db"
            )))
        );
        let Some(Source::Etcd { endpoints, tls: t }) = Source::for_datastore(
            &DatastoreEndpoint::Etcd(vec!["https://e:2379".into()]),
            &tls,
            data,
        ) else {
            panic!("etcd");
        };
        assert_eq!(endpoints, ["https://e:2379"]);
        assert_eq!(t.ca_file, Some(PathBuf::from("/ca")));
        assert_eq!(
            Source::for_datastore(
                &DatastoreEndpoint::Postgres("postgres://x".into()),
                &tls,
                data
            ),
            None
        );
        let common = |endpoint: &str| CommonArgs {
            data_dir: PathBuf::from("/nonexistent-rk3s"),
            dir: None,
            node_name: None,
            datastore_endpoint: Some(endpoint.to_string()),
            datastore_cafile: None,
            datastore_certfile: None,
            datastore_keyfile: None,
        };
        assert!(matches!(
            common("http://127.0.0.1:2379").source(),
            Ok(Source::Etcd { .. })
        ));
        assert_eq!(
            common("").source().expect("sqlite"),
            Source::Sqlite(PathBuf::from("/nonexistent-rk3s/server/db/state.db"))
        );
        let err = common("mysql://u:p@tcp(h:3306)/db").source().unwrap_err();
        assert!(err.to_string().contains("own tools"), "{err}");
    }
}
