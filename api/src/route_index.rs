//! Route lookup: host to virtual host, then path (and headers, query, method) to route.
//!
//! This is step 4 of the data path ("Route"), run by a worker for every request against the
//! immutable [`Snapshot`](crate::snapshot::Snapshot). It must not lock or allocate. Istio's rule
//! is *first match wins* in declaration order; scanning thousands of routes per request would
//! make the proxy's latency grow with the config, so each virtual host keeps a [`RouteIndex`]:
//!
//! * exact-path matches in a hash map keyed by the path,
//! * prefix matches in one hash map per distinct prefix length, probed with `path[..len]`,
//! * everything else (regex, no path condition, `ignoreUriCase`) in an ordered list.
//!
//! Each bucket holds `(route, match)` pairs in declaration order, so the answer is the lowest
//! route index whose full [`RouteMatch`] holds among the few candidates: exactly what a linear
//! first-match scan returns (a property test below checks this against the naive scan).

use rustc_hash::FxHashMap as HashMap;

use crate::matcher::StringMatch;
use crate::snapshot::{PathRewrite, RequestHead, Route, RouteMatch, RouteTable, VirtualHost, VirtualHostId};

/// One indexed condition: route `route`, its match entry `matcher` (`None` = route without
/// conditions, which matches everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    route: u32,
    matcher: Option<u32>,
}

/// Per-virtual-host index over its routes. Built once by [`VirtualHost::new`].
#[derive(Debug, Clone, Default)]
pub struct RouteIndex {
    /// Exact (case-sensitive) path to candidates in route order.
    exact: HashMap<String, Vec<Candidate>>,
    /// `(prefix length, prefix -> candidates)`, one map per distinct length.
    prefixes: Vec<(usize, HashMap<String, Vec<Candidate>>)>,
    /// Candidates that need a full evaluation (regex paths, case-insensitive paths, no path).
    scan: Vec<Candidate>,
}

impl RouteIndex {
    /// Indexes `routes`. Cost is linear in the number of match entries.
    pub fn build(routes: &[Route]) -> Self {
        let mut index = RouteIndex::default();
        for (r, route) in routes.iter().enumerate() {
            let r = r as u32;
            if route.matches.is_empty() {
                index.scan.push(Candidate {
                    route: r,
                    matcher: None,
                });
                continue;
            }
            for (m, rm) in route.matches.iter().enumerate() {
                let cand = Candidate {
                    route: r,
                    matcher: Some(m as u32),
                };
                match &rm.path {
                    Some(p) if !p.ignore_case => match &p.matcher {
                        StringMatch::Exact(s) => {
                            index.exact.entry(s.clone()).or_default().push(cand);
                        }
                        StringMatch::Prefix(s) => {
                            let len = s.len();
                            let pos = match index.prefixes.iter().position(|(l, _)| *l == len) {
                                Some(pos) => pos,
                                None => {
                                    index.prefixes.push((len, HashMap::default()));
                                    index.prefixes.len() - 1
                                }
                            };
                            index.prefixes[pos].1.entry(s.clone()).or_default().push(cand);
                        }
                        StringMatch::Regex(_) => index.scan.push(cand),
                    },
                    _ => index.scan.push(cand),
                }
            }
        }
        // Longest prefixes first only matters for readability of dumps; correctness comes from
        // taking the minimum route index over all buckets.
        index.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0));
        index
    }

    /// The first `(route, match)` in declaration order that holds for `req`.
    fn lookup(&self, routes: &[Route], req: &impl RequestHead) -> Option<Candidate> {
        let path = req.path();
        let mut best: Option<Candidate> = None;
        let consider = |list: &[Candidate], best: &mut Option<Candidate>| {
            for &cand in list {
                if best.is_some_and(|b| b.route <= cand.route) {
                    // Lists are in route order: nothing later in this one can win.
                    return;
                }
                if candidate_holds(routes, cand, req) {
                    *best = Some(cand);
                    return;
                }
            }
        };
        if let Some(list) = self.exact.get(path) {
            consider(list, &mut best);
        }
        for (len, map) in &self.prefixes {
            // `get` returns None when `len` is past the end or not on a char boundary; a valid
            // UTF-8 prefix of that length could not match such a path anyway.
            if let Some(head) = path.get(..*len) {
                if let Some(list) = map.get(head) {
                    consider(list, &mut best);
                }
            }
        }
        consider(&self.scan, &mut best);
        best
    }
}

fn candidate_holds(routes: &[Route], cand: Candidate, req: &impl RequestHead) -> bool {
    let Some(route) = routes.get(cand.route as usize) else {
        return false;
    };
    match cand.matcher {
        None => true,
        Some(m) => route.matches.get(m as usize).is_some_and(|rm| rm.matches(req)),
    }
}

impl RouteMatch {
    /// Whether every condition of this match entry holds for `req`.
    pub fn matches(&self, req: &impl RequestHead) -> bool {
        if let Some(p) = &self.path {
            if !p.matches(req.path()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(req.method()) {
                return false;
            }
        }
        if !self.headers.iter().all(|h| h.matches_value(req.header(&h.name))) {
            return false;
        }
        let query = req.query();
        self.query.iter().all(|q| q.matches_query(query))
    }
}

/// The route a request selected and the match entry that selected it.
#[derive(Debug, Clone, Copy)]
pub struct RouteHit<'a> {
    /// The winning route.
    pub route: &'a Route,
    /// The match entry that fired; `None` when the route has no conditions.
    pub matched: Option<&'a RouteMatch>,
}

impl VirtualHost {
    /// Builds a virtual host and its route index. `domains` are lower-cased here.
    pub fn new(name: String, domains: Vec<String>, routes: Vec<Route>) -> Self {
        let index = RouteIndex::build(&routes);
        VirtualHost {
            name,
            domains: domains.into_iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
            index,
        }
    }

    /// The first route (in declaration order) whose conditions hold for `req`.
    pub fn find_route(&self, req: &impl RequestHead) -> Option<&Route> {
        self.find_route_match(req).map(|hit| hit.route)
    }

    /// Like [`VirtualHost::find_route`], also returning the match entry that fired, which
    /// [`PathRewrite::rewrite`] needs to know how much of the path to replace.
    pub fn find_route_match(&self, req: &impl RequestHead) -> Option<RouteHit<'_>> {
        let cand = self.index.lookup(&self.routes, req)?;
        let route = self.routes.get(cand.route as usize)?;
        let matched = cand.matcher.and_then(|m| route.matches.get(m as usize));
        Some(RouteHit { route, matched })
    }
}

impl PathRewrite {
    /// The path to forward, with Istio `rewrite.uri` semantics (which are Envoy's
    /// `prefix_rewrite`): after a prefix match the matched prefix is replaced and the rest kept;
    /// after an exact or regex match the whole path is replaced; a route without a path
    /// condition behaves like Istio's implicit `prefix: /`, so only the leading `/` is replaced.
    /// `path` excludes the query string; the caller appends the query unchanged.
    pub fn rewrite(&self, matched: Option<&RouteMatch>, path: &str) -> String {
        let consumed = match matched.and_then(|m| m.path.as_ref()) {
            Some(p) => p.matched_len(path),
            None => usize::from(path.starts_with('/')),
        };
        let rest = path.get(consumed..).unwrap_or("");
        let mut out = String::with_capacity(self.replacement.len() + rest.len());
        out.push_str(&self.replacement);
        out.push_str(rest);
        out
    }
}

/// Longest host name we lower-case on the stack; DNS names are at most 253 bytes.
const MAX_STACK_HOST: usize = 255;

impl RouteTable {
    /// Builds the host lookup over `virtual_hosts`. When two virtual hosts declare the same
    /// domain the first keeps it (the compiler reports that as an error before getting here).
    pub fn new(virtual_hosts: Vec<VirtualHost>) -> Self {
        let mut exact = HashMap::default();
        let mut suffixes: Vec<(String, VirtualHostId)> = Vec::new();
        let mut catch_all = None;
        for (i, vh) in virtual_hosts.iter().enumerate() {
            let id = VirtualHostId(i as u32);
            for domain in &vh.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    catch_all.get_or_insert(id);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if !suffixes.iter().any(|(s, _)| s == suffix) {
                        suffixes.push((suffix.to_owned(), id));
                    }
                } else {
                    exact.entry(domain).or_insert(id);
                }
            }
        }
        // Stable sort: among equal lengths declaration order stays.
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        RouteTable {
            virtual_hosts,
            exact,
            suffixes,
            catch_all,
        }
    }

    /// The virtual host for a `Host`/`:authority` value: the port is stripped (also from
    /// `[v6]:port`), a trailing dot is ignored, and the comparison is case-insensitive. Exact
    /// names win over `*.suffix` wildcards (longest suffix first), which win over `*`.
    pub fn find_host(&self, host: &str) -> Option<&VirtualHost> {
        self.find_host_id(host).and_then(|id| self.virtual_host(id))
    }

    /// The virtual host with this id.
    pub fn virtual_host(&self, id: VirtualHostId) -> Option<&VirtualHost> {
        self.virtual_hosts.get(id.0 as usize)
    }

    /// [`RouteTable::find_host`]'s answer as an id.
    pub fn find_host_id(&self, host: &str) -> Option<VirtualHostId> {
        let name = strip_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut buf = [0u8; MAX_STACK_HOST];
        let id = if name.len() <= MAX_STACK_HOST {
            let lower = &mut buf[..name.len()];
            lower.copy_from_slice(name.as_bytes());
            lower.make_ascii_lowercase();
            // ASCII lower-casing keeps UTF-8 valid; fall back to no match if it somehow is not.
            let lower = std::str::from_utf8(lower).ok()?;
            self.lookup_lower(lower)
        } else {
            // Longer than any DNS name: only a wildcard or `*` can match. Rare enough that one
            // allocation is acceptable.
            self.lookup_lower(&name.to_ascii_lowercase())
        }?;
        Some(id)
    }

    fn lookup_lower(&self, host: &str) -> Option<VirtualHostId> {
        if let Some(id) = self.exact.get(host) {
            return Some(*id);
        }
        for (suffix, id) in &self.suffixes {
            // `*.example.com` needs at least one character before the suffix.
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*id);
            }
        }
        self.catch_all
    }
}

/// `host:port` → `host`, `[::1]:80` → `::1`, a bare IPv6 address unchanged.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &rest[..end],
            None => rest,
        };
    }
    match host.rfind(':') {
        // More than one colon without brackets: a bare IPv6 address, no port to strip.
        Some(i) if !host[..i].contains(':') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::{HeaderMatch, PathMatch, QueryMatch};
    use crate::snapshot::{ClusterId, DirectResponse, HeaderOps, RouteAction};
    use proptest::prelude::*;

    /// A request head for tests.
    #[derive(Debug, Default)]
    pub(crate) struct Req {
        pub(crate) method: String,
        pub(crate) path: String,
        pub(crate) query: Option<String>,
        pub(crate) headers: Vec<(String, String)>,
    }

    impl Req {
        pub(crate) fn get(path: &str) -> Self {
            let (path, query) = match path.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (path.to_owned(), None),
            };
            Req {
                method: "GET".into(),
                path,
                query,
                headers: Vec::new(),
            }
        }
        fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.into(), value.into()));
            self
        }
    }

    impl RequestHead for Req {
        fn method(&self) -> &str {
            &self.method
        }
        fn path(&self) -> &str {
            &self.path
        }
        fn query(&self) -> Option<&str> {
            self.query.as_deref()
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    fn route(name: &str, matches: Vec<RouteMatch>) -> Route {
        Route {
            name: name.into(),
            matches,
            action: RouteAction::Direct(DirectResponse {
                status: 200,
                body: String::new(),
            }),
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            fault: None,
            local_rate_limit: None,
        }
    }

    fn path(m: StringMatch) -> RouteMatch {
        RouteMatch {
            path: Some(PathMatch::new(m, false)),
            method: None,
            headers: vec![],
            query: vec![],
        }
    }

    fn exact(p: &str) -> RouteMatch {
        path(StringMatch::Exact(p.into()))
    }
    fn prefix(p: &str) -> RouteMatch {
        path(StringMatch::Prefix(p.into()))
    }

    fn naive<'a>(vh: &'a VirtualHost, req: &Req) -> Option<&'a Route> {
        vh.routes
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(req)))
    }

    fn vh(routes: Vec<Route>) -> VirtualHost {
        VirtualHost::new("test".into(), vec!["a".into()], routes)
    }

    #[test]
    fn first_match_wins_across_buckets() {
        let v = vh(vec![
            route("regex", vec![path(StringMatch::regex("/api/v[0-9]").expect("ok"))]),
            route("prefix-long", vec![prefix("/api/")]),
            route("exact", vec![exact("/api/v1")]),
            route("prefix-short", vec![prefix("/")]),
        ]);
        let name = |p: &str| v.find_route(&Req::get(p)).map(|r| r.name.as_str());
        assert_eq!(name("/api/v1"), Some("regex"));
        assert_eq!(name("/api/x"), Some("prefix-long"));
        assert_eq!(name("/other"), Some("prefix-short"));
        assert_eq!(name(""), None);
    }

    #[test]
    fn exact_shadowed_by_earlier_prefix() {
        let v = vh(vec![route("p", vec![prefix("/a")]), route("e", vec![exact("/a/b")])]);
        assert_eq!(v.find_route(&Req::get("/a/b")).map(|r| &*r.name), Some("p"));
    }

    #[test]
    fn header_method_query_conditions_fall_through() {
        let mut jason = exact("/reviews");
        jason.headers.push(HeaderMatch {
            name: "end-user".into(),
            value: Some(StringMatch::Exact("jason".into())),
            invert: false,
        });
        let mut post = exact("/reviews");
        post.method = Some(StringMatch::Exact("POST".into()));
        let mut debug = exact("/reviews");
        debug.query.push(QueryMatch {
            name: "debug".into(),
            value: None,
        });
        let v = vh(vec![
            route("jason", vec![jason]),
            route("post", vec![post]),
            route("debug", vec![debug]),
            route("all", vec![]),
        ]);
        let name = |r: Req| v.find_route(&r).map(|r| r.name.clone());
        assert_eq!(
            name(Req::get("/reviews").header("End-User", "jason")),
            Some("jason".into())
        );
        let mut p = Req::get("/reviews");
        p.method = "POST".into();
        assert_eq!(name(p), Some("post".into()));
        assert_eq!(name(Req::get("/reviews?debug")), Some("debug".into()));
        assert_eq!(name(Req::get("/reviews")), Some("all".into()));
    }

    #[test]
    fn or_of_matches_and_reported_match() {
        let v = vh(vec![route("r", vec![exact("/x"), prefix("/api")])]);
        let hit = v.find_route_match(&Req::get("/api/1")).expect("matches");
        assert!(matches!(
            hit.matched.and_then(|m| m.path.as_ref()).map(|p| &p.matcher),
            Some(StringMatch::Prefix(_))
        ));
    }

    #[test]
    fn ignore_case_routes_use_the_scan_list() {
        let mut m = prefix("/API");
        if let Some(p) = m.path.as_mut() {
            p.ignore_case = true;
        }
        let v = vh(vec![route("ci", vec![m])]);
        assert!(v.find_route(&Req::get("/api/x")).is_some());
    }

    #[test]
    fn rewrite_semantics() {
        let rw = PathRewrite {
            replacement: "/v2/".into(),
        };
        let p = prefix("/v1/");
        assert_eq!(rw.rewrite(Some(&p), "/v1/users"), "/v2/users");
        let e = exact("/v1/users");
        assert_eq!(rw.rewrite(Some(&e), "/v1/users"), "/v2/");
        let none = RouteMatch {
            path: None,
            method: None,
            headers: vec![],
            query: vec![],
        };
        assert_eq!(rw.rewrite(Some(&none), "/x"), "/v2/x");
        assert_eq!(rw.rewrite(None, "/x"), "/v2/x");
        let re = path(StringMatch::regex("/v1/.*").expect("ok"));
        assert_eq!(rw.rewrite(Some(&re), "/v1/abc"), "/v2/");
    }

    #[test]
    fn ten_thousand_routes() {
        let mut routes = Vec::new();
        for i in 0..10_000 {
            let m = match i % 4 {
                0 => exact(&format!("/svc{i}/exact")),
                1 => prefix(&format!("/svc{i}/")),
                2 => path(StringMatch::regex(&format!("/re{i}/[0-9]+")).expect("ok")),
                _ => {
                    let mut m = exact(&format!("/svc{i}/hdr"));
                    m.headers.push(HeaderMatch {
                        name: "x-id".into(),
                        value: Some(StringMatch::Exact(i.to_string())),
                        invert: false,
                    });
                    m
                }
            };
            routes.push(route(&format!("r{i}"), vec![m]));
        }
        routes.push(route("fallback", vec![]));
        let v = vh(routes);
        for i in (0..10_000).step_by(7) {
            let req = match i % 4 {
                0 => Req::get(&format!("/svc{i}/exact")),
                1 => Req::get(&format!("/svc{i}/anything/deeper")),
                2 => Req::get(&format!("/re{i}/42")),
                _ => Req::get(&format!("/svc{i}/hdr")).header("x-id", &i.to_string()),
            };
            let got = v.find_route(&req).map(|r| r.name.clone());
            assert_eq!(got, Some(format!("r{i}")), "request {req:?}");
            assert_eq!(got.as_deref(), naive(&v, &req).map(|r| r.name.as_str()));
        }
        // A header route without its header falls through to the catch-all.
        assert_eq!(
            v.find_route(&Req::get("/svc3/hdr")).map(|r| r.name.as_str()),
            Some("fallback")
        );
    }

    fn table() -> RouteTable {
        let mk = |name: &str, domains: &[&str]| {
            VirtualHost::new(
                name.into(),
                domains.iter().map(|d| d.to_string()).collect(),
                vec![route(name, vec![])],
            )
        };
        RouteTable::new(vec![
            mk("exact", &["reviews.default.svc.cluster.local", "Reviews"]),
            mk("wild", &["*.example.com"]),
            mk("wild-long", &["*.api.example.com"]),
            mk("any", &["*"]),
        ])
    }

    #[test]
    fn host_lookup() {
        let t = table();
        let name = |h: &str| t.find_host(h).map(|v| v.name.as_str());
        assert_eq!(name("reviews"), Some("exact"));
        assert_eq!(name("REVIEWS:9080"), Some("exact"));
        assert_eq!(name("reviews.default.svc.cluster.local."), Some("exact"));
        assert_eq!(name("a.example.com"), Some("wild"));
        assert_eq!(name("x.api.example.com:443"), Some("wild-long"));
        assert_eq!(name("example.com"), Some("any"));
        assert_eq!(name("[::1]:8080"), Some("any"));
        assert_eq!(name(&"a".repeat(300)), Some("any"));
        let no_catch_all = RouteTable::new(vec![VirtualHost::new("x".into(), vec!["x".into()], vec![])]);
        assert!(no_catch_all.find_host("y").is_none());
    }

    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("a"), "a");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("[::1"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port(":80"), "");
    }

    fn arb_match() -> impl Strategy<Value = RouteMatch> {
        let seg = "[ab]{0,2}";
        prop_oneof![
            seg.prop_map(|s| exact(&format!("/{s}"))),
            seg.prop_map(|s| prefix(&format!("/{s}"))),
            Just(prefix("")),
            seg.prop_map(|s| path(StringMatch::regex(&format!("/{s}.*")).expect("ok"))),
            (seg, any::<bool>()).prop_map(|(s, ci)| {
                let mut m = prefix(&format!("/{s}"));
                if let Some(p) = m.path.as_mut() {
                    p.ignore_case = ci;
                }
                m
            }),
            (seg, "[ab]").prop_map(|(s, v)| {
                let mut m = exact(&format!("/{s}"));
                m.headers.push(HeaderMatch {
                    name: "h".into(),
                    value: Some(StringMatch::Exact(v)),
                    invert: false,
                });
                m
            }),
        ]
    }

    proptest! {
        #[test]
        fn index_equals_linear_scan(
            routes in proptest::collection::vec(proptest::collection::vec(arb_match(), 0..3), 0..12),
            paths in proptest::collection::vec("/?[abAB/é]{0,4}", 1..8),
            header in proptest::option::of("[ab]"),
        ) {
            let routes: Vec<Route> = routes
                .into_iter()
                .enumerate()
                .map(|(i, ms)| route(&format!("r{i}"), ms))
                .collect();
            let v = vh(routes);
            for p in paths {
                let mut req = Req::get(&p);
                if let Some(h) = &header {
                    req = req.header("h", h);
                }
                let got = v.find_route(&req).map(|r| r.name.as_str());
                let want = naive(&v, &req).map(|r| r.name.as_str());
                prop_assert_eq!(got, want, "path {:?}", p);
            }
        }

        #[test]
        fn lookups_never_panic(host in "\\PC{0,300}", path in "\\PC{0,40}") {
            let t = table();
            let _ = t.find_host(&host);
            let v = vh(vec![
                route("p", vec![prefix("/é")]),
                route("e", vec![exact("/x")]),
                route("r", vec![path_re()]),
            ]);
            let _ = v.find_route(&Req { method: "GET".into(), path, query: None, headers: vec![] });
        }
    }

    fn path_re() -> RouteMatch {
        path(StringMatch::regex(".*x.*").expect("ok"))
    }

    #[test]
    fn weighted_clusters_pick() {
        // Cumulative weights 10, 100: 10% to cluster 1, 90% to cluster 2.
        let w = crate::snapshot::WeightedClusters {
            entries: vec![(ClusterId(1), 10), (ClusterId(2), 100)],
        };
        assert_eq!(w.pick(9), ClusterId(1));
        assert_eq!(w.pick(10), ClusterId(2));
        assert_eq!(w.pick(105), ClusterId(1));
    }
}
