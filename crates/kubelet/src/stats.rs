//! CPU and memory statistics from cgroups and `/proc`, for the kubelet's
//! `/stats/summary` and `/metrics/resource` endpoints.
//!
//! - cgroup v1: `cpuacct.usage` (ns), `memory.usage_in_bytes`, working set =
//!   usage − `total_inactive_file` (from `memory.stat`), as cAdvisor computes it.
//! - cgroup v2: `cpu.stat` `usage_usec`, `memory.current`, working set =
//!   current − `inactive_file`.
//! - The node: `/proc/stat` (CPU time but idle and iowait) and `/proc/meminfo`.
//!
//! A container's cgroup is found by its ID in the cgroup tree (containerd's cgroupfs
//! driver names the leaf after the container ID, `cri-containerd-<id>.scope` with the
//! systemd driver). Instantaneous CPU (`usageNanoCores`) is the rate between two samples:
//! [`CpuRates`] remembers the previous sample of each cgroup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One sample of a cgroup (or of the node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_core_nanos: u64,
    /// Memory in use, bytes.
    pub memory_usage_bytes: u64,
    /// Working set (usage minus inactive file cache), bytes.
    pub memory_working_set_bytes: u64,
    /// Resident anonymous memory (rss / anon), bytes.
    pub memory_rss_bytes: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// The unified v2 hierarchy mounted at the root.
    V2(PathBuf),
    /// v1 hierarchies: the memory and cpuacct mount points.
    V1 {
        /// e.g. `/sys/fs/cgroup/memory`.
        memory: PathBuf,
        /// e.g. `/sys/fs/cgroup/cpuacct` or `/sys/fs/cgroup/cpu,cpuacct`.
        cpuacct: PathBuf,
    },
}

impl CgroupLayout {
    /// Detects the layout under `/sys/fs/cgroup`.
    pub fn detect() -> CgroupLayout {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// Detects the layout under `root` (tests use a fake tree).
    pub fn detect_at(root: &Path) -> CgroupLayout {
        if root.join("cgroup.controllers").exists() {
            return CgroupLayout::V2(root.to_path_buf());
        }
        let cpuacct = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
            .iter()
            .map(|d| root.join(d))
            .find(|p| p.join("cpuacct.usage").exists())
            .unwrap_or_else(|| root.join("cpuacct"));
        CgroupLayout::V1 {
            memory: root.join("memory"),
            cpuacct,
        }
    }

    /// The directory searched for container cgroups.
    fn search_root(&self) -> &Path {
        match self {
            CgroupLayout::V2(r) => r,
            CgroupLayout::V1 { memory, .. } => memory,
        }
    }

    /// Finds the cgroup (path relative to the hierarchy root) whose directory name
    /// contains `id` (a container ID), searching at most 8 levels deep.
    pub fn find_cgroup(&self, id: &str) -> Option<PathBuf> {
        if id.len() < 12 {
            return None;
        }
        let root = self.search_root();
        let mut stack = vec![(root.to_path_buf(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let p = e.path();
                if e.file_name().to_string_lossy().contains(id) {
                    return p.strip_prefix(root).ok().map(Path::to_path_buf);
                }
                if depth < 8 {
                    stack.push((p, depth + 1));
                }
            }
        }
        None
    }

    /// Reads the usage of the cgroup at `rel` (relative to the hierarchy roots).
    pub fn read(&self, rel: &Path) -> Option<Usage> {
        match self {
            CgroupLayout::V2(root) => {
                let dir = root.join(rel);
                let cpu = read_keyed(&dir.join("cpu.stat"));
                let mem = read_keyed(&dir.join("memory.stat"));
                let current = read_u64(&dir.join("memory.current"))?;
                let inactive = mem.get("inactive_file").copied().unwrap_or(0);
                Some(Usage {
                    cpu_usage_core_nanos: cpu
                        .get("usage_usec")
                        .copied()
                        .unwrap_or(0)
                        .saturating_mul(1000),
                    memory_usage_bytes: current,
                    memory_working_set_bytes: current.saturating_sub(inactive),
                    memory_rss_bytes: mem.get("anon").copied().unwrap_or(0),
                    page_faults: mem.get("pgfault").copied().unwrap_or(0),
                    major_page_faults: mem.get("pgmajfault").copied().unwrap_or(0),
                })
            }
            CgroupLayout::V1 { memory, cpuacct } => {
                let mdir = memory.join(rel);
                let usage = read_u64(&mdir.join("memory.usage_in_bytes"))?;
                let stat = read_keyed(&mdir.join("memory.stat"));
                let inactive = stat
                    .get("total_inactive_file")
                    .or_else(|| stat.get("inactive_file"))
                    .copied()
                    .unwrap_or(0);
                let cpu = read_u64(&cpuacct.join(rel).join("cpuacct.usage")).unwrap_or(0);
                Some(Usage {
                    cpu_usage_core_nanos: cpu,
                    memory_usage_bytes: usage,
                    memory_working_set_bytes: usage.saturating_sub(inactive),
                    memory_rss_bytes: stat
                        .get("total_rss")
                        .or_else(|| stat.get("rss"))
                        .copied()
                        .unwrap_or(0),
                    page_faults: stat
                        .get("total_pgfault")
                        .or_else(|| stat.get("pgfault"))
                        .copied()
                        .unwrap_or(0),
                    major_page_faults: stat
                        .get("total_pgmajfault")
                        .or_else(|| stat.get("pgmajfault"))
                        .copied()
                        .unwrap_or(0),
                })
            }
        }
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, meminfo without units).
pub fn parse_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?.trim_end_matches(':');
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

fn read_keyed(p: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(p)
        .map(|t| parse_keyed(&t))
        .unwrap_or_default()
}

/// Node CPU time from `/proc/stat`'s `cpu` line: all but idle and iowait, in ns
/// (`user_hz` ticks a second, 100 on Linux).
pub fn parse_proc_stat_cpu(text: &str, user_hz: u64) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is already in user)
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| *x)
        .sum();
    Some(busy.saturating_mul(1_000_000_000 / user_hz.max(1)))
}

/// Node memory from `/proc/meminfo`: (usage, working set, available) in bytes, where
/// usage = total − free and working set = usage − inactive file pages.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let m = parse_keyed(text);
    let kib = |k: &str| m.get(k).map(|v| v.saturating_mul(1024));
    let total = kib("MemTotal")?;
    let free = kib("MemFree")?;
    let inactive = kib("Inactive(file)").unwrap_or(0);
    let usage = total.saturating_sub(free);
    let ws = usage.saturating_sub(inactive);
    Some((usage, ws, total.saturating_sub(ws)))
}

/// The node's usage from `/proc`.
pub fn node_usage() -> Option<Usage> {
    let cpu = parse_proc_stat_cpu(&std::fs::read_to_string("/proc/stat").ok()?, 100)?;
    let (usage, ws, _) = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    Some(Usage {
        cpu_usage_core_nanos: cpu,
        memory_usage_bytes: usage,
        memory_working_set_bytes: ws,
        ..Default::default()
    })
}

/// The node's total memory (bytes), for `availableBytes`.
pub fn node_memory_total() -> Option<u64> {
    let m = parse_keyed(&std::fs::read_to_string("/proc/meminfo").ok()?);
    m.get("MemTotal").map(|v| v.saturating_mul(1024))
}

/// Remembers the previous CPU sample of each key to compute instantaneous usage.
#[derive(Debug, Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, (std::time::Instant, u64)>>,
}

impl CpuRates {
    /// Records `cumulative_ns` for `key` and returns the rate since the previous sample
    /// in nanocores (None on the first sample or if the counter went backwards).
    pub fn rate(&self, key: &str, cumulative_ns: u64) -> Option<u64> {
        self.rate_at(key, cumulative_ns, std::time::Instant::now())
    }

    /// [`CpuRates::rate`] at a given instant.
    pub fn rate_at(&self, key: &str, cumulative_ns: u64, now: std::time::Instant) -> Option<u64> {
        let mut m = match self.last.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let prev = m.insert(key.to_string(), (now, cumulative_ns));
        let (t0, c0) = prev?;
        let dt = now.checked_duration_since(t0)?.as_nanos();
        if cumulative_ns < c0 {
            // The counter was reset (a new cgroup under the same key): start over.
            return None;
        }
        if dt < 1_000_000 {
            // Too close to the previous sample: keep the old one as the base.
            m.insert(key.to_string(), (t0, c0));
            return None;
        }
        Some(((cumulative_ns - c0) as u128 * 1_000_000_000 / dt) as u64)
    }

    /// Drops samples of keys not in `keep` (containers that went away).
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        if let Ok(mut m) = self.last.lock() {
            m.retain(|k, _| keep.contains(k));
        }
    }
}

/// The `cpu` object of the summary API.
pub fn cpu_json(time: &str, u: &Usage, nano_cores: Option<u64>) -> serde_json::Value {
    let mut v = serde_json::json!({"time": time, "usageCoreNanoSeconds": u.cpu_usage_core_nanos});
    if let Some(n) = nano_cores {
        v["usageNanoCores"] = serde_json::json!(n);
    }
    v
}

/// The `memory` object of the summary API (`availableBytes` when a limit is known).
pub fn memory_json(time: &str, u: &Usage, limit: Option<u64>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "time": time,
        "usageBytes": u.memory_usage_bytes,
        "workingSetBytes": u.memory_working_set_bytes,
        "rssBytes": u.memory_rss_bytes,
        "pageFaults": u.page_faults,
        "majorPageFaults": u.major_page_faults,
    });
    if let Some(l) = limit {
        v["availableBytes"] = serde_json::json!(l.saturating_sub(u.memory_working_set_bytes));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        if let Some(d) = p.parent() {
            assert!(std::fs::create_dir_all(d).is_ok());
        }
        assert!(std::fs::write(p, s).is_ok());
    }

    #[test]
    fn v1_tree_is_found_and_read() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let root = dir.path();
        let id = "0123456789abcdef0123";
        write(&root.join("cpuacct/cpuacct.usage"), "1\n");
        write(
            &root.join(format!("memory/k8s.io/{id}/memory.usage_in_bytes")),
            "10000\n",
        );
        write(
            &root.join(format!("memory/k8s.io/{id}/memory.stat")),
            "cache 5\ntotal_inactive_file 4000\ntotal_rss 3000\ntotal_pgfault 7\n",
        );
        write(
            &root.join(format!("cpuacct/k8s.io/{id}/cpuacct.usage")),
            "123456789\n",
        );
        let l = CgroupLayout::detect_at(root);
        assert!(matches!(l, CgroupLayout::V1 { .. }), "{l:?}");
        let rel = l.find_cgroup(id);
        assert_eq!(rel.as_deref(), Some(Path::new("k8s.io").join(id).as_path()));
        let u = rel.and_then(|r| l.read(&r));
        assert_eq!(
            u,
            Some(Usage {
                cpu_usage_core_nanos: 123456789,
                memory_usage_bytes: 10000,
                memory_working_set_bytes: 6000,
                memory_rss_bytes: 3000,
                page_faults: 7,
                major_page_faults: 0
            })
        );
        assert_eq!(l.find_cgroup("ffffffffffffffff"), None);
        assert_eq!(l.find_cgroup("k8s"), None, "short IDs match nothing");
    }

    #[test]
    fn v2_tree_is_read() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let root = dir.path();
        write(&root.join("cgroup.controllers"), "cpu memory\n");
        let cg = root.join("kubepods/pod1/cri-containerd-abcdefabcdef1234.scope");
        write(&cg.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n");
        write(&cg.join("memory.current"), "8192\n");
        write(
            &cg.join("memory.stat"),
            "anon 4096\ninactive_file 1024\npgmajfault 2\n",
        );
        let l = CgroupLayout::detect_at(root);
        let rel = l.find_cgroup("abcdefabcdef1234");
        let u = rel.and_then(|r| l.read(&r));
        let Some(u) = u else { panic!("no usage") };
        assert_eq!(
            (
                u.cpu_usage_core_nanos,
                u.memory_usage_bytes,
                u.memory_working_set_bytes
            ),
            (2_500_000, 8192, 7168)
        );
        assert_eq!((u.memory_rss_bytes, u.major_page_faults), (4096, 2));
    }

    #[test]
    fn proc_files() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        // (100+5+50+1+2+3) ticks of 10 ms
        assert_eq!(parse_proc_stat_cpu(stat, 100), Some(161 * 10_000_000));
        assert_eq!(parse_proc_stat_cpu("intr 1\n", 100), None);
        let mi = "MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable: 600 kB\nInactive(file):  300 kB\n";
        assert_eq!(
            parse_meminfo(mi),
            Some((800 * 1024, 500 * 1024, 500 * 1024))
        );
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn cpu_rate_between_samples() {
        let r = CpuRates::default();
        let t0 = std::time::Instant::now();
        assert_eq!(r.rate_at("c", 1_000, t0), None);
        // 0.5 s of CPU over 1 s = half a core.
        assert_eq!(
            r.rate_at("c", 500_001_000, t0 + std::time::Duration::from_secs(1)),
            Some(500_000_000)
        );
        // A counter reset gives no rate.
        assert_eq!(
            r.rate_at("c", 10, t0 + std::time::Duration::from_secs(2)),
            None
        );
        let keep = std::collections::HashSet::new();
        r.retain(&keep);
        assert_eq!(
            r.rate_at("c", 20, t0 + std::time::Duration::from_secs(3)),
            None
        );
    }

    #[test]
    fn json_shapes() {
        let u = Usage {
            cpu_usage_core_nanos: 5,
            memory_usage_bytes: 10,
            memory_working_set_bytes: 8,
            ..Default::default()
        };
        let c = cpu_json("t", &u, Some(3));
        assert_eq!(
            c,
            serde_json::json!({"time": "t", "usageCoreNanoSeconds": 5, "usageNanoCores": 3})
        );
        let m = memory_json("t", &u, Some(100));
        assert_eq!(m["availableBytes"], 92);
        assert_eq!(m["workingSetBytes"], 8);
        assert!(memory_json("t", &u, None).get("availableBytes").is_none());
    }
}
