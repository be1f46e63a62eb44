//! Pod admission on the node, as upstream's kubelet admits a pod before its worker runs
//! it (`canAdmitPod` with the `GeneralPredicates` handler): a pod whose host ports are
//! already taken by an admitted, active pod of this node is rejected — its phase becomes
//! `Failed` with reason `NodePorts` and the message "Pod was rejected: Predicate
//! NodePorts failed: node(s) didn't have free ports for the requested pod ports", and a
//! Warning event with that reason says so. The scheduler avoids such nodes already; the
//! node checks again because a pod may name its node itself (`spec.nodeName`) or be a
//! static pod. Pure apart from [`reject`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Shared;
use crate::events::EventType;

/// Why the node refuses a pod (upstream's `PodAdmitResult`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// One word: the failed predicate (`NodePorts`).
    pub reason: String,
    /// What failed, in upstream's words.
    pub message: String,
}

pub use rk3s_core::hostport::{pod_host_ports as host_ports, HostPort};

/// Whether a pod that just reached this node goes through admission: not when it is
/// being deleted, already finished, or already started here (admitted before, e.g.
/// by this agent before a restart).
pub fn needs_admission(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, "Running" | "Succeeded" | "Failed")
        && status.and_then(|s| s.start_time.as_ref()).is_none()
}

/// Whether an admitted pod still holds what it asked for: not once it finished.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    !matches!(phase, "Succeeded" | "Failed")
}

/// Admits `pod` next to the `active` pods this node already admitted, or says why not
/// (upstream's reason and message of the `NodePorts` predicate).
pub fn admit(pod: &Pod, active: &[Pod]) -> Result<(), Rejection> {
    let wanted = host_ports(pod);
    if wanted.is_empty() {
        return Ok(());
    }
    let taken = active
        .iter()
        .filter(|p| p.metadata.uid != pod.metadata.uid)
        .flat_map(host_ports)
        .any(|used| wanted.iter().any(|w| w.conflicts(&used)));
    if taken {
        return Err(Rejection {
            reason: "NodePorts".into(),
            message: "Predicate NodePorts failed: node(s) didn't have free ports for the \
                      requested pod ports"
                .into(),
        });
    }
    Ok(())
}

/// Rejects a pod as upstream's `rejectPod`: a Warning event with the reason and
/// message, and the pod's phase `Failed` with the reason and "Pod was rejected: "
/// followed by the message. Retries the status write for a while.
pub(super) async fn reject(sh: Arc<Shared>, pod: Pod, r: Rejection) {
    let key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    tracing::info!(pod = %key, reason = %r.reason, message = %r.message, "pod rejected at admission");
    sh.events
        .pod_event(&pod, EventType::Warning, &r.reason, r.message.clone());
    let api: Api<Pod> = Api::namespaced(
        sh.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let patch = json!({"status": {
        "phase": "Failed",
        "reason": r.reason,
        "message": format!("Pod was rejected: {}", r.message),
    }});
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    for _ in 0..30 {
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) => {
                tracing::warn!(pod = %key, error = %e, "reporting the rejection failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus};

    fn pod(uid: &str, ports: &[(i32, Option<&str>, Option<&str>)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(uid.into());
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(port, ip, proto)| ContainerPort {
                            container_port: 80,
                            host_port: Some(*port),
                            host_ip: ip.map(Into::into),
                            protocol: proto.map(Into::into),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_taken_host_port_is_refused_with_upstreams_reason() {
        let pod4 = pod("pod4", &[(54322, None, Some("TCP"))]);
        let pod5 = pod("pod5", &[(54322, Some("192.0.2.2"), Some("TCP"))]);
        let r = admit(&pod5, std::slice::from_ref(&pod4));
        assert_eq!(
            r,
            Err(Rejection {
                reason: "NodePorts".into(),
                message: "Predicate NodePorts failed: node(s) didn't have free ports for the \
                          requested pod ports"
                    .into(),
            })
        );
        // The other way round too: a specific address against all addresses.
        assert!(admit(&pod4, std::slice::from_ref(&pod5)).is_err());
        // The pod itself (a second event for it) is no conflict.
        assert!(admit(&pod4, std::slice::from_ref(&pod4)).is_ok());
    }

    #[test]
    fn other_addresses_protocols_and_ports_are_free() {
        let pod1 = pod("pod1", &[(54321, Some("127.0.0.1"), None)]);
        let pod2 = pod("pod2", &[(54321, Some("192.0.2.2"), Some("TCP"))]);
        let pod3 = pod("pod3", &[(54321, Some("192.0.2.2"), Some("UDP"))]);
        assert!(admit(&pod2, std::slice::from_ref(&pod1)).is_ok());
        assert!(admit(&pod3, &[pod1.clone(), pod2.clone()]).is_ok());
        let other = pod("other", &[(8080, None, None)]);
        assert!(admit(&other, &[pod1, pod2, pod3]).is_ok());
        // Without host ports nothing is checked.
        let plain = pod("plain", &[]);
        assert!(admit(&plain, std::slice::from_ref(&other)).is_ok());
        // Empty protocol means TCP.
        let tcp = pod("tcp", &[(8080, None, Some("TCP"))]);
        assert!(admit(&tcp, std::slice::from_ref(&other)).is_err());
    }

    #[test]
    fn only_new_pods_are_admitted_and_finished_pods_hold_nothing() {
        let mut p = pod("p", &[(80, None, None)]);
        assert!(needs_admission(&p));
        assert!(is_active(&p));
        p.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
        assert!(needs_admission(&p));
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        assert!(!needs_admission(&p), "started here before");
        p.status = Some(PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        assert!(!needs_admission(&p));
        assert!(!is_active(&p));
    }
}
