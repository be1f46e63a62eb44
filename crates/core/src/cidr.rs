//! IPv4 and IPv6 CIDRs (`10.42.0.0/16`, `fd00::/64`): parse as Go's `net.ParseCIDR`,
//! test containment, first and last address, and split a range into equal subnets (the
//! node IPAM's per-node pod CIDRs).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// Why a string is not a CIDR, or a CIDR operation is impossible.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CidrError {
    /// Not `address/prefix-length` with a valid address and length (Go's
    /// `invalid CIDR address: ...`).
    #[error("invalid CIDR address: {0}")]
    Invalid(String),
    /// A subnet prefix length shorter than the range's or longer than the family allows.
    #[error("subnet prefix length {subnet} does not fit in {cidr}")]
    SubnetPrefix {
        /// The range.
        cidr: String,
        /// The requested subnet prefix length.
        subnet: u8,
    },
}

/// An IP network: an address masked to its prefix length. `Display` prints
/// `address/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn width(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The mask of the host bits of a `prefix` in a family of `width` bits.
fn host_mask(width: u8, prefix: u8) -> u128 {
    let host = u32::from(width.saturating_sub(prefix));
    if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    }
}

fn ip_of(v4: bool, bits: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(bits).unwrap_or(u32::MAX)))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

impl Cidr {
    /// Parses `address/prefix-length` as Go's `net.ParseCIDR`: an IPv4 dotted quad
    /// (no leading zeros) or an IPv6 address (no zone), a decimal prefix length up to
    /// 32 or 128. Host bits are cleared (`10.1.2.3/16` is `10.1.0.0/16`); use
    /// [`Cidr::parse_with_addr`] to keep the address. No white space is allowed.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        Cidr::parse_with_addr(s).map(|(_, c)| c)
    }

    /// Parses as [`Cidr::parse`] and also returns the address as written (Go's
    /// `ip, ipnet, err := net.ParseCIDR(s)`).
    pub fn parse_with_addr(s: &str) -> Result<(IpAddr, Cidr), CidrError> {
        let bad = || CidrError::Invalid(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        if len.is_empty() || !len.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        Ok((ip, Cidr::new(ip, prefix).ok_or_else(bad)?))
    }

    /// The network of `addr` with `prefix` (host bits cleared); `None` when the
    /// prefix is longer than the family's width.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let w = width(&addr);
        if prefix > w {
            return None;
        }
        let bits = bits_of(addr) & !host_mask(w, prefix);
        Some(Cidr {
            addr: ip_of(addr.is_ipv4(), bits),
            prefix,
        })
    }

    /// The single-address network of `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: width(&addr),
        }
    }

    /// The network address (the first address).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether this is an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// The width of the family: 32 or 128.
    pub fn max_prefix(&self) -> u8 {
        width(&self.addr)
    }

    /// The first and last address as integers (inclusive).
    pub fn range(&self) -> (u128, u128) {
        let lo = bits_of(self.addr);
        (lo, lo | host_mask(self.max_prefix(), self.prefix))
    }

    /// The last address (the IPv4 broadcast address).
    pub fn last(&self) -> IpAddr {
        ip_of(self.is_ipv4(), self.range().1)
    }

    /// The number of addresses, saturating at `u128::MAX` for `::/0`.
    pub fn size(&self) -> u128 {
        host_mask(self.max_prefix(), self.prefix).saturating_add(1)
    }

    /// The `n`-th address (0 is the network address), or `None` past the end.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let (lo, hi) = self.range();
        let bits = lo.checked_add(n).filter(|b| *b <= hi)?;
        Some(ip_of(self.is_ipv4(), bits))
    }

    /// The offset of `ip` from the network address, when `ip` is inside.
    pub fn offset_of(&self, ip: &IpAddr) -> Option<u128> {
        self.contains(ip).then(|| bits_of(*ip) - bits_of(self.addr))
    }

    /// Whether `ip` lies in the network (never across families).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && {
            let (lo, hi) = self.range();
            (lo..=hi).contains(&bits_of(*ip))
        }
    }

    /// Whether `other` lies entirely in this network.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(&other.addr)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    fn check_subnet(&self, prefix: u8) -> Result<(), CidrError> {
        if prefix < self.prefix || prefix > self.max_prefix() {
            return Err(CidrError::SubnetPrefix {
                cidr: self.to_string(),
                subnet: prefix,
            });
        }
        Ok(())
    }

    /// How many subnets of length `prefix` the network holds (saturating).
    pub fn subnet_count(&self, prefix: u8) -> Result<u128, CidrError> {
        self.check_subnet(prefix)?;
        let n = u32::from(prefix - self.prefix);
        Ok(if n >= 128 { u128::MAX } else { 1u128 << n })
    }

    /// The `index`-th subnet of length `prefix`, in address order; `None` past the end.
    pub fn subnet(&self, prefix: u8, index: u128) -> Result<Option<Cidr>, CidrError> {
        let count = self.subnet_count(prefix)?;
        if index >= count {
            return Ok(None);
        }
        let step = host_mask(self.max_prefix(), prefix).saturating_add(1);
        let bits = index
            .checked_mul(step)
            .and_then(|o| bits_of(self.addr).checked_add(o));
        Ok(bits.map(|b| Cidr {
            addr: ip_of(self.is_ipv4(), b),
            prefix,
        }))
    }

    /// The index of `sub` among this network's subnets of its length, when it is one.
    pub fn subnet_index(&self, sub: &Cidr) -> Option<u128> {
        if !self.contains_cidr(sub) {
            return None;
        }
        let step = host_mask(self.max_prefix(), sub.prefix).saturating_add(1);
        Some((bits_of(sub.addr) - bits_of(self.addr)) / step)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_as_go() {
        assert_eq!(c("10.42.0.0/16").to_string(), "10.42.0.0/16");
        assert_eq!(c("10.42.3.4/16").to_string(), "10.42.0.0/16");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("192.168.1.7/32").to_string(), "192.168.1.7/32");
        assert_eq!(c("fd00:1::5/64").to_string(), "fd00:1::/64");
        assert_eq!(c("::/0").to_string(), "::/0");
        assert_eq!(c("10.0.0.0/08").prefix(), 8);
        let (addr, net) = Cidr::parse_with_addr("10.1.2.3/8").unwrap();
        assert_eq!(
            (addr, net.to_string()),
            (ip("10.1.2.3"), "10.0.0.0/8".into())
        );
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "010.0.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "fe80::1%eth0/64",
            "a/8",
            "10.0.0.0/8/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            Cidr::parse("x/1").unwrap_err().to_string(),
            "invalid CIDR address: x/1"
        );
    }

    #[test]
    fn contains_first_last_size() {
        let n = c("10.42.0.0/16");
        assert!(n.contains(&ip("10.42.255.255")));
        assert!(!n.contains(&ip("10.43.0.0")));
        assert!(!n.contains(&ip("::ffff:10.42.0.1")));
        assert_eq!(n.last(), ip("10.42.255.255"));
        assert_eq!(n.size(), 65536);
        assert_eq!(n.nth(1), Some(ip("10.42.0.1")));
        assert_eq!(n.nth(65536), None);
        assert_eq!(n.offset_of(&ip("10.42.1.0")), Some(256));
        assert_eq!(c("::/0").size(), u128::MAX);
        assert_eq!(
            c("::/0").last(),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert!(c("fd00::/8").contains(&ip("fdff::1")));
        assert!(n.contains_cidr(&c("10.42.7.0/24")));
        assert!(!c("10.42.7.0/24").contains_cidr(&n));
        assert!(c("10.42.7.0/24").overlaps(&n));
        assert!(!c("10.43.0.0/16").overlaps(&n));
        assert_eq!(Cidr::host(ip("1.2.3.4")).to_string(), "1.2.3.4/32");
        assert_eq!(Cidr::new(ip("1.2.3.4"), 33), None);
    }

    #[test]
    fn subnets_for_node_ipam() {
        let cluster = c("10.42.0.0/16");
        assert_eq!(cluster.subnet_count(24), Ok(256));
        assert_eq!(cluster.subnet(24, 0).unwrap(), Some(c("10.42.0.0/24")));
        assert_eq!(cluster.subnet(24, 255).unwrap(), Some(c("10.42.255.0/24")));
        assert_eq!(cluster.subnet(24, 256).unwrap(), None);
        assert_eq!(cluster.subnet_index(&c("10.42.9.0/24")), Some(9));
        assert_eq!(cluster.subnet_index(&c("10.43.9.0/24")), None);
        assert!(cluster.subnet_count(8).is_err());
        assert!(cluster.subnet_count(33).is_err());
        let v6 = c("fd00:42::/56");
        assert_eq!(v6.subnet(64, 3).unwrap(), Some(c("fd00:42:0:3::/64")));
        assert_eq!(c("::/0").subnet_count(128), Ok(u128::MAX));
    }
}
