//! Endpoint health end to end: Istio's `outlierDetection` (ejection shared by every core,
//! `maxEjectionPercent`, `minHealthPercent`, return after the ejection time) and ringmesh's
//! `healthCheck` extension (HTTP and TCP probes).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::h2upstream::H2Upstream;
use ringmesh_tests::proxy::{proxy_config, service_entry, service_entry_speaking, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};
use serde_json::Value;

const CLUSTER: &str = "outbound|80||svc.test";

fn eps(ups: &[SocketAddr]) -> Vec<(SocketAddr, &'static [(&'static str, &'static str)])> {
    ups.iter().map(|a| (*a, &[][..])).collect()
}

fn dr(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.test\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n{policy}"
    )
}

fn vs(http_extra: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.test]\n  http:\n  - route: [{{destination: {{host: svc.test}}}}]\n{http_extra}")
}

fn two_workers(io: IoMode) -> String {
    proxy_config(io, "", "").replace("workers: 1", "workers: 2")
}

/// `/clusters`' view of endpoint `addr` of the test cluster: (health, health_flags).
fn endpoint_health(p: &TestProxy, addr: SocketAddr) -> (String, String) {
    let (status, body) = admin_get(p.admin(), "/clusters");
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).expect("json");
    let cluster = all
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == CLUSTER))
        .unwrap_or_else(|| panic!("no {CLUSTER} in {body}"));
    let ep = cluster["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no {addr} in {body}"));
    (
        ep["health"].as_str().unwrap_or_default().to_owned(),
        ep["health_flags"].as_str().unwrap_or_default().to_owned(),
    )
}

fn cluster_field(p: &TestProxy, field: &str) -> Value {
    let body = admin_get(p.admin(), "/clusters").1;
    let all: Value = serde_json::from_str(&body).expect("json");
    all.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == CLUSTER))
        .map(|c| c[field].clone())
        .unwrap_or(Value::Null)
}

/// The value of `family{cluster_name="outbound|80||svc.test"}` in the proxy's metrics.
fn metric(p: &TestProxy, family: &str) -> u64 {
    let body = admin_get(p.metrics(), "/stats/prometheus").1;
    let prefix = format!("{family}{{cluster_name=\"{CLUSTER}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in metrics"))
}

/// Per-worker accepted connections from the metrics.
fn accepted_per_worker(p: &TestProxy) -> Vec<u64> {
    let body = admin_get(p.metrics(), "/stats/prometheus").1;
    body.lines()
        .filter(|l| l.starts_with("ringmesh_worker_downstream_cx_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Requests that are not health probes.
fn served(u: &Upstream) -> usize {
    u.received().iter().filter(|r| r.target != "/healthz").count()
}

fn a_failing_endpoint_is_ejected_on_every_core_and_returns(io: IoMode) {
    let (a, b) = (Upstream::named("a"), Upstream::named("b"));
    let bad = Upstream::start("bad", |_| Reply::status(503));
    let p = TestProxy::start(&[
        two_workers(io),
        service_entry("svc", "svc.test", 80, &eps(&[a.addr, bad.addr, b.addr])),
        dr("    outlierDetection:\n      consecutive5xxErrors: 3\n      interval: 100ms\n      baseEjectionTime: 1s\n      maxEjectionPercent: 100\n"),
        vs("    retries: {attempts: 2, retryOn: 5xx}\n"),
    ]);
    // Sixteen connections: SO_REUSEPORT spreads them over both workers.
    let mut clients: Vec<Client> = (0..16).map(|_| Client::connect(p.http())).collect();
    let mut sent = 0;
    let mut errors = 0;
    while endpoint_health(&p, bad.addr).1.is_empty() {
        assert!(
            sent < 30,
            "not ejected after {sent} requests ({} reached it)",
            bad.count()
        );
        let r = clients[sent % 16].get("svc.test", "/");
        errors += usize::from(r.status != 200);
        sent += 1;
    }
    // Failure counts are shared across cores: the third 503, wherever it came from, ejects.
    assert_eq!(bad.count(), 3, "ejected on its third consecutive 5xx");
    assert_eq!(errors, 0, "retries hid the 503s from the client");
    assert_eq!(
        endpoint_health(&p, bad.addr),
        ("UNHEALTHY".into(), "/failed_outlier_check".into())
    );
    assert_eq!(metric(&p, "ringmesh_cluster_outlier_detection_ejections_active"), 1);
    assert_eq!(
        metric(&p, "ringmesh_cluster_outlier_detection_ejections_enforced_total"),
        1
    );
    assert_eq!(
        metric(
            &p,
            "ringmesh_cluster_outlier_detection_ejections_enforced_consecutive_5xx_total"
        ),
        1
    );
    let retries = metric(&p, "ringmesh_cluster_upstream_rq_retry_total");
    assert_eq!(retries, 3, "one retry per 503");

    // Ejected: on every connection of both workers, nothing reaches it, nothing is retried.
    let before = bad.count();
    let mut fresh: Vec<Client> = (0..16).map(|_| Client::connect(p.http())).collect();
    for i in 0..64 {
        let r = fresh[i % 16].get("svc.test", "/");
        assert_eq!(r.status, 200, "request {i} after the ejection");
    }
    let per_worker = accepted_per_worker(&p);
    assert!(
        per_worker.len() == 2 && per_worker.iter().all(|&n| n > 0),
        "both workers served connections: {per_worker:?}"
    );
    if endpoint_health(&p, bad.addr).1.is_empty() {
        // The 1 s ejection ended during the 64 requests on a slow machine: what reached the
        // endpoint came after its return.
        assert!(bad.count() > before);
    } else {
        assert_eq!(bad.count(), before, "an ejected endpoint got traffic");
        assert_eq!(metric(&p, "ringmesh_cluster_upstream_rq_retry_total"), retries);
    }

    // Back after baseEjectionTime (swept every 100 ms), and traffic reaches it again.
    eventually(Duration::from_secs(5), "the endpoint returns", || {
        endpoint_health(&p, bad.addr).1.is_empty()
    })
    .unwrap();
    assert_eq!(metric(&p, "ringmesh_cluster_outlier_detection_ejections_active"), 0);
    let back = bad.count();
    for c in fresh.iter_mut().take(6) {
        c.get("svc.test", "/");
    }
    assert!(bad.count() > back, "the returned endpoint is picked again");
}

/// An HTTP/2 upstream answering every stream with `status`.
fn h2_upstream(status: u16) -> H2Upstream {
    H2Upstream::start(move |(_req, mut respond)| async move {
        let resp = http::Response::builder().status(status).body(()).unwrap();
        let _ = respond.send_response(resp, true);
    })
}

fn http2_tries_count_too(io: IoMode) {
    let (good, bad) = (h2_upstream(200), h2_upstream(503));
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry_speaking("HTTP2", "svc", "svc.test", 80, &eps(&[good.addr, bad.addr])),
        dr("    outlierDetection: {consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 60s, maxEjectionPercent: 100}
"),
        vs(""),
    ]);
    // An HTTP/2 client (the call path) and an HTTP/1.1 one (translated to HTTP/2).
    let mut h2 = H2Client::connect(p.http());
    let mut h1 = Client::connect(p.http());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(h2.get("svc.test", "/").status.as_u16());
        statuses.push(h1.get("svc.test", "/").status);
    }
    assert_eq!(endpoint_health(&p, bad.addr).1, "/failed_outlier_check", "{statuses:?}");
    let reached = bad.streams.load(Ordering::SeqCst);
    assert_eq!(reached, 2);
    for _ in 0..10 {
        assert_eq!(h2.get("svc.test", "/").status.as_u16(), 200);
        assert_eq!(h1.get("svc.test", "/").status, 200);
    }
    assert_eq!(bad.streams.load(Ordering::SeqCst), reached);
}

/// A TCP listener `db` to `db.test:5432`, served by `endpoints`, with `policy` in its rule.
fn tcp_docs(io: IoMode, endpoints: &[SocketAddr], policy: &str) -> Vec<String> {
    let listener =
        "  - name: db\n    address: 127.0.0.1:0\n    protocol: TCP\n    destination: {host: db.test, port: 5432}\n";
    let mut se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.test]\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  resolution: STATIC\n  endpoints:\n".to_owned();
    for e in endpoints {
        se.push_str(&format!("  - {{address: 127.0.0.1, ports: {{tcp: {}}}}}\n", e.port()));
    }
    let dr = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: db\nspec:\n  host: db.test\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n{policy}"
    );
    vec![proxy_config(io, listener, ""), se, dr]
}

fn tcp_connect_failures_eject(io: IoMode) {
    let up = Upstream::named("db");
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let p = TestProxy::start(&tcp_docs(
        io,
        &[dead, up.addr],
        "    outlierDetection: {consecutive5xxErrors: 1, interval: 100ms, baseEjectionTime: 60s, maxEjectionPercent: 100}\n",
    ));
    let before = metric_of(&p, "ringmesh_upstream_cx_connect_fail_total");
    for i in 0..6 {
        // Each connection reaches the live endpoint (a failed connect moves on to the next).
        let mut c = Client::connect(p.listener("db"));
        assert_eq!(c.get("db.test", "/").status, 200, "connection {i}");
    }
    let fails = metric_of(&p, "ringmesh_upstream_cx_connect_fail_total") - before;
    assert_eq!(fails, 1, "one connect failure ejected the dead port");
    let body = admin_get(p.admin(), "/clusters").1;
    let cluster: Value = serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "outbound|5432||db.test").cloned())
        .expect("cluster");
    let flags: Vec<_> = cluster["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["health_flags"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(flags, ["/failed_outlier_check", ""]);
}

/// An unlabelled metric's value.
fn metric_of(p: &TestProxy, name: &str) -> u64 {
    let body = admin_get(p.metrics(), "/stats/prometheus").1;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn an_ejection_survives_a_reload(io: IoMode) {
    let (a, d) = (Upstream::named("a"), Upstream::named("d"));
    let bad = Upstream::start("bad", |_| Reply::status(500));
    let policy = dr("    outlierDetection: {consecutive5xxErrors: 1, interval: 100ms, baseEjectionTime: 60s, maxEjectionPercent: 100}\n");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[bad.addr, a.addr])),
        policy.clone(),
        vs(""),
    ]);
    let mut c = Client::connect(p.http());
    for _ in 0..2 {
        c.get("svc.test", "/");
    }
    assert_eq!(endpoint_health(&p, bad.addr).1, "/failed_outlier_check");
    // A new endpoint joins; the ejected one keeps its state (same cluster, same address).
    p.rewrite(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[d.addr, bad.addr, a.addr])),
        policy,
        vs(""),
    ]);
    eventually(Duration::from_secs(5), "the reload with three endpoints", || {
        cluster_field(&p, "endpoints").as_array().map(Vec::len) == Some(3)
    })
    .unwrap();
    assert_eq!(endpoint_health(&p, bad.addr).1, "/failed_outlier_check");
    let before = bad.count();
    for _ in 0..10 {
        assert_eq!(c.get("svc.test", "/").status, 200);
    }
    assert_eq!(bad.count(), before);
    assert!(d.count() > 0, "the new endpoint takes traffic");
}

fn max_ejection_percent_is_respected(io: IoMode) {
    let good = Upstream::named("good");
    let bad1 = Upstream::start("bad1", |_| Reply::status(500));
    let bad2 = Upstream::start("bad2", |_| Reply::status(500));
    // 3 endpoints, 50%: the first ejection is 33%, a second would be 67%.
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[good.addr, bad1.addr, bad2.addr])),
        dr("    outlierDetection: {consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 60s, maxEjectionPercent: 50}\n"),
        vs(""),
    ]);
    let mut c = Client::connect(p.http());
    for _ in 0..30 {
        c.get("svc.test", "/");
    }
    assert_eq!(metric(&p, "ringmesh_cluster_outlier_detection_ejections_active"), 1);
    assert!(metric(&p, "ringmesh_cluster_outlier_detection_ejections_overflow_total") >= 1);
    let ejected = [&bad1, &bad2]
        .iter()
        .filter(|u| endpoint_health(&p, u.addr).1 == "/failed_outlier_check")
        .count();
    assert_eq!(ejected, 1);
    // The one left in keeps getting its share.
    let (n1, n2) = (bad1.count(), bad2.count());
    for _ in 0..10 {
        c.get("svc.test", "/");
    }
    assert!(
        bad1.count() + bad2.count() > n1 + n2,
        "the second failing endpoint stays in"
    );
}

fn min_health_percent_disables_ejection(io: IoMode) {
    let good = Upstream::named("good");
    let bad = Upstream::start("bad", |_| Reply::status(500));
    // Ejecting one of two leaves 50% healthy, under 60%: panic mode, health ignored.
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[good.addr, bad.addr])),
        dr("    outlierDetection: {consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 60s, maxEjectionPercent: 100, minHealthPercent: 60}\n"),
        vs(""),
    ]);
    let mut c = Client::connect(p.http());
    for _ in 0..20 {
        c.get("svc.test", "/");
    }
    assert_eq!(cluster_field(&p, "panic"), Value::Bool(true));
    assert_eq!(metric(&p, "ringmesh_cluster_lb_healthy_panic"), 1);
    assert_eq!(bad.count(), 10, "round robin kept sending it its half: {}", bad.count());
}

fn an_http_health_check_removes_and_restores_an_endpoint(io: IoMode) {
    let good = Upstream::named("good");
    let sick = Arc::new(AtomicBool::new(false));
    let flaky = {
        let sick = sick.clone();
        Upstream::start("flaky", move |r| {
            if r.target == "/healthz" && sick.load(Ordering::SeqCst) {
                Reply::status(503)
            } else {
                Reply::ok("flaky")
            }
        })
    };
    let p = TestProxy::start(&[
        two_workers(io),
        service_entry("svc", "svc.test", 80, &eps(&[good.addr, flaky.addr])),
        dr("    healthCheck:\n      http: {path: /healthz, expectedStatuses: [200]}\n      interval: 100ms\n      timeout: 1s\n      unhealthyThreshold: 2\n      healthyThreshold: 2\n"),
        vs(""),
    ]);
    eventually(Duration::from_secs(5), "probes reach the endpoint", || {
        flaky.received().iter().any(|r| r.target == "/healthz")
    })
    .unwrap();
    let probe = flaky.received().into_iter().find(|r| r.target == "/healthz").unwrap();
    assert_eq!(probe.header("host"), Some("svc.test"));
    assert_eq!(endpoint_health(&p, flaky.addr).0, "HEALTHY");

    sick.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "the failing endpoint is taken out", || {
        endpoint_health(&p, flaky.addr).1 == "/failed_active_hc"
    })
    .unwrap();
    let before = served(&flaky);
    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(p.http())).collect();
    for i in 0..32 {
        assert_eq!(clients[i % 8].get("svc.test", "/").text(), "good");
    }
    assert_eq!(served(&flaky), before);
    assert!(metric(&p, "ringmesh_cluster_health_check_failure_total") >= 2);
    assert_eq!(metric(&p, "ringmesh_cluster_membership_healthy"), 1);

    sick.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "the endpoint returns", || {
        endpoint_health(&p, flaky.addr).0 == "HEALTHY"
    })
    .unwrap();
    for c in &mut clients {
        c.get("svc.test", "/");
    }
    assert!(served(&flaky) > before, "traffic reaches it again");
}

fn a_tcp_health_check_removes_a_dead_port(io: IoMode) {
    let good = Upstream::named("good");
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[good.addr, dead])),
        dr("    healthCheck: {tcp: {}, interval: 100ms, unhealthyThreshold: 1}\n"),
        vs(""),
    ]);
    eventually(Duration::from_secs(5), "the dead port is taken out", || {
        endpoint_health(&p, dead).1 == "/failed_active_hc"
    })
    .unwrap();
    assert_eq!(endpoint_health(&p, good.addr).0, "HEALTHY");
    let mut c = Client::connect(p.http());
    for i in 0..20 {
        assert_eq!(c.get("svc.test", "/").status, 200, "request {i}");
    }
}

fn bad_health_settings_are_refused_with_their_field(io: IoMode) {
    let good = Upstream::named("good");
    let e = TestProxy::try_start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[good.addr])),
        dr("    outlierDetection: {maxEjectionPercent: 150}\n    healthCheck: {http: {path: nope}}\n"),
    ])
    .expect_err("refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
        "{msg}"
    );
    assert!(msg.contains("spec.trafficPolicy.healthCheck.http.path"), "{msg}");
}

both_io!(
    a_failing_endpoint_is_ejected_on_every_core_and_returns,
    http2_tries_count_too,
    tcp_connect_failures_eject
);

#[test]
fn reload() {
    an_ejection_survives_a_reload(IoMode::Auto);
}

#[test]
fn max_ejection_percent() {
    max_ejection_percent_is_respected(IoMode::Auto);
}

#[test]
fn min_health_percent() {
    min_health_percent_disables_ejection(IoMode::Auto);
}

#[test]
fn http_health_check() {
    an_http_health_check_removes_and_restores_an_endpoint(IoMode::Auto);
}

#[test]
fn tcp_health_check() {
    a_tcp_health_check_removes_a_dead_port(IoMode::Auto);
}

#[test]
fn bad_settings() {
    bad_health_settings_are_refused_with_their_field(IoMode::Auto);
}
