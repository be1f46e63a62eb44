//! Encryption at rest of selected values (k3s `--secrets-encryption`).
//!
//! Compatible with upstream's `EncryptionConfiguration` (`apiserver.config.k8s.io/v1`)
//! with the `aesgcm` and `identity` providers. A value written through
//! [`EncryptingStore`] under one of the configured key prefixes is stored as
//! `k8s:enc:aesgcm:v1:<key name>:` followed by a random 12-byte nonce and the AES-256-GCM
//! ciphertext with its tag; the storage key is the associated data, so a value copied to
//! another key does not decrypt. Reads find the key by the name in the prefix, so every
//! configured key decrypts and the first one encrypts. Values without the prefix are
//! returned as they are when the `identity` provider is listed (data written before
//! encryption was enabled stays readable).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use futures_util::StreamExt;
use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::{Event, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream};

/// The prefix of a value encrypted by the `aesgcm` provider (followed by `<name>:`).
pub const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
/// The prefix of every value encrypted by any upstream provider.
const ENC_PREFIX: &str = "k8s:enc:";
/// The name of the key [`EncryptionConfig::load_or_create`] generates (as k3s names it).
pub const DEFAULT_KEY_NAME: &str = "aesgcmkey";
/// The store prefix of Secrets.
pub const SECRETS_PREFIX: &str = "/registry/core/secrets/";
const NONCE_LEN: usize = 12;
const API_VERSION: &str = "apiserver.config.k8s.io/v1";
const KIND: &str = "EncryptionConfiguration";

/// One AES-256-GCM key.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    /// Key name, written in the prefix of each value it encrypts (e.g. `aesgcmkey`).
    pub name: String,
    /// The 32 secret bytes.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl EncryptionKey {
    /// A new key with random secret bytes.
    pub fn generate(name: impl Into<String>) -> Result<Self, StoreError> {
        let mut secret = [0u8; 32];
        SystemRandom::new().fill(&mut secret).map_err(|_| {
            StoreError::Backend("no secure random source for an encryption key".into())
        })?;
        Ok(EncryptionKey {
            name: name.into(),
            secret,
        })
    }
}

/// Which values are encrypted and with which keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptionConfig {
    /// Store key prefixes whose values are encrypted, e.g. `/registry/core/secrets/`.
    pub resources: Vec<String>,
    /// The keys: the first encrypts, all decrypt. Empty or `identity_first`: writes stay
    /// plaintext.
    pub keys: Vec<EncryptionKey>,
    /// Values without an encryption prefix are readable (the `identity` provider is listed).
    pub identity_fallback: bool,
    /// The `identity` provider comes first: new writes are stored in plaintext while the
    /// keys still decrypt (k3s `secrets-encrypt disable`).
    pub identity_first: bool,
}

/// `apiserver.config.k8s.io/v1` `EncryptionConfiguration` as a file.
#[derive(Serialize, Deserialize)]
struct FileConfig {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<FileResources>,
}

#[derive(Serialize, Deserialize)]
struct FileResources {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<FileProvider>,
}

#[derive(Serialize, Deserialize, Default)]
struct FileProvider {
    #[serde(skip_serializing_if = "Option::is_none")]
    aesgcm: Option<FileKeys>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aescbc: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secretbox: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kms: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct FileKeys {
    #[serde(default)]
    keys: Vec<FileKey>,
}

#[derive(Serialize, Deserialize)]
struct FileKey {
    name: String,
    secret: String,
}

fn cfg_err(path: &Path, msg: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!(
        "encryption configuration {}: {msg}",
        path.display()
    ))
}

/// `secrets` → `/registry/core/secrets/`, `deployments.apps` → `/registry/apps/deployments/`,
/// `*.` → `/registry/core/`, `*.apps` → `/registry/apps/`, `*.*` → `/registry/`.
pub fn resource_to_prefix(resource: &str) -> String {
    let (res, group) = resource.split_once('.').unwrap_or((resource, ""));
    let group = if group.is_empty() { "core" } else { group };
    match (res, group) {
        ("*", "*") => "/registry/".to_string(),
        ("*", g) => format!("/registry/{g}/"),
        (r, g) => format!("/registry/{g}/{r}/"),
    }
}

/// The inverse of [`resource_to_prefix`].
pub fn prefix_to_resource(prefix: &str) -> String {
    let rest = prefix
        .trim_start_matches("/registry/")
        .trim_end_matches('/');
    let mut parts = rest.splitn(2, '/');
    let group = parts.next().unwrap_or("");
    match (group, parts.next()) {
        ("", _) => "*.*".to_string(),
        ("core", None) => "*.".to_string(),
        (g, None) => format!("*.{g}"),
        ("core", Some(r)) => r.to_string(),
        (g, Some(r)) => format!("{r}.{g}"),
    }
}

impl EncryptionConfig {
    /// A configuration encrypting Secrets with one new random key named `aesgcmkey`,
    /// identity fallback on.
    pub fn new_random() -> Result<Self, StoreError> {
        Ok(EncryptionConfig {
            resources: vec![SECRETS_PREFIX.to_string()],
            keys: vec![EncryptionKey::generate(DEFAULT_KEY_NAME)?],
            identity_fallback: true,
            identity_first: false,
        })
    }

    /// Loads `path` (see [`EncryptionConfig::load`]) or, when missing, creates it with
    /// [`EncryptionConfig::new_random`].
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        if let Some(c) = Self::load(path)? {
            return Ok(c);
        }
        let c = Self::new_random()?;
        c.save(path)?;
        Ok(c)
    }

    /// Reads an `EncryptionConfiguration` (JSON or YAML); `None` if the file does not
    /// exist. Prefixes of all `resources` entries are merged; the `aesgcm` keys of all
    /// entries are merged in order (first one encrypts). Unsupported providers (`aescbc`,
    /// `secretbox`, `kms`) are an error.
    pub fn load(path: &Path) -> Result<Option<Self>, StoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cfg_err(path, e)),
        };
        Self::parse(&text).map(Some).map_err(|m| cfg_err(path, m))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: FileConfig = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(_) => serde_yaml::from_str(text).map_err(|e| e.to_string())?,
        };
        if !file.kind.is_empty() && file.kind != KIND {
            return Err(format!("kind is {:?}, want {KIND}", file.kind));
        }
        if !file.api_version.is_empty() && file.api_version != API_VERSION {
            return Err(format!(
                "apiVersion is {:?}, want {API_VERSION}",
                file.api_version
            ));
        }
        let mut cfg = EncryptionConfig {
            resources: Vec::new(),
            keys: Vec::new(),
            identity_fallback: false,
            identity_first: false,
        };
        for (i, entry) in file.resources.iter().enumerate() {
            for r in &entry.resources {
                let p = resource_to_prefix(r);
                if !cfg.resources.contains(&p) {
                    cfg.resources.push(p);
                }
            }
            for (j, p) in entry.providers.iter().enumerate() {
                if p.aescbc.is_some() || p.secretbox.is_some() || p.kms.is_some() {
                    return Err("only the aesgcm and identity providers are supported".into());
                }
                if p.identity.is_some() {
                    cfg.identity_fallback = true;
                    if i == 0 && j == 0 {
                        cfg.identity_first = true;
                    }
                }
                if let Some(k) = &p.aesgcm {
                    for fk in &k.keys {
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(fk.secret.trim())
                            .map_err(|e| format!("key {}: secret is not base64: {e}", fk.name))?;
                        let secret: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
                            format!(
                                "key {}: secret is {} bytes, want 32 (AES-256)",
                                fk.name,
                                raw.len()
                            )
                        })?;
                        if fk.name.is_empty() || fk.name.contains(':') {
                            return Err(format!(
                                "key name {:?} must be non-empty without ':'",
                                fk.name
                            ));
                        }
                        if !cfg.keys.iter().any(|k| k.name == fk.name) {
                            cfg.keys.push(EncryptionKey {
                                name: fk.name.clone(),
                                secret,
                            });
                        }
                    }
                }
            }
        }
        Ok(cfg)
    }

    /// The configuration as an upstream `EncryptionConfiguration` JSON document.
    pub fn to_file_json(&self) -> Result<String, StoreError> {
        let keys = FileProvider {
            aesgcm: Some(FileKeys {
                keys: self
                    .keys
                    .iter()
                    .map(|k| FileKey {
                        name: k.name.clone(),
                        secret: base64::engine::general_purpose::STANDARD.encode(k.secret),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        let identity = FileProvider {
            identity: Some(serde_json::json!({})),
            ..Default::default()
        };
        let mut providers = Vec::new();
        if self.identity_first {
            providers.push(identity);
            if !self.keys.is_empty() {
                providers.push(keys);
            }
        } else {
            if !self.keys.is_empty() {
                providers.push(keys);
            }
            if self.identity_fallback || self.keys.is_empty() {
                providers.push(identity);
            }
        }
        let file = FileConfig {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            resources: vec![FileResources {
                resources: self
                    .resources
                    .iter()
                    .map(|p| prefix_to_resource(p))
                    .collect(),
                providers,
            }],
        };
        serde_json::to_string_pretty(&file).map_err(|e| StoreError::Backend(e.to_string()))
    }

    /// Writes the configuration to `path` atomically (temporary file + rename), mode
    /// 0600, creating the parent directory.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let text = self.to_file_json()?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| cfg_err(path, e))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let write = || -> std::io::Result<()> {
            let mut f = opts.open(&tmp)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            cfg_err(path, e)
        })
    }

    /// Whether values of `key` are encrypted.
    pub fn covers(&self, key: &str) -> bool {
        self.resources.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The key new writes are encrypted with (`None`: writes stay plaintext).
    pub fn write_key(&self) -> Option<&EncryptionKey> {
        if self.identity_first {
            None
        } else {
            self.keys.first()
        }
    }
}

/// The name of the key a stored value is encrypted with: `Some(Ok(name))` for `aesgcm`,
/// `Some(Err(provider))` for another provider, `None` for plaintext.
fn classify(value: &[u8]) -> Option<Result<&str, &str>> {
    let rest = value.strip_prefix(ENC_PREFIX.as_bytes())?;
    let s = std::str::from_utf8(&rest[..rest.len().min(300)])
        .unwrap_or_else(|e| std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or(""));
    let mut parts = s.splitn(4, ':');
    let provider = parts.next().unwrap_or("");
    let _version = parts.next();
    let name = parts.next();
    match (provider, name, parts.next()) {
        ("aesgcm", Some(n), Some(_)) => Some(Ok(n)),
        (p, _, _) => Some(Err(p)),
    }
}

fn aead_key(k: &EncryptionKey) -> Result<aead::LessSafeKey, StoreError> {
    aead::UnboundKey::new(&aead::AES_256_GCM, &k.secret)
        .map(aead::LessSafeKey::new)
        .map_err(|_| StoreError::Backend(format!("encryption key {} is unusable", k.name)))
}

/// Encrypts `plain` for storage at `storage_key` with `k`.
fn seal(k: &EncryptionKey, storage_key: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    let key = aead_key(k)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| StoreError::Backend("no secure random source for a nonce".into()))?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(storage_key.as_bytes()),
        &mut buf,
    )
    .map_err(|_| StoreError::Backend(format!("encrypting value of {storage_key} failed")))?;
    let mut out =
        Vec::with_capacity(AESGCM_PREFIX.len() + k.name.len() + 1 + NONCE_LEN + buf.len());
    out.extend_from_slice(AESGCM_PREFIX.as_bytes());
    out.extend_from_slice(k.name.as_bytes());
    out.push(b':');
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts a stored value of `storage_key` (plaintext passes when `identity_fallback`).
fn open(cfg: &EncryptionConfig, storage_key: &str, stored: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let name = match classify(&stored) {
        None if cfg.identity_fallback => return Ok(stored),
        None => {
            return Err(StoreError::Backend(format!(
            "value of {storage_key} is not encrypted and the identity provider is not configured"
        )))
        }
        Some(Err(p)) => {
            return Err(StoreError::Backend(format!(
                "value of {storage_key} is encrypted with unsupported provider {p:?}"
            )))
        }
        Some(Ok(n)) => n.to_string(),
    };
    let k = cfg.keys.iter().find(|k| k.name == name).ok_or_else(|| {
        StoreError::Backend(format!(
            "value of {storage_key} is encrypted with key {name:?}, which is not in the encryption configuration"
        ))
    })?;
    let body = &stored[AESGCM_PREFIX.len() + name.len() + 1..];
    if body.len() < NONCE_LEN + aead::AES_256_GCM.tag_len() {
        return Err(StoreError::Backend(format!(
            "encrypted value of {storage_key} is truncated"
        )));
    }
    let (nonce, ct) = body.split_at(NONCE_LEN);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| {
        StoreError::Backend(format!("encrypted value of {storage_key} has a bad nonce"))
    })?;
    let mut buf = ct.to_vec();
    let plain = aead_key(k)?
        .open_in_place(nonce, aead::Aad::from(storage_key.as_bytes()), &mut buf)
        .map_err(|_| {
            StoreError::Backend(format!(
                "failed to decrypt value of {storage_key} with key {name:?}: wrong key or corrupted data"
            ))
        })?;
    let n = plain.len();
    buf.truncate(n);
    Ok(buf)
}

/// A [`Store`] that encrypts values under the configured prefixes on write and decrypts
/// them on read, list and watch, transparently.
pub struct EncryptingStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl std::fmt::Debug for EncryptingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptingStore")
            .field("config", &self.config)
            .finish()
    }
}

impl EncryptingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> Self {
        EncryptingStore {
            inner,
            config: Arc::new(config),
        }
    }

    /// The wrapped store (holds the stored, encrypted form).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// The configuration.
    pub fn config(&self) -> &EncryptionConfig {
        &self.config
    }

    fn encode(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match self.config.write_key() {
            Some(k) if self.config.covers(key) => seal(k, key, &value),
            _ => Ok(value),
        }
    }

    fn decode_kv(&self, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        if self.config.covers(&kv.key) {
            kv.value = open(&self.config, &kv.key, std::mem::take(&mut kv.value))?;
        }
        Ok(kv)
    }
}

#[async_trait::async_trait]
impl Store for EncryptingStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let stored = self.encode(key, value.clone())?;
        let mut kv = self.inner.create(key, stored).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.decode_kv(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let mut res = self.inner.list(prefix, opts).await?;
        res.items = std::mem::take(&mut res.items)
            .into_iter()
            .map(|kv| self.decode_kv(kv))
            .collect::<Result<_, _>>()?;
        Ok(res)
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        let stored = self.encode(key, value.clone())?;
        let mut kv = self.inner.update(key, stored, expected_revision).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        let kv = self.inner.delete(key, expected_revision).await?;
        self.decode_kv(kv)
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let stream = self.inner.watch(prefix, after_revision).await?;
        let this = EncryptingStore {
            inner: self.inner.clone(),
            config: self.config.clone(),
        };
        Ok(Box::pin(stream.map(move |item| {
            let ev = item?;
            Ok(Event {
                kind: ev.kind,
                kv: this.decode_kv(ev.kv)?,
                prev: ev.prev.map(|p| this.decode_kv(p)).transpose()?,
            })
        })))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}

/// How the values under the configured prefixes are stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncryptionStatus {
    /// Count of encrypted values per key name (`<provider>:?` for other providers).
    pub encrypted_by_key: BTreeMap<String, usize>,
    /// Count of plaintext values.
    pub plaintext: usize,
}

const PAGE: usize = 500;

/// Visits every stored (raw) value under `prefix`, page by page.
async fn for_each_raw(
    store: &dyn Store,
    prefix: &str,
    mut f: impl FnMut(KeyValue),
) -> Result<(), StoreError> {
    let mut start_after = None;
    let mut revision = None;
    loop {
        let res = store
            .list(
                prefix,
                ListOptions {
                    revision,
                    limit: Some(PAGE),
                    start_after: start_after.take(),
                },
            )
            .await?;
        revision = Some(res.revision);
        let last = res.items.last().map(|kv| kv.key.clone());
        res.items.into_iter().for_each(&mut f);
        match (res.more, last) {
            (true, Some(l)) => start_after = Some(l),
            _ => return Ok(()),
        }
    }
}

/// Prefixes without those nested in another (so no value is visited twice).
fn top_prefixes(cfg: &EncryptionConfig) -> Vec<&str> {
    cfg.resources
        .iter()
        .filter(|p| {
            !cfg.resources
                .iter()
                .any(|q| q != *p && p.starts_with(q.as_str()))
        })
        .map(|p| p.as_str())
        .collect()
}

/// Counts the values under the configured prefixes by the key that encrypts them
/// (`rk3s secrets-encrypt status`). `store` must be the raw store (for an
/// [`EncryptingStore`], pass [`EncryptingStore::inner`]).
pub async fn encryption_status(
    store: &dyn Store,
    config: &EncryptionConfig,
) -> Result<EncryptionStatus, StoreError> {
    let mut st = EncryptionStatus::default();
    for prefix in top_prefixes(config) {
        for_each_raw(store, prefix, |kv| match classify(&kv.value) {
            None => st.plaintext += 1,
            Some(Ok(name)) => *st.encrypted_by_key.entry(name.to_string()).or_default() += 1,
            Some(Err(p)) => *st.encrypted_by_key.entry(format!("{p}:?")).or_default() += 1,
        })
        .await?;
    }
    Ok(st)
}

/// Rewrites every value under the configured prefixes that is not already stored with
/// the current write key (k3s `secrets-encrypt reencrypt`; with `identity_first`, every
/// encrypted value is rewritten in plaintext). Returns how many values were rewritten.
/// Keys changed concurrently are re-read and retried; keys deleted meanwhile are skipped.
pub async fn reencrypt_all(store: &EncryptingStore) -> Result<usize, StoreError> {
    let want = store.config.write_key().map(|k| k.name.clone());
    let mut keys = Vec::new();
    for prefix in top_prefixes(&store.config) {
        for_each_raw(store.inner.as_ref(), prefix, |kv| {
            let current = match classify(&kv.value) {
                Some(Ok(n)) => Some(n.to_string()),
                Some(Err(_)) => Some(String::new()),
                None => None,
            };
            if current != want {
                keys.push(kv.key);
            }
        })
        .await?;
    }
    let mut rewritten = 0;
    for key in keys {
        let mut attempts = 0;
        loop {
            let Some(kv) = store.get(&key).await? else {
                break;
            };
            match store.update(&key, kv.value, kv.mod_revision).await {
                Ok(_) => {
                    rewritten += 1;
                    break;
                }
                Err(StoreError::NotFound(_)) => break,
                Err(StoreError::Conflict { .. }) if attempts < 5 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::EventKind;

    fn key(name: &str, byte: u8) -> EncryptionKey {
        EncryptionKey {
            name: name.into(),
            secret: [byte; 32],
        }
    }

    fn config(keys: Vec<EncryptionKey>) -> EncryptionConfig {
        EncryptionConfig {
            resources: vec![SECRETS_PREFIX.into()],
            keys,
            identity_fallback: true,
            identity_first: false,
        }
    }

    fn open_temp() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("state.db")).expect("open store");
        (dir, Arc::new(store))
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    const SECRET: &[u8] = br#"{"metadata":{"name":"s"},"data":{"password":"c3VwZXJzZWNyZXQ="}}"#;

    #[tokio::test]
    async fn round_trip_and_ciphertext_at_rest() {
        let (_d, raw) = open_temp();
        let enc = EncryptingStore::new(raw.clone(), config(vec![key("k1", 1)]));
        let k = "/registry/core/secrets/default/s";
        let kv = enc.create(k, SECRET.to_vec()).await.unwrap();
        assert_eq!(kv.value, SECRET);
        assert_eq!(enc.get(k).await.unwrap().unwrap().value, SECRET);
        let stored = raw.get(k).await.unwrap().unwrap().value;
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:k1:"), "{stored:?}");
        assert!(!contains(&stored, b"c3VwZXJzZWNyZXQ="));
        assert!(!contains(&stored, b"metadata"));
        // Random nonce: the same plaintext encrypts differently.
        let kv2 = enc
            .update(k, SECRET.to_vec(), kv.mod_revision)
            .await
            .unwrap();
        assert_eq!(kv2.value, SECRET);
        let stored2 = raw.get(k).await.unwrap().unwrap().value;
        assert_ne!(stored, stored2);
        let list = enc
            .list("/registry/core/secrets/", ListOptions::default())
            .await
            .unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].value, SECRET);
        let del = enc.delete(k, None).await.unwrap();
        assert_eq!(del.value, SECRET);
        assert!(enc.get(k).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn other_prefixes_untouched_and_plaintext_still_readable() {
        let (_d, raw) = open_temp();
        raw.create("/registry/core/secrets/default/old", SECRET.to_vec())
            .await
            .unwrap();
        let enc = EncryptingStore::new(raw.clone(), config(vec![key("k1", 1)]));
        let cm = "/registry/core/configmaps/default/c";
        enc.create(cm, b"{\"data\":{}}".to_vec()).await.unwrap();
        assert_eq!(raw.get(cm).await.unwrap().unwrap().value, b"{\"data\":{}}");
        // A prefix sibling (secretsX) is not covered.
        assert!(!enc.config().covers("/registry/core/secretsx/a"));
        let old = enc
            .get("/registry/core/secrets/default/old")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(old.value, SECRET);

        // Without identity, plaintext is refused.
        let mut strict = config(vec![key("k1", 1)]);
        strict.identity_fallback = false;
        let strict = EncryptingStore::new(raw.clone(), strict);
        let err = strict
            .get("/registry/core/secrets/default/old")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(m) if m.contains("not encrypted")));
    }

    #[tokio::test]
    async fn wrong_key_or_wrong_storage_key_is_a_backend_error() {
        let (_d, raw) = open_temp();
        let enc = EncryptingStore::new(raw.clone(), config(vec![key("k1", 1)]));
        let k = "/registry/core/secrets/default/s";
        enc.create(k, SECRET.to_vec()).await.unwrap();
        // Same name, other secret.
        let wrong = EncryptingStore::new(raw.clone(), config(vec![key("k1", 2)]));
        let err = wrong.get(k).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Backend(m) if m.contains("failed to decrypt")),
            "{err}"
        );
        let err = wrong
            .list("/registry/", ListOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)));
        // Unknown key name.
        let unknown = EncryptingStore::new(raw.clone(), config(vec![key("other", 1)]));
        let err = unknown.get(k).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Backend(m) if m.contains("\"k1\"")),
            "{err}"
        );
        // Ciphertext moved to another key fails authentication (key is associated data).
        let stored = raw.get(k).await.unwrap().unwrap().value;
        raw.create("/registry/core/secrets/default/moved", stored.clone())
            .await
            .unwrap();
        assert!(enc
            .get("/registry/core/secrets/default/moved")
            .await
            .is_err());
        // Truncated value.
        raw.create("/registry/core/secrets/default/t", stored[..25].to_vec())
            .await
            .unwrap();
        assert!(enc.get("/registry/core/secrets/default/t").await.is_err());
    }

    #[tokio::test]
    async fn watch_events_are_decrypted() {
        let (_d, raw) = open_temp();
        let enc = EncryptingStore::new(raw.clone(), config(vec![key("k1", 1)]));
        let mut w = enc.watch("/registry/", 0).await.unwrap();
        let k = "/registry/core/secrets/default/s";
        let kv = enc.create(k, b"v1".to_vec()).await.unwrap();
        enc.update(k, b"v2".to_vec(), kv.mod_revision)
            .await
            .unwrap();
        enc.delete(k, None).await.unwrap();
        async fn next(w: &mut WatchStream) -> Event {
            tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        }
        let e1 = next(&mut w).await;
        assert_eq!(
            (e1.kind, e1.kv.value.as_slice()),
            (EventKind::Put, &b"v1"[..])
        );
        let e2 = next(&mut w).await;
        assert_eq!(e2.kv.value, b"v2");
        assert_eq!(e2.prev.unwrap().value, b"v1");
        let e3 = next(&mut w).await;
        assert_eq!(e3.kind, EventKind::Delete);
        assert_eq!(e3.kv.value, b"v2");
    }

    #[tokio::test]
    async fn status_and_reencrypt_with_rotated_keys() {
        let (_d, raw) = open_temp();
        raw.create("/registry/core/secrets/a/plain", b"p".to_vec())
            .await
            .unwrap();
        raw.create("/registry/core/configmaps/a/c", b"c".to_vec())
            .await
            .unwrap();
        let old = EncryptingStore::new(raw.clone(), config(vec![key("old", 1)]));
        old.create("/registry/core/secrets/a/s1", b"one".to_vec())
            .await
            .unwrap();
        old.create("/registry/core/secrets/b/s2", b"two".to_vec())
            .await
            .unwrap();
        let st = encryption_status(raw.as_ref(), old.config()).await.unwrap();
        assert_eq!(st.plaintext, 1);
        assert_eq!(
            st.encrypted_by_key,
            BTreeMap::from([("old".to_string(), 2)])
        );

        // Rotate: the new key first, the old one still decrypts.
        let rotated = EncryptingStore::new(raw.clone(), config(vec![key("new", 9), key("old", 1)]));
        assert_eq!(
            rotated
                .get("/registry/core/secrets/a/s1")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"one"
        );
        assert_eq!(reencrypt_all(&rotated).await.unwrap(), 3);
        let st = encryption_status(raw.as_ref(), rotated.config())
            .await
            .unwrap();
        assert_eq!(st.plaintext, 0);
        assert_eq!(
            st.encrypted_by_key,
            BTreeMap::from([("new".to_string(), 3)])
        );
        // Idempotent.
        assert_eq!(reencrypt_all(&rotated).await.unwrap(), 0);
        // The old key can now be dropped.
        let only_new = EncryptingStore::new(raw.clone(), config(vec![key("new", 9)]));
        assert_eq!(
            only_new
                .get("/registry/core/secrets/b/s2")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"two"
        );
        assert_eq!(
            only_new
                .get("/registry/core/secrets/a/plain")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"p"
        );
        assert_eq!(
            raw.get("/registry/core/configmaps/a/c")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"c"
        );

        // Disable: identity first decrypts everything back to plaintext.
        let mut off = config(vec![key("new", 9)]);
        off.identity_first = true;
        let off = EncryptingStore::new(raw.clone(), off);
        assert_eq!(reencrypt_all(&off).await.unwrap(), 3);
        let st = encryption_status(raw.as_ref(), off.config()).await.unwrap();
        assert_eq!((st.plaintext, st.encrypted_by_key.len()), (3, 0));
        assert_eq!(
            raw.get("/registry/core/secrets/a/s1")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"one"
        );
    }

    #[test]
    fn config_file_create_load_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred/encryption-config.json");
        assert!(EncryptionConfig::load(&path).unwrap().is_none());
        let created = EncryptionConfig::load_or_create(&path).unwrap();
        assert_eq!(created.keys.len(), 1);
        assert_eq!(created.keys[0].name, "aesgcmkey");
        assert_ne!(created.keys[0].secret, [0u8; 32]);
        assert_eq!(created.resources, vec![SECRETS_PREFIX.to_string()]);
        assert!(created.identity_fallback && !created.identity_first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["kind"], "EncryptionConfiguration");
        assert_eq!(doc["apiVersion"], "apiserver.config.k8s.io/v1");
        assert_eq!(
            doc["resources"][0]["resources"],
            serde_json::json!(["secrets"])
        );
        assert_eq!(
            doc["resources"][0]["providers"][0]["aesgcm"]["keys"][0]["name"],
            "aesgcmkey"
        );
        assert_eq!(
            doc["resources"][0]["providers"][1],
            serde_json::json!({"identity": {}})
        );
        // Loading again gives the same key (not a new one).
        assert_eq!(EncryptionConfig::load_or_create(&path).unwrap(), created);
        // No temporary file left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn config_yaml_upstream_format() {
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let yaml = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n      - deployments.apps\n      - '*.batch'\n    providers:\n      - identity: {{}}\n      - aesgcm:\n          keys:\n            - name: key2\n              secret: {secret}\n"
        );
        let c = EncryptionConfig::parse(&yaml).unwrap();
        assert_eq!(
            c.resources,
            vec![
                "/registry/core/secrets/",
                "/registry/apps/deployments/",
                "/registry/batch/"
            ]
        );
        assert_eq!(c.keys, vec![key("key2", 7)]);
        assert!(c.identity_first && c.identity_fallback);
        assert!(c.write_key().is_none());
        assert!(EncryptionConfig::parse("kind: Other").is_err());
        let short = yaml.replace(&secret, "AAAA");
        assert!(EncryptionConfig::parse(&short)
            .unwrap_err()
            .contains("want 32"));
        let cbc = "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: []}\n";
        assert!(EncryptionConfig::parse(cbc).is_err());
    }

    #[test]
    fn resource_prefix_mapping() {
        for (r, p) in [
            ("secrets", "/registry/core/secrets/"),
            ("deployments.apps", "/registry/apps/deployments/"),
            ("*.", "/registry/core/"),
            ("*.apps", "/registry/apps/"),
            ("*.*", "/registry/"),
        ] {
            assert_eq!(resource_to_prefix(r), p);
            assert_eq!(prefix_to_resource(p), r);
        }
    }
}
