//! Test harness: starts the real `rk3s server` binary on a free port with a temporary
//! data dir, and drives it with the real kubectl.

#![allow(dead_code)]

pub mod http;
pub mod node;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The kubectl used by tests (`RK3S_TEST_KUBECTL` overrides).
pub fn kubectl_bin() -> String {
    std::env::var("RK3S_TEST_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".to_string())
}

/// Older kubectl shipped beside the default one on the test machines.
pub const KUBECTL_1_27: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.27";

/// A running server.
pub struct Cluster {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
    pub started: Instant,
    pub ready_after: Duration,
    /// True when the node agent runs (no `--disable-agent`).
    pub agent: bool,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Cluster {
    /// Starts a server with a fresh data dir and waits for /readyz.
    pub fn start() -> Cluster {
        Self::start_with(&[])
    }

    /// Starts a server with extra flags.
    pub fn start_with(extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    /// Starts a server on an existing data dir (for restart tests).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Cluster {
        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let log = dir.path().join(format!("server-{port}.log"));
        let mut c = Cluster {
            child: None,
            dir,
            port,
            kubeconfig,
            log,
            started: Instant::now(),
            ready_after: Duration::ZERO,
            agent: false,
        };
        c.spawn(extra);
        c
    }

    /// Starts a server WITH its node agent on an existing data dir: its own containerd
    /// (state dir and socket under the test dir, so tests never share one).
    pub fn start_agent_in(dir: tempfile::TempDir, extra: &[&str]) -> Cluster {
        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let log = dir.path().join(format!("server-{port}.log"));
        let mut c = Cluster {
            child: None,
            dir,
            port,
            kubeconfig,
            log,
            started: Instant::now(),
            ready_after: Duration::ZERO,
            agent: true,
        };
        let state = format!(
            "--containerd-state-dir={}",
            c.containerd_state_dir().display()
        );
        let mut args: Vec<&str> = vec![state.as_str()];
        args.extend_from_slice(extra);
        c.spawn(&args);
        c
    }

    /// Starts a server with its node agent on a fresh data dir.
    pub fn start_agent(extra: &[&str]) -> Cluster {
        Self::start_agent_in(tempfile::tempdir().expect("tempdir"), extra)
    }

    /// State dir of the agent's containerd (its socket is `containerd.sock` in it).
    pub fn containerd_state_dir(&self) -> PathBuf {
        self.dir.path().join("cs")
    }

    /// An empty config file, so a machine's /etc/rk3s/config.yaml does not leak in.
    pub fn config_file(&self) -> PathBuf {
        let p = self.dir.path().join("config.yaml");
        if !p.exists() {
            std::fs::write(&p, "# test config\n").expect("write config");
        }
        p
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self, extra: &[&str]) {
        let logf = std::fs::File::create(&self.log).expect("log file");
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_rk3s"))
            .arg("server")
            .arg(format!("--config={}", self.config_file().display()))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--https-listen-port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--write-kubeconfig={}", self.kubeconfig.display()))
            .args(if self.agent {
                None
            } else {
                Some("--disable-agent")
            })
            .args(extra)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn rk3s server");
        self.child = Some(child);
        self.started = started;
        self.wait_ready(Duration::from_secs(30));
        self.ready_after = started.elapsed();
    }

    /// Polls /readyz (anonymous, as allowed) until it answers ok.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ch) = self.child.as_mut() {
                if let Ok(Some(st)) = ch.try_wait() {
                    panic!(
                        "rk3s server exited with {st}: {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            if self.kubeconfig.exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz"]);
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "rk3s server not ready after {timeout:?}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs kubectl (default binary).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&kubectl_bin(), args, None)
    }

    /// Runs a given kubectl binary, optionally with stdin.
    pub fn kubectl_with(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            if let Some(mut s) = child.stdin.take() {
                s.write_all(input.as_bytes()).expect("write stdin");
            }
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(&kubectl_bin(), args, None)
    }

    /// Like [`Cluster::ok`] with a binary and stdin.
    pub fn ok_with(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(bin, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(&kubectl_bin(), args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {} unexpectedly succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// Sends SIGKILL and waits.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops with SIGTERM.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill_term(c.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same data dir and port.
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        self.spawn(extra);
    }

    /// Restarts after a SIGKILL.
    pub fn restart_after_kill(&mut self, extra: &[&str]) {
        self.kill9();
        self.spawn(extra);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn unsafe_kill_term(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("RK3S_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.dir.path().display());
            let d = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = d.keep();
        }
    }
}

/// Simulated nodes (`rk3s sim-nodes`) as a child process, killed on drop.
pub struct SimNodes {
    child: Child,
}

impl SimNodes {
    /// Starts `count` nodes named `<prefix>-<i>` against the cluster.
    pub fn start(c: &Cluster, prefix: &str, count: u32) -> SimNodes {
        let log =
            std::fs::File::create(c.path().join(format!("sim-{prefix}.log"))).expect("sim log");
        let child = Command::new(env!("CARGO_BIN_EXE_rk3s"))
            .args(["sim-nodes", "--kubeconfig"])
            .arg(&c.kubeconfig)
            .args([
                "--count",
                &count.to_string(),
                "--prefix",
                prefix,
                "--lease-interval-ms",
                "500",
                "--run-for-ms",
                "300",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rk3s sim-nodes");
        SimNodes { child }
    }

    /// Stops the nodes (their Leases are no longer renewed).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
