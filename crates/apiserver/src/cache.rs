//! The watch cache: one store watch feeds an in-memory copy of every object and a window
//! of recent events, from which lists and watches are served (so N watchers cost one
//! store watch, as upstream's cacher).
//!
//! Which watches the window serves follows upstream's watch cache, which keeps one ring
//! of events per resource (`/registry/<group>/<plural>/`): a ring starts with room for
//! 100 events, doubles (up to 102,400) when it is full and its oldest event is younger
//! than 75 s, halves when it is full and its newest quarter is older than that, and
//! otherwise drops its oldest event to make room. A watch from a resourceVersion older
//! than what its resource's ring still holds (or than the revision the cache loaded,
//! while nothing was dropped) gets `410 Expired` ([`WatchCache::subscribe_to`]); the
//! events themselves are kept once, in one global history of at most 20,000 events,
//! which bounds every ring too, and of at most 32 MiB of the objects' JSON.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use rk3s_store::{EventKind, Revision, Store, StoreError};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// How many recent events the cache keeps for watches that start in the past.
const HISTORY: usize = 20_000;

/// How many bytes of JSON (the events' objects) the history holds at most: with large
/// objects, fewer than [`HISTORY`] events.
const HISTORY_BYTES: usize = 32 << 20;

/// How many of the newest history events keep their parsed objects; older ones keep only
/// their JSON and are parsed again for the (rare) watch that starts that far back, so the
/// history costs its events' bytes, not their much larger parsed trees.
const PARSED_HISTORY: usize = 1_000;

/// How each resource's window of events grows and shrinks (upstream's watch cache
/// capacity rules; [`WindowPolicy::default`] has upstream's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowPolicy {
    /// Events a resource's window always has room for (upstream: 100).
    pub lower_bound: usize,
    /// Most events a resource's window may grow to (upstream: 100 * 1024).
    pub upper_bound: usize,
    /// Events younger than this are "fresh": a full window of fresh events grows
    /// (upstream: bookmark frequency + 15 s = 75 s).
    pub fresh: Duration,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy {
            lower_bound: 100,
            upper_bound: 100 * 1024,
            fresh: Duration::from_secs(75),
        }
    }
}

/// The window of one resource: the revisions (and arrival times) of its newest events,
/// managed as upstream's ring of events.
#[derive(Debug)]
struct ResourceWindow {
    /// Revision and arrival of each event in the window, oldest first.
    events: VecDeque<(Revision, std::time::Instant)>,
    /// How many events the window has room for.
    capacity: usize,
    /// Whether an event was dropped since the cache (re)loaded.
    dropped: bool,
}

impl ResourceWindow {
    fn new(policy: &WindowPolicy) -> ResourceWindow {
        ResourceWindow {
            events: VecDeque::new(),
            capacity: policy.lower_bound.max(1),
            dropped: false,
        }
    }

    /// Records an event, resizing and dropping as upstream's `updateCache`.
    fn record(&mut self, revision: Revision, at: std::time::Instant, policy: &WindowPolicy) {
        let full = self.events.len() >= self.capacity;
        let age = |i: usize| {
            self.events
                .get(i)
                .map(|(_, t)| at.saturating_duration_since(*t))
        };
        if full && age(0).is_some_and(|a| a < policy.fresh) {
            self.capacity =
                (self.capacity * 2).min(policy.upper_bound.max(policy.lower_bound.max(1)));
        } else if full
            && age(self.events.len().saturating_sub(self.capacity / 4))
                .is_some_and(|a| a > policy.fresh)
        {
            self.capacity = (self.capacity / 2).max(policy.lower_bound.max(1));
        }
        while self.events.len() >= self.capacity {
            self.events.pop_front();
            self.dropped = true;
        }
        self.events.push_back((revision, at));
    }

    /// The oldest revision a watch of this resource may start from, once events were
    /// dropped (upstream: the oldest event's resourceVersion - 1).
    fn start(&self) -> Option<Revision> {
        if !self.dropped {
            return None;
        }
        self.events.front().map(|(r, _)| r - 1)
    }
}

/// The resource part of a store key or key prefix (`/registry/core/pods/` of
/// `/registry/core/pods/default/p`); `None` when it names no single resource.
pub fn resource_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("/registry/")?;
    let group_end = rest.find('/')?;
    let plural_len = rest[group_end + 1..].find('/')?;
    if group_end == 0 || plural_len == 0 {
        return None;
    }
    Some(&key[.."/registry/".len() + group_end + 1 + plural_len + 1])
}

/// The resources whose objects the cache keeps only as JSON plus what selectors read
/// ([`Selectable`]): the kinds a cluster has thousands of. Their parsed trees would cost
/// several times their JSON; readers that need one parse it again
/// ([`CachedObject::object`]). Other kinds (few objects, read on every request by
/// admission and authorization) stay parsed.
const COMPACT_RESOURCES: &[&str] = &[
    "/registry/core/pods/",
    "/registry/core/events/",
    "/registry/core/configmaps/",
    "/registry/core/secrets/",
    "/registry/core/nodes/",
    "/registry/core/endpoints/",
    "/registry/apps/replicasets/",
    "/registry/apps/controllerrevisions/",
    "/registry/batch/jobs/",
    "/registry/discovery.k8s.io/endpointslices/",
    "/registry/coordination.k8s.io/leases/",
];

/// Whether the cache keeps the objects at `key` compact (see [`COMPACT_RESOURCES`]).
fn is_compact_key(key: &str) -> bool {
    resource_prefix(key).is_some_and(|r| COMPACT_RESOURCES.contains(&r))
}

/// What label and field selectors read of an object, kept for compact objects so that
/// filtering a list or a watch needs no parse.
#[derive(Debug)]
pub struct Selectable {
    /// API group of the object (from its `apiVersion`; empty for the core group).
    group: Box<str>,
    /// Its kind.
    kind: Box<str>,
    /// `metadata.labels`, sorted by key.
    labels: Vec<(Box<str>, Box<str>)>,
    /// Every selectable field of the kind ([`rk3s_api::selector::supported_fields`]) with
    /// its value as field selectors compare it.
    fields: Vec<(&'static str, Box<str>)>,
}

impl Selectable {
    /// What selectors read of `obj`.
    pub fn of(obj: &Value) -> Selectable {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let mut labels: Vec<(Box<str>, Box<str>)> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort();
        let fields = rk3s_api::selector::supported_fields(group, kind)
            .iter()
            .filter_map(|f| {
                let v = rk3s_api::selector::field_value(group, kind, obj, f)?;
                Some((*f, v.into_boxed_str()))
            })
            .collect();
        Selectable {
            group: group.into(),
            kind: kind.into(),
            labels,
            fields,
        }
    }

    /// Whether these are the fields of `group`/`kind` objects.
    pub fn is_of(&self, group: &str, kind: &str) -> bool {
        &*self.group == group && &*self.kind == kind
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .and_then(|i| self.labels.get(i))
            .map(|(_, v)| &**v)
    }

    /// A selectable field's value (`None`: not a field of the kind).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, v)| &**v)
    }
}

/// How the cache holds an object besides its JSON.
#[derive(Clone, Debug)]
enum Form {
    /// Parsed, shared by every reader.
    Parsed(Arc<Value>),
    /// Only what selectors read; readers parse the JSON again.
    Compact(Arc<Selectable>),
}

/// A cached object: its key, revision and JSON (with `metadata.resourceVersion`), parsed
/// or compact (see [`COMPACT_RESOURCES`]).
#[derive(Clone, Debug)]
pub struct CachedObject {
    /// Store key.
    pub key: String,
    /// Mod revision.
    pub revision: Revision,
    /// The object serialized (JSON, with `metadata.resourceVersion`), so lists and
    /// watches are answered without re-encoding.
    pub raw: bytes::Bytes,
    form: Form,
}

impl CachedObject {
    /// From the stored bytes: parsed once; `raw` is spliced from `stored`, not re-encoded.
    fn decode(key: String, revision: Revision, stored: &[u8]) -> Option<CachedObject> {
        let object = decode(stored, revision)?;
        let raw = encoded_with_resource_version(stored, revision, &object);
        Some(CachedObject::new(key, revision, raw, Arc::new(object)))
    }

    /// `object` (whose JSON is `raw`) as the cache keeps it at `key`.
    fn new(key: String, revision: Revision, raw: bytes::Bytes, object: Arc<Value>) -> Self {
        let form = if is_compact_key(&key) {
            Form::Compact(Arc::new(Selectable::of(&object)))
        } else {
            Form::Parsed(object)
        };
        CachedObject {
            key,
            revision,
            raw,
            form,
        }
    }

    /// `object` (with its resourceVersion set) as the cache would hold it at `key`.
    pub fn from_value(key: String, revision: Revision, object: Value) -> CachedObject {
        let raw = bytes::Bytes::from(serde_json::to_vec(&object).unwrap_or_default());
        CachedObject::new(key, revision, raw, Arc::new(object))
    }

    /// The object, with `metadata.resourceVersion` set: shared when the cache keeps it
    /// parsed, else parsed from `raw` for this caller.
    pub fn object(&self) -> Arc<Value> {
        match &self.form {
            Form::Parsed(v) => v.clone(),
            Form::Compact(_) => Arc::new(self.value()),
        }
    }

    /// The object as an owned value (a copy, or a fresh parse for a compact object).
    pub fn value(&self) -> Value {
        match &self.form {
            Form::Parsed(v) => (**v).clone(),
            Form::Compact(_) => serde_json::from_slice(&self.raw).unwrap_or_else(|e| {
                // `raw` is JSON the cache itself produced.
                tracing::error!(key = %self.key, error = %e, "watch cache: unparsable cached JSON");
                Value::Null
            }),
        }
    }

    /// What selectors read, when the object is kept compact.
    pub fn selectable(&self) -> Option<&Selectable> {
        match &self.form {
            Form::Parsed(_) => None,
            Form::Compact(s) => Some(s),
        }
    }

    /// The object's parse, when the cache keeps it parsed.
    pub fn parsed(&self) -> Option<&Arc<Value>> {
        match &self.form {
            Form::Parsed(v) => Some(v),
            Form::Compact(_) => None,
        }
    }
}

/// `object` (the parse of `stored` with `metadata.resourceVersion` set to `revision`)
/// as JSON: `stored` with the resourceVersion spliced in, which is byte for byte what
/// encoding `object` would give for compact stored JSON; encodes `object` only when the
/// stored bytes do not have the expected shape.
fn encoded_with_resource_version(
    stored: &[u8],
    revision: Revision,
    object: &Value,
) -> bytes::Bytes {
    match splice_resource_version(stored, revision) {
        Some(raw) => bytes::Bytes::from(raw),
        None => bytes::Bytes::from(serde_json::to_vec(object).unwrap_or_default()),
    }
}

/// Inserts `"resourceVersion":"<revision>"` as the last member of the top-level
/// `metadata` object of the JSON document `stored`, without parsing it into values.
/// `None` when `stored` has no (single, plainly spelled) `metadata` object, already has
/// a resourceVersion, or is not well-formed enough to be sure (the caller then encodes).
/// Appending matches what [`set_resource_version`] does to a parsed object (serde_json
/// keeps insertion order here), so the result equals encoding the decoded object.
pub fn splice_resource_version(stored: &[u8], revision: Revision) -> Option<Vec<u8>> {
    let mut s = JsonScan { b: stored, i: 0 };
    s.ws();
    s.eat(b'{')?;
    let mut meta: Option<(usize, usize, bool)> = None;
    s.ws();
    if s.peek()? == b'}' {
        return None;
    }
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if key == b"\"metadata\"" {
            if meta.is_some() || s.peek()? != b'{' {
                return None;
            }
            // Walk the metadata members, looking for a resourceVersion.
            s.eat(b'{')?;
            s.ws();
            let mut empty = true;
            if s.peek()? != b'}' {
                empty = false;
                loop {
                    s.ws();
                    let k = s.string()?;
                    if k == b"\"resourceVersion\"" {
                        return None;
                    }
                    s.ws();
                    s.eat(b':')?;
                    s.ws();
                    s.value()?;
                    s.ws();
                    match s.next()? {
                        b',' => continue,
                        b'}' => break,
                        _ => return None,
                    }
                }
            } else {
                s.i += 1;
            }
            // s.i is just past the metadata's closing brace.
            meta = Some((s.i - 1, s.i, empty));
        } else {
            s.value()?;
        }
        s.ws();
        match s.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != stored.len() {
        return None;
    }
    let (close, _, empty) = meta?;
    let rv = revision.to_string();
    let mut out = Vec::with_capacity(stored.len() + rv.len() + 22);
    out.extend_from_slice(&stored[..close]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(rv.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&stored[close..]);
    Some(out)
}

/// A forward-only scanner over JSON text that checks structure but builds nothing.
struct JsonScan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> JsonScan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string, quotes included (escapes are skipped, not decoded).
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(&self.b[start..self.i]),
                b'\\' => {
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// Any value; nesting is tracked with a depth count (strings skipped whole).
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                // Number, true, false, null: up to the next delimiter.
                let start = self.i;
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

/// A write the API server is about to make, handed to the cache so that it need not
/// parse what the writer already holds parsed.
struct PendingWrite {
    /// The exact bytes written (the cache only uses `object` for an event with these).
    stored: bytes::Bytes,
    /// `stored`, parsed (without resourceVersion).
    object: Value,
}

/// Writes handed over and not yet seen; more than this (writes whose event never came,
/// e.g. across a reload) and the map is cleared.
const MAX_PENDING: usize = 4096;

/// The kind of a cache event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEventKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// One change seen by the cache.
#[derive(Clone, Debug)]
pub struct CacheEvent {
    /// What happened.
    pub kind: CacheEventKind,
    /// The store key.
    pub key: String,
    /// Revision of the change.
    pub revision: Revision,
    /// The object after the change (for a delete: the last state, with the delete's
    /// resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, as the cache held it, if any.
    pub prev: Option<CachedObject>,
    /// `object` serialized once (JSON), shared by every watcher.
    pub raw: bytes::Bytes,
}

/// One event of the cache's history: parsed (the newest [`PARSED_HISTORY`]) or only
/// its JSON.
enum HistoryEntry {
    Parsed(Arc<CacheEvent>),
    Compact {
        kind: CacheEventKind,
        key: String,
        revision: Revision,
        raw: bytes::Bytes,
        /// The previous object's revision and JSON.
        prev_raw: Option<(Revision, bytes::Bytes)>,
    },
}

impl HistoryEntry {
    fn revision(&self) -> Revision {
        match self {
            HistoryEntry::Parsed(e) => e.revision,
            HistoryEntry::Compact { revision, .. } => *revision,
        }
    }

    /// The bytes of the event's object, as [`HISTORY_BYTES`] counts them (the previous
    /// object's JSON is the previous event's, shared).
    fn bytes(&self) -> usize {
        match self {
            HistoryEntry::Parsed(e) => e.raw.len(),
            HistoryEntry::Compact { raw, .. } => raw.len(),
        }
    }

    /// Drops the parsed objects, keeping what is needed to parse them again.
    fn compact(&mut self) {
        if let HistoryEntry::Parsed(e) = self {
            let compact = HistoryEntry::Compact {
                kind: e.kind,
                key: e.key.clone(),
                revision: e.revision,
                raw: e.raw.clone(),
                prev_raw: e.prev.as_ref().map(|p| (p.revision, p.raw.clone())),
            };
            *self = compact;
        }
    }

    /// The event (parsed again from its JSON when compact; `None` if that fails, which
    /// cannot happen for JSON the cache produced itself).
    fn event(&self) -> Option<Arc<CacheEvent>> {
        match self {
            HistoryEntry::Parsed(e) => Some(e.clone()),
            HistoryEntry::Compact {
                kind,
                key,
                revision,
                raw,
                prev_raw,
            } => {
                let object: Value = serde_json::from_slice(raw).ok()?;
                let prev = match prev_raw {
                    Some((rev, p)) => {
                        let v = serde_json::from_slice::<Value>(p).ok()?;
                        Some(CachedObject::new(key.clone(), *rev, p.clone(), Arc::new(v)))
                    }
                    None => None,
                };
                Some(Arc::new(CacheEvent {
                    kind: *kind,
                    key: key.clone(),
                    revision: *revision,
                    object: Arc::new(object),
                    prev,
                    raw: raw.clone(),
                }))
            }
        }
    }
}

struct State {
    objects: BTreeMap<String, CachedObject>,
    history: VecDeque<HistoryEntry>,
    /// The sum of the history's [`HistoryEntry::bytes`].
    history_bytes: usize,
    revision: Revision,
    /// Events older than this revision are no longer in `history`.
    oldest: Revision,
    /// Each resource's window (see the module docs), by [`resource_prefix`].
    windows: HashMap<String, ResourceWindow>,
}

/// The watch cache over all of `/registry/`.
pub struct WatchCache {
    store: Arc<dyn Store>,
    policy: WindowPolicy,
    state: RwLock<State>,
    events: broadcast::Sender<Arc<CacheEvent>>,
    progress: watch::Sender<Revision>,
    /// Bumped whenever an RBAC object changes (the authorizer rebuilds on change).
    pub rbac_generation: std::sync::atomic::AtomicU64,
    /// Objects the API server is writing, by key (see [`WatchCache::expect_write`]).
    pending: Mutex<HashMap<String, PendingWrite>>,
}

/// Parses stored bytes and sets `metadata.resourceVersion`.
pub fn decode(value: &[u8], revision: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(value).ok()?;
    set_resource_version(&mut v, revision);
    Some(v)
}

/// Sets `metadata.resourceVersion` to the given revision.
pub fn set_resource_version(v: &mut Value, revision: Revision) {
    if let Some(obj) = v.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            m.insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
        }
    }
}

/// What a watcher gets when it subscribes: the events it missed, then a live receiver.
pub struct Subscription {
    /// Events after the requested revision that already happened.
    pub backlog: Vec<Arc<CacheEvent>>,
    /// Live events (may repeat some of `backlog`: skip revisions ≤ the last one seen).
    pub live: broadcast::Receiver<Arc<CacheEvent>>,
}

impl WatchCache {
    /// Loads everything under `/registry/` and starts following the store, with
    /// upstream's window sizes.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<WatchCache>, StoreError> {
        Self::start_with_policy(store, WindowPolicy::default()).await
    }

    /// [`WatchCache::start`] with other window sizes (tests use small ones). A window
    /// never holds more than the global history does (20,000 events): beyond that its
    /// events are gone anyway.
    pub async fn start_with_policy(
        store: Arc<dyn Store>,
        policy: WindowPolicy,
    ) -> Result<Arc<WatchCache>, StoreError> {
        let policy = WindowPolicy {
            upper_bound: policy.upper_bound.min(HISTORY),
            ..policy
        };
        let list = store.list("/registry/", Default::default()).await?;
        let mut objects = BTreeMap::new();
        for kv in list.items {
            if let Some(o) = CachedObject::decode(kv.key.clone(), kv.mod_revision, &kv.value) {
                objects.insert(kv.key, o);
            }
        }
        let (events, _) = broadcast::channel(HISTORY);
        let (progress, _) = watch::channel(list.revision);
        let cache = Arc::new(WatchCache {
            store: store.clone(),
            policy,
            state: RwLock::new(State {
                objects,
                history: VecDeque::new(),
                history_bytes: 0,
                revision: list.revision,
                oldest: list.revision,
                windows: HashMap::new(),
            }),
            events,
            progress,
            rbac_generation: std::sync::atomic::AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        });
        let c = cache.clone();
        tokio::spawn(async move { c.follow(list.revision).await });
        Ok(cache)
    }

    async fn follow(self: Arc<Self>, mut from: Revision) {
        loop {
            match self.store.watch("/registry/", from).await {
                Ok(mut stream) => {
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(ev) => {
                                from = ev.revision();
                                self.apply(ev);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "watch cache: store watch ended");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache: cannot watch the store");
                    if let StoreError::Compacted { .. } = e {
                        // We fell behind compaction: reload everything.
                        if let Ok(r) = self.reload().await {
                            from = r;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn reload(&self) -> Result<Revision, StoreError> {
        let list = self.store.list("/registry/", Default::default()).await?;
        let mut objects = BTreeMap::new();
        for kv in list.items {
            if let Some(o) = CachedObject::decode(kv.key.clone(), kv.mod_revision, &kv.value) {
                objects.insert(kv.key, o);
            }
        }
        if let Ok(mut st) = self.state.write() {
            st.objects = objects;
            st.history.clear();
            st.history_bytes = 0;
            st.windows.clear();
            st.revision = list.revision;
            st.oldest = list.revision;
        }
        self.rbac_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.progress.send_replace(list.revision);
        Ok(list.revision)
    }

    /// Hands the cache a write the caller is about to make: `stored` are the exact bytes
    /// it will write at `key`, `object` their parse (resourceVersion aside). When the
    /// store's event for that write arrives with the same bytes, the cache takes `object`
    /// instead of parsing `stored` again. Call before the write (the event may be seen
    /// before the write returns); [`WatchCache::forget_write`] if the write fails.
    pub fn expect_write(&self, key: &str, stored: bytes::Bytes, object: Value) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        if p.len() >= MAX_PENDING {
            p.clear();
        }
        p.insert(key.to_string(), PendingWrite { stored, object });
    }

    /// Withdraws a write handed over with [`WatchCache::expect_write`] (it failed).
    pub fn forget_write(&self, key: &str, stored: &[u8]) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        if p.get(key).is_some_and(|w| w.stored == stored) {
            p.remove(key);
        }
    }

    /// The handed-over parse of a put of `value` at `key`, if any.
    fn take_pending(&self, key: &str, value: &[u8]) -> Option<Value> {
        let mut p = self.pending.lock().ok()?;
        if p.get(key)?.stored != value {
            // An earlier write to the key (or another writer's): keep it for its event.
            return None;
        }
        p.remove(key).map(|w| w.object)
    }

    fn apply(&self, ev: rk3s_store::Event) {
        let rev = ev.revision();
        let handed = match ev.kind {
            EventKind::Put => self.take_pending(&ev.kv.key, &ev.kv.value),
            EventKind::Delete => None,
        };
        let object = match handed {
            Some(mut v) => {
                set_resource_version(&mut v, rev);
                v
            }
            None => match decode(&ev.kv.value, rev) {
                Some(v) => v,
                None => {
                    tracing::warn!(key = %ev.kv.key, "watch cache: undecodable value");
                    return;
                }
            },
        };
        let object = Arc::new(object);
        let raw = encoded_with_resource_version(&ev.kv.value, rev, &object);
        // Built before taking the lock: a compact object's selectable fields cost a walk.
        let cached = match ev.kind {
            EventKind::Put => Some(CachedObject::new(
                ev.kv.key.clone(),
                rev,
                raw.clone(),
                object.clone(),
            )),
            EventKind::Delete => None,
        };
        let mut st = match self.state.write() {
            Ok(s) => s,
            Err(_) => return,
        };
        let kind = match ev.kind {
            EventKind::Delete => CacheEventKind::Deleted,
            EventKind::Put if st.objects.contains_key(&ev.kv.key) => CacheEventKind::Modified,
            EventKind::Put => CacheEventKind::Added,
        };
        let prev = match cached {
            None => st.objects.remove(&ev.kv.key),
            Some(cached) => st.objects.insert(ev.kv.key.clone(), cached),
        };
        if ev
            .kv
            .key
            .starts_with("/registry/rbac.authorization.k8s.io/")
        {
            self.rbac_generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let cev = Arc::new(CacheEvent {
            kind,
            key: ev.kv.key,
            revision: rev,
            object,
            prev,
            raw,
        });
        if let Some(resource) = resource_prefix(&cev.key) {
            let policy = self.policy;
            if !st.windows.contains_key(resource) {
                st.windows
                    .insert(resource.to_string(), ResourceWindow::new(&policy));
            }
            if let Some(window) = st.windows.get_mut(resource) {
                window.record(rev, std::time::Instant::now(), &policy);
            }
        }
        st.history_bytes += cev.raw.len();
        st.history.push_back(HistoryEntry::Parsed(cev.clone()));
        let len = st.history.len();
        if len > PARSED_HISTORY {
            if let Some(e) = st.history.get_mut(len - 1 - PARSED_HISTORY) {
                e.compact();
            }
        }
        // The newest event always stays, however large.
        while st.history.len() > HISTORY
            || (st.history_bytes > HISTORY_BYTES && st.history.len() > 1)
        {
            let Some(old) = st.history.pop_front() else {
                break;
            };
            st.history_bytes = st.history_bytes.saturating_sub(old.bytes());
            st.oldest = old.revision();
        }
        st.revision = rev;
        // Broadcast while still holding the write lock: whoever reads `revision() >= rev`
        // (or subscribes under the read lock) then knows event `rev` is already in the
        // channel or in `history`. A watcher can therefore drain its receiver and send
        // a bookmark at the revision it read without running ahead of its events, and
        // `subscribe` splits history and live events without a gap.
        let _ = self.events.send(cev);
        drop(st);
        self.progress.send_replace(rev);
    }

    /// The newest revision the cache has seen.
    pub fn revision(&self) -> Revision {
        self.state.read().map(|s| s.revision).unwrap_or(0)
    }

    /// Waits until the cache has caught up with the store's current revision (a
    /// consistent read), at most `timeout`. Returns that store revision: when the wait
    /// timed out the cache is still older than it (compare with [`WatchCache::revision`]),
    /// and nothing read from the cache may be labelled with it.
    pub async fn wait_fresh(&self, timeout: Duration) -> Result<Revision, StoreError> {
        let want = self.store.current_revision().await?;
        self.wait_for(want, timeout).await;
        Ok(want)
    }

    /// Waits until the cache has seen revision `rev` (or the timeout passes).
    pub async fn wait_for(&self, rev: Revision, timeout: Duration) {
        let mut rx = self.progress.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                if *rx.borrow_and_update() >= rev {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Every object under `prefix`, in key order, with the cache's revision.
    pub fn list(&self, prefix: &str) -> (Vec<CachedObject>, Revision) {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(_) => return (Vec::new(), 0),
        };
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.revision)
    }

    /// The objects under `prefix` that `pick` selects, in key order (only those are
    /// copied out).
    pub fn select(&self, prefix: &str, pick: impl Fn(&CachedObject) -> bool) -> Vec<CachedObject> {
        let Ok(st) = self.state.read() else {
            return Vec::new();
        };
        st.objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, o)| pick(o))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.state.read().map(|s| s.objects.len()).unwrap_or(0)
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One object by key.
    pub fn get(&self, key: &str) -> Option<CachedObject> {
        self.state.read().ok()?.objects.get(key).cloned()
    }

    /// Subscribes to events after `after` (`None`: after the current revision).
    /// `Err(oldest)` if `after` is older than the cache's history.
    pub fn subscribe(&self, after: Option<Revision>) -> Result<(Subscription, Revision), Revision> {
        self.subscribe_to("/registry/", after)
    }

    /// Subscribes a watch of the keys under `prefix` to events after `after` (`None`:
    /// after the current revision). `Err(oldest)` (the oldest revision a watch of it
    /// may start from) if `after` is older than the window of `prefix`'s resource, as
    /// upstream's `too old resource version: <after> (<oldest>)`. The backlog holds
    /// every key's events (the caller filters).
    pub fn subscribe_to(
        &self,
        prefix: &str,
        after: Option<Revision>,
    ) -> Result<(Subscription, Revision), Revision> {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(_) => return Err(0),
        };
        let live = self.events.subscribe();
        let after = after.unwrap_or(st.revision);
        let window_start = resource_prefix(prefix)
            .and_then(|r| st.windows.get(r))
            .and_then(ResourceWindow::start);
        let oldest = window_start.map_or(st.oldest, |w| w.max(st.oldest));
        if after < oldest {
            return Err(oldest);
        }
        // The history is in revision order: only its tail after `after` is parsed.
        let start = st.history.partition_point(|e| e.revision() <= after);
        let backlog: Vec<Arc<CacheEvent>> = st
            .history
            .range(start..)
            .filter_map(HistoryEntry::event)
            .collect();
        Ok((Subscription { backlog, live }, st.revision))
    }

    /// A snapshot of `prefix` plus a subscription to everything after it, atomically.
    pub fn snapshot_and_subscribe(
        &self,
        prefix: &str,
    ) -> (
        Vec<CachedObject>,
        Revision,
        broadcast::Receiver<Arc<CacheEvent>>,
    ) {
        let st = match self.state.read() {
            Ok(s) => s,
            Err(_) => return (Vec::new(), 0, self.events.subscribe()),
        };
        let live = self.events.subscribe();
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.revision, live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn consistent_read_sees_the_latest_write_without_waiting_for_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("open"));
        let cache = WatchCache::start(store.clone()).await.expect("cache");
        for i in 0..5 {
            let kv = store
                .create(
                    &format!("/registry/core/configmaps/default/c{i}"),
                    br#"{"metadata":{"name":"x"}}"#.to_vec(),
                )
                .await
                .expect("create");
            // The cache must notice each revision on its own (no later write needed):
            // wait_for with a very long timeout must return well before it.
            let waited = tokio::time::timeout(
                Duration::from_secs(30),
                cache.wait_for(kv.mod_revision, Duration::from_secs(3600)),
            )
            .await;
            assert!(
                waited.is_ok(),
                "cache never reported revision {}",
                kv.mod_revision
            );
            assert!(cache.get(&kv.key).is_some());
        }
        let (items, rev) = cache.list("/registry/core/configmaps/");
        assert_eq!(items.len(), 5);
        assert_eq!(items[0].object()["metadata"]["resourceVersion"], "1");
        assert!(rev >= 5);
        let (sub, _) = cache
            .subscribe(Some(2))
            .map_err(|_| "expired")
            .expect("subscribe");
        assert_eq!(
            sub.backlog.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
    }

    #[test]
    fn spliced_resource_version_equals_encoding_the_decoded_object() {
        let docs = [
            json!({"kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default", "labels": {"x": "}{\"]["}}, "data": {"k": "v\\\"", "metadata": "{"}}),
            json!({"metadata": {}, "spec": {"a": [1, -2, 3.5, true, null, {"b": []}]}}),
            json!({"apiVersion": "v1", "metadata": {"name": "n", "managedFields": [{"manager": "m", "fieldsV1": {"f:data": {".": {}}}}]}, "status": {}}),
            json!({"spec": {"metadata": {"resourceVersion": "7"}}, "metadata": {"name": "nested \u{e9}\u{1F600}"}}),
        ];
        for doc in docs {
            let stored = serde_json::to_vec(&doc).expect("json");
            let spliced = splice_resource_version(&stored, 42).expect("spliced");
            let want = serde_json::to_vec(&decode(&stored, 42).expect("decode")).expect("json");
            assert_eq!(
                String::from_utf8_lossy(&spliced),
                String::from_utf8_lossy(&want)
            );
        }
        // Whitespace is kept and the result is still the same object.
        let pretty =
            serde_json::to_vec_pretty(&json!({"metadata": {"name": "p"}, "data": {"a": "b"}}))
                .expect("json");
        let spliced = splice_resource_version(&pretty, 9).expect("spliced");
        assert_eq!(
            serde_json::from_slice::<Value>(&spliced).expect("valid"),
            decode(&pretty, 9).expect("decode")
        );
        // Shapes it does not handle: the caller encodes instead.
        for bad in [
            &br#"{"metadata":{"name":"a","resourceVersion":"3"}}"#[..],
            br#"{"data":{}}"#,
            br#"{"metadata":"x"}"#,
            br#"{"metadata":{},"metadata":{}}"#,
            br#"{"metadata":{"name":"a"}"#,
            br#"{"metadata":{"name":"a"}} trailing"#,
            br#"[]"#,
            br#"{}"#,
        ] {
            assert_eq!(
                splice_resource_version(bad, 1),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn resource_prefix_names_one_resource() {
        assert_eq!(
            resource_prefix("/registry/core/pods/default/p"),
            Some("/registry/core/pods/")
        );
        assert_eq!(
            resource_prefix("/registry/apps/deployments/"),
            Some("/registry/apps/deployments/")
        );
        assert_eq!(
            resource_prefix("/registry/core/namespaces/default"),
            Some("/registry/core/namespaces/")
        );
        for none in [
            "/registry/",
            "/registry/core/",
            "/registry/core/pods",
            "/other/core/pods/x",
            "/registry//pods/",
            "/registry/core//x",
        ] {
            assert_eq!(resource_prefix(none), None, "{none}");
        }
    }

    #[test]
    fn a_resource_window_grows_while_fresh_and_drops_its_oldest_when_stale() {
        let policy = WindowPolicy {
            lower_bound: 4,
            upper_bound: 8,
            fresh: Duration::from_secs(75),
        };
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = ResourceWindow::new(&policy);
        for r in 1..=4 {
            w.record(r, at(0), &policy);
        }
        assert_eq!(
            (w.capacity, w.start()),
            (4, None),
            "not full yet: nothing dropped"
        );
        // Full of fresh events: room doubles instead of dropping.
        w.record(5, at(1), &policy);
        assert_eq!((w.capacity, w.events.len(), w.start()), (8, 5, None));
        for r in 6..=8 {
            w.record(r, at(80), &policy);
        }
        // Full, its oldest event stale, its newest quarter fresh: the oldest goes.
        w.record(9, at(81), &policy);
        assert_eq!((w.capacity, w.events.len(), w.start()), (8, 8, Some(1)));
        // Full and its newest quarter stale too: room halves (not below the lower bound).
        w.record(10, at(300), &policy);
        assert_eq!((w.capacity, w.events.len(), w.start()), (4, 4, Some(6)));
        assert_eq!(
            w.events.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );

        // At the upper bound a full window of fresh events drops its oldest too.
        let mut w = ResourceWindow::new(&policy);
        for r in 1..=8 {
            w.record(r, at(0), &policy);
        }
        assert_eq!((w.capacity, w.start()), (8, None));
        w.record(9, at(1), &policy);
        assert_eq!((w.capacity, w.start()), (8, Some(1)));
    }

    #[tokio::test]
    async fn the_history_holds_at_most_its_bytes_of_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("open"));
        let cache = WatchCache::start(store.clone()).await.expect("cache");
        // 1 MiB objects: 40 of them are more than the history may hold.
        let big = "x".repeat(1 << 20);
        let mut revs = Vec::new();
        for i in 0..40 {
            let value = serde_json::to_vec(
                &json!({"metadata": {"name": format!("c{i}")}, "data": {"v": big}}),
            )
            .expect("json");
            let kv = store
                .create(&format!("/registry/core/configmaps/default/c{i}"), value)
                .await
                .expect("create");
            revs.push(kv.mod_revision);
        }
        let last = *revs.last().expect("revisions");
        cache.wait_for(last, Duration::from_secs(30)).await;
        assert_eq!(cache.revision(), last);
        let held = cache
            .state
            .read()
            .map(|s| (s.history.len(), s.history_bytes))
            .expect("state");
        assert!(held.1 <= HISTORY_BYTES, "history holds {} bytes", held.1);
        assert!(
            held.0 < 40 && held.0 >= 30,
            "history holds {} events",
            held.0
        );
        // A watch from the first events is too old; one from the recent ones is served.
        assert!(cache.subscribe(Some(revs[0])).is_err());
        let (sub, _) = cache
            .subscribe(Some(revs[35]))
            .map_err(|_| "expired")
            .expect("recent events are kept");
        assert_eq!(sub.backlog.len(), 4);
    }

    #[tokio::test]
    async fn a_watch_from_before_its_resources_window_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("open"));
        let policy = WindowPolicy {
            lower_bound: 4,
            upper_bound: 8,
            fresh: Duration::from_secs(2),
        };
        let cache = WatchCache::start_with_policy(store.clone(), policy)
            .await
            .expect("cache");
        const CMS: &str = "/registry/core/configmaps/";
        let create = |i: usize| {
            let store = store.clone();
            async move {
                store
                    .create(&format!("{CMS}default/c{i}"), cm(&format!("u{i}"), "0"))
                    .await
                    .expect("create")
                    .mod_revision
            }
        };
        let mut revs = Vec::new();
        for i in 0..5 {
            revs.push(create(i).await);
        }
        let secret = store
            .create("/registry/core/secrets/default/s", cm("s", "0"))
            .await
            .expect("secret")
            .mod_revision;
        cache.wait_for(secret, Duration::from_secs(10)).await;
        // Five fresh events: the window grew, every watch from the start is served.
        assert!(cache
            .subscribe_to(&format!("{CMS}default/"), Some(revs[0] - 1))
            .is_ok());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for i in 5..9 {
            revs.push(create(i).await);
        }
        cache.wait_for(revs[8], Duration::from_secs(10)).await;
        // Nine events in a window of 8 whose oldest is stale: the oldest was dropped, and
        // the oldest revision a watch may start from is the one before the oldest kept.
        assert_eq!(revs[1] - 1, revs[0]);
        let err = cache
            .subscribe_to(&format!("{CMS}default/"), Some(revs[0] - 1))
            .map(|_| ())
            .expect_err("too old");
        assert_eq!(err, revs[0]);
        let (sub, _) = cache
            .subscribe_to(CMS, Some(revs[0]))
            .map_err(|_| "expired")
            .expect("oldest revision the window serves");
        let got: Vec<Revision> = sub
            .backlog
            .iter()
            .filter(|e| e.key.starts_with(CMS))
            .map(|e| e.revision)
            .collect();
        assert_eq!(got, revs[1..].to_vec());
        // One object's watch uses its resource's window; other resources keep theirs.
        assert!(cache
            .subscribe_to(&format!("{CMS}default/c3"), Some(revs[0] - 1))
            .is_err());
        assert!(cache
            .subscribe_to("/registry/core/secrets/default/", Some(revs[0] - 1))
            .is_ok());
        assert!(
            cache.subscribe(Some(revs[0] - 1)).is_ok(),
            "the global history still holds them"
        );
    }

    #[tokio::test]
    async fn a_handed_over_write_is_used_only_for_the_event_with_its_bytes() {
        let (_dir, store, cache) = open().await;
        // A kind the cache keeps parsed (a compact one is parsed again from its JSON).
        const PARSED_KEY: &str = "/registry/core/services/default/x";
        // Handed over: the cache takes the writer's parse (a marker proves it was used).
        let stored = cm("u1", "1");
        let mut parsed: Value = serde_json::from_slice(&stored).expect("json");
        parsed["marker"] = json!("handed");
        cache.expect_write(PARSED_KEY, bytes::Bytes::from(stored.clone()), parsed);
        let kv = store.create(PARSED_KEY, stored).await.expect("create");
        cache
            .wait_for(kv.mod_revision, Duration::from_secs(10))
            .await;
        let o = cache.get(PARSED_KEY).expect("cached");
        assert_eq!(o.object()["marker"], "handed");
        assert_eq!(
            o.object()["metadata"]["resourceVersion"],
            kv.mod_revision.to_string()
        );
        // raw comes from the written bytes (which lack the marker), resourceVersion spliced.
        let mut want = o.value();
        want.as_object_mut().expect("object").remove("marker");
        assert_eq!(
            o.raw,
            bytes::Bytes::from(serde_json::to_vec(&want).expect("json"))
        );
        assert!(
            cache.pending.lock().expect("lock").is_empty(),
            "taken once seen"
        );
        // Handed over for different bytes than were written: the cache parses the event.
        let mut other: Value = serde_json::from_slice(&cm("u1", "3")).expect("json");
        other["marker"] = json!("stale");
        cache.expect_write(PARSED_KEY, bytes::Bytes::from(cm("u1", "3")), other);
        let kv = store
            .update(PARSED_KEY, cm("u1", "2"), kv.mod_revision)
            .await
            .expect("update");
        cache
            .wait_for(kv.mod_revision, Duration::from_secs(10))
            .await;
        let o = cache.get(PARSED_KEY).expect("cached");
        assert!(o.object().get("marker").is_none());
        assert_eq!(o.object()["data"]["v"], "2");
        assert_eq!(
            o.raw,
            bytes::Bytes::from(serde_json::to_vec(&*o.object()).expect("json"))
        );
        // A failed write is withdrawn.
        cache.forget_write(PARSED_KEY, &cm("u1", "3"));
        assert!(cache.pending.lock().expect("lock").is_empty());
    }

    const KEY: &str = "/registry/core/configmaps/default/x";

    fn cm(uid: &str, data: &str) -> Vec<u8> {
        format!(r#"{{"metadata":{{"name":"x","namespace":"default","uid":"{uid}"}},"data":{{"v":"{data}"}}}}"#).into_bytes()
    }

    async fn open() -> (tempfile::TempDir, Arc<dyn Store>, Arc<WatchCache>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("open"));
        let cache = WatchCache::start(store.clone()).await.expect("cache");
        (dir, store, cache)
    }

    fn uid(v: &Value) -> String {
        v["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// What a watcher from `after` delivers for keys under `prefix`, up to revision
    /// `until`, deduplicated exactly as `watch.rs` does (skip revisions already seen).
    async fn drain(
        sub: Subscription,
        after: Revision,
        prefix: &str,
        until: Revision,
    ) -> Vec<(CacheEventKind, Revision, String)> {
        let mut out = Vec::new();
        let mut last = after;
        let take = |ev: &CacheEvent, last: &mut Revision, out: &mut Vec<_>| {
            if ev.revision > *last {
                *last = ev.revision;
                if ev.key.starts_with(prefix) {
                    out.push((ev.kind, ev.revision, uid(&ev.object)));
                }
            }
        };
        for ev in &sub.backlog {
            take(ev, &mut last, &mut out);
        }
        let mut live = sub.live;
        while last < until {
            let ev = tokio::time::timeout(Duration::from_secs(10), live.recv())
                .await
                .expect("event in time")
                .expect("live event");
            take(&ev, &mut last, &mut out);
        }
        out
    }

    #[tokio::test]
    async fn old_history_events_are_parsed_again_with_their_previous_object() {
        let (_dir, store, cache) = open().await;
        let first = store.create(KEY, cm("u1", "0")).await.expect("create");
        let mut rev = first.mod_revision;
        let n = PARSED_HISTORY + 300;
        for i in 1..=n {
            rev = store
                .update(KEY, cm("u1", &i.to_string()), rev)
                .await
                .expect("update")
                .mod_revision;
        }
        cache.wait_for(rev, Duration::from_secs(30)).await;
        {
            let st = cache.state.read().expect("state");
            let parsed = st
                .history
                .iter()
                .filter(|e| matches!(e, HistoryEntry::Parsed(_)))
                .count();
            assert_eq!(parsed, PARSED_HISTORY, "only the newest events stay parsed");
        }
        // A watch from the first revision gets every update, in order, each with the
        // object and the previous object as they were.
        let (sub, _) = cache
            .subscribe(Some(first.mod_revision))
            .expect("subscribe");
        assert_eq!(sub.backlog.len(), n);
        for (i, ev) in sub.backlog.iter().enumerate() {
            let want = (i + 1).to_string();
            assert_eq!(ev.kind, CacheEventKind::Modified);
            assert_eq!(ev.object["data"]["v"], json!(want));
            assert_eq!(
                ev.object["metadata"]["resourceVersion"],
                json!(ev.revision.to_string())
            );
            let prev = ev.prev.as_ref().expect("prev");
            assert_eq!(prev.object()["data"]["v"], json!(i.to_string()));
            let reparsed: Value = serde_json::from_slice(&ev.raw).expect("raw is JSON");
            assert_eq!(reparsed, *ev.object);
        }
        // A watch from the middle starts right after it.
        let mid = sub.backlog[n / 2].revision;
        let (sub2, _) = cache.subscribe(Some(mid)).expect("subscribe");
        assert_eq!(
            sub2.backlog.first().map(|e| e.revision),
            Some(sub.backlog[n / 2 + 1].revision)
        );
    }

    #[tokio::test]
    async fn list_then_watch_from_its_revision_sees_delete_and_recreate_exactly_once() {
        let (_dir, store, cache) = open().await;
        let kv = store.create(KEY, cm("old", "1")).await.expect("create");
        cache
            .wait_for(kv.mod_revision, Duration::from_secs(10))
            .await;
        let (items, r) = cache.list("/registry/core/configmaps/default/");
        assert_eq!(
            r, kv.mod_revision,
            "the list is labelled with the state it shows"
        );
        assert_eq!(
            items.iter().map(|o| uid(&o.object())).collect::<Vec<_>>(),
            vec!["old"]
        );

        // A watcher that subscribes before the changes (all live), one in the middle
        // (history + live), one after (all history).
        let before = cache
            .subscribe(Some(r))
            .map_err(|_| "expired")
            .expect("subscribe")
            .0;
        let del = store.delete(KEY, None).await.expect("delete");
        assert_eq!(del.mod_revision, r + 1);
        cache.wait_for(r + 1, Duration::from_secs(10)).await;
        let middle = cache
            .subscribe(Some(r))
            .map_err(|_| "expired")
            .expect("subscribe")
            .0;
        let new = store.create(KEY, cm("new", "1")).await.expect("recreate");
        assert_eq!(new.mod_revision, r + 2);
        let upd = store
            .update(KEY, cm("new", "2"), r + 2)
            .await
            .expect("update");
        cache
            .wait_for(upd.mod_revision, Duration::from_secs(10))
            .await;
        let after = cache
            .subscribe(Some(r))
            .map_err(|_| "expired")
            .expect("subscribe")
            .0;

        let want = vec![
            (CacheEventKind::Deleted, r + 1, "old".to_string()),
            (CacheEventKind::Added, r + 2, "new".to_string()),
            (CacheEventKind::Modified, r + 3, "new".to_string()),
        ];
        for (name, sub) in [("before", before), ("middle", middle), ("after", after)] {
            assert_eq!(
                drain(sub, r, KEY, r + 3).await,
                want,
                "watcher subscribed {name} the changes"
            );
        }
        // The DELETED event carries the object's last state at the delete's revision.
        let (sub, _) = cache
            .subscribe(Some(r))
            .map_err(|_| "expired")
            .expect("subscribe");
        let d = &sub.backlog[0];
        assert_eq!(d.kind, CacheEventKind::Deleted);
        assert_eq!(d.object["metadata"]["resourceVersion"], (r + 1).to_string());
        assert_eq!(d.object["metadata"]["name"], "x");
        assert_eq!(
            d.prev.as_ref().map(|p| uid(&p.object())),
            Some("old".to_string())
        );
        // A watch from r + 1 (a list taken after the delete) starts at the re-creation.
        let (sub, _) = cache
            .subscribe(Some(r + 1))
            .map_err(|_| "expired")
            .expect("subscribe");
        assert_eq!(drain(sub, r + 1, KEY, r + 3).await, want[1..].to_vec());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_taken_during_delete_recreate_churn_resume_into_watches_without_gaps() {
        let (_dir, store, cache) = open().await;
        let prefix = "/registry/core/configmaps/default/";
        let kv = store.create(KEY, cm("u0", "0")).await.expect("create");
        cache
            .wait_for(kv.mod_revision, Duration::from_secs(10))
            .await;
        // The writer deletes and re-creates x (as a kubelet re-creates a mirror pod),
        // with unrelated writes in between; readers list and then subscribe from the
        // list's revision while it runs, as a client's LIST then WATCH.
        const ROUNDS: usize = 150;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut last = 0;
                for i in 1..=ROUNDS {
                    store.delete(KEY, None).await.expect("delete");
                    last = store
                        .create(KEY, cm(&format!("u{i}"), "0"))
                        .await
                        .expect("create")
                        .mod_revision;
                    store
                        .create(
                            &format!("/registry/core/configmaps/other/n{i}"),
                            cm("n", "0"),
                        )
                        .await
                        .expect("noise");
                }
                last
            })
        };
        let mut taken = Vec::new();
        while !writer.is_finished() {
            let (items, r) = cache.list(prefix);
            tokio::task::yield_now().await;
            let sub = cache
                .subscribe(Some(r))
                .map_err(|_| "expired")
                .expect("subscribe")
                .0;
            taken.push((items.first().map(|o| uid(&o.object())), r, sub));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let end = writer.await.expect("writer");
        assert!(
            taken.len() >= 5,
            "only {} lists during the churn",
            taken.len()
        );
        for (listed, r, sub) in taken {
            let events = drain(sub, r, prefix, end).await;
            // Ground truth: the store's own history after r.
            let mut truth = Vec::new();
            let mut stream = store.watch(prefix, r).await.expect("store watch");
            while truth.last().map(|(_, rev, _)| *rev).unwrap_or(r) < end {
                let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("store event in time")
                    .expect("stream open")
                    .expect("store event");
                let kind = if ev.kind == EventKind::Delete {
                    CacheEventKind::Deleted
                } else if ev.prev.is_some() {
                    CacheEventKind::Modified
                } else {
                    CacheEventKind::Added
                };
                let v: Value = serde_json::from_slice(&ev.kv.value).expect("json");
                truth.push((kind, ev.revision(), uid(&v)));
            }
            assert_eq!(events, truth, "watch from list revision {r}");
            // Replaying the events on the listed state is consistent: every DELETED
            // removes the object the client holds, every ADDED finds none.
            let mut have = listed;
            for (kind, rev, u) in &events {
                match kind {
                    CacheEventKind::Deleted => assert_eq!(
                        have.take().as_deref(),
                        Some(u.as_str()),
                        "DELETED at {rev} of an object the client does not hold"
                    ),
                    CacheEventKind::Added => assert!(
                        have.replace(u.clone()).is_none(),
                        "ADDED at {rev} over a held object"
                    ),
                    CacheEventKind::Modified => assert_eq!(have.as_deref(), Some(u.as_str())),
                }
            }
            assert_eq!(have, Some(format!("u{ROUNDS}")));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revision_the_cache_reports_is_already_in_every_subscribers_channel() {
        // What a bookmark relies on: once `revision()` says r, a subscriber can drain
        // its receiver and will have received every event up to r.
        let (_dir, store, cache) = open().await;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    store
                        .create(
                            &format!("/registry/core/configmaps/default/c{i}"),
                            cm("u", "0"),
                        )
                        .await
                        .expect("create");
                }
            })
        };
        let (sub, start) = cache
            .subscribe(None)
            .map_err(|_| "expired")
            .expect("subscribe");
        let mut live = sub.live;
        let mut last = start;
        let mut checks = 0;
        while !writer.is_finished() {
            let seen = cache.revision();
            loop {
                match live.try_recv() {
                    Ok(ev) => last = last.max(ev.revision),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(e) => panic!("receiver failed: {e}"),
                }
            }
            assert!(
                last >= seen,
                "cache reported revision {seen} but the subscriber had only received up to {last}"
            );
            checks += 1;
            tokio::task::yield_now().await;
        }
        writer.await.expect("writer");
        assert!(checks > 10, "only {checks} checks");
    }
}
