//! Telemetry: per-core counters and histograms, summed only when someone asks.
//!
//! Each worker owns its [`stats::WorkerStats`] shard: plain `Cell<u64>` counters and an
//! HdrHistogram, written without atomics on the request path. The admin side sends each worker a
//! query over a channel and merges the copies it gets back ([`stats::StatsTotals`]); nothing on
//! the request path ever waits for that. Log lines a worker may repeat for every request go
//! through its [`log_limit::LogLimiter`].

/// A set of plain counters of one kind, declared once with their Prometheus names and help:
/// the per-worker shard (`$stats`, `Cell`s), its copy summed over workers (`$totals`), the
/// merge and the exposition all follow from the list.
macro_rules! counter_set {
    ($(#[$smeta:meta])* $stats:ident, $(#[$tmeta:meta])* $totals:ident {
        $($field:ident => $metric:literal, $help:literal;)*
    }) => {
        $(#[$smeta])*
        #[derive(Debug, Default)]
        pub struct $stats {
            $(#[doc = $help] pub(crate) $field: std::cell::Cell<u64>,)*
        }

        $(#[$tmeta])*
        #[derive(Debug, Clone, Default, serde::Serialize)]
        pub struct $totals {
            $(#[doc = $help] pub $field: u64,)*
        }

        impl $stats {
            /// A copy of this shard.
            pub fn totals(&self) -> $totals {
                $totals { $($field: self.$field.get(),)* }
            }
        }

        impl $totals {
            /// Adds another shard's copy.
            pub fn merge(&mut self, o: &$totals) {
                $(self.$field += o.$field;)*
            }

            /// Writes every counter in Prometheus' text format.
            pub fn write_prometheus(&self, out: &mut String) {
                use std::fmt::Write as _;
                $(
                    let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter\n{} {}", $metric, $help, $metric, $metric, self.$field);
                )*
            }
        }
    };
}

pub mod access_log;
pub mod capture;
pub mod istio;
pub mod log_limit;
pub mod mirror;
pub mod overhead;
pub mod prometheus;
pub(crate) mod request;
pub mod security;
pub mod stats;
pub(crate) mod trace;

use crate::worker::Worker;

/// A request ended: its facts go to this worker's shards — the duration and the proxy's own
/// time, Istio's metrics, the access log, the trace span. Called once per request by the
/// HTTP/1.1 connection loop and by each HTTP/2 call, after the response (or the reply) went
/// out. `route` is the route that matched, if one did; `conn` is the inbound connection's
/// side (the peer's proven identity, the address it reached), `None` on outbound listeners.
pub(crate) fn finish(
    worker: &Worker,
    view: &crate::state::WorkerSnapshot,
    facts: &request::Facts,
    route: Option<&ringmesh_api::snapshot::Route>,
    req: &request::RequestSide<'_>,
    conn: Option<&crate::tls::InboundConn>,
) {
    worker
        .stats
        .record_duration_us(facts.started.elapsed().as_micros() as u64);
    let snapshot = &view.snapshot;
    let endpoint = facts.endpoint.get().map(|e| e as usize);
    worker.stats.istio.record_http(snapshot, facts, endpoint, conn);
    if let (Some(route), Some(cluster), Some(us)) = (route, facts.cluster.get(), facts.overhead_us()) {
        worker.stats.overhead.record(snapshot, route, cluster, us);
    }
    // Before the access log: a request answered before its context was read gets one here,
    // and `%TRACE_ID%` shows it.
    trace::on_finish(worker, view, facts, route, req, conn);
    if let Some(cfg) = &snapshot.telemetry.access_log {
        let line = access_log::Line {
            snapshot,
            facts,
            route,
            req,
            conn,
        };
        worker.stats.access_log.log(cfg, &line);
    }
}
