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
pub(crate) use ringmesh_api::snapshot::TlsVersion as MinVersion;

trait Versions {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion];
}

impl Versions for MinVersion {
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
    min_version: MinVersion,
    configs: Configs,
}

/// The server side of inbound mTLS for one certificate.
#[derive(Debug, Clone)]
pub(crate) struct ServerSide {
    pub(crate) config: Arc<ServerConfig>,
    /// The SPIFFE id the certificate names: the `By=` of the `x-forwarded-client-cert`
    /// elements this proxy writes (`tls::xfcc`).
    pub(crate) own_id: Arc<str>,
}

/// The configs one certificate makes.
#[derive(Debug, Clone)]
pub(crate) struct Configs {
    pub(crate) server: ServerSide,
    /// Offers `h2`.
    pub(crate) client: Arc<ClientConfig>,
    /// Offers no ALPN id (opaque TCP).
    pub(crate) client_tcp: Arc<ClientConfig>,
}

/// One worker's TLS configs.
#[derive(Debug, Default)]
pub(crate) struct CoreTls {
    built: RefCell<Option<Built>>,
}

impl CoreTls {
    /// The server config for the current certificate, with the id it names (built on this
    /// core on first use after a rotation, or after the config changed the oldest TLS version).
    pub(crate) fn server(&self, cell: &IdentityCell, min: MinVersion) -> Result<ServerSide, ConfigError> {
        self.current(cell, min, |c| c.server.clone())
    }

    /// The client config (ALPN `h2`) for the current certificate.
    pub(crate) fn client(&self, cell: &IdentityCell, min: MinVersion) -> Result<Arc<ClientConfig>, ConfigError> {
        self.current(cell, min, |c| c.client.clone())
    }

    /// The client config for opaque TCP.
    pub(crate) fn client_tcp(&self, cell: &IdentityCell, min: MinVersion) -> Result<Arc<ClientConfig>, ConfigError> {
        self.current(cell, min, |c| c.client_tcp.clone())
    }

    fn current<T>(
        &self,
        cell: &IdentityCell,
        min_version: MinVersion,
        pick: impl Fn(&Configs) -> T,
    ) -> Result<T, ConfigError> {
        let version = cell.version();
        if let Some(b) = &*self.built.borrow() {
            if b.version == version && b.min_version == min_version {
                return Ok(pick(&b.configs));
            }
        }
        let identity = cell.load().ok_or(ConfigError::NoIdentity)?;
        let configs = build(&identity, min_version)?;
        let picked = pick(&configs);
        *self.built.borrow_mut() = Some(Built {
            version,
            min_version,
            configs,
        });
        Ok(picked)
    }
}

/// Builds both configs for `identity`.
pub(crate) fn build(identity: &Identity, min: MinVersion) -> Result<Configs, ConfigError> {
    build_with(identity, min.versions())
}

fn build_with(identity: &Identity, versions: &[&'static SupportedProtocolVersion]) -> Result<Configs, ConfigError> {
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
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    if let Some(t) = ticketer() {
        server.ticketer = t;
    }

    let verifier = MeshServerVerifier::new(roots, own.trust_domain().to_string(), provider.clone());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    let client_tcp = Arc::new(client.clone());
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: ServerSide {
            config: Arc::new(server),
            own_id: own.spiffe().into(),
        },
        client: Arc::new(client),
        client_tcp,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tls::verify::identity_of;

    fn root() -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn identity(ca: &CertifiedIssuer<'static, KeyPair>, uri: &str) -> Identity {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, ca).unwrap();
        Identity {
            spiffe_id: uri.to_string(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots: vec![ca.der().clone()],
            serial: String::new(),
            not_before: SystemTime::now(),
            not_after: SystemTime::now(),
        }
    }

    /// Both configs for a certificate of `uri` signed by `ca`, TLS 1.3 only.
    fn tls13(ca: &CertifiedIssuer<'static, KeyPair>, uri: &str) -> Configs {
        build(&identity(ca, uri), MinVersion::Tls13).unwrap()
    }

    /// Runs one handshake between `client` and `server` over an in-memory pipe; `Ok` carries
    /// the identity the server saw and the bytes the client got back.
    fn handshake(client: &Configs, server: &Configs) -> Result<(Option<String>, Vec<u8>), String> {
        handshake_kind(client, server).map(|h| (h.seen, h.got))
    }

    /// What one handshake showed: the principal the server saw, what the client read, and
    /// whether the session was resumed.
    struct Handshook {
        seen: Option<String>,
        got: Vec<u8>,
        kind: Option<rustls::HandshakeKind>,
    }

    fn handshake_kind(client: &Configs, server: &Configs) -> Result<Handshook, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(server.server.config.clone());
            let serve = async move {
                let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
                let seen = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(identity_of);
                let kind = tls.get_ref().1.handshake_kind();
                tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
                tls.shutdown().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((seen.map(|i| i.principal().to_string()), kind))
            };
            let connector = tokio_rustls::TlsConnector::from(client.client.clone());
            let connect = async move {
                let name = ServerName::try_from("svc.test").unwrap();
                let mut tls = connector.connect(name, a).await.map_err(|e| e.to_string())?;
                let mut got = Vec::new();
                tls.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(got)
            };
            let (seen, got) = tokio::join!(serve, connect);
            let (seen, kind) = seen?;
            Ok(Handshook { seen, got: got?, kind })
        })
    }

    #[test]
    fn two_workloads_of_one_mesh_authenticate_each_other() {
        let ca = root();
        let server = tls13(&ca, "spiffe://cluster.local/ns/shop/sa/reviews");
        let client = tls13(&ca, "spiffe://cluster.local/ns/default/sa/web");
        let (seen, got) = handshake(&client, &server).unwrap();
        assert_eq!(seen.as_deref(), Some("cluster.local/ns/default/sa/web"));
        assert_eq!(got, b"hello");
    }

    #[test]
    fn a_second_connection_resumes_the_session() {
        let ca = root();
        let server = tls13(&ca, "spiffe://cluster.local/ns/shop/sa/reviews");
        let client = tls13(&ca, "spiffe://cluster.local/ns/default/sa/web");
        let first = handshake_kind(&client, &server).unwrap();
        assert_eq!(first.kind, Some(rustls::HandshakeKind::Full));
        let second = handshake_kind(&client, &server).unwrap();
        assert_eq!(
            second.kind,
            Some(rustls::HandshakeKind::Resumed),
            "a ticket from the first"
        );
        assert_eq!(
            second.seen.as_deref(),
            Some("cluster.local/ns/default/sa/web"),
            "identity kept on resumption"
        );
    }

    #[test]
    fn another_ca_or_trust_domain_is_refused() {
        let ca = root();
        let server = tls13(&ca, "spiffe://cluster.local/ns/shop/sa/reviews");
        // A client certificate from another CA: the server refuses it.
        let other = root();
        let stranger = tls13(&other, "spiffe://cluster.local/ns/default/sa/web");
        assert!(handshake(&stranger, &server).is_err());
        // A server of another trust domain (same CA): the client refuses it.
        let foreign = tls13(&ca, "spiffe://other.domain/ns/shop/sa/reviews");
        let client = tls13(&ca, "spiffe://cluster.local/ns/default/sa/web");
        let e = handshake(&client, &foreign).unwrap_err();
        assert!(e.contains("NotValidForName") || e.contains("BadCertificate"), "{e}");
    }

    #[test]
    fn an_identity_that_is_not_a_workload_id_is_refused() {
        let ca = root();
        let e = build(&identity(&ca, "https://example.com/x"), MinVersion::Tls13).unwrap_err();
        assert!(matches!(e, ConfigError::NotSpiffe(_)), "{e}");
        let mut empty = identity(&ca, "spiffe://cluster.local/ns/a/sa/b");
        empty.roots = vec![CertificateDer::from(vec![1, 2, 3])];
        assert!(matches!(build(&empty, MinVersion::Tls13), Err(ConfigError::NoRoots)));
    }

    #[test]
    fn tls12_only_when_allowed() {
        let ca = root();
        let id = identity(&ca, "spiffe://cluster.local/ns/a/sa/b");
        let tls12_client = build_with(&id, &[&rustls::version::TLS12]).unwrap();
        let strict = build(&id, MinVersion::Tls13).unwrap();
        assert!(handshake(&tls12_client, &strict).is_err(), "TLS 1.3 only by default");
        let lax = build(&id, MinVersion::Tls12).unwrap();
        assert!(handshake(&tls12_client, &lax).is_ok());
    }
}
