//! ringmesh's `localRateLimit` (a route's or a listener's): Envoy's `local_ratelimit` token
//! bucket, checked after routing and before the fault and the action.
//!
//! One bucket per limit for the whole proxy, shared by every worker through atomics — the one
//! place on the request path that shares a counter between cores, deliberately: a limit is
//! read per proxy ("100 requests a second"), and a client connection stays on the core that
//! accepted it. With a bucket per core (rate/N each), one busy connection would be held to a
//! N-th of the rate while the other cores' tokens went unused; the proxy-wide rate would only
//! hold when load happened to be even. A compare-and-swap on one word per request is the
//! price (tens of nanoseconds, on limited routes only).
//!
//! The bucket is one `AtomicU64`: the number of the last fill period seen (high 32 bits) and
//! the tokens left (low 32 bits). Fills are computed when a request comes, not by a timer: a
//! request in period `p` first adds `tokensPerFill` for every period since the last one seen
//! (capped at `maxTokens`), then takes a token. Periods count from the bucket's creation in
//! units of `fillInterval` (at least 50 ms), so the 32-bit period number wraps after 6.8 years;
//! the difference is taken wrapping, so only a bucket untouched that long would miscount.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ringmesh_api::snapshot::LocalRateLimit;

use crate::error::{ErrorKind, ProxyError, Side};
use crate::state::WorkerSnapshot;
use crate::worker::Worker;

/// Listener `name` as its connections carry it: its position in the snapshot's listeners,
/// when it has a limit (`None` otherwise). Two bytes, not the name: they sit in every HTTP
/// connection's state. Listeners are bound at start and a change to them takes a restart, so
/// their positions hold for the process's life; the limit at that position is read per
/// request (a changed or removed limit applies at once, one added to a listener applies to
/// connections accepted after it).
pub(crate) fn listener_ref(worker: &Worker, name: &str) -> Option<u16> {
    let view = worker.snapshot.get();
    let at = view
        .snapshot
        .listeners
        .iter()
        .position(|l| l.name == name && l.local_rate_limit.is_some())?;
    u16::try_from(at).ok()
}

/// The limits of a request, the listener's first, then its route's: each takes a token, and
/// the first one empty refuses the request (429 `RL`). `None`: the request goes on.
pub(crate) fn check(
    view: &WorkerSnapshot,
    listener: Option<u16>,
    route: Option<&LocalRateLimit>,
) -> Option<ProxyError> {
    let on_listener = listener.and_then(|at| view.snapshot.listeners.get(usize::from(at))?.local_rate_limit.as_ref());
    for limit in [on_listener, route].into_iter().flatten() {
        let Some(bucket) = view.shared.bucket(limit.id) else {
            continue;
        };
        if !bucket.try_take() {
            return Some(ProxyError::new(
                ErrorKind::RateLimited {
                    grpc_resource_exhausted: limit.grpc_resource_exhausted,
                },
                Side::Downstream,
                "local rate limit reached",
            ));
        }
    }
    None
}

/// One limit's bucket, shared by the workers.
#[derive(Debug)]
pub struct TokenBucket {
    /// The settings it was built for (a reload keeps it while they stay the same).
    pub(crate) limit: LocalRateLimit,
    started: Instant,
    /// Period number (high 32 bits) and tokens left (low 32 bits).
    state: AtomicU64,
    /// Requests admitted (Envoy's `http_local_rate_limit.ok`).
    pub(crate) ok: AtomicU64,
    /// Requests refused (Envoy's `http_local_rate_limit.rate_limited`).
    pub(crate) rate_limited: AtomicU64,
}

impl TokenBucket {
    /// A full bucket for `limit`.
    pub fn new(limit: LocalRateLimit) -> Self {
        let state = AtomicU64::new(u64::from(limit.max_tokens));
        TokenBucket {
            limit,
            started: Instant::now(),
            state,
            ok: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// Takes a token now; `false` when the bucket is empty (the request is refused). Counted.
    pub fn try_take(&self) -> bool {
        let taken = self.try_take_at(Instant::now());
        // Relaxed: counters for metrics, ordered with nothing.
        if taken {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn try_take_at(&self, now: Instant) -> bool {
        let interval = self.limit.fill_interval.as_nanos().max(1);
        let period = (now.saturating_duration_since(self.started).as_nanos() / interval) as u32;
        let max = u64::from(self.limit.max_tokens);
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (seen, tokens) = ((current >> 32) as u32, current & 0xffff_ffff);
            let fills = u64::from(period.wrapping_sub(seen));
            // A request that read the clock before another one moved the period on must not
            // move it back: its fills are then already counted.
            let (seen, tokens) = if fills > 0 && fills < 1 << 31 {
                let added = fills.saturating_mul(u64::from(self.limit.tokens_per_fill));
                (period, tokens.saturating_add(added).min(max))
            } else {
                (seen, tokens)
            };
            if tokens == 0 {
                if seen == (current >> 32) as u32 {
                    return false;
                }
                // Record the new period even when refusing, so the refill is not counted twice.
                let next = u64::from(seen) << 32;
                match self
                    .state
                    .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => return false,
                    Err(actual) => {
                        current = actual;
                        continue;
                    }
                }
            }
            let next = (u64::from(seen) << 32) | (tokens - 1);
            // Relaxed: the bucket guards no other memory; only its own word must be consistent.
            match self
                .state
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bucket(max: u32, per_fill: u32, every_ms: u64) -> TokenBucket {
        TokenBucket::new(LocalRateLimit {
            id: 0,
            key: "t".into(),
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(every_ms),
            grpc_resource_exhausted: false,
        })
    }

    #[test]
    fn starts_full_refills_per_period_and_never_above_max() {
        let b = bucket(3, 2, 100);
        let t0 = b.started;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!((0..3).all(|_| b.try_take_at(at(10))), "starts with maxTokens");
        assert!(!b.try_take_at(at(20)));
        assert!(b.try_take_at(at(100)) && b.try_take_at(at(150)), "one fill of 2");
        assert!(!b.try_take_at(at(199)));
        // Ten periods later: capped at maxTokens.
        assert_eq!((0..10).filter(|_| b.try_take_at(at(1_250))).count(), 3);
        // A request that read an older clock does not refill again.
        assert!(!b.try_take_at(at(1_100)));
    }

    #[test]
    fn the_rate_holds_across_threads() {
        let b = std::sync::Arc::new(bucket(10, 10, 100));
        let t0 = b.started;
        // Four threads race for tokens over 20 periods: at most 10 + 19 * 10 go through (fewer
        // only if a period's tokens were left when the next fill hit the cap).
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    for ms in 0..2_000u64 {
                        for _ in 0..3 {
                            n += u32::from(b.try_take_at(t0 + Duration::from_millis(ms)));
                        }
                    }
                    n
                })
            })
            .collect();
        let total: u32 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert!((100..=200).contains(&total), "{total}");
    }
}
