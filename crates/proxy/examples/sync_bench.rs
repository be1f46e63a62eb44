//! Sync benchmark of the Service proxy with the real `nft`, inside a network namespace of
//! its own (deleted at the end, also on panic).
//!
//! For each N of `--services` it builds N Services with `--endpoints` M endpoints each (as
//! Service + EndpointSlice objects, through the model), applies a full sync, then changes
//! ONE Service's endpoints `--changes` K times and prints: full sync time and size,
//! p50/p99 incremental sync time and the incremental transaction size.
//!
//! Usage (as root): `cargo run --release -p rk3s-proxy --example sync_bench -- \
//!   --services 1000,5000,10000 --endpoints 10 --changes 20`

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rk3s_proxy::model::{proxied_service, Cidr, IpFamily, ProxiedService, SERVICE_NAME_LABEL};
use rk3s_proxy::render::RenderConfig;
use rk3s_proxy::sync::FamilyProxier;
use rk3s_proxy::{Nft, NftRunner};

const TABLE: &str = "rk3s-proxy";

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn service(i: usize) -> Service {
    let ip = format!("10.43.{}.{}", i / 250, i % 250 + 1);
    Service {
        metadata: ObjectMeta {
            namespace: Some("bench".into()),
            name: Some(format!("svc-{i}")),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The EndpointSlice of Service `i` with `m` endpoints; `generation` shifts the addresses
/// of the first endpoint so each change is a real endpoint change.
fn slice(i: usize, m: usize, generation: usize) -> Arc<EndpointSlice> {
    let endpoints = (0..m)
        .map(|j| {
            let n = i * m + j + if j == 0 { generation * 7919 } else { 0 };
            Endpoint {
                addresses: vec![format!(
                    "10.{}.{}.{}",
                    42 + (n / 62_500) % 100,
                    (n / 250) % 250,
                    n % 250 + 1
                )],
                node_name: Some(format!("node-{}", j % 3)),
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            }
        })
        .collect();
    Arc::new(EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some("bench".into()),
            name: Some(format!("svc-{i}-abcde")),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), format!("svc-{i}"))].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(8080),
            ..Default::default()
        }]),
    })
}

fn model(i: usize, m: usize, generation: usize) -> ProxiedService {
    match proxied_service(
        &service(i),
        &[slice(i, m, generation)],
        "node-0",
        IpFamily::V4,
    ) {
        Ok(Some(p)) => p,
        other => panic!("bad model for svc-{i}: {other:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut services = vec![1000usize, 5000, 10000];
    let mut endpoints = 10usize;
    let mut changes = 20usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--services" => {
                services = value
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            }
            "--endpoints" => endpoints = value.parse().unwrap_or(endpoints),
            "--changes" => changes = value.parse().unwrap_or(changes).max(1),
            other => {
                eprintln!("unknown argument {other}; usage: sync_bench [--services 1000,5000,10000] [--endpoints 10] [--changes 20]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Nft::host().available() {
        eprintln!("SKIP: sync_bench needs root and nft");
        return;
    }
    let ns = Netns(format!("rk3sh-proxy-bench-{}", std::process::id()));
    if !Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP: cannot create network namespace {}", ns.0);
        return;
    }
    let nft = Nft::in_netns(&ns.0);
    println!(
        "# proxy sync benchmark: nft {} ; {} endpoints per Service; {} single-Service changes",
        nft_version(),
        endpoints,
        changes
    );
    for &n in &services {
        let cfg = RenderConfig {
            family: IpFamily::V4,
            cluster_cidr: Cidr::parse("10.42.0.0/16"),
            node_ips: vec![],
            service_cidr: None,
        };
        let mut p = FamilyProxier::new(TABLE, cfg);
        let t = Instant::now();
        let models: Vec<ProxiedService> = (0..n).map(|i| model(i, endpoints, 0)).collect();
        let model_time = t.elapsed();

        let t = Instant::now();
        let plan = p.plan_full(models.iter(), Instant::now());
        let full_bytes = plan.script.len();
        if let Err(e) = nft.apply(&plan.script) {
            eprintln!("full sync of {n} Services failed: {e}");
            std::process::exit(1);
        }
        p.commit(plan, Instant::now());
        let full_time = t.elapsed();

        let key = models[0].key.clone();
        let mut times = Vec::with_capacity(changes);
        let mut bytes = Vec::with_capacity(changes);
        for g in 1..=changes {
            let m = model(0, endpoints, g);
            let t = Instant::now();
            let plan = p.plan_incremental(&[(key.clone(), Some(&m))], Instant::now());
            bytes.push(plan.script.len());
            if let Err(e) = nft.apply(&plan.script) {
                eprintln!("incremental sync failed: {e}");
                std::process::exit(1);
            }
            p.commit(plan, Instant::now());
            times.push(t.elapsed());
        }
        times.sort();
        bytes.sort();
        println!(
            "services={n} endpoints={endpoints} model_ms={:.1} full_sync_ms={:.1} full_bytes={full_bytes} incremental_p50_ms={:.1} incremental_p99_ms={:.1} incremental_bytes={}",
            ms(model_time),
            ms(full_time),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            bytes[bytes.len() / 2],
        );
        let _ = nft.apply(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"));
    }
}

fn nft_version() -> String {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
