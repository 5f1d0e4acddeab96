//! The certificate manager, on the control thread inside the discovery session (`xds.rs`):
//! makes a new ECDSA P-256 key and a CSR for the workload's SPIFFE id
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>` of `spec.workload`), sends it
//! on the discovery stream, and stores the answer in the [`IdentityCell`]. The next request is
//! due at half the certificate's remaining life (less up to a tenth, so a fleet started
//! together does not renew in step). A refusal or a stream that breaks keeps the certificate
//! in use; the request is retried with jittered back-off from 1 s to 30 s, and the reason is in
//! `/certs` and, for the 1st, 2nd, 4th, 8th … failure in a row, in the log.
//!
//! The key never leaves the proxy: only the CSR travels, and a new key is made for each
//! request, so a rotation also rotates the key.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringmesh_api::proto::{control_message, CertificateRequest};
use ringmesh_api::snapshot::ProxySettings;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::time::Instant;

use super::{rfc3339, update_status, CertStatusCell, Identity, IdentityCell};

/// First retry after a failure.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between retries.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One outstanding request: its id and the key its CSR was made with.
struct Pending {
    id: u64,
    key: rcgen::KeyPair,
}

/// The renewal schedule and the request in flight.
pub(crate) struct CertManager {
    cell: Arc<IdentityCell>,
    status: CertStatusCell,
    spiffe_id: String,
    lifetime: Duration,
    /// When the next request is due; `None`: never (no certificates from the control plane).
    next: Option<Instant>,
    backoff: Duration,
    failures: u64,
    pending: Option<Pending>,
    last_id: u64,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("spiffe_id", &self.spiffe_id)
            .field("next", &self.next)
            .field("failures", &self.failures)
            .field("pending", &self.pending.as_ref().map(|p| p.id))
            .finish()
    }
}

/// Why this proxy does not ask the control plane for certificates, if it does not.
pub(crate) fn disabled_reason(settings: &ProxySettings) -> Option<String> {
    if settings.identity.files.is_some() {
        return Some("the certificate comes from spec.identity's files".into());
    }
    let cp = settings.control_plane.as_ref()?;
    if cp.credential_file.is_none() && std::env::var_os("RINGMESH_CREDENTIAL").is_none() {
        return Some(
            "no credential configured (controlPlane.credentialFile or RINGMESH_CREDENTIAL): the control plane's CA \
             signs only for a proven identity"
                .into(),
        );
    }
    None
}

impl CertManager {
    /// A manager for `settings`' workload; idle (never due) when [`disabled_reason`] says so.
    pub(crate) fn new(cell: Arc<IdentityCell>, status: CertStatusCell, settings: &ProxySettings) -> CertManager {
        let w = &settings.workload;
        let spiffe_id = format!(
            "spiffe://{}/ns/{}/sa/{}",
            settings.identity.trust_domain, w.namespace, w.service_account
        );
        let enabled = disabled_reason(settings).is_none() && settings.control_plane.is_some();
        if enabled {
            update_status(&status, |s| {
                s.source = "control plane";
                s.reason = None;
            });
        }
        CertManager {
            cell,
            status,
            spiffe_id,
            lifetime: settings.identity.cert_lifetime,
            next: enabled.then(Instant::now),
            backoff: MIN_BACKOFF,
            failures: 0,
            pending: None,
            last_id: 0,
        }
    }

    /// A stream is up: ask at once when there is no certificate or the last attempt failed;
    /// otherwise keep the renewal schedule.
    pub(crate) fn stream_up(&mut self) {
        if let Some(next) = &mut self.next {
            if self.cell.load().is_none() || self.failures > 0 {
                *next = Instant::now();
            }
        }
    }

    /// The stream broke: a request in flight will not be answered.
    pub(crate) fn stream_down(&mut self) {
        if self.pending.take().is_some() {
            self.fail("the stream to the control plane ended before the certificate came".into());
        }
    }

    /// When a request should go out; `None` when none should (idle, or one is in flight).
    pub(crate) fn due(&self) -> Option<Instant> {
        if self.pending.is_some() {
            return None;
        }
        self.next
    }

    /// Makes a key and a CSR; `None` (after recording why) if that failed.
    pub(crate) fn request(&mut self) -> Option<CertificateRequest> {
        let made = (|| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = vec![rcgen::SanType::URI(self.spiffe_id.clone().try_into()?)];
            let csr = params.serialize_request(&key)?;
            Ok::<_, rcgen::Error>((key, csr.der().to_vec()))
        })();
        match made {
            Ok((key, csr_der)) => {
                self.last_id += 1;
                self.pending = Some(Pending { id: self.last_id, key });
                tracing::debug!(identity = %self.spiffe_id, "certificate requested");
                Some(CertificateRequest {
                    request_id: self.last_id,
                    csr_der,
                    lifetime_seconds: self.lifetime.as_secs(),
                })
            }
            Err(e) => {
                self.fail(format!("cannot make a key and CSR: {e}"));
                None
            }
        }
    }

    /// Takes the control plane's answer (a `Certificate` or `CertificateRefusal`).
    pub(crate) fn answer(&mut self, message: control_message::Message) {
        match message {
            control_message::Message::Certificate(c) => {
                let Some(pending) = self.pending.take_if(|p| p.id == c.request_id) else {
                    tracing::debug!(request = c.request_id, "certificate for no request in flight ignored");
                    return;
                };
                let chain: Vec<CertificateDer<'static>> = c.chain_der.into_iter().map(CertificateDer::from).collect();
                let roots: Vec<CertificateDer<'static>> =
                    c.trust_bundle_der.into_iter().map(CertificateDer::from).collect();
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pending.key.serialize_der()));
                match Identity::new(chain, key, roots) {
                    Ok(id) if id.spiffe_id != self.spiffe_id => self.fail(format!(
                        "the control plane sent a certificate for {}, not for {}",
                        id.spiffe_id, self.spiffe_id
                    )),
                    Ok(id) => self.got(id),
                    Err(e) => self.fail(format!("the certificate from the control plane is unusable: {e}")),
                }
            }
            control_message::Message::CertificateRefusal(r)
                if self.pending.as_ref().is_some_and(|p| p.id == r.request_id) =>
            {
                self.pending = None;
                self.fail(format!("the control plane refused the certificate: {}", r.reason));
            }
            _ => {}
        }
    }

    fn got(&mut self, id: Identity) {
        let now = SystemTime::now();
        let half = id.left(now) / 2;
        let wait = half.saturating_sub(half.mul_f64(fastrand::f64() / 10.0));
        let next = Instant::now() + wait;
        tracing::info!(
            identity = %id.spiffe_id,
            serial = %id.serial,
            expires = %rfc3339(id.not_after),
            renew_in_s = wait.as_secs(),
            "workload certificate {}",
            if self.cell.load().is_some() { "rotated" } else { "issued" }
        );
        self.cell.store(id);
        self.next = Some(next);
        self.failures = 0;
        self.backoff = MIN_BACKOFF;
        update_status(&self.status, |s| {
            s.rotations += 1;
            s.last_error = None;
            s.last_error_at = None;
            s.next_request = Some(rfc3339(now + wait));
        });
    }

    fn fail(&mut self, reason: String) {
        self.failures += 1;
        let wait = self.backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if self.next.is_some() {
            self.next = Some(Instant::now() + wait);
        }
        if self.failures.is_power_of_two() {
            tracing::warn!(
                attempts = self.failures,
                keeping = self.cell.load().is_some(),
                "no workload certificate: {reason}"
            );
        }
        let now = SystemTime::now();
        update_status(&self.status, |s| {
            s.last_error = Some(reason);
            s.last_error_at = Some(rfc3339(now));
            s.next_request = Some(rfc3339(now + wait));
        });
    }
}
