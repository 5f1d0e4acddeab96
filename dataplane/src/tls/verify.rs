//! Who the peer is: the SPIFFE id in its certificate, and the check a client makes of the
//! server it dialled.
//!
//! Mesh certificates name a workload by one URI SAN, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`,
//! and no DNS name, so rustls's stock server verifier (which matches the dialled host name
//! against DNS SANs) cannot be used between proxies. [`MeshServerVerifier`] runs rustls's own
//! chain check against the trust bundle, then asks for a SPIFFE id in the bundle's trust
//! domain (and, when the DestinationRule lists `subjectAltNames`, one of those).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// A peer's verified workload identity.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// `spiffe://td/ns/NS/sa/SA`.
    spiffe: Box<str>,
    /// Where `ns/` starts, `sa/` starts, in `spiffe`.
    ns_at: usize,
    sa_at: usize,
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe)
    }
}

const SCHEME: &str = "spiffe://";

impl PeerIdentity {
    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; anything else (another SPIFFE path, more
    /// segments, empty parts) is not a workload identity.
    pub(crate) fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(SCHEME)?;
        let mut parts = rest.split('/');
        let (td, ns_kw, ns, sa_kw, sa) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || ns_kw != "ns" || sa_kw != "sa" || [td, ns, sa].iter().any(|p| p.is_empty()) {
            return None;
        }
        let ns_at = SCHEME.len() + td.len() + "/ns/".len();
        let sa_at = ns_at + ns.len() + "/sa/".len();
        Some(PeerIdentity {
            spiffe: uri.into(),
            ns_at,
            sa_at,
        })
    }

    /// The whole URI.
    pub(crate) fn spiffe(&self) -> &str {
        &self.spiffe
    }

    /// Istio's principal: the URI without `spiffe://` (`cluster.local/ns/foo/sa/bar`).
    pub(crate) fn principal(&self) -> &str {
        &self.spiffe[SCHEME.len()..]
    }

    /// The trust domain.
    pub(crate) fn trust_domain(&self) -> &str {
        &self.spiffe[SCHEME.len()..self.ns_at - "/ns/".len()]
    }

    /// The namespace.
    pub(crate) fn namespace(&self) -> &str {
        &self.spiffe[self.ns_at..self.sa_at - "/sa/".len()]
    }

    /// The service account.
    pub(crate) fn service_account(&self) -> &str {
        &self.spiffe[self.sa_at..]
    }
}

/// The workload identity a certificate names: its first URI SAN that is a SPIFFE workload id.
pub(crate) fn identity_of(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => PeerIdentity::parse(uri),
        _ => None,
    })
}

/// Checks the server a proxy dialled: chain to the trust bundle, a SPIFFE id in `trust_domain`,
/// and one of `expected` when the DestinationRule names any.
#[derive(Debug)]
pub(crate) struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl MeshServerVerifier {
    pub(crate) fn new(roots: Arc<RootCertStore>, trust_domain: String, provider: Arc<CryptoProvider>) -> Self {
        MeshServerVerifier {
            roots,
            trust_domain,
            provider,
        }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match identity_of(end_entity) {
            Some(id) if id.trust_domain() == self.trust_domain => Ok(ServerCertVerified::assertion()),
            Some(_) | None => Err(Error::InvalidCertificate(CertificateError::NotValidForName)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_id_splits_into_its_parts() {
        let id = PeerIdentity::parse("spiffe://cluster.local/ns/shop/sa/reviews").unwrap();
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/reviews");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "reviews");
    }

    #[test]
    fn other_uris_are_not_workload_ids() {
        for uri in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/sa/a/ns/b",
        ] {
            assert!(PeerIdentity::parse(uri).is_none(), "{uri}");
        }
    }
}
