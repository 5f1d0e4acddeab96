//! Step 1 of the request path, "accept": one accept loop per listener per worker.
//!
//! Each worker accepts on its own `SO_REUSEPORT` socket and serves the connection on the same
//! core for its whole life. Accept errors (e.g. out of file descriptors) are logged and backed
//! off, never fatal. On a drain, the connections already queued on the socket are taken and
//! served before it closes.

use std::rc::Rc;
use std::time::Duration;

use std::os::fd::AsRawFd;

use bytes::BytesMut;
use futures_util::future::{select, Either};
use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use ringmesh_api::snapshot::ListenerKind;

use crate::capture::{RouteBy, TcpDest};
use crate::drain::DrainHold;
use crate::telemetry::stats::{dec, inc};
use crate::worker::Worker;

/// Accepts until `stop` is closed. `inbound`: the listener serves this proxy's workload
/// (`direction: INBOUND`), where its `PeerAuthentication` and `AuthorizationPolicy`s apply.
///
/// On stop nothing already queued on the socket is lost (`drain.rs`): its backlog drops to 0
/// (new SYNs are dropped and sent again by their clients a second later, when the socket is
/// gone), the pending accept is cancelled and awaited (under io_uring it may have taken a
/// connection just before the cancel; dropping it instead would leak that connection
/// unanswered), the connections still queued are accepted without waiting, and the socket
/// leaves the group right after the last look, in the same turn. What the kernel still queues
/// in between (one connection at most, with a backlog of 0) is reset then, unless
/// `net.ipv4.tcp_migrate_req=1` moves it to the successor's socket.
pub async fn accept_loop(
    worker: Rc<Worker>,
    name: String,
    kind: ListenerKind,
    inbound: bool,
    listener: TcpListener,
    stop: flume::Receiver<()>,
) {
    let kind = Rc::new(kind);
    let _hold = DrainHold::accepting(&worker);
    let canceller = Canceller::new();
    loop {
        let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        let accepted = match select(accept.as_mut(), std::pin::pin!(stop.recv_async())).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => {
                // First, no room for more: a SYN that finds the queue full is dropped, and the
                // client sends it again a second later, to the successor's socket by then.
                // Queued here, it would be reset when the socket closes below.
                // SAFETY: listen(2) on the listener's own descriptor only sets its backlog.
                unsafe { libc::listen(listener.as_raw_fd(), 0) };
                let _ = canceller.cancel();
                if let Ok((stream, peer)) = accept.await {
                    spawn_connection(&worker, &name, &kind, inbound, stream, peer);
                }
                let taken = take_queue(&worker, &name, &kind, inbound, &listener);
                // Out of the group now, in the same turn as the last look: dropping the
                // listener only queues a close on the ring (io_uring), and until the ring runs
                // it the kernel would go on queueing connections here, to be reset.
                // SAFETY: shutdown(2) on the listener's own descriptor, still open.
                unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
                tracing::debug!(worker = worker.id, listener = %name, queued = taken, "stopped accepting");
                return;
            }
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and friends: wait a little instead of spinning.
                tracing::warn!(worker = worker.id, listener = %name, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if worker.at_connection_limit() {
            // Accepted and closed at once, as Envoy's overload manager does: the client learns
            // now rather than waiting in the kernel's backlog, and the connections already
            // open keep their memory and descriptors.
            inc(&worker.stats.downstream_cx_overflow);
            worker.stats.log_limit.log("cx-overflow", || {
                tracing::warn!(worker = worker.id, listener = %name, %peer, "connection refused: limits.maxConnections reached")
            });
            drop(stream);
            continue;
        }
        if worker.over_buffer_budget() {
            // As above, for memory: slow or many clients already hold this worker's share of
            // read buffers, so the newest is refused rather than every open one slowed.
            inc(&worker.stats.downstream_cx_buffer_overflow);
            worker.stats.log_limit.log("cx-buffer-overflow", || {
                tracing::warn!(worker = worker.id, listener = %name, %peer, "connection refused: limits.maxBufferBytes held in client buffers")
            });
            drop(stream);
            continue;
        }
        spawn_connection(&worker, &name, &kind, inbound, stream, peer);
    }
}

/// Most accepts one drain makes on a socket: twice the backlog, so that clients refilling the
/// queue as fast as it empties cannot keep the worker in [`take_queue`].
const TAKE_AT_MOST: usize = 8192;

/// Accepts every connection queued on `listener` without waiting (the socket is non-blocking)
/// and serves each; returns how many there were.
fn take_queue(
    worker: &Rc<Worker>,
    name: &str,
    kind: &Rc<ListenerKind>,
    inbound: bool,
    listener: &TcpListener,
) -> usize {
    // SAFETY: the descriptor belongs to `listener`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    let socket = socket2::SockRef::from(&fd);
    let mut taken = 0;
    for _ in 0..TAKE_AT_MOST {
        let (conn, addr) = match socket.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return taken,
            Err(e) => {
                tracing::warn!(worker = worker.id, listener = %name, "accept of a queued connection failed: {e}");
                return taken;
            }
        };
        let Some(peer) = addr.as_socket() else { continue };
        let stream = std::net::TcpStream::from(conn);
        let registered = stream
            .set_nonblocking(true)
            .and_then(|()| monoio::net::TcpStream::from_std(stream));
        match registered {
            Ok(stream) => {
                taken += 1;
                spawn_connection(worker, name, kind, inbound, stream, peer);
            }
            Err(e) => tracing::warn!(worker = worker.id, listener = %name, "cannot register a queued connection: {e}"),
        }
    }
    taken
}

/// Serves one accepted connection on its own task. The task owns the socket to its end: a
/// drain shuts the connections still open by descriptor number (`drain::OpenConnections`), so
/// the socket must not be closed before the task forgets it.
fn spawn_connection(
    worker: &Rc<Worker>,
    name: &str,
    kind: &Rc<ListenerKind>,
    inbound: bool,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    inc(&worker.stats.downstream_cx_total);
    inc(&worker.stats.downstream_cx_active);
    let slot = worker.open.add(stream.as_raw_fd());
    let worker = worker.clone();
    let kind = kind.clone();
    let name = name.to_owned();
    monoio::spawn(async move {
        match &*kind {
            // The workload's own traffic: mTLS as PeerAuthentication says, then its
            // policies. Boxed, so outbound connections' tasks are not sized for it.
            kind if inbound => Box::pin(crate::tls::inbound::serve(worker.clone(), stream, peer, &name, kind)).await,
            ListenerKind::Http => {
                // No buffer until the client's first bytes are there (`read_idle`).
                let buf = BytesMut::new();
                let io = crate::http::downstream::ClientIo::Tcp(stream);
                let route_by = RouteBy::on_listener(crate::http::local_rate_limit::listener_ref(&worker, &name));
                crate::http::proxy::serve(worker.clone(), io, peer, None, buf, route_by).await
            }
            ListenerKind::Tcp { .. } => {
                let io = crate::http::downstream::ClientIo::Tcp(stream);
                let dest = TcpDest::Listener(&name);
                // Boxed, so HTTP connections' tasks are not sized for it.
                Box::pin(crate::tcp::serve(worker.clone(), io, peer, dest, BytesMut::new(), None)).await
            }
            // Boxed, so plain listeners' tasks are not sized for it.
            ListenerKind::Captured => {
                Box::pin(crate::capture::serve_outbound(worker.clone(), stream, peer, &name)).await
            }
            // Boxed, so the task of every HTTP or TCP connection is not sized for detection.
            ListenerKind::Detect { .. } => Box::pin(crate::detect::serve(worker.clone(), stream, peer, &name)).await,
        }
        worker.open.remove(slot);
        dec(&worker.stats.downstream_cx_active);
    });
}

#[cfg(test)]
mod tests {
    use crate::size_of_return;

    /// Every accepted connection is a task whose future is as large as the largest thing it may
    /// become, and an idle keep-alive connection holds all of it: what only some connections
    /// need (TLS, protocol detection, HTTP/2) is boxed so the common case stays small.
    #[test]
    #[allow(unreachable_code)]
    fn connection_futures_stay_small() {
        let http = size_of_return(|| {
            crate::http::proxy::serve(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        let tcp = size_of_return(|| {
            crate::tcp::serve(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        // Test builds (this profile): HTTP 1.5 KiB, TCP 1.9 KiB. The HTTP figure was 6.1 KiB
        // before a request's state (`proxy::handle`, with its telemetry facts) and a refusal's
        // were boxed per request and monoio's timers lost their cache-line padding (a `Sleep`
        // was 640 bytes); what is left is the connection and its wait for the next head.
        assert!(http <= 1024 + 640, "an HTTP connection's future is {http} bytes");
        assert!(tcp <= 2 * 1024, "a TCP connection's future is {tcp} bytes");
    }
}
