//! `rk3s secrets-encrypt`: status, key rotation and re-encryption of Secrets at rest
//! (k3s's `secrets-encrypt` stages `prepare`, `rotate`, `reencrypt` and the one-step
//! `rotate-keys`).
//!
//! The command works on the datastore and the server's files directly. On the embedded
//! SQLite datastore the key lives in `<data-dir>/server/cred/encryption-config.json`
//! only. On a shared datastore (`--datastore-endpoint`), the configuration is part of
//! the servers' bootstrap data (bootstrap_data.rs): a change rewrites the stored record
//! (compare-and-swap) and this server's file. Every running server watches that record
//! ([`ReloadingStore`]) and uses the new configuration at once, without a restart (a
//! restart reads the record too); k3s applies a new configuration when its servers
//! restart. Old keys stay in the configuration as decryption keys, so a server that has
//! not seen the change yet never writes a value nobody can read.
//!
//! Invariants of [`ReloadingStore`]: a value is encrypted with the configuration in
//! effect when it is written; a watch delivers the raw store's events, each decrypted
//! with the configuration in effect when it is delivered (an event of a key it does not
//! know makes it read the bootstrap record again first).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use rk3s_store::encrypt::{EncryptingStore, EncryptionConfig, EncryptionKey, DEFAULT_KEY_NAME};
use rk3s_store::{Event, KeyValue, ListOptions, ListResult, Revision, Store, StoreError};

/// `rk3s secrets-encrypt` subcommands.
#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Show whether Secrets are encrypted, with which key, and how many are not
    Status(DataDir),
    /// Add a new key that decrypts but does not yet encrypt
    Prepare(DataDir),
    /// Make the key added by `prepare` the one new writes are encrypted with
    Rotate(DataDir),
    /// Rewrite every Secret with the current key
    Reencrypt(DataDir),
    /// Add a new key, make it the active one and re-encrypt every Secret with it in one
    /// step
    RotateKeys(DataDir),
}

/// Where the server's state is.
#[derive(Args, Debug)]
pub struct DataDir {
    /// Folder holding state
    #[arg(long, short = 'd', value_name = "DIR", default_value = "/var/lib/rk3s")]
    pub data_dir: PathBuf,
    /// The server's datastore, when not the embedded SQLite (as `rk3s server
    /// --datastore-endpoint`)
    #[arg(long, value_name = "ENDPOINT")]
    pub datastore_endpoint: Option<String>,
    /// TLS CA file of the datastore
    #[arg(long, value_name = "FILE")]
    pub datastore_cafile: Option<PathBuf>,
    /// TLS client certificate of the datastore
    #[arg(long, value_name = "FILE")]
    pub datastore_certfile: Option<PathBuf>,
    /// TLS client key of the datastore
    #[arg(long, value_name = "FILE")]
    pub datastore_keyfile: Option<PathBuf>,
    /// The servers' token (default: `<data-dir>/server/token`)
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

impl SecretsCommand {
    fn args(&self) -> &DataDir {
        match self {
            SecretsCommand::Status(d)
            | SecretsCommand::Prepare(d)
            | SecretsCommand::Rotate(d)
            | SecretsCommand::Reencrypt(d)
            | SecretsCommand::RotateKeys(d) => d,
        }
    }
}

/// The relative path of the encryption configuration in the bootstrap data.
const CONFIG_FILE: &str = "cred/encryption-config.json";

/// The datastore with Secrets encrypted at rest by a configuration that can change while
/// the server runs: on a shared datastore, the bootstrap record is watched and each new
/// encryption configuration in it takes effect at once (and is written to
/// `<data-dir>/server/cred/encryption-config.json`).
pub struct ReloadingStore {
    state: Arc<State>,
}

struct State {
    raw: Arc<dyn Store>,
    /// The configuration's generation (bumped at each change) and its store.
    current: RwLock<(u64, Arc<EncryptingStore>)>,
    /// Where the configuration comes from when shared: `<data-dir>/server` and the
    /// token secret.
    shared: Option<(PathBuf, String)>,
}

impl std::fmt::Debug for ReloadingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingStore")
            .field("generation", &self.state.snapshot().0)
            .finish()
    }
}

/// Pause before watching the bootstrap record again after its watch ended.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

impl ReloadingStore {
    /// Wraps `raw` with `config`; with `shared` (`<data-dir>/server` and the token
    /// secret), watches the bootstrap record for new configurations (a task that ends
    /// once the store and its watches are gone) and reads it again when a read meets a
    /// value it cannot decrypt.
    pub fn start(
        raw: Arc<dyn Store>,
        config: EncryptionConfig,
        shared: Option<(PathBuf, String)>,
    ) -> ReloadingStore {
        let watching = shared.is_some();
        let state = Arc::new(State {
            current: RwLock::new((0, Arc::new(EncryptingStore::new(raw.clone(), config)))),
            raw,
            shared,
        });
        if watching {
            tokio::spawn(watch_bootstrap(Arc::downgrade(&state)));
        }
        ReloadingStore { state }
    }

    /// The configuration in effect.
    #[cfg(test)]
    fn config(&self) -> EncryptionConfig {
        self.state.enc().config().clone()
    }

    /// Puts `config` in effect; returns whether it differs from the one in effect.
    #[cfg(test)]
    fn set_config(&self, config: EncryptionConfig) -> bool {
        self.state.set_config(config)
    }
}

impl State {
    /// After a read failed with `message` (say, a value of a key this configuration
    /// lacks): reads the bootstrap record again; returns whether the configuration
    /// changed (then the read is worth another try).
    async fn reload_for(&self, message: &str) -> bool {
        if self.shared.is_none() {
            return false;
        }
        match self.reload().await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), failed = message, "secrets encryption: bootstrap data not reloaded");
                false
            }
        }
    }

    /// A raw event decrypted with the configuration in effect.
    async fn decode(&self, raw: &Event) -> Result<Event, StoreError> {
        let enc = self.enc();
        let config = enc.config();
        Ok(Event {
            kind: raw.kind,
            kv: decode_kv(config, raw.kv.clone()).await?,
            prev: match &raw.prev {
                Some(p) => Some(decode_kv(config, p.clone()).await?),
                None => None,
            },
        })
    }

    fn snapshot(&self) -> (u64, Arc<EncryptingStore>) {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        (guard.0, guard.1.clone())
    }

    fn enc(&self) -> Arc<EncryptingStore> {
        self.snapshot().1
    }

    fn set_config(&self, config: EncryptionConfig) -> bool {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        if *guard.1.config() == config {
            return false;
        }
        let active = config.write_key().map(|k| k.name.clone());
        guard.0 += 1;
        guard.1 = Arc::new(EncryptingStore::new(self.raw.clone(), config));
        tracing::info!(
            generation = guard.0,
            active_key = active.as_deref().unwrap_or("identity"),
            "secrets encryption: new configuration in effect"
        );
        true
    }

    async fn reload(&self) -> anyhow::Result<bool> {
        let Some((server_dir, secret)) = &self.shared else {
            return Ok(false);
        };
        let key = crate::bootstrap_data::key_for(secret);
        let Some(kv) = self.raw.get(&key).await? else {
            return Ok(false);
        };
        let files = crate::bootstrap_data::open(&kv.value, secret, &key)?;
        let Some(text) = files.get(CONFIG_FILE) else {
            return Ok(false);
        };
        // EncryptionConfig reads files: parse the stored text from a file beside, put
        // it in effect, then move it into place (the file never runs ahead of the store).
        let path = server_dir.join(CONFIG_FILE);
        let incoming = path.with_extension("incoming");
        write_private(&incoming, text)?;
        let config = EncryptionConfig::load(&incoming)
            .with_context(|| format!("reading {}", incoming.display()))?
            .ok_or_else(not_configured)?;
        let changed = self.set_config(config);
        std::fs::rename(&incoming, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(changed)
    }
}

/// Watches this token's bootstrap record and reloads the configuration on each change
/// (and once at each (re)start of the watch, for changes made while not watching).
async fn watch_bootstrap(state: Weak<State>) {
    loop {
        let Some(current) = state.upgrade() else {
            return;
        };
        let Some((_, secret)) = &current.shared else {
            return;
        };
        let key = crate::bootstrap_data::key_for(secret);
        let stream = match current.raw.current_revision().await {
            Ok(rev) => {
                if let Err(e) = current.reload().await {
                    tracing::warn!(error = %format!("{e:#}"), "secrets encryption: bootstrap data not reloaded");
                }
                current.raw.watch(&key, rev).await
            }
            Err(e) => Err(e),
        };
        drop(current);
        match stream {
            Ok(mut stream) => {
                while let Some(event) = stream.next().await {
                    let Some(current) = state.upgrade() else {
                        return;
                    };
                    if let Err(e) = event {
                        tracing::debug!(error = %e, "secrets encryption: bootstrap watch ended");
                        break;
                    }
                    if let Err(e) = current.reload().await {
                        tracing::warn!(error = %format!("{e:#}"), "secrets encryption: bootstrap data not reloaded");
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "secrets encryption: bootstrap data not watched")
            }
        }
        tokio::time::sleep(REWATCH_AFTER).await;
    }
}

/// A watch of a [`ReloadingStore`]: the raw store's events, each decrypted with the
/// configuration in effect when it is delivered.
struct ReloadingWatch {
    state: Arc<State>,
    inner: rk3s_store::WatchStream,
}

/// The next event of a [`ReloadingWatch`]. An event that fails to decrypt (a value of a
/// key the configuration in effect lacks) makes the watch read the bootstrap record
/// again and, if the configuration changed, decrypt it once more.
async fn next_event(mut w: ReloadingWatch) -> Option<(Result<Event, StoreError>, ReloadingWatch)> {
    let result = match w.inner.next().await? {
        Err(e) => Err(e),
        Ok(raw) => match w.state.decode(&raw).await {
            Err(StoreError::Backend(m)) if w.state.reload_for(&m).await => {
                w.state.decode(&raw).await
            }
            other => other,
        },
    };
    Some((result, w))
}

/// One stored value as a [`Store`], so that an [`EncryptingStore`] over it decrypts
/// that value (`get`); everything else is refused.
struct OneValue(KeyValue);

fn one_value_only() -> StoreError {
    StoreError::Backend("a single decrypted value has no other operation".into())
}

#[async_trait::async_trait]
impl Store for OneValue {
    async fn create(&self, _: &str, _: Vec<u8>) -> Result<KeyValue, StoreError> {
        Err(one_value_only())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok((self.0.key == key).then(|| self.0.clone()))
    }

    async fn list(&self, _: &str, _: ListOptions) -> Result<ListResult, StoreError> {
        Err(one_value_only())
    }

    async fn update(&self, _: &str, _: Vec<u8>, _: Revision) -> Result<KeyValue, StoreError> {
        Err(one_value_only())
    }

    async fn delete(&self, _: &str, _: Option<Revision>) -> Result<KeyValue, StoreError> {
        Err(one_value_only())
    }

    async fn watch(&self, _: &str, _: Revision) -> Result<rk3s_store::WatchStream, StoreError> {
        Err(one_value_only())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.0.mod_revision)
    }

    async fn compact(&self, _: Revision) -> Result<(), StoreError> {
        Err(one_value_only())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(0)
    }
}

/// `kv` as stored, decrypted with `config` (unchanged when `config` does not cover it).
async fn decode_kv(config: &EncryptionConfig, kv: KeyValue) -> Result<KeyValue, StoreError> {
    if !config.covers(&kv.key) {
        return Ok(kv);
    }
    let key = kv.key.clone();
    EncryptingStore::new(Arc::new(OneValue(kv)), config.clone())
        .get(&key)
        .await?
        .ok_or_else(|| StoreError::Backend(format!("value of {key} vanished while decrypting")))
}

#[async_trait::async_trait]
impl Store for ReloadingStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        self.state.enc().create(key, value).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self.state.enc().get(key).await {
            Err(StoreError::Backend(m)) if self.state.reload_for(&m).await => {
                self.state.enc().get(key).await
            }
            other => other,
        }
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        match self.state.enc().list(prefix, opts.clone()).await {
            Err(StoreError::Backend(m)) if self.state.reload_for(&m).await => {
                self.state.enc().list(prefix, opts).await
            }
            other => other,
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        self.state.enc().update(key, value, expected_revision).await
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        self.state.enc().delete(key, expected_revision).await
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<rk3s_store::WatchStream, StoreError> {
        let inner = self.state.raw.watch(prefix, after_revision).await?;
        let watch = ReloadingWatch {
            state: self.state.clone(),
            inner,
        };
        Ok(Box::pin(futures_util::stream::unfold(watch, next_event)))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.state.raw.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.state.raw.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.state.raw.compacted_revision().await
    }
}

/// The datastore and where the configuration is kept.
struct Target {
    store: Arc<dyn rk3s_store::Store>,
    data_dir: PathBuf,
    /// The token secret when the configuration is shared through bootstrap data.
    shared: Option<String>,
}

impl Target {
    async fn open(args: &DataDir) -> anyhow::Result<Target> {
        let endpoint =
            crate::datastore::parse_endpoint(args.datastore_endpoint.as_deref().unwrap_or(""))?;
        let server_dir = args.data_dir.join("server");
        if let crate::datastore::DatastoreEndpoint::Sqlite(path) = &endpoint {
            let db = path
                .clone()
                .unwrap_or_else(|| crate::datastore::default_sqlite_path(&args.data_dir));
            if !db.exists() {
                anyhow::bail!("no datastore at {}", db.display());
            }
            let store =
                rk3s_store::sqlite::SqliteStore::open(&db).context("opening the datastore")?;
            return Ok(Target {
                store: Arc::new(store),
                data_dir: args.data_dir.clone(),
                shared: None,
            });
        }
        let tls = crate::datastore::DatastoreTls {
            ca_file: args.datastore_cafile.clone(),
            cert_file: args.datastore_certfile.clone(),
            key_file: args.datastore_keyfile.clone(),
        };
        let store = crate::datastore::open(&endpoint, &tls, &args.data_dir).await?;
        let secret = crate::bootstrap_data::local_secret(&server_dir, args.token.as_deref())
            .context("no token: give --token or the data dir of a server")?;
        // The stored copy is the cluster's: write it over this server's files first.
        match crate::bootstrap_data::load(&*store, &server_dir, Some(&secret)).await? {
            crate::bootstrap_data::Loaded::Stored { .. } => {}
            crate::bootstrap_data::Loaded::Missing => anyhow::bail!(
                "the datastore holds no bootstrap data for this token: start a server first"
            ),
        }
        Ok(Target {
            store,
            data_dir: args.data_dir.clone(),
            shared: Some(secret),
        })
    }

    fn config_path(&self) -> PathBuf {
        crate::server::encryption_config_path(&self.data_dir)
    }

    fn config(&self) -> anyhow::Result<Option<EncryptionConfig>> {
        let path = self.config_path();
        EncryptionConfig::load(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Changes the configuration with `change`: in the bootstrap data (compare-and-swap)
    /// and this server's file when shared, else in the file.
    async fn change(
        &self,
        change: impl Fn(EncryptionConfig) -> anyhow::Result<EncryptionConfig>,
    ) -> anyhow::Result<EncryptionConfig> {
        let apply = |path: &Path| -> anyhow::Result<String> {
            let cfg = EncryptionConfig::load(path)
                .with_context(|| format!("reading {}", path.display()))?
                .ok_or_else(not_configured)?;
            Ok(change(cfg)?.to_file_json()?)
        };
        match &self.shared {
            Some(secret) => {
                let server_dir = self.data_dir.join("server");
                crate::bootstrap_data::update_file(
                    &*self.store,
                    &server_dir,
                    secret,
                    CONFIG_FILE,
                    apply,
                )
                .await?;
            }
            None => {
                let path = self.config_path();
                let text = apply(&path)?;
                write_private(&path, &text)?;
            }
        }
        self.config()?.ok_or_else(not_configured)
    }
}

fn not_configured() -> anyhow::Error {
    anyhow::anyhow!(
        "secrets encryption is not configured (start the server with --secrets-encryption)"
    )
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// A new key named after the time (k3s: `aescbckey-<time>`; no `:`, which would end
/// the name in the stored value's prefix).
fn new_key(cfg: &EncryptionConfig) -> anyhow::Result<EncryptionKey> {
    let base = format!(
        "{DEFAULT_KEY_NAME}-{}",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    );
    let mut name = base.clone();
    let mut n = 1;
    while cfg.keys.iter().any(|k| k.name == name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    Ok(EncryptionKey::generate(name)?)
}

/// `prepare`: a new key at the end (decrypts, does not encrypt).
fn prepare(mut cfg: EncryptionConfig) -> anyhow::Result<EncryptionConfig> {
    let key = new_key(&cfg)?;
    cfg.keys.push(key);
    Ok(cfg)
}

/// `rotate`: the key added last (by `prepare`) becomes the first, the one that encrypts.
fn rotate(mut cfg: EncryptionConfig) -> anyhow::Result<EncryptionConfig> {
    if cfg.keys.len() < 2 {
        anyhow::bail!("no prepared key to rotate to: run `rk3s secrets-encrypt prepare` first");
    }
    if let Some(key) = cfg.keys.pop() {
        cfg.keys.insert(0, key);
    }
    Ok(cfg)
}

/// `rotate-keys`: a new key first; the old ones keep decrypting.
fn rotate_keys(mut cfg: EncryptionConfig) -> anyhow::Result<EncryptionConfig> {
    let key = new_key(&cfg)?;
    cfg.keys.insert(0, key);
    Ok(cfg)
}

async fn reencrypt(target: &Target, cfg: EncryptionConfig) -> anyhow::Result<()> {
    let enc = EncryptingStore::new(target.store.clone(), cfg);
    let n = rk3s_store::encrypt::reencrypt_all(&enc)
        .await
        .context("re-encrypting")?;
    println!("re-encrypted {n} secrets");
    Ok(())
}

fn restart_hint(target: &Target) {
    if target.shared.is_some() {
        println!(
            "The new configuration is stored in the datastore: the running servers use it at once"
        );
    } else {
        println!("Restart the server to use the new configuration");
    }
}

fn print_keys(cfg: &EncryptionConfig) {
    let active = cfg.write_key().map(|k| k.name.as_str());
    for key in &cfg.keys {
        let mark = if Some(key.name.as_str()) == active {
            "*"
        } else {
            " "
        };
        println!(" {mark}  AES-GCM  {}", key.name);
    }
}

/// Runs a subcommand.
pub fn run(cmd: SecretsCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async move {
        let target = Target::open(cmd.args()).await?;
        let cfg = target.config()?;
        match (cmd, cfg) {
            (SecretsCommand::Status(_), None) => {
                println!("Encryption Status: Disabled, no configuration file found");
                Ok(())
            }
            (SecretsCommand::Status(_), Some(cfg)) => {
                let st = rk3s_store::encrypt::encryption_status(target.store.as_ref(), &cfg)
                    .await
                    .context("reading secrets")?;
                let current = cfg
                    .write_key()
                    .map(|k| k.name.clone())
                    .unwrap_or_else(|| "identity".into());
                println!("Encryption Status: Enabled");
                println!("Current Rotation Stage: start");
                println!("Active Key Type: AES-GCM ({current})");
                for (k, n) in &st.encrypted_by_key {
                    println!("Secrets encrypted with {k}: {n}");
                }
                println!("Secrets not encrypted: {}", st.plaintext);
                println!();
                println!("Active  Key Type  Name");
                print_keys(&cfg);
                Ok(())
            }
            (_, None) => Err(not_configured()),
            (SecretsCommand::Prepare(_), Some(_)) => {
                let cfg = target.change(prepare).await?;
                println!("prepared key {}", cfg.keys.last().map_or("", |k| &k.name));
                restart_hint(&target);
                Ok(())
            }
            (SecretsCommand::Rotate(_), Some(_)) => {
                let cfg = target.change(rotate).await?;
                println!(
                    "rotated to key {}",
                    cfg.keys.first().map_or("", |k| &k.name)
                );
                restart_hint(&target);
                Ok(())
            }
            (SecretsCommand::Reencrypt(_), Some(cfg)) => reencrypt(&target, cfg).await,
            (SecretsCommand::RotateKeys(_), Some(_)) => {
                let cfg = target.change(rotate_keys).await?;
                println!(
                    "rotated to new key {}",
                    cfg.keys.first().map_or("", |k| &k.name)
                );
                reencrypt(&target, cfg).await?;
                restart_hint(&target);
                Ok(())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_KEY: &str = "/registry/core/secrets/default/s";

    fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = rk3s_store::sqlite::SqliteStore::open(&dir.path().join("db")).unwrap();
        (Arc::new(store), dir)
    }

    /// The key name a stored value is encrypted with.
    async fn stored_key(raw: &dyn Store, key: &str) -> String {
        let kv = raw.get(key).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&kv.value).to_string();
        let rest = text.strip_prefix("k8s:enc:aesgcm:v1:").expect("encrypted");
        rest.split(':').next().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_new_configuration_applies_to_writes_and_open_watches() {
        let (raw, _db) = sqlite();
        let first = cfg();
        let store = ReloadingStore::start(raw.clone(), first.clone(), None);
        store.create(SECRET_KEY, b"v1".to_vec()).await.unwrap();
        assert_eq!(stored_key(&*raw, SECRET_KEY).await, first.keys[0].name);
        let mut watch = store.watch("/registry/", 0).await.unwrap();
        let ev = watch.next().await.unwrap().unwrap();
        assert_eq!(ev.kv.value, b"v1");
        let rotated = rotate_keys(first.clone()).unwrap();
        assert!(store.set_config(rotated.clone()));
        assert!(
            !store.set_config(rotated.clone()),
            "same configuration: no change"
        );
        let kv = store.get(SECRET_KEY).await.unwrap().unwrap();
        store
            .update(SECRET_KEY, b"v2".to_vec(), kv.mod_revision)
            .await
            .unwrap();
        assert_eq!(stored_key(&*raw, SECRET_KEY).await, rotated.keys[0].name);
        // The watch opened before the change decrypts the new value, once.
        let ev = watch.next().await.unwrap().unwrap();
        assert_eq!(ev.kv.value, b"v2");
        assert_eq!(ev.prev.unwrap().value, b"v1");
        store.delete(SECRET_KEY, None).await.unwrap();
        let ev = watch.next().await.unwrap().unwrap();
        assert_eq!(ev.kind, rk3s_store::EventKind::Delete);
    }

    #[tokio::test]
    async fn a_watch_meeting_an_unknown_key_reads_the_bootstrap_record_again() {
        let (raw, _db) = sqlite();
        let dir = tempfile::tempdir().unwrap();
        let first = cfg();
        let rotated = rotate_keys(first.clone()).unwrap();
        // The record already holds the rotated configuration; this server still runs
        // the first one and watches nothing (no task: only the read path reloads).
        let files: std::collections::BTreeMap<String, String> =
            [(CONFIG_FILE.to_string(), rotated.to_file_json().unwrap())].into();
        crate::bootstrap_data::write_files(dir.path(), &files).unwrap();
        assert!(crate::bootstrap_data::save(&*raw, dir.path(), "tok")
            .await
            .unwrap());
        let store = ReloadingStore {
            state: Arc::new(State {
                raw: raw.clone(),
                current: RwLock::new((0, Arc::new(EncryptingStore::new(raw.clone(), first)))),
                shared: Some((dir.path().into(), "tok".into())),
            }),
        };
        let mut watch = store.watch("/registry/core/secrets/", 0).await.unwrap();
        // Another server writes with the new key.
        EncryptingStore::new(raw.clone(), rotated.clone())
            .create(SECRET_KEY, b"new".to_vec())
            .await
            .unwrap();
        let ev = watch.next().await.unwrap().unwrap();
        assert_eq!(ev.kv.value, b"new");
        assert_eq!(store.config(), rotated);
        // Reads too: a second key, after the configuration went back (say, edited by
        // hand), is read again through the record.
        EncryptingStore::new(raw.clone(), rotated.clone())
            .create("/registry/core/secrets/default/u", b"u".to_vec())
            .await
            .unwrap();
        assert!(store.set_config(cfg()));
        let kv = store.get("/registry/core/secrets/default/u").await.unwrap();
        assert_eq!(kv.unwrap().value, b"u");
        // Without a record to fall back on, the error stays.
        let alone = ReloadingStore::start(raw.clone(), cfg(), None);
        assert!(alone.get(SECRET_KEY).await.is_err());
    }

    #[tokio::test]
    async fn a_rotation_in_the_bootstrap_data_reaches_another_running_server() {
        let (raw, _db) = sqlite();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = cfg();
        let files: std::collections::BTreeMap<String, String> =
            [(CONFIG_FILE.to_string(), first.to_file_json().unwrap())].into();
        for dir in [&a, &b] {
            crate::bootstrap_data::write_files(dir.path(), &files).unwrap();
        }
        assert!(crate::bootstrap_data::save(&*raw, a.path(), "tok")
            .await
            .unwrap());
        let server_a = ReloadingStore::start(
            raw.clone(),
            first.clone(),
            Some((a.path().into(), "tok".into())),
        );
        let server_b = ReloadingStore::start(
            raw.clone(),
            first.clone(),
            Some((b.path().into(), "tok".into())),
        );
        server_a.create(SECRET_KEY, b"old".to_vec()).await.unwrap();
        let mut watch_b = server_b.watch("/registry/core/secrets/", 0).await.unwrap();
        assert_eq!(watch_b.next().await.unwrap().unwrap().kv.value, b"old");
        // `rk3s secrets-encrypt rotate-keys` on A's data dir.
        crate::bootstrap_data::update_file(&*raw, a.path(), "tok", CONFIG_FILE, |path| {
            let cfg = EncryptionConfig::load(path)?.ok_or_else(not_configured)?;
            Ok::<_, anyhow::Error>(rotate_keys(cfg)?.to_file_json()?)
        })
        .await
        .unwrap();
        let rotated = EncryptionConfig::load(&a.path().join(CONFIG_FILE))
            .unwrap()
            .unwrap();
        let new_key = rotated.keys[0].name.clone();
        // Both running servers take it without a restart.
        for server in [&server_a, &server_b] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while server.config() != rotated {
                assert!(tokio::time::Instant::now() < deadline, "not reloaded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(
            EncryptionConfig::load(&b.path().join(CONFIG_FILE))
                .unwrap()
                .unwrap(),
            rotated,
            "B's file follows"
        );
        // Written through B: the new key; read through both; B's watch sees it.
        server_b
            .create("/registry/core/secrets/default/t", b"new".to_vec())
            .await
            .unwrap();
        assert_eq!(
            stored_key(&*raw, "/registry/core/secrets/default/t").await,
            new_key
        );
        for server in [&server_a, &server_b] {
            let kv = server
                .get("/registry/core/secrets/default/t")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(kv.value, b"new");
            let kv = server.get(SECRET_KEY).await.unwrap().unwrap();
            assert_eq!(kv.value, b"old");
        }
        assert_eq!(watch_b.next().await.unwrap().unwrap().kv.value, b"new");
    }

    fn cfg() -> EncryptionConfig {
        EncryptionConfig::new_random().unwrap()
    }

    #[test]
    fn prepare_adds_a_decrypt_only_key_and_rotate_activates_it() {
        let start = cfg();
        let first = start.keys[0].name.clone();
        let prepared = prepare(start).unwrap();
        assert_eq!(prepared.keys.len(), 2);
        assert_eq!(prepared.write_key().unwrap().name, first, "not active yet");
        let new = prepared.keys[1].name.clone();
        assert!(new.starts_with("aesgcmkey-") && !new.contains(':'), "{new}");
        let rotated = rotate(prepared).unwrap();
        assert_eq!(rotated.write_key().unwrap().name, new);
        assert_eq!(rotated.keys[1].name, first, "the old key still decrypts");
        // The file form keeps the order.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.json");
        rotated.save(&path).unwrap();
        assert_eq!(EncryptionConfig::load(&path).unwrap().unwrap(), rotated);
    }

    #[test]
    fn rotate_without_prepare_fails_and_rotate_keys_adds_a_first_key() {
        let err = rotate(cfg()).unwrap_err();
        assert!(err.to_string().contains("prepare"), "{err}");
        let start = cfg();
        let old = start.keys[0].name.clone();
        let twice = rotate_keys(rotate_keys(start).unwrap()).unwrap();
        assert_eq!(twice.keys.len(), 3);
        assert_eq!(twice.keys[2].name, old);
        let names: std::collections::BTreeSet<_> = twice.keys.iter().map(|k| &k.name).collect();
        assert_eq!(names.len(), 3, "distinct names: {names:?}");
    }
}
