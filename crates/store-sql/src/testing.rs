//! Test harness (feature `testing`): throw-away PostgreSQL and MariaDB servers on
//! loopback for this crate's tests and for end-to-end tests of other crates.
//!
//! Each server lives in a temporary directory, listens on a free 127.0.0.1 port, and is
//! stopped (then killed, and its directory removed) when its guard drops, also when a
//! test fails; the kernel kills it if the test process dies (`PR_SET_PDEATHSIG`). Missing
//! binaries are installed from Debian's packages with services kept from starting.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a server may take to stop before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

static APT: Mutex<()> = Mutex::new(());
/// Servers shared by the tests of one test binary, stopped at exit.
static SHARED: Mutex<Vec<Server>> = Mutex::new(Vec::new());
static SHARED_POSTGRES: OnceLock<Shared> = OnceLock::new();
static SHARED_MARIADB: OnceLock<Shared> = OnceLock::new();

/// What tests need to know of a shared server.
pub struct Shared {
    /// The endpoint without database.
    pub base: String,
    /// The CA that signed the server's certificate (for 127.0.0.1 and localhost).
    pub ca_file: PathBuf,
    /// A CA that signed nothing the server has.
    pub wrong_ca_file: PathBuf,
}
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// The base endpoint of a PostgreSQL server shared by this test binary.
pub fn shared_postgres() -> &'static Shared {
    SHARED_POSTGRES.get_or_init(|| keep(start_postgres))
}

/// The base endpoint of a MariaDB server shared by this test binary.
pub fn shared_mariadb() -> &'static Shared {
    SHARED_MARIADB.get_or_init(|| keep(start_mariadb))
}

/// A database name not used before in this process.
pub fn fresh_database(prefix: &str) -> String {
    format!("{prefix}_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed))
}

/// Starts a server from a thread that lives as long as the process (the server dies with
/// the thread that started it) and stops it when the process exits.
fn keep(start: fn() -> Server) -> Shared {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let server = start();
        if tx.send(server).is_ok() {
            loop {
                std::thread::park();
            }
        }
    });
    let server = rx
        .recv()
        .expect("the shared server failed to start (see above)");
    let info = Shared {
        base: server.base.clone(),
        ca_file: server.certs.ca.clone(),
        wrong_ca_file: server.certs.wrong_ca.clone(),
    };
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if shared.is_empty() {
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(stop_shared) };
    }
    shared.push(server);
    info
}

extern "C" fn stop_shared() {
    let servers: Vec<Server> = match SHARED.lock() {
        Ok(mut shared) => shared.drain(..).collect(),
        Err(e) => e.into_inner().drain(..).collect(),
    };
    drop(servers);
}

/// A running server; stopped on drop.
pub struct Server {
    child: Option<Child>,
    stop_signal: i32,
    /// The endpoint without database, e.g. `postgres://postgres@127.0.0.1:5432`.
    pub base: String,
    /// The server's log file.
    pub log: PathBuf,
    /// Its TLS files.
    pub certs: Certs,
    spawn: Box<dyn Fn() -> Child + Send>,
    ready: Box<dyn Fn() -> bool + Send>,
    ready_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// An endpoint for `database` on this server, in the form `style` picks.
    pub fn endpoint(&self, database: &str) -> String {
        format!("{}/{database}", self.base)
    }

    /// Stops the server and starts it again on the same data and port.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = (self.spawn)();
        wait_ready(&mut child, &self.ready_log, || (self.ready)());
        self.child = Some(child);
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, self.stop_signal) };
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TLS files of a test server.
pub struct Certs {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// Another CA's certificate.
    pub wrong_ca: PathBuf,
    /// The server's certificate, for 127.0.0.1 and localhost.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
}

/// Writes a CA, a server certificate it signs and an unrelated CA into `dir` (owned by
/// `owner`, the key readable by the owner only, as PostgreSQL demands).
fn write_certs(dir: &Path, owner: Option<(u32, u32)>) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let make_ca = |name: &str| {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        (params, key, cert)
    };
    let (ca_params, ca_key, ca_cert) = make_ca("rk3s-store-sql test CA");
    let (_, _, wrong_cert) = make_ca("rk3s-store-sql wrong CA");
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    let certs = Certs {
        ca: dir.join("ca.pem"),
        wrong_ca: dir.join("wrong-ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    std::fs::write(&certs.ca, ca_cert.pem()).expect("writing ca.pem");
    std::fs::write(&certs.wrong_ca, wrong_cert.pem()).expect("writing wrong-ca.pem");
    std::fs::write(&certs.cert, server_cert.pem()).expect("writing server.pem");
    std::fs::write(&certs.key, server_key.serialize_pem()).expect("writing server-key.pem");
    std::fs::set_permissions(
        &certs.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod key");
    if let Some((uid, gid)) = owner {
        for file in [&certs.ca, &certs.wrong_ca, &certs.cert, &certs.key] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("chown");
        }
    }
    certs
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address").port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs `packages` unless `binary` exists, without letting the packages start their
/// services (a temporary policy-rc.d that forbids it, if none is in place).
fn ensure_installed(binary: &Path, packages: &[&str], services: &[&str]) {
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    if binary.exists() {
        return;
    }
    assert!(
        is_root(),
        "{} is missing; install {packages:?} (needs root)",
        binary.display()
    );
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").expect("writing policy-rc.d");
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod policy-rc.d");
    }
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "-o",
                "DPkg::Lock::Timeout=300",
            ])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut ok = install();
    if !ok {
        let _ = Command::new("apt-get")
            .args(["update", "-o", "DPkg::Lock::Timeout=300"])
            .status();
        ok = install();
    }
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    // Whatever the policy was, leave the packaged services stopped and disabled: the
    // tests run their own servers.
    for service in services {
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(Command::new("service").args([service, "stop"]));
        quiet(Command::new("systemctl").args(["disable", "--now", service]));
    }
    assert!(ok, "apt-get install {packages:?} failed");
    assert!(binary.exists(), "{} still missing", binary.display());
}

/// The PostgreSQL binaries' directory (the newest installed major version).
fn postgres_bin() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let newest = |base: &Path| {
        let mut versions: Vec<u32> = std::fs::read_dir(base)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|v| base.join(v.to_string()).join("bin/postgres").exists())
            .collect();
        versions.sort();
        versions
            .last()
            .map(|v| base.join(v.to_string()).join("bin"))
    };
    if let Some(bin) = newest(base) {
        return bin;
    }
    ensure_installed(
        &base.join("15/bin/postgres"),
        &["postgresql-15"],
        &["postgresql"],
    );
    newest(base).expect("postgres binaries after install")
}

/// (uid, gid) of `user` from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == user)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// A command that dies with the test process (and runs as `ids` if given).
fn command(program: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).expect("creating a log file"))
}

/// Waits until `ready()` or the deadline; panics with the log if the server exits or
/// does not become ready.
fn wait_ready(child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if ready() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "server not ready after {READY_DEADLINE:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts PostgreSQL (trust authentication, user `postgres`) on a free loopback port.
pub fn start_postgres() -> Server {
    let bin = postgres_bin();
    let dir = tempfile::Builder::new()
        .prefix("rk3s-store-sql-pg")
        .tempdir()
        .expect("temp dir");
    // PostgreSQL refuses to run as root: run it as the `postgres` system user.
    let ids = if is_root() {
        let ids = user_ids("postgres").expect("the postgres system user");
        std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1)).expect("chown");
        Some(ids)
    } else {
        None
    };
    let data = dir.path().join("data");
    let log = dir.path().join("postgres.log");
    let certs = write_certs(dir.path(), ids);
    let status = command(&bin.join("initdb"), ids)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdout(log_file(&dir.path().join("initdb.log")))
        .stderr(Stdio::null())
        .current_dir(dir.path())
        .status()
        .expect("running initdb");
    assert!(
        status.success(),
        "initdb failed:\n{}",
        std::fs::read_to_string(dir.path().join("initdb.log")).unwrap_or_default()
    );
    let port = free_port();
    let (postgres, dir_path, err_log) = (
        bin.join("postgres"),
        dir.path().to_path_buf(),
        dir.path().join("postgres.err"),
    );
    let (cert, key, out_log) = (certs.cert.clone(), certs.key.clone(), log.clone());
    let spawn = move || {
        command(&postgres, ids)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&dir_path)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
                "-c",
                "ssl=on",
            ])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .stdout(log_file(&out_log))
            .stderr(log_file(&err_log))
            .current_dir(&dir_path)
            .spawn()
            .expect("starting postgres")
    };
    let isready = bin.join("pg_isready");
    let ready = move || {
        Command::new(&isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let ready_log = dir.path().join("postgres.err");
    let mut child = spawn();
    wait_ready(&mut child, &ready_log, &ready);
    Server {
        spawn: Box::new(spawn),
        ready: Box::new(ready),
        ready_log,
        child: Some(child),
        stop_signal: libc::SIGINT, // fast shutdown
        base: format!("postgres://postgres@127.0.0.1:{port}"),
        log,
        certs,
        _dir: dir,
    }
}

/// Starts MariaDB (user `root`, no password) on a free loopback port.
pub fn start_mariadb() -> Server {
    let mariadbd = Path::new("/usr/sbin/mariadbd");
    ensure_installed(mariadbd, &["mariadb-server"], &["mariadb"]);
    let dir = tempfile::Builder::new()
        .prefix("rk3s-store-sql-my")
        .tempdir()
        .expect("temp dir");
    let data = dir.path().join("data");
    let log = dir.path().join("mariadb.log");
    let certs = write_certs(dir.path(), None);
    let user = if is_root() {
        "root".to_string()
    } else {
        std::env::var("USER").unwrap_or_else(|_| "nobody".into())
    };
    let status = command(Path::new("mariadb-install-db"), None)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--user={user}"))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .stdout(log_file(&dir.path().join("install.log")))
        .stderr(Stdio::null())
        .current_dir(dir.path())
        .status()
        .expect("running mariadb-install-db");
    assert!(
        status.success(),
        "mariadb-install-db failed:\n{}",
        std::fs::read_to_string(dir.path().join("install.log")).unwrap_or_default()
    );
    let port = free_port();
    let (dir_path, certs_copy, out_log) = (
        dir.path().to_path_buf(),
        (certs.ca.clone(), certs.cert.clone(), certs.key.clone()),
        log.clone(),
    );
    let spawn_user = user.clone();
    let spawn = move || {
        let (ca, cert, key) = &certs_copy;
        let user = &spawn_user;
        let dir = &dir_path;
        let log = &out_log;
        command(mariadbd, None)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--ssl-ca={}", ca.display()))
            .arg(format!("--ssl-cert={}", cert.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .arg(format!("--user={user}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("mariadb.err")))
            .current_dir(dir)
            .spawn()
            .expect("starting mariadbd")
    };
    let ready = move || {
        Command::new("mariadb-admin")
            .args(["--no-defaults", "-h", "127.0.0.1", "-P", &port.to_string()])
            .args(["-u", "root", "--connect-timeout=2", "ping"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut child = spawn();
    wait_ready(&mut child, &log, &ready);
    Server {
        spawn: Box::new(spawn),
        ready: Box::new(ready),
        ready_log: log.clone(),
        child: Some(child),
        stop_signal: libc::SIGTERM,
        base: format!("mysql://root@tcp(127.0.0.1:{port})"),
        log,
        certs,
        _dir: dir,
    }
}
