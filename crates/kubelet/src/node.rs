//! Node registration and status: the Node object (capacity and allocatable from the host,
//! labels, addresses, conditions, `nodeInfo`, images), its Lease in `kube-node-lease`
//! renewed every 10 s, and status patches sent only when something changed (plus a
//! heartbeat every 5 minutes, as upstream's kubelet).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::cri::CriClient;
use crate::KubeletError;

/// The kubelet version rk3s reports.
pub const KUBELET_VERSION: &str = "v1.33.0+rk3s";
/// How often the Lease is renewed (upstream: 10 s).
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Lease duration (upstream: 40 s).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often node status is checked for changes (upstream: 10 s).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Status is re-posted at least this often even when unchanged (upstream: 5 min).
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(300);

/// Settings of the node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// InternalIP of the node.
    pub ip: IpAddr,
    /// The data dir (ephemeral-storage capacity is that of its file system).
    pub data_dir: PathBuf,
    /// True on servers: adds the control-plane/master role labels, as k3s.
    pub control_plane: bool,
    /// Extra labels (`--node-label`).
    pub labels: BTreeMap<String, String>,
    /// Taints the node registers with (`--node-taint`; applied when the Node is created,
    /// as upstream's `--register-with-taints`).
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// ExternalIP of the node (`--node-external-ip`).
    pub external_ip: Option<IpAddr>,
}

/// The Node's `status.addresses`: InternalIP, ExternalIP (when set), Hostname.
fn node_addresses(cfg: &NodeConfig) -> Value {
    let mut a = vec![json!({"type": "InternalIP", "address": cfg.ip.to_string()})];
    if let Some(e) = cfg.external_ip {
        a.push(json!({"type": "ExternalIP", "address": e.to_string()}));
    }
    a.push(json!({"type": "Hostname", "address": cfg.name}));
    Value::Array(a)
}

/// The host's resources.
#[derive(Clone, Debug, PartialEq)]
pub struct HostResources {
    /// CPU count.
    pub cpus: usize,
    /// Memory in bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// Size of the data dir's file system, in bytes.
    pub ephemeral_bytes: u64,
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut it = line.split_whitespace().skip(1);
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

/// `PRETTY_NAME` of an `/etc/os-release` text.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
}

/// Size of the file system holding `path`, in bytes.
pub fn fs_capacity(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out buffer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    Some(st.f_blocks as u64 * st.f_frsize as u64)
}

impl HostResources {
    /// Reads the host's resources.
    pub fn probe(data_dir: &Path) -> HostResources {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo_total(&t))
            .unwrap_or(0);
        let ephemeral_bytes = fs_capacity(data_dir)
            .or_else(|| fs_capacity(Path::new("/")))
            .unwrap_or(0);
        HostResources {
            cpus,
            memory_bytes,
            ephemeral_bytes,
        }
    }

    /// Capacity as a Node's `status.capacity`.
    pub fn capacity(&self) -> Value {
        json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", self.memory_bytes / 1024),
            "pods": "110",
            "ephemeral-storage": format!("{}Ki", self.ephemeral_bytes / 1024),
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        })
    }

    /// Allocatable: capacity less the default hard eviction thresholds
    /// (memory.available 100Mi; nodefs.available 10%).
    pub fn allocatable(&self) -> Value {
        let mem = self.memory_bytes.saturating_sub(100 * 1024 * 1024);
        let eph = self.ephemeral_bytes - self.ephemeral_bytes / 10;
        json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", mem / 1024),
            "pods": "110",
            "ephemeral-storage": eph.to_string(),
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        })
    }
}

/// The machine's hostname (lower-cased, as the kubelet's node name).
pub fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim().to_lowercase();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// The Go name of this machine's architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The labels the node registers with.
pub fn node_labels(cfg: &NodeConfig) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("beta.kubernetes.io/arch".into(), go_arch().into());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/arch".into(), go_arch().into());
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    if cfg.control_plane {
        l.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
        l.insert("node-role.kubernetes.io/master".into(), "true".into());
    }
    for (k, v) in &cfg.labels {
        l.insert(k.clone(), v.clone());
    }
    l
}

/// What the status loop learned from the runtime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeFacts {
    /// `containerd://1.6.20` etc.
    pub runtime_version: String,
    /// Runtime ready (`RuntimeReady`).
    pub runtime_ready: bool,
    /// Why the network is not ready (`NetworkReady=false`), None when it is.
    pub network_error: Option<String>,
    /// The images: (names, size).
    pub images: Vec<(Vec<String>, u64)>,
}

/// Asks the runtime for its version, conditions and images.
pub async fn runtime_facts(cri: &CriClient) -> RuntimeFacts {
    let mut f = RuntimeFacts {
        network_error: Some("container runtime is down".into()),
        ..Default::default()
    };
    if let Ok(v) = cri.version().await {
        f.runtime_version = format!("{}://{}", v.runtime_name, v.runtime_version);
    }
    match cri.status().await {
        Ok(st) => {
            f.runtime_ready = st
                .conditions
                .iter()
                .any(|c| c.r#type == "RuntimeReady" && c.status);
            f.network_error = match st.conditions.iter().find(|c| c.r#type == "NetworkReady") {
                Some(c) if c.status => None,
                Some(c) => Some(format!(
                    "container runtime network not ready: NetworkReady=false reason:{} message:{}",
                    c.reason, c.message
                )),
                None => None,
            };
        }
        Err(e) => f.network_error = Some(format!("container runtime is down: {e}")),
    }
    if let Ok(imgs) = cri.list_images(None).await {
        let mut v: Vec<(Vec<String>, u64)> = imgs
            .into_iter()
            .map(|i| {
                let mut names = i.repo_digests.clone();
                names.extend(i.repo_tags.iter().cloned());
                (names, i.size)
            })
            .filter(|(n, _)| !n.is_empty())
            .collect();
        // Upstream lists the largest first (and at most 50).
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(50);
        f.images = v;
    }
    f
}

/// The parts of the node status that are compared to decide whether to patch (no
/// timestamps).
fn status_body(cfg: &NodeConfig, host: &HostResources, facts: &RuntimeFacts) -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| parse_os_release(&t))
        .unwrap_or_else(|| "Linux".into());
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let images: Vec<Value> = facts
        .images
        .iter()
        .map(|(n, s)| json!({"names": n, "sizeBytes": s}))
        .collect();
    json!({
        "capacity": host.capacity(),
        "allocatable": host.allocatable(),
        "addresses": node_addresses(cfg),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": machine_id,
            "systemUUID": machine_id,
            "bootID": boot_id,
            "kernelVersion": kernel,
            "osImage": os_image,
            "containerRuntimeVersion": facts.runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": go_arch(),
        },
        "images": images,
    })
}

/// Copies the extended resources (names with a domain, not `kubernetes.io/` ones the
/// kubelet owns) of the Node's current `capacity` into the status body's capacity and
/// allocatable.
pub fn add_extended_resources(
    body: &mut Value,
    current: &std::collections::BTreeMap<
        String,
        k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    >,
) {
    for (name, q) in current {
        let extended = name.contains('/')
            && !name.starts_with("kubernetes.io/")
            && !name.starts_with("hugepages-")
            && !name.starts_with("attachable-volumes-");
        if !extended {
            continue;
        }
        for field in ["capacity", "allocatable"] {
            if let Some(m) = body[field].as_object_mut() {
                m.entry(name.clone()).or_insert_with(|| json!(q.0));
            }
        }
    }
}

/// The node's conditions: (type, status, reason, message).
pub fn conditions(facts: &RuntimeFacts) -> Vec<(&'static str, &'static str, &'static str, String)> {
    let ready = if !facts.runtime_ready {
        (
            "Ready",
            "False",
            "KubeletNotReady",
            "container runtime is down".to_string(),
        )
    } else if let Some(m) = &facts.network_error {
        ("Ready", "False", "KubeletNotReady", m.clone())
    } else {
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        )
    };
    vec![
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available".into(),
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure".into(),
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available".into(),
        ),
        ready,
    ]
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Creates the Node if it does not exist (or refreshes its labels if it does).
pub async fn register(client: &kube::Client, cfg: &NodeConfig) -> Result<Node, KubeletError> {
    let api: Api<Node> = Api::all(client.clone());
    let labels = node_labels(cfg);
    let mut annotations = BTreeMap::new();
    annotations.insert("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string());
    annotations.insert(
        "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
        "true".to_string(),
    );
    annotations.insert("rk3s.io/internal-ip".to_string(), cfg.ip.to_string());
    if let Some(existing) = api.get_opt(&cfg.name).await? {
        let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
        let n = api
            .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let _ = existing;
        return Ok(n);
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: (!cfg.taints.is_empty()).then(|| cfg.taints.clone()),
            ..Default::default()
        }),
        status: None,
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => Ok(n),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(&cfg.name).await?),
        Err(e) => Err(e.into()),
    }
}

/// Waits until the node has `spec.podCIDR` (set by the node IPAM controller); gives up
/// after `timeout` and returns None.
pub async fn wait_pod_cidr(client: &kube::Client, name: &str, timeout: Duration) -> Option<String> {
    let api: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(n)) = api.get_opt(name).await {
            if let Some(c) = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                return Some(c);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps the node's status up to date: every [`STATUS_INTERVAL`] (or when `wake` fires)
/// it recomputes the status and patches it when it changed or the heartbeat is due.
pub async fn run_status(
    client: kube::Client,
    cfg: NodeConfig,
    cri: CriClient,
    wake: std::sync::Arc<tokio::sync::Notify>,
) {
    let api: Api<Node> = Api::all(client);
    let host = HostResources::probe(&cfg.data_dir);
    let mut last_body: Option<Value> = None;
    let mut last_conds: Vec<(&'static str, &'static str, &'static str, String)> = Vec::new();
    let mut transitions: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut last_post = Instant::now();
    loop {
        let facts = runtime_facts(&cri).await;
        let mut body = status_body(&cfg, &host, &facts);
        // Extended resources someone put in the Node's capacity are allocatable too
        // (upstream's kubelet keeps them, as no device plugin manages them here).
        if let Ok(node) = api.get(&cfg.name).await {
            let current = node.status.and_then(|s| s.capacity).unwrap_or_default();
            add_extended_resources(&mut body, &current);
        }
        let conds = conditions(&facts);
        let due = last_post.elapsed() >= STATUS_HEARTBEAT;
        if last_body.as_ref() != Some(&body) || last_conds != conds || due {
            let now = now_rfc3339();
            let mut cjson = Vec::new();
            for c in &conds {
                let changed = last_conds
                    .iter()
                    .find(|p| p.0 == c.0)
                    .is_none_or(|p| p.1 != c.1);
                if changed || !transitions.contains_key(c.0) {
                    transitions.insert(c.0, now.clone());
                }
                cjson.push(json!({
                    "type": c.0, "status": c.1, "reason": c.2, "message": c.3,
                    "lastHeartbeatTime": now, "lastTransitionTime": transitions.get(c.0),
                }));
            }
            let mut status = body.clone();
            status["conditions"] = Value::Array(cjson);
            let patch = json!({"status": status});
            match api
                .patch_status(
                    &cfg.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(_) => {
                    last_body = Some(body);
                    last_conds = conds;
                    last_post = Instant::now();
                }
                Err(e) => tracing::warn!(node = %cfg.name, error = %e, "node status update failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_INTERVAL) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Renews the node's Lease in `kube-node-lease` every [`LEASE_RENEW_INTERVAL`].
pub async fn run_lease(client: kube::Client, name: String, node_uid: Option<String>) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        if let Err(e) = renew_lease(&api, &name, node_uid.as_deref()).await {
            tracing::warn!(node = %name, error = %e, "lease renewal failed");
        }
        tokio::time::sleep(LEASE_RENEW_INTERVAL).await;
    }
}

async fn renew_lease(
    api: &Api<Lease>,
    name: &str,
    node_uid: Option<&str>,
) -> Result<(), kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    match api.get_opt(name).await? {
        None => {
            let owner = node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.into(),
                    uid: uid.into(),
                    ..Default::default()
                }]
            });
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    owner_references: owner,
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.into()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(name.into());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            spec.renew_time = Some(now);
            api.replace(name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_in_bytes() {
        let t = "MemTotal:       24567892 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_meminfo_total(t), Some(24567892 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn os_release_pretty_name() {
        let t = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            parse_os_release(t).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn server_labels_have_roles() {
        let cfg = NodeConfig {
            name: "n1".into(),
            ip: "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            data_dir: "/tmp".into(),
            control_plane: true,
            labels: BTreeMap::from([("a".to_string(), "b".to_string())]),
            taints: Vec::new(),
            external_ip: None,
        };
        let l = node_labels(&cfg);
        assert_eq!(
            l.get("node-role.kubernetes.io/control-plane")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(
            l.get("node-role.kubernetes.io/master").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            l.get("kubernetes.io/hostname").map(String::as_str),
            Some("n1")
        );
        assert_eq!(l.get("a").map(String::as_str), Some("b"));
        let agent = node_labels(&NodeConfig {
            control_plane: false,
            ..cfg
        });
        assert!(!agent.contains_key("node-role.kubernetes.io/master"));
    }

    #[test]
    fn ready_condition_follows_runtime() {
        let mut f = RuntimeFacts {
            runtime_ready: true,
            network_error: None,
            ..Default::default()
        };
        let c = conditions(&f);
        assert_eq!(c[3].0, "Ready");
        assert_eq!(c[3].1, "True");
        f.network_error = Some("cni plugin not initialized".into());
        let c = conditions(&f);
        assert_eq!((c[3].1, c[3].2), ("False", "KubeletNotReady"));
        assert_eq!(c[3].3, "cni plugin not initialized");
    }

    #[test]
    fn extended_resources_in_capacity_are_allocatable() {
        let mut body = json!({"capacity": {"cpu": "2"}, "allocatable": {"cpu": "2"}});
        let mut cur = std::collections::BTreeMap::new();
        cur.insert(
            "example.com/fakecpu".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("1k".into()),
        );
        cur.insert(
            "cpu".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("64".into()),
        );
        add_extended_resources(&mut body, &cur);
        assert_eq!(body["allocatable"]["example.com/fakecpu"], "1k");
        assert_eq!(body["capacity"]["example.com/fakecpu"], "1k");
        assert_eq!(
            body["capacity"]["cpu"], "2",
            "the kubelet's own figures win"
        );
    }

    #[test]
    fn allocatable_subtracts_eviction_thresholds() {
        let h = HostResources {
            cpus: 2,
            memory_bytes: 1024 * 1024 * 1024,
            ephemeral_bytes: 1000,
        };
        assert_eq!(h.allocatable()["memory"], "946176Ki");
        assert_eq!(h.allocatable()["ephemeral-storage"], "900");
        assert_eq!(h.capacity()["cpu"], "2");
        assert_eq!(h.capacity()["pods"], "110");
    }
}
