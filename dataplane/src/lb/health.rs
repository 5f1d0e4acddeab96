//! Endpoint health shared by every core: outlier ejection (Istio `outlierDetection`) and active
//! health checks (ringmesh's `healthCheck`). Part of step 6, "pick an endpoint".
//!
//! An endpoint ejected on one core must be ejected on all, so this is the one piece of
//! balancing state that is not per core. It is shaped so that the healthy path stays cheap:
//!
//! - **Pick** reads one relaxed `AtomicU8` per candidate endpoint ([`EndpointHealth::flags`])
//!   and, only when some endpoint of the cluster is out, one relaxed `AtomicBool` per pick
//!   ([`ClusterHealth::panic`]). Both are written only when an endpoint leaves or returns, so the
//!   cache lines stay shared in every core's cache and a load costs what a plain load costs.
//! - **Consecutive failure counts** are kept per endpoint across cores, as Envoy keeps them per
//!   host across its workers: three 5xx on core 0 and two on core 1 make five in a row. A failure
//!   is an atomic add (failures are the rare path); a success first loads the counter and
//!   writes only when it was not already zero, so a healthy endpoint's counters are never
//!   written. Per-core counts would be cheaper still but would let an endpoint fail N times per
//!   core before anything happens, and would eject late and unevenly under SO_REUSEPORT's
//!   spread.
//! - **Ejection** is decided by the worker whose failure completed the streak: under a
//!   per-cluster spin guard (taken only on this rare path, for a scan of the cluster's flags),
//!   it checks `maxEjectionPercent` against the cluster's latest endpoint list and sets the
//!   flag with one `fetch_or` (exactly one worker wins). **Return** is done by the control thread's sweep every `interval`
//!   ([`sweep`]); the sweep also decays the ejection multiplier of endpoints that stayed healthy.
//! - **Active checks** ([`crate::lb::probe`]) run once per proxy on the control thread and set
//!   [`FAILED_ACTIVE_HC`] in the same flags, so every core stops and resumes picking the endpoint
//!   at the same time.
//!
//! The tables are rebuilt by the control thread with each snapshot ([`HealthTables::carry_over`]):
//! the same cluster name keeps its [`ClusterHealth`], and the same endpoint address within it
//! keeps its [`EndpointHealth`], so an ejection survives a reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ringmesh_api::snapshot::{Cluster, OutlierDetection};

/// The endpoint is ejected by outlier detection.
pub const FAILED_OUTLIER_CHECK: u8 = 1;
/// The endpoint failed its active health check.
pub const FAILED_ACTIVE_HC: u8 = 2;

/// Milliseconds since the first call in this process: a clock every thread shares, read only on
/// failure, ejection and sweep paths.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What one try to an endpoint came to, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Response(u16),
    /// An opaque TCP connection opened: a TCP try's success (Envoy's TCP proxy reports it
    /// as a success of every detector).
    Connected,
    /// The proxy could not reach it or lost it: connect failure, reset, timeout (Envoy's
    /// local-origin errors).
    LocalFailure,
}

impl Outcome {
    /// How a failed try counts: connect failures, resets and timeouts are local-origin
    /// failures, a malformed answer counts as the 502 the client gets, and what the client or
    /// the proxy's own limits caused does not count against the endpoint.
    pub fn of_error(kind: crate::error::ErrorKind) -> Option<Outcome> {
        use crate::error::ErrorKind as K;
        match kind {
            K::ConnectFailed
            | K::ConnectTimeout
            | K::TlsHandshakeFailed
            | K::UpstreamReset
            | K::UpstreamTimeout
            | K::PerTryTimeout => Some(Outcome::LocalFailure),
            K::UpstreamProtocol => Some(Outcome::Response(502)),
            _ => None,
        }
    }
}

/// Why an endpoint was ejected (Envoy's ejection types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectReason {
    /// `consecutive5xxErrors`.
    Consecutive5xx,
    /// `consecutiveGatewayErrors`.
    ConsecutiveGatewayFailure,
    /// `consecutiveLocalOriginFailures` (with `splitExternalLocalOriginErrors`).
    ConsecutiveLocalOriginFailure,
}

impl EjectReason {
    /// Envoy's name of the ejection type, used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectReason::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
        }
    }
}

/// Health of one endpoint of one cluster, shared by every core and the control thread.
#[derive(Debug)]
pub struct EndpointHealth {
    /// Its address.
    pub address: SocketAddr,
    /// [`FAILED_OUTLIER_CHECK`] | [`FAILED_ACTIVE_HC`]; 0 is healthy.
    flags: AtomicU8,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Envoy's ejection time backoff: times ejected, decayed while healthy.
    ejections: AtomicU32,
    ejected_at_ms: AtomicU64,
    /// When it last returned (or 0): the multiplier decays one `interval` after.
    returned_at_ms: AtomicU64,
    /// Active checks: failures and passes in a row (control thread only).
    hc_failures: AtomicU32,
    hc_passes: AtomicU32,
    /// Active checks: when the next probe is due ([`now_ms`]), and whether one is running.
    pub(crate) next_probe_ms: AtomicU64,
    pub(crate) probing: AtomicBool,
}

impl EndpointHealth {
    fn new(address: SocketAddr) -> Self {
        EndpointHealth {
            address,
            flags: AtomicU8::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_at_ms: AtomicU64::new(0),
            returned_at_ms: AtomicU64::new(0),
            hc_failures: AtomicU32::new(0),
            hc_passes: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// The health flags; 0 is healthy. One relaxed load: the flags are written only when the
    /// endpoint leaves or returns, and a pick that sees a change a moment late costs one request
    /// at most.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.flags.load(Relaxed)
    }

    /// Whether the balancer should leave it out.
    #[inline]
    pub fn is_out(&self) -> bool {
        self.flags() != 0
    }

    /// Times ejected (the current ejection-time multiplier).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }
}

/// Counters Envoy keeps per cluster under `outlier_detection.` and `health_check.`.
#[derive(Debug, Default)]
pub struct HealthStats {
    /// Ejections carried out.
    pub ejections_enforced_total: AtomicU64,
    /// Ejections refused because `maxEjectionPercent` was reached.
    pub ejections_overflow: AtomicU64,
    /// Ejections carried out, by reason.
    pub ejections_enforced_consecutive_5xx: AtomicU64,
    /// Ejections carried out for gateway errors.
    pub ejections_enforced_consecutive_gateway_failure: AtomicU64,
    /// Ejections carried out for local-origin failures.
    pub ejections_enforced_consecutive_local_origin_failure: AtomicU64,
    /// Active probes sent.
    pub health_check_attempt: AtomicU64,
    /// Active probes that passed.
    pub health_check_success: AtomicU64,
    /// Active probes that failed.
    pub health_check_failure: AtomicU64,
}

/// Health of one cluster (by name), kept across snapshots.
#[derive(Debug)]
pub struct ClusterHealth {
    /// The cluster's name.
    pub name: String,
    /// The endpoints of the latest snapshot, for the ejection-percent check, the sweep, the
    /// admin server and metrics. Workers pick with their own snapshot's list.
    latest: ArcSwap<Vec<Arc<EndpointHealth>>>,
    /// Healthy endpoints are below `minHealthPercent`: the balancer ignores health (Envoy's
    /// panic mode). Recomputed whenever an endpoint leaves or returns.
    panic: AtomicBool,
    /// Some endpoint is out; lets a pick skip the per-endpoint loads when none is.
    any_out: AtomicBool,
    /// `minHealthPercent` of the latest snapshot.
    min_health_percent: AtomicU8,
    /// Held while one core decides an ejection (see [`ClusterHealth::eject`]).
    ejecting: AtomicBool,
    /// Counters.
    pub stats: HealthStats,
}

impl ClusterHealth {
    fn new(name: &str) -> Self {
        ClusterHealth {
            name: name.to_owned(),
            latest: ArcSwap::from_pointee(Vec::new()),
            panic: AtomicBool::new(false),
            any_out: AtomicBool::new(false),
            min_health_percent: AtomicU8::new(0),
            ejecting: AtomicBool::new(false),
            stats: HealthStats::default(),
        }
    }

    /// A table for one cluster outside any registry (tests, and the placeholder of a worker
    /// built before the control thread published one).
    pub fn detached(cluster: &Cluster) -> (Arc<ClusterHealth>, Vec<Arc<EndpointHealth>>) {
        let ch = Arc::new(ClusterHealth::new(&cluster.name));
        let eps: Vec<Arc<EndpointHealth>> = cluster
            .endpoints
            .iter()
            .map(|e| Arc::new(EndpointHealth::new(e.address)))
            .collect();
        ch.latest.store(Arc::new(eps.clone()));
        (ch, eps)
    }

    /// The endpoints of the latest snapshot.
    pub fn endpoints(&self) -> Arc<Vec<Arc<EndpointHealth>>> {
        self.latest.load_full()
    }

    /// Whether the balancer must look at endpoint flags: some endpoint is out and the cluster
    /// is not in panic mode. Two relaxed loads of flags written only on change.
    #[inline]
    pub fn filtering(&self) -> bool {
        self.any_out.load(Relaxed) && !self.panic.load(Relaxed)
    }

    /// Whether the cluster is in panic mode (healthy endpoints below `minHealthPercent`).
    pub fn in_panic(&self) -> bool {
        self.panic.load(Relaxed)
    }

    /// Endpoints ejected by outlier detection now.
    pub fn ejections_active(&self) -> u64 {
        self.latest
            .load()
            .iter()
            .filter(|e| e.flags() & FAILED_OUTLIER_CHECK != 0)
            .count() as u64
    }

    /// Endpoints with no health flag.
    pub fn healthy(&self) -> u64 {
        self.latest.load().iter().filter(|e| !e.is_out()).count() as u64
    }

    /// Recomputes `any_out` and `panic` from the latest endpoints (after a change).
    fn recompute(&self) {
        let eps = self.latest.load();
        let total = eps.len() as u64;
        let healthy = eps.iter().filter(|e| !e.is_out()).count() as u64;
        let min = self.min_health_percent.load(Relaxed) as u64;
        self.any_out.store(healthy < total, Relaxed);
        self.panic.store(min > 0 && healthy * 100 < min * total, Relaxed);
    }

    /// Counts one try's `outcome` against `ep`, ejecting it when a detector of `od` trips.
    pub fn record(&self, od: &OutlierDetection, ep: &EndpointHealth, outcome: Outcome) {
        // `==`, as Envoy: a streak ejects once; after a refused ejection (maxEjectionPercent) the
        // next chance comes with the next streak.
        let trip =
            |counter: &AtomicU32, threshold: u32| threshold > 0 && counter.fetch_add(1, Relaxed) + 1 == threshold;
        let reset = |counter: &AtomicU32| {
            // Load first: a healthy endpoint's counter is zero and stays unwritten.
            if counter.load(Relaxed) != 0 {
                counter.store(0, Relaxed);
            }
        };
        let reason = match outcome {
            Outcome::Connected => {
                reset(&ep.consecutive_local);
                reset(&ep.consecutive_5xx);
                reset(&ep.consecutive_gateway);
                return;
            }
            Outcome::Response(status) => {
                // The connection worked: a local-origin streak ends.
                reset(&ep.consecutive_local);
                if !(500..=599).contains(&status) {
                    reset(&ep.consecutive_5xx);
                    reset(&ep.consecutive_gateway);
                    return;
                }
                let gateway = matches!(status, 502..=504);
                let g = gateway && trip(&ep.consecutive_gateway, od.consecutive_gateway);
                if !gateway {
                    reset(&ep.consecutive_gateway);
                }
                let f = trip(&ep.consecutive_5xx, od.consecutive_5xx);
                if g {
                    Some(EjectReason::ConsecutiveGatewayFailure)
                } else {
                    f.then_some(EjectReason::Consecutive5xx)
                }
            }
            Outcome::LocalFailure if od.split_local_origin => trip(&ep.consecutive_local, od.consecutive_local_origin)
                .then_some(EjectReason::ConsecutiveLocalOriginFailure),
            // Without the split Envoy maps a local failure to a 503 (504 for a timeout):
            // both the 5xx and the gateway detectors count it.
            Outcome::LocalFailure => {
                let g = trip(&ep.consecutive_gateway, od.consecutive_gateway);
                let f = trip(&ep.consecutive_5xx, od.consecutive_5xx);
                if g {
                    Some(EjectReason::ConsecutiveGatewayFailure)
                } else {
                    f.then_some(EjectReason::Consecutive5xx)
                }
            }
        };
        if let Some(reason) = reason {
            if ep.flags() & FAILED_OUTLIER_CHECK == 0 {
                self.eject(od, ep, reason);
            }
        }
    }

    /// Ejects `ep` unless `maxEjectionPercent` forbids it. Envoy's rule: eject when
    /// `100 × (ejected + 1) / endpoints ≤ maxEjectionPercent`, so with 3 endpoints and the
    /// default 10% nothing is ejected (Istio's `maxEjectionPercent: 100` lifts that), and the
    /// percentage counts endpoints ejected by outlier detection only.
    fn eject(&self, od: &OutlierDetection, ep: &EndpointHealth, reason: EjectReason) {
        // Ejections of one cluster are decided one at a time, as Envoy decides them on its
        // main thread: otherwise two cores could each count the same free slot and together
        // pass maxEjectionPercent. A spin guard rather than a lock: it is taken only on this
        // rare path (a streak completed), held for a scan of the cluster's flags and one
        // `fetch_or`, never across I/O or an await. Returns (the sweep, a reload) only lower
        // the count, so they do not take it.
        while self
            .ejecting
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let eps = self.latest.load();
        let total = eps.len().max(1) as u64;
        let ejected = eps.iter().filter(|e| e.flags() & FAILED_OUTLIER_CHECK != 0).count() as u64;
        let allowed = 100 * (ejected + 1) <= od.max_ejection_percent as u64 * total;
        // Exactly one core sets the flag, so an ejection is counted and logged once.
        let won = allowed && ep.flags.fetch_or(FAILED_OUTLIER_CHECK, Relaxed) & FAILED_OUTLIER_CHECK == 0;
        self.ejecting.store(false, Release);
        if !allowed {
            self.stats.ejections_overflow.fetch_add(1, Relaxed);
            log_event(format_args!(
                "outlier detection: not ejecting {} of cluster {} ({}): maxEjectionPercent {} reached",
                ep.address,
                self.name,
                reason.as_str(),
                od.max_ejection_percent
            ));
            return;
        }
        if !won {
            return;
        }
        let base = od.base_ejection_time.as_millis() as u64;
        let max = od.max_ejection_time.as_millis() as u64;
        // Envoy grows the multiplier while the ejection time stays under max + base.
        let times = ep.ejections.load(Relaxed);
        if base.saturating_mul(times as u64) < max.saturating_add(base) {
            ep.ejections.store(times + 1, Relaxed);
        }
        ep.ejected_at_ms.store(now_ms(), Relaxed);
        self.stats.ejections_enforced_total.fetch_add(1, Relaxed);
        let by_reason = match reason {
            EjectReason::Consecutive5xx => &self.stats.ejections_enforced_consecutive_5xx,
            EjectReason::ConsecutiveGatewayFailure => &self.stats.ejections_enforced_consecutive_gateway_failure,
            EjectReason::ConsecutiveLocalOriginFailure => {
                &self.stats.ejections_enforced_consecutive_local_origin_failure
            }
        };
        by_reason.fetch_add(1, Relaxed);
        self.recompute();
        log_event(format_args!(
            "outlier detection: ejected {} of cluster {} ({}) for {} ms",
            ep.address,
            self.name,
            reason.as_str(),
            ejection_ms(od, ep)
        ));
    }

    /// Sets or clears `FAILED_ACTIVE_HC` from a probe's result (control thread only); logs and
    /// recomputes when the endpoint changes state.
    pub fn record_probe(&self, ep: &EndpointHealth, passed: bool, unhealthy: u32, healthy: u32, why: &str) {
        self.stats.health_check_attempt.fetch_add(1, Relaxed);
        let failed = ep.flags() & FAILED_ACTIVE_HC != 0;
        if passed {
            self.stats.health_check_success.fetch_add(1, Relaxed);
            ep.hc_failures.store(0, Relaxed);
            let passes = ep.hc_passes.fetch_add(1, Relaxed) + 1;
            if failed && passes >= healthy {
                ep.flags.fetch_and(!FAILED_ACTIVE_HC, Relaxed);
                self.recompute();
                log_event(format_args!(
                    "health check: {} of cluster {} is healthy again",
                    ep.address, self.name
                ));
            }
        } else {
            self.stats.health_check_failure.fetch_add(1, Relaxed);
            ep.hc_passes.store(0, Relaxed);
            let failures = ep.hc_failures.fetch_add(1, Relaxed) + 1;
            if !failed && failures >= unhealthy {
                ep.flags.fetch_or(FAILED_ACTIVE_HC, Relaxed);
                self.recompute();
                log_event(format_args!(
                    "health check: {} of cluster {} failed {failures} probes, taken out: {why}",
                    ep.address, self.name
                ));
            }
        }
    }
}

/// The ejection time of `ep` now: base × times ejected, at most `max_ejection_time` (or base).
fn ejection_ms(od: &OutlierDetection, ep: &EndpointHealth) -> u64 {
    let base = od.base_ejection_time.as_millis() as u64;
    let max = (od.max_ejection_time.as_millis() as u64).max(base);
    base.saturating_mul(ep.ejections().max(1) as u64).min(max)
}

/// Health tables of one snapshot, indexed like `Snapshot::clusters` (endpoints like
/// `Cluster::endpoints`).
#[derive(Debug, Default)]
pub struct HealthTables {
    /// Per cluster: its table and its endpoints' health.
    pub clusters: Vec<(Arc<ClusterHealth>, Vec<Arc<EndpointHealth>>)>,
}

impl HealthTables {
    /// Tables for a snapshot's `clusters`, carrying over by cluster name and endpoint address what `prev`
    /// held; what is no longer configured is dropped (and returns with a clean slate if it comes
    /// back). Control thread only.
    pub fn carry_over(prev: &HealthTables, clusters: &[Cluster]) -> HealthTables {
        let by_name: HashMap<&str, &Arc<ClusterHealth>> =
            prev.clusters.iter().map(|(c, _)| (c.name.as_str(), c)).collect();
        let mut built: HashMap<&str, Arc<ClusterHealth>> = HashMap::new();
        let clusters = clusters
            .iter()
            .map(|c| {
                let ch = built
                    .entry(c.name.as_str())
                    .or_insert_with(|| {
                        by_name
                            .get(c.name.as_str())
                            .map(|ch| Arc::clone(ch))
                            .unwrap_or_else(|| Arc::new(ClusterHealth::new(&c.name)))
                    })
                    .clone();
                let old: HashMap<SocketAddr, Arc<EndpointHealth>> =
                    ch.latest.load().iter().map(|e| (e.address, e.clone())).collect();
                let eps: Vec<Arc<EndpointHealth>> = c
                    .endpoints
                    .iter()
                    .map(|e| {
                        old.get(&e.address)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(EndpointHealth::new(e.address)))
                    })
                    .collect();
                ch.latest.store(Arc::new(eps.clone()));
                ch.min_health_percent
                    .store(c.outlier.as_ref().map_or(0, |o| o.min_health_percent), Relaxed);
                // Detection turned off: nothing stays ejected by it, and no probe keeps an
                // endpoint out.
                for e in &eps {
                    if c.outlier.is_none() && e.flags() & FAILED_OUTLIER_CHECK != 0 {
                        e.flags.fetch_and(!FAILED_OUTLIER_CHECK, Relaxed);
                    }
                    if c.health_check.is_none() && e.flags() & FAILED_ACTIVE_HC != 0 {
                        e.flags.fetch_and(!FAILED_ACTIVE_HC, Relaxed);
                    }
                }
                ch.recompute();
                (ch, eps)
            })
            .collect();
        HealthTables { clusters }
    }

    /// The table of the cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterHealth>> {
        self.clusters.iter().map(|(c, _)| c).find(|c| c.name == name)
    }
}

/// One sweep over a snapshot's `clusters` at `now` (ms of [`now_ms`]): returns ejected endpoints
/// whose time is up, and decays the multiplier of those that stayed healthy an `interval` since
/// they returned (Envoy's `checkHostForUneject`). Control thread, every
/// [`sweep_interval`].
pub fn sweep(clusters: &[Cluster], tables: &HealthTables, now: u64) {
    for (c, (ch, eps)) in clusters.iter().zip(&tables.clusters) {
        let Some(od) = &c.outlier else { continue };
        let interval = od.interval.as_millis() as u64;
        let mut changed = false;
        for ep in eps {
            if ep.flags() & FAILED_OUTLIER_CHECK == 0 {
                let returned = ep.returned_at_ms.load(Relaxed);
                if returned != 0 && now.saturating_sub(returned) >= interval && ep.ejections() > 0 {
                    ep.ejections.fetch_sub(1, Relaxed);
                    ep.returned_at_ms.store(now, Relaxed);
                }
                continue;
            }
            if now.saturating_sub(ep.ejected_at_ms.load(Relaxed)) >= ejection_ms(od, ep) {
                // Envoy resets the streaks on return, so a counter near its threshold does
                // not eject again on one error.
                ep.consecutive_5xx.store(0, Relaxed);
                ep.consecutive_gateway.store(0, Relaxed);
                ep.consecutive_local.store(0, Relaxed);
                ep.returned_at_ms.store(now.max(1), Relaxed);
                ep.flags.fetch_and(!FAILED_OUTLIER_CHECK, Relaxed);
                changed = true;
                log_event(format_args!(
                    "outlier detection: returned {} to cluster {} after {} ms",
                    ep.address,
                    ch.name,
                    now.saturating_sub(ep.ejected_at_ms.load(Relaxed))
                ));
            }
        }
        if changed {
            ch.recompute();
        }
    }
}

/// How often the control thread sweeps: the shortest `interval` of the snapshot's clusters,
/// `None` when no cluster has outlier detection.
pub fn sweep_interval(clusters: &[Cluster]) -> Option<Duration> {
    clusters
        .iter()
        .filter_map(|c| c.outlier.as_ref().map(|o| o.interval))
        .min()
}

/// Logs an ejection, a return or a health change, at most [`LOG_LINES_PER_SECOND`] a second
/// for the whole process (these events come from any thread, so the limiter is two atomics
/// written only on these rare paths).
fn log_event(line: std::fmt::Arguments<'_>) {
    static WINDOW_S: AtomicU64 = AtomicU64::new(0);
    static IN_WINDOW: AtomicU32 = AtomicU32::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let second = now_ms() / 1000 + 1;
    if WINDOW_S.swap(second, Relaxed) != second {
        IN_WINDOW.store(0, Relaxed);
    }
    if IN_WINDOW.fetch_add(1, Relaxed) >= LOG_LINES_PER_SECOND {
        SUPPRESSED.fetch_add(1, Relaxed);
        return;
    }
    match SUPPRESSED.swap(0, Relaxed) {
        0 => tracing::warn!("{line}"),
        n => tracing::warn!("{line} ({n} similar lines suppressed)"),
    }
}

/// Health log lines let through per second.
pub const LOG_LINES_PER_SECOND: u32 = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_api::snapshot::LbPolicy;

    fn od(consecutive_5xx: u32, max_pct: u8, min_health: u8) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx,
            consecutive_gateway: 0,
            consecutive_local_origin: 5,
            split_local_origin: false,
            interval: Duration::from_millis(100),
            base_ejection_time: Duration::from_millis(1000),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: max_pct,
            min_health_percent: min_health,
        }
    }

    fn cluster(n: usize, outlier: OutlierDetection) -> Cluster {
        let mut c = crate::lb::test_cluster(&vec![1; n], LbPolicy::RoundRobin);
        c.outlier = Some(outlier);
        c
    }

    #[test]
    fn consecutive_5xx_eject_once_and_a_success_resets_the_streak() {
        let o = od(3, 100, 0);
        let (ch, eps) = ClusterHealth::detached(&cluster(3, o.clone()));
        ch.record(&o, &eps[0], Outcome::Response(500));
        ch.record(&o, &eps[0], Outcome::Response(500));
        ch.record(&o, &eps[0], Outcome::Response(200));
        ch.record(&o, &eps[0], Outcome::Response(503));
        ch.record(&o, &eps[0], Outcome::Response(500));
        assert!(!eps[0].is_out(), "the streak restarted after the 200");
        ch.record(&o, &eps[0], Outcome::LocalFailure);
        assert_eq!(
            eps[0].flags(),
            FAILED_OUTLIER_CHECK,
            "a local failure counts as 5xx unsplit"
        );
        ch.record(&o, &eps[0], Outcome::Response(500));
        assert_eq!(ch.stats.ejections_enforced_total.load(Relaxed), 1);
        assert_eq!(ch.stats.ejections_enforced_consecutive_5xx.load(Relaxed), 1);
        assert!(ch.filtering());
    }

    #[test]
    fn gateway_and_split_local_origin_detectors() {
        let mut o = od(0, 100, 0);
        o.consecutive_gateway = 2;
        let (ch, eps) = ClusterHealth::detached(&cluster(2, o.clone()));
        ch.record(&o, &eps[0], Outcome::Response(500));
        ch.record(&o, &eps[0], Outcome::Response(502));
        ch.record(&o, &eps[0], Outcome::Response(500));
        ch.record(&o, &eps[0], Outcome::Response(504));
        assert!(!eps[0].is_out(), "a 500 breaks a gateway streak");
        ch.record(&o, &eps[0], Outcome::Response(503));
        assert!(eps[0].is_out());
        assert_eq!(ch.stats.ejections_enforced_consecutive_gateway_failure.load(Relaxed), 1);

        let mut o = od(0, 100, 0);
        o.split_local_origin = true;
        o.consecutive_local_origin = 2;
        let (ch, eps) = ClusterHealth::detached(&cluster(2, o.clone()));
        ch.record(&o, &eps[1], Outcome::Response(503));
        ch.record(&o, &eps[1], Outcome::LocalFailure);
        ch.record(&o, &eps[1], Outcome::Response(503));
        ch.record(&o, &eps[1], Outcome::LocalFailure);
        assert!(!eps[1].is_out(), "an answer (even a 503) ends a local-origin streak");
        ch.record(&o, &eps[1], Outcome::LocalFailure);
        assert!(eps[1].is_out());
        assert_eq!(
            ch.stats
                .ejections_enforced_consecutive_local_origin_failure
                .load(Relaxed),
            1
        );
    }

    #[test]
    fn max_ejection_percent_follows_envoys_rule() {
        // 3 endpoints, 10%: 100 × 1 / 3 > 10, so none is ejected.
        let o = od(1, 10, 0);
        let (ch, eps) = ClusterHealth::detached(&cluster(3, o.clone()));
        ch.record(&o, &eps[0], Outcome::Response(500));
        assert!(!eps[0].is_out());
        assert_eq!(ch.stats.ejections_overflow.load(Relaxed), 1);
        // 50% of 4: two may go, the third may not.
        let o = od(1, 50, 0);
        let (ch, eps) = ClusterHealth::detached(&cluster(4, o.clone()));
        for ep in &eps[..3] {
            ch.record(&o, ep, Outcome::Response(500));
        }
        assert_eq!(ch.ejections_active(), 2);
        assert!(!eps[2].is_out());
    }

    #[test]
    fn racing_cores_never_pass_max_ejection_percent() {
        for _ in 0..50 {
            let o = od(1, 50, 0);
            let (ch, eps) = ClusterHealth::detached(&cluster(10, o.clone()));
            std::thread::scope(|s| {
                for ep in &eps {
                    let (ch, o) = (&ch, &o);
                    s.spawn(move || ch.record(o, ep, Outcome::Response(500)));
                }
            });
            assert_eq!(ch.ejections_active(), 5);
            assert_eq!(ch.stats.ejections_overflow.load(Relaxed), 5);
        }
    }

    #[test]
    fn below_min_health_percent_the_cluster_panics_and_stops_filtering() {
        let o = od(1, 100, 60);
        let (ch, eps) = ClusterHealth::detached(&cluster(2, o.clone()));
        ch.min_health_percent.store(60, Relaxed);
        ch.record(&o, &eps[0], Outcome::Response(500));
        assert!(eps[0].is_out(), "ejected (Envoy ejects in panic too)");
        assert!(ch.in_panic(), "1 of 2 healthy is under 60%");
        assert!(!ch.filtering(), "panic: the balancer ignores health");
    }

    #[test]
    fn sweep_returns_after_base_times_ejections_and_decays_the_multiplier() {
        let o = od(1, 100, 0);
        let snap = vec![cluster(2, o.clone())];
        let tables = HealthTables::carry_over(&HealthTables::default(), &snap);
        let (ch, eps) = &tables.clusters[0];
        let ep = &eps[0];
        ch.record(&o, ep, Outcome::Response(500));
        let t0 = ep.ejected_at_ms.load(Relaxed);
        sweep(&snap, &tables, t0 + 999);
        assert!(ep.is_out(), "base ejection time is 1 s");
        sweep(&snap, &tables, t0 + 1000);
        assert!(!ep.is_out());
        assert!(!ch.filtering());
        // Ejected again at once: twice the base.
        ch.record(&o, ep, Outcome::Response(500));
        assert_eq!(ep.ejections(), 2);
        let t1 = ep.ejected_at_ms.load(Relaxed);
        sweep(&snap, &tables, t1 + 1500);
        assert!(ep.is_out(), "second ejection lasts 2 s");
        sweep(&snap, &tables, t1 + 2000);
        assert!(!ep.is_out());
        // Healthy for an interval: the multiplier decays by one per interval.
        sweep(&snap, &tables, t1 + 2100);
        assert_eq!(ep.ejections(), 1);
        sweep(&snap, &tables, t1 + 2200);
        assert_eq!(ep.ejections(), 0);
    }

    #[test]
    fn ejection_survives_a_reload_by_cluster_name_and_address() {
        let o = od(1, 100, 0);
        let first = vec![cluster(3, o.clone())];
        let t1 = HealthTables::carry_over(&HealthTables::default(), &first);
        t1.clusters[0]
            .0
            .record(&o, &t1.clusters[0].1[1], Outcome::Response(500));
        // The reload drops endpoint 0: endpoint 1 is now at index 0, still ejected.
        let mut c = cluster(3, o.clone());
        c.endpoints.remove(0);
        let t2 = HealthTables::carry_over(&t1, &[c]);
        assert!(Arc::ptr_eq(&t1.clusters[0].0, &t2.clusters[0].0));
        assert!(t2.clusters[0].1[0].is_out());
        assert!(!t2.clusters[0].1[1].is_out());
        assert_eq!(t2.clusters[0].0.ejections_active(), 1);
        // Outlier detection removed from the config: nothing stays ejected by it.
        let mut c = cluster(2, o);
        c.outlier = None;
        let t3 = HealthTables::carry_over(&t2, &[c]);
        assert!(!t3.clusters[0].1[0].is_out());
    }

    #[test]
    fn probes_take_out_after_unhealthy_threshold_and_return_after_healthy_threshold() {
        let (ch, eps) = ClusterHealth::detached(&cluster(2, od(5, 10, 0)));
        let ep = &eps[1];
        ch.record_probe(ep, false, 2, 2, "refused");
        assert!(!ep.is_out());
        ch.record_probe(ep, false, 2, 2, "refused");
        assert_eq!(ep.flags(), FAILED_ACTIVE_HC);
        ch.record_probe(ep, true, 2, 2, "");
        assert!(ep.is_out());
        ch.record_probe(ep, true, 2, 2, "");
        assert!(!ep.is_out());
        assert_eq!(ch.stats.health_check_attempt.load(Relaxed), 4);
        assert_eq!(ch.stats.health_check_failure.load(Relaxed), 2);
    }
}
