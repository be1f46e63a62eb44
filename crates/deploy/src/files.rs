//! Which files of the manifests folder are applied, as k3s's deploy controller decides:
//! every `*.yaml`, `*.yml`, `*.json` (any case) in the folder and its subfolders
//! (symlinked folders followed), except dot-files and files with a `<file>.skip`
//! beside them; files of a disabled add-on (its name, or a subfolder's path, given to
//! `--disable`) are removed with their objects instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// k3s's `--disable` names whose manifest has another name in rk3s.
pub const K3S_ALIASES: &[(&str, &str)] = &[("traefik", "ingress")];

/// The disabled add-ons: names as given to `--disable` (k3s's names are mapped through
/// [`K3S_ALIASES`] too, so `traefik` disables `ingress.yaml`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disabled(BTreeSet<String>);

impl Disabled {
    /// The set of `names` (comma-separated lists are split, as k3s's flag) plus their
    /// aliases.
    pub fn from_names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for n in names {
            for part in n.as_ref().split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                set.insert(part.to_string());
                for (from, to) in K3S_ALIASES {
                    if *from == part {
                        set.insert((*to).to_string());
                    }
                }
            }
        }
        Disabled(set)
    }

    /// Whether `name` is disabled.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Whether `name` has a manifest extension (`.yaml`, `.yml`, `.json`, any case).
pub fn is_manifest_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|s| lower.ends_with(s))
}

/// The Addon name of a manifest path: its file name up to the first `.` (k3s's
/// `basename`).
pub fn addon_name(path: &Path) -> String {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    file.split('.').next().unwrap_or_default().to_string()
}

/// What to do with one file found in the folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileAction {
    /// Apply it.
    Apply,
    /// Delete its objects and Addon, then the file (a disabled add-on); `remove_file`
    /// is false for files reached through a symlinked folder (as k3s).
    Disable {
        /// Whether the file itself is removed.
        remove_file: bool,
    },
}

/// The files of `base` to act on, sorted by path.
pub fn scan(base: &Path, disabled: &Disabled) -> Vec<(PathBuf, FileAction)> {
    let mut found = Vec::new();
    walk(base, true, 0, &mut found);
    let skips: BTreeSet<PathBuf> = found
        .iter()
        .filter_map(|(p, _)| {
            let name = p.file_name()?.to_str()?;
            name.strip_suffix(".skip").map(|s| p.with_file_name(s))
        })
        .collect();
    let mut out = Vec::new();
    for (path, removable) in found {
        let rel = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
        if should_disable(&rel, disabled) {
            out.push((
                path,
                FileAction::Disable {
                    remove_file: removable,
                },
            ));
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') || skips.contains(&path) || !is_manifest_name(name) {
            continue;
        }
        out.push((path, FileAction::Apply));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// k3s's `shouldDisableFile`: a subfolder path (`a`, `a/b`, ...) that is disabled, or a
/// manifest whose name without its extension is.
fn should_disable(rel: &Path, disabled: &Disabled) -> bool {
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    for i in 1..parts.len() {
        if disabled.contains(&parts[..i].join("/")) {
            return true;
        }
    }
    let name = parts.last().copied().unwrap_or_default();
    if !is_manifest_name(name) {
        return false;
    }
    let stem = Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    disabled.contains(stem)
}

/// Collects the files under `dir` (`removable` false below a symlinked folder).
fn walk(dir: &Path, removable: bool, depth: usize, out: &mut Vec<(PathBuf, bool)>) {
    if depth > 16 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            walk(&path, removable, depth + 1, out);
        } else if ft.is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => walk(&path, false, depth + 1, out),
                Ok(m) if m.is_file() => out.push((path, removable)),
                _ => {}
            }
        } else if ft.is_file() {
            out.push((path, removable));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        let d = Disabled::from_names(["traefik, metrics-server", "x"]);
        assert!(d.contains("traefik") && d.contains("ingress"));
        assert!(d.contains("metrics-server") && d.contains("x"));
        assert!(!d.contains("local-storage"));
        assert_eq!(addon_name(Path::new("/m/ccm.yaml")), "ccm");
        assert_eq!(addon_name(Path::new("/m/a.b.yaml")), "a");
        assert!(is_manifest_name("A.YML") && is_manifest_name("x.json"));
        assert!(!is_manifest_name("x.yaml.skip") && !is_manifest_name("readme.md"));
    }

    #[test]
    fn scan_applies_skips_and_disables() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = dir.path();
        std::fs::create_dir_all(b.join("sub/deeper")).expect("mkdir");
        std::fs::create_dir_all(b.join("off")).expect("mkdir");
        for f in [
            "a.yaml",
            "b.yml",
            "c.JSON",
            "d.txt",
            ".hidden.yaml",
            "e.yaml",
            "e.yaml.skip",
            "ingress.yaml",
            "sub/deeper/f.yaml",
            "off/g.yaml",
        ] {
            std::fs::write(b.join(f), "").expect("write");
        }
        let d = Disabled::from_names(["traefik", "off"]);
        let got = scan(b, &d);
        let rel: Vec<(String, FileAction)> = got
            .into_iter()
            .map(|(p, a)| (p.strip_prefix(b).expect("rel").display().to_string(), a))
            .collect();
        let off = FileAction::Disable { remove_file: true };
        assert_eq!(
            rel,
            vec![
                ("a.yaml".into(), FileAction::Apply),
                ("b.yml".into(), FileAction::Apply),
                ("c.JSON".into(), FileAction::Apply),
                ("ingress.yaml".into(), off.clone()),
                ("off/g.yaml".into(), off),
                ("sub/deeper/f.yaml".into(), FileAction::Apply),
            ]
        );
    }
}
