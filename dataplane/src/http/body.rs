//! Streaming a message body from one socket to another, as it arrives.
//!
//! Used in both directions: request bodies client → upstream, response bodies upstream →
//! client. Every read is forwarded at once (a server-sent-events stream is never held back),
//! the bytes travel as `Bytes` split off the read buffer (no copy in user space), and a chunked
//! body is validated and re-framed by a [`Rechunker`]: canonical size lines for the next hop,
//! or no framing at all for an HTTP/1.0 client ([`client_framing`]). When a size line had to be
//! rewritten the pieces go out in one `writev`. Bytes after the end of the body (a pipelined
//! next request) stay in the buffer for the caller.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::{IoBufMut, IoVecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::h1::{BodyFraming, ChunkedDecoder, ChunkedLimits, ChunkedOut, H1Error, Rechunker, Segments};

/// Bytes requested from the kernel per read while streaming a body.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why a body could not be streamed to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading from the source failed (reset).
    #[error("read: {0}")]
    Read(std::io::Error),
    /// The source closed before the body was complete.
    #[error("peer closed before the end of the body")]
    Truncated,
    /// Writing to the destination failed.
    #[error("write: {0}")]
    Write(std::io::Error),
    /// The source was silent for longer than the idle timeout.
    #[error("no body bytes for the idle timeout")]
    Idle,
    /// The chunked framing was invalid.
    #[error("chunked framing: {0}")]
    Framing(H1Error),
}

impl BodyError {
    /// Whether the source side is to blame (as opposed to the destination).
    pub fn is_source(&self) -> bool {
        !matches!(self, BodyError::Write(_))
    }
}

/// Grows `buf` by a read's worth when less than a quarter of one is free: what
/// [`read_more`] does first, for a caller that must know the size before the read is posted.
pub fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Reads more bytes from `src` into `buf` (appending). `Ok(0)` is EOF.
pub async fn read_more<R: AsyncReadRent>(src: &mut R, buf: &mut BytesMut, idle: Duration) -> Result<usize, BodyError> {
    make_room(buf);
    let owned = std::mem::take(buf);
    let len = owned.len();
    match monoio::time::timeout(idle, src.read(owned.slice_mut(len..))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map_err(BodyError::Read)
        }
        Err(_) => Err(BodyError::Idle),
    }
}

/// Writes the first `n` bytes of `buf` to `dst` without copying them.
pub async fn write_prefix<W: AsyncWriteRent>(dst: &mut W, buf: &mut BytesMut, n: usize) -> Result<(), BodyError> {
    if n == 0 {
        return Ok(());
    }
    let out = buf.split_to(n).freeze();
    let (res, _) = dst.write_all(out).await;
    res.map(|_| ()).map_err(BodyError::Write)
}

/// How a response body framed as `framing` goes to a client speaking HTTP/1.`client_minor`.
///
/// An HTTP/1.0 client cannot read chunked coding (RFC 9112 §6.1): it gets the payload alone,
/// delimited by the close of the connection ([`BodyFraming::CloseDelimited`]; the caller writes
/// no framing field and closes after the body). Anything else goes as received.
pub fn client_framing(framing: BodyFraming, client_minor: u8) -> BodyFraming {
    match framing {
        BodyFraming::Chunked if client_minor == 0 => BodyFraming::CloseDelimited,
        other => other,
    }
}

/// Streams one body framed as `framing` from `src` to `dst`; a chunked body leaves with
/// canonical size lines. `buf` holds bytes already read from `src` after the head; on return it
/// holds whatever followed the body. Returns payload bytes.
pub async fn stream<R, W>(
    framing: BodyFraming,
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    idle: Duration,
    chunked_limits: ChunkedLimits,
) -> Result<u64, BodyError>
where
    R: AsyncReadRent,
    W: AsyncWriteRent,
{
    stream_as(framing, framing, src, buf, dst, idle, chunked_limits).await
}

/// [`stream`], with the body leaving framed as `out`: a chunked body with `out` other than
/// `Chunked` is de-chunked (see [`client_framing`]).
pub async fn stream_as<R, W>(
    framing: BodyFraming,
    out: BodyFraming,
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    idle: Duration,
    chunked_limits: ChunkedLimits,
) -> Result<u64, BodyError>
where
    R: AsyncReadRent,
    W: AsyncWriteRent,
{
    match framing {
        BodyFraming::None | BodyFraming::Length(0) => Ok(0),
        BodyFraming::Length(total) => {
            let mut remaining = total;
            loop {
                if !buf.is_empty() {
                    let take = (buf.len() as u64).min(remaining) as usize;
                    write_prefix(dst, buf, take).await?;
                    remaining -= take as u64;
                }
                if remaining == 0 {
                    return Ok(total);
                }
                if read_more(src, buf, idle).await? == 0 {
                    return Err(BodyError::Truncated);
                }
            }
        }
        BodyFraming::Chunked => {
            let mode = match out {
                BodyFraming::Chunked => ChunkedOut::Canonical,
                _ => ChunkedOut::Dechunked,
            };
            let mut rechunker = Rechunker::new(chunked_limits, mode);
            let mut segments = Segments::new();
            let mut payload = 0;
            loop {
                if !buf.is_empty() {
                    let progress = rechunker.feed(buf, &mut segments).map_err(BodyError::Framing)?;
                    payload += progress.payload;
                    write_segments(dst, &mut segments).await?;
                    if progress.done {
                        return Ok(payload);
                    }
                }
                if read_more(src, buf, idle).await? == 0 {
                    return Err(BodyError::Truncated);
                }
            }
        }
        BodyFraming::CloseDelimited => {
            let mut total = 0u64;
            loop {
                if !buf.is_empty() {
                    total += buf.len() as u64;
                    let n = buf.len();
                    write_prefix(dst, buf, n).await?;
                }
                if read_more(src, buf, idle).await? == 0 {
                    return Ok(total);
                }
            }
        }
    }
}

/// Writes what a [`Rechunker`] produced: one slice with `write_all` (the common case), several
/// with `writev`.
async fn write_segments<W: AsyncWriteRent>(dst: &mut W, segments: &mut Segments) -> Result<(), BodyError> {
    match segments.count() {
        0 => Ok(()),
        1 => match segments.drain().next() {
            Some(one) => dst.write_all(one).await.0.map(|_| ()).map_err(BodyError::Write),
            None => Ok(()),
        },
        _ => write_vectored(dst, segments.drain().collect())
            .await
            .map_err(BodyError::Write),
    }
}

/// Most iovecs handed to one `writev` (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Writes all of `bufs`, in order, with as few `writev` calls as the socket allows.
async fn write_vectored<W: AsyncWriteRent>(dst: &mut W, bufs: Vec<Bytes>) -> std::io::Result<()> {
    let mut io = IoSlices::new(bufs);
    while !io.is_empty() {
        let (res, back) = dst.writev(io).await;
        io = back;
        match res {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => io.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Byte strings and the iovecs that point into them, handed to the runtime as one value.
///
/// The runtime keeps what it is given alive until the kernel has finished with it, even when
/// the writing future is dropped (io_uring completes the write later). Owning the `Bytes` here,
/// beside the iovecs, is what makes that hold for the memory the iovecs point at too.
struct IoSlices {
    bufs: Vec<Bytes>,
    /// `bufs[..next]` are written.
    next: usize,
    iovecs: Vec<libc::iovec>,
}

impl IoSlices {
    fn new(bufs: Vec<Bytes>) -> Self {
        let mut io = IoSlices {
            bufs,
            next: 0,
            iovecs: Vec::new(),
        };
        io.point();
        io
    }

    fn is_empty(&self) -> bool {
        self.bufs
            .get(self.next..)
            .is_none_or(|rest| rest.iter().all(Bytes::is_empty))
    }

    /// Drops the first `n` bytes (written) and points the iovecs at what is left.
    fn advance(&mut self, mut n: usize) {
        while let Some(b) = self.bufs.get_mut(self.next) {
            if b.len() > n {
                b.advance(n);
                break;
            }
            n -= b.len();
            self.next += 1;
        }
        self.point();
    }

    fn point(&mut self) {
        self.iovecs.clear();
        let rest = self.bufs.get(self.next..).unwrap_or(&[]);
        self.iovecs.extend(rest.iter().take(MAX_IOVECS).map(|b| libc::iovec {
            iov_base: b.as_ptr().cast_mut().cast(),
            iov_len: b.len(),
        }));
    }
}

// SAFETY: the iovecs point into `bufs`, which this value owns: `Bytes` keeps its bytes at a
// fixed address however the owner moves, and neither vector is touched while the runtime holds
// the value (only `advance`, after it is handed back). Each iovec covers exactly one `Bytes`.
unsafe impl IoVecBuf for IoSlices {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

/// Reads and discards one body (a retried response, or a request answered locally). Gives up
/// with [`BodyError::Truncated`]-like failure once more than `max` bytes were read, so a huge
/// body is not read forever: the caller then closes the connection.
pub async fn discard<R: AsyncReadRent>(
    framing: BodyFraming,
    src: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
    max: u64,
) -> Result<(), BodyError> {
    let mut seen = 0u64;
    let mut remaining = match framing {
        BodyFraming::None | BodyFraming::Length(0) => return Ok(()),
        BodyFraming::Length(n) => Some(n),
        BodyFraming::Chunked | BodyFraming::CloseDelimited => None,
    };
    let mut decoder = ChunkedDecoder::new(ChunkedLimits::default());
    loop {
        if !buf.is_empty() {
            let take = match (framing, remaining) {
                (BodyFraming::Length(_), Some(r)) => (buf.len() as u64).min(r) as usize,
                (BodyFraming::Chunked, _) => {
                    let p = decoder.scan(buf).map_err(BodyError::Framing)?;
                    let _ = buf.split_to(p.consumed);
                    if p.done {
                        return Ok(());
                    }
                    0
                }
                _ => buf.len(),
            };
            let _ = buf.split_to(take);
            seen += take as u64;
            if let Some(r) = remaining.as_mut() {
                *r -= take as u64;
                if *r == 0 {
                    return Ok(());
                }
            }
        }
        if seen > max {
            return Err(BodyError::Read(std::io::Error::other(
                "body larger than the discard limit",
            )));
        }
        if read_more(src, buf, idle).await? == 0 {
            return match framing {
                BodyFraming::CloseDelimited => Ok(()),
                _ => Err(BodyError::Truncated),
            };
        }
    }
}
