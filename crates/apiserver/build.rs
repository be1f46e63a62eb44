//! Build facts for `/version`, as upstream's `hack/lib/version.sh` records them:
//! `RK3S_GIT_COMMIT` (`git rev-parse HEAD`), `RK3S_GIT_TREE_STATE` (`clean`/`dirty` from
//! `git status --porcelain`) and `RK3S_BUILD_EPOCH` (seconds since the epoch,
//! `SOURCE_DATE_EPOCH` if set; `/version` formats it as RFC 3339). Without git (a source tarball) the commit and tree state are empty, as upstream
//! leaves them; this script never fails the build. It reruns only when HEAD, the branch
//! it points to or the index change (or the override variables do), so ordinary builds
//! do not run git. Setting `RK3S_GIT_COMMIT` / `RK3S_GIT_TREE_STATE` overrides git.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for v in [
        "RK3S_GIT_COMMIT",
        "RK3S_GIT_TREE_STATE",
        "SOURCE_DATE_EPOCH",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));

    let git_dir = git(&dir, &["rev-parse", "--absolute-git-dir"]).map(PathBuf::from);
    if let Some(gd) = &git_dir {
        // Only existing paths: a missing one would make cargo rerun this every build.
        let common = git(&dir, &["rev-parse", "--git-common-dir"])
            .map(|c| {
                if Path::new(&c).is_absolute() {
                    PathBuf::from(c)
                } else {
                    dir.join(c)
                }
            })
            .unwrap_or_else(|| gd.clone());
        let mut watch = vec![
            gd.join("HEAD"),
            gd.join("index"),
            common.join("packed-refs"),
        ];
        if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch.push(common.join(r));
        }
        for p in watch.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }

    let commit = std::env::var("RK3S_GIT_COMMIT")
        .ok()
        .or_else(|| {
            git_dir
                .as_ref()
                .and_then(|_| git(&dir, &["rev-parse", "HEAD"]))
        })
        .unwrap_or_default();
    let tree_state = std::env::var("RK3S_GIT_TREE_STATE")
        .ok()
        .unwrap_or_else(|| {
            match git_dir
                .as_ref()
                .and_then(|_| git(&dir, &["status", "--porcelain"]))
            {
                Some(s) if s.is_empty() => "clean".to_string(),
                Some(_) => "dirty".to_string(),
                None => String::new(),
            }
        });
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=RK3S_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=RK3S_GIT_TREE_STATE={tree_state}");
    println!("cargo:rustc-env=RK3S_BUILD_EPOCH={now}");
}
