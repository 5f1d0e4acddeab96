//! HTTP/2 frames written by hand, for tests that must send what a correct client never would:
//! malformed header blocks, floods, rapid resets. Header blocks use HPACK literals without
//! indexing or Huffman coding, which every decoder accepts and which can carry anything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// One frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields (names taken as given, so upper case and all).
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The usual pseudo-fields of a GET to `authority` `path`.
pub fn get(authority: &'static str, path: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
    ]
}

/// What the proxy sent back, as far as a test cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A HEADERS frame on this stream (a response started).
    Headers(u32),
    /// `RST_STREAM` with this error code.
    Reset(u32, u32),
    /// `GOAWAY` with this error code.
    GoAway(u32),
    /// The connection closed.
    Closed,
}

/// A raw HTTP/2 client connection.
#[derive(Debug)]
pub struct RawH2 {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS; the server's SETTINGS are
    /// acknowledged when [`Self::until`] reads them.
    pub fn connect(addr: SocketAddr) -> RawH2 {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut c = RawH2 {
            stream,
            buf: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(kind::SETTINGS, 0, 0, &[]));
        c.send(&hello);
        c
    }

    /// Writes bytes; a write error (the server closed) is ignored: the reads tell.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends a whole request head on `stream` (ending the stream when `end`).
    pub fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) {
        let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
        self.send(&frame(kind::HEADERS, flags, stream, &header_block(fields)));
    }

    /// Reads frames until `want` says one matters, or the connection closes, or `within`
    /// passes (then `None`). SETTINGS and PING from the server are acknowledged.
    pub fn until(&mut self, within: Duration, mut want: impl FnMut(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + within;
        loop {
            while self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16) | (usize::from(self.buf[1]) << 8) | usize::from(self.buf[2]);
                if self.buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (self.buf[3], self.buf[4]);
                let id = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
                let payload = self.buf[9..9 + len].to_vec();
                self.buf.drain(..9 + len);
                let seen = match kind {
                    kind::HEADERS => Some(Seen::Headers(id)),
                    kind::RST_STREAM if payload.len() == 4 => {
                        Some(Seen::Reset(id, u32::from_be_bytes(payload[..4].try_into().unwrap())))
                    }
                    kind::GOAWAY if payload.len() >= 8 => {
                        Some(Seen::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap())))
                    }
                    kind::SETTINGS if flags & flag::ACK == 0 => {
                        self.send(&frame(kind::SETTINGS, flag::ACK, 0, &[]));
                        None
                    }
                    kind::PING if flags & flag::ACK == 0 => {
                        self.send(&frame(kind::PING, flag::ACK, 0, &payload));
                        None
                    }
                    _ => None,
                };
                if let Some(s) = seen {
                    if want(&s) {
                        return Some(s);
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return want(&Seen::Closed).then_some(Seen::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return want(&Seen::Closed).then_some(Seen::Closed),
            }
        }
    }
}
