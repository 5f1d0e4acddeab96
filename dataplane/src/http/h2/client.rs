//! Per-core HTTP/2 connections to upstreams, shared by every request the core sends there.
//!
//! One endpoint gets as few connections as its streams need: a request takes the first
//! connection to that endpoint with a free stream (below the cluster's
//! `maxConcurrentStreams`, the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, at most
//! [`UPSTREAM_STREAMS_PER_CONN`], and `maxRequestsPerConnection` over its life), and only
//! when none has one is another opened. Requests that arrive while a connection is being opened wait for that one instead of each
//! opening its own. Each connection's frames are driven by a task on this worker; the pool
//! learns from that task when the connection ends (GOAWAY, reset, EOF) and stops handing it
//! out. Nothing is shared with other cores and no lock is taken: the `RefCell`s are borrowed
//! only between awaits.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
use h2::client::SendRequest;
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use std::sync::Arc;

use super::io;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::tls::io::MaybeTls;
use crate::tls::outbound::ClientTls;

/// Stream window per upstream stream, and for the whole connection. Larger than HTTP/2's
/// 64 KiB default so one stream can fill a fast link; the bound on buffered bytes per stream.
pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection-level receive window of a client connection (see `server`).
pub(crate) const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams one upstream connection carries at once before the pool opens another (gRPC
/// servers' usual `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub(crate) const UPSTREAM_STREAMS_PER_CONN: u32 = 100;
/// Connection-level receive window of an upstream connection: every stream's window at once.
/// The connection is shared by the calls of many clients, and a call whose client reads slowly
/// holds its stream window unread; with a smaller connection window a few such calls would
/// exhaust it and stall every other call on the connection. What the proxy holds stays bounded
/// by the stream windows.
pub(crate) const UPSTREAM_CONNECTION_WINDOW: u32 = STREAM_WINDOW * UPSTREAM_STREAMS_PER_CONN;
/// `h2`'s budget for small DATA frames received and not yet read, in its units (256 bytes less
/// each frame's payload). `h2` ends the connection with `GOAWAY(ENHANCE_YOUR_CALM)` past it, and
/// its default (half the connection window) is spent by one read of a few thousand gRPC
/// messages of a few bytes, each in its own frame: a server stream of small messages would end
/// the connection and every call sharing it. This covers a megabyte of empty gRPC messages
/// (5-byte frames) received at once; the relay takes frames off `h2` as they arrive
/// (`bodies::h2_to_h2`), so they are held that way only for the moment of one read.
pub(crate) const SMALL_FRAME_BUDGET: usize = CONNECTION_WINDOW as usize / 5 * 256;

/// One HTTP/2 connection to an upstream endpoint.
#[derive(Debug)]
pub(crate) struct H2Conn {
    send: SendRequest<Bytes>,
    /// Streams this core has open on it.
    active: Cell<u32>,
    /// Streams it has carried.
    requests: Cell<u32>,
    /// Set by the connection's task when it ends.
    closed: Rc<Cell<bool>>,
    /// Set when it may not take new streams (it reached `maxRequestsPerConnection`).
    retired: Cell<bool>,
    /// When its last stream finished (for the idle timeout).
    idle_since: Cell<Instant>,
    /// The SPIFFE URI the upstream proved, for a mutual TLS connection.
    peer: Option<Box<str>>,
}

impl H2Conn {
    fn usable(&self, max_streams: u32) -> bool {
        !self.closed.get()
            && !self.retired.get()
            && self.active.get() < max_streams.min(UPSTREAM_STREAMS_PER_CONN)
            && (self.active.get() as usize) < self.send.current_max_send_streams()
    }
}

/// A stream slot on a pooled connection, held for the life of one exchange.
#[derive(Debug)]
pub(crate) struct Lease {
    conn: Rc<H2Conn>,
    /// Whether the connection had carried a request before this one.
    pub(crate) reused: bool,
}

impl Lease {
    /// The connection's request handle (clone it to open the stream).
    pub(crate) fn sender(&self) -> SendRequest<Bytes> {
        self.conn.send.clone()
    }

    /// Marks the connection unusable (it failed a request at the connection level).
    pub(crate) fn poison(&self) {
        self.conn.closed.set(true);
    }
}

/// A stream opened on a pooled connection: its lease, the response to come, and the request
/// body's sending half.
pub(crate) type Opened = (Lease, h2::client::ResponseFuture, h2::SendStream<Bytes>);

/// Why opening a stream failed: the failure to answer with, or the try's deadline.
#[derive(Debug)]
pub(crate) enum OpenFailed {
    Failed(ProxyError),
    TimedOut,
}

/// Leases a stream slot to endpoint `endpoint` of a cluster within `wait` and sends the request
/// head on it, counting the connection in the worker's and the endpoint's statistics. `mtls`
/// names the service when the endpoint is served by another proxy and the hop is mutual TLS.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    worker: &crate::worker::Worker,
    cluster: &ringmesh_api::snapshot::Cluster,
    state: &crate::lb::ClusterState,
    endpoint: (usize, SocketAddr),
    mtls: Option<crate::tls::outbound::Target<'_>>,
    wait: Duration,
    request: http::Request<()>,
    end_of_stream: bool,
) -> Result<Opened, OpenFailed> {
    use crate::telemetry::stats::inc;
    // The TLS config is asked for only when a new connection is opened: a request on a pooled
    // connection touches neither the snapshot nor the config's reference count.
    let config = || worker.tls_client();
    let tls = mtls.as_ref().map(|target| Mtls {
        host: target.host,
        config: &config,
    });
    let limits = super::upstream::conn_limits(cluster);
    let breakers = worker.breakers(cluster, state);
    let lease = match super::bodies::within(
        wait,
        worker.h2pool.lease(endpoint.1, limits, tls, &breakers, &worker.stats),
    )
    .await
    {
        Ok(Ok(l)) => l,
        // The cluster's maxConnections kept a new connection from opening: no connect failed.
        Ok(Err(e)) if e.kind == ErrorKind::Overflow => return Err(OpenFailed::Failed(e)),
        Ok(Err(e)) => {
            inc(&worker.stats.upstream_cx_connect_fail);
            inc(&state.endpoints[endpoint.0].cx_connect_fail);
            return Err(OpenFailed::Failed(e));
        }
        Err(_) => return Err(OpenFailed::TimedOut),
    };
    if lease.reused {
        inc(&worker.stats.upstream_cx_reused);
    } else {
        inc(&worker.stats.upstream_cx_total);
    }
    if let Some(target) = &mtls {
        if !target.accepts(lease.conn.peer.as_deref()) {
            worker.stats.log_limit.log("mtls-peer", || {
                tracing::warn!(upstream = %endpoint.1, peer = lease.conn.peer.as_deref().unwrap_or("-"), "upstream's identity is not in the DestinationRule's subjectAltNames")
            });
            return Err(OpenFailed::Failed(ProxyError::new(
                ErrorKind::TlsHandshakeFailed,
                Side::Upstream,
                "upstream's identity is not in subjectAltNames",
            )));
        }
    }
    match lease.sender().send_request(request, end_of_stream) {
        Ok((response, send)) => Ok((lease, response, send)),
        Err(_) => {
            lease.poison();
            Err(OpenFailed::Failed(if lease.reused {
                ProxyError::reused_conn_dead()
            } else {
                crate::http::forward::UPSTREAM_RESET
            }))
        }
    }
}

impl Lease {
    /// What a response head that failed with `e` means for the request; a failure of the
    /// connection itself takes the connection out of the pool.
    pub(crate) fn head_failed(&self, e: &h2::Error) -> ProxyError {
        let connection_failed = e.is_io() || e.is_go_away();
        if connection_failed {
            self.poison();
        }
        if e.reason() == Some(h2::Reason::REFUSED_STREAM) || (self.reused && connection_failed) {
            // Never processed by the upstream (RFC 9113 §8.7): safe to send again.
            ProxyError::reused_conn_dead()
        } else {
            crate::http::forward::UPSTREAM_RESET
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let left = self.conn.active.get().saturating_sub(1);
        self.conn.active.set(left);
        if left == 0 {
            self.conn.idle_since.set(Instant::now());
        }
    }
}

/// A hop in mutual TLS: the service host (the server name sent) and how to get this core's
/// client config, asked for only when a connection is opened.
pub(crate) struct Mtls<'a> {
    pub(crate) host: &'a str,
    pub(crate) config: &'a dyn Fn() -> Result<Arc<rustls::ClientConfig>, crate::tls::configs::ConfigError>,
}

type Connecting = Shared<LocalBoxFuture<'static, Result<Rc<H2Conn>, ProxyError>>>;

/// Limits a cluster puts on its HTTP/2 connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Streams per connection (`maxConcurrentStreams`).
    pub(crate) max_streams: u32,
    /// Streams over a connection's life (`maxRequestsPerConnection`).
    pub(crate) max_requests: Option<u32>,
    /// TCP connect timeout.
    pub(crate) connect_timeout: Duration,
    /// TCP keep-alive on the socket.
    pub(crate) keepalive: Option<ringmesh_api::snapshot::TcpKeepalive>,
}

/// Connections are kept apart by endpoint and by whether they are mutual TLS (a rotation does
/// not matter: a connection stays authenticated as it was when opened).
type PoolKey = (SocketAddr, bool);

/// One worker's HTTP/2 upstream connections.
#[derive(Default)]
pub(crate) struct H2Pool {
    conns: RefCell<HashMap<PoolKey, Vec<Rc<H2Conn>>>>,
    connecting: RefCell<HashMap<PoolKey, Connecting>>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("endpoints", &self.conns.borrow().len())
            .finish()
    }
}

impl H2Pool {
    /// A stream slot on a connection to `addr`, opening one if none has room; over mutual TLS
    /// with `tls` (the client config and the service host).
    pub(crate) async fn lease(
        &self,
        addr: SocketAddr,
        limits: ConnLimits,
        tls: Option<Mtls<'_>>,
        breakers: &crate::cluster::breaker::Breakers<'_>,
        stats: &crate::telemetry::stats::WorkerStats,
    ) -> Result<Lease, ProxyError> {
        use crate::telemetry::stats::inc;
        let key = (addr, tls.is_some());
        // Bounded: each round either returns or awaits a connection attempt that ends.
        for _ in 0..4 {
            if let Some(lease) = self.take(key, limits) {
                return Ok(lease);
            }
            let pending = self.connecting.borrow().get(&key).cloned();
            // The request that starts a connection counts its handshake; those that wait for
            // it share the outcome without counting it again.
            let counts = pending.is_none() && key.1;
            let attempt = match pending {
                Some(p) => p,
                None => {
                    // A new connection needs a place under the cluster's maxConnections; none
                    // left: refused at once (HTTP/2 requests do not queue for a connection).
                    let Some(slot) = breakers.try_connection() else {
                        return Err(breakers.connection_overflow());
                    };
                    let tls = match &tls {
                        None => None,
                        Some(m) => match (m.config)() {
                            Ok(config) => Some((config, m.host.to_string())),
                            Err(e) => {
                                inc(&stats.security.tls_client_handshake_failed);
                                stats
                                    .log_limit
                                    .log("mtls-client", || tracing::warn!(upstream = %addr, "outbound mTLS: {e}"));
                                return Err(ProxyError::new(
                                    ErrorKind::ConnectFailed,
                                    Side::Upstream,
                                    "no workload certificate for mTLS to the upstream",
                                ));
                            }
                        },
                    };
                    let fut = connect(addr, limits.connect_timeout, limits.keepalive, tls, slot)
                        .boxed_local()
                        .shared();
                    self.connecting.borrow_mut().insert(key, fut.clone());
                    fut
                }
            };
            let result = attempt.await;
            self.connecting.borrow_mut().remove(&key);
            if counts {
                match &result {
                    Ok(_) => inc(&stats.security.tls_client_handshakes),
                    Err(e) if e.kind == ErrorKind::TlsHandshakeFailed => {
                        inc(&stats.security.tls_client_handshake_failed)
                    }
                    Err(_) => {}
                }
            }
            let conn = result?;
            {
                let mut conns = self.conns.borrow_mut();
                let list = conns.entry(key).or_default();
                if !list.iter().any(|c| Rc::ptr_eq(c, &conn)) {
                    list.retain(|c| !c.closed.get());
                    list.push(conn);
                }
            }
        }
        self.take(key, limits).ok_or(ProxyError::new(
            ErrorKind::UpstreamReset,
            Side::Upstream,
            "no HTTP/2 connection to the upstream could take the stream",
        ))
    }

    fn take(&self, key: PoolKey, limits: ConnLimits) -> Option<Lease> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&key)?;
        list.retain(|c| !c.closed.get());
        let conn = list.iter().find(|c| c.usable(limits.max_streams))?.clone();
        let requests = conn.requests.get() + 1;
        conn.requests.set(requests);
        if limits.max_requests.is_some_and(|m| requests >= m) {
            conn.retired.set(true);
        }
        conn.active.set(conn.active.get() + 1);
        Some(Lease {
            reused: requests > 1,
            conn,
        })
    }

    /// Closes connections without streams for longer than `max_idle`, and retired ones whose
    /// streams are done (dropping the last request handle ends the connection with GOAWAY).
    pub(crate) fn evict_idle(&self, max_idle: Duration) {
        let mut conns = self.conns.borrow_mut();
        for list in conns.values_mut() {
            list.retain(|c| {
                !c.closed.get()
                    && !(c.active.get() == 0 && (c.retired.get() || c.idle_since.get().elapsed() >= max_idle))
            });
        }
        conns.retain(|_, l| !l.is_empty());
    }
}

/// Pings the upstream every `PING_INTERVAL`; returns when a ping goes unanswered for
/// `PING_TIMEOUT` (an upstream that vanished without a FIN or RST: its streams would otherwise
/// wait for their timeouts, and new ones would keep coming to it). Without a ping handle it
/// never returns.
async fn keep_alive(ping: Option<h2::PingPong>) {
    use super::server::{PING_INTERVAL, PING_TIMEOUT};
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        monoio::time::sleep(PING_INTERVAL).await;
        match monoio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection itself ended: its task notices.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Connects (with mutual TLS when `tls` is given) and completes the HTTP/2 handshake; the
/// connection's task runs on this worker.
async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<ringmesh_api::snapshot::TcpKeepalive>,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    slot: crate::cluster::breaker::ConnSlot,
) -> Result<Rc<H2Conn>, ProxyError> {
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => {
            return Err(ProxyError::new(
                ErrorKind::ConnectFailed,
                Side::Upstream,
                "upstream connect failed",
            ))
        }
        Err(_) => {
            return Err(ProxyError::new(
                ErrorKind::ConnectTimeout,
                Side::Upstream,
                "upstream connect timed out",
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    crate::cluster::pool::set_keepalive(std::os::fd::AsRawFd::as_raw_fd(&stream), keepalive.as_ref());
    match tls {
        None => start(addr, timeout, MaybeTls::Plain(io::compat(stream)), None, slot).await,
        Some((config, host)) => {
            let name = ServerName::try_from(host)
                .unwrap_or_else(|_| ServerName::try_from("mesh.invalid").expect("a valid DNS name"));
            let connect = tokio_rustls::TlsConnector::from(config).connect(name, io::compat(stream));
            match monoio::time::timeout(timeout.max(crate::tls::inbound::CLIENT_HANDSHAKE_TIMEOUT), connect).await {
                Ok(Ok(tls)) => {
                    let peer = crate::tls::outbound::peer_of(&tls);
                    start(addr, timeout, MaybeTls::Tls(Box::new(tls)), peer, slot).await
                }
                Ok(Err(e)) => {
                    tracing::info!(upstream = %addr, "outbound mTLS handshake failed: {e}");
                    Err(ProxyError::new(
                        ErrorKind::TlsHandshakeFailed,
                        Side::Upstream,
                        "upstream mTLS handshake failed",
                    ))
                }
                Err(_) => Err(ProxyError::new(
                    ErrorKind::TlsHandshakeFailed,
                    Side::Upstream,
                    "upstream mTLS handshake timed out",
                )),
            }
        }
    }
}

/// The HTTP/2 handshake over a connected stream, and the connection's task.
async fn start(
    addr: SocketAddr,
    timeout: Duration,
    stream: MaybeTls<ClientTls>,
    peer: Option<Box<str>>,
    slot: crate::cluster::breaker::ConnSlot,
) -> Result<Rc<H2Conn>, ProxyError> {
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
        .max_header_list_size(super::server::MAX_HEADER_LIST)
        .data_frame_budget(SMALL_FRAME_BUDGET)
        .enable_push(false)
        .handshake::<_, Bytes>(stream);
    let (send, connection) = match monoio::time::timeout(timeout, handshake).await {
        Ok(Ok(x)) => x,
        // The peer answered the preface with something else: not an HTTP/2 server.
        Ok(Err(_)) | Err(_) => {
            return Err(ProxyError::new(
                ErrorKind::ConnectFailed,
                Side::Upstream,
                "upstream HTTP/2 handshake failed",
            ))
        }
    };
    let closed = Rc::new(Cell::new(false));
    let done = closed.clone();
    monoio::spawn(async move {
        // The connection counts under its cluster's maxConnections until its task ends.
        let _slot = slot;
        let mut connection = connection;
        let ping = connection.ping_pong();
        let ended = {
            let run = std::pin::pin!(&mut connection);
            let alive = std::pin::pin!(keep_alive(ping));
            match futures_util::future::select(run, alive).await {
                futures_util::future::Either::Left((r, _)) => Some(r),
                futures_util::future::Either::Right(((), _)) => None,
            }
        };
        match ended {
            Some(Err(e)) => tracing::debug!(upstream = %addr, "HTTP/2 upstream connection ended: {e}"),
            Some(Ok(())) => {}
            None => {
                tracing::info!(upstream = %addr, "HTTP/2 upstream did not answer a keep-alive ping; connection dropped")
            }
        }
        done.set(true);
    });
    Ok(Rc::new(H2Conn {
        send,
        active: Cell::new(0),
        requests: Cell::new(0),
        closed,
        retired: Cell::new(false),
        idle_since: Cell::new(Instant::now()),
        peer,
    }))
}
