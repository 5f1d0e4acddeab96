//! The one compiler: resources in, an immutable [`Snapshot`] out, with every error at once.
//!
//! The proxy (standalone), the control plane and `ringmesh analyze` all call [`compile`] (or
//! [`compile_files`]), so a config that compiles in one place compiles in all three. One module
//! per resource or phase; [`compile`] below is the order of work:
//!
//! 1. each resource on its own: duplicates (same kind, namespace and name), `WorkloadEntry`
//!    addresses ([`workload_entry`]), the security kinds' checks ([`security`]), `Telemetry`'s
//!    ([`istio_telemetry`]);
//! 2. the single `ProxyConfig` into process settings ([`proxy_config`]) and telemetry
//!    ([`telemetry`]), with the `Telemetry`s that apply to its workload over it
//!    ([`istio_telemetry`], levels as [`selection`] picks them);
//! 3. the [`ServiceRegistry`] from ServiceEntries plus [`CompileInput::extra_endpoints`]
//!    ([`service_entry`]);
//! 4. DestinationRules into per-host policies and subsets ([`destination_rule`]);
//! 5. one cluster per (host, port), plus one per (host, port, subset) that a route names
//!    ([`clusters`]);
//! 6. VirtualServices into virtual hosts, one each ([`virtual_service`], with
//!    [`route_match`] and [`route_actions`]), then a default virtual host for every service
//!    host that no VirtualService claims;
//! 7. listeners, TCP ones resolved to clusters ([`listeners`]);
//! 8. the security settings for this proxy's workload: the `AuthorizationPolicy`s and
//!    `PeerAuthentication`s that select it, and the path normalization ([`security`]).
//!
//! A route destination whose host no ServiceEntry defines is a warning, as `istioctl analyze`
//! makes it (IST0101), not an error: Istio accepts such a VirtualService, and a control plane
//! must take a VirtualService applied before its ServiceEntry. The destination becomes a
//! cluster without endpoints marked [`Cluster::host_not_found`](crate::snapshot::Cluster), which
//! the proxy answers with 503 naming the host until a config that defines it compiles.
//!
//! Problems are collected as [`Diagnostic`]s with the file, line, resource and field path; the
//! snapshot is returned only when there is no error.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::diagnostic::Diagnostic;
use crate::duration::parse_duration;
use crate::locate::FieldPath;
use crate::registry::{ExtraEndpoint, ServiceRegistry};
use crate::resources::{Origin, ProxyConfig, Resource, ResourceMeta};
use crate::snapshot::{ClusterId, RouteTable, Snapshot};

mod capture;
mod clusters;
mod destination_rule;
mod health;
mod istio_telemetry;
mod listeners;
mod locality;
pub use locality::{REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL};
mod proxy_config;
mod rate_limit;
mod route_actions;
mod route_match;
mod security;
mod selection;
mod service_entry;
mod telemetry;
mod tracing;
mod virtual_service;
mod workload_entry;

pub use route_actions::default_retry_policy;

#[cfg(test)]
use route_actions::decode_base64;

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
    /// Warnings (unsupported fields, ignored resources, settings accepted but not enforced,
    /// hosts referenced but not defined yet).
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
    let kinds = ByKind::of(&input.resources);

    // 1. Each resource on its own, in file order.
    c.check_duplicates(&input.resources);
    for r in &input.resources {
        match r {
            Resource::WorkloadEntry(w) => c.workload_entry(w),
            Resource::AuthorizationPolicy(a) => c.authorization_policy(a),
            Resource::PeerAuthentication(p) => c.peer_authentication(p),
            Resource::Telemetry(t) => c.istio_telemetry(t),
            _ => {}
        }
    }
    // 2. The proxy's own settings.
    let proxy_config = c.single_proxy_config(&kinds.proxy_configs);
    let proxy = c.proxy_settings(proxy_config);
    c.locality = locality::Locality::of_labels(&proxy.workload.labels);
    c.proxy_labels = proxy.workload.labels.clone();
    let mut telemetry = c.telemetry(proxy_config);
    c.apply_telemetries(&mut telemetry, &kinds.telemetries, &proxy.workload);
    telemetry.tracing.fill_identity(&proxy);
    // 3. Services and their endpoints.
    for se in &kinds.service_entries {
        c.service_entry(se);
    }
    c.extra_endpoints(&input.extra_endpoints);
    // 4. Policies per host.
    for dr in &kinds.destination_rules {
        c.destination_rule(dr);
    }
    // 5. A cluster per service port.
    c.service_clusters();
    // 6. HTTP routing.
    let mut virtual_hosts = c.virtual_hosts(&kinds.virtual_services);
    let capture = c.capture_tables(proxy_config, &proxy, &mut virtual_hosts, &kinds.virtual_services);
    // 7. Listeners.
    let listeners = c.listeners(proxy_config, &proxy, &kinds.virtual_services);
    // Auto mTLS needs a workload certificate: a proxy with neither a control plane (whose CA
    // certifies it) nor certificate files has no identity to prove, so it reaches other
    // proxies' endpoints in plaintext, as before mTLS existed (an explicit `ISTIO_MUTUAL`
    // still asks for mTLS, and fails without a certificate).
    if proxy.control_plane.is_none() && proxy.identity.files.is_none() {
        for cluster in &mut c.clusters {
            if matches!(cluster.tls, crate::snapshot::UpstreamTls::Auto) {
                cluster.tls = crate::snapshot::UpstreamTls::Disable;
            }
        }
    }
    // 8. Security for the workload next to this proxy.
    let security = c.security(
        &kinds.authorization_policies,
        &kinds.peer_authentications,
        proxy_config,
        &proxy.workload,
        &listeners,
    );

    let snapshot = Snapshot {
        version: input.version,
        proxy,
        listeners,
        routes: RouteTable::new(virtual_hosts),
        clusters: c.clusters,
        security,
        capture,
        telemetry,
    };
    // A tcp route is checked with its VirtualService and again by the listener that uses it:
    // each finding is reported once.
    let mut seen = HashSet::new();
    let diags = c.diags.into_iter().filter(|d| seen.insert(d.clone()));
    let (errors, warnings): (Vec<_>, Vec<_>) = diags.partition(Diagnostic::is_error);
    if errors.is_empty() {
        Ok(Compiled { snapshot, warnings })
    } else {
        Err(errors)
    }
}

/// The resources that later phases take as a group, in file order.
#[derive(Default)]
struct ByKind<'a> {
    proxy_configs: Vec<&'a ProxyConfig>,
    service_entries: Vec<&'a crate::resources::ServiceEntry>,
    destination_rules: Vec<&'a crate::resources::DestinationRule>,
    virtual_services: Vec<&'a crate::resources::VirtualService>,
    authorization_policies: Vec<&'a crate::resources::AuthorizationPolicy>,
    peer_authentications: Vec<&'a crate::resources::PeerAuthentication>,
    telemetries: Vec<&'a crate::resources::Telemetry>,
}

impl<'a> ByKind<'a> {
    fn of(resources: &'a [Resource]) -> Self {
        let mut kinds = ByKind::default();
        for r in resources {
            match r {
                Resource::ProxyConfig(p) => kinds.proxy_configs.push(p),
                Resource::ServiceEntry(s) => kinds.service_entries.push(s),
                Resource::DestinationRule(d) => kinds.destination_rules.push(d),
                Resource::VirtualService(v) => kinds.virtual_services.push(v),
                Resource::AuthorizationPolicy(a) => kinds.authorization_policies.push(a),
                Resource::PeerAuthentication(p) => kinds.peer_authentications.push(p),
                Resource::Telemetry(t) => kinds.telemetries.push(t),
                Resource::WorkloadEntry(_) => {}
            }
        }
        kinds
    }
}

/// The resource a diagnostic is about: any kind, through its metadata.
type Site<'a> = dyn ResourceMeta + 'a;

/// The compiler's state between phases: what was found so far and what later phases look up.
#[derive(Default)]
struct Compiler {
    diags: Vec<Diagnostic>,
    registry: ServiceRegistry,
    /// Valid `WorkloadEntry`s, for ServiceEntries that select them by labels.
    workload_entries: Vec<workload_entry::SelectableWorkload>,
    /// DestinationRules by the registry host they apply to.
    rules: HashMap<String, destination_rule::RuleInfo>,
    clusters: Vec<crate::snapshot::Cluster>,
    cluster_ids: HashMap<(String, u16, Option<String>), ClusterId>,
    /// Local rate limits given an id so far (the next one's id).
    rate_limits: u32,
    /// Where this proxy's workload runs, for locality-aware balancing.
    locality: Option<locality::Locality>,
    /// This proxy's workload labels (its locality's topology labels among them), which
    /// `failoverPriority` compares endpoints' labels with.
    proxy_labels: std::collections::BTreeMap<String, String>,
}

impl Compiler {
    fn error(&mut self, site: &Site<'_>, path: &FieldPath, message: impl Into<String>) {
        self.push(Diagnostic::error(message), site, path);
    }

    fn warn(&mut self, site: &Site<'_>, path: &FieldPath, message: impl Into<String>) {
        self.push(Diagnostic::warning(message), site, path);
    }

    fn push(&mut self, d: Diagnostic, site: &Site<'_>, path: &FieldPath) {
        let (file, line) = match site.origin() {
            Some(o) => (o.file.as_deref(), o.line_of(path)),
            None => (None, None),
        };
        self.diags
            .push(d.at(file, line).in_resource(site.label()).on_field(path.to_string()));
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
        let mut seen: HashMap<(&'static str, &str, &str), Option<&Origin>> = HashMap::new();
        for r in resources {
            let key = (r.kind(), r.namespace(), r.metadata().name.as_str());
            if let Some(first) = seen.get(&key) {
                let first = first.map(|o| format!(" at {}", o.position()));
                let msg = format!(
                    "duplicate {}; the first is defined{}",
                    r.label(),
                    first.unwrap_or_default()
                );
                self.error(r, &FieldPath::root().key("metadata").key("name"), msg);
            } else {
                seen.insert(key, r.origin());
            }
        }
    }
}

#[cfg(test)]
mod tests;
