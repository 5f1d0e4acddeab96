//! The mesh CA of one run: a root and two SPIFFE workload certificates, written as PEM files
//! for `ProxyConfig.spec.identity`, so `mesh` runs mutual TLS between its two proxies without a
//! control plane; `haproxy-mesh` gives the same certificates to its two haproxies.
//!
//! Made fresh for every run (in `OUT/pki/`) with `rcgen`, the same way the proxy's end-to-end
//! tests make theirs: nothing to install, nothing kept between runs, and the files sit beside
//! the report so that anyone can inspect what the proxies were given (`openssl x509 -text`).
//! The certificates are ECDSA P-256 (rcgen's default), the mesh's usual key type.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The trust domain of the bench's mesh (Istio's default).
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The namespace both workloads of `mesh` live in; the server side's `PeerAuthentication` is
/// written for it.
pub const NAMESPACE: &str = "bench";

/// One side of the mesh hop: the workload's name is its service account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The load generator's sidecar (mTLS client).
    Client,
    /// The echo's sidecar (mTLS server, `PeerAuthentication` STRICT).
    Server,
}

impl Side {
    /// The workload's name and service account.
    pub fn service_account(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }

    /// The SPIFFE id its certificate carries as its URI SAN.
    pub fn spiffe_id(self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}", self.service_account())
    }
}

/// The three files of `spec.identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The workload certificate (leaf, signed by the root directly).
    pub cert: PathBuf,
    /// Its PKCS#8 private key.
    pub key: PathBuf,
    /// The certificate and its key in one file (`<name>.pem`, owner-readable only): haproxy's
    /// `crt` takes them together, and `haproxy-mesh` must run on the very same identities as
    /// `mesh`, not on certificates of its own.
    pub bundle: PathBuf,
    /// The mesh root, the trust bundle for the peer's certificate.
    pub ca: PathBuf,
}

/// What [`write`] made: the root and each side's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPki {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `client-cert.pem`, `client-key.pem`, `client.pem`, `ca.pem`.
    pub client: IdentityFiles,
    /// `server-cert.pem`, `server-key.pem`, `server.pem`, `ca.pem`.
    pub server: IdentityFiles,
}

impl MeshPki {
    /// The identity of `side`.
    pub fn identity(&self, side: Side) -> &IdentityFiles {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }
}

/// Makes a new root and one workload certificate per side, and writes them into `dir`
/// (created if missing): `ca.pem`, `client-cert.pem`, `client-key.pem`, `server-cert.pem`,
/// `server-key.pem`, and each side's certificate and key again as one bundle (`client.pem`,
/// `server.pem`). Keys (and bundles) are written owner-readable only.
pub fn write(dir: &Path) -> anyhow::Result<MeshPki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut root = CertificateParams::new(Vec::<String>::new()).context("root parameters")?;
    root.distinguished_name
        .push(DnType::CommonName, "ringmesh-bench mesh root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_key = KeyPair::generate().context("generating the root key")?;
    let issuer = CertifiedIssuer::self_signed(root, root_key).context("signing the root")?;
    let ca = dir.join("ca.pem");
    write_file(&ca, issuer.pem().as_bytes(), false)?;
    let leaf = |side: Side| -> anyhow::Result<IdentityFiles> {
        let name = side.service_account();
        let mut params = CertificateParams::new(Vec::<String>::new()).context("leaf parameters")?;
        let uri = side.spiffe_id();
        params.subject_alt_names = vec![SanType::URI(
            uri.as_str().try_into().with_context(|| format!("{uri} as a URI SAN"))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // Each side's certificate serves both roles, as a sidecar's does (it is a client to
        // other workloads and a server to them).
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().with_context(|| format!("generating the {name} key"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing the {name} certificate"))?;
        let files = IdentityFiles {
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
            bundle: dir.join(format!("{name}.pem")),
            ca: ca.clone(),
        };
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        write_file(&files.cert, cert_pem.as_bytes(), false)?;
        write_file(&files.key, key_pem.as_bytes(), true)?;
        write_file(&files.bundle, format!("{cert_pem}{key_pem}").as_bytes(), true)?;
        Ok(files)
    };
    let client = leaf(Side::Client)?;
    let server = leaf(Side::Server)?;
    Ok(MeshPki { ca, client, server })
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 });
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
    use std::sync::Arc;

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The URI SANs of a certificate.
    fn uris(der: &CertificateDer<'_>) -> Vec<String> {
        let (_, x509) = x509_parser::parse_x509_certificate(der).unwrap();
        x509.subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_files_parse_and_each_leaf_chains_to_the_root_with_its_spiffe_id() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = write(&dir).unwrap();
        let names: Vec<PathBuf> = [
            "ca.pem",
            "client-cert.pem",
            "client-key.pem",
            "server-cert.pem",
            "server-key.pem",
            "client.pem",
            "server.pem",
        ]
        .iter()
        .map(|f| dir.join(f))
        .collect();
        for p in &names {
            assert!(p.is_file(), "{} missing", p.display());
        }
        assert_eq!(
            (&pki.ca, &pki.client.ca, &pki.server.ca),
            (&names[0], &names[0], &names[0])
        );
        assert_eq!((&pki.client.cert, &pki.client.key), (&names[1], &names[2]));
        assert_eq!((&pki.server.cert, &pki.server.key), (&names[3], &names[4]));
        assert_eq!((&pki.client.bundle, &pki.server.bundle), (&names[5], &names[6]));
        use std::os::unix::fs::PermissionsExt as _;
        for private in [&pki.server.key, &pki.client.bundle, &pki.server.bundle] {
            let mode = std::fs::metadata(private).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} readable by others: {mode:o}", private.display());
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(&pki.ca)).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        for side in [Side::Client, Side::Server] {
            let files = pki.identity(side);
            let leaf = cert(&files.cert);
            // The chain: the leaf verifies against the root alone, as the peer proxy checks it.
            verifier
                .verify_client_cert(&leaf, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{side:?}'s certificate does not chain to ca.pem: {e}"));
            assert_eq!(uris(&leaf), [side.spiffe_id()]);
            // The bundle is this certificate followed by this key.
            let bundle = std::fs::read(&files.bundle).unwrap();
            assert_eq!(
                CertificateDer::pem_slice_iter(&bundle)
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                std::slice::from_ref(&leaf)
            );
            assert_eq!(
                PrivateKeyDer::from_pem_slice(&bundle).unwrap().secret_der(),
                PrivateKeyDer::from_pem_file(&files.key).unwrap().secret_der()
            );
            // The key is the certificate's: rustls refuses a pair that does not match.
            let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf], key)
                .unwrap_or_else(|e| panic!("{side:?}'s key does not match its certificate: {e}"));
        }
        // ... which it does tell: the client's key with the server's certificate is refused.
        let mismatched = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert(&pki.server.cert)],
                PrivateKeyDer::from_pem_file(&pki.client.key).unwrap(),
            );
        assert!(mismatched.is_err(), "a key of another certificate was accepted");
        assert_eq!(Side::Client.spiffe_id(), "spiffe://cluster.local/ns/bench/sa/client");
        assert_eq!(Side::Server.spiffe_id(), "spiffe://cluster.local/ns/bench/sa/server");

        // Another run's root does not certify this run's workloads.
        let other = write(&tmp.path().join("other")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(&other.ca)).unwrap();
        let foreign = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        assert!(foreign
            .verify_client_cert(&cert(&pki.client.cert), &[], UnixTime::now())
            .is_err());
    }
}
