//! One pod's worker: syncs the pod with the runtime whenever its spec changes, the
//! runtime reports a change, a probe result changes, or a timer (back-off, resync) fires.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use super::probes::{self, ProbeKind, ProbeTable};
use super::spec::{self, Env};
use super::status::{self, ContainerView};
use super::{pod_sandboxes, stop_all_containers, Shared, LABEL_POD_UID};
use crate::cri::types::{ContainerFilter, ContainerState, ContainerStatus, PodSandboxState};
use crate::cri::{CriClient, CriError};
use crate::events::{reason, EventType, Recorder};
use crate::volumes::{PodVolumes, VolumeInfo};

/// Initial CrashLoopBackOff / image pull back-off.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Largest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Resync period of a pod without events.
const RESYNC: Duration = Duration::from_secs(10);
/// Upstream's pod worker back-off (`workerBackOffPeriod`): a sync that failed on the
/// image (ErrImagePull, ImagePullBackOff, ...) is retried after this (not when the
/// kubelet's own status patch comes back). So `ErrImagePull` stands until that retry,
/// which, inside the pull back-off, shows `ImagePullBackOff`; the retry after the
/// back-off pulls again.
const WORKER_BACKOFF: Duration = Duration::from_secs(10);
/// Retry of a sync that failed starting a container for another reason.
const START_RETRY: Duration = Duration::from_secs(2);
/// The shortest time a container gets between SIGTERM and SIGKILL (upstream's
/// `minimumGracePeriodInSeconds`).
const MIN_GRACE: i64 = 2;
/// How often configMap/secret/projected volumes are refreshed.
const VOLUME_RESYNC: Duration = Duration::from_secs(30);

#[derive(Default)]
struct PodState {
    vols: PodVolumes,
    volume_info: Option<HashMap<String, VolumeInfo>>,
    volumes_synced: Option<Instant>,
    /// Image pull back-off per container: (retry after, current delay).
    pull: HashMap<String, (Instant, Duration)>,
    /// Crash back-off per container name (current delay).
    crash: HashMap<String, Duration>,
    /// Waiting reason/message per container name (start errors, back-off).
    waiting: HashMap<String, (String, String)>,
    probes: ProbeTable,
    probe_tasks: HashMap<(String, ProbeKind), tokio::task::JoinHandle<()>>,
    killing: std::collections::HashSet<String>,
    last_status: Option<Value>,
    start_time: Option<String>,
    sandbox_error: Option<String>,
    stopped_terminal: bool,
    /// The phase this worker last reported is terminal (Succeeded/Failed): the worker
    /// does not wait for its own status patch to come back through the watch.
    reported_terminal: bool,
    /// A sync reached the containers once.
    synced_once: bool,
    /// Containers killed because their definition (image) changed: started again at
    /// once, whatever the restart policy and back-off.
    definition_changed: std::collections::HashSet<String>,
}

impl Drop for PodState {
    fn drop(&mut self) {
        for (_, t) in self.probe_tasks.drain() {
            t.abort();
        }
    }
}

enum Next {
    Done,
    After(Duration),
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Runs the worker of one pod until the pod is gone.
pub(super) async fn run(sh: Arc<Shared>, mut rx: watch::Receiver<Option<Pod>>, wake: Arc<Notify>) {
    let mut st = PodState::default();
    let mut last_pod: Option<Pod> = None;
    let mut syncs: u64 = 0;
    let mut cause = "new";
    loop {
        let cur = rx.borrow_and_update().clone();
        let next = match cur {
            None => {
                if let Some(p) = &last_pod {
                    let grace = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .unwrap_or(30)
                        .min(2);
                    terminate(&sh, &mut st, p, grace).await;
                }
                return;
            }
            Some(pod) => {
                syncs += 1;
                tracing::debug!(pod = %pod_key(&pod), syncs, cause, "pod sync");
                let r = sync(&sh, &mut st, &pod, &wake).await;
                let deadline = active_deadline_left(&pod, &st);
                last_pod = Some(pod);
                match r {
                    Next::Done => return,
                    // Wake up when activeDeadlineSeconds runs out.
                    Next::After(d) => deadline.map_or(d, |left| d.min(left)),
                }
            }
        };
        cause = tokio::select! {
            r = rx.changed() => if r.is_err() { return } else { "update" },
            _ = wake.notified() => "runtime",
            _ = tokio::time::sleep(next) => "timer",
        };
    }
}

/// Time left before the pod's `activeDeadlineSeconds` (counted from its start time) runs
/// out: `None` without a deadline or start time, zero once exceeded.
fn active_deadline_left(pod: &Pod, st: &PodState) -> Option<Duration> {
    let deadline = pod.spec.as_ref()?.active_deadline_seconds?;
    let started: jiff::Timestamp = st.start_time.as_deref()?.parse().ok()?;
    let elapsed = jiff::Timestamp::now().as_second() - started.as_second();
    Some(Duration::from_secs(
        u64::try_from(deadline.saturating_sub(elapsed)).unwrap_or(0),
    ))
}

/// Upstream's active-deadline handling: the pod's containers are stopped and it fails
/// with reason `DeadlineExceeded` (an Event says so).
async fn deadline_exceeded(sh: &Arc<Shared>, st: &mut PodState, pod: &Pod) -> Next {
    const MESSAGE: &str = "Pod was active on the node longer than the specified deadline";
    sh.events
        .pod_event(pod, EventType::Normal, "DeadlineExceeded", MESSAGE);
    for (_, t) in st.probe_tasks.drain() {
        t.abort();
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    for s in pod_sandboxes(&sh.cri, &uid).await {
        if s.state == PodSandboxState::SandboxReady as i32 {
            stop_all_containers(&sh.cri, &s.id, grace).await;
            let _ = sh.cri.stop_pod_sandbox(&s.id).await;
        }
    }
    let api: Api<Pod> = Api::namespaced(
        sh.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let patch =
        json!({"status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": MESSAGE}});
    match api
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            st.reported_terminal = true;
            st.stopped_terminal = true;
            Next::After(Duration::from_secs(60))
        }
        Err(e) => {
            tracing::warn!(pod = %pod_key(pod), error = %e, "reporting DeadlineExceeded failed; retrying");
            Next::After(Duration::from_secs(1))
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
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

/// Default pull policy of an image (as API defaulting would set it).
fn pull_policy(c: &Container) -> String {
    if let Some(p) = c.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p.to_string();
    }
    let image = c.image.as_deref().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
        "IfNotPresent".into()
    } else {
        "Always".into()
    }
}

/// The container's image with its default tag applied, and the image's id when it is
/// present and the pull policy lets the present copy be used (`None`: pull it). Errors
/// are (reason, message) as upstream's image manager reports them.
pub(super) async fn present_image(
    sh: &Shared,
    c: &Container,
) -> Result<(String, Option<String>), (String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let policy = pull_policy(c);
    let spec = crate::image::pull::apply_default_tag(&image).map_err(|e| {
        (
            "InvalidImageName".to_string(),
            format!("Failed to apply default image tag {image:?}: {e}"),
        )
    })?;
    if policy == "Always" {
        return Ok((spec, None));
    }
    match sh.cri.image_status(&spec).await {
        Ok(Some(img)) => Ok((spec, Some(img.id))),
        Ok(None) if policy == "Never" => Err((
            "ErrImageNeverPull".into(),
            format!("Container image {image:?} is not present with pull policy of Never"),
        )),
        Ok(None) => Ok((spec, None)),
        Err(e) => Err((
            "ErrImageInspect".into(),
            format!("Failed to inspect image \"\": {}", grpc_message(&e)),
        )),
    }
}

/// Pulls `spec` with the pod's pull secrets (logic in [`crate::image::pull`]); the error
/// is the message of an `ErrImagePull`.
pub(super) async fn pull_with_secrets(
    sh: &Shared,
    pod: &Pod,
    spec: &str,
) -> Result<String, String> {
    use crate::image::pull;
    let secrets = pull::pull_secrets(&sh.client, pod).await;
    let creds = pull::credentials_for(spec, &secrets).map_err(|e| e.to_string())?;
    pull::pull(&sh.cri, spec, creds, grpc_message).await
}

/// Makes sure the container's image is present, pulling it as the pull policy says, with
/// upstream's pull back-off per container.
async fn ensure_image(
    sh: &Shared,
    st: &mut PodState,
    pod: &Pod,
    c: &Container,
) -> Result<String, (String, String)> {
    use crate::image::pull;
    let (spec, present) = present_image(sh, c).await?;
    if let Some(id) = present {
        return Ok(id);
    }
    let image = c.image.clone().unwrap_or_default();
    let key = pull::backoff_key(pod.metadata.uid.as_deref().unwrap_or_default(), &image);
    if st
        .pull
        .get(&c.name)
        .is_some_and(|(until, _)| Instant::now() < *until)
    {
        return Err((
            "ImagePullBackOff".into(),
            pull::backoff_message(&key, &image),
        ));
    }
    pull::forget_error(&key);
    match pull_with_secrets(sh, pod, &spec).await {
        Ok(r) => {
            st.pull.remove(&c.name);
            Ok(r)
        }
        Err(msg) => {
            let delay = st
                .pull
                .get(&c.name)
                .map(|(_, d)| (*d * 2).min(BACKOFF_MAX))
                .unwrap_or(BACKOFF_INITIAL);
            st.pull
                .insert(c.name.clone(), (Instant::now() + delay, delay));
            pull::remember_error(&key, "ErrImagePull", &msg);
            Err(("ErrImagePull".into(), msg))
        }
    }
}

async fn service_env(sh: &Shared, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |svcs: Vec<Service>| {
        for s in svcs {
            let Some(spec) = s.spec else { continue };
            let name = s.metadata.name.unwrap_or_default();
            let ports: Vec<(Option<String>, i32, String)> = spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.port,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
                .collect();
            out.extend(spec::service_env(
                &name,
                spec.cluster_ip.as_deref().unwrap_or_default(),
                &ports,
            ));
        }
    };
    let api: Api<Service> = Api::namespaced(sh.client.clone(), ns);
    if let Ok(l) = api.list(&ListParams::default()).await {
        add(l.items);
    }
    if ns != "default" {
        let api: Api<Service> = Api::namespaced(sh.client.clone(), "default");
        if let Ok(Some(k)) = api.get_opt("kubernetes").await {
            add(vec![k]);
        }
    }
    out
}

async fn build_env(sh: &Shared, pod: &Pod, c: &Container, pod_ip: &str) -> Result<Env, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            env.push((k, v));
        }
    };
    let cms: Api<ConfigMap> = Api::namespaced(sh.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(sh.client.clone(), ns);
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match cms.get_opt(&r.name).await.map_err(|e| e.to_string())? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secrets.get_opt(&r.name).await.map_err(|e| e.to_string())? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    let mut pod_with_ip = pod.clone();
    if let Some(s) = pod_with_ip.status.as_mut() {
        if !pod_ip.is_empty() {
            s.pod_ip = Some(pod_ip.to_string());
        }
    } else {
        pod_with_ip.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some(pod_ip.to_string()),
            ..Default::default()
        });
    }
    let services = if pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true)
    {
        service_env(sh, ns).await
    } else {
        let mut m = service_env(sh, "default").await;
        m.retain(|k, _| k.starts_with("KUBERNETES_"));
        m
    };
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            let lookup: HashMap<String, String> = services
                .clone()
                .into_iter()
                .chain(env.iter().cloned())
                .collect();
            spec::expand(v, &|k: &str| lookup.get(k).cloned())
        } else if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                crate::volumes::field_value(&pod_with_ip, &f.field_path, &sh.cfg.node_ip)
                    .ok_or_else(|| format!("unsupported fieldPath {:?}", f.field_path))?
            } else if let Some(r) = &src.resource_field_ref {
                let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(n) => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|c| c.name == n))
                        .unwrap_or(c),
                    None => c,
                };
                crate::volumes::resource_value(
                    target,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    sh.node_cpus,
                    sh.ctx.node_memory,
                )
                .unwrap_or_default()
            } else if let Some(r) = &src.config_map_key_ref {
                match cms.get_opt(&r.name).await.map_err(|e| e.to_string())? {
                    Some(cm) => match cm.data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => v,
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ))
                        }
                    },
                    None if r.optional.unwrap_or(false) => continue,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            } else if let Some(r) = &src.secret_key_ref {
                match secrets.get_opt(&r.name).await.map_err(|e| e.to_string())? {
                    Some(s) => match s.data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ))
                        }
                    },
                    None if r.optional.unwrap_or(false) => continue,
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, e.name.clone(), value);
    }
    for (k, v) in services {
        if !env.iter().any(|(n, _)| *n == k) {
            env.push((k, v));
        }
    }
    Ok(env)
}

fn termination_file(sh: &Shared, uid: &str, name: &str, attempt: u32) -> std::path::PathBuf {
    sh.cfg
        .pods_root()
        .join(uid)
        .join("containers")
        .join(name)
        .join(attempt.to_string())
}

/// [`ensure_image`] with the image manager's events, as upstream records them:
/// `Pulled` ("already present on machine" / "Successfully pulled"), `Pulling`,
/// `ErrImageNeverPull`, `BackOff` (pull back-off) and `Failed` (pull failed).
async fn ensure_image_with_events(
    sh: &Shared,
    st: &mut PodState,
    pod: &Pod,
    c: &Container,
) -> Result<String, (String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let policy = pull_policy(c);
    let present = match crate::image::pull::apply_default_tag(&image) {
        Ok(spec) if policy != "Always" => sh.cri.image_status(&spec).await.ok().flatten().is_some(),
        _ => false,
    };
    let in_backoff = st
        .pull
        .get(&c.name)
        .is_some_and(|(until, _)| Instant::now() < *until);
    let pulling = !present && policy != "Never" && !in_backoff;
    let ev = |ty: EventType, r: &str, m: String| sh.events.container_event(pod, &c.name, ty, r, m);
    if pulling {
        ev(
            EventType::Normal,
            reason::PULLING,
            format!("Pulling image {image:?}"),
        );
    }
    let t = Instant::now();
    match ensure_image(sh, st, pod, c).await {
        Ok(id) => {
            if pulling {
                let d = t.elapsed();
                ev(
                    EventType::Normal,
                    reason::PULLED,
                    format!(
                        "Successfully pulled image {image:?} in {d:?} ({d:?} including waiting)"
                    ),
                );
            } else {
                ev(
                    EventType::Normal,
                    reason::PULLED,
                    format!("Container image {image:?} already present on machine"),
                );
            }
            Ok(id)
        }
        Err((r, m)) => {
            match r.as_str() {
                "ErrImageNeverPull" => {
                    ev(EventType::Warning, reason::ERR_IMAGE_NEVER_PULL, m.clone())
                }
                "ImagePullBackOff" => ev(EventType::Normal, reason::BACK_OFF, m.clone()),
                "ErrImagePull" => ev(
                    EventType::Warning,
                    reason::FAILED,
                    format!("Failed to pull image {image:?}: {m}"),
                ),
                _ => {}
            }
            Err((r, m))
        }
    }
}

/// When to sync again after starting a container failed with `reason`: image errors
/// wait for the worker back-off, other errors (a missing ConfigMap, a runtime error)
/// are retried sooner.
fn retry_after(reason: &str) -> Duration {
    if is_image_error(reason) {
        WORKER_BACKOFF
    } else {
        START_RETRY
    }
}

/// The waiting reasons of upstream's image manager.
fn is_image_error(reason: &str) -> bool {
    matches!(
        reason,
        "ErrImagePull"
            | "ImagePullBackOff"
            | "ErrImageNeverPull"
            | "InvalidImageName"
            | "ErrImageInspect"
    )
}

/// Creates and starts one container instance. Errors are (reason, message) for the
/// container's waiting state.
#[allow(clippy::too_many_arguments)]
async fn start_container(
    sh: &Shared,
    st: &mut PodState,
    pod: &Pod,
    c: &Container,
    attempt: u32,
    sandbox_id: &str,
    sandbox_attempt: u32,
    pod_ip: &str,
) -> Result<(), (String, String)> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let ev = &sh.events;
    let failed = |msg: &str| {
        ev.container_event(
            pod,
            &c.name,
            EventType::Warning,
            reason::FAILED,
            format!("Error: {msg}"),
        )
    };
    let image = ensure_image_with_events(sh, st, pod, c)
        .await
        .inspect_err(|(r, _)| failed(r))?;
    let env = build_env(sh, pod, c, pod_ip)
        .await
        .map_err(|m| ("CreateContainerConfigError".to_string(), m))
        .inspect_err(|(_, m)| failed(m))?;
    let vols = st.volume_info.clone().unwrap_or_default();
    let mut mounts = crate::volumes::container_mounts(c, &vols, &env)
        .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))
        .inspect_err(|(_, m)| failed(m))?;
    let tpath = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    if !tpath.is_empty() {
        let f = termination_file(sh, uid, &c.name, attempt);
        if let Some(parent) = f.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if std::fs::write(&f, b"").is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666));
            mounts.push(crate::cri::types::Mount {
                container_path: tpath,
                host_path: f.to_string_lossy().into_owned(),
                ..Default::default()
            });
        }
    }
    // The kubelet-managed /etc/hosts (unless the container mounts its own there).
    if !mounts.iter().any(|m| m.container_path == "/etc/hosts") {
        if let Some(text) = spec::etc_hosts(pod, pod_ip, &sh.ctx.cluster_domain) {
            let f = sh.cfg.pods_root().join(uid).join("etc-hosts");
            if let Some(parent) = f.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            match std::fs::write(&f, text) {
                Ok(()) => mounts.push(crate::cri::types::Mount {
                    container_path: "/etc/hosts".into(),
                    host_path: f.to_string_lossy().into_owned(),
                    ..Default::default()
                }),
                Err(e) => {
                    tracing::warn!(pod = %pod_key(pod), error = %e, "cannot write the pod's /etc/hosts")
                }
            }
        }
    }
    let sandbox_config = spec::sandbox_config(pod, &sh.ctx, sandbox_attempt);
    let log_dir = std::path::Path::new(&sandbox_config.log_directory).join(&c.name);
    let _ = std::fs::create_dir_all(&log_dir);
    let cfg = spec::container_config(pod, c, attempt, &env, mounts, &image, sh.ctx.node_memory);
    let id = sh
        .cri
        .create_container(sandbox_id, cfg, sandbox_config)
        .await
        .map_err(|e| ("CreateContainerError".to_string(), grpc_message(&e)))
        .inspect_err(|(_, m)| failed(m))?;
    ev.container_event(
        pod,
        &c.name,
        EventType::Normal,
        reason::CREATED,
        format!("Created container: {}", c.name),
    );
    if let Err(e) = sh.cri.start_container(&id).await {
        failed(&grpc_message(&e));
        return Err(("RunContainerError".to_string(), grpc_message(&e)));
    }
    ev.container_event(
        pod,
        &c.name,
        EventType::Normal,
        reason::STARTED,
        format!("Started container {}", c.name),
    );
    // postStart hooks run right after the start (upstream blocks the container's Running
    // report on them; here they run in the background). A failed hook kills the
    // container, which then restarts as the restartPolicy says.
    if let Some(hook) = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .filter(|h| h.exec.is_some() || h.http_get.is_some() || h.sleep.is_some())
    {
        let action = k8s_openapi::api::core::v1::Probe {
            exec: hook.exec.clone(),
            http_get: hook.http_get.clone(),
            timeout_seconds: Some(30),
            ..Default::default()
        };
        let sleep = hook
            .sleep
            .as_ref()
            .map(|s| Duration::from_secs(s.seconds.max(0) as u64));
        let (cri, events, pod, c, id, pod_ip) = (
            sh.cri.clone(),
            sh.events.clone(),
            pod.clone(),
            c.clone(),
            id.clone(),
            pod_ip.to_string(),
        );
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        tokio::spawn(async move {
            if let Some(d) = sleep {
                tokio::time::sleep(d).await;
                return;
            }
            if let probes::Outcome::Failure(why) =
                probes::run_once(&cri, &id, &c, &action, &pod_ip).await
            {
                tracing::warn!(pod = %pod_key(&pod), container = %c.name, reason = %why, "postStart hook failed");
                // The hook's output stays out of the event (it may hold secrets).
                events.container_event(
                    &pod,
                    &c.name,
                    EventType::Warning,
                    reason::FAILED_POST_START_HOOK,
                    "PostStartHook failed",
                );
                kill_container(cri, events, pod, c, id, "FailedPostStartHook".into(), grace).await;
            }
        });
    }
    st.waiting.remove(&c.name);
    Ok(())
}

/// The instances of each container of the pod (newest first), by name.
/// Whether the container instance was created from another definition than `c`: its
/// image (the one field of a running pod's container that needs a new container; an
/// instance without the annotation, made by an older agent, is left alone).
fn definition_changed(instance: &ContainerStatus, c: &Container) -> bool {
    instance
        .annotations
        .get(crate::pods::spec::ANN_IMAGE)
        .is_some_and(|created| created.as_str() != c.image.as_deref().unwrap_or(""))
}

async fn pod_containers(sh: &Shared, uid: &str) -> HashMap<String, Vec<ContainerStatus>> {
    let mut sel = HashMap::new();
    sel.insert(LABEL_POD_UID.to_string(), uid.to_string());
    let filter = ContainerFilter {
        label_selector: sel,
        ..Default::default()
    };
    let list = sh
        .cri
        .list_containers(Some(filter))
        .await
        .unwrap_or_default();
    let mut by_name: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
    for c in list {
        let Ok(s) = sh.cri.container_status(&c.id).await else {
            continue;
        };
        let name = s
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        by_name.entry(name).or_default().push(s);
    }
    for v in by_name.values_mut() {
        v.sort_by(|a, b| {
            let aa = a.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            let ba = b.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            ba.cmp(&aa).then(b.created_at.cmp(&a.created_at))
        });
        // Keep the current and the previous instance (for `logs --previous`).
        for old in v.drain(2.min(v.len())..) {
            let _ = sh.cri.remove_container(&old.id).await;
        }
    }
    by_name
}

fn is(s: &ContainerStatus, state: ContainerState) -> bool {
    s.state == state as i32
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Decides whether an exited container may restart now; returns the remaining back-off
/// otherwise.
fn crash_backoff(st: &PodState, name: &str, finished_at: i64) -> Option<Duration> {
    let delay = *st.crash.get(name)?;
    let finished = jiff::Timestamp::from_nanosecond(finished_at as i128).ok()?;
    let elapsed = jiff::Timestamp::now().duration_since(finished);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    (elapsed < delay).then(|| delay - elapsed)
}

fn note_restart(st: &mut PodState, name: &str) {
    let next = st
        .crash
        .get(name)
        .map(|d| (*d * 2).min(BACKOFF_MAX))
        .unwrap_or(BACKOFF_INITIAL);
    st.crash.insert(name.to_string(), next);
}

/// The `BackOff` event of a container waiting to be restarted.
fn back_off_event(sh: &Shared, pod: &Pod, name: &str) {
    let msg = format!(
        "Back-off restarting failed container {name} in pod {}",
        pod_key(pod)
    );
    sh.events
        .container_event(pod, name, EventType::Warning, reason::BACK_OFF, msg);
}

fn fmt_backoff(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

async fn sync(sh: &Arc<Shared>, st: &mut PodState, pod: &Pod, wake: &Arc<Notify>) -> Next {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(pspec) = pod.spec.clone() else {
        return Next::After(RESYNC);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pspec.termination_grace_period_seconds)
            .unwrap_or(30);
        terminate(sh, st, pod, grace).await;
        let api: Api<Pod> = Api::namespaced(
            sh.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &dp)
            .await
        {
            Ok(_) => return Next::Done,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Next::Done,
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), error = %e, "deleting the terminated pod failed; retrying");
                return Next::After(Duration::from_secs(1));
            }
        }
    }
    let phase_now = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase_now == "Succeeded" || phase_now == "Failed" || st.reported_terminal {
        if !st.stopped_terminal {
            for (_, t) in st.probe_tasks.drain() {
                t.abort();
            }
            for s in pod_sandboxes(&sh.cri, &uid).await {
                if s.state == PodSandboxState::SandboxReady as i32 {
                    stop_all_containers(
                        &sh.cri,
                        &s.id,
                        pspec.termination_grace_period_seconds.unwrap_or(30),
                    )
                    .await;
                    let _ = sh.cri.stop_pod_sandbox(&s.id).await;
                }
            }
            st.stopped_terminal = true;
        }
        return Next::After(Duration::from_secs(60));
    }
    if st.start_time.is_none() {
        st.start_time = Some(
            pod.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(now_rfc3339),
        );
    }
    if active_deadline_left(pod, st) == Some(Duration::ZERO) {
        return deadline_exceeded(sh, st, pod).await;
    }

    // Volumes (set up once, refreshed periodically).
    if st.volume_info.is_none()
        || st
            .volumes_synced
            .is_none_or(|t| t.elapsed() >= VOLUME_RESYNC)
    {
        match sh.volumes.setup(pod, &mut st.vols).await {
            Ok(v) => {
                st.volume_info = Some(v);
                st.volumes_synced = Some(Instant::now());
                st.sandbox_error = None;
            }
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), error = %e, "volume setup failed");
                if st.volume_info.is_none() {
                    st.sandbox_error = Some(e.to_string());
                    post_status(sh, st, pod, &[], &[], false, false, None, "").await;
                    return Next::After(Duration::from_secs(2));
                }
            }
        }
    }

    // The sandbox.
    let sandboxes = pod_sandboxes(&sh.cri, &uid).await;
    let ready = sandboxes
        .iter()
        .find(|s| s.state == PodSandboxState::SandboxReady as i32)
        .cloned();
    let (sandbox_id, sandbox_attempt) = match ready {
        Some(s) => (
            s.id.clone(),
            s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
        ),
        None => {
            let attempt = sandboxes
                .iter()
                .filter_map(|s| s.metadata.as_ref())
                .map(|m| m.attempt + 1)
                .max()
                .unwrap_or(0);
            for s in &sandboxes {
                let _ = sh.cri.stop_pod_sandbox(&s.id).await;
                let _ = sh.cri.remove_pod_sandbox(&s.id).await;
            }
            let cfg = spec::sandbox_config(pod, &sh.ctx, attempt);
            let _ = std::fs::create_dir_all(&cfg.log_directory);
            let handler = match runtime_handler(sh, pspec.runtime_class_name.as_deref()).await {
                Ok(h) => h,
                Err(m) => {
                    st.sandbox_error = Some(m);
                    post_status(sh, st, pod, &[], &[], false, false, None, "").await;
                    return Next::After(Duration::from_secs(5));
                }
            };
            match sh.cri.run_pod_sandbox(cfg, &handler).await {
                Ok(id) => {
                    st.sandbox_error = None;
                    (id, attempt)
                }
                Err(e) => {
                    let m = format!("Failed to create pod sandbox: {}", grpc_message(&e));
                    tracing::warn!(pod = %pod_key(pod), error = %m, "sandbox creation failed");
                    st.sandbox_error = Some(m);
                    post_status(sh, st, pod, &[], &[], false, false, None, "").await;
                    return Next::After(Duration::from_secs(5));
                }
            }
        }
    };
    let host_network = pspec.host_network.unwrap_or(false);
    let pod_ip = if host_network {
        sh.cfg.node_ip.clone()
    } else {
        match sh.cri.pod_sandbox_status(&sandbox_id).await {
            Ok(s) => s.network.map(|n| n.ip).unwrap_or_default(),
            Err(_) => String::new(),
        }
    };

    let mut instances = pod_containers(sh, &uid).await;
    // The first sync of a worker that finds containers running (the agent restarted):
    // they are adopted as they are, said once the status is posted.
    let adopted = if st.synced_once {
        0
    } else {
        st.synced_once = true;
        instances
            .values()
            .filter(|v| {
                v.first()
                    .is_some_and(|s| is(s, ContainerState::ContainerRunning))
            })
            .count()
    };
    let policy = pspec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let mut next = RESYNC;

    // Init containers, in order.
    let mut init_done = true;
    let mut init_failed = false;
    for c in pspec.init_containers.iter().flatten() {
        let cur = instances.get(&c.name).and_then(|v| v.first()).cloned();
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        match cur {
            Some(s) if is(&s, ContainerState::ContainerExited) && s.exit_code == 0 && !sidecar => {
                continue
            }
            Some(s) if is(&s, ContainerState::ContainerRunning) => {
                if sidecar {
                    continue;
                }
                init_done = false;
                break;
            }
            Some(s) if is(&s, ContainerState::ContainerExited) => {
                init_done = false;
                if !sidecar && policy == "Never" {
                    init_failed = true;
                    break;
                }
                let attempt = s.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1);
                if let Some(rem) = crash_backoff(st, &c.name, s.finished_at) {
                    back_off_event(sh, pod, &c.name);
                    st.waiting.insert(
                        c.name.clone(),
                        (
                            "CrashLoopBackOff".into(),
                            format!(
                                "back-off {} restarting failed container={} pod={}",
                                fmt_backoff(*st.crash.get(&c.name).unwrap_or(&BACKOFF_INITIAL)),
                                c.name,
                                pod_key(pod)
                            ),
                        ),
                    );
                    next = next.min(rem);
                } else {
                    note_restart(st, &c.name);
                    if let Err(w) = start_container(
                        sh,
                        st,
                        pod,
                        c,
                        attempt,
                        &sandbox_id,
                        sandbox_attempt,
                        &pod_ip,
                    )
                    .await
                    {
                        next = next.min(retry_after(&w.0));
                        st.waiting.insert(c.name.clone(), w);
                    }
                }
                break;
            }
            Some(s) if is(&s, ContainerState::ContainerCreated) => {
                let _ = sh.cri.start_container(&s.id).await;
                init_done = false;
                break;
            }
            _ => {
                init_done = false;
                if let Err(w) =
                    start_container(sh, st, pod, c, 0, &sandbox_id, sandbox_attempt, &pod_ip).await
                {
                    next = next.min(retry_after(&w.0));
                    st.waiting.insert(c.name.clone(), w);
                }
                break;
            }
        }
    }

    // Containers.
    if init_done {
        for c in &pspec.containers {
            let cur = instances.get(&c.name).and_then(|v| v.first()).cloned();
            match cur {
                None => {
                    if let Err(w) =
                        start_container(sh, st, pod, c, 0, &sandbox_id, sandbox_attempt, &pod_ip)
                            .await
                    {
                        next = next.min(retry_after(&w.0));
                        st.waiting.insert(c.name.clone(), w);
                    }
                }
                Some(s) if is(&s, ContainerState::ContainerCreated) => {
                    if let Err(e) = sh.cri.start_container(&s.id).await {
                        st.waiting.insert(
                            c.name.clone(),
                            ("RunContainerError".into(), grpc_message(&e)),
                        );
                    }
                }
                Some(s)
                    if is(&s, ContainerState::ContainerRunning)
                        && definition_changed(&s, c)
                        && st.killing.insert(s.id.clone()) =>
                {
                    // As upstream's kubelet: a running container whose spec changed (the
                    // image, the one mutable field that needs a new container) is killed
                    // and started again from the new definition.
                    tracing::info!(pod = %pod_key(pod), container = %c.name, image = c.image.as_deref().unwrap_or(""), "container definition changed; restarting it");
                    st.definition_changed.insert(c.name.clone());
                    tokio::spawn(kill_container(
                        sh.cri.clone(),
                        sh.events.clone(),
                        pod.clone(),
                        c.clone(),
                        s.id.clone(),
                        format!("Container {} definition changed, will be restarted", c.name),
                        pspec.termination_grace_period_seconds.unwrap_or(30),
                    ));
                }
                Some(s) if is(&s, ContainerState::ContainerRunning) => {
                    st.waiting.remove(&c.name);
                    ensure_probes(sh, st, pod, c, &s.id, &pod_ip, wake);
                    let verdict =
                        st.probes.lock().ok().and_then(|t| {
                            t.get(&s.id).filter(|r| r.must_restart).map(|r| r.started)
                        });
                    if let Some(started) = verdict.filter(|_| st.killing.insert(s.id.clone())) {
                        // A failed startup probe leaves `started` false; a failed liveness
                        // probe happens after the start.
                        let (which, probe) = if started {
                            ("liveness", &c.liveness_probe)
                        } else {
                            ("startup", &c.startup_probe)
                        };
                        tracing::info!(pod = %pod_key(pod), container = %c.name, probe = which, "probe failed; restarting the container");
                        let grace = probe
                            .as_ref()
                            .and_then(|p| p.termination_grace_period_seconds)
                            .or(pspec.termination_grace_period_seconds)
                            .unwrap_or(30);
                        let msg = format!(
                            "Container {} failed {which} probe, will be restarted",
                            c.name
                        );
                        tokio::spawn(kill_container(
                            sh.cri.clone(),
                            sh.events.clone(),
                            pod.clone(),
                            c.clone(),
                            s.id.clone(),
                            msg,
                            grace,
                        ));
                    }
                }
                Some(s) => {
                    // Exited.
                    let changed = st.definition_changed.contains(&c.name);
                    if !changed && !should_restart(&policy, s.exit_code) {
                        st.waiting.remove(&c.name);
                        continue;
                    }
                    let attempt = s.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1);
                    let backoff = if changed {
                        None
                    } else {
                        crash_backoff(st, &c.name, s.finished_at)
                    };
                    if let Some(rem) = backoff {
                        back_off_event(sh, pod, &c.name);
                        let d = *st.crash.get(&c.name).unwrap_or(&BACKOFF_INITIAL);
                        st.waiting.insert(
                            c.name.clone(),
                            (
                                "CrashLoopBackOff".into(),
                                format!(
                                    "back-off {} restarting failed container={} pod={}",
                                    fmt_backoff(d),
                                    c.name,
                                    pod_key(pod)
                                ),
                            ),
                        );
                        next = next.min(rem);
                    } else {
                        note_restart(st, &c.name);
                        match start_container(
                            sh,
                            st,
                            pod,
                            c,
                            attempt,
                            &sandbox_id,
                            sandbox_attempt,
                            &pod_ip,
                        )
                        .await
                        {
                            Ok(()) => {
                                st.definition_changed.remove(&c.name);
                            }
                            Err(w) => {
                                next = next.min(retry_after(&w.0));
                                st.waiting.insert(c.name.clone(), w);
                            }
                        }
                    }
                }
            }
        }
        // Ephemeral containers (kubectl debug): started once, reported in their own status.
        super::ephemeral::sync(sh, pod, &sandbox_id, sandbox_attempt).await;
        instances = pod_containers(sh, &uid).await;
    } else {
        instances = pod_containers(sh, &uid).await;
    }
    // Forget probes of instances that are not running any more.
    let running: std::collections::HashSet<String> = instances
        .values()
        .flatten()
        .filter(|s| is(s, ContainerState::ContainerRunning))
        .map(|s| s.id.clone())
        .collect();
    st.probe_tasks.retain(|(id, _), t| {
        let keep = running.contains(id);
        if !keep {
            t.abort();
        }
        keep
    });
    if let Ok(mut t) = st.probes.lock() {
        t.retain(|id, _| running.contains(id));
    }
    st.killing.retain(|id| running.contains(id));

    let views = |list: &[Container],
                 default_reason: &'static str,
                 st: &PodState|
     -> Vec<ContainerView> {
        list.iter()
            .map(|c| {
                let inst = instances.get(&c.name);
                let current = inst.and_then(|v| v.first()).cloned();
                let results = current
                    .as_ref()
                    .and_then(|s| st.probes.lock().ok().and_then(|t| t.get(&s.id).cloned()));
                let ready_probe = match &c.readiness_probe {
                    Some(_) => results.as_ref().and_then(|r| r.ready).unwrap_or(false),
                    None => true,
                };
                let started_probe = match &c.startup_probe {
                    Some(_) => results.as_ref().is_some_and(|r| r.started),
                    None => true,
                };
                let termination_message = current
                    .as_ref()
                    .filter(|s| is(s, ContainerState::ContainerExited))
                    .and_then(|s| {
                        let attempt = s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
                        let f = termination_file(
                            sh,
                            pod.metadata.uid.as_deref().unwrap_or_default(),
                            &c.name,
                            attempt,
                        );
                        let mut m = std::fs::read(&f)
                            .ok()
                            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
                            .unwrap_or_default();
                        if m.is_empty()
                            && s.exit_code != 0
                            && c.termination_message_policy.as_deref()
                                == Some("FallbackToLogsOnError")
                        {
                            m = crate::logs::tail_text(
                                std::path::Path::new(&s.log_path),
                                crate::logs::FALLBACK_MESSAGE_LINES,
                                crate::logs::FALLBACK_MESSAGE_BYTES,
                            );
                        }
                        Some(m).filter(|m| !m.is_empty())
                    });
                ContainerView {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    previous: inst.and_then(|v| v.get(1)).cloned(),
                    current,
                    waiting: st.waiting.get(&c.name).cloned(),
                    ready_probe,
                    started_probe,
                    termination_message,
                    default_reason,
                }
            })
            .collect()
    };
    let init_views = views(
        pspec.init_containers.as_deref().unwrap_or_default(),
        "PodInitializing",
        st,
    );
    let views_main = views(
        &pspec.containers,
        if init_done {
            "ContainerCreating"
        } else {
            "PodInitializing"
        },
        st,
    );
    let sandbox_ready = !pod_ip.is_empty() || host_network;
    post_status(
        sh,
        st,
        pod,
        &init_views,
        &views_main,
        init_done,
        init_failed,
        Some(sandbox_ready),
        &pod_ip,
    )
    .await;
    if adopted > 0 {
        tracing::info!(pod = %pod_key(pod), containers = adopted, "adopted the running containers of the pod");
    }
    if st.reported_terminal {
        // Stop what is left of a pod that just finished, now.
        return Next::After(Duration::ZERO);
    }
    Next::After(next)
}

async fn runtime_handler(sh: &Shared, class: Option<&str>) -> Result<String, String> {
    let Some(class) = class.filter(|c| !c.is_empty()) else {
        return Ok(String::new());
    };
    let api: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(sh.client.clone());
    match api.get_opt(class).await {
        Ok(Some(rc)) => Ok(rc.handler),
        Ok(None) => Err(format!(
            "Failed to create pod sandbox: runtimeclass.node.k8s.io {class:?} not found"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn ensure_probes(
    sh: &Arc<Shared>,
    st: &mut PodState,
    pod: &Pod,
    c: &Container,
    id: &str,
    pod_ip: &str,
    wake: &Arc<Notify>,
) {
    if c.startup_probe.is_none() {
        if let Ok(mut t) = st.probes.lock() {
            t.entry(id.to_string()).or_default().started = true;
        }
    }
    for (kind, probe) in [
        (ProbeKind::Startup, &c.startup_probe),
        (ProbeKind::Readiness, &c.readiness_probe),
        (ProbeKind::Liveness, &c.liveness_probe),
    ] {
        let Some(probe) = probe else { continue };
        let key = (id.to_string(), kind);
        if st.probe_tasks.contains_key(&key) {
            continue;
        }
        let task = tokio::spawn(probes::probe_loop(
            sh.cri.clone(),
            st.probes.clone(),
            wake.clone(),
            id.to_string(),
            c.clone(),
            probe.clone(),
            kind,
            pod_ip.to_string(),
            probes::ProbeEvents {
                recorder: sh.events.clone(),
                pod: pod.clone(),
            },
        ));
        st.probe_tasks.insert(key, task);
    }
}

#[allow(clippy::too_many_arguments)]
async fn post_status(
    sh: &Shared,
    st: &mut PodState,
    pod: &Pod,
    init: &[ContainerView],
    containers: &[ContainerView],
    init_done: bool,
    init_failed: bool,
    sandbox_ready: Option<bool>,
    pod_ip: &str,
) {
    let pspec = pod.spec.clone().unwrap_or_default();
    let policy = pspec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let containers: Vec<ContainerView> = if containers.is_empty() && init.is_empty() {
        // Before the sandbox exists: every container is waiting to be created.
        pspec
            .containers
            .iter()
            .map(|c| ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                default_reason: "ContainerCreating",
                ready_probe: true,
                started_probe: true,
                ..Default::default()
            })
            .collect()
    } else {
        containers.to_vec()
    };
    let init_done = init_done && sandbox_ready.is_some();
    let phase = status::phase(&policy, init, init_done, init_failed, &containers);
    let now = now_rfc3339();
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready());
    let terminal = phase == "Succeeded" || phase == "Failed";
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    // Upstream's Initialized condition: every regular init container exited 0 and every
    // sidecar started; else False naming the incomplete ones (a failed one included),
    // whatever the phase; a Succeeded pod is initialized (PodCompleted).
    let spec_inits = pspec.init_containers.clone().unwrap_or_default();
    let restartable = |name: &str| {
        spec_inits
            .iter()
            .any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    };
    let incomplete: Vec<&str> = if init_done {
        Vec::new()
    } else {
        spec_inits
            .iter()
            .map(|c| c.name.as_str())
            .filter(|name| {
                init.iter()
                    .find(|v| v.name == *name)
                    .is_none_or(|v| !v.init_ready(restartable(name)))
            })
            .collect()
    };
    let succeeded = phase == "Succeeded";
    let initialized = succeeded || incomplete.is_empty();
    let initialized_reason = if succeeded {
        Some("PodCompleted")
    } else if !incomplete.is_empty() {
        Some("ContainersNotInitialized")
    } else {
        None
    };
    let scheduled = status::condition(pod, "PodScheduled", true, None, &now);
    let mut conds = vec![
        status::condition(
            pod,
            "PodReadyToStartContainers",
            sandbox_ready.unwrap_or(false) && !terminal,
            None,
            &now,
        ),
        status::condition(pod, "Initialized", initialized, initialized_reason, &now),
        status::condition(
            pod,
            "Ready",
            all_ready && !terminal,
            (!all_ready || terminal).then_some(not_ready_reason),
            &now,
        ),
        status::condition(
            pod,
            "ContainersReady",
            all_ready && !terminal,
            (!all_ready || terminal).then_some(not_ready_reason),
            &now,
        ),
        scheduled,
    ];
    if !initialized {
        if let Some(m) = status::containers_message("incomplete", &incomplete) {
            conds[1]["message"] = json!(m);
        }
    }
    if !all_ready && !terminal {
        let unready: Vec<&str> = containers
            .iter()
            .filter(|c| !c.ready())
            .map(|c| c.name.as_str())
            .collect();
        if let Some(m) = status::containers_message("unready", &unready) {
            conds[2]["message"] = json!(m.clone());
            conds[3]["message"] = json!(m);
        }
    }
    let mut s = json!({
        "phase": phase,
        "conditions": conds,
        "hostIP": sh.cfg.node_ip,
        "hostIPs": [{"ip": sh.cfg.node_ip}],
        "startTime": st.start_time,
        "qosClass": spec::qos_class(&pspec),
        "containerStatuses": containers.iter().map(ContainerView::to_status).collect::<Vec<_>>(),
    });
    if !pod_ip.is_empty() {
        s["podIP"] = json!(pod_ip);
        s["podIPs"] = json!([{"ip": pod_ip}]);
    }
    if !init.is_empty() {
        s["initContainerStatuses"] = json!(init
            .iter()
            .map(|v| v.to_init_status(restartable(&v.name)))
            .collect::<Vec<_>>());
    }
    if let Some(m) = &st.sandbox_error {
        // Shown as the containers' waiting message, as upstream's events would say.
        if let Some(arr) = s["containerStatuses"].as_array_mut() {
            for c in arr {
                c["state"]["waiting"]["message"] = json!(m);
            }
        }
    }
    if st.last_status.as_ref() == Some(&s) {
        return;
    }
    let api: Api<Pod> = Api::namespaced(
        sh.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(status::status_patch(&s)),
        )
        .await
    {
        Ok(_) => {
            st.reported_terminal = terminal;
            st.last_status = Some(s);
        }
        Err(e) => tracing::warn!(pod = %pod_key(pod), error = %e, "pod status update failed"),
    }
}

/// Stops one container as upstream's `killContainer`: a `Killing` event, the preStop
/// hook (bounded by the grace period, whose time it uses up), then `StopContainer`
/// (SIGTERM, and SIGKILL when what is left of the grace period — at least 2 s — is over).
async fn kill_container(
    cri: CriClient,
    events: Recorder,
    pod: Pod,
    c: Container,
    id: String,
    message: String,
    grace: i64,
) {
    events.container_event(&pod, &c.name, EventType::Normal, reason::KILLING, message);
    let mut grace = grace;
    if let Some(hook) = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .filter(|_| grace > 0)
    {
        let started = Instant::now();
        let limit = Duration::from_secs(grace as u64);
        let failed = if let Some(sleep) = &hook.sleep {
            let _ = tokio::time::timeout(
                limit,
                tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)),
            )
            .await;
            false
        } else if hook.exec.is_some() || hook.http_get.is_some() {
            let action = k8s_openapi::api::core::v1::Probe {
                exec: hook.exec.clone(),
                http_get: hook.http_get.clone(),
                timeout_seconds: Some(grace.min(i32::MAX as i64) as i32),
                ..Default::default()
            };
            let pod_ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            match tokio::time::timeout(limit, probes::run_once(&cri, &id, &c, &action, &pod_ip))
                .await
            {
                Ok(probes::Outcome::Failure(why)) => {
                    tracing::warn!(pod = %pod_key(&pod), container = %c.name, reason = %why, "preStop hook failed");
                    true
                }
                Ok(probes::Outcome::Success) => false,
                Err(_) => {
                    tracing::info!(pod = %pod_key(&pod), container = %c.name, grace, "preStop hook did not complete in the grace period");
                    false
                }
            }
        } else {
            false
        };
        if failed {
            // Upstream leaves the hook's output out of the event (it may hold secrets).
            events.container_event(
                &pod,
                &c.name,
                EventType::Warning,
                reason::FAILED_PRE_STOP_HOOK,
                "PreStopHook failed",
            );
        }
        grace -= started.elapsed().as_secs() as i64;
    }
    let grace = grace.max(MIN_GRACE);
    if let Err(e) = cri.stop_container(&id, grace).await {
        if !matches!(e, CriError::NotFound { .. }) {
            tracing::warn!(pod = %pod_key(&pod), container = %c.name, error = %e, grace, "stopping the container failed");
        }
    }
}

/// Stops every container of the pod (each with its preStop hook, then TERM, then KILL at
/// the grace deadline), removes its sandboxes and volumes.
async fn terminate(sh: &Shared, st: &mut PodState, pod: &Pod, grace: i64) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    for (_, t) in st.probe_tasks.drain() {
        t.abort();
    }
    let specs: Vec<Container> = pod
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for s in pod_sandboxes(&sh.cri, &uid).await {
        if s.state == PodSandboxState::SandboxReady as i32 {
            let filter = ContainerFilter {
                pod_sandbox_id: s.id.clone(),
                ..Default::default()
            };
            let running = sh
                .cri
                .list_containers(Some(filter))
                .await
                .unwrap_or_default();
            let kills = running
                .iter()
                .filter(|c| c.state == ContainerState::ContainerRunning as i32)
                .map(|rc| {
                    let name = rc
                        .metadata
                        .as_ref()
                        .map(|m| m.name.clone())
                        .unwrap_or_default();
                    let spec = specs
                        .iter()
                        .find(|sc| sc.name == name)
                        .cloned()
                        .unwrap_or_else(|| Container {
                            name: name.clone(),
                            ..Default::default()
                        });
                    let msg = format!("Stopping container {name}");
                    kill_container(
                        sh.cri.clone(),
                        sh.events.clone(),
                        pod.clone(),
                        spec,
                        rc.id.clone(),
                        msg,
                        grace,
                    )
                });
            futures_util::future::join_all(kills).await;
            // Whatever is left (created, not started) goes with the sandbox.
            stop_all_containers(&sh.cri, &s.id, MIN_GRACE).await;
            if let Err(e) = sh.cri.stop_pod_sandbox(&s.id).await {
                tracing::warn!(pod = %pod_key(pod), error = %e, "stopping the sandbox failed");
            }
        }
        if let Err(e) = sh.cri.remove_pod_sandbox(&s.id).await {
            tracing::warn!(pod = %pod_key(pod), error = %e, "removing the sandbox failed");
        }
    }
    sh.volumes.teardown(&uid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_image_is_a_changed_definition() {
        let c = |img: &str| Container {
            name: "c".into(),
            image: Some(img.into()),
            ..Default::default()
        };
        let made_from = |img: Option<&str>| ContainerStatus {
            annotations: img
                .map(|i| {
                    [(crate::pods::spec::ANN_IMAGE.to_string(), i.to_string())]
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        assert!(!definition_changed(
            &made_from(Some("busybox:1")),
            &c("busybox:1")
        ));
        assert!(definition_changed(
            &made_from(Some("busybox:1")),
            &c("busybox:2")
        ));
        // Made by an agent that did not record the image: left alone.
        assert!(!definition_changed(&made_from(None), &c("busybox:2")));
    }

    #[test]
    fn pull_policy_defaults() {
        let c = |img: &str| Container {
            name: "c".into(),
            image: Some(img.into()),
            ..Default::default()
        };
        assert_eq!(pull_policy(&c("busybox")), "Always");
        assert_eq!(pull_policy(&c("busybox:latest")), "Always");
        assert_eq!(pull_policy(&c("busybox:1.36")), "IfNotPresent");
        assert_eq!(pull_policy(&c("localhost:5000/busybox")), "Always");
        let mut n = c("busybox");
        n.image_pull_policy = Some("Never".into());
        assert_eq!(pull_policy(&n), "Never");
    }

    #[test]
    fn restart_rules() {
        assert!(should_restart("Always", 0));
        assert!(!should_restart("OnFailure", 0));
        assert!(should_restart("OnFailure", 1));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn crash_backoff_doubles_to_five_minutes() {
        let mut st = PodState::default();
        let now = jiff::Timestamp::now().as_nanosecond() as i64;
        assert_eq!(
            crash_backoff(&st, "c", now),
            None,
            "first restart is immediate"
        );
        note_restart(&mut st, "c");
        assert!(crash_backoff(&st, "c", now).is_some_and(|d| d > Duration::from_secs(9)));
        let long_ago = now - 11_000_000_000;
        assert_eq!(crash_backoff(&st, "c", long_ago), None);
        for _ in 0..10 {
            note_restart(&mut st, "c");
        }
        assert_eq!(st.crash.get("c"), Some(&BACKOFF_MAX));
        assert_eq!(fmt_backoff(Duration::from_secs(40)), "40s");
        assert_eq!(fmt_backoff(Duration::from_secs(300)), "5m0s");
        assert_eq!(fmt_backoff(Duration::from_secs(160)), "2m40s");
    }

    #[test]
    fn image_errors_wait_for_the_worker_back_off() {
        for r in [
            "ErrImagePull",
            "ImagePullBackOff",
            "ErrImageNeverPull",
            "InvalidImageName",
        ] {
            assert_eq!(retry_after(r), WORKER_BACKOFF, "{r}");
        }
        assert_eq!(retry_after("CreateContainerConfigError"), START_RETRY);
    }

    #[test]
    fn grpc_messages_look_like_go() {
        let e = CriError::Status {
            method: "PullImage",
            code: tonic::Code::Unknown,
            message: "failed to pull".into(),
        };
        assert_eq!(
            grpc_message(&e),
            "rpc error: code = Unknown desc = failed to pull"
        );
    }
}
