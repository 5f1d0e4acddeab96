//! The control plane's TLS port (`--listen-tls`, Istio's 15012): the same Discovery and Admin
//! services as the plaintext port, behind a serving certificate that the mesh CA issues to the
//! control plane itself and renews at half its lifetime. Proxies check it against the trust
//! bundle (`ringmesh ca root`); the certificate is swapped in place, so connections never
//! restart for a renewal.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::{Ca, CaError};

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The names the serving certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingNames {
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// The control plane's SPIFFE id.
    pub spiffe: String,
}

impl ServingNames {
    /// `ringmesh-control`, `ringmesh-control.<namespace>.svc`, `localhost`, the listen address
    /// when it is a specific one, and `extra` (`--tls-san`: DNS names or IP addresses).
    pub fn new(trust_domain: &str, namespace: &str, listen: SocketAddr, extra: &[String]) -> ServingNames {
        let mut dns = vec![
            "ringmesh-control".to_owned(),
            format!("ringmesh-control.{namespace}.svc"),
            "localhost".to_owned(),
        ];
        let mut ips = Vec::new();
        if !listen.ip().is_unspecified() {
            ips.push(listen.ip());
        }
        for e in extra {
            match e.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.contains(e) => dns.push(e.clone()),
                Err(_) => {}
            }
        }
        ServingNames {
            dns,
            ips,
            spiffe: format!("spiffe://{trust_domain}/ns/{namespace}/sa/ringmesh-control"),
        }
    }
}

/// The serving certificate in use, replaced whole on renewal.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified(ca: &Ca, names: &ServingNames, lifetime: Duration) -> Result<CertifiedKey, CaError> {
    let (chain, key) = ca.serving_certificate(&names.dns, &names.ips, &names.spiffe, lifetime)?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| CaError::Invalid {
        what: "serving certificate".into(),
        reason: e.to_string(),
    })
}

impl ServingCert {
    /// A first certificate for `names`.
    pub fn issue(ca: &Ca, names: &ServingNames, lifetime: Duration) -> Result<Arc<ServingCert>, CaError> {
        Ok(Arc::new(ServingCert {
            current: ArcSwap::from_pointee(certified(ca, names, lifetime)?),
        }))
    }

    /// Renews the certificate at half its lifetime, forever. A failed renewal (which only a
    /// broken CA key could cause) is logged and retried in a minute; the old certificate stays.
    pub async fn renew(self: Arc<Self>, ca: Arc<super::Authority>, names: ServingNames, lifetime: Duration) {
        let mut wait = lifetime.max(super::MIN_CERT_LIFETIME) / 2;
        loop {
            tokio::time::sleep(wait).await;
            match certified(&ca.ca, &names, lifetime) {
                Ok(c) => {
                    self.current.store(Arc::new(c));
                    tracing::info!("control plane serving certificate renewed");
                    wait = lifetime.max(super::MIN_CERT_LIFETIME) / 2;
                }
                Err(e) => {
                    tracing::error!("serving certificate renewal failed; keeping the current one: {e}");
                    wait = Duration::from_secs(60);
                }
            }
        }
    }

    /// The certificate chain in use now.
    pub fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

/// rustls' server settings for the TLS port: TLS 1.2 and 1.3 with the `ring` provider, HTTP/2
/// by ALPN (gRPC), no client certificate (proxies prove who they are with their credential).
pub fn server_config(cert: Arc<ServingCert>) -> Result<rustls::ServerConfig, CaError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Invalid {
            what: "TLS settings".into(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts on `listener` and hands out connections whose handshake finished (within
/// [`HANDSHAKE_TIMEOUT`]), for `serve_with_incoming`. A failed handshake (a client that does
/// not trust the certificate, a port scan) is logged at debug level and costs nothing else.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("TLS port accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, handed) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = handed.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
