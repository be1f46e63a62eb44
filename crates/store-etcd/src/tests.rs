use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use prost::Message;
use rk3s_store::{EventKind, ListOptions, Store, StoreError};

use super::*;
use crate::testing::{start_cluster, ServerTls};

#[test]
fn prefix_ranges_are_exact() {
    assert_eq!(prefix_range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
    assert_eq!(prefix_range(""), (vec![0], vec![0]));
    // U+10FFFF is F4 8F BF BF: the last byte below 0xFF is incremented.
    assert_eq!(
        prefix_range("\u{10ffff}"),
        (
            "\u{10ffff}".as_bytes().to_vec(),
            vec![0xf4, 0x8f, 0xbf, 0xc0]
        )
    );
}

#[test]
fn endpoints_parse_as_k3s_lists() {
    let config = EtcdConfig::from_endpoints(
        "https://10.0.0.1:2379, https://10.0.0.2:2379,",
        TlsFiles::default(),
    )
    .expect("parse");
    assert_eq!(
        config.endpoints,
        ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    );
    assert!(matches!(
        EtcdConfig::from_endpoints(" , ", TlsFiles::default()),
        Err(EtcdError::NoEndpoints)
    ));
    for bad in [
        "10.0.0.1:2379",
        "unix:///run/etcd.sock",
        "http://",
        "http://h:1/path",
    ] {
        assert!(
            matches!(
                EtcdConfig::from_endpoints(bad, TlsFiles::default()),
                Err(EtcdError::InvalidEndpoint { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn https_needs_a_ca_and_a_cert_needs_its_key() {
    let err = tls_config(&TlsFiles::default()).unwrap_err();
    assert!(matches!(err, EtcdError::Tls(_)), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "not used yet").expect("write");
    let err = tls_config(&TlsFiles {
        ca_file: Some(ca.clone()),
        cert_file: Some(ca.clone()),
        key_file: None,
    })
    .unwrap_err();
    assert!(matches!(err, EtcdError::Tls(_)), "{err}");
    let err = tls_config(&TlsFiles {
        ca_file: Some(dir.path().join("missing.crt")),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, EtcdError::ReadFile { .. }), "{err}");
}

#[test]
fn compare_encodes_as_etcd_expects() {
    // Compare{result: EQUAL(0, omitted), target: MOD(2), key: "k", mod_revision: 5}.
    let c = compare(
        b"k",
        proto::COMPARE_EQUAL,
        proto::TargetUnion::ModRevision(5),
    );
    assert_eq!(
        c.encode_to_vec(),
        [0x10, 0x02, 0x1a, 0x01, b'k', 0x30, 0x05]
    );
    // A create-revision compare with 0 still sends the field (oneof).
    let c = compare(
        b"k",
        proto::COMPARE_EQUAL,
        proto::TargetUnion::CreateRevision(0),
    );
    assert_eq!(
        c.encode_to_vec(),
        [0x10, 0x01, 0x1a, 0x01, b'k', 0x28, 0x00]
    );
}

#[test]
fn delete_events_carry_the_last_value() {
    let kv = |value: &[u8], create, modified| proto::KeyValue {
        key: b"/k".to_vec(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
        ..Default::default()
    };
    let event = convert_event(proto::Event {
        kind: proto::EVENT_DELETE,
        kv: Some(kv(b"", 0, 9)),
        prev_kv: Some(kv(b"last", 3, 7)),
    })
    .expect("convert");
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(
        (
            event.kv.value.as_slice(),
            event.kv.create_revision,
            event.kv.mod_revision
        ),
        (&b"last"[..], 3, 9)
    );
    assert_eq!(event.prev.map(|p| p.mod_revision), Some(7));
    // Without the previous value (compacted), the delete still has its key and revision.
    let event = convert_event(proto::Event {
        kind: proto::EVENT_DELETE,
        kv: Some(kv(b"", 0, 9)),
        prev_kv: None,
    })
    .expect("convert");
    assert_eq!((event.kv.key.as_str(), event.kv.mod_revision), ("/k", 9));
    assert!(event.prev.is_none());
    // A key that is not UTF-8 is a backend error, not a panic.
    let err = convert_event(proto::Event {
        kind: 0,
        kv: Some(proto::KeyValue {
            key: vec![0xff],
            ..Default::default()
        }),
        prev_kv: None,
    })
    .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)));
}

#[tokio::test]
async fn connect_fails_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        tls: TlsFiles::default(),
        connect_timeout: Some(Duration::from_millis(300)),
    };
    let err = EtcdStore::connect(&config).await.unwrap_err();
    assert!(matches!(err, EtcdError::Unreachable { .. }), "{err}");
    // A refused connection is known not to have applied anything: writes may move on.
    let channel = Endpoint::from_shared(config.endpoints[0].clone())
        .expect("endpoint")
        .connect_lazy();
    let status =
        unary::<_, proto::RangeResponse>(&channel, path::RANGE, proto::RangeRequest::default())
            .await
            .unwrap_err();
    assert!(never_applied(&status), "{status:?}");
    assert!(!never_applied(&tonic::Status::unavailable(
        "etcdserver: request timed out"
    )));
    assert!(never_applied(&tonic::Status::unavailable(
        "etcdserver: no leader"
    )));
}

/// The store conformance suite, each check on a fresh single-member etcd.
mod conformance {
    use crate::testing::single_member;

    rk3s_store::store_conformance_tests!(single_member);
}

async fn next_event(stream: &mut rk3s_store::WatchStream) -> rk3s_store::Event {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event within 20 s")
        .expect("stream open")
        .expect("no watch error")
}

/// Three members on loopback: a write through member 1 is seen by a watch on member 3;
/// with one member killed, writes through a store that knows every member go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_survives_a_member() {
    let mut members = start_cluster(3, None);
    let one = members[0].store(TlsFiles::default()).await;
    let three = members[2].store(TlsFiles::default()).await;
    let _ = members[1].store(TlsFiles::default()).await;
    let all = EtcdStore::connect(&EtcdConfig {
        endpoints: members.iter().map(|m| m.client_url.clone()).collect(),
        tls: TlsFiles::default(),
        connect_timeout: None,
    })
    .await
    .expect("connect to all members");

    let start = three.current_revision().await.expect("revision");
    let mut watch = three
        .watch("/registry/", start)
        .await
        .expect("watch on member 3");
    let created = one
        .create("/registry/core/configmaps/default/a", b"1".to_vec())
        .await
        .expect("write through member 1");
    let event = next_event(&mut watch).await;
    assert_eq!(event.kv, created);

    // Kill the member the all-members store talks to first. Reads move on to another
    // member and wait for a leader (the killed member may have been the leader).
    members[0].kill();
    let t0 = Instant::now();
    let read = all
        .get("/registry/core/configmaps/default/a")
        .await
        .expect("read with member 1 down");
    assert_eq!(read, Some(created.clone()));
    let failover = t0.elapsed();
    let updated = all
        .update(
            "/registry/core/configmaps/default/a",
            b"2".to_vec(),
            created.mod_revision,
        )
        .await
        .expect("write with member 1 down");
    let mut last = updated.mod_revision;
    for i in 0..20 {
        let kv = all
            .create(
                &format!("/registry/core/configmaps/default/n{i}"),
                b"x".to_vec(),
            )
            .await
            .expect("writes go on");
        assert!(kv.mod_revision > last);
        last = kv.mod_revision;
    }
    assert_eq!(next_event(&mut watch).await.kv, updated);
    for _ in 0..20 {
        next_event(&mut watch).await;
    }
    let list = three
        .list("/registry/core/configmaps/", ListOptions::default())
        .await
        .expect("list on member 3");
    assert_eq!(list.items.len(), 21);
    assert_eq!(list.revision, last);
    drop(one);
    eprintln!("failover to another member took {failover:?}");
}

/// `https://` endpoints with a CA, client certificate and key (etcd with
/// `--client-cert-auth`); a client without a certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "etcd-test-ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path
    };
    let ca_file = write("ca.crt", &ca.pem());
    let (server_cert, server_key) = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("rk3s", ExtendedKeyUsagePurpose::ClientAuth);
    let server = ServerTls {
        cert_file: write("server.crt", &server_cert),
        key_file: write("server.key", &server_key),
        ca_file: ca_file.clone(),
    };
    let client = TlsFiles {
        ca_file: Some(ca_file.clone()),
        cert_file: Some(write("client.crt", &client_cert)),
        key_file: Some(write("client.key", &client_key)),
    };
    let mut members = start_cluster(1, Some(&server));
    assert!(members[0].client_url.starts_with("https://"));
    let store = members[0].store(client.clone()).await;
    let kv = store
        .create("/registry/x", b"tls".to_vec())
        .await
        .expect("create over TLS");
    assert_eq!(store.get("/registry/x").await.expect("get"), Some(kv));

    // Without a client certificate etcd refuses the connection.
    let err = EtcdStore::connect(&EtcdConfig {
        endpoints: vec![members[0].client_url.clone()],
        tls: TlsFiles {
            ca_file: Some(ca_file),
            ..Default::default()
        },
        connect_timeout: Some(Duration::from_secs(1)),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, EtcdError::Unreachable { .. }), "{err}");
    drop(Arc::new(store));
}
