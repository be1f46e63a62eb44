//! Certificates (issue 15, item 8): with short-lived test certificates the running server
//! renews its serving certificate and the admin kubeconfig without a restart, and
//! `rk3s certificate check` lists every certificate with its expiry.

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
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&ca).expect("ca pem"))
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
    tls.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("handshake and request");
    tls.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a served certificate")
        .to_vec()
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
