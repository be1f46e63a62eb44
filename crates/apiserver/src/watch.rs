//! Watch streams, served from the watch cache: initial events (`sendInitialEvents`,
//! or the legacy "no resourceVersion" form), then live changes filtered by selectors,
//! bookmarks, `410 Gone` for expired resource versions, and `timeoutSeconds`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rk3s_api::{ApiError, ResourceInfo};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::body::{Response, ResponseBody};
use crate::cache::{CacheEvent, CacheEventKind, CachedObject};
use crate::output::{partial_metadata, Output};
use crate::rest::{Call, Filter};

const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Encoder {
    res: Arc<ResourceInfo>,
    output: Output,
    first: bool,
    crd: Option<Arc<crate::crd::CrdVersion>>,
    /// The watch cache, to resolve conversion webhook Services (`None`: custom
    /// resources are not converted).
    cache: Option<Arc<crate::cache::WatchCache>>,
}

impl Encoder {
    /// Whether events carry something else than the stored objects.
    fn changes_on_read(&self) -> bool {
        crate::crd::changes_on_read(&self.res, self.crd.as_deref())
    }

    /// A stored object as reads return it.
    fn read(&self, stored: Value) -> Value {
        crate::crd::read(&self.res, self.crd.as_deref(), stored)
    }

    /// Whether custom resources may need a conversion to the watched version.
    fn converts(&self) -> Option<(&crate::cache::WatchCache, &crate::crd::CrdVersion)> {
        let crd = self.crd.as_deref().filter(|v| v.conversion.is_some())?;
        Some((self.cache.as_deref()?, crd))
    }

    /// Stored objects as reads return them, custom resources converted to the
    /// watched version in one call.
    async fn read_all(&self, stored: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        let objs = match self.converts() {
            Some((cache, crd)) => {
                crate::crd::convert_to(cache, Some(crd), stored, &self.res.api_version()).await?
            }
            None => stored,
        };
        Ok(objs.into_iter().map(|o| self.read(o)).collect())
    }

    /// `ev` with its objects converted to the watched version (custom resources of a
    /// CRD with several versions), else `ev` itself.
    async fn convert_event(&self, ev: &Arc<CacheEvent>) -> Result<Arc<CacheEvent>, ApiError> {
        let Some((cache, crd)) = self.converts() else {
            return Ok(ev.clone());
        };
        let want = self.res.api_version();
        let mut objs = vec![(*ev.object).clone()];
        objs.extend(ev.prev.as_ref().map(|p| p.value()));
        if objs
            .iter()
            .all(|o| o.get("apiVersion").and_then(Value::as_str) == Some(want.as_str()))
        {
            return Ok(ev.clone());
        }
        let mut out = crate::crd::convert_to(cache, Some(crd), objs, &want)
            .await?
            .into_iter();
        let object = out
            .next()
            .ok_or_else(|| ApiError::internal("conversion returned no object"))?;
        let prev = ev.prev.as_ref().and_then(|p| {
            Some(CachedObject::from_value(
                p.key.clone(),
                p.revision,
                out.next()?,
            ))
        });
        Ok(Arc::new(CacheEvent {
            kind: ev.kind,
            key: ev.key.clone(),
            revision: ev.revision,
            object: Arc::new(object),
            prev,
            raw: ev.raw.clone(),
        }))
    }

    fn event(&mut self, typ: &str, obj: &Value) -> Bytes {
        let object = match &self.output {
            Output::Json => obj.clone(),
            Output::PartialMetadata => partial_metadata(obj),
            Output::Table(inc) => {
                let rv = crate::object::meta_str(obj, "resourceVersion")
                    .unwrap_or("")
                    .to_string();
                let mut t = match &self.crd {
                    Some(v) => crate::crd::table(v, std::slice::from_ref(obj), &rv, None, *inc),
                    None => rk3s_printers::table(
                        &self.res.group,
                        &self.res.kind,
                        std::slice::from_ref(obj),
                        &rv,
                        None,
                        *inc,
                        jiff::Timestamp::now(),
                    ),
                };
                if !self.first {
                    if let Some(m) = t.as_object_mut() {
                        m.insert("columnDefinitions".into(), Value::Null);
                    }
                }
                self.first = false;
                t
            }
        };
        let mut line =
            serde_json::to_vec(&json!({"type": typ, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// A JSON watch line from an already serialized object (no re-encoding).
    fn event_raw(&self, typ: &str, raw: &[u8]) -> Bytes {
        let mut line = Vec::with_capacity(raw.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(typ.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(raw);
        line.extend_from_slice(b"}\n");
        Bytes::from(line)
    }

    fn bookmark(&self, rv: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta});
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn error(&self, e: &ApiError) -> Bytes {
        let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
            .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Serves a watch request.
pub async fn serve(call: &Call<'_>) -> Result<Response, ApiError> {
    let q = &call.query;
    let mut filter = Filter::from_query(&call.res, q)?;
    let _ = &mut filter;
    let name = call.info.name.clone();
    let prefix = match &name {
        Some(n) => call.res.key(
            if call.res.namespaced() {
                call.info.namespace.as_deref()
            } else {
                None
            },
            n,
        ),
        None => call.res.namespace_prefix(if call.res.namespaced() {
            call.info.namespace.as_deref()
        } else {
            None
        }),
    };
    let rv = q.get("resourceVersion").map(String::from);
    let send_initial = match q.get("sendInitialEvents") {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    if send_initial.is_some() {
        if q.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::invalid_simple(
                "sendInitialEvents",
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !q.flag("allowWatchBookmarks") && send_initial == Some(true) {
            return Err(ApiError::invalid_simple(
                "sendInitialEvents",
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
    }
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let legacy_initial = send_initial.is_none() && matches!(rv.as_deref(), None | Some("0"));
    let initial = send_initial == Some(true) || legacy_initial;

    let cache = call.inner.cache.clone();
    let mut enc = Encoder {
        res: call.res.clone(),
        output: call.output.clone(),
        first: true,
        crd: call.inner.schemas.crds.version(&call.res),
        cache: Some(call.inner.cache.clone()),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);

    // Work out the starting point before answering, so a 410 can be a plain error when
    // possible (upstream sends it as an ERROR event in a 200 stream; do the same).
    let mut initial_items = Vec::new();
    let start_rev;
    let mut backlog: Vec<Arc<CacheEvent>> = Vec::new();
    let live: broadcast::Receiver<Arc<CacheEvent>>;
    let mut expired: Option<ApiError> = None;
    if initial {
        if let Some(want) = rv
            .as_deref()
            .and_then(|r| r.parse::<i64>().ok())
            .filter(|r| *r > 0)
        {
            cache.wait_for(want, Duration::from_secs(3)).await;
        } else if send_initial == Some(true) && rv.as_deref().is_none_or(|r| r.is_empty()) {
            let _ = cache.wait_fresh(Duration::from_secs(3)).await;
        }
        let (items, rev, rx_live) = cache.snapshot_and_subscribe(&prefix);
        initial_items = items;
        start_rev = rev;
        live = rx_live;
    } else {
        let after: i64 = match rv.as_deref().unwrap_or("").parse() {
            Ok(r) => r,
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid resource version: {}",
                    rv.unwrap_or_default()
                )))
            }
        };
        // Too old for the window of this resource (upstream's watch cache keeps a
        // window per resource): 410 `Expired` as an ERROR event, and the client relists.
        match cache.subscribe_to(&prefix, Some(after)) {
            Ok((sub, _now)) => {
                backlog = sub.backlog;
                live = sub.live;
                start_rev = after;
            }
            Err(oldest) => {
                expired = Some(ApiError::gone(format!(
                    "too old resource version: {after} ({oldest})"
                )));
                live = cache
                    .subscribe(None)
                    .map(|(s, _)| s.live)
                    .map_err(|_| ApiError::internal("watch cache unavailable"))?;
                start_rev = after;
            }
        }
    }

    let mut resp = http::Response::new(ResponseBody::Stream(rx));
    let ct = match &call.output {
        Output::Json => "application/json",
        _ => "application/json",
    };
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );

    let res_key_prefix = prefix.clone();
    let exact = name.is_some();
    tokio::spawn(async move {
        let mut live = live;
        if let Some(e) = expired {
            let _ = tx.send(enc.error(&e)).await;
            return;
        }
        let matches_key = |k: &str| {
            if exact {
                k == res_key_prefix
            } else {
                k.starts_with(&res_key_prefix)
            }
        };
        if enc.changes_on_read() {
            let stored = initial_items.iter().map(|o| o.value()).collect();
            let objs = match enc.read_all(stored).await {
                Ok(objs) => objs,
                Err(e) => {
                    let _ = tx.send(enc.error(&e)).await;
                    return;
                }
            };
            for obj in objs {
                if filter.matches(&obj) && tx.send(enc.event("ADDED", &obj)).await.is_err() {
                    return;
                }
            }
        } else {
            for o in &initial_items {
                let sent = if enc.output == Output::Json {
                    !filter.matches_cached(o)
                        || tx.send(enc.event_raw("ADDED", &o.raw)).await.is_ok()
                } else {
                    !filter.matches_cached(o)
                        || tx.send(enc.event("ADDED", &o.object())).await.is_ok()
                };
                if !sent {
                    return;
                }
            }
        }
        if send_initial == Some(true) && tx.send(enc.bookmark(start_rev, true)).await.is_err() {
            return;
        }
        let mut last = start_rev;
        for ev in backlog {
            if let Some(b) =
                match converted_event(&mut enc, &filter, &matches_key, &ev, &mut last, &tx).await {
                    Ok(b) => b,
                    Err(()) => return,
                }
            {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    if !bookmarks {
                        continue;
                    }
                    // A bookmark promises that every event up to its resourceVersion has
                    // been sent. The cache broadcasts under its lock, so every event up to
                    // `seen` is already in `live`: deliver those first.
                    let seen = cache.revision();
                    loop {
                        match live.try_recv() {
                            Ok(ev) => {
                                if let Some(b) = match converted_event(&mut enc, &filter, &matches_key, &ev, &mut last, &tx).await { Ok(b) => b, Err(()) => return } {
                                    if tx.send(b).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                tracing::debug!("watcher lagged; closing its stream");
                                return;
                            }
                            Err(broadcast::error::TryRecvError::Closed) => return,
                        }
                    }
                    if tx.send(enc.bookmark(last.max(seen), false)).await.is_err() {
                        return;
                    }
                }
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        if let Some(b) = match converted_event(&mut enc, &filter, &matches_key, &ev, &mut last, &tx).await { Ok(b) => b, Err(()) => return } {
                            if tx.send(b).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        tracing::debug!("watcher lagged; closing its stream");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(resp)
}

/// [`next_event`] with the event's objects converted to the watched version first.
/// `Err` ends the stream: a failed conversion was sent as an ERROR event (or the
/// watcher is gone).
async fn converted_event(
    enc: &mut Encoder,
    filter: &Filter,
    matches_key: &impl Fn(&str) -> bool,
    ev: &Arc<CacheEvent>,
    last: &mut i64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Option<Bytes>, ()> {
    if ev.revision <= *last || !matches_key(&ev.key) {
        return Ok(next_event(enc, filter, matches_key, ev, last));
    }
    match enc.convert_event(ev).await {
        Ok(ev) => Ok(next_event(enc, filter, matches_key, &ev, last)),
        Err(e) => {
            let _ = tx.send(enc.error(&e)).await;
            Err(())
        }
    }
}

/// The watch line for the next cache event, if this watcher gets one: events at or
/// before `last` were already handled (history and live events overlap), other keys
/// and events the selectors filter out advance `last` but send nothing.
fn next_event(
    enc: &mut Encoder,
    filter: &Filter,
    matches_key: &impl Fn(&str) -> bool,
    ev: &CacheEvent,
    last: &mut i64,
) -> Option<Bytes> {
    if ev.revision <= *last {
        return None;
    }
    *last = ev.revision;
    if !matches_key(&ev.key) {
        return None;
    }
    encode_event(enc, filter, ev)
}

fn encode_event(enc: &mut Encoder, filter: &Filter, ev: &CacheEvent) -> Option<Bytes> {
    let converted;
    let (object, before) = if enc.changes_on_read() {
        converted = enc.read((*ev.object).clone());
        let before = ev
            .prev
            .as_ref()
            .is_some_and(|p| filter.matches(&enc.read(p.value())));
        (&converted, before)
    } else {
        let before = ev.prev.as_ref().is_some_and(|p| filter.matches_cached(p));
        (&*ev.object, before)
    };
    let now = filter.matches(object);
    let typ = match ev.kind {
        CacheEventKind::Added => now.then_some("ADDED"),
        CacheEventKind::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
        CacheEventKind::Deleted => (before || now).then_some("DELETED"),
    }?;
    if !enc.changes_on_read() && enc.output == Output::Json {
        return Some(enc.event_raw(typ, &ev.raw));
    }
    Some(enc.event(typ, object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Query;

    fn encoder(plural: &str) -> Encoder {
        let res = rk3s_api::Registry::builtin()
            .get("", "v1", plural)
            .expect("built-in resource");
        Encoder {
            res,
            output: Output::Json,
            first: true,
            crd: None,
            cache: None,
        }
    }

    fn filter(plural: &str, query: &str) -> Filter {
        let res = rk3s_api::Registry::builtin()
            .get("", "v1", plural)
            .expect("built-in resource");
        Filter::from_query(&res, &Query::parse(Some(query))).expect("selectors")
    }

    fn cm(name: &str, uid: &str, rv: i64, labels: Value) -> Arc<Value> {
        Arc::new(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": name, "namespace": "default", "uid": uid, "resourceVersion": rv.to_string(), "labels": labels}}),
        )
    }

    fn event(
        kind: CacheEventKind,
        revision: i64,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) -> CacheEvent {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let raw = Bytes::from(serde_json::to_vec(&*object).expect("json"));
        let key = format!("/registry/core/configmaps/default/{name}");
        let prev = prev.map(|p| CachedObject::from_value(key.clone(), revision - 1, (*p).clone()));
        CacheEvent {
            kind,
            key,
            revision,
            object,
            prev,
            raw,
        }
    }

    /// (type, uid) of the line sent for `ev`, if any.
    fn sent(enc: &mut Encoder, f: &Filter, ev: &CacheEvent) -> Option<(String, String)> {
        let line = encode_event(enc, f, ev)?;
        let v: Value = serde_json::from_slice(&line).expect("watch line is JSON");
        Some((
            v["type"].as_str().unwrap_or_default().into(),
            v["object"]["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .into(),
        ))
    }

    #[test]
    fn name_selected_watch_gets_deleted_for_the_old_object_then_added_for_the_new_one() {
        // kubectl's delete wait: fieldSelector=metadata.name=x, while x is deleted and
        // re-created with another UID.
        let mut enc = encoder("configmaps");
        let f = filter("configmaps", "fieldSelector=metadata.name%3Dx");
        let old = cm("x", "old", 10, json!({}));
        let del = event(
            CacheEventKind::Deleted,
            11,
            cm("x", "old", 11, json!({})),
            Some(old),
        );
        assert_eq!(
            sent(&mut enc, &f, &del),
            Some(("DELETED".into(), "old".into()))
        );
        let add = event(
            CacheEventKind::Added,
            12,
            cm("x", "new", 12, json!({})),
            None,
        );
        assert_eq!(
            sent(&mut enc, &f, &add),
            Some(("ADDED".into(), "new".into()))
        );
        // Other names are filtered out, deletes included.
        let other = event(
            CacheEventKind::Deleted,
            13,
            cm("y", "y", 13, json!({})),
            Some(cm("y", "y", 9, json!({}))),
        );
        assert_eq!(sent(&mut enc, &f, &other), None);
    }

    #[test]
    fn label_selected_watch_sees_objects_leave_and_enter_the_selection() {
        let mut enc = encoder("configmaps");
        let f = filter("configmaps", "labelSelector=app%3Da");
        let a = json!({"app": "a"});
        let b = json!({"app": "b"});
        let leave = event(
            CacheEventKind::Modified,
            5,
            cm("x", "u", 5, b.clone()),
            Some(cm("x", "u", 4, a.clone())),
        );
        assert_eq!(
            sent(&mut enc, &f, &leave),
            Some(("DELETED".into(), "u".into()))
        );
        let enter = event(
            CacheEventKind::Modified,
            6,
            cm("x", "u", 6, a.clone()),
            Some(cm("x", "u", 5, b.clone())),
        );
        assert_eq!(
            sent(&mut enc, &f, &enter),
            Some(("ADDED".into(), "u".into()))
        );
        let stay = event(
            CacheEventKind::Modified,
            7,
            cm("x", "u", 7, a.clone()),
            Some(cm("x", "u", 6, a.clone())),
        );
        assert_eq!(
            sent(&mut enc, &f, &stay),
            Some(("MODIFIED".into(), "u".into()))
        );
        // Deleted while selected: DELETED (matched by its last state).
        let gone = event(
            CacheEventKind::Deleted,
            8,
            cm("x", "u", 8, a.clone()),
            Some(cm("x", "u", 7, a)),
        );
        assert_eq!(
            sent(&mut enc, &f, &gone),
            Some(("DELETED".into(), "u".into()))
        );
        // Never selected: nothing.
        let unseen = event(
            CacheEventKind::Deleted,
            9,
            cm("z", "z", 9, b.clone()),
            Some(cm("z", "z", 3, b)),
        );
        assert_eq!(sent(&mut enc, &f, &unseen), None);
    }

    #[test]
    fn events_at_or_before_the_last_revision_are_sent_once() {
        let mut enc = encoder("configmaps");
        let f = filter("configmaps", "");
        let key = |k: &str| k.starts_with("/registry/core/configmaps/default/");
        let mut last = 10;
        let at = |rev| {
            event(
                CacheEventKind::Added,
                rev,
                cm("x", "u", rev, json!({})),
                None,
            )
        };
        // The watch started from resourceVersion 10: revision 10 itself is not sent,
        // 11 is, and a repeat of 11 (history and live overlap) is not.
        assert!(next_event(&mut enc, &f, &key, &at(10), &mut last).is_none());
        assert!(next_event(&mut enc, &f, &key, &at(11), &mut last).is_some());
        assert!(next_event(&mut enc, &f, &key, &at(11), &mut last).is_none());
        assert_eq!(last, 11);
        // Another resource's event advances `last` but sends nothing.
        let mut pod = at(12);
        pod.key = "/registry/core/pods/default/x".into();
        assert!(next_event(&mut enc, &f, &key, &pod, &mut last).is_none());
        assert_eq!(last, 12);
    }
}
