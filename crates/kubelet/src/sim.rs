//! Simulated nodes: Node objects and Leases kept fresh, and bound pods moved
//! Pending → Running (Ready) → Succeeded (for pods whose restartPolicy is not `Always`)
//! as a kubelet would, without containers. A pod annotated `sim.rk3s.io/fail: "true"`
//! ends Failed (exit code 1) instead. Pods marked for deletion are removed at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::KubeletError;

/// Annotation that makes a simulated pod fail.
pub const FAIL_ANNOTATION: &str = "sim.rk3s.io/fail";

/// Settings of a group of simulated nodes.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Names of the nodes.
    pub nodes: Vec<String>,
    /// CPU capacity of each node (a Quantity).
    pub cpu: String,
    /// Memory capacity of each node.
    pub memory: String,
    /// Pod capacity of each node.
    pub pods: String,
    /// Extra labels on every node.
    pub labels: BTreeMap<String, String>,
    /// Lease renewal interval (upstream kubelet: 10 s).
    pub lease_interval: Duration,
    /// How long a pod that runs to completion stays Running before it Succeeds.
    pub run_for: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: vec!["sim-node-0".into()],
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: "110".into(),
            labels: BTreeMap::new(),
            lease_interval: Duration::from_secs(10),
            run_for: Duration::from_millis(200),
        }
    }
}

fn now_time() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn node_object(name: &str, opts: &SimOptions) -> Node {
    let mut labels = opts.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("type".into(), "simulated".into());
    let mut annotations = BTreeMap::new();
    annotations.insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: None,
    }
}

fn node_status(name: &str, opts: &SimOptions, index: usize) -> serde_json::Value {
    let now = now_time();
    let cap = json!({"cpu": opts.cpu, "memory": opts.memory, "pods": opts.pods, "ephemeral-storage": "100Gi"});
    json!({"status": {
        "capacity": cap, "allocatable": cap,
        "phase": "Running",
        "addresses": [{"type": "InternalIP", "address": format!("10.240.{}.{}", index / 250, index % 250 + 1)}, {"type": "Hostname", "address": name}],
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status (simulated)", "lastHeartbeatTime": now, "lastTransitionTime": now},
        ],
        "nodeInfo": {
            "machineID": format!("sim-{index}"), "systemUUID": format!("sim-{index}"), "bootID": format!("sim-{index}"),
            "kernelVersion": "simulated", "osImage": "rk3s simulated node", "containerRuntimeVersion": "sim://0.1.0",
            "kubeletVersion": "v1.33.0+rk3s", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
    }})
}

/// Registers the nodes (creating or refreshing them) and runs their Leases and pods until
/// the returned future is dropped.
pub async fn run(client: kube::Client, opts: SimOptions) -> Result<(), KubeletError> {
    let nodes: Api<Node> = Api::all(client.clone());
    for (i, name) in opts.nodes.iter().enumerate() {
        match nodes
            .create(&PostParams::default(), &node_object(name, &opts))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(node_status(name, &opts, i)),
            )
            .await?;
    }
    tracing::info!(count = opts.nodes.len(), "simulated nodes registered");
    let leases = tokio::spawn(run_leases(client.clone(), opts.clone()));
    let pods = run_pods(client, opts).await;
    leases.abort();
    pods
}

async fn run_leases(client: kube::Client, opts: SimOptions) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut tick = tokio::time::interval(opts.lease_interval);
    loop {
        tick.tick().await;
        for name in &opts.nodes {
            if let Err(e) = renew_lease(&api, name, &opts).await {
                tracing::warn!(node = %name, error = %e, "simulated node: lease renewal failed");
            }
        }
    }
}

async fn renew_lease(api: &Api<Lease>, name: &str, opts: &SimOptions) -> Result<(), kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let duration = (opts.lease_interval.as_secs() as i32 * 4).max(4);
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.into()),
                    lease_duration_seconds: Some(duration),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Some(mut l) => {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(name.into());
            spec.lease_duration_seconds = Some(duration);
            api.replace(name, &PostParams::default(), &l)
                .await
                .map(|_| ())
        }
    }
}

fn pod_ip(node_index: usize, counter: u32) -> String {
    format!("10.42.{}.{}", node_index % 256, (counter % 250) + 2)
}

async fn run_pods(client: kube::Client, opts: SimOptions) -> Result<(), KubeletError> {
    let ours: HashMap<String, usize> = opts
        .nodes
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let counter = Arc::new(AtomicU32::new(0));
    let all: Api<Pod> = Api::all(client.clone());
    let mut done: HashSet<String> = HashSet::new();
    let mut stream = watcher(all, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "simulated node: pod watch error");
                continue;
            }
        };
        let pods: Vec<Pod> = match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
            watcher::Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid {
                    done.remove(&uid);
                }
                continue;
            }
            _ => continue,
        };
        for pod in pods {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let Some(&idx) = ours.get(&node) else {
                continue;
            };
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = api
                    .delete(
                        &name,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
                continue;
            }
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase != "Pending" && !phase.is_empty() || done.contains(&uid) {
                continue;
            }
            done.insert(uid);
            let ip = pod_ip(idx, counter.fetch_add(1, Ordering::Relaxed));
            let restart = pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".into());
            let fail = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(FAIL_ANNOTATION))
                .is_some_and(|v| v == "true");
            let run_for = opts.run_for;
            let api2 = api.clone();
            let pod2 = pod.clone();
            tokio::spawn(async move {
                if let Err(e) = api2
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(running_status(&pod2, &ip, idx)),
                    )
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "simulated node: status update failed");
                    return;
                }
                if restart != "Always" {
                    tokio::time::sleep(run_for).await;
                    let _ = api2
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(finished_status(&pod2, fail)),
                        )
                        .await;
                }
            });
        }
    }
    Err(KubeletError::Watch("pod watch ended".into()))
}

fn container_names(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn running_status(pod: &Pod, ip: &str, node_index: usize) -> serde_json::Value {
    let now = now_time();
    let statuses: Vec<serde_json::Value> = container_names(pod)
        .into_iter()
        .map(|(n, image)| json!({"name": n, "image": image, "imageID": format!("sim://{image}"), "containerID": format!("sim://{n}"), "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}))
        .collect();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running",
        "hostIP": format!("10.240.{}.{}", node_index / 250, node_index % 250 + 1),
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": now,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": statuses,
    }})
}

fn finished_status(pod: &Pod, fail: bool) -> serde_json::Value {
    let now = now_time();
    let code = if fail { 1 } else { 0 };
    let reason = if fail { "Error" } else { "Completed" };
    let statuses: Vec<serde_json::Value> = container_names(pod)
        .into_iter()
        .map(|(n, image)| json!({"name": n, "image": image, "imageID": format!("sim://{image}"), "containerID": format!("sim://{n}"), "ready": false, "started": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now, "containerID": format!("sim://{n}")}}}))
        .collect();
    let cond = |t: &str, s: &str| json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": now, "reason": if s == "False" { "PodCompleted" } else { "" }});
    json!({"status": {
        "phase": if fail { "Failed" } else { "Succeeded" },
        "conditions": [cond("PodReadyToStartContainers", "False"), cond("Initialized", "True"), cond("Ready", "False"), cond("ContainersReady", "False"), cond("PodScheduled", "True")],
        "containerStatuses": statuses,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_have_upstream_shape() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "n"}})).expect("pod");
        let r = running_status(&pod, "10.42.0.2", 0);
        assert_eq!(r["status"]["phase"], "Running");
        assert_eq!(r["status"]["containerStatuses"][0]["ready"], true);
        assert!(r["status"]["conditions"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")));
        let f = finished_status(&pod, true);
        assert_eq!(f["status"]["phase"], "Failed");
        assert_eq!(
            f["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            1
        );
        let s = finished_status(&pod, false);
        assert_eq!(
            s["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
    }

    #[test]
    fn nodes_have_capacity_and_labels() {
        let opts = SimOptions::default();
        let n = node_object("a", &opts);
        assert_eq!(
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/hostname"))
                .map(String::as_str),
            Some("a")
        );
        let s = node_status("a", &opts, 3);
        assert_eq!(s["status"]["allocatable"]["cpu"], "4");
        assert_eq!(s["status"]["addresses"][0]["address"], "10.240.0.4");
    }
}
