//! Distributed tracing end to end: a client-side proxy and a server-side proxy in a chain,
//! both exporting to an in-process OTLP collector (gRPC or HTTP/protobuf), and the app behind
//! them recording the trace fields it got. One trace across both hops with the server's span
//! a child of the client's; a caller's `traceparent` (and its decision) kept; B3 in, B3 out in
//! the same style; nothing exported at 0 % while the context still travels; a dead or stalled
//! collector costs spans, counted, never requests — on io_uring and on epoll.

use std::net::SocketAddr;

use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::otlp::{Collector, ReceivedSpan};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Recorded, Upstream};
use ringmesh_tests::{both_io, IoMode};

/// An inbound HTTP listener (`direction: INBOUND`) named `inbound`.
const INBOUND: &str = "  - name: inbound\n    address: 127.0.0.1:0\n    protocol: HTTP\n    direction: INBOUND\n";

/// The label that marks an endpoint as served by a proxy: the hop between the proxies is
/// HTTP/2 (plaintext here: neither proxy has an identity source).
const MESHED: &[(&str, &str)] = &[("security.istio.io/tlsMode", "istio")];

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn workload(ns: &str, name: &str) -> String {
    format!("  workload:\n    name: {name}\n    namespace: {ns}\n")
}

/// `spec.telemetry.tracing` exporting to `collector` (`grpc: {}` or `http: {}`), flushed
/// every 20 ms.
fn tracing(collector: SocketAddr, protocol: &str, sampling: u32) -> String {
    format!(
        "  telemetry:\n    tracing:\n      sampling: {sampling}\n      opentelemetry:\n        service: {}\n        port: {}\n        {protocol}: {{timeout: 2s}}\n        batch: {{scheduleDelay: 20ms}}\n",
        collector.ip(),
        collector.port()
    )
}

/// app ← server proxy (inbound, workload `shop/reviews`) ← client proxy (outbound, workload
/// `default/client`), each with its own `spec.telemetry` lines.
struct Chain {
    app: Upstream,
    server: TestProxy,
    client: TestProxy,
}

fn chain(io: IoMode, meshed: bool, server_telemetry: &str, client_telemetry: &str) -> Chain {
    let app = Upstream::named("app");
    let server = TestProxy::start(&[
        proxy_config(
            io,
            INBOUND,
            &format!("{}{server_telemetry}", workload("shop", "reviews")),
        ),
        service_entry("reviews", "reviews.shop", 80, &[(app.addr, &[])]),
    ]);
    let labels: &[(&str, &str)] = if meshed { MESHED } else { &[] };
    let client = TestProxy::start(&[
        proxy_config(io, "", &format!("{}{client_telemetry}", workload("default", "client"))),
        service_entry("reviews", "reviews.shop", 80, &[(server.listener("inbound"), labels)]),
    ]);
    Chain { app, server, client }
}

fn get(addr: SocketAddr, extra: &str) -> u16 {
    let mut c = Client::connect(addr);
    c.send(format!("GET /books?id=7 HTTP/1.1\r\nHost: reviews.shop\r\n{extra}\r\n").as_bytes());
    c.response().expect("response").status
}

/// Every value of `name` the app got with its last request.
fn seen(app: &Upstream, name: &str) -> Vec<String> {
    last(app)
        .headers
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

fn last(app: &Upstream) -> Recorded {
    app.received().pop().expect("the app got a request")
}

/// The client proxy's and the server proxy's span, by kind and service.
fn hops(spans: &[ReceivedSpan]) -> (ReceivedSpan, ReceivedSpan) {
    let find = |kind: i32, service: &str| {
        spans
            .iter()
            .find(|s| s.kind() == kind && s.service == service)
            .cloned()
            .unwrap_or_else(|| panic!("no span of kind {kind} from {service}: {spans:#?}"))
    };
    (find(CLIENT, "client.default"), find(SERVER, "reviews.shop"))
}

/// A counter from the proxy's Prometheus text (`name` may carry its labels).
fn counter(p: &TestProxy, name: &str) -> u64 {
    let text = admin_get(p.admin(), "/stats/prometheus").1;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

fn eventually_counter(p: &TestProxy, name: &str, at_least: u64) {
    ringmesh_testkit::eventually(std::time::Duration::from_secs(10), name, || {
        counter(p, name) >= at_least
    })
    .unwrap_or_else(|e| panic!("{e}: {name} = {}", counter(p, name)));
}

/// A request without any trace field through both proxies (the hop between them HTTP/2): the
/// client proxy starts a sampled trace (100 %), the server proxy (0 %) follows its decision;
/// both spans share the trace id, the server's span is the client's child, and the app sees
/// the server's span as its parent in W3C and B3 multi, once each.
fn two_proxies_share_one_trace(io: IoMode) {
    let collector = Collector::grpc();
    let c = chain(
        io,
        true,
        &tracing(collector.addr, "grpc", 0),
        &tracing(collector.addr, "grpc", 100),
    );
    assert_eq!(get(c.client.http(), "User-Agent: tracing-test\r\n"), 200);

    let spans = collector.wait_for(2);
    let (client, server) = hops(&spans);
    assert_eq!(client.trace_id(), server.trace_id(), "one trace");
    assert_eq!(client.parent_span_id(), "", "the trace started at the client proxy");
    assert_eq!(
        server.parent_span_id(),
        client.span_id(),
        "the server's span is the client's child"
    );
    assert_ne!(server.span_id(), client.span_id());

    let trace = client.trace_id();
    assert_eq!(
        seen(&c.app, "traceparent"),
        [format!("00-{trace}-{}-01", server.span_id())]
    );
    assert_eq!(seen(&c.app, "x-b3-traceid"), std::slice::from_ref(&trace));
    assert_eq!(seen(&c.app, "x-b3-spanid"), [server.span_id()]);
    assert_eq!(seen(&c.app, "x-b3-parentspanid"), [client.span_id()]);
    assert_eq!(seen(&c.app, "x-b3-sampled"), ["1"]);
    assert!(seen(&c.app, "b3").is_empty());

    // Envoy's attributes, Istio's names.
    let rid = last(&c.app).header("x-request-id").expect("x-request-id").to_string();
    for s in [&client, &server] {
        assert_eq!(s.attr("guid:x-request-id").as_deref(), Some(rid.as_str()));
        assert_eq!(s.attr("http.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("http.url").as_deref(), Some("http://reviews.shop/books?id=7"));
        assert_eq!(s.attr("http.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("upstream_cluster").as_deref(), Some("outbound|80||reviews.shop"));
        assert_eq!(s.attr("response_flags").as_deref(), Some("-"));
        assert_eq!(s.attr("component").as_deref(), Some("proxy"));
        assert_eq!(s.attr("user_agent").as_deref(), Some("tracing-test"));
        assert_eq!(s.span.name, "reviews.shop:80/*");
        assert!(s.span.end_time_unix_nano > s.span.start_time_unix_nano);
    }
    assert_eq!(client.attr("http.protocol").as_deref(), Some("HTTP/1.1"));
    assert_eq!(
        server.attr("http.protocol").as_deref(),
        Some("HTTP/2"),
        "the hop between proxies"
    );
    assert_eq!(server.attr("istio.namespace").as_deref(), Some("shop"));
    assert_eq!(server.attr("istio.canonical_service").as_deref(), Some("reviews"));
    assert_eq!(client.attr("peer.address").as_deref(), Some("127.0.0.1"));

    eventually_counter(&c.client, "ringmesh_tracing_spans_exported_total", 1);
    eventually_counter(&c.server, "ringmesh_tracing_spans_exported_total", 1);
    assert_eq!(counter(&c.client, "ringmesh_tracing_spans_total"), 1);
    assert_eq!(
        counter(&c.client, "ringmesh_tracing_spans_dropped_total{reason=\"queue_full\"}"),
        0
    );
}

/// A caller's `traceparent` keeps its trace id and its decision (both proxies sample 0 %):
/// the client proxy's span is the caller's child; `tracestate` reaches the app unchanged; only
/// W3C goes on (the caller spoke W3C). Over OTLP/HTTP, from HTTP/1.1 and from HTTP/2 clients.
fn an_incoming_traceparent_keeps_its_trace_id(io: IoMode) {
    let collector = Collector::http();
    let c = chain(
        io,
        false,
        &tracing(collector.addr, "http", 0),
        &tracing(collector.addr, "http", 0),
    );
    let caller = format!("traceparent: 00-{TRACE}-{CALLER_SPAN}-01\r\ntracestate: vendor=opaque,other=1\r\n");
    assert_eq!(get(c.client.http(), &caller), 200);
    let spans = collector.wait_for(2);
    let (client, server) = hops(&spans);
    assert_eq!(
        (client.trace_id(), server.trace_id()),
        (TRACE.to_string(), TRACE.to_string())
    );
    assert_eq!(client.parent_span_id(), CALLER_SPAN);
    assert_eq!(server.parent_span_id(), client.span_id());
    assert_eq!(
        seen(&c.app, "traceparent"),
        [format!("00-{TRACE}-{}-01", server.span_id())]
    );
    assert_eq!(seen(&c.app, "tracestate"), ["vendor=opaque,other=1"]);
    for b3 in ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"] {
        assert!(seen(&c.app, b3).is_empty(), "{b3} sent to a W3C caller's app");
    }

    // An HTTP/2 client, not sampled by its caller: propagated, not exported.
    let mut h2 = H2Client::connect(c.client.http());
    let req = http::Request::get("http://reviews.shop/h2")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-00"))
        .body(())
        .expect("request");
    assert_eq!(h2.request(req, b"", None).status, 200);
    let tp = seen(&c.app, "traceparent");
    assert_eq!(tp.len(), 1);
    assert!(
        tp[0].starts_with(&format!("00-{TRACE}-")) && tp[0].ends_with("-00"),
        "{tp:?}"
    );
    assert!(
        !tp[0].contains(CALLER_SPAN),
        "the server proxy's span is the parent: {tp:?}"
    );
}

/// B3 in, B3 out, in the style it came: single `b3` (a 64-bit trace id, kept at 16 digits),
/// and multi `x-b3-*`; the app sees the server proxy's span with the client proxy's as parent,
/// and no W3C field.
fn b3_in_b3_out(io: IoMode) {
    let collector = Collector::grpc();
    let c = chain(
        io,
        true,
        &tracing(collector.addr, "grpc", 0),
        &tracing(collector.addr, "grpc", 0),
    );
    let short = "a3ce929d0e0e4736";
    assert_eq!(get(c.client.http(), &format!("b3: {short}-{CALLER_SPAN}-1\r\n")), 200);
    let spans = collector.wait_for(2);
    let (client, server) = hops(&spans);
    assert_eq!(client.trace_id(), format!("0000000000000000{short}"));
    assert_eq!(server.trace_id(), client.trace_id());
    assert_eq!(client.parent_span_id(), CALLER_SPAN);
    assert_eq!(server.parent_span_id(), client.span_id());
    assert_eq!(
        seen(&c.app, "b3"),
        [format!("{short}-{}-1-{}", server.span_id(), client.span_id())]
    );
    for other in ["traceparent", "x-b3-traceid", "x-b3-spanid"] {
        assert!(seen(&c.app, other).is_empty(), "{other} sent for a b3 caller");
    }

    let multi = format!("X-B3-TraceId: {TRACE}\r\nX-B3-SpanId: {CALLER_SPAN}\r\nX-B3-Sampled: 1\r\n");
    assert_eq!(get(c.client.http(), &multi), 200);
    let spans = collector.wait_for(4);
    let ours: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.trace_id() == TRACE).collect();
    let (client, server) = hops(&ours);
    assert_eq!(client.parent_span_id(), CALLER_SPAN);
    assert_eq!(seen(&c.app, "x-b3-traceid"), [TRACE]);
    assert_eq!(seen(&c.app, "x-b3-spanid"), [server.span_id()]);
    assert_eq!(seen(&c.app, "x-b3-parentspanid"), [client.span_id()]);
    assert_eq!(seen(&c.app, "x-b3-sampled"), ["1"]);
    assert!(seen(&c.app, "traceparent").is_empty() && seen(&c.app, "b3").is_empty());
}

/// At 0 % nothing is exported, yet every request carries a context (not sampled) to the app,
/// a new trace each. The proof that nothing was exported: a request its caller sampled, sent
/// after them, has its two spans arrive alone (a span of an earlier request would have been
/// handed over first).
fn zero_sampling_exports_nothing_but_propagates(io: IoMode) {
    let collector = Collector::grpc();
    let c = chain(
        io,
        true,
        &tracing(collector.addr, "grpc", 0),
        &tracing(collector.addr, "grpc", 0),
    );
    let mut traces = std::collections::BTreeSet::new();
    for _ in 0..5 {
        assert_eq!(get(c.client.http(), ""), 200);
        let tp = seen(&c.app, "traceparent");
        assert_eq!(tp.len(), 1);
        assert!(tp[0].ends_with("-00"), "not sampled: {tp:?}");
        assert_eq!(seen(&c.app, "x-b3-sampled"), ["0"]);
        traces.insert(tp[0][3..35].to_string());
    }
    assert_eq!(traces.len(), 5, "a new trace per request");

    assert_eq!(
        get(
            c.client.http(),
            &format!("traceparent: 00-{TRACE}-{CALLER_SPAN}-01\r\n")
        ),
        200
    );
    let spans = collector.wait_for(2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id() == TRACE));
    assert_eq!(counter(&c.client, "ringmesh_tracing_spans_total"), 1);
    assert_eq!(counter(&c.server, "ringmesh_tracing_spans_total"), 1);
}

/// A collector nobody listens on: requests are answered as ever; the failed exports and their
/// spans are counted.
fn a_dead_collector_drops_and_counts(io: IoMode) {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let app = Upstream::named("app");
    let p = TestProxy::start(&[
        proxy_config(
            io,
            "",
            &format!("{}{}", workload("default", "client"), tracing(dead, "grpc", 100)),
        ),
        service_entry("reviews", "reviews.shop", 80, &[(app.addr, &[])]),
    ]);
    for _ in 0..3 {
        assert_eq!(get(p.http(), ""), 200);
    }
    eventually_counter(&p, "ringmesh_tracing_export_failures_total", 1);
    eventually_counter(&p, "ringmesh_tracing_spans_dropped_total{reason=\"export_failed\"}", 3);
    assert_eq!(counter(&p, "ringmesh_tracing_spans_exported_total"), 0);
    assert_eq!(counter(&p, "ringmesh_tracing_spans_total"), 3);
    assert_eq!(get(p.http(), ""), 200);
}

/// A collector that never answers holds one export in flight for its timeout; the queue (one
/// span) fills, and every span after it is dropped and counted while requests keep being
/// answered.
fn a_stalled_collector_fills_the_queue(io: IoMode) {
    let stalled = Collector::stalled();
    let app = Upstream::named("app");
    let telemetry = format!(
        "  telemetry:\n    tracing:\n      sampling: 100\n      opentelemetry:\n        service: 127.0.0.1\n        port: {}\n        http: {{timeout: 30s}}\n        batch: {{maxExportBatchSize: 1, maxQueueSize: 1, scheduleDelay: 10ms}}\n",
        stalled.addr.port()
    );
    let p = TestProxy::start(&[
        proxy_config(io, "", &format!("{}{telemetry}", workload("default", "client"))),
        service_entry("reviews", "reviews.shop", 80, &[(app.addr, &[])]),
    ]);
    let mut sent = 0;
    ringmesh_testkit::eventually(
        std::time::Duration::from_secs(10),
        "spans dropped for a full queue",
        || {
            assert_eq!(get(p.http(), ""), 200);
            sent += 1;
            counter(&p, "ringmesh_tracing_spans_dropped_total{reason=\"queue_full\"}") >= 1
        },
    )
    .unwrap_or_else(|e| panic!("{e} after {sent} requests"));
    assert_eq!(counter(&p, "ringmesh_tracing_spans_exported_total"), 0);
    assert_eq!(
        counter(&p, "ringmesh_tracing_export_failures_total"),
        0,
        "the one export still waits"
    );
    assert_eq!(app.count(), sent);
}

both_io!(
    two_proxies_share_one_trace,
    an_incoming_traceparent_keeps_its_trace_id,
    b3_in_b3_out,
    zero_sampling_exports_nothing_but_propagates,
    a_dead_collector_drops_and_counts,
    a_stalled_collector_fills_the_queue,
);
