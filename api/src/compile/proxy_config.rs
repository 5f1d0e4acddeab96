//! `ProxyConfig`: the proxy's process settings (workers, addresses, limits, retry budget, the
//! workload it announces, the control plane it subscribes to). Only one may be in force: a
//! proxy has one set of settings; the defaults stand in when there is none. Listeners are
//! compiled last, by [`super::listeners`], because TCP listeners need the clusters.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources::{ProxyConfig, ResourceMeta};
use crate::snapshot::{
    ControlPlaneSettings, ControlPlaneTls, IdentityFiles, IdentitySettings, IoMode, Limits, ProxySettings, RetryBudget,
    WorkloadSettings, DEFAULT_CERT_LIFETIME, DEFAULT_MAX_BUFFER_BYTES, DEFAULT_PROTOCOL_DETECTION_TIMEOUT,
    DEFAULT_REQUEST_BODY_TIMEOUT, DEFAULT_TRUST_DOMAIN,
};

/// Smallest `limits.maxBufferBytes`: a few full read buffers.
const MIN_BUFFER_BYTES: usize = 64 * 1024;

impl Compiler {
    /// The `ProxyConfig` in force: the first; every further one is an error naming the first.
    pub(super) fn single_proxy_config<'a>(&mut self, configs: &[&'a ProxyConfig]) -> Option<&'a ProxyConfig> {
        let first = configs.first().copied()?;
        for extra in configs.iter().skip(1) {
            self.error(
                *extra,
                &FieldPath::root(),
                format!(
                    "only one ProxyConfig is allowed; another is defined{}",
                    first.location()
                ),
            );
        }
        Some(first)
    }

    // ---------------------------------------------------------------- ProxyConfig

    pub(super) fn proxy_settings(&mut self, pc: Option<&ProxyConfig>) -> ProxySettings {
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
                request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
                max_connections: None,
                max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
                drain_timeout: Duration::from_secs(5),
                protocol_detection_timeout: DEFAULT_PROTOCOL_DETECTION_TIMEOUT,
            },
            retry_budget: None,
            control_plane: None,
            workload: WorkloadSettings {
                namespace: "default".into(),
                service_account: "default".into(),
                ..Default::default()
            },
            identity: IdentitySettings {
                cert_lifetime: DEFAULT_CERT_LIFETIME,
                trust_domain: DEFAULT_TRUST_DOMAIN.into(),
                files: None,
            },
        };
        let Some(pc) = pc else { return settings };
        let site: &Site<'_> = pc;
        let spec = &pc.spec;
        let root = FieldPath::root().key("spec");
        if let Some(w) = spec.workers {
            match usize::try_from(w) {
                Ok(n) if n >= 1 => settings.workers = Some(n),
                _ => self.error(
                    site,
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
                    Err(_) => self.error(site, &root.key(field), format!("{text:?} is not an ip:port address")),
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
                        _ => self.error(site, &p.key(field), format!("{field} must be at least 1, got {v}")),
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
                (
                    "requestBodyTimeout",
                    &l.request_body_timeout,
                    limits.request_body_timeout,
                ),
            ];
            for (field, text, slot) in timeouts.iter_mut() {
                if let Some(text) = text {
                    if let Some(d) = self.duration(site, &p.key(field), text) {
                        *slot = d;
                    }
                }
            }
            settings.limits.request_header_timeout = timeouts[0].2;
            settings.limits.downstream_idle_timeout = timeouts[1].2;
            settings.limits.drain_timeout = timeouts[2].2;
            settings.limits.request_body_timeout = timeouts[3].2;
            if l.request_body_timeout.is_some() && timeouts[3].2.is_zero() {
                // Zero would cut every body that does not arrive with its head.
                self.error(
                    site,
                    &p.key("requestBodyTimeout"),
                    "requestBodyTimeout must be positive",
                );
            }
            if let Some(v) = l.max_connections {
                match usize::try_from(v) {
                    Ok(n) if n >= 1 => settings.limits.max_connections = Some(n),
                    _ => self.error(
                        site,
                        &p.key("maxConnections"),
                        format!("maxConnections must be at least 1, got {v}"),
                    ),
                }
            }
            if let Some(v) = l.max_buffer_bytes {
                // Below one full read buffer per worker, every connection would be refused.
                match usize::try_from(v) {
                    Ok(n) if n >= MIN_BUFFER_BYTES => settings.limits.max_buffer_bytes = n,
                    _ => self.error(
                        site,
                        &p.key("maxBufferBytes"),
                        format!("maxBufferBytes must be at least {MIN_BUFFER_BYTES} (64 KiB), got {v}"),
                    ),
                }
            }
            if let Some(text) = &l.protocol_detection_timeout {
                let field = p.key("protocolDetectionTimeout");
                match self.duration(site, &field, text) {
                    // Zero would hand a client that has not spoken yet to TCP at once: every
                    // client-first protocol would lose its detection.
                    Some(d) if d < Duration::from_millis(1) => self.error(
                        site,
                        &field,
                        format!("protocolDetectionTimeout must be at least 1ms, got {text:?}"),
                    ),
                    Some(d) => settings.limits.protocol_detection_timeout = d,
                    None => {}
                }
            }
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
                        site,
                        &p.key("budgetPercent"),
                        format!("budgetPercent must be between 0 and 100, got {pct}"),
                    );
                }
            }
            if let Some(m) = b.min_retry_concurrency {
                match u32::try_from(m) {
                    Ok(m) => budget.min_retry_concurrency = m,
                    Err(_) => self.error(
                        site,
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
            if let Some(l) = &w.locality {
                if let Err(e) = super::locality::fold_into_labels(l, &mut ws.labels) {
                    self.error(site, &p.key("locality"), e);
                }
            }
            ws.services = w.services.iter().map(|h| h.to_ascii_lowercase()).collect();
            for (i, a) in w.addresses.iter().enumerate() {
                match a.parse() {
                    Ok(ip) => ws.addresses.push(ip),
                    Err(_) => self.error(
                        site,
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
                        site,
                        &p.key("ports").key(name),
                        format!("port must be 1 to 65535, got {port}"),
                    ),
                }
            }
            if !w.services.is_empty() && (w.addresses.is_empty() || w.ports.is_empty()) {
                self.error(site, &p, "a workload that serves services needs addresses and ports");
            }
            if let Some(probe) = &w.readiness_probe {
                ws.readiness = self.readiness_probe(site, &p.key("readinessProbe"), probe);
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
                    self.error(site, &p.key("address"), msg);
                }
                addresses.push(cp.address.clone());
            }
            for (i, a) in cp.addresses.iter().enumerate() {
                if !host_port(a) {
                    self.error(site, &p.key("addresses").index(i), format!("{a:?} is not host:port"));
                } else if addresses.contains(a) {
                    self.error(site, &p.key("addresses").index(i), format!("{a:?} is listed twice"));
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
            let tls = cp.tls.as_ref().map(|t| {
                if t.ca_cert_file.is_empty() {
                    self.error(
                        site,
                        &p.key("tls").key("caCertFile"),
                        "caCertFile is required: the roots the control plane's certificate must chain to (`ringmesh ca root`)",
                    );
                }
                ControlPlaneTls {
                    ca_cert_file: t.ca_cert_file.clone().into(),
                    server_name: t.server_name.clone().filter(|n| !n.is_empty()),
                }
            });
            settings.control_plane = Some(ControlPlaneSettings {
                addresses,
                node_id,
                tls,
                credential_file: cp.credential_file.clone().filter(|f| !f.is_empty()).map(Into::into),
            });
        }
        if let Some(id) = &spec.identity {
            let p = root.key("identity");
            if let Some(text) = &id.cert_lifetime {
                match crate::duration::parse_duration(text) {
                    Ok(d) if d >= Duration::from_secs(60) => settings.identity.cert_lifetime = d,
                    Ok(_) => self.error(site, &p.key("certLifetime"), format!("{text:?}: at least 60s")),
                    Err(e) => self.error(site, &p.key("certLifetime"), e.to_string()),
                }
            }
            if let Some(td) = &id.trust_domain {
                let ok = !td.is_empty()
                    && td
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
                if ok {
                    settings.identity.trust_domain = td.clone();
                } else {
                    self.error(
                        site,
                        &p.key("trustDomain"),
                        format!("{td:?} is not a trust domain (lower-case letters, digits, `-`, `.`, `_`)"),
                    );
                }
            }
            match (&id.cert_file, &id.key_file, &id.ca_file) {
                (None, None, None) => {}
                (Some(cert), Some(key), Some(ca)) => {
                    settings.identity.files = Some(IdentityFiles {
                        cert: cert.into(),
                        key: key.into(),
                        ca: ca.into(),
                    })
                }
                _ => self.error(
                    site,
                    &p,
                    "certFile, keyFile and caFile go together: give all three or none",
                ),
            }
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
}
