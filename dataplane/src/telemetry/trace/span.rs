//! One span per proxy hop, with the attributes Envoy's tracer gives it in an Istio sidecar, and
//! the per-core buffer spans wait in until they go to the control thread.
//!
//! A span is made only for a sampled request, when it ended (`on_finish`), on the worker that
//! served it; the strings it owns are its only allocations. The buffer holds at most one
//! export batch; a full batch, or the worker's flush timer, hands it over with `try_send` on a
//! bounded channel. When the control thread is behind and the channel is full, the batch is
//! dropped and counted: a worker never waits for the exporter.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringmesh_api::matcher::StringMatch;
use ringmesh_api::snapshot::{Route, RouteAction, Snapshot};

use super::stats::TraceStats;
use super::TraceContext;
use crate::telemetry::stats::inc;

/// OpenTelemetry's span kind, as Envoy picks it in a sidecar: the inbound listener's span is
/// the server side of the call, the outbound listener's the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// Inbound listener (Envoy's `ingress` operation).
    Server,
    /// Outbound listener (`egress`).
    Client,
}

/// What a finished request tells its span, borrowed from the request's facts and head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanFacts<'a> {
    pub(crate) kind: SpanKind,
    /// When the request head was parsed (wall clock), and how long the request took.
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) method: &'a str,
    /// `:authority` / `Host`.
    pub(crate) authority: &'a str,
    /// Path and query as the client sent them.
    pub(crate) path: &'a [u8],
    pub(crate) query: Option<&'a [u8]>,
    /// The client's `x-request-id`, if it sent one.
    pub(crate) request_id: Option<&'a [u8]>,
    pub(crate) user_agent: Option<&'a [u8]>,
    /// `x-envoy-downstream-service-cluster`.
    pub(crate) downstream_cluster: Option<&'a [u8]>,
    /// Envoy's `%PROTOCOL%`.
    pub(crate) protocol: &'static str,
    pub(crate) peer: IpAddr,
    pub(crate) request_size: u64,
    pub(crate) response_size: u64,
    /// The route that matched (its decorator-like name), and the cluster chosen.
    pub(crate) route: Option<&'a Route>,
    pub(crate) cluster: Option<&'a str>,
    /// 0 when no response was sent.
    pub(crate) status: u16,
    pub(crate) response_flags: Option<&'static str>,
    pub(crate) grpc_status: Option<u16>,
}

/// A finished span, owned, on its way to the exporter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_span_id: Option<[u8; 8]>,
    pub(crate) kind: SpanKind,
    pub(crate) start_unix_nanos: u64,
    pub(crate) end_unix_nanos: u64,
    pub(crate) name: String,
    /// `guid:x-request-id`.
    pub(crate) request_id: Option<String>,
    /// `http.url`: `http://<authority><path>`, the path (with its query) cut at
    /// `maxPathTagLength` bytes.
    pub(crate) url: String,
    pub(crate) method: String,
    /// `downstream_cluster` (`-` when absent).
    pub(crate) downstream_cluster: String,
    /// `user_agent` (`-` when absent).
    pub(crate) user_agent: String,
    pub(crate) protocol: &'static str,
    pub(crate) peer: IpAddr,
    pub(crate) request_size: u64,
    pub(crate) response_size: u64,
    /// `upstream_cluster` and `upstream_cluster.name`.
    pub(crate) cluster: Option<String>,
    pub(crate) status: u16,
    /// `response_flags` (`-` when none).
    pub(crate) response_flags: &'static str,
    pub(crate) grpc_status: Option<u16>,
}

impl SpanRecord {
    /// The span of `ctx`'s hop. `max_path` is `maxPathTagLength`.
    pub(crate) fn new(ctx: &TraceContext, f: &SpanFacts<'_>, snapshot: Option<&Snapshot>, max_path: usize) -> Self {
        let start = f.start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let start_unix_nanos = u64::try_from(start.as_nanos()).unwrap_or(u64::MAX);
        let end_unix_nanos = start_unix_nanos.saturating_add(u64::try_from(f.duration.as_nanos()).unwrap_or(u64::MAX));
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        // The scheme the proxy tells the upstream (`x-forwarded-proto: http`).
        let mut url = String::with_capacity(7 + f.authority.len() + f.path.len().min(max_path));
        url.push_str("http://");
        url.push_str(f.authority);
        let mut path = f.path.to_vec();
        if let Some(q) = f.query {
            path.push(b'?');
            path.extend_from_slice(q);
        }
        path.truncate(max_path);
        url.push_str(&String::from_utf8_lossy(&path));
        let request_id = match (f.request_id, &ctx.request_id) {
            (Some(id), _) => Some(text(id)),
            (None, Some(ours)) => Some(text(ours)),
            (None, None) => None,
        };
        SpanRecord {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: ctx.parent_span_id,
            kind: f.kind,
            start_unix_nanos,
            end_unix_nanos,
            name: operation_name(f, snapshot),
            request_id,
            url,
            method: f.method.to_owned(),
            downstream_cluster: f.downstream_cluster.map_or_else(|| "-".into(), text),
            user_agent: f.user_agent.map_or_else(|| "-".into(), text),
            protocol: f.protocol,
            peer: f.peer,
            request_size: f.request_size,
            response_size: f.response_size,
            cluster: f.cluster.map(str::to_owned),
            status: f.status,
            response_flags: f.response_flags.unwrap_or("-"),
            grpc_status: f.grpc_status,
        }
    }

    /// Envoy marks a span an error when no response was sent or it was a 5xx.
    pub(crate) fn is_error(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// The span's name, as Istio's route decorators name it: `<host>:<port><path>` of the route's
/// destination, the path being the route's path match (`prefix*`, the exact path, the regex) or
/// `/*`; with several destinations, the route's VirtualService name instead of the host. A
/// request that matched no route gets Envoy's default: `ingress`, or `egress <authority>`.
///
/// Istio makes one Envoy route per `match` entry; a ringmesh route holds all of them, so a
/// route with several `match` entries is named by its first.
fn operation_name(f: &SpanFacts<'_>, snapshot: Option<&Snapshot>) -> String {
    let Some(route) = f.route else {
        return match f.kind {
            SpanKind::Server => "ingress".into(),
            SpanKind::Client => format!("egress {}", f.authority),
        };
    };
    let path = match route.matches.first().and_then(|m| m.path.as_ref()).map(|p| &p.matcher) {
        None => "/*".to_owned(),
        Some(StringMatch::Prefix(p)) => format!("{p}*"),
        Some(StringMatch::Exact(p)) => p.clone(),
        Some(StringMatch::Regex(r)) => r.as_str().to_owned(),
    };
    let dest = match (&route.action, snapshot) {
        (RouteAction::Forward(a), Some(s)) => {
            let first = a
                .clusters
                .entries
                .first()
                .and_then(|(id, _)| s.clusters.get(id.0 as usize));
            match (first, a.clusters.entries.len()) {
                (Some(c), 1) => Some(format!("{}:{}", c.service, c.port)),
                (Some(c), _) => Some(format!("{}:{}", vs_name(&route.name), c.port)),
                (None, _) => None,
            }
        }
        _ => None,
    };
    match dest {
        Some(d) => d + &path,
        // A redirect or a direct response: the route's name says what it is.
        None => format!("{}{path}", route.name),
    }
}

/// The VirtualService's name in a route named `<namespace>/<vs>/<index>`; a route named by
/// its own `name` field stands for itself.
fn vs_name(route: &str) -> &str {
    let mut parts = route.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(vs), Some(_), None) => vs,
        _ => route,
    }
}

/// A worker's spans on their way to the control thread.
#[derive(Debug)]
pub(crate) struct SpanBuffer {
    pending: RefCell<Vec<SpanRecord>>,
    to_exporter: flume::Sender<Vec<SpanRecord>>,
}

impl SpanBuffer {
    /// A buffer handing its batches to `to_exporter` (bounded; see [`channel`]).
    pub(crate) fn new(to_exporter: flume::Sender<Vec<SpanRecord>>) -> Self {
        SpanBuffer {
            pending: RefCell::new(Vec::new()),
            to_exporter,
        }
    }

    /// Adds a finished span; a full batch goes at once.
    pub(crate) fn push(&self, span: SpanRecord, batch: usize, stats: &TraceStats) {
        inc(&stats.spans);
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.push(span);
            pending.len() >= batch
        };
        if full {
            self.flush(stats);
        }
    }

    /// Hands what is held to the exporter, or drops and counts it when the hand-off is full.
    pub(crate) fn flush(&self, stats: &TraceStats) {
        let batch = {
            let mut pending = self.pending.borrow_mut();
            if pending.is_empty() {
                return;
            }
            std::mem::take(&mut *pending)
        };
        if let Err(e) = self.to_exporter.try_send(batch) {
            let lost = e.into_inner().len() as u64;
            stats.dropped.set(stats.dropped.get() + lost);
        }
    }

    /// Spans held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.pending.borrow().len()
    }
}

/// The hand-off from the workers to the exporter: two batches per worker in flight at most
/// (the exporter takes them off at once into its own bounded queue).
pub(crate) fn channel(workers: usize) -> (flume::Sender<Vec<SpanRecord>>, flume::Receiver<Vec<SpanRecord>>) {
    flume::bounded(2 * workers.max(1))
}

/// The workers' end of the hand-off.
pub(crate) type SpanSender = flume::Sender<Vec<SpanRecord>>;
