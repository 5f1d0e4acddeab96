//! HTTP/2, gRPC and TLS for `ringmesh-echo`.
//!
//! Where it sits: the echo's accept loop hands every connection to [`serve_detected`] (after a
//! TLS handshake with [`serve_tls`] when `--tls` is on). The first bytes decide the protocol,
//! once per connection: the HTTP/2 connection preface means h2 (prior knowledge on a plain
//! port, or after ALPN `h2`), anything else goes to the HTTP/1.1 server in `echo.rs`
//! untouched, so the HTTP/1 hot path pays for one prefix comparison per connection and
//! nothing per request.
//!
//! HTTP/2 is served by `h2` over `monoio-compat`'s `StreamWrapper` (tokio's I/O traits on a
//! monoio stream; the ownership-passing I/O stays underneath). Every stream runs in its own
//! task on the worker's thread, so a delayed response never holds up the others on the same
//! connection. The knobs of the HTTP/1 server apply alike: body size, delay and jitter (on a
//! pooled timerfd, not the millisecond timer wheel), error fraction and the instance header;
//! `/status/NNN`, `/delay/MS`, `/headers` and body echo for `POST`/`PUT`. Requests with a gRPC
//! content type go to the echo service of [`crate::grpc`]; its error fraction answers
//! `grpc-status: 14` (UNAVAILABLE), as an overloaded gRPC server would.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_compat::StreamWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

use crate::echo::{classify_path, read_more, serve_http1_on, Special, WorkerShared, MAX_BODY};
use crate::grpc::{self, MessageDecoder};
use crate::sys::PreciseTimer;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// The full HTTP/2 preface.
    H2,
    /// Anything else: HTTP/1.x (malformed input is answered by the HTTP/1 server).
    Http1,
    /// A strict prefix of the preface (or nothing yet): read more.
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

/// Per-worker state of the HTTP/2 side: built once per worker, read by every stream task.
pub(crate) struct H2Shared {
    /// The configured response body, shared without copying.
    body: Bytes,
    /// `x-ringmesh-instance` value.
    instance: HeaderValue,
    /// Idle timerfds: a stream that must wait borrows one, so thousands of delayed streams do
    /// not each create (and close) a file descriptor.
    timers: RefCell<Vec<PreciseTimer>>,
    /// Set when the server speaks TLS.
    pub(crate) tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for H2Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Shared")
            .field("body_len", &self.body.len())
            .field("instance", &self.instance)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl H2Shared {
    pub(crate) fn new(body: &[u8], instance: &str, tls: Option<TlsAcceptor>) -> Self {
        Self {
            body: Bytes::copy_from_slice(body),
            // validate() rejects control characters, so this only fails on nothing we accept.
            instance: HeaderValue::from_bytes(instance.as_bytes()).unwrap_or(HeaderValue::from_static("echo")),
            timers: RefCell::new(Vec::new()),
            tls,
        }
    }

    /// Sleeps until `deadline` on a pooled precise timer (falling back to the timer wheel).
    async fn sleep_until(&self, deadline: Instant) {
        let pooled = self.timers.borrow_mut().pop();
        let mut timer = match pooled.map_or_else(PreciseTimer::new, Ok) {
            Ok(t) => t,
            Err(_) => {
                monoio::time::sleep_until(deadline.into()).await;
                return;
            }
        };
        if timer.sleep_until(deadline).await.is_ok() {
            self.timers.borrow_mut().push(timer);
        } else {
            monoio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// Replays bytes already read while sniffing, then reads from the inner stream.
#[derive(Debug)]
struct Rewind<T> {
    prefix: Bytes,
    inner: T,
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

fn h2_io(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

/// Completes the TLS handshake, then serves what ALPN chose: `h2`, or HTTP/1.1 for `http/1.1`
/// and ALPN-less clients (HTTP/2 over TLS requires ALPN, RFC 9113 §3.2).
///
/// TLS runs in tokio-rustls on the compat wrapper, the same poll-based stack as h2, because h2
/// reads and writes a connection at the same time and that needs a TLS stream built for it.
pub(crate) async fn serve_tls(stream: TcpStream, acceptor: &TlsAcceptor, shared: &Rc<WorkerShared>) -> io::Result<()> {
    let io = StreamWrapper::new_with_buffer_size(stream, 16 * 1024, 16 * 1024);
    let tls = match monoio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    };
    if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        serve_h2(tls, shared.clone()).await
    } else {
        serve_http1_on(TokioIo(tls), Vec::new(), shared).await
    }
}

/// Reads until the first bytes decide between HTTP/2 and HTTP/1.1, then serves the connection.
pub(crate) async fn serve_detected(mut stream: TcpStream, shared: &Rc<WorkerShared>) -> io::Result<()> {
    let mut rbuf = Vec::with_capacity(8192);
    loop {
        match sniff(&rbuf) {
            Sniff::H2 => {
                let io = Rewind {
                    prefix: Bytes::from(rbuf),
                    inner: StreamWrapper::new_with_buffer_size(stream, 16 * 1024, 16 * 1024),
                };
                return serve_h2(io, shared.clone()).await;
            }
            Sniff::Http1 => return serve_http1_on(stream, rbuf, shared).await,
            Sniff::NeedMore => {
                let (res, buf) = read_more(&mut stream, rbuf).await;
                rbuf = buf;
                if res? == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// Serves one HTTP/2 connection on a tokio-style stream (plain TCP with the sniffed preface
/// replayed, or TLS).
async fn serve_h2<T>(io: T, shared: Rc<WorkerShared>) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut conn = h2::server::Builder::new()
        .max_concurrent_streams(1024)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_io)?;
    while let Some(next) = conn.accept().await {
        let (req, respond) = next.map_err(h2_io)?;
        let shared = shared.clone();
        monoio::spawn(async move {
            // An error here means the client reset the stream or the connection went away:
            // there is nobody left to answer.
            let _ = handle_stream(req, respond, &shared).await;
        });
    }
    Ok(())
}

async fn handle_stream(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    shared: &WorkerShared,
) -> Result<(), h2::Error> {
    let received_at = Instant::now();
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(grpc::CONTENT_TYPE.as_bytes()));
    if is_grpc {
        serve_grpc(req, respond, shared).await
    } else {
        serve_plain(req, respond, shared, received_at).await
    }
}

fn dump_head(req: &Request<RecvStream>) -> Bytes {
    let mut s = format!(
        ":method: {}\n:scheme: {}\n:authority: {}\n:path: {}\n",
        req.method(),
        req.uri().scheme_str().unwrap_or(""),
        req.uri().authority().map_or("", |a| a.as_str()),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    for (name, value) in req.headers() {
        s.push_str(name.as_str());
        s.push_str(": ");
        s.push_str(&String::from_utf8_lossy(value.as_bytes()));
        s.push('\n');
    }
    Bytes::from(s)
}

async fn serve_plain(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    shared: &WorkerShared,
    received_at: Instant,
) -> Result<(), h2::Error> {
    let special = classify_path(req.uri().path());
    let is_head = req.method() == Method::HEAD;
    let echo_body = req.method() == Method::POST || req.method() == Method::PUT;
    let head_dump = (special == Special::Headers).then(|| dump_head(&req));
    let mut body = req.into_body();
    let mut data = BytesMut::new();
    let mut too_big = false;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if echo_body && !too_big {
            if data.len() + chunk.len() > MAX_BODY {
                too_big = true;
            } else {
                data.extend_from_slice(&chunk);
            }
        }
    }
    if too_big {
        respond.send_response(plain_response(413, &shared.h2.instance, 0), true)?;
        return Ok(());
    }
    shared.served.fetch_add(1, Ordering::Relaxed);

    let delay = match special {
        Special::Delay(ms) => Duration::from_millis(ms),
        _ => shared.configured_delay(),
    };
    if !delay.is_zero() {
        shared.h2.sleep_until(received_at + delay).await;
    }
    let status = match special {
        Special::Status(s) => s,
        Special::BadStatus => 400,
        _ if shared.roll_error() => 500,
        _ => 200,
    };
    let out = match head_dump {
        Some(d) => d,
        None if echo_body => data.freeze(),
        None => shared.h2.body.clone(),
    };
    let bodyless = is_head || status == 204 || status == 304 || out.is_empty();
    let mut send = respond.send_response(plain_response(status, &shared.h2.instance, out.len()), bodyless)?;
    if !bodyless {
        send.send_data(out, true)?;
    }
    Ok(())
}

fn plain_response(status: u16, instance: &HeaderValue, len: usize) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("x-ringmesh-instance", instance.clone());
    r
}

fn grpc_headers(instance: &HeaderValue) -> Response<()> {
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
    h.insert("x-ringmesh-instance", instance.clone());
    r
}

fn status_fields(h: &mut HeaderMap, status: u32, message: &'static str) {
    h.insert("grpc-status", HeaderValue::from(status));
    if !message.is_empty() {
        h.insert("grpc-message", HeaderValue::from_static(message));
    }
}

/// Ends a gRPC call: with trailers after response headers were sent, or as a trailers-only
/// response (one HEADERS frame carrying the status) when none were.
fn finish(
    respond: &mut SendResponse<Bytes>,
    send: Option<&mut SendStream<Bytes>>,
    instance: &HeaderValue,
    status: u32,
    message: &'static str,
) -> Result<(), h2::Error> {
    match send {
        Some(s) => {
            let mut t = HeaderMap::new();
            status_fields(&mut t, status, message);
            s.send_trailers(t)
        }
        None => {
            let mut r = grpc_headers(instance);
            status_fields(r.headers_mut(), status, message);
            respond.send_response(r, true).map(|_| ())
        }
    }
}

fn wire_status(e: &grpc::GrpcWireError) -> (u32, &'static str) {
    match e {
        grpc::GrpcWireError::TooLarge(_) => (grpc::STATUS_RESOURCE_EXHAUSTED, "message too large"),
        _ => (grpc::STATUS_INVALID_ARGUMENT, "malformed request message"),
    }
}

async fn serve_grpc(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    shared: &WorkerShared,
) -> Result<(), h2::Error> {
    let instance = &shared.h2.instance;
    let streaming = match req.uri().path() {
        grpc::UNARY_PATH => false,
        grpc::STREAM_PATH => true,
        _ => {
            return finish(
                &mut respond,
                None,
                instance,
                grpc::STATUS_UNIMPLEMENTED,
                "unknown method",
            )
        }
    };
    if req.method() != Method::POST {
        return finish(
            &mut respond,
            None,
            instance,
            grpc::STATUS_UNIMPLEMENTED,
            "gRPC needs POST",
        );
    }
    let mut body = req.into_body();
    let mut dec = MessageDecoder::new();
    let mut send: Option<SendStream<Bytes>> = None;
    loop {
        let Some(chunk) = body.data().await else { break };
        let chunk = chunk?;
        let arrived = Instant::now();
        let _ = body.flow_control().release_capacity(chunk.len());
        dec.push(&chunk);
        loop {
            let msg = match dec.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    let (status, message) = wire_status(&e);
                    return finish(&mut respond, send.as_mut(), instance, status, message);
                }
            };
            let payload = match grpc::decode_echo_payload(&msg) {
                Ok(p) => p,
                Err(e) => {
                    let (status, message) = wire_status(&e);
                    return finish(&mut respond, send.as_mut(), instance, status, message);
                }
            };
            if !streaming {
                // Unary: the request must end here; answer once it does. Whatever followed
                // the one message (a second one, a partial one) is a client error.
                continue_unary(&mut body, &mut dec).await?;
                if !dec.is_empty() {
                    return finish(
                        &mut respond,
                        None,
                        instance,
                        grpc::STATUS_INVALID_ARGUMENT,
                        "unary call with several messages",
                    );
                }
                return answer_unary(respond, shared, payload, arrived).await;
            }
            shared.served.fetch_add(1, Ordering::Relaxed);
            let delay = shared.configured_delay();
            if !delay.is_zero() {
                shared.h2.sleep_until(arrived + delay).await;
            }
            if shared.roll_error() {
                return finish(
                    &mut respond,
                    send.as_mut(),
                    instance,
                    grpc::STATUS_UNAVAILABLE,
                    "ringmesh-echo: injected error",
                );
            }
            let s = match send.as_mut() {
                Some(s) => s,
                None => send.insert(respond.send_response(grpc_headers(instance), false)?),
            };
            s.send_data(grpc::echo_message(reply_payload(&payload, shared)), false)?;
        }
    }
    if !dec.is_empty() {
        return finish(
            &mut respond,
            send.as_mut(),
            instance,
            grpc::STATUS_INVALID_ARGUMENT,
            "request ended inside a message",
        );
    }
    if !streaming {
        return finish(
            &mut respond,
            None,
            instance,
            grpc::STATUS_INVALID_ARGUMENT,
            "unary call without a message",
        );
    }
    finish(&mut respond, send.as_mut(), instance, grpc::STATUS_OK, "")
}

/// The echoed payload: the request's, or the configured body when the request carried none.
fn reply_payload<'a>(payload: &'a Bytes, shared: &'a WorkerShared) -> &'a [u8] {
    if payload.is_empty() {
        &shared.h2.body
    } else {
        payload
    }
}

/// Reads the rest of a unary request body into `dec` (the caller rejects any leftover bytes).
async fn continue_unary(body: &mut RecvStream, dec: &mut MessageDecoder) -> Result<(), h2::Error> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        dec.push(&chunk);
    }
    Ok(())
}

async fn answer_unary(
    mut respond: SendResponse<Bytes>,
    shared: &WorkerShared,
    payload: Bytes,
    arrived: Instant,
) -> Result<(), h2::Error> {
    let instance = &shared.h2.instance;
    shared.served.fetch_add(1, Ordering::Relaxed);
    let delay = shared.configured_delay();
    if !delay.is_zero() {
        shared.h2.sleep_until(arrived + delay).await;
    }
    if shared.roll_error() {
        return finish(
            &mut respond,
            None,
            instance,
            grpc::STATUS_UNAVAILABLE,
            "ringmesh-echo: injected error",
        );
    }
    let mut send = respond.send_response(grpc_headers(instance), false)?;
    send.send_data(grpc::echo_message(reply_payload(&payload, shared)), false)?;
    finish(&mut respond, Some(&mut send), instance, grpc::STATUS_OK, "")
}

/// monoio's owned-buffer I/O over a tokio-style stream, so the HTTP/1 server (written for
/// monoio streams) can run inside a tokio-rustls session. Used sequentially (one read or one
/// write at a time), as the HTTP/1 server does.
#[derive(Debug)]
struct TokioIo<T>(T);

impl<T: AsyncRead + Unpin> AsyncReadRent for TokioIo<T> {
    async fn read<B: IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        // SAFETY: write_ptr..write_ptr+bytes_total is the buffer's writable (possibly
        // uninitialised) region, which ReadBuf only writes to and tracks as it fills.
        let region = unsafe {
            std::slice::from_raw_parts_mut(buf.write_ptr().cast::<std::mem::MaybeUninit<u8>>(), buf.bytes_total())
        };
        let mut rb = ReadBuf::uninit(region);
        let res = std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_read(cx, &mut rb)).await;
        let n = rb.filled().len();
        match res {
            Ok(()) => {
                // SAFETY: ReadBuf initialised and filled exactly n bytes at write_ptr.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWriteRent for TokioIo<T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: read_ptr..read_ptr+bytes_init is the buffer's initialised data.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_write(cx, data)).await;
        // The HTTP/1 server writes whole response batches; push them out now.
        let res = match res {
            Ok(n) => std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_flush(cx))
                .await
                .map(|()| n),
            Err(e) => Err(e),
        };
        (res, buf)
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_flush(cx)).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_shutdown(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preface_is_detected_incrementally() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/2"), Sniff::NeedMore);
        assert_eq!(sniff(PREFACE), Sniff::H2);
        assert_eq!(sniff(&[PREFACE, b"\0\0\x12\x04"].concat()), Sniff::H2);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"PRX"), Sniff::Http1);
    }
}
