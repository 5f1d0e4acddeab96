//! The workload's identity: its SPIFFE certificate, private key and trust bundle.
//!
//! One [`IdentityCell`] per proxy, shared like `state::SnapshotSource`: the control thread
//! writes it (the certificate manager in `manager.rs`, or the static files of
//! `spec.identity.certFile/keyFile/caFile` at start and on reload), the workers read it. A
//! worker compares [`IdentityCell::version`] once per new connection and rebuilds its per-core
//! TLS settings only when it moved, so a rotation costs each core one rebuild, and connections
//! already open keep the certificate they started with. An identity is replaced whole, never
//! edited, so a reader never sees a new certificate with an old key.
//!
//! What the admin server's `/certs` shows is in [`CertStatus`].

pub(crate) mod manager;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use x509_parser::prelude::FromDer as _;

/// The workload's certificate, key and trust bundle, replaced whole on rotation.
pub(crate) struct Identity {
    /// `spiffe://cluster.local/ns/x/sa/y`.
    pub(crate) spiffe_id: String,
    /// Leaf first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// PKCS#8, generated in the proxy, never sent.
    pub(crate) key: PrivateKeyDer<'static>,
    /// Trust bundle (several during a root rotation).
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// Hex.
    pub(crate) serial: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl std::fmt::Debug for Identity {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why certificates, a key or roots could not become an [`Identity`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// A file or message holds no usable certificate or key.
    #[error("{0}")]
    Invalid(String),
}

/// What one certificate says, for `/certs` and for checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CertSummary {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) serial: String,
    pub(crate) not_before: String,
    pub(crate) not_after: String,
    /// URI subject alternative names (the SPIFFE id of a leaf).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) uris: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// A parsed certificate: its summary and validity.
fn parse(der: &CertificateDer<'_>) -> Result<(CertSummary, SystemTime, SystemTime), IdentityError> {
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| IdentityError::Invalid(format!("a certificate does not parse: {e}")))?;
    let uris = x
        .subject_alternative_name()
        .ok()
        .flatten()
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
        .unwrap_or_default();
    let (nb, na) = (
        system_time(x.validity().not_before.timestamp()),
        system_time(x.validity().not_after.timestamp()),
    );
    Ok((
        CertSummary {
            subject: x.subject().to_string(),
            issuer: x.issuer().to_string(),
            serial: hex(x.raw_serial()),
            not_before: rfc3339(nb),
            not_after: rfc3339(na),
            uris,
        },
        nb,
        na,
    ))
}

/// Summaries of `certs` (unparsable ones named as such).
pub(crate) fn summaries(certs: &[CertificateDer<'_>]) -> Vec<CertSummary> {
    certs
        .iter()
        .map(|c| {
            parse(c).map(|p| p.0).unwrap_or_else(|e| CertSummary {
                subject: e.to_string(),
                issuer: String::new(),
                serial: String::new(),
                not_before: String::new(),
                not_after: String::new(),
                uris: Vec::new(),
            })
        })
        .collect()
}

impl Identity {
    /// An identity of `chain` (leaf first), `key` and `roots`: the leaf must carry a SPIFFE id
    /// and be the key's certificate, and there must be a root.
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Identity, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Invalid("the certificate chain is empty".into()))?;
        if roots.is_empty() {
            return Err(IdentityError::Invalid("the trust bundle is empty".into()));
        }
        let (summary, not_before, not_after) = parse(leaf)?;
        let spiffe_id = summary
            .uris
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .cloned()
            .ok_or_else(|| IdentityError::Invalid("the certificate carries no spiffe:// URI".into()))?;
        // rustls checks that the key is the certificate's (what a TLS handshake would find
        // out later, and less clearly).
        rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            key.clone_key(),
            &rustls::crypto::ring::default_provider(),
        )
        .map_err(|e| IdentityError::Invalid(format!("the key does not fit the certificate: {e}")))?;
        Ok(Identity {
            spiffe_id,
            chain,
            key,
            roots,
            serial: summary.serial,
            not_before,
            not_after,
        })
    }

    /// The identity in `files` (PEM: the chain leaf first, the key, the roots).
    pub(crate) fn from_files(files: &ringmesh_api::snapshot::IdentityFiles) -> Result<Identity, IdentityError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| IdentityError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, IdentityError> {
            let bytes = read(p)?;
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            let certs = certs.map_err(|e| IdentityError::Invalid(format!("{}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(IdentityError::Invalid(format!("{}: no CERTIFICATE", p.display())));
            }
            Ok(certs)
        };
        let chain = certs(&files.cert)?;
        let roots = certs(&files.ca)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
            .map_err(|e| IdentityError::Invalid(format!("{}: {e}", files.key.display())))?;
        Identity::new(chain, key, roots).map_err(|e| match e {
            IdentityError::Invalid(m) => IdentityError::Invalid(format!("{}: {m}", files.cert.display())),
            other => other,
        })
    }

    /// How long until it expires (zero once it has).
    pub(crate) fn left(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

/// Shared by the control thread (writer) and the workers (readers): workers compare
/// `version()` once per new connection and rebuild their per-core TLS configs when it moved.
#[derive(Debug)]
pub(crate) struct IdentityCell {
    current: ArcSwapOption<Identity>,
    version: AtomicU64,
}

impl IdentityCell {
    /// Empty: no identity yet, version 0.
    pub(crate) fn new() -> Self {
        IdentityCell {
            current: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
        }
    }

    /// The current identity, if there is one.
    pub(crate) fn load(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }

    /// Moves on every `store`. Acquire pairs with the release in `store`: a worker that sees
    /// the new version also sees the identity stored before it.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Publishes `id`; workers pick it up at their next new connection.
    pub(crate) fn store(&self, id: Identity) {
        self.current.store(Some(Arc::new(id)));
        self.version.fetch_add(1, Ordering::Release);
    }
}

impl Default for IdentityCell {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the certificate comes from and how its renewal goes, for `/certs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CertStatus {
    /// `control plane`, `files`, or `none`.
    pub source: &'static str,
    /// Why there is no certificate source (`source: none`).
    pub reason: Option<String>,
    /// Why the last request or load failed, if it did (cleared by the next success).
    pub last_error: Option<String>,
    /// When it failed (RFC 3339).
    pub last_error_at: Option<String>,
    /// Certificates received or loaded since start.
    pub rotations: u64,
    /// When the next request is due (RFC 3339).
    pub next_request: Option<String>,
}

/// The shared cell the admin server reads [`CertStatus`] from.
pub type CertStatusCell = Arc<arc_swap::ArcSwap<CertStatus>>;

pub(crate) fn update_status(cell: &CertStatusCell, f: impl FnOnce(&mut CertStatus)) {
    let mut s = CertStatus::clone(&cell.load());
    f(&mut s);
    cell.store(Arc::new(s));
}

/// Loads `files` into `cell` (at start and on every reload), recording the outcome; a failed
/// load keeps the identity in use.
pub(crate) fn load_files(files: &ringmesh_api::snapshot::IdentityFiles, cell: &IdentityCell, status: &CertStatusCell) {
    match Identity::from_files(files) {
        Ok(id) => {
            let unchanged = cell
                .load()
                .is_some_and(|cur| cur.chain == id.chain && cur.roots == id.roots);
            if !unchanged {
                tracing::info!(identity = %id.spiffe_id, serial = %id.serial, "workload certificate loaded from files");
                cell.store(id);
                update_status(status, |s| s.rotations += 1);
            }
            update_status(status, |s| {
                s.source = "files";
                s.last_error = None;
                s.last_error_at = None;
            });
        }
        Err(e) => {
            tracing::error!("workload certificate files refused; keeping the current certificate: {e}");
            update_status(status, |s| {
                s.source = "files";
                s.last_error = Some(e.to_string());
                s.last_error_at = Some(rfc3339(SystemTime::now()));
            });
        }
    }
}

pub(crate) use ringmesh_api::duration::rfc3339;

/// `/certs`: the identity in use, or `identity: null` with the reason.
pub(crate) fn certs_json(cell: &IdentityCell, status: &CertStatus) -> serde_json::Value {
    let now = SystemTime::now();
    match cell.load() {
        Some(id) => serde_json::json!({
            "identity": id.spiffe_id,
            "serial": id.serial,
            "not_before": rfc3339(id.not_before),
            "not_after": rfc3339(id.not_after),
            "seconds_left": id.left(now).as_secs(),
            "chain": summaries(&id.chain),
            "roots": summaries(&id.roots),
            "version": cell.version(),
            "status": status,
        }),
        None => serde_json::json!({
            "identity": serde_json::Value::Null,
            "reason": status.last_error.clone().or_else(|| status.reason.clone())
                .unwrap_or_else(|| "no certificate yet: waiting for the control plane".into()),
            "status": status,
        }),
    }
}

#[cfg(test)]
mod tests;
