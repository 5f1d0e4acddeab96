//! The client side of mutual TLS: a proxy dialling an endpoint that another proxy serves.
//!
//! The connection presents this workload's certificate and accepts the server's when it chains
//! to the trust bundle and names a workload of the same trust domain
//! (`verify::MeshServerVerifier`). The server name sent is the service's host, which the
//! server's proxy does not need but which shows in its logs and in `connection.sni`.

use rustls::pki_types::ServerName;

use crate::http::h2::io::Compat;
use crate::telemetry::stats::inc;
use crate::worker::Worker;

use super::inbound::CLIENT_HANDSHAKE_TIMEOUT;

/// The TLS connection type of an outbound mTLS connection.
pub(crate) type ClientTls = tokio_rustls::client::TlsStream<Compat>;

/// An mTLS hop's target: the service host (sent as the server name) and the identities the
/// DestinationRule accepts (`tls.subjectAltNames`; empty: any workload of the trust domain,
/// which the handshake already checked).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) host: &'a str,
    pub(crate) expected: &'a [String],
}

impl<'a> Target<'a> {
    /// The target of a hop to `endpoint` of `cluster`, or `None` when the hop is plaintext.
    pub(crate) fn of(cluster: &'a ringmesh_api::snapshot::Cluster, endpoint: usize) -> Option<Self> {
        cluster.mtls_to(endpoint).then(|| Target {
            host: &cluster.service,
            expected: cluster.expected_peers(),
        })
    }

    /// Whether an upstream that proved `peer` (a SPIFFE URI) may serve this hop.
    pub(crate) fn accepts(&self, peer: Option<&str>) -> bool {
        self.expected.is_empty() || peer.is_some_and(|p| self.expected.iter().any(|e| e == p))
    }
}

/// The SPIFFE URI the server of a client connection proved.
pub(crate) fn peer_of(tls: &ClientTls) -> Option<Box<str>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(super::verify::identity_of)
        .map(|id| id.spiffe().into())
}

/// Why an outbound mTLS connection was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// No workload certificate (yet): the proxy cannot prove who it is.
    #[error("{0}")]
    Config(#[from] super::configs::ConfigError),
    /// The handshake failed (the server's certificate was refused, or it refused ours).
    #[error("mTLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The handshake took longer than [`CLIENT_HANDSHAKE_TIMEOUT`].
    #[error("mTLS handshake timed out")]
    Timeout,
    /// The server proved an identity the DestinationRule's `subjectAltNames` do not list.
    #[error("the upstream's identity {0} is not in the DestinationRule's subjectAltNames")]
    UnexpectedPeer(String),
}

/// Runs the client handshake of an opaque TCP connection over `io` (a connected socket). No
/// ALPN id is offered, so the server's proxy treats the bytes as its listener says. (HTTP
/// hops open theirs in `http::h2::client`, offering `h2`.)
pub(crate) async fn handshake(worker: &Worker, io: Compat, target: Target<'_>) -> Result<ClientTls, ConnectError> {
    let host = target.host;
    let config = worker.tls_client_tcp()?;
    // A service host is a DNS name; anything else (an IP, a name rustls refuses) is sent as a
    // fixed name, since the server's proxy does not route on it.
    let name = ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("mesh.invalid").expect("a valid DNS name"));
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, io);
    match monoio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(tls)) => {
            inc(&worker.stats.security.tls_client_handshakes);
            let peer = peer_of(&tls);
            if !target.accepts(peer.as_deref()) {
                return Err(ConnectError::UnexpectedPeer(
                    peer.as_deref().unwrap_or("(none)").to_string(),
                ));
            }
            Ok(tls)
        }
        Ok(Err(e)) => Err(ConnectError::Handshake(e)),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// [`handshake`] for the TCP proxy: failures are counted and logged here.
pub(crate) async fn connect(worker: &Worker, io: Compat, target: Target<'_>) -> Option<ClientTls> {
    let host = target.host;
    match handshake(worker, io, target).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            inc(&worker.stats.security.tls_client_handshake_failed);
            worker
                .stats
                .log_limit
                .log("mtls-client", || tracing::info!(host, "outbound {e}"));
            None
        }
    }
}
