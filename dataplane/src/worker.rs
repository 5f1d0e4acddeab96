//! One worker: everything a core owns. Created on its own thread, never shared with another.
//!
//! The worker holds this core's snapshot view, statistics shard, upstream pool and random
//! generator behind an `Rc`; connection tasks borrow it. The control thread talks to a worker
//! only through [`WorkerCommand`] messages, answered by the worker's own command task.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::pool::UpstreamPool;
use crate::http::h2::client::H2Pool;
use crate::http::h2::handoff::Peers;
use crate::identity::IdentityCell;
use crate::rng::FastRng;
use crate::state::{SnapshotSource, SnapshotView};
use crate::telemetry::stats::{dec, inc, ClusterTotals, EndpointTotals, StatsTotals, WorkerStats};
use crate::tls::configs::{ConfigError, CoreTls, ServerSide};

/// A request from the control thread to one worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Send back a copy of this worker's statistics (with per-cluster detail).
    Stats(flume::Sender<StatsTotals>),
    /// Stop accepting, finish in-flight requests within the drain timeout, then exit.
    Drain,
    /// Send back a copy of this worker's own-latency histograms; with `reset`, start them over.
    Histograms {
        reset: bool,
        reply: flume::Sender<Vec<crate::telemetry::overhead::OverheadEntry>>,
    },
}

/// Per-core state.
#[derive(Debug)]
pub struct Worker {
    /// Index of this worker (0-based), used in logs.
    pub id: usize,
    /// Current snapshot and per-core balancing state.
    pub snapshot: SnapshotView,
    /// This core's statistics shard.
    pub stats: WorkerStats,
    /// This core's upstream connections.
    pub pool: UpstreamPool,
    /// This core's HTTP/2 upstream connections.
    pub(crate) h2pool: H2Pool,
    /// The other workers, for serving HTTP/2 streams where there is room.
    pub peers: Peers,
    /// This core's random numbers.
    pub rng: FastRng,
    /// Retries in flight on this core (retry budget).
    pub retries_active: Cell<u32>,
    /// Set once draining started: connections close after their current request.
    pub draining: Cell<bool>,
    /// The workload certificate (written by the control thread): compared by version per new
    /// mTLS connection, and this core's TLS configs rebuilt when it moved.
    pub(crate) identity: Arc<IdentityCell>,
    /// This core's TLS configs for that certificate.
    pub(crate) tls: CoreTls,
}

impl Worker {
    /// A worker reading snapshots from `source`.
    pub(crate) fn new(id: usize, source: Arc<SnapshotSource>, identity: Arc<IdentityCell>, peers: Peers) -> Rc<Self> {
        Rc::new(Worker {
            id,
            identity,
            tls: CoreTls::default(),
            snapshot: SnapshotView::new(source),
            stats: WorkerStats::default(),
            pool: UpstreamPool::default(),
            h2pool: H2Pool::default(),
            peers,
            rng: FastRng::from_entropy(id as u64),
            retries_active: Cell::new(0),
            draining: Cell::new(false),
        })
    }

    /// This core's server config for inbound mTLS, with the SPIFFE id it serves.
    pub(crate) fn tls_server(&self) -> Result<ServerSide, ConfigError> {
        let min = self.snapshot.get().snapshot.security.min_tls_version;
        self.tls.server(&self.identity, min)
    }

    /// This core's client config for mTLS hops that carry HTTP/2.
    pub(crate) fn tls_client(&self) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        let min = self.snapshot.get().snapshot.security.min_tls_version;
        self.tls.client(&self.identity, min)
    }

    /// This core's client config for mTLS hops that carry opaque TCP.
    pub(crate) fn tls_client_tcp(&self) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        let min = self.snapshot.get().snapshot.security.min_tls_version;
        self.tls.client_tcp(&self.identity, min)
    }

    /// A downstream request started on this worker. `counted`: its dispatch already counted it
    /// in this worker's load (HTTP/2 streams).
    pub(crate) fn request_started(&self, counted: bool) {
        inc(&self.stats.downstream_rq_total);
        inc(&self.stats.downstream_rq_active);
        if !counted {
            self.peers.started();
        }
    }

    /// A downstream request ended on this worker.
    pub(crate) fn request_ended(&self) {
        dec(&self.stats.downstream_rq_active);
        self.peers.ended();
    }

    /// Whether the cluster's `http2MaxRequests` leaves room for one more request on this core:
    /// each worker takes an equal share of the limit, rounded up (so with N workers the proxy
    /// admits at most N - 1 requests above the limit, and a limit below N admits one per worker).
    /// `Err` is the overflow failure (503 `UO`), never retried.
    pub(crate) fn admit_request(
        &self,
        cluster: &ringmesh_api::snapshot::Cluster,
        state: &crate::lb::ClusterState,
    ) -> Result<(), crate::error::ProxyError> {
        let Some(max) = cluster.pool.http2_max_requests else {
            return Ok(());
        };
        let share = u64::from(max).div_ceil(self.peers.workers() as u64).max(1);
        if state.counters.rq_active.get() < share {
            return Ok(());
        }
        inc(&self.stats.upstream_rq_pending_overflow);
        Err(crate::error::ProxyError::new(
            crate::error::ErrorKind::Overflow,
            crate::error::Side::Internal,
            "cluster's http2MaxRequests reached",
        ))
    }

    /// Whether the retry budget allows one more retry now (Envoy's `retry_budget`): retries in
    /// flight below `budget_percent` of active requests, or below the minimum concurrency.
    /// Without a budget (the default) every retry the route's policy asks for is allowed.
    pub fn retry_allowed(&self) -> bool {
        let Some(budget) = self.snapshot.get().snapshot.proxy.retry_budget else {
            return true;
        };
        let active = self.stats.downstream_rq_active.get() as f64;
        let allowed = ((active * budget.budget_percent / 100.0) as u32).max(budget.min_retry_concurrency);
        self.retries_active.get() < allowed
    }

    /// A copy of this worker's statistics including per-cluster and per-endpoint detail.
    pub fn stats_copy(&self) -> StatsTotals {
        let mut t = self.stats.copy();
        t.per_worker.push(crate::telemetry::stats::WorkerRow {
            worker: self.id,
            downstream_cx_total: t.downstream_cx_total,
            downstream_cx_active: t.downstream_cx_active,
            downstream_rq_total: t.downstream_rq_total,
            downstream_rq_active: t.downstream_rq_active,
            h2_streams_handed_off: t.h2_streams_handed_off,
        });
        let idle = self.pool.idle_counts();
        for (name, c) in self.snapshot.counters() {
            let mut ct = ClusterTotals {
                upstream_rq_total: c.rq_total.get(),
                upstream_rq_active: c.rq_active.get(),
                upstream_rq_retry: c.rq_retry.get(),
                upstream_rq_timeout: c.rq_timeout.get(),
                ..Default::default()
            };
            for (a, b) in ct.upstream_rq_by_class.iter_mut().zip(c.rq_by_class.iter()) {
                *a = b.get();
            }
            for (addr, e) in c.endpoints.borrow().iter() {
                ct.endpoints.insert(
                    addr.to_string(),
                    EndpointTotals {
                        rq_total: e.rq_total.get(),
                        rq_active: e.rq_active.get(),
                        cx_connect_fail: e.cx_connect_fail.get(),
                        cx_idle: idle.get(addr).copied().unwrap_or(0) as u64,
                    },
                );
            }
            t.clusters.insert(name, ct);
        }
        t
    }

    /// Answers control-thread commands until the channel closes or a drain completes.
    pub async fn command_loop(self: Rc<Self>, commands: flume::Receiver<WorkerCommand>, stop_accepting: impl FnOnce()) {
        let mut stop_accepting = Some(stop_accepting);
        while let Ok(cmd) = commands.recv_async().await {
            match cmd {
                WorkerCommand::Stats(reply) => {
                    let _ = reply.send(self.stats_copy());
                }
                WorkerCommand::Histograms { reset, reply } => {
                    let _ = reply.send(self.stats.overhead.copy(reset));
                }
                WorkerCommand::Drain => {
                    self.draining.set(true);
                    if let Some(stop) = stop_accepting.take() {
                        stop();
                    }
                    let timeout = self.snapshot.get().snapshot.proxy.limits.drain_timeout;
                    let deadline = Instant::now() + timeout;
                    while self.stats.downstream_rq_active.get() > 0 && Instant::now() < deadline {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                    tracing::info!(
                        worker = self.id,
                        in_flight = self.stats.downstream_rq_active.get(),
                        "worker drained"
                    );
                    return;
                }
            }
        }
    }

    /// Hands this worker's access-log lines to the writer when they waited long enough, so
    /// an idle proxy's last lines do not wait for its next request.
    pub async fn telemetry_ticker(self: Rc<Self>) {
        loop {
            monoio::time::sleep(crate::telemetry::access_log::FLUSH_EVERY).await;
            self.stats.access_log.flush_if_old();
        }
    }

    /// Periodically closes pooled connections idle past the longest cluster idle timeout.
    pub async fn pool_sweeper(self: Rc<Self>) {
        loop {
            monoio::time::sleep(Duration::from_secs(5)).await;
            let view = self.snapshot.get();
            let max_idle = view
                .snapshot
                .clusters
                .iter()
                .map(|c| c.pool.idle_timeout)
                .max()
                .unwrap_or(Duration::from_secs(60));
            self.pool.evict_older_than(max_idle);
            self.h2pool.evict_idle(max_idle);
        }
    }
}
