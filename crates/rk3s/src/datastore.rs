//! `--datastore-endpoint`: which datastore the server keeps its state in, as k3s reads
//! the flag: empty -> the embedded SQLite file `<data-dir>/server/db/state.db`;
//! `sqlite://PATH` -> SQLite at PATH; `http://` / `https://` (comma-separated) -> an
//! etcd cluster; `postgres://` / `postgresql://` -> PostgreSQL; `mysql://` -> MySQL.
//! TLS files (`--datastore-cafile`, `--datastore-certfile`, `--datastore-keyfile`) are
//! used by `https://` etcd endpoints and by PostgreSQL/MySQL (`rk3s-store-sql`: there
//! the endpoint's own `sslmode`/`sslrootcert`/`tls` parameters win).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rk3s_store::Store;

/// How often an external datastore is compacted (k3s / the Kubernetes API server: 5 min).
const COMPACT_INTERVAL: Duration = Duration::from_secs(300);
/// Revisions kept by each compaction (k3s's kine keeps 1000).
const COMPACT_KEEP: i64 = 1000;

/// A parsed `--datastore-endpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatastoreEndpoint {
    /// The embedded SQLite datastore at this file (`None`: the default file,
    /// `<data-dir>/server/db/state.db`).
    Sqlite(Option<PathBuf>),
    /// An etcd cluster: its members' `http(s)://host:port` URLs.
    Etcd(Vec<String>),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL, as given).
    Postgres(String),
    /// A MySQL database (`mysql://` URL, as given).
    Mysql(String),
}

/// TLS files for the datastore connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatastoreTls {
    /// `--datastore-cafile`.
    pub ca_file: Option<PathBuf>,
    /// `--datastore-certfile`.
    pub cert_file: Option<PathBuf>,
    /// `--datastore-keyfile`.
    pub key_file: Option<PathBuf>,
}

/// The embedded SQLite file under `data_dir`.
pub fn default_sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("state.db")
}

/// Parses `--datastore-endpoint` (empty: the embedded SQLite file).
pub fn parse_endpoint(endpoint: &str) -> anyhow::Result<DatastoreEndpoint> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Ok(DatastoreEndpoint::Sqlite(None));
    }
    if let Some(rest) = endpoint.strip_prefix("sqlite://") {
        // kine's DSNs carry driver options after `?` (`?_journal=WAL&cache=shared`):
        // our SQLite store sets its own.
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Ok(DatastoreEndpoint::Sqlite(None));
        }
        return Ok(DatastoreEndpoint::Sqlite(Some(PathBuf::from(path))));
    }
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        let config = rk3s_store_etcd::EtcdConfig::from_endpoints(
            endpoint,
            rk3s_store_etcd::TlsFiles::default(),
        )
        .with_context(|| format!("--datastore-endpoint {endpoint:?}"))?;
        return Ok(DatastoreEndpoint::Etcd(config.endpoints));
    }
    if endpoint.starts_with("postgres://") || endpoint.starts_with("postgresql://") {
        check_sql_endpoint(endpoint)?;
        return Ok(DatastoreEndpoint::Postgres(endpoint.to_string()));
    }
    if endpoint.starts_with("mysql://") {
        check_sql_endpoint(endpoint)?;
        return Ok(DatastoreEndpoint::Mysql(endpoint.to_string()));
    }
    let scheme = endpoint.split("://").next().unwrap_or(endpoint);
    bail!(
        "--datastore-endpoint: unsupported datastore {scheme:?}: use an empty value (embedded SQLite), \
         sqlite://PATH, http(s)://HOST:PORT[,...] (etcd), postgres://... or mysql://..."
    )
}

/// Fails early on a PostgreSQL/MySQL endpoint that cannot be parsed (the message never
/// repeats the endpoint: it may hold a password).
fn check_sql_endpoint(endpoint: &str) -> anyhow::Result<()> {
    endpoint
        .parse::<rk3s_store_sql::Endpoint>()
        .map(|_| ())
        .context("--datastore-endpoint")
}

/// Opens the datastore and starts its periodic compaction (every 5 minutes, keeping
/// 1000 revisions). `data_dir` is the server's `--data-dir`.
pub async fn open(
    endpoint: &DatastoreEndpoint,
    tls: &DatastoreTls,
    data_dir: &Path,
) -> anyhow::Result<Arc<dyn Store>> {
    match endpoint {
        DatastoreEndpoint::Sqlite(path) => {
            let path = path
                .clone()
                .unwrap_or_else(|| default_sqlite_path(data_dir));
            let store = rk3s_store::sqlite::SqliteStore::open(&path)
                .with_context(|| format!("opening the SQLite datastore {}", path.display()))?;
            let store = Arc::new(store);
            store.spawn_compactor(COMPACT_INTERVAL, COMPACT_KEEP);
            tracing::info!(path = %path.display(), "datastore: embedded SQLite");
            Ok(store)
        }
        DatastoreEndpoint::Etcd(endpoints) => {
            let config = rk3s_store_etcd::EtcdConfig {
                endpoints: endpoints.clone(),
                tls: rk3s_store_etcd::TlsFiles {
                    ca_file: tls.ca_file.clone(),
                    cert_file: tls.cert_file.clone(),
                    key_file: tls.key_file.clone(),
                },
                connect_timeout: None,
            };
            let store = rk3s_store_etcd::EtcdStore::connect(&config)
                .await
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            let store: Arc<dyn Store> = Arc::new(store);
            spawn_compactor(&store, COMPACT_INTERVAL, COMPACT_KEEP);
            tracing::info!(endpoints = %endpoints.join(","), "datastore: etcd");
            Ok(store)
        }
        DatastoreEndpoint::Postgres(url) | DatastoreEndpoint::Mysql(url) => {
            let kind = match endpoint {
                DatastoreEndpoint::Postgres(_) => "PostgreSQL",
                _ => "MySQL",
            };
            let files = rk3s_store_sql::TlsFiles {
                ca_file: tls.ca_file.clone(),
                cert_file: tls.cert_file.clone(),
                key_file: tls.key_file.clone(),
            };
            let store = rk3s_store_sql::SqlStore::connect_with(url, &files)
                .await
                .with_context(|| format!("connecting to the {kind} datastore"))?;
            let store: Arc<dyn Store> = Arc::new(store);
            spawn_compactor(&store, COMPACT_INTERVAL, COMPACT_KEEP);
            tracing::info!(datastore = kind, "datastore: external SQL database");
            Ok(store)
        }
    }
}

/// Every `interval`, compacts `store` to `keep` revisions before its current one. Holds
/// only a weak reference: ends once the store is dropped. Several servers sharing one
/// datastore may all run it (compacting an already compacted revision is a no-op).
pub fn spawn_compactor(
    store: &Arc<dyn Store>,
    interval: Duration,
    keep: i64,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        loop {
            ticker.tick().await;
            let Some(store) = weak.upgrade() else { break };
            if let Err(e) = compact_once(&*store, keep).await {
                tracing::warn!(error = %e, "datastore compaction failed");
            }
        }
    })
}

/// Compacts `store` to `keep` revisions before its current one, if that is newer than
/// its compacted revision.
async fn compact_once(store: &dyn Store, keep: i64) -> Result<(), rk3s_store::StoreError> {
    let target = store.current_revision().await? - keep.max(0);
    if target > store.compacted_revision().await? {
        store.compact(target).await?;
        tracing::debug!(revision = target, "compacted the datastore");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<DatastoreEndpoint> {
        parse_endpoint(s)
    }

    #[test]
    fn empty_is_the_embedded_sqlite_file() {
        let default = DatastoreEndpoint::Sqlite(None);
        assert_eq!(parse("").unwrap(), default);
        assert_eq!(parse("  ").unwrap(), default);
        assert_eq!(parse("sqlite://").unwrap(), default);
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        assert_eq!(
            parse("sqlite:///tmp/x/state.db?_journal=WAL&cache=shared").unwrap(),
            DatastoreEndpoint::Sqlite(Some(PathBuf::from("/tmp/x/state.db")))
        );
        assert_eq!(
            parse("sqlite://db/state.db").unwrap(),
            DatastoreEndpoint::Sqlite(Some(PathBuf::from("db/state.db")))
        );
    }

    #[test]
    fn http_and_https_lists_are_etcd() {
        assert_eq!(
            parse("https://10.0.0.1:2379,https://10.0.0.2:2379").unwrap(),
            DatastoreEndpoint::Etcd(vec![
                "https://10.0.0.1:2379".to_string(),
                "https://10.0.0.2:2379".to_string()
            ])
        );
        assert_eq!(
            parse("http://127.0.0.1:2379").unwrap(),
            DatastoreEndpoint::Etcd(vec!["http://127.0.0.1:2379".to_string()])
        );
        let err = parse("https://10.0.0.1:2379,10.0.0.2:2379").unwrap_err();
        assert!(format!("{err:#}").contains("10.0.0.2:2379"), "{err:#}");
    }

    #[test]
    fn sql_databases_keep_their_url() {
        let pg = "postgres://user:pass@db:5432/k3s?sslmode=disable";
        assert_eq!(
            parse(pg).unwrap(),
            DatastoreEndpoint::Postgres(pg.to_string())
        );
        let pg = "postgresql://db/k3s";
        assert_eq!(
            parse(pg).unwrap(),
            DatastoreEndpoint::Postgres(pg.to_string())
        );
        let my = "mysql://user:pass@tcp(db:3306)/k3s";
        assert_eq!(parse(my).unwrap(), DatastoreEndpoint::Mysql(my.to_string()));
        let err = parse("mysql://user:secret@udp(db:3306)/k3s").unwrap_err();
        assert!(!format!("{err:#}").contains("secret"), "{err:#}");
        assert!(parse("postgres://db/k3s?sslmode=sometimes").is_err());
    }

    #[test]
    fn unknown_schemes_are_refused() {
        for bad in [
            "nats://localhost:4222",
            "unix:///run/kine.sock",
            "/var/lib/db",
            "etcd",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                format!("{err}").contains("unsupported datastore"),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn open_sqlite_and_compact() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = parse_endpoint("").unwrap();
        let store = open(&endpoint, &DatastoreTls::default(), dir.path())
            .await
            .unwrap();
        assert!(default_sqlite_path(dir.path()).is_file());
        let mut kv = store.create("/registry/x", b"0".to_vec()).await.unwrap();
        for i in 1..10 {
            kv = store
                .update("/registry/x", i.to_string().into_bytes(), kv.mod_revision)
                .await
                .unwrap();
        }
        compact_once(&*store, 3).await.unwrap();
        assert_eq!(
            store.compacted_revision().await.unwrap(),
            kv.mod_revision - 3
        );
        // Nothing newer to compact: a no-op.
        compact_once(&*store, 3).await.unwrap();
        assert_eq!(
            store.compacted_revision().await.unwrap(),
            kv.mod_revision - 3
        );
        // Nothing listens on port 1: the connection is refused at once.
        let err = open(
            &DatastoreEndpoint::Mysql("mysql://root@tcp(127.0.0.1:1)/k3s".into()),
            &DatastoreTls::default(),
            dir.path(),
        )
        .await
        .err()
        .unwrap();
        assert!(format!("{err}").contains("MySQL"), "{err}");
    }
}
