//! Load balancing: step 6 of the request path, "pick an endpoint".
//!
//! Each worker keeps its own [`ClusterState`] per cluster (round-robin cursor, smooth-weighted
//! round-robin weights, in-flight counts), so picking never touches another core's memory and
//! takes no lock. Consistent-hash tables (ring hash, Maglev) are built once by the compiler and
//! shared read-only. Nothing here allocates on a pick.
//!
//! Endpoint health ([`health`]) is the exception to per-core state: an endpoint ejected by
//! outlier detection or failing its active health check is left out on every core. A pick reads
//! it with relaxed loads of flags written only when an endpoint leaves or returns.
//!
//! A retry passes the endpoints its request already tried ([`TriedEndpoints`]) and gets one it
//! has not tried where one exists: Envoy's `previous_hosts` retry predicate, which Istio sets on
//! every route, so a retry after a connect failure does not land on the dead endpoint again.

pub mod health;
pub(crate) mod locality;
pub mod probe;

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use ringmesh_api::snapshot::{Cluster, LbPolicy};

use crate::rng::FastRng;
use health::{ClusterHealth, EndpointHealth, Outcome};

/// Counters of one endpoint on one worker. Kept across reloads (keyed by address).
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Requests sent (each try counts).
    pub rq_total: Cell<u64>,
    /// Requests in flight; least-request balancing reads this.
    pub rq_active: Cell<u64>,
    /// Connect failures.
    pub cx_connect_fail: Cell<u64>,
}

/// Counters of one cluster on one worker. Kept across reloads (keyed by cluster name).
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Requests sent (each try counts).
    pub rq_total: Cell<u64>,
    /// Requests in flight.
    pub rq_active: Cell<u64>,
    /// Upstream responses by class (index 1..=5).
    pub rq_by_class: [Cell<u64>; 6],
    /// Retries sent to the cluster.
    pub rq_retry: Cell<u64>,
    /// Requests to the cluster that timed out (route or per-try timeout, or gRPC deadline).
    pub rq_timeout: Cell<u64>,
    /// Upstream connections this core holds to the cluster (idle pooled ones included).
    pub cx_active: Cell<u64>,
    /// Connections refused by `maxConnections` (Envoy's `upstream_cx_overflow`).
    pub cx_overflow: Cell<u64>,
    /// Requests waiting for a connection now.
    pub rq_pending_active: Cell<u64>,
    /// Requests refused because the pending queue was full (`upstream_rq_pending_overflow`).
    pub rq_pending_overflow: Cell<u64>,
    /// Retries in flight now (their back-off and their try).
    pub rq_retry_active: Cell<u64>,
    /// Retries not made because `maxRetries` was reached (`upstream_rq_retry_overflow`).
    pub rq_retry_overflow: Cell<u64>,
    /// Requests waiting on this core for a connection, first come first woken.
    pub waiters: crate::cluster::breaker::Waiters,
    /// Per endpoint address, for the endpoints of the cluster's current snapshot only.
    pub endpoints: RefCell<HashMap<SocketAddr, Rc<EndpointCounters>>>,
}

impl ClusterCounters {
    /// Counters for `addrs`, in order: an endpoint that stays carries its counters over, a new
    /// one starts at zero, and one no longer listed is dropped — with endpoints churning (pods
    /// rescheduled, autoscaling) the map would otherwise grow with every address ever seen.
    /// Requests still in flight on a dropped endpoint keep their own `Rc`.
    fn carry_over(&self, addrs: &[SocketAddr]) -> Vec<Rc<EndpointCounters>> {
        let mut all = self.endpoints.borrow_mut();
        let mut kept = HashMap::with_capacity(addrs.len());
        let counters = addrs
            .iter()
            .map(|a| {
                kept.entry(*a)
                    .or_insert_with(|| all.remove(a).unwrap_or_default())
                    .clone()
            })
            .collect();
        *all = kept;
        counters
    }
}

/// One worker's balancing state for one cluster of one snapshot.
#[derive(Debug)]
pub struct ClusterState {
    /// Counters shared with later snapshots of the same cluster.
    pub counters: Rc<ClusterCounters>,
    /// Counters per endpoint, indexed like `Cluster::endpoints`.
    pub endpoints: Vec<Rc<EndpointCounters>>,
    /// The cluster's circuit-breaker state shared by the workers (a limited cluster only).
    pub shared: Option<std::sync::Arc<crate::cluster::breaker::ClusterShared>>,
    cursor: Cell<usize>,
    /// Smooth weighted round robin current weights (nginx's algorithm); empty when all weights
    /// are equal and a plain cursor does the job.
    swrr: Vec<Cell<i64>>,
    total_weight: u64,
    /// The cluster's health table, shared by every core ([`health`]).
    pub health: Arc<ClusterHealth>,
    /// Health per endpoint, indexed like `Cluster::endpoints`.
    pub endpoint_health: Vec<Arc<EndpointHealth>>,
    /// Whether the cluster has outlier detection or health checks: without either, picks never
    /// look at health.
    checks_health: bool,
}

impl ClusterState {
    /// State for `cluster` whose endpoints have these addresses, with its health table (from
    /// [`health::HealthTables`], indexed like the endpoints).
    pub fn new(
        cluster: &Cluster,
        counters: Rc<ClusterCounters>,
        addrs: &[SocketAddr],
        (health, endpoint_health): (Arc<ClusterHealth>, Vec<Arc<EndpointHealth>>),
    ) -> Self {
        let endpoints = counters.carry_over(addrs);
        // A table that does not line up (it cannot, but a mismatch must not panic a pick):
        // a detached one.
        let (health, endpoint_health) = if endpoint_health.len() == cluster.endpoints.len() {
            (health, endpoint_health)
        } else {
            ClusterHealth::detached(cluster)
        };
        let weighted = cluster.endpoints.windows(2).any(|w| w[0].weight != w[1].weight);
        let swrr = if weighted {
            cluster.endpoints.iter().map(|_| Cell::new(0)).collect()
        } else {
            Vec::new()
        };
        let total_weight = cluster.endpoints.iter().map(|e| e.weight.max(1) as u64).sum();
        ClusterState {
            counters,
            endpoints,
            shared: None,
            cursor: Cell::new(0),
            swrr,
            total_weight,
            health,
            endpoint_health,
            checks_health: cluster.outlier.is_some() || cluster.health_check.is_some(),
        }
    }

    /// Whether a pick must skip unhealthy endpoints now: the cluster checks health, some
    /// endpoint is out, and the cluster is not in panic mode.
    #[inline]
    fn filtering(&self) -> bool {
        self.checks_health && self.health.filtering()
    }
}

/// Counts one try's outcome for outlier detection (nothing without `outlierDetection`).
pub fn record_outcome(cluster: &Cluster, state: &ClusterState, endpoint: usize, outcome: Outcome) {
    if let (Some(od), Some(ep)) = (&cluster.outlier, state.endpoint_health.get(endpoint)) {
        state.health.record(od, ep, outcome);
    }
}

/// The consistent-hash key of a client address (`useSourceIp`): the hash of its octets, the
/// key HTTP requests use too, so one client maps to the same endpoint on HTTP and TCP
/// listeners; no allocation.
pub fn source_ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => ringmesh_api::hash_table::hash_bytes(&v4.octets()),
        std::net::IpAddr::V6(v6) => ringmesh_api::hash_table::hash_bytes(&v6.octets()),
    }
}

/// Endpoints one request has tried, remembered inline (no allocation). Past
/// [`TriedEndpoints::CAPACITY`] distinct endpoints the oldest is forgotten, which only makes a
/// later retry less choosy.
#[derive(Debug, Default, Clone)]
pub struct TriedEndpoints {
    slots: [u32; TriedEndpoints::CAPACITY],
    len: u8,
    next: u8,
}

impl TriedEndpoints {
    /// Endpoints remembered at most.
    pub const CAPACITY: usize = 8;

    /// Remembers that `endpoint` was tried.
    pub fn insert(&mut self, endpoint: usize) {
        if self.contains(endpoint) {
            return;
        }
        let i = endpoint as u32;
        if (self.len as usize) < Self::CAPACITY {
            self.slots[self.len as usize] = i;
            self.len += 1;
        } else {
            self.slots[self.next as usize] = i;
            self.next = (self.next + 1) % Self::CAPACITY as u8;
        }
    }

    /// Whether `endpoint` was tried.
    pub fn contains(&self, endpoint: usize) -> bool {
        self.slots[..self.len as usize].contains(&(endpoint as u32))
    }

    /// How many distinct endpoints are remembered.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no endpoint was tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Times the balancer is asked again when it picks an endpoint already tried, before the next
/// untried one in index order is taken (Istio sets Envoy's `host_selection_retry_max_attempts`
/// to 5).
const RESELECT_ATTEMPTS: u64 = 5;

/// Picks an endpoint index for a request, or `None` when the cluster has no endpoint.
///
/// `hash` is the request's consistent-hash key when the policy hashes and the request carries
/// the property (header, cookie, source IP); without it a hashing policy falls back to random,
/// as Envoy does. An endpoint in `tried` is picked only when every endpoint was tried.
pub fn pick(
    cluster: &Cluster,
    state: &ClusterState,
    rng: &FastRng,
    hash: Option<u64>,
    tried: &TriedEndpoints,
) -> Option<usize> {
    let n = cluster.endpoints.len();
    let first = pick_any(cluster, state, rng, hash)?;
    let filtering = state.filtering();
    // Unhealthy endpoints (ejected, failing their check) are skipped like tried ones, but never
    // taken back: with every endpoint out there is no pick (503 `UH`), unless panic mode
    // (`minHealthPercent`) switched filtering off.
    let out = |i: usize| filtering && state.endpoint_health[i].is_out();
    if !out(first) && (!tried.contains(first) || tried.len() >= n) {
        return Some(first);
    }
    // Ask the balancer again (a hashing policy with a perturbed key, so it lands elsewhere on
    // its table), then fall back to the next untried endpoint after the first pick.
    for k in 1..=RESELECT_ATTEMPTS {
        let again = hash.map(|h| h ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match pick_any(cluster, state, rng, again) {
            Some(i) if !tried.contains(i) && !out(i) => return Some(i),
            _ => {}
        }
    }
    // Under a locality plan a retry stays as near as it can: the best group with an endpoint
    // not tried yet.
    if let Some(plan) = &cluster.locality {
        if let Some(i) = locality::nearest_untried(plan, |i| !tried.contains(i) && !out(i)) {
            return Some(i);
        }
    }
    let next = (1..n).map(|k| (first + k) % n);
    next.clone()
        .find(|&i| !tried.contains(i) && !out(i))
        .or_else(|| (!out(first)).then_some(first))
        .or_else(|| next.clone().find(|&i| !out(i)))
}

/// One pick of the cluster's policy, ignoring what was tried.
fn pick_any(cluster: &Cluster, state: &ClusterState, rng: &FastRng, hash: Option<u64>) -> Option<usize> {
    let n = cluster.endpoints.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return Some(0);
    }
    if let (Some(plan), None) = (&cluster.locality, hash) {
        if !matches!(cluster.lb, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }) {
            if let Some(i) = locality::pick(cluster, state, rng, plan) {
                return Some(i);
            }
        }
    }
    match &cluster.lb {
        LbPolicy::RoundRobin => Some(round_robin(cluster, state)),
        LbPolicy::Random => Some(weighted_random(cluster, state, rng)),
        LbPolicy::LeastRequest => Some(least_request(cluster, state, rng)),
        LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => hash
            .and_then(|h| consistent_pick(cluster, h))
            .or_else(|| Some(weighted_random(cluster, state, rng))),
    }
}

/// The endpoint a consistent-hash policy's table gives the key `hash`: `None` for another
/// policy, or when the table names no endpoint of the cluster (the pick is then random).
/// Stateless, so the admin server's `/explain` can say where a key goes.
pub fn consistent_pick(cluster: &Cluster, hash: u64) -> Option<usize> {
    let i = match &cluster.lb {
        LbPolicy::RingHash { table, .. } => table.pick(hash),
        LbPolicy::Maglev { table, .. } => table.pick(hash),
        _ => return None,
    };
    (i < cluster.endpoints.len()).then_some(i)
}

fn round_robin(cluster: &Cluster, state: &ClusterState) -> usize {
    if state.swrr.is_empty() {
        let i = state.cursor.get();
        state.cursor.set(i.wrapping_add(1));
        return i % cluster.endpoints.len();
    }
    // Smooth weighted round robin: every endpoint gains its weight, the largest wins and pays
    // the total. Spreads a 3:1 split as a,a,b,a rather than a,a,a,b.
    let mut best = 0;
    let mut best_w = i64::MIN;
    for (i, (cw, ep)) in state.swrr.iter().zip(cluster.endpoints.iter()).enumerate() {
        let w = cw.get() + ep.weight.max(1) as i64;
        cw.set(w);
        if w > best_w {
            best_w = w;
            best = i;
        }
    }
    state.swrr[best].set(best_w - state.total_weight as i64);
    best
}

fn weighted_random(cluster: &Cluster, state: &ClusterState, rng: &FastRng) -> usize {
    if state.swrr.is_empty() {
        return rng.below(cluster.endpoints.len() as u32) as usize;
    }
    let mut point = rng.next_u64() % state.total_weight.max(1);
    for (i, ep) in cluster.endpoints.iter().enumerate() {
        let w = ep.weight.max(1) as u64;
        if point < w {
            return i;
        }
        point -= w;
    }
    cluster.endpoints.len() - 1
}

/// Power of two choices: two random endpoints, the one with fewer in-flight requests per unit of
/// weight wins. Near least-loaded at O(1) cost and without herding on a single endpoint.
fn least_request(cluster: &Cluster, state: &ClusterState, rng: &FastRng) -> usize {
    let n = cluster.endpoints.len() as u32;
    let a = rng.below(n) as usize;
    let mut b = rng.below(n - 1) as usize;
    if b >= a {
        b += 1;
    }
    let load = |i: usize| {
        let active = state.endpoints[i].rq_active.get() as u128;
        let weight = cluster.endpoints[i].weight.max(1) as u128;
        (active, weight)
    };
    let (la, wa) = load(a);
    let (lb, wb) = load(b);
    // Compare la/wa with lb/wb without division.
    if la * wb <= lb * wa {
        a
    } else {
        b
    }
}

/// A cluster of endpoints on 127.0.0.1:10000 and up with these weights, under `lb`, without
/// health settings: what the balancer's and the health table's tests start from.
#[cfg(test)]
pub(crate) fn test_cluster(weights: &[u32], lb: LbPolicy) -> Cluster {
    use ringmesh_api::snapshot::{Endpoint, PoolSettings};
    use std::time::Duration;
    let endpoints: Vec<Endpoint> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| Endpoint {
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 10000 + i as u16)),
            weight: *w,
            labels: Default::default(),
            meshed: false,
        })
        .collect();
    Cluster {
        name: "outbound|80||svc".into(),
        service: "svc".into(),
        port: 80,
        subset: None,
        endpoints,
        lb,
        connect_timeout: Duration::from_secs(1),
        pool: PoolSettings {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 8,
            ..PoolSettings::default()
        },
        protocol: Default::default(),
        upgrade_meshed: true,
        host_not_found: None,
        tls: Default::default(),
        outlier: None,
        health_check: None,
        locality: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_api::snapshot::Endpoint;
    use std::time::Duration;

    #[test]
    fn endpoint_counters_follow_the_endpoints_of_the_latest_state() {
        use crate::telemetry::stats::inc;
        let (c, first) = cluster(&[1, 1, 1], LbPolicy::RoundRobin);
        inc(&first.endpoints[1].rq_total);
        let addrs: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.address).collect();
        let churned = [addrs[1], SocketAddr::from(([127, 0, 0, 1], 9))];
        let next = ClusterState::new(&c, first.counters.clone(), &churned, ClusterHealth::detached(&c));
        assert_eq!(
            next.endpoints[0].rq_total.get(),
            1,
            "a staying endpoint keeps its counters"
        );
        assert_eq!(next.endpoints[1].rq_total.get(), 0);
        let map = first.counters.endpoints.borrow();
        let mut kept: Vec<_> = map.keys().copied().collect();
        kept.sort();
        let mut want = churned.to_vec();
        want.sort();
        assert_eq!(kept, want, "departed endpoints are dropped");
    }

    /// This worker's state for `c`, with a health table of its own.
    fn state_of(c: &Cluster) -> ClusterState {
        let addrs: Vec<_> = c.endpoints.iter().map(|e| e.address).collect();
        ClusterState::new(
            c,
            Rc::new(ClusterCounters::default()),
            &addrs,
            ClusterHealth::detached(c),
        )
    }

    fn cluster(weights: &[u32], lb: LbPolicy) -> (Cluster, ClusterState) {
        let c = test_cluster(weights, lb);
        let s = state_of(&c);
        (c, s)
    }

    #[test]
    fn round_robin_cycles() {
        let (c, s) = cluster(&[1, 1, 1], LbPolicy::RoundRobin);
        let rng = FastRng::with_seed(1);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(&c, &s, &rng, None, &TriedEndpoints::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_exact() {
        let (c, s) = cluster(&[3, 1], LbPolicy::RoundRobin);
        let rng = FastRng::with_seed(1);
        let picks: Vec<_> = (0..8)
            .map(|_| pick(&c, &s, &rng, None, &TriedEndpoints::default()).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        // Smooth: never three of endpoint 0 in a row across a cycle of 4.
        assert_eq!(&picks[..4], &[0, 0, 1, 0]);
    }

    #[test]
    fn random_respects_weights() {
        let (c, s) = cluster(&[9, 1], LbPolicy::Random);
        let rng = FastRng::with_seed(7);
        let zeros = (0..10_000)
            .filter(|_| pick(&c, &s, &rng, None, &TriedEndpoints::default()) == Some(0))
            .count();
        assert!((8_800..9_200).contains(&zeros), "{zeros}");
    }

    #[test]
    fn least_request_avoids_busy_endpoint() {
        let (c, s) = cluster(&[1, 1], LbPolicy::LeastRequest);
        s.endpoints[0].rq_active.set(10);
        let rng = FastRng::with_seed(3);
        for _ in 0..100 {
            assert_eq!(pick(&c, &s, &rng, None, &TriedEndpoints::default()), Some(1));
        }
    }

    #[test]
    fn empty_cluster_has_no_pick() {
        let (c, s) = cluster(&[], LbPolicy::RoundRobin);
        assert_eq!(
            pick(&c, &s, &FastRng::with_seed(1), None, &TriedEndpoints::default()),
            None
        );
    }

    #[test]
    fn a_retry_avoids_endpoints_already_tried() {
        let rng = FastRng::with_seed(5);
        let policies = [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest];
        for lb in policies {
            let (c, s) = cluster(&[1, 1, 1], lb);
            let mut tried = TriedEndpoints::default();
            tried.insert(0);
            for _ in 0..200 {
                let i = pick(&c, &s, &rng, None, &tried).unwrap();
                assert_ne!(i, 0, "{:?}", c.lb);
            }
            tried.insert(2);
            for _ in 0..50 {
                assert_eq!(pick(&c, &s, &rng, None, &tried), Some(1), "{:?}", c.lb);
            }
            // Every endpoint tried: any is fine again.
            tried.insert(1);
            assert!(pick(&c, &s, &rng, None, &tried).is_some());
        }
    }

    #[test]
    fn a_retry_under_a_hash_policy_leaves_the_tried_endpoint() {
        let endpoints: Vec<Endpoint> = (0..3)
            .map(|i| Endpoint {
                address: SocketAddr::from(([127, 0, 0, 1], 10000 + i as u16)),
                weight: 1,
                labels: Default::default(),
                meshed: false,
            })
            .collect();
        let table = ringmesh_api::hash_table::RingHashTable::new(&endpoints, 1024);
        let (mut c, _) = cluster(&[1, 1, 1], LbPolicy::RoundRobin);
        c.endpoints = endpoints;
        c.lb = LbPolicy::RingHash {
            table,
            hash_on: ringmesh_api::snapshot::HashOn::SourceIp,
        };
        let s = state_of(&c);
        let rng = FastRng::with_seed(9);
        for key in 0..100u64 {
            let owner = pick(&c, &s, &rng, Some(key), &TriedEndpoints::default()).unwrap();
            assert_eq!(pick(&c, &s, &rng, Some(key), &TriedEndpoints::default()), Some(owner));
            let mut tried = TriedEndpoints::default();
            tried.insert(owner);
            assert_ne!(pick(&c, &s, &rng, Some(key), &tried), Some(owner));
        }
    }

    /// A cluster of `n` endpoints with outlier detection under `lb`, endpoint `out` ejected.
    fn with_ejected(n: usize, lb: LbPolicy, out: usize) -> (Cluster, ClusterState) {
        let (mut c, _) = cluster(&vec![1; n], lb);
        c.outlier = Some(ringmesh_api::snapshot::OutlierDetection {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            consecutive_local_origin: 5,
            split_local_origin: false,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 100,
            min_health_percent: 0,
        });
        let s = state_of(&c);
        record_outcome(&c, &s, out, Outcome::Response(503));
        assert!(s.endpoint_health[out].is_out());
        (c, s)
    }

    /// Four endpoints: 0 in the proxy's subzone, 1 and 2 in its zone, 3 in another region;
    /// `out` ejected.
    fn by_locality(lb: LbPolicy, out: &[usize]) -> (Cluster, ClusterState) {
        let (mut c, _) = with_ejected(4, lb, 0);
        c.locality = Some(ringmesh_api::snapshot::LocalityPlan::Failover(vec![
            vec![0],
            vec![1, 2],
            vec![3],
        ]));
        let s = state_of(&c);
        for &i in out {
            record_outcome(&c, &s, i, Outcome::Response(503));
            assert!(s.endpoint_health[i].is_out());
        }
        (c, s)
    }

    fn shares(c: &Cluster, s: &ClusterState, picks: usize) -> Vec<usize> {
        let rng = FastRng::with_seed(21);
        let mut seen = vec![0; c.endpoints.len()];
        for _ in 0..picks {
            seen[pick(c, s, &rng, None, &TriedEndpoints::default()).unwrap()] += 1;
        }
        seen
    }

    #[test]
    fn traffic_stays_in_the_best_locality_and_fails_over_as_envoy_spills() {
        for lb in [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest] {
            let (c, s) = by_locality(lb.clone(), &[]);
            assert_eq!(shares(&c, &s, 1000), [1000, 0, 0, 0], "{lb:?}: all in the own subzone");
            let (c, s) = by_locality(lb.clone(), &[0]);
            let got = shares(&c, &s, 1000);
            assert_eq!((got[0], got[3]), (0, 0), "{lb:?}: the zone takes it all: {got:?}");
            assert!(got[1] > 300 && got[2] > 300, "{lb:?}: spread in the zone: {got:?}");
            // Half the zone left: 1.4 × 50 % = 70 % stays there, 30 % spills to the region.
            let (c, s) = by_locality(lb.clone(), &[0, 1]);
            let got = shares(&c, &s, 10_000);
            assert_eq!((got[0], got[1]), (0, 0), "{lb:?}: {got:?}");
            assert!((6_500..=7_500).contains(&got[2]), "{lb:?}: {got:?}");
        }
    }

    #[test]
    fn distribute_splits_by_weight_among_groups_with_healthy_endpoints() {
        let (mut c, _) = cluster(&[1, 1, 1], LbPolicy::Random);
        c.locality = Some(ringmesh_api::snapshot::LocalityPlan::Distribute(vec![
            (80, vec![0]),
            (20, vec![1, 2]),
        ]));
        let s = state_of(&c);
        let got = shares(&c, &s, 10_000);
        assert!((7_500..=8_500).contains(&got[0]), "{got:?}");
        assert!((1_500..=2_500).contains(&(got[1] + got[2])), "{got:?}");
    }

    #[test]
    fn every_policy_skips_an_ejected_endpoint() {
        let rng = FastRng::with_seed(11);
        let (ring_c, _) = with_ejected(3, LbPolicy::RoundRobin, 0);
        let ring = LbPolicy::RingHash {
            table: ringmesh_api::hash_table::RingHashTable::new(&ring_c.endpoints, 1024),
            hash_on: ringmesh_api::snapshot::HashOn::SourceIp,
        };
        let maglev = LbPolicy::Maglev {
            table: ringmesh_api::hash_table::MaglevTable::new(&ring_c.endpoints, 251),
            hash_on: ringmesh_api::snapshot::HashOn::SourceIp,
        };
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
            ring,
            maglev,
        ] {
            let (c, s) = with_ejected(3, lb, 1);
            for key in 0..300u64 {
                let hash = matches!(c.lb, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }).then_some(key);
                let i = pick(&c, &s, &rng, hash, &TriedEndpoints::default()).unwrap();
                assert_ne!(i, 1, "{:?}", c.lb);
            }
            // A retry with the other healthy endpoint tried still avoids the ejected one.
            let mut tried = TriedEndpoints::default();
            tried.insert(0);
            assert_eq!(pick(&c, &s, &rng, None, &tried), Some(2), "{:?}", c.lb);
        }
    }

    #[test]
    fn a_hash_key_owned_by_an_ejected_endpoint_moves_and_comes_back() {
        let (c, _) = with_ejected(3, LbPolicy::RoundRobin, 0);
        let lb = LbPolicy::RingHash {
            table: ringmesh_api::hash_table::RingHashTable::new(&c.endpoints, 1024),
            hash_on: ringmesh_api::snapshot::HashOn::SourceIp,
        };
        let (c, s) = with_ejected(3, lb, 2);
        let rng = FastRng::with_seed(3);
        let key = (0..1000u64).find(|k| consistent_pick(&c, *k) == Some(2)).unwrap();
        let moved = pick(&c, &s, &rng, Some(key), &TriedEndpoints::default()).unwrap();
        assert_ne!(moved, 2);
        assert_eq!(
            pick(&c, &s, &rng, Some(key), &TriedEndpoints::default()),
            Some(moved),
            "the fallback is stable for a key"
        );
    }

    #[test]
    fn every_endpoint_out_is_no_pick_unless_the_cluster_panics() {
        let (c, s) = with_ejected(2, LbPolicy::RoundRobin, 0);
        record_outcome(&c, &s, 1, Outcome::Response(500));
        let rng = FastRng::with_seed(1);
        assert_eq!(pick(&c, &s, &rng, None, &TriedEndpoints::default()), None);
    }

    #[test]
    fn without_health_settings_flags_are_not_read() {
        let (c, s) = with_ejected(2, LbPolicy::RoundRobin, 0);
        let mut plain = c.clone();
        plain.outlier = None;
        let addrs: Vec<_> = c.endpoints.iter().map(|e| e.address).collect();
        let s2 = ClusterState::new(
            &plain,
            Rc::new(ClusterCounters::default()),
            &addrs,
            (s.health.clone(), s.endpoint_health.clone()),
        );
        let rng = FastRng::with_seed(1);
        let picks: Vec<_> = (0..4)
            .map(|_| pick(&plain, &s2, &rng, None, &TriedEndpoints::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn tried_endpoints_forget_the_oldest_past_capacity() {
        let mut t = TriedEndpoints::default();
        for i in 0..TriedEndpoints::CAPACITY {
            t.insert(i);
            t.insert(i);
        }
        assert_eq!(t.len(), TriedEndpoints::CAPACITY);
        t.insert(100);
        assert!(t.contains(100));
        assert!(!t.contains(0));
        assert!(t.contains(1));
    }
}
