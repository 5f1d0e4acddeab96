//! One try of a call from an HTTP/2 client: over an HTTP/2 upstream ([`to_h2`]) or an
//! HTTP/1.1 one ([`to_h1`]).
//!
//! Both directions of the stream run at once: the request body is pumped upstream while the
//! response head is awaited and, once it came, while the response is relayed (a bidirectional
//! gRPC stream needs both to flow together). The response head decides whether another try
//! follows (HTTP status, or `grpc-status` of a trailers-only answer, under the route's
//! `retryOn`); once the head went to the client, nothing is retried.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::{select, Either};
use h2::server::SendResponse;
use h2::Reason;
use http::Response;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use ringmesh_api::snapshot::Cluster;

use super::bodies::{self, Broken, Cursor, ReplayBody};
use super::call::Call;
use super::client::{self, ConnLimits, OpenFailed};
use super::headers::{apply_ops, h1_response_to_h2, Outgoing};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::forward::{read_head, record_upstream_status, upstream_conn, HeadRead, UPSTREAM_RESET};
use crate::http::grpc;
use crate::http::h1::{self, BodyFraming};
use crate::http::retry::{Decision, Retries};
use crate::lb::ClusterState;
use crate::telemetry::request::Details;
use crate::telemetry::stats::inc;

/// One try's target and deadlines.
pub(crate) struct Try<'a> {
    pub(crate) call: &'a Call<'a>,
    pub(crate) cluster: &'a Cluster,
    pub(crate) state: &'a ClusterState,
    pub(crate) endpoint: usize,
    pub(crate) outgoing: &'a Outgoing,
    pub(crate) per_try_deadline: Option<Instant>,
    pub(crate) route_deadline: Option<Instant>,
    /// The call's `grpc-timeout`: unlike the route timeout it bounds the whole call, response
    /// body included, as gRPC's deadline does.
    pub(crate) grpc_deadline: Option<Instant>,
}

/// How a try ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The response was relayed (or the client went away while it was).
    Done,
    /// The response asked for a retry, and one is allowed: retry number `.0` after its back-off.
    Retry(u32),
    /// The try failed before anything was sent to the client.
    Failed(ProxyError),
}

/// The per-try deadline as a timeout for the next wait (the idle timeout without one, so a
/// silent upstream never holds a call forever).
fn wait(t: &Try<'_>) -> std::time::Duration {
    match t.per_try_deadline {
        Some(d) => d.saturating_duration_since(Instant::now()),
        None => t.call.idle,
    }
}

fn timed_out(t: &Try<'_>) -> ProxyError {
    let overall = t.route_deadline.is_some_and(|d| Instant::now() >= d);
    let kind = if t.call.action.retry.per_try_timeout.is_some() && !overall {
        ErrorKind::PerTryTimeout
    } else {
        ErrorKind::UpstreamTimeout
    };
    ProxyError::new(kind, Side::Upstream, "upstream did not answer in time")
}

/// Whether the response head asks for a retry the policy and budget allow.
fn retry_for(
    t: &Try<'_>,
    retries: &mut Retries<'_>,
    replayable: bool,
    status: u16,
    grpc_status: Option<u32>,
) -> Option<u32> {
    let now = Instant::now();
    let mut decision = retries.after_status(status, replayable, now);
    if decision == Decision::Stop {
        if let Some(code) = grpc_status {
            decision = retries.after_grpc_status(code, replayable, now);
        }
    }
    match decision {
        Decision::AfterBackoff(n) if retries.admit(t.call.worker, &t.call.worker.breakers(t.cluster, t.state)) => {
            record_upstream_status(t.cluster, t.state, t.endpoint, status);
            Some(n)
        }
        _ => None,
    }
}

/// The connection-pool limits of the cluster's HTTP/2 connections.
pub(crate) fn conn_limits(cluster: &Cluster) -> ConnLimits {
    ConnLimits {
        max_streams: cluster.pool.max_concurrent_streams.unwrap_or(u32::MAX),
        max_requests: cluster.pool.max_requests_per_connection,
        connect_timeout: cluster.connect_timeout,
        keepalive: cluster.pool.tcp_keepalive,
    }
}

/// A try over an HTTP/2 upstream connection shared with other calls.
pub(crate) async fn to_h2(
    t: &Try<'_>,
    body: &mut ReplayBody,
    respond: &mut SendResponse<Bytes>,
    retries: &mut Retries<'_>,
) -> Attempt {
    let (worker, idle) = (t.call.worker, t.call.idle);
    let endpoint = (t.endpoint, t.cluster.endpoints[t.endpoint].address);
    t.call.facts.sending_upstream();
    let opened = client::open(
        worker,
        t.cluster,
        t.state,
        endpoint,
        crate::tls::outbound::Target::of(t.cluster, t.endpoint),
        wait(t),
        t.outgoing.to_h2(),
        body.is_empty(),
    )
    .await;
    let (lease, response, mut up) = match opened {
        Ok(x) => x,
        Err(OpenFailed::Failed(e)) => return Attempt::Failed(e),
        Err(OpenFailed::TimedOut) => return Attempt::Failed(timed_out(t)),
    };
    let mut cursor = Cursor::default();
    let empty = body.is_empty();
    let replayable = body.replayable_flag();
    // Built inside `pin!`: a future bound first and pinned after takes two slots.
    let mut pump = std::pin::pin!(async {
        if empty {
            Ok(())
        } else {
            bodies::replay_to_h2(body, &mut cursor, &mut up, idle).await
        }
    });
    let mut pumped: Option<Result<(), Broken>> = None;
    let head = std::pin::pin!(monoio::time::timeout(wait(t), response));
    let head = match await_head(pump.as_mut(), &mut pumped, head, respond).await {
        Some(h) => h,
        None => return Attempt::Failed(client_reset()),
    };
    let resp = match head {
        Err(_) => return Attempt::Failed(timed_out(t)),
        Ok(Err(e)) => return Attempt::Failed(lease.head_failed(&e)),
        Ok(Ok(resp)) => resp,
    };
    let facts = t.call.facts;
    facts.mark(crate::telemetry::request::Mark::UpstreamHead);
    let status = resp.status().as_u16();
    let trailers_only = resp.body().is_end_stream();
    let grpc_status = if trailers_only {
        grpc::status_of(resp.headers())
    } else {
        None
    };
    if let Some(n) = retry_for(t, retries, replayable.get(), status, grpc_status) {
        return Attempt::Retry(n);
    }
    record_upstream_status(t.cluster, t.state, t.endpoint, status);
    worker.stats.record_status(status);
    facts.status.set(status);
    facts.details.set(Details::ViaUpstream);
    facts.grpc_status.set(grpc_status.map(|c| c as u16));
    let (mut parts, mut recv) = resp.into_parts();
    apply_ops(&mut parts.headers, &t.call.route.response_headers);
    let head = Response::from_parts(parts, ());
    facts.mark(crate::telemetry::request::Mark::ClientHead);
    let Ok(mut down) = respond.send_response(head, trailers_only) else {
        return Attempt::Done;
    };
    if trailers_only {
        return Attempt::Done;
    }
    // `None`: the call's `grpc-timeout` passed before the response ended.
    let finished = {
        let relay = std::pin::pin!(bodies::h2_to_h2(&mut recv, &mut down, idle, facts));
        bodies::until(t.grpc_deadline, finish(pump, pumped, relay)).await
    };
    match finished {
        Some(Finished::Complete) => {}
        Some(Finished::UpstreamBroke) => down.send_reset(Reason::INTERNAL_ERROR),
        Some(Finished::ClientGone) => t.call.client_gone.set(true),
        Some(Finished::ClientStalled) => {
            t.call.client_stalled.set(true);
            down.send_reset(Reason::CANCEL);
        }
        None => {
            // The head went out: the status goes in the trailers. Dropping the upstream
            // stream on return cancels it there.
            inc(&worker.stats.upstream_rq_timeout);
            inc(&t.state.counters.rq_timeout);
            let _ = down.send_trailers(grpc::deadline_exceeded_trailers());
        }
    }
    Attempt::Done
}

/// How the rest of an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    /// The response went through.
    Complete,
    /// The upstream broke off the response: the client's stream is reset.
    UpstreamBroke,
    /// The client went away.
    ClientGone,
    /// The client stopped granting window (its stream is reset).
    ClientStalled,
}

/// Runs the rest of the request body and the response relay together until the response is
/// complete.
async fn finish<P, R>(pump: Pin<&mut P>, pumped: Option<Result<(), Broken>>, relay: Pin<&mut R>) -> Finished
where
    P: Future<Output = Result<(), Broken>>,
    R: Future<Output = Result<(), Broken>>,
{
    let result = if pumped.is_some() {
        relay.await
    } else {
        match select(pump, relay).await {
            // The client's side ended or broke: the response still matters only in the first case.
            Either::Left((Ok(()), relay)) => relay.await,
            Either::Left((Err(Broken::Source), _)) => return Finished::ClientGone,
            Either::Left((Err(Broken::Sink | Broken::Stalled), relay)) => relay.await,
            // A complete response ends the call even if the client still sends (the rest of
            // the request is not wanted: `h2` resets it when the handles drop).
            Either::Right((r, _)) => r,
        }
    };
    match result {
        Ok(()) => Finished::Complete,
        Err(Broken::Source) => Finished::UpstreamBroke,
        Err(Broken::Sink) => Finished::ClientGone,
        Err(Broken::Stalled) => Finished::ClientStalled,
    }
}

/// Waits for the response head while the request body goes on (until `pumped`) and watches for
/// the client resetting its stream; `None` when the client reset it or broke its body (the try
/// is then abandoned, and dropping its upstream stream or connection cancels it upstream).
async fn await_head<P, H>(
    mut pump: Pin<&mut P>,
    pumped: &mut Option<Result<(), Broken>>,
    mut head: Pin<&mut H>,
    respond: &mut SendResponse<Bytes>,
) -> Option<H::Output>
where
    P: Future<Output = Result<(), Broken>>,
    H: Future,
{
    loop {
        let event = poll_fn(|cx| {
            if pumped.is_none() {
                if let Poll::Ready(r) = pump.as_mut().poll(cx) {
                    return Poll::Ready(Either::Left(r));
                }
            }
            if let Poll::Ready(h) = head.as_mut().poll(cx) {
                return Poll::Ready(Either::Right(Some(h)));
            }
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(Either::Right(None));
            }
            Poll::Pending
        })
        .await;
        match event {
            Either::Left(Err(Broken::Source)) | Either::Right(None) => return None,
            // The upstream stopped taking the body: its answer (or reset) tells why.
            Either::Left(r) => *pumped = Some(r),
            Either::Right(Some(h)) => return Some(h),
        }
    }
}

/// The request method as the HTTP/1.1 response parser needs it (only HEAD and CONNECT change
/// how a response is framed).
fn h1_method(m: &http::Method) -> h1::Method {
    match *m {
        http::Method::HEAD => h1::Method::Head,
        http::Method::CONNECT => h1::Method::Connect,
        _ => h1::Method::Get,
    }
}

/// A try over a pooled HTTP/1.1 upstream connection.
pub(crate) async fn to_h1(
    t: &Try<'_>,
    body: &mut ReplayBody,
    respond: &mut SendResponse<Bytes>,
    retries: &mut Retries<'_>,
) -> Attempt {
    let (worker, idle) = (t.call.worker, t.call.idle);
    let mut upstream = match upstream_conn(worker, t.cluster, t.state, t.endpoint, t.per_try_deadline).await {
        Ok(c) => c,
        Err(e) => return Attempt::Failed(e),
    };
    let mut head = BytesMut::with_capacity(512);
    t.outgoing.encode_h1(&mut head);
    let fd = upstream.fd();
    t.call.facts.sending_upstream();
    if crate::http::send::write_all(&mut upstream.write, fd, head.freeze())
        .await
        .0
        .is_err()
    {
        return Attempt::Failed(if upstream.reused {
            ProxyError::reused_conn_dead()
        } else {
            UPSTREAM_RESET
        });
    }
    let (addr, reused) = (upstream.addr, upstream.reused);
    let mut buf = std::mem::take(&mut upstream.buf);
    buf.clear();
    let ask = HeadRead {
        worker,
        cluster: t.cluster,
        method: h1_method(&t.outgoing.method),
        upgrade: false,
        per_try_deadline: t.per_try_deadline,
        route_deadline: t.route_deadline,
        per_try_timeout: t.call.action.retry.per_try_timeout.is_some(),
        idle,
    };
    let replayable = body.replayable_flag();
    let exchanged = {
        let crate::cluster::pool::UpstreamConn { read, write, .. } = &mut upstream;
        exchange_h1(
            t,
            body,
            respond,
            retries,
            &replayable,
            (read, write),
            (addr, reused),
            buf,
            &ask,
        )
        .await
    };
    let x = match exchanged {
        Ok(x) => x,
        Err(attempt) => return attempt,
    };
    // The connection carries another request only if both messages ended cleanly.
    let reusable = x.relayed
        && body.ended()
        && x.keep_alive
        && x.buf.is_empty()
        && t.cluster
            .pool
            .max_requests_per_connection
            .is_none_or(|m| upstream.requests + 1 < m);
    if reusable {
        upstream.requests += 1;
        upstream.buf = x.buf;
        worker.pool.checkin(upstream, t.cluster.pool.max_idle_per_endpoint);
    }
    Attempt::Done
}

/// How an exchange over HTTP/1.1 ended, for deciding whether its connection is pooled.
struct Exchanged {
    /// Both bodies went through.
    relayed: bool,
    /// The response allows another request (keep-alive, not close-delimited).
    keep_alive: bool,
    /// Bytes read past the response (must be none to reuse the connection).
    buf: BytesMut,
}

/// The request's body and the response, over the connection's two halves.
#[allow(clippy::too_many_arguments)]
async fn exchange_h1(
    t: &Try<'_>,
    body: &mut ReplayBody,
    respond: &mut SendResponse<Bytes>,
    retries: &mut Retries<'_>,
    replayable: &std::cell::Cell<bool>,
    (read, write): (&mut TcpOwnedReadHalf, &mut TcpOwnedWriteHalf),
    (addr, reused): (std::net::SocketAddr, bool),
    buf: BytesMut,
    ask: &HeadRead<'_>,
) -> Result<Exchanged, Attempt> {
    let (worker, idle, framing) = (t.call.worker, t.call.idle, t.outgoing.framing);
    let mut cursor = Cursor::default();
    let empty = body.is_empty();
    let mut pump = std::pin::pin!(async {
        if empty {
            Ok(())
        } else {
            bodies::replay_to_h1(body, &mut cursor, write, framing, idle).await
        }
    });
    let mut pumped: Option<Result<(), Broken>> = None;
    let head = {
        let head = std::pin::pin!(read_head(ask, read, addr, reused, buf));
        match await_head(pump.as_mut(), &mut pumped, head, respond).await {
            Some(h) => h,
            None => return Err(Attempt::Failed(client_reset())),
        }
    };
    let (rhead, src, mut buf) = head.map_err(Attempt::Failed)?;
    let facts = t.call.facts;
    facts.mark(crate::telemetry::request::Mark::UpstreamHead);
    let status = rhead.status();
    if let Some(n) = retry_for(t, retries, replayable.get(), status, None) {
        return Err(Attempt::Retry(n));
    }
    record_upstream_status(t.cluster, t.state, t.endpoint, status);
    worker.stats.record_status(status);
    facts.status.set(status);
    facts.details.set(Details::ViaUpstream);
    let rframing = rhead.framing();
    let end = matches!(rframing, BodyFraming::None | BodyFraming::Length(0));
    let resp = h1_response_to_h2(&rhead, &src, &t.call.route.response_headers);
    facts.mark(crate::telemetry::request::Mark::ClientHead);
    let Ok(mut down) = respond.send_response(resp, end) else {
        return Err(Attempt::Done);
    };
    let relayed = if end {
        match pumped {
            Some(r) => r.is_ok(),
            None => pump.await.is_ok(),
        }
    } else {
        let finished = {
            let relay = std::pin::pin!(bodies::h1_to_h2(
                rframing,
                read,
                &mut buf,
                &mut down,
                idle,
                &facts.bytes_sent
            ));
            finish(pump, pumped, relay).await
        };
        match finished {
            Finished::Complete => true,
            Finished::UpstreamBroke => {
                down.send_reset(Reason::INTERNAL_ERROR);
                false
            }
            Finished::ClientGone => {
                t.call.client_gone.set(true);
                false
            }
            Finished::ClientStalled => {
                t.call.client_stalled.set(true);
                down.send_reset(Reason::CANCEL);
                false
            }
        }
    };
    Ok(Exchanged {
        relayed,
        keep_alive: rhead.connection().keep_alive && rframing != BodyFraming::CloseDelimited,
        buf,
    })
}

fn client_reset() -> ProxyError {
    ProxyError::new(
        ErrorKind::DownstreamClosed,
        Side::Downstream,
        "client reset the stream mid-body",
    )
}
