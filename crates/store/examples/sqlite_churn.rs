//! Steady-state size of the embedded SQLite datastore under churn, compressed in time.
//!
//! Simulates a cluster's background writes on a fresh [`SqliteStore`]: every node's Lease
//! renewed every `--renew-seconds` (default 100 nodes every 10 s: 36,000 updates an
//! hour) and `--events-per-minute` new Events, and compacts as the server does (every
//! `--compact-minutes` of simulated time, keeping `--keep` revisions: k3s's 5 min and
//! 1000). Three scenarios, each on its own file: Leases only; Leases + Events kept
//! forever; Leases + Events deleted after `--event-ttl-minutes` (upstream's `--event-ttl`,
//! 1 h). Prints, every `--report-minutes` of simulated time, the live keys, the database
//! file and its WAL (just before that minute's compaction: the WAL at its largest), and the
//! largest database + WAL seen since the previous line. A benchmark: prints figures,
//! asserts nothing.
//!
//! Usage: `cargo run -p rk3s-store --example sqlite_churn -- [--hours 2] [--nodes 100]
//! [--renew-seconds 10] [--events-per-minute 60] [--event-ttl-minutes 60]
//! [--compact-minutes 5] [--keep 1000] [--report-minutes 10]`

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use rk3s_store::sqlite::SqliteStore;
use rk3s_store::{Revision, Store};

/// The simulation's settings (simulated time in seconds).
#[derive(Clone, Debug)]
struct Settings {
    hours: u64,
    nodes: usize,
    renew_seconds: u64,
    events_per_minute: u64,
    event_ttl_minutes: u64,
    compact_minutes: u64,
    keep: i64,
    report_minutes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hours: 2,
            nodes: 100,
            renew_seconds: 10,
            events_per_minute: 60,
            event_ttl_minutes: 60,
            compact_minutes: 5,
            keep: 1000,
            report_minutes: 10,
        }
    }
}

/// Parses `--name value` pairs into [`Settings`].
fn parse_args(args: impl Iterator<Item = String>) -> Result<Settings, String> {
    let mut s = Settings::default();
    let mut args = args;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|e| format!("{flag} {value:?}: {e}"))?;
        match flag.as_str() {
            "--hours" => s.hours = n,
            "--nodes" => s.nodes = n as usize,
            "--renew-seconds" => s.renew_seconds = n.max(1),
            "--events-per-minute" => s.events_per_minute = n,
            "--event-ttl-minutes" => s.event_ttl_minutes = n.max(1),
            "--compact-minutes" => s.compact_minutes = n.max(1),
            "--keep" => s.keep = i64::try_from(n).map_err(|e| format!("--keep: {e}"))?,
            "--report-minutes" => s.report_minutes = n.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(s)
}

/// What happens to Events in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Events {
    /// No Events are written.
    None,
    /// Events are created and never deleted.
    Kept,
    /// Events are deleted once older than the TTL.
    Ttl,
}

/// One size sample: simulated minute, revision, live keys, database and WAL bytes, and
/// the largest database + WAL seen since the previous sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    minute: u64,
    revision: Revision,
    live: usize,
    db: u64,
    wal: u64,
    peak: u64,
}

fn lease(node: usize, second: u64) -> Vec<u8> {
    let micros = second * 1_000_000 + (node as u64 % 1000) * 997;
    format!(
        r#"{{"kind":"Lease","apiVersion":"coordination.k8s.io/v1","metadata":{{"name":"node-{node}","namespace":"kube-node-lease","uid":"6f1c1f9e-5b7a-4c1d-9a8e-{node:012}","creationTimestamp":"2026-12-07T00:00:00Z","ownerReferences":[{{"apiVersion":"v1","kind":"Node","name":"node-{node}","uid":"0b8a3c7e-2d4f-4e6a-8b1c-{node:012}"}}],"managedFields":[{{"manager":"rk3s","operation":"Update","apiVersion":"coordination.k8s.io/v1","time":"2026-12-07T00:00:00Z","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:ownerReferences":{{}}}},"f:spec":{{"f:holderIdentity":{{}},"f:leaseDurationSeconds":{{}},"f:renewTime":{{}}}}}}}}]}},"spec":{{"holderIdentity":"node-{node}","leaseDurationSeconds":40,"renewTime":"{micros}"}}}}"#
    )
    .into_bytes()
}

fn event(n: u64, second: u64) -> Vec<u8> {
    let pad = "x".repeat(200);
    format!(
        r#"{{"kind":"Event","apiVersion":"v1","metadata":{{"name":"pod-{n}.{n:016x}","namespace":"default","uid":"3e5d1a2b-7c4f-4b8e-9d6a-{n:012}","creationTimestamp":"{second}"}},"involvedObject":{{"kind":"Pod","namespace":"default","name":"pod-{n}","uid":"9a7b6c5d-4e3f-4a1b-8c2d-{n:012}","apiVersion":"v1","resourceVersion":"{n}","fieldPath":"spec.containers{{c}}"}},"reason":"Pulled","message":"Container image \"registry.example/app:1\" already present on machine {pad}","source":{{"component":"kubelet","host":"node-{}"}},"firstTimestamp":"{second}","lastTimestamp":"{second}","count":1,"type":"Normal","reportingComponent":"kubelet","reportingInstance":"node-{}"}}"#,
        n % 100,
        n % 100
    )
    .into_bytes()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Runs one scenario on a fresh file in `dir`; returns its samples.
async fn scenario(
    s: &Settings,
    events: Events,
    dir: &Path,
) -> Result<Vec<Sample>, Box<dyn std::error::Error>> {
    let path = dir.join("state.db");
    let wal = dir.join("state.db-wal");
    let store = Arc::new(SqliteStore::open(&path)?);
    // Leases exist from the start (the nodes registered).
    let mut revs = Vec::with_capacity(s.nodes);
    for node in 0..s.nodes {
        let kv = store
            .create(
                &format!("/registry/leases/kube-node-lease/node-{node}"),
                lease(node, 0),
            )
            .await?;
        revs.push(kv.mod_revision);
    }
    let mut live_events: VecDeque<(u64, String)> = VecDeque::new();
    let mut next_event = 0u64;
    let mut event_debt = 0u64;
    let mut samples = Vec::new();
    let mut peak = 0;
    let end = s.hours * 3600;
    let mut second = 0;
    while second < end {
        second += s.renew_seconds;
        // Every node renews its Lease once per period, all at once (one write batch).
        let updates = revs.iter().enumerate().map(|(node, rev)| {
            let store = Arc::clone(&store);
            let key = format!("/registry/leases/kube-node-lease/node-{node}");
            let value = lease(node, second);
            let rev = *rev;
            async move { store.update(&key, value, rev).await }
        });
        for (node, result) in join_all(updates).await.into_iter().enumerate() {
            revs[node] = result?.mod_revision;
        }
        if events != Events::None {
            event_debt += s.events_per_minute * s.renew_seconds;
            while event_debt >= 60 {
                event_debt -= 60;
                let key = format!("/registry/events/default/ev-{next_event}");
                store.create(&key, event(next_event, second)).await?;
                live_events.push_back((second, key));
                next_event += 1;
            }
            if events == Events::Ttl {
                while let Some((born, key)) = live_events.front() {
                    if second - born < s.event_ttl_minutes * 60 {
                        break;
                    }
                    store.delete(key, None).await?;
                    live_events.pop_front();
                }
            }
        }
        peak = peak.max(file_size(&path) + file_size(&wal));
        // Sampled before the compaction that may fall on the same tick: the WAL at its
        // largest.
        if second % (s.report_minutes * 60) < s.renew_seconds {
            samples.push(Sample {
                minute: second / 60,
                revision: store.current_revision().await?,
                live: s.nodes + live_events.len(),
                db: file_size(&path),
                wal: file_size(&wal),
                peak,
            });
            peak = 0;
        }
        // The server's compactor: every interval, keep `keep` revisions.
        if second % (s.compact_minutes * 60) < s.renew_seconds {
            let target = store.current_revision().await? - s.keep;
            if target > store.compacted_revision().await? {
                store.compact(target).await?;
            }
        }
    }
    Ok(samples)
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let s = parse_args(std::env::args().skip(1))?;
    println!(
        "SQLite datastore under churn: {} nodes renewing Leases every {} s ({} updates per simulated hour), \
         {} Events/min; compaction every {} simulated min keeping {} revisions",
        s.nodes,
        s.renew_seconds,
        s.nodes as u64 * 3600 / s.renew_seconds,
        s.events_per_minute,
        s.compact_minutes,
        s.keep
    );
    let scenarios = [
        ("Leases only", Events::None),
        ("+ Events kept forever", Events::Kept),
        ("+ Events, 1 h TTL", Events::Ttl),
    ];
    let mut results = Vec::new();
    for (name, events) in scenarios {
        let dir = tempfile::Builder::new()
            .prefix("rk3s-sqlite-churn-")
            .tempdir()?;
        let t = Instant::now();
        let samples = scenario(&s, events, dir.path()).await?;
        let last = samples.last().map(|x| x.revision).unwrap_or(0);
        println!(
            "  {name}: {last} revisions written in {:.1} s of real time",
            t.elapsed().as_secs_f64()
        );
        results.push((name, samples));
    }
    print!("  {:>8}", "sim. min");
    for (name, _) in &results {
        print!(" | {name:^41}");
    }
    println!();
    print!("  {:>8}", "");
    for _ in &results {
        print!(" | {:>6} {:>10} {:>10} {:>10}", "keys", "db", "wal", "peak");
    }
    println!();
    let rows = results.iter().map(|(_, v)| v.len()).min().unwrap_or(0);
    for i in 0..rows {
        print!("  {:>8}", results[0].1[i].minute);
        for (_, samples) in &results {
            let x = samples[i];
            print!(
                " | {:>6} {:>10} {:>10} {:>10}",
                x.live,
                kib(x.db),
                kib(x.wal),
                kib(x.peak)
            );
        }
        println!();
    }
    Ok(())
}
