//! The server side of a WebSocket (RFC 6455) for streams the API server produces
//! itself: `pods/log` asked over WebSocket (upstream's `binary.k8s.io` and
//! `base64.binary.k8s.io` reader protocols; no protocol means binary). Only what a
//! one-way stream needs: the handshake answer and unmasked server frames. Pure
//! functions, plus [`stream_frames`] that writes a channel of chunks to an upgraded
//! connection.

use base64::Engine;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How chunks are framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderProtocol {
    /// Binary frames of raw bytes (`binary.k8s.io`, or no protocol).
    Binary,
    /// Text frames of base64 (`base64.binary.k8s.io`).
    Base64,
}

/// Whether the request asks for a WebSocket.
pub fn is_websocket_request(headers: &http::HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// `Sec-WebSocket-Accept` for the client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{}{ACCEPT_GUID}", key.trim()).as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The protocol to answer with among those the client offers (first supported one, as
/// upstream's negotiation); `None` when it offers only unsupported ones.
pub fn choose_reader_protocol(headers: &http::HeaderMap) -> Option<(ReaderProtocol, String)> {
    let offered: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Some((ReaderProtocol::Binary, String::new()));
    }
    offered.into_iter().find_map(|p| match p.as_str() {
        "binary.k8s.io" => Some((ReaderProtocol::Binary, p)),
        "base64.binary.k8s.io" => Some((ReaderProtocol::Base64, p)),
        _ => None,
    })
}

/// One unmasked server frame (`opcode`: 1 text, 2 binary, 8 close).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | (opcode & 0x0f));
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// The frame carrying `chunk` in `protocol`.
pub fn data_frame(protocol: ReaderProtocol, chunk: &[u8]) -> Vec<u8> {
    match protocol {
        ReaderProtocol::Binary => frame(2, chunk),
        ReaderProtocol::Base64 => frame(
            1,
            base64::engine::general_purpose::STANDARD
                .encode(chunk)
                .as_bytes(),
        ),
    }
}

/// Writes every chunk of `rx` to the upgraded connection as frames, then a normal close.
pub async fn stream_frames(
    on_upgrade: hyper::upgrade::OnUpgrade,
    protocol: ReaderProtocol,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    while let Some(chunk) = rx.recv().await {
        if chunk.is_empty() {
            continue;
        }
        if io.write_all(&data_frame(protocol, &chunk)).await.is_err() {
            return;
        }
    }
    let _ = io.write_all(&frame(8, &1000u16.to_be_bytes())).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames() {
        assert_eq!(frame(2, b"hi"), vec![0x82, 2, b'h', b'i']);
        let mid = frame(2, &[0u8; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = frame(2, &vec![0u8; 70_000]);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(big.len(), 70_010);
        assert_eq!(
            data_frame(ReaderProtocol::Base64, b"hi"),
            vec![0x81, 4, b'a', b'G', b'k', b'=']
        );
    }

    #[test]
    fn negotiation() {
        let mut h = http::HeaderMap::new();
        assert!(!is_websocket_request(&h));
        h.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_websocket_request(&h));
        assert_eq!(
            choose_reader_protocol(&h),
            Some((ReaderProtocol::Binary, String::new()))
        );
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("v4.channel.k8s.io, base64.binary.k8s.io"),
        );
        assert_eq!(
            choose_reader_protocol(&h),
            Some((ReaderProtocol::Base64, "base64.binary.k8s.io".into()))
        );
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("v4.channel.k8s.io"),
        );
        assert_eq!(choose_reader_protocol(&h), None);
    }
}
