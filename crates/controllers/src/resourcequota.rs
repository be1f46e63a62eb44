//! The resource quota controller (upstream's `pkg/controller/resourcequota`): keeps
//! every ResourceQuota's `status.hard` (a copy of `spec.hard`) and `status.used` (the
//! usage of the namespace's objects, [`rk3s_admission::quota::compute_used`]) true.
//!
//! A namespace is recomputed when one of its quotas changes, when an object of a kind
//! the quota evaluators track (pods, services, persistentvolumeclaims, configmaps,
//! secrets, replicationcontrollers) or of a workload kind the controller manager watches
//! anyway ([`WATCHED_COUNTS`]: ReplicaSets, Deployments, StatefulSets, DaemonSets, Jobs,
//! CronJobs) is deleted or changes in a way that releases usage there ([`Replenishment`],
//! upstream's replenishment: creations are charged by admission), every [`COUNT_PERIOD`] when one of its quotas
//! counts another kind (`count/<resource>.<group>`: usage released soon after a delete,
//! as upstream's replenishment), and every [`RESYNC_PERIOD`].
//! The API server's ResourceQuota admission still charges usage at write time; this
//! controller is what releases it after deletes and repairs any drift.
//!
//! Invariant: it writes only ResourceQuota status, and only when it differs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
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

/// How often a namespace is recomputed whose quotas count a kind no trigger follows.
pub const COUNT_PERIOD: Duration = Duration::from_secs(10);

/// The `(group, plural)` of the kinds besides [`CORE`] whose changes queue their
/// namespace (the workload kinds the controller manager's informers hold anyway).
pub const WATCHED_COUNTS: [(&str, &str); 6] = [
    ("apps", "replicasets"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
];

/// Whether some quota in `quotas` counts a kind that no trigger follows.
pub fn counts_unwatched(quotas: &[Value]) -> bool {
    extra_counted(quotas)
        .iter()
        .any(|(g, p)| !WATCHED_COUNTS.contains(&(g.as_str(), p.as_str())))
}

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

/// What of an object can release quota usage when it changes (upstream's replenishment
/// update filter): a pod's phase (terminal pods count no compute), a Service's type, a
/// claim's requested storage; nothing for other kinds (only their deletion does).
pub trait UsageClass {
    /// The value whose change may release usage.
    fn usage_class(&self) -> String {
        String::new()
    }
}

impl UsageClass for Pod {
    fn usage_class(&self) -> String {
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Succeeded" | "Failed")).to_string()
    }
}

impl UsageClass for Service {
    fn usage_class(&self) -> String {
        self.spec
            .as_ref()
            .and_then(|s| s.type_.clone())
            .unwrap_or_default()
    }
}

impl UsageClass for PersistentVolumeClaim {
    fn usage_class(&self) -> String {
        self.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default()
    }
}

impl UsageClass for ConfigMap {}
impl UsageClass for Secret {}
impl UsageClass for ReplicationController {}
impl UsageClass for ReplicaSet {}
impl UsageClass for Deployment {}
impl UsageClass for StatefulSet {}
impl UsageClass for DaemonSet {}
impl UsageClass for Job {}
impl UsageClass for CronJob {}

/// Decides which changes of one kind queue their namespace: a deletion, or an update
/// that changes the object's [`UsageClass`]. Creations and other updates do not (as
/// upstream: usage is charged by admission, and recomputing on every write would undo
/// the charges of objects admitted but not stored yet).
#[derive(Default)]
pub struct Replenishment {
    seen: std::collections::HashMap<String, String>,
}

impl Replenishment {
    /// Whether this change may have released usage.
    pub fn releases<K: kube::Resource + UsageClass>(&mut self, change: &Change<K>) -> bool {
        match change {
            Change::Applied(o) => {
                let Some(uid) = o.meta().uid.clone() else {
                    return false;
                };
                let class = o.usage_class();
                self.seen
                    .insert(uid, class.clone())
                    .is_some_and(|old| old != class)
            }
            Change::Deleted(o) => {
                if let Some(uid) = &o.meta().uid {
                    self.seen.remove(uid);
                }
                true
            }
            Change::Resync(all) => {
                self.seen = all
                    .iter()
                    .filter_map(|o| Some((o.meta().uid.clone()?, o.usage_class())))
                    .collect();
                false
            }
        }
    }
}

/// A trigger queuing the namespace (when a quota exists there) of every object of `K`
/// whose change may release usage ([`Replenishment`]).
fn namespace_of<K: InformerResource + UsageClass>(
    informers: &crate::informers::SharedInformers,
    quotas: Store<ResourceQuota>,
) -> Trigger<String> {
    let mut replenishment = Replenishment::default();
    Trigger::on_change::<K, _, _>(informers, move |c: &Change<K>| {
        let ns = match c {
            Change::Applied(o) | Change::Deleted(o) => o.meta().namespace.clone(),
            Change::Resync(_) => None,
        };
        let releases = replenishment.releases(c);
        ns.filter(|ns| {
            releases
                && quotas
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
    let counting = {
        let quotas = quotas.clone();
        move |_: ()| -> Vec<String> {
            let mut by_ns: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
            for q in quotas.state().iter() {
                if let (Some(ns), Ok(v)) = (q.namespace(), serde_json::to_value(&**q)) {
                    by_ns.entry(ns).or_default().push(v);
                }
            }
            by_ns
                .into_iter()
                .filter(|(_, qs)| counts_unwatched(qs))
                .map(|(ns, _)| ns)
                .collect()
        }
    };
    let count_ticks = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(COUNT_PERIOD).await;
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
        namespace_of::<ReplicaSet>(&informers, quotas.clone()),
        namespace_of::<Deployment>(&informers, quotas.clone()),
        namespace_of::<StatefulSet>(&informers, quotas.clone()),
        namespace_of::<DaemonSet>(&informers, quotas.clone()),
        namespace_of::<Job>(&informers, quotas.clone()),
        namespace_of::<CronJob>(&informers, quotas.clone()),
        Trigger::map(count_ticks, counting),
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
    fn only_deletions_and_releasing_updates_replenish() {
        use k8s_openapi::api::core::v1::{PodStatus, ServiceSpec};
        let mut r = Replenishment::default();
        let mut p = Pod::default();
        p.metadata.uid = Some("p".into());
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        assert!(
            !r.releases(&Change::Applied(Arc::new(p.clone()))),
            "a create"
        );
        assert!(
            !r.releases(&Change::Applied(Arc::new(p.clone()))),
            "no change"
        );
        p.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(
            r.releases(&Change::Applied(Arc::new(p.clone()))),
            "terminal"
        );
        assert!(r.releases(&Change::Deleted(Arc::new(p))));
        let mut s = Service::default();
        s.metadata.uid = Some("s".into());
        s.spec = Some(ServiceSpec {
            type_: Some("NodePort".into()),
            ..Default::default()
        });
        assert!(!r.releases(&Change::Applied(Arc::new(s.clone()))));
        s.spec = Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ..Default::default()
        });
        assert!(r.releases(&Change::Applied(Arc::new(s))), "type changed");
        let mut rs = ReplicaSet::default();
        rs.metadata.uid = Some("rs".into());
        assert!(!r.releases(&Change::Applied(Arc::new(rs.clone()))));
        rs.metadata.generation = Some(2);
        assert!(
            !r.releases(&Change::Applied(Arc::new(rs))),
            "a status or spec update"
        );
    }

    #[test]
    fn only_counts_of_unwatched_kinds_need_the_short_period() {
        let q = |hard: Value| quota(hard, json!({}));
        assert!(!counts_unwatched(&[q(
            json!({"pods": "1", "count/secrets": "1"})
        )]));
        assert!(!counts_unwatched(&[q(
            json!({"count/replicasets.apps": "1", "count/jobs.batch": "1"})
        )]));
        assert!(counts_unwatched(&[
            q(json!({"pods": "1"})),
            q(json!({"count/leases.coordination.k8s.io": "1"}))
        ]));
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
