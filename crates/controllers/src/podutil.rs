//! Helpers shared by the workload controllers (upstream's `pkg/controller` and
//! `pkg/api/v1/pod` utilities): label-selector matching, pod readiness and availability
//! (`minReadySeconds`), active-pod filtering and deletion ranking, controller owner
//! references, and pods made from a `PodTemplateSpec` with upstream's naming.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

/// Annotation with a pod's deletion cost (lower is deleted first).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Label-selector matching and emptiness: the one implementation of
/// [`rk3s_core::selector`] (an invalid selector matches nothing, `{}` everything).
pub use rk3s_core::selector::{
    k8s_selector_is_empty as selector_is_empty, k8s_selector_matches as selector_matches,
};

/// The `Ready` condition of a pod, if any.
fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now` (upstream's
/// `IsPodAvailable`).
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let Some(c) = ready_condition(pod) else {
        return false;
    };
    if c.status != "True" {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    match &c.last_transition_time {
        Some(t) => t.0.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
        None => false,
    }
}

/// Seconds until a ready pod becomes available, when it is ready but not yet available.
pub fn seconds_until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Option<i64> {
    let c = ready_condition(pod)?;
    if c.status != "True" || min_ready_seconds <= 0 {
        return None;
    }
    let t = c.last_transition_time.as_ref()?;
    let left = t.0.as_second() + i64::from(min_ready_seconds) - now.as_second();
    (left > 0).then_some(left)
}

/// Whether the pod counts as active: not Succeeded/Failed and not being deleted.
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller owner reference (`controller: true`, `blockOwnerDeletion: true`) to an
/// owner of the given apiVersion and kind.
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

/// What [`PodClaimer::step`] does with one candidate pod (upstream's `ClaimObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// Ours and matching: keep it.
    Keep,
    /// An orphan the selector matches: take it (add our controller reference).
    Adopt,
    /// Ours but no longer matching: let it go (drop our controller reference).
    Release,
    /// Not ours, or nothing may change now.
    Ignore,
}

/// A controller claiming pods as upstream's `PodControllerRefManager`: adopts orphans
/// its selector matches and releases its pods the selector no longer matches. The one
/// implementation for ReplicaSets, ReplicationControllers and Jobs.
pub struct PodClaimer<'a> {
    /// The owner's metadata (name, uid, deletionTimestamp).
    pub owner: &'a ObjectMeta,
    /// The owner's apiVersion, e.g. `apps/v1`.
    pub api_version: &'a str,
    /// The owner's kind, e.g. `ReplicaSet`.
    pub kind: &'a str,
    /// The owner's pod selector.
    pub selector: &'a LabelSelector,
    /// Finalizers added on adoption and removed on release (the Job's tracking
    /// finalizer; none for ReplicaSets).
    pub finalizers: &'a [&'a str],
    /// False when nothing may be adopted or released (e.g. a finished Job); an owner
    /// being deleted never adopts or releases either.
    pub may_change: bool,
}

/// The tests a claim patch starts with: the pod's uid, and its resourceVersion (the
/// patch carries lists computed from this copy; a changed pod fails the test and its
/// change queues the owner again).
fn guards(pod: &Pod) -> Vec<serde_json::Value> {
    let mut ops =
        vec![serde_json::json!({"op": "test", "path": "/metadata/uid", "value": pod.metadata.uid})];
    if let Some(rv) = &pod.metadata.resource_version {
        ops.push(
            serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
        );
    }
    ops
}

impl PodClaimer<'_> {
    fn frozen(&self) -> bool {
        !self.may_change || self.owner.deletion_timestamp.is_some()
    }

    /// The decision for one pod.
    pub fn step(&self, pod: &Pod) -> ClaimStep {
        let uid = self.owner.uid.as_deref().unwrap_or_default();
        let none = std::collections::BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&none);
        let matches = selector_matches(self.selector, labels);
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    ClaimStep::Keep
                } else if self.frozen() {
                    ClaimStep::Ignore
                } else {
                    ClaimStep::Release
                }
            }
            Some(_) => ClaimStep::Ignore,
            None => {
                if matches
                    && !self.frozen()
                    && pod.metadata.deletion_timestamp.is_none()
                    && !selector_is_empty(self.selector)
                {
                    ClaimStep::Adopt
                } else {
                    ClaimStep::Ignore
                }
            }
        }
    }

    /// The JSON patch that adopts `pod` (guarded by its uid): our controller reference
    /// and finalizers added.
    pub fn adopt_patch(&self, pod: &Pod) -> serde_json::Value {
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        refs.push(controller_ref(self.owner, self.api_version, self.kind));
        let mut ops = guards(pod);
        ops.push(
            serde_json::json!({"op": "add", "path": "/metadata/ownerReferences", "value": refs}),
        );
        let mut fins = pod.metadata.finalizers.clone().unwrap_or_default();
        let before = fins.len();
        for f in self.finalizers {
            if !fins.iter().any(|x| x == f) {
                fins.push(f.to_string());
            }
        }
        if fins.len() != before {
            ops.push(
                serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": fins}),
            );
        }
        serde_json::Value::Array(ops)
    }

    /// The JSON patch that releases `pod` (guarded by its uid): our references and
    /// finalizers removed.
    pub fn release_patch(&self, pod: &Pod) -> serde_json::Value {
        let uid = self.owner.uid.as_deref().unwrap_or_default();
        let refs: Vec<&OwnerReference> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != uid)
            .collect();
        let mut ops = guards(pod);
        ops.push(
            serde_json::json!({"op": "replace", "path": "/metadata/ownerReferences", "value": refs}),
        );
        let fins = pod.metadata.finalizers.clone().unwrap_or_default();
        let kept: Vec<&String> = fins
            .iter()
            .filter(|f| !self.finalizers.contains(&f.as_str()))
            .collect();
        if kept.len() != fins.len() {
            ops.push(
                serde_json::json!({"op": "replace", "path": "/metadata/finalizers", "value": kept}),
            );
        }
        serde_json::Value::Array(ops)
    }

    /// Claims `candidates` (the owner's pods and the namespace's orphans) through `api`:
    /// adopts and releases as [`Self::step`] decides; returns the pods it owns
    /// afterwards (adopted ones as the API server returned them). A pod gone meanwhile
    /// (404) is skipped; one changed meanwhile (a failed resourceVersion or uid test)
    /// fails the claim, so the owner's sync runs again on fresh data.
    pub async fn claim(
        &self,
        api: &kube::Api<Pod>,
        candidates: impl IntoIterator<Item = std::sync::Arc<Pod>>,
    ) -> Result<Vec<std::sync::Arc<Pod>>, crate::ControllerError> {
        let mut owned = Vec::new();
        for pod in candidates {
            let patch = match self.step(&pod) {
                ClaimStep::Keep => {
                    owned.push(pod);
                    continue;
                }
                ClaimStep::Ignore => continue,
                ClaimStep::Adopt => self.adopt_patch(&pod),
                ClaimStep::Release => self.release_patch(&pod),
            };
            let adopt = self.step(&pod) == ClaimStep::Adopt;
            let patch = serde_json::from_value(patch)
                .map_err(|e| crate::ControllerError::Watch(e.to_string()))?;
            let name = pod.metadata.name.clone().unwrap_or_default();
            tracing::debug!(kind = self.kind, owner = ?self.owner.name, pod = %name, adopt, "claiming pod");
            match api
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Json::<()>(patch),
                )
                .await
            {
                Ok(p) if adopt => owned.push(std::sync::Arc::new(p)),
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                // A stale copy (failed resourceVersion/uid test): as upstream's claim, the
                // sync fails and runs again on fresh data, rather than counting the pod
                // as not owned (which would create a replacement for it).
                Err(e) => return Err(e.into()),
            }
        }
        Ok(owned)
    }
}

/// The `generateName` prefix upstream uses for pods of a controller: `<name>-`, or the
/// name itself when `<name>-` would not be a valid name prefix.
pub fn pods_prefix(controller_name: &str) -> String {
    let prefix = format!("{controller_name}-");
    // A generated name adds 5 characters to the prefix; the result must stay a valid
    // DNS subdomain (253 characters).
    if prefix.len() + 5 > 253 {
        controller_name.to_string()
    } else {
        prefix
    }
}

/// A pod made from a template for its controller (upstream's `GetPodFromTemplate`):
/// template labels, annotations and finalizers, `generateName` from the controller's
/// name, the controller reference, and the template's spec.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    controller_ref: &OwnerReference,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(pods_prefix(&controller_ref.name)),
            namespace: Some(namespace.to_string()),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![controller_ref.clone()]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Orders pods by how readily they are deleted when scaling down (upstream's
/// `ActivePods` ordering): unassigned before assigned; Pending, Unknown, then Running;
/// not ready before ready; lower deletion cost first; ready for less time first; more
/// restarts first; newer first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_pod_ready(a).cmp(&is_pod_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| {
            if is_pod_ready(a) && is_pod_ready(b) {
                let t = |p: &Pod| {
                    ready_condition(p)
                        .and_then(|c| c.last_transition_time.as_ref())
                        .map(|t| t.0)
                };
                // Ready for less time (later transition) first.
                t(b).cmp(&t(a))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let c = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            c(b).cmp(&c(a))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, Time,
    };
    use std::collections::BTreeMap;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(phase: &str, ready: Option<i64>, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta::default(),
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(jiff::Timestamp::from_second(t).unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "b")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("app", "web")])));
        let not = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(selector_matches(&not, &labels(&[])));
        assert!(!selector_matches(&not, &labels(&[("x", "1")])));
        assert!(selector_is_empty(&LabelSelector::default()));
    }

    #[test]
    fn availability_respects_min_ready_seconds() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let p = pod("Running", Some(995), None);
        assert!(is_pod_ready(&p));
        assert!(is_pod_available(&p, 0, now));
        assert!(is_pod_available(&p, 5, now));
        assert!(!is_pod_available(&p, 10, now));
        assert_eq!(seconds_until_available(&p, 10, now), Some(5));
        assert!(!is_pod_available(&pod("Running", None, None), 0, now));
    }

    #[test]
    fn active_and_order() {
        let mut done = pod("Succeeded", None, None);
        assert!(!is_pod_active(&done));
        done.status = None;
        assert!(is_pod_active(&done));
        let pending = pod("Pending", None, None);
        let running = pod("Running", Some(10), Some("n1"));
        let mut v = [running.clone(), pending.clone()];
        v.sort_by(deletion_order);
        assert_eq!(
            v[0].status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .as_deref(),
            Some("Pending")
        );
    }

    #[test]
    fn pods_from_template_carry_controller_ref() {
        let owner = ObjectMeta {
            name: Some("web-abc".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let r = controller_ref(&owner, "apps/v1", "ReplicaSet");
        assert_eq!(r.controller, Some(true));
        assert_eq!(r.block_owner_deletion, Some(true));
        let t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            }),
            spec: Some(PodSpec::default()),
        };
        let p = pod_from_template(&t, "ns", &r);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.labels, Some(labels(&[("app", "web")])));
        assert_eq!(
            controller_of(&p.metadata).map(|o| o.uid.as_str()),
            Some("u1")
        );
    }

    #[test]
    fn claimer_adopts_matching_orphans_and_releases_non_matching_pods() {
        let owner = ObjectMeta {
            name: Some("j".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: None,
        };
        let claimer = PodClaimer {
            owner: &owner,
            api_version: "batch/v1",
            kind: "Job",
            selector: &sel,
            finalizers: &["batch.kubernetes.io/job-tracking"],
            may_change: true,
        };
        let mut orphan = Pod::default();
        orphan.metadata.uid = Some("p1".into());
        orphan.metadata.resource_version = Some("7".into());
        orphan.metadata.labels = Some(labels(&[("app", "web")]));
        assert_eq!(claimer.step(&orphan), ClaimStep::Adopt);
        let adopt = claimer.adopt_patch(&orphan);
        assert_eq!(
            adopt[1],
            serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"})
        );
        assert_eq!(adopt[2]["value"][0]["uid"], "u1");
        assert_eq!(adopt[2]["value"][0]["controller"], true);
        assert_eq!(
            adopt[3]["value"],
            serde_json::json!(["batch.kubernetes.io/job-tracking"])
        );
        let mut owned = orphan.clone();
        owned.metadata.owner_references = Some(vec![controller_ref(&owner, "batch/v1", "Job")]);
        owned.metadata.finalizers = Some(vec![
            "batch.kubernetes.io/job-tracking".into(),
            "other".into(),
        ]);
        assert_eq!(claimer.step(&owned), ClaimStep::Keep);
        owned.metadata.labels = None;
        assert_eq!(claimer.step(&owned), ClaimStep::Release);
        let release = claimer.release_patch(&owned);
        assert_eq!(release[2]["value"], serde_json::json!([]));
        assert_eq!(release[3]["value"], serde_json::json!(["other"]));
        // Another controller's pod, a deleting orphan, a frozen owner: nothing changes.
        let mut foreign = orphan.clone();
        let mut other = controller_ref(&owner, "apps/v1", "ReplicaSet");
        other.uid = "u2".into();
        foreign.metadata.owner_references = Some(vec![other]);
        assert_eq!(claimer.step(&foreign), ClaimStep::Ignore);
        let frozen = PodClaimer {
            may_change: false,
            ..claimer
        };
        assert_eq!(frozen.step(&orphan), ClaimStep::Ignore);
        assert_eq!(frozen.step(&owned), ClaimStep::Ignore);
    }
}
