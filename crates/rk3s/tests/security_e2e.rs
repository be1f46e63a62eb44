//! Secure by default: the CIS Kubernetes Benchmark items that apply to one binary's
//! control plane, checked on a server started with no security flag (`--disable-agent`):
//! file and folder modes of the data dir, the kubeconfig's mode, TLS 1.2+ only on the API
//! port, no plain-HTTP port, anonymous and unauthorized requests refused, RBAC enforced,
//! Secrets encrypted at rest, the audit log on (without Secret data), no profiling.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{Conn, Creds};
use common::Cluster;
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            files_under(&p, out);
        } else if ft.is_file() {
            out.push(p);
        }
    }
}

/// CIS 1.1.x (file permissions) as they apply to rk3s's data dir: folders holding state
/// 0700, private keys and credentials 0600, certificates 0644 or stricter.
fn check_file_modes(c: &Cluster) {
    let data = c.data_dir();
    for d in [
        "",
        "server",
        "server/db",
        "server/tls",
        "server/cred",
        "server/logs",
    ] {
        assert_eq!(mode(&data.join(d)), 0o700, "{}", data.join(d).display());
    }
    let mut files = Vec::new();
    files_under(&data, &mut files);
    let mut keys = 0;
    let mut certs = 0;
    for f in &files {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        let m = mode(f);
        let secret = name.ends_with(".key")
            || name == "token"
            || name == "encryption-config.json"
            || name == "node-password"
            || name.ends_with(".log");
        if secret {
            keys += 1;
            assert_eq!(m & 0o177, 0, "{} has mode {m:o}, want 0600", f.display());
        } else if name.ends_with(".crt") || name.ends_with(".pub") {
            certs += 1;
            assert_eq!(m & 0o133, 0, "{} has mode {m:o}, want 0644", f.display());
        }
        assert_eq!(m & 0o002, 0, "{} is world-writable", f.display());
    }
    assert!(
        keys >= 5 && certs >= 3,
        "keys {keys}, certs {certs}: {files:?}"
    );
    // CIS 1.1.x for the admin kubeconfig (k3s's default --write-kubeconfig-mode 0600).
    assert_eq!(mode(&c.kubeconfig), 0o600);
}

fn openssl(port: u16, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// CIS 1.2.x (TLS): only TLS 1.2 and 1.3; a TLS 1.1 client gets an alert.
fn check_tls_versions(c: &Cluster) {
    let Some((ok11, t11)) = openssl(
        c.port,
        &[
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-servername",
            "localhost",
        ],
    ) else {
        eprintln!("no openssl: TLS versions not checked");
        return;
    };
    assert!(!ok11, "TLS 1.1 accepted:\n{t11}");
    assert!(
        t11.contains("alert") && !t11.contains("New, TLSv1.1"),
        "the server must answer a TLS 1.1 hello with an alert:\n{t11}"
    );
    for (flag, want) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (_, t) = openssl(c.port, &[flag, "-servername", "localhost"]).expect("openssl");
        assert!(
            t.contains(&format!("New, {want}")),
            "{want} not negotiated:\n{t}"
        );
    }
}

/// CIS 1.2.x (no insecure port): the API port speaks TLS only, and the server listens
/// on no other TCP port.
fn check_no_insecure_port(c: &mut Cluster) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET /api/v1/secrets HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        !text.contains("\"kind\"") && !text.starts_with("HTTP/1.1 200"),
        "plain HTTP served: {text}"
    );
    // Listening sockets of the server process: only the API port.
    let pid = c.child.as_ref().expect("child").id();
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap_or("0");
                ports.insert(u16::from_str_radix(port, 16).unwrap_or(0));
            }
        }
    }
    assert_eq!(ports, BTreeSet::from([c.port]), "listening ports");
}

/// CIS 1.2.1 (anonymous requests) and 1.2.7/1.2.8 (authorization is not AlwaysAllow;
/// RBAC): no credentials -> 401 on resources; a service account without bindings -> 403.
fn check_authn_authz(c: &Cluster) {
    let anon = Creds::anonymous(&c.kubeconfig, c.port);
    let mut conn = Conn::connect(&anon).expect("connect");
    for path in [
        "/api/v1/namespaces/default/secrets",
        "/api/v1/pods",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "/metrics",
    ] {
        let (code, _) = conn.request("GET", path, None).expect("request");
        assert!(code == 401 || code == 403, "anonymous GET {path}: {code}");
    }
    let (code, _) = conn
        .request("POST", "/api/v1/namespaces/default/configmaps", Some(b"{}"))
        .expect("request");
    assert!(code == 401 || code == 403, "anonymous POST: {code}");
    // Health checks stay open, as upstream's system:public-info-viewer.
    let (code, _) = conn.request("GET", "/healthz", None).expect("request");
    assert_eq!(code, 200);

    c.ok(&["create", "serviceaccount", "nobody"]);
    let token = c.ok(&["create", "token", "nobody"]);
    let empty = c.dir.path().join("empty-kubeconfig");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").expect("kubeconfig");
    let ca = c.data_dir().join("server/tls/server-ca.crt");
    let out = Command::new(common::kubectl_bin())
        .env("KUBECONFIG", &empty)
        .arg(format!("--server=https://127.0.0.1:{}", c.port))
        .arg(format!("--certificate-authority={}", ca.display()))
        .args(["--token", token.trim(), "get", "secrets", "-n", "default"])
        .output()
        .expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Forbidden"),
        "a service account without RBAC bindings must be refused: {err}"
    );
}

fn raw_db_contains(c: &Cluster, needle: &[u8]) -> bool {
    let dir = c.data_dir().join("server/db");
    std::fs::read_dir(&dir)
        .expect("db dir")
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
}

/// CIS 1.2.27/1.2.28 (encryption provider config): Secrets are encrypted at rest by
/// default; CIS 1.2.18-1.2.21 (audit log on, with retention): the default audit log
/// records the create at Metadata level, without the Secret's data.
fn check_secrets_and_audit(c: &Cluster) {
    const PLAIN: &str = "cis-plaintext-4d2c9e";
    c.ok(&[
        "create",
        "secret",
        "generic",
        "cis",
        &format!("--from-literal=k={PLAIN}"),
    ]);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(PLAIN);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !raw_db_contains(c, b"k8s:enc:aesgcm:v1:") {
        assert!(
            Instant::now() < deadline,
            "no encrypted value in the datastore"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!raw_db_contains(c, PLAIN.as_bytes()), "plain text at rest");
    assert!(
        !raw_db_contains(c, b64.as_bytes()),
        "base64 plain text at rest"
    );

    let audit = c.data_dir().join("server/logs/audit.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == "secrets"
                    && e["objectRef"]["namespace"] == "default"
                    && e["user"]["username"] == "system:admin"
            });
        if let Some(e) = found {
            assert!(
                !text.contains(PLAIN) && !text.contains(&b64),
                "secret data in the audit log"
            );
            assert!(
                !text.contains("\"requestURI\":\"/healthz\""),
                "health checks are not audited by default"
            );
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no audit event for the secret:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event["kind"], "Event");
    assert_eq!(event["level"], "Metadata");
    assert_eq!(event["stage"], "ResponseComplete");
    assert!(
        event["requestURI"]
            .as_str()
            .is_some_and(|u| u.starts_with("/api/v1/namespaces/default/secrets")),
        "{event}"
    );
    assert!(event.get("requestObject").is_none());
    // As upstream, the created object's name comes from the request body even at
    // Metadata level (the URL of a create names no object).
    assert_eq!(event["objectRef"]["name"], "cis", "{event}");
    assert_eq!(mode(&audit), 0o600);
}

/// CIS 1.2.17/1.3.2/1.4.1 (profiling off): no /debug/pprof, even for the admin.
fn check_no_profiling(c: &Cluster) {
    let admin = Creds::from_kubeconfig(&c.kubeconfig, c.port);
    let mut conn = Conn::connect(&admin).expect("connect");
    for path in ["/debug/pprof/", "/debug/pprof/profile", "/debug/flags/v"] {
        let (code, _) = conn.request("GET", path, None).expect("request");
        assert_eq!(code, 404, "{path}");
    }
}

#[test]
fn a_default_server_passes_the_cis_checks_that_apply() {
    let mut c = Cluster::start();
    check_secrets_and_audit(&c);
    check_file_modes(&c);
    check_tls_versions(&c);
    check_no_insecure_port(&mut c);
    check_authn_authz(&c);
    check_no_profiling(&c);
}
