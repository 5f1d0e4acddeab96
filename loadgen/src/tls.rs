//! TLS settings for `ringmesh-echo` (server) and `ringmesh-loadgen` (client), on rustls.
//!
//! Both sides use rustls with the `ring` crypto provider, chosen explicitly rather than through
//! rustls' process-wide default, so nothing depends on which provider another crate installed
//! and no C/cmake toolchain (aws-lc) is needed to build. The echo server offers ALPN `h2` and
//! `http/1.1`; without certificate files it generates a self-signed one at start (`rcgen`) for
//! `localhost` and `127.0.0.1`, and it can require client certificates signed by a given CA
//! (mTLS). The load generator verifies the server against a given CA (or skips verification
//! with `--insecure`) and presents a client certificate when given one. Configs are built once,
//! before any connection, so a bad file is reported up front and never mid-run.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// A PEM input held nothing usable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (certificate, key, CA).
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("client CA: {0}")]
    ClientVerifier(String),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// The host is not a valid TLS server name.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// A client certificate was given without its key, or the other way round.
    #[error("a certificate needs both the certificate and its key")]
    IncompleteIdentity,
}

/// The echo server's TLS settings (PEM text, so tests need no files).
#[derive(Clone, Default)]
pub struct ServerTlsOptions {
    /// Certificate chain; `None` generates a self-signed certificate at start.
    pub cert_pem: Option<String>,
    /// Private key of the certificate (required with `cert_pem`).
    pub key_pem: Option<String>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca_pem: Option<String>,
}

impl fmt::Debug for ServerTlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsOptions")
            .field("cert_pem", &self.cert_pem.as_ref().map(|_| "<pem>"))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("client_ca_pem", &self.client_ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// The load generator's TLS settings.
#[derive(Clone, Default)]
pub struct ClientTlsOptions {
    /// CA certificates the server must chain to (`--cacert`).
    pub ca_pem: Option<String>,
    /// Client certificate chain for mTLS (`--cert`).
    pub cert_pem: Option<String>,
    /// Client private key for mTLS (`--key`).
    pub key_pem: Option<String>,
    /// Accept any server certificate (`--insecure`); the handshake signature is still checked.
    pub insecure: bool,
}

impl fmt::Debug for ClientTlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("cert_pem", &self.cert_pem.as_ref().map(|_| "<pem>"))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            what,
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsSetupError::Pem {
        what,
        reason: e.to_string(),
    })
}

fn roots(pem: &str, what: &'static str) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    for c in certs(pem, what)? {
        store.add(c).map_err(|e| TlsSetupError::Pem {
            what,
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

/// A self-signed certificate and its key (PEM) for `localhost` and `127.0.0.1`.
pub fn self_signed() -> Result<(String, String), TlsSetupError> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// A built server config and, when it was generated, the self-signed certificate (PEM) that
/// clients can trust.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The rustls config (ALPN `h2`, `http/1.1`).
    pub config: Arc<ServerConfig>,
    /// The generated certificate, when no certificate was given.
    pub generated_cert_pem: Option<String>,
}

/// Builds the echo server's rustls config.
pub fn server_config(opts: &ServerTlsOptions) -> Result<ServerTls, TlsSetupError> {
    let (cert_pem, key_pem, generated) = match (&opts.cert_pem, &opts.key_pem) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), None),
        (None, None) => {
            let (c, k) = self_signed()?;
            (c.clone(), k, Some(c))
        }
        _ => return Err(TlsSetupError::IncompleteIdentity),
    };
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &opts.client_ca_pem {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca, "client CA")?), provider)
                .build()
                .map_err(|e| TlsSetupError::ClientVerifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(&cert_pem, "certificate")?, key(&key_pem, "key")?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        generated_cert_pem: generated,
    })
}

/// Builds the load generator's rustls config offering `alpn`.
pub fn client_config(opts: &ClientTlsOptions, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(
                provider.signature_verification_algorithms,
            )))
    } else {
        let store = match &opts.ca_pem {
            Some(ca) => roots(ca, "CA certificate")?,
            // No system trust store is read: the load generator only talks to servers whose
            // CA the user names, so an empty store fails closed with a clear TLS error.
            None => RootCertStore::empty(),
        };
        builder.with_root_certificates(store)
    };
    let mut config = match (&opts.cert_pem, &opts.key_pem) {
        (Some(c), Some(k)) => builder.with_client_auth_cert(certs(c, "client certificate")?, key(k, "client key")?)?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsSetupError::IncompleteIdentity),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The TLS server name (SNI and verified identity) for a URL host: a DNS name or an IP.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| TlsSetupError::ServerName(host.to_owned()))
}

/// Classifies a failed TLS connect or accept: a rustls error (bad certificate, alert from the
/// peer, no common protocol) is a TLS failure; anything else is the connection going away.
pub(crate) fn is_tls_error(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// `--insecure`: skips chain and name checks but still verifies the handshake signatures, so
/// the connection is encrypted to whoever holds the presented certificate's key.
#[derive(Debug)]
struct AcceptAnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_server_and_clients_build() {
        let s = server_config(&ServerTlsOptions::default()).unwrap();
        let pem = s.generated_cert_pem.unwrap();
        assert_eq!(s.config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let c = ClientTlsOptions {
            ca_pem: Some(pem),
            ..Default::default()
        };
        assert!(client_config(&c, &[ALPN_H2]).is_ok());
        assert!(client_config(
            &ClientTlsOptions {
                insecure: true,
                ..Default::default()
            },
            &[ALPN_H2]
        )
        .is_ok());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let bad = ServerTlsOptions {
            cert_pem: Some("not pem".into()),
            key_pem: Some("nope".into()),
            client_ca_pem: None,
        };
        assert!(server_config(&bad).is_err());
        let half = ClientTlsOptions {
            cert_pem: Some("x".into()),
            ..Default::default()
        };
        assert!(matches!(
            client_config(&half, &[]),
            Err(TlsSetupError::IncompleteIdentity)
        ));
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("bad name!").is_err());
    }
}
