//! `WorkloadEntry` (networking.istio.io): one workload outside Kubernetes (a VM, a bare-metal
//! host) described by hand. A `ServiceEntry` with `workloadSelector` takes the workload entries
//! of its namespace whose labels match as its endpoints, so a VM joins a service by its labels
//! the way a pod does.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{EndpointSpec, Metadata, Origin};

/// A workload declared by hand. Its spec is Istio's `WorkloadEntry` message, the same one a
/// `ServiceEntry` inlines as `endpoints[]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// `networking.istio.io/v1` (v1beta1 and v1alpha3 are accepted).
    #[serde(default)]
    pub api_version: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: Metadata,
    /// Address, ports, labels, weight.
    #[serde(default)]
    pub spec: EndpointSpec,
    /// Where it was loaded from (not serialized).
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}
