//! The `default/kubernetes` Endpoints and EndpointSlice list every live API server, as
//! upstream's lease endpoint reconciler keeps them: each server renews a short Lease
//! (`kube-system/apiserver-endpoint-<address>`, [`LEASE_TTL_SECS`]) every
//! [`RENEW_INTERVAL`] and then writes the addresses of all unexpired leases, sorted, into
//! the Endpoints and the EndpointSlice (only when they differ, compare-and-swap). A server
//! that stops renewing drops out within the TTL plus one interval, so agents and pods
//! that reach `kubernetes.default` fail over to the others. One server alone lists itself.

use std::net::IpAddr;
use std::time::Duration;

use rk3s_store::StoreError;
use serde_json::{json, Value};

use crate::state::Inner;
use crate::{object, ApiServerError};

/// How long a server's endpoint lease lives without renewal (upstream: 15 s).
pub const LEASE_TTL_SECS: i64 = 15;
/// How often each server renews its lease and reconciles the endpoints (upstream: 10 s).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// The label that marks endpoint leases.
pub const LEASE_LABEL: &str = "rk3s.io/apiserver-endpoint";
const LEASE_NAMESPACE: &str = "kube-system";

/// The lease name of a server's advertised address.
pub fn lease_name(addr: IpAddr) -> String {
    format!(
        "apiserver-endpoint-{}",
        addr.to_string().replace(['.', ':'], "-")
    )
}

fn lease_key(inner: &Inner, name: &str) -> String {
    match inner
        .schemas
        .registry
        .get("coordination.k8s.io", "v1", "leases")
    {
        Some(r) => r.key(Some(LEASE_NAMESPACE), name),
        None => format!("/registry/coordination.k8s.io/leases/{LEASE_NAMESPACE}/{name}"),
    }
}

fn to_bytes(v: &Value) -> Result<Vec<u8>, ApiServerError> {
    serde_json::to_vec(v).map_err(|e| ApiServerError::Config(e.to_string()))
}

/// Creates or renews this server's endpoint lease.
pub async fn renew(inner: &Inner, addr: IpAddr) -> Result<(), ApiServerError> {
    let name = lease_name(addr);
    let key = lease_key(inner, &name);
    let now = object::now_micro_rfc3339();
    let spec = json!({
        "holderIdentity": addr.to_string(),
        "leaseDurationSeconds": LEASE_TTL_SECS,
        "renewTime": now,
    });
    match inner.store.get(&key).await? {
        Some(kv) => {
            let mut cur: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| json!({}));
            if let Some(o) = cur.as_object_mut() {
                o.insert("spec".into(), spec);
            }
            match inner
                .store
                .update(&key, to_bytes(&cur)?, kv.mod_revision)
                .await
            {
                Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        None => {
            let obj = json!({
                "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
                "metadata": {
                    "name": name, "namespace": LEASE_NAMESPACE,
                    "labels": {LEASE_LABEL: "true"},
                    "uid": object::new_uid(),
                    "creationTimestamp": object::now_rfc3339(),
                },
                "spec": spec,
            });
            match inner.store.create(&key, to_bytes(&obj)?).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// The addresses of the unexpired endpoint leases at `now`, sorted and deduplicated.
pub async fn live_addresses(
    inner: &Inner,
    now: jiff::Timestamp,
) -> Result<Vec<IpAddr>, ApiServerError> {
    let prefix = lease_key(inner, "");
    let list = inner.store.list(&prefix, Default::default()).await?;
    let mut out: Vec<IpAddr> = list
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|l| l["metadata"]["labels"][LEASE_LABEL] == "true")
        .filter_map(|l| {
            let renewed: jiff::Timestamp = l["spec"]["renewTime"].as_str()?.parse().ok()?;
            let ttl = l["spec"]["leaseDurationSeconds"].as_i64()?;
            let alive = renewed.as_second() + ttl >= now.as_second();
            let ip: IpAddr = l["spec"]["holderIdentity"].as_str()?.parse().ok()?;
            alive.then_some(ip)
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Writes `fields` of `obj` into `key` when they differ (creating it when missing);
/// a concurrent writer wins and the next round reconciles again.
async fn reconcile(
    inner: &Inner,
    key: &str,
    obj: Value,
    fields: &[&str],
) -> Result<(), ApiServerError> {
    let Some(kv) = inner.store.get(key).await? else {
        let mut obj = obj;
        if let Some(m) = object::meta_mut(&mut obj) {
            m.insert("uid".into(), json!(object::new_uid()));
            m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
        }
        return match inner.store.create(key, to_bytes(&obj)?).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e.into()),
        };
    };
    let Ok(mut cur) = serde_json::from_slice::<Value>(&kv.value) else {
        return Ok(());
    };
    let mut changed = false;
    for f in fields {
        if cur.get(*f) != obj.get(*f) {
            if let (Some(c), Some(v)) = (cur.as_object_mut(), obj.get(*f)) {
                c.insert((*f).to_string(), v.clone());
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(());
    }
    match inner
        .store
        .update(key, to_bytes(&cur)?, kv.mod_revision)
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sets the `kubernetes` Endpoints and EndpointSlice to `addrs` (the families of the first
/// address; the others of another family are left out, as one slice has one family).
pub async fn write_endpoints(
    inner: &Inner,
    addrs: &[IpAddr],
    port: u16,
) -> Result<(), ApiServerError> {
    let Some(first) = addrs.first() else {
        return Ok(());
    };
    let same: Vec<String> = addrs
        .iter()
        .filter(|a| a.is_ipv6() == first.is_ipv6())
        .map(IpAddr::to_string)
        .collect();
    reconcile(
        inner,
        "/registry/core/endpoints/default/kubernetes",
        json!({
            "kind": "Endpoints", "apiVersion": "v1",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{
                "addresses": same.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }],
        }),
        &["subsets"],
    )
    .await?;
    let family = if first.is_ipv6() { "IPv6" } else { "IPv4" };
    reconcile(
        inner,
        "/registry/discovery.k8s.io/endpointslices/default/kubernetes",
        json!({
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": family,
            "endpoints": same.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }),
        &["addressType", "endpoints", "ports"],
    )
    .await
}

/// One round: renew this server's lease, then publish every live server.
pub async fn reconcile_once(inner: &Inner, addr: IpAddr, port: u16) -> Result<(), ApiServerError> {
    renew(inner, addr).await?;
    let mut live = live_addresses(inner, jiff::Timestamp::now()).await?;
    if !live.contains(&addr) {
        // Our own lease was just written: a store that lags still lists us.
        live.push(addr);
        live.sort();
    }
    write_endpoints(inner, &live, port).await
}

/// Runs [`reconcile_once`] every [`RENEW_INTERVAL`] for as long as the server runs.
pub fn spawn(inner: std::sync::Arc<Inner>, addr: IpAddr, port: u16) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            if let Err(e) = reconcile_once(&inner, addr, port).await {
                tracing::warn!(error = %e, "kubernetes endpoints reconcile failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{call, server};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_live_server_is_listed_and_expired_ones_drop_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = server(dir.path()).await;
        let inner = api.inner();
        let me: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.9".parse().expect("ip");
        // Another server renews its lease on the same store.
        renew(inner, other).await.expect("renew other");
        reconcile_once(inner, me, 6443).await.expect("reconcile");
        let (_, eps) = call(
            &api,
            "GET",
            "/api/v1/namespaces/default/endpoints/kubernetes",
            None,
        )
        .await;
        assert_eq!(
            eps["subsets"][0]["addresses"],
            json!([{"ip": "192.0.2.7"}, {"ip": "192.0.2.9"}])
        );
        let (_, slice) = call(
            &api,
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
            None,
        )
        .await;
        assert_eq!(
            slice["endpoints"].as_array().map(Vec::len),
            Some(2),
            "{slice}"
        );
        let (code, lease) = call(
            &api,
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/apiserver-endpoint-192-0-2-9",
            None,
        )
        .await;
        assert_eq!(code, 200, "{lease}");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], LEASE_TTL_SECS);

        // The other server stops renewing: past its TTL it drops out.
        let key = lease_key(inner, &lease_name(other));
        let kv = inner.store.get(&key).await.expect("get").expect("lease");
        let mut l: Value = serde_json::from_slice(&kv.value).expect("json");
        l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
        inner
            .store
            .update(&key, to_bytes(&l).expect("bytes"), kv.mod_revision)
            .await
            .expect("age the lease");
        assert_eq!(
            live_addresses(inner, jiff::Timestamp::now())
                .await
                .expect("live"),
            vec![me]
        );
        reconcile_once(inner, me, 6443).await.expect("reconcile");
        let (_, eps) = call(
            &api,
            "GET",
            "/api/v1/namespaces/default/endpoints/kubernetes",
            None,
        )
        .await;
        assert_eq!(eps["subsets"][0]["addresses"], json!([{"ip": "192.0.2.7"}]));
    }
}
