//! PostgreSQL and MySQL/MariaDB backends of rk3s's datastore ([`rk3s_store::Store`]),
//! for servers that share an external database (k3s's `--datastore-endpoint`).
//!
//! Depends on no crate of ours but `rk3s-store`. Connect with [`SqlStore::connect`] and an
//! endpoint in one of k3s's forms (see [`dsn`]); the database and tables are created if
//! missing. TLS (rustls) as libpq's `sslmode` and the Go MySQL driver's `tls` say, with
//! CA and client certificate files from the endpoint or [`SqlStore::connect_with`].
//!
//! # Schema
//!
//! `rk3s_kv` is an append-only log with one row per revision (as kine's): `id` (the
//! revision, primary key: the order watches read in), `name` (the key, binary so that
//! comparisons are byte comparisons), `created`/`deleted` flags, `create_revision`,
//! `prev_revision` (the key's previous row, its tombstone for a re-creation, 0 for none)
//! and `value` (for a tombstone: the last value). Indexes: `(name, id)` for a key's
//! newest row and prefix scans at a revision, and the unique `(name, prev_revision)`.
//! `rk3s_meta` holds the revision counter (`revision`) and the compacted revision.
//!
//! # Ordering and compare-and-swap across servers
//!
//! Every write transaction first locks the counter row (`SELECT ... FOR UPDATE`), takes
//! the next revisions from it, checks each compare-and-swap against the key's newest row,
//! inserts, stores the counter and commits. So writers of all servers sharing the
//! database are serialized: revisions are handed out without holes and become visible
//! strictly in order (the next writer reads the counter only after the previous commit),
//! which is what lets a watcher read "rows with id > last" without ever missing a row
//! committed late under a lower id (kine's gap problem); a rolled-back write returns its
//! revision to the counter. Each compare-and-swap sees every earlier commit, so none is
//! lost across servers; the unique `(name, prev_revision)` index is a second guard (two
//! rows can never extend the same row of a key). One writer task per store batches the
//! queued writes into one transaction, so the lock costs one commit per batch.
//!
//! # Watches
//!
//! One poller task per store reads new rows (`id > cursor`, in pages, in one snapshot
//! with the counter) and broadcasts them to the store's watchers as batches that cover a
//! revision range; a watcher that sees a batch start after its own cursor (it fell
//! behind, or subscribed meanwhile) reads the gap from the database first, so events are
//! delivered in order without gap or duplicate, and a watcher is never dropped for being
//! slow (it fails only with `Compacted`). The poller wakes on this store's commits at
//! once; on other servers' commits through `LISTEN`/`NOTIFY` (PostgreSQL, a 5 s poll as a
//! safety net) or by polling every 100 ms while watchers exist (MySQL, which has no
//! notifications). Without watchers it reads nothing.
//!
//! # Compaction
//!
//! [`Store::compact`] records the compacted revision first (reads and watches below it
//! then fail with `Compacted`), then deletes superseded rows and tombstones at or below
//! it in chunks of [`COMPACT_CHUNK`] revisions, one transaction each.

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rk3s_store::{
    Event, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

mod backend;
pub mod dsn;
mod mysql;
mod postgres;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

use backend::{Backend, KeyRange, Write};
pub use dsn::{is_sql_endpoint, Endpoint};
pub use tls::{TlsFiles, Verification};

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 256;
/// Revisions examined per compaction transaction.
pub const COMPACT_CHUNK: i64 = 1000;
/// Rows read per page of a watch's history.
const WATCH_PAGE: usize = 1000;
/// Rows read per page by the poller.
const POLL_PAGE: usize = 1000;
/// Batches buffered for watchers (a watcher further behind reads from the database).
const BATCH_CAPACITY: usize = 1024;
/// How often PostgreSQL watchers poll besides `LISTEN`/`NOTIFY` (a safety net).
pub const POSTGRES_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How often MySQL watchers poll for other servers' writes.
pub const MYSQL_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// k3s's default compaction interval (5 minutes), for [`SqlStore::spawn_compactor`].
pub const DEFAULT_COMPACT_INTERVAL: Duration = Duration::from_secs(300);
/// k3s's default number of revisions kept by compaction.
pub const DEFAULT_COMPACT_KEEP: i64 = 1000;

/// Failures to open a SQL store.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The endpoint cannot be parsed.
    #[error("invalid datastore endpoint: {0}")]
    InvalidEndpoint(String),
    /// The TLS settings cannot be used (unreadable file, missing CA, ...).
    #[error("datastore TLS: {0}")]
    Tls(String),
    /// The server cannot be reached, or the database or tables cannot be created.
    #[error("{backend} datastore: {message}")]
    Connect {
        /// "postgres" or "mysql".
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A range of revisions and the events in it: every change with `from < revision <= to`.
struct Batch {
    from: Revision,
    to: Revision,
    events: Vec<Event>,
}

/// State shared by the store handle, its tasks and its watchers.
///
/// It holds no sender of the batches channel: the store and its poller hold those, so
/// the channel closes, and watches end, once the store is dropped.
struct Shared {
    backend: Arc<dyn Backend>,
    /// Wakes the poller.
    wake: Arc<Notify>,
}

struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<KeyValue, StoreError>>,
}

/// A datastore in a PostgreSQL or MySQL/MariaDB database. See the
/// [crate documentation](crate). Several stores (in several processes) may share one
/// database.
///
/// Backend details of the [`Store`] contract (as [`rk3s_store::sqlite::SqliteStore`]):
/// `list` at a revision `<= 0` reads the latest state; `watch` from a revision above the
/// current one waits for it; `compact` at or below the compacted revision is a no-op and
/// `FutureRevision` above the current one. Watchers never get `Lagged`.
///
/// Must be created and used inside a tokio runtime. Dropping the store stops its tasks
/// (queued writes are still applied); live watches then end.
pub struct SqlStore {
    shared: Arc<Shared>,
    batches: broadcast::Sender<Arc<Batch>>,
    writes: Option<mpsc::UnboundedSender<Pending>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.shared.backend.kind())
            .finish()
    }
}

impl SqlStore {
    /// Connects to the database named by `endpoint` (see [`dsn`] for the forms), creating
    /// the database and tables if missing, and starts the writer and watch tasks.
    pub async fn connect(endpoint: &str) -> Result<SqlStore, SqlError> {
        SqlStore::connect_with(endpoint, &TlsFiles::default()).await
    }

    /// [`SqlStore::connect`] with TLS files (k3s's `--datastore-cafile`,
    /// `--datastore-certfile`, `--datastore-keyfile`); files named in the endpoint win.
    pub async fn connect_with(endpoint: &str, files: &TlsFiles) -> Result<SqlStore, SqlError> {
        let endpoint = Endpoint::from_str(endpoint)?;
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let (backend, interval): (Arc<dyn Backend>, Duration) = match &endpoint {
            Endpoint::Postgres(pg) => {
                let (backend, config, tls) = postgres::open(pg, files).await?;
                tasks.push(tokio::spawn(postgres::listen(
                    config,
                    tls,
                    Arc::clone(&wake),
                )));
                (Arc::new(backend), POSTGRES_POLL_INTERVAL)
            }
            Endpoint::Mysql(my) => (Arc::new(mysql::open(my, files).await?), MYSQL_POLL_INTERVAL),
        };
        let (batches, _) = broadcast::channel(BATCH_CAPACITY);
        let shared = Arc::new(Shared { backend, wake });
        let (tx, rx) = mpsc::unbounded_channel();
        // The writer ends by itself once the store (the sender) is gone.
        tokio::spawn(run_writer(Arc::clone(&shared), rx));
        tasks.push(tokio::spawn(run_poller(
            Arc::clone(&shared),
            batches.clone(),
            interval,
        )));
        Ok(SqlStore {
            shared,
            batches,
            writes: Some(tx),
            tasks,
        })
    }

    /// "postgres" or "mysql".
    pub fn backend_name(&self) -> &'static str {
        self.shared.backend.kind()
    }

    /// Starts a task that, every `interval`, compacts history older than `keep_revisions`
    /// revisions before the current one (k3s: every 5 minutes, keeping 1000). It holds a
    /// weak reference and ends once the store is dropped. Several servers may each run
    /// one: compaction is idempotent.
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
                let (current, compacted) = match store.shared.backend.revisions().await {
                    Ok(revisions) => revisions,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the datastore revision failed");
                        continue;
                    }
                };
                let target = current - keep_revisions.max(0);
                if target > compacted {
                    match store.compact(target).await {
                        Ok(()) => tracing::debug!(revision = target, "compacted sql store"),
                        Err(e) => tracing::warn!(error = %e, "sql store compaction failed"),
                    }
                }
            }
        })
    }

    /// How many rows the log table holds (history included), for tests.
    #[doc(hidden)]
    pub async fn log_len(&self) -> Result<i64, StoreError> {
        self.shared.backend.log_len().await
    }

    async fn submit(&self, write: Write) -> Result<KeyValue, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .as_ref()
            .ok_or_else(closed)?
            .send(Pending { write, reply })
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        self.writes.take();
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn closed() -> StoreError {
    StoreError::Backend("sql store is closed".to_string())
}

async fn run_writer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.drain(..).map(|p| (p.write, p.reply)).unzip();
        match shared.backend.apply(&writes).await {
            Ok(outcomes) => {
                shared.wake.notify_one();
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The caller may have gone away; the write stands anyway.
                    let _ = reply.send(outcome);
                }
            }
            // One bad write (say, a key too long for the column) must not fail the
            // others: retry each alone, unless the commit itself failed (the batch may
            // have been applied; the callers must find out by reading).
            Err(e) if !e.at_commit && writes.len() > 1 => {
                tracing::debug!(error = %e.error, "sql store batch failed: retrying writes one by one");
                for (write, reply) in writes.iter().zip(replies) {
                    let outcome = match shared.backend.apply(std::slice::from_ref(write)).await {
                        Ok(mut outcomes) => outcomes
                            .pop()
                            .unwrap_or_else(|| Err(StoreError::Backend("no outcome".into()))),
                        Err(e) => {
                            tracing::warn!(error = %e.error, key = write.key(), "sql store write failed");
                            Err(e.error)
                        }
                    };
                    let _ = reply.send(outcome);
                }
                shared.wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e.error, writes = writes.len(), "sql store write failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(e.error.to_string())));
                }
            }
        }
    }
    tracing::debug!("sql store writer stopped");
}

async fn run_poller(
    shared: Arc<Shared>,
    batches: broadcast::Sender<Arc<Batch>>,
    interval: Duration,
) {
    // `None`: not following (no watchers); the next poll starts at the current revision.
    let mut cursor: Option<Revision> = None;
    let all = KeyRange::all();
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        if batches.receiver_count() == 0 {
            cursor = None;
            continue;
        }
        if let Err(e) = poll(&shared, &batches, &all, &mut cursor).await {
            tracing::warn!(error = %e, "sql store poll failed");
            cursor = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Publishes every change after `cursor`.
async fn poll(
    shared: &Shared,
    batches: &broadcast::Sender<Arc<Batch>>,
    all: &KeyRange,
    cursor: &mut Option<Revision>,
) -> Result<(), StoreError> {
    let Some(mut after) = *cursor else {
        // Start following here; watchers behind this revision read the gap themselves.
        let (current, _) = shared.backend.revisions().await?;
        *cursor = Some(current);
        let _ = batches.send(Arc::new(Batch {
            from: current,
            to: current,
            events: Vec::new(),
        }));
        return Ok(());
    };
    loop {
        let page = match shared.backend.changes(all, after, None, POLL_PAGE).await {
            Ok(page) => page,
            Err(StoreError::Compacted { .. }) => {
                // This poller fell behind a compaction: restart at the current revision
                // (watchers that far behind get `Compacted` when they fill the gap).
                *cursor = None;
                return Box::pin(poll(shared, batches, all, cursor)).await;
            }
            Err(e) => return Err(e),
        };
        let full = page.events.len() >= POLL_PAGE;
        if page.through > after {
            let to = page.through;
            let _ = batches.send(Arc::new(Batch {
                from: after,
                to,
                events: page.events,
            }));
            after = to;
            *cursor = Some(after);
        }
        if !full {
            return Ok(());
        }
    }
}

/// The state of one watch stream.
struct WatchState {
    shared: Arc<Shared>,
    prefix: String,
    range: KeyRange,
    /// Every event <= `cursor` has been delivered or queued.
    cursor: Revision,
    live: broadcast::Receiver<Arc<Batch>>,
    pending: VecDeque<Event>,
    history_done: bool,
    /// A batch waiting for the gap before it to be read from the database.
    deferred: Option<Arc<Batch>>,
    finished: bool,
}

impl WatchState {
    /// Reads one page of history after the cursor, up to `upto`.
    async fn read_page(&mut self, upto: Option<Revision>) -> Result<bool, StoreError> {
        let page = self
            .shared
            .backend
            .changes(&self.range, self.cursor, upto, WATCH_PAGE)
            .await?;
        let progressed = page.through > self.cursor;
        let complete = page.events.len() < WATCH_PAGE;
        self.cursor = self.cursor.max(page.through);
        self.pending.extend(page.events);
        if !progressed && upto.is_some_and(|upto| upto > self.cursor) {
            return Err(StoreError::Backend(format!(
                "the database's revision is below {} (restored from an older backup?)",
                upto.unwrap_or_default()
            )));
        }
        Ok(complete)
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
                match self.read_page(None).await {
                    Ok(complete) => self.history_done = complete,
                    Err(e) => {
                        self.finished = true;
                        return Some((Err(e), self));
                    }
                }
                continue;
            }
            if let Some(batch) = self.deferred.take() {
                if batch.from > self.cursor {
                    if let Err(e) = self.read_page(Some(batch.from)).await {
                        self.finished = true;
                        return Some((Err(e), self));
                    }
                    self.deferred = Some(batch);
                    continue;
                }
                for event in &batch.events {
                    if event.revision() > self.cursor
                        && event.kv.key.starts_with(self.prefix.as_str())
                    {
                        self.pending.push_back(event.clone());
                    }
                }
                self.cursor = self.cursor.max(batch.to);
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    if batch.to > self.cursor {
                        self.deferred = Some(batch);
                    }
                }
                // A later batch starts after the cursor: the gap is read from the database.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(prefix = %self.prefix, missed, "sql watcher lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        self.submit(Write::Create {
            key: key.to_string(),
            value,
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.shared.backend.get(key).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let mut range = KeyRange::prefix(prefix);
        if let Some(start_after) = &opts.start_after {
            range = range.after(start_after);
        }
        let limit = opts.limit.filter(|l| *l > 0);
        self.shared.backend.list(&range, opts.revision, limit).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        self.submit(Write::Update {
            key: key.to_string(),
            value,
            expected: expected_revision,
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        self.submit(Write::Delete {
            key: key.to_string(),
            expected: expected_revision,
        })
        .await
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history: every batch published after the history
        // snapshot reaches this watcher (overlaps are skipped by revision).
        let live = self.batches.subscribe();
        let mut state = WatchState {
            shared: Arc::clone(&self.shared),
            prefix: prefix.to_string(),
            range: KeyRange::prefix(prefix),
            cursor: after_revision.max(0),
            live,
            pending: VecDeque::new(),
            history_done: false,
            deferred: None,
            finished: false,
        };
        // Read the first page now, so that `Compacted` is reported by `watch` itself.
        state.history_done = state.read_page(None).await?;
        // The poller may be idle (no watchers until now): have it start following.
        self.shared.wake.notify_one();
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            WatchState::next,
        )))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.backend.revisions().await?.0)
    }

    /// Records `revision` as compacted, then deletes, in chunks, the rows at or below it
    /// that are tombstones or superseded by a newer row at or below it. Resolves once
    /// they are gone.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let Some(first) = self.shared.backend.mark_compacted(revision).await? else {
            return Ok(());
        };
        let mut from = (first - 1).max(0);
        while from < revision {
            let to = from.saturating_add(COMPACT_CHUNK).min(revision);
            let deleted = self
                .shared
                .backend
                .compact_range(from, to, revision)
                .await?;
            tracing::trace!(from, to, deleted, "compaction chunk");
            from = to;
        }
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.backend.revisions().await?.1)
    }
}
