//! The custom ConfigMap (default `kube-system/coredns-custom`), in the spirit of k3s's
//! `coredns-custom` but without CoreDNS's Corefile language:
//!
//! - keys ending `.hosts`: hosts-file lines (`IP name...`, `#` comments), answered as
//!   A/AAAA (and PTR for the IP);
//! - `stubDomains`: a JSON object `{"domain": ["nameserver", ...]}` (kube-dns's format):
//!   names in (or under) `domain` are forwarded to those servers;
//! - `upstreamNameservers`: a JSON array of nameservers that replaces the resolv.conf
//!   upstreams for everything else;
//! - keys ending `.server` / `.override` (CoreDNS snippets) are ignored with a warning.
//!
//! A nameserver is an IP (port 53) or `IP:port` / `[IPv6]:port`. Parsing never fails as a
//! whole: each bad key or line becomes a warning and is skipped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// What the custom ConfigMap asks for, already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomConfig {
    /// Hosts entries: an address and the (lowercase, dot-trimmed) names it answers for.
    pub hosts: Vec<(IpAddr, Vec<String>)>,
    /// Stub domains: a lowercase domain (no trailing dot) and its nameservers.
    pub stub_domains: Vec<(String, Vec<SocketAddr>)>,
    /// Upstream nameservers replacing the resolv.conf ones, when set and non-empty.
    pub upstream_nameservers: Option<Vec<SocketAddr>>,
    /// Human-readable problems found (bad lines, bad JSON, ignored keys).
    pub warnings: Vec<String>,
}

/// Parses a nameserver as kube-dns accepts it: `IP` (port 53), `IP:port`, `[IPv6]:port`.
pub fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

/// Normalizes a DNS name for lookup: lowercase, without the trailing dot; `None` when
/// empty or not a plausible name (whitespace, empty labels).
pub fn normalize_name(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if s.is_empty()
        || s.len() > 253
        || s.split('.').any(|l| l.is_empty() || l.len() > 63)
        || s.chars().any(|c| c.is_whitespace() || c == '\\')
    {
        return None;
    }
    Some(s)
}

/// Parses the ConfigMap's `data`.
pub fn parse(data: &BTreeMap<String, String>) -> CustomConfig {
    let mut out = CustomConfig::default();
    for (key, value) in data {
        if key.ends_with(".hosts") {
            parse_hosts(key, value, &mut out);
        } else if key == "stubDomains" {
            parse_stub_domains(value, &mut out);
        } else if key == "upstreamNameservers" {
            parse_upstreams(value, &mut out);
        } else if key.ends_with(".server") || key.ends_with(".override") {
            out.warnings.push(format!(
                "key {key:?}: CoreDNS snippets are not supported by rk3s's built-in DNS; ignored"
            ));
        } else {
            out.warnings.push(format!("key {key:?}: unknown key ignored (expected *.hosts, stubDomains or upstreamNameservers)"));
        }
    }
    out
}

fn parse_hosts(key: &str, value: &str, out: &mut CustomConfig) {
    for (n, raw) in value.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            out.warnings.push(format!(
                "key {key:?} line {}: {addr:?} is not an IP address",
                n + 1
            ));
            continue;
        };
        let mut names = Vec::new();
        for f in fields {
            match normalize_name(f) {
                Some(name) => names.push(name),
                None => out.warnings.push(format!(
                    "key {key:?} line {}: {f:?} is not a valid name",
                    n + 1
                )),
            }
        }
        if names.is_empty() {
            out.warnings.push(format!(
                "key {key:?} line {}: no name after the address",
                n + 1
            ));
            continue;
        }
        out.hosts.push((ip, names));
    }
}

fn parse_stub_domains(value: &str, out: &mut CustomConfig) {
    let parsed: BTreeMap<String, Vec<String>> = match serde_json::from_str(value) {
        Ok(p) => p,
        Err(e) => {
            out.warnings.push(format!(
                "key \"stubDomains\": not a JSON object of domain -> [nameserver]: {e}"
            ));
            return;
        }
    };
    for (domain, servers) in parsed {
        let Some(d) = normalize_name(&domain) else {
            out.warnings.push(format!(
                "key \"stubDomains\": {domain:?} is not a valid domain"
            ));
            continue;
        };
        let addrs = parse_server_list("stubDomains", &servers, out);
        if addrs.is_empty() {
            out.warnings.push(format!(
                "key \"stubDomains\": domain {domain:?} has no valid nameserver"
            ));
            continue;
        }
        out.stub_domains.push((d, addrs));
    }
}

fn parse_upstreams(value: &str, out: &mut CustomConfig) {
    let parsed: Vec<String> = match serde_json::from_str(value) {
        Ok(p) => p,
        Err(e) => {
            out.warnings.push(format!(
                "key \"upstreamNameservers\": not a JSON array of nameservers: {e}"
            ));
            return;
        }
    };
    let addrs = parse_server_list("upstreamNameservers", &parsed, out);
    if !addrs.is_empty() {
        out.upstream_nameservers = Some(addrs);
    }
}

fn parse_server_list(key: &str, servers: &[String], out: &mut CustomConfig) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for s in servers {
        match parse_nameserver(s) {
            Some(a) => addrs.push(a),
            None => out
                .warnings
                .push(format!("key {key:?}: {s:?} is not a nameserver address")),
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hosts_lines_with_comments_and_errors() {
        let c = parse(&data(&[("extra.hosts", "# comment\n10.0.0.5 Foo.Example. bar # trailing\n\nnot-an-ip x\n10.0.0.6\nfd00::1 v6host\n")]));
        assert_eq!(
            c.hosts,
            vec![
                (
                    "10.0.0.5".parse().unwrap(),
                    vec!["foo.example".to_string(), "bar".to_string()]
                ),
                ("fd00::1".parse().unwrap(), vec!["v6host".to_string()])
            ]
        );
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn stub_domains_and_upstreams() {
        let c = parse(&data(&[
            (
                "stubDomains",
                r#"{"Acme.Local.": ["1.2.3.4", "1.2.3.5:5353"], "bad.local": ["nope"]}"#,
            ),
            ("upstreamNameservers", r#"["8.8.4.4", "[2001:db8::1]:53"]"#),
        ]));
        assert_eq!(
            c.stub_domains,
            vec![(
                "acme.local".to_string(),
                vec![
                    "1.2.3.4:53".parse().unwrap(),
                    "1.2.3.5:5353".parse().unwrap()
                ]
            )]
        );
        assert_eq!(
            c.upstream_nameservers,
            Some(vec![
                "8.8.4.4:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ])
        );
        // "nope" and then "bad.local has no valid nameserver".
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn bad_json_and_snippets_are_warnings() {
        let c = parse(&data(&[
            ("stubDomains", "{not json"),
            ("upstreamNameservers", "\"1.1.1.1\""),
            ("log.override", "log"),
            ("foo.server", "foo:53 {}"),
        ]));
        assert!(c.stub_domains.is_empty());
        assert_eq!(c.upstream_nameservers, None);
        assert_eq!(c.warnings.len(), 4);
        assert!(c.warnings.iter().any(|w| w.contains("log.override")));
    }

    #[test]
    fn nameserver_forms() {
        assert_eq!(
            parse_nameserver("10.0.0.1"),
            Some("10.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("10.0.0.1:54"),
            Some("10.0.0.1:54".parse().unwrap())
        );
        assert_eq!(parse_nameserver("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(
            parse_nameserver("[::1]:5353"),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(parse_nameserver("10.0.0.1:0"), None);
        assert_eq!(parse_nameserver("dns.example"), None);
    }
}
