//! `AuthorizationPolicy` and `PeerAuthentication` (security.istio.io): who may call a workload,
//! and whether its inbound traffic must be mutual TLS.
//!
//! They load and validate like the networking kinds (unknown fields, values checked with file,
//! line and field), and the control plane sends each to the workloads it selects, so that a
//! mesh's real Istio security config can be adopted unchanged. The compiler turns the ones that
//! select a proxy's workload into `Snapshot.security` (`crate::authz` for the matching rules).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Metadata, Origin, WorkloadSelector};

/// The namespace whose policies apply to the whole mesh (Istio's default root namespace).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// API versions accepted for the security kinds.
pub const ISTIO_SECURITY_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Access control for the workloads it selects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// `security.istio.io/v1` (v1beta1 is accepted).
    #[serde(default)]
    pub api_version: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: Metadata,
    /// The policy.
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
    /// Where it was loaded from (not serialized).
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The workloads of this namespace it applies to; absent: all of them (all of the mesh in
    /// the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (the default), `DENY`, `AUDIT` or `CUSTOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The extension that decides, for `CUSTOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
    /// A request matches the policy when it matches any rule; no rules: matches nothing
    /// (an `ALLOW` policy without rules denies everything it selects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<AuthorizationRule>>,
}

/// `AuthorizationPolicy.spec.provider`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// Name of the extension provider in the mesh config.
    #[serde(default)]
    pub name: String,
}

/// One rule: every listed part must match (`from`, `to` and `when` are ANDed; the entries
/// within each are ORed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Who sends the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// What is asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Further conditions on request attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleFrom {
    /// The source's attributes.
    #[serde(default)]
    pub source: Source,
}

/// The attributes of a request's source. Every list that is set must match (each as "any of").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (`cluster.local/ns/NS/sa/SA`) from mutual TLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Request principals (`iss/sub` of a JWT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Request principals that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Peer addresses, as IPs or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Peer addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Original client addresses (`X-Forwarded-For`), as IPs or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Original client addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Service accounts of the peer (`NS/SA`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation's attributes.
    #[serde(default)]
    pub operation: Operation,
}

/// What a request asks for. Every list that is set must match (each as "any of").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// `Host` values (`*` prefix or suffix allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings of numbers (Istio's format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths (`*` prefix or suffix allowed, or `{*}` / `{**}` templates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `rules[].when[]`: one request attribute and the values it may (or must not) have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The attribute, e.g. `request.headers[x-token]` or `source.ip`.
    #[serde(default)]
    pub key: String,
    /// Values that match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// Whether the workloads it selects take plain text, mutual TLS, or both.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// `security.istio.io/v1` (v1beta1 is accepted).
    #[serde(default)]
    pub api_version: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: Metadata,
    /// The policy.
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
    /// Where it was loaded from (not serialized).
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// The workloads of this namespace it applies to; absent: the whole namespace (the whole
    /// mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Modes for single ports (the workload's own port numbers); needs a `selector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

/// `PeerAuthentication.spec.mtls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMtls {
    /// `UNSET` (inherit), `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}
