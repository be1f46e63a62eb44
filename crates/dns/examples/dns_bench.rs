//! DNS benchmark: queries per second and p50/p99 latency of cluster-name A queries from
//! concurrent UDP clients.
//!
//! Without `--server`, it starts the rk3s cluster DNS on 127.0.0.1 (free port) with
//! 1,000 ClusterIP Services in memory and queries their names; with `--server ADDR` it
//! queries that server instead (e.g. the cluster DNS address, run from a pod), asking for
//! `--name` (default `kubernetes.default.svc.cluster.local.`).
//!
//! Usage: `cargo run --release -p rk3s-dns --example dns_bench -- [--seconds 5]
//! [--clients 8] [--services 1000] [--server ADDR] [--name NAME]`
//!
//! Prints one line of figures. Each client sends one query at a time and waits up to
//! 1 s for its answer; the run stops by itself after `--seconds`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rk3s_dns::{serve, Forwarder, Records, RecordsConfig, RecordsHandle, Sources};
use tokio::net::UdpSocket;

struct Args {
    seconds: u64,
    clients: usize,
    services: usize,
    server: Option<SocketAddr>,
    name: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 5,
        clients: 8,
        services: 1000,
        server: None,
        name: "kubernetes.default.svc.cluster.local.".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--clients" => a.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--services" => {
                a.services = value()?.parse().map_err(|e| format!("--services: {e}"))?
            }
            "--server" => {
                a.server = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--server (IP:port): {e}"))?,
                )
            }
            "--name" => a.name = value()?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.clients == 0 || a.seconds == 0 || a.services == 0 {
        return Err("--seconds, --clients and --services must be > 0".into());
    }
    Ok(a)
}

fn service(i: usize) -> Service {
    let ip = format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250);
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
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[derive(Default)]
struct ClientStats {
    latencies_us: Vec<u32>,
    timeouts: u64,
    errors: u64,
}

async fn client(
    server: SocketAddr,
    names: Arc<Vec<Name>>,
    first: usize,
    step: usize,
    deadline: Instant,
) -> ClientStats {
    let mut st = ClientStats::default();
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(server)
    } else {
        "[::]:0".parse().unwrap_or(server)
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(_) => {
            st.errors += 1;
            return st;
        }
    };
    if sock.connect(server).await.is_err() {
        st.errors += 1;
        return st;
    }
    let mut buf = vec![0u8; 4096];
    let mut i = first;
    let mut id: u16 = (first as u16).wrapping_mul(7919);
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        let name = &names[i % names.len()];
        i += step;
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name.clone(), RecordType::A));
        let Ok(bytes) = m.to_vec() else {
            st.errors += 1;
            continue;
        };
        let t0 = Instant::now();
        if sock.send(&bytes).await.is_err() {
            st.errors += 1;
            continue;
        }
        let got = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if let Ok(resp) = Message::from_vec(&buf[..n]) {
                    if resp.metadata.id == id {
                        return Some(resp);
                    }
                }
            }
        })
        .await;
        match got {
            Ok(Some(resp)) => {
                st.latencies_us
                    .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                if resp.metadata.response_code != ResponseCode::NoError || resp.answers.is_empty() {
                    st.errors += 1;
                }
            }
            Ok(None) => st.errors += 1,
            Err(_) => st.timeouts += 1,
        }
    }
    st
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("dns_bench: {e}");
            }
            eprintln!("usage: dns_bench [--seconds 5] [--clients 8] [--services 1000] [--server ADDR] [--name NAME]");
            std::process::exit(2);
        }
    };

    let mut _server = None;
    let (target, names, services) = match args.server {
        Some(addr) => match Name::from_ascii(&args.name) {
            Ok(n) => (addr, vec![n], 0),
            Err(e) => {
                eprintln!("dns_bench: --name: {e}");
                std::process::exit(2);
            }
        },
        None => {
            let cfg = match RecordsConfig::new("cluster.local", 5) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("dns_bench: {e}");
                    std::process::exit(1);
                }
            };
            let sources = Sources {
                services: (0..args.services).map(|i| Arc::new(service(i))).collect(),
                ..Default::default()
            };
            let records = Records::build(&cfg, &sources);
            let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
            let server = match serve(
                &[listen],
                Arc::new(RecordsHandle::new(records)),
                Arc::new(Forwarder::new(vec![])),
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dns_bench: {e}");
                    std::process::exit(1);
                }
            };
            let addr = server.local_addrs()[0];
            _server = Some(server);
            let names = (0..args.services)
                .filter_map(|i| Name::from_ascii(format!("svc-{i}.bench.svc.cluster.local.")).ok())
                .collect();
            (addr, names, args.services)
        }
    };

    let names = Arc::new(names);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| tokio::spawn(client(target, names.clone(), c, args.clients, deadline)))
        .collect();
    let mut all = ClientStats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.latencies_us.extend(s.latencies_us);
            all.timeouts += s.timeouts;
            all.errors += s.errors;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let answered = all.latencies_us.len();
    println!(
        "dns_bench server={target} services={services} clients={} seconds={:.1} queries={answered} qps={:.0} p50_us={} p99_us={} timeouts={} errors={}",
        args.clients,
        elapsed,
        answered as f64 / elapsed,
        percentile(&all.latencies_us, 0.50),
        percentile(&all.latencies_us, 0.99),
        all.timeouts,
        all.errors
    );
}
