//! `/metrics` in the Prometheus text format: request counts and latencies by verb,
//! resource and code (upstream's `apiserver_request_total` and
//! `apiserver_request_duration_seconds`), objects in the watch cache, and the process's
//! memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// (verb, group, resource, subresource, code).
type RequestKey = (String, String, String, String, u16);

/// Request metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    durations: Mutex<BTreeMap<(String, String, String), Histogram>>,
}

impl Metrics {
    /// Records one request.
    pub fn record(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        code: u16,
        elapsed: Duration,
    ) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((
                verb.to_string(),
                group.to_string(),
                resource.to_string(),
                subresource.to_string(),
                code,
            ))
            .or_default() += 1;
        }
        if verb == "WATCH" {
            return;
        }
        if let Ok(mut m) = self.durations.lock() {
            let h = m
                .entry((verb.to_string(), group.to_string(), resource.to_string()))
                .or_default();
            let secs = elapsed.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        }
    }

    /// The exposition text.
    pub fn render(&self, cached_objects: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, resource, subresource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((verb, group, resource, sub, code), n) in m.iter() {
                let _ = writeln!(out, "apiserver_request_total{{code=\"{code}\",group=\"{group}\",resource=\"{resource}\",subresource=\"{sub}\",verb=\"{verb}\"}} {n}");
            }
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group and resource.\n# TYPE apiserver_request_duration_seconds histogram\n");
        if let Ok(m) = self.durations.lock() {
            for ((verb, group, resource), h) in m.iter() {
                let labels = format!("group=\"{group}\",resource=\"{resource}\",verb=\"{verb}\"");
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "apiserver_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_count{{{labels}}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(out, "# HELP apiserver_storage_objects Number of stored objects held by the watch cache.\n# TYPE apiserver_storage_objects gauge\napiserver_storage_objects {cached_objects}");
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}");
        }
        out
    }
}

/// This process's resident memory, from /proc.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record(
            "GET",
            "apps",
            "deployments",
            "",
            200,
            Duration::from_millis(3),
        );
        m.record(
            "GET",
            "apps",
            "deployments",
            "",
            200,
            Duration::from_millis(30),
        );
        let text = m.render(7);
        assert!(text.contains("apiserver_request_total{code=\"200\",group=\"apps\",resource=\"deployments\",subresource=\"\",verb=\"GET\"} 2"), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_bucket{group=\"apps\",resource=\"deployments\",verb=\"GET\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_count{group=\"apps\",resource=\"deployments\",verb=\"GET\"} 2"));
        assert!(text.contains("apiserver_storage_objects 7"));
    }
}
