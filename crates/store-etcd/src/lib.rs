//! The etcd v3 datastore: [`EtcdStore`] implements [`rk3s_store::Store`] on an etcd
//! cluster, as k3s does with `--datastore-endpoint=https://host:2379,...`.
//!
//! # Mapping
//!
//! - Revisions are etcd's own: a key's `mod_revision`/`create_revision`, the response
//!   header's revision for the revision of a write. Keys are stored as they are (k3s
//!   and the Kubernetes API server use `/registry/...` directly, no extra prefix).
//! - `create` is a transaction `create_revision(key) == 0 -> put`; `update` and a
//!   conditional `delete` compare `mod_revision` (and `create_revision > 0`, so a missing
//!   key is `NotFound`, never created); a failed comparison reads the key to tell
//!   `Conflict` from `NotFound`.
//! - `list` is a range (`limit`, `revision`; `start_after` by starting at `key + "\0"`);
//!   `watch` is an etcd watch from `after + 1` with `prev_kv`; `compact` is etcd's
//!   physical compaction; the compacted revision is what etcd reports.
//! - etcd's errors map to [`StoreError`]: "required revision has been compacted" ->
//!   `Compacted`, "required revision is a future revision" -> `FutureRevision`, anything
//!   else -> `Backend`.
//!
//! # Endpoints and failures
//!
//! Several endpoints may be given (one etcd cluster's members). Calls go to one member;
//! when it cannot be reached the next one is used. Reads are retried on another member
//! after any "unavailable" error; writes only when the request cannot have been applied
//! (no connection could be made, or etcd answered "no leader"), so a compare-and-swap is
//! never applied twice. `https://` endpoints use TLS with the given CA, client
//! certificate and key (k3s's `--datastore-cafile/-certfile/-keyfile`).
//!
//! # Snapshots
//!
//! [`EtcdStore::snapshot_to_file`] streams a member's database through etcd's
//! Maintenance/Snapshot RPC into a file (what `etcdctl snapshot save` writes);
//! [`snapshot_revision`] reads the revision such a file holds.
//!
//! Invariants: depends on no crate of ours but `rk3s-store`; speaks etcd's gRPC API
//! through hand-written `prost` messages (no `protoc`); never panics on any answer from
//! the server.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::uri::PathAndQuery;
use rk3s_store::{
    Event, EventKind, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod bolt;
mod proto;
mod snapshot;

pub use bolt::snapshot_revision;
pub use snapshot::SnapshotStats;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use proto::path;

/// Largest gRPC message accepted from etcd (etcd's own client allows any size; a list of
/// many objects is one message).
const MAX_MESSAGE: usize = 512 * 1024 * 1024;
/// Timeout of one unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call keeps trying other members before it fails.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// TLS files for `https://` endpoints (k3s's `--datastore-cafile`, `--datastore-certfile`,
/// `--datastore-keyfile`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle (PEM) that signed the etcd servers' certificates; `None`: the system's
    /// roots are not used, so `https://` needs it.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for etcd's client certificate authentication.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// How to reach an etcd cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Member URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// TLS files, used by `https://` endpoints.
    pub tls: TlsFiles,
    /// How long [`EtcdStore::connect`] waits for a member to answer (`None`: 30 s).
    pub connect_timeout: Option<Duration>,
}

impl EtcdConfig {
    /// Parses k3s's endpoint list: URLs separated by commas (spaces around them ignored).
    pub fn from_endpoints(list: &str, tls: TlsFiles) -> Result<EtcdConfig, EtcdError> {
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        for endpoint in &endpoints {
            validate_endpoint(endpoint)?;
        }
        Ok(EtcdConfig {
            endpoints,
            tls,
            connect_timeout: None,
        })
    }
}

/// Errors setting up the connection (the store's own calls fail with [`StoreError`]).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint was given.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// An endpoint is not an `http://` or `https://` URL with a host and port.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS files do not fit together (a certificate without its key, ...).
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A snapshot could not be taken.
    #[error("etcd snapshot: {0}")]
    Snapshot(String),
    /// No member answered in time.
    #[error("no etcd member of {endpoints:?} answered within {waited:?}: {last_error}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// How long it waited.
        waited: Duration,
        /// The last error seen.
        last_error: String,
    },
}

fn validate_endpoint(endpoint: &str) -> Result<(), EtcdError> {
    let invalid = |reason: &str| EtcdError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid("the scheme must be http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(invalid("a path is not allowed"));
    }
    Ok(())
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        path: path.clone(),
        source,
    })
}

fn tls_config(files: &TlsFiles) -> Result<ClientTlsConfig, EtcdError> {
    let mut config = ClientTlsConfig::new();
    match &files.ca_file {
        Some(ca) => config = config.ca_certificate(Certificate::from_pem(read_file(ca)?)),
        None => {
            return Err(EtcdError::Tls(
                "an https:// endpoint needs a CA file (--datastore-cafile)".to_string(),
            ))
        }
    }
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(EtcdError::Tls(
                "a client certificate needs its key and a key its certificate".to_string(),
            ))
        }
    }
    Ok(config)
}

/// One member: its URL and a lazily connected channel.
struct Member {
    url: String,
    channel: Channel,
}

/// State shared by the store and its watch streams.
struct Shared {
    members: Vec<Member>,
    /// Index of the member calls go to first.
    preferred: AtomicUsize,
    /// The highest compacted revision seen (ours or reported by etcd).
    compacted: AtomicI64,
}

/// The etcd v3 datastore. See the [crate documentation](crate).
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.shared.members.iter().map(|m| m.url.as_str()).collect();
        f.debug_struct("EtcdStore")
            .field("endpoints", &urls)
            .finish()
    }
}

/// The `[key, range_end)` of every key starting with `prefix` (etcd's "\0" range end
/// means "to the end" when the prefix has no successor).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            let key = if prefix.is_empty() {
                vec![0]
            } else {
                prefix.as_bytes().to_vec()
            };
            return (key, end);
        }
    }
    let key = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    (key, vec![0])
}

fn backend(context: &str, status: &tonic::Status) -> StoreError {
    StoreError::Backend(format!("etcd {context}: {}", status.message()))
}

fn is_compacted(status: &tonic::Status) -> bool {
    status
        .message()
        .contains("required revision has been compacted")
}

fn is_future(status: &tonic::Status) -> bool {
    status
        .message()
        .contains("required revision is a future revision")
}

/// A failure of the member or the connection rather than an answer to the request:
/// a read may be sent again (to another member).
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
    )
}

/// The request cannot have reached etcd's state machine: safe to send to another member.
fn never_applied(status: &tonic::Status) -> bool {
    if status.message().contains("no leader") {
        return true;
    }
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::HostUnreachable
            ) {
                return true;
            }
        }
        let text = err.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = err.source();
    }
    false
}

fn key_string(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Backend("etcd: a key is not UTF-8".into()))
}

fn convert_kv(kv: proto::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: key_string(kv.key)?,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    })
}

fn header_revision(header: Option<&proto::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision)
        .ok_or_else(|| StoreError::Backend("etcd: response without a header".into()))
}

/// Converts one etcd watch event to the store's form (a delete carries the last value).
fn convert_event(event: proto::Event) -> Result<Event, StoreError> {
    let kv = event
        .kv
        .ok_or_else(|| StoreError::Backend("etcd: watch event without a key".into()))?;
    let prev = event.prev_kv.map(convert_kv).transpose()?;
    if event.kind == proto::EVENT_DELETE {
        let key = key_string(kv.key)?;
        let kv = match &prev {
            Some(prev) => KeyValue {
                mod_revision: kv.mod_revision,
                ..prev.clone()
            },
            // The previous value was compacted away: the delete carries no value.
            None => KeyValue {
                key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: kv.mod_revision,
            },
        };
        return Ok(Event {
            kind: EventKind::Delete,
            kv,
            prev,
        });
    }
    let kv = convert_kv(kv)?;
    // etcd reports no previous value for a creation; never one from an earlier life.
    let prev = prev.filter(|p| p.create_revision == kv.create_revision);
    Ok(Event {
        kind: EventKind::Put,
        kv,
        prev,
    })
}

fn compare(key: &[u8], result: i32, target: proto::TargetUnion) -> proto::Compare {
    proto::Compare {
        result,
        target: match target {
            proto::TargetUnion::CreateRevision(_) => proto::TARGET_CREATE,
            proto::TargetUnion::ModRevision(_) => proto::TARGET_MOD,
        },
        key: key.to_vec(),
        target_union: Some(target),
    }
}

fn get_op(key: &[u8]) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(proto::Request::Range(proto::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

impl EtcdStore {
    /// Connects to the cluster: builds one channel per endpoint and waits until a
    /// member answers (at most `config.connect_timeout`, default 30 s).
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut tls = None;
        let mut members = Vec::with_capacity(config.endpoints.len());
        for url in &config.endpoints {
            validate_endpoint(url)?;
            let mut endpoint =
                Endpoint::from_shared(url.clone()).map_err(|e| EtcdError::InvalidEndpoint {
                    endpoint: url.clone(),
                    reason: e.to_string(),
                })?;
            endpoint = endpoint
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            if url.starts_with("https://") {
                if tls.is_none() {
                    tls = Some(tls_config(&config.tls)?);
                }
                if let Some(tls) = &tls {
                    endpoint = endpoint
                        .tls_config(tls.clone())
                        .map_err(|e| EtcdError::Tls(e.to_string()))?;
                }
            }
            members.push(Member {
                url: url.clone(),
                channel: endpoint.connect_lazy(),
            });
        }
        let store = EtcdStore {
            shared: Arc::new(Shared {
                members,
                preferred: AtomicUsize::new(0),
                compacted: AtomicI64::new(0),
            }),
        };
        let waited = config.connect_timeout.unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + waited;
        let probe = proto::RangeRequest {
            key: vec![0],
            count_only: true,
            ..Default::default()
        };
        // Each member in turn, one attempt each, until one answers or time is up.
        for index in (0..store.shared.members.len()).cycle() {
            let member = &store.shared.members[index];
            let attempt = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                unary::<_, proto::RangeResponse>(&member.channel, path::RANGE, probe.clone()),
            )
            .await;
            let error = match attempt {
                Ok(Ok(resp)) => {
                    store.shared.preferred.store(index, Ordering::Relaxed);
                    let revision = resp.header.map_or(0, |h| h.revision);
                    tracing::info!(member = %member.url, revision, "connected to etcd");
                    return Ok(store);
                }
                Ok(Err(status)) => status.message().to_string(),
                Err(_) => "timed out".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(EtcdError::Unreachable {
                    endpoints: config.endpoints.clone(),
                    waited,
                    last_error: error,
                });
            }
            tracing::debug!(member = %member.url, error, "waiting for etcd");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(EtcdError::NoEndpoints)
    }

    /// One unary call, sent to the preferred member and, when it fails in a way that
    /// allows it (see the crate docs), to the others until [`RETRY_FOR`] has passed.
    async fn call<Req, Resp>(
        &self,
        method: &'static str,
        req: Req,
        read_only: bool,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let members = &self.shared.members;
        let deadline = Instant::now() + RETRY_FOR;
        let mut attempt = 0usize;
        loop {
            let index = self.shared.preferred.load(Ordering::Relaxed) % members.len();
            let member = &members[index];
            let result = unary(&member.channel, method, req.clone()).await;
            let status = match result {
                Ok(resp) => return Ok(resp),
                Err(status) => status,
            };
            let retry = if read_only {
                transient(&status) || never_applied(&status)
            } else {
                never_applied(&status)
            };
            if !retry || Instant::now() >= deadline {
                return Err(status);
            }
            tracing::debug!(member = %member.url, method, error = %status.message(), "etcd call failed; trying another member");
            // Move on to the next member (unless another call already did).
            let _ = self.shared.preferred.compare_exchange(
                index,
                (index + 1) % members.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            attempt += 1;
            if attempt.is_multiple_of(members.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn range(&self, req: proto::RangeRequest) -> Result<proto::RangeResponse, tonic::Status> {
        self.call(path::RANGE, req, true).await
    }

    async fn txn(&self, req: proto::TxnRequest) -> Result<proto::TxnResponse, StoreError> {
        self.call(path::TXN, req, false)
            .await
            .map_err(|s| backend("txn", &s))
    }

    /// The key as the failure branch of a transaction read it: `NotFound` or `Conflict`.
    fn cas_failure(key: &str, expected: Revision, resp: proto::TxnResponse) -> StoreError {
        let current = resp.responses.into_iter().find_map(|op| match op.response {
            Some(proto::Response::Range(range)) => Some(range.kvs),
            _ => None,
        });
        match current.and_then(|kvs| kvs.into_iter().next()) {
            Some(kv) => StoreError::Conflict {
                key: key.to_string(),
                expected,
                current: kv.mod_revision,
            },
            None => StoreError::NotFound(key.to_string()),
        }
    }

    /// Records a compacted revision etcd reported.
    fn saw_compacted(&self, revision: Revision) {
        self.shared.compacted.fetch_max(revision, Ordering::AcqRel);
    }

    /// Whether reading at `revision` fails because it was compacted.
    async fn revision_compacted(&self, revision: Revision) -> Result<bool, StoreError> {
        let req = proto::RangeRequest {
            key: vec![0],
            revision,
            count_only: true,
            ..Default::default()
        };
        match self.range(req).await {
            Ok(_) => Ok(false),
            Err(s) if is_compacted(&s) => Ok(true),
            Err(s) if is_future(&s) => Ok(false),
            Err(s) => Err(backend("range", &s)),
        }
    }

    /// Opens an etcd watch and waits for it to be created.
    async fn open_watch(
        &self,
        create: proto::WatchCreateRequest,
    ) -> Result<tonic::Streaming<proto::WatchResponse>, StoreError> {
        let members = &self.shared.members;
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let index = self.shared.preferred.load(Ordering::Relaxed) % members.len();
            let member = &members[index];
            let request = proto::WatchRequest {
                request_union: Some(proto::WatchRequestUnion::Create(create.clone())),
            };
            // The request stream stays open (pending) for as long as the watch lives;
            // dropping the response stream cancels the watch on the server.
            let requests = futures_util::stream::once(std::future::ready(request))
                .chain(futures_util::stream::pending());
            match watch_call(&member.channel, requests).await {
                Ok(mut stream) => match stream.message().await {
                    Ok(Some(first)) if first.created && !first.canceled => return Ok(stream),
                    Ok(Some(first)) => {
                        if first.compact_revision > 0 {
                            self.saw_compacted(first.compact_revision);
                            return Err(StoreError::Compacted {
                                requested: create.start_revision - 1,
                                compacted: first.compact_revision,
                            });
                        }
                        return Err(StoreError::Backend(format!(
                            "etcd watch not created: {}",
                            first.cancel_reason
                        )));
                    }
                    Ok(None) => {
                        return Err(StoreError::Backend("etcd watch closed at once".into()))
                    }
                    Err(s) if Instant::now() < deadline && transient(&s) => {
                        tracing::debug!(member = %member.url, error = %s.message(), "etcd watch failed; trying another member");
                    }
                    Err(s) => return Err(backend("watch", &s)),
                },
                Err(s) if Instant::now() < deadline && transient(&s) => {
                    tracing::debug!(member = %member.url, error = %s.message(), "etcd watch failed; trying another member");
                }
                Err(s) => return Err(backend("watch", &s)),
            }
            let _ = self.shared.preferred.compare_exchange(
                index,
                (index + 1) % members.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asks etcd to refuse the request at once ("no leader") on a member without a leader,
/// rather than let it wait and time out with an unknown outcome; a watch on such a member
/// is canceled, so it can be opened again elsewhere.
fn require_leader<T>(request: &mut tonic::Request<T>) {
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
}

async fn unary<Req, Resp>(
    channel: &Channel,
    method: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
    let mut request = tonic::Request::new(req);
    request.set_timeout(CALL_TIMEOUT);
    require_leader(&mut request);
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(request, PathAndQuery::from_static(method), codec)
        .await
        .map(tonic::Response::into_inner)
}

async fn watch_call<S>(
    channel: &Channel,
    requests: S,
) -> Result<tonic::Streaming<proto::WatchResponse>, tonic::Status>
where
    S: futures_util::Stream<Item = proto::WatchRequest> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
    let codec = tonic_prost::ProstCodec::<proto::WatchRequest, proto::WatchResponse>::default();
    let mut request = tonic::Request::new(requests);
    require_leader(&mut request);
    grpc.streaming(request, PathAndQuery::from_static(path::WATCH), codec)
        .await
        .map(tonic::Response::into_inner)
}

/// The state of one watch stream.
struct WatchState {
    store: EtcdStore,
    stream: tonic::Streaming<proto::WatchResponse>,
    /// The revision of the last event queued.
    cursor: Revision,
    pending: VecDeque<Event>,
    /// The failure that ends the stream, delivered after the pending events.
    failure: Option<StoreError>,
    finished: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<Event, StoreError>, WatchState)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if let Some(failure) = self.failure.take() {
                return Some((Err(failure), self));
            }
            if self.finished {
                return None;
            }
            let failure = match self.stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled || resp.compact_revision > 0 {
                        self.finished = true;
                        if resp.compact_revision > 0 {
                            self.store.saw_compacted(resp.compact_revision);
                            StoreError::Compacted {
                                requested: self.cursor,
                                compacted: resp.compact_revision,
                            }
                        } else {
                            StoreError::Backend(format!(
                                "etcd watch canceled: {}",
                                resp.cancel_reason
                            ))
                        }
                    } else {
                        let mut bad = None;
                        for event in resp.events {
                            match convert_event(event) {
                                Ok(event) if event.revision() > self.cursor => {
                                    self.cursor = event.revision();
                                    self.pending.push_back(event);
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    bad = Some(e);
                                    break;
                                }
                            }
                        }
                        match bad {
                            Some(e) => {
                                self.finished = true;
                                e
                            }
                            None => continue,
                        }
                    }
                }
                Ok(None) => {
                    self.finished = true;
                    StoreError::Backend("etcd watch stream closed".into())
                }
                Err(s) => {
                    self.finished = true;
                    if is_compacted(&s) {
                        let compacted = self.store.shared.compacted.load(Ordering::Acquire);
                        StoreError::Compacted {
                            requested: self.cursor,
                            compacted,
                        }
                    } else {
                        backend("watch", &s)
                    }
                }
            };
            // The events received before the failure are delivered first.
            self.failure = Some(failure);
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let k = key.as_bytes();
        let resp = self
            .txn(proto::TxnRequest {
                compare: vec![compare(
                    k,
                    proto::COMPARE_EQUAL,
                    proto::TargetUnion::CreateRevision(0),
                )],
                success: vec![proto::RequestOp {
                    request: Some(proto::Request::Put(proto::PutRequest {
                        key: k.to_vec(),
                        value: value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        let revision = header_revision(resp.header.as_ref())?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .range(proto::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|s| backend("range", &s))?;
        resp.kvs.into_iter().next().map(convert_kv).transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let (mut key, range_end) = prefix_range(prefix);
        if let Some(start_after) = &opts.start_after {
            let mut successor = start_after.as_bytes().to_vec();
            successor.push(0);
            if successor > key {
                key = successor;
            }
        }
        let requested = opts.revision.filter(|r| *r > 0);
        let limit = opts.limit.filter(|l| *l > 0);
        let req = proto::RangeRequest {
            key,
            range_end,
            limit: limit.map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)),
            revision: requested.unwrap_or(0),
            ..Default::default()
        };
        let resp = match self.range(req).await {
            Ok(resp) => resp,
            Err(s) if is_compacted(&s) => {
                let requested = requested.unwrap_or(0);
                let compacted = self.compacted_revision().await?;
                return Err(StoreError::Compacted {
                    requested,
                    compacted,
                });
            }
            Err(s) if is_future(&s) => {
                let current = self.current_revision().await?;
                return Err(StoreError::FutureRevision {
                    requested: requested.unwrap_or(0),
                    current,
                });
            }
            Err(s) => return Err(backend("range", &s)),
        };
        let revision = match requested {
            Some(r) => r,
            None => header_revision(resp.header.as_ref())?,
        };
        let items = resp
            .kvs
            .into_iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>, _>>()?;
        let more = resp.more;
        let remaining = if more {
            usize::try_from(resp.count)
                .unwrap_or(0)
                .saturating_sub(items.len())
        } else {
            0
        };
        Ok(ListResult {
            items,
            revision,
            more,
            remaining,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        let k = key.as_bytes();
        let resp = self
            .txn(proto::TxnRequest {
                compare: vec![
                    compare(
                        k,
                        proto::COMPARE_GREATER,
                        proto::TargetUnion::CreateRevision(0),
                    ),
                    compare(
                        k,
                        proto::COMPARE_EQUAL,
                        proto::TargetUnion::ModRevision(expected_revision),
                    ),
                ],
                success: vec![proto::RequestOp {
                    request: Some(proto::Request::Put(proto::PutRequest {
                        key: k.to_vec(),
                        value: value.clone(),
                        prev_kv: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![get_op(k)],
            })
            .await?;
        if !resp.succeeded {
            return Err(Self::cas_failure(key, expected_revision, resp));
        }
        let revision = header_revision(resp.header.as_ref())?;
        let prev = resp.responses.into_iter().find_map(|op| match op.response {
            Some(proto::Response::Put(put)) => put.prev_kv,
            _ => None,
        });
        let create_revision = prev.map_or(revision, |p| p.create_revision);
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        let k = key.as_bytes();
        let mut compares = vec![compare(
            k,
            proto::COMPARE_GREATER,
            proto::TargetUnion::CreateRevision(0),
        )];
        if let Some(expected) = expected_revision {
            compares.push(compare(
                k,
                proto::COMPARE_EQUAL,
                proto::TargetUnion::ModRevision(expected),
            ));
        }
        let resp = self
            .txn(proto::TxnRequest {
                compare: compares,
                success: vec![proto::RequestOp {
                    request: Some(proto::Request::DeleteRange(proto::DeleteRangeRequest {
                        key: k.to_vec(),
                        prev_kv: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![get_op(k)],
            })
            .await?;
        if !resp.succeeded {
            return Err(Self::cas_failure(key, expected_revision.unwrap_or(0), resp));
        }
        let revision = header_revision(resp.header.as_ref())?;
        let prev = resp
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(proto::Response::DeleteRange(del)) => del.prev_kvs.into_iter().next(),
                _ => None,
            })
            .ok_or_else(|| StoreError::Backend("etcd: delete without the previous value".into()))?;
        let mut kv = convert_kv(prev)?;
        kv.mod_revision = revision;
        Ok(kv)
    }

    /// Watches from `after_revision + 1`. `Compacted` when `after_revision` is below
    /// the compacted revision (as for SQLite: a read at `after_revision` must still
    /// work), from `watch` itself or, when a compaction races the watch, as the
    /// stream's last item.
    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let after = after_revision.max(0);
        if self.revision_compacted(after.max(1)).await? {
            let compacted = self.compacted_revision().await?;
            return Err(StoreError::Compacted {
                requested: after_revision,
                compacted,
            });
        }
        let (key, range_end) = prefix_range(prefix);
        let stream = self
            .open_watch(proto::WatchCreateRequest {
                key,
                range_end,
                start_revision: after + 1,
                progress_notify: false,
                prev_kv: true,
            })
            .await?;
        let state = WatchState {
            store: self.clone(),
            stream,
            cursor: after,
            pending: VecDeque::new(),
            failure: None,
            finished: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            WatchState::next,
        )))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .range(proto::RangeRequest {
                key: vec![0],
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(|s| backend("range", &s))?;
        header_revision(resp.header.as_ref())
    }

    /// etcd's physical compaction at `revision`: a no-op at or below the compacted
    /// revision, `FutureRevision` above the current one.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let req = proto::CompactionRequest {
            revision,
            physical: true,
        };
        match self
            .call::<_, proto::CompactionResponse>(path::COMPACT, req, false)
            .await
        {
            Ok(_) => {
                self.saw_compacted(revision);
                tracing::debug!(revision, "compacted etcd");
                Ok(())
            }
            Err(s) if is_compacted(&s) => Ok(()),
            Err(s) if is_future(&s) => Err(StoreError::FutureRevision {
                requested: revision,
                current: self.current_revision().await?,
            }),
            Err(s) => Err(backend("compact", &s)),
        }
    }

    /// The compacted revision as etcd reports it: a read at the last one known tells
    /// whether it is still current; otherwise a watch from it makes etcd tell the new
    /// one (another client may have compacted).
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        let known = self.shared.compacted.load(Ordering::Acquire);
        if !self.revision_compacted(known.max(1)).await? {
            return Ok(known);
        }
        let start = known.max(1);
        let mut stream = match self
            .open_watch(proto::WatchCreateRequest {
                key: vec![0],
                range_end: vec![0, 0],
                start_revision: start,
                ..Default::default()
            })
            .await
        {
            Err(StoreError::Compacted { compacted, .. }) => return Ok(compacted),
            Err(e) => return Err(e),
            Ok(stream) => stream,
        };
        let reported = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.compact_revision > 0 => return Ok(resp.compact_revision),
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(StoreError::Backend("etcd watch closed".into())),
                    Err(s) => return Err(backend("watch", &s)),
                }
            }
        })
        .await
        .map_err(|_| StoreError::Backend("etcd did not report its compacted revision".into()))??;
        self.saw_compacted(reported);
        Ok(self.shared.compacted.load(Ordering::Acquire))
    }
}
