//! The server's PKI on disk: created on first start, reused (and renewed) on restart.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::ExtendedKeyUsagePurpose;

use crate::cert::{self, now_unix, Ca, CertInfo, San};
use crate::fsutil::{ensure_dir, read_optional, write_atomic};
use crate::token::{ca_cert_hash, format_token, parse_token, random_secret, ParsedToken};
use crate::PkiError;

/// Directory under the server dir holding certificates and keys.
pub const TLS_DIR: &str = "tls";
/// File under the server dir holding the full server token.
pub const TOKEN_FILE: &str = "token";
/// Cluster CA certificate (under [`TLS_DIR`]).
pub const CA_CERT_FILE: &str = "server-ca.crt";
/// Cluster CA private key.
pub const CA_KEY_FILE: &str = "server-ca.key";
/// kube-apiserver serving certificate.
pub const SERVING_CERT_FILE: &str = "serving-kube-apiserver.crt";
/// kube-apiserver serving key.
pub const SERVING_KEY_FILE: &str = "serving-kube-apiserver.key";
/// Admin client certificate (`system:admin` / `system:masters`).
pub const ADMIN_CERT_FILE: &str = "client-admin.crt";
/// Admin client key.
pub const ADMIN_KEY_FILE: &str = "client-admin.key";
/// Service-account token signing key (PKCS#8 PEM).
pub const SA_KEY_FILE: &str = "service.key";
/// Service-account token verification key (SPKI PEM).
pub const SA_PUB_FILE: &str = "service.pub";

/// Validity of a newly created CA, in days (k3s: 10 years).
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Validity of newly issued leaf certificates, in days (k3s: 1 year).
pub const LEAF_VALIDITY_DAYS: u32 = 365;
/// Leaf certificates expiring within this many days are renewed on start (as k3s does).
pub const RENEW_BEFORE_DAYS: u32 = 90;

/// Common name of the kube-apiserver serving certificate.
const SERVING_CN: &str = "kube-apiserver";
/// User and group of the admin client certificate.
const ADMIN_CN: &str = "system:admin";
const ADMIN_ORG: &str = "system:masters";

/// What [`ensure_server_pki`] needs to know.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// `<data-dir>/server`: files go in `<server_dir>/tls`, the token in `<server_dir>/token`.
    pub server_dir: PathBuf,
    /// Extra serving-certificate SANs: every `--tls-san` and `--advertise-address`
    /// (IP addresses or DNS names; which one is detected).
    pub sans: Vec<String>,
    /// The cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The first IP of the service CIDR (the `kubernetes` Service), e.g. `10.43.0.1`.
    pub service_ip: IpAddr,
    /// `--token`: the server secret, or a full `K10…` token whose secret part is used.
    pub token: Option<String>,
    /// Validity of newly issued leaf certificates (default [`LEAF_VALIDITY_DAYS`]).
    pub leaf_validity: std::time::Duration,
    /// Leaf certificates expiring within this are re-issued (default
    /// [`RENEW_BEFORE_DAYS`]); must be shorter than `leaf_validity`.
    pub renew_before: std::time::Duration,
}

impl PkiOptions {
    /// Options with k3s's defaults: no extra SANs, `cluster.local`, `10.43.0.1`, no token.
    pub fn new(server_dir: impl Into<PathBuf>) -> Self {
        PkiOptions {
            server_dir: server_dir.into(),
            sans: Vec::new(),
            cluster_domain: "cluster.local".to_string(),
            service_ip: IpAddr::from([10, 43, 0, 1]),
            token: None,
            leaf_validity: std::time::Duration::from_secs(u64::from(LEAF_VALIDITY_DAYS) * 86_400),
            renew_before: std::time::Duration::from_secs(u64::from(RENEW_BEFORE_DAYS) * 86_400),
        }
    }
}

/// The server's PKI material, as loaded or created by [`ensure_server_pki`].
#[derive(Clone)]
pub struct ServerPki {
    /// Cluster CA certificate (PEM, exactly as on disk).
    pub ca_cert_pem: String,
    /// Cluster CA private key (PKCS#8 PEM).
    pub ca_key_pem: String,
    /// kube-apiserver serving certificate, signed by the CA.
    pub serving_cert_pem: String,
    /// kube-apiserver serving key.
    pub serving_key_pem: String,
    /// Admin client certificate: CN `system:admin`, O `system:masters`.
    pub admin_cert_pem: String,
    /// Admin client key.
    pub admin_key_pem: String,
    /// Service-account token signing key (ECDSA P-256, PKCS#8 PEM).
    pub sa_key_pem: String,
    /// Service-account token verification key (SPKI PEM).
    pub sa_pub_pem: String,
    /// The full server token: `K10<sha256 hex of the CA PEM>::server:<secret>`.
    pub token: String,
    /// The secret part of the token.
    pub token_secret: String,
    /// SHA-256 hex of the CA certificate PEM (the hash in full tokens).
    pub ca_hash: String,
    /// `<server_dir>/tls`.
    pub tls_dir: PathBuf,
    /// `<server_dir>/token`.
    pub token_path: PathBuf,
}

impl ServerPki {
    /// Path of a file under the TLS directory, e.g. `pki.tls_path(CA_CERT_FILE)`.
    pub fn tls_path(&self, file: &str) -> PathBuf {
        self.tls_dir.join(file)
    }
}

impl fmt::Debug for ServerPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPki")
            .field("tls_dir", &self.tls_dir)
            .field("token_path", &self.token_path)
            .field("ca_hash", &self.ca_hash)
            .finish_non_exhaustive()
    }
}

/// Creates the server PKI on first start, or loads it on restart.
///
/// - The CA (ECDSA P-256, 10 years, `rk3s-server-ca@<unix time>`) is created once and never
///   replaced; an unreadable CA or a CA key without its certificate (or the reverse) is an
///   error, never a silent re-creation.
/// - The serving and admin certificates are reused while they are signed by the CA, match
///   their keys, do not expire within [`RENEW_BEFORE_DAYS`] and (serving) cover every
///   requested SAN; otherwise they are re-issued (names are only checked for coverage: a
///   SAN dropped from the options stays until the certificate is re-issued for another
///   reason, as k3s's dynamic listener only ever adds names).
/// - The service-account key pair is created once.
/// - The token secret is `--token`'s (its secret part for a full token), else the stored
///   one, else random. As in k3s, whose datastore is bound to the token, a `--token`
///   different from the stored one is an error ([`PkiError::TokenMismatch`]); a full
///   token whose CA hash is not this CA's is rejected too.
///
/// Directories are created 0700, keys and the token 0600, certificates 0644; files are
/// written atomically, and unchanged files are not rewritten.
pub fn ensure_server_pki(opts: &PkiOptions) -> Result<ServerPki, PkiError> {
    let given = match opts.token.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Some(parse_token(t)?),
        _ => None,
    };
    if let Some(g) = &given {
        validate_secret(&g.secret)?;
    }
    let sans = serving_sans(opts)?;
    if opts.renew_before >= opts.leaf_validity {
        return Err(PkiError::InvalidValidity(format!(
            "the renewal window ({:?}) must be shorter than the validity of leaf certificates ({:?})",
            opts.renew_before, opts.leaf_validity
        )));
    }
    let lifetimes = Lifetimes {
        validity: opts.leaf_validity.as_secs() as i64,
        renew_before: opts.renew_before.as_secs() as i64,
    };

    let tls_dir = opts.server_dir.join(TLS_DIR);
    ensure_dir(&opts.server_dir, 0o700)?;
    ensure_dir(&tls_dir, 0o700)?;

    let (ca_cert_pem, ca_key_pem, ca) = ensure_ca(&tls_dir, given.as_ref())?;
    let ca_hash = ca_cert_hash(&ca_cert_pem);
    if let Some(token_hash) = given.as_ref().and_then(|g| g.ca_hash.as_ref()) {
        if *token_hash != ca_hash {
            return Err(PkiError::TokenCaHashMismatch {
                token_hash: token_hash.clone(),
                ca_hash,
            });
        }
    }

    let serving_chain = if ca_cert_pem.matches("-----BEGIN CERTIFICATE-----").count() > 1 {
        ca_cert_pem.as_str()
    } else {
        ""
    };
    let (serving_cert_pem, serving_key_pem) = ensure_leaf(
        &ca,
        &lifetimes,
        &tls_dir,
        SERVING_CERT_FILE,
        SERVING_KEY_FILE,
        &Leaf {
            common_name: SERVING_CN,
            organizations: &[],
            sans: &sans,
            usage: ExtendedKeyUsagePurpose::ServerAuth,
            chain: serving_chain,
        },
    )?;
    let (admin_cert_pem, admin_key_pem) = ensure_leaf(
        &ca,
        &lifetimes,
        &tls_dir,
        ADMIN_CERT_FILE,
        ADMIN_KEY_FILE,
        &Leaf {
            common_name: ADMIN_CN,
            organizations: &[ADMIN_ORG],
            sans: &[],
            usage: ExtendedKeyUsagePurpose::ClientAuth,
            chain: "",
        },
    )?;
    let (sa_key_pem, sa_pub_pem) = ensure_sa_key(&tls_dir)?;

    let token_path = opts.server_dir.join(TOKEN_FILE);
    let (token, token_secret) = ensure_token(&token_path, &ca_cert_pem, given.as_ref())?;

    Ok(ServerPki {
        ca_cert_pem,
        ca_key_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        sa_key_pem,
        sa_pub_pem,
        token,
        token_secret,
        ca_hash,
        tls_dir,
        token_path,
    })
}

fn validate_secret(secret: &str) -> Result<(), PkiError> {
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PkiError::InvalidToken(
            "the token must not contain whitespace or control characters".into(),
        ));
    }
    Ok(())
}

/// The hostname of this machine, lower-cased, if it can be read.
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .find(|s| !s.is_empty())
}

/// Every name the kube-apiserver serving certificate must carry, deduplicated.
fn serving_sans(opts: &PkiOptions) -> Result<Vec<San>, PkiError> {
    let mut out: Vec<San> = Vec::new();
    let mut add = |san: San| {
        if !out.contains(&san) {
            out.push(san);
        }
    };
    add(San::Dns("localhost".into()));
    if let Some(h) = hostname() {
        match San::parse(&h) {
            Ok(san) => add(san),
            Err(e) => tracing::warn!("hostname left out of the serving certificate: {e}"),
        }
    }
    let domain = opts.cluster_domain.trim().trim_matches('.');
    let domain = if domain.is_empty() {
        "cluster.local"
    } else {
        domain
    };
    for name in [
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        format!("kubernetes.default.svc.{domain}"),
    ] {
        add(San::parse(&name)?);
    }
    add(San::Ip(IpAddr::from([127, 0, 0, 1])));
    add(San::Ip(std::net::Ipv6Addr::LOCALHOST.into()));
    add(San::Ip(opts.service_ip));
    for s in &opts.sans {
        add(San::parse(s)?);
    }
    Ok(out)
}

fn ensure_ca(
    tls_dir: &Path,
    given: Option<&ParsedToken>,
) -> Result<(String, String, Ca), PkiError> {
    let cert_path = tls_dir.join(CA_CERT_FILE);
    let key_path = tls_dir.join(CA_KEY_FILE);
    match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => {
            let ca = Ca::load(&cert_pem, &key_pem)?;
            let days_left = (ca.info.not_after - now_unix()) / 86_400;
            if days_left < i64::from(RENEW_BEFORE_DAYS) {
                tracing::warn!(
                    "the cluster CA {} expires in {days_left} days; it is not renewed automatically",
                    cert_path.display()
                );
            }
            Ok((cert_pem, key_pem, ca))
        }
        (Some(_), None) => Err(PkiError::IncompleteCa {
            present: cert_path,
            missing: key_path,
        }),
        (None, Some(_)) => Err(PkiError::IncompleteCa {
            present: key_path,
            missing: cert_path,
        }),
        (None, None) => {
            if given.is_some_and(|g| g.ca_hash.is_some()) {
                return Err(PkiError::InvalidToken(
                    "a full (K10) token names a cluster CA, but this server has no CA yet; \
                     start the first server with the short (secret-only) token"
                        .into(),
                ));
            }
            let cn = format!("rk3s-server-ca@{}", now_unix());
            let (cert_pem, key_pem) = cert::generate_ca(&cn, CA_VALIDITY_DAYS)?;
            write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
            tracing::info!("created cluster CA {}", cert_path.display());
            let ca = Ca::load(&cert_pem, &key_pem)?;
            Ok((cert_pem, key_pem, ca))
        }
    }
}

/// What a leaf certificate must be.
struct Leaf<'a> {
    common_name: &'a str,
    organizations: &'a [&'a str],
    sans: &'a [San],
    usage: ExtendedKeyUsagePurpose,
    /// Appended to a newly issued certificate: the CA bundle when the CA is a rotated
    /// bundle (intermediate first), so clients that trust only the old CA or only the new
    /// root can build a path; empty for a single self-signed CA.
    chain: &'a str,
}

/// How long leaf certificates live, and when they are renewed (seconds).
struct Lifetimes {
    validity: i64,
    renew_before: i64,
}

/// Why an existing leaf certificate cannot be reused, or `None` if it can.
fn leaf_problem(
    ca: &Ca,
    lifetimes: &Lifetimes,
    cert_pem: &str,
    key_pem: &str,
    want: &Leaf<'_>,
) -> Option<String> {
    let info = match CertInfo::from_pem(cert_pem, "certificate") {
        Ok(i) => i,
        Err(e) => return Some(e.to_string()),
    };
    let key = match cert::load_key(key_pem, "key") {
        Ok(k) => k,
        Err(e) => return Some(e.to_string()),
    };
    if !cert::key_matches(&key, &info.spki) {
        return Some("the key does not match the certificate".into());
    }
    if !ca.issued(&info) {
        return Some("not issued by the current cluster CA".into());
    }
    if crate::rotation::due(info.not_after, now_unix(), lifetimes.renew_before) {
        return Some(format!(
            "expires within {}",
            human_duration(lifetimes.renew_before)
        ));
    }
    if info.common_name.as_deref() != Some(want.common_name)
        || info
            .organizations
            .iter()
            .map(String::as_str)
            .ne(want.organizations.iter().copied())
    {
        return Some("subject differs".into());
    }
    if !info.covers(want.sans) {
        return Some("does not cover every requested subject alternative name".into());
    }
    None
}

/// `90 days`, `20s`: a renewal window for log lines.
fn human_duration(secs: i64) -> String {
    if secs % 86_400 == 0 {
        format!("{} days", secs / 86_400)
    } else {
        format!("{secs}s")
    }
}

fn ensure_leaf(
    ca: &Ca,
    lifetimes: &Lifetimes,
    tls_dir: &Path,
    cert_file: &str,
    key_file: &str,
    want: &Leaf<'_>,
) -> Result<(String, String), PkiError> {
    let cert_path = tls_dir.join(cert_file);
    let key_path = tls_dir.join(key_file);
    if let (Some(cert_pem), Some(key_pem)) = (read_optional(&cert_path)?, read_optional(&key_path)?)
    {
        match leaf_problem(ca, lifetimes, &cert_pem, &key_pem, want) {
            None => return Ok((cert_pem, key_pem)),
            Some(why) => tracing::info!("re-issuing {}: {why}", cert_path.display()),
        }
    }
    let (mut cert_pem, key_pem) = ca.issue_for_secs(
        want.common_name,
        want.organizations,
        want.sans,
        want.usage.clone(),
        lifetimes.validity,
    )?;
    if !want.chain.is_empty() {
        cert_pem.push_str(want.chain.trim_start());
        if !cert_pem.ends_with('\n') {
            cert_pem.push('\n');
        }
    }
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok((cert_pem, key_pem))
}

fn ensure_sa_key(tls_dir: &Path) -> Result<(String, String), PkiError> {
    let key_path = tls_dir.join(SA_KEY_FILE);
    let pub_path = tls_dir.join(SA_PUB_FILE);
    let (key_pem, pub_pem) = match read_optional(&key_path)? {
        Some(key_pem) => {
            // Never silently replace it: every issued service-account token would break.
            let key = cert::load_key(&key_pem, &key_path.display().to_string())?;
            let pub_pem = key.public_key_pem();
            (key_pem, pub_pem)
        }
        None => {
            let (key_pem, pub_pem) = cert::generate_key_pair()?;
            write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
            tracing::info!("created service-account signing key {}", key_path.display());
            (key_pem, pub_pem)
        }
    };
    if read_optional(&pub_path)?.as_deref() != Some(pub_pem.as_str()) {
        write_atomic(&pub_path, pub_pem.as_bytes(), 0o644)?;
    }
    Ok((key_pem, pub_pem))
}

fn ensure_token(
    path: &Path,
    ca_cert_pem: &str,
    given: Option<&ParsedToken>,
) -> Result<(String, String), PkiError> {
    let stored_text = read_optional(path)?;
    let stored = match stored_text.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Some(
            parse_token(t)
                .map_err(|e| PkiError::InvalidToken(format!("{}: {e}", path.display())))?,
        ),
        _ => None,
    };
    let secret = match (given, &stored) {
        (Some(g), Some(s)) if g.secret != s.secret => {
            return Err(PkiError::TokenMismatch {
                path: path.to_path_buf(),
            })
        }
        (Some(g), _) => g.secret.clone(),
        (None, Some(s)) => s.secret.clone(),
        (None, None) => random_secret()?,
    };
    let token = format_token(ca_cert_pem, &secret);
    if stored_text.as_deref().map(str::trim) != Some(token.as_str()) {
        write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?;
    }
    Ok((token, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    const ALL_FILES: [&str; 8] = [
        CA_CERT_FILE,
        CA_KEY_FILE,
        SERVING_CERT_FILE,
        SERVING_KEY_FILE,
        ADMIN_CERT_FILE,
        ADMIN_KEY_FILE,
        SA_KEY_FILE,
        SA_PUB_FILE,
    ];

    fn opts(dir: &Path) -> PkiOptions {
        PkiOptions::new(dir.join("server"))
    }

    fn snapshot(pki: &ServerPki) -> BTreeMap<String, Vec<u8>> {
        let mut m: BTreeMap<String, Vec<u8>> = ALL_FILES
            .iter()
            .map(|f| (f.to_string(), std::fs::read(pki.tls_path(f)).unwrap()))
            .collect();
        m.insert("token".into(), std::fs::read(&pki.token_path).unwrap());
        m
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn first_start_creates_everything_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let pki = ensure_server_pki(&o).unwrap();
        assert_eq!(mode(&o.server_dir), 0o700);
        assert_eq!(mode(&pki.tls_dir), 0o700);
        for key in [CA_KEY_FILE, SERVING_KEY_FILE, ADMIN_KEY_FILE, SA_KEY_FILE] {
            assert_eq!(mode(&pki.tls_path(key)), 0o600, "{key}");
        }
        for crt in [
            CA_CERT_FILE,
            SERVING_CERT_FILE,
            ADMIN_CERT_FILE,
            SA_PUB_FILE,
        ] {
            assert_eq!(mode(&pki.tls_path(crt)), 0o644, "{crt}");
        }
        assert_eq!(mode(&pki.token_path), 0o600);
        assert_eq!(
            std::fs::read_to_string(pki.tls_path(CA_CERT_FILE)).unwrap(),
            pki.ca_cert_pem
        );

        let ca = CertInfo::from_pem(&pki.ca_cert_pem, "ca").unwrap();
        assert!(ca.is_ca);
        assert!(ca.common_name.unwrap().starts_with("rk3s-server-ca@"));
        let years = (ca.not_after - now_unix()) / 86_400;
        assert!((3649..=3650).contains(&years));
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca.der).unwrap();
        let ku = parsed.key_usage().unwrap().unwrap();
        assert!(ku.value.key_cert_sign());

        assert!(pki.sa_key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(pki.sa_pub_pem.contains("BEGIN PUBLIC KEY"));
        let sa = cert::load_key(&pki.sa_key_pem, "sa").unwrap();
        assert_eq!(sa.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(sa.public_key_pem(), pki.sa_pub_pem);
    }

    #[test]
    fn token_format_and_ca_hash() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure_server_pki(&opts(dir.path())).unwrap();
        let hash = hex_sha256(pki.ca_cert_pem.as_bytes());
        let on_disk = std::fs::read_to_string(&pki.token_path).unwrap();
        assert_eq!(on_disk, format!("{}\n", pki.token));
        let rest = pki.token.strip_prefix("K10").unwrap();
        let (h, creds) = rest.split_once("::").unwrap();
        assert_eq!(h, hash);
        assert_eq!(pki.ca_hash, hash);
        let secret = creds.strip_prefix("server:").unwrap();
        assert_eq!(secret.len(), 32);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(secret, pki.token_secret);
        assert!(crate::token_matches(secret, &pki.ca_cert_pem, &pki.token));
    }

    fn hex_sha256(data: &[u8]) -> String {
        ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn second_start_reuses_files_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.sans = vec!["10.0.0.5".into(), "api.example.com".into()];
        let first = ensure_server_pki(&o).unwrap();
        let before = snapshot(&first);
        let second = ensure_server_pki(&o).unwrap();
        assert_eq!(before, snapshot(&second));
        assert_eq!(first.token, second.token);
        assert_eq!(first.serving_cert_pem, second.serving_cert_pem);
        assert_eq!(first.admin_key_pem, second.admin_key_pem);
        // a subset of the SANs is still covered: nothing is re-issued
        o.sans = vec!["API.example.com".into()];
        let third = ensure_server_pki(&o).unwrap();
        assert_eq!(before, snapshot(&third));
    }

    #[test]
    fn serving_cert_has_required_sans() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.sans = vec![
            "192.168.1.10".into(),
            "my.host.example".into(),
            "fd00::10".into(),
        ];
        o.cluster_domain = "corp.local".into();
        o.service_ip = "10.96.0.1".parse().unwrap();
        let pki = ensure_server_pki(&o).unwrap();
        let info = CertInfo::from_pem(&pki.serving_cert_pem, "serving").unwrap();
        let ip = |s: &str| San::Ip(s.parse().unwrap());
        let dns = |s: &str| San::Dns(s.into());
        let mut want = vec![
            ip("127.0.0.1"),
            ip("::1"),
            ip("10.96.0.1"),
            ip("192.168.1.10"),
            ip("fd00::10"),
            dns("localhost"),
            dns("kubernetes"),
            dns("kubernetes.default"),
            dns("kubernetes.default.svc"),
            dns("kubernetes.default.svc.corp.local"),
            dns("my.host.example"),
        ];
        if let Some(h) = hostname() {
            want.push(San::parse(&h).unwrap());
        }
        for w in &want {
            assert!(info.sans.contains(w), "missing {w:?} in {:?}", info.sans);
        }
        assert_eq!(info.common_name.as_deref(), Some("kube-apiserver"));
        let days = (info.not_after - now_unix()) / 86_400;
        assert!((364..=365).contains(&days), "{days}");
        assert!(crate::verify_issued_by(&pki.serving_cert_pem, &pki.ca_cert_pem).unwrap());
        let (_, parsed) = x509_parser::parse_x509_certificate(&info.der).unwrap();
        assert!(
            parsed
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
    }

    #[test]
    fn admin_cert_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure_server_pki(&opts(dir.path())).unwrap();
        let der = cert::pem_to_der(&pki.admin_cert_pem, "admin").unwrap();
        let id = crate::client_identity(&der).unwrap();
        assert_eq!(id.user, "system:admin");
        assert_eq!(id.groups, vec!["system:masters".to_string()]);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(
            parsed
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );
        assert!(crate::verify_issued_by(&pki.admin_cert_pem, &pki.ca_cert_pem).unwrap());
    }

    #[test]
    fn new_san_reissues_serving_cert_but_keeps_ca() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        let first = ensure_server_pki(&o).unwrap();
        let before = snapshot(&first);
        o.sans = vec!["203.0.113.7".into()];
        let second = ensure_server_pki(&o).unwrap();
        let after = snapshot(&second);
        assert_ne!(before[SERVING_CERT_FILE], after[SERVING_CERT_FILE]);
        assert_ne!(before[SERVING_KEY_FILE], after[SERVING_KEY_FILE]);
        for same in [
            CA_CERT_FILE,
            CA_KEY_FILE,
            ADMIN_CERT_FILE,
            ADMIN_KEY_FILE,
            SA_KEY_FILE,
            "token",
        ] {
            assert_eq!(before[same], after[same], "{same}");
        }
        let info = CertInfo::from_pem(&second.serving_cert_pem, "s").unwrap();
        assert!(info.sans.contains(&San::Ip("203.0.113.7".parse().unwrap())));
        assert!(crate::verify_issued_by(&second.serving_cert_pem, &second.ca_cert_pem).unwrap());
    }

    #[test]
    fn damaged_or_foreign_leaf_is_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let first = ensure_server_pki(&o).unwrap();
        // a serving cert from another CA with the right names is not reused
        let (other_ca_cert, other_ca_key) = cert::generate_ca("other", 10).unwrap();
        let other_ca = Ca::load(&other_ca_cert, &other_ca_key).unwrap();
        let sans = serving_sans(&o).unwrap();
        let (c, k) = other_ca
            .issue(
                SERVING_CN,
                &[],
                &sans,
                ExtendedKeyUsagePurpose::ServerAuth,
                365,
            )
            .unwrap();
        std::fs::write(first.tls_path(SERVING_CERT_FILE), &c).unwrap();
        std::fs::write(first.tls_path(SERVING_KEY_FILE), &k).unwrap();
        std::fs::write(first.tls_path(ADMIN_CERT_FILE), "garbage").unwrap();
        let second = ensure_server_pki(&o).unwrap();
        assert_ne!(second.serving_cert_pem, c);
        assert!(crate::verify_issued_by(&second.serving_cert_pem, &first.ca_cert_pem).unwrap());
        assert!(crate::verify_issued_by(&second.admin_cert_pem, &first.ca_cert_pem).unwrap());
        assert_eq!(second.ca_cert_pem, first.ca_cert_pem);
    }

    #[test]
    fn expiring_leaf_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let first = ensure_server_pki(&o).unwrap();
        let ca = Ca::load(&first.ca_cert_pem, &first.ca_key_pem).unwrap();
        let (c, k) = ca
            .issue(
                ADMIN_CN,
                &[ADMIN_ORG],
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
                30,
            )
            .unwrap();
        std::fs::write(first.tls_path(ADMIN_CERT_FILE), &c).unwrap();
        std::fs::write(first.tls_path(ADMIN_KEY_FILE), &k).unwrap();
        let second = ensure_server_pki(&o).unwrap();
        assert_ne!(second.admin_cert_pem, c);
        let info = CertInfo::from_pem(&second.admin_cert_pem, "a").unwrap();
        assert!(info.not_after - now_unix() > 300 * 86_400);
    }

    /// Verifies the serving chain as a TLS client that trusts only `root_pem` does.
    fn server_trusted_by(serving_pem: &str, root_pem: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(serving_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn rotated_ca_reissues_leaves_trusted_by_old_and_new_roots() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let first = ensure_server_pki(&o).unwrap();
        let (bundle, keys) = crate::cross_signed_ca(&first.ca_cert_pem, &first.ca_key_pem).unwrap();
        std::fs::write(first.tls_path(CA_CERT_FILE), &bundle).unwrap();
        std::fs::write(first.tls_path(CA_KEY_FILE), &keys).unwrap();
        let second = ensure_server_pki(&o).unwrap();
        assert_eq!(second.ca_cert_pem, bundle);
        assert_ne!(second.serving_cert_pem, first.serving_cert_pem);
        assert_ne!(second.admin_cert_pem, first.admin_cert_pem);
        assert_ne!(second.token, first.token, "the token names the new CA hash");
        assert_eq!(second.token_secret, first.token_secret);
        let root_new = bundle
            .split_inclusive("-----END CERTIFICATE-----\n")
            .nth(1)
            .unwrap();
        assert!(server_trusted_by(
            &second.serving_cert_pem,
            &first.ca_cert_pem
        ));
        assert!(server_trusted_by(&second.serving_cert_pem, root_new));
        assert!(!server_trusted_by(
            &second.serving_cert_pem,
            &cert::generate_ca("other", 1).unwrap().0
        ));
        // the serving file is the leaf and the bundle; a restart reuses it unchanged
        assert!(second.serving_cert_pem.ends_with(&bundle));
        let third = ensure_server_pki(&o).unwrap();
        assert_eq!(third.serving_cert_pem, second.serving_cert_pem);
        assert_eq!(third.admin_cert_pem, second.admin_cert_pem);
    }

    #[test]
    fn given_token_is_used_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.token = Some("my-secret".into());
        let pki = ensure_server_pki(&o).unwrap();
        assert_eq!(pki.token_secret, "my-secret");
        assert!(pki.token.ends_with("::server:my-secret"));
        // restart without --token keeps it; with the full token it is accepted
        o.token = None;
        assert_eq!(ensure_server_pki(&o).unwrap().token, pki.token);
        o.token = Some(pki.token.clone());
        assert_eq!(ensure_server_pki(&o).unwrap().token, pki.token);
    }

    #[test]
    fn mismatched_token_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.token = Some("first".into());
        let pki = ensure_server_pki(&o).unwrap();
        o.token = Some("second".into());
        assert!(matches!(
            ensure_server_pki(&o),
            Err(PkiError::TokenMismatch { .. })
        ));
        // a full token for another CA
        o.token = Some(format!("K10{}::server:first", "0".repeat(64)));
        assert!(matches!(
            ensure_server_pki(&o),
            Err(PkiError::TokenCaHashMismatch { .. })
        ));
        // the stored token is untouched
        assert_eq!(
            std::fs::read_to_string(&pki.token_path).unwrap().trim(),
            pki.token
        );
    }

    #[test]
    fn full_token_on_first_start_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.token = Some(format!("K10{}::server:x", "a".repeat(64)));
        assert!(matches!(
            ensure_server_pki(&o),
            Err(PkiError::InvalidToken(_))
        ));
        assert!(!o.server_dir.join(TLS_DIR).join(CA_CERT_FILE).exists());
        o.token = Some("has space".into());
        assert!(matches!(
            ensure_server_pki(&o),
            Err(PkiError::InvalidToken(_))
        ));
    }

    #[test]
    fn incomplete_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let pki = ensure_server_pki(&o).unwrap();
        std::fs::remove_file(pki.tls_path(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            ensure_server_pki(&o),
            Err(PkiError::IncompleteCa { .. })
        ));
    }

    #[test]
    fn invalid_san_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.sans = vec!["not a name".into()];
        assert!(matches!(
            ensure_server_pki(&o),
            Err(PkiError::InvalidSan { .. })
        ));
    }

    #[test]
    fn deleted_sa_pub_is_restored_from_key() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let pki = ensure_server_pki(&o).unwrap();
        std::fs::remove_file(pki.tls_path(SA_PUB_FILE)).unwrap();
        let again = ensure_server_pki(&o).unwrap();
        assert_eq!(again.sa_key_pem, pki.sa_key_pem);
        assert_eq!(
            std::fs::read_to_string(pki.tls_path(SA_PUB_FILE)).unwrap(),
            pki.sa_pub_pem
        );
    }
}
