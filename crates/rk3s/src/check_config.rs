//! `rk3s check-config`: what this machine needs to run the rk3s node agent, as k3s's
//! `check-config`: kernel features (from the kernel config when one is found, and from
//! what the running kernel shows in /proc and /sys), the cgroup controllers, network
//! sysctls, and the programs and Debian packages the agent uses. Prints a table with
//! pass / warn / fail per check and an `apt-get install` line for what is missing;
//! exits non-zero when something required fails.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;

/// Flags of `rk3s check-config`.
#[derive(Args, Debug, Clone)]
pub struct CheckConfigArgs {
    /// Kernel config file to read (default: /proc/config.gz, then /boot/config-$(uname -r))
    #[arg(long, value_name = "FILE")]
    pub kernel_config: Option<PathBuf>,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Present / as needed.
    Pass,
    /// Missing but optional, or not verifiable.
    Warn,
    /// Missing and required.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Group: `kernel`, `cgroups`, `network`, `programs`.
    pub section: &'static str,
    /// What was checked.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// Evidence or hint.
    pub detail: String,
    /// The Debian package that provides it, when it is a missing program.
    pub package: Option<&'static str>,
}

/// The whole report.
#[derive(Debug, Default)]
pub struct Report {
    /// Lines printed above the table (kernel, cgroup version, config source).
    pub header: Vec<String>,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Number of checks with the status.
    pub fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// Debian packages that would fix the failed or warned program checks.
    pub fn missing_packages(&self) -> Vec<&'static str> {
        let set: BTreeSet<&'static str> = self
            .checks
            .iter()
            .filter(|c| c.status != Status::Pass)
            .filter_map(|c| c.package)
            .collect();
        set.into_iter().collect()
    }

    /// The report as text: header, a table per section, a summary and install hint.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for h in &self.header {
            let _ = writeln!(s, "{h}");
        }
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("CHECK".len());
        let mut section = "";
        for c in &self.checks {
            if c.section != section {
                section = c.section;
                let _ = writeln!(s, "\n{}:", section);
                let _ = writeln!(s, "  {:<6}  {:<width$}  DETAIL", "STATUS", "CHECK");
            }
            let _ = writeln!(
                s,
                "  {:<6}  {:<width$}  {}",
                c.status.label(),
                c.name,
                c.detail
            );
        }
        let _ = writeln!(
            s,
            "\nSummary: {} pass, {} warn, {} fail",
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        let pkgs = self.missing_packages();
        if !pkgs.is_empty() {
            let _ = writeln!(
                s,
                "To install the missing programs: apt-get install -y {}",
                pkgs.join(" ")
            );
        }
        if self.count(Status::Fail) > 0 {
            let _ = writeln!(s, "Required features are missing: the node agent will not work (use `rk3s server --disable-agent` for the control plane only).");
        }
        s
    }
}

/// Runs `rk3s check-config`: prints the report; Err when something required fails.
pub fn run(args: CheckConfigArgs) -> anyhow::Result<()> {
    let report = collect(&Host::probe(args.kernel_config.as_deref()));
    print!("{}", report.render());
    let failed = report.count(Status::Fail);
    if failed > 0 {
        anyhow::bail!("{failed} required check(s) failed");
    }
    Ok(())
}

// ---- the host, as the checks see it ----

/// What the checks read from the machine (so the checks themselves are pure).
#[derive(Debug, Default)]
pub struct Host {
    /// `uname -r`.
    pub kernel_release: String,
    /// Kernel config (`CONFIG_X` -> `y`/`m`/value) and where it came from.
    pub kernel_config: Option<(String, HashMap<String, String>)>,
    /// Paths that exist (probed from [`PROBED_PATHS`] and the namespaces).
    pub existing: BTreeSet<String>,
    /// `/proc/filesystems`.
    pub filesystems: String,
    /// `/proc/cgroups`.
    pub proc_cgroups: String,
    /// `/proc/self/mountinfo`.
    pub mountinfo: String,
    /// `/sys/fs/cgroup/cgroup.controllers` (None on cgroup v1).
    pub cgroup2_controllers: Option<String>,
    /// sysctl values by dotted name (only those probed).
    pub sysctls: HashMap<String, String>,
    /// Programs found: name -> (path, first line of `--version`).
    pub programs: HashMap<String, (PathBuf, String)>,
    /// The static busybox found, if any.
    pub static_busybox: Option<PathBuf>,
    /// Effective uid.
    pub euid: Option<u32>,
    /// True when `/proc/self/status` has a `Seccomp:` line (the kernel has seccomp).
    pub seccomp: bool,
    /// True on a hybrid cgroup host whose unified hierarchy holds controllers.
    pub hybrid_with_controllers: bool,
}

/// Paths whose existence some check looks at.
const PROBED_PATHS: &[&str] = &[
    "/sys/module/bridge",
    "/proc/sys/net/bridge",
    "/sys/module/veth",
    "/sys/module/vxlan",
    "/sys/module/overlay",
    "/sys/module/nf_tables",
    "/sys/module/nf_nat",
    "/sys/module/nf_conntrack",
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/proc/net/ip_tables_names",
    "/sys/module/xt_comment",
    "/sys/module/xt_mark",
    "/sys/module/xt_addrtype",
    "/sys/module/xt_multiport",
    "/sys/module/xt_MASQUERADE",
    "/sys/module/nft_masq",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/portmap",
    "/usr/lib/cni/loopback",
    "/sys/fs/cgroup/unified/cgroup.controllers",
];
const NAMESPACES: &[&str] = &["mnt", "uts", "ipc", "pid", "net", "user", "cgroup"];
const SYSCTLS: &[&str] = &["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"];
/// Programs: (name, Debian package, required).
const PROGRAMS: &[(&str, &str, bool)] = &[
    ("containerd", "containerd", true),
    ("containerd-shim-runc-v2", "containerd", true),
    ("runc", "runc", true),
    ("crun", "crun", false),
    ("iptables", "iptables", true),
    ("iptables-save", "iptables", true),
    ("iptables-restore", "iptables", true),
    ("nft", "nftables", true),
    ("conntrack", "conntrack", false),
    ("ip", "iproute2", true),
];
/// Programs whose `--version` is shown.
const VERSIONED: &[&str] = &["containerd", "runc", "crun", "iptables", "nft", "conntrack"];

impl Host {
    /// Reads everything the checks need from this machine.
    pub fn probe(config_override: Option<&Path>) -> Host {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let kernel_release = read("/proc/sys/kernel/osrelease").trim().to_string();
        let mut existing: BTreeSet<String> = PROBED_PATHS
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| p.to_string())
            .collect();
        for ns in NAMESPACES {
            let p = format!("/proc/self/ns/{ns}");
            if Path::new(&p).exists() {
                existing.insert(p);
            }
        }
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|k| {
                std::fs::read_to_string(format!("/proc/sys/{}", k.replace('.', "/")))
                    .ok()
                    .map(|v| (k.to_string(), v.trim().to_string()))
            })
            .collect();
        let mut programs = HashMap::new();
        for (name, _, _) in PROGRAMS {
            if let Some(path) = find_program(name) {
                let version = if VERSIONED.contains(name) {
                    version_line(&path)
                } else {
                    String::new()
                };
                programs.insert(name.to_string(), (path, version));
            }
        }
        let status = read("/proc/self/status");
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        Host {
            kernel_config: load_kernel_config(config_override, &kernel_release),
            kernel_release,
            existing,
            filesystems: read("/proc/filesystems"),
            proc_cgroups: read("/proc/cgroups"),
            mountinfo: read("/proc/self/mountinfo"),
            cgroup2_controllers: std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok(),
            sysctls,
            programs,
            static_busybox: rk3s_kubelet::image::find_static_busybox().ok(),
            euid,
            seccomp: status.lines().any(|l| l.starts_with("Seccomp:")),
            hybrid_with_controllers: rk3s_kubelet::containerd::cgroup_hybrid_with_controllers(),
        }
    }

    fn has(&self, path: &str) -> bool {
        self.existing.contains(path)
    }
}

/// The first `name` on PATH or in the usual sbin/bin dirs (root's PATH may lack sbin).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    let found = path
        .split(':')
        .chain(extra)
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p));
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// First line of `<program> --version` (empty when it fails).
fn version_line(path: &Path) -> String {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    out.ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_default()
}

/// The kernel config: the given file, else /proc/config.gz, else /boot/config-<release>.
fn load_kernel_config(
    given: Option<&Path>,
    release: &str,
) -> Option<(String, HashMap<String, String>)> {
    let boot = format!("/boot/config-{release}");
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_path_buf()],
        None => vec![PathBuf::from("/proc/config.gz"), PathBuf::from(boot)],
    };
    for p in candidates {
        let text = if p.extension().is_some_and(|e| e == "gz") {
            gunzip(&p)
        } else {
            std::fs::read_to_string(&p).ok()
        };
        if let Some(t) = text {
            return Some((p.display().to_string(), parse_kernel_config(&t)));
        }
    }
    None
}

/// Decompresses a gzip file with the `gzip` program (no inflate crate in the binary).
fn gunzip(p: &Path) -> Option<String> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .arg(p)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    child.wait().ok().filter(|s| s.success())?;
    Some(out)
}

/// Parses a kernel `.config`: `CONFIG_X=y|m|"value"` lines (`# CONFIG_X is not set` and
/// other comments are skipped, so a missing key means "not set").
pub fn parse_kernel_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

// ---- the checks ----

/// A kernel feature: config options (any of them suffices) and runtime evidence.
struct Feature<'a> {
    section: &'static str,
    name: &'a str,
    options: &'a [&'a str],
    /// True when the running kernel shows it (module loaded, file present...).
    present: bool,
    /// What shows it at run time.
    evidence: &'a str,
    required: bool,
    /// False for modules the kernel does not load on demand (br_netfilter).
    autoloads: bool,
}

/// A kernel feature of the `kernel` section that the kernel loads on demand.
fn k<'a>(
    name: &'a str,
    options: &'a [&'a str],
    present: bool,
    evidence: &'a str,
    required: bool,
) -> Feature<'a> {
    Feature {
        section: "kernel",
        name,
        options,
        present,
        evidence,
        required,
        autoloads: true,
    }
}

fn feature(host: &Host, f: Feature<'_>) -> Check {
    let missing = if f.required {
        Status::Fail
    } else {
        Status::Warn
    };
    let config = host.kernel_config.as_ref().map(|(_, c)| c);
    let value = |o: &str| {
        config
            .and_then(|c| c.get(&format!("CONFIG_{o}")))
            .map(String::as_str)
    };
    let best = f
        .options
        .iter()
        .find_map(|o| value(o).filter(|v| *v == "y").map(|v| (o, v)))
        .or_else(|| f.options.iter().find_map(|o| value(o).map(|v| (o, v))));
    let (status, detail) = match (f.present, best, config.is_some()) {
        (true, Some((o, v)), _) => (Status::Pass, format!("{} (CONFIG_{o}={v})", f.evidence)),
        (true, None, _) => (Status::Pass, f.evidence.to_string()),
        (false, Some((o, "y")), _) => (Status::Pass, format!("CONFIG_{o}=y")),
        (false, Some((o, "m")), _) if f.autoloads => (
            Status::Pass,
            format!("CONFIG_{o}=m (module, loaded on demand)"),
        ),
        (false, Some((o, v)), _) => {
            let module = f.name.split_whitespace().next().unwrap_or(f.name);
            (
                Status::Warn,
                format!("CONFIG_{o}={v}, module not loaded: modprobe {module}"),
            )
        }
        (false, None, true) => (
            missing,
            format!(
                "not in the kernel: CONFIG_{} is not set",
                f.options.join(" / CONFIG_")
            ),
        ),
        (false, None, false) => (
            Status::Warn,
            format!(
                "not detected ({} absent) and no kernel config to check",
                f.evidence
            ),
        ),
    };
    Check {
        section: f.section,
        name: f.name.to_string(),
        status,
        detail,
        package: None,
    }
}

/// Cgroup layout of the host.
#[derive(Debug, PartialEq)]
enum CgroupMode {
    V1,
    Hybrid,
    V2,
}

fn cgroup_mode(host: &Host) -> CgroupMode {
    if host.cgroup2_controllers.is_some() {
        CgroupMode::V2
    } else if host.has("/sys/fs/cgroup/unified/cgroup.controllers") {
        CgroupMode::Hybrid
    } else {
        CgroupMode::V1
    }
}

/// Controllers mounted as cgroup v1 hierarchies (from mountinfo super options).
fn v1_mounted_controllers(mountinfo: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in mountinfo.lines() {
        let Some((_, post)) = l.split_once(" - ") else {
            continue;
        };
        let mut f = post.split_whitespace();
        if f.next() != Some("cgroup") {
            continue;
        }
        let opts = f.nth(1).unwrap_or_default();
        out.extend(opts.split(',').map(String::from));
    }
    out
}

/// Controllers the kernel has enabled (`/proc/cgroups`, 4th column).
fn enabled_controllers(proc_cgroups: &str) -> BTreeSet<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0].to_string())
        })
        .collect()
}

fn cgroup_check(host: &Host, controller: &str, required: bool, option: &str) -> Check {
    let missing = if required { Status::Fail } else { Status::Warn };
    let name = format!("{controller} controller");
    let (status, detail) = match (&host.cgroup2_controllers, cgroup_mode(host)) {
        (Some(list), _) => {
            if list.split_whitespace().any(|c| c == controller) {
                (Status::Pass, "cgroup v2: in cgroup.controllers".to_string())
            } else {
                (
                    missing,
                    format!(
                        "cgroup v2: not in /sys/fs/cgroup/cgroup.controllers (CONFIG_{option})"
                    ),
                )
            }
        }
        (None, _) => {
            let enabled = enabled_controllers(&host.proc_cgroups).contains(controller);
            let mounted = v1_mounted_controllers(&host.mountinfo).contains(controller);
            match (enabled, mounted) {
                (true, true) => (Status::Pass, "cgroup v1: enabled and mounted".to_string()),
                (true, false) => (missing, "cgroup v1: enabled but no hierarchy mounted under /sys/fs/cgroup".to_string()),
                (false, _) => (missing, format!("cgroup v1: not enabled in /proc/cgroups (CONFIG_{option}, or disabled by cgroup_disable=)")),
            }
        }
    };
    Check {
        section: "cgroups",
        name,
        status,
        detail,
        package: None,
    }
}

fn sysctl_check(host: &Host, key: &str, why: &str) -> Check {
    let (status, detail) = match host.sysctls.get(key).map(String::as_str) {
        Some("1") => (Status::Pass, "1".to_string()),
        Some(v) => (Status::Warn, format!("{v}: {why}; sysctl -w {key}=1")),
        None => (Status::Warn, format!("absent: {why}")),
    };
    Check {
        section: "network",
        name: key.to_string(),
        status,
        detail,
        package: None,
    }
}

fn program_check(host: &Host, name: &str, package: &'static str, required: bool) -> Check {
    let (status, detail) = match host.programs.get(name) {
        Some((path, version)) if version.is_empty() => (Status::Pass, path.display().to_string()),
        Some((path, version)) => (Status::Pass, format!("{} ({version})", path.display())),
        None => (
            if required { Status::Fail } else { Status::Warn },
            format!("not found; apt-get install {package}"),
        ),
    };
    let name = if required {
        name.to_string()
    } else {
        format!("{name} (optional)")
    };
    Check {
        section: "programs",
        name,
        status,
        detail,
        package: (status != Status::Pass).then_some(package),
    }
}

/// Every check, from what `host` shows.
pub fn collect(host: &Host) -> Report {
    let mut r = Report::default();
    let mode = cgroup_mode(host);
    r.header.push(format!(
        "rk3s check-config: kernel {}",
        if host.kernel_release.is_empty() {
            "?"
        } else {
            &host.kernel_release
        }
    ));
    r.header.push(match &host.kernel_config {
        Some((src, _)) => format!("kernel config: {src}"),
        None => "kernel config: not found (/proc/config.gz, /boot/config-<release>); checking the running kernel only".to_string(),
    });
    r.header.push(format!(
        "cgroups: {}",
        match mode {
            CgroupMode::V2 => "v2 (unified)",
            CgroupMode::Hybrid => "v1 + v2 (hybrid)",
            CgroupMode::V1 => "v1",
        }
    ));
    if host.euid != Some(0) {
        r.header
            .push("note: not running as root; the node agent needs root".to_string());
    }

    // Namespaces.
    for (ns, opt, required) in [
        ("mnt", "NAMESPACES", true),
        ("uts", "UTS_NS", true),
        ("ipc", "IPC_NS", true),
        ("pid", "PID_NS", true),
        ("net", "NET_NS", true),
        ("user", "USER_NS", false),
        ("cgroup", "CGROUP_NS", false),
    ] {
        let path = format!("/proc/self/ns/{ns}");
        let name = format!("{ns} namespace");
        r.checks.push(feature(
            host,
            k(&name, &[opt], host.has(&path), &path, required),
        ));
    }
    r.checks.push(feature(
        host,
        k(
            "seccomp",
            &["SECCOMP"],
            host.seccomp,
            "Seccomp: in /proc/self/status",
            false,
        ),
    ));
    // Filesystems and network devices.
    let overlay = host
        .filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    r.checks.push(feature(
        host,
        k(
            "overlay filesystem",
            &["OVERLAY_FS"],
            overlay,
            "in /proc/filesystems",
            true,
        ),
    ));
    r.checks.push(feature(
        host,
        k(
            "bridge",
            &["BRIDGE"],
            host.has("/sys/module/bridge"),
            "/sys/module/bridge",
            true,
        ),
    ));
    r.checks.push(feature(
        host,
        Feature {
            autoloads: false,
            ..k(
                "br_netfilter",
                &["BRIDGE_NETFILTER"],
                host.has("/proc/sys/net/bridge"),
                "/proc/sys/net/bridge",
                true,
            )
        },
    ));
    r.checks.push(feature(
        host,
        k(
            "veth",
            &["VETH"],
            host.has("/sys/module/veth"),
            "/sys/module/veth",
            true,
        ),
    ));
    r.checks.push(feature(
        host,
        k(
            "vxlan (multi-node)",
            &["VXLAN"],
            host.has("/sys/module/vxlan"),
            "/sys/module/vxlan",
            false,
        ),
    ));
    // Netfilter.
    let xtables = host.has("/proc/net/ip_tables_names");
    let nft = host.has("/sys/module/nf_tables");
    r.checks.push(feature(
        host,
        k(
            "nf_tables",
            &["NF_TABLES"],
            nft,
            "/sys/module/nf_tables",
            true,
        ),
    ));
    r.checks.push(feature(
        host,
        k(
            "iptables (xtables or nft_compat)",
            &["IP_NF_IPTABLES", "NFT_COMPAT"],
            xtables || nft,
            "ip_tables or nf_tables loaded",
            true,
        ),
    ));
    r.checks.push(feature(
        host,
        k(
            "conntrack",
            &["NF_CONNTRACK"],
            host.has("/proc/sys/net/netfilter/nf_conntrack_max"),
            "/proc/sys/net/netfilter",
            true,
        ),
    ));
    r.checks.push(feature(
        host,
        k(
            "NAT",
            &["NF_NAT"],
            host.has("/sys/module/nf_nat"),
            "/sys/module/nf_nat",
            true,
        ),
    ));
    let masq = host.has("/sys/module/xt_MASQUERADE") || host.has("/sys/module/nft_masq");
    r.checks.push(feature(
        host,
        k(
            "masquerade",
            &[
                "NETFILTER_XT_TARGET_MASQUERADE",
                "IP_NF_TARGET_MASQUERADE",
                "NFT_MASQ",
            ],
            masq,
            "masquerade module loaded",
            true,
        ),
    ));
    for (m, opt) in [
        ("comment", "NETFILTER_XT_MATCH_COMMENT"),
        ("mark", "NETFILTER_XT_MARK"),
        ("addrtype", "NETFILTER_XT_MATCH_ADDRTYPE"),
        ("multiport", "NETFILTER_XT_MATCH_MULTIPORT"),
    ] {
        let module = format!("/sys/module/xt_{m}");
        let name = format!("xt_{m} (CNI rules)");
        r.checks.push(feature(
            host,
            k(&name, &[opt], host.has(&module), &module, true),
        ));
    }
    // cgroups.
    let v1 = mode != CgroupMode::V2;
    for (c, required, opt) in [
        ("cpu", true, "CGROUP_SCHED"),
        ("cpuacct", v1, "CGROUP_CPUACCT"),
        ("memory", true, "MEMCG"),
        ("pids", true, "CGROUP_PIDS"),
        ("cpuset", true, "CPUSETS"),
        ("devices", v1, "CGROUP_DEVICE"),
        ("freezer", false, "CGROUP_FREEZER"),
        ("hugetlb", false, "CGROUP_HUGETLB"),
    ] {
        if !v1 && matches!(c, "cpuacct" | "devices" | "freezer") {
            continue; // built into cgroup v2
        }
        r.checks.push(cgroup_check(host, c, required, opt));
    }
    if mode == CgroupMode::Hybrid && host.hybrid_with_controllers {
        r.checks.push(Check {
            section: "cgroups",
            name: "layout for crun".into(),
            status: Status::Warn,
            detail: "hybrid v1 + v2 with controllers on the unified hierarchy: crun (RuntimeClass crun) refuses to run here; runc works".into(),
            package: None,
        });
    }
    // Network sysctls.
    r.checks.push(sysctl_check(host, "net.ipv4.ip_forward", "pods cannot reach other hosts until it is 1 (the CNI bridge plugin sets it when the first pod starts)"));
    if host
        .sysctls
        .contains_key("net.bridge.bridge-nf-call-iptables")
        || host.has("/proc/sys/net/bridge")
    {
        r.checks.push(sysctl_check(
            host,
            "net.bridge.bridge-nf-call-iptables",
            "Service traffic between pods on one bridge bypasses iptables",
        ));
    }
    // Programs and packages.
    for (name, pkg, required) in PROGRAMS {
        r.checks.push(program_check(host, name, pkg, *required));
    }
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        let path = format!("{}/{plugin}", rk3s_kubelet::containerd::DEBIAN_CNI_BIN_DIR);
        let ok = host.has(&path);
        r.checks.push(Check {
            section: "programs",
            name: format!("CNI plugin {plugin}"),
            status: if ok { Status::Pass } else { Status::Fail },
            detail: if ok {
                path
            } else {
                format!("{path} not found; apt-get install containernetworking-plugins")
            },
            package: (!ok).then_some("containernetworking-plugins"),
        });
    }
    r.checks.push(match &host.static_busybox {
        Some(p) => Check {
            section: "programs",
            name: "static busybox (pause image)".into(),
            status: Status::Pass,
            detail: p.display().to_string(),
            package: None,
        },
        None => Check {
            section: "programs",
            name: "static busybox (pause image)".into(),
            status: Status::Fail,
            detail: "not found; apt-get install busybox-static".into(),
            package: Some("busybox-static"),
        },
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with(config: Option<&str>) -> Host {
        Host {
            kernel_release: "6.1.0-test".into(),
            kernel_config: config.map(|t| ("/test/config".to_string(), parse_kernel_config(t))),
            ..Default::default()
        }
    }

    #[test]
    fn kernel_config_parses_values_and_skips_unset() {
        let c = parse_kernel_config("#\n# CONFIG_VXLAN is not set\nCONFIG_VETH=m\nCONFIG_NET_NS=y\nCONFIG_LOCALVERSION=\"-test\"\n");
        assert_eq!(c.get("CONFIG_VETH").map(String::as_str), Some("m"));
        assert_eq!(c.get("CONFIG_NET_NS").map(String::as_str), Some("y"));
        assert_eq!(
            c.get("CONFIG_LOCALVERSION").map(String::as_str),
            Some("-test")
        );
        assert!(!c.contains_key("CONFIG_VXLAN"));
    }

    #[test]
    fn features_from_runtime_evidence_and_config() {
        let h = host_with(Some(
            "CONFIG_VETH=m\nCONFIG_BRIDGE_NETFILTER=m\nCONFIG_OVERLAY_FS=y\n",
        ));
        let f = |name, opts, present, required, autoloads| {
            feature(
                &h,
                Feature {
                    section: "kernel",
                    name,
                    options: opts,
                    present,
                    evidence: "/sys/x",
                    required,
                    autoloads,
                },
            )
        };
        let c = f("veth", &["VETH"], false, true, true);
        assert_eq!(
            (c.status, c.detail.as_str()),
            (Status::Pass, "CONFIG_VETH=m (module, loaded on demand)")
        );
        let c = f("br_netfilter", &["BRIDGE_NETFILTER"], false, true, false);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("modprobe br_netfilter"), "{}", c.detail);
        let c = f("vxlan", &["VXLAN"], false, false, true);
        assert_eq!(
            (c.status, c.detail.as_str()),
            (Status::Warn, "not in the kernel: CONFIG_VXLAN is not set")
        );
        let c = f("bridge", &["BRIDGE"], false, true, true);
        assert_eq!(c.status, Status::Fail);
        let c = f("overlay", &["OVERLAY_FS"], true, true, true);
        assert_eq!(
            (c.status, c.detail.as_str()),
            (Status::Pass, "/sys/x (CONFIG_OVERLAY_FS=y)")
        );
        // Without a kernel config, absent evidence is only a warning.
        let h = host_with(None);
        let c = feature(
            &h,
            Feature {
                section: "kernel",
                name: "veth",
                options: &["VETH"],
                present: false,
                evidence: "/sys/module/veth",
                required: true,
                autoloads: true,
            },
        );
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("no kernel config"), "{}", c.detail);
    }

    #[test]
    fn cgroup_controllers_v1_and_v2() {
        let mut h = host_with(None);
        h.cgroup2_controllers = Some("cpuset cpu io memory pids\n".into());
        assert_eq!(
            cgroup_check(&h, "memory", true, "MEMCG").status,
            Status::Pass
        );
        assert_eq!(
            cgroup_check(&h, "hugetlb", false, "CGROUP_HUGETLB").status,
            Status::Warn
        );
        let mut h = host_with(None);
        h.proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nmemory\t4\t9\t1\npids\t0\t1\t0\nhugetlb\t0\t1\t1\n".into();
        h.mountinfo = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n31 25 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n".into();
        assert_eq!(cgroup_mode(&h), CgroupMode::V1);
        assert_eq!(
            cgroup_check(&h, "memory", true, "MEMCG").status,
            Status::Pass
        );
        assert_eq!(
            cgroup_check(&h, "pids", true, "CGROUP_PIDS").status,
            Status::Fail
        );
        let c = cgroup_check(&h, "hugetlb", false, "CGROUP_HUGETLB");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("no hierarchy mounted"), "{}", c.detail);
    }

    #[test]
    fn report_renders_a_table_with_summary_and_install_hint() {
        let mut h = host_with(Some("CONFIG_NET_NS=y\n"));
        h.programs.insert(
            "runc".into(),
            ("/usr/sbin/runc".into(), "runc version 1.1.5".into()),
        );
        h.existing.insert("/usr/lib/cni/bridge".into());
        let r = collect(&h);
        let text = r.render();
        assert!(
            text.starts_with(
                "rk3s check-config: kernel 6.1.0-test\nkernel config: /test/config\ncgroups: v1\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nkernel:\n  STATUS"), "{text}");
        assert!(text.contains("\nprograms:\n"), "{text}");
        let runc = text
            .lines()
            .find(|l| l.contains(" runc "))
            .unwrap_or_default();
        assert!(runc.starts_with("  pass    runc "), "{runc}");
        assert!(
            runc.ends_with("/usr/sbin/runc (runc version 1.1.5)"),
            "{runc}"
        );
        let ctd = text
            .lines()
            .find(|l| l.contains(" containerd "))
            .unwrap_or_default();
        assert!(
            ctd.starts_with("  FAIL    containerd ")
                && ctd.ends_with("not found; apt-get install containerd"),
            "{ctd}"
        );
        let crun = text
            .lines()
            .find(|l| l.contains("crun (optional)"))
            .unwrap_or_default();
        assert!(crun.starts_with("  warn  "), "{crun}");
        // The columns line up: DETAIL starts at the same offset on every row.
        let offsets: BTreeSet<usize> = text
            .lines()
            .filter(|l| l.starts_with("  pass  ") || l.starts_with("  FAIL  "))
            .filter_map(|l| l.find("  /").or_else(|| l.find("  not ")))
            .collect();
        assert!(!offsets.is_empty());
        assert!(text.contains(&format!(
            "Summary: {} pass, {} warn, {} fail",
            r.count(Status::Pass),
            r.count(Status::Warn),
            r.count(Status::Fail)
        )));
        assert!(r.count(Status::Fail) > 0);
        let hint = text
            .lines()
            .find(|l| l.starts_with("To install"))
            .unwrap_or_default();
        assert!(
            hint.contains("apt-get install -y")
                && hint.contains("containerd")
                && hint.contains("containernetworking-plugins")
                && hint.contains("busybox-static")
                && hint.contains(" crun"),
            "{hint}"
        );
        assert!(!hint.contains("runc "), "runc is present: {hint}");
        assert_eq!(
            r.missing_packages()
                .iter()
                .filter(|p| **p == "containerd")
                .count(),
            1,
            "packages listed once"
        );
    }

    #[test]
    fn all_present_means_no_failures() {
        let mut h = host_with(None);
        for p in PROBED_PATHS {
            h.existing.insert(p.to_string());
        }
        for ns in NAMESPACES {
            h.existing.insert(format!("/proc/self/ns/{ns}"));
        }
        h.existing
            .remove("/sys/fs/cgroup/unified/cgroup.controllers");
        h.filesystems = "nodev\toverlay\n".into();
        h.cgroup2_controllers = Some("cpuset cpu io memory hugetlb pids".into());
        h.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        h.sysctls
            .insert("net.bridge.bridge-nf-call-iptables".into(), "1".into());
        for (name, _, _) in PROGRAMS {
            h.programs.insert(
                name.to_string(),
                (PathBuf::from(format!("/usr/bin/{name}")), String::new()),
            );
        }
        h.static_busybox = Some("/bin/busybox".into());
        h.euid = Some(0);
        h.seccomp = true;
        let r = collect(&h);
        let not_pass: Vec<&Check> = r
            .checks
            .iter()
            .filter(|c| c.status != Status::Pass)
            .collect();
        assert!(not_pass.is_empty(), "{not_pass:#?}");
        assert!(r.missing_packages().is_empty());
        assert!(!r.render().contains("To install"));
    }
}
