//! The last two points of every node and container, and the usage computed from them
//! as metrics-server's storage does: CPU = (cumulative now − cumulative before) /
//! (time now − time before) in nano-cores, memory = the last working set; the window is
//! the time between the two points, the timestamp the last one's. A container seen for
//! the first time (or restarted since the previous point) is measured from its start
//! time with zero usage then, when the start time is known. A node whose kubelet stopped
//! answering keeps its points until they are older than the staleness limit; then its
//! node and pod metrics disappear.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use crate::prom::{ContainerRef, Point, Scrape};

/// Usage of a node or container over a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The last point's time.
    pub timestamp: jiff::Timestamp,
    /// Time between the two points used.
    pub window: Duration,
    /// CPU in nano-cores.
    pub cpu_nano_cores: u64,
    /// Working set in bytes.
    pub memory_bytes: u64,
}

/// Last and previous points of one node or container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Series {
    last: Option<Point>,
    prev: Option<Point>,
}

impl Series {
    /// Adds a point; a point not newer than the last one changes nothing.
    fn push(&mut self, p: Point) {
        match self.last {
            Some(l) if p.timestamp <= l.timestamp => {}
            _ => {
                self.prev = self.last;
                self.last = Some(p);
            }
        }
    }
}

/// The usage between `last` and `prev` (see the module docs).
pub fn usage(last: &Point, prev: Option<&Point>) -> Option<Usage> {
    let restarted_since = |p: &Point| last.start_time.is_some_and(|s| s > p.timestamp);
    let base = match prev {
        Some(p)
            if p.timestamp < last.timestamp
                && p.cumulative_cpu_ns <= last.cumulative_cpu_ns
                && !restarted_since(p) =>
        {
            (p.timestamp, p.cumulative_cpu_ns)
        }
        _ => match last.start_time {
            Some(s) if s < last.timestamp => (s, 0),
            _ => return None,
        },
    };
    let window_ns = last.timestamp.as_nanosecond() - base.0.as_nanosecond();
    if window_ns <= 0 {
        return None;
    }
    let used = u128::from(last.cumulative_cpu_ns - base.1);
    let rate = used * 1_000_000_000 / (window_ns as u128);
    Some(Usage {
        timestamp: last.timestamp,
        window: Duration::from_nanos(u64::try_from(window_ns).unwrap_or(u64::MAX)),
        cpu_nano_cores: u64::try_from(rate).unwrap_or(u64::MAX),
        memory_bytes: last.memory_bytes,
    })
}

/// A pod's namespace and name.
type PodKey = (String, String);

#[derive(Default)]
struct NodeData {
    node: Series,
    containers: BTreeMap<ContainerRef, Series>,
    /// When this node last answered.
    scraped_at: Option<std::time::Instant>,
}

/// The metrics of one pod: its containers' usage, one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodUsage {
    /// The earliest container timestamp (metrics-server reports the pod's oldest figure).
    pub timestamp: jiff::Timestamp,
    /// That container's window.
    pub window: Duration,
    /// Containers by name.
    pub containers: BTreeMap<String, Usage>,
}

/// Every node's points (shared by the scraper and the API).
pub struct Storage {
    nodes: RwLock<HashMap<String, NodeData>>,
    stale_after: Duration,
    /// Nodes whose last scrape failed.
    failing: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Storage {
    /// Empty storage whose nodes' points are dropped `stale_after` after their last
    /// successful scrape.
    pub fn new(stale_after: Duration) -> Storage {
        Storage {
            nodes: RwLock::new(HashMap::new()),
            stale_after,
            failing: Default::default(),
        }
    }

    /// Records whether `node`'s last scrape failed; true when that changed.
    pub fn set_failing(&self, node: &str, failing: bool) -> bool {
        let mut set = match self.failing.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if failing {
            set.insert(node.to_string())
        } else {
            set.remove(node)
        }
    }

    /// Records one successful scrape of `node`. Containers absent from it are forgotten.
    pub fn store(&self, node: &str, scrape: Scrape) {
        self.store_at(node, scrape, std::time::Instant::now())
    }

    fn store_at(&self, node: &str, scrape: Scrape, at: std::time::Instant) {
        let mut nodes = match self.nodes.write() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let data = nodes.entry(node.to_string()).or_default();
        if let Some(p) = scrape.node {
            data.node.push(p);
        }
        let mut old = std::mem::take(&mut data.containers);
        for (c, p) in scrape.containers {
            let mut s = old.remove(&c).unwrap_or_default();
            s.push(p);
            data.containers.insert(c, s);
        }
        data.scraped_at = Some(at);
    }

    /// Forgets nodes that are gone from the cluster.
    pub fn retain_nodes(&self, keep: impl Fn(&str) -> bool) {
        let mut nodes = match self.nodes.write() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        nodes.retain(|name, _| keep(name));
        drop(nodes);
        let mut set = match self.failing.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        set.retain(|name| keep(name));
    }

    fn fresh<'a>(
        &self,
        nodes: &'a HashMap<String, NodeData>,
        now: std::time::Instant,
    ) -> impl Iterator<Item = (&'a String, &'a NodeData)> {
        let stale = self.stale_after;
        nodes.iter().filter(move |(_, d)| {
            d.scraped_at
                .is_some_and(|t| now.saturating_duration_since(t) <= stale)
        })
    }

    /// The usage of `node`, if it has two fresh points.
    pub fn node(&self, node: &str) -> Option<Usage> {
        self.node_at(node, std::time::Instant::now())
    }

    fn node_at(&self, node: &str, now: std::time::Instant) -> Option<Usage> {
        let nodes = match self.nodes.read() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let (_, d) = self.fresh(&nodes, now).find(|(n, _)| *n == node)?;
        usage(d.node.last.as_ref()?, d.node.prev.as_ref())
    }

    /// The usage of every pod whose containers all have a usage, by (namespace, name).
    pub fn pods(&self) -> BTreeMap<(String, String), PodUsage> {
        self.pods_at(std::time::Instant::now())
    }

    fn pods_at(&self, now: std::time::Instant) -> BTreeMap<(String, String), PodUsage> {
        let nodes = match self.nodes.read() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let mut by_pod: BTreeMap<PodKey, Vec<(String, Option<Usage>)>> = BTreeMap::new();
        for (_, d) in self.fresh(&nodes, now) {
            for (c, s) in &d.containers {
                let u = s.last.as_ref().and_then(|l| usage(l, s.prev.as_ref()));
                by_pod
                    .entry((c.namespace.clone(), c.pod.clone()))
                    .or_default()
                    .push((c.container.clone(), u));
            }
        }
        by_pod
            .into_iter()
            .filter_map(|(k, cs)| {
                // A pod is reported only when every container has a figure.
                let cs: Option<Vec<(String, Usage)>> =
                    cs.into_iter().map(|(n, u)| u.map(|u| (n, u))).collect();
                let cs = cs?;
                let earliest = cs.iter().map(|(_, u)| *u).min_by_key(|u| u.timestamp)?;
                Some((
                    k,
                    PodUsage {
                        timestamp: earliest.timestamp,
                        window: earliest.window,
                        containers: cs.into_iter().collect(),
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ms: i64, cpu_ns: u64, mem: u64) -> Point {
        Point {
            timestamp: jiff::Timestamp::from_millisecond(ms).expect("ts"),
            cumulative_cpu_ns: cpu_ns,
            memory_bytes: mem,
            start_time: None,
        }
    }

    #[test]
    fn cpu_is_the_rate_between_two_points() {
        // 1.5 core-seconds over 10 s: 150m.
        let u = usage(
            &p(20_000, 3_000_000_000, 7),
            Some(&p(10_000, 1_500_000_000, 5)),
        )
        .expect("usage");
        assert_eq!(u.cpu_nano_cores, 150_000_000);
        assert_eq!(u.memory_bytes, 7);
        assert_eq!(u.window, Duration::from_secs(10));
        assert_eq!(u.timestamp.as_millisecond(), 20_000);
        // 15.042 s window, 2 cores busy.
        let u = usage(&p(15_042, 30_084_000_000, 1), Some(&p(0, 0, 1))).expect("usage");
        assert_eq!(u.cpu_nano_cores, 2_000_000_000);
        assert_eq!(u.window, Duration::from_millis(15_042));
    }

    #[test]
    fn one_point_counter_reset_or_no_progress_give_nothing() {
        assert_eq!(usage(&p(10_000, 5, 1), None), None);
        assert_eq!(usage(&p(10_000, 5, 1), Some(&p(10_000, 1, 1))), None);
        assert_eq!(usage(&p(20_000, 5, 1), Some(&p(10_000, 9, 1))), None);
    }

    #[test]
    fn new_or_restarted_containers_count_from_their_start() {
        let mut last = p(20_000, 1_000_000_000, 1);
        last.start_time = Some(jiff::Timestamp::from_millisecond(15_000).expect("ts"));
        // No previous point: from the start time (1 s of CPU over 5 s).
        let u = usage(&last, None).expect("usage");
        assert_eq!(u.cpu_nano_cores, 200_000_000);
        assert_eq!(u.window, Duration::from_secs(5));
        // Previous point before the restart: ignored.
        let u = usage(&last, Some(&p(10_000, 500_000_000, 1))).expect("usage");
        assert_eq!(u.cpu_nano_cores, 200_000_000);
    }

    #[test]
    fn storage_keeps_two_points_and_forgets_stale_nodes() {
        let s = Storage::new(Duration::from_secs(30));
        let t0 = std::time::Instant::now();
        let c = ContainerRef {
            namespace: "ns".into(),
            pod: "web".into(),
            container: "c".into(),
        };
        let scrape = |ms: i64, cpu: u64, with_container: bool| Scrape {
            node: Some(p(ms, cpu, 100)),
            containers: if with_container {
                [(c.clone(), p(ms, cpu / 2, 10))].into_iter().collect()
            } else {
                BTreeMap::new()
            },
        };
        s.store_at("n1", scrape(10_000, 1_000_000_000, true), t0);
        assert_eq!(s.node_at("n1", t0), None);
        assert!(s.pods_at(t0).is_empty());
        s.store_at("n1", scrape(20_000, 3_000_000_000, true), t0);
        // The same point again changes nothing.
        s.store_at("n1", scrape(20_000, 3_000_000_000, true), t0);
        assert_eq!(
            s.node_at("n1", t0).map(|u| u.cpu_nano_cores),
            Some(200_000_000)
        );
        let pods = s.pods_at(t0);
        let pod = &pods[&("ns".to_string(), "web".to_string())];
        assert_eq!(pod.containers["c"].cpu_nano_cores, 100_000_000);
        assert_eq!(pod.window, Duration::from_secs(10));
        // Stale: the node's figures are gone; another node is unaffected.
        s.store_at("n2", scrape(10_000, 0, false), t0 + Duration::from_secs(40));
        s.store_at(
            "n2",
            scrape(20_000, 1_000_000_000, false),
            t0 + Duration::from_secs(40),
        );
        let later = t0 + Duration::from_secs(41);
        assert_eq!(s.node_at("n1", later), None);
        assert!(s.pods_at(later).is_empty());
        assert!(s.node_at("n2", later).is_some());
        // A container gone from the scrape is forgotten.
        s.store_at("n1", scrape(30_000, 4_000_000_000, false), later);
        assert!(s.pods_at(later).is_empty());
        assert!(s.node_at("n1", later).is_some());
        s.retain_nodes(|n| n == "n2");
        assert_eq!(s.node_at("n1", later), None);
        // Failures are reported once per change.
        assert!(s.set_failing("n2", true));
        assert!(!s.set_failing("n2", true));
        assert!(s.set_failing("n2", false));
        assert!(!s.set_failing("n2", false));
    }
}
