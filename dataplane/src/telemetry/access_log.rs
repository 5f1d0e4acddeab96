//! Access logs: one line per request, in `spec.telemetry.accessLog`'s format (JSON by
//! default, or text with Envoy's `%FIELD%` operators, both parsed when the config compiled).
//!
//! The worker renders the line into its own buffer ([`AccessLogShard`]) when the request ends.
//! Full buffers — and, every [`FLUSH_EVERY`], any non-empty one — are handed to one writer
//! thread over a bounded channel; the worker never waits for it. A line that does not fit in
//! the worker's buffer (`bufferBytes`), or a buffer the writer's queue has no room for, is
//! dropped and counted (`ringmesh_access_log_dropped_total`), so a slow disk or a full one
//! costs log lines, never latency. The writer appends to the file (or stdout), reopens it on
//! `SIGUSR1` (after logrotate moved it), and counts and logs (rate-limited) what it could not
//! write.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ringmesh_api::access_log::{Field, LogFormat, Part};
use ringmesh_api::snapshot::{AccessLog, Route, Snapshot};

use super::request::{AuthzVerdict, Facts, RequestSide, Value};

/// How long a worker holds lines before handing them to the writer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Buffers handed over at once, at most, per flush: a worker's full buffer goes when it
/// reaches this size.
const HAND_OVER_AT: usize = 32 * 1024;

/// Chunks the writer may have queued (from every worker) before workers drop theirs.
const QUEUE: usize = 256;

/// One worker's pending lines. Only that worker's thread touches it.
#[derive(Default)]
pub(crate) struct AccessLogShard {
    buf: RefCell<Vec<u8>>,
    /// The file the pending lines are for.
    path: RefCell<Option<Arc<Path>>>,
    last_flush: Cell<Option<Instant>>,
    /// Lines written to the buffer.
    pub(crate) lines: Cell<u64>,
    /// Lines dropped: the buffer or the writer's queue was full.
    pub(crate) dropped: Cell<u64>,
}

impl std::fmt::Debug for AccessLogShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogShard")
            .field("lines", &self.lines.get())
            .field("dropped", &self.dropped.get())
            .finish()
    }
}

/// What a line is made of.
pub(crate) struct Line<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) facts: &'a Facts,
    pub(crate) route: Option<&'a Route>,
    pub(crate) req: &'a RequestSide<'a>,
    pub(crate) conn: Option<&'a crate::tls::InboundConn>,
}

impl AccessLogShard {
    /// Renders one request's line into the buffer (or counts it dropped), and hands the
    /// buffer over when it is large or old enough.
    pub(crate) fn log(&self, cfg: &AccessLog, line: &Line<'_>) {
        let mut buf = self.buf.borrow_mut();
        {
            let mut path = self.path.borrow_mut();
            if path.as_deref() != Some(cfg.path.as_path()) {
                // The file changed with the config: what is pending goes to the old one.
                if !buf.is_empty() {
                    self.hand_over(&mut buf, path.clone());
                }
                *path = Some(Arc::from(cfg.path.as_path()));
            }
        }
        let start = buf.len();
        render(&cfg.format, line, &mut buf);
        buf.push(b'\n');
        if buf.len() > cfg.buffer_bytes {
            buf.truncate(start);
            self.dropped.set(self.dropped.get() + 1);
        } else {
            self.lines.set(self.lines.get() + 1);
        }
        let now = Instant::now();
        let old = self
            .last_flush
            .get()
            .is_none_or(|t| now.duration_since(t) >= FLUSH_EVERY);
        if buf.len() >= HAND_OVER_AT || old {
            let path = self.path.borrow().clone();
            self.hand_over(&mut buf, path);
            self.last_flush.set(Some(now));
        }
    }

    /// Hands pending lines over if they waited long enough (called by the worker's timer, so
    /// lines of an idle proxy do not wait for the next request).
    pub(crate) fn flush_if_old(&self) {
        let now = Instant::now();
        if self
            .last_flush
            .get()
            .is_some_and(|t| now.duration_since(t) < FLUSH_EVERY)
        {
            return;
        }
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            let path = self.path.borrow().clone();
            self.hand_over(&mut buf, path);
        }
        self.last_flush.set(Some(now));
    }

    fn hand_over(&self, buf: &mut Vec<u8>, path: Option<Arc<Path>>) {
        let Some(path) = path else {
            buf.clear();
            return;
        };
        let lines = bytecount(buf);
        let chunk = Chunk {
            path,
            bytes: std::mem::replace(buf, Vec::with_capacity(HAND_OVER_AT)),
        };
        if writer().tx.try_send(chunk).is_err() {
            self.dropped.set(self.dropped.get() + lines);
            self.lines.set(self.lines.get().saturating_sub(lines));
        }
    }
}

fn bytecount(buf: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', buf).count() as u64
}

/// Lines for one file.
struct Chunk {
    path: Arc<Path>,
    bytes: Vec<u8>,
}

/// The process's one writer thread.
struct Writer {
    tx: flume::Sender<Chunk>,
}

/// What the writer could not do, for `/stats/prometheus`.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Writes (or opens) that failed: those lines are lost.
    pub write_errors: AtomicU64,
    /// Lines lost with them.
    pub lines_lost: AtomicU64,
    /// Reopens done after `SIGUSR1`.
    pub reopens: AtomicU64,
}

/// Set by `SIGUSR1`: the writer reopens its files before the next write.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// The writer's counters.
pub fn writer_stats() -> &'static WriterStats {
    static STATS: OnceLock<WriterStats> = OnceLock::new();
    STATS.get_or_init(WriterStats::default)
}

/// Asks the writer to reopen its files (the control thread calls this on `SIGUSR1`).
pub fn reopen() {
    REOPEN.store(true, Ordering::Relaxed);
}

fn writer() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, rx) = flume::bounded::<Chunk>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("ringmesh-access-log".into())
            .spawn(move || write_loop(rx));
        if let Err(e) = spawned {
            // Without the thread, chunks fill the queue and are counted as dropped.
            tracing::error!("access log writer thread could not start: {e}");
        }
        Writer { tx }
    })
}

fn write_loop(rx: flume::Receiver<Chunk>) {
    let mut files: Vec<(Arc<Path>, Option<File>)> = Vec::new();
    let mut last_error_log: Option<Instant> = None;
    let stats = writer_stats();
    while let Ok(chunk) = rx.recv() {
        if REOPEN.swap(false, Ordering::Relaxed) {
            files.clear();
            stats.reopens.fetch_add(1, Ordering::Relaxed);
        }
        let slot = match files.iter().position(|(p, _)| *p == chunk.path) {
            Some(i) => i,
            None => {
                files.push((chunk.path.clone(), open(&chunk.path)));
                files.len() - 1
            }
        };
        let file = &mut files[slot].1;
        if file.is_none() {
            *file = open(&chunk.path);
        }
        let result = match file {
            Some(f) => f.write_all(&chunk.bytes),
            None => Err(std::io::Error::other("the file could not be opened")),
        };
        if let Err(e) = result {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            stats.lines_lost.fetch_add(bytecount(&chunk.bytes), Ordering::Relaxed);
            // Opened again at the next chunk: a disk that had no room may have room later.
            *file = None;
            let now = Instant::now();
            if last_error_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                last_error_log = Some(now);
                tracing::warn!(path = %chunk.path.display(), "access log lines lost: {e}");
            }
        }
    }
}

fn open(path: &Path) -> Option<File> {
    if path == Path::new("/dev/stdout") {
        // Not reopened by path: a container's stdout may not be reachable through /dev.
        return std::os::fd::AsFd::as_fd(&std::io::stdout())
            .try_clone_to_owned()
            .ok()
            .map(File::from);
    }
    match std::fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), "access log file could not be opened: {e}");
            None
        }
    }
}

// ---------------------------------------------------------------------------------- render

/// A field's value, borrowed or small.
enum Out<'a> {
    None,
    Bytes(Value<'a>),
    Str(&'a str),
    Num(u64),
    Time(SystemTime),
    Addr(std::net::SocketAddr),
    Ip(std::net::IpAddr),
    Spiffe(&'a str),
    Authz(&'static str, Option<&'a str>),
}

fn value<'a>(field: &Field, l: &'a Line<'a>) -> Out<'a> {
    let f = l.facts;
    let cluster = f.cluster.get().map(|c| l.snapshot.cluster(c));
    match field {
        Field::StartTime => Out::Time(f.start_wall()),
        Field::Req(names) => names.iter().find_map(|n| l.req.get(n)).map_or(Out::None, Out::Bytes),
        Field::Protocol => Out::Str(f.protocol.get().envoy_name()),
        Field::ResponseCode => Out::Num(u64::from(f.status.get())),
        Field::ResponseFlags => Out::Str(f.flag().unwrap_or("-")),
        Field::ResponseCodeDetails => f.details_text().map_or(Out::None, Out::Str),
        Field::ConnectionTerminationDetails | Field::UpstreamLocalAddress | Field::UpstreamPeerUriSan => Out::None,
        Field::UpstreamTransportFailureReason => match f.flag() {
            Some("UF") => Out::Str("connection_failure"),
            _ => Out::None,
        },
        Field::BytesReceived => Out::Num(f.bytes_received.get()),
        Field::BytesSent => Out::Num(f.bytes_sent.get()),
        Field::Duration => Out::Num(f.started.elapsed().as_millis() as u64),
        Field::UpstreamServiceTime => f.upstream_service_ms().map_or(Out::None, Out::Num),
        Field::GrpcStatus => f.grpc_status.get().map_or(Out::None, |c| Out::Num(u64::from(c))),
        Field::UpstreamHost => match (cluster, f.endpoint.get()) {
            (Some(c), Some(e)) => c.endpoints.get(e as usize).map_or(Out::None, |e| Out::Addr(e.address)),
            _ => Out::None,
        },
        Field::UpstreamCluster => cluster.map_or(Out::None, |c| Out::Str(&c.name)),
        Field::DownstreamLocalAddress => l.conn.map_or(Out::None, |c| Out::Addr(c.local)),
        Field::DownstreamRemoteAddress => Out::Addr(l.req.peer),
        Field::DownstreamRemoteAddressWithoutPort => Out::Ip(l.req.peer.ip()),
        Field::RequestedServerName => l.conn.and_then(|c| c.sni.as_deref()).map_or(Out::None, Out::Str),
        Field::RouteName => l.route.map_or(Out::None, |r| Out::Str(&r.name)),
        Field::DownstreamPeerUriSan => l
            .conn
            .and_then(|c| c.identity.as_ref())
            .map_or(Out::None, |id| Out::Spiffe(id.principal())),
        // Rendered by `field_text` from a copy of the context (it lives in a `Cell`).
        Field::TraceId => Out::None,
        Field::Authz => match f.authz.get() {
            None => Out::None,
            Some(AuthzVerdict::Allowed) => Out::Authz("allow", None),
            Some(AuthzVerdict::Audited(p)) => Out::Authz("audit", Some(l.snapshot.security.authz.policy_name(p))),
            Some(AuthzVerdict::Denied(p)) => Out::Authz("deny", Some(l.snapshot.security.authz.policy_name(p))),
        },
        Field::Overhead => f.overhead_us().map_or(Out::None, Out::Num),
    }
}

/// Writes a value's text (unescaped) into `tmp`, which is reused.
fn text_of(v: &Out<'_>, tmp: &mut Vec<u8>) -> bool {
    use std::io::Write;
    tmp.clear();
    match v {
        Out::None => return false,
        Out::Bytes(Value::One(b)) => tmp.extend_from_slice(b),
        Out::Bytes(Value::Joined(a, b)) => {
            tmp.extend_from_slice(a);
            tmp.push(b'?');
            tmp.extend_from_slice(b);
        }
        Out::Str(s) => tmp.extend_from_slice(s.as_bytes()),
        Out::Num(n) => {
            let mut b = itoa::Buffer::new();
            tmp.extend_from_slice(b.format(*n).as_bytes());
        }
        Out::Time(t) => {
            let mut s = String::with_capacity(24);
            ringmesh_api::duration::write_rfc3339(*t, true, &mut s);
            tmp.extend_from_slice(s.as_bytes());
        }
        Out::Addr(a) => {
            let _ = write!(tmp, "{a}");
        }
        Out::Ip(a) => {
            let _ = write!(tmp, "{a}");
        }
        Out::Spiffe(p) => {
            tmp.extend_from_slice(b"spiffe://");
            tmp.extend_from_slice(p.as_bytes());
        }
        Out::Authz(what, policy) => {
            tmp.extend_from_slice(what.as_bytes());
            if let Some(p) = policy {
                tmp.push(b' ');
                tmp.extend_from_slice(p.as_bytes());
            }
        }
    }
    true
}

fn hex(b: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        out.push(HEX[(x >> 4) as usize]);
        out.push(HEX[(x & 0xf) as usize]);
    }
}

/// The value of a field, with a trace id rendered from the request's context.
fn field_text(field: &Field, l: &Line<'_>, tmp: &mut Vec<u8>) -> bool {
    if let Field::TraceId = field {
        return match l.facts.trace.get() {
            Some(t) => {
                tmp.clear();
                hex(&t.trace_id, tmp);
                true
            }
            None => false,
        };
    }
    text_of(&value(field, l), tmp)
}

/// Renders one line (without its newline).
pub(crate) fn render(format: &LogFormat, l: &Line<'_>, out: &mut Vec<u8>) {
    let mut tmp = Vec::with_capacity(64);
    match format {
        LogFormat::Text(parts) => render_text(parts, l, out, &mut tmp),
        LogFormat::Json(fields) => {
            out.push(b'{');
            for (i, (key, parts)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_string(key.as_bytes(), out);
                out.push(b':');
                match parts.as_slice() {
                    [Part::Field { field, max_len }] => {
                        if field_text(field, l, &mut tmp) {
                            if let Some(n) = max_len {
                                tmp.truncate(*n);
                            }
                            if field.is_numeric() {
                                out.extend_from_slice(&tmp);
                            } else {
                                json_string(&tmp, out);
                            }
                        } else {
                            out.extend_from_slice(b"null");
                        }
                    }
                    parts => {
                        let mut s = Vec::new();
                        render_text(parts, l, &mut s, &mut tmp);
                        json_string(&s, out);
                    }
                }
            }
            out.push(b'}');
        }
    }
}

fn render_text(parts: &[Part], l: &Line<'_>, out: &mut Vec<u8>, tmp: &mut Vec<u8>) {
    for p in parts {
        match p {
            Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
            Part::Field { field, max_len } => {
                if field_text(field, l, tmp) {
                    let n = max_len.unwrap_or(usize::MAX).min(tmp.len());
                    text_escape(&tmp[..n], out);
                } else {
                    out.push(b'-');
                }
            }
        }
    }
}

/// Control bytes (and `\`) escaped, so a value cannot forge a line.
fn text_escape(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                out.extend_from_slice(b"\\x");
                hex(&[b], out);
            }
            b => out.push(b),
        }
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD.
fn json_string(v: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.extend_from_slice(b"\\u00");
                hex(&[c as u8], out);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut out = Vec::new();
        json_string(b"a\"b\\c\n\x01\xff", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\c\\n\\u0001\u{fffd}\"");
        let mut out = Vec::new();
        text_escape(b"a\nb\\", &mut out);
        assert_eq!(out, b"a\\x0ab\\\\");
    }
}
