//! Step 7, "forward": send one routed request upstream and stream the response back.
//!
//! Picks the cluster (weighted split) and an endpoint (per-core load balancer), takes a pooled
//! connection or connects, writes the rewritten head and streams the body, then reads the
//! response head under the route's timeouts. Retries follow the route's policy and the worker's
//! retry budget, with jittered exponential back-off, and only while nothing of the request body
//! has been consumed from the client and nothing has been sent back to it — a request whose
//! body was already streamed is never replayed. Upgrades (`101 Switching Protocols`) become a
//! byte tunnel.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use ringmesh_api::snapshot::{ForwardAction, HashOn, LbPolicy, Route, RouteMatch};

use super::body::{self, BodyError};
use super::h1::{
    self as encode, BodyFraming, ChunkedLimits, ConnectionHeader, HeadLimits, HeaderOps, RequestEncode, RequestHead,
    ResponseEncode, ResponseHead, ResponseParser,
};
use super::proxy::{Downstream, RouteView};
use crate::cluster::pool::{self, UpstreamConn};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::lb::{self, ClusterState};
use crate::state::WorkerSnapshot;
use crate::telemetry::stats::{dec, inc};
use crate::worker::Worker;

/// How forwarding ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A response was relayed completely.
    Done {
        /// Whether the downstream connection may carry another request.
        keep_alive: bool,
    },
    /// Nothing was sent to the client yet: answer with this error. `body_consumed` says whether
    /// the request body was already read from the client (then there is nothing left to skip).
    Failed { error: ProxyError, body_consumed: bool },
    /// Part of a response went out, or the client is gone: close the connection.
    Aborted,
    /// The upstream switched protocols: the caller tunnels bytes between the client and this
    /// connection (`buf` holds bytes the upstream sent after its head).
    Upgrade { upstream: UpstreamConn, buf: BytesMut },
}

/// Counts a try as in flight on its cluster and endpoint for as long as it lives, so that
/// least-request balancing sees it and `/clusters` shows it, whatever path the try ends on.
struct InFlight<'a> {
    state: &'a ClusterState,
    endpoint: usize,
}

impl<'a> InFlight<'a> {
    fn start(state: &'a ClusterState, endpoint: usize) -> Self {
        inc(&state.counters.rq_total);
        inc(&state.counters.rq_active);
        inc(&state.endpoints[endpoint].rq_total);
        inc(&state.endpoints[endpoint].rq_active);
        InFlight { state, endpoint }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        dec(&self.state.counters.rq_active);
        dec(&self.state.endpoints[self.endpoint].rq_active);
    }
}

/// Releases a retry slot of the worker's budget when the retry ends.
struct RetrySlot<'a>(&'a Worker);

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.retries_active.set(self.0.retries_active.get().saturating_sub(1));
    }
}

/// What one try produced.
// Returned once per try and matched at once; boxing the large variant would cost an allocation
// per request to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
enum Try {
    /// A response head arrived. `request_complete` is false when it came before the whole
    /// request body was sent (then neither connection can carry another request).
    Response {
        upstream: UpstreamConn,
        head: ResponseHead,
        src: Bytes,
        buf: BytesMut,
        request_complete: bool,
    },
    /// The try failed before any response byte. `body_sent` says whether request body bytes were
    /// consumed from the client (then it cannot be retried).
    Failed {
        error: ProxyError,
        body_sent: bool,
        per_try_timeout: bool,
    },
    /// The client went away or sent a broken body while we streamed it.
    ClientFailed(ProxyError),
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    worker: &Rc<Worker>,
    view: &WorkerSnapshot,
    conn: &mut Downstream,
    head: &RequestHead,
    src: &Bytes,
    req: &RouteView<'_>,
    route: &Route,
    matched: Option<&RouteMatch>,
    action: &ForwardAction,
    idle: Duration,
) -> Outcome {
    let started = Instant::now();
    let limits = &view.snapshot.proxy.limits;
    let cluster_id = action.clusters.pick(worker.rng.next_u64() as u32);
    let cluster = view.snapshot.cluster(cluster_id);
    if let Some(reply) = &cluster.host_not_found {
        // Envoy's "no cluster found", with the host no ServiceEntry defines as the body.
        let e = ProxyError::new(ErrorKind::NoCluster, Side::Internal, "destination host not defined");
        worker.stats.record_local_reply(e.flag());
        worker.stats.record_status(e.status());
        tracing::debug!(peer = %conn.peer, cluster = %cluster.name, "{}: {}", e.status(), e.context);
        let keep = super::proxy::finish_request_body(conn, head, idle).await;
        conn.local_reply(e.status(), &[], reply.as_bytes(), !keep).await;
        return Outcome::Done { keep_alive: keep };
    }
    let state = &view.clusters[cluster_id.0 as usize];
    let hash = hash_key(cluster, req, conn);
    let policy = &action.retry;
    let deadline = action.timeout.map(|t| started + t);

    // The client is told to go ahead with its body by us, not by the upstream: waiting for an
    // upstream's `100 Continue` would stall on servers that ignore `Expect` (Envoy does the
    // same by default). `Expect` is then dropped from the forwarded head.
    let expect = head.connection().expect_continue && head.framing().has_body();
    if expect {
        let (r, _) = conn.stream.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await;
        if r.is_err() {
            return Outcome::Aborted;
        }
    }

    // A chunked body whose first bytes are already here and already broken is refused before
    // any upstream sees the request: smuggling attempts ride on exactly such bodies.
    if head.framing() == BodyFraming::Chunked && !conn.buf.is_empty() {
        if let Err(e) = super::h1::ChunkedDecoder::new(ChunkedLimits::default()).scan(&conn.buf) {
            return Outcome::Failed {
                error: ProxyError::new(
                    ErrorKind::BadRequest { status: e.status() },
                    Side::Downstream,
                    e.reason(),
                ),
                body_consumed: false,
            };
        }
    }

    // The forwarded head is the same for every try: build it once.
    let upstream_head = {
        let rewritten = action.path_rewrite.as_ref().map(|rw| {
            let mut t = rw.rewrite(matched, req.path);
            if let Some(q) = req.query {
                t.push('?');
                t.push_str(q);
            }
            t
        });
        let mut removes: Vec<String>;
        let remove: &[String] = if expect {
            removes = route.request_headers.remove.clone();
            removes.push("expect".to_string());
            &removes
        } else {
            &route.request_headers.remove
        };
        let mut request_id = [0u8; 36];
        let need_id = head.header(src, b"x-request-id").is_none();
        if need_id {
            write_uuid4(worker.rng.next_u64(), worker.rng.next_u64(), &mut request_id);
        }
        let opts = RequestEncode {
            target: rewritten.as_deref().map(str::as_bytes),
            authority: action.host_rewrite.as_deref().map(str::as_bytes),
            ops: HeaderOps {
                remove,
                set: &route.request_headers.set,
                add: &route.request_headers.add,
            },
            client_ip: Some(conn.peer.ip()),
            forwarded_proto: Some("http"),
            request_id: need_id.then_some(&request_id[..]),
            framing: head.framing(),
            connection: if head.connection().upgrade {
                ConnectionHeader::Upgrade
            } else {
                ConnectionHeader::None
            },
        };
        let mut out = BytesMut::with_capacity(head.len() + 160);
        encode::encode_request_head(head, src, &opts, &mut out);
        out.freeze()
    };

    let mut attempt = 0u32;
    let mut _retry_slot: Option<RetrySlot<'_>> = None;
    let mut transparent_retry_used = false;
    loop {
        let Some(endpoint) = lb::pick(cluster, state, &worker.rng, hash) else {
            return Outcome::Failed {
                error: ProxyError::new(ErrorKind::NoHealthyUpstream, Side::Internal, "cluster has no endpoints"),
                body_consumed: false,
            };
        };
        let per_try_deadline = match (policy.per_try_timeout, deadline) {
            (Some(p), Some(d)) => Some((Instant::now() + p).min(d)),
            (Some(p), None) => Some(Instant::now() + p),
            (None, d) => d,
        };
        let result = {
            let _in_flight = InFlight::start(state, endpoint);
            one_try(
                worker,
                view,
                conn,
                head,
                &upstream_head,
                cluster,
                state,
                endpoint,
                per_try_deadline,
                deadline,
                idle,
                limits,
            )
            .await
        };
        let (error, body_sent, per_try_timeout) = match result {
            Try::ClientFailed(e) => {
                // A broken body cannot be skipped to find the next request: answer and close.
                return match e.kind {
                    ErrorKind::BadRequest { .. } => Outcome::Failed {
                        error: e,
                        body_consumed: true,
                    },
                    _ => Outcome::Aborted,
                };
            }
            Try::Failed {
                error,
                body_sent,
                per_try_timeout,
            } => (error, body_sent, per_try_timeout),
            Try::Response {
                upstream,
                head: rhead,
                src: rsrc,
                buf,
                request_complete,
            } => {
                let status = rhead.status();
                let retriable = policy.retries_status(status) && !head.framing().has_body();
                if retriable && attempt < policy.attempts && within(deadline) {
                    if let Some(slot) = take_retry_slot(worker) {
                        record_upstream_status(state, status);
                        // Drain the refused response so the connection can be pooled; if that
                        // fails the connection is simply dropped.
                        let mut upstream = upstream;
                        let mut buf = buf;
                        let reusable = rhead.connection().keep_alive
                            && body::discard(rhead.framing(), &mut upstream.read, &mut buf, idle, 64 * 1024)
                                .await
                                .is_ok()
                            && buf.is_empty();
                        if reusable {
                            upstream.requests += 1;
                            upstream.buf = buf;
                            worker.pool.checkin(upstream, cluster.pool.max_idle_per_endpoint);
                        }
                        tracing::debug!(cluster = %cluster.name, status, attempt, "retrying on status");
                        _retry_slot = Some(slot);
                        attempt += 1;
                        backoff(worker, policy.backoff_base, policy.backoff_max, attempt).await;
                        continue;
                    }
                    inc(&worker.stats.upstream_rq_retry_overflow);
                }
                return relay_response(
                    worker,
                    conn,
                    head,
                    route,
                    cluster,
                    state,
                    upstream,
                    (rhead, rsrc, buf),
                    request_complete,
                    idle,
                )
                .await;
            }
        };
        // A reused pooled connection that died before answering is not the request's fault:
        // retry once on a fresh connection whatever the policy says (hyper and Envoy do too).
        let transparent = matches!(error.kind, ErrorKind::UpstreamReset) && !body_sent && !transparent_retry_used;
        let policy_allows = !body_sent
            && match error.kind {
                ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => policy.on_connect_failure,
                ErrorKind::UpstreamReset => policy.on_reset,
                ErrorKind::UpstreamTimeout => {
                    per_try_timeout
                        && (policy.on_5xx || policy.on_gateway_error || policy.retriable_status_codes.contains(&504))
                }
                _ => false,
            };
        if transparent && error.context == REUSED_CONN_RESET {
            transparent_retry_used = true;
            continue;
        }
        if policy_allows && attempt < policy.attempts && within(deadline) {
            if let Some(slot) = take_retry_slot(worker) {
                tracing::debug!(cluster = %cluster.name, attempt, "retrying after {}", error);
                _retry_slot = Some(slot);
                attempt += 1;
                backoff(worker, policy.backoff_base, policy.backoff_max, attempt).await;
                continue;
            }
            inc(&worker.stats.upstream_rq_retry_overflow);
        }
        if error.kind == ErrorKind::UpstreamTimeout {
            inc(&worker.stats.upstream_rq_timeout);
        }
        return Outcome::Failed {
            error,
            body_consumed: body_sent,
        };
    }
}

/// Largest body sent in the same write as its head (copied once; larger bodies stream).
const COALESCE_MAX: u64 = 16 * 1024;

/// Context of the error for a pooled connection that was found closed by the upstream.
const REUSED_CONN_RESET: &str = "pooled upstream connection closed before the response";

fn within(deadline: Option<Instant>) -> bool {
    deadline.is_none_or(|d| Instant::now() < d)
}

fn take_retry_slot(worker: &Worker) -> Option<RetrySlot<'_>> {
    if !worker.retry_allowed() {
        return None;
    }
    worker.retries_active.set(worker.retries_active.get() + 1);
    inc(&worker.stats.upstream_rq_retry);
    Some(RetrySlot(worker))
}

/// Full-jitter exponential back-off: a random wait in `[0, min(max, base * 2^(n-1))]`.
async fn backoff(worker: &Worker, base: Duration, max: Duration, attempt: u32) {
    let cap = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(max);
    let cap_us = cap.as_micros().min(u32::MAX as u128) as u32;
    if cap_us == 0 {
        return;
    }
    let wait = Duration::from_micros(worker.rng.below(cap_us) as u64);
    monoio::time::sleep(wait).await;
}

/// The consistent-hash key of this request under the cluster's policy, if it has one.
fn hash_key(cluster: &ringmesh_api::snapshot::Cluster, req: &RouteView<'_>, conn: &Downstream) -> Option<u64> {
    let hash_on = match &cluster.lb {
        LbPolicy::RingHash { hash_on, .. } | LbPolicy::Maglev { hash_on, .. } => hash_on,
        _ => return None,
    };
    use ringmesh_api::hash_table::hash_bytes;
    use ringmesh_api::snapshot::RequestHead as _;
    match hash_on {
        HashOn::Header(name) => req.header(name).map(hash_bytes),
        HashOn::Cookie { name } => req
            .header("cookie")
            .and_then(|c| cookie_value(c, name.as_bytes()))
            .map(hash_bytes),
        HashOn::SourceIp => Some(match conn.peer.ip() {
            std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

/// Writes a random (version 4) UUID as 36 ASCII bytes, the form Envoy uses for `x-request-id`.
fn write_uuid4(hi: u64, lo: u64, out: &mut [u8; 36]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_le_bytes());
    bytes[8..].copy_from_slice(&lo.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut j = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(b >> 4) as usize];
        out[j + 1] = HEX[(b & 0xf) as usize];
        j += 2;
    }
}

fn record_upstream_status(state: &ClusterState, status: u16) {
    inc(&state.counters.rq_by_class[(status / 100).min(5) as usize]);
}

#[allow(clippy::too_many_arguments)]
async fn one_try(
    worker: &Worker,
    view: &WorkerSnapshot,
    conn: &mut Downstream,
    head: &RequestHead,
    upstream_head: &Bytes,
    cluster: &ringmesh_api::snapshot::Cluster,
    state: &ClusterState,
    endpoint: usize,
    per_try_deadline: Option<Instant>,
    deadline: Option<Instant>,
    idle: Duration,
    limits: &ringmesh_api::snapshot::Limits,
) -> Try {
    let _ = view;
    let addr = cluster.endpoints[endpoint].address;
    let mut upstream = match worker.pool.checkout(addr, cluster.pool.idle_timeout) {
        Some(c) => {
            inc(&worker.stats.upstream_cx_reused);
            c
        }
        None => {
            inc(&worker.stats.upstream_cx_total);
            let timeout = match per_try_deadline {
                Some(d) => cluster.connect_timeout.min(d.saturating_duration_since(Instant::now())),
                None => cluster.connect_timeout,
            };
            match pool::connect(addr, timeout).await {
                Ok(c) => c,
                Err(error) => {
                    inc(&worker.stats.upstream_cx_connect_fail);
                    inc(&state.endpoints[endpoint].cx_connect_fail);
                    tracing::debug!(upstream = %addr, cluster = %cluster.name, "{error}");
                    return Try::Failed {
                        error,
                        body_sent: false,
                        per_try_timeout: false,
                    };
                }
            }
        }
    };
    let reset = |reused: bool| {
        ProxyError::new(
            ErrorKind::UpstreamReset,
            Side::Upstream,
            if reused {
                REUSED_CONN_RESET
            } else {
                "upstream closed or reset before the response"
            },
        )
    };

    let framing = head.framing();
    // A small body that has fully arrived goes out in the same write as the head: one send
    // instead of two is the largest saving per request on loopback.
    let coalesce = match framing {
        BodyFraming::Length(n) if n > 0 && n <= COALESCE_MAX && conn.buf.len() as u64 >= n => Some(n as usize),
        _ => None,
    };
    let ufd = upstream.fd();
    let r = match coalesce {
        Some(n) => {
            let mut both = BytesMut::with_capacity(upstream_head.len() + n);
            both.extend_from_slice(upstream_head);
            both.extend_from_slice(&conn.buf[..n]);
            let _ = conn.buf.split_to(n);
            crate::http::send::write_all(&mut upstream.write, ufd, both.freeze())
                .await
                .0
        }
        None => {
            crate::http::send::write_all(&mut upstream.write, ufd, upstream_head.clone())
                .await
                .0
        }
    };
    if r.is_err() {
        return Try::Failed {
            error: reset(upstream.reused),
            body_sent: false,
            per_try_timeout: false,
        };
    }
    let body_sent = framing.has_body();
    let mut buf = std::mem::take(&mut upstream.buf);
    buf.clear();
    buf.reserve(4096);
    let mut request_complete = true;
    if body_sent && coalesce.is_none() {
        // Stream the body while watching the upstream: an upstream may answer before it has
        // read the whole body (401, 413, ...); that answer is relayed instead of being lost.
        let canceller = Canceller::new();
        let (sent, early) = {
            let len = buf.len();
            let probe = upstream
                .read
                .cancelable_read(std::mem::take(&mut buf).slice_mut(len..), canceller.handle());
            let sending = body::stream(
                framing,
                &mut conn.stream,
                &mut conn.buf,
                &mut upstream.write,
                idle,
                ChunkedLimits::default(),
            );
            let mut probe = std::pin::pin!(probe);
            let mut sending = std::pin::pin!(sending);
            let first = monoio::select! {
                sent = &mut sending => Ok(sent),
                read = &mut probe => Err(read),
            };
            match first {
                Ok(sent) => {
                    // The body is done: stop the probe, keeping any bytes it did read.
                    let _ = canceller.cancel();
                    let (res, slice) = probe.await;
                    buf = slice.into_inner();
                    (Some(sent), matches!(res, Ok(0)).then_some(()))
                }
                Err((res, slice)) => {
                    buf = slice.into_inner();
                    request_complete = false;
                    match res {
                        Ok(n) if n > 0 => (None, None),
                        _ => (None, Some(())),
                    }
                }
            }
        };
        if early.is_some() {
            // The upstream closed (or reset) while the body was going out.
            return Try::Failed {
                error: reset(false),
                body_sent,
                per_try_timeout: false,
            };
        }
        match sent {
            None | Some(Ok(_)) => {}
            Some(Err(BodyError::Write(_))) => {
                return Try::Failed {
                    error: reset(false),
                    body_sent,
                    per_try_timeout: false,
                }
            }
            Some(Err(BodyError::Framing(e))) => {
                return Try::ClientFailed(ProxyError::new(
                    ErrorKind::BadRequest { status: e.status() },
                    Side::Downstream,
                    e.reason(),
                ))
            }
            Some(Err(_)) => {
                return Try::ClientFailed(ProxyError::new(
                    ErrorKind::DownstreamClosed,
                    Side::Downstream,
                    "client went away mid-body",
                ))
            }
        }
    }

    // Read the response head, skipping interim 1xx answers (100 Continue was answered by us).
    let head_limits = HeadLimits {
        max_head_bytes: limits.max_response_head_bytes,
        max_headers: limits.max_headers,
    };
    let mut parser = ResponseParser::new(head_limits).upgrade_requested(head.connection().upgrade);
    let timeout_at = per_try_deadline;
    loop {
        if !buf.is_empty() {
            match parser.parse(&buf, head.method()) {
                Ok(Some(rhead)) => {
                    let src = buf.split_to(rhead.len()).freeze();
                    if rhead.is_interim() && rhead.status() != 101 {
                        continue;
                    }
                    return Try::Response {
                        upstream,
                        head: rhead,
                        src,
                        buf,
                        request_complete,
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(upstream = %addr, cluster = %cluster.name, "invalid response head: {e}");
                    return Try::Failed {
                        error: ProxyError::new(ErrorKind::UpstreamProtocol, Side::Upstream, e.reason()),
                        body_sent,
                        per_try_timeout: false,
                    };
                }
            }
        }
        let wait = match timeout_at {
            Some(d) => d.saturating_duration_since(Instant::now()),
            // No route timeout (Istio's default): an upstream that never answers is still cut by
            // the idle timeout, so a request cannot hang forever.
            None => idle,
        };
        match body::read_more(&mut upstream.read, &mut buf, wait).await {
            Ok(0) | Err(BodyError::Read(_)) => {
                let fresh = buf.is_empty();
                return Try::Failed {
                    error: reset(upstream.reused && fresh && !body_sent),
                    body_sent,
                    per_try_timeout: false,
                };
            }
            Ok(_) => {}
            Err(_) => {
                let overall = deadline.is_some_and(|d| Instant::now() >= d);
                return Try::Failed {
                    error: ProxyError::new(
                        ErrorKind::UpstreamTimeout,
                        Side::Upstream,
                        "upstream did not answer in time",
                    ),
                    body_sent,
                    per_try_timeout: !overall,
                };
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_response(
    worker: &Worker,
    conn: &mut Downstream,
    head: &RequestHead,
    route: &Route,
    cluster: &ringmesh_api::snapshot::Cluster,
    state: &ClusterState,
    mut upstream: UpstreamConn,
    (rhead, rsrc, mut ubuf): (ResponseHead, Bytes, BytesMut),
    request_complete: bool,
    idle: Duration,
) -> Outcome {
    let status = rhead.status();
    record_upstream_status(state, status);
    worker.stats.record_status(status);
    let upgrade = status == 101 && head.connection().upgrade;
    let framing = rhead.framing();
    let client_framing = body::client_framing(framing, head.version_minor());
    // An answer that came before the whole request body leaves unread body bytes on the client
    // connection: it cannot carry another request.
    let client_keep = head.connection().keep_alive
        && request_complete
        && !worker.draining.get()
        && client_framing != BodyFraming::CloseDelimited
        && !upgrade;
    let ops = &route.response_headers;
    let opts = ResponseEncode {
        ops: HeaderOps {
            remove: &ops.remove,
            set: &ops.set,
            add: &ops.add,
        },
        framing: client_framing,
        connection: if upgrade {
            ConnectionHeader::Upgrade
        } else if client_keep && head.version_minor() == 0 {
            // An HTTP/1.0 client closes unless told the connection stays open.
            ConnectionHeader::KeepAlive
        } else if client_keep {
            ConnectionHeader::None
        } else {
            ConnectionHeader::Close
        },
    };
    conn.out.clear();
    encode::encode_response_head(&rhead, &rsrc, &opts, &mut conn.out);
    // A small response body already read goes out with the head in one write.
    let mut framing = framing;
    if let BodyFraming::Length(n) = framing {
        if n <= COALESCE_MAX && ubuf.len() as u64 >= n && !upgrade {
            conn.out.extend_from_slice(&ubuf[..n as usize]);
            let _ = ubuf.split_to(n as usize);
            framing = BodyFraming::Length(0);
        }
    }
    let out = std::mem::take(&mut conn.out);
    let fd = conn.stream.as_raw_fd();
    let (r, out) = crate::http::send::write_all(&mut conn.stream, fd, out).await;
    conn.out = out;
    if r.is_err() {
        return Outcome::Aborted;
    }
    if upgrade {
        return Outcome::Upgrade { upstream, buf: ubuf };
    }
    match body::stream_as(
        framing,
        client_framing,
        &mut upstream.read,
        &mut ubuf,
        &mut conn.stream,
        idle,
        ChunkedLimits::default(),
    )
    .await
    {
        Ok(_) => {}
        Err(e) => {
            tracing::info!(cluster = %cluster.name, upstream = %upstream.addr, "response body aborted: {e}");
            return Outcome::Aborted;
        }
    }
    upstream.requests += 1;
    let upstream_reusable = rhead.connection().keep_alive
        && request_complete
        && framing != BodyFraming::CloseDelimited
        && ubuf.is_empty()
        && cluster
            .pool
            .max_requests_per_connection
            .is_none_or(|m| upstream.requests < m);
    if upstream_reusable {
        upstream.buf = ubuf;
        worker.pool.checkin(upstream, cluster.pool.max_idle_per_endpoint);
    }
    Outcome::Done {
        keep_alive: client_keep,
    }
}

/// After `101 Switching Protocols`: bytes flow both ways until either side closes. Bytes that
/// were already read past the heads on either side go first.
pub(crate) async fn tunnel(conn: Downstream, upstream: UpstreamConn, ubuf: BytesMut, idle: Duration) {
    let Downstream {
        mut stream,
        buf: mut client_early,
        ..
    } = conn;
    let mut upstream = upstream;
    if !client_early.is_empty() {
        let n = client_early.len();
        if body::write_prefix(&mut upstream.write, &mut client_early, n)
            .await
            .is_err()
        {
            return;
        }
    }
    let mut ubuf = ubuf;
    if !ubuf.is_empty() {
        let n = ubuf.len();
        if body::write_prefix(&mut stream, &mut ubuf, n).await.is_err() {
            return;
        }
    }
    crate::tcp::pipe_pair(stream, upstream, idle).await;
}
