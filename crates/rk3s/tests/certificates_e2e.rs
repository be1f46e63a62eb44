//! Certificates (issue 15, item 8): with short-lived test certificates the running server
//! renews its serving certificate and the admin kubeconfig without a restart, and
//! `rk3s certificate check` lists every certificate with its expiry; `rk3s certificate
//! rotate-ca` installs a cross-signed CA that clients of the old CA and of the new root
//! both trust after the restart (an unrelated CA is refused without `--force`).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, Cluster};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The DER of the certificate the server presents now (verified against the cluster CA).
fn served_certificate(c: &Cluster) -> Vec<u8> {
    let ca = std::fs::read(c.data_dir().join("server/tls/server-ca.crt")).expect("ca");
    handshake_trusting(c, &ca).expect("handshake")
}

/// Connects trusting only the first certificate of `root_pem`; returns the served leaf.
fn handshake_trusting(c: &Cluster, root_pem: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem).expect("ca pem"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    Ok(tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a served certificate")
        .to_vec())
}

fn rk3s(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(args)
        .output()
        .expect("run rk3s")
}

#[test]
fn rotate_ca_keeps_old_and_new_trust() {
    let mut c = Cluster::start();
    let data = c.data_dir();
    let data_flag = format!("--data-dir={}", data.display());
    let old_ca = std::fs::read_to_string(data.join("server/tls/server-ca.crt")).expect("ca");
    let old_token = std::fs::read_to_string(data.join("server/token")).expect("token");
    let old_kubeconfig = c.path().join("old-admin.yaml");
    std::fs::copy(&c.kubeconfig, &old_kubeconfig).expect("copy kubeconfig");

    // an unrelated CA is refused without --force, and nothing changes
    let unrelated = c.path().join("unrelated");
    std::fs::create_dir_all(&unrelated).expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("ca");
    std::fs::write(unrelated.join("server-ca.crt"), cert.pem()).expect("write");
    std::fs::write(unrelated.join("server-ca.key"), key.serialize_pem()).expect("write");
    let path_flag = format!("--path={}", unrelated.display());
    let out = rk3s(&["certificate", "rotate-ca", &path_flag, &data_flag]);
    assert!(!out.status.success(), "refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cross-signed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(data.join("server/tls/server-ca.crt")).expect("ca"),
        old_ca
    );

    // a CA cross-signed by the current one (generated) is installed for the next start
    let staged = c.path().join("rotate-ca");
    let path_flag = format!("--path={}", staged.display());
    let out = rk3s(&[
        "certificate",
        "rotate-ca",
        "--generate",
        &path_flag,
        &data_flag,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cross-signed by the old CA"), "{text}");
    let new_ca = std::fs::read_to_string(data.join("server/tls/server-ca.crt")).expect("ca");
    assert!(new_ca.ends_with(&old_ca), "the bundle keeps the old CA");
    c.restart(&[]);

    // clients that trust only the old CA, or only the new root, trust the server
    let new_root = new_ca
        .split_inclusive("-----END CERTIFICATE-----\n")
        .nth(1)
        .expect("the new root");
    handshake_trusting(&c, old_ca.as_bytes()).expect("trusting the old CA only");
    handshake_trusting(&c, new_root.as_bytes()).expect("trusting the new root only");
    let other = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("ca");
    assert!(handshake_trusting(&c, other.pem().as_bytes()).is_err());
    // the new kubeconfig (new CA, new admin certificate) and a copy of the old one (old
    // CA, the old CA's admin certificate) both work
    assert!(c
        .ok(&["get", "namespace", "default", "-o", "name"])
        .contains("namespace/default"));
    let old = format!("--kubeconfig={}", old_kubeconfig.display());
    assert!(c
        .ok(&[&old, "get", "namespace", "default", "-o", "name"])
        .contains("namespace/default"));
    // the token names the new CA
    let token = std::fs::read_to_string(data.join("server/token")).expect("token");
    assert_ne!(token, old_token);
    assert!(
        text.contains(token.trim()),
        "the command printed it: {text}"
    );
}

#[test]
fn certificates_are_renewed_while_running() {
    let c = Cluster::start_with(&[
        "--leaf-cert-validity=60s",
        "--cert-renew-before=50s",
        "--cert-check-interval=1s",
    ]);
    let first = served_certificate(&c);
    let kubeconfig = std::fs::read_to_string(&c.kubeconfig).expect("kubeconfig");

    // `certificate check` lists the CA and the leaves, the leaves inside the warning window.
    let out = Command::new(env!("CARGO_BIN_EXE_rk3s"))
        .args(["certificate", "check"])
        .arg(format!("--data-dir={}", c.data_dir().display()))
        .output()
        .expect("certificate check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("FILENAME"), "{text}");
    for f in [
        "server-ca.crt",
        "serving-kube-apiserver.crt",
        "client-admin.crt",
    ] {
        assert!(text.contains(f), "{f} listed: {text}");
    }
    assert!(
        text.contains("WARNING"),
        "60 s certificates are in the window: {text}"
    );

    // About 10 s after start the leaves enter the renewal window: new connections get a
    // new serving certificate and the kubeconfig a new client certificate, no restart.
    let renewed = wait_for(
        "a renewed serving certificate",
        Duration::from_secs(40),
        || Some(served_certificate(&c)).filter(|d| *d != first),
    );
    assert_ne!(renewed, first);
    wait_for(
        "a rewritten admin kubeconfig",
        Duration::from_secs(20),
        || (std::fs::read_to_string(&c.kubeconfig).ok()? != kubeconfig).then_some(()),
    );
    assert!(
        c.ok(&["get", "namespace", "default", "-o", "name"])
            .contains("namespace/default"),
        "the renewed credentials work"
    );
}
