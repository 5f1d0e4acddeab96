//! `ProxyConfig.spec.telemetry.tracing`: trace propagation, sampling and OTLP export.

use serde::{Deserialize, Serialize};

/// `spec.telemetry.tracing`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSpec {
    /// Percent of requests without a sampling decision that start a sampled trace (Istio's
    /// `randomSamplingPercentage`); absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
}
