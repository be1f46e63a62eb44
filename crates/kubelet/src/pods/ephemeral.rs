//! Ephemeral containers (`kubectl debug`): containers added to a running pod through the
//! `pods/ephemeralcontainers` subresource. As upstream's kubelet: each is started once
//! in the pod's sandbox after the pod's containers, never restarted; with
//! `targetContainerName` it joins the target container's process namespace (so `ps`
//! shows the target's processes); and its state is reported in
//! `status.ephemeralContainerStatuses` (ready is always false).
//!
//! Not supported yet: `volumeMounts` and `env` from ConfigMaps/Secrets/the downward API
//! (literal `env` values are), image pull secrets.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

use super::spec::{self, Env};
use super::status::ContainerView;
use super::{Shared, LABEL_POD_UID};
use crate::cri::types::{ContainerFilter, ContainerState, ContainerStatus, NamespaceMode};
use crate::cri::CriError;

/// What was last reported per pod uid (status) and start errors per (uid, container);
/// only pods that had ephemeral containers have entries.
#[derive(Default)]
struct Memory {
    reported: HashMap<String, Value>,
    waiting: HashMap<(String, String), (String, String)>,
}

fn memory() -> &'static Mutex<Memory> {
    static M: OnceLock<Mutex<Memory>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(Memory::default()))
}

fn grpc_message(e: &CriError) -> String {
    match e {
        CriError::NotFound { message, .. } => {
            format!("rpc error: code = NotFound desc = {message}")
        }
        CriError::Timeout { message, .. } => {
            format!("rpc error: code = DeadlineExceeded desc = {message}")
        }
        CriError::Unavailable { message, .. } => {
            format!("rpc error: code = Unavailable desc = {message}")
        }
        CriError::Status { code, message, .. } => {
            format!("rpc error: code = {code:?} desc = {message}")
        }
        other => other.to_string(),
    }
}

/// The ephemeral container as a [`Container`] (the same fields, without
/// `targetContainerName`), so the container config is built the same way.
pub fn as_container(ec: &EphemeralContainer) -> Option<Container> {
    let mut v = serde_json::to_value(ec).ok()?;
    v.as_object_mut()?.remove("targetContainerName");
    serde_json::from_value(v).ok()
}

/// The literal environment of the container (`value`s; `$(VAR)` references expanded).
fn literal_env(c: &Container) -> Env {
    let mut env: Env = Vec::new();
    for e in c.env.iter().flatten() {
        let Some(raw) = e.value.as_deref() else {
            continue;
        };
        let value = {
            let lookup: HashMap<&str, &str> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            spec::expand(raw, &|k| lookup.get(k).map(|v| v.to_string()))
        };
        env.retain(|(k, _)| *k != e.name);
        env.push((e.name.clone(), value));
    }
    env
}

/// The image's id, pulling it as the pull policy says (no back-off: an ephemeral
/// container is started once). Errors are (reason, message).
async fn ensure_image(sh: &Shared, pod: &Pod, c: &Container) -> Result<String, (String, String)> {
    match super::worker::present_image(sh, c).await? {
        (_, Some(id)) => Ok(id),
        (spec, None) => super::worker::pull_with_secrets(sh, pod, &spec)
            .await
            .map_err(|m| ("ErrImagePull".to_string(), m)),
    }
}

/// The latest instance of each container of the pod, by name.
async fn instances(sh: &Shared, uid: &str) -> HashMap<String, ContainerStatus> {
    let mut sel = HashMap::new();
    sel.insert(LABEL_POD_UID.to_string(), uid.to_string());
    let filter = ContainerFilter {
        label_selector: sel,
        ..Default::default()
    };
    let mut out: HashMap<String, ContainerStatus> = HashMap::new();
    for c in sh
        .cri
        .list_containers(Some(filter))
        .await
        .unwrap_or_default()
    {
        let Ok(s) = sh.cri.container_status(&c.id).await else {
            continue;
        };
        let name = s
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        if out.get(&name).is_none_or(|o| o.created_at < s.created_at) {
            out.insert(name, s);
        }
    }
    out
}

/// Creates and starts one ephemeral container in the sandbox.
async fn start(
    sh: &Shared,
    pod: &Pod,
    ec: &EphemeralContainer,
    target_id: Option<&str>,
    sandbox_id: &str,
    sandbox_attempt: u32,
) -> Result<(), (String, String)> {
    let c = as_container(ec).ok_or_else(|| {
        (
            "CreateContainerConfigError".to_string(),
            "invalid ephemeral container".to_string(),
        )
    })?;
    let image = ensure_image(sh, pod, &c).await?;
    let env = literal_env(&c);
    let sandbox_config = spec::sandbox_config(pod, &sh.ctx, sandbox_attempt);
    let _ =
        std::fs::create_dir_all(std::path::Path::new(&sandbox_config.log_directory).join(&c.name));
    let mut cfg = spec::container_config(pod, &c, 0, &env, Vec::new(), &image, sh.ctx.node_memory);
    if let Some(target) = target_id {
        if let Some(ns) = cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.pid = NamespaceMode::Target as i32;
            ns.target_id = target.to_string();
        }
    }
    let id = sh
        .cri
        .create_container(sandbox_id, cfg, sandbox_config)
        .await
        .map_err(|e| ("CreateContainerError".to_string(), grpc_message(&e)))?;
    sh.cri
        .start_container(&id)
        .await
        .map_err(|e| ("RunContainerError".to_string(), grpc_message(&e)))
}

/// Starts the pod's ephemeral containers that have no instance yet (once; an exited one
/// stays exited) and reports `status.ephemeralContainerStatuses` when it changed.
/// Called by the pod worker's sync once the sandbox is ready.
pub(crate) async fn sync(sh: &Shared, pod: &Pod, sandbox_id: &str, sandbox_attempt: u32) {
    let ephemeral = pod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.clone())
        .unwrap_or_default();
    if ephemeral.is_empty() {
        return;
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut current = instances(sh, &uid).await;
    let mut started = false;
    for ec in &ephemeral {
        if current.contains_key(&ec.name) {
            continue;
        }
        let target = match ec
            .target_container_name
            .as_deref()
            .filter(|t| !t.is_empty())
        {
            None => None,
            Some(t) => match current
                .get(t)
                .filter(|s| s.state == ContainerState::ContainerRunning as i32)
            {
                Some(s) => Some(s.id.clone()),
                // The target is not running (yet): try again at the next sync.
                None => continue,
            },
        };
        let r = start(sh, pod, ec, target.as_deref(), sandbox_id, sandbox_attempt).await;
        if let Ok(mut m) = memory().lock() {
            match &r {
                Ok(()) => m.waiting.remove(&(uid.clone(), ec.name.clone())),
                Err(w) => m.waiting.insert((uid.clone(), ec.name.clone()), w.clone()),
            };
        }
        match r {
            Ok(()) => {
                tracing::info!(pod = ?pod.metadata.name, container = %ec.name, target = ?ec.target_container_name, "started ephemeral container");
                started = true;
            }
            Err((reason, message)) => {
                tracing::warn!(pod = ?pod.metadata.name, container = %ec.name, %reason, %message, "ephemeral container did not start")
            }
        }
    }
    if started {
        current = instances(sh, &uid).await;
    }
    let statuses: Vec<Value> = {
        let m = memory().lock().ok();
        ephemeral
            .iter()
            .map(|ec| {
                let waiting = m
                    .as_ref()
                    .and_then(|m| m.waiting.get(&(uid.clone(), ec.name.clone())).cloned());
                let cur = current.get(&ec.name).cloned();
                status_of(ec, cur, waiting)
            })
            .collect()
    };
    let body = json!(statuses);
    if memory()
        .lock()
        .ok()
        .and_then(|m| m.reported.get(&uid).cloned())
        .as_ref()
        == Some(&body)
    {
        return;
    }
    let api: Api<Pod> = Api::namespaced(
        sh.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({"status": {"ephemeralContainerStatuses": body}});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            if let Ok(mut m) = memory().lock() {
                m.reported.insert(uid, body);
            }
        }
        Err(e) => {
            tracing::warn!(pod = %name, error = %e, "ephemeral container status update failed")
        }
    }
}

/// The `ephemeralContainerStatuses[]` entry of one ephemeral container: its instance's
/// state (an instance that exists wins over a remembered start error), never ready.
pub fn status_of(
    ec: &EphemeralContainer,
    current: Option<ContainerStatus>,
    waiting: Option<(String, String)>,
) -> Value {
    let waiting = if current.is_some() { None } else { waiting };
    let view = ContainerView {
        name: ec.name.clone(),
        image: ec.image.clone().unwrap_or_default(),
        current,
        previous: None,
        waiting,
        ready_probe: false,
        started_probe: true,
        termination_message: None,
        default_reason: "ContainerCreating",
    };
    view.to_status()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::types::ContainerMetadata;

    fn ec(v: Value) -> EphemeralContainer {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn ephemeral_containers_convert_to_containers() {
        let e = ec(
            json!({"name": "debugger-x", "image": "busybox", "targetContainerName": "app", "stdin": true, "tty": true,
            "command": ["sh"], "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "$(A)-2"}]}),
        );
        let Some(c) = as_container(&e) else {
            panic!("conversion")
        };
        assert_eq!(c.name, "debugger-x");
        assert_eq!(c.command, Some(vec!["sh".to_string()]));
        assert_eq!((c.stdin, c.tty), (Some(true), Some(true)));
        assert_eq!(
            literal_env(&c),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "1-2".to_string())
            ]
        );
    }

    #[test]
    fn statuses_are_never_ready() {
        let e = ec(json!({"name": "dbg", "image": "busybox"}));
        let s = status_of(&e, None, None);
        assert_eq!(s["name"], "dbg");
        assert_eq!(
            s["state"],
            json!({"waiting": {"reason": "ContainerCreating"}})
        );
        let s = status_of(
            &e,
            None,
            Some(("ErrImageNeverPull".into(), "not present".into())),
        );
        assert_eq!(s["state"]["waiting"]["reason"], "ErrImageNeverPull");
        let running = ContainerStatus {
            id: "abc".into(),
            metadata: Some(ContainerMetadata {
                name: "dbg".into(),
                attempt: 0,
            }),
            state: ContainerState::ContainerRunning as i32,
            started_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let s = status_of(
            &e,
            Some(running.clone()),
            Some(("X".into(), "old error".into())),
        );
        assert_eq!(s["state"]["running"]["startedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(s["ready"], false);
        assert_eq!(s["restartCount"], 0);
        assert_eq!(s["containerID"], "containerd://abc");
        let exited = ContainerStatus {
            state: ContainerState::ContainerExited as i32,
            exit_code: 0,
            finished_at: 1_700_000_001_000_000_000,
            ..running
        };
        let s = status_of(&e, Some(exited), None);
        assert_eq!(s["state"]["terminated"]["reason"], "Completed");
        assert_eq!(s["state"]["terminated"]["exitCode"], 0);
    }
}
