//! Retry bookkeeping of one request: which try comes next, after how long, where, and whether
//! the worker's budget lets it go.
//!
//! `forward` asks [`Retries`] after every failed try and every retriable status. What a failure
//! allows is the error's to say (`crate::error`), whether the body can be sent again is the
//! body's (`request_body`); this module adds the route's attempt count and deadline, remembers
//! the endpoints tried (so a retry goes elsewhere, Envoy's `previous_hosts` predicate), computes
//! the jittered back-off, and counts a retry against the budget only while its try is in flight:
//! a retry waiting out its back-off puts no load on an upstream, so it takes no budget.
//! No allocation, no lock.

use std::time::{Duration, Instant};

use ringmesh_api::snapshot::RetryPolicy;

use crate::cluster::breaker::{Breakers, RetryGuard};
use crate::error::ProxyError;
use crate::lb::TriedEndpoints;
use crate::rng::FastRng;
use crate::telemetry::stats::inc;
use crate::worker::Worker;

/// What follows a try that did not produce a response to relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No other try: answer with what this one produced.
    Stop,
    /// Try again at once, outside the policy and the budget (a pooled connection was dead).
    Now,
    /// Retry under the route's policy after the back-off of this retry number (1-based).
    AfterBackoff(u32),
}

/// The retry state of one request.
#[derive(Debug)]
pub(crate) struct Retries<'a> {
    policy: &'a RetryPolicy,
    deadline: Option<Instant>,
    /// Retries under the policy taken so far.
    taken: u32,
    /// Whether the one transparent retry was used.
    transparent_used: bool,
    tried: TriedEndpoints,
    /// The cluster's `maxRetries` place of the last retry admitted, held through its back-off
    /// and its try.
    retry_place: Option<RetryGuard>,
}

impl<'a> Retries<'a> {
    /// Retries of a request under `policy` whose route deadline is `deadline`.
    pub(crate) fn new(policy: &'a RetryPolicy, deadline: Option<Instant>) -> Self {
        Retries {
            policy,
            deadline,
            taken: 0,
            transparent_used: false,
            tried: TriedEndpoints::default(),
            retry_place: None,
        }
    }

    /// Whether a retry the policy asks for may go: the worker's retry budget and the
    /// cluster's `maxRetries` (Envoy's `max_retries` circuit breaker) both leave room. A retry
    /// over either is not made (the last failure or response is the answer) and counted in
    /// `upstream_rq_retry_overflow`. The cluster's place is held from here until the retry's
    /// try ends ([`Retries::try_ended`]), its back-off included.
    pub(crate) fn admit(&mut self, worker: &Worker, breakers: &Breakers<'_>) -> bool {
        if !admit(worker) {
            return false;
        }
        match breakers.try_retry() {
            Some(guard) => {
                self.retry_place = Some(guard);
                true
            }
            None => {
                inc(&worker.stats.upstream_rq_retry_overflow);
                false
            }
        }
    }

    /// The admitted retry's back-off is over and its try starts.
    pub(crate) fn retry_started(&mut self) {
        if let Some(place) = &self.retry_place {
            place.start();
        }
    }

    /// A try ended: a retry's place under `maxRetries` is given back.
    pub(crate) fn try_ended(&mut self) {
        if self.retry_place.as_ref().is_some_and(RetryGuard::running) {
            self.retry_place = None;
        }
    }

    /// Endpoints this request tried.
    pub(crate) fn tried(&self) -> &TriedEndpoints {
        &self.tried
    }

    /// Remembers that a try went to `endpoint`.
    pub(crate) fn record(&mut self, endpoint: usize) {
        self.tried.insert(endpoint);
    }

    /// Deadline of a try starting at `now`: the per-try timeout, bounded by the route deadline.
    pub(crate) fn per_try_deadline(&self, now: Instant) -> Option<Instant> {
        match (self.policy.per_try_timeout, self.deadline) {
            (Some(p), Some(d)) => Some((now + p).min(d)),
            (Some(p), None) => Some(now + p),
            (None, d) => d,
        }
    }

    /// Whether the route deadline has passed at `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// After a try failed with `error` before any response byte.
    /// `replayable`: whether the request's body can be sent again (the body's to say).
    pub(crate) fn after_failure(&mut self, error: &ProxyError, replayable: bool, now: Instant) -> Decision {
        if !replayable {
            return Decision::Stop;
        }
        if error.is_reused_conn_dead() && !self.transparent_used {
            self.transparent_used = true;
            return Decision::Now;
        }
        if error.retried_by(self.policy) {
            return self.by_policy(now);
        }
        Decision::Stop
    }

    /// After an upstream answered with `status`.
    pub(crate) fn after_status(&mut self, status: u16, replayable: bool, now: Instant) -> Decision {
        if replayable && self.policy.retries_status(status) {
            return self.by_policy(now);
        }
        Decision::Stop
    }

    /// After a gRPC upstream answered with `grpc-status: code` in the response headers (a
    /// trailers-only answer: nothing of the response was relayed yet). Envoy retries gRPC
    /// statuses only there too; a status in trailers comes after the response started.
    pub(crate) fn after_grpc_status(&mut self, code: u32, replayable: bool, now: Instant) -> Decision {
        if replayable && self.policy.retries_grpc(code) {
            return self.by_policy(now);
        }
        Decision::Stop
    }

    fn by_policy(&mut self, now: Instant) -> Decision {
        if self.taken >= self.policy.attempts || self.expired(now) {
            return Decision::Stop;
        }
        self.taken += 1;
        Decision::AfterBackoff(self.taken)
    }

    /// The full-jitter exponential back-off before retry number `attempt`: a random wait in
    /// `[0, min(max, base * 2^(attempt-1))]`.
    pub(crate) fn backoff(&self, attempt: u32, rng: &FastRng) -> Duration {
        let cap = self
            .policy
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.policy.backoff_max);
        let cap_us = cap.as_micros().min(u32::MAX as u128) as u32;
        if cap_us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(rng.below(cap_us) as u64)
    }
}

/// Whether the worker's retry budget lets one more retry start; counts the refusal when not.
fn admit(worker: &Worker) -> bool {
    if worker.retry_allowed() {
        return true;
    }
    inc(&worker.stats.upstream_rq_retry_overflow);
    false
}

/// Counts a retry's try as in flight against the worker's retry budget for as long as it
/// lives (from the end of its back-off until the try has a response head or failed).
#[derive(Debug)]
pub(crate) struct RetrySlot<'a>(&'a Worker);

impl<'a> RetrySlot<'a> {
    /// Starts an admitted retry's try to a cluster (counted on the worker and the cluster).
    pub(crate) fn start(worker: &'a Worker, cluster: &crate::lb::ClusterCounters) -> Self {
        worker.retries_active.set(worker.retries_active.get() + 1);
        inc(&worker.stats.upstream_rq_retry);
        inc(&cluster.rq_retry);
        RetrySlot(worker)
    }
}

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.retries_active.set(self.0.retries_active.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::error::{ErrorKind, Side};
    use crate::http::h1::BodyFraming;
    use crate::http::request_body::RequestBody;

    fn policy(attempts: u32) -> RetryPolicy {
        let mut p = ringmesh_api::compile::default_retry_policy();
        p.attempts = attempts;
        p
    }

    fn held() -> bool {
        RequestBody::take(BodyFraming::Length(5), &mut BytesMut::from(&b"hello"[..])).replayable()
    }

    fn reset() -> ProxyError {
        ProxyError::new(ErrorKind::UpstreamReset, Side::Upstream, "t")
    }

    #[test]
    fn the_policy_counts_attempts_and_the_dead_pooled_connection_does_not() {
        let p = policy(2);
        let mut r = Retries::new(&p, None);
        let now = Instant::now();
        let body = held();
        assert_eq!(
            r.after_failure(&ProxyError::reused_conn_dead(), body, now),
            Decision::Now
        );
        // The transparent retry is used once; then the policy (`reset` is in Istio's default).
        assert_eq!(
            r.after_failure(&ProxyError::reused_conn_dead(), body, now),
            Decision::AfterBackoff(1)
        );
        assert_eq!(r.after_failure(&reset(), body, now), Decision::AfterBackoff(2));
        assert_eq!(r.after_failure(&reset(), body, now), Decision::Stop);
    }

    #[test]
    fn a_held_body_is_retried_with_its_request() {
        let p = policy(2);
        let mut r = Retries::new(&p, None);
        assert_eq!(r.after_status(503, held(), Instant::now()), Decision::AfterBackoff(1));
        assert_eq!(r.after_status(500, held(), Instant::now()), Decision::Stop);
    }

    #[test]
    fn a_body_that_streamed_is_never_retried() {
        // Body bytes taken from the client stream once: no decision may replay them.
        let p = policy(5);
        let mut r = Retries::new(&p, None);
        let now = Instant::now();
        let body = RequestBody::cut_midway().replayable();
        assert!(!body);
        assert_eq!(
            r.after_failure(&ProxyError::reused_conn_dead(), body, now),
            Decision::Stop
        );
        assert_eq!(r.after_failure(&reset(), body, now), Decision::Stop);
        assert_eq!(r.after_status(503, body, now), Decision::Stop);
    }

    #[test]
    fn no_retry_after_the_route_deadline() {
        let p = policy(2);
        let now = Instant::now();
        let mut r = Retries::new(&p, Some(now));
        assert_eq!(r.after_failure(&reset(), held(), now), Decision::Stop);
        assert_eq!(
            r.after_failure(&ProxyError::reused_conn_dead(), held(), now),
            Decision::Now
        );
    }

    #[test]
    fn per_try_deadline_is_bounded_by_the_route() {
        let mut p = policy(2);
        p.per_try_timeout = Some(Duration::from_millis(100));
        let now = Instant::now();
        let r = Retries::new(&p, Some(now + Duration::from_millis(50)));
        assert_eq!(r.per_try_deadline(now), Some(now + Duration::from_millis(50)));
        let r = Retries::new(&p, None);
        assert_eq!(r.per_try_deadline(now), Some(now + Duration::from_millis(100)));
        p.per_try_timeout = None;
        assert_eq!(Retries::new(&p, None).per_try_deadline(now), None);
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_cap() {
        let p = policy(5);
        let r = Retries::new(&p, None);
        let rng = FastRng::with_seed(3);
        for attempt in 1..=6u32 {
            let cap = (p.backoff_base * (1 << (attempt - 1))).min(p.backoff_max);
            for _ in 0..200 {
                assert!(r.backoff(attempt, &rng) <= cap);
            }
        }
    }
}
