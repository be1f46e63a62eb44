//! The sync loop: informers -> model -> renderer -> one `nft` transaction per sync.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::model::{self, NamespaceInfo, PodInfo};
use crate::render::{self, Family, TableState};
use crate::{nft, NetpolError, NetpolOptions};

/// The longest wait between retries of a failed transaction.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The tables as applied (or desired): `None` = no table of that family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tables {
    pub(crate) v4: Option<TableState>,
    pub(crate) v6: Option<TableState>,
}

/// The state carried from sync to sync (pure: no I/O), so it can be tested.
#[derive(Debug)]
pub(crate) struct Syncer {
    node_name: String,
    table: String,
    /// What the kernel holds; `None`: unknown (start, after a failure, periodic
    /// rebuild), so the next sync rebuilds the tables whole.
    applied: Option<Tables>,
    /// Skipped policies already reported (reported again once fixed and broken again).
    reported: BTreeSet<(String, String)>,
}

impl Syncer {
    pub(crate) fn new(node_name: &str, table: &str) -> Self {
        Syncer {
            node_name: node_name.to_string(),
            table: table.to_string(),
            applied: None,
            reported: BTreeSet::new(),
        }
    }

    /// Forgets what is applied: the next sync rebuilds everything.
    pub(crate) fn invalidate(&mut self) {
        self.applied = None;
    }

    /// Computes the desired tables and the script leading there (empty: nothing to do).
    pub(crate) fn plan(
        &mut self,
        policies: &[NetworkPolicy],
        pods: &[PodInfo],
        namespaces: &[NamespaceInfo],
    ) -> (Tables, String) {
        let plan = model::compute(&self.node_name, policies, pods, namespaces);
        let now: BTreeSet<(String, String)> = plan
            .skipped
            .iter()
            .map(|s| (s.policy.clone(), s.reason.clone()))
            .collect();
        for (policy, reason) in now.difference(&self.reported) {
            tracing::warn!(networkpolicy = %policy, %reason, "NetworkPolicy skipped: it cannot be enforced");
        }
        self.reported = now;
        let desired = Tables {
            v4: Some(render::desired(&plan, Family::V4)),
            v6: render::needs_table(&plan, Family::V6).then(|| render::desired(&plan, Family::V6)),
        };
        let mut script = String::new();
        for (family, new) in [(Family::V4, &desired.v4), (Family::V6, &desired.v6)] {
            let old = self
                .applied
                .as_ref()
                .map(|a| if family == Family::V4 { &a.v4 } else { &a.v6 });
            match (old, new) {
                (None, Some(n)) | (Some(None), Some(n)) => {
                    script.push_str(&render::render_full(n, &self.table))
                }
                (None, None) => script.push_str(&render::render_delete(family, &self.table)),
                (Some(Some(_)), None) => {
                    script.push_str(&render::render_delete(family, &self.table))
                }
                (Some(Some(o)), Some(n)) => {
                    script.push_str(&render::render_update(o, n, &self.table))
                }
                (Some(None), None) => {}
            }
        }
        (desired, script)
    }

    /// Records the outcome of applying the script of [`Self::plan`].
    pub(crate) fn applied(&mut self, desired: Tables, ok: bool) {
        self.applied = ok.then_some(desired);
    }
}

/// Drops what the enforcer does not need of a pod (the stores hold every pod of the
/// cluster).
fn strip_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..Default::default()
    });
}

fn strip_namespace(ns: &mut Namespace) {
    ns.metadata.managed_fields = None;
    ns.metadata.annotations = None;
    ns.spec = None;
    ns.status = None;
}

fn strip_policy(np: &mut NetworkPolicy) {
    np.metadata.managed_fields = None;
    np.metadata.annotations = None;
}

/// Aborts the informer tasks when the enforcer stops.
struct Tasks(Vec<(&'static str, JoinHandle<()>)>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, t) in &self.0 {
            t.abort();
        }
    }
}

fn informer<K>(
    api: Api<K>,
    strip: fn(&mut K),
    notify: Arc<Notify>,
    kind: &'static str,
) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "NetworkPolicy enforcer: watch failed, retrying")
                }
            }
        }
    });
    (store, task)
}

fn retry_delay(failures: u32) -> Duration {
    let secs = 1u64
        .checked_shl(failures.saturating_sub(1).min(5))
        .unwrap_or(32);
    Duration::from_secs(secs).min(MAX_RETRY)
}

/// Enforces NetworkPolicies on this node until the future is dropped; returns only on
/// a fatal error (bad table name, an informer gone).
///
/// Reflectors of NetworkPolicies, Pods and Namespaces wake a sync on every change
/// (including pod and namespace label changes); syncs are at least
/// `min_sync_interval` apart; the tables are rebuilt whole at start, after a failed
/// transaction (retried with backoff, the previous rules staying in place) and every
/// `full_resync_period` (zero: never).
pub async fn run(client: kube::Client, opts: NetpolOptions) -> Result<(), NetpolError> {
    run_with(
        client,
        opts,
        Arc::new(|script: String| nft::apply_blocking(&script, false)),
    )
    .await
}

/// Applies one script as one transaction (blocking; run on a blocking thread).
pub(crate) type Applier = Arc<dyn Fn(String) -> Result<(), NetpolError> + Send + Sync>;

/// [`run`] with the way scripts are applied given (tests record them instead).
pub(crate) async fn run_with(
    client: kube::Client,
    opts: NetpolOptions,
    applier: Applier,
) -> Result<(), NetpolError> {
    nft::check_table_name(&opts.table)?;
    let notify = Arc::new(Notify::new());
    let (policies, t1) = informer(
        Api::<NetworkPolicy>::all(client.clone()),
        strip_policy,
        notify.clone(),
        "NetworkPolicy",
    );
    let (pods, t2) = informer(
        Api::<Pod>::all(client.clone()),
        strip_pod,
        notify.clone(),
        "Pod",
    );
    let (namespaces, t3) = informer(
        Api::<Namespace>::all(client),
        strip_namespace,
        notify.clone(),
        "Namespace",
    );
    let tasks = Tasks(vec![("NetworkPolicy", t1), ("Pod", t2), ("Namespace", t3)]);
    policies
        .wait_until_ready()
        .await
        .map_err(|_| NetpolError::InformerStopped("NetworkPolicy"))?;
    pods.wait_until_ready()
        .await
        .map_err(|_| NetpolError::InformerStopped("Pod"))?;
    namespaces
        .wait_until_ready()
        .await
        .map_err(|_| NetpolError::InformerStopped("Namespace"))?;
    tracing::info!(node = %opts.node_name, table = %opts.table, "NetworkPolicy enforcer started");

    let full_period = if opts.full_resync_period.is_zero() {
        Duration::from_secs(u64::from(u32::MAX))
    } else {
        opts.full_resync_period
    };
    let mut syncer = Syncer::new(&opts.node_name, &opts.table);
    let mut last_full = Instant::now();
    let mut failures = 0u32;
    loop {
        if let Some((kind, _)) = tasks.0.iter().find(|(_, t)| t.is_finished()) {
            return Err(NetpolError::InformerStopped(kind));
        }
        let started = Instant::now();
        if last_full.elapsed() >= full_period {
            syncer.invalidate();
        }
        let full = syncer.applied.is_none();
        let policy_list: Vec<NetworkPolicy> =
            policies.state().iter().map(|p| (**p).clone()).collect();
        let mut pod_list: Vec<PodInfo> = pods
            .state()
            .iter()
            .filter_map(|p| PodInfo::from_pod(p))
            .collect();
        pod_list.extend(model::builtin_dns_pod(&opts.builtin_dns_ips));
        let ns_list: Vec<NamespaceInfo> = namespaces
            .state()
            .iter()
            .filter_map(|n| NamespaceInfo::from_namespace(n))
            .collect();
        let (desired, script) = syncer.plan(&policy_list, &pod_list, &ns_list);
        let mut retry = None;
        if script.is_empty() {
            syncer.applied(desired, true);
        } else {
            let bytes = script.len();
            let apply = applier.clone();
            let result = match tokio::task::spawn_blocking(move || apply(script)).await {
                Ok(r) => r,
                Err(e) => Err(NetpolError::Io(std::io::Error::other(e.to_string()))),
            };
            match result {
                Ok(()) => {
                    syncer.applied(desired, true);
                    failures = 0;
                    if full {
                        last_full = Instant::now();
                    }
                    tracing::debug!(
                        full,
                        bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "NetworkPolicy rules synced"
                    );
                }
                Err(e) => {
                    syncer.applied(desired, false);
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures);
                    tracing::warn!(error = %e, retry_in = ?delay, "applying NetworkPolicy rules failed; the previous rules stay in place");
                    retry = Some(delay);
                }
            }
        }
        let until_full = full_period.saturating_sub(last_full.elapsed());
        let wait = retry.map_or(until_full, |r| r.min(until_full));
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        let since = started.elapsed();
        if since < opts.min_sync_interval {
            tokio::time::sleep(opts.min_sync_interval - since).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{np, ns, pod, NODE};
    use serde_json::json;

    #[test]
    fn first_sync_rebuilds_then_only_changes() {
        let mut s = Syncer::new(NODE, "t");
        let pods = vec![pod("default", "web", NODE, "10.42.0.2", &[("app", "web")])];
        let nss = vec![ns("default", &[])];
        let (d, script) = s.plan(&[], &pods, &nss);
        assert!(
            script.starts_with("add table ip t\ndelete table ip t\nadd table ip t\n"),
            "{script}"
        );
        assert!(
            script.contains("add table ip6 t\ndelete table ip6 t\n"),
            "stale ip6 table removed at start"
        );
        s.applied(d, true);
        let (d, script) = s.plan(&[], &pods, &nss);
        assert_eq!(script, "");
        s.applied(d, true);
        let policies = vec![np("default", "deny", json!({"podSelector": {}}))];
        let (d, script) = s.plan(&policies, &pods, &nss);
        assert!(script.starts_with("add chain ip t ing-"), "{script}");
        // a failure: the next sync is a full rebuild
        s.applied(d, false);
        let (_, script) = s.plan(&policies, &pods, &nss);
        assert!(
            script.starts_with("add table ip t\ndelete table ip t\n"),
            "{script}"
        );
    }

    #[test]
    fn ipv6_table_follows_local_ipv6_pods() {
        let mut s = Syncer::new(NODE, "t");
        let nss = vec![ns("default", &[])];
        let policies = vec![np("default", "deny", json!({"podSelector": {}}))];
        let v6 = vec![pod("default", "web", NODE, "fd00::2", &[])];
        let (d, script) = s.plan(&policies, &v6, &nss);
        assert!(script.contains("add table ip6 t\ndelete table ip6 t\nadd table ip6 t\n"));
        assert!(d.v6.is_some());
        s.applied(d, true);
        let (d, script) = s.plan(&policies, &[], &nss);
        assert!(d.v6.is_none());
        assert!(
            script.ends_with("add table ip6 t\ndelete table ip6 t\n"),
            "{script}"
        );
    }

    #[test]
    fn skipped_policies_are_reported_once() {
        let mut s = Syncer::new(NODE, "t");
        let bad = vec![np(
            "default",
            "bad",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
        )];
        let _ = s.plan(&bad, &[], &[]);
        assert_eq!(s.reported.len(), 1);
        let _ = s.plan(&[], &[], &[]);
        assert!(s.reported.is_empty());
    }

    #[test]
    fn strip_keeps_what_the_model_needs() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "p", "labels": {"a": "b"}, "annotations": {"x": "y"}},
            "spec": {"nodeName": "n", "volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "c", "image": "busybox", "command": ["sleep"], "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": "10.42.0.2", "podIPs": [{"ip": "10.42.0.2"}], "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let before = PodInfo::from_pod(&p).unwrap();
        strip_pod(&mut p);
        assert_eq!(PodInfo::from_pod(&p).unwrap(), before);
        assert!(p.metadata.annotations.is_none());
        assert!(p.spec.as_ref().unwrap().volumes.is_none());
        assert!(p.spec.as_ref().unwrap().containers[0].image.is_none());
    }

    #[test]
    fn retry_backoff_is_bounded() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(100), MAX_RETRY);
    }
}
