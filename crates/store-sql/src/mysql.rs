//! The MySQL/MariaDB dialect: mysql_async's pool. MySQL has no notifications, so watchers
//! of other servers' writes rely on polling (see the crate documentation).
//!
//! Write and compaction transactions run at READ COMMITTED: InnoDB then takes no gap
//! locks, so a compaction's range delete never blocks inserts; writers are serialized by
//! the revision counter's row lock anyway.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{
    IsolationLevel, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, TxOpts,
};
use rk3s_store::{KeyValue, ListResult, Revision, StoreError};

use crate::backend::{
    key_from_bytes, page_end, plan_batch, read_revision, ApplyError, Backend, Changes, KeyRange,
    LatestRow, LogRow, Write,
};
use crate::dsn::{MysqlAddress, MysqlEndpoint, MysqlTls};
use crate::tls::{mysql_ssl_opts, TlsFiles, Verification};
use crate::SqlError;

/// Connections in the pool.
const POOL_SIZE: usize = 8;

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS rk3s_kv (
        id BIGINT NOT NULL PRIMARY KEY,
        name VARBINARY(1024) NOT NULL,
        created TINYINT NOT NULL,
        deleted TINYINT NOT NULL,
        create_revision BIGINT NOT NULL,
        prev_revision BIGINT NOT NULL,
        value LONGBLOB NOT NULL,
        UNIQUE KEY rk3s_kv_name_prev (name, prev_revision),
        KEY rk3s_kv_name_id (name, id)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS rk3s_meta (
        name VARCHAR(64) NOT NULL PRIMARY KEY,
        value BIGINT NOT NULL
    ) ENGINE=InnoDB",
    "INSERT IGNORE INTO rk3s_meta (name, value)
        VALUES ('schema_version', 1), ('revision', 0), ('compacted', 0)",
];

const SQL_LOCK_REVISION: &str = "SELECT value FROM rk3s_meta WHERE name = 'revision' FOR UPDATE";
const SQL_SET_REVISION: &str = "UPDATE rk3s_meta SET value = ? WHERE name = 'revision'";
const SQL_REVISIONS: &str = "SELECT \
     (SELECT value FROM rk3s_meta WHERE name = 'revision'), \
     (SELECT value FROM rk3s_meta WHERE name = 'compacted')";
const SQL_LATEST: &str = "SELECT id, deleted, create_revision, value FROM rk3s_kv \
     WHERE name = ? ORDER BY id DESC LIMIT 1";
const SQL_LATEST_ONE: &str = "(SELECT name, id, deleted, create_revision, value FROM rk3s_kv \
     WHERE name = ? ORDER BY id DESC LIMIT 1)";
const SQL_INSERT_MANY: &str = "INSERT INTO rk3s_kv \
     (id, name, created, deleted, create_revision, prev_revision, value) VALUES";
/// Keys whose newest rows are read by one statement.
const LATEST_CHUNK: usize = 64;
/// Value bytes per insert statement (the server's `max_allowed_packet` is 16 MiB by
/// default; one larger value still goes alone).
const INSERT_BYTES: usize = 4 << 20;
const SQL_LIST: &str = "SELECT k.id, k.name, k.create_revision, k.value FROM rk3s_kv AS k \
     WHERE k.name >= ? AND k.name < ? AND k.id <= ? AND k.deleted = 0 \
     AND k.id = (SELECT MAX(n.id) FROM rk3s_kv AS n WHERE n.name = k.name AND n.id <= ?) \
     ORDER BY k.name LIMIT ?";
const SQL_LIST_COUNT: &str = "SELECT COUNT(*) FROM rk3s_kv AS k \
     WHERE k.name >= ? AND k.name < ? AND k.id <= ? AND k.deleted = 0 \
     AND k.id = (SELECT MAX(n.id) FROM rk3s_kv AS n WHERE n.name = k.name AND n.id <= ?)";
const SQL_CHANGES: &str = "SELECT r.id, r.name, r.created, r.deleted, r.create_revision, \
     r.prev_revision, r.value, p.value FROM rk3s_kv AS r \
     LEFT JOIN rk3s_kv AS p ON p.id = r.prev_revision AND r.deleted = 0 AND r.created = 0 \
     WHERE r.id > ? AND r.id <= ? AND r.name >= ? AND r.name < ? \
     ORDER BY r.id LIMIT ?";
// MySQL cannot name the deleted table in a subquery: join it instead.
const SQL_COMPACT_SUPERSEDED: &str = "DELETE k FROM rk3s_kv AS k \
     JOIN rk3s_kv AS n ON n.name = k.name AND n.id > k.id AND n.id <= ? \
     WHERE k.id > ? AND k.id <= ?";
const SQL_COMPACT_TOMBSTONES: &str = "DELETE FROM rk3s_kv WHERE id > ? AND id <= ? AND deleted = 1";

fn my_err(e: mysql_async::Error) -> StoreError {
    StoreError::Backend(format!("mysql: {e}"))
}

/// Takes column `index` of `row` (each column is taken at most once).
fn col<T: FromValue>(row: &mut Row, index: usize) -> Result<T, StoreError> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(StoreError::Backend(format!("mysql: column {index}: {e}"))),
        None => Err(StoreError::Backend(format!("mysql: no column {index}"))),
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn tx_opts(isolation: IsolationLevel, read_only: bool) -> TxOpts {
    let mut opts = TxOpts::default();
    opts.with_isolation_level(isolation)
        .with_readonly(read_only)
        .with_consistent_snapshot(read_only);
    opts
}

/// The MySQL/MariaDB backend.
pub(crate) struct Mysql {
    pool: Pool,
}

fn builder(
    endpoint: &MysqlEndpoint,
    ssl: &Option<mysql_async::SslOpts>,
    database: Option<&str>,
) -> OptsBuilder {
    let mut builder = OptsBuilder::default()
        .ssl_opts(ssl.clone())
        .user(Some(endpoint.user.clone()))
        .pass(endpoint.password.clone())
        .db_name(database.map(str::to_string))
        .prefer_socket(false)
        .conn_ttl(Some(Duration::from_secs(300)));
    match &endpoint.address {
        MysqlAddress::Tcp { host, port } => {
            builder = builder.ip_or_hostname(host.clone()).tcp_port(*port);
        }
        MysqlAddress::Unix(path) => {
            builder = builder.socket(Some(path.clone()));
        }
    }
    builder
}

fn connect_err(e: mysql_async::Error) -> SqlError {
    SqlError::Connect {
        backend: "mysql",
        message: e.to_string(),
    }
}

/// Connects, creating the database and the tables if missing.
pub(crate) async fn open(endpoint: &MysqlEndpoint, files: &TlsFiles) -> Result<Mysql, SqlError> {
    let ssl = match endpoint.tls {
        MysqlTls::Off => None,
        MysqlTls::Unset if !files.any() => None,
        MysqlTls::Unset | MysqlTls::Verify => Some(mysql_ssl_opts(Verification::Full, files)?),
        MysqlTls::SkipVerify => Some(mysql_ssl_opts(Verification::None, files)?),
    };
    if ssl.is_some() {
        // mysql_async builds its rustls configuration with the process's default crypto
        // provider: make sure there is one (an error means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // As kine: create the database if it is missing (needs the privilege; without it the
    // database must exist, which the connection below finds out).
    match mysql_async::Conn::new(Opts::from(builder(endpoint, &ssl, None))).await {
        Ok(mut conn) => {
            let create = format!("CREATE DATABASE IF NOT EXISTS `{}`", endpoint.database);
            if let Err(e) = conn.query_drop(create).await {
                tracing::debug!(error = %e, "cannot create the mysql database");
            }
            let _ = conn.disconnect().await;
        }
        Err(e) => return Err(connect_err(e)),
    }
    let constraints = PoolConstraints::new(0, POOL_SIZE).ok_or_else(|| SqlError::Connect {
        backend: "mysql",
        message: "invalid pool size".into(),
    })?;
    let opts = builder(endpoint, &ssl, Some(&endpoint.database))
        .pool_opts(PoolOpts::default().with_constraints(constraints));
    let pool = Pool::new(Opts::from(opts));
    let mut conn = pool.get_conn().await.map_err(connect_err)?;
    for statement in SCHEMA {
        conn.query_drop(statement).await.map_err(connect_err)?;
    }
    drop(conn);
    tracing::debug!(database = %endpoint.database, "opened mysql store");
    Ok(Mysql { pool })
}

fn log_row(mut row: Row) -> Result<LogRow, StoreError> {
    Ok(LogRow {
        id: col(&mut row, 0)?,
        name: col(&mut row, 1)?,
        created: col::<i64>(&mut row, 2)? != 0,
        deleted: col::<i64>(&mut row, 3)? != 0,
        create_revision: col(&mut row, 4)?,
        prev_revision: col(&mut row, 5)?,
        value: col(&mut row, 6)?,
        prev_value: col(&mut row, 7)?,
    })
}

#[async_trait::async_trait]
impl Backend for Mysql {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    async fn apply(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<KeyValue, StoreError>>, ApplyError> {
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        let mut tx = conn
            .start_transaction(tx_opts(IsolationLevel::ReadCommitted, false))
            .await
            .map_err(my_err)?;
        // The row lock serializes writers of every server: revisions are handed out and
        // committed in order, and each compare-and-swap sees every earlier write.
        let first: i64 = tx
            .query_first(SQL_LOCK_REVISION)
            .await
            .map_err(my_err)?
            .ok_or_else(|| StoreError::Backend("mysql: revision counter missing".into()))?;
        // The newest row of every key of the batch, in one statement.
        let mut names: Vec<&str> = writes.iter().map(Write::key).collect();
        names.sort_unstable();
        names.dedup();
        let mut latest = HashMap::with_capacity(names.len());
        for chunk in names.chunks(LATEST_CHUNK) {
            let sql = vec![SQL_LATEST_ONE; chunk.len()].join(" UNION ALL ");
            let params: Vec<mysql_async::Value> =
                chunk.iter().map(|name| name.as_bytes().into()).collect();
            let rows: Vec<Row> = tx.exec(sql, params).await.map_err(my_err)?;
            for mut row in rows {
                let name = key_from_bytes(col(&mut row, 0)?)?;
                latest.insert(
                    name,
                    LatestRow {
                        id: col(&mut row, 1)?,
                        deleted: col::<i64>(&mut row, 2)? != 0,
                        create_revision: col(&mut row, 3)?,
                        value: col(&mut row, 4)?,
                    },
                );
            }
        }
        let (outcomes, rows) = plan_batch(writes, &mut latest, first + 1);
        // Multi-row inserts, each below the server's packet limit.
        let mut pending: Vec<mysql_async::Value> = Vec::new();
        let mut pending_rows = 0;
        let mut pending_bytes = 0;
        for (i, row) in rows.iter().enumerate() {
            pending.extend([
                row.id.into(),
                row.kv.key.as_bytes().into(),
                i64::from(row.created).into(),
                i64::from(row.deleted).into(),
                row.create_revision.into(),
                row.prev_revision.into(),
                row.value.as_slice().into(),
            ]);
            pending_rows += 1;
            pending_bytes += row.value.len() + row.kv.key.len();
            if i + 1 == rows.len() || pending_bytes >= INSERT_BYTES || pending_rows >= 256 {
                let sql = format!(
                    "{SQL_INSERT_MANY} {}",
                    vec!["(?, ?, ?, ?, ?, ?, ?)"; pending_rows].join(", ")
                );
                tx.exec_drop(sql, std::mem::take(&mut pending))
                    .await
                    .map_err(my_err)?;
                pending_rows = 0;
                pending_bytes = 0;
            }
        }
        if let Some(last) = rows.last() {
            tx.exec_drop(SQL_SET_REVISION, (last.id,))
                .await
                .map_err(my_err)?;
        }
        tx.commit().await.map_err(|e| ApplyError {
            error: my_err(e),
            at_commit: true,
        })?;
        Ok(outcomes)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        let row: Option<Row> = conn
            .exec_first(SQL_LATEST, (key.as_bytes().to_vec(),))
            .await
            .map_err(my_err)?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        if col::<i64>(&mut row, 1)? != 0 {
            return Ok(None);
        }
        Ok(Some(KeyValue {
            key: key.to_string(),
            mod_revision: col(&mut row, 0)?,
            create_revision: col(&mut row, 2)?,
            value: col(&mut row, 3)?,
        }))
    }

    async fn list(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError> {
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        let mut tx = conn
            .start_transaction(tx_opts(IsolationLevel::RepeatableRead, true))
            .await
            .map_err(my_err)?;
        let (current, compacted): (i64, i64) = tx
            .query_first(SQL_REVISIONS)
            .await
            .map_err(my_err)?
            .ok_or_else(|| StoreError::Backend("mysql: revisions missing".into()))?;
        let revision = read_revision(revision, current, compacted)?;
        let sql_limit = limit.map_or(i64::MAX, |l| to_i64(l).saturating_add(1));
        let rows: Vec<Row> = tx
            .exec(
                SQL_LIST,
                (
                    range.lower.clone(),
                    range.upper.clone(),
                    revision,
                    revision,
                    sql_limit,
                ),
            )
            .await
            .map_err(my_err)?;
        let mut items = Vec::with_capacity(rows.len());
        for mut row in rows {
            items.push(KeyValue {
                mod_revision: col(&mut row, 0)?,
                key: key_from_bytes(col(&mut row, 1)?)?,
                create_revision: col(&mut row, 2)?,
                value: col(&mut row, 3)?,
            });
        }
        let (mut more, mut remaining) = (false, 0);
        if let Some(limit) = limit {
            if items.len() > limit {
                items.truncate(limit);
                more = true;
                let total: i64 = tx
                    .exec_first(
                        SQL_LIST_COUNT,
                        (range.lower.clone(), range.upper.clone(), revision, revision),
                    )
                    .await
                    .map_err(my_err)?
                    .unwrap_or(0);
                remaining = usize::try_from(total).unwrap_or(0).saturating_sub(limit);
            }
        }
        tx.commit().await.map_err(my_err)?;
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
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        let mut tx = conn
            .start_transaction(tx_opts(IsolationLevel::RepeatableRead, true))
            .await
            .map_err(my_err)?;
        let (current, compacted): (i64, i64) = tx
            .query_first(SQL_REVISIONS)
            .await
            .map_err(my_err)?
            .ok_or_else(|| StoreError::Backend("mysql: revisions missing".into()))?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let bound = upto.map_or(current, |upto| upto.min(current));
        let mut events = Vec::new();
        if bound > after {
            let rows: Vec<Row> = tx
                .exec(
                    SQL_CHANGES,
                    (
                        after,
                        bound,
                        range.lower.clone(),
                        range.upper.clone(),
                        to_i64(limit),
                    ),
                )
                .await
                .map_err(my_err)?;
            for row in rows {
                events.push(log_row(row)?.into_event()?);
            }
        }
        tx.commit().await.map_err(my_err)?;
        let through = page_end(&events, limit, after, bound);
        Ok(Changes { events, through })
    }

    async fn revisions(&self) -> Result<(Revision, Revision), StoreError> {
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        conn.query_first(SQL_REVISIONS)
            .await
            .map_err(my_err)?
            .ok_or_else(|| StoreError::Backend("mysql: revisions missing".into()))
    }

    async fn mark_compacted(&self, revision: Revision) -> Result<Option<Revision>, StoreError> {
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        let mut tx = conn
            .start_transaction(tx_opts(IsolationLevel::ReadCommitted, false))
            .await
            .map_err(my_err)?;
        let compacted: i64 = tx
            .query_first("SELECT value FROM rk3s_meta WHERE name = 'compacted' FOR UPDATE")
            .await
            .map_err(my_err)?
            .unwrap_or(0);
        let current: i64 = tx
            .query_first("SELECT value FROM rk3s_meta WHERE name = 'revision'")
            .await
            .map_err(my_err)?
            .unwrap_or(0);
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= compacted {
            return Ok(None);
        }
        tx.exec_drop(
            "UPDATE rk3s_meta SET value = ? WHERE name = 'compacted'",
            (revision,),
        )
        .await
        .map_err(my_err)?;
        let first: i64 = tx
            .query_first("SELECT COALESCE(MIN(id), 0) FROM rk3s_kv")
            .await
            .map_err(my_err)?
            .unwrap_or(0);
        tx.commit().await.map_err(my_err)?;
        Ok(Some(first))
    }

    async fn log_len(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        Ok(conn
            .query_first("SELECT COUNT(*) FROM rk3s_kv")
            .await
            .map_err(my_err)?
            .unwrap_or(0))
    }

    async fn compact_range(
        &self,
        from: Revision,
        to: Revision,
        target: Revision,
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool.get_conn().await.map_err(my_err)?;
        let mut tx = conn
            .start_transaction(tx_opts(IsolationLevel::ReadCommitted, false))
            .await
            .map_err(my_err)?;
        tx.exec_drop(SQL_COMPACT_SUPERSEDED, (target, from, to))
            .await
            .map_err(my_err)?;
        let superseded = tx.affected_rows();
        tx.exec_drop(SQL_COMPACT_TOMBSTONES, (from, to))
            .await
            .map_err(my_err)?;
        let tombstones = tx.affected_rows();
        tx.commit().await.map_err(my_err)?;
        Ok(superseded + tombstones)
    }
}
