//! Forwarding of names that are not the cluster's to upstream resolvers, with a small
//! cache.
//!
//! A query goes over UDP (EDNS, 1232-byte payload) from a fresh socket (random source
//! port) with a random ID; a truncated answer is asked again over TCP on the same server.
//! A server that times out (2 s by default), fails, or answers SERVFAIL/REFUSED/NOTIMP is
//! skipped for the next one, and later queries start at the server after the one that
//! failed (rotation). Answers are checked against the question (ID, name, type) and
//! everything else arriving on the socket is ignored. With no server at all the caller
//! answers SERVFAIL.
//!
//! The cache holds at most `cache_entries` answers keyed by (name, type, class): positive
//! answers for their smallest TTL, NXDOMAIN/NODATA for the SOA's negative TTL, both capped
//! at `max_ttl` (30 s, k3s's `cache 30`); SERVFAIL and other errors are never cached.
//! Cached answers are served with their TTLs counted down. When full, the oldest entry is
//! evicted first.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::records::{Reply, Upstream};

/// Tunables of the [`Forwarder`].
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// How long one server gets to answer one exchange (UDP, then TCP on truncation).
    pub timeout: Duration,
    /// How long one forwarded query may take over all servers.
    pub total_timeout: Duration,
    /// The most answers the cache holds.
    pub cache_entries: usize,
    /// The longest a cached answer is kept (seconds).
    pub max_ttl: u32,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(5),
            cache_entries: 10_000,
            max_ttl: 30,
        }
    }
}

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream nameserver is configured.
    #[error("no upstream nameserver configured")]
    NoUpstream,
    /// Every server failed or timed out.
    #[error("no upstream answered: {0}")]
    AllFailed(String),
}

/// The forwarding client shared by every query of a server.
#[derive(Debug)]
pub struct Forwarder {
    cfg: ForwardConfig,
    resolv: RwLock<Arc<[SocketAddr]>>,
    rotate: AtomicUsize,
    ids: AtomicU64,
    cache: Mutex<Cache>,
}

impl Forwarder {
    /// A forwarder whose default upstreams are `resolv` (from resolv.conf), with the
    /// default configuration.
    pub fn new(resolv: Vec<SocketAddr>) -> Self {
        Forwarder::with_config(resolv, ForwardConfig::default())
    }

    /// A forwarder with explicit tunables.
    pub fn with_config(resolv: Vec<SocketAddr>, cfg: ForwardConfig) -> Self {
        let cache = Mutex::new(Cache::new(cfg.cache_entries));
        Forwarder {
            cfg,
            resolv: RwLock::new(resolv.into()),
            rotate: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            cache,
        }
    }

    /// Replaces the default upstreams (resolv.conf changed).
    pub fn set_resolv_upstreams(&self, servers: Vec<SocketAddr>) {
        let new: Arc<[SocketAddr]> = servers.into();
        match self.resolv.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// The default upstreams in use.
    pub fn resolv_upstreams(&self) -> Arc<[SocketAddr]> {
        match self.resolv.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many answers the cache holds now.
    pub fn cached(&self) -> usize {
        self.lock_cache().map.len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        match self.cache.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn random_id(&self) -> u16 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(self.ids.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    /// Resolves `name`/`qtype`/`qclass` through `upstream` (or the cache). The reply is
    /// not authoritative; its records are the upstream's.
    pub async fn forward(
        &self,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
        upstream: &Upstream,
    ) -> Result<Reply, ForwardError> {
        let key = CacheKey {
            name: name.to_lowercase(),
            qtype,
            qclass,
        };
        if let Some(r) = self.lock_cache().get(&key, Instant::now()) {
            return Ok(r);
        }
        let servers = match upstream {
            Upstream::Default => self.resolv_upstreams(),
            Upstream::Servers(s) => s.clone(),
        };
        if servers.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let id = self.random_id();
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        let mut q = Query::query(name.clone(), qtype);
        q.set_query_class(qclass);
        msg.add_query(q);
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        msg.set_edns(edns);
        let bytes = msg
            .to_vec()
            .map_err(|e| ForwardError::AllFailed(format!("encoding the query: {e}")))?;

        let deadline = Instant::now() + self.cfg.total_timeout;
        let n = servers.len();
        let start = self.rotate.load(Ordering::Relaxed) % n;
        let mut fallback: Option<Message> = None;
        let mut last_err = String::from("no server tried");
        for i in 0..n {
            let now = Instant::now();
            if now >= deadline {
                last_err = "time budget spent".into();
                break;
            }
            let idx = (start + i) % n;
            let server = servers[idx];
            let t = self.cfg.timeout.min(deadline - now);
            match exchange(server, &bytes, id, name, qtype, t).await {
                Ok(m)
                    if matches!(
                        m.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp
                    ) =>
                {
                    tracing::debug!(%server, %name, rcode = %m.metadata.response_code, "upstream refused or failed; trying the next");
                    self.rotate.store((idx + 1) % n, Ordering::Relaxed);
                    fallback = Some(m);
                }
                Ok(m) => {
                    if i > 0 {
                        self.rotate.store(idx, Ordering::Relaxed);
                    }
                    let mut reply = to_reply(m);
                    if let Some(ttl) = cache_ttl(&reply, self.cfg.max_ttl) {
                        // As CoreDNS's cache: clients see at most the time we keep it.
                        for rec in reply
                            .answers
                            .iter_mut()
                            .chain(reply.authority.iter_mut())
                            .chain(reply.additional.iter_mut())
                        {
                            rec.ttl = rec.ttl.min(ttl);
                        }
                        self.lock_cache()
                            .insert(key, reply.clone(), ttl, Instant::now());
                    }
                    return Ok(reply);
                }
                Err(e) => {
                    tracing::debug!(%server, %name, error = %e, "upstream exchange failed; trying the next");
                    self.rotate.store((idx + 1) % n, Ordering::Relaxed);
                    last_err = format!("{server}: {e}");
                }
            }
        }
        match fallback {
            Some(m) => Ok(to_reply(m)),
            None => Err(ForwardError::AllFailed(last_err)),
        }
    }
}

fn to_reply(m: Message) -> Reply {
    Reply {
        rcode: m.metadata.response_code,
        authoritative: false,
        answers: m.answers,
        authority: m.authorities,
        additional: m.additionals,
    }
}

/// How long `reply` may be cached, if at all.
fn cache_ttl(reply: &Reply, max_ttl: u32) -> Option<u32> {
    let ttl = match reply.rcode {
        ResponseCode::NoError if !reply.answers.is_empty() => {
            reply.answers.iter().map(|r| r.ttl).min()
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            reply.authority.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        }
        _ => None,
    }?;
    Some(ttl.min(max_ttl)).filter(|t| *t > 0)
}

/// One exchange with one server: UDP, then TCP when the UDP answer is truncated.
async fn exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    name: &Name,
    qtype: RecordType,
    t: Duration,
) -> Result<Message, String> {
    let m = tokio::time::timeout(t, udp_exchange(server, bytes, id, name, qtype))
        .await
        .map_err(|_| "timed out (UDP)".to_string())??;
    if !m.metadata.truncation {
        return Ok(m);
    }
    tokio::time::timeout(t, tcp_exchange(server, bytes, id, name, qtype))
        .await
        .map_err(|_| "timed out (TCP after truncation)".to_string())?
}

fn answers_question(m: &Message, id: u16, name: &Name, qtype: RecordType) -> bool {
    m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && m.queries[0].name() == name
        && m.queries[0].query_type() == qtype
}

async fn udp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    name: &Name,
    qtype: RecordType,
) -> Result<Message, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sock.send(bytes).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock
            .recv(&mut buf)
            .await
            .map_err(|e| format!("recv: {e}"))?;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if answers_question(&m, id, name, qtype) => return Ok(m),
            // Anything else (spoofed, stale, garbage) is ignored; the timeout bounds us.
            _ => continue,
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    name: &Name,
    qtype: RecordType,
) -> Result<Message, String> {
    let mut s = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
    let mut lb = [0u8; 2];
    s.read_exact(&mut lb)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lb))];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let m = Message::from_vec(&buf).map_err(|e| format!("bad answer: {e}"))?;
    if !answers_question(&m, id, name, qtype) {
        return Err("answer does not match the question".into());
    }
    Ok(m)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    name: Name,
    qtype: RecordType,
    qclass: DNSClass,
}

#[derive(Debug)]
struct CacheEntry {
    reply: Reply,
    stored: Instant,
    expires: Instant,
    generation: u64,
}

/// A bounded map with FIFO eviction (insertion order, stale order entries skipped).
#[derive(Debug)]
struct Cache {
    capacity: usize,
    map: HashMap<CacheKey, CacheEntry>,
    order: VecDeque<(CacheKey, u64)>,
    generation: u64,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Reply> {
        let e = self.map.get(key)?;
        if now >= e.expires {
            self.map.remove(key);
            return None;
        }
        let elapsed = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
        let mut r = e.reply.clone();
        for rec in r
            .answers
            .iter_mut()
            .chain(r.authority.iter_mut())
            .chain(r.additional.iter_mut())
        {
            rec.decrement_ttl(elapsed);
        }
        Some(r)
    }

    fn insert(&mut self, key: CacheKey, reply: Reply, ttl: u32, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        while self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            let Some((old, gen)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.generation == gen) {
                self.map.remove(&old);
            }
        }
        self.generation += 1;
        let generation = self.generation;
        self.map.insert(
            key.clone(),
            CacheEntry {
                reply,
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
                generation,
            },
        );
        self.order.push_back((key, generation));
        if self.order.len() > self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::Record;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a_record(name: &Name, ttl: u32, ip: Ipv4Addr) -> Record {
        Record::from_rdata(name.clone(), ttl, RData::A(hickory_proto::rr::rdata::A(ip)))
    }

    fn key(s: &str) -> CacheKey {
        CacheKey {
            name: n(s).to_lowercase(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
        }
    }

    fn positive(ttl: u32) -> Reply {
        Reply {
            rcode: ResponseCode::NoError,
            authoritative: false,
            answers: vec![a_record(&n("a.example."), ttl, Ipv4Addr::new(192, 0, 2, 1))],
            authority: vec![],
            additional: vec![],
        }
    }

    fn negative(rcode: ResponseCode, soa_ttl: u32, minimum: u32) -> Reply {
        let soa = SOA::new(n("ns.example."), n("host.example."), 1, 1, 1, 1, minimum);
        Reply {
            rcode,
            authoritative: false,
            answers: vec![],
            authority: vec![Record::from_rdata(n("example."), soa_ttl, RData::SOA(soa))],
            additional: vec![],
        }
    }

    #[test]
    fn cache_ttls() {
        assert_eq!(cache_ttl(&positive(300), 30), Some(30));
        assert_eq!(cache_ttl(&positive(7), 30), Some(7));
        assert_eq!(cache_ttl(&positive(0), 30), None);
        assert_eq!(
            cache_ttl(&negative(ResponseCode::NXDomain, 60, 10), 30),
            Some(10)
        );
        assert_eq!(
            cache_ttl(&negative(ResponseCode::NoError, 3, 10), 30),
            Some(3)
        );
        assert_eq!(
            cache_ttl(&Reply::error(ResponseCode::NXDomain), 30),
            None,
            "no SOA, no negative caching"
        );
        assert_eq!(cache_ttl(&Reply::error(ResponseCode::ServFail), 30), None);
    }

    #[test]
    fn cache_expires_and_counts_ttl_down() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        c.insert(key("a.example."), positive(20), 20, t0);
        let r = c
            .get(&key("A.Example."), t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(r.answers[0].ttl, 15);
        assert!(c
            .get(&key("a.example."), t0 + Duration::from_secs(20))
            .is_none());
        assert!(c.map.is_empty());
    }

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let mut c = Cache::new(3);
        let t0 = Instant::now();
        for i in 0..5 {
            c.insert(key(&format!("h{i}.example.")), positive(30), 30, t0);
        }
        assert_eq!(c.map.len(), 3);
        assert!(c.get(&key("h0.example."), t0).is_none());
        assert!(c.get(&key("h1.example."), t0).is_none());
        assert!(c.get(&key("h4.example."), t0).is_some());
        // Re-inserting the same key many times keeps the order queue bounded.
        for _ in 0..100 {
            c.insert(key("h4.example."), positive(30), 30, t0);
        }
        assert!(c.order.len() <= 6, "{}", c.order.len());
        assert_eq!(c.map.len(), 3);
    }

    #[tokio::test]
    async fn no_upstream_is_an_error() {
        let f = Forwarder::new(vec![]);
        let e = f
            .forward(
                &n("example.com."),
                RecordType::A,
                DNSClass::IN,
                &Upstream::Default,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ForwardError::NoUpstream));
    }

    #[test]
    fn ids_vary() {
        let f = Forwarder::new(vec![]);
        let ids: std::collections::HashSet<u16> = (0..64).map(|_| f.random_id()).collect();
        assert!(ids.len() > 50);
    }
}
