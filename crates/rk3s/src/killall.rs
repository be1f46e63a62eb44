//! `rk3s killall`: stops everything the node agent runs and removes what it set up on
//! the host, like k3s's `k3s-killall.sh`, but only what belongs to this rk3s (one data
//! dir and one containerd state dir): other containerd instances, docker, and
//! iptables rules, links and nftables tables that are not rk3s's stay as they are.
//!
//! In order:
//! 1. `rk3s server` / `rk3s agent` processes using this data dir or state dir: SIGTERM,
//!    SIGKILL after 10 s (so nothing restarts pods behind our back), and the embedded
//!    etcd of `--cluster-init` if one outlived its server;
//! 2. every pod sandbox through CRI, while rk3s's containerd answers (this runs CNI DEL,
//!    which removes the pod's veth, IP lease and iptables rules cleanly);
//! 3. rk3s's containerd (pid file / `--config` of the data dir), then every shim started
//!    by it (`-address <state>/containerd.sock`) with all its descendants, and any
//!    process left in rk3s's pod cgroups;
//! 4. mounts under the data dir and the state dir, and the sandbox network namespaces
//!    (`/run/netns/cni-*`) rk3s's containerd made;
//! 5. network: veths attached to the `cni0` bridge and the bridge itself (when the data
//!    dir's conflist names it), the CNI plugins' iptables chains and rules of the `rk3s`
//!    network (`CNI-<hash>` masquerade chains, `CNI-DN-*` hostPort chains, their jumps,
//!    and the shared `CNI-HOSTPORT-*` chains once no other network uses them), nftables
//!    tables named `rk3s*`, and iptables-nft tables left empty by the above;
//! 6. the pod cgroups (`kubepods/.../pod<uid>`) of rk3s's pods, and `kubepods` itself
//!    when empty; host-local IP leases under the data dir; libcni's cache entries of
//!    the `rk3s` network; containerd's state dir (`/run/rk3s/containerd` for the default
//!    data dir, `/run/rk3s/<hash>/containerd` for another: see
//!    [`rk3s_kubelet::containerd::default_state_dir`]) and `/run/rk3s` once empty.
//!    Another data dir's node on the same machine is left alone.
//!
//! Every action is printed; running it again finds nothing to do and exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rk3s_kubelet::containerd::{default_state_dir, ContainerdConfig, RUN_DIR};

/// Default data dir (as `rk3s server --data-dir`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rk3s";
/// The CNI network name rk3s writes in its conflist.
const NETWORK: &str = rk3s_kubelet::cni::NETWORK_NAME;
/// Chains the portmap plugin shares between all CNI networks on the host.
const SHARED_HOSTPORT_CHAINS: [&str; 4] = [
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-SETMARK",
    "CNI-HOSTPORT-MASQ",
    "CNI-HOSTPORT-SNAT",
];
/// Where libcni caches results (containerd's CRI plugin uses the default).
const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

/// Flags of `rk3s killall`.
#[derive(Args, Debug, Clone)]
pub struct KillallArgs {
    /// Data dir of the rk3s whose pods, containerd and network to remove (as given to `rk3s server --data-dir`)
    #[arg(long, short = 'd', value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// State dir of rk3s's containerd (as given to `rk3s server --containerd-state-dir`;
    /// default: derived from the data dir as `rk3s server` does)
    #[arg(long, value_name = "DIR")]
    pub containerd_state_dir: Option<PathBuf>,
}

/// Runs `rk3s killall`.
pub fn run(args: KillallArgs) -> anyhow::Result<()> {
    if euid() != Some(0) {
        bail!("must be run as root");
    }
    let data_dir = absolute(&args.data_dir)?;
    let state_dir = match &args.containerd_state_dir {
        Some(d) => absolute(d)?,
        None => default_state_dir(&data_dir),
    };
    if data_dir.components().count() < 2 || state_dir.components().count() < 2 {
        bail!("refusing to clean up the root directory");
    }
    let mut k = Killall::new(data_dir, state_dir);
    k.stop_node_processes();
    k.remove_sandboxes_via_cri();
    let procs = processes();
    let shims = k.shim_trees(&procs);
    k.note_shim_state(&shims);
    k.stop_containerd(&procs);
    k.kill_shims(&shims);
    k.kill_pod_cgroup_processes();
    k.unmount();
    k.remove_netns();
    k.delete_links();
    k.clean_iptables();
    k.clean_nftables();
    k.remove_cgroups();
    k.remove_files();
    if k.failures > 0 {
        bail!("{} step(s) failed (see above)", k.failures);
    }
    if k.actions == 0 {
        println!(
            "nothing to do: no rk3s process, container, mount, interface or rule found for {}",
            k.data_dir.display()
        );
    } else {
        println!("done: {} action(s)", k.actions);
    }
    Ok(())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().context("current dir")?.join(p))
}

/// The effective user id of this process, from /proc.
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// State of one killall run: what it found and did.
struct Killall {
    data_dir: PathBuf,
    state_dir: PathBuf,
    containerd: ContainerdConfig,
    /// UIDs of rk3s's pods (from CRI, pod logs, and the shims' cgroups).
    pod_uids: BTreeSet<String>,
    /// Network namespaces (`net:[inode]`) of processes in rk3s's shims.
    netns_ids: BTreeSet<String>,
    /// Socket files of rk3s's shims (containerd 1.6 keeps them under /run/containerd/s).
    shim_sockets: BTreeSet<PathBuf>,
    /// Sandbox / container ids of rk3s's containerd (CRI list, shims' `-id`).
    container_ids: BTreeSet<String>,
    /// True when CRI or the kill path removed containers (so libcni/IPAM state is stale).
    actions: usize,
    failures: usize,
}

impl Killall {
    fn new(data_dir: PathBuf, state_dir: PathBuf) -> Self {
        let containerd = ContainerdConfig::new(&data_dir).with_state_dir(&state_dir);
        let mut pod_uids = BTreeSet::new();
        // Pods' log dirs (`<ns>_<name>_<uid>`) and volume dirs (`agent/pods/<uid>`).
        for e in std::fs::read_dir(rk3s_kubelet::pods::log_root(&data_dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(uid) = pod_uid_from_log_dir(&e.file_name().to_string_lossy()) {
                pod_uids.insert(uid);
            }
        }
        for e in std::fs::read_dir(data_dir.join("agent/pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            pod_uids.insert(e.file_name().to_string_lossy().into_owned());
        }
        // host-local leases: a file per IP holding the sandbox id.
        let mut container_ids = BTreeSet::new();
        for e in std::fs::read_dir(data_dir.join("agent/cni/networks").join(NETWORK))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
            {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if let Some(id) = text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
                    container_ids.insert(id.to_string());
                }
            }
        }
        Killall {
            data_dir,
            state_dir,
            containerd,
            pod_uids,
            netns_ids: BTreeSet::new(),
            shim_sockets: BTreeSet::new(),
            container_ids,
            actions: 0,
            failures: 0,
        }
    }

    fn did(&mut self, what: impl std::fmt::Display) {
        println!("{what}");
        self.actions += 1;
    }

    fn failed(&mut self, what: impl std::fmt::Display) {
        eprintln!("error: {what}");
        self.failures += 1;
    }

    /// Step 1: `rk3s server`/`agent` processes of this data dir or state dir.
    fn stop_node_processes(&mut self) {
        let me = std::process::id() as i32;
        let targets: Vec<Proc> = processes()
            .into_iter()
            .filter(|p| p.pid != me)
            .filter(|p| {
                let Some(dirs) = node_process_dirs(&p.args) else {
                    return false;
                };
                let cwd = std::fs::read_link(format!("/proc/{}/cwd", p.pid))
                    .unwrap_or_else(|_| PathBuf::from("/"));
                let data = cwd.join(&dirs.data_dir);
                let state = match &dirs.state_dir {
                    Some(s) => cwd.join(s),
                    None => default_state_dir(&data),
                };
                same_path(&data, &self.data_dir)
                    || (dirs.agent && same_path(&state, &self.state_dir))
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        for p in &targets {
            self.did(format!(
                "stopping {} (pid {})",
                p.args
                    .iter()
                    .take(2)
                    .map(|a| basename(a))
                    .collect::<Vec<_>>()
                    .join(" "),
                p.pid
            ));
            signal(p.pid, "TERM");
        }
        let pids: Vec<i32> = targets.iter().map(|p| p.pid).collect();
        if !wait_gone(&pids, Duration::from_secs(10)) {
            for pid in pids.iter().filter(|p| alive(**p)) {
                self.did(format!("killing pid {pid} (did not stop within 10s)"));
                signal(*pid, "KILL");
            }
            wait_gone(&pids, Duration::from_secs(5));
        }
        self.stop_embedded_etcd();
    }

    /// The embedded etcd of `--cluster-init` (it dies with its rk3s; one left behind is
    /// found by its pid file `<data-dir>/server/db/etcd.pid`).
    fn stop_embedded_etcd(&mut self) {
        let pid_file = self.data_dir.join("server/db/etcd.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|p| *p > 1 && alive(*p))
        else {
            return;
        };
        let is_etcd =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "etcd");
        if !is_etcd {
            return;
        }
        self.did(format!("stopping the embedded etcd (pid {pid})"));
        signal(pid, "TERM");
        if !wait_gone(&[pid], Duration::from_secs(10)) {
            signal(pid, "KILL");
            wait_gone(&[pid], Duration::from_secs(5));
        }
    }

    /// Step 2: every sandbox through CRI, when containerd answers.
    fn remove_sandboxes_via_cri(&mut self) {
        let socket = self.containerd.socket.clone();
        if !socket.exists() {
            return;
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return self.failed(format!("tokio runtime: {e}")),
        };
        let result: Result<Vec<(String, String, String)>, String> = rt.block_on(async {
            let connect = tokio::time::timeout(
                Duration::from_secs(5),
                rk3s_kubelet::cri::CriClient::connect(&socket),
            )
            .await;
            let cri = match connect {
                Ok(Ok(c)) => c.with_timeout(Duration::from_secs(30)),
                _ => return Ok(Vec::new()),
            };
            let Ok(list) = cri.list_pod_sandboxes(None).await else {
                return Ok(Vec::new());
            };
            let mut done = Vec::new();
            for sb in list {
                let (ns, name, uid) = sb
                    .metadata
                    .as_ref()
                    .map(|m| (m.namespace.clone(), m.name.clone(), m.uid.clone()))
                    .unwrap_or_default();
                let label = format!("{ns}/{name}");
                if let Err(e) = cri.stop_pod_sandbox(&sb.id).await {
                    if !e.is_not_found() {
                        return Err(format!(
                            "stopping pod sandbox {label} ({}): {e}",
                            short_id(&sb.id)
                        ));
                    }
                }
                if let Err(e) = cri.remove_pod_sandbox(&sb.id).await {
                    if !e.is_not_found() {
                        return Err(format!(
                            "removing pod sandbox {label} ({}): {e}",
                            short_id(&sb.id)
                        ));
                    }
                }
                done.push((
                    format!(
                        "removed pod sandbox {label} ({}) through CRI",
                        short_id(&sb.id)
                    ),
                    uid,
                    sb.id.clone(),
                ));
            }
            Ok(done)
        });
        match result {
            Ok(done) => {
                for (msg, uid, id) in done {
                    self.container_ids.insert(id);
                    if !uid.is_empty() {
                        self.pod_uids.insert(uid);
                    }
                    self.did(msg);
                }
            }
            // Not fatal: the kill path below stops what is left.
            Err(e) => eprintln!("warning: {e}; killing the containers instead"),
        }
    }

    /// Shims of rk3s's containerd and all their descendants.
    fn shim_trees(&self, procs: &[Proc]) -> Vec<Proc> {
        let socket = self.containerd.socket.to_string_lossy().into_owned();
        let roots: BTreeSet<i32> = procs
            .iter()
            .filter(|p| is_our_shim(&p.args, &socket))
            .map(|p| p.pid)
            .collect();
        let tree = descendants(procs.iter().map(|p| (p.pid, p.ppid)), &roots);
        procs
            .iter()
            .filter(|p| tree.contains(&p.pid))
            .cloned()
            .collect()
    }

    /// Remembers the network namespaces, cgroups and socket files of the shims' trees
    /// (gone once they are killed).
    fn note_shim_state(&mut self, tree: &[Proc]) {
        let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        let mut inodes = BTreeSet::new();
        for p in tree {
            if let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/net", p.pid)) {
                self.netns_ids.insert(ns.to_string_lossy().into_owned());
            }
            let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
            self.pod_uids.extend(pod_uids_in_cgroup_file(&cg));
            if is_our_shim(&p.args, &self.containerd.socket.to_string_lossy()) {
                if let Some(id) = p
                    .args
                    .windows(2)
                    .find(|w| w[0] == "-id")
                    .map(|w| w[1].clone())
                {
                    self.container_ids.insert(id);
                }
                for fd in std::fs::read_dir(format!("/proc/{}/fd", p.pid))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(t) = std::fs::read_link(fd.path()) {
                        if let Some(i) = t
                            .to_string_lossy()
                            .strip_prefix("socket:[")
                            .and_then(|s| s.strip_suffix(']'))
                        {
                            inodes.insert(i.to_string());
                        }
                    }
                }
            }
        }
        // Host netns (shims themselves) must never be counted as a pod's.
        if let Ok(own) = std::fs::read_link("/proc/1/ns/net") {
            self.netns_ids.remove(&*own.to_string_lossy());
        }
        for path in unix_socket_paths(&unix, &inodes) {
            if path.starts_with("/run/containerd/s/") || path.starts_with(&self.state_dir) {
                self.shim_sockets.insert(path);
            }
        }
    }

    /// Step 3a: rk3s's containerd.
    fn stop_containerd(&mut self, procs: &[Proc]) {
        let config = self.containerd.config_path().to_string_lossy().into_owned();
        let mut pids: BTreeSet<i32> = procs
            .iter()
            .filter(|p| is_our_containerd(&p.args, &config))
            .map(|p| p.pid)
            .collect();
        if let Some(pid) = std::fs::read_to_string(self.containerd.pid_path())
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            if procs.iter().any(|p| {
                p.pid == pid && p.args.first().is_some_and(|a| basename(a) == "containerd")
            }) {
                pids.insert(pid);
            }
        }
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            self.did(format!(
                "stopping containerd (pid {pid}, {})",
                self.containerd.socket.display()
            ));
            signal(*pid, "TERM");
        }
        let pids: Vec<i32> = pids.into_iter().collect();
        if !wait_gone(&pids, Duration::from_secs(10)) {
            for pid in pids.iter().filter(|p| alive(**p)) {
                self.did(format!("killing containerd (pid {pid})"));
                signal(*pid, "KILL");
            }
            wait_gone(&pids, Duration::from_secs(5));
        }
    }

    /// Step 3b: the shims and everything under them.
    fn kill_shims(&mut self, tree: &[Proc]) {
        if tree.is_empty() {
            return;
        }
        let socket = self.containerd.socket.to_string_lossy().into_owned();
        let shims = tree
            .iter()
            .filter(|p| is_our_shim(&p.args, &socket))
            .count();
        self.did(format!(
            "killing {shims} containerd shim(s) and {} container process(es)",
            tree.len() - shims
        ));
        for p in tree {
            signal(p.pid, "KILL");
        }
        let pids: Vec<i32> = tree.iter().map(|p| p.pid).collect();
        if !wait_gone(&pids, Duration::from_secs(10)) {
            self.failed(format!(
                "processes still alive after SIGKILL: {:?}",
                pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
            ));
        }
    }

    /// Step 3c: processes left in rk3s's pod cgroups (e.g. re-parented to init).
    fn kill_pod_cgroup_processes(&mut self) {
        let mut pids = BTreeSet::new();
        for dir in self.pod_cgroup_dirs() {
            for e in walk_dirs(&dir) {
                let procs = std::fs::read_to_string(e.join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        if pids.is_empty() {
            return;
        }
        self.did(format!(
            "killing {} process(es) left in rk3s's pod cgroups",
            pids.len()
        ));
        let pids: Vec<i32> = pids.into_iter().collect();
        for pid in &pids {
            signal(*pid, "KILL");
        }
        wait_gone(&pids, Duration::from_secs(10));
    }

    /// Step 4a: mounts under the state dir and the data dir (not those dirs themselves:
    /// a data dir on its own disk stays mounted).
    fn unmount(&mut self) {
        for dir in [self.state_dir.clone(), self.data_dir.clone()] {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let n: usize = mounts_strictly_under(&info, &dir)
                .iter()
                .map(|p| rk3s_kubelet::containerd::unmount_under(Path::new(p)))
                .sum();
            if n > 0 {
                self.did(format!("unmounted {n} mount(s) under {}", dir.display()));
            }
        }
    }

    /// Step 4b: sandbox network namespaces made by rk3s's containerd.
    fn remove_netns(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let db = self
            .containerd
            .root_dir()
            .join("io.containerd.metadata.v1.bolt/meta.db");
        let known = std::fs::read(&db)
            .map(|b| netns_names_in(&b))
            .unwrap_or_default();
        for (path, ns) in netns_mounts(&info) {
            let name = basename(&path).to_string();
            if !(self.netns_ids.contains(&ns) || known.contains(&name)) {
                continue;
            }
            rk3s_kubelet::containerd::unmount_under(Path::new(&path));
            let _ = std::fs::remove_file(&path);
            self.did(format!("removed network namespace {path}"));
        }
        // Files of already unmounted namespaces of ours.
        for dir in ["/run/netns", "/var/run/netns"] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                let mounted = netns_mounts(&info)
                    .iter()
                    .any(|(p, _)| Path::new(p) == path);
                if known.contains(&name)
                    && !mounted
                    && path.exists()
                    && std::fs::remove_file(&path).is_ok()
                {
                    self.did(format!("removed {}", path.display()));
                }
            }
        }
    }

    /// The pid of a running containerd of another rk3s data dir (which shares the
    /// bridge, the network name and the nftables tables with us).
    fn other_agent(&self) -> Option<i32> {
        let ours = self.containerd.config_path();
        processes().into_iter().find_map(|p| {
            let cfg = p
                .args
                .windows(2)
                .find(|w| w[0] == "--config")
                .map(|w| PathBuf::from(&w[1]))?;
            (basename(p.args.first()?) == "containerd"
                && cfg.ends_with("agent/etc/containerd/config.toml")
                && !same_path(&cfg, &ours))
            .then_some(p.pid)
        })
    }

    /// The CNI bridge rk3s's conflist names (None when the data dir has no conflist).
    fn bridge(&self) -> Option<String> {
        let conf = self
            .data_dir
            .join("agent/etc/cni/net.d")
            .join(rk3s_kubelet::cni::CONFLIST_NAME);
        let text = std::fs::read_to_string(conf).ok()?;
        bridge_in_conflist(&text)
    }

    /// Step 5a: pod veths and the bridge.
    fn delete_links(&mut self) {
        let Some(bridge) = self.bridge() else { return };
        if let Some(pid) = self.other_agent() {
            if link_exists(&bridge) {
                println!("kept {bridge}: another rk3s node agent's containerd (pid {pid}) uses it");
            }
            return;
        }
        let out = run_output("ip", &["-o", "link", "show"]).unwrap_or_default();
        for link in our_links(&parse_links(&out), &bridge) {
            match run_status("ip", &["link", "delete", &link]) {
                Ok(()) => self.did(format!("deleted interface {link}")),
                Err(e) if !link_exists(&link) => {
                    eprintln!("note: {link} went away by itself ({e})")
                }
                Err(e) => self.failed(format!("deleting interface {link}: {e}")),
            }
        }
    }

    /// Step 5b: the CNI plugins' iptables chains and rules of the rk3s network.
    fn clean_iptables(&mut self) {
        let ours = self.bridge().is_some() && self.other_agent().is_none();
        for (family, save, restore) in [
            ("ip", "iptables-save", "iptables-restore"),
            ("ip6", "ip6tables-save", "ip6tables-restore"),
        ] {
            let Ok(text) = run_output(save, &[]) else {
                continue;
            };
            for plan in plan_iptables(&text, NETWORK, &self.container_ids, ours) {
                let script = plan.script();
                match run_with_stdin(restore, &["--noflush"], &script) {
                    Ok(()) => {
                        for d in &plan.described {
                            self.did(format!("{save}: {d} (table {})", plan.table));
                        }
                        if empty_nft_table(family, &plan.table)
                            && run_status("nft", &["delete", "table", family, &plan.table]).is_ok()
                        {
                            self.did(format!(
                                "deleted nftables table {family} {} (left empty by iptables-nft)",
                                plan.table
                            ));
                        }
                    }
                    Err(e) => {
                        self.failed(format!("{restore} (table {}): {e}\n{script}", plan.table))
                    }
                }
            }
        }
    }

    /// Step 5c: nftables tables rk3s created (named `rk3s*`) and the VXLAN device.
    fn clean_nftables(&mut self) {
        if self.other_agent().is_some() {
            return;
        }
        let Ok(out) = run_output("nft", &["list", "tables"]) else {
            return;
        };
        for (family, name) in rk3s_nft_tables(&out) {
            match run_status("nft", &["delete", "table", &family, &name]) {
                Ok(()) => self.did(format!("deleted nftables table {family} {name}")),
                Err(e) => self.failed(format!("nft delete table {family} {name}: {e}")),
            }
        }
        // The pod network's VXLAN device (its routes, neighbour and FDB entries go with it).
        if Path::new("/sys/class/net/flannel.1").exists() {
            match run_status("ip", &["link", "delete", "flannel.1"]) {
                Ok(()) => self.did("deleted the pod network's VXLAN device flannel.1".to_string()),
                Err(e) => self.failed(format!("ip link delete flannel.1: {e}")),
            }
        }
    }

    /// The cgroup directories of rk3s's pods, on every hierarchy.
    fn pod_cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for root in cgroup_roots() {
            let kubepods = root.join("kubepods");
            for dir in walk_dirs(&kubepods) {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Some(uid) = pod_uid_of_cgroup(&name) {
                    if self.pod_uids.contains(&uid) {
                        out.push(dir);
                    }
                }
            }
        }
        out
    }

    /// Step 6a: pod cgroups, then empty `kubepods` levels.
    fn remove_cgroups(&mut self) {
        let mut removed = 0;
        for dir in self.pod_cgroup_dirs() {
            let mut dirs = walk_dirs(&dir);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                if std::fs::remove_dir(&d).is_ok() {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.did(format!("removed {removed} pod cgroup(s)"));
        }
        for root in cgroup_roots() {
            for level in ["kubepods/besteffort", "kubepods/burstable", "kubepods"] {
                let d = root.join(level);
                if d.is_dir() && std::fs::remove_dir(&d).is_ok() {
                    self.did(format!("removed cgroup {}", d.display()));
                }
            }
        }
    }

    /// Step 6b: IP leases, libcni cache, shim sockets, the state dir.
    fn remove_files(&mut self) {
        // host-local leases (files named by IP); every pod of the node is gone now.
        let ipam = self.data_dir.join("agent/cni/networks").join(NETWORK);
        let mut leases = 0;
        for e in std::fs::read_dir(&ipam).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() && std::fs::remove_file(e.path()).is_ok() {
                leases += 1;
            }
        }
        if leases > 0 {
            self.did(format!(
                "released {leases} pod IP lease(s) in {}",
                ipam.display()
            ));
        }
        // libcni's cached results of our sandboxes (`rk3s-<sandbox id>-<ifname>`).
        for e in std::fs::read_dir(CNI_CACHE_DIR)
            .into_iter()
            .flatten()
            .flatten()
        {
            let ours = cni_cache_container(&e.file_name().to_string_lossy(), NETWORK)
                .is_some_and(|id| self.container_ids.contains(id));
            if ours && std::fs::remove_file(e.path()).is_ok() {
                self.did(format!("removed {}", e.path().display()));
            }
        }
        let sockets: Vec<PathBuf> = self.shim_sockets.iter().cloned().collect();
        for s in sockets {
            if std::fs::remove_file(&s).is_ok() {
                self.did(format!("removed shim socket {}", s.display()));
            }
        }
        // Only this node's state dir: other data dirs' nodes keep theirs under /run/rk3s.
        let target = self.state_dir.clone();
        if target.exists() {
            rk3s_kubelet::containerd::unmount_under(&target);
            match std::fs::remove_dir_all(&target) {
                Ok(()) => self.did(format!("removed {}", target.display())),
                Err(e) => self.failed(format!("removing {}: {e}", target.display())),
            }
        }
        for dir in empty_parents_to_remove(&target) {
            // remove_dir fails on a non-empty dir: another node's state stays.
            if std::fs::remove_dir(&dir).is_ok() {
                self.did(format!("removed {}", dir.display()));
            }
        }
    }
}

/// The parents of a containerd state dir under `/run/rk3s` (innermost first, `/run/rk3s`
/// itself last) that killall removes when they are empty.
fn empty_parents_to_remove(state_dir: &Path) -> Vec<PathBuf> {
    let run = Path::new(RUN_DIR);
    if !state_dir.starts_with(run) {
        return Vec::new();
    }
    state_dir
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(run))
        .map(Path::to_path_buf)
        .collect()
}

/// The container id in a libcni cache file name `<network>-<id>-<ifname>`.
fn cni_cache_container<'a>(name: &'a str, network: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(network)?.strip_prefix('-')?;
    let (id, _ifname) = rest.rsplit_once('-')?;
    (!id.is_empty()).then_some(id)
}

// ---- processes ----

/// A process: pid, parent, command line.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    ppid: i32,
    args: Vec<String>,
}

/// Every process (zombies excluded).
fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((state, ppid)) = parse_stat(&stat) else {
            continue;
        };
        if state == 'Z' || state == 'X' {
            continue;
        }
        let args = parse_cmdline(&std::fs::read(e.path().join("cmdline")).unwrap_or_default());
        out.push(Proc { pid, ppid, args });
    }
    out
}

/// State and parent pid from `/proc/<pid>/stat` (the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `/proc/<pid>/cmdline`: NUL-separated arguments.
fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// The dirs an `rk3s server` / `rk3s agent` process uses.
#[derive(Debug, PartialEq)]
struct NodeDirs {
    data_dir: PathBuf,
    /// `--containerd-state-dir` when given (else derived from the data dir).
    state_dir: Option<PathBuf>,
    /// True when it runs the node agent (an agent, or a server without `--disable-agent`).
    agent: bool,
}

/// For the command line of an `rk3s server` or `rk3s agent` process, the data dir and
/// containerd state dir it uses (defaults when not given); None for anything else.
fn node_process_dirs(args: &[String]) -> Option<NodeDirs> {
    if basename(args.first()?) != "rk3s" {
        return None;
    }
    let sub = args.iter().skip(1).find(|a| !a.starts_with('-'))?;
    if sub != "server" && sub != "agent" {
        return None;
    }
    let mut dirs = NodeDirs {
        data_dir: DEFAULT_DATA_DIR.into(),
        state_dir: None,
        agent: true,
    };
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let mut value = |long: &str, short: Option<&str>| -> Option<String> {
            if let Some(v) = a.strip_prefix(&format!("{long}=")) {
                return Some(v.to_string());
            }
            if a == long || short.is_some_and(|s| a == s) {
                return it.next().cloned();
            }
            None
        };
        if let Some(v) = value("--data-dir", Some("-d")) {
            dirs.data_dir = v.into();
        } else if let Some(v) = value("--containerd-state-dir", None) {
            dirs.state_dir = Some(v.into());
        } else if a == "--disable-agent" || a == "--disable-agent=true" {
            dirs.agent = sub == "agent";
        }
    }
    Some(dirs)
}

/// True for the command line of a containerd started with `config` (`--config PATH`).
fn is_our_containerd(args: &[String], config: &str) -> bool {
    let Some(first) = args.first() else {
        return false;
    };
    if basename(first) != "containerd" {
        return false;
    }
    args.windows(2)
        .any(|w| (w[0] == "--config" || w[0] == "-c") && w[1] == config)
        || args
            .iter()
            .any(|a| a.strip_prefix("--config=") == Some(config))
}

/// True for a containerd shim serving the containerd at `socket` (`-address SOCKET`).
fn is_our_shim(args: &[String], socket: &str) -> bool {
    let Some(first) = args.first() else {
        return false;
    };
    basename(first).starts_with("containerd-shim")
        && args
            .windows(2)
            .any(|w| (w[0] == "-address" || w[0] == "--address") && w[1] == socket)
}

/// `roots` and all their descendants, from (pid, ppid) pairs.
fn descendants(pairs: impl Iterator<Item = (i32, i32)>, roots: &BTreeSet<i32>) -> BTreeSet<i32> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (pid, ppid) in pairs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = BTreeSet::new();
    let mut stack: Vec<i32> = roots.iter().copied().collect();
    while let Some(p) = stack.pop() {
        if out.insert(p) {
            stack.extend(children.get(&p).into_iter().flatten().copied());
        }
    }
    out
}

fn same_path(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}

fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Polls until none of `pids` is alive; false at the deadline.
fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pids.iter().any(|p| alive(*p)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(13)]
}

/// Paths of unix sockets (from `/proc/net/unix`) whose inode is in `inodes`.
fn unix_socket_paths(proc_net_unix: &str, inodes: &BTreeSet<String>) -> Vec<PathBuf> {
    proc_net_unix
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (inode, path) = (f.get(6)?, f.get(7)?);
            (inodes.contains(*inode) && path.starts_with('/')).then(|| PathBuf::from(path))
        })
        .collect()
}

// ---- pods, cgroups, netns ----

/// The pod UID from a pod log dir name `<namespace>_<name>_<uid>`.
fn pod_uid_from_log_dir(name: &str) -> Option<String> {
    let uid = name.rsplit('_').next()?;
    (name.matches('_').count() >= 2 && !uid.is_empty()).then(|| uid.to_string())
}

/// The pod UID of a cgroup dir named `pod<uid>` (cgroupfs driver: `pod<uid>`, systemd
/// driver: `kubepods-besteffort-pod<uid with _>.slice`).
fn pod_uid_of_cgroup(name: &str) -> Option<String> {
    if let Some(uid) = name.strip_prefix("pod") {
        return (!uid.is_empty()).then(|| uid.to_string());
    }
    let slice = name.strip_suffix(".slice")?;
    let uid = slice.rsplit_once("-pod")?.1;
    (!uid.is_empty()).then(|| uid.replace('_', "-"))
}

/// Pod UIDs named in a `/proc/<pid>/cgroup` file (paths under `kubepods`).
fn pod_uids_in_cgroup_file(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter(|p| p.contains("kubepods"))
        .flat_map(|p| {
            p.split('/')
                .filter_map(pod_uid_of_cgroup)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every cgroup hierarchy root: `/sys/fs/cgroup` on v2, each mounted v1 hierarchy (and
/// the hybrid `unified` one) otherwise.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if rk3s_kubelet::containerd::cgroup_v2() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// `dir` and every directory below it (not following symlinks).
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        out.push(d);
    }
    out
}

/// Mount points strictly below `dir` (mountinfo escapes ` `, tab, newline and `\` as
/// octal `\ooo`), outermost first (unmounting one detaches those below it).
fn mounts_strictly_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .filter(|p| Path::new(p).starts_with(dir) && Path::new(p) != dir)
        .collect();
    points.sort_by_key(|p| p.len());
    points.dedup();
    points
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// nsfs mounts under `/run/netns` (or `/var/run/netns`): (mount point, `net:[inode]`).
fn netns_mounts(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (root, point) = (f.get(3)?, f.get(4)?);
            let fstype = f
                .iter()
                .position(|x| *x == "-")
                .and_then(|i| f.get(i + 1))?;
            (*fstype == "nsfs"
                && (point.starts_with("/run/netns/") || point.starts_with("/var/run/netns/")))
            .then(|| (point.to_string(), root.to_string()))
        })
        .collect()
}

/// Names (`cni-<uuid>`) of network namespaces mentioned in containerd's metadata
/// database (the CRI plugin stores each sandbox's netns path there).
fn netns_names_in(bytes: &[u8]) -> BTreeSet<String> {
    let needle = b"/run/netns/cni-";
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            let start = i + needle.len() - 4; // "cni-"
            let end = bytes[i + needle.len()..]
                .iter()
                .position(|b| !(b.is_ascii_hexdigit() || *b == b'-'))
                .map_or(bytes.len(), |p| i + needle.len() + p);
            if end > i + needle.len() {
                out.insert(String::from_utf8_lossy(&bytes[start..end]).into_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

// ---- links ----

/// A network interface from `ip -o link show`.
#[derive(Debug, PartialEq)]
struct Link {
    name: String,
    master: Option<String>,
}

/// Parses `ip -o link show` (`5: vethab12@if3: <...> mtu 1500 ... master cni0 state UP ...`).
fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            let name = name.split('@').next()?.to_string();
            if name.is_empty() {
                return None;
            }
            let words: Vec<&str> = l.split_whitespace().collect();
            let master = words
                .windows(2)
                .find(|w| w[0] == "master")
                .map(|w| w[1].to_string());
            Some(Link { name, master })
        })
        .collect()
}

/// The links rk3s made: the pods' host-side veths on `bridge`, then the bridge.
fn our_links(links: &[Link], bridge: &str) -> Vec<String> {
    let mut out: Vec<String> = links
        .iter()
        .filter(|l| l.master.as_deref() == Some(bridge))
        .map(|l| l.name.clone())
        .collect();
    if links.iter().any(|l| l.name == bridge) {
        out.push(bridge.to_string());
    }
    out
}

/// The `bridge` of the conflist's bridge plugin.
fn bridge_in_conflist(text: &str) -> Option<String> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    v.get("plugins")?
        .as_sequence()?
        .iter()
        .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("bridge"))?
        .get("bridge")?
        .as_str()
        .map(String::from)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

// ---- iptables ----

/// One rule of `iptables-save` output.
#[derive(Debug)]
struct Rule {
    chain: String,
    /// The rule as saved (`-A CHAIN ...`).
    line: String,
    target: Option<String>,
    comment: Option<String>,
}

/// What to remove from one iptables table.
#[derive(Debug, Default, PartialEq)]
struct TablePlan {
    table: String,
    /// `-D ...` lines, then `-F`/`-X` of chains.
    lines: Vec<String>,
    /// Human-readable summary of each change.
    described: Vec<String>,
}

impl TablePlan {
    /// Input for `iptables-restore --noflush`.
    fn script(&self) -> String {
        format!("*{}\n{}\nCOMMIT\n", self.table, self.lines.join("\n"))
    }
}

/// True when a CNI rule comment names `network` and one of `ids` (bridge:
/// `name: "rk3s" id: "<sandbox id>"`, portmap: `dnat name: "rk3s" id: "<sandbox id>"`).
fn comment_names_ours(comment: &str, network: &str, ids: &BTreeSet<String>) -> bool {
    let Some(rest) = comment
        .split_once(&format!("name: \"{network}\" id: \""))
        .map(|(_, r)| r)
    else {
        return false;
    };
    rest.split('"').next().is_some_and(|id| ids.contains(id))
}

/// True when a comment names some CNI network (any name).
fn comment_names_any_network(comment: &str) -> bool {
    comment.contains("name: \"") && comment.contains("\" id: ")
}

/// Splits a saved rule into words (double quotes group, `\"` escapes a quote).
fn split_rule(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

fn parse_rule(line: &str) -> Option<Rule> {
    let words = split_rule(line);
    if words.first().map(String::as_str) != Some("-A") {
        return None;
    }
    let chain = words.get(1)?.clone();
    let after = |flag: &str| {
        words
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].clone())
    };
    let target = after("-j").or_else(|| after("-g"));
    Some(Rule {
        chain,
        line: line.to_string(),
        target,
        comment: after("--comment"),
    })
}

/// From `iptables-save` output, what to remove for the CNI network `network`: rules
/// whose comment names it and one of the sandboxes `ids` (another rk3s on the host
/// uses the same network name), the per-container chains they jump to (or live in), every
/// jump to those chains; and, when `shared_ok` (the host runs rk3s's conflist) and no
/// other network's rule is left in them, the portmap plugin's shared `CNI-HOSTPORT-*`
/// chains and the jumps to them. Tables with nothing to remove are left out.
fn plan_iptables(
    save: &str,
    network: &str,
    ids: &BTreeSet<String>,
    shared_ok: bool,
) -> Vec<TablePlan> {
    let mut tables: Vec<(String, Vec<String>, Vec<Rule>)> = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            tables.push((t.to_string(), Vec::new(), Vec::new()));
        } else if let Some(h) = line.strip_prefix(':') {
            if let (Some(t), Some(name)) = (tables.last_mut(), h.split_whitespace().next()) {
                t.1.push(name.to_string());
            }
        } else if let Some(r) = parse_rule(line) {
            if let Some(t) = tables.last_mut() {
                t.2.push(r);
            }
        }
    }
    let is_shared = |c: &str| SHARED_HOSTPORT_CHAINS.contains(&c);
    let mut plans = Vec::new();
    for (table, chains, rules) in tables {
        let ours = |r: &Rule| {
            r.comment
                .as_deref()
                .is_some_and(|c| comment_names_ours(c, network, ids))
        };
        // Per-container chains of our network: jumped to by, or holding, a rule of ours.
        let mut our_chains: BTreeSet<String> = BTreeSet::new();
        for r in rules.iter().filter(|r| ours(r)) {
            if let Some(t) = &r.target {
                if t.starts_with("CNI-") && !is_shared(t) && chains.contains(t) {
                    our_chains.insert(t.clone());
                }
            }
            if r.chain.starts_with("CNI-") && !is_shared(&r.chain) {
                our_chains.insert(r.chain.clone());
            }
        }
        let mut delete: Vec<&Rule> = rules
            .iter()
            .filter(|r| !our_chains.contains(&r.chain))
            .filter(|r| ours(r) || r.target.as_ref().is_some_and(|t| our_chains.contains(t)))
            .collect();
        // The shared hostPort chains, when nothing but ours was in them.
        let mut drop_chains: Vec<String> = our_chains.iter().cloned().collect();
        let present_shared: Vec<&str> = SHARED_HOSTPORT_CHAINS
            .iter()
            .copied()
            .filter(|c| chains.iter().any(|x| x == c))
            .collect();
        if shared_ok && !present_shared.is_empty() {
            let others_left = rules.iter().any(|r| {
                is_shared(&r.chain)
                    && !delete.iter().any(|d| std::ptr::eq(*d, r))
                    && (r.comment.as_deref().is_some_and(comment_names_any_network)
                        || r.target
                            .as_ref()
                            .is_some_and(|t| t.starts_with("CNI-DN-") && !our_chains.contains(t)))
            });
            if !others_left {
                for r in rules.iter().filter(|r| {
                    r.target.as_deref().is_some_and(is_shared)
                        && !is_shared(&r.chain)
                        && !our_chains.contains(&r.chain)
                }) {
                    if !delete.iter().any(|d| std::ptr::eq(*d, r)) {
                        delete.push(r);
                    }
                }
                drop_chains.extend(present_shared.iter().map(|c| c.to_string()));
            }
        }
        // Rules inside chains being flushed need no -D.
        delete.retain(|r| !drop_chains.contains(&r.chain));
        if delete.is_empty() && drop_chains.is_empty() {
            continue;
        }
        let mut plan = TablePlan {
            table: table.clone(),
            ..Default::default()
        };
        for r in &delete {
            plan.lines.push(r.line.replacen("-A ", "-D ", 1));
            plan.described.push(format!("deleted rule {}", r.line));
        }
        for c in &drop_chains {
            plan.lines.push(format!("-F {c}"));
        }
        for c in &drop_chains {
            plan.lines.push(format!("-X {c}"));
            plan.described.push(format!("deleted chain {c}"));
        }
        plans.push(plan);
    }
    plans
}

// ---- nftables ----

/// Tables named `rk3s*` in `nft list tables` output: (family, name).
fn rk3s_nft_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "table").then_some(())?;
            let (family, name) = (w.next()?, w.next()?);
            name.starts_with("rk3s")
                .then(|| (family.to_string(), name.to_string()))
        })
        .collect()
}

/// True when `nft list table` output shows only base chains with no rules and an
/// accept policy (what iptables-nft leaves behind after its last rule is deleted).
fn nft_table_is_empty(text: &str) -> bool {
    let mut saw_table = false;
    // Inside a chain: whether its base-chain line was seen.
    let mut chain: Option<bool> = None;
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if l.starts_with("table ") && l.ends_with('{') {
            saw_table = true;
        } else if l.starts_with("chain ") && l.ends_with('{') {
            chain = Some(false);
        } else if l.starts_with("type ")
            && l.contains(" hook ")
            && l.contains("policy accept;")
            && chain == Some(false)
        {
            chain = Some(true);
        } else if l == "}" {
            if chain.take() == Some(false) {
                return false; // a regular (user) chain
            }
        } else {
            return false;
        }
    }
    saw_table
}

fn empty_nft_table(family: &str, table: &str) -> bool {
    run_output("nft", &["list", "table", family, table]).is_ok_and(|t| nft_table_is_empty(&t))
}

// ---- commands ----

fn run_output(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_status(cmd: &str, args: &[&str]) -> Result<(), String> {
    run_output(cmd, args).map(|_| ())
}

fn run_with_stdin(cmd: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(input.as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn ids() -> BTreeSet<String> {
        BTreeSet::from(["aaaa".to_string()])
    }

    #[test]
    fn node_processes_are_recognised_with_their_dirs() {
        let d = node_process_dirs(&v(&[
            "/usr/local/bin/rk3s",
            "server",
            "--data-dir=/tmp/x",
            "--containerd-state-dir",
            "/tmp/x/cs",
        ]));
        assert_eq!(
            d,
            Some(NodeDirs {
                data_dir: "/tmp/x".into(),
                state_dir: Some("/tmp/x/cs".into()),
                agent: true
            })
        );
        let d = node_process_dirs(&v(&[
            "rk3s",
            "server",
            "-d",
            "/srv/rk3s",
            "--disable-agent",
        ]));
        assert_eq!(
            d,
            Some(NodeDirs {
                data_dir: "/srv/rk3s".into(),
                state_dir: None,
                agent: false
            })
        );
        let d = node_process_dirs(&v(&["rk3s", "agent", "--server", "https://x:6443"]));
        assert_eq!(
            d,
            Some(NodeDirs {
                data_dir: DEFAULT_DATA_DIR.into(),
                state_dir: None,
                agent: true
            })
        );
        // Not a node process: other subcommands, other binaries, killall itself.
        assert_eq!(
            node_process_dirs(&v(&["rk3s", "killall", "--data-dir", "/tmp/x"])),
            None
        );
        assert_eq!(
            node_process_dirs(&v(&["rk3s", "kubectl", "get", "server"])),
            None
        );
        assert_eq!(node_process_dirs(&v(&["/usr/bin/k3s", "server"])), None);
        assert_eq!(
            node_process_dirs(&v(&["/target/debug/deps/agent_e2e-1234", "server"])),
            None
        );
        assert_eq!(node_process_dirs(&[]), None);
    }

    #[test]
    fn only_empty_run_dirs_of_the_state_dir_are_removed() {
        assert_eq!(
            empty_parents_to_remove(Path::new("/run/rk3s/containerd")),
            [PathBuf::from("/run/rk3s")]
        );
        assert_eq!(
            empty_parents_to_remove(Path::new("/run/rk3s/0123456789ab/containerd")),
            [
                PathBuf::from("/run/rk3s/0123456789ab"),
                PathBuf::from("/run/rk3s")
            ]
        );
        assert!(empty_parents_to_remove(Path::new("/tmp/x/cs")).is_empty());
        // Two data dirs: two state dirs, neither inside the other.
        let a = default_state_dir(Path::new(DEFAULT_DATA_DIR));
        let b = default_state_dir(Path::new("/srv/rk3s-2"));
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
    }

    #[test]
    fn containerd_and_shims_are_ours_only_by_config_and_socket() {
        let cfg = "/var/lib/rk3s/agent/etc/containerd/config.toml";
        assert!(is_our_containerd(&v(&["containerd", "--config", cfg]), cfg));
        assert!(is_our_containerd(
            &v(&["/usr/bin/containerd", &format!("--config={cfg}")]),
            cfg
        ));
        assert!(
            !is_our_containerd(&v(&["/usr/bin/containerd"]), cfg),
            "the system containerd"
        );
        assert!(!is_our_containerd(
            &v(&["containerd", "--config", "/etc/containerd/config.toml"]),
            cfg
        ));
        assert!(!is_our_containerd(&v(&["dockerd", "--config", cfg]), cfg));
        let sock = "/run/rk3s/containerd/containerd.sock";
        let shim = v(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "abc",
            "-address",
            sock,
        ]);
        assert!(is_our_shim(&shim, sock));
        let docker = v(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "moby",
            "-id",
            "abc",
            "-address",
            "/run/containerd/containerd.sock",
        ]);
        assert!(!is_our_shim(&docker, sock));
        assert!(!is_our_shim(&v(&["sleep", "-address", sock]), sock));
    }

    #[test]
    fn mounts_below_the_dir_but_not_the_dir() {
        let info = "30 1 8:1 / /var/lib/rk3s rw - ext4 /dev/sdb rw\n\
                    31 30 0:40 / /var/lib/rk3s/agent/containerd/x/rootfs rw - overlay overlay rw\n\
                    32 30 0:41 / /var/lib/rk3s/agent/pods/u/volumes/my\\040vol rw - tmpfs tmpfs rw\n\
                    33 1 0:42 / /var/lib/rk3s2/agent rw - tmpfs tmpfs rw\n\
                    34 31 0:43 / /var/lib/rk3s/agent/containerd/x/rootfs/dev rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounts_strictly_under(info, Path::new("/var/lib/rk3s")),
            v(&[
                "/var/lib/rk3s/agent/containerd/x/rootfs",
                "/var/lib/rk3s/agent/pods/u/volumes/my vol",
                "/var/lib/rk3s/agent/containerd/x/rootfs/dev"
            ])
        );
        assert!(mounts_strictly_under(info, Path::new("/srv")).is_empty());
    }

    #[test]
    fn cni_cache_names() {
        assert_eq!(
            cni_cache_container("rk3s-03bdd80f-eth0", "rk3s"),
            Some("03bdd80f")
        );
        assert_eq!(cni_cache_container("other-03bdd80f-eth0", "rk3s"), None);
        assert_eq!(cni_cache_container("rk3s2-03bdd80f-eth0", "rk3s"), None);
        assert_eq!(cni_cache_container("rk3s-eth0", "rk3s"), None);
    }

    #[test]
    fn stat_and_cmdline_parse() {
        assert_eq!(
            parse_stat("42 (a (weird) name) S 7 42 42 0"),
            Some(('S', 7))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_cmdline(b"containerd\0--config\0/x y\0"),
            v(&["containerd", "--config", "/x y"])
        );
    }

    #[test]
    fn descendants_cover_the_whole_tree() {
        let pairs = [(10, 1), (11, 10), (12, 11), (13, 1), (14, 12)];
        let roots = BTreeSet::from([10]);
        assert_eq!(
            descendants(pairs.into_iter(), &roots),
            BTreeSet::from([10, 11, 12, 14])
        );
    }

    #[test]
    fn pod_uids_from_logs_and_cgroups() {
        assert_eq!(
            pod_uid_from_log_dir("default_web-1_0b6f1c2e-1111-2222-3333-444455556666").as_deref(),
            Some("0b6f1c2e-1111-2222-3333-444455556666")
        );
        assert_eq!(pod_uid_from_log_dir("lost+found"), None);
        assert_eq!(
            pod_uid_of_cgroup("pod0b6f1c2e-11").as_deref(),
            Some("0b6f1c2e-11")
        );
        assert_eq!(
            pod_uid_of_cgroup("kubepods-besteffort-pod0b6f1c2e_11.slice").as_deref(),
            Some("0b6f1c2e-11")
        );
        assert_eq!(pod_uid_of_cgroup("besteffort"), None);
        let cg = "12:memory:/kubepods/besteffort/podaaaa-bbbb/0123456789ab\n11:pids:/kubepods/burstable/podcccc/ff\n1:name=systemd:/user.slice\n0::/\n";
        assert_eq!(
            pod_uids_in_cgroup_file(cg),
            BTreeSet::from(["aaaa-bbbb".to_string(), "cccc".to_string()])
        );
    }

    #[test]
    fn netns_mounts_and_metadata_names() {
        let info = "43 27 0:4 net:[4026532177] /run/netns/cni-2ed5207a-8d87 rw - nsfs nsfs rw\n\
                    44 27 0:4 net:[4026532999] /tmp/other rw - nsfs nsfs rw\n\
                    45 27 0:50 / /run/netns rw - tmpfs tmpfs rw\n";
        assert_eq!(
            netns_mounts(info),
            vec![(
                "/run/netns/cni-2ed5207a-8d87".to_string(),
                "net:[4026532177]".to_string()
            )]
        );
        let db = b"\x00\x01{\"NetNSPath\":\"/var/run/netns/cni-1234abcd-00ff\",\"x\":1}junk/run/netns/cni-\x00/run/netns/cni-beef";
        assert_eq!(
            netns_names_in(db),
            BTreeSet::from(["cni-1234abcd-00ff".to_string(), "cni-beef".to_string()])
        );
    }

    #[test]
    fn links_on_the_bridge_and_the_bridge_are_ours() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n\
                    2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP mode DEFAULT group default qlen 1000\n\
                    5: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\n\
                    6: veth1a2b3c4d@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 state UP mode DEFAULT group default\n\
                    7: docker0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state DOWN mode DEFAULT group default\n\
                    8: vethdead@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master docker0 state UP mode DEFAULT group default\n";
        let links = parse_links(text);
        assert_eq!(links.len(), 6);
        assert_eq!(
            links[3],
            Link {
                name: "veth1a2b3c4d".into(),
                master: Some("cni0".into())
            }
        );
        assert_eq!(our_links(&links, "cni0"), v(&["veth1a2b3c4d", "cni0"]));
        assert!(our_links(&parse_links("2: eth0: <UP> mtu 1500\n"), "cni0").is_empty());
        let conf = rk3s_kubelet::cni::conflist("10.42.0.0/24", Path::new("/x")).unwrap_or_default();
        assert_eq!(bridge_in_conflist(&conf).as_deref(), Some("cni0"));
        assert_eq!(bridge_in_conflist("{}"), None);
    }

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Thu
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:USER-CHAIN - [0:0]
-A FORWARD -j USER-CHAIN
-A USER-CHAIN -s 192.168.1.0/24 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-0123456789abcdef01234567 - [0:0]
:CNI-ffff000011112222aaaabbbb - [0:0]
:CNI-DN-0123456789abcdef01234 - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A POSTROUTING -s 10.42.0.5/32 -m comment --comment "name: \"rk3s\" id: \"aaaa\"" -j CNI-0123456789abcdef01234567
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 10.88.0.3/32 -m comment --comment "name: \"other\" id: \"bbbb\"" -j CNI-ffff000011112222aaaabbbb
-A CNI-0123456789abcdef01234567 -d 10.42.0.0/24 -m comment --comment "name: \"rk3s\" id: \"aaaa\"" -j ACCEPT
-A CNI-0123456789abcdef01234567 ! -d 224.0.0.0/4 -m comment --comment "name: \"rk3s\" id: \"aaaa\"" -j MASQUERADE
-A CNI-ffff000011112222aaaabbbb -d 10.88.0.0/16 -m comment --comment "name: \"other\" id: \"bbbb\"" -j ACCEPT
-A CNI-DN-0123456789abcdef01234 -s 10.42.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-0123456789abcdef01234 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.42.0.5:80
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"rk3s\" id: \"aaaa\"" -m multiport --dports 8080 -j CNI-DN-0123456789abcdef01234
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
COMMIT
"#;

    #[test]
    fn iptables_plan_removes_only_the_rk3s_network() {
        let plans = plan_iptables(SAVE, "rk3s", &ids(), true);
        assert_eq!(plans.len(), 1, "{plans:?}");
        let p = &plans[0];
        assert_eq!(p.table, "nat");
        assert_eq!(
            p.lines,
            v(&[
                r#"-D POSTROUTING -s 10.42.0.5/32 -m comment --comment "name: \"rk3s\" id: \"aaaa\"" -j CNI-0123456789abcdef01234567"#,
                "-D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                "-D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                r#"-D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ"#,
                "-F CNI-0123456789abcdef01234567",
                "-F CNI-DN-0123456789abcdef01234",
                "-F CNI-HOSTPORT-DNAT",
                "-F CNI-HOSTPORT-SETMARK",
                "-F CNI-HOSTPORT-MASQ",
                "-X CNI-0123456789abcdef01234567",
                "-X CNI-DN-0123456789abcdef01234",
                "-X CNI-HOSTPORT-DNAT",
                "-X CNI-HOSTPORT-SETMARK",
                "-X CNI-HOSTPORT-MASQ",
            ])
        );
        assert_eq!(p.described.len(), 9);
        // The other network's chain, docker's and the user's rules are untouched.
        assert!(!p.lines.iter().any(|l| l.contains("ffff")
            || l.contains("DOCKER")
            || l.contains("172.17")
            || l.contains("USER")));
    }

    #[test]
    fn shared_hostport_chains_stay_while_another_network_uses_them() {
        let other = SAVE
            .replace(":DOCKER - [0:0]\n", ":DOCKER - [0:0]\n:CNI-DN-ffff - [0:0]\n")
            .replace(
                "-A CNI-HOSTPORT-MASQ",
                "-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"other\\\" id: \\\"cccc\\\"\" -m multiport --dports 9090 -j CNI-DN-ffff\n-A CNI-HOSTPORT-MASQ",
            );
        let plans = plan_iptables(&other, "rk3s", &ids(), true);
        assert_eq!(plans.len(), 1);
        let lines = &plans[0].lines;
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("-D CNI-HOSTPORT-DNAT")
                    && l.contains("dnat name: \\\"rk3s\\\"")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l == "-X CNI-DN-0123456789abcdef01234"),
            "{lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("-F CNI-HOSTPORT")
                || l.contains("-X CNI-HOSTPORT")
                || l.contains("ffff")
                || l.contains("PREROUTING")),
            "{lines:#?}"
        );
        // Without rk3s's conflist on the host the shared chains stay too.
        let plans = plan_iptables(SAVE, "rk3s", &ids(), false);
        assert!(
            !plans[0].lines.iter().any(|l| l.contains("-X CNI-HOSTPORT")),
            "{:#?}",
            plans[0].lines
        );
        // Another rk3s on the host (same network name, other sandbox ids): nothing is ours.
        assert!(
            plan_iptables(SAVE, "rk3s", &BTreeSet::from(["zzzz".to_string()]), true).is_empty()
        );
        let plans = plan_iptables(
            &SAVE.replace(
                "id: \\\"aaaa\\\"\" -m multiport",
                "id: \\\"dddd\\\"\" -m multiport",
            ),
            "rk3s",
            &ids(),
            true,
        );
        assert!(
            !plans[0]
                .lines
                .iter()
                .any(|l| l.contains("CNI-HOSTPORT-DNAT") || l.contains("CNI-DN-")),
            "another rk3s's hostPort: {:#?}",
            plans[0].lines
        );
        let plans = plan_iptables(SAVE, "rk3s", &ids(), false);
        assert!(
            !plans[0].lines.iter().any(|l| l.contains("-X CNI-HOSTPORT")),
            "{:#?}",
            plans[0].lines
        );
    }

    #[test]
    fn iptables_plan_is_empty_when_nothing_is_ours() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -m comment --comment \"ssh\" -j ACCEPT\nCOMMIT\n";
        assert!(plan_iptables(save, "rk3s", &ids(), true).is_empty());
        assert!(plan_iptables("", "rk3s", &ids(), true).is_empty());
        let p = TablePlan {
            table: "nat".into(),
            lines: v(&["-F X", "-X X"]),
            described: vec![],
        };
        assert_eq!(p.script(), "*nat\n-F X\n-X X\nCOMMIT\n");
    }

    #[test]
    fn rule_words_keep_quoted_comments() {
        assert_eq!(
            split_rule(r#"-A X -m comment --comment "name: \"rk3s\" id: \"a b\"" -j Y"#),
            v(&[
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                r#"name: "rk3s" id: "a b""#,
                "-j",
                "Y"
            ])
        );
        assert_eq!(
            split_rule(r#"-A X --comment "" -j Y"#),
            v(&["-A", "X", "--comment", "", "-j", "Y"])
        );
    }

    #[test]
    fn nft_tables_of_rk3s_and_empty_tables() {
        let list = "table ip nat\ntable inet rk3s\ntable ip6 rk3s-svc\ntable inet filter\ntable ip docker-rk3s\n";
        assert_eq!(
            rk3s_nft_tables(list),
            vec![
                ("inet".to_string(), "rk3s".to_string()),
                ("ip6".to_string(), "rk3s-svc".to_string())
            ]
        );
        let empty = "table ip nat {\n\tchain PREROUTING {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n\n\tchain POSTROUTING {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\n";
        assert!(nft_table_is_empty(empty));
        let rule = empty.replace(
            "policy accept;\n\t}\n}",
            "policy accept;\n\t\tcounter masquerade\n\t}\n}",
        );
        assert!(!nft_table_is_empty(&rule));
        assert!(!nft_table_is_empty(&empty.replace(
            "prerouting priority dstnat; policy accept",
            "prerouting priority dstnat; policy drop"
        )));
        let user_chain = empty.replace("}\n}\n", "}\n\tchain MINE {\n\t}\n}\n");
        assert!(!nft_table_is_empty(&user_chain));
        assert!(!nft_table_is_empty(""));
    }

    #[test]
    fn unix_sockets_by_inode() {
        let t = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                 0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/containerd/s/abcdef\n\
                 0000000000000000: 00000002 00000000 00010000 0001 01 12346 /run/other.sock\n\
                 0000000000000000: 00000003 00000000 00000000 0001 03 12347\n";
        assert_eq!(
            unix_socket_paths(
                t,
                &BTreeSet::from(["12345".to_string(), "12347".to_string()])
            ),
            vec![PathBuf::from("/run/containerd/s/abcdef")]
        );
    }
}
