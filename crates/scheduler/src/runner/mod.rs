//! The scheduler component: holds the `kube-scheduler` Lease, follows the cluster
//! through the controller runtime's shared informers (one watch per kind),
//! schedules the queued pods one at a time and binds them concurrently.
//!
//! One task owns the [`core::Core`] (snapshot + queue): it applies watch events, then
//! runs scheduling attempts while binding slots are free. Bindings, status patches,
//! preemption deletions and events run in other tasks and report back.

pub mod core;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::Event;
use kube::Resource;
use rk3s_runtime::events::{Event as KEvent, EventRecorder, EventType};
use rk3s_runtime::SharedInformers;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use self::core::{Core, Outcome, WatchMsg};
use crate::queue::QueueConfig;
use crate::{pod_key, FitError, Scheduler, SchedulerConfig};

/// Errors of the scheduler component.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch stream ended.
    #[error("watch: {0}")]
    Watch(String),
}

/// Settings of the scheduler component.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// This process's identity in leader election.
    pub identity: String,
    /// Lease duration for leader election (upstream 15 s).
    pub lease_duration: Duration,
    /// The `spec.schedulerName` this scheduler serves (`default-scheduler`).
    pub scheduler_name: String,
    /// How many bindings may be in flight at once.
    pub max_in_flight_binds: usize,
    /// Algorithm settings.
    pub config: SchedulerConfig,
    /// Queue backoff settings.
    pub queue: QueueConfig,
    /// Shared informers to read (e.g. the controller manager's, in one process);
    /// `None`: a registry of its own per leadership term.
    pub informers: Option<SharedInformers>,
}

impl RunOptions {
    /// Upstream defaults with the given leader-election identity.
    pub fn new(identity: &str) -> Self {
        RunOptions {
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            scheduler_name: "default-scheduler".into(),
            max_in_flight_binds: 16,
            config: SchedulerConfig::default(),
            queue: QueueConfig::default(),
            informers: None,
        }
    }
}

/// Runs the scheduler forever: waits for the `kube-scheduler` Lease in `kube-system`,
/// then schedules until leadership is lost (then waits again).
pub async fn run(client: kube::Client, opts: RunOptions) -> Result<(), SchedulerError> {
    let elector = crate::leader::LeaderElector::new(
        client.clone(),
        "kube-system",
        "kube-scheduler",
        &opts.identity,
        opts.lease_duration,
    );
    loop {
        let lost = elector.acquire().await;
        tracing::info!(identity = %opts.identity, "scheduler: became leader");
        tokio::select! {
            _ = lost => tracing::warn!("scheduler: lost leadership; stopping"),
            r = schedule_loop(client.clone(), &opts) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "scheduler: loop ended; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Forwards a kind's events (from the shared informer) into the main loop's channel.
async fn forward<K: Resource<DynamicType = ()>>(
    events: impl Stream<Item = Event<K>> + Send,
    tx: mpsc::UnboundedSender<WatchMsg>,
    wrap: fn(Event<K>) -> WatchMsg,
) {
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        if tx.send(wrap(ev)).is_err() {
            return;
        }
    }
    tracing::debug!(kind = K::kind(&()).as_ref(), "scheduler: informer ended")
}

/// As [`forward`], for a kind whose events carry the shared informer's own objects.
async fn forward_shared<K: Resource<DynamicType = ()>>(
    events: impl Stream<Item = Event<Arc<K>>> + Send,
    tx: mpsc::UnboundedSender<WatchMsg>,
    wrap: fn(Event<Arc<K>>) -> WatchMsg,
) {
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        if tx.send(wrap(ev)).is_err() {
            return;
        }
    }
    tracing::debug!(kind = K::kind(&()).as_ref(), "scheduler: informer ended")
}

/// The result of a binding, reported to the main loop.
struct BindDone {
    key: String,
    node: String,
    /// `None` on success; `Some(retry)` on failure.
    failed: Option<bool>,
}

/// Side effects carried out outside the main loop.
#[allow(clippy::large_enum_variant)] // moved once through a channel
enum Effect {
    /// Record an event about an object.
    Event {
        regarding: ObjectReference,
        event: KEvent,
    },
    /// Mark the pod unschedulable (PodScheduled=False) and/or set its nominated node.
    PatchStatus {
        namespace: String,
        name: String,
        patch: serde_json::Value,
    },
    /// Delete a preemption victim with its grace period.
    DeleteVictim {
        namespace: String,
        name: String,
        uid: Option<String>,
    },
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The status patch upstream sends after a failed attempt: `PodScheduled` False with
/// reason `Unschedulable` and the FitError text, plus `nominatedNodeName` when
/// preemption picked a node. `None` when the pod already says exactly that.
pub fn unschedulable_status_patch(
    pod: &Pod,
    message: &str,
    nominated: Option<&str>,
    now: &str,
) -> Option<serde_json::Value> {
    let status = pod.status.as_ref();
    let cond = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let same_cond = cond.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    });
    let current_nominated = status
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|s| !s.is_empty());
    let nominated_changes = nominated.is_some() && nominated != current_nominated;
    if same_cond && !nominated_changes {
        return None;
    }
    let transition = match cond {
        Some(c) if c.status == "False" => c
            .last_transition_time
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.to_string()),
        _ => now.to_string(),
    };
    let mut status = serde_json::json!({
        "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": transition,
        }]
    });
    if let Some(n) = nominated {
        status["nominatedNodeName"] = serde_json::Value::String(n.to_string());
    }
    Some(serde_json::json!({ "status": status }))
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    pod.object_ref(&())
}

/// The effects of a failed attempt: status patch, FailedScheduling event, preemption.
fn failure_effects(pod: &Pod, err: &FitError) -> Vec<Effect> {
    let mut out = Vec::new();
    let message = err.to_string();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Some(p) = &err.preemption {
        for v in &p.victims {
            out.push(Effect::Event {
                regarding: pod_ref(v),
                event: KEvent {
                    type_: EventType::Normal,
                    reason: "Preempted".into(),
                    note: Some(format!(
                        "Preempted by pod {} on node {}",
                        pod.metadata.uid.as_deref().unwrap_or(""),
                        p.node
                    )),
                    action: "Preempting".into(),
                    secondary: Some(pod_ref(pod)),
                },
            });
            out.push(Effect::DeleteVictim {
                namespace: v
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: v.metadata.name.clone().unwrap_or_default(),
                uid: v.metadata.uid.clone(),
            });
        }
    }
    let nominated = err.preemption.as_ref().map(|p| p.node.as_str());
    if let Some(patch) = unschedulable_status_patch(pod, &message, nominated, &now_rfc3339()) {
        out.push(Effect::PatchStatus {
            namespace,
            name,
            patch,
        });
    }
    out.push(Effect::Event {
        regarding: pod_ref(pod),
        event: KEvent {
            type_: EventType::Warning,
            reason: "FailedScheduling".into(),
            note: Some(message),
            action: "Scheduling".into(),
            secondary: None,
        },
    });
    out
}

fn scheduled_event(pod: &Pod, node: &str) -> Effect {
    Effect::Event {
        regarding: pod_ref(pod),
        event: KEvent {
            type_: EventType::Normal,
            reason: "Scheduled".into(),
            note: Some(format!(
                "Successfully assigned {}/{} to {node}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or("")
            )),
            action: "Binding".into(),
            secondary: None,
        },
    }
}

async fn apply_effect(client: kube::Client, recorder: EventRecorder, effect: Effect) {
    match effect {
        Effect::Event { regarding, event } => {
            recorder.publish(&event, &regarding).await;
        }
        Effect::PatchStatus {
            namespace,
            name,
            patch,
        } => {
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                tracing::debug!(error = %e, pod = %name, "scheduler: cannot update pod status");
            }
        }
        Effect::DeleteVictim {
            namespace,
            name,
            uid,
        } => {
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let dp = DeleteParams {
                preconditions: uid.map(|u| kube::api::Preconditions {
                    uid: Some(u),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(pod = %format!("{namespace}/{name}"), "scheduler: preempted")
                }
                Err(e) => {
                    tracing::warn!(error = %e, pod = %name, "scheduler: cannot delete preemption victim")
                }
            }
        }
    }
}

/// Runs the effects with bounded concurrency until the channel closes.
async fn effects_worker(
    client: kube::Client,
    recorder: EventRecorder,
    rx: mpsc::UnboundedReceiver<Effect>,
) {
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    stream
        .for_each_concurrent(8, |e| apply_effect(client.clone(), recorder.clone(), e))
        .await;
}

async fn bind(client: kube::Client, pod: Arc<Pod>, node: String) -> Result<(), kube::Error> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let _status: serde_json::Value = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await?;
    Ok(())
}

/// Annotation naming the node chosen for a `WaitForFirstConsumer` claim.
const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// How long binding waits for the pod's delayed claims to be bound (upstream's
/// VolumeBinding `bindTimeoutSeconds`).
const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// Upstream's VolumeBinding PreBind for claims to provision: sets the selected node on
/// each claim (`namespace`, `name`), then waits until every one is bound (`volumeName`
/// set, phase `Bound`). Fails when a claim goes away, its selected node is reset (the
/// provisioner asks for another node) or the timeout passes.
async fn bind_volumes(
    client: &kube::Client,
    claims: &[(String, String)],
    node: &str,
) -> Result<(), String> {
    for (ns, name) in claims {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let patch = serde_json::json!({"metadata": {"annotations": {ANN_SELECTED_NODE: node}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("persistentvolumeclaim {ns}/{name}: {e}"))?;
    }
    let deadline = tokio::time::Instant::now() + VOLUME_BIND_TIMEOUT;
    let mut delay = Duration::from_millis(20);
    for (ns, name) in claims {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        loop {
            let pvc = api
                .get_opt(name)
                .await
                .map_err(|e| format!("persistentvolumeclaim {ns}/{name}: {e}"))?
                .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
            let bound = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|v| !v.is_empty())
                && pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            if bound {
                break;
            }
            let selected = pvc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_SELECTED_NODE));
            if selected.map(String::as_str) != Some(node) {
                return Err(format!("selectedNode annotation reset for PVC {name:?}"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "binding volumes: timed out waiting for the condition (PVC {ns}/{name})"
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
    Ok(())
}

fn spawn_bind(
    client: kube::Client,
    pod: Arc<Pod>,
    node: String,
    claims: Vec<(String, String)>,
    permit: OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<BindDone>,
    effects: mpsc::UnboundedSender<Effect>,
) {
    tokio::spawn(async move {
        let key = pod_key(&pod);
        let mut permit = Some(permit);
        if !claims.is_empty() {
            // waiting for a provisioner must not hold a binding slot
            permit = None;
            if let Err(e) = bind_volumes(&client, &claims, &node).await {
                tracing::warn!(pod = %key, node = %node, error = %e, "scheduler: binding volumes failed");
                let _ = done.send(BindDone {
                    key,
                    node,
                    failed: Some(true),
                });
                return;
            }
        }
        let failed = match bind(client, pod.clone(), node.clone()).await {
            Ok(()) => {
                let _ = effects.send(scheduled_event(&pod, &node));
                None
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                // gone, or already assigned (the watch will tell)
                tracing::debug!(pod = %key, error = %e, "scheduler: binding rejected");
                Some(false)
            }
            Err(e) => {
                tracing::warn!(pod = %key, node = %node, error = %e, "scheduler: binding failed");
                Some(true)
            }
        };
        drop(permit);
        let _ = done.send(BindDone { key, node, failed });
    });
}

/// Follows the seven kinds the scheduler needs through the shared informers, each
/// forwarded (unbounded: the informers never wait for the scheduler) to the main loop.
fn watch_all(
    informers: &SharedInformers,
    tx: mpsc::UnboundedSender<WatchMsg>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(forward(
        informers.events::<Node>(),
        tx.clone(),
        WatchMsg::Node,
    ));
    set.spawn(forward_shared(
        informers.shared_events::<Pod>(),
        tx.clone(),
        WatchMsg::Pod,
    ));
    set.spawn(forward(
        informers.events::<PersistentVolume>(),
        tx.clone(),
        WatchMsg::Pv,
    ));
    set.spawn(forward(
        informers.events::<PersistentVolumeClaim>(),
        tx.clone(),
        WatchMsg::Pvc,
    ));
    set.spawn(forward(
        informers.events::<StorageClass>(),
        tx.clone(),
        WatchMsg::Class,
    ));
    set.spawn(forward(
        informers.events::<PodDisruptionBudget>(),
        tx.clone(),
        WatchMsg::Pdb,
    ));
    set.spawn(forward(
        informers.events::<Namespace>(),
        tx,
        WatchMsg::Namespace,
    ));
    set
}

/// The main loop: apply events, schedule while binding slots are free, sleep until
/// something happens (an event, a binding result, a free slot, a backoff expiring).
async fn schedule_loop(client: kube::Client, opts: &RunOptions) -> Result<(), SchedulerError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<WatchMsg>();
    // The shared informers, or this term's own (their watches stop when they are dropped
    // with this loop).
    let informers = opts
        .informers
        .clone()
        .unwrap_or_else(|| SharedInformers::new(client.clone()));
    let _watches = watch_all(&informers, tx);
    let recorder = EventRecorder::with_instance(
        client.clone(),
        &opts.scheduler_name,
        Some(format!("{}-{}", opts.scheduler_name, opts.identity)),
    );
    let (effects_tx, effects_rx) = mpsc::unbounded_channel();
    let effects_task = tokio::spawn(effects_worker(client.clone(), recorder, effects_rx));
    let _abort_effects = AbortOnDrop(effects_task);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<BindDone>();
    let slots = Arc::new(Semaphore::new(opts.max_in_flight_binds.max(1)));
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut core = Core::new(
        Scheduler::new(opts.config),
        &opts.scheduler_name,
        opts.queue,
    );
    let mut was_synced = false;
    loop {
        // 1. everything that already arrived
        loop {
            match rx.try_recv() {
                Ok(m) => core.handle(m, Instant::now()),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(SchedulerError::Watch("watches ended".into()))
                }
            }
        }
        while let Ok(d) = done_rx.try_recv() {
            handle_bind_done(&mut core, d);
        }
        if !was_synced && core.synced() {
            was_synced = true;
            tracing::info!(
                nodes = core.snap.num_nodes(),
                "scheduler: caches synced; scheduling"
            );
        }
        let now = Instant::now();
        core.queue.flush(now);
        // 2. one scheduling attempt, if a binding slot is free
        if core.synced() && core.queue.has_active() {
            if permit.is_none() {
                permit = slots.clone().try_acquire_owned().ok();
            }
            if let Some(p) = permit.take() {
                match core.schedule_next(now) {
                    Some(Outcome::Bind { pod, node }) => {
                        let claims = core.snap.delayed_claims(&pod);
                        spawn_bind(
                            client.clone(),
                            pod,
                            node,
                            claims,
                            p,
                            done_tx.clone(),
                            effects_tx.clone(),
                        );
                    }
                    Some(Outcome::Unschedulable { pod, err }) => {
                        permit = Some(p);
                        tracing::debug!(pod = %pod_key(&pod), reason = %err, "scheduler: unschedulable");
                        for e in failure_effects(&pod, &err) {
                            let _ = effects_tx.send(e);
                        }
                    }
                    None => permit = Some(p),
                }
                tokio::task::yield_now().await;
                continue;
            }
        }
        // 3. wait for something to happen
        let wake = core.queue.next_wakeup().map(tokio::time::Instant::from_std);
        let want_slot = core.synced() && core.queue.has_active() && permit.is_none();
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => core.handle(m, Instant::now()),
                None => return Err(SchedulerError::Watch("watches ended".into())),
            },
            Some(d) = done_rx.recv() => handle_bind_done(&mut core, d),
            p = slots.clone().acquire_owned(), if want_slot => permit = p.ok(),
            _ = sleep_until_opt(wake) => {}
        }
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn handle_bind_done(core: &mut Core, d: BindDone) {
    match d.failed {
        None => core.bind_succeeded(&d.key),
        Some(retry) => core.bind_failed(&d.key, &d.node, retry, Instant::now()),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{node, pod};

    fn list<K>(objs: Vec<K>) -> impl Stream<Item = Event<K>> + Send + 'static
    where
        K: Send + 'static,
    {
        let mut v = vec![Event::Init];
        v.extend(objs.into_iter().map(Event::InitApply));
        v.push(Event::InitDone);
        futures_util::stream::iter(v)
    }

    #[tokio::test]
    async fn the_scheduler_follows_the_shared_informers() {
        let informers = SharedInformers::fake();
        informers.feed(list(vec![node("n1", "1", "4Gi")]));
        informers.feed(list(vec![pod("a", "500m", "")]));
        informers.feed(list::<PersistentVolume>(vec![]));
        informers.feed(list::<PersistentVolumeClaim>(vec![]));
        informers.feed(list::<StorageClass>(vec![]));
        informers.feed(list::<PodDisruptionBudget>(vec![]));
        informers.feed(list::<Namespace>(vec![]));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watches = watch_all(&informers, tx);
        let mut core = Core::new(
            Scheduler::default(),
            "default-scheduler",
            QueueConfig::default(),
        );
        while !core.synced() {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(m)) => core.handle(m, Instant::now()),
                other => panic!("informers did not sync: {}", other.is_ok()),
            }
        }
        match core.schedule_next(Instant::now()) {
            Some(Outcome::Bind { pod, node }) => {
                assert_eq!(pod.metadata.name.as_deref(), Some("a"));
                assert_eq!(node, "n1");
            }
            o => panic!("unexpected {o:?}"),
        }
    }

    #[test]
    fn status_patch_sets_condition_and_nomination_once() {
        let p = pod("a", "1", "");
        let patch = unschedulable_status_patch(
            &p,
            "0/1 nodes are available: 1 Insufficient cpu.",
            Some("n1"),
            "2024-01-01T00:00:00Z",
        );
        let Some(patch) = patch else {
            panic!("expected a patch")
        };
        let c = &patch["status"]["conditions"][0];
        assert_eq!(c["type"], "PodScheduled");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "Unschedulable");
        assert_eq!(c["message"], "0/1 nodes are available: 1 Insufficient cpu.");
        assert_eq!(patch["status"]["nominatedNodeName"], "n1");
        // a pod already showing that condition needs no patch
        let mut p2 = p.clone();
        let status: k8s_openapi::api::core::v1::PodStatus =
            match serde_json::from_value(patch["status"].clone()) {
                Ok(s) => s,
                Err(e) => panic!("{e}"),
            };
        p2.status = Some(status);
        assert!(unschedulable_status_patch(
            &p2,
            "0/1 nodes are available: 1 Insufficient cpu.",
            Some("n1"),
            "x"
        )
        .is_none());
        assert!(unschedulable_status_patch(
            &p2,
            "0/1 nodes are available: 1 Insufficient cpu.",
            None,
            "x"
        )
        .is_none());
        // a different message: patched, keeping the transition time
        let again = unschedulable_status_patch(
            &p2,
            "0/2 nodes are available: 2 Insufficient cpu.",
            None,
            "later",
        );
        assert_eq!(
            again.map(|v| v["status"]["conditions"][0]["lastTransitionTime"].clone()),
            Some("2024-01-01T00:00:00Z".into())
        );
    }

    #[test]
    fn failure_effects_carry_upstream_message_and_preemption() {
        let snap = crate::Snapshot::new(vec![node("n1", "1", "4Gi")], vec![]);
        let err = match Scheduler::default().schedule(&snap, &pod("big", "2", "")) {
            Err(e) => e,
            Ok(n) => panic!("scheduled on {n}"),
        };
        let effects = failure_effects(&pod("big", "2", ""), &err);
        let notes: Vec<String> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Event { event, .. } => Some(format!(
                    "{} {}",
                    event.reason,
                    event.note.clone().unwrap_or_default()
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            notes,
            ["FailedScheduling 0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."]
        );
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::PatchStatus { .. })));

        // with a lower-priority victim: delete it, nominate the node
        let mut victim = pod("victim", "800m", "");
        if let Some(s) = victim.spec.as_mut() {
            s.node_name = Some("n1".into());
        }
        let snap = crate::Snapshot::new(vec![node("n1", "1", "4Gi")], vec![victim]);
        let mut hi = pod("hi", "500m", "");
        if let Some(s) = hi.spec.as_mut() {
            s.priority = Some(1000);
        }
        let err = match Scheduler::default().schedule(&snap, &hi) {
            Err(e) => e,
            Ok(n) => panic!("scheduled on {n}"),
        };
        let effects = failure_effects(&hi, &err);
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::DeleteVictim { name, .. } if name == "victim")));
        assert!(effects.iter().any(|e| matches!(e, Effect::PatchStatus { patch, .. } if patch["status"]["nominatedNodeName"] == "n1")));
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Event { event, .. } if event.reason == "Preempted")));
    }
}
