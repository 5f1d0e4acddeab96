//! What the tests of every crate share, kept in a crate of its own so that the control plane's,
//! the load generator's and the end-to-end tests can all use it without a dependency cycle
//! (`ringmesh-tests` itself depends on the control plane and the load generator).
//!
//! Tests wait for a condition, never for a length of time: [`eventually`] (a test's thread) and
//! [`eventually_async`] (a task, which must not block the runtime that serves what it awaits)
//! poll until the condition holds, up to a deadline, and say what they awaited when it passes.

use std::fmt;
use std::time::Duration;

/// How often a condition is checked: short enough not to slow a test down, long enough not to
/// load a 2-core machine that runs several test binaries at once.
const POLL: Duration = Duration::from_millis(20);

/// A condition that did not hold within its deadline.
#[derive(Clone, PartialEq, Eq)]
pub struct TimedOut {
    what: String,
    within: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?} waiting for {}", self.within, self.what)
    }
}

/// The same text as `Display`, so that `.unwrap()` on a result names what was awaited.
impl fmt::Debug for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for TimedOut {}

/// Polls `condition` on this thread until it holds or `within` passes (it is checked once more
/// at the deadline). `what` names the condition for the error.
pub fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Result<(), TimedOut> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if condition() {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                within,
            });
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// [`eventually`] for a task: waits on tokio's clock, so the runtime goes on serving what the
/// condition observes (and a test that paused time advances it instead of waiting).
pub async fn eventually_async(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                within,
            });
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_holds_returns_at_once() {
        let mut calls = 0;
        assert_eq!(
            eventually(Duration::from_secs(5), "a true condition", || {
                calls += 1;
                true
            }),
            Ok(())
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_condition_that_turns_true_is_seen() {
        let mut calls = 0;
        eventually(Duration::from_secs(5), "the third check", || {
            calls += 1;
            calls == 3
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_condition_that_never_holds_times_out_naming_it() {
        let began = std::time::Instant::now();
        let err = eventually(Duration::from_millis(100), "the moon to turn blue", || false).unwrap_err();
        assert!(began.elapsed() >= Duration::from_millis(100));
        assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
        assert_eq!(
            err.to_string(),
            "timed out after 100ms waiting for the moon to turn blue"
        );
        assert_eq!(format!("{err:?}"), err.to_string());
    }

    #[tokio::test]
    async fn the_async_form_lets_the_runtime_run_what_it_awaits() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        let mut rx = rx;
        eventually_async(Duration::from_secs(5), "the spawned task to send", || {
            rx.try_recv().is_ok()
        })
        .await
        .unwrap();
        let err = eventually_async(Duration::from_millis(50), "nothing", || false)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "timed out after 50ms waiting for nothing");
    }
}
