//! The node's own containerd: the config rk3s writes for it and a supervisor that runs
//! it as a child process, waits until its CRI answers, restarts it (with back-off) when
//! it exits, and stops it on request.
//!
//! Layout, as k3s does it (renamed):
//! - config `<data-dir>/agent/etc/containerd/config.toml`,
//! - root `<data-dir>/agent/containerd`, log `<data-dir>/agent/containerd/containerd.log`,
//! - state `/run/rk3s/containerd`, socket `/run/rk3s/containerd/containerd.sock` for
//!   the default data dir; any other data dir gets its own
//!   `/run/rk3s/<12 hex of sha256(data dir)>/containerd` ([`default_state_dir`]), so
//!   several rk3s nodes on one machine never share a containerd,
//! - CNI config dir `<data-dir>/agent/etc/cni/net.d`, plugins from Debian's
//!   `containernetworking-plugins` (`/usr/lib/cni`).
//!
//! Stopping rk3s does not stop containers: they live in their shims, which outlive
//! containerd. A containerd left running by a previous rk3s (e.g. after `kill -9`) is
//! found through its pid file and replaced; the new one re-attaches the running shims.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cri::CriClient;

/// Default state directory of the node's containerd (for the default data dir).
pub const DEFAULT_STATE_DIR: &str = "/run/rk3s/containerd";
/// The default rk3s data dir, whose containerd uses [`DEFAULT_STATE_DIR`].
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rk3s";
/// Where the per-data-dir containerd state dirs live.
pub const RUN_DIR: &str = "/run/rk3s";

/// The containerd state dir of the rk3s node with `data_dir`: [`DEFAULT_STATE_DIR`] for
/// [`DEFAULT_DATA_DIR`], else `/run/rk3s/<first 12 hex digits of the SHA-256 of the
/// absolute data dir>/containerd`. Short whatever the data dir (the socket path stays
/// far below the 108-byte unix socket limit), on tmpfs like k3s's `/run/k3s`, and
/// distinct per data dir, so two nodes on one machine never share a containerd.
pub fn default_state_dir(data_dir: &Path) -> PathBuf {
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // components() drops repeated and trailing separators and "." parts.
    let norm: PathBuf = abs.components().collect();
    if norm == Path::new(DEFAULT_DATA_DIR) {
        return PathBuf::from(DEFAULT_STATE_DIR);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, norm.as_os_str().as_encoded_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Path::new(RUN_DIR).join(hex).join("containerd")
}
/// Default CRI/containerd socket of the node's containerd.
pub const DEFAULT_SOCKET: &str = "/run/rk3s/containerd/containerd.sock";
/// The sandbox ("pause") image, built by rk3s and imported, never pulled.
pub const SANDBOX_IMAGE: &str = "rk3s.local/pause:3.10";
/// containerd plugins the node agent has no use for (it runs pods through CRI on the
/// overlayfs snapshotter with the runc v2 shim). Unknown names are ignored by containerd.
pub const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const DEBIAN_CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Errors of the containerd supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A file or directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The containerd binary could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// Binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// containerd exited before it was ready.
    #[error("containerd exited during start-up ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// Exit status.
        status: String,
        /// The end of containerd's log.
        log_tail: String,
    },
    /// containerd did not answer on its socket in time.
    #[error(
        "containerd did not answer CRI on {socket} within {waited:?}; last log lines:\n{log_tail}"
    )]
    NotReady {
        /// Socket.
        socket: PathBuf,
        /// Time waited.
        waited: Duration,
        /// The end of containerd's log.
        log_tail: String,
    },
    /// `registries.yaml` is not valid.
    #[error("{path}: invalid registries file: {message}")]
    Registries {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An external runtime endpoint does not exist.
    #[error("container runtime endpoint {0} is not a socket")]
    NoEndpoint(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerdError + '_ {
    move |source| ContainerdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Settings of the node's containerd.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// The rk3s data dir (`/var/lib/rk3s`).
    pub data_dir: PathBuf,
    /// containerd's state dir ([`default_state_dir`] of the data dir).
    pub state_dir: PathBuf,
    /// The gRPC socket (`<state dir>/containerd.sock`).
    pub socket: PathBuf,
    /// The containerd binary (`containerd`, from PATH).
    pub binary: PathBuf,
    /// The sandbox image ([`SANDBOX_IMAGE`]).
    pub sandbox_image: String,
    /// CNI plugin directory.
    pub cni_bin_dir: PathBuf,
    /// CNI config directory.
    pub cni_conf_dir: PathBuf,
    /// Path of `crun`, offered as the `crun` runtime handler when present.
    pub crun: Option<PathBuf>,
    /// How long start-up may take until CRI answers.
    pub ready_timeout: Duration,
    /// k3s-style `registries.yaml` (`--private-registry`); ignored when absent.
    pub private_registry: Option<PathBuf>,
}

impl ContainerdConfig {
    /// The defaults for a data dir (state dir: [`default_state_dir`]).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let state_dir = default_state_dir(&data_dir);
        let crun = ["/usr/bin/crun", "/usr/local/bin/crun"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        ContainerdConfig {
            cni_conf_dir: data_dir.join("agent/etc/cni/net.d"),
            data_dir,
            socket: state_dir.join("containerd.sock"),
            state_dir,
            binary: PathBuf::from("containerd"),
            sandbox_image: SANDBOX_IMAGE.to_string(),
            cni_bin_dir: PathBuf::from(DEBIAN_CNI_BIN_DIR),
            crun,
            ready_timeout: Duration::from_secs(30),
            private_registry: None,
        }
    }

    /// Uses another state dir, with the socket inside it (`<state>/containerd.sock`).
    pub fn with_state_dir(mut self, state_dir: impl Into<PathBuf>) -> Self {
        self.state_dir = state_dir.into();
        self.socket = self.state_dir.join("containerd.sock");
        self
    }

    /// `<data-dir>/agent/etc/containerd/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.data_dir.join("agent/etc/containerd/config.toml")
    }

    /// containerd's root: `<data-dir>/agent/containerd`.
    pub fn root_dir(&self) -> PathBuf {
        self.data_dir.join("agent/containerd")
    }

    /// containerd's log: `<data-dir>/agent/containerd/containerd.log`.
    pub fn log_path(&self) -> PathBuf {
        self.root_dir().join("containerd.log")
    }

    /// The registry hosts directory (`config_path`): `<data-dir>/agent/etc/containerd/certs.d`,
    /// one `<host>/hosts.toml` per registry, as k3s writes it.
    pub fn certs_dir(&self) -> PathBuf {
        self.data_dir.join("agent/etc/containerd/certs.d")
    }

    /// The pid file of the running containerd: `<state>/containerd.pid`.
    pub fn pid_path(&self) -> PathBuf {
        self.state_dir.join("containerd.pid")
    }

    /// The config file's text (containerd config version 2), without registry settings.
    pub fn render(&self) -> String {
        self.render_with(None)
    }

    /// The config file's text with the CRI registry section for `registries` (hosts in
    /// [`ContainerdConfig::certs_dir`], credentials of `configs.<host>.auth`).
    pub fn render_with(&self, registries: Option<&Registries>) -> String {
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by rk3s at every start; edits are overwritten."
        );
        let _ = writeln!(s, "version = 2");
        // Plugins rk3s never uses (other snapshotters, tracing) are not loaded. (The v1
        // runtime stays: containerd 1.6's task service needs it.) Measured idle RSS is the
        // same either way (~38 MB, mostly containerd's own text).
        let _ = writeln!(
            s,
            "disabled_plugins = [{}]",
            DISABLED_PLUGINS
                .iter()
                .map(|p| toml_str(p))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "root = {}", toml_str(&self.root_dir().to_string_lossy()));
        let _ = writeln!(s, "state = {}", toml_str(&self.state_dir.to_string_lossy()));
        let _ = writeln!(
            s,
            "\n[grpc]\n  address = {}",
            toml_str(&self.socket.to_string_lossy())
        );
        let _ = writeln!(s, "\n[plugins.\"io.containerd.internal.v1.opt\"]");
        let _ = writeln!(
            s,
            "  path = {}",
            toml_str(&self.root_dir().join("opt").to_string_lossy())
        );
        let _ = writeln!(s, "\n[{cri}]");
        let _ = writeln!(s, "  sandbox_image = {}", toml_str(&self.sandbox_image));
        // A random loopback port for the exec/attach/port-forward streaming server, so
        // several node agents (multi-node tests) never collide on 10010.
        let _ = writeln!(
            s,
            "  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\""
        );
        let _ = writeln!(s, "  enable_selinux = false");
        let _ = writeln!(s, "  disable_apparmor = {}", !apparmor_enabled());
        // Without CAP_SYS_RESOURCE (some VMs and containers) runc cannot give a pod a
        // lower OOM score than containerd's; then keep scores at or above it.
        let _ = writeln!(s, "  restrict_oom_score_adj = {}", !has_cap_sys_resource());
        let _ = writeln!(s, "\n[{cri}.containerd]");
        let _ = writeln!(
            s,
            "  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\""
        );
        let _ = writeln!(
            s,
            "\n[{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\""
        );
        // The cgroupfs driver on both cgroup v1 and v2: rk3s is not a systemd unit's
        // delegate in every setup, and cgroupfs works everywhere.
        let runc_root = toml_str(&self.state_dir.join("runc").to_string_lossy());
        let _ = writeln!(s, "\n[{cri}.containerd.runtimes.runc.options]\n  SystemdCgroup = false\n  Root = {runc_root}");
        if let Some(crun) = &self.crun {
            let _ = writeln!(
                s,
                "\n[{cri}.containerd.runtimes.crun]\n  runtime_type = \"io.containerd.runc.v2\""
            );
            let _ = writeln!(s, "\n[{cri}.containerd.runtimes.crun.options]");
            let _ = writeln!(
                s,
                "  BinaryName = {}\n  SystemdCgroup = false",
                toml_str(&crun.to_string_lossy())
            );
            let _ = writeln!(
                s,
                "  Root = {}",
                toml_str(&self.state_dir.join("crun").to_string_lossy())
            );
        }
        let _ = writeln!(s, "\n[{cri}.registry]");
        let _ = writeln!(
            s,
            "  config_path = {}",
            toml_str(&self.certs_dir().to_string_lossy())
        );
        if let Some(r) = registries {
            s.push_str(&r.render_cri_auth(cri));
        }
        let _ = writeln!(s, "\n[{cri}.cni]");
        let _ = writeln!(
            s,
            "  bin_dir = {}",
            toml_str(&self.cni_bin_dir.to_string_lossy())
        );
        let _ = writeln!(
            s,
            "  conf_dir = {}",
            toml_str(&self.cni_conf_dir.to_string_lossy())
        );
        s
    }

    /// Creates the directories, writes the registry hosts directory (from
    /// `private_registry`, replacing what an earlier start wrote) and the config file.
    pub fn write(&self) -> Result<(), ContainerdError> {
        for dir in [
            self.root_dir(),
            self.state_dir.clone(),
            self.cni_conf_dir.clone(),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let path = self.config_path();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let registries = match &self.private_registry {
            Some(p) => Registries::load(p)?,
            None => None,
        };
        let certs = self.certs_dir();
        if certs.exists() {
            std::fs::remove_dir_all(&certs).map_err(io_err(&certs))?;
        }
        std::fs::create_dir_all(&certs).map_err(io_err(&certs))?;
        if let Some(r) = &registries {
            for (dir, text) in r.hosts_files() {
                let d = certs.join(&dir);
                std::fs::create_dir_all(&d).map_err(io_err(&d))?;
                let f = d.join("hosts.toml");
                std::fs::write(&f, text).map_err(io_err(&f))?;
            }
            info!(file = ?self.private_registry, registries = r.mirrors.len() + r.configs.len(), "registry configuration written");
        }
        std::fs::write(&path, self.render_with(registries.as_ref())).map_err(io_err(&path))
    }
}

/// A registry mirror of k3s's `registries.yaml` (`mirrors.<host>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryMirror {
    /// Endpoints tried in order before the registry itself (`endpoint`).
    pub endpoints: Vec<String>,
    /// Repository rewrites (`rewrite`, regular expression -> replacement). containerd
    /// 1.6 has no rewrite support: they are accepted and reported, not applied.
    pub rewrites: Vec<(String, String)>,
}

/// Credentials of a registry host (`configs.<host>.auth`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// base64 of `user:password`.
    pub auth: String,
    /// Identity (refresh) token.
    pub identity_token: String,
}

/// TLS settings of a registry host (`configs.<host>.tls`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryTls {
    /// CA bundle (PEM file).
    pub ca_file: String,
    /// Client certificate (PEM file).
    pub cert_file: String,
    /// Client key (PEM file).
    pub key_file: String,
    /// Skip server certificate verification.
    pub insecure_skip_verify: bool,
}

/// Settings of one registry host (`configs.<host>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryHostConfig {
    /// Credentials.
    pub auth: Option<RegistryAuth>,
    /// TLS settings.
    pub tls: Option<RegistryTls>,
}

/// k3s's `registries.yaml` (`--private-registry`, default `/etc/rk3s/registries.yaml`):
/// mirrors and per-host auth/TLS. Rendered, as k3s does it, into containerd's registry
/// hosts directory (`certs.d/<host>/hosts.toml`) and the CRI plugin's
/// `registry.configs.<host>.auth` (credentials are looked up by the host containerd
/// contacts, i.e. the mirror endpoint's host).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registries {
    /// `mirrors`, by registry host (`*` for every registry).
    pub mirrors: std::collections::BTreeMap<String, RegistryMirror>,
    /// `configs`, by registry or endpoint host.
    pub configs: std::collections::BTreeMap<String, RegistryHostConfig>,
}

impl Registries {
    /// Reads `path`; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, ContainerdError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ContainerdError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|message| ContainerdError::Registries {
                path: path.to_path_buf(),
                message,
            })
    }

    /// Parses the YAML text (an empty document is an empty configuration).
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut out = Registries::default();
        let obj = match &v {
            serde_json::Value::Null => return Ok(out),
            serde_json::Value::Object(o) => o,
            _ => return Err("expected a map with mirrors and configs".into()),
        };
        for (k, _) in obj
            .iter()
            .filter(|(k, _)| *k != "mirrors" && *k != "configs")
        {
            tracing::warn!(key = %k, "registries.yaml: unknown key ignored");
        }
        for (host, m) in map_of(obj.get("mirrors"), "mirrors")? {
            let mut mirror = RegistryMirror::default();
            match m.get("endpoint") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Array(a)) => {
                    for e in a {
                        let e = e
                            .as_str()
                            .ok_or_else(|| format!("mirrors.{host}.endpoint: expected strings"))?;
                        mirror.endpoints.push(e.to_string());
                    }
                }
                Some(_) => return Err(format!("mirrors.{host}.endpoint: expected a list")),
            }
            for (re, to) in map_of(m.get("rewrite"), &format!("mirrors.{host}.rewrite"))? {
                let to = to
                    .as_str()
                    .ok_or_else(|| format!("mirrors.{host}.rewrite.{re}: expected a string"))?;
                mirror.rewrites.push((re.clone(), to.to_string()));
            }
            out.mirrors.insert(host.clone(), mirror);
        }
        for (host, c) in map_of(obj.get("configs"), "configs")? {
            let mut cfg = RegistryHostConfig::default();
            let text = |o: &serde_json::Map<String, serde_json::Value>, keys: &[&str]| -> String {
                keys.iter()
                    .find_map(|k| o.get(*k).and_then(|v| v.as_str()))
                    .unwrap_or_default()
                    .to_string()
            };
            if let Some(a) = c.get("auth").filter(|a| !a.is_null()) {
                let a = a
                    .as_object()
                    .ok_or_else(|| format!("configs.{host}.auth: expected a map"))?;
                cfg.auth = Some(RegistryAuth {
                    username: text(a, &["username"]),
                    password: text(a, &["password"]),
                    auth: text(a, &["auth"]),
                    identity_token: text(a, &["identitytoken", "identity_token"]),
                });
            }
            if let Some(t) = c.get("tls").filter(|t| !t.is_null()) {
                let t = t
                    .as_object()
                    .ok_or_else(|| format!("configs.{host}.tls: expected a map"))?;
                cfg.tls = Some(RegistryTls {
                    ca_file: text(t, &["ca_file"]),
                    cert_file: text(t, &["cert_file"]),
                    key_file: text(t, &["key_file"]),
                    insecure_skip_verify: t
                        .get("insecure_skip_verify")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                });
            }
            out.configs.insert(host.clone(), cfg);
        }
        Ok(out)
    }

    /// The hosts files to write: (directory name under `certs.d`, `hosts.toml` text).
    /// One per mirrored registry (`*` becomes `_default`) and one per configured host
    /// with TLS settings that is not mirrored.
    pub fn hosts_files(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (host, mirror) in &self.mirrors {
            if !mirror.rewrites.is_empty() {
                tracing::warn!(registry = %host, "registries.yaml: rewrites are not supported by containerd 1.6; ignored");
            }
            let mut t =
                String::from("# Written by rk3s from registries.yaml; edits are overwritten.\n");
            let wildcard = host == "*";
            if !wildcard {
                let _ = writeln!(t, "server = {}", toml_str(&default_endpoint(host)));
                t.push_str(&self.tls_lines(host, ""));
            }
            for e in &mirror.endpoints {
                let Some((url, ep_host, override_path)) = endpoint_url(e) else {
                    tracing::warn!(registry = %host, endpoint = %e, "registries.yaml: invalid endpoint ignored");
                    continue;
                };
                let _ = writeln!(t, "\n[host.{}]", toml_str(&url));
                let _ = writeln!(t, "  capabilities = [\"pull\", \"resolve\"]");
                if override_path {
                    let _ = writeln!(t, "  override_path = true");
                }
                t.push_str(&self.tls_lines(&ep_host, "  "));
            }
            out.push((
                if wildcard {
                    "_default".to_string()
                } else {
                    host.clone()
                },
                t,
            ));
        }
        for (host, cfg) in &self.configs {
            if self.mirrors.contains_key(host) || host == "*" || cfg.tls.is_none() {
                continue;
            }
            let mut t =
                String::from("# Written by rk3s from registries.yaml; edits are overwritten.\n");
            let _ = writeln!(t, "server = {}", toml_str(&default_endpoint(host)));
            t.push_str(&self.tls_lines(host, ""));
            out.push((host.clone(), t));
        }
        out
    }

    /// `ca`, `client`, `skip_verify` lines for a host with a TLS config.
    fn tls_lines(&self, host: &str, indent: &str) -> String {
        let mut t = String::new();
        let Some(tls) = self.configs.get(host).and_then(|c| c.tls.as_ref()) else {
            return t;
        };
        if !tls.ca_file.is_empty() {
            let _ = writeln!(t, "{indent}ca = [{}]", toml_str(&tls.ca_file));
        }
        if !tls.cert_file.is_empty() {
            let _ = writeln!(
                t,
                "{indent}client = [[{}, {}]]",
                toml_str(&tls.cert_file),
                toml_str(&tls.key_file)
            );
        }
        if tls.insecure_skip_verify {
            let _ = writeln!(t, "{indent}skip_verify = true");
        }
        t
    }

    /// The CRI plugin's `registry.configs."<host>".auth` tables.
    fn render_cri_auth(&self, cri: &str) -> String {
        let mut s = String::new();
        for (host, cfg) in &self.configs {
            let Some(a) = &cfg.auth else { continue };
            let _ = writeln!(s, "\n[{cri}.registry.configs.{}.auth]", toml_str(host));
            for (k, v) in [
                ("username", &a.username),
                ("password", &a.password),
                ("auth", &a.auth),
                ("identitytoken", &a.identity_token),
            ] {
                if !v.is_empty() {
                    let _ = writeln!(s, "  {k} = {}", toml_str(v));
                }
            }
        }
        s
    }
}

fn map_of<'a>(
    v: Option<&'a serde_json::Value>,
    what: &str,
) -> Result<Vec<(&'a String, &'a serde_json::Value)>, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Object(o)) => Ok(o.iter().collect()),
        Some(_) => Err(format!("{what}: expected a map")),
    }
}

/// The registry's own endpoint (containerd's default for the host).
fn default_endpoint(host: &str) -> String {
    if host == "docker.io" {
        "https://registry-1.docker.io/v2".into()
    } else {
        format!("https://{host}/v2")
    }
}

/// An endpoint of registries.yaml as a hosts.toml host URL: (url, host[:port],
/// override_path). Without a scheme it is https; without a path the API root is `/v2`;
/// a path other than `/v2` is the API root itself (`override_path`), as k3s does it.
fn endpoint_url(endpoint: &str) -> Option<(String, String, bool)> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s, r)) if s == "http" || s == "https" => (s, r),
        Some(_) => return None,
        None => ("https", endpoint),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(['?', '#', ' ']) {
        return None;
    }
    if path.is_empty() || path == "/v2" {
        Some((format!("{scheme}://{host}/v2"), host.to_string(), false))
    } else {
        Some((format!("{scheme}://{host}{path}"), host.to_string(), true))
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// True when the host has the unified cgroup v2 hierarchy mounted at /sys/fs/cgroup.
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// True on a hybrid cgroup host whose unified hierarchy (`/sys/fs/cgroup/unified`) holds
/// controllers; crun refuses to run there (runc works).
pub fn cgroup_hybrid_with_controllers() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty())
}

/// True when AppArmor is enabled in the kernel (containerd then applies its default
/// profile to containers).
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

/// True when this process has CAP_SYS_RESOURCE (needed to lower OOM scores).
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// The last `n` lines of a log file (empty when unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A supervised containerd child process. [`Containerd::stop`] (or dropping the handle
/// inside a running tokio runtime) terminates it; if rk3s itself dies, containerd keeps
/// running until the next [`Containerd::start`] replaces it.
#[derive(Debug)]
pub struct Containerd {
    config: ContainerdConfig,
    stop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
    started_in: Duration,
}

impl Containerd {
    /// Writes the config, starts containerd, waits until its CRI answers `Version`, and
    /// supervises it from then on (restart with back-off 1 s .. 30 s when it exits).
    pub async fn start(config: ContainerdConfig) -> Result<Self, ContainerdError> {
        let t0 = Instant::now();
        config.write()?;
        replace_stale(&config).await;
        let mut child = spawn(&config)?;
        wait_ready(&config, &mut child).await?;
        let started_in = t0.elapsed();
        info!(socket = %config.socket.display(), ?started_in, "containerd ready");
        let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
        let restarts = Arc::new(AtomicU32::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            config.clone(),
            child,
            stop_rx,
            pid.clone(),
            restarts.clone(),
        ));
        Ok(Containerd {
            config,
            stop_tx,
            task,
            pid,
            restarts,
            started_in,
        })
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    /// The config it runs with.
    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// PID of the current containerd process (0 while restarting).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// How many times it was restarted after exiting.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Time from [`Containerd::start`] until CRI answered.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Stops supervising and terminates containerd (SIGTERM, SIGKILL after 10 s).
    /// Containers keep running in their shims.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.task.await;
    }
}

/// Terminates a containerd left by an earlier rk3s process (found through the pid file,
/// and only if that process is containerd started with our config).
async fn replace_stale(config: &ContainerdConfig) {
    let Ok(text) = std::fs::read_to_string(config.pid_path()) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if pid <= 1
        || !cmdline.contains("containerd")
        || !cmdline.contains(&*config.config_path().to_string_lossy())
    {
        return;
    }
    warn!(pid, "replacing containerd left by an earlier rk3s process");
    // SAFETY: kill(2) on a pid we just verified; no memory is touched.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn spawn(config: &ContainerdConfig) -> Result<Child, ContainerdError> {
    let log_path = config.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let log2 = log.try_clone().map_err(io_err(&log_path))?;
    let _ = std::fs::remove_file(&config.socket);
    let mut cmd = Command::new(&config.binary);
    cmd.arg("--config")
        .arg(config.config_path())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C at rk3s's terminal is rk3s's to handle.
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(|source| ContainerdError::Spawn {
        binary: config.binary.clone(),
        source,
    })?;
    if let Some(pid) = child.id() {
        let p = config.pid_path();
        std::fs::write(&p, format!("{pid}\n")).map_err(io_err(&p))?;
    }
    Ok(child)
}

async fn wait_ready(config: &ContainerdConfig, child: &mut Child) -> Result<(), ContainerdError> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ContainerdError::Exited {
                status: status.to_string(),
                log_tail: log_tail(&config.log_path(), 20),
            });
        }
        if config.socket.exists() {
            if let Ok(c) = CriClient::connect(&config.socket).await {
                if c.with_timeout(Duration::from_secs(2))
                    .version()
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        if t0.elapsed() > config.ready_timeout {
            return Err(ContainerdError::NotReady {
                socket: config.socket.clone(),
                waited: t0.elapsed(),
                log_tail: log_tail(&config.log_path(), 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

async fn supervise(
    config: ContainerdConfig,
    mut child: Child,
    mut stop_rx: watch::Receiver<bool>,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        tokio::select! {
            status = child.wait() => {
                pid.store(0, Ordering::SeqCst);
                warn!(?status, log = %log_tail(&config.log_path(), 5), "containerd exited; restarting in {backoff:?}");
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_rx.changed() => { let _ = std::fs::remove_file(config.pid_path()); return; }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                match spawn(&config) {
                    Ok(mut c) => {
                        match wait_ready(&config, &mut c).await {
                            Ok(()) => info!("containerd restarted"),
                            Err(e) => warn!("restarted containerd is not ready: {e}"),
                        }
                        pid.store(c.id().unwrap_or(0), Ordering::SeqCst);
                        restarts.fetch_add(1, Ordering::SeqCst);
                        child = c;
                    }
                    Err(e) => {
                        warn!("cannot restart containerd: {e}");
                        // Keep the loop going: `child` has exited, so wait() returns at once.
                    }
                }
            }
            _ = stop_rx.changed() => {
                terminate(&mut child).await;
                pid.store(0, Ordering::SeqCst);
                let _ = std::fs::remove_file(config.pid_path());
                let _ = std::fs::remove_file(&config.socket);
                return;
            }
        }
    }
}

/// The CRI endpoint the agent uses: its own supervised containerd, or an existing one
/// (`--container-runtime-endpoint`).
#[derive(Debug)]
pub enum RuntimeEndpoint {
    /// A containerd that rk3s supervises.
    Managed(Box<Containerd>),
    /// An existing CRI socket; not supervised.
    External(PathBuf),
}

impl RuntimeEndpoint {
    /// Starts the supervised containerd, unless `external` names an existing socket
    /// (`unix://PATH` or `PATH`), which is then used as is.
    pub async fn start(
        config: ContainerdConfig,
        external: Option<&str>,
    ) -> Result<Self, ContainerdError> {
        match external {
            Some(ep) => {
                let path = PathBuf::from(ep.strip_prefix("unix://").unwrap_or(ep));
                use std::os::unix::fs::FileTypeExt;
                match std::fs::metadata(&path) {
                    Ok(m) if m.file_type().is_socket() => Ok(RuntimeEndpoint::External(path)),
                    _ => Err(ContainerdError::NoEndpoint(path)),
                }
            }
            None => Ok(RuntimeEndpoint::Managed(Box::new(
                Containerd::start(config).await?,
            ))),
        }
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        match self {
            RuntimeEndpoint::Managed(c) => c.socket(),
            RuntimeEndpoint::External(p) => p,
        }
    }
}

/// Unmounts (lazily) every mount point at or under `dir`, deepest first; returns how
/// many were unmounted. Used to clean up after containerd (snapshots, sandbox shm).
pub fn unmount_under(dir: &Path) -> usize {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    let mut n = 0;
    for p in points {
        let Ok(c) = std::ffi::CString::new(p) else {
            continue;
        };
        // SAFETY: umount2 with a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            n += 1;
        }
    }
    n
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRIES: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example:5000"
      - "http://127.0.0.1:5001/custom/root/"
  registry.rk3s.test:
    endpoint: ["http://127.0.0.1:5002"]
    rewrite:
      "^library/(.*)": "mirrored/$1"
  "*":
    endpoint: ["https://any.example"]
configs:
  "mirror.example:5000":
    auth: {username: alice, password: "p\"w"}
    tls: {ca_file: /etc/ssl/ca.pem, cert_file: /c.pem, key_file: /k.pem}
  "127.0.0.1:5002":
    auth: {auth: YWxpY2U6cHc=, identitytoken: tok}
  private.example:
    tls: {insecure_skip_verify: true}
"#;

    #[test]
    fn registries_yaml_parses_like_k3s() {
        let r = Registries::parse(REGISTRIES).unwrap();
        assert_eq!(r.mirrors.len(), 3);
        assert_eq!(
            r.mirrors["docker.io"].endpoints,
            [
                "https://mirror.example:5000",
                "http://127.0.0.1:5001/custom/root/"
            ]
        );
        assert_eq!(
            r.mirrors["registry.rk3s.test"].rewrites,
            [("^library/(.*)".to_string(), "mirrored/$1".to_string())]
        );
        let a = r.configs["mirror.example:5000"].auth.clone().unwrap();
        assert_eq!(
            (a.username.as_str(), a.password.as_str()),
            ("alice", "p\"w")
        );
        assert_eq!(
            r.configs["127.0.0.1:5002"]
                .auth
                .as_ref()
                .map(|a| a.identity_token.as_str()),
            Some("tok")
        );
        assert_eq!(
            r.configs["private.example"]
                .tls
                .as_ref()
                .map(|t| t.insecure_skip_verify),
            Some(true)
        );
        assert_eq!(Registries::parse("").unwrap(), Registries::default());
        assert!(Registries::parse("mirrors: [a]")
            .unwrap_err()
            .contains("mirrors: expected a map"));
        assert!(Registries::parse("mirrors: {a: {endpoint: x}}")
            .unwrap_err()
            .contains("expected a list"));
    }

    #[test]
    fn registries_render_hosts_toml_per_host() {
        let r = Registries::parse(REGISTRIES).unwrap();
        let files: std::collections::BTreeMap<String, String> =
            r.hosts_files().into_iter().collect();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            [
                "_default",
                "docker.io",
                "mirror.example:5000",
                "private.example",
                "registry.rk3s.test"
            ]
        );
        let hub = &files["docker.io"];
        assert!(
            hub.contains("server = \"https://registry-1.docker.io/v2\"\n"),
            "{hub}"
        );
        let m1 = hub
            .find("[host.\"https://mirror.example:5000/v2\"]")
            .unwrap();
        let m2 = hub
            .find("[host.\"http://127.0.0.1:5001/custom/root\"]")
            .unwrap();
        assert!(m1 < m2, "endpoints keep their order");
        assert!(hub[m1..m2].contains("  capabilities = [\"pull\", \"resolve\"]\n  ca = [\"/etc/ssl/ca.pem\"]\n  client = [[\"/c.pem\", \"/k.pem\"]]\n"), "{hub}");
        assert!(!hub[m1..m2].contains("override_path"));
        assert!(hub[m2..].contains("override_path = true"), "{hub}");
        let fake = &files["registry.rk3s.test"];
        assert!(
            fake.contains("server = \"https://registry.rk3s.test/v2\"")
                && fake.contains("[host.\"http://127.0.0.1:5002/v2\"]"),
            "{fake}"
        );
        assert!(!files["_default"].contains("server ="));
        assert!(
            files["private.example"]
                .contains("server = \"https://private.example/v2\"\nskip_verify = true\n"),
            "{}",
            files["private.example"]
        );
    }

    #[test]
    fn registries_render_cri_auth_and_config_path() {
        let r = Registries::parse(REGISTRIES).unwrap();
        let c = ContainerdConfig::new("/var/lib/rk3s");
        let t = c.render_with(Some(&r));
        assert!(t.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/var/lib/rk3s/agent/etc/containerd/certs.d\"\n"), "{t}");
        assert!(t.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"mirror.example:5000\".auth]\n  username = \"alice\"\n  password = \"p\\\"w\"\n"), "{t}");
        assert!(t.contains(".registry.configs.\"127.0.0.1:5002\".auth]\n  auth = \"YWxpY2U6cHc=\"\n  identitytoken = \"tok\"\n"), "{t}");
        assert!(
            !t.contains("private.example"),
            "TLS-only hosts live in hosts.toml"
        );
        // Without a registries file: the hosts dir only.
        assert!(!c.render().contains(".registry.configs."));
    }

    #[test]
    fn write_replaces_the_hosts_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = tmp.path().join("registries.yaml");
        std::fs::write(&reg, REGISTRIES).unwrap();
        let mut c =
            ContainerdConfig::new(tmp.path().join("data")).with_state_dir(tmp.path().join("state"));
        c.private_registry = Some(reg.clone());
        c.write().unwrap();
        assert!(c.certs_dir().join("docker.io/hosts.toml").is_file());
        assert!(std::fs::read_to_string(c.config_path())
            .unwrap()
            .contains("alice"));
        // The file removed: the next start forgets the hosts.
        std::fs::remove_file(&reg).unwrap();
        c.write().unwrap();
        assert!(c.certs_dir().is_dir() && !c.certs_dir().join("docker.io").exists());
        std::fs::write(&reg, "mirrors: 3").unwrap();
        let e = c.write().unwrap_err().to_string();
        assert!(
            e.contains("invalid registries file: mirrors: expected a map"),
            "{e}"
        );
    }

    #[test]
    fn config_has_paths_runtimes_and_sandbox_image() {
        let mut c = ContainerdConfig::new("/var/lib/rk3s");
        c.crun = Some(PathBuf::from("/usr/bin/crun"));
        let t = c.render();
        assert!(t.contains("version = 2\n"));
        assert!(t.contains("root = \"/var/lib/rk3s/agent/containerd\"\n"));
        assert!(t.contains("state = \"/run/rk3s/containerd\"\n"));
        assert!(t.contains("address = \"/run/rk3s/containerd/containerd.sock\"\n"));
        assert!(t.contains("sandbox_image = \"rk3s.local/pause:3.10\"\n"));
        assert!(t.contains("snapshotter = \"overlayfs\""));
        assert!(t.contains("default_runtime_name = \"runc\""));
        assert!(t.contains("runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\""));
        assert!(t.contains("SystemdCgroup = false\n  Root = \"/run/rk3s/containerd/runc\""));
        assert!(t.contains(
            "runtimes.crun.options]\n  BinaryName = \"/usr/bin/crun\"\n  SystemdCgroup = false"
        ));
        assert!(t.contains("bin_dir = \"/usr/lib/cni\"\n"));
        assert!(t.contains("conf_dir = \"/var/lib/rk3s/agent/etc/cni/net.d\"\n"));
        assert_eq!(
            c.config_path(),
            Path::new("/var/lib/rk3s/agent/etc/containerd/config.toml")
        );
        assert_eq!(
            c.log_path(),
            Path::new("/var/lib/rk3s/agent/containerd/containerd.log")
        );
        c.crun = None;
        assert!(!c.render().contains("crun"));
    }

    #[test]
    fn state_dir_follows_the_data_dir() {
        // The default data dir keeps k3s's layout.
        for d in ["/var/lib/rk3s", "/var/lib/rk3s/", "/var/lib//rk3s/."] {
            assert_eq!(
                default_state_dir(Path::new(d)),
                Path::new(DEFAULT_STATE_DIR),
                "{d}"
            );
        }
        assert_eq!(
            ContainerdConfig::new("/var/lib/rk3s").socket,
            Path::new(DEFAULT_SOCKET)
        );
        // Any other data dir: its own short dir under /run/rk3s, stable per dir.
        let a = default_state_dir(Path::new("/tmp/node-a"));
        let b = default_state_dir(Path::new("/tmp/node-b"));
        assert_ne!(a, b);
        assert_ne!(a, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(a, default_state_dir(Path::new("/tmp/node-a/")));
        assert!(a.starts_with(RUN_DIR) && a.ends_with("containerd"), "{a:?}");
        let hash = a.parent().and_then(|p| p.file_name()).unwrap_or_default();
        assert_eq!(hash.len(), 12);
        // A relative data dir is taken from the current directory.
        let cwd = std::env::current_dir().unwrap_or_default();
        assert_eq!(
            default_state_dir(Path::new("rel/dir")),
            default_state_dir(&cwd.join("rel/dir"))
        );
        // The socket stays short whatever the data dir.
        let long = "/x".repeat(200);
        let c = ContainerdConfig::new(&long);
        assert!(c.socket.as_os_str().len() < 108, "{:?}", c.socket);
        assert_eq!(c.socket, c.state_dir.join("containerd.sock"));
    }

    #[test]
    fn state_dir_moves_the_socket() {
        let c = ContainerdConfig::new("/d").with_state_dir("/run/x");
        assert_eq!(c.socket, Path::new("/run/x/containerd.sock"));
        assert!(c.render().contains("address = \"/run/x/containerd.sock\""));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let p = dir.path().join("l");
        assert!(std::fs::write(&p, "1\n2\n3\n").is_ok());
        assert_eq!(log_tail(&p, 2), "2\n3");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }

    #[tokio::test]
    async fn external_endpoint_must_be_a_socket() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let c = ContainerdConfig::new(dir.path());
        let missing = dir.path().join("none.sock");
        let r = RuntimeEndpoint::start(c.clone(), missing.to_str()).await;
        assert!(matches!(r, Err(ContainerdError::NoEndpoint(_))));
        let sock = dir.path().join("s.sock");
        let Ok(_l) = std::os::unix::net::UnixListener::bind(&sock) else {
            panic!("bind")
        };
        let ep = format!("unix://{}", sock.display());
        match RuntimeEndpoint::start(c, Some(&ep)).await {
            Ok(RuntimeEndpoint::External(p)) => assert_eq!(p, sock),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn on_path(bin: &str) -> bool {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false)
    }

    /// Why the real-containerd test cannot run here, if it cannot.
    fn e2e_skip_reason() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root".into());
        }
        for bin in ["containerd", "ctr", "runc"] {
            if !on_path(bin) {
                return Some(format!(
                    "{bin} not installed (apt-get install containerd runc)"
                ));
            }
        }
        if let Err(e) = crate::image::find_static_busybox() {
            return Some(e.to_string());
        }
        None
    }

    fn count_mounts_under(dir: &Path) -> usize {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(&unescape_mountinfo(p)).starts_with(dir))
            .count()
    }

    fn processes_mentioning(needle: &str) -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|pid| {
                let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&c).contains(needle)
            })
            .collect()
    }

    fn busybox_rootfs(dir: &Path) {
        let Ok(bb) = crate::image::find_static_busybox() else {
            panic!("busybox")
        };
        let bin = dir.join("bin");
        assert!(std::fs::create_dir_all(&bin).is_ok());
        assert!(std::fs::copy(&bb, bin.join("busybox")).is_ok());
        for applet in ["sh", "echo", "sleep", "cat", "ls"] {
            assert!(std::os::unix::fs::symlink("busybox", bin.join(applet)).is_ok());
        }
        assert!(std::fs::create_dir_all(dir.join("tmp")).is_ok());
    }

    async fn wait_exited(cri: &CriClient, id: &str) -> crate::cri::types::ContainerStatus {
        use crate::cri::types::ContainerState;
        for _ in 0..400 {
            if let Ok(s) = cri.container_status(id).await {
                if s.state == ContainerState::ContainerExited as i32 {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("container {id} did not exit");
    }

    /// Removes every sandbox (and so every container) through CRI.
    async fn remove_all(cri: &CriClient) {
        if let Ok(list) = cri.list_pod_sandboxes(None).await {
            for sb in list {
                let _ = cri.stop_pod_sandbox(&sb.id).await;
                let _ = cri.remove_pod_sandbox(&sb.id).await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_pods_on_real_containerd() {
        use futures_util::FutureExt;
        if let Some(why) = e2e_skip_reason() {
            eprintln!("SKIP runs_pods_on_real_containerd: {why}");
            return;
        }
        let Ok(tmp) = tempfile::Builder::new().prefix("rk3s-e2e").tempdir() else {
            panic!("tempdir")
        };
        let data = tmp.path().join("data");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let state = PathBuf::from(format!("/run/rk3s-test-{}-{nanos}", std::process::id()));
        let config = ContainerdConfig::new(&data).with_state_dir(&state);
        let socket = config.socket.clone();

        // containerd 1.6 puts shim sockets under /run/containerd/s whatever its state dir.
        let shim_dir_existed = Path::new("/run/containerd").exists();
        let t0 = Instant::now();
        let started = Containerd::start(config.clone()).await;
        let Ok(ctd) = started else {
            panic!("containerd: {started:?}")
        };
        let start_time = t0.elapsed();
        let cri = match CriClient::connect(&socket).await {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        let body = e2e_body(&cri, &ctd, tmp.path(), &data);
        let result = std::panic::AssertUnwindSafe(body).catch_unwind().await;

        if result.is_err() {
            eprintln!(
                "containerd log (tail):\n{}",
                log_tail(&config.log_path(), 15)
            );
        }
        // Clean-up, whatever happened.
        remove_all(&cri).await;
        drop(cri);
        ctd.stop().await;
        unmount_under(&data);
        unmount_under(&state);
        for pid in processes_mentioning(&socket.to_string_lossy()) {
            // SAFETY: kill(2); no memory is touched.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&state);
        if !shim_dir_existed {
            let _ = std::fs::remove_dir("/run/containerd/s");
            let _ = std::fs::remove_dir("/run/containerd");
        }
        let leftover_mounts = count_mounts_under(tmp.path()) + count_mounts_under(&state);
        let leftover_procs = processes_mentioning(&socket.to_string_lossy());
        drop(tmp);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
        eprintln!("containerd start (to CRI Version answering): {start_time:?}");
        assert_eq!(leftover_mounts, 0, "mounts left behind");
        assert!(
            leftover_procs.is_empty(),
            "processes left behind: {leftover_procs:?}"
        );
        assert!(!state.exists());
    }

    async fn e2e_body(cri: &CriClient, ctd: &Containerd, tmp: &Path, data: &Path) {
        use crate::cri::types::*;
        use crate::image::{
            build_oci_archive, ensure_pause_image, import, import_dir, ImageConfig,
        };
        let socket = ctd.socket().to_path_buf();

        let v = cri.version().await;
        let Ok(v) = v else { panic!("version: {v:?}") };
        assert_eq!(v.runtime_name, "containerd");
        assert_eq!(v.runtime_api_version, "v1");
        let st = cri.status().await;
        let Ok(st) = st else { panic!("status: {st:?}") };
        assert!(
            st.conditions
                .iter()
                .any(|c| c.r#type == "RuntimeReady" && c.status),
            "{st:?}"
        );

        // Images: the pause image, and a busybox image in three compressions.
        let t = Instant::now();
        let cache = data.join("agent/cache");
        let r = ensure_pause_image(cri, &cache).await;
        assert_eq!(r.ok(), Some(true));
        eprintln!("pause image build + import: {:?}", t.elapsed());
        assert_eq!(ensure_pause_image(cri, &cache).await.ok(), Some(false));
        // Importing the same archive again is harmless and reports its name.
        let again = import(&cache.join(crate::image::PAUSE_ARCHIVE), &socket).await;
        assert_eq!(again.ok(), Some(vec![SANDBOX_IMAGE.to_string()]));
        let images = data.join("agent/images");
        assert!(std::fs::create_dir_all(&images).is_ok());
        let rootfs = tmp.join("rootfs");
        busybox_rootfs(&rootfs);
        let opts = ImageConfig {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        let b = build_oci_archive(&rootfs, &opts, "busybox:1.36", &images.join("busybox.tar"));
        assert!(b.is_ok(), "{b:?}");
        let mut expected = vec!["docker.io/library/busybox:1.36".to_string()];
        for (tool, ext) in [("gzip", "gz"), ("zstd", "zst")] {
            if !on_path(tool) {
                eprintln!("note: {tool} missing, .tar.{ext} import not tested");
                continue;
            }
            let tag = format!("rk3s.local/busybox-{ext}:1");
            let plain = images.join(format!("bb-{ext}.tar"));
            assert!(build_oci_archive(&rootfs, &opts, &tag, &plain).is_ok());
            let mut cmd = std::process::Command::new(tool);
            if tool == "zstd" {
                cmd.args(["-q", "--rm"]);
            }
            let st = cmd.arg("-f").arg(&plain).status();
            assert!(st.map(|s| s.success()).unwrap_or(false), "{tool}");
            expected.push(tag);
        }
        let outcomes = import_dir(&images, &socket).await;
        assert_eq!(outcomes.len(), expected.len(), "{outcomes:?}");
        for o in &outcomes {
            assert!(o.result.is_ok(), "{} : {:?}", o.archive.display(), o.result);
        }
        let list = cri.list_images(None).await;
        let Ok(list) = list else {
            panic!("list: {list:?}")
        };
        let tags: Vec<&String> = list.iter().flat_map(|i| i.repo_tags.iter()).collect();
        for e in expected.iter().chain([&SANDBOX_IMAGE.to_string()]) {
            assert!(tags.contains(&e), "{e} not in {tags:?}");
        }
        let bb = cri.image_status("busybox:1.36").await;
        let Ok(Some(bb)) = bb else {
            panic!("image status: {bb:?}")
        };
        assert!(bb.id.starts_with("sha256:"));
        assert!(matches!(
            cri.image_status("rk3s.local/nothing:1").await,
            Ok(None)
        ));

        // A host-network sandbox and a container that echoes.
        let logs = tmp.join("logs/default_e2e_uid-1");
        assert!(std::fs::create_dir_all(&logs).is_ok());
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "e2e".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // Upstream's kubelet sets no hostname for host-network pods (the UTS
            // namespace is the host's; runc refuses to set it).
            log_directory: logs.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = Instant::now();
        let sb = cri.run_pod_sandbox(sandbox.clone(), "").await;
        let Ok(sb) = sb else {
            panic!("run sandbox: {sb:?}")
        };
        let sandbox_time = t.elapsed();
        let container = |name: &str, cmd: &[&str]| ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "docker.io/library/busybox:1.36".into(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            ..Default::default()
        };
        let t = Instant::now();
        let c = cri
            .create_container(&sb, container("echo", &["echo", "hello"]), sandbox.clone())
            .await;
        let Ok(c) = c else { panic!("create: {c:?}") };
        let started = cri.start_container(&c).await;
        assert!(started.is_ok(), "{started:?}");
        let container_time = t.elapsed();
        eprintln!(
            "host-network sandbox: {sandbox_time:?}; container create+start: {container_time:?}"
        );
        let s = wait_exited(cri, &c).await;
        assert_eq!(s.exit_code, 0);
        assert_eq!(s.reason, "Completed");
        let log = std::fs::read_to_string(logs.join("echo/0.log")).unwrap_or_default();
        let line = log.lines().next().unwrap_or_default();
        let mut parts = line.splitn(4, ' ');
        let ts = parts.next().unwrap_or_default();
        assert!(
            ts.parse::<jiff::Timestamp>().is_ok(),
            "CRI log timestamp {ts:?}"
        );
        assert_eq!(
            parts.collect::<Vec<_>>(),
            ["stdout", "F", "hello"],
            "log {log:?}"
        );

        // A long-running container: exec into it.
        let c2 = cri
            .create_container(
                &sb,
                container("sleeper", &["sleep", "3600"]),
                sandbox.clone(),
            )
            .await;
        let Ok(c2) = c2 else { panic!("create: {c2:?}") };
        assert!(cri.start_container(&c2).await.is_ok());
        let ex = cri
            .exec_sync(
                &c2,
                vec![
                    "sh".into(),
                    "-c".into(),
                    "echo hi; echo err >&2; exit 3".into(),
                ],
                10,
            )
            .await;
        let Ok(ex) = ex else { panic!("exec: {ex:?}") };
        assert_eq!(
            (ex.stdout.as_slice(), ex.stderr.as_slice(), ex.exit_code),
            (&b"hi\n"[..], &b"err\n"[..], 3)
        );
        let filter = ContainerFilter {
            pod_sandbox_id: sb.clone(),
            ..Default::default()
        };
        let cs = cri.list_containers(Some(filter)).await.unwrap_or_default();
        assert_eq!(cs.len(), 2);
        let sbs = cri.list_pod_sandboxes(None).await.unwrap_or_default();
        assert_eq!(
            sbs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            [sb.as_str()]
        );
        let sbst = cri.pod_sandbox_status(&sb).await;
        assert_eq!(
            sbst.map(|s| s.state).ok(),
            Some(PodSandboxState::SandboxReady as i32)
        );

        // containerd killed: the supervisor restarts it, the containers survive.
        let old = ctd.pid();
        // SAFETY: kill(2) on containerd's pid.
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        let mut back = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if ctd.restarts() == 1 && ctd.pid() != 0 && ctd.pid() != old {
                back = true;
                break;
            }
        }
        assert!(back, "containerd not restarted");
        let cri2 = CriClient::connect(&socket).await;
        let Ok(cri2) = cri2 else {
            panic!("reconnect: {cri2:?}")
        };
        let st = cri2.container_status(&c2).await;
        assert_eq!(
            st.map(|s| s.state).ok(),
            Some(ContainerState::ContainerRunning as i32)
        );
        let ex = cri2
            .exec_sync(&c2, vec!["echo".into(), "again".into()], 10)
            .await;
        assert_eq!(ex.map(|e| e.stdout).ok(), Some(b"again\n".to_vec()));

        // The crun runtime handler. crun refuses hybrid cgroup hosts (v1 hierarchies plus
        // a unified one holding controllers); there only the refusal is checked.
        if ctd.config().crun.is_some() && cgroup_hybrid_with_controllers() {
            let mut sc = sandbox.clone();
            if let Some(m) = sc.metadata.as_mut() {
                m.name = "crun".into();
                m.uid = "uid-2".into();
            }
            let r = cri2.run_pod_sandbox(sc, "crun").await;
            let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains("hybrid"), "{msg}");
            eprintln!("note: crun handler not usable on this hybrid-cgroup host: {msg}");
        } else if ctd.config().crun.is_some() {
            let mut sc = sandbox.clone();
            if let Some(m) = sc.metadata.as_mut() {
                m.name = "crun".into();
                m.uid = "uid-2".into();
            }
            let sb2 = cri2.run_pod_sandbox(sc.clone(), "crun").await;
            let Ok(sb2) = sb2 else {
                panic!("crun sandbox: {sb2:?}")
            };
            let c3 = cri2
                .create_container(&sb2, container("echo-crun", &["echo", "crun"]), sc)
                .await;
            let Ok(c3) = c3 else { panic!("create: {c3:?}") };
            assert!(cri2.start_container(&c3).await.is_ok());
            assert_eq!(wait_exited(&cri2, &c3).await.exit_code, 0);
            let sbst = cri2.pod_sandbox_status(&sb2).await;
            assert_eq!(
                sbst.map(|s| s.runtime_handler).ok(),
                Some("crun".to_string())
            );
        }

        // Clean-up through CRI.
        assert!(cri2.stop_container(&c2, 1).await.is_ok());
        assert!(cri2.remove_container(&c2).await.is_ok());
        assert!(cri2.remove_container(&c).await.is_ok());
        assert!(cri2
            .list_containers(None)
            .await
            .map(|c| c.len())
            .ok()
            .is_some_and(|n| n <= 1));
        remove_all(&cri2).await;
        assert_eq!(
            cri2.list_pod_sandboxes(None).await.map(|l| l.len()).ok(),
            Some(0)
        );
        assert!(cri2.remove_image("busybox:1.36").await.is_ok());
        assert!(matches!(cri2.image_status("busybox:1.36").await, Ok(None)));
    }
}
