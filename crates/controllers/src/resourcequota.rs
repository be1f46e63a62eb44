//! The resource quota controller (upstream's `pkg/controller/resourcequota`): keeps
//! every ResourceQuota's `status.hard` (a copy of `spec.hard`) and `status.used` (the
//! usage of the namespace's objects, [`rk3s_admission::quota::compute_used`]) true.
//!
//! A namespace is recomputed when one of its quotas changes, when an object of a kind
//! the quota evaluators track (pods, services, persistentvolumeclaims, configmaps,
//! secrets, replicationcontrollers) changes or is deleted in it, and every
//! [`RESYNC_PERIOD`] (which also catches `count/<resource>.<group>` of other kinds).
//! The API server's ResourceQuota admission still charges usage at write time; this
//! controller is what releases it after deletes and repairs any drift.
//!
//! Invariant: it writes only ResourceQuota status, and only when it differs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::discovery::{verbs, Discovery};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde_json::{json, Value};

use rk3s_runtime::{run_controller, Action, Change, InformerResource, Trigger, WorkQueue};

use crate::workload_util as wu;
use crate::ControllerError;

/// How often every namespace with quotas is recomputed (upstream's default resync).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(300);

/// The resources (`""` group) whose objects the controller lists for every namespace.
const CORE: [&str; 7] = [
    "pods",
    "services",
    "persistentvolumeclaims",
    "configmaps",
    "secrets",
    "replicationcontrollers",
    "resourcequotas",
];

/// The `(group, plural)` of each `count/<plural>[.<group>]` of `quotas`' hard limits
/// that is not one of the core resources always listed.
pub fn extra_counted(quotas: &[Value]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for q in quotas {
        let Some(hard) = q.pointer("/spec/hard").and_then(|h| h.as_object()) else {
            continue;
        };
        for k in hard.keys() {
            let Some(r) = k.strip_prefix("count/") else {
                continue;
            };
            let (plural, group) = r.split_once('.').unwrap_or((r, ""));
            if group.is_empty() && CORE.contains(&plural) {
                continue;
            }
            out.insert((group.to_string(), plural.to_string()));
        }
    }
    out
}

/// The status `quota` should have given the namespace's `objects`
/// (`(group, plural, object)`), as a merge patch body: None when it already has it.
pub fn status_patch(quota: &Value, objects: &[(String, String, Value)]) -> Option<Value> {
    let hard = quota
        .pointer("/spec/hard")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let used = rk3s_admission::quota::compute_used(
        quota,
        objects.iter().map(|(g, p, o)| (g.as_str(), p.as_str(), o)),
    );
    let want = json!({"hard": hard, "used": used});
    let have = json!({
        "hard": quota.pointer("/status/hard").cloned().unwrap_or_else(|| json!({})),
        "used": quota.pointer("/status/used").cloned().unwrap_or_else(|| json!({})),
    });
    (want != have).then(|| json!({ "status": want }))
}

/// True when `quota`'s `status.hard` is not its `spec.hard` (new, or its spec changed).
pub fn hard_changed(quota: &ResourceQuota) -> bool {
    let spec = quota.spec.as_ref().and_then(|s| s.hard.as_ref());
    let status = quota.status.as_ref().and_then(|s| s.hard.as_ref());
    spec.filter(|h| !h.is_empty()) != status.filter(|h| !h.is_empty())
}

struct Ctx {
    client: kube::Client,
    quotas: Store<ResourceQuota>,
}

async fn list_into(
    api: Api<DynamicObject>,
    group: &str,
    plural: &str,
    out: &mut Vec<(String, String, Value)>,
) -> Result<(), ControllerError> {
    for o in api.list(&ListParams::default()).await?.items {
        if let Ok(v) = serde_json::to_value(&o) {
            out.push((group.to_string(), plural.to_string(), v));
        }
    }
    Ok(())
}

/// The namespace's objects of the core resources and of `extra` (found by discovery).
async fn objects(
    client: &kube::Client,
    ns: &str,
    extra: &BTreeSet<(String, String)>,
) -> Result<Vec<(String, String, Value)>, ControllerError> {
    let mut out = Vec::new();
    for plural in CORE {
        let ar = ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
        };
        list_into(
            Api::namespaced_with(client.clone(), ns, &ar),
            "",
            plural,
            &mut out,
        )
        .await?;
    }
    if extra.is_empty() {
        return Ok(out);
    }
    let groups: Vec<&str> = extra.iter().map(|(g, _)| g.as_str()).collect();
    let discovery = Discovery::new(client.clone()).filter(&groups).run().await?;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !extra.contains(&(ar.group.clone(), ar.plural.clone()))
                || !caps.supports_operation(verbs::LIST)
            {
                continue;
            }
            let (g, p) = (ar.group.clone(), ar.plural.clone());
            list_into(
                Api::namespaced_with(client.clone(), ns, &ar),
                &g,
                &p,
                &mut out,
            )
            .await?;
        }
    }
    Ok(out)
}

async fn reconcile(ns: String, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let quotas: Vec<Value> = ctx
        .quotas
        .state()
        .iter()
        .filter(|q| q.namespace().as_deref() == Some(ns.as_str()))
        .filter_map(|q| serde_json::to_value(&**q).ok())
        .collect();
    if quotas.is_empty() {
        return Ok(Action::await_change());
    }
    let objs = objects(&ctx.client, &ns, &extra_counted(&quotas)).await?;
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    for q in &quotas {
        let Some(patch) = status_patch(q, &objs) else {
            continue;
        };
        let name = q
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        tracing::debug!(namespace = %ns, quota = name, "resourcequota: updating status");
        wu::ignore_not_found(
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    Ok(Action::await_change())
}

/// A trigger queuing the namespace of every changed (or deleted) object of `K`, when a
/// quota exists there.
fn namespace_of<K: InformerResource>(
    informers: &crate::informers::SharedInformers,
    quotas: Store<ResourceQuota>,
) -> Trigger<String> {
    Trigger::changes::<K, _, _>(informers, move |o: &K| {
        o.meta().namespace.clone().filter(|ns| {
            quotas
                .state()
                .iter()
                .any(|q| q.namespace().as_deref() == Some(ns.as_str()))
        })
    })
}

/// Runs the resource quota controller until the watch ends (ResourceQuotas and the
/// tracked kinds from the shared informers; objects listed through the API).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    let quotas = informers.store::<ResourceQuota>().await;
    let ctx = Arc::new(Ctx {
        client,
        quotas: quotas.clone(),
    });
    let all_namespaces = {
        let quotas = quotas.clone();
        move |_: ()| -> Vec<String> {
            quotas
                .state()
                .iter()
                .filter_map(|q| q.namespace())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        }
    };
    let resync = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(RESYNC_PERIOD).await;
        Some(((), ()))
    });
    let triggers = vec![
        // Every quota listed before this controller subscribed, then the quotas whose
        // spec.hard is not their status.hard (new ones, spec changes). Status updates
        // (admission's charges, this controller's writes) are not triggers: recomputing
        // on them would undo charges of objects not stored yet, as upstream notes.
        Trigger::on_change::<ResourceQuota, _, _>(&informers, |c| match c {
            Change::Applied(q) => q.namespace().filter(|_| hard_changed(q)),
            Change::Deleted(_) => None,
            Change::Resync(_) => None,
        }),
        Trigger::from_stream(futures_util::stream::iter(all_namespaces(()))),
        namespace_of::<Pod>(&informers, quotas.clone()),
        namespace_of::<Service>(&informers, quotas.clone()),
        namespace_of::<PersistentVolumeClaim>(&informers, quotas.clone()),
        namespace_of::<ConfigMap>(&informers, quotas.clone()),
        namespace_of::<Secret>(&informers, quotas.clone()),
        namespace_of::<ReplicationController>(&informers, quotas.clone()),
        Trigger::map(resync, all_namespaces),
    ];
    run_controller(
        "resourcequota",
        2,
        WorkQueue::new(),
        triggers,
        move |ns: String| {
            let ctx = ctx.clone();
            async move { reconcile(ns, ctx).await }
        },
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(hard: Value, status: Value) -> Value {
        json!({"metadata": {"name": "q", "namespace": "ns"}, "spec": {"hard": hard}, "status": status})
    }

    fn pod(name: &str) -> (String, String, Value) {
        (
            String::new(),
            "pods".into(),
            json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"phase": "Running"}}),
        )
    }

    #[test]
    fn status_is_hard_and_the_usage_of_the_objects() {
        let q = quota(json!({"pods": "2", "configmaps": "5"}), json!({}));
        let patch = status_patch(&q, &[pod("a")]).expect("a status to write");
        assert_eq!(
            patch["status"]["hard"],
            json!({"pods": "2", "configmaps": "5"})
        );
        assert_eq!(
            patch["status"]["used"],
            json!({"pods": "1", "configmaps": "0"})
        );
    }

    #[test]
    fn a_true_status_is_not_rewritten_and_a_deleted_pod_is_released() {
        let q = quota(
            json!({"pods": "2"}),
            json!({"hard": {"pods": "2"}, "used": {"pods": "1"}}),
        );
        assert_eq!(status_patch(&q, &[pod("a")]), None);
        let patch = status_patch(&q, &[]).expect("usage released");
        assert_eq!(patch["status"]["used"], json!({"pods": "0"}));
    }

    #[test]
    fn only_a_new_or_changed_hard_triggers() {
        use k8s_openapi::api::core::v1::{ResourceQuotaSpec, ResourceQuotaStatus};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let hard = |n: &str| Some([("pods".to_string(), Quantity(n.into()))].into());
        let mut q = ResourceQuota {
            spec: Some(ResourceQuotaSpec {
                hard: hard("2"),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(hard_changed(&q), "new quota without status");
        q.status = Some(ResourceQuotaStatus {
            hard: hard("2"),
            used: hard("1"),
        });
        assert!(!hard_changed(&q), "a usage change is not a trigger");
        q.spec = Some(ResourceQuotaSpec {
            hard: hard("3"),
            ..Default::default()
        });
        assert!(hard_changed(&q));
    }

    #[test]
    fn counts_of_other_kinds_are_listed_by_discovery() {
        let q = quota(
            json!({"count/deployments.apps": "1", "count/pods": "3", "count/widgets": "2", "pods": "1"}),
            json!({}),
        );
        let extra = extra_counted(&[q]);
        let want: BTreeSet<(String, String)> = [
            ("apps".to_string(), "deployments".to_string()),
            (String::new(), "widgets".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(extra, want);
    }
}
