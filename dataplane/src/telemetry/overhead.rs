//! The proxy's own time per request, in HDR: from the last byte of the request head in to the
//! first byte out to the upstream, plus from the response head in to the first byte out to
//! the client ([`super::request::Facts::overhead_us`]). Waiting on the network and on the
//! upstream is not in it; the proxy's parsing, routing, balancing, pooling, encoding and its
//! queueing on the core are.
//!
//! Each worker keeps one HdrHistogram per (route, cluster) it served, up to
//! [`MAX_HISTOGRAMS`] (further pairs share one entry named `other`), plus Prometheus buckets
//! that never reset. `:15000/stats/histograms` merges the workers' copies (JSON, or HdrHistogram's
//! percentile distribution with `?format=hgrm`) and `?reset` clears the HDR after reading, so a
//! benchmark can read exactly its own window. Histograms are 1 µs to 60 s at two significant
//! digits: 1 % precision in about 20 KiB each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use ringmesh_api::snapshot::{ClusterId, Route, Snapshot};
use rustc_hash::FxBuildHasher;

/// (route, cluster) pairs with their own histogram per worker.
pub(crate) const MAX_HISTOGRAMS: usize = 64;

/// Bucket bounds of `ringmesh_proxy_overhead_microseconds`.
pub(crate) const BUCKETS_US: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
];

/// An empty histogram with the bounds every entry uses.
pub fn empty_histogram() -> Histogram<u64> {
    new_histogram()
}

fn new_histogram() -> Histogram<u64> {
    // Constant bounds hdrhistogram accepts (unit-tested below); never input-dependent.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("static histogram bounds are valid")
}

/// One (route, cluster) pair's figures.
#[derive(Debug, Clone)]
pub struct OverheadEntry {
    /// The route's name (`other` past the bound).
    pub route: Arc<str>,
    /// The cluster's name.
    pub cluster: Arc<str>,
    /// Since start or the last `?reset`.
    pub hdr: Histogram<u64>,
    /// Since start, per bucket of [`BUCKETS_US`] (not cumulative), then the count above.
    pub buckets: [u64; BUCKETS_US.len() + 1],
    /// Sum of all values since start, µs.
    pub sum_us: u64,
}

impl OverheadEntry {
    fn new(route: Arc<str>, cluster: Arc<str>) -> Self {
        OverheadEntry {
            route,
            cluster,
            hdr: new_histogram(),
            buckets: [0; BUCKETS_US.len() + 1],
            sum_us: 0,
        }
    }

    fn record(&mut self, us: u64) {
        self.hdr.saturating_record(us.clamp(1, 60_000_000));
        let i = BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS_US.len());
        self.buckets[i] += 1;
        self.sum_us += us;
    }

    /// Adds another worker's figures for the same pair.
    pub fn merge(&mut self, o: &OverheadEntry) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hdr.add(&o.hdr);
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.sum_us += o.sum_us;
    }
}

#[derive(Default)]
struct Inner {
    /// The snapshot `ids` were resolved for (route addresses move with snapshots).
    version: u64,
    ids: HashMap<(usize, u32), usize, FxBuildHasher>,
    entries: Vec<OverheadEntry>,
}

/// One worker's histograms. Only that worker's thread touches it.
#[derive(Default)]
pub(crate) struct OverheadShard {
    inner: RefCell<Inner>,
}

impl std::fmt::Debug for OverheadShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverheadShard").finish_non_exhaustive()
    }
}

impl OverheadShard {
    /// Records one request's own time under its route and cluster.
    pub(crate) fn record(&self, snapshot: &Snapshot, route: &Route, cluster: ClusterId, us: u64) {
        let mut inner = self.inner.borrow_mut();
        if inner.version != snapshot.version {
            inner.version = snapshot.version;
            inner.ids.clear();
        }
        // The route's address identifies it within one snapshot: no name is hashed per request.
        let key = (route as *const Route as usize, cluster.0);
        let i = match inner.ids.get(&key) {
            Some(&i) => i,
            None => {
                let cluster_name = snapshot.cluster(cluster).name.as_str();
                let found = inner
                    .entries
                    .iter()
                    .position(|e| &*e.route == route.name.as_str() && &*e.cluster == cluster_name);
                let i = match found {
                    Some(i) => i,
                    None if inner.entries.len() + 1 >= MAX_HISTOGRAMS => {
                        match inner.entries.iter().position(|e| &*e.route == "other") {
                            Some(i) => i,
                            None => {
                                inner.entries.push(OverheadEntry::new("other".into(), "other".into()));
                                inner.entries.len() - 1
                            }
                        }
                    }
                    None => {
                        inner
                            .entries
                            .push(OverheadEntry::new(route.name.as_str().into(), cluster_name.into()));
                        inner.entries.len() - 1
                    }
                };
                inner.ids.insert(key, i);
                i
            }
        };
        inner.entries[i].record(us);
    }

    /// A copy for the admin side; with `reset`, the HDR histograms start over.
    pub(crate) fn copy(&self, reset: bool) -> Vec<OverheadEntry> {
        let mut inner = self.inner.borrow_mut();
        let copy = inner.entries.clone();
        if reset {
            for e in &mut inner.entries {
                e.hdr.reset();
            }
        }
        copy
    }
}

/// Merges workers' copies by (route, cluster).
pub fn merge(into: &mut Vec<OverheadEntry>, from: &[OverheadEntry]) {
    for e in from {
        match into.iter_mut().find(|m| m.route == e.route && m.cluster == e.cluster) {
            Some(m) => m.merge(e),
            None => into.push(e.clone()),
        }
    }
}

/// `ringmesh_proxy_overhead_microseconds`, per route and cluster, in Prometheus' text format.
pub fn write_prometheus(entries: &[OverheadEntry], out: &mut String) {
    use std::fmt::Write;
    let name = "ringmesh_proxy_overhead_microseconds";
    let _ = writeln!(
        out,
        "# HELP {name} The proxy's own time per request: request head in to first byte upstream, plus response head in to first byte to the client.\n# TYPE {name} histogram"
    );
    let mut sorted: Vec<&OverheadEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| (&a.route, &a.cluster).cmp(&(&b.route, &b.cluster)));
    for e in sorted {
        let labels = format!(
            "route_name=\"{}\",cluster_name=\"{}\"",
            super::prometheus::label(&e.route),
            super::prometheus::label(&e.cluster)
        );
        let mut cumulative = 0;
        for (le, c) in BUCKETS_US.iter().zip(e.buckets.iter()) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count: u64 = e.buckets.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", e.sum_us);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_valid_and_small() {
        let h = new_histogram();
        // Two significant digits over 1 µs..60 s: about 20 KiB of counts.
        assert!(h.distinct_values() * 8 <= 24 * 1024, "{}", h.distinct_values());
    }

    #[test]
    fn entries_merge_and_render() {
        let mut a = OverheadEntry::new("r".into(), "c".into());
        a.record(7);
        a.record(700);
        let mut b = OverheadEntry::new("r".into(), "c".into());
        b.record(200_000);
        let mut all = vec![a];
        merge(&mut all, &[b]);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].hdr.len(), 3);
        let mut out = String::new();
        write_prometheus(&all, &mut out);
        assert!(
            out.contains("_bucket{route_name=\"r\",cluster_name=\"c\",le=\"10\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("_bucket{route_name=\"r\",cluster_name=\"c\",le=\"1000\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("_bucket{route_name=\"r\",cluster_name=\"c\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("_sum{route_name=\"r\",cluster_name=\"c\"} 200707\n"),
            "{out}"
        );
    }
}
