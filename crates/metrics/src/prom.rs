//! Reads the kubelet's `/metrics/resource` (Prometheus text format) into points, as
//! metrics-server's decoder: node and container cumulative CPU (core-seconds) and
//! working-set memory (bytes), with the samples' own timestamps (milliseconds) or, when
//! a sample has none, the scrape time; container start times.

use std::collections::BTreeMap;

/// One sample of a node or container: cumulative CPU and working set at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// When the CPU figure was taken.
    pub timestamp: jiff::Timestamp,
    /// Cumulative CPU time in nanoseconds (core-nanoseconds).
    pub cumulative_cpu_ns: u64,
    /// Working-set memory in bytes.
    pub memory_bytes: u64,
    /// When the container (or node) started, if known.
    pub start_time: Option<jiff::Timestamp>,
}

/// A container of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerRef {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

/// What one scrape of one kubelet gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    /// The node's point (both CPU and memory present).
    pub node: Option<Point>,
    /// Every container with both CPU and memory.
    pub containers: BTreeMap<ContainerRef, Point>,
}

#[derive(Default)]
struct Partial {
    cpu: Option<(f64, jiff::Timestamp)>,
    memory: Option<f64>,
    start: Option<f64>,
}

impl Partial {
    fn point(&self) -> Option<Point> {
        let (cpu, ts) = self.cpu?;
        let mem = self.memory?;
        if !(cpu.is_finite() && cpu >= 0.0 && mem.is_finite() && mem >= 0.0) {
            return None;
        }
        Some(Point {
            timestamp: ts,
            cumulative_cpu_ns: (cpu * 1e9).round() as u64,
            memory_bytes: mem.round() as u64,
            start_time: self
                .start
                .filter(|s| s.is_finite() && *s > 0.0)
                .and_then(|s| jiff::Timestamp::from_millisecond((s * 1000.0) as i64).ok()),
        })
    }
}

/// Parses `/metrics/resource` text scraped at `now`. Lines that are not samples of the
/// families metrics-server reads are ignored; a malformed line never fails the scrape.
pub fn parse(text: &str, now: jiff::Timestamp) -> Scrape {
    let mut node = Partial::default();
    let mut containers: BTreeMap<ContainerRef, Partial> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(sample) = parse_line(line) else {
            continue;
        };
        let ts = sample
            .timestamp_ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .unwrap_or(now);
        let container = || {
            let get = |k: &str| sample.labels.get(k).cloned().filter(|v| !v.is_empty());
            Some(ContainerRef {
                namespace: get("namespace")?,
                pod: get("pod")?,
                container: get("container")?,
            })
        };
        match sample.name.as_str() {
            "node_cpu_usage_seconds_total" => node.cpu = Some((sample.value, ts)),
            "node_memory_working_set_bytes" => node.memory = Some(sample.value),
            "container_cpu_usage_seconds_total" => {
                if let Some(c) = container() {
                    containers.entry(c).or_default().cpu = Some((sample.value, ts));
                }
            }
            "container_memory_working_set_bytes" => {
                if let Some(c) = container() {
                    containers.entry(c).or_default().memory = Some(sample.value);
                }
            }
            "container_start_time_seconds" => {
                if let Some(c) = container() {
                    containers.entry(c).or_default().start = Some(sample.value);
                }
            }
            _ => {}
        }
    }
    Scrape {
        node: node.point(),
        containers: containers
            .into_iter()
            .filter_map(|(k, p)| p.point().map(|p| (k, p)))
            .collect(),
    }
}

struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    timestamp_ms: Option<i64>,
}

/// One sample line: `name{k="v",...} value [timestamp]`.
fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_float(fields.next()?)?;
    let timestamp_ms = fields.next().and_then(|t| t.parse::<i64>().ok());
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `k="v",k2="v2"}` (after the `{`); returns the labels and the text after `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut chars = s.char_indices().peekable();
    loop {
        // Skip separators.
        while let Some((_, c)) = chars.peek() {
            if *c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let (i, c) = chars.next()?;
        if c == '}' {
            return Some((labels, &s[i + 1..]));
        }
        let key_start = i;
        let mut key_end = i + c.len_utf8();
        loop {
            let (j, c) = chars.next()?;
            if c == '=' {
                break;
            }
            key_end = j + c.len_utf8();
        }
        let key = s[key_start..key_end].trim().to_string();
        let (_, q) = chars.next()?;
        if q != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        labels.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What rk3s's kubelet (and upstream's) serves.
    pub const BODY: &str = r#"# HELP container_cpu_usage_seconds_total Cumulative CPU time used by the container, in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="web",namespace="default",pod="web-1"} 1.5 1700000000000
container_cpu_usage_seconds_total{container="side",namespace="default",pod="web-1"} 0.25 1700000000000
container_cpu_usage_seconds_total{container="only-cpu",namespace="default",pod="x"} 3 1700000000000
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="web",namespace="default",pod="web-1"} 1.048576e+06 1700000000000
container_memory_working_set_bytes{container="side",namespace="default",pod="web-1"} 2048 1700000000000
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="web",namespace="default",pod="web-1"} 1.69999999e+09 1700000000000
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 1234.5 1700000000500
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 5.36870912e+08 1700000000500
pod_cpu_usage_seconds_total{namespace="default",pod="web-1"} 1.75 1700000000000
resource_scrape_error 0
"#;

    #[test]
    fn reads_node_and_container_points() {
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let s = parse(BODY, now);
        let node = s.node.expect("node");
        assert_eq!(node.cumulative_cpu_ns, 1_234_500_000_000);
        assert_eq!(node.memory_bytes, 536_870_912);
        assert_eq!(node.timestamp.as_millisecond(), 1_700_000_000_500);
        // Containers need both CPU and memory.
        assert_eq!(s.containers.len(), 2);
        let web = &s.containers[&ContainerRef {
            namespace: "default".into(),
            pod: "web-1".into(),
            container: "web".into(),
        }];
        assert_eq!(web.cumulative_cpu_ns, 1_500_000_000);
        assert_eq!(web.memory_bytes, 1_048_576);
        assert_eq!(web.start_time.map(|t| t.as_second()), Some(1_699_999_990));
    }

    #[test]
    fn missing_timestamps_take_the_scrape_time_and_junk_is_ignored() {
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let s = parse(
            "node_cpu_usage_seconds_total 2\nnode_memory_working_set_bytes 10\ngarbage{\ncontainer_cpu_usage_seconds_total{container=\"a\\\"b\",namespace=\"n\",pod=\"p\"} x\n",
            now,
        );
        assert_eq!(s.node.map(|n| n.timestamp), Some(now));
        assert!(s.containers.is_empty());
        assert_eq!(parse("", now), Scrape::default());
        let labels = parse_labels(r#"a="x\"y",b="z\\"} 1"#).expect("labels");
        assert_eq!(labels.0["a"], "x\"y");
        assert_eq!(labels.0["b"], "z\\");
        assert_eq!(labels.1, " 1");
    }
}
