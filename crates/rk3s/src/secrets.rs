//! `rk3s secrets-encrypt`: status and re-encryption of Secrets at rest.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

/// `rk3s secrets-encrypt` subcommands.
#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Show whether Secrets are encrypted, with which key, and how many are not
    Status(DataDir),
    /// Rewrite every Secret with the current key (run while the server is stopped)
    Reencrypt(DataDir),
}

/// The data dir flag.
#[derive(Args, Debug)]
pub struct DataDir {
    /// Folder holding state
    #[arg(long, short = 'd', value_name = "DIR", default_value = "/var/lib/rk3s")]
    pub data_dir: PathBuf,
}

/// Runs a subcommand.
pub fn run(cmd: SecretsCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async move {
        let dir = match &cmd {
            SecretsCommand::Status(d) | SecretsCommand::Reencrypt(d) => d.data_dir.clone(),
        };
        let cfg_path = crate::server::encryption_config_path(&dir);
        let cfg = rk3s_store::encrypt::EncryptionConfig::load(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let db = dir.join("server").join("db").join("state.db");
        if !db.exists() {
            anyhow::bail!("no datastore at {}", db.display());
        }
        let raw: Arc<dyn rk3s_store::Store> =
            Arc::new(rk3s_store::sqlite::SqliteStore::open(&db).context("opening the datastore")?);
        match (cmd, cfg) {
            (SecretsCommand::Status(_), None) => {
                println!("Encryption Status: Disabled, no configuration file found");
                Ok(())
            }
            (SecretsCommand::Status(_), Some(cfg)) => {
                let st = rk3s_store::encrypt::encryption_status(raw.as_ref(), &cfg)
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
                Ok(())
            }
            (SecretsCommand::Reencrypt(_), None) => anyhow::bail!(
                "secrets encryption is not configured (start the server with --secrets-encryption)"
            ),
            (SecretsCommand::Reencrypt(_), Some(cfg)) => {
                let enc = rk3s_store::encrypt::EncryptingStore::new(raw, cfg);
                let n = rk3s_store::encrypt::reencrypt_all(&enc)
                    .await
                    .context("re-encrypting")?;
                println!("re-encrypted {n} secrets");
                Ok(())
            }
        }
    })
}
