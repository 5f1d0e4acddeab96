//! The byte streams under and over TLS.
//!
//! rustls is driven by `tokio-rustls` over the same poll-based socket wrapper `h2` uses
//! (`http::h2::io::Compat`), so an HTTP/2 connection over TLS is `h2` on a TLS stream with no
//! other change. [`Replay`] gives the handshake the bytes read while deciding the protocol.
//! [`RentIo`] turns a poll-based stream back into monoio's owned-buffer traits for the HTTP/1.1
//! path (a client that negotiated `http/1.1`); it costs one copy each way beyond what TLS
//! itself does, which only non-mesh HTTP/1.1 clients of an mTLS port pay (proxies speak HTTP/2
//! to each other). [`pipe`] moves bytes both ways for opaque TCP over TLS, where `splice`
//! cannot help because the bytes must pass through the cipher.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub(crate) struct Replay<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Replay<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Replay { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
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

/// A socket `h2` drives, plain or under TLS. One type for both, so that `h2`'s connection code
/// (generic over its stream) and ours are compiled once per side, not twice: with a type
/// parameter the mTLS data path added 0.3 MB of `h2` to the binary, and the code every
/// connection touches spread over more pages (idle RSS). The match per read or write costs
/// nothing next to the syscall behind it.
// The plain socket stays inline (the common case allocates nothing more); the TLS session,
// much larger, is the boxed one.
#[allow(clippy::large_enum_variant)]
pub(crate) enum MaybeTls<T> {
    /// Plaintext (h2c).
    Plain(crate::http::h2::io::Compat),
    /// TLS (boxed: a session is large, and plaintext connections should not carry its room).
    Tls(Box<T>),
}

impl<T> std::fmt::Debug for MaybeTls<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaybeTls::Plain(_) => "Plain",
            MaybeTls::Tls(_) => "Tls",
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
}

/// A poll-based stream behind monoio's owned-buffer traits. Every write is flushed, so a
/// response head handed to it leaves at once (TLS buffers records otherwise).
#[derive(Debug)]
pub(crate) struct RentIo<T> {
    inner: T,
}

impl<T> RentIo<T> {
    pub(crate) fn new(inner: T) -> Self {
        RentIo { inner }
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncReadRent for RentIo<T> {
    async fn read<B: IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        let (ptr, total) = (buf.write_ptr(), buf.bytes_total());
        // SAFETY: monoio's read contract: `write_ptr` is valid for `bytes_total()` bytes that
        // the read may overwrite, and `set_init(n)` then says the first `n` are filled.
        // `ReadBuf` never de-initializes what it was given.
        let slice = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<std::mem::MaybeUninit<u8>>(), total) };
        let mut rb = ReadBuf::uninit(slice);
        let r = poll_fn(|cx| Pin::new(&mut self.inner).poll_read(cx, &mut rb)).await;
        let n = rb.filled().len();
        match r {
            Ok(()) => {
                // SAFETY: `poll_read` filled the first `n` bytes.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        // Not used on this path (heads and bodies are read into one buffer).
        (Err(io::Error::new(io::ErrorKind::Unsupported, "readv over TLS")), buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWriteRent for RentIo<T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: `read_ptr` is valid for `bytes_init()` initialized bytes while we own `buf`.
        let slice = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = match self.inner.write(slice).await {
            Ok(n) => self.inner.flush().await.map(|()| n),
            Err(e) => Err(e),
        };
        (r, buf)
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        let mut total = 0;
        // SAFETY: the iovecs describe memory owned by `buf` for as long as we hold it.
        let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        for v in iovecs {
            // SAFETY: as above, each iovec is valid for `iov_len` bytes.
            let s = unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) };
            if let Err(e) = self.inner.write_all(s).await {
                return (Err(e), buf);
            }
            total += s.len();
        }
        let r = self.inner.flush().await.map(|()| total);
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

/// Size of each direction's copy buffer in [`pipe`]: one TLS record's worth.
const PIPE_BUFFER: usize = 16 * 1024;

/// Moves bytes both ways between `a` and `b` until both directions ended (each shuts down the
/// other side's write half when its reader sees EOF) or nothing moved for `idle`. Returns the
/// bytes moved a → b and b → a.
pub(crate) async fn pipe<A, B>(a: A, b: B, idle: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let last = Cell::new(Instant::now());
    let (ab, ba) = (Cell::new(0u64), Cell::new(0u64));
    let both = async {
        let _ = futures_util::future::join(
            one_way(&mut ar, &mut bw, &last, &ab),
            one_way(&mut br, &mut aw, &last, &ba),
        )
        .await;
    };
    monoio::select! {
        _ = both => {}
        _ = crate::tcp::idle_for(&last, idle) => { tracing::debug!("tls tunnel: idle timeout; closing both sides"); }
    }
    (ab.get(), ba.get())
}

async fn one_way<R, W>(from: &mut R, to: &mut W, last: &Cell<Instant>, moved: &Cell<u64>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PIPE_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        last.set(Instant::now());
        moved.set(moved.get() + n as u64);
    }
}
