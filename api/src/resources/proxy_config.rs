//! `ProxyConfig` (ringmesh.io/v1alpha1): ringmesh's own process settings and listeners.
//!
//! Our format, so every struct denies unknown fields: a typo is an error, never a silently
//! ignored setting.

use std::sync::Arc;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Metadata, Origin};
use crate::normalize::PathNormalization;
use crate::snapshot::IoMode;

/// Process settings and listeners for one proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// `ringmesh.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Name and namespace (optional for this kind).
    #[serde(default)]
    pub metadata: Metadata,
    /// The settings.
    #[serde(default)]
    pub spec: ProxyConfigSpec,
    /// Where it was loaded from (not serialized).
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// `ProxyConfig.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfigSpec {
    /// Worker threads (>= 1); absent means one per usable core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<i64>,
    /// Cores to pin workers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<usize>,
    /// `auto`, `io_uring` or `epoll`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoMode>,
    /// Admin server address (default `127.0.0.1:15000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_address: Option<String>,
    /// Health server address (default `0.0.0.0:15020`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_address: Option<String>,
    /// Metrics server address (default `0.0.0.0:15090`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// Connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Retry budget; absent (the default): no budget, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetSpec>,
    /// Listeners; none means one HTTP listener `outbound` on `127.0.0.1:15001`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerSpec>,
    /// The control plane to subscribe to; absent means standalone, from files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneSpec>,
    /// The workload next to this proxy, announced to the control plane as endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Box<WorkloadSpec>>,
    /// The proxy's workload certificate: from the control plane's CA (lifetime, trust domain)
    /// or from files of the user's own PKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// How request paths are normalized before routing and authorization (Istio's
    /// `meshConfig.pathNormalization`); absent: `MERGE_SLASHES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalizationSpec>,
    /// Mutual TLS between proxies (Istio's `meshConfig.meshMTLS`).
    #[serde(default, rename = "meshMTLS", skip_serializing_if = "Option::is_none")]
    pub mesh_mtls: Option<MeshMtlsSpec>,
    /// Transparent capture: the app's traffic redirected to the proxy by `ringmesh iptables`
    /// (Istio's `REDIRECT` interception). Present (even empty): the proxy serves the
    /// `outbound` (15001) and `inbound` (15006) capture listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureSpec>,
    /// What a captured connection to a destination no service declares gets (Istio's
    /// `meshConfig.outboundTrafficPolicy`); absent: `ALLOW_ANY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
    /// Metrics, access logs, traces and the reason header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<super::TelemetrySpec>,
}

/// `ProxyConfig.spec.capture`: the listeners that take traffic `ringmesh iptables` redirected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureSpec {
    /// Where redirected outbound connections arrive (`ringmesh iptables -p`); default 15001.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_port: Option<i64>,
    /// Where redirected inbound connections arrive (`ringmesh iptables -z`); default 15006.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_port: Option<i64>,
    /// Also listen on IPv6 (`[::]`, IPv6 only) for both: `true`, `false`, or absent: when the
    /// host has IPv6 (a bind that fails for want of it is skipped, said in the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<bool>,
}

/// `ProxyConfig.spec.outboundTrafficPolicy`, Istio's `meshConfig.outboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicySpec {
    /// `ALLOW_ANY` (the default) or `REGISTRY_ONLY`.
    #[serde(default)]
    pub mode: OutboundTrafficMode,
}

/// Istio's `OutboundTrafficPolicy.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundTrafficMode {
    /// A captured connection to an unknown destination goes there as opaque TCP (Istio's
    /// `PassthroughCluster`).
    #[default]
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    /// It is closed (Istio's `BlackHoleCluster`).
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

/// `ProxyConfig.spec.identity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentitySpec {
    /// Lifetime asked of the control plane's CA, e.g. `24h` (it bounds it by its own maximum);
    /// the certificate is renewed at half of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_lifetime: Option<String>,
    /// The trust domain of SPIFFE ids; default `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// A certificate chain (PEM, leaf first) to use instead of asking a control plane; with
    /// `keyFile` and `caFile`. Read at start and on every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// The certificate's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The roots to trust (PEM, one or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// `ProxyConfig.spec.controlPlane.tls`: how to check the control plane's TLS port (15012).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneTlsSpec {
    /// The roots the control plane's serving certificate must chain to (PEM): its trust bundle,
    /// from `ringmesh ca root` or `DIR/ca/root-cert.pem`. Required.
    #[serde(default)]
    pub ca_cert_file: String,
    /// The name the certificate must carry; default the host of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// `ProxyConfig.spec.meshMTLS`, in the shape of Istio's `meshConfig.meshMTLS`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshMtlsSpec {
    /// `TLSV1_3` (the default) or `TLSV1_2`: the oldest TLS version the proxy's mTLS accepts
    /// and offers.
    #[serde(default)]
    pub min_protocol_version: crate::snapshot::TlsVersion,
}

/// `ProxyConfig.spec.pathNormalization`, in the shape of Istio's
/// `meshConfig.pathNormalization`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathNormalizationSpec {
    /// `NONE`, `BASE`, `MERGE_SLASHES` (the default) or `DECODE_AND_MERGE_SLASHES`.
    #[serde(default)]
    pub normalization: PathNormalization,
}

/// `ProxyConfig.spec.controlPlane`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneSpec {
    /// `host:port` of ringmesh-control's gRPC port (Istio's 15010). One of `address` and
    /// `addresses` is required.
    #[serde(default)]
    pub address: String,
    /// Several replicas, `host:port` each, tried in order: when a session fails the proxy moves
    /// on to the next one (after `address`, when both are given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Node id; default `<workload name>-<pid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Speak TLS to the control plane (its `--listen-tls` port), checking its certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ControlPlaneTlsSpec>,
    /// A file holding the proxy's credential (a bootstrap token from `ringmesh token create`,
    /// or a Kubernetes service-account token), read again on every connect; the environment
    /// variable `RINGMESH_CREDENTIAL` is used when this is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_file: Option<String>,
}

/// `ProxyConfig.spec.workload`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Workload name.
    #[serde(default)]
    pub name: String,
    /// Namespace; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Service account (the identity the security issue will certify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Labels; DestinationRule subsets select on them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// IP addresses of the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Where the workload runs, `region/zone/subzone`, for locality-aware balancing; the
    /// `topology.kubernetes.io/region`/`zone` and `topology.istio.io/subzone` labels say the
    /// same and win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Service hosts (FQDN) the workload serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Target port per service port name, e.g. `{http: 9080}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, i64>,
    /// How the proxy checks that the app is ready (Kubernetes' probe shape); while it fails, the
    /// control plane withdraws this workload's endpoints. Absent: always ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ProbeSpec>,
}

/// `ProxyConfig.spec.workload.readinessProbe`: one of `httpGet` or `tcpSocket`, on 127.0.0.1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeSpec {
    /// `GET path` must answer 200–399.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    /// A TCP connect must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketProbe>,
    /// Seconds between probes; default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i64>,
    /// Seconds a probe may take; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// Failures in a row that make the workload unready; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
    /// Successes in a row that make it ready again; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i64>,
}

/// `readinessProbe.httpGet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetProbe {
    /// Request path; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The app's port.
    #[serde(default)]
    pub port: i64,
}

/// `readinessProbe.tcpSocket`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketProbe {
    /// The app's port.
    #[serde(default)]
    pub port: i64,
}

/// `ProxyConfig.spec.limits`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_head_bytes: Option<i64>,
    /// Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_head_bytes: Option<i64>,
    /// Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<i64>,
    /// Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_timeout: Option<String>,
    /// Default `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Longest silence between two reads of a request body (nginx's `client_body_timeout`);
    /// default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_timeout: Option<String>,
    /// Downstream connections open at once, over all listeners and workers; default half the
    /// process's `RLIMIT_NOFILE` soft limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// Bytes client connections may hold in read buffers at once, over all workers; past it
    /// new connections are refused at accept. Default 256 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffer_bytes: Option<i64>,
    /// Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// How long a `protocol: AUTO` listener waits for the client's first bytes; default
    /// `100ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<String>,
}

/// `ProxyConfig.spec.retryBudget`: present (even empty) turns the budget on, with Envoy's
/// defaults for the fields left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Default 20.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<f64>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<i64>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerProtocol {
    /// HTTP/1.1, routed by the VirtualServices.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// Opaque TCP to a destination.
    #[serde(rename = "TCP")]
    Tcp,
    /// Unknown: a port hint (`appProtocol`, the listener's name, the destination port) decides,
    /// else the client's first bytes (HTTP, or TCP to the destination). Istio's protocol
    /// sniffing.
    #[serde(rename = "AUTO")]
    Auto,
}

/// Which way a listener's traffic flows, as Istio names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficDirection {
    /// From the local workload to the mesh (the default).
    #[default]
    #[serde(rename = "OUTBOUND")]
    Outbound,
    /// From the mesh to the local workload: this workload's `PeerAuthentication` and
    /// `AuthorizationPolicy` apply here.
    #[serde(rename = "INBOUND")]
    Inbound,
}

/// One listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerSpec {
    /// Name for logs and metrics (unique).
    #[serde(default)]
    pub name: String,
    /// `ip:port` to bind.
    #[serde(default)]
    pub address: String,
    /// `HTTP` (default), `TCP` or `AUTO`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// `OUTBOUND` (default) or `INBOUND`: whether the listener takes traffic for the local
    /// workload, which the security policies guard.
    #[serde(default, skip_serializing_if = "is_outbound")]
    pub direction: TrafficDirection,
    /// What the port carries, as Kubernetes' `appProtocol` says it (`http`, `http2`, `grpc`,
    /// `grpc-web`, `tcp`, `tls`, `mysql`, ...): on an `AUTO` listener it skips detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// TCP and AUTO only: where connections go unless a VirtualService tcp route for this port
    /// says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<ListenerDestination>,
    /// TCP and AUTO only: close after this long without traffic (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// A token bucket over the HTTP requests of this listener, shared by every core (HTTP and
    /// AUTO listeners; refused on TCP ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<crate::resources::LocalRateLimit>,
}

/// A TCP listener's default destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerDestination {
    /// Service host.
    #[serde(default)]
    pub host: String,
    /// Service port; needed when the service has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

fn is_outbound(d: &TrafficDirection) -> bool {
    *d == TrafficDirection::Outbound
}
