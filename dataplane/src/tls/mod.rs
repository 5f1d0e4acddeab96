//! Mutual TLS between proxies: the inbound side (a listener of this workload's) and the
//! outbound side (a connection to an endpoint served by another proxy).
//!
//! Where it sits: between accept and the HTTP or TCP proxy on inbound listeners
//! ([`inbound::serve`]), and between connect and the HTTP/2 handshake or the TCP tunnel on the
//! way out (`http::h2::client`, `tcp`). The workload's certificate comes from
//! `crate::identity`; each worker keeps its own rustls configs ([`configs::CoreTls`]), rebuilt
//! when the certificate rotates, so nothing here takes a lock or shares a counter. What a
//! handshake proves, the peer's SPIFFE id ([`verify::PeerIdentity`]), travels with the
//! connection to authorization, metrics and logs.

pub(crate) mod configs;
pub(crate) mod inbound;
pub(crate) mod io;
pub(crate) mod outbound;
pub(crate) mod verify;
pub(crate) mod xfcc;

use std::net::SocketAddr;

use http::HeaderValue;

pub(crate) use verify::PeerIdentity;

use crate::http::h1::Xfcc;

/// What an inbound connection brings beyond its peer address: the port it came in on and, over
/// mutual TLS, who the peer proved to be. Present only on inbound listeners, where the
/// workload's policies apply; shared by the streams of an HTTP/2 connection (which may be
/// served on other workers, hence `Send`).
#[derive(Debug)]
pub(crate) struct InboundConn {
    /// The local address the connection was accepted on.
    pub(crate) local: SocketAddr,
    /// The peer's verified identity; `None` for plaintext (PERMISSIVE or DISABLE).
    pub(crate) identity: Option<PeerIdentity>,
    /// The server name the client asked for, over TLS.
    pub(crate) sni: Option<Box<str>>,
    /// The `x-forwarded-client-cert` element for this connection's requests
    /// ([`xfcc::element`]), made once at the handshake: `Some` only when `identity` is.
    pub(crate) xfcc: Option<HeaderValue>,
}

impl InboundConn {
    /// A plaintext connection (PERMISSIVE or DISABLE): nobody proved anything.
    pub(crate) fn plaintext(local: SocketAddr) -> Self {
        InboundConn {
            local,
            identity: None,
            sni: None,
            xfcc: None,
        }
    }
}

/// What a request's `x-forwarded-client-cert` becomes on its way through this proxy, as Istio's
/// sidecars do it: on an inbound connection whose peer proved a workload identity, our element
/// is appended to what the request carries; everywhere else (plaintext inbound, and every
/// outbound listener, where `inbound` is `None`) the field is removed, so that no client can
/// pass itself off as another workload to the app or to the next proxy.
pub(crate) fn xfcc(inbound: Option<&InboundConn>) -> Xfcc<'_> {
    match inbound.and_then(|c| c.xfcc.as_ref()) {
        Some(ours) => Xfcc::Append(ours),
        None => Xfcc::Sanitize,
    }
}
