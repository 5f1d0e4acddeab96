//! Connections `ringmesh iptables` redirected to the capture listeners (`spec.capture`).
//!
//! The kernel's NAT rewrote their destination to this proxy; the original one is recovered
//! from conntrack (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`) and picks what serves the
//! connection, from [`Snapshot::capture`]: on the way out a service's virtual IP and port
//! (HTTP routed by `Host`, else to that service; TCP to its clusters; or detection), or an
//! unknown destination (`ALLOW_ANY`: passed through as TCP; `REGISTRY_ONLY`: closed); on the
//! way in the app's port (`tls/inbound.rs`, with the workload's policies).
//!
//! The proxy's own connections never come back to it: `ringmesh iptables` lets the proxy's
//! user through, and a connection whose original destination is the capture listener itself
//! (one made to the port directly, or one the rules failed to exempt) is refused here rather
//! than passed through to itself.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::BytesMut;
use monoio::net::TcpStream;
use ringmesh_api::resources::OutboundTrafficMode;
use ringmesh_api::snapshot::{CapturedProtocol, Snapshot, VirtualHost};

use crate::detect::{self, Outcome};
use crate::http::downstream::ClientIo;
use crate::telemetry::stats::inc;
use crate::worker::Worker;

/// `SO_ORIGINAL_DST` (`linux/netfilter_ipv4.h`) and `IP6T_SO_ORIGINAL_DST`
/// (`linux/netfilter_ipv6/ip6_tables.h`): both 80, at `SOL_IP` and `SOL_IPV6`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination the client connected to before `REDIRECT` rewrote it. Written by hand:
/// one `getsockopt`, which neither monoio nor socket2 offers for IPv6.
pub(crate) fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    let local = stream.local_addr()?;
    // A v4 connection on a v6 socket is v4-mapped; the capture listeners bind one socket per
    // family, so the local address's family is the connection's.
    if local.is_ipv4() {
        // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` is a writable sockaddr_in and `len` its size; the kernel writes at
        // most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
    } else {
        // SAFETY: sockaddr_in6 is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above, with a sockaddr_in6.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            0,
            addr.sin6_scope_id,
        )))
    }
}

/// The original destination of a connection accepted on a capture listener, or `None` (the
/// connection is to be closed: logged and counted) when there is none or it is the listener
/// itself.
pub(crate) fn destination(worker: &Worker, stream: &TcpStream, peer: SocketAddr, listener: &str) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    match original_dst(stream) {
        Ok(orig) if orig != local => Some(orig),
        Ok(_) => {
            inc(&worker.stats.capture.loop_refused);
            worker.stats.log_limit.log("capture-not-redirected", || {
                tracing::warn!(%peer, listener, %local, "captured connection refused: it was made to the capture port itself, not redirected (serving it would loop into the proxy)")
            });
            None
        }
        Err(e) => {
            inc(&worker.stats.capture.no_original_dst);
            worker.stats.log_limit.log("capture-no-original-dst", || {
                tracing::warn!(%peer, listener, %local, "captured connection refused: no original destination ({e}); is it redirected by `ringmesh iptables` (REDIRECT, conntrack)?")
            });
            None
        }
    }
}

/// How the HTTP proxy picks a request's virtual host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum RouteBy {
    /// By `Host` (`:authority`): an HTTP listener's connections.
    #[default]
    Host,
    /// A captured connection to a service's virtual IP and port: by `Host` when it names a
    /// virtual host other than the service's default route, else the service's route to
    /// this port (a client that sent `Host: 10.96.0.7` still reaches the service it dialled).
    Service(SocketAddr),
    /// A captured inbound connection for the app's port: its one route, whatever the `Host`.
    App(u16),
    /// By `Host`, on the listener at this position of the snapshot's listeners, which has a
    /// local rate limit (`http::local_rate_limit::listener_ref`): carried here, where it costs
    /// no byte of the connection's state.
    HostOnLimited(u16),
}

impl RouteBy {
    /// By `Host`, on a listener with a local rate limit at position `limited`, if any.
    pub(crate) fn on_listener(limited: Option<u16>) -> Self {
        limited.map_or(RouteBy::Host, RouteBy::HostOnLimited)
    }

    /// The position of the connection's listener when it has a local rate limit.
    pub(crate) fn listener_limit(self) -> Option<u16> {
        match self {
            RouteBy::HostOnLimited(at) => Some(at),
            _ => None,
        }
    }

    /// The virtual host for a request with this `Host`, in `snapshot` (the request's own:
    /// a reload between requests of one connection applies to the next).
    pub(crate) fn virtual_host<'s>(self, snapshot: &'s Snapshot, host: &str) -> Option<&'s VirtualHost> {
        let routes = &snapshot.routes;
        match self {
            RouteBy::Host | RouteBy::HostOnLimited(_) => routes.find_host(host),
            RouteBy::Service(key) => match snapshot.capture.services.get(&key) {
                Some(svc) => {
                    let named = routes.find_host_id(host).filter(|id| Some(*id) != svc.default_vhost);
                    routes.virtual_host(named.unwrap_or(svc.vhost))
                }
                // A reload withdrew the service: by `Host`, as a listener's connection.
                None => routes.find_host(host),
            },
            RouteBy::App(port) => snapshot
                .capture
                .app_ports
                .get(&port)
                .and_then(|app| routes.virtual_host(app.vhost)),
        }
    }
}

/// Where a TCP connection's bytes go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TcpDest<'a> {
    /// The clusters of the listener of this name (in the current snapshot).
    Listener(&'a str),
    /// The clusters of the captured service at this virtual IP and port.
    Service(SocketAddr),
    /// The service endpoint at this address itself (`Capture::endpoints`).
    Endpoint(SocketAddr),
    /// This address itself, without a cluster: an unknown destination under `ALLOW_ANY`, or
    /// an app port the config does not name.
    Passthrough(SocketAddr),
}

/// Serves one connection accepted on the outbound capture listener `name`.
pub(crate) async fn serve_outbound(worker: Rc<Worker>, mut stream: TcpStream, peer: SocketAddr, name: &str) {
    let Some(orig) = destination(&worker, &stream, peer, name) else {
        return;
    };
    let view = worker.snapshot.get();
    let capture = &view.snapshot.capture;
    let protocol = match capture.services.get(&orig) {
        Some(svc) => svc.protocol,
        // A pod's own address: to that endpoint, as TCP (mTLS to its proxy when it has one,
        // whose inbound side then serves the HTTP inside).
        None if capture.endpoints.contains_key(&orig) => {
            drop(view);
            inc(&worker.stats.capture.outbound_endpoint);
            let io = ClientIo::Tcp(stream);
            return crate::tcp::serve(worker, io, peer, TcpDest::Endpoint(orig), BytesMut::new(), None).await;
        }
        None => {
            let unknown = capture.unknown;
            drop(view);
            return unknown_destination(worker, stream, peer, orig, unknown).await;
        }
    };
    let detection = view.snapshot.proxy.limits.protocol_detection_timeout;
    drop(view);
    inc(&worker.stats.capture.outbound_service);
    let mut buf = BytesMut::new();
    let http = match protocol {
        CapturedProtocol::Http => true,
        CapturedProtocol::Tcp => false,
        CapturedProtocol::Detect => {
            buf.reserve(crate::http::proxy::INITIAL_BUFFER);
            match detect::sniff(&mut stream, &mut buf, detection).await {
                Outcome::Sniffed(s) if s.is_http() => {
                    inc(&worker.stats.detected_http);
                    true
                }
                Outcome::Sniffed(_) => {
                    inc(&worker.stats.detected_tcp);
                    false
                }
                Outcome::Timeout => {
                    inc(&worker.stats.detect_timeout);
                    false
                }
                Outcome::Gone => return,
            }
        }
    };
    let io = ClientIo::Tcp(stream);
    if http {
        if buf.capacity() == 0 {
            buf.reserve(crate::http::proxy::INITIAL_BUFFER);
        }
        crate::http::proxy::serve(worker, io, peer, None, buf, RouteBy::Service(orig)).await;
    } else {
        crate::tcp::serve(worker, io, peer, TcpDest::Service(orig), buf, None).await;
    }
}

/// A destination no service declares: `ALLOW_ANY` passes it through as TCP (as the
/// proxy's own user, which the rules let out), `REGISTRY_ONLY` closes it.
async fn unknown_destination(
    worker: Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
    mode: OutboundTrafficMode,
) {
    match mode {
        OutboundTrafficMode::AllowAny => {
            inc(&worker.stats.capture.passthrough);
            tracing::debug!(%peer, destination = %orig, "captured connection to an unknown destination passed through (ALLOW_ANY)");
            let io = ClientIo::Tcp(stream);
            crate::tcp::serve(worker, io, peer, TcpDest::Passthrough(orig), BytesMut::new(), None).await;
        }
        OutboundTrafficMode::RegistryOnly => {
            inc(&worker.stats.capture.registry_only_refused);
            worker.stats.log_limit.log("capture-registry-only", || {
                tracing::info!(%peer, destination = %orig, "captured connection refused: no service has this address and port (outboundTrafficPolicy REGISTRY_ONLY)")
            });
        }
    }
}
