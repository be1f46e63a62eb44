//! The disruption controller (upstream's `pkg/controller/disruption`): keeps every
//! PodDisruptionBudget's status — `currentHealthy`, `desiredHealthy`, `expectedPods`,
//! `disruptionsAllowed`, `observedGeneration` and the `DisruptionAllowed` condition — from
//! its selected pods and `minAvailable`/`maxUnavailable` (percentages are taken of the
//! scale of the pods' controllers). The API server's eviction subresource reads
//! `status.disruptionsAllowed`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use std::collections::{HashMap, HashSet};

use crate::endpoints::key_of;
use crate::informers::Index;
use crate::podutil::{controller_of, is_pod_ready, selector_matches};
use crate::workload_util::is_not_found;
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Upstream's `GetScaledValueFromIntOrPercent`: an integer as is, or a percentage of
/// `total`, rounded up or down. `None` for a malformed percentage.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            let prod = pct * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            i32::try_from(v).ok()
        }
    }
}

/// Why the expected pod count could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleError(pub String);

/// `(expectedPods, desiredHealthy)` of a budget. `scale_of_pods` is called only when the
/// budget needs its controllers' scale (`maxUnavailable`, or a percentage
/// `minAvailable`) and gives the summed scale of the pods' controllers.
pub fn expected_and_desired(
    pdb: &PodDisruptionBudget,
    pod_count: i32,
    scale_of_pods: impl FnOnce() -> Result<i32, ScaleError>,
) -> Result<(i32, i32), ScaleError> {
    let spec = pdb.spec.as_ref();
    let min = spec.and_then(|s| s.min_available.as_ref());
    let max = spec.and_then(|s| s.max_unavailable.as_ref());
    if let Some(max) = max {
        let expected = scale_of_pods()?;
        let max = scaled_value(max, expected, true)
            .ok_or_else(|| ScaleError(format!("invalid value for maxUnavailable: {max:?}")))?;
        return Ok((expected, (expected - max).max(0)));
    }
    match min {
        Some(IntOrString::Int(i)) => Ok((pod_count, *i)),
        Some(pct @ IntOrString::String(_)) => {
            let expected = scale_of_pods()?;
            let desired = scaled_value(pct, expected, true)
                .ok_or_else(|| ScaleError(format!("invalid value for minAvailable: {pct:?}")))?;
            Ok((expected, desired))
        }
        None => Ok((pod_count, 0)),
    }
}

/// The healthy pods: not being deleted, and Ready.
pub fn count_healthy(pods: &[&Pod]) -> i32 {
    i32::try_from(
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_pod_ready(p))
            .count(),
    )
    .unwrap_or(i32::MAX)
}

/// The new status of a budget (keeping `disruptedPods` and unchanged condition times).
pub fn compute_status(
    pdb: &PodDisruptionBudget,
    current_healthy: i32,
    expected: i32,
    desired: i32,
    now: Time,
) -> PodDisruptionBudgetStatus {
    let old = pdb.status.clone().unwrap_or_default();
    let allowed = (current_healthy - desired).max(0);
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let cond = condition(&old, status, reason, "", now);
    PodDisruptionBudgetStatus {
        current_healthy,
        desired_healthy: desired,
        disruptions_allowed: allowed,
        expected_pods: expected,
        observed_generation: pdb.metadata.generation,
        disrupted_pods: old.disrupted_pods.clone(),
        conditions: Some(vec![cond]),
    }
}

fn condition(
    old: &PodDisruptionBudgetStatus,
    status: &str,
    reason: &str,
    message: &str,
    now: Time,
) -> Condition {
    let prev = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let ltt = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now,
    };
    Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: ltt,
        observed_generation: None,
    }
}

/// The status of a budget whose expected count could not be computed: nothing allowed,
/// condition reason `SyncFailed`.
pub fn failed_status(
    pdb: &PodDisruptionBudget,
    current_healthy: i32,
    message: &str,
    now: Time,
) -> PodDisruptionBudgetStatus {
    let old = pdb.status.clone().unwrap_or_default();
    PodDisruptionBudgetStatus {
        current_healthy,
        disruptions_allowed: 0,
        observed_generation: pdb.metadata.generation,
        conditions: Some(vec![condition(&old, "False", "SyncFailed", message, now)]),
        ..old
    }
}

/// The scale of a pod's controller, by (kind, name): Deployments for ReplicaSets owned by
/// one, else the ReplicaSet/StatefulSet/ReplicationController itself.
async fn controller_scale(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Option<((String, String), i32)>, ControllerError> {
    let r = match kind {
        "ReplicaSet" => {
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            match api.get(name).await {
                Ok(rs) => {
                    if let Some(owner) =
                        controller_of(&rs.metadata).filter(|o| o.kind == "Deployment")
                    {
                        let d: Api<Deployment> = Api::namespaced(client.clone(), ns);
                        match d.get(&owner.name).await {
                            Ok(dep) => Some((
                                ("Deployment".to_string(), owner.name.clone()),
                                dep.spec.and_then(|s| s.replicas).unwrap_or(1),
                            )),
                            Err(e) if is_not_found(&e) => None,
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        Some((
                            ("ReplicaSet".to_string(), name.to_string()),
                            rs.spec.and_then(|s| s.replicas).unwrap_or(1),
                        ))
                    }
                }
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(e.into()),
            }
        }
        "StatefulSet" => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
            match api.get(name).await {
                Ok(s) => Some((
                    ("StatefulSet".to_string(), name.to_string()),
                    s.spec.and_then(|s| s.replicas).unwrap_or(1),
                )),
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(e.into()),
            }
        }
        "ReplicationController" => {
            let api: Api<ReplicationController> = Api::namespaced(client.clone(), ns);
            match api.get(name).await {
                Ok(s) => Some((
                    ("ReplicationController".to_string(), name.to_string()),
                    s.spec.and_then(|s| s.replicas).unwrap_or(1),
                )),
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(e.into()),
            }
        }
        _ => None,
    };
    Ok(r)
}

/// How often a budget whose pod count depends on its controllers' scale looks again
/// (a scale change does not change any pod at first).
const SCALE_RESYNC: Duration = Duration::from_secs(30);

/// Whether a budget selects a pod (same namespace, a selector matching its labels).
pub fn pdb_selects(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    pdb.metadata.namespace == pod.metadata.namespace
        && selector_matches(
            sel,
            pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
        )
}

/// Brings the status of the budget `ns/name` up to date (upstream's `sync`).
async fn sync_pdb(
    client: &kube::Client,
    pdbs: &Store<PodDisruptionBudget>,
    pods_by_ns: &Index<Pod>,
    key: &str,
) -> Result<Option<Duration>, ControllerError> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let now = Time(jiff::Timestamp::now());
    let Some(pdb) = pdbs.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(None);
    };
    {
        if pdb.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let (ns, name) = (ns.to_string(), name.to_string());
        let sel = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let ns_pods = pods_by_ns.get(&ns);
        let selected: Vec<&Pod> = ns_pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| {
                pdb.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some()
                    && selector_matches(
                        &sel,
                        p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                    )
            })
            .collect();
        let healthy = count_healthy(&selected);
        let needs_scale = pdb.spec.as_ref().is_some_and(|s| {
            s.max_unavailable.is_some() || matches!(s.min_available, Some(IntOrString::String(_)))
        });
        let scale = if needs_scale {
            let mut controllers: BTreeMap<(String, String), i32> = BTreeMap::new();
            let mut err = None;
            for p in &selected {
                match controller_of(&p.metadata) {
                    None => {
                        err = Some(ScaleError(format!(
                            "found no controllers for pod {:?}",
                            p.metadata.name.as_deref().unwrap_or("")
                        )));
                        break;
                    }
                    Some(owner) => {
                        match controller_scale(client, &ns, &owner.kind, &owner.name).await? {
                            Some((k, n)) => {
                                controllers.insert(k, n);
                            }
                            None => {
                                err = Some(ScaleError(format!(
                                    "found no controllers for pod {:?}",
                                    p.metadata.name.as_deref().unwrap_or("")
                                )));
                                break;
                            }
                        }
                    }
                }
            }
            match err {
                Some(e) => Err(e),
                None => Ok(controllers.values().sum::<i32>()),
            }
        } else {
            Ok(0)
        };
        let count = i32::try_from(selected.len()).unwrap_or(i32::MAX);
        let status = match expected_and_desired(&pdb, count, || scale) {
            Ok((expected, desired)) => {
                compute_status(&pdb, healthy, expected, desired, now.clone())
            }
            Err(ScaleError(msg)) => failed_status(&pdb, healthy, &msg, now.clone()),
        };
        if pdb.status.as_ref() != Some(&status) {
            let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
            let r = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await;
            if let Err(e) = r {
                if !is_not_found(&e) {
                    return Err(e.into());
                }
            }
        }
        if needs_scale {
            return Ok(Some(SCALE_RESYNC));
        }
    }
    Ok(None)
}

/// Runs the disruption controller forever: a work queue of budget keys, fed by budget
/// changes and by pod changes (only the budgets selecting the pod, before or after).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let pdb_changes = informers.subscribe::<PodDisruptionBudget>();
    let pod_changes = informers.subscribe::<Pod>();
    let pdbs = informers.store::<PodDisruptionBudget>().await;
    let pods = informers.store::<Pod>().await;
    let pods_by_ns = informers.index::<Pod>(crate::informers::by_namespace).await;
    let pdbs_by_ns = informers
        .index::<PodDisruptionBudget>(crate::informers::by_namespace)
        .await;
    let queue: WorkQueue<String> = WorkQueue::new();
    for p in pdbs.state() {
        queue.add(key_of(&p.metadata));
    }
    let mut last: HashMap<String, HashSet<String>> = HashMap::new();
    let store = pdbs.clone();
    let triggers = vec![
        Trigger::from_stream(pdb_changes.map(|p| key_of(&p.metadata))),
        Trigger::from_stream(pod_changes.flat_map(move |p| {
            let pkey = key_of(&p.metadata);
            let now: HashSet<String> = pdbs_by_ns
                .get(p.metadata.namespace.as_deref().unwrap_or_default())
                .iter()
                .filter(|b| pdb_selects(b, &p))
                .map(|b| key_of(&b.metadata))
                .collect();
            let deleted = pods.get(&ObjectRef::from_obj(&*p)).is_none();
            let before = if deleted || now.is_empty() {
                last.remove(&pkey)
            } else {
                last.insert(pkey, now.clone())
            };
            futures_util::stream::iter(before.into_iter().flatten().chain(now))
        })),
    ];
    run_controller("disruption", 2, queue, triggers, move |key: String| {
        let (client, store, pods_by_ns) = (client.clone(), store.clone(), pods_by_ns.clone());
        async move {
            sync_pdb(&client, &store, &pods_by_ns, &key)
                .await
                .map(Action::requeue_after)
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("b".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(
            scaled_value(&IntOrString::String("50%".into()), 5, true),
            Some(3)
        );
        assert_eq!(
            scaled_value(&IntOrString::String("50%".into()), 5, false),
            Some(2)
        );
        assert_eq!(
            scaled_value(&IntOrString::String("0%".into()), 5, true),
            Some(0)
        );
        assert_eq!(scaled_value(&IntOrString::Int(4), 5, true), Some(4));
        assert_eq!(
            scaled_value(&IntOrString::String("x".into()), 5, true),
            None
        );
    }

    #[test]
    fn pdb_math() {
        // minAvailable integer: expected = pods matched, scale not needed.
        let b = pdb(Some(IntOrString::Int(2)), None);
        assert_eq!(
            expected_and_desired(&b, 3, || panic!("no scale needed")),
            Ok((3, 2))
        );
        // minAvailable 50% of a controller scaled to 5: desired 3.
        let b = pdb(Some(IntOrString::String("50%".into())), None);
        assert_eq!(expected_and_desired(&b, 4, || Ok(5)), Ok((5, 3)));
        // maxUnavailable 1 of 5: desired 4; 30% of 5 rounds up to 2: desired 3.
        let b = pdb(None, Some(IntOrString::Int(1)));
        assert_eq!(expected_and_desired(&b, 5, || Ok(5)), Ok((5, 4)));
        let b = pdb(None, Some(IntOrString::String("30%".into())));
        assert_eq!(expected_and_desired(&b, 5, || Ok(5)), Ok((5, 3)));
        // More unavailable than pods: desired never negative.
        let b = pdb(None, Some(IntOrString::Int(9)));
        assert_eq!(expected_and_desired(&b, 2, || Ok(2)), Ok((2, 0)));
        let b = pdb(None, Some(IntOrString::Int(1)));
        assert!(
            expected_and_desired(&b, 1, || Err(ScaleError("found no controllers".into()))).is_err()
        );
    }

    #[test]
    fn status_and_condition() {
        let b = pdb(Some(IntOrString::Int(2)), None);
        let now = Time(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let s = compute_status(&b, 3, 3, 2, now.clone());
        assert_eq!(
            (
                s.current_healthy,
                s.desired_healthy,
                s.disruptions_allowed,
                s.expected_pods
            ),
            (3, 2, 1, 3)
        );
        assert_eq!(s.observed_generation, Some(3));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("DisruptionAllowed", "True", "SufficientPods")
        );
        let s2 = compute_status(&b, 1, 3, 2, now.clone());
        assert_eq!(s2.disruptions_allowed, 0);
        assert_eq!(
            s2.conditions.as_ref().unwrap()[0].reason,
            "InsufficientPods"
        );
        // The transition time is kept while the status stays the same.
        let mut b2 = b.clone();
        b2.status = Some(s.clone());
        let later = Time(jiff::Timestamp::from_second(1_700_000_100).unwrap());
        let s3 = compute_status(&b2, 4, 4, 2, later.clone());
        assert_eq!(s3.conditions.as_ref().unwrap()[0].last_transition_time, now);
        let s4 = compute_status(&b2, 2, 4, 2, later.clone());
        assert_eq!(
            s4.conditions.as_ref().unwrap()[0].last_transition_time,
            later
        );
        let f = failed_status(&b2, 2, "found no controllers for pod \"x\"", later);
        assert_eq!(f.disruptions_allowed, 0);
        assert_eq!(f.conditions.as_ref().unwrap()[0].reason, "SyncFailed");
    }

    #[test]
    fn healthy_excludes_terminating_and_unready() {
        use crate::endpoints::tests::pod;
        let a = pod("a", Some("1.1.1.1"), true);
        let b = pod("b", Some("1.1.1.2"), false);
        let mut c = pod("c", Some("1.1.1.3"), true);
        c.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert_eq!(count_healthy(&[&a, &b, &c]), 1);
    }
}
