//! Step 1 of the request path, "accept": one accept loop per listener per worker.
//!
//! Each worker accepts on its own `SO_REUSEPORT` socket and serves the connection on the same
//! core for its whole life. Accept errors (e.g. out of file descriptors) are logged and backed
//! off, never fatal.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::net::TcpListener;
use ringmesh_api::snapshot::ListenerKind;

use crate::capture::{RouteBy, TcpDest};
use crate::telemetry::stats::{dec, inc};
use crate::worker::Worker;

/// Accepts until `stop` is closed. `inbound`: the listener serves this proxy's workload
/// (`direction: INBOUND`), where its `PeerAuthentication` and `AuthorizationPolicy`s apply.
pub async fn accept_loop(
    worker: Rc<Worker>,
    name: String,
    kind: ListenerKind,
    inbound: bool,
    listener: TcpListener,
    stop: flume::Receiver<()>,
) {
    let kind = Rc::new(kind);
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = stop.recv_async() => {
                tracing::debug!(worker = worker.id, listener = %name, "stopped accepting");
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
        inc(&worker.stats.downstream_cx_total);
        inc(&worker.stats.downstream_cx_active);
        let worker = worker.clone();
        let kind = kind.clone();
        let name = name.clone();
        monoio::spawn(async move {
            match &*kind {
                // The workload's own traffic: mTLS as PeerAuthentication says, then its
                // policies. Boxed, so outbound connections' tasks are not sized for it.
                kind if inbound => {
                    Box::pin(crate::tls::inbound::serve(worker.clone(), stream, peer, &name, kind)).await
                }
                ListenerKind::Http => {
                    let buf = BytesMut::with_capacity(crate::http::proxy::INITIAL_BUFFER);
                    let io = crate::http::downstream::ClientIo::Tcp(stream);
                    crate::http::proxy::serve(worker.clone(), io, peer, None, buf, RouteBy::Host).await
                }
                ListenerKind::Tcp { .. } => {
                    let io = crate::http::downstream::ClientIo::Tcp(stream);
                    let dest = TcpDest::Listener(&name);
                    crate::tcp::serve(worker.clone(), io, peer, dest, BytesMut::new(), None).await
                }
                // Boxed, so plain listeners' tasks are not sized for it.
                ListenerKind::Captured => {
                    Box::pin(crate::capture::serve_outbound(worker.clone(), stream, peer, &name)).await
                }
                // Boxed, so the task of every HTTP or TCP connection is not sized for detection.
                ListenerKind::Detect { .. } => {
                    Box::pin(crate::detect::serve(worker.clone(), stream, peer, &name)).await
                }
            }
            dec(&worker.stats.downstream_cx_active);
        });
    }
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
        // Test builds (this profile): HTTP 6.1 KiB, TCP 2.6 KiB; with the TLS tunnel inline
        // the TCP connection's future was 9.1 KiB and every connection's task that large. The
        // request's telemetry facts (`telemetry::request::Facts`, 120 bytes) are part of the
        // HTTP figure; the rest of a request's state is kept off the await points that hold it.
        assert!(http <= 6 * 1024 + 256, "an HTTP connection's future is {http} bytes");
        assert!(tcp <= 3 * 1024, "a TCP connection's future is {tcp} bytes");
    }
}
