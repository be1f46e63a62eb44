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

/// The data a ControllerRevision stores for a pod template, in upstream's encoding (the
/// daemon set and stateful set controllers' `getPatch`):
/// `{"spec":{"template":{...,"$patch":"replace"}}}` with the template as Go's
/// `encoding/json` writes the typed object (every object's keys sorted, the fields Go
/// always writes present: `metadata.creationTimestamp: null`, each container's
/// `resources`), so clients comparing it byte for byte with their own `getPatch` of the
/// owner (`kubectl rollout undo`, upstream's e2e `daemon.Match`) find it equal.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    go_typed_template(&mut t);
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    sorted(json!({"spec": {"template": t}}))
}

/// Adds to a pod template the fields Go's encoder writes although they are empty
/// (struct-typed fields, which `omitempty` never omits).
fn go_typed_template(t: &mut Value) {
    let Some(o) = t.as_object_mut() else {
        return;
    };
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.entry("creationTimestamp").or_insert(Value::Null);
    }
    let Some(spec) = o.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        return;
    };
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(|c| c.as_array_mut())
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_object_mut() {
                c.entry("resources").or_insert_with(|| json!({}));
                for e in c
                    .get_mut("env")
                    .and_then(|e| e.as_array_mut())
                    .into_iter()
                    .flatten()
                {
                    if let Some(r) = e
                        .pointer_mut("/valueFrom/resourceFieldRef")
                        .and_then(|r| r.as_object_mut())
                    {
                        r.entry("divisor").or_insert_with(|| json!("0"));
                    }
                }
            }
        }
    }
}

/// A copy of `v` with every object's keys in byte order (as Go writes a map).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Revision data without what does not change the pod template's meaning (nulls, empty
/// objects, a zero divisor, the `$patch` directive, key order): two revisions of one template, one
/// written before [`revision_data`] took upstream's encoding, compare equal.
fn normalized(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let out: serde_json::Map<String, Value> = m
                .iter()
                .filter(|(k, _)| k.as_str() != "$patch")
                // Go writes an unset resourceFieldRef divisor as "0"
                .filter(|(k, v)| !(k.as_str() == "divisor" && v.as_str() == Some("0")))
                .filter_map(|(k, v)| normalized(v).map(|v| (k.clone(), v)))
                .collect();
            (!out.is_empty()).then(|| sorted(Value::Object(out)))
        }
        Value::Array(a) => Some(Value::Array(
            a.iter()
                .map(|x| normalized(x).unwrap_or(Value::Null))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Whether two revision datas describe the same pod template (see [`normalized`]).
pub fn same_revision_data(a: &Value, b: &Value) -> bool {
    a == b || normalized(a) == normalized(b)
}

/// The pod template stored in a ControllerRevision made by [`revision_data`].
pub fn template_of_revision(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
        if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.retain(|_, v| !v.is_null());
        }
    }
    serde_json::from_value(t).ok()
}

/// The hash naming a revision (upstream's `HashControllerRevision`): FNV-1 (32 bits) of
/// the data as written (compact JSON), then the collision count in decimal when there
/// is one, rendered as a decimal string mapped onto the alphabet of generated names.
pub fn revision_hash(data: &Value, collision_count: Option<i32>) -> String {
    let mut bytes = data.to_string().into_bytes();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    safe_encode(&fnv1_32(&bytes).to_string())
}

/// FNV-1 32-bit (Go's `hash/fnv.New32`).
fn fnv1_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        h.wrapping_mul(0x0100_0193) ^ u32::from(*b)
    })
}

/// Upstream's `rand.SafeEncodeString`: each byte mapped onto the alphabet of generated
/// names (no vowels, no look-alikes).
fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
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
/// an equal existing revision is reused (bumped to the newest number when older; one
/// with exactly this data first, else one of the same template in an older encoding,
/// so pods keep their hash), otherwise a new one `<owner>-<hash>` is created carrying
/// the owner's `annotations` (where `kubectl rollout history` reads the change cause);
/// a name taken by different data raises the collision count.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_revision(
    api: &Api<ControllerRevision>,
    owner: &OwnerReference,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    template: &PodTemplateSpec,
    mut collision_count: i32,
    existing: &[ControllerRevision],
) -> Result<(ControllerRevision, i32), ControllerError> {
    let data = revision_data(template);
    let max = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    let exact = existing
        .iter()
        .rev()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data));
    let same = || {
        existing.iter().rev().find(|r| {
            r.data
                .as_ref()
                .is_some_and(|d| same_revision_data(&d.0, &data))
        })
    };
    if let Some(found) = exact.or_else(same) {
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
                annotations: annotations.clone().filter(|a| !a.is_empty()),
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
                if other
                    .data
                    .as_ref()
                    .is_some_and(|d| same_revision_data(&d.0, &data))
                {
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
    fn revision_data_is_upstreams_encoding() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"daemonset-name": "ds"}},
            "spec": {"terminationGracePeriodSeconds": 30, "restartPolicy": "Always",
                "containers": [{"name": "app", "image": "img", "ports": [{"containerPort": 9376, "protocol": "TCP"}],
                    "env": [{"name": "L", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}]}
        }))
        .expect("template");
        let data = revision_data(&t);
        assert_eq!(
            data.to_string(),
            concat!(
                r#"{"spec":{"template":{"$patch":"replace","metadata":{"creationTimestamp":null,"labels":{"daemonset-name":"ds"}},"#,
                r#""spec":{"containers":[{"env":[{"name":"L","valueFrom":{"resourceFieldRef":{"divisor":"0","resource":"limits.cpu"}}}],"#,
                r#""image":"img","name":"app","ports":[{"containerPort":9376,"protocol":"TCP"}],"resources":{}}],"#,
                r#""restartPolicy":"Always","terminationGracePeriodSeconds":30}}}}"#
            )
        );
        // The same template in the encoding older rk3s wrote is the same revision.
        let mut old = serde_json::to_value(&t).expect("json");
        old["$patch"] = json!("replace");
        let old = json!({"spec": {"template": old}});
        assert_ne!(old, data);
        assert!(same_revision_data(&old, &data));
        let mut other = t.clone();
        if let Some(s) = other.spec.as_mut() {
            s.containers[0].image = Some("img2".into());
        }
        assert!(!same_revision_data(&revision_data(&other), &data));
    }

    #[test]
    fn revision_hash_is_fnv1_of_the_data_and_the_collision_count() {
        // Go's hash/fnv New32 test vectors.
        assert_eq!(fnv1_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_32(b"ab"), 0x7077_2d38);
        assert_eq!(safe_encode("0123"), "4567");
        let d = json!({"a": 1});
        let mut with = br#"{"a":1}"#.to_vec();
        with.extend_from_slice(b"2");
        assert_eq!(
            revision_hash(&d, Some(2)),
            safe_encode(&fnv1_32(&with).to_string())
        );
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
