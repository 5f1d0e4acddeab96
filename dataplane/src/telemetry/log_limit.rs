//! Rate-limited log lines, per worker and per reason.
//!
//! During an outage every request can end in the same local reply (a `503 UH` for each of
//! hundreds of thousands of requests a minute); one log line each filled 99 MB in under a minute
//! and made the outage harder to read, not easier. Each worker therefore lets through at most
//! [`LINES_PER_INTERVAL`] lines per reason (the response flag: `UH`, `UF`, `NR`, …) in each
//! [`INTERVAL`]; the rest are counted, and the first line let through after them is preceded by
//! one line saying how many of that reason were suppressed. The counters
//! (`ringmesh_local_replies_total`) still count every reply.
//!
//! Per worker, on that worker's thread only: a `RefCell` over a handful of entries, no lock, no
//! atomic, no allocation once a reason has been seen. The clock is read only on the paths that
//! log at all.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Lines per reason a worker logs in one [`INTERVAL`] before it starts suppressing.
pub const LINES_PER_INTERVAL: u32 = 10;
/// Length of a rate-limit window.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What the limiter decided for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it; `suppressed` lines of this reason were dropped since the last one logged.
    Log {
        /// Lines dropped before this one.
        suppressed: u64,
    },
    /// Drop it (counted, reported with the next line logged).
    Suppress,
}

#[derive(Debug)]
struct Window {
    reason: &'static str,
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// One worker's rate limiter over log reasons.
#[derive(Debug, Default)]
pub struct LogLimiter {
    windows: RefCell<Vec<Window>>,
}

impl LogLimiter {
    /// Decides whether a line for `reason` may be logged at `now`.
    pub fn admit(&self, reason: &'static str, now: Instant) -> Admit {
        let mut windows = self.windows.borrow_mut();
        let w = match windows.iter().position(|w| w.reason == reason) {
            Some(i) => &mut windows[i],
            None => {
                windows.push(Window {
                    reason,
                    started: now,
                    logged: 0,
                    suppressed: 0,
                });
                let last = windows.len() - 1;
                &mut windows[last]
            }
        };
        if now.saturating_duration_since(w.started) >= INTERVAL {
            w.started = now;
            w.logged = 0;
        }
        if w.logged >= LINES_PER_INTERVAL {
            w.suppressed += 1;
            return Admit::Suppress;
        }
        w.logged += 1;
        Admit::Log {
            suppressed: std::mem::take(&mut w.suppressed),
        }
    }

    /// Runs `log` (which emits the line) unless `reason` is over its limit; first logs how many
    /// lines of that reason were suppressed, when some were.
    pub fn log(&self, reason: &'static str, log: impl FnOnce()) {
        match self.admit(reason, Instant::now()) {
            Admit::Suppress => {}
            Admit::Log { suppressed } => {
                if suppressed > 0 {
                    tracing::info!(
                        reason,
                        suppressed,
                        "{suppressed} log line(s) with reason {reason} suppressed (at most {LINES_PER_INTERVAL} per {INTERVAL:?} per worker)"
                    );
                }
                log();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_per_interval_per_reason_then_the_count() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        let admitted = (0..1000)
            .filter(|i| matches!(l.admit("UH", t0 + Duration::from_micros(*i)), Admit::Log { .. }))
            .count();
        assert_eq!(admitted, LINES_PER_INTERVAL as usize);
        // Another reason has its own budget.
        assert_eq!(l.admit("UF", t0), Admit::Log { suppressed: 0 });
        // Still inside the interval: suppressed.
        assert_eq!(l.admit("UH", t0 + INTERVAL / 2), Admit::Suppress);
        // Next interval: one line, carrying the count of all dropped before it.
        assert_eq!(
            l.admit("UH", t0 + INTERVAL + Duration::from_millis(1)),
            Admit::Log {
                suppressed: 1000 - u64::from(LINES_PER_INTERVAL) + 1
            }
        );
        assert_eq!(
            l.admit("UH", t0 + INTERVAL + Duration::from_millis(2)),
            Admit::Log { suppressed: 0 }
        );
    }

    #[test]
    fn a_quiet_reason_is_never_suppressed() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        for i in 0..100u32 {
            assert_eq!(l.admit("NR", t0 + INTERVAL * i), Admit::Log { suppressed: 0 });
        }
    }
}
