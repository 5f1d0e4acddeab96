//! The gRPC wire format of the echo service, shared by `ringmesh-echo` and `ringmesh-loadgen`.
//!
//! The service is `ringmesh.echo.Echo` with a unary method (`/ringmesh.echo.Echo/Unary`) and a
//! bidirectional-streaming one (`/ringmesh.echo.Echo/Stream`); both take and return
//!
//! ```proto
//! message EchoMessage { bytes payload = 1; }
//! ```
//!
//! That message is one length-delimited field, so it is encoded and decoded by hand here: no
//! `protoc`, no code generation and no build script for two functions' worth of protobuf, and
//! no tonic (tokio-bound) on the monoio threads. gRPC messages travel in HTTP/2 DATA frames with
//! a 5-byte prefix (compressed flag, big-endian length); [`MessageDecoder`] reassembles them
//! from arbitrary chunks. Every decoder here returns an error on malformed input and never
//! panics, because both ends parse bytes a peer sent.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Path of the unary method.
pub const UNARY_PATH: &str = "/ringmesh.echo.Echo/Unary";
/// Path of the bidirectional-streaming method.
pub const STREAM_PATH: &str = "/ringmesh.echo.Echo/Stream";
/// `content-type` of gRPC requests and responses.
pub const CONTENT_TYPE: &str = "application/grpc";
/// `grpc-status` OK.
pub const STATUS_OK: u32 = 0;
/// `grpc-status` INVALID_ARGUMENT (an undecodable request message).
pub const STATUS_INVALID_ARGUMENT: u32 = 3;
/// `grpc-status` RESOURCE_EXHAUSTED (a message over the size limit).
pub const STATUS_RESOURCE_EXHAUSTED: u32 = 8;
/// `grpc-status` UNIMPLEMENTED (unknown method).
pub const STATUS_UNIMPLEMENTED: u32 = 12;
/// `grpc-status` UNAVAILABLE: what the echo's error fraction answers, as a real overloaded
/// server would.
pub const STATUS_UNAVAILABLE: u32 = 14;

/// Largest gRPC message accepted (gRPC's usual default receive limit is 4 MiB; the echo's
/// body limit is larger, so keep to that).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Why bytes could not be read as gRPC echo messages.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GrpcWireError {
    /// The compressed flag was set; no `grpc-encoding` is negotiated, so this is a peer error.
    #[error("compressed gRPC message without a negotiated encoding")]
    Compressed,
    /// The prefix flag byte was neither 0 nor 1.
    #[error("invalid gRPC message flag {0}")]
    BadFlag(u8),
    /// The length prefix exceeds [`MAX_MESSAGE`].
    #[error("gRPC message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The message is not a valid `EchoMessage`.
    #[error("malformed protobuf: {0}")]
    Protobuf(&'static str),
    /// The stream ended inside a message.
    #[error("stream ended inside a gRPC message")]
    Truncated,
}

/// Length of the protobuf encoding of `EchoMessage { payload }` (field 1 omitted when empty,
/// as proto3 does for default values).
fn protobuf_len(payload_len: usize) -> usize {
    if payload_len == 0 {
        0
    } else {
        1 + varint_len(payload_len as u64) + payload_len
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Appends one length-prefixed gRPC message carrying `EchoMessage { payload }` to `out`.
pub fn encode_echo_message(payload: &[u8], out: &mut BytesMut) {
    let len = protobuf_len(payload.len());
    out.reserve(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    if !payload.is_empty() {
        out.put_u8(0x0a); // field 1, wire type 2 (length-delimited)
        put_varint(out, payload.len() as u64);
        out.put_slice(payload);
    }
}

/// One framed echo message as `Bytes` (for a DATA frame).
pub fn echo_message(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    encode_echo_message(payload, &mut out);
    out.freeze()
}

fn get_varint(buf: &mut &[u8]) -> Result<u64, GrpcWireError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(GrpcWireError::Protobuf("truncated varint"));
        };
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(GrpcWireError::Protobuf("varint overflows 64 bits"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(GrpcWireError::Protobuf("varint longer than 10 bytes"))
}

/// Decodes the protobuf body of an `EchoMessage` and returns its payload. Unknown fields are
/// skipped (protobuf's forward compatibility); a repeated field 1 keeps the last value, as
/// protobuf parsers do.
pub fn decode_echo_payload(msg: &Bytes) -> Result<Bytes, GrpcWireError> {
    let mut cur: &[u8] = msg;
    let mut payload = Bytes::new();
    while !cur.is_empty() {
        let key = get_varint(&mut cur)?;
        let field = key >> 3;
        if field == 0 {
            return Err(GrpcWireError::Protobuf("field number 0"));
        }
        match key & 7 {
            0 => {
                get_varint(&mut cur)?;
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if cur.len() < n {
                    return Err(GrpcWireError::Protobuf("truncated fixed-width field"));
                }
                cur = &cur[n..];
            }
            2 => {
                let len = get_varint(&mut cur)?;
                if len > cur.len() as u64 {
                    return Err(GrpcWireError::Protobuf("length-delimited field past the end"));
                }
                let len = len as usize;
                if field == 1 {
                    let start = msg.len() - cur.len();
                    payload = msg.slice(start..start + len);
                }
                cur = &cur[len..];
            }
            _ => return Err(GrpcWireError::Protobuf("unsupported wire type")),
        }
    }
    Ok(payload)
}

/// Reassembles length-prefixed gRPC messages from DATA-frame chunks of any size.
#[derive(Debug, Default)]
pub struct MessageDecoder {
    buf: BytesMut,
}

impl MessageDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True when no partial message is buffered (so a stream may end here).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next complete message body (without its prefix), if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, GrpcWireError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        match self.buf[0] {
            0 => {}
            1 => return Err(GrpcWireError::Compressed),
            f => return Err(GrpcWireError::BadFlag(f)),
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(GrpcWireError::TooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// Parses a `grpc-status` header value (a decimal number).
pub fn parse_status(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_any_chunking() {
        let big = vec![7u8; 300];
        let mut wire = BytesMut::new();
        encode_echo_message(b"hello", &mut wire);
        encode_echo_message(b"", &mut wire);
        encode_echo_message(&big, &mut wire);
        for chunk in [1, 2, 5, 7, 1000] {
            let mut d = MessageDecoder::new();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                d.push(c);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(decode_echo_payload(&m).unwrap());
                }
            }
            assert!(d.is_empty());
            assert_eq!(
                got,
                vec![Bytes::from_static(b"hello"), Bytes::new(), Bytes::from(big.clone())]
            );
        }
    }

    #[test]
    fn known_encoding_matches_protobuf() {
        // protoc --encode of `payload: "hi"` is 0a 02 68 69.
        assert_eq!(&echo_message(b"hi")[..], &[0, 0, 0, 0, 4, 0x0a, 2, b'h', b'i']);
    }

    #[test]
    fn unknown_fields_are_skipped_and_bad_input_is_an_error() {
        // field 2 varint 150, field 3 fixed32, then payload "x".
        let m = Bytes::from_static(&[0x10, 0x96, 0x01, 0x1d, 1, 2, 3, 4, 0x0a, 1, b'x']);
        assert_eq!(decode_echo_payload(&m).unwrap(), Bytes::from_static(b"x"));
        for bad in [
            &[0x0a, 5, 1][..],
            &[0x0a],
            &[0x0b],
            &[0x00, 1],
            &[0x08, 0xff, 0xff],
            &[0x09, 1, 2],
        ] {
            assert!(decode_echo_payload(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
        let mut d = MessageDecoder::new();
        d.push(&[1, 0, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(GrpcWireError::Compressed));
        let mut d = MessageDecoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_message(), Err(GrpcWireError::TooLarge(_))));
    }

    #[test]
    fn status_values_parse() {
        assert_eq!(parse_status(b"0"), Some(0));
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(b"-1"), None);
        assert_eq!(parse_status(b"99999999999"), None);
    }
}
