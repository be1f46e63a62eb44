//! `rk3s agent`: a machine that joins a cluster (k3s's `k3s agent`): it fetches and pins
//! the cluster CA, gets its certificates from the server's supervisor, registers its
//! node and runs the node agent with its own containerd, the Service proxy, cluster DNS,
//! NetworkPolicy enforcement and the pod network — acting as `system:node:<name>`,
//! `system:kube-proxy` and `system:rk3s-controller`, never as a cluster admin.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

/// Flags of `rk3s agent` (k3s names; every flag can also be set in the config file).
#[derive(Args, Debug, Clone)]
#[command(args_override_self = true)]
pub struct AgentArgs {
    /// Config file: YAML whose keys are these flags' long names
    #[arg(long, short = 'c', value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Server to connect to, https://HOST:PORT
    #[arg(long, short = 's', value_name = "URL", env = "RK3S_URL")]
    pub server: String,
    /// Token to join with: the server's <data-dir>/server/token (K10<CA hash>::server:<secret>),
    /// a bootstrap token from `rk3s token create`, or a bare secret (CA not pinned)
    #[arg(
        long,
        short = 't',
        value_name = "TOKEN",
        env = "RK3S_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the token
    #[arg(long, value_name = "FILE", env = "RK3S_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Folder to hold state
    #[arg(long, short = 'd', value_name = "DIR", default_value = "/var/lib/rk3s")]
    pub data_dir: PathBuf,
    /// Node name (default: the hostname)
    #[arg(long, value_name = "NAME", env = "RK3S_NODE_NAME")]
    pub node_name: Option<String>,
    /// Append a random id to the node name (kept in <data-dir>/agent/node-id)
    #[arg(long)]
    pub with_node_id: bool,
    /// IP address to advertise for the node (default: the address of the default route's interface)
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,
    /// External IP address to advertise for the node
    #[arg(long, value_name = "IP")]
    pub node_external_ip: Option<IpAddr>,
    /// Label to register the node with, KEY=VALUE (repeatable)
    #[arg(long, value_name = "KEY=VALUE", action = clap::ArgAction::Append)]
    pub node_label: Vec<String>,
    /// Taint to register the node with, KEY[=VALUE]:EFFECT (repeatable)
    #[arg(long, value_name = "KEY=VALUE:EFFECT", action = clap::ArgAction::Append)]
    pub node_taint: Vec<String>,
    /// Kubelet flag, KEY=VALUE (repeatable; rk3s's kubelet reads none yet and warns)
    #[arg(long, value_name = "KEY=VALUE", action = clap::ArgAction::Append)]
    pub kubelet_arg: Vec<String>,
    /// Private registry configuration file (k3s's registries.yaml format)
    #[arg(long, value_name = "FILE", default_value = "/etc/rk3s/registries.yaml")]
    pub private_registry: PathBuf,
    /// Use an existing CRI socket instead of rk3s's own containerd
    #[arg(long, value_name = "SOCKET")]
    pub container_runtime_endpoint: Option<String>,
    /// State dir (and socket) of rk3s's own containerd
    #[arg(long, value_name = "DIR", hide = true)]
    pub containerd_state_dir: Option<PathBuf>,
    /// Interface of the pod network between nodes (default: the node IP's interface)
    #[arg(long, value_name = "IFACE")]
    pub flannel_iface: Option<String>,
    /// Local port of the agent's load balancer over the API servers (127.0.0.1)
    #[arg(long, value_name = "PORT", default_value_t = 6444)]
    pub lb_server_port: u16,
    /// Upstream resolvers of the cluster DNS (default: /etc/resolv.conf)
    #[arg(long, value_name = "FILE", env = "RK3S_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax, e.g. `info`, `rk3s_kubelet=debug`)
    #[arg(long, value_name = "FILTER", env = "RK3S_LOG", default_value = "info")]
    pub log_level: String,
    /// Log file (`--log`, `--alsologtostderr`)
    #[command(flatten)]
    pub logging: crate::logging::LogArgs,
}

/// A `--node-label` value.
fn parse_label(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("invalid --node-label {s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        bail!("invalid --node-label {s:?}: empty key");
    }
    Ok((k.to_string(), v.to_string()))
}

/// A `--node-taint` value as a Node `spec.taints` entry.
fn parse_taint(s: &str) -> anyhow::Result<k8s_openapi::api::core::v1::Taint> {
    let v = parse_taint_json(s)?;
    serde_json::from_value(v).with_context(|| format!("invalid --node-taint {s:?}"))
}

fn parse_taint_json(s: &str) -> anyhow::Result<serde_json::Value> {
    let (kv, effect) = s
        .rsplit_once(':')
        .with_context(|| format!("invalid --node-taint {s:?}: expected KEY[=VALUE]:EFFECT"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        bail!(
            "invalid --node-taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
        );
    }
    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
    if k.is_empty() {
        bail!("invalid --node-taint {s:?}: empty key");
    }
    let mut t = serde_json::json!({"key": k, "effect": effect});
    if !v.is_empty() {
        t["value"] = v.into();
    }
    Ok(t)
}

/// The node name: the flag or the hostname, lower-cased, plus the persisted random id with
/// `--with-node-id`.
fn node_name(args: &AgentArgs) -> anyhow::Result<String> {
    let base = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(rk3s_kubelet::node::hostname)
        .to_ascii_lowercase();
    if !args.with_node_id {
        return Ok(base);
    }
    let path = args.data_dir.join("agent").join("node-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let mut b = [0u8; 4];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| anyhow::anyhow!("no randomness for the node id"))?;
            let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            id
        }
    };
    Ok(format!("{base}-{id}"))
}

/// The token: `--token`, else the contents of `--token-file`.
fn token(args: &AgentArgs) -> anyhow::Result<String> {
    if let Some(t) = args.token.as_ref().filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    if let Some(f) = &args.token_file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading --token-file {}", f.display()))?;
        if t.trim().is_empty() {
            bail!("--token-file {} is empty", f.display());
        }
        return Ok(t.trim().to_string());
    }
    bail!("a token is required to join: --token, --token-file or RK3S_TOKEN (the server's <data-dir>/server/token)")
}

/// The address of the interface of the default route, or 127.0.0.1.
fn primary_ip() -> IpAddr {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0");
    if let Ok(s) = sock {
        if s.connect("10.255.255.255:1").is_ok() {
            if let Ok(a) = s.local_addr() {
                if !a.ip().is_unspecified() {
                    return a.ip();
                }
            }
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Writes `contents` to `path` with mode 0600 (atomically: temp file + rename).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(contents.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Keeps what the server issued in `<data-dir>/agent/` (as k3s's agent does) and returns
/// a kube client for each identity.
async fn clients(
    dir: &Path,
    server: &str,
    joined: &rk3s_supervisor::Joined,
) -> anyhow::Result<(kube::Client, kube::Client, kube::Client)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join("client-ca.crt"), &joined.ca_pem)?;
    let mut out = Vec::new();
    for (name, cert) in [
        ("kubelet", &joined.kubelet_client),
        ("kubeproxy", &joined.kube_proxy),
        ("rk3s-controller", &joined.controller),
    ] {
        let file = match name {
            "kubelet" => "client-kubelet",
            "kubeproxy" => "client-kube-proxy",
            _ => "client-rk3s-controller",
        };
        write_private(&dir.join(format!("{file}.crt")), &cert.cert_pem)?;
        write_private(&dir.join(format!("{file}.key")), &cert.key_pem)?;
        let yaml = rk3s_pki::kubeconfig_yaml(
            server,
            &joined.ca_pem,
            &cert.cert_pem,
            &cert.key_pem,
            "default",
        )?;
        write_private(&dir.join(format!("{name}.kubeconfig")), &yaml)?;
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).context("kubeconfig")?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .context("client configuration")?;
        out.push(kube::Client::try_from(cfg).context("API client")?);
    }
    write_private(
        &dir.join("serving-kubelet.crt"),
        &joined.kubelet_serving.cert_pem,
    )?;
    write_private(
        &dir.join("serving-kubelet.key"),
        &joined.kubelet_serving.key_pem,
    )?;
    let controller = out.pop().context("controller client")?;
    let proxy = out.pop().context("proxy client")?;
    let kubelet = out.pop().context("kubelet client")?;
    Ok((kubelet, proxy, controller))
}

/// Keeps the load balancer's server list equal to the ready endpoints of the
/// `default/kubernetes` Service.
async fn follow_apiservers(client: kube::Client, lb: rk3s_supervisor::LoadBalancer) {
    use futures_util::StreamExt;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client, "default");
    let cfg =
        kube::runtime::watcher::Config::default().labels("kubernetes.io/service-name=kubernetes");
    let (store, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, kube::runtime::watcher(api, cfg));
    futures_util::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        if ev.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let mut servers = Vec::new();
        for s in store.state() {
            let port = s
                .ports
                .as_ref()
                .and_then(|p| p.iter().find_map(|p| p.port))
                .unwrap_or(6443);
            for e in &s.endpoints {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    servers.push(if a.contains(':') {
                        format!("[{a}]:{port}")
                    } else {
                        format!("{a}:{port}")
                    });
                }
            }
        }
        servers.sort();
        lb.set_servers(servers);
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    crate::logging::init(&crate::server::log_filter(&args.log_level), &args.logging)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4)))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let logging = args.logging.clone();
    let r = rt.block_on(serve(args));
    if let Err(e) = &r {
        crate::logging::log_fatal(&logging, "rk3s agent", e);
    }
    r
}

async fn serve(args: AgentArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let token = token(&args)?;
    let name = node_name(&args)?;
    let mut labels = BTreeMap::new();
    for l in &args.node_label {
        let (k, v) = parse_label(l)?;
        labels.insert(k, v);
    }
    let mut taints = Vec::new();
    for t in &args.node_taint {
        taints.push(parse_taint(t)?);
    }
    for a in &args.kubelet_arg {
        tracing::warn!(arg = %a, "--kubelet-arg is accepted but rk3s's kubelet reads no kubelet flags yet; ignored");
    }
    let node_ip = args.node_ip.unwrap_or_else(primary_ip);
    let agent_dir = args.data_dir.join("agent");
    let password_file = agent_dir.join("node-password");
    let password = rk3s_supervisor::read_or_create_node_password(&password_file)?;
    let mut node_ips = vec![node_ip];
    if let Some(e) = args.node_external_ip {
        node_ips.push(e);
    }
    let join_opts = rk3s_supervisor::JoinOptions {
        server: args.server.clone(),
        token,
        node_name: name.clone(),
        node_password: password,
        node_password_file: password_file,
        node_ips,
    };
    // Transport errors (the server is starting, the network is not up yet) are retried;
    // a refused token, a wrong CA or a taken node name are fatal.
    let mut delay = Duration::from_secs(1);
    let joined = loop {
        match rk3s_supervisor::join(&join_opts).await {
            Ok(j) => break j,
            Err(
                e @ (rk3s_supervisor::JoinError::Transport { .. }
                | rk3s_supervisor::JoinError::Http { status: 500.., .. }),
            ) => {
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "cannot reach the server yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(e) => return Err(e).context("joining the cluster"),
        }
    };
    tracing::info!(server = %joined.server, node = %name, apiservers = ?joined.apiservers, "joined the cluster");
    // Every client of this node talks to the local load balancer, which follows the API
    // servers (the `default/kubernetes` endpoints), `--server` last.
    let lb = rk3s_supervisor::LoadBalancer::start(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.lb_server_port),
        &joined.server,
        agent_dir.join("etc/rk3s-agent-load-balancer.json"),
    )
    .await
    .with_context(|| {
        format!(
            "starting the API server load balancer on 127.0.0.1:{}",
            args.lb_server_port
        )
    })?;
    lb.set_servers(joined.apiservers.clone());
    let (kubelet_client, proxy_client, controller_client) =
        clients(&agent_dir, &lb.url(), &joined).await?;
    tokio::spawn(follow_apiservers(controller_client.clone(), lb.clone()));
    let config = joined.config.clone();

    let mut opts = rk3s_kubelet::agent::AgentOptions {
        node_name: name.clone(),
        node_ip,
        data_dir: args.data_dir.clone(),
        cluster_dns: vec![config.cluster_dns.clone()],
        cluster_domain: config.cluster_domain.clone(),
        runtime_endpoint: args.container_runtime_endpoint.clone(),
        containerd_state_dir: args.containerd_state_dir.clone(),
        private_registry: Some(args.private_registry.clone()),
        control_plane: false,
        labels,
        taints,
        external_ip: args.node_external_ip,
        pod_network: Default::default(),
        kubelet_api: Some(rk3s_kubelet::agent::KubeletApiOptions {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10250),
            ca_cert_pem: joined.ca_pem.clone(),
            serving: rk3s_kubelet::agent::KubeletServing::Provided {
                cert_pem: joined.kubelet_serving.cert_pem.clone(),
                key_pem: joined.kubelet_serving.key_pem.clone(),
            },
        }),
    };
    let network_opts = crate::node_network::NodeNetworkOptions {
        node_name: name.clone(),
        node_ip,
        cluster_cidr: config.cluster_cidr.clone(),
        service_cidr: config.service_cidr.clone(),
        cluster_domain: config.cluster_domain.clone(),
        proxy: !config.disable_kube_proxy,
        dns: !config.disable_cluster_dns,
        network_policy: !config.disable_network_policy,
        resolv_conf: args.resolv_conf.clone(),
        flannel_backend: config.flannel_backend.parse().with_context(|| {
            format!("the server's flannel backend {:?}", config.flannel_backend)
        })?,
        flannel_iface: args.flannel_iface.clone(),
        ingress: !config.disable_ingress,
        local_storage: (!config.disable_local_storage).then(|| args.data_dir.join("storage")),
    };
    opts.pod_network = crate::node_network::pod_network(&network_opts).await;
    crate::node_network::spawn(
        crate::node_network::NodeNetworkClients {
            proxy: proxy_client,
            controller: controller_client,
        },
        network_opts,
    );
    let agent = tokio::spawn(async move {
        if let Err(e) = rk3s_kubelet::agent::run(kubelet_client, opts).await {
            tracing::error!(error = %e, "node agent stopped");
        }
    });
    tracing::info!(
        node = %name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rk3s agent is up"
    );
    crate::install::notify_ready();
    crate::heap::spawn_trimmer();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("signal handler")?;
    tokio::select! {
        _ = agent => { bail!("the node agent stopped") }
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; shutting down"); Ok(()) }
        _ = term.recv() => { tracing::info!("terminated; shutting down"); Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_taints() {
        assert_eq!(
            parse_label("a.io/x=y").expect("ok"),
            ("a.io/x".into(), "y".into())
        );
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=v").is_err());
        assert_eq!(
            parse_taint_json("dedicated=gpu:NoSchedule").expect("ok"),
            serde_json::json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})
        );
        assert_eq!(
            parse_taint_json("edge:NoExecute").expect("ok"),
            serde_json::json!({"key": "edge", "effect": "NoExecute"})
        );
        assert_eq!(
            parse_taint("edge:NoExecute").expect("typed").effect,
            "NoExecute"
        );
        assert!(parse_taint("edge").is_err());
        assert!(parse_taint("edge:Sometimes").is_err());
    }
}
