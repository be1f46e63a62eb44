//! Keeping certificates current: the renewal rule every holder of a leaf certificate
//! applies (the server for its own leaves, agents for what the supervisor issued them),
//! and the replacement of the cluster CA with a cross-signed transition (k3s's
//! `certificate rotate-ca`).
//!
//! A rotated CA is a bundle, as k3s's `rotate-default-ca-certs.sh` builds it: a new
//! intermediate CA (it signs every leaf from then on), the new root (self-signed), the
//! same root cross-signed by the old CA, and the old CA. Whoever trusts only the old CA
//! reaches it through the cross-signed root; whoever trusts only the new root reaches it
//! directly; certificates the old CA issued stay valid while the bundle holds it.

use std::time::Duration;

use rcgen::{CertificateParams, Issuer, KeyPair};

use crate::cert::{self, now_unix, CertInfo};
use crate::server::CA_VALIDITY_DAYS;
use crate::PkiError;

/// Whether a certificate expiring at `not_after` (unix seconds) is to be renewed at `now`:
/// it is inside the renewal window (k3s: 90 days before expiry) or already expired.
pub(crate) fn due(not_after: i64, now: i64, renew_before_secs: i64) -> bool {
    not_after - now < renew_before_secs
}

/// Whether the (first) certificate of `cert_pem` is due for renewal now: it expires
/// within `renew_before` (or has expired). The one renewal rule of rk3s: the server's own
/// leaves on start and while running, agents' certificates while they run.
pub fn renewal_due(cert_pem: &str, renew_before: Duration) -> Result<bool, PkiError> {
    let info = CertInfo::from_pem(cert_pem, "certificate")?;
    let window = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    Ok(due(info.not_after, now_unix(), window))
}

/// The expiry (unix seconds) of the first certificate of `cert_pem`.
pub fn not_after(cert_pem: &str) -> Result<i64, PkiError> {
    Ok(CertInfo::from_pem(cert_pem, "certificate")?.not_after)
}

/// Every certificate of a PEM bundle, in order.
fn bundle(pem: &str, what: &str) -> Result<Vec<CertInfo>, PkiError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::InvalidCertificate {
            what: what.to_string(),
            reason: format!("not PEM: {e}"),
        })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        out.push(CertInfo::from_der(block.contents, what)?);
    }
    if out.is_empty() {
        return Err(PkiError::InvalidCertificate {
            what: what.to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(out)
}

/// Whether `cert` chains to one of `anchors` through CA certificates of `pool` (names
/// and signatures checked, at most `depth` intermediates).
fn chains_to(cert: &CertInfo, pool: &[CertInfo], anchors: &[CertInfo], depth: usize) -> bool {
    let signed_by = |issuer: &CertInfo| {
        issuer.is_ca
            && cert.issuer_raw == issuer.subject_raw
            && cert::verify_signature(&cert.der, &issuer.der) == Some(true)
    };
    if anchors.iter().any(signed_by) {
        return true;
    }
    depth > 0
        && pool
            .iter()
            .filter(|p| p.der != cert.der && signed_by(p))
            .any(|p| chains_to(p, pool, anchors, depth - 1))
}

/// New CA material that passed [`check_ca_rotation`].
#[derive(Clone)]
pub struct CaRotation {
    /// The new CA bundle (PEM; the first certificate signs new leaves).
    pub ca_cert_pem: String,
    /// The new CA key(s) (PKCS#8 PEM; the first matches the first certificate).
    pub ca_key_pem: String,
    /// Whether the new CA chains to the current one (a non-disruptive rotation).
    pub cross_signed: bool,
    /// SHA-256 hex of the new CA bundle: the CA hash of full (`K10…`) tokens from now on.
    pub ca_hash: String,
}

impl std::fmt::Debug for CaRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRotation")
            .field("cross_signed", &self.cross_signed)
            .field("ca_hash", &self.ca_hash)
            .finish_non_exhaustive()
    }
}

/// Checks new CA material before it replaces the current CA (k3s's `rotate-ca` integrity
/// checks): the first certificate of `new_cert_pem` is a CA whose key is the first key of
/// `new_key_pem`, it is valid now, and — unless `force` — it chains to the current CA
/// (`current_ca_pem`, any of its certificates) through the certificates of the new bundle
/// (a cross-signed transition), so every node and client that trusts the current CA keeps
/// trusting the server. With `force` an unrelated CA is accepted (a disruptive rotation:
/// every node must be given the new token). The same CA again is refused.
pub fn check_ca_rotation(
    current_ca_pem: &str,
    new_cert_pem: &str,
    new_key_pem: &str,
    force: bool,
) -> Result<CaRotation, PkiError> {
    let current = bundle(current_ca_pem, "current CA certificate")?;
    let new = bundle(new_cert_pem, "new CA certificate")?;
    // checks the first certificate is a CA and the key matches it
    let ca = cert::Ca::load(new_cert_pem, new_key_pem)?;
    let now = now_unix();
    if ca.info.not_after <= now || ca.info.not_before > now + 300 {
        return Err(PkiError::InvalidCertificate {
            what: "new CA certificate".into(),
            reason: "not valid now".into(),
        });
    }
    if current.first().map(|c| &c.der) == Some(&ca.info.der) {
        return Err(PkiError::CaRotation(
            "the new CA is the current CA; nothing to rotate".into(),
        ));
    }
    let cross_signed = chains_to(&ca.info, &new, &current, 4);
    if !cross_signed && !force {
        return Err(PkiError::CaRotation(
            "the new CA certificate does not chain to the current CA (it is not cross-signed \
             by it): nodes and clients that trust the current CA would stop trusting this \
             server; use a cross-signed CA, or --force for a disruptive rotation (every node \
             then needs the new token)"
                .into(),
        ));
    }
    Ok(CaRotation {
        ca_cert_pem: new_cert_pem.to_string(),
        ca_key_pem: new_key_pem.to_string(),
        cross_signed,
        ca_hash: crate::ca_cert_hash(new_cert_pem),
    })
}

/// Parameters of a CA certificate (ECDSA P-256, `days` long, fresh serial) that names
/// its issuer's key (a cross-signed CA has one other than its own).
fn ca_params(common_name: &str, days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = cert::ca_params(common_name, days)?;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Creates new CA material cross-signed by the current CA (as k3s's
/// `rotate-default-ca-certs.sh`): a new root (self-signed, and cross-signed by the current
/// CA's key), a new intermediate CA signed by the new root, and returns
/// (bundle PEM: intermediate, root, cross-signed root, current CA certificates;
/// key PEM: intermediate key, root key). The result passes [`check_ca_rotation`]
/// without `force`.
pub fn cross_signed_ca(
    current_cert_pem: &str,
    current_key_pem: &str,
) -> Result<(String, String), PkiError> {
    let current = cert::Ca::load(current_cert_pem, current_key_pem)?;
    let stamp = now_unix();
    let current_cn = current.info.common_name.clone().unwrap_or_default();
    // distinct from the current CA's names even when created in the same second
    let suffix = if current_cn.ends_with(&format!("@{stamp}")) {
        format!("{stamp}-1")
    } else {
        stamp.to_string()
    };
    let root_key = KeyPair::generate()?;
    let root_params = ca_params(&format!("rk3s-server-root@{suffix}"), CA_VALIDITY_DAYS)?;
    let root_self = root_params.self_signed(&root_key)?;
    let mut cross_params = ca_params(&format!("rk3s-server-root@{suffix}"), CA_VALIDITY_DAYS)?;
    cross_params.distinguished_name = root_params.distinguished_name.clone();
    let root_cross = cross_params.signed_by(&root_key, current.issuer())?;
    let root_issuer = Issuer::from_ca_cert_der(root_self.der(), &root_key)?;
    let ca_key = KeyPair::generate()?;
    let ca = ca_params(&format!("rk3s-server-ca@{suffix}"), CA_VALIDITY_DAYS)?
        .signed_by(&ca_key, &root_issuer)?;
    let mut bundle = String::new();
    for pem in [ca.pem(), root_self.pem(), root_cross.pem()] {
        bundle.push_str(&pem);
    }
    bundle.push_str(current_cert_pem.trim_end());
    bundle.push('\n');
    let keys = format!("{}{}", ca_key.serialize_pem(), root_key.serialize_pem());
    Ok((bundle, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_window_rule() {
        assert!(!due(1000, 0, 900));
        assert!(due(1000, 200, 900));
        assert!(due(1000, 2000, 0), "expired is due");
        let (c, _) = cert::generate_ca("x", 10).unwrap();
        assert!(!renewal_due(&c, Duration::from_secs(86_400)).unwrap());
        assert!(renewal_due(&c, Duration::from_secs(30 * 86_400)).unwrap());
        assert!(renewal_due("garbage", Duration::ZERO).is_err());
    }

    #[test]
    fn cross_signed_ca_passes_and_chains_both_ways() {
        let (old_c, old_k) = cert::generate_ca("rk3s-server-ca@1", 3650).unwrap();
        let (new_c, new_k) = cross_signed_ca(&old_c, &old_k).unwrap();
        assert_eq!(bundle(&new_c, "b").unwrap().len(), 4);
        let r = check_ca_rotation(&old_c, &new_c, &new_k, false).unwrap();
        assert!(r.cross_signed);
        assert_ne!(r.ca_hash, crate::ca_cert_hash(&old_c));
        // the intermediate signs leaves; they chain to the old CA and to the new root
        let (leaf, _) = crate::issue_client_cert(&new_c, &new_k, "u", &[], 1).unwrap();
        let leaf = CertInfo::from_pem(&leaf, "leaf").unwrap();
        let certs = bundle(&new_c, "b").unwrap();
        let old = bundle(&old_c, "o").unwrap();
        assert!(chains_to(&leaf, &certs, &old, 4), "old CA only");
        let new_root = vec![certs[1].clone()];
        assert!(chains_to(&leaf, &certs[..1], &new_root, 4), "new root only");
        assert!(!chains_to(&leaf, &[], &old, 4), "not without the bundle");
        // a second rotation from the rotated bundle chains to it too
        let (third_c, third_k) = cross_signed_ca(&new_c, &new_k).unwrap();
        assert!(
            check_ca_rotation(&new_c, &third_c, &third_k, false)
                .unwrap()
                .cross_signed
        );
    }

    #[test]
    fn unrelated_ca_needs_force_and_bad_material_is_refused() {
        let (old_c, old_k) = cert::generate_ca("old", 3650).unwrap();
        let (other_c, other_k) = cert::generate_ca("other", 3650).unwrap();
        assert!(matches!(
            check_ca_rotation(&old_c, &other_c, &other_k, false),
            Err(PkiError::CaRotation(_))
        ));
        let forced = check_ca_rotation(&old_c, &other_c, &other_k, true).unwrap();
        assert!(!forced.cross_signed);
        // mismatched key, the same CA, a leaf instead of a CA, garbage
        assert!(matches!(
            check_ca_rotation(&old_c, &other_c, &old_k, true),
            Err(PkiError::InvalidKey { .. })
        ));
        assert!(matches!(
            check_ca_rotation(&old_c, &old_c, &old_k, true),
            Err(PkiError::CaRotation(_))
        ));
        let (leaf, leaf_k) = crate::issue_client_cert(&old_c, &old_k, "u", &[], 1).unwrap();
        assert!(check_ca_rotation(&old_c, &leaf, &leaf_k, true).is_err());
        assert!(check_ca_rotation(&old_c, "nope", &old_k, true).is_err());
    }
}
