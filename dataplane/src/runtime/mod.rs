//! Worker threads: one monoio runtime per core, each with its own `SO_REUSEPORT` sockets.
//!
//! Sockets are bound here, on the starting thread, so that an address in use fails start-up with
//! a clear error instead of killing a worker later; an address another process already serves
//! is refused unless a takeover is asked for (see `bind`). Each worker thread then gets its own socket
//! per listener (the kernel spreads connections across them; no lock is taken to accept), is
//! pinned to its core when `cpus` is set, and runs io_uring or, where the kernel or a seccomp
//! profile refuses it, epoll.

pub mod bind;
pub mod cores;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use ringmesh_api::snapshot::{IoMode, Listener, ListenerKind};

use self::bind::BindMode;
use crate::http::h2::handoff::{Inbox, Peers};
use crate::identity::IdentityCell;
use crate::listener;
use crate::state::SnapshotSource;
use crate::telemetry::trace::span::{SpanBuffer, SpanSender};
use crate::worker::{Worker, WorkerCommand};

/// The I/O driver workers actually run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// Linux io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl IoDriver {
    /// Name used in the start-up log line (`io=io_uring`).
    pub fn name(self) -> &'static str {
        match self {
            IoDriver::IoUring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

/// Picks the driver for `mode`: `auto` probes io_uring and falls back to epoll.
pub fn resolve_io(mode: IoMode) -> anyhow::Result<IoDriver> {
    let uring = monoio::utils::detect_uring();
    match mode {
        IoMode::Epoll => Ok(IoDriver::Epoll),
        IoMode::IoUring if uring => Ok(IoDriver::IoUring),
        IoMode::IoUring => {
            bail!("io: io_uring was required but the kernel or a seccomp profile refuses it; use io: auto or epoll")
        }
        IoMode::Auto if uring => Ok(IoDriver::IoUring),
        IoMode::Auto => {
            tracing::warn!("io_uring is not available (kernel or seccomp profile); falling back to epoll");
            Ok(IoDriver::Epoll)
        }
    }
}

/// Ring flags for a thread-per-core worker: only its own thread submits (`SINGLE_ISSUER`), and
/// completions' task work runs when the worker next enters the kernel instead of interrupting it
/// with a signal-like notification (`COOP_TASKRUN`), which costs an interrupt per completion and
/// makes blocking syscalls elsewhere in the process fail with `EINTR`. Kernels older than 5.19
/// reject the flags; `coop_taskrun_supported` then falls back to a plain ring.
fn uring_flags() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if coop_taskrun_supported() {
        b.setup_coop_taskrun().setup_single_issuer();
    }
    b
}

/// Whether this kernel accepts `COOP_TASKRUN | SINGLE_ISSUER` (probed once with a tiny ring).
fn coop_taskrun_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(2)
            .is_ok()
    })
}

/// Running workers.
#[derive(Debug)]
pub struct WorkerSet {
    threads: Vec<JoinHandle<()>>,
    commands: Vec<flume::Sender<WorkerCommand>>,
    /// The driver the workers run.
    pub io: IoDriver,
    /// Listener name and the address it actually bound (resolves port 0).
    pub bound: Vec<(String, SocketAddr)>,
}

impl WorkerSet {
    /// Senders to each worker's command task.
    pub fn commands(&self) -> &[flume::Sender<WorkerCommand>] {
        &self.commands
    }

    /// Asks every worker to drain and waits for all threads to exit.
    pub fn drain_and_join(self) {
        for c in &self.commands {
            let _ = c.send(WorkerCommand::Drain);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts `workers` worker threads serving `listeners`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    workers: usize,
    cpus: &[usize],
    io: IoDriver,
    listeners: &[Listener],
    bind_mode: BindMode,
    source: Arc<SnapshotSource>,
    identity: Arc<IdentityCell>,
    spans: SpanSender,
) -> anyhow::Result<WorkerSet> {
    let workers = workers.max(1);
    // sockets[w][l]: worker w's socket for listener l. The first bind resolves port 0; the
    // others bind that exact port.
    let mut bound = Vec::with_capacity(listeners.len());
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut active = Vec::with_capacity(listeners.len());
    for l in listeners {
        let group = match bind::bind_group(l.address, workers, bind_mode) {
            Ok(group) => group,
            // IPv6 capture listeners on a host without IPv6.
            Err(bind::BindError::Io { source, .. }) if l.optional && bind::family_missing(&source) => {
                tracing::info!(listener = %l.name, address = %l.address, "listener skipped: {source} (this host lacks the address family)");
                continue;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("listener {}", l.name))),
        };
        active.push(l.clone());
        bound.push((l.name.clone(), group[0].local_addr()?));
        for (per_worker, socket) in sockets.iter_mut().zip(group) {
            per_worker.push(socket);
        }
    }

    let mut threads = Vec::with_capacity(workers);
    let mut commands = Vec::with_capacity(workers);
    let handoff = crate::http::h2::handoff::channels(workers);
    for ((id, socks), (peers, inbox)) in sockets.into_iter().enumerate().zip(handoff) {
        let (tx, rx) = flume::unbounded();
        commands.push(tx);
        let source = source.clone();
        let identity = identity.clone();
        let spans = spans.clone();
        let listeners = active.clone();
        let cpu = if cpus.is_empty() {
            None
        } else {
            Some(cpus[id % cpus.len()])
        };
        let thread = std::thread::Builder::new()
            .name(format!("ringmesh-worker-{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
                        tracing::warn!(worker = id, cpu, "could not pin worker to cpu: {e:?}");
                    }
                }
                let result = match io {
                    IoDriver::IoUring => RuntimeBuilder::<IoUringDriver>::new()
                        .uring_builder(uring_flags())
                        .with_entries(1024)
                        .enable_timer()
                        .build()
                        .map(|mut rt| {
                            crate::http::send::enable_direct_sends();
                            rt.block_on(worker_main(
                                id,
                                (source, identity, spans),
                                listeners,
                                socks,
                                rx,
                                peers,
                                inbox,
                            ))
                        }),
                    IoDriver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut rt| {
                            rt.block_on(worker_main(
                                id,
                                (source, identity, spans),
                                listeners,
                                socks,
                                rx,
                                peers,
                                inbox,
                            ))
                        }),
                };
                if let Err(e) = result {
                    tracing::error!(worker = id, "worker runtime failed to start: {e}");
                }
            })
            .context("spawn worker thread")?;
        threads.push(thread);
    }
    Ok(WorkerSet {
        threads,
        commands,
        io,
        bound,
    })
}

async fn worker_main(
    id: usize,
    (source, identity, spans): (Arc<SnapshotSource>, Arc<IdentityCell>, SpanSender),
    listeners: Vec<Listener>,
    sockets: Vec<std::net::TcpListener>,
    commands: flume::Receiver<WorkerCommand>,
    peers: Peers,
    inbox: Inbox,
) {
    let worker = Worker::new(id, source, identity, peers, SpanBuffer::new(spans));
    monoio::spawn(crate::http::h2::handoff::receive(worker.clone(), inbox));
    // Dropping this sender tells every accept loop to stop.
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    for (l, sock) in listeners.into_iter().zip(sockets) {
        let listener = match monoio::net::TcpListener::from_std(sock) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(worker = id, listener = %l.name, "cannot register listener: {e}");
                continue;
            }
        };
        let kind = l.kind.clone();
        monoio::spawn(listener::accept_loop(
            worker.clone(),
            l.name.clone(),
            kind,
            l.inbound,
            listener,
            stop_rx.clone(),
        ));
    }
    drop(stop_rx);
    monoio::spawn(worker.clone().pool_sweeper());
    monoio::spawn(worker.clone().telemetry_ticker());
    monoio::spawn(crate::telemetry::trace::flusher(worker.clone()));
    worker.command_loop(commands, move || drop(stop_tx)).await;
}

/// Whether a listener kind is HTTP (used by tests and logs).
pub fn is_http(kind: &ListenerKind) -> bool {
    matches!(kind, ListenerKind::Http)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::task::Poll;

    use monoio::io::AsyncReadRent;

    /// Bytes waiting in `fd`'s receive queue.
    fn queued(fd: std::os::fd::RawFd) -> libc::c_int {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on a valid socket writes one int.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        n
    }

    /// A close that arrives with the last bytes is seen by the read after them: clearing the
    /// readable bit after a short read must not forget the close, or the next read would wait
    /// for an edge epoll already reported (a close-delimited body would hang to its timeout).
    #[test]
    fn epoll_read_after_data_and_close_sees_eof() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut stream = monoio::net::TcpStream::connect(addr).await.unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            peer.write_all(b"ab").unwrap();
            drop(peer);
            // Loopback delivers within the write; the bound only guards a slow machine.
            for _ in 0..10_000 {
                if queued(stream.as_raw_fd()) == 2 {
                    break;
                }
                std::thread::yield_now();
            }
            let (r, _) = stream.read(Vec::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 2);
            let next =
                monoio::time::timeout(std::time::Duration::from_secs(5), stream.read(Vec::with_capacity(16))).await;
            let (r, _) = next.expect("the read after the last bytes waited instead of seeing the close");
            assert_eq!(r.unwrap(), 0, "EOF");
        });
    }

    /// On epoll a read shorter than its buffer drained the socket, so the next read waits for
    /// epoll's next edge instead of trying the socket first: the stale attempt used to fail
    /// with `EAGAIN` twice per proxied request (request and response). `SO_RCVLOWAT` makes the
    /// attempt visible: one byte below the mark is returned by `recv` but not reported by epoll,
    /// so only a read that tries the socket without readiness gets it alone.
    #[test]
    fn epoll_read_after_a_drained_socket_waits_for_readiness() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut stream = monoio::net::TcpStream::connect(addr).await.unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            let fd = stream.as_raw_fd();

            peer.write_all(b"a").unwrap();
            let (r, _) = stream.read(Vec::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 1, "a short read: the socket is empty now");

            let lowat: libc::c_int = 2;
            // SAFETY: a valid socket and an int option of the right length.
            let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&raw const lowat).cast(), 4) };
            assert_eq!(rc, 0);
            peer.write_all(b"b").unwrap();
            // Loopback delivers within the write; the bound only guards a slow machine.
            for _ in 0..10_000 {
                if queued(fd) == 1 {
                    break;
                }
                std::thread::yield_now();
            }
            assert_eq!(queued(fd), 1);

            let mut read = std::pin::pin!(stream.read(Vec::with_capacity(16)));
            let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx).map(|(r, b)| (r.ok(), b)))).await;
            assert!(
                first.is_pending(),
                "the read tried the socket on stale readiness and got {:?}",
                first.map(|(n, b)| (n, b))
            );
            peer.write_all(b"c").unwrap();
            let (r, buf) = read.await;
            let n = r.unwrap();
            assert_eq!(&buf[..n], b"bc", "one read once epoll reported both bytes");
        });
    }
}
