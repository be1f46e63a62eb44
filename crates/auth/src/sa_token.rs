//! Service-account JWTs (ES256), as upstream's `pkg/serviceaccount`: legacy
//! secret-based tokens and bound (TokenRequest / projected) tokens.

use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use serde_json::{json, Map, Value};

use crate::util::str_at;
use crate::{AuthError, UserInfo};

/// The issuer of legacy secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Clock skew tolerated on `exp`, `nbf` and `iat` (go-jose's default, 1 minute).
const LEEWAY_SECONDS: i64 = 60;
/// DER prefix of a P-256 `SubjectPublicKeyInfo`; the 65-byte point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

const LEGACY_NS: &str = "kubernetes.io/serviceaccount/namespace";
const LEGACY_SECRET: &str = "kubernetes.io/serviceaccount/secret.name";
const LEGACY_SA_NAME: &str = "kubernetes.io/serviceaccount/service-account.name";
const LEGACY_SA_UID: &str = "kubernetes.io/serviceaccount/service-account.uid";

/// `user.Info.extra` keys set for bound tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
/// See [`EXTRA_POD_NAME`]; value `JTI=<jti>`.
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// A reference to the object a bound token is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The objects a bound token is bound to; the token is valid only while they exist
/// with these uids (the caller checks, as upstream's validator does with its getters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundRefs {
    /// The pod (projected volume tokens).
    pub pod: Option<ObjectRef>,
    /// A secret.
    pub secret: Option<ObjectRef>,
    /// The node (tokens bound to a node, or to a pod on that node).
    pub node: Option<ObjectRef>,
}

/// What to put in a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaClaims {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account_name: String,
    /// The service account's uid.
    pub service_account_uid: String,
    /// Audiences (`aud`); bound tokens only.
    pub audiences: Vec<String>,
    /// `iat` (and `nbf`), unix seconds; bound tokens only.
    pub issued_at: i64,
    /// `exp`, unix seconds; bound tokens only.
    pub expires_at: i64,
    /// Bound objects; bound tokens only.
    pub bound: BoundRefs,
    /// `jti`; generated (a random UUID) when `None`; bound tokens only.
    pub jti: Option<String>,
    /// `Some(secret name)` makes a legacy secret-based token (issuer
    /// [`LEGACY_ISSUER`], no expiry, no audience).
    pub legacy_secret_name: Option<String>,
}

impl SaClaims {
    /// Claims of a bound token valid from `now` for `expiration_seconds`.
    pub fn bound(
        namespace: &str,
        service_account_name: &str,
        service_account_uid: &str,
        audiences: Vec<String>,
        now: i64,
        expiration_seconds: i64,
    ) -> Self {
        SaClaims {
            namespace: namespace.into(),
            service_account_name: service_account_name.into(),
            service_account_uid: service_account_uid.into(),
            audiences,
            issued_at: now,
            expires_at: now.saturating_add(expiration_seconds),
            ..Default::default()
        }
    }

    /// Claims of a legacy token stored in Secret `secret_name`.
    pub fn legacy(
        namespace: &str,
        service_account_name: &str,
        service_account_uid: &str,
        secret_name: &str,
    ) -> Self {
        SaClaims {
            namespace: namespace.into(),
            service_account_name: service_account_name.into(),
            service_account_uid: service_account_uid.into(),
            legacy_secret_name: Some(secret_name.into()),
            ..Default::default()
        }
    }
}

/// A token that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `system:serviceaccount:<ns>:<sa>` with groups `system:serviceaccounts`,
    /// `system:serviceaccounts:<ns>`, `system:authenticated`, uid the service
    /// account's uid, and for bound tokens the pod/node/credential-id extras.
    pub user: UserInfo,
    /// For bound tokens, what they are bound to (`None` for legacy tokens).
    pub bound: Option<BoundRefs>,
    /// For legacy tokens, `(namespace, secret name)`: the caller checks the Secret
    /// still exists and holds this very token, and the ServiceAccount still exists
    /// with [`UserInfo::uid`].
    pub legacy_secret: Option<(String, String)>,
    /// The token's audiences (the API audiences for legacy tokens).
    pub audiences: Vec<String>,
    /// `exp`, if any.
    pub expires_at: Option<i64>,
}

fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut label: Option<String> = None;
    let mut b64 = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(l) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            label = Some(l.to_string());
            b64.clear();
        } else if line.starts_with("-----END ") {
            if let Some(l) = label.take() {
                if let Ok(der) = STANDARD.decode(b64.as_bytes()) {
                    out.push((l, der));
                }
            }
        } else if label.is_some() {
            b64.push_str(line);
        }
    }
    out
}

fn spki_from_point(point: &[u8]) -> Vec<u8> {
    let mut v = P256_SPKI_PREFIX.to_vec();
    v.extend_from_slice(point);
    v
}

fn key_id(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
}

/// Signs service-account tokens with the cluster's ECDSA P-256 key.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    issuer: String,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish()
    }
}

impl TokenIssuer {
    /// Reads a PKCS#8 `PRIVATE KEY` PEM (P-256); `issuer` is the `iss` of bound tokens
    /// (`--service-account-issuer`, e.g. `https://kubernetes.default.svc.cluster.local`).
    pub fn new(private_pem: &str, issuer: &str) -> Result<Self, AuthError> {
        let rng = SystemRandom::new();
        let der = pem_blocks(private_pem)
            .into_iter()
            .find(|(l, _)| l == "PRIVATE KEY")
            .map(|(_, d)| d)
            .ok_or_else(|| AuthError::InvalidKey("no PKCS#8 \"PRIVATE KEY\" PEM block".into()))?;
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| AuthError::InvalidKey(format!("not a P-256 PKCS#8 key: {e}")))?;
        let kid = key_id(&spki_from_point(key.public_key().as_ref()));
        Ok(TokenIssuer {
            key,
            issuer: issuer.into(),
            kid,
            rng,
        })
    }

    /// The `kid` header value: base64url(SHA-256(SPKI DER)), as upstream.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The issuer of bound tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn new_jti(&self) -> Result<String, AuthError> {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b).map_err(|_| AuthError::Signing)?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }

    /// Issues a signed JWT (`header.payload.signature`).
    pub fn issue(&self, c: &SaClaims) -> Result<String, AuthError> {
        let sub = format!(
            "system:serviceaccount:{}:{}",
            c.namespace, c.service_account_name
        );
        let payload = match &c.legacy_secret_name {
            Some(secret) => json!({
                "iss": LEGACY_ISSUER,
                LEGACY_NS: c.namespace,
                LEGACY_SECRET: secret,
                LEGACY_SA_NAME: c.service_account_name,
                LEGACY_SA_UID: c.service_account_uid,
                "sub": sub,
            }),
            None => {
                let obj = |r: &ObjectRef| json!({"name": r.name, "uid": r.uid});
                let mut k8s = Map::new();
                k8s.insert("namespace".into(), json!(c.namespace));
                if let Some(n) = &c.bound.node {
                    k8s.insert("node".into(), obj(n));
                }
                if let Some(p) = &c.bound.pod {
                    k8s.insert("pod".into(), obj(p));
                }
                if let Some(s) = &c.bound.secret {
                    k8s.insert("secret".into(), obj(s));
                }
                k8s.insert(
                    "serviceaccount".into(),
                    json!({"name": c.service_account_name, "uid": c.service_account_uid}),
                );
                let jti = match &c.jti {
                    Some(j) => j.clone(),
                    None => self.new_jti()?,
                };
                json!({
                    "aud": c.audiences,
                    "exp": c.expires_at,
                    "iat": c.issued_at,
                    "iss": self.issuer,
                    "jti": jti,
                    "kubernetes.io": k8s,
                    "nbf": c.issued_at,
                    "sub": sub,
                })
            }
        };
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| AuthError::Signing)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

/// Verifies service-account tokens (both kinds) against the cluster's public keys.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    /// Uncompressed P-256 points.
    keys: Vec<Vec<u8>>,
    issuers: Vec<String>,
    api_audiences: Vec<String>,
}

impl TokenVerifier {
    /// `public_pem` holds one or more `PUBLIC KEY` (SPKI, P-256) blocks — a PKCS#8
    /// `PRIVATE KEY` block is accepted too, its public half is used. `issuers` are
    /// the accepted `iss` of bound tokens (legacy tokens, issuer
    /// [`LEGACY_ISSUER`], are always accepted); `api_audiences` the
    /// `--api-audiences` (a token must name one of them; when empty any is accepted).
    pub fn new(
        public_pem: &str,
        issuers: Vec<String>,
        api_audiences: Vec<String>,
    ) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        for (label, der) in pem_blocks(public_pem) {
            match label.as_str() {
                "PUBLIC KEY" => {
                    if der.len() == P256_SPKI_PREFIX.len() + 65
                        && der.starts_with(&P256_SPKI_PREFIX)
                    {
                        keys.push(der[P256_SPKI_PREFIX.len()..].to_vec());
                    } else {
                        return Err(AuthError::InvalidKey(
                            "public key is not an ECDSA P-256 key".into(),
                        ));
                    }
                }
                "PRIVATE KEY" => {
                    let kp = EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        &der,
                        &SystemRandom::new(),
                    )
                    .map_err(|e| AuthError::InvalidKey(format!("not a P-256 PKCS#8 key: {e}")))?;
                    keys.push(kp.public_key().as_ref().to_vec());
                }
                _ => {}
            }
        }
        if keys.is_empty() {
            return Err(AuthError::InvalidKey("no PUBLIC KEY PEM block".into()));
        }
        Ok(TokenVerifier {
            keys,
            issuers,
            api_audiences,
        })
    }

    /// Verifies `token` at time `now` (unix seconds): structure, `iss`, signature,
    /// `exp`/`nbf`/`iat` (60 s leeway), audience, then the claims of its kind.
    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedToken, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("not a compact JWS".into()));
        };
        let decode_json = |seg: &str, what: &str| -> Result<Value, AuthError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(seg.trim_end_matches('='))
                .map_err(|_| AuthError::Malformed(format!("{what} is not base64url")))?;
            serde_json::from_slice(&bytes)
                .map_err(|_| AuthError::Malformed(format!("{what} is not JSON")))
        };
        let header = decode_json(h, "header")?;
        if str_at(&header, &["alg"]) != "ES256" {
            return Err(AuthError::Malformed(format!(
                "unsupported alg {:?}",
                str_at(&header, &["alg"])
            )));
        }
        let claims = decode_json(p, "payload")?;
        let iss = str_at(&claims, &["iss"]);
        let legacy = iss == LEGACY_ISSUER;
        if !legacy && !self.issuers.iter().any(|i| i == iss) {
            return Err(AuthError::UnknownIssuer(iss.to_string()));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AuthError::InvalidSignature)?;
        let input = format!("{h}.{p}");
        let ok = self.keys.iter().any(|k| {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, k)
                .verify(input.as_bytes(), &sig)
                .is_ok()
        });
        if !ok {
            return Err(AuthError::InvalidSignature);
        }
        let num = |k: &str| claims.get(k).and_then(Value::as_i64);
        let exp = num("exp");
        if exp.is_some_and(|e| now > e.saturating_add(LEEWAY_SECONDS)) {
            return Err(AuthError::Expired);
        }
        if num("nbf").is_some_and(|n| now < n.saturating_sub(LEEWAY_SECONDS)) {
            return Err(AuthError::NotYetValid);
        }
        if num("iat").is_some_and(|i| now < i.saturating_sub(LEEWAY_SECONDS)) {
            return Err(AuthError::IssuedInFuture);
        }
        let mut auds: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if auds.is_empty() {
            // legacy tokens carry no audience: they are for the API server only
            auds = self.api_audiences.clone();
        }
        if !self.api_audiences.is_empty() && !auds.iter().any(|a| self.api_audiences.contains(a)) {
            return Err(AuthError::InvalidAudience {
                token: auds,
                expected: self.api_audiences.clone(),
            });
        }
        let sub = str_at(&claims, &["sub"]);
        let mut out = if legacy {
            let ns = str_at(&claims, &[LEGACY_NS]);
            let secret = str_at(&claims, &[LEGACY_SECRET]);
            let sa = str_at(&claims, &[LEGACY_SA_NAME]);
            let uid = str_at(&claims, &[LEGACY_SA_UID]);
            if ns.is_empty() || secret.is_empty() || sa.is_empty() {
                return Err(AuthError::InvalidClaims(
                    "legacy token lacks namespace, secret or service account name".into(),
                ));
            }
            VerifiedToken {
                user: sa_user(ns, sa, uid),
                bound: None,
                legacy_secret: Some((ns.to_string(), secret.to_string())),
                audiences: auds,
                expires_at: exp,
            }
        } else {
            let k = claims.get("kubernetes.io").cloned().unwrap_or(Value::Null);
            let ns = str_at(&k, &["namespace"]);
            let sa = str_at(&k, &["serviceaccount", "name"]);
            let uid = str_at(&k, &["serviceaccount", "uid"]);
            if ns.is_empty() || sa.is_empty() || uid.is_empty() {
                return Err(AuthError::InvalidClaims(
                    "service account token claims could not be retrieved".into(),
                ));
            }
            let r = |key: &str| {
                k.get(key).map(|o| ObjectRef {
                    name: str_at(o, &["name"]).to_string(),
                    uid: str_at(o, &["uid"]).to_string(),
                })
            };
            let bound = BoundRefs {
                pod: r("pod"),
                secret: r("secret"),
                node: r("node"),
            };
            let mut user = sa_user(ns, sa, uid);
            let mut extra = BTreeMap::new();
            if let Some(p) = &bound.pod {
                extra.insert(EXTRA_POD_NAME.to_string(), vec![p.name.clone()]);
                extra.insert(EXTRA_POD_UID.to_string(), vec![p.uid.clone()]);
            }
            let jti = str_at(&claims, &["jti"]);
            if !jti.is_empty() {
                extra.insert(EXTRA_CREDENTIAL_ID.to_string(), vec![format!("JTI={jti}")]);
            }
            if let Some(n) = &bound.node {
                extra.insert(EXTRA_NODE_NAME.to_string(), vec![n.name.clone()]);
                if !n.uid.is_empty() {
                    extra.insert(EXTRA_NODE_UID.to_string(), vec![n.uid.clone()]);
                }
            }
            user.extra = extra;
            VerifiedToken {
                user,
                bound: Some(bound),
                legacy_secret: None,
                audiences: auds,
                expires_at: exp,
            }
        };
        if !sub.is_empty() && sub != out.user.name {
            return Err(AuthError::InvalidClaims(format!(
                "sub {sub:?} does not match the service account"
            )));
        }
        out.user = out.user.with_authenticated_group();
        Ok(out)
    }
}

fn sa_user(ns: &str, sa: &str, uid: &str) -> UserInfo {
    UserInfo {
        name: format!("system:serviceaccount:{ns}:{sa}"),
        uid: uid.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
        extra: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        let b = STANDARD.encode(der);
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// (private PEM, public PEM)
    fn keypair() -> (String, String) {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "keygen")
            .unwrap_or_else(|e| panic!("{e}"));
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            doc.as_ref(),
            &rng,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (
            pem("PRIVATE KEY", doc.as_ref()),
            pem("PUBLIC KEY", &spki_from_point(kp.public_key().as_ref())),
        )
    }

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: i64 = 1_700_000_000;

    fn setup() -> (TokenIssuer, TokenVerifier) {
        let (private, public) = keypair();
        let issuer = TokenIssuer::new(&private, ISS).unwrap_or_else(|e| panic!("{e}"));
        let verifier = TokenVerifier::new(&public, vec![ISS.into()], vec![ISS.into()])
            .unwrap_or_else(|e| panic!("{e}"));
        (issuer, verifier)
    }

    fn bound_claims() -> SaClaims {
        let mut c = SaClaims::bound("default", "builder", "sa-uid", vec![ISS.into()], NOW, 3600);
        c.bound.pod = Some(ObjectRef {
            name: "web-0".into(),
            uid: "pod-uid".into(),
        });
        c.bound.node = Some(ObjectRef {
            name: "n1".into(),
            uid: "node-uid".into(),
        });
        c
    }

    #[test]
    fn bound_token_roundtrip() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(&bound_claims())
            .unwrap_or_else(|e| panic!("{e}"));
        let v = verifier
            .verify(&token, NOW + 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.user.name, "system:serviceaccount:default:builder");
        assert_eq!(v.user.uid, "sa-uid");
        assert_eq!(
            v.user.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
        assert_eq!(v.user.extra[EXTRA_POD_NAME], vec!["web-0"]);
        assert_eq!(v.user.extra[EXTRA_POD_UID], vec!["pod-uid"]);
        assert_eq!(v.user.extra[EXTRA_NODE_NAME], vec!["n1"]);
        assert_eq!(v.user.extra[EXTRA_NODE_UID], vec!["node-uid"]);
        assert!(v.user.extra[EXTRA_CREDENTIAL_ID][0].starts_with("JTI="));
        let bound = v.bound.unwrap_or_default();
        assert_eq!(bound.pod.map(|p| p.uid), Some("pod-uid".into()));
        assert_eq!(v.legacy_secret, None);
        assert_eq!(v.expires_at, Some(NOW + 3600));
        // header carries alg and kid
        let h = token.split('.').next().unwrap_or("");
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], issuer.key_id());
        assert_eq!(issuer.key_id().len(), 43);
    }

    #[test]
    fn legacy_token_roundtrip() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(&SaClaims::legacy(
                "kube-system",
                "default",
                "u1",
                "default-token-abcde",
            ))
            .unwrap_or_else(|e| panic!("{e}"));
        let v = verifier
            .verify(&token, NOW)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.user.name, "system:serviceaccount:kube-system:default");
        assert_eq!(
            v.legacy_secret,
            Some(("kube-system".into(), "default-token-abcde".into()))
        );
        assert!(v.bound.is_none());
        assert!(v.user.extra.is_empty());
        assert_eq!(v.expires_at, None);
    }

    #[test]
    fn expiry_with_leeway() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(&bound_claims())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(verifier.verify(&token, NOW + 3600 + 59).is_ok());
        assert_eq!(
            verifier.verify(&token, NOW + 3600 + 61),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verifier.verify(&token, NOW - 120),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn wrong_audience_rejected() {
        let (issuer, verifier) = setup();
        let mut c = bound_claims();
        c.audiences = vec!["vault".into()];
        let token = issuer.issue(&c).unwrap_or_else(|e| panic!("{e}"));
        match verifier.verify(&token, NOW) {
            Err(e @ AuthError::InvalidAudience { .. }) => assert_eq!(
                e.to_string(),
                format!(
                    "token audiences [\"vault\"] is invalid for the target audiences [\"{ISS}\"]"
                )
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tampered_and_foreign_tokens_rejected() {
        let (issuer, verifier) = setup();
        let token = issuer
            .issue(&bound_claims())
            .unwrap_or_else(|e| panic!("{e}"));
        // swap the payload for one naming another service account
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_default())
                .unwrap_or_default();
        payload["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        );
        assert_eq!(
            verifier.verify(&forged, NOW),
            Err(AuthError::InvalidSignature)
        );
        // signed by another key
        let (other_private, _) = keypair();
        let other = TokenIssuer::new(&other_private, ISS).unwrap_or_else(|e| panic!("{e}"));
        let foreign = other
            .issue(&bound_claims())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            verifier.verify(&foreign, NOW),
            Err(AuthError::InvalidSignature)
        );
        // unknown issuer
        let stranger =
            TokenIssuer::new(&other_private, "https://elsewhere").unwrap_or_else(|e| panic!("{e}"));
        let t = stranger
            .issue(&bound_claims())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            verifier.verify(&t, NOW),
            Err(AuthError::UnknownIssuer("https://elsewhere".into()))
        );
        assert!(matches!(
            verifier.verify("a.b", NOW),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            verifier.verify("x.y.z", NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn verifier_accepts_private_key_pem_and_rejects_garbage() {
        let (private, _) = keypair();
        let issuer = TokenIssuer::new(&private, ISS).unwrap_or_else(|e| panic!("{e}"));
        let v = TokenVerifier::new(&private, vec![ISS.into()], vec![])
            .unwrap_or_else(|e| panic!("{e}"));
        let t = issuer
            .issue(&bound_claims())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(v.verify(&t, NOW).is_ok());
        assert!(TokenVerifier::new("nothing", vec![], vec![]).is_err());
        assert!(TokenIssuer::new(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ISS
        )
        .is_err());
    }
}
