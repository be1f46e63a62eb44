//! The node agent: starts (or connects to) the container runtime, imports the sandbox
//! image and the air-gap images, registers the Node, writes the CNI config once the
//! node has its podCIDR, keeps the node status and Lease fresh, and runs the pod
//! workers. Pods already running when it starts are adopted (fail-static).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::containerd::{ContainerdConfig, RuntimeEndpoint};
use crate::cri::CriClient;
use crate::node::NodeConfig;
use crate::pods::PodConfig;

/// podCIDR used when the node IPAM controller gives none in time.
pub const FALLBACK_POD_CIDR: &str = "10.42.0.0/24";

/// Settings of the node agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Node name (`--node-name`, default: the hostname).
    pub node_name: String,
    /// Node IP (`--node-ip`).
    pub node_ip: IpAddr,
    /// The rk3s data dir.
    pub data_dir: PathBuf,
    /// Cluster DNS IP(s).
    pub cluster_dns: Vec<String>,
    /// Cluster domain.
    pub cluster_domain: String,
    /// An existing CRI socket (`--container-runtime-endpoint`); None runs rk3s's own
    /// containerd.
    pub runtime_endpoint: Option<String>,
    /// State dir of rk3s's own containerd (default `/run/rk3s/containerd`).
    pub containerd_state_dir: Option<PathBuf>,
    /// k3s-style registries file (`--private-registry`); ignored when it does not exist.
    pub private_registry: Option<PathBuf>,
    /// True on servers (control-plane role labels).
    pub control_plane: bool,
    /// Extra node labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Taints to register the node with (`--node-taint`).
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// Masquerade and MTU of the pods' bridge (set when flannel runs).
    pub pod_network: crate::cni::PodNetwork,
    /// The node's ExternalIP (`--node-external-ip`).
    pub external_ip: Option<IpAddr>,
    /// The kubelet API (`:10250`): where to listen, the cluster CA that verifies clients
    /// and the serving certificate. None: no kubelet API.
    pub kubelet_api: Option<KubeletApiOptions>,
}

/// Settings of the kubelet HTTPS API.
#[derive(Clone, Debug)]
pub struct KubeletApiOptions {
    /// Listen address (upstream: 0.0.0.0:10250).
    pub listen: std::net::SocketAddr,
    /// Cluster CA certificate (PEM): verifies the API server's client certificate.
    pub ca_cert_pem: String,
    /// Where the kubelet's serving certificate comes from.
    pub serving: KubeletServing,
}

/// The kubelet API's serving certificate.
#[derive(Clone, Debug)]
pub enum KubeletServing {
    /// Use this certificate and key (PEM), fixed for the process's life.
    Provided {
        /// Certificate (PEM).
        cert_pem: String,
        /// Private key (PEM).
        key_pem: String,
    },
    /// Present whatever this holds at each handshake: its owner renews it while the
    /// kubelet runs (an agent's from the supervisor, a server's own node's from the CA).
    Live(Arc<rk3s_pki::LiveCert>),
}

/// Errors of the agent's start-up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// containerd could not be started or found.
    #[error("container runtime: {0}")]
    Runtime(#[from] crate::containerd::ContainerdError),
    /// CRI calls failed.
    #[error("CRI: {0}")]
    Cri(#[from] crate::cri::CriError),
    /// The sandbox image could not be provided.
    #[error("sandbox image: {0}")]
    Image(#[from] crate::image::ImageError),
    /// Writing the CNI config failed.
    #[error("CNI: {0}")]
    Cni(#[from] crate::cni::CniError),
    /// API calls failed.
    #[error("{0}")]
    Kubelet(#[from] crate::KubeletError),
}

fn images_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("agent/images")
}

/// Imports the archives of the images dir that are new or changed since `seen`.
async fn import_new(
    dir: &std::path::Path,
    socket: &std::path::Path,
    seen: &mut std::collections::HashMap<PathBuf, SystemTime>,
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(PathBuf, SystemTime)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && crate::image::is_image_archive(p))
        .filter_map(|p| {
            std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (p, t))
        })
        .collect();
    files.sort();
    for (p, t) in files {
        if seen.get(&p) == Some(&t) {
            continue;
        }
        let t0 = Instant::now();
        match crate::image::import(&p, socket).await {
            Ok(names) => {
                tracing::info!(archive = %p.display(), images = ?names, elapsed_ms = t0.elapsed().as_millis() as u64, "imported images")
            }
            Err(e) => tracing::warn!(archive = %p.display(), error = %e, "image import failed"),
        }
        seen.insert(p, t);
    }
}

/// Runs the node agent until it fails.
pub async fn run(client: kube::Client, opts: AgentOptions) -> Result<(), AgentError> {
    let t0 = Instant::now();
    let mut cfg = ContainerdConfig::new(&opts.data_dir);
    if let Some(dir) = &opts.containerd_state_dir {
        cfg = cfg.with_state_dir(dir);
    }
    cfg.private_registry = opts.private_registry.clone();
    let conf_dir = cfg.cni_conf_dir.clone();
    let runtime = RuntimeEndpoint::start(cfg, opts.runtime_endpoint.as_deref()).await?;
    let cri = CriClient::connect(runtime.socket()).await?;
    let version = cri.version().await?;
    tracing::info!(runtime = %version.runtime_name, version = %version.runtime_version, socket = %runtime.socket().display(), "container runtime ready");
    let img_dir = images_dir(&opts.data_dir);
    let _ = std::fs::create_dir_all(&img_dir);
    let pause_dir = opts.data_dir.join("agent/etc/images");
    let _ = std::fs::create_dir_all(&pause_dir);
    if crate::image::ensure_pause_image(&cri, &pause_dir).await? {
        tracing::info!("sandbox image built and imported");
    }
    let mut seen = std::collections::HashMap::new();
    import_new(&img_dir, runtime.socket(), &mut seen).await;

    let node_cfg = NodeConfig {
        name: opts.node_name.clone(),
        ip: opts.node_ip,
        data_dir: opts.data_dir.clone(),
        control_plane: opts.control_plane,
        labels: opts.labels.clone(),
        taints: opts.taints.clone(),
        external_ip: opts.external_ip,
    };
    let node = loop {
        match crate::node::register(&client, &node_cfg).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(node = %opts.node_name, error = %e, "node registration failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(node = %opts.node_name, elapsed_ms = t0.elapsed().as_millis() as u64, "node registered");
    if let Some(api) = &opts.kubelet_api {
        let serving = match &api.serving {
            KubeletServing::Provided { cert_pem, key_pem } => {
                rk3s_pki::LiveCert::from_pem(cert_pem, key_pem).map(Arc::new)
            }
            KubeletServing::Live(live) => Ok(live.clone()),
        };
        match serving {
            Ok(serving) => {
                let sopts = crate::server::KubeletServerOptions {
                    listen: api.listen,
                    node_name: opts.node_name.clone(),
                    serving,
                    client_ca_pem: api.ca_cert_pem.clone(),
                    cri: cri.clone(),
                    authorizer: Some(Arc::new(crate::server::WebhookAuth::new(client.clone()))),
                    pods: None,
                };
                tokio::spawn(async move {
                    // The port may still be held (a previous process, a test); retry.
                    let mut delay = Duration::from_secs(1);
                    loop {
                        match crate::server::serve(sopts.clone()).await {
                            Ok(()) => return,
                            Err(e) => {
                                tracing::error!(error = %e, retry_in_s = delay.as_secs(), "kubelet API stopped; retrying");
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(Duration::from_secs(30));
                            }
                        }
                    }
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "unusable kubelet serving certificate; no kubelet API")
            }
        }
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    let status = tokio::spawn(crate::node::run_status(
        client.clone(),
        node_cfg.clone(),
        cri.clone(),
        wake.clone(),
    ));
    let lease = tokio::spawn(crate::node::run_lease(
        client.clone(),
        opts.node_name.clone(),
        node.metadata.uid.clone(),
    ));

    let cidr = match crate::node::wait_pod_cidr(&client, &opts.node_name, Duration::from_secs(10))
        .await
    {
        Some(c) => c,
        None => {
            tracing::warn!(node = %opts.node_name, cidr = FALLBACK_POD_CIDR, "the node got no podCIDR from the node IPAM controller; using the fallback");
            FALLBACK_POD_CIDR.to_string()
        }
    };
    let ipam_dir = opts.data_dir.join("agent/cni/networks");
    if crate::cni::write_config(&conf_dir, &cidr, &ipam_dir, opts.pod_network)? {
        tracing::info!(pod_cidr = %cidr, dir = %conf_dir.display(), "CNI config written");
    }
    // containerd picks the config up by itself; the node turns Ready when it reports
    // NetworkReady.
    let wake2 = wake.clone();
    let cri2 = cri.clone();
    let ready_watch = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let facts = crate::node::runtime_facts(&cri2).await;
            if facts.network_error.is_none() {
                wake2.notify_one();
                return;
            }
        }
    });

    let socket = runtime.socket().to_path_buf();
    let importer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            import_new(&img_dir, &socket, &mut seen).await;
        }
    });

    let pod_cfg = PodConfig {
        node_name: opts.node_name.clone(),
        node_ip: opts.node_ip.to_string(),
        data_dir: opts.data_dir.clone(),
        cluster_dns: opts.cluster_dns.clone(),
        cluster_domain: opts.cluster_domain.clone(),
    };
    let r = crate::pods::run(client, cri, pod_cfg).await;
    status.abort();
    lease.abort();
    importer.abort();
    ready_watch.abort();
    drop(runtime);
    r.map_err(AgentError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn import_new_skips_non_archives_and_missing_dirs() {
        let mut seen = std::collections::HashMap::new();
        import_new(
            std::path::Path::new("/nonexistent/rk3s-images"),
            std::path::Path::new("/nonexistent.sock"),
            &mut seen,
        )
        .await;
        assert!(seen.is_empty());
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        assert!(std::fs::write(d.path().join("notes.txt"), "x").is_ok());
        import_new(
            d.path(),
            std::path::Path::new("/nonexistent.sock"),
            &mut seen,
        )
        .await;
        assert!(
            seen.is_empty(),
            "only *.tar / *.tar.gz / *.tar.zst are imported"
        );
        assert!(std::fs::write(d.path().join("img.tar"), "x").is_ok());
        import_new(
            d.path(),
            std::path::Path::new("/nonexistent.sock"),
            &mut seen,
        )
        .await;
        assert_eq!(
            seen.len(),
            1,
            "a failed import is remembered and not retried until the file changes"
        );
    }
}
