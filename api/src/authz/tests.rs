//! Authorization tests: policies written as users write them, compiled by the real compiler for
//! the workload `shop/web` (labels `app: web, version: v1`, port 8080), then evaluated.

use std::net::IpAddr;

use super::*;
use crate::compile::{compile, CompileInput};
use crate::load::load_str;

const WORKLOAD: &str = "\
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
spec:
  workload:
    name: web
    namespace: shop
    labels: {app: web, version: v1}
    ports: {http: 8080}
";

fn authz(policies: &str) -> Authz {
    let text = format!("{WORKLOAD}---\n{policies}");
    let (resources, _) = load_str("p.yaml", &text).unwrap_or_else(|e| panic!("{}", crate::Diagnostics(e)));
    let compiled = compile(&CompileInput {
        resources,
        extra_endpoints: Vec::new(),
        version: 1,
    })
    .unwrap_or_else(|e| panic!("{}", crate::Diagnostics(e)));
    compiled.snapshot.security.authz
}

/// One policy `shop/<name>` with `spec` written inline (flow YAML).
fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {spec}\n---\n"
    )
}

#[derive(Debug)]
struct Headers(Vec<(&'static str, &'static str)>);

impl HeaderLookup for Headers {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.0.iter().filter(|(n, _)| *n == name).any(|(_, v)| f(v.as_bytes()))
    }
}

/// A request (or, with `tcp()`, a connection) to evaluate.
#[derive(Debug)]
struct Req {
    peer: Option<(&'static str, &'static str, &'static str)>,
    source: IpAddr,
    destination: IpAddr,
    port: u16,
    sni: Option<&'static str>,
    http: Option<(&'static str, &'static str, &'static str)>,
    headers: Headers,
}

impl Req {
    /// `GET path` to `web.shop:8080` from 10.1.2.3 in plain text.
    fn get(path: &'static str) -> Self {
        Req {
            peer: None,
            source: "10.1.2.3".parse().unwrap(),
            destination: "10.9.9.9".parse().unwrap(),
            port: 8080,
            sni: None,
            http: Some(("web.shop:8080", "GET", path)),
            headers: Headers(Vec::new()),
        }
    }
    fn tcp() -> Self {
        Req {
            http: None,
            ..Req::get("/")
        }
    }
    /// mTLS from `cluster.local/ns/<ns>/sa/<sa>`.
    fn from(mut self, ns: &'static str, sa: &'static str) -> Self {
        let principal = Box::leak(format!("cluster.local/ns/{ns}/sa/{sa}").into_boxed_str());
        self.peer = Some((principal, ns, sa));
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.source = ip.parse().unwrap();
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.http.as_mut().unwrap().1 = m;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.http.as_mut().unwrap().0 = h;
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn sni(mut self, s: &'static str) -> Self {
        self.sni = Some(s);
        self
    }
    fn header(mut self, n: &'static str, v: &'static str) -> Self {
        self.headers.0.push((n, v));
        self
    }

    fn eval(&self, a: &Authz) -> Decision {
        a.evaluate(&self.attrs())
    }

    fn attrs(&self) -> RequestAttrs<'_> {
        RequestAttrs {
            peer: self.peer.map(|(principal, namespace, service_account)| PeerId {
                principal,
                namespace,
                service_account,
            }),
            source_ip: self.source,
            remote_ip: self.source,
            destination_ip: self.destination,
            destination_port: self.port,
            sni: self.sni,
            http: self.http.map(|(host, method, path)| HttpAttrs {
                host,
                method,
                path,
                headers: &self.headers,
            }),
        }
    }
}

/// Whether `rule` (one flow-YAML rule) matches `req`: an ALLOW policy with it allows exactly
/// when it matches, and, for HTTP, a DENY policy with it denies exactly then.
fn matches(rule: &str, req: &Req) -> bool {
    let allow = authz(&policy("a", &format!("{{rules: [{rule}]}}")));
    let allowed = req.eval(&allow).is_allowed();
    if req.http.is_some() {
        let deny = authz(&policy("d", &format!("{{action: DENY, rules: [{rule}]}}")));
        assert_eq!(
            !req.eval(&deny).is_allowed(),
            allowed,
            "ALLOW and DENY disagree on {rule} for {req:?}"
        );
    }
    allowed
}

#[track_caller]
fn table(cases: &[(&str, Req, bool)]) {
    for (rule, req, want) in cases {
        assert_eq!(matches(rule, req), *want, "{rule} with {req:?}");
    }
}

#[test]
fn sources_by_identity() {
    table(&[
        (
            "{from: [{source: {principals: [cluster.local/ns/a/sa/x]}}]}",
            Req::get("/").from("a", "x"),
            true,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/a/sa/x]}}]}",
            Req::get("/").from("a", "y"),
            false,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/a/sa/x]}}]}",
            Req::get("/"),
            false,
        ),
        (
            "{from: [{source: {principals: ['*']}}]}",
            Req::get("/").from("a", "y"),
            true,
        ),
        ("{from: [{source: {principals: ['*']}}]}", Req::get("/"), false),
        (
            "{from: [{source: {principals: ['*/sa/x']}}]}",
            Req::get("/").from("b", "x"),
            true,
        ),
        (
            "{from: [{source: {principals: ['cluster.local/ns/a/*']}}]}",
            Req::get("/").from("a", "z"),
            true,
        ),
        (
            "{from: [{source: {principals: ['cluster.local/ns/a/*']}}]}",
            Req::get("/").from("b", "z"),
            false,
        ),
        // Without a peer a `not` list holds: `notPrincipals: ["*"]` is "plain text".
        ("{from: [{source: {notPrincipals: ['*']}}]}", Req::get("/"), true),
        (
            "{from: [{source: {notPrincipals: ['*']}}]}",
            Req::get("/").from("a", "x"),
            false,
        ),
        (
            "{from: [{source: {notPrincipals: [cluster.local/ns/a/sa/x]}}]}",
            Req::get("/").from("a", "y"),
            true,
        ),
        (
            "{from: [{source: {namespaces: [a]}}]}",
            Req::get("/").from("a", "x"),
            true,
        ),
        (
            "{from: [{source: {namespaces: [a]}}]}",
            Req::get("/").from("ab", "x"),
            false,
        ),
        ("{from: [{source: {namespaces: [a]}}]}", Req::get("/"), false),
        (
            "{from: [{source: {namespaces: ['prod-*']}}]}",
            Req::get("/").from("prod-eu", "x"),
            true,
        ),
        (
            "{from: [{source: {notNamespaces: [a]}}]}",
            Req::get("/").from("a", "x"),
            false,
        ),
        (
            "{from: [{source: {notNamespaces: [a]}}]}",
            Req::get("/").from("b", "x"),
            true,
        ),
        ("{from: [{source: {notNamespaces: [a]}}]}", Req::get("/"), true),
        (
            "{from: [{source: {serviceAccounts: [a/x]}}]}",
            Req::get("/").from("a", "x"),
            true,
        ),
        (
            "{from: [{source: {serviceAccounts: [a/x]}}]}",
            Req::get("/").from("b", "x"),
            false,
        ),
        ("{from: [{source: {serviceAccounts: [a/x]}}]}", Req::get("/"), false),
        (
            "{from: [{source: {notServiceAccounts: [a/x]}}]}",
            Req::get("/").from("a", "x"),
            false,
        ),
        (
            "{from: [{source: {notServiceAccounts: [a/x]}}]}",
            Req::get("/").from("a", "y"),
            true,
        ),
        // Fields of one source are ANDed, sources ORed.
        (
            "{from: [{source: {namespaces: [a], notPrincipals: [cluster.local/ns/a/sa/x]}}]}",
            Req::get("/").from("a", "x"),
            false,
        ),
        (
            "{from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}]}",
            Req::get("/").from("b", "x"),
            true,
        ),
    ]);
}

#[test]
fn sources_by_address() {
    table(&[
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            Req::get("/").ip("10.200.0.1"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            Req::get("/").ip("11.0.0.1"),
            false,
        ),
        ("{from: [{source: {ipBlocks: [10.1.2.3]}}]}", Req::get("/"), true),
        (
            "{from: [{source: {ipBlocks: [10.1.2.3]}}]}",
            Req::get("/").ip("10.1.2.4"),
            false,
        ),
        // An IPv4 address mapped into IPv6 is the IPv4 address.
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            Req::get("/").ip("::ffff:10.0.0.7"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: ['2001:db8::/32']}}]}",
            Req::get("/").ip("2001:db8:1::5"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: ['2001:db8::/32']}}]}",
            Req::get("/").ip("2001:db9::5"),
            false,
        ),
        (
            "{from: [{source: {ipBlocks: ['2001:db8::/32']}}]}",
            Req::get("/").ip("10.0.0.1"),
            false,
        ),
        (
            "{from: [{source: {ipBlocks: ['2001:db8::1']}}]}",
            Req::get("/").ip("2001:db8::1"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: ['0.0.0.0/0']}}]}",
            Req::get("/").ip("1.2.3.4"),
            true,
        ),
        (
            "{from: [{source: {ipBlocks: ['::/0']}}]}",
            Req::get("/").ip("fe80::1"),
            true,
        ),
        // Host bits in a block are ignored, as Istio's CIDR parsing does.
        ("{from: [{source: {ipBlocks: [10.1.2.99/24]}}]}", Req::get("/"), true),
        ("{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}", Req::get("/"), false),
        (
            "{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}",
            Req::get("/").ip("192.168.0.1"),
            true,
        ),
        (
            "{from: [{source: {remoteIpBlocks: [10.1.0.0/16]}}]}",
            Req::get("/"),
            true,
        ),
        (
            "{from: [{source: {remoteIpBlocks: [10.2.0.0/16]}}]}",
            Req::get("/"),
            false,
        ),
        (
            "{from: [{source: {notRemoteIpBlocks: [10.1.0.0/16]}}]}",
            Req::get("/"),
            false,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.1.0.0/16]}}]}",
            Req::get("/"),
            false,
        ),
    ]);
}

#[test]
fn operations() {
    table(&[
        ("{to: [{operation: {hosts: [web.shop]}}]}", Req::get("/"), true),
        ("{to: [{operation: {hosts: [Web.Shop]}}]}", Req::get("/"), true),
        ("{to: [{operation: {hosts: ['web.shop:8080']}}]}", Req::get("/"), true),
        ("{to: [{operation: {hosts: ['web.shop:9090']}}]}", Req::get("/"), false),
        (
            "{to: [{operation: {hosts: [web.shop]}}]}",
            Req::get("/").host("WEB.shop"),
            true,
        ),
        (
            "{to: [{operation: {hosts: ['*.shop']}}]}",
            Req::get("/").host("api.shop"),
            true,
        ),
        (
            "{to: [{operation: {hosts: ['api.*']}}]}",
            Req::get("/").host("api.shop"),
            true,
        ),
        (
            "{to: [{operation: {hosts: [web.shop]}}]}",
            Req::get("/").host("api.shop"),
            false,
        ),
        ("{to: [{operation: {notHosts: [web.shop]}}]}", Req::get("/"), false),
        (
            "{to: [{operation: {notHosts: [web.shop]}}]}",
            Req::get("/").host("api.shop"),
            true,
        ),
        ("{to: [{operation: {ports: ['8080']}}]}", Req::get("/"), true),
        (
            "{to: [{operation: {ports: ['8080']}}]}",
            Req::get("/").port(9090),
            false,
        ),
        ("{to: [{operation: {notPorts: ['8080']}}]}", Req::get("/"), false),
        (
            "{to: [{operation: {notPorts: ['8080']}}]}",
            Req::get("/").port(9090),
            true,
        ),
        ("{to: [{operation: {methods: [GET, HEAD]}}]}", Req::get("/"), true),
        (
            "{to: [{operation: {methods: [GET]}}]}",
            Req::get("/").method("POST"),
            false,
        ),
        // Methods are case-sensitive, as HTTP's are.
        ("{to: [{operation: {methods: [get]}}]}", Req::get("/"), false),
        ("{to: [{operation: {notMethods: [GET]}}]}", Req::get("/"), false),
        (
            "{to: [{operation: {notMethods: [GET]}}]}",
            Req::get("/").method("DELETE"),
            true,
        ),
        ("{to: [{operation: {paths: [/info]}}]}", Req::get("/info"), true),
        ("{to: [{operation: {paths: [/info]}}]}", Req::get("/information"), false),
        (
            "{to: [{operation: {paths: ['/info*']}}]}",
            Req::get("/information"),
            true,
        ),
        ("{to: [{operation: {paths: ['/info*']}}]}", Req::get("/inf"), false),
        ("{to: [{operation: {paths: ['*.png']}}]}", Req::get("/a/b.png"), true),
        ("{to: [{operation: {paths: ['*.png']}}]}", Req::get("/a/b.jpg"), false),
        ("{to: [{operation: {paths: ['*']}}]}", Req::get("/anything"), true),
        ("{to: [{operation: {notPaths: [/info]}}]}", Req::get("/info"), false),
        ("{to: [{operation: {notPaths: [/info]}}]}", Req::get("/other"), true),
        // Fields of one operation ANDed, operations ORed.
        (
            "{to: [{operation: {methods: [POST], paths: [/data]}}]}",
            Req::get("/data"),
            false,
        ),
        (
            "{to: [{operation: {methods: [POST]}}, {operation: {paths: [/data]}}]}",
            Req::get("/data"),
            true,
        ),
    ]);
}

/// A DENY on `/admin` is not walked around by a trailing slash or path parameters; a prefix
/// keeps Istio's meaning.
#[test]
fn paths_without_parameters_and_trailing_slash() {
    table(&[
        ("{to: [{operation: {paths: [/admin]}}]}", Req::get("/admin/"), true),
        ("{to: [{operation: {paths: [/admin]}}]}", Req::get("/admin;x"), true),
        ("{to: [{operation: {paths: [/admin]}}]}", Req::get("/admin;x=1/"), true),
        ("{to: [{operation: {paths: [/admin]}}]}", Req::get("/admin/;x"), true),
        (
            "{to: [{operation: {paths: [/admin/users]}}]}",
            Req::get("/admin;a/users;b"),
            true,
        ),
        ("{to: [{operation: {paths: [/admin]}}]}", Req::get("/admin/x"), false),
        ("{to: [{operation: {paths: [/admin]}}]}", Req::get("/admin//"), false),
        ("{to: [{operation: {paths: [/]}}]}", Req::get("/"), true),
        ("{to: [{operation: {paths: [/]}}]}", Req::get("/;x"), true),
        (
            "{to: [{operation: {paths: ['*/admin']}}]}",
            Req::get("/v1/admin/"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['*/admin']}}]}",
            Req::get("/v1/admin;x"),
            true,
        ),
        (
            "{to: [{operation: {paths: ['*/admin']}}]}",
            Req::get("/v1/admin/x"),
            false,
        ),
        (
            "{to: [{operation: {paths: ['*.png']}}]}",
            Req::get("/a.png;jsessionid=1"),
            true,
        ),
        ("{to: [{operation: {paths: ['/admin*']}}]}", Req::get("/admin;x"), true),
        ("{to: [{operation: {notPaths: [/admin]}}]}", Req::get("/admin/"), false),
    ]);
    let deny = authz(&policy(
        "no-admin",
        "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
    ));
    for path in ["/admin", "/admin/", "/admin;x", "/admin;x/"] {
        assert!(!Req::get(path).eval(&deny).is_allowed(), "{path}");
    }
}

#[test]
fn conditions() {
    table(&[
        (
            "{when: [{key: 'request.headers[x-token]', values: [abc]}]}",
            Req::get("/").header("x-token", "abc"),
            true,
        ),
        (
            "{when: [{key: 'request.headers[X-Token]', values: [abc]}]}",
            Req::get("/").header("x-token", "abc"),
            true,
        ),
        (
            "{when: [{key: 'request.headers[x-token]', values: [abc]}]}",
            Req::get("/").header("x-token", "abd"),
            false,
        ),
        (
            "{when: [{key: 'request.headers[x-token]', values: [abc]}]}",
            Req::get("/"),
            false,
        ),
        (
            "{when: [{key: 'request.headers[x-token]', values: [abc]}]}",
            Req::get("/").header("x-token", "no").header("x-token", "abc"),
            true,
        ),
        (
            "{when: [{key: 'request.headers[x-token]', values: ['*']}]}",
            Req::get("/").header("x-token", "v"),
            true,
        ),
        (
            "{when: [{key: 'request.headers[x-token]', values: ['ab*']}]}",
            Req::get("/").header("x-token", "abz"),
            true,
        ),
        (
            "{when: [{key: 'request.headers[x-token]', notValues: [abc]}]}",
            Req::get("/"),
            true,
        ),
        (
            "{when: [{key: 'request.headers[x-token]', notValues: [abc]}]}",
            Req::get("/").header("x-token", "abc"),
            false,
        ),
        ("{when: [{key: source.ip, values: [10.1.0.0/16]}]}", Req::get("/"), true),
        (
            "{when: [{key: source.ip, notValues: [10.1.0.0/16]}]}",
            Req::get("/"),
            false,
        ),
        ("{when: [{key: remote.ip, values: [10.1.2.3]}]}", Req::get("/"), true),
        (
            "{when: [{key: destination.ip, values: [10.9.0.0/16]}]}",
            Req::get("/"),
            true,
        ),
        (
            "{when: [{key: destination.ip, values: ['2001:db8::/32']}]}",
            Req::get("/"),
            false,
        ),
        (
            "{when: [{key: destination.port, values: ['8080']}]}",
            Req::get("/"),
            true,
        ),
        (
            "{when: [{key: destination.port, notValues: ['8080']}]}",
            Req::get("/"),
            false,
        ),
        (
            "{when: [{key: source.namespace, values: [a]}]}",
            Req::get("/").from("a", "x"),
            true,
        ),
        ("{when: [{key: source.namespace, values: [a]}]}", Req::get("/"), false),
        ("{when: [{key: source.namespace, notValues: [a]}]}", Req::get("/"), true),
        (
            "{when: [{key: source.principal, values: [cluster.local/ns/a/sa/x]}]}",
            Req::get("/").from("a", "x"),
            true,
        ),
        (
            "{when: [{key: source.principal, notValues: [cluster.local/ns/a/sa/x]}]}",
            Req::get("/").from("a", "x"),
            false,
        ),
        (
            "{when: [{key: source.serviceAccount, values: [a/x]}]}",
            Req::get("/").from("a", "x"),
            true,
        ),
        (
            "{when: [{key: source.serviceAccount, values: [a/x]}]}",
            Req::get("/").from("a", "y"),
            false,
        ),
        (
            "{when: [{key: connection.sni, values: ['*.shop']}]}",
            Req::get("/").sni("web.shop"),
            true,
        ),
        (
            "{when: [{key: connection.sni, values: ['*.shop']}]}",
            Req::get("/"),
            false,
        ),
        (
            "{when: [{key: connection.sni, notValues: [web.shop]}]}",
            Req::get("/"),
            true,
        ),
        // No request has a verified JWT.
        (
            "{when: [{key: request.auth.principal, values: ['*']}]}",
            Req::get("/"),
            false,
        ),
        (
            "{when: [{key: 'request.auth.claims[iss]', notValues: [x]}]}",
            Req::get("/"),
            true,
        ),
        ("{from: [{source: {requestPrincipals: ['*']}}]}", Req::get("/"), false),
        ("{from: [{source: {notRequestPrincipals: ['*']}}]}", Req::get("/"), true),
        (
            "{when: [{key: experimental.envoy.filters.x, values: ['*']}]}",
            Req::get("/"),
            false,
        ),
        (
            "{when: [{key: experimental.envoy.filters.x, notValues: ['*']}]}",
            Req::get("/"),
            false,
        ),
        // Conditions are ANDed.
        (
            "{when: [{key: source.ip, values: [10.1.2.3]}, {key: destination.port, values: ['9']}]}",
            Req::get("/"),
            false,
        ),
    ]);
}

/// Istio's order: DENY, then ALLOW (when any applies); AUDIT only reports.
#[test]
fn actions_in_istios_order() {
    let a = authz(&format!(
        "{}{}{}{}",
        policy("audit-all", "{action: AUDIT, rules: [{}]}"),
        policy(
            "audit-get",
            "{action: AUDIT, rules: [{to: [{operation: {methods: [GET]}}]}]}"
        ),
        policy("allow-get", "{rules: [{to: [{operation: {methods: [GET, DELETE]}}]}]}"),
        policy(
            "deny-delete",
            "{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}"
        ),
    ));
    let name = |d: Decision| match d {
        Decision::Allowed { audit } => format!("allowed audit={:?}", audit.map(|p| a.policy_name(p))),
        Decision::Denied { policy } => format!("denied by {}", a.policy_name(policy)),
    };
    assert_eq!(name(Req::get("/").eval(&a)), "allowed audit=Some(\"shop/audit-all\")");
    assert_eq!(
        name(Req::get("/").method("DELETE").eval(&a)),
        "denied by shop/deny-delete"
    );
    assert_eq!(name(Req::get("/").method("POST").eval(&a)), "denied by allow-nomatch");
    assert_eq!(
        Req::get("/").method("POST").eval(&a),
        Decision::Denied {
            policy: PolicyRef::ALLOW_NOMATCH
        }
    );

    // Without ALLOW policies everything not denied is allowed; AUDIT reports the first match.
    let a = authz(&format!(
        "{}{}",
        policy(
            "audit-post",
            "{action: AUDIT, rules: [{to: [{operation: {methods: [POST]}}]}]}"
        ),
        policy(
            "deny-delete",
            "{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}"
        ),
    ));
    assert_eq!(Req::get("/").eval(&a), Decision::Allowed { audit: None });
    assert!(matches!(
        Req::get("/").method("POST").eval(&a),
        Decision::Allowed { audit: Some(p) } if a.policy_name(p) == "shop/audit-post"
    ));
    assert!(!Req::get("/").method("DELETE").eval(&a).is_allowed());
    // A DENY without rules denies nothing.
    assert!(Req::get("/").eval(&authz(&policy("d", "{action: DENY}"))).is_allowed());
}

#[test]
fn empty_spec_denies_all_and_an_empty_rule_allows_all() {
    let deny_all = authz(&policy("deny-all", "{}"));
    assert!(!deny_all.is_empty());
    for req in [Req::get("/"), Req::get("/x").from("a", "b"), Req::tcp()] {
        assert_eq!(
            req.eval(&deny_all),
            Decision::Denied {
                policy: PolicyRef::ALLOW_NOMATCH
            }
        );
    }
    let allow_all = authz(&policy("allow-all", "{rules: [{}]}"));
    for req in [Req::get("/"), Req::tcp()] {
        assert!(req.eval(&allow_all).is_allowed());
    }
    assert!(authz("").is_empty());
    assert!(Req::get("/").eval(&authz("")).is_allowed());
}

#[test]
fn which_policies_select_the_workload() {
    let doc = |ns: &str, name: &str, selector: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{{selector}}}\n---\n"
        )
    };
    let a = authz(
        &[
            doc("shop", "ns-wide", ""),
            doc("shop", "mine", "selector: {matchLabels: {app: web}}"),
            doc(
                "shop",
                "both-labels",
                "selector: {matchLabels: {app: web, version: v1}}",
            ),
            doc("shop", "other-app", "selector: {matchLabels: {app: db}}"),
            doc("shop", "more-labels", "selector: {matchLabels: {app: web, tier: x}}"),
            doc("shop", "empty-selector", "selector: {matchLabels: {}}"),
            doc("other", "other-ns", ""),
            doc("istio-system", "mesh-wide", ""),
            doc("istio-system", "mesh-selected", "selector: {matchLabels: {app: web}}"),
            doc("istio-system", "mesh-other", "selector: {matchLabels: {app: db}}"),
        ]
        .concat(),
    );
    let names: Vec<&str> = a.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "shop/ns-wide",
            "shop/mine",
            "shop/both-labels",
            "shop/empty-selector",
            "istio-system/mesh-wide",
            "istio-system/mesh-selected"
        ]
    );
}

/// Istio's rule for TCP: an ALLOW rule naming HTTP-only fields never matches a connection; in a
/// DENY rule those fields are ignored, so it denies more.
#[test]
fn tcp_connections() {
    let allow = authz(&policy(
        "a",
        "{rules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {paths: [/x]}}]}]}",
    ));
    assert!(!Req::tcp().from("a", "x").eval(&allow).is_allowed());
    assert!(Req::get("/x").from("a", "x").eval(&allow).is_allowed());
    let allow_l4 = authz(&policy(
        "a",
        "{rules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {ports: ['8080']}}]}]}",
    ));
    assert!(Req::tcp().from("a", "x").eval(&allow_l4).is_allowed());
    assert!(!Req::tcp().from("b", "x").eval(&allow_l4).is_allowed());
    for rule in [
        "{to: [{operation: {methods: [GET]}}]}",
        "{to: [{operation: {hosts: [web.shop]}}]}",
        "{to: [{operation: {notPaths: [/x]}}]}",
        "{when: [{key: 'request.headers[a]', values: [b]}]}",
        "{from: [{source: {requestPrincipals: ['*']}}]}",
    ] {
        assert!(!matches(rule, &Req::tcp()), "{rule}");
    }

    // DENY: HTTP-only fields drop out, the rest still counts.
    let deny = authz(&policy(
        "d",
        "{action: DENY, rules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {paths: [/admin]}}]}]}",
    ));
    assert!(!Req::tcp().from("a", "x").eval(&deny).is_allowed());
    assert!(Req::tcp().from("b", "x").eval(&deny).is_allowed());
    assert!(Req::get("/public").from("a", "x").eval(&deny).is_allowed());
    let deny_header = authz(&policy(
        "d",
        "{action: DENY, rules: [{when: [{key: 'request.headers[x]', values: [y]}]}]}",
    ));
    assert!(!Req::tcp().eval(&deny_header).is_allowed());
    assert!(Req::get("/").eval(&deny_header).is_allowed());
}

#[test]
fn rules_are_ored_and_parts_anded() {
    let a = authz(&policy(
        "a",
        "{rules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {methods: [GET]}}], \
         when: [{key: destination.port, values: ['8080']}]}, {to: [{operation: {paths: [/health]}}]}]}",
    ));
    assert!(Req::get("/").from("a", "x").eval(&a).is_allowed());
    assert!(!Req::get("/").from("a", "x").method("POST").eval(&a).is_allowed());
    assert!(!Req::get("/").from("a", "x").port(9).eval(&a).is_allowed());
    assert!(!Req::get("/").from("b", "x").eval(&a).is_allowed());
    assert!(Req::get("/health").method("POST").eval(&a).is_allowed());
}

#[test]
fn policy_names() {
    let a = authz(&policy("p", "{}"));
    assert_eq!(a.policy_name(PolicyRef(0)), "shop/p");
    assert_eq!(a.policy_name(PolicyRef::ALLOW_NOMATCH), "allow-nomatch");
}

// What `/explain` reports beside the decision: the ALLOW policy that let a request through
// (the first that matches, in order), and each policy's action.
#[test]
fn the_allow_policy_that_decided_and_the_actions() {
    let mut yaml = policy("ops", "{rules: [{from: [{source: {namespaces: [ops]}}]}]}");
    yaml.push_str(&policy("reads", "{rules: [{to: [{operation: {methods: [GET]}}]}]}"));
    yaml.push_str(&policy(
        "no-admin",
        "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
    ));
    let a = authz(&yaml);
    let name = |p: Option<PolicyRef>| p.map(|p| a.policy_name(p).to_string());
    assert_eq!(
        name(a.allowed_by(&Req::get("/").from("ops", "x").attrs())),
        Some("shop/ops".into())
    );
    assert_eq!(name(a.allowed_by(&Req::get("/").attrs())), Some("shop/reads".into()));
    assert_eq!(name(a.allowed_by(&Req::get("/").method("POST").attrs())), None);
    let denied = Req::get("/admin").eval(&a);
    assert_eq!(denied, Decision::Denied { policy: PolicyRef(2) });
    assert_eq!(a.policy_action(PolicyRef(2)), "DENY");
    assert_eq!(a.policy_action(PolicyRef(0)), "ALLOW");
    assert_eq!(a.policy_action(PolicyRef::ALLOW_NOMATCH), "ALLOW");
    let all: Vec<_> = a.policies().collect();
    assert_eq!(
        all,
        [
            ("shop/ops", "ALLOW"),
            ("shop/reads", "ALLOW"),
            ("shop/no-admin", "DENY")
        ]
    );
}

#[test]
fn cidr_parsing() {
    let c = |s: &str| Cidr::parse(s).map(|c| (c.addr.to_string(), c.prefix));
    assert_eq!(c("10.1.2.3/8"), Some(("10.0.0.0".into(), 8)));
    assert_eq!(c("10.1.2.3"), Some(("10.1.2.3".into(), 32)));
    assert_eq!(c("2001:db8::1/32"), Some(("2001:db8::".into(), 32)));
    assert_eq!(c("::/0"), Some(("::".into(), 0)));
    assert_eq!(c("10.0.0.0/33"), None);
    assert_eq!(c("nope"), None);
}
