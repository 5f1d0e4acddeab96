//! The resources users write: Istio's networking kinds and ringmesh's own `ProxyConfig`.
//!
//! These types mirror the YAML field for field (camelCase, Istio's names) so that real Istio
//! YAML loads unchanged and the control plane can store and serve them as they were written.
//! Values stay close to the text (durations as strings, numbers as `i64`) so that range and
//! format problems become diagnostics with a field path and line in the compiler instead of
//! opaque serde errors. The loader (`crate::load`) checks unknown fields; the compiler
//! (`crate::compile`) validates meaning.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::locate::{FieldPath, Locator};

mod destination_rule;
mod proxy_config;
mod security;
mod service_entry;
mod virtual_service;
mod workload_entry;

pub use destination_rule::*;
pub use proxy_config::*;
pub use security::*;
pub use service_entry::*;
pub use virtual_service::*;
pub use workload_entry::*;

/// Kubernetes object metadata. Only `name` and `namespace` mean anything to ringmesh; labels
/// and annotations are kept so the control plane can serve resources back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Resource name, unique per kind and namespace.
    #[serde(default)]
    pub name: String,
    /// Namespace; `default` when absent, as in `kubectl apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// The namespace, `default` when not given.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// Where a resource was loaded from, so that the compiler's diagnostics can name the file and
/// the line of the offending field. Absent for resources built in code or received over the wire.
#[derive(Clone)]
pub struct Origin {
    /// File name as given to the loader.
    pub file: Option<String>,
    /// 1-based line in the file where the resource's document starts.
    pub first_line: usize,
    pub(crate) locator: Locator,
}

impl Origin {
    pub(crate) fn new(file: Option<&str>, first_line: usize, text: &str) -> Self {
        Origin {
            file: file.map(str::to_owned),
            first_line,
            locator: Locator::new(text),
        }
    }

    /// 1-based line in the file of `path` (or of its deepest existing parent).
    pub(crate) fn line_of(&self, path: &FieldPath) -> Option<usize> {
        self.locator
            .line_of(path)
            .map(|l| l + self.first_line)
            .or(Some(self.first_line))
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Origin({}:{})",
            self.file.as_deref().unwrap_or("<input>"),
            self.first_line
        )
    }
}

/// Any resource ringmesh understands. Serialized with its `kind` tag, like the YAML it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    /// A service and its endpoints.
    ServiceEntry(ServiceEntry),
    /// HTTP and TCP routing for some hosts.
    VirtualService(VirtualService),
    /// Load balancing, connection pool and subsets for a host.
    DestinationRule(DestinationRule),
    /// ringmesh's process settings and listeners.
    ProxyConfig(ProxyConfig),
    /// A workload outside Kubernetes, selected into ServiceEntries by its labels.
    WorkloadEntry(WorkloadEntry),
    /// Who may call the workloads it selects (validated and distributed; not enforced yet).
    AuthorizationPolicy(AuthorizationPolicy),
    /// Whether the workloads it selects require mutual TLS (validated and distributed; not
    /// enforced yet).
    PeerAuthentication(PeerAuthentication),
}

/// Shared by every kind: lets the compiler name resources and locate their fields generically.
macro_rules! resource_common {
    ($($ty:ident),*) => {
        $(
            impl $ty {
                /// `Kind namespace/name`, as diagnostics name the resource.
                pub fn label(&self) -> String {
                    format!(
                        "{} {}/{}",
                        stringify!($ty),
                        self.metadata.namespace(),
                        self.metadata.name
                    )
                }
            }
        )*
    };
}

resource_common!(
    ServiceEntry,
    VirtualService,
    DestinationRule,
    ProxyConfig,
    WorkloadEntry,
    AuthorizationPolicy,
    PeerAuthentication
);

impl Resource {
    /// The kind name, e.g. `VirtualService`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::ServiceEntry(_) => "ServiceEntry",
            Resource::VirtualService(_) => "VirtualService",
            Resource::DestinationRule(_) => "DestinationRule",
            Resource::ProxyConfig(_) => "ProxyConfig",
            Resource::WorkloadEntry(_) => "WorkloadEntry",
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::PeerAuthentication(_) => "PeerAuthentication",
        }
    }

    /// The resource's metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::ServiceEntry(r) => &r.metadata,
            Resource::VirtualService(r) => &r.metadata,
            Resource::DestinationRule(r) => &r.metadata,
            Resource::ProxyConfig(r) => &r.metadata,
            Resource::WorkloadEntry(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::PeerAuthentication(r) => &r.metadata,
        }
    }

    /// Where it was loaded from, if from a file.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Resource::ServiceEntry(r) => r.origin.as_deref(),
            Resource::VirtualService(r) => r.origin.as_deref(),
            Resource::DestinationRule(r) => r.origin.as_deref(),
            Resource::ProxyConfig(r) => r.origin.as_deref(),
            Resource::WorkloadEntry(r) => r.origin.as_deref(),
            Resource::AuthorizationPolicy(r) => r.origin.as_deref(),
            Resource::PeerAuthentication(r) => r.origin.as_deref(),
        }
    }

    /// `Kind namespace/name`.
    pub fn label(&self) -> String {
        match self {
            Resource::ServiceEntry(r) => r.label(),
            Resource::VirtualService(r) => r.label(),
            Resource::DestinationRule(r) => r.label(),
            Resource::ProxyConfig(r) => r.label(),
            Resource::WorkloadEntry(r) => r.label(),
            Resource::AuthorizationPolicy(r) => r.label(),
            Resource::PeerAuthentication(r) => r.label(),
        }
    }

    pub(crate) fn set_origin(&mut self, origin: Arc<Origin>) {
        let slot = match self {
            Resource::ServiceEntry(r) => &mut r.origin,
            Resource::VirtualService(r) => &mut r.origin,
            Resource::DestinationRule(r) => &mut r.origin,
            Resource::ProxyConfig(r) => &mut r.origin,
            Resource::WorkloadEntry(r) => &mut r.origin,
            Resource::AuthorizationPolicy(r) => &mut r.origin,
            Resource::PeerAuthentication(r) => &mut r.origin,
        };
        *slot = Some(origin);
    }
}

/// Istio's `StringMatch` as written: exactly one of the three should be set; an empty one means
/// "present" where Istio allows that (header and query matches).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatchSpec {
    /// Exact value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// RE2-style regex, matched against the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_defaults() {
        assert_eq!(Metadata::default().namespace(), "default");
    }

    #[test]
    fn resource_serializes_with_kind_and_round_trips() {
        let text =
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n";
        let r: Resource = serde_yaml::from_str(text).expect("parses");
        assert_eq!(r.kind(), "DestinationRule");
        assert_eq!(r.label(), "DestinationRule default/r");
        let json = serde_json::to_string(&r).expect("serializes");
        assert!(json.contains("\"kind\":\"DestinationRule\""), "{json}");
        let back: Resource = serde_json::from_str(&json).expect("round trips");
        assert_eq!(back.metadata().name, "r");
    }
}
