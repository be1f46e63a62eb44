//! The node's CNI configuration: a conflist with the `bridge` plugin (bridge `cni0`,
//! gateway, masquerade, hairpin) and `host-local` IPAM on the node's podCIDR, plus
//! `portmap` for hostPorts. containerd's CRI plugin runs the plugins (Debian's, in
//! `/usr/lib/cni`) from the conf dir the supervisor configured; loopback is set up by
//! containerd itself.

use std::net::{IpAddr, Ipv4Addr};
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

/// Parses `a.b.c.d/len` (with [`rk3s_core::Cidr`]) into the network address and prefix
/// length; only IPv4 networks of /1 to /30 can hold pods.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), CniError> {
    match rk3s_core::Cidr::parse(cidr).map(|c| (c.addr(), c.prefix())) {
        Ok((IpAddr::V4(net), len)) if (1..=30).contains(&len) => Ok((net, len)),
        _ => Err(CniError::BadCidr(cidr.to_string())),
    }
}

/// True when `ip` lies in `cidr`.
pub fn cidr_contains(cidr: &str, ip: &str) -> bool {
    let (Ok(net), Ok(ip)) = (rk3s_core::Cidr::parse(cidr), ip.parse::<IpAddr>()) else {
        return false;
    };
    net.contains(&ip)
}

/// How the node's pods reach beyond their bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The bridge plugin masquerades traffic leaving the node's podCIDR. Off when the
    /// pod network across nodes (flannel) runs: it masquerades only traffic leaving the
    /// cluster CIDR, so pod -> pod across nodes keeps its source address.
    pub ip_masq: bool,
    /// The pods' MTU (the uplink's less the tunnel overhead); None: the default.
    pub mtu: Option<u32>,
}

impl Default for PodNetwork {
    fn default() -> Self {
        PodNetwork {
            ip_masq: true,
            mtu: None,
        }
    }
}

/// The conflist text for a podCIDR; host-local keeps its leases in `ipam_dir`.
pub fn conflist(pod_cidr: &str, ipam_dir: &Path) -> Result<String, CniError> {
    conflist_for(pod_cidr, ipam_dir, PodNetwork::default())
}

/// The conflist text for a podCIDR and pod network settings.
pub fn conflist_for(
    pod_cidr: &str,
    ipam_dir: &Path,
    pod_net: PodNetwork,
) -> Result<String, CniError> {
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
                "ipMasq": pod_net.ip_masq,
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
    let mut v = v;
    if let Some(mtu) = pod_net.mtu {
        v["plugins"][0]["mtu"] = mtu.into();
    }
    serde_json::to_string_pretty(&v).map_err(|e| CniError::BadCidr(e.to_string()))
}

/// Writes `<conf_dir>/10-rk3s.conflist` for the podCIDR (atomically, and only when it
/// differs from what is there). Returns true when the file changed.
pub fn write_config(
    conf_dir: &Path,
    pod_cidr: &str,
    ipam_dir: &Path,
    net: PodNetwork,
) -> Result<bool, CniError> {
    let text = conflist_for(pod_cidr, ipam_dir, net)?;
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
        let flannel = conflist_for(
            "10.42.3.0/24",
            Path::new("/x"),
            PodNetwork {
                ip_masq: false,
                mtu: Some(1450),
            },
        )
        .expect("conflist");
        let v: serde_json::Value = serde_json::from_str(&flannel).expect("json");
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(v["plugins"][0]["mtu"], 1450);
        let plain: serde_json::Value =
            serde_json::from_str(&conflist("10.42.3.0/24", Path::new("/x")).expect("c"))
                .expect("j");
        assert_eq!(plain["plugins"][0]["ipMasq"], true);
        assert!(plain["plugins"][0].get("mtu").is_none());
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
        assert!(write_config(
            d.path(),
            "10.42.0.0/24",
            Path::new("/x"),
            PodNetwork::default()
        )
        .is_ok_and(|c| c));
        assert!(write_config(
            d.path(),
            "10.42.0.0/24",
            Path::new("/x"),
            PodNetwork::default()
        )
        .is_ok_and(|c| !c));
        assert!(write_config(
            d.path(),
            "10.42.1.0/24",
            Path::new("/x"),
            PodNetwork::default()
        )
        .is_ok_and(|c| c));
        assert!(d.path().join(CONFLIST_NAME).exists());
    }
}
