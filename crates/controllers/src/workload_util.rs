//! Helpers of the Job, CronJob, StatefulSet, DaemonSet and TTL-after-finished controllers:
//! event recording, label selectors as list queries, conditions, and ControllerRevision
//! history (upstream's `pkg/controller/history`) shared by StatefulSets and DaemonSets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::ControllerError;

/// Label carrying the revision of a pod (StatefulSet: the revision name; DaemonSet: the hash).
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// Records events for one controller (the controller runtime's recorder, reporting as
/// the controller's component name). Failures to record are logged, never returned.
pub use rk3s_runtime::events::EventRecorder as Events;

/// An event decided by a pure planning function: (warning?, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Whether this is a Warning (else Normal) event.
    pub warning: bool,
    /// The event's reason (e.g. `SuccessfulCreate`).
    pub reason: String,
    /// The event's message.
    pub message: String,
}

impl PlannedEvent {
    /// A Normal event.
    pub fn normal(reason: &str, message: impl Into<String>) -> Self {
        PlannedEvent {
            warning: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// A Warning event.
    pub fn warning(reason: &str, message: impl Into<String>) -> Self {
        PlannedEvent {
            warning: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// A label selector rendered as a `labelSelector` query (`k=v,k in (a,b),!k,k`, sorted by
/// key, as upstream's `LabelSelectorAsSelector(sel).String()`); "" for an invalid
/// selector, which [`selector_matches`] then matches against nothing.
pub fn selector_query(sel: &LabelSelector) -> String {
    rk3s_core::LabelSelector::from_k8s(sel)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Whether an API error is a 409 AlreadyExists/Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether an API error is a 404 NotFound.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Runs `r`, treating NotFound as success.
pub fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<(), ControllerError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// An RFC 3339 timestamp with second precision, as the API serializes `metav1.Time`.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Deletes an object with `propagationPolicy` Background, ignoring NotFound.
pub async fn delete_background<K>(api: &Api<K>, name: &str) -> Result<(), ControllerError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    ignore_not_found(api.delete(name, &DeleteParams::background()).await)
}

/// Removes `finalizer` from an object with a merge patch guarded by its resourceVersion
/// (a concurrent change gives 409 and a retry), ignoring NotFound.
pub async fn remove_finalizer<K>(
    api: &Api<K>,
    meta: &ObjectMeta,
    finalizer: &str,
) -> Result<(), ControllerError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(fins) = &meta.finalizers else {
        return Ok(());
    };
    if !fins.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let kept: Vec<&String> = fins.iter().filter(|f| *f != finalizer).collect();
    let mut m = json!({"finalizers": kept});
    if let Some(rv) = &meta.resource_version {
        m["resourceVersion"] = json!(rv);
    }
    let name = meta.name.clone().unwrap_or_default();
    ignore_not_found(
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": m})),
        )
        .await,
    )
}

/// The status of a condition of `type_` in a list of (type, status) pairs.
pub fn condition_true<'a, I>(conds: I, type_: &str) -> bool
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    conds.into_iter().any(|(t, s)| t == type_ && s == "True")
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller owner reference (`controller: true`, `blockOwnerDeletion: true`).
pub fn controller_ref(owner: &ObjectMeta, api_version: &str, kind: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Label-selector matching: the one implementation of [`rk3s_core::selector`].
pub use rk3s_core::selector::k8s_selector_matches as selector_matches;

/// A pod's phase ("" when unknown).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether the pod is Succeeded or Failed.
pub fn is_pod_terminal(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// When the pod became ready (the `Ready` condition's transition time; the Unix epoch
/// when the time is missing), or None when it is not ready.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| {
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    })
}

/// Whether the pod is running and ready (upstream's `isRunningAndReady`).
pub fn is_running_and_ready(pod: &Pod) -> bool {
    pod_phase(pod) == "Running" && is_pod_ready(pod)
}

/// Whether the pod has been ready for `min_ready_seconds` at `now`.
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match ready_since(pod) {
        Some(t) => {
            min_ready_seconds <= 0
                || t.as_second() + i64::from(min_ready_seconds) <= now.as_second()
        }
        None => false,
    }
}

// ----- ControllerRevision history -----

/// The data a ControllerRevision stores for a pod template (upstream's patch form:
/// `{"spec":{"template":{...,"$patch":"replace"}}}`).
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template stored in a ControllerRevision made by [`revision_data`].
pub fn template_of_revision(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The hash of revision data and a collision count: FNV-1a (32 bits) of the JSON,
/// rendered as a decimal string mapped onto the alphabet of generated names (no vowels).
pub fn revision_hash(data: &Value, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(data.to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// Revisions owned by an object (by controller reference uid), oldest revision first.
pub fn owned_revisions(revs: Vec<ControllerRevision>, owner_uid: &str) -> Vec<ControllerRevision> {
    let mut v: Vec<_> = revs
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == owner_uid))
        .collect();
    v.sort_by_key(|r| r.revision);
    v
}

/// Finds or creates the revision of `template` for an owner and returns it with the
/// collision count to record (upstream's `getStatefulSetRevisions`/`constructHistory`):
/// an equal existing revision is reused (bumped to the newest number when older),
/// otherwise a new one `<owner>-<hash>` is created; a name taken by different data
/// raises the collision count.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_revision(
    api: &Api<ControllerRevision>,
    owner: &OwnerReference,
    labels: BTreeMap<String, String>,
    template: &PodTemplateSpec,
    mut collision_count: i32,
    existing: &[ControllerRevision],
) -> Result<(ControllerRevision, i32), ControllerError> {
    let data = revision_data(template);
    let max = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    if let Some(found) = existing
        .iter()
        .rev()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        if found.revision == max {
            return Ok((found.clone(), collision_count));
        }
        let name = found.metadata.name.clone().unwrap_or_default();
        let updated = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"revision": max + 1})),
            )
            .await?;
        return Ok((updated, collision_count));
    }
    for _ in 0..5 {
        let hash = revision_hash(&data, Some(collision_count).filter(|c| *c != 0));
        let name = format!("{}-{}", owner.name, hash);
        let mut l = labels.clone();
        l.insert(CONTROLLER_REVISION_HASH.to_string(), hash);
        let rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(l),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: max + 1,
        };
        match api.create(&PostParams::default(), &rev).await {
            Ok(r) => return Ok((r, collision_count)),
            Err(e) if is_conflict(&e) => {
                let other = api.get(&name).await?;
                if other.data.as_ref().map(|d| &d.0) == Some(&data) {
                    return Ok((other, collision_count));
                }
                collision_count += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ControllerError::Watch(
        "too many ControllerRevision hash collisions".into(),
    ))
}

/// Deletes the oldest revisions beyond `limit` that are not in `live` (names in use).
pub async fn truncate_history(
    api: &Api<ControllerRevision>,
    revs: &[ControllerRevision],
    live: &[String],
    limit: i32,
) -> Result<(), ControllerError> {
    let history: Vec<&ControllerRevision> = revs
        .iter()
        .filter(|r| !live.iter().any(|l| Some(l) == r.metadata.name.as_ref()))
        .collect();
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    if history.len() <= limit {
        return Ok(());
    }
    for r in &history[..history.len() - limit] {
        if let Some(n) = &r.metadata.name {
            ignore_not_found(api.delete(n, &DeleteParams::default()).await)?;
        }
    }
    Ok(())
}

/// Lists the objects of a namespace matching a selector.
pub async fn list_matching<K>(api: &Api<K>, sel: &LabelSelector) -> Result<Vec<K>, ControllerError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let q = selector_query(sel);
    let lp = if q.is_empty() {
        ListParams::default()
    } else {
        ListParams::default().labels(&q)
    };
    Ok(api.list(&lp).await?.items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selector_query_renders_all_operators() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "x".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "y".into(),
                    operator: "Exists".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(selector_query(&sel), "app=web,tier in (a,b),!x,y");
    }

    #[test]
    fn revision_hash_depends_on_data_and_collisions() {
        let t = PodTemplateSpec::default();
        let d = revision_data(&t);
        let h = revision_hash(&d, None);
        assert_eq!(h, revision_hash(&d, None));
        assert_ne!(h, revision_hash(&d, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut t2 = t.clone();
        t2.metadata = Some(ObjectMeta {
            labels: Some([("a".to_string(), "b".to_string())].into()),
            ..Default::default()
        });
        assert_ne!(h, revision_hash(&revision_data(&t2), None));
    }

    #[test]
    fn revision_round_trips_template() {
        let t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("a".to_string(), "b".to_string())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let rev = ControllerRevision {
            data: Some(RawExtension(revision_data(&t))),
            ..Default::default()
        };
        assert_eq!(template_of_revision(&rev), Some(t));
        assert_eq!(
            revision_data(&PodTemplateSpec::default())["spec"]["template"]["$patch"],
            "replace"
        );
    }
}
