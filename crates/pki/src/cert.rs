//! Key pairs and certificates: generation, signing with the cluster CA, inspection.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// Certificates start this many seconds in the past, to tolerate clock skew between nodes.
const BACKDATE_SECS: i64 = 3600;

/// A subject alternative name: an IP address or a (lower-case) DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// Classifies `name` as an IP address (also `[v6]`) or a DNS name, validating it.
    pub(crate) fn parse(name: &str) -> Result<San, PkiError> {
        let s = name.trim();
        let bad = |reason: &str| PkiError::InvalidSan {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let dns = s.trim_end_matches('.').to_ascii_lowercase();
        if dns.is_empty() || dns.len() > 253 {
            return Err(bad("a DNS name must have 1 to 253 characters"));
        }
        for (i, label) in dns.split('.').enumerate() {
            let wildcard_ok = i == 0 && label == "*";
            if wildcard_ok {
                continue;
            }
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each DNS label must have 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "not an IP address, and a DNS name may only contain letters, digits, '-', '_' and '.'",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a DNS label must not start or end with '-'"));
            }
        }
        Ok(San::Dns(dns))
    }

    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(d) => SanType::DnsName(d.clone().try_into()?),
        })
    }
}

/// The current time as Unix seconds.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn date(unix: i64) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|_| PkiError::DateOutOfRange)
}

pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // positive, and always 16 bytes long
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    validity_secs(params, i64::from(days) * 86_400)
}

fn validity_secs(params: &mut CertificateParams, secs: i64) -> Result<(), PkiError> {
    let now = now_unix();
    params.not_before = date(now - BACKDATE_SECS)?;
    params.not_after = date(now + secs.max(1))?;
    Ok(())
}

/// Parameters of a CA certificate (`days` long, fresh serial, CA key usages).
pub(crate) fn ca_params(common_name: &str, days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.serial_number = Some(random_serial()?);
    validity(&mut params, days)?;
    Ok(params)
}

/// Creates a self-signed CA certificate (ECDSA P-256); returns (cert PEM, key PEM).
pub(crate) fn generate_ca(common_name: &str, days: u32) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(common_name, days)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates a fresh ECDSA P-256 key pair; returns (PKCS#8 PEM, SPKI PEM).
pub(crate) fn generate_key_pair() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// Parses a PKCS#8 PEM private key.
pub(crate) fn load_key(key_pem: &str, what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKey {
        what: what.to_string(),
        reason: format!("{e} (a PKCS#8 \"PRIVATE KEY\" PEM is expected)"),
    })
}

/// Decodes the first `CERTIFICATE` block of a PEM string to DER.
pub(crate) fn pem_to_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| {
        PkiError::InvalidCertificate {
            what: what.to_string(),
            reason: format!("not PEM: {e}"),
        }
    })?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::InvalidCertificate {
            what: what.to_string(),
            reason: format!("PEM block is {:?}, not CERTIFICATE", block.label),
        });
    }
    Ok(block.contents)
}

/// One certificate of a PEM file, as `rk3s certificate check` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Subject common name (empty when there is none).
    pub common_name: String,
    /// Subject organizations (groups, for client certificates).
    pub organizations: Vec<String>,
    /// `CertSign` for a CA, else the extended key usages (`ServerAuth`, `ClientAuth`).
    pub usages: Vec<String>,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// A CA certificate.
    pub is_ca: bool,
}

/// Every `CERTIFICATE` block of `pem`, described (other blocks are skipped).
pub fn describe_certificates(pem: &str, what: &str) -> Result<Vec<CertificateSummary>, PkiError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::InvalidCertificate {
            what: what.to_string(),
            reason: format!("not PEM: {e}"),
        })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = parse_der(&block.contents, what)?;
        let (common_name, organizations) = subject_names(&cert, what)?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        let mut usages = Vec::new();
        if is_ca {
            usages.push("CertSign".to_string());
        }
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            if eku.value.server_auth {
                usages.push("ServerAuth".to_string());
            }
            if eku.value.client_auth {
                usages.push("ClientAuth".to_string());
            }
        }
        out.push(CertificateSummary {
            common_name: common_name.unwrap_or_default(),
            organizations,
            usages,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca,
        });
    }
    Ok(out)
}

fn parse_der<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::InvalidCertificate {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    Ok(cert)
}

/// What the PKI needs to know about an existing certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    pub(crate) der: Vec<u8>,
    pub(crate) subject_raw: Vec<u8>,
    pub(crate) issuer_raw: Vec<u8>,
    pub(crate) spki: Vec<u8>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) sans: Vec<San>,
    pub(crate) common_name: Option<String>,
    pub(crate) organizations: Vec<String>,
    pub(crate) is_ca: bool,
}

impl CertInfo {
    /// Parses a PEM certificate.
    pub(crate) fn from_pem(pem: &str, what: &str) -> Result<CertInfo, PkiError> {
        Self::from_der(pem_to_der(pem, what)?, what)
    }

    /// Parses a DER certificate.
    pub(crate) fn from_der(der: Vec<u8>, what: &str) -> Result<CertInfo, PkiError> {
        let cert = parse_der(&der, what)?;
        let invalid = |reason: String| PkiError::InvalidCertificate {
            what: what.to_string(),
            reason,
        };
        let mut sans = Vec::new();
        if let Some(ext) = cert
            .subject_alternative_name()
            .map_err(|e| invalid(e.to_string()))?
        {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(San::Dns(d.to_ascii_lowercase())),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            sans.push(San::Ip(IpAddr::from(a)));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            sans.push(San::Ip(IpAddr::from(a)));
                        }
                    }
                    _ => {}
                }
            }
        }
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| invalid(e.to_string()))?
            .map(|bc| bc.value.ca)
            .unwrap_or(false);
        let (common_name, organizations) = subject_names(&cert, what)?;
        Ok(CertInfo {
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            spki: cert.public_key().raw.to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sans,
            common_name,
            organizations,
            is_ca,
            der: der.clone(),
        })
    }

    /// Whether every name in `required` is among the certificate's SANs.
    pub(crate) fn covers(&self, required: &[San]) -> bool {
        let have: HashSet<&San> = self.sans.iter().collect();
        required.iter().all(|s| have.contains(s))
    }
}

fn subject_names(
    cert: &X509Certificate<'_>,
    what: &str,
) -> Result<(Option<String>, Vec<String>), PkiError> {
    let invalid = |reason: String| PkiError::InvalidCertificate {
        what: what.to_string(),
        reason,
    };
    let common_name = match cert.subject().iter_common_name().next() {
        Some(a) => Some(a.as_str().map_err(|e| invalid(e.to_string()))?.to_string()),
        None => None,
    };
    let organizations = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().map(str::to_string))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    Ok((common_name, organizations))
}

/// Whether `key`'s public key is the one in a certificate's SubjectPublicKeyInfo.
pub(crate) fn key_matches(key: &KeyPair, spki: &[u8]) -> bool {
    key.subject_public_key_info() == spki
}

/// The key of a CA key file that matches the CA certificate's public key `spki`: a file
/// may hold several PKCS#8 keys (a rotated CA: the intermediate's and the root's; during
/// the switch-over of shared bootstrap data, the new and the old CA's), any may match.
fn ca_key_for(key_pem: &str, spki: &[u8]) -> Result<KeyPair, PkiError> {
    let mismatch = || PkiError::InvalidKey {
        what: "CA key".into(),
        reason: "does not match the CA certificate".into(),
    };
    let first = load_key(key_pem, "CA key")?;
    if key_matches(&first, spki) {
        return Ok(first);
    }
    for block in x509_parser::pem::Pem::iter_from_buffer(key_pem.as_bytes()).skip(1) {
        let Ok(block) = block else { break };
        if block.label != "PRIVATE KEY" {
            continue;
        }
        if let Ok(key) = KeyPair::try_from(block.contents.as_slice()) {
            if key_matches(&key, spki) {
                return Ok(key);
            }
        }
    }
    Err(mismatch())
}

/// The cluster CA, loaded and ready to sign.
pub(crate) struct Ca {
    pub(crate) info: CertInfo,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads a CA from its PEM certificate and PKCS#8 PEM key, checking that they match.
    pub(crate) fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let info = CertInfo::from_pem(cert_pem, "CA certificate")?;
        if !info.is_ca {
            return Err(PkiError::InvalidCertificate {
                what: "CA certificate".into(),
                reason: "basicConstraints does not mark it as a CA".into(),
            });
        }
        let key = ca_key_for(key_pem, &info.spki)?;
        let issuer = Issuer::from_ca_cert_der(&info.der.as_slice().into(), key)?;
        Ok(Ca { info, issuer })
    }

    /// The issuer (certificate and key) for rcgen.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Signs a new leaf certificate for a fresh ECDSA P-256 key, valid for `days`; returns
    /// (cert PEM, key PEM).
    #[cfg(test)]
    pub(crate) fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[San],
        usage: ExtendedKeyUsagePurpose,
        days: u32,
    ) -> Result<(String, String), PkiError> {
        self.issue_for_secs(
            common_name,
            organizations,
            sans,
            usage,
            i64::from(days) * 86_400,
        )
    }

    /// Issues a leaf certificate for a fresh ECDSA P-256 key, valid for `validity` seconds.
    pub(crate) fn issue_for_secs(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[San],
        usage: ExtendedKeyUsagePurpose,
        validity: i64,
    ) -> Result<(String, String), PkiError> {
        self.issue_with_usages(common_name, organizations, sans, vec![usage], validity)
    }

    /// [`Ca::issue_for_secs`] with several extended key usages (etcd's certificates are
    /// both server and client certificates).
    pub(crate) fn issue_with_usages(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[San],
        usages: Vec<ExtendedKeyUsagePurpose>,
        validity: i64,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        // rcgen's DistinguishedName holds one value per attribute type; with several
        // organizations the subject is replaced after signing (see `with_subject`).
        let mut dn = DistinguishedName::new();
        if let [o] = organizations {
            dn.push(DnType::OrganizationName, *o);
        }
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        validity_secs(&mut params, validity)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        if organizations.len() > 1 {
            let subject = encode_subject(common_name, organizations);
            let der = with_subject(cert.der(), &subject, self.issuer.key())?;
            return Ok((der_to_pem(&der), key.serialize_pem()));
        }
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Whether `leaf` was issued by this CA: issuer name equals the CA subject and, for
    /// the signature algorithms ring can check, the signature verifies with the CA key.
    pub(crate) fn issued(&self, leaf: &CertInfo) -> bool {
        if leaf.issuer_raw != self.info.subject_raw {
            return false;
        }
        verify_signature(&leaf.der, &self.info.der).unwrap_or(true)
    }
}

/// Appends a DER length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// A DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// Total length (header + content) of the DER element at the start of `der`.
fn der_element_len(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > std::mem::size_of::<usize>() {
            return None;
        }
        let len = der
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, len)
    };
    let total = header.checked_add(len)?;
    (total <= der.len()).then_some(total)
}

/// Header length of the DER element at the start of `der`.
fn der_header_len(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    Some(if first < 0x80 {
        2
    } else {
        2 + usize::from(first & 0x7f)
    })
}

/// A subject Name: one RDN per organization (UTF8String), then the common name, in the
/// order Go's crypto/x509 writes them.
fn encode_subject(common_name: &str, organizations: &[&str]) -> Vec<u8> {
    const OID_O: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x0a];
    const OID_CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let rdn = |oid: &[u8], value: &str| {
        let atv = der_tlv(0x30, &[oid, &der_tlv(0x0c, value.as_bytes())].concat());
        der_tlv(0x31, &atv)
    };
    let mut rdns = Vec::new();
    for o in organizations {
        rdns.extend(rdn(&OID_O, o));
    }
    rdns.extend(rdn(&OID_CN, common_name));
    der_tlv(0x30, &rdns)
}

/// Re-creates a signed certificate with another subject Name, signing it again with `key`.
fn with_subject(cert_der: &[u8], subject: &[u8], key: &KeyPair) -> Result<Vec<u8>, PkiError> {
    let malformed = || PkiError::InvalidCertificate {
        what: "issued certificate".into(),
        reason: "cannot re-encode the subject".into(),
    };
    let cert = parse_der(cert_der, "issued certificate")?;
    let full = cert.as_raw();
    let tbs = cert.tbs_certificate.as_ref();
    let old_subject = cert.tbs_certificate.subject.as_raw();
    let subject_at = (old_subject.as_ptr() as usize)
        .checked_sub(tbs.as_ptr() as usize)
        .ok_or_else(malformed)?;
    let tbs_header = der_header_len(tbs).ok_or_else(malformed)?;
    let subject_end = subject_at + old_subject.len();
    if subject_at < tbs_header || subject_end > tbs.len() {
        return Err(malformed());
    }
    let content = [&tbs[tbs_header..subject_at], subject, &tbs[subject_end..]].concat();
    let new_tbs = der_tlv(0x30, &content);
    // the signature algorithm follows the TBS in the outer SEQUENCE
    let outer_header = der_header_len(full).ok_or_else(malformed)?;
    let after_tbs = full.get(outer_header + tbs.len()..).ok_or_else(malformed)?;
    let alg_len = der_element_len(after_tbs).ok_or_else(malformed)?;
    let signature_algorithm = &after_tbs[..alg_len];
    let signature = rcgen::SigningKey::sign(key, &new_tbs)?;
    let bits = der_tlv(0x03, &[&[0u8][..], &signature].concat());
    Ok(der_tlv(
        0x30,
        &[&new_tbs[..], signature_algorithm, &bits].concat(),
    ))
}

/// PEM-encodes a DER certificate (64-column base64, LF line endings).
fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Checks the signature of `child_der` with the public key of `ca_der`. `None` when the
/// signature algorithm is not one ring verifies here (ECDSA SHA-256/384, RSA PKCS#1 SHA-256).
pub(crate) fn verify_signature(child_der: &[u8], ca_der: &[u8]) -> Option<bool> {
    use ring::signature as sig;
    use x509_parser::oid_registry as oids;
    let child = parse_der(child_der, "certificate").ok()?;
    let ca = parse_der(ca_der, "CA certificate").ok()?;
    let alg = &child.signature_algorithm.algorithm;
    let candidates: &[&'static dyn sig::VerificationAlgorithm] =
        if *alg == oids::OID_SIG_ECDSA_WITH_SHA256 {
            &[&sig::ECDSA_P256_SHA256_ASN1, &sig::ECDSA_P384_SHA256_ASN1]
        } else if *alg == oids::OID_SIG_ECDSA_WITH_SHA384 {
            &[&sig::ECDSA_P384_SHA384_ASN1, &sig::ECDSA_P256_SHA384_ASN1]
        } else if *alg == oids::OID_PKCS1_SHA256WITHRSA {
            &[&sig::RSA_PKCS1_2048_8192_SHA256]
        } else {
            return None;
        };
    let public_key = ca.public_key().subject_public_key.data.as_ref();
    let message = child.tbs_certificate.as_ref();
    let signature = child.signature_value.data.as_ref();
    Some(candidates.iter().any(|a| {
        sig::UnparsedPublicKey::new(*a, public_key)
            .verify(message, signature)
            .is_ok()
    }))
}

/// Verifies that the PEM certificate `cert_pem` was issued by the CA `ca_cert_pem` (issuer
/// name and signature). Errors for signature algorithms that cannot be checked here.
/// Validity dates and extensions are not checked (TLS verification does that).
pub fn verify_issued_by(cert_pem: &str, ca_cert_pem: &str) -> Result<bool, PkiError> {
    let cert = CertInfo::from_pem(cert_pem, "certificate")?;
    let ca = CertInfo::from_pem(ca_cert_pem, "CA certificate")?;
    if cert.issuer_raw != ca.subject_raw {
        return Ok(false);
    }
    verify_signature(&cert.der, &ca.der).ok_or_else(|| PkiError::InvalidCertificate {
        what: "certificate".into(),
        reason: "unsupported signature algorithm".into(),
    })
}

/// Issues a client certificate (EKU clientAuth) signed by the CA, for a fresh ECDSA P-256
/// key: `common_name` becomes the user name and `organizations` the groups, as the API
/// server's x509 authenticator reads them (e.g. `system:node:<name>` / `system:nodes`).
/// Returns (certificate PEM, PKCS#8 key PEM).
pub fn issue_client_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    organizations: &[&str],
    validity_days: u32,
) -> Result<(String, String), PkiError> {
    issue_client_cert_for(
        ca_cert_pem,
        ca_key_pem,
        common_name,
        organizations,
        days(validity_days),
    )
}

/// Issues a serving certificate (EKU serverAuth) signed by the CA, for a fresh ECDSA P-256
/// key, valid for `sans` (each an IP address or a DNS name; duplicates are dropped).
/// Returns (certificate PEM, PKCS#8 key PEM).
pub fn issue_serving_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    sans: &[String],
    validity_days: u32,
) -> Result<(String, String), PkiError> {
    issue_serving_cert_for(
        ca_cert_pem,
        ca_key_pem,
        common_name,
        sans,
        days(validity_days),
    )
}

fn days(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(n) * 86_400)
}

/// [`issue_client_cert`] valid for `validity` (the server's `--leaf-cert-validity`, which
/// tests make seconds short).
pub fn issue_client_cert_for(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    organizations: &[&str],
    validity: std::time::Duration,
) -> Result<(String, String), PkiError> {
    let ca = Ca::load(ca_cert_pem, ca_key_pem)?;
    ca.issue_for_secs(
        common_name,
        organizations,
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        secs(validity),
    )
}

/// [`issue_serving_cert`] valid for `validity`.
pub fn issue_serving_cert_for(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    sans: &[String],
    validity: std::time::Duration,
) -> Result<(String, String), PkiError> {
    let ca = Ca::load(ca_cert_pem, ca_key_pem)?;
    let mut parsed: Vec<San> = Vec::new();
    for s in sans {
        let san = San::parse(s)?;
        if !parsed.contains(&san) {
            parsed.push(san);
        }
    }
    ca.issue_for_secs(
        common_name,
        &[],
        &parsed,
        ExtendedKeyUsagePurpose::ServerAuth,
        secs(validity),
    )
}

/// A validity in whole seconds (saturating).
fn secs(validity: std::time::Duration) -> i64 {
    i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2)
}

/// The identity a client certificate authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The user name: the subject Common Name.
    pub user: String,
    /// The groups: the subject Organization values, in order.
    pub groups: Vec<String>,
}

/// Maps a (DER, already chain-verified) client certificate to the user it authenticates,
/// as upstream's x509 authenticator does: the subject CN is the user name, every subject
/// O is a group. A certificate without a CN authenticates no one ([`PkiError::NoCommonName`]).
pub fn client_identity(cert_der: &[u8]) -> Result<ClientIdentity, PkiError> {
    let cert = parse_der(cert_der, "client certificate")?;
    let (cn, groups) = subject_names(&cert, "client certificate")?;
    match cn {
        Some(user) if !user.is_empty() => Ok(ClientIdentity { user, groups }),
        _ => Err(PkiError::NoCommonName),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_ca() -> (String, String) {
        generate_ca("test-ca@1", 3650).unwrap()
    }

    #[test]
    fn leaves_for_a_duration_expire_then() {
        let (ca, ca_key) = test_ca();
        let (c, _) = issue_client_cert_for(
            &ca,
            &ca_key,
            "u",
            &["g"],
            std::time::Duration::from_secs(20),
        )
        .unwrap();
        let info = CertInfo::from_pem(&c, "client").unwrap();
        assert!((19..=21).contains(&(info.not_after - now_unix())));
        assert_eq!(client_identity(&info.der).unwrap().user, "u");
        let (s, _) = issue_serving_cert_for(
            &ca,
            &ca_key,
            "node",
            &["node".into(), "10.0.0.5".into()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let info = CertInfo::from_pem(&s, "serving").unwrap();
        assert!((3599..=3601).contains(&(info.not_after - now_unix())));
        assert!(verify_issued_by(&s, &ca).unwrap());
    }

    #[test]
    fn san_classification() {
        assert_eq!(
            San::parse("10.0.0.1").unwrap(),
            San::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            San::parse("[fd00::1]").unwrap(),
            San::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(
            San::parse(" Example.COM. ").unwrap(),
            San::Dns("example.com".into())
        );
        assert_eq!(
            San::parse("*.apps.local").unwrap(),
            San::Dns("*.apps.local".into())
        );
        assert!(San::parse("").is_err());
        assert!(San::parse("bad name").is_err());
        assert!(San::parse("-x.com").is_err());
        assert!(San::parse("a..b").is_err());
        assert!(San::parse("a.*.b").is_err());
    }

    #[test]
    fn ca_is_ca_and_self_signed() {
        let (cert, key) = test_ca();
        let ca = Ca::load(&cert, &key).unwrap();
        assert!(ca.info.is_ca);
        assert_eq!(ca.info.common_name.as_deref(), Some("test-ca@1"));
        assert_eq!(ca.info.issuer_raw, ca.info.subject_raw);
        assert_eq!(verify_signature(&ca.info.der, &ca.info.der), Some(true));
        let days = (ca.info.not_after - now_unix()) / 86_400;
        assert!((3649..=3650).contains(&days), "{days}");
        assert!(key.contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn ca_key_mismatch_is_rejected() {
        let (cert, _) = test_ca();
        let (_, other_key) = test_ca();
        assert!(matches!(
            Ca::load(&cert, &other_key),
            Err(PkiError::InvalidKey { .. })
        ));
        assert!(Ca::load("garbage", &other_key).is_err());
        // a file of several keys: the one matching the certificate is used, wherever it is
        let (cert2, key2) = test_ca();
        let both = format!("{other_key}{key2}");
        let ca = Ca::load(&cert2, &both).expect("second key matches");
        let (leaf, _) = ca
            .issue("u", &[], &[], ExtendedKeyUsagePurpose::ClientAuth, 1)
            .unwrap();
        assert!(verify_issued_by(&leaf, &cert2).unwrap());
        assert!(matches!(
            Ca::load(&cert, &both),
            Err(PkiError::InvalidKey { .. })
        ));
    }

    #[test]
    fn client_cert_identity_and_verification() {
        let (ca_cert, ca_key) = test_ca();
        let (cert, key) = issue_client_cert(
            &ca_cert,
            &ca_key,
            "system:node:n1",
            &["system:nodes", "extra"],
            365,
        )
        .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let der = pem_to_der(&cert, "c").unwrap();
        let id = client_identity(&der).unwrap();
        assert_eq!(id.user, "system:node:n1");
        assert_eq!(
            id.groups,
            vec!["system:nodes".to_string(), "extra".to_string()]
        );
        assert!(verify_issued_by(&cert, &ca_cert).unwrap());
        let (other_ca, _) = test_ca();
        // same subject name (test-ca@1) but a different key: the signature check catches it
        assert!(!verify_issued_by(&cert, &other_ca).unwrap());
        // EKU clientAuth, not a CA
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert!(!CertInfo::from_pem(&cert, "c").unwrap().is_ca);
    }

    #[test]
    fn der_helpers() {
        assert_eq!(der_tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der_tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der_element_len(&long), Some(304));
        assert_eq!(der_header_len(&long), Some(4));
        assert_eq!(der_element_len(&long[..100]), None);
        assert_eq!(der_element_len(&[0x04]), None);
    }

    #[test]
    fn many_groups_keep_extensions_and_signature() {
        let (ca_cert, ca_key) = test_ca();
        let groups: Vec<String> = (0..40).map(|i| format!("group-number-{i:03}")).collect();
        let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
        let (cert, key) = issue_client_cert(&ca_cert, &ca_key, "bob", &refs, 10).unwrap();
        let der = pem_to_der(&cert, "c").unwrap();
        assert!(der.len() > 1000);
        let id = client_identity(&der).unwrap();
        assert_eq!(id.user, "bob");
        assert_eq!(id.groups, groups);
        assert!(verify_issued_by(&cert, &ca_cert).unwrap());
        let info = CertInfo::from_pem(&cert, "c").unwrap();
        assert!(key_matches(&load_key(&key, "k").unwrap(), &info.spki));
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(
            parsed
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );
        let ca_info = CertInfo::from_pem(&ca_cert, "ca").unwrap();
        assert_eq!(info.issuer_raw, ca_info.subject_raw);
    }

    #[test]
    fn client_identity_requires_cn() {
        let (ca_cert, ca_key) = test_ca();
        let (cert, _) = issue_client_cert(&ca_cert, &ca_key, "", &["g"], 1).unwrap();
        let der = pem_to_der(&cert, "c").unwrap();
        assert!(matches!(client_identity(&der), Err(PkiError::NoCommonName)));
        assert!(client_identity(b"not a certificate").is_err());
    }

    #[test]
    fn serving_cert_sans_and_eku() {
        let (ca_cert, ca_key) = test_ca();
        let sans = vec![
            "node1".to_string(),
            "10.1.2.3".to_string(),
            "::1".to_string(),
            "NODE1".to_string(),
        ];
        let (cert, key) = issue_serving_cert(&ca_cert, &ca_key, "node1", &sans, 30).unwrap();
        let info = CertInfo::from_pem(&cert, "s").unwrap();
        assert_eq!(
            info.sans,
            vec![
                San::Dns("node1".into()),
                San::Ip("10.1.2.3".parse().unwrap()),
                San::Ip("::1".parse().unwrap())
            ]
        );
        assert!(info.covers(&[San::Dns("node1".into())]));
        assert!(!info.covers(&[San::Dns("node2".into())]));
        let k = load_key(&key, "k").unwrap();
        assert!(key_matches(&k, &info.spki));
        let (_, parsed) = x509_parser::parse_x509_certificate(&info.der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert!(issue_serving_cert(&ca_cert, &ca_key, "x", &["a b".into()], 1).is_err());
    }
}

/// What a certificate signed from a CSR may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsrUsage {
    /// TLS client (EKU clientAuth): `kubernetes.io/kube-apiserver-client[-kubelet]`.
    Client,
    /// TLS server (EKU serverAuth): `kubernetes.io/kubelet-serving`.
    Server,
}

/// Signs a PKCS#10 certificate signing request (PEM) with the CA, keeping its subject
/// and subject alternative names, for `validity_secs` seconds (as upstream's
/// csrsigning controller does for the `kubernetes.io/*` signers; at least ten minutes,
/// upstream's minimum `expirationSeconds`). Returns the certificate PEM.
pub fn sign_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    usage: CsrUsage,
    validity_secs: i64,
) -> Result<String, PkiError> {
    let ca = Ca::load(ca_cert_pem, ca_key_pem)?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    leaf_extensions(&mut csr.params, usage, validity_secs, 600)?;
    let cert = csr.signed_by(&ca.issuer)?;
    Ok(cert.pem())
}

/// The extensions and validity of a leaf signed from a request: not a CA, digital
/// signature + key encipherment, the usage's EKU, authority key id, a random serial,
/// back-dated an hour, valid `validity_secs` (at least `min_secs`).
fn leaf_extensions(
    params: &mut CertificateParams,
    usage: CsrUsage,
    validity_secs: i64,
    min_secs: i64,
) -> Result<(), PkiError> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match usage {
        CsrUsage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        CsrUsage::Server => ExtendedKeyUsagePurpose::ServerAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let now = now_unix();
    params.not_before = date(now - BACKDATE_SECS)?;
    params.not_after = date(now + validity_secs.max(min_secs))?;
    Ok(())
}

/// Signs the public key of a PKCS#10 request (PEM) with the CA for an identity the
/// signer chooses, ignoring the subject and names the request asks for: `common_name`
/// and `organizations` become the subject, `sans` (IP addresses or DNS names) the
/// subject alternative names. This is how the supervisor issues kubelet and component
/// certificates to joining agents: the agent proves it holds the key, the server decides
/// who it is. Valid for `validity_secs` seconds (the server's leaf validity, which tests
/// shorten to seconds to exercise renewal). Returns the
/// certificate PEM.
#[allow(clippy::too_many_arguments)]
pub fn sign_csr_for(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    usage: CsrUsage,
    validity_secs: i64,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
) -> Result<String, PkiError> {
    let ca = Ca::load(ca_cert_pem, ca_key_pem)?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    let mut parsed: Vec<San> = Vec::new();
    for s in sans {
        let san = San::parse(s)?;
        if !parsed.contains(&san) {
            parsed.push(san);
        }
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let [o] = organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = parsed.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
    leaf_extensions(&mut params, usage, validity_secs, 1)?;
    csr.params = params;
    let cert = csr.signed_by(&ca.issuer)?;
    if organizations.len() > 1 {
        let subject = encode_subject(common_name, organizations);
        let der = with_subject(cert.der(), &subject, ca.issuer.key())?;
        return Ok(der_to_pem(&der));
    }
    Ok(cert.pem())
}

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a PKCS#10 request (PEM) for it naming
/// `common_name`: what an agent sends to be issued a certificate for a key that never
/// leaves it.
pub fn new_key_and_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

#[cfg(test)]
mod csr_tests {
    use super::*;

    #[test]
    fn signs_a_csr_for_the_identity_the_signer_chooses() {
        let (ca_cert, ca_key) = generate_ca("test-ca", 10).expect("ca");
        let (_key, csr) = new_key_and_csr("system:masters-please").expect("csr");
        let cert = sign_csr_for(
            &ca_cert,
            &ca_key,
            &csr,
            CsrUsage::Client,
            3600,
            "system:node:n2",
            &["system:nodes"],
            &[],
        )
        .expect("signed");
        assert!(verify_issued_by(&cert, &ca_cert).expect("verify"));
        let der = pem_to_der(&cert, "certificate").expect("der");
        let id = crate::client_identity(&der).expect("identity");
        assert_eq!(id.user, "system:node:n2");
        assert_eq!(id.groups, vec!["system:nodes".to_string()]);
        let serving = sign_csr_for(
            &ca_cert,
            &ca_key,
            &csr,
            CsrUsage::Server,
            3600,
            "n2",
            &[],
            &["n2".into(), "10.0.0.7".into()],
        )
        .expect("serving");
        let info = CertInfo::from_pem(&serving, "serving").expect("parse");
        assert!((3595..=3600).contains(&(info.not_after - now_unix())));
        // the server's (short, in tests) validity is kept; CSR API requests get >= 10 min
        let short = sign_csr_for(&ca_cert, &ca_key, &csr, CsrUsage::Client, 30, "u", &[], &[])
            .expect("short");
        let left = CertInfo::from_pem(&short, "short")
            .expect("parse")
            .not_after
            - now_unix();
        assert!((25..=30).contains(&left), "{left}");
        let csr_api = sign_csr(&ca_cert, &ca_key, &csr, CsrUsage::Client, 30).expect("csr api");
        let left = CertInfo::from_pem(&csr_api, "csr")
            .expect("parse")
            .not_after
            - now_unix();
        assert!(left >= 595, "{left}");
        assert!(!info.is_ca);
        assert!(sign_csr_for(
            &ca_cert,
            &ca_key,
            "junk",
            CsrUsage::Client,
            60,
            "x",
            &[],
            &[]
        )
        .is_err());
    }

    #[test]
    fn signs_a_csr_keeping_its_subject() {
        let (ca_cert, ca_key) = generate_ca("test-ca", 10).expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "system:nodes");
        dn.push(DnType::CommonName, "system:node:n1");
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let cert = sign_csr(&ca_cert, &ca_key, &csr, CsrUsage::Client, 3600).expect("signed");
        assert!(verify_issued_by(&cert, &ca_cert).expect("verify"));
        let der = pem_to_der(&cert, "certificate").expect("der");
        let id = crate::client_identity(&der).expect("identity");
        assert_eq!(id.user, "system:node:n1");
        assert_eq!(id.groups, vec!["system:nodes".to_string()]);
        assert!(sign_csr(&ca_cert, &ca_key, "garbage", CsrUsage::Client, 3600).is_err());
    }
}
