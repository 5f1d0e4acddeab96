//! The one data-plane error type, and the one place that maps errors to what the client sees.
//!
//! Every failure on the request path becomes a [`ProxyError`]: what went wrong (`kind`), on
//! which side (downstream client, upstream server, or the proxy itself), whether another try
//! could succeed, and a static context string for the log. [`ProxyError::status`] and
//! [`ProxyError::flag`] are the only mapping from errors to HTTP status codes and to
//! Envoy-style response flags; nothing else in the proxy invents a status for a failure.

use std::fmt;

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
    /// The upstream closed or reset before a complete response head (502 or 503).
    UpstreamReset,
    /// The upstream sent a malformed response head, or one larger than the limit (502).
    UpstreamProtocol,
    /// The route timeout or a per-try timeout expired (504).
    UpstreamTimeout,
    /// Retries were refused by the retry budget after a retriable failure.
    RetryBudgetExhausted,
    /// The client went away while the request was in flight.
    DownstreamClosed,
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
}

impl ProxyError {
    /// A new error.
    pub const fn new(kind: ErrorKind, side: Side, context: &'static str) -> Self {
        ProxyError { kind, side, context }
    }

    /// Whether another try on another connection could succeed (before any retry policy).
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::UpstreamReset
        )
    }

    /// The HTTP status the client receives for this error.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::BadRequest { status } => status,
            ErrorKind::RequestHeaderTimeout => 408,
            ErrorKind::NoRoute => 404,
            ErrorKind::NoHealthyUpstream | ErrorKind::NoCluster => 503,
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => 503,
            // Envoy answers 503 for a reset before headers ("upstream connect error or
            // disconnect/reset before headers"); a garbled head is a bad gateway.
            ErrorKind::UpstreamReset => 503,
            ErrorKind::UpstreamProtocol => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::RetryBudgetExhausted => 503,
            // Nobody is there to read it; 499 is what access logs show (nginx's convention).
            ErrorKind::DownstreamClosed => 499,
        }
    }

    /// Envoy's response flag for access logs and metrics.
    pub fn flag(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest { .. } => "DPE",
            ErrorKind::RequestHeaderTimeout => "DT",
            ErrorKind::NoRoute => "NR",
            ErrorKind::NoHealthyUpstream => "UH",
            ErrorKind::NoCluster => "NC",
            ErrorKind::ConnectFailed => "UF",
            ErrorKind::ConnectTimeout => "UF",
            ErrorKind::UpstreamReset => "UC",
            ErrorKind::UpstreamProtocol => "UPE",
            ErrorKind::UpstreamTimeout => "UT",
            ErrorKind::RetryBudgetExhausted => "URX",
            ErrorKind::DownstreamClosed => "DC",
        }
    }

    /// Body text of the local reply, modelled on Envoy's so existing runbooks still match.
    pub fn body(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest { status: 431 } => "request header too large\n",
            ErrorKind::BadRequest { status: 505 } => "http version not supported\n",
            ErrorKind::BadRequest { .. } => "bad request\n",
            ErrorKind::RequestHeaderTimeout => "request header timeout\n",
            ErrorKind::NoRoute => "no route\n",
            ErrorKind::NoHealthyUpstream => "no healthy upstream\n",
            ErrorKind::NoCluster => "no cluster found\n",
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n"
            }
            ErrorKind::UpstreamReset => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n"
            }
            ErrorKind::UpstreamProtocol => "upstream sent an invalid response\n",
            ErrorKind::UpstreamTimeout => "upstream request timeout\n",
            ErrorKind::RetryBudgetExhausted => "upstream retry budget exhausted\n",
            ErrorKind::DownstreamClosed => "",
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
        assert!(e(ErrorKind::ConnectFailed).retryable());
        assert!(!e(ErrorKind::UpstreamTimeout).retryable());
        assert_eq!(e(ErrorKind::UpstreamTimeout).flag(), "UT");
        assert_eq!(
            (e(ErrorKind::NoCluster).status(), e(ErrorKind::NoCluster).flag()),
            (503, "NC")
        );
        assert!(!e(ErrorKind::NoCluster).retryable());
    }
}
