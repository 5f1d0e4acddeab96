//! Istio's fault injection (`http[].fault`), end to end: an abort answers locally with its
//! status and flag `FI` and nothing reaches the upstream; an abort for a share of requests
//! hits about that share; a delay holds the request at least its duration and then forwards
//! it (flag `DI`); a gRPC abort is a trailers-only reply with its `grpc-status`; a client that
//! leaves during a delay is a cancellation and nothing goes upstream; a bad fault is refused
//! naming the field — on io_uring and on epoll.

use std::time::{Duration, Instant};

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::observe::{json_log_lines, series_value};
use ringmesh_tests::proxy::{proxy_config, service_entry, temp_dir, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};
use serde_json::Value;

/// Routes of `echo.test`, each with its fault; the last one without.
const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
spec:
  hosts: [echo.test]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault:
      abort: {httpStatus: 503}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /tenth}}]
    fault:
      abort: {httpStatus: 500, percentage: {value: 10}}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /delay}}]
    fault:
      delay: {fixedDelay: 200ms, percentage: {value: 100}}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /both}}]
    fault:
      delay: {fixedDelay: 100ms, percent: 100}
      abort: {httpStatus: 429}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /half-delay}}]
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 50}}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /slow}}]
    fault:
      delay: {fixedDelay: 60s}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /pkg.Svc/}}]
    fault:
      abort: {grpcStatus: UNAVAILABLE}
    route: [{destination: {host: echo.test}}]
  - route: [{destination: {host: echo.test}}]
"#;

const DELAY: Duration = Duration::from_millis(200);

/// A proxy routing `echo.test` to `up` through [`VS`], its access log in `log`, with the
/// reason header on.
fn proxy(io: IoMode, up: &Upstream, log: &std::path::Path) -> TestProxy {
    let spec = format!(
        "  telemetry:\n    reasonHeader: true\n    accessLog:\n      path: {}\n",
        log.display()
    );
    TestProxy::start(&[
        proxy_config(io, "", &spec),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
        VS.to_string(),
    ])
}

/// The access log's lines once there are `want` of them, and no more.
fn log_lines(path: &std::path::Path, want: usize) -> Vec<Value> {
    let lines = json_log_lines(path, want);
    assert_eq!(lines.len(), want, "{lines:?}");
    lines
}

/// An abort for every request answers its status with Envoy's body and reason, says `FI` in
/// the access log and in Istio's metrics, and sends nothing upstream, on HTTP/1.1 and HTTP/2.
fn abort_answers_locally(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let p = proxy(io, &up, &log);
    let mut cl = Client::connect(p.http());
    for _ in 0..3 {
        let r = cl.get("echo.test", "/abort");
        assert_eq!(r.status, 503);
        assert_eq!(r.text(), "fault filter abort");
        assert_eq!(r.header("x-ringmesh-reason"), Some("fault injected: abort"));
    }
    let mut h2 = H2Client::connect(p.http());
    let r = h2.get("echo.test", "/abort/h2");
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "fault filter abort");
    // The route without a fault still forwards: the upstream is there, only the fault kept
    // the requests from it.
    assert_eq!(cl.get("echo.test", "/other").text(), "echo");
    assert_eq!(up.count(), 1, "only the request without a fault reaches the upstream");

    let lines = log_lines(&log, 5);
    for line in lines.iter().take(4) {
        assert_eq!(line["response_code"], 503, "{line}");
        assert_eq!(line["response_flags"], "FI", "{line}");
        assert_eq!(line["response_code_details"], "fault_filter_abort", "{line}");
        assert_eq!(line["upstream_host"], Value::Null, "{line}");
    }
    assert_eq!(lines[3]["protocol"], "HTTP/2");
    assert_eq!(lines[4]["response_flags"], "-");
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &[
                "request_protocol=\"http\"",
                "response_code=\"503\"",
                "response_flags=\"FI\""
            ]
        ),
        Some(4.0),
        "{m}"
    );
}

/// `percentage: {value: 10}` aborts about a tenth of 10,000 requests (8 % to 12 %: within
/// ±2 points, the issue's bound); the others reach the upstream.
fn abort_a_tenth(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let p = proxy(io, &up, &dir.path().join("access.log"));
    let mut cl = Client::connect(p.http());
    let mut aborted = 0;
    for _ in 0..10_000 {
        match cl.get("echo.test", "/tenth").status {
            500 => aborted += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (800..=1_200).contains(&aborted),
        "{aborted} of 10000 aborted (want 1000 ± 200)"
    );
    assert_eq!(up.count(), 10_000 - aborted);
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &["response_code=\"500\"", "response_flags=\"FI\""]
        ),
        Some(aborted as f64),
        "{m}"
    );
}

/// A delay holds the request at least `fixedDelay`, then forwards it (`DI`); a delay and an
/// abort together wait, then answer (`DI,FI`).
fn delay_then_forward(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let p = proxy(io, &up, &log);
    let mut cl = Client::connect(p.http());
    let started = Instant::now();
    let r = cl.get("echo.test", "/delay");
    let took = started.elapsed();
    assert_eq!((r.status, r.text()), (200, "echo".to_string()));
    assert!(took >= DELAY, "the delayed request took {took:?}");
    assert_eq!(up.count(), 1);

    let mut h2 = H2Client::connect(p.http());
    let started = Instant::now();
    let r = h2.get("echo.test", "/delay/h2");
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(took >= DELAY, "the delayed HTTP/2 request took {took:?}");
    assert_eq!(up.count(), 2);

    let started = Instant::now();
    let r = cl.get("echo.test", "/both");
    let took = started.elapsed();
    assert_eq!(r.status, 429);
    assert!(took >= Duration::from_millis(100), "delay then abort took {took:?}");
    assert_eq!(up.count(), 2, "the aborted request never reaches the upstream");

    let lines = log_lines(&log, 3);
    assert_eq!(lines[0]["response_flags"], "DI");
    assert_eq!(lines[0]["response_code"], 200);
    assert_eq!(lines[0]["upstream_host"], up.addr.to_string());
    assert!(
        lines[0]["duration"].as_u64().is_some_and(|ms| ms >= 200),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["response_flags"], "DI");
    assert_eq!(lines[1]["protocol"], "HTTP/2");
    assert_eq!(lines[2]["response_flags"], "DI,FI");
    assert_eq!(lines[2]["response_code_details"], "fault_filter_abort");
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &["response_code=\"200\"", "response_flags=\"DI\""]
        ),
        Some(2.0),
        "{m}"
    );
}

/// `grpcStatus: UNAVAILABLE` answers a gRPC call trailers-only, HTTP 200 with
/// `grpc-status: 14`.
fn grpc_abort(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let p = proxy(io, &up, &log);
    let mut c = H2Client::connect(p.http());
    let req = http::Request::builder()
        .method("POST")
        .uri("http://echo.test/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let r = c.request(req, b"\0\0\0\0\0", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.field("grpc-status"), Some("14"));
    assert_eq!(r.field("grpc-message"), Some("fault filter abort"));
    assert_eq!(up.count(), 0);
    let lines = log_lines(&log, 1);
    assert_eq!(lines[0]["grpc_status"], 14);
    assert_eq!(lines[0]["response_code"], 200);
    assert_eq!(lines[0]["response_flags"], "FI");
}

/// Waits until the proxy holds one request in flight.
fn one_request_active(admin: std::net::SocketAddr) {
    eventually(Duration::from_secs(10), "the delayed request in flight", || {
        let m = admin_get(admin, "/stats/prometheus").1;
        m.lines().any(|l| l == "ringmesh_downstream_rq_active 1")
    })
    .unwrap();
}

/// A client that leaves during a delay cancels the request (`DI,DC`): nothing goes upstream
/// and the request does not wait out its 60 s.
fn client_leaving_during_the_delay(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let p = proxy(io, &up, &log);

    let mut cl = Client::connect(p.http());
    cl.send(b"GET /slow HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    one_request_active(p.admin());
    drop(cl);
    let lines = log_lines(&log, 1);
    assert_eq!(lines[0]["response_flags"], "DI,DC");

    // The client's runtime drives its connection only inside `block_on`: the waits run on
    // its blocking pool meanwhile.
    let h2 = H2Client::connect(p.http());
    let send = h2.sender();
    let admin = p.admin();
    let log2 = log.clone();
    let lines = h2.block_on(async move {
        let mut send = send.ready().await.expect("ready");
        let req = http::Request::get("http://echo.test/slow/h2")
            .body(())
            .expect("request");
        let (resp, _) = send.send_request(req, true).expect("send");
        tokio::task::spawn_blocking(move || one_request_active(admin))
            .await
            .expect("wait");
        // Dropping the response future resets the stream (CANCEL).
        drop(resp);
        tokio::task::spawn_blocking(move || log_lines(&log2, 2))
            .await
            .expect("wait")
    });
    assert_eq!(lines[1]["response_flags"], "DI,DC");
    assert_eq!(lines[1]["protocol"], "HTTP/2");
    assert_eq!(up.count(), 0);
}

/// A bad fault is refused at start, naming the field.
fn invalid_fault_is_refused(io: IoMode) {
    let up = Upstream::named("echo");
    let bad = VS.replace("abort: {httpStatus: 503}", "abort: {httpStatus: 700}");
    let err = TestProxy::try_start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
        bad,
    ])
    .expect_err("a bad fault must be refused")
    .to_string();
    assert!(
        err.contains("spec.http[0].fault.abort.httpStatus") && err.contains("got 700"),
        "{err}"
    );
}

/// A delay for half the requests shows in `ringmesh-loadgen`'s own histogram: at 100 rps for
/// 3 s, the 25th percentile is the proxy's quick answer and the 75th is past the 100 ms delay.
fn delays_show_in_the_load_generators_histogram(io: IoMode) {
    use ringmesh_loadgen::{run_load_with, LoadConfig, RunControl};
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let p = proxy(io, &up, &dir.path().join("access.log"));
    let mut c = LoadConfig::new(&format!("http://{}/half-delay", p.http())).expect("loopback URL");
    c.headers = vec![("Host".to_owned(), "echo.test".to_owned())];
    c.rate = 100.0;
    c.connections = 32;
    c.duration = Duration::from_secs(3);
    c.warmup = Duration::ZERO;
    let r = run_load_with(c, std::sync::Arc::new(RunControl::ignoring_interrupt())).expect("load run");
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_kind);
    assert!(r.ok >= 250, "{} answered", r.ok);
    let (p25, p75) = (r.histogram.value_at_quantile(0.25), r.histogram.value_at_quantile(0.75));
    assert!(p25 < 50_000, "the undelayed half: p25 {p25} µs");
    assert!(p75 >= 100_000, "the delayed half (100 ms): p75 {p75} µs");
    assert!(p75 < 1_000_000, "p75 {p75} µs");
}

both_io!(
    delays_show_in_the_load_generators_histogram,
    abort_answers_locally,
    abort_a_tenth,
    delay_then_forward,
    grpc_abort,
    client_leaving_during_the_delay,
    invalid_fault_is_refused
);
