//! What a load run reports, in the three forms people and tools read.
//!
//! * A terminal summary in the spirit of wrk2, led by the success rate: counts, errors by kind,
//!   achieved vs target rate, the latency percentiles of successes and, apart, of failures,
//!   with a loud verdict when the run failed more requests than `--max-error-rate` allows or
//!   fell short of its rate (an open-loop latency figure at a rate that was not achieved
//!   describes a different load).
//! * JSON for scripts and the benchmark (`success_rate` first, then `requests`, `errors`,
//!   `duration_s`, `rate_rps`, `latency_us.{p50,p90,p99,p999,p9999,max}`, `error_latency_us` …).
//!
//! A request *succeeds* when it is answered with a 2xx or 3xx status (gRPC: `grpc-status` 0;
//! TCP: the bytes echoed back). Everything else fails: any status ≥ 400, a non-OK
//! `grpc-status`, and every transport failure (connect, reset, timeout, malformed, stream
//! reset, TLS).
//! * HdrHistogram's percentile-distribution text (`.hgrm`), byte-compatible with Java
//!   HdrHistogram's `outputPercentileDistribution` and wrk2's `--latency` output, in
//!   milliseconds, so the standard plotting tools read it.

use std::fmt::Write as _;
use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::ErrorCounts;

/// Open loop (fixed rate, latency from due time) or closed loop (as fast as possible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// Fixed rate; coordinated-omission corrected latency.
    Open,
    /// Back-to-back requests; throughput.
    Closed,
}

/// Latency percentiles of successful requests, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Smallest recorded value.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest recorded value.
    pub max: u64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Successful requests over all requests in the window (`ok / requests`; 0 when none
    /// completed). First, so that nobody reads a latency without it.
    pub success_rate: f64,
    /// Largest fraction of failed requests the run may have and still count as healthy.
    pub max_error_rate: f64,
    /// Whether the run is healthy: error rate within `max_error_rate`, at least one request
    /// completed, and (open loop) at least 99% of the target rate achieved.
    pub healthy: bool,
    /// Open or closed loop.
    pub mode: LoadMode,
    /// The URL loaded.
    pub url: String,
    /// Target rate (open loop only).
    pub target_rate_rps: Option<f64>,
    /// Connections used.
    pub connections: usize,
    /// Threads used.
    pub threads: usize,
    /// Requests in the measurement window, any outcome (`ok + errors`).
    pub requests: u64,
    /// Requests answered with 2xx/3xx — the ones in the latency histogram.
    pub ok: u64,
    /// Failed requests, all kinds.
    pub errors: u64,
    /// Failed requests by kind.
    pub errors_by_kind: ErrorCounts,
    /// Open loop: requests due in the window never sent because their connection was still
    /// blocked on an earlier response at the end.
    pub unsent: u64,
    /// Connections the server had closed (HTTP/1.1) or sent `GOAWAY` on (HTTP/2) before a
    /// request was written on them: the request went on a new connection instead. Not
    /// failures: nothing was sent on the closed connection (warmup included).
    pub reconnects: u64,
    /// HTTP/2 requests the server refused unprocessed (above its `GOAWAY`'s last stream id, or
    /// `REFUSED_STREAM`) and that were sent once more on a new stream (RFC 9113 §8.7); only a
    /// second refusal counts as a failure (`errors_by_kind.refused`).
    pub retried_unprocessed: u64,
    /// Requests completed during warmup (not in any other figure).
    pub warmup_requests: u64,
    /// Requests completed in the window that were due during the warmup: the schedule had
    /// fallen behind before the window opened (an overloaded server or generator).
    pub late_from_warmup: u64,
    /// Requests written to sockets in total, warmup included.
    pub sent_total: u64,
    /// Length of the measurement window in seconds.
    pub duration_s: f64,
    /// Length of the warmup in seconds.
    pub warmup_s: f64,
    /// Achieved rate: responses (any status) in the window per second.
    pub rate_rps: f64,
    /// Successful responses in the window per second.
    pub ok_rate_rps: f64,
    /// Latency of successful requests (open loop: from the due time).
    pub latency_us: LatencySummary,
    /// Failed requests: time from the due time (closed loop: the send) until the failure was
    /// known. Kept apart so that fast failures never pass for fast service.
    pub error_latency_us: LatencySummary,
    /// True when the run was stopped early (Ctrl-C or [`crate::progress::RunControl::stop`]):
    /// `duration_s` is then the part of the window that ran.
    pub interrupted: bool,
    /// Per-interval histograms, when the run recorded them (`--hlog`).
    #[serde(skip)]
    pub intervals: Option<crate::hlog::IntervalSeries>,
    /// The merged histogram of successes (microseconds), for `.hgrm` output and merging.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
    /// The merged histogram of failures (microseconds).
    #[serde(skip)]
    pub error_histogram: Histogram<u64>,
}

/// Why a finished run does not count as healthy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunProblem {
    /// No request completed inside the measurement window.
    NothingCompleted,
    /// More requests failed than `max_error_rate` allows.
    TooManyErrors {
        /// Failed fraction.
        error_rate: f64,
        /// Allowed fraction.
        max: f64,
    },
    /// An open-loop run achieved under [`RATE_TOLERANCE`] of its target rate.
    UnderTarget {
        /// Achieved fraction of the target.
        fraction: f64,
    },
}

impl std::fmt::Display for RunProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RunProblem::NothingCompleted => write!(f, "no request completed in the measurement window"),
            RunProblem::TooManyErrors { error_rate, max } => write!(
                f,
                "{:.2}% of requests failed, more than --max-error-rate {} allows",
                error_rate * 100.0,
                max
            ),
            RunProblem::UnderTarget { fraction } => write!(
                f,
                "achieved {:.1}% of the target rate (< {:.0}%)",
                fraction * 100.0,
                RATE_TOLERANCE * 100.0
            ),
        }
    }
}

impl LatencySummary {
    /// Percentiles of `h`; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            min: h.min(),
            mean: h.mean(),
            stdev: h.stdev(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {}, stdev {})",
            fmt_us(self.p50),
            fmt_us(self.p90),
            fmt_us(self.p99),
            fmt_us(self.p999),
            fmt_us(self.p9999),
            fmt_us(self.max),
            fmt_us(self.mean as u64),
            fmt_us(self.stdev as u64)
        )
    }
}

/// Fraction of the target rate a run must achieve to count as having run at that rate.
pub const RATE_TOLERANCE: f64 = 0.99;

impl LoadReport {
    /// Achieved rate as a fraction of the target (open loop); `None` for closed loop.
    pub fn rate_fraction(&self) -> Option<f64> {
        self.target_rate_rps.filter(|&t| t > 0.0).map(|t| self.rate_rps / t)
    }

    /// False when an open-loop run achieved under 99% of its target rate.
    pub fn met_target(&self) -> bool {
        self.rate_fraction().is_none_or(|f| f >= RATE_TOLERANCE)
    }

    /// Failed requests over all requests (1 when none completed).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Everything that makes this run unhealthy; empty for a healthy run.
    pub fn problems(&self) -> Vec<RunProblem> {
        let mut p = Vec::new();
        if self.requests == 0 {
            p.push(RunProblem::NothingCompleted);
        } else if self.error_rate() > self.max_error_rate {
            p.push(RunProblem::TooManyErrors {
                error_rate: self.error_rate(),
                max: self.max_error_rate,
            });
        }
        if !self.met_target() {
            p.push(RunProblem::UnderTarget {
                fraction: self.rate_fraction().unwrap_or(0.0),
            });
        }
        p
    }

    /// The JSON form (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Writes the `.hgrm` percentile distribution (values in milliseconds).
    pub fn write_hgrm(&self, out: &mut impl Write) -> io::Result<()> {
        write_percentile_distribution(&self.histogram, out, 1000.0)
    }

    /// The human summary printed by the CLI.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let e = &self.errors_by_kind;
        let mode = match self.mode {
            LoadMode::Open => format!("open loop at {} rps", fmt_rate(self.target_rate_rps.unwrap_or(0.0))),
            LoadMode::Closed => "closed loop (max throughput)".to_owned(),
        };
        let _ = writeln!(
            s,
            "{} — {mode}, {} connections, {} threads, {:.1}s (+{:.1}s warmup)",
            self.url, self.connections, self.threads, self.duration_s, self.warmup_s
        );
        let _ = writeln!(
            s,
            "  success   {:.2}% ({} of {} requests ok; at most {:.2}% may fail)",
            self.success_rate * 100.0,
            self.ok,
            self.requests,
            self.max_error_rate * 100.0
        );
        let _ = writeln!(
            s,
            "  requests  {} ({} ok, {} errors: connect {}, reset/closed {}, unanswered {}, timeout {}, malformed {}, 4xx {}, 5xx {}){}",
            self.requests,
            self.ok,
            self.errors,
            e.connect,
            e.reset,
            e.unanswered,
            e.timeout,
            e.malformed,
            e.status_4xx,
            e.status_5xx,
            if self.unsent > 0 {
                format!(", {} due in the window never sent", self.unsent)
            } else {
                String::new()
            }
        );
        if e.grpc_status + e.stream_reset + e.refused + e.tls > 0 {
            let _ = writeln!(
                s,
                "            grpc-status {}, stream reset {}, refused {}, tls {}",
                e.grpc_status, e.stream_reset, e.refused, e.tls
            );
        }
        if self.retried_unprocessed > 0 {
            let _ = writeln!(
                s,
                "            {} HTTP/2 requests refused unprocessed by the server (GOAWAY, REFUSED_STREAM) were sent again",
                self.retried_unprocessed
            );
        }
        if self.reconnects > 0 {
            let _ = writeln!(
                s,
                "            {} connections found closed by the server before a request was sent on them (reopened; not failures)",
                self.reconnects
            );
        }
        if self.late_from_warmup > 0 {
            let _ = writeln!(
                s,
                "            {} of them were due during the warmup (the schedule had already fallen behind)",
                self.late_from_warmup
            );
        }
        match self.rate_fraction() {
            Some(f) => {
                let _ = writeln!(
                    s,
                    "  rate      {} rps answered of {} rps target ({:.2}%), {} rps successful",
                    fmt_rate(self.rate_rps),
                    fmt_rate(self.target_rate_rps.unwrap_or(0.0)),
                    f * 100.0,
                    fmt_rate(self.ok_rate_rps)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "  rate      {} rps answered, {} rps successful",
                    fmt_rate(self.rate_rps),
                    fmt_rate(self.ok_rate_rps)
                );
            }
        }
        let from = match self.mode {
            LoadMode::Open => "from due time",
            LoadMode::Closed => "from send",
        };
        let _ = writeln!(s, "  latency ({from}, successful requests only)");
        if self.ok == 0 {
            let _ = writeln!(s, "    none: no request succeeded");
        } else {
            let _ = writeln!(s, "    {}", self.latency_us.line());
        }
        if self.errors > 0 {
            let _ = writeln!(s, "  failed requests ({from} until the failure was known)");
            let _ = writeln!(s, "    {}", self.error_latency_us.line());
        }
        if self.interrupted {
            let _ = writeln!(
                s,
                "\n*** INTERRUPTED: these figures cover the first {:.1}s of the window only.",
                self.duration_s
            );
        }
        for p in self.problems() {
            match p {
                RunProblem::UnderTarget { fraction } => {
                    let _ = writeln!(
                        s,
                        "\n!!! UNDER TARGET RATE: achieved {} rps = {:.1}% of the {} rps target (< {:.0}%).\n!!! The latency above was measured at a lower load than asked for; do not quote it.",
                        fmt_rate(self.rate_rps),
                        fraction * 100.0,
                        fmt_rate(self.target_rate_rps.unwrap_or(0.0)),
                        RATE_TOLERANCE * 100.0
                    );
                }
                RunProblem::TooManyErrors { .. } | RunProblem::NothingCompleted => {
                    let _ = writeln!(s, "\n!!! FAILED: {p}.");
                }
            }
        }
        s
    }
}

/// Formats microseconds with a unit that keeps three significant digits readable.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

pub use ringmesh_api::hgrm::write_percentile_distribution;

/// One data row of an `.hgrm` file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HgrmRow {
    /// Value (in the file's unit, milliseconds for ours).
    pub value: f64,
    /// Quantile in [0, 1].
    pub quantile: f64,
    /// Count of values at or below this one.
    pub total_count: u64,
}

/// Parses the data rows of an `.hgrm` percentile distribution, ignoring the header and the
/// `#[...]` footer; any other line that is not 3–4 numeric columns is an error.
pub fn parse_hgrm(text: &str) -> Result<Vec<HgrmRow>, String> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("Value") {
            continue;
        }
        let cols: Vec<&str> = t.split_whitespace().collect();
        if !(3..=4).contains(&cols.len()) {
            return Err(format!("line {}: expected 3 or 4 columns: {line:?}", n + 1));
        }
        let bad = |what| format!("line {}: bad {what}: {line:?}", n + 1);
        rows.push(HgrmRow {
            value: cols[0].parse().map_err(|_| bad("value"))?,
            quantile: cols[1].parse().map_err(|_| bad("percentile"))?,
            total_count: cols[2].parse().map_err(|_| bad("total count"))?,
        });
    }
    Ok(rows)
}

/// Brackets the value at `quantile` from parsed `.hgrm` rows: the file only has rows at its
/// percentile ticks, so the exact percentile lies between the last row below `quantile`
/// (`lo`) and the first row at or above it (`hi`).
pub fn hgrm_bracket(rows: &[HgrmRow], quantile: f64) -> Option<(f64, f64)> {
    let i = rows.iter().position(|r| r.quantile >= quantile)?;
    let hi = rows[i].value;
    let lo = if i == 0 { hi } else { rows[i - 1].value };
    Some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_matches_java_layout_and_round_trips() {
        let mut h = crate::load::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        let mut out = Vec::new();
        write_percentile_distribution(&h, &mut out, 1000.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines.next().unwrap(), "");
        assert!(text.contains("#[Buckets = "), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        let rows = parse_hgrm(&text).unwrap();
        assert_eq!(rows.last().unwrap().total_count, 10_000);
        assert!((rows.last().unwrap().quantile - 1.0).abs() < 1e-12);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let (lo, hi) = hgrm_bracket(&rows, q).unwrap();
            let v = h.value_at_quantile(q) as f64 / 1000.0;
            assert!(lo - 0.0005 <= v && v <= hi + 0.0005, "q{q}: {v} not in [{lo}, {hi}]");
        }
        // p50 sits exactly on a tick.
        let (_, p50) = hgrm_bracket(&rows, 0.5).unwrap();
        assert!((p50 - h.value_at_quantile(0.5) as f64 / 1000.0).abs() < 0.0005);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse_hgrm("1.0 0.5\n").is_err());
        assert!(parse_hgrm("x 0.5 3\n").is_err());
    }
}
