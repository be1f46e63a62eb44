//! Revisioned key-value store with etcd MVCC semantics.
//!
//! Every write (create, update, delete) gets the next value of one global, strictly
//! increasing revision. A key's `mod_revision` is the revision of its last write and is
//! what the API server exposes as `metadata.resourceVersion`. Updates and deletes are
//! compare-and-swap on that revision. History is kept until compacted; a watch or a read
//! at a compacted revision fails with [`StoreError::Compacted`] (the API's `410 Gone`).
//!
//! A write is acknowledged (its future resolves `Ok`) only once it is durable.
//!
//! Backends: [`sqlite::SqliteStore`] (the default, embedded). External backends (etcd,
//! PostgreSQL) implement the same [`Store`] trait, and every backend's tests run the same
//! conformance suite (`conformance` module, feature `conformance`).

use std::pin::Pin;

use futures_util::Stream;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod encrypt;
pub mod sqlite;

/// A store revision. Revisions start at 1; 0 means "none".
pub type Revision = i64;

/// One key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/registry/core/configmaps/default/foo`.
    pub key: String,
    /// The stored bytes (JSON for the API server).
    pub value: Vec<u8>,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key. For a delete event: the delete's revision.
    pub mod_revision: Revision,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// One change, as delivered by [`Store::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put: the new value. For a delete: the last value before deletion, with
    /// `mod_revision` set to the revision of the delete.
    pub kv: KeyValue,
    /// The value before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Options for [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Read as of this revision; `None` reads the latest state.
    pub revision: Option<Revision>,
    /// Return at most this many keys (`None` or `Some(0)`: no limit).
    pub limit: Option<usize>,
    /// Return only keys strictly greater than this one (for paging).
    pub start_after: Option<String>,
}

/// The answer to [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    /// Matching keys in ascending key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// More keys match after the last one returned.
    pub more: bool,
    /// How many matching keys were not returned (when `more`).
    pub remaining: usize,
}

/// A stream of changes in revision order; ends only on error or when dropped.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of a key that exists.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key does not exist.
    #[error("key {0} not found")]
    NotFound(String),
    /// Compare-and-swap failed: the key's revision is not the expected one.
    #[error("key {key} was modified: expected revision {expected}, current revision {current}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key's current mod revision (0 when it no longer exists).
        current: Revision,
    },
    /// The requested revision has been compacted away.
    #[error("required revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still available minus one.
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// A watcher fell too far behind and was dropped; it must re-list.
    #[error("watcher fell behind and was dropped")]
    Lagged,
    /// The backend failed (I/O, corruption, closed).
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A revisioned key-value store with etcd semantics. Cheap to share (`Arc<dyn Store>`).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates `key`; fails with `AlreadyExists` if it exists. Returns the new entry.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Reads the latest value of `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Lists keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError>;

    /// Replaces `key`'s value if its mod revision is `expected_revision`; otherwise
    /// `Conflict` (or `NotFound` if the key does not exist). Returns the new entry.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key` (if `expected_revision` is given, only at that mod revision).
    /// Returns the deleted entry with `mod_revision` = the delete's revision.
    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError>;

    /// Streams every change to keys under `prefix` with revision > `after_revision`,
    /// first the stored history, then live changes, without gaps or duplicates.
    /// `Compacted` if `after_revision` is older than the compacted revision.
    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError>;

    /// The revision of the latest write (0 for an empty store).
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Forgets history older than `revision` (latest values are kept).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The revision up to which history has been compacted (0: none).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;
}
