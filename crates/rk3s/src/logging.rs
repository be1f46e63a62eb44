//! Where `rk3s server` and `rk3s agent` write their logs (k3s's flags): standard error by
//! default (under systemd: the journal); with `--log FILE` to that file instead, rotated by
//! size as k3s rotates it (50 MB, 3 backups, 28 days; the one rotation implementation is
//! `rk3s_apiserver::audit::RotatingFile`, shared with the audit log); with
//! `--alsologtostderr` to both. Panics are logged too, so a background server's log file
//! says why it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rk3s_apiserver::audit::{RotateOptions, RotatingFile};

/// k3s's rotation of `--log` (lumberjack: 50 MB, 3 backups, 28 days).
pub const LOG_ROTATION: RotateOptions = RotateOptions {
    max_size_mb: 50,
    max_backups: 3,
    max_age_days: 28,
};

/// The logging flags of `rk3s server` and `rk3s agent`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log to this file instead of standard error (rotated at 50 MB, 3 kept)
    #[arg(long, short = 'l', value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// With --log: log to standard error as well
    #[arg(long)]
    pub alsologtostderr: bool,
}

/// The log file as a `tracing` writer: each event is one record (never split by
/// rotation), written through at once.
#[derive(Clone)]
struct LogFile(Arc<Mutex<RotatingFile>>);

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.append(buf)?;
        f.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens the log file of `--log` (with k3s's rotation).
fn open_log(path: &Path) -> anyhow::Result<LogFile> {
    let f = RotatingFile::open(path, LOG_ROTATION)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    Ok(LogFile(Arc::new(Mutex::new(f))))
}

/// Installs the process's `tracing` subscriber: `filter` (EnvFilter syntax) to standard
/// error, or to `--log`'s file (and standard error with `--alsologtostderr`); panics are
/// logged as errors before the default report.
pub fn init(filter: &str, args: &LogArgs) -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log-level")?;
    let (writer, ansi) = match &args.log {
        Some(path) => {
            let file = open_log(path)?;
            let to_file = move || file.clone();
            if args.alsologtostderr {
                (BoxMakeWriter::new(to_file.and(std::io::stderr)), false)
            } else {
                (BoxMakeWriter::new(to_file), false)
            }
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    if args.log.is_some() {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!("panic: {info}");
            default_hook(info);
        }));
    }
    Ok(())
}

/// Reports the error that stops the process in the log file too (standard error, where
/// `main` prints it, may lead nowhere for a background server).
pub fn log_fatal(args: &LogArgs, what: &str, e: &anyhow::Error) {
    if args.log.is_some() {
        tracing::error!("{what}: {e:#}");
    }
}

/// Start-up phases of `rk3s server`: one log line per phase with its duration and the
/// time since start.
#[derive(Debug)]
pub struct StartupPhases {
    started: std::time::Instant,
    last: std::time::Instant,
}

impl StartupPhases {
    /// Starts the clock.
    pub fn new() -> Self {
        let now = std::time::Instant::now();
        StartupPhases {
            started: now,
            last: now,
        }
    }

    /// Logs that `phase` is done: its own duration (since the previous phase) and the total.
    pub fn done(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        tracing::info!(
            phase,
            ms = now.duration_since(self.last).as_millis() as u64,
            total_ms = now.duration_since(self.started).as_millis() as u64,
            "start-up phase done"
        );
        self.last = now;
    }

    /// When the server started.
    pub fn started(&self) -> std::time::Instant {
        self.started
    }
}

impl Default for StartupPhases {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs the last start-up phase, the node's `Ready` condition turning true, with the time
/// since start (polls the node's own Node: the node agent's client may read it).
pub async fn log_node_ready(client: kube::Client, node: String, started: std::time::Instant) {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let deadline = started + std::time::Duration::from_secs(600);
    while std::time::Instant::now() < deadline {
        let ready = nodes.get_opt(&node).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            tracing::info!(
                phase = "node Ready",
                total_ms = started.elapsed().as_millis() as u64,
                node = %node,
                "start-up phase done"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_written_through_as_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/rk3s.log");
        let mut w = open_log(&path).unwrap();
        w.write_all(b"first line\n").unwrap();
        // Written through: readable before any flush or drop.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first line\n");
        let mut w2 = w.clone();
        w2.write_all(b"second\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "first line\nsecond\n"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
