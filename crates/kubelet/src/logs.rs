//! Reading container logs in the CRI format, as the kubelet's `containerLogs` endpoint
//! serves them to `kubectl logs`.
//!
//! A CRI log file holds one record a line: `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`,
//! where `P` marks a partial record (a long line split by the runtime) that continues in
//! the next record, and `F` a full one (the end of a line). The output is the plain text
//! of the records, partial records joined, optionally each line prefixed with its time.
//!
//! Options follow upstream's kubelet: `tailLines` counts records from the end of the
//! file, `sinceTime`/`sinceSeconds` drop records older than the time, `limitBytes` cuts the
//! output, `timestamps` prefixes lines, `follow` keeps reading as the file grows (and
//! reopens the path when the file is rotated) until the container stops running.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufReader,
};

/// Errors of reading a log file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened or read.
    #[error("failed to read log file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not in the CRI log format.
    #[error("invalid CRI log line {0:?}")]
    Parse(String),
    /// Writing the output failed (the client went away).
    #[error("writing logs: {0}")]
    Write(std::io::Error),
    /// A query option is invalid.
    #[error("{0}")]
    BadOption(String),
}

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One parsed CRI log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// When the runtime wrote it.
    pub time: jiff::Timestamp,
    /// The stream.
    pub stream: Stream,
    /// True for `P` (the line continues in the next record).
    pub partial: bool,
    /// The text, with a `\n` appended for full records.
    pub text: Vec<u8>,
}

/// Parses one CRI log line (without its trailing newline).
pub fn parse_cri_line(line: &[u8]) -> Result<LogRecord, LogError> {
    let bad = || LogError::Parse(String::from_utf8_lossy(line).into_owned());
    let mut it = line.splitn(4, |b| *b == b' ');
    let ts = it.next().ok_or_else(bad)?;
    let stream = it.next().ok_or_else(bad)?;
    let tag = it.next().ok_or_else(bad)?;
    let text = it.next().unwrap_or(b"");
    let time: jiff::Timestamp = std::str::from_utf8(ts)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(bad()),
    };
    // Tags may carry more flags separated by ':'; the first is P or F.
    let partial = match tag.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(bad()),
    };
    let mut text = text.to_vec();
    if !partial {
        text.push(b'\n');
    }
    Ok(LogRecord {
        time,
        stream,
        partial,
        text,
    })
}

/// The kubelet's limits for a termination message taken from the log
/// (`FallbackToLogsOnError`): the last 80 lines, at most 2048 bytes.
pub const FALLBACK_MESSAGE_LINES: usize = 80;
/// See [`FALLBACK_MESSAGE_LINES`].
pub const FALLBACK_MESSAGE_BYTES: usize = 2048;

/// The text a container wrote, as `kubectl logs` shows it (CRI framing removed, partial
/// records joined), limited to its last `lines` lines and last `max_bytes` bytes: the
/// termination message of `terminationMessagePolicy: FallbackToLogsOnError`. Lines that
/// are not CRI records are skipped; an unreadable file gives an empty text.
pub fn tail_text(path: &std::path::Path, lines: usize, max_bytes: usize) -> String {
    let Ok(raw) = std::fs::read(path) else {
        return String::new();
    };
    let mut text: Vec<u8> = Vec::new();
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(rec) = parse_cri_line(line) {
            text.extend_from_slice(&rec.text);
        }
    }
    // The last `lines` lines (a final newline does not start another line).
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let mut start = 0;
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                start = i + 1;
                break;
            }
        }
    }
    let mut tail = &text[start..];
    if tail.len() > max_bytes {
        tail = &tail[tail.len() - max_bytes..];
    }
    String::from_utf8_lossy(tail).into_owned()
}

/// Options of a log read (upstream's `PodLogOptions` as the kubelet uses them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep reading as the file grows.
    pub follow: bool,
    /// Only the last N records (`None`: all).
    pub tail_lines: Option<u64>,
    /// Only records at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Prefix each line with its RFC3339Nano time and a space.
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// The previous (terminated) instance of the container.
    pub previous: bool,
}

impl LogOptions {
    /// Reads the options from a query string (`follow`, `tailLines`, `sinceSeconds`,
    /// `sinceTime`, `timestamps`, `limitBytes`, `previous`), `now` being the time
    /// `sinceSeconds` counts back from. Errors as upstream's validation for negative or
    /// malformed numbers and for both `sinceSeconds` and `sinceTime`.
    pub fn from_query(query: Option<&str>, now: jiff::Timestamp) -> Result<LogOptions, LogError> {
        let mut o = LogOptions::default();
        let mut since_seconds = None;
        let mut since_time = None;
        let flag = |v: &str| matches!(v, "true" | "1" | "True" | "TRUE" | "t" | "T");
        for (k, v) in form_pairs(query.unwrap_or("")) {
            match k.as_str() {
                "follow" => o.follow = flag(&v),
                "timestamps" => o.timestamps = flag(&v),
                "previous" => o.previous = flag(&v),
                "tailLines" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| LogError::BadOption(format!("invalid tailLines {v:?}")))?;
                    if n < 0 {
                        return Err(LogError::BadOption(
                            "tailLines: Invalid value: must be greater than or equal to 0".into(),
                        ));
                    }
                    o.tail_lines = Some(n as u64);
                }
                "limitBytes" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| LogError::BadOption(format!("invalid limitBytes {v:?}")))?;
                    if n < 1 {
                        return Err(LogError::BadOption(
                            "limitBytes: Invalid value: must be greater than 0".into(),
                        ));
                    }
                    o.limit_bytes = Some(n as u64);
                }
                "sinceSeconds" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| LogError::BadOption(format!("invalid sinceSeconds {v:?}")))?;
                    if n < 1 {
                        return Err(LogError::BadOption(
                            "sinceSeconds: Invalid value: must be greater than 0".into(),
                        ));
                    }
                    since_seconds = Some(n);
                }
                "sinceTime" => {
                    let t: jiff::Timestamp = v
                        .parse()
                        .map_err(|_| LogError::BadOption(format!("invalid sinceTime {v:?}")))?;
                    since_time = Some(t);
                }
                _ => {}
            }
        }
        o.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(LogError::BadOption(
                    "at most one of sinceTime or sinceSeconds may be specified".into(),
                ))
            }
            (Some(s), None) => Some(
                now.checked_sub(jiff::SignedDuration::from_secs(s))
                    .unwrap_or(now),
            ),
            (None, t) => t,
        };
        Ok(o)
    }
}

/// Decoded `key=value` pairs of a query string.
pub(crate) fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte offset where the last `n` lines of the file's first `len` bytes start (0 for
/// fewer lines; `len` for `n == 0`). A last line without its newline counts as a line.
pub async fn tail_start(file: &mut tokio::fs::File, n: u64, len: u64) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    const BLOCK: u64 = 8192;
    let mut pos = len;
    let mut newlines = 0u64;
    let mut buf = vec![0u8; BLOCK as usize];
    // A trailing newline ends the last line rather than starting a new one.
    let mut skip_last = true;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK);
        let size = (pos - start) as usize;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buf[..size]).await?;
        for i in (0..size).rev() {
            if buf[i] == b'\n' {
                if skip_last && start + i as u64 == len - 1 {
                    skip_last = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        skip_last = false;
        pos = start;
    }
    Ok(0)
}

/// Formats a time as upstream's RFC3339Nano (UTC, trailing zeros of the fraction dropped).
pub fn rfc3339_nano(t: jiff::Timestamp) -> String {
    t.to_string()
}

/// Writes records to the output, applying `since`, `timestamps` and `limitBytes`.
struct Writer<'a, W> {
    out: &'a mut W,
    opts: &'a LogOptions,
    written: u64,
    /// The next record starts a new line (gets the time prefix).
    at_line_start: bool,
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    /// Writes one record; returns false once the byte limit is reached.
    async fn record(&mut self, rec: &LogRecord) -> Result<bool, LogError> {
        if self.opts.since.is_some_and(|s| rec.time < s) {
            return Ok(true);
        }
        let mut buf = Vec::with_capacity(rec.text.len() + 40);
        if self.opts.timestamps && self.at_line_start {
            buf.extend_from_slice(rfc3339_nano(rec.time).as_bytes());
            buf.push(b' ');
        }
        buf.extend_from_slice(&rec.text);
        self.at_line_start = !rec.partial;
        let mut more = true;
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit.saturating_sub(self.written);
            if (buf.len() as u64) >= left {
                buf.truncate(left as usize);
                more = false;
            }
        }
        self.out.write_all(&buf).await.map_err(LogError::Write)?;
        self.written += buf.len() as u64;
        if self.opts.follow {
            self.out.flush().await.map_err(LogError::Write)?;
        }
        Ok(more)
    }
}

/// How often a followed file is polled for new data.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

fn inode(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Writes the logs of the CRI log file `path` to `out` as `kubectl logs` expects them.
///
/// With `opts.follow`, keeps reading as the file grows; when the path is replaced by a
/// new file (log rotation) the rest of the old file is read, then the new one from its
/// start. Following ends when `still_running()` answers false and the file is drained,
/// when the byte limit is reached, or when writing fails (the client went away).
/// Malformed lines are skipped with a debug log, as upstream does.
pub async fn read_logs<W, F, Fut>(
    path: &Path,
    opts: &LogOptions,
    out: &mut W,
    mut still_running: F,
) -> Result<(), LogError>
where
    W: AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let read_err = |e| LogError::Read {
        path: path.to_path_buf(),
        source: e,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut ident = inode(&file.metadata().await.map_err(read_err)?);
    // Without `follow` the answer is the file as it is now: lines the container writes
    // while it is read are not added (`tailLines=2` answers two lines).
    let len = file.seek(SeekFrom::End(0)).await.map_err(read_err)?;
    let start = match opts.tail_lines {
        Some(n) => tail_start(&mut file, n, len).await.map_err(read_err)?,
        None => 0,
    };
    file.seek(SeekFrom::Start(start)).await.map_err(read_err)?;
    let limit = if opts.follow { u64::MAX } else { len - start };
    let mut reader = BufReader::new(file.take(limit));
    let mut w = Writer {
        out,
        opts,
        written: 0,
        at_line_start: true,
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // Drain what the file holds now.
        loop {
            if pending.last() != Some(&b'\n') {
                let n = reader
                    .read_until(b'\n', &mut pending)
                    .await
                    .map_err(read_err)?;
                if n == 0 || pending.last() != Some(&b'\n') {
                    // EOF; an unterminated line waits for the rest (or is the file's last).
                    break;
                }
            }
            pending.pop();
            match parse_cri_line(&pending) {
                Ok(rec) => {
                    if !w.record(&rec).await? {
                        return Ok(());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "skipping log line"),
            }
            pending.clear();
        }
        if !opts.follow {
            if !pending.is_empty() {
                if let Ok(rec) = parse_cri_line(&pending) {
                    w.record(&rec).await?;
                }
            }
            return Ok(());
        }
        // Following: rotated?
        let rotated = match tokio::fs::metadata(path).await {
            Ok(m) => inode(&m) != ident,
            Err(_) => false,
        };
        if rotated {
            // Read anything appended to the old file before switching.
            let n = reader
                .read_until(b'\n', &mut pending)
                .await
                .map_err(read_err)?;
            if n > 0 {
                continue;
            }
            match tokio::fs::File::open(path).await {
                Ok(f) => {
                    ident = inode(&f.metadata().await.map_err(read_err)?);
                    reader = BufReader::new(f.take(u64::MAX));
                    pending.clear();
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "reopening rotated log"),
            }
        }
        if !still_running().await {
            // One last drain: the runtime may have written after our last read.
            let n = reader
                .read_until(b'\n', &mut pending)
                .await
                .map_err(read_err)?;
            if n > 0 {
                continue;
            }
            if !pending.is_empty() {
                if let Ok(rec) = parse_cri_line(&pending) {
                    w.record(&rec).await?;
                }
            }
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn termination_message_from_the_log_is_the_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("0.log");
        let mut lines = String::new();
        for i in 0..100 {
            lines.push_str(&format!(
                "2026-01-01T00:00:00.000000000Z stdout F line {i}\n"
            ));
        }
        lines.push_str("2026-01-01T00:00:01.000000000Z stderr P half \n");
        lines.push_str("2026-01-01T00:00:01.000000000Z stderr F and half\n");
        std::fs::write(&p, lines).expect("write");
        let t = tail_text(&p, FALLBACK_MESSAGE_LINES, FALLBACK_MESSAGE_BYTES);
        assert!(t.ends_with("line 99\nhalf and half\n"), "{t:?}");
        assert!(t.starts_with("line 21\n"), "80 lines: {t:?}");
        assert!(
            !t.contains("stdout") && !t.contains(" F "),
            "no CRI framing: {t:?}"
        );
        let short = tail_text(&p, 80, 10);
        assert_eq!(short, " and half\n", "the last 10 bytes");
        assert_eq!(tail_text(&dir.path().join("missing"), 80, 2048), "");
    }

    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap_or_else(|_| panic!("bad time {s}"))
    }

    const LOG: &str = "2024-05-01T10:00:00.100000000Z stdout F one\n\
2024-05-01T10:00:01.5Z stderr F two\n\
2024-05-01T10:00:02Z stdout P thr\n\
2024-05-01T10:00:02.25Z stdout F ee\n\
2024-05-01T10:00:03Z stdout F four\n";

    fn write_log(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        assert!(std::fs::write(&p, content).is_ok());
        p
    }

    async fn read(path: &Path, opts: &LogOptions) -> String {
        let mut out = Vec::new();
        let r = read_logs(path, opts, &mut out, || async { false }).await;
        assert!(r.is_ok(), "{r:?}");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn parses_cri_lines() {
        let r = parse_cri_line(b"2024-05-01T10:00:00.123456789Z stderr P hello world");
        let Ok(r) = r else { panic!("{r:?}") };
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.text, b"hello world");
        assert_eq!(r.time, ts("2024-05-01T10:00:00.123456789Z"));
        let f = parse_cri_line(b"2024-05-01T10:00:00Z stdout F ");
        assert_eq!(f.map(|r| r.text).ok(), Some(b"\n".to_vec()));
        assert!(parse_cri_line(b"garbage").is_err());
        assert!(parse_cri_line(b"2024-05-01T10:00:00Z stdin F x").is_err());
        assert!(parse_cri_line(b"2024-05-01T10:00:00Z stdout X x").is_err());
    }

    #[tokio::test]
    async fn plain_output_joins_partial_records() {
        let dir = tempfile::tempdir();
        let Ok(dir) = dir else { panic!("tempdir") };
        let p = write_log(dir.path(), "0.log", LOG);
        assert_eq!(
            read(&p, &LogOptions::default()).await,
            "one\ntwo\nthree\nfour\n"
        );
    }

    #[tokio::test]
    async fn tail_lines_counts_records_from_the_end() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let p = write_log(dir.path(), "0.log", LOG);
        let o = |n| LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        };
        assert_eq!(read(&p, &o(1)).await, "four\n");
        assert_eq!(read(&p, &o(2)).await, "ee\nfour\n");
        assert_eq!(read(&p, &o(4)).await, "two\nthree\nfour\n");
        assert_eq!(read(&p, &o(100)).await, "one\ntwo\nthree\nfour\n");
        assert_eq!(read(&p, &o(0)).await, "");
        // Without the final newline the last record still counts.
        let q = write_log(dir.path(), "1.log", LOG.trim_end());
        assert_eq!(read(&q, &o(1)).await, "four\n");
    }

    #[tokio::test]
    async fn timestamps_prefix_each_line_once() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let p = write_log(dir.path(), "0.log", LOG);
        let out = read(
            &p,
            &LogOptions {
                timestamps: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            out,
            "2024-05-01T10:00:00.1Z one\n2024-05-01T10:00:01.5Z two\n2024-05-01T10:00:02Z three\n2024-05-01T10:00:03Z four\n"
        );
    }

    #[tokio::test]
    async fn since_and_limit_bytes() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let p = write_log(dir.path(), "0.log", LOG);
        let since = LogOptions {
            since: Some(ts("2024-05-01T10:00:01.5Z")),
            ..Default::default()
        };
        assert_eq!(read(&p, &since).await, "two\nthree\nfour\n");
        let limit = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(read(&p, &limit).await, "one\ntw");
    }

    #[test]
    fn options_from_query() {
        let now = ts("2024-05-01T10:00:10Z");
        let o = LogOptions::from_query(
            Some(
                "follow=true&tailLines=5&timestamps=1&limitBytes=10&sinceSeconds=4&previous=false",
            ),
            now,
        );
        let Ok(o) = o else { panic!("{o:?}") };
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(10)));
        assert_eq!(o.since, Some(ts("2024-05-01T10:00:06Z")));
        let t = LogOptions::from_query(Some("sinceTime=2024-05-01T09%3A00%3A00Z"), now);
        assert_eq!(
            t.ok().and_then(|o| o.since),
            Some(ts("2024-05-01T09:00:00Z"))
        );
        assert!(LogOptions::from_query(Some("tailLines=-1"), now).is_err());
        assert!(LogOptions::from_query(Some("limitBytes=0"), now).is_err());
        assert!(
            LogOptions::from_query(Some("sinceSeconds=1&sinceTime=2024-05-01T09:00:00Z"), now)
                .is_err()
        );
        assert_eq!(
            LogOptions::from_query(None, now).ok(),
            Some(LogOptions::default())
        );
    }

    #[tokio::test]
    async fn follow_reads_appended_lines_and_rotation() {
        use std::io::Write;
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let p = write_log(dir.path(), "0.log", "2024-05-01T10:00:00Z stdout F a\n");
        let path = p.clone();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r2 = running.clone();
        let (mut tx, mut rx) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move {
            let opts = LogOptions {
                follow: true,
                ..Default::default()
            };
            read_logs(&path, &opts, &mut tx, || {
                let r = r2.clone();
                async move { r.load(std::sync::atomic::Ordering::SeqCst) }
            })
            .await
        });
        let mut got = Vec::new();
        async fn read_until(
            rx: &mut tokio::io::DuplexStream,
            want: &str,
            got: &mut Vec<u8>,
        ) -> bool {
            let mut buf = [0u8; 256];
            for _ in 0..50 {
                if String::from_utf8_lossy(got).contains(want) {
                    return true;
                }
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(100), rx.read(&mut buf)).await
                {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            false
        }
        assert!(read_until(&mut rx, "a\n", &mut got).await);
        // Appended, with a line written in two halves.
        let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&p) else {
            panic!("open")
        };
        assert!(f
            .write_all(b"2024-05-01T10:00:01Z stdout F b\n2024-05-01T10:00:02Z std")
            .is_ok());
        assert!(f.flush().is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(f.write_all(b"out F c\n").is_ok());
        assert!(read_until(&mut rx, "c\n", &mut got).await);
        // Rotation: the file is renamed away and a new one created at the path.
        assert!(std::fs::rename(&p, dir.path().join("0.log.20240501-100003")).is_ok());
        assert!(std::fs::write(&p, "2024-05-01T10:00:04Z stdout F d\n").is_ok());
        assert!(read_until(&mut rx, "d\n", &mut got).await);
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        let r = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "{r:?}");
        assert_eq!(String::from_utf8_lossy(&got), "a\nb\nc\nd\n");
    }
}
