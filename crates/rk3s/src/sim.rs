//! `rk3s sim-nodes` (hidden): simulated nodes against any cluster, for tests and
//! benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// Flags of `rk3s sim-nodes`.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Kubeconfig of the cluster
    #[arg(long, env = "KUBECONFIG", default_value = crate::config::DEFAULT_KUBECONFIG)]
    pub kubeconfig: PathBuf,
    /// Number of nodes
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Node name prefix (names are PREFIX-0, PREFIX-1, ...)
    #[arg(long, default_value = "sim-node")]
    pub prefix: String,
    /// First index
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// CPU capacity per node
    #[arg(long, default_value = "4")]
    pub cpu: String,
    /// Memory capacity per node
    #[arg(long, default_value = "16Gi")]
    pub memory: String,
    /// Pod capacity per node
    #[arg(long, default_value = "110")]
    pub pods: String,
    /// Extra node labels, KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Lease renewal interval in milliseconds
    #[arg(long, default_value_t = 10_000)]
    pub lease_interval_ms: u64,
    /// How long run-to-completion pods run, in milliseconds
    #[arg(long, default_value_t = 200)]
    pub run_for_ms: u64,
}

/// Runs the simulated nodes until interrupted.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RK3S_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
            .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .context("kubeconfig")?;
        let client = kube::Client::try_from(cfg).context("client")?;
        let mut labels = std::collections::BTreeMap::new();
        for l in &args.labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("label {l:?} is not KEY=VALUE"))?;
            labels.insert(k.to_string(), v.to_string());
        }
        let opts = rk3s_kubelet::sim::SimOptions {
            nodes: (args.start..args.start + args.count)
                .map(|i| format!("{}-{i}", args.prefix))
                .collect(),
            cpu: args.cpu,
            memory: args.memory,
            pods: args.pods,
            labels,
            lease_interval: Duration::from_millis(args.lease_interval_ms.max(100)),
            run_for: Duration::from_millis(args.run_for_ms),
        };
        tokio::select! {
            r = rk3s_kubelet::sim::run(client, opts) => r.context("simulated nodes"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
