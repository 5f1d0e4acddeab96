//! An inbound listener's connection: mutual TLS or plaintext, as the workload's
//! `PeerAuthentication` says for the port, then the HTTP or TCP proxy.
//!
//! The first bytes decide (as Istio's PERMISSIVE mode does): a TLS ClientHello is answered
//! with the workload's certificate and a demand for the client's; anything else is plaintext.
//! `STRICT` closes plaintext connections, `PERMISSIVE` serves both, `DISABLE` serves every
//! connection as plaintext (a ClientHello then reaches the HTTP parser or the TCP upstream as
//! bytes, as it would without a mesh). A connection waits for its first bytes up to the
//! listener's detection timeout (TCP) or the idle timeout (HTTP); a server-first protocol's
//! silent client is plaintext.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::net::TcpStream;
use ringmesh_api::snapshot::{CapturedProtocol, ListenerKind, MtlsMode};

use super::configs::Alpn;
use super::io::Replay;
use super::{verify, xfcc, InboundConn};
use crate::capture::{RouteBy, TcpDest};
use crate::detect::{self, Outcome, Sniffed};
use crate::telemetry::stats::inc;
use crate::worker::Worker;

/// The TLS connection type of an inbound listener.
pub(crate) type ServerTls = tokio_rustls::server::TlsStream<Replay<crate::http::h2::io::Compat>>;

/// What serves an inbound connection once its port is known: the listener's kind, or for a
/// captured connection the app port's.
#[derive(Debug, Clone, Copy)]
struct Plan<'a> {
    protocol: Protocol,
    route_by: RouteBy,
    tcp: TcpDest<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Tcp,
    /// The first bytes decide, waiting this long for them.
    Detect(Duration),
}

impl<'a> Plan<'a> {
    fn of_listener(worker: &Worker, kind: &ListenerKind, name: &'a str) -> Self {
        let protocol = match kind {
            ListenerKind::Http => Protocol::Http,
            ListenerKind::Tcp { .. } => Protocol::Tcp,
            ListenerKind::Detect { timeout, .. } => Protocol::Detect(*timeout),
            // Not reached: a captured connection's plan comes from its port.
            ListenerKind::Captured => Protocol::Tcp,
        };
        Plan {
            protocol,
            route_by: RouteBy::on_listener(crate::http::local_rate_limit::listener_ref(worker, name)),
            tcp: TcpDest::Listener(name),
        }
    }

    /// A captured connection for the app's port `orig.port()`: HTTP routed to the app when
    /// the config names the port, else its bytes passed to the app. The app is reached on
    /// 127.0.0.1 (the rules let the proxy's loopback connections through, where a connection
    /// to the pod's own address would be captured again).
    fn of_app_port(worker: &Worker, orig: SocketAddr) -> Self {
        let view = worker.snapshot.get();
        let app = SocketAddr::from(([127, 0, 0, 1], orig.port()));
        let detection = view.snapshot.proxy.limits.protocol_detection_timeout;
        match view.snapshot.capture.app_ports.get(&orig.port()) {
            Some(port) => {
                inc(&worker.stats.capture.inbound_app_port);
                Plan {
                    protocol: match port.protocol {
                        CapturedProtocol::Http => Protocol::Http,
                        CapturedProtocol::Tcp => Protocol::Tcp,
                        CapturedProtocol::Detect => Protocol::Detect(detection),
                    },
                    route_by: RouteBy::App(orig.port()),
                    tcp: TcpDest::Passthrough(app),
                }
            }
            None => {
                inc(&worker.stats.capture.inbound_passthrough);
                Plan {
                    protocol: Protocol::Tcp,
                    route_by: RouteBy::Host,
                    tcp: TcpDest::Passthrough(app),
                }
            }
        }
    }
}

/// Serves one connection accepted on the inbound listener `name`.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    mut stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    kind: &ListenerKind,
) {
    // The address the client meant: a captured connection's original destination (its port
    // is the app's, which PeerAuthentication's port-level modes and authorization name).
    let (local, plan) = if matches!(kind, ListenerKind::Captured) {
        let Some(orig) = crate::capture::destination(&worker, &stream, peer, name) else {
            return;
        };
        (orig, Plan::of_app_port(&worker, orig))
    } else {
        match stream.local_addr() {
            Ok(a) => (a, Plan::of_listener(&worker, kind, name)),
            Err(e) => {
                tracing::debug!(%peer, "inbound: no local address: {e}");
                return;
            }
        }
    };
    let view = worker.snapshot.get();
    if view.snapshot.security.awaiting_control_plane {
        inc(&worker.stats.security.awaiting_config_refused);
        worker.stats.log_limit.log("inbound-awaiting-config", || {
            tracing::info!(%peer, listener = name, "inbound connection refused: the workload's policies have not arrived from the control plane yet")
        });
        return;
    }
    let mode = view.snapshot.security.peer_authn.mode_for(local.port());
    let limits = &view.snapshot.proxy.limits;
    let wait = match (mode, plan.protocol) {
        (MtlsMode::Strict, _) => limits.request_header_timeout,
        (_, Protocol::Http) => limits.downstream_idle_timeout,
        (_, Protocol::Tcp) => limits.protocol_detection_timeout,
        (_, Protocol::Detect(timeout)) => timeout,
    };
    drop(view);
    let mut buf = BytesMut::with_capacity(crate::http::proxy::INITIAL_BUFFER);
    let outcome = detect::sniff(&mut stream, &mut buf, wait).await;
    let tls = matches!(outcome, Outcome::Sniffed(Sniffed::Tls));
    match (mode, tls, outcome) {
        (_, _, Outcome::Gone) => {}
        (MtlsMode::Strict | MtlsMode::Permissive, true, _) => {
            handshake(worker, stream, peer, local, name, plan, buf).await;
        }
        (MtlsMode::Strict, false, _) => {
            inc(&worker.stats.security.plaintext_refused);
            worker.stats.log_limit.log("mtls-strict-plaintext", || {
                tracing::info!(%peer, listener = name, port = local.port(), "plaintext connection refused: PeerAuthentication STRICT")
            });
        }
        (MtlsMode::Permissive | MtlsMode::Disable, _, outcome) => {
            let conn = Arc::new(InboundConn::plaintext(local));
            plaintext(worker, stream, peer, conn, plan, outcome, buf).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn plaintext(
    worker: Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    conn: Arc<InboundConn>,
    plan: Plan<'_>,
    outcome: Outcome,
    buf: BytesMut,
) {
    let http = match plan.protocol {
        Protocol::Http => true,
        Protocol::Tcp => false,
        Protocol::Detect(_) => matches!(outcome, Outcome::Sniffed(s) if s.is_http()),
    };
    let io = crate::http::downstream::ClientIo::Tcp(stream);
    if http {
        crate::http::proxy::serve(worker, io, peer, Some(conn), buf, plan.route_by).await;
    } else {
        crate::tcp::serve(worker, io, peer, plan.tcp, buf, Some(conn)).await;
    }
}

/// The workload's certificate, the client's checked, then the proxy for what the TLS carries.
async fn handshake(
    worker: Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    name: &str,
    plan: Plan<'_>,
    buf: BytesMut,
) {
    let server = match worker.tls_server() {
        Ok(s) => s,
        Err(e) => {
            // Fails closed: without a certificate nobody can be authenticated, so nobody is
            // served over TLS (plaintext in PERMISSIVE still is).
            inc(&worker.stats.security.tls_handshake_failed);
            worker.stats.log_limit.log(
                "mtls-no-certificate",
                || tracing::warn!(%peer, listener = name, "mTLS connection refused: {e}"),
            );
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let io = Replay::new(buf.freeze(), crate::http::h2::io::compat(stream));
    let timeout = worker.snapshot.get().snapshot.proxy.limits.request_header_timeout;
    let accepted = monoio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(server.config).accept(io)).await;
    let tls = match accepted {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            inc(&worker.stats.security.tls_handshake_failed);
            worker.stats.log_limit.log(
                "mtls-handshake",
                || tracing::info!(%peer, listener = name, "mTLS handshake failed: {e}"),
            );
            return;
        }
        Err(_) => {
            inc(&worker.stats.security.tls_handshake_failed);
            worker.stats.log_limit.log(
                "mtls-handshake",
                || tracing::info!(%peer, listener = name, "mTLS handshake timed out"),
            );
            return;
        }
    };
    inc(&worker.stats.security.tls_handshakes);
    let (_, session) = tls.get_ref();
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        inc(&worker.stats.security.tls_resumed);
    }
    let leaf = session.peer_certificates().and_then(|chain| chain.first());
    let identity = leaf.and_then(verify::identity_of);
    // The XFCC element for every request this connection carries, made here once.
    let xfcc = match (leaf, &identity) {
        (Some(leaf), Some(id)) => xfcc::element(Some(&server.own_id), leaf.as_ref(), id),
        _ => None,
    };
    worker
        .stats
        .security
        .inbound_from(identity.as_ref().map(|i| i.principal()));
    tracing::debug!(%peer, listener = name, identity = identity.as_ref().map(|i| i.spiffe()).unwrap_or("-"), "mTLS connection");
    let alpn = Alpn::from_id(session.alpn_protocol());
    let sni = session.server_name().map(Box::from);
    let conn = Arc::new(InboundConn {
        local,
        identity,
        sni,
        xfcc,
    });
    let http = match (plan.protocol, alpn) {
        (Protocol::Http, _) => true,
        (Protocol::Tcp, _) => false,
        (Protocol::Detect(_), Alpn::H2 | Alpn::Http1) => true,
        // Inside TLS the bytes decide, as on a plaintext AUTO listener.
        (Protocol::Detect(_), Alpn::Other) => return detect_inside(worker, tls, peer, conn, plan).await,
    };
    if !http {
        let io = crate::http::downstream::ClientIo::tls(tls);
        crate::tcp::serve(worker, io, peer, plan.tcp, BytesMut::new(), Some(conn)).await;
    } else if alpn == Alpn::H2 {
        inc(&worker.stats.downstream_cx_h2_total);
        let stream = super::io::MaybeTls::Tls(Box::new(tls));
        crate::http::h2::server::serve(worker, stream, peer, bytes::Bytes::new(), Some(conn), plan.route_by).await;
    } else {
        let io = crate::http::downstream::ClientIo::tls(tls);
        let buf = BytesMut::with_capacity(crate::http::proxy::INITIAL_BUFFER);
        crate::http::proxy::serve(worker, io, peer, Some(conn), buf, plan.route_by).await;
    }
}

/// An `AUTO` listener's TLS connection without an HTTP ALPN id: its first decrypted bytes
/// decide between the HTTP and the TCP proxy.
async fn detect_inside(worker: Rc<Worker>, tls: ServerTls, peer: SocketAddr, conn: Arc<InboundConn>, plan: Plan<'_>) {
    let timeout = worker.snapshot.get().snapshot.proxy.limits.protocol_detection_timeout;
    let mut io = crate::http::downstream::ClientIo::tls(tls);
    let mut buf = BytesMut::with_capacity(crate::http::proxy::INITIAL_BUFFER);
    let http = loop {
        if let Some(s) = detect::classify(&buf) {
            break s.is_http();
        }
        match crate::http::body::read_more(&mut io, &mut buf, timeout).await {
            Ok(n) if n > 0 => {}
            // Silence (a server-first protocol) or the end: TCP.
            _ => break false,
        }
    };
    if http {
        crate::http::proxy::serve(worker, io, peer, Some(conn), buf, plan.route_by).await;
    } else {
        crate::tcp::serve(worker, io, peer, plan.tcp, buf, Some(conn)).await;
    }
}

/// Time a TLS handshake may take on the way out, beside the connect timeout.
pub(crate) const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
