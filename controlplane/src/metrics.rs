//! The control plane's own metrics, served on `--metrics-listen` (Istio's monitoring port
//! 15014, `/metrics`): proxies connected, pushes and how long a change took to reach a proxy,
//! ACKs and NACKs, certificates issued and refused.
//!
//! Each figure goes out under ringmesh's name and, where Istio's control plane has the same
//! one, under Istio's too (`pilot_xds`, `pilot_xds_pushes`, `pilot_total_xds_rejects`,
//! `pilot_proxy_convergence_time`, `citadel_server_success_cert_issuance_count`), so its
//! dashboards and alerts read them unchanged. Counters are atomics: the control plane is not on
//! a request path, and a push or an ACK is rare next to their cost.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};

/// Upper bounds of the push-time histogram, seconds (Istio's `pilot_proxy_convergence_time`
/// buckets).
pub const PUSH_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// The counters, shared by every stream task.
#[derive(Debug, Default)]
pub struct Metrics {
    pushes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    certificates_issued: AtomicU64,
    certificates_refused: AtomicU64,
    push_time: Histogram,
}

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations at or below each of [`PUSH_BUCKETS`], not cumulative.
    buckets: [AtomicU64; PUSH_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = PUSH_BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in PUSH_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What the exposition needs from the control plane's state at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Proxies with an open discovery stream to this replica.
    pub proxies_connected: u64,
    /// The configuration generation (the version of the next snapshots).
    pub generation: u64,
}

impl Metrics {
    /// A snapshot (whole, or the parts of one delta) was sent to a proxy; `since_change` is
    /// the time from the change that caused it, `None` for a stream's first push (no change
    /// caused it).
    pub fn pushed(&self, since_change: Option<Duration>) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = since_change {
            self.push_time.observe(d);
        }
    }

    /// A proxy acknowledged a snapshot.
    pub fn acked(&self) {
        self.acks.fetch_add(1, Ordering::Relaxed);
    }

    /// A proxy refused a snapshot.
    pub fn nacked(&self) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
    }

    /// A CSR was answered: signed, or refused.
    pub fn certificate(&self, issued: bool) {
        let c = if issued {
            &self.certificates_issued
        } else {
            &self.certificates_refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let pushes = load(&self.pushes);
        let nacks = load(&self.nacks);
        let issued = load(&self.certificates_issued);
        metric(
            "ringmesh_control_proxies_connected",
            "gauge",
            "Proxies with an open discovery stream to this replica.",
            g.proxies_connected,
        );
        metric(
            "pilot_xds",
            "gauge",
            "Proxies connected to this replica (Istio's name).",
            g.proxies_connected,
        );
        metric(
            "ringmesh_control_config_generation",
            "gauge",
            "The configuration generation: the version of the next snapshots.",
            g.generation,
        );
        metric(
            "ringmesh_control_pushes_total",
            "counter",
            "Snapshots sent to proxies (a delta's parts count once).",
            pushes,
        );
        metric(
            "pilot_xds_pushes",
            "counter",
            "Snapshots sent to proxies (Istio's name).",
            pushes,
        );
        metric(
            "ringmesh_control_acks_total",
            "counter",
            "Snapshots proxies acknowledged.",
            load(&self.acks),
        );
        metric(
            "ringmesh_control_nacks_total",
            "counter",
            "Snapshots proxies refused (NACK, with the compiler's diagnostics; `ringmesh proxy-status` names them).",
            nacks,
        );
        metric(
            "pilot_total_xds_rejects",
            "counter",
            "Snapshots proxies refused (Istio's name).",
            nacks,
        );
        metric(
            "ringmesh_control_certificates_issued_total",
            "counter",
            "Workload certificates signed by the mesh CA.",
            issued,
        );
        metric(
            "citadel_server_success_cert_issuance_count",
            "counter",
            "Workload certificates signed by the mesh CA (Istio's name).",
            issued,
        );
        metric(
            "ringmesh_control_certificates_refused_total",
            "counter",
            "Certificate requests refused (credential refused, another identity asked for, a bad CSR, no CA).",
            load(&self.certificates_refused),
        );
        let help =
            "Seconds from a configuration change to its snapshot sent to a proxy (debounce and compile included).";
        self.push_time.write(&mut out, "ringmesh_control_push_seconds", help);
        self.push_time.write(
            &mut out,
            "pilot_proxy_convergence_time",
            &format!("{help} (Istio's name)"),
        );
        out
    }
}

/// Serves `GET /metrics` with what `render` returns, until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&req, &*render)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

fn answer(req: &Request<hyper::body::Incoming>, render: &(dyn Fn() -> String + Send + Sync)) -> Response<Full<Bytes>> {
    let (status, body, kind) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics" | "/stats/prometheus") => {
            (StatusCode::OK, render(), "text/plain; version=0.0.4; charset=utf-8")
        }
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics\n".to_owned(),
            "text/plain",
        ),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned(), "text/plain"),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_and_buckets() {
        let m = Metrics::default();
        m.pushed(None);
        m.pushed(Some(Duration::from_millis(60)));
        m.pushed(Some(Duration::from_secs(2)));
        m.pushed(Some(Duration::from_secs(100)));
        m.nacked();
        m.certificate(true);
        m.certificate(false);
        let text = m.render(Gauges {
            proxies_connected: 3,
            generation: 42,
        });
        for line in [
            "pilot_xds 3",
            "ringmesh_control_config_generation 42",
            "ringmesh_control_pushes_total 4",
            "pilot_total_xds_rejects 1",
            "citadel_server_success_cert_issuance_count 1",
            "ringmesh_control_certificates_refused_total 1",
            "ringmesh_control_push_seconds_bucket{le=\"0.1\"} 1",
            "ringmesh_control_push_seconds_bucket{le=\"1\"} 1",
            "ringmesh_control_push_seconds_bucket{le=\"3\"} 2",
            "ringmesh_control_push_seconds_bucket{le=\"30\"} 2",
            "ringmesh_control_push_seconds_bucket{le=\"+Inf\"} 3",
            "ringmesh_control_push_seconds_count 3",
            "pilot_proxy_convergence_time_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }
}
