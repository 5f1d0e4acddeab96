//! `WorkloadEntry`: a workload outside Kubernetes, checked on its own and kept for the
//! ServiceEntries of its namespace that select it by labels (see [`super::service_entry`]).

use std::collections::BTreeMap;

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::registry::RegistryEndpoint;
use crate::resources::WorkloadEntry;

/// A checked `WorkloadEntry`: its namespace, and the endpoint it becomes (port overrides by
/// name, filtered per ServiceEntry).
#[derive(Debug)]
pub(super) struct SelectableWorkload {
    pub(super) namespace: String,
    pub(super) endpoint: RegistryEndpoint,
}

impl Compiler {
    // ---------------------------------------------------------------- ServiceEntry

    /// Checks a `WorkloadEntry` and keeps it for the ServiceEntries that select it.
    pub(super) fn workload_entry(&mut self, we: &WorkloadEntry) {
        let site: &Site<'_> = we;
        let spec = FieldPath::root().key("spec");
        let address = match we.spec.address.parse::<std::net::IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let msg = if we.spec.address.is_empty() {
                    "address is required".to_owned()
                } else {
                    format!(
                        "{:?} is not an IP address (host names are not supported yet)",
                        we.spec.address
                    )
                };
                self.error(site, &spec.key("address"), msg);
                None
            }
        };
        let weight = match we.spec.weight {
            None | Some(0) => Some(1),
            Some(w) => u32::try_from(w).ok().or_else(|| {
                self.error(
                    site,
                    &spec.key("weight"),
                    format!("weight must be a positive number, got {w}"),
                );
                None
            }),
        };
        let mut overrides = BTreeMap::new();
        for (name, number) in &we.spec.ports {
            if let Some(n) = self.port(site, &spec.key("ports").key(name), *number) {
                overrides.insert(name.clone(), n);
            }
        }
        let labels = super::service_entry::with_locality(self, site, &spec, &we.spec);
        if let (Some(address), Some(weight)) = (address, weight) {
            self.workload_entries.push(SelectableWorkload {
                namespace: we.metadata.namespace().to_owned(),
                endpoint: RegistryEndpoint {
                    address,
                    ports: overrides,
                    labels,
                    weight,
                },
            });
        }
    }
}
