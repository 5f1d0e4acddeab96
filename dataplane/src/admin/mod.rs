//! Admin (:15000, loopback), health (:15020) and Prometheus (:15090) servers on the control thread.
//!
//! These run on tokio with hyper, off the request path. Statistics are gathered by asking each
//! worker for a copy of its shard over its command channel and merging the copies here, so
//! workers never share a counter. Endpoints:
//!
//! | server  | path                 | what |
//! |---------|----------------------|------|
//! | admin   | `/config_dump`       | the running snapshot as JSON, with its version and the load warnings |
//! | admin   | `/clusters`          | clusters, endpoints and per-endpoint counters as JSON |
//! | admin   | `/control_plane`     | the discovery stream: state, replica, config version, last error (404 without one) |
//! | admin   | `/certs`             | the workload certificate: SPIFFE id, serial, validity, chain and roots, the last renewal error; `identity: null` with the reason when there is none |
//! | admin   | `/explain?host=…&path=…` | what the proxy would do with one request: route, clusters and endpoints, authorization and its policy, mTLS mode, its certificate (`explain.rs`, which lists the parameters) |
//! | admin   | `/ready`             | `LIVE` (200), `DRAINING` (503), or `INITIALIZING: <why>` (503) before the first config from the control plane |
//! | admin   | `/stats/prometheus`  | same as the metrics server |
//! | admin   | `/stats/histograms`  | the proxy's own time per request, HDR per route and cluster: JSON, `?format=hgrm`, `?reset` (`histograms.rs`) |
//! | admin   | `POST /drain_listeners` | stop accepting and drain, then exit |
//! | health  | `/healthz/ready`     | 200 when ready, 503 with the reason while draining or before the first config from the control plane (`readiness.rs`) |
//! | health  | `/app-health/<container>/<livez\|readyz\|startupz>` | the app's own probe, run by the proxy for kubelet (`app_probe.rs`; 404 for a path the injector did not register) |
//! | metrics | `/stats/prometheus`  | Prometheus text format |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

pub mod app_probe;
mod explain;
mod histograms;
mod readiness;

use readiness::Readiness;

use crate::state::SnapshotSource;
use crate::telemetry::prometheus;
use crate::telemetry::stats::StatsTotals;
use crate::worker::WorkerCommand;

/// What the admin servers read.
#[derive(Debug)]
pub struct AdminState {
    /// The running snapshot.
    pub source: Arc<SnapshotSource>,
    /// Each worker's command channel.
    pub workers: Vec<flume::Sender<WorkerCommand>>,
    /// Set when draining began.
    pub draining: AtomicBool,
    /// Warnings from the last successful load (unsupported fields and kinds).
    pub warnings: arc_swap::ArcSwap<Vec<String>>,
    /// The last reload error, if the newest file was refused.
    pub last_reload_error: arc_swap::ArcSwapOption<String>,
    /// The I/O driver in use.
    pub io: &'static str,
    /// Asked to drain via the admin API.
    pub drain_requested: tokio::sync::Notify,
    /// The discovery client's state; empty without `spec.controlPlane`.
    pub control_plane: crate::xds::StatusCell,
    /// The workload certificate, shared with the workers (which read it for mTLS).
    pub(crate) identity: Arc<crate::identity::IdentityCell>,
    /// Where the certificate comes from and how its renewal goes.
    pub cert_status: crate::identity::CertStatusCell,
    /// The app's probes kubelet asks the health server to run (`RINGMESH_KUBE_APP_PROBERS`).
    pub app_probers: app_probe::AppProbers,
    /// Listener names and their bound addresses (a listener on port 0 has its real port here).
    pub listeners: Vec<(String, SocketAddr)>,
    /// The span exporter's counters (added to the workers' at scrape time).
    pub(crate) tracing: Arc<crate::telemetry::trace::stats::ExportStats>,
}

/// Which of the three servers a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// :15000
    Admin,
    /// :15020
    Health,
    /// :15090
    Metrics,
}

/// Sums every worker's statistics. Workers that do not answer within a second are skipped (the
/// total says how many answered), so one stuck worker cannot hang a scrape.
pub async fn gather_stats(workers: &[flume::Sender<WorkerCommand>]) -> StatsTotals {
    let mut total = StatsTotals::empty();
    let mut replies = Vec::with_capacity(workers.len());
    for w in workers {
        let (tx, rx) = flume::bounded(1);
        if w.send(WorkerCommand::Stats(tx)).is_ok() {
            replies.push(rx);
        }
    }
    for rx in replies {
        if let Ok(Ok(copy)) = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await {
            total.merge(&copy);
        }
    }
    total
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn json<T: Serialize>(v: &T) -> Response<Full<Bytes>> {
    json_with(StatusCode::OK, v)
}

fn json_with<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => text(status, b, "application/json"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serialize: {e}\n"),
            "text/plain",
        ),
    }
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    version: u64,
    io: &'static str,
    warnings: Vec<String>,
    last_reload_error: Option<String>,
    snapshot: &'a ringmesh_api::snapshot::Snapshot,
}

#[derive(Serialize)]
struct ClusterView {
    name: String,
    service: String,
    port: u16,
    subset: Option<String>,
    lb: String,
    connect_timeout_ms: u128,
    upstream_rq_total: u64,
    upstream_rq_active: u64,
    /// Endpoints ejected by outlier detection now (Envoy's `outlier_detection.ejections_active`).
    ejections_active: u64,
    /// Healthy endpoints are below `minHealthPercent`: health is ignored (Envoy's panic mode).
    panic: bool,
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
struct EndpointView {
    address: String,
    weight: u32,
    labels: std::collections::BTreeMap<String, String>,
    health: &'static str,
    /// Envoy's `health_flags`: `/failed_outlier_check`, `/failed_active_hc`, or empty.
    health_flags: String,
    /// Times ejected, decayed while healthy (the ejection-time multiplier).
    outlier_ejections: u32,
    rq_total: u64,
    rq_active: u64,
    cx_connect_fail: u64,
    cx_idle: u64,
}

async fn handle(
    role: Role,
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let resp = match (role, req.method(), path) {
        (Role::Health, &Method::GET, "/healthz/ready") | (Role::Admin, &Method::GET, "/healthz/ready") => {
            match Readiness::of(&state) {
                Readiness::Ready => text(StatusCode::OK, "ready\n", "text/plain"),
                r => text(StatusCode::SERVICE_UNAVAILABLE, format!("{r}\n"), "text/plain"),
            }
        }
        (Role::Health, &Method::GET, p) if p.starts_with("/app-health/") => match state.app_probers.get(p) {
            Some(probe) => {
                let outcome = probe.run().await;
                text(outcome.status, format!("{}\n", outcome.reason), "text/plain")
            }
            None => text(
                StatusCode::NOT_FOUND,
                format!("no app probe registered for {p} ({})\n", app_probe::APP_PROBERS_ENV),
                "text/plain",
            ),
        },
        // Envoy's words: LIVE, DRAINING, INITIALIZING (with the reason after a colon).
        (Role::Admin, &Method::GET, "/ready") => match Readiness::of(&state) {
            Readiness::Ready => text(StatusCode::OK, "LIVE\n", "text/plain"),
            Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n", "text/plain"),
            r => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("INITIALIZING: {r}\n"),
                "text/plain",
            ),
        },
        (Role::Metrics, &Method::GET, "/stats/prometheus") | (Role::Admin, &Method::GET, "/stats/prometheus") => {
            let mut totals = gather_stats(&state.workers).await;
            totals.tracing.add_exporter(&state.tracing);
            let mut out = prometheus::render(&totals);
            let (snapshot, health) = state.source.load_with_health();
            prometheus::render_health(&snapshot, &health, &mut out);
            prometheus::render_rate_limits(&state.source.shared(), &mut out);
            let control_plane = state.control_plane.load_full();
            let identity = state.identity.load();
            prometheus::render_process(
                &prometheus::ProcessFacts {
                    io: state.io,
                    config_version: state.source.load().version,
                    control_plane: control_plane.as_deref(),
                    cert_not_after: identity.as_ref().map(|id| id.not_after),
                },
                &mut out,
            );
            text(StatusCode::OK, out, "text/plain; version=0.0.4")
        }
        (Role::Admin, &Method::GET, "/stats/histograms") => histograms::serve(&state, req.uri().query()).await,
        (Role::Admin, &Method::GET, "/config_dump") => {
            let snapshot = state.source.load();
            let dump = ConfigDump {
                version: snapshot.version,
                io: state.io,
                warnings: state.warnings.load().as_ref().clone(),
                last_reload_error: state.last_reload_error.load().as_deref().cloned(),
                snapshot: &snapshot,
            };
            json(&dump)
        }
        (Role::Admin, &Method::GET, "/control_plane") => match state.control_plane.load_full() {
            Some(status) => json(status.as_ref()),
            None => text(
                StatusCode::NOT_FOUND,
                "no control plane configured (spec.controlPlane)\n",
                "text/plain",
            ),
        },
        (Role::Admin, &Method::GET, "/explain") => explain::answer(&state, req.uri().query().unwrap_or("")).await,
        (Role::Admin, &Method::GET, "/certs") => {
            json(&crate::identity::certs_json(&state.identity, &state.cert_status.load()))
        }
        (Role::Admin, &Method::GET, "/clusters") => {
            let (snapshot, health) = state.source.load_with_health();
            let totals = gather_stats(&state.workers).await;
            let clusters: Vec<ClusterView> = snapshot
                .clusters
                .iter()
                .zip(&health.clusters)
                .map(|(c, (ch, eps))| {
                    let t = totals.clusters.get(&c.name);
                    ClusterView {
                        name: c.name.clone(),
                        service: c.service.clone(),
                        port: c.port,
                        subset: c.subset.clone(),
                        lb: lb_name(&c.lb).to_string(),
                        connect_timeout_ms: c.connect_timeout.as_millis(),
                        upstream_rq_total: t.map_or(0, |t| t.upstream_rq_total),
                        upstream_rq_active: t.map_or(0, |t| t.upstream_rq_active),
                        ejections_active: ch.ejections_active(),
                        panic: ch.in_panic(),
                        endpoints: c
                            .endpoints
                            .iter()
                            .zip(eps)
                            .map(|(e, eh)| {
                                let et = t.and_then(|t| t.endpoints.get(&e.address.to_string()));
                                let flags = eh.flags();
                                let mut health_flags = String::new();
                                if flags & crate::lb::health::FAILED_OUTLIER_CHECK != 0 {
                                    health_flags.push_str("/failed_outlier_check");
                                }
                                if flags & crate::lb::health::FAILED_ACTIVE_HC != 0 {
                                    health_flags.push_str("/failed_active_hc");
                                }
                                EndpointView {
                                    address: e.address.to_string(),
                                    weight: e.weight,
                                    labels: e.labels.clone(),
                                    health: if flags == 0 { "HEALTHY" } else { "UNHEALTHY" },
                                    health_flags,
                                    outlier_ejections: eh.ejections(),
                                    rq_total: et.map_or(0, |x| x.rq_total),
                                    rq_active: et.map_or(0, |x| x.rq_active),
                                    cx_connect_fail: et.map_or(0, |x| x.cx_connect_fail),
                                    cx_idle: et.map_or(0, |x| x.cx_idle),
                                }
                            })
                            .collect(),
                    }
                })
                .collect();
            json(&clusters)
        }
        (Role::Admin, &Method::POST, "/drain_listeners") => {
            state.drain_requested.notify_one();
            text(StatusCode::OK, "draining\n", "text/plain")
        }
        (_, m, _) if m != Method::GET => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", "text/plain"),
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    };
    Ok(resp)
}

fn lb_name(lb: &ringmesh_api::snapshot::LbPolicy) -> &'static str {
    use ringmesh_api::snapshot::LbPolicy;
    match lb {
        LbPolicy::RoundRobin => "ROUND_ROBIN",
        LbPolicy::LeastRequest => "LEAST_REQUEST",
        LbPolicy::Random => "RANDOM",
        LbPolicy::RingHash { .. } => "RING_HASH",
        LbPolicy::Maglev { .. } => "MAGLEV",
    }
}

/// Serves one role on an already-bound listener until the runtime stops.
// The control thread is the one place tokio tasks are allowed (see dataplane/clippy.toml).
#[allow(clippy::disallowed_methods)]
pub async fn serve(role: Role, listener: std::net::TcpListener, state: Arc<AdminState>) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|_| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(?role, "admin listener: {e}");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(?role, "admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        // The control thread's runtime is single-threaded; spawn_local-free `spawn` is fine here
        // (this is the control plane of the proxy, not a worker).
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(role, state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds an admin-side address up front so that a port in use fails start-up clearly.
pub fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("{what}: bind {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use super::app_probe::AppProbers;
    use crate::control::{start, ProxyOptions};

    /// One GET on a fresh connection; the status code.
    fn get(addr: SocketAddr, path: &str) -> u16 {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    // kubelet's rewritten probe reaches the health port, which runs the app's own probe: a
    // real app on loopback passes, and once it is gone the same probe fails.
    #[test]
    fn the_health_port_runs_the_apps_probes() {
        let app = TcpListener::bind("127.0.0.1:0").unwrap();
        let app_port = app.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // One probe answered 200, then the app stops.
            let (mut s, _) = app.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        });
        let dir = std::env::temp_dir().join(format!("ringmesh-app-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("proxy.yaml");
        std::fs::write(
            &config,
            "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  workers: 1\n  adminAddress: 127.0.0.1:0\n  healthAddress: 127.0.0.1:0\n  metricsAddress: 127.0.0.1:0\n  listeners: [{name: out, address: '127.0.0.1:0'}]\n",
        )
        .unwrap();
        let mut opts = ProxyOptions::from_file(&config);
        opts.app_probers = AppProbers::parse(&format!(
            r#"{{"/app-health/web/readyz": {{"httpGet": {{"path": "/ready", "port": {app_port}}}}}}}"#
        ))
        .unwrap();
        let proxy = start(opts).unwrap();
        let health = proxy.health_address;
        assert_eq!(get(health, "/app-health/web/readyz"), 200);
        server.join().unwrap();
        assert_eq!(get(health, "/app-health/web/readyz"), 503, "the app is gone");
        assert_eq!(get(health, "/app-health/other/readyz"), 404);
        proxy.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }
}
