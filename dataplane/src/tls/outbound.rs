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
}

/// Runs the client handshake of an opaque TCP connection over `io` (a connected socket). No
/// ALPN id is offered, so the server's proxy treats the bytes as its listener says. (HTTP
/// hops open theirs in `http::h2::client`, offering `h2`.)
pub(crate) async fn handshake(worker: &Worker, io: Compat, host: &str) -> Result<ClientTls, ConnectError> {
    let config = worker.tls_client_tcp()?;
    // A service host is a DNS name; anything else (an IP, a name rustls refuses) is sent as a
    // fixed name, since the server's proxy does not route on it.
    let name = ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("mesh.invalid").expect("a valid DNS name"));
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, io);
    match monoio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(tls)) => {
            inc(&worker.stats.security.tls_client_handshakes);
            Ok(tls)
        }
        Ok(Err(e)) => Err(ConnectError::Handshake(e)),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// [`handshake`] for the TCP proxy: failures are counted and logged here.
pub(crate) async fn connect(worker: &Worker, io: Compat, host: &str) -> Option<ClientTls> {
    match handshake(worker, io, host).await {
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
