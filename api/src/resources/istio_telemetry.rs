//! Istio's `Telemetry` kind (telemetry.istio.io): access logs, trace sampling and Istio's
//! metrics for the workloads it selects, on top of what the proxy's own
//! `ProxyConfig.spec.telemetry` sets.
//!
//! Fields mirror Istio's API field for field, values as written (modes and metric names as
//! strings), so that the compiler (`compile/istio_telemetry.rs`) can name a bad one with its
//! path and line. A `Telemetry` applies as Istio applies it: the root namespace's (no selector)
//! to the whole mesh, then its namespace's (no selector), then the workload's own (a selector),
//! each level overriding what the previous ones set.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Metadata, Origin, WorkloadSelector};

/// API versions accepted for `Telemetry`.
pub const ISTIO_TELEMETRY_VERSIONS: &[&str] = &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"];

/// How the workloads it selects report their traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    /// `telemetry.istio.io/v1` (v1alpha1 is accepted).
    #[serde(default)]
    pub api_version: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: Metadata,
    /// What it sets.
    #[serde(default)]
    pub spec: TelemetryPolicySpec,
    /// Where it was loaded from (not serialized).
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// `Telemetry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryPolicySpec {
    /// The workloads of its namespace it applies to; absent: all of them (all of the mesh in
    /// the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A gateway or waypoint it applies to (hidden in Istio's docs; as `targetRefs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetRef>,
    /// Gateways or waypoints it applies to; sidecars are never among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Trace sampling and span reporting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<TelemetryTracing>,
    /// Istio's standard metrics on or off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<TelemetryMetrics>,
    /// Access logs on or off, per direction, with a filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<TelemetryAccessLogging>,
}

/// Istio's `PolicyTargetReference`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// API group of the target (`gateway.networking.k8s.io`, or empty for the core group).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Kind of the target (`Gateway`, `GatewayClass`, `Service`, `ServiceEntry`).
    #[serde(default)]
    pub kind: String,
    /// Name of the target.
    #[serde(default)]
    pub name: String,
    /// Namespace of the target; absent: the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Istio's `ProviderRef`: a provider of the mesh config, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// `envoy` (access logs), `prometheus` (metrics), or a tracing provider's name.
    #[serde(default)]
    pub name: String,
}

/// The direction an entry applies to (`TracingSelector`, `LogSelector`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadModeSelector {
    /// `CLIENT_AND_SERVER` (the default), `CLIENT` (outbound) or `SERVER` (inbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// `spec.tracing[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryTracing {
    /// The direction it applies to.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<WorkloadModeSelector>,
    /// The tracing provider; the exporter itself is `ProxyConfig.spec.telemetry.tracing`'s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Percent (0 to 100) of requests without a sampling decision that start a sampled trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    /// `true`: no span is reported; contexts and sampling still propagate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
}

/// `spec.metrics[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryMetrics {
    /// The metrics providers it applies to; absent: the parent's (`prometheus` at the top).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Applied in order, on top of those of the levels above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverride>,
}

/// `spec.metrics[].overrides[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsOverride {
    /// Which metrics and which direction; absent: all metrics, both directions.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MetricSelector>,
    /// `true` turns the selected metrics off, `false` back on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// `overrides[].match`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSelector {
    /// `ALL_METRICS` (the default) or one of Istio's standard metrics (`REQUEST_COUNT`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// A metric of the user's own (ringmesh has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    /// `CLIENT_AND_SERVER` (the default), `CLIENT` or `SERVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// `spec.accessLogging[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryAccessLogging {
    /// The direction it applies to.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<WorkloadModeSelector>,
    /// The access-log providers it applies to; absent: the parent's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// `true` turns the log off; absent or `false`: on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Which requests get a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

/// `accessLogging[].filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessLogFilter {
    /// A CEL expression; ringmesh evaluates `response.code` compared with a number.
    #[serde(default)]
    pub expression: String,
}
