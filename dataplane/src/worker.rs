//! One worker: everything a core owns. Created on its own thread, never shared with another.
//!
//! The worker holds this core's snapshot view, statistics shard, upstream pool and random
//! generator behind an `Rc`; connection tasks borrow it. The control thread talks to a worker
//! only through [`WorkerCommand`] messages, answered by the worker's own command task.

use std::cell::Cell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

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
    /// Wakes the tasks that must act at once when the drain starts (`drain.rs`).
    pub drain: crate::drain::DrainSignal,
    /// Connections a drain waits for besides requests (`drain::DrainHold`).
    pub drain_holds: Cell<u64>,
    /// Accept loops whose socket is still open (`drain::DrainHold::accepting`).
    pub accepting: Cell<u64>,
    /// This worker's downstream sockets, closed at the end of a drain (`drain.rs`).
    pub open: crate::drain::OpenConnections,
    /// The workload certificate (written by the control thread): compared by version per new
    /// mTLS connection, and this core's TLS configs rebuilt when it moved.
    pub(crate) identity: Arc<IdentityCell>,
    /// This core's TLS configs for that certificate.
    pub(crate) tls: CoreTls,
    /// Finished spans on their way to the exporter (`telemetry::trace`).
    pub(crate) spans: crate::telemetry::trace::span::SpanBuffer,
    /// Mirrored copies in flight on this core (`http::mirror`), bounded so that a slow mirror
    /// cannot pile up tasks and buffers.
    pub(crate) mirrors_in_flight: Cell<u32>,
    /// This worker, for the tasks a request starts and does not wait for (mirrored copies):
    /// they outlive the request that borrowed the worker.
    pub(crate) me: Weak<Worker>,
    /// The process's `RLIMIT_NOFILE` soft limit when the worker started: the default of
    /// `limits.maxConnections` derives from it.
    nofile: u64,
}

impl Worker {
    /// A worker reading snapshots from `source`.
    pub(crate) fn new(
        id: usize,
        source: Arc<SnapshotSource>,
        identity: Arc<IdentityCell>,
        peers: Peers,
        spans: crate::telemetry::trace::span::SpanBuffer,
    ) -> Rc<Self> {
        Rc::new_cyclic(|me| Worker {
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
            drain: Default::default(),
            drain_holds: Cell::new(0),
            accepting: Cell::new(0),
            open: Default::default(),
            spans,
            mirrors_in_flight: Cell::new(0),
            me: me.clone(),
            nofile: nofile_soft(),
        })
    }

    /// Whether this worker already holds its share of `limits.maxConnections` (the limit
    /// divided evenly over the workers, rounded up: each core counts its own, with no shared
    /// counter, as Envoy's per-worker overload limits do), so a new connection is refused.
    pub(crate) fn at_connection_limit(&self) -> bool {
        let limit = self
            .snapshot
            .get()
            .snapshot
            .proxy
            .limits
            .max_connections
            .unwrap_or_else(|| ringmesh_api::snapshot::default_max_connections(self.nofile));
        let share = limit.div_ceil(self.peers.workers().max(1));
        self.stats.downstream_cx_active.get() >= share as u64
    }

    /// Whether this worker's client connections already hold its share of
    /// `limits.maxBufferBytes` in read buffers (`http::downstream::BufferCharge`).
    pub(crate) fn over_buffer_budget(&self) -> bool {
        let limit = self.snapshot.get().snapshot.proxy.limits.max_buffer_bytes;
        let share = limit.div_ceil(self.peers.workers().max(1));
        self.stats.downstream_buffered_bytes.get() >= share as u64
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
    /// each worker takes its share of the limit as `cluster::breaker::share` splits it (the
    /// shares add up to the limit); a limit below the worker count is one counter shared by the
    /// workers, held by the returned [`Admitted`](crate::cluster::breaker::Admitted) until the
    /// try ends, so a limit of 1 means 1. `Ok(None)`: no limit. `Err` is the overflow failure
    /// (503 `UO`), never retried.
    pub(crate) fn admit_request<'a>(
        &self,
        cluster: &ringmesh_api::snapshot::Cluster,
        state: &'a crate::lb::ClusterState,
    ) -> Result<Option<crate::cluster::breaker::Admitted<'a>>, crate::error::ProxyError> {
        let Some(max) = cluster.pool.http2_max_requests else {
            return Ok(None);
        };
        let admitted = crate::cluster::breaker::Admitted::take(
            max,
            self.peers.workers(),
            self.id,
            state.counters.rq_active.get(),
            state.shared.as_ref(),
        );
        if admitted.is_some() {
            return Ok(admitted);
        }
        inc(&self.stats.upstream_rq_pending_overflow);
        Err(crate::error::ProxyError::new(
            crate::error::ErrorKind::Overflow,
            crate::error::Side::Internal,
            "cluster's http2MaxRequests reached",
        ))
    }

    /// The cluster's circuit breakers as this worker applies them (its shares of the limits,
    /// see `cluster::breaker`).
    pub(crate) fn breakers<'a>(
        &self,
        cluster: &ringmesh_api::snapshot::Cluster,
        state: &'a crate::lb::ClusterState,
    ) -> crate::cluster::breaker::Breakers<'a> {
        crate::cluster::breaker::Breakers::new(
            &cluster.pool,
            &state.counters,
            state.shared.as_ref(),
            self.peers.workers(),
            self.id,
        )
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
                upstream_cx_active: c.cx_active.get(),
                upstream_cx_overflow: c.cx_overflow.get(),
                upstream_rq_pending_active: c.rq_pending_active.get(),
                upstream_rq_pending_overflow: c.rq_pending_overflow.get(),
                upstream_rq_retry_overflow: c.rq_retry_overflow.get(),
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
                    let stop = stop_accepting.take();
                    crate::drain::run(&self, move || {
                        if let Some(stop) = stop {
                            stop();
                        }
                    })
                    .await;
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

/// `RLIMIT_NOFILE`'s soft value (unlimited or unreadable: `u64::MAX`).
fn nofile_soft() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` to a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    r.rlim_cur
}
