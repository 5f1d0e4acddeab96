//! Routing from the compiled table: hosts, path/method/header/query matches, weighted splits,
//! rewrites, header operations, direct responses and redirects — on both I/O drivers.

use std::collections::HashMap;
use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};

fn matches_and_hosts(io: IoMode) {
    let (a, b, c, d) = (
        Upstream::named("a"),
        Upstream::named("b"),
        Upstream::named("c"),
        Upstream::named("d"),
    );
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
spec:
  hosts: ["shop.test", "*.shop.test"]
  http:
  - match:
    - uri: {exact: /exact}
    route: [{destination: {host: b.svc}}]
  - match:
    - uri: {regex: "/items/[0-9]+"}
      method: {exact: DELETE}
    route: [{destination: {host: c.svc}}]
  - match:
    - headers:
        x-canary: {exact: "yes"}
    - queryParams:
        canary: {exact: "1"}
    route: [{destination: {host: d.svc}}]
  - match:
    - uri: {prefix: /api}
    route: [{destination: {host: b.svc}}]
  - route: [{destination: {host: a.svc}}]
"#;
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("a", "a.svc", 80, &[(a.addr, &[])]),
        service_entry("b", "b.svc", 80, &[(b.addr, &[])]),
        service_entry("c", "c.svc", 80, &[(c.addr, &[])]),
        service_entry("d", "d.svc", 80, &[(d.addr, &[])]),
        vs.to_string(),
    ]);
    let mut cl = Client::connect(p.http());
    let mut ask = |host: &str, req: &str| {
        cl.send(format!("{req}\r\nHost: {host}\r\n\r\n").as_bytes());
        let r = cl.response().unwrap();
        (r.status, r.text())
    };
    assert_eq!(ask("shop.test", "GET /exact HTTP/1.1"), (200, "b".into()));
    assert_eq!(ask("shop.test", "GET /exact/more HTTP/1.1"), (200, "a".into()));
    assert_eq!(ask("shop.test", "DELETE /items/42 HTTP/1.1"), (200, "c".into()));
    assert_eq!(ask("shop.test", "GET /items/42 HTTP/1.1"), (200, "a".into()));
    assert_eq!(ask("shop.test", "GET /items/x42 HTTP/1.1"), (200, "a".into()));
    assert_eq!(ask("shop.test", "GET /any?canary=1 HTTP/1.1"), (200, "d".into()));
    assert_eq!(ask("shop.test", "GET /api/v1 HTTP/1.1"), (200, "b".into()));
    assert_eq!(ask("eu.shop.test:8080", "GET /api/v1 HTTP/1.1"), (200, "b".into()));
    assert_eq!(ask("SHOP.TEST", "GET / HTTP/1.1"), (200, "a".into()));
    cl.send(b"GET /x HTTP/1.1\r\nHost: shop.test\r\nX-Canary: yes\r\n\r\n");
    assert_eq!(cl.response().unwrap().text(), "d");
    // The ServiceEntry hosts have default routes too.
    cl.send(b"GET /x HTTP/1.1\r\nHost: c.svc\r\n\r\n");
    assert_eq!(cl.response().unwrap().text(), "c");
    // Unknown host: 404.
    cl.send(b"GET / HTTP/1.1\r\nHost: nope.test\r\n\r\n");
    assert_eq!(cl.response().unwrap().status, 404);
    // The connection survives a 404.
    cl.send(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    assert_eq!(cl.response().unwrap().text(), "a");
}

fn weighted_split_90_10(io: IoMode) {
    let (v1, v2) = (Upstream::named("v1"), Upstream::named("v2"));
    let dr = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews.test
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
"#;
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews.test]
  http:
  - route:
    - destination: {host: reviews.test, subset: v1}
      weight: 90
    - destination: {host: reviews.test, subset: v2}
      weight: 10
"#;
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry(
            "reviews",
            "reviews.test",
            9080,
            &[(v1.addr, &[("version", "v1")]), (v2.addr, &[("version", "v2")])],
        ),
        dr.to_string(),
        vs.to_string(),
    ]);
    let mut cl = Client::connect(p.http());
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..10_000 {
        let r = cl.get("reviews.test", "/");
        *counts.entry(r.text()).or_default() += 1;
    }
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert!(
        (800..=1200).contains(&v2),
        "v2 got {v2} of 10000 (want 1000 ± 200): {counts:?}"
    );
    assert_eq!(counts.values().sum::<u32>(), 10_000);
}

fn rewrites_and_header_ops(io: IoMode) {
    let up = Upstream::start("a", |r| ringmesh_tests::upstream::Reply::Full {
        status: 200,
        headers: vec![
            ("x-internal".into(), "secret".into()),
            ("x-version".into(), "old".into()),
        ],
        body: format!("{} {}", r.target, r.header("host").unwrap_or("")).into_bytes(),
    });
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
spec:
  hosts: [web.test]
  http:
  - match:
    - uri: {prefix: /old/}
    rewrite:
      uri: /new/
      authority: backend.internal
    headers:
      request:
        set: {x-env: prod}
        add: {x-added: "1"}
        remove: [x-drop]
      response:
        set: {x-version: "new"}
        remove: [x-internal]
    route: [{destination: {host: a.svc}}]
"#;
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("a", "a.svc", 80, &[(up.addr, &[])]),
        vs.to_string(),
    ]);
    let mut cl = Client::connect(p.http());
    cl.send(b"GET /old/page?q=1 HTTP/1.1\r\nHost: web.test\r\nX-Drop: x\r\nX-Env: dev\r\n\r\n");
    let r = cl.response().unwrap();
    assert_eq!(r.text(), "/new/page?q=1 backend.internal");
    assert_eq!(r.header("x-version"), Some("new"));
    assert!(r.header("x-internal").is_none());
    let got = &up.received()[0];
    assert_eq!(got.header("x-env"), Some("prod"));
    assert_eq!(got.header("x-added"), Some("1"));
    assert!(got.header("x-drop").is_none());
}

fn direct_response_and_redirect(io: IoMode) {
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: edge
spec:
  hosts: [edge.test]
  http:
  - match:
    - uri: {exact: /health}
    directResponse:
      status: 200
      body: {string: "i am fine"}
  - match:
    - uri: {prefix: /old}
    redirect:
      uri: /moved
      redirectCode: 308
  - match:
    - uri: {exact: /teapot}
    directResponse:
      status: 418
"#;
    let p = TestProxy::start(&[proxy_config(io, "", ""), vs.to_string()]);
    let mut cl = Client::connect(p.http());
    let r = cl.get("edge.test", "/health");
    assert_eq!((r.status, r.text().as_str()), (200, "i am fine"));
    let r = cl.get("edge.test:8080", "/old/thing?x=1");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("http://edge.test:8080/moved?x=1"));
    let r = cl.get("edge.test", "/teapot");
    assert_eq!(r.status, 418);
    assert_eq!(cl.get("edge.test", "/nothing").status, 404);
}

/// A VirtualService whose destination no ServiceEntry defines yet (Istio accepts it): the
/// proxy starts, the route answers 503 naming the host (Envoy's `NC`) while the connection and
/// the other routes keep working, and once a reload adds the ServiceEntry the route forwards.
fn destination_host_not_defined_answers_503_until_defined(io: IoMode) {
    let (ratings, other) = (Upstream::named("ratings"), Upstream::named("other"));
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: shop
spec:
  hosts: [ratings.shop.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /other}}]
    route: [{destination: {host: other.test}}]
  - route:
    - destination: {host: ratings.shop.svc.cluster.local, port: {number: 9080}}
"#;
    let other_se = service_entry("other", "other.test", 80, &[(other.addr, &[])]);
    let p = TestProxy::start(&[proxy_config(io, "", ""), other_se.clone(), vs.to_string()]);
    let mut cl = Client::connect(p.http());
    let r = cl.get("ratings.shop", "/ratings/1");
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        "no cluster found: no ServiceEntry defines host ratings.shop.svc.cluster.local\n"
    );
    // Same connection: the VirtualService's other route serves.
    assert_eq!(cl.get("ratings.shop", "/other").text(), "other");
    let (_, metrics) = admin_get(p.metrics(), "/stats/prometheus");
    assert!(
        metrics.contains("ringmesh_local_replies_total{response_flags=\"NC\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(ratings.count(), 0);

    let mut ratings_se = service_entry(
        "ratings",
        "ratings.shop.svc.cluster.local",
        9080,
        &[(ratings.addr, &[])],
    );
    ratings_se = ratings_se.replace("  name: ratings\n", "  name: ratings\n  namespace: shop\n");
    p.rewrite(&[proxy_config(io, "", ""), other_se, vs.to_string(), ratings_se]);
    eventually(
        Duration::from_secs(5),
        "the route to forward once the ServiceEntry is there",
        || cl.get("ratings.shop", "/ratings/1").text() == "ratings",
    )
    .unwrap();
}

both_io!(
    matches_and_hosts,
    weighted_split_90_10,
    rewrites_and_header_ops,
    direct_response_and_redirect,
    destination_host_not_defined_answers_503_until_defined
);
