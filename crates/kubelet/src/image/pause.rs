//! The pod sandbox ("pause") image, built by rk3s itself from a static busybox.
//!
//! Its process is `busybox sleep 2147483647`: it holds the pod's namespaces and does
//! nothing else. Unlike upstream's `pause`, it does not reap zombies, which only matters
//! for pods with `shareProcessNamespace: true` whose processes leave orphans; a real
//! reaper binary can replace it later without changing the image name or the callers.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{build_oci_archive, ImageConfig, ImageError};
use crate::containerd::SANDBOX_IMAGE;

/// File name of the pause archive in the output directory.
pub const PAUSE_ARCHIVE: &str = "rk3s-pause-3.10.tar";

/// Places where Debian's busybox-static (and other distributions' static busybox) live.
const BUSYBOX_CANDIDATES: &[&str] = &[
    "/bin/busybox",
    "/usr/bin/busybox",
    "/usr/bin/busybox-static",
    "/bin/busybox-static",
];

/// True when `path` is an ELF executable without a program interpreter (statically
/// linked, so it runs in an empty root filesystem).
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = vec![0u8; 64];
    if f.read_exact(&mut head).is_err() || &head[..4] != b"\x7fELF" {
        return false;
    }
    // Only 64-bit little-endian headers are inspected; others are assumed static.
    if head[4] != 2 || head[5] != 1 {
        return true;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes([
        head[32], head[33], head[34], head[35], head[36], head[37], head[38], head[39],
    ]);
    let (phentsize, phnum) = (u16_at(&head, 54), u16_at(&head, 56));
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(t) = data.get(o..o + 4) else {
            return false;
        };
        if u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3 {
            return false; // PT_INTERP
        }
    }
    true
}

/// The first static busybox found on this machine.
pub fn find_static_busybox() -> Result<PathBuf, ImageError> {
    for c in BUSYBOX_CANDIDATES {
        let p = Path::new(c);
        if p.exists() && is_static_elf(p) {
            return Ok(p.to_path_buf());
        }
    }
    Err(ImageError::NoBusybox(format!(
        "looked at {}",
        BUSYBOX_CANDIDATES.join(", ")
    )))
}

/// Builds the sandbox image [`SANDBOX_IMAGE`] into `out_dir/`[`PAUSE_ARCHIVE`] (kept
/// when already there) and returns the archive's path.
pub fn pause_image(out_dir: &Path) -> Result<PathBuf, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let out = out_dir.join(PAUSE_ARCHIVE);
    if out.exists() {
        return Ok(out);
    }
    let busybox = find_static_busybox()?;
    let root = out_dir.join(".pause-rootfs");
    let _ = std::fs::remove_dir_all(&root);
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    std::fs::copy(&busybox, bin.join("busybox")).map_err(io(&busybox))?;
    let opts = ImageConfig {
        entrypoint: vec!["/bin/busybox".into(), "sleep".into(), "2147483647".into()],
        user: Some("65535:65535".into()),
        ..Default::default()
    };
    let tmp = out_dir.join(format!("{PAUSE_ARCHIVE}.tmp"));
    let r = build_oci_archive(&root, &opts, SANDBOX_IMAGE, &tmp);
    let _ = std::fs::remove_dir_all(&root);
    r?;
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok(out)
}

/// Makes sure the containerd behind `cri` has the sandbox image: when CRI's
/// `ImageStatus` does not know it, builds it into `out_dir` and imports it. Returns
/// true when it was imported now.
pub async fn ensure_pause_image(
    cri: &crate::cri::CriClient,
    out_dir: &Path,
) -> Result<bool, ImageError> {
    if cri.image_status(SANDBOX_IMAGE).await?.is_some() {
        return Ok(false);
    }
    let archive = pause_image(out_dir)?;
    super::import(&archive, cri.socket()).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreter_is_detected() {
        // /bin/sh on Debian is dynamically linked; a text file is not an ELF.
        if Path::new("/bin/sh").exists() && std::fs::read_link("/bin/sh").is_err() {
            assert!(!is_static_elf(Path::new("/bin/sh")));
        }
        if let Ok(d) = tempfile::tempdir() {
            let f = d.path().join("t");
            assert!(std::fs::write(&f, "#!/bin/sh\n").is_ok());
            assert!(!is_static_elf(&f));
        }
    }

    #[test]
    fn pause_archive_is_built_once() {
        if find_static_busybox().is_err() {
            eprintln!("SKIP pause_archive_is_built_once: no static busybox (apt-get install busybox-static)");
            return;
        }
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let p = pause_image(d.path());
        let Ok(p) = p else { panic!("{p:?}") };
        assert_eq!(p, d.path().join(PAUSE_ARCHIVE));
        let m1 = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
        assert!(m1.is_some());
        assert_eq!(pause_image(d.path()).ok(), Some(p.clone()));
        assert_eq!(std::fs::metadata(&p).and_then(|m| m.modified()).ok(), m1);
        assert!(!d.path().join(".pause-rootfs").exists());
    }
}
