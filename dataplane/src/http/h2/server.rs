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
//! | `SETTINGS_MAX_HEADER_LIST_SIZE` | `limits.maxRequestHeadBytes` | as for HTTP/1.1 heads; a CONTINUATION flood past it ends the connection |
//! | pending resets (rapid reset, CVE-2023-44487) | [`MAX_PENDING_RESETS`] (20) | streams opened and reset before the proxy served them; more ends the connection with `GOAWAY(ENHANCE_YOUR_CALM)` |
//! | resets the proxy had to send | [`MAX_LOCAL_ERROR_RESETS`] (1024) | a client making the proxy refuse stream after stream gets `GOAWAY` |
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
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{select, Either};
use monoio::net::TcpStream;

use super::client::{CONNECTION_WINDOW, STREAM_WINDOW};
use super::{handoff, io};
use crate::worker::Worker;

/// Streams one client connection may have open at once.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Streams a client may open and reset before the proxy accepted them (h2's rapid-reset guard).
pub(crate) const MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy may reset because of the client's errors before it ends the connection.
pub(crate) const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Largest header list accepted from an upstream (a client's is `limits.maxRequestHeadBytes`).
pub(crate) const MAX_HEADER_LIST: u32 = 64 * 1024;
/// A connection without streams is pinged this often.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A ping not answered within this closes the connection.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sleep of a connection's task between looks at draining and idleness.
const TICK: Duration = Duration::from_secs(5);

/// Serves one HTTP/2 connection whose first bytes (`read`, the preface and maybe more) were
/// already read by the connection loop.
pub(crate) async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, read: Bytes) {
    let limits = worker.snapshot.get().snapshot.proxy.limits.clone();
    let io = io::Rewind::new(read, io::compat(stream));
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(limits.max_request_head_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
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
    let mut quiet_since = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let mut draining = false;
    loop {
        if worker.draining.get() && !draining {
            draining = true;
            conn.graceful_shutdown();
        }
        // Wake for the next deadline (idle close, ping, ping answer), and at least every
        // `TICK` to notice a drain.
        let tick = match ping_sent {
            Some(at) => PING_TIMEOUT.saturating_sub(at.elapsed()),
            None => PING_INTERVAL
                .min(limits.downstream_idle_timeout)
                .saturating_sub(quiet_since.elapsed()),
        }
        .clamp(Duration::from_millis(10), TICK);
        let accepted = {
            let accept = std::pin::pin!(conn.accept());
            let timer = std::pin::pin!(monoio::time::sleep(tick));
            match select(accept, timer).await {
                Either::Left((next, _)) => Some(next),
                Either::Right(((), _)) => None,
            }
        };
        match accepted {
            Some(Some(Ok((req, respond)))) => {
                quiet_since = Instant::now();
                ping_sent = None;
                handoff::dispatch(&worker, handoff::Handed { req, respond, peer });
            }
            Some(Some(Err(e))) => {
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
