//! Socket tests: the server on 127.0.0.1:<free port>, queried over UDP and TCP with raw
//! hickory-proto messages; forwarding against fake upstream servers the tests run on
//! 127.0.0.1 (never any other address).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rk3s_dns::{
    serve, DnsServer, ForwardConfig, Forwarder, Records, RecordsConfig, RecordsHandle, Sources,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const LOCAL: &str = "127.0.0.1:0";

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn cluster_ip(ns: &str, name: &str, ip: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
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

fn headless_with(ns: &str, name: &str, n: usize) -> (Service, EndpointSlice) {
    let svc = Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut m = meta(ns, &format!("{name}-x"));
    m.labels = Some(
        [("kubernetes.io/service-name".to_string(), name.to_string())]
            .into_iter()
            .collect(),
    );
    let slice = EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: (0..n)
            .map(|i| Endpoint {
                addresses: vec![format!("10.42.{}.{}", i / 250, i % 250 + 1)],
                ..Default::default()
            })
            .collect(),
        ports: None,
    };
    (svc, slice)
}

fn external(ns: &str, name: &str, target: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(target.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

async fn start(sources: Sources, forwarder: Forwarder) -> (DnsServer, SocketAddr) {
    let cfg = RecordsConfig::new("cluster.local", 5).unwrap();
    let handle = Arc::new(RecordsHandle::new(Records::build(&cfg, &sources)));
    let server = serve(&[LOCAL.parse().unwrap()], handle, Arc::new(forwarder))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    (server, addr)
}

fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> (u16, Vec<u8>) {
    let id = 4242;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n(name), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    (id, m.to_vec().unwrap())
}

async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind(LOCAL).await.unwrap();
    s.connect(server).await.unwrap();
    s.send(bytes).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(len)) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

async fn udp(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> (Message, usize) {
    let (id, bytes) = query_bytes(name, qtype, edns);
    let raw = udp_raw(server, &bytes, Duration::from_secs(5))
        .await
        .expect("an answer over UDP");
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.id, id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    (m, raw.len())
}

async fn tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let (id, bytes) = query_bytes(name, qtype, None);
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    s.write_all(&out).await.unwrap();
    let mut lb = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut lb))
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(lb) as usize];
    s.read_exact(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf).unwrap();
    assert_eq!(m.metadata.id, id);
    m
}

fn answer_data(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// A DNS server for tests on 127.0.0.1 (UDP and TCP on one port) answering with
/// `respond(query, over_tcp)`; counts the queries it got.
struct FakeUpstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    _tasks: tokio::task::JoinSet<()>,
}

type Respond = fn(&Message, bool) -> Option<Message>;

async fn fake_upstream(respond: Respond) -> FakeUpstream {
    // A free UDP port can be a busy TCP port (another test's listener): try another.
    let mut attempt = 0;
    let (udp, addr, tcp) = loop {
        let udp = UdpSocket::bind(LOCAL).await.unwrap();
        let addr = udp.local_addr().unwrap();
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, addr, tcp),
            Err(e) if attempt < 20 => {
                attempt += 1;
                eprintln!(
                    "fake upstream: TCP port {} busy ({e}); another port",
                    addr.port()
                );
            }
            Err(e) => panic!("no port free for UDP and TCP: {e}"),
        }
    };
    let queries = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let q = queries.clone();
    tasks.spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            q.fetch_add(1, Ordering::SeqCst);
            let Ok(m) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            if let Some(r) = respond(&m, false) {
                let _ = udp.send_to(&r.to_vec().unwrap(), from).await;
            }
        }
    });
    let q = queries.clone();
    tasks.spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            q.fetch_add(1, Ordering::SeqCst);
            let mut lb = [0u8; 2];
            if s.read_exact(&mut lb).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; u16::from_be_bytes(lb) as usize];
            if s.read_exact(&mut buf).await.is_err() {
                continue;
            }
            let Ok(m) = Message::from_vec(&buf) else {
                continue;
            };
            if let Some(r) = respond(&m, true) {
                let bytes = r.to_vec().unwrap();
                let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&bytes);
                let _ = s.write_all(&out).await;
            }
        }
    });
    FakeUpstream {
        addr,
        queries,
        _tasks: tasks,
    }
}

/// The zone the fake upstreams serve.
fn test_zone(q: &Message, tcp: bool) -> Option<Message> {
    let query = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_available = true;
    m.add_query(query.clone());
    let name = query.name().to_lowercase().to_ascii();
    let a = |ip: Ipv4Addr, ttl: u32| Record::from_rdata(query.name().clone(), ttl, RData::A(A(ip)));
    match (name.as_str(), query.query_type()) {
        ("example.test.", RecordType::A) => {
            m.add_answer(a(Ipv4Addr::new(192, 0, 2, 1), 60));
        }
        ("www.example.test.", RecordType::A) => {
            m.add_answer(a(Ipv4Addr::new(192, 0, 2, 80), 60));
        }
        ("big.test.", RecordType::A) => {
            if tcp {
                for i in 0..60 {
                    m.add_answer(a(Ipv4Addr::new(192, 0, 2, i), 60));
                }
            } else {
                m.metadata.truncation = true;
            }
        }
        _ => {
            m.metadata.response_code = ResponseCode::NXDomain;
            let soa = SOA::new(n("ns.test."), n("admin.test."), 1, 3600, 600, 86400, 30);
            m.add_authority(Record::from_rdata(n("test."), 30, RData::SOA(soa)));
        }
    }
    Some(m)
}

fn stub_zone(q: &Message, _tcp: bool) -> Option<Message> {
    let query = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.add_query(query.clone());
    m.add_answer(Record::from_rdata(
        query.name().clone(),
        60,
        RData::A(A(Ipv4Addr::new(198, 51, 100, 7))),
    ));
    Some(m)
}

fn short_timeouts() -> ForwardConfig {
    ForwardConfig {
        timeout: Duration::from_millis(300),
        total_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

#[tokio::test]
async fn cluster_names_over_udp_and_tcp() {
    let (_server, addr) = start(
        Sources {
            services: vec![Arc::new(cluster_ip("default", "web", "10.43.0.20"))],
            ..Default::default()
        },
        Forwarder::new(vec![]),
    )
    .await;
    let (m, _) = udp(addr, "Web.Default.svc.cluster.local.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert_eq!(
        m.queries[0].name().to_string(),
        "Web.Default.svc.cluster.local.",
        "the question is echoed as asked"
    );
    assert_eq!(answer_data(&m), vec!["10.43.0.20"]);
    assert_eq!(m.answers[0].ttl, 5);

    let t = tcp(addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer_data(&t), vec!["10.43.0.20"]);

    let (srv, _) = udp(
        addr,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        Some(1232),
    )
    .await;
    assert_eq!(
        answer_data(&srv),
        vec!["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(srv.additionals.len(), 1);
    assert!(srv.edns.is_some(), "EDNS is answered with EDNS");

    let (ptr, _) = udp(addr, "20.0.43.10.in-addr.arpa.", RecordType::PTR, None).await;
    assert_eq!(answer_data(&ptr), vec!["web.default.svc.cluster.local."]);

    let (nx, _) = udp(addr, "nope.default.svc.cluster.local.", RecordType::A, None).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);

    let (nodata, _) = udp(
        addr,
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
        None,
    )
    .await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities.len(), 1);
}

#[tokio::test]
async fn udp_answers_are_truncated_to_the_client_size_and_tcp_is_whole() {
    let (svc, slice) = headless_with("default", "many", 100);
    let (_server, addr) = start(
        Sources {
            services: vec![Arc::new(svc)],
            endpoint_slices: vec![Arc::new(slice)],
            ..Default::default()
        },
        Forwarder::new(vec![]),
    )
    .await;
    let name = "many.default.svc.cluster.local.";

    let (m, len) = udp(addr, name, RecordType::A, None).await;
    assert!(
        m.metadata.truncation,
        "100 A records do not fit in 512 bytes"
    );
    assert!(len <= 512, "{len}");
    assert!(m.answers.len() < 100);

    let (m, len) = udp(addr, name, RecordType::A, Some(1232)).await;
    assert!(m.metadata.truncation);
    assert!(len <= 1232, "{len}");

    let (m, len) = udp(addr, name, RecordType::A, Some(4096)).await;
    assert!(!m.metadata.truncation, "fits in 4096 bytes ({len})");
    assert_eq!(m.answers.len(), 100);

    let t = tcp(addr, name, RecordType::A).await;
    assert!(!t.metadata.truncation);
    assert_eq!(t.answers.len(), 100);
}

#[tokio::test]
async fn forwarding_with_cache_and_negative_cache() {
    let up = fake_upstream(test_zone).await;
    let (_server, addr) = start(
        Sources::default(),
        Forwarder::with_config(vec![up.addr], short_timeouts()),
    )
    .await;

    let (m, _) = udp(addr, "example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        !m.metadata.authoritative,
        "forwarded answers are not authoritative"
    );
    assert_eq!(answer_data(&m), vec!["192.0.2.1"]);
    assert_eq!(up.queries.load(Ordering::SeqCst), 1);
    let (m, _) = udp(addr, "EXAMPLE.test.", RecordType::A, None).await;
    assert_eq!(answer_data(&m), vec!["192.0.2.1"]);
    assert!(m.answers[0].ttl <= 30, "cached TTLs are capped at 30 s");
    assert_eq!(
        up.queries.load(Ordering::SeqCst),
        1,
        "second answer from the cache"
    );

    let (m, _) = udp(addr, "missing.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities.len(), 1);
    let (m, _) = udp(addr, "missing.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        up.queries.load(Ordering::SeqCst),
        2,
        "NXDOMAIN cached by its SOA"
    );

    // The cluster domain is never forwarded.
    let (m, _) = udp(addr, "example.test.cluster.local.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(up.queries.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_upstream_is_servfail() {
    let (_server, addr) = start(Sources::default(), Forwarder::new(vec![])).await;
    let (m, _) = udp(addr, "example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn silent_upstream_is_skipped_and_rotated_away() {
    // A socket that never answers.
    let silent = UdpSocket::bind(LOCAL).await.unwrap();
    let up = fake_upstream(test_zone).await;
    let (_server, addr) = start(
        Sources::default(),
        Forwarder::with_config(
            vec![silent.local_addr().unwrap(), up.addr],
            short_timeouts(),
        ),
    )
    .await;
    let t0 = Instant::now();
    let (m, _) = udp(addr, "example.test.", RecordType::A, None).await;
    assert_eq!(answer_data(&m), vec!["192.0.2.1"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "the first server was waited for"
    );
    // The next query starts at the server that worked.
    let t1 = Instant::now();
    let (m, _) = udp(addr, "www.example.test.", RecordType::A, None).await;
    assert_eq!(answer_data(&m), vec!["192.0.2.80"]);
    assert!(
        t1.elapsed() < Duration::from_millis(250),
        "{:?}",
        t1.elapsed()
    );
    drop(silent);
}

#[tokio::test]
async fn truncated_upstream_answer_is_retried_over_tcp() {
    let up = fake_upstream(test_zone).await;
    let (_server, addr) = start(
        Sources::default(),
        Forwarder::with_config(vec![up.addr], short_timeouts()),
    )
    .await;
    let t = tcp(addr, "big.test.", RecordType::A).await;
    assert_eq!(t.metadata.response_code, ResponseCode::NoError);
    assert_eq!(t.answers.len(), 60);
    assert_eq!(
        up.queries.load(Ordering::SeqCst),
        2,
        "one UDP query, one TCP query"
    );
    // Over UDP without EDNS the same (now cached) answer is truncated for the client.
    let (m, _) = udp(addr, "big.test.", RecordType::A, None).await;
    assert!(m.metadata.truncation);
}

#[tokio::test]
async fn external_name_is_chased_through_forwarding() {
    let up = fake_upstream(test_zone).await;
    let (_server, addr) = start(
        Sources {
            services: vec![Arc::new(external("default", "ext", "www.example.test"))],
            ..Default::default()
        },
        Forwarder::with_config(vec![up.addr], short_timeouts()),
    )
    .await;
    let (m, _) = udp(addr, "ext.default.svc.cluster.local.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(m.answers[0].data.to_string(), "www.example.test.");
    assert_eq!(m.answers[1].name.to_string(), "www.example.test.");
    assert_eq!(m.answers[1].data.to_string(), "192.0.2.80");
    // Asking for the CNAME itself does not forward.
    let before = up.queries.load(Ordering::SeqCst);
    let (m, _) = udp(
        addr,
        "ext.default.svc.cluster.local.",
        RecordType::CNAME,
        None,
    )
    .await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(up.queries.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn stub_domains_and_upstream_override_from_the_configmap() {
    let main = fake_upstream(test_zone).await;
    let stub = fake_upstream(stub_zone).await;
    let override_up = fake_upstream(test_zone).await;
    let cm = ConfigMap {
        metadata: meta("kube-system", "coredns-custom"),
        data: Some(
            [
                (
                    "stubDomains".to_string(),
                    format!(r#"{{"corp.test": ["{}"]}}"#, stub.addr),
                ),
                (
                    "upstreamNameservers".to_string(),
                    format!(r#"["{}"]"#, override_up.addr),
                ),
                (
                    "nodes.hosts".to_string(),
                    "10.1.2.3 registry.corp.example\n".to_string(),
                ),
            ]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    };
    let (_server, addr) = start(
        Sources {
            custom: Some(Arc::new(cm)),
            ..Default::default()
        },
        Forwarder::with_config(vec![main.addr], short_timeouts()),
    )
    .await;
    let (m, _) = udp(addr, "git.corp.test.", RecordType::A, None).await;
    assert_eq!(answer_data(&m), vec!["198.51.100.7"]);
    assert_eq!(stub.queries.load(Ordering::SeqCst), 1);
    let (m, _) = udp(addr, "example.test.", RecordType::A, None).await;
    assert_eq!(answer_data(&m), vec!["192.0.2.1"]);
    assert_eq!(override_up.queries.load(Ordering::SeqCst), 1);
    assert_eq!(
        main.queries.load(Ordering::SeqCst),
        0,
        "upstreamNameservers replaces resolv.conf"
    );
    let (m, _) = udp(addr, "registry.corp.example.", RecordType::A, None).await;
    assert_eq!(answer_data(&m), vec!["10.1.2.3"]);
    assert!(m.metadata.authoritative);
}

#[tokio::test]
async fn malformed_packets_are_dropped_or_formerr_and_the_server_lives_on() {
    let (_server, addr) = start(
        Sources {
            services: vec![Arc::new(cluster_ip("default", "web", "10.43.0.20"))],
            ..Default::default()
        },
        Forwarder::new(vec![]),
    )
    .await;
    // Shorter than a header: dropped.
    assert!(udp_raw(addr, &[1, 2, 3, 4, 5], Duration::from_millis(300))
        .await
        .is_none());
    // A header claiming one question that is not there: FORMERR.
    let header = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let raw = udp_raw(addr, &header, Duration::from_secs(2))
        .await
        .expect("an answer");
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // No question at all: FORMERR.
    let header = [0x12, 0x35, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    let raw = udp_raw(addr, &header, Duration::from_secs(2))
        .await
        .expect("an answer");
    assert_eq!(
        Message::from_vec(&raw).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // Random garbage of header size and more.
    for len in [12usize, 40, 300, 1500] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let _ = udp_raw(addr, &junk, Duration::from_millis(200)).await;
    }
    // A response message sent to us is not answered (no reflection).
    let mut resp = Message::new(7, MessageType::Response, OpCode::Query);
    resp.add_query(Query::query(
        n("web.default.svc.cluster.local."),
        RecordType::A,
    ));
    assert!(
        udp_raw(addr, &resp.to_vec().unwrap(), Duration::from_millis(300))
            .await
            .is_none()
    );
    // Garbage over TCP closes that connection only.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&[0, 3, 1, 2, 3]).await;
    drop(s);
    // Still serving.
    let (m, _) = udp(addr, "web.default.svc.cluster.local.", RecordType::A, None).await;
    assert_eq!(answer_data(&m), vec!["10.43.0.20"]);
}

#[tokio::test]
async fn other_classes_are_refused() {
    let (_server, addr) = start(Sources::default(), Forwarder::new(vec![])).await;
    let mut m = Message::new(99, MessageType::Query, OpCode::Query);
    let mut q = Query::query(n("version.bind."), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    m.add_query(q);
    let raw = udp_raw(addr, &m.to_vec().unwrap(), Duration::from_secs(2))
        .await
        .expect("an answer");
    assert_eq!(
        Message::from_vec(&raw).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let (server, addr) = start(Sources::default(), Forwarder::new(vec![])).await;
    server.shutdown().await.unwrap();
    let (_, bytes) = query_bytes("dns-version.cluster.local.", RecordType::TXT, None);
    assert!(udp_raw(addr, &bytes, Duration::from_millis(300))
        .await
        .is_none());
}
