//! Allocation of Service cluster IPs (from `--service-cidr`) and node ports, through the
//! store, so that API servers sharing one datastore never hand out the same value (as
//! upstream 1.33):
//! - a cluster IP is taken while the `networking.k8s.io/v1` IPAddress named by it exists
//!   (`spec.parentRef` = the Service): allocating creates it (a create conflict means
//!   taken), releasing deletes it only while it still names that Service;
//! - node ports are a bitmap `RangeAllocation` at [`NODE_PORT_RANGE_KEY`] (upstream's
//!   registry key, not served), changed by compare-and-swap on its revision;
//! - [`ServiceAllocators::repair`] (at start-up and every [`REPAIR_INTERVAL`]) marks
//!   what the Services hold and releases what no Service holds after three passes, as
//!   upstream's repair loops: allocations survive restarts, a crash between allocation
//!   and the Service's write leaks nothing for long.
//!
//! Invariant: a value is handed out only by a store write that would have failed had
//! another server taken it first; the in-memory cursors and the watch cache are hints.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rk3s_store::{KeyValue, ListOptions, Revision, Store, StoreError};
use serde_json::{json, Value};

use crate::cache::WatchCache;

/// An IPv4 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub base: u32,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` (with [`rk3s_core::Cidr`]); at most /30, so that there is room
    /// for Services.
    pub fn parse(s: &str) -> Option<Cidr> {
        let c = rk3s_core::Cidr::parse(s.trim()).ok()?;
        match c.addr() {
            std::net::IpAddr::V4(base) if c.prefix() <= 30 => Some(Cidr {
                base: u32::from(base),
                prefix: c.prefix(),
            }),
            _ => None,
        }
    }

    /// Number of addresses.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The n-th address.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(n))
    }

    /// Whether the address is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        u32::from(ip) & mask == self.base
    }
}

/// Allocation failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// The requested address is outside the range.
    #[error("the provided IP ({0}) is not in the valid range. The range of valid IPs is {1}")]
    OutOfRange(String, String),
    /// The requested address is taken.
    #[error("the provided IP ({0}) is already allocated")]
    IpTaken(String),
    /// The requested port is taken.
    #[error("provided port is already allocated")]
    PortTaken(u16),
    /// The requested port is outside the range.
    #[error("provided port is not in the valid range. The range of valid ports is {0}-{1}")]
    PortOutOfRange(u16, u16),
    /// Nothing free.
    #[error("range is full")]
    Full,
    /// The datastore failed, or the allocation kept conflicting with other writers.
    #[error("allocation storage: {0}")]
    Store(String),
}

impl From<StoreError> for AllocError {
    fn from(e: StoreError) -> Self {
        AllocError::Store(e.to_string())
    }
}

/// Where the IPAddress objects live (`networking.k8s.io/v1`, cluster-scoped, named by IP).
pub const IP_ADDRESSES: &str = "/registry/networking.k8s.io/ipaddresses/";
/// The node-port bitmap (a `RangeAllocation`, kept at upstream's registry key, not served).
pub const NODE_PORT_RANGE_KEY: &str = "/registry/ranges/servicenodeports";
/// Upstream's label naming the IP family of an IPAddress.
pub const IP_FAMILY_LABEL: &str = "ipaddress.kubernetes.io/ip-family";
/// Upstream's label naming who manages an IPAddress.
pub const MANAGED_BY_LABEL: &str = "ipaddress.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on the IPAddresses the Service allocator creates.
pub const MANAGED_BY: &str = "ipallocator.k8s.io";
/// How often [`ServiceAllocators::repair`] runs after start-up (upstream: 3 minutes).
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(180);
/// Repair passes a value must be seen leaked in before it is released (upstream: 3).
const LEAK_PASSES: u32 = 3;
/// Compare-and-swap attempts on the node-port bitmap before giving up.
const CAS_ATTEMPTS: usize = 64;
const SERVICES: &str = "/registry/core/services/";

/// The Service a value is allocated to (an IPAddress's `spec.parentRef`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceRef {
    /// The Service `obj` (its `metadata.namespace` and `metadata.name`).
    pub fn of(obj: &Value) -> ServiceRef {
        let meta = |f: &str| {
            obj.pointer(&format!("/metadata/{f}"))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        ServiceRef {
            namespace: meta("namespace"),
            name: meta("name"),
        }
    }
}

/// Cluster IPs and node ports (what a Service holds, or what one allocation took).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Cluster IPs inside the service CIDR.
    pub ips: Vec<Ipv4Addr>,
    /// Node ports inside the node-port range.
    pub ports: Vec<u16>,
}

impl Held {
    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.ports.is_empty()
    }

    /// What `self` holds that `other` does not.
    pub fn minus(&self, other: &Held) -> Held {
        Held {
            ips: self
                .ips
                .iter()
                .filter(|ip| !other.ips.contains(ip))
                .copied()
                .collect(),
            ports: self
                .ports
                .iter()
                .filter(|p| !other.ports.contains(p))
                .copied()
                .collect(),
        }
    }

    /// Both together (no duplicates).
    pub fn union(mut self, other: &Held) -> Held {
        for ip in &other.ips {
            if !self.ips.contains(ip) {
                self.ips.push(*ip);
            }
        }
        for p in &other.ports {
            if !self.ports.contains(p) {
                self.ports.push(*p);
            }
        }
        self
    }
}

/// A bitmap of offsets in a range, stored as upstream's `RangeAllocation.data`: bit `i`
/// of byte `i / 8` is offset `i`; trailing zero bytes are not stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    bytes: Vec<u8>,
}

impl Bitmap {
    /// Whether offset `i` is taken.
    pub fn get(&self, i: u32) -> bool {
        self.bytes
            .get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Marks offset `i` taken.
    pub fn set(&mut self, i: u32) {
        let at = (i / 8) as usize;
        if self.bytes.len() <= at {
            self.bytes.resize(at + 1, 0);
        }
        self.bytes[at] |= 1 << (i % 8);
    }

    /// Marks offset `i` free.
    pub fn clear(&mut self, i: u32) {
        if let Some(b) = self.bytes.get_mut((i / 8) as usize) {
            *b &= !(1 << (i % 8));
        }
        while self.bytes.last() == Some(&0) {
            self.bytes.pop();
        }
    }

    /// The taken offsets, ascending.
    pub fn offsets(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (at, b) in self.bytes.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    out.push(at as u32 * 8 + bit);
                }
            }
        }
        out
    }

    /// Base64 of the bytes (trailing zero bytes dropped).
    pub fn encode(&self) -> String {
        let mut bytes = self.bytes.clone();
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// From [`Bitmap::encode`]'s form.
    pub fn decode(s: &str) -> Option<Bitmap> {
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        Some(Bitmap { bytes })
    }
}

/// Allocates Service cluster IPs and node ports through the store, so that API servers
/// sharing one datastore never hand out the same value (see the module docs).
pub struct ServiceAllocators {
    store: Arc<dyn Store>,
    /// Hint for which IPAddresses exist (may lag the store; the store decides).
    cache: Arc<WatchCache>,
    cidr: Cidr,
    ports: (u16, u16),
    cursor: Mutex<Cursor>,
    /// Serialises this server's writes of the node-port bitmap (other servers are
    /// handled by compare-and-swap).
    port_writes: tokio::sync::Mutex<()>,
    leaks: Mutex<Leaks>,
}

struct Cursor {
    next_ip: u32,
    next_port: u32,
}

#[derive(Default)]
struct Leaks {
    /// IPAddress key and revision -> passes it was seen without its Service.
    ips: HashMap<(String, Revision), u32>,
    /// Node port -> passes it was seen set in the bitmap without a Service.
    ports: HashMap<u16, u32>,
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{IP_ADDRESSES}{ip}")
}

fn ip_address_object(ip: Ipv4Addr, owner: &ServiceRef) -> Vec<u8> {
    let obj = json!({
        "kind": "IPAddress",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": {
            "name": ip.to_string(),
            "uid": crate::object::new_uid(),
            "creationTimestamp": crate::object::now_rfc3339(),
            "labels": {IP_FAMILY_LABEL: "IPv4", MANAGED_BY_LABEL: MANAGED_BY},
        },
        "spec": {"parentRef": {
            "group": "", "resource": "services",
            "namespace": owner.namespace, "name": owner.name,
        }},
    });
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// The Service an IPAddress names as its parent, if the Service allocator created it.
fn ip_address_parent(stored: &[u8]) -> Option<ServiceRef> {
    let v: Value = serde_json::from_slice(stored).ok()?;
    if v.pointer(&format!(
        "/metadata/labels/{}",
        MANAGED_BY_LABEL.replace('/', "~1")
    ))
    .and_then(|l| l.as_str())
        != Some(MANAGED_BY)
    {
        return None;
    }
    let p = v.pointer("/spec/parentRef")?;
    if p.get("resource").and_then(|r| r.as_str()) != Some("services") {
        return None;
    }
    Some(ServiceRef {
        namespace: p.get("namespace")?.as_str()?.to_string(),
        name: p.get("name")?.as_str()?.to_string(),
    })
}

impl ServiceAllocators {
    /// Allocators for the given service CIDR and node-port range over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<WatchCache>,
        cidr: Cidr,
        ports: (u16, u16),
    ) -> Self {
        ServiceAllocators {
            store,
            cache,
            cidr,
            ports,
            cursor: Mutex::new(Cursor {
                next_ip: 10,
                next_port: 0,
            }),
            port_writes: tokio::sync::Mutex::new(()),
            leaks: Mutex::new(Leaks::default()),
        }
    }

    /// The first IP of the range (the `kubernetes` Service).
    pub fn first_ip(&self) -> Ipv4Addr {
        self.cidr.nth(1)
    }

    /// The service CIDR, `a.b.c.d/n`.
    pub fn range(&self) -> String {
        format!("{}/{}", self.cidr.nth(0), self.cidr.prefix)
    }

    fn port_range(&self) -> String {
        format!("{}-{}", self.ports.0, self.ports.1)
    }

    /// The cluster IPs (inside the CIDR) and node ports (inside the range) `svc` holds.
    pub fn held_by(&self, svc: &Value) -> Held {
        let mut held = Held::default();
        let ips = svc
            .pointer("/spec/clusterIP")
            .into_iter()
            .chain(
                svc.pointer("/spec/clusterIPs")
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten(),
            )
            .filter_map(|v| v.as_str())
            .filter_map(|s| s.parse::<Ipv4Addr>().ok());
        for ip in ips {
            if self.cidr.contains(ip) && !held.ips.contains(&ip) {
                held.ips.push(ip);
            }
        }
        let ports = svc
            .pointer("/spec/ports")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(|v| v.as_u64()))
            .chain(
                svc.pointer("/spec/healthCheckNodePort")
                    .and_then(|v| v.as_u64()),
            );
        for p in ports {
            if let Ok(p) = u16::try_from(p) {
                if p >= self.ports.0 && p <= self.ports.1 && !held.ports.contains(&p) {
                    held.ports.push(p);
                }
            }
        }
        held
    }

    fn check_ip(&self, ip: Ipv4Addr) -> Result<(), AllocError> {
        if !self.cidr.contains(ip)
            || ip == self.cidr.nth(0)
            || ip == self.cidr.nth(self.cidr.size() - 1)
        {
            return Err(AllocError::OutOfRange(ip.to_string(), self.range()));
        }
        Ok(())
    }

    /// Allocates `wanted` (if given) or a free cluster IP to `owner`: creates the
    /// IPAddress named by it (a create conflict means taken). A dry run only checks.
    pub async fn allocate_ip(
        &self,
        wanted: Option<Ipv4Addr>,
        owner: &ServiceRef,
        dry_run: bool,
    ) -> Result<Ipv4Addr, AllocError> {
        if let Some(ip) = wanted {
            self.check_ip(ip)?;
            if dry_run {
                return match self.store.get(&ip_key(ip)).await? {
                    Some(_) => Err(AllocError::IpTaken(ip.to_string())),
                    None => Ok(ip),
                };
            }
            return match self
                .store
                .create(&ip_key(ip), ip_address_object(ip, owner))
                .await
            {
                Ok(_) => Ok(ip),
                Err(StoreError::AlreadyExists(_)) => Err(AllocError::IpTaken(ip.to_string())),
                Err(e) => Err(e.into()),
            };
        }
        let size = self.cidr.size();
        let start = match self.cursor.lock() {
            Ok(c) => c.next_ip,
            Err(p) => p.into_inner().next_ip,
        };
        // Usable: 1 .. size-2; skip the low addresses kept for well-known services
        // (.1 kubernetes, .10 DNS) unless asked for by name.
        for i in 0..size {
            let n = (start + i) % size;
            if n == 0 || n == size - 1 || n == 1 || n == 10 {
                continue;
            }
            let ip = self.cidr.nth(n);
            let key = ip_key(ip);
            if self.cache.get(&key).is_some() {
                continue;
            }
            let taken = if dry_run {
                self.store.get(&key).await?.is_some()
            } else {
                match self.store.create(&key, ip_address_object(ip, owner)).await {
                    Ok(_) => false,
                    Err(StoreError::AlreadyExists(_)) => true,
                    Err(e) => return Err(e.into()),
                }
            };
            if !taken {
                if !dry_run {
                    match self.cursor.lock() {
                        Ok(mut c) => c.next_ip = n + 1,
                        Err(p) => p.into_inner().next_ip = n + 1,
                    }
                }
                return Ok(ip);
            }
        }
        Err(AllocError::Full)
    }

    /// Releases `ip` if its IPAddress still names `owner` (a value another Service
    /// holds is never released).
    pub async fn release_ip(&self, ip: Ipv4Addr, owner: &ServiceRef) -> Result<(), AllocError> {
        let key = ip_key(ip);
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(());
            };
            if ip_address_parent(&kv.value).as_ref() != Some(owner) {
                return Ok(());
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(_) | Err(StoreError::NotFound(_)) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AllocError::Store(format!("{key}: too many conflicts")))
    }

    /// Reads the node-port bitmap: its entry (if stored) and taken offsets.
    async fn read_ports(&self) -> Result<(Option<KeyValue>, Bitmap), AllocError> {
        let kv = self.store.get(NODE_PORT_RANGE_KEY).await?;
        let bitmap = match &kv {
            None => Bitmap::default(),
            Some(kv) => self.decode_ports(&kv.value).ok_or_else(|| {
                AllocError::Store(format!(
                    "{NODE_PORT_RANGE_KEY} does not hold the range {}",
                    self.port_range()
                ))
            })?,
        };
        Ok((kv, bitmap))
    }

    fn decode_ports(&self, stored: &[u8]) -> Option<Bitmap> {
        let v: Value = serde_json::from_slice(stored).ok()?;
        if v.get("range").and_then(|r| r.as_str()) != Some(self.port_range().as_str()) {
            return None;
        }
        Bitmap::decode(v.get("data").and_then(|d| d.as_str()).unwrap_or(""))
    }

    /// Writes the bitmap with compare-and-swap on `kv`'s revision (create when absent);
    /// `Ok(false)` on a conflict.
    async fn write_ports(
        &self,
        kv: Option<&KeyValue>,
        bitmap: &Bitmap,
    ) -> Result<bool, AllocError> {
        let obj = json!({
            "kind": "RangeAllocation", "apiVersion": "v1",
            "metadata": {"name": "servicenodeports", "creationTimestamp": crate::object::now_rfc3339()},
            "range": self.port_range(),
            "data": bitmap.encode(),
        });
        let bytes = serde_json::to_vec(&obj).map_err(|e| AllocError::Store(e.to_string()))?;
        let result = match kv {
            None => self
                .store
                .create(NODE_PORT_RANGE_KEY, bytes)
                .await
                .map(|_| ()),
            Some(kv) => self
                .store
                .update(NODE_PORT_RANGE_KEY, bytes, kv.mod_revision)
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => Ok(true),
            Err(
                StoreError::AlreadyExists(_)
                | StoreError::Conflict { .. }
                | StoreError::NotFound(_),
            ) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Allocates one node port per entry of `wanted`, all or none: the given port, or
    /// a free one for `None`. On failure, the index of the entry that failed. A dry run
    /// only checks.
    pub async fn allocate_ports(
        &self,
        wanted: &[Option<u16>],
        dry_run: bool,
    ) -> Result<Vec<u16>, (usize, AllocError)> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let (lo, hi) = self.ports;
        let span = u32::from(hi - lo) + 1;
        let _serial = self.port_writes.lock().await;
        for _ in 0..CAS_ATTEMPTS {
            let (kv, mut bitmap) = self.read_ports().await.map_err(|e| (0, e))?;
            let mut out: Vec<Option<u16>> = vec![None; wanted.len()];
            // Requested ports first, then free ones for the rest.
            for (i, w) in wanted.iter().enumerate() {
                if let Some(p) = *w {
                    if p < lo || p > hi {
                        return Err((i, AllocError::PortOutOfRange(lo, hi)));
                    }
                    let off = u32::from(p - lo);
                    if bitmap.get(off) {
                        return Err((i, AllocError::PortTaken(p)));
                    }
                    bitmap.set(off);
                    out[i] = Some(p);
                }
            }
            let mut seed = match self.cursor.lock() {
                Ok(c) => c.next_port,
                Err(p) => p.into_inner().next_port,
            };
            for (i, w) in wanted.iter().enumerate() {
                if w.is_some() {
                    continue;
                }
                let free = (0..span)
                    .map(|k| seed.wrapping_mul(7919).wrapping_add(k) % span)
                    .find(|off| !bitmap.get(*off));
                let Some(off) = free else {
                    return Err((i, AllocError::Full));
                };
                bitmap.set(off);
                seed = seed.wrapping_add(1);
                out[i] = Some(lo + off as u16);
            }
            let out: Vec<u16> = out.into_iter().flatten().collect();
            if dry_run
                || self
                    .write_ports(kv.as_ref(), &bitmap)
                    .await
                    .map_err(|e| (0, e))?
            {
                if !dry_run {
                    match self.cursor.lock() {
                        Ok(mut c) => c.next_port = seed,
                        Err(p) => p.into_inner().next_port = seed,
                    }
                }
                return Ok(out);
            }
        }
        Err((
            0,
            AllocError::Store(format!("{NODE_PORT_RANGE_KEY}: too many conflicts")),
        ))
    }

    /// Releases node ports (their bits are cleared).
    pub async fn release_ports(&self, ports: &[u16]) -> Result<(), AllocError> {
        let (lo, hi) = self.ports;
        let ports: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| *p >= lo && *p <= hi)
            .collect();
        if ports.is_empty() {
            return Ok(());
        }
        let _serial = self.port_writes.lock().await;
        for _ in 0..CAS_ATTEMPTS {
            let (kv, mut bitmap) = self.read_ports().await?;
            let before = bitmap.clone();
            for p in &ports {
                bitmap.clear(u32::from(p - lo));
            }
            if bitmap == before || self.write_ports(kv.as_ref(), &bitmap).await? {
                return Ok(());
            }
        }
        Err(AllocError::Store(format!(
            "{NODE_PORT_RANGE_KEY}: too many conflicts"
        )))
    }

    /// Releases what `held` names for `owner`; failures are logged (the repair loop
    /// releases what is left behind).
    pub async fn release(&self, held: &Held, owner: &ServiceRef) {
        for ip in &held.ips {
            if let Err(e) = self.release_ip(*ip, owner).await {
                tracing::warn!(%ip, service = %owner.name, error = %e, "releasing a cluster IP failed");
            }
        }
        if let Err(e) = self.release_ports(&held.ports).await {
            tracing::warn!(ports = ?held.ports, service = %owner.name, error = %e, "releasing node ports failed");
        }
    }

    /// One pass of upstream's repair loops, from one snapshot of the store: every
    /// cluster IP and node port a Service holds is marked allocated (IPAddresses
    /// created, bits set: this is how allocations survive a restart or a datastore
    /// written by an older version); values allocated without a Service are released
    /// once seen so in [`LEAK_PASSES`] passes (an allocation in flight has its Service
    /// written long before that).
    pub async fn repair(&self) -> Result<(), AllocError> {
        self.repair_ips().await?;
        self.repair_ports().await
    }

    async fn repair_ips(&self) -> Result<(), AllocError> {
        let addrs = self.store.list(IP_ADDRESSES, Default::default()).await?;
        let svcs = self
            .store
            .list(
                SERVICES,
                ListOptions {
                    revision: Some(addrs.revision),
                    ..Default::default()
                },
            )
            .await?;
        let mut holders: HashMap<Ipv4Addr, ServiceRef> = HashMap::new();
        for kv in &svcs.items {
            let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let owner = ServiceRef::of(&svc);
            for ip in self.held_by(&svc).ips {
                if let Some(other) = holders.get(&ip) {
                    tracing::warn!(%ip, service = %owner.name, other = %other.name, "cluster IP held by two Services");
                    continue;
                }
                holders.insert(ip, owner.clone());
            }
        }
        let mut existing: HashMap<Ipv4Addr, (&KeyValue, Option<ServiceRef>)> = HashMap::new();
        for kv in &addrs.items {
            if let Some(Ok(ip)) = kv
                .key
                .strip_prefix(IP_ADDRESSES)
                .map(|s| s.parse::<Ipv4Addr>())
            {
                existing.insert(ip, (kv, ip_address_parent(&kv.value)));
            }
        }
        for (ip, owner) in &holders {
            if !existing.contains_key(ip) {
                match self
                    .store
                    .create(&ip_key(*ip), ip_address_object(*ip, owner))
                    .await
                {
                    Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut release = Vec::new();
        {
            let mut leaks = match self.leaks.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            let mut next = HashMap::new();
            for (ip, (kv, parent)) in &existing {
                // Only the allocator's own IPAddresses; a user's is left alone.
                let Some(parent) = parent else { continue };
                if holders.get(ip) == Some(parent) {
                    continue;
                }
                let id = (kv.key.clone(), kv.mod_revision);
                let passes = leaks.ips.get(&id).copied().unwrap_or(0) + 1;
                if passes >= LEAK_PASSES {
                    release.push(id);
                } else {
                    next.insert(id, passes);
                }
            }
            leaks.ips = next;
        }
        for (key, rev) in release {
            tracing::info!(key = %key, "releasing a leaked cluster IP");
            match self.store.delete(&key, Some(rev)).await {
                Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn repair_ports(&self) -> Result<(), AllocError> {
        let _serial = self.port_writes.lock().await;
        let svcs = self.store.list(SERVICES, Default::default()).await?;
        let at = ListOptions {
            revision: Some(svcs.revision),
            ..Default::default()
        };
        let kv = self
            .store
            .list(NODE_PORT_RANGE_KEY, at)
            .await?
            .items
            .into_iter()
            .find(|kv| kv.key == NODE_PORT_RANGE_KEY);
        let lo = self.ports.0;
        // A bitmap of another range (the range was changed) is rebuilt from the Services.
        let stored = kv
            .as_ref()
            .and_then(|kv| self.decode_ports(&kv.value))
            .unwrap_or_default();
        let mut held = Bitmap::default();
        for kv in &svcs.items {
            if let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) {
                for p in self.held_by(&svc).ports {
                    held.set(u32::from(p - lo));
                }
            }
        }
        let mut bitmap = stored.clone();
        for off in held.offsets() {
            bitmap.set(off);
        }
        {
            let mut leaks = match self.leaks.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            let mut next = HashMap::new();
            for off in stored.offsets() {
                if held.get(off) {
                    continue;
                }
                let port = lo + off as u16;
                let passes = leaks.ports.get(&port).copied().unwrap_or(0) + 1;
                if passes >= LEAK_PASSES {
                    tracing::info!(port, "releasing a leaked node port");
                    bitmap.clear(off);
                } else {
                    next.insert(port, passes);
                }
            }
            leaks.ports = next;
        }
        let valid = kv
            .as_ref()
            .is_some_and(|kv| self.decode_ports(&kv.value).is_some());
        if (!valid || bitmap != stored) && !self.write_ports(kv.as_ref(), &bitmap).await? {
            tracing::debug!("node-port repair raced with an allocation; next pass");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.43.0.0/16").expect("cidr");
        assert_eq!(c.nth(1), Ipv4Addr::new(10, 43, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 43, 200, 7)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(Cidr::parse("nonsense").is_none());
    }

    #[test]
    fn bitmap_round_trips_without_trailing_zero_bytes() {
        let mut b = Bitmap::default();
        for i in [0, 9, 100] {
            b.set(i);
        }
        assert!(b.get(9) && !b.get(8));
        let back = Bitmap::decode(&b.encode()).expect("decode");
        assert_eq!(back.offsets(), vec![0, 9, 100]);
        b.clear(100);
        // Offset 9 is in byte 1: the 11 bytes up to offset 100 shrink to 2.
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b.encode())
                .expect("b64")
                .len(),
            2
        );
        assert!(Bitmap::decode("not base64!").is_none());
    }

    fn svc(ns: &str, name: &str) -> ServiceRef {
        ServiceRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    async fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).expect("open"))
    }

    async fn allocators(
        store: &Arc<dyn Store>,
        cidr: &str,
        ports: (u16, u16),
    ) -> ServiceAllocators {
        let cache = WatchCache::start(store.clone()).await.expect("cache");
        ServiceAllocators::new(
            store.clone(),
            cache,
            Cidr::parse(cidr).expect("cidr"),
            ports,
        )
    }

    #[tokio::test]
    async fn ips_do_not_collide_and_are_released_to_their_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let a = allocators(&store, "10.43.0.0/28", (30000, 30002)).await;
        let mut got = HashSet::new();
        // A /28 has 14 usable addresses; .1 and .10 are kept for kubernetes and DNS.
        for i in 0..12 {
            let ip = a
                .allocate_ip(None, &svc("default", &format!("s{i}")), false)
                .await
                .expect("free ip");
            assert!(got.insert(ip), "duplicate {ip}");
        }
        assert_eq!(
            a.allocate_ip(None, &svc("default", "x"), false).await,
            Err(AllocError::Full)
        );
        let three = Ipv4Addr::new(10, 43, 0, 3);
        assert!(matches!(
            a.allocate_ip(Some(three), &svc("default", "x"), false)
                .await,
            Err(AllocError::IpTaken(_))
        ));
        assert!(matches!(
            a.allocate_ip(
                Some(Ipv4Addr::new(10, 9, 0, 3)),
                &svc("default", "x"),
                false
            )
            .await,
            Err(AllocError::OutOfRange(..))
        ));
        // .3 went to s{n} for some n: releasing it for another Service does nothing.
        a.release_ip(three, &svc("default", "x"))
            .await
            .expect("release");
        assert!(store.get(&ip_key(three)).await.expect("get").is_some());
        let kv = store
            .get(&ip_key(three))
            .await
            .expect("get")
            .expect("ipaddress");
        let owner = ip_address_parent(&kv.value).expect("parent");
        a.release_ip(three, &owner).await.expect("release");
        assert!(store.get(&ip_key(three)).await.expect("get").is_none());
        assert_eq!(
            a.allocate_ip(Some(three), &svc("default", "x"), false)
                .await,
            Ok(three)
        );
        // .10 may be asked for by name; a dry run writes nothing.
        let ten = Ipv4Addr::new(10, 43, 0, 10);
        assert_eq!(
            a.allocate_ip(Some(ten), &svc("kube-system", "dns"), true)
                .await,
            Ok(ten)
        );
        assert!(store.get(&ip_key(ten)).await.expect("get").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_on_one_store_never_hand_out_the_same_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let a = Arc::new(allocators(&store, "10.43.0.0/24", (30000, 30099)).await);
        let b = Arc::new(allocators(&store, "10.43.0.0/24", (30000, 30099)).await);
        let mut tasks = Vec::new();
        for i in 0..40 {
            let alloc = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let ip = alloc
                    .allocate_ip(None, &svc("default", &format!("s{i}")), false)
                    .await
                    .expect("ip");
                let ports = alloc
                    .allocate_ports(&[None, None], false)
                    .await
                    .expect("ports");
                (ip, ports)
            }));
        }
        let (mut ips, mut ports) = (HashSet::new(), HashSet::new());
        for t in tasks {
            let (ip, ps) = t.await.expect("task");
            assert!(ips.insert(ip), "{ip} handed out twice");
            for p in ps {
                assert!(ports.insert(p), "node port {p} handed out twice");
            }
        }
        assert_eq!(ports.len(), 80);
        // The 20 ports left are all there is, whichever server asks.
        let rest = b.allocate_ports(&[None; 20], false).await.expect("rest");
        assert!(rest.iter().all(|p| !ports.contains(p)));
        assert_eq!(
            a.allocate_ports(&[None], false).await,
            Err((0, AllocError::Full))
        );
        // Released on one server, free on the other.
        a.release_ports(&rest[..1]).await.expect("release");
        assert_eq!(
            b.allocate_ports(&[Some(rest[0])], false).await,
            Ok(vec![rest[0]])
        );
        assert_eq!(
            b.allocate_ports(&[Some(29999)], false).await,
            Err((0, AllocError::PortOutOfRange(30000, 30099)))
        );
        assert_eq!(
            b.allocate_ports(&[None, Some(rest[0])], false).await,
            Err((1, AllocError::PortTaken(rest[0])))
        );
    }

    #[tokio::test]
    async fn repair_marks_what_services_hold_and_releases_leaks_after_three_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        // A Service written before allocation went through the store (no IPAddress, no
        // bitmap).
        let service = json!({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                     "ports": [{"port": 80, "nodePort": 30005}]},
        });
        store
            .create(
                "/registry/core/services/default/web",
                serde_json::to_vec(&service).expect("json"),
            )
            .await
            .expect("create");
        let a = allocators(&store, "10.43.0.0/24", (30000, 30010)).await;
        let twenty = Ipv4Addr::new(10, 43, 0, 20);
        assert_eq!(
            a.held_by(&service),
            Held {
                ips: vec![twenty],
                ports: vec![30005]
            }
        );
        a.repair().await.expect("repair");
        assert!(matches!(
            a.allocate_ip(Some(twenty), &svc("default", "other"), false)
                .await,
            Err(AllocError::IpTaken(_))
        ));
        assert_eq!(
            a.allocate_ports(&[Some(30005)], false).await,
            Err((0, AllocError::PortTaken(30005)))
        );
        // Leaks: an IP and a port allocated for a Service never written.
        let leaked_ip = a
            .allocate_ip(None, &svc("default", "ghost"), false)
            .await
            .expect("ip");
        let leaked_port = a.allocate_ports(&[None], false).await.expect("port")[0];
        // A new server (a restart) repairs the same store: the leak is kept for two
        // passes and released at the third.
        let b = allocators(&store, "10.43.0.0/24", (30000, 30010)).await;
        for _ in 0..2 {
            b.repair().await.expect("repair");
            assert!(store.get(&ip_key(leaked_ip)).await.expect("get").is_some());
            assert_eq!(
                b.allocate_ports(&[Some(leaked_port)], true).await,
                Err((0, AllocError::PortTaken(leaked_port)))
            );
        }
        b.repair().await.expect("repair");
        assert!(store.get(&ip_key(leaked_ip)).await.expect("get").is_none());
        assert_eq!(
            b.allocate_ports(&[Some(leaked_port)], true).await,
            Ok(vec![leaked_port])
        );
        // What the Service holds survived every pass.
        assert!(store.get(&ip_key(twenty)).await.expect("get").is_some());
        assert_eq!(
            b.allocate_ports(&[Some(30005)], true).await,
            Err((0, AllocError::PortTaken(30005)))
        );
    }
}
