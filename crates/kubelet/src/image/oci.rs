//! Building OCI image-layout archives from a root filesystem directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde_json::{json, Value};

use super::{ImageError, ImageRef};

/// Media type of an OCI image index.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Timestamp of every file and of the image (deterministic builds).
pub const EPOCH: &str = "1970-01-01T00:00:00Z";
/// The `PATH` an image gets when its config sets none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The runtime config of an image (the OCI config's `config` object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` as `KEY=VALUE`; a default `PATH` is added unless one is given.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
    /// `User` (`uid[:gid]` or a name).
    pub user: Option<String>,
    /// `ExposedPorts` as `PORT[/PROTO]` (tcp when no protocol).
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// What [`build_oci_archive`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Full image name (`docker.io/library/busybox:1.36`).
    pub name: String,
    /// Manifest digest (`sha256:...`).
    pub manifest_digest: String,
    /// Config digest, the image ID CRI reports (`sha256:...`).
    pub config_digest: String,
    /// Layer digest (uncompressed, so also its diff ID).
    pub layer_digest: String,
    /// Layer size in bytes.
    pub layer_size: u64,
}

/// The OCI architecture name of the machine rk3s was built for.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Parses a JSON array of strings (the exec form of `ENTRYPOINT`/`CMD`).
pub fn parse_json_argv(s: &str) -> Result<Vec<String>, ImageError> {
    serde_json::from_str(s)
        .map_err(|e| ImageError::Invalid(format!("not a JSON array of strings: {s}: {e}")))
}

/// A writer that hashes (SHA-256) and counts what passes through.
struct HashWriter<W: Write> {
    inner: W,
    ctx: Context,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.ctx.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&SHA256, data).as_ref())
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the root filesystem `rootfs` as a layer tar: entries sorted by path, every
/// mtime 0, owner 0:0 (as `tar --owner=0 --group=0`), permission bits kept; hard links
/// within the tree become tar hard links; sockets are skipped.
fn write_layer<W: Write>(rootfs: &Path, out: W) -> Result<W, ImageError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut entries = Vec::new();
    collect(rootfs, Path::new(""), &mut entries)?;
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for rel in entries {
        let full = rootfs.join(&rel);
        let md = std::fs::symlink_metadata(&full).map_err(io(&full))?;
        let ft = md.file_type();
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(md.mode() & 0o7777);
        h.set_size(0);
        let name = if ft.is_dir() {
            format!("{}/", rel.display())
        } else {
            rel.display().to_string()
        };
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, &name, std::io::empty())
                .map_err(io(&full))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full).map_err(io(&full))?;
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, &name, &target).map_err(io(&full))?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = seen.get(&(md.dev(), md.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, &name, first).map_err(io(&full))?;
                    continue;
                }
                seen.insert((md.dev(), md.ino()), rel.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            let f = File::open(&full).map_err(io(&full))?;
            b.append_data(&mut h, &name, f.take(md.len()))
                .map_err(io(&full))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            h.set_entry_type(kind);
            let dev = md.rdev();
            let _ = h.set_device_major(libc::major(dev));
            let _ = h.set_device_minor(libc::minor(dev));
            b.append_data(&mut h, &name, std::io::empty())
                .map_err(io(&full))?;
        }
    }
    b.into_inner().map_err(io(rootfs))
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImageError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io(&dir))?;
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let md = std::fs::symlink_metadata(root.join(&r)).map_err(io(&dir))?;
        out.push(r.clone());
        if md.is_dir() {
            collect(root, &r, out)?;
        }
    }
    Ok(())
}

fn ports_object(ports: &[String]) -> Result<Value, ImageError> {
    let mut m = serde_json::Map::new();
    for p in ports {
        let (num, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
        let proto = proto.to_ascii_lowercase();
        if num.parse::<u16>().map(|n| n == 0).unwrap_or(true)
            || !["tcp", "udp", "sctp"].contains(&proto.as_str())
        {
            return Err(ImageError::Invalid(format!(
                "bad port {p:?} (want PORT or PORT/tcp|udp|sctp)"
            )));
        }
        m.insert(format!("{num}/{proto}"), json!({}));
    }
    Ok(Value::Object(m))
}

/// The OCI image config JSON for a layer.
pub fn config_json(opts: &ImageConfig, diff_id: &str) -> Result<Vec<u8>, ImageError> {
    let mut env = opts.env.clone();
    for e in &env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(ImageError::Invalid(format!(
                "bad env {e:?} (want KEY=VALUE)"
            )));
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut config = serde_json::Map::new();
    if let Some(u) = &opts.user {
        config.insert("User".into(), json!(u));
    }
    if !opts.exposed_ports.is_empty() {
        config.insert("ExposedPorts".into(), ports_object(&opts.exposed_ports)?);
    }
    config.insert("Env".into(), json!(env));
    if !opts.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(opts.entrypoint));
    }
    if !opts.cmd.is_empty() {
        config.insert("Cmd".into(), json!(opts.cmd));
    }
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(ImageError::Invalid(format!(
                "workdir {w:?} must be absolute"
            )));
        }
        config.insert("WorkingDir".into(), json!(w));
    }
    if !opts.labels.is_empty() {
        config.insert("Labels".into(), json!(opts.labels));
    }
    let v = json!({
        "created": EPOCH,
        "architecture": oci_arch(),
        "os": "linux",
        "config": Value::Object(config),
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [ { "created": EPOCH, "created_by": "rk3s image build" } ],
    });
    serde_json::to_vec(&v).map_err(|e| ImageError::Invalid(e.to_string()))
}

fn append_bytes<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
    out: &Path,
) -> Result<(), ImageError> {
    let mut h = tar::Header::new_ustar();
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).map_err(io(out))
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, name: &str, out: &Path) -> Result<(), ImageError> {
    let mut h = tar::Header::new_ustar();
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    b.append_data(&mut h, name, std::io::empty())
        .map_err(io(out))
}

/// Builds an OCI image-layout archive (`oci-layout`, `index.json`, `blobs/sha256/...`)
/// at `out` holding one image: `rootfs` as its single uncompressed layer, `opts` as its
/// config, named `tag` (normalized as Docker does: `busybox:1.36` becomes
/// `docker.io/library/busybox:1.36`). The index entry carries the full name in
/// `io.containerd.image.name` and the tag in `org.opencontainers.image.ref.name`, as
/// `docker save` does, so `ctr images import` and `docker load` name it the same.
///
/// The output is deterministic: the same tree and options give the same bytes.
pub fn build_oci_archive(
    rootfs: &Path,
    opts: &ImageConfig,
    tag: &str,
    out: &Path,
) -> Result<BuiltImage, ImageError> {
    let image = ImageRef::parse(tag)?;
    if !std::fs::symlink_metadata(rootfs)
        .map_err(io(rootfs))?
        .is_dir()
    {
        return Err(ImageError::Invalid(format!(
            "{} is not a directory",
            rootfs.display()
        )));
    }
    // The layer goes to a temporary file next to the output, hashed on the way.
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(".layer.tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = build_with_tmp(rootfs, opts, &image, out, &tmp);
    let _ = std::fs::remove_file(&tmp);
    result
}

fn build_with_tmp(
    rootfs: &Path,
    opts: &ImageConfig,
    image: &ImageRef,
    out: &Path,
    tmp: &Path,
) -> Result<BuiltImage, ImageError> {
    let f = File::create(tmp).map_err(io(tmp))?;
    let hw = HashWriter {
        inner: BufWriter::new(f),
        ctx: Context::new(&SHA256),
        n: 0,
    };
    let mut hw = write_layer(rootfs, hw)?;
    hw.flush().map_err(io(tmp))?;
    let layer_digest = format!("sha256:{}", hex(hw.ctx.finish().as_ref()));
    let layer_size = hw.n;
    drop(hw.inner);

    let config = config_json(opts, &layer_digest)?;
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [ { "mediaType": MEDIA_LAYER_TAR, "digest": layer_digest, "size": layer_size } ],
    }))
    .map_err(|e| ImageError::Invalid(e.to_string()))?;
    let manifest_digest = sha256_digest(&manifest);
    let name = image.to_string();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [ {
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": image.tag,
            },
            "platform": { "architecture": oci_arch(), "os": "linux" },
        } ],
    }))
    .map_err(|e| ImageError::Invalid(e.to_string()))?;

    let f = File::create(out).map_err(io(out))?;
    let mut b = tar::Builder::new(BufWriter::new(f));
    let hexname = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    append_dir(&mut b, "blobs/", out)?;
    append_dir(&mut b, "blobs/sha256/", out)?;
    let mut blobs: Vec<(String, Option<&[u8]>)> = vec![
        (hexname(&layer_digest), None),
        (hexname(&config_digest), Some(&config)),
        (hexname(&manifest_digest), Some(&manifest)),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);
    for (path, data) in blobs {
        match data {
            Some(d) => append_bytes(&mut b, &path, d, out)?,
            None => {
                let mut h = tar::Header::new_ustar();
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(layer_size);
                let lf = File::open(tmp).map_err(io(tmp))?;
                b.append_data(&mut h, &path, lf).map_err(io(out))?;
            }
        }
    }
    append_bytes(&mut b, "index.json", &index, out)?;
    append_bytes(
        &mut b,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        out,
    )?;
    let mut w = b.into_inner().map_err(io(out))?;
    w.flush().map_err(io(out))?;
    Ok(BuiltImage {
        name,
        manifest_digest,
        config_digest,
        layer_digest,
        layer_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) {
        let ok = std::fs::create_dir_all(dir.join("bin")).is_ok()
            && std::fs::write(dir.join("bin/tool"), b"#!/bin/sh\necho hi\n").is_ok()
            && std::os::unix::fs::symlink("tool", dir.join("bin/sh")).is_ok()
            && std::fs::hard_link(dir.join("bin/tool"), dir.join("bin/tool2")).is_ok()
            && std::fs::create_dir_all(dir.join("etc")).is_ok()
            && std::fs::write(dir.join("etc/a"), b"a").is_ok();
        assert!(ok, "fixture");
    }

    fn entries(archive: &Path) -> BTreeMap<String, Vec<u8>> {
        let Ok(f) = File::open(archive) else {
            panic!("open")
        };
        let mut a = tar::Archive::new(f);
        let mut out = BTreeMap::new();
        let Ok(es) = a.entries() else {
            panic!("entries")
        };
        for e in es {
            let Ok(mut e) = e else { panic!("entry") };
            let name = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let mut data = Vec::new();
            assert!(e.read_to_end(&mut data).is_ok());
            out.insert(name, data);
        }
        out
    }

    #[test]
    fn archive_is_an_oci_layout_with_names_and_digests() {
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let root = d.path().join("root");
        tree(&root);
        let out = d.path().join("img.tar");
        let opts = ImageConfig {
            entrypoint: vec!["/bin/tool".into()],
            cmd: vec!["x".into()],
            env: vec!["A=1".into()],
            workdir: Some("/etc".into()),
            user: Some("1000:1000".into()),
            exposed_ports: vec!["80".into(), "53/udp".into()],
            labels: [("k".to_string(), "v".to_string())].into_iter().collect(),
        };
        let built = build_oci_archive(&root, &opts, "busybox:1.36", &out);
        let Ok(built) = built else {
            panic!("{built:?}")
        };
        assert_eq!(built.name, "docker.io/library/busybox:1.36");
        let e = entries(&out);
        let names: Vec<&String> = e.keys().collect();
        assert!(names.contains(&&"oci-layout".to_string()));
        let idx: Value = serde_json::from_slice(&e["index.json"]).unwrap_or_default();
        let m = &idx["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "1.36"
        );
        assert_eq!(m["digest"], built.manifest_digest.as_str());
        // Every blob's name is its digest.
        for (name, data) in &e {
            if let Some(h) = name.strip_prefix("blobs/sha256/") {
                if !h.is_empty() {
                    assert_eq!(sha256_digest(data), format!("sha256:{h}"));
                }
            }
        }
        let cfg_name = format!(
            "blobs/sha256/{}",
            built.config_digest.trim_start_matches("sha256:")
        );
        let cfg: Value = serde_json::from_slice(&e[&cfg_name]).unwrap_or_default();
        assert_eq!(cfg["config"]["Entrypoint"], json!(["/bin/tool"]));
        assert_eq!(cfg["config"]["Env"], json!([DEFAULT_PATH, "A=1"]));
        assert_eq!(
            cfg["config"]["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}})
        );
        assert_eq!(cfg["config"]["User"], "1000:1000");
        assert_eq!(cfg["config"]["WorkingDir"], "/etc");
        assert_eq!(cfg["rootfs"]["diff_ids"][0], built.layer_digest.as_str());
        // Layer: sorted entries, owner 0, mtime 0, symlink and hard link kept.
        let layer_name = format!(
            "blobs/sha256/{}",
            built.layer_digest.trim_start_matches("sha256:")
        );
        let mut a = tar::Archive::new(e[&layer_name].as_slice());
        let Ok(es) = a.entries() else { panic!("layer") };
        let mut seen = Vec::new();
        for en in es {
            let Ok(en) = en else { panic!("entry") };
            let h = en.header();
            assert_eq!(h.mtime().ok(), Some(0));
            assert_eq!(h.uid().ok(), Some(0));
            let p = en
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            seen.push((p, h.entry_type()));
        }
        let paths: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            paths,
            ["bin/", "bin/sh", "bin/tool", "bin/tool2", "etc/", "etc/a"]
        );
        assert_eq!(seen[1].1, tar::EntryType::Symlink);
        assert_eq!(seen[3].1, tar::EntryType::Link);
        assert!(!d.path().join("img.tar.layer.tmp").exists());
    }

    #[test]
    fn json_argv() {
        assert_eq!(
            parse_json_argv(r#"["/bin/sh", "-c"]"#).ok(),
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert!(parse_json_argv("[1]").is_err());
        assert!(parse_json_argv("/bin/sh").is_err());
    }

    #[test]
    fn builds_are_deterministic() {
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let root = d.path().join("root");
        tree(&root);
        let (a, b) = (d.path().join("a.tar"), d.path().join("b.tar"));
        let o = ImageConfig::default();
        assert!(build_oci_archive(&root, &o, "rk3s.local/x:1", &a).is_ok());
        assert!(build_oci_archive(&root, &o, "rk3s.local/x:1", &b).is_ok());
        assert_eq!(std::fs::read(&a).ok(), std::fs::read(&b).ok());
    }

    #[test]
    fn bad_options_are_rejected() {
        let Ok(d) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let root = d.path().join("root");
        tree(&root);
        let out = d.path().join("a.tar");
        let bad_env = ImageConfig {
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        };
        assert!(matches!(
            build_oci_archive(&root, &bad_env, "x:1", &out),
            Err(ImageError::Invalid(_))
        ));
        let bad_port = ImageConfig {
            exposed_ports: vec!["http".into()],
            ..Default::default()
        };
        assert!(matches!(
            build_oci_archive(&root, &bad_port, "x:1", &out),
            Err(ImageError::Invalid(_))
        ));
        let bad_wd = ImageConfig {
            workdir: Some("rel".into()),
            ..Default::default()
        };
        assert!(matches!(
            build_oci_archive(&root, &bad_wd, "x:1", &out),
            Err(ImageError::Invalid(_))
        ));
        assert!(
            build_oci_archive(&root.join("missing"), &ImageConfig::default(), "x:1", &out).is_err()
        );
        assert!(matches!(
            build_oci_archive(&root, &ImageConfig::default(), "Bad Name", &out),
            Err(ImageError::Invalid(_))
        ));
    }
}
