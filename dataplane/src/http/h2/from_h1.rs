//! One try of an HTTP/1.1 client's request over an HTTP/2 upstream: an upstream that speaks
//! only HTTP/2 (`protocol: HTTP2`/`GRPC`, `h2UpgradePolicy: UPGRADE`), or another ringmesh
//! proxy, to which requests travel multiplexed over a few connections per core.
//!
//! The request head is translated once per request (`headers::Outgoing::from_h1`) and sent on a
//! stream of a pooled connection; a held body goes with it, a streamed one is decoded from its
//! HTTP/1.1 framing into DATA frames as the upstream grants window. The response head becomes
//! an HTTP/1.1 head (`content-length` when the upstream gave one, else chunked, carrying any
//! trailers); a small first DATA frame that has already arrived goes out in the same write as
//! the head. An answer that comes before the whole request body stops the body (the client
//! connection then closes after the response, as on HTTP/1.1).

use std::future::poll_fn;
use std::task::Poll;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{select, Either};
use h2::SendStream;

use super::bodies::{self, Broken, H1Piece, H1Source};
use super::client::{self, OpenFailed};
use super::headers::{encode_h2_response_as_h1, h1_framing_of, Outgoing, Rewrite};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::forward::{record_upstream_status, Exchange, Outcome, Plan, Try, UPSTREAM_RESET};
use crate::http::grpc;
use crate::http::h1::{write_chunk_header, BodyFraming, ConnectionHeader, CRLF, LAST_CHUNK};
use crate::http::request_body::RequestBody;
use crate::http::retry::{Decision, Retries};

/// Largest first DATA frame copied into the same write as the response head.
const COALESCE_MAX: usize = 16 * 1024;

/// The request as it goes to an HTTP/2 upstream, built on the first try that needs it.
fn outgoing<'p>(ex: &Exchange<'_>, plan: &'p Plan<'_>) -> &'p Outgoing {
    plan.h2_head.get_or_init(|| {
        let trace = ex.facts.trace.get();
        let trace = trace.as_ref().map(crate::telemetry::trace::Outgoing::of);
        let trace = trace.as_ref().map(crate::telemetry::trace::Outgoing::fields);
        Outgoing::from_h1(
            ex.head,
            ex.src,
            &Rewrite {
                path: plan.rewritten.as_deref(),
                authority: ex.action.host_rewrite.as_deref(),
                ops: &ex.route.request_headers,
                client_ip: ex.conn.peer.ip(),
                request_id: &plan.request_id,
                xfcc: crate::tls::xfcc(ex.conn.inbound.as_deref()),
                trace: trace.as_ref().map(|f| f.as_slice()),
            },
        )
    })
}

fn timed_out(ex: &Exchange<'_>, plan: &Plan<'_>) -> ProxyError {
    let overall = plan.deadline.is_some_and(|d| Instant::now() >= d);
    let kind = if ex.action.retry.per_try_timeout.is_some() && !overall {
        ErrorKind::PerTryTimeout
    } else {
        ErrorKind::UpstreamTimeout
    };
    ProxyError::new(kind, Side::Upstream, "upstream did not answer in time")
}

/// Sends the request on an HTTP/2 stream and relays the response.
pub(crate) async fn one_try(
    ex: &mut Exchange<'_>,
    plan: &Plan<'_>,
    body: &mut RequestBody,
    endpoint: usize,
    per_try_deadline: Option<Instant>,
    retries: &mut Retries<'_>,
) -> Try {
    let worker = ex.worker;
    let idle = ex.idle;
    let wait = || match per_try_deadline {
        Some(d) => d.saturating_duration_since(Instant::now()),
        None => idle,
    };
    let addr = plan.cluster.endpoints[endpoint].address;
    ex.facts.sending_upstream();
    let opened = client::open(
        worker,
        plan.cluster,
        plan.state,
        (endpoint, addr),
        crate::tls::outbound::Target::of(plan.cluster, endpoint),
        wait(),
        outgoing(ex, plan).to_h2(),
        body.is_empty(),
    )
    .await;
    let (lease, response, mut up) = match opened {
        Ok(x) => x,
        Err(OpenFailed::Failed(e)) => return Try::Failed(e),
        Err(OpenFailed::TimedOut) => return Try::Failed(timed_out(ex, plan)),
    };
    // The body: held (sent whole on every try) or streamed from the client as it arrives.
    let streams = body.streams();
    if let Some(held) = body.held() {
        if up.send_data(held.clone(), true).is_err() {
            return Try::Failed(UPSTREAM_RESET);
        }
    } else if streams {
        body.begin_streaming();
    }
    let head = {
        let conn = &mut *ex.conn;
        let framing = body.framing();
        let pump = std::pin::pin!(async {
            if streams {
                pump_client_body(framing, &mut conn.stream, &mut conn.buf, &mut up, idle).await
            } else {
                Ok(())
            }
        });
        let head = std::pin::pin!(monoio::time::timeout(wait(), response));
        match select(pump, head).await {
            Either::Left((Ok(()), head)) => {
                body.streamed();
                head.await
            }
            Either::Left((Err(Broken::Source), _)) => {
                return Try::ClientFailed(ProxyError::new(
                    ErrorKind::DownstreamClosed,
                    Side::Downstream,
                    "client went away mid-body",
                ))
            }
            // The upstream stopped taking the body: its answer (or reset) says why.
            Either::Left((Err(Broken::Sink | Broken::Stalled), head)) => head.await,
            // An early answer: the rest of the body stays unread (the connection closes after).
            Either::Right((head, _)) => head,
        }
    };
    let resp = match head {
        Err(_) => return Try::Failed(timed_out(ex, plan)),
        Ok(Err(e)) => return Try::Failed(lease.head_failed(&e)),
        Ok(Ok(resp)) => resp,
    };
    ex.facts.mark(crate::telemetry::request::Mark::UpstreamHead);
    let status = resp.status().as_u16();
    let end = resp.body().is_end_stream();
    let now = Instant::now();
    let mut decision = retries.after_status(status, body.replayable(), now);
    if decision == Decision::Stop && end {
        if let Some(code) = grpc::status_of(resp.headers()) {
            decision = retries.after_grpc_status(code, body.replayable(), now);
        }
    }
    if let Decision::AfterBackoff(n) = decision {
        if retries.admit(worker, &worker.breakers(plan.cluster, plan.state)) {
            record_upstream_status(plan.cluster, plan.state, endpoint, status);
            return Try::Retry(n);
        }
    }
    record_upstream_status(plan.cluster, plan.state, endpoint, status);
    worker.stats.record_status(status);
    let facts = ex.facts;
    facts.status.set(status);
    facts.details.set(crate::telemetry::request::Details::ViaUpstream);
    if let Some(held) = body.held() {
        facts.bytes_received.set(held.len() as u64);
    }
    let (parts, mut recv) = resp.into_parts();
    let head_request = ex.head.method() == crate::http::h1::Method::Head;
    let framing = h1_framing_of(&parts, end, head_request, ex.head.version_minor());
    let client_keep = ex.head.connection().keep_alive
        && body.delivered()
        && !worker.draining.get()
        && framing != BodyFraming::CloseDelimited;
    let connection = if client_keep && ex.head.version_minor() == 0 {
        ConnectionHeader::KeepAlive
    } else if client_keep {
        ConnectionHeader::None
    } else {
        ConnectionHeader::Close
    };
    let conn = &mut *ex.conn;
    conn.out.clear();
    encode_h2_response_as_h1(&parts, framing, connection, &ex.route.response_headers, &mut conn.out);
    // A first DATA frame that is already here goes out with the head.
    let mut ended = end || framing == BodyFraming::None;
    if !ended {
        if let Poll::Ready(Some(Ok(first))) = poll_fn(|cx| Poll::Ready(recv.poll_data(cx))).await {
            let n = first.len();
            if n <= COALESCE_MAX {
                let last = recv.is_end_stream();
                facts.bytes_sent.set(n as u64);
                put_payload(&mut conn.out, &first, framing == BodyFraming::Chunked);
                if last {
                    if framing == BodyFraming::Chunked {
                        conn.out.put_slice(LAST_CHUNK);
                    }
                    ended = true;
                }
                let _ = recv.flow_control().release_capacity(n);
            } else {
                facts.bytes_sent.set(n as u64);
                facts.mark(crate::telemetry::request::Mark::ClientHead);
                let out = std::mem::take(&mut conn.out);
                let (r, out) = conn.stream.write_all_direct(out).await;
                conn.out = out;
                conn.out.clear();
                if r.is_err() {
                    return Try::Relayed(Outcome::Aborted);
                }
                put_payload(&mut conn.out, &first, framing == BodyFraming::Chunked);
                let _ = recv.flow_control().release_capacity(n);
            }
        }
    }
    facts.mark_first(crate::telemetry::request::Mark::ClientHead);
    let out = std::mem::take(&mut conn.out);
    let (r, out) = conn.stream.write_all_direct(out).await;
    conn.out = out;
    if r.is_err() {
        return Try::Relayed(Outcome::Aborted);
    }
    if !ended {
        match bodies::h2_to_h1(&mut recv, &mut conn.stream, framing, idle, &facts.bytes_sent).await {
            Ok(()) => {}
            Err(e) => {
                if e == Broken::Source {
                    worker.stats.log_limit.log("response-body-aborted", || {
                        tracing::info!(cluster = %plan.cluster.name, upstream = %addr, "response body aborted: upstream reset the stream")
                    });
                }
                return Try::Relayed(Outcome::Aborted);
            }
        }
    }
    Try::Relayed(Outcome::Done {
        keep_alive: client_keep && body.delivered(),
    })
}

/// Appends one piece of payload, framed as a chunk when `chunked`.
fn put_payload(out: &mut BytesMut, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        write_chunk_header(data.len() as u64, out);
        out.put_slice(data);
        out.put_slice(CRLF);
    } else {
        out.put_slice(data);
    }
}

/// Decodes the client's HTTP/1.1 body and sends its payload (and trailers) on the upstream
/// stream as the stream's window allows.
async fn pump_client_body(
    framing: BodyFraming,
    src: &mut crate::http::downstream::ClientIo,
    buf: &mut BytesMut,
    up: &mut SendStream<Bytes>,
    idle: std::time::Duration,
) -> Result<(), Broken> {
    let mut source = H1Source::new(framing);
    loop {
        match source.next(src, buf, idle).await.map_err(|_| Broken::Source)? {
            H1Piece::Data(bytes) => {
                let last = source.ended_without_trailers();
                bodies::send_data(up, bytes, last, idle).await?;
                if last {
                    return Ok(());
                }
            }
            H1Piece::End(Some(t)) => return up.send_trailers(t).map_err(|_| Broken::Sink),
            H1Piece::End(None) => return up.send_data(Bytes::new(), true).map_err(|_| Broken::Sink),
        }
    }
}
