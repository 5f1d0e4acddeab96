//! L4 TCP proxy for opaque traffic: pick an endpoint, connect, then move bytes with `splice`.
//!
//! Bytes go socket → pipe → socket inside the kernel and never enter user space (zero copy);
//! the worker waits for readiness and splices without blocking (see `splice_until_eof`).
//! Each direction runs until its reader sees EOF, then shuts down the write side of the other
//! socket, so a client that half-closes still gets the rest of the response. A watchdog closes
//! the pair when no byte moved in either direction for the idle timeout.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use ringmesh_api::snapshot::{ListenerKind, Snapshot, WeightedClusters};

use std::sync::Arc;

use crate::capture::TcpDest;
use crate::cluster::pool::{self, UpstreamConn};
use crate::http::downstream::ClientIo;
use crate::lb;
use crate::telemetry::istio::{TcpConn, TcpEvent};
use crate::telemetry::stats::inc;
use crate::tls::inbound::ServerTls;
use crate::tls::io::MaybeTls;
use crate::tls::outbound::ClientTls;
use crate::tls::InboundConn;

/// One end of a tunnel that goes through TLS on at least one side.
pub(crate) type TunnelEnd<T> = MaybeTls<T>;
use crate::worker::Worker;

/// Connect timeout of a passthrough (Istio's default for every cluster).
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle timeout of a passthrough pair (Istio's TCP proxy default).
const PASSTHROUGH_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The name a passthrough goes by in logs (Istio's cluster name for it).
const PASSTHROUGH: &str = "PassthroughCluster";

/// Largest amount moved by one splice call: the default pipe capacity (16 pages).
const SPLICE_CHUNK: usize = 64 * 1024;

/// Serves one accepted TCP connection. `initial` holds bytes already read from the client (by
/// protocol detection); they go upstream first, before the splice.
///
/// The destination comes from the *current* snapshot (the listener of this name, or the
/// captured service), so a reload that changes a TCP route applies to new connections at once.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    client: ClientIo,
    peer: SocketAddr,
    dest: TcpDest<'_>,
    initial: BytesMut,
    inbound: Option<Arc<InboundConn>>,
) {
    inc(&worker.stats.tcp_cx_total);
    // A drain lets the connection run to its end, up to the drain timeout.
    let _hold = crate::drain::DrainHold::new(&worker);
    let view = worker.snapshot.get();
    if let Some(conn) = &inbound {
        // A denied connection is closed before any upstream is dialled.
        if crate::authz::check(&worker, &view.snapshot.security.authz, conn, peer, None).is_some_and(|v| v.denied()) {
            return;
        }
    }
    // Istio's TCP metrics: a connection counts as opened and closed under the cluster and
    // endpoint it reached, or with `UF` when none could be reached.
    let istio = |cluster: Option<usize>, endpoint: Option<usize>, flag, event| {
        let conn = TcpConn {
            cluster,
            endpoint,
            inbound: inbound.as_deref(),
            flag,
        };
        worker.stats.istio.record_tcp(&view.snapshot, &conn, event);
    };
    let unreachable = |cluster: Option<usize>| {
        istio(cluster, None, Some("UF"), TcpEvent::Opened);
        istio(cluster, None, Some("UF"), TcpEvent::Closed { sent: 0, received: 0 });
    };
    // A place under the cluster's `maxConnections`, or the connection is closed at once (Envoy's
    // `upstream_cx_overflow`, flag `UO`): opaque TCP has no request to queue.
    let slot = |idx: usize| {
        let (cluster, state) = (&view.snapshot.clusters[idx], &view.clusters[idx]);
        let breakers = worker.breakers(cluster, state);
        let slot = breakers.try_connection();
        if slot.is_none() {
            let _ = breakers.connection_overflow();
            istio(Some(idx), None, Some("UO"), TcpEvent::Opened);
            istio(Some(idx), None, Some("UO"), TcpEvent::Closed { sent: 0, received: 0 });
            worker.stats.log_limit.log("tcp UO", || {
                tracing::info!(%peer, cluster = %cluster.name, "tcp: the cluster's maxConnections is reached; closing client")
            });
        }
        slot
    };
    let (mut upstream, mtls, idle_timeout, label, (cluster_idx, endpoint_idx)) = match dest {
        TcpDest::Passthrough(addr) => {
            inc(&worker.stats.upstream_cx_total);
            match pool::connect(addr, PASSTHROUGH_CONNECT_TIMEOUT, None, None).await {
                Ok(conn) => (conn, None, PASSTHROUGH_IDLE_TIMEOUT, PASSTHROUGH, (None, None)),
                Err(e) => {
                    unreachable(None);
                    inc(&worker.stats.upstream_cx_connect_fail);
                    worker.stats.log_limit.log("tcp passthrough UF", || {
                        tracing::info!(%peer, upstream = %addr, "tcp passthrough: connect failed ({}); closing client", e.context)
                    });
                    return;
                }
            }
        }
        TcpDest::Endpoint(addr) => {
            let Some(target) = view.snapshot.capture.endpoints.get(&addr).copied() else {
                tracing::debug!(%peer, upstream = %addr, "tcp: the endpoint is gone from the current config; closing");
                return;
            };
            let cluster = view.snapshot.cluster(target.cluster);
            let state = &view.clusters[target.cluster.0 as usize];
            let Some(slot) = slot(target.cluster.0 as usize) else {
                return;
            };
            inc(&worker.stats.upstream_cx_total);
            match pool::connect(
                addr,
                cluster.connect_timeout,
                cluster.pool.tcp_keepalive.as_ref(),
                Some(slot),
            )
            .await
            {
                Ok(conn) => (
                    conn,
                    crate::tls::outbound::Target::of(cluster, target.endpoint),
                    PASSTHROUGH_IDLE_TIMEOUT,
                    cluster.name.as_str(),
                    (Some(target.cluster.0 as usize), Some(target.endpoint)),
                ),
                Err(e) => {
                    unreachable(Some(target.cluster.0 as usize));
                    inc(&worker.stats.upstream_cx_connect_fail);
                    if let Some(ep) = state.endpoints.get(target.endpoint) {
                        inc(&ep.cx_connect_fail);
                    }
                    lb::record_outcome(cluster, state, target.endpoint, lb::health::Outcome::LocalFailure);
                    worker.stats.log_limit.log("tcp UF", || {
                        tracing::info!(%peer, upstream = %addr, cluster = %cluster.name, "tcp: connect failed ({}); closing client", e.context)
                    });
                    return;
                }
            }
        }
        TcpDest::Listener(_) | TcpDest::Service(_) => {
            let Some((clusters, idle_timeout)) = tcp_destination(&view.snapshot, dest) else {
                tracing::warn!(%peer, ?dest, "tcp destination is gone from the current config; closing");
                return;
            };
            let cluster_id = clusters.pick(worker.rng.next_u64() as u32);
            let cluster = view.snapshot.cluster(cluster_id);
            let state = &view.clusters[cluster_id.0 as usize];
            let hash = Some(hash_key(peer));
            // Try each endpoint at most once on connect failure, like Envoy's default of one
            // reattempt per host; opaque TCP has nothing else to retry.
            let mut upstream = None;
            let mut mtls = None;
            let mut chosen = None;
            let mut tried = lb::TriedEndpoints::default();
            for _ in 0..cluster.endpoints.len().min(3) {
                let Some(i) = lb::pick(cluster, state, &worker.rng, hash, &tried) else {
                    break;
                };
                tried.insert(i);
                let ep = &cluster.endpoints[i];
                let Some(slot) = slot(cluster_id.0 as usize) else {
                    return;
                };
                inc(&worker.stats.upstream_cx_total);
                match pool::connect(
                    ep.address,
                    cluster.connect_timeout,
                    cluster.pool.tcp_keepalive.as_ref(),
                    Some(slot),
                )
                .await
                {
                    Ok(conn) => {
                        lb::record_outcome(cluster, state, i, lb::health::Outcome::Connected);
                        upstream = Some(conn);
                        mtls = crate::tls::outbound::Target::of(cluster, i);
                        chosen = Some(i);
                        break;
                    }
                    Err(e) => {
                        inc(&worker.stats.upstream_cx_connect_fail);
                        inc(&state.endpoints[i].cx_connect_fail);
                        lb::record_outcome(cluster, state, i, lb::health::Outcome::LocalFailure);
                        tracing::debug!(%peer, upstream = %ep.address, cluster = %cluster.name, "tcp connect failed: {e}");
                    }
                }
            }
            let Some(upstream) = upstream else {
                unreachable(Some(cluster_id.0 as usize));
                worker.stats.log_limit.log(
                    "tcp UF",
                    || tracing::info!(%peer, cluster = %cluster.name, "tcp: no upstream reachable; closing client"),
                );
                return;
            };
            (
                upstream,
                mtls,
                idle_timeout,
                cluster.name.as_str(),
                (Some(cluster_id.0 as usize), chosen),
            )
        }
    };
    istio(cluster_idx, endpoint_idx, None, TcpEvent::Opened);
    client.set_nodelay();
    let early = initial.len() as u64;
    let (sent, received) = if mtls.is_some() || matches!(client, ClientIo::Tls(_)) {
        // Boxed: only TLS tunnels carry its state, not every TCP connection's task.
        match Box::pin(tls_tunnel(&worker, client, upstream, mtls, initial, idle_timeout)).await {
            Some(moved) => moved,
            None => {
                istio(
                    cluster_idx,
                    endpoint_idx,
                    None,
                    TcpEvent::Closed { sent: 0, received: 0 },
                );
                return;
            }
        }
    } else {
        let ClientIo::Tcp(client) = client else { return };
        if early > 0 {
            let (res, _) = upstream.write.write_all(initial).await;
            if let Err(e) = res {
                tracing::debug!(%peer, cluster = label, "tcp: writing the detected bytes upstream failed: {e}");
                istio(
                    cluster_idx,
                    endpoint_idx,
                    None,
                    TcpEvent::Closed { sent: 0, received: 0 },
                );
                return;
            }
        }
        pipe_pair(client, upstream, idle_timeout).await
    };
    let sent = sent + early;
    worker
        .stats
        .tcp_bytes_sent
        .set(worker.stats.tcp_bytes_sent.get() + sent);
    worker
        .stats
        .tcp_bytes_received
        .set(worker.stats.tcp_bytes_received.get() + received);
    istio(cluster_idx, endpoint_idx, None, TcpEvent::Closed { sent, received });
}

/// TLS on either side of a tunnel: the bytes pass through the cipher, so they are copied, not
/// spliced. `mtls`: the upstream is another proxy, reached over mutual TLS. `None` when the
/// handshake failed (counted and logged by `tls::outbound`).
async fn tls_tunnel(
    worker: &Worker,
    client: ClientIo,
    upstream: UpstreamConn,
    mtls: Option<crate::tls::outbound::Target<'_>>,
    initial: BytesMut,
    idle: Duration,
) -> Option<(u64, u64)> {
    let up = upstream.read.reunite(upstream.write).ok()?;
    let _ = up.set_nodelay(true);
    let up = crate::http::h2::io::compat(up);
    let up = if let Some(target) = mtls {
        MaybeTls::Tls(Box::new(crate::tls::outbound::connect(worker, up, target).await?))
    } else {
        MaybeTls::Plain(up)
    };
    let client = match client {
        ClientIo::Tcp(s) => MaybeTls::Plain(crate::http::h2::io::compat(s)),
        ClientIo::Tls(t) => MaybeTls::Tls(Box::new(t.into_inner())),
    };
    Some(tls_pipe(client, up, initial, idle).await)
}

/// Sends the bytes already read from the client, then copies both ways.
async fn tls_pipe(
    client: TunnelEnd<ServerTls>,
    mut upstream: TunnelEnd<ClientTls>,
    initial: BytesMut,
    idle: Duration,
) -> (u64, u64) {
    use tokio::io::AsyncWriteExt;
    if !initial.is_empty() && upstream.write_all(&initial).await.is_err() {
        return (0, 0);
    }
    crate::tls::io::pipe(client, upstream, idle).await
}

/// A connection's consistent-hash key: its source IP, hashed as the HTTP path hashes it for
/// `useSourceIp` (the address's octets, not its text), so a client keeps its endpoint across
/// HTTP and TCP listeners of one cluster, and no string is allocated per connection.
fn hash_key(peer: SocketAddr) -> u64 {
    lb::source_ip_hash(peer.ip())
}

/// The clusters and idle timeout of a listener's or a captured service's TCP traffic.
fn tcp_destination<'a>(snapshot: &'a Snapshot, dest: TcpDest<'_>) -> Option<(&'a WeightedClusters, Duration)> {
    let (clusters, idle) = match dest {
        TcpDest::Listener(name) => snapshot
            .listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| match &l.kind {
                ListenerKind::Tcp { clusters, idle_timeout }
                | ListenerKind::Detect {
                    clusters, idle_timeout, ..
                } => Some((clusters, *idle_timeout)),
                _ => None,
            })?,
        TcpDest::Service(key) => snapshot
            .capture
            .services
            .get(&key)
            .map(|s| (&s.clusters, s.idle_timeout))?,
        TcpDest::Passthrough(_) | TcpDest::Endpoint(_) => return None,
    };
    (clusters.total() > 0).then_some((clusters, idle))
}

/// Resolves once `last` (the time bytes last moved, updated by the tunnel's directions) is
/// `idle` in the past: a tunnel's idle watchdog.
pub(crate) async fn idle_for(last: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = last.get() + idle;
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        monoio::time::sleep(deadline - now).await;
    }
}

/// Moves bytes both ways until both directions finished or the pair was idle too long.
/// Returns (client → upstream, upstream → client) byte counts.
pub async fn pipe_pair(client: TcpStream, upstream: UpstreamConn, idle_timeout: Duration) -> (u64, u64) {
    // The slot is held until the tunnel closes: the connection counts under its cluster's
    // `maxConnections` for its whole life.
    let UpstreamConn {
        read,
        write,
        slot: _slot,
        ..
    } = upstream;
    let Ok(upstream) = read.reunite(write) else {
        // The halves were split from one socket in `pool::connect`; they always reunite.
        tracing::warn!("tcp: upstream halves did not reunite; closing");
        return (0, 0);
    };
    if let Err(e) = nonblocking(&client).and_then(|()| nonblocking(&upstream)) {
        tracing::warn!("tcp: cannot make the sockets non-blocking: {e}; closing");
        return (0, 0);
    }
    let last = Cell::new(Instant::now());
    let (up_bytes, down_bytes) = (Cell::new(0u64), Cell::new(0u64));
    let both = async {
        let _ = monoio::join!(
            one_way(&client, &upstream, &last, &up_bytes),
            one_way(&upstream, &client, &last, &down_bytes)
        );
    };
    monoio::select! {
        _ = both => {}
        _ = idle_for(&last, idle_timeout) => { tracing::debug!("tcp: idle timeout; closing both sides"); }
    }
    (up_bytes.get(), down_bytes.get())
}

/// One direction: `from` → pipe → `to` until `from` says EOF, then half-close `to`.
async fn one_way(from: &TcpStream, to: &TcpStream, last: &Cell<Instant>, moved: &Cell<u64>) -> io::Result<()> {
    let result = splice_until_eof(from, to, last, moved).await;
    // Half-close: the reader is done, tell the other side no more bytes are coming.
    // SAFETY: `to` owns the descriptor for the duration of the call.
    unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
    result
}

/// Hand-written on the data path, because io_uring cannot splice without a thread: the kernel
/// runs every `IORING_OP_SPLICE` on an io-wq worker, which blocks there until the socket has
/// bytes. A tunnel would hold two kernel threads while idle, and each small message would pay
/// two hand-offs between threads (measured: about 100 µs of CPU per request/response pair at
/// 2,000 rps, three times an HTTP request through the same proxy). Instead the worker waits for
/// readiness on its own ring (or epoll) and calls `splice(2)` non-blocking, as haproxy does:
/// one wait and two syscalls per message, the bytes still never copied to user space.
async fn splice_until_eof(from: &TcpStream, to: &TcpStream, last: &Cell<Instant>, moved: &Cell<u64>) -> io::Result<()> {
    let pipe = Pipe::new()?;
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    // Whether the last read left the socket empty; if so, wait before trying again, rather than
    // spend a syscall on an EAGAIN.
    let mut drained = false;
    loop {
        if drained {
            from.readable(false).await?;
        }
        let n = match splice(src, pipe.write.as_raw_fd(), SPLICE_CHUNK) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        drained = n < SPLICE_CHUNK;
        last.set(Instant::now());
        moved.set(moved.get() + n as u64);
        let mut left = n;
        while left > 0 {
            match splice(pipe.read.as_raw_fd(), dst, left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => left -= w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable(false).await?,
                Err(e) => return Err(e),
            }
        }
        last.set(Instant::now());
    }
}

/// `splice(2)` between a socket and a pipe, never blocking (the sockets are `O_NONBLOCK`,
/// the pipe is non-blocking by flag). Interrupted calls are retried.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open for the call (owned by the caller's streams and
        // pipe); null offsets are required for sockets and pipes.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sets `O_NONBLOCK` on a socket the tunnel now owns (under io_uring monoio leaves sockets
/// blocking, and a blocking socket would stall the worker inside `splice`).
fn nonblocking(stream: &TcpStream) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    // SAFETY: fcntl on a descriptor `stream` owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel pipe a direction's bytes pass through, closed on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_api::hash_table::hash_bytes;

    #[test]
    fn the_source_ip_key_is_the_one_http_uses() {
        let v4: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        assert_eq!(hash_key(v4), hash_bytes(&[10, 1, 2, 3]));
        let v6: SocketAddr = "[2001:db8::1]:5555".parse().unwrap();
        let std::net::IpAddr::V6(ip) = v6.ip() else {
            unreachable!()
        };
        assert_eq!(hash_key(v6), hash_bytes(&ip.octets()));
        // The port never matters: one client, one key.
        assert_eq!(hash_key(v4), hash_key("10.1.2.3:1".parse().unwrap()));
    }
}
