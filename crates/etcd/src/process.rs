//! Supervision of the etcd process.

use std::io::{BufRead, Seek};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::{EtcdError, MemberConfig};

/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

struct State {
    stop: AtomicBool,
    pid: AtomicU32,
    restarts: AtomicU32,
}

/// A supervised etcd member (see the crate docs). Dropping the handle does not stop
/// etcd: call [`EtcdProcess::stop`]; it dies with the rk3s process in any case.
#[derive(Clone)]
pub struct EtcdProcess {
    state: Arc<State>,
    config: Arc<MemberConfig>,
}

impl std::fmt::Debug for EtcdProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdProcess")
            .field("name", &self.config.name)
            .field("pid", &self.pid())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EtcdError + '_ {
    move |source| EtcdError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The last `n` lines of a file (empty when unreadable); reads at most its last 64 KiB.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let lines: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn spawn(config: &MemberConfig) -> Result<std::process::Child, EtcdError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log_path)
        .map_err(io_err(&config.log_path))?;
    let log2 = log.try_clone().map_err(io_err(&config.log_path))?;
    let parent = std::process::id();
    let mut cmd = Command::new(&config.binary);
    cmd.args(config.args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C at rk3s's terminal is rk3s's to handle.
        .process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // rk3s died between fork and prctl: never run without it.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| EtcdError::Spawn {
        binary: config.binary.display().to_string(),
        source,
    })?;
    let pid_path = pid_path(config);
    if let Err(e) = std::fs::write(&pid_path, format!("{}\n", child.id())) {
        tracing::warn!(path = %pid_path.display(), error = %e, "cannot write etcd's pid file");
    }
    Ok(child)
}

/// `<data-dir of etcd>.pid`: the pid of the running etcd (for `rk3s killall`).
pub fn pid_path(config: &MemberConfig) -> std::path::PathBuf {
    let mut p = config.data_dir.clone().into_os_string();
    p.push(".pid");
    p.into()
}

impl EtcdProcess {
    /// Starts etcd and supervises it from a thread of its own. Returns once the first
    /// process runs (it may still be joining its cluster: wait for it with a client).
    pub fn start(config: MemberConfig) -> Result<EtcdProcess, EtcdError> {
        config.validate()?;
        if let Some(parent) = config.data_dir.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if !config.data_dir.exists() {
            std::fs::create_dir_all(&config.data_dir).map_err(io_err(&config.data_dir))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err(&config.data_dir))?;
        }
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
        });
        let config = Arc::new(config);
        let (tx, rx) = mpsc::channel();
        let (s, c) = (state.clone(), config.clone());
        std::thread::Builder::new()
            .name("etcd-supervisor".into())
            .spawn(move || supervise(&c, &s, tx))
            .map_err(|source| EtcdError::Spawn {
                binary: "etcd supervisor thread".into(),
                source,
            })?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(EtcdError::Invalid(
                    "the etcd supervisor thread ended".into(),
                ))
            }
        }
        // An exit within the first moment is a configuration problem: report it now.
        std::thread::sleep(Duration::from_millis(300));
        if state.pid.load(Ordering::SeqCst) == 0 && state.restarts.load(Ordering::SeqCst) == 0 {
            state.stop.store(true, Ordering::SeqCst);
            return Err(EtcdError::Exited {
                status: "at once".into(),
                log_tail: log_tail(&config.log_path, 15),
            });
        }
        tracing::info!(member = %config.name, pid = state.pid.load(Ordering::SeqCst), log = %config.log_path.display(), "etcd started");
        Ok(EtcdProcess { state, config })
    }

    /// The running etcd's pid (None between restarts).
    pub fn pid(&self) -> Option<u32> {
        Some(self.state.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// How often etcd was restarted.
    pub fn restarts(&self) -> u32 {
        self.state.restarts.load(Ordering::SeqCst)
    }

    /// The member's settings.
    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    /// Stops etcd (SIGTERM) and its supervision.
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our child's pid; no memory is touched.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
}

/// The supervision loop; runs on its own thread for the life of the process, so the
/// parent-death signal of every etcd it forks stays armed until rk3s exits.
fn supervise(config: &MemberConfig, state: &State, started: mpsc::Sender<Result<(), EtcdError>>) {
    let mut child = match spawn(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    state.pid.store(child.id(), Ordering::SeqCst);
    let _ = started.send(Ok(()));
    let mut backoff = Duration::from_secs(1);
    loop {
        let t0 = Instant::now();
        let status = child.wait();
        state.pid.store(0, Ordering::SeqCst);
        if state.stop.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(pid_path(config));
            tracing::info!(member = %config.name, "etcd stopped");
            return;
        }
        if t0.elapsed() > HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(
            member = %config.name,
            status = ?status,
            log = %log_tail(&config.log_path, 5),
            "etcd exited; restarting in {backoff:?}"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        loop {
            if state.stop.load(Ordering::SeqCst) {
                return;
            }
            match spawn(config) {
                Ok(c) => {
                    child = c;
                    state.pid.store(child.id(), Ordering::SeqCst);
                    state.restarts.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot restart etcd; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemberConfig, MemberTls};

    fn config(dir: &Path, script: &str) -> MemberConfig {
        let bin = dir.join("fake-etcd");
        std::fs::write(&bin, format!("#!/bin/sh\n{script}\n")).expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let tls = MemberTls {
            ca_file: "ca".into(),
            server_cert_file: "s".into(),
            server_key_file: "sk".into(),
            peer_cert_file: "p".into(),
            peer_key_file: "pk".into(),
        };
        let mut c = MemberConfig::new(
            "m1",
            dir.join("db").join("etcd"),
            "127.0.0.1".parse().expect("ip"),
            tls,
        );
        c.binary = bin;
        c
    }

    fn alive(pid: u32) -> bool {
        // A zombie is not alive: read its state.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn restarts_after_a_crash_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(dir.path(), "echo started \"$@\"; exec sleep 60");
        let p = EtcdProcess::start(c.clone()).expect("start");
        let first = p.pid().expect("pid");
        assert!(alive(first));
        assert_eq!(
            std::fs::read_to_string(pid_path(&c))
                .expect("pid file")
                .trim(),
            first.to_string()
        );
        assert!(log_tail(&c.log_path, 1).contains("--initial-cluster-state new"));
        // SAFETY: kill(2) on the test's child.
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.restarts() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(p.restarts(), 1);
        let second = p.pid().expect("restarted");
        assert_ne!(first, second);
        p.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(second) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(second));
        assert!(c.data_dir.is_dir());
    }

    #[test]
    fn an_immediate_exit_is_an_error_with_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(dir.path(), "echo bad flag >&2; exit 2");
        match EtcdProcess::start(c) {
            Err(EtcdError::Exited { log_tail, .. }) => assert!(log_tail.contains("bad flag")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_missing_binary_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path(), "exit 0");
        c.binary = dir.path().join("nope");
        assert!(matches!(
            EtcdProcess::start(c),
            Err(EtcdError::Spawn { .. })
        ));
    }
}
