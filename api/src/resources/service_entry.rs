//! `ServiceEntry` (networking.istio.io): a service's hosts, ports and endpoints. The only source
//! of services in standalone mode; the registry (`crate::registry`) turns it into endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Metadata, Origin};

/// A service declared by hand: hosts, ports and (for now) static endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    /// `networking.istio.io/v1` (v1beta1 and v1alpha3 are accepted).
    #[serde(default)]
    pub api_version: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: Metadata,
    /// The service.
    #[serde(default)]
    pub spec: ServiceEntrySpec,
    /// Where it was loaded from (not serialized).
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Namespaces whose proxies see this resource (`.`: its own; `*` or absent: all). Applied by
    /// the control plane when it picks each proxy's resources; a standalone proxy uses its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_to: Option<Vec<String>>,
    /// Host names of the service (FQDNs; short names are expanded with the namespace).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IP addresses of the service (a Kubernetes Service's cluster IPs): a captured
    /// connection to one of them, on one of `ports`, is this service's traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports the service listens on.
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    /// Inside or outside the mesh; informational for ringmesh today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How endpoints are found. Absent with endpoints given means `STATIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// The endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// Take the `WorkloadEntry`s of this namespace whose labels match as endpoints (instead of
    /// `endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<ServiceEntryWorkloadSelector>,
}

/// `ServiceEntry.spec.workloadSelector` (Istio names the field `labels` here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryWorkloadSelector {
    /// Labels a WorkloadEntry must all carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio `ServicePort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortSpec {
    /// Port number (1–65535).
    #[serde(default)]
    pub number: i64,
    /// Port name, referenced by endpoints' `ports` overrides.
    #[serde(default)]
    pub name: String,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, `HTTPS`, ...; decides the default route port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port on the endpoints when it differs from `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<i64>,
}

/// Istio `ServiceEntry.Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// Outside the mesh.
    #[serde(rename = "MESH_EXTERNAL")]
    MeshExternal,
    /// Part of the mesh.
    #[serde(rename = "MESH_INTERNAL")]
    MeshInternal,
}

/// Istio `ServiceEntry.Resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// Forward to the address the client connected to (original destination).
    #[serde(rename = "NONE")]
    None,
    /// Endpoints are IP addresses.
    #[serde(rename = "STATIC")]
    Static,
    /// Endpoints (or hosts) are resolved by DNS.
    #[serde(rename = "DNS")]
    Dns,
    /// Like `DNS`, using only the first address.
    #[serde(rename = "DNS_ROUND_ROBIN")]
    DnsRoundRobin,
}

/// One endpoint (Istio `WorkloadEntry` spec inlined in a ServiceEntry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// IP address (or, with DNS resolution, a host name — not supported yet).
    #[serde(default)]
    pub address: String,
    /// Per-port-name overrides of the port to connect to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, i64>,
    /// Labels, matched by DestinationRule subsets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Load-balancing weight; absent or 0 means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Where it runs, `region/zone/subzone` (Istio's `locality`); the
    /// `topology.kubernetes.io/region`/`zone` and `topology.istio.io/subzone` labels say the
    /// same and win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// The service account the endpoint runs as (informational: the identity its proxy
    /// proves is checked against the trust domain and any `subjectAltNames`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}
