//! One load connection: the request schedule, the HTTP/1.1 exchange and what gets recorded.
//!
//! **Open loop** (the default) follows wrk2: the target rate is split evenly over the
//! connections, each connection's requests have fixed *due* times (connection `i` of `C` at
//! rate `R` is due at `t0 + (i + k·C)/R`), and a connection sends request `k` when both its
//! previous response has arrived and request `k` is due. Latency is measured from the due
//! time, so when the server stalls, every request that *should* have been sent during the
//! stall is charged the time it waited — the coordinated-omission correction. A closed-loop
//! tool would record one slow request per connection and report a fine p99.
//!
//! **Closed loop** (`--max`) sends the next request as soon as the previous response arrives
//! and measures from the actual send; it measures throughput, not latency under load.
//!
//! One request is in flight per connection (no pipelining), so the response framing is
//! unambiguous and any byte after a complete response is a protocol error.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::stats::{ErrorKind, ThreadStats};
use crate::echo::read_more;
use crate::http1::{self, BodyFraming, ChunkedDecoder};
use crate::sys::PreciseTimer;

/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most header fields parsed per response.
const MAX_RESPONSE_HEADERS: usize = 100;
/// How long after the window closes a lagging connection may still send requests that were
/// due inside the window; later ones are counted as `unsent`.
const SEND_GRACE: Duration = Duration::from_millis(50);
/// Pause after a failed connect in closed-loop mode, so a dead target is not hammered in a
/// tight loop.
const CLOSED_LOOP_RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Everything a connection task needs, shared by the connections of one thread.
#[derive(Debug)]
pub(crate) struct ThreadShared {
    /// Per URL: where to connect and the HTTP/1.1 request bytes; connection `i` uses URL
    /// `i % routes.len()` (`--url` repeated spreads connections round-robin).
    pub(crate) routes: Vec<(SocketAddr, Bytes)>,
    pub(crate) is_head: bool,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) plan: Plan,
    pub(crate) stats: RefCell<ThreadStats>,
    /// Live counters and the stop flag, shared with the progress view and Ctrl-C.
    pub(crate) control: std::sync::Arc<crate::progress::RunControl>,
    /// This thread's index (its counter slot in `control`).
    pub(crate) thread: usize,
}

/// The run's timeline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Schedule origin: the first request of connection 0 is due here.
    pub(crate) t0: Instant,
    /// Measurement window opens (end of warmup).
    pub(crate) start: Instant,
    /// Measurement window closes.
    pub(crate) end: Instant,
    /// Open loop: target rate in requests per second (> 0).
    pub(crate) rate: f64,
    /// Total connections over all threads.
    pub(crate) connections: usize,
}

impl Plan {
    pub(super) fn due(&self, conn: usize, k: u64) -> Instant {
        let slot = conn as f64 + k as f64 * self.connections as f64;
        self.t0 + Duration::from_secs_f64(slot / self.rate)
    }
}

impl ThreadShared {
    /// The URL of connection `index`.
    fn route(&self, index: usize) -> (SocketAddr, &Bytes) {
        let (addr, request) = &self.routes[index % self.routes.len()];
        (*addr, request)
    }

    /// Records one finished request, `counted_from` being its due time (open loop) or its send
    /// time (closed loop); it finished now.
    ///
    /// A request belongs to the measurement window when it *finished* inside it (or after it,
    /// having been due inside it): counting by due time instead would file every response of
    /// an overloaded run — all due during the warmup, the schedule having fallen behind — as
    /// warmup, and report zero requests at zero rps while hundreds of thousands were answered.
    /// Its latency still runs from the due time, so the backlog is charged to it.
    pub(super) fn record(&self, counted_from: Instant, result: Result<u16, ErrorKind>) {
        let now = Instant::now();
        let success = matches!(result, Ok(status) if (200..400).contains(&status));
        self.control.count(self.thread, !success);
        let mut st = self.stats.borrow_mut();
        if now < self.plan.start {
            st.warmup += 1;
            return;
        }
        if counted_from < self.plan.start {
            st.late_from_warmup += 1;
        }
        let us = u64::try_from(now.saturating_duration_since(counted_from).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        if success {
            st.ok += 1;
            st.hist.saturating_record(us);
            st.record_interval(now.saturating_duration_since(self.plan.start), us);
            return;
        }
        st.error_hist.saturating_record(us);
        match result {
            Ok(status) if (400..500).contains(&status) => st.errors.add(ErrorKind::Status4xx),
            Ok(status) if (500..600).contains(&status) => st.errors.add(ErrorKind::Status5xx),
            Ok(_) => st.errors.add(ErrorKind::Malformed),
            Err(kind) => st.errors.add(kind),
        }
    }
}

/// A keep-alive connection and its read buffer.
struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ErrorKind> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(Conn {
                stream,
                rbuf: Vec::with_capacity(8192),
            })
        }
        _ => Err(ErrorKind::Connect),
    }
}

enum Head {
    Complete {
        status: u16,
        head_len: usize,
        framing: BodyFraming,
        keep_alive: bool,
    },
    Interim(usize),
    Partial,
}

fn parse_head(buf: &[u8], is_head: bool) -> Result<Head, ErrorKind> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                return Ok(Head::Interim(head_len));
            }
            if status == 101 {
                return Err(ErrorKind::Malformed);
            }
            let framing = http1::response_framing(is_head, status, resp.headers).map_err(|_| ErrorKind::Malformed)?;
            let version = resp.version.unwrap_or(1);
            let keep_alive = framing != BodyFraming::UntilClose && http1::keep_alive(version, resp.headers);
            Ok(Head::Complete {
                status,
                head_len,
                framing,
                keep_alive,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => Err(ErrorKind::Malformed),
        Ok(httparse::Status::Partial) => Ok(Head::Partial),
        Err(_) => Err(ErrorKind::Malformed),
    }
}

/// Reads into the connection buffer; EOF and errors both mean the peer went away mid-exchange
/// (`Unanswered` when not one byte of the response had come yet).
async fn fill(conn: &mut Conn, answered: bool) -> Result<(), ErrorKind> {
    let buf = std::mem::take(&mut conn.rbuf);
    let (res, buf) = read_more(&mut conn.stream, buf).await;
    conn.rbuf = buf;
    match res {
        Ok(0) | Err(_) if !answered => Err(ErrorKind::Unanswered),
        Ok(0) | Err(_) => Err(ErrorKind::Reset),
        Ok(_) => Ok(()),
    }
}

/// Whether the server already closed this idle keep-alive connection (its FIN, a reset, or
/// bytes nobody asked for are waiting): then a request written on it would be lost, so the
/// caller opens a new connection instead, as HTTP clients do with pooled connections. One
/// non-blocking `recv(MSG_PEEK)`; an open, quiet connection answers `EAGAIN`.
fn closed_by_server(conn: &Conn) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own, on the connection's own descriptor.
    let n = unsafe {
        libc::recv(
            conn.stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        n if n >= 0 => true,
        _ => !matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN | libc::EINTR)
        ),
    }
}

/// The connection for the next request: `kept` when the server has not closed it, else a new
/// one (counted in `reconnects`).
async fn reuse_or_connect(shared: &ThreadShared, kept: Option<Conn>, addr: SocketAddr) -> Result<Conn, ErrorKind> {
    if let Some(c) = kept {
        if !closed_by_server(&c) {
            return Ok(c);
        }
        shared.stats.borrow_mut().reconnects += 1;
    }
    connect(addr, shared.connect_timeout).await
}

/// Sends one request and reads its complete response. Returns the status and whether the
/// connection may be reused.
async fn exchange(conn: &mut Conn, request: Bytes, is_head: bool) -> Result<(u16, bool), ErrorKind> {
    let (res, _) = conn.stream.write_all(request).await;
    res.map_err(|_| ErrorKind::Reset)?;
    conn.rbuf.clear();
    let mut interim = false;
    let (status, mut pos, framing, keep_alive) = loop {
        match parse_head(&conn.rbuf, is_head)? {
            Head::Complete {
                status,
                head_len,
                framing,
                keep_alive,
            } => break (status, head_len, framing, keep_alive),
            Head::Interim(len) => {
                conn.rbuf.drain(..len);
                interim = true;
            }
            Head::Partial => fill(conn, interim || !conn.rbuf.is_empty()).await?,
        }
    };
    match framing {
        BodyFraming::Empty => {}
        BodyFraming::Length(n) => {
            let mut left = n;
            loop {
                let take = ((conn.rbuf.len() - pos) as u64).min(left);
                pos += take as usize;
                left -= take;
                if left == 0 {
                    break;
                }
                conn.rbuf.clear();
                pos = 0;
                fill(conn, true).await?;
            }
        }
        BodyFraming::Chunked => {
            let mut dec = ChunkedDecoder::new();
            loop {
                pos += dec
                    .decode(&conn.rbuf[pos..], |_| {})
                    .map_err(|_| ErrorKind::Malformed)?;
                if dec.is_done() {
                    break;
                }
                conn.rbuf.clear();
                pos = 0;
                fill(conn, true).await?;
            }
        }
        BodyFraming::UntilClose => loop {
            conn.rbuf.clear();
            let buf = std::mem::take(&mut conn.rbuf);
            let (res, buf) = read_more(&mut conn.stream, buf).await;
            conn.rbuf = buf;
            match res {
                Ok(0) => return Ok((status, false)),
                Ok(_) => {}
                Err(_) => return Err(ErrorKind::Reset),
            }
        },
    }
    // One request in flight: anything after the response is a protocol violation that would
    // desynchronise the next exchange.
    if pos != conn.rbuf.len() {
        return Err(ErrorKind::Malformed);
    }
    Ok((status, keep_alive))
}

/// Runs `exchange` under the request timeout.
async fn timed_exchange(shared: &ThreadShared, conn: &mut Conn, request: &Bytes) -> Result<(u16, bool), ErrorKind> {
    match monoio::time::timeout(shared.timeout, exchange(conn, request.clone(), shared.is_head)).await {
        Ok(r) => r,
        Err(_) => Err(ErrorKind::Timeout),
    }
}

/// Sleeps precisely when a timerfd is available, else on the runtime's millisecond wheel.
pub(super) enum Sleeper {
    Precise(PreciseTimer),
    Coarse,
}

impl Sleeper {
    pub(super) fn new() -> Self {
        PreciseTimer::new().map_or(Sleeper::Coarse, Sleeper::Precise)
    }

    async fn sleep_until(&mut self, t: Instant) {
        if let Sleeper::Precise(timer) = self {
            if timer.sleep_until(t).await.is_ok() {
                return;
            }
            *self = Sleeper::Coarse;
        }
        monoio::time::sleep_until(t.into()).await;
    }
}

/// Longest sleep between two looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Sleeps until `due`, looking at the stop flag at least every [`STOP_POLL`]; false when
/// the run was stopped (the stop time is then noted).
pub(super) async fn sleep_unless_stopped(sleeper: &mut Sleeper, due: Instant, shared: &ThreadShared) -> bool {
    loop {
        if shared.control.is_stopped() {
            shared.control.note_stopped();
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        sleeper.sleep_until(due.min(now + STOP_POLL)).await;
    }
}

/// The open-loop schedule of connection `index` (global over all threads).
pub(crate) async fn open_loop(shared: &ThreadShared, index: usize) {
    let plan = shared.plan;
    let mut sleeper = Sleeper::new();
    // Connect before the schedule starts, so the first request does not pay for the handshake.
    let (addr, request) = shared.route(index);
    let mut conn = connect(addr, shared.connect_timeout).await.ok();
    let mut k: u64 = 0;
    loop {
        let due = plan.due(index, k);
        if due >= plan.end {
            break;
        }
        if Instant::now() >= plan.end + SEND_GRACE {
            let mut unsent = 0;
            let mut kk = k;
            loop {
                let d = plan.due(index, kk);
                if d >= plan.end {
                    break;
                }
                if d >= plan.start {
                    unsent += 1;
                }
                kk += 1;
            }
            shared.stats.borrow_mut().unsent += unsent;
            break;
        }
        if !sleep_unless_stopped(&mut sleeper, due, shared).await {
            break;
        }
        k += 1;
        let mut c = match reuse_or_connect(shared, conn.take(), addr).await {
            Ok(c) => c,
            Err(kind) => {
                shared.record(due, Err(kind));
                continue;
            }
        };
        shared.stats.borrow_mut().sent += 1;
        match timed_exchange(shared, &mut c, request).await {
            Ok((status, keep)) => {
                shared.record(due, Ok(status));
                if keep {
                    conn = Some(c);
                }
            }
            Err(kind) => shared.record(due, Err(kind)),
        }
    }
}

/// The closed-loop (as fast as responses come back) schedule of one connection.
pub(crate) async fn closed_loop(shared: &ThreadShared, index: usize) {
    let (addr, request) = shared.route(index);
    let plan = shared.plan;
    monoio::time::sleep_until(plan.t0.into()).await;
    let mut conn: Option<Conn> = None;
    while Instant::now() < plan.end {
        if shared.control.is_stopped() {
            shared.control.note_stopped();
            break;
        }
        let at = Instant::now();
        let mut c = match reuse_or_connect(shared, conn.take(), addr).await {
            Ok(c) => c,
            Err(kind) => {
                shared.record(at, Err(kind));
                monoio::time::sleep(CLOSED_LOOP_RECONNECT_PAUSE).await;
                continue;
            }
        };
        let sent_at = Instant::now();
        shared.stats.borrow_mut().sent += 1;
        match timed_exchange(shared, &mut c, request).await {
            Ok((status, keep)) => {
                shared.record(sent_at, Ok(status));
                if keep {
                    conn = Some(c);
                }
            }
            Err(kind) => shared.record(sent_at, Err(kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection the server closed while it idled is seen as closed before a request is
    /// written on it; an open, quiet one is not.
    #[test]
    fn a_connection_closed_by_the_server_is_seen_before_reuse() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let conn = connect(listener.local_addr().unwrap(), Duration::from_secs(2))
                .await
                .unwrap();
            let (server, _) = listener.accept().unwrap();
            assert!(!closed_by_server(&conn), "open and quiet");
            drop(server);
            // Loopback delivers the FIN within the close; the bound only guards a slow machine.
            let mut seen = false;
            for _ in 0..1000 {
                if closed_by_server(&conn) {
                    seen = true;
                    break;
                }
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(seen, "the server's FIN is seen");
        });
    }

    #[test]
    fn due_times_spread_connections_evenly() {
        let t0 = Instant::now();
        let plan = Plan {
            t0,
            start: t0,
            end: t0 + Duration::from_secs(1),
            rate: 1000.0,
            connections: 4,
        };
        // Connection 1's requests: 1 ms, 5 ms, 9 ms ... after t0.
        assert_eq!(plan.due(1, 0) - t0, Duration::from_millis(1));
        assert_eq!(plan.due(1, 2) - t0, Duration::from_millis(9));
        assert_eq!(plan.due(0, 250) - t0, Duration::from_secs(1));
    }

    #[test]
    fn response_heads_are_framed_or_rejected() {
        match parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", false) {
            Ok(Head::Complete {
                status: 200,
                head_len: 38,
                framing: BodyFraming::Length(3),
                keep_alive: true,
            }) => {}
            _ => panic!("expected a complete 200"),
        }
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\n", false),
            Ok(Head::Interim(25))
        ));
        assert!(matches!(parse_head(b"HTTP/1.1 200", false), Ok(Head::Partial)));
        assert!(matches!(
            parse_head(b"garbage\r\n\r\n", false),
            Err(ErrorKind::Malformed)
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false),
            Err(ErrorKind::Malformed)
        ));
    }
}
