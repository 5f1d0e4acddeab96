//! ringmesh's `localRateLimit` end to end, on both I/O drivers: a route's token bucket holds
//! its rate for the whole proxy within 5 % whatever worker the requests land on, the rest are
//! answered 429 `local_rate_limited` with flag `RL` (access log, Istio's metrics, the limit's
//! counters); HTTP/2 gets the same 429 and gRPC `UNAVAILABLE` (or `RESOURCE_EXHAUSTED` when the
//! limit says so); a listener's limit counts every request on it; a typo is refused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::observe::{json_log_lines, series_value};
use ringmesh_tests::proxy::{proxy_config, service_entry, temp_dir, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};
use serde_json::Value;

const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
spec:
  hosts: [echo.test]
  http:
  - match: [{uri: {prefix: /limited}}]
    localRateLimit: {maxTokens: 10, tokensPerFill: 10, fillInterval: 100ms}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /once}}]
    localRateLimit: {maxTokens: 1, fillInterval: 3600s}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /pkg.Exhausted/}}]
    localRateLimit: {maxTokens: 1, fillInterval: 3600s, rateLimitedAsResourceExhausted: true}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /pkg.Unavailable/}}]
    localRateLimit: {maxTokens: 1, fillInterval: 3600s}
    route: [{destination: {host: echo.test}}]
  - route: [{destination: {host: echo.test}}]
"#;

fn proxy(io: IoMode, workers: usize, up: &Upstream, log: &std::path::Path, listeners: &str) -> TestProxy {
    let spec = format!("  telemetry:\n    accessLog:\n      path: {}\n", log.display());
    let config = proxy_config(io, listeners, &spec).replace("workers: 1", &format!("workers: {workers}"));
    TestProxy::start(&[
        config,
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
        VS.to_string(),
    ])
}

/// 100 requests a second (10 tokens every 100 ms, 10 at most), two workers, twelve client
/// connections sending as fast as they can for about 3 s: the requests admitted are within
/// 5 % of what the limit allows over the time measured (the 10 it starts with plus 100 a
/// second), whatever worker each connection landed on; every other one is 429 `RL`, and the
/// limit's counters and Istio's metrics say as much.
fn the_rate_holds_for_the_proxy(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let p = proxy(io, 2, &up, &log, "");
    let (admitted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Client> = (0..12).map(|_| Client::connect(p.http())).collect();
    let started = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (admitted, refused, stop) = (admitted.clone(), refused.clone(), stop.clone());
            thread::spawn(move || {
                // Bounded: at most 3 s of requests, each answered within the client's timeout.
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get("echo.test", "/limited");
                    match r.status {
                        200 => admitted.fetch_add(1, Ordering::SeqCst),
                        429 => {
                            assert_eq!(r.text(), "local_rate_limited");
                            refused.fetch_add(1, Ordering::SeqCst)
                        }
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    // The run's length, not a synchronization: the clients stop once it is over.
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client");
    }
    let took = started.elapsed().as_secs_f64();
    let (admitted, refused) = (admitted.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    let allowed = 10.0 + 100.0 * took;
    let off = (admitted as f64 - allowed).abs() / (100.0 * took);
    eprintln!("{admitted} admitted, {refused} refused in {took:.3} s; the limit allows {allowed:.0}");
    assert!(
        off <= 0.05,
        "{admitted} admitted in {took:.3} s where the limit allows {allowed:.0} ({:.1} % off)",
        off * 100.0
    );
    assert!(
        refused > admitted,
        "the clients kept the bucket empty: {refused} refused"
    );
    assert_eq!(up.count(), admitted, "only admitted requests reached the upstream");

    let m = admin_get(p.admin(), "/stats/prometheus").1;
    for w in ["worker=\"0\"", "worker=\"1\""] {
        let served = series_value(&m, "ringmesh_worker_downstream_rq_total", &[w]).unwrap_or(0.0);
        assert!(served > 0.0, "both workers served requests: {m}");
    }
    let limit = "limit=\"VirtualService default/echo http[0]\"";
    assert_eq!(
        series_value(&m, "ringmesh_http_local_rate_limit_rate_limited_total", &[limit]),
        Some(refused as f64),
        "{m}"
    );
    assert_eq!(
        series_value(&m, "ringmesh_http_local_rate_limit_ok_total", &[limit]),
        Some(admitted as f64)
    );
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &["response_code=\"429\"", "response_flags=\"RL\""]
        ),
        Some(refused as f64)
    );
    let lines = json_log_lines(&log, admitted + refused);
    let limited: Vec<&Value> = lines.iter().filter(|l| l["response_code"] == 429).collect();
    assert_eq!(limited.len(), refused);
    for l in limited.iter().take(5) {
        assert_eq!(l["response_flags"], "RL", "{l}");
        assert_eq!(l["response_code_details"], "local_rate_limited", "{l}");
    }
}

/// HTTP/2 gets the same 429; a gRPC call gets `UNAVAILABLE`, or `RESOURCE_EXHAUSTED` where
/// the limit says `rateLimitedAsResourceExhausted`, as Envoy answers.
fn http2_and_grpc_answers(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let p = proxy(io, 1, &up, &log, "");
    let mut h2 = H2Client::connect(p.http());
    assert_eq!(h2.get("echo.test", "/once").status, 200);
    let r = h2.get("echo.test", "/once");
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "local_rate_limited");
    let mut grpc = |path: &str| {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://echo.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        h2.request(req, b"\0\0\0\0\0", None)
    };
    for (path, code) in [("/pkg.Exhausted/Call", "8"), ("/pkg.Unavailable/Call", "14")] {
        let _first = grpc(path);
        let r = grpc(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.field("grpc-status"), Some(code), "{path}");
        assert_eq!(r.field("grpc-message"), Some("local_rate_limited"), "{path}");
    }
    let lines = json_log_lines(&log, 6);
    let limited: Vec<&Value> = lines.iter().filter(|l| l["response_flags"] == "RL").collect();
    assert_eq!(limited.len(), 3, "{lines:?}");
    assert_eq!(limited[0]["protocol"], "HTTP/2");
    assert_eq!(limited[1]["grpc_status"], 8);
    assert_eq!(limited[2]["grpc_status"], 14);
}

/// A listener's limit counts every HTTP request on that listener (whatever the route); the
/// other listener is not limited.
fn a_listener_limit_counts_its_requests(io: IoMode) {
    let up = Upstream::named("echo");
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let limited = "  - name: limited\n    address: 127.0.0.1:0\n    protocol: HTTP\n    localRateLimit: {maxTokens: 2, fillInterval: 3600s}\n";
    let p = proxy(io, 1, &up, &log, limited);
    let mut c = Client::connect(p.listener("limited"));
    assert_eq!(c.get("echo.test", "/a").status, 200);
    assert_eq!(c.get("echo.test", "/b").status, 200);
    let r = c.get("echo.test", "/c");
    assert_eq!((r.status, r.text()), (429, "local_rate_limited".to_string()));
    let mut h2 = H2Client::connect(p.listener("limited"));
    assert_eq!(h2.get("echo.test", "/d").status, 429, "HTTP/2 on the listener too");
    let mut other = Client::connect(p.http());
    for _ in 0..5 {
        assert_eq!(other.get("echo.test", "/a").status, 200);
    }
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(
            &m,
            "ringmesh_http_local_rate_limit_rate_limited_total",
            &["limit=\"listener limited\""]
        ),
        Some(2.0),
        "{m}"
    );
}

/// A misspelled field and a too-short fill interval are refused at start, naming the field.
fn bad_limits_are_refused(io: IoMode) {
    let up = Upstream::named("echo");
    for (bad, field) in [
        (
            VS.replacen("localRateLimit: {maxTokens: 10", "localRateLimt: {maxTokens: 10", 1),
            "localRateLimt",
        ),
        (
            VS.replacen("fillInterval: 100ms", "fillInterval: 10ms", 1),
            "spec.http[0].localRateLimit.fillInterval",
        ),
    ] {
        let err = TestProxy::try_start(&[
            proxy_config(io, "", ""),
            service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
            bad,
        ])
        .expect_err("a bad limit must be refused")
        .to_string();
        assert!(err.contains(field), "{err}");
    }
}

both_io!(
    the_rate_holds_for_the_proxy,
    http2_and_grpc_answers,
    a_listener_limit_counts_its_requests,
    bad_limits_are_refused
);
