//! The mesh CA: who a proxy is, and the certificate that says so.
//!
//! **Identities.** A workload's identity is its namespace and service account, written as a
//! SPIFFE id `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>` ([`WorkloadId`]).
//! A proxy proves it once per discovery stream with the credential in its `Hello`: a bootstrap
//! token ([`Ca::create_token`], for proxies outside Kubernetes) or, with `--kubernetes`, a
//! service-account token the API server vouches for (TokenReview). The certificate carries the
//! identity the credential proves, never one the CSR asks for: a CSR naming anything else is
//! refused, so a stolen token gets at most the identity it was made for.
//!
//! **Bootstrap tokens** are stateless, so replicas and restarts agree without sharing a table:
//! `rmt1.<base64url(namespace:service account:expiry)>.<base64url(HMAC-SHA256)>`, keyed by a
//! hash of the CA's private key. The flip side: a token cannot be revoked, except by its
//! expiry or by changing the CA key.
//!
//! **The root** is made on first start and kept in the store (`store.rs`) so that restarts and
//! replicas sign with one key; or it is the user's (`--ca-cert`, `--ca-key`), root or
//! intermediate. The trust bundle sent to proxies is the root(s) plus `--ca-extra-roots`, so a
//! root rotation can overlap old and new roots (README, "Certificates and root rotation").
//! The control plane's own TLS port serves a certificate from the same CA (`tls.rs`).

pub mod store;
pub mod tls;

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Default trust domain (Istio's).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The shortest certificate the CA signs: a shorter one would be renewed before it is in use.
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(60);
/// How far back `notBefore` is set, so that a peer whose clock is a little behind accepts a
/// certificate signed a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Lifetime of a generated root.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Prefix of a bootstrap token (its format's version).
pub const TOKEN_PREFIX: &str = "rmt1.";
/// Default lifetime of a bootstrap token (`ringmesh token create --ttl`).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(8760 * 3600);

/// Why the CA could not be set up or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A certificate or key does not parse or does not fit.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which input, e.g. `--ca-cert ca.pem`.
        what: String,
        /// Why.
        reason: String,
    },
    /// rcgen could not build or sign a certificate.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The etcd store failed.
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    /// The Kubernetes API server failed.
    #[error("Kubernetes secret {name}: {reason}")]
    Kubernetes {
        /// `namespace/name`.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// Why a CSR was not signed; the text goes back to the proxy as the refusal's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The CSR does not parse or its signature is wrong.
    #[error("the CSR does not parse: {0}")]
    BadCsr(String),
    /// The CSR asks for another identity than the credential proves.
    #[error("the CSR asks for {asked}, but the credential proves {allowed}")]
    OtherIdentity {
        /// What the CSR's subject alternative names say.
        asked: String,
        /// The SPIFFE id the credential proves.
        allowed: String,
    },
    /// Signing failed (a bug or a broken key; logged).
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a bootstrap token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `rmt1.<payload>.<mac>`, or a payload that does not decode.
    #[error("not a ringmesh bootstrap token (expected rmt1.<payload>.<mac>)")]
    Malformed,
    /// The MAC does not match: forged, altered, or made with another CA key.
    #[error("bootstrap token refused: its signature does not match this CA's key (forged, altered, or made before the CA key changed)")]
    BadSignature,
    /// Past its expiry.
    #[error("bootstrap token for {id} expired {ago}s ago")]
    Expired {
        /// The identity it named.
        id: String,
        /// Seconds since it expired.
        ago: u64,
    },
}

/// A namespace and service account, each a valid Kubernetes name: the identity of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    namespace: String,
    service_account: String,
}

impl WorkloadId {
    /// Checks both names (lower-case letters, digits, `-` and `.`, starting and ending with a
    /// letter or digit, at most 253): what keeps `/` and other URI syntax out of a SPIFFE id.
    pub fn new(namespace: &str, service_account: &str) -> Result<WorkloadId, String> {
        for (what, v) in [("namespace", namespace), ("service account", service_account)] {
            let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            let ok = v.len() <= 253
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && edge(v.as_bytes().first())
                && edge(v.as_bytes().last());
            if !ok {
                return Err(format!(
                    "{what} {v:?} is not a Kubernetes name (lower-case letters, digits, `-`, `.`)"
                ));
            }
        }
        Ok(WorkloadId {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

impl fmt::Display for WorkloadId {
    /// `namespace/service account`, as people name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// A CA certificate and its private key, as PEM: what the store keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for CaMaterial {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A new root: ECDSA P-256, valid for [`ROOT_LIFETIME`], `CN=ringmesh root CA <trust domain>`.
pub fn generate_root(trust_domain: &str) -> Result<CaMaterial, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("ringmesh root CA {trust_domain}"));
    dn.push(DnType::OrganizationName, "ringmesh");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// 16 random bytes, the first bit clear (a positive DER integer) and the second set (so the
/// number keeps all 16 bytes).
fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    // The system's RNG failing is not recoverable anywhere; a zero serial would still be
    // accepted, but fall back to the clock rather than repeat one.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = nanos.to_be_bytes();
    }
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

/// Every certificate in a PEM text, DER.
pub fn pem_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    use rustls::pki_types::pem::PemObject as _;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| CaError::Invalid {
        what: what.to_owned(),
        reason: format!("not PEM certificates: {e}"),
    })?;
    if certs.is_empty() {
        return Err(CaError::Invalid {
            what: what.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// PEM text of DER certificates.
pub fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// How certificates are issued.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// `--trust-domain`.
    pub trust_domain: String,
    /// `--cert-lifetime`: what a request without a lifetime gets.
    pub cert_lifetime: Duration,
    /// `--max-cert-lifetime`: the most a request gets.
    pub max_cert_lifetime: Duration,
    /// `--ca-extra-roots`: more roots for the trust bundle (a root rotation's overlap).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// `--ca-bundle`: the roots above a user-supplied intermediate.
    pub upstream_roots: Vec<CertificateDer<'static>>,
}

impl Default for CaSettings {
    fn default() -> Self {
        CaSettings {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            cert_lifetime: Duration::from_secs(24 * 3600),
            max_cert_lifetime: Duration::from_secs(24 * 3600),
            extra_roots: Vec::new(),
            upstream_roots: Vec::new(),
        }
    }
}

/// A signed leaf: its chain (leaf first, then the intermediate if the CA is one) and the trust
/// bundle to send with it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Leaf, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The roots.
    pub trust_bundle: Vec<CertificateDer<'static>>,
    /// When it expires.
    pub not_after: SystemTime,
}

/// The mesh CA: signs CSRs, issues its own serving certificates, makes and checks bootstrap
/// tokens.
pub struct Ca {
    settings: CaSettings,
    issuer: Issuer<'static, KeyPair>,
    /// Intermediates sent after each leaf: the CA's own certificate when it is not a root.
    intermediates: Vec<CertificateDer<'static>>,
    trust_bundle: Vec<CertificateDer<'static>>,
    token_key: ring::hmac::Key,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.settings.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .field("trust_bundle", &self.trust_bundle.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// The CA of `material` (a generated root, or a user's root or intermediate, told apart by
    /// whether it signed itself).
    pub fn new(material: &CaMaterial, settings: CaSettings) -> Result<Ca, CaError> {
        let cert = pem_certs("CA certificate", &material.cert_pem)?.remove(0);
        let key = KeyPair::from_pem(&material.key_pem).map_err(|e| CaError::Invalid {
            what: "CA key".into(),
            reason: e.to_string(),
        })?;
        let key_der = key.serialize_der();
        let (self_signed, spki_matches) = {
            use x509_parser::prelude::FromDer as _;
            let (_, x) =
                x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).map_err(|e| CaError::Invalid {
                    what: "CA certificate".into(),
                    reason: e.to_string(),
                })?;
            if !x.is_ca() {
                return Err(CaError::Invalid {
                    what: "CA certificate".into(),
                    reason: "it is not a CA (basicConstraints CA:TRUE is missing)".into(),
                });
            }
            (
                x.subject() == x.issuer(),
                x.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
            )
        };
        if !spki_matches {
            return Err(CaError::Invalid {
                what: "CA key".into(),
                reason: "it is not the key of the CA certificate".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        let mut trust_bundle = Vec::new();
        let mut intermediates = Vec::new();
        if self_signed {
            trust_bundle.push(cert);
        } else {
            intermediates.push(cert.clone());
            // The intermediate itself anchors trust too when the roots above it are not given.
            if settings.upstream_roots.is_empty() {
                trust_bundle.push(cert);
            }
        }
        for extra in settings.upstream_roots.iter().chain(&settings.extra_roots) {
            if !trust_bundle.contains(extra) {
                trust_bundle.push(extra.clone());
            }
        }
        let mut seed = ring::digest::Context::new(&ring::digest::SHA256);
        seed.update(b"ringmesh bootstrap token v1");
        seed.update(&key_der);
        let token_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.finish().as_ref());
        Ok(Ca {
            settings,
            issuer,
            intermediates,
            trust_bundle,
            token_key,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// The roots proxies trust.
    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.trust_bundle
    }

    /// The lifetime a request for `asked` gets: the default for 0, at most the maximum, at
    /// least [`MIN_CERT_LIFETIME`].
    pub fn lifetime(&self, asked: Duration) -> Duration {
        let wanted = if asked.is_zero() {
            self.settings.cert_lifetime
        } else {
            asked
        };
        wanted.min(self.settings.max_cert_lifetime).max(MIN_CERT_LIFETIME)
    }

    /// Signs `csr_der` for `id` with a lifetime of `asked` (bounded by [`Ca::lifetime`]). The
    /// certificate's only identity is `id`'s SPIFFE id; a CSR that names any other identity
    /// (a URI, DNS name, IP or e-mail address) is refused.
    pub fn sign(&self, csr_der: &[u8], id: &WorkloadId, asked: Duration) -> Result<Signed, SignError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let spiffe = id.spiffe_id(self.trust_domain());
        let others: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(u) if u.as_str() == spiffe => None,
                SanType::URI(u) => Some(u.as_str().to_owned()),
                SanType::DnsName(d) => Some(format!("DNS:{}", d.as_str())),
                SanType::IpAddress(ip) => Some(format!("IP:{ip}")),
                SanType::Rfc822Name(m) => Some(format!("email:{}", m.as_str())),
                other => Some(format!("{other:?}")),
            })
            .collect();
        if !others.is_empty() {
            return Err(SignError::OtherIdentity {
                asked: others.join(", "),
                allowed: spiffe,
            });
        }
        let lifetime = self.lifetime(asked);
        let now = SystemTime::now();
        let not_after = now + lifetime;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            spiffe
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        params.use_authority_key_identifier_extension = true;
        let leaf = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| SignError::Sign(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(Signed {
            chain,
            trust_bundle: self.trust_bundle.clone(),
            not_after,
        })
    }

    /// A serving certificate for the control plane itself, with a new key: `dns` and `ips` as
    /// names, `spiffe` as its identity, valid for `lifetime`.
    pub fn serving_certificate(
        &self,
        dns: &[String],
        ips: &[std::net::IpAddr],
        spiffe: &str,
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ringmesh-control");
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for d in dns {
            sans.push(SanType::DnsName(d.clone().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        sans.push(SanType::URI(spiffe.to_owned().try_into()?));
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + lifetime.max(MIN_CERT_LIFETIME)).into();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }

    /// A bootstrap token proving `id` until `now + ttl`, and its expiry in seconds since the
    /// Unix epoch.
    pub fn create_token(&self, id: &WorkloadId, ttl: Duration, now: SystemTime) -> (String, u64) {
        let expires = unix(now).saturating_add(ttl.as_secs());
        let payload = URL_SAFE_NO_PAD.encode(format!("{}:{}:{expires}", id.namespace, id.service_account));
        let signed = format!("{TOKEN_PREFIX}{payload}");
        let mac = ring::hmac::sign(&self.token_key, signed.as_bytes());
        (format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())), expires)
    }

    /// The identity a bootstrap token proves, if it is this CA's and has not expired.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<WorkloadId, TokenError> {
        let token = token.trim();
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let payload = signed.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
        ring::hmac::verify(&self.token_key, signed.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let text = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(TokenError::Malformed)?;
        let mut parts = text.splitn(3, ':');
        let (Some(ns), Some(sa), Some(exp)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let expires: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let id = WorkloadId::new(ns, sa).map_err(|_| TokenError::Malformed)?;
        let now = unix(now);
        if now >= expires {
            return Err(TokenError::Expired {
                id: id.spiffe_id(self.trust_domain()),
                ago: now - expires,
            });
        }
        Ok(id)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a credential says about a stream, decided once when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamIdentity {
    /// The credential proves this identity, which is the workload the proxy announced.
    Verified(WorkloadId),
    /// No certificates on this stream, and why (no credential, a bad one, or one for another
    /// workload than the proxy announced).
    Refused(String),
}

/// The CA and how credentials are checked: what the discovery and admin services share.
pub struct Authority {
    /// The CA.
    pub ca: Ca,
    /// The API server that checks Kubernetes tokens (`--kubernetes`).
    pub kube: Option<kube::Client>,
    /// `--require-credential`: a stream without a valid credential is refused outright.
    pub require_credential: bool,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("ca", &self.ca)
            .field("kube", &self.kube.is_some())
            .field("require_credential", &self.require_credential)
            .finish()
    }
}

impl Authority {
    /// The identity `credential` proves: a bootstrap token is checked here; anything else goes
    /// to the API server's TokenReview when there is one.
    pub async fn authenticate(&self, credential: &str) -> Result<WorkloadId, String> {
        let credential = credential.trim();
        if credential.is_empty() {
            return Err("the proxy sent no credential (controlPlane.credentialFile or RINGMESH_CREDENTIAL)".into());
        }
        if credential.starts_with(TOKEN_PREFIX) {
            return self
                .ca
                .verify_token(credential, SystemTime::now())
                .map_err(|e| e.to_string());
        }
        match &self.kube {
            Some(client) => crate::kubernetes::review_token(client, credential).await,
            None => Err(
                "the credential is not a ringmesh bootstrap token, and this control plane cannot check Kubernetes \
                 tokens (it does not run with --kubernetes)"
                    .into(),
            ),
        }
    }

    /// What a stream whose proxy announced `workload` and sent `credential` may get.
    pub async fn stream_identity(
        &self,
        node: &str,
        workload: Option<&ringmesh_api::proto::Workload>,
        credential: &str,
    ) -> StreamIdentity {
        let proven = match self.authenticate(credential).await {
            Ok(id) => id,
            Err(reason) => return StreamIdentity::Refused(reason),
        };
        let (ns, sa) = workload.map_or(("", ""), |w| (w.namespace.as_str(), w.service_account.as_str()));
        if (ns, sa) != (proven.namespace(), proven.service_account()) {
            let reason = format!(
                "the credential proves {} but the proxy announced workload {ns}/{sa}",
                proven.spiffe_id(self.ca.trust_domain())
            );
            tracing::warn!(node = %node, proven = %proven, announced = %format!("{ns}/{sa}"), "no certificates: {reason}");
            return StreamIdentity::Refused(reason);
        }
        StreamIdentity::Verified(proven)
    }
}

#[cfg(test)]
mod tests;
