//! A per-core pseudo-random generator for load balancing, weighted splits, jitter and request ids.
//!
//! Hand-written (xorshift64*) because the request path needs a few random bits per request with
//! no shared state and no syscall; nothing here is used for security.

use std::cell::Cell;

/// xorshift64* state. Not `Sync`: one per worker.
#[derive(Debug)]
pub struct FastRng(Cell<u64>);

impl FastRng {
    /// Seeds from the clock, the thread and an address so that workers diverge.
    pub fn from_entropy(salt: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        Self::with_seed(t ^ salt.rotate_left(32) ^ addr)
    }

    /// A generator with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Self {
        FastRng(Cell::new(seed | 1))
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift (no modulo bias worth measuring at 32 bits).
    #[inline]
    pub fn below(&self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
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
    }
}
