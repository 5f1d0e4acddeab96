//! `ringmesh-echo`: the upstream test server behind every proxy test and benchmark.
//!
//! One monoio runtime per worker thread, each with its own `SO_REUSEPORT` listener, so the
//! upstream scales like the proxy it stands behind and never becomes the bottleneck that a
//! benchmark mistakes for proxy cost. It speaks HTTP/1.1 with keep-alive and pipelining
//! (responses leave in request order; pipelined responses are written in one batch), decodes
//! `Content-Length` and chunked request bodies, and answers with a configurable body, delay,
//! jitter and error rate. A few paths let tests ask for specific behaviour:
//!
//! * `/status/NNN` answers with that status;
//! * `/delay/MS` answers after `MS` milliseconds (instead of the configured delay);
//! * `/headers` answers with the request head exactly as received, so a test can see what a
//!   proxy forwarded;
//! * `POST`/`PUT` echo the request body back.
//!
//! Every response carries `x-ringmesh-instance: NAME` so routing tests can count where
//! requests went. In `--tcp` mode it is a plain byte echo instead.
//!
//! The same port also speaks HTTP/2 (prior knowledge, detected by the connection preface) and
//! gRPC, and with `tls` set it speaks TLS with ALPN `h2` and `http/1.1`; that side lives in
//! `echo_h2.rs`, which hands HTTP/1 connections back to the server here.
//!
//! Delays use [`crate::sys::PreciseTimer`] (timerfd), not monoio's millisecond timer wheel,
//! because a "2 ms" upstream that answers in 2–3 ms would bias every latency test.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::echo_h2::{self, H2Shared};
use crate::http1::{self, BodyFraming, ChunkedDecoder};
use crate::sys::{self, PreciseTimer};
use crate::tls::{self, ServerTlsOptions};

/// What the echo server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EchoMode {
    /// HTTP/1.1 (the default).
    #[default]
    Http,
    /// Raw TCP: every byte received is written back.
    Tcp,
}

/// Configuration of one echo server (all workers).
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Address to listen on; port 0 picks a free port (see [`EchoHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Worker threads, each with its own runtime and `SO_REUSEPORT` listener.
    pub workers: usize,
    /// Size of the body sent for requests that do not echo a body.
    pub body_size: usize,
    /// Delay before every response (unless the path is `/delay/MS`).
    pub delay: Duration,
    /// Uniform jitter around `delay`: each response waits `delay ± jitter` (never below 0).
    pub delay_jitter: Duration,
    /// Fraction of requests (0.0–1.0) answered with `500` instead of `200`.
    pub error_rate: f64,
    /// Value of the `x-ringmesh-instance` response header.
    pub instance: String,
    /// HTTP or raw TCP echo.
    pub mode: EchoMode,
    /// Pin worker `i` to `cpus[i % cpus.len()]` when non-empty.
    pub cpus: Vec<usize>,
    /// Serve TLS (ALPN `h2`, `http/1.1`) instead of plaintext; HTTP mode only.
    pub tls: Option<ServerTlsOptions>,
    /// Share `listen` with another process already serving it (`SO_REUSEPORT`); by default an
    /// address in use is refused with an error naming it.
    pub takeover: bool,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            body_size: 64,
            delay: Duration::ZERO,
            delay_jitter: Duration::ZERO,
            error_rate: 0.0,
            instance: "echo".to_owned(),
            mode: EchoMode::Http,
            cpus: Vec::new(),
            tls: None,
            takeover: false,
        }
    }
}

impl EchoConfig {
    /// Defaults (64-byte body, no delay, no errors) listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            ..Self::default()
        }
    }

    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.workers == 0 || self.workers > 1024 {
            problems.push(format!("workers must be 1..=1024, got {}", self.workers));
        }
        if !(0.0..=1.0).contains(&self.error_rate) || self.error_rate.is_nan() {
            problems.push(format!("error-rate must be in [0, 1], got {}", self.error_rate));
        }
        if self.body_size > MAX_BODY {
            problems.push(format!(
                "body-size must be at most {MAX_BODY} bytes, got {}",
                self.body_size
            ));
        }
        if self.delay > MAX_DELAY || self.delay_jitter > MAX_DELAY {
            problems.push(format!("delay and delay-jitter must be at most {MAX_DELAY:?}"));
        }
        if self.instance.bytes().any(|b| b < 0x20 || b == 0x7f) {
            problems.push("instance name must not contain control characters".to_owned());
        }
        if self.tls.is_some() && self.mode == EchoMode::Tcp {
            problems.push("tls applies to HTTP mode only, not tcp".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid echo config: {}", problems.join("; "))
        }
    }
}

/// Largest request body echoed back and largest configured response body (64 MiB).
pub(crate) const MAX_BODY: usize = 64 << 20;
/// Longest delay honoured, from `--delay` or `/delay/MS`.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Largest request head accepted before answering `431`.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields parsed per request.
const MAX_HEADERS: usize = 100;
/// Pending output flushed once it grows past this, even mid-pipeline.
const FLUSH_AT: usize = 64 * 1024;

/// A running echo server; stops (and joins its threads) on [`EchoHandle::shutdown`] or drop.
#[derive(Debug)]
pub struct EchoHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    listener_fds: Vec<libc::c_int>,
    threads: Vec<JoinHandle<()>>,
    served: Vec<Arc<AtomicU64>>,
    generated_cert_pem: Option<String>,
}

impl EchoHandle {
    /// The bound address (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The self-signed certificate (PEM) generated at start when TLS is on and no certificate
    /// was given, so a client can trust exactly this server.
    pub fn generated_cert_pem(&self) -> Option<&str> {
        self.generated_cert_pem.as_deref()
    }

    /// Requests answered so far, summed over workers (HTTP mode), or connections accepted
    /// (TCP mode).
    pub fn requests_served(&self) -> u64 {
        self.served.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Stops accepting, closes every connection and joins the worker threads (bounded: a
    /// worker stuck past two seconds is left to finish on its own).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Blocks until the workers exit on their own (the CLI: runs until killed).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn stop_now(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for &fd in &self.listener_fds {
            // SAFETY: shutdown on the listening socket wakes a pending accept with an error;
            // the fd stays open (owned by the worker) until the worker drops its listener.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for t in self.threads.drain(..) {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for EchoHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Starts an echo server on background threads and returns once every worker is listening.
///
/// Worker 0 binds first (so `127.0.0.1:0` resolves to a concrete port); the others then bind
/// the same port with `SO_REUSEPORT`, so the kernel spreads connections over workers.
pub fn spawn_echo(config: EchoConfig) -> anyhow::Result<EchoHandle> {
    config.validate()?;
    // Built once, before any worker starts: a bad certificate is reported here, and every
    // worker serves the same (possibly generated) certificate.
    let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
    let config = Arc::new(config);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handle = EchoHandle {
        addr: config.listen,
        stop: stop.clone(),
        listener_fds: Vec::new(),
        threads: Vec::new(),
        served: Vec::new(),
        generated_cert_pem: tls.as_ref().and_then(|t| t.generated_cert_pem.clone()),
    };
    for i in 0..config.workers {
        let bind_addr = if i == 0 { config.listen } else { handle.addr };
        let (tx, rx) = mpsc::channel();
        let served = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            index: i,
            bind_addr,
            config: config.clone(),
            stop: stop.clone(),
            served: served.clone(),
            tls: tls.as_ref().map(|t| t.config.clone()),
        };
        let t = std::thread::Builder::new()
            .name(format!("echo-{i}"))
            .spawn(move || worker.run(tx))
            .context("spawning echo worker thread")?;
        handle.threads.push(t);
        handle.served.push(served);
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((addr, fd))) => {
                handle.addr = addr;
                handle.listener_fds.push(fd);
            }
            Ok(Err(e)) => return Err(e.context(format!("echo worker {i} on {bind_addr}"))),
            Err(_) => return Err(anyhow!("echo worker {i} did not start within 10 s")),
        }
    }
    Ok(handle)
}

struct Worker {
    index: usize,
    bind_addr: SocketAddr,
    config: Arc<EchoConfig>,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

type Ready = anyhow::Result<(SocketAddr, libc::c_int)>;

impl Worker {
    fn run(self, ready: mpsc::Sender<Ready>) {
        sys::tighten_timer_slack();
        if !self.config.cpus.is_empty() {
            let cpu = self.config.cpus[self.index % self.config.cpus.len()];
            if let Err(e) = sys::pin_current_thread(cpu) {
                let _ = ready.send(Err(anyhow!(e).context(format!("pinning to cpu {cpu}"))));
                return;
            }
        }
        let mut rt = match sys::build_runtime() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(anyhow!(e).context("building monoio runtime")));
                return;
            }
        };
        rt.block_on(self.serve(ready));
    }

    async fn serve(self, ready: mpsc::Sender<Ready>) {
        let bound = sys::bind_reuseport(self.bind_addr, self.index == 0, self.config.takeover)
            .and_then(|l| TcpListener::from_std(l).context("registering the listener"));
        let listener = match bound {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e.context("binding listener")));
                return;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                let _ = ready.send(Err(anyhow!(e).context("reading local address")));
                return;
            }
        };
        let _ = ready.send(Ok((addr, listener.as_raw_fd())));
        drop(ready);

        let body = build_body(self.config.body_size);
        let acceptor = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let shared = Rc::new(WorkerShared {
            config: self.config.clone(),
            h2: H2Shared::new(&body, &self.config.instance, acceptor),
            body,
            rng: RefCell::new(fastrand::Rng::with_seed(fastrand::u64(..) ^ self.index as u64)),
            served: self.served.clone(),
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        });
        let mut consecutive_errors = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    consecutive_errors = 0;
                    let _ = stream.set_nodelay(true);
                    let id = shared.next_id.get();
                    shared.next_id.set(id + 1);
                    shared.conns.borrow_mut().insert(id, stream.as_raw_fd());
                    let shared = shared.clone();
                    monoio::spawn(async move {
                        let _ = match shared.config.mode {
                            EchoMode::Http => serve_http(stream, &shared).await,
                            EchoMode::Tcp => serve_tcp(stream, &shared).await,
                        };
                        shared.conns.borrow_mut().remove(&id);
                    });
                }
                Err(_) if self.stop.load(Ordering::Relaxed) => break,
                Err(_) => {
                    // EMFILE and friends: back off briefly instead of spinning; give up only
                    // if the listener itself is broken.
                    consecutive_errors += 1;
                    if consecutive_errors > 1000 {
                        break;
                    }
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        // Wake every connection blocked in read so its task ends and closes its socket.
        for &fd in shared.conns.borrow().values() {
            // SAFETY: the fd belongs to a live connection task of this thread (entries are
            // removed before the stream is dropped); shutdown does not close it.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while !shared.conns.borrow().is_empty() && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// One worker's state, shared by its connection tasks (HTTP/1 here, HTTP/2 in `echo_h2`).
pub(crate) struct WorkerShared {
    pub(crate) config: Arc<EchoConfig>,
    body: Vec<u8>,
    /// Jitter and error injection; one per thread, so no shared state is touched per request.
    rng: RefCell<fastrand::Rng>,
    pub(crate) served: Arc<AtomicU64>,
    conns: RefCell<HashMap<u64, libc::c_int>>,
    next_id: Cell<u64>,
    pub(crate) h2: H2Shared,
}

impl WorkerShared {
    /// This response's delay: the configured one, with uniform jitter.
    pub(crate) fn configured_delay(&self) -> Duration {
        let cfg = &self.config;
        if cfg.delay_jitter.is_zero() {
            return cfg.delay;
        }
        let j = cfg.delay_jitter.as_nanos() as f64;
        let offset = (self.rng.borrow_mut().f64() * 2.0 - 1.0) * j;
        let d = cfg.delay.as_nanos() as f64 + offset;
        Duration::from_nanos(d.max(0.0) as u64)
    }

    /// Whether this response is one of the configured error fraction.
    pub(crate) fn roll_error(&self) -> bool {
        self.config.error_rate > 0.0 && self.rng.borrow_mut().f64() < self.config.error_rate
    }
}

fn build_body(size: usize) -> Vec<u8> {
    const PATTERN: &[u8] = b"ringmesh-echo 0123456789abcdefghijklmnopqrstuvwxyz\n";
    PATTERN.iter().copied().cycle().take(size).collect()
}

/// Reads more bytes onto the end of `buf` (growing it if full). Returns the buffer and the
/// number of bytes read; 0 means the peer closed.
pub(crate) async fn read_more<S: AsyncReadRent>(stream: &mut S, mut buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().max(8192));
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
    (res, slice.into_inner())
}

async fn serve_tcp(mut stream: TcpStream, shared: &WorkerShared) -> std::io::Result<()> {
    shared.served.fetch_add(1, Ordering::Relaxed);
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        let (res, b) = stream.write_all(b).await;
        res?;
        buf = b;
    }
}

/// What the path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    Status(u16),
    Delay(u64),
    Headers,
    BadStatus,
}

pub(crate) fn classify_path(path: &str) -> Special {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path == "/headers" {
        return Special::Headers;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => Special::Status(c),
            _ => Special::BadStatus,
        };
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        return match ms.parse::<u64>() {
            Ok(ms) => Special::Delay(ms.min(MAX_DELAY.as_millis() as u64)),
            Err(_) => Special::BadStatus,
        };
    }
    Special::None
}

/// Everything about a parsed request head that outlives the read buffer it was parsed from.
struct RequestInfo {
    head_len: usize,
    special: Special,
    is_head: bool,
    echo_body: bool,
    keep_alive: bool,
    expect_continue: bool,
    framing: BodyFraming,
}

enum Parsed {
    Complete(RequestInfo),
    Partial,
    Invalid(u16),
}

fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let method = req.method.unwrap_or("");
            let path = req.path.unwrap_or("/");
            let version = req.version.unwrap_or(1);
            let framing = match http1::request_framing(req.headers) {
                Ok(f) => f,
                Err(_) => return Parsed::Invalid(400),
            };
            Parsed::Complete(RequestInfo {
                head_len,
                special: classify_path(path),
                is_head: method == "HEAD",
                echo_body: method == "POST" || method == "PUT",
                keep_alive: http1::keep_alive(version, req.headers),
                expect_continue: http1::header_has_token(req.headers, "expect", "100-continue"),
                framing,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Parsed::Invalid(431),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(431),
        Err(_) => Parsed::Invalid(400),
    }
}

/// Per-connection HTTP/1.1 state: the read buffer with a consumed-prefix offset (compacted
/// only before a read, so pipelined requests are parsed without moving bytes) and the pending
/// output batch.
struct HttpConn<'a, S> {
    stream: S,
    rbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    timer: Option<PreciseTimer>,
    shared: &'a WorkerShared,
}

/// Serves one accepted HTTP connection: TLS first when configured, then HTTP/2 or HTTP/1.1 by
/// the first bytes (see [`crate::echo_h2`]).
async fn serve_http(stream: TcpStream, shared: &Rc<WorkerShared>) -> std::io::Result<()> {
    match &shared.h2.tls {
        Some(acceptor) => echo_h2::serve_tls(stream, acceptor, shared).await,
        None => echo_h2::serve_detected(stream, shared).await,
    }
}

/// Serves HTTP/1.1 on `stream` (plain TCP or TLS); `rbuf` holds bytes already read.
pub(crate) async fn serve_http1_on<S: AsyncReadRent + AsyncWriteRent>(
    stream: S,
    rbuf: Vec<u8>,
    shared: &WorkerShared,
) -> std::io::Result<()> {
    let mut conn = HttpConn {
        stream,
        rbuf,
        pos: 0,
        out: Vec::with_capacity(8192),
        timer: None,
        shared,
    };
    conn.run().await
}

impl<S: AsyncReadRent + AsyncWriteRent> HttpConn<'_, S> {
    async fn run(&mut self) -> std::io::Result<()> {
        loop {
            let parsed = parse_request(&self.rbuf[self.pos..]);
            match parsed {
                Parsed::Partial => {
                    self.flush().await?;
                    if !self.fill().await? {
                        return Ok(());
                    }
                }
                Parsed::Invalid(status) => {
                    self.push_response(status, b"", false, false);
                    self.flush().await?;
                    return Ok(());
                }
                Parsed::Complete(info) => {
                    let received_at = Instant::now();
                    if !self.handle(info, received_at).await? {
                        self.flush().await?;
                        return Ok(());
                    }
                    if self.pos == self.rbuf.len() || self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
            }
        }
    }

    /// Reads more bytes; compacts the consumed prefix first. Returns false on EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos > 0 {
            self.rbuf.drain(..self.pos);
            self.pos = 0;
        }
        let buf = std::mem::take(&mut self.rbuf);
        let (res, buf) = read_more(&mut self.stream, buf).await;
        self.rbuf = buf;
        Ok(res? > 0)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.stream.write_all(out).await;
        out.clear();
        self.out = out;
        res.map(|_| ())
    }

    /// Handles one request whose head is complete at `self.pos`. Returns whether the
    /// connection stays open.
    async fn handle(&mut self, info: RequestInfo, received_at: Instant) -> std::io::Result<bool> {
        let head_start = self.pos;
        let head_copy =
            (info.special == Special::Headers).then(|| self.rbuf[head_start..head_start + info.head_len].to_vec());
        self.pos += info.head_len;

        let body = match self.read_body(&info).await? {
            Ok(body) => body,
            Err(status) => {
                self.push_response(status, b"", false, false);
                return Ok(false);
            }
        };
        self.shared.served.fetch_add(1, Ordering::Relaxed);

        let delay = match info.special {
            Special::Delay(ms) => Duration::from_millis(ms),
            _ => self.configured_delay(),
        };
        if !delay.is_zero() {
            self.flush().await?;
            if self.timer.is_none() {
                self.timer = Some(PreciseTimer::new()?);
            }
            if let Some(t) = self.timer.as_mut() {
                t.sleep_until(received_at + delay).await?;
            }
        }

        let status = match info.special {
            Special::Status(s) => s,
            Special::BadStatus => 400,
            _ if self.shared.roll_error() => 500,
            _ => 200,
        };
        let keep = info.keep_alive;
        if let Some(head) = head_copy {
            self.push_response(status, &head, info.is_head, keep);
        } else if info.echo_body {
            self.push_response(status, &body, info.is_head, keep);
        } else {
            // Borrow the shared body without copying it into a temporary first.
            let shared = self.shared;
            self.push_response(status, &shared.body, info.is_head, keep);
        }
        Ok(keep)
    }

    fn configured_delay(&self) -> Duration {
        self.shared.configured_delay()
    }

    /// Reads the request body per its framing. Returns the body when the method echoes it
    /// (otherwise it is discarded as it arrives), or an error status for the client.
    async fn read_body(&mut self, info: &RequestInfo) -> std::io::Result<Result<Vec<u8>, u16>> {
        let mut body = Vec::new();
        let mut continue_sent = false;
        match info.framing {
            BodyFraming::Empty | BodyFraming::UntilClose => {}
            BodyFraming::Length(n) => {
                if info.echo_body && n > MAX_BODY as u64 {
                    return Ok(Err(413));
                }
                let mut left = n;
                loop {
                    let avail = (self.rbuf.len() - self.pos) as u64;
                    let take = avail.min(left) as usize;
                    if info.echo_body {
                        body.extend_from_slice(&self.rbuf[self.pos..self.pos + take]);
                    }
                    self.pos += take;
                    left -= take as u64;
                    if left == 0 {
                        break;
                    }
                    self.maybe_continue(info, &mut continue_sent).await?;
                    if !self.fill().await? {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
            BodyFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                loop {
                    let mut too_big = false;
                    let consumed = dec.decode(&self.rbuf[self.pos..], |data| {
                        if info.echo_body {
                            if body.len() + data.len() > MAX_BODY {
                                too_big = true;
                            } else {
                                body.extend_from_slice(data);
                            }
                        }
                    });
                    match consumed {
                        Ok(c) => self.pos += c,
                        Err(_) => return Ok(Err(400)),
                    }
                    if too_big {
                        return Ok(Err(413));
                    }
                    if dec.is_done() {
                        break;
                    }
                    self.maybe_continue(info, &mut continue_sent).await?;
                    if !self.fill().await? {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
        Ok(Ok(body))
    }

    /// Sends `100 Continue` once, before waiting for a body the client is holding back.
    async fn maybe_continue(&mut self, info: &RequestInfo, sent: &mut bool) -> std::io::Result<()> {
        if info.expect_continue && !*sent {
            *sent = true;
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.flush().await?;
        }
        Ok(())
    }

    fn push_response(&mut self, status: u16, body: &[u8], head_only: bool, keep_alive: bool) {
        let out = &mut self.out;
        let mut code = itoa::Buffer::new();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(code.format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(http1::reason_phrase(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        let bodyless = status == 204 || status == 304;
        if !bodyless {
            let mut len = itoa::Buffer::new();
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(len.format(body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-ringmesh-instance: ");
        out.extend_from_slice(self.shared.config.instance.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !bodyless {
            out.extend_from_slice(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        assert_eq!(classify_path("/headers"), Special::Headers);
        assert_eq!(classify_path("/headers?x=1"), Special::Headers);
        assert_eq!(classify_path("/status/503"), Special::Status(503));
        assert_eq!(classify_path("/status/99"), Special::BadStatus);
        assert_eq!(classify_path("/status/abc"), Special::BadStatus);
        assert_eq!(classify_path("/delay/20"), Special::Delay(20));
        assert_eq!(classify_path("/delay/999999999"), Special::Delay(60_000));
        assert_eq!(classify_path("/"), Special::None);
    }

    #[test]
    fn config_validation_reports_every_problem() {
        let cfg = EchoConfig {
            workers: 0,
            error_rate: 2.0,
            ..EchoConfig::default()
        };
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("workers") && msg.contains("error-rate"), "{msg}");
    }
}
