//! Images without a registry: building OCI archives from a directory
//! ([`build_oci_archive`]), the sandbox ("pause") image rk3s builds itself
//! ([`pause_image`]), and importing archives into containerd's image store
//! ([`import`], [`import_dir`]).

mod import;
mod oci;
mod pause;
pub mod pull;

pub use import::{import, import_dir, is_image_archive, ImportOutcome};
pub use oci::{
    build_oci_archive, config_json, oci_arch, parse_json_argv, sha256_digest, BuiltImage,
    ImageConfig, DEFAULT_PATH, EPOCH, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_LAYER_TAR, MEDIA_MANIFEST,
};
pub use pause::{
    ensure_pause_image, find_static_busybox, is_static_elf, pause_image, PAUSE_ARCHIVE,
};

use std::path::PathBuf;

/// Errors of image building and importing.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Invalid input (image name, option, tree).
    #[error("{0}")]
    Invalid(String),
    /// `ctr` could not be run.
    #[error("cannot run {binary}: {source}")]
    Ctr {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `ctr images import` failed.
    #[error("importing {archive} failed (ctr exit {code:?}): {stderr}")]
    ImportFailed {
        /// Archive.
        archive: PathBuf,
        /// Exit code.
        code: Option<i32>,
        /// ctr's error output.
        stderr: String,
    },
    /// A CRI call failed.
    #[error(transparent)]
    Cri(#[from] crate::cri::CriError),
    /// No static busybox for the pause image.
    #[error("no static busybox found (install Debian's busybox-static): {0}")]
    NoBusybox(String),
}

/// A parsed, normalized image reference (Docker's rules: `busybox` is
/// `docker.io/library/busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (`docker.io`, `rk3s.local`, `localhost:5000`).
    pub domain: String,
    /// Repository path (`library/busybox`).
    pub path: String,
    /// Tag (`latest` when none was given and there is no digest).
    pub tag: String,
    /// Digest (`sha256:...`), if given.
    pub digest: Option<String>,
}

fn valid_component(c: &str) -> bool {
    // lowercase alphanumerics, separated by one '.', '_', '__' or any number of '-'.
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

impl ImageRef {
    /// Parses and normalizes `name[:tag][@digest]`.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let bad = |why: &str| ImageError::Invalid(format!("invalid image reference {s:?}: {why}"));
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hexpart = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<64 hex>"))?;
                if hexpart.len() != 64
                    || !hexpart
                        .bytes()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                {
                    return Err(bad("digest must be sha256:<64 hex>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((d, p)) if d.contains('.') || d.contains(':') || d == "localhost" => {
                (d.to_string(), p.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        if domain.is_empty()
            || domain
                .bytes()
                .any(|c| !(c.is_ascii_alphanumeric() || b".-:[]".contains(&c)))
        {
            return Err(bad("bad registry host"));
        }
        if let Some((_, port)) = domain.split_once(':') {
            if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad("bad registry port"));
            }
        }
        let path = if domain == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(bad(
                "repository must be lowercase letters, digits and separators",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => t.to_string(),
            (None, Some(_)) => String::new(),
            (None, None) => "latest".to_string(),
        };
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if !self.tag.is_empty() {
            write!(f, ":{}", self.tag)?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        match ImageRef::parse(s) {
            Ok(r) => r.to_string(),
            Err(e) => format!("ERR {e}"),
        }
    }

    #[test]
    fn names_are_normalized_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(norm("rk3s.local/pause:3.10"), "rk3s.local/pause:3.10");
        assert_eq!(norm("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(norm("localhost/x:y"), "localhost/x:y");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            norm(&format!("busybox:1@{d}")),
            format!("docker.io/library/busybox:1@{d}")
        );
        let r = ImageRef::parse("rk3s.local/pause:3.10").ok();
        assert_eq!(
            r.map(|r| (r.repository(), r.tag)),
            Some(("rk3s.local/pause".to_string(), "3.10".to_string()))
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        for s in [
            "",
            "Busybox",
            "a b",
            "busybox:",
            "busybox:-x",
            "a//b",
            "a/-b",
            "x@sha256:12",
            "a..b",
            "a:b:c/d",
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s:?} accepted");
        }
    }
}
