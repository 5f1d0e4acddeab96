//! Retries end to end, on both I/O drivers: a retried request carries its body (and only its
//! body), retries go to endpoints not yet tried, and the retry budget does not refuse the
//! retries a dead endpoint causes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{End, Recorded, Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

fn vs_with(http_extra: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.test]\n  http:\n  - route: [{{destination: {{host: svc.test}}}}]\n{http_extra}")
}

fn dr(lb: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.test\n  trafficPolicy:\n    loadBalancer:\n      simple: {lb}\n")
}

/// A port on which nothing listens: connecting is refused at once.
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// An upstream whose answer to `GET /warm` is followed, once `go` is set, by the end of the
/// connection (`end`); every other request is answered with the body it carried.
fn upstream_dropping_idle(end: End, go: &Arc<AtomicBool>) -> Upstream {
    let go = go.clone();
    Upstream::start("up", move |r: &Recorded| {
        if r.target == "/warm" {
            Reply::ThenEnd {
                reply: Box::new(Reply::ok("warm")),
                go: go.clone(),
                end,
            }
        } else {
            Reply::ok(&format!(
                "{} {} [{}]",
                r.method,
                r.target,
                String::from_utf8_lossy(&r.body)
            ))
        }
    })
}

/// Leaves one pooled proxy→upstream connection that the upstream has closed or reset.
fn warm_then_drop(c: &mut Client, up: &Upstream, go: &AtomicBool) {
    assert_eq!(c.get("svc.test", "/warm").text(), "warm");
    go.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "the upstream to end the connection", || {
        up.ended.load(Ordering::SeqCst) == 1
    })
    .unwrap();
}

fn retry_on_a_dead_pooled_connection_resends_the_body(io: IoMode) {
    for end in [End::Reset, End::Close] {
        let go = Arc::new(AtomicBool::new(false));
        let up = upstream_dropping_idle(end, &go);
        let p = TestProxy::start(&[
            proxy_config(io, "", ""),
            service_entry("svc", "svc.test", 80, &[(up.addr, &[])]),
        ]);
        let mut c = Client::connect(p.http());
        warm_then_drop(&mut c, &up, &go);
        c.send(b"POST /pay HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhello");
        let r = c.response().expect("an answer to the POST");
        assert_eq!((r.status, r.text().as_str()), (200, "POST /pay [hello]"), "{end:?}");
        let posts: Vec<_> = up.received().into_iter().filter(|r| r.method == "POST").collect();
        assert_eq!(posts.len(), 1, "{end:?}: {posts:?}");
        assert_eq!(posts[0].body, b"hello", "{end:?}");
        assert_eq!(posts[0].header("content-length"), Some("5"), "{end:?}");
    }
}

fn a_pipelined_request_is_never_taken_as_a_retried_body(io: IoMode) {
    for end in [End::Reset, End::Close] {
        let go = Arc::new(AtomicBool::new(false));
        let up = upstream_dropping_idle(end, &go);
        let p = TestProxy::start(&[
            proxy_config(io, "", ""),
            service_entry("svc", "svc.test", 80, &[(up.addr, &[])]),
        ]);
        let mut c = Client::connect(p.http());
        warm_then_drop(&mut c, &up, &go);
        c.send(b"POST /pay HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: svc.test\r\n\r\n");
        let first = c.response().expect("an answer to the POST");
        assert_eq!(
            (first.status, first.text().as_str()),
            (200, "POST /pay [hello]"),
            "{end:?}"
        );
        let second = c.response().expect("an answer to the pipelined GET");
        assert_eq!(
            (second.status, second.text().as_str()),
            (200, "GET /next []"),
            "{end:?}"
        );
        let seen: Vec<_> = up
            .received()
            .into_iter()
            .map(|r| (r.method, r.target, String::from_utf8_lossy(&r.body).to_string()))
            .collect();
        let want = |m: &str, t: &str, b: &str| (m.to_string(), t.to_string(), b.to_string());
        assert_eq!(
            seen,
            [
                want("GET", "/warm", ""),
                want("POST", "/pay", "hello"),
                want("GET", "/next", "")
            ],
            "{end:?}"
        );
    }
}

fn a_held_body_is_retried_whole_and_a_streamed_one_never(io: IoMode) {
    // Reads each request whole, then resets every other one: the first try of each request
    // below fails, a second would be answered.
    let n = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start("flaky", move |r: &Recorded| {
        if n.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            Reply::Reset
        } else {
            Reply::ok(&format!("{}", r.body.len()))
        }
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(up.addr, &[])]),
        vs_with("    retries: {attempts: 1, retryOn: reset}\n"),
    ]);
    // 5 bytes arrived with the head: held, and both tries carry them.
    let mut c = Client::connect(p.http());
    c.send(b"POST /small HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.response().expect("response");
    assert_eq!((r.status, r.text().as_str()), (200, "5"));
    let tries = up.received();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert!(tries.iter().all(|t| t.body == b"hello"), "{tries:?}");

    // 20 KiB streams from the client: once streamed it cannot be sent again.
    let body = vec![b'x'; 20 * 1024];
    let mut c = Client::connect(p.http());
    let mut req = format!(
        "POST /big HTTP/1.1\r\nHost: svc.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req);
    let r = c.response().expect("response");
    assert_eq!(r.status, 503);
    let bigs = up.received().into_iter().filter(|r| r.target == "/big").count();
    assert_eq!(bigs, 1, "a streamed body was replayed");
}

/// Sends `per_client` GETs on each of `clients` keep-alive connections at once; returns the
/// statuses that were not 200.
fn load(p: &TestProxy, clients: usize, per_client: usize) -> Vec<u16> {
    let addr = p.http();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut bad = Vec::new();
                for i in 0..per_client {
                    c.send(format!("GET /{i} HTTP/1.1\r\nHost: svc.test\r\n\r\n").as_bytes());
                    match c.response() {
                        Some(r) if r.status == 200 => {}
                        Some(r) => {
                            bad.push(r.status);
                            if r.header("connection") == Some("close") {
                                c = Client::connect(addr);
                            }
                        }
                        None => {
                            bad.push(0);
                            c = Client::connect(addr);
                        }
                    }
                }
                bad
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect()
}

/// A counter's value in the proxy's Prometheus text.
fn counter(p: &TestProxy, name: &str) -> u64 {
    let (status, text) = admin_get(p.admin(), "/stats/prometheus");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

fn one_dead_endpoint_of_three_costs_nothing(io: IoMode) {
    let (a, b) = (Upstream::named("a"), Upstream::named("b"));
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry(
            "svc",
            "svc.test",
            80,
            &[(a.addr, &[]), (dead_port(), &[]), (b.addr, &[])],
        ),
        dr("ROUND_ROBIN"),
        vs_with("    retries: {attempts: 2, retryOn: \"connect-failure,reset,gateway-error\"}\n"),
    ]);
    let bad = load(&p, 16, 60);
    assert!(bad.is_empty(), "{} of 960 requests failed: {bad:?}", bad.len());
    assert!(
        counter(&p, "ringmesh_upstream_rq_retry_total") > 0,
        "the dead endpoint was never tried"
    );
    assert_eq!(counter(&p, "ringmesh_upstream_rq_retry_overflow_total"), 0);
}

fn a_retry_goes_to_an_endpoint_not_yet_tried(io: IoMode) {
    // Random balancing with one retry: without the previous-hosts rule a quarter of the
    // requests would try the dead endpoint twice.
    let good = Upstream::named("good");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(dead_port(), &[]), (good.addr, &[])]),
        dr("RANDOM"),
        vs_with("    retries: {attempts: 1, retryOn: connect-failure}\n"),
    ]);
    let mut c = Client::connect(p.http());
    for i in 0..60 {
        let r = c.get("svc.test", "/");
        assert_eq!((r.status, r.text().as_str()), (200, "good"), "request {i}");
    }
    assert!(counter(&p, "ringmesh_upstream_rq_retry_total") > 0);
}

fn a_body_cut_midway_closes_the_client_connection(io: IoMode) {
    // The first upstream connection is reset once the head arrived, with the body midway;
    // any later one records what it was asked for.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let later = Arc::new(AtomicUsize::new(0));
    {
        let later = later.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().take(4).enumerate() {
                let Ok(mut s) = conn else { return };
                let mut seen = Vec::new();
                let mut tmp = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match std::io::Read::read(&mut s, &mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => seen.extend_from_slice(&tmp[..k]),
                    }
                }
                if n == 0 {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                } else {
                    later.fetch_add(1, Ordering::SeqCst);
                    let _ = std::io::Write::write_all(&mut s, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            }
        });
    }
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(addr, &[])]),
        vs_with("    retries: {attempts: 0}\n"),
    ]);
    let mut c = Client::connect(p.http());
    // Larger than the 16 KiB a proxy reads whole before it picks an upstream: this body streams.
    c.send(b"POST /upload HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 100000\r\n\r\n0123456789");
    let r = c.response().expect("an answer");
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "the rest of the body would be read as requests"
    );
    // The rest of the body, shaped like a request: it must never reach an upstream as one.
    let _ = std::io::Write::write_all(&mut c.stream, b"GET /smuggled HTTP/1.1\r\nHost: svc.test\r\n\r\n");
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(
        later.load(Ordering::SeqCst),
        0,
        "body bytes were forwarded as a request"
    );
}

both_io!(
    retry_on_a_dead_pooled_connection_resends_the_body,
    a_pipelined_request_is_never_taken_as_a_retried_body,
    a_held_body_is_retried_whole_and_a_streamed_one_never,
    one_dead_endpoint_of_three_costs_nothing,
    a_retry_goes_to_an_endpoint_not_yet_tried,
    a_body_cut_midway_closes_the_client_connection,
);
