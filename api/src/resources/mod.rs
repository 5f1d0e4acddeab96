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
mod istio_telemetry;
mod proxy_config;
mod security;
mod service_entry;
mod telemetry;
mod tracing;
mod virtual_service;
mod workload_entry;

pub use destination_rule::*;
pub use istio_telemetry::*;
pub use proxy_config::*;
pub use security::*;
pub use service_entry::*;
pub use telemetry::*;
pub use tracing::{BatchSpec, OpenTelemetrySpec, OtlpGrpcSpec, OtlpHttpSpec};
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

    /// `file:line` of the document's first line (`<input>` for text without a file name).
    pub fn position(&self) -> String {
        format!("{}:{}", self.file.as_deref().unwrap_or("<input>"), self.first_line)
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
        write!(f, "Origin({})", self.position())
    }
}

/// Any resource ringmesh understands. Serialized with its `kind` tag, like the YAML it came from.
// Resources are parsed once per load and held in one `Vec` until compiled; a kilobyte per
// entry is nothing there, and boxing the largest kinds would only add an allocation each.
#[allow(clippy::large_enum_variant)]
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
    /// Who may call the workloads it selects (compiled into `Snapshot.security.authz`).
    AuthorizationPolicy(AuthorizationPolicy),
    /// Whether the workloads it selects require mutual TLS (compiled into
    /// `Snapshot.security.peer_authn`).
    PeerAuthentication(PeerAuthentication),
    /// Access logs, trace sampling and Istio's metrics for the workloads it selects (compiled
    /// into `Snapshot.telemetry`, over the `ProxyConfig`'s).
    Telemetry(Telemetry),
}

/// What every kind carries beside its spec: kind, name, namespace, where it was loaded from,
/// and the namespaces it is exported to. Implemented once per kind, so that the loader, the
/// compiler's diagnostics and [`Resource`] ask these questions in one way instead of matching
/// on kinds.
pub trait ResourceMeta {
    /// The kind name as written in YAML, e.g. `VirtualService`.
    fn kind(&self) -> &'static str;

    /// Name, namespace, labels and annotations.
    fn metadata(&self) -> &Metadata;

    /// Where it was loaded from, if from a file.
    fn origin(&self) -> Option<&Origin>;

    /// Records where it was loaded from (the loader's job).
    fn set_origin(&mut self, origin: Arc<Origin>);

    /// `spec.exportTo` for the kinds that have it (`None`: visible everywhere, Istio's default).
    fn export_to(&self) -> Option<&[String]> {
        None
    }

    /// The namespace, `default` when not given.
    fn namespace(&self) -> &str {
        self.metadata().namespace()
    }

    /// `Kind namespace/name`, as diagnostics name the resource.
    fn label(&self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace(), self.metadata().name)
    }

    /// ` at file:line` of the resource's first line, for "defined elsewhere" messages; empty
    /// when it was not loaded from a file.
    fn location(&self) -> String {
        self.origin()
            .map(|o| format!(" at {}", o.position()))
            .unwrap_or_default()
    }

    /// `Kind namespace/name at file:line`: the resource as another resource's diagnostic
    /// names it.
    fn source(&self) -> String {
        format!("{}{}", self.label(), self.location())
    }
}

/// Implements [`ResourceMeta`] for a kind whose `metadata` and `origin` fields have the usual
/// names; `export_to` names the path to `spec.exportTo` where the kind has one.
macro_rules! resource_meta {
    ($ty:ident $(, export_to: $($field:ident).+)?) => {
        impl ResourceMeta for $ty {
            fn kind(&self) -> &'static str {
                stringify!($ty)
            }
            fn metadata(&self) -> &Metadata {
                &self.metadata
            }
            fn origin(&self) -> Option<&Origin> {
                self.origin.as_deref()
            }
            fn set_origin(&mut self, origin: Arc<Origin>) {
                self.origin = Some(origin);
            }
            $(
                fn export_to(&self) -> Option<&[String]> {
                    self.$($field).+.as_deref()
                }
            )?
        }
    };
}

resource_meta!(ServiceEntry, export_to: spec.export_to);
resource_meta!(VirtualService, export_to: spec.export_to);
resource_meta!(DestinationRule, export_to: spec.export_to);
resource_meta!(ProxyConfig);
resource_meta!(WorkloadEntry);
resource_meta!(AuthorizationPolicy);
resource_meta!(PeerAuthentication);
resource_meta!(Telemetry);

impl Resource {
    /// The resource's metadata as its kind implements it: the one place that matches on kinds.
    pub fn meta(&self) -> &dyn ResourceMeta {
        match self {
            Resource::ServiceEntry(r) => r,
            Resource::VirtualService(r) => r,
            Resource::DestinationRule(r) => r,
            Resource::ProxyConfig(r) => r,
            Resource::WorkloadEntry(r) => r,
            Resource::AuthorizationPolicy(r) => r,
            Resource::PeerAuthentication(r) => r,
            Resource::Telemetry(r) => r,
        }
    }

    fn meta_mut(&mut self) -> &mut dyn ResourceMeta {
        match self {
            Resource::ServiceEntry(r) => r,
            Resource::VirtualService(r) => r,
            Resource::DestinationRule(r) => r,
            Resource::ProxyConfig(r) => r,
            Resource::WorkloadEntry(r) => r,
            Resource::AuthorizationPolicy(r) => r,
            Resource::PeerAuthentication(r) => r,
            Resource::Telemetry(r) => r,
        }
    }
}

impl ResourceMeta for Resource {
    fn kind(&self) -> &'static str {
        self.meta().kind()
    }
    fn metadata(&self) -> &Metadata {
        self.meta().metadata()
    }
    fn origin(&self) -> Option<&Origin> {
        self.meta().origin()
    }
    fn set_origin(&mut self, origin: Arc<Origin>) {
        self.meta_mut().set_origin(origin);
    }
    fn export_to(&self) -> Option<&[String]> {
        self.meta().export_to()
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

    #[test]
    fn metadata_through_the_trait() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\n  \
                    namespace: shop\nspec:\n  exportTo: [.]\n  hosts: [a]\n";
        let mut r: Resource = serde_yaml::from_str(text).expect("parses");
        assert_eq!((r.kind(), r.namespace()), ("VirtualService", "shop"));
        assert_eq!(r.export_to(), Some(&[".".to_owned()][..]));
        assert_eq!(r.source(), "VirtualService shop/r");
        r.set_origin(Arc::new(Origin::new(Some("vs.yaml"), 3, text)));
        assert_eq!(r.source(), "VirtualService shop/r at vs.yaml:3");
        let pc: Resource = serde_yaml::from_str("kind: ProxyConfig\nspec: {}\n").expect("parses");
        assert_eq!((pc.label().as_str(), pc.export_to()), ("ProxyConfig default/", None));
    }
}
