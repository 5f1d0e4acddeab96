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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    /// buffer over when it is large or old enough. A request the config's filter leaves out
    /// (a `Telemetry`'s `match.mode` or `filter`) costs one comparison and is not counted.
    pub(crate) fn log(&self, cfg: &AccessLog, line: &Line<'_>) {
        if !cfg.logs(line.conn.is_some(), line.facts.status.get()) {
            return;
        }
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
            Some(f) => append_lines(f, &chunk.bytes),
            None => Err((
                std::io::Error::other("the file could not be opened"),
                bytecount(&chunk.bytes),
            )),
        };
        if let Err((e, lost)) = result {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            stats.lines_lost.fetch_add(lost, Ordering::Relaxed);
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

/// Where the writer appends: a file, cut back after a failed write.
trait Append: std::io::Write {
    /// Drops the last `n` bytes (the torn end of a line a failed write left).
    fn cut(&mut self, n: u64);
}

impl Append for File {
    fn cut(&mut self, n: u64) {
        // Only a regular file has a length to cut: a pipe's or a terminal's torn line stays.
        if let Ok(meta) = self.metadata() {
            if let (true, Some(len)) = (meta.is_file(), meta.len().checked_sub(n)) {
                let _ = self.set_len(len);
            }
        }
    }
}

/// Appends a chunk of whole lines. A write that fails part-way (a full disk) is cut back to the
/// last whole line written, so that the file never holds a torn line for the next write to run
/// into, and the lines that did not make it are counted exactly: the error comes back with how
/// many they are.
fn append_lines(f: &mut impl Append, bytes: &[u8]) -> Result<(), (std::io::Error, u64)> {
    let mut written = 0;
    while written < bytes.len() {
        let err = match f.write(&bytes[written..]) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        let whole = memchr::memrchr(b'\n', &bytes[..written]).map_or(0, |i| i + 1);
        if whole < written {
            f.cut((written - whole) as u64);
        }
        return Err((err, bytecount(&bytes[whole..])));
    }
    Ok(())
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
        Out::Time(t) => write_start_time(*t, tmp),
        Out::Addr(SocketAddr::V4(a)) => {
            write_ipv4(*a.ip(), tmp);
            tmp.push(b':');
            tmp.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
        }
        Out::Addr(a) => {
            let _ = write!(tmp, "{a}");
        }
        Out::Ip(IpAddr::V4(a)) => write_ipv4(*a, tmp),
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

/// An IPv4 address in dotted decimal, without `fmt` (which cost a line more than its escaping;
/// every line has two or three addresses).
fn write_ipv4(a: Ipv4Addr, tmp: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    for (i, octet) in a.octets().into_iter().enumerate() {
        if i > 0 {
            tmp.push(b'.');
        }
        tmp.extend_from_slice(digits.format(octet).as_bytes());
    }
}

/// The start time as Envoy writes it (`2026-12-07T13:29:56.123Z`): the date and time of day
/// formatted once per second on each worker (Envoy caches them the same way), the
/// milliseconds by hand.
fn write_start_time(t: SystemTime, tmp: &mut Vec<u8>) {
    thread_local! {
        /// The last second formatted on this worker, and its text without the `Z`.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            text.clear();
            ringmesh_api::duration::write_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs), false, text);
            text.pop();
            *second = secs;
        }
        tmp.extend_from_slice(text.as_bytes());
    });
    let ms = since.subsec_millis();
    tmp.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
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
///
/// Written by hand, in runs: a line has some twenty values, nearly all with nothing to escape,
/// so each is one scan and one copy rather than a push per byte.
fn text_escape(v: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    for (i, &b) in v.iter().enumerate() {
        if b == b'\\' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(&v[run..i]);
            if b == b'\\' {
                out.extend_from_slice(b"\\\\");
            } else {
                out.extend_from_slice(b"\\x");
                hex(&[b], out);
            }
            run = i + 1;
        }
    }
    out.extend_from_slice(&v[run..]);
}

/// A JSON string; each invalid UTF-8 sequence becomes U+FFFD (as `String::from_utf8_lossy`
/// makes it).
///
/// Written by hand, for the same reason as [`text_escape`]: decoding and re-encoding every
/// character cost the access log more than the rest of its line. A value is nearly always
/// valid UTF-8 with nothing to escape: the standard library's validation (word at a time),
/// then one table-driven scan and one copy.
fn json_string(v: &[u8], out: &mut Vec<u8>) {
    out.reserve(v.len() + 2);
    out.push(b'"');
    if std::str::from_utf8(v).is_ok() {
        json_escape(v, out);
    } else {
        for chunk in v.utf8_chunks() {
            json_escape(chunk.valid().as_bytes(), out);
            if !chunk.invalid().is_empty() {
                out.extend_from_slice(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Bytes JSON requires escaped inside a string, and DEL.
const JSON_ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// Escapes valid UTF-8 into a JSON string's body.
fn json_escape(s: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        if !JSON_ESCAPED[b as usize] {
            continue;
        }
        out.extend_from_slice(&s[run..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                hex(&[b], out);
            }
        }
        run = i + 1;
    }
    out.extend_from_slice(&s[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with room for `room` bytes.
    struct Disk {
        data: Vec<u8>,
        room: usize,
    }

    impl std::io::Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room - self.data.len());
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Append for Disk {
        fn cut(&mut self, n: u64) {
            self.data.truncate(self.data.len() - n as usize);
        }
    }

    #[test]
    fn a_full_disk_keeps_whole_lines_and_counts_the_rest_lost() {
        let chunk = b"line-0001\nline-0002\nline-0003\n";
        // Room for two lines and half of the third: the torn half is cut, one line is lost.
        let mut disk = Disk {
            data: b"old\n".to_vec(),
            room: 4 + 25,
        };
        let (e, lost) = append_lines(&mut disk, chunk).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
        assert_eq!(lost, 1);
        assert_eq!(disk.data, b"old\nline-0001\nline-0002\n");
        // Room for exactly two lines: nothing to cut.
        let mut disk = Disk {
            data: Vec::new(),
            room: 20,
        };
        assert_eq!(append_lines(&mut disk, chunk).unwrap_err().1, 1);
        assert_eq!(disk.data, b"line-0001\nline-0002\n");
        // No room at all: every line lost, the file as it was.
        let mut disk = Disk {
            data: b"old\n".to_vec(),
            room: 4,
        };
        assert_eq!(append_lines(&mut disk, chunk).unwrap_err().1, 3);
        assert_eq!(disk.data, b"old\n");
        // Room enough: all written.
        let mut disk = Disk {
            data: Vec::new(),
            room: 1000,
        };
        assert!(append_lines(&mut disk, chunk).is_ok());
        assert_eq!(disk.data, chunk);
    }

    #[test]
    fn escapes() {
        let mut out = Vec::new();
        json_string(b"a\"b\\c\n\x01\xff", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\c\\n\\u0001\u{fffd}\"");
        let mut out = Vec::new();
        text_escape(b"a\nb\\", &mut out);
        assert_eq!(out, b"a\\x0ab\\\\");
    }

    /// The decoder's definition, character by character: what `json_string` must equal.
    fn json_string_by_char(v: &[u8]) -> String {
        let mut s = String::from("\"");
        for c in String::from_utf8_lossy(v).chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => s.push_str(&format!("\\u{:04x}", c as u32)),
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }

    #[test]
    fn start_time_and_addresses_read_as_fmt_writes_them() {
        for (secs, nanos) in [
            (0, 0),
            (1_796_648_627, 5_000_000),
            (1_796_648_627, 999_999_999),
            (951_782_400, 123_456_789),
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            let mut want = String::new();
            ringmesh_api::duration::write_rfc3339(t, true, &mut want);
            for _ in 0..2 {
                let mut got = Vec::new();
                text_of(&Out::Time(t), &mut got);
                assert_eq!(String::from_utf8(got).unwrap(), want);
            }
        }
        for a in ["0.0.0.0:0", "127.0.0.1:15001", "255.255.255.255:65535", "[::1]:80"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut got = Vec::new();
            text_of(&Out::Addr(a), &mut got);
            assert_eq!(String::from_utf8(got).unwrap(), a.to_string());
            let mut got = Vec::new();
            text_of(&Out::Ip(a.ip()), &mut got);
            assert_eq!(String::from_utf8(got).unwrap(), a.ip().to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn json_string_is_the_lossy_decoding_escaped(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            json_string(&v, &mut out);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), json_string_by_char(&v));
            let mut text = Vec::new();
            text_escape(&v, &mut text);
            proptest::prop_assert!(!text.iter().any(|&b| b < 0x20 || b == 0x7f), "a control byte escaped the text form");
        }
    }
}
