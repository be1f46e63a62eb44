//! The event recorder of every controller: `events.k8s.io/v1` Events with upstream's
//! fields (`reportingController` = the component, `reportingInstance`, `regarding`,
//! `related`, `reason`, `action`, `note`, `type`), repeats of one event folded into an
//! `EventSeries` with a count (kube-runtime's `Recorder`, which keeps upstream's
//! series cache). Repeats are the same type, reason, object and message: the series key
//! of kube-runtime has no message, so [`event`] carries the message (at most its first
//! 128 bytes) in `action`, and "Created pod: a" and "Created pod: b" stay two events
//! as with upstream's controllers (whose recorder keys repeats by message). Recording
//! never fails the caller: a failed write is logged.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Recorder, Reporter};

pub use kube::runtime::events::{Event, EventType};

/// Records events for one component (e.g. `job-controller`, `default-scheduler`).
/// Cloning is cheap (clones share the series cache).
#[derive(Clone)]
pub struct EventRecorder {
    recorder: Recorder,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder").finish_non_exhaustive()
    }
}

/// The longest `action` in bytes (the API's limit).
const MAX_ACTION: usize = 128;

/// The `Event` of a `type`/`reason`/`note`; its action is the note's longest prefix of
/// at most 128 bytes, so that only repeats of the same message fold into one series.
pub fn event(warning: bool, reason: &str, note: impl Into<String>) -> Event {
    let note = note.into();
    let mut end = note.len().min(MAX_ACTION);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    let action = note[..end].to_string();
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        action: if action.is_empty() {
            reason.to_string()
        } else {
            action
        },
        note: Some(note),
        secondary: None,
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
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: component.to_string(),
                    instance,
                },
            ),
        }
    }

    /// Records `ev` about the object `regarding`.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) {
        if let Err(e) = self.recorder.publish(ev, regarding).await {
            tracing::debug!(error = %e, reason = %ev.reason, "could not record event");
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
    fn events_carry_type_reason_action_and_note() {
        let e = event(true, "FailedCreate", "quota exceeded");
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "FailedCreate");
        assert_eq!(e.note.as_deref(), Some("quota exceeded"));
        assert_eq!(event(false, "Scheduled", "x").type_, EventType::Normal);
        // Distinct messages are distinct series; the same message repeats one.
        let a = event(false, "SuccessfulCreate", "Created pod: a");
        let b = event(false, "SuccessfulCreate", "Created pod: b");
        assert_ne!(a.action, b.action);
        assert_eq!(
            a.action,
            event(false, "SuccessfulCreate", "Created pod: a").action
        );
        // The action stays within the API's 128 bytes; an empty note keeps one.
        assert_eq!(event(false, "R", "é".repeat(300)).action, "é".repeat(64));
        assert_eq!(
            event(false, "R", format!("x{}", "é".repeat(300)))
                .action
                .len(),
            127
        );
        assert_eq!(event(false, "R", "").action, "R");
    }
}
