//! Events expire (kube-apiserver's `--event-ttl`, 1 h by default): upstream stores each
//! Event with an etcd lease of that length; here every server sweeps the Events every
//! [`SWEEP_INTERVAL`] and deletes those last seen longer than the TTL ago (compare-and-swap
//! on their revision, so two servers sweeping at once, or an Event updated meanwhile,
//! never lose a newer write). Without this, a busy cluster's datastore grows forever.

use std::time::Duration;

use rk3s_store::StoreError;
use serde_json::Value;

use crate::state::Inner;
use crate::ApiServerError;

/// Upstream's default `--event-ttl`.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);
/// How often the Events are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// When an Event was last seen (unix seconds): the newest of `lastTimestamp`,
/// `series.lastObservedTime`, `eventTime`, `firstTimestamp` and the creation time.
pub fn last_seen(event: &Value) -> Option<i64> {
    [
        &event["lastTimestamp"],
        &event["series"]["lastObservedTime"],
        &event["eventTime"],
        &event["firstTimestamp"],
        &event["metadata"]["creationTimestamp"],
    ]
    .into_iter()
    .filter_map(|v| v.as_str())
    .filter_map(|s| s.parse::<jiff::Timestamp>().ok())
    .map(|t| t.as_second())
    .max()
}

/// Deletes the Events last seen before `now - ttl`; returns how many.
pub async fn sweep(inner: &Inner, ttl: Duration, now: i64) -> Result<usize, ApiServerError> {
    let prefix = match inner.schemas.registry.get("", "v1", "events") {
        Some(r) => r.namespace_prefix(None),
        None => return Ok(0),
    };
    let cutoff = now - ttl.as_secs() as i64;
    let list = inner.store.list(&prefix, Default::default()).await?;
    let mut deleted = 0;
    for kv in list.items {
        let Ok(event) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        if last_seen(&event).is_some_and(|t| t < cutoff) {
            match inner.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => deleted += 1,
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(deleted)
}

/// Sweeps every [`SWEEP_INTERVAL`] for as long as the server runs.
pub fn spawn(inner: std::sync::Arc<Inner>, ttl: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            match sweep(&inner, ttl, jiff::Timestamp::now().as_second()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired events deleted"),
                Err(e) => tracing::warn!(error = %e, "event expiry sweep failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testutil::{call, server};

    #[test]
    fn last_seen_is_the_newest_time() {
        let e = json!({
            "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "firstTimestamp": "2026-01-01T00:00:00Z",
            "lastTimestamp": "2026-01-01T01:00:00Z",
        });
        assert_eq!(last_seen(&e), Some(1_767_229_200));
        let new_api = json!({"eventTime": "2026-01-01T00:00:00.000000Z", "series": {"lastObservedTime": "2026-01-01T02:00:00.000000Z"}});
        assert_eq!(last_seen(&new_api), Some(1_767_232_800));
        assert_eq!(last_seen(&json!({})), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_events_are_deleted_and_recent_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        for (name, last) in [
            ("old", "2020-01-01T00:00:00Z"),
            ("recent", "2030-01-01T00:00:00Z"),
        ] {
            let (code, body) = call(
                &api,
                "POST",
                "/api/v1/namespaces/default/events",
                Some(json!({
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name},
                    "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                    "reason": "Test", "message": "m", "type": "Normal",
                    "firstTimestamp": last, "lastTimestamp": last, "count": 1,
                    "source": {"component": "test"},
                })),
            )
            .await;
            assert_eq!(code, 201, "{body}");
        }
        let now = "2029-06-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .expect("time")
            .as_second();
        let n = sweep(api.inner(), DEFAULT_EVENT_TTL, now)
            .await
            .expect("sweep");
        assert_eq!(n, 1);
        let (code, _) = call(&api, "GET", "/api/v1/namespaces/default/events/old", None).await;
        assert_eq!(code, 404);
        let (code, _) = call(
            &api,
            "GET",
            "/api/v1/namespaces/default/events/recent",
            None,
        )
        .await;
        assert_eq!(code, 200);
    }
}
