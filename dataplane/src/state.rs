//! Snapshot hand-off between the control thread and the workers.
//!
//! The control thread compiles a new [`Snapshot`] and calls [`SnapshotSource::store`]. Each
//! worker keeps its own `Rc` of the current snapshot plus per-core state built for it
//! ([`WorkerSnapshot`]) and checks one version number per request: an acquire load (a plain
//! load on x86) of a cache line that is written only on reload, so it stays shared in every
//! core's cache. Acquire pairs with the release store in [`SnapshotSource::store`]: a worker
//! that sees the new version also sees the snapshot stored before it. In-flight
//! requests hold the `Rc` they started with and finish on it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ringmesh_api::snapshot::Snapshot;

use crate::cluster::breaker::ClusterShared;
use crate::http::local_rate_limit::TokenBucket;
use crate::lb::health::{ClusterHealth, HealthTables};
use crate::lb::{ClusterCounters, ClusterState};

/// The current snapshot, shared by the control thread (writer) and all workers (readers).
#[derive(Debug)]
pub struct SnapshotSource {
    current: ArcSwap<Published>,
    version: AtomicU64,
}

/// What the control thread publishes: a snapshot, the endpoint health tables lined up with
/// it, and the state its limits share across workers, swapped together so a worker never pairs
/// one with another's predecessor (nor indexes one snapshot's endpoints with another's table).
#[derive(Debug)]
struct Published {
    snapshot: Arc<Snapshot>,
    health: Arc<HealthTables>,
    shared: Arc<SharedLimits>,
}

/// The few pieces of state that are shared by all workers rather than kept per core: the
/// circuit breakers of clusters limited below the worker count (`cluster::breaker`) and the
/// local rate limits' token buckets (`http::local_rate_limit`), each with its reason in its
/// module. Built by the control thread with each snapshot; a cluster (by name) or a limit (by
/// key) whose settings did not change keeps its state, so a reload neither refills a bucket
/// nor forgets the connections in use.
#[derive(Debug, Default)]
pub struct SharedLimits {
    /// Indexed like `Snapshot::clusters`; `None` for a cluster without limits.
    clusters: Vec<Option<Arc<ClusterShared>>>,
    /// Indexed by `LocalRateLimit::id`.
    buckets: Vec<Option<Arc<TokenBucket>>>,
}

impl SharedLimits {
    fn build(snapshot: &Snapshot, previous: Option<&Published>) -> Self {
        let mut old_clusters: HashMap<&str, &Arc<ClusterShared>> = HashMap::new();
        let mut old_buckets: HashMap<&str, &Arc<TokenBucket>> = HashMap::new();
        if let Some(p) = previous {
            for (c, s) in p.snapshot.clusters.iter().zip(&p.shared.clusters) {
                if let Some(s) = s {
                    old_clusters.insert(c.name.as_str(), s);
                }
            }
            for b in p.shared.buckets.iter().flatten() {
                old_buckets.insert(b.limit.key.as_str(), b);
            }
        }
        let clusters = snapshot
            .clusters
            .iter()
            .map(|c| {
                c.pool.has_limits().then(|| match old_clusters.get(c.name.as_str()) {
                    Some(s) if s.same_limits(&c.pool) => Arc::clone(s),
                    _ => Arc::new(ClusterShared::new(&c.pool)),
                })
            })
            .collect();
        let mut buckets: Vec<Option<Arc<TokenBucket>>> = Vec::new();
        for limit in snapshot.local_rate_limits() {
            let at = limit.id as usize;
            if buckets.len() <= at {
                buckets.resize(at + 1, None);
            }
            let same = |b: &TokenBucket| {
                let (a, b) = (&b.limit, limit);
                (a.max_tokens, a.tokens_per_fill, a.fill_interval) == (b.max_tokens, b.tokens_per_fill, b.fill_interval)
            };
            buckets[at] = Some(match old_buckets.get(limit.key.as_str()) {
                Some(b) if same(b) && b.limit.grpc_resource_exhausted == limit.grpc_resource_exhausted => Arc::clone(b),
                _ => Arc::new(TokenBucket::new(limit.clone())),
            });
        }
        SharedLimits { clusters, buckets }
    }

    /// The bucket of a local rate limit.
    pub fn bucket(&self, id: u32) -> Option<&TokenBucket> {
        self.buckets.get(id as usize)?.as_deref()
    }

    /// Every bucket, for the metrics.
    pub fn buckets(&self) -> impl Iterator<Item = &TokenBucket> {
        self.buckets.iter().flatten().map(|b| &**b)
    }
}

impl SnapshotSource {
    /// A source holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        let version = snapshot.version;
        let shared = Arc::new(SharedLimits::build(&snapshot, None));
        let health = Arc::new(HealthTables::carry_over(&HealthTables::default(), &snapshot.clusters));
        Arc::new(SnapshotSource {
            current: ArcSwap::from_pointee(Published {
                snapshot: Arc::new(snapshot),
                health,
                shared,
            }),
            version: AtomicU64::new(version),
        })
    }

    /// Publishes a new snapshot; workers pick it up on their next request.
    pub fn store(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        let current = self.current.load();
        let shared = Arc::new(SharedLimits::build(&snapshot, Some(&current)));
        // Endpoint health carries over by cluster name and endpoint address.
        let health = Arc::new(HealthTables::carry_over(&current.health, &snapshot.clusters));
        self.current.store(Arc::new(Published {
            snapshot: Arc::new(snapshot),
            health,
            shared,
        }));
        self.version.store(version, Ordering::Release);
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load().snapshot.clone()
    }

    /// The current snapshot with its endpoint health tables.
    pub fn load_with_health(&self) -> (Arc<Snapshot>, Arc<HealthTables>) {
        let p = self.current.load();
        (p.snapshot.clone(), p.health.clone())
    }

    /// The state shared by the workers for the current snapshot (buckets' counters for the
    /// metrics).
    pub fn shared(&self) -> Arc<SharedLimits> {
        self.current.load().shared.clone()
    }

    /// Version of the current snapshot.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// A snapshot plus the per-core state this worker keeps for it (load-balancer cursors,
/// in-flight counts). Rebuilt when the version changes; counters carry over by name.
#[derive(Debug)]
pub struct WorkerSnapshot {
    /// The compiled config.
    pub snapshot: Arc<Snapshot>,
    /// Per-cluster state, indexed like `snapshot.clusters`.
    pub clusters: Vec<ClusterState>,
    /// The state shared with the other workers (rate limits' buckets).
    pub shared: Arc<SharedLimits>,
}

/// A worker's view of the current snapshot.
#[derive(Debug)]
pub struct SnapshotView {
    source: Arc<SnapshotSource>,
    current: RefCell<Rc<WorkerSnapshot>>,
    /// Counters by cluster name, kept across reloads so Prometheus counters never go back
    /// while a cluster exists; a cluster's counters leave with it.
    counters: RefCell<HashMap<String, Rc<ClusterCounters>>>,
}

impl SnapshotView {
    /// A view starting at the source's current snapshot.
    pub fn new(source: Arc<SnapshotSource>) -> Self {
        let counters = RefCell::new(HashMap::new());
        let first = build(&source.current.load(), &counters);
        SnapshotView {
            source,
            current: RefCell::new(Rc::new(first)),
            counters,
        }
    }

    /// The current snapshot, rebuilding this worker's state first if a new one was published.
    #[inline]
    pub fn get(&self) -> Rc<WorkerSnapshot> {
        let version = self.source.version();
        {
            let cur = self.current.borrow();
            if cur.snapshot.version == version {
                return cur.clone();
            }
        }
        let next = Rc::new(build(&self.source.current.load(), &self.counters));
        *self.current.borrow_mut() = next.clone();
        next
    }

    /// Counters by cluster name (for `/clusters` and metrics).
    pub fn counters(&self) -> Vec<(String, Rc<ClusterCounters>)> {
        self.counters
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The snapshot source (for the control side).
    pub fn source(&self) -> &Arc<SnapshotSource> {
        &self.source
    }
}

fn build(published: &Published, counters: &RefCell<HashMap<String, Rc<ClusterCounters>>>) -> WorkerSnapshot {
    let snapshot = published.snapshot.clone();
    let names = snapshot.clusters.iter().map(|c| c.name.as_str());
    let carried = carry_over(&mut counters.borrow_mut(), names);
    let clusters = snapshot
        .clusters
        .iter()
        .zip(carried)
        .zip(&published.shared.clusters)
        .enumerate()
        .map(|(i, ((c, cc), shared))| {
            let addrs: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.address).collect();
            let table = match published.health.clusters.get(i) {
                Some((ch, eps)) => (ch.clone(), eps.clone()),
                None => ClusterHealth::detached(c),
            };
            let mut state = ClusterState::new(c, cc, &addrs, table);
            state.shared = shared.clone();
            state
        })
        .collect();
    WorkerSnapshot {
        snapshot,
        clusters,
        shared: published.shared.clone(),
    }
}

/// Counters for the clusters `names`, in order: a cluster that stays carries its counters over,
/// a new one starts at zero, and one no longer configured is dropped from `all` — otherwise a
/// worker would keep the counters of every cluster it ever had.
fn carry_over<'a>(
    all: &mut HashMap<String, Rc<ClusterCounters>>,
    names: impl Iterator<Item = &'a str>,
) -> Vec<Rc<ClusterCounters>> {
    let mut kept: HashMap<String, Rc<ClusterCounters>> = HashMap::with_capacity(all.len());
    let counters = names
        .map(|name| {
            if let Some(c) = kept.get(name) {
                return c.clone();
            }
            let c = all.remove(name).unwrap_or_default();
            kept.insert(name.to_owned(), c.clone());
            c
        })
        .collect();
    *all = kept;
    counters
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::stats::inc;

    fn compiled(tokens: u32, max_connections: u32, version: u64) -> Snapshot {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\nspec:\n  hosts: [web.test]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: web.test\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: {max_connections}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web.test]\n  http:\n  - localRateLimit: {{maxTokens: {tokens}, fillInterval: 1s}}\n    route: [{{destination: {{host: web.test}}}}]\n"
        );
        let (resources, _) = ringmesh_api::load_str("mesh.yaml", &yaml).expect("loads");
        ringmesh_api::compile(&ringmesh_api::CompileInput {
            resources,
            extra_endpoints: Vec::new(),
            version,
        })
        .expect("compiles")
        .snapshot
    }

    #[test]
    fn shared_limits_outlive_a_reload_that_keeps_their_settings() {
        let source = SnapshotSource::new(compiled(5, 1, 1));
        let shared = source.shared();
        let bucket = shared.bucket(0).expect("the route's bucket");
        assert!(bucket.try_take());
        let cluster = shared.clusters[0].clone().expect("a limited cluster has shared state");
        source.store(compiled(5, 1, 2));
        let same = source.shared();
        assert!(
            std::ptr::eq(same.bucket(0).expect("bucket"), bucket),
            "an unchanged limit keeps its bucket, tokens and counters included"
        );
        assert_eq!(same.bucket(0).expect("bucket").ok.load(Ordering::Relaxed), 1);
        assert!(Arc::ptr_eq(same.clusters[0].as_ref().expect("shared"), &cluster));
        source.store(compiled(6, 2, 3));
        let changed = source.shared();
        assert!(
            !std::ptr::eq(changed.bucket(0).expect("bucket"), bucket),
            "new settings, new bucket"
        );
        assert!(!Arc::ptr_eq(changed.clusters[0].as_ref().expect("shared"), &cluster));
        // A worker's view pairs the snapshot with its own shared state.
        let view = SnapshotView::new(source.clone());
        assert!(view.get().clusters[0].shared.is_some());
        assert_eq!(view.get().shared.bucket(0).expect("bucket").limit.max_tokens, 6);
    }

    #[test]
    fn cluster_counters_carry_over_and_departed_clusters_leave() {
        let mut all = HashMap::new();
        let first = carry_over(&mut all, ["a", "b"].into_iter());
        inc(&first[0].rq_total);
        let next = carry_over(&mut all, ["c", "a"].into_iter());
        assert_eq!(next[1].rq_total.get(), 1, "a staying cluster keeps its counters");
        assert_eq!(next[0].rq_total.get(), 0);
        let mut names: Vec<_> = all.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["a", "c"], "b left with the config");
    }
}
