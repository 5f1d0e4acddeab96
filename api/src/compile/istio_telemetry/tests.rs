//! `Telemetry` compiled for a workload: the levels and their precedence, each field, and the
//! errors and warnings with their fields and lines.

use super::*;
use crate::access_log::LogFormat;
use crate::compile::{compile, CompileInput, Compiled};
use crate::diagnostic::Diagnostic;
use crate::load::load_str;

/// A ProxyConfig for the workload `ns/web` with `labels`, and `telemetry` as its
/// `spec.telemetry` (lines indented by four).
fn proxy_for(ns: &str, labels: &str, telemetry: &str) -> String {
    let telemetry = if telemetry.is_empty() {
        String::new()
    } else {
        format!("  telemetry:\n{telemetry}")
    };
    format!(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  workload:\n    name: web\n    \
         namespace: {ns}\n    labels: {labels}\n{telemetry}---\n"
    )
}

fn proxy(telemetry: &str) -> String {
    proxy_for("shop", "{app: web}", telemetry)
}

/// A `Telemetry` document; `spec` is the block under `spec:`, indented by two.
fn tel(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n"
    )
}

/// A ProxyConfig's `spec.telemetry` with tracing configured (propagation, no exporter): the
/// tracing provider a `Telemetry`'s `tracing[]` applies to.
const TRACED: &str = "    tracing: {}\n";

const LOG_ON: &str = "  accessLogging:\n  - providers:\n    - name: envoy\n";
const LOG_OFF: &str = "  accessLogging:\n  - providers:\n    - name: envoy\n    disabled: true\n";

fn compile_yaml(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let (resources, mut warnings) = load_str("telemetry.yaml", text)?;
    let mut compiled = compile(&CompileInput {
        resources,
        extra_endpoints: Vec::new(),
        version: 1,
    })?;
    warnings.append(&mut compiled.warnings);
    compiled.warnings = warnings;
    Ok(compiled)
}

fn ok(text: &str) -> Compiled {
    compile_yaml(text).unwrap_or_else(|e| panic!("expected success, got:\n{}", crate::Diagnostics(e)))
}

fn telemetry(text: &str) -> snapshot::Telemetry {
    let c = ok(text);
    assert!(c.warnings.is_empty(), "{}", crate::Diagnostics(c.warnings));
    c.snapshot.telemetry
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match compile_yaml(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e,
    }
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
}

fn filter(t: &snapshot::Telemetry) -> Option<PerDirection<LogWhen>> {
    t.access_log.as_ref().map(|l| l.filter)
}

const ALWAYS: Option<PerDirection<LogWhen>> = Some(PerDirection::both(LogWhen::Always));
const ERRORS_ONLY: LogWhen = LogWhen::Status(StatusTest {
    op: Comparison::Ge,
    value: 400,
});

#[test]
fn without_a_telemetry_the_proxy_configs_settings_stay() {
    let t = telemetry(&proxy(""));
    assert!(t.access_log.is_none());
    assert_eq!(t.istio_metrics, PerDirection::both(true));
    assert_eq!((t.tracing.sampling, t.tracing.report_spans), (0.01, true));
    let t = telemetry(&proxy("    accessLog: {path: /tmp/a.log}\n"));
    assert_eq!(filter(&t), ALWAYS);
}

#[test]
fn the_mesh_default_turns_the_access_log_on_to_stdout_as_json() {
    let t = telemetry(&(proxy("") + &tel("istio-system", "mesh-default", LOG_ON)));
    let log = t.access_log.expect("on");
    assert_eq!(log.path, std::path::Path::new("/dev/stdout"));
    assert!(matches!(log.format, LogFormat::Json(_)));
    assert_eq!(log.buffer_bytes, DEFAULT_ACCESS_LOG_BUFFER);
    assert_eq!(log.filter, PerDirection::both(LogWhen::Always));
}

#[test]
fn the_proxy_configs_path_and_format_are_kept() {
    let pc = proxy("    accessLog:\n      path: /var/log/web.log\n      encoding: TEXT\n");
    let filtered =
        "  accessLogging:\n  - providers:\n    - name: envoy\n    filter:\n      expression: response.code >= 400\n";
    let log = telemetry(&(pc.clone() + &tel("istio-system", "mesh-default", filtered)))
        .access_log
        .expect("on");
    assert_eq!(log.path, std::path::Path::new("/var/log/web.log"));
    assert!(matches!(log.format, LogFormat::Text(_)));
    assert_eq!(log.filter, PerDirection::both(ERRORS_ONLY));
    // `disabled: true` turns the ProxyConfig's log off.
    assert!(telemetry(&(pc + &tel("istio-system", "mesh-default", LOG_OFF)))
        .access_log
        .is_none());
}

/// Root, then namespace, then the workload's own: each overrides what the one before set, and
/// leaves the rest.
#[test]
fn mesh_namespace_and_workload_levels_override_in_turn() {
    let docs = tel(
        "istio-system",
        "mesh-default",
        "  accessLogging:\n  - providers:\n    - name: envoy\n  tracing:\n  - randomSamplingPercentage: 10\n",
    ) + &tel(
        "shop",
        "namespace",
        "  accessLogging:\n  - providers:\n    - name: envoy\n    disabled: true\n  tracing:\n  - randomSamplingPercentage: 20\n",
    ) + &tel(
        "shop",
        "web-only",
        "  selector:\n    matchLabels: {app: web}\n  accessLogging:\n  - providers:\n    - name: envoy\n    \
         filter:\n      expression: response.code >= 400\n",
    );
    let web = telemetry(&(proxy(TRACED) + &docs));
    assert_eq!(
        filter(&web),
        Some(PerDirection::both(ERRORS_ONLY)),
        "the workload's own"
    );
    assert_eq!(
        web.tracing.sampling, 0.2,
        "the namespace's, which the workload's leaves"
    );

    let db = telemetry(&(proxy_for("shop", "{app: db}", TRACED) + &docs));
    assert_eq!(filter(&db), None, "the namespace turned it off");
    assert_eq!(db.tracing.sampling, 0.2);

    let elsewhere = telemetry(&(proxy_for("blog", "{app: web}", TRACED) + &docs));
    assert_eq!(
        filter(&elsewhere),
        ALWAYS,
        "only the mesh's applies in another namespace"
    );
    assert_eq!(elsewhere.tracing.sampling, 0.1);

    // The root namespace's own workloads: its selector-less Telemetry is their namespace's.
    let root = telemetry(&(proxy_for("istio-system", "{app: gw}", TRACED) + &docs));
    assert_eq!(filter(&root), ALWAYS);
}

#[test]
fn several_at_one_level_take_the_first_and_warn_naming_both() {
    let text = proxy(TRACED)
        + &tel("shop", "first", "  tracing:\n  - randomSamplingPercentage: 30\n")
        + &tel("shop", "second", "  tracing:\n  - randomSamplingPercentage: 40\n")
        + &tel(
            "shop",
            "own-a",
            "  selector:\n    matchLabels: {app: web}\n  tracing:\n  - disableSpanReporting: true\n",
        )
        + &tel(
            "shop",
            "own-b",
            "  selector:\n    matchLabels: {app: web}\n  tracing:\n  - randomSamplingPercentage: 50\n",
        );
    let c = ok(&text);
    assert_eq!(c.snapshot.telemetry.tracing.sampling, 0.3);
    assert!(!c.snapshot.telemetry.tracing.report_spans);
    let on: Vec<(&str, &str)> = c
        .warnings
        .iter()
        .map(|w| (w.resource.as_deref().unwrap_or(""), w.message.as_str()))
        .collect();
    assert_eq!(on.len(), 2, "{on:#?}");
    assert_eq!(on[0].0, "Telemetry shop/own-b");
    assert!(
        on[0].1.starts_with(
            "several workload-level Telemetries apply to this workload; Telemetry shop/own-a at telemetry.yaml:"
        ),
        "{}",
        on[0].1
    );
    assert_eq!(on[1].0, "Telemetry shop/second");
    assert!(
        on[1].1.contains("Telemetry shop/first at telemetry.yaml:"),
        "{}",
        on[1].1
    );
    assert!(on[1].1.contains("Istio keeps the oldest"), "{}", on[1].1);
}

#[test]
fn match_mode_selects_a_direction() {
    let client = "  accessLogging:\n  - providers:\n    - name: envoy\n    match:\n      mode: CLIENT\n";
    let t = telemetry(&(proxy("") + &tel("istio-system", "mesh-default", client)));
    assert_eq!(
        filter(&t),
        Some(PerDirection {
            inbound: LogWhen::Never,
            outbound: LogWhen::Always
        })
    );
    let log = t.access_log.expect("on");
    assert!(log.logs(false, 200) && !log.logs(true, 200));
    // The server side off, over a log that is on both ways.
    let server_off =
        "  accessLogging:\n  - providers:\n    - name: envoy\n    disabled: true\n    match: {mode: SERVER}\n";
    let t = telemetry(&(proxy("    accessLog: {}\n") + &tel("shop", "ns", server_off)));
    assert_eq!(
        filter(&t),
        Some(PerDirection {
            inbound: LogWhen::Never,
            outbound: LogWhen::Always
        })
    );
}

#[test]
fn an_entry_without_providers_inherits_the_previous_ones() {
    // Istio's documented "disable access logging for a namespace": no provider named.
    let off = "  accessLogging:\n  - disabled: true\n";
    let t = telemetry(&(proxy("") + &tel("istio-system", "mesh-default", LOG_ON) + &tel("shop", "quiet", off)));
    assert!(t.access_log.is_none());
    // The ProxyConfig's access log is the default provider.
    assert!(telemetry(&(proxy("    accessLog: {}\n") + &tel("shop", "quiet", off)))
        .access_log
        .is_none());
    // Nothing to inherit: the entry turns nothing on, and says so.
    let c = ok(&(proxy("") + &tel("shop", "on", "  accessLogging:\n  - {}\n")));
    assert!(c.snapshot.telemetry.access_log.is_none());
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(c.warnings[0].field.as_deref(), Some("spec.accessLogging[0]"));
    assert!(
        c.warnings[0].message.contains("name the `envoy` provider"),
        "{}",
        c.warnings[0].message
    );
}

#[test]
fn other_providers_are_warned_about_and_a_level_naming_only_them_turns_envoy_off() {
    let otel = "  accessLogging:\n  - providers:\n    - name: otel\n";
    let text = proxy("") + &tel("istio-system", "mesh-default", LOG_ON) + &tel("shop", "other-logs", otel);
    let c = ok(&text);
    assert!(
        c.snapshot.telemetry.access_log.is_none(),
        "Istio's providers in scope: otel only"
    );
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.field.as_deref(), Some("spec.accessLogging[0].providers[0].name"));
    assert_eq!(w.line, Some(line_of(&text, "name: otel")));
    assert!(
        w.message
            .starts_with("access-log provider \"otel\" is not known to ringmesh"),
        "{}",
        w.message
    );
    // Provider names compare without case, as Istio compares them.
    let t = telemetry(&(proxy("") + &tel("istio-system", "m", &LOG_ON.replace("envoy", "Envoy"))));
    assert_eq!(filter(&t), ALWAYS);
}

#[test]
fn access_log_filters() {
    for (expr, op, value) in [
        ("response.code >= 400", Comparison::Ge, 400),
        ("response.code>=500", Comparison::Ge, 500),
        ("  response.code == 404 ", Comparison::Eq, 404),
        ("response.code != 200", Comparison::Ne, 200),
        ("response.code < 300", Comparison::Lt, 300),
        ("response.code <= 299", Comparison::Le, 299),
        ("response.code > 499", Comparison::Gt, 499),
    ] {
        assert_eq!(status_filter(expr), Ok(StatusTest { op, value }), "{expr}");
    }
    for expr in [
        "response.code >= 400 || response.code == 0",
        "request.url_path.startsWith('/api')",
        "response.code >= -1",
        "response.code >= 4e2",
        "response.code",
        "",
    ] {
        let e = status_filter(expr).expect_err(expr);
        assert!(
            e.contains("is not supported") && e.contains("response.code >= 400"),
            "{e}"
        );
    }
    assert_eq!(
        status_filter("response.code >= 70000").expect_err("too large"),
        "filter expression \"response.code >= 70000\": 70000 is not a response code"
    );
    let test = StatusTest {
        op: Comparison::Ge,
        value: 400,
    };
    assert!(test.admits(404) && test.admits(503) && !test.admits(200) && !test.admits(0));
}

#[test]
fn an_unsupported_filter_is_an_error_naming_the_field() {
    let text = proxy("")
        + &tel(
            "istio-system",
            "mesh-default",
            "  accessLogging:\n  - providers:\n    - name: envoy\n    filter:\n      expression: \"request.url_path.contains('v1')\"\n",
        );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.accessLogging[0].filter.expression"));
    assert_eq!(e[0].line, Some(line_of(&text, "expression:")));
    assert_eq!(e[0].resource.as_deref(), Some("Telemetry istio-system/mesh-default"));
    assert!(
        e[0].message
            .contains("\"request.url_path.contains('v1')\" is not supported"),
        "{}",
        e[0].message
    );
}

#[test]
fn tracing_sampling_and_span_reporting() {
    let t = telemetry(&(proxy(TRACED) + &tel("shop", "ns", "  tracing:\n  - randomSamplingPercentage: 10\n")));
    assert_eq!((t.tracing.sampling, t.tracing.report_spans), (0.1, true));
    // Istio: "this does NOT impact context propagation or trace sampling behavior".
    let t = telemetry(
        &(proxy("    tracing: {sampling: 5}\n") + &tel("shop", "ns", "  tracing:\n  - disableSpanReporting: true\n")),
    );
    assert_eq!((t.tracing.sampling, t.tracing.report_spans), (0.05, false));
    // A lower level turns reporting back on; any provider name is taken (the exporter is the
    // ProxyConfig's).
    let t = telemetry(
        &(proxy(TRACED)
            + &tel("istio-system", "m", "  tracing:\n  - disableSpanReporting: true\n")
            + &tel(
                "shop",
                "ns",
                "  tracing:\n  - providers:\n    - name: otel-tracing\n    disableSpanReporting: false\n    randomSamplingPercentage: 0\n",
            )),
    );
    assert_eq!((t.tracing.sampling, t.tracing.report_spans), (0.0, true));
}

/// Istio's tracing needs a provider from the mesh config; ringmesh's is the ProxyConfig's
/// `spec.telemetry.tracing`, and without it a `Telemetry`'s tracing is said to do nothing.
#[test]
fn tracing_without_the_proxy_configs_tracing_is_warned_about() {
    let text = proxy("") + &tel("shop", "ns", "  tracing:\n  - randomSamplingPercentage: 50\n");
    let c = ok(&text);
    let t = &c.snapshot.telemetry.tracing;
    assert!(!t.enabled);
    assert_eq!(t.sampling, 0.01, "not applied");
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.field.as_deref(), Some("spec.tracing"));
    assert_eq!(w.resource.as_deref(), Some("Telemetry shop/ns"));
    assert_eq!(w.line, Some(line_of(&text, "  tracing:")));
    assert!(w.message.contains("no spec.telemetry.tracing"), "{}", w.message);
    // With it, the same Telemetry applies and nothing is said.
    let t = telemetry(&(proxy(TRACED) + &tel("shop", "ns", "  tracing:\n  - randomSamplingPercentage: 50\n")));
    assert_eq!((t.tracing.enabled, t.tracing.sampling), (true, 0.5));
}

#[test]
fn tracing_errors_and_warnings() {
    let text = proxy("")
        + &tel(
            "shop",
            "ns",
            "  tracing:\n  - randomSamplingPercentage: 100.5\n    providers:\n    - name: ''\n",
        );
    let e = errors(&text);
    let fields: Vec<_> = e.iter().filter_map(|d| d.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "spec.tracing[0].providers[0].name",
            "spec.tracing[0].randomSamplingPercentage"
        ],
        "{e:#?}"
    );
    assert_eq!(e[1].line, Some(line_of(&text, "randomSamplingPercentage")));
    assert!(
        e[1].message.contains("between 0 and 100, got 100.5"),
        "{}",
        e[1].message
    );

    let text = proxy(TRACED)
        + &tel(
            "shop",
            "ns",
            "  tracing:\n  - match: {mode: SERVER}\n    providers: [{name: a}, {name: b}]\n    customTags:\n      \
             user: {header: {name: x-user}}\n    randomSamplingPercentage: 50\n",
        );
    let c = ok(&text);
    assert_eq!(c.snapshot.telemetry.tracing.sampling, 0.5, "applied both ways");
    let fields: Vec<_> = c.warnings.iter().filter_map(|d| d.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "spec.tracing[0].customTags",
            "spec.tracing[0].match.mode",
            "spec.tracing[0].providers"
        ],
        "{:#?}",
        c.warnings
    );
    assert!(c.warnings[1].message.contains("applies to CLIENT and SERVER alike"));
    assert!(c.warnings[2].message.contains("Istio uses the first"));
}

#[test]
fn metrics_all_off_per_direction_and_back_on() {
    let all_off = "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    - match:\n        metric: ALL_METRICS\n      disabled: true\n";
    let t = telemetry(&(proxy("") + &tel("istio-system", "m", all_off)));
    assert_eq!(t.istio_metrics, PerDirection::both(false));
    // Istio's documented "disable client metrics": the client side only.
    let client_off = "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    - match:\n        metric: ALL_METRICS\n        mode: CLIENT\n      disabled: true\n";
    let t = telemetry(&(proxy("") + &tel("istio-system", "m", client_off)));
    assert_eq!(
        t.istio_metrics,
        PerDirection {
            inbound: true,
            outbound: false
        }
    );
    // No match is all metrics; a namespace turns them back on (no provider: the parent's).
    let back_on = "  metrics:\n  - overrides:\n    - disabled: false\n";
    let t = telemetry(&(proxy("") + &tel("istio-system", "m", all_off) + &tel("shop", "ns", back_on)));
    assert_eq!(t.istio_metrics, PerDirection::both(true));
    // `metrics.istio: false` in the ProxyConfig is a mesh without the provider; naming it turns
    // the metrics on.
    let named = "  metrics:\n  - providers:\n    - name: prometheus\n";
    let t = telemetry(&(proxy("    metrics: {istio: false}\n") + &tel("shop", "ns", named)));
    assert_eq!(t.istio_metrics, PerDirection::both(true));
    assert_eq!(
        telemetry(&(proxy("    metrics: {istio: false}\n") + &tel("shop", "ns", back_on))).istio_metrics,
        PerDirection::both(false)
    );
}

#[test]
fn metrics_warnings_and_errors() {
    let text = proxy("")
        + &tel(
            "shop",
            "ns",
            "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    - match: {metric: REQUEST_COUNT}\n      \
             disabled: true\n    - match: {metric: ALL_METRICS}\n      tagOverrides:\n        request_host: {value: request.host}\n",
        );
    let c = ok(&text);
    assert_eq!(c.snapshot.telemetry.istio_metrics, PerDirection::both(true));
    let fields: Vec<_> = c.warnings.iter().filter_map(|d| d.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "spec.metrics[0].overrides[1].tagOverrides",
            "spec.metrics[0].overrides[0].disabled"
        ],
        "{:#?}",
        c.warnings
    );
    assert!(
        c.warnings[1].message.contains("REQUEST_COUNT stays on"),
        "{}",
        c.warnings[1].message
    );

    // A provider ringmesh does not have: warned about, and, being the last named, it takes
    // Istio's metrics out of use (as in Istio).
    let text = proxy("") + &tel("shop", "ns", "  metrics:\n  - providers:\n    - name: stackdriver\n");
    let c = ok(&text);
    assert_eq!(c.snapshot.telemetry.istio_metrics, PerDirection::both(false));
    assert!(c.warnings[0]
        .message
        .starts_with("metrics provider \"stackdriver\" is not known"));

    let text = proxy("")
        + &tel(
            "shop",
            "ns",
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_CONT, mode: BOTH}\n    - match: {metric: ALL_METRICS, customMetric: x}\n",
        );
    let e = errors(&text);
    let got: Vec<_> = e
        .iter()
        .map(|d| (d.field.as_deref().unwrap_or(""), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "spec.metrics[0].overrides[0].match.mode",
                "mode \"BOTH\" is not one of CLIENT_AND_SERVER, CLIENT, SERVER"
            ),
            (
                "spec.metrics[0].overrides[0].match.metric",
                "metric \"REQUEST_CONT\" is not one of Istio's; did you mean `REQUEST_COUNT`?"
            ),
            (
                "spec.metrics[0].overrides[1].match",
                "set metric or customMetric, not both"
            ),
        ]
    );
}

#[test]
fn target_refs_select_no_sidecar() {
    let spec =
        format!("  targetRefs:\n  - group: gateway.networking.k8s.io\n    kind: Gateway\n    name: ingress\n{LOG_ON}");
    let c = ok(&(proxy("") + &tel("shop", "gw", &spec)));
    assert!(
        c.snapshot.telemetry.access_log.is_none(),
        "not applied as namespace-wide"
    );
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(c.warnings[0].field.as_deref(), Some("spec.targetRefs"));
    assert!(c.warnings[0].message.contains("applies to no ringmesh proxy"));

    let both = format!("  selector:\n    matchLabels: {{app: web}}\n{spec}");
    let e = errors(&(proxy("") + &tel("shop", "gw", &both)));
    assert_eq!(e[0].field.as_deref(), Some("spec.targetRefs"));
    assert_eq!(
        e[0].message,
        "set selector or targetRefs, not both (Istio refuses both)"
    );
}

#[test]
fn a_selector_in_the_root_namespace_selects_there_only() {
    let spec = format!("  selector:\n    matchLabels: {{app: web}}\n{LOG_ON}");
    let c = ok(&(proxy("") + &tel("istio-system", "web", &spec)));
    assert!(c.snapshot.telemetry.access_log.is_none());
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert!(c.warnings[0].message.contains("selects workloads of istio-system only"));
}

#[test]
fn access_logging_errors_name_their_fields() {
    let text = proxy("")
        + &tel(
            "shop",
            "ns",
            "  selector:\n    matchLabels: {'': x}\n  accessLogging:\n  - match:\n      mode: INBOUND\n    providers:\n    - {}\n",
        );
    let e = errors(&text);
    let got: Vec<_> = e
        .iter()
        .map(|d| (d.field.as_deref().unwrap_or(""), d.line, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "spec.selector.matchLabels",
                Some(line_of(&text, "matchLabels")),
                "label name \"\" is not valid"
            ),
            (
                "spec.accessLogging[0].match.mode",
                Some(line_of(&text, "mode: INBOUND")),
                "mode \"INBOUND\" is not one of CLIENT_AND_SERVER, CLIENT, SERVER"
            ),
            (
                "spec.accessLogging[0].providers[0].name",
                Some(line_of(&text, "- {}")),
                "provider name is required"
            ),
        ]
    );
}
