//! The configuration file (`--config`, default `/etc/rk3s/config.yaml`): a YAML map whose
//! keys are the long flag names of the subcommand. Its values come before the command
//! line's, so flags given on the command line win (list flags add up).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/rk3s/config.yaml";
/// Default admin kubeconfig.
pub const DEFAULT_KUBECONFIG: &str = "/etc/rk3s/rk3s.yaml";

/// Returns argv with the config file's settings inserted after the subcommand.
pub fn merge_config_file(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(sub_idx) = argv.iter().position(|a| a == "server" || a == "agent") else {
        return Ok(argv);
    };
    // Only the first positional is the subcommand; `rk3s kubectl get server` must not match.
    if argv[1..sub_idx]
        .iter()
        .any(|a| !a.to_string_lossy().starts_with('-'))
    {
        return Ok(argv);
    }
    let mut explicit: Option<PathBuf> = None;
    let mut i = sub_idx + 1;
    while i < argv.len() {
        let a = argv[i].to_string_lossy().to_string();
        if a == "--config" || a == "-c" {
            explicit = argv.get(i + 1).map(PathBuf::from);
            i += 1;
        } else if let Some(v) = a.strip_prefix("--config=") {
            explicit = Some(PathBuf::from(v));
        }
        i += 1;
    }
    let path = match explicit {
        Some(p) => p,
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            if !p.exists() {
                return Ok(argv);
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let extra = config_args(&text).with_context(|| format!("config file {}", path.display()))?;
    let mut out: Vec<OsString> = argv[..=sub_idx].to_vec();
    out.extend(extra.into_iter().map(OsString::from));
    out.extend(argv[sub_idx + 1..].iter().cloned());
    Ok(out)
}

/// Turns the YAML text into `--flag=value` arguments.
pub fn config_args(text: &str) -> anyhow::Result<Vec<String>> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).context("invalid YAML")?;
    let map = match v {
        serde_yaml::Value::Null => return Ok(Vec::new()),
        serde_yaml::Value::Mapping(m) => m,
        _ => bail!("expected a map of flag names to values"),
    };
    let mut args = Vec::new();
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            bail!("keys must be flag names")
        };
        let key = key.trim_end_matches('+');
        if key == "config" {
            continue;
        }
        let scalar = |v: &serde_yaml::Value| -> anyhow::Result<String> {
            Ok(match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => bail!("value of {key} must be a string, number or boolean"),
            })
        };
        match &v {
            serde_yaml::Value::Bool(true) => args.push(format!("--{key}")),
            serde_yaml::Value::Bool(false) => {}
            serde_yaml::Value::Sequence(items) => {
                for it in items {
                    args.push(format!("--{key}={}", scalar(it)?));
                }
            }
            other => args.push(format!("--{key}={}", scalar(other)?)),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_to_args() {
        let a = config_args("https-listen-port: 7443\ntls-san:\n  - a.example\n  - 10.0.0.1\ndisable-agent: true\nwrite-kubeconfig-mode: \"0644\"\n").expect("valid");
        assert_eq!(
            a,
            vec![
                "--https-listen-port=7443",
                "--tls-san=a.example",
                "--tls-san=10.0.0.1",
                "--disable-agent",
                "--write-kubeconfig-mode=0644"
            ]
        );
        assert!(config_args("- a\n- b\n").is_err());
        assert!(config_args("").expect("empty ok").is_empty());
    }

    #[test]
    fn config_file_goes_before_cli_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "https-listen-port: 7443\n").expect("write");
        let argv: Vec<OsString> = [
            "rk3s",
            "server",
            "--config",
            f.to_str().unwrap_or_default(),
            "--https-listen-port=8443",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out = merge_config_file(argv).expect("merged");
        let s: Vec<String> = out
            .iter()
            .map(|o| o.to_string_lossy().to_string())
            .collect();
        assert_eq!(s[2], "--https-listen-port=7443");
        assert_eq!(
            s.last().map(String::as_str),
            Some("--https-listen-port=8443")
        );
    }
}
