//! The PostgreSQL dialect: a deadpool of tokio-postgres connections, and one extra
//! connection per store that `LISTEN`s for the writers' `NOTIFY` (sent inside each write
//! transaction, so delivered at commit, by every rk3s server sharing the database).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use rk3s_store::{KeyValue, ListResult, Revision, StoreError};
use tokio::sync::Notify;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, IsolationLevel, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::backend::{
    page_end, plan_batch, read_revision, ApplyError, Backend, Changes, KeyRange, LatestRow, LogRow,
    Write,
};
use crate::dsn::{PgSslMode, PostgresEndpoint};
use crate::tls::{client_config, TlsFiles, Verification};
use crate::SqlError;

/// The channel the writers notify.
const CHANNEL: &str = "rk3s_kv";
/// Connections in the pool.
const POOL_SIZE: usize = 8;
/// Any constant: serializes schema creation among servers starting together.
const SCHEMA_LOCK: i64 = 0x726b_3373_6b76;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rk3s_kv (
    id BIGINT PRIMARY KEY,
    name BYTEA NOT NULL,
    created SMALLINT NOT NULL,
    deleted SMALLINT NOT NULL,
    create_revision BIGINT NOT NULL,
    prev_revision BIGINT NOT NULL,
    value BYTEA NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rk3s_kv_name_prev ON rk3s_kv (name, prev_revision);
CREATE INDEX IF NOT EXISTS rk3s_kv_name_id ON rk3s_kv (name, id DESC);
CREATE TABLE IF NOT EXISTS rk3s_meta (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO rk3s_meta (name, value)
    VALUES ('schema_version', 1), ('revision', 0), ('compacted', 0)
    ON CONFLICT (name) DO NOTHING;
";

const SQL_LOCK_REVISION: &str = "SELECT value FROM rk3s_meta WHERE name = 'revision' FOR UPDATE";
const SQL_REVISIONS: &str = "SELECT \
     (SELECT value FROM rk3s_meta WHERE name = 'revision'), \
     (SELECT value FROM rk3s_meta WHERE name = 'compacted')";
const SQL_LATEST: &str = "SELECT id, deleted, create_revision, value FROM rk3s_kv \
     WHERE name = $1 ORDER BY id DESC LIMIT 1";
const SQL_LATEST_MANY: &str =
    "SELECT DISTINCT ON (name) name, id, deleted, create_revision, value \
     FROM rk3s_kv WHERE name = ANY($1) ORDER BY name, id DESC";
const SQL_INSERT: &str = "INSERT INTO rk3s_kv \
     (id, name, created, deleted, create_revision, prev_revision, value) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const SQL_LIST: &str = "SELECT k.id, k.name, k.create_revision, k.value FROM rk3s_kv AS k \
     WHERE k.name >= $1 AND k.name < $2 AND k.id <= $3 AND k.deleted = 0 \
     AND k.id = (SELECT MAX(n.id) FROM rk3s_kv AS n WHERE n.name = k.name AND n.id <= $3) \
     ORDER BY k.name LIMIT $4";
const SQL_LIST_COUNT: &str = "SELECT COUNT(*) FROM rk3s_kv AS k \
     WHERE k.name >= $1 AND k.name < $2 AND k.id <= $3 AND k.deleted = 0 \
     AND k.id = (SELECT MAX(n.id) FROM rk3s_kv AS n WHERE n.name = k.name AND n.id <= $3)";
const SQL_CHANGES: &str = "SELECT r.id, r.name, r.created, r.deleted, r.create_revision, \
     r.prev_revision, r.value, p.value FROM rk3s_kv AS r \
     LEFT JOIN rk3s_kv AS p ON p.id = r.prev_revision AND r.deleted = 0 AND r.created = 0 \
     WHERE r.id > $1 AND r.id <= $2 AND r.name >= $3 AND r.name < $4 \
     ORDER BY r.id LIMIT $5";
const SQL_COMPACT: &str = "DELETE FROM rk3s_kv AS k WHERE k.id > $1 AND k.id <= $2 \
     AND (k.deleted = 1 OR EXISTS (SELECT 1 FROM rk3s_kv AS n \
          WHERE n.name = k.name AND n.id > k.id AND n.id <= $3))";

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("postgres: {}", pg_message(&e)))
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::Backend(format!("postgres pool: {other}")),
    }
}

fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, StoreError> {
    row.try_get(index).map_err(pg_err)
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Quotes an identifier for PostgreSQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The PostgreSQL backend.
pub(crate) struct Postgres {
    pool: Pool,
}

/// The connection settings and TLS connector for `endpoint` with default `files`.
fn settings(
    endpoint: &PostgresEndpoint,
    files: &TlsFiles,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), SqlError> {
    let mut config = endpoint.config.clone();
    let files = endpoint.files.or(files);
    // libpq: `prefer` and `require` check the certificate only when given a CA.
    let loose = if files.ca_file.is_some() {
        Verification::Chain
    } else {
        Verification::None
    };
    let (mode, verification) = match endpoint.ssl_mode {
        PgSslMode::Disable => (SslMode::Disable, Verification::None),
        PgSslMode::Prefer => (SslMode::Prefer, loose),
        PgSslMode::Require => (SslMode::Require, loose),
        PgSslMode::VerifyCa => (SslMode::Require, Verification::Chain),
        PgSslMode::VerifyFull => (SslMode::Require, Verification::Full),
    };
    config.ssl_mode(mode);
    let tls = MakeRustlsConnect::new(client_config(verification, &files)?);
    Ok((config, tls))
}

/// Connects, creating the database and the tables if missing. Returns the backend and
/// what [`listen`] needs.
pub(crate) async fn open(
    endpoint: &PostgresEndpoint,
    files: &TlsFiles,
) -> Result<(Postgres, tokio_postgres::Config, MakeRustlsConnect), SqlError> {
    let (config, tls) = settings(endpoint, files)?;
    let connect_err = |e: &tokio_postgres::Error| SqlError::Connect {
        backend: "postgres",
        message: pg_message(e),
    };
    let client = match connect(&config, &tls).await {
        Ok(client) => client,
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            create_database(&config, &tls, endpoint.database()).await?;
            connect(&config, &tls).await.map_err(|e| connect_err(&e))?
        }
        Err(e) => return Err(connect_err(&e)),
    };
    let schema = format!("BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;");
    client
        .batch_execute(&schema)
        .await
        .map_err(|e| SqlError::Connect {
            backend: "postgres",
            message: format!("creating the tables: {}", pg_message(&e)),
        })?;
    drop(client);
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(15)))
        .build()
        .map_err(|e| SqlError::Connect {
            backend: "postgres",
            message: e.to_string(),
        })?;
    tracing::debug!(database = endpoint.database(), "opened postgres store");
    Ok((Postgres { pool }, config, tls))
}

async fn connect(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

async fn create_database(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    database: &str,
) -> Result<(), SqlError> {
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect(&admin, tls).await.map_err(|e| SqlError::Connect {
        backend: "postgres",
        message: format!("database {database} is missing and {}", pg_message(&e)),
    })?;
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
        .await
    {
        Ok(()) => {
            tracing::info!(database, "created postgres database");
            Ok(())
        }
        // Another server created it at the same time.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(()),
        Err(e) => Err(SqlError::Connect {
            backend: "postgres",
            message: format!("creating database {database}: {}", pg_message(&e)),
        }),
    }
}

/// Aborts a task when dropped (also when the task owning the guard is aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one connection that `LISTEN`s on the writers' channel and wakes `wake` for each
/// notification, reconnecting (and waking, as notifications may have been missed) after
/// a failure. Runs until aborted.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    wake: Arc<Notify>,
) {
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let waker = Arc::clone(&wake);
                let driver = AbortOnDrop(tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => waker.notify_one(),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "postgres listener connection failed");
                                break;
                            }
                        }
                    }
                    let _ = done_tx.send(());
                }));
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        // Changes made while not listening are picked up now.
                        wake.notify_one();
                        let _ = done_rx.await;
                    }
                    Err(e) => tracing::warn!(error = %pg_message(&e), "postgres LISTEN failed"),
                }
                drop(driver);
            }
            Err(e) => {
                tracing::warn!(error = %pg_message(&e), "postgres listener cannot connect")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn log_row(row: &Row) -> Result<LogRow, StoreError> {
    Ok(LogRow {
        id: col(row, 0)?,
        name: col(row, 1)?,
        created: col::<i16>(row, 2)? != 0,
        deleted: col::<i16>(row, 3)? != 0,
        create_revision: col(row, 4)?,
        prev_revision: col(row, 5)?,
        value: col(row, 6)?,
        prev_value: col(row, 7)?,
    })
}

#[async_trait::async_trait]
impl Backend for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn apply(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<KeyValue, StoreError>>, ApplyError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let names: Vec<&[u8]> = writes.iter().map(|w| w.key().as_bytes()).collect();
        let prefetch = tx.prepare_cached(SQL_LATEST_MANY).await.map_err(pg_err)?;
        let insert = tx.prepare_cached(SQL_INSERT).await.map_err(pg_err)?;
        // The row lock serializes writers of every server: revisions are handed out and
        // committed in order, and each compare-and-swap sees every earlier write. The
        // newest rows are read only once the lock is held (READ COMMITTED: a statement
        // sees every commit before it started).
        let lock = tx.query_one(SQL_LOCK_REVISION, &[]).await.map_err(pg_err)?;
        let current = tx.query(&prefetch, &[&names]).await.map_err(pg_err)?;
        let first: i64 = col(&lock, 0)?;
        let mut latest = HashMap::with_capacity(current.len());
        for row in &current {
            let name = crate::backend::key_from_bytes(col(row, 0)?)?;
            latest.insert(
                name,
                LatestRow {
                    id: col(row, 1)?,
                    deleted: col::<i16>(row, 2)? != 0,
                    create_revision: col(row, 3)?,
                    value: col(row, 4)?,
                },
            );
        }
        let (outcomes, rows) = plan_batch(writes, &mut latest, first + 1);
        let flags: Vec<(i16, i16)> = rows
            .iter()
            .map(|r| (i16::from(r.created), i16::from(r.deleted)))
            .collect();
        // Pipelined: one round trip for the whole batch.
        futures_util::future::try_join_all(rows.iter().zip(&flags).map(|(row, flags)| {
            let (tx, insert) = (&tx, &insert);
            async move {
                let name = row.kv.key.as_bytes();
                tx.execute(
                    insert,
                    &[
                        &row.id,
                        &name,
                        &flags.0,
                        &flags.1,
                        &row.create_revision,
                        &row.prev_revision,
                        &row.value,
                    ],
                )
                .await
            }
        }))
        .await
        .map_err(pg_err)?;
        if let Some(last) = rows.last() {
            // An integer we made: safe to inline in a simple query with the NOTIFY.
            tx.batch_execute(&format!(
                "UPDATE rk3s_meta SET value = {} WHERE name = 'revision'; NOTIFY {CHANNEL}",
                last.id
            ))
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(|e| ApplyError {
            error: pg_err(e),
            at_commit: true,
        })?;
        Ok(outcomes)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let stmt = client.prepare_cached(SQL_LATEST).await.map_err(pg_err)?;
        let Some(row) = client
            .query_opt(&stmt, &[&key.as_bytes()])
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        if col::<i16>(&row, 1)? != 0 {
            return Ok(None);
        }
        Ok(Some(KeyValue {
            key: key.to_string(),
            value: col(&row, 3)?,
            create_revision: col(&row, 2)?,
            mod_revision: col(&row, 0)?,
        }))
    }

    async fn list(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let row = tx.query_one(SQL_REVISIONS, &[]).await.map_err(pg_err)?;
        let revision = read_revision(revision, col(&row, 0)?, col(&row, 1)?)?;
        // One more than the limit tells whether more keys match.
        let sql_limit: Option<i64> = limit.map(|l| to_i64(l).saturating_add(1));
        let stmt = tx.prepare_cached(SQL_LIST).await.map_err(pg_err)?;
        let rows = tx
            .query(&stmt, &[&range.lower, &range.upper, &revision, &sql_limit])
            .await
            .map_err(pg_err)?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(KeyValue {
                key: crate::backend::key_from_bytes(col(row, 1)?)?,
                value: col(row, 3)?,
                create_revision: col(row, 2)?,
                mod_revision: col(row, 0)?,
            });
        }
        let (mut more, mut remaining) = (false, 0);
        if let Some(limit) = limit {
            if items.len() > limit {
                items.truncate(limit);
                more = true;
                let stmt = tx.prepare_cached(SQL_LIST_COUNT).await.map_err(pg_err)?;
                let row = tx
                    .query_one(&stmt, &[&range.lower, &range.upper, &revision])
                    .await
                    .map_err(pg_err)?;
                let total: i64 = col(&row, 0)?;
                remaining = usize::try_from(total).unwrap_or(0).saturating_sub(limit);
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(ListResult {
            items,
            revision,
            more,
            remaining,
        })
    }

    async fn changes(
        &self,
        range: &KeyRange,
        after: Revision,
        upto: Option<Revision>,
        limit: usize,
    ) -> Result<Changes, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let row = tx.query_one(SQL_REVISIONS, &[]).await.map_err(pg_err)?;
        let (current, compacted): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let bound = upto.map_or(current, |upto| upto.min(current));
        let mut events = Vec::new();
        if bound > after {
            let stmt = tx.prepare_cached(SQL_CHANGES).await.map_err(pg_err)?;
            let rows = tx
                .query(
                    &stmt,
                    &[&after, &bound, &range.lower, &range.upper, &to_i64(limit)],
                )
                .await
                .map_err(pg_err)?;
            for row in &rows {
                events.push(log_row(row)?.into_event()?);
            }
        }
        tx.commit().await.map_err(pg_err)?;
        let through = page_end(&events, limit, after, bound);
        Ok(Changes { events, through })
    }

    async fn revisions(&self) -> Result<(Revision, Revision), StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client.query_one(SQL_REVISIONS, &[]).await.map_err(pg_err)?;
        Ok((col(&row, 0)?, col(&row, 1)?))
    }

    async fn mark_compacted(&self, revision: Revision) -> Result<Option<Revision>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let row = tx
            .query_one(
                "SELECT value FROM rk3s_meta WHERE name = 'compacted' FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let compacted: i64 = col(&row, 0)?;
        let row = tx
            .query_one("SELECT value FROM rk3s_meta WHERE name = 'revision'", &[])
            .await
            .map_err(pg_err)?;
        let current: i64 = col(&row, 0)?;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= compacted {
            return Ok(None);
        }
        tx.execute(
            "UPDATE rk3s_meta SET value = $1 WHERE name = 'compacted'",
            &[&revision],
        )
        .await
        .map_err(pg_err)?;
        let row = tx
            .query_one("SELECT COALESCE(MIN(id), 0) FROM rk3s_kv", &[])
            .await
            .map_err(pg_err)?;
        let first: i64 = col(&row, 0)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(first))
    }

    async fn log_len(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one("SELECT COUNT(*) FROM rk3s_kv", &[])
            .await
            .map_err(pg_err)?;
        col(&row, 0)
    }

    async fn compact_range(
        &self,
        from: Revision,
        to: Revision,
        target: Revision,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let stmt = client.prepare_cached(SQL_COMPACT).await.map_err(pg_err)?;
        client
            .execute(&stmt, &[&from, &to, &target])
            .await
            .map_err(pg_err)
    }
}
