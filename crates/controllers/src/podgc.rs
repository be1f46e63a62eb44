//! The pod garbage collector (upstream's `pkg/controller/podgc`): deletes the oldest
//! terminated pods beyond the terminated-pod threshold, force-deletes pods bound to nodes
//! that no longer exist (after a quarantine, marking them Failed with a
//! `DisruptionTarget` condition first), terminating pods that were never scheduled, and
//! terminating pods on not-ready nodes tainted `node.kubernetes.io/out-of-service`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::workload_util::{ignore_not_found, is_not_found};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// How long a node must be missing before its pods are collected (upstream's 40 s).
pub const QUARANTINE: Duration = Duration::from_secs(40);
/// Upstream's pod GC period.
pub const GC_PERIOD: Duration = Duration::from_secs(20);
/// Taint marking a node out of service (its terminating pods are force-deleted).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

fn is_terminated(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// The terminated pods to delete: the oldest (by creation time) beyond `threshold`
/// (0 disables this collection).
pub fn terminated_to_delete(pods: &[&Pod], threshold: usize) -> Vec<(String, String)> {
    if threshold == 0 {
        return Vec::new();
    }
    let mut terminated: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| is_terminated(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    if terminated.len() <= threshold {
        return Vec::new();
    }
    terminated.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let n = terminated.len() - threshold;
    terminated[..n].iter().map(|p| ns_name(p)).collect()
}

fn ns_name(p: &Pod) -> (String, String) {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// Terminating pods that were never scheduled (deleted at once, with no kubelet to
/// finish them).
pub fn unscheduled_terminating(pods: &[&Pod]) -> Vec<(String, String)> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_none())
        .map(|p| ns_name(p))
        .collect()
}

/// Terminating pods on not-ready nodes tainted out-of-service.
pub fn terminating_out_of_service(pods: &[&Pod], nodes: &[&Node]) -> Vec<(String, String)> {
    let oos: HashSet<&str> = nodes
        .iter()
        .filter(|n| {
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| ts.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT));
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            tainted && !ready
        })
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    pods.iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some() && node_of(p).is_some_and(|n| oos.contains(n))
        })
        .map(|p| ns_name(p))
        .collect()
}

/// Pods bound to nodes that are not in `nodes`, and have been missing since before
/// `now - QUARANTINE` according to `missing_since` (updated here).
pub fn orphaned(
    pods: &[&Pod],
    nodes: &HashSet<String>,
    missing_since: &mut HashMap<String, Timestamp>,
    now: Timestamp,
    quarantine: Duration,
) -> Vec<(String, String)> {
    let missing: HashSet<&str> = pods
        .iter()
        .filter_map(|p| node_of(p))
        .filter(|n| !nodes.contains(*n))
        .collect();
    missing_since.retain(|n, _| missing.contains(n.as_str()));
    for n in &missing {
        missing_since.entry(n.to_string()).or_insert(now);
    }
    let q = jiff::SignedDuration::try_from(quarantine).unwrap_or_default();
    pods.iter()
        .filter(|p| {
            node_of(p)
                .and_then(|n| missing_since.get(n))
                .is_some_and(|since| since.checked_add(q).is_ok_and(|t| t <= now))
        })
        .map(|p| ns_name(p))
        .collect()
}

async fn force_delete(client: &kube::Client, ns: &str, name: &str) -> Result<(), ControllerError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    ignore_not_found(
        api.delete(
            name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .map(|_| ()),
    )
}

async fn sync(
    client: &kube::Client,
    threshold: usize,
    pods: &Store<Pod>,
    nodes: &Store<Node>,
    missing_since: &mut HashMap<String, Timestamp>,
) -> Result<Option<Duration>, ControllerError> {
    let all_pods = pods.state();
    let pod_refs: Vec<&Pod> = all_pods.iter().map(|p| p.as_ref()).collect();
    let all_nodes = nodes.state();
    let node_refs: Vec<&Node> = all_nodes.iter().map(|n| n.as_ref()).collect();
    let now = Timestamp::now();
    for (ns, name) in terminated_to_delete(&pod_refs, threshold) {
        tracing::info!(pod = %name, namespace = %ns, "pod GC: deleting terminated pod beyond the threshold");
        force_delete(client, &ns, &name).await?;
    }
    let node_names: HashSet<String> = node_refs
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let orphans = orphaned(&pod_refs, &node_names, missing_since, now, QUARANTINE);
    let node_api: Api<Node> = Api::all(client.clone());
    let mut confirmed: HashMap<String, bool> = HashMap::new();
    for (ns, name) in orphans {
        let Some(pod) = pod_refs.iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && p.metadata.name.as_deref() == Some(name.as_str())
        }) else {
            continue;
        };
        let node = node_of(pod).unwrap_or_default().to_string();
        // Check with the API server, not only the cache, as upstream does.
        let gone = match confirmed.get(&node) {
            Some(g) => *g,
            None => {
                let g = match node_api.get(&node).await {
                    Ok(_) => false,
                    Err(e) if is_not_found(&e) => true,
                    Err(e) => return Err(e.into()),
                };
                confirmed.insert(node.clone(), g);
                g
            }
        };
        if !gone {
            continue;
        }
        tracing::info!(pod = %name, namespace = %ns, node = %node, "pod GC: deleting pod bound to a missing node");
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if !is_terminated(pod) {
            let mut conds = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            conds.retain(|c| c.type_ != "DisruptionTarget");
            conds.push(PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some("DeletionByPodGC".into()),
                message: Some("PodGC: node no longer exists".into()),
                last_transition_time: Some(Time(now)),
                ..Default::default()
            });
            let patch = json!({"status": {"phase": "Failed", "conditions": conds}});
            ignore_not_found(
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(|_| ()),
            )?;
        }
        force_delete(client, &ns, &name).await?;
    }
    for (ns, name) in unscheduled_terminating(&pod_refs)
        .into_iter()
        .chain(terminating_out_of_service(&pod_refs, &node_refs))
    {
        tracing::info!(pod = %name, namespace = %ns, "pod GC: force-deleting terminating pod");
        force_delete(client, &ns, &name).await?;
    }
    // Come back when a quarantine runs out.
    Ok((!missing_since.is_empty()).then_some(Duration::from_secs(5)))
}

/// Runs the pod GC forever.
pub async fn run(
    client: kube::Client,
    terminated_pod_gc_threshold: usize,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Upstream runs on a timer; changes to pods and nodes are batched into the next pass.
    let node_changes = Trigger::changes(&informers, |_: &Node| Some(()));
    let pods = informers.store::<Pod>().await;
    let nodes = informers.store::<Node>().await;
    let missing_since = Arc::new(tokio::sync::Mutex::new(HashMap::new()));
    // One key: a pass over every pod, on a node change or every GC period.
    let triggers = vec![node_changes, Trigger::every(GC_PERIOD, ())];
    run_controller("podgc", 1, WorkQueue::new(), triggers, move |()| {
        let (client, pods, nodes, missing_since) = (
            client.clone(),
            pods.clone(),
            nodes.clone(),
            missing_since.clone(),
        );
        async move {
            let started = std::time::Instant::now();
            let mut missing_since = missing_since.lock().await;
            let r = sync(
                &client,
                terminated_pod_gc_threshold,
                &pods,
                &nodes,
                &mut missing_since,
            )
            .await;
            // A pass reads the shared stores only (no LIST); its cost, for idle-CPU checks.
            tracing::trace!(
                elapsed_us = started.elapsed().as_micros() as u64,
                pods = pods.len(),
                "pod GC: pass"
            );
            r.map(Action::requeue_after)
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pod(name: &str, node: Option<&str>, phase: &str, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                creation_timestamp: Some(Time(ts(created))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn oldest_terminated_beyond_threshold() {
        let a = pod("a", Some("n"), "Succeeded", 3);
        let b = pod("b", Some("n"), "Failed", 1);
        let c = pod("c", Some("n"), "Running", 0);
        let d = pod("d", Some("n"), "Succeeded", 2);
        let refs = [&a, &b, &c, &d];
        assert_eq!(
            terminated_to_delete(&refs, 1),
            vec![("ns".into(), "b".into()), ("ns".into(), "d".into())]
        );
        assert!(terminated_to_delete(&refs, 3).is_empty());
        assert!(terminated_to_delete(&refs, 0).is_empty());
    }

    #[test]
    fn orphans_wait_for_quarantine() {
        let a = pod("a", Some("gone"), "Running", 0);
        let b = pod("b", Some("here"), "Running", 0);
        let u = pod("u", None, "Pending", 0);
        let nodes: HashSet<String> = ["here".to_string()].into();
        let mut since = HashMap::new();
        assert!(orphaned(&[&a, &b, &u], &nodes, &mut since, ts(0), QUARANTINE).is_empty());
        assert!(orphaned(&[&a, &b, &u], &nodes, &mut since, ts(39), QUARANTINE).is_empty());
        assert_eq!(
            orphaned(&[&a, &b, &u], &nodes, &mut since, ts(40), QUARANTINE),
            vec![("ns".into(), "a".into())]
        );
        // The node came back: the quarantine resets.
        let back: HashSet<String> = ["here".to_string(), "gone".to_string()].into();
        assert!(orphaned(&[&a], &back, &mut since, ts(41), QUARANTINE).is_empty());
        assert!(since.is_empty());
    }

    #[test]
    fn terminating_unscheduled_and_out_of_service() {
        let mut u = pod("u", None, "Pending", 0);
        u.metadata.deletion_timestamp = Some(Time(ts(1)));
        let mut t = pod("t", Some("n1"), "Running", 0);
        t.metadata.deletion_timestamp = Some(Time(ts(1)));
        let r = pod("r", None, "Pending", 0);
        assert_eq!(
            unscheduled_terminating(&[&u, &t, &r]),
            vec![("ns".into(), "u".into())]
        );
        let mut n1 = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(terminating_out_of_service(&[&t], &[&n1]).is_empty());
        n1.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![k8s_openapi::api::core::v1::Taint {
                key: OUT_OF_SERVICE_TAINT.into(),
                effect: "NoExecute".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            terminating_out_of_service(&[&t], &[&n1]),
            vec![("ns".into(), "t".into())]
        );
    }
}
