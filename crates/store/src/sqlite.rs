//! The embedded default datastore: one SQLite file, in the spirit of k3s's kine.
//!
//! # Schema
//!
//! One append-only log table, `kv`, whose `INTEGER PRIMARY KEY AUTOINCREMENT` is the
//! revision. Every write appends one row:
//!
//! | column          | meaning                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | `id`            | the revision of this write                                     |
//! | `key`           | the key, as a BLOB (so comparisons are plain byte comparisons) |
//! | `created`       | the key's create revision                                      |
//! | `deleted`       | 1 for a deletion (tombstone), else 0                           |
//! | `value`         | the new value; for a tombstone, the last value before deletion |
//! | `prev_revision` | the revision of the key's previous row (0 for a creation)      |
//!
//! An index on `(key, id)` serves "latest row of a key", "latest rows under a prefix (as
//! of a revision)"; the primary key serves "events after revision R". A `meta` table holds
//! the compacted revision and the schema version ([`schema`]: a newer binary upgrades an
//! older store, an older binary refuses a newer one). `AUTOINCREMENT` (and compaction never deleting the newest row)
//! make sure revisions are never reused, even across restarts.
//!
//! # Writes
//!
//! One writer thread owns the only write connection. It drains every queued request,
//! applies them in one transaction (each request gets its own revision and its own
//! compare-and-swap check), commits once (WAL, `synchronous=FULL`), then publishes the
//! events and answers each request. A write is acknowledged only after its commit.
//!
//! # Reads
//!
//! Reads use a small pool of separate read-only connections on blocking threads, so they
//! never wait for the writer (WAL readers see the last committed snapshot).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{broadcast, oneshot};

use crate::{
    Event, EventKind, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
};

/// Most write requests applied in one transaction.
const MAX_BATCH: usize = 1024;
/// Revisions examined per compaction transaction.
const COMPACT_CHUNK: i64 = 2000;
/// Batches of events the broadcast channel holds for slow watchers.
const EVENT_CAPACITY: usize = 4096;
/// Rows read per history page of a watch.
const WATCH_PAGE: usize = 1000;
/// Read connections (and reads running at once).
const MAX_READERS: usize = 4;

/// The size (bytes) a checkpointed WAL file is truncated to when SQLite reuses it.
const WAL_SIZE_LIMIT: i64 = 64 << 20;
/// Free pages returned to the file system after each compaction (8 MiB of 4 KiB pages).
const VACUUM_PAGES_PER_ROUND: i64 = 2048;

/// k3s's default compaction interval (5 minutes), for [`SqliteStore::spawn_compactor`].
pub const DEFAULT_COMPACT_INTERVAL: Duration = Duration::from_secs(300);
/// k3s's default number of revisions kept by compaction, for
/// [`SqliteStore::spawn_compactor`].
pub const DEFAULT_COMPACT_KEEP: i64 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL,
    prev_revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_key_id ON kv (key, id);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1);
INSERT OR IGNORE INTO meta (name, value) VALUES ('compacted_revision', 0);
";

const SQL_LATEST: &str =
    "SELECT id, created, deleted, value FROM kv WHERE key = ?1 ORDER BY id DESC LIMIT 1";
const SQL_INSERT: &str = "INSERT INTO kv (id, key, created, deleted, value, prev_revision) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SQL_MAX_REVISION: &str = "SELECT COALESCE(MAX(id), 0) FROM kv";
const SQL_COMPACTED: &str = "SELECT value FROM meta WHERE name = 'compacted_revision'";
// Walks the (key, id) index in key order (no sort, stops at the limit) and keeps each
// key's newest row at or below the read revision.
const SQL_LIST: &str = "SELECT k.id, k.key, k.created, k.value FROM kv AS k \
     WHERE k.key >= ?1 AND k.key < ?2 AND k.id <= ?3 \
     AND k.id = (SELECT MAX(n.id) FROM kv AS n WHERE n.key = k.key AND n.id <= ?3) \
     AND k.deleted = 0 ORDER BY k.key LIMIT ?4";
const SQL_LIST_COUNT: &str = "SELECT COUNT(*) FROM kv AS k \
     WHERE k.key >= ?1 AND k.key < ?2 AND k.id <= ?3 \
     AND k.id = (SELECT MAX(n.id) FROM kv AS n WHERE n.key = k.key AND n.id <= ?3) \
     AND k.deleted = 0";
// `NOT INDEXED` keeps the scan on the revision (rowid) range: watches start from recent
// revisions, and the key index would scan the whole prefix instead.
const SQL_HISTORY: &str = "SELECT r.id, r.key, r.created, r.deleted, r.value, r.prev_revision, \
     p.created, p.value \
     FROM kv AS r NOT INDEXED LEFT JOIN kv AS p ON p.id = r.prev_revision AND r.deleted = 0 \
     WHERE r.id > ?1 AND r.key >= ?2 AND r.key < ?3 ORDER BY r.id LIMIT ?4";
const SQL_COMPACT_CHUNK: &str = "DELETE FROM kv WHERE id >= ?1 AND id < ?2 \
     AND id < (SELECT MAX(id) FROM kv) \
     AND (deleted = 1 OR EXISTS \
          (SELECT 1 FROM kv AS n WHERE n.key = kv.key AND n.id > kv.id AND n.id <= ?3))";

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

fn closed() -> StoreError {
    StoreError::Backend("sqlite store is closed".to_string())
}

fn key_from_bytes(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Backend("stored key is not UTF-8".into()))
}

/// The smallest byte string greater than every string that starts with `prefix`
/// (`None`: no such bound, every key from `prefix` on matches).
fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

/// The `[lower, upper)` byte range of keys starting with `prefix`. Keys are UTF-8, which
/// never contains the byte 0xFF, so `[0xFF]` bounds every key when there is no upper
/// bound.
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let lower = prefix.as_bytes().to_vec();
    let upper = prefix_upper_bound(&lower).unwrap_or_else(|| vec![u8::MAX]);
    (lower, upper)
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Create {
        key: String,
        value: Vec<u8>,
        reply: Reply<KeyValue>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
        reply: Reply<KeyValue>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
        reply: Reply<KeyValue>,
    },
    Compact {
        revision: Revision,
        reply: Reply<()>,
    },
}

/// State shared by the store handle, the writer thread and the watchers.
struct Shared {
    current: AtomicI64,
    compacted: AtomicI64,
    commits: AtomicU64,
    writes: AtomicU64,
    events: broadcast::Sender<Arc<[Event]>>,
}

/// Counters of the writer, for tests and benchmarks.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Write transactions committed (one per batch).
    pub commits: u64,
    /// Write requests answered (successful or not).
    pub writes: u64,
}

/// A pool of read connections.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Bounds the reads running at once, and so the open connections.
    permits: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    fn open_conn(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(db_err)?;
        Ok(conn)
    }

    fn run<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open_conn()?,
        };
        let result = f(&mut conn);
        // A connection that hit a backend error may be broken: do not keep it.
        if !matches!(result, Err(StoreError::Backend(_))) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_READERS {
                idle.push(conn);
            }
        }
        result
    }
}

async fn read<R, F>(pool: &Arc<ReadPool>, f: F) -> Result<R, StoreError>
where
    R: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
{
    let permit = Arc::clone(&pool.permits)
        .acquire_owned()
        .await
        .map_err(|_| closed())?;
    let pool = Arc::clone(pool);
    tokio::task::spawn_blocking(move || {
        let result = pool.run(f);
        drop(permit);
        result
    })
    .await
    .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
}

/// The embedded SQLite datastore. See the [module documentation](self).
///
/// Backend details of the [`Store`] contract:
/// - `list` with `revision: Some(r)` for `r <= 0` reads the latest state, like `None`;
/// - `watch` from a revision above the current one waits for it (no `FutureRevision`);
///   a watcher more than 4096 write batches behind gets `Lagged` and its stream ends;
/// - `compact` is a no-op at or below the compacted revision, and resolves once the
///   history rows are deleted; `FutureRevision` above the current revision.
///
/// Dropping the store stops its writer thread (after the queued writes are done) and
/// closes the database; live watches then end.
pub struct SqliteStore {
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    readers: Arc<ReadPool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .field(
                "current_revision",
                &self.shared.current.load(Ordering::Acquire),
            )
            .finish()
    }
}

impl SqliteStore {
    /// Opens the database file at `path` (synchronously: it creates the parent directory,
    /// the file and the schema if missing, and recovers the WAL otherwise), and starts the
    /// writer thread. Needs no tokio runtime; the store's methods need one.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with_event_capacity(path, EVENT_CAPACITY)
    }

    /// [`SqliteStore::open`] with a given watch buffer: how many write batches a watcher
    /// may fall behind before it gets [`StoreError::Lagged`].
    #[doc(hidden)]
    pub fn open_with_event_capacity(
        path: &Path,
        event_capacity: usize,
    ) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!("creating {}: {e}", parent.display()))
                })?;
            }
        }
        let mut conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        // A store written by a newer binary is refused before anything touches it.
        let stored_schema = schema::check_not_newer(&conn, schema::SCHEMA_VERSION)?;
        // Free pages go back to the file system after compaction (see `housekeeping`):
        // new stores are created with incremental auto-vacuum; an older store is
        // converted once (VACUUM rewrites the file).
        let auto_vacuum: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
            .map_err(db_err)?;
        if auto_vacuum != 2 {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(db_err)?;
            let has_tables: i64 = conn
                .query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| row.get(0))
                .map_err(db_err)?;
            if has_tables > 0 {
                tracing::info!(path = %path.display(), "converting the datastore to incremental auto-vacuum (once)");
                conn.execute_batch("VACUUM").map_err(db_err)?;
            }
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "sqlite: cannot enable WAL mode (journal mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        // A checkpointed WAL is cut back to this size when it is reused.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        match stored_schema {
            None => schema::set_version(&conn, schema::SCHEMA_VERSION)?,
            Some(_) => {
                schema::migrate(&mut conn, schema::MIGRATIONS, schema::SCHEMA_VERSION)?;
            }
        }
        let current: i64 = conn
            .query_row(
                "SELECT MAX(COALESCE((SELECT MAX(id) FROM kv), 0), \
                 COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'kv'), 0))",
                [],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        let compacted: i64 = conn
            .query_row(SQL_COMPACTED, [], |row| row.get(0))
            .map_err(db_err)?;

        let (events, _) = broadcast::channel(event_capacity.max(1));
        let shared = Arc::new(Shared {
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            events,
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            shared: Arc::clone(&shared),
            next_revision: current + 1,
            compaction: None,
        };
        let handle = std::thread::Builder::new()
            .name("rk3s-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), current, compacted, "opened sqlite store");
        Ok(SqliteStore {
            requests: Some(tx),
            writer: Some(handle),
            shared,
            readers: Arc::new(ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            }),
        })
    }

    /// Starts a tokio task that, every `interval`, compacts history older than
    /// `keep_revisions` revisions before the current one (k3s: every 5 minutes, keeping
    /// 1000 revisions; see [`DEFAULT_COMPACT_INTERVAL`] and [`DEFAULT_COMPACT_KEEP`]).
    /// The task holds only a weak reference and ends once the store is dropped (or when
    /// the returned handle is aborted). Must be called inside a tokio runtime.
    pub fn spawn_compactor(
        self: &Arc<Self>,
        interval: Duration,
        keep_revisions: i64,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate
            loop {
                ticker.tick().await;
                let Some(store) = weak.upgrade() else { break };
                let target = store.shared.current.load(Ordering::Acquire) - keep_revisions.max(0);
                if target > store.shared.compacted.load(Ordering::Acquire) {
                    match store.compact(target).await {
                        Ok(()) => tracing::debug!(revision = target, "compacted sqlite store"),
                        Err(e) => tracing::warn!(error = %e, "sqlite store compaction failed"),
                    }
                }
            }
        })
    }

    /// Writer counters (batching shows as `commits < writes`).
    #[doc(hidden)]
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            commits: self.shared.commits.load(Ordering::Acquire),
            writes: self.shared.writes.load(Ordering::Acquire),
        }
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .as_ref()
            .ok_or_else(closed)?
            .send(make(tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel stops the writer once it has answered the queued requests.
        self.requests.take();
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!("sqlite store writer thread panicked");
            }
        }
    }
}

/// One row of the log, as read for a watch.
struct HistoryRow {
    id: i64,
    key: Vec<u8>,
    created: i64,
    deleted: bool,
    value: Vec<u8>,
    prev_revision: i64,
    prev_created: Option<i64>,
    prev_value: Option<Vec<u8>>,
}

impl HistoryRow {
    fn into_event(self) -> Result<Event, StoreError> {
        let key = key_from_bytes(self.key)?;
        if self.deleted {
            let prev = KeyValue {
                key: key.clone(),
                value: self.value.clone(),
                create_revision: self.created,
                mod_revision: self.prev_revision,
            };
            return Ok(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key,
                    value: self.value,
                    create_revision: self.created,
                    mod_revision: self.id,
                },
                prev: Some(prev),
            });
        }
        let prev = match (self.prev_revision, self.prev_created, self.prev_value) {
            (rev, Some(created), Some(value)) if rev > 0 => Some(KeyValue {
                key: key.clone(),
                value,
                create_revision: created,
                mod_revision: rev,
            }),
            _ => None,
        };
        Ok(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                value: self.value,
                create_revision: self.created,
                mod_revision: self.id,
            },
            prev,
        })
    }
}

/// Reads up to [`WATCH_PAGE`] events under `[lower, upper)` with revision > `after`.
/// Fails with `Compacted` if history after `after` may have been removed.
fn read_history(
    conn: &mut Connection,
    lower: &[u8],
    upper: &[u8],
    after: Revision,
) -> Result<Vec<Event>, StoreError> {
    let tx = conn.transaction().map_err(db_err)?;
    let compacted: i64 = tx
        .prepare_cached(SQL_COMPACTED)
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .map_err(db_err)?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let mut stmt = tx.prepare_cached(SQL_HISTORY).map_err(db_err)?;
    let rows = stmt
        .query_map(params![after, lower, upper, WATCH_PAGE as i64], |row| {
            Ok(HistoryRow {
                id: row.get(0)?,
                key: row.get(1)?,
                created: row.get(2)?,
                deleted: row.get::<_, i64>(3)? != 0,
                value: row.get(4)?,
                prev_revision: row.get(5)?,
                prev_created: row.get(6)?,
                prev_value: row.get(7)?,
            })
        })
        .map_err(db_err)?;
    let mut events = Vec::new();
    for row in rows {
        events.push(row.map_err(db_err)?.into_event()?);
    }
    Ok(events)
}

fn read_get(conn: &mut Connection, key: &str) -> Result<Option<KeyValue>, StoreError> {
    Ok(match latest(conn, key).map_err(db_err)? {
        Some(row) if !row.deleted => Some(KeyValue {
            key: key.to_string(),
            value: row.value,
            create_revision: row.created,
            mod_revision: row.id,
        }),
        _ => None,
    })
}

fn read_list(
    conn: &mut Connection,
    prefix: &str,
    opts: &ListOptions,
) -> Result<ListResult, StoreError> {
    let (mut lower, upper) = prefix_range(prefix);
    if let Some(start_after) = &opts.start_after {
        // The smallest key strictly greater than `start_after` is `start_after + "\0"`.
        let mut successor = start_after.as_bytes().to_vec();
        successor.push(0);
        if successor > lower {
            lower = successor;
        }
    }
    let tx = conn.transaction().map_err(db_err)?;
    let current: i64 = tx
        .prepare_cached(SQL_MAX_REVISION)
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .map_err(db_err)?;
    let compacted: i64 = tx
        .prepare_cached(SQL_COMPACTED)
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .map_err(db_err)?;
    let revision = match opts.revision {
        Some(requested) if requested > 0 => {
            if requested < compacted {
                return Err(StoreError::Compacted {
                    requested,
                    compacted,
                });
            }
            if requested > current {
                return Err(StoreError::FutureRevision { requested, current });
            }
            requested
        }
        _ => current,
    };
    let limit = opts.limit.filter(|l| *l > 0);
    // Ask for one more than the limit to learn whether more keys match.
    let sql_limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX - 1) + 1);
    let mut items = Vec::new();
    {
        let mut stmt = tx.prepare_cached(SQL_LIST).map_err(db_err)?;
        let rows = stmt
            .query_map(params![lower, upper, revision, sql_limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (id, key, created, value) = row.map_err(db_err)?;
            items.push(KeyValue {
                key: key_from_bytes(key)?,
                value,
                create_revision: created,
                mod_revision: id,
            });
        }
    }
    let mut more = false;
    let mut remaining = 0;
    if let Some(limit) = limit {
        if items.len() > limit {
            items.truncate(limit);
            more = true;
            let total: i64 = tx
                .prepare_cached(SQL_LIST_COUNT)
                .and_then(|mut stmt| {
                    stmt.query_row(params![lower, upper, revision], |row| row.get(0))
                })
                .map_err(db_err)?;
            remaining = usize::try_from(total).unwrap_or(0).saturating_sub(limit);
        }
    }
    Ok(ListResult {
        items,
        revision,
        more,
        remaining,
    })
}

/// A compaction in progress: rows in `[cursor, target]` are still to be examined.
struct Compaction {
    target: Revision,
    cursor: Revision,
    replies: Vec<Reply<()>>,
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    next_revision: Revision,
    compaction: Option<Compaction>,
}

/// The result of one write request inside a batch.
type Outcome = Result<(KeyValue, Event), StoreError>;

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut batch = Vec::new();
        loop {
            // With a compaction under way, do not sleep: interleave its chunks with batches.
            let first = if self.compaction.is_some() {
                match requests.try_recv() {
                    Ok(request) => Some(request),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            } else {
                match requests.recv() {
                    Ok(request) => Some(request),
                    Err(_) => break,
                }
            };
            if let Some(first) = first {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
            }
            let mut writes = Vec::with_capacity(batch.len());
            for request in batch.drain(..) {
                match request {
                    Request::Compact { revision, reply } => self.start_compaction(revision, reply),
                    other => writes.push(other),
                }
            }
            if !writes.is_empty() {
                self.apply_batch(writes);
            }
            if self.compaction.is_some() {
                self.compaction_step();
            }
        }
        tracing::debug!("sqlite store writer stopped");
    }

    fn apply_batch(&mut self, writes: Vec<Request>) {
        let count = writes.len() as u64;
        match apply_in_transaction(&mut self.conn, &writes, self.next_revision) {
            Ok((outcomes, next_revision)) => {
                self.next_revision = next_revision;
                self.shared
                    .current
                    .store(next_revision - 1, Ordering::Release);
                self.shared.commits.fetch_add(1, Ordering::AcqRel);
                self.shared.writes.fetch_add(count, Ordering::AcqRel);
                let events: Vec<Event> = outcomes
                    .iter()
                    .filter_map(|o| o.as_ref().ok().map(|(_, event)| event.clone()))
                    .collect();
                if !events.is_empty() {
                    // No receiver (no watcher) is not an error.
                    let _ = self.shared.events.send(Arc::from(events));
                }
                for (request, outcome) in writes.into_iter().zip(outcomes) {
                    reply_write(request, outcome.map(|(kv, _)| kv));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite store write batch failed");
                self.shared.writes.fetch_add(count, Ordering::AcqRel);
                // Never reuse a revision that might have reached the disk.
                if let Ok(max) = self.conn.query_row(
                    "SELECT MAX(COALESCE((SELECT MAX(id) FROM kv), 0), \
                     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'kv'), 0))",
                    [],
                    |row| row.get::<_, i64>(0),
                ) {
                    self.next_revision = self.next_revision.max(max + 1);
                }
                let message = format!("sqlite: {e}");
                for request in writes {
                    reply_write(request, Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }

    fn start_compaction(&mut self, revision: Revision, reply: Reply<()>) {
        let current = self.shared.current.load(Ordering::Acquire);
        if revision > current {
            let _ = reply.send(Err(StoreError::FutureRevision {
                requested: revision,
                current,
            }));
            return;
        }
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if revision <= compacted {
            // Already compacted; wait for the rows to be gone if that is still under way.
            match &mut self.compaction {
                Some(c) => c.replies.push(reply),
                None => {
                    let _ = reply.send(Ok(()));
                }
            }
            return;
        }
        // Record the compacted revision first: from now on reads below it fail, so
        // nobody can observe the partly deleted history.
        let recorded = self
            .conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE name = 'compacted_revision'",
                [revision],
            )
            .and_then(|_| {
                self.conn
                    .query_row("SELECT COALESCE(MIN(id), 0) FROM kv", [], |row| {
                        row.get::<_, i64>(0)
                    })
            });
        let start = match recorded {
            Ok(start) => start,
            Err(e) => {
                let _ = reply.send(Err(db_err(e)));
                return;
            }
        };
        self.shared.compacted.store(revision, Ordering::Release);
        match &mut self.compaction {
            Some(c) => {
                // Rows already examined may now be superseded: examine them again.
                c.target = revision;
                c.cursor = start;
                c.replies.push(reply);
            }
            None => {
                self.compaction = Some(Compaction {
                    target: revision,
                    cursor: start,
                    replies: vec![reply],
                })
            }
        }
    }

    /// After a compaction: hand free pages back to the file system (a bounded number per
    /// round, so a write batch never waits long) and checkpoint and empty the WAL unless
    /// readers are in it, so the database and its WAL keep a steady size under churn.
    fn housekeeping(&mut self) {
        // The pragma frees one page per step: step it to the end.
        let vacuum = self
            .conn
            .prepare(&format!(
                "PRAGMA incremental_vacuum({VACUUM_PAGES_PER_ROUND})"
            ))
            .and_then(|mut stmt| {
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            });
        if let Err(e) = vacuum {
            tracing::warn!(error = %e, "sqlite incremental vacuum failed");
        }
        // TRUNCATE empties the WAL file; with readers in it, it gives up at once (no busy
        // wait here: writes queue behind this thread) and the next round tries again.
        let _ = self.conn.busy_timeout(Duration::ZERO);
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            });
        let _ = self.conn.busy_timeout(Duration::from_secs(5));
        match checkpoint {
            Ok((busy, log, done)) => {
                tracing::debug!(busy, log, checkpointed = done, "sqlite WAL checkpoint")
            }
            Err(e) => tracing::debug!(error = %e, "sqlite WAL checkpoint deferred"),
        }
    }

    fn compaction_step(&mut self) {
        let Some(c) = self.compaction.as_mut() else {
            return;
        };
        let end = (c.cursor + COMPACT_CHUNK).min(c.target + 1);
        let result = self
            .conn
            .execute(SQL_COMPACT_CHUNK, params![c.cursor, end, c.target]);
        match result {
            Ok(deleted) => {
                tracing::trace!(from = c.cursor, to = end, deleted, "compaction chunk");
                c.cursor = end;
                if c.cursor > c.target {
                    self.housekeeping();
                    if let Some(done) = self.compaction.take() {
                        for reply in done.replies {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite store compaction failed");
                if let Some(failed) = self.compaction.take() {
                    let message = format!("sqlite: {e}");
                    for reply in failed.replies {
                        let _ = reply.send(Err(StoreError::Backend(message.clone())));
                    }
                }
            }
        }
    }
}

fn reply_write(request: Request, outcome: Result<KeyValue, StoreError>) {
    match request {
        Request::Create { reply, .. }
        | Request::Update { reply, .. }
        | Request::Delete { reply, .. } => {
            // The caller may have gone away; the write stands anyway.
            let _ = reply.send(outcome);
        }
        Request::Compact { reply, .. } => {
            let _ = reply.send(outcome.map(|_| ()));
        }
    }
}

/// Applies `writes` in one transaction, numbering successful writes from `first_revision`.
/// Returns each request's outcome and the next free revision, after the commit.
fn apply_in_transaction(
    conn: &mut Connection,
    writes: &[Request],
    first_revision: Revision,
) -> Result<(Vec<Outcome>, Revision), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut revision = first_revision;
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in writes {
        let outcome = apply_one(&tx, write, revision)?;
        if outcome.is_ok() {
            revision += 1;
        }
        outcomes.push(outcome);
    }
    tx.commit()?;
    Ok((outcomes, revision))
}

/// The newest row of a key.
struct LatestRow {
    id: Revision,
    created: Revision,
    deleted: bool,
    value: Vec<u8>,
}

/// The newest row of `key` (a tombstone if the key is deleted).
fn latest(conn: &Connection, key: &str) -> Result<Option<LatestRow>, rusqlite::Error> {
    conn.prepare_cached(SQL_LATEST)?
        .query_row([key.as_bytes()], |row| {
            Ok(LatestRow {
                id: row.get(0)?,
                created: row.get(1)?,
                deleted: row.get::<_, i64>(2)? != 0,
                value: row.get(3)?,
            })
        })
        .optional()
}

/// The live (not deleted) newest row of `key`.
fn live(conn: &Connection, key: &str) -> Result<Option<LatestRow>, rusqlite::Error> {
    Ok(latest(conn, key)?.filter(|row| !row.deleted))
}

fn apply_one(
    conn: &Connection,
    write: &Request,
    revision: Revision,
) -> Result<Outcome, rusqlite::Error> {
    let mut insert = conn.prepare_cached(SQL_INSERT)?;
    match write {
        Request::Create { key, value, .. } => {
            if live(conn, key)?.is_some() {
                return Ok(Err(StoreError::AlreadyExists(key.clone())));
            }
            insert.execute(params![revision, key.as_bytes(), revision, 0, value, 0])?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: revision,
                mod_revision: revision,
            };
            let event = Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: None,
            };
            Ok(Ok((kv, event)))
        }
        Request::Update {
            key,
            value,
            expected,
            ..
        } => {
            let Some(LatestRow {
                id: current,
                created,
                value: old_value,
                ..
            }) = live(conn, key)?
            else {
                return Ok(Err(StoreError::NotFound(key.clone())));
            };
            if current != *expected {
                return Ok(Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    current,
                }));
            }
            insert.execute(params![
                revision,
                key.as_bytes(),
                created,
                0,
                value,
                current
            ])?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: created,
                mod_revision: revision,
            };
            let prev = KeyValue {
                key: key.clone(),
                value: old_value,
                create_revision: created,
                mod_revision: current,
            };
            let event = Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: Some(prev),
            };
            Ok(Ok((kv, event)))
        }
        Request::Delete { key, expected, .. } => {
            let Some(LatestRow {
                id: current,
                created,
                value: old_value,
                ..
            }) = live(conn, key)?
            else {
                return Ok(Err(StoreError::NotFound(key.clone())));
            };
            if let Some(expected) = expected {
                if current != *expected {
                    return Ok(Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        current,
                    }));
                }
            }
            insert.execute(params![
                revision,
                key.as_bytes(),
                created,
                1,
                old_value,
                current
            ])?;
            let prev = KeyValue {
                key: key.clone(),
                value: old_value,
                create_revision: created,
                mod_revision: current,
            };
            let kv = KeyValue {
                mod_revision: revision,
                ..prev.clone()
            };
            let event = Event {
                kind: EventKind::Delete,
                kv: kv.clone(),
                prev: Some(prev),
            };
            Ok(Ok((kv, event)))
        }
        Request::Compact { .. } => Ok(Err(StoreError::Backend(
            "compaction is not a write".to_string(),
        ))),
    }
}

/// The state of one watch stream.
struct WatchState {
    pool: Arc<ReadPool>,
    prefix: String,
    lower: Vec<u8>,
    upper: Vec<u8>,
    /// The revision of the last event delivered (or queued).
    cursor: Revision,
    live: broadcast::Receiver<Arc<[Event]>>,
    pending: VecDeque<Event>,
    history_done: bool,
    finished: bool,
}

impl WatchState {
    fn queue_history(&mut self, page: Vec<Event>) {
        if page.len() < WATCH_PAGE {
            self.history_done = true;
        }
        if let Some(last) = page.last() {
            self.cursor = last.revision();
        }
        self.pending.extend(page);
    }

    async fn next(mut self) -> Option<(Result<Event, StoreError>, WatchState)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            if !self.history_done {
                let (lower, upper, after) = (self.lower.clone(), self.upper.clone(), self.cursor);
                match read(&self.pool, move |conn| {
                    read_history(conn, &lower, &upper, after)
                })
                .await
                {
                    Ok(page) => self.queue_history(page),
                    Err(e) => {
                        self.finished = true;
                        return Some((Err(e), self));
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    for event in batch.iter() {
                        if event.revision() > self.cursor
                            && event.kv.key.starts_with(self.prefix.as_str())
                        {
                            self.cursor = event.revision();
                            self.pending.push_back(event.clone());
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(prefix = %self.prefix, missed, "watcher lagged");
                    self.finished = true;
                    return Some((Err(StoreError::Lagged), self));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let key = key.to_string();
        self.submit(|reply| Request::Create { key, value, reply })
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        read(&self.readers, move |conn| read_get(conn, &key)).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_string();
        read(&self.readers, move |conn| read_list(conn, &prefix, &opts)).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        let key = key.to_string();
        self.submit(|reply| Request::Update {
            key,
            value,
            expected: expected_revision,
            reply,
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        let key = key.to_string();
        self.submit(|reply| Request::Delete {
            key,
            expected: expected_revision,
            reply,
        })
        .await
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if after_revision < compacted {
            return Err(StoreError::Compacted {
                requested: after_revision,
                compacted,
            });
        }
        // Subscribe before reading history: every event committed after the history
        // snapshot is then in the channel (duplicates are skipped by revision).
        let live = self.shared.events.subscribe();
        let (lower, upper) = prefix_range(prefix);
        let mut state = WatchState {
            pool: Arc::clone(&self.readers),
            prefix: prefix.to_string(),
            lower,
            upper,
            cursor: after_revision.max(0),
            live,
            pending: VecDeque::new(),
            history_done: false,
            finished: false,
        };
        // Read the first page now, so that `Compacted` is reported by `watch` itself.
        let (lower, upper, after) = (state.lower.clone(), state.upper.clone(), state.cursor);
        let page = read(&self.readers, move |conn| {
            read_history(conn, &lower, &upper, after)
        })
        .await?;
        state.queue_history(page);
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            WatchState::next,
        )))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.current.load(Ordering::Acquire))
    }

    /// Compacts history up to `revision`: rows at or below it that are superseded by a
    /// newer row at or below it, and tombstones at or below it, are deleted (never the
    /// newest row of the log), in chunks between write batches. Reads and watches below
    /// `revision` then fail with `Compacted`; reading at exactly `revision` still works.
    /// Compacting at or below the compacted revision is a no-op; above the current
    /// revision fails with `FutureRevision`. Resolves once the rows are gone.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.submit(|reply| Request::Compact { revision, reply })
            .await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.compacted.load(Ordering::Acquire))
    }
}

pub mod schema;
pub mod snapshot;

#[cfg(test)]
mod housekeeping_tests;
#[cfg(test)]
mod tests;
