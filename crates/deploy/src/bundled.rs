//! The bundled add-ons (every `manifests/*.yaml` of this crate, embedded at build time)
//! and their staging into the manifests folder, as k3s's `deploy.Stage`: `%{NAME}%`
//! placeholders substituted, a file written only when its content differs from what
//! is on disk (so an edited bundled file is put back at the next start, and a changed
//! bundled add-on is rewritten), nothing written for a disabled add-on or one with a
//! `<file>.skip` beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::files::Disabled;
use crate::DeployError;

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The placeholders k3s's bundled manifests use, with what k3s substitutes:
/// `%{CLUSTER_DNS}%` (the cluster DNS Service IP), `%{CLUSTER_DOMAIN}%`,
/// `%{DEFAULT_LOCAL_STORAGE_PATH}%` (`<data-dir>/storage`),
/// `%{SYSTEM_DEFAULT_REGISTRY}%` (the registry with a trailing `/`, or empty),
/// `%{SYSTEM_DEFAULT_REGISTRY_RAW}%` (the registry as given).
pub const PLACEHOLDERS: &[&str] = &[
    "%{CLUSTER_DNS}%",
    "%{CLUSTER_DOMAIN}%",
    "%{DEFAULT_LOCAL_STORAGE_PATH}%",
    "%{SYSTEM_DEFAULT_REGISTRY}%",
    "%{SYSTEM_DEFAULT_REGISTRY_RAW}%",
];

/// The placeholder map k3s builds (see [`PLACEHOLDERS`]).
pub fn k3s_placeholders(
    cluster_dns: &str,
    cluster_domain: &str,
    default_local_storage_path: &str,
    system_default_registry: &str,
) -> BTreeMap<String, String> {
    let registry = if system_default_registry.is_empty() {
        String::new()
    } else {
        format!("{system_default_registry}/")
    };
    [
        ("%{CLUSTER_DNS}%", cluster_dns.to_string()),
        ("%{CLUSTER_DOMAIN}%", cluster_domain.to_string()),
        (
            "%{DEFAULT_LOCAL_STORAGE_PATH}%",
            default_local_storage_path.to_string(),
        ),
        ("%{SYSTEM_DEFAULT_REGISTRY}%", registry),
        (
            "%{SYSTEM_DEFAULT_REGISTRY_RAW}%",
            system_default_registry.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `content` with every key of `placeholders` (e.g. `%{CLUSTER_DNS}%`) replaced by its
/// value; unknown placeholders are left as they are (as k3s).
pub fn render(content: &str, placeholders: &BTreeMap<String, String>) -> String {
    let mut out = content.to_string();
    for (k, v) in placeholders {
        if !k.is_empty() {
            out = out.replace(k.as_str(), v);
        }
    }
    out
}

/// Writes the bundled add-ons into `dir` (k3s's `server/manifests`), creating it:
/// returns the files written (those whose content changed). Skipped: add-ons named in
/// `disabled` (file name with or without extension) and those with `<name>.skip` in
/// `dir`. Removing a disabled add-on's file and objects is the job of [`crate::run`].
pub fn stage_bundled(
    dir: &Path,
    placeholders: &BTreeMap<String, String>,
    disabled: &Disabled,
) -> Result<Vec<PathBuf>, DeployError> {
    stage(BUNDLED, dir, placeholders, disabled)
}

/// [`stage_bundled`] for any list of (file name, content).
pub fn stage(
    assets: &[(&str, &str)],
    dir: &Path,
    placeholders: &BTreeMap<String, String>,
    disabled: &Disabled,
) -> Result<Vec<PathBuf>, DeployError> {
    let io = |path: &Path, e: std::io::Error| DeployError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    for (name, content) in assets {
        let stem = name.split_once('.').map(|(s, _)| s).unwrap_or(name);
        if disabled.contains(name) || disabled.contains(stem) {
            tracing::debug!(addon = %name, "bundled add-on disabled: not staged");
            continue;
        }
        let path = dir.join(name);
        if dir.join(format!("{name}.skip")).exists() {
            tracing::info!(path = %path.display(), "skip file present: bundled add-on not staged");
            continue;
        }
        let rendered = render(content, placeholders);
        if std::fs::read(&path).ok().as_deref() == Some(rendered.as_bytes()) {
            continue;
        }
        tracing::info!(path = %path.display(), "writing manifest");
        write_private(&path, rendered.as_bytes()).map_err(|e| io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `path` atomically (temporary file + rename) with mode 0600, as k3s.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("manifest")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        k3s_placeholders("10.43.0.10", "cluster.local", "/var/lib/rk3s/storage", "")
    }

    #[test]
    fn placeholders_are_substituted_as_k3s() {
        let v = vars();
        let out = render(
            "image: %{SYSTEM_DEFAULT_REGISTRY}%rancher/x\npath: %{DEFAULT_LOCAL_STORAGE_PATH}%\ndns: %{CLUSTER_DNS}% %{CLUSTER_DNS}%\nkeep: %{UNKNOWN}%\n",
            &v,
        );
        assert_eq!(
            out,
            "image: rancher/x\npath: /var/lib/rk3s/storage\ndns: 10.43.0.10 10.43.0.10\nkeep: %{UNKNOWN}%\n"
        );
        let r = k3s_placeholders("d", "c", "p", "reg.example:5000");
        assert_eq!(r["%{SYSTEM_DEFAULT_REGISTRY}%"], "reg.example:5000/");
        assert_eq!(r["%{SYSTEM_DEFAULT_REGISTRY_RAW}%"], "reg.example:5000");
        for p in PLACEHOLDERS {
            assert!(r.contains_key(*p), "{p}");
        }
    }

    #[test]
    fn staging_writes_changed_files_and_honours_disable_and_skip() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("server/manifests");
        let assets = [
            ("ingress.yaml", "a: %{CLUSTER_DOMAIN}%\n"),
            ("local-storage.yaml", "b: 1\n"),
            ("metrics-server.yaml", "c: 1\n"),
        ];
        let disabled = Disabled::from_names(["traefik"]);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("metrics-server.yaml.skip"), "").expect("skip");
        let w = stage(&assets, &d, &vars(), &disabled).expect("stage");
        assert_eq!(w, vec![d.join("local-storage.yaml")]);
        assert!(
            !d.join("ingress.yaml").exists(),
            "traefik disables ingress.yaml"
        );
        assert!(!d.join("metrics-server.yaml").exists());
        // unchanged: nothing written; edited on disk: put back
        assert!(stage(&assets, &d, &vars(), &disabled)
            .expect("again")
            .is_empty());
        std::fs::write(d.join("local-storage.yaml"), "edited").expect("edit");
        assert_eq!(
            stage(&assets, &d, &vars(), &disabled).expect("again").len(),
            1
        );
        assert_eq!(
            std::fs::read_to_string(d.join("local-storage.yaml")).expect("read"),
            "b: 1\n"
        );
        let all = stage(&assets, &d, &vars(), &Disabled::default()).expect("all");
        assert_eq!(all, vec![d.join("ingress.yaml")]);
        assert_eq!(
            std::fs::read_to_string(d.join("ingress.yaml")).expect("read"),
            "a: cluster.local\n"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.join("ingress.yaml"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bundled_manifests_parse_after_substitution() {
        for (name, content) in BUNDLED {
            let rendered = render(content, &vars());
            assert!(
                !rendered.contains("%{"),
                "{name} uses a placeholder not in PLACEHOLDERS"
            );
            if let Err(e) = crate::parse::parse_manifest(&rendered) {
                panic!("bundled {name}: {e}");
            }
        }
    }
}
