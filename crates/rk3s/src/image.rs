//! `rk3s image`: build OCI archives from a directory, import archives into the node's
//! containerd, list the node's images (as `crictl images` prints them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rk3s_kubelet::containerd::DEFAULT_SOCKET;
use rk3s_kubelet::cri::CriClient;
use rk3s_kubelet::image::{build_oci_archive, import, parse_json_argv, ImageConfig};

/// `rk3s image` arguments.
#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Build an OCI image archive from a root filesystem directory.
    Build(BuildArgs),
    /// Import image archives (OCI or docker; .tar, .tar.gz, .tar.zst) into the node's
    /// containerd.
    Import {
        /// Archives to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// containerd socket.
        #[arg(long, env = "CONTAINER_RUNTIME_ENDPOINT", default_value = DEFAULT_SOCKET)]
        address: String,
    },
    /// List the node's images.
    #[command(alias = "list")]
    Ls {
        /// containerd (CRI) socket.
        #[arg(long, env = "CONTAINER_RUNTIME_ENDPOINT", default_value = DEFAULT_SOCKET)]
        address: String,
        /// Print image IDs only.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// Root filesystem directory (becomes the image's only layer).
    #[arg(long)]
    from: PathBuf,
    /// Image name, NAME[:TAG] (normalized as Docker does).
    #[arg(short, long)]
    tag: String,
    /// Output archive.
    #[arg(short, long)]
    output: PathBuf,
    /// Entrypoint: a JSON array, or one argument per occurrence.
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Vec<String>,
    /// Command (arguments to the entrypoint): a JSON array, or one argument per occurrence.
    #[arg(long, allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long)]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// User (uid[:gid] or name).
    #[arg(long)]
    user: Option<String>,
    /// Exposed port PORT[/tcp|udp|sctp] (repeatable).
    #[arg(long = "port")]
    ports: Vec<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long)]
    label: Vec<String>,
}

/// Runs `rk3s image ...`.
pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    // The library errors already name their causes; flatten them so `{:#}` does not
    // repeat the chain.
    run_inner(args).map_err(|e| anyhow::anyhow!("{e}"))
}

fn run_inner(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Build(b) => build(b),
        ImageCommand::Import { files, address } => runtime()?.block_on(async {
            for f in files {
                let names = import(&f, &PathBuf::from(&address)).await?;
                for n in names {
                    println!("imported {n}");
                }
            }
            Ok(())
        }),
        ImageCommand::Ls { address, quiet } => runtime()?.block_on(async {
            let cri = CriClient::connect(&address).await?;
            let images = cri.list_images(None).await?;
            print!("{}", format_images(&images, quiet));
            Ok(())
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// One argument per occurrence, or a single JSON array.
fn argv(values: Vec<String>) -> anyhow::Result<Vec<String>> {
    match values.as_slice() {
        [one] if one.trim_start().starts_with('[') => Ok(parse_json_argv(one)?),
        _ => Ok(values),
    }
}

fn build(b: BuildArgs) -> anyhow::Result<()> {
    let mut labels = BTreeMap::new();
    for l in &b.label {
        let Some((k, v)) = l.split_once('=') else {
            bail!("bad label {l:?} (want KEY=VALUE)")
        };
        labels.insert(k.to_string(), v.to_string());
    }
    let opts = ImageConfig {
        entrypoint: argv(b.entrypoint)?,
        cmd: argv(b.cmd)?,
        env: b.env,
        workdir: b.workdir,
        user: b.user,
        exposed_ports: b.ports,
        labels,
    };
    let built = build_oci_archive(&b.from, &opts, &b.tag, &b.output)?;
    println!(
        "{} {} -> {}",
        built.name,
        built.manifest_digest,
        b.output.display()
    );
    Ok(())
}

/// Sizes as `crictl` prints them: decimal units, three significant digits.
fn human_size(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = size as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

/// The `crictl images` table (columns padded to at least 20, 3 spaces apart).
fn format_images(images: &[rk3s_kubelet::cri::types::Image], quiet: bool) -> String {
    let mut sorted: Vec<_> = images.iter().collect();
    sorted.sort_by(|a, b| a.repo_tags.first().cmp(&b.repo_tags.first()));
    if quiet {
        return sorted.iter().map(|i| format!("{}\n", i.id)).collect();
    }
    let mut rows = vec![[
        "IMAGE".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "SIZE".into(),
    ]];
    for img in sorted {
        let id: String = img
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(13)
            .collect();
        let size = human_size(img.size);
        if img.repo_tags.is_empty() {
            let repo = img
                .repo_digests
                .first()
                .and_then(|d| d.split('@').next())
                .unwrap_or("<none>");
            rows.push([repo.to_string(), "<none>".into(), id.clone(), size.clone()]);
        }
        for t in &img.repo_tags {
            let (repo, tag) = match t.rfind(':') {
                Some(i) if !t[i..].contains('/') => (&t[..i], &t[i + 1..]),
                _ => (t.as_str(), "<none>"),
            };
            rows.push([repo.to_string(), tag.to_string(), id.clone(), size.clone()]);
        }
    }
    let mut widths = [0usize; 4];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len() + 3).max(20);
        }
    }
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i == 3 {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rk3s_kubelet::cri::types::Image;

    #[test]
    fn sizes_like_crictl() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(2_031_616), "2.03MB");
        assert_eq!(human_size(741_500), "742kB");
        assert_eq!(human_size(12_000_000), "12MB");
        assert_eq!(human_size(0), "0B");
    }

    #[test]
    fn table_like_crictl() {
        let images = vec![
            Image {
                id: "sha256:73bdc813e46d8d1e101d163e51536086".into(),
                repo_tags: vec!["rk3s.local/pause:3.10".into()],
                size: 2_031_616,
                ..Default::default()
            },
            Image {
                id: "sha256:aaaaaaaaaaaaaaaaaaaa".into(),
                repo_tags: vec!["docker.io/library/busybox:1.36".into()],
                size: 1000,
                ..Default::default()
            },
        ];
        let t = format_images(&images, false);
        let lines: Vec<&str> = t.lines().collect();
        // First column: 25 characters + 3 of padding; the others the minimum 20.
        assert_eq!(
            lines[0],
            format!("{:<28}{:<20}{:<20}SIZE", "IMAGE", "TAG", "IMAGE ID")
        );
        assert_eq!(
            lines[1],
            format!(
                "{:<28}{:<20}{:<20}1kB",
                "docker.io/library/busybox", "1.36", "aaaaaaaaaaaaa"
            )
        );
        assert_eq!(
            lines[2],
            format!(
                "{:<28}{:<20}{:<20}2.03MB",
                "rk3s.local/pause", "3.10", "73bdc813e46d8"
            )
        );
        assert_eq!(
            format_images(&images, true),
            "sha256:aaaaaaaaaaaaaaaaaaaa\nsha256:73bdc813e46d8d1e101d163e51536086\n"
        );
    }

    #[test]
    fn argv_forms() {
        assert_eq!(
            argv(vec!["[\"/bin/sh\",\"-c\"]".into()]).ok(),
            Some(vec!["/bin/sh".to_string(), "-c".into()])
        );
        assert_eq!(
            argv(vec!["/bin/sh".into(), "-c".into()]).ok(),
            Some(vec!["/bin/sh".to_string(), "-c".into()])
        );
        assert!(argv(vec!["[1]".into()]).is_err());
    }
}
