//! `ProxyConfig.spec.telemetry.tracing`: sampling and export, checked.

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources::TracingSpec;
use crate::snapshot::Tracing;

impl Compiler {
    pub(super) fn tracing(&mut self, site: &Site<'_>, path: &FieldPath, spec: &TracingSpec) -> Tracing {
        let mut t = Tracing::default();
        if let Some(pct) = spec.sampling {
            if (0.0..=100.0).contains(&pct) {
                t.sampling = pct / 100.0;
            } else {
                self.error(
                    site,
                    &path.key("sampling"),
                    format!("sampling is a percentage between 0 and 100, got {pct}"),
                );
            }
        }
        t
    }
}
