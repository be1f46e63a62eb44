//! `rk3s agent`: a machine that joins a cluster (k3s's `k3s agent`): it fetches and pins
//! the cluster CA, gets its certificates from the server's supervisor, registers its
//! node and runs the node agent with its own containerd, the Service proxy, cluster DNS,
//! NetworkPolicy enforcement and the pod network — acting as `system:node:<name>`,
//! `system:kube-proxy` and `system:rk3s-controller`, never as a cluster admin.
//!
//! Its certificates are renewed while it runs ([`AgentCredentials`]): every
//! `--cert-check-interval` the agent checks them with the server's rule
//! (`rk3s_pki::renewal_due`, the same 90-day window) and, when one is due, requests all of
//! them again from the supervisor exactly as the join did (through the local load
//! balancer, authenticated by the token and the node password, for fresh keys), rewrites
//! the files and swaps the clients' credentials in memory: new requests go out over new
//! connections with the new certificates, open watches finish on theirs; the kubelet
//! API presents its new serving certificate to new connections. This reuses the
//! join protocol rather than CertificateSigningRequests (upstream kubelet's rotation):
//! the supervisor already chooses each identity, checks the node password and needs no
//! approver, and it also covers the proxy's and controller's certificates.

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
    /// Certificates expiring within this are renewed while running (the server's window)
    #[arg(long, value_name = "DURATION", default_value = "2160h", value_parser = crate::server::parse_duration, hide = true)]
    pub cert_renew_before: Duration,
    /// How often certificates are checked for renewal while running
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = crate::server::parse_duration, hide = true)]
    pub cert_check_interval: Duration,
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

/// A kube client whose credentials can be replaced while it is in use: every request goes
/// to the current inner client (its own connection pool), so after [`LiveClient::swap`]
/// new requests open connections with the new certificate while requests and watches in
/// flight finish on the old one.
#[derive(Clone)]
struct LiveClient {
    current: std::sync::Arc<std::sync::RwLock<kube::Client>>,
}

impl LiveClient {
    fn new(inner: kube::Client) -> LiveClient {
        LiveClient {
            current: std::sync::Arc::new(std::sync::RwLock::new(inner)),
        }
    }

    fn get(&self) -> kube::Client {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn swap(&self, inner: kube::Client) {
        match self.current.write() {
            Ok(mut g) => *g = inner,
            Err(p) => *p.into_inner() = inner,
        }
    }

    /// The client the node's components hold.
    fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }
}

impl tower_service::Service<http::Request<kube::client::Body>> for LiveClient {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let inner = self.get();
        Box::pin(async move { inner.send(req).await })
    }
}

/// The identities of an agent: (kubeconfig name, certificate file stem).
const IDENTITIES: [(&str, &str); 3] = [
    ("kubelet", "client-kubelet"),
    ("kubeproxy", "client-kube-proxy"),
    ("rk3s-controller", "client-rk3s-controller"),
];

/// What the server issued this agent, kept in `<data-dir>/agent/` (as k3s's agent does)
/// and in its clients, renewed while it runs.
struct AgentCredentials {
    dir: PathBuf,
    /// The API server URL in the kubeconfigs (the local load balancer).
    server: String,
    /// Kubelet, kube-proxy and rk3s-controller clients, in [`IDENTITIES`] order.
    clients: [LiveClient; 3],
    /// The certificates in use.
    current: std::sync::Mutex<rk3s_supervisor::Joined>,
    /// The kubelet API's serving certificate, presented to new connections.
    serving: std::sync::Arc<rk3s_pki::LiveCert>,
}

impl AgentCredentials {
    /// Writes what the join brought and builds the clients.
    async fn new(
        dir: &Path,
        server: &str,
        joined: &rk3s_supervisor::Joined,
    ) -> anyhow::Result<AgentCredentials> {
        let [a, b, c] = write_credentials(dir, server, joined).await?;
        let serving = &joined.kubelet_serving;
        let serving = rk3s_pki::LiveCert::from_pem(&serving.cert_pem, &serving.key_pem)
            .context("the kubelet serving certificate")?;
        Ok(AgentCredentials {
            dir: dir.to_path_buf(),
            server: server.to_string(),
            clients: [LiveClient::new(a), LiveClient::new(b), LiveClient::new(c)],
            current: std::sync::Mutex::new(joined.clone()),
            serving: std::sync::Arc::new(serving),
        })
    }

    /// The kubelet, kube-proxy and rk3s-controller clients.
    fn clients(&self) -> (kube::Client, kube::Client, kube::Client) {
        let [a, b, c] = &self.clients;
        (a.client(), b.client(), c.client())
    }

    fn current(&self) -> rk3s_supervisor::Joined {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The certificates inside the renewal window.
    fn due(&self, renew_before: Duration) -> Vec<&'static str> {
        let j = self.current();
        [
            ("client-kubelet", &j.kubelet_client),
            ("serving-kubelet", &j.kubelet_serving),
            ("client-kube-proxy", &j.kube_proxy),
            ("client-rk3s-controller", &j.controller),
        ]
        .into_iter()
        // an unreadable certificate is renewed too
        .filter(|(_, c)| rk3s_pki::renewal_due(&c.cert_pem, renew_before).unwrap_or(true))
        .map(|(name, _)| name)
        .collect()
    }

    /// Puts newly issued certificates in use: files first, then the clients.
    async fn install(&self, joined: rk3s_supervisor::Joined) -> anyhow::Result<()> {
        let new = write_credentials(&self.dir, &self.server, &joined).await?;
        for (live, client) in self.clients.iter().zip(new) {
            live.swap(client);
        }
        let serving = &joined.kubelet_serving;
        self.serving.update(&serving.cert_pem, &serving.key_pem)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = joined;
        Ok(())
    }

    /// Renews the certificates if one is inside the window: requests them all again from
    /// the supervisor as the join did and installs them. Returns whether it renewed.
    async fn renew_if_due(
        &self,
        join: &rk3s_supervisor::JoinOptions,
        renew_before: Duration,
    ) -> anyhow::Result<bool> {
        let due = self.due(renew_before);
        if due.is_empty() {
            return Ok(false);
        }
        tracing::info!(certificates = ?due, "agent certificates inside the renewal window; requesting new ones");
        let joined = rk3s_supervisor::join(join)
            .await
            .context("requesting new certificates from the server")?;
        self.install(joined).await?;
        tracing::info!(
            "agent certificates renewed; clients and the kubelet API use them for new connections"
        );
        Ok(true)
    }
}

/// Writes the CA, the certificates, keys and kubeconfigs of `joined` under `dir` and
/// returns a kube client for each identity of [`IDENTITIES`].
async fn write_credentials(
    dir: &Path,
    server: &str,
    joined: &rk3s_supervisor::Joined,
) -> anyhow::Result<[kube::Client; 3]> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join("client-ca.crt"), &joined.ca_pem)?;
    let mut out = Vec::new();
    for ((name, file), cert) in IDENTITIES.iter().zip([
        &joined.kubelet_client,
        &joined.kube_proxy,
        &joined.controller,
    ]) {
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
        out.push(client_from_kubeconfig(&yaml).await?);
    }
    write_private(
        &dir.join("serving-kubelet.crt"),
        &joined.kubelet_serving.cert_pem,
    )?;
    write_private(
        &dir.join("serving-kubelet.key"),
        &joined.kubelet_serving.key_pem,
    )?;
    out.try_into()
        .map_err(|_| anyhow::anyhow!("one client per identity"))
}

/// A kube client from kubeconfig YAML with embedded credentials.
async fn client_from_kubeconfig(yaml: &str) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).context("kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("client configuration")?;
    kube::Client::try_from(cfg).context("API client")
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
    let credentials =
        std::sync::Arc::new(AgentCredentials::new(&agent_dir, &lb.url(), &joined).await?);
    let (kubelet_client, proxy_client, controller_client) = credentials.clients();
    let kubelet_serving = credentials.serving.clone();
    // Renewal asks whichever API server the load balancer reaches, as the join did.
    let renew_join = rk3s_supervisor::JoinOptions {
        server: lb.url(),
        ..join_opts.clone()
    };
    let renew_before = args.cert_renew_before;
    tokio::spawn(crate::certificate::renewal_loop(
        "agent",
        args.cert_check_interval,
        move || {
            let (credentials, join) = (credentials.clone(), renew_join.clone());
            async move {
                credentials
                    .renew_if_due(&join, renew_before)
                    .await
                    .map(drop)
            }
        },
    ));
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
            serving: rk3s_kubelet::agent::KubeletServing::Live(kubelet_serving),
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

    /// A `--disable-agent` server in this process with 20 s leaf certificates.
    async fn short_lived_server(dir: &Path) -> String {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            server: crate::server::ServerArgs,
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let config = dir.join("config.yaml");
        std::fs::write(&config, "").expect("config");
        let args = Cli::parse_from([
            "server".to_string(),
            format!("--config={}", config.display()),
            format!("--data-dir={}", dir.join("server-data").display()),
            format!("--https-listen-port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--write-kubeconfig={}", dir.join("admin.yaml").display()),
            "--disable-agent".into(),
            "--leaf-cert-validity=20s".into(),
            "--cert-renew-before=12s".into(),
            // the server renews its serving certificate as often
            "--cert-check-interval=1s".into(),
        ])
        .server;
        tokio::spawn(async move {
            if let Err(e) = crate::server::serve(args).await {
                panic!("server stopped: {e:#}");
            }
        });
        format!("https://127.0.0.1:{port}")
    }

    /// The user the API server sees behind `client` (a SelfSubjectReview).
    async fn whoami(client: kube::Client) -> Result<String, kube::Error> {
        use k8s_openapi::api::authentication::v1::SelfSubjectReview;
        let api: kube::Api<SelfSubjectReview> = kube::Api::all(client);
        let r = api
            .create(&Default::default(), &SelfSubjectReview::default())
            .await?;
        Ok(r.status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_certificates_are_renewed_while_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = short_lived_server(dir.path()).await;
        let token_file = dir.path().join("server-data/server/token");
        let agent_dir = dir.path().join("agent");
        let password_file = agent_dir.join("node-password");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut join = rk3s_supervisor::JoinOptions {
            server: server.clone(),
            token: String::new(),
            node_name: "renewing-node".into(),
            node_password: rk3s_supervisor::read_or_create_node_password(&password_file)
                .expect("password"),
            node_password_file: password_file,
            node_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        };
        let joined = loop {
            if let Ok(t) = std::fs::read_to_string(&token_file) {
                join.token = t.trim().to_string();
                match rk3s_supervisor::join(&join).await {
                    Ok(j) => break j,
                    Err(e) if std::time::Instant::now() > deadline => panic!("join: {e}"),
                    Err(_) => {}
                }
            }
            assert!(std::time::Instant::now() < deadline, "no server token");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        };
        let old_expiry = rk3s_pki::not_after(&joined.kubelet_client.cert_pem).expect("expiry");
        assert!(
            old_expiry - now() <= 21,
            "20 s certificates: {}",
            old_expiry - now()
        );
        let creds = AgentCredentials::new(&agent_dir, &server, &joined)
            .await
            .expect("credentials");
        let (kubelet, proxy, _) = creds.clients();
        // the kubelet API as the agent runs it: its serving certificate as a new
        // connection (the API server's, which trusts the cluster CA) sees it
        use crate::certificate::test_tls::{client_config, der, handshake};
        let kubelet_api = std::sync::Arc::new(
            rk3s_kubelet::server::tls_config_with(creds.serving.clone(), &joined.ca_pem)
                .expect("kubelet TLS"),
        );
        let presented = || {
            handshake(
                kubelet_api.clone(),
                client_config(&joined.ca_pem, None),
                "127.0.0.1",
            )
            .1
        };
        assert_eq!(presented(), der(&joined.kubelet_serving.cert_pem));
        assert_eq!(
            whoami(kubelet.clone()).await.expect("kubelet"),
            "system:node:renewing-node"
        );
        let window = Duration::from_secs(12);
        // 20 s certificates: not due yet
        assert!(!creds.renew_if_due(&join, window).await.expect("check"));
        let old_kubeconfig =
            std::fs::read_to_string(agent_dir.join("kubelet.kubeconfig")).expect("kubeconfig");

        // once inside the window, one round renews every certificate
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let renewed = loop {
            if creds.renew_if_due(&join, window).await.expect("renew") {
                break creds.current();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never due: expires at {old_expiry}, now {}",
                now()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_ne!(
            renewed.kubelet_client.cert_pem,
            joined.kubelet_client.cert_pem
        );
        assert_ne!(
            renewed.kubelet_client.key_pem,
            joined.kubelet_client.key_pem
        );
        assert_ne!(
            renewed.kubelet_serving.cert_pem,
            joined.kubelet_serving.cert_pem
        );
        assert!(rk3s_pki::not_after(&renewed.kubelet_client.cert_pem).expect("new") > old_expiry);
        assert_eq!(
            std::fs::read_to_string(agent_dir.join("client-kubelet.crt")).expect("file"),
            renewed.kubelet_client.cert_pem
        );
        assert_eq!(
            std::fs::read_to_string(agent_dir.join("serving-kubelet.crt")).expect("file"),
            renewed.kubelet_serving.cert_pem
        );
        assert!(creds.due(window).is_empty());
        // the running kubelet API presents the renewed serving certificate
        assert_eq!(presented(), der(&renewed.kubelet_serving.cert_pem));

        // after the old certificate expired: it is refused, the clients the node's
        // components hold (created before the renewal) keep working
        while now() <= old_expiry + 1 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let stale = client_from_kubeconfig(&old_kubeconfig)
            .await
            .expect("stale");
        match whoami(stale).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
            other => panic!("the expired certificate is refused with 401: {other:?}"),
        }
        assert_eq!(
            whoami(kubelet).await.expect("kubelet after renewal"),
            "system:node:renewing-node"
        );
        assert_eq!(
            whoami(proxy).await.expect("proxy after renewal"),
            rk3s_supervisor::KUBE_PROXY_USER
        );
    }

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
