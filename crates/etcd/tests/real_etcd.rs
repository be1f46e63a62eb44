//! Against Debian's real etcd (skipped when `etcd` is not installed): one member started
//! by `EtcdProcess` with TLS from the cluster CA answers the Cluster API over TLS with the
//! client certificate, and MemberAdd yields the new member's `--initial-cluster`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rk3s_etcd::{ClientTls, ClusterClient, EtcdProcess, MemberConfig, MemberTls};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn etcd() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

#[tokio::test]
async fn one_member_with_tls_and_member_add() {
    let Some(binary) = etcd() else {
        eprintln!("etcd is not installed (Debian's etcd-server): skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(dir.path().join("server")))
        .expect("pki");
    let certs =
        rk3s_pki::ensure_etcd_certs(&pki.tls_dir, &pki.ca_cert_pem, &pki.ca_key_pem, "m1", &[])
            .expect("etcd certs");
    let mut config = MemberConfig::new(
        "m1",
        dir.path().join("server/db/etcd"),
        "127.0.0.1".parse().expect("ip"),
        MemberTls {
            ca_file: certs.ca_file.clone(),
            server_cert_file: certs.server_cert_file.clone(),
            server_key_file: certs.server_key_file.clone(),
            peer_cert_file: certs.peer_cert_file.clone(),
            peer_key_file: certs.peer_key_file.clone(),
        },
    );
    config.binary = binary;
    config.client_port = free_port();
    config.peer_port = free_port();
    config.initial_cluster = format!("m1={}", config.peer_url());
    let url = config.local_client_url();
    let log = config.log_path.clone();
    let process = EtcdProcess::start(config).expect("start etcd");
    let client = ClusterClient::new(
        &[url],
        &ClientTls {
            ca_file: certs.ca_file.clone(),
            cert_file: certs.client_cert_file.clone(),
            key_file: certs.client_key_file.clone(),
        },
    )
    .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    let members = loop {
        match client.member_list().await {
            Ok(m) if m.iter().any(|m| !m.client_urls.is_empty()) => break m,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "etcd not ready: {other:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "m1");

    let peer = format!("https://127.0.0.1:{}", free_port());
    let initial = client.add_and_describe("m2", &peer).await.expect("add");
    assert!(initial.contains("m1=https://127.0.0.1:"), "{initial}");
    assert!(initial.contains(&format!("m2={peer}")), "{initial}");
    // Asked again (an interrupted join): the same member, not a second one.
    let again = client.add_and_describe("m2", &peer).await.expect("again");
    assert_eq!(again, initial);
    assert_eq!(client.member_list().await.expect("list").len(), 2);
    // Another name may not take a started member's peer URL, nor a started member's name.
    let m1_peer = members[0].peer_urls[0].clone();
    assert!(client.add_and_describe("x", &m1_peer).await.is_err());
    let other = format!("https://127.0.0.1:{}", free_port());
    assert!(client.add_and_describe("m1", &other).await.is_err());
    process.stop();
}
