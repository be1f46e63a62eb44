//! Allocation of Service cluster IPs (from `--service-cidr`) and node ports.
//!
//! Allocation is serialised by one mutex per server; the set of addresses in use is read
//! from the watch cache and completed with recent allocations the cache may not show yet.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An IPv4 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub base: u32,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = s.split_once('/')?;
        let ip: Ipv4Addr = ip.trim().parse().ok()?;
        let prefix: u8 = len.trim().parse().ok()?;
        if prefix > 30 {
            return None;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Cidr {
            base: u32::from(ip) & mask,
            prefix,
        })
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

/// Allocates cluster IPs and node ports without collisions.
pub struct Allocator {
    cidr: Cidr,
    ports: (u16, u16),
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    ips: Vec<(Ipv4Addr, Instant)>,
    ports: Vec<(u16, Instant)>,
    next_ip: u32,
    next_port: u32,
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
}

const RECENT: Duration = Duration::from_secs(30);

impl Allocator {
    /// An allocator for the given service CIDR and node port range.
    pub fn new(cidr: Cidr, ports: (u16, u16)) -> Self {
        Allocator {
            cidr,
            ports,
            recent: Mutex::new(Recent {
                next_ip: 10,
                ..Default::default()
            }),
        }
    }

    /// The first IP of the range (the `kubernetes` Service).
    pub fn first_ip(&self) -> Ipv4Addr {
        self.cidr.nth(1)
    }

    /// The DNS IP convention (`.10`).
    pub fn range(&self) -> String {
        format!("{}/{}", self.cidr.nth(0), self.cidr.prefix)
    }

    /// Allocates `wanted` (if given) or a free address, given the addresses in use.
    pub fn allocate_ip(
        &self,
        wanted: Option<Ipv4Addr>,
        in_use: &HashSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocError> {
        let mut r = self.recent.lock().map_err(|_| AllocError::Full)?;
        let now = Instant::now();
        r.ips.retain(|(_, t)| now.duration_since(*t) < RECENT);
        let taken =
            |ip: &Ipv4Addr, r: &Recent| in_use.contains(ip) || r.ips.iter().any(|(x, _)| x == ip);
        if let Some(ip) = wanted {
            if !self.cidr.contains(ip)
                || ip == self.cidr.nth(0)
                || ip == self.cidr.nth(self.cidr.size() - 1)
            {
                return Err(AllocError::OutOfRange(ip.to_string(), self.range()));
            }
            if taken(&ip, &r) {
                return Err(AllocError::IpTaken(ip.to_string()));
            }
            r.ips.push((ip, now));
            return Ok(ip);
        }
        let size = self.cidr.size();
        // Usable: 1 .. size-2; skip the low addresses kept for well-known services
        // (.1 kubernetes, .10 DNS) unless the range is exhausted.
        for i in 0..size {
            let n = (r.next_ip + i) % size;
            if n == 0 || n == size - 1 || n == 1 || n == 10 {
                continue;
            }
            let ip = self.cidr.nth(n);
            if !taken(&ip, &r) {
                r.next_ip = n + 1;
                r.ips.push((ip, now));
                return Ok(ip);
            }
        }
        Err(AllocError::Full)
    }

    /// Allocates `wanted` (if given) or a free node port, given the ports in use.
    pub fn allocate_port(
        &self,
        wanted: Option<u16>,
        in_use: &HashSet<u16>,
    ) -> Result<u16, AllocError> {
        let mut r = self.recent.lock().map_err(|_| AllocError::Full)?;
        let now = Instant::now();
        r.ports.retain(|(_, t)| now.duration_since(*t) < RECENT);
        let taken =
            |p: u16, r: &Recent| in_use.contains(&p) || r.ports.iter().any(|(x, _)| *x == p);
        if let Some(p) = wanted {
            if p < self.ports.0 || p > self.ports.1 {
                return Err(AllocError::PortOutOfRange(self.ports.0, self.ports.1));
            }
            if taken(p, &r) {
                return Err(AllocError::PortTaken(p));
            }
            r.ports.push((p, now));
            return Ok(p);
        }
        let span = (self.ports.1 - self.ports.0) as u32 + 1;
        let seed = r.next_port;
        for i in 0..span {
            let p = self.ports.0 + ((seed.wrapping_mul(7919).wrapping_add(i)) % span) as u16;
            if !taken(p, &r) {
                r.next_port = r.next_port.wrapping_add(1);
                r.ports.push((p, now));
                return Ok(p);
            }
        }
        Err(AllocError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.43.0.0/16").expect("cidr");
        assert_eq!(c.nth(1), Ipv4Addr::new(10, 43, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 43, 200, 7)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(Cidr::parse("nonsense").is_none());
    }

    #[test]
    fn ips_do_not_collide() {
        let a = Allocator::new(Cidr::parse("10.43.0.0/28").expect("cidr"), (30000, 30002));
        let mut used = HashSet::new();
        let mut got = HashSet::new();
        // A /28 has 14 usable addresses; .1 and .10 are kept for kubernetes and DNS.
        for _ in 0..12 {
            let ip = a.allocate_ip(None, &used).expect("free ip");
            assert!(got.insert(ip), "duplicate {ip}");
            used.insert(ip);
        }
        assert_eq!(a.allocate_ip(None, &used), Err(AllocError::Full));
        assert!(matches!(
            a.allocate_ip(Some(Ipv4Addr::new(10, 43, 0, 3)), &used),
            Err(AllocError::IpTaken(_))
        ));
        assert!(matches!(
            a.allocate_ip(Some(Ipv4Addr::new(10, 9, 0, 3)), &used),
            Err(AllocError::OutOfRange(..))
        ));
    }

    #[test]
    fn ports_do_not_collide() {
        let a = Allocator::new(Cidr::parse("10.43.0.0/16").expect("cidr"), (30000, 30002));
        let used = HashSet::new();
        let mut got = HashSet::new();
        for _ in 0..3 {
            assert!(got.insert(a.allocate_port(None, &used).expect("port")));
        }
        assert_eq!(a.allocate_port(None, &used), Err(AllocError::Full));
        assert_eq!(
            a.allocate_port(Some(29999), &used),
            Err(AllocError::PortOutOfRange(30000, 30002))
        );
    }
}
