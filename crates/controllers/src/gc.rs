//! The garbage collector (upstream's `pkg/controller/garbagecollector`): a graph of
//! `ownerReferences` over the metadata of every listable, watchable, deletable resource
//! (found by discovery, re-discovered every 30 s so CRDs join), fed by metadata-only
//! watches. Objects whose owners are all gone are deleted (background by default);
//! owners deleted with `propagationPolicy: Foreground` keep the `foregroundDeletion`
//! finalizer until their blocking dependents are gone; owners deleted with `Orphan` keep
//! the `orphan` finalizer until their dependents no longer reference them. The API server
//! adds those finalizers on DELETE; this controller removes them. An ownerReference cycle
//! under foreground deletion resolves as upstream's: a dependent whose owner waits for its
//! dependents and that has a dependent waiting for its own dependents first makes its
//! blocking references non-blocking, then is deleted in the foreground.
//!
//! Resources the other controllers already watch through [`SharedInformers`] (pods,
//! ReplicaSets, Jobs, ControllerRevisions, ... see [`shared_resource`]) feed the graph from
//! those informers, so each resource is watched once by the whole controller manager;
//! the rest get a metadata-only watch of their own, as upstream's metadata informers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node as KubeNode, PersistentVolume, PersistentVolumeClaim,
    Pod, ReplicationController, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::core::{ApiResource, GroupVersion};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use rk3s_runtime::{run_controller, Action, WorkQueue};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::informers::{Change, InformerResource, SharedInformers};
use crate::ControllerError;

/// Finalizer of owners deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer of owners deleted with `propagationPolicy: Orphan`.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// What an owner reference points at, as the collector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not waiting for its dependents.
    Solid,
    /// The owner no longer exists (or has another uid).
    Dangling,
    /// The owner is being deleted in the foreground (waits for its dependents).
    Waiting,
}

/// What to do with an object that has owner references.
#[derive(Clone, Debug, PartialEq)]
pub enum DependentAction {
    /// Keep it.
    Keep,
    /// Keep it, dropping the owner references with these uids.
    RemoveOwners(Vec<String>),
    /// Delete it with this propagation policy.
    Delete(PropagationPolicy),
    /// Make its blocking owner references non-blocking, then delete it in the foreground:
    /// an owner and one of its own dependents are both waiting for their dependents, so
    /// they may wait on each other in a cycle (upstream's cycle breaking).
    UnblockThenDeleteForeground,
}

/// Upstream's `attemptToDeleteItem` decision for an object given the state of each of
/// its owners, whether it has dependents itself (and whether one of them is itself
/// waiting for its dependents, `dependent_waiting`), and its finalizers.
pub fn decide_dependent(
    owners: &[(OwnerReference, OwnerState)],
    has_dependents: bool,
    dependent_waiting: bool,
    finalizers: &[String],
) -> DependentAction {
    if owners.is_empty() {
        return DependentAction::Keep;
    }
    let uids = |s: OwnerState| {
        owners
            .iter()
            .filter(|(_, st)| *st == s)
            .map(|(r, _)| r.uid.clone())
            .collect::<Vec<_>>()
    };
    let (solid, dangling, waiting) = (
        uids(OwnerState::Solid),
        uids(OwnerState::Dangling),
        uids(OwnerState::Waiting),
    );
    if !solid.is_empty() {
        if dangling.is_empty() && waiting.is_empty() {
            return DependentAction::Keep;
        }
        let mut remove = dangling;
        remove.extend(waiting);
        return DependentAction::RemoveOwners(remove);
    }
    if !waiting.is_empty() && has_dependents {
        if dependent_waiting {
            return DependentAction::UnblockThenDeleteForeground;
        }
        return DependentAction::Delete(PropagationPolicy::Foreground);
    }
    let policy = if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
        PropagationPolicy::Orphan
    } else if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    DependentAction::Delete(policy)
}

/// What to do with an owner that is being deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerAction {
    /// Nothing (not a GC finalizer case).
    None,
    /// Drop references to it from its dependents, then remove the `orphan` finalizer.
    Orphan,
    /// Remove the `foregroundDeletion` finalizer (no blocking dependents left).
    RemoveForeground,
    /// Delete its blocking dependents first.
    DeleteDependents,
}

/// The decision for an object with a deletionTimestamp: orphan first, then foreground.
pub fn decide_deleting_owner(
    deleting: bool,
    finalizers: &[String],
    blocking_dependents: usize,
) -> OwnerAction {
    if !deleting {
        return OwnerAction::None;
    }
    if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
        return OwnerAction::Orphan;
    }
    if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
        return if blocking_dependents == 0 {
            OwnerAction::RemoveForeground
        } else {
            OwnerAction::DeleteDependents
        };
    }
    OwnerAction::None
}

#[derive(Clone, Debug)]
struct Node {
    res: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER)
    }
}

#[derive(Default)]
struct Graph {
    resources: Vec<(ApiResource, bool)>,
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    fn resource_for(&self, api_version: &str, kind: &str) -> Option<usize> {
        let gv: GroupVersion = api_version.parse().ok()?;
        self.resources
            .iter()
            .position(|(ar, _)| ar.group == gv.group && ar.kind == kind)
    }

    /// Inserts or updates a node; returns uids to look at.
    fn upsert(&mut self, uid: String, node: Node) -> Vec<String> {
        let mut out = Vec::new();
        let old = self.nodes.insert(uid.clone(), node.clone());
        let changed = old.as_ref().is_none_or(|o| {
            o.owners != node.owners
                || o.deleting != node.deleting
                || o.finalizers != node.finalizers
        });
        if let Some(o) = &old {
            for r in &o.owners {
                if let Some(s) = self.dependents.get_mut(&r.uid) {
                    s.remove(&uid);
                }
                // A blocking reference removed or made non-blocking: an owner waiting
                // for its dependents may be free now (upstream's
                // addUnblockedOwnersToDeleteQueue).
                let still_blocks = node
                    .owners
                    .iter()
                    .any(|n| n.uid == r.uid && n.block_owner_deletion == Some(true));
                if r.block_owner_deletion == Some(true)
                    && !still_blocks
                    && self
                        .nodes
                        .get(&r.uid)
                        .is_some_and(|n| n.deleting_dependents())
                {
                    out.push(r.uid.clone());
                }
            }
        }
        for r in &node.owners {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        if changed {
            if !node.owners.is_empty() || node.deleting {
                out.push(uid.clone());
            }
            if node.deleting_dependents() {
                out.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
            }
        }
        out
    }

    /// Removes the nodes of resource `res` whose uids `keep` lacks (gone while not
    /// watched); returns the uids to look at.
    fn forget_missing(&mut self, res: usize, keep: &HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(u, n)| n.res == res && !keep.contains(*u))
            .map(|(u, _)| u.clone())
            .collect();
        gone.iter().flat_map(|u| self.remove(u)).collect()
    }

    /// Removes a node; returns its dependents and any owners waiting for it.
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if let Some(n) = self.nodes.remove(uid) {
            for r in &n.owners {
                if let Some(s) = self.dependents.get_mut(&r.uid) {
                    s.remove(uid);
                }
                if self
                    .nodes
                    .get(&r.uid)
                    .is_some_and(|o| o.deleting_dependents())
                {
                    out.push(r.uid.clone());
                }
            }
        }
        if self.dependents.get(uid).is_some_and(|s| s.is_empty()) {
            self.dependents.remove(uid);
        }
        out
    }
}

struct Gc {
    client: kube::Client,
    graph: Mutex<Graph>,
    queue: WorkQueue<String>,
}

fn api_for(
    client: &kube::Client,
    ar: &ApiResource,
    namespaced: bool,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        _ => Api::all_with(client.clone(), ar),
    }
}

fn err(e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Watch(e.to_string())
}

impl Gc {
    /// An object of resource `idx` was added or changed.
    fn apply(&self, idx: usize, meta: &ObjectMeta) {
        let Some((uid, node)) = node_of(idx, meta) else {
            return;
        };
        let todo = match self.graph.lock() {
            Ok(mut g) => g.upsert(uid, node),
            Err(_) => return,
        };
        for u in todo {
            self.enqueue(u);
        }
    }

    /// An object was deleted.
    fn delete(&self, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.as_deref() else {
            return;
        };
        let todo = match self.graph.lock() {
            Ok(mut g) => g.remove(uid),
            Err(_) => return,
        };
        for u in todo {
            self.enqueue(u);
        }
    }

    /// A complete list of resource `idx`: applies every object and forgets the objects
    /// of that resource that are no longer there.
    fn resync<'a>(&self, idx: usize, objects: impl Iterator<Item = &'a ObjectMeta>) {
        let mut keep = HashSet::new();
        for m in objects {
            if let Some(uid) = m.uid.clone() {
                keep.insert(uid);
            }
            self.apply(idx, m);
        }
        let todo = match self.graph.lock() {
            Ok(mut g) => g.forget_missing(idx, &keep),
            Err(_) => return,
        };
        for u in todo {
            self.enqueue(u);
        }
    }

    fn enqueue(&self, uid: String) {
        self.queue.add(uid);
    }

    fn node(&self, uid: &str) -> Option<(Node, ApiResource, bool)> {
        let g = self.graph.lock().ok()?;
        let n = g.nodes.get(uid)?.clone();
        let (ar, namespaced) = g.resources.get(n.res)?.clone();
        Some((n, ar, namespaced))
    }

    /// The state of one owner, confirmed with the API server when absent from the graph.
    async fn owner_state(
        &self,
        r: &OwnerReference,
        ns: Option<&str>,
    ) -> Result<OwnerState, ControllerError> {
        let known = self
            .graph
            .lock()
            .ok()
            .and_then(|g| g.nodes.get(&r.uid).cloned());
        if let Some(o) = known {
            return Ok(if o.deleting_dependents() {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            });
        }
        let res = self.graph.lock().ok().and_then(|g| {
            g.resource_for(&r.api_version, &r.kind)
                .and_then(|i| g.resources.get(i).cloned())
        });
        let Some((ar, namespaced)) = res else {
            // An unknown kind: never collect on a guess.
            return Ok(OwnerState::Solid);
        };
        let api = api_for(&self.client, &ar, namespaced, ns);
        match api.get_metadata_opt(&r.name).await? {
            Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let fin = o.metadata.finalizers.clone().unwrap_or_default();
                Ok(
                    if o.metadata.deletion_timestamp.is_some()
                        && fin.iter().any(|f| f == FOREGROUND_FINALIZER)
                    {
                        OwnerState::Waiting
                    } else {
                        OwnerState::Solid
                    },
                )
            }
            _ => Ok(OwnerState::Dangling),
        }
    }

    /// Rewrites a list field of an object's metadata with a read-modify-write PUT
    /// (optimistic concurrency on resourceVersion; a conflict is retried by the queue).
    async fn patch_meta_list(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        path: &str,
        edit: impl Fn(&ObjectMeta) -> Option<serde_json::Value>,
    ) -> Result<(), ControllerError> {
        let Some(mut cur) = api.get_opt(name).await? else {
            return Ok(());
        };
        let Some(value) = edit(&cur.metadata) else {
            return Ok(());
        };
        match path {
            "/metadata/finalizers" => {
                cur.metadata.finalizers = serde_json::from_value(value).map_err(err)?
            }
            _ => cur.metadata.owner_references = serde_json::from_value(value).map_err(err)?,
        }
        match api.replace(name, &PostParams::default(), &cur).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_finalizer(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        uid: &str,
        finalizer: &str,
    ) -> Result<(), ControllerError> {
        self.patch_meta_list(api, name, "/metadata/finalizers", |m| {
            if m.uid.as_deref() != Some(uid) {
                return None;
            }
            let f = m.finalizers.clone().unwrap_or_default();
            f.iter().any(|x| x == finalizer).then(|| {
                serde_json::json!(f.iter().filter(|x| *x != finalizer).collect::<Vec<_>>())
            })
        })
        .await
    }

    async fn remove_owner_refs(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        uid: &str,
        owners: &[String],
    ) -> Result<(), ControllerError> {
        self.patch_meta_list(api, name, "/metadata/ownerReferences", |m| {
            if m.uid.as_deref() != Some(uid) {
                return None;
            }
            let refs = m.owner_references.clone().unwrap_or_default();
            refs.iter().any(|r| owners.contains(&r.uid)).then(|| {
                serde_json::json!(refs
                    .iter()
                    .filter(|r| !owners.contains(&r.uid))
                    .collect::<Vec<_>>())
            })
        })
        .await
    }

    async fn process(&self, uid: &str) -> Result<(), ControllerError> {
        let Some((node, ar, namespaced)) = self.node(uid) else {
            return Ok(());
        };
        let api = api_for(&self.client, &ar, namespaced, node.namespace.as_deref());
        let dependents: Vec<String> = self
            .graph
            .lock()
            .ok()
            .and_then(|g| g.dependents.get(uid).cloned())
            .unwrap_or_default()
            .into_iter()
            .collect();
        if node.deleting {
            let blocking: Vec<String> = {
                let g = self.graph.lock().map_err(err)?;
                dependents
                    .iter()
                    .filter(|d| {
                        g.nodes.get(*d).is_some_and(|n| {
                            n.owners
                                .iter()
                                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
                        })
                    })
                    .cloned()
                    .collect()
            };
            match decide_deleting_owner(true, &node.finalizers, blocking.len()) {
                OwnerAction::Orphan => {
                    for d in &dependents {
                        if let Some((dn, dar, dnamespaced)) = self.node(d) {
                            let dapi =
                                api_for(&self.client, &dar, dnamespaced, dn.namespace.as_deref());
                            self.remove_owner_refs(&dapi, &dn.name, d, &[uid.to_string()])
                                .await?;
                        }
                    }
                    self.remove_finalizer(&api, &node.name, uid, ORPHAN_FINALIZER)
                        .await?;
                }
                OwnerAction::RemoveForeground => {
                    self.remove_finalizer(&api, &node.name, uid, FOREGROUND_FINALIZER)
                        .await?
                }
                OwnerAction::DeleteDependents => {
                    for d in blocking {
                        if self
                            .node(&d)
                            .is_some_and(|(n, _, _)| !n.deleting_dependents())
                        {
                            self.enqueue(d);
                        }
                    }
                }
                OwnerAction::None => {}
            }
            if !node.deleting_dependents() {
                return Ok(());
            }
        }
        if node.owners.is_empty() {
            return Ok(());
        }
        let mut states = Vec::new();
        for r in &node.owners {
            states.push((
                r.clone(),
                self.owner_state(r, node.namespace.as_deref()).await?,
            ));
        }
        let dependent_waiting = self.graph.lock().is_ok_and(|g| {
            dependents
                .iter()
                .any(|d| g.nodes.get(d).is_some_and(|n| n.deleting_dependents()))
        });
        match decide_dependent(
            &states,
            !dependents.is_empty(),
            dependent_waiting,
            &node.finalizers,
        ) {
            DependentAction::Keep => Ok(()),
            DependentAction::UnblockThenDeleteForeground => {
                if node.deleting {
                    return Ok(());
                }
                tracing::debug!(kind = %ar.kind, name = %node.name,
                    "garbage collector: a dependent waits for its own dependents, unblocking owner references to break a possible cycle");
                self.unblock_owner_refs(&api, &node.name, uid).await?;
                self.delete_object(&api, &ar, &node.name, uid, PropagationPolicy::Foreground)
                    .await
            }
            DependentAction::RemoveOwners(uids) => {
                self.remove_owner_refs(&api, &node.name, uid, &uids).await
            }
            DependentAction::Delete(policy) => {
                if node.deleting {
                    return Ok(());
                }
                self.delete_object(&api, &ar, &node.name, uid, policy).await
            }
        }
    }

    /// Deletes an object (only the one of `uid`) with a propagation policy.
    async fn delete_object(
        &self,
        api: &Api<DynamicObject>,
        ar: &ApiResource,
        name: &str,
        uid: &str,
        policy: PropagationPolicy,
    ) -> Result<(), ControllerError> {
        tracing::debug!(kind = %ar.kind, name = %name, "garbage collector: deleting");
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets `blockOwnerDeletion: false` on every blocking owner reference of an object.
    async fn unblock_owner_refs(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        uid: &str,
    ) -> Result<(), ControllerError> {
        self.patch_meta_list(api, name, "/metadata/ownerReferences", |m| {
            if m.uid.as_deref() != Some(uid) {
                return None;
            }
            unblocked(m.owner_references.as_deref().unwrap_or_default())
                .map(|refs| serde_json::json!(refs))
        })
        .await
    }
}

/// The owner references with every `blockOwnerDeletion: true` made false, or None when
/// none blocks.
pub fn unblocked(refs: &[OwnerReference]) -> Option<Vec<OwnerReference>> {
    if !refs.iter().any(|r| r.block_owner_deletion == Some(true)) {
        return None;
    }
    Some(
        refs.iter()
            .map(|r| {
                let mut r = r.clone();
                if r.block_owner_deletion == Some(true) {
                    r.block_owner_deletion = Some(false);
                }
                r
            })
            .collect(),
    )
}

fn node_of(res: usize, m: &ObjectMeta) -> Option<(String, Node)> {
    Some((
        m.uid.clone()?,
        Node {
            res,
            namespace: m.namespace.clone(),
            name: m.name.clone()?,
            owners: m.owner_references.clone().unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
        },
    ))
}

/// Resources the collector ignores (as upstream: events).
fn ignored(ar: &ApiResource) -> bool {
    ar.plural == "events" && (ar.group.is_empty() || ar.group == "events.k8s.io")
}

/// Feeds the graph with one resource's objects (a task of the collector).
type Feeder =
    fn(Arc<Gc>, SharedInformers, usize, mpsc::UnboundedSender<()>) -> BoxFuture<'static, ()>;

/// Whether the controller manager's shared informers serve the resource `group`/`plural`
/// (a controller reads it from there): then the collector feeds its graph from that
/// informer instead of a watch of its own.
pub fn shared_resource(group: &str, plural: &str) -> bool {
    shared_feeder(group, plural).is_some()
}

fn shared_feeder(group: &str, plural: &str) -> Option<Feeder> {
    fn is<K: Resource<DynamicType = ()>>(group: &str, plural: &str) -> bool {
        K::group(&()) == group && K::plural(&()) == plural
    }
    macro_rules! shared {
        ($($t:ty),* $(,)?) => {
            $(
                if is::<$t>(group, plural) {
                    return Some(|gc, informers, idx, synced| Box::pin(feed_shared::<$t>(gc, informers, idx, synced)));
                }
            )*
        };
    }
    shared!(
        Pod,
        KubeNode,
        Service,
        Endpoints,
        Namespace,
        ServiceAccount,
        ConfigMap,
        ReplicationController,
        PersistentVolume,
        PersistentVolumeClaim,
        ReplicaSet,
        Deployment,
        StatefulSet,
        DaemonSet,
        ControllerRevision,
        Job,
        CronJob,
        EndpointSlice,
        PodDisruptionBudget,
        Lease,
        HorizontalPodAutoscaler,
        CertificateSigningRequest,
        ClusterRole,
        StorageClass,
    );
    None
}

/// Feeds the graph from the shared informer of `K`: its store once synced, then its
/// changes.
async fn feed_shared<K: InformerResource>(
    gc: Arc<Gc>,
    informers: SharedInformers,
    idx: usize,
    synced: mpsc::UnboundedSender<()>,
) {
    // Subscribe before reading the store: nothing in between is missed.
    let changes = informers.changes::<K>();
    let store = informers.store::<K>().await;
    gc.resync(idx, store.state().iter().map(|o| o.meta()));
    let _ = synced.send(());
    futures_util::pin_mut!(changes);
    while let Some(c) = changes.next().await {
        match c {
            Change::Applied(o) => gc.apply(idx, o.meta()),
            Change::Deleted(o) => gc.delete(o.meta()),
            Change::Resync(all) => gc.resync(idx, all.iter().map(|o| o.meta())),
        }
    }
}

/// Feeds the graph from a metadata-only watch of a resource no shared informer serves.
async fn feed_metadata(
    gc: Arc<Gc>,
    ar: ApiResource,
    idx: usize,
    synced: mpsc::UnboundedSender<()>,
) {
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(gc.client.clone(), &ar);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut init: Vec<ObjectMeta> = Vec::new();
    let mut first = true;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => init.clear(),
            Ok(watcher::Event::InitApply(o)) => init.push(o.metadata),
            Ok(watcher::Event::Apply(o)) => gc.apply(idx, &o.metadata),
            Ok(watcher::Event::Delete(o)) => gc.delete(&o.metadata),
            Ok(watcher::Event::InitDone) => {
                gc.resync(idx, init.iter());
                init = Vec::new();
                if first {
                    first = false;
                    let _ = synced.send(());
                }
            }
            Err(e) => {
                tracing::debug!(resource = %ar.plural, error = %e, "garbage collector: watch error")
            }
        }
    }
}

/// Starts feeding the graph for resources not yet fed (from a shared informer where one
/// serves the resource, else a metadata watch); returns how many were started.
async fn discover(
    gc: &Arc<Gc>,
    informers: &SharedInformers,
    started: &mut HashSet<(String, String)>,
    synced: &mpsc::UnboundedSender<()>,
    tasks: &mut JoinSet<()>,
) -> Result<usize, ControllerError> {
    let discovery = Discovery::new(gc.client.clone()).run().await?;
    let mut n = 0;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::WATCH)
                || !caps.supports_operation(verbs::DELETE)
                || ignored(&ar)
            {
                continue;
            }
            if !started.insert((ar.group.clone(), ar.plural.clone())) {
                continue;
            }
            let namespaced = caps.scope == Scope::Namespaced;
            let idx = {
                let mut g = gc.graph.lock().map_err(err)?;
                g.resources.push((ar.clone(), namespaced));
                g.resources.len() - 1
            };
            n += 1;
            match shared_feeder(&ar.group, &ar.plural) {
                Some(feed) => {
                    tracing::debug!(resource = %ar.plural, group = %ar.group, "garbage collector: graph fed by the shared informer");
                    tasks.spawn(feed(gc.clone(), informers.clone(), idx, synced.clone()));
                }
                None => {
                    tasks.spawn(feed_metadata(gc.clone(), ar, idx, synced.clone()));
                }
            }
        }
    }
    Ok(n)
}

/// Runs the garbage collector until it fails (or is dropped: its watches stop with it).
pub async fn run(client: kube::Client, informers: SharedInformers) -> Result<(), ControllerError> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let gc = Arc::new(Gc {
        client,
        graph: Mutex::new(Graph::default()),
        queue: queue.clone(),
    });
    let (synced_tx, mut synced_rx) = mpsc::unbounded_channel::<()>();
    let mut started = HashSet::new();
    // The feeding tasks, aborted when this future is dropped (end of a leadership term).
    let mut tasks = JoinSet::new();
    let expected = loop {
        match discover(&gc, &informers, &mut started, &synced_tx, &mut tasks).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: discovery failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    // Wait for the initial lists (bounded), as upstream waits for its caches.
    let wait = async {
        for _ in 0..expected {
            if synced_rx.recv().await.is_none() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
    tracing::info!(resources = expected, "garbage collector: graph synced");

    // Re-discover periodically so new resources (CRDs) are watched.
    let rediscover = {
        let gc = gc.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) =
                    discover(&gc, &informers, &mut started, &synced_tx, &mut tasks).await
                {
                    tracing::debug!(error = %e, "garbage collector: rediscovery failed");
                }
            }
        }
    };
    // The runtime's worker (one, as before: the graph is processed in order), failures
    // retried with the per-key back-off.
    let worker = run_controller(
        "garbage-collector",
        1,
        queue,
        Vec::new(),
        move |uid: String| {
            let gc = gc.clone();
            async move { gc.process(&uid).await.map(|()| Action::AwaitChange) }
        },
    );
    tokio::join!(rediscover, worker);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oref(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: uid.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    #[test]
    fn background_collects_when_all_owners_gone() {
        let owners = [(oref("a", true), OwnerState::Dangling)];
        assert_eq!(
            decide_dependent(&owners, false, false, &[]),
            DependentAction::Delete(PropagationPolicy::Background)
        );
        let mixed = [
            (oref("a", true), OwnerState::Dangling),
            (oref("b", false), OwnerState::Solid),
        ];
        assert_eq!(
            decide_dependent(&mixed, false, false, &[]),
            DependentAction::RemoveOwners(vec!["a".into()])
        );
        let solid = [(oref("b", false), OwnerState::Solid)];
        assert_eq!(
            decide_dependent(&solid, false, false, &[]),
            DependentAction::Keep
        );
        assert_eq!(
            decide_dependent(&[], false, false, &[]),
            DependentAction::Keep
        );
    }

    #[test]
    fn foreground_owner_deletes_dependents_in_foreground_when_they_have_dependents() {
        let waiting = [(oref("d", true), OwnerState::Waiting)];
        assert_eq!(
            decide_dependent(&waiting, true, false, &[]),
            DependentAction::Delete(PropagationPolicy::Foreground)
        );
        assert_eq!(
            decide_dependent(&waiting, false, false, &[]),
            DependentAction::Delete(PropagationPolicy::Background)
        );
        assert_eq!(
            decide_dependent(&waiting, false, false, &[ORPHAN_FINALIZER.into()]),
            DependentAction::Delete(PropagationPolicy::Orphan)
        );
    }

    #[test]
    fn deleting_owner_finalizers() {
        let fg = vec![FOREGROUND_FINALIZER.to_string()];
        assert_eq!(
            decide_deleting_owner(true, &fg, 2),
            OwnerAction::DeleteDependents
        );
        assert_eq!(
            decide_deleting_owner(true, &fg, 0),
            OwnerAction::RemoveForeground
        );
        assert_eq!(
            decide_deleting_owner(true, &[ORPHAN_FINALIZER.into()], 3),
            OwnerAction::Orphan
        );
        assert_eq!(decide_deleting_owner(false, &fg, 0), OwnerAction::None);
        assert_eq!(
            decide_deleting_owner(true, &["other".into()], 0),
            OwnerAction::None
        );
    }

    #[test]
    fn resources_of_the_shared_informers_are_not_watched_twice() {
        for (group, plural) in [
            ("", "pods"),
            ("apps", "replicasets"),
            ("apps", "deployments"),
            ("batch", "jobs"),
            ("batch", "cronjobs"),
            ("apps", "controllerrevisions"),
            ("", "nodes"),
            ("coordination.k8s.io", "leases"),
            ("", "namespaces"),
        ] {
            assert!(
                shared_resource(group, plural),
                "{group}/{plural} has a shared informer"
            );
        }
        // No controller reads these: the collector watches their metadata itself.
        for (group, plural) in [
            ("", "secrets"),
            ("rbac.authorization.k8s.io", "roles"),
            ("apps", "pods"),
            ("networking.k8s.io", "ingresses"),
        ] {
            assert!(!shared_resource(group, plural), "{group}/{plural}");
        }
    }

    #[test]
    fn relist_forgets_vanished_objects_of_that_resource_only() {
        let mut g = Graph::default();
        let owner = |res: usize, name: &str| Node {
            res,
            namespace: Some("ns".into()),
            name: name.into(),
            owners: vec![],
            deleting: false,
            finalizers: vec![],
        };
        g.upsert("rs".into(), owner(0, "rs"));
        g.upsert("gone-rs".into(), owner(0, "gone-rs"));
        g.upsert("cm".into(), owner(2, "cm"));
        let pod = Node {
            res: 1,
            namespace: Some("ns".into()),
            name: "p".into(),
            owners: vec![oref("gone-rs", true)],
            deleting: false,
            finalizers: vec![],
        };
        g.upsert("p".into(), pod);
        let keep: HashSet<String> = ["rs".to_string()].into();
        // The vanished ReplicaSet's pod is looked at (its owner is now dangling).
        assert_eq!(g.forget_missing(0, &keep), vec!["p".to_string()]);
        assert!(
            g.nodes.contains_key("rs") && g.nodes.contains_key("cm") && g.nodes.contains_key("p")
        );
        assert!(!g.nodes.contains_key("gone-rs"));
    }

    #[test]
    fn graph_tracks_dependents_and_wakes_them() {
        let mut g = Graph::default();
        let owner = Node {
            res: 0,
            namespace: Some("ns".into()),
            name: "rs".into(),
            owners: vec![],
            deleting: false,
            finalizers: vec![],
        };
        assert!(g.upsert("rs".into(), owner.clone()).is_empty());
        let pod = Node {
            res: 1,
            namespace: Some("ns".into()),
            name: "p".into(),
            owners: vec![oref("rs", true)],
            deleting: false,
            finalizers: vec![],
        };
        assert_eq!(g.upsert("p".into(), pod.clone()), vec!["p".to_string()]);
        // Unchanged update: nothing to do.
        assert!(g.upsert("p".into(), pod).is_empty());
        // Owner enters foreground deletion: itself and its dependents are looked at.
        let mut del = owner;
        del.deleting = true;
        del.finalizers = vec![FOREGROUND_FINALIZER.into()];
        assert_eq!(
            g.upsert("rs".into(), del),
            vec!["rs".to_string(), "p".to_string()]
        );
        // Dependent gone: the waiting owner is looked at again.
        assert_eq!(g.remove("p"), vec!["rs".to_string()]);
        // Owner gone: its (no longer present) dependents are none.
        assert!(g.remove("rs").is_empty());
    }

    #[test]
    fn a_dependent_waiting_on_its_own_dependents_is_unblocked_then_deleted() {
        // A owns B, B owns A (a cycle); A is deleted in the foreground, so B's owner is
        // waiting and B's dependent (A) waits for its dependents too.
        let waiting = [(oref("a", true), OwnerState::Waiting)];
        assert_eq!(
            decide_dependent(&waiting, true, true, &[]),
            DependentAction::UnblockThenDeleteForeground
        );
        let refs = vec![oref("a", true), oref("b", false)];
        let un = unblocked(&refs).expect("a blocking reference");
        assert!(un.iter().all(|r| r.block_owner_deletion == Some(false)));
        assert_eq!(un.len(), 2);
        assert_eq!(unblocked(&un), None);
    }

    #[test]
    fn an_unblocked_reference_wakes_the_waiting_owner() {
        let mut g = Graph::default();
        let node = |owners: Vec<OwnerReference>, deleting: bool| Node {
            res: 0,
            namespace: Some("ns".into()),
            name: "x".into(),
            owners,
            deleting,
            finalizers: if deleting {
                vec![FOREGROUND_FINALIZER.into()]
            } else {
                vec![]
            },
        };
        g.upsert("a".into(), node(vec![], true));
        g.upsert("b".into(), node(vec![oref("a", true)], false));
        // B's reference to A no longer blocks: A (waiting for its dependents) is woken.
        let todo = g.upsert("b".into(), node(vec![oref("a", false)], false));
        assert!(todo.contains(&"a".to_string()), "{todo:?}");
        // A non-blocking reference changing again wakes nobody but B itself.
        let todo = g.upsert("b".into(), node(vec![oref("a", false)], true));
        assert!(!todo.contains(&"a".to_string()), "{todo:?}");
    }
}
