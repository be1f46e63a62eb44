//! `rk3s certificate check|rotate` (k3s's command): the certificates under the data dir
//! with their expiry, and the off-line rotation of the server's leaf certificates (backed
//! up, then issued anew by the next start — or by the running server's renewal check).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// Leaf certificates are renewed within this window (the server's default).
const WARN_WITHIN_SECS: i64 = rk3s_pki::RENEW_BEFORE_DAYS as i64 * 86_400;

/// `rk3s certificate`.
#[derive(Args, Debug)]
pub struct CertificateArgs {
    /// Folder of the node's state
    #[arg(
        long,
        short = 'd',
        value_name = "DIR",
        default_value = "/var/lib/rk3s",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: CertificateCommand,
}

#[derive(Subcommand, Debug)]
enum CertificateCommand {
    /// List every certificate under the data dir with its expiry
    Check {
        /// Output format: text or json
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "table", "json"])]
        output: String,
    },
    /// Back up and remove the server's leaf certificates so they are issued anew (restart
    /// the server afterwards; the cluster CA and the service-account key are kept)
    Rotate {
        /// Only these services' certificates (repeatable): admin, api-server
        #[arg(long = "service", short = 's', value_name = "NAME", value_parser = ["admin", "api-server"])]
        services: Vec<String>,
    },
}

/// One certificate found on disk.
#[derive(Debug, Clone)]
struct Found {
    file: PathBuf,
    cert: rk3s_pki::CertificateSummary,
}

fn collect(dir: &Path, out: &mut Vec<Found>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            // containerd's and pods' state are not ours to list.
            if matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("containerd" | "images" | "pods" | "storage" | "db")
            ) {
                continue;
            }
            collect(&path, out);
        } else if ft.is_file()
            && matches!(
                path.extension().and_then(|x| x.to_str()),
                Some("crt" | "pem")
            )
        {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match rk3s_pki::describe_certificates(&text, &path.display().to_string()) {
                Ok(certs) => out.extend(certs.into_iter().map(|cert| Found {
                    file: path.clone(),
                    cert,
                })),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "not a certificate"),
            }
        }
    }
}

/// Status of a certificate at `now`, as k3s prints it.
fn status(c: &rk3s_pki::CertificateSummary, now: i64) -> &'static str {
    if now < c.not_before {
        "NOT YET VALID"
    } else if now >= c.not_after {
        "EXPIRED"
    } else if c.not_after - now < WARN_WITHIN_SECS {
        "WARNING"
    } else {
        "OK"
    }
}

/// Time left: `364d`, `23h`, `12m`, `0s` (expired).
fn residual(secs: i64) -> String {
    if secs <= 0 {
        "0s".into()
    } else if secs >= 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else if secs >= 60 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn table(found: &[Found], data_dir: &Path, now: i64) -> String {
    let head = [
        "FILENAME",
        "SUBJECT",
        "USAGES",
        "EXPIRES",
        "RESIDUAL TIME",
        "STATUS",
    ]
    .map(String::from);
    let rows: Vec<[String; 6]> = found
        .iter()
        .map(|f| {
            let name = f
                .file
                .strip_prefix(data_dir)
                .unwrap_or(&f.file)
                .display()
                .to_string();
            [
                name,
                f.cert.common_name.clone(),
                f.cert.usages.join(","),
                rfc3339(f.cert.not_after),
                residual(f.cert.not_after - now),
                status(&f.cert, now).to_string(),
            ]
        })
        .collect();
    let mut width = [0usize; 6];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(&format!("{c:w$}   ", w = width[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The files of a service's certificate and key under `<data-dir>/server/tls`.
fn service_files(service: &str) -> &'static [&'static str] {
    match service {
        "admin" => &[rk3s_pki::ADMIN_CERT_FILE, rk3s_pki::ADMIN_KEY_FILE],
        "api-server" => &[rk3s_pki::SERVING_CERT_FILE, rk3s_pki::SERVING_KEY_FILE],
        _ => &[],
    }
}

/// Copies the TLS folder to `tls-<unix seconds>` and removes the chosen leaf files; returns
/// the backup folder and the removed files.
fn rotate(data_dir: &Path, services: &[String]) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let tls = data_dir.join("server").join(rk3s_pki::TLS_DIR);
    if !tls.join(rk3s_pki::CA_CERT_FILE).is_file() {
        bail!("no server certificates in {}", tls.display());
    }
    let mut backup = data_dir.join("server").join(format!("tls-{}", now()));
    let mut n = 1;
    while backup.exists() {
        backup = data_dir.join("server").join(format!("tls-{}-{n}", now()));
        n += 1;
    }
    std::fs::create_dir_all(&backup).with_context(|| format!("creating {}", backup.display()))?;
    std::fs::set_permissions(&backup, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("chmod {}", backup.display()))?;
    for e in std::fs::read_dir(&tls).with_context(|| format!("reading {}", tls.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), backup.join(e.file_name()))
                .with_context(|| format!("backing up {}", e.path().display()))?;
        }
    }
    let chosen: Vec<&str> = if services.is_empty() {
        ["admin", "api-server"]
            .iter()
            .flat_map(|s| service_files(s).iter().copied())
            .collect()
    } else {
        services
            .iter()
            .flat_map(|s| service_files(s).iter().copied())
            .collect()
    };
    let mut removed = Vec::new();
    for f in chosen {
        let p = tls.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(f.to_string());
        }
    }
    Ok((backup, removed))
}

/// Runs `rk3s certificate ...`.
pub fn run(args: CertificateArgs) -> anyhow::Result<()> {
    match args.command {
        CertificateCommand::Check { output } => {
            let mut found = Vec::new();
            collect(&args.data_dir.join("server"), &mut found);
            collect(&args.data_dir.join("agent"), &mut found);
            if found.is_empty() {
                bail!("no certificates under {}", args.data_dir.display());
            }
            let now = now();
            if output == "json" {
                let items: Vec<serde_json::Value> = found
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "filename": f.file.display().to_string(),
                            "subject": f.cert.common_name,
                            "organizations": f.cert.organizations,
                            "usages": f.cert.usages,
                            "notBefore": rfc3339(f.cert.not_before),
                            "expiryTime": rfc3339(f.cert.not_after),
                            "residualTime": residual(f.cert.not_after - now),
                            "status": status(&f.cert, now),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print!("{}", table(&found, &args.data_dir, now));
            }
        }
        CertificateCommand::Rotate { services } => {
            let (backup, removed) = rotate(&args.data_dir, &services)?;
            println!(
                "Certificates backed up to {}; removed {}. Restart rk3s server to issue new ones.",
                backup.display(),
                removed.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_lists_the_server_pki_and_rotate_renews_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        let pki = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(data.join("server")))
            .expect("pki");
        let mut found = Vec::new();
        collect(&data.join("server"), &mut found);
        let names: Vec<String> = found
            .iter()
            .map(|f| {
                f.file
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "client-admin.crt",
                "server-ca.crt",
                "serving-kube-apiserver.crt"
            ]
        );
        let t = table(&found, data, now());
        assert!(t.starts_with("FILENAME"), "{t}");
        assert!(t.contains("server/tls/serving-kube-apiserver.crt"), "{t}");
        assert!(t.contains("ServerAuth"), "{t}");
        assert!(t.contains("CertSign"), "{t}");
        assert_eq!(t.matches("   OK").count(), 3, "{t}");
        assert!(t.contains("364d") || t.contains("365d"), "{t}");

        let (backup, removed) = rotate(data, &["api-server".to_string()]).expect("rotate");
        assert_eq!(
            removed,
            ["serving-kube-apiserver.crt", "serving-kube-apiserver.key"]
        );
        assert!(backup.join("serving-kube-apiserver.crt").is_file());
        let again = rk3s_pki::ensure_server_pki(&rk3s_pki::PkiOptions::new(data.join("server")))
            .expect("pki");
        assert_ne!(again.serving_cert_pem, pki.serving_cert_pem, "re-issued");
        assert_eq!(again.admin_cert_pem, pki.admin_cert_pem, "not chosen: kept");
        assert_eq!(again.ca_cert_pem, pki.ca_cert_pem, "the CA is kept");
    }

    #[test]
    fn statuses_and_residual_times() {
        let c = |nb: i64, na: i64| rk3s_pki::CertificateSummary {
            common_name: "x".into(),
            organizations: vec![],
            usages: vec![],
            not_before: nb,
            not_after: na,
            is_ca: false,
        };
        assert_eq!(status(&c(0, 1000 * 86_400), 10), "OK");
        assert_eq!(status(&c(0, 10 * 86_400), 10), "WARNING");
        assert_eq!(status(&c(0, 5), 10), "EXPIRED");
        assert_eq!(status(&c(20, 50), 10), "NOT YET VALID");
        assert_eq!(residual(2 * 86_400 + 5), "2d");
        assert_eq!(residual(7200), "2h");
        assert_eq!(residual(59), "59s");
        assert_eq!(residual(-3), "0s");
    }
}
