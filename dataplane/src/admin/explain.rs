//! `GET /explain` on the admin port: what this proxy would do with one request, and why.
//!
//! Given a method, host, path, headers, the client's identity and address, and the listener it
//! arrives on, the answer names the listener, the mTLS mode and the authorization decision (on
//! an inbound listener, with the policy that decided), the virtual host and the route that
//! match, the route's action, each cluster it may pick with its endpoints and the upstream TLS
//! decision for each, this proxy's certificate, and the verdict: the local answer the client
//! would get, or where the request goes.
//!
//! It runs on the control thread against the running snapshot (`AdminState::source`) and asks
//! the same functions the request path asks, in the order `http/proxy.rs::handle` asks them:
//! path normalization (`ringmesh_api::normalize`), authorization (`crate::authz::attrs`, then
//! `Authz::evaluate`), the listener's virtual-host lookup (`capture::RouteBy`), the route
//! index (`VirtualHost::find_route_match`), the redirect's `Location`
//! (`http::proxy::redirect_location`), the cluster's TLS and protocol (`Cluster::mtls_to`,
//! `Cluster::h2_to`) and a consistent-hash key's endpoint (`http::forward::hash_key`,
//! `lb::consistent_pick`). So the answer cannot drift from what a request meets.
//!
//! Endpoint health: read from the health tables every core shares (`lb::health`): an endpoint
//! ejected by outlier detection or failing its active health check is `UNHEALTHY` with its
//! flags, and not eligible unless the cluster is in panic mode (`minHealthPercent`). Other
//! per-worker state is only balancing state (cursors, in-flight counts), summed from the
//! workers' statistics into `rq_active` for each endpoint. A retry skips the endpoints its
//! request already tried.
//!
//! Query parameters (all optional; unknown ones are refused):
//!
//! | parameter     | meaning | default |
//! |---------------|---------|---------|
//! | `method`      | request method | `GET` |
//! | `host`        | `Host` / `:authority` | the `host` header, else empty |
//! | `path`        | request target, with its `?query` | `/` |
//! | `header`      | `name:value`, repeatable | none |
//! | `source`      | the client's SPIFFE id (`spiffe://<td>/ns/<ns>/sa/<sa>`): it connects over mutual TLS | plaintext |
//! | `source_ip`   | the client's address | `127.0.0.1` |
//! | `listener`    | a listener's name | the first outbound HTTP listener |
//! | `destination` | `IP:PORT` the client dialled (a capture listener's original destination) | the listener's address |

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use ringmesh_api::authz::{Decision, HeaderLookup};
use ringmesh_api::normalize::{normalize_host, normalize_path, PathRejection};
use ringmesh_api::snapshot::{
    CapturedProtocol, Cluster, ClusterId, HashOn, LbPolicy, Listener, ListenerKind, MtlsMode, RequestHead, RouteAction,
    RouteMatch, Snapshot, UpstreamProtocol, UpstreamTls, WeightedClusters,
};
use serde::Serialize;

use crate::capture::RouteBy;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::telemetry::stats::StatsTotals;
use crate::tls::{InboundConn, PeerIdentity};

/// Why `/explain` cannot answer: a bad question (400), said in the JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExplainError {
    /// A parameter is unknown, repeated, or its value malformed.
    #[error("{name}: {reason}")]
    BadParameter {
        /// The parameter.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No listener has this name.
    #[error("no listener named {name:?} (listeners: {known})")]
    UnknownListener {
        /// As asked.
        name: String,
        /// The listeners there are, comma-separated.
        known: String,
    },
    /// The proxy has no listener at all.
    #[error("this proxy has no listeners")]
    NoListener,
    /// Normalization refuses the path: the request itself would get a 400.
    #[error("the request would be answered 400 (bad request): request path refused: {0}")]
    PathRefused(PathRejection),
}

impl ExplainError {
    /// The status the request itself would get, when the error is about the request rather
    /// than the question.
    fn request_status(&self) -> Option<u16> {
        match self {
            ExplainError::PathRefused(_) => Some(400),
            _ => None,
        }
    }

    /// The JSON body of the 400.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.to_string(),
            "request_status": self.request_status(),
        })
    }
}

/// The question, parsed from the query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) method: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) path: Option<String>,
    /// `(lower-case name, value)` in order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) source: Option<String>,
    pub(crate) source_ip: Option<IpAddr>,
    pub(crate) listener: Option<String>,
    pub(crate) destination: Option<SocketAddr>,
}

fn bad(name: &str, reason: impl Into<String>) -> ExplainError {
    ExplainError::BadParameter {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// RFC 9110 `tchar`: what a method and a field name are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A field value a request could carry: visible ASCII or obs-text, spaces and tabs.
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

impl Query {
    /// Parses `a=b&c=d` (percent-encoded, `+` as space). Every parameter but `header` may be
    /// given once.
    pub(crate) fn parse(raw: &str) -> Result<Query, ExplainError> {
        let mut q = Query::default();
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            let once = |given: bool| {
                if given {
                    Err(bad(&name, "given more than once"))
                } else {
                    Ok(())
                }
            };
            match name.as_ref() {
                "method" => {
                    once(q.method.is_some())?;
                    if !is_token(&value) {
                        return Err(bad(&name, format!("{value:?} is not a method")));
                    }
                    q.method = Some(value.into_owned());
                }
                "host" => {
                    once(q.host.is_some())?;
                    if !is_field_value(&value) {
                        return Err(bad(&name, "holds a control character"));
                    }
                    q.host = Some(value.into_owned());
                }
                "path" => {
                    once(q.path.is_some())?;
                    if !value.starts_with('/') {
                        return Err(bad(&name, format!("{value:?} does not start with /")));
                    }
                    q.path = Some(value.into_owned());
                }
                "header" => {
                    let Some((n, v)) = value.split_once(':') else {
                        return Err(bad(&name, format!("{value:?} is not name:value")));
                    };
                    if !is_token(n) {
                        return Err(bad(&name, format!("{n:?} is not a field name")));
                    }
                    let v = v.trim_matches([' ', '\t']);
                    if !is_field_value(v) {
                        return Err(bad(&name, format!("the value of {n} holds a control character")));
                    }
                    q.headers.push((n.to_ascii_lowercase(), v.to_owned()));
                }
                "source" => {
                    once(q.source.is_some())?;
                    if PeerIdentity::parse(&value).is_none() {
                        return Err(bad(
                            &name,
                            format!("{value:?} is not a workload's SPIFFE id (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"),
                        ));
                    }
                    q.source = Some(value.into_owned());
                }
                "source_ip" => {
                    once(q.source_ip.is_some())?;
                    q.source_ip = Some(
                        value
                            .parse()
                            .map_err(|_| bad(&name, format!("{value:?} is not an IP address")))?,
                    );
                }
                "listener" => {
                    once(q.listener.is_some())?;
                    q.listener = Some(value.into_owned());
                }
                "destination" => {
                    once(q.destination.is_some())?;
                    q.destination = Some(
                        value
                            .parse()
                            .map_err(|_| bad(&name, format!("{value:?} is not IP:PORT")))?,
                    );
                }
                _ => {
                    return Err(bad(
                        &name,
                        "unknown parameter (method, host, path, header, source, source_ip, listener, destination)",
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// The request as routing reads it: the normalized path, the query, the headers given.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a [(String, String)],
}

impl RequestHead for Request<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// The headers for `when: request.headers[...]` conditions.
struct Headers<'a>(&'a [(String, String)]);

impl HeaderLookup for Headers<'_> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| f(v.as_bytes()))
    }
}

/// This proxy's workload certificate, as `/certs` reads it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct CertView {
    /// `spiffe://…`; `None`: no certificate.
    pub(crate) identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seconds_left: Option<u64>,
    /// `control plane`, `files` or `none`.
    pub(crate) source: &'static str,
    /// Why there is none, or why the last renewal failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

impl CertView {
    /// The certificate in `cell` and how its renewal goes.
    pub(crate) fn of(cell: &crate::identity::IdentityCell, status: &crate::identity::CertStatus) -> CertView {
        let reason = status.last_error.clone().or_else(|| status.reason.clone());
        match cell.load() {
            Some(id) => CertView {
                identity: Some(id.spiffe_id.clone()),
                serial: Some(id.serial.clone()),
                not_after: Some(crate::identity::rfc3339(id.not_after)),
                seconds_left: Some(id.left(SystemTime::now()).as_secs()),
                source: status.source,
                reason,
            },
            None => CertView {
                source: status.source,
                reason: Some(reason.unwrap_or_else(|| "no certificate yet: waiting for the control plane".into())),
                ..CertView::default()
            },
        }
    }
}

/// The answer.
#[derive(Debug, Serialize)]
pub(crate) struct Explanation {
    /// The snapshot asked.
    pub(crate) snapshot_version: u64,
    pub(crate) listener: ListenerView,
    pub(crate) request: RequestView,
    /// Inbound listeners: how the connection is accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mtls: Option<MtlsView>,
    /// Inbound listeners: the workload's policies' decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) authorization: Option<AuthzView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) virtual_host: Option<VirtualHostView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) route: Option<RouteView>,
    pub(crate) action: ActionView,
    /// The clusters the action may pick, in its order.
    pub(crate) clusters: Vec<ClusterView>,
    /// This proxy's own certificate (what it proves to peers).
    pub(crate) certificate: CertView,
    /// What the client gets.
    pub(crate) verdict: Verdict,
    /// Things worth knowing about this answer.
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ListenerView {
    pub(crate) name: String,
    pub(crate) address: SocketAddr,
    /// `HTTP`, `TCP`, `AUTO` or `CAPTURE`.
    pub(crate) protocol: &'static str,
    /// `OUTBOUND` or `INBOUND`.
    pub(crate) direction: &'static str,
    /// Why this one: `asked`, or the default's rule.
    pub(crate) chosen: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct RequestView {
    pub(crate) method: String,
    pub(crate) host: String,
    /// As given, without the query.
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    /// What routing, authorization and the upstream see.
    pub(crate) normalized_path: String,
    pub(crate) path_changed: bool,
    /// The mode (`spec.pathNormalization`).
    pub(crate) normalization: ringmesh_api::normalize::PathNormalization,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) source: Option<String>,
    pub(crate) source_ip: IpAddr,
    /// The address the client dialled (inbound: the workload's port).
    pub(crate) destination: Option<SocketAddr>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MtlsView {
    pub(crate) port: u16,
    /// `STRICT`, `PERMISSIVE` or `DISABLE` (`PeerAuthentication`).
    pub(crate) mode: &'static str,
    /// `mutual TLS`, `plaintext` or `refused`.
    pub(crate) connection: &'static str,
    /// The identity authorization sees.
    pub(crate) peer: Option<String>,
    pub(crate) reason: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuthzView {
    /// `ALLOW` or `DENY`.
    pub(crate) decision: &'static str,
    /// The policy that decided (`namespace/name`; `allow-nomatch` when `ALLOW` policies apply
    /// and none matched); `None` when no policy applies.
    pub(crate) policy: Option<String>,
    /// That policy's action.
    pub(crate) action: Option<&'static str>,
    pub(crate) reason: String,
    /// The first matching `AUDIT` policy (logged, changes nothing).
    pub(crate) audit: Option<String>,
    /// Every policy in force for the workload: name and action.
    pub(crate) policies: Vec<(String, &'static str)>,
}

#[derive(Debug, Serialize)]
pub(crate) struct VirtualHostView {
    pub(crate) name: String,
    pub(crate) domains: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RouteView {
    pub(crate) name: String,
    /// Its position in the virtual host (first match wins).
    pub(crate) index: usize,
    /// Which of its `match` entries held; `None`: the route has no conditions.
    pub(crate) match_index: Option<usize>,
    #[serde(rename = "match")]
    pub(crate) matched: Option<RouteMatch>,
    /// The route's fault injection (VirtualService `fault`), applied before its action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fault: Option<FaultView>,
}

/// A route's faults as the request path applies them (`http/fault.rs`): the delay is drawn
/// first, then the abort, each for its own share of requests.
#[derive(Debug, Serialize)]
pub(crate) struct FaultView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delay_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delay_percent: Option<f64>,
    /// The HTTP status an abort answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) abort_http_status: Option<u16>,
    /// The gRPC status an abort answers (HTTP 200, trailers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) abort_grpc_status: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) abort_percent: Option<f64>,
}

impl FaultView {
    fn of(fault: &ringmesh_api::snapshot::Fault) -> FaultView {
        use ringmesh_api::snapshot::FaultStatus;
        let percent = |share: ringmesh_api::snapshot::FaultShare| f64::from(share.0) / 10_000.0;
        FaultView {
            delay_ms: fault.delay.map(|(d, _)| d.as_millis()),
            delay_percent: fault.delay.map(|(_, s)| percent(s)),
            abort_http_status: fault.abort.and_then(|(st, _)| match st {
                FaultStatus::Http(code) => Some(code),
                FaultStatus::Grpc(_) => None,
            }),
            abort_grpc_status: fault.abort.and_then(|(st, _)| match st {
                FaultStatus::Grpc(code) => Some(code),
                FaultStatus::Http(_) => None,
            }),
            abort_percent: fault.abort.map(|(_, s)| percent(s)),
        }
    }

    /// One line for the notes: what share of requests the fault delays or answers.
    fn note(&self) -> String {
        let mut parts = Vec::new();
        if let (Some(ms), Some(p)) = (self.delay_ms, self.delay_percent) {
            parts.push(format!("delays {p}% of requests by {ms} ms"));
        }
        if let Some(p) = self.abort_percent {
            let what = match (self.abort_http_status, self.abort_grpc_status) {
                (_, Some(g)) => format!("gRPC status {g}"),
                (Some(h), _) => format!("{h}"),
                (None, None) => "an error".to_owned(),
            };
            parts.push(format!("answers {p}% with {what} (flag FI) without going upstream"));
        }
        format!(
            "the route injects faults (VirtualService fault): it {}; this answer describes a request the fault spares",
            parts.join(", then ")
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ActionView {
    /// To one of `clusters`, by weight.
    Forward {
        clusters: Vec<WeightedView>,
        /// The path the upstream receives, when it differs from the one sent.
        upstream_path: Option<String>,
        host_rewrite: Option<String>,
        timeout_ms: Option<u128>,
        retries: u32,
        /// Clusters that get a copy (VirtualService `mirror`), with the share copied.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        mirrors: Vec<MirrorView>,
    },
    Redirect {
        status: u16,
        location: String,
    },
    DirectResponse {
        status: u16,
        body: String,
    },
    /// Opaque TCP to one of `clusters`.
    Tcp {
        clusters: Vec<WeightedView>,
    },
    /// A captured connection to one endpoint's own address.
    Endpoint {
        cluster: String,
        address: SocketAddr,
    },
    /// Passed as TCP to this address, without a cluster.
    Passthrough {
        address: SocketAddr,
    },
    /// No route matched, or the connection is refused: see the verdict.
    None,
}

#[derive(Debug, Serialize)]
pub(crate) struct MirrorView {
    pub(crate) cluster: String,
    pub(crate) percent: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct WeightedView {
    pub(crate) cluster: String,
    pub(crate) weight: u32,
    pub(crate) percent: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ClusterView {
    pub(crate) name: String,
    pub(crate) service: String,
    pub(crate) port: u16,
    pub(crate) subset: Option<String>,
    pub(crate) lb: &'static str,
    /// What a consistent hash is computed over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hash_on: Option<String>,
    /// The endpoint this request's hash key picks; `None` under a hashing policy means the
    /// request carries no key, and the pick is random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hash_pick: Option<Option<SocketAddr>>,
    /// `HTTP/1.1`, `HTTP/2` or `client's`.
    pub(crate) protocol: &'static str,
    /// DestinationRule `tls`: `AUTO` (mutual TLS to meshed endpoints), `DISABLE`,
    /// `ISTIO_MUTUAL`.
    pub(crate) upstream_tls: &'static str,
    /// Identities an mTLS endpoint must prove (`subjectAltNames`); empty: any workload of the
    /// trust domain.
    pub(crate) expected_peers: Vec<String>,
    /// The host no ServiceEntry defines: requests get 503 `NC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) host_not_found: Option<String>,
    pub(crate) endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct EndpointView {
    pub(crate) address: SocketAddr,
    pub(crate) weight: u32,
    pub(crate) labels: BTreeMap<String, String>,
    /// A proxy serves it (`security.istio.io/tlsMode: istio`).
    pub(crate) meshed: bool,
    /// The hop is mutual TLS (`Cluster::mtls_to`).
    pub(crate) mtls: bool,
    /// The hop is HTTP/2, for an HTTP/1.1 client (`Cluster::h2_to`).
    pub(crate) http2: bool,
    /// `HEALTHY`, or `UNHEALTHY` when ejected or failing its health check.
    pub(crate) health: &'static str,
    /// Envoy's `health_flags` (`/failed_outlier_check`, `/failed_active_hc`), empty if none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) health_flags: String,
    /// Whether the balancer may pick it now.
    pub(crate) eligible: bool,
    /// Requests in flight to it, summed over the workers.
    pub(crate) rq_active: u64,
    /// Connect failures since start, summed over the workers.
    pub(crate) cx_connect_fail: u64,
}

/// What happens to the request.
#[derive(Debug, Serialize)]
pub(crate) struct Verdict {
    /// The local answer's status; `None` when the request is forwarded or the connection is
    /// closed without an answer.
    pub(crate) status: Option<u16>,
    /// Envoy's response flag of a local answer.
    pub(crate) flag: Option<&'static str>,
    pub(crate) body: Option<String>,
    /// One line.
    pub(crate) summary: String,
}

impl Verdict {
    fn error(kind: ErrorKind, summary: String) -> Verdict {
        let e = ProxyError::new(kind, Side::Internal, "explain");
        Verdict {
            status: Some(e.status()),
            flag: Some(e.flag()),
            body: Some(e.body().to_owned()),
            summary,
        }
    }
}

/// The listener a request arrives on when none is named: the first outbound HTTP listener,
/// else the first outbound one that detects the protocol, else the outbound capture listener,
/// else the first.
fn default_listener(listeners: &[Listener]) -> Option<(&Listener, &'static str)> {
    let outbound = |kind: fn(&ListenerKind) -> bool| listeners.iter().find(|l| !l.inbound && kind(&l.kind));
    outbound(|k| matches!(k, ListenerKind::Http))
        .map(|l| (l, "default: the first outbound HTTP listener"))
        .or_else(|| {
            outbound(|k| matches!(k, ListenerKind::Detect { .. }))
                .map(|l| (l, "default: the first outbound listener detecting HTTP"))
        })
        .or_else(|| {
            outbound(|k| matches!(k, ListenerKind::Captured)).map(|l| (l, "default: the outbound capture listener"))
        })
        .or_else(|| {
            listeners
                .first()
                .map(|l| (l, "default: the only kind of listener there is"))
        })
}

/// How the connection is served once the listener (and a captured connection's original
/// destination) is known: as `listener.rs`, `capture.rs` and `tls/inbound.rs` decide.
enum Serve<'s> {
    Http(RouteBy),
    Tcp(&'s WeightedClusters),
    Endpoint(ClusterId, usize),
    Passthrough(SocketAddr),
    Closed(String),
}

fn protocol_name(kind: &ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Http => "HTTP",
        ListenerKind::Tcp { .. } => "TCP",
        ListenerKind::Detect { .. } => "AUTO",
        ListenerKind::Captured => "CAPTURE",
    }
}

fn mode_name(mode: MtlsMode) -> &'static str {
    match mode {
        MtlsMode::Strict => "STRICT",
        MtlsMode::Permissive => "PERMISSIVE",
        MtlsMode::Disable => "DISABLE",
    }
}

/// Answers `q` from `snapshot`. `bound` holds the listeners' bound addresses (a listener on
/// port 0 has its real port there), `cert` this proxy's certificate, `load` the workers'
/// statistics (for endpoints' in-flight counts), if gathered.
pub(crate) fn explain(
    snapshot: &Snapshot,
    bound: &[(String, SocketAddr)],
    q: &Query,
    cert: CertView,
    load: Option<&StatsTotals>,
) -> Result<Explanation, ExplainError> {
    let mut notes = Vec::new();
    let (listener, chosen) = match &q.listener {
        Some(name) => match snapshot.listeners.iter().find(|l| &l.name == name) {
            Some(l) => (l, "asked"),
            None => {
                let known: Vec<&str> = snapshot.listeners.iter().map(|l| l.name.as_str()).collect();
                return Err(ExplainError::UnknownListener {
                    name: name.clone(),
                    known: known.join(", "),
                });
            }
        },
        None => default_listener(&snapshot.listeners).ok_or(ExplainError::NoListener)?,
    };
    let address = bound
        .iter()
        .find(|(n, _)| *n == listener.name)
        .map_or(listener.address, |(_, a)| *a);
    let source_ip = q.source_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let peer = SocketAddr::new(source_ip, 0);
    let capture = &snapshot.capture;

    // Which serving path the connection takes.
    let serve = match (&listener.kind, listener.inbound, q.destination) {
        (ListenerKind::Captured, false, Some(dest)) => match capture.services.get(&dest) {
            Some(svc) if svc.protocol == CapturedProtocol::Tcp => Serve::Tcp(&svc.clusters),
            Some(_) => Serve::Http(RouteBy::Service(dest)),
            None => match capture.endpoints.get(&dest) {
                Some(ep) => Serve::Endpoint(ep.cluster, ep.endpoint),
                None => match capture.unknown {
                    ringmesh_api::resources::OutboundTrafficMode::AllowAny => Serve::Passthrough(dest),
                    ringmesh_api::resources::OutboundTrafficMode::RegistryOnly => Serve::Closed(format!(
                        "no service has the address {dest} (outboundTrafficPolicy REGISTRY_ONLY)"
                    )),
                },
            },
        },
        (ListenerKind::Captured, false, None) => {
            notes.push(
                "a capture listener serves a connection by its original destination: without destination=IP:PORT \
                 the request is routed by its Host, as on an HTTP listener"
                    .into(),
            );
            Serve::Http(RouteBy::Host)
        }
        (ListenerKind::Captured, true, None) => {
            return Err(bad(
                "destination",
                format!(
                    "listener {} takes redirected connections: give the address the client dialled (IP:PORT, the app's port)",
                    listener.name
                ),
            ))
        }
        (ListenerKind::Captured, true, Some(dest)) => {
            let app = SocketAddr::from(([127, 0, 0, 1], dest.port()));
            match capture.app_ports.get(&dest.port()) {
                Some(port) if port.protocol != CapturedProtocol::Tcp => Serve::Http(RouteBy::App(dest.port())),
                Some(_) => Serve::Passthrough(app),
                None => {
                    notes.push(format!(
                        "port {} is not one of the app's ports: its bytes pass to the app as TCP",
                        dest.port()
                    ));
                    Serve::Passthrough(app)
                }
            }
        }
        (ListenerKind::Tcp { clusters, .. }, _, _) => Serve::Tcp(clusters),
        (ListenerKind::Detect { .. }, _, _) => {
            notes.push(format!(
                "listener {} detects the protocol: an HTTP request is served as on an HTTP listener",
                listener.name
            ));
            Serve::Http(RouteBy::Host)
        }
        (ListenerKind::Http, _, _) => Serve::Http(RouteBy::Host),
    };
    if !matches!(serve, Serve::Http(_)) {
        notes.push("the connection is not served as HTTP: method, host, path and headers play no part".into());
    }

    // The request as `http/proxy.rs::handle` reads it.
    let method = q.method.as_deref().unwrap_or("GET");
    let host = q
        .host
        .as_deref()
        .or_else(|| q.headers.iter().find(|(n, _)| n == "host").map(|(_, v)| v.as_str()))
        .unwrap_or("");
    let target = q.path.as_deref().unwrap_or("/");
    let (sent_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mode = snapshot.security.path_normalization;
    let path: Cow<'_, str> = if matches!(serve, Serve::Http(_)) {
        normalize_path(sent_path, mode).map_err(ExplainError::PathRefused)?
    } else {
        Cow::Borrowed(sent_path)
    };
    let req = Request {
        method,
        path: &path,
        query,
        headers: &q.headers,
    };
    let destination = listener.inbound.then(|| q.destination.unwrap_or(address));
    let request = RequestView {
        method: method.to_owned(),
        host: host.to_owned(),
        path: sent_path.to_owned(),
        query: query.map(str::to_owned),
        normalized_path: path.to_string(),
        path_changed: matches!(path, Cow::Owned(_)),
        normalization: mode,
        headers: q.headers.clone(),
        source: q.source.clone(),
        source_ip,
        destination: destination.or(q.destination),
    };

    // Inbound: mTLS, then the workload's policies (`tls/inbound.rs`, `authz.rs`).
    let mut refused: Option<String> = match &serve {
        Serve::Closed(why) => Some(why.clone()),
        _ => None,
    };
    let (mut mtls, mut authorization) = (None, None);
    if let Some(local) = destination {
        let identity = q.source.as_deref().and_then(PeerIdentity::parse);
        let mode = snapshot.security.peer_authn.mode_for(local.port());
        let (connection, peer_id, reason) = if snapshot.security.awaiting_control_plane {
            let why = "the workload's policies have not arrived from the control plane yet: inbound connections \
                       are refused";
            ("refused", None, why.to_string())
        } else {
            match (mode, identity) {
                (MtlsMode::Strict, None) => (
                    "refused",
                    None,
                    "STRICT: a plaintext connection is closed (a client with a mesh certificate: source=)".to_string(),
                ),
                (MtlsMode::Disable, Some(_)) => (
                    "plaintext",
                    None,
                    "DISABLE: TLS is not answered, so no identity is proved".to_string(),
                ),
                (_, Some(id)) if cert.identity.is_none() => (
                    "refused",
                    Some(id),
                    "this proxy has no workload certificate to answer TLS with".to_string(),
                ),
                (_, Some(id)) => (
                    "mutual TLS",
                    Some(id),
                    format!("{}: the client's certificate is checked", mode_name(mode)),
                ),
                (_, None) => (
                    "plaintext",
                    None,
                    format!("{}: plaintext is accepted, with no identity", mode_name(mode)),
                ),
            }
        };
        if connection == "refused" {
            refused.get_or_insert_with(|| reason.clone());
        }
        mtls = Some(MtlsView {
            port: local.port(),
            mode: mode_name(mode),
            connection,
            peer: peer_id.as_ref().map(|p| p.spiffe().to_owned()),
            reason,
        });
        if refused.is_none() {
            let conn = InboundConn {
                local,
                identity: peer_id,
                sni: None,
                xfcc: None,
            };
            let host = normalize_host(host);
            let headers = Headers(&q.headers);
            let http = matches!(serve, Serve::Http(_)).then_some(crate::authz::HttpRequest {
                host: &host,
                method,
                path: &path,
                headers: &headers,
            });
            authorization = Some(authorize(
                &snapshot.security.authz,
                &crate::authz::attrs(&conn, peer, http),
            ));
        }
    }
    if destination.is_none() && q.source.is_some() {
        notes.push(
            "source plays no part on an outbound listener: identities are proved and authorized on the inbound side"
                .into(),
        );
    }
    let denied = authorization.as_ref().is_some_and(|a| a.decision == "DENY");

    // Routing (HTTP), or the TCP destination.
    let (mut virtual_host, mut route) = (None, None);
    let mut action = ActionView::None;
    let mut picks: Vec<ClusterId> = Vec::new();
    let mut verdict = None;
    match &serve {
        Serve::Http(route_by) => {
            let vh = route_by.virtual_host(snapshot, host);
            let hit = vh.and_then(|vh| vh.find_route_match(&req));
            if let Some(vh) = vh {
                virtual_host = Some(VirtualHostView {
                    name: vh.name.clone(),
                    domains: vh.domains.clone(),
                });
            }
            match (vh, hit) {
                (Some(vh), Some(hit)) => {
                    let index = vh.routes.iter().position(|r| std::ptr::eq(r, hit.route)).unwrap_or(0);
                    let match_index = hit
                        .matched
                        .and_then(|m| hit.route.matches.iter().position(|x| std::ptr::eq(x, m)));
                    let fault = hit.route.fault.as_deref().map(FaultView::of);
                    if let Some(f) = &fault {
                        notes.push(f.note());
                    }
                    route = Some(RouteView {
                        name: hit.route.name.clone(),
                        index,
                        match_index,
                        matched: hit.matched.cloned(),
                        fault,
                    });
                    match &hit.route.action {
                        RouteAction::Forward(f) => {
                            picks = f.clusters.entries.iter().map(|e| e.0).collect();
                            let upstream_path = match &f.path_rewrite {
                                Some(rw) => Some(rw.rewrite(hit.matched, &path)),
                                None => matches!(path, Cow::Owned(_)).then(|| path.to_string()),
                            };
                            action = ActionView::Forward {
                                clusters: weighted(snapshot, &f.clusters),
                                upstream_path,
                                host_rewrite: f.host_rewrite.clone(),
                                timeout_ms: f.timeout.map(|t| t.as_millis()),
                                retries: f.retry.attempts,
                                mirrors: f
                                    .mirrors
                                    .iter()
                                    .map(|m| MirrorView {
                                        cluster: snapshot.cluster(m.cluster).name.clone(),
                                        percent: f64::from(m.share.0) / 10_000.0,
                                    })
                                    .collect(),
                            };
                        }
                        RouteAction::Redirect(r) => {
                            let location = crate::http::proxy::redirect_location(r, host, &path, query);
                            verdict = Some(Verdict {
                                status: Some(r.status),
                                flag: None,
                                body: None,
                                summary: format!("redirected to {location}"),
                            });
                            action = ActionView::Redirect {
                                status: r.status,
                                location,
                            };
                        }
                        RouteAction::Direct(d) => {
                            verdict = Some(Verdict {
                                status: Some(d.status),
                                flag: None,
                                body: Some(d.body.clone()),
                                summary: format!("answered by the proxy: {} (direct response)", d.status),
                            });
                            action = ActionView::DirectResponse {
                                status: d.status,
                                body: d.body.clone(),
                            };
                        }
                    }
                }
                (Some(vh), None) => {
                    verdict = Some(Verdict::error(
                        ErrorKind::NoRoute,
                        format!("no route of virtual host {} matches", vh.name),
                    ));
                }
                (None, _) => {
                    verdict = Some(Verdict::error(
                        ErrorKind::NoRoute,
                        format!("no virtual host for host {host:?}"),
                    ));
                }
            }
        }
        Serve::Tcp(clusters) => {
            picks = clusters.entries.iter().map(|e| e.0).collect();
            action = ActionView::Tcp {
                clusters: weighted(snapshot, clusters),
            };
        }
        Serve::Endpoint(cluster, endpoint) => {
            picks = vec![*cluster];
            let c = snapshot.cluster(*cluster);
            if let Some(ep) = c.endpoints.get(*endpoint) {
                action = ActionView::Endpoint {
                    cluster: c.name.clone(),
                    address: ep.address,
                };
                verdict = Some(Verdict {
                    status: None,
                    flag: None,
                    body: None,
                    summary: format!(
                        "passed as TCP to the endpoint {} itself{}",
                        ep.address,
                        if c.mtls_to(*endpoint) { ", over mutual TLS" } else { "" }
                    ),
                });
            }
        }
        Serve::Passthrough(address) => {
            action = ActionView::Passthrough { address: *address };
            verdict = Some(Verdict {
                status: None,
                flag: None,
                body: None,
                summary: format!("passed as TCP to {address}"),
            });
        }
        Serve::Closed(_) => {}
    }

    let clusters: Vec<ClusterView> = picks
        .iter()
        .map(|id| cluster_view(snapshot.cluster(*id), &req, source_ip, load))
        .collect();
    let needs_cert = clusters.iter().any(|c| c.endpoints.iter().any(|e| e.mtls));
    if needs_cert && cert.identity.is_none() {
        notes.push("this proxy has no workload certificate: mutual TLS hops fail (503 UF) until it has one".into());
    }

    // The verdict, in the request path's order: a refused connection, a denial, then routing.
    let verdict = if let Some(why) = refused {
        Verdict {
            status: None,
            flag: None,
            body: None,
            summary: format!("connection closed without an answer: {why}"),
        }
    } else if denied {
        let summary = match authorization.as_ref().and_then(|a| a.policy.as_deref()) {
            Some("allow-nomatch") | None => "denied: ALLOW policies apply and none matches".to_owned(),
            Some(policy) => format!("denied by {policy}"),
        };
        Verdict::error(ErrorKind::Forbidden, summary)
    } else if let Some(v) = verdict {
        v
    } else {
        forward_verdict(snapshot, &picks)
    };

    Ok(Explanation {
        snapshot_version: snapshot.version,
        listener: ListenerView {
            name: listener.name.clone(),
            address,
            protocol: protocol_name(&listener.kind),
            direction: if listener.inbound { "INBOUND" } else { "OUTBOUND" },
            chosen,
        },
        request,
        mtls,
        authorization,
        virtual_host,
        route,
        action,
        clusters,
        certificate: cert,
        verdict,
        notes,
    })
}

/// The decision of the workload's policies on `attrs`, and which policy made it.
fn authorize(authz: &ringmesh_api::authz::Authz, attrs: &ringmesh_api::authz::RequestAttrs<'_>) -> AuthzView {
    let policies = authz.policies().map(|(n, a)| (n.to_owned(), a)).collect();
    if authz.is_empty() {
        return AuthzView {
            decision: "ALLOW",
            policy: None,
            action: None,
            reason: "no AuthorizationPolicy applies to the workload".into(),
            audit: None,
            policies,
        };
    }
    match authz.evaluate(attrs) {
        Decision::Allowed { audit } => {
            let by = authz.allowed_by(attrs);
            AuthzView {
                decision: "ALLOW",
                policy: by.map(|p| authz.policy_name(p).to_owned()),
                action: by.map(|p| authz.policy_action(p)),
                reason: match by {
                    Some(_) => "an ALLOW policy matches, and no DENY policy does".into(),
                    None => "no DENY policy matches, and no ALLOW policy applies".into(),
                },
                audit: audit.map(|p| authz.policy_name(p).to_owned()),
                policies,
            }
        }
        Decision::Denied { policy } => AuthzView {
            decision: "DENY",
            policy: Some(authz.policy_name(policy).to_owned()),
            action: Some(authz.policy_action(policy)),
            reason: if policy == ringmesh_api::authz::PolicyRef::ALLOW_NOMATCH {
                "ALLOW policies apply and none matches".into()
            } else {
                "a DENY policy matches".into()
            },
            audit: None,
            policies,
        },
    }
}

/// What a forwarded request meets: one cluster's missing host or endpoints answer locally,
/// otherwise it goes upstream.
fn forward_verdict(snapshot: &Snapshot, picks: &[ClusterId]) -> Verdict {
    match picks {
        [] => Verdict {
            status: None,
            flag: None,
            body: None,
            summary: "nothing to forward to".into(),
        },
        [one] => {
            let c = snapshot.cluster(*one);
            if let Some(host) = &c.host_not_found {
                let mut v = Verdict::error(ErrorKind::NoCluster, format!("{}: {}", c.name, host.trim_end()));
                v.body = Some(host.clone());
                v
            } else if c.endpoints.is_empty() {
                Verdict::error(ErrorKind::NoHealthyUpstream, format!("{} has no endpoints", c.name))
            } else {
                Verdict {
                    status: None,
                    flag: None,
                    body: None,
                    summary: match c.endpoints.len() {
                        1 => format!("forwarded to {} (its one endpoint)", c.name),
                        n => format!(
                            "forwarded to {} (one of {n} endpoints, {})",
                            c.name,
                            super::lb_name(&c.lb)
                        ),
                    },
                }
            }
        }
        many => Verdict {
            status: None,
            flag: None,
            body: None,
            summary: format!("forwarded to one of {} clusters, by weight", many.len()),
        },
    }
}

/// The split as weights (cumulative weights undone) and shares.
fn weighted(snapshot: &Snapshot, w: &WeightedClusters) -> Vec<WeightedView> {
    let total = f64::from(w.total().max(1));
    let mut before = 0;
    w.entries
        .iter()
        .map(|&(id, cumulative)| {
            let weight = cumulative - before;
            before = cumulative;
            WeightedView {
                cluster: snapshot.cluster(id).name.clone(),
                weight,
                percent: (f64::from(weight) * 1000.0 / total).round() / 10.0,
            }
        })
        .collect()
}

fn cluster_view(c: &Cluster, req: &Request<'_>, source_ip: IpAddr, load: Option<&StatsTotals>) -> ClusterView {
    let hash_on = match &c.lb {
        LbPolicy::RingHash { hash_on, .. } | LbPolicy::Maglev { hash_on, .. } => Some(match hash_on {
            HashOn::Header(h) => format!("header {h}"),
            HashOn::Cookie { name } => format!("cookie {name}"),
            HashOn::SourceIp => "source IP".to_owned(),
        }),
        _ => None,
    };
    let hash_pick = hash_on.as_ref().map(|_| {
        crate::http::forward::hash_key(c, req, source_ip)
            .and_then(|h| crate::lb::consistent_pick(c, h))
            .and_then(|i| c.endpoints.get(i))
            .map(|e| e.address)
    });
    let totals = load.and_then(|l| l.clusters.get(&c.name));
    ClusterView {
        name: c.name.clone(),
        service: c.service.clone(),
        port: c.port,
        subset: c.subset.clone(),
        lb: super::lb_name(&c.lb),
        hash_on,
        hash_pick,
        protocol: match c.protocol {
            UpstreamProtocol::Http1 => "HTTP/1.1",
            UpstreamProtocol::Http2 => "HTTP/2",
            UpstreamProtocol::UseClient => "client's",
        },
        upstream_tls: match c.tls {
            UpstreamTls::Auto => "AUTO",
            UpstreamTls::Disable => "DISABLE",
            UpstreamTls::IstioMutual { .. } => "ISTIO_MUTUAL",
        },
        expected_peers: c.expected_peers().to_vec(),
        host_not_found: c.host_not_found.clone(),
        endpoints: c
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let t = totals.and_then(|t| t.endpoints.get(&e.address.to_string()));
                EndpointView {
                    address: e.address,
                    weight: e.weight,
                    labels: e.labels.clone(),
                    meshed: e.meshed,
                    mtls: c.mtls_to(i),
                    http2: c.h2_to(i, false),
                    health: "HEALTHY",
                    health_flags: String::new(),
                    eligible: true,
                    rq_active: t.map_or(0, |t| t.rq_active),
                    cx_connect_fail: t.map_or(0, |t| t.cx_connect_fail),
                }
            })
            .collect(),
    }
}

/// `GET /explain?…`: the answer as JSON, or 400 with the reason.
pub(crate) async fn answer(state: &super::AdminState, query: &str) -> Response<Full<Bytes>> {
    let q = match Query::parse(query) {
        Ok(q) => q,
        Err(e) => return super::json_with(StatusCode::BAD_REQUEST, &e.json()),
    };
    let (snapshot, health) = state.source.load_with_health();
    let totals = super::gather_stats(&state.workers).await;
    let cert = CertView::of(&state.identity, &state.cert_status.load());
    match explain(&snapshot, &state.listeners, &q, cert, Some(&totals)) {
        Ok(mut x) => {
            apply_health(&mut x, &snapshot, &health);
            super::json_with(StatusCode::OK, &x)
        }
        Err(e) => super::json_with(StatusCode::BAD_REQUEST, &e.json()),
    }
}

/// Marks the explanation's endpoints with the shared health tables' view: flags, and whether
/// the balancer may pick them now.
fn apply_health(x: &mut Explanation, snapshot: &Snapshot, tables: &crate::lb::health::HealthTables) {
    use crate::lb::health::{FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK};
    for view in &mut x.clusters {
        let Some((c, (ch, eps))) = snapshot
            .clusters
            .iter()
            .zip(&tables.clusters)
            .find(|(c, _)| c.name == view.name)
        else {
            continue;
        };
        let checks = c.outlier.is_some() || c.health_check.is_some();
        for (e, eh) in view.endpoints.iter_mut().zip(eps) {
            let flags = eh.flags();
            if flags & FAILED_OUTLIER_CHECK != 0 {
                e.health_flags.push_str("/failed_outlier_check");
            }
            if flags & FAILED_ACTIVE_HC != 0 {
                e.health_flags.push_str("/failed_active_hc");
            }
            if flags != 0 {
                e.health = "UNHEALTHY";
                e.eligible = !checks || ch.in_panic();
            }
        }
    }
}

#[cfg(test)]
mod tests;
