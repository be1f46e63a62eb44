//! `rk3s server`: flags (k3s names and meanings) and start-up of the control plane.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

/// Flags of `rk3s server` (k3s names; every flag can also be set in the config file).
#[derive(Args, Debug, Clone)]
#[command(args_override_self = true)]
pub struct ServerArgs {
    /// Config file: YAML whose keys are these flags' long names
    #[arg(long, short = 'c', value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Folder to hold state
    #[arg(long, short = 'd', value_name = "DIR", default_value = "/var/lib/rk3s")]
    pub data_dir: PathBuf,
    /// HTTPS listen port of the API server
    #[arg(long, value_name = "PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Address the API server binds to
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Address advertised to the cluster (the `kubernetes` Service endpoints); default: the node's primary IP
    #[arg(long, value_name = "IP")]
    pub advertise_address: Option<IpAddr>,
    /// Port advertised to the cluster; default: the listen port
    #[arg(long, value_name = "PORT")]
    pub advertise_port: Option<u16>,
    /// Extra host names or IPs in the serving certificate (repeatable)
    #[arg(long, value_name = "NAME", action = clap::ArgAction::Append)]
    pub tls_san: Vec<String>,
    /// Write the admin kubeconfig to this file
    #[arg(long, short = 'o', value_name = "FILE", default_value = crate::config::DEFAULT_KUBECONFIG)]
    pub write_kubeconfig: PathBuf,
    /// File mode of the written kubeconfig (octal)
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub write_kubeconfig_mode: u32,
    /// Shared secret used to join agents and servers (default: generated)
    #[arg(
        long,
        short = 't',
        value_name = "TOKEN",
        env = "RK3S_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Start a new cluster on the embedded etcd (this server is its first member)
    #[arg(long)]
    pub cluster_init: bool,
    /// Join the cluster of this server (https://HOST:6443) as another server on its embedded etcd (needs --token)
    #[arg(long, short = 's', value_name = "URL")]
    pub server: Option<String>,
    /// IPv4 network for pod IPs
    #[arg(long, value_name = "CIDR", default_value = "10.42.0.0/16", value_parser = parse_cidr)]
    pub cluster_cidr: String,
    /// IPv4 network for Service cluster IPs
    #[arg(long, value_name = "CIDR", default_value = "10.43.0.0/16", value_parser = parse_cidr)]
    pub service_cidr: String,
    /// Port range for NodePort Services
    #[arg(long, value_name = "RANGE", default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: (u16, u16),
    /// Cluster DNS Service IP (default: the 10th IP of the service CIDR)
    #[arg(long, value_name = "IP")]
    pub cluster_dns: Option<Ipv4Addr>,
    /// Cluster domain
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Do not run the node agent on this server (control plane only)
    #[arg(long)]
    pub disable_agent: bool,
    /// Do not deploy a packaged component (repeatable or comma-separated): coredns
    /// (cluster DNS), servicelb (LoadBalancer Services on node IPs), traefik or ingress (the
    /// built-in Ingress controller), local-storage (the local-path StorageClass),
    /// metrics-server (the metrics API)
    #[arg(long, value_name = "NAME", value_delimiter = ',', action = clap::ArgAction::Append, value_parser = parse_component)]
    pub disable: Vec<String>,
    /// Do not run the service proxy (ClusterIP, NodePort, LoadBalancer rules in nftables)
    #[arg(long)]
    pub disable_kube_proxy: bool,
    /// Do not enforce NetworkPolicies
    #[arg(long)]
    pub disable_network_policy: bool,
    /// Pod network between nodes: vxlan (flannel-compatible), host-gw (nodes on one L2
    /// segment) or none (bring your own CNI)
    #[arg(long, value_name = "BACKEND", default_value = "vxlan", value_parser = ["vxlan", "host-gw", "none"])]
    pub flannel_backend: String,
    /// Interface of the pod network between nodes (default: the node IP's interface)
    #[arg(long, value_name = "IFACE")]
    pub flannel_iface: Option<String>,
    /// Upstream resolvers of the cluster DNS (default: /etc/resolv.conf, or systemd-resolved's
    /// upstream file when it names only a loopback stub)
    #[arg(long, value_name = "FILE", env = "RK3S_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// Node name (default: the hostname)
    #[arg(long, value_name = "NAME", env = "RK3S_NODE_NAME")]
    pub node_name: Option<String>,
    /// IP address to advertise for the node (default: the advertise address)
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,
    /// Use an existing CRI socket instead of rk3s's own containerd
    #[arg(long, value_name = "SOCKET")]
    pub container_runtime_endpoint: Option<String>,
    /// Private registry configuration file (k3s's registries.yaml format)
    #[arg(long, value_name = "FILE", default_value = "/etc/rk3s/registries.yaml")]
    pub private_registry: PathBuf,
    /// State dir (and socket) of rk3s's own containerd (tests run several side by side)
    #[arg(long, value_name = "DIR", hide = true)]
    pub containerd_state_dir: Option<PathBuf>,
    /// Datastore: empty (or sqlite://PATH) for the embedded SQLite; http(s)://HOST:PORT[,...]
    /// for etcd; postgres://USER:PASS@HOST:PORT/DB for PostgreSQL; mysql://USER:PASS@tcp(HOST:PORT)/DB
    /// for MySQL or MariaDB
    #[arg(long, value_name = "URL", env = "RK3S_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<String>,
    /// CA certificate file of the datastore (TLS)
    #[arg(long, value_name = "FILE", env = "RK3S_DATASTORE_CAFILE")]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate file for the datastore (TLS)
    #[arg(long, value_name = "FILE", env = "RK3S_DATASTORE_CERTFILE")]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key file for the datastore (TLS)
    #[arg(long, value_name = "FILE", env = "RK3S_DATASTORE_KEYFILE")]
    pub datastore_keyfile: Option<PathBuf>,
    /// Validity of issued leaf certificates (tests use short ones)
    #[arg(long, value_name = "DURATION", default_value = "8760h", value_parser = parse_duration, hide = true)]
    pub leaf_cert_validity: std::time::Duration,
    /// Leaf certificates expiring within this are renewed, on start and while running
    #[arg(long, value_name = "DURATION", default_value = "2160h", value_parser = parse_duration, hide = true)]
    pub cert_renew_before: std::time::Duration,
    /// How often certificates are checked for renewal while running
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = parse_duration, hide = true)]
    pub cert_check_interval: std::time::Duration,
    /// Do not run the HelmChart controller (helm.cattle.io HelmChart / HelmChartConfig)
    #[arg(long)]
    pub disable_helm_controller: bool,
    /// Image of the HelmChart install/delete Jobs (default: helm-controller's klipper-helm)
    #[arg(long, value_name = "IMAGE", default_value = "")]
    pub helm_job_image: String,
    /// How long Events are kept after they were last seen (kube-apiserver's --event-ttl)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub event_ttl: std::time::Duration,
    /// Take no scheduled snapshots of the datastore
    #[arg(long)]
    pub etcd_disable_snapshots: bool,
    /// When to take scheduled snapshots (cron, UTC)
    #[arg(long, value_name = "CRON", default_value = "0 */12 * * *", value_parser = parse_schedule)]
    pub etcd_snapshot_schedule_cron: String,
    /// Scheduled snapshots to keep
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub etcd_snapshot_retention: usize,
    /// Folder of snapshots (default: <data-dir>/server/db/snapshots)
    #[arg(long, value_name = "DIR")]
    pub etcd_snapshot_dir: Option<PathBuf>,
    /// Name prefix of scheduled snapshots
    #[arg(long, value_name = "NAME", default_value = "etcd-snapshot")]
    pub etcd_snapshot_name: String,
    /// Reset the datastore: with --cluster-reset-restore-path, restore that snapshot, then exit
    #[arg(long)]
    pub cluster_reset: bool,
    /// Snapshot file to restore with --cluster-reset
    #[arg(long, value_name = "FILE", requires = "cluster_reset")]
    pub cluster_reset_restore_path: Option<PathBuf>,
    /// Encrypt Secrets at rest (AES-GCM; key in <data-dir>/server/cred/encryption-config.json);
    /// on by default, `--secrets-encryption=false` stores them in plain text
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub secrets_encryption: bool,
    /// Write the audit log to this file ("-" for standard output, "" for no audit log);
    /// default: <data-dir>/server/logs/audit.log
    #[arg(long, value_name = "FILE")]
    pub audit_log_path: Option<String>,
    /// Audit policy (audit.k8s.io/v1 Policy); default: rk3s's (health checks and the
    /// components' lease/event/endpoint reads not recorded, the rest at Metadata level)
    #[arg(long, value_name = "FILE")]
    pub audit_policy_file: Option<PathBuf>,
    /// Rotate the audit log at this size in megabytes (0: never)
    #[arg(long, value_name = "MB", default_value_t = 100)]
    pub audit_log_maxsize: u64,
    /// Rotated audit logs to keep (0: all)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub audit_log_maxbackup: usize,
    /// Days to keep rotated audit logs (0: forever)
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub audit_log_maxage: u64,
    /// File of static bearer tokens (CSV: token,user,uid,"group1,group2")
    #[arg(long, value_name = "FILE")]
    pub token_auth_file: Option<PathBuf>,
    /// How long a node may stop renewing its Lease before it is marked unreachable and tainted (e.g. `40s`, `500ms`)
    #[arg(long, value_name = "DURATION", default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// Log filter (tracing EnvFilter syntax, e.g. `info`, `rk3s_apiserver=debug`)
    #[arg(long, value_name = "FILTER", env = "RK3S_LOG", default_value = "info")]
    pub log_level: String,
    /// Log file (`--log`, `--alsologtostderr`)
    #[command(flatten)]
    pub logging: crate::logging::LogArgs,
}

/// Components `--disable` knows (k3s's names).
pub const COMPONENTS: &[&str] = &[
    "coredns",
    "servicelb",
    "traefik",
    "ingress",
    "local-storage",
    "metrics-server",
];

fn parse_component(s: &str) -> Result<String, String> {
    let n = s.trim();
    if COMPONENTS.contains(&n) {
        Ok(n.to_string())
    } else {
        Err(format!(
            "unknown component {s:?}: expected one of {}",
            COMPONENTS.join(", ")
        ))
    }
}

impl ServerArgs {
    /// True unless `--disable NAME` names the component.
    pub fn enabled(&self, component: &str) -> bool {
        !self.disable.iter().any(|d| d == component)
    }

    /// The built-in Ingress controller runs unless `--disable traefik` or `--disable ingress`.
    pub fn ingress_enabled(&self) -> bool {
        self.enabled("traefik") && self.enabled("ingress")
    }
}

fn parse_schedule(s: &str) -> Result<String, String> {
    rk3s_core::cron::Schedule::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("invalid schedule {s:?}: {e}"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid file mode {s:?}: expected octal such as 0600"))
}

/// A duration like Go's (`40s`, `500ms`, `2m`, `1h`) or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 40s, 500ms or 2m");
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A `--cluster-cidr`/`--service-cidr` value (checked with [`rk3s_core::Cidr`]): an
/// IPv4 network of /8 to /28.
fn parse_cidr(s: &str) -> Result<String, String> {
    let bad = || format!("invalid CIDR {s:?}: expected an IPv4 network such as 10.42.0.0/16");
    let c = rk3s_core::Cidr::parse(s).map_err(|_| bad())?;
    if !c.is_ipv4() {
        return Err(bad());
    }
    if !(8..=28).contains(&c.prefix()) {
        return Err(format!(
            "invalid CIDR {s:?}: prefix length must be between 8 and 28"
        ));
    }
    Ok(s.to_string())
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port range {s:?}: expected FROM-TO such as 30000-32767");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// The first IPv4 address of a host interface that is not loopback, or 127.0.0.1.
fn primary_ip() -> IpAddr {
    // The kernel picks the source address of a route; nothing is sent.
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

/// Runs the server until SIGINT/SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    crate::logging::init(&log_filter(&args.log_level), &args.logging)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let logging = args.logging.clone();
    let r = rt.block_on(serve(args));
    if let Err(e) = &r {
        crate::logging::log_fatal(&logging, "rk3s server", e);
    }
    r
}

/// The log filter: the user's, with the DNS server library's per-query lines off unless
/// the user asks for them.
pub(crate) fn log_filter(user: &str) -> String {
    if user.contains("hickory") {
        user.to_string()
    } else {
        format!("{user},hickory_server=warn,hickory_proto=warn")
    }
}

/// Runtime worker threads for `cores` CPUs: one per core, at most 4. Each worker
/// keeps its own allocator arena and stack; an idle control plane on a big machine
/// gains nothing from dozens of them, and an edge box (1-2 cores) keeps one per core.
fn worker_threads(cores: usize) -> usize {
    cores.clamp(1, 4)
}

pub(crate) async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut phases = crate::logging::StartupPhases::new();
    let datastore =
        crate::datastore::parse_endpoint(args.datastore_endpoint.as_deref().unwrap_or(""))?;
    let embedded_sqlite = matches!(datastore, crate::datastore::DatastoreEndpoint::Sqlite(None))
        && !crate::embedded_etcd::enabled(&args);
    let server_dir = args.data_dir.join("server");
    restrict_state_dirs(&args.data_dir)?;
    if args.cluster_reset {
        if matches!(datastore, crate::datastore::DatastoreEndpoint::Etcd(_)) {
            bail!("--cluster-reset does not apply to an external etcd (--datastore-endpoint): restore it with etcd's own tools (etcdctl snapshot restore on each member), then start rk3s on it");
        }
        if matches!(datastore, crate::datastore::DatastoreEndpoint::Sqlite(None))
            && (crate::embedded_etcd::enabled(&args)
                || crate::snapshot::embedded_etcd_present(&args.data_dir))
        {
            // The embedded etcd (embedded_etcd.rs): restore the snapshot, or make this
            // member a cluster of one; then exit, as k3s does.
            let advertise = args.advertise_address.unwrap_or_else(primary_ip);
            let done = crate::embedded_etcd::cluster_reset(&args, advertise).await?;
            eprintln!("{done}; restart without --cluster-reset now.");
            return Ok(());
        }
    }
    if args.cluster_reset && !embedded_sqlite {
        bail!("--cluster-reset restores snapshots of the embedded SQLite datastore only (use the external datastore's own backup tools)");
    }
    if args.cluster_reset {
        // k3s: reset (here: restore the snapshot into the datastore), then exit so the
        // user restarts without the flags.
        let Some(snapshot) = &args.cluster_reset_restore_path else {
            bail!("--cluster-reset on the embedded SQLite datastore needs --cluster-reset-restore-path=FILE (a snapshot to restore)");
        };
        crate::snapshot::restore(&args.data_dir, snapshot)?;
        eprintln!(
            "The datastore was restored from {}; restart without --cluster-reset now.",
            snapshot.display()
        );
        return Ok(());
    }
    let advertise = args.advertise_address.unwrap_or_else(primary_ip);
    let service_ip = first_ip(&args.service_cidr)?;
    let mut sans = args.tls_san.clone();
    sans.push(advertise.to_string());
    let pki_opts = rk3s_pki::PkiOptions {
        server_dir: server_dir.clone(),
        sans,
        cluster_domain: args.cluster_domain.clone(),
        service_ip: IpAddr::V4(service_ip),
        token: args.token.clone(),
        leaf_validity: args.leaf_cert_validity,
        renew_before: args.cert_renew_before,
    };
    // --cluster-init / --server: the embedded etcd is the datastore (embedded_etcd.rs).
    let embedded_etcd = crate::embedded_etcd::start(&args, advertise, &pki_opts).await?;
    let (datastore, datastore_tls) = match &embedded_etcd {
        Some(etcd) => (etcd.datastore(), etcd.datastore_tls()),
        None => (
            datastore,
            crate::datastore::DatastoreTls {
                ca_file: args.datastore_cafile.clone(),
                cert_file: args.datastore_certfile.clone(),
                key_file: args.datastore_keyfile.clone(),
            },
        ),
    };
    let store = crate::datastore::open(&datastore, &datastore_tls, &args.data_dir).await?;
    phases.done("datastore");
    let pki = if matches!(datastore, crate::datastore::DatastoreEndpoint::Sqlite(_)) {
        rk3s_pki::ensure_server_pki(&pki_opts).context("setting up the cluster PKI")?
    } else {
        // Servers sharing an external datastore share its CA, service-account key and
        // secrets-encryption key: bootstrap data in the datastore (bootstrap_data.rs).
        let encryption_config = encryption_config_path(&args.data_dir);
        crate::bootstrap_data::sync(&*store, &server_dir, args.token.as_deref(), || {
            let pki =
                rk3s_pki::ensure_server_pki(&pki_opts).context("setting up the cluster PKI")?;
            rk3s_store::encrypt::EncryptionConfig::load_or_create(&encryption_config)
                .with_context(|| format!("encryption config {}", encryption_config.display()))?;
            let secret = pki.token_secret.clone();
            Ok::<_, anyhow::Error>((pki, secret))
        })
        .await
        .context("bootstrap data on the external datastore")?
    };
    phases.done("PKI");
    let snapshot_source =
        crate::snapshot::Source::for_datastore(&datastore, &datastore_tls, &args.data_dir);
    if let (false, Some(source)) = (args.etcd_disable_snapshots, snapshot_source) {
        let schedule = rk3s_core::cron::Schedule::parse(&args.etcd_snapshot_schedule_cron)
            .context("--etcd-snapshot-schedule-cron")?;
        tokio::spawn(crate::snapshot::run_schedule(
            source,
            args.etcd_snapshot_dir
                .clone()
                .unwrap_or_else(|| crate::snapshot::default_dir(&args.data_dir)),
            args.etcd_snapshot_name.clone(),
            args.node_name.clone().unwrap_or_else(hostname),
            schedule,
            args.etcd_snapshot_retention,
        ));
    }
    let store: Arc<dyn rk3s_store::Store> = store;
    let store: Arc<dyn rk3s_store::Store> = if args.secrets_encryption {
        let path = encryption_config_path(&args.data_dir);
        let cfg = rk3s_store::encrypt::EncryptionConfig::load_or_create(&path)
            .with_context(|| format!("encryption config {}", path.display()))?;
        tracing::info!(config = %path.display(), "secrets are encrypted at rest (aesgcm)");
        // Shared datastore: a new configuration in the bootstrap data takes effect live.
        let shared = (!matches!(datastore, crate::datastore::DatastoreEndpoint::Sqlite(_)))
            .then(|| (server_dir.clone(), pki.token_secret.clone()));
        Arc::new(crate::secrets::ReloadingStore::start(store, cfg, shared))
    } else {
        store
    };
    let audit = match audit_log_path(&args) {
        Some(path) => {
            let path = path.as_path();
            let policy = match &args.audit_policy_file {
                Some(p) => rk3s_apiserver::audit::AuditPolicy::parse(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )
                .with_context(|| format!("audit policy {}", p.display()))?,
                None => rk3s_apiserver::audit::AuditPolicy::rk3s_default(),
            };
            let rotate = rk3s_apiserver::audit::RotateOptions {
                max_size_mb: args.audit_log_maxsize,
                max_backups: args.audit_log_maxbackup,
                max_age_days: args.audit_log_maxage,
            };
            let log = rk3s_apiserver::audit::AuditLog::open_with_rotation(path, policy, rotate)
                .with_context(|| format!("audit log {}", path.display()))?;
            tracing::info!(path = %path.display(), "audit log on");
            Some(log)
        }
        None => {
            tracing::info!("audit log off (--audit-log-path=\"\")");
            None
        }
    };

    let listen = SocketAddr::new(args.bind_address, args.https_listen_port);
    // The API server's own client certificates, renewed while it runs (below).
    let (kubelet_client, kubelet_client_leaf) =
        kubelet_client_config(&pki, args.leaf_cert_validity)?;
    let (front_proxy, front_proxy_leaf) = front_proxy_config(&pki, args.leaf_cert_validity)?;
    let mut issued_leaves = vec![kubelet_client_leaf, front_proxy_leaf];
    let config = rk3s_apiserver::Config {
        listen,
        advertise_address: advertise,
        advertise_port: args.advertise_port.unwrap_or(args.https_listen_port),
        serving_cert_pem: pki.serving_cert_pem.clone(),
        serving_key_pem: pki.serving_key_pem.clone(),
        client_ca_pem: pki.ca_cert_pem.clone(),
        store,
        service_cidr: args.service_cidr.clone(),
        node_port_range: args.service_node_port_range,
        service_account_key_pem: pki.sa_key_pem.clone(),
        service_account_pub_pem: pki.sa_pub_pem.clone(),
        service_account_issuer: format!("https://kubernetes.default.svc.{}", args.cluster_domain),
        audit,
        kubelet_client: Some(kubelet_client),
        front_proxy: Some(front_proxy),
        token_auth_file: match &args.token_auth_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --token-auth-file {}", p.display()))?,
            ),
            None => None,
        },
    };
    let serving_cert = Arc::new(rk3s_apiserver::server::ServingCert::from_pem(
        &config.serving_cert_pem,
        &config.serving_key_pem,
    )?);
    let tls = rk3s_apiserver::server::tls_config_with(serving_cert.clone(), &config.client_ca_pem)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let api = rk3s_apiserver::ApiServer::new(&config)
        .await
        .context("starting the API server")?;
    rk3s_apiserver::event_ttl::spawn(api.inner().clone(), args.event_ttl);
    phases.done("API server");
    // In-process components are trusted parts of the server (as k3s's supervisor
    // certificates): they act in system:masters.
    let controller_user =
        rk3s_apiserver::UserInfo::new("system:kube-controller-manager", &["system:masters"])
            .with_authenticated_group();
    let client = rk3s_controllers::client_over(api.local_service(controller_user));
    let addon_client = client.clone();
    // Stable across restarts, so a restarted server takes its own Lease back at once.
    let identity = leader_identity(&args.data_dir);
    let ca = pki.ca_cert_pem.clone();
    let ca_key = pki.ca_key_pem.clone();
    let nodes = rk3s_controllers::nodelifecycle::NodeOptions {
        node_monitor_grace_period: args.node_monitor_grace_period,
        cluster_cidr: args.cluster_cidr.clone(),
        ..Default::default()
    };
    let cluster_dns = args
        .cluster_dns
        .unwrap_or_else(|| Ipv4Addr::from(u32::from(service_ip) + 9));
    let dns_service =
        args.enabled("coredns")
            .then(|| rk3s_controllers::clusterdns::ClusterDnsOptions {
                ip: IpAddr::V4(cluster_dns),
                domain: args.cluster_domain.clone(),
            });
    let servicelb = args.enabled("servicelb");
    // One watch per resource type for the controller manager and the scheduler.
    let informers = rk3s_controllers::informers::SharedInformers::new(client.clone());
    let controller_informers = informers.clone();
    if args.enabled("metrics-server") {
        let (metrics_api, metrics_informers) = (api.clone(), informers.clone());
        tokio::spawn(async move {
            if let Err(e) = rk3s_metrics::run(
                metrics_api,
                metrics_informers,
                rk3s_metrics::MetricsOptions::default(),
            )
            .await
            {
                tracing::error!(error = %e, "metrics API stopped");
            }
        });
    }
    tokio::spawn(async move {
        let opts = rk3s_controllers::Options {
            identity,
            root_ca_pem: ca,
            // A 10 s lease (renewed every ~3 s, retried every 2 s): another server takes
            // over within 15 s of this one's death.
            lease_duration: std::time::Duration::from_secs(10),
            ca_key_pem: ca_key,
            nodes,
            servicelb,
            cluster_dns: dns_service,
            informers: Some(controller_informers),
        };
        if let Err(e) = rk3s_controllers::run(client, opts).await {
            tracing::error!(error = %e, "controller manager stopped");
        }
    });
    // Add-ons as data: the bundled manifests are staged in <data-dir>/server/manifests and
    // that folder is applied and followed (k3s's deploy controller, on every server); the
    // HelmChart controller runs on the leader of its own Lease.
    let disabled = rk3s_deploy::Disabled::from_names(&args.disable);
    let placeholders = rk3s_deploy::k3s_placeholders(
        &cluster_dns.to_string(),
        &args.cluster_domain,
        &args.data_dir.join("storage").display().to_string(),
        "",
    );
    rk3s_deploy::stage_bundled(
        &rk3s_deploy::manifests_dir(&args.data_dir),
        &placeholders,
        &disabled,
    )
    .context("staging the bundled add-on manifests")?;
    let deploy_opts = rk3s_deploy::DeployOptions::new(&args.data_dir, disabled);
    let deploy_client = addon_client.clone();
    tokio::spawn(async move {
        if let Err(e) = rk3s_deploy::run(deploy_client, deploy_opts).await {
            tracing::error!(error = %e, "the manifests folder is not followed");
        }
    });
    if !args.disable_helm_controller {
        let helm_opts = rk3s_helm_controller::HelmControllerOptions::new(
            &args.helm_job_image,
            args.https_listen_port,
        );
        let helm_client = addon_client.clone();
        let identity = leader_identity(&args.data_dir);
        tokio::spawn(async move {
            let elector = rk3s_runtime::leader::LeaderElector::new(
                helm_client.clone(),
                "kube-system",
                "rk3s-helm-controller",
                &identity,
                std::time::Duration::from_secs(15),
            );
            loop {
                let lost = elector.acquire().await;
                let c = helm_client.clone();
                let o = helm_opts.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = rk3s_helm_controller::run(c, o).await {
                        tracing::error!(error = %e, "helm controller stopped");
                    }
                });
                let _ = lost.await;
                task.abort();
            }
        });
    }
    let scheduler_user =
        rk3s_apiserver::UserInfo::new("system:kube-scheduler", &["system:masters"])
            .with_authenticated_group();
    let scheduler_client = rk3s_controllers::client_over(api.local_service(scheduler_user));
    let mut scheduler_opts = rk3s_scheduler::RunOptions::new(&leader_identity(&args.data_dir));
    scheduler_opts.lease_duration = std::time::Duration::from_secs(10);
    scheduler_opts.informers = Some(informers);
    tokio::spawn(async move {
        if let Err(e) = rk3s_scheduler::run(scheduler_client, scheduler_opts).await {
            tracing::error!(error = %e, "scheduler stopped");
        }
    });
    let api_for_agent = api.clone();
    let (kubelet_ca, kubelet_ca_key) = (pki.ca_cert_pem.clone(), pki.ca_key_pem.clone());
    // The supervisor (k3s's join protocol) on the API port: agents fetch the CA, their
    // certificates and the cluster's settings from it. It acts in-process as a trusted
    // part of the server.
    let supervisor_user =
        rk3s_apiserver::UserInfo::new("system:rk3s-supervisor", &["system:masters"])
            .with_authenticated_group();
    let supervisor_client = rk3s_controllers::client_over(api.local_service(supervisor_user));
    let supervisor = rk3s_supervisor::Supervisor::new(
        rk3s_supervisor::SupervisorOptions {
            ca_cert_pem: pki.ca_cert_pem.clone(),
            ca_key_pem: pki.ca_key_pem.clone(),
            token_secret: pki.token_secret.clone(),
            agent_config: rk3s_supervisor::AgentConfig {
                cluster_cidr: args.cluster_cidr.clone(),
                service_cidr: args.service_cidr.clone(),
                cluster_dns: cluster_dns.to_string(),
                cluster_domain: args.cluster_domain.clone(),
                flannel_backend: args.flannel_backend.clone(),
                disable_kube_proxy: args.disable_kube_proxy,
                disable_network_policy: args.disable_network_policy,
                disable_cluster_dns: !args.enabled("coredns"),
                service_node_port_range: format!(
                    "{}-{}",
                    args.service_node_port_range.0, args.service_node_port_range.1
                ),
                disable_ingress: !args.ingress_enabled(),
                disable_local_storage: !args.enabled("local-storage"),
            },
            cert_validity_secs: args.leaf_cert_validity.as_secs() as i64,
        },
        Arc::new(supervisor_client),
    );
    let supervisor = match &embedded_etcd {
        Some(etcd) => {
            etcd.spawn_member_cleanup(addon_client.clone());
            supervisor.with_server_join(etcd.server_join(&pki))
        }
        None => supervisor,
    };
    let side: Arc<dyn rk3s_apiserver::server::SideRoutes> = Arc::new(SupervisorRoutes(supervisor));
    let serving = tokio::spawn(rk3s_apiserver::server::serve_with(
        api,
        listener,
        tls,
        Some(side),
    ));

    let host = if args.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        args.bind_address.to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let url = format!("https://{host}:{}", args.https_listen_port);
    rk3s_pki::write_kubeconfig(
        &args.write_kubeconfig,
        args.write_kubeconfig_mode,
        &url,
        &pki.ca_cert_pem,
        &pki.admin_cert_pem,
        &pki.admin_key_pem,
        "default",
    )
    .with_context(|| format!("writing kubeconfig {}", args.write_kubeconfig.display()))?;
    // The kubelet serving certificate of this server's own node, renewed with the others.
    let node_name = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(rk3s_kubelet::node::hostname);
    let node_ip = args.node_ip.unwrap_or(advertise);
    let node_serving = if args.disable_agent {
        None
    } else {
        let leaf = crate::certificate::kubelet_serving_leaf(
            &kubelet_ca,
            &kubelet_ca_key,
            &node_name,
            node_ip,
            args.leaf_cert_validity,
        )?;
        issued_leaves.push(leaf.clone());
        Some(leaf.live())
    };
    tokio::spawn(crate::certificate::renew_server_certificates(
        pki_opts,
        args.cert_check_interval,
        serving_cert,
        pki.serving_cert_pem.clone(),
        pki.admin_cert_pem.clone(),
        crate::certificate::KubeconfigTarget {
            path: args.write_kubeconfig.clone(),
            mode: args.write_kubeconfig_mode,
            url: url.clone(),
        },
        issued_leaves,
    ));
    tracing::info!(
        %url,
        kubeconfig = %args.write_kubeconfig.display(),
        token_file = %pki.token_path.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rk3s API server is up"
    );
    phases.done("controllers, scheduler, add-ons, serving");
    crate::install::notify_ready();
    crate::heap::spawn_trimmer();
    if let Some(node_serving) = node_serving {
        // The node agent acts as its node (system:node:<name> in system:nodes) with the
        // same least privilege as an agent's: the Node authorizer and NodeRestriction
        // decide what it may read and write.
        let node_user =
            rk3s_apiserver::UserInfo::new(format!("system:node:{node_name}"), &["system:nodes"])
                .with_authenticated_group();
        let node_client = rk3s_controllers::client_over(api_for_agent.local_service(node_user));
        let mut opts = rk3s_kubelet::agent::AgentOptions {
            node_name,
            node_ip,
            data_dir: args.data_dir.clone(),
            cluster_dns: vec![cluster_dns.to_string()],
            cluster_domain: args.cluster_domain.clone(),
            runtime_endpoint: args.container_runtime_endpoint.clone(),
            containerd_state_dir: args.containerd_state_dir.clone(),
            private_registry: Some(args.private_registry.clone()),
            control_plane: true,
            labels: Default::default(),
            taints: Vec::new(),
            external_ip: None,
            pod_network: Default::default(),
            kubelet_api: Some(rk3s_kubelet::agent::KubeletApiOptions {
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10250),
                ca_cert_pem: kubelet_ca.clone(),
                serving: rk3s_kubelet::agent::KubeletServing::Live(node_serving),
            }),
        };
        // The node's network services act as k3s's agents' do: the Service proxy as
        // system:kube-proxy, DNS and NetworkPolicy as system:rk3s-controller.
        let as_user =
            |name: &str| {
                rk3s_controllers::client_over(api_for_agent.local_service(
                    rk3s_apiserver::UserInfo::new(name, &[]).with_authenticated_group(),
                ))
            };
        let network_clients = crate::node_network::NodeNetworkClients {
            proxy: as_user(rk3s_supervisor::KUBE_PROXY_USER),
            controller: as_user(rk3s_supervisor::CONTROLLER_USER),
        };
        let network_opts = crate::node_network::NodeNetworkOptions {
            node_name: opts.node_name.clone(),
            node_ip: opts.node_ip,
            cluster_cidr: args.cluster_cidr.clone(),
            service_cidr: args.service_cidr.clone(),
            cluster_domain: args.cluster_domain.clone(),
            proxy: !args.disable_kube_proxy,
            dns: args.enabled("coredns"),
            network_policy: !args.disable_network_policy,
            resolv_conf: args.resolv_conf.clone(),
            flannel_backend: args.flannel_backend.parse().unwrap_or_default(),
            flannel_iface: args.flannel_iface.clone(),
            ingress: args.ingress_enabled(),
            local_storage: args
                .enabled("local-storage")
                .then(|| args.data_dir.join("storage")),
        };
        opts.pod_network = crate::node_network::pod_network(&network_opts).await;
        crate::node_network::spawn(network_clients, network_opts);
        tokio::spawn(crate::logging::log_node_ready(
            node_client.clone(),
            opts.node_name.clone(),
            phases.started(),
        ));
        tokio::spawn(async move {
            if let Err(e) = rk3s_kubelet::agent::run(node_client, opts).await {
                tracing::error!(error = %e, "node agent stopped");
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("signal handler")?;
    tokio::select! {
        r = serving => {
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => bail!("API server task failed: {e}"),
            }
        }
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; shutting down"); Ok(()) }
        _ = term.recv() => { tracing::info!("terminated; shutting down"); Ok(()) }
    }
}

/// Creates the data dir and the server's state folders (`server`, `server/db`, `cred`,
/// `tls`, `logs`) with mode 0700, and restricts them to 0700 if they exist: keys, the
/// datastore, the token and the audit log are root's alone (CIS 1.1.11/1.1.12, as k3s).
fn restrict_state_dirs(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let server = data_dir.join("server");
    for d in [
        data_dir.to_path_buf(),
        server.clone(),
        server.join("db"),
        server.join("cred"),
        server.join("tls"),
        server.join("logs"),
    ] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to 0700", d.display()))?;
    }
    Ok(())
}

/// The audit log's path: `--audit-log-path` (`-`: standard output), none when it is
/// empty, else `<data-dir>/server/logs/audit.log` (where k3s puts it).
fn audit_log_path(args: &ServerArgs) -> Option<PathBuf> {
    match args.audit_log_path.as_deref() {
        Some("") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(args.data_dir.join("server").join("logs").join("audit.log")),
    }
}

/// Where the secrets-encryption configuration lives.
pub fn encryption_config_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir
        .join("server")
        .join("cred")
        .join("encryption-config.json")
}

/// The API server's client certificate towards kubelets (`pods/log`, `nodes/proxy`),
/// issued by the cluster CA at each start for `validity` and renewed while running: CN
/// `kube-apiserver-kubelet-client`, O `system:masters`.
pub(crate) fn kubelet_client_config(
    pki: &rk3s_pki::ServerPki,
    validity: std::time::Duration,
) -> anyhow::Result<(
    rk3s_apiserver::proxy::KubeletClientConfig,
    Arc<crate::certificate::IssuedLeaf>,
)> {
    let (ca, key) = (pki.ca_cert_pem.clone(), pki.ca_key_pem.clone());
    let leaf = crate::certificate::IssuedLeaf::new("kubelet client certificate", move || {
        rk3s_pki::issue_client_cert_for(
            &ca,
            &key,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            validity,
        )
    })?;
    let config = rk3s_apiserver::proxy::KubeletClientConfig {
        client_cert: leaf.live(),
        ca_pem: pki.ca_cert_pem.clone(),
    };
    Ok((config, leaf))
}

/// The front proxy's client certificate towards extension API servers (APIServices with
/// `spec.service`), issued by the cluster CA at each start for `validity` and renewed
/// while running: CN `system:auth-proxy` (k3s's name), the only name extension servers
/// accept on `X-Remote-*` headers.
pub(crate) fn front_proxy_config(
    pki: &rk3s_pki::ServerPki,
    validity: std::time::Duration,
) -> anyhow::Result<(
    rk3s_apiserver::aggregator::FrontProxyConfig,
    Arc<crate::certificate::IssuedLeaf>,
)> {
    let (ca, key) = (pki.ca_cert_pem.clone(), pki.ca_key_pem.clone());
    let leaf = crate::certificate::IssuedLeaf::new("front-proxy client certificate", move || {
        rk3s_pki::issue_client_cert_for(&ca, &key, "system:auth-proxy", &[], validity)
    })?;
    let config = rk3s_apiserver::aggregator::FrontProxyConfig {
        client_cert: leaf.live(),
        requestheader_ca_pem: pki.ca_cert_pem.clone(),
        allowed_names: vec!["system:auth-proxy".into()],
    };
    Ok((config, leaf))
}

/// The identity this server holds leader-election Leases under: the host name and 8 hex
/// of a hash of the data dir, so servers that share a host name and a datastore never
/// take each other for the holder, while a restarted server (same data dir) takes its own
/// Lease back at once.
fn leader_identity(data_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = ring::digest::digest(&ring::digest::SHA256, dir.as_os_str().as_encoded_bytes());
    let hex: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}_{hex}", hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn first_ip(cidr: &str) -> anyhow::Result<Ipv4Addr> {
    let net = rk3s_core::Cidr::parse(cidr)?;
    match net.nth(1) {
        Some(IpAddr::V4(ip)) => Ok(ip),
        _ => bail!("{cidr}: no first IPv4 address"),
    }
}

/// The supervisor as the API server's side routes.
struct SupervisorRoutes(rk3s_supervisor::Supervisor);

impl rk3s_apiserver::server::SideRoutes for SupervisorRoutes {
    fn claims(&self, path: &str) -> bool {
        rk3s_supervisor::Supervisor::claims(path)
    }

    fn serve(
        &self,
        req: http::Request<bytes::Bytes>,
        client_cert_user: Option<rk3s_apiserver::UserInfo>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = http::Response<bytes::Bytes>> + Send + 'static>,
    > {
        let s = self.0.clone();
        Box::pin(async move { s.handle(req, client_cert_user).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> ServerArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            server: ServerArgs,
        }
        let argv = std::iter::once("rk3s").chain(flags.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().server
    }

    #[test]
    fn the_audit_log_is_on_by_default_and_off_with_an_empty_path() {
        assert_eq!(
            audit_log_path(&parse(&["-d", "/srv/r"])),
            Some(PathBuf::from("/srv/r/server/logs/audit.log"))
        );
        assert_eq!(audit_log_path(&parse(&["--audit-log-path="])), None);
        assert_eq!(audit_log_path(&parse(&["--audit-log-path", ""])), None);
        assert_eq!(
            audit_log_path(&parse(&["--audit-log-path=-"])),
            Some(PathBuf::from("-"))
        );
        assert_eq!(
            audit_log_path(&parse(&["--audit-log-path=/var/log/a.log"])),
            Some(PathBuf::from("/var/log/a.log"))
        );
    }

    #[test]
    fn log_flags_as_k3s() {
        let a = parse(&[]);
        assert_eq!(a.logging.log, None);
        let a = parse(&["--log", "/var/log/rk3s.log", "--alsologtostderr"]);
        assert_eq!(a.logging.log, Some(PathBuf::from("/var/log/rk3s.log")));
        assert!(a.logging.alsologtostderr);
        assert_eq!(
            parse(&["-l", "/x.log"]).logging.log,
            Some(PathBuf::from("/x.log"))
        );
    }

    #[test]
    fn state_dirs_are_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("server/db")).unwrap();
        std::fs::set_permissions(
            data.join("server/db"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        restrict_state_dirs(&data).unwrap();
        for d in [
            "",
            "server",
            "server/db",
            "server/cred",
            "server/tls",
            "server/logs",
        ] {
            let m = std::fs::metadata(data.join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o700, "{d}");
        }
    }

    #[test]
    fn one_worker_per_core_up_to_four() {
        assert_eq!(worker_threads(0), 1);
        assert_eq!(worker_threads(1), 1);
        assert_eq!(worker_threads(2), 2);
        assert_eq!(worker_threads(4), 4);
        assert_eq!(worker_threads(64), 4);
    }
}
