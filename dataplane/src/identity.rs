//! The workload's certificate, key and trust bundle (placeholder of the interface; the
//! certificate manager fills it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The workload's certificate, key and trust bundle, replaced whole on rotation.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) spiffe_id: String,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) roots: Vec<CertificateDer<'static>>,
    pub(crate) serial: String,
    pub(crate) not_before: std::time::SystemTime,
    pub(crate) not_after: std::time::SystemTime,
}

/// Shared by the control thread (writer) and the workers (readers).
#[derive(Debug, Default)]
pub(crate) struct IdentityCell {
    current: ArcSwapOption<Identity>,
    version: AtomicU64,
}

impl IdentityCell {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn load(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
    pub(crate) fn store(&self, id: Identity) {
        self.current.store(Some(Arc::new(id)));
        self.version.fetch_add(1, Ordering::Release);
    }
}
