//! `GET /explain` on a running proxy's admin port, and `ringmesh explain` (the real binary)
//! against it: each answer is checked against what the same request meets on the proxy's
//! listener, so an explanation that drifted from the request path fails here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::pki::{client_config, tls_exchange, TestCa};
use ringmesh_tests::proxy::{proxy_config, service_entry, temp_dir, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};
use serde_json::Value as Json;

/// `s` percent-encoded for a query string (everything but RFC 3986's unreserved characters).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/explain` with these parameters: the status and the JSON answer.
fn explain(admin: SocketAddr, params: &[(&str, &str)]) -> (u16, Json) {
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    let (status, body) = admin_get(admin, &format!("/explain?{}", query.join("&")));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// The names of the clusters an answer lists.
fn clusters(x: &Json) -> Vec<&str> {
    x["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// The endpoint addresses of the answer's cluster `i`.
fn endpoints(x: &Json, i: usize) -> Vec<String> {
    x["clusters"][i]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect()
}

const SHOP: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
spec:
  hosts: [shop.test]
  http:
  - name: canary
    match:
    - headers:
        x-canary: {exact: "yes"}
    route: [{destination: {host: b.svc}}]
  - name: admin
    match:
    - uri: {exact: /admin}
    directResponse:
      status: 418
      body: {string: "no admin here"}
  - name: default
    route: [{destination: {host: a.svc}}]
"#;

const REVIEWS: &str = r#"apiVersion: networking.istio.io/v1
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
---
apiVersion: networking.istio.io/v1
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

/// The outbound listener: header-matched and default routes, a weighted split, a direct
/// response, no route, a path normalization changes, a path it refuses, and bad questions —
/// each answer beside what the same request gets from the proxy.
fn outbound_routing_explained(io: IoMode) {
    let (a, b, v1, v2) = (
        Upstream::named("a"),
        Upstream::named("b"),
        Upstream::named("v1"),
        Upstream::named("v2"),
    );
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("a", "a.svc", 80, &[(a.addr, &[])]),
        service_entry("b", "b.svc", 80, &[(b.addr, &[])]),
        service_entry(
            "reviews",
            "reviews.test",
            9080,
            &[(v1.addr, &[("version", "v1")]), (v2.addr, &[("version", "v2")])],
        ),
        SHOP.to_string(),
        REVIEWS.to_string(),
    ]);
    let mut cl = Client::connect(p.http());
    let admin = p.admin();

    // The header picks the canary route; without it the default one.
    let (status, x) = explain(
        admin,
        &[("host", "shop.test"), ("path", "/x"), ("header", "X-Canary: yes")],
    );
    assert_eq!(status, 200, "{x}");
    assert_eq!(x["listener"]["name"], "http");
    assert_eq!(x["listener"]["address"], p.http().to_string());
    assert_eq!(x["listener"]["chosen"], "default: the first outbound HTTP listener");
    assert_eq!(x["virtual_host"]["name"], "default/shop");
    assert_eq!(
        (x["route"]["name"].as_str(), x["route"]["index"].as_u64()),
        (Some("canary"), Some(0))
    );
    assert_eq!(x["route"]["match_index"], 0);
    assert_eq!(clusters(&x), ["outbound|80||b.svc"]);
    assert_eq!(endpoints(&x, 0), [b.addr.to_string()]);
    assert_eq!(x["clusters"][0]["endpoints"][0]["eligible"], true);
    assert_eq!(x["verdict"]["status"], Json::Null, "forwarded: the upstream answers");
    assert!(x.get("authorization").is_none(), "no policies on an outbound listener");
    cl.send(b"GET /x HTTP/1.1\r\nHost: shop.test\r\nX-Canary: yes\r\n\r\n");
    assert_eq!(cl.response().unwrap().text(), "b");

    let (_, x) = explain(admin, &[("host", "shop.test"), ("path", "/x")]);
    assert_eq!(x["route"]["name"], "default");
    assert_eq!(x["route"]["index"], 2);
    assert_eq!(x["route"]["match_index"], Json::Null, "a route without conditions");
    assert_eq!(clusters(&x), ["outbound|80||a.svc"]);
    assert_eq!(endpoints(&x, 0), [a.addr.to_string()]);
    assert_eq!(cl.get("shop.test", "/x").text(), "a");

    // A weighted split: both clusters, their weights and endpoints.
    let (_, x) = explain(admin, &[("host", "reviews.test:9080")]);
    let split: Vec<(String, u64, f64)> = x["action"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap().to_owned(),
                c["weight"].as_u64().unwrap(),
                c["percent"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        split,
        [
            ("outbound|9080|v1|reviews.test".to_owned(), 90, 90.0),
            ("outbound|9080|v2|reviews.test".to_owned(), 10, 10.0)
        ]
    );
    assert_eq!(x["action"]["type"], "forward");
    assert_eq!(endpoints(&x, 0), [v1.addr.to_string()]);
    assert_eq!(endpoints(&x, 1), [v2.addr.to_string()]);
    assert_eq!(x["verdict"]["summary"], "forwarded to one of 2 clusters, by weight");
    let served = cl.get("reviews.test:9080", "/").text();
    assert!(served == "v1" || served == "v2", "{served}");

    // A direct response, also for a path normalization turns into it.
    for path in ["/admin", "//admin"] {
        let (_, x) = explain(admin, &[("host", "shop.test"), ("path", path)]);
        assert_eq!(x["request"]["path"], path);
        assert_eq!(x["request"]["normalized_path"], "/admin");
        assert_eq!(x["request"]["path_changed"], path != "/admin");
        assert_eq!(x["route"]["name"], "admin");
        assert_eq!(x["action"]["type"], "direct_response");
        assert_eq!(
            (x["verdict"]["status"].as_u64(), x["verdict"]["body"].as_str()),
            (Some(418), Some("no admin here"))
        );
        assert_eq!(x["clusters"], serde_json::json!([]));
        let r = cl.get("shop.test", path);
        assert_eq!((r.status, r.text().as_str()), (418, "no admin here"), "{path}");
    }

    // No virtual host: 404 NR.
    let (status, x) = explain(admin, &[("host", "nope.test"), ("path", "/")]);
    assert_eq!(status, 200);
    assert_eq!(
        (x["verdict"]["status"].as_u64(), x["verdict"]["flag"].as_str()),
        (Some(404), Some("NR"))
    );
    assert!(x.get("route").is_none() && x.get("virtual_host").is_none(), "{x}");
    assert_eq!(x["action"]["type"], "none");
    assert_eq!(cl.get("nope.test", "/").status, 404);

    // A path normalization refuses: the request's 400, said as the question's 400.
    let (status, x) = explain(admin, &[("host", "shop.test"), ("path", "/a%2Fb")]);
    assert_eq!(status, 400);
    assert_eq!(x["request_status"], 400);
    assert!(x["error"].as_str().unwrap().contains("escaped slash"), "{x}");
    assert_eq!(Client::connect(p.http()).get("shop.test", "/a%2Fb").status, 400);

    // Questions that cannot be answered.
    let (status, x) = explain(admin, &[("listener", "nope")]);
    assert_eq!(status, 400);
    assert_eq!(x["error"], "no listener named \"nope\" (listeners: http)");
    let (status, x) = explain(admin, &[("header", "no-colon")]);
    assert_eq!(status, 400);
    assert_eq!(x["error"], "header: \"no-colon\" is not name:value");
    let (status, _) = admin_get(admin, "/explain?path=%");
    assert_eq!(status, 400, "a malformed query is a bad question, not a crash");
}

/// An inbound HTTP listener (`direction: INBOUND`) named `inbound`.
const INBOUND: &str = "  - name: inbound\n    address: 127.0.0.1:0\n    protocol: HTTP\n    direction: INBOUND\n";

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  action: {action}\n  rules:\n{rules}")
}

/// The workload `shop/reviews` behind an inbound listener in STRICT mode, with an ALLOW
/// policy (frontend may GET /public*) and a DENY policy (`x-block: yes`); its certificate from
/// `ca`.
struct Server {
    proxy: TestProxy,
    up: Upstream,
    _certs: tempfile::TempDir,
}

impl Server {
    fn start(io: IoMode, ca: &TestCa) -> Server {
        let up = Upstream::named("app");
        let certs = temp_dir();
        let spec = format!(
            "  workload:\n    name: reviews\n    namespace: shop\n    serviceAccount: reviews\n{}",
            ca.identity_spec(certs.path(), "shop", "reviews")
        );
        let allow = policy(
            "frontend-reads",
            "ALLOW",
            &format!("  - from:\n    - source:\n        principals: [{}]\n    to:\n    - operation:\n        methods: [GET]\n        paths: [\"/public*\"]\n", FRONTEND.trim_start_matches("spiffe://")),
        );
        let deny = policy(
            "blocked-header",
            "DENY",
            "  - when:\n    - key: request.headers[x-block]\n      values: [\"yes\"]\n",
        );
        let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n".to_string();
        let proxy = TestProxy::start(&[
            proxy_config(io, INBOUND, &spec),
            service_entry("reviews", "reviews.shop", 80, &[(up.addr, &[])]),
            strict,
            allow,
            deny,
        ]);
        Server {
            proxy,
            up,
            _certs: certs,
        }
    }

    fn inbound(&self) -> SocketAddr {
        self.proxy.listener("inbound")
    }
}

/// An HTTP/1.1 GET over mutual TLS to the inbound listener with a certificate for `ns/sa`:
/// the status.
fn tls_get(ca: &TestCa, addr: SocketAddr, ns: &str, sa: &str, path: &str, extra: &str) -> u16 {
    let leaf = ca.issue(ns, sa);
    let config = client_config(Some(&leaf), &[b"http/1.1"]);
    let req = format!("GET {path} HTTP/1.1\r\nHost: reviews.shop\r\n{extra}Connection: close\r\n\r\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt
        .block_on(tls_exchange(addr, config, req.as_bytes()))
        .expect("TLS exchange");
    let text = String::from_utf8_lossy(&out);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{text}"))
}

/// The inbound listener: the mTLS mode, the decision and the policy that made it for a given
/// identity, and the proxy's certificate; each decision beside the status a client with that
/// identity's certificate gets.
fn inbound_authorization_explained(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let server = Server::start(io, &ca);
    let admin = server.proxy.admin();
    let ask = |source: &str, path: &str, header: Option<&str>| {
        let mut params = vec![
            ("listener", "inbound"),
            ("host", "reviews.shop"),
            ("path", path),
            ("source", source),
        ];
        if let Some(h) = header {
            params.push(("header", h));
        }
        let (status, x) = explain(admin, &params);
        assert_eq!(status, 200, "{x}");
        x
    };

    let x = ask(FRONTEND, "/public/a", None);
    assert_eq!(x["listener"]["direction"], "INBOUND");
    assert_eq!(x["mtls"]["mode"], "STRICT");
    assert_eq!(x["mtls"]["port"], server.inbound().port());
    assert_eq!(x["mtls"]["connection"], "mutual TLS");
    assert_eq!(x["mtls"]["peer"], FRONTEND);
    let a = &x["authorization"];
    assert_eq!(
        (a["decision"].as_str(), a["policy"].as_str(), a["action"].as_str()),
        (Some("ALLOW"), Some("shop/frontend-reads"), Some("ALLOW"))
    );
    assert_eq!(clusters(&x), ["outbound|80||reviews.shop"]);
    assert_eq!(x["verdict"]["status"], Json::Null);
    assert_eq!(
        tls_get(&ca, server.inbound(), "default", "frontend", "/public/a", ""),
        200
    );
    assert_eq!(server.up.count(), 1);

    // Another workload: no ALLOW policy matches.
    let x = ask(OTHER, "/public/a", None);
    let a = &x["authorization"];
    assert_eq!(
        (a["decision"].as_str(), a["policy"].as_str()),
        (Some("DENY"), Some("allow-nomatch"))
    );
    assert_eq!(a["reason"], "ALLOW policies apply and none matches");
    assert_eq!(
        (x["verdict"]["status"].as_u64(), x["verdict"]["flag"].as_str()),
        (Some(403), Some("RBAC"))
    );
    assert_eq!(tls_get(&ca, server.inbound(), "default", "other", "/public/a", ""), 403);

    // The DENY policy wins over the ALLOW one.
    let x = ask(FRONTEND, "/public/a", Some("x-block: yes"));
    let a = &x["authorization"];
    assert_eq!(
        (a["decision"].as_str(), a["policy"].as_str(), a["action"].as_str()),
        (Some("DENY"), Some("shop/blocked-header"), Some("DENY"))
    );
    assert_eq!(x["verdict"]["summary"], "denied by shop/blocked-header");
    assert_eq!(
        tls_get(
            &ca,
            server.inbound(),
            "default",
            "frontend",
            "/public/a",
            "x-block: yes\r\n"
        ),
        403
    );
    assert_eq!(server.up.count(), 1, "nothing denied reached the app");

    // No identity: STRICT closes the connection before any policy is asked.
    let (_, x) = explain(admin, &[("listener", "inbound"), ("host", "reviews.shop")]);
    assert_eq!(x["mtls"]["connection"], "refused");
    assert!(x.get("authorization").is_none(), "{x}");
    assert_eq!(x["verdict"]["status"], Json::Null);

    // The proxy's own certificate.
    let cert = &x["certificate"];
    assert_eq!(cert["identity"], "spiffe://cluster.local/ns/shop/sa/reviews");
    assert_eq!(cert["source"], "files");
    assert!(cert["seconds_left"].as_u64().unwrap() > 0, "{cert}");
    assert!(cert["not_after"].as_str().unwrap().ends_with('Z'), "{cert}");
}

/// The `ringmesh` binary of this package (built from the CLI's own source), or
/// `$RINGMESH_E2E_BIN_DIR/ringmesh`.
fn ringmesh() -> PathBuf {
    match std::env::var_os("RINGMESH_E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("ringmesh"),
        None => env!("CARGO_BIN_EXE_e2e-ringmesh").into(),
    }
}

/// `ringmesh args...`: the exit code, stdout and stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ringmesh()).args(args).output().expect("run ringmesh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real binary against the running proxy: the text report, the JSON, and a dead port.
fn cli_explains_through_the_admin_port(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let server = Server::start(io, &ca);
    let admin = server.proxy.admin().to_string();

    let (code, out, err) = run(&[
        "explain",
        "--admin",
        &admin,
        "--listener",
        "inbound",
        "--host",
        "reviews.shop",
        "--path",
        "//public/a",
        "-H",
        "x-block: yes",
        "--source",
        FRONTEND,
    ]);
    assert_eq!(code, 0, "{err}");
    let inbound = server.inbound();
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        format!("listener   inbound {inbound} (HTTP, INBOUND; asked)"),
        format!("request    GET //public/a host reviews.shop (path normalized to /public/a) from {FRONTEND}"),
        format!(
            "mtls       STRICT on port {}: mutual TLS, peer {FRONTEND} (STRICT: the client's certificate is checked)",
            inbound.port()
        ),
        "authz      DENY by shop/blocked-header (DENY): a DENY policy matches".to_string(),
        "route      reviews.shop/default (route 0, no conditions)".to_string(),
        "action     forward to outbound|80||reviews.shop 100.0%, path /public/a".to_string(),
        "result     403 RBAC: denied by shop/blocked-header".to_string(),
    ] {
        assert!(lines.contains(&want.as_str()), "missing {want:?} in\n{out}");
    }
    assert!(
        out.contains(&format!(
            "  endpoint {}  weight 1  plaintext  HTTP/1.1  HEALTHY",
            server.up.addr
        )),
        "{out}"
    );
    assert!(
        out.contains("cert       spiffe://cluster.local/ns/shop/sa/reviews, expires "),
        "{out}"
    );

    let (code, out, err) = run(&["explain", "--admin", &admin, "--listener", "inbound", "--source", OTHER]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "\nauthz      DENY (allow-nomatch; ALLOW policies: shop/frontend-reads): ALLOW policies apply and none matches\n"
        ),
        "{out}"
    );
    let (code, out, err) = run(&[
        "explain",
        "--admin",
        &admin,
        "--listener",
        "inbound",
        "-o",
        "json",
        "--source",
        OTHER,
    ]);
    assert_eq!(code, 0, "{err}");
    let x: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(x["authorization"]["policy"], "allow-nomatch");

    // The proxy refuses the question: its reason, exit 1.
    let (code, _, err) = run(&["explain", "--admin", &admin, "--listener", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "the proxy at {admin} refused the question: no listener named \"nope\""
        )),
        "{err}"
    );

    // Nobody at the address: a line naming it, exit 1.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let (code, out, err) = run(&["explain", "--admin", &dead_addr, "--host", "reviews.shop"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!("error: cannot reach the proxy's admin port at {dead_addr}: ")),
        "{err}"
    );
}

both_io!(
    outbound_routing_explained,
    inbound_authorization_explained,
    cli_explains_through_the_admin_port
);
