//! Incremental chunked transfer-coding decoder, and the few bytes needed to encode it.
//!
//! When a head says `Transfer-Encoding: chunked`, the proxy loop feeds every byte that follows
//! the head to a [`ChunkedDecoder`] as it arrives and forwards what the decoder has validated.
//! The intended hot path is *verbatim forwarding*: [`ChunkedDecoder::scan`] checks the framing
//! byte by byte (chunk sizes, extensions, CRLFs, trailers) and skips over chunk data in bulk,
//! then reports how many input bytes form a valid prefix of the body; the proxy writes exactly
//! those bytes upstream (`split_to(consumed)`), so data is never copied or re-framed, and stops
//! at the end of the body so that a pipelined next message is left in the buffer.
//! [`ChunkedDecoder::decode`] is the same machine but stops after each run of payload bytes and
//! tells where it is, for callers that need the payload itself (e.g. to re-frame a body with a
//! Content-Length, or to inspect it).
//!
//! The decoder holds no buffer: its state is a handful of integers, so a hostile body cannot
//! make it grow. Line lengths and the trailer section are bounded by [`ChunkedLimits`]. It must
//! never allocate, copy payload, or block.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use super::error::H1Error;
use super::head::is_tchar;

/// The last chunk with an empty trailer section: what ends a chunked body we generate.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What follows the payload of every chunk.
pub const CRLF: &[u8] = b"\r\n";

/// Bounds on the framing of one chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedLimits {
    /// Largest chunk size accepted; bigger is [`H1Error::ChunkSizeTooLarge`]. Payload is
    /// streamed, so this is a policy knob, not a memory bound.
    pub max_chunk_size: u64,
    /// Longest chunk-size line (hex digits + extensions, without CRLF).
    pub max_line_bytes: usize,
    /// Largest trailer section (all trailer lines and the final CRLF).
    pub max_trailer_bytes: usize,
}

impl Default for ChunkedLimits {
    /// No chunk size limit, 4 KiB lines (extensions are rare and short), 16 KiB of trailers.
    fn default() -> Self {
        ChunkedLimits {
            max_chunk_size: u64::MAX,
            max_line_bytes: 4096,
            max_trailer_bytes: 16 * 1024,
        }
    }
}

/// Result of [`ChunkedDecoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeStep {
    /// `buf[..consumed]` is validated body (framing and payload) to forward or discard.
    pub consumed: usize,
    /// Payload bytes inside `buf[..consumed]`, possibly empty; at most one contiguous run.
    pub data: Range<usize>,
    /// The final CRLF of the body was consumed; bytes after `consumed` are the next message.
    pub done: bool,
}

/// Result of [`ChunkedDecoder::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanProgress {
    /// `buf[..consumed]` is a validated prefix of the body: forward it verbatim.
    pub consumed: usize,
    /// How many of those bytes are payload (for body size limits and metrics).
    pub payload: u64,
    /// The final CRLF of the body was consumed.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first hex digit of a chunk size.
    SizeFirst,
    /// In the hex digits.
    Size,
    /// Whitespace after the size: only allowed before a `;` extension (BWS).
    SizeWs,
    /// After `;`: optional whitespace, then an extension name.
    ExtBeforeName,
    ExtName,
    /// Whitespace after an extension name: `=` or `;` must follow.
    ExtNameWs,
    /// After `=`: optional whitespace, then a token or quoted string.
    ExtBeforeValue,
    ExtValueToken,
    ExtValueQuoted,
    ExtValueEscape,
    /// Right after a closing quote.
    ExtAfterQuoted,
    /// Whitespace after a value: only `;` may follow.
    ExtAfterWs,
    /// Saw the CR ending the size line.
    SizeLf,
    /// Inside chunk payload; `remaining` bytes left.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// Saw the CR of the final empty line.
    EndLf,
    Done,
    Failed(H1Error),
}

/// Longest trailer name we need to recognise as forbidden ("transfer-encoding").
const NAME_BUF: usize = 17;

/// Chunked body decoder; one per body, created when the head says `chunked`.
///
/// After an error the decoder stays failed and returns the same error: the connection must be
/// closed, since nothing after a framing error can be trusted.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    limits: ChunkedLimits,
    state: State,
    /// Chunk size being read, then payload bytes left in the chunk.
    remaining: u64,
    line_len: usize,
    trailer_len: usize,
    name: [u8; NAME_BUF],
    name_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new(ChunkedLimits::default())
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new(limits: ChunkedLimits) -> Self {
        ChunkedDecoder {
            limits,
            state: State::SizeFirst,
            remaining: 0,
            line_len: 0,
            trailer_len: 0,
            name: [0; NAME_BUF],
            name_len: 0,
        }
    }

    /// True once the whole body, trailers included, has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Validate as much of `buf` as possible, skipping payload in bulk. The hot path for
    /// forwarding a chunked body verbatim: write `buf[..consumed]` on, keep the rest.
    ///
    /// `consumed` may stop short of `buf.len()` only when the body is done.
    pub fn scan(&mut self, buf: &[u8]) -> Result<ScanProgress, H1Error> {
        let mut pos = 0;
        let mut payload = 0u64;
        loop {
            let step = self.step(buf.get(pos..).unwrap_or(&[]))?;
            pos += step.consumed;
            payload += step.data.len() as u64;
            if step.done || step.consumed == 0 || pos >= buf.len() {
                return Ok(ScanProgress {
                    consumed: pos,
                    payload,
                    done: step.done,
                });
            }
        }
    }

    /// Validate framing up to and including at most one run of payload bytes, and say where
    /// that payload is. Call again with the rest of the buffer until `consumed == 0` or `done`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<DecodeStep, H1Error> {
        self.step(buf)
    }

    fn step(&mut self, buf: &[u8]) -> Result<DecodeStep, H1Error> {
        let mut i = 0;
        while i < buf.len() {
            if self.state == State::Data {
                // Payload: skip it in one go; never look at its bytes.
                let avail = (buf.len() - i) as u64;
                let n = self.remaining.min(avail) as usize;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                return Ok(DecodeStep {
                    consumed: i + n,
                    data: i..i + n,
                    done: false,
                });
            }
            if self.state == State::Done {
                break;
            }
            let b = buf[i];
            i += 1;
            if let Err(e) = self.framing_byte(b) {
                self.state = State::Failed(e);
                return Err(e);
            }
            if self.state == State::Done {
                return Ok(DecodeStep {
                    consumed: i,
                    data: i..i,
                    done: true,
                });
            }
        }
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        Ok(DecodeStep {
            consumed: i,
            data: i..i,
            done: self.state == State::Done,
        })
    }

    /// Advance the framing state machine by one byte (anything but payload).
    fn framing_byte(&mut self, b: u8) -> Result<(), H1Error> {
        use State::*;
        if matches!(
            self.state,
            SizeFirst
                | Size
                | SizeWs
                | ExtBeforeName
                | ExtName
                | ExtNameWs
                | ExtBeforeValue
                | ExtValueToken
                | ExtValueQuoted
                | ExtValueEscape
                | ExtAfterQuoted
                | ExtAfterWs
        ) && b != b'\r'
        {
            self.line_len += 1;
            if self.line_len > self.limits.max_line_bytes {
                return Err(H1Error::ChunkLineTooLong);
            }
        } else if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf
        ) {
            self.trailer_len += 1;
            if self.trailer_len > self.limits.max_trailer_bytes {
                return Err(H1Error::TrailersTooLarge);
            }
        }
        self.state = match (self.state, b) {
            (SizeFirst | Size, _) if b.is_ascii_hexdigit() => {
                let d = hex_val(b);
                // Overflow of u64 and the policy limit are the same refusal.
                self.remaining = self
                    .remaining
                    .checked_mul(16)
                    .and_then(|v| v.checked_add(d))
                    .filter(|&v| v <= self.limits.max_chunk_size)
                    .ok_or(H1Error::ChunkSizeTooLarge)?;
                Size
            }
            (SizeFirst, _) => return Err(H1Error::InvalidChunkSize),
            // Whitespace after the size is BWS before an extension, nothing else (RFC 9112 §7.1.1).
            (Size | SizeWs, b' ' | b'\t') => SizeWs,
            (Size | SizeWs | ExtNameWs | ExtAfterQuoted | ExtAfterWs | ExtName | ExtValueToken, b';') => ExtBeforeName,
            (Size | ExtName | ExtValueToken | ExtAfterQuoted, b'\r') => SizeLf,
            (
                Size | SizeWs | ExtBeforeName | ExtName | ExtNameWs | ExtBeforeValue | ExtValueToken | ExtAfterQuoted
                | ExtAfterWs,
                b'\n',
            ) => return Err(H1Error::BareLf),
            (Size | SizeWs, _) => return Err(H1Error::InvalidChunkSize),
            (ExtBeforeName, b' ' | b'\t') => ExtBeforeName,
            (ExtBeforeName | ExtName, _) if is_tchar(b) => ExtName,
            (ExtName | ExtNameWs, b' ' | b'\t') => ExtNameWs,
            (ExtName | ExtNameWs, b'=') => ExtBeforeValue,
            (ExtBeforeValue, b' ' | b'\t') => ExtBeforeValue,
            (ExtBeforeValue, b'"') => ExtValueQuoted,
            (ExtBeforeValue | ExtValueToken, _) if is_tchar(b) => ExtValueToken,
            (ExtValueToken | ExtAfterQuoted | ExtAfterWs, b' ' | b'\t') => ExtAfterWs,
            (ExtValueQuoted, b'"') => ExtAfterQuoted,
            (ExtValueQuoted, b'\\') => ExtValueEscape,
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            (ExtValueQuoted, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff) => ExtValueQuoted,
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            (ExtValueEscape, b'\t' | b' '..=0x7e | 0x80..=0xff) => ExtValueQuoted,
            (
                ExtBeforeName | ExtName | ExtNameWs | ExtBeforeValue | ExtValueToken | ExtValueQuoted | ExtValueEscape
                | ExtAfterQuoted | ExtAfterWs,
                _,
            ) => return Err(H1Error::InvalidChunkExtension),
            (SizeLf, b'\n') => {
                self.line_len = 0;
                if self.remaining == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (SizeLf, _) => return Err(H1Error::InvalidChunkSize),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeFirst,
            (DataCr | DataLf, _) => return Err(H1Error::MissingChunkCrlf),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart, b'\n') => return Err(H1Error::BareLf),
            (TrailerStart, b' ' | b'\t') => return Err(H1Error::ObsFold),
            (TrailerStart | TrailerName, _) if is_tchar(b) => {
                if self.state == TrailerStart {
                    self.name_len = 0;
                }
                if let Some(slot) = self.name.get_mut(self.name_len) {
                    *slot = b.to_ascii_lowercase();
                }
                self.name_len = self.name_len.saturating_add(1);
                TrailerName
            }
            (TrailerName, b':') => {
                // Fields that frame or route a message are only valid in the head; a backend that
                // merged them from trailers would disagree with us (RFC 9110 §6.5.1).
                let name = self.name.get(..self.name_len).unwrap_or(&[]);
                if matches!(name, b"content-length" | b"transfer-encoding" | b"host" | b"trailer") {
                    return Err(H1Error::ForbiddenTrailer);
                }
                TrailerValue
            }
            (TrailerStart | TrailerName, _) => return Err(H1Error::InvalidTrailer),
            // field-value bytes: HTAB, SP, VCHAR, obs-text (same rule as header values).
            (TrailerValue, b'\t' | b' '..=0x7e | 0x80..=0xff) => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b'\n') => return Err(H1Error::BareLf),
            (TrailerValue, _) => return Err(H1Error::InvalidTrailer),
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerLf, _) => return Err(H1Error::InvalidTrailer),
            (EndLf, b'\n') => Done,
            (EndLf, _) => return Err(H1Error::InvalidTrailer),
            (Data | Done, _) => self.state, // not reached: handled by `step`
            (Failed(e), _) => return Err(e),
        };
        Ok(())
    }
}

fn hex_val(b: u8) -> u64 {
    match b {
        b'0'..=b'9' => u64::from(b - b'0'),
        b'a'..=b'f' => u64::from(b - b'a' + 10),
        b'A'..=b'F' => u64::from(b - b'A' + 10),
        _ => 0,
    }
}

/// Write a chunk-size line (`<hex>\r\n`) for `len` payload bytes that the caller writes next,
/// followed by [`CRLF`]. A zero `len` would end the body: use [`LAST_CHUNK`] for that.
pub fn write_chunk_header(len: u64, dst: &mut BytesMut) {
    debug_assert!(len > 0, "a zero-size chunk ends the body; write LAST_CHUNK instead");
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = len;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.reserve(tmp.len() - i + 2);
    dst.put_slice(&tmp[i..]);
    dst.put_slice(CRLF);
}

/// Write one whole chunk (size line, payload, CRLF). Copies `data`: meant for bodies the proxy
/// generates, not for forwarding. Empty `data` writes nothing (it would end the body).
pub fn write_chunk(data: &[u8], dst: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(data.len() as u64, dst);
    dst.reserve(data.len() + 2);
    dst.put_slice(data);
    dst.put_slice(CRLF);
}

#[cfg(test)]
#[path = "chunked_tests.rs"]
mod tests;
