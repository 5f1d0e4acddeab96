//! Per-thread measurement state: one HDR histogram and plain counters per worker thread.
//!
//! Each load thread owns its `ThreadStats` outright (no atomics, no locks on the request
//! path) and hands it back when the run ends; the threads' histograms are then merged. Only
//! successful responses are recorded in the latency histogram: a refused connection or a `503`
//! that comes back in 20 µs would otherwise make a failing system look fast. Failures are
//! counted by kind, and the time until each failure was known goes into a histogram of its own
//! (`error_hist`), so "fast failures" and "slow failures" can still be told apart.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest recordable latency, in microseconds.
pub(crate) const HIST_LOW_US: u64 = 1;
/// Highest recordable latency (60 s), in microseconds; longer ones saturate at this value.
pub(crate) const HIST_HIGH_US: u64 = 60_000_000;
/// Significant decimal digits kept by the histogram.
pub(crate) const HIST_SIGFIG: u8 = 3;

/// A fresh latency histogram with the bounds every part of the crate agrees on.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant bounds well inside hdrhistogram's limits (checked by a unit test): cannot fail.
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG).expect("constant histogram bounds are valid")
}

/// How a request failed. Counted, never recorded as latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Could not connect (refused, unreachable, connect timeout).
    Connect,
    /// The connection was reset or closed after part of the response arrived (or, HTTP/2 and
    /// TCP, before the full response arrived).
    Reset,
    /// HTTP/1.1: the connection closed (FIN or reset) after the request was written and before
    /// any byte of its response: a server that closed a keep-alive connection while the
    /// request was on its way, or that went away. The request was sent, so it is a failure;
    /// a connection already closed *before* the request was written is not (the generator
    /// looks before reusing one, and reconnects: `reconnects` in the report).
    Unanswered,
    /// No complete response within the request timeout.
    Timeout,
    /// The response could not be parsed as HTTP/1.x.
    Malformed,
    /// A 4xx status.
    Status4xx,
    /// A 5xx status.
    Status5xx,
    /// A gRPC call that ended with a `grpc-status` other than OK (0).
    GrpcStatus,
    /// An HTTP/2 stream reset by the server (`RST_STREAM`).
    StreamReset,
    /// An HTTP/2 stream the server refused unprocessed — above the last stream id of its
    /// `GOAWAY`, or reset with `REFUSED_STREAM` — twice: such a request is sent once more on
    /// another stream (RFC 9113 §8.7 allows it: the server did nothing with it; counted in
    /// `retried_unprocessed`), and counted here only when that one is refused too.
    Refused,
    /// The TLS handshake failed (untrusted certificate, no `h2` ALPN, bad client cert).
    Tls,
}

/// Failure counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// Connection attempts that failed.
    pub connect: u64,
    /// Connections reset or closed mid-exchange.
    pub reset: u64,
    /// HTTP/1.1 requests written on a connection that then closed before any byte of the
    /// response ([`ErrorKind::Unanswered`]).
    pub unanswered: u64,
    /// Requests that timed out.
    pub timeout: u64,
    /// Unparseable responses.
    pub malformed: u64,
    /// 4xx responses.
    pub status_4xx: u64,
    /// 5xx responses.
    pub status_5xx: u64,
    /// gRPC calls with a non-OK `grpc-status`.
    pub grpc_status: u64,
    /// HTTP/2 streams reset by the peer.
    pub stream_reset: u64,
    /// HTTP/2 requests refused unprocessed twice ([`ErrorKind::Refused`]).
    pub refused: u64,
    /// Failed TLS handshakes.
    pub tls: u64,
}

impl ErrorCounts {
    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.connect
            + self.reset
            + self.unanswered
            + self.timeout
            + self.malformed
            + self.status_4xx
            + self.status_5xx
            + self.grpc_status
            + self.stream_reset
            + self.refused
            + self.tls
    }

    /// Counts one failure.
    pub(crate) fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Reset => self.reset += 1,
            ErrorKind::Unanswered => self.unanswered += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Malformed => self.malformed += 1,
            ErrorKind::Status4xx => self.status_4xx += 1,
            ErrorKind::Status5xx => self.status_5xx += 1,
            ErrorKind::GrpcStatus => self.grpc_status += 1,
            ErrorKind::StreamReset => self.stream_reset += 1,
            ErrorKind::Refused => self.refused += 1,
            ErrorKind::Tls => self.tls += 1,
        }
    }

    pub(crate) fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.reset += o.reset;
        self.unanswered += o.unanswered;
        self.timeout += o.timeout;
        self.malformed += o.malformed;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.grpc_status += o.grpc_status;
        self.stream_reset += o.stream_reset;
        self.refused += o.refused;
        self.tls += o.tls;
    }

    /// Failures that still produced an HTTP response or a gRPC status (they count toward the
    /// achieved rate).
    pub fn answered(&self) -> u64 {
        self.status_4xx + self.status_5xx + self.grpc_status
    }
}

/// One thread's results.
#[derive(Debug)]
pub(crate) struct ThreadStats {
    /// Latency of successful requests.
    pub(crate) hist: Histogram<u64>,
    /// Time from due (or send) until a failed request's failure was known.
    pub(crate) error_hist: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: ErrorCounts,
    /// Requests completed (any outcome) before the measurement window opened.
    pub(crate) warmup: u64,
    /// Requests completed inside the window that were due during the warmup: the generator
    /// or the server had fallen behind its schedule before the window opened.
    pub(crate) late_from_warmup: u64,
    /// Requests written to a socket, warmup included (for CPU-per-request figures).
    pub(crate) sent: u64,
    /// Open loop only: requests due inside the window that were never sent because their
    /// connection was still waiting on an earlier response when the run ended.
    pub(crate) unsent: u64,
    /// Connections found closed by the server before a request was written on them (HTTP/1.1:
    /// closed while idle; HTTP/2: `GOAWAY` received); the request went on a new connection.
    pub(crate) reconnects: u64,
    /// HTTP/2 requests refused unprocessed and sent once more (see [`ErrorKind::Refused`]).
    pub(crate) retried_unprocessed: u64,
    /// With `--hlog`: interval length and one histogram per interval of the window.
    pub(crate) intervals: Option<(std::time::Duration, Vec<Histogram<u64>>)>,
}

impl ThreadStats {
    pub(crate) fn new() -> Self {
        Self {
            hist: new_histogram(),
            error_hist: new_histogram(),
            ok: 0,
            errors: ErrorCounts::default(),
            warmup: 0,
            late_from_warmup: 0,
            sent: 0,
            unsent: 0,
            reconnects: 0,
            retried_unprocessed: 0,
            intervals: None,
        }
    }

    /// The same, recording interval histograms every `interval` when set.
    pub(crate) fn with_intervals(interval: Option<std::time::Duration>) -> Self {
        Self {
            intervals: interval.map(|i| (i, Vec::new())),
            ..Self::new()
        }
    }

    /// Records `us` into the interval containing `since_start` (time from the window's
    /// opening to the request's completion), when interval recording is on.
    pub(crate) fn record_interval(&mut self, since_start: std::time::Duration, us: u64) {
        if let Some((len, hists)) = &mut self.intervals {
            let i = (since_start.as_nanos() / len.as_nanos().max(1)) as usize;
            if i >= crate::hlog::MAX_INTERVALS as usize {
                return;
            }
            while hists.len() <= i {
                hists.push(crate::hlog::new_interval_histogram());
            }
            let _ = hists[i].record(us.min(HIST_HIGH_US));
        }
    }

    pub(crate) fn merge(&mut self, o: &ThreadStats) {
        merge_histogram(&mut self.hist, &o.hist);
        merge_histogram(&mut self.error_hist, &o.error_hist);
        self.ok += o.ok;
        self.errors.merge(&o.errors);
        self.warmup += o.warmup;
        self.late_from_warmup += o.late_from_warmup;
        self.sent += o.sent;
        self.unsent += o.unsent;
        self.reconnects += o.reconnects;
        self.retried_unprocessed += o.retried_unprocessed;
        if let Some((len, theirs)) = &o.intervals {
            let (_, mine) = self.intervals.get_or_insert_with(|| (*len, Vec::new()));
            while mine.len() < theirs.len() {
                mine.push(crate::hlog::new_interval_histogram());
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                let _ = m.add(t);
            }
        }
    }
}

/// Adds `from` into `into`; same bounds on both sides, so adding cannot fail, but saturate
/// value by value should it ever.
fn merge_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bounds_are_valid_and_saturate() {
        let mut h = new_histogram();
        h.saturating_record(HIST_HIGH_US * 10);
        h.saturating_record(0);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= HIST_HIGH_US);
    }

    #[test]
    fn errors_add_and_merge() {
        let mut a = ErrorCounts::default();
        a.add(ErrorKind::Connect);
        a.add(ErrorKind::Status5xx);
        let mut b = ErrorCounts::default();
        b.add(ErrorKind::Status4xx);
        b.merge(&a);
        assert_eq!(b.total(), 3);
        assert_eq!(b.answered(), 2);
    }
}
