//! The upstream resolvers: read from a resolv.conf file with k3s's rule.
//!
//! - An explicit file (`--resolv-conf`) is used as it is: every `nameserver` line.
//! - Otherwise `/etc/resolv.conf`, keeping only nameservers that are not loopback (a
//!   loopback stub such as systemd-resolved's 127.0.0.53 would only work for the host and
//!   may forward back to us); when none is left, `/run/systemd/resolve/resolv.conf` (the
//!   stub's own upstream list) with the same filter.
//! - When still none is usable the list is empty: forwarding answers SERVFAIL and a
//!   warning is logged. There is never a fallback to a public resolver.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The default resolv.conf.
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of its real upstreams.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The nameserver addresses of a resolv.conf text, in order.
pub fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut fields = line.split_whitespace();
        if fields.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = fields.next() else { continue };
        // A link-local IPv6 with a zone (`fe80::1%eth0`) cannot be used without its
        // interface: such lines are skipped like any unparsable address.
        if let Ok(ip) = addr.parse::<IpAddr>() {
            out.push(ip);
        }
    }
    out
}

/// Whether a nameserver may be used from the cluster DNS (not loopback, not unspecified,
/// not multicast).
fn usable(ip: &IpAddr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
}

fn to_addrs(ips: impl IntoIterator<Item = IpAddr>) -> Vec<SocketAddr> {
    ips.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect()
}

/// Where the upstreams were read from (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    /// The addresses (port 53), possibly empty.
    pub servers: Vec<SocketAddr>,
    /// The file they came from (`None` when no file gave any).
    pub source: Option<PathBuf>,
}

/// The upstreams by the rule of the module docs, reading files with `read`. `etc` and
/// `systemd` are the default paths (parameters so tests can use temporary files).
pub fn choose_upstreams(
    explicit: Option<&Path>,
    etc: &Path,
    systemd: &Path,
    read: impl Fn(&Path) -> Option<String>,
) -> Upstreams {
    if let Some(p) = explicit {
        let servers = read(p)
            .map(|t| {
                to_addrs(
                    parse_nameservers(&t)
                        .into_iter()
                        .filter(|ip| !ip.is_unspecified()),
                )
            })
            .unwrap_or_default();
        let source = (!servers.is_empty()).then(|| p.to_path_buf());
        return Upstreams { servers, source };
    }
    for p in [etc, systemd] {
        if let Some(text) = read(p) {
            let servers = to_addrs(parse_nameservers(&text).into_iter().filter(usable));
            if !servers.is_empty() {
                return Upstreams {
                    servers,
                    source: Some(p.to_path_buf()),
                };
            }
        }
    }
    Upstreams {
        servers: Vec::new(),
        source: None,
    }
}

/// [`choose_upstreams`] on the real files; logs a warning when no upstream is usable.
pub fn load_upstreams(explicit: Option<&Path>) -> Upstreams {
    let u = choose_upstreams(
        explicit,
        Path::new(ETC_RESOLV_CONF),
        Path::new(SYSTEMD_RESOLV_CONF),
        |p| std::fs::read_to_string(p).ok(),
    );
    if u.servers.is_empty() {
        match explicit {
            Some(p) => tracing::warn!(file = %p.display(), "cluster DNS: no nameserver in the resolv.conf file; names outside the cluster will get SERVFAIL"),
            None => tracing::warn!(
                "cluster DNS: neither {ETC_RESOLV_CONF} nor {SYSTEMD_RESOLV_CONF} names a non-loopback nameserver; names outside the cluster will get SERVFAIL (set --resolv-conf)"
            ),
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(pairs: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let m: HashMap<PathBuf, String> = pairs
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| m.get(p).cloned()
    }

    const ETC: &str = "/etc/resolv.conf";
    const SD: &str = "/run/systemd/resolve/resolv.conf";

    #[test]
    fn parses_nameserver_lines() {
        let t = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver  fd00::53 # v6\nnameserver bogus\noptions ndots:2\nnameserver fe80::2%eth0\n";
        assert_eq!(
            parse_nameservers(t),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn plain_etc_resolv_conf_is_used() {
        let u = choose_upstreams(
            None,
            Path::new(ETC),
            Path::new(SD),
            files(&[(ETC, "nameserver 10.0.0.2\nnameserver 10.0.0.3\n")]),
        );
        assert_eq!(
            u.servers,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "10.0.0.3:53".parse().unwrap()
            ]
        );
        assert_eq!(u.source.as_deref(), Some(Path::new(ETC)));
    }

    #[test]
    fn loopback_stub_falls_back_to_systemd_file() {
        let u = choose_upstreams(
            None,
            Path::new(ETC),
            Path::new(SD),
            files(&[
                (ETC, "nameserver 127.0.0.53\n"),
                (SD, "nameserver 192.0.2.1\nnameserver 127.0.0.1\n"),
            ]),
        );
        assert_eq!(u.servers, vec!["192.0.2.1:53".parse().unwrap()]);
        assert_eq!(u.source.as_deref(), Some(Path::new(SD)));
    }

    #[test]
    fn mixed_file_drops_loopback_entries() {
        let u = choose_upstreams(
            None,
            Path::new(ETC),
            Path::new(SD),
            files(&[(ETC, "nameserver 127.0.0.1\nnameserver 192.0.2.7\n")]),
        );
        assert_eq!(u.servers, vec!["192.0.2.7:53".parse().unwrap()]);
    }

    #[test]
    fn nothing_usable_gives_empty_list_never_a_public_resolver() {
        let u = choose_upstreams(
            None,
            Path::new(ETC),
            Path::new(SD),
            files(&[(ETC, "nameserver 127.0.0.53\n")]),
        );
        assert!(u.servers.is_empty());
        assert_eq!(u.source, None);
        let u = choose_upstreams(None, Path::new(ETC), Path::new(SD), files(&[]));
        assert!(u.servers.is_empty());
    }

    #[test]
    fn explicit_file_is_taken_as_is() {
        let u = choose_upstreams(
            Some(Path::new("/x/resolv.conf")),
            Path::new(ETC),
            Path::new(SD),
            files(&[
                ("/x/resolv.conf", "nameserver 127.0.0.1\n"),
                (ETC, "nameserver 10.0.0.2\n"),
            ]),
        );
        assert_eq!(u.servers, vec!["127.0.0.1:53".parse().unwrap()]);
        let u = choose_upstreams(
            Some(Path::new("/missing")),
            Path::new(ETC),
            Path::new(SD),
            files(&[(ETC, "nameserver 10.0.0.2\n")]),
        );
        assert!(
            u.servers.is_empty(),
            "an explicit file that gives nothing does not fall back"
        );
    }
}
