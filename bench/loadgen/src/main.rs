//! `rk3s-loadgen`: the load generator of the `bench/` scripts.
//!
//! It sends many HTTPS requests to an API server with a fixed number in flight, so that a
//! benchmark measures the server rather than its client, and prints what the client itself
//! achieved as one JSON line:
//! `{"count":..,"ok":..,"failed":..,"retries":..,"seconds":..,"rate":..,"p50_ms":..,"p99_ms":..,"max_ms":..}`.
//!
//! * `create`: POSTs `--count` objects rendered from a JSON `--template` to `--path`;
//! * `get`: GETs `--path` `--count` times.
//!
//! In the template and in the path, `{i}` stands for the request's index
//! (`--start + k * --stride` for the k-th request); `--name-prefix P` sets `metadata.name`
//! to `P-{i}` instead. The client certificate, key and CA come from a kubeconfig with
//! embedded data, as `rk3s server --write-kubeconfig` writes it.
//!
//! Every request that gets a 429, a 5xx or a connection error is retried up to 3 times
//! (a 409 on the retry of a create counts as created: the first attempt got through).
//! `seconds` runs from the moment all connections are open until the last answer; the
//! latencies are per object, retries included.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Attempts after the first one for a 429, a 5xx or a connection error.
const RETRIES: u32 = 3;
/// Error messages kept to print at the end (stderr).
const MAX_ERROR_SAMPLES: usize = 5;

#[derive(Parser)]
#[command(
    name = "rk3s-loadgen",
    about = "HTTPS load generator for the rk3s benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// POST --count objects rendered from --template to --path.
    Create {
        /// A JSON object; `{i}` anywhere in it is replaced by the request's index.
        #[arg(long)]
        template: std::path::PathBuf,
        /// Sets metadata.name to PREFIX-{i} (instead of a `{i}` in the template).
        #[arg(long)]
        name_prefix: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// GET --path (with `{i}` replaced by the request's index) --count times.
    Get {
        #[command(flatten)]
        common: Common,
    },
}

/// The options both modes share.
#[derive(Args)]
struct Common {
    /// kubeconfig with embedded client certificate, key and CA data.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// Overrides the kubeconfig's server URL (https://HOST:PORT).
    #[arg(long)]
    server: Option<String>,
    /// Request path; `{i}` is replaced by the request's index.
    #[arg(long)]
    path: String,
    /// Number of requests.
    #[arg(long)]
    count: u64,
    /// Index of the first request.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Index step between requests.
    #[arg(long, default_value_t = 1)]
    stride: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections for HTTP/2 (default 4); HTTP/1.1 always opens one per request in flight.
    #[arg(long)]
    connections: Option<usize>,
    /// Speak HTTP/2 (ALPN h2) and multiplex the requests over --connections.
    #[arg(long)]
    http2: bool,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

/// A text with `{i}` placeholders, split once so rendering is a join.
struct Template {
    parts: Vec<String>,
}

impl Template {
    fn new(text: &str) -> Self {
        Template {
            parts: text.split("{i}").map(str::to_string).collect(),
        }
    }

    fn render(&self, i: u64) -> String {
        self.parts.join(&i.to_string())
    }
}

/// Where and how to connect.
struct Target {
    host: String,
    port: u16,
    authority: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    http2: bool,
}

/// One open connection.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// What the workers share.
struct Shared {
    target: Target,
    method: Method,
    path: Template,
    body: Option<Template>,
    creates: bool,
    count: u64,
    start: u64,
    stride: u64,
    next: AtomicU64,
    retries: AtomicU64,
    /// HTTP/2 connections shared by the workers (worker w uses slot w % len).
    h2_slots: Vec<tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>>,
    errors: Mutex<Vec<String>>,
    error_count: AtomicUsize,
}

/// What one worker measured.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latencies: Vec<f64>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("rk3s-loadgen: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (common, method, body, creates) = match cli.mode {
        Mode::Create {
            template,
            name_prefix,
            common,
        } => {
            let text = std::fs::read_to_string(&template)
                .with_context(|| format!("reading {}", template.display()))?;
            let mut obj: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", template.display()))?;
            if let Some(prefix) = name_prefix {
                let meta = obj
                    .as_object_mut()
                    .ok_or_else(|| anyhow!("the template is not a JSON object"))?
                    .entry("metadata")
                    .or_insert_with(|| serde_json::json!({}));
                let meta = meta
                    .as_object_mut()
                    .ok_or_else(|| anyhow!("the template's metadata is not an object"))?;
                meta.insert("name".into(), format!("{prefix}-{{i}}").into());
            }
            let text = serde_json::to_string(&obj)?;
            (common, Method::POST, Some(Template::new(&text)), true)
        }
        Mode::Get { common } => (common, Method::GET, None, false),
    };
    if common.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let target = target(&common)?;
    let slots = if common.http2 {
        common.connections.unwrap_or(4).clamp(1, common.concurrency)
    } else {
        0
    };
    let shared = Arc::new(Shared {
        target,
        method,
        path: Template::new(&common.path),
        body,
        creates,
        count: common.count,
        start: common.start,
        stride: common.stride,
        next: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        h2_slots: (0..slots).map(|_| tokio::sync::Mutex::new(None)).collect(),
        errors: Mutex::new(Vec::new()),
        error_count: AtomicUsize::new(0),
    });
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = common.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    let workers = common.concurrency.min(common.count.max(1) as usize);
    let (tallies, seconds) = rt.block_on(drive(shared.clone(), workers))?;
    let mut latencies: Vec<f64> = Vec::new();
    let (mut ok, mut failed) = (0, 0);
    for t in tallies {
        ok += t.ok;
        failed += t.failed;
        latencies.extend(t.latencies);
    }
    latencies.sort_by(f64::total_cmp);
    let ms = |p: f64| percentile(&latencies, p) * 1000.0;
    let report = serde_json::json!({
        "count": common.count,
        "ok": ok,
        "failed": failed,
        "retries": shared.retries.load(Ordering::Relaxed),
        "seconds": round3(seconds),
        "rate": round3(if seconds > 0.0 { ok as f64 / seconds } else { 0.0 }),
        "p50_ms": round3(ms(0.5)),
        "p99_ms": round3(ms(0.99)),
        "max_ms": round3(latencies.last().copied().unwrap_or(0.0) * 1000.0),
        "concurrency": workers,
        "connections": if common.http2 { slots } else { workers },
        "http2": common.http2,
    });
    if let Ok(errors) = shared.errors.lock() {
        for e in errors.iter() {
            eprintln!("rk3s-loadgen: {e}");
        }
        let total = shared.error_count.load(Ordering::Relaxed);
        if total > errors.len() {
            eprintln!("rk3s-loadgen: ... {} more errors", total - errors.len());
        }
    }
    println!("{report}");
    Ok(())
}

/// The p-quantile (0..1) of sorted xs, as benchlib.pct picks it.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Credentials and server address from the kubeconfig (its current context, else the first
/// cluster and user).
fn target(common: &Common) -> anyhow::Result<Target> {
    let text = std::fs::read_to_string(&common.kubeconfig)
        .with_context(|| format!("reading {}", common.kubeconfig.display()))?;
    let kc: serde_yaml::Value = serde_yaml::from_str(&text).context("parsing the kubeconfig")?;
    let context = kc["current-context"].as_str().and_then(|cur| {
        kc["contexts"]
            .as_sequence()?
            .iter()
            .find(|c| c["name"].as_str() == Some(cur))
    });
    let named = |list: &str, key: &str| -> anyhow::Result<&serde_yaml::Value> {
        let items = kc[list]
            .as_sequence()
            .ok_or_else(|| anyhow!("the kubeconfig has no {list}"))?;
        let wanted = context.and_then(|c| c["context"][key].as_str());
        let item = match wanted {
            Some(name) => items.iter().find(|i| i["name"].as_str() == Some(name)),
            None => items.first(),
        };
        let inner = list.trim_end_matches('s');
        item.map(|i| &i[inner])
            .ok_or_else(|| anyhow!("the kubeconfig has no {inner} for its context"))
    };
    let cluster = named("clusters", "cluster")?;
    let user = named("users", "user")?;
    let data = |v: &serde_yaml::Value, key: &str| -> anyhow::Result<Vec<u8>> {
        let b64 = v[key]
            .as_str()
            .ok_or_else(|| anyhow!("the kubeconfig has no {key}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .with_context(|| format!("{key} is not base64"))
    };
    let ca = data(cluster, "certificate-authority-data")?;
    let cert = data(user, "client-certificate-data")?;
    let key = data(user, "client-key-data")?;
    let server = match &common.server {
        Some(s) => s.clone(),
        None => cluster["server"]
            .as_str()
            .ok_or_else(|| anyhow!("the kubeconfig has no server"))?
            .to_string(),
    };
    let uri: http::Uri = server
        .parse()
        .with_context(|| format!("server {server:?}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("server {server:?} is not https");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("server {server:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.context("the CA data")?)?;
    }
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .context("the client certificate data")?;
    let key = PrivateKeyDer::from_pem_slice(&key).context("the client key data")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![if common.http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let server_name = ServerName::try_from(host.clone()).context("the server's host name")?;
    Ok(Target {
        authority: uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone()),
        host,
        port,
        server_name,
        tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        http2: common.http2,
    })
}

/// Opens one TLS connection and starts its HTTP/1.1 or HTTP/2 client.
async fn connect(t: &Target) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(t.tls.connect(t.server_name.clone(), tcp).await?);
    if t.http2 {
        let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(send))
    }
}

impl Shared {
    /// A connection for worker `w`: its own for HTTP/1.1, a shared one for HTTP/2.
    async fn sender(&self, w: usize) -> anyhow::Result<Sender> {
        if self.h2_slots.is_empty() {
            return connect(&self.target).await;
        }
        let mut slot = self.h2_slots[w % self.h2_slots.len()].lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(Sender::H2(s.clone()));
        }
        let Sender::H2(s) = connect(&self.target).await? else {
            bail!("expected an HTTP/2 connection");
        };
        *slot = Some(s.clone());
        Ok(Sender::H2(s))
    }

    fn note_error(&self, msg: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < MAX_ERROR_SAMPLES {
                e.push(msg);
            }
        }
    }

    /// Sends one request and reads the whole answer.
    async fn send(&self, s: &mut Sender, i: u64) -> anyhow::Result<(StatusCode, Bytes)> {
        let path = self.path.render(i);
        let body = match &self.body {
            Some(t) => Bytes::from(t.render(i)),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(self.method.clone())
            .header("accept", "application/json");
        if self.body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let resp = match s {
            Sender::H1(s) => {
                let req = req
                    .uri(path)
                    .header("host", &self.target.authority)
                    .body(Full::new(body))?;
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let uri = format!("https://{}{}", self.target.authority, path);
                let req = req.uri(uri).body(Full::new(body))?;
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Opens the workers' connections, then runs them all from one instant; returns what each
/// measured and the seconds from that instant to the last answer.
async fn drive(shared: Arc<Shared>, workers: usize) -> anyhow::Result<(Vec<Tally>, f64)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(workers + 1));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (shared, barrier) = (shared.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let conn = match shared.sender(w).await {
                Ok(c) => Some(c),
                Err(e) => {
                    shared.note_error(format!("connect: {e:#}"));
                    None
                }
            };
            barrier.wait().await;
            worker(&shared, w, conn).await
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut tallies = Vec::with_capacity(workers);
    for t in tasks {
        tallies.push(t.await?);
    }
    Ok((tallies, started.elapsed().as_secs_f64()))
}

/// Takes request indexes until none are left, each with up to RETRIES retries.
async fn worker(shared: &Shared, w: usize, mut conn: Option<Sender>) -> Tally {
    let mut tally = Tally::default();
    loop {
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        if k >= shared.count {
            return tally;
        }
        let i = shared.start + k * shared.stride;
        let t = Instant::now();
        let mut done = false;
        let mut last_error = String::new();
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            let mut s = match conn.take() {
                Some(s) => s,
                None => match shared.sender(w).await {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = format!("connect: {e:#}");
                        continue;
                    }
                },
            };
            match shared.send(&mut s, i).await {
                Ok((status, body)) => {
                    conn = Some(s);
                    let conflict_on_retry =
                        shared.creates && attempt > 0 && status == StatusCode::CONFLICT;
                    if status.is_success() || conflict_on_retry {
                        done = true;
                        break;
                    }
                    last_error = format!(
                        "{} {}: {} {}",
                        shared.method,
                        shared.path.render(i),
                        status,
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    );
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        break;
                    }
                }
                Err(e) => {
                    last_error = format!("{} {}: {e:#}", shared.method, shared.path.render(i))
                }
            }
        }
        tally.latencies.push(t.elapsed().as_secs_f64());
        if done {
            tally.ok += 1;
        } else {
            tally.failed += 1;
            shared.note_error(last_error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_replaces_every_placeholder() {
        let t = Template::new(r#"{"metadata":{"name":"p-{i}","labels":{"n":"{i}"}}}"#);
        assert_eq!(
            t.render(42),
            r#"{"metadata":{"name":"p-42","labels":{"n":"42"}}}"#
        );
        assert_eq!(Template::new("/healthz").render(7), "/healthz");
    }

    #[test]
    fn percentile_matches_benchlib() {
        let xs: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.5), 50.0);
        assert_eq!(percentile(&xs, 0.99), 99.0);
        assert_eq!(percentile(&xs, 1.0), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
