//! Per-core rustls configurations, rebuilt when the workload's certificate rotates.
//!
//! A worker asks for its server or client config once per new connection. The check is one
//! atomic load of the identity's version (written only on rotation); when it moved, the worker
//! builds fresh configs from the new certificate on its own core, so a rotation takes no lock
//! on any worker and connections already open keep the session they negotiated. Session
//! resumption: TLS 1.3 tickets come from one ticketer shared by every core (a client that
//! reconnects lands on any core), and each core's client config keeps its own session cache.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::verify::{MeshServerVerifier, PeerIdentity};
use crate::identity::{Identity, IdentityCell};

/// ALPN ids a server accepts, in preference order: HTTP/2 (what proxies speak to each other),
/// HTTP/1.1, and Istio's sidecar ids for the same, so Istio's proxies can be peers.
pub(crate) const SERVER_ALPN: &[&[u8]] = &[b"h2", b"istio-h2", b"http/1.1", b"istio-http/1.1", b"istio"];

/// What a TLS connection carries, from its negotiated ALPN id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `h2` (or `istio-h2`).
    H2,
    /// `http/1.1` (or `istio-http/1.1`).
    Http1,
    /// Nothing negotiated, or an opaque id: the bytes decide.
    Other,
}

impl Alpn {
    pub(crate) fn from_id(id: Option<&[u8]>) -> Self {
        match id {
            Some(b"h2" | b"istio-h2") => Alpn::H2,
            Some(b"http/1.1" | b"istio-http/1.1") => Alpn::Http1,
            _ => Alpn::Other,
        }
    }
}

/// TLS versions allowed: 1.3 only unless the config allows 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum MinVersion {
    /// TLS 1.3 only.
    #[default]
    Tls13,
    /// TLS 1.2 and 1.3.
    Tls12,
}

impl MinVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static TLS13_AND_12: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            MinVersion::Tls13 => &TLS13_ONLY,
            MinVersion::Tls12 => &TLS13_AND_12,
        }
    }
}

/// The process's crypto provider: `ring`, with its default (strong, forward-secret) suites.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// One ticketer for every core, so a resumed session is accepted whichever core the client's
/// new connection lands on. `None` when the system cannot make one (then only full handshakes).
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| rustls::crypto::ring::Ticketer::new().ok())
        .clone()
}

/// A config could not be built from the identity.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// No certificate yet.
    #[error("no workload certificate yet")]
    NoIdentity,
    /// The certificate or key was refused by rustls.
    #[error("the workload certificate cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
    /// The trust bundle is empty or unusable.
    #[error("the trust bundle holds no usable root")]
    NoRoots,
    /// The identity is not a SPIFFE workload id.
    #[error("the workload certificate's identity {0:?} is not spiffe://<td>/ns/<ns>/sa/<sa>")]
    NotSpiffe(String),
}

/// Server and client configs for one identity version.
#[derive(Debug)]
struct Built {
    version: u64,
    configs: Configs,
}

/// The configs one certificate makes.
#[derive(Debug, Clone)]
pub(crate) struct Configs {
    pub(crate) server: Arc<ServerConfig>,
    /// Offers `h2`.
    pub(crate) client: Arc<ClientConfig>,
    /// Offers no ALPN id (opaque TCP).
    pub(crate) client_tcp: Arc<ClientConfig>,
}

/// One worker's TLS configs.
#[derive(Debug, Default)]
pub(crate) struct CoreTls {
    built: RefCell<Option<Built>>,
    min_version: MinVersion,
}

impl CoreTls {
    pub(crate) fn new(min_version: MinVersion) -> Self {
        CoreTls {
            built: RefCell::new(None),
            min_version,
        }
    }

    /// The server config for the current certificate (built on this core on first use after a
    /// rotation).
    pub(crate) fn server(&self, cell: &IdentityCell) -> Result<Arc<ServerConfig>, ConfigError> {
        self.current(cell, |c| c.server.clone())
    }

    /// The client config (ALPN `h2`) for the current certificate.
    pub(crate) fn client(&self, cell: &IdentityCell) -> Result<Arc<ClientConfig>, ConfigError> {
        self.current(cell, |c| c.client.clone())
    }

    /// The client config for opaque TCP.
    pub(crate) fn client_tcp(&self, cell: &IdentityCell) -> Result<Arc<ClientConfig>, ConfigError> {
        self.current(cell, |c| c.client_tcp.clone())
    }

    fn current<T>(&self, cell: &IdentityCell, pick: impl Fn(&Configs) -> T) -> Result<T, ConfigError> {
        let version = cell.version();
        if let Some(b) = &*self.built.borrow() {
            if b.version == version {
                return Ok(pick(&b.configs));
            }
        }
        let identity = cell.load().ok_or(ConfigError::NoIdentity)?;
        let configs = build(&identity, self.min_version)?;
        let picked = pick(&configs);
        *self.built.borrow_mut() = Some(Built { version, configs });
        Ok(picked)
    }
}

/// Builds both configs for `identity`.
pub(crate) fn build(identity: &Identity, min: MinVersion) -> Result<Configs, ConfigError> {
    let own =
        PeerIdentity::parse(&identity.spiffe_id).ok_or_else(|| ConfigError::NotSpiffe(identity.spiffe_id.clone()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(identity.roots.iter().cloned());
    if added == 0 {
        return Err(ConfigError::NoRoots);
    }
    let roots = Arc::new(roots);
    let provider = provider();

    // Every TLS client of an inbound port must present a mesh certificate: a TLS connection
    // without one is refused in the handshake (PERMISSIVE still takes plaintext).
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| ConfigError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(min.versions())?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    if let Some(t) = ticketer() {
        server.ticketer = t;
    }

    let verifier = MeshServerVerifier::new(roots, own.trust_domain().to_string(), provider.clone());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(min.versions())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    let client_tcp = Arc::new(client.clone());
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
        client_tcp,
    })
}
