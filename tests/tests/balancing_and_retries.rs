//! Load balancing, timeouts and retries end to end, on both I/O drivers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_tests::client::Client;
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

fn dr(lb: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.test\n  trafficPolicy:\n    loadBalancer:\n{lb}")
}

fn spread(p: &TestProxy, n: usize, extra: &str) -> HashMap<String, usize> {
    let mut c = Client::connect(p.http());
    let mut m = HashMap::new();
    for i in 0..n {
        c.send(format!("GET /{i} HTTP/1.1\r\nHost: svc.test\r\n{extra}\r\n").as_bytes());
        *m.entry(c.response().unwrap().text()).or_default() += 1;
    }
    m
}

fn three() -> (Upstream, Upstream, Upstream) {
    (Upstream::named("a"), Upstream::named("b"), Upstream::named("c"))
}

fn eps(ups: &[&Upstream]) -> Vec<(SocketAddr, &'static [(&'static str, &'static str)])> {
    ups.iter().map(|u| (u.addr, &[][..])).collect()
}

fn round_robin_is_even(io: IoMode) {
    let (a, b, c) = three();
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[&a, &b, &c])),
        dr("      simple: ROUND_ROBIN\n"),
    ]);
    let m = spread(&p, 300, "");
    assert_eq!(m.get("a"), Some(&100), "{m:?}");
    assert_eq!(m.get("b"), Some(&100), "{m:?}");
    assert_eq!(m.get("c"), Some(&100), "{m:?}");
}

fn random_and_least_request_reach_all(io: IoMode) {
    for lb in ["      simple: RANDOM\n", "      simple: LEAST_REQUEST\n"] {
        let (a, b, c) = three();
        let p = TestProxy::start(&[
            proxy_config(io, "", ""),
            service_entry("svc", "svc.test", 80, &eps(&[&a, &b, &c])),
            dr(lb),
        ]);
        let m = spread(&p, 600, "");
        for k in ["a", "b", "c"] {
            let n = m.get(k).copied().unwrap_or(0);
            assert!((120..=280).contains(&n), "{lb}: {k} got {n}: {m:?}");
        }
    }
}

fn consistent_hash_is_sticky(io: IoMode) {
    for lb in [
        "      consistentHash:\n        httpHeaderName: x-user\n",
        "      consistentHash:\n        httpHeaderName: x-user\n        maglev: {tableSize: 65537}\n",
    ] {
        let (a, b, c) = three();
        let p = TestProxy::start(&[
            proxy_config(io, "", ""),
            service_entry("svc", "svc.test", 80, &eps(&[&a, &b, &c])),
            dr(lb),
        ]);
        let mut owners = HashMap::new();
        for user in 0..30 {
            let m = spread(&p, 5, &format!("x-user: user-{user}\r\n"));
            assert_eq!(m.len(), 1, "{lb}: user-{user} spread over {m:?}");
            owners.insert(m.into_keys().next().unwrap(), ());
        }
        assert!(owners.len() >= 2, "{lb}: 30 users all hashed to one endpoint");
    }
}

fn cookie_hash_is_sticky(io: IoMode) {
    let (a, b, c) = three();
    let lb = "      consistentHash:\n        httpCookie: {name: session, ttl: 0s}\n";
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[&a, &b, &c])),
        dr(lb),
    ]);
    let mut owners = HashMap::new();
    for s in 0..20 {
        let m = spread(&p, 4, &format!("cookie: theme=dark; session=s{s}; x=1\r\n"));
        assert_eq!(m.len(), 1, "session s{s} spread over {m:?}");
        owners.insert(m.into_keys().next().unwrap(), ());
    }
    assert!(owners.len() >= 2, "20 sessions all hashed to one endpoint");
}

fn per_try_timeout_retries_elsewhere(io: IoMode) {
    let slow = Upstream::start("slow", |_| {
        Reply::Delay(Duration::from_millis(800), Box::new(Reply::ok("slow")))
    });
    let fast = Upstream::named("fast");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[&slow, &fast])),
        dr("      simple: ROUND_ROBIN\n"),
        vs_with("    retries: {attempts: 2, perTryTimeout: 100ms, retryOn: gateway-error}\n"),
    ]);
    let mut c = Client::connect(p.http());
    for _ in 0..4 {
        let start = Instant::now();
        let r = c.get("svc.test", "/");
        assert_eq!(r.text(), "fast");
        assert!(
            start.elapsed() < Duration::from_millis(700),
            "waited {:?}",
            start.elapsed()
        );
    }
}

fn endpoint_weights_respected(io: IoMode) {
    let (a, b) = (Upstream::named("a"), Upstream::named("b"));
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.test]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {}}}, weight: 3}}\n  - {{address: 127.0.0.1, ports: {{http: {}}}, weight: 1}}\n",
        a.addr.port(),
        b.addr.port()
    );
    let p = TestProxy::start(&[proxy_config(io, "", ""), se, dr("      simple: ROUND_ROBIN\n")]);
    let m = spread(&p, 400, "");
    assert_eq!(m.get("a"), Some(&300), "{m:?}");
    assert_eq!(m.get("b"), Some(&100), "{m:?}");
}

fn vs_with(http_extra: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.test]\n  http:\n  - route: [{{destination: {{host: svc.test}}}}]\n{http_extra}")
}

fn route_timeout_gives_504(io: IoMode) {
    let slow = Upstream::start("slow", |_| {
        Reply::Delay(Duration::from_millis(1500), Box::new(Reply::ok("late")))
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[&slow])),
        vs_with("    timeout: 200ms\n    retries: {attempts: 0}\n"),
    ]);
    let start = Instant::now();
    let r = Client::connect(p.http()).get("svc.test", "/");
    assert_eq!(r.status, 504);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1200),
        "took {took:?}"
    );
}

fn retry_on_503_moves_to_healthy_endpoint(io: IoMode) {
    let bad = Upstream::start("bad", |_| Reply::status(503));
    let good = Upstream::named("good");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[&bad, &good])),
        dr("      simple: ROUND_ROBIN\n"),
        vs_with("    retries: {attempts: 3, retryOn: \"503\"}\n"),
    ]);
    let mut c = Client::connect(p.http());
    for _ in 0..10 {
        let r = c.get("svc.test", "/");
        assert_eq!((r.status, r.text().as_str()), (200, "good"));
    }
    assert!(
        bad.count() >= 5,
        "the failing endpoint should have been tried: {}",
        bad.count()
    );
}

fn retry_on_connect_failure(io: IoMode) {
    // A port with nothing listening: bind, learn the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let good = Upstream::named("good");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(dead, &[]), (good.addr, &[])]),
        dr("      simple: ROUND_ROBIN\n"),
    ]);
    // Default policy (Istio's): 2 retries on connect-failure.
    let mut c = Client::connect(p.http());
    for _ in 0..6 {
        assert_eq!(c.get("svc.test", "/").text(), "good");
    }
}

fn body_already_streamed_is_not_retried(io: IoMode) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let flaky = Upstream::start("flaky", move |_| {
        s2.fetch_add(1, Ordering::SeqCst);
        Reply::Reset
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[&flaky])),
        vs_with("    retries: {attempts: 3, retryOn: \"reset,5xx\"}\n"),
    ]);
    // Larger than the body held for retries: it streams, and cannot be sent twice.
    let mut c = Client::connect(p.http());
    let mut post = b"POST /pay HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 20480\r\n\r\n".to_vec();
    post.extend_from_slice(&[b'm'; 20480]);
    c.send(&post);
    let r = c.response().unwrap();
    assert!(r.status == 503 || r.status == 502, "status {}", r.status);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a request with a streamed body was replayed"
    );
    // A body-less GET to the same resetting upstream is retried per policy: 1 + 3 tries.
    seen.store(0, Ordering::SeqCst);
    let r = Client::connect(p.http()).get("svc.test", "/");
    assert_eq!(r.status, 503);
    assert_eq!(seen.load(Ordering::SeqCst), 4);
}

fn no_endpoints_is_503(io: IoMode) {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: empty\nspec:\n  hosts: [svc.test]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: []\n".to_string();
    let p = TestProxy::start(&[proxy_config(io, "", ""), se]);
    let r = Client::connect(p.http()).get("svc.test", "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream\n");
}

fn upstream_connect_failure_is_503(io: IoMode) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(dead, &[])]),
    ]);
    let r = Client::connect(p.http()).get("svc.test", "/");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("connection failure"), "{}", r.text());
}

fn garbage_from_upstream_is_502(io: IoMode) {
    let up = Upstream::start("junk", |_| Reply::Raw(b"HTTP/1.1 2x0 NOPE\r\n\r\n".to_vec()));
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &eps(&[&up])),
    ]);
    let r = Client::connect(p.http()).get("svc.test", "/");
    assert_eq!(r.status, 502);
}

both_io!(
    round_robin_is_even,
    random_and_least_request_reach_all,
    consistent_hash_is_sticky,
    endpoint_weights_respected,
    cookie_hash_is_sticky,
    per_try_timeout_retries_elsewhere,
    route_timeout_gives_504,
    retry_on_503_moves_to_healthy_endpoint,
    retry_on_connect_failure,
    body_already_streamed_is_not_retried,
    no_endpoints_is_503,
    upstream_connect_failure_is_503,
    garbage_from_upstream_is_502,
);
