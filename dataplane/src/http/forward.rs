//! Step 7, "forward": send one routed request upstream and stream the response back.
//!
//! The connection loop hands over an [`Exchange`] (the routed request and its connection);
//! the steps are functions of it: answer `Expect`, refuse a visibly broken chunked body, plan
//! (pick the cluster, build the forwarded head once), then tries — pick an endpoint not yet
//! tried (`lb`), take a pooled connection or connect, send the head with the request body
//! (`request_body`, which keeps a small body for every try and knows when a streamed one can no
//! longer be replayed), read the response head under the try's deadline — and relay the
//! response. Whether another try follows is decided by `retry` from the error's own retry facts
//! (`crate::error`), the route's policy and the worker's retry budget, with jittered
//! exponential back-off; nothing is retried once a response byte went to the client.
//! Upgrades (`101 Switching Protocols`) become a byte tunnel.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::tcp::TcpOwnedReadHalf;
use ringmesh_api::snapshot::{Cluster, ClusterId, ForwardAction, HashOn, LbPolicy, Route, RouteMatch};

use super::body::{self, BodyError};
use super::downstream::{finish_request_body, ClientIo, Downstream};
use super::h1::{
    self as encode, BodyFraming, ChunkedLimits, ConnectionHeader, HeadLimits, HeaderOps, RequestEncode, RequestHead,
    ResponseEncode, ResponseHead, ResponseParser,
};
use super::request_body::{ClientBody, RequestBody};
use super::retry::{Decision, Retries, RetrySlot};
use super::route_view::RouteView;
use crate::cluster::breaker::ConnSlot;
use crate::cluster::pool::{self, UpstreamConn};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::lb::{self, ClusterState};
use crate::state::WorkerSnapshot;
use crate::telemetry::request::{Details, Facts};
use crate::telemetry::stats::{dec, inc};
use crate::telemetry::trace;
use crate::worker::Worker;

/// One routed request on its way upstream: what routing decided and what every step of
/// forwarding reads. Built by the connection loop for each forwarded request.
pub(crate) struct Exchange<'a> {
    pub(crate) worker: &'a Worker,
    /// What the request did, for telemetry.
    pub(crate) facts: &'a Facts,
    pub(crate) view: &'a WorkerSnapshot,
    pub(crate) conn: &'a mut Downstream,
    pub(crate) head: &'a RequestHead,
    pub(crate) src: &'a Bytes,
    pub(crate) req: &'a RouteView<'a>,
    pub(crate) route: &'a Route,
    pub(crate) matched: Option<&'a RouteMatch>,
    pub(crate) action: &'a ForwardAction,
    /// Idle timeout between reads of a body.
    pub(crate) idle: Duration,
}

/// How forwarding ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A response was relayed completely.
    Done {
        /// Whether the downstream connection may carry another request.
        keep_alive: bool,
    },
    /// Nothing was sent to the client yet: answer with this error. `body` says where the
    /// request body stands on the client connection.
    Failed { error: ProxyError, body: ClientBody },
    /// Part of a response went out, or the client is gone: close the connection.
    Aborted,
    /// The upstream switched protocols: the caller tunnels bytes between the client and this
    /// connection (`buf` holds bytes the upstream sent after its head).
    Upgrade { upstream: UpstreamConn, buf: BytesMut },
}

/// Counts a try as in flight on its cluster and endpoint for as long as it lives, so that
/// least-request balancing sees it and `/clusters` shows it, whatever path the try ends on.
pub(crate) struct InFlight<'a> {
    state: &'a ClusterState,
    endpoint: usize,
}

impl<'a> InFlight<'a> {
    pub(crate) fn start(state: &'a ClusterState, endpoint: usize) -> Self {
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

/// What forwarding derives once per request and every try reads.
pub(crate) struct Plan<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) state: &'a ClusterState,
    /// The request's consistent-hash key, under a hashing policy.
    hash: Option<u64>,
    /// The route deadline.
    pub(crate) deadline: Option<Instant>,
    /// The rewritten head, the same for every try.
    upstream_head: Bytes,
    /// The rewritten path and query, if the route rewrites it.
    pub(crate) rewritten: Option<String>,
    /// The `x-request-id` the forwarded head carries when the client sent none.
    pub(crate) request_id: [u8; 36],
    /// The same request for an HTTP/2 upstream, built by the first try that needs it.
    pub(crate) h2_head: std::cell::OnceCell<crate::http::h2::headers::Outgoing>,
}

/// A response head from an upstream, with the connection it came on.
pub(crate) struct Response {
    pub(crate) upstream: UpstreamConn,
    pub(crate) head: ResponseHead,
    pub(crate) src: Bytes,
    /// Bytes read after the head.
    pub(crate) buf: BytesMut,
}

/// What one try produced.
// Returned once per try and matched at once; boxing the large variant would cost an allocation
// per request to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Try {
    /// A response head arrived.
    Response(Response),
    /// The try failed before any response byte; the error says how far the request got.
    Failed(ProxyError),
    /// The client went away or sent a broken body while we streamed it.
    ClientFailed(ProxyError),
    /// A response came over HTTP/2 and was relayed: forwarding ends with this outcome.
    Relayed(Outcome),
    /// An HTTP/2 response asked for a retry the policy and budget allow: retry number `.0`.
    Retry(u32),
}

/// Forwards one routed request: the steps below, then tries until one answers or retries end.
pub(crate) async fn forward(ex: &mut Exchange<'_>) -> Outcome {
    let cluster_id = ex.action.clusters.pick(ex.worker.rng.next_u64() as u32);
    ex.facts.cluster.set(Some(cluster_id));
    if let Some(host) = &ex.view.snapshot.cluster(cluster_id).host_not_found {
        return host_not_found(ex, host).await;
    }
    let expect = match answer_expect(ex).await {
        Ok(expect) => expect,
        Err(outcome) => return outcome,
    };
    if let Some(error) = refuse_broken_chunked(ex) {
        return Outcome::Failed {
            error,
            body: ClientBody::Unread,
        };
    }
    // Before the plan: the route's timeout counts from the whole request, as Envoy's does.
    let gathered = RequestBody::gather(
        ex.head.framing(),
        &mut ex.conn.stream,
        &mut ex.conn.buf,
        ex.conn.body_timeout,
    )
    .await;
    ex.conn.account();
    let mut body = match gathered {
        Ok(body) => body,
        Err(e) => return client_failed(client_body_error(e)),
    };
    let plan = plan(ex, cluster_id, expect);
    if !ex.action.mirrors.is_empty() {
        let empty = Bytes::new();
        let copy = super::mirror::Copy {
            head: &plan.upstream_head,
            body: if body.is_empty() { Some(&empty) } else { body.held() },
            method: ex.head.method(),
            upgrade: ex.head.connection().upgrade,
            timeout: ex.action.timeout,
            version: ex.view.snapshot.version,
        };
        super::mirror::start(ex.worker, &ex.action.mirrors, &copy);
    }
    if let Some(held) = body.held() {
        ex.facts.bytes_received.set(held.len() as u64);
    }
    let mut retries = Retries::new(&ex.action.retry, plan.deadline);
    let mut _retry_slot: Option<RetrySlot<'_>> = None;
    loop {
        // Held until this try ends (with its answer relayed, if it is the one answered).
        let _admitted = match ex.worker.admit_request(plan.cluster, plan.state) {
            Ok(admitted) => admitted,
            Err(error) => {
                return Outcome::Failed {
                    error,
                    body: body.client(),
                }
            }
        };
        let Some(endpoint) = lb::pick(plan.cluster, plan.state, &ex.worker.rng, plan.hash, retries.tried()) else {
            return Outcome::Failed {
                error: ProxyError::new(ErrorKind::NoHealthyUpstream, Side::Internal, "cluster has no endpoints"),
                body: body.client(),
            };
        };
        retries.record(endpoint);
        ex.facts.endpoint.set(Some(endpoint as u32));
        let per_try_deadline = retries.per_try_deadline(Instant::now());
        let result = {
            let _in_flight = InFlight::start(plan.state, endpoint);
            if !ex.head.connection().upgrade && plan.cluster.h2_to(endpoint, false) {
                // Boxed: an HTTP/2 try's state is large, and without the box every HTTP/1.1
                // connection's task (sized for its largest state) would carry it while idle.
                Box::pin(crate::http::h2::from_h1::one_try(
                    ex,
                    &plan,
                    &mut body,
                    endpoint,
                    per_try_deadline,
                    &mut retries,
                ))
                .await
            } else {
                one_try(ex, &plan, &mut body, endpoint, per_try_deadline).await
            }
        };
        // A retry counts against the budget only while its try is in flight.
        _retry_slot = None;
        retries.try_ended();
        let error = match result {
            Try::ClientFailed(e) => return client_failed(e),
            Try::Failed(error) => {
                record_try_failure(plan.cluster, plan.state, endpoint, &error);
                error
            }
            Try::Relayed(outcome) => return outcome,
            Try::Retry(attempt) => {
                tracing::debug!(cluster = %plan.cluster.name, attempt, "retrying on status");
                back_off(retries.backoff(attempt, &ex.worker.rng)).await;
                retries.retry_started();
                _retry_slot = Some(RetrySlot::start(ex.worker, &plan.state.counters));
                continue;
            }
            Try::Response(resp) => {
                let status = resp.head.status();
                if let Decision::AfterBackoff(attempt) = retries.after_status(status, body.replayable(), Instant::now())
                {
                    if retries.admit(ex.worker, &ex.worker.breakers(plan.cluster, plan.state)) {
                        record_upstream_status(plan.cluster, plan.state, endpoint, status);
                        pool_refused(ex, &plan, resp).await;
                        tracing::debug!(cluster = %plan.cluster.name, status, attempt, "retrying on status");
                        back_off(retries.backoff(attempt, &ex.worker.rng)).await;
                        retries.retry_started();
                        _retry_slot = Some(RetrySlot::start(ex.worker, &plan.state.counters));
                        continue;
                    }
                }
                let request_complete = body.delivered();
                return relay_response(ex, &plan, resp, request_complete).await;
            }
        };
        match retries.after_failure(&error, body.replayable(), Instant::now()) {
            Decision::Now => continue,
            Decision::AfterBackoff(attempt)
                if retries.admit(ex.worker, &ex.worker.breakers(plan.cluster, plan.state)) =>
            {
                tracing::debug!(cluster = %plan.cluster.name, attempt, "retrying after {}", error);
                back_off(retries.backoff(attempt, &ex.worker.rng)).await;
                retries.retry_started();
                _retry_slot = Some(RetrySlot::start(ex.worker, &plan.state.counters));
                continue;
            }
            Decision::AfterBackoff(_) | Decision::Stop => {}
        }
        if matches!(error.kind, ErrorKind::UpstreamTimeout | ErrorKind::PerTryTimeout) {
            inc(&ex.worker.stats.upstream_rq_timeout);
            inc(&plan.state.counters.rq_timeout);
        }
        return Outcome::Failed {
            error,
            body: body.client(),
        };
    }
}

/// Envoy's "no cluster found" for a route whose destination no ServiceEntry defines yet, with
/// that host as the body; answered before `Expect` is, since no body is wanted.
async fn host_not_found(ex: &mut Exchange<'_>, host: &str) -> Outcome {
    let e = ProxyError::new(ErrorKind::NoCluster, Side::Internal, "destination host not defined");
    ex.worker.stats.record_local_reply(e.flag());
    ex.worker.stats.record_status(e.status());
    ex.facts.local_reply(&e);
    ex.facts.bytes_sent.set(host.len() as u64);
    tracing::debug!(peer = %ex.conn.peer, host, "{}: {}", e.status(), e.context);
    let keep = finish_request_body(ex.conn, ex.head, ex.idle).await;
    ex.conn.local_reply(e.status(), &[], host.as_bytes(), !keep).await;
    Outcome::Done { keep_alive: keep }
}

/// Waits out a retry's back-off (no timer for a zero wait).
pub(crate) async fn back_off(wait: Duration) {
    if !wait.is_zero() {
        monoio::time::sleep(wait).await;
    }
}

/// The client is told to go ahead with its body by us, not by the upstream: waiting for an
/// upstream's `100 Continue` would stall on servers that ignore `Expect` (Envoy does the same
/// by default). Returns whether `Expect` was answered (then it is dropped from the forwarded
/// head), or the outcome when the client is gone.
async fn answer_expect(ex: &mut Exchange<'_>) -> Result<bool, Outcome> {
    let head = ex.head;
    let conn = &mut *ex.conn;
    let expect = head.connection().expect_continue && head.framing().has_body();
    if expect {
        let (r, _) = conn.stream.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await;
        if r.is_err() {
            return Err(Outcome::Aborted);
        }
    }
    Ok(expect)
}

/// A chunked body whose first bytes are already here and already broken is refused before
/// any upstream sees the request: smuggling attempts ride on exactly such bodies.
fn refuse_broken_chunked(ex: &Exchange<'_>) -> Option<ProxyError> {
    let (head, conn) = (ex.head, &*ex.conn);
    if head.framing() == BodyFraming::Chunked && !conn.buf.is_empty() {
        if let Err(e) = super::h1::ChunkedDecoder::new(ChunkedLimits::default()).scan(&conn.buf) {
            return Some(ProxyError::new(
                ErrorKind::BadRequest { status: e.status() },
                Side::Downstream,
                e.reason(),
            ));
        }
    }
    None
}

/// Picks the cluster (weighted split) and builds the forwarded head, once per request.
fn plan<'a>(ex: &Exchange<'a>, cluster_id: ClusterId, expect: bool) -> Plan<'a> {
    let (worker, view, head, src, req, route, matched, action) = (
        ex.worker, ex.view, ex.head, ex.src, ex.req, ex.route, ex.matched, ex.action,
    );
    let conn = &*ex.conn;
    let started = Instant::now();
    let cluster = view.snapshot.cluster(cluster_id);
    let state = &view.clusters[cluster_id.0 as usize];
    let hash = hash_key(cluster, req, conn.peer.ip());
    let deadline = action.timeout.map(|t| started + t);

    // The forwarded head is the same for every try: build it once.
    // A rewrite, or the normalized path when normalizing changed it (the upstream sees what
    // routing and authorization saw).
    let rewritten = match &action.path_rewrite {
        Some(rw) => Some(rw.rewrite(matched, req.path)),
        None if req.path_changed => Some(req.path.to_string()),
        None => None,
    }
    .map(|mut t| {
        if let Some(q) = req.query {
            t.push('?');
            t.push_str(q);
        }
        t
    });
    let mut request_id = [0u8; 36];
    let upstream_head = {
        let mut removes: Vec<String>;
        let remove: &[String] = if expect {
            removes = route.request_headers.remove.clone();
            removes.push("expect".to_string());
            &removes
        } else {
            &route.request_headers.remove
        };
        let xfcc = crate::tls::xfcc(conn.inbound.as_deref());
        let need_id = head.header(src, b"x-request-id").is_none();
        if need_id {
            write_uuid4(worker.rng.next_u64(), worker.rng.next_u64(), &mut request_id);
        }
        let mut trace = trace::begin(&worker.rng, &view.snapshot.telemetry.tracing, || {
            trace::Incoming::from_fields(head.headers().iter().map(|h| (h.name(src), h.value(src))))
        });
        if let Some(t) = trace.as_mut().filter(|t| t.sampled && need_id) {
            t.request_id = Some(request_id);
        }
        ex.facts.trace.set(trace);
        let trace_out = trace.as_ref().map(trace::Outgoing::of);
        let trace_fields = trace_out.as_ref().map(trace::Outgoing::fields);
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
            xfcc: Some(xfcc),
            trace: trace_fields.as_ref().map(|f| f.as_slice()),
            framing: head.framing(),
            connection: if head.connection().upgrade {
                ConnectionHeader::Upgrade
            } else {
                ConnectionHeader::None
            },
        };
        let mut out = BytesMut::with_capacity(head.len() + 160 + xfcc.room());
        encode::encode_request_head(head, src, &opts, &mut out);
        out.freeze()
    };
    Plan {
        cluster,
        state,
        hash,
        deadline,
        upstream_head,
        rewritten,
        request_id,
        h2_head: std::cell::OnceCell::new(),
    }
}

/// Drains a response refused for a retry so its connection can be pooled; if that fails the
/// connection is simply dropped.
async fn pool_refused(ex: &Exchange<'_>, plan: &Plan<'_>, resp: Response) {
    let Response {
        upstream,
        head: rhead,
        buf,
        ..
    } = resp;
    pool_after_discard(ex.worker, plan.cluster, upstream, &rhead, buf, ex.idle, 64 * 1024).await;
}

/// Reads away the body of a response nobody will see (at most `max` bytes, each read within
/// `idle`) and returns the connection to this core's pool; a body that closes the connection,
/// runs longer or breaks drops it instead.
pub(crate) async fn pool_after_discard(
    worker: &Worker,
    cluster: &Cluster,
    mut upstream: UpstreamConn,
    rhead: &ResponseHead,
    mut buf: BytesMut,
    idle: Duration,
    max: u64,
) {
    let framing = rhead.framing();
    let reusable = rhead.connection().keep_alive
        && framing != BodyFraming::CloseDelimited
        && body::discard(framing, &mut upstream.read, &mut buf, idle, max)
            .await
            .is_ok()
        && buf.is_empty();
    if reusable {
        upstream.requests += 1;
        upstream.buf = buf;
        worker.pool.checkin(upstream, cluster.pool.max_idle_per_endpoint);
    }
}

/// Largest response body sent in the same write as its head (copied once; larger bodies
/// stream).
const COALESCE_MAX: u64 = 16 * 1024;

/// The consistent-hash key of this request under the cluster's policy, if it has one.
pub(crate) fn hash_key<R: ringmesh_api::snapshot::RequestHead>(
    cluster: &Cluster,
    req: &R,
    client_ip: std::net::IpAddr,
) -> Option<u64> {
    let hash_on = match &cluster.lb {
        LbPolicy::RingHash { hash_on, .. } | LbPolicy::Maglev { hash_on, .. } => hash_on,
        _ => return None,
    };
    use ringmesh_api::hash_table::hash_bytes;
    match hash_on {
        HashOn::Header(name) => req.header(name).map(hash_bytes),
        HashOn::Cookie { name } => req
            .header("cookie")
            .and_then(|c| cookie_value(c, name.as_bytes()))
            .map(hash_bytes),
        HashOn::SourceIp => Some(lb::source_ip_hash(client_ip)),
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
pub(crate) fn write_uuid4(hi: u64, lo: u64, out: &mut [u8; 36]) {
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

pub(crate) fn record_upstream_status(cluster: &Cluster, state: &ClusterState, endpoint: usize, status: u16) {
    inc(&state.counters.rq_by_class[(status / 100).min(5) as usize]);
    lb::record_outcome(cluster, state, endpoint, lb::health::Outcome::Response(status));
}

/// Counts a failed try against its endpoint for outlier detection (connect failures, resets,
/// timeouts; not what the client caused, nor a pooled connection the upstream had closed while
/// idle, which is not a sign of a sick endpoint).
pub(crate) fn record_try_failure(cluster: &Cluster, state: &ClusterState, endpoint: usize, error: &ProxyError) {
    if error.is_reused_conn_dead() {
        return;
    }
    if let Some(outcome) = lb::health::Outcome::of_error(error.kind) {
        lb::record_outcome(cluster, state, endpoint, outcome);
    }
}

/// One try: a connection to `endpoint`, the request on it, and the response head back.
async fn one_try(
    ex: &mut Exchange<'_>,
    plan: &Plan<'_>,
    body: &mut RequestBody,
    endpoint: usize,
    per_try_deadline: Option<Instant>,
) -> Try {
    let mut upstream = match upstream_conn(ex.worker, plan.cluster, plan.state, endpoint, per_try_deadline).await {
        Ok(c) => c,
        Err(error) => return Try::Failed(error),
    };
    let buf = match send_request(ex, plan, body, &mut upstream).await {
        Ok(buf) => buf,
        Err(failed) => return failed,
    };
    read_response_head(ex, plan, upstream, buf, per_try_deadline).await
}

/// A pooled connection to the endpoint, or a new one within the connect timeout. At the
/// cluster's `maxConnections` (`cluster::breaker`) the request waits in this core's queue, if
/// `http1MaxPendingRequests` leaves room, until a connection of the cluster returns to the
/// pool or closes — within the try's deadline, or the idle timeout without one — and is
/// refused at once (503 `UO`) otherwise.
pub(crate) async fn upstream_conn(
    worker: &Worker,
    cluster: &Cluster,
    state: &ClusterState,
    endpoint: usize,
    per_try_deadline: Option<Instant>,
) -> Result<UpstreamConn, ProxyError> {
    let addr = cluster.endpoints[endpoint].address;
    if let Some(c) = worker.pool.checkout(addr, cluster.pool.idle_timeout) {
        inc(&worker.stats.upstream_cx_reused);
        return Ok(c);
    }
    let slot = match worker.breakers(cluster, state).try_connection() {
        Some(slot) => slot,
        // Boxed: only a request at the limit carries the queue's state, not every
        // connection's task.
        None => match Box::pin(wait_for_connection(worker, cluster, state, addr, per_try_deadline)).await? {
            Waited::Pooled(c) => return Ok(c),
            Waited::Slot(slot) => slot,
        },
    };
    inc(&worker.stats.upstream_cx_total);
    let timeout = match per_try_deadline {
        Some(d) => cluster.connect_timeout.min(d.saturating_duration_since(Instant::now())),
        None => cluster.connect_timeout,
    };
    pool::connect(addr, timeout, cluster.pool.tcp_keepalive.as_ref(), Some(slot))
        .await
        .inspect_err(|error| {
            inc(&worker.stats.upstream_cx_connect_fail);
            inc(&state.endpoints[endpoint].cx_connect_fail);
            tracing::debug!(upstream = %addr, cluster = %cluster.name, "{error}");
        })
}

/// What waiting at the cluster's connection limit ended with.
enum Waited {
    /// A connection to the endpoint came back to the pool.
    Pooled(UpstreamConn),
    /// A place for a new connection came free.
    Slot(ConnSlot),
}

/// The request is at its cluster's `maxConnections` on this core: it makes room by closing an
/// idle connection of the cluster to another endpoint, or waits in the core's queue (within
/// `http1MaxPendingRequests`, else 503 `UO` at once) until a connection of the cluster returns
/// to the pool or closes, within the try's deadline (or the idle timeout without one).
async fn wait_for_connection(
    worker: &Worker,
    cluster: &Cluster,
    state: &ClusterState,
    addr: std::net::SocketAddr,
    per_try_deadline: Option<Instant>,
) -> Result<Waited, ProxyError> {
    let breakers = worker.breakers(cluster, state);
    let mut pending = None;
    loop {
        if let Some(c) = worker.pool.checkout(addr, cluster.pool.idle_timeout) {
            inc(&worker.stats.upstream_cx_reused);
            return Ok(Waited::Pooled(c));
        }
        if let Some(slot) = breakers.try_connection() {
            return Ok(Waited::Slot(slot));
        }
        if breakers.pools() && worker.pool.evict_one_of(&state.counters) {
            continue;
        }
        if pending.is_none() {
            match breakers.enter_pending() {
                Ok(p) => pending = Some(p),
                Err(e) => {
                    inc(&worker.stats.upstream_rq_pending_overflow);
                    return Err(e);
                }
            }
        }
        let until = per_try_deadline
            .unwrap_or_else(|| Instant::now() + worker.snapshot.get().snapshot.proxy.limits.downstream_idle_timeout);
        match monoio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            breakers.wait_for_connection(),
        )
        .await
        {
            Ok(Some(slot)) => return Ok(Waited::Slot(slot)),
            Ok(None) => {}
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    Side::Upstream,
                    "no upstream connection came free in time (maxConnections)",
                ))
            }
        }
    }
}

/// An upstream that closed or reset a connection of its own accord.
pub(crate) const UPSTREAM_RESET: ProxyError = ProxyError::new(
    ErrorKind::UpstreamReset,
    Side::Upstream,
    "upstream closed or reset before the response",
);

/// Writes the head (with the held body, if any), then streams a body from the client while
/// watching the upstream: an upstream may answer before it has read the whole body (401, 413,
/// ...), and that answer is relayed instead of being lost. Returns the read buffer, holding
/// whatever the upstream already sent.
async fn send_request(
    ex: &mut Exchange<'_>,
    plan: &Plan<'_>,
    body: &mut RequestBody,
    upstream: &mut UpstreamConn,
) -> Result<BytesMut, Try> {
    let ufd = upstream.fd();
    let first = body.first_write(&plan.upstream_head);
    ex.facts.sending_upstream();
    let r = crate::http::send::write_all(&mut upstream.write, ufd, first).await.0;
    if r.is_err() {
        return Err(Try::Failed(if upstream.reused {
            ProxyError::reused_conn_dead()
        } else {
            UPSTREAM_RESET
        }));
    }
    let mut buf = std::mem::take(&mut upstream.buf);
    buf.clear();
    buf.reserve(4096);
    if !body.streams() {
        return Ok(buf);
    }
    let conn = &mut *ex.conn;
    let canceller = Canceller::new();
    let (sent, early) = {
        let len = buf.len();
        let mut probe = std::pin::pin!(upstream
            .read
            .cancelable_read(std::mem::take(&mut buf).slice_mut(len..), canceller.handle()));
        let mut sending =
            std::pin::pin!(body.stream(&mut conn.stream, &mut conn.buf, &mut upstream.write, conn.body_timeout));
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
                match res {
                    Ok(n) if n > 0 => (None, None),
                    _ => (None, Some(())),
                }
            }
        }
    };
    if early.is_some() {
        // The upstream closed (or reset) while the body was going out.
        return Err(Try::Failed(UPSTREAM_RESET));
    }
    match sent {
        None => Ok(buf),
        Some(Ok(n)) => {
            ex.facts.bytes_received.set(n);
            Ok(buf)
        }
        Some(Err(BodyError::Write(_))) => Err(Try::Failed(UPSTREAM_RESET)),
        Some(Err(e)) => Err(Try::ClientFailed(client_body_error(e))),
    }
}

/// The client's fault in reading its body: a broken framing, a silence past
/// `limits.requestBodyTimeout`, or a close.
fn client_body_error(e: BodyError) -> ProxyError {
    match e {
        BodyError::Framing(e) => ProxyError::new(
            ErrorKind::BadRequest { status: e.status() },
            Side::Downstream,
            e.reason(),
        ),
        BodyError::Idle => ProxyError::new(ErrorKind::RequestBodyTimeout, Side::Downstream, "request body timeout"),
        _ => ProxyError::new(
            ErrorKind::DownstreamClosed,
            Side::Downstream,
            "client went away mid-body",
        ),
    }
}

/// How a request ends when its client broke its body: a broken body cannot be skipped to find
/// the next request, so the answer closes the connection; a client that left gets nothing.
fn client_failed(e: ProxyError) -> Outcome {
    match e.kind {
        ErrorKind::BadRequest { .. } | ErrorKind::RequestBodyTimeout => Outcome::Failed {
            error: e,
            body: ClientBody::Cut,
        },
        _ => Outcome::Aborted,
    }
}

/// Reads the response head under the try's deadline, skipping interim 1xx answers (100
/// Continue was answered by us).
async fn read_response_head(
    ex: &Exchange<'_>,
    plan: &Plan<'_>,
    upstream: UpstreamConn,
    buf: BytesMut,
    per_try_deadline: Option<Instant>,
) -> Try {
    let ask = HeadRead {
        worker: ex.worker,
        cluster: plan.cluster,
        method: ex.head.method(),
        upgrade: ex.head.connection().upgrade,
        per_try_deadline,
        route_deadline: plan.deadline,
        per_try_timeout: ex.action.retry.per_try_timeout.is_some(),
        idle: ex.idle,
    };
    let mut upstream = upstream;
    let (addr, reused) = (upstream.addr, upstream.reused);
    match read_head(&ask, &mut upstream.read, addr, reused, buf).await {
        Ok((head, src, buf)) => {
            ex.facts.mark(crate::telemetry::request::Mark::UpstreamHead);
            Try::Response(Response {
                upstream,
                head,
                src,
                buf,
            })
        }
        Err(e) => Try::Failed(e),
    }
}

/// What reading an HTTP/1.1 response head needs to know of its request.
pub(crate) struct HeadRead<'a> {
    pub(crate) worker: &'a Worker,
    pub(crate) cluster: &'a Cluster,
    pub(crate) method: encode::Method,
    /// The request asked to upgrade (a `101` is then expected, not refused).
    pub(crate) upgrade: bool,
    pub(crate) per_try_deadline: Option<Instant>,
    pub(crate) route_deadline: Option<Instant>,
    /// A per-try timeout is configured (an expiry before the route deadline is then a per-try
    /// timeout).
    pub(crate) per_try_timeout: bool,
    pub(crate) idle: Duration,
}

/// Reads an HTTP/1.1 response head from the upstream at `addr` (with `buf` holding what it
/// already sent), skipping interim answers other than `101`. `reused`: the connection came
/// from the pool (nothing at all coming back then means the upstream had closed it).
pub(crate) async fn read_head(
    ask: &HeadRead<'_>,
    read: &mut TcpOwnedReadHalf,
    addr: std::net::SocketAddr,
    reused: bool,
    mut buf: BytesMut,
) -> Result<(ResponseHead, Bytes, BytesMut), ProxyError> {
    let view = ask.worker.snapshot.get();
    let limits = &view.snapshot.proxy.limits;
    let head_limits = HeadLimits {
        max_head_bytes: limits.max_response_head_bytes,
        max_headers: limits.max_headers,
    };
    let mut parser = ResponseParser::new(head_limits).upgrade_requested(ask.upgrade);
    loop {
        if !buf.is_empty() {
            match parser.parse(&buf, ask.method) {
                Ok(Some(rhead)) => {
                    let src = buf.split_to(rhead.len()).freeze();
                    if rhead.is_interim() && rhead.status() != 101 {
                        continue;
                    }
                    return Ok((rhead, src, buf));
                }
                Ok(None) => {}
                Err(e) => {
                    ask.worker.stats.log_limit.log(
                        "invalid-response-head",
                        || tracing::info!(upstream = %addr, cluster = %ask.cluster.name, "invalid response head: {e}"),
                    );
                    return Err(ProxyError::new(ErrorKind::UpstreamProtocol, Side::Upstream, e.reason()));
                }
            }
        }
        let wait = match ask.per_try_deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            // No route timeout (Istio's default): an upstream that never answers is still cut by
            // the idle timeout, so a request cannot hang forever.
            None => ask.idle,
        };
        match body::read_more(read, &mut buf, wait).await {
            Ok(0) | Err(BodyError::Read(_)) => {
                // Nothing at all came back on a pooled connection: the upstream had closed it.
                return Err(if reused && buf.is_empty() {
                    ProxyError::reused_conn_dead()
                } else {
                    UPSTREAM_RESET
                });
            }
            Ok(_) => {}
            Err(_) => {
                let overall = ask.route_deadline.is_some_and(|d| Instant::now() >= d);
                let kind = if ask.per_try_timeout && !overall {
                    ErrorKind::PerTryTimeout
                } else {
                    ErrorKind::UpstreamTimeout
                };
                return Err(ProxyError::new(kind, Side::Upstream, "upstream did not answer in time"));
            }
        }
    }
}

/// Relays a response head and its body to the client, then pools the upstream connection
/// when it can carry another request. `request_complete` is false when the answer came before
/// the whole request body was sent (then neither connection can carry another request).
async fn relay_response(ex: &mut Exchange<'_>, plan: &Plan<'_>, resp: Response, request_complete: bool) -> Outcome {
    let (worker, head, route, cluster, state, idle) = (ex.worker, ex.head, ex.route, plan.cluster, plan.state, ex.idle);
    let conn = &mut *ex.conn;
    let Response {
        mut upstream,
        head: rhead,
        src: rsrc,
        buf: mut ubuf,
    } = resp;
    let status = rhead.status();
    record_upstream_status(
        cluster,
        state,
        ex.facts.endpoint.get().map_or(usize::MAX, |e| e as usize),
        status,
    );
    worker.stats.record_status(status);
    let facts = ex.facts;
    facts.status.set(status);
    facts.details.set(Details::ViaUpstream);
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
            facts.bytes_sent.set(n);
        }
    }
    let out = std::mem::take(&mut conn.out);
    facts.mark(crate::telemetry::request::Mark::ClientHead);
    let (r, out) = conn.stream.write_all_direct(out).await;
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
        Ok(n) => facts.bytes_sent.set(facts.bytes_sent.get() + n),
        Err(e) => {
            ex.worker.stats.log_limit.log(
                "response-body-aborted",
                || tracing::info!(cluster = %cluster.name, upstream = %upstream.addr, "response body aborted: {e}"),
            );
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
    match stream {
        ClientIo::Tcp(s) => {
            crate::tcp::pipe_pair(s, upstream, idle).await;
        }
        ClientIo::Tls(t) => {
            let Ok(up) = upstream.read.reunite(upstream.write) else {
                return;
            };
            // Boxed: only a TLS client's upgrade carries the copy loop's state.
            Box::pin(crate::tls::io::pipe(
                t.into_inner(),
                crate::http::h2::io::compat(up),
                idle,
            ))
            .await;
        }
    }
}
