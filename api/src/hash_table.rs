//! Consistent-hash lookup tables: a Ketama-style ring and a Maglev table.
//!
//! Step 6 of the data path ("Pick") for clusters whose DestinationRule asks for
//! `consistentHash`. The compiler builds a table once per cluster from its endpoint list; every
//! worker then reads it without a lock, and a pick is a binary search (ring) or one array index
//! (Maglev) — no allocation. The proxy hashes the request key (header value, cookie, source IP)
//! with [`hash_bytes`] so that every worker and every proxy agrees on the endpoint.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::snapshot::Endpoint;

/// The hash of a request key (header value, cookie, client address) used to pick an endpoint.
/// xxh3: fast on short keys and well distributed, and stable across processes and versions, so
/// that two proxies send the same key to the same endpoint.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Default `minimumRingSize`, as in Istio/Envoy.
pub const DEFAULT_MIN_RING_SIZE: usize = 1024;
/// Upper bound on ring entries (Envoy's default `maximum_ring_size`), so a huge weight ratio
/// cannot make the proxy allocate without limit.
pub const MAX_RING_SIZE: usize = 8 * 1024 * 1024;
/// Default Maglev table size (a prime, Envoy's default).
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 65537;

/// A Ketama-style consistent-hash ring: each endpoint owns many points (hashes of
/// `"<address>_<i>"`), proportional to its weight; a key goes to the owner of the first point at
/// or after its hash. Removing one of N endpoints moves only about 1/N of keys.
#[derive(Clone, Debug, Default)]
pub struct RingHashTable {
    /// `(point, endpoint index)` sorted by point.
    ring: Vec<(u64, u32)>,
}

impl RingHashTable {
    /// Builds the ring for `endpoints` with at least `min_ring_size` points (fewer only when
    /// [`MAX_RING_SIZE`] caps it). Endpoint indexes in [`RingHashTable::pick`] refer to this slice.
    pub fn new(endpoints: &[Endpoint], min_ring_size: usize) -> Self {
        let keys: Vec<(String, u32)> = endpoints.iter().map(|e| (e.address.to_string(), e.weight)).collect();
        Self::from_keys(&keys, min_ring_size)
    }

    /// Builds the ring from `(stable name, weight)` pairs. The lightest endpoint gets
    /// `min_ring_size / share` points rounded *up to a power of two*, and every other endpoint
    /// proportionally more. Unlike Envoy (which rescales exactly), the rounding keeps each
    /// endpoint's points unchanged when another endpoint of the same weight joins or leaves, so
    /// only the keys of that endpoint move. The ring is therefore between one and two times
    /// `min_ring_size`, capped at [`MAX_RING_SIZE`].
    pub fn from_keys(keys: &[(String, u32)], min_ring_size: usize) -> Self {
        if keys.is_empty() {
            return RingHashTable::default();
        }
        let weight = |w: u32| u64::from(w.max(1));
        let total: u64 = keys.iter().map(|(_, w)| weight(*w)).sum();
        let min_weight = keys.iter().map(|(_, w)| weight(*w)).min().unwrap_or(1);
        let min_ring_size = min_ring_size.clamp(1, MAX_RING_SIZE) as u64;
        // Points for the lightest endpoint so that the whole ring reaches `min_ring_size`.
        let lightest = min_ring_size
            .saturating_mul(min_weight)
            .div_ceil(total)
            .max(1)
            .next_power_of_two();
        let per_unit = lightest as f64 / min_weight as f64;
        let wanted = (total as f64 * per_unit).min(MAX_RING_SIZE as f64);
        let cap = wanted / (total as f64 * per_unit);
        let mut ring = Vec::with_capacity(wanted as usize + keys.len());
        let mut key = String::new();
        for (i, (name, w)) in keys.iter().enumerate() {
            let points = ((weight(*w) as f64 * per_unit * cap).round() as u64).max(1);
            for n in 0..points {
                key.clear();
                key.push_str(name);
                key.push('_');
                key.push_str(&n.to_string());
                ring.push((hash_bytes(key.as_bytes()), i as u32));
            }
        }
        ring.sort_unstable();
        RingHashTable { ring }
    }

    /// The endpoint index for a request hash. Returns 0 for an empty ring: callers check that
    /// the cluster has endpoints before picking.
    pub fn pick(&self, hash: u64) -> usize {
        if self.ring.is_empty() {
            return 0;
        }
        let i = self.ring.partition_point(|&(point, _)| point < hash);
        let (_, endpoint) = self.ring.get(i).copied().unwrap_or(self.ring[0]);
        endpoint as usize
    }

    /// Number of points on the ring.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True when built from no endpoints.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016), weighted as in Envoy: every slot names
/// an endpoint, a pick is `table[hash % size]`. Spreads keys more evenly than a ring and picks in
/// O(1), at the price of a larger rebuild; removing one of N endpoints moves about 1/N of keys.
#[derive(Clone, Debug, Default)]
pub struct MaglevTable {
    table: Vec<u32>,
}

impl MaglevTable {
    /// Builds the table for `endpoints`; `table_size` must be prime (the compiler checks this,
    /// because a composite size makes some permutations skip slots). Endpoint indexes in
    /// [`MaglevTable::pick`] refer to this slice.
    pub fn new(endpoints: &[Endpoint], table_size: usize) -> Self {
        let keys: Vec<(String, u32)> = endpoints.iter().map(|e| (e.address.to_string(), e.weight)).collect();
        Self::from_keys(&keys, table_size)
    }

    /// Builds the table from `(stable name, weight)` pairs. Each endpoint walks its own
    /// permutation of the slots (`offset + j * skip mod size`) and claims the next free one; an
    /// endpoint of weight `w` takes a turn `w / max_weight` times per round.
    pub fn from_keys(keys: &[(String, u32)], table_size: usize) -> Self {
        let size = table_size.max(1);
        if keys.is_empty() {
            return MaglevTable::default();
        }
        const EMPTY: u32 = u32::MAX;
        let max_weight = keys.iter().map(|(_, w)| (*w).max(1)).max().unwrap_or(1);
        struct Walker {
            offset: u64,
            skip: u64,
            next: u64,
            weight: f64,
            target: f64,
            count: f64,
        }
        let modulus = size as u64;
        let mut walkers: Vec<Walker> = keys
            .iter()
            .map(|(name, w)| Walker {
                offset: xxh3_64_with_seed(name.as_bytes(), 0) % modulus,
                skip: if modulus > 1 {
                    xxh3_64_with_seed(name.as_bytes(), 1) % (modulus - 1) + 1
                } else {
                    1
                },
                next: 0,
                weight: f64::from((*w).max(1)) / f64::from(max_weight),
                target: 0.0,
                count: 0.0,
            })
            .collect();
        let mut table = vec![EMPTY; size];
        let mut filled = 0usize;
        while filled < size {
            for (i, w) in walkers.iter_mut().enumerate() {
                w.target += w.weight;
                while w.count < w.target && filled < size {
                    // Walk this endpoint's permutation to its next free slot. Bounded: with a
                    // prime size the permutation visits every slot, and one is free.
                    let mut tries = 0u64;
                    let slot = loop {
                        let c = ((w.offset + w.next * w.skip) % modulus) as usize;
                        w.next += 1;
                        tries += 1;
                        if table[c] == EMPTY || tries > modulus {
                            break c;
                        }
                    };
                    if table[slot] == EMPTY {
                        table[slot] = i as u32;
                        filled += 1;
                    } else {
                        // Only reachable with a composite size whose permutation cycles: fill
                        // the first free slot so the table is still complete.
                        if let Some(free) = table.iter().position(|&e| e == EMPTY) {
                            table[free] = i as u32;
                            filled += 1;
                        }
                    }
                    w.count += 1.0;
                }
                if filled == size {
                    break;
                }
            }
        }
        MaglevTable { table }
    }

    /// The endpoint index for a request hash. Returns 0 for an empty table: callers check that
    /// the cluster has endpoints before picking.
    pub fn pick(&self, hash: u64) -> usize {
        if self.table.is_empty() {
            return 0;
        }
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when built from no endpoints.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Whether `n` is prime; Maglev table sizes must be. Trial division is plenty for table sizes.
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2usize;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:8080"), 1)).collect()
    }

    fn share(pick: impl Fn(u64) -> usize, n: usize, samples: u64) -> Vec<f64> {
        let mut counts = vec![0u64; n];
        for k in 0..samples {
            counts[pick(hash_bytes(&k.to_le_bytes()))] += 1;
        }
        counts.iter().map(|&c| c as f64 / samples as f64).collect()
    }

    #[test]
    fn ring_distribution_within_tolerance() {
        let ring = RingHashTable::from_keys(&keys(5), DEFAULT_MIN_RING_SIZE);
        assert!(ring.len() >= DEFAULT_MIN_RING_SIZE);
        for s in share(|h| ring.pick(h), 5, 100_000) {
            assert!((s - 0.2).abs() < 0.05, "share {s}");
        }
    }

    #[test]
    fn ring_respects_weights() {
        let k = vec![("a:1".to_string(), 1), ("b:1".to_string(), 3)];
        let ring = RingHashTable::from_keys(&k, DEFAULT_MIN_RING_SIZE);
        let s = share(|h| ring.pick(h), 2, 100_000);
        assert!((s[1] - 0.75).abs() < 0.05, "{s:?}");
    }

    fn moved(before: impl Fn(u64) -> usize, after: impl Fn(u64) -> usize, removed: usize) -> f64 {
        let samples = 50_000u64;
        let mut moved = 0;
        for k in 0..samples {
            let h = hash_bytes(&k.to_le_bytes());
            let b = before(h);
            // Indices after the removed endpoint shift down by one.
            let a = after(h);
            let a = if a >= removed { a + 1 } else { a };
            if b != removed && a != b {
                moved += 1;
            }
        }
        moved as f64 / samples as f64
    }

    #[test]
    fn ring_is_consistent() {
        let all = keys(10);
        let mut fewer = all.clone();
        fewer.remove(3);
        let before = RingHashTable::from_keys(&all, DEFAULT_MIN_RING_SIZE);
        let after = RingHashTable::from_keys(&fewer, DEFAULT_MIN_RING_SIZE);
        // Keys not on the removed endpoint stay put: every other endpoint keeps its points.
        let m = moved(|h| before.pick(h), |h| after.pick(h), 3);
        assert!(m < 0.01, "moved {m}");
    }

    #[test]
    fn maglev_fully_populated_and_balanced() {
        let t = MaglevTable::from_keys(&keys(7), DEFAULT_MAGLEV_TABLE_SIZE);
        assert_eq!(t.len(), DEFAULT_MAGLEV_TABLE_SIZE);
        assert!(t.table.iter().all(|&e| (e as usize) < 7));
        let mut counts = [0usize; 7];
        for &e in &t.table {
            counts[e as usize] += 1;
        }
        let ideal = DEFAULT_MAGLEV_TABLE_SIZE / 7;
        for c in counts {
            assert!(c.abs_diff(ideal) <= ideal / 50, "{counts:?}");
        }
    }

    #[test]
    fn maglev_weighted() {
        let k = vec![("a:1".to_string(), 1), ("b:1".to_string(), 3)];
        let t = MaglevTable::from_keys(&k, 65537);
        let s = share(|h| t.pick(h), 2, 100_000);
        assert!((s[1] - 0.75).abs() < 0.03, "{s:?}");
    }

    #[test]
    fn maglev_is_consistent() {
        let all = keys(10);
        let mut fewer = all.clone();
        fewer.remove(3);
        let before = MaglevTable::from_keys(&all, DEFAULT_MAGLEV_TABLE_SIZE);
        let after = MaglevTable::from_keys(&fewer, DEFAULT_MAGLEV_TABLE_SIZE);
        // Maglev trades a little disruption for balance; the paper reports a few percent.
        let m = moved(|h| before.pick(h), |h| after.pick(h), 3);
        assert!(m < 0.1, "moved {m}");
    }

    #[test]
    fn empty_tables_pick_zero() {
        assert_eq!(RingHashTable::default().pick(42), 0);
        assert_eq!(MaglevTable::default().pick(42), 0);
        assert!(RingHashTable::from_keys(&[], 1024).is_empty());
    }

    #[test]
    fn tiny_and_composite_maglev_sizes_still_fill() {
        let t = MaglevTable::from_keys(&keys(3), 1);
        assert_eq!(t.len(), 1);
        let t = MaglevTable::from_keys(&keys(3), 12);
        assert!(t.table.iter().all(|&e| e < 3));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
    }

    #[test]
    fn hash_is_stable() {
        // Other proxies (and restarts) must agree on the endpoint for a key.
        assert_eq!(hash_bytes(b"user-42"), hash_bytes(b"user-42"));
        assert_ne!(hash_bytes(b"user-42"), hash_bytes(b"user-43"));
    }
}
