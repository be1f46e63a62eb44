//! The MySQL backend against a real MariaDB server started on loopback (one per test
//! binary, a fresh database per test).

mod common;

use std::sync::Arc;

use common::{scenarios, servers};
use rk3s_store::Store;
use rk3s_store_sql::{SqlError, SqlStore, TlsFiles};

fn endpoint() -> String {
    format!(
        "{}/{}",
        servers::shared_mariadb().base,
        servers::fresh_database("my")
    )
}

async fn open_store() -> (Arc<dyn Store>, ()) {
    (Arc::new(scenarios::connect(&endpoint()).await), ())
}

rk3s_store::store_conformance_tests!(open_store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_list() {
    scenarios::crud_and_list(&endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_and_live() {
    scenarios::watch_history_and_live(&endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction() {
    scenarios::compaction(&endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers() {
    scenarios::two_servers(&endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_write_fails_alone() {
    scenarios::bad_write_fails_alone(&endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compactor() {
    scenarios::compactor(&endpoint()).await;
}

/// The URL form of the endpoint (`mysql://user@host:port/db`) reaches the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_style_endpoint() {
    let go_style = endpoint();
    let store = scenarios::connect(&go_style).await;
    store.create("/u/a", b"1".to_vec()).await.unwrap();
    let url = go_style.replace("root@tcp(", "root@").replace(")/", "/");
    assert!(!url.contains("tcp("), "{url}");
    let other = scenarios::connect(&url).await;
    assert_eq!(other.get("/u/a").await.unwrap().unwrap().value, b"1");
}

/// TLS as the Go driver's `tls` parameter says; a wrong CA fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls() {
    let server = servers::shared_mariadb();
    let db = servers::fresh_database("mytls");
    let files = TlsFiles {
        ca_file: Some(server.ca_file.clone()),
        ..Default::default()
    };
    let endpoint = format!("{}/{db}", server.base);
    // CA given, no tls parameter: TLS, verified.
    scenarios::tls_round_trip(&endpoint, &files).await;
    scenarios::tls_round_trip(&format!("{endpoint}?tls=true"), &files).await;
    scenarios::tls_round_trip(&format!("{endpoint}?tls=skip-verify"), &TlsFiles::default()).await;
    let wrong = TlsFiles {
        ca_file: Some(server.wrong_ca_file.clone()),
        ..Default::default()
    };
    let err = SqlStore::connect_with(&format!("{endpoint}?tls=true"), &wrong)
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(matches!(err, SqlError::Connect { .. }), "{err}");
}

/// A dedicated server, restarted under two stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_database_restart() {
    let mut server = tokio::task::block_in_place(servers::start_mariadb);
    let endpoint = format!("{}/restart", server.base);
    scenarios::survives_restart(&mut server, &endpoint).await;
    tokio::task::block_in_place(|| drop(server));
}
