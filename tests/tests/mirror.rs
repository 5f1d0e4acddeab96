//! Istio's request mirroring (`http[].mirror`, `mirrorPercentage`, `mirrors`), end to end: the
//! mirror gets its share of copies, each with `-shadow` added to the host and the primary's
//! body and request id; the client gets the primary's answer and never waits for the mirror,
//! however slow or dead; what is not copied (a streamed body, an HTTP/2 request) is counted —
//! on io_uring and on epoll.

use std::time::{Duration, Instant};

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

/// `/half` copies half the requests to `shadow.test`, `/all` every request; `/two` copies to
/// both services through `mirrors`.
const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
spec:
  hosts: [echo.test]
  http:
  - match: [{uri: {prefix: /half}}]
    mirror: {host: shadow.test}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: echo.test}}]
  - match: [{uri: {prefix: /two}}]
    mirrors:
    - destination: {host: shadow.test}
    - destination: {host: other.test}
      percentage: {value: 100}
    route: [{destination: {host: echo.test}}]
  - mirror: {host: shadow.test}
    route: [{destination: {host: echo.test}}]
"#;

fn proxy(io: IoMode, primary: &Upstream, shadow: std::net::SocketAddr, other: std::net::SocketAddr) -> TestProxy {
    TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(primary.addr, &[])]),
        service_entry("shadow", "shadow.test", 80, &[(shadow, &[])]),
        service_entry("other", "other.test", 80, &[(other, &[])]),
        VS.to_string(),
    ])
}

/// The value of a counter without labels in the Prometheus text.
fn counter(p: &TestProxy, name: &str) -> u64 {
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} not exported:\n{m}")) as u64
}

/// Half of 2,000 requests are copied (within ±5 points), every copy answered and counted; the
/// client gets the primary's answers only.
fn copies_its_share(io: IoMode) {
    let primary = Upstream::named("primary");
    let shadow = Upstream::named("shadow");
    let other = Upstream::named("other");
    let p = proxy(io, &primary, shadow.addr, other.addr);
    let mut cl = Client::connect(p.http());
    for _ in 0..2_000 {
        let r = cl.get("echo.test", "/half");
        assert_eq!((r.status, r.text()), (200, "primary".to_string()));
    }
    assert_eq!(primary.count(), 2_000);
    let mut started = 0;
    eventually(Duration::from_secs(10), "every copy answered", || {
        started = counter(&p, "ringmesh_mirror_requests_total");
        counter(&p, "ringmesh_mirror_answered_total") == started && shadow.count() as u64 == started
    })
    .unwrap_or_else(|e| panic!("{e}: {started} started, {} received", shadow.count()));
    assert!(
        (900..=1_100).contains(&started),
        "{started} of 2000 copied (want 1000 ± 100)"
    );
    assert_eq!(counter(&p, "ringmesh_mirror_failed_total"), 0);
    assert_eq!(other.count(), 0);
}

/// A copy carries the primary's method, path, body and request id, with `-shadow` on the host;
/// `mirrors` copies to each of its destinations.
fn copies_are_faithful(io: IoMode) {
    let primary = Upstream::named("primary");
    let shadow = Upstream::named("shadow");
    let other = Upstream::named("other");
    let p = proxy(io, &primary, shadow.addr, other.addr);
    let mut cl = Client::connect(p.http());
    let body = "{\"order\": 42}";
    cl.send(
        format!(
            "POST /two/orders?x=1 HTTP/1.1\r\nhost: echo.test\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = cl.response().expect("an answer");
    assert_eq!((r.status, r.text()), (200, "primary".to_string()));
    eventually(Duration::from_secs(10), "both mirrors got their copy", || {
        shadow.count() == 1 && other.count() == 1
    })
    .unwrap();
    let sent = &primary.received()[0];
    for copy in [&shadow.received()[0], &other.received()[0]] {
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.target, "/two/orders?x=1");
        assert_eq!(copy.header("host"), Some("echo.test-shadow"));
        assert_eq!(copy.header("content-type"), Some("application/json"));
        assert_eq!(copy.body, body.as_bytes());
        assert!(sent.header("x-request-id").is_some());
        assert_eq!(copy.header("x-request-id"), sent.header("x-request-id"));
    }
    assert_eq!(sent.header("host"), Some("echo.test"));
}

/// A mirror that answers after 2 s slows no request: twenty in a row each come back long before
/// the mirror's first answer, and the copies are all answered later.
fn a_slow_mirror_does_not_slow_the_primary(io: IoMode) {
    const MIRROR_DELAY: Duration = Duration::from_secs(2);
    let primary = Upstream::named("primary");
    let shadow = Upstream::start("shadow", |_| Reply::Delay(MIRROR_DELAY, Box::new(Reply::ok("late"))));
    let other = Upstream::named("other");
    let p = proxy(io, &primary, shadow.addr, other.addr);
    let mut cl = Client::connect(p.http());
    let all = Instant::now();
    for _ in 0..20 {
        let r = cl.get("echo.test", "/all");
        assert_eq!((r.status, r.text()), (200, "primary".to_string()));
    }
    let took = all.elapsed();
    // Waiting for even one copy would take 2 s; twenty requests on loopback take milliseconds.
    assert!(
        took < MIRROR_DELAY,
        "20 requests took {took:?} with a mirror answering after {MIRROR_DELAY:?}"
    );
    eventually(Duration::from_secs(15), "the slow mirror answered every copy", || {
        counter(&p, "ringmesh_mirror_answered_total") == 20
    })
    .unwrap();
}

/// A mirror nobody listens on costs nothing but its counter: every request is answered by the
/// primary, and the failed copies are counted.
fn a_dead_mirror_is_counted(io: IoMode) {
    let primary = Upstream::named("primary");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let other = Upstream::named("other");
    let p = proxy(io, &primary, dead_addr, other.addr);
    let mut cl = Client::connect(p.http());
    for _ in 0..10 {
        assert_eq!(cl.get("echo.test", "/all").status, 200);
    }
    eventually(Duration::from_secs(10), "ten failed copies counted", || {
        counter(&p, "ringmesh_mirror_failed_total") == 10
    })
    .unwrap();
    assert_eq!(primary.count(), 10);
}

/// What is not copied is counted, and still served: a body larger than what the proxy holds
/// (it streams), and a request over HTTP/2.
fn what_is_not_copied_is_counted(io: IoMode) {
    let primary = Upstream::named("primary");
    let shadow = Upstream::named("shadow");
    let other = Upstream::named("other");
    let p = proxy(io, &primary, shadow.addr, other.addr);
    let mut cl = Client::connect(p.http());
    let big = vec![b'x'; 64 * 1024];
    let mut req = format!(
        "POST /all HTTP/1.1\r\nhost: echo.test\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    cl.send(&req);
    assert_eq!(cl.response().expect("an answer").status, 200);
    let mut h2 = H2Client::connect(p.http());
    assert_eq!(h2.get("echo.test", "/all").status, 200);
    assert_eq!(counter(&p, "ringmesh_mirror_skipped_streamed_body_total"), 1);
    assert_eq!(counter(&p, "ringmesh_mirror_skipped_unsupported_total"), 1);
    assert_eq!(counter(&p, "ringmesh_mirror_requests_total"), 0);
    assert_eq!(primary.count(), 2);
    assert_eq!(primary.received()[0].body.len(), big.len());
    assert_eq!(shadow.count(), 0);
}

both_io!(
    copies_its_share,
    copies_are_faithful,
    a_slow_mirror_does_not_slow_the_primary,
    a_dead_mirror_is_counted,
    what_is_not_copied_is_counted,
);
