//! The loop: wait for this node's podCIDR, set up the backend, publish the
//! annotations, then keep the kernel equal to the plan on every Node change and every
//! resync period.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Notify;

use crate::kernel::{Kernel, VxlanConfig};
use crate::plan::{self, Ipv4Net, Mac, Peer, VXLAN_DEVICE};
use crate::{masq, Backend, FlannelError, FlannelOptions};

/// Runs the pod network on this host until an error (the caller restarts it). With
/// backend `none` returns at once, touching nothing.
pub async fn run(client: kube::Client, opts: FlannelOptions) -> Result<(), FlannelError> {
    if opts.backend == Backend::None {
        tracing::info!("flannel backend none: the pod network across nodes is the user's CNI");
        return Ok(());
    }
    let kernel = Kernel::new()?;
    run_with(client, opts, kernel, Vec::new()).await
}

/// [`run`] against a given [`Kernel`] (e.g. one opened in a network namespace), with
/// `nft` run through `nft_prefix` (e.g. `ip netns exec NS`).
pub async fn run_with(
    client: kube::Client,
    opts: FlannelOptions,
    kernel: Kernel,
    nft_prefix: Vec<String>,
) -> Result<(), FlannelError> {
    if opts.backend == Backend::None {
        return Ok(());
    }
    let cluster = first_ipv4_cidr(&opts.cluster_cidr)?;
    let api: Api<Node> = Api::all(client);
    let (own_cidr_text, own_cidr) = wait_for_pod_cidr(&api, &opts.node_name).await?;
    let uplink = kernel.uplink(opts.node_ip, opts.iface.as_deref()).await?;
    tracing::info!(node = %opts.node_name, pod_cidr = %own_cidr, backend = %opts.backend, uplink = %uplink.name, mtu = uplink.mtu, "pod network starting");
    if opts.masquerade {
        let script = masq::render(cluster, own_cidr);
        let prefix = nft_prefix;
        tokio::task::spawn_blocking(move || masq::apply(&prefix, &script))
            .await
            .map_err(|e| FlannelError::Nft(e.to_string()))??;
    }
    let vxlan_cfg = VxlanConfig {
        uplink_index: uplink.index,
        local_ip: opts.node_ip,
        mtu: crate::pod_mtu(Backend::Vxlan, uplink.mtu),
        address: own_cidr.network(),
    };
    let mut device: Option<(u32, Mac)> = None;

    let notify = Arc::new(Notify::new());
    let (store, writer) = reflector::store();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let n2 = notify.clone();
    let watch = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => n2.notify_one(),
                Err(e) => tracing::warn!(error = %e, "pod network: Node watch failed, retrying"),
            }
        }
    });
    let _abort = AbortOnDrop(watch);
    store
        .wait_until_ready()
        .await
        .map_err(|_| FlannelError::WatchEnded)?;

    let mut last_peers: Option<Vec<Peer>> = None;
    let mut next_resync = tokio::time::Instant::now();
    loop {
        let nodes = store.state();
        let own = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(opts.node_name.as_str()));
        if let Some(own) = own {
            let now = own.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            if let Some(now) = now.filter(|c| c.parse::<Ipv4Net>().ok() != Some(own_cidr)) {
                return Err(FlannelError::PodCidrChanged {
                    old: own_cidr_text,
                    new: now,
                });
            }
        }
        let resync = tokio::time::Instant::now() >= next_resync;
        // The device: created at start, recreated if someone deleted it.
        if opts.backend == Backend::Vxlan {
            let present = kernel.link_index(VXLAN_DEVICE).await?;
            if resync || device.is_none() || present != device.map(|d| d.0) {
                device = Some(kernel.ensure_vxlan(&vxlan_cfg).await?);
                last_peers = None;
            }
        } else if resync && kernel.delete_link(VXLAN_DEVICE).await? {
            tracing::info!(
                device = VXLAN_DEVICE,
                "deleted the VXLAN device (backend is not vxlan)"
            );
        }
        // The annotations.
        let wanted = plan::own_annotations(
            opts.backend,
            device.map(|d| d.1),
            opts.node_ip,
            opts.public_ip_overwrite,
        );
        if let Some(own) = own {
            patch_annotations(&api, own, &opts.node_name, &wanted).await?;
        }
        // The peers.
        let peers = plan::peers(
            nodes.iter().map(|n| n.as_ref()),
            &opts.node_name,
            own_cidr,
            cluster,
            opts.backend,
        );
        if resync || last_peers.as_ref() != Some(&peers) {
            let vx = device.map(|d| d.0);
            let desired = plan::desired_state(opts.backend, &peers);
            let current = kernel.current_state(vx, cluster, own_cidr).await?;
            let p = plan::diff(&desired, &current);
            if !p.is_empty() {
                tracing::info!(
                    peers = peers.len(),
                    add_routes = p.add_routes.len(),
                    delete_routes = p.delete_routes.len(),
                    add_fdb = p.add_fdb.len(),
                    delete_fdb = p.delete_fdb.len(),
                    "pod network: updating peer entries"
                );
            }
            match kernel.apply(&p, vx).await {
                Ok(()) => last_peers = Some(peers),
                Err(e) => {
                    tracing::warn!(error = %e, "pod network: retrying in 5 s");
                    last_peers = None;
                    next_resync = tokio::time::Instant::now() + Duration::from_secs(5);
                }
            }
            if resync {
                next_resync = tokio::time::Instant::now() + opts.resync_period;
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(next_resync) => {}
        }
        // Coalesce bursts of Node events.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn patch_annotations(
    api: &Api<Node>,
    own: &Node,
    name: &str,
    wanted: &BTreeMap<String, String>,
) -> Result<(), FlannelError> {
    let diff = plan::annotations_to_patch(own, wanted);
    if diff.is_empty() {
        return Ok(());
    }
    let body = serde_json::json!({"metadata": {"annotations": diff}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    tracing::info!(node = name, "published the flannel annotations");
    Ok(())
}

/// The first IPv4 CIDR of a comma-separated list.
fn first_ipv4_cidr(list: &str) -> Result<Ipv4Net, FlannelError> {
    list.split(',')
        .find_map(|c| c.trim().parse::<Ipv4Net>().ok())
        .ok_or_else(|| FlannelError::InvalidCidr(list.to_string()))
}

/// Waits until this node has an IPv4 `spec.podCIDR` (the node IPAM controller sets it
/// after registration).
async fn wait_for_pod_cidr(api: &Api<Node>, name: &str) -> Result<(String, Ipv4Net), FlannelError> {
    let mut logged = false;
    loop {
        match api.get_opt(name).await {
            Ok(Some(n)) => {
                let spec = n.spec.unwrap_or_default();
                let cidrs = spec
                    .pod_cidrs
                    .unwrap_or_default()
                    .into_iter()
                    .chain(spec.pod_cidr);
                for c in cidrs {
                    if let Ok(net) = c.parse::<Ipv4Net>() {
                        return Ok((c, net));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "pod network: reading the Node"),
        }
        if !logged {
            tracing::info!(node = name, "pod network: waiting for the node's podCIDR");
            logged = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_cidr_lists() {
        assert_eq!(
            first_ipv4_cidr("fd00:42::/56, 10.42.0.0/16")
                .unwrap()
                .to_string(),
            "10.42.0.0/16"
        );
        assert!(first_ipv4_cidr("fd00:42::/56").is_err());
    }
}
