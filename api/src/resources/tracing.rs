//! `ProxyConfig.spec.telemetry.tracing`: trace propagation, sampling and OTLP export.
//!
//! Istio spreads this over two resources; ringmesh keeps one `ProxyConfig` per proxy, so the
//! fields sit together here under Istio's names:
//!
//! | Istio | ringmesh |
//! |---|---|
//! | `Telemetry` `tracing[].randomSamplingPercentage` | `sampling` |
//! | `meshConfig.defaultConfig.tracing.maxPathTagLength` | `maxPathTagLength` |
//! | `meshConfig.extensionProviders[].opentelemetry.service`, `.port` | `opentelemetry.service`, `.port` |
//! | `…opentelemetry.http` (`path`, `timeout`): OTLP/HTTP instead of gRPC | `opentelemetry.http` |
//! | `…opentelemetry.grpc.timeout` | `opentelemetry.grpc.timeout` |
//! | the OpenTelemetry SDK's batch span processor (`OTEL_BSP_*`) | `opentelemetry.batch` |
//!
//! Without `spec.telemetry.tracing` the proxy leaves trace headers alone, as Envoy does with
//! no tracer configured.

use serde::{Deserialize, Serialize};

/// `spec.telemetry.tracing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSpec {
    /// Percent of requests without a sampling decision that start a sampled trace (Istio's
    /// `randomSamplingPercentage`); absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// The resource's `service.name` in exported spans; absent: Istio's
    /// `<canonical service>.<namespace>` of `spec.workload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Bytes of the path kept in a span's `http.url` (Istio's `maxPathTagLength`); absent: 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_path_tag_length: Option<i64>,
    /// Where spans go (Istio's `opentelemetry` extension provider); absent: the context is
    /// still read, started and propagated, but no span is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetrySpec>,
}

/// `spec.telemetry.tracing.opentelemetry`: an OTLP collector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenTelemetrySpec {
    /// The collector's host name or IP address (Istio: the collector's Kubernetes service,
    /// e.g. `opentelemetry-collector.observability.svc.cluster.local`).
    #[serde(default)]
    pub service: String,
    /// The collector's port (4317 for OTLP/gRPC, 4318 for OTLP/HTTP by convention).
    #[serde(default)]
    pub port: i64,
    /// OTLP/HTTP with protobuf bodies; absent (and with `grpc`): OTLP/gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttpSpec>,
    /// OTLP/gRPC settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<OtlpGrpcSpec>,
    /// How spans are batched on their way out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

/// `…opentelemetry.http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpHttpSpec {
    /// The path spans are POSTed to; absent: `/v1/traces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time one export may take; absent: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `…opentelemetry.grpc`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpGrpcSpec {
    /// Time one export may take; absent: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `…opentelemetry.batch`, named after the OpenTelemetry SDK's batch span processor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchSpec {
    /// Spans in one export request; absent: 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_export_batch_size: Option<i64>,
    /// Spans waiting for export, all workers together; beyond that, spans are dropped and
    /// counted. Absent: 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_size: Option<i64>,
    /// The longest a finished span waits before it is sent; absent: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_delay: Option<String>,
}
