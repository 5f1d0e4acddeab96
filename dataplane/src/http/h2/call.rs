//! One HTTP/2 stream from a client: a call, routed and answered like an HTTP/1.1 request.
//!
//! Steps as for HTTP/1.1 (`http::proxy`, `http::forward`), on `h2`'s request instead of a
//! parsed head: route on `:authority` and `:path`, answer locally (a gRPC call gets a gRPC
//! status, see `http::grpc`), or forward — pick the cluster and an endpoint, try over an
//! HTTP/2 or HTTP/1.1 upstream (`upstream`), retry under the route's policy (`http::retry`,
//! with gRPC statuses), relay the response. Each call is its own task, so a slow call never
//! holds up the others on its connection.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderValue, Response, StatusCode};
use ringmesh_api::snapshot::{ForwardAction, Route, RouteAction, RouteMatch};

use super::bodies::ReplayBody;
use super::handoff::Handed;
use super::headers::{Outgoing, Rewrite};
use super::upstream::{self, Attempt, Try};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::forward::{back_off, hash_key, write_uuid4, InFlight};
use crate::http::grpc;
use crate::http::h1::Xfcc;
use crate::http::proxy::redirect_location;
use crate::http::retry::{Decision, Retries, RetrySlot};
use crate::http::route_view::H2RouteView;
use crate::lb;
use crate::state::WorkerSnapshot;
use crate::telemetry::request::{Details, Facts, Protocol, RequestSide};
use crate::telemetry::stats::inc;
use crate::telemetry::trace;

/// The header that carries a local reply's one-line reason.
const REASON_HEADER: http::header::HeaderName =
    http::header::HeaderName::from_static(crate::http::proxy::REASON_HEADER);
use crate::worker::Worker;
use ringmesh_api::normalize::{normalize_host, normalize_path};

/// Serves one stream to its end.
pub(crate) async fn serve(worker: Rc<Worker>, handed: Handed) {
    let Handed {
        req,
        mut respond,
        peer,
        inbound,
        route_by,
        live,
    } = handed;
    // Counted in the serving worker's load when it was dispatched (`handoff`).
    worker.request_started(true);
    let (parts, body) = req.into_parts();
    let grpc = grpc::is_grpc(&parts.headers);
    let view = worker.snapshot.get();
    let facts = Facts::new(if grpc { Protocol::Grpc } else { Protocol::Http2 });
    let idle = view.snapshot.proxy.limits.downstream_idle_timeout;
    let sent = H2RouteView::new(&parts);
    let client_gone = Cell::new(false);
    let client_stalled = Cell::new(false);
    let reply = Reply {
        worker: &worker,
        view: &view,
        peer,
        grpc,
        client_gone: &client_gone,
        facts: &facts,
    };
    let security = &view.snapshot.security;
    let path = match normalize_path(sent.path, security.path_normalization) {
        Ok(p) => p,
        Err(why) => {
            inc(&worker.stats.security.path_refused);
            worker.stats.log_limit.log(
                "path-refused",
                || tracing::info!(%peer, "400: request path refused: {why}"),
            );
            let e = ProxyError::new(
                ErrorKind::BadRequest { status: 400 },
                Side::Downstream,
                "request path refused",
            );
            reply.error(&mut respond, e, None);
            return finish(
                &worker,
                live,
                &client_gone,
                &client_stalled,
                &view,
                &facts,
                None,
                (&sent, peer),
                inbound.as_deref(),
            );
        }
    };
    let rv = H2RouteView {
        path: &path,
        path_changed: matches!(path, std::borrow::Cow::Owned(_)),
        ..sent
    };
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    if let Some(inbound) = &inbound {
        let host = normalize_host(host);
        let request = crate::authz::HttpRequest {
            host: &host,
            method: rv.method,
            path: rv.path,
            headers: &crate::authz::H2Headers(&parts.headers),
        };
        let verdict = crate::authz::check(&worker, &security.authz, inbound, peer, Some(request));
        facts.authz.set(verdict);
        if verdict.is_some_and(|v| v.denied()) {
            let e = ProxyError::new(ErrorKind::Forbidden, Side::Downstream, "denied by AuthorizationPolicy");
            reply.error(&mut respond, e, None);
            return finish(
                &worker,
                live,
                &client_gone,
                &client_stalled,
                &view,
                &facts,
                None,
                (&sent, peer),
                Some(inbound),
            );
        }
    }
    let hit = route_by
        .virtual_host(&view.snapshot, host)
        .and_then(|vh| vh.find_route_match(&rv));
    let routed = hit.as_ref().map(|h| h.route);
    match hit.map(|h| (h.route, h.matched)) {
        None => {
            tracing::debug!(%peer, host, path = rv.path, "404: no route");
            let e = ProxyError::new(ErrorKind::NoRoute, Side::Internal, "no virtual host or route matched");
            reply.error(&mut respond, e, None);
        }
        Some((route, matched)) => 'route: {
            // ringmesh's local rate limits, the listener's and the route's: 429 `RL` (gRPC
            // `UNAVAILABLE` or `RESOURCE_EXHAUSTED`). The buckets are the same on every core,
            // so a call handed to another worker counts where it is served.
            let limited =
                crate::http::local_rate_limit::check(&view, route_by.listener_limit(), route.local_rate_limit.as_ref());
            if let Some(e) = limited {
                reply.error(&mut respond, e, None);
                break 'route;
            }
            // Istio's fault injection: the delay, then the abort, before the route's action.
            if let Some(fault) = route.fault.as_deref() {
                let draw = crate::http::fault::draw(&worker, fault);
                if let Some(delay) = draw.delay {
                    facts.delayed.set(true);
                    if !crate::http::fault::h2_delay(delay, &mut respond).await {
                        reply.error(&mut respond, crate::http::fault::client_gone(), None);
                        break 'route;
                    }
                }
                if let Some(e) = draw.abort {
                    reply.error(&mut respond, e, None);
                    break 'route;
                }
            }
            match &route.action {
                RouteAction::Direct(d) => {
                    let headers = route
                        .response_headers
                        .set
                        .iter()
                        .chain(route.response_headers.add.iter());
                    reply.direct(
                        &mut respond,
                        d.status,
                        headers,
                        Bytes::copy_from_slice(d.body.as_bytes()),
                    );
                }
                RouteAction::Redirect(r) => {
                    let location = redirect_location(r, host, rv.path, rv.query);
                    let loc = [("location".to_string(), location)];
                    reply.direct(&mut respond, r.status, loc.iter(), Bytes::new());
                }
                RouteAction::Forward(action) => {
                    let call = Call {
                        worker: &worker,
                        facts: &facts,
                        view: &view,
                        peer,
                        xfcc: crate::tls::xfcc(inbound.as_deref()),
                        parts: &parts,
                        rv: &rv,
                        route,
                        matched,
                        action,
                        grpc,
                        idle,
                        client_gone: &client_gone,
                        client_stalled: &client_stalled,
                    };
                    if let Err((e, body)) = forward(&call, ReplayBody::new(body), &mut respond).await {
                        reply.error(&mut respond, e, body);
                    }
                }
            }
        }
    }
    finish(
        &worker,
        live,
        &client_gone,
        &client_stalled,
        &view,
        &facts,
        routed,
        (&sent, peer),
        inbound.as_deref(),
    );
}

/// The call is over: what its client did goes to its connection's account, the worker counts
/// it done, and telemetry hears what it did.
#[allow(clippy::too_many_arguments)]
fn finish(
    worker: &Worker,
    live: super::handoff::LiveCall,
    client_gone: &Cell<bool>,
    client_stalled: &Cell<bool>,
    view: &WorkerSnapshot,
    facts: &Facts,
    route: Option<&Route>,
    (sent, peer): (&H2RouteView<'_>, SocketAddr),
    inbound: Option<&crate::tls::InboundConn>,
) {
    if client_gone.get() {
        live.reset_by_client();
    }
    if client_stalled.get() {
        live.stalled_by_client();
    }
    drop(live);
    worker.request_ended();
    let authority = sent
        .parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| sent.parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let side = RequestSide {
        head: sent,
        authority,
        peer,
    };
    crate::telemetry::finish(worker, view, facts, route, &side, inbound);
}

/// A routed call on its way upstream: what every try reads.
pub(crate) struct Call<'a> {
    pub(crate) worker: &'a Worker,
    /// What the call did, for telemetry.
    pub(crate) facts: &'a Facts,
    pub(crate) view: &'a WorkerSnapshot,
    pub(crate) peer: SocketAddr,
    /// What the call's `x-forwarded-client-cert` becomes (from its connection).
    pub(crate) xfcc: Xfcc<'a>,
    pub(crate) parts: &'a http::request::Parts,
    pub(crate) rv: &'a H2RouteView<'a>,
    pub(crate) route: &'a Route,
    pub(crate) matched: Option<&'a RouteMatch>,
    pub(crate) action: &'a ForwardAction,
    pub(crate) grpc: bool,
    /// Idle timeout between reads of a body.
    pub(crate) idle: Duration,
    /// Set when the client reset the stream before the response was complete.
    pub(crate) client_gone: &'a Cell<bool>,
    /// Set when the client granted no window to the response for the idle timeout.
    pub(crate) client_stalled: &'a Cell<bool>,
}

/// Forwards a call: tries until one answers or retries end. `Err` carries the failure to
/// answer locally (nothing was sent to the client yet), with the body text that replaces the
/// error's own, if any.
async fn forward(
    call: &Call<'_>,
    mut body: ReplayBody,
    respond: &mut SendResponse<Bytes>,
) -> Result<(), (ProxyError, Option<String>)> {
    let (worker, view) = (call.worker, call.view);
    let cluster_id = call.action.clusters.pick(worker.rng.next_u64() as u32);
    call.facts.cluster.set(Some(cluster_id));
    let cluster = view.snapshot.cluster(cluster_id);
    if let Some(host) = &cluster.host_not_found {
        return Err((
            ProxyError::new(ErrorKind::NoCluster, Side::Internal, "destination host not defined"),
            Some(host.clone()),
        ));
    }
    let state = &view.clusters[cluster_id.0 as usize];
    let hash = hash_key(cluster, call.rv, call.peer.ip());
    let started = Instant::now();
    // gRPC's own deadline bounds the call as a route timeout does (Istio honours
    // `grpc-timeout` the same way); the shorter one wins.
    let grpc_deadline = call
        .grpc
        .then(|| grpc::timeout(&call.parts.headers))
        .flatten()
        .map(|t| started + t);
    let route_deadline = call.action.timeout.map(|t| started + t);
    let deadline = match (route_deadline, grpc_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let outgoing = outgoing(call, body.is_empty());
    crate::http::mirror::not_over_http2(worker, &call.action.mirrors);
    let mut retries = Retries::new(&call.action.retry, deadline);
    let mut _retry_slot: Option<RetrySlot<'_>> = None;
    loop {
        // Held until this try ends.
        let _admitted = worker.admit_request(cluster, state).map_err(|e| (e, None))?;
        let Some(endpoint) = lb::pick(cluster, state, &worker.rng, hash, retries.tried()) else {
            return Err((
                ProxyError::new(ErrorKind::NoHealthyUpstream, Side::Internal, "cluster has no endpoints"),
                None,
            ));
        };
        retries.record(endpoint);
        call.facts.endpoint.set(Some(endpoint as u32));
        let try_ = Try {
            call,
            cluster,
            state,
            endpoint,
            outgoing: &outgoing,
            per_try_deadline: retries.per_try_deadline(Instant::now()),
            route_deadline: deadline,
            grpc_deadline,
        };
        let attempt = {
            let _in_flight = InFlight::start(state, endpoint);
            if cluster.h2_to(endpoint, true) {
                upstream::to_h2(&try_, &mut body, respond, &mut retries).await
            } else {
                upstream::to_h1(&try_, &mut body, respond, &mut retries).await
            }
        };
        _retry_slot = None;
        retries.try_ended();
        let error = match attempt {
            Attempt::Done => return Ok(()),
            Attempt::Retry(attempt) => {
                tracing::debug!(cluster = %cluster.name, attempt, "retrying on status");
                back_off(retries.backoff(attempt, &worker.rng)).await;
                retries.retry_started();
                _retry_slot = Some(RetrySlot::start(worker, &state.counters));
                continue;
            }
            Attempt::Failed(e) => {
                crate::http::forward::record_try_failure(cluster, state, endpoint, &e);
                e
            }
        };
        match retries.after_failure(&error, body.replayable(), Instant::now()) {
            Decision::Now => continue,
            Decision::AfterBackoff(attempt) if retries.admit(worker, &worker.breakers(cluster, state)) => {
                tracing::debug!(cluster = %cluster.name, attempt, "retrying after {}", error);
                back_off(retries.backoff(attempt, &worker.rng)).await;
                retries.retry_started();
                _retry_slot = Some(RetrySlot::start(worker, &state.counters));
                continue;
            }
            Decision::AfterBackoff(_) | Decision::Stop => {}
        }
        if matches!(error.kind, ErrorKind::UpstreamTimeout | ErrorKind::PerTryTimeout) {
            inc(&worker.stats.upstream_rq_timeout);
            inc(&state.counters.rq_timeout);
        }
        return Err((error, None));
    }
}

/// The request as it goes upstream, built once for every try.
fn outgoing(call: &Call<'_>, end_stream: bool) -> Outgoing {
    let path = match &call.action.path_rewrite {
        Some(rw) => Some(rw.rewrite(call.matched, call.rv.path)),
        None if call.rv.path_changed => Some(call.rv.path.to_string()),
        None => None,
    }
    .map(|mut t| {
        if let Some(q) = call.rv.query {
            t.push('?');
            t.push_str(q);
        }
        t
    });
    let mut request_id = [0u8; 36];
    write_uuid4(call.worker.rng.next_u64(), call.worker.rng.next_u64(), &mut request_id);
    let headers = &call.parts.headers;
    let mut ctx = trace::begin(&call.worker.rng, &call.view.snapshot.telemetry.tracing, || {
        trace::Incoming::from_fields(headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())))
    });
    if let Some(t) = ctx
        .as_mut()
        .filter(|t| t.sampled && !headers.contains_key("x-request-id"))
    {
        t.request_id = Some(request_id);
    }
    call.facts.trace.set(ctx);
    let trace_out = ctx.as_ref().map(trace::Outgoing::of);
    let trace_fields = trace_out.as_ref().map(trace::Outgoing::fields);
    Outgoing::from_h2(
        call.parts,
        end_stream,
        &Rewrite {
            path: path.as_deref(),
            authority: call.action.host_rewrite.as_deref(),
            ops: &call.route.request_headers,
            client_ip: call.peer.ip(),
            request_id: &request_id,
            xfcc: call.xfcc,
            trace: trace_fields.as_ref().map(|f| f.as_slice()),
        },
    )
}

/// How a call is answered by the proxy itself.
struct Reply<'a> {
    worker: &'a Worker,
    view: &'a WorkerSnapshot,
    peer: SocketAddr,
    grpc: bool,
    client_gone: &'a Cell<bool>,
    facts: &'a Facts,
}

impl Reply<'_> {
    /// A failure: an HTTP status, or a gRPC status for a gRPC call.
    fn error(&self, respond: &mut SendResponse<Bytes>, e: ProxyError, body: Option<String>) {
        let worker = self.worker;
        worker.stats.record_local_reply(e.flag());
        self.facts.local_reply(&e);
        if e.kind == ErrorKind::DownstreamClosed {
            self.client_gone.set(true);
            respond.send_reset(h2::Reason::CANCEL);
            return;
        }
        if e.status() >= 500 {
            worker.stats.log_limit.log(e.flag(), || {
                tracing::info!(peer = %self.peer, status = e.status(), flag = e.flag(), "local reply: {}", e.context)
            });
        }
        let reason = self.reason(&e);
        if self.grpc {
            worker.stats.record_status(200);
            self.facts.status.set(200);
            let code = grpc::status_for(&e);
            self.facts.grpc_status.set(Some(code as u16));
            let text = body.as_deref().unwrap_or_else(|| e.body().trim_end());
            let mut resp = grpc::local_reply(code, text);
            if let Some(r) = reason.and_then(|r| HeaderValue::from_str(&r).ok()) {
                resp.headers_mut().insert(REASON_HEADER, r);
            }
            let _ = respond.send_response(resp, true);
            return;
        }
        worker.stats.record_status(e.status());
        let text = match body {
            Some(b) => Bytes::from(b),
            None => Bytes::from_static(e.body().as_bytes()),
        };
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        if let Some(r) = reason.and_then(|r| HeaderValue::from_str(&r).ok()) {
            h.insert(REASON_HEADER, r);
        }
        // An injected gRPC abort carries its status as gRPC would, in a `grpc-status` field.
        if let ErrorKind::FaultAbort(ringmesh_api::snapshot::FaultStatus::Grpc(code)) = e.kind {
            h.insert("grpc-status", HeaderValue::from(u16::from(code)));
        }
        self.facts.bytes_sent.set(text.len() as u64);
        send_whole(respond, resp, text);
    }

    /// `x-ringmesh-reason` for a local reply, unless turned off.
    fn reason(&self, e: &ProxyError) -> Option<String> {
        let snapshot = &self.view.snapshot;
        snapshot
            .telemetry
            .reason_header
            .then(|| crate::error::reason_line(e, self.facts.cluster.get().map(|c| snapshot.cluster(c))))
    }

    /// A direct response or redirect configured on the route.
    fn direct<'h>(
        &self,
        respond: &mut SendResponse<Bytes>,
        status: u16,
        headers: impl Iterator<Item = &'h (String, String)>,
        body: Bytes,
    ) {
        self.worker.stats.record_status(status);
        self.facts.status.set(status);
        self.facts.details.set(Details::Route);
        self.facts.bytes_sent.set(body.len() as u64);
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let h = resp.headers_mut();
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (
                http::header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                h.append(n, v);
            }
        }
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        send_whole(respond, resp, body);
    }
}

/// Sends a small response (head and body) the proxy made; `h2` buffers the body until the
/// stream's window lets it go. Errors mean the client reset the stream: nobody to answer.
fn send_whole(respond: &mut SendResponse<Bytes>, resp: Response<()>, body: Bytes) {
    let empty = body.is_empty();
    if let Ok(mut send) = respond.send_response(resp, empty) {
        if !empty {
            let _ = send.send_data(body, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::size_of_return;

    /// A call's task is moved whole when it is spawned: a future bound and then pinned, or a
    /// helper `async fn` that pins the future it was given, takes room twice and shows here
    /// first (the call's future was 10.1 KiB with them, 6.6 KiB without; see ARCHITECTURE.md,
    /// "Small call futures").
    #[test]
    #[allow(unreachable_code)]
    fn a_call_future_stays_small() {
        let call = size_of_return(|| super::serve(unreachable!(), unreachable!()));
        assert!(call <= 8 * 1024, "a call's future is {call} bytes");
    }
}
