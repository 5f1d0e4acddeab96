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

use crate::lb::{ClusterCounters, ClusterState};

/// The current snapshot, shared by the control thread (writer) and all workers (readers).
#[derive(Debug)]
pub struct SnapshotSource {
    current: ArcSwap<Snapshot>,
    version: AtomicU64,
}

impl SnapshotSource {
    /// A source holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        let version = snapshot.version;
        Arc::new(SnapshotSource {
            current: ArcSwap::from_pointee(snapshot),
            version: AtomicU64::new(version),
        })
    }

    /// Publishes a new snapshot; workers pick it up on their next request.
    pub fn store(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        self.current.store(Arc::new(snapshot));
        self.version.store(version, Ordering::Release);
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
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
        let first = build(source.load(), &counters);
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
        let next = Rc::new(build(self.source.load(), &self.counters));
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

fn build(snapshot: Arc<Snapshot>, counters: &RefCell<HashMap<String, Rc<ClusterCounters>>>) -> WorkerSnapshot {
    let names = snapshot.clusters.iter().map(|c| c.name.as_str());
    let carried = carry_over(&mut counters.borrow_mut(), names);
    let clusters = snapshot
        .clusters
        .iter()
        .zip(carried)
        .map(|(c, cc)| {
            let addrs: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.address).collect();
            ClusterState::new(c, cc, &addrs)
        })
        .collect();
    WorkerSnapshot { snapshot, clusters }
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
