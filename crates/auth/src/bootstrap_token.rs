//! Bootstrap tokens (`<id>.<secret>`), checked against their
//! `bootstrap.kubernetes.io/token` Secret as upstream's bootstrap authenticator.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use crate::util::str_at;
use crate::UserInfo;

/// The group every bootstrap token user is in.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers";

fn valid_id(id: &str) -> bool {
    id.len() == 6
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn valid_secret(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$`
fn valid_extra_group(g: &str) -> bool {
    let Some(rest) = g.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    let b = rest.as_bytes();
    match b.split_last() {
        Some((last, init)) => {
            (last.is_ascii_lowercase() || last.is_ascii_digit())
                && init.len() <= 255
                && init.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b':' || *c == b'-'
                })
        }
        None => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Secret name holding bootstrap token `<id>`: `bootstrap-token-<id>` (in
/// `kube-system`), or `None` when `token` is not of the `<6>.<16>` form. The caller
/// fetches that Secret and passes it to [`authenticate_bootstrap_token`].
pub fn bootstrap_token_secret_name(token: &str) -> Option<String> {
    let (id, secret) = token.split_once('.')?;
    (valid_id(id) && valid_secret(secret)).then(|| format!("bootstrap-token-{id}"))
}

/// Authenticates bootstrap token `token` (`<id>.<secret>`) against `secret` (the
/// `kube-system/bootstrap-token-<id>` Secret as stored, `data` base64-encoded) at
/// `now` (unix seconds). Requires type `bootstrap.kubernetes.io/token`, no
/// deletionTimestamp, matching `token-id` and `token-secret`,
/// `usage-bootstrap-authentication: true`, and an `expiration` (RFC 3339), if any, in
/// the future. The user is `system:bootstrap:<id>` with the sorted groups
/// `system:bootstrappers` + `auth-extra-groups` (each must match
/// `system:bootstrappers:...`) + `system:authenticated`.
pub fn authenticate_bootstrap_token(token: &str, secret: &Value, now: i64) -> Option<UserInfo> {
    let (id, token_secret) = token.split_once('.')?;
    if !valid_id(id) || !valid_secret(token_secret) {
        return None;
    }
    let name = str_at(secret, &["metadata", "name"]);
    if !name.is_empty() && name != format!("bootstrap-token-{id}") {
        tracing::debug!("bootstrap token: secret {name:?} does not match token id");
        return None;
    }
    if str_at(secret, &["type"]) != "bootstrap.kubernetes.io/token" {
        return None;
    }
    if secret
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        return None;
    }
    let data = |key: &str| -> Option<String> {
        let b64 = secret.get("data")?.get(key)?.as_str()?;
        let bytes = STANDARD.decode(b64).ok()?;
        String::from_utf8(bytes).ok()
    };
    let stored_secret = data("token-secret")?;
    if !constant_time_eq(stored_secret.as_bytes(), token_secret.as_bytes()) {
        tracing::debug!("bootstrap token {id}: secret mismatch");
        return None;
    }
    if data("token-id")? != id {
        return None;
    }
    if let Some(exp) = data("expiration") {
        // unparsable expirations count as expired, as upstream
        let expired = match exp.parse::<jiff::Timestamp>() {
            Ok(t) => t.as_second() <= now,
            Err(_) => true,
        };
        if expired {
            tracing::debug!("bootstrap token {id}: expired");
            return None;
        }
    }
    if data("usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    let mut groups = vec![BOOTSTRAP_GROUP.to_string()];
    if let Some(extra) = data("auth-extra-groups") {
        for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !valid_extra_group(g) {
                tracing::debug!("bootstrap token {id}: invalid extra group {g:?}");
                return None;
            }
            groups.push(g.to_string());
        }
    }
    groups.sort();
    groups.dedup();
    let user = UserInfo {
        name: format!("system:bootstrap:{id}"),
        groups,
        ..Default::default()
    };
    Some(user.with_authenticated_group())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn secret(expiration: Option<&str>) -> Value {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "data": {
                "token-id": b64("abcdef"),
                "token-secret": b64("0123456789abcdef"),
                "usage-bootstrap-authentication": b64("true"),
                "usage-bootstrap-signing": b64("true"),
                "auth-extra-groups": b64("system:bootstrappers:kubeadm:default-node-token"),
            }
        });
        if let Some(e) = expiration {
            s["data"]["expiration"] = json!(b64(e));
        }
        s
    }

    const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    #[test]
    fn accepts_valid_token() {
        let u = authenticate_bootstrap_token(
            "abcdef.0123456789abcdef",
            &secret(Some("2030-01-01T00:00:00Z")),
            NOW,
        );
        let u = u.unwrap_or_default();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert_eq!(
            u.groups,
            vec![
                "system:bootstrappers",
                "system:bootstrappers:kubeadm:default-node-token",
                "system:authenticated"
            ]
        );
        assert_eq!(
            bootstrap_token_secret_name("abcdef.0123456789abcdef").as_deref(),
            Some("bootstrap-token-abcdef")
        );
        assert_eq!(bootstrap_token_secret_name("abc.def"), None);
    }

    #[test]
    fn rejects_expired() {
        assert!(authenticate_bootstrap_token(
            "abcdef.0123456789abcdef",
            &secret(Some("2020-01-01T00:00:00Z")),
            NOW
        )
        .is_none());
        assert!(authenticate_bootstrap_token(
            "abcdef.0123456789abcdef",
            &secret(Some("garbage")),
            NOW
        )
        .is_none());
    }

    #[test]
    fn rejects_wrong_secret_and_bad_secrets() {
        assert!(
            authenticate_bootstrap_token("abcdef.0123456789abcdee", &secret(None), NOW).is_none()
        );
        assert!(
            authenticate_bootstrap_token("ABCDEF.0123456789abcdef", &secret(None), NOW).is_none()
        );
        let mut s = secret(None);
        s["data"]["usage-bootstrap-authentication"] = json!(b64("false"));
        assert!(authenticate_bootstrap_token("abcdef.0123456789abcdef", &s, NOW).is_none());
        let mut s = secret(None);
        s["type"] = json!("Opaque");
        assert!(authenticate_bootstrap_token("abcdef.0123456789abcdef", &s, NOW).is_none());
        let mut s = secret(None);
        s["data"]["auth-extra-groups"] = json!(b64("system:masters"));
        assert!(authenticate_bootstrap_token("abcdef.0123456789abcdef", &s, NOW).is_none());
        let mut s = secret(None);
        s["metadata"]["deletionTimestamp"] = json!("2023-01-01T00:00:00Z");
        assert!(authenticate_bootstrap_token("abcdef.0123456789abcdef", &s, NOW).is_none());
        // no expiration at all is fine
        assert!(
            authenticate_bootstrap_token("abcdef.0123456789abcdef", &secret(None), NOW).is_some()
        );
    }
}
