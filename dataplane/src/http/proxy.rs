//! The HTTP/1.1 proxy loop: steps 2–8 of the request path for one downstream connection.
//!
//! Read a head into the connection's buffer, parse it in place (`h1`), route it on the worker's
//! snapshot, then either answer locally (errors, redirects, direct responses) or hand it to
//! [`super::forward`], which picks an endpoint, sends the request over a pooled upstream
//! connection (retrying where that is safe) and streams the response back. Pipelined requests
//! are served in order because one request is finished before the next head is looked at.
//! Nothing here locks; the only allocations per request are the forwarded head and the small
//! header-span vector.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ringmesh_api::snapshot::{FaultStatus, Redirect, RouteAction};
use std::sync::Arc;

use super::downstream::{finish_request_body, ClientIo, Downstream};
use super::forward::{self, Exchange, Outcome};
use super::h1::{HeadLimits, RequestHead};
use super::h2::io::Sniff;
use super::request_body::ClientBody;
use super::route_view::RouteView;
use crate::capture::RouteBy;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::telemetry::request::{Details, Facts, Protocol, RequestSide};
use crate::tls::io::MaybeTls;
use crate::tls::InboundConn;
use crate::worker::Worker;
use ringmesh_api::normalize::{normalize_host, normalize_path};

/// First read buffer size per connection. Small, because idle keep-alive connections should
/// cost little memory; it grows for large heads and bodies.
pub(crate) const INITIAL_BUFFER: usize = 4 * 1024;

/// Buffers larger than this are replaced by small ones between requests.
const SHRINK_ABOVE: usize = 32 * 1024;

/// Serves one downstream connection until it closes, errs, idles out, or the worker drains.
/// `initial` holds bytes already read from the client (by protocol detection), and is the
/// connection's read buffer. `inbound` is set on inbound listeners (the workload's policies
/// apply); `route_by` says how requests pick their virtual host.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    stream: ClientIo,
    peer: SocketAddr,
    inbound: Option<Arc<InboundConn>>,
    initial: BytesMut,
    route_by: RouteBy,
) {
    stream.set_nodelay();
    let mut conn = Downstream {
        stream,
        peer,
        inbound,
        route_by,
        buf: initial,
        out: BytesMut::new(),
        body_timeout: Duration::ZERO,
        charge: super::downstream::BufferCharge::new(worker.clone()),
    };
    conn.account();
    // HTTP/2 with prior knowledge starts with its preface; anything else is HTTP/1.x. The
    // bytes read to tell are the HTTP/1 parser's first read, so HTTP/1 pays one comparison.
    match sniff(&worker, &mut conn).await {
        Some(Sniff::H2) => {
            crate::telemetry::stats::inc(&worker.stats.downstream_cx_h2_total);
            let Downstream {
                stream, buf, inbound, ..
            } = conn;
            // Boxed: the HTTP/2 connection's state lives on the heap only for HTTP/2
            // connections, so an idle HTTP/1.1 connection's task stays as small as before.
            let stream = match stream {
                ClientIo::Tcp(s) => MaybeTls::Plain(super::h2::io::compat(s)),
                ClientIo::Tls(t) => MaybeTls::Tls(Box::new(t.into_inner())),
            };
            return Box::pin(super::h2::server::serve(
                worker,
                stream,
                peer,
                buf.freeze(),
                inbound,
                route_by,
            ))
            .await;
        }
        Some(_) => {}
        None => return,
    }
    loop {
        // Copied out rather than the whole `Limits` kept: what is held across the wait below
        // is held by every idle connection's task.
        let (head_limits, idle, header_timeout, body_timeout) = {
            let view = worker.snapshot.get();
            let l = &view.snapshot.proxy.limits;
            let head_limits = HeadLimits {
                max_head_bytes: l.max_request_head_bytes,
                max_headers: l.max_headers,
            };
            (
                head_limits,
                l.downstream_idle_timeout,
                l.request_header_timeout,
                l.request_body_timeout,
            )
        };
        let head = match conn.read_head(head_limits, idle, header_timeout).await {
            Ok(Some(h)) => h,
            Ok(None) => return, // clean close or idle timeout between requests
            Err(e) => {
                // Boxed, as a request is: the refusal's telemetry state is not part of the wait.
                Box::pin(refuse(&worker, &mut conn, e)).await;
                return;
            }
        };
        worker.request_started(false);
        conn.body_timeout = body_timeout;
        // Boxed: a request's state lives on the heap while it is served, so the task of an
        // idle keep-alive connection (sized for its largest state) holds only the wait.
        let next = Box::pin(handle(&worker, &mut conn, head, idle)).await;
        worker.request_ended();
        match next {
            // While draining, every answer says `Connection: close` and ends in `Close`; one
            // whose head went out just before the drain began promised keep-alive, so the
            // connection stays for the client's next request (answered with `close`), or until
            // the drain closes it idle (`drain.rs`).
            Next::Keep => {
                // A connection that once carried a large body goes back to a small buffer while
                // it idles, so memory per idle connection stays what it was before.
                if conn.buf.is_empty() && conn.buf.capacity() > SHRINK_ABOVE {
                    conn.buf = BytesMut::with_capacity(INITIAL_BUFFER);
                }
                if conn.out.capacity() > SHRINK_ABOVE {
                    conn.out = BytesMut::new();
                }
                conn.account();
            }
            Next::Close => return,
            Next::Upgrade { upstream, buf } => {
                let _hold = crate::drain::DrainHold::new(&worker);
                Box::pin(forward::tunnel(conn, upstream, buf, idle)).await;
                return;
            }
        }
    }
}

/// Answers a request whose head could not be read (malformed, too large, too slow) and tells
/// telemetry; the connection closes after it.
async fn refuse(worker: &Rc<Worker>, conn: &mut Downstream, e: ProxyError) {
    worker.stats.record_local_reply(e.flag());
    worker.stats.record_status(e.status());
    worker.stats.log_limit.log(
        e.flag(),
        || tracing::info!(peer = %conn.peer, status = e.status(), flag = e.flag(), "request refused: {}", e.context),
    );
    // No head to route: the reply, and what telemetry can say of it (no method,
    // path or host), as Envoy logs a request its codec refused.
    let facts = Facts::new(Protocol::Http1);
    facts.local_reply(&e);
    facts.bytes_sent.set(e.body().len() as u64);
    let view = worker.snapshot.get();
    if view.snapshot.telemetry.reason_header {
        conn.local_reply(e.status(), &[(REASON_HEADER, e.context)], e.body().as_bytes(), true)
            .await;
    } else {
        conn.local_reply(e.status(), &[], e.body().as_bytes(), true).await;
    }
    let side = RequestSide::unparsed(conn.peer);
    crate::telemetry::finish(worker, &view, &facts, None, &side, conn.inbound.as_deref());
}

/// Reads until the first bytes tell HTTP/2 from HTTP/1.x; `None` when the client closed or
/// idled out first.
async fn sniff(worker: &Worker, conn: &mut Downstream) -> Option<Sniff> {
    let idle = worker.snapshot.get().snapshot.proxy.limits.downstream_idle_timeout;
    loop {
        match super::h2::io::sniff(&conn.buf) {
            Sniff::NeedMore => {}
            decided => return Some(decided),
        }
        let read = if conn.buf.is_empty() {
            conn.read_idle(idle).await
        } else {
            super::body::read_more(&mut conn.stream, &mut conn.buf, idle).await
        };
        match read {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
    }
}

/// What the connection does after a request.
enum Next {
    /// Read the next request.
    Keep,
    /// Close the connection.
    Close,
    /// Tunnel bytes to this upstream (after `101 Switching Protocols`).
    Upgrade {
        upstream: crate::cluster::pool::UpstreamConn,
        buf: BytesMut,
    },
}

impl From<bool> for Next {
    fn from(keep: bool) -> Self {
        if keep {
            Next::Keep
        } else {
            Next::Close
        }
    }
}

/// Routes and answers one request, tells telemetry what it did, and says what the connection
/// does next.
async fn handle(worker: &Rc<Worker>, conn: &mut Downstream, (head, src): (RequestHead, Bytes), idle: Duration) -> Next {
    let view = worker.snapshot.get();
    let facts = Facts::new(Protocol::Http1);
    let route = Cell::new(None);
    let next = 'answer: {
        let (head, src, view, facts, route) = (&head, &src, &*view, &facts, &route);
        let sent = RouteView::new(src, head);
        let security = &view.snapshot.security;
        let path = match normalize_path(sent.path, security.path_normalization) {
            Ok(p) => p,
            Err(why) => {
                crate::telemetry::stats::inc(&worker.stats.security.path_refused);
                worker.stats.log_limit.log(
                    "path-refused",
                    || tracing::info!(peer = %conn.peer, "400: request path refused: {why}"),
                );
                let e = ProxyError::new(
                    ErrorKind::BadRequest { status: 400 },
                    Side::Downstream,
                    "request path refused",
                );
                break 'answer reply_error(worker, conn, head, e, idle, ClientBody::Unread, facts)
                    .await
                    .into();
            }
        };
        let req = RouteView {
            path: &path,
            path_changed: matches!(path, std::borrow::Cow::Owned(_)),
            ..sent
        };
        let host = head
            .authority(src)
            .or_else(|| head.host(src))
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or("");
        if let Some(inbound) = &conn.inbound {
            let host = normalize_host(host);
            let request = crate::authz::HttpRequest {
                host: &host,
                method: req.method,
                path: req.path,
                headers: &crate::authz::H1Headers { src, head },
            };
            let verdict = crate::authz::check(worker, &security.authz, inbound, conn.peer, Some(request));
            facts.authz.set(verdict);
            if verdict.is_some_and(|v| v.denied()) {
                let e = ProxyError::new(ErrorKind::Forbidden, Side::Downstream, "denied by AuthorizationPolicy");
                break 'answer reply_error(worker, conn, head, e, idle, ClientBody::Unread, facts)
                    .await
                    .into();
            }
        }
        let hit = conn
            .route_by
            .virtual_host(&view.snapshot, host)
            .and_then(|vh| vh.find_route_match(&req));
        let Some(hit) = hit else {
            let e = ProxyError::new(ErrorKind::NoRoute, Side::Internal, "no virtual host or route matched");
            tracing::debug!(peer = %conn.peer, host, path = req.path, "404: no route");
            break 'answer reply_error(worker, conn, head, e, idle, ClientBody::Unread, facts)
                .await
                .into();
        };
        route.set(Some(hit.route));
        // ringmesh's local rate limits, the listener's and the route's: 429 `RL`.
        if let Some(e) = super::local_rate_limit::check(
            view,
            conn.route_by.listener_limit(),
            hit.route.local_rate_limit.as_ref(),
        ) {
            break 'answer reply_error(worker, conn, head, e, idle, ClientBody::Unread, facts)
                .await
                .into();
        }
        // Istio's fault injection: the delay, then the abort, before the route's action.
        if let Some(fault) = hit.route.fault.as_deref() {
            let draw = super::fault::draw(worker, fault);
            if let Some(delay) = draw.delay {
                facts.delayed.set(true);
                if !super::fault::h1_delay(conn, delay).await {
                    let e = super::fault::client_gone();
                    worker.stats.record_local_reply(e.flag());
                    facts.local_reply(&e);
                    break 'answer Next::Close;
                }
            }
            if let Some(e) = draw.abort {
                break 'answer reply_error(worker, conn, head, e, idle, ClientBody::Unread, facts)
                    .await
                    .into();
            }
        }
        match &hit.route.action {
            RouteAction::Direct(d) => {
                let headers: Vec<(&str, &str)> = hit
                    .route
                    .response_headers
                    .set
                    .iter()
                    .chain(hit.route.response_headers.add.iter())
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let keep = finish_request_body(conn, head, idle).await && !worker.draining.get();
                worker.stats.record_status(d.status);
                facts.status.set(d.status);
                facts.details.set(Details::Route);
                facts.bytes_sent.set(d.body.len() as u64);
                conn.local_reply(d.status, &headers, d.body.as_bytes(), !keep).await;
                keep.into()
            }
            RouteAction::Redirect(r) => {
                let location = redirect_location(r, host, req.path, req.query);
                let keep = finish_request_body(conn, head, idle).await && !worker.draining.get();
                worker.stats.record_status(r.status);
                facts.status.set(r.status);
                facts.details.set(Details::Route);
                conn.local_reply(r.status, &[("location", &location)], b"", !keep).await;
                keep.into()
            }
            RouteAction::Forward(action) => {
                let mut exchange = Exchange {
                    worker,
                    facts,
                    view,
                    conn: &mut *conn,
                    head,
                    src,
                    req: &req,
                    route: hit.route,
                    matched: hit.matched,
                    action,
                    idle,
                };
                let outcome = forward::forward(&mut exchange).await;
                match outcome {
                    Outcome::Done { keep_alive } => keep_alive.into(),
                    Outcome::Failed { error, body } => {
                        reply_error(worker, conn, head, error, idle, body, facts).await.into()
                    }
                    Outcome::Aborted => Next::Close,
                    Outcome::Upgrade { upstream, buf } => Next::Upgrade { upstream, buf },
                }
            }
        }
    };
    // Made again rather than kept across the await: every byte held there is held by every
    // idle keep-alive connection's task.
    let sent = RouteView::new(&src, &head);
    let authority = head
        .authority(&src)
        .or_else(|| head.host(&src))
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or("");
    let side = RequestSide {
        head: &sent,
        authority,
        peer: conn.peer,
    };
    crate::telemetry::finish(worker, &view, &facts, route.get(), &side, conn.inbound.as_deref());
    next
}

/// Answers with the error's status; keeps the connection only if the request body (if any)
/// could be read past.
async fn reply_error(
    worker: &Rc<Worker>,
    conn: &mut Downstream,
    head: &RequestHead,
    e: ProxyError,
    idle: Duration,
    body: ClientBody,
    facts: &Facts,
) -> bool {
    worker.stats.record_local_reply(e.flag());
    worker.stats.record_status(e.status());
    facts.local_reply(&e);
    facts.bytes_sent.set(e.body().len() as u64);
    if e.status() >= 500 {
        worker.stats.log_limit.log(
            e.flag(),
            || tracing::info!(peer = %conn.peer, status = e.status(), flag = e.flag(), "local reply: {}", e.context),
        );
    }
    let keep = match e.kind {
        // After a framing error nothing on this connection can be trusted.
        ErrorKind::BadRequest { .. } => false,
        _ => match body {
            ClientBody::Consumed => head.connection().keep_alive,
            // Part of the body is gone: what follows on the connection is not a request.
            ClientBody::Cut => false,
            ClientBody::Unread => finish_request_body(conn, head, idle).await,
        },
    };
    // The body was read past first, so closing does not reset the connection under the answer.
    let keep = keep && !worker.draining.get();
    let view = worker.snapshot.get();
    let snapshot = &view.snapshot;
    // An injected gRPC abort carries its status as gRPC would, in a `grpc-status` field.
    let grpc_status = match e.kind {
        ErrorKind::FaultAbort(FaultStatus::Grpc(code)) => Some(code.to_string()),
        _ => None,
    };
    let reason = snapshot
        .telemetry
        .reason_header
        .then(|| crate::error::reason_line(&e, facts.cluster.get().map(|c| snapshot.cluster(c))));
    let mut headers: [(&str, &str); 2] = [("", ""); 2];
    let mut n = 0;
    for (name, value) in [
        (REASON_HEADER, reason.as_deref()),
        ("grpc-status", grpc_status.as_deref()),
    ] {
        if let Some(value) = value {
            headers[n] = (name, value);
            n += 1;
        }
    }
    conn.local_reply(e.status(), &headers[..n], e.body().as_bytes(), !keep)
        .await;
    keep
}

/// The header that carries a local reply's one-line reason (`spec.telemetry.reasonHeader`).
pub(crate) const REASON_HEADER: &str = "x-ringmesh-reason";

/// Builds the `Location` of a redirect from the request and the route's replacements.
pub(crate) fn redirect_location(r: &Redirect, host: &str, path: &str, query: Option<&str>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let (req_host, req_port) = split_host_port(host);
    let host = r.authority.as_deref().unwrap_or(req_host);
    let port = r.port.map(|p| p.to_string()).or_else(|| {
        if r.authority.is_none() {
            req_port.map(str::to_string)
        } else {
            None
        }
    });
    let path = r.path.as_deref().unwrap_or(path);
    let mut loc = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    loc.push_str(scheme);
    loc.push_str("://");
    loc.push_str(host);
    if let Some(p) = port {
        loc.push(':');
        loc.push_str(&p);
    }
    loc.push_str(path);
    if let Some(q) = query {
        if !path.contains('?') {
            loc.push('?');
            loc.push_str(q);
        }
    }
    loc
}

fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        if let Some(end) = host.find(']') {
            let rest = &host[end + 1..];
            return (&host[..=end], rest.strip_prefix(':'));
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<&str>, authority: Option<&str>, port: Option<u16>, path: Option<&str>) -> Redirect {
        Redirect {
            status: 301,
            scheme: scheme.map(Into::into),
            authority: authority.map(Into::into),
            port,
            path: path.map(Into::into),
        }
    }

    #[test]
    fn redirect_keeps_what_is_not_replaced() {
        assert_eq!(
            redirect_location(
                &redirect(None, None, None, Some("/new")),
                "a.test:8080",
                "/old",
                Some("x=1")
            ),
            "http://a.test:8080/new?x=1"
        );
        assert_eq!(
            redirect_location(
                &redirect(Some("https"), Some("b.test"), None, None),
                "a.test:8080",
                "/p",
                None
            ),
            "https://b.test/p"
        );
        assert_eq!(
            redirect_location(&redirect(None, None, Some(9), None), "[::1]:80", "/p", None),
            "http://[::1]:9/p"
        );
    }
}
