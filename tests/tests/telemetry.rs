//! What the proxy tells about the traffic it carries, end to end: access-log lines (every
//! field, for a success, a 404, a 503 and an RBAC denial; text formats; a typo refused),
//! Istio's standard metrics with their labels, the proxy's own latency in HDR against what the
//! client measured, and the reason header on local replies — on io_uring and on epoll.

use std::time::{Duration, Instant};

use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::observe::series_value;
use ringmesh_tests::proxy::{proxy_config, service_entry, temp_dir, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};
use serde_json::Value;

/// An inbound HTTP listener (`direction: INBOUND`) named `inbound`.
const INBOUND: &str = "  - name: inbound\n    address: 127.0.0.1:0\n    protocol: HTTP\n    direction: INBOUND\n";

const WORKLOAD: &str = "  workload:\n    name: reviews-v1\n    namespace: shop\n    serviceAccount: reviews\n    labels: {app: reviews, version: v1}\n    services: [reviews.shop.svc.cluster.local]\n    addresses: [127.0.0.9]\n    ports: {http: 9080}\n";

fn empty_service() -> String {
    "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: empty\nspec:\n  hosts: [\"empty.test\"]\n  ports:\n  - number: 80\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints: []\n".to_string()
}

fn deny_admin() -> String {
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-admin\n  namespace: shop\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/admin]\n".to_string()
}

/// A proxy with an outbound listener (services `echo.test` and `empty.test`), an inbound one
/// guarding the workload `shop/reviews-v1` with a DENY on `/admin`, and `telemetry` as its
/// `spec.telemetry`.
fn proxy(io: IoMode, up: &Upstream, telemetry: &str) -> TestProxy {
    let spec = format!("{WORKLOAD}  telemetry:\n{telemetry}");
    TestProxy::start(&[
        proxy_config(io, INBOUND, &spec),
        service_entry(
            "echo",
            "echo.test",
            80,
            &[(up.addr, &[("app", "echo"), ("version", "v2")])],
        ),
        empty_service(),
        deny_admin(),
    ])
}

fn lines_of(path: &std::path::Path, want: usize) -> Vec<String> {
    let lines = ringmesh_tests::observe::log_lines(path, want);
    assert_eq!(lines.len(), want, "{lines:?}");
    lines
}

fn request(addr: std::net::SocketAddr, head: &str) -> ringmesh_tests::client::Response {
    let mut c = Client::connect(addr);
    c.send(head.as_bytes());
    c.response().expect("response")
}

/// JSON lines (the default) carry every field Istio's default has, and ringmesh's, for a
/// success, a 404, a 503 and an RBAC denial.
fn json_access_log_fields(io: IoMode) {
    let up = Upstream::named("hello");
    let dir = temp_dir();
    let path = dir.path().join("access.log");
    let p = proxy(io, &up, &format!("    accessLog:\n      path: {}\n", path.display()));

    let ok = request(
        p.http(),
        "POST /ok?x=1 HTTP/1.1\r\nHost: echo.test\r\nUser-Agent: test-agent\r\nX-Request-Id: rid-1\r\nX-Forwarded-For: 10.9.9.9\r\nContent-Length: 4\r\n\r\nbody",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        request(p.http(), "GET /nope HTTP/1.1\r\nHost: nowhere.test\r\n\r\n").status,
        404
    );
    let unavailable = request(p.http(), "GET /e HTTP/1.1\r\nHost: empty.test\r\n\r\n");
    assert_eq!(unavailable.status, 503);
    let denied = request(p.listener("inbound"), "GET /admin HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    assert_eq!(denied.status, 403);

    let lines = lines_of(&path, 4);
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (ok_l, nr, uh, rbac) = (&parsed[0], &parsed[1], &parsed[2], &parsed[3]);

    let start = ok_l["start_time"].as_str().expect("start_time");
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T' && start.as_bytes()[19] == b'.',
        "{start}"
    );
    assert_eq!(ok_l["method"], "POST");
    assert_eq!(ok_l["path"], "/ok?x=1");
    assert_eq!(ok_l["protocol"], "HTTP/1.1");
    assert_eq!(ok_l["response_code"], 200);
    assert_eq!(ok_l["response_flags"], "-");
    assert_eq!(ok_l["response_code_details"], "via_upstream");
    assert_eq!(ok_l["bytes_received"], 4);
    assert_eq!(ok_l["bytes_sent"], 5, "the upstream's body is {:?}", ok.text());
    assert!(ok_l["duration"].as_u64().is_some());
    assert!(ok_l["upstream_service_time"].as_u64().is_some());
    assert_eq!(ok_l["x_forwarded_for"], "10.9.9.9");
    assert_eq!(ok_l["user_agent"], "test-agent");
    assert_eq!(ok_l["request_id"], "rid-1");
    assert_eq!(ok_l["authority"], "echo.test");
    assert_eq!(ok_l["upstream_host"], up.addr.to_string());
    assert_eq!(ok_l["upstream_cluster"], "outbound|80||echo.test");
    assert!(ok_l["downstream_remote_address"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(ok_l["route_name"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(ok_l["proxy_overhead_us"].as_u64().is_some_and(|us| us > 0));
    assert_eq!(ok_l["authorization"], Value::Null, "no policy applies outbound");
    assert_eq!(ok_l["grpc_status"], Value::Null);

    assert_eq!(nr["response_code"], 404);
    assert_eq!(nr["response_flags"], "NR");
    assert_eq!(nr["response_code_details"], "route_not_found");
    assert_eq!(nr["upstream_cluster"], Value::Null);
    assert_eq!(nr["upstream_host"], Value::Null);
    assert_eq!(nr["route_name"], Value::Null);
    assert_eq!(nr["proxy_overhead_us"], Value::Null);
    assert_eq!(nr["bytes_sent"], "no route\n".len());

    assert_eq!(uh["response_code"], 503);
    assert_eq!(uh["response_flags"], "UH");
    assert_eq!(uh["response_code_details"], "no_healthy_upstream");
    assert_eq!(uh["upstream_cluster"], "outbound|80||empty.test");
    assert_eq!(uh["upstream_service_time"], Value::Null);

    assert_eq!(rbac["response_code"], 403);
    assert_eq!(rbac["response_flags"], "RBAC");
    assert_eq!(rbac["response_code_details"], "rbac_access_denied");
    assert_eq!(rbac["authorization"], "deny shop/deny-admin");
    assert!(rbac["downstream_local_address"]
        .as_str()
        .is_some_and(|a| a == p.listener("inbound").to_string()));
    assert_eq!(up.count(), 1, "only the success reached the app");

    let metrics = admin_get(p.admin(), "/stats/prometheus").1;
    assert!(metrics.contains("ringmesh_access_log_lines_total 4\n"), "{metrics}");
    assert!(metrics.contains("ringmesh_access_log_dropped_total 0\n"), "{metrics}");
}

/// A text format of the user's: exactly the fields asked for, `-` for what is missing.
fn text_access_log(io: IoMode) {
    let up = Upstream::named("a");
    let dir = temp_dir();
    let path = dir.path().join("text.log");
    let p = proxy(
        io,
        &up,
        &format!(
            "    accessLog:\n      path: {}\n      encoding: TEXT\n      format: '%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% \"%REQ(X-MISSING)%\" %REQ(USER-AGENT):4% 100%%'\n",
            path.display()
        ),
    );
    request(
        p.http(),
        "GET /a HTTP/1.1\r\nHost: echo.test\r\nUser-Agent: curl/8\r\n\r\n",
    );
    request(p.http(), "GET /b HTTP/1.1\r\nHost: empty.test\r\n\r\n");
    let lines = lines_of(&path, 2);
    assert_eq!(lines[0], "GET /a 200 - outbound|80||echo.test \"-\" curl 100%");
    assert_eq!(lines[1], "GET /b 503 UH outbound|80||empty.test \"-\" - 100%");
}

/// A typo in a format is refused when the config compiles, naming the field and the operator.
#[test]
fn an_unknown_operator_is_refused() {
    let err = TestProxy::try_start(&[proxy_config(
        IoMode::Epoll,
        "",
        "  telemetry:\n    accessLog:\n      encoding: TEXT\n      format: '%STRAT_TIME% %REQ(:METHOD)%'\n",
    )])
    .expect_err("a typo must not start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("spec.telemetry.accessLog.format") && msg.contains("%STRAT_TIME% is not a supported operator"),
        "{msg}"
    );
}

/// Istio's metrics: the request counted under Istio's labels on both reporters, its duration
/// and sizes in Istio's buckets, local replies with their flags.
fn istio_standard_metrics(io: IoMode) {
    let up = Upstream::named("hello");
    let p = proxy(io, &up, "    reasonHeader: true\n");
    for _ in 0..3 {
        assert_eq!(
            request(
                p.http(),
                "POST /x HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 2\r\n\r\nhi"
            )
            .status,
            200
        );
    }
    request(p.http(), "GET /e HTTP/1.1\r\nHost: empty.test\r\n\r\n");
    request(p.listener("inbound"), "GET /admin HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    let m = admin_get(p.metrics(), "/stats/prometheus").1;
    let ok = [
        "reporter=\"source\"",
        "source_workload=\"reviews-v1\"",
        "source_workload_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/reviews\"",
        "source_app=\"reviews\"",
        "source_version=\"v1\"",
        "destination_app=\"echo\"",
        "destination_version=\"v2\"",
        "destination_service=\"echo.test\"",
        "destination_service_name=\"echo.test\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
        "grpc_response_status=\"\"",
        "connection_security_policy=\"unknown\"",
    ];
    assert_eq!(series_value(&m, "istio_requests_total", &ok), Some(3.0), "{m}");
    assert_eq!(
        series_value(&m, "istio_request_duration_milliseconds_count", &ok),
        Some(3.0),
        "{m}"
    );
    let mut bucket = ok.to_vec();
    bucket.push("le=\"10\"");
    assert_eq!(
        series_value(&m, "istio_request_bytes_bucket", &bucket),
        Some(3.0),
        "{m}"
    );
    assert_eq!(series_value(&m, "istio_request_bytes_sum", &ok), Some(6.0), "{m}");
    assert_eq!(series_value(&m, "istio_response_bytes_sum", &ok), Some(15.0), "{m}");
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "destination_service=\"empty.test\"",
                "response_code=\"503\"",
                "response_flags=\"UH\""
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "source_principal=\"unknown\"",
                "destination_workload=\"reviews-v1\"",
                "destination_service=\"reviews.shop.svc.cluster.local\"",
                "destination_service_name=\"reviews\"",
                "destination_service_namespace=\"shop\"",
                "response_code=\"403\"",
                "response_flags=\"RBAC\"",
                "connection_security_policy=\"none\"",
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains("ringmesh_istio_series_overflow_total 0\n"), "{m}");

    // The proxy's own families beside Istio's.
    assert!(
        m.contains("ringmesh_worker_downstream_rq_total{worker=\"0\"} 5\n"),
        "{m}"
    );
    assert!(
        m.contains("ringmesh_cluster_endpoints{cluster_name=\"outbound|80||echo.test\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("ringmesh_cluster_upstream_rq_retry_total{cluster_name=\"outbound|80||echo.test\"} 0\n"),
        "{m}"
    );
    let io = if matches!(io, IoMode::IoUring) {
        "io_uring"
    } else {
        "epoll"
    };
    assert!(m.contains(&format!("io_driver=\"{io}\"}} 1\n")), "{m}");
    assert!(m.lines().any(|l| l.starts_with("ringmesh_config_version ")), "{m}");
}

/// The series bound holds: past `maxSeries` label sets, requests are counted as overflow.
fn istio_series_are_bounded(io: IoMode) {
    let up = Upstream::named("a");
    let p = proxy(io, &up, "    metrics:\n      maxSeries: 2\n");
    request(p.http(), "GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    request(p.http(), "GET / HTTP/1.1\r\nHost: empty.test\r\n\r\n");
    request(p.http(), "GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n");
    request(p.http(), "GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n");
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        m.lines().filter(|l| l.starts_with("istio_requests_total{")).count(),
        2,
        "{m}"
    );
    assert!(m.contains("ringmesh_istio_series_overflow_total 2\n"), "{m}");
}

/// The proxy's own time per request, read from `/stats/histograms`, lies between zero and
/// what the client measured for the whole exchange; `?reset` starts it over.
fn own_latency_histograms(io: IoMode) {
    let up = Upstream::named("a");
    let p = proxy(io, &up, "    reasonHeader: true\n");
    let mut c = Client::connect(p.http());
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(c.get("echo.test", "/t").status, 200);
        slowest = slowest.max(t.elapsed());
    }
    let (status, body) = admin_get(p.admin(), "/stats/histograms");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["unit"], "microseconds");
    assert_eq!(v["all"]["count"], 50, "{body}");
    let max = v["all"]["max"].as_u64().expect("max");
    let p50 = v["all"]["p50"].as_u64().expect("p50");
    assert!(p50 >= 1 && max as u128 <= slowest.as_micros(), "{body} vs {slowest:?}");
    let h = &v["histograms"][0];
    assert_eq!(h["cluster"], "outbound|80||echo.test", "{body}");
    assert_eq!(h["count"], 50);

    let hgrm = admin_get(p.admin(), "/stats/histograms?format=hgrm&reset").1;
    assert!(
        hgrm.contains("1/(1-Percentile)") && hgrm.contains("Total count    =           50"),
        "{hgrm}"
    );
    let after: Value = serde_json::from_str(&admin_get(p.admin(), "/stats/histograms").1).expect("json");
    assert_eq!(after["all"]["count"], 0, "reset");
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(
            &m,
            "ringmesh_proxy_overhead_microseconds_count",
            &["cluster_name=\"outbound|80||echo.test\""]
        ),
        Some(50.0),
        "Prometheus' histogram does not reset: {m}"
    );
    assert_eq!(admin_get(p.admin(), "/stats/histograms?bogus").0, 400);
}

/// A local reply says why in `x-ringmesh-reason`, naming the cluster; the header can be
/// turned off.
fn reason_header(io: IoMode) {
    let up = Upstream::named("a");
    let p = proxy(io, &up, "    reasonHeader: true\n");
    let r = request(p.http(), "GET / HTTP/1.1\r\nHost: empty.test\r\n\r\n");
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-ringmesh-reason"),
        Some("no healthy endpoint in cluster outbound|80||empty.test")
    );
    let r = request(p.http(), "GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n");
    assert_eq!(r.header("x-ringmesh-reason"), Some("no virtual host or route matched"));
    assert!(request(p.http(), "GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n")
        .header("x-ringmesh-reason")
        .is_none());

    let off = proxy(io, &up, "    reasonHeader: false\n");
    let r = request(off.http(), "GET / HTTP/1.1\r\nHost: empty.test\r\n\r\n");
    assert_eq!(r.status, 503);
    assert!(r.header("x-ringmesh-reason").is_none());
}

/// HTTP/2 and gRPC calls are logged and counted like HTTP/1.1 requests: the protocol, the gRPC
/// status of a local reply, and its reason in a header of the HTTP/2 response.
fn http2_and_grpc_are_logged_and_counted(io: IoMode) {
    let up = Upstream::named("hello");
    let dir = temp_dir();
    let path = dir.path().join("h2.log");
    let p = proxy(io, &up, &format!("    accessLog:\n      path: {}\n", path.display()));
    let mut c = H2Client::connect(p.http());
    let ok = c.get("echo.test", "/h2");
    assert_eq!(ok.status, 200);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://empty.test/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let failed = c.request(req, b"\0\0\0\0\0", None);
    assert_eq!(failed.field("grpc-status"), Some("14"));
    assert_eq!(
        failed.field("x-ringmesh-reason"),
        Some("no healthy endpoint in cluster outbound|80||empty.test")
    );
    let lines = lines_of(&path, 2);
    let h2: Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(h2["protocol"], "HTTP/2");
    assert_eq!(h2["response_code"], 200);
    assert_eq!(h2["bytes_sent"], 5);
    assert_eq!(h2["authority"], "echo.test");
    assert!(h2["proxy_overhead_us"].as_u64().is_some());
    let grpc: Value = serde_json::from_str(&lines[1]).expect("json");
    assert_eq!(grpc["protocol"], "HTTP/2");
    assert_eq!(grpc["response_code"], 200);
    assert_eq!(grpc["grpc_status"], 14);
    assert_eq!(grpc["response_flags"], "UH");
    assert_eq!(grpc["path"], "/pkg.Svc/Call");
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &[
                "request_protocol=\"grpc\"",
                "grpc_response_status=\"14\"",
                "response_flags=\"UH\""
            ]
        ),
        Some(1.0),
        "{m}"
    );
}

/// A request refused before its head could be parsed is logged and counted too, with what is
/// known: the status, the flag, the client; no method or path.
fn a_refused_head_is_logged(io: IoMode) {
    let up = Upstream::named("a");
    let dir = temp_dir();
    let path = dir.path().join("bad.log");
    let p = proxy(io, &up, &format!("    accessLog:\n      path: {}\n", path.display()));
    let r = request(
        p.http(),
        "GET / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert!(r.header("x-ringmesh-reason").is_some_and(|v| !v.is_empty()));
    let line: Value = serde_json::from_str(&lines_of(&path, 1)[0]).expect("json");
    assert_eq!(line["response_code"], 400);
    assert_eq!(line["response_flags"], "DPE");
    assert_eq!(line["response_code_details"], "codec_error");
    assert_eq!(line["method"], Value::Null);
    assert_eq!(line["path"], Value::Null);
    assert!(line["downstream_remote_address"].as_str().is_some());
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &["response_code=\"400\"", "response_flags=\"DPE\""]
        ),
        Some(1.0),
        "{m}"
    );
}

both_io!(
    json_access_log_fields,
    text_access_log,
    istio_standard_metrics,
    istio_series_are_bounded,
    own_latency_histograms,
    reason_header,
    http2_and_grpc_are_logged_and_counted,
    a_refused_head_is_logged
);
