//! `rk3s etcd-snapshot` (k3s's command and flags) on the embedded SQLite datastore, the
//! server's scheduled snapshots (`--etcd-snapshot-schedule-cron`, `--etcd-snapshot-retention`)
//! and the restore of `rk3s server --cluster-reset --cluster-reset-restore-path=FILE`.
//!
//! Snapshots are files named as k3s names them, `<name>-<node>-<unix seconds>`, in
//! `<data-dir>/server/db/snapshots` unless `--etcd-snapshot-dir` says otherwise; each is a
//! consistent copy of the datastore at one revision (`rk3s_store::sqlite::snapshot`).

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

/// Takes a snapshot named `<prefix>-<node>-<now>` in `dir`.
pub fn save(
    data_dir: &Path,
    dir: &Path,
    prefix: &str,
    node: &str,
) -> anyhow::Result<rk3s_store::sqlite::snapshot::SnapshotInfo> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = dir.join(format!("{prefix}-{node}-{now}"));
    // Two snapshots within one second get distinct names.
    let mut n = 1;
    while out.exists() {
        out = dir.join(format!("{prefix}-{node}-{}", now + n));
        n += 1;
    }
    rk3s_store::sqlite::snapshot::save(&db_path(data_dir), &out)
        .with_context(|| format!("saving snapshot {}", out.display()))
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
            let info = save(&args.common.data_dir, &dir, &name, &args.common.node())?;
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
    data_dir: PathBuf,
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
        let (d, o, n, nd) = (data_dir.clone(), dir.clone(), name.clone(), node.clone());
        let result = tokio::task::spawn_blocking(move || {
            let info = save(&d, &o, &n, &nd)?;
            let pruned = prune(&o, &n, &nd, retention)?;
            anyhow::Ok((info, pruned))
        })
        .await;
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
}
