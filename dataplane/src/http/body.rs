//! Streaming a message body from one socket to another, as it arrives.
//!
//! Used in both directions: request bodies client → upstream, response bodies upstream →
//! client. Every read is forwarded at once (a server-sent-events stream is never held back),
//! the bytes travel as `Bytes` split off the read buffer (no copy in user space), and a chunked
//! body is validated by the decoder and forwarded verbatim. Bytes after the end of the body
//! (a pipelined next request) stay in the buffer for the caller.

use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::h1::{BodyFraming, ChunkedDecoder, ChunkedLimits, H1Error};

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

/// Reads more bytes from `src` into `buf` (appending). `Ok(0)` is EOF.
pub async fn read_more<R: AsyncReadRent>(src: &mut R, buf: &mut BytesMut, idle: Duration) -> Result<usize, BodyError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
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

/// Streams one body framed as `framing` from `src` to `dst`. `buf` holds bytes already read from
/// `src` after the head; on return it holds whatever followed the body. Returns payload bytes.
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
            let mut decoder = ChunkedDecoder::new(chunked_limits);
            let mut payload = 0;
            loop {
                if !buf.is_empty() {
                    let progress = decoder.scan(buf).map_err(BodyError::Framing)?;
                    payload += progress.payload;
                    write_prefix(dst, buf, progress.consumed).await?;
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
