//! Loading the proxy's config: the YAML files, through the one compiler in `ringmesh-api`, with
//! command-line and `RINGMESH_*` overrides applied on top.
//!
//! Runs on the control thread at start-up and on every reload. A file set that fails to compile
//! is reported with every error at once (file, line, resource, field) and never replaces the
//! running snapshot.

use std::net::SocketAddr;
use std::path::PathBuf;

use ringmesh_api::snapshot::{IoMode, ListenerKind, Snapshot};

/// Settings given on the command line or in the environment; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--workers` / `RINGMESH_WORKERS`.
    pub workers: Option<usize>,
    /// `--cpus` / `RINGMESH_CPUS`.
    pub cpus: Option<Vec<usize>>,
    /// `--io` / `RINGMESH_IO`.
    pub io: Option<IoMode>,
    /// `--admin-address` / `RINGMESH_ADMIN_ADDRESS`.
    pub admin_address: Option<SocketAddr>,
    /// `--health-address` / `RINGMESH_HEALTH_ADDRESS`.
    pub health_address: Option<SocketAddr>,
    /// `--metrics-address` / `RINGMESH_METRICS_ADDRESS`.
    pub metrics_address: Option<SocketAddr>,
    /// `--max-request-head-bytes` / `RINGMESH_MAX_REQUEST_HEAD_BYTES`.
    pub max_request_head_bytes: Option<usize>,
    /// `--max-headers` / `RINGMESH_MAX_HEADERS`.
    pub max_headers: Option<usize>,
    /// `--request-header-timeout` / `RINGMESH_REQUEST_HEADER_TIMEOUT`.
    pub request_header_timeout: Option<std::time::Duration>,
    /// `--idle-timeout` / `RINGMESH_IDLE_TIMEOUT`.
    pub idle_timeout: Option<std::time::Duration>,
    /// `--drain-timeout` / `RINGMESH_DRAIN_TIMEOUT`.
    pub drain_timeout: Option<std::time::Duration>,
    /// `--request-body-timeout` / `RINGMESH_REQUEST_BODY_TIMEOUT`.
    pub request_body_timeout: Option<std::time::Duration>,
    /// `--max-connections` / `RINGMESH_MAX_CONNECTIONS`.
    pub max_connections: Option<usize>,
    /// `--protocol-detection-timeout` / `RINGMESH_PROTOCOL_DETECTION_TIMEOUT`.
    pub protocol_detection_timeout: Option<std::time::Duration>,
    /// `--node-id` / `RINGMESH_NODE_ID`: the node id announced to the control plane (in a pod:
    /// its name and namespace, which the file, shared by every replica, cannot say).
    pub node_id: Option<String>,
    /// `--workload-address` / `RINGMESH_WORKLOAD_ADDRESS`: the workload's addresses (in a pod:
    /// `status.podIPs`, known only once it is scheduled).
    pub workload_addresses: Option<Vec<std::net::IpAddr>>,
}

impl Overrides {
    /// Applies these overrides to a compiled snapshot.
    pub fn apply(&self, snapshot: &mut Snapshot) {
        let p = &mut snapshot.proxy;
        if let Some(w) = self.workers {
            p.workers = Some(w);
        }
        if let Some(c) = &self.cpus {
            p.cpus = c.clone();
        }
        if let Some(io) = self.io {
            p.io = io;
        }
        if let Some(a) = self.admin_address {
            p.admin_address = a;
        }
        if let Some(a) = self.health_address {
            p.health_address = a;
        }
        if let Some(a) = self.metrics_address {
            p.metrics_address = a;
        }
        if let (Some(id), Some(cp)) = (&self.node_id, &mut p.control_plane) {
            cp.node_id = id.clone();
        }
        if let Some(a) = &self.workload_addresses {
            p.workload.addresses = a.clone();
        }
        let l = &mut p.limits;
        if let Some(v) = self.max_request_head_bytes {
            l.max_request_head_bytes = v;
        }
        if let Some(v) = self.max_headers {
            l.max_headers = v;
        }
        if let Some(v) = self.request_header_timeout {
            l.request_header_timeout = v;
        }
        if let Some(v) = self.idle_timeout {
            l.downstream_idle_timeout = v;
        }
        if let Some(v) = self.drain_timeout {
            l.drain_timeout = v;
        }
        if let Some(v) = self.request_body_timeout {
            l.request_body_timeout = v;
        }
        if let Some(v) = self.max_connections {
            l.max_connections = Some(v);
        }
        if let Some(v) = self.protocol_detection_timeout {
            l.protocol_detection_timeout = v;
            for listener in &mut snapshot.listeners {
                if let ListenerKind::Detect { timeout, .. } = &mut listener.kind {
                    *timeout = v;
                }
            }
        }
        snapshot.telemetry.tracing.fill_identity(&snapshot.proxy);
    }
}

/// A config file set that did not compile. Its `Display` lists every diagnostic, one a line.
#[derive(Debug, thiserror::Error)]
#[error("config rejected ({} error(s)):\n{}", .0.len(), .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// A compiled config and the warnings the compiler gave for it.
#[derive(Debug)]
pub struct Loaded {
    /// The snapshot, overrides applied.
    pub snapshot: Snapshot,
    /// Warnings (unsupported fields or kinds), formatted with file and line.
    pub warnings: Vec<String>,
}

/// Resources and endpoints received from the control plane, compiled together with the files.
#[derive(Debug, Clone, Default)]
pub struct ControlInput {
    /// YAML documents with their `file:line` sources on the control plane.
    pub documents: Vec<ringmesh_api::proto::Document>,
    /// Endpoints announced by workloads.
    pub endpoints: Vec<ringmesh_api::proto::Endpoint>,
}

/// Reads and compiles `paths` (files or directories) into a snapshot with this version.
pub fn load(paths: &[PathBuf], version: u64, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    load_with(paths, None, version, overrides)
}

/// Like [`load`], adding what the control plane sent. Everything goes through the same loader
/// and compiler; documents keep their `file:line` on the control plane in error messages.
pub fn load_with(
    paths: &[PathBuf],
    control: Option<&ControlInput>,
    version: u64,
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let (mut resources, mut warnings) = ringmesh_api::load_files(paths).map_err(diags)?;
    let mut extra_endpoints = Vec::new();
    let mut errors = Vec::new();
    if let Some(c) = control {
        for d in &c.documents {
            // Pad with blank lines so that line numbers are the file's on the control plane.
            let (file, line) = d.source.rsplit_once(':').unwrap_or((d.source.as_str(), "1"));
            let pad = line.parse::<usize>().unwrap_or(1).saturating_sub(1);
            let text = format!("{}{}", "\n".repeat(pad), d.yaml);
            match ringmesh_api::load_str(file, &text) {
                Ok((mut r, mut w)) => {
                    resources.append(&mut r);
                    warnings.append(&mut w);
                }
                Err(d) => errors.extend(d),
            }
        }
        for e in &c.endpoints {
            match ringmesh_api::registry::ExtraEndpoint::try_from(e) {
                Ok(x) => extra_endpoints.push(x),
                Err(err) => errors.push(ringmesh_api::Diagnostic::error(err.to_string())),
            }
        }
    }
    if !errors.is_empty() {
        return Err(diags(errors));
    }
    // The workload's addresses decide what the compiler makes of it (the app's ports under
    // capture: the services whose endpoints are these addresses), so they go in before.
    if let Some(addresses) = &overrides.workload_addresses {
        for r in &mut resources {
            if let ringmesh_api::resources::Resource::ProxyConfig(pc) = r {
                if let Some(w) = pc.spec.workload.as_mut() {
                    w.addresses = addresses.iter().map(ToString::to_string).collect();
                }
            }
        }
    }
    let compiled = ringmesh_api::compile(&ringmesh_api::CompileInput {
        resources,
        extra_endpoints,
        version,
    })
    .map_err(diags)?;
    let mut snapshot = compiled.snapshot;
    overrides.apply(&mut snapshot);
    warnings.extend(compiled.warnings);
    Ok(Loaded {
        snapshot,
        warnings: warnings.iter().map(|d| d.to_string()).collect(),
    })
}

fn diags(d: Vec<ringmesh_api::Diagnostic>) -> ConfigError {
    ConfigError(d.iter().map(|d| d.to_string()).collect())
}

/// A fingerprint of the files' contents, to notice edits by polling. Contents rather than
/// modification times: file timestamps tick only every few milliseconds, so two quick edits of
/// equal size would look the same. Polling (once a second by default) also sees the symlink swap
/// Kubernetes uses for mounted ConfigMaps, which inotify on the file itself would miss. Config
/// files are small; reading them once a second costs nothing measurable.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<u64>)> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            let hash = std::fs::read(&f).ok().map(|b| ringmesh_api::hash_table::hash_bytes(&b));
            (f, hash)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringmesh_api::snapshot::ListenerKind;

    use super::Overrides;

    #[test]
    fn the_detection_timeout_override_reaches_every_detecting_listener() {
        let yaml = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  listeners:\n  - {name: auto, address: 127.0.0.1:0, protocol: AUTO, destination: {host: db.test}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db.test]\n  ports: [{number: 5432, name: db}]\n  endpoints: [{address: 127.0.0.1}]\n";
        let (resources, _) = ringmesh_api::load_str("p.yaml", yaml).expect("loads");
        let mut snapshot = ringmesh_api::compile(&ringmesh_api::CompileInput {
            resources,
            ..Default::default()
        })
        .expect("compiles")
        .snapshot;
        Overrides {
            protocol_detection_timeout: Some(Duration::from_millis(7)),
            ..Default::default()
        }
        .apply(&mut snapshot);
        assert_eq!(
            snapshot.proxy.limits.protocol_detection_timeout,
            Duration::from_millis(7)
        );
        match &snapshot.listeners[0].kind {
            ListenerKind::Detect { timeout, .. } => assert_eq!(*timeout, Duration::from_millis(7)),
            other => panic!("{other:?}"),
        }
    }

    /// A pod's address comes by the environment, but it decides what the compiler makes of the
    /// workload: under capture, the ports of the services whose endpoint it is are the app's.
    #[test]
    fn the_workload_address_override_is_compiled_with() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let yaml = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  capture: {ipv6: false}\n  workload: {name: web, namespace: shop}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web, namespace: shop}\nspec:\n  hosts: [web]\n  ports: [{number: 80, name: grpc, targetPort: 8080}]\n  endpoints: [{address: 10.1.0.7}]\n";
        std::fs::write(&file, yaml).unwrap();
        let without = super::load(std::slice::from_ref(&file), 1, &Overrides::default()).unwrap();
        assert!(without.snapshot.capture.app_ports.is_empty());
        let overrides = Overrides {
            workload_addresses: Some(vec!["10.1.0.7".parse().unwrap()]),
            ..Default::default()
        };
        let with = super::load(&[file], 1, &overrides).unwrap();
        assert_eq!(
            with.snapshot.capture.app_ports.keys().copied().collect::<Vec<_>>(),
            [8080]
        );
        assert_eq!(
            with.snapshot.proxy.workload.addresses,
            ["10.1.0.7".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
