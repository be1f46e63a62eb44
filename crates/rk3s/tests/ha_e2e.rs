//! Several `rk3s server` processes on one external datastore (issue 15, item 5), with
//! real servers: PostgreSQL and MariaDB (`rk3s_store_sql::testing`, one scenario for
//! both) and a 3-member etcd cluster
//! (Debian's etcd, started here). Every server runs with `--disable-agent`, the same
//! `--token`, its own data dir, port and advertise address (127.0.0.1, 127.0.0.2).
//!
//! Checked: one cluster CA, service-account key and secrets-encryption key for all
//! (bootstrap data in the datastore: a kubeconfig of one server works against the other,
//! a Secret written through one reads through the other), writes through one server
//! seen by gets, lists and watches through the other, the `kubernetes` endpoints list
//! both servers, controllers work wherever their Lease is held, 100 concurrent Service
//! creates through both servers get distinct ClusterIPs and NodePorts, and after `kill
//! -9` of the controller leader the other takes the Lease over, a Deployment scaled
//! during the failover converges and no acknowledged write is lost.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, kubectl_bin, wait_for};

const TOKEN: &str = "ha-e2e-shared-secret";

/// One `rk3s server` process; killed (and its data dir removed) on drop.
struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: String,
    port: u16,
    kubeconfig: PathBuf,
    log: PathBuf,
    endpoint: String,
    token: String,
}

impl Server {
    /// Spawns a server on `addr` (not waiting for it).
    fn spawn(addr: &str, endpoint: &str) -> Server {
        Self::spawn_with_token(addr, endpoint, TOKEN)
    }

    /// Spawns a server with its own `--token`.
    fn spawn_with_token(addr: &str, endpoint: &str, token: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut s = Server {
            child: None,
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            log: dir.path().join("server.log"),
            dir,
            addr: addr.to_string(),
            port,
            endpoint: endpoint.to_string(),
            token: token.to_string(),
        };
        s.start();
        s
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(&mut self) {
        let config = self.dir.path().join("config.yaml");
        std::fs::write(&config, "# test config\n").expect("config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_rk3s"))
            .arg("server")
            .arg(format!("--config={}", config.display()))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--https-listen-port={}", self.port))
            .arg(format!("--bind-address={}", self.addr))
            .arg(format!("--advertise-address={}", self.addr))
            .arg(format!("--write-kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--datastore-endpoint={}", self.endpoint))
            .arg(format!("--token={}", self.token))
            .args(["--disable-agent", "--etcd-disable-snapshots"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rk3s server");
        self.child = Some(child);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `/readyz` through this server's own kubeconfig.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("rk3s server exited with {status}:\n{}", self.log_text());
            }
            if self.kubeconfig.exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz"], None);
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "rk3s server {} not ready after {timeout:?}:\n{}",
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("https://{}:{}", self.addr, self.port)
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl(&self.kubeconfig, self.dir.path(), args, stdin)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None);
        assert!(
            out.status.success(),
            "kubectl {} via {} failed: {}",
            args.join(" "),
            self.addr,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn apply(&self, yaml: &str) {
        let out = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply via {} failed: {}",
            self.addr,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The identity the server holds Leases under (as `leader_identity` in server.rs).
    fn leader_identity(&self) -> String {
        let dir = std::fs::canonicalize(self.data_dir()).expect("data dir");
        let digest =
            ring::digest::digest(&ring::digest::SHA256, dir.as_os_str().as_encoded_bytes());
        let hex: String = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        format!("{}_{hex}", host.trim())
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last log lines of server {} (newest first):\n{}",
                self.addr,
                tail.join("\n")
            );
        }
    }
}

fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(kubectl_bin())
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

/// Starts two servers at once on `endpoint` and waits for both.
fn two_servers(endpoint: &str) -> (Server, Server) {
    let mut a = Server::spawn("127.0.0.1", endpoint);
    let mut b = Server::spawn("127.0.0.2", endpoint);
    a.wait_ready(Duration::from_secs(90));
    b.wait_ready(Duration::from_secs(90));
    (a, b)
}

/// One CA, SA key and encryption key for both; writes through one, reads through the other.
fn shared_state_and_reads_across(a: &Server, b: &Server) {
    // A's admin kubeconfig against B's URL: B's serving certificate and A's client
    // certificate come from one CA.
    let out = kubectl(
        &a.kubeconfig,
        a.dir.path(),
        &["--server", &b.url(), "get", "--raw", "/readyz"],
        None,
    );
    assert!(
        out.status.success(),
        "A's kubeconfig against B: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |s: &Server, p: &str| std::fs::read(s.data_dir().join("server").join(p)).unwrap();
    for file in [
        "tls/server-ca.crt",
        "tls/service.key",
        "cred/encryption-config.json",
        "token",
    ] {
        assert_eq!(
            read(a, file),
            read(b, file),
            "{file} differs between servers"
        );
    }
    a.ok(&["create", "configmap", "via-a", "--from-literal=k=v1"]);
    assert_eq!(
        b.ok(&["get", "configmap", "via-a", "-o", "jsonpath={.data.k}"]),
        "v1"
    );
    // A Secret written through A, encrypted at rest, reads through B.
    a.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=hunter2",
    ]);
    assert_eq!(
        b.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]),
        "aHVudGVyMg=="
    );
    // A service-account token issued through A is accepted by B.
    a.ok(&["create", "serviceaccount", "robot"]);
    a.ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=default:robot",
    ]);
    let token = a.ok(&["create", "token", "robot"]);
    // Only the token (no client certificate, which would win) against B.
    let empty = b.dir.path().join("empty-kubeconfig");
    std::fs::write(&empty, "").expect("empty kubeconfig");
    let ca = b.data_dir().join("server/tls/server-ca.crt");
    let with_token = |args: &[&str]| {
        let mut all = vec![
            "--server".to_string(),
            b.url(),
            format!("--certificate-authority={}", ca.display()),
            format!("--token={token}"),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        kubectl(&empty, b.dir.path(), &all, None)
    };
    let out = with_token(&["get", "configmap", "via-a", "-o", "name"]);
    assert!(
        out.status.success(),
        "B rejects A's service-account token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_token(&["create", "configmap", "by-robot"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("system:serviceaccount:default:robot"),
        "the token's user is the service account: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A watch through B sees a create through A.
    let watch_out = b.dir.path().join("watch.out");
    let mut watch = Command::new(kubectl_bin())
        .env("KUBECONFIG", &b.kubeconfig)
        .env("HOME", b.dir.path())
        .args(["get", "configmaps", "--watch-only", "-o", "name"])
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    std::thread::sleep(Duration::from_millis(1500));
    a.ok(&["create", "configmap", "watched", "--from-literal=k=w"]);
    let seen = wait_for(
        "B's watch to see A's create",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&watch_out).unwrap_or_default();
            text.contains("configmap/watched").then_some(true)
        },
    );
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen);
}

fn lease_holder(s: &Server, name: &str) -> String {
    let out = s.kubectl(
        &[
            "get",
            "lease",
            name,
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pod_count(s: &Server, app: &str) -> usize {
    let out = s.kubectl(
        &["get", "pods", "-l", &format!("app={app}"), "-o", "name"],
        None,
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - name: c\n        image: registry.k8s.io/pause:3.10\n"
    )
}

/// The `default/kubernetes` endpoints list both servers.
fn endpoints_list_both(s: &Server) {
    wait_for(
        "the kubernetes endpoints to list both servers",
        Duration::from_secs(30),
        || {
            let ips = s.ok(&[
                "get",
                "endpoints",
                "kubernetes",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ]);
            (ips.split_whitespace().collect::<BTreeSet<_>>()
                == BTreeSet::from(["127.0.0.1", "127.0.0.2"]))
            .then_some(())
        },
    );
}

/// 100 Services created at once, half through each server, half NodePort: every
/// ClusterIP and every NodePort distinct.
fn concurrent_service_allocation(a: &Server, b: &Server) {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..10 {
            let server = if worker % 2 == 0 { a } else { b };
            scope.spawn(move || {
                for i in 0..10 {
                    let n = worker * 10 + i;
                    let kind = if n % 2 == 0 { "clusterip" } else { "nodeport" };
                    let name = format!("svc-{n}");
                    server.ok(&["create", "service", kind, &name, "--tcp=80:8080"]);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let lines = a.ok(&[
        "get",
        "services",
        "-l",
        "app",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.clusterIP} {.spec.ports[0].nodePort}{\"\\n\"}{end}",
    ]);
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut services = 0;
    for line in lines.lines().filter(|l| l.starts_with("svc-")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        services += 1;
        assert!(ips.insert(fields[1].to_string()), "ClusterIP twice: {line}");
        if let Some(port) = fields.get(2) {
            assert!(ports.insert(port.to_string()), "NodePort twice: {line}");
        }
    }
    assert_eq!(services, 100, "{lines}");
    assert_eq!(ips.len(), 100);
    assert_eq!(ports.len(), 50, "one NodePort per NodePort Service");
    // Through B the same.
    let via_b = b.ok(&[
        "get",
        "services",
        "-o",
        "jsonpath={.items[*].spec.clusterIP}",
    ]);
    let b_ips: BTreeSet<String> = via_b.split_whitespace().map(String::from).collect();
    assert!(ips.is_subset(&b_ips));
    eprintln!("100 concurrent Service creates through two servers: {elapsed:?}");
}

#[test]
fn two_servers_on_postgres() {
    let pg = rk3s_store_sql::testing::shared_postgres();
    let endpoint = format!(
        "{}/{}?sslmode=disable",
        pg.base,
        rk3s_store_sql::testing::fresh_database("rk3s_ha")
    );
    two_servers_on_sql(&endpoint);
}

#[test]
fn two_servers_on_mariadb() {
    let my = rk3s_store_sql::testing::shared_mariadb();
    let endpoint = format!(
        "{}/{}",
        my.base,
        rk3s_store_sql::testing::fresh_database("rk3s_ha")
    );
    two_servers_on_sql(&endpoint);
}

/// The whole two-server scenario on one SQL datastore (PostgreSQL or MySQL/MariaDB):
/// shared state, reads across, concurrent allocation, `kill -9` of the controller
/// leader with a Deployment scaled during the failover, restart, a stranger refused.
fn two_servers_on_sql(endpoint: &str) {
    let test_started = Instant::now();
    let endpoint = endpoint.to_string();
    let (mut a, mut b) = two_servers(&endpoint);
    eprintln!("two servers ready after {:?}", test_started.elapsed());
    shared_state_and_reads_across(&a, &b);
    endpoints_list_both(&b);

    // A Deployment created through A gets its ReplicaSet and pods, seen through B,
    // whichever server holds the controller Lease.
    a.apply(&deployment("web", 2));
    wait_for("web's 2 pods via B", Duration::from_secs(60), || {
        (pod_count(&b, "web") == 2).then_some(())
    });
    assert!(!b
        .ok(&["get", "replicasets", "-l", "app=web", "-o", "name"])
        .is_empty());

    concurrent_service_allocation(&a, &b);

    // Acknowledged writes through both servers before the kill.
    for i in 0..40 {
        let via = if i % 2 == 0 { &a } else { &b };
        via.ok(&[
            "create",
            "configmap",
            &format!("pre-{i}"),
            "--from-literal=i=x",
        ]);
    }
    let holder = wait_for("a controller leader", Duration::from_secs(30), || {
        let h = lease_holder(&a, "kube-controller-manager");
        (!h.is_empty()).then_some(h)
    });
    let (ida, idb) = (a.leader_identity(), b.leader_identity());
    assert_ne!(ida, idb);
    assert!(
        holder == ida || holder == idb,
        "holder {holder} is neither server"
    );
    let (leader, survivor, survivor_id) = if holder == ida {
        (&mut a, &b, idb)
    } else {
        (&mut b, &a, ida)
    };
    eprintln!("kill -9 of the controller leader {}", leader.addr);
    leader.kill9();
    let killed = Instant::now();
    // Scaled during the failover, through the survivor.
    survivor.ok(&["scale", "deployment", "web", "--replicas=4"]);
    let failover = wait_for(
        "the survivor to take the controller Lease",
        Duration::from_secs(40),
        || {
            (lease_holder(survivor, "kube-controller-manager") == survivor_id)
                .then(|| killed.elapsed())
        },
    );
    eprintln!("controller Lease taken over {failover:?} after kill -9");
    assert!(
        failover < Duration::from_secs(25),
        "failover took {failover:?}"
    );
    wait_for("web to converge to 4 pods", Duration::from_secs(60), || {
        let ready = survivor.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.replicas}",
        ]);
        (pod_count(survivor, "web") == 4 && ready == "4").then_some(())
    });
    let converged = killed.elapsed();
    let names = survivor.ok(&["get", "configmaps", "-o", "name"]);
    for i in 0..40 {
        assert!(
            names.lines().any(|l| l == format!("configmap/pre-{i}")),
            "acknowledged write pre-{i} lost"
        );
    }
    assert_eq!(
        survivor.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]),
        "aHVudGVyMg=="
    );
    eprintln!("Deployment converged {converged:?} after the kill");
    // The killed server restarts on its data dir and reads everything again.
    leader.start();
    leader.wait_ready(Duration::from_secs(60));
    assert_eq!(
        leader.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]),
        "aHVudGVyMg=="
    );
    assert_eq!(
        leader.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "4"
    );
    // A server with another token is refused with a clear error.
    let mut stranger = Server::spawn_with_token("127.0.0.3", &endpoint, "another-token");
    let status = wait_for(
        "the wrong-token server to exit",
        Duration::from_secs(30),
        || {
            stranger
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
        },
    );
    assert!(!status.success());
    let log = stranger.log_text();
    assert!(
        log.contains("for a different token") && log.contains("--token"),
        "{log}"
    );
    eprintln!("test took {:?}", test_started.elapsed());
}

/// Runs `rk3s secrets-encrypt <cmd>` on `s`'s data dir and datastore.
fn secrets_encrypt(s: &Server, cmd: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["secrets-encrypt", cmd])
        .arg(format!("--data-dir={}", s.data_dir().display()))
        .arg(format!("--datastore-endpoint={}", s.endpoint))
        .output()
        .expect("rk3s secrets-encrypt");
    assert!(
        out.status.success(),
        "secrets-encrypt {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The name of the key the stored value of Secret `default/<name>` is encrypted with.
fn stored_key_name(endpoint: &str, name: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use rk3s_store::Store;
        let store = rk3s_store_sql::SqlStore::connect(endpoint).await.unwrap();
        let kv = store
            .get(&format!("/registry/core/secrets/default/{name}"))
            .await
            .unwrap()
            .expect("stored secret");
        let text = String::from_utf8_lossy(&kv.value).to_string();
        let rest = text
            .strip_prefix("k8s:enc:aesgcm:v1:")
            .unwrap_or_else(|| panic!("secret {name} not encrypted: {text:.40}"));
        rest.split(':').next().unwrap().to_string()
    })
}

fn restart(s: &mut Server) {
    s.kill9();
    s.start();
    s.wait_ready(Duration::from_secs(60));
}

/// A secrets-encryption key prepared and rotated with `rk3s secrets-encrypt` on server
/// A reaches the running server B through the bootstrap data, without a restart: a
/// Secret written through B afterwards is encrypted with the new key and reads through
/// both, `reencrypt` moves the old Secrets to the new key, and a restart keeps it all.
#[test]
fn secrets_key_rotation_reaches_the_other_server() {
    let pg = rk3s_store_sql::testing::shared_postgres();
    let endpoint = format!(
        "{}/{}?sslmode=disable",
        pg.base,
        rk3s_store_sql::testing::fresh_database("rk3s_rot")
    );
    let (a, mut b) = two_servers(&endpoint);
    a.ok(&[
        "create",
        "secret",
        "generic",
        "old",
        "--from-literal=k=before",
    ]);
    let first = stored_key_name(&endpoint, "old");
    let enc = |s: &Server| {
        std::fs::read_to_string(s.data_dir().join("server/cred/encryption-config.json")).unwrap()
    };
    // B writes its file once the new configuration is in effect.
    let b_follows = |b: &Server, what: &str| {
        let want = enc(&a);
        wait_for(what, Duration::from_secs(20), || {
            (enc(b) == want).then_some(())
        });
    };
    // prepare on A: B takes the new (decrypt-only) key while running.
    let out = secrets_encrypt(&a, "prepare");
    assert!(out.contains("prepared key"), "{out}");
    b_follows(&b, "B to take the prepared key");
    // rotate on A: new writes through B use the new key.
    let out = secrets_encrypt(&a, "rotate");
    let new = out
        .lines()
        .find_map(|l| l.strip_prefix("rotated to key "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_string();
    assert_ne!(new, first);
    b_follows(&b, "B to take the rotation");
    b.ok(&[
        "create",
        "secret",
        "generic",
        "new",
        "--from-literal=k=after",
    ]);
    assert_eq!(stored_key_name(&endpoint, "new"), new);
    assert_eq!(stored_key_name(&endpoint, "old"), first);
    let read_both = |a: &Server, b: &Server| {
        for s in [a, b] {
            assert_eq!(
                s.ok(&["get", "secret", "new", "-o", "jsonpath={.data.k}"]),
                "YWZ0ZXI="
            );
            assert_eq!(
                s.ok(&["get", "secret", "old", "-o", "jsonpath={.data.k}"]),
                "YmVmb3Jl"
            );
        }
    };
    read_both(&a, &b);
    // reencrypt: the old Secret moves to the new key, still readable through both.
    let out = secrets_encrypt(&b, "reencrypt");
    assert!(out.contains("re-encrypted"), "{out}");
    assert_eq!(stored_key_name(&endpoint, "old"), new);
    let status = secrets_encrypt(&b, "status");
    assert!(
        status.contains(&format!("Active Key Type: AES-GCM ({new})")),
        "{status}"
    );
    read_both(&a, &b);
    // A restart reads the same configuration from the bootstrap data.
    restart(&mut b);
    assert_eq!(enc(&a), enc(&b));
    read_both(&a, &b);
    b.ok(&["create", "secret", "generic", "later", "--from-literal=k=x"]);
    assert_eq!(stored_key_name(&endpoint, "later"), new);
}

/// A 3-member etcd cluster on loopback, killed (data removed) on drop.
struct Etcd {
    members: Vec<(Child, tempfile::TempDir)>,
    endpoints: String,
}

impl Etcd {
    fn start() -> Etcd {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let cluster = cluster.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix("rk3s-ha-etcd-")
                .tempdir_in(if Path::new("/dev/shm").is_dir() {
                    "/dev/shm"
                } else {
                    "/tmp"
                })
                .expect("etcd dir");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
            let child = Command::new("etcd")
                .arg(format!("--name=m{i}"))
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={cluster}"))
                .args([
                    "--initial-cluster-token=rk3s-ha-e2e",
                    "--initial-cluster-state=new",
                    "--logger=zap",
                    "--log-outputs=stderr",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (Debian's etcd-server) on PATH");
            members.push((child, dir));
        }
        let endpoints = ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        Etcd { members, endpoints }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for (child, dir) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let mut log = String::new();
                if let Ok(mut f) = std::fs::File::open(dir.path().join("etcd.log")) {
                    let _ = f.read_to_string(&mut log);
                }
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                eprintln!("--- etcd member log (newest first):\n{}", tail.join("\n"));
            }
        }
    }
}

#[test]
fn two_servers_on_etcd_cluster() {
    let test_started = Instant::now();
    let etcd = Etcd::start();
    let (mut a, b) = two_servers(&etcd.endpoints);
    shared_state_and_reads_across(&a, &b);
    endpoints_list_both(&a);
    a.ok(&["create", "configmap", "before-kill"]);
    a.kill9();
    // B keeps serving: reads, writes, and controllers (it takes the Lease if A held it).
    assert_eq!(
        b.ok(&["get", "configmap", "before-kill", "-o", "name"]),
        "configmap/before-kill"
    );
    assert_eq!(
        b.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]),
        "aHVudGVyMg=="
    );
    b.apply(&deployment("after", 2));
    wait_for("after's 2 pods via B", Duration::from_secs(60), || {
        (pod_count(&b, "after") == 2).then_some(())
    });
    eprintln!(
        "etcd: B served alone after kill -9 of A; test took {:?}",
        test_started.elapsed()
    );
}
