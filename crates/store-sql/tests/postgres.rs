//! The PostgreSQL backend against a real PostgreSQL server started on loopback (one per
//! test binary, a fresh database per test).

mod common;

use std::sync::Arc;

use common::{scenarios, servers};
use rk3s_store::Store;
use rk3s_store_sql::{SqlError, SqlStore, TlsFiles};

fn endpoint() -> String {
    format!(
        "{}/{}?sslmode=disable",
        servers::shared_postgres().base,
        servers::fresh_database("pg")
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

/// TLS with the certificate verified (chain and name), from the endpoint's parameters or
/// from the files given besides; a wrong CA fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls() {
    let server = servers::shared_postgres();
    let db = servers::fresh_database("pgtls");
    let ca = server.ca_file.display().to_string();
    let verified = format!("{}/{db}?sslmode=verify-full&sslrootcert={ca}", server.base);
    scenarios::tls_round_trip(&verified, &TlsFiles::default()).await;
    let files = TlsFiles {
        ca_file: Some(server.ca_file.clone()),
        ..Default::default()
    };
    let base = server.base.replace("127.0.0.1", "localhost");
    scenarios::tls_round_trip(&format!("{base}/{db}?sslmode=verify-ca"), &files).await;
    scenarios::tls_round_trip(
        &format!("{base}/{db}?sslmode=require"),
        &TlsFiles::default(),
    )
    .await;
    let wrong = TlsFiles {
        ca_file: Some(server.wrong_ca_file.clone()),
        ..Default::default()
    };
    let err = SqlStore::connect_with(&format!("{}/{db}?sslmode=verify-full", server.base), &wrong)
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(matches!(err, SqlError::Connect { .. }), "{err}");
    assert!(matches!(
        SqlStore::connect(&format!("{}/{db}?sslmode=verify-full", server.base)).await,
        Err(SqlError::Tls(_))
    ));
}

/// A dedicated server, restarted under two stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_database_restart() {
    let mut server = tokio::task::block_in_place(servers::start_postgres);
    let endpoint = format!("{}/restart?sslmode=disable", server.base);
    scenarios::survives_restart(&mut server, &endpoint).await;
    tokio::task::block_in_place(|| drop(server));
}
