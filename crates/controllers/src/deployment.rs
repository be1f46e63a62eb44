//! The Deployment controller (upstream's `pkg/controller/deployment`): one ReplicaSet per
//! pod template, named `<deployment>-<pod-template-hash>`, revisions in the
//! `deployment.kubernetes.io/revision` annotation, RollingUpdate (maxSurge rounds up,
//! maxUnavailable down) and Recreate rollouts, proportional scaling, pause,
//! revisionHistoryLimit cleanup, and the Progressing/Available/ReplicaFailure conditions
//! with upstream's reasons and messages (progressDeadlineSeconds included).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use rk3s_runtime::events::{EventRecorder, EventType};

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::podutil;
use crate::ControllerError;

/// Annotation with a ReplicaSet's (and its Deployment's) revision.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Annotation with the earlier revisions a ReplicaSet had (after rollbacks).
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// Annotation with the Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// Annotation with replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Label and selector key distinguishing the ReplicaSets of one Deployment.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Deprecated rollback annotation (never copied to ReplicaSets).
const ROLLBACK_TO_ANNOTATION: &str = "deprecated.deployment.rollback.to";
/// kubectl's last-applied annotation (never copied to ReplicaSets).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Upstream's limit on the revision-history annotation's length.
const REVISION_HISTORY_LIMIT_CHARS: usize = 2000;

/// Condition reasons, as upstream.
pub mod reasons {
    /// A new ReplicaSet was created.
    pub const NEW_RS: &str = "NewReplicaSetCreated";
    /// An existing ReplicaSet matches the template.
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    /// The rollout made progress.
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    /// The rollout completed.
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    /// The rollout did not progress within progressDeadlineSeconds.
    pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
    /// The Deployment was paused.
    pub const PAUSED: &str = "DeploymentPaused";
    /// The Deployment was resumed.
    pub const RESUMED: &str = "DeploymentResumed";
    /// At least replicas - maxUnavailable pods are available.
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// Fewer than replicas - maxUnavailable pods are available.
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
}

// ---------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------

/// FNV-1a, 32 bits.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Upstream's `rand.SafeEncodeString`: each character mapped to an alphabet without
/// vowels and confusable digits, so hashes never spell words.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.chars()
        .map(|c| ALPHANUMS[(c as usize) % ALPHANUMS.len()] as char)
        .collect()
}

/// The pod-template-hash of a template: FNV-32a of the template's canonical JSON,
/// followed by the collision count (little-endian u32) when set, the decimal sum
/// safe-encoded (so names look like upstream's, e.g. `web-7d4b9c8f5d`).
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Whether two templates are equal apart from the pod-template-hash label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    fn strip(t: &PodTemplateSpec) -> PodTemplateSpec {
        let mut t = t.clone();
        let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
        if let Some(l) = meta.labels.as_mut() {
            l.remove(POD_TEMPLATE_HASH_LABEL);
            if l.is_empty() {
                meta.labels = None;
            }
        }
        if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
            meta.annotations = None;
        }
        t
    }
    strip(a) == strip(b)
}

/// An int-or-percent resolved against `total` (percent rounds up or down).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let num = p * i64::from(total);
            let r = if round_up {
                (num + 99).div_euclid(100)
            } else {
                num.div_euclid(100)
            };
            r as i32
        }
    }
}

/// Upstream's `ResolveFenceposts`: (maxSurge rounded up, maxUnavailable rounded down);
/// when both are 0, maxUnavailable becomes 1.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let quarter = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&quarter), desired, true);
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&quarter), desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate"
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
}

/// maxSurge of a Deployment (0 unless RollingUpdate).
pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).0
}

/// maxUnavailable of a Deployment (0 unless RollingUpdate with replicas > 0; at most replicas).
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}
fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}
fn rs_actual(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}
fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}
fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// A ReplicaSet's revision (0 when unset or unparsable).
pub fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let t = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// The ReplicaSet whose template equals the Deployment's (the oldest when several do).
pub fn find_new_rs<'a>(d: &Deployment, rss: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let template = &d.spec.as_ref()?.template;
    let mut sorted: Vec<&ReplicaSet> = rss.iter().collect();
    sorted.sort_by(|a, b| by_creation(a, b));
    sorted.into_iter().find(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, template))
    })
}

/// Upstream's `NewRSNewReplicas`: the size the new ReplicaSet may grow to now.
pub fn new_rs_new_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    if !is_rolling(d) {
        return replicas(d);
    }
    let surge = max_surge(d);
    let current: i32 = all.iter().map(|r| rs_replicas(r)).sum();
    let max_total = replicas(d) + surge;
    if current >= max_total {
        return rs_replicas(new_rs);
    }
    let up = (max_total - current).min(replicas(d) - rs_replicas(new_rs));
    rs_replicas(new_rs) + up
}

/// Upstream's `cleanupUnhealthyReplicas` + `scaleDownOldReplicaSetsForRollingUpdate`:
/// the new sizes of old ReplicaSets (name, size) for one rolling-update step.
pub fn plan_scale_down_old(
    d: &Deployment,
    old: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
) -> Vec<(String, i32)> {
    let mut old: Vec<ReplicaSet> = old.to_vec();
    old.sort_by(by_creation);
    let old_count: i32 = old.iter().map(rs_replicas).sum();
    if old_count == 0 {
        return Vec::new();
    }
    let new_count = new_rs.map(rs_replicas).unwrap_or(0);
    let all_count = old_count + new_count;
    let min_available = replicas(d) - max_unavailable(d);
    let new_unavailable = new_rs
        .map(|r| rs_replicas(r) - rs_available(r))
        .unwrap_or(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut out: Vec<(String, i32)> = Vec::new();
    let set = |rs: &mut ReplicaSet, n: i32, out: &mut Vec<(String, i32)>| {
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(n);
        }
        let name = rs.name_any();
        out.retain(|(x, _)| *x != name);
        out.push((name, n));
    };
    // Unhealthy replicas first.
    let mut cleaned = 0;
    for rs in old.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let (spec, avail) = (rs_replicas(rs), rs_available(rs));
        if spec == 0 || spec == avail {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(spec - avail);
        set(rs, spec - down, &mut out);
        cleaned += down;
    }
    // Then healthy ones, keeping minAvailable.
    let available: i32 =
        old.iter().map(rs_available).sum::<i32>() + new_rs.map(rs_available).unwrap_or(0);
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for rs in old.iter_mut() {
            if done >= total {
                break;
            }
            let spec = rs_replicas(rs);
            if spec == 0 {
                continue;
            }
            let down = spec.min(total - done);
            set(rs, spec - down, &mut out);
            done += down;
        }
    }
    out
}

/// Upstream's proportional scaling (`scale`) for a RollingUpdate Deployment whose
/// replicas changed mid-rollout: the new sizes of the active ReplicaSets.
pub fn plan_proportional(d: &Deployment, active: &[ReplicaSet]) -> Vec<(String, i32)> {
    let want = replicas(d);
    let surge = max_surge(d);
    let total: i32 = active.iter().map(rs_replicas).sum();
    let allowed = if want > 0 { want + surge } else { 0 };
    let to_add = allowed - total;
    let mut sorted: Vec<&ReplicaSet> = active.iter().collect();
    // Larger first; ties: newer first when adding, older first when removing.
    sorted.sort_by(|a, b| {
        rs_replicas(b).cmp(&rs_replicas(a)).then_with(|| {
            if to_add > 0 {
                by_creation(b, a)
            } else {
                by_creation(a, b)
            }
        })
    });
    let d_status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = Vec::new();
    for rs in &sorted {
        let cur = rs_replicas(rs);
        let mut size = cur;
        if to_add != 0 && cur != 0 && to_add != added {
            let fraction = if want == 0 {
                -cur
            } else {
                let annotated = annotation(&rs.metadata, MAX_REPLICAS_ANNOTATION)
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(d_status_replicas);
                if annotated == 0 {
                    0
                } else {
                    let f = f64::from(cur) * f64::from(want + surge) / f64::from(annotated);
                    f.round() as i32 - cur
                }
            };
            let allowed_left = to_add - added;
            let proportion = if to_add > 0 {
                fraction.min(allowed_left)
            } else {
                fraction.max(allowed_left)
            };
            size = cur + proportion;
            added += proportion;
        }
        sizes.push((rs.name_any(), size));
    }
    if to_add != 0 {
        if let Some(first) = sizes.first_mut() {
            first.1 = (first.1 + to_add - added).max(0);
        }
    }
    sizes
}

/// Upstream's `NewDeploymentCondition` with both times set to `now`.
pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Gets a condition by type.
pub fn get_condition<'a>(st: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    st.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// Upstream's `SetDeploymentCondition`: no change when status and reason are the same;
/// keeps lastTransitionTime when only the reason changes.
pub fn set_condition(st: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_condition(st, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(st, &c.type_);
    st.conditions.get_or_insert_with(Vec::new).push(c);
}

/// Removes a condition by type.
pub fn remove_condition(st: &mut DeploymentStatus, type_: &str) {
    if let Some(cs) = st.conditions.as_mut() {
        cs.retain(|c| c.type_ != type_);
    }
}

fn nz(v: i32) -> Option<i32> {
    (v != 0).then_some(v)
}

/// Upstream's `calculateStatus` (with the Available condition).
pub fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: jiff::Timestamp,
) -> DeploymentStatus {
    let available: i32 = all.iter().map(|r| rs_available(r)).sum();
    let total: i32 = all.iter().map(|r| rs_replicas(r)).sum();
    let old = d.status.clone().unwrap_or_default();
    let mut st = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nz(all.iter().map(|r| rs_actual(r)).sum()),
        updated_replicas: nz(new_rs.map(rs_actual).unwrap_or(0)),
        ready_replicas: nz(all.iter().map(|r| rs_ready(r)).sum()),
        available_replicas: nz(available),
        unavailable_replicas: nz((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    if available >= replicas(d) - max_unavailable(d) {
        set_condition(
            &mut st,
            new_condition(
                "Available",
                "True",
                reasons::MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut st,
            new_condition(
                "Available",
                "False",
                reasons::MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    st
}

/// Status with zero counters as absent (so statuses read back from the API compare equal).
pub fn normalize(st: &DeploymentStatus) -> DeploymentStatus {
    let z = |v: Option<i32>| v.filter(|x| *x != 0);
    DeploymentStatus {
        replicas: z(st.replicas),
        updated_replicas: z(st.updated_replicas),
        ready_replicas: z(st.ready_replicas),
        available_replicas: z(st.available_replicas),
        unavailable_replicas: z(st.unavailable_replicas),
        terminating_replicas: st.terminating_replicas,
        collision_count: st.collision_count,
        observed_generation: st.observed_generation,
        conditions: st.conditions.clone().filter(|c| !c.is_empty()),
    }
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

/// Upstream's `DeploymentComplete`.
pub fn deployment_complete(d: &Deployment, st: &DeploymentStatus) -> bool {
    let want = replicas(d);
    st.updated_replicas.unwrap_or(0) == want
        && st.replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) == want
        && st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Upstream's `DeploymentProgressing`: more updated, fewer old, more ready or more
/// available replicas than the last status.
pub fn deployment_progressing(d: &Deployment, st: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0);
    st.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || st.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || st.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

/// Upstream's `DeploymentTimedOut`.
pub fn deployment_timed_out(d: &Deployment, st: &DeploymentStatus, now: jiff::Timestamp) -> bool {
    let Some(deadline) = progress_deadline(d) else {
        return false;
    };
    let Some(c) = get_condition(st, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(reasons::NEW_RS_AVAILABLE) => false,
        Some(reasons::TIMED_OUT) => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + i64::from(deadline) < now.as_second()),
    }
}

/// Upstream's `syncRolloutStatus` decision: the new status with the Progressing and
/// ReplicaFailure conditions, given the status from [`calculate_status`].
pub fn rollout_status(
    d: &Deployment,
    mut st: DeploymentStatus,
    new_rs: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    now: jiff::Timestamp,
) -> DeploymentStatus {
    if progress_deadline(d).is_none() {
        remove_condition(&mut st, "Progressing");
    }
    let cur = get_condition(&st, "Progressing").cloned();
    let complete_before = st.replicas == st.updated_replicas
        && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some(reasons::NEW_RS_AVAILABLE);
    if progress_deadline(d).is_some() && !complete_before {
        let what = |verb: &str| match new_rs {
            Some(rs) => format!("ReplicaSet \"{}\" {verb}", rs.name_any()),
            None => format!("Deployment \"{}\" {verb}", d.name_any()),
        };
        if deployment_complete(d, &st) {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "True",
                    reasons::NEW_RS_AVAILABLE,
                    what("has successfully progressed."),
                    now,
                ),
            );
        } else if deployment_progressing(d, &st) {
            let mut c = new_condition(
                "Progressing",
                "True",
                reasons::RS_UPDATED,
                what("is progressing."),
                now,
            );
            if let Some(cur) = &cur {
                if cur.status == "True" {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut st, "Progressing");
            }
            st.conditions.get_or_insert_with(Vec::new).push(c);
        } else if deployment_timed_out(d, &st, now) {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "False",
                    reasons::TIMED_OUT,
                    what("has timed out progressing."),
                    now,
                ),
            );
        }
    }
    // ReplicaSet failures surface as the Deployment's ReplicaFailure condition.
    let mut ordered: Vec<&ReplicaSet> = new_rs.into_iter().collect();
    ordered.extend(
        all.iter()
            .copied()
            .filter(|r| new_rs.is_none_or(|n| n.metadata.uid != r.metadata.uid)),
    );
    let failure = ordered.iter().find_map(|rs| {
        rs.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .cloned()
    });
    match failure {
        Some(c) => set_condition(
            &mut st,
            DeploymentCondition {
                type_: "ReplicaFailure".into(),
                status: c.status,
                reason: c.reason,
                message: c.message,
                last_update_time: c.last_transition_time.clone(),
                last_transition_time: c.last_transition_time,
            },
        ),
        None => remove_condition(&mut st, "ReplicaFailure"),
    }
    st
}

/// Upstream's `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, sets the
/// revision (keeping earlier revisions in revision-history on rollback) and, for a
/// ReplicaSet about to be created, desired/max replicas. True when anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = copy_deployment_annotations(d, &mut rs.metadata);
    let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old = ann.get(REVISION_ANNOTATION).cloned();
    let old_rev = match &old {
        Some(s) => match s.parse::<i64>() {
            Ok(v) => v,
            Err(_) => return changed,
        },
        None => 0,
    };
    if old_rev < new_revision {
        ann.insert(REVISION_ANNOTATION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let hist = ann
                .get(REVISION_HISTORY_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            let mut list: Vec<String> = hist
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            list.push(old);
            while list.join(",").len() > REVISION_HISTORY_LIMIT_CHARS && list.len() > 1 {
                list.remove(0);
            }
            ann.insert(REVISION_HISTORY_ANNOTATION.into(), list.join(","));
        }
    }
    if !exists
        && set_replicas_annotations(&mut rs.metadata, replicas(d), replicas(d) + max_surge(d))
    {
        changed = true;
    }
    changed
}

fn skip_copy(k: &str) -> bool {
    matches!(
        k,
        LAST_APPLIED
            | REVISION_ANNOTATION
            | REVISION_HISTORY_ANNOTATION
            | DESIRED_REPLICAS_ANNOTATION
            | MAX_REPLICAS_ANNOTATION
            | ROLLBACK_TO_ANNOTATION
    )
}

fn copy_deployment_annotations(d: &Deployment, meta: &mut ObjectMeta) -> bool {
    let mut changed = false;
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip_copy(k) || ann.get(k) == Some(v) {
            continue;
        }
        ann.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// Sets desired-replicas and max-replicas annotations; true when changed.
pub fn set_replicas_annotations(meta: &mut ObjectMeta, desired: i32, max: i32) -> bool {
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in [
        (DESIRED_REPLICAS_ANNOTATION, desired),
        (MAX_REPLICAS_ANNOTATION, max),
    ] {
        if ann.get(k).map(String::as_str) != Some(v.to_string().as_str()) {
            ann.insert(k.into(), v.to_string());
            changed = true;
        }
    }
    changed
}

/// The old ReplicaSets `cleanupDeployment` deletes: beyond revisionHistoryLimit, lowest
/// revisions first, only those fully scaled down and observed.
pub fn history_to_delete(d: &Deployment, old: &[ReplicaSet]) -> Vec<String> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
        return Vec::new();
    };
    let mut alive: Vec<&ReplicaSet> = old
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    let diff = alive.len() as i64 - i64::from(limit);
    if diff <= 0 {
        return Vec::new();
    }
    alive.sort_by(|a, b| {
        revision(a)
            .cmp(&revision(b))
            .then_with(|| by_creation(a, b))
    });
    alive
        .into_iter()
        .take(diff as usize)
        .filter(|rs| {
            rs_actual(rs) == 0
                && rs_replicas(rs) == 0
                && rs.metadata.generation.unwrap_or(0)
                    <= rs
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0)
        })
        .map(|rs| rs.name_any())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------

struct Ctx {
    client: kube::Client,
    rss: Store<ReplicaSet>,
    recorder: EventRecorder,
}

impl Ctx {
    async fn event(&self, d: &Deployment, type_: EventType, reason: &str, note: String) {
        // Distinct messages stay distinct events (see `rk3s_runtime::events::event`).
        let warning = type_ == EventType::Warning;
        self.recorder
            .record(&kube::Resource::object_ref(d, &()), warning, reason, note)
            .await;
    }

    /// Sets a ReplicaSet's replicas (and desired/max annotations), recording the
    /// ScalingReplicaSet event when the size changed.
    async fn scale(
        &self,
        d: &Deployment,
        rs: &mut ReplicaSet,
        size: i32,
    ) -> Result<bool, ControllerError> {
        let old = rs_replicas(rs);
        let size_changed = old != size;
        let ann_changed =
            set_replicas_annotations(&mut rs.metadata, replicas(d), replicas(d) + max_surge(d));
        if !size_changed && !ann_changed {
            return Ok(false);
        }
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(size);
        }
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        *rs = api
            .replace(&rs.name_any(), &PostParams::default(), rs)
            .await?;
        if size_changed {
            let op = if size > old { "up" } else { "down" };
            self.event(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {op} replica set {} from {old} to {size}",
                    rs.name_any()
                ),
            )
            .await;
        }
        Ok(size_changed)
    }
}

/// ReplicaSets of the Deployment (adopting matching orphans).
async fn claim_rss(
    ctx: &Ctx,
    d: &Deployment,
    sel: &LabelSelector,
) -> Result<Vec<ReplicaSet>, ControllerError> {
    let ns = d.namespace().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = Vec::new();
    for rs in ctx
        .rss
        .state()
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()))
    {
        let labels = rs.metadata.labels.clone().unwrap_or_default();
        let matches = podutil::selector_matches(sel, &labels);
        match podutil::controller_of(&rs.metadata) {
            Some(r) if r.uid == uid && matches => out.push((*rs).clone()),
            Some(_) => {}
            None if matches
                && d.metadata.deletion_timestamp.is_none()
                && rs.metadata.deletion_timestamp.is_none() =>
            {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(podutil::controller_ref(
                    &d.metadata,
                    "apps/v1",
                    "Deployment",
                ));
                let patch = serde_json::json!([
                    {"op": "test", "path": "/metadata/uid", "value": rs.metadata.uid},
                    {"op": "add", "path": "/metadata/ownerReferences", "value": refs},
                ]);
                let p: Patch<()> = Patch::Json(
                    serde_json::from_value(patch)
                        .map_err(|e| ControllerError::Watch(e.to_string()))?,
                );
                match api.patch(&rs.name_any(), &PatchParams::default(), &p).await {
                    Ok(r) => out.push(r),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {}
        }
    }
    Ok(out)
}

/// Upstream's `getAllReplicaSetsAndSyncRevision`: (new RS if any, old RSs), creating the
/// new one when asked.
async fn new_and_old(
    ctx: &Ctx,
    d: &mut Deployment,
    rss: &[ReplicaSet],
    create: bool,
) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), ControllerError> {
    let existing = find_new_rs(d, rss).cloned();
    let old: Vec<ReplicaSet> = rss
        .iter()
        .filter(|r| {
            existing
                .as_ref()
                .is_none_or(|n| n.metadata.uid != r.metadata.uid)
        })
        .cloned()
        .collect();
    let max_old = old.iter().map(revision).max().unwrap_or(0);
    let new_revision = max_old + 1;
    let ns = d.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let now = jiff::Timestamp::now();
    if let Some(mut rs) = existing {
        let mut changed = set_new_rs_annotations(d, &mut rs, new_revision, true);
        let mrs = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(spec) = rs.spec.as_mut() {
            if spec.min_ready_seconds != mrs {
                spec.min_ready_seconds = mrs;
                changed = true;
            }
        }
        if changed {
            rs = api
                .replace(&rs.name_any(), &PostParams::default(), &rs)
                .await?;
        }
        let rev = annotation(&rs.metadata, REVISION_ANNOTATION)
            .unwrap_or("")
            .to_string();
        set_deployment_revision(ctx, d, &rev).await?;
        let mut st = d.status.clone().unwrap_or_default();
        if progress_deadline(d).is_some() && get_condition(&st, "Progressing").is_none() {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "True",
                    reasons::FOUND_NEW_RS,
                    format!("Found new replica set \"{}\"", rs.name_any()),
                    now,
                ),
            );
            update_status(ctx, d, st).await?;
        }
        return Ok((Some(rs), old));
    }
    if !create {
        return Ok((None, old));
    }
    let Some(spec) = d.spec.clone() else {
        return Ok((None, old));
    };
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = compute_hash(&spec.template, collision);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", d.name_any(), hash)),
            namespace: Some(ns.clone()),
            owner_references: Some(vec![podutil::controller_ref(
                &d.metadata,
                "apps/v1",
                "Deployment",
            )]),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let all_refs: Vec<&ReplicaSet> = old.iter().collect();
    let count = new_rs_new_replicas(d, &all_refs, &rs);
    if let Some(s) = rs.spec.as_mut() {
        s.replicas = Some(count);
    }
    set_new_rs_annotations(d, &mut rs, new_revision, false);
    let created = match api.create(&PostParams::default(), &rs).await {
        Ok(r) => r,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let name = rs.name_any();
            let found = api.get(&name).await?;
            let ours = podutil::controller_of(&found.metadata)
                .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
            if ours
                && found
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template))
            {
                return Ok((Some(found), old));
            }
            // Hash collision: bump collisionCount and retry with a new name.
            let mut st = d.status.clone().unwrap_or_default();
            st.collision_count = Some(st.collision_count.unwrap_or(0) + 1);
            update_status(ctx, d, st).await?;
            return Err(ControllerError::Watch(format!(
                "replica set {name} already exists: hash collision"
            )));
        }
        Err(kube::Error::Api(e)) => {
            let msg = format!(
                "Failed to create new replica set \"{}\": {}",
                rs.name_any(),
                e.message
            );
            ctx.event(d, EventType::Warning, "FailedCreate", msg.clone())
                .await;
            if progress_deadline(d).is_some() {
                let mut st = d.status.clone().unwrap_or_default();
                set_condition(
                    &mut st,
                    new_condition("Progressing", "False", "ReplicaSetCreateError", msg, now),
                );
                update_status(ctx, d, st).await?;
            }
            return Err(kube::Error::Api(e).into());
        }
        Err(e) => return Err(e.into()),
    };
    if count > 0 {
        ctx.event(
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            format!(
                "Scaled up replica set {} from 0 to {count}",
                created.name_any()
            ),
        )
        .await;
    }
    set_deployment_revision(ctx, d, &new_revision.to_string()).await?;
    if progress_deadline(d).is_some() {
        let mut st = d.status.clone().unwrap_or_default();
        set_condition(
            &mut st,
            new_condition(
                "Progressing",
                "True",
                reasons::NEW_RS,
                format!("Created new replica set \"{}\"", created.name_any()),
                now,
            ),
        );
        update_status(ctx, d, st).await?;
    }
    Ok((Some(created), old))
}

async fn set_deployment_revision(
    ctx: &Ctx,
    d: &mut Deployment,
    rev: &str,
) -> Result<(), ControllerError> {
    if rev.is_empty() || annotation(&d.metadata, REVISION_ANNOTATION) == Some(rev) {
        return Ok(());
    }
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    // Through `status`, as upstream's controller writes it: annotations are taken from
    // a Deployment's status update, and the generation does not move.
    let patch = serde_json::json!({"metadata": {"annotations": {REVISION_ANNOTATION: rev}}});
    let updated = api
        .patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    d.metadata = updated.metadata;
    Ok(())
}

async fn update_status(
    ctx: &Ctx,
    d: &mut Deployment,
    st: DeploymentStatus,
) -> Result<(), ControllerError> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let mut obj = d.clone();
    obj.status = Some(st);
    *d = api
        .replace_status(&d.name_any(), &PostParams::default(), &obj)
        .await?;
    Ok(())
}

/// Writes the status when it differs; requeues a rollout that may still time out.
async fn finish_status(
    ctx: &Ctx,
    d: &mut Deployment,
    st: DeploymentStatus,
) -> Result<Action, ControllerError> {
    if normalize(&st) != normalize(&d.status.clone().unwrap_or_default()) {
        update_status(ctx, d, st.clone()).await?;
    }
    // requeueStuckDeployment
    if let (Some(deadline), Some(c)) = (progress_deadline(d), get_condition(&st, "Progressing")) {
        if c.reason.as_deref() != Some(reasons::NEW_RS_AVAILABLE)
            && c.reason.as_deref() != Some(reasons::TIMED_OUT)
            && !deployment_complete(d, &st)
        {
            if let Some(t) = &c.last_update_time {
                let left =
                    t.0.as_second() + i64::from(deadline) - jiff::Timestamp::now().as_second();
                return Ok(Action::requeue(Duration::from_secs(left.max(0) as u64 + 1)));
            }
        }
    }
    Ok(Action::await_change())
}

async fn sync_rollout_status(
    ctx: &Ctx,
    d: &mut Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Result<Action, ControllerError> {
    let mut all: Vec<&ReplicaSet> = old.iter().collect();
    all.extend(new_rs);
    let now = jiff::Timestamp::now();
    let st = calculate_status(d, &all, new_rs, now);
    let st = rollout_status(d, st, new_rs, &all, now);
    finish_status(ctx, d, st).await
}

async fn cleanup(ctx: &Ctx, d: &Deployment, old: &[ReplicaSet]) -> Result<(), ControllerError> {
    let api: Api<ReplicaSet> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    for name in history_to_delete(d, old) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn active(rss: &[ReplicaSet]) -> Vec<ReplicaSet> {
    rss.iter().filter(|r| rs_replicas(r) > 0).cloned().collect()
}

/// Scale-only sync (paused Deployments and scaling events): upstream's `sync` + `scale`.
async fn sync_scale(
    ctx: &Ctx,
    d: &mut Deployment,
    rss: &[ReplicaSet],
) -> Result<Action, ControllerError> {
    let (mut new_rs, mut old) = new_and_old(ctx, d, rss, false).await?;
    let want = replicas(d);
    let mut all: Vec<ReplicaSet> = old.clone();
    all.extend(new_rs.clone());
    let act = active(&all);
    // FindActiveOrLatest
    let target: Option<String> = match act.len() {
        0 => new_rs.as_ref().map(|r| r.name_any()).or_else(|| {
            let mut o: Vec<&ReplicaSet> = old.iter().collect();
            o.sort_by(|a, b| by_creation(b, a));
            o.first().map(|r| r.name_any())
        }),
        1 => Some(act[0].name_any()),
        _ => None,
    };
    let mut plan: Vec<(String, i32)> = Vec::new();
    if let Some(t) = target {
        plan.push((t, want));
    } else if new_rs.as_ref().is_some_and(|n| {
        annotation(&n.metadata, DESIRED_REPLICAS_ANNOTATION) == Some(want.to_string().as_str())
            && rs_replicas(n) == want
            && rs_available(n) == want
    }) {
        plan.extend(
            old.iter()
                .filter(|r| rs_replicas(r) != 0)
                .map(|r| (r.name_any(), 0)),
        );
    } else if is_rolling(d) {
        plan = plan_proportional(d, &act);
    }
    for (name, size) in plan {
        let rs = new_rs
            .iter_mut()
            .chain(old.iter_mut())
            .find(|r| r.name_any() == name);
        if let Some(rs) = rs {
            ctx.scale(d, rs, size).await?;
        }
    }
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        cleanup(ctx, d, &old).await?;
    }
    let mut all: Vec<&ReplicaSet> = old.iter().collect();
    all.extend(new_rs.as_ref());
    let st = calculate_status(d, &all, new_rs.as_ref(), jiff::Timestamp::now());
    finish_status(ctx, d, st).await
}

async fn rollout_rolling(
    ctx: &Ctx,
    d: &mut Deployment,
    rss: &[ReplicaSet],
) -> Result<Action, ControllerError> {
    let (new_rs, mut old) = new_and_old(ctx, d, rss, true).await?;
    let Some(mut new_rs) = new_rs else {
        return sync_rollout_status(ctx, d, None, &old).await;
    };
    // reconcileNewReplicaSet
    let want = replicas(d);
    let cur = rs_replicas(&new_rs);
    if cur != want {
        let target = if cur > want {
            want
        } else {
            let mut all: Vec<&ReplicaSet> = old.iter().collect();
            all.push(&new_rs);
            new_rs_new_replicas(d, &all, &new_rs)
        };
        if ctx.scale(d, &mut new_rs, target).await? {
            return sync_rollout_status(ctx, d, Some(&new_rs), &old).await;
        }
    }
    // reconcileOldReplicaSets
    let plan = plan_scale_down_old(d, &active(&old), Some(&new_rs));
    let mut scaled = false;
    for (name, size) in plan {
        if let Some(rs) = old.iter_mut().find(|r| r.name_any() == name) {
            scaled |= ctx.scale(d, rs, size).await?;
        }
    }
    if scaled {
        return sync_rollout_status(ctx, d, Some(&new_rs), &old).await;
    }
    if deployment_complete(d, &d.status.clone().unwrap_or_default()) {
        cleanup(ctx, d, &old).await?;
    }
    sync_rollout_status(ctx, d, Some(&new_rs), &old).await
}

async fn rollout_recreate(
    ctx: &Ctx,
    d: &mut Deployment,
    rss: &[ReplicaSet],
) -> Result<Action, ControllerError> {
    let (new_rs, mut old) = new_and_old(ctx, d, rss, false).await?;
    let mut scaled = false;
    for rs in old.iter_mut().filter(|r| rs_replicas(r) > 0) {
        scaled |= ctx.scale(d, rs, 0).await?;
    }
    if scaled {
        return sync_rollout_status(ctx, d, new_rs.as_ref(), &old).await;
    }
    // Wait until the old pods are gone.
    if old.iter().any(|r| rs_actual(r) > 0) {
        return sync_rollout_status(ctx, d, new_rs.as_ref(), &old).await;
    }
    let (new_rs, old) = match new_rs {
        Some(n) => (Some(n), old),
        None => new_and_old(ctx, d, rss, true).await?,
    };
    let Some(mut new_rs) = new_rs else {
        return sync_rollout_status(ctx, d, None, &old).await;
    };
    ctx.scale(d, &mut new_rs, replicas(d)).await?;
    if deployment_complete(d, &d.status.clone().unwrap_or_default()) {
        cleanup(ctx, d, &old).await?;
    }
    sync_rollout_status(ctx, d, Some(&new_rs), &old).await
}

async fn reconcile(obj: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let mut d = (*obj).clone();
    let Some(sel) = d.spec.as_ref().map(|s| s.selector.clone()) else {
        return Ok(Action::await_change());
    };
    if podutil::selector_is_empty(&sel) {
        ctx.event(
            &d,
            EventType::Warning,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let rss = claim_rss(&ctx, &d, &sel).await?;
    if d.metadata.deletion_timestamp.is_some() {
        let (new_rs, old) = new_and_old(&ctx, &mut d, &rss, false).await?;
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.extend(new_rs.as_ref());
        let st = calculate_status(&d, &all, new_rs.as_ref(), jiff::Timestamp::now());
        return finish_status(&ctx, &mut d, st).await;
    }
    // checkPausedConditions
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    if progress_deadline(&d).is_some() {
        let st = d.status.clone().unwrap_or_default();
        let cond = get_condition(&st, "Progressing");
        if cond.and_then(|c| c.reason.as_deref()) != Some(reasons::TIMED_OUT) {
            let paused_cond = cond.and_then(|c| c.reason.as_deref()) == Some(reasons::PAUSED);
            let now = jiff::Timestamp::now();
            let c = if paused && !paused_cond {
                Some(new_condition(
                    "Progressing",
                    "Unknown",
                    reasons::PAUSED,
                    "Deployment is paused".into(),
                    now,
                ))
            } else if !paused && paused_cond {
                Some(new_condition(
                    "Progressing",
                    "Unknown",
                    reasons::RESUMED,
                    "Deployment is resumed".into(),
                    now,
                ))
            } else {
                None
            };
            if let Some(c) = c {
                let mut st = st.clone();
                set_condition(&mut st, c);
                update_status(&ctx, &mut d, st).await?;
            }
        }
    }
    if paused {
        return sync_scale(&ctx, &mut d, &rss).await;
    }
    // isScalingEvent
    let want = replicas(&d).to_string();
    let scaling = {
        let new_rs = find_new_rs(&d, &rss);
        rss.iter()
            .filter(|r| {
                rs_replicas(r) > 0
                    || new_rs.is_some_and(|n| n.metadata.uid == r.metadata.uid)
                        && rs_replicas(r) > 0
            })
            .any(|r| {
                annotation(&r.metadata, DESIRED_REPLICAS_ANNOTATION).is_some_and(|v| v != want)
            })
    };
    if scaling {
        return sync_scale(&ctx, &mut d, &rss).await;
    }
    if is_rolling(&d) {
        rollout_rolling(&ctx, &mut d, &rss).await
    } else {
        rollout_recreate(&ctx, &mut d, &rss).await
    }
}

/// Deployments a ReplicaSet event concerns: its controller, or for an orphan every
/// Deployment in its namespace whose selector matches it.
fn deployments_of_rs(rs: &ReplicaSet, ds: &Store<Deployment>) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    match podutil::controller_of(&rs.metadata) {
        Some(r) if r.kind == "Deployment" && r.api_version == "apps/v1" => {
            vec![ObjectRef::new(&r.name).within(&ns)]
        }
        Some(_) => Vec::new(),
        None => {
            let labels = rs.metadata.labels.clone().unwrap_or_default();
            ds.state()
                .iter()
                .filter(|d| d.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|d| {
                    d.spec.as_ref().is_some_and(|s| {
                        !podutil::selector_is_empty(&s.selector)
                            && podutil::selector_matches(&s.selector, &labels)
                    })
                })
                .map(|d| ObjectRef::from_obj(&**d))
                .collect()
        }
    }
}

/// Runs the Deployment controller until the watches end (Deployments and ReplicaSets
/// from the shared informers).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change in between is missed.
    let d_changes = informers.subscribe::<Deployment>();
    let rs_changes = informers.subscribe::<ReplicaSet>();
    let d_store = informers.store::<Deployment>().await;
    let rs_store = informers.store::<ReplicaSet>().await;
    let triggers = vec![
        Trigger::for_each(d_changes),
        // Every Deployment listed before this controller subscribed.
        Trigger::all_in(&d_store),
        {
            let d_store = d_store.clone();
            Trigger::map(rs_changes, move |o: Arc<ReplicaSet>| {
                deployments_of_rs(&o, &d_store)
            })
        },
    ];
    let ctx = Arc::new(Ctx {
        recorder: EventRecorder::new(client.clone(), "deployment-controller"),
        client,
        rss: rs_store,
    });
    run_controller(
        "deployment",
        4,
        WorkQueue::new(),
        triggers,
        for_objects(d_store, ctx, reconcile),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(crate::replicaset::labels(&[("app", "web")])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn deploy(replicas: i32, surge: &str, unavail: &str) -> Deployment {
        let ios = |s: &str| {
            if s.ends_with('%') {
                IntOrString::String(s.into())
            } else {
                IntOrString::Int(s.parse().unwrap_or(0))
            }
        };
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(crate::replicaset::labels(&[("app", "web")])),
                    match_expressions: None,
                },
                template: template("nginx:1"),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(ios(surge)),
                        max_unavailable: Some(ios(unavail)),
                    }),
                }),
                progress_deadline_seconds: Some(600),
                revision_history_limit: Some(1),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs(name: &str, created: i64, spec: i32, available: i32, rev: i64) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(name.into()),
                creation_timestamp: Some(Time(
                    jiff::Timestamp::from_second(created).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                )),
                annotations: Some([(REVISION_ANNOTATION.to_string(), rev.to_string())].into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec),
                template: Some(template("nginx:0")),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: spec,
                available_replicas: Some(available),
                ready_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn hash_is_fnv_safe_encoded_and_collision_sensitive() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        let h = compute_hash(&template("nginx:1"), None);
        assert!(h.len() >= 6 && h.len() <= 10, "{h}");
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_eq!(h, compute_hash(&template("nginx:1"), None));
        assert_ne!(h, compute_hash(&template("nginx:2"), None));
        assert_ne!(h, compute_hash(&template("nginx:1"), Some(1)));
    }

    #[test]
    fn template_equality_ignores_hash_label() {
        let a = template("x");
        let mut b = template("x");
        b.metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .map(|l| l.insert(POD_TEMPLATE_HASH_LABEL.into(), "abc".into()));
        assert!(equal_ignore_hash(&a, &b));
        assert!(!equal_ignore_hash(&a, &template("y")));
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(
            resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 3),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 10),
            (3, 2)
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 10),
            (0, 1)
        );
        assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
        assert_eq!(max_unavailable(&deploy(2, "0", "5")), 2);
        assert_eq!(max_surge(&deploy(10, "30%", "0")), 3);
    }

    #[test]
    fn rolling_step_surges_then_scales_down_old() {
        // 10 replicas, surge 3, unavailable 2; old RS fully available.
        let d = deploy(10, "30%", "20%");
        let old = rs("old", 1, 10, 10, 1);
        let mut new = rs("new", 2, 0, 0, 2);
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 3);
        // minAvailable 8: old may drop by 2 even before new pods are available... but
        // the 3 unavailable new pods are counted first: 13 - 8 - 3 = 2.
        if let Some(s) = new.spec.as_mut() {
            s.replicas = Some(3);
        }
        assert_eq!(
            plan_scale_down_old(&d, std::slice::from_ref(&old), Some(&new)),
            vec![("old".to_string(), 8)]
        );
        // Once new pods are available, more old pods can go.
        if let Some(s) = new.status.as_mut() {
            s.available_replicas = Some(3);
        }
        assert_eq!(
            plan_scale_down_old(&d, std::slice::from_ref(&old), Some(&new)),
            vec![("old".to_string(), 5)]
        );
        // Unhealthy old pods go first, without touching availability.
        let sick = rs("old", 1, 10, 6, 1);
        let nothing_new = rs("new", 2, 0, 0, 2);
        assert_eq!(
            plan_scale_down_old(&d, &[sick], Some(&nothing_new)),
            vec![("old".to_string(), 8)]
        );
    }

    #[test]
    fn proportional_scaling_splits_by_size() {
        let mut d = deploy(20, "0", "1");
        let mut a = rs("a", 1, 6, 6, 1);
        let mut b = rs("b", 2, 4, 0, 2);
        for r in [&mut a, &mut b] {
            set_replicas_annotations(&mut r.metadata, 10, 10);
        }
        d.status = Some(DeploymentStatus {
            replicas: Some(10),
            ..Default::default()
        });
        let plan = plan_proportional(&d, &[a, b]);
        assert_eq!(plan, vec![("a".to_string(), 12), ("b".to_string(), 8)]);
    }

    #[test]
    fn revisions_and_history() {
        let d = deploy(3, "1", "0");
        let mut r = rs("x", 1, 0, 0, 1);
        assert!(set_new_rs_annotations(&d, &mut r, 3, true));
        assert_eq!(revision(&r), 3);
        assert_eq!(
            annotation(&r.metadata, REVISION_HISTORY_ANNOTATION),
            Some("1")
        );
        assert!(!set_new_rs_annotations(&d, &mut r, 3, true));
        let mut fresh = rs("y", 1, 0, 0, 0);
        fresh.metadata.annotations = None;
        assert!(set_new_rs_annotations(&d, &mut fresh, 1, false));
        assert_eq!(
            annotation(&fresh.metadata, DESIRED_REPLICAS_ANNOTATION),
            Some("3")
        );
        assert_eq!(
            annotation(&fresh.metadata, MAX_REPLICAS_ANNOTATION),
            Some("4")
        );
        // History limit 1: of three scaled-down old RSs, the two lowest revisions go.
        let olds = vec![
            rs("r3", 3, 0, 0, 3),
            rs("r1", 1, 0, 0, 1),
            rs("r2", 2, 0, 0, 2),
            rs("busy", 0, 1, 1, 0),
        ];
        assert_eq!(
            history_to_delete(&d, &olds),
            vec!["r1".to_string(), "r2".to_string()]
        );
    }

    #[test]
    fn conditions_follow_rollout() {
        let now = jiff::Timestamp::from_second(10_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let d = deploy(3, "1", "0");
        let new = rs("web-abc", 1, 3, 3, 1);
        let st = calculate_status(&d, &[&new], Some(&new), now);
        assert_eq!(
            (
                st.replicas,
                st.updated_replicas,
                st.available_replicas,
                st.unavailable_replicas
            ),
            (Some(3), Some(3), Some(3), None)
        );
        assert_eq!(
            get_condition(&st, "Available").and_then(|c| c.reason.as_deref()),
            Some(reasons::MIN_AVAILABLE)
        );
        let st = rollout_status(&d, st, Some(&new), &[&new], now);
        let c = get_condition(&st, "Progressing")
            .cloned()
            .unwrap_or_default();
        assert_eq!(c.reason.as_deref(), Some(reasons::NEW_RS_AVAILABLE));
        assert_eq!(
            c.message.as_deref(),
            Some("ReplicaSet \"web-abc\" has successfully progressed.")
        );

        // Not available, no progress since the last update 601 s ago: timed out.
        let partial = rs("web-abc", 1, 3, 1, 1);
        let mut d2 = deploy(3, "1", "0");
        let mut old = DeploymentStatus {
            replicas: Some(3),
            updated_replicas: Some(3),
            available_replicas: Some(1),
            ready_replicas: Some(1),
            ..Default::default()
        };
        let then =
            jiff::Timestamp::from_second(10_000 - 601).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        set_condition(
            &mut old,
            new_condition("Progressing", "True", reasons::RS_UPDATED, "x".into(), then),
        );
        d2.status = Some(old);
        let st = calculate_status(&d2, &[&partial], Some(&partial), now);
        assert_eq!(
            get_condition(&st, "Available").map(|c| c.status.as_str()),
            Some("False")
        );
        let st = rollout_status(&d2, st, Some(&partial), &[&partial], now);
        let c = get_condition(&st, "Progressing")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some(reasons::TIMED_OUT))
        );
        assert_eq!(
            c.message.as_deref(),
            Some("ReplicaSet \"web-abc\" has timed out progressing.")
        );
    }

    #[test]
    fn set_condition_keeps_transition_time_on_reason_change() {
        let t1 = jiff::Timestamp::from_second(1).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let t2 = jiff::Timestamp::from_second(2).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let mut st = DeploymentStatus::default();
        set_condition(
            &mut st,
            new_condition("Progressing", "True", reasons::NEW_RS, "a".into(), t1),
        );
        set_condition(
            &mut st,
            new_condition("Progressing", "True", reasons::NEW_RS, "b".into(), t2),
        );
        assert_eq!(
            get_condition(&st, "Progressing").and_then(|c| c.message.as_deref()),
            Some("a")
        );
        set_condition(
            &mut st,
            new_condition("Progressing", "True", reasons::RS_UPDATED, "c".into(), t2),
        );
        let c = get_condition(&st, "Progressing")
            .cloned()
            .unwrap_or_default();
        assert_eq!(c.last_transition_time.map(|t| t.0), Some(t1));
        assert_eq!(c.last_update_time.map(|t| t.0), Some(t2));
    }
}
