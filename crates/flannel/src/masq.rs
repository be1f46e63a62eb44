//! Masquerading of pod traffic that leaves the cluster network, in the nftables table
//! `ip rk3s-flannel` (flannel's rules): pod -> pod keeps its source address on every
//! node; pod -> outside the cluster CIDR is masqueraded; a host (not a pod) talking to a
//! pod on another node is masqueraded so the reply comes back through the overlay.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::plan::Ipv4Net;
use crate::FlannelError;

/// The nftables table (family `ip`).
pub const TABLE: &str = "rk3s-flannel";

/// The script that (re)creates the table for `cluster_cidr` and this node's
/// `pod_cidr`, as one transaction (the table is replaced whole).
pub fn render(cluster_cidr: Ipv4Net, pod_cidr: Ipv4Net) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster_cidr} ip daddr {cluster_cidr} return\n\
         \t\tip saddr {cluster_cidr} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != {cluster_cidr} ip daddr {pod_cidr} return\n\
         \t\tip saddr != {cluster_cidr} ip daddr {cluster_cidr} masquerade fully-random\n\
         \t}}\n\
         }}\n"
    )
}

/// The script that deletes the table (nothing when it is absent).
pub fn render_delete() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Runs `nft -f -` with `script`, optionally through a command prefix (`ip netns exec
/// NS` in tests).
pub fn apply(prefix: &[String], script: &str) -> Result<(), FlannelError> {
    let mut argv: Vec<String> = prefix.to_vec();
    argv.extend(["nft".to_string(), "-f".to_string(), "-".to_string()]);
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FlannelError::Nft(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| FlannelError::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| FlannelError::Nft(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.truncate(2048);
        Err(FlannelError::Nft(err))
    }
}

/// Deletes the table from the host, for `rk3s killall`.
pub fn cleanup() -> Result<(), FlannelError> {
    apply(&[], &render_delete())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_keep_pod_to_pod_and_masquerade_leaving_traffic() {
        let s = render(
            "10.42.0.0/16".parse().unwrap(),
            "10.42.3.0/24".parse().unwrap(),
        );
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
        // Replaces the table whole.
        assert!(pos("delete table ip rk3s-flannel") < pos("table ip rk3s-flannel {"));
        assert!(lines.contains(&"type nat hook postrouting priority srcnat; policy accept;"));
        // pod -> pod returns before any masquerade rule.
        let keep = pos("ip saddr 10.42.0.0/16 ip daddr 10.42.0.0/16 return");
        let out = pos("ip saddr 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random");
        assert!(keep < out);
        let local = pos("ip saddr != 10.42.0.0/16 ip daddr 10.42.3.0/24 return");
        let host = pos("ip saddr != 10.42.0.0/16 ip daddr 10.42.0.0/16 masquerade fully-random");
        assert!(local < host);
        assert_eq!(
            render_delete(),
            "table ip rk3s-flannel\ndelete table ip rk3s-flannel\n"
        );
    }
}
