//! The node's CNI configuration: a conflist with the `bridge` plugin (bridge `cni0`,
//! gateway, masquerade, hairpin) and `host-local` IPAM on the node's podCIDR, plus
//! `portmap` for hostPorts. containerd's CRI plugin runs the plugins (Debian's, in
//! `/usr/lib/cni`) from the conf dir the supervisor configured; loopback is set up by
//! containerd itself.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::json;

/// Name of the conflist file.
pub const CONFLIST_NAME: &str = "10-rk3s.conflist";
/// Name of the CNI network.
pub const NETWORK_NAME: &str = "rk3s";
/// The bridge pods are attached to.
pub const BRIDGE: &str = "cni0";

/// Errors writing the CNI config.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The podCIDR is not an IPv4 CIDR.
    #[error("invalid podCIDR {0:?}: expected an IPv4 CIDR such as 10.42.0.0/24")]
    BadCidr(String),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Parses `a.b.c.d/len` into the network address and prefix length.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), CniError> {
    let bad = || CniError::BadCidr(cidr.to_string());
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(1..=30).contains(&len) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - len);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// True when `ip` lies in `cidr`.
pub fn cidr_contains(cidr: &str, ip: &str) -> bool {
    let (Ok((net, len)), Ok(ip)) = (parse_cidr(cidr), ip.parse::<Ipv4Addr>()) else {
        return false;
    };
    let mask = u32::MAX << (32 - len);
    u32::from(ip) & mask == u32::from(net)
}

/// The conflist text for a podCIDR; host-local keeps its leases in `ipam_dir`.
pub fn conflist(pod_cidr: &str, ipam_dir: &Path) -> Result<String, CniError> {
    let (net, len) = parse_cidr(pod_cidr)?;
    let gateway = Ipv4Addr::from(u32::from(net) + 1);
    let v = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir.to_string_lossy(),
                    "ranges": [[{"subnet": format!("{net}/{len}"), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    });
    serde_json::to_string_pretty(&v).map_err(|e| CniError::BadCidr(e.to_string()))
}

/// Writes `<conf_dir>/10-rk3s.conflist` for the podCIDR (atomically, and only when it
/// differs from what is there). Returns true when the file changed.
pub fn write_config(conf_dir: &Path, pod_cidr: &str, ipam_dir: &Path) -> Result<bool, CniError> {
    let text = conflist(pod_cidr, ipam_dir)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CniError::Io { path, source }
    };
    std::fs::create_dir_all(conf_dir).map_err(io(conf_dir))?;
    let path = conf_dir.join(CONFLIST_NAME);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    let tmp = conf_dir.join(format!(".{CONFLIST_NAME}.tmp"));
    std::fs::write(&tmp, &text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_has_bridge_ipam_and_portmap() {
        let t = conflist("10.42.3.0/24", Path::new("/var/lib/rk3s/agent/cni")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["bridge"], "cni0");
        assert_eq!(v["plugins"][0]["isGateway"], true);
        assert_eq!(v["plugins"][0]["ipMasq"], true);
        assert_eq!(v["plugins"][0]["hairpinMode"], true);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.3.0/24"
        );
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.42.3.1"
        );
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        assert!(conflist("10.42.0.0", Path::new("/x")).is_err());
        assert!(conflist("fd00::/64", Path::new("/x")).is_err());
        assert!(parse_cidr("10.42.0.7/24")
            .is_ok_and(|(n, l)| n == Ipv4Addr::new(10, 42, 0, 0) && l == 24));
    }

    #[test]
    fn contains() {
        assert!(cidr_contains("10.42.0.0/24", "10.42.0.17"));
        assert!(!cidr_contains("10.42.0.0/24", "10.42.1.17"));
        assert!(!cidr_contains("10.42.0.0/24", "nope"));
    }

    #[test]
    fn written_once() {
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        assert!(write_config(d.path(), "10.42.0.0/24", Path::new("/x")).is_ok_and(|c| c));
        assert!(write_config(d.path(), "10.42.0.0/24", Path::new("/x")).is_ok_and(|c| !c));
        assert!(write_config(d.path(), "10.42.1.0/24", Path::new("/x")).is_ok_and(|c| c));
        assert!(d.path().join(CONFLIST_NAME).exists());
    }
}
