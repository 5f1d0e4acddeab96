//! Thread and runtime plumbing shared by the echo server and the load generator.
//!
//! Both run one monoio runtime per OS thread (io_uring, with monoio's automatic fallback to
//! epoll where io_uring is blocked). This module builds that runtime, pins a thread to a CPU,
//! narrows the kernel's timer slack and raises the open-file limit: small system calls that
//! decide whether a measurement is precise, kept in one place so every thread is set up alike.

use std::io;
use std::time::{Duration, Instant};

/// The runtime type every loadgen/echo thread runs: io_uring when available, epoll otherwise,
/// both with monoio's timer wheel for coarse timeouts.
pub(crate) type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// Builds the per-thread runtime.
pub(crate) fn build_runtime() -> io::Result<Runtime> {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .uring_builder(quiet_ring())
        .with_entries(1024)
        .enable_timer()
        .build()
}

/// Ring flags that keep these tools from taxing the process they measure.
///
/// Without `COOP_TASKRUN` every completion on this ring (a response landing for the load
/// generator, a request for the echo) interrupts the thread with a signal-like notification,
/// and that interrupt is sent by, and charged to, whoever wrote the bytes: the proxy under test.
/// Side by side in closed loop, the flag took haproxy from 21 to 15 µs of CPU per request and
/// ringmesh-proxy from 17.5 to 14. `SINGLE_ISSUER` comes with it (each thread owns its ring).
/// Kernels before 5.19 refuse the flags; the plain ring is used there.
fn quiet_ring() -> io_uring::Builder {
    let mut flags = io_uring::IoUring::builder();
    flags.setup_coop_taskrun().setup_single_issuer();
    match flags.build(2) {
        Ok(_) => flags,
        Err(_) => io_uring::IoUring::builder(),
    }
}

/// Which I/O driver monoio picks on this machine: `"io_uring"` or `"epoll"`.
///
/// Reported beside every benchmark so that a figure measured on the fallback driver is never
/// mistaken for an io_uring figure.
pub fn io_driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

/// Asks the kernel to fire this thread's timers within 1 µs of their deadline instead of the
/// default 50 µs slack; the load generator's schedule and the echo server's delays depend on it.
pub(crate) fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

/// Pins the calling thread to one CPU. Errors are returned, not ignored, so that a bad
/// `--cpus` list is reported instead of silently measuring an unpinned run.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} out of range"),
        ));
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it (cpu checked above);
    // sched_setaffinity(0) applies to the calling thread and reads only the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises `RLIMIT_NOFILE` to its hard limit (or to `want`, whichever is smaller) and returns
/// the soft limit now in force. Tens of thousands of idle connections need it; children
/// inherit it.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur >= want as libc::rlim_t {
            return Ok(lim.rlim_cur as u64);
        }
        let mut target = lim;
        target.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
        // Root may raise the hard limit too; try that first, fall back to the soft one.
        let mut raised = target;
        raised.rlim_cur = want as libc::rlim_t;
        raised.rlim_max = lim.rlim_max.max(want as libc::rlim_t);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(want);
        }
        if libc::setrlimit(libc::RLIMIT_NOFILE, &target) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(target.rlim_cur as u64)
    }
}

/// A sub-millisecond timer for one task, built on a `timerfd`.
///
/// monoio's timer wheel rounds every deadline *up* to the next whole millisecond, so a 2 ms
/// sleep takes 2–3 ms. That is fine for timeouts but not for an open-loop schedule whose
/// latency is measured from the due time, nor for an echo server whose `--delay 2ms` must be
/// 2 ms. A timerfd armed with the exact remaining time and awaited through the runtime's
/// readiness API (an io_uring `PollAdd`, or epoll on the fallback driver) fires within the
/// thread's timer slack (set to 1 µs by [`tighten_timer_slack`]). The fd is reused for every
/// sleep of its task, so each wait costs one `timerfd_settime`, one poll and one `read`.
#[derive(Debug)]
pub(crate) struct PreciseTimer {
    // monoio has no generic "fd readiness" type; its UnixStream wrapper only uses the fd for
    // readiness polling here (never recv/send), which a timerfd supports.
    fd: monoio::net::UnixStream,
    raw: libc::c_int,
}

impl PreciseTimer {
    /// Creates the timerfd; must be called on a monoio runtime thread.
    pub(crate) fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the returned fd is checked and then owned by the UnixStream.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own; ownership moves into the std wrapper.
        let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(raw) };
        let fd = monoio::net::UnixStream::from_std(std_stream)?;
        Ok(Self { fd, raw })
    }

    /// Sleeps until `deadline` (returns at once if it has passed).
    pub(crate) async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if deadline <= now {
                return Ok(());
            }
            let left = deadline - now;
            self.arm(left)?;
            self.fd.readable(false).await?;
            self.drain();
        }
    }

    fn arm(&self, d: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                // A zero it_value would disarm the timer; 1 ns is "now".
                tv_nsec: (d.subsec_nanos().max(if d.as_secs() == 0 { 1 } else { 0 })) as libc::c_long,
            },
        };
        // SAFETY: raw is our live timerfd; spec is a valid itimerspec.
        let rc = unsafe { libc::timerfd_settime(self.raw, 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into our stack buffer from our nonblocking timerfd;
        // EAGAIN (not yet expired, spurious wakeup) is fine and handled by the caller's loop.
        unsafe {
            libc::read(self.raw, buf.as_mut_ptr().cast(), buf.len());
        }
    }
}

/// Binds one of a server's `SO_REUSEPORT` listening sockets on `addr`.
///
/// `SO_REUSEPORT` lets each worker thread have its own socket on one port, but it also lets a
/// second process of the same user bind that port without error and silently take part of the
/// traffic. So the `first` socket is bound without it — the kernel then answers `EADDRINUSE`
/// while any other socket holds the address — and gets it only once the address is ours, for
/// the other workers to join; `takeover` skips that claim, to share the address on purpose.
pub(crate) fn bind_reuseport(
    addr: std::net::SocketAddr,
    first: bool,
    takeover: bool,
) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(!first || takeover)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => anyhow::bail!(
            "{addr} is already in use by another process; refusing to share it (the kernel would split the \
             traffic between both). Stop the other process or pick another address, or pass --takeover to \
             share it on purpose"
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("bind {addr}"))),
    }
    socket.set_reuse_port(true)?;
    socket.listen(4096)?;
    Ok(socket.into())
}
