//! Tracing's counters: spans made and spans a worker dropped (per core, `Cell`s like every
//! other worker counter), and the exporter's (on the control thread, atomics read by the admin
//! server), merged at scrape time into one [`TraceTotals`].

use std::cell::Cell;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// One worker's tracing counters.
#[derive(Debug, Default)]
pub(crate) struct TraceStats {
    /// Spans this worker made (sampled requests with an exporter configured).
    pub(crate) spans: Cell<u64>,
    /// Spans this worker dropped because the hand-off to the exporter was full.
    pub(crate) dropped: Cell<u64>,
}

impl TraceStats {
    /// A copy of this shard.
    pub(crate) fn totals(&self) -> TraceTotals {
        TraceTotals {
            spans: self.spans.get(),
            dropped_queue_full: self.dropped.get(),
            ..TraceTotals::default()
        }
    }
}

/// The exporter's counters (written by the control thread only).
#[derive(Debug, Default)]
pub(crate) struct ExportStats {
    /// Spans the collector accepted.
    pub(crate) exported: AtomicU64,
    /// Export requests that failed after their retries.
    pub(crate) failures: AtomicU64,
    /// Spans that did not fit the exporter's queue.
    pub(crate) dropped_queue_full: AtomicU64,
    /// Spans of failed export requests (and spans the collector rejected).
    pub(crate) dropped_export_failed: AtomicU64,
}

impl ExportStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Tracing counters of all workers and the exporter.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TraceTotals {
    /// Spans made.
    pub(crate) spans: u64,
    /// Spans the collector accepted.
    pub(crate) exported: u64,
    /// Export requests that failed after their retries.
    pub(crate) export_failures: u64,
    /// Spans dropped because a worker's hand-off or the exporter's queue was full.
    pub(crate) dropped_queue_full: u64,
    /// Spans dropped because their export failed or the collector rejected them.
    pub(crate) dropped_export_failed: u64,
}

impl TraceTotals {
    /// Adds another worker's copy.
    pub(crate) fn merge(&mut self, o: &TraceTotals) {
        self.spans += o.spans;
        self.exported += o.exported;
        self.export_failures += o.export_failures;
        self.dropped_queue_full += o.dropped_queue_full;
        self.dropped_export_failed += o.dropped_export_failed;
    }

    /// Adds the exporter's counters.
    pub(crate) fn add_exporter(&mut self, e: &ExportStats) {
        self.exported += e.exported.load(Ordering::Relaxed);
        self.export_failures += e.failures.load(Ordering::Relaxed);
        self.dropped_queue_full += e.dropped_queue_full.load(Ordering::Relaxed);
        self.dropped_export_failed += e.dropped_export_failed.load(Ordering::Relaxed);
    }

    /// Writes the counters in Prometheus' text format.
    pub(crate) fn write_prometheus(&self, out: &mut String) {
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            out,
            "ringmesh_tracing_spans_total",
            "Spans made (sampled requests, with an exporter configured).",
            self.spans,
        );
        counter(
            out,
            "ringmesh_tracing_spans_exported_total",
            "Spans the OTLP collector accepted.",
            self.exported,
        );
        counter(
            out,
            "ringmesh_tracing_export_failures_total",
            "OTLP export requests that failed after their retries.",
            self.export_failures,
        );
        let name = "ringmesh_tracing_spans_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Spans dropped: a worker's hand-off or the exporter's queue was full (queue_full), or the export failed or the collector rejected them (export_failed).\n# TYPE {name} counter\n{name}{{reason=\"queue_full\"}} {}\n{name}{{reason=\"export_failed\"}} {}",
            self.dropped_queue_full, self.dropped_export_failed
        );
    }
}
