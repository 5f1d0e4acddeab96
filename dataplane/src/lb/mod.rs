//! Load balancing: step 6 of the request path, "pick an endpoint".
//!
//! Each worker keeps its own [`ClusterState`] per cluster (round-robin cursor, smooth-weighted
//! round-robin weights, in-flight counts), so picking never touches another core's memory and
//! takes no lock. Consistent-hash tables (ring hash, Maglev) are built once by the compiler and
//! shared read-only. Nothing here allocates on a pick.
//!
//! A retry passes the endpoints its request already tried ([`TriedEndpoints`]) and gets one it
//! has not tried where one exists: Envoy's `previous_hosts` retry predicate, which Istio sets on
//! every route, so a retry after a connect failure does not land on the dead endpoint again.

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use ringmesh_api::snapshot::{Cluster, LbPolicy};

use crate::rng::FastRng;

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
    cursor: Cell<usize>,
    /// Smooth weighted round robin current weights (nginx's algorithm); empty when all weights
    /// are equal and a plain cursor does the job.
    swrr: Vec<Cell<i64>>,
    total_weight: u64,
}

impl ClusterState {
    /// State for `cluster` whose endpoints have these addresses.
    pub fn new(cluster: &Cluster, counters: Rc<ClusterCounters>, addrs: &[SocketAddr]) -> Self {
        let endpoints = counters.carry_over(addrs);
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
            cursor: Cell::new(0),
            swrr,
            total_weight,
        }
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
    if !tried.contains(first) || tried.len() >= n {
        return Some(first);
    }
    // Ask the balancer again (a hashing policy with a perturbed key, so it lands elsewhere on
    // its table), then fall back to the next untried endpoint after the first pick.
    for k in 1..=RESELECT_ATTEMPTS {
        let again = hash.map(|h| h ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match pick_any(cluster, state, rng, again) {
            Some(i) if !tried.contains(i) => return Some(i),
            _ => {}
        }
    }
    (1..n)
        .map(|k| (first + k) % n)
        .find(|&i| !tried.contains(i))
        .or(Some(first))
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
    match &cluster.lb {
        LbPolicy::RoundRobin => Some(round_robin(cluster, state)),
        LbPolicy::Random => Some(weighted_random(cluster, state, rng)),
        LbPolicy::LeastRequest => Some(least_request(cluster, state, rng)),
        LbPolicy::RingHash { table, .. } => match hash {
            Some(h) => Some(table.pick(h))
                .filter(|&i| i < n)
                .or_else(|| Some(weighted_random(cluster, state, rng))),
            None => Some(weighted_random(cluster, state, rng)),
        },
        LbPolicy::Maglev { table, .. } => match hash {
            Some(h) => Some(table.pick(h))
                .filter(|&i| i < n)
                .or_else(|| Some(weighted_random(cluster, state, rng))),
            None => Some(weighted_random(cluster, state, rng)),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_api::snapshot::{Endpoint, PoolSettings};
    use std::time::Duration;

    #[test]
    fn endpoint_counters_follow_the_endpoints_of_the_latest_state() {
        use crate::telemetry::stats::inc;
        let (c, first) = cluster(&[1, 1, 1], LbPolicy::RoundRobin);
        inc(&first.endpoints[1].rq_total);
        let addrs: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.address).collect();
        let churned = [addrs[1], SocketAddr::from(([127, 0, 0, 1], 9))];
        let next = ClusterState::new(&c, first.counters.clone(), &churned);
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

    fn cluster(weights: &[u32], lb: LbPolicy) -> (Cluster, ClusterState) {
        let endpoints: Vec<Endpoint> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint {
                address: SocketAddr::from(([127, 0, 0, 1], 10000 + i as u16)),
                weight: *w,
                labels: Default::default(),
                meshed: false,
            })
            .collect();
        let c = Cluster {
            name: "outbound|80||svc".into(),
            service: "svc".into(),
            port: 80,
            subset: None,
            endpoints,
            lb,
            connect_timeout: Duration::from_secs(1),
            pool: PoolSettings {
                idle_timeout: Duration::from_secs(60),
                max_requests_per_connection: None,
                max_idle_per_endpoint: 8,
                http2_max_requests: None,
                max_concurrent_streams: None,
            },
            protocol: Default::default(),
            upgrade_meshed: true,
            host_not_found: None,
            tls: Default::default(),
        };
        let addrs: Vec<_> = c.endpoints.iter().map(|e| e.address).collect();
        let s = ClusterState::new(&c, Rc::new(ClusterCounters::default()), &addrs);
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
        let addrs: Vec<_> = c.endpoints.iter().map(|e| e.address).collect();
        let s = ClusterState::new(&c, Rc::new(ClusterCounters::default()), &addrs);
        let rng = FastRng::with_seed(9);
        for key in 0..100u64 {
            let owner = pick(&c, &s, &rng, Some(key), &TriedEndpoints::default()).unwrap();
            assert_eq!(pick(&c, &s, &rng, Some(key), &TriedEndpoints::default()), Some(owner));
            let mut tried = TriedEndpoints::default();
            tried.insert(owner);
            assert_ne!(pick(&c, &s, &rng, Some(key), &tried), Some(owner));
        }
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
