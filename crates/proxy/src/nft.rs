//! Running `nft -f -`: one script, one atomic transaction.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::ProxyError;

/// Runs nftables scripts.
pub trait NftRunner: Send + Sync {
    /// Applies `script` as one transaction (all of it or nothing).
    fn apply(&self, script: &str) -> Result<(), ProxyError>;

    /// Runs `nft <args>` and returns its standard output (for listing).
    fn output(&self, args: &[&str]) -> Result<String, ProxyError>;
}

/// The `nft` binary, run directly or through a command prefix such as
/// `ip netns exec NS` (what tests and benchmarks use).
#[derive(Clone, Debug)]
pub struct Nft {
    argv: Vec<String>,
}

/// Longest part of nft's error output kept in an error.
const MAX_STDERR: usize = 4096;

impl Nft {
    /// `nft` from `PATH`, in the caller's network namespace.
    pub fn host() -> Self {
        Nft {
            argv: vec!["nft".to_string()],
        }
    }

    /// `ip netns exec <netns> nft`: nft inside a named network namespace.
    pub fn in_netns(netns: &str) -> Self {
        Nft {
            argv: ["ip", "netns", "exec", netns, "nft"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        c
    }

    /// Whether `nft` can be run at all.
    pub fn available(&self) -> bool {
        self.command()
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

fn spawn_error(e: std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ProxyError::NftMissing(e.to_string())
    } else {
        ProxyError::Io(e)
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_STDERR {
        let mut cut = MAX_STDERR;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

impl NftRunner for Nft {
    fn apply(&self, script: &str) -> Result<(), ProxyError> {
        let mut child = self
            .command()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let write_result = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(script.as_bytes()),
            None => Ok(()),
        };
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(ProxyError::Nft {
                code: out.status.code(),
                stderr: truncate(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
        write_result?;
        Ok(())
    }

    fn output(&self, args: &[&str]) -> Result<String, ProxyError> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(spawn_error)?;
        if !out.status.success() {
            return Err(ProxyError::Nft {
                code: out.status.code(),
                stderr: truncate(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The script deleting `table` in both families whether or not it exists (`add` first
/// makes the `delete` unconditional).
pub fn cleanup_script(table: &str) -> String {
    format!("add table ip {table}\ndelete table ip {table}\nadd table ip6 {table}\ndelete table ip6 {table}\n")
}

/// Whether `table` is a name nftables accepts without quoting.
pub fn valid_table_name(table: &str) -> bool {
    !table.is_empty()
        && table.len() <= 255
        && table.as_bytes()[0].is_ascii_alphabetic()
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert!(valid_table_name("rk3s-proxy"));
        assert!(!valid_table_name(""));
        assert!(!valid_table_name("1abc"));
        assert!(!valid_table_name("a b"));
        assert!(!valid_table_name("a;flush ruleset"));
    }

    #[test]
    fn cleanup_deletes_both_families_unconditionally() {
        assert_eq!(
            cleanup_script("t"),
            "add table ip t\ndelete table ip t\nadd table ip6 t\ndelete table ip6 t\n"
        );
    }

    #[test]
    fn missing_binary_is_reported() {
        let n = Nft {
            argv: vec!["/nonexistent/nft".into()],
        };
        assert!(!n.available());
        assert!(matches!(
            n.apply("list ruleset"),
            Err(ProxyError::NftMissing(_))
        ));
    }
}
