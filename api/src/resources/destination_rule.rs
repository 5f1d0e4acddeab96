//! `DestinationRule` (networking.istio.io): what happens after routing picked a host —
//! load balancing, connection pool, and the subsets routes may name.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Metadata, Origin, PortSelector};

/// Policies for traffic to one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    /// `networking.istio.io/v1` (v1beta1 and v1alpha3 are accepted).
    #[serde(default)]
    pub api_version: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: Metadata,
    /// The rule.
    #[serde(default)]
    pub spec: DestinationRuleSpec,
    /// Where it was loaded from (not serialized).
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// Namespaces whose proxies see this resource (`.`: its own; `*` or absent: all). Applied by
    /// the control plane when it picks each proxy's resources; a standalone proxy uses its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_to: Option<Vec<String>>,
    /// The workloads (of this rule's namespace) whose proxies apply it; absent: all. Applied by
    /// the control plane like `exportTo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// The service host (short names are expanded with the namespace).
    #[serde(default)]
    pub host: String,
    /// Policy for all of the host's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets of the endpoints, selected by labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
}

/// Istio `TrafficPolicy` (the parts ringmesh implements).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load-balancing algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Upstream connection settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// TLS to the upstream; absent: mutual TLS to meshed endpoints (Istio's auto mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Passive health checking: eject endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// ringmesh extension (Istio has none): active health checks, probes the proxy sends to
    /// every endpoint of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Overrides for single ports (`tls`, `outlierDetection` and `healthCheck` at this level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// Istio `TrafficPolicy.PortTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The service port it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    /// TLS to the upstream on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Outlier detection on this port (replaces the level's whole `outlierDetection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checks on this port (ringmesh extension; replaces the level's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Istio `OutlierDetection`: consecutive-error ejection (Envoy's success-rate and
/// failure-percentage detectors are not exposed by Istio either). Numbers are kept signed so
/// that a negative value is reported by the compiler with its field rather than by serde.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Count local-origin failures (connect failures, resets, timeouts) apart from the
    /// upstream's own 5xx answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failures in a row before ejection (with the split; default 5, 0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<i64>,
    /// 502, 503, 504 (and local failures without the split) in a row before ejection
    /// (default 0: disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<i64>,
    /// 5xx answers (and local failures without the split) in a row before ejection (default
    /// 5, 0 disables).
    #[serde(rename = "consecutive5xxErrors", default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<i64>,
    /// Time between ejection sweeps (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Minimum ejection time, multiplied by the times the endpoint was ejected (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Most endpoints of the cluster ejected at once, in percent (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i64>,
    /// Below this percentage of healthy endpoints, ejection is ignored (panic mode; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i64>,
}

/// ringmesh's active health check (an extension of Istio's `TrafficPolicy`): one of `http` or
/// `tcp`, sent by the proxy to each endpoint every `interval`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Probe with an HTTP/1.1 `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// Probe by opening a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// Time between probes of one endpoint (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Time a probe may take (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failed probes in a row that take an endpoint out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i64>,
    /// Passed probes in a row that bring it back (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i64>,
}

/// `healthCheck.http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// Path to request (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Host` header (default: the service host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that pass (default `[200]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<i64>,
}

/// `healthCheck.tcp`: passes when the connection opens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpHealthCheck {}

/// Istio `ClientTLSSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// `DISABLE` (Istio's default when `tls` is written), `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// `MUTUAL`: the client certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// `MUTUAL`: the private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// `SIMPLE`/`MUTUAL`: CA certificates to verify the server with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// `SIMPLE`/`MUTUAL`: a secret holding the certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Identities the server's certificate may carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Skip verifying the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// Istio `ClientTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientTlsMode {
    /// Plain text.
    #[default]
    #[serde(rename = "DISABLE")]
    Disable,
    /// TLS with the user's CA (not supported yet).
    #[serde(rename = "SIMPLE")]
    Simple,
    /// Mutual TLS with the user's certificates (not supported yet).
    #[serde(rename = "MUTUAL")]
    Mutual,
    /// Mutual TLS with the mesh's certificates.
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

/// Istio `LoadBalancerSettings`: `simple` or `consistentHash`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Consistent hashing (session affinity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-aware balancing: failover by locality (with `outlierDetection`), or weights
    /// per locality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
}

/// Istio `LocalityLoadBalancerSetting`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLbSetting {
    /// Share of traffic per destination locality, by the client's locality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Region to fail over to, by the client's region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels whose values order endpoints for failover: `key` (the proxy's value) or
    /// `key=value` (that value instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// `false` turns locality balancing off for this rule (it is on by default wherever
    /// outlier detection is, as in Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Istio `LocalityLoadBalancerSetting.Distribute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityDistribute {
    /// The client's locality, `region/zone/subzone` with `*` for any rest.
    #[serde(default)]
    pub from: String,
    /// Destination locality pattern → percent of traffic (summing to 100).
    #[serde(default)]
    pub to: std::collections::BTreeMap<String, i64>,
}

/// Istio `LocalityLoadBalancerSetting.Failover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityFailover {
    /// The client's region.
    #[serde(default)]
    pub from: String,
    /// The region its traffic goes to when its own region has no healthy endpoint.
    #[serde(default)]
    pub to: String,
}

/// Istio `LoadBalancerSettings.SimpleLB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimpleLb {
    /// Let the proxy choose (Istio's default, `LEAST_REQUEST`).
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    /// Deprecated Istio alias of `LEAST_REQUEST`.
    #[serde(rename = "LEAST_CONN")]
    LeastConn,
    /// Uniform random.
    #[serde(rename = "RANDOM")]
    Random,
    /// Original destination; not supported by ringmesh.
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
    /// Weighted round robin.
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    /// Power of two choices on in-flight requests.
    #[serde(rename = "LEAST_REQUEST")]
    LeastRequest,
}

/// Istio `ConsistentHashLB`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    /// Hash a request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash a cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash the client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Ring hash (the default) with its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHashSpec>,
    /// Maglev with its table size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevSpec>,
    /// Deprecated Istio field: ring hash with this minimum size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Istio `ConsistentHashLB.HTTPCookie`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    /// Cookie name.
    #[serde(default)]
    pub name: String,
    /// Cookie path (used when the proxy generates the cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Istio `WorkloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// Istio `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingHashSpec {
    /// Minimum number of points on the ring (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Istio `ConsistentHashLB.MagLev`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaglevSpec {
    /// Lookup table size; must be prime (default 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// Istio `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// TCP-level settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPoolSettings>,
    /// HTTP-level settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPoolSettings>,
}

/// Istio `ConnectionPoolSettings.TCPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpPoolSettings {
    /// Most upstream connections to the destination (HTTP/1.1, HTTP/2 and TCP) per proxy;
    /// 0 or absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// TCP connect timeout (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// TCP keep-alive probes on upstream sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// Istio `ConnectionPoolSettings.TCPSettings.TcpKeepalive`: `SO_KEEPALIVE` with the kernel's
/// defaults for what is not set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dead (`TCP_KEEPCNT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<i64>,
    /// Idle time before the first probe (`TCP_KEEPIDLE`), e.g. `"7200s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Time between probes (`TCP_KEEPINTVL`), e.g. `"75s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// Istio `ConnectionPoolSettings.HTTPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPoolSettings {
    /// Close pooled connections idle this long (default 1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Requests per connection; 0 or absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i64>,
    /// Requests waiting for an upstream HTTP/1.1 connection once `maxConnections` is reached;
    /// 0 or absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i64>,
    /// Retries in flight to the destination at once; 0 or absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    /// Requests in flight to the destination at once; 0 or absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i64>,
    /// Concurrent streams per upstream HTTP/2 connection; 0 or absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i64>,
    /// Whether HTTP/1.1 traffic to an HTTP port goes upstream as HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Speak to the upstream whatever the client spoke (HTTP/1.1 or HTTP/2); wins over
    /// `h2UpgradePolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
}

/// Istio `ConnectionPoolSettings.HTTPSettings.H2UpgradePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum H2UpgradePolicy {
    /// The mesh-wide default: HTTP/1.1 stays HTTP/1.1, except between two proxies.
    #[serde(rename = "DEFAULT")]
    Default,
    /// Never upgrade, not even between two proxies.
    #[serde(rename = "DO_NOT_UPGRADE")]
    DoNotUpgrade,
    /// Send HTTP/1.1 requests upstream as HTTP/2.
    #[serde(rename = "UPGRADE")]
    Upgrade,
}

/// A named subset of the host's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Name routes refer to (e.g. `v1`).
    #[serde(default)]
    pub name: String,
    /// Endpoints whose labels include all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the rule's policy, section by section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}
