//! What the proxy knows of gRPC: how to tell a gRPC call, its deadline (`grpc-timeout`), its
//! status (`grpc-status`), and how a local answer to it is written.
//!
//! A gRPC client reads the call's outcome from the `grpc-status` trailer, not from the HTTP
//! status: a bare `503` reaches the application as `UNKNOWN` or `INTERNAL` with a confusing
//! message. So every local reply to a gRPC request is a *trailers-only* response (HTTP 200,
//! `content-type: application/grpc`, `grpc-status`, `grpc-message` in one HEADERS frame that
//! ends the stream), with the status mapped from the failure as below.
//!
//! | failure | gRPC status |
//! |---|---|
//! | no route (404) | `UNIMPLEMENTED` (12) |
//! | no endpoint, connect failure, upstream reset, bad upstream response, overflow (502/503) | `UNAVAILABLE` (14) |
//! | route timeout, per-try timeout, `grpc-timeout` expired (504) | `DEADLINE_EXCEEDED` (4) |
//!
//! A `grpc-timeout` that expires after the response head went out ends the call with
//! `DEADLINE_EXCEEDED` in the trailers (a route timeout bounds only the wait for the head).
//! | malformed request (400) | `INTERNAL` (13) |
//! | the client went away | `CANCELLED` (1) |
//! | an injected fault's abort | its `grpcStatus`, or its `httpStatus` by gRPC's HTTP-to-gRPC table |
//!
//! The mapping follows gRPC's HTTP-to-gRPC table, except that a timeout is
//! `DEADLINE_EXCEEDED` rather than `UNAVAILABLE`: the deadline is what expired, and a client
//! must not retry it as if the server were down.

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use ringmesh_api::snapshot::FaultStatus;

use crate::error::{ErrorKind, ProxyError};

/// `grpc-status` codes the proxy writes or reads.
pub(crate) mod code {
    pub(crate) const CANCELLED: u32 = 1;
    pub(crate) const UNKNOWN: u32 = 2;
    pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
    pub(crate) const PERMISSION_DENIED: u32 = 7;
    pub(crate) const UNIMPLEMENTED: u32 = 12;
    pub(crate) const INTERNAL: u32 = 13;
    pub(crate) const UNAVAILABLE: u32 = 14;
    pub(crate) const RESOURCE_EXHAUSTED: u32 = 8;
    pub(crate) const UNAUTHENTICATED: u32 = 16;
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, with or without a
/// `+proto`/`+json` suffix).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The call's deadline from `grpc-timeout` (`1*8DIGIT` and a unit: `H`, `M`, `S`, `m`, `u`,
/// `n`). A malformed value is ignored, as gRPC servers do.
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` of a response's headers or trailers, if present and numeric.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<u32> {
    std::str::from_utf8(headers.get("grpc-status")?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The gRPC status a local failure is reported as.
pub(crate) fn status_for(e: &ProxyError) -> u32 {
    match e.kind {
        ErrorKind::NoRoute => code::UNIMPLEMENTED,
        ErrorKind::UpstreamTimeout | ErrorKind::PerTryTimeout => code::DEADLINE_EXCEEDED,
        ErrorKind::BadRequest { .. } | ErrorKind::RequestHeaderTimeout | ErrorKind::RequestBodyTimeout => {
            code::INTERNAL
        }
        ErrorKind::DownstreamClosed => code::CANCELLED,
        ErrorKind::Forbidden => code::PERMISSION_DENIED,
        ErrorKind::FaultAbort(FaultStatus::Grpc(c)) => u32::from(c),
        // Envoy's local rate limit: 429 maps to UNAVAILABLE (gRPC's HTTP table) unless the
        // limit asks for RESOURCE_EXHAUSTED (`rate_limited_as_resource_exhausted`).
        ErrorKind::RateLimited {
            grpc_resource_exhausted: true,
        } => code::RESOURCE_EXHAUSTED,
        ErrorKind::RateLimited {
            grpc_resource_exhausted: false,
        } => code::UNAVAILABLE,
        // gRPC's HTTP-to-gRPC status table.
        ErrorKind::FaultAbort(FaultStatus::Http(s)) => match s {
            400 => code::INTERNAL,
            401 => code::UNAUTHENTICATED,
            403 => code::PERMISSION_DENIED,
            404 => code::UNIMPLEMENTED,
            429 | 502 | 503 | 504 => code::UNAVAILABLE,
            _ => code::UNKNOWN,
        },
        ErrorKind::NoHealthyUpstream
        | ErrorKind::NoCluster
        | ErrorKind::ConnectFailed
        | ErrorKind::ConnectTimeout
        | ErrorKind::TlsHandshakeFailed
        | ErrorKind::UpstreamReset
        | ErrorKind::UpstreamProtocol
        | ErrorKind::Overflow => code::UNAVAILABLE,
    }
}

/// A trailers-only gRPC response carrying `status` and `message` (percent-encoded as the
/// gRPC spec asks).
pub(crate) fn local_reply(status: u32, message: &str) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// The trailers that end a call whose deadline passed after its response head was sent.
pub(crate) fn deadline_exceeded_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code::DEADLINE_EXCEEDED));
    t.insert("grpc-message", HeaderValue::from_static("deadline exceeded"));
    t
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Side;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(&with("content-type", "application/grpc")));
        assert!(is_grpc(&with("content-type", "application/grpc+proto")));
        assert!(!is_grpc(&with("content-type", "application/grpc-web")));
        assert!(!is_grpc(&with("content-type", "application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(timeout(&with("grpc-timeout", "100m")), Some(Duration::from_millis(100)));
        assert_eq!(timeout(&with("grpc-timeout", "2S")), Some(Duration::from_secs(2)));
        assert_eq!(timeout(&with("grpc-timeout", "1H")), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(&with("grpc-timeout", "5u")), Some(Duration::from_micros(5)));
        for bad in ["", "m", "100", "123456789m", "10x", "-1S", "1.5S"] {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(bad).unwrap());
            assert_eq!(timeout(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn local_failures_map_to_grpc_statuses() {
        let e = |k| ProxyError::new(k, Side::Upstream, "t");
        assert_eq!(status_for(&e(ErrorKind::NoHealthyUpstream)), code::UNAVAILABLE);
        assert_eq!(status_for(&e(ErrorKind::UpstreamTimeout)), code::DEADLINE_EXCEEDED);
        assert_eq!(status_for(&e(ErrorKind::NoRoute)), code::UNIMPLEMENTED);
        let r = local_reply(code::UNAVAILABLE, "no healthy upstream 100%");
        assert_eq!(r.status(), 200);
        assert_eq!(status_of(r.headers()), Some(14));
        assert_eq!(r.headers()["grpc-message"], "no healthy upstream 100%25");
    }
}
