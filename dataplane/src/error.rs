//! The one data-plane error type, and the one place that maps errors to what the client sees.
//!
//! Every failure on the request path becomes a [`ProxyError`]: what went wrong (`kind`), on
//! which side (downstream client, upstream server, or the proxy itself), how far the request
//! got before it ([`Retryable`]), and a static context string for the log.
//! [`ProxyError::status`] and [`ProxyError::flag`] are the only mapping from errors to HTTP
//! status codes and to Envoy-style response flags, and [`ProxyError::retried_by`] and
//! [`ProxyError::is_reused_conn_dead`] the only answer to "may another try follow"; nothing else
//! in the proxy invents a status for a failure or inspects an error's text to decide a retry.

use std::fmt;

use ringmesh_api::snapshot::{FaultStatus, RetryPolicy};

/// Which party an error is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client that sent the request.
    Downstream,
    /// The upstream server the request was forwarded to.
    Upstream,
    /// The proxy's own configuration or state.
    Internal,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was malformed (400) or used an unsupported version (505).
    BadRequest {
        /// Status to answer with: 400, 431 or 505.
        status: u16,
    },
    /// The client did not send a complete head in time (408).
    RequestHeaderTimeout,
    /// The client fell silent mid-body for longer than `limits.requestBodyTimeout` (408, as
    /// Envoy answers a stream idle timeout, flag `SI`).
    RequestBodyTimeout,
    /// No virtual host or route matched (404).
    NoRoute,
    /// The cluster has no endpoint to send to (503).
    NoHealthyUpstream,
    /// The route's destination host is defined by no ServiceEntry (yet) (503, Envoy's `NC`);
    /// the reply's body is the cluster's text naming the host.
    NoCluster,
    /// TCP connect to the upstream failed (503, like Envoy's `UF`).
    ConnectFailed,
    /// TCP connect did not complete within the connect timeout (503).
    ConnectTimeout,
    /// The mutual TLS handshake with an upstream proxy failed or timed out (503 `UF`, as
    /// Envoy reports a TLS error): nothing was sent, so a retry on connect failure applies.
    TlsHandshakeFailed,
    /// The upstream closed or reset before a complete response head (502 or 503).
    UpstreamReset,
    /// The upstream sent a malformed response head, or one larger than the limit (502).
    UpstreamProtocol,
    /// The route timeout expired (504).
    UpstreamTimeout,
    /// A per-try timeout expired before the route timeout (504; retried under `5xx`,
    /// `gateway-error` or status `504`, as Envoy does).
    PerTryTimeout,
    /// The client went away while the request was in flight.
    DownstreamClosed,
    /// A connection-pool limit was reached (`http2MaxRequests`): refused at once (503,
    /// Envoy's `UO`) rather than queued.
    Overflow,
    /// The workload's `AuthorizationPolicy`s deny the request (403 `RBAC: access denied`, as
    /// Envoy's RBAC filter answers; gRPC `PERMISSION_DENIED`).
    Forbidden,
    /// The route's fault injection aborted the request (Envoy's `FI`): its HTTP status, or
    /// HTTP 200 with its gRPC status.
    FaultAbort(FaultStatus),
    /// A local rate limit (`localRateLimit`) had no token left: 429 `local_rate_limited`
    /// (Envoy's `RL`); gRPC `UNAVAILABLE`, or `RESOURCE_EXHAUSTED` when the limit says so.
    RateLimited {
        /// gRPC gets `RESOURCE_EXHAUSTED` rather than `UNAVAILABLE`.
        grpc_resource_exhausted: bool,
    },
}

impl ErrorKind {
    /// Envoy's response flag for access logs and metrics.
    pub fn flag(self) -> &'static str {
        match self {
            ErrorKind::BadRequest { .. } => "DPE",
            ErrorKind::RequestHeaderTimeout => "DT",
            ErrorKind::RequestBodyTimeout => "SI",
            ErrorKind::NoRoute => "NR",
            ErrorKind::NoHealthyUpstream => "UH",
            ErrorKind::NoCluster => "NC",
            ErrorKind::ConnectFailed => "UF",
            ErrorKind::ConnectTimeout => "UF",
            ErrorKind::TlsHandshakeFailed => "UF",
            ErrorKind::UpstreamReset => "UC",
            ErrorKind::UpstreamProtocol => "UPE",
            ErrorKind::UpstreamTimeout | ErrorKind::PerTryTimeout => "UT",
            ErrorKind::DownstreamClosed => "DC",
            ErrorKind::Overflow => "UO",
            ErrorKind::Forbidden => "RBAC",
            ErrorKind::FaultAbort(_) => "FI",
            ErrorKind::RateLimited { .. } => "RL",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` vocabulary for this reply (`route_not_found`,
    /// `no_healthy_upstream`, `rbac_access_denied_matched_policy[…]` is shortened to
    /// `rbac_access_denied`).
    pub fn details(self) -> &'static str {
        match self {
            ErrorKind::BadRequest { .. } => "codec_error",
            ErrorKind::RequestHeaderTimeout => "request_header_timeout",
            ErrorKind::RequestBodyTimeout => "stream_idle_timeout",
            ErrorKind::NoRoute => "route_not_found",
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            ErrorKind::NoCluster => "cluster_not_found",
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            ErrorKind::TlsHandshakeFailed => "upstream_reset_before_response_started{connection_failure,TLS_error}",
            ErrorKind::UpstreamReset => "upstream_reset_before_response_started{connection_termination}",
            ErrorKind::UpstreamProtocol => "upstream_reset_before_response_started{protocol_error}",
            ErrorKind::UpstreamTimeout => "response_timeout",
            ErrorKind::PerTryTimeout => "upstream_per_try_timeout",
            ErrorKind::DownstreamClosed => "downstream_remote_disconnect",
            ErrorKind::Overflow => "upstream_max_pending_requests_overflow",
            ErrorKind::Forbidden => "rbac_access_denied",
            ErrorKind::FaultAbort(_) => "fault_filter_abort",
            ErrorKind::RateLimited { .. } => "local_rate_limited",
        }
    }
}

/// How far a request got before it failed: what decides whether another try is safe at all
/// (pingora's `RetryType` plays this part). Whether the request's body can be sent again is
/// a separate fact, owned by the body (`http::request_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retryable {
    /// Not the upstream's failure (bad request, client gone, no route): never retried.
    No,
    /// Nothing reached the upstream (the connect failed or timed out): the route's policy may
    /// retry it.
    NotSent,
    /// A pooled connection turned out closed before any response byte: the upstream had closed
    /// it while idle, which is not the request's fault, so one more try on a new connection
    /// follows whatever the policy says (hyper and pingora do the same).
    ReusedConnDead,
    /// The request reached a live upstream: only the route's `retryOn` may retry it.
    Sent,
}

/// A data-plane failure with enough context to log it and answer the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Who it is attributed to.
    pub side: Side,
    /// Static detail for logs, e.g. `"content-length and transfer-encoding both present"`.
    pub context: &'static str,
    /// How far the request got.
    retry: Retryable,
}

impl ProxyError {
    /// A new error; how far the request got follows from the kind (a connect failure sent
    /// nothing, any other upstream failure may have been seen by the upstream).
    pub const fn new(kind: ErrorKind, side: Side, context: &'static str) -> Self {
        let retry = match kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::TlsHandshakeFailed => Retryable::NotSent,
            ErrorKind::UpstreamReset
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamTimeout
            | ErrorKind::PerTryTimeout => Retryable::Sent,
            _ => Retryable::No,
        };
        ProxyError {
            kind,
            side,
            context,
            retry,
        }
    }

    /// A pooled connection that failed on write, or closed before any response byte.
    pub const fn reused_conn_dead() -> Self {
        ProxyError {
            kind: ErrorKind::UpstreamReset,
            side: Side::Upstream,
            context: "pooled upstream connection closed before the response",
            retry: Retryable::ReusedConnDead,
        }
    }

    /// How far the request got before this failure.
    pub fn retryable(&self) -> Retryable {
        self.retry
    }

    /// Whether this failure earns the one transparent retry on a new connection, outside the
    /// route's policy.
    pub fn is_reused_conn_dead(&self) -> bool {
        self.retry == Retryable::ReusedConnDead
    }

    /// Whether the route's retry policy asks for another try after this failure (Istio's
    /// `retryOn` semantics). Attempts left, deadlines, the budget and whether the body can be
    /// sent again are the caller's to check.
    pub fn retried_by(&self, policy: &RetryPolicy) -> bool {
        if self.retry == Retryable::No {
            return false;
        }
        match self.kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::TlsHandshakeFailed => {
                policy.on_connect_failure
            }
            ErrorKind::UpstreamReset => policy.on_reset,
            ErrorKind::PerTryTimeout => policy.retries_status(504),
            _ => false,
        }
    }

    /// The HTTP status the client receives for this error.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::BadRequest { status } => status,
            ErrorKind::RequestHeaderTimeout | ErrorKind::RequestBodyTimeout => 408,
            ErrorKind::NoRoute => 404,
            ErrorKind::NoHealthyUpstream | ErrorKind::NoCluster => 503,
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::TlsHandshakeFailed => 503,
            // Envoy answers 503 for a reset before headers ("upstream connect error or
            // disconnect/reset before headers"); a garbled head is a bad gateway.
            ErrorKind::UpstreamReset => 503,
            ErrorKind::UpstreamProtocol => 502,
            ErrorKind::UpstreamTimeout | ErrorKind::PerTryTimeout => 504,
            // Nobody is there to read it; 499 is what access logs show (nginx's convention).
            ErrorKind::DownstreamClosed => 499,
            ErrorKind::Overflow => 503,
            ErrorKind::Forbidden => 403,
            ErrorKind::FaultAbort(FaultStatus::Http(status)) => status,
            ErrorKind::FaultAbort(FaultStatus::Grpc(_)) => 200,
            ErrorKind::RateLimited { .. } => 429,
        }
    }

    /// Envoy's response flag for access logs and metrics.
    pub fn flag(&self) -> &'static str {
        self.kind.flag()
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for this reply.
    pub fn details(&self) -> &'static str {
        self.kind.details()
    }

    /// Body text of the local reply, modelled on Envoy's so existing runbooks still match.
    pub fn body(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest { status: 431 } => "request header too large\n",
            ErrorKind::BadRequest { status: 505 } => "http version not supported\n",
            ErrorKind::BadRequest { .. } => "bad request\n",
            ErrorKind::RequestHeaderTimeout => "request header timeout\n",
            ErrorKind::RequestBodyTimeout => "request body timeout\n",
            ErrorKind::NoRoute => "no route\n",
            ErrorKind::NoHealthyUpstream => "no healthy upstream\n",
            ErrorKind::NoCluster => "no cluster found\n",
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n"
            }
            ErrorKind::TlsHandshakeFailed => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error\n"
            }
            ErrorKind::UpstreamReset => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n"
            }
            ErrorKind::UpstreamProtocol => "upstream sent an invalid response\n",
            ErrorKind::UpstreamTimeout | ErrorKind::PerTryTimeout => "upstream request timeout\n",
            ErrorKind::DownstreamClosed => "",
            ErrorKind::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow\n"
            }
            ErrorKind::Forbidden => "RBAC: access denied",
            ErrorKind::FaultAbort(_) => "fault filter abort",
            ErrorKind::RateLimited { .. } => "local_rate_limited",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?}: {} ({:?})",
            self.status(),
            self.kind,
            self.context,
            self.side
        )
    }
}

impl std::error::Error for ProxyError {}

/// A local reply's one-line reason for `x-ringmesh-reason`: the error's own words, with the
/// cluster named when one was chosen (`no healthy endpoint in cluster outbound|80|v2|reviews`).
pub fn reason_line(e: &ProxyError, cluster: Option<&ringmesh_api::snapshot::Cluster>) -> String {
    match (e.kind, cluster) {
        (ErrorKind::NoHealthyUpstream, Some(c)) => format!("no healthy endpoint in cluster {}", c.name),
        (_, Some(c)) => format!("{} (cluster {})", e.context, c.name),
        (_, None) => e.context.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_envoy() {
        let e = |k| ProxyError::new(k, Side::Upstream, "t");
        assert_eq!(e(ErrorKind::NoRoute).status(), 404);
        assert_eq!(e(ErrorKind::NoHealthyUpstream).status(), 503);
        assert_eq!(e(ErrorKind::ConnectFailed).status(), 503);
        assert_eq!(e(ErrorKind::UpstreamProtocol).status(), 502);
        assert_eq!(e(ErrorKind::UpstreamTimeout).status(), 504);
        assert_eq!(e(ErrorKind::BadRequest { status: 431 }).status(), 431);
        assert_eq!(e(ErrorKind::UpstreamTimeout).flag(), "UT");
        assert_eq!(
            (e(ErrorKind::NoCluster).status(), e(ErrorKind::NoCluster).flag()),
            (503, "NC")
        );
        assert_eq!(e(ErrorKind::NoCluster).retryable(), Retryable::No);
        assert_eq!(e(ErrorKind::PerTryTimeout).status(), 504);
        let abort = |s| e(ErrorKind::FaultAbort(s));
        assert_eq!(abort(FaultStatus::Http(418)).status(), 418);
        assert_eq!(abort(FaultStatus::Grpc(14)).status(), 200);
        assert_eq!(
            (
                abort(FaultStatus::Http(503)).flag(),
                abort(FaultStatus::Http(503)).details()
            ),
            ("FI", "fault_filter_abort")
        );
        assert_eq!(abort(FaultStatus::Http(503)).retryable(), Retryable::No);
        let limited = e(ErrorKind::RateLimited {
            grpc_resource_exhausted: false,
        });
        assert_eq!(
            (limited.status(), limited.flag(), limited.details(), limited.body()),
            (429, "RL", "local_rate_limited", "local_rate_limited")
        );
        assert_eq!(limited.retryable(), Retryable::No);
    }

    fn policy(retry_on: &[&str]) -> RetryPolicy {
        let mut p = ringmesh_api::compile::default_retry_policy();
        p.on_connect_failure = retry_on.contains(&"connect-failure");
        p.on_reset = retry_on.contains(&"reset");
        p.on_5xx = retry_on.contains(&"5xx");
        p.on_gateway_error = retry_on.contains(&"gateway-error");
        p.retriable_status_codes.clear();
        p
    }

    #[test]
    fn how_far_a_request_got_follows_the_kind() {
        let e = |k| ProxyError::new(k, Side::Upstream, "t");
        assert_eq!(e(ErrorKind::ConnectFailed).retryable(), Retryable::NotSent);
        assert_eq!(e(ErrorKind::ConnectTimeout).retryable(), Retryable::NotSent);
        assert_eq!(e(ErrorKind::UpstreamReset).retryable(), Retryable::Sent);
        assert_eq!(e(ErrorKind::BadRequest { status: 400 }).retryable(), Retryable::No);
        assert_eq!(e(ErrorKind::DownstreamClosed).retryable(), Retryable::No);
        assert!(ProxyError::reused_conn_dead().is_reused_conn_dead());
        assert!(!e(ErrorKind::UpstreamReset).is_reused_conn_dead());
        assert_eq!(ProxyError::reused_conn_dead().status(), 503);
    }

    #[test]
    fn retry_on_selects_the_failures_it_names() {
        let e = |k| ProxyError::new(k, Side::Upstream, "t");
        let connect = policy(&["connect-failure"]);
        assert!(e(ErrorKind::ConnectFailed).retried_by(&connect));
        assert!(e(ErrorKind::ConnectTimeout).retried_by(&connect));
        assert!(!e(ErrorKind::UpstreamReset).retried_by(&connect));
        assert!(!ProxyError::reused_conn_dead().retried_by(&connect));

        let reset = policy(&["reset"]);
        assert!(e(ErrorKind::UpstreamReset).retried_by(&reset));
        assert!(ProxyError::reused_conn_dead().retried_by(&reset));
        assert!(!e(ErrorKind::ConnectFailed).retried_by(&reset));

        // A per-try timeout is a 504 to the policy; the route timeout is never retried.
        assert!(e(ErrorKind::PerTryTimeout).retried_by(&policy(&["gateway-error"])));
        assert!(e(ErrorKind::PerTryTimeout).retried_by(&policy(&["5xx"])));
        assert!(!e(ErrorKind::PerTryTimeout).retried_by(&reset));
        assert!(!e(ErrorKind::UpstreamTimeout).retried_by(&policy(&["5xx", "gateway-error"])));
        // A malformed response is not a reset.
        assert!(!e(ErrorKind::UpstreamProtocol).retried_by(&policy(&["reset", "5xx"])));
        // The client's faults never are.
        let all = policy(&["connect-failure", "reset", "5xx", "gateway-error"]);
        assert!(!e(ErrorKind::BadRequest { status: 400 }).retried_by(&all));
        assert!(!e(ErrorKind::DownstreamClosed).retried_by(&all));
    }
}
