//! Image pulls as upstream's kubelet does them: the pod's image pull secrets
//! (`kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg`) make a keyring,
//! matched against the image's repository like upstream's `credentialprovider` (host
//! parts as globs, exact port, path prefix, `index.docker.io` for Docker Hub images);
//! every matching credential is tried in turn as the CRI `AuthConfig` of `PullImage`,
//! else the pull is anonymous (containerd then uses `registries.yaml`'s auth).
//!
//! The back-off bookkeeping keeps the last pull error per pod and image, so that the
//! `ImagePullBackOff` message carries it (`Back-off pulling image "X": ErrImagePull: ...`),
//! as upstream's image manager does since 1.32.

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::Api;

use crate::cri::types::AuthConfig;
use crate::cri::{CriClient, CriError};

/// Secret type of `~/.docker/config.json` secrets (key `.dockerconfigjson`).
pub const SECRET_TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// Secret type of legacy `~/.dockercfg` secrets (key `.dockercfg`).
pub const SECRET_TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
/// Data key of [`SECRET_TYPE_DOCKER_CONFIG_JSON`] secrets.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// Data key of [`SECRET_TYPE_DOCKERCFG`] secrets.
pub const DOCKERCFG_KEY: &str = ".dockercfg";
/// The keyring key of Docker Hub credentials (`https://index.docker.io/v1/`).
const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

/// Errors of credential handling.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PullError {
    /// A docker config is not valid JSON of the expected shape.
    #[error("{0}")]
    InvalidDockerConfig(String),
    /// An `auth` field is not base64 of `user:password`.
    #[error("{0}")]
    InvalidAuth(String),
    /// The image reference cannot be parsed.
    #[error("couldn't parse image name {image:?}: {reason}")]
    InvalidImageName {
        /// The image as given.
        image: String,
        /// Why.
        reason: String,
    },
}

/// One credential of a docker config (`auths.<registry>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfigEntry {
    /// User name (from `auth` when that is set).
    pub username: String,
    /// Password (from `auth` when that is set).
    pub password: String,
    /// E-mail (unused by pulls).
    pub email: String,
}

/// A docker config: registry (URL, host, host/path, with globs) -> credential.
pub type DockerConfig = BTreeMap<String, DockerConfigEntry>;

/// Parses a `.dockerconfigjson` (`{"auths": {...}}`).
pub fn parse_docker_config_json(data: &[u8]) -> Result<DockerConfig, PullError> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| PullError::InvalidDockerConfig(e.to_string()))?;
    match v.get("auths") {
        None | Some(serde_json::Value::Null) => Ok(DockerConfig::new()),
        Some(auths) => entries(auths),
    }
}

/// Parses a legacy `.dockercfg` (the `auths` map itself).
pub fn parse_dockercfg(data: &[u8]) -> Result<DockerConfig, PullError> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| PullError::InvalidDockerConfig(e.to_string()))?;
    entries(&v)
}

fn entries(v: &serde_json::Value) -> Result<DockerConfig, PullError> {
    let obj = v.as_object().ok_or_else(|| {
        PullError::InvalidDockerConfig(format!(
            "json: cannot unmarshal {} into Go value of type credentialprovider.DockerConfig",
            json_kind(v)
        ))
    })?;
    let mut out = DockerConfig::new();
    for (registry, e) in obj {
        let eo = e.as_object().ok_or_else(|| {
            PullError::InvalidDockerConfig(format!("json: cannot unmarshal {} into Go value of type credentialprovider.dockerConfigEntryWithAuth", json_kind(e)))
        })?;
        let field = |k: &str| -> Result<String, PullError> {
            match eo.get(k) {
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(PullError::InvalidDockerConfig(format!(
                    "json: cannot unmarshal {} into Go struct field dockerConfigEntryWithAuth.{k} of type string",
                    json_kind(other)
                ))),
            }
        };
        let mut entry = DockerConfigEntry {
            username: field("username")?,
            password: field("password")?,
            email: field("email")?,
        };
        let auth = field("auth")?;
        if !auth.is_empty() {
            let (u, p) = decode_auth(&auth)?;
            entry.username = u;
            entry.password = p;
        }
        out.insert(registry.clone(), entry);
    }
    Ok(out)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Decodes an `auth` field: base64 (padded or not) of `user:password`.
pub fn decode_auth(field: &str) -> Result<(String, String), PullError> {
    let decoded = if field.trim().ends_with('=') {
        base64::engine::general_purpose::STANDARD.decode(field)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(field)
    }
    .map_err(|e| PullError::InvalidAuth(format!("illegal base64 data: {e}")))?;
    let text = String::from_utf8_lossy(&decoded);
    match text.split_once(':') {
        Some((u, p)) => Ok((u.to_string(), p.to_string())),
        None => Err(PullError::InvalidAuth(
            "must be formatted as base64(username:password)".into(),
        )),
    }
}

/// Credentials by registry key, looked up by image repository as upstream's
/// `BasicDockerKeyring` does.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// (key = host[:port][/path], credentials) — sorted so that longer / more specific
    /// keys come first (reverse lexical order, as upstream).
    entries: Vec<(String, Vec<DockerConfigEntry>)>,
}

impl Keyring {
    /// Adds every entry of a docker config. Keys may carry a scheme and a `/v1/` or
    /// `/v2/` API prefix, which are dropped.
    pub fn add(&mut self, cfg: &DockerConfig) {
        for (loc, entry) in cfg {
            let Some(key) = keyring_key(loc) else {
                tracing::warn!(registry = %loc, "unparseable registry in a docker config; ignored");
                continue;
            };
            match self.entries.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(entry.clone()),
                None => self.entries.push((key, vec![entry.clone()])),
            }
        }
        self.entries.sort_by(|a, b| b.0.cmp(&a.0));
    }

    /// The keyring of a pod's pull secrets (other secret types are ignored).
    pub fn from_secrets(secrets: &[Secret]) -> Result<Self, PullError> {
        let mut k = Keyring::default();
        for s in secrets {
            let ty = s.type_.as_deref().unwrap_or_default();
            let data = |key: &str| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.as_slice())
                    .filter(|b| !b.is_empty())
            };
            if ty == SECRET_TYPE_DOCKER_CONFIG_JSON {
                if let Some(b) = data(DOCKER_CONFIG_JSON_KEY) {
                    k.add(&parse_docker_config_json(b)?);
                }
            } else if ty == SECRET_TYPE_DOCKERCFG {
                if let Some(b) = data(DOCKERCFG_KEY) {
                    k.add(&parse_dockercfg(b)?);
                }
            }
        }
        Ok(k)
    }

    /// True when there are no credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credentials for a normalized repository (`host/path`, no tag), most
    /// specific key first; Docker Hub images fall back to `index.docker.io` credentials.
    pub fn lookup(&self, repo: &str) -> Vec<DockerConfigEntry> {
        let mut out = Vec::new();
        for (key, creds) in &self.entries {
            if urls_match(key, repo) {
                out.extend(creds.iter().cloned());
            }
        }
        if out.is_empty() && is_default_registry_match(repo) {
            if let Some((_, creds)) = self
                .entries
                .iter()
                .find(|(k, _)| k == DEFAULT_REGISTRY_HOST)
            {
                out.extend(creds.iter().cloned());
            }
        }
        out
    }
}

/// The keyring key of a docker config location: scheme dropped, `/v1/`/`/v2/` API
/// prefix dropped, `host[:port][/path]`.
fn keyring_key(loc: &str) -> Option<String> {
    let rest = loc
        .strip_prefix("https://")
        .or_else(|| loc.strip_prefix("http://"))
        .unwrap_or(loc);
    let (host, path) = split_host_path(rest);
    if host.is_empty() {
        return None;
    }
    let path = if path.starts_with("/v2/") || path.starts_with("/v1/") {
        &path[3..]
    } else {
        path
    };
    if path.is_empty() || path == "/" {
        Some(host.to_string())
    } else {
        Some(format!("{host}{path}"))
    }
}

/// Splits `host[:port][/path][?query]` into host and path (query and fragment dropped).
fn split_host_path(s: &str) -> (&str, &str) {
    let s = s.split(['?', '#']).next().unwrap_or(s);
    match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Splits a host into its dot-separated parts and port.
fn split_url_host(host: &str) -> (Vec<&str>, &str) {
    let (name, port) = match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (host, ""),
    };
    (name.split('.').collect(), port)
}

/// Upstream's `URLsMatchStr`: same port, same number of host parts, each host part
/// matching as a glob, and the key's path a prefix of the target's.
pub fn urls_match(glob: &str, target: &str) -> bool {
    let (ghost, gpath) = split_host_path(glob);
    let (thost, tpath) = split_host_path(target);
    let (gparts, gport) = split_url_host(ghost);
    let (tparts, tport) = split_url_host(thost);
    if gport != tport || gparts.len() != tparts.len() || !tpath.starts_with(gpath) {
        return false;
    }
    gparts.iter().zip(&tparts).all(|(g, t)| glob_match(g, t))
}

/// A shell glob as Go's `filepath.Match` (`*`, `?`, `[...]`, `[^...]`, `\` escapes) on
/// a string without separators; a malformed pattern matches nothing.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    let Some((&c, rest)) = p.split_first() else {
        return t.is_empty();
    };
    match c {
        '*' => (0..=t.len()).any(|i| glob_at(rest, &t[i..])),
        '?' => !t.is_empty() && glob_at(rest, &t[1..]),
        '[' => {
            let Some((&ch, trest)) = t.split_first() else {
                return false;
            };
            let mut i = 0;
            let negate = matches!(rest.first(), Some('^'));
            if negate {
                i = 1;
            }
            let mut matched = false;
            let mut first = true;
            loop {
                let Some(&lo) = rest.get(i) else { return false };
                if lo == ']' && !first {
                    i += 1;
                    break;
                }
                first = false;
                let lo = if lo == '\\' {
                    i += 1;
                    match rest.get(i) {
                        Some(&e) => e,
                        None => return false,
                    }
                } else {
                    lo
                };
                i += 1;
                let mut hi = lo;
                if rest.get(i) == Some(&'-') && rest.get(i + 1).is_some_and(|&n| n != ']') {
                    hi = match rest.get(i + 1) {
                        Some('\\') => match rest.get(i + 2) {
                            Some(&e) => {
                                i += 1;
                                e
                            }
                            None => return false,
                        },
                        Some(&h) => h,
                        None => return false,
                    };
                    i += 2;
                }
                if lo <= ch && ch <= hi {
                    matched = true;
                }
            }
            matched != negate && glob_at(&rest[i..], trest)
        }
        '\\' => match rest.split_first() {
            Some((&e, r2)) => t.first() == Some(&e) && glob_at(r2, &t[1..]),
            None => false,
        },
        c => t.first() == Some(&c) && glob_at(rest, &t[1..]),
    }
}

/// Upstream's `isDefaultRegistryMatch`: Docker Hub images (no registry host, or
/// `docker.io` / `index.docker.io`).
fn is_default_registry_match(repo: &str) -> bool {
    let (first, rest) = match repo.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (repo, None),
    };
    if first.is_empty() {
        return false;
    }
    if rest.is_none() || first == "docker.io" || first == "index.docker.io" {
        return true;
    }
    !first.contains(['.', ':']) && first != "localhost"
}

/// A parsed image reference, normalized as Docker does (`busybox` ->
/// `docker.io/library/busybox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host/path` without tag or digest.
    pub repo: String,
    /// Tag (empty when none was given).
    pub tag: String,
    /// Digest (empty when none was given).
    pub digest: String,
}

/// Parses an image reference like upstream's `parsers.ParseImageName`.
pub fn parse_image_name(image: &str) -> Result<ImageRef, PullError> {
    let bad = |reason: &str| PullError::InvalidImageName {
        image: image.to_string(),
        reason: reason.to_string(),
    };
    if image.is_empty() {
        return Err(bad("invalid reference format"));
    }
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => {
            let ok = d.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !ok {
                return Err(bad("invalid reference format"));
            }
            (n, d.to_string())
        }
        None => (image, String::new()),
    };
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (
            &name[..last_slash + i],
            name[last_slash + i + 1..].to_string(),
        ),
        None => (name, String::new()),
    };
    if !tag.is_empty()
        && (tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            || tag.starts_with(['.', '-']))
    {
        return Err(bad("invalid reference format"));
    }
    let (domain, path) = match name.split_once('/') {
        Some((d, p))
            if d.contains(['.', ':'])
                || d == "localhost"
                || d.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (d.to_string(), p.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if path.is_empty()
        || path.split('/').any(|c| {
            c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
    {
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(&format!(
                "invalid reference format: repository name ({path}) must be lowercase"
            )));
        }
        return Err(bad("invalid reference format"));
    }
    let tag = if tag.is_empty() && digest.is_empty() {
        "latest".to_string()
    } else {
        tag
    };
    Ok(ImageRef {
        repo: format!("{domain}/{path}"),
        tag,
        digest,
    })
}

/// The image as pulled: the requested name with `:latest` added when it has neither
/// tag nor digest (upstream's `applyDefaultImageTag`; the name stays short).
pub fn apply_default_tag(image: &str) -> Result<String, PullError> {
    let r = parse_image_name(image)?;
    if r.digest.is_empty() && !image.ends_with(&format!(":{}", r.tag)) {
        Ok(format!("{image}:{}", r.tag))
    } else {
        Ok(image.to_string())
    }
}

/// The pod's image pull secrets: `spec.imagePullSecrets`, or when it has none those of
/// its service account (what upstream's ServiceAccount admission copies into the pod).
/// Secrets that cannot be read are skipped with a log line, as upstream does.
pub async fn pull_secrets(client: &kube::Client, pod: &Pod) -> Vec<Secret> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.as_ref();
    let mut names: Vec<String> = spec
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        if let Ok(Some(sa)) = sas.get_opt(&sa).await {
            names = sa
                .image_pull_secrets
                .into_iter()
                .flatten()
                .map(|r| r.name)
                .filter(|n| !n.is_empty())
                .collect();
        }
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for n in names {
        match api.get_opt(&n).await {
            Ok(Some(s)) => out.push(s),
            Ok(None) => failed.push(n),
            Err(e) => {
                tracing::debug!(secret = %n, error = %e, "reading a pull secret failed");
                failed.push(n)
            }
        }
    }
    if !failed.is_empty() {
        tracing::info!(
            pod = %pod.metadata.name.as_deref().unwrap_or_default(),
            namespace = %ns,
            "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
            failed.join(", ")
        );
    }
    out
}

/// The CRI credentials to try for `image` with the pod's `secrets` (empty: anonymous).
pub fn credentials_for(image: &str, secrets: &[Secret]) -> Result<Vec<AuthConfig>, PullError> {
    let repo = parse_image_name(image)?.repo;
    let keyring = Keyring::from_secrets(secrets)?;
    Ok(keyring
        .lookup(&repo)
        .into_iter()
        .map(|c| AuthConfig {
            username: c.username,
            password: c.password,
            ..Default::default()
        })
        .collect())
}

/// Pulls `image` with each credential in turn (anonymously when there is none) and
/// returns the image reference, or the error messages joined as Go's aggregate error
/// does (`fmt_err` renders a CRI error as the Go client prints it).
pub async fn pull(
    cri: &CriClient,
    image: &str,
    creds: Vec<AuthConfig>,
    fmt_err: impl Fn(&CriError) -> String,
) -> Result<String, String> {
    if creds.is_empty() {
        return cri
            .pull_image(image, None, None)
            .await
            .map_err(|e| fmt_err(&e));
    }
    let mut errs: Vec<String> = Vec::new();
    for auth in creds {
        match cri.pull_image(image, Some(auth), None).await {
            Ok(r) => return Ok(r),
            Err(e) => {
                let m = fmt_err(&e);
                if !errs.contains(&m) {
                    errs.push(m);
                }
            }
        }
    }
    Err(aggregate(&errs))
}

/// Go's `utilerrors.NewAggregate(...).Error()`.
fn aggregate(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// The last pull error per pod and image (upstream's `prevPullErrMsg`): (reason,
/// message). Bounded: the first keys go past 4096 entries.
static LAST_ERRORS: Mutex<BTreeMap<String, (String, String)>> = Mutex::new(BTreeMap::new());

/// The back-off key of a pod's image (upstream: `<pod uid>_<image>`).
pub fn backoff_key(pod_uid: &str, image: &str) -> String {
    format!("{pod_uid}_{image}")
}

/// Records a failed pull: `reason` (`ErrImagePull`) and its message.
pub fn remember_error(key: &str, reason: &str, message: &str) {
    if let Ok(mut m) = LAST_ERRORS.lock() {
        if m.len() >= 4096 {
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
            }
        }
        m.insert(key.to_string(), (reason.to_string(), message.to_string()));
    }
}

/// The last failed pull of a key: (reason, message).
pub fn last_error(key: &str) -> Option<(String, String)> {
    LAST_ERRORS.lock().ok().and_then(|m| m.get(key).cloned())
}

/// Forgets the last error of a key (before a new attempt, after success).
pub fn forget_error(key: &str) {
    if let Ok(mut m) = LAST_ERRORS.lock() {
        m.remove(key);
    }
}

/// The `ImagePullBackOff` message: `Back-off pulling image "X"`, with the last pull
/// error appended when known.
pub fn backoff_message(key: &str, image: &str) -> String {
    match last_error(key) {
        Some((reason, message)) => format!("Back-off pulling image {image:?}: {reason}: {message}"),
        None => format!("Back-off pulling image {image:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(ty: &str, key: &str, data: &str) -> Secret {
        Secret {
            type_: Some(ty.into()),
            data: Some([(key.to_string(), ByteString(data.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn docker_config_json_with_auth_and_plain_fields() {
        // "alice:s3cr:et" in base64, padded.
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"r.example:5000":{{"username":"bob","password":"pw","email":"b@x"}}}}}}"#
        );
        let c = parse_docker_config_json(cfg.as_bytes()).unwrap();
        assert_eq!(
            c["https://index.docker.io/v1/"],
            DockerConfigEntry {
                username: "alice".into(),
                password: "s3cr:et".into(),
                email: String::new()
            }
        );
        assert_eq!(c["r.example:5000"].username, "bob");
        assert_eq!(c["r.example:5000"].email, "b@x");
        // Unpadded base64 is accepted too; `auth` wins over username/password.
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD.encode("u:p1");
        let c =
            parse_dockercfg(format!(r#"{{"h.io":{{"auth":"{raw}","username":"x"}}}}"#).as_bytes())
                .unwrap();
        assert_eq!(
            (c["h.io"].username.as_str(), c["h.io"].password.as_str()),
            ("u", "p1")
        );
        // Errors as upstream words them.
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        let e = parse_dockercfg(format!(r#"{{"h.io":{{"auth":"{no_colon}"}}}}"#).as_bytes())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "must be formatted as base64(username:password)"
        );
        assert!(parse_docker_config_json(b"{").is_err());
        assert!(parse_docker_config_json(br#"{"auths":[]}"#)
            .unwrap_err()
            .to_string()
            .contains("cannot unmarshal array"));
        assert!(parse_docker_config_json(br#"{}"#).unwrap().is_empty());
    }

    #[test]
    fn keyring_keys_drop_scheme_and_api_prefix() {
        assert_eq!(
            keyring_key("https://index.docker.io/v1/").as_deref(),
            Some("index.docker.io")
        );
        assert_eq!(
            keyring_key("http://r.io:5000/v2/team").as_deref(),
            Some("r.io:5000/team")
        );
        assert_eq!(
            keyring_key("r.io/team/app").as_deref(),
            Some("r.io/team/app")
        );
        assert_eq!(keyring_key("").as_deref(), None);
    }

    #[test]
    fn url_matching_as_upstream() {
        assert!(urls_match("r.io", "r.io/a/b"));
        assert!(urls_match("*.r.io", "eu.r.io/a"));
        assert!(!urls_match("*.r.io", "r.io/a"), "parts count must match");
        assert!(!urls_match("*.r.io", "a.b.r.io/a"));
        assert!(urls_match("r.io:5000", "r.io:5000/a"));
        assert!(!urls_match("r.io", "r.io:5000/a"), "ports must match");
        assert!(!urls_match("r.io:5000", "r.io/a"));
        assert!(urls_match("r.io/team", "r.io/team/app"));
        assert!(!urls_match("r.io/team", "r.io/other/app"));
        assert!(urls_match("127.0.0.1:8080", "127.0.0.1:8080/x"));
        assert!(urls_match("r*.i[o-p]", "r1.ip/x"));
        assert!(!urls_match("r*.i[^o-p]", "r1.ip/x"));
        assert!(glob_match("r?", "r1") && !glob_match("r?", "r"));
        assert!(glob_match("a\\*", "a*") && !glob_match("a\\*", "ab"));
        assert!(!glob_match("[", "a"), "malformed pattern");
    }

    #[test]
    fn image_names_normalize_like_docker() {
        let r = parse_image_name("busybox").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.tag.as_str()),
            ("docker.io/library/busybox", "latest")
        );
        assert_eq!(
            parse_image_name("team/app:1").unwrap().repo,
            "docker.io/team/app"
        );
        assert_eq!(
            parse_image_name("localhost/app").unwrap().repo,
            "localhost/app"
        );
        let r = parse_image_name("127.0.0.1:5000/a/b:v1.2").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.tag.as_str()),
            ("127.0.0.1:5000/a/b", "v1.2")
        );
        let d = format!("r.io/app@sha256:{}", "a".repeat(64));
        let r = parse_image_name(&d).unwrap();
        assert_eq!((r.repo.as_str(), r.tag.as_str()), ("r.io/app", ""));
        assert!(parse_image_name("r.io/App:1")
            .unwrap_err()
            .to_string()
            .contains("must be lowercase"));
        assert!(parse_image_name("a b").is_err());
        assert!(parse_image_name("").is_err());
        assert_eq!(apply_default_tag("busybox").unwrap(), "busybox:latest");
        assert_eq!(apply_default_tag("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            apply_default_tag("127.0.0.1:5000/x").unwrap(),
            "127.0.0.1:5000/x:latest"
        );
    }

    #[test]
    fn credentials_from_pull_secrets() {
        let hub = secret(
            SECRET_TYPE_DOCKER_CONFIG_JSON,
            DOCKER_CONFIG_JSON_KEY,
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"hub","password":"h"}}}"#,
        );
        let team = secret(
            SECRET_TYPE_DOCKERCFG,
            DOCKERCFG_KEY,
            r#"{"r.io/team":{"username":"team","password":"t"},"r.io":{"username":"any","password":"a"}}"#,
        );
        let opaque = secret(
            "Opaque",
            DOCKER_CONFIG_JSON_KEY,
            r#"{"auths":{"r.io":{"username":"no","password":"no"}}}"#,
        );
        let secrets = [hub, team, opaque];
        let users = |image: &str| {
            credentials_for(image, &secrets)
                .unwrap()
                .into_iter()
                .map(|a| a.username)
                .collect::<Vec<_>>()
        };
        assert_eq!(users("busybox"), ["hub"]);
        assert_eq!(users("docker.io/library/busybox:1"), ["hub"]);
        assert_eq!(
            users("r.io/team/app:1"),
            ["team", "any"],
            "most specific first"
        );
        assert_eq!(users("r.io/other:1"), ["any"]);
        assert!(users("q.io/x").is_empty());
        let a = &credentials_for("r.io/other", &secrets).unwrap()[0];
        assert_eq!((a.password.as_str(), a.server_address.as_str()), ("a", ""));
        // A broken secret fails the pull as upstream (the JSON error).
        let bad = secret(
            SECRET_TYPE_DOCKER_CONFIG_JSON,
            DOCKER_CONFIG_JSON_KEY,
            "{nope",
        );
        assert!(credentials_for("r.io/x", &[bad]).is_err());
    }

    #[test]
    fn backoff_message_carries_the_last_error() {
        let key = backoff_key("uid-test-1", "r.io/x:1");
        assert_eq!(
            backoff_message(&key, "r.io/x:1"),
            "Back-off pulling image \"r.io/x:1\""
        );
        remember_error(
            &key,
            "ErrImagePull",
            "rpc error: code = Unknown desc = failed to pull and unpack image",
        );
        assert_eq!(
            backoff_message(&key, "r.io/x:1"),
            "Back-off pulling image \"r.io/x:1\": ErrImagePull: rpc error: code = Unknown desc = failed to pull and unpack image"
        );
        assert_eq!(
            last_error(&key).map(|e| e.0),
            Some("ErrImagePull".to_string())
        );
        forget_error(&key);
        assert_eq!(
            backoff_message(&key, "r.io/x:1"),
            "Back-off pulling image \"r.io/x:1\""
        );
        assert_eq!(aggregate(&["a".into(), "b".into()]), "[a, b]");
    }
}
