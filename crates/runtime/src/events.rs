//! The event recorder of every controller: core/v1 Events as upstream's
//! kube-controller-manager records them (client-go's `record` package): `involvedObject`,
//! `reason`, `message`, `type`, `source.component` (and `reportingComponent`) = the
//! component, `reportingInstance`, `firstTimestamp` / `lastTimestamp` / `count`, so
//! `kubectl get events --sort-by=.lastTimestamp` and `kubectl describe` read them as
//! upstream's. Repeats (same object, type, reason and message) are not created again:
//! the first one's `count` and `lastTimestamp` are patched, as upstream's event
//! correlator does. `action` is written only when the caller names one (the scheduler's
//! `Binding`, ...). Recording never fails the caller: a failed write is logged.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

pub use kube::runtime::events::{Event, EventType};

/// How many distinct events a recorder remembers for folding repeats.
const MAX_REMEMBERED: usize = 4096;

/// What makes two events repeats of one: object, type, reason, message.
type Key = (String, String, String, String, String, String);

/// Repeat key -> (namespace, event name, count) of the Event written first.
type Seen = HashMap<Key, (String, String, i32)>;

/// Records events for one component (e.g. `job-controller`, `default-scheduler`).
/// Cloning is cheap (clones share the repeat cache).
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    component: String,
    instance: Option<String>,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

/// The `Event` of a `type`/`reason`/`note` (no action of its own).
pub fn event(warning: bool, reason: &str, note: impl Into<String>) -> Event {
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        action: String::new(),
        note: Some(note.into()),
        secondary: None,
    }
}

/// The core/v1 Event for `ev` about `regarding`, first seen `now`.
pub fn core_event(
    ev: &Event,
    regarding: &ObjectReference,
    component: &str,
    instance: Option<&str>,
    now: Time,
) -> CoreEvent {
    let ns = regarding
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = format!(
        "{}.{:x}",
        regarding.name.as_deref().unwrap_or("unknown"),
        nanos
    );
    CoreEvent {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns),
            ..Default::default()
        },
        involved_object: regarding.clone(),
        reason: Some(ev.reason.clone()),
        message: ev.note.clone(),
        type_: Some(match ev.type_ {
            EventType::Warning => "Warning".to_string(),
            EventType::Normal => "Normal".to_string(),
        }),
        action: (!ev.action.is_empty()).then(|| ev.action.clone()),
        source: Some(EventSource {
            component: Some(component.to_string()),
            host: None,
        }),
        reporting_component: Some(component.to_string()),
        reporting_instance: Some(instance.unwrap_or_default().to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

impl EventRecorder {
    /// A recorder reporting as `component`, with no instance.
    pub fn new(client: kube::Client, component: &str) -> Self {
        Self::with_instance(client, component, None)
    }

    /// A recorder reporting as `component` from `instance` (e.g.
    /// `default-scheduler-<host>`).
    pub fn with_instance(client: kube::Client, component: &str, instance: Option<String>) -> Self {
        EventRecorder {
            client,
            component: component.to_string(),
            instance,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Records `ev` about the object `regarding`: a new core/v1 Event, or the `count`
    /// and `lastTimestamp` of its earlier repeat.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) {
        let now = Time(jiff::Timestamp::now());
        let key: Key = (
            regarding.uid.clone().unwrap_or_default(),
            regarding.namespace.clone().unwrap_or_default(),
            regarding.name.clone().unwrap_or_default(),
            format!("{:?}", ev.type_),
            ev.reason.clone(),
            ev.note.clone().unwrap_or_default(),
        );
        let repeat = self.seen.lock().ok().and_then(|m| m.get(&key).cloned());
        if let Some((ns, name, count)) = repeat {
            let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &ns);
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if let Ok(mut m) = self.seen.lock() {
                        m.insert(key, (ns, name, count + 1));
                    }
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::debug!(error = %e, reason = %ev.reason, "could not update event");
                    return;
                }
            }
        }
        let core = core_event(
            ev,
            regarding,
            &self.component,
            self.instance.as_deref(),
            now,
        );
        let ns = core.metadata.namespace.clone().unwrap_or_default();
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &core).await {
            Ok(created) => {
                if let Ok(mut m) = self.seen.lock() {
                    if m.len() >= MAX_REMEMBERED {
                        m.clear();
                    }
                    m.insert(key, (ns, created.metadata.name.unwrap_or_default(), 1));
                }
            }
            Err(e) => tracing::debug!(error = %e, reason = %ev.reason, "could not record event"),
        }
    }

    /// Records a Normal (or, with `warning`, a Warning) event about `regarding` (see
    /// [`event`]).
    pub async fn record(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.publish(&event(warning, reason, note), regarding).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_events_carry_upstreams_legacy_fields() {
        let regarding = ObjectReference {
            kind: Some("Job".into()),
            namespace: Some("ns1".into()),
            name: Some("pi".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let now = Time(jiff::Timestamp::from_second(1_700_000_000).expect("ts"));
        let e = core_event(
            &event(true, "FailedCreate", "quota exceeded"),
            &regarding,
            "job-controller",
            None,
            now.clone(),
        );
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(e.message.as_deref(), Some("quota exceeded"));
        assert_eq!(e.count, Some(1));
        assert_eq!(e.first_timestamp, Some(now.clone()));
        assert_eq!(e.last_timestamp, Some(now));
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("job-controller")
        );
        assert_eq!(e.reporting_component.as_deref(), Some("job-controller"));
        assert_eq!(e.action, None, "no action unless the caller names one");
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns1"));
        assert!(e
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("pi.")));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u1"));
        let mut binding = event(false, "Scheduled", "Successfully assigned");
        binding.action = "Binding".into();
        let e = core_event(
            &binding,
            &ObjectReference::default(),
            "default-scheduler",
            Some("default-scheduler-vm"),
            Time(jiff::Timestamp::now()),
        );
        assert_eq!(e.action.as_deref(), Some("Binding"));
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            e.reporting_instance.as_deref(),
            Some("default-scheduler-vm")
        );
    }
}
