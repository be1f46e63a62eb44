//! `rk3s install`: installs this binary as a service, as k3s's install script does — the
//! binary in `/usr/local/bin`, a systemd unit (`rk3s.service`, or `rk3s-agent.service` when
//! `RK3S_URL` is set) with k3s's unit settings, `rk3s-killall.sh` and an uninstall script —
//! then enables and (re)starts it. Without systemd it starts the server in the background
//! (pid file in `/run`; `--log /var/log/<name>.log`: the server writes and rotates its own
//! log), as `scripts/up.sh` did. Re-running it with a new
//! build is the upgrade: the binary is replaced atomically and the service restarted;
//! containerd and the pods keep running (the unit kills only the main process).
//!
//! k3s's environment variables, renamed: `INSTALL_RK3S_EXEC` (extra flags),
//! `INSTALL_RK3S_NAME`, `INSTALL_RK3S_BIN_DIR`, `INSTALL_RK3S_SYSTEMD_DIR`,
//! `INSTALL_RK3S_SKIP_ENABLE`, `INSTALL_RK3S_SKIP_START`, `RK3S_URL`, `RK3S_TOKEN`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

/// `rk3s install [FLAGS...]`: flags after `--` go to `rk3s server` (or `rk3s agent`).
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Flags for the service's `rk3s server` / `rk3s agent` command line (also taken from
    /// INSTALL_RK3S_EXEC)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub flags: Vec<String>,
}

/// Where and what to install (from the environment, with k3s's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `server` or `agent`.
    pub command: String,
    /// Service name: `rk3s` or `rk3s-agent`.
    pub name: String,
    /// Folder of the binary and the scripts.
    pub bin_dir: PathBuf,
    /// Folder of the unit file.
    pub systemd_dir: PathBuf,
    /// Flags of the service's command line.
    pub flags: Vec<String>,
    /// Environment written to `<unit>.env` (RK3S_URL, RK3S_TOKEN).
    pub env: Vec<(String, String)>,
    /// The data dir the flags name (for the uninstall script).
    pub data_dir: PathBuf,
    /// rk3s's configuration folder (`/etc/rk3s`: config.yaml, the kubeconfig).
    pub config_dir: PathBuf,
    /// Do not enable the unit.
    pub skip_enable: bool,
    /// Do not start or restart the service.
    pub skip_start: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Splits `INSTALL_RK3S_EXEC` like a shell would for plain words and simple quotes.
fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for ch in s.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The value of `--data-dir`/`-d` in `flags`, else the default.
fn data_dir_of(flags: &[String]) -> PathBuf {
    let mut it = flags.iter();
    let mut found = None;
    while let Some(f) = it.next() {
        if let Some(v) = f.strip_prefix("--data-dir=") {
            found = Some(v.to_string());
        } else if f == "--data-dir" || f == "-d" {
            found = it.next().cloned();
        }
    }
    PathBuf::from(found.unwrap_or_else(|| "/var/lib/rk3s".into()))
}

impl Plan {
    /// The plan from the environment and the command line's flags.
    pub fn from_env(cli_flags: &[String]) -> Plan {
        let mut flags: Vec<String> = env("INSTALL_RK3S_EXEC")
            .map(|e| split_words(&e))
            .unwrap_or_default();
        flags.extend(cli_flags.iter().cloned());
        let url = env("RK3S_URL");
        let mut command = if url.is_some() { "agent" } else { "server" }.to_string();
        if let Some(first) = flags.first() {
            if first == "server" || first == "agent" {
                command = flags.remove(0);
            }
        }
        let name = env("INSTALL_RK3S_NAME").unwrap_or_else(|| {
            if command == "agent" {
                "rk3s-agent".into()
            } else {
                "rk3s".into()
            }
        });
        let mut envs = Vec::new();
        if let Some(u) = url {
            envs.push(("RK3S_URL".to_string(), u));
        }
        if let Some(t) = env("RK3S_TOKEN") {
            envs.push(("RK3S_TOKEN".to_string(), t));
        }
        Plan {
            data_dir: data_dir_of(&flags),
            config_dir: PathBuf::from(
                env("INSTALL_RK3S_CONFIG_DIR").unwrap_or_else(|| "/etc/rk3s".into()),
            ),
            command,
            name,
            bin_dir: PathBuf::from(
                env("INSTALL_RK3S_BIN_DIR").unwrap_or_else(|| "/usr/local/bin".into()),
            ),
            systemd_dir: PathBuf::from(
                env("INSTALL_RK3S_SYSTEMD_DIR").unwrap_or_else(|| "/etc/systemd/system".into()),
            ),
            flags,
            env: envs,
            skip_enable: env("INSTALL_RK3S_SKIP_ENABLE").is_some_and(|v| v == "true"),
            skip_start: env("INSTALL_RK3S_SKIP_START").is_some_and(|v| v == "true"),
        }
    }

    fn binary(&self) -> PathBuf {
        self.bin_dir.join("rk3s")
    }
    fn unit_path(&self) -> PathBuf {
        self.systemd_dir.join(format!("{}.service", self.name))
    }
    fn env_path(&self) -> PathBuf {
        self.systemd_dir.join(format!("{}.service.env", self.name))
    }
    fn uninstall_path(&self) -> PathBuf {
        self.bin_dir.join(format!("{}-uninstall.sh", self.name))
    }
    /// `<bin>/../lib/rk3s`: the kubectl the set-up scripts install.
    fn lib_dir(&self) -> PathBuf {
        self.bin_dir
            .parent()
            .unwrap_or(Path::new("/usr/local"))
            .join("lib/rk3s")
    }
    fn killall_path(&self) -> PathBuf {
        self.bin_dir.join("rk3s-killall.sh")
    }
    /// Pid file of the background start (no systemd).
    pub fn pid_file(&self) -> PathBuf {
        PathBuf::from(format!("/run/{}.pid", self.name))
    }
    /// Log file of the background start (no systemd).
    pub fn log_file(&self) -> PathBuf {
        PathBuf::from(format!("/var/log/{}.log", self.name))
    }

    /// The systemd unit (k3s's settings: notify once ready, kill only the main process so
    /// containerd and pods survive restarts and upgrades, delegated cgroups, no limits,
    /// restart always).
    pub fn unit(&self) -> String {
        let exec = std::iter::once(self.binary().display().to_string())
            .chain(std::iter::once(self.command.clone()))
            .chain(self.flags.iter().map(|f| systemd_quote(f)))
            .collect::<Vec<_>>()
            .join(" ");
        let description = if self.command == "agent" {
            "rk3s agent: a lightweight Kubernetes node"
        } else {
            "rk3s server: lightweight Kubernetes"
        };
        format!(
            "[Unit]\n\
             Description={description}\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n\
             \n\
             [Service]\n\
             Type=notify\n\
             EnvironmentFile=-/etc/default/%N\n\
             EnvironmentFile=-{env}\n\
             KillMode=process\n\
             Delegate=yes\n\
             User=root\n\
             LimitNOFILE=1048576\n\
             LimitNPROC=infinity\n\
             LimitCORE=infinity\n\
             TasksMax=infinity\n\
             TimeoutStartSec=0\n\
             Restart=always\n\
             RestartSec=5s\n\
             ExecStartPre=-/sbin/modprobe br_netfilter\n\
             ExecStartPre=-/sbin/modprobe overlay\n\
             ExecStart={exec}\n",
            env = self.env_path().display(),
        )
    }

    /// The uninstall script: stops everything (`rk3s killall`), removes the unit, the
    /// binary, the scripts, the configuration, the data dir, logs and pid file.
    pub fn uninstall_script(&self) -> String {
        let q = |p: &Path| shell_quote(&p.display().to_string());
        let killall = format!("{} killall", q(&self.binary()));
        format!(
            "#!/bin/sh\n\
             # Removes {name} and everything it made (written by `rk3s install`).\n\
             set -x\n\
             [ \"$(id -u)\" -eq 0 ] || {{ echo 'run as root' >&2; exit 1; }}\n\
             if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then\n\
             \x20 systemctl disable --now {name}.service 2>/dev/null || true\n\
             fi\n\
             if [ -f {pid} ]; then kill \"$(cat {pid})\" 2>/dev/null; rm -f {pid}; fi\n\
             {killall} --data-dir {data} || true\n\
             rm -f {unit} {envf}\n\
             if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload; fi\n\
             rm -rf {data} {config} {lib}\n\
             rm -f {log} {log}.* {log_backups}\n\
             rm -f {killall_sh} {bin} \"$0\"\n",
            name = self.name,
            pid = q(&self.pid_file()),
            killall = killall,
            data = q(&self.data_dir),
            config = q(&self.config_dir),
            lib = q(&self.lib_dir()),
            unit = q(&self.unit_path()),
            envf = q(&self.env_path()),
            log = q(&self.log_file()),
            log_backups = {
                // Rotated logs: `<name>-<time>.log` (never `<name>-agent.log`).
                let dir = self.log_file().parent().map(Path::to_path_buf).unwrap_or_default();
                format!("{}[0-9]*.log", q(&dir.join(format!("{}-", self.name))))
            },
            killall_sh = q(&self.killall_path()),
            bin = q(&self.binary()),
        )
    }
}

/// Quotes a word for a systemd ExecStart line when it needs it.
fn systemd_quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@+".contains(c))
    {
        w.to_string()
    } else {
        format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Quotes a word for `sh`.
fn shell_quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', "'\\''"))
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = path.with_extension("rk3s-new");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && Command::new("systemctl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("systemctl {}", args.join(" ")))?;
    if !st.success() {
        bail!("systemctl {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Stops the background server of a previous install (SIGTERM, then SIGKILL after 30 s).
fn stop_background(pid_file: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    if pid <= 1 || !alive(pid) {
        return Ok(());
    }
    eprintln!(
        "[INFO]  stopping the running {} (pid {pid})",
        pid_file.display()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The command line of the background start: the plan's, with `--log <log file>` (k3s's
/// flag: the server writes and rotates its own log) unless the flags name a log already.
pub fn background_args(plan: &Plan) -> Vec<String> {
    let mut args = vec![plan.command.clone()];
    args.extend(plan.flags.iter().cloned());
    let has_log = plan
        .flags
        .iter()
        .any(|f| f == "--log" || f == "-l" || f.starts_with("--log="));
    if !has_log {
        args.push("--log".into());
        args.push(plan.log_file().display().to_string());
    }
    args
}

/// Starts `rk3s <command> <flags> --log FILE` in the background (new session), records
/// its pid; fails if it stops within its first second (a bad flag, a busy port).
fn start_background(plan: &Plan) -> anyhow::Result<u32> {
    let mut cmd = Command::new(plan.binary());
    cmd.args(background_args(plan))
        .envs(plan.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", plan.binary().display()))?;
    let pid = child.id();
    write_file(&plan.pid_file(), &format!("{pid}\n"), 0o644)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} {} stopped at once ({status}); see {} or run it in the foreground",
                plan.binary().display(),
                plan.command,
                plan.log_file().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}

/// Runs `rk3s install`.
pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let plan = Plan::from_env(&args.flags);
    let me = std::env::current_exe().context("locating this binary")?;
    let target = plan.binary();
    std::fs::create_dir_all(&plan.bin_dir)
        .with_context(|| format!("creating {}", plan.bin_dir.display()))?;
    if std::fs::canonicalize(&me).ok() != std::fs::canonicalize(&target).ok() {
        // Copy beside, then rename: a running old binary keeps its inode.
        let tmp = target.with_extension("rk3s-new");
        std::fs::copy(&me, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("installing {}", target.display()))?;
    }
    eprintln!("[INFO]  installed {}", target.display());
    write_file(
        &plan.killall_path(),
        &format!(
            "#!/bin/sh\n# Stops all pods, rk3s's containerd and rk3s (written by `rk3s install`).\nexec {} killall \"$@\"\n",
            shell_quote(&target.display().to_string())
        ),
        0o755,
    )?;
    write_file(&plan.uninstall_path(), &plan.uninstall_script(), 0o755)?;
    let env_text: String = plan
        .env
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
        .collect();
    write_file(&plan.env_path(), &env_text, 0o600)?;
    write_file(&plan.unit_path(), &plan.unit(), 0o644)?;
    eprintln!(
        "[INFO]  wrote {} and {}",
        plan.unit_path().display(),
        plan.uninstall_path().display()
    );
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
        if !plan.skip_enable {
            systemctl(&["enable", &format!("{}.service", plan.name)])?;
        }
        if !plan.skip_start {
            eprintln!("[INFO]  (re)starting {}.service", plan.name);
            systemctl(&["restart", &format!("{}.service", plan.name)])?;
        }
    } else if !plan.skip_start {
        eprintln!(
            "[INFO]  no systemd: starting {} in the background",
            plan.name
        );
        stop_background(&plan.pid_file())?;
        let pid = start_background(&plan)?;
        eprintln!(
            "[INFO]  started (pid {pid}, log {})",
            plan.log_file().display()
        );
    }
    Ok(())
}

/// Tells systemd the service is ready (`Type=notify`), when it runs under systemd.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: no socket");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(b"READY=1\n", &a))
    } else {
        sock.send_to(b"READY=1\n", Path::new(&path))
    };
    match sent {
        Ok(_) => tracing::info!("notified systemd: ready"),
        Err(e) => tracing::warn!(error = %e, "sd_notify failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(flags: &[&str]) -> Plan {
        Plan {
            command: "server".into(),
            name: "rk3s".into(),
            bin_dir: "/usr/local/bin".into(),
            systemd_dir: "/etc/systemd/system".into(),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            data_dir: data_dir_of(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            config_dir: "/etc/rk3s".into(),
            skip_enable: false,
            skip_start: false,
        }
    }

    #[test]
    fn the_unit_has_k3s_settings_and_the_flags() {
        let u = plan(&["--disable", "traefik", "--node-label", "a=b c"]).unit();
        for line in [
            "Type=notify",
            "KillMode=process",
            "Delegate=yes",
            "Restart=always",
            "LimitNOFILE=1048576",
            "TasksMax=infinity",
            "WantedBy=multi-user.target",
            "EnvironmentFile=-/etc/systemd/system/rk3s.service.env",
            "ExecStart=/usr/local/bin/rk3s server --disable traefik --node-label \"a=b c\"",
        ] {
            assert!(u.lines().any(|l| l == line), "{line} in\n{u}");
        }
    }

    #[test]
    fn flags_and_data_dir() {
        assert_eq!(
            split_words("server --tls-san 'a b' --x=\"y\"  -d /srv/r"),
            ["server", "--tls-san", "a b", "--x=y", "-d", "/srv/r"]
        );
        assert_eq!(
            data_dir_of(&split_words("-d /srv/r")),
            PathBuf::from("/srv/r")
        );
        assert_eq!(
            data_dir_of(&split_words("--data-dir=/x")),
            PathBuf::from("/x")
        );
        assert_eq!(data_dir_of(&[]), PathBuf::from("/var/lib/rk3s"));
        let s = plan(&["--data-dir", "/srv/it's"]).uninstall_script();
        assert!(
            s.contains("rm -rf '/srv/it'\\''s' '/etc/rk3s' '/usr/local/lib/rk3s'"),
            "{s}"
        );
        assert!(
            s.contains("'/usr/local/bin/rk3s' killall --data-dir"),
            "{s}"
        );
        assert!(s.contains("systemctl disable --now rk3s.service"), "{s}");
    }

    #[test]
    fn the_background_start_logs_to_a_rotated_file() {
        assert_eq!(
            background_args(&plan(&["--disable", "traefik"])),
            [
                "server",
                "--disable",
                "traefik",
                "--log",
                "/var/log/rk3s.log"
            ]
        );
        assert_eq!(
            background_args(&plan(&["--log=/srv/x.log"])),
            ["server", "--log=/srv/x.log"]
        );
        let s = plan(&[]).uninstall_script();
        assert!(
            s.contains(
                "rm -f '/var/log/rk3s.log' '/var/log/rk3s.log'.* '/var/log/rk3s-'[0-9]*.log"
            ),
            "{s}"
        );
    }
}
