//! Per-core statistics shard and the merged view built from all shards at scrape time.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Counters of one worker. Only that worker's thread touches it.
#[derive(Debug)]
pub struct WorkerStats {
    /// Downstream connections accepted.
    pub downstream_cx_total: Cell<u64>,
    /// Downstream connections open now.
    pub downstream_cx_active: Cell<u64>,
    /// Downstream connections closed at accept because the worker's share of
    /// `limits.maxConnections` was open (Envoy's `downstream_cx_overflow`).
    pub downstream_cx_overflow: Cell<u64>,
    /// Downstream connections closed at accept because client connections held the worker's
    /// share of `limits.maxBufferBytes`.
    pub downstream_cx_buffer_overflow: Cell<u64>,
    /// Bytes client connections hold in read buffers now (`http::downstream::BufferCharge`).
    pub downstream_buffered_bytes: Cell<u64>,
    /// HTTP requests whose head was parsed.
    pub downstream_rq_total: Cell<u64>,
    /// Requests in flight now.
    pub downstream_rq_active: Cell<u64>,
    /// Responses sent, by status class (index 1..=5).
    pub responses_by_class: [Cell<u64>; 6],
    /// Local replies by Envoy response flag (NR, UH, UF, UT, ...).
    pub local_replies: RefCell<BTreeMap<&'static str, u64>>,
    /// Upstream connections opened.
    pub upstream_cx_total: Cell<u64>,
    /// Upstream connect failures (refused, unreachable, timed out).
    pub upstream_cx_connect_fail: Cell<u64>,
    /// Requests served on a reused pooled connection.
    pub upstream_cx_reused: Cell<u64>,
    /// Retries attempted.
    pub upstream_rq_retry: Cell<u64>,
    /// Retries refused by the retry budget.
    pub upstream_rq_retry_overflow: Cell<u64>,
    /// Requests that hit a route or per-try timeout.
    pub upstream_rq_timeout: Cell<u64>,
    /// Requests refused at once because a cluster's `http2MaxRequests` was reached.
    pub upstream_rq_pending_overflow: Cell<u64>,
    /// Downstream connections that spoke HTTP/2.
    pub downstream_cx_h2_total: Cell<u64>,
    /// HTTP/2 streams this worker handed to another worker to serve.
    pub h2_streams_handed_off: Cell<u64>,
    /// HTTP/2 client connections ended with `GOAWAY(ENHANCE_YOUR_CALM)` for abuse.
    pub h2_goaway_sent: Cell<u64>,
    /// TCP proxy connections accepted.
    pub tcp_cx_total: Cell<u64>,
    /// TCP proxy bytes client → upstream.
    pub tcp_bytes_sent: Cell<u64>,
    /// TCP proxy bytes upstream → client.
    pub tcp_bytes_received: Cell<u64>,
    /// Connections of `AUTO` listeners whose first bytes were HTTP/1 or the HTTP/2 preface.
    pub detected_http: Cell<u64>,
    /// Connections of `AUTO` listeners whose first bytes were anything else (TLS included).
    pub detected_tcp: Cell<u64>,
    /// Connections of `AUTO` listeners whose client did not finish speaking within the
    /// detection timeout (a server-first protocol), proxied as TCP.
    pub detect_timeout: Cell<u64>,
    /// Request duration (head parsed → response complete), microseconds.
    pub request_duration_us: RefCell<Histogram<u64>>,
    /// Rate limit of this worker's per-request log lines (local replies), by reason.
    pub log_limit: super::log_limit::LogLimiter,
    /// mTLS and authorization counters.
    pub security: super::security::SecurityStats,
    /// Counters of captured connections.
    pub capture: super::capture::CaptureStats,
    /// Counters of mirrored requests.
    pub mirror: super::mirror::MirrorStats,
    /// Istio's standard metrics.
    pub(crate) istio: super::istio::IstioShard,
    /// The proxy's own time per request.
    pub(crate) overhead: super::overhead::OverheadShard,
    /// Access-log lines waiting for the writer.
    pub(crate) access_log: super::access_log::AccessLogShard,
    /// Spans made and dropped.
    pub(crate) tracing: super::trace::TraceStats,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            downstream_cx_total: Cell::new(0),
            downstream_cx_active: Cell::new(0),
            downstream_cx_overflow: Cell::new(0),
            downstream_cx_buffer_overflow: Cell::new(0),
            downstream_buffered_bytes: Cell::new(0),
            downstream_rq_total: Cell::new(0),
            downstream_rq_active: Cell::new(0),
            responses_by_class: Default::default(),
            local_replies: RefCell::new(BTreeMap::new()),
            upstream_cx_total: Cell::new(0),
            upstream_cx_connect_fail: Cell::new(0),
            upstream_cx_reused: Cell::new(0),
            upstream_rq_retry: Cell::new(0),
            upstream_rq_retry_overflow: Cell::new(0),
            upstream_rq_timeout: Cell::new(0),
            upstream_rq_pending_overflow: Cell::new(0),
            downstream_cx_h2_total: Cell::new(0),
            h2_streams_handed_off: Cell::new(0),
            h2_goaway_sent: Cell::new(0),
            tcp_cx_total: Cell::new(0),
            tcp_bytes_sent: Cell::new(0),
            tcp_bytes_received: Cell::new(0),
            detected_http: Cell::new(0),
            detected_tcp: Cell::new(0),
            detect_timeout: Cell::new(0),
            request_duration_us: RefCell::new(new_histogram()),
            log_limit: super::log_limit::LogLimiter::default(),
            security: Default::default(),
            capture: Default::default(),
            mirror: Default::default(),
            istio: Default::default(),
            overhead: Default::default(),
            access_log: Default::default(),
            tracing: Default::default(),
        }
    }
}

/// 1 µs to 60 s at 3 significant digits: the range and precision the load generator uses.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; a failure here is a programming error
    // caught by the unit test below, never input-dependent.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Adds one to a counter cell.
#[inline]
pub fn inc(c: &Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

/// Subtracts one from a gauge cell, saturating.
#[inline]
pub fn dec(c: &Cell<u64>) {
    c.set(c.get().saturating_sub(1));
}

impl WorkerStats {
    /// Records a response status.
    #[inline]
    pub fn record_status(&self, status: u16) {
        let class = (status / 100).min(5) as usize;
        inc(&self.responses_by_class[class]);
    }

    /// Records a locally generated reply by its response flag.
    pub fn record_local_reply(&self, flag: &'static str) {
        *self.local_replies.borrow_mut().entry(flag).or_insert(0) += 1;
    }

    /// Records a request duration in microseconds (clamped into the histogram's range).
    #[inline]
    pub fn record_duration_us(&self, us: u64) {
        let mut h = self.request_duration_us.borrow_mut();
        h.saturating_record(us.clamp(1, 60_000_000));
    }

    /// A copy of this shard, for the admin side to merge.
    pub fn copy(&self) -> StatsTotals {
        let mut by_class = [0u64; 6];
        for (dst, src) in by_class.iter_mut().zip(self.responses_by_class.iter()) {
            *dst = src.get();
        }
        StatsTotals {
            workers: 1,
            downstream_cx_total: self.downstream_cx_total.get(),
            downstream_cx_active: self.downstream_cx_active.get(),
            downstream_cx_overflow: self.downstream_cx_overflow.get(),
            downstream_cx_buffer_overflow: self.downstream_cx_buffer_overflow.get(),
            downstream_buffered_bytes: self.downstream_buffered_bytes.get(),
            downstream_rq_total: self.downstream_rq_total.get(),
            downstream_rq_active: self.downstream_rq_active.get(),
            responses_by_class: by_class,
            local_replies: self
                .local_replies
                .borrow()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            upstream_cx_total: self.upstream_cx_total.get(),
            upstream_cx_connect_fail: self.upstream_cx_connect_fail.get(),
            upstream_cx_reused: self.upstream_cx_reused.get(),
            upstream_rq_retry: self.upstream_rq_retry.get(),
            upstream_rq_retry_overflow: self.upstream_rq_retry_overflow.get(),
            upstream_rq_timeout: self.upstream_rq_timeout.get(),
            upstream_rq_pending_overflow: self.upstream_rq_pending_overflow.get(),
            downstream_cx_h2_total: self.downstream_cx_h2_total.get(),
            h2_streams_handed_off: self.h2_streams_handed_off.get(),
            h2_goaway_sent: self.h2_goaway_sent.get(),
            tcp_cx_total: self.tcp_cx_total.get(),
            tcp_bytes_sent: self.tcp_bytes_sent.get(),
            tcp_bytes_received: self.tcp_bytes_received.get(),
            detected_http: self.detected_http.get(),
            detected_tcp: self.detected_tcp.get(),
            detect_timeout: self.detect_timeout.get(),
            request_duration_us: self.request_duration_us.borrow().clone(),
            security: self.security.totals(),
            capture: self.capture.totals(),
            mirror: self.mirror.totals(),
            istio: self.istio.copy(),
            overhead: self.overhead.copy(false),
            access_log_lines: self.access_log.lines.get(),
            access_log_dropped: self.access_log.dropped.get(),
            tracing: self.tracing.totals(),
            clusters: BTreeMap::new(),
            per_worker: Vec::new(),
        }
    }
}

/// Per-cluster totals, summed over workers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterTotals {
    /// Requests sent to the cluster (each try counts).
    pub upstream_rq_total: u64,
    /// Requests in flight now.
    pub upstream_rq_active: u64,
    /// Responses by status class (index 1..=5).
    pub upstream_rq_by_class: [u64; 6],
    /// Retries sent.
    pub upstream_rq_retry: u64,
    /// Requests that timed out.
    pub upstream_rq_timeout: u64,
    /// Upstream connections open now (idle pooled ones included).
    pub upstream_cx_active: u64,
    /// Connections refused by `maxConnections`.
    pub upstream_cx_overflow: u64,
    /// Requests waiting for a connection now.
    pub upstream_rq_pending_active: u64,
    /// Requests refused because `http1MaxPendingRequests` was reached.
    pub upstream_rq_pending_overflow: u64,
    /// Retries not made because `maxRetries` was reached.
    pub upstream_rq_retry_overflow: u64,
    /// Per endpoint address: (requests, in flight now, connect failures, idle pooled connections).
    pub endpoints: BTreeMap<String, EndpointTotals>,
}

/// Per-endpoint totals, summed over workers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointTotals {
    /// Requests sent (each try counts).
    pub rq_total: u64,
    /// Requests in flight now.
    pub rq_active: u64,
    /// Connect failures.
    pub cx_connect_fail: u64,
    /// Idle pooled connections.
    pub cx_idle: u64,
}

/// The sum of all workers' shards at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StatsTotals {
    /// Workers that answered.
    pub workers: usize,
    /// See [`WorkerStats`] for each field's meaning.
    pub downstream_cx_total: u64,
    #[allow(missing_docs)]
    pub downstream_cx_active: u64,
    #[allow(missing_docs)]
    pub downstream_cx_overflow: u64,
    #[allow(missing_docs)]
    pub downstream_cx_buffer_overflow: u64,
    #[allow(missing_docs)]
    pub downstream_buffered_bytes: u64,
    #[allow(missing_docs)]
    pub downstream_rq_total: u64,
    #[allow(missing_docs)]
    pub downstream_rq_active: u64,
    #[allow(missing_docs)]
    pub responses_by_class: [u64; 6],
    #[allow(missing_docs)]
    pub local_replies: BTreeMap<String, u64>,
    #[allow(missing_docs)]
    pub upstream_cx_total: u64,
    #[allow(missing_docs)]
    pub upstream_cx_connect_fail: u64,
    #[allow(missing_docs)]
    pub upstream_cx_reused: u64,
    #[allow(missing_docs)]
    pub upstream_rq_retry: u64,
    #[allow(missing_docs)]
    pub upstream_rq_retry_overflow: u64,
    #[allow(missing_docs)]
    pub upstream_rq_timeout: u64,
    #[allow(missing_docs)]
    pub upstream_rq_pending_overflow: u64,
    #[allow(missing_docs)]
    pub downstream_cx_h2_total: u64,
    #[allow(missing_docs)]
    pub h2_streams_handed_off: u64,
    #[allow(missing_docs)]
    pub h2_goaway_sent: u64,
    #[allow(missing_docs)]
    pub tcp_cx_total: u64,
    #[allow(missing_docs)]
    pub tcp_bytes_sent: u64,
    #[allow(missing_docs)]
    pub tcp_bytes_received: u64,
    #[allow(missing_docs)]
    pub detected_http: u64,
    #[allow(missing_docs)]
    pub detected_tcp: u64,
    #[allow(missing_docs)]
    pub detect_timeout: u64,
    /// Merged request duration histogram.
    #[serde(skip)]
    pub request_duration_us: Histogram<u64>,
    /// mTLS and authorization counters.
    pub security: super::security::SecurityTotals,
    /// Counters of captured connections.
    pub capture: super::capture::CaptureTotals,
    /// Counters of mirrored requests.
    pub mirror: super::mirror::MirrorTotals,
    /// Istio's standard metrics.
    #[serde(skip)]
    pub istio: super::istio::IstioTotals,
    /// The proxy's own time per route and cluster.
    #[serde(skip)]
    pub overhead: Vec<super::overhead::OverheadEntry>,
    /// Access-log lines handed to the writer.
    pub access_log_lines: u64,
    /// Access-log lines dropped because a buffer or the writer's queue was full.
    pub access_log_dropped: u64,
    /// Tracing's counters (the exporter's are added by the admin server).
    pub(crate) tracing: super::trace::TraceTotals,
    /// Per cluster name.
    pub clusters: BTreeMap<String, ClusterTotals>,
    /// One row per worker that answered.
    pub per_worker: Vec<WorkerRow>,
}

/// One worker's own figures, for the per-worker metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerRow {
    /// The worker's index.
    pub worker: usize,
    /// Downstream connections accepted.
    pub downstream_cx_total: u64,
    /// Downstream connections open now.
    pub downstream_cx_active: u64,
    /// Requests received.
    pub downstream_rq_total: u64,
    /// Requests in flight now: this core's queue of work.
    pub downstream_rq_active: u64,
    /// HTTP/2 streams handed to other workers.
    pub h2_streams_handed_off: u64,
}

impl StatsTotals {
    /// An empty total to merge shards into.
    pub fn empty() -> Self {
        StatsTotals {
            workers: 0,
            downstream_cx_total: 0,
            downstream_cx_active: 0,
            downstream_cx_overflow: 0,
            downstream_cx_buffer_overflow: 0,
            downstream_buffered_bytes: 0,
            downstream_rq_total: 0,
            downstream_rq_active: 0,
            responses_by_class: [0; 6],
            local_replies: BTreeMap::new(),
            upstream_cx_total: 0,
            upstream_cx_connect_fail: 0,
            upstream_cx_reused: 0,
            upstream_rq_retry: 0,
            upstream_rq_retry_overflow: 0,
            upstream_rq_timeout: 0,
            upstream_rq_pending_overflow: 0,
            downstream_cx_h2_total: 0,
            h2_streams_handed_off: 0,
            h2_goaway_sent: 0,
            tcp_cx_total: 0,
            tcp_bytes_sent: 0,
            tcp_bytes_received: 0,
            detected_http: 0,
            detected_tcp: 0,
            detect_timeout: 0,
            request_duration_us: new_histogram(),
            security: Default::default(),
            capture: Default::default(),
            mirror: Default::default(),
            istio: Default::default(),
            overhead: Vec::new(),
            access_log_lines: 0,
            access_log_dropped: 0,
            tracing: Default::default(),
            clusters: BTreeMap::new(),
            per_worker: Vec::new(),
        }
    }

    /// Adds another shard's copy into this total.
    pub fn merge(&mut self, o: &StatsTotals) {
        self.workers += o.workers;
        self.downstream_cx_total += o.downstream_cx_total;
        self.downstream_cx_active += o.downstream_cx_active;
        self.downstream_cx_overflow += o.downstream_cx_overflow;
        self.downstream_cx_buffer_overflow += o.downstream_cx_buffer_overflow;
        self.downstream_buffered_bytes += o.downstream_buffered_bytes;
        self.downstream_rq_total += o.downstream_rq_total;
        self.downstream_rq_active += o.downstream_rq_active;
        for (a, b) in self.responses_by_class.iter_mut().zip(o.responses_by_class.iter()) {
            *a += b;
        }
        for (k, v) in &o.local_replies {
            *self.local_replies.entry(k.clone()).or_insert(0) += v;
        }
        self.upstream_cx_total += o.upstream_cx_total;
        self.upstream_cx_connect_fail += o.upstream_cx_connect_fail;
        self.upstream_cx_reused += o.upstream_cx_reused;
        self.upstream_rq_retry += o.upstream_rq_retry;
        self.upstream_rq_retry_overflow += o.upstream_rq_retry_overflow;
        self.upstream_rq_timeout += o.upstream_rq_timeout;
        self.upstream_rq_pending_overflow += o.upstream_rq_pending_overflow;
        self.downstream_cx_h2_total += o.downstream_cx_h2_total;
        self.h2_streams_handed_off += o.h2_streams_handed_off;
        self.h2_goaway_sent += o.h2_goaway_sent;
        self.tcp_cx_total += o.tcp_cx_total;
        self.tcp_bytes_sent += o.tcp_bytes_sent;
        self.tcp_bytes_received += o.tcp_bytes_received;
        self.detected_http += o.detected_http;
        self.detected_tcp += o.detected_tcp;
        self.detect_timeout += o.detect_timeout;
        self.security.merge(&o.security);
        self.capture.merge(&o.capture);
        self.mirror.merge(&o.mirror);
        self.istio.merge(&o.istio);
        super::overhead::merge(&mut self.overhead, &o.overhead);
        self.access_log_lines += o.access_log_lines;
        self.access_log_dropped += o.access_log_dropped;
        self.per_worker.extend(o.per_worker.iter().cloned());
        self.per_worker.sort_by_key(|r| r.worker);
        self.tracing.merge(&o.tracing);
        // Same bounds on both sides, so adding cannot fail; ignore the impossible error rather
        // than panic in the admin thread.
        let _ = self.request_duration_us.add(&o.request_duration_us);
        for (name, c) in &o.clusters {
            let t = self.clusters.entry(name.clone()).or_default();
            t.upstream_rq_total += c.upstream_rq_total;
            t.upstream_rq_active += c.upstream_rq_active;
            t.upstream_rq_retry += c.upstream_rq_retry;
            t.upstream_rq_timeout += c.upstream_rq_timeout;
            t.upstream_cx_active += c.upstream_cx_active;
            t.upstream_cx_overflow += c.upstream_cx_overflow;
            t.upstream_rq_pending_active += c.upstream_rq_pending_active;
            t.upstream_rq_pending_overflow += c.upstream_rq_pending_overflow;
            t.upstream_rq_retry_overflow += c.upstream_rq_retry_overflow;
            for (a, b) in t.upstream_rq_by_class.iter_mut().zip(c.upstream_rq_by_class.iter()) {
                *a += b;
            }
            for (addr, e) in &c.endpoints {
                let te = t.endpoints.entry(addr.clone()).or_default();
                te.rq_total += e.rq_total;
                te.rq_active += e.rq_active;
                te.cx_connect_fail += e.cx_connect_fail;
                te.cx_idle += e.cx_idle;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge() {
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        inc(&a.downstream_rq_total);
        inc(&b.downstream_rq_total);
        inc(&b.downstream_rq_total);
        a.record_status(200);
        b.record_status(503);
        b.record_local_reply("UH");
        a.record_duration_us(100);
        b.record_duration_us(300);
        let mut t = StatsTotals::empty();
        t.merge(&a.copy());
        t.merge(&b.copy());
        assert_eq!(t.workers, 2);
        assert_eq!(t.downstream_rq_total, 3);
        assert_eq!(t.responses_by_class[2], 1);
        assert_eq!(t.responses_by_class[5], 1);
        assert_eq!(t.local_replies.get("UH"), Some(&1));
        assert_eq!(t.request_duration_us.len(), 2);
        assert!(t.request_duration_us.max() >= 300);
    }

    #[test]
    fn gauge_saturates() {
        let s = WorkerStats::default();
        dec(&s.downstream_cx_active);
        assert_eq!(s.downstream_cx_active.get(), 0);
    }
}
