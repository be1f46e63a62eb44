//! Running `nft -f -`: a script is one kernel transaction, applied whole or not at all.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::NetpolError;

/// Checks that `table` is a name nft accepts unquoted (letters, digits, `-`, `_`,
/// starting with a letter; at most 64 characters).
pub fn check_table_name(table: &str) -> Result<(), NetpolError> {
    let ok = table.len() <= 64
        && table
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NetpolError::TableName(table.to_string()))
    }
}

/// Runs `prefix... nft [-c] -f -` with `script` on stdin (blocking). `check_only` asks
/// the kernel to validate the transaction and then abort it (changes nothing).
pub fn apply_with(prefix: &[&str], script: &str, check_only: bool) -> Result<(), NetpolError> {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("nft");
            c
        }
        None => Command::new("nft"),
    };
    if check_only {
        cmd.arg("-c");
    }
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.len() > 4000 {
            let mut cut = 4000;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            stderr.truncate(cut);
            stderr.push_str("...");
        }
        Err(NetpolError::Nft {
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// Runs `nft [-c] -f -` with `script` (blocking).
pub fn apply_blocking(script: &str, check_only: bool) -> Result<(), NetpolError> {
    apply_with(&[], script, check_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert!(check_table_name("rk3s-netpol").is_ok());
        assert!(check_table_name("t_1").is_ok());
        for bad in ["", "1abc", "a b", "a;flush ruleset", &"x".repeat(65)] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }
}
