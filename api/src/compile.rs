//! The one compiler: resources in, an immutable [`Snapshot`] out, with every error at once.
//!
//! The proxy (standalone), the control plane and `ringmesh analyze` all call [`compile`] (or
//! [`compile_files`]), so a config that compiles in one place compiles in all three. The order
//! of work is:
//!
//! 1. duplicates (same kind, namespace and name) and the single `ProxyConfig`;
//! 2. the [`ServiceRegistry`] from ServiceEntries plus [`CompileInput::extra_endpoints`];
//! 3. DestinationRules into per-host policies and subsets;
//! 4. one cluster per (host, port), plus one per (host, port, subset) that a route names;
//! 5. VirtualServices into virtual hosts (one each), then a default virtual host for every
//!    service host that no VirtualService claims;
//! 6. listeners, TCP ones resolved to clusters.
//!
//! Problems are collected as [`Diagnostic`]s with the file, line, resource and field path; the
//! snapshot is returned only when there is no error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::duration::parse_duration;
use crate::hash_table::{
    is_prime, MaglevTable, RingHashTable, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MIN_RING_SIZE, MAX_RING_SIZE,
};
use crate::locate::FieldPath;
use crate::matcher::{AnchoredRegex, HeaderMatch, PathMatch, QueryMatch, StringMatch};
use crate::registry::{fqdn, host_aliases, ExtraEndpoint, RegistryEndpoint, Service, ServicePort, ServiceRegistry};
use crate::resources::{
    Destination, DestinationRule, HeaderOperations, Headers, HttpRetry, HttpRoute, ListenerProtocol, Origin,
    ProxyConfig, Resolution, Resource, ServiceEntry, SimpleLb, StringMatchSpec, TrafficPolicy, VirtualService,
    WorkloadEntry,
};
use crate::snapshot::{
    Cluster, ClusterId, ControlPlaneSettings, DirectResponse, Endpoint, ForwardAction, HashOn, HeaderOps, IoMode,
    LbPolicy, Limits, Listener, ListenerKind, PathRewrite, PoolSettings, ProxySettings, Redirect, RetryBudget,
    RetryPolicy, Route, RouteAction, RouteMatch, RouteTable, Snapshot, VirtualHost, WeightedClusters, WorkloadSettings,
};

/// Everything the compiler needs. Plain data, so the control plane can build it from its store
/// and its registry of announced workloads.
#[derive(Debug, Clone, Default)]
pub struct CompileInput {
    /// The resources, in a stable order (file order for files).
    pub resources: Vec<Resource>,
    /// Endpoints from outside the resources (workloads announced by proxies), added to the
    /// services they name.
    pub extra_endpoints: Vec<ExtraEndpoint>,
    /// Version of the resulting snapshot.
    pub version: u64,
}

/// A compiled snapshot and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Warnings (unsupported fields, ignored resources, settings accepted but not enforced).
    pub warnings: Vec<Diagnostic>,
}

/// Loads `paths` (files or directories of `*.yaml`/`*.yml`) and compiles them: the proxy's
/// standalone mode in one call. Load warnings come first in [`Compiled::warnings`].
pub fn compile_files(paths: &[PathBuf], version: u64) -> Result<Compiled, Vec<Diagnostic>> {
    let (resources, mut warnings) = crate::load::load_files(paths)?;
    let mut compiled = compile(&CompileInput {
        resources,
        extra_endpoints: Vec::new(),
        version,
    })?;
    warnings.append(&mut compiled.warnings);
    compiled.warnings = warnings;
    Ok(compiled)
}

/// Compiles resources into a snapshot, or returns every error found.
pub fn compile(input: &CompileInput) -> Result<Compiled, Vec<Diagnostic>> {
    let mut c = Compiler::default();
    c.check_duplicates(&input.resources);

    let mut proxy_configs = Vec::new();
    let mut service_entries = Vec::new();
    let mut virtual_services = Vec::new();
    let mut destination_rules = Vec::new();
    for r in &input.resources {
        match r {
            Resource::WorkloadEntry(w) => c.workload_entry(w),
            Resource::ProxyConfig(p) => proxy_configs.push(p),
            Resource::ServiceEntry(s) => service_entries.push(s),
            Resource::VirtualService(v) => virtual_services.push(v),
            Resource::DestinationRule(d) => destination_rules.push(d),
            Resource::AuthorizationPolicy(a) => c.authorization_policy(a),
            Resource::PeerAuthentication(p) => c.peer_authentication(p),
        }
    }
    for extra in proxy_configs.iter().skip(1) {
        let first = proxy_configs.first().map(|p| location(p.origin.as_deref()));
        c.error(
            &Site::of_proxy(extra),
            &FieldPath::root(),
            format!(
                "only one ProxyConfig is allowed; another is defined{}",
                first.unwrap_or_default()
            ),
        );
    }
    let proxy = c.proxy_settings(proxy_configs.first().copied());

    for se in &service_entries {
        c.service_entry(se);
    }
    for extra in &input.extra_endpoints {
        if let Err(e) = c.registry.add_endpoint(extra.clone()) {
            c.diags
                .push(Diagnostic::warning(format!("announced endpoint ignored: {e}")));
        }
    }
    for dr in &destination_rules {
        c.destination_rule(dr);
    }
    // Every service port gets its cluster, in host order, so ids are stable across compiles
    // of the same config.
    let ports: Vec<(String, u16)> = c
        .registry
        .services()
        .flat_map(|s| s.ports.iter().map(move |p| (s.host.clone(), p.number)))
        .collect();
    for (host, port) in ports {
        c.cluster_for(&host, port, None);
    }

    let mut virtual_hosts = Vec::new();
    let mut used_domains = HashSet::new();
    let mut claimed: HashMap<String, (String, String)> = HashMap::new();
    for vs in &virtual_services {
        if let Some(vh) = c.virtual_service(vs, &mut claimed, &mut used_domains) {
            virtual_hosts.push(vh);
        }
    }
    let services: Vec<Service> = c.registry.services().cloned().collect();
    for service in &services {
        if claimed.contains_key(&service.host) {
            continue;
        }
        if let Some(vh) = c.default_virtual_host(service, &mut used_domains) {
            virtual_hosts.push(vh);
        }
    }
    let listeners = c.listeners(proxy_configs.first().copied(), &proxy, &virtual_services);

    let snapshot = Snapshot {
        version: input.version,
        proxy,
        listeners,
        routes: RouteTable::new(virtual_hosts),
        clusters: c.clusters,
    };
    let (errors, warnings): (Vec<_>, Vec<_>) = c.diags.into_iter().partition(Diagnostic::is_error);
    if errors.is_empty() {
        Ok(Compiled { snapshot, warnings })
    } else {
        Err(errors)
    }
}

/// The resource a diagnostic is about.
struct Site<'a> {
    origin: Option<&'a Origin>,
    label: String,
    namespace: String,
}

impl<'a> Site<'a> {
    fn of_proxy(p: &'a ProxyConfig) -> Self {
        Site {
            origin: p.origin.as_deref(),
            label: p.label(),
            namespace: p.metadata.namespace().to_owned(),
        }
    }
    fn of_we(r: &'a WorkloadEntry) -> Self {
        Site {
            origin: r.origin.as_deref(),
            label: r.label(),
            namespace: r.metadata.namespace().to_owned(),
        }
    }
    fn of_se(r: &'a ServiceEntry) -> Self {
        Site {
            origin: r.origin.as_deref(),
            label: r.label(),
            namespace: r.metadata.namespace().to_owned(),
        }
    }
    fn of_vs(r: &'a VirtualService) -> Self {
        Site {
            origin: r.origin.as_deref(),
            label: r.label(),
            namespace: r.metadata.namespace().to_owned(),
        }
    }
    fn of_dr(r: &'a DestinationRule) -> Self {
        Site {
            origin: r.origin.as_deref(),
            label: r.label(),
            namespace: r.metadata.namespace().to_owned(),
        }
    }
}

/// ` at file:line` for "defined elsewhere" messages; empty when not from a file.
fn location(origin: Option<&Origin>) -> String {
    match origin {
        Some(o) => format!(" at {}:{}", o.file.as_deref().unwrap_or("<input>"), o.first_line),
        None => String::new(),
    }
}

/// Load balancing chosen by a DestinationRule, before tables are built per cluster.
#[derive(Debug, Clone)]
enum LbChoice {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash { hash_on: HashOn, min_ring: usize },
    Maglev { hash_on: HashOn, table_size: usize },
}

/// The parts of a traffic policy ringmesh implements; `None` means "not set here", so a
/// subset's policy can override the rule's field by field.
#[derive(Debug, Clone, Default)]
struct PolicyParts {
    lb: Option<LbChoice>,
    connect_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_requests_per_connection: Option<Option<u32>>,
}

impl PolicyParts {
    fn overridden_by(&self, other: &PolicyParts) -> PolicyParts {
        PolicyParts {
            lb: other.lb.clone().or_else(|| self.lb.clone()),
            connect_timeout: other.connect_timeout.or(self.connect_timeout),
            idle_timeout: other.idle_timeout.or(self.idle_timeout),
            max_requests_per_connection: other.max_requests_per_connection.or(self.max_requests_per_connection),
        }
    }
}

#[derive(Debug, Clone)]
struct SubsetInfo {
    name: String,
    labels: BTreeMap<String, String>,
    policy: PolicyParts,
}

#[derive(Debug, Clone)]
struct RuleInfo {
    label: String,
    base: PolicyParts,
    subsets: Vec<SubsetInfo>,
}

/// Istio's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default idle timeout for upstream HTTP connections.
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Idle upstream connections kept per endpoint per worker (no Istio equivalent).
const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 32;
/// TCP listener idle timeout (Istio's TCP proxy default).
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Compiler {
    diags: Vec<Diagnostic>,
    registry: ServiceRegistry,
    /// Valid `WorkloadEntry`s, for ServiceEntries that select them by labels.
    workload_entries: Vec<SelectableWorkload>,
    rules: HashMap<String, RuleInfo>,
    clusters: Vec<crate::snapshot::Cluster>,
    cluster_ids: HashMap<(String, u16, Option<String>), ClusterId>,
}

/// A checked `WorkloadEntry`: its namespace, and the endpoint it becomes (port overrides by
/// name, filtered per ServiceEntry).
#[derive(Debug)]
struct SelectableWorkload {
    namespace: String,
    endpoint: RegistryEndpoint,
}

impl Compiler {
    fn error(&mut self, site: &Site<'_>, path: &FieldPath, message: impl Into<String>) {
        self.push(Diagnostic::error(message), site, path);
    }

    fn warn(&mut self, site: &Site<'_>, path: &FieldPath, message: impl Into<String>) {
        self.push(Diagnostic::warning(message), site, path);
    }

    fn push(&mut self, d: Diagnostic, site: &Site<'_>, path: &FieldPath) {
        let (file, line) = match site.origin {
            Some(o) => (o.file.as_deref(), o.line_of(path)),
            None => (None, None),
        };
        self.diags.push(
            d.at(file, line)
                .in_resource(site.label.clone())
                .on_field(path.to_string()),
        );
    }

    fn duration(&mut self, site: &Site<'_>, path: &FieldPath, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(site, path, e.to_string());
                None
            }
        }
    }

    fn port(&mut self, site: &Site<'_>, path: &FieldPath, n: i64) -> Option<u16> {
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(site, path, format!("port must be between 1 and 65535, got {n}"));
                None
            }
        }
    }

    fn check_duplicates(&mut self, resources: &[Resource]) {
        let mut seen: HashMap<(&'static str, String, String), Option<&Origin>> = HashMap::new();
        for r in resources {
            let key = (r.kind(), r.metadata().namespace().to_owned(), r.metadata().name.clone());
            if let Some(first) = seen.get(&key) {
                let site = Site {
                    origin: r.origin(),
                    label: r.label(),
                    namespace: key.1.clone(),
                };
                let msg = format!("duplicate {}; the first is defined{}", r.label(), location(*first));
                self.error(&site, &FieldPath::root().key("metadata").key("name"), msg);
            } else {
                seen.insert(key, r.origin());
            }
        }
    }

    // ---------------------------------------------------------------- ProxyConfig

    fn proxy_settings(&mut self, pc: Option<&ProxyConfig>) -> ProxySettings {
        let mut settings = ProxySettings {
            workers: None,
            cpus: Vec::new(),
            io: IoMode::Auto,
            admin_address: SocketAddr::from(([127, 0, 0, 1], 15000)),
            health_address: SocketAddr::from(([0, 0, 0, 0], 15020)),
            metrics_address: SocketAddr::from(([0, 0, 0, 0], 15090)),
            limits: Limits {
                max_request_head_bytes: 65536,
                max_response_head_bytes: 65536,
                max_headers: 100,
                request_header_timeout: Duration::from_secs(10),
                downstream_idle_timeout: Duration::from_secs(300),
                drain_timeout: Duration::from_secs(5),
            },
            retry_budget: None,
            control_plane: None,
            workload: WorkloadSettings {
                namespace: "default".into(),
                ..Default::default()
            },
        };
        let Some(pc) = pc else { return settings };
        let site = Site::of_proxy(pc);
        let spec = &pc.spec;
        let root = FieldPath::root().key("spec");
        if let Some(w) = spec.workers {
            match usize::try_from(w) {
                Ok(n) if n >= 1 => settings.workers = Some(n),
                _ => self.error(
                    &site,
                    &root.key("workers"),
                    format!("workers must be at least 1, got {w}"),
                ),
            }
        }
        settings.cpus = spec.cpus.clone();
        settings.io = spec.io.unwrap_or_default();
        for (field, value, slot) in [
            ("adminAddress", &spec.admin_address, &mut settings.admin_address),
            ("healthAddress", &spec.health_address, &mut settings.health_address),
            ("metricsAddress", &spec.metrics_address, &mut settings.metrics_address),
        ] {
            if let Some(text) = value {
                match text.parse::<SocketAddr>() {
                    Ok(a) => *slot = a,
                    Err(_) => self.error(&site, &root.key(field), format!("{text:?} is not an ip:port address")),
                }
            }
        }
        if let Some(l) = &spec.limits {
            let p = root.key("limits");
            let limits = &mut settings.limits;
            for (field, value, slot) in [
                (
                    "maxRequestHeadBytes",
                    l.max_request_head_bytes,
                    &mut limits.max_request_head_bytes,
                ),
                (
                    "maxResponseHeadBytes",
                    l.max_response_head_bytes,
                    &mut limits.max_response_head_bytes,
                ),
                ("maxHeaders", l.max_headers, &mut limits.max_headers),
            ] {
                if let Some(v) = value {
                    match usize::try_from(v) {
                        Ok(n) if n >= 1 => *slot = n,
                        _ => self.error(&site, &p.key(field), format!("{field} must be at least 1, got {v}")),
                    }
                }
            }
            let mut timeouts = [
                (
                    "requestHeaderTimeout",
                    &l.request_header_timeout,
                    limits.request_header_timeout,
                ),
                ("idleTimeout", &l.idle_timeout, limits.downstream_idle_timeout),
                ("drainTimeout", &l.drain_timeout, limits.drain_timeout),
            ];
            for (field, text, slot) in timeouts.iter_mut() {
                if let Some(text) = text {
                    if let Some(d) = self.duration(&site, &p.key(field), text) {
                        *slot = d;
                    }
                }
            }
            settings.limits.request_header_timeout = timeouts[0].2;
            settings.limits.downstream_idle_timeout = timeouts[1].2;
            settings.limits.drain_timeout = timeouts[2].2;
        }
        if let Some(b) = &spec.retry_budget {
            let p = root.key("retryBudget");
            // Envoy's defaults for a budget that is turned on.
            let budget = settings.retry_budget.insert(RetryBudget {
                budget_percent: 20.0,
                min_retry_concurrency: 3,
            });
            if let Some(pct) = b.budget_percent {
                if (0.0..=100.0).contains(&pct) {
                    budget.budget_percent = pct;
                } else {
                    self.error(
                        &site,
                        &p.key("budgetPercent"),
                        format!("budgetPercent must be between 0 and 100, got {pct}"),
                    );
                }
            }
            if let Some(m) = b.min_retry_concurrency {
                match u32::try_from(m) {
                    Ok(m) => budget.min_retry_concurrency = m,
                    Err(_) => self.error(
                        &site,
                        &p.key("minRetryConcurrency"),
                        format!("minRetryConcurrency must not be negative, got {m}"),
                    ),
                }
            }
        }
        if let Some(w) = &spec.workload {
            let p = root.key("workload");
            let ws = &mut settings.workload;
            ws.name = w.name.clone();
            ws.namespace = w.namespace.clone().unwrap_or_else(|| "default".into());
            ws.service_account = w.service_account.clone().unwrap_or_else(|| "default".into());
            ws.labels = w.labels.clone();
            ws.services = w.services.iter().map(|h| h.to_ascii_lowercase()).collect();
            for (i, a) in w.addresses.iter().enumerate() {
                match a.parse() {
                    Ok(ip) => ws.addresses.push(ip),
                    Err(_) => self.error(
                        &site,
                        &p.key("addresses").index(i),
                        format!("{a:?} is not an IP address"),
                    ),
                }
            }
            for (name, port) in &w.ports {
                match u16::try_from(*port) {
                    Ok(n) if n > 0 => {
                        ws.ports.insert(name.clone(), n);
                    }
                    _ => self.error(
                        &site,
                        &p.key("ports").key(name),
                        format!("port must be 1 to 65535, got {port}"),
                    ),
                }
            }
            if !w.services.is_empty() && (w.addresses.is_empty() || w.ports.is_empty()) {
                self.error(&site, &p, "a workload that serves services needs addresses and ports");
            }
            if let Some(probe) = &w.readiness_probe {
                ws.readiness = self.readiness_probe(&site, &p.key("readinessProbe"), probe);
            }
        }
        if let Some(cp) = &spec.control_plane {
            let p = root.key("controlPlane");
            let host_port = |a: &str| {
                a.rsplit_once(':')
                    .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
            };
            let mut addresses = Vec::new();
            if !cp.address.is_empty() || cp.addresses.is_empty() {
                if !host_port(&cp.address) {
                    let msg = if cp.address.is_empty() {
                        "address or addresses is required".to_owned()
                    } else {
                        format!("{:?} is not host:port", cp.address)
                    };
                    self.error(&site, &p.key("address"), msg);
                }
                addresses.push(cp.address.clone());
            }
            for (i, a) in cp.addresses.iter().enumerate() {
                if !host_port(a) {
                    self.error(&site, &p.key("addresses").index(i), format!("{a:?} is not host:port"));
                } else if addresses.contains(a) {
                    self.error(&site, &p.key("addresses").index(i), format!("{a:?} is listed twice"));
                }
                addresses.push(a.clone());
            }
            let node_id = cp.node_id.clone().unwrap_or_else(|| {
                let name = if settings.workload.name.is_empty() {
                    "proxy"
                } else {
                    settings.workload.name.as_str()
                };
                format!("{name}-{}", std::process::id())
            });
            settings.control_plane = Some(ControlPlaneSettings { addresses, node_id });
        }
        settings
    }

    /// Kubernetes' probe semantics and defaults: period 10 s, timeout 1 s, 3 failures, 1 success.
    fn readiness_probe(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        spec: &crate::resources::ProbeSpec,
    ) -> Option<crate::snapshot::ReadinessProbe> {
        let errors_before = self.diags.iter().filter(|d| d.is_error()).count();
        let port = |this: &mut Self, raw: i64, path: FieldPath| match u16::try_from(raw) {
            Ok(n) if n > 0 => n,
            _ => {
                this.error(site, &path, format!("port must be 1 to 65535, got {raw}"));
                0
            }
        };
        let (port, http_path) = match (&spec.http_get, &spec.tcp_socket) {
            (Some(h), None) => {
                let path = h.path.clone().unwrap_or_else(|| "/".into());
                if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    self.error(
                        site,
                        &p.key("httpGet").key("path"),
                        format!("{path:?} is not a request path"),
                    );
                }
                (port(self, h.port, p.key("httpGet").key("port")), Some(path))
            }
            (None, Some(t)) => (port(self, t.port, p.key("tcpSocket").key("port")), None),
            _ => {
                self.error(site, p, "a readinessProbe needs exactly one of httpGet or tcpSocket");
                return None;
            }
        };
        let positive = |this: &mut Self, v: Option<i64>, default: u32, name: &str| match v {
            None => default,
            Some(n) if (1..=3600).contains(&n) => n as u32,
            Some(n) => {
                this.error(site, &p.key(name), format!("must be 1 to 3600, got {n}"));
                default
            }
        };
        let period = positive(self, spec.period_seconds, 10, "periodSeconds");
        let timeout = positive(self, spec.timeout_seconds, 1, "timeoutSeconds");
        let failure_threshold = positive(self, spec.failure_threshold, 3, "failureThreshold");
        let success_threshold = positive(self, spec.success_threshold, 1, "successThreshold");
        let ok = self.diags.iter().filter(|d| d.is_error()).count() == errors_before;
        ok.then(|| crate::snapshot::ReadinessProbe {
            port,
            http_path,
            period: Duration::from_secs(u64::from(period)),
            timeout: Duration::from_secs(u64::from(timeout)),
            failure_threshold,
            success_threshold,
        })
    }

    fn listeners(
        &mut self,
        pc: Option<&ProxyConfig>,
        proxy: &ProxySettings,
        virtual_services: &[&VirtualService],
    ) -> Vec<Listener> {
        let default = || {
            vec![Listener {
                name: "outbound".into(),
                address: SocketAddr::from(([127, 0, 0, 1], 15001)),
                kind: ListenerKind::Http,
            }]
        };
        let Some(pc) = pc.filter(|p| !p.spec.listeners.is_empty()) else {
            return default();
        };
        let site = Site::of_proxy(pc);
        let mut out = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, String> = HashMap::from([
            (proxy.admin_address, "the admin server (adminAddress)".to_owned()),
            (proxy.health_address, "the health server (healthAddress)".to_owned()),
            (proxy.metrics_address, "the metrics server (metricsAddress)".to_owned()),
        ]);
        for (i, l) in pc.spec.listeners.iter().enumerate() {
            let p = FieldPath::root().key("spec").key("listeners").index(i);
            if l.name.is_empty() {
                self.error(&site, &p.key("name"), "listener name is required");
            } else if let Some(first) = names.insert(&l.name, i) {
                self.error(
                    &site,
                    &p.key("name"),
                    format!("duplicate listener name {:?} (also spec.listeners[{first}])", l.name),
                );
            }
            let address = match l.address.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    let msg = if l.address.is_empty() {
                        "listener address is required (ip:port)".to_owned()
                    } else {
                        format!("{:?} is not an ip:port address", l.address)
                    };
                    self.error(&site, &p.key("address"), msg);
                    None
                }
            };
            // Port 0 asks the kernel for a free port: several such addresses never clash.
            if let Some(a) = address.filter(|a| a.port() != 0) {
                let who = format!("listener {:?}", l.name);
                if let Some(other) = addresses.insert(a, who) {
                    self.error(
                        &site,
                        &p.key("address"),
                        format!("address {a} is already used by {other}"),
                    );
                }
            }
            let kind = match l.protocol {
                ListenerProtocol::Http => {
                    if l.destination.is_some() {
                        self.error(
                            &site,
                            &p.key("destination"),
                            "destination applies only to TCP listeners; HTTP listeners route \
                             by VirtualService",
                        );
                    }
                    if l.idle_timeout.is_some() {
                        self.error(
                            &site,
                            &p.key("idleTimeout"),
                            "idleTimeout applies only to TCP listeners; HTTP listeners use \
                             spec.limits.idleTimeout",
                        );
                    }
                    Some(ListenerKind::Http)
                }
                ListenerProtocol::Tcp => {
                    let idle_timeout = match &l.idle_timeout {
                        Some(t) => self.duration(&site, &p.key("idleTimeout"), t),
                        None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
                    };
                    let clusters = self.tcp_listener_clusters(&site, &p, l, address, virtual_services);
                    match (clusters, idle_timeout) {
                        (Some(clusters), Some(idle_timeout)) => Some(ListenerKind::Tcp { clusters, idle_timeout }),
                        _ => None,
                    }
                }
            };
            if let (Some(address), Some(kind)) = (address, kind) {
                out.push(Listener {
                    name: l.name.clone(),
                    address,
                    kind,
                });
            }
        }
        out
    }

    /// A TCP listener's clusters: a VirtualService tcp route matching the listener's port wins;
    /// then a tcp route without a port condition in a VirtualService for the listener's
    /// destination host; then the destination itself.
    fn tcp_listener_clusters(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        l: &crate::resources::ListenerSpec,
        address: Option<SocketAddr>,
        virtual_services: &[&VirtualService],
    ) -> Option<WeightedClusters> {
        let port = address.map(|a| i64::from(a.port()));
        let dest_service = l
            .destination
            .as_ref()
            .and_then(|d| self.registry.resolve(&d.host, &site.namespace).map(|s| s.host.clone()));
        let mut by_port = None;
        let mut by_host = None;
        for vs in virtual_services.iter().filter(|vs| applies_to_mesh(vs)) {
            for (i, route) in vs.spec.tcp.iter().enumerate() {
                if by_port.is_none() && port.is_some() && route.matches.iter().any(|m| m.port == port) {
                    by_port = Some((*vs, i));
                }
                let claims_dest = dest_service.as_ref().is_some_and(|h| {
                    vs.spec.hosts.iter().any(|vh| {
                        self.registry
                            .resolve(vh, vs.metadata.namespace())
                            .is_some_and(|s| &s.host == h)
                    })
                });
                if by_host.is_none() && claims_dest && route.matches.iter().all(|m| m.port.is_none()) {
                    by_host = Some((*vs, i));
                }
            }
        }
        if let Some((vs, i)) = by_port.or(by_host) {
            return self.tcp_route_clusters(vs, i);
        }
        match &l.destination {
            Some(d) => {
                let dp = p.key("destination");
                let dest = Destination {
                    host: d.host.clone(),
                    subset: None,
                    port: d.port.map(|number| crate::resources::PortSelector { number }),
                };
                let id = self.destination_cluster(site, &dp, &dest, "port")?;
                Some(WeightedClusters::single(id))
            }
            None => {
                let port_text = port.map_or_else(String::new, |p| format!(" {p}"));
                self.error(
                    site,
                    p,
                    format!(
                        "TCP listener needs a destination or a VirtualService tcp route \
                         matching port{port_text}"
                    ),
                );
                None
            }
        }
    }

    fn tcp_route_clusters(&mut self, vs: &VirtualService, i: usize) -> Option<WeightedClusters> {
        let site = Site::of_vs(vs);
        let route = vs.spec.tcp.get(i)?;
        let p = FieldPath::root().key("spec").key("tcp").index(i).key("route");
        let dests: Vec<(&Destination, Option<i64>)> = route.route.iter().map(|d| (&d.destination, d.weight)).collect();
        self.weighted(&site, &p, &dests)
    }

    // ---------------------------------------------------------------- ServiceEntry

    /// Checks a `WorkloadEntry` and keeps it for the ServiceEntries that select it.
    fn workload_entry(&mut self, we: &WorkloadEntry) {
        let site = Site::of_we(we);
        let spec = FieldPath::root().key("spec");
        let address = match we.spec.address.parse::<std::net::IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let msg = if we.spec.address.is_empty() {
                    "address is required".to_owned()
                } else {
                    format!(
                        "{:?} is not an IP address (host names are not supported yet)",
                        we.spec.address
                    )
                };
                self.error(&site, &spec.key("address"), msg);
                None
            }
        };
        let weight = match we.spec.weight {
            None | Some(0) => Some(1),
            Some(w) => u32::try_from(w).ok().or_else(|| {
                self.error(
                    &site,
                    &spec.key("weight"),
                    format!("weight must be a positive number, got {w}"),
                );
                None
            }),
        };
        let mut overrides = BTreeMap::new();
        for (name, number) in &we.spec.ports {
            if let Some(n) = self.port(&site, &spec.key("ports").key(name), *number) {
                overrides.insert(name.clone(), n);
            }
        }
        if let (Some(address), Some(weight)) = (address, weight) {
            self.workload_entries.push(SelectableWorkload {
                namespace: we.metadata.namespace().to_owned(),
                endpoint: RegistryEndpoint {
                    address,
                    ports: overrides,
                    labels: we.spec.labels.clone(),
                    weight,
                },
            });
        }
    }

    fn service_entry(&mut self, se: &ServiceEntry) {
        let site = Site::of_se(se);
        let spec = FieldPath::root().key("spec");
        if se.spec.hosts.is_empty() {
            self.error(&site, &spec.key("hosts"), "at least one host is required");
        }
        if se.spec.ports.is_empty() {
            self.error(&site, &spec.key("ports"), "at least one port is required");
        }
        let mut ports: Vec<ServicePort> = Vec::new();
        for (i, p) in se.spec.ports.iter().enumerate() {
            let pp = spec.key("ports").index(i);
            let number = self.port(&site, &pp.key("number"), p.number);
            if p.name.is_empty() {
                self.error(&site, &pp.key("name"), "port name is required");
            }
            let target_port = match p.target_port {
                Some(t) => self.port(&site, &pp.key("targetPort"), t),
                None => None,
            };
            let Some(number) = number else { continue };
            if ports.iter().any(|q| q.number == number) {
                self.error(&site, &pp.key("number"), format!("port {number} is declared twice"));
                continue;
            }
            if !p.name.is_empty() && ports.iter().any(|q| q.name == p.name) {
                self.error(
                    &site,
                    &pp.key("name"),
                    format!("port name {:?} is declared twice", p.name),
                );
            }
            ports.push(ServicePort {
                number,
                name: p.name.clone(),
                protocol: p.protocol.clone().unwrap_or_default().to_ascii_uppercase(),
                target_port,
            });
        }

        let selects = se.spec.workload_selector.is_some();
        let resolution = se
            .spec
            .resolution
            .unwrap_or(if se.spec.endpoints.is_empty() && !selects {
                Resolution::None
            } else {
                Resolution::Static
            });
        match resolution {
            Resolution::None if !se.spec.hosts.is_empty() => {
                self.warn(
                    &site,
                    &spec.key("resolution"),
                    "resolution NONE (forward to the original destination) is not \
                     supported yet; the service has no endpoints",
                );
            }
            Resolution::Dns | Resolution::DnsRoundRobin if se.spec.endpoints.is_empty() && !selects => {
                self.error(
                    &site,
                    &spec.key("resolution"),
                    "resolution DNS without endpoints (resolving the hosts themselves) is not \
                     supported yet; list the endpoints' IP addresses",
                );
            }
            _ => {}
        }
        let mut endpoints = Vec::new();
        for (i, e) in se.spec.endpoints.iter().enumerate() {
            let ep = spec.key("endpoints").index(i);
            let address = match e.address.parse::<std::net::IpAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    let msg = if e.address.is_empty() {
                        "endpoint address is required".to_owned()
                    } else if e.address.starts_with("unix://") {
                        "unix domain socket endpoints are not supported yet".to_owned()
                    } else if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
                        "resolution DNS with hostname endpoints is not supported yet; use IP \
                         addresses"
                            .to_owned()
                    } else {
                        format!(
                            "endpoint address {:?} is not an IP address (resolution STATIC \
                             needs IP addresses)",
                            e.address
                        )
                    };
                    self.error(&site, &ep.key("address"), msg);
                    None
                }
            };
            let weight = match e.weight {
                None | Some(0) => Some(1),
                Some(w) => match u32::try_from(w) {
                    Ok(w) => Some(w),
                    Err(_) => {
                        self.error(
                            &site,
                            &ep.key("weight"),
                            format!("weight must be a positive number, got {w}"),
                        );
                        None
                    }
                },
            };
            let mut overrides = BTreeMap::new();
            for (name, number) in &e.ports {
                let path = ep.key("ports").key(name);
                if !ports.iter().any(|p| &p.name == name) {
                    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                    let hint = did_you_mean(name, names.iter().copied())
                        .map(|s| format!("; did you mean {s:?}?"))
                        .unwrap_or_default();
                    self.error(
                        &site,
                        &path,
                        format!(
                            "{name:?} is not a port name of this ServiceEntry (ports: {}){hint}",
                            names.join(", ")
                        ),
                    );
                    continue;
                }
                if let Some(n) = self.port(&site, &path, *number) {
                    overrides.insert(name.clone(), n);
                }
            }
            if let (Some(address), Some(weight)) = (address, weight) {
                endpoints.push(RegistryEndpoint {
                    address,
                    ports: overrides,
                    labels: e.labels.clone(),
                    weight,
                });
            }
        }

        if let Some(sel) = &se.spec.workload_selector {
            if se.spec.endpoints.is_empty() {
                let ns = se.metadata.namespace();
                for w in self.workload_entries.iter().filter(|w| w.namespace == ns) {
                    if sel.labels.iter().all(|(k, v)| w.endpoint.labels.get(k) == Some(v)) {
                        let mut e = w.endpoint.clone();
                        e.ports.retain(|name, _| ports.iter().any(|p| &p.name == name));
                        endpoints.push(e);
                    }
                }
            } else {
                self.error(
                    &site,
                    &spec.key("workloadSelector"),
                    "endpoints and workloadSelector are mutually exclusive; keep one",
                );
            }
        }

        for (i, host) in se.spec.hosts.iter().enumerate() {
            let hp = spec.key("hosts").index(i);
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty() {
                self.error(&site, &hp, "host must not be empty");
                continue;
            }
            if host.contains('*') {
                self.warn(
                    &site,
                    &hp,
                    format!("wildcard host {host:?} is not supported yet; ignored"),
                );
                continue;
            }
            let host = if host.contains('.') {
                host
            } else {
                fqdn(&host, &site.namespace)
            };
            let service = Service {
                host,
                namespace: site.namespace.clone(),
                ports: ports.clone(),
                endpoints: endpoints.clone(),
                source: format!("{}{}", site.label, location(site.origin)),
            };
            if let Err(e) = self.registry.add_service(service) {
                self.error(&site, &hp, e.to_string());
            }
        }
    }

    // ---------------------------------------------------------------- DestinationRule

    fn destination_rule(&mut self, dr: &DestinationRule) {
        let site = Site::of_dr(dr);
        let spec = FieldPath::root().key("spec");
        let base = match &dr.spec.traffic_policy {
            Some(tp) => self.traffic_policy(&site, &spec.key("trafficPolicy"), tp),
            None => PolicyParts::default(),
        };
        let mut subsets: Vec<SubsetInfo> = Vec::new();
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            let sp = spec.key("subsets").index(i);
            if s.name.is_empty() {
                self.error(&site, &sp.key("name"), "subset name is required");
                continue;
            }
            if subsets.iter().any(|o| o.name == s.name) {
                self.error(&site, &sp.key("name"), format!("subset {:?} is defined twice", s.name));
                continue;
            }
            let policy = match &s.traffic_policy {
                Some(tp) => self.traffic_policy(&site, &sp.key("trafficPolicy"), tp),
                None => PolicyParts::default(),
            };
            subsets.push(SubsetInfo {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy,
            });
        }
        if dr.spec.host.is_empty() {
            self.error(&site, &spec.key("host"), "host is required");
            return;
        }
        let Some(service) = self.registry.resolve(&dr.spec.host, &site.namespace) else {
            self.warn(
                &site,
                &spec.key("host"),
                format!(
                    "host {:?} matches no ServiceEntry; the rule has no effect",
                    dr.spec.host
                ),
            );
            return;
        };
        let host = service.host.clone();
        if let Some(other) = self.rules.get(&host) {
            let msg = format!(
                "host {host} already has a DestinationRule ({}); merge them into one",
                other.label
            );
            self.error(&site, &spec.key("host"), msg);
            return;
        }
        self.rules.insert(
            host,
            RuleInfo {
                label: format!("{}{}", site.label, location(site.origin)),
                base,
                subsets,
            },
        );
    }

    fn traffic_policy(&mut self, site: &Site<'_>, p: &FieldPath, tp: &TrafficPolicy) -> PolicyParts {
        let mut parts = PolicyParts::default();
        if let Some(lb) = &tp.load_balancer {
            let lp = p.key("loadBalancer");
            match (&lb.simple, &lb.consistent_hash) {
                (Some(_), Some(_)) => self.error(site, &lp, "set either simple or consistentHash, not both"),
                (Some(simple), None) => {
                    parts.lb = match simple {
                        SimpleLb::RoundRobin => Some(LbChoice::RoundRobin),
                        SimpleLb::Random => Some(LbChoice::Random),
                        SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified => {
                            Some(LbChoice::LeastRequest)
                        }
                        SimpleLb::Passthrough => {
                            self.error(
                                site,
                                &lp.key("simple"),
                                "PASSTHROUGH load balancing (original destination) is not \
                                 supported",
                            );
                            None
                        }
                    }
                }
                (None, Some(ch)) => parts.lb = self.consistent_hash(site, &lp.key("consistentHash"), ch),
                (None, None) => {}
            }
        }
        if let Some(pool) = &tp.connection_pool {
            let pp = p.key("connectionPool");
            if let Some(tcp) = &pool.tcp {
                let tp = pp.key("tcp");
                if let Some(t) = &tcp.connect_timeout {
                    parts.connect_timeout = self.duration(site, &tp.key("connectTimeout"), t);
                }
                if tcp.max_connections.is_some() {
                    self.warn(
                        site,
                        &tp.key("maxConnections"),
                        "maxConnections is accepted but not enforced yet",
                    );
                }
            }
            if let Some(http) = &pool.http {
                let hp = pp.key("http");
                if let Some(t) = &http.idle_timeout {
                    parts.idle_timeout = self.duration(site, &hp.key("idleTimeout"), t);
                }
                if let Some(n) = http.max_requests_per_connection {
                    match u32::try_from(n) {
                        Ok(0) => parts.max_requests_per_connection = Some(None),
                        Ok(n) => parts.max_requests_per_connection = Some(Some(n)),
                        Err(_) => self.error(
                            site,
                            &hp.key("maxRequestsPerConnection"),
                            format!("maxRequestsPerConnection must not be negative, got {n}"),
                        ),
                    }
                }
                for (field, set) in [
                    ("http1MaxPendingRequests", http.http1_max_pending_requests.is_some()),
                    ("maxRetries", http.max_retries.is_some()),
                ] {
                    if set {
                        self.warn(
                            site,
                            &hp.key(field),
                            format!("{field} is accepted but not enforced yet"),
                        );
                    }
                }
            }
        }
        parts
    }

    fn consistent_hash(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        ch: &crate::resources::ConsistentHashLb,
    ) -> Option<LbChoice> {
        let mut keys = Vec::new();
        if let Some(h) = &ch.http_header_name {
            if h.is_empty() {
                self.error(site, &p.key("httpHeaderName"), "header name must not be empty");
                return None;
            }
            keys.push(HashOn::Header(h.to_ascii_lowercase()));
        }
        if let Some(c) = &ch.http_cookie {
            let cp = p.key("httpCookie");
            if c.name.is_empty() {
                self.error(site, &cp.key("name"), "cookie name is required");
                return None;
            }
            if let Some(ttl) = &c.ttl {
                if let Some(d) = self.duration(site, &cp.key("ttl"), ttl) {
                    if !d.is_zero() {
                        self.warn(
                            site,
                            &cp.key("ttl"),
                            "generating the cookie (ttl) is not supported yet; requests \
                             without the cookie are balanced without affinity",
                        );
                    }
                }
            }
            keys.push(HashOn::Cookie { name: c.name.clone() });
        }
        if ch.use_source_ip == Some(true) {
            keys.push(HashOn::SourceIp);
        }
        let hash_on = match keys.len() {
            1 => keys.pop()?,
            0 => {
                self.error(
                    site,
                    p,
                    "consistentHash needs one of httpHeaderName, httpCookie or useSourceIp \
                     (httpQueryParameterName is not supported yet)",
                );
                return None;
            }
            _ => {
                self.error(
                    site,
                    p,
                    "consistentHash takes only one of httpHeaderName, httpCookie, useSourceIp",
                );
                return None;
            }
        };
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            self.error(site, p, "set either ringHash or maglev, not both");
            return None;
        }
        if let Some(m) = &ch.maglev {
            let size = match m.table_size {
                None | Some(0) => DEFAULT_MAGLEV_TABLE_SIZE,
                Some(n) => {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if n > 5_000_011 || !is_prime(n) {
                        self.error(
                            site,
                            &p.key("maglev").key("tableSize"),
                            format!("maglev tableSize must be a prime number up to 5000011, got {n}"),
                        );
                        return None;
                    }
                    n
                }
            };
            return Some(LbChoice::Maglev {
                hash_on,
                table_size: size,
            });
        }
        let (field, size) = match &ch.ring_hash {
            Some(r) => (p.key("ringHash").key("minimumRingSize"), r.minimum_ring_size),
            None => (p.key("minimumRingSize"), ch.minimum_ring_size),
        };
        let min_ring = match size {
            None | Some(0) => DEFAULT_MIN_RING_SIZE,
            Some(n) if n <= MAX_RING_SIZE as u64 => n as usize,
            Some(n) => {
                self.error(
                    site,
                    &field,
                    format!("minimumRingSize must be at most {MAX_RING_SIZE}, got {n}"),
                );
                return None;
            }
        };
        Some(LbChoice::RingHash { hash_on, min_ring })
    }

    // ---------------------------------------------------------------- clusters

    /// The cluster for (host, port, subset), building it on first use. `host` must be a
    /// registry host and `port` one of its ports; a subset must exist in the host's rule.
    fn cluster_for(&mut self, host: &str, port: u16, subset: Option<&str>) -> Option<ClusterId> {
        let key = (host.to_owned(), port, subset.map(str::to_owned));
        if let Some(id) = self.cluster_ids.get(&key) {
            return Some(*id);
        }
        let service = self.registry.resolve(host, "")?;
        let service_port = service.port(port)?.clone();
        let rule = self.rules.get(&service.host);
        let base = rule.map(|r| r.base.clone()).unwrap_or_default();
        let (policy, labels) = match subset {
            Some(name) => {
                let s = rule?.subsets.iter().find(|s| s.name == name)?;
                (base.overridden_by(&s.policy), Some(&s.labels))
            }
            None => (base, None),
        };
        let endpoints: Vec<Endpoint> = service
            .endpoints
            .iter()
            .filter(|e| labels.is_none_or(|want| want.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
            .map(|e| Endpoint {
                address: SocketAddr::new(e.address, service.endpoint_port(e, &service_port)),
                weight: e.weight.max(1),
                labels: e.labels.clone(),
            })
            .collect();
        let lb = match policy.lb.unwrap_or(LbChoice::LeastRequest) {
            LbChoice::RoundRobin => LbPolicy::RoundRobin,
            LbChoice::LeastRequest => LbPolicy::LeastRequest,
            LbChoice::Random => LbPolicy::Random,
            LbChoice::RingHash { hash_on, min_ring } => LbPolicy::RingHash {
                hash_on,
                table: RingHashTable::new(&endpoints, min_ring),
            },
            LbChoice::Maglev { hash_on, table_size } => LbPolicy::Maglev {
                hash_on,
                table: MaglevTable::new(&endpoints, table_size),
            },
        };
        let id = ClusterId(self.clusters.len() as u32);
        self.clusters.push(Cluster {
            name: format!("outbound|{port}|{}|{}", subset.unwrap_or(""), service.host),
            service: service.host.clone(),
            port,
            subset: subset.map(str::to_owned),
            endpoints,
            lb,
            connect_timeout: policy.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            pool: PoolSettings {
                idle_timeout: policy.idle_timeout.unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
                max_requests_per_connection: policy.max_requests_per_connection.flatten(),
                max_idle_per_endpoint: DEFAULT_MAX_IDLE_PER_ENDPOINT,
            },
        });
        self.cluster_ids.insert(key, id);
        Some(id)
    }

    /// Resolves a route destination to its cluster, reporting what is wrong with it.
    /// `port_field` names the port field under `p` (`port.number` for routes, `port` for
    /// listener destinations).
    fn destination_cluster(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        d: &Destination,
        port_field: &str,
    ) -> Option<ClusterId> {
        if d.host.is_empty() {
            self.error(site, &p.key("host"), "destination host is required");
            return None;
        }
        let Some(service) = self.registry.resolve(&d.host, &site.namespace) else {
            let also = if d.host.contains('.') {
                String::new()
            } else {
                format!(" (also tried {})", fqdn(&d.host, &site.namespace))
            };
            self.error(
                site,
                &p.key("host"),
                format!("destination host {:?} matches no ServiceEntry{also}", d.host),
            );
            return None;
        };
        let service = service.clone();
        let port_path = if port_field == "port" {
            p.key("port")
        } else {
            p.key("port").key("number")
        };
        let port = match &d.port {
            Some(sel) => {
                let n = self.port(site, &port_path, sel.number)?;
                if service.port(n).is_none() {
                    self.error(
                        site,
                        &port_path,
                        format!(
                            "port {n} is not a port of service {} (ports: {})",
                            service.host,
                            port_list(&service)
                        ),
                    );
                    return None;
                }
                n
            }
            None => match service.ports.as_slice() {
                [only] => only.number,
                [] => {
                    self.error(site, &p.key("host"), format!("service {} has no ports", service.host));
                    return None;
                }
                _ => {
                    self.error(
                        site,
                        p,
                        format!(
                            "service {} has several ports ({}); set destination {}",
                            service.host,
                            port_list(&service),
                            if port_field == "port" { "port" } else { "port.number" }
                        ),
                    );
                    return None;
                }
            },
        };
        if let Some(subset) = &d.subset {
            let rule = self.rules.get(&service.host);
            let defined = rule.is_some_and(|r| r.subsets.iter().any(|s| &s.name == subset));
            if !defined {
                let msg = match rule {
                    None => format!(
                        "subset {subset:?} is not defined: no DestinationRule for host {}",
                        service.host
                    ),
                    Some(r) => {
                        let names: Vec<&str> = r.subsets.iter().map(|s| s.name.as_str()).collect();
                        format!(
                            "subset {subset:?} is not defined in {} for host {} (subsets: {})",
                            r.label,
                            service.host,
                            if names.is_empty() {
                                "none".to_owned()
                            } else {
                                names.join(", ")
                            }
                        )
                    }
                };
                self.error(site, &p.key("subset"), msg);
                return None;
            }
        }
        self.cluster_for(&service.host, port, d.subset.as_deref())
    }

    /// Weighted clusters for a list of destinations at `p` (`...route`).
    fn weighted(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        dests: &[(&Destination, Option<i64>)],
    ) -> Option<WeightedClusters> {
        if dests.is_empty() {
            self.error(site, p, "at least one destination is required");
            return None;
        }
        let mut ids = Vec::new();
        let mut ok = true;
        let mut sum: i64 = 0;
        for (k, (d, w)) in dests.iter().enumerate() {
            let dp = p.index(k);
            let id = self.destination_cluster(site, &dp.key("destination"), d, "port.number");
            if let Some(w) = w {
                if !(0..=100).contains(w) {
                    self.error(
                        site,
                        &dp.key("weight"),
                        format!("weight must be between 0 and 100, got {w}"),
                    );
                    ok = false;
                }
            }
            sum += w.unwrap_or(0);
            match id {
                Some(id) => ids.push((id, w.unwrap_or(0))),
                None => ok = false,
            }
        }
        if dests.len() > 1 && sum != 100 {
            let last = dests.len() - 1;
            let field = if dests[last].1.is_some() {
                p.index(last).key("weight")
            } else {
                p.index(last)
            };
            self.error(site, &field, format!("weights must sum to 100, got {sum}"));
            ok = false;
        }
        if !ok {
            return None;
        }
        if let [(id, _)] = ids.as_slice() {
            return Some(WeightedClusters::single(*id));
        }
        let mut cumulative = 0u32;
        let mut entries = Vec::new();
        for (id, w) in ids {
            if w > 0 {
                cumulative += w as u32;
                entries.push((id, cumulative));
            }
        }
        Some(WeightedClusters { entries })
    }

    // ---------------------------------------------------------------- VirtualService

    fn virtual_service(
        &mut self,
        vs: &VirtualService,
        claimed: &mut HashMap<String, (String, String)>,
        used_domains: &mut HashSet<String>,
    ) -> Option<VirtualHost> {
        let site = Site::of_vs(vs);
        let spec = FieldPath::root().key("spec");
        if !applies_to_mesh(vs) {
            self.warn(
                &site,
                &spec.key("gateways"),
                format!(
                    "applies only to gateways ({}); ringmesh sidecars apply VirtualServices \
                     bound to `mesh`; skipped",
                    vs.spec.gateways.join(", ")
                ),
            );
            return None;
        }
        if vs.spec.hosts.is_empty() {
            self.error(&site, &spec.key("hosts"), "at least one host is required");
        }
        if vs.spec.http.is_empty() && vs.spec.tcp.is_empty() {
            self.error(&site, &spec, "a VirtualService needs http or tcp routes");
        }
        // TCP routes are validated here; listeners pick them up later.
        for i in 0..vs.spec.tcp.len() {
            let tp = spec.key("tcp").index(i);
            for (j, m) in vs.spec.tcp[i].matches.iter().enumerate() {
                if let Some(port) = m.port {
                    self.port(&site, &tp.key("match").index(j).key("port"), port);
                }
            }
            self.tcp_route_clusters(vs, i);
        }
        if vs.spec.http.is_empty() {
            return None;
        }
        let mut domains = Vec::new();
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            let hp = spec.key("hosts").index(i);
            let host_l = host.trim().to_ascii_lowercase();
            if host_l.is_empty() {
                self.error(&site, &hp, "host must not be empty");
                continue;
            }
            let canonical = match self.registry.resolve(&host_l, &site.namespace) {
                Some(s) => s.host.clone(),
                None if !host_l.contains('.') && host_l != "*" => fqdn(&host_l, &site.namespace),
                None => host_l.clone(),
            };
            let here = format!("{}{}", site.label, location(site.origin));
            if let Some((other, _)) = claimed.get(&canonical) {
                let msg = format!("host {canonical} is already claimed by {other}");
                self.error(&site, &hp, msg);
                continue;
            }
            claimed.insert(canonical.clone(), (here, site.label.clone()));
            for alias in host_aliases(&host_l, &site.namespace)
                .into_iter()
                .chain(std::iter::once(canonical))
            {
                if used_domains.insert(alias.clone()) {
                    domains.push(alias);
                }
            }
        }
        let vh_name = format!("{}/{}", site.namespace, vs.metadata.name);
        let mut routes = Vec::new();
        for (i, route) in vs.spec.http.iter().enumerate() {
            if let Some(r) = self.http_route(&site, &vh_name, i, route) {
                routes.push(r);
            }
        }
        Some(VirtualHost::new(vh_name, domains, routes))
    }

    fn default_virtual_host(&mut self, service: &Service, used_domains: &mut HashSet<String>) -> Option<VirtualHost> {
        let port = service.default_port()?.number;
        let id = self.cluster_for(&service.host, port, None)?;
        let domains: Vec<String> = host_aliases(&service.host, &service.namespace)
            .into_iter()
            .filter(|d| used_domains.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            return None;
        }
        let route = Route {
            name: format!("{}/default", service.host),
            matches: Vec::new(),
            action: RouteAction::Forward(ForwardAction {
                clusters: WeightedClusters::single(id),
                path_rewrite: None,
                host_rewrite: None,
                timeout: None,
                retry: default_retry_policy(),
            }),
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        };
        Some(VirtualHost::new(service.host.clone(), domains, vec![route]))
    }

    fn http_route(&mut self, site: &Site<'_>, vh_name: &str, i: usize, route: &HttpRoute) -> Option<Route> {
        let p = FieldPath::root().key("spec").key("http").index(i);
        let mut ok = true;
        let mut matches = Vec::new();
        for (j, m) in route.matches.iter().enumerate() {
            match self.route_match(site, &p.key("match").index(j), m) {
                Some(rm) => matches.push(rm),
                None => ok = false,
            }
        }

        let has_route = !route.route.is_empty();
        let actions: Vec<&str> = [
            (has_route, "route"),
            (route.redirect.is_some(), "redirect"),
            (route.direct_response.is_some(), "directResponse"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect();
        match actions.as_slice() {
            [] => {
                self.error(site, &p, "an http route needs one of route, redirect or directResponse");
                return None;
            }
            [_] => {}
            [a, b, ..] => {
                self.error(
                    site,
                    &p.key(b),
                    format!("{a} and {b} cannot both be set in one http route"),
                );
                return None;
            }
        }
        if route.rewrite.is_some() && !has_route {
            self.error(
                site,
                &p.key("rewrite"),
                "rewrite can only be used with route (not with redirect or directResponse)",
            );
            ok = false;
        }

        let (mut request_headers, mut response_headers) = match &route.headers {
            Some(h) => self.header_ops(site, &p.key("headers"), h),
            None => (HeaderOps::default(), HeaderOps::default()),
        };

        let action = if let Some(r) = &route.redirect {
            self.redirect(site, &p.key("redirect"), r).map(RouteAction::Redirect)
        } else if let Some(d) = &route.direct_response {
            self.direct_response(site, &p.key("directResponse"), d)
                .map(RouteAction::Direct)
        } else {
            let dests: Vec<(&Destination, Option<i64>)> =
                route.route.iter().map(|d| (&d.destination, d.weight)).collect();
            let clusters = self.weighted(site, &p.key("route"), &dests);
            // Destination-level header operations: the snapshot applies header operations per
            // route, so they are merged into the route's when there is one destination, or
            // when every destination declares the same ones; otherwise it is an error rather
            // than applying one destination's headers to another's traffic.
            let with_headers: Vec<(usize, &Headers)> = route
                .route
                .iter()
                .enumerate()
                .filter_map(|(k, d)| d.headers.as_ref().map(|h| (k, h)))
                .collect();
            if let Some((k0, h0)) = with_headers.first() {
                let all_same = with_headers.len() == route.route.len() && with_headers.iter().all(|(_, h)| *h == *h0);
                if route.route.len() == 1 || all_same {
                    let (req, resp) = self.header_ops(site, &p.key("route").index(*k0).key("headers"), h0);
                    merge_ops(&mut request_headers, req);
                    merge_ops(&mut response_headers, resp);
                } else {
                    let k = with_headers.iter().find(|(_, h)| *h != *h0).map_or(*k0, |(k, _)| *k);
                    self.error(
                        site,
                        &p.key("route").index(k).key("headers"),
                        "header operations differ between destinations; ringmesh applies \
                         header operations per route, so give every destination the same ones \
                         or move them to the route's headers",
                    );
                    ok = false;
                }
            }
            let path_rewrite = route
                .rewrite
                .as_ref()
                .and_then(|r| r.uri.clone())
                .map(|replacement| PathRewrite { replacement });
            let host_rewrite = route.rewrite.as_ref().and_then(|r| r.authority.clone());
            if let Some(r) = &route.rewrite {
                if r.uri.is_none() && r.authority.is_none() {
                    self.error(site, &p.key("rewrite"), "rewrite needs uri or authority");
                    ok = false;
                }
            }
            let timeout = match &route.timeout {
                Some(t) => match self.duration(site, &p.key("timeout"), t) {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => {
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            let retry = self.retry_policy(site, &p.key("retries"), route.retries.as_ref());
            match (clusters, retry) {
                (Some(clusters), Some(retry)) => Some(RouteAction::Forward(ForwardAction {
                    clusters,
                    path_rewrite,
                    host_rewrite,
                    timeout,
                    retry,
                })),
                _ => None,
            }
        };
        let action = action?;
        if !ok {
            return None;
        }
        Some(Route {
            name: route.name.clone().unwrap_or_else(|| format!("{vh_name}/{i}")),
            matches,
            action,
            request_headers: std::mem::take(&mut request_headers),
            response_headers: std::mem::take(&mut response_headers),
        })
    }

    fn route_match(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        m: &crate::resources::HttpMatchRequest,
    ) -> Option<RouteMatch> {
        let mut ok = true;
        let path = match &m.uri {
            Some(uri) => {
                let up = p.key("uri");
                match self.string_match(site, &up, uri, false, m.ignore_uri_case) {
                    Some(Some(matcher)) => Some(PathMatch::new(matcher, m.ignore_uri_case)),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            None => None,
        };
        let method = match &m.method {
            Some(s) => match self.string_match(site, &p.key("method"), s, false, false) {
                Some(Some(matcher)) => Some(matcher),
                _ => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let mut headers = Vec::new();
        if let Some(a) = &m.authority {
            match self.string_match(site, &p.key("authority"), a, false, false) {
                Some(value) => headers.push(HeaderMatch {
                    name: "host".into(),
                    value,
                    invert: false,
                }),
                None => ok = false,
            }
        }
        for (field, map, invert) in [
            ("headers", &m.headers, false),
            ("withoutHeaders", &m.without_headers, true),
        ] {
            for (name, spec) in map {
                let hp = p.key(field).key(name);
                if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
                    self.error(site, &hp, format!("{name:?} is not a valid header name"));
                    ok = false;
                    continue;
                }
                match self.string_match(site, &hp, spec, true, false) {
                    Some(value) => headers.push(HeaderMatch {
                        name: name.to_ascii_lowercase(),
                        value,
                        invert,
                    }),
                    None => ok = false,
                }
            }
        }
        let mut query = Vec::new();
        for (name, spec) in &m.query_params {
            match self.string_match(site, &p.key("queryParams").key(name), spec, true, false) {
                Some(value) => query.push(QueryMatch {
                    name: name.clone(),
                    value,
                }),
                None => ok = false,
            }
        }
        ok.then_some(RouteMatch {
            path,
            method,
            headers,
            query,
        })
    }

    /// Compiles a `StringMatch`. `Some(None)` is an empty match ("present"), allowed only when
    /// `allow_empty`; `None` means an error was reported.
    fn string_match(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        s: &StringMatchSpec,
        allow_empty: bool,
        ignore_case: bool,
    ) -> Option<Option<StringMatch>> {
        let set: Vec<&str> = [
            (s.exact.is_some(), "exact"),
            (s.prefix.is_some(), "prefix"),
            (s.regex.is_some(), "regex"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if set.len() > 1 {
            self.error(
                site,
                p,
                format!("set only one of exact, prefix or regex (found {})", set.join(", ")),
            );
            return None;
        }
        if let Some(e) = &s.exact {
            return Some(Some(StringMatch::Exact(e.clone())));
        }
        if let Some(pre) = &s.prefix {
            return Some(Some(StringMatch::Prefix(pre.clone())));
        }
        if let Some(r) = &s.regex {
            return match AnchoredRegex::new(r, ignore_case) {
                Ok(re) => Some(Some(StringMatch::Regex(re))),
                Err(e) => {
                    let detail = e.to_string().replace('\n', " ");
                    self.error(site, &p.key("regex"), format!("invalid regex {r:?}: {detail}"));
                    None
                }
            };
        }
        if allow_empty {
            Some(None)
        } else {
            self.error(site, p, "set one of exact, prefix or regex");
            None
        }
    }

    fn header_ops(&mut self, site: &Site<'_>, p: &FieldPath, h: &Headers) -> (HeaderOps, HeaderOps) {
        let mut convert = |field: &str, ops: &Option<HeaderOperations>| {
            let mut out = HeaderOps::default();
            let Some(ops) = ops else { return out };
            let op = p.key(field);
            for (kind, map, list) in [("set", &ops.set, &mut out.set), ("add", &ops.add, &mut out.add)] {
                for (name, value) in map {
                    if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
                        self.error(
                            site,
                            &op.key(kind).key(name),
                            format!("{name:?} is not a valid header name"),
                        );
                        continue;
                    }
                    list.push((name.to_ascii_lowercase(), value.clone()));
                }
            }
            out.remove = ops.remove.iter().map(|n| n.to_ascii_lowercase()).collect();
            out
        };
        let req = convert("request", &h.request);
        let resp = convert("response", &h.response);
        (req, resp)
    }

    fn redirect(&mut self, site: &Site<'_>, p: &FieldPath, r: &crate::resources::HttpRedirect) -> Option<Redirect> {
        let status = match r.redirect_code {
            None => 301,
            Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
            Some(c) => {
                self.error(
                    site,
                    &p.key("redirectCode"),
                    format!("redirectCode must be one of 301, 302, 303, 307, 308, got {c}"),
                );
                return None;
            }
        };
        let port = match r.port {
            Some(n) => Some(self.port(site, &p.key("port"), n)?),
            None => None,
        };
        let scheme = match &r.scheme {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
                Some(s.to_ascii_lowercase())
            }
            Some(s) => {
                self.error(
                    site,
                    &p.key("scheme"),
                    format!("scheme must be http or https, got {s:?}"),
                );
                return None;
            }
            None => None,
        };
        Some(Redirect {
            status,
            scheme,
            authority: r.authority.clone(),
            port,
            path: r.uri.clone(),
        })
    }

    fn direct_response(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        d: &crate::resources::HttpDirectResponse,
    ) -> Option<DirectResponse> {
        let status = match d.status {
            None => {
                self.error(site, p, "directResponse.status is required");
                return None;
            }
            Some(s @ 200..=599) => s as u16,
            Some(s) => {
                self.error(
                    site,
                    &p.key("status"),
                    format!("status must be between 200 and 599, got {s}"),
                );
                return None;
            }
        };
        let body = match &d.body {
            None => String::new(),
            Some(b) => match (&b.string, &b.bytes) {
                (Some(_), Some(_)) => {
                    self.error(site, &p.key("body"), "set either string or bytes, not both");
                    return None;
                }
                (Some(s), None) => s.clone(),
                (None, Some(encoded)) => match decode_base64(encoded).and_then(|v| String::from_utf8(v).ok()) {
                    Some(s) => s,
                    None => {
                        self.error(
                            site,
                            &p.key("body").key("bytes"),
                            "bytes must be base64 of UTF-8 text (binary bodies are not \
                                 supported yet)",
                        );
                        return None;
                    }
                },
                (None, None) => String::new(),
            },
        };
        Some(DirectResponse { status, body })
    }

    fn retry_policy(&mut self, site: &Site<'_>, p: &FieldPath, r: Option<&HttpRetry>) -> Option<RetryPolicy> {
        let mut policy = default_retry_policy();
        let Some(r) = r else { return Some(policy) };
        let mut ok = true;
        match r.attempts {
            None => {}
            Some(n) => match u32::try_from(n) {
                Ok(n) => policy.attempts = n,
                Err(_) => {
                    self.error(
                        site,
                        &p.key("attempts"),
                        format!("attempts must not be negative, got {n}"),
                    );
                    ok = false;
                }
            },
        }
        if let Some(t) = &r.per_try_timeout {
            match self.duration(site, &p.key("perTryTimeout"), t) {
                Some(d) => policy.per_try_timeout = (!d.is_zero()).then_some(d),
                None => ok = false,
            }
        }
        if let Some(on) = &r.retry_on {
            let rp = p.key("retryOn");
            policy.on_connect_failure = false;
            policy.on_reset = false;
            policy.on_5xx = false;
            policy.on_gateway_error = false;
            policy.retriable_status_codes.clear();
            for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                match token {
                    "5xx" => policy.on_5xx = true,
                    "gateway-error" => policy.on_gateway_error = true,
                    "reset" | "refused-stream" | "reset-before-request" => policy.on_reset = true,
                    "connect-failure" => policy.on_connect_failure = true,
                    // Envoy's retriable-4xx is exactly 409 Conflict.
                    "retriable-4xx" => policy.retriable_status_codes.push(409),
                    // The listed status numbers are the retriable status codes.
                    "retriable-status-codes" => {}
                    "cancelled"
                    | "deadline-exceeded"
                    | "internal"
                    | "resource-exhausted"
                    | "unavailable"
                    | "envoy-ratelimited"
                    | "retriable-headers"
                    | "http3-post-connect-failure" => {
                        self.warn(site, &rp, format!("retryOn {token:?} is not supported yet; ignored"));
                    }
                    t if t.bytes().all(|b| b.is_ascii_digit()) => match t.parse::<u16>() {
                        Ok(code @ 100..=599) => policy.retriable_status_codes.push(code),
                        _ => {
                            self.error(site, &rp, format!("retryOn status {t} is not an HTTP status (100-599)"));
                            ok = false;
                        }
                    },
                    t => {
                        let hint = did_you_mean(t, RETRY_ON.iter().copied())
                            .map(|s| format!("; did you mean {s:?}?"))
                            .unwrap_or_else(|| format!("; expected {}", RETRY_ON.join(", ")));
                        self.error(site, &rp, format!("unknown retryOn value {t:?}{hint}"));
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(policy)
    }
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
];

/// Istio's default when a route has no `retries`: 2 attempts on connect failure, refused stream
/// and 503, with Envoy's 25 ms base / 250 ms max back-off.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        on_connect_failure: true,
        on_reset: true,
        on_5xx: false,
        on_gateway_error: false,
        retriable_status_codes: vec![503],
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(250),
    }
}

fn applies_to_mesh(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

fn port_list(service: &Service) -> String {
    let ports: Vec<String> = service.ports.iter().map(|p| p.number.to_string()).collect();
    ports.join(", ")
}

/// Appends `more` to `ops`; a `set` of the same name in `more` replaces the earlier one.
fn merge_ops(ops: &mut HeaderOps, more: HeaderOps) {
    for (name, value) in more.set {
        ops.set.retain(|(n, _)| *n != name);
        ops.set.push((name, value));
    }
    ops.add.extend(more.add);
    for name in more.remove {
        if !ops.remove.contains(&name) {
            ops.remove.push(name);
        }
    }
}

/// Standard base64 (with or without padding), as protobuf JSON writes `bytes`.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

mod security;
#[cfg(test)]
mod tests;
