//! `ProxyConfig.spec.telemetry`: what the proxy tells about the traffic it carries — Istio's
//! standard metrics, access logs, traces, and the reason header on local replies. Istio keeps
//! these in `meshConfig` (`accessLogFile`, `accessLogEncoding`, `accessLogFormat`,
//! `defaultConfig.tracing`) and in `Telemetry` resources; a ringmesh proxy has one
//! `ProxyConfig`, so they live there.

use serde::{Deserialize, Serialize};

pub use super::tracing::TracingSpec;

/// `ProxyConfig.spec.telemetry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// Access logs; absent: none (Istio's default `accessLogFile: ""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSpec>,
    /// Trace propagation, sampling and export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Box<TracingSpec>>,
    /// Istio's standard metrics and the proxy's own-latency histograms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// Whether a reply the proxy makes itself carries `x-ringmesh-reason` with a one-line
    /// reason; absent: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_header: Option<bool>,
}

/// `spec.telemetry.accessLog` (Istio's `meshConfig.accessLogFile`, `accessLogEncoding`,
/// `accessLogFormat`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogSpec {
    /// `/dev/stdout` (the default) or a file, appended to and reopened on `SIGUSR1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `JSON` (the default) or `TEXT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<AccessLogEncoding>,
    /// A line with Envoy's `%FIELD%` placeholders (`TEXT`), or the fields of each JSON
    /// object as `name: "%FIELD%"` lines (`JSON`); absent: Istio's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Bytes of log lines each worker holds before they are handed to the writer; beyond
    /// that, lines are dropped and counted. Default 256 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<i64>,
}

/// `spec.telemetry.accessLog.encoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessLogEncoding {
    /// One JSON object per line.
    #[default]
    #[serde(rename = "JSON")]
    Json,
    /// A text line per `format`.
    #[serde(rename = "TEXT")]
    Text,
}

/// `spec.telemetry.metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    /// Istio's standard metrics (`istio_requests_total`, …); absent: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<bool>,
    /// Label sets each worker keeps for Istio's metrics; a request with a new set beyond this
    /// is counted under `ringmesh_istio_series_overflow_total` instead. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_series: Option<i64>,
}
