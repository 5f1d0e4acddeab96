//! A cluster's circuit breakers (Istio `connectionPool`): `tcp.maxConnections`,
//! `http.http1MaxPendingRequests` and `http.maxRetries`, read per proxy, kept per core.
//!
//! Each limit `L` is split over the `N` workers: worker `i` gets `L / N`, plus one when
//! `i < L % N`. The shares add up to exactly `L`, so the proxy never holds more than `L`
//! connections (or pending requests, or retries) — whichever cores the load lands on, a core
//! may be refused while another has room; that is the cost of keeping the state on the core.
//! When `L < N` some cores would get a share of 0 and refuse everything that lands on them (a
//! client connection stays on its core), so such a limit is one counter shared by all
//! workers instead ([`ClusterShared`], atomics): "1 means 1" proxy-wide, and any core may take
//! the slot. Only clusters limited below the worker count pay for a shared atomic.
//!
//! Connections: every upstream connection of a limited cluster holds a [`ConnSlot`] for its
//! life (HTTP/1.1, idle in the pool included; HTTP/2; TCP proxy). An HTTP/1.1 request that
//! finds no idle connection and no free slot waits in its core's FIFO queue
//! ([`Waiters`]) — when `http1MaxPendingRequests` leaves room — until a connection of the
//! cluster returns to the pool or closes; beyond the pending limit it is refused at once (503
//! `UO`). A shared connection limit hands its slots around as tokens on a channel, so a
//! release on one core wakes a waiter on another; its connections are not kept idle (an idle
//! one on one core would hold the only slot another core waits for).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use ringmesh_api::snapshot::PoolSettings;

use crate::error::{ErrorKind, ProxyError, Side};
use crate::lb::ClusterCounters;
use crate::telemetry::stats::{dec, inc};

/// Worker `worker`'s share of `limit` over `workers` workers, or `None` when the limit is
/// below the worker count and must be shared (see the module's comment).
pub(crate) fn share(limit: u32, workers: usize, worker: usize) -> Option<u64> {
    let (limit, workers, worker) = (u64::from(limit), workers.max(1) as u64, worker as u64);
    if limit < workers {
        return None;
    }
    Some(limit / workers + u64::from(worker < limit % workers))
}

/// The cross-core state of a cluster whose limits are below the worker count; built by the
/// control thread with the snapshot (`state::SharedLimits`) and kept across reloads while the
/// cluster's limits stay the same.
#[derive(Debug)]
pub struct ClusterShared {
    pub(crate) pool: PoolSettings,
    /// Free connection slots, `maxConnections` of them at first: taking one is a receive,
    /// returning one a send, and a waiting receive is woken by a send from any core.
    tokens: Option<(flume::Sender<()>, flume::Receiver<()>)>,
    pending: AtomicU32,
    retries: AtomicU32,
    /// Requests in flight under an `http2MaxRequests` below the worker count
    /// ([`Admitted`]).
    requests: AtomicU32,
}

impl ClusterShared {
    /// The shared state for a cluster with these settings.
    pub fn new(pool: &PoolSettings) -> Self {
        let tokens = pool.max_connections.map(|n| {
            let (tx, rx) = flume::unbounded();
            for _ in 0..n {
                let _ = tx.send(());
            }
            (tx, rx)
        });
        ClusterShared {
            pool: pool.clone(),
            tokens,
            pending: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            requests: AtomicU32::new(0),
        }
    }

    /// Whether it was built for these settings.
    pub fn same_limits(&self, pool: &PoolSettings) -> bool {
        (
            self.pool.max_connections,
            self.pool.max_pending_requests,
            self.pool.max_retries,
            self.pool.http2_max_requests,
        ) == (
            pool.max_connections,
            pool.max_pending_requests,
            pool.max_retries,
            pool.http2_max_requests,
        )
    }
}

/// A request admitted under `http2MaxRequests`: with a limit below the worker count it holds
/// one unit of the cluster's shared count until it ends (per-core shares count requests in
/// flight as the balancer already does, and hold nothing here).
#[derive(Debug)]
pub(crate) struct Admitted<'a>(Option<&'a ClusterShared>);

impl<'a> Admitted<'a> {
    /// Admits a request within `limit` on worker `worker` of `workers`, whose requests in
    /// flight to the cluster are `active`; `None` past the limit.
    pub(crate) fn take(
        limit: u32,
        workers: usize,
        worker: usize,
        active: u64,
        shared: Option<&'a Arc<ClusterShared>>,
    ) -> Option<Self> {
        match (share(limit, workers, worker), shared) {
            (Some(share), _) => (active < share).then_some(Admitted(None)),
            // `then`, not `then_some`: an `Admitted` made and dropped on refusal would give
            // back a unit never taken.
            (None, Some(sh)) => take_shared(&sh.requests, limit).then(|| Admitted(Some(sh))),
            // No shared state (the control thread builds it for every limited cluster): one
            // request per worker, the old bound.
            (None, None) => (active < 1).then_some(Admitted(None)),
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(sh) = self.0 {
            sh.requests.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Takes one unit of a shared counter if it stays within `limit`.
fn take_shared(counter: &AtomicU32, limit: u32) -> bool {
    // Relaxed: the counter guards no other memory.
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then(|| n + 1))
        .is_ok()
}

/// How one limit applies on this core.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gate<'a> {
    Unlimited,
    /// This core's share.
    PerCore(u64),
    /// One counter for the proxy.
    Shared(&'a Arc<ClusterShared>),
}

/// A cluster's breakers as one worker applies them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breakers<'a> {
    pub(crate) counters: &'a Rc<ClusterCounters>,
    pub(crate) connections: Gate<'a>,
    pub(crate) pending: Gate<'a>,
    pub(crate) retries: Gate<'a>,
}

impl<'a> Breakers<'a> {
    /// The breakers of a cluster with settings `pool` on worker `worker` of `workers`.
    pub(crate) fn new(
        pool: &PoolSettings,
        counters: &'a Rc<ClusterCounters>,
        shared: Option<&'a Arc<ClusterShared>>,
        workers: usize,
        worker: usize,
    ) -> Self {
        let gate = |limit: Option<u32>| match (limit, shared) {
            (None, _) => Gate::Unlimited,
            (Some(l), shared) => match (share(l, workers, worker), shared) {
                (Some(s), _) => Gate::PerCore(s),
                (None, Some(sh)) => Gate::Shared(sh),
                // No shared state (cannot happen: the control thread builds it for every
                // limited cluster): the safe reading of a limit below the worker count.
                (None, None) => Gate::PerCore(u64::from(worker < l as usize)),
            },
        };
        Breakers {
            counters,
            connections: gate(pool.max_connections),
            pending: gate(pool.max_pending_requests),
            retries: gate(pool.max_retries),
        }
    }

    /// Whether idle connections may be pooled (not with a shared connection limit).
    pub(crate) fn pools(&self) -> bool {
        !matches!(self.connections, Gate::Shared(_))
    }

    /// A connection slot if the limit leaves one now; counts the overflow when not.
    pub(crate) fn try_connection(&self) -> Option<ConnSlot> {
        let slot = match self.connections {
            Gate::Unlimited => Some(None),
            Gate::PerCore(share) => (self.counters.cx_active.get() < share).then_some(None),
            Gate::Shared(sh) => match &sh.tokens {
                Some((tx, rx)) => rx.try_recv().ok().map(|()| Some(tx.clone())),
                None => Some(None),
            },
        }?;
        Some(ConnSlot::new(self.counters.clone(), slot))
    }

    /// Counts a connection refused by the limit (Envoy's `upstream_cx_overflow`).
    pub(crate) fn connection_overflow(&self) -> ProxyError {
        inc(&self.counters.cx_overflow);
        ProxyError::new(ErrorKind::Overflow, Side::Internal, "cluster's maxConnections reached")
    }

    /// A place in the pending queue, or the overflow failure (503 `UO`, Envoy's
    /// `upstream_rq_pending_overflow`) when the pending limit is reached.
    pub(crate) fn enter_pending(&self) -> Result<PendingSlot<'a>, ProxyError> {
        let admitted = match self.pending {
            Gate::Unlimited => true,
            Gate::PerCore(share) => self.counters.rq_pending_active.get() < share,
            Gate::Shared(sh) => take_shared(&sh.pending, sh.pool.max_pending_requests.unwrap_or(u32::MAX)),
        };
        if !admitted {
            inc(&self.counters.cx_overflow);
            inc(&self.counters.rq_pending_overflow);
            return Err(ProxyError::new(
                ErrorKind::Overflow,
                Side::Internal,
                "cluster's maxConnections and http1MaxPendingRequests reached",
            ));
        }
        inc(&self.counters.rq_pending_active);
        Ok(PendingSlot {
            counters: self.counters,
            shared: match self.pending {
                Gate::Shared(sh) => Some(sh),
                _ => None,
            },
        })
    }

    /// Waits for a chance at a connection: a local release (a connection of the cluster
    /// returned to the pool or closed), or with a shared limit a token from any core (then
    /// the slot itself).
    pub(crate) async fn wait_for_connection(&self) -> Option<ConnSlot> {
        match self.connections {
            Gate::Shared(sh) if sh.tokens.is_some() => {
                let (tx, rx) = sh.tokens.as_ref()?;
                match rx.recv_async().await {
                    Ok(()) => Some(ConnSlot::new(self.counters.clone(), Some(tx.clone()))),
                    Err(_) => None,
                }
            }
            _ => {
                self.counters.waiters.wait().await;
                None
            }
        }
    }

    /// A retry slot if `maxRetries` leaves one; counts the refusal (Envoy's
    /// `upstream_rq_retry_overflow`) when not.
    pub(crate) fn try_retry(&self) -> Option<RetryGuard> {
        let admitted = match self.retries {
            Gate::Unlimited => true,
            Gate::PerCore(share) => self.counters.rq_retry_active.get() < share,
            Gate::Shared(sh) => take_shared(&sh.retries, sh.pool.max_retries.unwrap_or(u32::MAX)),
        };
        if !admitted {
            inc(&self.counters.rq_retry_overflow);
            return None;
        }
        inc(&self.counters.rq_retry_active);
        Some(RetryGuard(Box::new(RetryOf {
            counters: self.counters.clone(),
            shared: match self.retries {
                Gate::Shared(sh) => Some(sh.clone()),
                _ => None,
            },
            running: Cell::new(false),
        })))
    }
}

/// A connection counted against its cluster's `maxConnections` for as long as it lives.
/// One word (a box made once per connection, not per request): it sits in every upstream
/// connection, which sits in every HTTP connection's task.
#[derive(Debug)]
pub struct ConnSlot(Box<SlotOf>);

#[derive(Debug)]
struct SlotOf {
    counters: Rc<ClusterCounters>,
    /// With a shared limit: where the slot goes back.
    token: Option<flume::Sender<()>>,
}

impl ConnSlot {
    fn new(counters: Rc<ClusterCounters>, token: Option<flume::Sender<()>>) -> Self {
        inc(&counters.cx_active);
        ConnSlot(Box::new(SlotOf { counters, token }))
    }

    /// Whether this slot counts against `counters`' cluster.
    pub(crate) fn of(&self, counters: &ClusterCounters) -> bool {
        std::ptr::eq(Rc::as_ptr(&self.0.counters), counters)
    }

    /// Whether the connection may wait idle in the pool (not under a shared limit).
    pub(crate) fn poolable(&self) -> bool {
        self.0.token.is_none()
    }

    /// Wakes the first request of the cluster waiting on this core (the connection went back
    /// to the pool).
    pub(crate) fn notify(&self) {
        self.0.counters.waiters.wake_one();
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        dec(&self.0.counters.cx_active);
        if let Some(tx) = self.0.token.take() {
            let _ = tx.send(());
        }
        self.0.counters.waiters.wake_one();
    }
}

/// A request counted as pending (waiting for a connection) while it lives.
#[derive(Debug)]
pub(crate) struct PendingSlot<'a> {
    counters: &'a ClusterCounters,
    shared: Option<&'a Arc<ClusterShared>>,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        dec(&self.counters.rq_pending_active);
        if let Some(sh) = self.shared {
            sh.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A retry counted against `maxRetries` while it lives (its back-off and its try). One word
/// (boxed once per retry): it sits in every request's retry state.
#[derive(Debug)]
pub(crate) struct RetryGuard(Box<RetryOf>);

#[derive(Debug)]
struct RetryOf {
    counters: Rc<ClusterCounters>,
    shared: Option<Arc<ClusterShared>>,
    /// The retry's try started (`http::retry::Retries`).
    running: Cell<bool>,
}

impl RetryGuard {
    /// Marks the retry's try as started.
    pub(crate) fn start(&self) {
        self.0.running.set(true);
    }

    /// Whether the retry's try started.
    pub(crate) fn running(&self) -> bool {
        self.0.running.get()
    }
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        let me = &self.0;
        dec(&me.counters.rq_retry_active);
        if let Some(sh) = &me.shared {
            sh.retries.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Requests of one cluster waiting on one core for a connection, first come first woken.
#[derive(Debug, Default)]
pub struct Waiters {
    queue: RefCell<VecDeque<Rc<Waiting>>>,
}

#[derive(Debug, Default)]
struct Waiting {
    woken: Cell<bool>,
    /// Its request saw the wake-up.
    consumed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Waiters {
    /// Wakes the first live waiter, if any.
    pub(crate) fn wake_one(&self) {
        let next = {
            let mut queue = self.queue.borrow_mut();
            loop {
                match queue.pop_front() {
                    // Only the queue holds it: its request gave up waiting.
                    Some(w) if Rc::strong_count(&w) == 1 => continue,
                    other => break other,
                }
            }
        };
        if let Some(w) = next {
            w.woken.set(true);
            if let Some(waker) = w.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// Waits until [`Waiters::wake_one`] picks this request.
    fn wait(&self) -> Wait<'_> {
        let me = Rc::new(Waiting::default());
        self.queue.borrow_mut().push_back(me.clone());
        Wait { waiters: self, me }
    }
}

struct Wait<'a> {
    waiters: &'a Waiters,
    me: Rc<Waiting>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.me.woken.get() {
            self.me.consumed.set(true);
            return Poll::Ready(());
        }
        *self.me.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        // Woken but gone before it saw it (its deadline passed at the same moment): the
        // wake-up goes to the next one. Still queued: `wake_one` skips it once this `Rc` is
        // gone.
        if self.me.woken.get() && !self.me.consumed.get() {
            self.waiters.wake_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_limit_and_small_limits_are_shared() {
        for (limit, workers) in [(10u32, 4usize), (4, 4), (7, 2), (100, 3)] {
            let total: u64 = (0..workers).map(|w| share(limit, workers, w).expect("per core")).sum();
            assert_eq!(total, u64::from(limit), "{limit} over {workers}");
            assert!((0..workers).all(|w| share(limit, workers, w) >= Some(1)));
        }
        assert_eq!(share(1, 2, 0), None, "a limit below the worker count is shared");
        assert_eq!(share(3, 4, 3), None);
    }

    #[test]
    fn a_shared_request_limit_gives_back_only_what_it_took() {
        let pool = PoolSettings {
            idle_timeout: std::time::Duration::from_secs(60),
            max_idle_per_endpoint: 8,
            http2_max_requests: Some(1),
            ..PoolSettings::default()
        };
        let shared = Arc::new(ClusterShared::new(&pool));
        let first = Admitted::take(1, 2, 0, 0, Some(&shared)).expect("the one slot");
        // Refused on either worker, however often, while the first is in flight.
        for worker in [0, 1, 1, 0] {
            assert!(Admitted::take(1, 2, worker, 0, Some(&shared)).is_none());
        }
        drop(first);
        let again = Admitted::take(1, 2, 1, 0, Some(&shared)).expect("the slot came back");
        assert!(Admitted::take(1, 2, 0, 0, Some(&shared)).is_none());
        drop(again);
        // Shares of a limit at or above the worker count are per core.
        assert!(Admitted::take(4, 2, 0, 1, None).is_some());
        assert!(Admitted::take(4, 2, 0, 2, None).is_none());
    }

    #[test]
    fn a_shared_limit_of_one_means_one() {
        let pool = PoolSettings {
            idle_timeout: std::time::Duration::from_secs(60),
            max_idle_per_endpoint: 8,
            max_connections: Some(1),
            max_retries: Some(1),
            ..PoolSettings::default()
        };
        let shared = Arc::new(ClusterShared::new(&pool));
        let (a, b) = (Rc::new(ClusterCounters::default()), Rc::new(ClusterCounters::default()));
        // Two workers of two: both shared.
        let w0 = Breakers::new(&pool, &a, Some(&shared), 2, 0);
        let w1 = Breakers::new(&pool, &b, Some(&shared), 2, 1);
        let slot = w0.try_connection().expect("the one slot");
        assert!(w1.try_connection().is_none(), "the other core finds it taken");
        assert!(!slot.poolable());
        drop(slot);
        assert!(w1.try_connection().is_some(), "released: any core may take it");
        let retry = w0.try_retry().expect("one retry");
        assert!(w1.try_retry().is_none());
        assert_eq!(b.rq_retry_overflow.get(), 1);
        drop(retry);
        assert!(w1.try_retry().is_some());
    }

    #[test]
    fn waiters_are_woken_first_come_first_served_and_a_gone_one_is_skipped() {
        let w = Waiters::default();
        let first = w.wait();
        let second = w.wait();
        let third = w.wait();
        drop(first);
        w.wake_one();
        assert!(second.me.woken.get() && !third.me.woken.get());
        w.wake_one();
        assert!(third.me.woken.get());
    }
}
