//! Incremental chunked transfer-coding decoder, the re-framer the proxy forwards bodies
//! through, and the few bytes needed to encode chunks.
//!
//! When a head says `Transfer-Encoding: chunked`, the proxy loop hands every byte that follows
//! the head to a [`Rechunker`] as it arrives and writes out what it returns. The rechunker runs
//! a [`ChunkedDecoder`], which checks the framing byte by byte (chunk sizes, extensions, CRLFs,
//! trailers) and skips over chunk data in bulk, and rewrites every size line the next hop could
//! read differently from us: leading zeros (`0005`), extensions (`5;x=…`) and whitespace are
//! dropped, so the next hop only ever sees `<hex digits>\r\n`. Chunk boundaries, payload, CRLFs
//! and the trailer section pass through as received. A body whose size lines are already
//! canonical (what common clients send) comes out as one `Bytes` slice of the read buffer,
//! exactly as it came in; otherwise payload runs stay `Bytes` slices and only new size lines are
//! written. For a peer that cannot read chunked coding (an HTTP/1.0 client) the rechunker strips
//! the framing and the trailers instead ([`ChunkedOut::Dechunked`]). It stops at the end of the
//! body so that a pipelined next message is left in the buffer.
//!
//! [`ChunkedDecoder::scan`] validates without re-framing (to refuse a broken body before it is
//! forwarded, or to skip one); [`ChunkedDecoder::decode`] stops after each run of payload bytes
//! and tells where it is.
//!
//! The decoder holds no buffer: its state is a handful of integers, so a hostile body cannot
//! make it grow. Chunk sizes, line lengths and the trailer section are bounded by
//! [`ChunkedLimits`]. Nothing here blocks; the decoder never allocates or copies, and the
//! rechunker copies only new size lines and payload runs shorter than [`COPY_BELOW`] that follow
//! a rewritten line (cheaper than one more slice to write).

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};

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
    /// streamed, so this is not a memory bound: it keeps sizes within what every next hop can
    /// hold (a size line we forward must not wrap or turn negative in another parser).
    pub max_chunk_size: u64,
    /// Longest chunk-size line (hex digits, extensions and whitespace, without CRLF).
    pub max_line_bytes: usize,
    /// Largest trailer section (all trailer lines and the final CRLF).
    pub max_trailer_bytes: usize,
}

/// Default [`ChunkedLimits::max_chunk_size`]: 2^52 - 1 (13 hex digits, 4 PiB). Far beyond any
/// real chunk; haproxy refuses from about here, nginx from 2^59, and a size of 2^63 or more
/// (`ffffffffffffffff`) reads as negative to a signed 64-bit parser.
pub const MAX_CHUNK_SIZE: u64 = (1 << 52) - 1;

/// Default [`ChunkedLimits::max_line_bytes`]: 1 KiB. Extensions are dropped when forwarding and
/// real ones are a few dozen bytes; the bound also keeps small the size line a [`Rechunker`]
/// holds back until its CRLF arrives.
pub const MAX_CHUNK_LINE: usize = 1024;

impl Default for ChunkedLimits {
    /// [`MAX_CHUNK_SIZE`], [`MAX_CHUNK_LINE`], 16 KiB of trailers.
    fn default() -> Self {
        ChunkedLimits {
            max_chunk_size: MAX_CHUNK_SIZE,
            max_line_bytes: MAX_CHUNK_LINE,
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
    /// Size of the chunk whose size line was read last.
    size: u64,
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
            size: 0,
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
                self.size = self.remaining;
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
    put_size_line(len, dst);
}

/// `<fewest lower-case hex digits>\r\n`.
fn put_size_line(len: u64, dst: &mut BytesMut) {
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

/// What a forwarded chunked body looks like when it leaves a [`Rechunker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedOut {
    /// Chunked, every size line in canonical form: the fewest hex digits and nothing else
    /// (upper- or lower-case digits pass as received). Chunk boundaries, payload and the
    /// validated trailer section are kept.
    Canonical,
    /// The payload alone, for a peer that cannot read chunked coding (an HTTP/1.0 client,
    /// RFC 9112 §6.1), which learns where the body ends from the close of the connection.
    /// Trailers are dropped: there is no place for them.
    Dechunked,
}

/// Payload runs shorter than this that follow a rewritten size line (or another run, when
/// de-chunking) are copied next to it rather than written as a slice of their own: a slice
/// costs an iovec and a reference count, and a body of many tiny chunks would otherwise become
/// thousands of them per read.
pub const COPY_BELOW: usize = 256;

/// What a [`Rechunker`] produced from one buffer: byte strings to write, in order.
///
/// The common case is one slice of the read buffer; it is kept out of the vector so that it
/// costs no allocation.
#[derive(Debug, Default)]
pub struct Segments {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    /// New bytes (rewritten size lines, small copied payload runs) not yet closed into a
    /// segment. Always after `first` and `rest`.
    tail: BytesMut,
}

impl Segments {
    /// Nothing to write.
    pub fn new() -> Self {
        Segments::default()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.tail.is_empty()
    }

    /// Number of byte strings [`Segments::drain`] yields.
    pub fn count(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len() + usize::from(!self.tail.is_empty())
    }

    /// Total bytes to write.
    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.rest.iter().map(Bytes::len).sum::<usize>() + self.tail.len()
    }

    /// Takes the byte strings out in order, leaving this empty.
    pub fn drain(&mut self) -> impl Iterator<Item = Bytes> + '_ {
        self.close_tail();
        self.first.take().into_iter().chain(self.rest.drain(..))
    }

    /// Appends a slice of the input.
    fn push_input(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.is_empty() {
            self.first = Some(b);
        } else if b.len() < COPY_BELOW {
            self.tail.extend_from_slice(&b);
        } else {
            self.close_tail();
            self.rest.push(b);
        }
    }

    fn close_tail(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let t = self.tail.split().freeze();
        if self.first.is_none() {
            self.first = Some(t);
        } else {
            self.rest.push(t);
        }
    }
}

/// Result of [`Rechunker::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedProgress {
    /// Payload bytes passed on by this call (for body size accounting).
    pub payload: u64,
    /// The whole body has been read; the buffer now starts with whatever followed it.
    pub done: bool,
}

/// Validates a chunked body as it streams through the proxy and re-frames it for the next hop
/// (see the module documentation for why). One per body.
///
/// Call [`Rechunker::feed`] with the connection's read buffer each time bytes arrive; it splits
/// off what can go out now, as [`Segments`], and leaves the rest in the buffer. Before the end
/// of the body the rest is an unfinished size line (with the trailer section, for the last
/// chunk), held back until its end shows whether it must be rewritten: at most
/// `max_line_bytes + max_trailer_bytes + 2` bytes. Payload and the CRLF that ends a chunk's
/// payload are never held back, so a stream of events is not delayed. After the end of the
/// body the rest is the next message.
///
/// After an error nothing must be written: the body cannot be trusted, so the caller closes the
/// connection. The decoder stays failed.
#[derive(Debug, Clone)]
pub struct Rechunker {
    decoder: ChunkedDecoder,
    out: ChunkedOut,
    /// Bytes at the front of the caller's buffer that the decoder has already read: the start of
    /// a framing region whose end has not arrived.
    held: usize,
    /// Payload was passed on and the CRLF that ends its chunk was not yet: it comes next.
    crlf_pending: bool,
}

/// Which framing region ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// `[CRLF] size-line CRLF`, before a chunk's data.
    Chunk,
    /// `[CRLF] last-chunk-line CRLF trailers CRLF`: the end of the body.
    Last,
}

/// Where output stands inside one [`Rechunker::feed`]. Offsets are into the buffer as it was
/// passed in; `base` of them have been split off (written or dropped) already.
struct Cursor<'a> {
    buf: &'a mut BytesMut,
    segs: &'a mut Segments,
    base: usize,
    /// `[base, run_end)` goes out as received; deferred so that consecutive kept bytes become
    /// one slice.
    run_end: usize,
}

impl Cursor<'_> {
    fn keep(&mut self, end: usize) {
        self.run_end = end;
    }

    fn flush(&mut self) {
        if self.run_end > self.base {
            let b = self.buf.split_to(self.run_end - self.base).freeze();
            self.segs.push_input(b);
            self.base = self.run_end;
        }
    }

    /// Drops the bytes up to `end` (after writing out what was kept before them).
    fn skip(&mut self, end: usize) {
        self.flush();
        let n = end.saturating_sub(self.base).min(self.buf.len());
        self.buf.advance(n);
        self.base += n;
        self.run_end = self.base;
    }

    /// The not yet split-off bytes `[from, to)`.
    fn get(&self, from: usize, to: usize) -> &[u8] {
        let (from, to) = (from.saturating_sub(self.base), to.saturating_sub(self.base));
        self.buf.get(from..to).unwrap_or(&[])
    }
}

impl Rechunker {
    /// A rechunker at the start of a chunked body.
    pub fn new(limits: ChunkedLimits, out: ChunkedOut) -> Self {
        Rechunker {
            decoder: ChunkedDecoder::new(limits),
            out,
            held: 0,
            crlf_pending: false,
        }
    }

    /// True once the whole body, trailers included, has been consumed.
    pub fn is_done(&self) -> bool {
        self.decoder.is_done()
    }

    /// Validates the body bytes at the front of `buf`, appends what may be written now to
    /// `segs` (payload as slices of `buf`, no copy) and splits it off `buf`. `buf` must start
    /// with the bytes this call left in it last time, followed by new ones.
    pub fn feed(&mut self, buf: &mut BytesMut, segs: &mut Segments) -> Result<FeedProgress, H1Error> {
        let len = buf.len();
        let mut pos = self.held.min(len);
        let mut c = Cursor {
            buf,
            segs,
            base: 0,
            run_end: 0,
        };
        let mut payload = 0u64;
        while pos < len {
            let step = self.decoder.decode(c.get(pos, len))?;
            let data = pos + step.data.start..pos + step.data.end;
            let end = pos + step.consumed;
            if !data.is_empty() {
                self.close_region(&mut c, data.start, Region::Chunk);
                c.keep(data.end);
                self.crlf_pending = true;
                payload += data.len() as u64;
            }
            if step.done {
                self.close_region(&mut c, end, Region::Last);
                c.flush();
                self.held = 0;
                return Ok(FeedProgress { payload, done: true });
            }
            if step.consumed == 0 {
                break;
            }
            pos = end;
        }
        self.pass_chunk_crlf(&mut c, len);
        c.flush();
        self.held = len - c.base;
        Ok(FeedProgress { payload, done: false })
    }

    /// The framing region from the end of the kept bytes to `end` is complete: keep it if its
    /// size line is canonical, else write a canonical one in its place; drop it when
    /// de-chunking.
    fn close_region(&mut self, c: &mut Cursor<'_>, end: usize, kind: Region) {
        if end <= c.run_end {
            // Data continuing a chunk begun in an earlier read: no framing in between.
            return;
        }
        self.pass_chunk_crlf(c, end);
        if self.out == ChunkedOut::Dechunked {
            c.skip(end);
            return;
        }
        let start = c.run_end;
        let region = c.get(start, end);
        // The decoder has checked the region, so the size line ends at its first CR (quoted
        // extension values cannot hold one) and is followed by LF.
        let line_end = start + memchr::memchr(b'\r', region).unwrap_or(0);
        if is_canonical_size(c.get(start, line_end)) {
            c.keep(end);
            return;
        }
        let size = match kind {
            Region::Chunk => self.decoder.size,
            Region::Last => 0,
        };
        c.flush();
        put_size_line(size, &mut c.segs.tail);
        c.skip(line_end + CRLF.len());
        // The trailer section and the final CRLF (for the last chunk) go on as received.
        c.keep(end);
    }

    /// Passes on (or, de-chunking, drops) the CRLF that ends a chunk's payload once the decoder
    /// has read both of its bytes, which it checks to be exactly CRLF.
    fn pass_chunk_crlf(&mut self, c: &mut Cursor<'_>, read_to: usize) {
        if !self.crlf_pending || read_to < c.run_end + CRLF.len() {
            return;
        }
        self.crlf_pending = false;
        match self.out {
            ChunkedOut::Canonical => c.keep(c.run_end + CRLF.len()),
            ChunkedOut::Dechunked => c.skip(c.run_end + CRLF.len()),
        }
    }
}

/// A size line that every parser reads the same way: hex digits only, no leading zero.
fn is_canonical_size(line: &[u8]) -> bool {
    match line {
        [b'0'] => true,
        [b'0', ..] | [] => false,
        _ => line.len() <= 16 && line.iter().all(u8::is_ascii_hexdigit),
    }
}

#[cfg(test)]
#[path = "chunked_tests.rs"]
mod tests;
