//! Importing image archives into containerd's image store (namespace `k8s.io`, where
//! the CRI plugin sees them).
//!
//! containerd 1.6's CRI has no import call, so this runs `ctr images import` (Debian's
//! containerd package ships `ctr`). It reads OCI image layouts and `docker save`
//! archives. ctr 1.6 reads only plain tar, so `*.tar.gz`/`*.tgz` are streamed through
//! `gzip -dc` and `*.tar.zst` through `zstd -dc` (Debian package `zstd`; a clear error
//! names it when missing) into `ctr images import -`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::ImageError;
use crate::containerd::CRI_NAMESPACE;

/// The result of importing one archive of a directory.
#[derive(Debug)]
pub struct ImportOutcome {
    /// The archive.
    pub archive: PathBuf,
    /// Names of the images it held, or the error.
    pub result: Result<Vec<String>, ImageError>,
    /// Time the import took.
    pub elapsed: Duration,
}

/// True for the file names that are imported from the images directory: `*.tar`,
/// `*.tar.gz`, `*.tgz`, `*.tar.zst`.
pub fn is_image_archive(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    [".tar", ".tar.gz", ".tgz", ".tar.zst"]
        .iter()
        .any(|s| name.ends_with(s))
        && !name.starts_with('.')
}

/// Imports `archive` into the containerd at `socket` (`unix://` prefix allowed) with
/// `ctr images import`; returns the names of the images imported.
pub async fn import(archive: &Path, socket: &Path) -> Result<Vec<String>, ImageError> {
    let socket = socket.to_string_lossy();
    let socket = socket.strip_prefix("unix://").unwrap_or(&socket);
    if !archive.is_file() {
        return Err(ImageError::Io {
            path: archive.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such archive"),
        });
    }
    let ctr = PathBuf::from("ctr");
    let mut cmd = tokio::process::Command::new(&ctr);
    cmd.args([
        "--address",
        socket,
        "--namespace",
        CRI_NAMESPACE,
        "images",
        "import",
    ])
    .args(["--all-platforms", "--snapshotter", "overlayfs", "--"])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    // ctr 1.6 reads plain tar only: compressed archives are piped through their
    // decompressor (gzip is always on Debian; zstd is the `zstd` package).
    let mut decompressor = match decompressor_for(archive) {
        None => {
            cmd.arg(archive).stdin(std::process::Stdio::null());
            None
        }
        Some(tool) => {
            let mut d = tokio::process::Command::new(tool)
                .arg("-dc")
                .arg(archive)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|source| ImageError::Ctr {
                    binary: PathBuf::from(tool),
                    source,
                })?;
            let Some(pipe) = d.stdout.take() else {
                return Err(ImageError::Invalid(format!("{tool}: no output pipe")));
            };
            let pipe: std::process::Stdio = pipe.try_into().map_err(|source| ImageError::Ctr {
                binary: PathBuf::from(tool),
                source,
            })?;
            cmd.arg("-").stdin(pipe);
            Some((tool, d))
        }
    };
    let out = cmd.output().await.map_err(|source| ImageError::Ctr {
        binary: ctr,
        source,
    })?;
    if let Some((tool, d)) = decompressor.take() {
        let dout = d
            .wait_with_output()
            .await
            .map_err(|source| ImageError::Ctr {
                binary: PathBuf::from(tool),
                source,
            })?;
        if !dout.status.success() {
            return Err(ImageError::ImportFailed {
                archive: archive.to_path_buf(),
                code: dout.status.code(),
                stderr: format!(
                    "{tool} -dc: {}",
                    String::from_utf8_lossy(&dout.stderr).trim()
                ),
            });
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stderr = if stderr.is_empty() {
            stdout.trim().to_string()
        } else {
            stderr
        };
        return Err(ImageError::ImportFailed {
            archive: archive.to_path_buf(),
            code: out.status.code(),
            stderr,
        });
    }
    Ok(parse_ctr_output(&stdout))
}

/// The decompressor to pipe an archive through, by file name.
fn decompressor_for(archive: &Path) -> Option<&'static str> {
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.ends_with(".gz") || name.ends_with(".tgz") {
        Some("gzip")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    }
}

/// The image names in `ctr images import`'s output (`unpacking NAME (sha256:...)...done`).
fn parse_ctr_output(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("unpacking "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Imports every image archive ([`is_image_archive`]) in `dir`, in name order; a
/// missing directory imports nothing. One failing archive does not stop the others.
pub async fn import_dir(dir: &Path, socket: &Path) -> Vec<ImportOutcome> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_image_archive(p))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for archive in files {
        let t0 = Instant::now();
        let result = import(&archive, socket).await;
        let elapsed = t0.elapsed();
        match &result {
            Ok(names) => info!(archive = %archive.display(), ?names, ?elapsed, "imported images"),
            Err(e) => warn!("{e}"),
        }
        out.push(ImportOutcome {
            archive,
            result,
            elapsed,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        for ok in ["a.tar", "b.tar.gz", "c.tgz", "d.tar.zst", "/x/y/e.tar"] {
            assert!(is_image_archive(Path::new(ok)), "{ok}");
        }
        for no in [
            "a.zip",
            "b.tar.bz2",
            "tar",
            ".hidden.tar",
            "c.tar.tmp",
            "d.tar.zstd",
        ] {
            assert!(!is_image_archive(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn decompressors() {
        assert_eq!(decompressor_for(Path::new("/a/b.tar.gz")), Some("gzip"));
        assert_eq!(decompressor_for(Path::new("b.tgz")), Some("gzip"));
        assert_eq!(decompressor_for(Path::new("b.tar.zst")), Some("zstd"));
        assert_eq!(decompressor_for(Path::new("b.tar")), None);
    }

    #[test]
    fn ctr_output_names() {
        let out = "unpacking docker.io/library/busybox:1.36 (sha256:abc)...done\nunpacking rk3s.local/pause:3.10 (sha256:def)...done\n";
        assert_eq!(
            parse_ctr_output(out),
            ["docker.io/library/busybox:1.36", "rk3s.local/pause:3.10"]
        );
        assert!(parse_ctr_output("").is_empty());
    }

    #[tokio::test]
    async fn missing_archive_and_dir() {
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let r = import(&d.path().join("none.tar"), Path::new("/nonexistent.sock")).await;
        assert!(matches!(r, Err(ImageError::Io { .. })));
        assert!(
            import_dir(&d.path().join("missing"), Path::new("/nonexistent.sock"))
                .await
                .is_empty()
        );
    }
}
