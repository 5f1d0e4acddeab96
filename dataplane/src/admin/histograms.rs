//! `GET :15000/stats/histograms`: the proxy's own time per request, as HdrHistograms merged
//! from every worker (`telemetry::overhead`).
//!
//! - JSON (the default): per (route, cluster) and for all of them together, the count and
//!   the percentiles in microseconds.
//! - `?format=hgrm`: HdrHistogram's percentile distribution (values in milliseconds, as the
//!   load generator writes its own), of all requests or of those matching `route=` and
//!   `cluster=`.
//! - `?reset`: the histograms start over after this reading, so a benchmark can read exactly
//!   its own window. Prometheus' `ringmesh_proxy_overhead_microseconds` never resets.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{json, text, AdminState};
use crate::telemetry::overhead::{self, OverheadEntry};
use crate::worker::WorkerCommand;

/// Every worker's histograms, merged; workers that do not answer within a second are skipped.
async fn gather(state: &AdminState, reset: bool) -> Vec<OverheadEntry> {
    let mut all = Vec::new();
    let mut replies = Vec::with_capacity(state.workers.len());
    for w in &state.workers {
        let (tx, rx) = flume::bounded(1);
        if w.send(WorkerCommand::Histograms { reset, reply: tx }).is_ok() {
            replies.push(rx);
        }
    }
    for rx in replies {
        if let Ok(Ok(copy)) = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await {
            overhead::merge(&mut all, &copy);
        }
    }
    all.sort_by(|a, b| (&a.route, &a.cluster).cmp(&(&b.route, &b.cluster)));
    all
}

#[derive(Serialize)]
struct Summary {
    route: String,
    cluster: String,
    count: u64,
    min: u64,
    mean: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Summary {
    fn of(route: &str, cluster: &str, h: &hdrhistogram::Histogram<u64>) -> Self {
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        Summary {
            route: route.to_string(),
            cluster: cluster.to_string(),
            count: h.len(),
            min: if empty { 0 } else { h.min() },
            mean: if empty { 0.0 } else { (h.mean() * 10.0).round() / 10.0 },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if empty { 0 } else { h.max() },
        }
    }
}

#[derive(Serialize)]
struct Report {
    unit: &'static str,
    what: &'static str,
    reset: bool,
    all: Summary,
    histograms: Vec<Summary>,
}

/// Answers one request; `query` is the URI's query string.
pub(super) async fn serve(state: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut format = "json";
    let (mut reset, mut route, mut cluster) = (false, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "format" if v == "json" || v == "hgrm" => format = if v == "hgrm" { "hgrm" } else { "json" },
            "reset" => reset = true,
            "route" => route = Some(v.to_string()),
            "cluster" => cluster = Some(v.to_string()),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {pair:?}: format=json|hgrm, reset, route=, cluster=\n"),
                    "text/plain",
                )
            }
        }
    }
    let entries = gather(state, reset).await;
    let chosen = entries
        .iter()
        .filter(|e| route.as_deref().is_none_or(|r| *e.route == *r))
        .filter(|e| cluster.as_deref().is_none_or(|c| *e.cluster == *c));
    let mut merged = None::<hdrhistogram::Histogram<u64>>;
    for e in chosen.clone() {
        match &mut merged {
            Some(m) => {
                let _ = m.add(&e.hdr);
            }
            None => merged = Some(e.hdr.clone()),
        }
    }
    let merged = merged.unwrap_or_else(overhead::empty_histogram);
    if format == "hgrm" {
        let mut out = Vec::new();
        if let Err(e) = ringmesh_api::hgrm::write_percentile_distribution(&merged, &mut out, 1000.0) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), "text/plain");
        }
        return text(StatusCode::OK, out, "text/plain");
    }
    json(&Report {
        unit: "microseconds",
        what: "the proxy's own time per request: request head in to first byte upstream, plus response head in to first byte to the client",
        reset,
        all: Summary::of(
            route.as_deref().unwrap_or("*"),
            cluster.as_deref().unwrap_or("*"),
            &merged,
        ),
        histograms: chosen.map(|e| Summary::of(&e.route, &e.cluster, &e.hdr)).collect(),
    })
}
