//! What one HTTP request did, gathered as it goes and read once when it ends.
//!
//! The request path fills a [`Facts`] at the points where each fact becomes known — the
//! cluster, the endpoint of each try, the moments the request went upstream and the
//! response came back, the status and why — and hands it to [`super::finish`] at the end.
//! Metrics, the access log, the proxy's own-latency histograms and the trace span are all
//! made from it there, on the worker, into that worker's shards; nothing is shared. The
//! fields are `Cell`s because the request path holds the facts by shared reference in the
//! structs it already passes down (`Exchange`, `Call`), and a request is one task on one core.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use ringmesh_api::snapshot::{ClusterId, RequestHead as RouteRequest};

use super::trace::TraceContext;

/// The protocol the client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2, not gRPC.
    Http2,
    /// gRPC (over HTTP/2).
    Grpc,
}

impl Protocol {
    /// Envoy's `%PROTOCOL%`.
    pub(crate) fn envoy_name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 | Protocol::Grpc => "HTTP/2",
        }
    }

    /// Istio's `request_protocol` label.
    pub(crate) fn istio_name(self) -> &'static str {
        match self {
            Protocol::Http1 | Protocol::Http2 => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// What authorization decided, with the policy that made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthzVerdict {
    /// Allowed by policy (no DENY matched, an ALLOW did or none applies).
    Allowed,
    /// Allowed, and an `AUDIT` policy matched.
    Audited(ringmesh_api::authz::PolicyRef),
    /// Denied by this policy.
    Denied(ringmesh_api::authz::PolicyRef),
}

impl AuthzVerdict {
    /// Whether the request was refused.
    pub(crate) fn denied(self) -> bool {
        matches!(self, AuthzVerdict::Denied(_))
    }
}

/// Why the status is what it is: Envoy's `%RESPONSE_CODE_DETAILS%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Details {
    /// Nothing was answered yet.
    None,
    /// The upstream's answer was relayed.
    ViaUpstream,
    /// A route's direct response or redirect.
    Route,
    /// A reply the proxy made (its kind is [`Facts::local`]).
    Local,
}

/// A moment in a request's life, kept as microseconds since its head arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// The first byte of the first try went upstream.
    UpstreamSent,
    /// The final response head arrived from upstream.
    UpstreamHead,
    /// The response head went out to the client.
    ClientHead,
}

/// One request's facts. See the module doc.
///
/// Kept small on purpose: it lives in the connection's future, whose size every idle
/// keep-alive connection pays. Moments are microseconds since `started` (not `Instant`s), the
/// local reply is its error kind (its flag and details follow from it), and the endpoint's
/// address and the wall-clock start are derived when the request ends.
pub(crate) struct Facts {
    /// When the request head was parsed (the last byte of the head in).
    pub(crate) started: Instant,
    /// What the client spoke.
    pub(crate) protocol: Cell<Protocol>,
    /// The cluster chosen.
    pub(crate) cluster: Cell<Option<ClusterId>>,
    /// The endpoint of the last try: its index in the cluster.
    pub(crate) endpoint: Cell<Option<u32>>,
    /// [`Mark`]s, as microseconds since `started` plus one (0: not reached).
    marks: [Cell<u32>; 3],
    /// The status sent to the client; 0 when none was.
    pub(crate) status: Cell<u16>,
    /// The gRPC status, when one was seen.
    pub(crate) grpc_status: Cell<Option<u16>>,
    /// The kind of a reply the proxy made itself.
    local: Cell<Option<crate::error::ErrorKind>>,
    /// The route's fault injection delayed the request (Envoy's `DI`).
    pub(crate) delayed: Cell<bool>,
    /// Why the status is what it is.
    pub(crate) details: Cell<Details>,
    /// Request body bytes read from the client.
    pub(crate) bytes_received: Cell<u64>,
    /// Response body bytes written to the client.
    pub(crate) bytes_sent: Cell<u64>,
    /// Authorization's decision (inbound only).
    pub(crate) authz: Cell<Option<AuthzVerdict>>,
    /// The request's trace context, once tracing read or started it.
    pub(crate) trace: Cell<Option<TraceContext>>,
}

impl Facts {
    /// Facts of a request whose head was parsed now.
    pub(crate) fn new(protocol: Protocol) -> Self {
        Facts {
            started: Instant::now(),
            protocol: Cell::new(protocol),
            cluster: Cell::new(None),
            endpoint: Cell::new(None),
            marks: Default::default(),
            status: Cell::new(0),
            grpc_status: Cell::new(None),
            local: Cell::new(None),
            delayed: Cell::new(false),
            details: Cell::new(Details::None),
            bytes_received: Cell::new(0),
            bytes_sent: Cell::new(0),
            authz: Cell::new(None),
            trace: Cell::new(None),
        }
    }

    /// A reply the proxy made: its status, flag and reason.
    pub(crate) fn local_reply(&self, e: &crate::error::ProxyError) {
        self.status.set(e.status());
        self.local.set(Some(e.kind));
        self.details.set(Details::Local);
    }

    /// Envoy's response flags (`UH`, `NR`, `DI,FI`, …), `None` for a relayed answer that was
    /// not delayed.
    pub(crate) fn flag(&self) -> Option<&'static str> {
        let local = self.local.get().map(|k| k.flag());
        if !self.delayed.get() {
            return local;
        }
        // Several flags are joined in Envoy's order of flags (…, NR, DI, FI, …, DC, …).
        Some(match local {
            None => "DI",
            Some("FI") => "DI,FI",
            Some("UH") => "UH,DI",
            Some("UT") => "UT,DI",
            Some("UF") => "UF,DI",
            Some("UC") => "UC,DI",
            Some("UO") => "UO,DI",
            Some("DC") => "DI,DC",
            Some("DPE") => "DI,DPE",
            Some("UPE") => "DI,UPE",
            Some("NC") => "DI,NC",
            Some(other) => other,
        })
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%`, `None` before any answer.
    pub(crate) fn details_text(&self) -> Option<&'static str> {
        match self.details.get() {
            Details::None => None,
            Details::ViaUpstream => Some("via_upstream"),
            Details::Route => Some("direct_response"),
            Details::Local => self.local.get().map(|k| k.details()),
        }
    }

    /// `mark` happens now.
    #[inline]
    pub(crate) fn mark(&self, mark: Mark) {
        let us = self.started.elapsed().as_micros().min(u128::from(u32::MAX - 1)) as u32;
        self.marks[mark as usize].set(us + 1);
    }

    /// `mark` happens now, unless it already happened.
    #[inline]
    pub(crate) fn mark_first(&self, mark: Mark) {
        if self.marks[mark as usize].get() == 0 {
            self.mark(mark);
        }
    }

    /// When `mark` happened, in microseconds since the head arrived.
    pub(crate) fn at(&self, mark: Mark) -> Option<u64> {
        match self.marks[mark as usize].get() {
            0 => None,
            n => Some(u64::from(n - 1)),
        }
    }

    /// The first byte of a try goes upstream now (only the first try's moment is kept).
    #[inline]
    pub(crate) fn sending_upstream(&self) {
        self.mark_first(Mark::UpstreamSent);
    }

    /// The proxy's own time, in microseconds: head in → first byte out upstream, plus response
    /// head in → head out to the client. `None` unless the request went upstream and its
    /// answer came back through the proxy.
    pub(crate) fn overhead_us(&self) -> Option<u64> {
        let out = self.at(Mark::UpstreamSent)?;
        let back = self.at(Mark::ClientHead)?.checked_sub(self.at(Mark::UpstreamHead)?)?;
        Some(out + back)
    }

    /// Milliseconds from the request sent upstream to the response head back.
    pub(crate) fn upstream_service_ms(&self) -> Option<u64> {
        Some(self.at(Mark::UpstreamHead)?.checked_sub(self.at(Mark::UpstreamSent)?)? / 1000)
    }

    /// When the head arrived, on the wall clock.
    pub(crate) fn start_wall(&self) -> SystemTime {
        SystemTime::now() - self.started.elapsed()
    }
}

/// The request as the client sent it, for the access log's `%REQ(…)%` and the span's
/// attributes.
pub(crate) struct RequestSide<'a> {
    /// Method, path and query as sent, and the head's fields.
    pub(crate) head: &'a dyn RouteRequest,
    /// `:authority` or `Host`.
    pub(crate) authority: &'a str,
    /// The client's address.
    pub(crate) peer: SocketAddr,
}

/// A request whose head could not be parsed: no method, path, host or field.
struct Unparsed;

impl RouteRequest for Unparsed {
    fn method(&self) -> &str {
        ""
    }
    fn path(&self) -> &str {
        ""
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

impl RequestSide<'static> {
    /// The side of a request refused before its head was parsed.
    pub(crate) fn unparsed(peer: SocketAddr) -> Self {
        RequestSide {
            head: &Unparsed,
            authority: "",
            peer,
        }
    }
}

impl RequestSide<'_> {
    /// The first value of a request field, by lower-case name; the request line's parts by
    /// their HTTP/2 pseudo-header names (`:path` with its query, as sent).
    pub(crate) fn get(&self, name: &str) -> Option<Value<'_>> {
        match name {
            ":method" | ":path" if self.head.method().is_empty() => None,
            ":method" => Some(Value::One(self.head.method().as_bytes())),
            ":path" => Some(match self.head.query() {
                Some(q) => Value::Joined(self.head.path().as_bytes(), q.as_bytes()),
                None => Value::One(self.head.path().as_bytes()),
            }),
            ":authority" | "host" => Some(Value::One(self.authority.as_bytes())).filter(|_| !self.authority.is_empty()),
            _ => self.head.header(name).map(Value::One),
        }
    }
}

/// A field's value: one slice, or a path and its query joined by `?` when written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    /// As is.
    One(&'a [u8]),
    /// `.0` `?` `.1`.
    Joined(&'a [u8], &'a [u8]),
}
