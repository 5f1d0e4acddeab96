//! HTTP/2, gRPC and TCP-echo load: *lanes* over connections.
//!
//! HTTP/1.1 (in `conn.rs`) has one request in flight per connection. HTTP/2 multiplexes, so
//! here each connection carries `streams` lanes, and a lane is what an HTTP/1 connection is to
//! the schedule: it has its own due times (lane `l` of `L = connections × streams` at rate `R`
//! is due at `t0 + (l + k·L)/R`), sends request `k` when both its previous response is back
//! and `k` is due, and is charged latency from the due time (coordinated-omission corrected).
//! Closed loop sends the next request as soon as the lane's previous response arrives. The
//! lanes of one connection share it through a [`ConnSlot`]; when it dies the next lane that
//! needs it reconnects, and every lane waiting on that connect counts its own failure.
//!
//! * `h2`: one request per stream, the response body read and flow-control credit returned.
//! * `grpc`: unary calls of `ringmesh.echo.Echo/Unary`; the payload's length is checked.
//! * `grpc-stream`: each lane keeps one `Stream` call open and sends one message per request,
//!   measuring until its echo arrives; a call that ends (e.g. `grpc-status: 14`) is counted by
//!   kind and reopened on the lane's next request.
//! * `tcp`: each lane is its own TCP connection writing `body_size` bytes and reading them back.
//!
//! Errors are counted by kind ([`ErrorKind`]): non-OK `grpc-status`, HTTP/2 stream resets, TLS
//! failures, malformed frames or messages; none of them is recorded in the latency histogram of
//! successes (their time goes to the failures' own), and no input from the server can panic
//! the generator.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::conn::{sleep_unless_stopped, Sleeper, ThreadShared};
use super::stats::ErrorKind;
use crate::grpc::{self, MessageDecoder};

/// What runs on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, one request in flight per connection.
    #[default]
    Http1,
    /// HTTP/2 (h2c prior knowledge on `http://`, ALPN `h2` on `https://`).
    H2,
    /// gRPC unary calls of the echo service over HTTP/2.
    Grpc,
    /// One message at a time on a long-lived bidirectional gRPC stream per lane.
    GrpcStream,
    /// Raw TCP: write `body_size` bytes, read them back.
    Tcp,
}

impl Protocol {
    /// Parses `http1`, `h2`, `grpc`, `grpc-stream` or `tcp`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "http1" | "http/1.1" | "h1" => Self::Http1,
            "h2" | "http2" => Self::H2,
            "grpc" | "grpc-unary" => Self::Grpc,
            "grpc-stream" => Self::GrpcStream,
            "tcp" => Self::Tcp,
            _ => return None,
        })
    }

    /// True for the protocols that run on HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, Self::H2 | Self::Grpc | Self::GrpcStream)
    }
}

/// One URL as the lanes need it.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) addr: SocketAddr,
    pub(crate) uri: Uri,
    pub(crate) server_name: Option<ServerName<'static>>,
}

/// Per-thread, read-only settings of the lanes (built once per thread from the config).
pub(crate) struct ProtoShared {
    pub(crate) protocol: Protocol,
    pub(crate) streams: usize,
    pub(crate) routes: Vec<Route>,
    pub(crate) tls: Option<TlsConnector>,
    pub(crate) method: Method,
    pub(crate) headers: HeaderMap,
    /// h2: the request body; gRPC: one framed `EchoMessage`; TCP: the bytes to echo.
    pub(crate) body: Bytes,
    /// gRPC: the payload length the echo must send back (0: not checked).
    pub(crate) expect_payload: usize,
}

impl std::fmt::Debug for ProtoShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoShared")
            .field("protocol", &self.protocol)
            .field("streams", &self.streams)
            .field("routes", &self.routes)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ProtoShared {
    fn request(&self, route: &Route) -> Request<()> {
        let mut r = Request::new(());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = route.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// The lanes' settings for `config`, or `None` for HTTP/1.1 (which runs in `conn.rs`).
pub(crate) fn build_proto(config: &super::LoadConfig) -> anyhow::Result<Option<ProtoShared>> {
    use anyhow::Context as _;
    if config.protocol == Protocol::Http1 {
        return Ok(None);
    }
    let https = config.target.scheme == crate::target::Scheme::Https;
    let tls = if https {
        let c = crate::tls::client_config(&config.tls, &[crate::tls::ALPN_H2]).context("TLS client settings")?;
        Some(TlsConnector::from(c))
    } else {
        None
    };
    let authority_override = config
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone());
    let mut routes = Vec::new();
    for t in config.targets() {
        let path = match (config.protocol, t.path.as_str()) {
            (Protocol::Grpc, "/") => grpc::UNARY_PATH,
            (Protocol::GrpcStream, "/") => grpc::STREAM_PATH,
            (_, p) => p,
        };
        let authority = authority_override.as_deref().unwrap_or(&t.authority);
        let scheme = if https { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{authority}{path}")
            .parse()
            .with_context(|| format!("building the request URI for {authority}{path}"))?;
        let server_name = if https {
            Some(crate::tls::server_name(t.host())?)
        } else {
            None
        };
        routes.push(Route {
            addr: t.addr,
            uri,
            server_name,
        });
    }
    let payload = Bytes::from(
        b"0123456789abcdef"
            .iter()
            .copied()
            .cycle()
            .take(config.body_size)
            .collect::<Vec<u8>>(),
    );
    let (method, body, expect_payload) = match config.protocol {
        Protocol::Grpc | Protocol::GrpcStream => (Method::POST, grpc::echo_message(&payload), payload.len()),
        _ => (
            Method::from_bytes(config.method.as_bytes()).context("request method")?,
            payload,
            0,
        ),
    };
    Ok(Some(ProtoShared {
        protocol: config.protocol,
        streams: config.streams,
        routes,
        tls,
        method,
        headers: h2_headers(&config.headers, config.protocol)?,
        body,
        expect_payload,
    }))
}

/// Builds the request headers shared by every HTTP/2 request: the user's (minus `Host`, which
/// becomes `:authority`), a `user-agent`, and gRPC's `content-type` and `te: trailers`.
pub(crate) fn h2_headers(user: &[(String, String)], protocol: Protocol) -> anyhow::Result<HeaderMap> {
    let mut h = HeaderMap::new();
    for (name, value) in user {
        if name.eq_ignore_ascii_case("host") {
            continue;
        }
        let name = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())?;
        h.append(name, HeaderValue::from_str(value)?);
    }
    if !h.contains_key(http::header::USER_AGENT) {
        h.insert(http::header::USER_AGENT, HeaderValue::from_static("ringmesh-loadgen"));
    }
    if matches!(protocol, Protocol::Grpc | Protocol::GrpcStream) {
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(h)
}

/// Maps an `h2` error to the kind it is counted as.
fn h2_kind(e: &h2::Error) -> ErrorKind {
    // A stream above the last stream id of the server's GOAWAY (h2 reports the GOAWAY itself
    // for it; a stream the server did take and that was cut later ends in an I/O error), or
    // reset with REFUSED_STREAM: the server did nothing with it.
    let refused_by_goaway = e.is_go_away() && e.is_remote();
    let refused_stream = e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM);
    if refused_by_goaway || refused_stream {
        ErrorKind::Refused
    } else if e.is_reset() {
        ErrorKind::StreamReset
    } else if e.is_io() || e.is_go_away() {
        ErrorKind::Reset
    } else {
        ErrorKind::Malformed
    }
}

/// The `grpc-status` in `h`, if any (`Err` when present but not a number).
fn grpc_status(h: &HeaderMap) -> Option<Result<u32, ErrorKind>> {
    h.get("grpc-status")
        .map(|v| grpc::parse_status(v.as_bytes()).ok_or(ErrorKind::Malformed))
}

type H2Handle = (SendRequest<Bytes>, Rc<Cell<bool>>);

/// One HTTP/2 connection shared by the lanes it carries.
#[derive(Debug, Default)]
struct ConnSlot {
    route: usize,
    current: RefCell<Option<H2HandleDebug>>,
    connecting: Cell<bool>,
}

/// `SendRequest` and the connection's "driver ended" flag (wrapped for `Debug`).
struct H2HandleDebug(H2Handle);

impl std::fmt::Debug for H2HandleDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Handle")
    }
}

async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ErrorKind> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        _ => Err(ErrorKind::Connect),
    }
}

/// The HTTP/2 handshake on a tokio-style stream (the compat-wrapped TCP stream, or TLS on it).
async fn h2_handshake<T>(io: T) -> Result<H2Handle, ErrorKind>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| h2_kind(&e))?;
    let dead = Rc::new(Cell::new(false));
    let flag = dead.clone();
    monoio::spawn(async move {
        let _ = conn.await;
        flag.set(true);
    });
    Ok((send, dead))
}

async fn connect_h2(proto: &ProtoShared, route: &Route, timeout: Duration) -> Result<H2Handle, ErrorKind> {
    let tcp = connect_tcp(route.addr, timeout).await?;
    let io = StreamWrapper::new_with_buffer_size(tcp, 16 * 1024, 16 * 1024);
    match (&proto.tls, &route.server_name) {
        (Some(connector), Some(name)) => {
            // tokio-rustls on the compat wrapper: a poll-based TLS stream that h2 may read and
            // write at the same time.
            let tls = match monoio::time::timeout(timeout, connector.connect(name.clone(), io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) if crate::tls::is_tls_error(&e) => return Err(ErrorKind::Tls),
                Ok(Err(_)) => return Err(ErrorKind::Reset),
                Err(_) => return Err(ErrorKind::Timeout),
            };
            // HTTP/2 over TLS is only spoken after ALPN agreed on it (RFC 9113 §3.2).
            if tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
                return Err(ErrorKind::Tls);
            }
            h2_handshake(tls).await
        }
        _ => h2_handshake(io).await,
    }
}

impl ConnSlot {
    /// A live handle, connecting (once for all lanes) when there is none.
    async fn handle(&self, proto: &ProtoShared, timeout: Duration) -> Result<SendRequest<Bytes>, ErrorKind> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(H2HandleDebug((send, dead))) = &*self.current.borrow() {
                if !dead.get() {
                    return Ok(send.clone());
                }
            }
            if self.connecting.get() {
                // Another lane of this connection is connecting; wait for its outcome.
                if Instant::now() >= deadline {
                    return Err(ErrorKind::Connect);
                }
                monoio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            self.connecting.set(true);
            *self.current.borrow_mut() = None;
            let r = connect_h2(proto, &proto.routes[self.route], timeout).await;
            self.connecting.set(false);
            let (send, dead) = r?;
            *self.current.borrow_mut() = Some(H2HandleDebug((send.clone(), dead)));
            return Ok(send);
        }
    }

    /// Forgets the connection after a connection-level failure.
    fn drop_connection(&self) {
        *self.current.borrow_mut() = None;
    }
}

/// A long-lived gRPC stream call.
struct OpenCall {
    send: SendStream<Bytes>,
    body: RecvStream,
    dec: MessageDecoder,
}

/// One lane's state.
enum Lane {
    H2(Rc<ConnSlot>),
    Grpc(Rc<ConnSlot>),
    GrpcStream(Rc<ConnSlot>, Option<OpenCall>),
    Tcp(usize, Option<TcpStream>),
}

/// Reads a response body to its end, returning flow-control credit as it goes.
async fn drain(body: &mut RecvStream) -> Result<(), ErrorKind> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| h2_kind(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(())
}

fn check_payload(msg: &Bytes, expect: usize) -> Result<(), ErrorKind> {
    let payload = grpc::decode_echo_payload(msg).map_err(|_| ErrorKind::Malformed)?;
    if expect > 0 && payload.len() != expect {
        return Err(ErrorKind::Malformed);
    }
    Ok(())
}

/// Checks gRPC response headers: `Ok(None)` to read messages, `Ok(Some(..))` for a
/// trailers-only answer.
fn grpc_head(resp: &http::Response<RecvStream>) -> Result<Option<Result<u16, ErrorKind>>, ErrorKind> {
    let status = resp.status().as_u16();
    if status != 200 {
        return if status >= 400 {
            Ok(Some(Ok(status)))
        } else {
            Err(ErrorKind::Malformed)
        };
    }
    if let Some(st) = grpc_status(resp.headers()) {
        return Ok(Some(match st? {
            grpc::STATUS_OK if resp.body().is_end_stream() => Err(ErrorKind::Malformed),
            grpc::STATUS_OK => Ok(200),
            _ => Err(ErrorKind::GrpcStatus),
        }));
    }
    let ct = resp.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes());
    if !ct.is_some_and(|v| v.starts_with(grpc::CONTENT_TYPE.as_bytes())) {
        return Err(ErrorKind::Malformed);
    }
    Ok(None)
}

impl Lane {
    fn new(proto: &ProtoShared, slot: &Rc<ConnSlot>, lane: usize) -> Self {
        match proto.protocol {
            Protocol::Grpc => Lane::Grpc(slot.clone()),
            Protocol::GrpcStream => Lane::GrpcStream(slot.clone(), None),
            Protocol::Tcp => Lane::Tcp(lane % proto.routes.len(), None),
            Protocol::H2 | Protocol::Http1 => Lane::H2(slot.clone()),
        }
    }

    /// Connects ahead of the schedule so the first request does not pay for the handshake.
    async fn warm(&mut self, shared: &ThreadShared, proto: &ProtoShared) {
        match self {
            Lane::H2(slot) | Lane::Grpc(slot) | Lane::GrpcStream(slot, _) => {
                let _ = slot.handle(proto, shared.connect_timeout).await;
            }
            Lane::Tcp(route, conn) => {
                *conn = connect_tcp(proto.routes[*route].addr, shared.connect_timeout)
                    .await
                    .ok();
            }
        }
    }

    /// One request/response under the request timeout.
    async fn exchange(&mut self, shared: &ThreadShared, proto: &ProtoShared) -> Result<u16, ErrorKind> {
        match monoio::time::timeout(shared.timeout, self.exchange_inner(shared, proto)).await {
            Ok(r) => r,
            Err(_) => {
                // The stream was abandoned mid-way; a streaming call cannot be resumed.
                if let Lane::GrpcStream(_, call) = self {
                    *call = None;
                }
                if let Lane::Tcp(_, conn) = self {
                    *conn = None;
                }
                Err(ErrorKind::Timeout)
            }
        }
    }

    async fn exchange_inner(&mut self, shared: &ThreadShared, proto: &ProtoShared) -> Result<u16, ErrorKind> {
        match self {
            Lane::H2(slot) => {
                let mut r = h2_exchange(slot, shared, proto).await;
                if matches!(r, Err(ErrorKind::Refused)) {
                    shared.stats.borrow_mut().retried_unprocessed += 1;
                    r = h2_exchange(slot, shared, proto).await;
                }
                if matches!(r, Err(ErrorKind::Reset)) {
                    slot.drop_connection();
                }
                r
            }
            Lane::Grpc(slot) => {
                let mut r = grpc_unary(slot, shared, proto).await;
                if matches!(r, Err(ErrorKind::Refused)) {
                    shared.stats.borrow_mut().retried_unprocessed += 1;
                    r = grpc_unary(slot, shared, proto).await;
                }
                if matches!(r, Err(ErrorKind::Reset)) {
                    slot.drop_connection();
                }
                r
            }
            Lane::GrpcStream(slot, call) => {
                let r = grpc_stream_message(slot, call, shared, proto).await;
                if r.is_err() {
                    *call = None;
                }
                if matches!(r, Err(ErrorKind::Reset)) {
                    slot.drop_connection();
                }
                r
            }
            Lane::Tcp(route, conn) => {
                let r = tcp_exchange(conn, proto.routes[*route].addr, shared, proto).await;
                if r.is_err() {
                    *conn = None;
                }
                r
            }
        }
    }

    /// Ends a streaming call cleanly (half-close) instead of leaving it to a reset.
    fn finish(&mut self) {
        if let Lane::GrpcStream(_, Some(call)) = self {
            let _ = call.send.send_data(Bytes::new(), true);
        }
    }
}

/// A connection ready for a new stream. One on which the server sent `GOAWAY` (a draining
/// proxy) takes no new stream — `h2` refuses it before anything is sent — so the lane opens a
/// new connection instead (counted in `reconnects`, not as a failure); streams already open on
/// the old one finish there.
async fn ready(slot: &ConnSlot, shared: &ThreadShared, proto: &ProtoShared) -> Result<SendRequest<Bytes>, ErrorKind> {
    let send = slot.handle(proto, shared.connect_timeout).await?;
    match send.ready().await {
        Ok(send) => Ok(send),
        Err(e) if e.is_go_away() && e.is_remote() => {
            slot.drop_connection();
            shared.stats.borrow_mut().reconnects += 1;
            let send = slot.handle(proto, shared.connect_timeout).await?;
            send.ready().await.map_err(|e| h2_kind(&e))
        }
        Err(e) => Err(h2_kind(&e)),
    }
}

async fn h2_exchange(slot: &ConnSlot, shared: &ThreadShared, proto: &ProtoShared) -> Result<u16, ErrorKind> {
    let mut send = ready(slot, shared, proto).await?;
    let end = proto.body.is_empty();
    let (resp, mut stream) = send
        .send_request(proto.request(&proto.routes[slot.route]), end)
        .map_err(|e| h2_kind(&e))?;
    if !end {
        stream.send_data(proto.body.clone(), true).map_err(|e| h2_kind(&e))?;
    }
    let resp = resp.await.map_err(|e| h2_kind(&e))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    drain(&mut body).await?;
    Ok(status)
}

async fn grpc_unary(slot: &ConnSlot, shared: &ThreadShared, proto: &ProtoShared) -> Result<u16, ErrorKind> {
    let mut send = ready(slot, shared, proto).await?;
    let (resp, mut stream) = send
        .send_request(proto.request(&proto.routes[slot.route]), false)
        .map_err(|e| h2_kind(&e))?;
    stream.send_data(proto.body.clone(), true).map_err(|e| h2_kind(&e))?;
    let resp = resp.await.map_err(|e| h2_kind(&e))?;
    if let Some(done) = grpc_head(&resp)? {
        return done;
    }
    let mut body = resp.into_body();
    let mut dec = MessageDecoder::new();
    let mut messages = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| h2_kind(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        dec.push(&chunk);
        while let Some(msg) = dec.next_message().map_err(|_| ErrorKind::Malformed)? {
            check_payload(&msg, proto.expect_payload)?;
            messages += 1;
        }
    }
    let trailers = body.trailers().await.map_err(|e| h2_kind(&e))?;
    let status = trailers.as_ref().and_then(grpc_status).ok_or(ErrorKind::Malformed)??;
    if status != grpc::STATUS_OK {
        return Err(ErrorKind::GrpcStatus);
    }
    if messages != 1 || !dec.is_empty() {
        return Err(ErrorKind::Malformed);
    }
    Ok(200)
}

async fn grpc_stream_message(
    slot: &ConnSlot,
    call: &mut Option<OpenCall>,
    shared: &ThreadShared,
    proto: &ProtoShared,
) -> Result<u16, ErrorKind> {
    let c = match call {
        Some(c) => {
            c.send.send_data(proto.body.clone(), false).map_err(|e| h2_kind(&e))?;
            c
        }
        None => {
            let mut send = ready(slot, shared, proto).await?;
            let (resp, mut stream) = send
                .send_request(proto.request(&proto.routes[slot.route]), false)
                .map_err(|e| h2_kind(&e))?;
            stream.send_data(proto.body.clone(), false).map_err(|e| h2_kind(&e))?;
            let resp = resp.await.map_err(|e| h2_kind(&e))?;
            if let Some(done) = grpc_head(&resp)? {
                // A trailers-only answer ends the call.
                return match done {
                    Ok(200) => Err(ErrorKind::Malformed),
                    other => other,
                };
            }
            call.insert(OpenCall {
                send: stream,
                body: resp.into_body(),
                dec: MessageDecoder::new(),
            })
        }
    };
    loop {
        if let Some(msg) = c.dec.next_message().map_err(|_| ErrorKind::Malformed)? {
            check_payload(&msg, proto.expect_payload)?;
            return Ok(200);
        }
        match c.body.data().await {
            Some(Ok(chunk)) => {
                let _ = c.body.flow_control().release_capacity(chunk.len());
                c.dec.push(&chunk);
            }
            Some(Err(e)) => return Err(h2_kind(&e)),
            None => {
                // The server ended the call before answering: its status says why.
                let trailers = c.body.trailers().await.map_err(|e| h2_kind(&e))?;
                return match trailers.as_ref().and_then(grpc_status) {
                    Some(Ok(grpc::STATUS_OK)) | None => Err(ErrorKind::Malformed),
                    Some(Ok(_)) => Err(ErrorKind::GrpcStatus),
                    Some(Err(k)) => Err(k),
                };
            }
        }
    }
}

async fn tcp_exchange(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    shared: &ThreadShared,
    proto: &ProtoShared,
) -> Result<u16, ErrorKind> {
    let stream = match conn {
        Some(s) => s,
        None => conn.insert(connect_tcp(addr, shared.connect_timeout).await?),
    };
    let (res, _) = stream.write_all(proto.body.clone()).await;
    res.map_err(|_| ErrorKind::Reset)?;
    let want = proto.body.len();
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        let (res, buf) = crate::echo::read_more(stream, got).await;
        got = buf;
        match res {
            Ok(0) | Err(_) => return Err(ErrorKind::Reset),
            Ok(_) => {}
        }
        if got.len() > want {
            return Err(ErrorKind::Malformed);
        }
    }
    if got[..] != proto.body[..] {
        return Err(ErrorKind::Malformed);
    }
    Ok(200)
}

/// Runs the lanes of connection `conn_index` (global over all threads) to the end of the run.
pub(crate) async fn run_connection(shared: Rc<ThreadShared>, proto: Arc<ProtoShared>, conn_index: usize, closed: bool) {
    let slot = Rc::new(ConnSlot {
        route: conn_index % proto.routes.len(),
        ..ConnSlot::default()
    });
    let streams = if proto.protocol == Protocol::Tcp {
        1
    } else {
        proto.streams
    };
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let lane_index = conn_index * streams + s;
        let lane = Lane::new(&proto, &slot, conn_index);
        let (shared, proto) = (shared.clone(), proto.clone());
        tasks.push(monoio::spawn(async move {
            if closed {
                closed_lane(&shared, &proto, lane).await;
            } else {
                open_lane(&shared, &proto, lane_index, lane).await;
            }
        }));
    }
    for t in tasks {
        t.await;
    }
}

/// How long after the window closes a lagging lane may still send requests due inside it.
const SEND_GRACE: Duration = Duration::from_millis(50);

async fn open_lane(shared: &ThreadShared, proto: &ProtoShared, index: usize, mut lane: Lane) {
    let plan = shared.plan;
    let mut sleeper = Sleeper::new();
    lane.warm(shared, proto).await;
    let mut k: u64 = 0;
    loop {
        let due = plan.due(index, k);
        if due >= plan.end {
            break;
        }
        if Instant::now() >= plan.end + SEND_GRACE {
            let mut unsent = 0;
            let mut kk = k;
            while plan.due(index, kk) < plan.end {
                if plan.due(index, kk) >= plan.start {
                    unsent += 1;
                }
                kk += 1;
            }
            shared.stats.borrow_mut().unsent += unsent;
            break;
        }
        if !sleep_unless_stopped(&mut sleeper, due, shared).await {
            break;
        }
        k += 1;
        shared.stats.borrow_mut().sent += 1;
        let result = lane.exchange(shared, proto).await;
        shared.record(due, result);
    }
    lane.finish();
}

/// Pause after a failure in closed loop, so a dead target is not hammered in a tight loop.
const CLOSED_LOOP_ERROR_PAUSE: Duration = Duration::from_millis(10);

async fn closed_lane(shared: &ThreadShared, proto: &ProtoShared, mut lane: Lane) {
    let plan = shared.plan;
    monoio::time::sleep_until(plan.t0.into()).await;
    while Instant::now() < plan.end {
        if shared.control.is_stopped() {
            shared.control.note_stopped();
            break;
        }
        let sent_at = Instant::now();
        shared.stats.borrow_mut().sent += 1;
        let result = lane.exchange(shared, proto).await;
        shared.record(sent_at, result);
        if matches!(result, Err(ErrorKind::Connect | ErrorKind::Tls | ErrorKind::Reset)) {
            monoio::time::sleep(CLOSED_LOOP_ERROR_PAUSE).await;
        }
    }
    lane.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse() {
        assert_eq!(Protocol::parse("h2"), Some(Protocol::H2));
        assert_eq!(Protocol::parse("grpc-stream"), Some(Protocol::GrpcStream));
        assert_eq!(Protocol::parse("quic"), None);
        assert!(Protocol::Grpc.is_h2() && !Protocol::Tcp.is_h2());
    }

    #[test]
    fn grpc_headers_are_added_and_host_dropped() {
        let h = h2_headers(
            &[("Host".into(), "x".into()), ("X-A".into(), "1".into())],
            Protocol::Grpc,
        )
        .unwrap();
        assert!(h.get("host").is_none());
        assert_eq!(h.get("x-a").unwrap(), "1");
        assert_eq!(h.get("content-type").unwrap(), "application/grpc");
        assert_eq!(h.get("te").unwrap(), "trailers");
    }
}
