//! One downstream (client) connection: its socket and buffers, reading request heads, skipping
//! request bodies that are answered locally, and writing local replies.
//!
//! Owned by the connection loop (`proxy`) and lent to `forward` for the length of one request.
//! Reads land in the connection's `BytesMut`; a head is split off as `Bytes` without a copy.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;

use super::body::{self, BodyError};
use super::h1::{self as encode, BodyFraming, H1Error, HeadLimits, RequestHead, RequestParser};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::tls::inbound::ServerTls;
use crate::tls::io::RentIo;
use crate::tls::InboundConn;
use crate::worker::Worker;

/// Largest request body read and thrown away when a request is answered locally; larger
/// bodies make the proxy close the connection instead.
const MAX_DISCARD: u64 = 64 * 1024;

/// A client connection's byte stream: a plain socket, or mutual TLS on an inbound listener.
///
/// An enum rather than a type parameter, so the HTTP/1.1 path is compiled once; the plain
/// socket keeps its direct sends ([`ClientIo::write_all_direct`]) and its `splice` tunnels.
pub(crate) enum ClientIo {
    /// Plaintext.
    Tcp(TcpStream),
    /// TLS, through the poll-based stream `tokio-rustls` drives (boxed: a TLS session is
    /// large, and plaintext connections should not carry its room).
    Tls(Box<RentIo<ServerTls>>),
}

impl std::fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientIo::Tcp(s) => write!(f, "Tcp({})", s.as_raw_fd()),
            ClientIo::Tls(_) => f.write_str("Tls"),
        }
    }
}

impl ClientIo {
    pub(crate) fn tls(stream: ServerTls) -> Self {
        ClientIo::Tls(Box::new(RentIo::new(stream)))
    }

    /// Writes all of `buf`: on a plain socket with one direct `send` where it takes it
    /// (`http::send`), over TLS through the cipher.
    pub(crate) async fn write_all_direct<B: IoBuf + 'static>(&mut self, buf: B) -> (io::Result<usize>, B) {
        match self {
            ClientIo::Tcp(s) => {
                let fd = s.as_raw_fd();
                super::send::write_all(s, fd, buf).await
            }
            ClientIo::Tls(t) => t.write_all(buf).await,
        }
    }

    /// Sets `TCP_NODELAY` on the socket under it.
    pub(crate) fn set_nodelay(&self) {
        let _ = match self {
            ClientIo::Tcp(s) => s.set_nodelay(true),
            ClientIo::Tls(_) => Ok(()),
        };
    }
}

impl AsyncReadRent for ClientIo {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientIo::Tcp(s) => s.read(buf).await,
            ClientIo::Tls(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientIo::Tcp(s) => s.readv(buf).await,
            ClientIo::Tls(t) => t.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for ClientIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientIo::Tcp(s) => s.write(buf).await,
            ClientIo::Tls(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientIo::Tcp(s) => s.writev(buf).await,
            ClientIo::Tls(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientIo::Tcp(s) => s.flush().await,
            ClientIo::Tls(t) => t.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ClientIo::Tcp(s) => s.shutdown().await,
            ClientIo::Tls(t) => t.shutdown().await,
        }
    }
}

/// One downstream connection's socket and buffers.
pub(crate) struct Downstream {
    pub(crate) stream: ClientIo,
    pub(crate) peer: SocketAddr,
    /// On an inbound listener: the local port and the peer's mTLS identity (authorization).
    pub(crate) inbound: Option<Arc<InboundConn>>,
    /// How requests pick their virtual host (by `Host`, or as a captured connection's).
    pub(crate) route_by: crate::capture::RouteBy,
    /// Bytes read from the client and not yet consumed.
    pub(crate) buf: BytesMut,
    /// Reused buffer for heads written to the client.
    pub(crate) out: BytesMut,
    /// The longest silence between reads of the current request's body
    /// (`limits.requestBodyTimeout`, set per request).
    pub(crate) body_timeout: Duration,
    /// What `buf` and `out` hold, charged to the worker's `limits.maxBufferBytes` share.
    pub(crate) charge: BufferCharge,
}

/// The bytes one client connection's buffers hold, charged to its worker's
/// `downstream_buffered_bytes` (the `limits.maxBufferBytes` budget, checked at accept) and
/// given back when the connection ends. Updated where buffers are taken, grown or dropped
/// ([`Downstream::account`]), not on every read of a streamed body: a body's reads reuse the
/// buffer the last update saw, or grow it by one read, and the next update settles it.
#[derive(Debug)]
pub(crate) struct BufferCharge {
    worker: Rc<Worker>,
    charged: usize,
}

impl BufferCharge {
    /// Nothing charged yet, to `worker`.
    pub(crate) fn new(worker: Rc<Worker>) -> Self {
        BufferCharge { worker, charged: 0 }
    }

    fn set(&mut self, bytes: usize) {
        let total = &self.worker.stats.downstream_buffered_bytes;
        total.set(total.get() - self.charged as u64 + bytes as u64);
        self.charged = bytes;
    }
}

impl Drop for BufferCharge {
    fn drop(&mut self) {
        self.set(0);
    }
}

impl Downstream {
    /// Charges what the connection's buffers hold now (`BufferCharge`).
    pub(crate) fn account(&mut self) {
        self.charge.set(self.buf.capacity() + self.out.capacity());
    }

    /// Reads until a whole head is parsed. `Ok(None)`: the client closed or idled out before
    /// sending a byte of a new request.
    pub(crate) async fn read_head(
        &mut self,
        limits: HeadLimits,
        idle: Duration,
        header_timeout: Duration,
    ) -> Result<Option<(RequestHead, Bytes)>, ProxyError> {
        let mut parser = RequestParser::new(limits);
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                match parser.parse(&self.buf) {
                    Ok(Some(head)) => {
                        let bytes = self.buf.split_to(head.len()).freeze();
                        return Ok(Some((head, bytes)));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(h1_error(e)),
                }
                deadline.get_or_insert_with(|| Instant::now() + header_timeout);
            }
            let read = match deadline {
                Some(d) => {
                    // The buffer a half-sent head waits with is charged before the wait: a
                    // slow client holds it for as long as it likes.
                    body::make_room(&mut self.buf);
                    self.account();
                    body::read_more(
                        &mut self.stream,
                        &mut self.buf,
                        d.saturating_duration_since(Instant::now()),
                    )
                    .await
                }
                // Between requests: wait with no buffer held.
                None if self.buf.is_empty() => self.read_idle(idle).await,
                None => body::read_more(&mut self.stream, &mut self.buf, idle).await,
            };
            match read {
                Ok(0) => {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(ProxyError::new(
                            ErrorKind::BadRequest { status: 400 },
                            Side::Downstream,
                            "client closed mid-head",
                        ))
                    };
                }
                Ok(_) => self.account(),
                Err(BodyError::Idle) if deadline.is_some() => {
                    return Err(ProxyError::new(
                        ErrorKind::RequestHeaderTimeout,
                        Side::Downstream,
                        "request header timeout",
                    ));
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Waits up to `idle` for the client's next bytes while holding no buffer, then reads them
    /// into a fresh one; as [`body::read_more`] otherwise. An idle keep-alive connection
    /// costs its task and its socket, nothing more: a read posted to the ring (or parked on
    /// epoll) would pin its buffer for the whole wait. Over TLS the wait stays a read (rustls
    /// may hold decrypted bytes the socket no longer shows).
    pub(crate) async fn read_idle(&mut self, idle: Duration) -> Result<usize, BodyError> {
        let ClientIo::Tcp(s) = &mut self.stream else {
            return body::read_more(&mut self.stream, &mut self.buf, idle).await;
        };
        let deadline = Instant::now() + idle;
        loop {
            // Both allocations go back to the allocator for the wait; a pipelined request is
            // never waited for, as it is already in `buf`.
            self.buf = BytesMut::new();
            self.out = BytesMut::new();
            self.charge.set(self.buf.capacity() + self.out.capacity());
            let wait = deadline.saturating_duration_since(Instant::now());
            match monoio::time::timeout(wait, s.readable(true)).await {
                Err(_) => return Err(BodyError::Idle),
                Ok(Err(e)) => return Err(BodyError::Read(e)),
                Ok(Ok(())) => {}
            }
            self.buf.reserve(super::proxy::INITIAL_BUFFER);
            self.charge.set(self.buf.capacity() + self.out.capacity());
            if !super::send::direct() {
                // epoll: the driver knows the socket is readable, so this read is the one
                // `recv` a read after an arrival always was.
                let wait = deadline.saturating_duration_since(Instant::now());
                return body::read_more(s, &mut self.buf, wait).await;
            }
            // io_uring: the bytes are there, so one `recv` takes them, without a second trip
            // through the ring (a submission, a park and a wake-up).
            match super::send::recv_now(s.as_raw_fd(), &mut self.buf) {
                Ok(n) => return Ok(n),
                // Readiness that went stale (another reader cannot exist, but a spurious
                // wake-up can): wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BodyError::Read(e)),
            }
        }
    }

    /// Writes a locally generated response. Errors are ignored: the client is gone.
    pub(crate) async fn local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], close: bool) {
        self.out.clear();
        encode::write_simple_response(status, None, headers, body, close, &mut self.out);
        let out = std::mem::take(&mut self.out);
        let (_, out) = self.stream.write_all(out).await;
        self.out = out;
    }
}

fn h1_error(e: H1Error) -> ProxyError {
    ProxyError::new(
        ErrorKind::BadRequest { status: e.status() },
        Side::Downstream,
        e.reason(),
    )
}

/// After a local answer the request body (if unread) must be consumed to find the next
/// request; small bodies are read and dropped, anything else closes the connection.
pub(crate) async fn finish_request_body(conn: &mut Downstream, head: &RequestHead, idle: Duration) -> bool {
    // A client waiting for `100 Continue` may or may not send its body after a final answer
    // (RFC 9110 §10.1.1), so where its next request starts is unknown: close.
    if !head.connection().keep_alive || head.awaits_continue() {
        return false;
    }
    match head.framing() {
        BodyFraming::None | BodyFraming::Length(0) => true,
        BodyFraming::Length(n) if n > MAX_DISCARD => false,
        // A body trickled in is cut as one streamed to an upstream would be.
        framing => body::discard(
            framing,
            &mut conn.stream,
            &mut conn.buf,
            conn.body_timeout.min(idle),
            MAX_DISCARD,
        )
        .await
        .is_ok(),
    }
}
