//! Compiler tests: each feature and each error, asserting on message, field and line.

use std::collections::BTreeMap;

use super::*;
use crate::diagnostic::Severity;
use crate::load::load_str;
use crate::registry::RegistryEndpoint;
use crate::snapshot::{
    HashOn, IoMode, LbPolicy, ListenerKind, MtlsMode, PeerAuthn, RequestHead, RouteAction, UpstreamTls,
};

fn compile_yaml(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let (resources, mut warnings) = load_str("mesh.yaml", text)?;
    let mut compiled = compile(&CompileInput {
        resources,
        extra_endpoints: Vec::new(),
        version: 7,
    })?;
    warnings.append(&mut compiled.warnings);
    compiled.warnings = warnings;
    Ok(compiled)
}

fn ok(text: &str) -> Compiled {
    match compile_yaml(text) {
        Ok(c) => c,
        Err(e) => panic!("expected success, got:\n{}", crate::Diagnostics(e)),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match compile_yaml(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e,
    }
}

/// 1-based line of the first line containing `needle` (after `skip` earlier matches).
fn line_of(text: &str, needle: &str, skip: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(skip)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
}

#[derive(Debug, Default)]
struct Req {
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn new(path: &str) -> Self {
        Req {
            path: path.into(),
            headers: vec![],
        }
    }
    fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push((n.into(), v.into()));
        self
    }
}

impl RequestHead for Req {
    fn method(&self) -> &str {
        "GET"
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// Cluster names a request to `host` + `req` can go to.
fn route_clusters(c: &Compiled, host: &str, req: &Req) -> Vec<String> {
    let vh = c.snapshot.routes.find_host(host).expect("virtual host");
    let route = vh.find_route(req).expect("route");
    match &route.action {
        RouteAction::Forward(f) => f
            .clusters
            .entries
            .iter()
            .map(|(id, _)| c.snapshot.cluster(*id).name.clone())
            .collect(),
        other => panic!("not a forward: {other:?}"),
    }
}

/// Bookinfo's reviews service as Istio's samples write it (service-entry form), with the
/// samples' `destination-rule-all.yaml` rule and `virtual-service-reviews-jason-v2-v3.yaml`.
const BOOKINFO: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts:
  - reviews.default.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 10.0.0.1
    labels:
      app: reviews
      version: v1
  - address: 10.0.0.2
    labels:
      app: reviews
      version: v2
  - address: 10.0.0.3
    labels:
      app: reviews
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v3
      weight: 50
    - destination:
        host: reviews
        subset: v1
      weight: 50
";

#[test]
fn bookinfo_reviews_loads_unchanged_and_routes() {
    let c = ok(BOOKINFO);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.snapshot.version, 7);
    let names: Vec<&str> = c.snapshot.clusters.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"outbound|9080||reviews.default.svc.cluster.local"));
    assert!(names.contains(&"outbound|9080|v2|reviews.default.svc.cluster.local"));
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default.svc.cluster.local",
        "Reviews.Default",
    ] {
        assert!(c.snapshot.routes.find_host(host).is_some(), "{host}");
    }
    assert_eq!(
        route_clusters(&c, "reviews:9080", &Req::new("/reviews/1").header("end-user", "jason")),
        ["outbound|9080|v2|reviews.default.svc.cluster.local"]
    );
    assert_eq!(
        route_clusters(&c, "reviews", &Req::new("/reviews/1")),
        [
            "outbound|9080|v3|reviews.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        ]
    );
    let v2 = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.subset.as_deref() == Some("v2"))
        .expect("v2 cluster");
    assert_eq!(v2.endpoints.len(), 1);
    assert_eq!(v2.endpoints[0].address, "10.0.0.2:9080".parse().expect("addr"));
    assert!(matches!(v2.lb, LbPolicy::Random));
    let vh = c.snapshot.routes.find_host("reviews").expect("vh");
    assert_eq!(vh.name, "default/reviews");
    assert_eq!(vh.routes[1].name, "default/reviews/1");
    match &vh.routes[1].action {
        RouteAction::Forward(f) => {
            assert_eq!(f.clusters.entries.iter().map(|e| e.1).collect::<Vec<_>>(), [50, 100]);
            assert_eq!(f.retry.attempts, 2);
            assert_eq!(f.retry.retriable_status_codes, [503]);
            assert!(f.timeout.is_none());
        }
        other => panic!("{other:?}"),
    }
    // Default listener when there is no ProxyConfig.
    assert_eq!(c.snapshot.listeners.len(), 1);
    assert_eq!(
        c.snapshot.listeners[0].address,
        "127.0.0.1:15001".parse().expect("addr")
    );
    // The snapshot serializes for /config_dump.
    let json = serde_json::to_string(&c.snapshot).expect("serializes");
    assert!(json.contains("outbound|9080|v1|reviews.default.svc.cluster.local"));
}

#[test]
fn weights_must_sum_to_100() {
    let text = BOOKINFO.replacen("weight: 50", "weight: 40", 1);
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.http[1].route[1].weight"));
    assert_eq!(e[0].line, Some(line_of(&text, "weight: 50", 0)));
    assert_eq!(
        e[0].to_string(),
        format!(
            "mesh.yaml:{}: VirtualService default/reviews: spec.http[1].route[1].weight: \
             weights must sum to 100, got 90",
            line_of(&text, "weight: 50", 0)
        )
    );
}

#[test]
fn unknown_subset_is_an_error_and_unknown_host_a_warning() {
    let text = BOOKINFO.replacen("subset: v2", "subset: v4", 1).replacen(
        "        host: reviews\n        subset: v3",
        "        host: ratings\n        subset: v3",
        1,
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].route[0].destination.subset"));
    assert_eq!(e[0].line, Some(line_of(&text, "subset: v4", 0)));
    assert!(
        e[0].message
            .contains("subset \"v4\" is not defined in DestinationRule default/reviews")
            && e[0].message.contains("(subsets: v1, v2, v3)"),
        "{}",
        e[0].message
    );
}

/// Istio accepts a route to a host no ServiceEntry defines (`istioctl analyze` reports it as
/// IST0101), so a VirtualService can be applied before its ServiceEntry: a warning naming the
/// host and the line, and a placeholder cluster the proxy answers with 503 naming the host.
#[test]
fn destination_host_not_defined_is_a_warning_and_routes_to_a_placeholder() {
    let text = BOOKINFO.replacen(
        "        host: reviews\n        subset: v3",
        "        host: ratings\n        subset: v3",
        1,
    );
    let c = ok(&text);
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.field.as_deref(), Some("spec.http[1].route[0].destination.host"));
    assert_eq!(w.line, Some(line_of(&text, "host: ratings", 0)));
    assert_eq!(
        w.message,
        "referenced host not found: \"ratings\" matches no ServiceEntry (also tried \
         ratings.default.svc.cluster.local); requests routed to it get 503 until one defines it"
    );
    // The split keeps both destinations; the missing one is a placeholder without endpoints.
    let names = route_clusters(&c, "reviews", &Req::new("/"));
    assert_eq!(
        names,
        [
            "outbound|0|v3|ratings.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        ]
    );
    let placeholder = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.name == names[0])
        .expect("placeholder");
    assert!(placeholder.endpoints.is_empty());
    assert_eq!(
        placeholder.host_not_found.as_deref(),
        Some("no cluster found: no ServiceEntry defines host ratings.default.svc.cluster.local\n")
    );
    // Real clusters never carry the marker.
    assert!(c
        .snapshot
        .clusters
        .iter()
        .filter(|c| c.name != names[0])
        .all(|c| c.host_not_found.is_none()));
}

/// A VirtualService for a host nobody defined yet, with the port it will have: it compiles,
/// and once a ServiceEntry defines the host the same route forwards to the real cluster.
#[test]
fn virtual_service_before_its_service_entry() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: shop
spec:
  hosts: [ratings.shop.svc.cluster.local]
  http:
  - route:
    - destination:
        host: ratings.shop.svc.cluster.local
        port: {number: 9080}
";
    let alone = ok(vs);
    assert_eq!(alone.warnings.len(), 1, "{:#?}", alone.warnings);
    assert!(alone.warnings[0]
        .message
        .starts_with("referenced host not found: \"ratings.shop.svc.cluster.local\""));
    let names = route_clusters(&alone, "ratings.shop", &Req::new("/"));
    assert_eq!(names, ["outbound|9080||ratings.shop.svc.cluster.local"]);
    assert!(alone.snapshot.clusters[0].host_not_found.is_some());

    let se = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings
  namespace: shop
spec:
  hosts: [ratings.shop.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9}]
";
    let both = ok(&format!("{vs}---\n{se}"));
    assert!(both.warnings.is_empty(), "{:#?}", both.warnings);
    let names = route_clusters(&both, "ratings.shop", &Req::new("/"));
    assert_eq!(names, ["outbound|9080||ratings.shop.svc.cluster.local"]);
    let cluster = both
        .snapshot
        .clusters
        .iter()
        .find(|c| c.name == names[0])
        .expect("cluster");
    assert!(cluster.host_not_found.is_none());
    assert_eq!(cluster.endpoints.len(), 1);
}

/// A port out of range is still an error when the host is not defined: that is a mistake in
/// the VirtualService itself, not a resource that has yet to come.
#[test]
fn destination_port_checked_even_when_host_not_defined() {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings, port: {number: 70000}}
";
    let e = errors(vs);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(
        e[0].field.as_deref(),
        Some("spec.http[0].route[0].destination.port.number")
    );
}

#[test]
fn destination_rule_for_a_host_not_defined_is_a_warning() {
    let dr = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}]
";
    let c = ok(dr);
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(c.warnings[0].field.as_deref(), Some("spec.host"));
    assert_eq!(
        c.warnings[0].message,
        "referenced host not found: \"ratings\" matches no ServiceEntry (also tried \
         ratings.shop.svc.cluster.local); the rule takes effect once a ServiceEntry defines it"
    );
}

/// A TCP listener whose destination is not defined yet: the listener is kept (connections are
/// closed until the host appears), with the same warning.
#[test]
fn tcp_listener_destination_not_defined_is_a_warning() {
    let pc = "\
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
spec:
  listeners:
  - {name: db, address: 127.0.0.1:15432, protocol: TCP, destination: {host: db.local, port: 5432}}
";
    let c = ok(pc);
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(
        c.warnings[0].field.as_deref(),
        Some("spec.listeners[0].destination.host")
    );
    assert_eq!(c.snapshot.listeners.len(), 1);
    assert_eq!(c.snapshot.clusters[0].name, "outbound|5432||db.local");
}

#[test]
fn subset_without_destination_rule() {
    let text = BOOKINFO
        .replace("kind: DestinationRule", "kind: DestinationRule\n")
        .replace(
            "  host: reviews\n  trafficPolicy",
            "  host: other.example.com\n  trafficPolicy",
        );
    let e = errors(&text);
    assert!(
        e.iter().any(|d| d.message
            == "subset \"v2\" is not defined: no DestinationRule for host \
                reviews.default.svc.cluster.local"),
        "{e:#?}"
    );
}

const SVC: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: web
spec:
  hosts: [web.example.com]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - address: 127.0.0.1
    ports: {http: 8080}
";

fn vs(http: &str) -> String {
    format!(
        "{SVC}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web\nspec:\n  hosts: [web.example.com]\n  http:\n{http}"
    )
}

#[test]
fn redirect_and_route_together() {
    let text = vs("  - redirect: {uri: /new}\n    route:\n    - destination: {host: web.example.com}\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].message, "route and redirect cannot both be set in one http route");
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].redirect"));
    assert_eq!(e[0].line, Some(line_of(&text, "redirect:", 0)));
}

#[test]
fn direct_response_needs_status() {
    let text = vs("  - directResponse:\n      body: {string: hi}\n");
    let e = errors(&text);
    assert_eq!(e[0].message, "directResponse.status is required");
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].directResponse"));
    assert_eq!(e[0].line, Some(line_of(&text, "directResponse:", 0)));
}

#[test]
fn direct_response_and_redirect_compile() {
    let text = vs("  - match: [{uri: {exact: /old}}]\n    redirect: {uri: /new, redirectCode: 302, scheme: HTTPS}\n  - directResponse: {status: 503, body: {bytes: aGVsbG8=}}\n");
    let c = ok(&text);
    let vh = c.snapshot.routes.find_host("web.example.com").expect("vh");
    match &vh.find_route(&Req::new("/old")).expect("route").action {
        RouteAction::Redirect(r) => {
            assert_eq!(r.status, 302);
            assert_eq!(r.path.as_deref(), Some("/new"));
            assert_eq!(r.scheme.as_deref(), Some("https"));
        }
        other => panic!("{other:?}"),
    }
    match &vh.find_route(&Req::new("/x")).expect("route").action {
        RouteAction::Direct(d) => {
            assert_eq!(d.status, 503);
            assert_eq!(d.body, "hello");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_regex_names_the_problem() {
    let text = vs(
        "  - match:\n    - uri:\n        regex: \"/api/(v1\"\n    route:\n    - destination: {host: web.example.com}\n",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].match[0].uri.regex"));
    assert_eq!(e[0].line, Some(line_of(&text, "regex:", 0)));
    assert!(
        e[0].message.starts_with("invalid regex \"/api/(v1\""),
        "{}",
        e[0].message
    );
    assert!(e[0].message.contains("unclosed group"), "{}", e[0].message);
}

#[test]
fn string_match_needs_exactly_one() {
    let text =
        vs("  - match:\n    - uri: {exact: /a, prefix: /b}\n    route:\n    - destination: {host: web.example.com}\n");
    let e = errors(&text);
    assert_eq!(
        e[0].message,
        "set only one of exact, prefix or regex (found exact, prefix)"
    );
    let text = vs("  - match:\n    - uri: {}\n    route:\n    - destination: {host: web.example.com}\n");
    assert_eq!(errors(&text)[0].message, "set one of exact, prefix or regex");
}

#[test]
fn bad_durations_and_retry_values() {
    let text = vs("  - route:\n    - destination: {host: web.example.com}\n    timeout: 5 seconds\n    retries:\n      attempts: 3\n      perTryTimeout: 1x\n      retryOn: 5xx,gateway-eror,503\n");
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].timeout"));
    assert!(e[0].message.contains("\"5 seconds\""), "{}", e[0].message);
    assert_eq!(e[0].line, Some(line_of(&text, "timeout: 5", 0)));
    assert_eq!(e[1].field.as_deref(), Some("spec.http[0].retries.perTryTimeout"));
    assert_eq!(e[2].field.as_deref(), Some("spec.http[0].retries.retryOn"));
    assert!(
        e[2].message.contains("did you mean \"gateway-error\""),
        "{}",
        e[2].message
    );
}

#[test]
fn retry_policies() {
    let text = vs("  - match: [{uri: {prefix: /a}}]\n    route:\n    - destination: {host: web.example.com}\n    retries: {attempts: 0}\n  - match: [{uri: {prefix: /b}}]\n    route:\n    - destination: {host: web.example.com}\n    timeout: 1.5s\n    retries: {attempts: 4, perTryTimeout: 250ms, retryOn: \"5xx,reset,retriable-4xx,502\"}\n");
    let c = ok(&text);
    let vh = c.snapshot.routes.find_host("web.example.com").expect("vh");
    let forward = |p: &str| match &vh.find_route(&Req::new(p)).expect("route").action {
        RouteAction::Forward(f) => f.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(forward("/a").retry.attempts, 0);
    let b = forward("/b");
    assert_eq!(b.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(b.retry.attempts, 4);
    assert_eq!(b.retry.per_try_timeout, Some(Duration::from_millis(250)));
    assert!(b.retry.on_5xx && b.retry.on_reset && !b.retry.on_connect_failure);
    assert_eq!(b.retry.retriable_status_codes, [409, 502]);
    assert!(b.retry.retries_status(500));
}

#[test]
fn ports_must_be_valid() {
    let text = SVC
        .replace("number: 80", "number: -5")
        .replace("http: 8080", "http: 70000");
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.ports[0].number"));
    assert_eq!(e[0].message, "port must be between 1 and 65535, got -5");
    assert_eq!(e[0].line, Some(line_of(&text, "number: -5", 0)));
    assert_eq!(e[1].field.as_deref(), Some("spec.endpoints[0].ports.http"));
    assert_eq!(e[1].line, Some(line_of(&text, "http: 70000", 0)));
}

#[test]
fn endpoint_ports_override_target_port() {
    let text = format!(
        "{}---\n{}",
        SVC,
        SVC.replace("name: web", "name: api")
            .replace("web.example.com", "api.example.com")
            .replace("protocol: HTTP}", "protocol: HTTP, targetPort: 9090}")
            .replace("    ports: {http: 8080}\n", "")
    );
    let c = ok(&text);
    let addr = |name: &str| {
        c.snapshot
            .clusters
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.endpoints[0].address.to_string())
    };
    assert_eq!(addr("outbound|80||web.example.com").as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(addr("outbound|80||api.example.com").as_deref(), Some("127.0.0.1:9090"));
}

#[test]
fn dns_hostname_endpoints_not_supported_yet() {
    let text = SVC
        .replace("  endpoints:", "  resolution: DNS\n  endpoints:")
        .replace("address: 127.0.0.1", "address: web.internal");
    let e = errors(&text);
    assert_eq!(
        e[0].message,
        "resolution DNS with hostname endpoints is not supported yet; use IP addresses"
    );
    assert_eq!(e[0].field.as_deref(), Some("spec.endpoints[0].address"));
    // DNS with IP literal endpoints is fine.
    ok(&SVC.replace("  endpoints:", "  resolution: DNS\n  endpoints:"));
}

#[test]
fn duplicate_resources_and_hosts() {
    let text = format!("{SVC}---\n{SVC}");
    let e = errors(&text);
    assert!(
        e[0].message
            .starts_with("duplicate ServiceEntry default/web; the first is defined at mesh.yaml:1"),
        "{e:#?}"
    );
    assert_eq!(e[0].line, Some(line_of(&text, "name: web", 1)));
    let text = format!("{SVC}---\n{}", SVC.replace("name: web", "name: web2"));
    let e = errors(&text);
    assert!(
        e[0].message
            .starts_with("host web.example.com is already declared by ServiceEntry default/web"),
        "{e:#?}"
    );
}

#[test]
fn two_virtual_services_claiming_a_host() {
    let one = vs("  - route:\n    - destination: {host: web.example.com}\n");
    let two = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web-canary\n  namespace: default\nspec:\n  hosts: [web.example.com]\n  http:\n  - route:\n    - destination: {host: web.example.com}\n";
    let text = format!("{one}{two}");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].resource.as_deref(), Some("VirtualService default/web-canary"));
    assert!(
        e[0].message
            .starts_with("host web.example.com is already claimed by VirtualService default/web at mesh.yaml:"),
        "{}",
        e[0].message
    );
}

#[test]
fn default_virtual_host_prefers_the_http_port() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db]
  ports:
  - {number: 5432, name: tcp-pg, protocol: TCP}
  - {number: 8080, name: http-admin, protocol: HTTP}
  endpoints: [{address: 10.1.0.1}]
";
    let c = ok(text);
    assert_eq!(
        route_clusters(&c, "db.data.svc.cluster.local", &Req::new("/")),
        ["outbound|8080||db.data.svc.cluster.local"]
    );
    assert!(c.snapshot.routes.find_host("db.data").is_some());
    assert_eq!(c.snapshot.clusters.len(), 2);
}

#[test]
fn several_ports_need_a_destination_port() {
    let text = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  hosts: [web.example.com]\n  http:\n  - route:\n    - destination: {{host: web.example.com}}\n  - route:\n    - destination: {{host: web.example.com, port: {{number: 81}}}}\n",
        SVC.replace(
            "  - {number: 80, name: http, protocol: HTTP}\n",
            "  - {number: 80, name: http, protocol: HTTP}\n  - {number: 443, name: https, protocol: HTTPS}\n"
        )
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(
        e[0].message,
        "service web.example.com has several ports (80, 443); set destination port.number"
    );
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].route[0].destination"));
    assert_eq!(
        e[1].message,
        "port 81 is not a port of service web.example.com (ports: 80, 443)"
    );
    assert_eq!(
        e[1].field.as_deref(),
        Some("spec.http[1].route[0].destination.port.number")
    );
}

#[test]
fn header_operations_merge() {
    let text = vs("  - headers:\n      request:\n        set: {X-Route: r}\n        remove: [X-Debug]\n    route:\n    - destination: {host: web.example.com}\n      headers:\n        request: {set: {x-route: d, x-dest: d}}\n        response: {add: {x-served-by: web}}\n");
    let c = ok(&text);
    let vh = c.snapshot.routes.find_host("web.example.com").expect("vh");
    let r = &vh.routes[0];
    assert_eq!(
        r.request_headers.set,
        [
            ("x-dest".to_owned(), "d".to_owned()),
            ("x-route".to_owned(), "d".to_owned())
        ]
    );
    assert_eq!(r.request_headers.remove, ["x-debug"]);
    assert_eq!(r.response_headers.add, [("x-served-by".to_owned(), "web".to_owned())]);
}

#[test]
fn differing_destination_headers_are_an_error() {
    let text = format!(
        "{}---\n{}",
        vs("  - route:\n    - destination: {host: web.example.com}\n      weight: 50\n      headers: {request: {set: {x-v: a}}}\n    - destination: {host: api.example.com}\n      weight: 50\n      headers: {request: {set: {x-v: b}}}\n"),
        SVC.replace("name: web", "name: api").replace("web.example.com", "api.example.com")
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].route[1].headers"));
    assert!(e[0]
        .message
        .starts_with("header operations differ between destinations"));
}

#[test]
fn rewrite_and_matches_compile() {
    let text = vs("  - match:\n    - uri: {prefix: /v1/}\n      ignoreUriCase: true\n      withoutHeaders: {x-canary: {}}\n      queryParams: {debug: {exact: \"1\"}}\n      authority: {prefix: web}\n    rewrite: {uri: /v2/, authority: backend}\n    route:\n    - destination: {host: web.example.com}\n");
    let c = ok(&text);
    let vh = c.snapshot.routes.find_host("web.example.com").expect("vh");
    let r = &vh.routes[0];
    let m = &r.matches[0];
    assert!(m.path.as_ref().is_some_and(|p| p.ignore_case));
    assert_eq!(m.headers.len(), 2);
    assert_eq!(m.query.len(), 1);
    match &r.action {
        RouteAction::Forward(f) => {
            assert_eq!(f.host_rewrite.as_deref(), Some("backend"));
            let rw = f.path_rewrite.as_ref().expect("rewrite");
            assert_eq!(rw.rewrite(Some(m), "/V1/users"), "/v2/users");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gateway_only_virtual_service_is_skipped() {
    let text = vs("  - route:\n    - destination: {host: web.example.com}\n").replace(
        "  hosts: [web.example.com]\n  http:",
        "  hosts: [web.example.com]\n  gateways: [istio-ingressgateway]\n  http:",
    );
    let c = ok(&text);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].message.contains("skipped"));
    // The service's default virtual host serves the host instead.
    assert_eq!(
        c.snapshot.routes.find_host("web.example.com").map(|v| v.name.as_str()),
        Some("web.example.com")
    );
}

#[test]
fn load_balancers() {
    let dr = |policy: &str| {
        format!(
            "{SVC}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: web.example.com\n  trafficPolicy:\n{policy}"
        )
    };
    let lb = |policy: &str| ok(&dr(policy)).snapshot.clusters[0].lb.clone();
    assert!(matches!(ok(SVC).snapshot.clusters[0].lb, LbPolicy::LeastRequest));
    assert!(matches!(
        lb("    loadBalancer: {simple: ROUND_ROBIN}\n"),
        LbPolicy::RoundRobin
    ));
    match lb("    loadBalancer:\n      consistentHash:\n        httpHeaderName: X-User\n        ringHash: {minimumRingSize: 2048}\n") {
        LbPolicy::RingHash { hash_on: HashOn::Header(h), table } => {
            assert_eq!(h, "x-user");
            assert!(table.len() >= 2048);
        }
        other => panic!("{other:?}"),
    }
    match lb("    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n        maglev: {tableSize: 251}\n")
    {
        LbPolicy::Maglev {
            hash_on: HashOn::SourceIp,
            table,
        } => assert_eq!(table.len(), 251),
        other => panic!("{other:?}"),
    }
    let text = dr("    loadBalancer:\n      consistentHash:\n        httpCookie: {name: session, ttl: 0s}\n        maglev: {tableSize: 1000}\n");
    let e = errors(&text);
    assert_eq!(
        e[0].field.as_deref(),
        Some("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize")
    );
    assert!(e[0].message.contains("prime"), "{}", e[0].message);
    let e = errors(&dr("    loadBalancer: {simple: PASSTHROUGH}\n"));
    assert!(e[0].message.starts_with("PASSTHROUGH load balancing"));
    let e = errors(&dr("    loadBalancer: {consistentHash: {}}\n"));
    assert!(e[0].message.starts_with("consistentHash needs one of"));
}

#[test]
fn connection_pool_and_subset_overrides() {
    let text = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: web.example.com\n  trafficPolicy:\n    connectionPool:\n      tcp: {{connectTimeout: 250ms, maxConnections: 10}}\n      http: {{idleTimeout: 30s, maxRequestsPerConnection: 100}}\n  subsets:\n  - name: slow\n    trafficPolicy:\n      connectionPool:\n        tcp: {{connectTimeout: 2s}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web.example.com]\n  http:\n  - route:\n    - destination: {{host: web.example.com, subset: slow}}\n",
        SVC
    );
    let c = ok(&text);
    let base = &c.snapshot.clusters[0];
    assert_eq!(base.connect_timeout, Duration::from_millis(250));
    assert_eq!(base.pool.idle_timeout, Duration::from_secs(30));
    assert_eq!(base.pool.max_requests_per_connection, Some(100));
    let slow = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.subset.is_some())
        .expect("subset cluster");
    assert_eq!(slow.name, "outbound|80|slow|web.example.com");
    assert_eq!(slow.connect_timeout, Duration::from_secs(2));
    assert_eq!(slow.pool.idle_timeout, Duration::from_secs(30));
    assert_eq!(
        slow.endpoints.len(),
        1,
        "a subset without labels selects every endpoint"
    );
    assert_eq!(base.pool.max_connections, Some(10));
    assert_eq!(
        slow.pool.max_connections,
        Some(10),
        "the subset inherits the rule's limit"
    );
    assert!(
        !c.warnings.iter().any(|w| w.message.contains("not enforced")),
        "{:?}",
        c.warnings
    );
}

const PROXY: &str = "\
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
spec:
  workers: 2
  cpus: [0, 1]
  io: epoll
  adminAddress: 127.0.0.1:16000
  limits:
    maxHeaders: 50
    requestHeaderTimeout: 2s
  retryBudget: {budgetPercent: 10, minRetryConcurrency: 5}
  listeners:
  - name: http
    address: 127.0.0.1:15001
  - name: db
    address: 127.0.0.1:15432
    protocol: TCP
    destination: {host: web.example.com}
    idleTimeout: 10m
";

/// `limits.maxConnections`, `limits.maxBufferBytes` and `limits.requestBodyTimeout`: defaults
/// (derived at start; 256 MiB; 60 s),
/// set values, and refused ones named by field.
#[test]
fn connection_limit_and_body_timeout() {
    let c = ok(SVC);
    assert_eq!(c.snapshot.proxy.limits.max_connections, None, "derived by the proxy");
    assert_eq!(c.snapshot.proxy.limits.request_body_timeout, Duration::from_secs(60));
    assert_eq!(c.snapshot.proxy.limits.max_buffer_bytes, 256 << 20);
    let set = PROXY.replace(
        "    maxHeaders: 50\n",
        "    maxHeaders: 50\n    maxConnections: 5000\n    maxBufferBytes: 65536\n    requestBodyTimeout: 15s\n",
    );
    let c = ok(&format!("{set}---\n{SVC}"));
    assert_eq!(c.snapshot.proxy.limits.max_connections, Some(5000));
    assert_eq!(c.snapshot.proxy.limits.request_body_timeout, Duration::from_secs(15));
    assert_eq!(c.snapshot.proxy.limits.max_buffer_bytes, 65536);
    for (field, value, want) in [
        (
            "maxBufferBytes",
            "65535",
            "maxBufferBytes must be at least 65536 (64 KiB), got 65535",
        ),
        (
            "maxBufferBytes",
            "-1",
            "maxBufferBytes must be at least 65536 (64 KiB), got -1",
        ),
        ("maxConnections", "0", "maxConnections must be at least 1, got 0"),
        ("maxConnections", "-3", "maxConnections must be at least 1, got -3"),
        ("requestBodyTimeout", "0s", "requestBodyTimeout must be positive"),
        ("requestBodyTimeout", "soon", "invalid duration"),
    ] {
        let bad = PROXY.replace(
            "    maxHeaders: 50\n",
            &format!("    maxHeaders: 50\n    {field}: {value}\n"),
        );
        let e = errors(&format!("{bad}---\n{SVC}"));
        let path = format!("spec.limits.{field}");
        assert_eq!(e[0].field.as_deref(), Some(path.as_str()), "{field}: {value}");
        assert!(e[0].message.contains(want), "{field}: {value}: {}", e[0].message);
    }
    // The default: half the descriptor limit, never under 256.
    assert_eq!(crate::snapshot::default_max_connections(20_000), 10_000);
    assert_eq!(crate::snapshot::default_max_connections(1024), 512);
    assert_eq!(crate::snapshot::default_max_connections(100), 256);
    assert_eq!(
        crate::snapshot::default_max_connections(u64::MAX),
        (u64::MAX / 2) as usize
    );
}

#[test]
fn retry_budget_is_off_unless_configured() {
    // Istio users expect no cap beyond each route's attempts (Istio's maxRetries is
    // effectively unlimited); an empty `retryBudget` turns on Envoy's defaults.
    let c = ok(SVC);
    assert!(c.snapshot.proxy.retry_budget.is_none());
    let on = PROXY.replace(
        "retryBudget: {budgetPercent: 10, minRetryConcurrency: 5}",
        "retryBudget: {}",
    );
    let c = ok(&format!("{on}---\n{SVC}"));
    let budget = c.snapshot.proxy.retry_budget.expect("budget on");
    assert_eq!((budget.budget_percent, budget.min_retry_concurrency), (20.0, 3));
}

#[test]
fn proxy_config_settings_and_listeners() {
    let c = ok(&format!("{PROXY}---\n{SVC}"));
    let p = &c.snapshot.proxy;
    assert_eq!(p.workers, Some(2));
    assert_eq!(p.cpus, [0, 1]);
    assert_eq!(p.io, IoMode::Epoll);
    assert_eq!(p.admin_address, "127.0.0.1:16000".parse().expect("addr"));
    assert_eq!(p.health_address, "0.0.0.0:15020".parse().expect("addr"));
    assert_eq!(p.limits.max_headers, 50);
    assert_eq!(p.limits.max_request_head_bytes, 65536);
    assert_eq!(p.limits.request_header_timeout, Duration::from_secs(2));
    assert_eq!(p.limits.downstream_idle_timeout, Duration::from_secs(300));
    let budget = p.retry_budget.expect("retryBudget turns the budget on");
    assert_eq!((budget.budget_percent, budget.min_retry_concurrency), (10.0, 5));
    assert_eq!(c.snapshot.listeners.len(), 2);
    match &c.snapshot.listeners[1].kind {
        ListenerKind::Tcp { clusters, idle_timeout } => {
            assert_eq!(*idle_timeout, Duration::from_secs(600));
            assert_eq!(
                c.snapshot.cluster(clusters.pick(0)).name,
                "outbound|80||web.example.com"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tcp_route_overrides_listener_destination() {
    let text = format!(
        "{PROXY}---\n{SVC}---\n{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db}}\nspec:\n  hosts: [db.example.com]\n  tcp:\n  - match: [{{port: 15432}}]\n    route:\n    - destination: {{host: db.example.com}}\n",
        SVC.replace("name: web", "name: db").replace("web.example.com", "db.example.com")
    );
    let c = ok(&text);
    match &c.snapshot.listeners[1].kind {
        ListenerKind::Tcp { clusters, .. } => {
            assert_eq!(c.snapshot.cluster(clusters.pick(0)).name, "outbound|80||db.example.com")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn listener_errors_are_all_reported() {
    let text = PROXY
        .replace("workers: 2", "workers: 0")
        .replace("127.0.0.1:15432", "127.0.0.1:15001")
        .replace("    destination: {host: web.example.com}\n", "")
        .replace("maxHeaders: 50", "maxHeaders: 0")
        .replace("budgetPercent: 10", "budgetPercent: 150");
    let e = errors(&text);
    let msgs: Vec<String> = e
        .iter()
        .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or(""), d.message))
        .collect();
    assert_eq!(
        msgs,
        [
            "spec.workers: workers must be at least 1, got 0",
            "spec.limits.maxHeaders: maxHeaders must be at least 1, got 0",
            "spec.retryBudget.budgetPercent: budgetPercent must be between 0 and 100, got 150",
            "spec.listeners[1].address: address 127.0.0.1:15001 is already used by listener \"http\"",
            "spec.listeners[1]: TCP listener needs a destination or a VirtualService tcp route matching port 15001",
        ]
    );
    assert_eq!(e[3].line, Some(line_of(&text, "address: 127.0.0.1:15001", 1)));
    assert!(e.iter().all(|d| d.resource.as_deref() == Some("ProxyConfig default/")));
}

#[test]
fn listener_on_admin_port_and_bad_address() {
    let text = PROXY
        .replace("127.0.0.1:15001", "127.0.0.1:16000")
        .replace("127.0.0.1:15432", "localhost:15432");
    let e = errors(&format!("{text}---\n{SVC}"));
    assert_eq!(
        e[0].message,
        "address 127.0.0.1:16000 is already used by the admin server (adminAddress)"
    );
    assert_eq!(e[1].message, "\"localhost:15432\" is not an ip:port address");
}

#[test]
fn only_one_proxy_config() {
    let text = format!(
        "{PROXY}---\n{SVC}---\n{}",
        PROXY.replace("spec:", "metadata: {name: second}\nspec:")
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0]
        .message
        .starts_with("only one ProxyConfig is allowed; another is defined at mesh.yaml:1"));
}

#[test]
fn extra_endpoints_join_the_registry() {
    let (resources, _) = load_str("mesh.yaml", SVC).expect("loads");
    let extra = ExtraEndpoint {
        host: "web.example.com".into(),
        endpoint: RegistryEndpoint {
            address: "10.9.9.9".parse().expect("ip"),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            weight: 3,
        },
    };
    let c = compile(&CompileInput {
        resources,
        extra_endpoints: vec![extra],
        version: 1,
    })
    .expect("compiles");
    let eps = &c.snapshot.clusters[0].endpoints;
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[1].address.to_string(), "10.9.9.9:80");
    assert_eq!(eps[1].weight, 3);
}

#[test]
fn every_error_of_a_file_set_is_reported_together() {
    let text = format!(
        "{}---\n{}",
        BOOKINFO
            .replacen("weight: 50", "weight: 10", 1)
            .replacen("subset: v2", "subset: v9", 1)
            .replace("address: 10.0.0.3", "address: not-an-ip"),
        vs("  - route:\n    - destination: {host: nowhere}\n    timeout: soon\n")
    );
    // The host `nowhere` is only a warning (see
    // `destination_host_not_defined_is_a_warning_and_routes_to_a_placeholder`).
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:#?}");
    let fields: Vec<&str> = e.iter().filter_map(|d| d.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "spec.endpoints[2].address",
            "spec.http[0].route[0].destination.subset",
            "spec.http[1].route[1].weight",
            "spec.http[0].timeout",
        ]
    );
}

#[test]
fn compile_files_reads_a_directory() {
    // Removed when `tmp` drops, even if an assertion below fails.
    let tmp = tempfile::Builder::new()
        .prefix("ringmesh-api-compile-")
        .tempdir()
        .expect("dir");
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("10-proxy.yaml"), PROXY).expect("write");
    std::fs::write(dir.join("20-web.yml"), SVC).expect("write");
    let c = compile_files(std::slice::from_ref(&dir), 42).expect("compiles");
    assert_eq!(c.snapshot.version, 42);
    assert_eq!(c.snapshot.listeners.len(), 2);
    std::fs::write(dir.join("30-bad.yaml"), SVC.replace("hosts:", "hostz:")).expect("write");
    let e = compile_files(std::slice::from_ref(&dir), 43).expect_err("typo");
    assert!(
        e[0].to_string()
            .contains("30-bad.yaml:6: ServiceEntry default/web: spec.hostz"),
        "{}",
        e[0]
    );
}

#[test]
fn base64() {
    assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    assert_eq!(decode_base64("aGk").as_deref(), Some(&b"hi"[..]));
    assert_eq!(decode_base64("a$"), None);
    // URL-safe alphabet and whitespace from a YAML block scalar, as protobuf JSON accepts.
    assert_eq!(decode_base64("-_8=").as_deref(), Some(&[0xfb, 0xff][..]));
    assert_eq!(decode_base64("aGVs\n bG8=").as_deref(), Some(&b"hello"[..]));
}

#[test]
fn readiness_probe_gets_kubernetes_defaults_and_checks_its_fields() {
    let pc = |probe: &str| {
        format!(
            "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata: {{name: p}}\nspec:\n  workload:\n    name: w\n    readinessProbe: {probe}\n"
        )
    };
    let c = ok(&pc("{httpGet: {port: 8080}}"));
    let p = c.snapshot.proxy.workload.readiness.expect("probe compiled");
    assert_eq!((p.port, p.http_path.as_deref()), (8080, Some("/")));
    assert_eq!((p.period, p.timeout), (Duration::from_secs(10), Duration::from_secs(1)));
    assert_eq!((p.failure_threshold, p.success_threshold), (3, 1));
    let t = ok(&pc("{tcpSocket: {port: 5432}, periodSeconds: 2}"))
        .snapshot
        .proxy
        .workload
        .readiness
        .unwrap();
    assert_eq!((t.http_path, t.period), (None, Duration::from_secs(2)));

    let both = errors(&pc("{httpGet: {port: 1}, tcpSocket: {port: 1}}"));
    assert!(
        both[0].message.contains("exactly one of httpGet or tcpSocket"),
        "{both:?}"
    );
    let bad = errors(&pc("{httpGet: {path: nope, port: 0}, failureThreshold: 0}"));
    let fields: Vec<_> = bad.iter().filter_map(|d| d.field.clone()).collect();
    assert_eq!(
        fields,
        [
            "spec.workload.readinessProbe.httpGet.path",
            "spec.workload.readinessProbe.httpGet.port",
            "spec.workload.readinessProbe.failureThreshold"
        ],
        "{bad:?}"
    );
}

#[test]
fn service_entry_selects_workload_entries_of_its_namespace_by_labels() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec: {address: 10.1.0.1, labels: {app: cart, version: v1}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-2, namespace: shop}
spec: {address: 10.1.0.2, labels: {app: cart, version: v2}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: other}
spec: {address: 10.9.9.9, labels: {app: cart}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart.shop.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: cart}}
";
    let c = ok(text);
    let cluster = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.subset.is_none())
        .expect("cluster");
    let mut got: Vec<_> = cluster
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.weight))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("10.1.0.1:8080".to_string(), 1), ("10.1.0.2:80".to_string(), 3)],
        "namespace and labels decide"
    );

    let both = text.replace(
        "  workloadSelector:",
        "  endpoints: [{address: 10.0.0.1}]\n  workloadSelector:",
    );
    let e = errors(&both);
    assert_eq!(e[0].field.as_deref(), Some("spec.workloadSelector"), "{e:?}");
    assert!(e[0].message.contains("mutually exclusive"));

    let bad = errors(&text.replace("address: 10.1.0.2", "address: vm-2.example"));
    assert_eq!(bad[0].field.as_deref(), Some("spec.address"));
    assert_eq!(bad[0].resource.as_deref(), Some("WorkloadEntry shop/vm-2"));
}

/// Istio's documented examples of the security kinds, as users have them.
const SECURITY_EXAMPLES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/default/sa/sleep\"]
    - source:
        namespaces: [\"test\"]
    to:
    - operation:
        methods: [\"GET\"]
        paths: [\"/info*\"]
    - operation:
        methods: [\"POST\"]
        paths: [\"/data\"]
    when:
    - key: request.auth.claims[iss]
      values: [\"https://accounts.google.com\"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: [\"10.0.0.0/8\", \"2001:db8::1\"]
    to:
    - operation:
        ports: [\"8080\"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
";

#[test]
fn istio_security_examples_load_unchanged_and_compile_for_the_workloads_they_select() {
    let c = ok(SECURITY_EXAMPLES);
    // Only the JWT condition, which ringmesh cannot evaluate, is worth a word.
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(c.warnings[0].field.as_deref(), Some("spec.rules[0].when[0].key"));
    assert!(c.warnings[0].message.contains("RequestAuthentication"));
    // The default workload (namespace default) is selected by none of them.
    assert!(c.snapshot.security.authz.is_empty());
    assert_eq!(c.snapshot.security.peer_authn, PeerAuthn::default());

    let workload = |labels: &str| {
        format!(
            "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  workload:\n    name: w\n    \
             namespace: foo\n    labels: {{{labels}}}\n---\n{SECURITY_EXAMPLES}"
        )
    };
    let httpbin = ok(&workload("app: httpbin, version: v1"));
    let names: Vec<&str> = httpbin
        .snapshot
        .security
        .authz
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["foo/httpbin", "foo/deny-method-get"]);
    assert_eq!(httpbin.snapshot.security.peer_authn.default, MtlsMode::Permissive);
    // `/config_dump` shows what was compiled.
    let dump = serde_json::to_value(&httpbin.snapshot).expect("serializes");
    let security = &dump["security"];
    assert_eq!(security["path_normalization"], "MERGE_SLASHES");
    assert_eq!(security["peer_authn"]["default"], "Permissive");
    assert_eq!(security["authz"]["policies"][1]["name"], "foo/deny-method-get");
    assert_eq!(security["authz"]["policies"][1]["action"], "Deny");
    assert_eq!(
        security["authz"]["policies"][1]["rules"][0]["from"][0]["ip_blocks"]["any"][0]["prefix"],
        8
    );

    let finance = ok(&workload("app: finance"));
    let names: Vec<&str> = finance
        .snapshot
        .security
        .authz
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["foo/deny-method-get"], "the httpbin selector does not match");
    let pa = &finance.snapshot.security.peer_authn;
    assert_eq!(
        (pa.mode_for(80), pa.mode_for(8080)),
        (MtlsMode::Strict, MtlsMode::Disable)
    );
}

#[test]
fn security_values_istio_refuses_are_errors_naming_the_field() {
    let text = SECURITY_EXAMPLES
        .replace("action: ALLOW", "action: ALOW")
        .replace("10.0.0.0/8", "10.0.0.0/33")
        .replace("ports: [\"8080\"]", "ports: [\"http\"]")
        .replace("key: request.auth.claims[iss]", "key: request.auth.claim")
        .replace("mode: DISABLE", "mode: OFF")
        .replace("paths: [\"/data\"]", "paths: [\"data\"]");
    let e = errors(&text);
    let field = |f: &str| {
        e.iter()
            .find(|d| d.field.as_deref() == Some(f))
            .unwrap_or_else(|| panic!("no error on {f}: {e:#?}"))
    };
    assert!(field("spec.action")
        .message
        .contains("\"ALOW\" is not one of ALLOW, DENY"));
    assert_eq!(field("spec.action").line, Some(line_of(&text, "ALOW", 0)));
    assert!(field("spec.rules[0].from[0].source.ipBlocks[0]")
        .message
        .contains("prefix length"));
    assert!(field("spec.rules[0].to[0].operation.ports[0]")
        .message
        .contains("\"http\""));
    assert!(field("spec.rules[0].when[0].key")
        .message
        .contains("request.auth.claim"));
    assert!(field("spec.portLevelMtls.8080.mode").message.contains("\"OFF\""));
    assert!(field("spec.rules[0].to[1].operation.paths[0]")
        .message
        .contains("must start with /"));
    assert_eq!(e.len(), 6, "{e:#?}");

    // CUSTOM needs a provider; portLevelMtls needs a selector; an empty source matches nothing.
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext}\n\
         spec: {action: CUSTOM, rules: [{from: [{source: {}}]}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n\
         spec: {portLevelMtls: {8080: {mode: STRICT}}}\n",
    );
    let messages: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
    assert!(messages.contains(&"action CUSTOM needs a provider"), "{messages:?}");
    assert!(messages.contains(&"source must set at least one field"), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.starts_with("portLevelMtls needs a selector")),
        "{messages:?}"
    );
}

/// A tcp route is checked with its VirtualService and again by the listener that takes it; its
/// findings are reported once.
#[test]
fn tcp_route_findings_are_reported_once() {
    let text = "\
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
spec:
  listeners:
  - {name: db, address: 127.0.0.1:15432, protocol: TCP}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.local]
  tcp:
  - match: [{port: 15432}]
    route: [{destination: {host: db.local, port: {number: 5432}}}]
";
    let c = ok(text);
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(
        c.warnings[0].field.as_deref(),
        Some("spec.tcp[0].route[0].destination.host")
    );
}

// ---------------------------------------------------------------- HTTP/2 and gRPC upstreams

/// A service `grpc.example.com` with one port of `protocol`/`name`, two endpoints (the second
/// meshed, labelled `version: v2`), and a DestinationRule with `http` settings at the top and
/// `subset_http` on subset `v2`.
fn h2_config(port: &str, http: &str, subset_http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: grpc}}\nspec:\n  hosts: [grpc.example.com]\n  ports:\n  - {port}\n  endpoints:\n  - address: 10.0.0.1\n  - address: 10.0.0.2\n    labels: {{version: v2, security.istio.io/tlsMode: istio}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: grpc}}\nspec:\n  host: grpc.example.com\n  trafficPolicy:\n    connectionPool:\n      http: {{{http}}}\n  subsets:\n  - name: v2\n    labels: {{version: v2}}\n    trafficPolicy:\n      connectionPool:\n        http: {{{subset_http}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: grpc}}\nspec:\n  hosts: [grpc.example.com]\n  http:\n  - route:\n    - destination: {{host: grpc.example.com, subset: v2}}\n"
    )
}

fn base_and_subset(c: &Compiled) -> (&crate::snapshot::Cluster, &crate::snapshot::Cluster) {
    let base = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.subset.is_none())
        .expect("base cluster");
    let v2 = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.subset.is_some())
        .expect("subset cluster");
    (base, v2)
}

#[test]
fn service_entry_port_protocol_decides_the_upstream_protocol() {
    use crate::snapshot::UpstreamProtocol::*;
    for (port, want) in [
        ("{number: 80, name: http, protocol: HTTP}", Http1),
        ("{number: 80, name: web}", Http1),
        ("{number: 80, name: h, protocol: HTTP2}", Http2),
        ("{number: 80, name: g, protocol: GRPC}", Http2),
        ("{number: 80, name: g, protocol: grpc-web}", Http2),
        // No protocol: Istio's port-name convention.
        ("{number: 80, name: grpc-api}", Http2),
        ("{number: 80, name: http2}", Http2),
        ("{number: 80, name: tcp, protocol: TCP}", Http1),
    ] {
        let c = ok(&h2_config(port, "", ""));
        let (base, v2) = base_and_subset(&c);
        assert_eq!((base.protocol, v2.protocol), (want, want), "{port}");
        assert!(base.upgrade_meshed, "{port}");
    }
}

#[test]
fn h2_upgrade_policy_and_use_client_protocol() {
    use crate::snapshot::UpstreamProtocol::*;
    let http = "{number: 80, name: http, protocol: HTTP}";
    let grpc = "{number: 80, name: grpc, protocol: GRPC}";
    for (port, policy, want, upgrade_meshed) in [
        (http, "h2UpgradePolicy: UPGRADE", Http2, true),
        (http, "h2UpgradePolicy: DEFAULT", Http1, true),
        (http, "h2UpgradePolicy: DO_NOT_UPGRADE", Http1, false),
        // gRPC cannot go over HTTP/1.1: Istio never downgrades an HTTP/2 port.
        (grpc, "h2UpgradePolicy: DO_NOT_UPGRADE", Http2, false),
        // A TCP port is not upgraded.
        (
            "{number: 80, name: tcp, protocol: TCP}",
            "h2UpgradePolicy: UPGRADE",
            Http1,
            true,
        ),
        (http, "useClientProtocol: true", UseClient, true),
        // useClientProtocol wins over the upgrade policy, as in Istio.
        (
            http,
            "useClientProtocol: true, h2UpgradePolicy: UPGRADE",
            UseClient,
            true,
        ),
        (grpc, "useClientProtocol: true", UseClient, true),
        (grpc, "useClientProtocol: false", Http2, true),
    ] {
        let c = ok(&h2_config(port, policy, ""));
        let (base, v2) = base_and_subset(&c);
        assert_eq!(base.protocol, want, "{port} {policy}");
        assert_eq!(v2.protocol, want, "the subset inherits: {port} {policy}");
        assert_eq!(base.upgrade_meshed, upgrade_meshed, "{port} {policy}");
    }
}

#[test]
fn subset_http_settings_override_the_rule_field_by_field() {
    use crate::snapshot::UpstreamProtocol::*;
    let c = ok(&h2_config(
        "{number: 80, name: http, protocol: HTTP}",
        "h2UpgradePolicy: UPGRADE, http2MaxRequests: 1000, maxConcurrentStreams: 100",
        "h2UpgradePolicy: DO_NOT_UPGRADE, maxConcurrentStreams: 10",
    ));
    assert!(
        !c.warnings.iter().any(|w| w.message.contains("not supported")),
        "{:?}",
        c.warnings
    );
    let (base, v2) = base_and_subset(&c);
    assert_eq!((base.protocol, base.upgrade_meshed), (Http2, true));
    assert_eq!(
        (base.pool.http2_max_requests, base.pool.max_concurrent_streams),
        (Some(1000), Some(100))
    );
    assert_eq!((v2.protocol, v2.upgrade_meshed), (Http1, false));
    assert_eq!(
        (v2.pool.http2_max_requests, v2.pool.max_concurrent_streams),
        (Some(1000), Some(10)),
        "unset in the subset: the rule's"
    );
    let c = ok(&h2_config(
        "{number: 80, name: http}",
        "",
        "useClientProtocol: true, http2MaxRequests: 0",
    ));
    let (base, v2) = base_and_subset(&c);
    assert_eq!((base.protocol, v2.protocol), (Http1, UseClient));
    assert_eq!(
        (base.pool.http2_max_requests, base.pool.max_concurrent_streams),
        (None, None),
        "default unlimited"
    );
    assert_eq!(v2.pool.http2_max_requests, None, "0 is unlimited, as in Istio");
    // The fields are implemented: no "not supported" warning.
    assert!(
        !c.warnings.iter().any(|w| w.message.contains("not supported")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn bad_pool_and_upgrade_values_name_the_field() {
    let text = h2_config(
        "{number: 80, name: http}",
        "http2MaxRequests: -1, maxConcurrentStreams: -5",
        "h2UpgradePolicy: SOMETIMES",
    );
    let e = errors(&text);
    let msgs: Vec<String> = e
        .iter()
        .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or(""), d.message))
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("spec.subsets[0].trafficPolicy.connectionPool.http.h2UpgradePolicy")),
        "{msgs:#?}"
    );
    let text = h2_config(
        "{number: 80, name: http}",
        "http2MaxRequests: -1, maxConcurrentStreams: -5",
        "",
    );
    let msgs: Vec<String> = errors(&text)
        .iter()
        .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or(""), d.message))
        .collect();
    assert_eq!(
        msgs,
        [
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests: http2MaxRequests must be a positive number (0 for unlimited), got -1",
            "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams: maxConcurrentStreams must be a positive number (0 for unlimited), got -5",
        ]
    );
}

#[test]
fn meshed_endpoints_are_told_by_the_istio_tls_mode_label() {
    let c = ok(&h2_config("{number: 80, name: http}", "", ""));
    let (base, v2) = base_and_subset(&c);
    let meshed: Vec<bool> = base.endpoints.iter().map(|e| e.meshed).collect();
    assert_eq!(meshed, [false, true]);
    // An HTTP/1.1 cluster speaks HTTP/2 to the meshed endpoint only.
    assert!(!base.h2_to(0, false) && base.h2_to(1, false) && !base.h2_to(2, true));
    assert!(v2.h2_to(0, false), "the subset's only endpoint is meshed");
    // Another value of the label is not a proxy (Istio's `disabled`).
    let c = ok(&h2_config("{number: 80, name: http}", "", "").replace("tlsMode: istio", "tlsMode: disabled"));
    assert!(!base_and_subset(&c).0.endpoints[1].meshed);
    // The hop to a proxy is mutual TLS by default (auto mTLS, for a proxy with a certificate),
    // and mTLS hops are HTTP/2.
    let c = ok(&format!(
        "{WITH_IDENTITY}{}",
        h2_config("{number: 80, name: http}", "h2UpgradePolicy: DO_NOT_UPGRADE", "")
    ));
    assert!(base_and_subset(&c).0.mtls_to(1) && base_and_subset(&c).0.h2_to(1, false));
    // Without mTLS, DO_NOT_UPGRADE keeps HTTP/1.1 even to a proxy; HTTP2 and
    // useClientProtocol ignore meshing.
    let plain = |text: String| {
        text.replace(
            "  trafficPolicy:\n    connectionPool:",
            "  trafficPolicy:\n    tls: {mode: DISABLE}\n    connectionPool:",
        )
    };
    let c = ok(&plain(h2_config(
        "{number: 80, name: http}",
        "h2UpgradePolicy: DO_NOT_UPGRADE",
        "",
    )));
    assert!(!base_and_subset(&c).0.mtls_to(1));
    assert!(!base_and_subset(&c).0.h2_to(1, false));
    let c = ok(&h2_config("{number: 80, name: g, protocol: GRPC}", "", ""));
    assert!(base_and_subset(&c).0.h2_to(0, false));
    let c = ok(&plain(h2_config(
        "{number: 80, name: http}",
        "useClientProtocol: true",
        "",
    )));
    let base = base_and_subset(&c).0;
    assert!(!base.h2_to(1, false) && base.h2_to(0, true));
    // Announced workloads carry their labels the same way.
    let (resources, _) = load_str("mesh.yaml", SVC).expect("loads");
    let endpoint = |labels: &[(&str, &str)]| ExtraEndpoint {
        host: "web.example.com".into(),
        endpoint: RegistryEndpoint {
            address: "10.9.9.9".parse().expect("ip"),
            ports: BTreeMap::new(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            weight: 1,
        },
    };
    let c = compile(&CompileInput {
        resources,
        extra_endpoints: vec![endpoint(&[("security.istio.io/tlsMode", "istio")])],
        version: 1,
    })
    .expect("compiles");
    let eps = &c.snapshot.clusters[0].endpoints;
    assert_eq!((eps[0].meshed, eps[1].meshed), (false, true));
}

#[test]
fn grpc_retry_on_codes() {
    use crate::snapshot::GrpcCodes;
    let text = vs("  - match: [{uri: {prefix: /a}}]\n    route:\n    - destination: {host: web.example.com}\n    retries: {attempts: 2, retryOn: \"unavailable,cancelled,deadline-exceeded,resource-exhausted,internal\"}\n  - match: [{uri: {prefix: /b}}]\n    route:\n    - destination: {host: web.example.com}\n    retries: {attempts: 2, retryOn: \"5xx,unavailable\"}\n  - route:\n    - destination: {host: web.example.com}\n");
    let c = ok(&text);
    assert!(
        !c.warnings.iter().any(|w| w.message.contains("retryOn")),
        "{:?}",
        c.warnings
    );
    let vh = c.snapshot.routes.find_host("web.example.com").expect("vh");
    let retry = |p: &str| match &vh.find_route(&Req::new(p)).expect("route").action {
        RouteAction::Forward(f) => f.retry.clone(),
        other => panic!("{other:?}"),
    };
    let all = retry("/a");
    let codes: Vec<u32> = all.retriable_grpc.iter().collect();
    assert_eq!(codes, [1, 4, 8, 13, 14]);
    assert!(all.retries_grpc(14) && all.retries_grpc(1) && !all.retries_grpc(0) && !all.retries_grpc(2));
    assert!(!all.retries_grpc(99), "not a gRPC status");
    assert!(!all.retries_status(503), "gRPC tokens add no HTTP status");
    let b = retry("/b");
    assert!(b.on_5xx && b.retries_grpc(GrpcCodes::UNAVAILABLE) && !b.retries_grpc(GrpcCodes::CANCELLED));
    // Istio's default policy retries unavailable and cancelled.
    let default = retry("/c");
    let codes: Vec<u32> = default.retriable_grpc.iter().collect();
    assert_eq!(codes, [GrpcCodes::CANCELLED, GrpcCodes::UNAVAILABLE]);
    // A typo of a gRPC token is an error with a suggestion.
    let e = errors(&vs(
        "  - route:\n    - destination: {host: web.example.com}\n    retries: {attempts: 1, retryOn: unavailble}\n",
    ));
    assert_eq!(e[0].field.as_deref(), Some("spec.http[0].retries.retryOn"));
    assert!(
        e[0].message.contains("did you mean \"unavailable\""),
        "{}",
        e[0].message
    );
}

#[test]
fn grpc_codes_set() {
    use crate::snapshot::GrpcCodes;
    let set = GrpcCodes::empty().with(0).with(16).with(17);
    assert!(set.contains(0) && set.contains(16) && !set.contains(17) && !set.contains(u32::MAX));
    assert_eq!(format!("{set:?}"), "{0, 16}");
    assert_eq!(serde_json::to_string(&set).expect("json"), "[0,16]");
    assert!(GrpcCodes::empty().is_empty());
}

// ---------------------------------------------------------------- protocol detection

/// A ProxyConfig with one listener `name` (`extra` lines under it) in front of `db.example.com`,
/// whose one port is `port`.
fn auto_listener(name: &str, extra: &str, port: &str) -> String {
    format!(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  listeners:\n  - name: {name}\n    address: 127.0.0.1:15432\n    protocol: AUTO\n{extra}    destination: {{host: db.example.com}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db}}\nspec:\n  hosts: [db.example.com]\n  ports:\n  - {port}\n  endpoints:\n  - address: 127.0.0.1\n"
    )
}

fn listener_kind(c: &Compiled) -> &ListenerKind {
    &c.snapshot.listeners[0].kind
}

#[test]
fn auto_listener_without_a_hint_detects() {
    let c = ok(&auto_listener(
        "db",
        "    idleTimeout: 5m\n",
        "{number: 5432, name: db}",
    ));
    match listener_kind(&c) {
        ListenerKind::Detect {
            clusters,
            idle_timeout,
            timeout,
        } => {
            assert_eq!(
                c.snapshot.cluster(clusters.pick(0)).name,
                "outbound|5432||db.example.com"
            );
            assert_eq!(*idle_timeout, Duration::from_secs(300));
            assert_eq!(*timeout, Duration::from_millis(100), "Istio's original default");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.snapshot.proxy.limits.protocol_detection_timeout,
        Duration::from_millis(100)
    );
    // The timeout is a limit of the ProxyConfig.
    let text = auto_listener("db", "", "{number: 5432, name: db}").replace(
        "spec:\n  listeners:",
        "spec:\n  limits: {protocolDetectionTimeout: 250ms}\n  listeners:",
    );
    let c = ok(&text);
    match listener_kind(&c) {
        ListenerKind::Detect { timeout, .. } => assert_eq!(*timeout, Duration::from_millis(250)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn auto_listener_hints_skip_detection() {
    let http = |c: &Compiled| matches!(listener_kind(c), ListenerKind::Http);
    let tcp = |c: &Compiled| matches!(listener_kind(c), ListenerKind::Tcp { .. });
    let plain = "{number: 5432, name: db}";
    // appProtocol.
    for (app, want_http) in [
        ("http", true),
        ("HTTP2", true),
        ("grpc", true),
        ("grpc-web", true),
        ("kubernetes.io/h2c", true),
        ("tcp", false),
        ("tls", false),
        ("mysql", false),
        ("mongo", false),
        ("redis", false),
    ] {
        let c = ok(&auto_listener("db", &format!("    appProtocol: {app}\n"), plain));
        assert!(
            if want_http { http(&c) } else { tcp(&c) },
            "appProtocol {app}: {:?}",
            listener_kind(&c)
        );
    }
    // The listener's name, by Istio's port-name convention.
    for (name, want_http) in [
        ("http-web", true),
        ("http2-api", true),
        ("grpc-api", true),
        ("grpc-web-ui", true),
        ("tcp-db", false),
        ("tls-passthrough", false),
        ("mysql", false),
        ("mysql-primary", false),
        ("mongo", false),
    ] {
        let c = ok(&auto_listener(name, "", plain));
        assert!(
            if want_http { http(&c) } else { tcp(&c) },
            "name {name}: {:?}",
            listener_kind(&c)
        );
    }
    // appProtocol wins over the name.
    let c = ok(&auto_listener("http-db", "    appProtocol: tcp\n", plain));
    assert!(tcp(&c));
    // The destination port's protocol, else its name.
    for (port, want_http) in [
        ("{number: 5432, name: db, protocol: GRPC}", true),
        ("{number: 5432, name: db, protocol: HTTP}", true),
        ("{number: 5432, name: db, protocol: TCP}", false),
        ("{number: 5432, name: db, protocol: MYSQL}", false),
        ("{number: 5432, name: http-db}", true),
        ("{number: 5432, name: tcp-db}", false),
    ] {
        let c = ok(&auto_listener("db", "", port));
        assert!(
            if want_http { http(&c) } else { tcp(&c) },
            "port {port}: {:?}",
            listener_kind(&c)
        );
    }
    // A TCP setting on a listener its hint makes HTTP is a warning naming the field.
    let c = ok(&auto_listener("grpc-api", "    idleTimeout: 2m\n", plain));
    assert!(http(&c));
    let w = c
        .warnings
        .iter()
        .find(|w| w.field.as_deref() == Some("spec.listeners[0].idleTimeout"));
    assert!(
        w.is_some_and(|w| w.message.contains("does not apply")),
        "{:?}",
        c.warnings
    );
    // The listener's own hint wins over the destination's.
    let c = ok(&auto_listener("tcp-db", "", "{number: 5432, name: http}"));
    assert!(tcp(&c));
    // A TCP hint keeps the listener's idle timeout.
    let c = ok(&auto_listener("tcp-db", "    idleTimeout: 2m\n", plain));
    match listener_kind(&c) {
        ListenerKind::Tcp { idle_timeout, .. } => assert_eq!(*idle_timeout, Duration::from_secs(120)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_detection_values_name_the_field() {
    let plain = "{number: 5432, name: db}";
    let text = auto_listener("db", "    appProtocol: mysq\n", plain);
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].field.as_deref(), Some("spec.listeners[0].appProtocol"));
    assert!(
        e[0].message
            .starts_with("unknown appProtocol \"mysq\"; did you mean \"mysql\"?"),
        "{}",
        e[0].message
    );
    assert_eq!(e[0].line, Some(line_of(&text, "appProtocol", 0)));
    // appProtocol contradicting an explicit protocol.
    let e = errors(&auto_listener("db", "    appProtocol: http\n", plain).replace("protocol: AUTO", "protocol: TCP"));
    assert_eq!(e[0].field.as_deref(), Some("spec.listeners[0].appProtocol"));
    assert_eq!(
        e[0].message,
        "appProtocol \"http\" is HTTP, but the listener's protocol is TCP"
    );
    // A detecting listener needs its TCP fallback.
    let e = errors(&auto_listener("db", "", plain).replace("    destination: {host: db.example.com}\n", ""));
    assert_eq!(
        e[0].message,
        "AUTO listener needs a destination or a VirtualService tcp route matching port 15432"
    );
    // The timeout: a duration of at least 1ms.
    for (value, want) in [
        ("0s", "protocolDetectionTimeout must be at least 1ms, got \"0s\""),
        ("soon", "invalid duration"),
    ] {
        let text = auto_listener("db", "", plain).replace(
            "spec:\n  listeners:",
            &format!("spec:\n  limits: {{protocolDetectionTimeout: {value}}}\n  listeners:"),
        );
        let e = errors(&text);
        assert_eq!(
            e[0].field.as_deref(),
            Some("spec.limits.protocolDetectionTimeout"),
            "{value}"
        );
        assert!(e[0].message.contains(want), "{value}: {}", e[0].message);
    }
}

// ---------------------------------------------------------------- security for the workload

/// A `ProxyConfig` for workload `shop/web` (labels `app: web`), then `rest`.
fn for_web(rest: &str) -> String {
    format!(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  workload:\n    name: web\n    \
         namespace: shop\n    labels: {{app: web}}\n---\n{rest}"
    )
}

fn peer_authn(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {spec}\n---\n"
    )
}

#[test]
fn peer_authentication_precedence() {
    let mesh = peer_authn("istio-system", "mesh", "{mtls: {mode: STRICT}}");
    let ns = |mode: &str| peer_authn("shop", "ns", &format!("{{mtls: {{mode: {mode}}}}}"));
    let own = |mode: &str| {
        peer_authn(
            "shop",
            "own",
            &format!("{{selector: {{matchLabels: {{app: web}}}}, mtls: {{mode: {mode}}}, portLevelMtls: {{9000: {{mode: UNSET}}, 9001: {{mode: STRICT}}}}}}"),
        )
    };
    let resolved = |docs: &[String]| {
        let pa = ok(&for_web(&docs.concat())).snapshot.security.peer_authn;
        (pa.mode_for(80), pa.mode_for(9000), pa.mode_for(9001))
    };
    use MtlsMode::{Disable, Permissive, Strict};
    // Nothing anywhere: Istio's PERMISSIVE.
    assert_eq!(resolved(&[]), (Permissive, Permissive, Permissive));
    assert_eq!(resolved(std::slice::from_ref(&mesh)), (Strict, Strict, Strict));
    assert_eq!(resolved(&[mesh.clone(), ns("DISABLE")]), (Disable, Disable, Disable));
    assert_eq!(resolved(&[mesh.clone(), ns("UNSET")]), (Strict, Strict, Strict));
    // The workload's own policy wins; an UNSET port inherits the workload's mode.
    assert_eq!(
        resolved(&[mesh.clone(), ns("DISABLE"), own("PERMISSIVE")]),
        (Permissive, Permissive, Strict)
    );
    assert_eq!(
        resolved(&[mesh.clone(), ns("DISABLE"), own("UNSET")]),
        (Disable, Disable, Strict)
    );
    // Policies for other workloads, other namespaces, or a selector in the root namespace
    // (which selects only root-namespace workloads) do not apply.
    let others = [
        peer_authn("other", "ns", "{mtls: {mode: DISABLE}}"),
        peer_authn(
            "shop",
            "db",
            "{selector: {matchLabels: {app: db}}, mtls: {mode: DISABLE}}",
        ),
        peer_authn(
            "istio-system",
            "gw",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
        ),
    ];
    assert_eq!(resolved(&others), (Permissive, Permissive, Permissive));
    assert_eq!(
        ok(&for_web(&[mesh.clone(), ns("DISABLE")].concat()))
            .snapshot
            .security
            .peer_authn,
        PeerAuthn {
            default: Disable,
            ports: vec![]
        }
    );
}

#[test]
fn several_peer_authentications_at_one_level_take_the_first_and_warn() {
    let text = for_web(
        &[
            peer_authn("shop", "first", "{mtls: {mode: STRICT}}"),
            peer_authn("shop", "second", "{mtls: {mode: DISABLE}}"),
        ]
        .concat(),
    );
    let c = ok(&text);
    assert_eq!(c.snapshot.security.peer_authn.default, MtlsMode::Strict);
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(
        c.warnings[0].resource.as_deref(),
        Some("PeerAuthentication shop/second")
    );
    assert!(c.warnings[0].message.contains("PeerAuthentication shop/first"));
}

#[test]
fn authorization_policy_warnings_for_rules_that_cannot_match() {
    // The workload serves port 8080 only.
    let text = for_web("").replace(
        "labels: {app: web}",
        "labels: {app: web}\n    addresses: [10.0.0.1]\n    ports: {http: 8080}",
    ) + "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules:
  - from:
    - source:
        principals: [spiffe://cluster.local/ns/a/sa/b, cluster.local/ns/a/sa/b, 'prod/*', sleep]
        namespaces: [a]
        notNamespaces: [a]
    to:
    - operation:
        ports: ['8080', '9999']
        paths: [/x]
        notPaths: [/x]
    when:
    - key: experimental.envoy.filters.network.mysql_proxy[db.table]
      values: [x]
    - key: request.auth.audiences
      values: [x]
    - key: destination.port
      values: ['7777']
      notValues: ['7777']
";
    let c = ok(&text);
    let on = |field: &str| -> Vec<&str> {
        c.warnings
            .iter()
            .filter(|w| w.field.as_deref() == Some(field))
            .map(|w| w.message.as_str())
            .collect()
    };
    let p = "spec.rules[0]";
    assert!(on(&format!("{p}.from[0].source.principals[0]"))[0].contains("without spiffe://"));
    assert!(on(&format!("{p}.from[0].source.principals[1]")).is_empty());
    assert!(on(&format!("{p}.from[0].source.principals[2]")).is_empty());
    assert!(on(&format!("{p}.from[0].source.principals[3]"))[0].contains("<trust domain>/ns/"));
    assert!(on(&format!("{p}.from[0].source.notNamespaces"))[0].contains("both namespaces and notNamespaces"));
    assert!(on(&format!("{p}.to[0].operation.notPaths"))[0].contains("both paths and notPaths"));
    assert!(on(&format!("{p}.to[0].operation.ports[0]")).is_empty());
    assert!(on(&format!("{p}.to[0].operation.ports[1]"))[0].contains("port 9999 is not a port of this workload (8080)"));
    assert!(on(&format!("{p}.when[0].key"))[0].contains("never matches"));
    assert!(on(&format!("{p}.when[1].key"))[0].contains("RequestAuthentication"));
    assert!(on(&format!("{p}.when[2].values[0]"))[0].contains("port 7777"));
    assert!(on(&format!("{p}.when[2].notValues"))[0].contains("both values and notValues"));
    assert_eq!(c.warnings.len(), 9, "{:#?}", c.warnings);
    let line = c
        .warnings
        .iter()
        .find(|w| w.message.contains("9999"))
        .and_then(|w| w.line);
    assert_eq!(line, Some(line_of(&text, "ports: ['8080', '9999']", 0)));
}

#[test]
fn security_errors_name_the_field() {
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext}\n\
         spec: {action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: ['/api/{*}/x']}}], \
         when: [{key: source.serviceAccount, values: [nobody]}]}]}\n",
    );
    let field = |f: &str| {
        e.iter()
            .find(|d| d.field.as_deref() == Some(f))
            .unwrap_or_else(|| panic!("no error on {f}: {e:#?}"))
            .message
            .as_str()
    };
    assert!(field("spec.action").contains("CUSTOM is not supported"));
    assert!(field("spec.rules[0].to[0].operation.paths[0]").contains("path templates"));
    assert!(field("spec.rules[0].when[0].values[0]").contains("NAMESPACE/SERVICE_ACCOUNT"));
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn path_normalization_and_inbound_listeners_from_the_proxy_config() {
    let c = ok(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  pathNormalization:\n    \
                normalization: DECODE_AND_MERGE_SLASHES\n  listeners:\n  \
                - {name: out, address: 127.0.0.1:15001}\n  \
                - {name: in, address: 0.0.0.0:15006, direction: INBOUND}\n",
    );
    assert_eq!(
        c.snapshot.security.path_normalization,
        crate::normalize::PathNormalization::DecodeAndMergeSlashes
    );
    let inbound: Vec<(&str, bool)> = c
        .snapshot
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.inbound))
        .collect();
    assert_eq!(inbound, [("out", false), ("in", true)]);
    // The default is MERGE_SLASHES, and the default listener is outbound.
    let c = ok("apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec: {}\n");
    assert_eq!(
        c.snapshot.security.path_normalization,
        crate::normalize::PathNormalization::MergeSlashes
    );
    assert!(!c.snapshot.listeners[0].inbound);

    let text = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  pathNormalization:\n    \
                normalization: MERGE\n  listeners:\n  - {name: in, address: 0.0.0.0:15006, direction: IN}\n";
    let e = errors(text);
    let on = |f: &str| {
        e.iter()
            .find(|d| d.field.as_deref() == Some(f))
            .map(|d| d.message.as_str())
    };
    assert!(
        on("spec.pathNormalization.normalization").is_some_and(|m| m.contains("MERGE_SLASHES")),
        "{e:#?}"
    );
    let e = errors(&text.replace("normalization: MERGE", "normalization: BASE"));
    assert!(
        e.iter()
            .any(|d| d.field.as_deref() == Some("spec.listeners[0].direction") && d.message.contains("INBOUND")),
        "{e:#?}"
    );
}

/// A ProxyConfig with a workload certificate: auto mTLS applies only to a proxy that has one.
const WITH_IDENTITY: &str = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  identity: {certFile: /c.pem, keyFile: /k.pem, caFile: /ca.pem}\n---\n";

const TLS_SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 80, name: http}
  - {number: 81, name: http-2}
  endpoints:
  - address: 10.0.0.1
    labels: {version: v1, security.istio.io/tlsMode: istio}
  - address: 10.0.0.2
    labels: {version: v2}
---
";

fn cluster_tls(c: &Compiled, name: &str) -> UpstreamTls {
    c.snapshot
        .clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
        .tls
        .clone()
}

#[test]
fn destination_rule_tls_with_istios_precedence() {
    // No tls: auto mTLS, to meshed endpoints only.
    let c = ok(&format!("{WITH_IDENTITY}{TLS_SERVICE}"));
    let cluster = &c.snapshot.clusters[0];
    assert_eq!(cluster.tls, UpstreamTls::Auto);
    assert!(cluster.mtls_to(0), "the meshed endpoint");
    assert!(!cluster.mtls_to(1), "the plain one");
    // A proxy without a workload certificate (no control plane, no identity files) has no
    // identity to prove: its hops to proxies stay plaintext.
    let c = ok(TLS_SERVICE);
    assert_eq!(c.snapshot.clusters[0].tls, UpstreamTls::Disable);
    assert!(!c.snapshot.clusters[0].mtls_to(0));

    let rule = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/a/sa/api]}
    portLevelSettings:
    - port: {number: 81}
      tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      tls: {mode: DISABLE}
      portLevelSettings:
      - port: {number: 80}
        tls: {mode: ISTIO_MUTUAL}
  - name: v3
    labels: {version: v2}
    trafficPolicy:
      tls: {mode: DISABLE}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  http:
  - route:
    - {destination: {host: api.example.com, port: {number: 80}, subset: v1}, weight: 25}
    - {destination: {host: api.example.com, port: {number: 81}, subset: v1}, weight: 25}
    - {destination: {host: api.example.com, port: {number: 80}, subset: v2}, weight: 25}
    - {destination: {host: api.example.com, port: {number: 81}, subset: v3}, weight: 25}
";
    let c = ok(&format!("{TLS_SERVICE}{rule}"));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let istio = |sans: &[&str]| UpstreamTls::IstioMutual {
        subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
    };
    let san = ["spiffe://cluster.local/ns/a/sa/api"];
    // The rule's tls; its port-level setting for 81.
    assert_eq!(cluster_tls(&c, "outbound|80||api.example.com"), istio(&san));
    assert_eq!(cluster_tls(&c, "outbound|81||api.example.com"), UpstreamTls::Disable);
    // A subset without tls inherits, port level included.
    assert_eq!(cluster_tls(&c, "outbound|80|v1|api.example.com"), istio(&san));
    assert_eq!(cluster_tls(&c, "outbound|81|v1|api.example.com"), UpstreamTls::Disable);
    // The subset's port-level setting beats its own tls.
    assert_eq!(cluster_tls(&c, "outbound|80|v2|api.example.com"), istio(&[]));
    // The subset's tls beats the rule's port-level setting.
    assert_eq!(cluster_tls(&c, "outbound|81|v3|api.example.com"), UpstreamTls::Disable);
    let v2 = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.name == "outbound|80|v2|api.example.com")
        .expect("v2");
    assert!(v2.mtls_to(0), "ISTIO_MUTUAL even to an endpoint without the mesh label");
    let plain = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.name == "outbound|81|v1|api.example.com")
        .expect("v1:81");
    assert!(!plain.mtls_to(0), "DISABLE even to a meshed endpoint");
}

#[test]
fn destination_rule_tls_errors() {
    let dr = |tls: &str| {
        format!(
            "{TLS_SERVICE}apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api}}\n\
             spec:\n  host: api.example.com\n  trafficPolicy:\n    tls: {tls}\n"
        )
    };
    let first = |tls: &str| {
        let e = errors(&dr(tls));
        (e[0].field.clone().unwrap_or_default(), e[0].message.clone(), e.len())
    };
    let (field, msg, n) = first("{mode: SIMPLE, caCertificates: /etc/ca.pem}");
    assert_eq!((field.as_str(), n), ("spec.trafficPolicy.tls.mode", 1));
    assert!(msg.contains("SIMPLE") && msg.contains("not supported yet"), "{msg}");
    let (field, msg, _) = first("{mode: MUTUAL}");
    assert_eq!(field, "spec.trafficPolicy.tls.mode");
    assert!(msg.contains("MUTUAL") && msg.contains("not supported yet"), "{msg}");
    let (field, msg, _) = first("{mode: ISTIO_MTLS}");
    assert_eq!(field, "spec.trafficPolicy.tls.mode");
    assert!(msg.contains("ISTIO_MUTUAL") && msg.contains("DISABLE"), "{msg}");
    let e = errors(&dr(
        "{mode: ISTIO_MUTUAL, clientCertificate: /c.pem, credentialName: x, sni: a}",
    ));
    let fields: Vec<&str> = e.iter().filter_map(|d| d.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "spec.trafficPolicy.tls.clientCertificate",
            "spec.trafficPolicy.tls.credentialName"
        ]
    );
    assert!(e[0].message.contains("ISTIO_MUTUAL"));
    // DISABLE with certificate fields compiles; they are ignored with a word.
    let c = ok(&dr("{mode: DISABLE, sni: a.example.com}"));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(c.warnings[0].field.as_deref(), Some("spec.trafficPolicy.tls.sni"));
    assert_eq!(c.snapshot.clusters[0].tls, UpstreamTls::Disable);
}

#[test]
fn mesh_mtls_min_protocol_version() {
    use crate::snapshot::TlsVersion;
    let c = ok("apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec: {}\n");
    assert_eq!(
        c.snapshot.security.min_tls_version,
        TlsVersion::Tls13,
        "TLS 1.3 only by default"
    );
    let c =
        ok("apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  meshMTLS: {minProtocolVersion: TLSV1_2}\n");
    assert_eq!(c.snapshot.security.min_tls_version, TlsVersion::Tls12);
    let e = errors(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  meshMTLS: {minProtocolVersion: TLSV1_1}\n",
    );
    assert!(
        e.iter()
            .any(|d| d.field.as_deref() == Some("spec.meshMTLS.minProtocolVersion") && d.message.contains("TLSV1_2")),
        "{e:#?}"
    );
}

#[test]
fn fault_injection_shapes() {
    use crate::snapshot::{FaultShare, FaultStatus};
    let text = vs("  - match: [{uri: {prefix: /a}}]\n    fault:\n      abort: {httpStatus: 503, percentage: {value: 12.5}}\n    route:\n    - destination: {host: web.example.com}\n  - match: [{uri: {prefix: /b}}]\n    fault:\n      delay: {fixedDelay: 200ms}\n      abort: {grpcStatus: UNAVAILABLE}\n    route:\n    - destination: {host: web.example.com}\n  - match: [{uri: {prefix: /c}}]\n    fault:\n      delay: {fixedDelay: 1s, percent: 7}\n    route:\n    - destination: {host: web.example.com}\n  - route:\n    - destination: {host: web.example.com}\n");
    let c = ok(&text);
    let vh = c.snapshot.routes.find_host("web.example.com").expect("vh");
    let fault = |p: &str| vh.find_route(&Req::new(p)).expect("route").fault.clone();
    let a = fault("/a").expect("fault on /a");
    assert_eq!(a.delay, None);
    assert_eq!(a.abort, Some((FaultStatus::Http(503), FaultShare(125_000))));
    let b = fault("/b").expect("fault on /b");
    assert_eq!(b.delay, Some((Duration::from_millis(200), FaultShare::ALL)));
    assert_eq!(b.abort, Some((FaultStatus::Grpc(14), FaultShare::ALL)));
    let c3 = fault("/c").expect("fault on /c");
    assert_eq!(c3.delay, Some((Duration::from_secs(1), FaultShare(70_000))));
    assert_eq!(c3.abort, None);
    assert!(fault("/d").is_none());
}

#[test]
fn fault_share_hits_its_share() {
    use crate::snapshot::FaultShare;
    assert!(FaultShare::ALL.hit(u64::MAX));
    assert!(!FaultShare(0).hit(0));
    let tenth = FaultShare(100_000);
    let hits = (0..1_000_000u64).filter(|n| tenth.hit(*n)).count();
    assert_eq!(hits, 100_000);
}

#[test]
fn fault_errors_name_the_field() {
    let route = "    route:\n    - destination: {host: web.example.com}\n";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "    fault:\n      abort: {httpStatus: 503, percentage: {value: 150}}\n",
            "spec.http[0].fault.abort.percentage.value",
            "percentage.value must be between 0 and 100, got 150",
            "value: 150",
        ),
        (
            "    fault:\n      delay: {percentage: {value: 10}}\n",
            "spec.http[0].fault.delay",
            "delay.fixedDelay is required",
            "delay:",
        ),
        (
            "    fault:\n      delay: {fixedDelay: soon}\n",
            "spec.http[0].fault.delay.fixedDelay",
            "\"soon\"",
            "fixedDelay: soon",
        ),
        (
            "    fault:\n      abort: {httpStatus: 700}\n",
            "spec.http[0].fault.abort.httpStatus",
            "httpStatus must be between 200 and 599, got 700",
            "httpStatus: 700",
        ),
        (
            "    fault:\n      abort: {grpcStatus: UNAVAILABEL}\n",
            "spec.http[0].fault.abort.grpcStatus",
            "did you mean \"UNAVAILABLE\"",
            "grpcStatus: UNAVAILABEL",
        ),
        (
            "    fault: {}\n",
            "spec.http[0].fault",
            "fault needs delay or abort",
            "fault:",
        ),
        (
            "    fault:\n      delay: {fixedDelay: 1s, percent: 101}\n",
            "spec.http[0].fault.delay.percent",
            "percent must be between 0 and 100, got 101",
            "percent: 101",
        ),
        (
            "    fault:\n      abort: {percentage: {value: 5}}\n",
            "spec.http[0].fault.abort",
            "abort needs httpStatus or grpcStatus",
            "abort:",
        ),
    ];
    for (fault, field, message, at) in cases {
        let text = vs(&format!("  - {}{route}", &fault[4..]));
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{fault}: {e:#?}");
        assert_eq!(e[0].field.as_deref(), Some(*field), "{fault}");
        assert!(e[0].message.contains(message), "{fault}: {}", e[0].message);
        assert_eq!(e[0].line, Some(line_of(&text, at, 0)), "{fault}");
    }
}

/// A second service for mirrors to copy to.
const SHADOW_SVC: &str = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: shadow\nspec:\n  hosts: [shadow.example.com]\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  endpoints:\n  - address: 127.0.0.2\n    ports: {http: 8080}\n";

#[test]
fn mirror_shapes() {
    use crate::snapshot::{FaultShare, RouteAction};
    let text = format!(
        "{}{SHADOW_SVC}",
        vs("  - match: [{uri: {prefix: /a}}]\n    mirror: {host: shadow.example.com}\n    mirrorPercentage: {value: 12.5}\n    route:\n    - destination: {host: web.example.com}\n  - match: [{uri: {prefix: /b}}]\n    mirror: {host: shadow.example.com}\n    mirrorPercent: 7\n    route:\n    - destination: {host: web.example.com}\n  - match: [{uri: {prefix: /c}}]\n    mirrors:\n    - destination: {host: shadow.example.com}\n    - destination: {host: web.example.com}\n      percentage: {value: 1}\n    route:\n    - destination: {host: web.example.com}\n  - route:\n    - destination: {host: web.example.com}\n")
    );
    let c = ok(&text);
    let vh = c.snapshot.routes.find_host("web.example.com").expect("vh");
    let mirrors = |p: &str| match &vh.find_route(&Req::new(p)).expect("route").action {
        RouteAction::Forward(f) => f
            .mirrors
            .iter()
            .map(|m| (c.snapshot.cluster(m.cluster).name.clone(), m.share))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let shadow = "outbound|80||shadow.example.com".to_string();
    let web = "outbound|80||web.example.com".to_string();
    assert_eq!(mirrors("/a"), [(shadow.clone(), FaultShare(125_000))]);
    assert_eq!(mirrors("/b"), [(shadow.clone(), FaultShare(70_000))]);
    assert_eq!(mirrors("/c"), [(shadow, FaultShare::ALL), (web, FaultShare(10_000))]);
    assert!(mirrors("/d").is_empty());
}

#[test]
fn mirror_errors_name_the_field() {
    let route = "    route:\n    - destination: {host: web.example.com}\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "    mirror: {host: shadow.example.com}\n    mirrorPercentage: {value: 101}\n",
            "spec.http[0].mirrorPercentage.value",
            "mirrorPercentage.value must be between 0 and 100, got 101",
        ),
        (
            "    mirror: {host: shadow.example.com}\n    mirrorPercent: -1\n",
            "spec.http[0].mirrorPercent",
            "mirrorPercent must be between 0 and 100, got -1",
        ),
        (
            "    mirror: {host: shadow.example.com}\n    mirrors:\n    - destination: {host: shadow.example.com}\n",
            "spec.http[0].mirrors",
            "mirror and mirrors cannot both be set",
        ),
        (
            "    mirrors:\n    - percentage: {value: 5}\n",
            "spec.http[0].mirrors[0].destination",
            "destination is required",
        ),
        (
            "    mirrors:\n    - destination: {host: shadow.example.com}\n      percentage: {value: 200}\n",
            "spec.http[0].mirrors[0].percentage.value",
            "percentage.value must be between 0 and 100, got 200",
        ),
    ];
    for (yaml, field, message) in cases {
        let text = format!(
            "{}{SHADOW_SVC}",
            vs(&format!("  - match: [{{uri: {{prefix: /a}}}}]\n{yaml}{route}"))
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|d| d.field.as_deref() == Some(*field) && d.message.contains(message)),
            "{yaml}: {e:#?}"
        );
    }
    // With a redirect there is nothing to mirror.
    let text = format!(
        "{}{SHADOW_SVC}",
        vs("  - mirror: {host: shadow.example.com}\n    redirect: {uri: /new}\n")
    );
    let e = errors(&text);
    assert!(
        e.iter().any(|d| d.field.as_deref() == Some("spec.http[0].mirror")
            && d.message.contains("only be used with route")),
        "{e:#?}"
    );
    // A typo in a mirror's field is refused by the loader, naming it.
    let text = format!(
        "{}{SHADOW_SVC}",
        vs("  - mirror: {host: shadow.example.com}\n    mirrorPercentag: {value: 5}\n    route:\n    - destination: {host: web.example.com}\n")
    );
    let e = errors(&text);
    assert!(e.iter().any(|d| d.message.contains("mirrorPercentag")), "{e:#?}");
}

mod health;
mod locality;
fn dr_pool(tcp: &str, http: &str) -> String {
    format!(
        "{SVC}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: web.example.com\n  trafficPolicy:\n    connectionPool:\n      tcp: {{{tcp}}}\n      http: {{{http}}}\n"
    )
}

fn fields_and_messages(e: &[Diagnostic]) -> Vec<String> {
    e.iter()
        .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or(""), d.message))
        .collect()
}

#[test]
fn circuit_breaker_limits_compile_and_zero_or_istio_default_is_unlimited() {
    let c = ok(&dr_pool(
        "maxConnections: 1, tcpKeepalive: {probes: 3, time: 10s, interval: 2s}",
        "http1MaxPendingRequests: 5, maxRetries: 2",
    ));
    let pool = &c.snapshot.clusters[0].pool;
    assert_eq!(
        (pool.max_connections, pool.max_pending_requests, pool.max_retries),
        (Some(1), Some(5), Some(2))
    );
    assert_eq!(
        pool.tcp_keepalive,
        Some(crate::snapshot::TcpKeepalive {
            probes: Some(3),
            time: Some(Duration::from_secs(10)),
            interval: Some(Duration::from_secs(2)),
        })
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = ok(&dr_pool(
        "maxConnections: 0, tcpKeepalive: {}",
        "http1MaxPendingRequests: 4294967295, maxRetries: 0",
    ));
    let pool = &c.snapshot.clusters[0].pool;
    assert_eq!(
        (pool.max_connections, pool.max_pending_requests, pool.max_retries),
        (None, None, None),
        "0 (protobuf's unset) and Istio's default 2^32-1 are unlimited"
    );
    let keepalive = pool
        .tcp_keepalive
        .expect("an empty tcpKeepalive still turns SO_KEEPALIVE on");
    assert_eq!(
        (keepalive.probes, keepalive.time, keepalive.interval),
        (None, None, None)
    );
}

#[test]
fn negative_circuit_breaker_limits_name_their_field() {
    let e = errors(&dr_pool(
        "maxConnections: -1, tcpKeepalive: {probes: -2, time: 1500ms, interval: nope}",
        "http1MaxPendingRequests: -3, maxRetries: 5000000000",
    ));
    assert_eq!(
        fields_and_messages(&e),
        [
            "spec.trafficPolicy.connectionPool.tcp.maxConnections: maxConnections must be a number from 1 to 4294967295 (0 for unlimited), got -1",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.probes: probes must be a number from 1 to 127 (0 for the kernel's default), got -2",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: time must be whole seconds from 1s to 32767s, got 1.5s",
            &format!(
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval: {}",
                e[3].message
            ),
            "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests: http1MaxPendingRequests must be a number from 1 to 4294967295 (0 for unlimited), got -3",
            "spec.trafficPolicy.connectionPool.http.maxRetries: maxRetries must be a number from 1 to 4294967295 (0 for unlimited), got 5000000000",
        ]
    );
}

#[test]
fn misspelled_circuit_breaker_and_rate_limit_fields_are_refused() {
    let e = errors(&dr_pool("maxConection: 1", "maxRetry: 2"));
    let msgs = fields_and_messages(&e);
    assert!(
        msgs.iter()
            .any(|m| m.contains("unknown field `maxConection`; did you mean `maxConnections`?")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("unknown field `maxRetry`")), "{msgs:#?}");
    let e = errors(&vs(
        "  - localRateLimt: {maxTokens: 1, fillInterval: 1s}\n    route:\n    - destination: {host: web.example.com}\n",
    ));
    let msgs = fields_and_messages(&e);
    assert!(
        msgs.iter()
            .any(|m| m.contains("unknown field `localRateLimt`; did you mean `localRateLimit`?")),
        "{msgs:#?}"
    );
    let e = errors(&vs(
        "  - localRateLimit: {maxTokens: 1, fillIntervl: 1s}\n    route:\n    - destination: {host: web.example.com}\n",
    ));
    let msgs = fields_and_messages(&e);
    assert!(
        msgs.iter().any(|m| m.contains("unknown field `fillIntervl`")),
        "{msgs:#?}"
    );
}

#[test]
fn a_route_local_rate_limit_is_an_accepted_extension() {
    let c = ok(&vs(
        "  - match: [{uri: {prefix: /a}}]\n    localRateLimit: {maxTokens: 100, tokensPerFill: 10, fillInterval: 100ms}\n    route:\n    - destination: {host: web.example.com}\n  - localRateLimit: {maxTokens: 5, fillInterval: 1s, rateLimitedAsResourceExhausted: true}\n    route:\n    - destination: {host: web.example.com}\n",
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let limits = c.snapshot.local_rate_limits();
    assert_eq!(limits.len(), 2);
    let a = limits[0];
    assert_eq!(
        (
            a.max_tokens,
            a.tokens_per_fill,
            a.fill_interval,
            a.grpc_resource_exhausted
        ),
        (100, 10, Duration::from_millis(100), false)
    );
    assert_eq!(a.key, "VirtualService default/web http[0]");
    let b = limits[1];
    assert_eq!(
        (b.max_tokens, b.tokens_per_fill, b.grpc_resource_exhausted),
        (5, 1, true)
    );
    assert_ne!(a.id, b.id);
}

#[test]
fn bad_local_rate_limits_name_their_field() {
    let e = errors(&vs(
        "  - localRateLimit: {maxTokens: -1, tokensPerFill: 0, fillInterval: 10ms}\n    route:\n    - destination: {host: web.example.com}\n  - localRateLimit: {tokensPerFill: 1}\n    route:\n    - destination: {host: web.example.com}\n",
    ));
    assert_eq!(
        fields_and_messages(&e),
        [
            "spec.http[0].localRateLimit.maxTokens: maxTokens must be a number from 1 to 4294967295, got -1",
            "spec.http[0].localRateLimit.tokensPerFill: tokensPerFill must be a number from 1 to 4294967295, got 0",
            "spec.http[0].localRateLimit.fillInterval: fillInterval must be at least 50ms (as Envoy requires), got 10ms",
            "spec.http[1].localRateLimit.maxTokens: maxTokens is required",
            "spec.http[1].localRateLimit.fillInterval: fillInterval is required",
        ]
    );
}

#[test]
fn a_listener_local_rate_limit_applies_to_http_listeners_only() {
    let proxy = |protocol: &str, extra: &str| {
        format!(
            "{SVC}---\napiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  listeners:\n  - name: web\n    address: 127.0.0.1:15001\n    protocol: {protocol}\n{extra}    localRateLimit: {{maxTokens: 10, fillInterval: 1s}}\n"
        )
    };
    let c = ok(&proxy("HTTP", ""));
    let l = c.snapshot.listeners[0]
        .local_rate_limit
        .as_ref()
        .expect("the listener's limit");
    assert_eq!((l.max_tokens, l.key.as_str()), (10, "listener web"));
    let e = errors(&proxy("TCP", "    destination: {host: web.example.com}\n"));
    assert_eq!(
        fields_and_messages(&e),
        ["spec.listeners[0].localRateLimit: localRateLimit limits HTTP requests; a TCP listener carries none (its connections are not limited)"]
    );
    let e = errors(&proxy("HTTP", "    localRateLimt: {}\n"));
    assert!(
        fields_and_messages(&e).iter().any(|m| m.contains("localRateLimt")),
        "{e:#?}"
    );
}
