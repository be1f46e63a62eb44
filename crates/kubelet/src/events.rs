//! The kubelet's Events, as upstream's kubelet records them: core/v1 Events with
//! `source.component: kubelet` and `source.host: <node>` (and the same in
//! `reportingComponent` / `reportingInstance`), about a pod or one of its containers
//! (`involvedObject.fieldPath: spec.containers{name}`), named `<pod>.<hex nanoseconds>`.
//!
//! Repeated events (same object, type, reason and message) are not created again: the
//! first one's `count` and `lastTimestamp` are patched, as upstream's event correlator
//! does. Events are written by one background task from a bounded queue, so recording
//! never blocks a pod worker; when the queue is full the event is dropped (upstream
//! drops too).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;

/// The reporting component of every kubelet event.
pub const COMPONENT: &str = "kubelet";

/// Event reasons of the kubelet (upstream's `pkg/kubelet/events`).
pub mod reason {
    /// A container was created.
    pub const CREATED: &str = "Created";
    /// A container was started.
    pub const STARTED: &str = "Started";
    /// Creating or starting a container failed.
    pub const FAILED: &str = "Failed";
    /// A container is being stopped.
    pub const KILLING: &str = "Killing";
    /// Back-off restarting a failed container, or pulling an image.
    pub const BACK_OFF: &str = "BackOff";
    /// The image is being pulled.
    pub const PULLING: &str = "Pulling";
    /// The image is present (pulled or already there).
    pub const PULLED: &str = "Pulled";
    /// The image is absent and the pull policy is Never.
    pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
    /// A probe failed.
    pub const UNHEALTHY: &str = "Unhealthy";
    /// A preStop hook failed.
    pub const FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";
    /// A postStart hook failed.
    pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
    /// The pod sandbox could not be created.
    pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
}

/// Type of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

impl EventType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The reference to a container of a pod, as upstream's `GenerateContainerRef` makes it:
/// `spec.containers{name}`, `spec.initContainers{name}` or `spec.ephemeralContainers{name}`.
pub fn container_ref(pod: &Pod, container: &str) -> ObjectReference {
    let spec = pod.spec.as_ref();
    let field = if spec.is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
    }) {
        "initContainers"
    } else if spec.is_some_and(|s| {
        s.ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
    }) {
        "ephemeralContainers"
    } else {
        "containers"
    };
    ObjectReference {
        field_path: Some(format!("spec.{field}{{{container}}}")),
        ..pod_ref(pod)
    }
}

/// The reference to a pod.
pub fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// A new event (count 1) about `obj`, made at `now` by the kubelet of `node`.
pub fn make_event(
    obj: &ObjectReference,
    ty: EventType,
    reason: &str,
    message: &str,
    node: &str,
    now: jiff::Timestamp,
) -> Event {
    let name = format!(
        "{}.{:x}",
        obj.name.as_deref().unwrap_or_default(),
        now.as_nanosecond()
    );
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(obj.namespace.clone().unwrap_or_else(|| "default".into())),
            ..Default::default()
        },
        involved_object: obj.clone(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        type_: Some(ty.as_str().to_string()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.to_string()),
        ..Default::default()
    }
}

/// What identifies repeats of an event (upstream's `getEventKey`, less the source,
/// which is the same for every event of this recorder).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    name: String,
    uid: String,
    field_path: String,
    ty: EventType,
    reason: String,
    message: String,
}

impl Key {
    fn of(obj: &ObjectReference, ty: EventType, reason: &str, message: &str) -> Key {
        Key {
            namespace: obj.namespace.clone().unwrap_or_default(),
            name: obj.name.clone().unwrap_or_default(),
            uid: obj.uid.clone().unwrap_or_default(),
            field_path: obj.field_path.clone().unwrap_or_default(),
            ty,
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

/// The last event written for a key.
#[derive(Clone, Debug)]
struct Seen {
    event_name: String,
    count: i32,
    at: Instant,
}

/// What to do with a recorded event.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    /// Create a new event.
    Create,
    /// Patch the existing event `name` to `count`.
    Patch { name: String, count: i32 },
}

/// Repeats are aggregated for this long (upstream keeps its cache by size only; a window
/// keeps this one small).
const WINDOW: Duration = Duration::from_secs(60 * 60);
/// Most keys kept.
const MAX_KEYS: usize = 4096;

/// Events one object may burst before the spam filter holds them back, and the rate
/// (one per five minutes) at which it refills (upstream's `defaultSpamBurst` and
/// `defaultSpamQPS`).
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);

/// A token bucket per involved object (upstream's `EventSourceObjectSpamFilter`).
#[derive(Default)]
struct SpamFilter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl SpamFilter {
    /// True when an event about `obj` may be written now.
    fn allow(&mut self, obj: &ObjectReference, now: Instant) -> bool {
        let key = format!(
            "{}/{}/{}/{}/{}",
            obj.kind.as_deref().unwrap_or_default(),
            obj.namespace.as_deref().unwrap_or_default(),
            obj.name.as_deref().unwrap_or_default(),
            obj.uid.as_deref().unwrap_or_default(),
            obj.api_version.as_deref().unwrap_or_default()
        );
        if self.buckets.len() >= MAX_KEYS && !self.buckets.contains_key(&key) {
            // Full buckets are the same as no bucket.
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() / SPAM_REFILL.as_secs_f64()
                    < SPAM_BURST
            });
        }
        let (tokens, at) = self.buckets.entry(key).or_insert((SPAM_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / SPAM_REFILL.as_secs_f64())
            .min(SPAM_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Decides between creating and patching, remembering what was written.
#[derive(Default)]
struct Correlator {
    seen: HashMap<Key, Seen>,
}

impl Correlator {
    fn observe(&mut self, key: &Key, now: Instant) -> Action {
        match self.seen.get_mut(key) {
            Some(s) if now.duration_since(s.at) < WINDOW => {
                s.count += 1;
                s.at = now;
                Action::Patch {
                    name: s.event_name.clone(),
                    count: s.count,
                }
            }
            _ => Action::Create,
        }
    }

    fn created(&mut self, key: Key, event_name: String, now: Instant) {
        if self.seen.len() >= MAX_KEYS {
            self.seen
                .retain(|_, s| now.duration_since(s.at) < WINDOW / 4);
            if self.seen.len() >= MAX_KEYS {
                self.seen.clear();
            }
        }
        self.seen.insert(
            key,
            Seen {
                event_name,
                count: 1,
                at: now,
            },
        );
    }

    fn forget(&mut self, key: &Key) {
        self.seen.remove(key);
    }
}

struct Pending {
    obj: ObjectReference,
    ty: EventType,
    reason: String,
    message: String,
    at: jiff::Timestamp,
}

/// Records kubelet events; cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Pending>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.ty.as_str(), self.reason, self.message)
    }
}

impl Recorder {
    /// Starts the writer task (call inside a tokio runtime).
    pub fn new(client: kube::Client, node_name: &str) -> Recorder {
        let (tx, rx) = mpsc::channel(1000);
        tokio::spawn(write_events(client, node_name.to_string(), rx));
        Recorder { tx: Some(tx) }
    }

    /// A recorder that drops every event (tests, tools).
    pub fn disabled() -> Recorder {
        Recorder { tx: None }
    }

    /// Records an event about container `container` of `pod`.
    pub fn container_event(
        &self,
        pod: &Pod,
        container: &str,
        ty: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(container_ref(pod, container), ty, reason, message.into());
    }

    /// Records an event about `pod` itself.
    pub fn pod_event(&self, pod: &Pod, ty: EventType, reason: &str, message: impl Into<String>) {
        self.record(pod_ref(pod), ty, reason, message.into());
    }

    fn record(&self, obj: ObjectReference, ty: EventType, reason: &str, message: String) {
        let Some(tx) = &self.tx else { return };
        let p = Pending {
            obj,
            ty,
            reason: reason.to_string(),
            message,
            at: jiff::Timestamp::now(),
        };
        if let Err(e) = tx.try_send(p) {
            tracing::debug!(event = ?e, "event queue full; dropping the event");
        }
    }
}

async fn write_events(client: kube::Client, node: String, mut rx: mpsc::Receiver<Pending>) {
    let mut corr = Correlator::default();
    let mut spam = SpamFilter::default();
    while let Some(p) = rx.recv().await {
        let ns = p.obj.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let key = Key::of(&p.obj, p.ty, &p.reason, &p.message);
        let now = Instant::now();
        // As upstream, a repeat is counted even when the spam filter holds it back; the
        // next write carries the count.
        let action = corr.observe(&key, now);
        if !spam.allow(&p.obj, now) {
            tracing::debug!(reason = %p.reason, object = ?p.obj.name, "too many events about one object; dropping one");
            continue;
        }
        if let Action::Patch { name, count } = action {
            let patch = json!({"count": count, "lastTimestamp": Time(p.at)});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => corr.forget(&key),
                Err(e) => {
                    tracing::debug!(error = %e, event = %name, "patching an event failed");
                    continue;
                }
            }
        }
        let ev = make_event(&p.obj, p.ty, &p.reason, &p.message, &node, p.at);
        let name = ev.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => corr.created(key, name, now),
            // The namespace is going away, or the API is down: events are best effort.
            Err(e) => tracing::debug!(error = %e, reason = %p.reason, "recording an event failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("u-1".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "setup".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn references_name_the_container_field() {
        let p = pod();
        let r = container_ref(&p, "app");
        assert_eq!(r.field_path.as_deref(), Some("spec.containers{app}"));
        assert_eq!(
            (
                r.kind.as_deref(),
                r.api_version.as_deref(),
                r.uid.as_deref()
            ),
            (Some("Pod"), Some("v1"), Some("u-1"))
        );
        assert_eq!(
            container_ref(&p, "setup").field_path.as_deref(),
            Some("spec.initContainers{setup}")
        );
        assert_eq!(pod_ref(&p).field_path, None);
    }

    #[test]
    fn events_look_like_upstreams() {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let e = make_event(
            &container_ref(&pod(), "app"),
            EventType::Normal,
            reason::STARTED,
            "Started container app",
            "node-1",
            now,
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v["metadata"]["name"],
            format!("web.{:x}", 1_700_000_000_000_000_000i128)
        );
        assert_eq!(v["metadata"]["namespace"], "prod");
        assert_eq!(
            v["source"],
            json!({"component": "kubelet", "host": "node-1"})
        );
        assert_eq!(v["reportingComponent"], "kubelet");
        assert_eq!(v["reportingInstance"], "node-1");
        assert_eq!(v["count"], 1);
        assert_eq!(v["type"], "Normal");
        assert_eq!(v["firstTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["involvedObject"]["fieldPath"], "spec.containers{app}");
        assert!(v.get("eventTime").is_none_or(Value::is_null));
    }

    use serde_json::Value;

    #[test]
    fn spam_filter_allows_a_burst_then_one_per_five_minutes() {
        let mut f = SpamFilter::default();
        let p = pod_ref(&pod());
        let t = Instant::now();
        assert_eq!((0..30).filter(|_| f.allow(&p, t)).count(), 25);
        let other = container_ref(
            &Pod {
                metadata: ObjectMeta {
                    name: Some("db".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            "c",
        );
        assert!(f.allow(&other, t), "another object has its own bucket");
        assert!(!f.allow(&p, t + Duration::from_secs(200)));
        assert!(f.allow(&p, t + Duration::from_secs(301)));
        assert!(!f.allow(&p, t + Duration::from_secs(302)));
    }

    #[test]
    fn repeats_are_counted_on_the_first_event() {
        let mut c = Correlator::default();
        let r = container_ref(&pod(), "app");
        let k = Key::of(
            &r,
            EventType::Warning,
            reason::UNHEALTHY,
            "Liveness probe failed: x",
        );
        let t = Instant::now();
        assert_eq!(c.observe(&k, t), Action::Create);
        c.created(k.clone(), "web.1".into(), t);
        assert_eq!(
            c.observe(&k, t),
            Action::Patch {
                name: "web.1".into(),
                count: 2
            }
        );
        assert_eq!(
            c.observe(&k, t),
            Action::Patch {
                name: "web.1".into(),
                count: 3
            }
        );
        let other = Key::of(
            &r,
            EventType::Warning,
            reason::UNHEALTHY,
            "Liveness probe failed: y",
        );
        assert_eq!(
            c.observe(&other, t),
            Action::Create,
            "another message is another event"
        );
        c.forget(&k);
        assert_eq!(c.observe(&k, t), Action::Create);
        let later = t + WINDOW + Duration::from_secs(1);
        c.created(k.clone(), "web.2".into(), t);
        assert_eq!(
            c.observe(&k, later),
            Action::Create,
            "old events are not revived"
        );
    }
}
