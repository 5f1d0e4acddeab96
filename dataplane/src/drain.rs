//! Draining one worker without losing a request: what each kind of connection does once the
//! worker is told to stop, and when the worker may exit.
//!
//! The control thread sends `WorkerCommand::Drain` on SIGTERM, SIGINT or `POST
//! /drain_listeners`. The worker then (`Worker::command_loop` → [`run`]):
//!
//! 1. stops accepting: each accept loop cancels its pending accept, serves what it returned,
//!    accepts what is still queued on its socket without waiting (`listener.rs`), and only
//!    then closes it — closing a `SO_REUSEPORT` socket resets the connections still in its
//!    queue unless the host set `net.ipv4.tcp_migrate_req=1`. The worker waits for every
//!    accept loop to be done before step 2, because the clients told to go away reconnect at
//!    once: with the old sockets closed, all of them land on the successor's;
//! 2. sets `Worker::draining` and wakes every [`DrainWatch`] (HTTP/2 connections send their
//!    graceful `GOAWAY` at once instead of at their next tick);
//! 3. lets connections finish: an HTTP/1.1 response sent while draining says
//!    `Connection: close` and the connection closes after it; an HTTP/2 connection finishes
//!    the streams its final `GOAWAY` covers, then closes; TCP proxy connections and upgraded
//!    tunnels run on;
//! 4. exits once no request, HTTP/2 connection, tunnel or TCP connection is left,
//!    and either no connection is left or [`IDLE_GRACE`] has passed (the connections still
//!    open are then idle HTTP/1.1 keep-alive connections, closed by the exit); at
//!    `limits.drainTimeout` it exits whatever is left.
//!
//! Why the grace: closing an idle keep-alive connection races with a client that is sending
//! its next request on it at that moment (the request is lost with the connection; RFC 9112
//! §9.3.1 lets only idempotent requests be retried). A client that uses its connections sends
//! within the grace, gets its answer with `Connection: close`, and opens its next connection
//! to the successor; only connections idle for the whole grace are closed under their client.
//! Envoy does the same in two steps: responses on a draining listener carry `Connection:
//! close` (HTTP/2: `GOAWAY`), and the connection manager closes what is left after its
//! `drain_timeout`.
//!
//! Everything here is per core: `Cell`s and a `RefCell` of wakers, no lock.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::worker::Worker;

/// How long idle HTTP/1.1 keep-alive connections stay open after a drain began (bounded by the
/// drain timeout): a client busy on them sends within it and is answered with `Connection:
/// close`.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How often a draining worker looks at what is left.
const POLL: Duration = Duration::from_millis(10);

/// How often a draining worker looks whether its accept loops closed their sockets (they do
/// within a turn of the ring or two).
const ACCEPT_POLL: Duration = Duration::from_millis(1);

/// How long the connections shut at the end of a drain get to see it and close their sockets.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// The per-core signal that a drain began, for tasks that sleep long between looks at
/// `Worker::draining` (an HTTP/2 connection's tick is seconds).
#[derive(Debug, Default)]
pub struct DrainSignal {
    started: Cell<bool>,
    /// One slot per live [`DrainWatch`]; `None` when free or not waiting.
    wakers: RefCell<Vec<Option<Waker>>>,
    /// Free slots of `wakers`.
    free: RefCell<Vec<usize>>,
}

impl DrainSignal {
    /// Marks the drain begun and wakes every watcher.
    pub fn start(&self) {
        self.started.set(true);
        // Taken out first: a woken task runs later, never inside this borrow.
        let wakers: Vec<Waker> = self.wakers.borrow_mut().iter_mut().filter_map(Option::take).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether the drain began.
    pub fn started(&self) -> bool {
        self.started.get()
    }

    /// A watcher that holds one slot until dropped.
    pub fn watch(&self) -> DrainWatch<'_> {
        let slot = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let mut w = self.wakers.borrow_mut();
                w.push(None);
                w.len() - 1
            }
        };
        DrainWatch { signal: self, slot }
    }
}

/// One task's registration with the [`DrainSignal`].
#[derive(Debug)]
pub struct DrainWatch<'a> {
    signal: &'a DrainSignal,
    slot: usize,
}

impl DrainWatch<'_> {
    /// Ready once the drain began; otherwise keeps `cx`'s waker to be woken then.
    pub fn poll_started(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.started.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.signal.wakers.borrow_mut();
        match &mut wakers[self.slot] {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for DrainWatch<'_> {
    fn drop(&mut self) {
        self.signal.wakers.borrow_mut()[self.slot] = None;
        self.signal.free.borrow_mut().push(self.slot);
    }
}

/// The sockets of this worker's downstream connections, so that the end of a drain can close
/// the ones still open (idle keep-alive connections wait in a read that nothing else would
/// end; a worker that just returned would leave them open until the process exits).
#[derive(Debug, Default)]
pub struct OpenConnections {
    fds: RefCell<Vec<Option<RawFd>>>,
    free: RefCell<Vec<usize>>,
}

impl OpenConnections {
    /// Notes a connection's socket; returns its slot for [`OpenConnections::remove`].
    pub fn add(&self, fd: RawFd) -> usize {
        match self.free.borrow_mut().pop() {
            Some(i) => {
                self.fds.borrow_mut()[i] = Some(fd);
                i
            }
            None => {
                let mut fds = self.fds.borrow_mut();
                fds.push(Some(fd));
                fds.len() - 1
            }
        }
    }

    /// Forgets a connection whose task ended (its socket is closed or closing).
    pub fn remove(&self, slot: usize) {
        if let Some(fd) = self.fds.borrow_mut().get_mut(slot) {
            *fd = None;
            self.free.borrow_mut().push(slot);
        }
    }

    /// Shuts down every socket still open (both directions): a read waiting on one ends, its
    /// connection's task returns and closes it, and the client sees the end (FIN).
    fn shut_all(&self) -> usize {
        let fds = self.fds.borrow();
        let mut n = 0;
        for fd in fds.iter().flatten() {
            // SAFETY: the descriptor belongs to a connection whose task has not ended (it is
            // removed from here as its task ends, in the same turn as its socket is dropped);
            // shutdown(2) leaves the descriptor itself to its owner.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
            n += 1;
        }
        n
    }
}

/// Something the drain waits for although no request of it is in flight: an HTTP/2 connection
/// (its streams may be served on other cores, and it must send its `GOAWAY`), a TCP proxy
/// connection, an upgraded tunnel; or (`accepting`) an accept loop. Counted while the guard
/// lives.
#[derive(Debug)]
pub struct DrainHold<'a>(&'a Cell<u64>);

impl<'a> DrainHold<'a> {
    /// Holds the drain of `worker` until dropped.
    pub fn new(worker: &'a Worker) -> Self {
        Self::on(&worker.drain_holds)
    }

    /// An accept loop of `worker`, until dropped: the drain lets connections go only once
    /// every one of them closed its socket.
    pub fn accepting(worker: &'a Worker) -> Self {
        Self::on(&worker.accepting)
    }

    fn on(c: &'a Cell<u64>) -> Self {
        c.set(c.get() + 1);
        DrainHold(c)
    }
}

impl Drop for DrainHold<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// What a worker's connections are doing, as the drain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Left {
    /// Open downstream connections.
    pub connections: u64,
    /// Requests in flight, HTTP/2 streams handed to this worker and not yet started included.
    pub requests: u64,
    /// Connections held by a [`DrainHold`].
    pub held: u64,
}

/// Whether a worker that began draining `elapsed` ago, with `timeout` to drain, may exit now.
pub(crate) fn may_exit(left: Left, elapsed: Duration, timeout: Duration) -> bool {
    elapsed >= timeout
        || (left.held == 0 && left.requests == 0 && (left.connections == 0 || elapsed >= IDLE_GRACE.min(timeout)))
}

/// Drains `worker`: see the module's description. `stop_accepting` tells its accept loops to
/// stop; returns once the worker may exit.
pub(crate) async fn run(worker: &Worker, stop_accepting: impl FnOnce()) {
    let timeout = worker.snapshot.get().snapshot.proxy.limits.drain_timeout;
    let began = Instant::now();
    // No HTTP/2 stream of another worker's connection is handed to this one any more; the ones
    // already handed are counted in `Peers::in_flight` until they are done.
    worker.peers.retire();
    // Listeners first: a client told to go away (`Connection: close`, GOAWAY) reconnects at
    // once, and must find only the successor's sockets in the group. A socket still open
    // would take a share of those connections, and reset the ones that arrive as it closes.
    stop_accepting();
    while worker.accepting.get() > 0 && began.elapsed() < timeout {
        monoio::time::sleep(ACCEPT_POLL).await;
    }
    worker.draining.set(true);
    worker.drain.start();
    let left = || Left {
        connections: worker.stats.downstream_cx_active.get(),
        requests: worker
            .stats
            .downstream_rq_active
            .get()
            .max(u64::from(worker.peers.in_flight())),
        held: worker.drain_holds.get(),
    };
    loop {
        if may_exit(left(), began.elapsed(), timeout) {
            // Once more after a pause: a worker that chose this one for a stream just before
            // it retired may be sending it now.
            monoio::time::sleep(POLL).await;
            if may_exit(left(), began.elapsed(), timeout) {
                break;
            }
        }
        monoio::time::sleep(POLL).await;
    }
    let l = left();
    if l.requests > 0 || l.held > 0 {
        tracing::warn!(
            worker = worker.id,
            requests = l.requests,
            connections = l.connections,
            "drain timeout ({timeout:?}) reached; closing what is left"
        );
    }
    let shut = worker.open.shut_all();
    let until = Instant::now() + CLOSE_WAIT;
    while worker.stats.downstream_cx_active.get() > 0 && Instant::now() < until {
        monoio::time::sleep(POLL).await;
    }
    tracing::info!(
        worker = worker.id,
        connections_closed = shut,
        after_ms = began.elapsed().as_millis() as u64,
        "worker drained"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_watch_is_woken_once_when_the_drain_starts_and_then_stays_ready() {
        let signal = DrainSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let a = signal.watch();
        let b = signal.watch();
        assert!(a.poll_started(&mut cx).is_pending());
        assert!(a.poll_started(&mut cx).is_pending(), "a second poll keeps one waker");
        drop(b);
        let c = signal.watch();
        assert_eq!(signal.wakers.borrow().len(), 2, "a freed slot is reused");
        signal.start();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(a.poll_started(&mut cx).is_ready());
        assert!(c.poll_started(&mut cx).is_ready());
        assert!(
            signal.watch().poll_started(&mut cx).is_ready(),
            "a watch made after the start"
        );
    }

    #[test]
    fn exit_waits_for_requests_holds_and_the_grace_but_never_past_the_timeout() {
        let timeout = Duration::from_secs(5);
        let idle = Left {
            connections: 3,
            requests: 0,
            held: 0,
        };
        assert!(
            !may_exit(idle, Duration::ZERO, timeout),
            "idle keep-alive gets the grace"
        );
        assert!(may_exit(idle, IDLE_GRACE, timeout));
        let none = Left { connections: 0, ..idle };
        assert!(may_exit(none, Duration::ZERO, timeout), "nothing left: exit at once");
        let h2 = Left { held: 1, ..none };
        assert!(
            !may_exit(h2, Duration::ZERO, timeout),
            "an HTTP/2 connection ends itself"
        );
        let busy = Left { requests: 1, ..idle };
        assert!(!may_exit(busy, Duration::from_secs(2), timeout));
        assert!(may_exit(busy, timeout, timeout));
        let tunnel = Left { held: 1, ..idle };
        assert!(!may_exit(tunnel, Duration::from_secs(2), timeout));
        assert!(may_exit(tunnel, timeout, timeout));
        // A drain timeout shorter than the grace bounds it.
        assert!(may_exit(idle, Duration::from_millis(200), Duration::from_millis(200)));
    }
}
