//! Distributed tracing: W3C `traceparent`/`tracestate` and B3 read from a request, a trace
//! started when none is present (sampled at `spec.telemetry.tracing.sampling`), the context
//! written to the upstream request, and one span per proxy hop exported over OTLP from the
//! control thread.
//!
//! Where it sits in the flow:
//! 1. **Begin** ([`begin`]), once per request, where the forwarded head is built (`plan` in
//!    `http/forward.rs`, `outgoing` in `http/h2/call.rs`): one pass over the request's fields
//!    ([`context`]), the caller's decision kept or a new one drawn ([`sampling`]), a new span id
//!    from the worker's generator. The context rides in the request's facts.
//! 2. **Propagate**: the forwarded head carries [`context::Outgoing`]'s fields in place of the
//!    request's own (`h1::encode`, `h2::headers`).
//! 3. **Record** ([`on_finish`]), when the request ended: only a sampled request with an
//!    exporter configured and span reporting on (not a `Telemetry`'s `disableSpanReporting`)
//!    builds a [`span::SpanRecord`], into the worker's
//!    [`span::SpanBuffer`]; a full batch, or the flush timer ([`flusher`]), hands the batch to
//!    the control thread with `try_send`. A full hand-off drops the batch and counts it.
//! 4. **Export** ([`export`]), on the control thread: batches to the collector over OTLP/gRPC
//!    or OTLP/HTTP, with a timeout and two retries; what cannot be queued or sent is counted.
//!
//! What the request path never does here: take a lock, touch a shared counter, wait, or
//! allocate for a request that is not sampled (the fields go out of stack buffers; an HTTP/2
//! request's field values share one buffer).

pub(crate) mod context;
pub(crate) mod export;
pub(crate) mod sampling;
pub(crate) mod span;
pub(crate) mod stats;
#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::time::Duration;

use ringmesh_api::snapshot::{Route, Tracing};

pub(crate) use context::{is_propagation_field, Incoming, Outgoing};
pub(crate) use stats::{TraceStats, TraceTotals};

use super::request::{Facts, RequestSide};
use crate::rng::FastRng;
use crate::state::WorkerSnapshot;
use crate::worker::Worker;
use span::{SpanFacts, SpanKind, SpanRecord};

/// A request's place in a trace: the trace, this hop's span, and the span it descends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// The trace's id.
    pub(crate) trace_id: [u8; 16],
    /// This hop's span id (the parent of the upstream's span).
    pub(crate) span_id: [u8; 8],
    /// The caller's span id, if the request carried one.
    pub(crate) parent_span_id: Option<[u8; 8]>,
    /// Whether the trace is sampled (this hop's span is exported).
    pub(crate) sampled: bool,
    /// B3 debug: sent on as such.
    pub(crate) debug: bool,
    /// The trace id came as 64-bit B3: sent on in 16 hex digits.
    pub(crate) short_trace_id: bool,
    /// The formats sent upstream.
    pub(crate) formats: context::Formats,
    /// The `x-request-id` this proxy generated for the request, kept for the span (the
    /// client's own id is read from the request when the span is made).
    pub(crate) request_id: Option<[u8; 36]>,
}

/// The request ended: a sampled hop's span goes to this worker's span buffer. A request
/// answered before its context was read (a local reply before routing) gets one here, from
/// the request as the client sent it, so that its span (and the access log's trace id) still
/// joins the caller's trace.
pub(crate) fn on_finish(
    worker: &Worker,
    view: &WorkerSnapshot,
    facts: &Facts,
    route: Option<&Route>,
    req: &RequestSide<'_>,
    conn: Option<&crate::tls::InboundConn>,
) {
    let snapshot = &view.snapshot;
    let cfg = &snapshot.telemetry.tracing;
    if !cfg.enabled {
        return;
    }
    let ctx = match facts.trace.get() {
        Some(ctx) => ctx,
        None => {
            let ctx = sampling::begin(
                &worker.rng,
                cfg.sampling,
                &Incoming::from_lookup(|name| req.head.header(name)),
            );
            facts.trace.set(Some(ctx));
            ctx
        }
    };
    // A `Telemetry`'s `disableSpanReporting`: the context above was still begun (and reaches
    // the access log's %TRACE_ID%), no span is made.
    let Some(export) = cfg.export.as_ref().filter(|_| ctx.sampled && cfg.report_spans) else {
        return;
    };
    let header = |name: &str| req.head.header(name);
    let span = SpanFacts {
        kind: if conn.is_some() {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start: facts.start_wall(),
        duration: facts.started.elapsed(),
        method: req.head.method(),
        authority: req.authority,
        path: req.head.path().as_bytes(),
        query: req.head.query().map(str::as_bytes),
        request_id: header("x-request-id"),
        user_agent: header("user-agent"),
        downstream_cluster: header("x-envoy-downstream-service-cluster"),
        protocol: facts.protocol.get().envoy_name(),
        peer: req.peer.ip(),
        request_size: facts.bytes_received.get(),
        response_size: facts.bytes_sent.get(),
        route,
        cluster: facts
            .cluster
            .get()
            .and_then(|id| snapshot.clusters.get(id.0 as usize))
            .map(|c| c.name.as_str()),
        status: facts.status.get(),
        response_flags: facts.flag(),
        grpc_status: facts.grpc_status.get(),
    };
    let record = SpanRecord::new(&ctx, &span, Some(snapshot), cfg.max_path_tag_length);
    worker
        .spans
        .push(record, export.max_export_batch_size, &worker.stats.tracing);
}

/// This hop's context, or `None` when tracing is off (then the request's trace fields pass
/// untouched). `incoming` is read only when tracing is on.
#[inline]
pub(crate) fn begin(rng: &FastRng, cfg: &Tracing, incoming: impl FnOnce() -> Incoming) -> Option<TraceContext> {
    cfg.enabled.then(|| sampling::begin(rng, cfg.sampling, &incoming()))
}

/// The worker's flush timer: every `scheduleDelay` the spans it holds go to the control
/// thread, so a quiet worker's spans are not held until a batch fills.
pub(crate) async fn flusher(worker: Rc<Worker>) {
    loop {
        let delay = {
            let view = worker.snapshot.get();
            let t = &view.snapshot.telemetry.tracing;
            match &t.export {
                Some(e) if t.enabled => e.schedule_delay,
                _ => IDLE_FLUSH_CHECK,
            }
        };
        monoio::time::sleep(delay).await;
        worker.spans.flush(&worker.stats.tracing);
    }
}

/// How often a worker without an exporter looks again (config reloads may add one).
const IDLE_FLUSH_CHECK: Duration = Duration::from_secs(5);
