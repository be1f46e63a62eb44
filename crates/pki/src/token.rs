//! k3s-format join tokens: `K10<CA hash>::<username>:<password>` (or
//! `K10<CA hash>::<bearer token>`) and bare secrets.

use ring::rand::SecureRandom;

use crate::PkiError;

const PREFIX: &str = "K10";

/// A parsed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// The SHA-256 hex hash of the cluster CA certificate PEM (full tokens only), lower case.
    pub ca_hash: Option<String>,
    /// The user name of `<username>:<password>` credentials (`server` for server tokens).
    pub username: Option<String>,
    /// The password; or the whole bearer token when there is no user name (e.g. a
    /// bootstrap token `abcdef.0123456789abcdef`); or the bare secret of a short token.
    pub secret: String,
}

impl ParsedToken {
    /// The token id if the secret has the bootstrap-token form `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub fn bootstrap_token_id(&self) -> Option<&str> {
        if self.username.is_some() {
            return None;
        }
        let (id, secret) = self.secret.split_once('.')?;
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        (ok(id, 6) && ok(secret, 16)).then_some(id)
    }
}

/// Parses a token: `K10<64 hex>::<user>:<password>`, `K10<64 hex>::<bearer>`, or anything
/// else as a bare (short) secret. Surrounding whitespace is ignored; empty is an error.
pub fn parse_token(token: &str) -> Result<ParsedToken, PkiError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(PkiError::InvalidToken("empty token".into()));
    }
    let full = token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once("::"));
    let Some((hash, credentials)) = full else {
        return Ok(ParsedToken {
            ca_hash: None,
            username: None,
            secret: token.to_string(),
        });
    };
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PkiError::InvalidToken(
            "the CA hash of a K10 token must be 64 hexadecimal characters".into(),
        ));
    }
    if credentials.is_empty() {
        return Err(PkiError::InvalidToken(
            "the token has no credentials".into(),
        ));
    }
    let (username, secret) = match credentials.split_once(':') {
        Some((user, password)) => {
            if user.is_empty() || password.is_empty() {
                return Err(PkiError::InvalidToken(
                    "token credentials must be <username>:<password>".into(),
                ));
            }
            (Some(user.to_string()), password.to_string())
        }
        None => (None, credentials.to_string()),
    };
    Ok(ParsedToken {
        ca_hash: Some(hash.to_ascii_lowercase()),
        username,
        secret,
    })
}

/// The CA hash of a token: SHA-256 (lower-case hex) of the CA certificate PEM bytes as
/// stored on disk.
pub fn ca_cert_hash(ca_cert_pem: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, ca_cert_pem.as_bytes()).as_ref())
}

/// The full server token: `K10<ca hash>::server:<secret>`.
pub fn format_token(ca_cert_pem: &str, secret: &str) -> String {
    format!("{PREFIX}{}::server:{secret}", ca_cert_hash(ca_cert_pem))
}

/// Whether `presented` authenticates against the server `secret`: its secret part must
/// equal `secret` (compared in constant time) and, if it is a full token, its CA hash
/// must be the hash of `ca_cert_pem`. The user name of `user:password` credentials is
/// not checked (k3s accepts `server` and `node`). A malformed token never matches.
pub fn token_matches(secret: &str, ca_cert_pem: &str, presented: &str) -> bool {
    let Ok(parsed) = parse_token(presented) else {
        return false;
    };
    let hash_ok = match &parsed.ca_hash {
        Some(h) => constant_time_eq(h.as_bytes(), ca_cert_hash(ca_cert_pem).as_bytes()),
        None => true,
    };
    let secret_ok = constant_time_eq(parsed.secret.as_bytes(), secret.as_bytes());
    hash_ok & secret_ok
}

/// A random 32-hex-character secret.
pub(crate) fn random_secret() -> Result<String, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";

    #[test]
    fn hash_is_sha256_of_pem() {
        // sha256("abc")
        assert_eq!(
            hex(ring::digest::digest(&ring::digest::SHA256, b"abc").as_ref()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ca_cert_hash(CA).len(), 64);
        assert_ne!(ca_cert_hash(CA), ca_cert_hash("other"));
    }

    #[test]
    fn parse_full_and_short_tokens() {
        let t = format_token(CA, "s3cr:et");
        let p = parse_token(&t).unwrap();
        assert_eq!(p.ca_hash.as_deref(), Some(ca_cert_hash(CA).as_str()));
        assert_eq!(p.username.as_deref(), Some("server"));
        assert_eq!(p.secret, "s3cr:et");

        let p = parse_token(" plain-secret\n").unwrap();
        assert_eq!(
            p,
            ParsedToken {
                ca_hash: None,
                username: None,
                secret: "plain-secret".into()
            }
        );

        let boot = format!("K10{}::abcdef.0123456789abcdef", ca_cert_hash(CA));
        let p = parse_token(&boot).unwrap();
        assert_eq!(p.username, None);
        assert_eq!(p.bootstrap_token_id(), Some("abcdef"));
        assert_eq!(parse_token("xyz").unwrap().bootstrap_token_id(), None);

        // K10 without "::" is just a secret that happens to start with K10
        assert_eq!(parse_token("K10abc").unwrap().ca_hash, None);
        assert!(parse_token("").is_err());
        assert!(parse_token("K10abc::server:x").is_err());
        assert!(parse_token(&format!("K10{}::", ca_cert_hash(CA))).is_err());
        assert!(parse_token(&format!("K10{}::server:", ca_cert_hash(CA))).is_err());
    }

    #[test]
    fn matching() {
        let full = format_token(CA, "pw");
        assert!(token_matches("pw", CA, &full));
        assert!(token_matches("pw", CA, "pw"));
        assert!(token_matches(
            "pw",
            CA,
            &format!("K10{}::node:pw", ca_cert_hash(CA))
        ));
        assert!(!token_matches("pw", CA, "pw2"));
        assert!(!token_matches("pw", "another CA", &full));
        assert!(!token_matches("pw", CA, ""));
        assert!(!token_matches("pw", CA, &format_token(CA, "px")));
    }

    #[test]
    fn random_secrets_are_hex_and_distinct() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
