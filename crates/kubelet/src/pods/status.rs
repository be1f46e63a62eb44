//! Pod status as upstream's kubelet computes it: container statuses (waiting / running /
//! terminated, last state, restart count, ready, started), the phase and the conditions.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::cri::types::{ContainerState, ContainerStatus};

/// RFC 3339 time of a CRI timestamp (nanoseconds since the epoch).
pub fn cri_time(nanos: i64) -> Option<String> {
    if nanos <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(nanos as i128)
        .ok()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// What the worker knows about one container of the spec.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Image of the spec (reported until an instance says which image it runs).
    pub image: String,
    /// Latest instance (CRI status), if any.
    pub current: Option<ContainerStatus>,
    /// The instance before it (for `lastState`).
    pub previous: Option<ContainerStatus>,
    /// A waiting reason/message that overrides the runtime state (back-off, pull error).
    pub waiting: Option<(String, String)>,
    /// Readiness (probe result; true without a readiness probe).
    pub ready_probe: bool,
    /// Startup probe passed (true without one).
    pub started_probe: bool,
    /// The termination message read from the container's message file.
    pub termination_message: Option<String>,
    /// Default waiting reason when no instance exists yet.
    pub default_reason: &'static str,
}

fn terminated(s: &ContainerStatus, message: Option<&str>) -> Value {
    let reason = if !s.reason.is_empty() {
        s.reason.clone()
    } else if s.exit_code == 0 {
        "Completed".to_string()
    } else {
        "Error".to_string()
    };
    let mut t = json!({
        "exitCode": s.exit_code,
        "reason": reason,
        "containerID": format!("containerd://{}", s.id),
    });
    if let Some(v) = cri_time(s.started_at) {
        t["startedAt"] = json!(v);
    }
    if let Some(v) = cri_time(s.finished_at) {
        t["finishedAt"] = json!(v);
    }
    let msg = message
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .or_else(|| Some(s.message.clone()).filter(|m| !m.is_empty()));
    if let Some(m) = msg {
        t["message"] = json!(m);
    }
    json!({"terminated": t})
}

impl ContainerView {
    /// True when the current instance runs.
    pub fn running(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.state == ContainerState::ContainerRunning as i32)
    }

    /// The restart count (the current instance's attempt).
    pub fn restart_count(&self) -> u32 {
        self.current
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| m.attempt)
            .unwrap_or(0)
    }

    /// `ready` of the status.
    pub fn ready(&self) -> bool {
        self.running() && self.started_probe && self.ready_probe
    }

    /// True when the current instance exited with code 0 and is not to be restarted.
    pub fn completed(&self) -> bool {
        self.waiting.is_none()
            && self.current.as_ref().is_some_and(|c| {
                c.state == ContainerState::ContainerExited as i32 && c.exit_code == 0
            })
    }

    /// `ready` of an init container's status, as upstream reports it: a regular init
    /// container is ready once it completed (not while it runs); a restartable one (a
    /// sidecar) while it runs and passes its probes, like a regular container.
    pub fn init_ready(&self, restartable: bool) -> bool {
        if restartable {
            self.ready()
        } else {
            self.completed()
        }
    }

    /// The status entry of an init container (`initContainerStatuses[]`).
    pub fn to_init_status(&self, restartable: bool) -> Value {
        let mut st = self.to_status();
        st["ready"] = json!(self.init_ready(restartable));
        st
    }

    /// The image the status reports: the one the current instance was created from (as
    /// upstream reports the runtime's), else the spec's.
    pub fn status_image(&self) -> &str {
        self.current
            .as_ref()
            .and_then(|c| c.annotations.get(crate::pods::spec::ANN_IMAGE))
            .filter(|i| !i.is_empty())
            .map_or(self.image.as_str(), String::as_str)
    }

    /// The status entry (`containerStatuses[]`).
    pub fn to_status(&self) -> Value {
        let mut st = json!({
            "name": self.name,
            "image": self.status_image(),
            "imageID": "",
            "ready": self.ready(),
            "restartCount": self.restart_count(),
            "started": self.running() && self.started_probe,
            "lastState": {},
        });
        let state = match (&self.current, &self.waiting) {
            (Some(c), _) if c.state == ContainerState::ContainerRunning as i32 => {
                json!({"running": {"startedAt": cri_time(c.started_at)}})
            }
            (_, Some((reason, message))) => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            (Some(c), None) if c.state == ContainerState::ContainerExited as i32 => {
                terminated(c, self.termination_message.as_deref())
            }
            (Some(_), None) => json!({"waiting": {"reason": "ContainerCreating"}}),
            (None, None) => json!({"waiting": {"reason": self.default_reason}}),
        };
        st["state"] = state;
        if let Some(c) = &self.current {
            st["containerID"] = json!(format!("containerd://{}", c.id));
            st["imageID"] = json!(c.image_ref);
            // A current instance that exited but waits for a restart shows itself as the
            // last state; otherwise the previous instance does.
            let waiting_over_exited =
                self.waiting.is_some() && c.state == ContainerState::ContainerExited as i32;
            if waiting_over_exited {
                st["lastState"] = terminated(c, self.termination_message.as_deref());
            } else if let Some(p) = &self.previous {
                st["lastState"] = terminated(p, None);
            }
        }
        st
    }
}

/// Phase of a pod from its container views (upstream's `getPhase`).
pub fn phase(
    restart_policy: &str,
    init: &[ContainerView],
    init_done: bool,
    init_failed: bool,
    containers: &[ContainerView],
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !init_done {
        let _ = init;
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.current {
            Some(s) if s.state == ContainerState::ContainerRunning as i32 => running += 1,
            Some(s) if s.state == ContainerState::ContainerExited as i32 => {
                stopped += 1;
                if s.exit_code == 0 {
                    succeeded += 1;
                }
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "OnFailure" {
            return "Running";
        }
        return "Failed";
    }
    "Pending"
}

/// The strategic merge patch that writes the status `s` the kubelet computed, as
/// upstream's status manager patches (never a PUT, so no conflict with other writers):
/// `conditions` merge by `type`, so conditions the kubelet does not own (readiness
/// gates, `DisruptionTarget`, ...) stay; a `reason` or `message` a condition no longer
/// has is removed (explicit null); `podIPs` and `hostIPs` are replaced whole.
pub fn status_patch(s: &Value) -> Value {
    let mut s = s.clone();
    if let Some(conds) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds.iter_mut().filter_map(Value::as_object_mut) {
            for k in ["reason", "message"] {
                c.entry(k).or_insert(Value::Null);
            }
        }
    }
    for k in ["podIPs", "hostIPs"] {
        if let Some(list) = s.get_mut(k).and_then(Value::as_array_mut) {
            list.insert(0, json!({"$patch": "replace"}));
        }
    }
    json!({ "status": s })
}

/// Upstream's message for a condition listing containers: `containers with incomplete
/// status: [a b]` (Go's formatting of a string slice).
pub fn containers_message(what: &str, names: &[&str]) -> Option<String> {
    (!names.is_empty()).then(|| format!("containers with {what} status: [{}]", names.join(" ")))
}

/// Copies the previous lastTransitionTime when a condition's status did not change.
pub fn condition(pod: &Pod, ty: &str, status: bool, reason: Option<&str>, now: &str) -> Value {
    let s = if status { "True" } else { "False" };
    let prev = pod
        .status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == ty));
    let ltt = match prev {
        Some(p) if p.status == s => p
            .last_transition_time
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        _ => None,
    }
    .unwrap_or_else(|| now.to_string());
    let mut c = json!({"type": ty, "status": s, "lastProbeTime": null, "lastTransitionTime": ltt});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::types::ContainerMetadata;

    fn cs(state: ContainerState, exit: i32, attempt: u32) -> ContainerStatus {
        ContainerStatus {
            id: format!("id{attempt}"),
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt,
            }),
            state: state as i32,
            exit_code: exit,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == ContainerState::ContainerExited {
                1_700_000_001_000_000_000
            } else {
                0
            },
            ..Default::default()
        }
    }

    fn view(c: Option<ContainerStatus>) -> ContainerView {
        ContainerView {
            name: "c".into(),
            current: c,
            ready_probe: true,
            started_probe: true,
            default_reason: "ContainerCreating",
            ..Default::default()
        }
    }

    #[test]
    fn phases() {
        let run = view(Some(cs(ContainerState::ContainerRunning, 0, 0)));
        let ok = view(Some(cs(ContainerState::ContainerExited, 0, 0)));
        let bad = view(Some(cs(ContainerState::ContainerExited, 1, 0)));
        let none = view(None);
        assert_eq!(
            phase("Always", &[], true, false, std::slice::from_ref(&run)),
            "Running"
        );
        assert_eq!(
            phase("Never", &[], true, false, std::slice::from_ref(&ok)),
            "Succeeded"
        );
        assert_eq!(
            phase("Never", &[], true, false, std::slice::from_ref(&bad)),
            "Failed"
        );
        assert_eq!(
            phase("OnFailure", &[], true, false, std::slice::from_ref(&bad)),
            "Running"
        );
        assert_eq!(
            phase("Always", &[], true, false, std::slice::from_ref(&ok)),
            "Running"
        );
        assert_eq!(
            phase("Always", &[], true, false, &[run.clone(), none]),
            "Pending"
        );
        assert_eq!(phase("Always", &[], false, false, &[run]), "Pending");
        assert_eq!(phase("Never", &[], false, true, &[]), "Failed");
    }

    #[test]
    fn status_reports_the_image_the_instance_runs() {
        let mut v = view(Some(cs(ContainerState::ContainerRunning, 0, 0)));
        v.image = "httpd:2".into();
        // An instance created before the annotation existed: the spec's image.
        assert_eq!(v.to_status()["image"], "httpd:2");
        if let Some(c) = v.current.as_mut() {
            c.annotations.insert(
                crate::pods::spec::ANN_IMAGE.to_string(),
                "agnhost:2.20".into(),
            );
        }
        // The spec changed to httpd, the container still runs agnhost.
        assert_eq!(v.to_status()["image"], "agnhost:2.20");
        v.current = None;
        assert_eq!(v.to_status()["image"], "httpd:2");
    }

    /// Patch strategies of the fields the status patch touches (upstream's).
    struct PodSchema;

    impl rk3s_patch::PatchSchema for PodSchema {
        fn field(&self, type_name: &str, field: &str) -> Option<rk3s_patch::FieldMeta> {
            let (ty, key) = match (type_name, field) {
                ("Pod", "status") => ("PodStatus", None),
                ("PodStatus", "conditions") => ("PodCondition", Some("type")),
                ("PodStatus", "podIPs") => ("PodIP", Some("ip")),
                ("PodStatus", "hostIPs") => ("HostIP", Some("ip")),
                _ => return None,
            };
            Some(rk3s_patch::FieldMeta {
                type_name: Some(ty.to_string()),
                is_list: key.is_some(),
                patch_strategy: key.map(|_| vec!["merge".to_string()]).unwrap_or_default(),
                merge_key: key.map(str::to_string),
                ..Default::default()
            })
        }
    }

    #[test]
    fn status_patch_keeps_what_others_wrote() {
        let stored = json!({
            "metadata": {"name": "p"},
            "status": {
                "phase": "Running",
                "podIPs": [{"ip": "10.42.0.5"}],
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                     "message": "containers with unready status: [c]"},
                    {"type": "example.com/gate", "status": "True"},
                ],
            },
        });
        let kubelet = json!({
            "phase": "Running",
            "podIP": "10.42.0.9",
            "podIPs": [{"ip": "10.42.0.9"}],
            "conditions": [
                {"type": "Ready", "status": "True", "lastProbeTime": null},
            ],
        });
        let patched = rk3s_patch::apply_strategic_merge_patch(
            &stored,
            &status_patch(&kubelet),
            &PodSchema,
            "Pod",
        );
        let Ok(p) = patched else {
            panic!("patch failed: {patched:?}")
        };
        let conds = p["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(conds.len(), 2, "{conds:?}");
        let ready = conds.iter().find(|c| c["type"] == "Ready");
        assert_eq!(
            ready,
            Some(&json!({"type": "Ready", "status": "True"})),
            "the kubelet's condition is written whole, without the old reason"
        );
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == "example.com/gate" && c["status"] == "True"),
            "a readiness gate's condition stays"
        );
        assert_eq!(p["status"]["podIPs"], json!([{"ip": "10.42.0.9"}]));
    }

    #[test]
    fn completed_init_containers_are_ready() {
        let done = view(Some(cs(ContainerState::ContainerExited, 0, 0)));
        assert!(
            !done.ready(),
            "a regular container that exited is not ready"
        );
        assert_eq!(done.to_init_status(false)["ready"], true);
        let failed = view(Some(cs(ContainerState::ContainerExited, 1, 0)));
        assert_eq!(failed.to_init_status(false)["ready"], false);
        let running = view(Some(cs(ContainerState::ContainerRunning, 0, 0)));
        assert_eq!(
            running.to_init_status(true)["ready"],
            true,
            "a sidecar that runs"
        );
        assert_eq!(
            running.to_init_status(false)["ready"],
            false,
            "a regular init container is not ready while it runs"
        );
        assert_eq!(view(None).to_init_status(false)["ready"], false);
        assert_eq!(
            containers_message("incomplete", &["init1", "init2"]).as_deref(),
            Some("containers with incomplete status: [init1 init2]")
        );
        assert_eq!(containers_message("unready", &[]), None);
    }

    #[test]
    fn crash_loop_status_shows_last_state() {
        let mut v = view(Some(cs(ContainerState::ContainerExited, 1, 3)));
        v.waiting = Some((
            "CrashLoopBackOff".into(),
            "back-off 40s restarting failed container=c pod=p_d(u)".into(),
        ));
        let s = v.to_status();
        assert_eq!(s["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(s["restartCount"], 3);
        assert_eq!(s["ready"], false);
        let done = view(Some(cs(ContainerState::ContainerExited, 0, 0))).to_status();
        assert_eq!(done["state"]["terminated"]["reason"], "Completed");
        assert_eq!(
            done["state"]["terminated"]["finishedAt"],
            "2023-11-14T22:13:21Z"
        );
        let run = view(Some(cs(ContainerState::ContainerRunning, 0, 0))).to_status();
        assert_eq!(run["ready"], true);
        assert_eq!(run["state"]["running"]["startedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(
            view(None).to_status()["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
    }
}
