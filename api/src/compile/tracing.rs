//! `ProxyConfig.spec.telemetry.tracing`: sampling and export, checked, with Istio's and the
//! OpenTelemetry SDK's defaults filled in; the proxy's span identity from `spec.workload`.

use std::time::Duration;

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources::TracingSpec;
use crate::snapshot::{OtlpExport, OtlpProtocol, ProxySettings, Tracing};

/// Time one export request may take unless `grpc.timeout`/`http.timeout` says otherwise
/// (Istio's and the OpenTelemetry exporters' default).
pub(super) const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans per export request (the SDK's `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub(super) const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
/// Spans waiting for export (the SDK's `OTEL_BSP_MAX_QUEUE_SIZE`).
pub(super) const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
/// The longest a span waits before it is sent (the SDK's `OTEL_BSP_SCHEDULE_DELAY`; Envoy's
/// OpenTelemetry tracer flushes every 5 s too).
pub(super) const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_secs(5);
/// The OTLP/HTTP path of traces.
pub(super) const DEFAULT_HTTP_PATH: &str = "/v1/traces";

/// Bounds that keep a typo from becoming a proxy that holds a gigabyte of spans or sends one
/// request per span forever.
const MAX_QUEUE_LIMIT: usize = 1 << 20;
const MIN_SCHEDULE_DELAY: Duration = Duration::from_millis(10);

impl Compiler {
    pub(super) fn tracing(&mut self, site: &Site<'_>, path: &FieldPath, spec: &TracingSpec) -> Tracing {
        let mut t = Tracing {
            enabled: true,
            ..Tracing::default()
        };
        if let Some(pct) = spec.sampling {
            if (0.0..=100.0).contains(&pct) {
                t.sampling = pct / 100.0;
            } else {
                self.error(
                    site,
                    &path.key("sampling"),
                    format!("sampling is a percentage between 0 and 100, got {pct}"),
                );
            }
        }
        if let Some(name) = &spec.service_name {
            if name.trim().is_empty() {
                self.error(
                    site,
                    &path.key("serviceName"),
                    "serviceName must not be empty (leave it out for <canonical service>.<namespace>)",
                );
            }
            t.identity.service_name = name.clone();
        }
        if let Some(n) = spec.max_path_tag_length {
            match usize::try_from(n) {
                Ok(n) if n >= 1 => t.max_path_tag_length = n,
                _ => self.error(
                    site,
                    &path.key("maxPathTagLength"),
                    format!("maxPathTagLength must be at least 1, got {n}"),
                ),
            }
        }
        if let Some(otel) = &spec.opentelemetry {
            t.export = self.otlp_export(site, &path.key("opentelemetry"), otel);
        }
        t
    }

    fn otlp_export(
        &mut self,
        site: &Site<'_>,
        path: &FieldPath,
        spec: &crate::resources::OpenTelemetrySpec,
    ) -> Option<OtlpExport> {
        let mut ok = true;
        let service = spec.service.trim();
        if service.is_empty() {
            self.error(
                site,
                &path.key("service"),
                "service is required: the collector's host name or IP address",
            );
            ok = false;
        } else if service.contains(['/', ' ']) || service.contains("://") {
            self.error(
                site,
                &path.key("service"),
                format!("service is a host name or IP address (no scheme, path or port), got {service:?}"),
            );
            ok = false;
        }
        let port = match u16::try_from(spec.port) {
            Ok(p) if p != 0 => p,
            _ => {
                self.error(
                    site,
                    &path.key("port"),
                    format!("port must be between 1 and 65535, got {}", spec.port),
                );
                ok = false;
                0
            }
        };
        let mut timeout = DEFAULT_EXPORT_TIMEOUT;
        let protocol = match (&spec.http, &spec.grpc) {
            (Some(_), Some(_)) => {
                self.error(site, path, "give http (OTLP/HTTP) or grpc (OTLP/gRPC), not both");
                ok = false;
                OtlpProtocol::Grpc
            }
            (Some(http), None) => {
                match self.export_timeout(site, &path.key("http").key("timeout"), http.timeout.as_deref()) {
                    Ok(t) => timeout = t,
                    Err(()) => ok = false,
                }
                let p = http.path.clone().unwrap_or_else(|| DEFAULT_HTTP_PATH.into());
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    self.error(
                        site,
                        &path.key("http").key("path"),
                        format!("path must start with / and hold no spaces or control characters, got {p:?}"),
                    );
                    ok = false;
                }
                OtlpProtocol::Http { path: p }
            }
            (None, grpc) => {
                let text = grpc.as_ref().and_then(|g| g.timeout.as_deref());
                match self.export_timeout(site, &path.key("grpc").key("timeout"), text) {
                    Ok(t) => timeout = t,
                    Err(()) => ok = false,
                }
                OtlpProtocol::Grpc
            }
        };
        let mut export = OtlpExport {
            service: service.to_owned(),
            port,
            protocol,
            timeout,
            max_export_batch_size: DEFAULT_MAX_EXPORT_BATCH_SIZE,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            schedule_delay: DEFAULT_SCHEDULE_DELAY,
        };
        if let Some(b) = &spec.batch {
            let bp = path.key("batch");
            if let Some(n) = b.max_queue_size {
                match usize::try_from(n) {
                    Ok(n) if (1..=MAX_QUEUE_LIMIT).contains(&n) => export.max_queue_size = n,
                    _ => {
                        self.error(
                            site,
                            &bp.key("maxQueueSize"),
                            format!("maxQueueSize must be between 1 and {MAX_QUEUE_LIMIT}, got {n}"),
                        );
                        ok = false;
                    }
                }
            }
            if let Some(n) = b.max_export_batch_size {
                match usize::try_from(n) {
                    Ok(n) if n >= 1 => export.max_export_batch_size = n,
                    _ => {
                        self.error(
                            site,
                            &bp.key("maxExportBatchSize"),
                            format!("maxExportBatchSize must be at least 1, got {n}"),
                        );
                        ok = false;
                    }
                }
            }
            if b.max_export_batch_size.is_none() {
                // Only the queue was given: a batch is at most the queue.
                export.max_export_batch_size = export.max_export_batch_size.min(export.max_queue_size);
            } else if export.max_export_batch_size > export.max_queue_size {
                self.error(
                    site,
                    &bp.key("maxExportBatchSize"),
                    format!(
                        "maxExportBatchSize ({}) must not exceed maxQueueSize ({})",
                        export.max_export_batch_size, export.max_queue_size
                    ),
                );
                ok = false;
            }
            if let Some(text) = &b.schedule_delay {
                match crate::duration::parse_duration(text) {
                    Ok(d) if d >= MIN_SCHEDULE_DELAY => export.schedule_delay = d,
                    Ok(_) => {
                        self.error(
                            site,
                            &bp.key("scheduleDelay"),
                            format!("scheduleDelay must be at least {MIN_SCHEDULE_DELAY:?}, got {text}"),
                        );
                        ok = false;
                    }
                    Err(e) => {
                        self.error(site, &bp.key("scheduleDelay"), format!("scheduleDelay {text:?}: {e}"));
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(export)
    }

    /// `timeout` of `http` or `grpc`: absent is the default; an error is reported here.
    fn export_timeout(&mut self, site: &Site<'_>, field: &FieldPath, text: Option<&str>) -> Result<Duration, ()> {
        let Some(text) = text else {
            return Ok(DEFAULT_EXPORT_TIMEOUT);
        };
        match crate::duration::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => {
                self.error(site, field, "timeout must be longer than 0s");
                Err(())
            }
            Err(e) => {
                self.error(site, field, format!("timeout {text:?}: {e}"));
                Err(())
            }
        }
    }
}

impl Tracing {
    /// Fills [`Tracing::identity`] from the workload next to the proxy, as an Istio sidecar
    /// derives its span tags from its pod (labels, namespace, node id). An explicit
    /// `serviceName` is kept. The proxy calls it again after its command-line overrides (node
    /// id, workload addresses).
    pub fn fill_identity(&mut self, proxy: &ProxySettings) {
        if !self.enabled {
            return;
        }
        let w = &proxy.workload;
        let label = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| w.labels.get(*n).filter(|v| !v.is_empty()).cloned())
        };
        let canonical_service = label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
            .or_else(|| (!w.name.is_empty()).then(|| w.name.clone()))
            .unwrap_or_else(|| "unknown".into());
        let canonical_revision = label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or_else(|| "latest".into());
        let node_id = match (&proxy.control_plane, w.addresses.first()) {
            (Some(cp), _) => cp.node_id.clone(),
            (None, Some(ip)) if !w.name.is_empty() => {
                format!("sidecar~{ip}~{}.{ns}~{ns}.svc.cluster.local", w.name, ns = w.namespace)
            }
            (None, _) => format!("{canonical_service}.{}", w.namespace),
        };
        let id = &mut self.identity;
        if id.service_name.is_empty() {
            id.service_name = format!("{canonical_service}.{}", w.namespace);
        }
        id.node_id = node_id;
        id.zone = label(&["topology.kubernetes.io/zone"]).unwrap_or_default();
        id.canonical_service = canonical_service;
        id.canonical_revision = canonical_revision;
        id.mesh_id = proxy.identity.trust_domain.clone();
        id.namespace = w.namespace.clone();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::compile::{compile, CompileInput, Compiled};
    use crate::diagnostic::{Diagnostic, Severity};
    use crate::load::load_str;
    use crate::snapshot::{OtlpProtocol, DEFAULT_MAX_PATH_TAG_LENGTH};

    fn compile_yaml(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
        let (resources, _) = load_str("mesh.yaml", text)?;
        compile(&CompileInput {
            resources,
            extra_endpoints: Vec::new(),
            version: 1,
        })
    }

    /// A `ProxyConfig` whose `spec` holds `workload` and `telemetry.tracing` (YAML indented
    /// four spaces under `tracing:`).
    fn proxy(workload: &str, tracing: &str) -> String {
        format!(
            "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata: {{name: p}}\nspec:\n{workload}  telemetry:\n    tracing:\n{tracing}"
        )
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        match compile_yaml(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.into_iter().filter(|d| d.severity == Severity::Error).collect(),
        }
    }

    /// The field and line of the one error whose message contains `needle`.
    fn error_at(errs: &[Diagnostic], needle: &str) -> (String, usize) {
        let d = errs
            .iter()
            .find(|d| d.message.contains(needle))
            .unwrap_or_else(|| panic!("no error containing {needle:?} in {errs:#?}"));
        (d.field.clone().unwrap_or_default(), d.line.unwrap_or(0))
    }

    #[test]
    fn off_without_a_tracing_section() {
        let c = compile_yaml("apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata: {name: p}\nspec: {}\n")
            .expect("compiles");
        let t = &c.snapshot.telemetry.tracing;
        assert!(!t.enabled);
        assert!(t.export.is_none());
        assert_eq!(
            t.identity.service_name, "",
            "no identity is derived for a proxy that does not trace"
        );
    }

    #[test]
    fn istio_defaults_and_identity_from_the_workload() {
        let workload = "  workload:\n    name: reviews-v2\n    namespace: shop\n    addresses: [10.1.2.3]\n    labels:\n      app: reviews\n      version: v2\n      topology.kubernetes.io/zone: eu-west-1a\n  identity: {trustDomain: corp.example}\n";
        let text = proxy(
            workload,
            "      opentelemetry: {service: otel-collector.observability, port: 4317}\n",
        );
        let c = compile_yaml(&text).expect("compiles");
        let t = &c.snapshot.telemetry.tracing;
        assert!(t.enabled);
        assert_eq!(t.sampling, 0.01, "Istio's 1 %");
        assert_eq!(t.max_path_tag_length, DEFAULT_MAX_PATH_TAG_LENGTH);
        let e = t.export.as_ref().expect("exporter");
        assert_eq!((e.service.as_str(), e.port), ("otel-collector.observability", 4317));
        assert_eq!(e.protocol, OtlpProtocol::Grpc, "gRPC unless http is given, as Istio");
        assert_eq!(e.timeout, Duration::from_secs(5));
        assert_eq!(
            (e.max_export_batch_size, e.max_queue_size, e.schedule_delay),
            (512, 2048, Duration::from_secs(5))
        );
        let id = &t.identity;
        assert_eq!(id.service_name, "reviews.shop");
        assert_eq!(id.canonical_service, "reviews");
        assert_eq!(id.canonical_revision, "v2");
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.mesh_id, "corp.example");
        assert_eq!(id.zone, "eu-west-1a");
        assert_eq!(id.node_id, "sidecar~10.1.2.3~reviews-v2.shop~shop.svc.cluster.local");
    }

    #[test]
    fn canonical_labels_win_and_service_name_is_kept() {
        let workload = "  workload:\n    name: pod-7f9\n    labels:\n      app: ignored\n      service.istio.io/canonical-name: cart\n      service.istio.io/canonical-revision: \"42\"\n";
        let text = proxy(workload, "      serviceName: checkout\n      sampling: 0\n");
        let c = compile_yaml(&text).expect("compiles");
        let t = &c.snapshot.telemetry.tracing;
        assert_eq!(t.sampling, 0.0);
        assert!(t.export.is_none(), "propagation only");
        assert_eq!(t.identity.service_name, "checkout");
        assert_eq!(t.identity.canonical_service, "cart");
        assert_eq!(t.identity.canonical_revision, "42");
        assert_eq!(t.identity.namespace, "default");
        assert_eq!(t.identity.node_id, "cart.default", "no address, no control plane");
    }

    #[test]
    fn http_export_and_batch_settings() {
        let text = proxy(
            "",
            "      sampling: 100\n      maxPathTagLength: 64\n      opentelemetry:\n        service: 127.0.0.1\n        port: 4318\n        http: {timeout: 250ms}\n        batch: {maxExportBatchSize: 10, maxQueueSize: 100, scheduleDelay: 20ms}\n",
        );
        let c = compile_yaml(&text).expect("compiles");
        let t = &c.snapshot.telemetry.tracing;
        assert_eq!((t.sampling, t.max_path_tag_length), (1.0, 64));
        let e = t.export.as_ref().expect("exporter");
        assert_eq!(
            e.protocol,
            OtlpProtocol::Http {
                path: "/v1/traces".into()
            }
        );
        assert_eq!(e.timeout, Duration::from_millis(250));
        assert_eq!(
            (e.max_export_batch_size, e.max_queue_size, e.schedule_delay),
            (10, 100, Duration::from_millis(20))
        );
    }

    #[test]
    fn a_small_queue_caps_the_default_batch() {
        let text = proxy(
            "",
            "      opentelemetry:\n        service: c\n        port: 4317\n        batch: {maxQueueSize: 100}\n",
        );
        let c = compile_yaml(&text).expect("compiles");
        let e = c.snapshot.telemetry.tracing.export.expect("exporter");
        assert_eq!((e.max_export_batch_size, e.max_queue_size), (100, 100));
    }

    #[test]
    fn every_bad_field_is_named_with_its_line() {
        let text = proxy(
            "",
            "      sampling: 150\n      serviceName: \" \"\n      maxPathTagLength: 0\n      opentelemetry:\n        service: http://collector:4317\n        port: 70000\n        http: {path: v1/traces, timeout: 0s}\n        batch:\n          maxExportBatchSize: 600\n          maxQueueSize: 500\n          scheduleDelay: 1ms\n",
        );
        let errs = errors(&text);
        let line = |needle: &str| text.lines().position(|l| l.contains(needle)).expect("in text") + 1;
        let t = "spec.telemetry.tracing";
        let o = "spec.telemetry.tracing.opentelemetry";
        assert_eq!(
            error_at(&errs, "between 0 and 100, got 150"),
            (format!("{t}.sampling"), line("sampling:"))
        );
        assert_eq!(
            error_at(&errs, "serviceName must not be empty"),
            (format!("{t}.serviceName"), line("serviceName"))
        );
        assert_eq!(
            error_at(&errs, "maxPathTagLength must be at least 1"),
            (format!("{t}.maxPathTagLength"), line("maxPathTagLength"))
        );
        assert_eq!(
            error_at(&errs, "no scheme, path or port"),
            (format!("{o}.service"), line("service: http"))
        );
        assert_eq!(error_at(&errs, "got 70000"), (format!("{o}.port"), line("port: 70000")));
        assert_eq!(
            error_at(&errs, "path must start with /"),
            (format!("{o}.http.path"), line("http: {"))
        );
        assert_eq!(
            error_at(&errs, "longer than 0s"),
            (format!("{o}.http.timeout"), line("http: {"))
        );
        assert_eq!(
            error_at(&errs, "maxExportBatchSize (600) must not exceed maxQueueSize (500)"),
            (format!("{o}.batch.maxExportBatchSize"), line("maxExportBatchSize"))
        );
        assert_eq!(
            error_at(&errs, "scheduleDelay must be at least"),
            (format!("{o}.batch.scheduleDelay"), line("scheduleDelay"))
        );
        assert_eq!(errs.len(), 9, "{errs:#?}");
    }

    #[test]
    fn missing_collector_and_both_protocols_are_errors() {
        let text = proxy(
            "",
            "      opentelemetry:\n        http: {}\n        grpc: {timeout: soon}\n",
        );
        let errs = errors(&text);
        let o = "spec.telemetry.tracing.opentelemetry";
        assert_eq!(error_at(&errs, "service is required").0, format!("{o}.service"));
        assert_eq!(error_at(&errs, "between 1 and 65535, got 0").0, format!("{o}.port"));
        assert_eq!(error_at(&errs, "not both").0, o);
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = proxy("", "      opentelemetry: {service: c, port: 4317, endpoint: x}\n");
        let errs = errors(&text);
        assert!(
            errs.iter().any(|d| d.message.contains("endpoint")),
            "the unknown field is named: {errs:#?}"
        );
    }
}
