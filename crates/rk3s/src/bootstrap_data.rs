//! Bootstrap data: what every server on one external datastore must share, kept in the
//! datastore itself (as k3s keeps its bootstrap data under `/bootstrap/<hash>`).
//!
//! Shared files (relative to `<data-dir>/server`): the cluster CA certificate and key
//! (so each server's kubeconfig, serving and node certificates chain to one CA), the
//! service-account signing key (tokens issued by one server are accepted by all) and the
//! secrets-encryption configuration (Secrets written through one server are readable
//! through all). They are stored as one JSON object, AES-256-GCM encrypted with a key
//! derived from the server token's secret (PBKDF2-HMAC-SHA256, random salt stored
//! beside), under [`BOOTSTRAP_PREFIX`]`<12 hex of sha256(secret)>`, outside `/registry/`
//! (no API object, not in the watch cache).
//!
//! Changes after the first copy (a secrets-encryption key prepared or rotated with
//! `rk3s secrets-encrypt`, secrets.rs) go through [`update_file`]: the record is
//! rewritten with a compare-and-swap on its revision. Running servers watch the record
//! and put a new encryption configuration in effect at once (secrets.rs,
//! `ReloadingStore`; only that file is taken live); every server takes the whole record
//! when it starts again (as k3s, whose servers reconcile bootstrap data at start-up).
//!
//! Invariants: the datastore's copy wins over the local files (a server that joins, or
//! loses the race to be first, writes the stored files before its PKI is set up, so its
//! leaf certificates are re-issued by the shared CA); the first server creates the key
//! with a create-if-absent write, so two servers starting at once agree on one copy; a
//! token that does not match the stored data is an error, never a second copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use rk3s_store::{ListOptions, Store, StoreError};
use serde_json::{json, Value};

/// The datastore prefix of bootstrap data (outside `/registry/`).
pub const BOOTSTRAP_PREFIX: &str = "/bootstrap/";
/// PBKDF2 rounds of the key derivation from the token secret.
const PBKDF2_ITERATIONS: u32 = 20_000;
/// Salt length (bytes).
const SALT_LEN: usize = 16;
/// How often a server retries after losing the race to store the first copy.
const ATTEMPTS: usize = 3;

/// The shared files, relative to `<data-dir>/server`, with the mode each is written with.
pub const SHARED_FILES: [(&str, u32); 4] = [
    ("tls/server-ca.crt", 0o644),
    ("tls/server-ca.key", 0o600),
    ("tls/service.key", 0o600),
    ("cred/encryption-config.json", 0o600),
];

/// Why bootstrap data could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The datastore failed.
    #[error("bootstrap data in the datastore: {0}")]
    Store(#[from] StoreError),
    /// The stored data does not decrypt with this token.
    #[error(
        "the bootstrap data at {key} in the datastore cannot be decrypted with this server's token: \
         every server on one datastore needs the same --token"
    )]
    WrongToken {
        /// The datastore key.
        key: String,
    },
    /// The datastore holds bootstrap data of another token only.
    #[error(
        "the datastore already holds bootstrap data ({key}) for a different token: start this \
         server with the --token of the servers already using this datastore"
    )]
    OtherToken {
        /// The datastore key found.
        key: String,
    },
    /// The datastore holds bootstrap data and this server has no token.
    #[error(
        "the datastore already holds another server's bootstrap data ({key}): start this \
         server with that server's --token"
    )]
    NeedToken {
        /// The datastore key found.
        key: String,
    },
    /// The stored data is not in the expected form.
    #[error("the bootstrap data at {key} is damaged: {reason}")]
    Damaged {
        /// The datastore key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The system's random source or the cipher failed.
    #[error("bootstrap data encryption failed")]
    Crypto,
    /// The datastore holds no bootstrap data for this token.
    #[error(
        "the datastore holds no bootstrap data for this server's token ({key}): start a \
         server on it first"
    )]
    NotStored {
        /// The datastore key looked up.
        key: String,
    },
    /// The data was stored by another server meanwhile, again and again.
    #[error("could not agree on the bootstrap data in the datastore after {ATTEMPTS} attempts")]
    Contended,
}

/// What [`load`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// The stored files were written into the data dir (`changed`: some differed).
    Stored {
        /// Whether any local file was replaced or created.
        changed: bool,
    },
    /// The datastore holds no bootstrap data for this token (nor any other).
    Missing,
}

/// The datastore key of a token secret's bootstrap data.
pub fn key_for(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{BOOTSTRAP_PREFIX}{hex}")
}

/// The token secret this server uses: the `--token` given, else the one in
/// `<server_dir>/token` (a restart), else `None` (a first server that will generate one).
pub fn local_secret(server_dir: &Path, given: Option<&str>) -> Option<String> {
    if let Some(parsed) = given.and_then(|t| rk3s_pki::parse_token(t).ok()) {
        return Some(parsed.secret);
    }
    let text = std::fs::read_to_string(server_dir.join(rk3s_pki::TOKEN_FILE)).ok()?;
    rk3s_pki::parse_token(text.trim()).ok().map(|p| p.secret)
}

fn derive_key(secret: &str, salt: &[u8]) -> Result<aead::LessSafeKey, BootstrapError> {
    let mut key = [0u8; 32];
    let iterations = std::num::NonZeroU32::new(PBKDF2_ITERATIONS).ok_or(BootstrapError::Crypto)?;
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        secret.as_bytes(),
        &mut key,
    );
    let unbound =
        aead::UnboundKey::new(&aead::AES_256_GCM, &key).map_err(|_| BootstrapError::Crypto)?;
    Ok(aead::LessSafeKey::new(unbound))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Encrypts `files` (relative path -> content) with a key derived from `secret`.
pub fn seal(files: &BTreeMap<String, String>, secret: &str) -> Result<Vec<u8>, BootstrapError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; aead::NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| BootstrapError::Crypto)?;
    rng.fill(&mut nonce).map_err(|_| BootstrapError::Crypto)?;
    let key = derive_key(secret, &salt)?;
    let mut data = serde_json::to_vec(files).map_err(|_| BootstrapError::Crypto)?;
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(BOOTSTRAP_PREFIX.as_bytes()),
        &mut data,
    )
    .map_err(|_| BootstrapError::Crypto)?;
    let envelope = json!({
        "version": 1,
        "kdf": "pbkdf2-sha256",
        "iterations": PBKDF2_ITERATIONS,
        "salt": b64().encode(salt),
        "nonce": b64().encode(nonce),
        "data": b64().encode(data),
    });
    serde_json::to_vec(&envelope).map_err(|_| BootstrapError::Crypto)
}

/// Decrypts what [`seal`] produced (`key` names the datastore key in errors).
pub fn open(
    stored: &[u8],
    secret: &str,
    key: &str,
) -> Result<BTreeMap<String, String>, BootstrapError> {
    let damaged = |reason: &str| BootstrapError::Damaged {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let envelope: Value = serde_json::from_slice(stored).map_err(|_| damaged("not JSON"))?;
    let field = |name: &str| -> Result<Vec<u8>, BootstrapError> {
        let text = envelope
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| damaged(&format!("no {name}")))?;
        b64()
            .decode(text)
            .map_err(|_| damaged(&format!("{name} is not base64")))
    };
    let (salt, nonce, mut data) = (field("salt")?, field("nonce")?, field("data")?);
    let nonce: [u8; aead::NONCE_LEN] = nonce
        .as_slice()
        .try_into()
        .map_err(|_| damaged("bad nonce length"))?;
    let cipher = derive_key(secret, &salt)?;
    let plain = cipher
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(BOOTSTRAP_PREFIX.as_bytes()),
            &mut data,
        )
        .map_err(|_| BootstrapError::WrongToken {
            key: key.to_string(),
        })?;
    serde_json::from_slice(plain).map_err(|_| damaged("not a map of files"))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the shared files present under `server_dir`.
pub fn read_files(server_dir: &Path) -> Result<BTreeMap<String, String>, BootstrapError> {
    let mut files = BTreeMap::new();
    for (name, _) in SHARED_FILES {
        let path = server_dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(name.to_string(), text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    Ok(files)
}

/// Writes the known shared files of `files` under `server_dir` (atomically, private
/// modes), skipping those already equal; returns whether any was written.
pub fn write_files(
    server_dir: &Path,
    files: &BTreeMap<String, String>,
) -> Result<bool, BootstrapError> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = false;
    for (name, mode) in SHARED_FILES {
        let Some(content) = files.get(name) else {
            continue;
        };
        let path = server_dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let tmp = path.with_extension("bootstrap-tmp");
        std::fs::write(&tmp, content).map_err(io_error(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
        tracing::info!(file = %path.display(), "bootstrap data: written from the datastore");
        changed = true;
    }
    Ok(changed)
}

/// Loads this token's bootstrap data from the datastore into `server_dir`, if stored.
/// `secret` is [`local_secret`]'s answer.
pub async fn load(
    store: &dyn Store,
    server_dir: &Path,
    secret: Option<&str>,
) -> Result<Loaded, BootstrapError> {
    // What else is stored is read first: a server storing the first copy right now makes
    // its record appear between two reads, and read in this order it is then found by
    // the `get` below (in the other order it looked like another token's record).
    let others = store
        .list(
            BOOTSTRAP_PREFIX,
            ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await?;
    if let Some(secret) = secret {
        let key = key_for(secret);
        if let Some(kv) = store.get(&key).await? {
            let files = open(&kv.value, secret, &key)?;
            let changed = write_files(server_dir, &files)?;
            return Ok(Loaded::Stored { changed });
        }
    }
    match (others.items.first(), secret) {
        (Some(kv), Some(_)) => Err(BootstrapError::OtherToken {
            key: kv.key.clone(),
        }),
        (Some(kv), None) => Err(BootstrapError::NeedToken {
            key: kv.key.clone(),
        }),
        (None, _) => Ok(Loaded::Missing),
    }
}

/// Stores the shared files of `server_dir` as this token's bootstrap data, unless some
/// server stored it first; returns whether this call stored it.
pub async fn save(
    store: &dyn Store,
    server_dir: &Path,
    secret: &str,
) -> Result<bool, BootstrapError> {
    let files = read_files(server_dir)?;
    let sealed = seal(&files, secret)?;
    match store.create(&key_for(secret), sealed).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Changes one shared file (`name`, one of [`SHARED_FILES`]) in this token's bootstrap
/// data and in `server_dir`, as k3s's `secrets-encrypt` writes a new encryption config
/// to its bootstrap data: the stored copy is written into `server_dir` first, `change`
/// gets the path of the local file (now equal to the stored one) and returns the new
/// content, and the record is rewritten with a compare-and-swap on its revision (a
/// concurrent change by another server makes this start over, at most [`ATTEMPTS`]
/// times). Returns the new content. Running servers reload the encryption
/// configuration from the record (secrets.rs); all read it again when they start
/// ([`sync`]).
pub async fn update_file<E>(
    store: &dyn Store,
    server_dir: &Path,
    secret: &str,
    name: &str,
    mut change: impl FnMut(&Path) -> Result<String, E>,
) -> anyhow::Result<String>
where
    E: Into<anyhow::Error>,
{
    if !SHARED_FILES.iter().any(|(n, _)| *n == name) {
        anyhow::bail!("{name} is not a shared bootstrap file");
    }
    let key = key_for(secret);
    for _ in 0..ATTEMPTS {
        let Some(kv) = store.get(&key).await? else {
            return Err(BootstrapError::NotStored { key }.into());
        };
        let mut files = open(&kv.value, secret, &key)?;
        write_files(server_dir, &files)?;
        let content = change(&server_dir.join(name)).map_err(Into::into)?;
        files.insert(name.to_string(), content.clone());
        let sealed = seal(&files, secret)?;
        match store.update(&key, sealed, kv.mod_revision).await {
            Ok(_) => {
                write_files(server_dir, &files)?;
                tracing::info!(%key, file = name, "bootstrap data: rewritten in the datastore");
                return Ok(content);
            }
            Err(StoreError::Conflict { .. }) => {
                tracing::info!(%key, "bootstrap data changed meanwhile; reading it again");
            }
            Err(e) => return Err(BootstrapError::Store(e).into()),
        }
    }
    Err(BootstrapError::Contended.into())
}

/// Makes `server_dir` hold the cluster's shared files before and after `setup` (which
/// creates or loads the PKI and encryption config from the files and returns its result
/// and the token secret): the datastore's copy is written first when there is one;
/// otherwise `setup`'s files are stored, and if another server stored its own first,
/// that copy is written and `setup` runs again.
pub async fn sync<T, E>(
    store: &dyn Store,
    server_dir: &Path,
    given_token: Option<&str>,
    mut setup: impl FnMut() -> Result<(T, String), E>,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    for _ in 0..ATTEMPTS {
        let secret = local_secret(server_dir, given_token);
        if let Loaded::Stored { changed } = load(store, server_dir, secret.as_deref()).await? {
            if changed {
                tracing::info!(
                    "bootstrap data: the cluster's CA and keys were loaded from the datastore"
                );
            }
            return setup().map(|(t, _)| t).map_err(Into::into);
        }
        let (result, secret) = setup().map_err(Into::into)?;
        if save(store, server_dir, &secret).await? {
            tracing::info!(
                key = %key_for(&secret),
                "bootstrap data: this server's CA and keys were stored in the datastore"
            );
            return Ok(result);
        }
        tracing::info!("bootstrap data: another server stored its copy first; using that");
    }
    Err(BootstrapError::Contended.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).unwrap();
        (Arc::new(store), dir)
    }

    fn files(ca: &str) -> BTreeMap<String, String> {
        SHARED_FILES
            .iter()
            .map(|(name, _)| (name.to_string(), format!("{name}:{ca}")))
            .collect()
    }

    #[test]
    fn seal_open_round_trip_and_wrong_token() {
        let f = files("one");
        let sealed = seal(&f, "secret-a").unwrap();
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(
            !text.contains("tls/server-ca.key"),
            "plain text leaked: {text}"
        );
        assert_eq!(open(&sealed, "secret-a", "/bootstrap/x").unwrap(), f);
        let err = open(&sealed, "secret-b", "/bootstrap/x").unwrap_err();
        assert!(matches!(err, BootstrapError::WrongToken { .. }), "{err}");
        assert!(err.to_string().contains("same --token"), "{err}");
        // A second seal uses a new salt and nonce.
        assert_ne!(seal(&f, "secret-a").unwrap(), sealed);
        assert!(matches!(
            open(b"{}", "secret-a", "/bootstrap/x"),
            Err(BootstrapError::Damaged { .. })
        ));
    }

    #[test]
    fn key_depends_on_the_secret_only() {
        assert_eq!(key_for("abc"), key_for("abc"));
        assert_ne!(key_for("abc"), key_for("abd"));
        assert!(key_for("abc").starts_with("/bootstrap/"));
        assert_eq!(key_for("abc").len(), "/bootstrap/".len() + 12);
    }

    #[test]
    fn local_secret_from_flag_or_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "ab".repeat(32);
        assert_eq!(local_secret(dir.path(), None), None);
        assert_eq!(
            local_secret(dir.path(), Some(&format!("K10{hash}::server:s3cret"))).as_deref(),
            Some("s3cret")
        );
        std::fs::write(
            dir.path().join("token"),
            format!("K10{hash}::server:fromfile\n"),
        )
        .unwrap();
        assert_eq!(local_secret(dir.path(), None).as_deref(), Some("fromfile"));
        assert_eq!(
            local_secret(dir.path(), Some("given")).as_deref(),
            Some("given")
        );
    }

    #[tokio::test]
    async fn first_server_stores_others_load_and_wrong_token_fails() {
        let (store, _db) = store();
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        assert_eq!(
            load(&*store, a.path(), Some("tok")).await.unwrap(),
            Loaded::Missing
        );
        write_files(a.path(), &files("a")).unwrap();
        assert!(save(&*store, a.path(), "tok").await.unwrap());
        // A second copy is never stored.
        write_files(b.path(), &files("b")).unwrap();
        assert!(!save(&*store, b.path(), "tok").await.unwrap());
        // B loads A's files over its own.
        assert_eq!(
            load(&*store, b.path(), Some("tok")).await.unwrap(),
            Loaded::Stored { changed: true }
        );
        assert_eq!(read_files(b.path()).unwrap(), files("a"));
        assert_eq!(
            load(&*store, b.path(), Some("tok")).await.unwrap(),
            Loaded::Stored { changed: false }
        );
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(&b.path().join("tls/server-ca.key")), 0o600);
        assert_eq!(mode(&b.path().join("tls/server-ca.crt")), 0o644);
        // Another token, or none, is a clear error and writes nothing.
        let err = load(&*store, c.path(), Some("other")).await.unwrap_err();
        assert!(matches!(err, BootstrapError::OtherToken { .. }), "{err}");
        assert!(err.to_string().contains("--token"));
        let err = load(&*store, c.path(), None).await.unwrap_err();
        assert!(matches!(err, BootstrapError::NeedToken { .. }), "{err}");
        assert!(read_files(c.path()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn update_file_rewrites_the_record_with_cas_and_others_load_it() {
        let (store, _db) = store();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        const ENC: &str = "cred/encryption-config.json";
        let err = update_file(&*store, a.path(), "tok", ENC, |_| {
            Ok::<_, anyhow::Error>("x".into())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no bootstrap data"), "{err}");
        write_files(a.path(), &files("a")).unwrap();
        assert!(save(&*store, a.path(), "tok").await.unwrap());
        assert!(update_file(&*store, a.path(), "tok", "tls/other", |_| {
            Ok::<_, anyhow::Error>("x".into())
        })
        .await
        .is_err());
        // B changes the file; its first attempt loses a race against another writer
        // (which rewrites the record meanwhile), so it reads the record again.
        let mut calls = 0;
        let other = store.clone();
        let new = update_file(&*store, b.path(), "tok", ENC, |path| {
            calls += 1;
            let seen = std::fs::read_to_string(path)?;
            if calls == 1 {
                assert_eq!(seen, format!("{ENC}:a"), "the stored copy is read first");
                let other = other.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let kv = other.get(&key_for("tok")).await.unwrap().unwrap();
                        let mut f = files("a");
                        f.insert(ENC.into(), "concurrent".into());
                        let sealed = seal(&f, "tok").unwrap();
                        other
                            .update(&key_for("tok"), sealed, kv.mod_revision)
                            .await
                            .unwrap();
                    })
                })
                .join()
                .unwrap();
            }
            Ok::<_, anyhow::Error>(format!("{seen}+rotated"))
        })
        .await
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(new, "concurrent+rotated", "built on the concurrent change");
        assert_eq!(read_files(b.path()).unwrap()[ENC], new);
        // A (restarting) loads the new copy; the other files are unchanged.
        assert_eq!(
            load(&*store, a.path(), Some("tok")).await.unwrap(),
            Loaded::Stored { changed: true }
        );
        let mut want = files("a");
        want.insert(ENC.into(), new);
        assert_eq!(read_files(a.path()).unwrap(), want);
    }

    #[tokio::test]
    async fn sync_with_real_pki_gives_both_servers_one_ca_and_keys() {
        let (store, _db) = store();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut pkis = Vec::new();
        for dir in &dirs {
            let server_dir = dir.path().join("server");
            let opts = rk3s_pki::PkiOptions {
                token: Some("shared-secret".into()),
                ..rk3s_pki::PkiOptions::new(&server_dir)
            };
            let enc = server_dir.join("cred/encryption-config.json");
            let pki = sync(&*store, &server_dir, Some("shared-secret"), || {
                let pki = rk3s_pki::ensure_server_pki(&opts)?;
                rk3s_store::encrypt::EncryptionConfig::load_or_create(&enc)?;
                let secret = pki.token_secret.clone();
                Ok::<_, anyhow::Error>((pki, secret))
            })
            .await
            .unwrap();
            pkis.push(pki);
        }
        assert_eq!(pkis[0].ca_cert_pem, pkis[1].ca_cert_pem);
        assert_eq!(pkis[0].sa_key_pem, pkis[1].sa_key_pem);
        assert_eq!(pkis[0].sa_pub_pem, pkis[1].sa_pub_pem);
        assert_eq!(pkis[0].token, pkis[1].token);
        let enc = |d: &tempfile::TempDir| {
            std::fs::read_to_string(d.path().join("server/cred/encryption-config.json")).unwrap()
        };
        assert_eq!(enc(&dirs[0]), enc(&dirs[1]));
        // The second server's serving certificate is its own, issued by the shared CA.
        assert_ne!(pkis[0].serving_key_pem, pkis[1].serving_key_pem);
    }

    #[tokio::test]
    async fn a_server_that_set_up_alone_first_adopts_the_stored_copy() {
        let (store, _db) = store();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let opts = |d: &tempfile::TempDir| rk3s_pki::PkiOptions {
            token: Some("s".into()),
            ..rk3s_pki::PkiOptions::new(d.path())
        };
        // B already has its own CA (say it lost the race to store it).
        let own = rk3s_pki::ensure_server_pki(&opts(&b)).unwrap();
        let setup_a = || {
            let p = rk3s_pki::ensure_server_pki(&opts(&a))?;
            let s = p.token_secret.clone();
            Ok::<_, rk3s_pki::PkiError>((p, s))
        };
        let first = sync(&*store, a.path(), Some("s"), setup_a).await.unwrap();
        let setup_b = || {
            let p = rk3s_pki::ensure_server_pki(&opts(&b))?;
            let s = p.token_secret.clone();
            Ok::<_, rk3s_pki::PkiError>((p, s))
        };
        let joined = sync(&*store, b.path(), Some("s"), setup_b).await.unwrap();
        assert_ne!(own.ca_cert_pem, first.ca_cert_pem);
        assert_eq!(joined.ca_cert_pem, first.ca_cert_pem);
        assert_eq!(
            joined.token, first.token,
            "token file follows the shared CA"
        );
        assert_ne!(joined.serving_cert_pem, own.serving_cert_pem);
    }
}
