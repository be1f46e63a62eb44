//! Node passwords: each agent keeps a random password in its data dir and the server keeps
//! its hash in `kube-system/<node>.node-password.rk3s`, so that another machine cannot take
//! over a node's name (k3s's node-password Secrets).
//!
//! Hashes are PBKDF2-HMAC-SHA256 with a random salt, written
//! `$pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`.

use std::num::NonZeroU32;

use base64::Engine;
use ring::rand::SecureRandom;

const SCHEME: &str = "pbkdf2-sha256";
const ITERATIONS: u32 = 20_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// The name of the Secret in `kube-system` that holds node `node`'s password hash.
pub fn secret_name(node: &str) -> String {
    format!(
        "{}.node-password.{}",
        node.to_ascii_lowercase(),
        crate::PROGRAM
    )
}

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    // SystemRandom only fails if the OS has no randomness source: fall back to a salt
    // derived from the time, which still keeps the hash non-reversible.
    if ring::rand::SystemRandom::new().fill(&mut salt).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        salt.copy_from_slice(&t.to_le_bytes()[..SALT_LEN]);
    }
    hash_with(password, &salt, ITERATIONS)
}

fn hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_LEN];
    let iters = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iters,
        salt,
        password.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "${SCHEME}${iterations}${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

/// Whether `password` matches `stored` (a hash made by [`hash`]). A malformed hash
/// matches nothing.
pub fn verify(stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(""), Some(SCHEME), Some(iters), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let (Ok(iters), Ok(salt), Ok(expected)) =
        (iters.parse::<u32>(), b64.decode(salt), b64.decode(expected))
    else {
        return false;
    };
    let Some(iters) = NonZeroU32::new(iters) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iters,
        &salt,
        password.as_bytes(),
        &expected,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("s3cret");
        let b = hash("s3cret");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(a.starts_with("$pbkdf2-sha256$20000$"));
        assert!(verify(&a, "s3cret"));
        assert!(verify(&b, "s3cret"));
        assert!(!verify(&a, "s3cret "));
        assert!(!verify(&a, ""));
    }

    #[test]
    fn malformed_hashes_match_nothing() {
        for bad in [
            "",
            "s3cret",
            "$pbkdf2-sha256$0$AAAA$AAAA",
            "$pbkdf2-sha256$x$AAAA$AAAA",
            "$scrypt$1$AAAA$AAAA",
            "$pbkdf2-sha256$10$!!$AAAA",
            "$pbkdf2-sha256$10$AAAA$AAAA$extra",
        ] {
            assert!(!verify(bad, "s3cret"), "{bad}");
        }
    }

    #[test]
    fn secret_names_are_k3s_shaped_and_lower_case() {
        assert_eq!(secret_name("Agent-1"), "agent-1.node-password.rk3s");
    }
}
