//! Test harness: real etcd members (Debian's `etcd-server`, installed on first use when
//! `etcd` is not on `PATH`) on loopback with random free ports and temp data dirs.
//! Every process is killed, and its data dir removed, when its guard is dropped (also
//! when a test panics).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{EtcdConfig, EtcdStore, TlsFiles};

/// How long a member may take to answer after it was started.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// Finds `etcd` on `PATH`, installing Debian's `etcd-server` once if it is missing.
pub(crate) fn etcd_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(find_or_install) {
        Ok(path) => path.clone(),
        Err(e) => panic!("etcd is needed by these tests: {e}"),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(path) = on_path("etcd") {
        return Ok(path);
    }
    eprintln!("etcd not found: installing Debian's etcd-server");
    // Never let the package start its service: a policy-rc.d that denies it, for the
    // time of the install, unless one is already there.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").map_err(|e| format!("{e}"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{e}"))?;
    }
    let install = || {
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "etcd-server",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    let result = install().or_else(|_| {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install()
    });
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result?;
    // If a service manager started it anyway, stop it: the tests run their own.
    if on_path("systemctl").is_some() {
        let _ = run(Command::new("systemctl").args(["stop", "etcd.service"]));
        let _ = run(Command::new("systemctl").args(["disable", "etcd.service"]));
    }
    on_path("etcd").ok_or_else(|| "etcd-server installed no etcd binary".to_string())
}

/// A free loopback port, never handed out twice by this process.
fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// A temp dir for etcd's data: in memory (`/dev/shm`) when possible, so fsyncs are cheap.
fn data_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("rk3s-etcd-test-")
        .to_owned();
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder.tempdir().expect("tempdir")
}

/// TLS material for a member: server certificate and key, and the CA clients trust.
pub(crate) struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// One etcd member process; killed and its data removed on drop.
pub(crate) struct Member {
    pub name: String,
    pub client_url: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Member {
    /// Starts member `name` of a cluster described by `initial_cluster`.
    fn start(
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        token: &str,
        tls: Option<&ServerTls>,
    ) -> Member {
        let dir = data_dir();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg(token)
            .arg("--initial-cluster-state")
            .arg("new")
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(tls) = tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start etcd");
        Member {
            name: name.to_string(),
            client_url,
            child: Some(child),
            dir,
        }
    }

    /// The member's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Fails (with the log's end) if the process has exited.
    fn check_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log();
                let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                panic!(
                    "etcd member {} exited ({status}); last log lines, newest first:\n{tail}",
                    self.name
                );
            }
        }
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Connects a store to this member only, waiting until it answers.
    pub async fn store(&mut self, tls: TlsFiles) -> EtcdStore {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            self.check_running();
            let config = EtcdConfig {
                endpoints: vec![self.client_url.clone()],
                tls: tls.clone(),
                connect_timeout: Some(Duration::from_secs(1)),
            };
            match EtcdStore::connect(&config).await {
                Ok(store) => return store,
                Err(e) if Instant::now() >= deadline => {
                    panic!("etcd member {} not healthy: {e}\n{}", self.name, self.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn token() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "rk3s-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Starts a cluster of `size` members on loopback (plain HTTP unless `tls`).
pub(crate) fn start_cluster(size: usize, tls: Option<&ServerTls>) -> Vec<Member> {
    let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let token = token();
    ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            Member::start(
                &format!("m{i}"),
                *client,
                *peer,
                &initial_cluster,
                &token,
                tls,
            )
        })
        .collect()
}

/// A fresh single-member etcd and a store on it, for the conformance suite.
pub(crate) async fn single_member() -> (std::sync::Arc<dyn rk3s_store::Store>, Member) {
    let mut members = start_cluster(1, None);
    let mut member = members.remove(0);
    let store = member.store(TlsFiles::default()).await;
    (std::sync::Arc::new(store), member)
}
