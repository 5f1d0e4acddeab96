//! The byte stream under `h2`, and telling HTTP/2 from HTTP/1.1 by the first bytes.
//!
//! `h2` reads and writes through tokio's poll-based traits; monoio's sockets pass owned
//! buffers. `monoio-compat`'s `StreamWrapper` bridges the two (the pairing DESIGN.md checked),
//! and [`Rewind`] replays the bytes the connection loop already read while deciding the
//! protocol, so the HTTP/1 path reads no byte twice and the HTTP/2 path loses none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Buffer sizes of the compat wrapper, each way. A frame larger than this is read or written
/// in several calls; 16 KiB is HTTP/2's default largest frame.
const COMPAT_BUFFER: usize = 16 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// The whole HTTP/2 preface: h2c with prior knowledge.
    H2,
    /// Anything else: HTTP/1.x (malformed input is answered by the HTTP/1 parser).
    Http1,
    /// A strict prefix of the preface, or nothing yet: read more.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub(crate) fn sniff(buf: &[u8]) -> Sniff {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        Sniff::Http1
    } else if n == PREFACE.len() {
        Sniff::H2
    } else {
        Sniff::NeedMore
    }
}

/// A socket as `h2` drives it.
pub(crate) type Compat = StreamWrapper<TcpStream>;

/// Wraps a socket for `h2`.
pub(crate) fn compat(stream: TcpStream) -> Compat {
    StreamWrapper::new_with_buffer_size(stream, COMPAT_BUFFER, COMPAT_BUFFER)
}

/// Replays bytes already read, then reads from the inner stream.
#[derive(Debug)]
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_decides() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/2"), Sniff::NeedMore);
        assert_eq!(sniff(PREFACE), Sniff::H2);
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(sniff(&more), Sniff::H2);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"PRI * HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"P"), Sniff::NeedMore);
    }
}
