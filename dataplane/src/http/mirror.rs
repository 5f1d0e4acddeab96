//! Request mirroring (Istio's `mirror`/`mirrors`, Envoy's `request_mirror_policies`): a copy of
//! a share of a route's requests goes to another cluster, with `-shadow` added to its host, and
//! its answer is read and thrown away. The client never waits for a copy: each one is a task of
//! its own on the request's worker, started before the request's first try and left to finish
//! (or time out) by itself.
//!
//! What is copied is exactly the head the primary upstream gets (same rewrites, request id and
//! trace context) with the body the proxy already holds whole (up to 16 KiB, arrived with the
//! head); a body that streams from the client cannot be sent twice without buffering it, so
//! such requests are not copied, and are counted. Copies go over HTTP/1.1 on the worker's
//! upstream pool, to endpoints that take it: a mirror endpoint that speaks only HTTP/2 or mutual
//! TLS (another proxy) is skipped and counted, as are requests that came over HTTP/2.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmesh_api::snapshot::Mirror;

use super::forward::{self, HeadRead};
use super::h1::Method;
use crate::lb::{self, TriedEndpoints};
use crate::telemetry::stats::inc;
use crate::worker::Worker;

/// Most copies in flight on one worker: beyond it new copies are dropped (and counted), so a
/// mirror slower than the traffic costs memory up to this bound, never more.
pub(crate) const MAX_IN_FLIGHT: u32 = 256;

/// How long a copy may take when its route has no timeout (Envoy's default route timeout).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest response body read and discarded to keep the connection for another request; a
/// larger one closes the connection instead.
const DISCARD_MAX: u64 = 1024 * 1024;

/// What a copy carries.
pub(crate) struct Copy<'a> {
    /// The head the primary upstream gets (built once by `forward::plan`).
    pub(crate) head: &'a Bytes,
    /// The request body: empty, or held whole; `None` when it streams.
    pub(crate) body: Option<&'a Bytes>,
    pub(crate) method: Method,
    /// The request upgrades its connection (never copied).
    pub(crate) upgrade: bool,
    /// The route's timeout.
    pub(crate) timeout: Option<Duration>,
    /// The snapshot version the request was routed with; cluster ids are only meaningful in it.
    pub(crate) version: u64,
}

/// Starts a copy of the request for each of `mirrors` whose share this request falls in.
pub(crate) fn start(worker: &Worker, mirrors: &[Mirror], copy: &Copy<'_>) {
    for m in mirrors {
        if !m.share.hit(worker.rng.next_u64()) {
            continue;
        }
        let stats = &worker.stats.mirror;
        if copy.upgrade {
            inc(&stats.skipped_unsupported);
            continue;
        }
        let Some(body) = copy.body else {
            inc(&stats.skipped_streamed_body);
            continue;
        };
        if worker.mirrors_in_flight.get() >= MAX_IN_FLIGHT {
            inc(&stats.dropped_busy);
            continue;
        }
        let Some(me) = worker.me.upgrade() else {
            continue;
        };
        let Some(head) = shadow_head(copy.head) else {
            inc(&stats.failed);
            continue;
        };
        // One buffer for head and body: the copy is written in one send, like the primary's
        // first write (`RequestBody::first_write`); the body is at most 16 KiB.
        let mut bytes = BytesMut::with_capacity(head.len() + body.len());
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(body);
        let send = Send {
            cluster: m.cluster,
            version: copy.version,
            method: copy.method,
            deadline: Instant::now() + copy.timeout.unwrap_or(DEFAULT_TIMEOUT),
        };
        worker.mirrors_in_flight.set(worker.mirrors_in_flight.get() + 1);
        inc(&stats.started);
        monoio::spawn(async move {
            let answered = send.run(&me, bytes.freeze()).await;
            let stats = &me.stats.mirror;
            inc(if answered { &stats.answered } else { &stats.failed });
            me.mirrors_in_flight.set(me.mirrors_in_flight.get().saturating_sub(1));
        });
    }
}

/// Counts the copies an HTTP/2 request would have made: not made yet (see the module doc).
pub(crate) fn not_over_http2(worker: &Worker, mirrors: &[Mirror]) {
    for m in mirrors {
        if m.share.hit(worker.rng.next_u64()) {
            inc(&worker.stats.mirror.skipped_unsupported);
        }
    }
}

/// One copy on its way.
struct Send {
    cluster: ringmesh_api::snapshot::ClusterId,
    version: u64,
    method: Method,
    deadline: Instant,
}

impl Send {
    /// Sends the copy and reads its answer away; `true` when a response head came back. The
    /// whole exchange is bounded by the deadline.
    async fn run(&self, worker: &Rc<Worker>, bytes: Bytes) -> bool {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        matches!(
            monoio::time::timeout(wait, self.exchange(worker, bytes)).await,
            Ok(true)
        )
    }

    async fn exchange(&self, worker: &Rc<Worker>, bytes: Bytes) -> bool {
        let view = worker.snapshot.get();
        // The request was routed with another snapshot: its cluster id may name another
        // cluster here. Rare (a reload between the head and this line); the copy is not made.
        if view.snapshot.version != self.version {
            return false;
        }
        let cluster = view.snapshot.cluster(self.cluster);
        let state = &view.clusters[self.cluster.0 as usize];
        if cluster.host_not_found.is_some() {
            return false;
        }
        let Some(endpoint) = lb::pick(cluster, state, &worker.rng, None, &TriedEndpoints::default()) else {
            return false;
        };
        if cluster.h2_to(endpoint, false) {
            inc(&worker.stats.mirror.skipped_unsupported);
            return false;
        }
        let _in_flight = forward::InFlight::start(state, endpoint);
        // A copy's answers count for the mirror cluster's outlier detection, as any request's.
        let mut upstream = match forward::upstream_conn(worker, cluster, state, endpoint, Some(self.deadline)).await {
            Ok(c) => c,
            Err(e) => {
                forward::record_try_failure(cluster, state, endpoint, &e);
                return false;
            }
        };
        let fd = upstream.fd();
        if crate::http::send::write_all(&mut upstream.write, fd, bytes)
            .await
            .0
            .is_err()
        {
            return false;
        }
        let mut buf = std::mem::take(&mut upstream.buf);
        buf.clear();
        buf.reserve(4096);
        let ask = HeadRead {
            worker,
            cluster,
            method: self.method,
            upgrade: false,
            per_try_deadline: Some(self.deadline),
            route_deadline: Some(self.deadline),
            per_try_timeout: false,
            idle: self.deadline.saturating_duration_since(Instant::now()),
        };
        let (addr, reused) = (upstream.addr, upstream.reused);
        let (rhead, buf) = match forward::read_head(&ask, &mut upstream.read, addr, reused, buf).await {
            Ok((rhead, _src, buf)) => (rhead, buf),
            Err(e) => {
                forward::record_try_failure(cluster, state, endpoint, &e);
                return false;
            }
        };
        forward::record_upstream_status(cluster, state, endpoint, rhead.status());
        // Read the answer away so the connection can serve the next request.
        forward::pool_after_discard(worker, cluster, upstream, &rhead, buf, ask.idle, DISCARD_MAX).await;
        true
    }
}

/// The head with `-shadow` added to its host, before any port (as Envoy does:
/// `shadowAppendedHost`). The head is the one `h1::encode_request_head` wrote, whose first
/// field is always `host`; `None` if it is not.
fn shadow_head(head: &[u8]) -> Option<BytesMut> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")? + 2;
    let rest = &head[line_end..];
    let value = rest.strip_prefix(b"host: ")?;
    let value_end = value.windows(2).position(|w| w == b"\r\n")?;
    let host = &value[..value_end];
    let port_start = port_start(host).unwrap_or(host.len());
    let value_at = line_end + b"host: ".len();
    let mut out = BytesMut::with_capacity(head.len() + b"-shadow".len());
    out.extend_from_slice(&head[..value_at + port_start]);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&head[value_at + port_start..]);
    Some(out)
}

/// Where `:port` starts in a host (`[::1]:80` → the last colon after the bracket); `None`
/// without a port.
fn port_start(host: &[u8]) -> Option<usize> {
    let after_bracket = host.iter().rposition(|&b| b == b']').map_or(0, |i| i + 1);
    let colon = host[after_bracket..].iter().rposition(|&b| b == b':')? + after_bracket;
    // A bare IPv6 address without brackets has colons but no port.
    if after_bracket == 0 && host[..colon].contains(&b':') {
        return None;
    }
    Some(colon)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(head: &str) -> String {
        String::from_utf8(shadow_head(head.as_bytes()).map(|b| b.to_vec()).unwrap_or_default()).unwrap()
    }

    #[test]
    fn the_host_gets_its_shadow_suffix_before_any_port() {
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nhost: web.shop\r\nx: y\r\n\r\n"),
            "GET / HTTP/1.1\r\nhost: web.shop-shadow\r\nx: y\r\n\r\n"
        );
        assert_eq!(
            shadow("POST /a HTTP/1.1\r\nhost: web.shop:8080\r\n\r\n"),
            "POST /a HTTP/1.1\r\nhost: web.shop-shadow:8080\r\n\r\n"
        );
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nhost: [::1]:80\r\n\r\n"),
            "GET / HTTP/1.1\r\nhost: [::1]-shadow:80\r\n\r\n"
        );
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nhost: [::1]\r\n\r\n"),
            "GET / HTTP/1.1\r\nhost: [::1]-shadow\r\n\r\n"
        );
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nhost: \r\n\r\n"),
            "GET / HTTP/1.1\r\nhost: -shadow\r\n\r\n"
        );
        // Not a head the encoder wrote: no copy rather than a wrong one.
        assert_eq!(shadow("GET / HTTP/1.1\r\nx: y\r\nhost: a\r\n\r\n"), "");
        assert_eq!(shadow("garbage"), "");
    }
}
