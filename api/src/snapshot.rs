//! The compiled, immutable per-proxy snapshot: what a worker reads on every request.
//!
//! The compiler (`crate::compile`) produces it from resources; the proxy's control thread swaps
//! it in behind an `ArcSwap`; workers read it without a lock. Everything here is plain data laid
//! out for the request path: hash maps for hosts, precompiled matchers, cumulative weights. No
//! method on the request path allocates or locks.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::matcher::{HeaderMatch, PathMatch, QueryMatch, StringMatch};

/// One compiled proxy configuration. Immutable once built.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Monotonic version; a newer snapshot always has a larger one.
    pub version: u64,
    /// Process-level settings (workers, cores, ports, limits). Changes to listeners and workers
    /// take effect on restart only; everything else applies on reload.
    pub proxy: ProxySettings,
    /// Listeners in the order they were declared.
    pub listeners: Vec<Listener>,
    /// HTTP routing: virtual hosts by `Host`, then ordered routes.
    pub routes: RouteTable,
    /// Upstream clusters, indexed by [`ClusterId`].
    pub clusters: Vec<Cluster>,
    /// What guards this proxy's workload: path normalization, authorization, inbound mTLS.
    pub security: Security,
    /// How connections `ringmesh iptables` redirected are served (`spec.capture`): empty
    /// without capture listeners.
    pub capture: Capture,
    /// Metrics, access logs, traces and the reason header (`spec.telemetry`).
    pub telemetry: Telemetry,
}

/// What the proxy tells about the traffic it carries (`ProxyConfig.spec.telemetry`).
#[derive(Debug, Clone, Serialize)]
pub struct Telemetry {
    /// Access logs; `None`: off.
    pub access_log: Option<AccessLog>,
    /// Trace propagation, sampling and export.
    pub tracing: Tracing,
    /// Istio's standard metrics are kept, per direction (a `Telemetry`'s `metrics` overrides
    /// may turn one reporter off).
    pub istio_metrics: PerDirection<bool>,
    /// Label sets each worker keeps for Istio's metrics.
    pub max_series: usize,
    /// Local replies carry `x-ringmesh-reason`.
    pub reason_header: bool,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            access_log: None,
            tracing: Tracing::default(),
            istio_metrics: PerDirection::both(true),
            max_series: DEFAULT_MAX_SERIES,
            reason_header: true,
        }
    }
}

/// Label sets of Istio's metrics each worker keeps unless `spec.telemetry.metrics.maxSeries`
/// says otherwise.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// Bytes of access-log lines a worker holds for the writer unless
/// `spec.telemetry.accessLog.bufferBytes` says otherwise.
pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 256 * 1024;

/// `spec.telemetry.accessLog`, compiled.
#[derive(Debug, Clone, Serialize)]
pub struct AccessLog {
    /// `/dev/stdout` or a file.
    pub path: std::path::PathBuf,
    /// What each line holds, and how.
    pub format: crate::access_log::LogFormat,
    /// Bytes of lines a worker holds for the writer.
    pub buffer_bytes: usize,
    /// Which requests get a line, per direction (a `Telemetry`'s `accessLogging[].match.mode`
    /// and `filter`); every request unless a `Telemetry` says otherwise.
    pub filter: PerDirection<LogWhen>,
}

impl AccessLog {
    /// Whether a request that ended with `status` (0: none was sent) on an inbound listener
    /// (`inbound`) or an outbound one gets a line.
    #[inline]
    pub fn logs(&self, inbound: bool, status: u16) -> bool {
        self.filter.get(inbound).admits(status)
    }
}

/// A setting for each direction of traffic, as Istio's `Telemetry` tells them apart with
/// `match.mode`: `inbound` is the workload's server side (`SERVER`: requests on `direction:
/// INBOUND` listeners), `outbound` its client side (`CLIENT`: requests it sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PerDirection<T> {
    /// Requests the workload receives.
    pub inbound: T,
    /// Requests the workload sends.
    pub outbound: T,
}

impl<T: Copy> PerDirection<T> {
    /// The same setting both ways.
    pub const fn both(value: T) -> Self {
        PerDirection {
            inbound: value,
            outbound: value,
        }
    }

    /// The setting for one direction.
    #[inline]
    pub fn get(&self, inbound: bool) -> T {
        if inbound {
            self.inbound
        } else {
            self.outbound
        }
    }

    /// The setting for one direction, to change.
    pub fn get_mut(&mut self, inbound: bool) -> &mut T {
        if inbound {
            &mut self.inbound
        } else {
            &mut self.outbound
        }
    }
}

/// Which requests of one direction the access log writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum LogWhen {
    /// Every request.
    #[default]
    Always,
    /// None (a `Telemetry` turned this direction off).
    Never,
    /// Those whose response code passes the test (Istio's CEL `response.code >= 400`).
    Status(StatusTest),
}

impl LogWhen {
    /// Whether a request that ended with `status` gets a line.
    #[inline]
    pub fn admits(self, status: u16) -> bool {
        match self {
            LogWhen::Always => true,
            LogWhen::Never => false,
            LogWhen::Status(test) => test.admits(status),
        }
    }
}

/// `response.code <op> <value>`: the one shape of an access-log filter ringmesh evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusTest {
    /// The comparison.
    pub op: Comparison,
    /// The number `response.code` is compared with.
    pub value: u16,
}

impl StatusTest {
    /// Whether `status` passes.
    #[inline]
    pub fn admits(self, status: u16) -> bool {
        let v = self.value;
        match self.op {
            Comparison::Eq => status == v,
            Comparison::Ne => status != v,
            Comparison::Lt => status < v,
            Comparison::Le => status <= v,
            Comparison::Gt => status > v,
            Comparison::Ge => status >= v,
        }
    }
}

/// A comparison operator of CEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// `spec.telemetry.tracing`, compiled.
#[derive(Debug, Clone, Serialize)]
pub struct Tracing {
    /// `spec.telemetry.tracing` is present. When it is not, the proxy reads and writes no trace
    /// header (they pass as any other field) and makes no span, as Envoy without a tracer.
    pub enabled: bool,
    /// Fraction (0..=1) of requests without a sampling decision that start a sampled trace.
    pub sampling: f64,
    /// Sampled hops are reported as spans. `false` (a `Telemetry`'s `disableSpanReporting`):
    /// no span is made, while contexts and sampling decisions are still read, made and
    /// propagated, as Istio documents the field.
    pub report_spans: bool,
    /// Bytes of the path kept in a span's `http.url`.
    pub max_path_tag_length: usize,
    /// Who this proxy is in its spans.
    pub identity: SpanIdentity,
    /// Where spans go; `None`: contexts are propagated, no span is made.
    pub export: Option<OtlpExport>,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            enabled: false,
            // Istio's default `randomSamplingPercentage`: 1 %.
            sampling: 0.01,
            report_spans: true,
            max_path_tag_length: DEFAULT_MAX_PATH_TAG_LENGTH,
            identity: SpanIdentity::default(),
            export: None,
        }
    }
}

/// Bytes of the path a span's `http.url` keeps unless `maxPathTagLength` says otherwise
/// (Envoy's and Istio's 256).
pub const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;

/// The proxy's own attributes in every span, as an Istio sidecar sets them (resource
/// `service.name`; span tags `node_id`, `zone`, `istio.*`). Derived from `spec.workload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpanIdentity {
    /// The resource's `service.name`: `tracing.serviceName`, else `<canonical service>.<namespace>`.
    pub service_name: String,
    /// `node_id`: the control-plane node id, else Istio's `sidecar~<ip>~<name>.<ns>~<ns>.svc.cluster.local`.
    pub node_id: String,
    /// `zone`: the workload's `topology.kubernetes.io/zone` label, else empty.
    pub zone: String,
    /// `istio.canonical_service`: label `service.istio.io/canonical-name`, `app.kubernetes.io/name`
    /// or `app`, else the workload name.
    pub canonical_service: String,
    /// `istio.canonical_revision`: label `service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version` or `version`, else `latest`.
    pub canonical_revision: String,
    /// `istio.mesh_id`: the trust domain (Istio's default mesh id).
    pub mesh_id: String,
    /// `istio.namespace`: the workload's namespace.
    pub namespace: String,
}

/// An OTLP collector and how spans are batched for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtlpExport {
    /// Host name or IP address.
    pub service: String,
    /// Port.
    pub port: u16,
    /// gRPC or HTTP.
    pub protocol: OtlpProtocol,
    /// Time one export request may take.
    pub timeout: Duration,
    /// Spans in one export request.
    pub max_export_batch_size: usize,
    /// Spans waiting for export, all workers together.
    pub max_queue_size: usize,
    /// The longest a finished span waits before it is sent.
    pub schedule_delay: Duration,
}

/// How spans reach the collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    Grpc,
    /// OTLP/HTTP: `POST <path>` with an `application/x-protobuf` body.
    Http {
        /// The request path (`/v1/traces`).
        path: String,
    },
}

/// Where a captured connection goes, from its original destination
/// (`SO_ORIGINAL_DST`): a service's virtual IP and port on the way out, the app's port on
/// the way in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Capture {
    /// Services by (virtual IP, port): `ServiceEntry.addresses`, a Kubernetes Service's
    /// cluster IPs.
    #[serde(serialize_with = "services_in_order")]
    pub services: HashMap<SocketAddr, CapturedService>,
    /// Services' endpoints by address and port (a pod's own IP, as a headless Service or a
    /// StatefulSet pod's name gives it): such a connection goes to that very endpoint as TCP,
    /// over mutual TLS when a proxy serves it.
    #[serde(serialize_with = "endpoints_in_order")]
    pub endpoints: HashMap<SocketAddr, CapturedEndpoint>,
    /// The local app's ports (`spec.workload.ports` and the target ports of the services it
    /// serves): HTTP on these is routed to the app with the HTTP proxy's features
    /// (authorization by path, metrics); any other port is passed through as TCP.
    pub app_ports: BTreeMap<u16, AppPort>,
    /// What a connection to an outbound destination no service declares gets.
    pub unknown: crate::resources::OutboundTrafficMode,
}

fn endpoints_in_order<S: serde::Serializer>(
    endpoints: &HashMap<SocketAddr, CapturedEndpoint>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let sorted: BTreeMap<String, &CapturedEndpoint> = endpoints.iter().map(|(k, v)| (k.to_string(), v)).collect();
    sorted.serialize(s)
}

/// One endpoint of a service's port, reached by its own address.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CapturedEndpoint {
    /// The port's cluster.
    pub cluster: ClusterId,
    /// The endpoint's index in it.
    pub endpoint: usize,
}

fn services_in_order<S: serde::Serializer>(
    services: &HashMap<SocketAddr, CapturedService>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let sorted: BTreeMap<String, &CapturedService> = services.iter().map(|(k, v)| (k.to_string(), v)).collect();
    sorted.serialize(s)
}

/// What a captured connection carries, as the port says (its protocol or name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CapturedProtocol {
    /// HTTP/1.1 or HTTP/2: routed.
    Http,
    /// Opaque TCP (or TLS the app speaks itself).
    Tcp,
    /// Nothing said: the first bytes decide, as on an `AUTO` listener.
    Detect,
}

/// A service port reached through its virtual IP.
#[derive(Debug, Clone, Serialize)]
pub struct CapturedService {
    /// The service host.
    pub host: String,
    /// What the port carries.
    pub protocol: CapturedProtocol,
    /// HTTP: the virtual host when the request's `Host` names no other (the VirtualService
    /// claiming the service, or the service's route to this very port).
    pub vhost: VirtualHostId,
    /// The service's default virtual host (a route to its default port), which a `Host`
    /// naming the service would find: a request on another port of the service takes `vhost`
    /// instead, so it reaches the port it was sent to.
    pub default_vhost: Option<VirtualHostId>,
    /// TCP: where the bytes go (a VirtualService tcp route, else the port's cluster).
    pub clusters: WeightedClusters,
    /// TCP: close the pair after this long without a byte.
    pub idle_timeout: Duration,
}

/// One port of the local app, for inbound captured connections.
#[derive(Debug, Clone, Serialize)]
pub struct AppPort {
    /// What the port carries.
    pub protocol: CapturedProtocol,
    /// A virtual host with one route to `cluster`, whatever the `Host`.
    pub vhost: VirtualHostId,
    /// The app on the loopback address (`inbound|<port>||`).
    pub cluster: ClusterId,
}

/// The security settings compiled for this proxy's workload ([`ProxySettings::workload`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Security {
    /// How request paths are normalized before routing and authorization.
    pub path_normalization: crate::normalize::PathNormalization,
    /// The `AuthorizationPolicy`s that select the workload, applied on inbound listeners.
    pub authz: crate::authz::Authz,
    /// The `PeerAuthentication` in force for the workload, applied on inbound listeners.
    pub peer_authn: PeerAuthn,
    /// The oldest TLS version of mTLS between proxies (`spec.meshMTLS.minProtocolVersion`).
    pub min_tls_version: TlsVersion,
    /// Set by the proxy, not the compiler: it runs under a control plane whose first config
    /// has not been applied, so the workload's policies are not known yet and inbound
    /// listeners refuse every connection (fail closed) rather than serve as if none existed.
    pub awaiting_control_plane: bool,
}

/// A TLS version, as Istio names them in `meshConfig.meshMTLS.minProtocolVersion`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum TlsVersion {
    /// TLS 1.3 only (the default: no CBC suites, no renegotiation, one round trip).
    #[default]
    #[serde(rename = "TLSV1_3")]
    Tls13,
    /// TLS 1.2 and 1.3, for peers that cannot do 1.3 (only forward-secret AEAD suites).
    #[serde(rename = "TLSV1_2")]
    Tls12,
}

/// Whether inbound connections must, may or must not use mutual TLS, resolved from the
/// `PeerAuthentication`s for this workload with Istio's precedence (workload, namespace, mesh;
/// `UNSET` inherits; nothing at all is `PERMISSIVE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerAuthn {
    /// The mode on every port not in [`PeerAuthn::ports`].
    pub default: MtlsMode,
    /// Per-port modes (`portLevelMtls` of the workload's own policy), sorted by port.
    pub ports: Vec<(u16, MtlsMode)>,
}

impl PeerAuthn {
    /// The mode for inbound connections to `port` (the workload's port).
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(self.default, |(_, m)| *m)
    }
}

/// Istio's `PeerAuthentication.MutualTLS.Mode`, resolved (no `UNSET`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum MtlsMode {
    /// Only mutual TLS is accepted.
    Strict,
    /// Mutual TLS and plain text are both accepted (Istio's default).
    #[default]
    Permissive,
    /// Plain text only: a TLS connection is passed on as opaque bytes.
    Disable,
}

impl Snapshot {
    /// The cluster with this id. Ids come from this snapshot, so the index is always valid.
    pub fn cluster(&self, id: ClusterId) -> &Cluster {
        &self.clusters[id.0 as usize]
    }
}

/// How workers do I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// io_uring where the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring or fail at start-up.
    IoUring,
    /// epoll (monoio's legacy driver) even where io_uring works.
    Epoll,
}

/// Process-level settings from the `ProxyConfig` resource.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySettings {
    /// Worker threads; `None` means one per core the process may use (affinity and cgroup quota).
    pub workers: Option<usize>,
    /// Cores to pin workers to, worker `i` on `cpus[i % len]`; empty means no pinning.
    pub cpus: Vec<usize>,
    /// I/O driver choice.
    pub io: IoMode,
    /// Admin server (config dump, clusters, ready). Loopback by default.
    pub admin_address: SocketAddr,
    /// Health server (`/healthz/ready`).
    pub health_address: SocketAddr,
    /// Prometheus metrics server (`/stats/prometheus`).
    pub metrics_address: SocketAddr,
    /// Limits on what clients and upstreams may send.
    pub limits: Limits,
    /// Cap on retries relative to active requests, per worker; `None` (the default, as in
    /// Istio, whose `maxRetries` is effectively unlimited): only each route's `attempts` bound
    /// retries.
    pub retry_budget: Option<RetryBudget>,
    /// The control plane to subscribe to; `None` is standalone.
    pub control_plane: Option<ControlPlaneSettings>,
    /// The workload next to this proxy (announced to the control plane).
    pub workload: WorkloadSettings,
    /// Where the workload certificate comes from.
    pub identity: IdentitySettings,
}

/// The trust domain of SPIFFE ids unless `spec.identity.trustDomain` says otherwise (Istio's).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The workload certificate's lifetime asked of the CA unless `spec.identity.certLifetime` says
/// otherwise (Istio's 24 h).
pub const DEFAULT_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `spec.identity`, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentitySettings {
    /// Lifetime asked of the control plane's CA.
    pub cert_lifetime: std::time::Duration,
    /// Trust domain of the SPIFFE id (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    pub trust_domain: String,
    /// Files of the user's own PKI, used instead of the control plane's CA.
    pub files: Option<IdentityFiles>,
}

/// A certificate, its key and the roots, as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityFiles {
    /// Chain, leaf first (PEM).
    pub cert: std::path::PathBuf,
    /// Private key (PEM).
    pub key: std::path::PathBuf,
    /// Roots (PEM).
    pub ca: std::path::PathBuf,
}

/// How to check the control plane's TLS port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlPlaneTls {
    /// Roots its certificate must chain to (PEM).
    pub ca_cert_file: std::path::PathBuf,
    /// Name its certificate must carry; `None`: the host of the address.
    pub server_name: Option<String>,
}

/// Where the control plane is and who this proxy is to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlPlaneSettings {
    /// `host:port` of each control-plane replica's gRPC port, in the order they are tried
    /// (`address`, then `addresses`); never empty once compiled.
    pub addresses: Vec<String>,
    /// Node id announced in `Hello`.
    pub node_id: String,
    /// TLS to the control plane; `None`: plaintext (development).
    pub tls: Option<ControlPlaneTls>,
    /// Where the credential for certificates is read on every connect; `None`: the
    /// environment variable `RINGMESH_CREDENTIAL`, if set.
    pub credential_file: Option<std::path::PathBuf>,
}

/// The workload next to this proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadSettings {
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// IP addresses.
    pub addresses: Vec<std::net::IpAddr>,
    /// Service hosts it serves.
    pub services: Vec<String>,
    /// Target port per service port name.
    pub ports: BTreeMap<String, u16>,
    /// How to tell whether the app is ready; `None`: always ready.
    pub readiness: Option<ReadinessProbe>,
}

/// A compiled `readinessProbe` (Kubernetes' defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessProbe {
    /// The app's port on 127.0.0.1.
    pub port: u16,
    /// `Some(path)`: `GET path` must answer 200–399; `None`: a TCP connect must succeed.
    pub http_path: Option<String>,
    /// Time between probes.
    pub period: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Failures in a row that make the workload unready.
    pub failure_threshold: u32,
    /// Successes in a row that make it ready again.
    pub success_threshold: u32,
}

/// Limits applied to every HTTP connection. Defaults follow Envoy's where Envoy has one.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Largest request head (request line + headers) in bytes; larger gets 431.
    pub max_request_head_bytes: usize,
    /// Largest response head from an upstream; larger gets 502.
    pub max_response_head_bytes: usize,
    /// Most headers in one request or response head.
    pub max_headers: usize,
    /// Time a client has to send a complete request head once it started one (slowloris guard).
    pub request_header_timeout: Duration,
    /// Time a downstream connection may sit with no request in flight.
    pub downstream_idle_timeout: Duration,
    /// Longest silence between two reads of a request body (slow-POST guard); 408 when it
    /// passes before the response started.
    pub request_body_timeout: Duration,
    /// Downstream connections open at once over all workers (each worker takes its share);
    /// `None`: derived by the proxy at start from its descriptor limit
    /// ([`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Bytes HTTP/1.1 client connections may hold in read buffers at once over all workers
    /// (each worker takes its share): what slow or many clients make the proxy hold. Past it
    /// new connections are refused at accept; open ones are served on.
    pub max_buffer_bytes: usize,
    /// Time allowed for in-flight requests to finish on shutdown.
    pub drain_timeout: Duration,
    /// Time a `protocol: AUTO` listener waits for the client's first bytes
    /// ([`ListenerKind::Detect`] carries it).
    pub protocol_detection_timeout: Duration,
}

/// Default `limits.maxBufferBytes`: 256 MiB, 16,384 connections each with a full 16 KiB read
/// buffer, far above what a sidecar's clients hold (an idle connection holds none).
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 256 << 20;

/// Default time allowed between two reads of a request body: nginx's `client_body_timeout`.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The connection limit when `limits.maxConnections` is not set: half the descriptor limit
/// (`RLIMIT_NOFILE`'s soft value), as a proxied connection may hold an upstream socket beside
/// its own, and at least 256. Envoy has no default; haproxy derives its `maxconn` from the
/// same limit. Past it `accept` would fail with `EMFILE` for everyone, listeners and upstream
/// connects alike; refusing the newest client instead keeps the others served.
pub fn default_max_connections(nofile_soft: u64) -> usize {
    usize::try_from(nofile_soft / 2).unwrap_or(usize::MAX).max(256)
}

/// Default time a listener of unknown protocol waits for the client's first bytes before it
/// treats the connection as opaque TCP (Istio's original `protocolDetectionTimeout`). Long
/// enough for any client-first protocol on a live connection, short enough that a
/// server-first one (MySQL, SMTP) only pays it once, at connect.
pub const DEFAULT_PROTOCOL_DETECTION_TIMEOUT: Duration = Duration::from_millis(100);

/// Envoy-style retry budget: retries in flight may not exceed `budget_percent` of active
/// requests, but `min_retry_concurrency` are always allowed. A retry is in flight from the end
/// of its back-off until its try has a response head or failed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RetryBudget {
    /// Percent of active requests that may be retries at once.
    pub budget_percent: f64,
    /// Retries always allowed in flight regardless of load.
    pub min_retry_concurrency: u32,
}

/// What a listener speaks.
#[derive(Debug, Clone, Serialize)]
pub enum ListenerKind {
    /// HTTP/1.1 routed through [`RouteTable`].
    Http,
    /// Opaque TCP sent to a weighted set of clusters.
    Tcp {
        /// Where connections go.
        clusters: WeightedClusters,
        /// Close the pair after this long with no bytes in either direction.
        idle_timeout: Duration,
    },
    /// Protocol unknown (`protocol: AUTO` without a port hint): the first bytes decide. HTTP/1
    /// and HTTP/2 are served as on an [`ListenerKind::Http`] listener; anything else (a TLS
    /// ClientHello, an opaque protocol, or silence for `timeout`: a server-first protocol) is
    /// proxied as on a [`ListenerKind::Tcp`] one to `clusters`.
    Detect {
        /// Where connections that are not HTTP go.
        clusters: WeightedClusters,
        /// Idle timeout of those TCP connections.
        idle_timeout: Duration,
        /// How long to wait for the client's first bytes.
        timeout: Duration,
    },
    /// Takes connections `ringmesh iptables` redirected: the original destination picks the
    /// service (outbound) or the app's port (inbound) from [`Snapshot::capture`], and with it
    /// HTTP, TCP or detection.
    Captured,
}

/// One listening socket, opened by every worker with `SO_REUSEPORT`.
#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    /// Name used in logs and metrics.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// Protocol and, for TCP, its destination.
    pub kind: ListenerKind,
    /// Takes traffic for the local workload (`direction: INBOUND`): [`Security::peer_authn`]
    /// and [`Security::authz`] apply to it.
    pub inbound: bool,
    /// A bind that fails for want of the address family (IPv6 on a host without it) skips
    /// the listener, said in the log, instead of stopping the proxy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// A token bucket over the listener's HTTP requests (ringmesh's `localRateLimit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<LocalRateLimit>,
}

/// Index into [`Snapshot::clusters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ClusterId(pub u32);

/// Index into [`RouteTable::virtual_hosts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct VirtualHostId(pub u32);

/// Host lookup: exact names in a hash map, `*.suffix` wildcards longest first, then `*`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteTable {
    /// Virtual hosts in declaration order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Lower-case exact host name to virtual host.
    #[serde(skip)]
    pub(crate) exact: HashMap<String, VirtualHostId>,
    /// (`.suffix` including the dot, host) sorted by suffix length, longest first.
    #[serde(skip)]
    pub(crate) suffixes: Vec<(String, VirtualHostId)>,
    /// The `*` host, if any.
    #[serde(skip)]
    pub(crate) catch_all: Option<VirtualHostId>,
}

/// Read-only view of a request head that routing needs. Implemented by the proxy over its
/// parsed head so that matching never copies the request.
pub trait RequestHead {
    /// Method, e.g. `GET`.
    fn method(&self) -> &str;
    /// Path without the query string, e.g. `/api/v1`.
    fn path(&self) -> &str;
    /// Query string without the `?`, if any.
    fn query(&self) -> Option<&str>;
    /// First value of a header; `name` is lower case, matching is case-insensitive.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// A set of routes that share host names.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHost {
    /// `namespace/name` of the VirtualService, or the service host for a default route.
    pub name: String,
    /// Host names as declared (lower case).
    pub domains: Vec<String>,
    /// Ordered routes; the first that matches wins.
    pub routes: Vec<Route>,
    #[serde(skip)]
    pub(crate) index: crate::route_index::RouteIndex,
}

/// One route: conditions and what to do on a match.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// Name for logs and metrics: the http route's `name`, or `<vs>/<index>`.
    pub name: String,
    /// Any one of these matches the route (Istio's `match` list is OR); empty matches all.
    pub matches: Vec<RouteMatch>,
    /// What happens on a match.
    pub action: RouteAction,
    /// Applied to the request before it is forwarded.
    pub request_headers: HeaderOps,
    /// Applied to the response before it goes back to the client.
    pub response_headers: HeaderOps,
    /// Faults injected before the action (Istio's `fault`).
    pub fault: Option<Box<Fault>>,
    /// The route's token bucket (ringmesh's `localRateLimit`), checked before the fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<LocalRateLimit>,
}

/// A route's fault injection: a delay, then an abort, each drawn for its own share of
/// requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// Wait this long before going on, for this share of requests.
    pub delay: Option<(Duration, FaultShare)>,
    /// Answer locally instead of going on, for this share of requests.
    pub abort: Option<(FaultStatus, FaultShare)>,
}

/// A share of requests, in millionths (Envoy's `FractionalPercent` with `MILLION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultShare(pub u32);

impl FaultShare {
    /// Every request.
    pub const ALL: FaultShare = FaultShare(1_000_000);

    /// Whether a request falls in the share, given a uniform random number.
    pub fn hit(self, random: u64) -> bool {
        self.0 >= 1_000_000 || (random % 1_000_000) < u64::from(self.0)
    }
}

/// What an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FaultStatus {
    /// This HTTP status.
    Http(u16),
    /// This gRPC status (HTTP 200, trailers-only).
    Grpc(u8),
}

/// One `match` entry: all conditions must hold.
#[derive(Debug, Clone, Serialize)]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Method condition.
    pub method: Option<StringMatch>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query: Vec<QueryMatch>,
}

/// What a matching route does.
#[derive(Debug, Clone, Serialize)]
pub enum RouteAction {
    /// Proxy to a cluster.
    Forward(ForwardAction),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly with a fixed status and body.
    Direct(DirectResponse),
}

/// Proxy the request to one of a weighted set of clusters.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardAction {
    /// Destination clusters with precomputed cumulative weights.
    pub clusters: WeightedClusters,
    /// Replace the matched path prefix (or the whole path for an exact match).
    pub path_rewrite: Option<PathRewrite>,
    /// Replace the `Host` header.
    pub host_rewrite: Option<String>,
    /// Whole-request timeout including retries; `None` means none (Istio's default).
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Clusters that get a copy of a share of the requests, answers discarded (Istio
    /// `mirror`/`mirrors`).
    pub mirrors: Vec<Mirror>,
}

/// One mirror of a route: a copy of each request in `share` goes to `cluster`, with `-shadow`
/// added to its host; the client never waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mirror {
    /// Where the copies go.
    pub cluster: ClusterId,
    /// Which share of requests is copied.
    pub share: FaultShare,
}

/// Istio `rewrite.uri`: replaces the part of the path that the route's match consumed.
#[derive(Debug, Clone, Serialize)]
pub struct PathRewrite {
    /// The replacement text.
    pub replacement: String,
}

/// Clusters with cumulative weights, so that picking is one scan of a short array.
#[derive(Debug, Clone, Serialize)]
pub struct WeightedClusters {
    /// `(cluster, cumulative weight)`, cumulative weights strictly increasing.
    pub entries: Vec<(ClusterId, u32)>,
}

impl WeightedClusters {
    /// A single destination with all the weight.
    pub fn single(id: ClusterId) -> Self {
        WeightedClusters { entries: vec![(id, 1)] }
    }

    /// Sum of all weights.
    pub fn total(&self) -> u32 {
        self.entries.last().map_or(0, |e| e.1)
    }

    /// The cluster for a uniformly random `r`; `r` is reduced modulo the total weight.
    pub fn pick(&self, r: u32) -> ClusterId {
        if let [(only, _)] = self.entries.as_slice() {
            return *only;
        }
        let point = r % self.total().max(1);
        for &(id, cumulative) in &self.entries {
            if point < cumulative {
                return id;
            }
        }
        // Unreachable for a compiled table (point < total); keep the last as a safe answer.
        self.entries.last().map_or(ClusterId(0), |e| e.0)
    }
}

/// Retry policy for one route. Defaults follow Istio: 2 attempts on connect failure,
/// refused stream, 503 and the gRPC statuses `unavailable` and `cancelled`.
#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try (`attempts` in Istio). 0 disables retries.
    pub attempts: u32,
    /// Timeout of each try; `None` means only the route timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// Retry when the TCP connect fails.
    pub on_connect_failure: bool,
    /// Retry when the upstream resets or closes before any response byte.
    pub on_reset: bool,
    /// Retry on any 5xx.
    pub on_5xx: bool,
    /// Retry on 502, 503, 504.
    pub on_gateway_error: bool,
    /// Retry on these statuses.
    pub retriable_status_codes: Vec<u16>,
    /// Retry a gRPC response whose `grpc-status` is one of these (`retryOn` `cancelled`,
    /// `deadline-exceeded`, `resource-exhausted`, `internal`, `unavailable`).
    pub retriable_grpc: GrpcCodes,
    /// First back-off interval; each retry doubles it up to `backoff_max`, with full jitter.
    pub backoff_base: Duration,
    /// Largest back-off interval.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Whether a response with this status may be retried under this policy.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
            || self.retriable_status_codes.contains(&status)
    }

    /// Whether a gRPC response with this `grpc-status` may be retried under this policy.
    pub fn retries_grpc(&self, code: u32) -> bool {
        self.retriable_grpc.contains(code)
    }
}

/// A set of gRPC status codes (0 `OK` to 16 `UNAUTHENTICATED`), one bit each: copied into
/// every retry decision without an allocation.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// `CANCELLED`.
    pub const CANCELLED: u32 = 1;
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// `INTERNAL`.
    pub const INTERNAL: u32 = 13;
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: u32 = 14;
    /// The largest code gRPC defines (`UNAUTHENTICATED`).
    pub const MAX: u32 = 16;

    /// The empty set.
    pub const fn empty() -> Self {
        GrpcCodes(0)
    }

    /// This set plus `code`; a code above [`GrpcCodes::MAX`] is not a gRPC status and is left
    /// out.
    #[must_use]
    pub const fn with(self, code: u32) -> Self {
        if code > Self::MAX {
            return self;
        }
        GrpcCodes(self.0 | 1 << code)
    }

    /// Whether `code` is in the set (never for a code above [`GrpcCodes::MAX`]).
    pub fn contains(self, code: u32) -> bool {
        code <= Self::MAX && self.0 & (1 << code) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..=Self::MAX).filter(move |c| self.contains(*c))
    }
}

impl std::fmt::Debug for GrpcCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for GrpcCodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Answer with a redirect (`Location` built from the request and these parts).
#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    /// Status code: 301 (default), 302, 303, 307 or 308.
    pub status: u16,
    /// Replace the scheme.
    pub scheme: Option<String>,
    /// Replace the host.
    pub authority: Option<String>,
    /// Replace the port.
    pub port: Option<u16>,
    /// Replace the whole path.
    pub path: Option<String>,
}

/// Answer with a fixed status and body.
#[derive(Debug, Clone, Serialize)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes (may be empty).
    pub body: String,
}

/// Header changes: remove, then set (replace), then add (append).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    /// Lower-case names to replace, with values.
    pub set: Vec<(String, String)>,
    /// Lower-case names to append, with values.
    pub add: Vec<(String, String)>,
    /// Lower-case names to remove.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// An upstream cluster: one service port, optionally narrowed to a subset.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// Istio-style name: `outbound|<port>|<subset>|<host>`.
    pub name: String,
    /// Service host name.
    pub service: String,
    /// Service port.
    pub port: u16,
    /// Subset name from the DestinationRule, if any.
    pub subset: Option<String>,
    /// Endpoints that serve it (may be empty: requests then get 503).
    pub endpoints: Vec<Endpoint>,
    /// Load-balancing policy and its precomputed tables.
    pub lb: LbPolicy,
    /// TCP connect timeout (Istio default 10 s).
    pub connect_timeout: Duration,
    /// Upstream connection pool settings.
    pub pool: PoolSettings,
    /// What the proxy speaks to the endpoints (see [`Cluster::h2_to`]).
    pub protocol: UpstreamProtocol,
    /// Whether HTTP/1.1 traffic to a meshed endpoint ([`Endpoint::meshed`]) goes over HTTP/2
    /// between the two proxies: true unless the DestinationRule says `h2UpgradePolicy:
    /// DO_NOT_UPGRADE`.
    pub upgrade_meshed: bool,
    /// `Some` for the placeholder of a route destination whose host no ServiceEntry defines
    /// (yet): the cluster has no endpoints, and the proxy answers requests routed to it with
    /// 503 (Envoy's `NC`, "no cluster found") and this text as the body, which names the host.
    /// A config that defines the host compiles to a snapshot with a real cluster instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_not_found: Option<String>,
    /// TLS to the endpoints (see [`Cluster::mtls_to`]), from the DestinationRule's `tls`.
    pub tls: UpstreamTls,
    /// Passive health checking (Istio `outlierDetection`); `None`: never eject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierDetection>,
    /// Active health checks (ringmesh's `healthCheck`); `None`: no probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Locality-aware balancing for this proxy (`localityLbSetting`); `None`: localities play
    /// no part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityPlan>,
}

/// How a cluster's endpoints are grouped by locality for this proxy (endpoint indices). The
/// balancer first chooses a group, then balances inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LocalityPlan {
    /// Priority levels, best first (own subzone, zone, region, failover region, the rest; empty
    /// levels left out): traffic stays in the first level with healthy endpoints and spills
    /// over as Envoy does when a level is partly unhealthy.
    Failover(Vec<Vec<u32>>),
    /// Groups with their percent of traffic (`distribute`); an endpoint in no group gets none.
    Distribute(Vec<(u32, Vec<u32>)>),
}

impl Cluster {
    /// Whether a request to `endpoint` (an index into [`Cluster::endpoints`]) goes over
    /// HTTP/2; `client_h2` says whether the client spoke HTTP/2. An HTTP/1.1 cluster still
    /// speaks HTTP/2 to a meshed endpoint, whose proxy translates back (unless the rule said
    /// `DO_NOT_UPGRADE`), so that two proxies share a few multiplexed connections. A hop in
    /// mutual TLS ([`Cluster::mtls_to`]) is always HTTP/2: the proxies' TLS hop is carried by
    /// their shared HTTP/2 connections only (`DO_NOT_UPGRADE` applies to plaintext hops).
    pub fn h2_to(&self, endpoint: usize, client_h2: bool) -> bool {
        if self.mtls_to(endpoint) {
            return true;
        }
        match self.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::UseClient => client_h2,
            UpstreamProtocol::Http1 => self.upgrade_meshed && self.endpoints.get(endpoint).is_some_and(|e| e.meshed),
        }
    }

    /// The identities (SPIFFE URIs) an mTLS upstream must prove, from the DestinationRule's
    /// `tls.subjectAltNames`; empty: any workload of the trust domain.
    pub fn expected_peers(&self) -> &[String] {
        match &self.tls {
            UpstreamTls::IstioMutual { subject_alt_names } => subject_alt_names,
            UpstreamTls::Auto | UpstreamTls::Disable => &[],
        }
    }

    /// Whether the connection to `endpoint` (an index into [`Cluster::endpoints`]) is mutual
    /// TLS with the mesh's certificates: with no `tls` in the DestinationRule, exactly when a
    /// proxy serves the endpoint (Istio's auto mTLS), else as the rule says.
    pub fn mtls_to(&self, endpoint: usize) -> bool {
        match self.tls {
            UpstreamTls::Auto => self.endpoints.get(endpoint).is_some_and(|e| e.meshed),
            UpstreamTls::IstioMutual { .. } => true,
            UpstreamTls::Disable => false,
        }
    }
}

/// TLS to a cluster's endpoints, from DestinationRule `tls` (the subset's port-level setting,
/// the subset's, the rule's port-level setting, the rule's: the first that is set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum UpstreamTls {
    /// No `tls` anywhere: mutual TLS to meshed endpoints, plain text to the others.
    #[default]
    Auto,
    /// `DISABLE`: plain text, even to meshed endpoints.
    Disable,
    /// `ISTIO_MUTUAL`: mutual TLS with the mesh's certificates to every endpoint.
    IstioMutual {
        /// Identities the server's certificate must carry (any one); empty: the mesh's usual
        /// check.
        subject_alt_names: Vec<String>,
    },
}

/// What a cluster speaks to its endpoints, read as Istio reads it: the ServiceEntry port's
/// `protocol` (`HTTP2`, `GRPC`, `GRPC-WEB`: HTTP/2), then the DestinationRule's
/// `connectionPool.http` (`h2UpgradePolicy: UPGRADE` on an HTTP port, `useClientProtocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (HTTP/2 to a meshed endpoint, see [`Cluster::upgrade_meshed`]).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// Whatever the client spoke.
    UseClient,
}

/// The endpoint label that says a ringmesh (or Istio) proxy serves the endpoint: Istio's
/// injector puts `security.istio.io/tlsMode: istio` on every meshed pod.
pub const MESHED_LABEL: &str = "security.istio.io/tlsMode";
/// The value of [`MESHED_LABEL`] on a meshed endpoint.
pub const MESHED_LABEL_VALUE: &str = "istio";

/// One upstream endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Socket address to connect to.
    pub address: SocketAddr,
    /// Relative weight (>= 1).
    pub weight: u32,
    /// Labels (used for subsets; shown in `/clusters`).
    pub labels: BTreeMap<String, String>,
    /// A ringmesh (or Istio) proxy serves it: its labels carry [`MESHED_LABEL`]` = istio`.
    pub meshed: bool,
}

/// Istio's default idle timeout for upstream HTTP connections.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Idle upstream connections kept per endpoint per worker (no Istio equivalent).
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 32;

/// Connection pool settings for a cluster (Istio `connectionPool`).
#[derive(Debug, Clone, Serialize)]
pub struct PoolSettings {
    /// Close an idle pooled connection after this long (Istio `http.idleTimeout`, default 1 h).
    pub idle_timeout: Duration,
    /// Close a connection after this many requests; `None` is unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// Idle connections kept per endpoint per worker.
    pub max_idle_per_endpoint: usize,
    /// Most requests in flight to the cluster at once (Istio `http2MaxRequests`); `None` is
    /// unlimited.
    pub http2_max_requests: Option<u32>,
    /// Most concurrent streams on one upstream HTTP/2 connection (Istio
    /// `maxConcurrentStreams`); `None` is unlimited (the server's `SETTINGS` still apply).
    pub max_concurrent_streams: Option<u32>,
    /// Most upstream connections to the cluster per proxy (Istio `tcp.maxConnections`):
    /// HTTP/1.1 (idle pooled ones included), HTTP/2 and TCP-proxy connections; `None` is
    /// unlimited.
    pub max_connections: Option<u32>,
    /// Most requests waiting for an HTTP/1.1 connection once `max_connections` is reached
    /// (Istio `http.http1MaxPendingRequests`); `None` is unlimited.
    pub max_pending_requests: Option<u32>,
    /// Most retries in flight to the cluster at once (Istio `http.maxRetries`, Envoy's
    /// `max_retries` circuit breaker); `None` is unlimited.
    pub max_retries: Option<u32>,
    /// `SO_KEEPALIVE` and its settings on upstream sockets (Istio `tcp.tcpKeepalive`).
    pub tcp_keepalive: Option<TcpKeepalive>,
}

impl Default for PoolSettings {
    /// A cluster no DestinationRule shapes: Istio's defaults, no limits.
    fn default() -> Self {
        PoolSettings {
            idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            max_requests_per_connection: None,
            max_idle_per_endpoint: DEFAULT_MAX_IDLE_PER_ENDPOINT,
            http2_max_requests: None,
            max_concurrent_streams: None,
            max_connections: None,
            max_pending_requests: None,
            max_retries: None,
            tcp_keepalive: None,
        }
    }
}

impl PoolSettings {
    /// Whether any limit that the proxy enforces across cores is set.
    pub fn has_limits(&self) -> bool {
        self.max_connections.is_some()
            || self.max_pending_requests.is_some()
            || self.max_retries.is_some()
            || self.http2_max_requests.is_some()
    }
}

/// TCP keep-alive on upstream sockets; `None` fields keep the kernel's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpKeepalive {
    /// `TCP_KEEPCNT`.
    pub probes: Option<u32>,
    /// `TCP_KEEPIDLE`, whole seconds (at least 1).
    pub time: Option<Duration>,
    /// `TCP_KEEPINTVL`, whole seconds (at least 1).
    pub interval: Option<Duration>,
}

/// A local rate limit (ringmesh's `localRateLimit` on a route or a listener): a token bucket
/// in the shape of Envoy's `local_ratelimit`, one per proxy whatever core a request lands on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalRateLimit {
    /// Index into the proxy's table of buckets; every limit of a snapshot has its own.
    pub id: u32,
    /// Where the limit was written (`VirtualService ns/name http[2]`, `listener web`): a
    /// reload keeps a bucket whose key and settings did not change, tokens included.
    pub key: String,
    /// Capacity; the bucket starts full.
    pub max_tokens: u32,
    /// Tokens added each fill.
    pub tokens_per_fill: u32,
    /// Time between fills (at least 50 ms).
    pub fill_interval: Duration,
    /// gRPC requests refused get `RESOURCE_EXHAUSTED` rather than `UNAVAILABLE`.
    pub grpc_resource_exhausted: bool,
}

impl Snapshot {
    /// Every local rate limit of the snapshot (routes' and listeners'), each once, by id.
    pub fn local_rate_limits(&self) -> Vec<&LocalRateLimit> {
        let mut all: Vec<&LocalRateLimit> = self
            .listeners
            .iter()
            .filter_map(|l| l.local_rate_limit.as_ref())
            .chain(
                self.routes
                    .virtual_hosts
                    .iter()
                    .flat_map(|vh| vh.routes.iter())
                    .filter_map(|r| r.local_rate_limit.as_ref()),
            )
            .collect();
        all.sort_by_key(|l| l.id);
        all.dedup_by_key(|l| l.id);
        all
    }
}

/// Outlier detection of a cluster (Istio `outlierDetection`, Envoy's consecutive detectors).
/// A threshold of 0 disables its detector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject (local-origin failures count too unless split).
    pub consecutive_5xx: u32,
    /// 502/503/504 answers in a row that eject (local-origin failures too unless split).
    pub consecutive_gateway: u32,
    /// Local-origin failures in a row that eject; only with `split_local_origin`.
    pub consecutive_local_origin: u32,
    /// Whether connect failures, resets and timeouts count apart from the upstream's answers.
    pub split_local_origin: bool,
    /// Time between sweeps that return ejected endpoints and decay the ejection counts.
    pub interval: Duration,
    /// Ejection time = this × times the endpoint was ejected (capped at `max_ejection_time`).
    pub base_ejection_time: Duration,
    /// Longest ejection (Envoy's default `max_ejection_time`, 300 s; Istio does not expose it).
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent of the cluster's endpoints.
    pub max_ejection_percent: u8,
    /// Below this percentage of healthy endpoints the balancer ignores health (panic mode).
    pub min_health_percent: u8,
}

/// Active health checking of a cluster's endpoints (ringmesh's `healthCheck` extension).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    /// What a probe does.
    pub probe: HealthProbe,
    /// Time between probes of one endpoint.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Failed probes in a row that take an endpoint out.
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that bring it back.
    pub healthy_threshold: u32,
}

/// The kind of an active health probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum HealthProbe {
    /// An HTTP/1.1 `GET` whose status must be one of `expected_statuses`.
    Http {
        /// Request path.
        path: String,
        /// `Host` header.
        host: String,
        /// Statuses that pass.
        expected_statuses: Vec<u16>,
    },
    /// A TCP connection that opens.
    Tcp,
}

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Serialize)]
pub enum LbPolicy {
    /// Weighted round robin (Istio's `ROUND_ROBIN`; the default is `LEAST_REQUEST` in Istio).
    RoundRobin,
    /// Power of two choices on in-flight requests, weighted.
    LeastRequest,
    /// Uniform (weighted) random.
    Random,
    /// Consistent hash on a ring (Ketama style).
    RingHash {
        /// What to hash.
        hash_on: HashOn,
        /// The ring, shared read-only by all workers.
        #[serde(skip)]
        table: crate::hash_table::RingHashTable,
    },
    /// Consistent hash with a Maglev lookup table.
    Maglev {
        /// What to hash.
        hash_on: HashOn,
        /// The lookup table, shared read-only by all workers.
        #[serde(skip)]
        table: crate::hash_table::MaglevTable,
    },
}

/// The request property a consistent hash is computed over.
#[derive(Debug, Clone, Serialize)]
pub enum HashOn {
    /// A header's value (lower-case name).
    Header(String),
    /// A cookie's value.
    Cookie {
        /// Cookie name.
        name: String,
    },
    /// The client's IP address.
    SourceIp,
}
