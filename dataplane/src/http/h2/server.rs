//! One HTTP/2 client connection (h2c with prior knowledge): its settings, its limits, and the
//! task that reads its frames and hands each new stream to a worker.
//!
//! The connection lives on the worker that accepted it; `h2` decodes and encodes its frames
//! there. Each stream is a call served by its own task — on this worker, or on a less busy one
//! (`handoff`), so that one client's one connection can use every core. `h2`'s stream handles
//! are `Send`: the other worker reads and writes the stream through them, and the connection
//! task here moves the frames.
//!
//! # Limits
//!
//! | setting | value | why |
//! |---|---|---|
//! | `SETTINGS_MAX_CONCURRENT_STREAMS` | [`MAX_CONCURRENT_STREAMS`] (1024) | a client that opens more gets `REFUSED_STREAM` |
//! | `SETTINGS_INITIAL_WINDOW_SIZE` | [`STREAM_WINDOW`] (256 KiB) | the most a stream can have in flight before the proxy forwarded it |
//! | connection window | [`CONNECTION_WINDOW`] (1 MiB) | the most a connection can have in flight, whatever its streams |
//! | small DATA frames not yet read | [`SMALL_FRAME_BUDGET`] (`h2`'s units: 256 bytes less each frame's payload) | a stream window of empty gRPC messages fits (a client streaming small messages to a slow upstream); a client piling up more tiny frames gets `GOAWAY(ENHANCE_YOUR_CALM)` |
//! | `SETTINGS_MAX_HEADER_LIST_SIZE` | `limits.maxRequestHeadBytes` | as for HTTP/1.1 heads; a CONTINUATION flood past it ends the connection |
//! | pending resets (rapid reset, CVE-2023-44487) | [`MAX_PENDING_RESETS`] (20) | streams opened and reset before the proxy accepted them; more ends the connection with `GOAWAY(ENHANCE_YOUR_CALM)` |
//! | calls being served (rapid reset) | [`MAX_LIVE_CALLS`] (2048) | streams the client reset still count until the proxy has stopped serving them; more ends the connection with `GOAWAY(ENHANCE_YOUR_CALM)` |
//! | premature resets (rapid reset) | half of the calls, after 500 | a client that cancels most of what it asks for (Envoy's check) gets `GOAWAY(ENHANCE_YOUR_CALM)` |
//! | resets the proxy had to send | [`MAX_LOCAL_ERROR_RESETS`] (1024) | a client making the proxy refuse stream after stream gets `GOAWAY` |
//! | SETTINGS, PING and empty DATA frames (floods, CVE-2019-9512/-9515/-9518) | [`io::FLOOD_BUDGET`] (1000) per second | more ends the connection with `GOAWAY(ENHANCE_YOUR_CALM)`; no more of its bytes are read |
//! | zero-window stall | a response without window for `limits.idleTimeout` | that stream is reset, and at the next tick (≤ 5 s) the connection ends with `GOAWAY(ENHANCE_YOUR_CALM)` |
//! | keep-alive `PING` | every [`PING_INTERVAL`] (30 s) without a stream; no answer in [`PING_TIMEOUT`] (10 s) closes | a peer that vanished without a FIN |
//! | idle connection | `limits.idleTimeout` without a stream | closed with `GOAWAY(NO_ERROR)` |
//!
//! Malformed frames and headers are refused by `h2` as RFC 9113 asks: upper-case field names,
//! connection-specific fields, a missing or empty `:path`, pseudo-fields after regular ones, and
//! DATA that does not add up to `content-length` reset the stream with `PROTOCOL_ERROR`;
//! frame-level violations end the connection with `GOAWAY`.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{select, Either};

use super::client::{CONNECTION_WINDOW, STREAM_WINDOW};
use super::{handoff, io};
use crate::tls::inbound::ServerTls;
use crate::tls::io::MaybeTls;
use crate::tls::InboundConn;
use crate::worker::Worker;

/// Streams one client connection may have open at once.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Streams a client may open and reset before the proxy accepted them (h2's rapid-reset guard).
pub(crate) const MAX_PENDING_RESETS: usize = 20;
/// Calls one connection may have being served at once, counting streams the client already
/// reset: twice the stream limit, so a client cancelling calls as it goes stays clear of it.
pub(crate) const MAX_LIVE_CALLS: usize = 2 * MAX_CONCURRENT_STREAMS as usize;
/// Streams the proxy may reset because of the client's errors before it ends the connection.
pub(crate) const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// `h2`'s budget for a client's small DATA frames received and not yet read. Its default, half
/// the connection window, is spent by one read of a few thousand frames, and a gRPC client
/// sends a frame per message: one streaming small messages to an upstream slower than it would
/// lose its connection. This covers a stream window of empty gRPC messages (5-byte frames);
/// beyond it the frames' bookkeeping, not their bytes, would be what a client makes the proxy
/// hold, and the connection ends.
pub(crate) const SMALL_FRAME_BUDGET: usize = STREAM_WINDOW as usize / 5 * 256;
/// Largest header list accepted from an upstream (a client's is `limits.maxRequestHeadBytes`).
pub(crate) const MAX_HEADER_LIST: u32 = 64 * 1024;
/// A connection without streams is pinged this often.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A ping not answered within this closes the connection.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an abusive client has to read its `GOAWAY` before the socket closes.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// Longest sleep of a connection's task between looks at draining and idleness.
const TICK: Duration = Duration::from_secs(5);
/// The same while draining: how soon a connection whose last stream ended lets the drain go.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Serves one HTTP/2 connection whose first bytes (`read`, the preface and maybe more) were
/// already read by the connection loop. `stream` is the socket (`io::compat`) or TLS over it;
/// `inbound` is set on inbound listeners and goes with every stream.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    stream: MaybeTls<ServerTls>,
    peer: SocketAddr,
    read: Bytes,
    inbound: Option<Arc<InboundConn>>,
    route_by: crate::capture::RouteBy,
) {
    let limits = worker.snapshot.get().snapshot.proxy.limits.clone();
    let flood = Rc::new(io::Flood::default());
    let io = io::Inbound::new(read, stream, flood.clone());
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(limits.max_request_head_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .data_frame_budget(SMALL_FRAME_BUDGET)
        .handshake::<_, Bytes>(io);
    let mut conn = match monoio::time::timeout(limits.request_header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP/2 handshake timed out");
            return;
        }
    };
    let mut ping = conn.ping_pong();
    let calls = Arc::new(handoff::ConnCalls::default());
    let mut timer = std::pin::pin!(monoio::time::sleep(TICK.min(limits.downstream_idle_timeout)));
    let mut quiet_since = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let mut draining = false;
    // The drain waits for this connection while it has streams (they may be served on other
    // cores, and only this task moves their frames), and wakes it at once to send its GOAWAY.
    // Once draining, a connection without streams lets go and is closed with the idle ones.
    let mut hold = Some(crate::drain::DrainHold::new(&worker));
    let drain = worker.drain.watch();
    loop {
        if worker.draining.get() && !draining {
            // GOAWAY with the highest stream id and a PING, then, once the PING is answered,
            // GOAWAY with the last stream the client opened: every stream sent before the
            // client saw the first one is served; the connection closes after the last.
            draining = true;
            conn.graceful_shutdown();
            timer.as_mut().reset((Instant::now() + DRAIN_TICK).into());
        }
        let accepted = {
            let accept = std::pin::pin!(conn.accept());
            let flooded = poll_fn(|cx| flood.poll_flagged(cx));
            let drain_began = std::pin::pin!(poll_fn(|cx| if draining {
                Poll::Pending
            } else {
                drain.poll_started(cx)
            }));
            let timer_or_drain = select(timer.as_mut(), drain_began);
            match select(select(accept, timer_or_drain), std::pin::pin!(flooded)).await {
                Either::Left((Either::Left((next, _)), _)) => Some(Some(next)),
                Either::Left((Either::Right((Either::Right(((), _)), _)), _)) => Some(None),
                Either::Left((Either::Right((Either::Left(((), _)), _)), _)) => {
                    // Wake again for the next deadline (idle close, ping, ping answer), and at
                    // least every `TICK` to notice a drain. One timer for the connection's
                    // life: accepting a stream arms none.
                    let tick = match ping_sent {
                        Some(at) => PING_TIMEOUT.saturating_sub(at.elapsed()),
                        None => PING_INTERVAL
                            .min(limits.downstream_idle_timeout)
                            .saturating_sub(quiet_since.elapsed()),
                    }
                    .clamp(Duration::from_millis(10), if draining { DRAIN_TICK } else { TICK });
                    timer.as_mut().reset((Instant::now() + tick).into());
                    Some(None)
                }
                Either::Right(((), _)) => None,
            }
        };
        let Some(accepted) = accepted else {
            worker.stats.log_limit.log(
                "h2-flood",
                || tracing::info!(%peer, "HTTP/2 client floods control frames; GOAWAY"),
            );
            crate::telemetry::stats::inc(&worker.stats.h2_goaway_sent);
            calm_down(&mut conn).await;
            return;
        };
        match accepted {
            Some(Some(Ok((req, respond)))) => {
                if hold.is_none() {
                    hold = Some(crate::drain::DrainHold::new(&worker));
                }
                quiet_since = Instant::now();
                ping_sent = None;
                if calls.abusive(MAX_LIVE_CALLS) {
                    // The client resets streams faster than they can be served: the
                    // concurrency limit no longer bounds its cost (CVE-2023-44487).
                    worker.stats.log_limit.log(
                        "h2-rapid-reset",
                        || tracing::info!(%peer, "HTTP/2 client resets streams faster than they are served; GOAWAY"),
                    );
                    crate::telemetry::stats::inc(&worker.stats.h2_goaway_sent);
                    drop((req, respond));
                    calm_down(&mut conn).await;
                    return;
                }
                let live = handoff::LiveCall::new(&calls);
                handoff::dispatch(
                    &worker,
                    handoff::Handed {
                        req,
                        respond,
                        peer,
                        inbound: inbound.clone(),
                        route_by,
                        live,
                    },
                );
            }
            Some(Some(Err(e))) => {
                if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                    crate::telemetry::stats::inc(&worker.stats.h2_goaway_sent);
                }
                if e.is_go_away() || e.is_io() {
                    tracing::debug!(%peer, "HTTP/2 connection ended: {e}");
                } else {
                    worker.stats.log_limit.log(
                        "h2-connection-error",
                        || tracing::info!(%peer, "HTTP/2 connection closed: {e}"),
                    );
                }
                return;
            }
            Some(None) => return,
            None => {
                if draining && !conn.has_streams() {
                    hold = None;
                }
                if calls.stalled() {
                    worker.stats.log_limit.log("h2-zero-window", || {
                        tracing::info!(%peer, "HTTP/2 client left a response without window for the idle timeout; GOAWAY")
                    });
                    crate::telemetry::stats::inc(&worker.stats.h2_goaway_sent);
                    calm_down(&mut conn).await;
                    return;
                }
                if conn.has_streams() {
                    quiet_since = Instant::now();
                    continue;
                }
                if quiet_since.elapsed() >= limits.downstream_idle_timeout {
                    conn.graceful_shutdown();
                    quiet_since = Instant::now();
                    continue;
                }
                // Keep-alive: a peer that vanished without closing is found by an unanswered PING.
                let Some(p) = ping.as_mut() else { continue };
                match ping_sent {
                    Some(at) => {
                        let answered = poll_fn(|cx| Poll::Ready(p.poll_pong(cx))).await;
                        if matches!(answered, Poll::Ready(Ok(_))) {
                            ping_sent = None;
                            quiet_since = Instant::now();
                        } else if at.elapsed() >= PING_TIMEOUT {
                            tracing::debug!(%peer, "HTTP/2 keep-alive ping unanswered; closing");
                            conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                            return;
                        }
                    }
                    None if quiet_since.elapsed() >= PING_INTERVAL && p.send_ping(h2::Ping::opaque()).is_ok() => {
                        ping_sent = Some(Instant::now());
                    }
                    None => {}
                }
            }
        }
    }
}

/// Ends an abusive connection: `GOAWAY(ENHANCE_YOUR_CALM)`, a moment for it to leave, then
/// the socket closes (a client that does not read gets no longer than that).
async fn calm_down<T, B>(conn: &mut h2::server::Connection<T, B>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: bytes::Buf,
{
    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
    let _ = monoio::time::timeout(GOAWAY_GRACE, async { while let Some(Ok(_)) = conn.accept().await {} }).await;
}
