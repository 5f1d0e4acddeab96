//! A per-core pseudo-random generator for load balancing, weighted splits, jitter and request ids.
//!
//! `fastrand`'s wyrand behind a `RefCell`: the request path needs a few random bits per request
//! with no shared state and no syscall, and the balancers take the generator by shared reference
//! (they are called while the worker's other state is borrowed). Nothing here is used for
//! security.

use std::cell::RefCell;

/// One per worker; not `Sync`.
#[derive(Debug)]
pub struct FastRng(RefCell<fastrand::Rng>);

impl FastRng {
    /// Seeds from fastrand's process entropy mixed with `salt`, so that workers diverge.
    pub fn from_entropy(salt: u64) -> Self {
        Self::with_seed(fastrand::u64(..) ^ salt.rotate_left(32))
    }

    /// A generator with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Self {
        FastRng(RefCell::new(fastrand::Rng::with_seed(seed)))
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        self.0.borrow_mut().u64(..)
    }

    /// Uniform in `0..n`, and 0 when `n` is 0 (an empty range is a caller's edge case, never a
    /// reason to panic on the request path).
    #[inline]
    pub fn below(&self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        self.0.borrow_mut().u32(..n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_spread() {
        let r = FastRng::with_seed(42);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let v = r.below(10);
            assert!(v < 10);
            counts[v as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn seeded_generators_repeat_and_differ() {
        let (a, b, c) = (FastRng::with_seed(7), FastRng::with_seed(7), FastRng::with_seed(8));
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());
    }
}
