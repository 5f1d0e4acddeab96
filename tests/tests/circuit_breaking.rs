//! Istio's `connectionPool` circuit breakers end to end, on both I/O drivers: at
//! `maxConnections` a request waits for a connection while `http1MaxPendingRequests` leaves
//! room and the excess is refused at once with 503 `UO` (access log, Istio's metrics, the
//! cluster's overflow counters), on HTTP/1.1 and HTTP/2; a limit of 1 holds for the proxy with
//! two workers, and so does an `http2MaxRequests` of 1; `maxRetries` bounds the retries in flight, a retry over it is not made and the
//! failure it would have retried is the answer; HTTP/2 upstream connections and TCP-proxy
//! connections count too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client, Response};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::h2upstream::H2Upstream;
use ringmesh_tests::observe::{json_log_lines, series_value};
use ringmesh_tests::proxy::{proxy_config, service_entry, service_entry_speaking, temp_dir, TestProxy};
use ringmesh_tests::upstream::{Recorded, Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};
use serde_json::Value;

const CLUSTER: &str = "cluster_name=\"outbound|80||echo.test\"";

/// Holds upstream requests until the test lets them go: a slow upstream whose slowness the
/// test controls (each hold is bounded, so a failing test never hangs).
#[derive(Debug, Default)]
struct Gate {
    /// (requests held now, permits to let requests go, most held at once)
    state: Mutex<(usize, usize, usize)>,
    changed: Condvar,
}

impl Gate {
    fn hold(&self) {
        let mut s = self.state.lock().expect("gate");
        s.0 += 1;
        s.2 = s.2.max(s.0);
        self.changed.notify_all();
        let (mut s, _) = self
            .changed
            .wait_timeout_while(s, Duration::from_secs(20), |s| s.1 == 0)
            .expect("gate");
        s.1 = s.1.saturating_sub(1);
        s.0 -= 1;
    }

    fn open(&self) {
        self.state.lock().expect("gate").1 = usize::MAX / 2;
        self.changed.notify_all();
    }

    fn held(&self) -> usize {
        self.state.lock().expect("gate").0
    }

    fn most_held(&self) -> usize {
        self.state.lock().expect("gate").2
    }
}

/// An upstream answering `200 slow` to each request once the gate lets it go.
fn slow_upstream(gate: &Arc<Gate>) -> Upstream {
    let gate = gate.clone();
    Upstream::start("slow", move |_| {
        gate.hold();
        Reply::ok("slow")
    })
}

fn destination_rule(tcp: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: echo\nspec:\n  host: echo.test\n  trafficPolicy:\n    connectionPool:\n      tcp: {{{tcp}}}\n      http: {{{http}}}\n"
    )
}

/// A proxy with `workers` workers routing `echo.test` to `up` under `rule`, its access log in
/// `log`.
fn proxy(io: IoMode, workers: usize, up: &Upstream, rule: String, log: &std::path::Path, vs: &str) -> TestProxy {
    let spec = format!("  telemetry:\n    accessLog:\n      path: {}\n", log.display());
    let config = proxy_config(io, "", &spec).replace("workers: 1", &format!("workers: {workers}"));
    TestProxy::start(&[
        config,
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
        rule,
        vs.to_string(),
    ])
}

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: echo\nspec:\n  hosts: [echo.test]\n  http:\n  - route: [{destination: {host: echo.test}}]\n";

fn cluster_metric(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    series_value(&admin_get(admin, "/stats/prometheus").1, name, &[CLUSTER])
}

/// Waits until the cluster's metric `name` reads `want`.
fn metric_reaches(admin: std::net::SocketAddr, name: &str, want: f64) {
    eventually(Duration::from_secs(10), name, || {
        cluster_metric(admin, name) == Some(want)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", cluster_metric(admin, name)));
}

/// Sends one request on its own connection (already open) from a thread; the thread returns
/// the response and how long it took from the request's first byte.
fn send_from_thread(mut c: Client) -> thread::JoinHandle<(Response, Duration)> {
    thread::spawn(move || {
        let started = Instant::now();
        let r = c.get("echo.test", "/");
        (r, started.elapsed())
    })
}

/// `maxConnections: 1`, `http1MaxPendingRequests: 1`, ten clients at once against an upstream
/// that holds every request: one request has the connection, one waits for it, and the eight
/// others are refused with 503 `UO` at once — while the upstream still holds the first, each
/// in under 10 ms (the bound; a refusal takes no I/O but the client's own, so even a
/// loaded two-core machine stays far below it). An HTTP/2 request is refused the same way.
/// Once the upstream answers, the waiting request goes out on the same connection.
fn excess_is_refused_at_once(io: IoMode) {
    let gate = Arc::new(Gate::default());
    let up = slow_upstream(&gate);
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let rule = destination_rule("maxConnections: 1", "http1MaxPendingRequests: 1");
    let p = proxy(io, 1, &up, rule, &log, VS);
    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(p.http())).collect();
    let rest = clients.split_off(2);
    let mut first_two = clients.into_iter();
    let first = send_from_thread(first_two.next().expect("client"));
    eventually(Duration::from_secs(10), "the first request at the upstream", || {
        gate.held() == 1
    })
    .unwrap();
    let second = send_from_thread(first_two.next().expect("client"));
    metric_reaches(p.admin(), "ringmesh_cluster_upstream_rq_pending_active", 1.0);

    let refused: Vec<_> = rest.into_iter().map(send_from_thread).collect();
    let refused: Vec<(Response, Duration)> = refused.into_iter().map(|t| t.join().expect("client")).collect();
    assert_eq!(
        gate.held(),
        1,
        "the refusals came while the upstream still held the first"
    );
    for (r, took) in &refused {
        assert_eq!(r.status, 503);
        assert_eq!(
            r.text(),
            "upstream connect error or disconnect/reset before headers. reset reason: overflow\n"
        );
        assert!(*took < Duration::from_millis(10), "a refusal took {took:?}");
    }
    let mut h2 = H2Client::connect(p.http());
    let started = Instant::now();
    let r = h2.get("echo.test", "/h2");
    let took = started.elapsed();
    assert_eq!(r.status, 503, "HTTP/2 is refused too");
    assert!(took < Duration::from_millis(10), "the HTTP/2 refusal took {took:?}");

    gate.open();
    for t in [first, second] {
        let (r, _) = t.join().expect("client");
        assert_eq!((r.status, r.text()), (200, "slow".to_string()));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one connection carried both");
    assert_eq!(up.count(), 2);

    let lines = json_log_lines(&log, 11);
    let flagged: Vec<&Value> = lines.iter().filter(|l| l["response_flags"] == "UO").collect();
    assert_eq!(flagged.len(), 9, "{lines:?}");
    for l in &flagged {
        assert_eq!(l["response_code"], 503, "{l}");
        assert_eq!(l["upstream_cluster"], "outbound|80||echo.test", "{l}");
        assert_eq!(
            l["response_code_details"], "upstream_max_pending_requests_overflow",
            "{l}"
        );
    }
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_rq_pending_overflow_total", &[CLUSTER]),
        Some(9.0),
        "{m}"
    );
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_cx_overflow_total", &[CLUSTER]),
        Some(9.0)
    );
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_rq_pending_active", &[CLUSTER]),
        Some(0.0)
    );
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_cx_active", &[CLUSTER]),
        Some(1.0)
    );
    assert_eq!(
        series_value(
            &m,
            "istio_requests_total",
            &["response_code=\"503\"", "response_flags=\"UO\""]
        ),
        Some(9.0),
        "{m}"
    );
}

/// The tests of limits shared by two workers hold only if both workers served requests.
fn both_workers_served(metrics: &str) {
    for w in ["worker=\"0\"", "worker=\"1\""] {
        let served = series_value(metrics, "ringmesh_worker_downstream_rq_total", &[w]).unwrap_or(0.0);
        assert!(
            served > 0.0,
            "both workers must have served requests for this test to hold: {metrics}"
        );
    }
}

/// `maxConnections: 1` with two workers: one connection for the proxy, not one per worker.
/// Sixteen clients (spread over both workers by the kernel) each send a request; while the
/// upstream holds the first, fifteen wait and the upstream has one connection; let go, every
/// request is answered and the upstream never held two at once.
fn a_limit_of_one_holds_with_two_workers(io: IoMode) {
    let gate = Arc::new(Gate::default());
    let up = slow_upstream(&gate);
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let rule = destination_rule("maxConnections: 1", "http1MaxPendingRequests: 100");
    let p = proxy(io, 2, &up, rule, &log, VS);
    let clients: Vec<Client> = (0..16).map(|_| Client::connect(p.http())).collect();
    let sent: Vec<_> = clients.into_iter().map(send_from_thread).collect();
    metric_reaches(p.admin(), "ringmesh_cluster_upstream_rq_pending_active", 15.0);
    assert_eq!(gate.held(), 1);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    gate.open();
    for t in sent {
        let (r, _) = t.join().expect("client");
        assert_eq!(r.status, 200);
    }
    assert_eq!(gate.most_held(), 1, "the upstream never held two requests at once");
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    both_workers_served(&m);
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_cx_active", &[CLUSTER]),
        Some(0.0),
        "{m}"
    );
}

/// `http2MaxRequests: 1` with two workers: one request in flight for the proxy, not one per
/// worker. Sixteen clients over both workers: while the upstream holds the first request, the
/// other fifteen are refused at once with 503 `UO`; let go, the first answers 200, and the
/// slot is free again.
fn http2_max_requests_of_one_holds_with_two_workers(io: IoMode) {
    let gate = Arc::new(Gate::default());
    let up = slow_upstream(&gate);
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let rule = destination_rule("", "http2MaxRequests: 1");
    let p = proxy(io, 2, &up, rule, &log, VS);
    let mut first = Client::connect(p.http());
    let held = thread::spawn(move || first.get("echo.test", "/held"));
    eventually(Duration::from_secs(10), "the first request at the upstream", || {
        gate.held() == 1
    })
    .unwrap();
    let refused: Vec<_> = (0..15).map(|_| send_from_thread(Client::connect(p.http()))).collect();
    for t in refused {
        let (r, took) = t.join().expect("client");
        assert_eq!(r.status, 503, "past http2MaxRequests: {}", r.text());
        assert!(took < Duration::from_secs(2), "refused at once, not queued: {took:?}");
    }
    assert_eq!(gate.most_held(), 1, "the upstream never held two requests at once");
    gate.open();
    assert_eq!(held.join().expect("client").status, 200);
    // The slot goes back once the try has ended, just after the answer's last write (a client
    // that asks again the instant it reads the answer can still meet it held): then the next
    // request is served, on whichever worker takes it.
    metric_reaches(p.admin(), "ringmesh_cluster_upstream_rq_active", 0.0);
    for _ in 0..4 {
        assert_eq!(Client::connect(p.http()).get("echo.test", "/after").status, 200);
    }
    both_workers_served(&admin_get(p.admin(), "/stats/prometheus").1);
}

/// `maxRetries: 1`: while one request's retry is held by the upstream, the retries the other
/// requests' failures ask for are not made: each answers the 503 it got, at once, counted as a
/// retry overflow. Let go, the held retry answers 200.
fn max_retries_bounds_retries_in_flight(io: IoMode) {
    let gate = Arc::new(Gate::default());
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let up = {
        let (gate, seen) = (gate.clone(), seen.clone());
        Upstream::start("flaky", move |r: &Recorded| {
            // A request's first try fails; its retry waits for the gate.
            if seen.lock().expect("seen").insert(r.target.clone()) {
                return Reply::status(503);
            }
            gate.hold();
            Reply::ok("retried")
        })
    };
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let rule = destination_rule("", "maxRetries: 1");
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: echo\nspec:\n  hosts: [echo.test]\n  http:\n  - route: [{destination: {host: echo.test}}]\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let p = proxy(io, 1, &up, rule, &log, vs);
    let first = {
        let mut c = Client::connect(p.http());
        thread::spawn(move || c.get("echo.test", "/r/0"))
    };
    eventually(
        Duration::from_secs(10),
        "the first request's retry at the upstream",
        || gate.held() == 1,
    )
    .unwrap();
    let retries_before = AtomicUsize::new(up.count());
    for i in 1..=4 {
        let mut c = Client::connect(p.http());
        let started = Instant::now();
        let r = c.get("echo.test", &format!("/r/{i}"));
        assert_eq!(
            r.status, 503,
            "the retry over maxRetries is not made: the 503 is the answer"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered without waiting for the held retry"
        );
    }
    assert_eq!(
        up.count(),
        retries_before.load(Ordering::SeqCst) + 4,
        "each of the four reached the upstream once: no retry"
    );
    gate.open();
    let r = first.join().expect("client");
    assert_eq!((r.status, r.text()), (200, "retried".to_string()));
    assert_eq!(up.count(), 6);
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_rq_retry_overflow_total", &[CLUSTER]),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_rq_retry_total", &[CLUSTER]),
        Some(1.0)
    );
    // The limit frees with its retry: the next request's retry is made.
    let mut c = Client::connect(p.http());
    assert_eq!(c.get("echo.test", "/r/5").text(), "retried");
}

/// A TCP listener's connections count under `maxConnections` too: with one tunnel open, the
/// next client connection is closed at once (Istio's TCP metrics say `UO`), and once the
/// tunnel closes a new one goes through.
fn tcp_connections_count(io: IoMode) {
    use std::io::{Read, Write};
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        thread::spawn(move || {
            // Echoes each connection until it closes; bounded by the test's few connections.
            for s in upstream.incoming().take(4) {
                let Ok(mut s) = s else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let listener =
        "  - name: db\n    address: 127.0.0.1:0\n    protocol: TCP\n    destination: {host: db.test, port: 5432}\n";
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.test]\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{tcp: {}}}}}\n",
        up_addr.port()
    );
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: db\nspec:\n  host: db.test\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1, tcpKeepalive: {time: 30s}}\n";
    let p = TestProxy::start(&[proxy_config(io, listener, ""), se, rule.to_string()]);
    let connect = || {
        let s = std::net::TcpStream::connect(p.listener("db")).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s
    };
    let mut first = connect();
    first.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    let mut second = connect();
    let mut rest = Vec::new();
    let _ = second.write_all(b"pong");
    let closed = second.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "the second connection is closed without an answer: {closed:?} {rest:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no second upstream connection");
    let m = admin_get(p.admin(), "/stats/prometheus").1;
    let cluster = "cluster_name=\"outbound|5432||db.test\"";
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_cx_overflow_total", &[cluster]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series_value(&m, "ringmesh_cluster_upstream_cx_active", &[cluster]),
        Some(1.0)
    );
    drop(first);
    eventually(Duration::from_secs(10), "the tunnel's place given back", || {
        series_value(
            &admin_get(p.admin(), "/stats/prometheus").1,
            "ringmesh_cluster_upstream_cx_active",
            &[cluster],
        ) == Some(0.0)
    })
    .unwrap();
    let mut third = connect();
    third.write_all(b"again").expect("write");
    let mut buf = [0u8; 5];
    third.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"again");
}

/// An HTTP/2 upstream with `maxConcurrentStreams: 1` and `maxConnections: 1`: while its one
/// connection carries a held stream, the next request would need a second connection and is
/// refused at once (503 `UO`; HTTP/2 requests do not queue for a connection).
fn http2_upstream_connections_count(io: IoMode) {
    let (release, released) = tokio::sync::watch::channel(false);
    let up = H2Upstream::start(move |(_req, mut respond)| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|go| *go).await;
            let head = http::Response::builder().status(200).body(()).expect("response");
            if let Ok(mut body) = respond.send_response(head, false) {
                let _ = body.send_data(bytes::Bytes::from_static(b"h2"), true);
            }
        }
    });
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    let spec = format!("  telemetry:\n    accessLog:\n      path: {}\n", log.display());
    let p = TestProxy::start(&[
        proxy_config(io, "", &spec),
        service_entry_speaking("HTTP2", "echo", "echo.test", 80, &[(up.addr, &[])]),
        destination_rule("maxConnections: 1", "maxConcurrentStreams: 1"),
        VS.to_string(),
    ]);
    let first = send_from_thread(Client::connect(p.http()));
    eventually(Duration::from_secs(10), "the first stream at the upstream", || {
        up.streams.load(Ordering::SeqCst) == 1
    })
    .unwrap();
    let mut c = Client::connect(p.http());
    let started = Instant::now();
    let r = c.get("echo.test", "/second");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert!(took < Duration::from_millis(10), "the refusal took {took:?}");
    release.send_replace(true);
    let (r, _) = first.join().expect("client");
    assert_eq!((r.status, r.text()), (200, "h2".to_string()));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let lines = json_log_lines(&log, 2);
    assert_eq!(
        lines.iter().filter(|l| l["response_flags"] == "UO").count(),
        1,
        "{lines:?}"
    );
    assert_eq!(
        cluster_metric(p.admin(), "ringmesh_cluster_upstream_cx_overflow_total"),
        Some(1.0)
    );
}

both_io!(
    http2_upstream_connections_count,
    tcp_connections_count,
    excess_is_refused_at_once,
    a_limit_of_one_holds_with_two_workers,
    http2_max_requests_of_one_holds_with_two_workers,
    max_retries_bounds_retries_in_flight
);
