//! A test certificate authority: roots and SPIFFE workload certificates written as PEM files
//! for `ProxyConfig.spec.identity`, so mTLS tests need no control plane; and raw TLS clients
//! with or without a client certificate, to knock on an inbound port as an outsider would.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A root CA that issues workload certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A workload certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate (leaf only: the root signs it directly).
    pub cert_pem: String,
    /// Its PKCS#8 key.
    pub key_pem: String,
}

impl TestCa {
    /// A new root named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed root"),
        }
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `spiffe://<td>/ns/<ns>/sa/<sa>` (any URI given as `uri`).
    pub fn issue_uri(&self, uri: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("ia5 uri"))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A workload certificate in the `cluster.local` trust domain.
    pub fn issue(&self, ns: &str, sa: &str) -> Leaf {
        self.issue_uri(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"))
    }

    /// Writes a certificate for `ns/sa`, its key and this root into `dir`, and returns the
    /// `ProxyConfig` lines (`  identity: ...`, indented for `proxy_config`'s `extra_spec`).
    pub fn identity_spec(&self, dir: &Path, ns: &str, sa: &str) -> String {
        let leaf = self.issue(ns, sa);
        let (cert, key, ca) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
        std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
        std::fs::write(&key, &leaf.key_pem).expect("write key");
        std::fs::write(&ca, self.root_pem()).expect("write ca");
        format!(
            "  identity:\n    certFile: {}\n    keyFile: {}\n    caFile: {}\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    }
}

/// A rustls client config that accepts any server certificate, with `client` as its own
/// certificate if given, offering `alpn`.
pub fn client_config(client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

    /// Accepts any server certificate: these clients knock on a proxy's door to see whether it
    /// opens, they do not test the proxy's certificate.
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain: Vec<CertificateDer<'static>> =
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("cert pem")];
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key pem");
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Sends `request` over TLS to `addr` with `config` and reads until the server closes. `Err`
/// when the handshake or the exchange fails.
pub async fn tls_exchange(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("svc.test").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    tls.write_all(request).await?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out).await {
        Ok(_) => Ok(out),
        // A server that closes without close_notify after answering: the answer counts.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(out),
        Err(e) => Err(e),
    }
}
