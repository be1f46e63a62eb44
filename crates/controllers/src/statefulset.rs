//! The StatefulSet controller (upstream's `pkg/controller/statefulset`): pods
//! `<set>-<ordinal>` with stable identity (hostname, `serviceName` subdomain, labels
//! `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`,
//! `controller-revision-hash`), PersistentVolumeClaims `<template>-<set>-<ordinal>` from
//! `volumeClaimTemplates` created before their pod and kept or deleted per
//! `persistentVolumeClaimRetentionPolicy`, OrderedReady (one at a time, in order, scaling
//! down from the highest ordinal) or Parallel pod management, ControllerRevisions for
//! template history, RollingUpdate (with `partition`, highest ordinal first, one pod at a
//! time waiting for readiness) and OnDelete updates.
//!
//! The decisions are in the pure [`plan`]; [`run`] applies them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::expectations::{Expectations, MetaOf};
use crate::informers::{OwnedCache, OwnedMatching};
use crate::workload_util::{self as wu, Events, CONTROLLER_REVISION_HASH};
use crate::ControllerError;

/// Label with a StatefulSet pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of a pod named `<set>-<ordinal>`.
pub fn parse_ordinal(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty()
        || !rest.bytes().all(|b| b.is_ascii_digit())
        || (rest.len() > 1 && rest.starts_with('0'))
    {
        return None;
    }
    rest.parse().ok()
}

/// The name of a claim for a template, set and ordinal.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// What the controller does for a StatefulSet in one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StsPlan {
    /// Pods to create: (ordinal, made from the current revision rather than the update revision).
    pub create: Vec<(i32, bool)>,
    /// Names of pods to delete (failed pods, condemned pods, pods to update).
    pub delete: Vec<String>,
    /// Of `delete`, the ordinals removed by scaling down (for the claim retention policy).
    pub scaled_down: Vec<i32>,
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(CONTROLLER_REVISION_HASH)
        .map(String::as_str)
}

fn healthy(pod: &Pod, min_ready: i32, now: Timestamp) -> bool {
    wu::is_running_and_ready(pod)
        && wu::is_pod_available(pod, min_ready, now)
        && pod.metadata.deletion_timestamp.is_none()
}

/// Decides what to do for a set given its pods (owned by it), its current and update
/// revision names, at `now`.
pub fn plan(
    set: &StatefulSet,
    pods: &[Pod],
    current_rev: &str,
    update_rev: &str,
    now: Timestamp,
) -> StsPlan {
    let mut out = StsPlan::default();
    let name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let end = start + replicas;
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);

    let mut slots: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for p in pods {
        let Some(ord) = p
            .metadata
            .name
            .as_deref()
            .and_then(|n| parse_ordinal(&name, n))
        else {
            continue;
        };
        if (start..end).contains(&ord) {
            slots.insert(ord, p);
        } else {
            condemned.push((ord, p));
        }
    }
    condemned.sort_by_key(|c| std::cmp::Reverse(c.0));
    let pname = |p: &Pod| p.metadata.name.clone().unwrap_or_default();

    // Replicas, in ordinal order.
    for ord in start..end {
        match slots.get(&ord) {
            None => {
                let use_current =
                    !on_delete && current_rev != update_rev && ord < start + partition;
                out.create.push((ord, use_current));
                if monotonic {
                    return out;
                }
            }
            Some(p) if wu::is_pod_terminal(p) && p.metadata.deletion_timestamp.is_none() => {
                out.delete.push(pname(p));
                if monotonic {
                    return out;
                }
            }
            Some(p) if monotonic && !healthy(p, min_ready, now) => return out,
            Some(_) => {}
        }
    }
    // Condemned pods, highest ordinal first.
    for (ord, p) in &condemned {
        if p.metadata.deletion_timestamp.is_some() {
            if monotonic {
                return out;
            }
            continue;
        }
        out.delete.push(pname(p));
        out.scaled_down.push(*ord);
        if monotonic {
            return out;
        }
    }
    if !monotonic && !out.delete.is_empty() {
        return out;
    }
    // Rolling update from the highest ordinal down to the partition.
    if on_delete {
        return out;
    }
    for ord in (start + partition..end).rev() {
        let Some(p) = slots.get(&ord) else { continue };
        if revision_of(p) != Some(update_rev) && p.metadata.deletion_timestamp.is_none() {
            out.delete.push(pname(p));
            return out;
        }
        if !healthy(p, min_ready, now) {
            return out;
        }
    }
    out
}

/// The status of a set from its pods (upstream's replica counting and rolling update
/// completion).
pub fn compute_status(
    set: &StatefulSet,
    pods: &[Pod],
    current_rev: &str,
    update_rev: &str,
    collision_count: i32,
    now: Timestamp,
) -> StatefulSetStatus {
    let spec = set.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let name = set.metadata.name.clone().unwrap_or_default();
    let mut st = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: Some(collision_count),
        current_revision: Some(current_rev.to_string()),
        update_revision: Some(update_rev.to_string()),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut ready, mut avail, mut cur, mut upd) = (0, 0, 0, 0);
    for p in pods.iter().filter(|p| {
        p.metadata
            .name
            .as_deref()
            .and_then(|n| parse_ordinal(&name, n))
            .is_some()
    }) {
        st.replicas += 1;
        let terminating = p.metadata.deletion_timestamp.is_some();
        if wu::is_running_and_ready(p) && !terminating {
            ready += 1;
            if wu::is_pod_available(p, min_ready, now) {
                avail += 1;
            }
        }
        if !terminating {
            if revision_of(p) == Some(current_rev) {
                cur += 1;
            }
            if revision_of(p) == Some(update_rev) {
                upd += 1;
            }
        }
    }
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    if rolling && upd == st.replicas && ready == st.replicas {
        cur = upd;
        st.current_revision = Some(update_rev.to_string());
    }
    st.ready_replicas = Some(ready);
    st.available_replicas = Some(avail);
    st.current_replicas = Some(cur);
    st.updated_replicas = Some(upd);
    st
}

/// The pod of a set for an ordinal, from a template of the given revision.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(CONTROLLER_REVISION_HASH.into(), revision.to_string());
    let mut pspec = template.spec.clone().unwrap_or_default();
    pspec.hostname = Some(name.clone());
    if let Some(svc) = spec.service_name.as_ref().filter(|s| !s.is_empty()) {
        pspec.subdomain = Some(svc.clone());
    }
    for t in spec.volume_claim_templates.iter().flatten() {
        let tname = t.metadata.name.clone().unwrap_or_default();
        let vol = Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, &set_name, ordinal),
                read_only: None,
            }),
            ..Default::default()
        };
        let vols = pspec.volumes.get_or_insert_with(Vec::new);
        vols.retain(|v| v.name != tname);
        vols.push(vol);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![wu::controller_ref(
                &set.metadata,
                "apps/v1",
                "StatefulSet",
            )]),
            ..Default::default()
        },
        spec: Some(pspec),
        status: None,
    }
}

/// The claims of a pod of a set (labels: the template's and the set's selector labels;
/// owned by the set when `whenDeleted: Delete`).
pub fn new_claims(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
            let owner = delete_with_set.then(|| {
                let mut r = wu::controller_ref(&set.metadata, "apps/v1", "StatefulSet");
                r.controller = None;
                vec![r]
            });
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&tname, &set_name, ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: owner,
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

struct Ctx {
    client: kube::Client,
    events: Events,
    /// Pods from the shared informer, by controller.
    pods: OwnedCache<Pod>,
    /// ControllerRevisions from the shared informer, by controller.
    revs: OwnedCache<ControllerRevision>,
    /// Pod creations and deletions not yet seen in `pods`.
    expectations: Expectations,
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = set.namespace().unwrap_or_default();
    let set_name = set.name_any();
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let oref = set.object_ref(&());

    let key = format!("{ns}/{set_name}");
    // Decide only from a cache that shows this set's own earlier pod writes.
    if !ctx
        .expectations
        .satisfied(&key, |n| ctx.pods.get(&ns, n).map(MetaOf))
    {
        let left = ctx.expectations.time_left(&key).unwrap_or_default();
        return Ok(Action::requeue(left + Duration::from_millis(100)));
    }
    let pods: Vec<Pod> = ctx.pods.owned_matching(&uid, &ns, &spec.selector);
    let revs = wu::owned_revisions(ctx.revs.owned_matching(&uid, &ns, &spec.selector), &uid);
    let owner = wu::controller_ref(&set.metadata, "apps/v1", "StatefulSet");
    let collision = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (update, collision) = wu::ensure_revision(
        &revs_api,
        &owner,
        labels,
        set.metadata.annotations.clone(),
        &spec.template,
        collision,
        &revs,
    )
    .await?;
    let update_name = update.metadata.name.clone().unwrap_or_default();
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_ref())
        .and_then(|c| revs.iter().find(|r| r.metadata.name.as_ref() == Some(c)))
        .cloned()
        .unwrap_or_else(|| update.clone());
    let current_name = current.metadata.name.clone().unwrap_or_default();
    let current_template =
        wu::template_of_revision(&current).unwrap_or_else(|| spec.template.clone());

    let now = Timestamp::now();
    let p = plan(&set, &pods, &current_name, &update_name, now);
    let when_scaled_delete = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|r| r.when_scaled.as_deref())
        == Some("Delete");
    for n in &p.delete {
        let ord = parse_ordinal(&set_name, n).unwrap_or(-1);
        if when_scaled_delete && p.scaled_down.contains(&ord) {
            if let Some(pod) = pods.iter().find(|x| x.metadata.name.as_deref() == Some(n)) {
                let pod_ref = OwnerReference {
                    controller: None,
                    ..wu::controller_ref(&pod.metadata, "v1", "Pod")
                };
                for claim in new_claims(&set, ord) {
                    let cname = claim.metadata.name.clone().unwrap_or_default();
                    if let Some(existing) = pvc_api.get_opt(&cname).await? {
                        let mut refs = existing
                            .metadata
                            .owner_references
                            .clone()
                            .unwrap_or_default();
                        if !refs.iter().any(|r| r.uid == pod_ref.uid) {
                            refs.push(pod_ref.clone());
                            pvc_api
                                .patch(
                                    &cname,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"metadata": {"ownerReferences": refs}})),
                                )
                                .await?;
                        }
                    }
                }
            }
        }
        match pods_api.delete(n, &Default::default()).await {
            Ok(_) => {
                let uid = pods
                    .iter()
                    .find(|x| x.metadata.name.as_deref() == Some(n))
                    .and_then(|x| x.metadata.uid.clone())
                    .unwrap_or_default();
                ctx.expectations.expect_deletions(&key, [(n.clone(), uid)]);
                ctx.events
                    .record(
                        &oref,
                        false,
                        "SuccessfulDelete",
                        format!("delete Pod {n} in StatefulSet {set_name} successful"),
                    )
                    .await
            }
            Err(e) if wu::is_not_found(&e) => {}
            Err(e) => {
                ctx.events
                    .record(
                        &oref,
                        true,
                        "FailedDelete",
                        format!("delete Pod {n} in StatefulSet {set_name} failed error: {e}"),
                    )
                    .await;
                return Err(e.into());
            }
        }
    }
    for (ord, use_current) in &p.create {
        let (tmpl, rev) = if *use_current {
            (&current_template, &current_name)
        } else {
            (&spec.template, &update_name)
        };
        let pod = new_pod(&set, tmpl, *ord, rev);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        for claim in new_claims(&set, *ord) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            if pvc_api.get_opt(&cname).await?.is_none() {
                match pvc_api.create(&PostParams::default(), &claim).await {
                    Ok(_) => ctx.events.record(&oref, false, "SuccessfulCreate", format!("create Claim {cname} Pod {pod_name} in StatefulSet {set_name} success")).await,
                    Err(e) if wu::is_conflict(&e) => {}
                    Err(e) => {
                        ctx.events.record(&oref, true, "FailedCreate", format!("create Claim {cname} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}")).await;
                        return Err(e.into());
                    }
                }
            }
        }
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                ctx.expectations.expect_creations(
                    &key,
                    [(
                        pod_name.clone(),
                        created.metadata.uid.clone().unwrap_or_default(),
                    )],
                );
                ctx.events
                    .record(
                        &oref,
                        false,
                        "SuccessfulCreate",
                        format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                    )
                    .await
            }
            Err(e) if wu::is_conflict(&e) => {}
            Err(e) => {
                ctx.events
                    .record(
                        &oref,
                        true,
                        "FailedCreate",
                        format!(
                            "create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                        ),
                    )
                    .await;
                return Err(e.into());
            }
        }
    }

    let status = compute_status(&set, &pods, &current_name, &update_name, collision, now);
    if set.status.as_ref() != Some(&status) {
        let mut s = (*set).clone();
        s.status = Some(status.clone());
        sets.replace_status(&set_name, &PostParams::default(), &s)
            .await?;
    }
    let mut live: Vec<String> = vec![current_name.clone(), update_name.clone()];
    live.extend(pods.iter().filter_map(|p| revision_of(p).map(String::from)));
    let mut revs = wu::owned_revisions(ctx.revs.owned_matching(&uid, &ns, &spec.selector), &uid);
    // The cache may not show the revision just created yet.
    if !revs.iter().any(|r| r.metadata.name == update.metadata.name) {
        revs.push(update.clone());
        revs.sort_by_key(|r| r.revision);
    }
    wu::truncate_history(
        &revs_api,
        &revs,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;

    // Look again when a ready pod becomes available (minReadySeconds).
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0 && status.available_replicas != status.ready_replicas {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

/// Runs the StatefulSet controller until the watch ends.
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let set_changes = informers.subscribe::<StatefulSet>();
    let pod_changes = informers.subscribe::<Pod>();
    let rev_changes = informers.subscribe::<ControllerRevision>();
    let sets = informers.store::<StatefulSet>().await;
    let pods = informers.owned_cache::<Pod>().await;
    let revs = informers.owned_cache::<ControllerRevision>().await;
    let expectations = Expectations::new();
    let pod_changes = pod_changes.inspect(observe_gone_pods(
        pods.store.clone(),
        "StatefulSet",
        expectations.clone(),
    ));
    let ctx = Arc::new(Ctx {
        events: Events::new(client.clone(), "statefulset-controller"),
        client,
        pods,
        revs,
        expectations,
    });
    let triggers = vec![
        Trigger::for_each(set_changes),
        Trigger::owners(pod_changes),
        Trigger::owners(rev_changes),
        Trigger::all_in(&sets),
    ];
    run_controller(
        "statefulset",
        4,
        WorkQueue::new(),
        triggers,
        for_objects(sets, ctx, reconcile),
    )
    .await;
    Ok(())
}

/// A pod-change observer that settles, for a pod deleted before the cache showed it,
/// what its controller of `kind` expected of it.
pub fn observe_gone_pods(
    store: kube::runtime::reflector::Store<Pod>,
    kind: &'static str,
    expectations: Expectations,
) -> impl Fn(&Arc<Pod>) + Send + 'static {
    move |p: &Arc<Pod>| {
        if store
            .get(&kube::runtime::reflector::ObjectRef::from_obj(&**p))
            .is_some()
        {
            return;
        }
        if let (Some(o), Some(uid)) = (
            wu::controller_of(&p.metadata).filter(|o| o.kind == kind),
            p.metadata.uid.as_deref(),
        ) {
            expectations.observe_gone(
                &format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    o.name
                ),
                uid,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn set(replicas: i32, parallel: bool) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("sts-uid".into()),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("nginx".into()),
                pod_management_policy: parallel.then(|| "Parallel".into()),
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    match_expressions: None,
                },
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(ord: i32, rev: &str, ready: bool) -> Pod {
        let mut p = new_pod(&set(1, false), &PodTemplateSpec::default(), ord, rev);
        p.status = Some(PodStatus {
            phase: Some(if ready { "Running" } else { "Pending" }.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn ordinals_parse_strictly() {
        assert_eq!(parse_ordinal("web", "web-0"), Some(0));
        assert_eq!(parse_ordinal("web", "web-12"), Some(12));
        assert_eq!(parse_ordinal("web", "web-01"), None);
        assert_eq!(parse_ordinal("web", "web-x"), None);
        assert_eq!(parse_ordinal("web", "webby-1"), None);
        assert_eq!(parse_ordinal("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let s = set(3, false);
        assert_eq!(plan(&s, &[], "r1", "r1", now()).create, vec![(0, false)]);
        // web-0 not ready yet: wait.
        assert_eq!(
            plan(&s, &[pod(0, "r1", false)], "r1", "r1", now()),
            StsPlan::default()
        );
        assert_eq!(
            plan(&s, &[pod(0, "r1", true)], "r1", "r1", now()).create,
            vec![(1, false)]
        );
        assert_eq!(
            plan(
                &s,
                &[pod(0, "r1", true), pod(1, "r1", true)],
                "r1",
                "r1",
                now()
            )
            .create,
            vec![(2, false)]
        );
        // A lost pod in the middle is recreated first.
        assert_eq!(
            plan(
                &s,
                &[pod(0, "r1", true), pod(2, "r1", true)],
                "r1",
                "r1",
                now()
            )
            .create,
            vec![(1, false)]
        );
    }

    #[test]
    fn parallel_creates_all_and_deletes_all_condemned() {
        let s = set(3, true);
        assert_eq!(
            plan(&s, &[pod(0, "r1", false)], "r1", "r1", now()).create,
            vec![(1, false), (2, false)]
        );
        let s = set(1, true);
        let p = plan(
            &s,
            &[pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", false)],
            "r1",
            "r1",
            now(),
        );
        assert_eq!(p.delete, vec!["web-2".to_string(), "web-1".to_string()]);
    }

    #[test]
    fn scale_down_in_reverse_order_one_at_a_time() {
        let s = set(1, false);
        let pods = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let p = plan(&s, &pods, "r1", "r1", now());
        assert_eq!(p.delete, vec!["web-2".to_string()]);
        assert_eq!(p.scaled_down, vec![2]);
        // While web-2 terminates, web-1 waits.
        let mut pods2 = pods.clone();
        pods2[2].metadata.deletion_timestamp = Some(Time(now()));
        assert!(plan(&s, &pods2, "r1", "r1", now()).delete.is_empty());
        // No scale down while a kept replica is unhealthy.
        let pods3 = vec![pod(0, "r1", false), pod(1, "r1", true)];
        assert!(plan(&s, &pods3, "r1", "r1", now()).delete.is_empty());
    }

    #[test]
    fn rolling_update_from_highest_ordinal_with_partition() {
        let mut s = set(3, false);
        let all_old = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        assert_eq!(
            plan(&s, &all_old, "r1", "r2", now()).delete,
            vec!["web-2".to_string()]
        );
        // web-2 updated but not ready: wait.
        let mid = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", false)];
        assert!(plan(&s, &mid, "r1", "r2", now()).delete.is_empty());
        let mid = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", true)];
        assert_eq!(
            plan(&s, &mid, "r1", "r2", now()).delete,
            vec!["web-1".to_string()]
        );
        // Partition 2: only ordinals >= 2 are updated; recreated lower pods use the current revision.
        if let Some(sp) = s.spec.as_mut() {
            sp.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(2),
                    max_unavailable: None,
                }),
            });
        }
        assert!(plan(&s, &mid, "r1", "r2", now()).delete.is_empty());
        let missing0 = vec![pod(1, "r1", true), pod(2, "r2", true)];
        assert_eq!(
            plan(&s, &missing0, "r1", "r2", now()).create,
            vec![(0, true)]
        );
        // OnDelete: never deletes for updates; recreated pods get the update revision.
        if let Some(sp) = s.spec.as_mut() {
            sp.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            });
        }
        assert!(plan(&s, &all_old, "r1", "r2", now()).delete.is_empty());
        assert_eq!(
            plan(&s, &missing0, "r1", "r2", now()).create,
            vec![(0, false)]
        );
    }

    #[test]
    fn failed_pods_are_replaced() {
        let s = set(2, false);
        let mut failed = pod(0, "r1", false);
        if let Some(st) = failed.status.as_mut() {
            st.phase = Some("Failed".into());
        }
        assert_eq!(
            plan(&s, &[failed, pod(1, "r1", true)], "r1", "r1", now()).delete,
            vec!["web-0".to_string()]
        );
    }

    #[test]
    fn pod_identity_and_claims() {
        let s = set(3, false);
        let p = new_pod(&s, &PodTemplateSpec::default(), 1, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        let l = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(l.get(POD_NAME_LABEL).map(String::as_str), Some("web-1"));
        assert_eq!(l.get(POD_INDEX_LABEL).map(String::as_str), Some("1"));
        assert_eq!(
            l.get(CONTROLLER_REVISION_HASH).map(String::as_str),
            Some("web-abc")
        );
        let ps = p.spec.clone().unwrap_or_default();
        assert_eq!(ps.hostname.as_deref(), Some("web-1"));
        assert_eq!(ps.subdomain.as_deref(), Some("nginx"));
        let vols = ps.volumes.unwrap_or_default();
        assert_eq!(
            vols[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-web-1")
        );
        let claims = new_claims(&s, 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-1"));
        assert_eq!(
            claims[0]
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("web")
        );
        assert!(
            claims[0].metadata.owner_references.is_none(),
            "Retain by default"
        );
        let mut s2 = s.clone();
        if let Some(sp) = s2.spec.as_mut() {
            sp.persistent_volume_claim_retention_policy = Some(
                k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: None,
                },
            );
        }
        assert_eq!(
            new_claims(&s2, 1)[0]
                .metadata
                .owner_references
                .as_ref()
                .map(|r| r[0].uid.as_str()),
            Some("sts-uid")
        );
    }

    #[test]
    fn status_counts_and_completes_rollout() {
        let s = set(2, false);
        let pods = vec![pod(0, "r1", true), pod(1, "r2", false)];
        let st = compute_status(&s, &pods, "r1", "r2", 0, now());
        assert_eq!(
            (
                st.replicas,
                st.ready_replicas,
                st.current_replicas,
                st.updated_replicas
            ),
            (2, Some(1), Some(1), Some(1))
        );
        assert_eq!(st.current_revision.as_deref(), Some("r1"));
        let pods = vec![pod(0, "r2", true), pod(1, "r2", true)];
        let st = compute_status(&s, &pods, "r1", "r2", 0, now());
        assert_eq!(st.current_revision.as_deref(), Some("r2"));
        assert_eq!(st.current_replicas, Some(2));
        assert_eq!(st.available_replicas, Some(2));
    }
}
