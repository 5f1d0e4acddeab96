//! Spreading the streams of one HTTP/2 connection over the workers.
//!
//! Thread-per-core pins a connection to the worker that accepted it. For HTTP/1.1 that is
//! fine: many clients make many connections, and the kernel spreads them. A gRPC client keeps
//! one connection per channel, so without more, one core would serve all of it while the
//! others idle. Here the connection's frames stay on its worker, but each new stream may be
//! served by another: the stream's `h2` handles (`Request<RecvStream>`, `SendResponse`) are
//! `Send`, so they travel through the other worker's inbox, and that worker routes the call,
//! talks to the upstream over *its own* pool, and reads and writes the stream's data through
//! the handles; the owner's connection task moves the frames.
//!
//! Which worker: each worker counts the requests it is serving in a slot on a cache line of its
//! own (a relaxed add when one starts or ends; other cores only read it, except that a worker
//! handing a stream over adds it to the receiver's slot at once), and a new stream goes to the
//! least busy other worker when that one serves at least [`MARGIN`] fewer requests than this
//! one. Under even load (many connections) nothing moves,
//! so a stream pays no cross-core wake-up; one busy connection is split until the workers'
//! loads differ by less than the margin. The owner also does all of the connection's frame
//! work, so the balance settles with a little more of the streams elsewhere.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;

use super::call;
use crate::worker::Worker;

/// How many more requests this worker must be serving than another before a new stream goes
/// there. Two, so that a stream moves only when it would otherwise queue behind others.
pub(crate) const MARGIN: u32 = 2;

/// A stream on its way to the worker that will serve it.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) req: Request<RecvStream>,
    pub(crate) respond: SendResponse<Bytes>,
    pub(crate) peer: SocketAddr,
    /// On an inbound listener: the local port and the peer's mTLS identity.
    pub(crate) inbound: Option<Arc<crate::tls::InboundConn>>,
    /// How the call picks its virtual host.
    pub(crate) route_by: crate::capture::RouteBy,
    /// Counts the call against its connection until the call ends.
    pub(crate) live: LiveCall,
}

/// What a connection knows of its calls, wherever they are served: how many are still being
/// served, how many there were, and how many the client reset before their response was
/// complete. A client that resets streams faster than the proxy can finish them shows either
/// as more live calls than it may have streams open, or as most of its calls reset (Envoy's
/// premature-reset check); both are rapid reset (CVE-2023-44487).
#[derive(Debug, Default)]
pub(crate) struct ConnCalls {
    live: AtomicUsize,
    total: AtomicUsize,
    premature: AtomicUsize,
    /// A call's response found the client's window shut for the idle timeout.
    stalled: std::sync::atomic::AtomicBool,
}

/// Calls seen on a connection before the premature-reset ratio is judged (Envoy's default).
pub(crate) const PREMATURE_MIN_CALLS: usize = 500;

impl ConnCalls {
    /// Whether the client left a response without window for the idle timeout (a zero-window
    /// stall: the connection is ended rather than kept for a client that does not read).
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Whether the client abuses resets: more calls live than `max_live`, or, after
    /// [`PREMATURE_MIN_CALLS`], at least half of them reset before their response ended.
    pub(crate) fn abusive(&self, max_live: usize) -> bool {
        let total = self.total.load(Ordering::Relaxed);
        self.live.load(Ordering::Relaxed) >= max_live
            || (total >= PREMATURE_MIN_CALLS && self.premature.load(Ordering::Relaxed) * 2 >= total)
    }
}

/// One call still being served, counted on its connection until it ends.
#[derive(Debug)]
pub(crate) struct LiveCall(Arc<ConnCalls>);

impl LiveCall {
    pub(crate) fn new(calls: &Arc<ConnCalls>) -> Self {
        calls.live.fetch_add(1, Ordering::Relaxed);
        calls.total.fetch_add(1, Ordering::Relaxed);
        LiveCall(calls.clone())
    }

    /// The client reset the call before its response was complete.
    pub(crate) fn reset_by_client(&self) {
        self.0.premature.fetch_add(1, Ordering::Relaxed);
    }

    /// The client granted the call's response no window for the idle timeout.
    pub(crate) fn stalled_by_client(&self) {
        self.0.stalled.store(true, Ordering::Relaxed);
    }
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's requests in flight, on a cache line of its own (only its worker writes it).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Load(AtomicU32);

/// Added to a draining worker's load: no stream is handed to it any more (its own count stays
/// in the bits below).
const RETIRED: u32 = 1 << 30;

/// Every worker's inbox and load; each worker holds a copy.
#[derive(Debug, Clone)]
pub struct Peers {
    me: usize,
    inboxes: Arc<[flume::Sender<Handed>]>,
    loads: Arc<[Load]>,
}

/// A worker's side of the hand-off: its inbox.
#[derive(Debug)]
pub struct Inbox(flume::Receiver<Handed>);

/// The hand-off channels of `workers` workers: one [`Peers`] and [`Inbox`] per worker.
pub fn channels(workers: usize) -> Vec<(Peers, Inbox)> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| flume::unbounded()).unzip();
    let inboxes: Arc<[flume::Sender<Handed>]> = senders.into();
    let loads: Arc<[Load]> = (0..workers).map(|_| Load::default()).collect();
    receivers
        .into_iter()
        .enumerate()
        .map(|(me, rx)| {
            (
                Peers {
                    me,
                    inboxes: inboxes.clone(),
                    loads: loads.clone(),
                },
                Inbox(rx),
            )
        })
        .collect()
}

impl Peers {
    /// A single worker, with nobody to hand to (tests, `workers: 1`).
    pub fn alone() -> Self {
        channels(1).remove(0).0
    }

    /// Workers in the proxy.
    pub(crate) fn workers(&self) -> usize {
        self.loads.len()
    }

    /// A request started on this worker (an HTTP/2 stream counts from its dispatch instead).
    pub(crate) fn started(&self) {
        // With one worker nobody reads the load: no atomic on the request path.
        if self.loads.len() > 1 {
            self.loads[self.me].0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request ended on this worker.
    pub(crate) fn ended(&self) {
        if self.loads.len() > 1 {
            self.loads[self.me].0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// This worker's requests in flight, with the streams handed to it and not yet started
    /// (and [`RETIRED`] once it drains).
    fn mine(&self) -> u32 {
        self.loads[self.me].0.load(Ordering::Relaxed)
    }

    /// Takes this worker out of the hand-off as its drain begins: no stream is handed to it
    /// from now on, so it can tell when the last one handed to it is done and exit.
    pub(crate) fn retire(&self) {
        if self.loads.len() > 1 {
            self.loads[self.me].0.fetch_add(RETIRED, Ordering::Relaxed);
        }
    }

    /// Requests in flight on this worker, streams handed to it and not yet started included
    /// (0 with one worker, where nothing keeps count: `downstream_rq_active` says it there).
    pub(crate) fn in_flight(&self) -> u32 {
        if self.loads.len() > 1 {
            self.mine() & (RETIRED - 1)
        } else {
            0
        }
    }

    /// The worker a new stream should go to, when not this one.
    fn target(&self) -> Option<usize> {
        let mine = self.mine();
        if self.loads.len() < 2 || !(MARGIN..RETIRED).contains(&mine) {
            return None;
        }
        let (id, load) = self
            .loads
            .iter()
            .enumerate()
            .filter(|(id, _)| *id != self.me)
            .map(|(id, l)| (id, l.0.load(Ordering::Relaxed)))
            .filter(|&(_, l)| l < RETIRED)
            .min_by_key(|&(_, l)| l)?;
        (load + MARGIN <= mine).then_some(id)
    }
}

/// Serves a new stream here, or hands it to a less busy worker. A stream counts on the load of
/// the worker that will serve it from this moment (not from when its task first runs), so a
/// burst of streams read at once is split evenly.
pub(crate) fn dispatch(worker: &Rc<Worker>, handed: Handed) {
    let peers = &worker.peers;
    let handed = match peers.target() {
        Some(id) => {
            peers.loads[id].0.fetch_add(1, Ordering::Relaxed);
            match peers.inboxes[id].send(handed) {
                Ok(()) => {
                    crate::telemetry::stats::inc(&worker.stats.h2_streams_handed_off);
                    return;
                }
                // That worker is gone (shutting down): serve here.
                Err(flume::SendError(h)) => {
                    peers.loads[id].0.fetch_sub(1, Ordering::Relaxed);
                    h
                }
            }
        }
        None => handed,
    };
    peers.started();
    monoio::spawn(call::serve(worker.clone(), handed));
}

/// Serves the streams other workers hand to this one, until the proxy stops.
pub(crate) async fn receive(worker: Rc<Worker>, inbox: Inbox) {
    while let Ok(handed) = inbox.0.recv_async().await {
        monoio::spawn(call::serve(worker.clone(), handed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_moves_only_to_a_clearly_less_busy_worker() {
        let set = channels(3);
        let (me, _) = &set[0];
        let load = |p: &Peers, n: u32| (0..n).for_each(|_| p.started());
        load(&set[1].0, 5);
        load(&set[2].0, 3);
        load(me, 1);
        assert_eq!(me.target(), None, "an idle worker keeps its streams");
        load(me, 3);
        assert_eq!(me.target(), None, "3 + margin > 4");
        load(me, 1);
        assert_eq!(me.target(), Some(2), "the least busy one");
        load(&set[2].0, 6);
        me.ended();
        me.ended();
        load(me, 4);
        assert_eq!(me.target(), Some(1), "7 against 5 and 9");
        let alone = Peers::alone();
        load(&alone, 100);
        assert_eq!(alone.target(), None);
    }

    /// A draining worker gets no stream handed to it and hands none away, and still counts
    /// the ones it was handed before.
    #[test]
    fn a_retired_worker_is_never_a_target_and_counts_what_it_holds() {
        let set = channels(3);
        let (me, _) = &set[0];
        let load = |p: &Peers, n: u32| (0..n).for_each(|_| p.started());
        load(me, 9);
        load(&set[2].0, 2);
        assert_eq!(me.target(), Some(1));
        set[1].0.retire();
        assert_eq!(me.target(), Some(2), "the idle but draining worker is passed over");
        assert_eq!(set[1].0.in_flight(), 0);
        load(&set[1].0, 1);
        assert_eq!(set[1].0.in_flight(), 1, "its own count survives the mark");
        set[1].0.ended();
        assert_eq!(set[1].0.in_flight(), 0);
        me.retire();
        assert_eq!(me.target(), None, "a draining worker serves its streams itself");
        assert_eq!(me.in_flight(), 9);
    }

    #[test]
    fn resets_count_against_their_connection() {
        let calls = Arc::new(ConnCalls::default());
        let held: Vec<LiveCall> = (0..10).map(|_| LiveCall::new(&calls)).collect();
        assert!(calls.abusive(10), "ten live calls reach a limit of ten");
        drop(held);
        assert!(!calls.abusive(10));
        for i in 0..PREMATURE_MIN_CALLS {
            let c = LiveCall::new(&calls);
            if i % 2 == 0 || i < 20 {
                c.reset_by_client();
            }
        }
        assert!(calls.abusive(10), "260 of 510 calls reset");
        let fresh = Arc::new(ConnCalls::default());
        for _ in 0..PREMATURE_MIN_CALLS - 1 {
            LiveCall::new(&fresh).reset_by_client();
        }
        assert!(!fresh.abusive(10), "too few calls to judge");
    }
}
