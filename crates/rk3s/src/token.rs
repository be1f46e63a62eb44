//! `rk3s token`: bootstrap tokens (k3s's `k3s token`, kubeadm's format): Secrets
//! `kube-system/bootstrap-token-<id>` that authenticate joining agents until they expire.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Api;

/// The group every rk3s bootstrap token adds by default (k3s:
/// `system:bootstrappers:k3s:default-node-token`).
pub const DEFAULT_GROUP: &str = "system:bootstrappers:rk3s:default-node-token";

/// `rk3s token` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a bootstrap token on the server and print it (K10<CA hash>::<id>.<secret>)
    Create(CreateArgs),
    /// List bootstrap tokens
    List(CommonArgs),
    /// Delete bootstrap tokens (by id or whole token)
    Delete(DeleteArgs),
    /// Print a random bootstrap token (<id>.<secret>) without creating it
    Generate,
}

/// Flags every subcommand that talks to the server takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Admin kubeconfig of the cluster
    #[arg(long, value_name = "FILE", env = "KUBECONFIG", default_value = crate::config::DEFAULT_KUBECONFIG)]
    pub kubeconfig: PathBuf,
}

/// Flags of `rk3s token create`.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The token to create (<id>.<secret>, [a-z0-9]{6}.[a-z0-9]{16}); default: random
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,
    /// Time to live (e.g. 24h, 30m; 0 never expires)
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub ttl: String,
    /// What the token may be used for (comma-separated: signing, authentication)
    #[arg(
        long,
        value_name = "USAGES",
        value_delimiter = ',',
        default_value = "signing,authentication"
    )]
    pub usages: Vec<String>,
    /// A human-readable description
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Extra groups the token authenticates as (each system:bootstrappers:...)
    #[arg(long, value_name = "GROUPS", value_delimiter = ',', default_value = DEFAULT_GROUP)]
    pub groups: Vec<String>,
}

/// Flags of `rk3s token delete`.
#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Token ids or whole tokens
    #[arg(value_name = "TOKEN", required = true)]
    pub tokens: Vec<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 6
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_secret(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A random `<id>.<secret>`.
pub fn generate() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 22];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let s: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    Ok(format!("{}.{}", &s[..6], &s[6..]))
}

/// `24h`, `30m`, `90s`, `1h30m`, `0` as seconds.
fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num
            .parse()
            .with_context(|| format!("invalid --ttl {s:?}: expected e.g. 24h, 30m"))?;
        num.clear();
        total += n * match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => bail!("invalid --ttl {s:?}: units are h, m, s"),
        };
    }
    if !num.is_empty() {
        bail!("invalid --ttl {s:?}: a number needs a unit (h, m, s)");
    }
    Ok(total)
}

async fn client(kubeconfig: &PathBuf) -> anyhow::Result<(kube::Client, String)> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let ca_pem = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .and_then(|d| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(d).ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .context("the kubeconfig holds no certificate-authority-data (the CA hash of the token)")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("client configuration")?;
    Ok((kube::Client::try_from(cfg)?, ca_pem))
}

/// Runs a `rk3s token` subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    if let TokenCommand::Generate = cmd {
        println!("{}", generate()?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match cmd {
            TokenCommand::Create(a) => create(a).await,
            TokenCommand::List(a) => list(a).await,
            TokenCommand::Delete(a) => delete(a).await,
            TokenCommand::Generate => Ok(()),
        }
    })
}

async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let token = match a.token {
        Some(t) => t,
        None => generate()?,
    };
    let (id, secret) = token
        .split_once('.')
        .filter(|(i, s)| is_id(i) && is_secret(s))
        .with_context(|| {
            format!("invalid token {token:?}: expected [a-z0-9]{{6}}.[a-z0-9]{{16}}")
        })?;
    let ttl = parse_ttl(&a.ttl)?;
    let mut data = std::collections::BTreeMap::new();
    data.insert("token-id".to_string(), id.to_string());
    data.insert("token-secret".to_string(), secret.to_string());
    for u in &a.usages {
        match u.trim() {
            "signing" | "authentication" => {
                data.insert(format!("usage-bootstrap-{}", u.trim()), "true".into());
            }
            other => bail!("invalid usage {other:?}: expected signing or authentication"),
        }
    }
    if ttl > 0 {
        let exp = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(ttl as i64))
            .context("--ttl too large")?;
        data.insert(
            "expiration".into(),
            exp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
    }
    if let Some(d) = &a.description {
        data.insert("description".into(), d.clone());
    }
    let groups: Vec<&str> = a
        .groups
        .iter()
        .map(|g| g.trim())
        .filter(|g| !g.is_empty())
        .collect();
    for g in &groups {
        if !g.starts_with("system:bootstrappers:") {
            bail!("invalid group {g:?}: extra groups must start with system:bootstrappers:");
        }
    }
    if !groups.is_empty() {
        data.insert("auth-extra-groups".into(), groups.join(","));
    }
    let (client, ca_pem) = client(&a.common.kubeconfig).await?;
    let api: Api<Secret> = Api::namespaced(client, "kube-system");
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data),
        ..Default::default()
    };
    api.create(&PostParams::default(), &s)
        .await
        .with_context(|| format!("creating bootstrap token {id}"))?;
    println!("K10{}::{id}.{secret}", rk3s_pki::ca_cert_hash(&ca_pem));
    Ok(())
}

fn decoded(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .unwrap_or_default()
}

async fn list(a: CommonArgs) -> anyhow::Result<()> {
    let (client, _) = client(&a.kubeconfig).await?;
    let api: Api<Secret> = Api::namespaced(client, "kube-system");
    let lp = ListParams::default().fields("type=bootstrap.kubernetes.io/token");
    let secrets = api.list(&lp).await.context("listing bootstrap tokens")?;
    println!("TOKEN                     TTL         EXPIRES                USAGES                   DESCRIPTION                                                EXTRA GROUPS");
    let now = jiff::Timestamp::now();
    for s in secrets.items {
        let id = decoded(&s, "token-id");
        let secret = decoded(&s, "token-secret");
        let exp = decoded(&s, "expiration");
        let ttl = match exp.parse::<jiff::Timestamp>() {
            Ok(t) if t > now => {
                let secs = t.as_second() - now.as_second();
                format!("{}h", (secs + 1799) / 3600)
            }
            Ok(_) => "<expired>".into(),
            Err(_) => "<forever>".into(),
        };
        let mut usages: Vec<&str> = Vec::new();
        if decoded(&s, "usage-bootstrap-authentication") == "true" {
            usages.push("authentication");
        }
        if decoded(&s, "usage-bootstrap-signing") == "true" {
            usages.push("signing");
        }
        let desc = decoded(&s, "description");
        println!(
            "{:<25} {:<11} {:<22} {:<24} {:<58} {}",
            format!("{id}.{secret}"),
            ttl,
            if exp.is_empty() {
                "<never>".to_string()
            } else {
                exp
            },
            usages.join(","),
            if desc.is_empty() {
                "<none>".to_string()
            } else {
                desc
            },
            decoded(&s, "auth-extra-groups")
        );
    }
    Ok(())
}

async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    let (client, _) = client(&a.common.kubeconfig).await?;
    let api: Api<Secret> = Api::namespaced(client, "kube-system");
    for t in &a.tokens {
        // A whole token (K10...::id.secret or id.secret) or an id.
        let tail = t.rsplit("::").next().unwrap_or(t);
        let id = tail.split('.').next().unwrap_or(tail);
        if !is_id(id) {
            bail!("invalid token or id {t:?}");
        }
        api.delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
            .await
            .with_context(|| format!("deleting bootstrap token {id}"))?;
        println!("bootstrap token {id:?} deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_bootstrap_form() {
        let t = generate().expect("token");
        let (id, secret) = t.split_once('.').expect("dot");
        assert!(is_id(id) && is_secret(secret), "{t}");
        assert_ne!(generate().expect("t"), t);
        assert!(rk3s_pki::parse_token(&t)
            .expect("parse")
            .bootstrap_token_id()
            .is_some());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h").expect("ok"), 86400);
        assert_eq!(parse_ttl("1h30m").expect("ok"), 5400);
        assert_eq!(parse_ttl("0").expect("ok"), 0);
        assert!(parse_ttl("10").is_err());
        assert!(parse_ttl("1d").is_err());
    }
}
