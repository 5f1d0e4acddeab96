//! Istio's `Telemetry` kind, in two steps, as the security kinds are compiled.
//!
//! Each resource on its own ([`Compiler::istio_telemetry`]), whether it selects this workload
//! or not, so that `ringmesh analyze` reports every one: values Istio refuses (a mode, a metric
//! name, a sampling percentage out of range, an empty provider name, `selector` together with
//! `targetRefs`) are errors with the field's path, and so is an access-log filter ringmesh
//! cannot evaluate; what ringmesh ignores (a provider it does not have, per-metric switches, a
//! direction on tracing, `targetRefs`) is a warning that says what happens instead.
//!
//! Then for this proxy's workload ([`Compiler::apply_telemetries`], after the `ProxyConfig`'s
//! `spec.telemetry` is compiled): the `Telemetry`s of the mesh, namespace and workload levels
//! ([`super::selection`]) are applied in that order over it, each entry overriding what the
//! entries before it set, as Istio merges them:
//!
//! - `accessLogging[]` with the `envoy` provider turns the proxy's access log on (`disabled`
//!   absent or `false`, with the `filter` if any) or off (`disabled: true`), per direction
//!   (`match.mode`). An entry without providers takes the previous entry's; the `ProxyConfig`'s
//!   `accessLog` makes `envoy` the default (Istio's `defaultProviders.accessLogging`), and sets
//!   the path and format; without it the log goes to `/dev/stdout` as JSON. The last level that
//!   names providers decides which are in use, so a level naming only another provider turns
//!   `envoy` off.
//! - `tracing[]` sets the sampling percentage and whether spans are reported; the exporter is
//!   the `ProxyConfig`'s, whatever the provider's name. Without the `ProxyConfig`'s
//!   `spec.telemetry.tracing` there is no tracing provider, and the entry is warned about.
//! - `metrics[]` with the `prometheus` provider (the default): an override of all metrics with
//!   `disabled: true` turns Istio's metrics off for its directions, and any other override turns
//!   them back on there, as in Istio. The last entry that names providers decides which are in
//!   use; the `ProxyConfig`'s `metrics.istio: false` is a mesh without a default provider.

use super::selection::{has_selector, Selecting as _};
use super::{Compiler, Site};
use crate::access_log::json_format;
use crate::diagnostic::did_you_mean;
use crate::locate::FieldPath;
use crate::resources::{ProviderRef, ResourceMeta, Telemetry, ROOT_NAMESPACE};
use crate::snapshot::{
    self, AccessLog, Comparison, LogWhen, PerDirection, StatusTest, WorkloadSettings, DEFAULT_ACCESS_LOG_BUFFER,
};

/// Istio's `WorkloadMode`s.
const MODES: &[&str] = &["CLIENT_AND_SERVER", "CLIENT", "SERVER"];

/// Istio's `MetricSelector.IstioMetric`s.
const METRICS: &[&str] = &[
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

/// Istio's built-in access-log provider: the proxy's own log.
const ACCESS_LOG_PROVIDER: &str = "envoy";

/// Istio's default metrics provider: the proxy's `/stats/prometheus`.
const METRICS_PROVIDER: &str = "prometheus";

/// The directions a `match.mode` selects, as `inbound` flags (`SERVER` is inbound). A mode
/// that is not valid was reported already and selects both.
fn directions(mode: Option<&str>) -> &'static [bool] {
    match mode {
        Some("CLIENT") => &[false],
        Some("SERVER") => &[true],
        _ => &[true, false],
    }
}

/// Whether `providers` names `name` (Istio compares provider names without case).
fn names(providers: &[ProviderRef], name: &str) -> bool {
    providers.iter().any(|p| p.name.eq_ignore_ascii_case(name))
}

/// Whether a provider is in use, `levels` being the providers named by each group of entries
/// in order: the last group that names any decides; if none does, the default.
fn in_scope<'a>(levels: impl Iterator<Item = Vec<&'a [ProviderRef]>>, name: &str, default: bool) -> bool {
    levels
        .filter(|named| named.iter().any(|p| !p.is_empty()))
        .last()
        .map_or(default, |named| named.iter().any(|p| names(p, name)))
}

/// An access-log filter ringmesh can evaluate on every request: `response.code`, compared with a
/// number (Istio's filters are CEL; this is their common shape, `response.code >= 400`).
fn status_filter(expression: &str) -> Result<StatusTest, String> {
    let refused = || {
        format!(
            "filter expression {expression:?} is not supported: ringmesh evaluates `response.code` \
             compared with a number (`response.code >= 400`; ==, !=, <, <=, >, >=)"
        )
    };
    let rest = expression.trim().strip_prefix("response.code").ok_or_else(refused)?;
    let rest = rest.trim_start();
    let (op, rest) = [
        ("==", Comparison::Eq),
        ("!=", Comparison::Ne),
        ("<=", Comparison::Le),
        (">=", Comparison::Ge),
        ("<", Comparison::Lt),
        (">", Comparison::Gt),
    ]
    .into_iter()
    .find_map(|(text, op)| rest.strip_prefix(text).map(|r| (op, r.trim())))
    .ok_or_else(refused)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refused());
    }
    let value = rest
        .parse::<u16>()
        .map_err(|_| format!("filter expression {expression:?}: {rest} is not a response code"))?;
    Ok(StatusTest { op, value })
}

impl Compiler {
    /// Phase 1: one `Telemetry` on its own.
    pub(super) fn istio_telemetry(&mut self, t: &Telemetry) {
        let site: &Site<'_> = t;
        let spec = FieldPath::root().key("spec");
        if let Some(sel) = &t.spec.selector {
            self.selector_labels(site, &spec.key("selector"), &sel.match_labels);
        }
        let targets = !t.spec.target_refs.is_empty() || t.spec.target_ref.is_some();
        let target_field = if t.spec.target_refs.is_empty() {
            "targetRef"
        } else {
            "targetRefs"
        };
        if targets && has_selector(t.selector()) {
            self.error(
                site,
                &spec.key(target_field),
                format!("set selector or {target_field}, not both (Istio refuses both)"),
            );
        } else if targets {
            self.warn(
                site,
                &spec.key(target_field),
                format!(
                    "{target_field} attaches a Telemetry to gateways and waypoints, which ringmesh \
                     is not: no sidecar is selected this way, so this Telemetry applies to no \
                     ringmesh proxy"
                ),
            );
        } else if t.namespace() == ROOT_NAMESPACE && has_selector(t.selector()) {
            self.warn(
                site,
                &spec.key("selector"),
                format!(
                    "a selector in the root namespace ({ROOT_NAMESPACE}) selects workloads of \
                     {ROOT_NAMESPACE} only: Istio applies a Telemetry's selector in its own \
                     namespace (leave the selector out to apply it mesh-wide)"
                ),
            );
        }
        for (i, tr) in t.spec.tracing.iter().enumerate() {
            let p = spec.key("tracing").index(i);
            if let Some(mode) = tr.match_.as_ref().and_then(|m| m.mode.as_deref()) {
                if self.mode(site, &p.key("match").key("mode"), mode) && mode != "CLIENT_AND_SERVER" {
                    self.warn(
                        site,
                        &p.key("match").key("mode"),
                        format!(
                            "ringmesh has one tracing setting for both directions: this entry \
                             applies to CLIENT and SERVER alike, not to {mode} only"
                        ),
                    );
                }
            }
            self.provider_names(site, &p.key("providers"), &tr.providers);
            if tr.providers.len() > 1 {
                self.warn(
                    site,
                    &p.key("providers"),
                    "only one tracing provider per entry is supported; Istio uses the first",
                );
            }
            if let Some(pct) = tr.random_sampling_percentage {
                if !(0.0..=100.0).contains(&pct) {
                    self.error(
                        site,
                        &p.key("randomSamplingPercentage"),
                        format!("randomSamplingPercentage is between 0 and 100, got {pct}"),
                    );
                }
            }
        }
        for (i, m) in t.spec.metrics.iter().enumerate() {
            let p = spec.key("metrics").index(i);
            self.provider_names(site, &p.key("providers"), &m.providers);
            for (j, provider) in m.providers.iter().enumerate() {
                if !provider.name.is_empty() && !provider.name.eq_ignore_ascii_case(METRICS_PROVIDER) {
                    self.warn(
                        site,
                        &p.key("providers").index(j).key("name"),
                        format!(
                            "metrics provider {:?} is not known to ringmesh, which serves Istio's \
                             metrics as `{METRICS_PROVIDER}` only; nothing is sent to it",
                            provider.name
                        ),
                    );
                }
            }
            for (j, o) in m.overrides.iter().enumerate() {
                let op = p.key("overrides").index(j);
                let Some(sel) = &o.match_ else { continue };
                let mp = op.key("match");
                if let Some(mode) = sel.mode.as_deref() {
                    self.mode(site, &mp.key("mode"), mode);
                }
                match (&sel.metric, &sel.custom_metric) {
                    (Some(_), Some(_)) => {
                        self.error(site, &mp, "set metric or customMetric, not both");
                    }
                    (None, Some(custom)) => self.warn(
                        site,
                        &mp.key("customMetric"),
                        format!(
                            "custom metrics are not supported (ringmesh has Istio's standard \
                             metrics only): {custom:?} does not exist, so this override only \
                             turns Istio's metrics on"
                        ),
                    ),
                    (Some(metric), None) if !METRICS.contains(&metric.as_str()) => {
                        let hint = did_you_mean(metric, METRICS.iter().copied())
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| format!("expected one of {}", METRICS.join(", ")));
                        self.error(
                            site,
                            &mp.key("metric"),
                            format!("metric {metric:?} is not one of Istio's; {hint}"),
                        );
                    }
                    (Some(metric), None) if metric != "ALL_METRICS" && o.disabled == Some(true) => self.warn(
                        site,
                        &op.key("disabled"),
                        format!(
                            "turning one metric off is not supported (ringmesh keeps or drops \
                             Istio's metrics together, with ALL_METRICS): {metric} stays on"
                        ),
                    ),
                    _ => {}
                }
            }
        }
        for (i, a) in t.spec.access_logging.iter().enumerate() {
            let p = spec.key("accessLogging").index(i);
            if let Some(mode) = a.match_.as_ref().and_then(|m| m.mode.as_deref()) {
                self.mode(site, &p.key("match").key("mode"), mode);
            }
            self.provider_names(site, &p.key("providers"), &a.providers);
            for (j, provider) in a.providers.iter().enumerate() {
                if !provider.name.is_empty() && !provider.name.eq_ignore_ascii_case(ACCESS_LOG_PROVIDER) {
                    self.warn(
                        site,
                        &p.key("providers").index(j).key("name"),
                        format!(
                            "access-log provider {:?} is not known to ringmesh, whose access log \
                             is Istio's built-in `{ACCESS_LOG_PROVIDER}` provider; nothing is \
                             logged to it",
                            provider.name
                        ),
                    );
                }
            }
            if let Some(f) = &a.filter {
                if let Err(why) = status_filter(&f.expression) {
                    self.error(site, &p.key("filter").key("expression"), why);
                }
            }
        }
    }

    /// Whether `mode` is one of Istio's; reports it when not.
    fn mode(&mut self, site: &Site<'_>, path: &FieldPath, mode: &str) -> bool {
        let ok = MODES.contains(&mode);
        if !ok {
            self.error(site, path, format!("mode {mode:?} is not one of {}", MODES.join(", ")));
        }
        ok
    }

    fn provider_names(&mut self, site: &Site<'_>, path: &FieldPath, providers: &[ProviderRef]) {
        for (i, p) in providers.iter().enumerate() {
            if p.name.is_empty() {
                self.error(site, &path.index(i).key("name"), "provider name is required");
            }
        }
    }

    /// Phase 2: the `Telemetry`s that apply to this proxy's workload, over `t` (the
    /// `ProxyConfig`'s settings).
    pub(super) fn apply_telemetries(&mut self, t: &mut snapshot::Telemetry, all: &[&Telemetry], w: &WorkloadSettings) {
        // `targetRefs` select gateways and waypoints, never a sidecar.
        let eligible: Vec<&Telemetry> = all
            .iter()
            .copied()
            .filter(|t| t.spec.target_refs.is_empty() && t.spec.target_ref.is_none())
            .collect();
        let levels = self.levels(&eligible, w);
        let applied: Vec<&Telemetry> = levels.in_order().collect();
        if applied.is_empty() {
            return;
        }
        self.apply_tracing(&mut t.tracing, &applied);
        self.apply_access_logging(&mut t.access_log, &applied);
        t.istio_metrics = metrics(t.istio_metrics, &applied);
    }

    fn apply_tracing(&mut self, tracing: &mut snapshot::Tracing, applied: &[&Telemetry]) {
        if !tracing.enabled {
            // Istio's tracing needs a provider from the mesh config; ringmesh's one provider is
            // the ProxyConfig's `spec.telemetry.tracing`.
            for t in applied.iter().filter(|t| !t.spec.tracing.is_empty()) {
                self.warn(
                    *t,
                    &FieldPath::root().key("spec").key("tracing"),
                    "tracing is not configured for this proxy (the ProxyConfig has no \
                     spec.telemetry.tracing, ringmesh's only tracing provider), so this \
                     Telemetry's tracing does nothing: no trace header is read or written",
                );
            }
            return;
        }
        for tr in applied.iter().flat_map(|t| &t.spec.tracing) {
            if let Some(pct) = tr.random_sampling_percentage.filter(|p| (0.0..=100.0).contains(p)) {
                tracing.sampling = pct / 100.0;
            }
            if let Some(off) = tr.disable_span_reporting {
                tracing.report_spans = !off;
            }
        }
    }

    fn apply_access_logging(&mut self, log: &mut Option<AccessLog>, applied: &[&Telemetry]) {
        // The ProxyConfig's access log is the default provider, as Istio's
        // `defaultProviders.accessLogging: [envoy]` would be.
        let default = log.is_some();
        let in_use = in_scope(
            applied
                .iter()
                .map(|t| t.spec.access_logging.iter().map(|a| a.providers.as_slice()).collect()),
            ACCESS_LOG_PROVIDER,
            default,
        );
        let mut state = PerDirection::both(if default { LogWhen::Always } else { LogWhen::Never });
        let mut inherited = default;
        for t in applied {
            for (i, a) in t.spec.access_logging.iter().enumerate() {
                let applies = if a.providers.is_empty() {
                    inherited
                } else {
                    names(&a.providers, ACCESS_LOG_PROVIDER)
                };
                inherited = applies;
                if !applies && a.providers.is_empty() && a.disabled != Some(true) {
                    self.warn(
                        *t,
                        &FieldPath::root().key("spec").key("accessLogging").index(i),
                        format!(
                            "this entry names no provider and inherits none that ringmesh has \
                             (without the ProxyConfig's accessLog there is no default provider), so \
                             it turns nothing on; name the `{ACCESS_LOG_PROVIDER}` provider"
                        ),
                    );
                }
                if !applies || !in_use {
                    continue;
                }
                let when = if a.disabled == Some(true) {
                    LogWhen::Never
                } else {
                    match a.filter.as_ref().map(|f| status_filter(&f.expression)) {
                        None => LogWhen::Always,
                        Some(Ok(test)) => LogWhen::Status(test),
                        // Reported by phase 1.
                        Some(Err(_)) => continue,
                    }
                };
                for &inbound in directions(a.match_.as_ref().and_then(|m| m.mode.as_deref())) {
                    *state.get_mut(inbound) = when;
                }
            }
        }
        if !in_use {
            state = PerDirection::both(LogWhen::Never);
        }
        if state == PerDirection::both(LogWhen::Never) {
            *log = None;
            return;
        }
        match log {
            Some(log) => log.filter = state,
            None => {
                *log = json_format(None).ok().map(|format| AccessLog {
                    path: "/dev/stdout".into(),
                    format,
                    buffer_bytes: DEFAULT_ACCESS_LOG_BUFFER,
                    filter: state,
                })
            }
        }
    }
}

/// Istio's metrics per direction after the `Telemetry`s, from the `ProxyConfig`'s (`istio:
/// false` there is a mesh without a default metrics provider).
fn metrics(from_proxy_config: PerDirection<bool>, applied: &[&Telemetry]) -> PerDirection<bool> {
    let default = from_proxy_config.inbound || from_proxy_config.outbound;
    // Istio takes the providers of the last metrics entry that names any (of the access-log
    // entries, those of the last level).
    let in_use = in_scope(
        applied
            .iter()
            .flat_map(|t| &t.spec.metrics)
            .map(|m| vec![m.providers.as_slice()]),
        METRICS_PROVIDER,
        default,
    );
    if !in_use {
        return PerDirection::both(false);
    }
    let mut on = if default {
        from_proxy_config
    } else {
        PerDirection::both(true)
    };
    let mut inherited = default;
    for m in applied.iter().flat_map(|t| &t.spec.metrics) {
        let applies = if m.providers.is_empty() {
            inherited
        } else {
            names(&m.providers, METRICS_PROVIDER)
        };
        inherited = applies;
        if !applies {
            continue;
        }
        for o in &m.overrides {
            let sel = o.match_.as_ref();
            let all =
                sel.is_none_or(|s| s.custom_metric.is_none() && s.metric.as_deref().is_none_or(|m| m == "ALL_METRICS"));
            let value = !(all && o.disabled == Some(true));
            for &inbound in directions(sel.and_then(|s| s.mode.as_deref())) {
                *on.get_mut(inbound) = value;
            }
        }
    }
    on
}

#[cfg(test)]
mod tests;
