//! Step 2 of the request path, "detect": on a listener of unknown protocol (`protocol: AUTO`,
//! Istio's protocol sniffing) the client's first bytes decide. An HTTP/1 request line or the
//! HTTP/2 preface is served as on an HTTP listener; a TLS ClientHello or anything else is
//! proxied as TCP to the listener's destination. A client that says nothing within the
//! detection timeout speaks a server-first protocol (MySQL, SMTP: it waits for the server's
//! greeting), so the connection goes to TCP then, and the greeting reaches it.
//!
//! The bytes read while detecting are handed on, never lost: HTTP parses them as the start of
//! its buffer, TCP writes them upstream before it splices. Detection waits for readiness, not
//! inside a read, so a deadline that fires as bytes arrive cannot drop them with a cancelled
//! read. It reads at most one buffer per connection and allocates nothing else.

use crate::capture::{RouteBy, TcpDest};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use ringmesh_api::snapshot::{ListenerKind, DEFAULT_PROTOCOL_DETECTION_TIMEOUT};

use crate::telemetry::stats::inc;
use crate::worker::Worker;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Enough of the preface to rule out every HTTP/1 method (`PRI` is reserved for it).
const H2_PREFACE_DECIDES: usize = 4;

/// Request methods an HTTP/1 client opens with, as Envoy's HTTP inspector (http-parser) knows
/// them. A known method rather than any token: an opaque protocol with a word and a space
/// first (a Redis inline `SET k v`) must not be taken for HTTP.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PURGE",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
];

/// What a connection's first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// An HTTP/1 request line (a method and a space).
    Http1,
    /// The HTTP/2 preface (h2c with prior knowledge), or enough of it.
    Http2,
    /// A TLS handshake record (ClientHello): proxied as TCP, still encrypted.
    Tls,
    /// Anything else.
    Opaque,
}

impl Sniffed {
    pub(crate) fn is_http(self) -> bool {
        matches!(self, Sniffed::Http1 | Sniffed::Http2)
    }
}

/// Classifies a connection's first bytes; `None` while they are still a prefix of something
/// recognised (more bytes decide). Never needs more than a method's length plus one.
pub(crate) fn classify(bytes: &[u8]) -> Option<Sniffed> {
    let first = *bytes.first()?;
    if first == 0x16 {
        // TLS record header: handshake (22), version 3.x with x in 0..=4 (SSL 3.0 to TLS 1.3's
        // legacy value).
        return match bytes {
            [_] | [_, 0x03] => None,
            [_, 0x03, minor, ..] if *minor <= 0x04 => Some(Sniffed::Tls),
            _ => Some(Sniffed::Opaque),
        };
    }
    if is_prefix_either_way(bytes, H2_PREFACE) && bytes.len() >= H2_PREFACE_DECIDES {
        return Some(Sniffed::Http2);
    }
    let mut undecided = false;
    for method in METHODS {
        if bytes.len() > method.len() {
            if bytes.starts_with(method) && bytes[method.len()] == b' ' {
                return Some(Sniffed::Http1);
            }
        } else if method.starts_with(bytes) {
            undecided = true;
        }
    }
    if undecided || H2_PREFACE.starts_with(bytes) {
        return None;
    }
    Some(Sniffed::Opaque)
}

/// Whether the shorter of `a` and `b` starts the longer.
fn is_prefix_either_way(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// How detection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Sniffed(Sniffed),
    /// Nothing conclusive within the timeout.
    Timeout,
    /// The client closed or failed before saying anything conclusive and with nothing read.
    Gone,
}

/// Serves one connection of the `AUTO` listener `listener`: detects, counts, then hands the
/// connection and the bytes read to the HTTP or the TCP proxy.
pub async fn serve(worker: Rc<Worker>, mut stream: TcpStream, peer: SocketAddr, listener: &str) {
    let timeout = detection_timeout(&worker, listener);
    let mut buf = BytesMut::with_capacity(crate::http::proxy::INITIAL_BUFFER);
    let outcome = sniff(&mut stream, &mut buf, timeout).await;
    match outcome {
        Outcome::Sniffed(s) if s.is_http() => {
            inc(&worker.stats.detected_http);
            let io = crate::http::downstream::ClientIo::Tcp(stream);
            let route_by = RouteBy::on_listener(crate::http::local_rate_limit::listener_ref(&worker, listener));
            crate::http::proxy::serve(worker, io, peer, None, buf, route_by).await;
        }
        Outcome::Sniffed(_) | Outcome::Timeout => {
            inc(if outcome == Outcome::Timeout {
                &worker.stats.detect_timeout
            } else {
                &worker.stats.detected_tcp
            });
            let io = crate::http::downstream::ClientIo::Tcp(stream);
            crate::tcp::serve(worker, io, peer, TcpDest::Listener(listener), buf, None).await;
        }
        Outcome::Gone => {}
    }
}

/// The current snapshot's detection timeout for `listener` (the default if a reload removed
/// it: the connection was accepted under the old config).
fn detection_timeout(worker: &Worker, listener: &str) -> Duration {
    let view = worker.snapshot.get();
    view.snapshot
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .and_then(|l| match &l.kind {
            ListenerKind::Detect { timeout, .. } => Some(*timeout),
            _ => None,
        })
        .unwrap_or(DEFAULT_PROTOCOL_DETECTION_TIMEOUT)
}

/// Reads into `buf` until [`classify`] decides or `timeout` passes.
pub(crate) async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = classify(buf) {
            return Outcome::Sniffed(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, stream.readable(false)).await {
            Err(_) => return Outcome::Timeout,
            Ok(Err(e)) => {
                tracing::debug!("detect: waiting for the client failed: {e}");
                return if buf.is_empty() {
                    Outcome::Gone
                } else {
                    Outcome::Timeout
                };
            }
            Ok(Ok(())) => {}
        }
        // `classify` decides within a method's length, far below the buffer's capacity; the
        // check keeps a slice of zero length (a read of nothing) impossible anyway.
        if buf.len() == buf.capacity() {
            return Outcome::Sniffed(Sniffed::Opaque);
        }
        let len = buf.len();
        let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
        *buf = slice.into_inner();
        match res {
            // The client half-closed: what it sent (if anything) goes on as TCP, with its EOF.
            Ok(0) if buf.is_empty() => return Outcome::Gone,
            Ok(0) => return Outcome::Sniffed(classify(buf).unwrap_or(Sniffed::Opaque)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!("detect: read failed: {e}");
                return Outcome::Gone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, Sniffed::*};

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Http1));
        assert_eq!(classify(b"POST "), Some(Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Http1));
        // A method needs its space; until then more bytes decide.
        assert_eq!(classify(b"GET"), None);
        assert_eq!(classify(b"G"), None);
        assert_eq!(classify(b"DELE"), None);
        // Not a method, or a method without the space.
        assert_eq!(classify(b"GETX / HTTP/1.1"), Some(Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Opaque));
        assert_eq!(classify(b"GET\t/"), Some(Opaque));
        // A Redis inline command is a word and a space, but no HTTP method.
        assert_eq!(classify(b"SET k v\r\n"), Some(Opaque));
        assert_eq!(classify(b"PING\r\n"), Some(Opaque));
    }

    #[test]
    fn the_http2_preface_and_any_prefix_of_it() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(classify(preface), Some(Http2));
        let mut with_frames = preface.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_frames), Some(Http2));
        for n in 4..preface.len() {
            assert_eq!(classify(&preface[..n]), Some(Http2), "{n} bytes");
        }
        // "P", "PR", "PRI" could still be PUT, PROPFIND, or the preface.
        for n in 1..4 {
            assert_eq!(classify(&preface[..n]), None, "{n} bytes");
        }
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Opaque));
    }

    #[test]
    fn tls_client_hello_and_other_bytes() {
        for minor in 0..=4u8 {
            assert_eq!(classify(&[0x16, 0x03, minor, 0x00, 0xc8, 0x01]), Some(Tls), "3.{minor}");
        }
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(&[0x16, 0x03]), None);
        assert_eq!(classify(&[0x16, 0x03, 0x05]), Some(Opaque));
        assert_eq!(classify(&[0x16, 0x02, 0x01]), Some(Opaque));
        assert_eq!(
            classify(&[0x17, 0x03, 0x03]),
            Some(Opaque),
            "application data is no hello"
        );
        assert_eq!(classify(&[0x00, 0x00, 0x00, 0x01]), Some(Opaque));
        assert_eq!(classify(b"\x4a\x00\x00\x00\x0a"), Some(Opaque), "a MySQL-like packet");
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn every_input_is_decided_within_a_method_and_a_space() {
        // Whatever the bytes, classify never waits past the longest method plus its space.
        let longest = super::METHODS.iter().map(|m| m.len()).max().unwrap_or(0) + 1;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes: Vec<u8> = (0..longest + 1)
                .map(|i| {
                    let b = (state >> ((i % 8) * 8)) as u8;
                    // Bias towards letters so that method prefixes are exercised.
                    if i % 3 == 0 {
                        b"GPDUOTCMLSRANB-"[b as usize % 15]
                    } else {
                        b
                    }
                })
                .collect();
            assert!(classify(&bytes).is_some(), "{bytes:?}");
        }
    }
}
