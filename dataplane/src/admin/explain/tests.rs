//! `/explain` on compiled snapshots: the query's parsing, and answers that the end-to-end
//! test (`tests/tests/explain.rs`) does not reach: STRICT without an identity, redirects,
//! consistent hashing, capture listeners.

use super::*;

fn snapshot(yaml: &str) -> Snapshot {
    let (resources, _) = ringmesh_api::load_str("mesh.yaml", yaml).expect("loads");
    ringmesh_api::compile(&ringmesh_api::CompileInput {
        resources,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{}", ringmesh_api::Diagnostics(e)))
    .snapshot
}

fn ask(s: &Snapshot, query: &str) -> Result<Explanation, ExplainError> {
    let cert = CertView {
        identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
        source: "files",
        ..CertView::default()
    };
    explain(s, &[], &Query::parse(query)?, cert, None)
}

const PROXY: &str = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata: {name: p}\nspec:\n  \
                     workload: {name: web, namespace: shop, serviceAccount: web, labels: {app: web}}\n  listeners:\n  \
                     - {name: out, address: '127.0.0.1:15001', protocol: HTTP}\n  \
                     - {name: in, address: '127.0.0.1:8080', protocol: HTTP, direction: INBOUND}\n";

const SERVICES: &str = r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1}
  - {address: 10.0.0.2, labels: {security.istio.io/tlsMode: istio}}
  - {address: 10.0.0.3}
"#;

#[test]
fn the_query_is_parsed_and_mistakes_are_named() {
    let q = Query::parse(
        "method=POST&host=web.shop&path=%2Fa%2F%2Fb%3Fx%3D1&header=X-User%3A+alice&header=x-b:%20two%20&\
         source=spiffe%3A%2F%2Fcluster.local%2Fns%2Fa%2Fsa%2Fb&source_ip=10.1.2.3&listener=in&destination=10.0.0.9:8080",
    )
    .unwrap();
    assert_eq!(q.method.as_deref(), Some("POST"));
    assert_eq!(q.path.as_deref(), Some("/a//b?x=1"));
    assert_eq!(
        q.headers,
        [("x-user".into(), "alice".into()), ("x-b".into(), "two".into())]
    );
    assert_eq!(q.source.as_deref(), Some("spiffe://cluster.local/ns/a/sa/b"));
    assert_eq!(q.source_ip, Some("10.1.2.3".parse().unwrap()));
    assert_eq!(q.destination, Some("10.0.0.9:8080".parse().unwrap()));
    assert_eq!(Query::parse("").unwrap(), Query::default());

    let err = |raw: &str| Query::parse(raw).unwrap_err().to_string();
    assert_eq!(err("header=novalue"), "header: \"novalue\" is not name:value");
    assert_eq!(err("header=bad%20name:v"), "header: \"bad name\" is not a field name");
    assert_eq!(
        err("header=x:a%0Db"),
        "header: the value of x holds a control character"
    );
    assert_eq!(err("path=x"), "path: \"x\" does not start with /");
    assert_eq!(err("method=GET&method=PUT"), "method: given more than once");
    assert_eq!(err("method=G%20T"), "method: \"G T\" is not a method");
    assert!(err("source=spiffe://td/ns/a").starts_with("source: \"spiffe://td/ns/a\" is not a workload's SPIFFE id"));
    assert_eq!(err("source_ip=nope"), "source_ip: \"nope\" is not an IP address");
    assert_eq!(err("destination=10.0.0.1"), "destination: \"10.0.0.1\" is not IP:PORT");
    assert!(err("hots=x").starts_with("hots: unknown parameter"));
    // Not UTF-8 after decoding: replaced, never a panic.
    assert!(Query::parse("host=%FF").is_ok());
}

#[test]
fn the_default_listener_is_the_first_outbound_http_one_and_a_wrong_name_lists_them() {
    let s = snapshot(&format!("{PROXY}{SERVICES}"));
    let x = ask(&s, "host=web.shop").unwrap();
    assert_eq!(
        (x.listener.name.as_str(), x.listener.chosen),
        ("out", "default: the first outbound HTTP listener")
    );
    assert!(x.mtls.is_none() && x.authorization.is_none(), "outbound: no policies");
    let e = ask(&s, "listener=nope").unwrap_err();
    assert_eq!(e.to_string(), "no listener named \"nope\" (listeners: out, in)");
}

#[test]
fn endpoints_say_which_hops_are_mutual_tls() {
    let s = snapshot(&format!(
        "{PROXY}  identity: {{certFile: /c, keyFile: /k, caFile: /r}}\n{SERVICES}"
    ));
    let x = ask(&s, "host=web.shop").unwrap();
    let c = &x.clusters[0];
    assert_eq!(
        (c.name.as_str(), c.upstream_tls, c.lb),
        ("outbound|80||web.shop", "AUTO", "LEAST_REQUEST")
    );
    let hops: Vec<(bool, bool)> = c.endpoints.iter().map(|e| (e.meshed, e.mtls)).collect();
    assert_eq!(hops, [(false, false), (true, true), (false, false)]);
    assert!(c.endpoints[1].http2, "a mutual TLS hop is HTTP/2");
    assert_eq!(x.verdict.status, None);
    assert_eq!(
        x.verdict.summary,
        "forwarded to outbound|80||web.shop (one of 3 endpoints, LEAST_REQUEST)"
    );
    // Without a certificate source auto mTLS compiles off.
    let s = snapshot(&format!("{PROXY}{SERVICES}"));
    assert_eq!(ask(&s, "host=web.shop").unwrap().clusters[0].upstream_tls, "DISABLE");
}

#[test]
fn strict_refuses_a_client_without_an_identity_before_any_policy() {
    let pa = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\n\
              spec:\n  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {9090: {mode: DISABLE}}\n";
    let s = snapshot(&format!("{PROXY}{SERVICES}{pa}"));
    let x = ask(&s, "listener=in&host=web.shop").unwrap();
    let m = x.mtls.as_ref().unwrap();
    assert_eq!((m.port, m.mode, m.connection), (8080, "STRICT", "refused"));
    assert!(x.authorization.is_none());
    assert_eq!(x.verdict.status, None);
    assert!(
        x.verdict
            .summary
            .starts_with("connection closed without an answer: STRICT"),
        "{}",
        x.verdict.summary
    );

    let x = ask(&s, "listener=in&host=web.shop&source=spiffe://cluster.local/ns/a/sa/b").unwrap();
    let m = x.mtls.as_ref().unwrap();
    assert_eq!(
        (m.connection, m.peer.as_deref()),
        ("mutual TLS", Some("spiffe://cluster.local/ns/a/sa/b"))
    );
    assert_eq!(x.authorization.as_ref().unwrap().decision, "ALLOW");

    // A port-level DISABLE: TLS is not answered, the identity is not seen.
    let x = ask(
        &s,
        "listener=in&host=web.shop&destination=127.0.0.1:9090&source=spiffe://cluster.local/ns/a/sa/b",
    )
    .unwrap();
    let m = x.mtls.as_ref().unwrap();
    assert_eq!(
        (m.port, m.mode, m.connection, m.peer.as_deref()),
        (9090, "DISABLE", "plaintext", None)
    );
}

#[test]
fn an_allow_policy_that_matches_none_denies_by_allow_nomatch() {
    let ap = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ops-only, namespace: shop}\n\
              spec:\n  rules: [{from: [{source: {namespaces: [ops]}}]}]\n";
    let s = snapshot(&format!("{PROXY}{SERVICES}{ap}"));
    let x = ask(
        &s,
        "listener=in&host=web.shop&source=spiffe://cluster.local/ns/ops/sa/x",
    )
    .unwrap();
    let a = x.authorization.unwrap();
    assert_eq!(
        (a.decision, a.policy.as_deref(), a.action),
        ("ALLOW", Some("shop/ops-only"), Some("ALLOW"))
    );
    let x = ask(
        &s,
        "listener=in&host=web.shop&source=spiffe://cluster.local/ns/dev/sa/x",
    )
    .unwrap();
    let a = x.authorization.as_ref().unwrap();
    assert_eq!((a.decision, a.policy.as_deref()), ("DENY", Some("allow-nomatch")));
    assert_eq!((x.verdict.status, x.verdict.flag), (Some(403), Some("RBAC")));
    // The route is still named: it is what the request would have met.
    assert!(x.route.is_some());
}

#[test]
fn a_redirect_says_its_location_and_a_rewrite_the_upstream_path() {
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n\
              spec:\n  hosts: [web.shop]\n  http:\n  - match: [{uri: {prefix: /old}}]\n    redirect: {uri: /new, redirectCode: 308}\n  \
              - match: [{uri: {prefix: /api/}}]\n    rewrite: {uri: /v2/}\n    route: [{destination: {host: web.shop}}]\n";
    let s = snapshot(&format!("{PROXY}{SERVICES}{vs}"));
    let x = ask(&s, "host=web.shop:80&path=/old/x?q=1").unwrap();
    match &x.action {
        ActionView::Redirect { status, location } => {
            assert_eq!((*status, location.as_str()), (308, "http://web.shop:80/new?q=1"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(x.verdict.status, Some(308));
    let x = ask(&s, "host=web.shop&path=/api//items").unwrap();
    assert_eq!(x.request.normalized_path, "/api/items");
    match &x.action {
        ActionView::Forward { upstream_path, .. } => assert_eq!(upstream_path.as_deref(), Some("/v2/items")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (x.route.as_ref().unwrap().index, x.route.as_ref().unwrap().match_index),
        (1, Some(0))
    );
}

#[test]
fn a_route_with_faults_says_what_it_injects() {
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n\
              spec:\n  hosts: [web.shop]\n  http:\n  - match: [{uri: {prefix: /slow}}]\n    \
              fault:\n      delay: {fixedDelay: 250ms, percentage: {value: 10}}\n      \
              abort: {httpStatus: 503, percentage: {value: 0.5}}\n    route: [{destination: {host: web.shop}}]\n  \
              - route: [{destination: {host: web.shop}}]\n";
    let s = snapshot(&format!("{PROXY}{SERVICES}{vs}"));
    let x = ask(&s, "host=web.shop&path=/slow").unwrap();
    let f = x.route.as_ref().unwrap().fault.as_ref().expect("the fault is shown");
    assert_eq!((f.delay_ms, f.delay_percent), (Some(250), Some(10.0)));
    assert_eq!(
        (f.abort_http_status, f.abort_grpc_status, f.abort_percent),
        (Some(503), None, Some(0.5))
    );
    assert!(
        x.notes
            .iter()
            .any(|n| n.contains("delays 10% of requests by 250 ms") && n.contains("answers 0.5% with 503 (flag FI)")),
        "{:?}",
        x.notes
    );
    // The other route injects nothing, and says nothing of faults.
    let x = ask(&s, "host=web.shop&path=/fast").unwrap();
    assert!(x.route.as_ref().unwrap().fault.is_none());
    assert!(!x.notes.iter().any(|n| n.contains("fault")), "{:?}", x.notes);
}

#[test]
fn a_mirrored_route_names_its_mirror_and_share() {
    let shadow =
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: shadow, namespace: shop}\n\
                  spec:\n  hosts: [shadow.shop]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  \
                  endpoints: [{address: 10.0.1.1}]\n";
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n\
              spec:\n  hosts: [web.shop]\n  http:\n  - mirror: {host: shadow.shop}\n    mirrorPercentage: {value: 25}\n    \
              route: [{destination: {host: web.shop}}]\n";
    let s = snapshot(&format!("{PROXY}{SERVICES}{shadow}{vs}"));
    let x = ask(&s, "host=web.shop&path=/").unwrap();
    match &x.action {
        ActionView::Forward { mirrors, .. } => {
            let got: Vec<(&str, f64)> = mirrors.iter().map(|m| (m.cluster.as_str(), m.percent)).collect();
            assert_eq!(got, [("outbound|80||shadow.shop", 25.0)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_consistent_hash_names_the_endpoint_the_key_picks() {
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\n\
              spec:\n  host: web.shop\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n";
    let s = snapshot(&format!("{PROXY}{SERVICES}{dr}"));
    let pick = |query: &str| ask(&s, query).unwrap().clusters[0].hash_pick.unwrap();
    let alice = pick("host=web.shop&header=x-user:alice");
    assert!(alice.is_some());
    assert_eq!(
        pick("host=web.shop&header=x-user:alice"),
        alice,
        "the same key, the same endpoint"
    );
    assert_eq!(pick("host=web.shop"), None, "no key: random");
    let c = &ask(&s, "host=web.shop").unwrap().clusters[0];
    assert_eq!((c.lb, c.hash_on.as_deref()), ("RING_HASH", Some("header x-user")));
    // The pick is the balancer's: the table of the compiled cluster gives the same endpoint.
    let cluster = s.clusters.iter().find(|c| c.name == "outbound|80||web.shop").unwrap();
    let h = ringmesh_api::hash_table::hash_bytes(b"alice");
    assert_eq!(
        crate::lb::consistent_pick(cluster, h).map(|i| cluster.endpoints[i].address),
        alice
    );
}

#[test]
fn capture_listeners_follow_the_original_destination() {
    let proxy =
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata: {name: p}\nspec:\n  capture: {ipv6: false}\n  \
                 outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n  \
                 workload:\n    name: web\n    namespace: shop\n    addresses: [10.1.0.9]\n    ports: {http: 8080}\n";
    let se =
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews, namespace: shop}\n\
              spec:\n  hosts: [reviews]\n  addresses: [10.96.0.7]\n  ports:\n  - {number: 9080, name: http}\n  \
              - {number: 5432, name: db, protocol: TCP}\n  endpoints: [{address: 10.1.0.1}]\n";
    let s = snapshot(&format!("{proxy}{se}"));
    let x = ask(&s, "destination=10.96.0.7:9080&host=10.96.0.7&path=/x").unwrap();
    assert_eq!((x.listener.name.as_str(), x.listener.protocol), ("outbound", "CAPTURE"));
    assert_eq!(x.clusters[0].name, "outbound|9080||reviews.shop.svc.cluster.local");
    let x = ask(&s, "destination=10.96.0.7:5432").unwrap();
    assert!(matches!(x.action, ActionView::Tcp { .. }), "{:?}", x.action);
    assert_eq!(x.clusters[0].name, "outbound|5432||reviews.shop.svc.cluster.local");
    let x = ask(&s, "destination=10.1.0.1:9080").unwrap();
    assert!(matches!(x.action, ActionView::Endpoint { .. }), "{:?}", x.action);
    let x = ask(&s, "destination=192.0.2.1:443").unwrap();
    assert!(x.verdict.summary.contains("REGISTRY_ONLY"), "{}", x.verdict.summary);
    // Inbound: the app's port, which the original destination names.
    let e = ask(&s, "listener=inbound").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("destination: listener inbound takes redirected connections"),
        "{e}"
    );
    let x = ask(&s, "listener=inbound&destination=10.1.0.9:8080&path=/x").unwrap();
    assert_eq!(x.clusters[0].name, "inbound|8080||");
    assert_eq!(x.mtls.as_ref().unwrap().mode, "PERMISSIVE");
    let x = ask(&s, "listener=inbound&destination=10.1.0.9:7777").unwrap();
    match x.action {
        ActionView::Passthrough { address } => assert_eq!(address, "127.0.0.1:7777".parse().unwrap()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refused_path_is_the_400_the_request_would_get() {
    let s = snapshot(&format!("{PROXY}{SERVICES}"));
    let e = ask(&s, "host=web.shop&path=/a%252Fb").unwrap_err();
    assert_eq!(e, ExplainError::PathRefused(PathRejection::EscapedSlash));
    assert_eq!(e.json()["request_status"], 400);
}
