//! Authorization: the `AuthorizationPolicy`s that select this proxy's workload, compiled into
//! matchers that the data plane runs on each inbound request or connection ([`Authz::evaluate`]).
//!
//! The compiler (`compile/security.rs`) picks the policies: those in the workload's namespace
//! whose selector's labels are all among the workload's (or without a selector), and those in
//! the root namespace `istio-system` (without a selector: every workload of the mesh; with one:
//! matching workloads of every namespace). Strings, CIDR blocks, ports and header names are
//! parsed there, once; [`Authz::evaluate`] only compares, and allocates nothing (no `String`
//! or `Vec` is built on its path: every comparison is on borrowed slices, which is how the
//! "no allocation" rule of the request path is kept without a counting allocator in tests).
//!
//! # Decision (Istio's order)
//!
//! `CUSTOM` is refused by the compiler. Then: any matching `DENY` policy denies; else, if any
//! `ALLOW` policy applies to the workload, a request that matches none of them is denied
//! ([`PolicyRef::ALLOW_NOMATCH`]); with no `ALLOW` policy it is allowed. `AUDIT` never changes
//! the decision; the first matching `AUDIT` policy is reported with an allowed request. A
//! policy with no rules (`spec: {}`) is an `ALLOW` policy that matches nothing: it denies every
//! request to the workloads it selects (Istio's "deny all"); `rules: [{}]` matches everything.
//!
//! # Matching (Istio's semantics)
//!
//! - A policy matches when any of its rules matches. Within a rule, `from`, `to` and `when` must
//!   all match; an absent one matches. Any entry of `from` (of `to`) may match; within one
//!   `source` (`operation`) every field that is set must match.
//! - A field's list matches when any value matches; its `not` list when no value matches.
//! - Strings: exact; `abc*` a prefix; `*abc` a suffix; `*` alone any non-empty value.
//! - `principals`, `namespaces`, `serviceAccounts` (and `source.principal`, `source.namespace`,
//!   `source.serviceAccount`) read the peer's mTLS identity. Without one (plain text) a positive
//!   list never matches and a `not` list always matches, as Envoy's RBAC does and as Istio's
//!   documented `notPrincipals: ["*"]` ("deny plain text") relies on.
//! - `requestPrincipals` and `request.auth.*` need a `RequestAuthentication` (JWT), which
//!   ringmesh does not support: every request is one without a JWT, so positive lists never
//!   match and `not` lists always match (the compiler warns). Istio's "require a JWT" policy,
//!   `DENY` with `notRequestPrincipals: ["*"]`, therefore denies every request: it fails closed.
//! - `experimental.*` conditions never match (the compiler warns).
//! - `ipBlocks` read the connection's peer address, `remoteIpBlocks` the original client
//!   (the same address: no proxy in front is trusted); IPv4 and IPv6 blocks, and an IPv4
//!   address mapped into IPv6 counts as IPv4.
//! - `hosts` compare case-insensitively with the normalized `Host`, with and without its port.
//! - `ports` compare with the destination port; `methods` exactly (case-sensitive).
//! - `paths` compare with the normalized path (no query). So that a `DENY` on `/admin` is not
//!   walked around with `/admin/` or `/admin;x`, exact and suffix matches also compare with the
//!   path with `;params` cut from every segment and one trailing `/` removed (not from `/`
//!   itself); a prefix (`/admin*`) compares with the normalized path as Istio does, and matches
//!   both of those already.
//! - TCP connections (no HTTP attributes): an `ALLOW` rule that uses an HTTP-only field
//!   (`hosts`, `methods`, `paths`, `requestPrincipals`, `request.headers`, `request.auth.*`,
//!   and their `not` forms) never matches; in a `DENY` or `AUDIT` rule those fields are ignored,
//!   so the rule matches more connections (Istio's rule: a deny only gets stricter).

use std::net::IpAddr;

use serde::Serialize;

/// The compiled policies for one workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Authz {
    pub(crate) policies: Vec<Policy>,
}

/// Which policy decided: an index into [`Authz`]'s policies, or
/// [`PolicyRef::ALLOW_NOMATCH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PolicyRef(u32);

impl PolicyRef {
    /// A denial because `ALLOW` policies apply and none matched.
    pub const ALLOW_NOMATCH: PolicyRef = PolicyRef(u32::MAX);
}

/// The outcome of [`Authz::evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// Let the request through; `audit` is the first matching `AUDIT` policy.
    Allowed {
        /// The `AUDIT` policy to report, if any matched.
        audit: Option<PolicyRef>,
    },
    /// Refuse it (HTTP 403, or close the TCP connection).
    Denied {
        /// The `DENY` policy that matched, or [`PolicyRef::ALLOW_NOMATCH`].
        policy: PolicyRef,
    },
}

impl Decision {
    /// Whether the request may go on.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// What a request or connection offers to authorization. Borrowed from the data plane's own
/// state: building one copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// From the mTLS peer certificate; `None` for plain text.
    pub peer: Option<PeerId<'a>>,
    /// The connection's peer address.
    pub source_ip: IpAddr,
    /// The original client (the same as `source_ip`: `numTrustedProxies` is 0).
    pub remote_ip: IpAddr,
    /// The address the connection was made to.
    pub destination_ip: IpAddr,
    /// The port the connection was made to.
    pub destination_port: u16,
    /// The TLS server name the client asked for.
    pub sni: Option<&'a str>,
    /// `None` for TCP connections.
    pub http: Option<HttpAttrs<'a>>,
}

/// The peer's identity from its certificate.
#[derive(Debug, Clone, Copy)]
pub struct PeerId<'a> {
    /// `cluster.local/ns/foo/sa/bar`: the SPIFFE id without `spiffe://`.
    pub principal: &'a str,
    /// `foo`.
    pub namespace: &'a str,
    /// `bar`.
    pub service_account: &'a str,
}

/// The HTTP request's attributes.
#[derive(Clone, Copy)]
pub struct HttpAttrs<'a> {
    /// Normalized host ([`crate::normalize::normalize_host`]), with its port if it had one.
    pub host: &'a str,
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Normalized path ([`crate::normalize::normalize_path`]), without the query.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a dyn HeaderLookup,
}

impl std::fmt::Debug for HttpAttrs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAttrs")
            .field("host", &self.host)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Header access for `request.headers[...]` conditions, implemented by the data plane over its
/// parsed head.
pub trait HeaderLookup {
    /// Calls `f` with each value of the header `name` (lowercase) until it returns true;
    /// returns whether it did.
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl Authz {
    /// Whether no policy selects the workload (everything is allowed, nothing audited).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// `namespace/name` of the policy, or `allow-nomatch` for [`PolicyRef::ALLOW_NOMATCH`] (and
    /// for a reference that is not from this `Authz`).
    pub fn policy_name(&self, policy: PolicyRef) -> &str {
        self.policies
            .get(policy.0 as usize)
            .map_or("allow-nomatch", |p| p.name.as_str())
    }

    /// No allocation. Istio's order: CUSTOM out of scope (a compile error); DENY first (any
    /// match → denied), then ALLOW (if any ALLOW policy applies to the workload and none
    /// matches → denied; none applies → allowed). AUDIT never changes the decision; it reports
    /// the first matching AUDIT policy.
    pub fn evaluate(&self, req: &RequestAttrs<'_>) -> Decision {
        if let Some(policy) = self.first_match(Action::Deny, req) {
            return Decision::Denied { policy };
        }
        let audit = self.first_match(Action::Audit, req);
        let any_allow = self.policies.iter().any(|p| p.action == Action::Allow);
        if any_allow && self.first_match(Action::Allow, req).is_none() {
            return Decision::Denied {
                policy: PolicyRef::ALLOW_NOMATCH,
            };
        }
        Decision::Allowed { audit }
    }

    /// The first `ALLOW` policy that matches `req`: the one that let an allowed request
    /// through, which [`Authz::evaluate`] does not need to say (the admin server's `/explain`
    /// does). `None` when no `ALLOW` policy matches, or none applies.
    pub fn allowed_by(&self, req: &RequestAttrs<'_>) -> Option<PolicyRef> {
        self.first_match(Action::Allow, req)
    }

    /// `ALLOW`, `DENY` or `AUDIT`: the action of `policy` as the resource says it;
    /// [`PolicyRef::ALLOW_NOMATCH`] is `ALLOW` (the `ALLOW` policies' default denial).
    pub fn policy_action(&self, policy: PolicyRef) -> &'static str {
        self.policies
            .get(policy.0 as usize)
            .map_or("ALLOW", |p| p.action.name())
    }

    /// Every policy in force, in order: `namespace/name` and its action.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.policies.iter().map(|p| (p.name.as_str(), p.action.name()))
    }

    /// The first policy of `action` whose rules match `req`.
    fn first_match(&self, action: Action, req: &RequestAttrs<'_>) -> Option<PolicyRef> {
        self.policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.action == action)
            .find(|(_, p)| p.matches(req))
            .map(|(i, _)| PolicyRef(i as u32))
    }
}

/// A policy's action (`CUSTOM` never compiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    /// The name the resource gives it.
    fn name(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Policy {
    /// `namespace/name`.
    pub(crate) name: String,
    pub(crate) action: Action,
    pub(crate) rules: Vec<Rule>,
}

impl Policy {
    fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req, self.action))
    }
}

/// One rule: `from`, `to` and `when` ANDed; an empty one matches.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Rule {
    pub(crate) from: Vec<SourceMatch>,
    pub(crate) to: Vec<OperationMatch>,
    pub(crate) when: Vec<ConditionMatch>,
}

impl Rule {
    fn matches(&self, req: &RequestAttrs<'_>, action: Action) -> bool {
        if req.http.is_none() && action == Action::Allow && self.uses_http() {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req))
    }

    /// Whether the rule names an attribute only HTTP requests have.
    pub(crate) fn uses_http(&self) -> bool {
        self.from.iter().any(|s| s.request_principals.is_some())
            || self
                .to
                .iter()
                .any(|o| o.hosts.is_some() || o.methods.is_some() || o.paths.is_some())
            || self.when.iter().any(ConditionMatch::is_http)
    }
}

/// A field's values and its `not` values: any of the first (when set), none of the second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Values<T> {
    pub(crate) any: Vec<T>,
    pub(crate) none: Vec<T>,
}

impl<T> Values<T> {
    /// `Some` when either list has values: an unset field is `None` and matches.
    pub(crate) fn new(any: Vec<T>, none: Vec<T>) -> Option<Self> {
        (!any.is_empty() || !none.is_empty()).then_some(Values { any, none })
    }

    fn test(&self, mut m: impl FnMut(&T) -> bool) -> bool {
        (self.any.is_empty() || self.any.iter().any(&mut m)) && !self.none.iter().any(m)
    }

    /// For an attribute the request may not have: without it, only the `not` list can hold.
    fn test_opt<V: Copy>(&self, value: Option<V>, mut m: impl FnMut(&T, V) -> bool) -> bool {
        match value {
            Some(v) => self.test(|t| m(t, v)),
            None => self.any.is_empty(),
        }
    }
}

/// `field` unset, or its values hold.
fn field<T>(f: &Option<Values<T>>, test: impl FnOnce(&Values<T>) -> bool) -> bool {
    f.as_ref().is_none_or(test)
}

/// An HTTP-only field: on TCP it is ignored (only `DENY`/`AUDIT` rules get here with one).
fn http_field<T>(
    f: &Option<Values<T>>,
    req: &RequestAttrs<'_>,
    test: impl FnOnce(&Values<T>, &HttpAttrs<'_>) -> bool,
) -> bool {
    match (f, &req.http) {
        (None, _) | (Some(_), None) => true,
        (Some(v), Some(http)) => test(v, http),
    }
}

/// `rules[].from[].source`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SourceMatch {
    pub(crate) principals: Option<Values<StrMatch>>,
    /// Always without a JWT: only the `not` list can hold.
    pub(crate) request_principals: Option<Values<StrMatch>>,
    pub(crate) namespaces: Option<Values<StrMatch>>,
    pub(crate) service_accounts: Option<Values<ServiceAccount>>,
    pub(crate) ip_blocks: Option<Values<Cidr>>,
    pub(crate) remote_ip_blocks: Option<Values<Cidr>>,
}

impl SourceMatch {
    fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        field(&self.principals, |v| v.test_opt(req.peer, |m, p| m.matches(p.principal)))
            && field(&self.namespaces, |v| v.test_opt(req.peer, |m, p| m.matches(p.namespace)))
            && field(&self.service_accounts, |v| v.test_opt(req.peer, |m, p| m.matches(&p)))
            && field(&self.ip_blocks, |v| v.test(|c| c.contains(req.source_ip)))
            && field(&self.remote_ip_blocks, |v| v.test(|c| c.contains(req.remote_ip)))
            // No request carries a verified JWT: only a `not` list can hold.
            && http_field(&self.request_principals, req, |v, _| v.any.is_empty())
    }
}

/// `rules[].to[].operation`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct OperationMatch {
    /// Lower-case patterns.
    pub(crate) hosts: Option<Values<StrMatch>>,
    pub(crate) ports: Option<Values<u16>>,
    pub(crate) methods: Option<Values<StrMatch>>,
    pub(crate) paths: Option<Values<StrMatch>>,
}

impl OperationMatch {
    fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        field(&self.ports, |v| v.test(|p| *p == req.destination_port))
            && http_field(&self.hosts, req, |v, h| v.test(|m| host_matches(m, h.host)))
            && http_field(&self.methods, req, |v, h| v.test(|m| m.matches(h.method)))
            && http_field(&self.paths, req, |v, h| v.test(|m| path_matches(m, h.path)))
    }
}

/// `rules[].when[]`, by attribute.
#[derive(Debug, Clone, Serialize)]
pub(crate) enum ConditionMatch {
    /// `request.headers[name]`, name lower case.
    Header {
        name: String,
        values: Values<StrMatch>,
    },
    SourceIp(Values<Cidr>),
    RemoteIp(Values<Cidr>),
    DestinationIp(Values<Cidr>),
    DestinationPort(Values<u16>),
    SourceNamespace(Values<StrMatch>),
    SourcePrincipal(Values<StrMatch>),
    SourceServiceAccount(Values<ServiceAccount>),
    Sni(Values<StrMatch>),
    /// `request.auth.*`: no request carries a verified JWT, so only `notValues` can hold.
    RequestAuth(Values<StrMatch>),
    /// `experimental.*`: never matches.
    Never,
}

impl ConditionMatch {
    fn is_http(&self) -> bool {
        matches!(self, ConditionMatch::Header { .. } | ConditionMatch::RequestAuth(_))
    }

    fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        match self {
            ConditionMatch::Header { name, values } => match &req.http {
                // On TCP only DENY/AUDIT rules get here: the condition is ignored.
                None => true,
                Some(h) => {
                    let mut hit = |m: &StrMatch| {
                        h.headers
                            .any_value(name, &mut |v| std::str::from_utf8(v).is_ok_and(|v| m.matches(v)))
                    };
                    (values.any.is_empty() || values.any.iter().any(&mut hit)) && !values.none.iter().any(hit)
                }
            },
            ConditionMatch::SourceIp(v) => v.test(|c| c.contains(req.source_ip)),
            ConditionMatch::RemoteIp(v) => v.test(|c| c.contains(req.remote_ip)),
            ConditionMatch::DestinationIp(v) => v.test(|c| c.contains(req.destination_ip)),
            ConditionMatch::DestinationPort(v) => v.test(|p| *p == req.destination_port),
            ConditionMatch::SourceNamespace(v) => v.test_opt(req.peer, |m, p| m.matches(p.namespace)),
            ConditionMatch::SourcePrincipal(v) => v.test_opt(req.peer, |m, p| m.matches(p.principal)),
            ConditionMatch::SourceServiceAccount(v) => v.test_opt(req.peer, |m, p| m.matches(&p)),
            ConditionMatch::Sni(v) => v.test_opt(req.sni, |m, s| m.matches(s)),
            ConditionMatch::RequestAuth(v) => req.http.is_none() || v.any.is_empty(),
            ConditionMatch::Never => false,
        }
    }
}

/// Istio's string match: `abc`, `abc*`, `*abc`, or `*` (any non-empty value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StrMatch {
    pub(crate) fn parse(pattern: &str) -> Self {
        if pattern == "*" {
            StrMatch::Present
        } else if let Some(p) = pattern.strip_suffix('*') {
            StrMatch::Prefix(p.to_owned())
        } else if let Some(s) = pattern.strip_prefix('*') {
            StrMatch::Suffix(s.to_owned())
        } else {
            StrMatch::Exact(pattern.to_owned())
        }
    }

    pub(crate) fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => v == e,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
            StrMatch::Present => !v.is_empty(),
        }
    }

    fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.as_bytes();
        match self {
            StrMatch::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
            StrMatch::Prefix(p) => v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes()),
            StrMatch::Suffix(s) => v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes()),
            StrMatch::Present => !v.is_empty(),
        }
    }
}

/// The host with its port, and without it.
fn host_matches(m: &StrMatch, host: &str) -> bool {
    let (name, port) = crate::normalize::split_port(host);
    m.matches_ignore_case(host) || (!port.is_empty() && m.matches_ignore_case(name))
}

/// Exact and suffix matches also see the path without `;params` and one trailing `/`.
fn path_matches(m: &StrMatch, path: &str) -> bool {
    if m.matches(path) {
        return true;
    }
    match m {
        StrMatch::Exact(e) => stripped_pieces(path).is_some_and(|pieces| pieces_eq(pieces, e)),
        StrMatch::Suffix(s) => stripped_pieces(path).is_some_and(|pieces| pieces_end_with(pieces, s)),
        StrMatch::Prefix(_) | StrMatch::Present => false,
    }
}

/// The path without `;params` in any segment and without one trailing `/`, as borrowed pieces
/// (`/`, segment, `/`, segment, ...) so that nothing is allocated. `None` for a path that does
/// not start with `/` (`*`), which has no segments to strip.
fn stripped_pieces(path: &str) -> Option<impl DoubleEndedIterator<Item = &str>> {
    fn strip(seg: &str) -> &str {
        seg.split(';').next().unwrap_or("")
    }
    let body = path.strip_prefix('/')?;
    // One trailing `/` (once parameters are gone) goes, except from `/` itself.
    let body = match body.rsplit_once('/') {
        Some((head, last)) if strip(last).is_empty() => head,
        _ => body,
    };
    Some(body.split('/').flat_map(|seg| ["/", strip(seg)]))
}

fn pieces_eq<'a>(pieces: impl Iterator<Item = &'a str>, want: &str) -> bool {
    let mut rest = want;
    for p in pieces {
        match rest.strip_prefix(p) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

fn pieces_end_with<'a>(pieces: impl DoubleEndedIterator<Item = &'a str>, suffix: &str) -> bool {
    let mut rest = suffix;
    for p in pieces.rev() {
        if rest.len() <= p.len() {
            return p.ends_with(rest);
        }
        match rest.strip_suffix(p) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// A CIDR block: the address with its host bits cleared, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub(crate) fn parse(block: &str) -> Option<Self> {
        let (addr, len) = match block.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (block, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            Some(l) => l.parse::<u8>().ok().filter(|n| *n <= max)?,
            None => max,
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::from((u32::from(a) & mask32(prefix)).to_be_bytes()),
            IpAddr::V6(a) => IpAddr::from((u128::from(a) & mask128(prefix)).to_be_bytes()),
        };
        Some(Cidr { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask128(self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// `namespace/name` of a service account, exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ServiceAccount {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl ServiceAccount {
    fn matches(&self, p: &PeerId<'_>) -> bool {
        p.namespace == self.namespace && p.service_account == self.name
    }
}

#[cfg(test)]
mod tests;
