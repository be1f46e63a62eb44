//! The ReplicaSet controller (upstream's `pkg/controller/replicaset`), which also drives
//! ReplicationControllers through the [`ReplicaOwner`] adapter, as upstream does: keeps
//! `spec.replicas` active pods per owner (creating pods from the template in slow-start
//! batches, deleting the least valuable pods first), adopts matching orphans, releases
//! pods that stopped matching, and reports `status` (replicas, fullyLabeledReplicas,
//! readyReplicas, availableReplicas, observedGeneration, the ReplicaFailure condition).
//!
//! One pod watch feeds both controllers (a shared reflector store); expectations keep a
//! controller from acting twice on a cache that has not yet seen its own writes.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{
    Pod, PodTemplateSpec, ReplicationController, ReplicationControllerCondition,
    ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use rk3s_runtime::events::{EventRecorder, EventType};
use serde::de::DeserializeOwned;
use serde::Serialize;

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::expectations::{Expectations, MetaOf};
use crate::informers::Index;
use crate::podutil;
use crate::ControllerError;

/// Most pods created or deleted by one sync (upstream's `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// One condition of a ReplicaSet or ReplicationController status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaCondition {
    /// Condition type (`ReplicaFailure`).
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    pub reason: Option<String>,
    /// Human-readable message.
    pub message: Option<String>,
    /// Last time the status changed.
    pub last_transition_time: Option<Time>,
}

/// The status fields shared by ReplicaSets and ReplicationControllers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaStatus {
    /// Active pods.
    pub replicas: i32,
    /// Active pods whose labels match the template's labels.
    pub fully_labeled_replicas: i32,
    /// Active pods that are ready.
    pub ready_replicas: i32,
    /// Active pods ready for at least minReadySeconds.
    pub available_replicas: i32,
    /// The generation last acted on.
    pub observed_generation: Option<i64>,
    /// Conditions.
    pub conditions: Vec<ReplicaCondition>,
}

/// A kind that owns a number of identical pods: ReplicaSet or ReplicationController.
pub trait ReplicaOwner:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// `apiVersion` for owner references.
    const API_VERSION: &'static str;
    /// `kind` for owner references.
    const KIND: &'static str;
    /// Event reporter name (upstream's controller name).
    const REPORTER: &'static str;
    /// `spec.replicas` (default 1).
    fn desired(&self) -> i32;
    /// The pod selector (None selects nothing).
    fn label_selector(&self) -> Option<LabelSelector>;
    /// The pod template.
    fn pod_template(&self) -> Option<&PodTemplateSpec>;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i32;
    /// The current status.
    fn replica_status(&self) -> ReplicaStatus;
    /// Sets the status.
    fn set_replica_status(&mut self, s: &ReplicaStatus);
}

impl ReplicaOwner for ReplicaSet {
    const API_VERSION: &'static str = "apps/v1";
    const KIND: &'static str = "ReplicaSet";
    const REPORTER: &'static str = "replicaset-controller";
    fn desired(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn label_selector(&self) -> Option<LabelSelector> {
        self.spec.as_ref().map(|s| s.selector.clone())
    }
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn replica_status(&self) -> ReplicaStatus {
        let Some(s) = &self.status else {
            return ReplicaStatus::default();
        };
        ReplicaStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
            ready_replicas: s.ready_replicas.unwrap_or(0),
            available_replicas: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation,
            conditions: s
                .conditions
                .iter()
                .flatten()
                .map(|c| ReplicaCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: c.last_transition_time.clone(),
                })
                .collect(),
        }
    }
    fn set_replica_status(&mut self, s: &ReplicaStatus) {
        let old = self.status.take().unwrap_or_default();
        self.status = Some(ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: Some(s.fully_labeled_replicas),
            ready_replicas: Some(s.ready_replicas),
            available_replicas: Some(s.available_replicas),
            observed_generation: s.observed_generation,
            conditions: (!s.conditions.is_empty()).then(|| {
                s.conditions
                    .iter()
                    .map(|c| ReplicaSetCondition {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
            ..old
        });
    }
}

impl ReplicaOwner for ReplicationController {
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "ReplicationController";
    const REPORTER: &'static str = "replication-controller";
    fn desired(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn label_selector(&self) -> Option<LabelSelector> {
        let spec = self.spec.as_ref()?;
        // An RC without a selector selects its template's labels (API defaulting).
        let labels = spec
            .selector
            .clone()
            .or_else(|| spec.template.as_ref()?.metadata.as_ref()?.labels.clone())?;
        if labels.is_empty() {
            return None;
        }
        Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        })
    }
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn replica_status(&self) -> ReplicaStatus {
        let Some(s) = &self.status else {
            return ReplicaStatus::default();
        };
        ReplicaStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
            ready_replicas: s.ready_replicas.unwrap_or(0),
            available_replicas: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation,
            conditions: s
                .conditions
                .iter()
                .flatten()
                .map(|c| ReplicaCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: c.last_transition_time.clone(),
                })
                .collect(),
        }
    }
    fn set_replica_status(&mut self, s: &ReplicaStatus) {
        self.status = Some(ReplicationControllerStatus {
            replicas: s.replicas,
            fully_labeled_replicas: Some(s.fully_labeled_replicas),
            ready_replicas: Some(s.ready_replicas),
            available_replicas: Some(s.available_replicas),
            observed_generation: s.observed_generation,
            conditions: (!s.conditions.is_empty()).then(|| {
                s.conditions
                    .iter()
                    .map(|c| ReplicationControllerCondition {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
        });
    }
}

/// What one sync should do about the number of pods.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplicaDiff {
    /// Nothing.
    None,
    /// Create this many pods.
    Create(usize),
    /// Delete these pods (names), least valuable first.
    Delete(Vec<String>),
}

/// Decides how many pods to create or which to delete, given the active owned pods
/// (upstream's `manageReplicas`, capped at [`BURST_REPLICAS`]).
pub fn replica_diff(desired: i32, active: &[&Pod]) -> ReplicaDiff {
    let desired = desired.max(0) as usize;
    match active.len().cmp(&desired) {
        std::cmp::Ordering::Equal => ReplicaDiff::None,
        std::cmp::Ordering::Less => {
            ReplicaDiff::Create((desired - active.len()).min(BURST_REPLICAS))
        }
        std::cmp::Ordering::Greater => {
            let n = (active.len() - desired).min(BURST_REPLICAS);
            let mut sorted: Vec<&Pod> = active.to_vec();
            sorted.sort_by(|a, b| podutil::deletion_order(a, b));
            ReplicaDiff::Delete(sorted.into_iter().take(n).map(|p| p.name_any()).collect())
        }
    }
}

/// Slow-start batch sizes for creating `n` pods: 1, 2, 4, ... (upstream's
/// `slowStartBatch` with an initial batch of 1).
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = n;
    let mut size = 1;
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size *= 2;
    }
    out
}

/// Computes the status from the active owned pods (upstream's `calculateStatus`), keeping
/// or clearing the ReplicaFailure condition according to `failure` (reason, message).
pub fn calculate_status<K: ReplicaOwner>(
    owner: &K,
    active: &[&Pod],
    failure: Option<(&str, String)>,
    now: jiff::Timestamp,
) -> ReplicaStatus {
    let template_labels = owner
        .pod_template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = owner.min_ready_seconds();
    let mut st = owner.replica_status();
    st.replicas = active.len() as i32;
    st.fully_labeled_replicas = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count() as i32;
    st.ready_replicas = active.iter().filter(|p| podutil::is_pod_ready(p)).count() as i32;
    st.available_replicas = active
        .iter()
        .filter(|p| podutil::is_pod_available(p, min_ready, now))
        .count() as i32;
    st.observed_generation = owner.meta().generation;
    let existing = st
        .conditions
        .iter()
        .position(|c| c.type_ == "ReplicaFailure");
    match (failure, existing) {
        (Some((reason, message)), None) => st.conditions.push(ReplicaCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(Time(now)),
        }),
        (None, Some(i)) => {
            st.conditions.remove(i);
        }
        _ => {}
    }
    st
}

struct Ctx<K: ReplicaOwner> {
    client: kube::Client,
    pods: Store<Pod>,
    /// Pods by their controller's UID.
    by_owner: Arc<Index<Pod>>,
    /// Pods without a controller, by namespace.
    orphans: Arc<Index<Pod>>,
    recorder: EventRecorder,
    expectations: Expectations,
    _k: std::marker::PhantomData<K>,
}

impl<K: ReplicaOwner> Ctx<K> {
    /// Whether earlier creates/deletes of this owner are all visible in the pod cache.
    fn satisfied(&self, key: &str, ns: &str) -> bool {
        self.expectations.satisfied(key, |name| {
            self.pods.get(&ObjectRef::new(name).within(ns)).map(MetaOf)
        })
    }

    async fn event(&self, owner: &K, type_: EventType, reason: &str, action: &str, note: String) {
        // Distinct messages stay distinct events (see `rk3s_runtime::events::event`).
        let _ = action;
        let warning = type_ == EventType::Warning;
        self.recorder
            .record(&owner.object_ref(&()), warning, reason, note)
            .await;
    }
}

/// Pods in `ns` this owner controls or may adopt, adopting and releasing as upstream's
/// `ClaimPods`. Returns the pods it owns afterwards.
async fn claim_pods<K: ReplicaOwner>(
    ctx: &Ctx<K>,
    owner: &K,
    sel: &LabelSelector,
    ns: &str,
) -> Result<Vec<Arc<Pod>>, ControllerError> {
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    // Only our own pods and the namespace's orphans can be ours (no scan of every pod).
    let candidates = ctx
        .by_owner
        .get(&uid)
        .into_iter()
        .chain(ctx.orphans.get(ns))
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns));
    podutil::PodClaimer {
        owner: owner.meta(),
        api_version: K::API_VERSION,
        kind: K::KIND,
        selector: sel,
        finalizers: &[],
        may_change: true,
    }
    .claim(&api, candidates)
    .await
}

async fn reconcile<K: ReplicaOwner>(
    owner: Arc<K>,
    ctx: Arc<Ctx<K>>,
) -> Result<Action, ControllerError> {
    let ns = owner.namespace().unwrap_or_default();
    let name = owner.name_any();
    let key = format!("{ns}/{name}");
    let Some(sel) = owner.label_selector() else {
        return Ok(Action::await_change());
    };
    let owned = claim_pods(&*ctx, &*owner, &sel, &ns).await?;
    let active: Vec<&Pod> = owned
        .iter()
        .map(|p| &**p)
        .filter(|p| podutil::is_pod_active(p))
        .collect();

    let mut failure: Option<(&str, String)> = None;
    let mut manage_err: Option<ControllerError> = None;
    if owner.meta().deletion_timestamp.is_none() && ctx.satisfied(&key, &ns) {
        match replica_diff(owner.desired(), &active) {
            ReplicaDiff::None => {}
            ReplicaDiff::Create(n) => {
                if let Some(template) = owner.pod_template() {
                    let cref = podutil::controller_ref(owner.meta(), K::API_VERSION, K::KIND);
                    let pod = podutil::pod_from_template(template, &ns, &cref);
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                    let pp = PostParams::default();
                    'batches: for b in slow_start_batches(n) {
                        let results =
                            futures_util::future::join_all((0..b).map(|_| api.create(&pp, &pod)))
                                .await;
                        let mut created = Vec::new();
                        let mut events = Vec::new();
                        for r in results {
                            match r {
                                Ok(p) => {
                                    let pname = p.name_any();
                                    created.push((
                                        pname.clone(),
                                        p.metadata.uid.clone().unwrap_or_default(),
                                    ));
                                    events.push((
                                        EventType::Normal,
                                        "SuccessfulCreate",
                                        format!("Created pod: {pname}"),
                                    ));
                                }
                                Err(e) => {
                                    let msg = match &e {
                                        kube::Error::Api(s) => s.message.clone(),
                                        other => other.to_string(),
                                    };
                                    events.push((
                                        EventType::Warning,
                                        "FailedCreate",
                                        format!("Error creating: {msg}"),
                                    ));
                                    failure = Some(("FailedCreate", msg));
                                    manage_err = Some(e.into());
                                }
                            }
                        }
                        ctx.expectations.expect_creations(&key, created);
                        // The batch's events are recorded concurrently, like its creates.
                        futures_util::future::join_all(
                            events.into_iter().map(|(t, reason, note)| {
                                ctx.event(&owner, t, reason, "Create", note)
                            }),
                        )
                        .await;
                        if manage_err.is_some() {
                            break 'batches;
                        }
                    }
                }
            }
            ReplicaDiff::Delete(names) => {
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                let mut deleted = Vec::new();
                for pname in names {
                    let uid = active
                        .iter()
                        .find(|p| p.name_any() == pname)
                        .and_then(|p| p.metadata.uid.clone())
                        .unwrap_or_default();
                    match api.delete(&pname, &DeleteParams::default()).await {
                        Ok(_) => {
                            deleted.push((pname.clone(), uid));
                            ctx.event(
                                &owner,
                                EventType::Normal,
                                "SuccessfulDelete",
                                "Delete",
                                format!("Deleted pod: {pname}"),
                            )
                            .await;
                        }
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => {
                            let msg = e.to_string();
                            ctx.event(
                                &owner,
                                EventType::Warning,
                                "FailedDelete",
                                "Delete",
                                format!("Error deleting: {msg}"),
                            )
                            .await;
                            failure = Some(("FailedDelete", msg));
                            manage_err = Some(e.into());
                        }
                    }
                }
                ctx.expectations.expect_deletions(&key, deleted);
            }
        }
    }

    let now = jiff::Timestamp::now();
    let status = calculate_status(&*owner, &active, failure, now);
    if status != owner.replica_status() {
        update_status(&ctx.client, &*owner, &status).await?;
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    // Pods ready but not yet available: look again once minReadySeconds have passed.
    let min_ready = owner.min_ready_seconds();
    let wait = active
        .iter()
        .filter_map(|p| podutil::seconds_until_available(p, min_ready, now))
        .min();
    Ok(match wait {
        Some(s) => Action::requeue(Duration::from_secs(s.max(1) as u64)),
        None => Action::await_change(),
    })
}

async fn update_status<K: ReplicaOwner>(
    client: &kube::Client,
    owner: &K,
    status: &ReplicaStatus,
) -> Result<(), ControllerError> {
    let api: Api<K> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    let mut obj = owner.clone();
    for attempt in 0..3 {
        obj.set_replica_status(status);
        match api
            .replace_status(&obj.name_any(), &PostParams::default(), &obj)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 2 => {
                let fresh = api.get(&obj.name_any()).await?;
                if fresh.meta().uid != owner.meta().uid {
                    return Ok(());
                }
                obj = fresh;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Owners of `K` a pod event concerns: its controller (when of kind `K`), or for an
/// orphan, every owner in its namespace whose selector matches it.
fn owners_of_pod<K: ReplicaOwner>(pod: &Pod, owners: &Store<K>) -> Vec<ObjectRef<K>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    match podutil::controller_of(&pod.metadata) {
        Some(r) if r.kind == K::KIND && r.api_version == K::API_VERSION => {
            vec![ObjectRef::new(&r.name).within(&ns)]
        }
        Some(_) => Vec::new(),
        None => {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            owners
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(ns.as_str()))
                .filter(|o| {
                    o.label_selector().is_some_and(|s| {
                        !podutil::selector_is_empty(&s) && podutil::selector_matches(&s, &labels)
                    })
                })
                .map(|o| ObjectRef::from_obj(&**o))
                .collect()
        }
    }
}

type Queue<K> = WorkQueue<ObjectRef<K>>;

fn run_applier<K: ReplicaOwner>(
    client: kube::Client,
    pods: (Store<Pod>, Arc<Index<Pod>>, Arc<Index<Pod>>),
    store: Store<K>,
    queue: Queue<K>,
    changes: impl Stream<Item = Arc<K>> + Send + 'static,
    expectations: Expectations,
) -> impl std::future::Future<Output = ()> + Send {
    // Each changed owner, and every owner once at start (the subscription only carries
    // later changes); pod changes are queued by `run` on clones of `queue`.
    let triggers = vec![Trigger::for_each(changes), Trigger::all_in(&store)];
    let (pods, by_owner, orphans) = pods;
    let ctx = Arc::new(Ctx::<K> {
        recorder: EventRecorder::new(client.clone(), K::REPORTER),
        client,
        pods,
        by_owner,
        orphans,
        expectations,
        _k: std::marker::PhantomData,
    });
    run_controller(
        K::REPORTER,
        4,
        queue,
        triggers,
        for_objects(store, ctx, reconcile::<K>),
    )
}

/// Runs the ReplicaSet and ReplicationController controllers (on the shared pod
/// informer) until the watches end.
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe first: no change between the first list and the subscription is missed.
    let pod_changes = informers.subscribe::<Pod>();
    let rs_changes = informers.subscribe::<ReplicaSet>();
    let rc_changes = informers.subscribe::<ReplicationController>();
    let pod_store = informers.store::<Pod>().await;
    let by_owner = informers
        .index::<Pod>(crate::informers::by_controller_uid)
        .await;
    let orphans = informers
        .index::<Pod>(crate::informers::orphans_by_namespace)
        .await;
    let rs_store = informers.store::<ReplicaSet>().await;
    let rc_store = informers.store::<ReplicationController>().await;
    let rs_tx: Queue<ReplicaSet> = WorkQueue::new();
    let rc_tx: Queue<ReplicationController> = WorkQueue::new();
    let (rs_rx, rc_rx) = (rs_tx.clone(), rc_tx.clone());

    let (rs_exp, rc_exp) = (Expectations::new(), Expectations::new());
    let pods_task = {
        let (rs_store, rc_store, rs_tx, rc_tx) = (
            rs_store.clone(),
            rc_store.clone(),
            rs_tx.clone(),
            rc_tx.clone(),
        );
        let (rs_exp, rc_exp, pod_store) = (rs_exp.clone(), rc_exp.clone(), pod_store.clone());
        async move {
            futures_util::pin_mut!(pod_changes);
            while let Some(p) = pod_changes.next().await {
                // A deleted pod (no longer cached) settles what its owner expected of it.
                if pod_store.get(&ObjectRef::from_obj(&*p)).is_none() {
                    if let (Some(r), Some(uid)) = (
                        podutil::controller_of(&p.metadata),
                        p.metadata.uid.as_deref(),
                    ) {
                        let key = format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or_default(),
                            r.name
                        );
                        match r.kind.as_str() {
                            "ReplicaSet" => rs_exp.observe_gone(&key, uid),
                            "ReplicationController" => rc_exp.observe_gone(&key, uid),
                            _ => {}
                        }
                    }
                }
                for r in owners_of_pod::<ReplicaSet>(&p, &rs_store) {
                    rs_tx.add(r);
                }
                for r in owners_of_pod::<ReplicationController>(&p, &rc_store) {
                    rc_tx.add(r);
                }
            }
        }
    };
    let pods = (pod_store, by_owner, orphans);
    tokio::join!(
        pods_task,
        run_applier::<ReplicaSet>(
            client.clone(),
            pods.clone(),
            rs_store,
            rs_rx,
            rs_changes,
            rs_exp
        ),
        run_applier::<ReplicationController>(
            client.clone(),
            pods,
            rc_store,
            rc_rx,
            rc_changes,
            rc_exp
        ),
    );
    Ok(())
}

/// Labels helper for tests and other controllers: a `BTreeMap` from pairs.
pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, ReplicationControllerSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::{reflector, watcher};

    fn pod(name: &str, phase: &str, ready: bool, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(
                        jiff::Timestamp::from_second(100).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                    )),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn rs(replicas: i32, min_ready: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("default".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: Some(min_ready),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&[("app", "web"), ("v", "1")])),
                        ..Default::default()
                    }),
                    spec: None,
                }),
            }),
            status: None,
        }
    }

    #[test]
    fn diff_creates_and_deletes_least_valuable() {
        let a = pod("a", "Running", true, Some("n"));
        let b = pod("b", "Pending", false, None);
        let c = pod("c", "Running", false, Some("n"));
        assert_eq!(replica_diff(5, &[&a, &b]), ReplicaDiff::Create(3));
        assert_eq!(replica_diff(2, &[&a, &b]), ReplicaDiff::None);
        assert_eq!(
            replica_diff(1, &[&a, &b, &c]),
            ReplicaDiff::Delete(vec!["b".into(), "c".into()])
        );
        assert_eq!(
            replica_diff(10_000, &[]),
            ReplicaDiff::Create(BURST_REPLICAS)
        );
    }

    #[test]
    fn batches_grow_exponentially() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
    }

    #[test]
    fn status_counts_ready_available_and_labels() {
        let now = jiff::Timestamp::from_second(105).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let a = pod("a", "Running", true, Some("n"));
        let b = pod("b", "Running", false, Some("n"));
        let r = rs(2, 10);
        let st = calculate_status(&r, &[&a, &b], None, now);
        assert_eq!(
            (
                st.replicas,
                st.ready_replicas,
                st.available_replicas,
                st.fully_labeled_replicas
            ),
            (2, 1, 0, 0)
        );
        assert_eq!(st.observed_generation, Some(3));
        let st = calculate_status(
            &rs(2, 0),
            &[&a, &b],
            Some(("FailedCreate", "quota".into())),
            now,
        );
        assert_eq!(st.available_replicas, 1);
        assert_eq!(st.conditions.len(), 1);
        assert_eq!(st.conditions[0].reason.as_deref(), Some("FailedCreate"));
        let mut r2 = rs(2, 0);
        r2.set_replica_status(&st);
        let cleared = calculate_status(&r2, &[&a, &b], None, now);
        assert!(cleared.conditions.is_empty());
    }

    #[test]
    fn rc_selector_defaults_to_template_labels() {
        let rc = ReplicationController {
            metadata: ObjectMeta::default(),
            spec: Some(ReplicationControllerSpec {
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&[("app", "x")])),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: None,
        };
        assert_eq!(
            rc.label_selector().and_then(|s| s.match_labels),
            Some(labels(&[("app", "x")]))
        );
        assert_eq!(rc.desired(), 1);
    }

    #[test]
    fn orphan_pods_map_to_matching_owners() {
        let p = pod("a", "Running", true, None);
        let (store, mut writer) = reflector::store::<ReplicaSet>();
        let r = rs(1, 0);
        writer.apply_watcher_event(&watcher::Event::Apply(r));
        let mut p2 = p.clone();
        p2.metadata.namespace = Some("default".into());
        assert_eq!(owners_of_pod(&p2, &store).len(), 1);
        p2.metadata.namespace = Some("other".into());
        assert!(owners_of_pod(&p2, &store).is_empty());
    }
}
