//! Istio's fault injection (`http[].fault`), as Envoy's fault filter does it: once a route
//! matched and before its action, a request may wait `fixedDelay` (response flag `DI`), then
//! may be answered locally with the abort's status instead of going on (flag `FI`, details
//! `fault_filter_abort`, body `fault filter abort`). Each is drawn for its own share of
//! requests from the worker's RNG; nothing is shared between workers.
//!
//! The delay is a monoio timer raced against the client: an HTTP/2 stream the client resets
//! while it waits, or an HTTP/1.1 connection the client closes, ends the request as any other
//! cancellation does (`DC`), and nothing goes upstream.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmesh_api::snapshot::{Fault, FaultStatus};

use super::body::{read_more, BodyError};
use super::downstream::Downstream;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::worker::Worker;

/// What the draw decided for one request.
pub(crate) struct Draw {
    /// Wait this long first.
    pub(crate) delay: Option<Duration>,
    /// Then answer with this instead of going on.
    pub(crate) abort: Option<ProxyError>,
}

/// Draws the delay and the abort of one request, each for its own share.
pub(crate) fn draw(worker: &Worker, fault: &Fault) -> Draw {
    let delay = fault
        .delay
        .and_then(|(d, share)| share.hit(worker.rng.next_u64()).then_some(d));
    let abort = fault
        .abort
        .and_then(|(status, share)| share.hit(worker.rng.next_u64()).then(|| abort(status)));
    Draw { delay, abort }
}

/// The local reply of an injected abort.
pub(crate) fn abort(status: FaultStatus) -> ProxyError {
    ProxyError::new(ErrorKind::FaultAbort(status), Side::Internal, "fault injected: abort")
}

/// The client went away while its request was delayed.
pub(crate) fn client_gone() -> ProxyError {
    ProxyError::new(
        ErrorKind::DownstreamClosed,
        Side::Downstream,
        "client went away during an injected delay",
    )
}

/// Waits `delay` for an HTTP/1.1 request; `false` when the client closed the connection
/// first. Bytes the client sends meanwhile (its body, a pipelined request) stay in the
/// connection's buffer for what follows; once some arrived the rest of the delay is waited
/// out without watching.
pub(crate) async fn h1_delay(conn: &mut Downstream, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    match read_more(&mut conn.stream, &mut conn.buf, delay).await {
        Err(BodyError::Idle) => true,
        Ok(0) | Err(_) => false,
        Ok(_) => {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                monoio::time::sleep(left).await;
            }
            true
        }
    }
}

/// Waits `delay` for an HTTP/2 stream; `false` when the client reset the stream (or the
/// connection failed) first.
pub(crate) async fn h2_delay(delay: Duration, respond: &mut h2::server::SendResponse<Bytes>) -> bool {
    let mut sleep = std::pin::pin!(monoio::time::sleep(delay));
    std::future::poll_fn(|cx| {
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(false);
        }
        sleep.as_mut().poll(cx).map(|()| true)
    })
    .await
}
