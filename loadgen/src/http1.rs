//! HTTP/1.1 message framing shared by the echo server and the load generator.
//!
//! Both sides parse heads with `httparse` straight out of their read buffer and then need the
//! same three decisions: how long is the body (RFC 9112 §6), is the connection kept alive, and
//! how is a chunked body decoded. They live here, once, so that the echo server and the client
//! agree byte for byte and both reject the same malformed input instead of guessing. Nothing in
//! this module allocates per message or performs I/O; it works on slices the caller owns.

use thiserror::Error;

/// Why a message could not be framed. Every variant is something a peer sent; none is a bug
/// on our side, so callers turn them into a `400`/`431` (echo) or a `malformed` error (client).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// `Content-Length` was not a plain decimal number, or two values disagreed.
    #[error("invalid content-length header")]
    InvalidContentLength,
    /// `Transfer-Encoding` was present but its final coding was not `chunked`.
    #[error("transfer-encoding without a final chunked coding")]
    UnsupportedTransferEncoding,
    /// The chunked body violated the grammar of RFC 9112 §7.1.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// How the body of one message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all (e.g. a GET without `Content-Length`, a `204`, any response to `HEAD`).
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response without length: the body runs until the server closes the connection.
    UntilClose,
}

/// Finds a header by case-insensitive name; the first occurrence wins.
pub fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// True when a comma-separated header (over all of its occurrences) contains `token`,
/// compared case-insensitively. Used for `Connection: close` and `Expect: 100-continue`.
pub fn header_has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses every `Content-Length` header; all must agree (RFC 9110 §8.6 lets a recipient
/// accept a repeated identical value, and a smuggling-safe parser must reject differing ones).
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, FramingError> {
    let mut found: Option<u64> = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        for part in h.value.split(|&b| b == b',') {
            let v = parse_decimal(trim_ows(part)).ok_or(FramingError::InvalidContentLength)?;
            match found {
                Some(prev) if prev != v => return Err(FramingError::InvalidContentLength),
                _ => found = Some(v),
            }
        }
    }
    Ok(found)
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Returns `Some(true)` when `Transfer-Encoding` ends in `chunked`, `Some(false)` when it is
/// present with another final coding, `None` when absent.
fn transfer_encoding_chunked(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut last: Option<&[u8]> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        for part in h.value.split(|&b| b == b',') {
            let t = trim_ows(part);
            if !t.is_empty() {
                last = Some(t);
            }
        }
    }
    last.map(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Body framing of a request (RFC 9112 §6.3 rules 4–6): chunked wins over `Content-Length`,
/// and no length means no body.
pub fn request_framing(headers: &[httparse::Header<'_>]) -> Result<BodyFraming, FramingError> {
    match transfer_encoding_chunked(headers) {
        Some(true) => return Ok(BodyFraming::Chunked),
        Some(false) => return Err(FramingError::UnsupportedTransferEncoding),
        None => {}
    }
    Ok(match content_length(headers)? {
        Some(0) | None => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
    })
}

/// Body framing of a response (RFC 9112 §6.3 rules 1–3, 7): `HEAD`, `1xx`, `204` and `304`
/// have no body; otherwise chunked, then `Content-Length`, then read-until-close.
pub fn response_framing(
    request_was_head: bool,
    status: u16,
    headers: &[httparse::Header<'_>],
) -> Result<BodyFraming, FramingError> {
    if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(BodyFraming::Empty);
    }
    match transfer_encoding_chunked(headers) {
        Some(true) => return Ok(BodyFraming::Chunked),
        Some(false) => return Ok(BodyFraming::UntilClose),
        None => {}
    }
    Ok(match content_length(headers)? {
        Some(0) => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::UntilClose,
    })
}

/// Whether the connection stays open after this message: HTTP/1.1 defaults to keep-alive
/// unless `Connection: close`; HTTP/1.0 defaults to close unless `Connection: keep-alive`.
pub fn keep_alive(version_minor: u8, headers: &[httparse::Header<'_>]) -> bool {
    if version_minor >= 1 {
        !header_has_token(headers, "connection", "close")
    } else {
        header_has_token(headers, "connection", "keep-alive")
    }
}

/// Longest chunk-size line (digits plus extensions) accepted; bounds memory and time spent on
/// a hostile peer.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest total size of trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Incremental decoder for `Transfer-Encoding: chunked` bodies.
///
/// It is fed whatever bytes have arrived, reports how many it consumed and hands body data to
/// a sink, so callers never need the whole body in memory (the client discards it, the echo
/// server collects it). Bare LF line endings are rejected rather than tolerated: a lenient
/// chunked parser is a classic request-smuggling ingredient, and a test server that accepts
/// what a proxy rejects would hide bugs.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder positioned before the first chunk-size line.
    pub fn new() -> Self {
        Self {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    /// True once the terminating zero-size chunk and its trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes from `input`, passing body data to `sink`, and returns how many bytes
    /// were consumed. It stops early only when the body is complete; bytes after the end
    /// belong to the next message.
    pub fn decode(&mut self, input: &[u8], mut sink: impl FnMut(&[u8])) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => {
                    if let Some(d) = hex_digit(b) {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(FramingError::Chunked("chunk size too large"));
                        }
                        self.size = self.size * 16 + u64::from(d);
                    } else if self.digits == 0 {
                        return Err(FramingError::Chunked("missing chunk size"));
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = ChunkState::Extension;
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else {
                        return Err(FramingError::Chunked("invalid byte in chunk size"));
                    }
                    i += 1;
                }
                ChunkState::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err(FramingError::Chunked("chunk extension too long"));
                    }
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(FramingError::Chunked("bare LF in chunk line"));
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(FramingError::Chunked("expected LF after chunk size"));
                    }
                    i += 1;
                    self.line_len = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    sink(&input[i..i + take]);
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(FramingError::Chunked("expected CRLF after chunk data"));
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(FramingError::Chunked("expected CRLF after chunk data"));
                    }
                    i += 1;
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else if b == b'\n' {
                        return Err(FramingError::Chunked("bare LF in trailers"));
                    } else {
                        self.trailer_len += 1;
                        ChunkState::TrailerLine
                    };
                }
                ChunkState::TrailerLine => {
                    self.trailer_len += 1;
                    if self.trailer_len > MAX_TRAILERS {
                        return Err(FramingError::Chunked("trailers too long"));
                    }
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if b == b'\n' {
                        return Err(FramingError::Chunked("bare LF in trailers"));
                    }
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(FramingError::Chunked("expected LF in trailers"));
                    }
                    i += 1;
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(FramingError::Chunked("expected LF after last chunk"));
                    }
                    i += 1;
                    self.state = ChunkState::Done;
                }
                ChunkState::Done => break,
            }
        }
        Ok(i)
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The reason phrase for a status code the echo server emits (the `http` crate's table); the
/// phrase is informative only, so unknown codes get a generic one.
pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), FramingError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for c in chunks {
            consumed += d.decode(c, |b| out.extend_from_slice(b))?;
        }
        Ok((out, d.is_done(), consumed))
    }

    #[test]
    fn chunked_roundtrip_in_one_piece_and_bytewise() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, done, consumed) = decode_all(&[body]).unwrap();
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
        assert_eq!(&body[consumed..], b"NEXT");

        let pieces: Vec<&[u8]> = body[..body.len() - 4].chunks(1).collect();
        let (out2, done2, _) = decode_all(&pieces).unwrap();
        assert_eq!(out2, out);
        assert!(done2);
    }

    #[test]
    fn chunked_rejects_malformed() {
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"4\nWiki\r\n0\r\n\r\n",
            b"4\r\nWikiXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\n\n",
        ] {
            assert!(decode_all(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn framing_rules() {
        let h = |pairs: &[(&'static str, &'static [u8])]| -> Vec<httparse::Header<'static>> {
            pairs
                .iter()
                .map(|&(name, value)| httparse::Header { name, value })
                .collect()
        };
        assert_eq!(
            request_framing(&h(&[("Content-Length", b"12")])),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            request_framing(&h(&[("transfer-encoding", b"gzip, chunked"), ("content-length", b"3")])),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            request_framing(&h(&[("content-length", b"3"), ("content-length", b"4")])),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(
            request_framing(&h(&[("content-length", b"-1")])),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(request_framing(&h(&[])), Ok(BodyFraming::Empty));
        assert_eq!(response_framing(false, 200, &h(&[])), Ok(BodyFraming::UntilClose));
        assert_eq!(
            response_framing(true, 200, &h(&[("content-length", b"9")])),
            Ok(BodyFraming::Empty)
        );
        assert_eq!(response_framing(false, 204, &h(&[])), Ok(BodyFraming::Empty));
        assert!(keep_alive(1, &h(&[("Connection", b"Keep-Alive")])));
        assert!(!keep_alive(1, &h(&[("Connection", b"foo, close")])));
        assert!(!keep_alive(0, &h(&[])));
        assert!(keep_alive(0, &h(&[("connection", b"keep-alive")])));
    }
}
