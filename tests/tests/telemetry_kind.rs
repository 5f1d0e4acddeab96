//! Istio's `Telemetry` kind end to end, on io_uring and on epoll: the mesh's `Telemetry` turns
//! the ProxyConfig's access log off, and a namespace's, added while the proxy runs, turns it
//! back on with `response.code >= 400` (a success left out, a 404, a 503 and an RBAC denial
//! logged); the mesh's alone writes Istio's JSON to `/dev/stdout` for the server side only;
//! client-side metrics turned off while the server side is still counted; tracing sampling and
//! span reporting from a `Telemetry` over the ProxyConfig's; a filter ringmesh cannot evaluate
//! refused at start and on reload, naming the field; and `Telemetry`s pushed by the control
//! plane, the root namespace's reaching every proxy, a namespace's only its own.
//!
//! Synchronisation: a request's metrics, access-log line and span are all recorded by the
//! worker in one step when the request ends, right after `ringmesh_request_duration_seconds`
//! counts it, and the admin side reads a worker's figures on that worker. So once that count
//! reaches the number of requests sent, whatever those requests were going to record has
//! been recorded, and the absence of a line, a series or a span means something.

use std::net::SocketAddr;
use std::time::Duration;

use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::control::{subscribe, TestControlPlane};
use ringmesh_tests::otlp::Collector;
use ringmesh_tests::proxy::{proxy_config, service_entry, temp_dir, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};
use serde_json::Value;

/// How long a test waits for a reload, a push or a count.
const WAIT: Duration = Duration::from_secs(10);

/// An inbound HTTP listener (`direction: INBOUND`) named `inbound`.
const INBOUND: &str = "  - name: inbound\n    address: 127.0.0.1:0\n    protocol: HTTP\n    direction: INBOUND\n";

/// The proxy's workload: `shop/reviews-v1`.
const WORKLOAD: &str = "  workload:\n    name: reviews-v1\n    namespace: shop\n    serviceAccount: reviews\n    labels: {app: reviews, version: v1}\n";

fn telemetry(namespace: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}")
}

/// The documents of a proxy with an outbound listener (services `echo.test` and `empty.test`),
/// an inbound one guarding `shop/reviews-v1` with a DENY on `/admin`, `telemetry` as its
/// `spec.telemetry`, and `more`.
fn docs(io: IoMode, up: &Upstream, telemetry: &str, more: &[String]) -> Vec<String> {
    let spec = format!("{WORKLOAD}  telemetry:\n{telemetry}");
    let mut docs = vec![
        proxy_config(io, INBOUND, &spec),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: empty\nspec:\n  hosts: [empty.test]\n  \
         ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: []\n"
            .to_string(),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-admin\n  namespace: shop\nspec:\n  \
         action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/admin]\n"
            .to_string(),
    ];
    docs.extend_from_slice(more);
    docs
}

fn status(addr: SocketAddr, path: &str, host: &str) -> u16 {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    c.response().expect("response").status
}

fn prometheus(p: &TestProxy) -> String {
    admin_get(p.metrics(), "/stats/prometheus").1
}

/// The value of the sample line `series` (a name, with its labels if it has any), if present.
fn sample(p: &TestProxy, series: &str) -> Option<u64> {
    prometheus(p)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the proxy has finished `n` requests (see the module's paragraph): everything
/// they record is recorded.
fn finished(p: &TestProxy, n: u64) {
    let name = "ringmesh_request_duration_seconds_count";
    ringmesh_testkit::eventually(WAIT, &format!("{n} requests finished"), || sample(p, name) == Some(n))
        .unwrap_or_else(|e| panic!("{e}: {name} = {:?}", sample(p, name)));
}

fn config_dump(p: &TestProxy) -> Value {
    serde_json::from_str(&admin_get(p.admin(), "/config_dump").1).expect("config dump is JSON")
}

/// Waits until the running snapshot's `spec.telemetry` passes `applied`.
fn telemetry_applied(p: &TestProxy, what: &str, applied: impl Fn(&Value) -> bool) {
    ringmesh_testkit::eventually(WAIT, what, || applied(&config_dump(p)["snapshot"]["telemetry"]))
        .unwrap_or_else(|e| panic!("{e}: {}", config_dump(p)["snapshot"]["telemetry"]));
}

/// The mesh's `Telemetry` turns the ProxyConfig's access log off; a namespace's, added while
/// the proxy runs, turns it back on with `response.code >= 400`: a success is not logged on
/// either side, a 404, a 503 and an RBAC denial are, each in the ProxyConfig's file.
fn a_namespace_telemetry_turns_the_log_on_for_errors_only(io: IoMode) {
    let up = Upstream::named("hello");
    let dir = temp_dir();
    let path = dir.path().join("access.log");
    let log = format!("    accessLog:\n      path: {}\n", path.display());
    let mesh_off = telemetry(
        "istio-system",
        "mesh-default",
        "  accessLogging:\n  - providers:\n    - name: envoy\n    disabled: true\n",
    );
    let p = TestProxy::start(&docs(io, &up, &log, std::slice::from_ref(&mesh_off)));
    assert_eq!(config_dump(&p)["snapshot"]["telemetry"]["access_log"], Value::Null);
    // Off: neither a success nor an error is logged (they would be the file's first lines).
    assert_eq!(status(p.http(), "/before", "echo.test"), 200);
    assert_eq!(status(p.http(), "/before", "nowhere.test"), 404);
    finished(&p, 2);
    assert_eq!(sample(&p, "ringmesh_access_log_lines_total"), Some(0));

    let errors_only = telemetry(
        "shop",
        "errors-only",
        "  accessLogging:\n  - providers:\n    - name: envoy\n    filter:\n      expression: response.code >= 400\n",
    );
    p.rewrite(&docs(io, &up, &log, &[mesh_off, errors_only]));
    telemetry_applied(&p, "the namespace's Telemetry applies", |t| {
        let f = &t["access_log"]["filter"];
        f["inbound"]["Status"]["value"] == 400 && f["outbound"]["Status"]["op"] == "Ge"
    });

    assert_eq!(status(p.http(), "/ok", "echo.test"), 200);
    assert_eq!(status(p.http(), "/nope", "nowhere.test"), 404);
    assert_eq!(status(p.http(), "/e", "empty.test"), 503);
    assert_eq!(status(p.listener("inbound"), "/admin", "echo.test"), 403);
    assert_eq!(
        status(p.listener("inbound"), "/fine", "echo.test"),
        200,
        "allowed inbound"
    );
    finished(&p, 7);
    assert_eq!(sample(&p, "ringmesh_access_log_lines_total"), Some(3));

    let mut lines = Vec::new();
    ringmesh_testkit::eventually(WAIT, "three lines written", || {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        lines.len() >= 3
    })
    .unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    let got: Vec<(u64, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["response_code"].as_u64().unwrap_or(0),
                l["path"].as_str().unwrap_or(""),
                l["response_flags"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(got, [(404, "/nope", "NR"), (503, "/e", "UH"), (403, "/admin", "RBAC")]);
}

/// Without an access log in the ProxyConfig, the mesh's `Telemetry` with the `envoy` provider
/// turns it on, as Istio's built-in provider: JSON to `/dev/stdout`. `match.mode: SERVER` logs
/// the requests the workload receives only.
fn the_mesh_telemetry_alone_logs_the_server_side_to_stdout(io: IoMode) {
    let up = Upstream::named("hello");
    let mesh = telemetry(
        "istio-system",
        "mesh-default",
        "  accessLogging:\n  - providers:\n    - name: envoy\n    match:\n      mode: SERVER\n",
    );
    let p = TestProxy::start(&docs(io, &up, "    reasonHeader: true\n", &[mesh]));
    let dump = config_dump(&p);
    let log = &dump["snapshot"]["telemetry"]["access_log"];
    assert_eq!(log["path"], "/dev/stdout");
    assert!(log["format"].get("Json").is_some(), "{log}");
    assert_eq!(log["filter"]["inbound"], "Always");
    assert_eq!(log["filter"]["outbound"], "Never");
    assert_eq!(status(p.http(), "/out", "echo.test"), 200);
    assert_eq!(status(p.http(), "/nope", "nowhere.test"), 404);
    assert_eq!(status(p.listener("inbound"), "/admin", "echo.test"), 403);
    finished(&p, 3);
    assert_eq!(
        sample(&p, "ringmesh_access_log_lines_total"),
        Some(1),
        "the inbound request only"
    );
}

/// Istio's documented "disable client metrics": the requests the workload sends are not
/// counted (no series with `reporter="source"`), those it receives are; without the
/// `Telemetry` the client side is counted again.
fn client_side_metrics_turned_off(io: IoMode) {
    let up = Upstream::named("hello");
    let off = telemetry(
        "istio-system",
        "mesh-default",
        "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    - match:\n        metric: ALL_METRICS\n        \
         mode: CLIENT\n      disabled: true\n",
    );
    let p = TestProxy::start(&docs(io, &up, "    reasonHeader: true\n", &[off]));
    assert_eq!(
        config_dump(&p)["snapshot"]["telemetry"]["istio_metrics"],
        serde_json::json!({"inbound": true, "outbound": false})
    );
    assert_eq!(status(p.http(), "/out", "echo.test"), 200);
    assert_eq!(status(p.http(), "/out", "echo.test"), 200);
    assert_eq!(status(p.http(), "/e", "empty.test"), 503);
    assert_eq!(status(p.listener("inbound"), "/in", "echo.test"), 200);
    assert_eq!(status(p.listener("inbound"), "/admin", "echo.test"), 403);
    finished(&p, 5);
    let m = prometheus(&p);
    let source: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("istio_") && l.contains("reporter=\"source\""))
        .collect();
    assert!(source.is_empty(), "client side counted: {source:#?}");
    let requests: Vec<&str> = m.lines().filter(|l| l.starts_with("istio_requests_total{")).collect();
    assert_eq!(requests.len(), 2, "{m}");
    for code in ["200", "403"] {
        assert!(
            requests.iter().any(|l| l.contains("reporter=\"destination\"")
                && l.contains(&format!("response_code=\"{code}\""))
                && l.ends_with(" 1")),
            "the inbound {code} counted once: {requests:#?}"
        );
    }

    // The Telemetry removed: the client side is counted again.
    p.rewrite(&docs(io, &up, "    reasonHeader: true\n", &[]));
    telemetry_applied(&p, "Istio's metrics on both ways", |t| {
        t["istio_metrics"] == serde_json::json!({"inbound": true, "outbound": true})
    });
    assert_eq!(status(p.http(), "/out", "echo.test"), 200);
    finished(&p, 6);
    let m = prometheus(&p);
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"source\"")
            && l.contains("response_code=\"200\"")
            && l.ends_with(" 1")),
        "{m}"
    );
}

/// `spec.telemetry.tracing` of a proxy sampling at `sampling` %, exporting to `collector` if
/// any, flushed every 20 ms.
fn tracing(sampling: u32, collector: Option<SocketAddr>) -> String {
    let mut s = format!("    tracing:\n      sampling: {sampling}\n");
    if let Some(c) = collector {
        s.push_str(&format!(
            "      opentelemetry:\n        service: {}\n        port: {}\n        grpc: {{timeout: 2s}}\n        \
             batch: {{scheduleDelay: 20ms}}\n",
            c.ip(),
            c.port()
        ));
    }
    s
}

/// The `traceparent` the upstream got with its last request.
fn traceparent(up: &Upstream) -> String {
    let last = up.received().pop().expect("the upstream got a request");
    let tp: Vec<&str> = last
        .headers
        .iter()
        .filter(|(n, _)| n == "traceparent")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tp.len(), 1, "{:?}", last.headers);
    tp[0].to_string()
}

/// The ProxyConfig samples nothing; a namespace's `Telemetry` with
/// `randomSamplingPercentage: 100` overrides it (seen in `/config_dump` and in the sampled flag
/// the upstream gets), and a workload's own `Telemetry` overrides the namespace's back to 0.
fn telemetry_sampling_overrides_the_proxy_config(io: IoMode) {
    let up = Upstream::named("hello");
    let spec = tracing(0, None);
    let p = TestProxy::start(&docs(io, &up, &spec, &[]));
    let t = &config_dump(&p)["snapshot"]["telemetry"]["tracing"];
    assert_eq!(
        (t["enabled"].as_bool(), t["sampling"].as_f64()),
        (Some(true), Some(0.0)),
        "{t}"
    );
    assert_eq!(status(p.http(), "/a", "echo.test"), 200);
    assert!(traceparent(&up).ends_with("-00"), "not sampled: {}", traceparent(&up));

    let all = telemetry("shop", "sample-all", "  tracing:\n  - randomSamplingPercentage: 100\n");
    p.rewrite(&docs(io, &up, &spec, std::slice::from_ref(&all)));
    telemetry_applied(&p, "the namespace's sampling", |t| t["tracing"]["sampling"] == 1.0);
    for _ in 0..3 {
        assert_eq!(status(p.http(), "/b", "echo.test"), 200);
        assert!(traceparent(&up).ends_with("-01"), "sampled: {}", traceparent(&up));
    }

    let none = telemetry(
        "shop",
        "reviews-none",
        "  selector:\n    matchLabels: {app: reviews}\n  tracing:\n  - randomSamplingPercentage: 0\n",
    );
    p.rewrite(&docs(io, &up, &spec, &[all, none]));
    telemetry_applied(&p, "the workload's sampling", |t| t["tracing"]["sampling"] == 0.0);
    assert_eq!(status(p.http(), "/c", "echo.test"), 200);
    assert!(traceparent(&up).ends_with("-00"), "not sampled: {}", traceparent(&up));
}

/// `disableSpanReporting: true`: a sampled request still carries its sampled context to the
/// upstream, and no span is made; with reporting back on, the next request's span is the only
/// one the collector gets (a span of the earlier request would have been handed over first).
fn disable_span_reporting_keeps_the_context(io: IoMode) {
    let collector = Collector::grpc();
    let up = Upstream::named("hello");
    let spec = tracing(100, Some(collector.addr));
    let quiet = telemetry(
        "istio-system",
        "mesh-default",
        "  tracing:\n  - disableSpanReporting: true\n",
    );
    let p = TestProxy::start(&docs(io, &up, &spec, &[quiet]));
    assert_eq!(
        config_dump(&p)["snapshot"]["telemetry"]["tracing"]["report_spans"],
        false
    );
    assert_eq!(status(p.http(), "/quiet", "echo.test"), 200);
    let first = traceparent(&up);
    assert!(first.ends_with("-01"), "sampled and propagated: {first}");
    finished(&p, 1);
    assert_eq!(sample(&p, "ringmesh_tracing_spans_total"), Some(0));

    let loud = telemetry(
        "istio-system",
        "mesh-default",
        "  tracing:\n  - disableSpanReporting: false\n",
    );
    p.rewrite(&docs(io, &up, &spec, &[loud]));
    telemetry_applied(&p, "span reporting on", |t| t["tracing"]["report_spans"] == true);
    assert_eq!(status(p.http(), "/loud", "echo.test"), 200);
    let second = traceparent(&up);
    let spans = collector.wait_for(1);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(
        spans[0].trace_id(),
        second[3..35],
        "the second request's ({first} was not reported)"
    );
    assert_eq!(sample(&p, "ringmesh_tracing_spans_total"), Some(1));
}

const UNSUPPORTED_FILTER: &str =
    "  accessLogging:\n  - providers:\n    - name: envoy\n    filter:\n      expression: \"request.url_path.startsWith('/api')\"\n";

fn names_the_unsupported_filter(msg: &str) -> bool {
    msg.contains("Telemetry istio-system/mesh-default")
        && msg.contains("spec.accessLogging[0].filter.expression")
        && msg.contains("is not supported: ringmesh evaluates `response.code`")
}

/// A filter ringmesh cannot evaluate is refused when the config compiles, naming the resource
/// and the field: at start the proxy does not start; on reload the running config stays (the
/// log still filters as before) and `/config_dump` says why.
fn an_unsupported_filter_is_refused(io: IoMode) {
    let up = Upstream::named("hello");
    let bad = telemetry("istio-system", "mesh-default", UNSUPPORTED_FILTER);
    let err = TestProxy::try_start(&docs(io, &up, "    reasonHeader: true\n", std::slice::from_ref(&bad)))
        .expect_err("an unsupported filter must not start");
    let msg = format!("{err:#}");
    assert!(names_the_unsupported_filter(&msg), "{msg}");

    let dir = temp_dir();
    let path = dir.path().join("access.log");
    let log = format!("    accessLog:\n      path: {}\n", path.display());
    let errors_only = telemetry(
        "istio-system",
        "mesh-default",
        "  accessLogging:\n  - providers:\n    - name: envoy\n    filter:\n      expression: response.code >= 500\n",
    );
    let p = TestProxy::start(&docs(io, &up, &log, &[errors_only]));
    p.rewrite(&docs(io, &up, &log, &[bad]));
    ringmesh_testkit::eventually(WAIT, "the reload refused", || {
        config_dump(&p)["last_reload_error"]
            .as_str()
            .is_some_and(names_the_unsupported_filter)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", config_dump(&p)["last_reload_error"]));
    assert_eq!(status(p.http(), "/api/x", "echo.test"), 200);
    assert_eq!(status(p.http(), "/e", "empty.test"), 503);
    finished(&p, 2);
    assert_eq!(sample(&p, "ringmesh_access_log_lines_total"), Some(1), "the 503 only");
}

/// A proxy subscribed to `cp` as workload `namespace/name` with `app: name`, tracing on (so
/// that a `Telemetry`'s sampling applies) and no access log of its own.
fn subscribed(io: IoMode, cp: &TestControlPlane, namespace: &str, name: &str) -> TestProxy {
    let spec = subscribe(cp.addr, name, &[], None, &[("app", name)]).replace(
        &format!("    name: {name}\n"),
        &format!("    name: {name}\n    namespace: {namespace}\n"),
    );
    TestProxy::start(&[proxy_config(
        io,
        INBOUND,
        &format!("{spec}  telemetry:\n    tracing: {{}}\n"),
    )])
}

/// `Telemetry`s from the control plane: the root namespace's (sampling 25 %) reaches both
/// proxies; `shop`'s (an access log for 5xx, sampling 50 %) only the `shop` proxy; a
/// `Telemetry` of `blog` selecting `app: api` only the `blog` proxy. A change of the root
/// namespace's is pushed to both.
fn the_control_plane_sends_telemetry_by_namespace(io: IoMode) {
    let dir = temp_dir();
    let root = |pct: u32| {
        telemetry(
            "istio-system",
            "mesh-default",
            &format!("  tracing:\n  - randomSamplingPercentage: {pct}\n"),
        )
    };
    let shop = telemetry(
        "shop",
        "shop-errors",
        "  accessLogging:\n  - providers:\n    - name: envoy\n    filter:\n      expression: response.code >= 500\n  \
         tracing:\n  - randomSamplingPercentage: 50\n",
    );
    let blog_api = telemetry(
        "blog",
        "api-metrics-off",
        "  selector:\n    matchLabels: {app: api}\n  metrics:\n  - overrides:\n    - disabled: true\n",
    );
    let cp = TestControlPlane::start(dir.path(), &[root(25), shop.clone(), blog_api.clone()]);
    let web = subscribed(io, &cp, "shop", "web");
    let api = subscribed(io, &cp, "blog", "api");

    telemetry_applied(&web, "shop/web: the root's and shop's", |t| {
        t["tracing"]["sampling"] == 0.5
            && t["access_log"]["filter"]["inbound"]["Status"]["value"] == 500
            && t["istio_metrics"] == serde_json::json!({"inbound": true, "outbound": true})
    });
    telemetry_applied(&api, "blog/api: the root's and its own", |t| {
        t["tracing"]["sampling"] == 0.25
            && t["access_log"].is_null()
            && t["istio_metrics"] == serde_json::json!({"inbound": false, "outbound": false})
    });

    let web_version = config_dump(&web)["version"].as_u64().expect("version");
    cp.apply(&[root(10), shop, blog_api]);
    telemetry_applied(&api, "blog/api: the root's change", |t| t["tracing"]["sampling"] == 0.1);
    // The same push reaches shop/web, whose namespace's sampling still overrides the root's.
    ringmesh_testkit::eventually(WAIT, "shop/web: the push applied", || {
        config_dump(&web)["version"].as_u64() > Some(web_version)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", config_dump(&web)["version"]));
    let t = &config_dump(&web)["snapshot"]["telemetry"];
    assert_eq!(t["tracing"]["sampling"], 0.5, "{t}");
    assert_eq!(t["access_log"]["filter"]["outbound"]["Status"]["value"], 500, "{t}");
}

both_io!(
    a_namespace_telemetry_turns_the_log_on_for_errors_only,
    the_mesh_telemetry_alone_logs_the_server_side_to_stdout,
    client_side_metrics_turned_off,
    telemetry_sampling_overrides_the_proxy_config,
    disable_span_reporting_keeps_the_context,
    an_unsupported_filter_is_refused,
    the_control_plane_sends_telemetry_by_namespace,
);
