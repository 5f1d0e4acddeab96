//! Slow and greedy clients: a head trickled in (slowloris) and a body that stalls (slow POST)
//! are cut by their timeouts, connections past `limits.maxConnections` or `limits.maxBufferBytes`
//! are refused and counted,
//! and a well-behaved keep-alive client is served across idle gaps and pipelined requests
//! (an idle connection waits for readiness with no read buffer) — each on io_uring and on the
//! epoll fallback.

use std::io::Write;
use std::time::{Duration, Instant};

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

fn proxy(io: IoMode, up: &Upstream, limits: &str) -> TestProxy {
    TestProxy::start(&[
        proxy_config(io, "", &format!("  limits:\n{limits}")),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ])
}

/// The value of an unlabelled or labelled series in the proxy's Prometheus exposition.
fn metric(p: &TestProxy, series: &str) -> u64 {
    let (_, text) = admin_get(p.metrics(), "/stats/prometheus");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// A client that keeps sending a header byte every 50 ms is still cut when the header timeout
/// (counted from the head's first byte) passes: trickling does not extend it.
fn slowloris_trickle_is_cut(io: IoMode) {
    let up = Upstream::named("a");
    let p = proxy(io, &up, "    requestHeaderTimeout: 500ms\n");
    let mut c = Client::connect(p.http());
    c.send(b"GET / HTTP/1.1\r\nHost: echo.test\r\n");
    let start = Instant::now();
    let mut answer = None;
    // Bounded: 60 bytes at 50 ms is 3 s, six times the timeout.
    for _ in 0..60 {
        let wrote = c.stream.write_all(b"X").is_ok();
        let wait = if wrote { 50 } else { 1000 };
        if let Some(bytes) = c.read_until_close(Duration::from_millis(wait)) {
            answer = Some(bytes);
            break;
        }
    }
    let took = start.elapsed();
    let answer = answer.unwrap_or_else(|| panic!("a trickling head was not cut within {took:?}"));
    // Generous for a loaded 2-core machine; the bound that matters is "not extended by trickling".
    assert!(took < Duration::from_millis(2500), "cut only after {took:?}");
    let text = String::from_utf8_lossy(&answer).to_string();
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "expected a 408 before the close, got {text:?}"
    );
    assert_eq!(up.count(), 0, "a partial head reached the upstream");
    eventually(Duration::from_secs(5), "the header timeout counted (DT)", || {
        metric(&p, "ringmesh_local_replies_total{response_flags=\"DT\"}") >= 1
    })
    .unwrap();
}

/// A body that stops arriving is answered 408 (flag `SI`) once `requestBodyTimeout` passes
/// with no byte, and the connection closes; a body that trickles faster than the timeout is
/// delivered whole (the timeout is between reads, as nginx's `client_body_timeout`). A body
/// this small is read whole before an upstream is picked, so the cut one never reaches it.
fn slow_body_is_cut_with_408(io: IoMode) {
    let up = Upstream::start("a", |r| Reply::ok(&String::from_utf8_lossy(&r.body)));
    let p = proxy(io, &up, "    requestBodyTimeout: 400ms\n");

    let mut slow = Client::connect(p.http());
    slow.send(b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 100\r\n\r\n0123456789");
    let start = Instant::now();
    let r = slow.response().expect("408 expected");
    assert_eq!(r.status, 408);
    assert!(start.elapsed() >= Duration::from_millis(350), "cut before the timeout");
    assert!(
        slow.closed_within(Duration::from_secs(2)),
        "connection kept after a cut body"
    );
    assert_eq!(up.count(), 0, "a small body still arriving held an upstream request");
    eventually(Duration::from_secs(5), "the body timeout counted (SI)", || {
        metric(&p, "ringmesh_local_replies_total{response_flags=\"SI\"}") == 1
    })
    .unwrap();

    // Five bytes 100 ms apart: each gap is under the timeout, the whole is over it.
    let mut steady = Client::connect(p.http());
    steady.send(b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 5\r\n\r\n");
    for b in b"hello" {
        std::thread::sleep(Duration::from_millis(100));
        steady.send(&[*b]);
    }
    let r = steady.response().expect("a trickled body is served");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
}

/// With `maxConnections: 2` (one worker), a third connection is closed at once and counted;
/// once one of the two closes, new connections are served again.
fn connection_limit_refuses_and_counts(io: IoMode) {
    let up = Upstream::named("a");
    let p = proxy(io, &up, "    maxConnections: 2\n");
    let mut a = Client::connect(p.http());
    assert_eq!(a.get("echo.test", "/a").status, 200);
    let mut b = Client::connect(p.http());
    assert_eq!(b.get("echo.test", "/b").status, 200);
    let mut over = Client::connect(p.http());
    let _ = over.stream.write_all(b"GET /over HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    let answer = over.read_until_close(Duration::from_secs(3));
    assert_eq!(
        answer,
        Some(Vec::new()),
        "a connection past the limit was kept or answered"
    );
    assert_eq!(metric(&p, "ringmesh_downstream_cx_overflow_total"), 1);
    // The two held connections are still served.
    assert_eq!(a.get("echo.test", "/a2").status, 200);
    drop(b);
    eventually(Duration::from_secs(5), "the closed connection's slot freed", || {
        metric(&p, "ringmesh_downstream_cx_active") <= 1
    })
    .unwrap();
    assert_eq!(Client::connect(p.http()).get("echo.test", "/c").status, 200);
    assert_eq!(up.count(), 4, "the refused request reached the upstream");
}

/// A keep-alive connection that idles between requests (its wait holds no read buffer) is
/// served after each gap, and requests pipelined after a gap come back in order.
fn keep_alive_across_idle_gaps(io: IoMode) {
    let up = Upstream::start("a", |r| Reply::ok(&r.target));
    let p = proxy(io, &up, "    idleTimeout: 30s\n");
    let mut c = Client::connect(p.http());
    for i in 0..3 {
        assert_eq!(c.get("echo.test", &format!("/gap/{i}")).text(), format!("/gap/{i}"));
        // The scenario itself: the connection idles with no request in flight.
        std::thread::sleep(Duration::from_millis(100));
    }
    c.send(b"GET /p1 HTTP/1.1\r\nHost: echo.test\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 2\r\n\r\nokGET /p3 HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    for want in ["/p1", "/p2", "/p3"] {
        assert_eq!(c.response().unwrap().text(), want);
    }
    // A head split over two writes with a pause in between (a wait mid-head keeps its bytes).
    c.send(b"GET /split HTTP/1.1\r\nHo");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"st: echo.test\r\n\r\n");
    assert_eq!(c.response().unwrap().text(), "/split");
    assert_eq!(up.count(), 7);
}

/// With `maxBufferBytes` at its floor (64 KiB, one worker), clients holding half-sent heads
/// take the budget: a new connection is closed at accept and counted, a connection opened
/// before is served on, and once the slow clients leave new connections are served again.
fn buffer_budget_refuses_new_connections(io: IoMode) {
    let up = Upstream::named("a");
    let p = proxy(io, &up, "    maxBufferBytes: 65536\n    requestHeaderTimeout: 60s\n");
    let mut steady = Client::connect(p.http());
    assert_eq!(steady.get("echo.test", "/before").status, 200);
    let held = || metric(&p, "ringmesh_downstream_buffered_bytes");
    let mut slow = Vec::new();
    // Bounded: each half-sent head holds at least a 4 KiB buffer, so 16 of them fill 64 KiB.
    for _ in 0..16 {
        if held() >= 65536 {
            break;
        }
        let before = held();
        let mut c = Client::connect(p.http());
        c.send(b"GET /slow HTTP/1.1\r\nHost: echo.test\r\n");
        eventually(Duration::from_secs(5), "the half-sent head's buffer charged", || {
            held() > before
        })
        .unwrap();
        slow.push(c);
    }
    assert!(held() >= 65536, "16 half-sent heads hold {} bytes", held());

    let mut over = Client::connect(p.http());
    let _ = over.stream.write_all(b"GET /over HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    assert_eq!(
        over.read_until_close(Duration::from_secs(3)),
        Some(Vec::new()),
        "a connection past the buffer budget was kept or answered"
    );
    assert_eq!(metric(&p, "ringmesh_downstream_cx_buffer_overflow_total"), 1);
    // A connection that was open before is served on.
    assert_eq!(steady.get("echo.test", "/during").status, 200);

    drop(slow);
    eventually(Duration::from_secs(5), "the slow clients' buffers given back", || {
        held() < 65536
    })
    .unwrap();
    let mut after = Client::connect(p.http());
    assert_eq!(after.get("echo.test", "/after").status, 200);
    drop((steady, after));
    eventually(Duration::from_secs(5), "every buffer given back", || held() == 0).unwrap();
}

both_io!(
    buffer_budget_refuses_new_connections,
    slowloris_trickle_is_cut,
    slow_body_is_cut_with_408,
    connection_limit_refuses_and_counts,
    keep_alive_across_idle_gaps,
);
