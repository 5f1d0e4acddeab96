//! A scriptable HTTP/1.1 upstream on plain threads: records what the proxy sent and answers
//! with whatever the test asks for — including the faults a proxy must survive (resets, stalls,
//! slow streams, garbage).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A request as the upstream received it.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// De-chunked body.
    pub body: Vec<u8>,
    /// The body as it arrived on the wire: chunk framing and trailers included.
    pub raw_body: Vec<u8>,
    /// Raw chunked trailer lines, if any.
    pub trailers: Vec<String>,
    /// Which accepted connection (0-based) carried it.
    pub connection: usize,
}

impl Recorded {
    /// First value of a header (name lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What the upstream does for a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A response with `content-length`.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A chunked response: each chunk after its delay; then trailers.
    Chunked {
        status: u16,
        chunks: Vec<(Duration, Vec<u8>)>,
        trailers: Vec<(String, String)>,
    },
    /// A body delimited by closing the connection.
    UntilClose { status: u16, body: Vec<u8> },
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// Close the connection without answering.
    Close,
    /// Reset the connection (RST) without answering.
    Reset,
    /// Send these bytes verbatim and close.
    Raw(Vec<u8>),
    /// `101 Switching Protocols`, then echo every byte back until the client closes.
    UpgradeEcho,
    /// Answer with `reply` (keeping the connection open), wait until `go` is set, then end the
    /// connection as `end` says: an upstream dropping an idle keep-alive connection.
    ThenEnd {
        reply: Box<Reply>,
        go: Arc<AtomicBool>,
        end: End,
    },
}

/// How [`Reply::ThenEnd`] ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Close it (FIN).
    Close,
    /// Reset it (RST).
    Reset,
}

impl Reply {
    /// 200 with a text body.
    pub fn ok(body: &str) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }
    /// A status with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: vec![],
            body: Vec::new(),
        }
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync + 'static;

/// A running upstream. Stops (and unblocks its threads) on drop.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (sent back as `x-upstream` on `Full` replies).
    pub name: String,
    /// Every request received, in order.
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Connections this upstream has finished with (closed or reset, by either side).
    pub ended: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .finish()
    }
}

impl Upstream {
    /// An upstream answering every request with `200` and its own name as the body.
    pub fn named(name: &str) -> Upstream {
        let n = name.to_string();
        Upstream::start(name, move |_| Reply::ok(&n))
    }

    /// An upstream answering with `handler`.
    pub fn start(name: &str, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (requests, connections, ended, stop, name) = (
                requests.clone(),
                connections.clone(),
                ended.clone(),
                stop.clone(),
                name.to_string(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let id = connections.fetch_add(1, Ordering::SeqCst);
                            let (requests, handler, name, stop, ended) = (
                                requests.clone(),
                                handler.clone(),
                                name.clone(),
                                stop.clone(),
                                ended.clone(),
                            );
                            thread::spawn(move || {
                                // The socket is closed when `serve_conn` returns.
                                serve_conn(s, id, &name, &*handler, &requests, &stop);
                                ended.fetch_add(1, Ordering::SeqCst);
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
        }
        Upstream {
            addr,
            name: name.to_string(),
            requests,
            connections,
            ended,
            stop,
        }
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Number of requests received so far.
    pub fn count(&self) -> usize {
        self.requests.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_conn(
    mut s: TcpStream,
    id: usize,
    name: &str,
    handler: &Handler,
    requests: &Mutex<Vec<Recorded>>,
    stop: &AtomicBool,
) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut req = match read_request(&mut s, &mut buf, stop) {
            Some(r) => r,
            None => return,
        };
        req.connection = id;
        if let Ok(mut r) = requests.lock() {
            r.push(req.clone());
        }
        let reply = handler(&req);
        if req.method == "HEAD" {
            // A HEAD answer carries the headers of the GET answer but never its body.
            if let Reply::Full { status, headers, body } = reply {
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\nx-upstream: {name}\r\ncontent-length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                if s.write_all(out.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        if !write_reply(&mut s, name, reply, &mut buf) {
            return;
        }
    }
}

fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> bool {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match s.read(&mut tmp) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return false,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head and de-chunked body) from the connection.
pub(crate) fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Recorded> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(s, buf, stop) {
            return None;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..head_end]).ok()?;
    let mut rec = Recorded {
        method: req.method?.to_string(),
        target: req.path?.to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).to_string(),
                )
            })
            .collect(),
        ..Default::default()
    };
    buf.drain(..head_end);
    if rec.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let (body, trailers) = read_chunked_raw(s, buf, stop, &mut rec.raw_body)?;
        rec.body = body;
        rec.trailers = trailers;
    } else if let Some(cl) = rec
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        while buf.len() < cl {
            if !read_more(s, buf, stop) {
                return None;
            }
        }
        rec.body = buf.drain(..cl).collect();
        rec.raw_body = rec.body.clone();
    }
    Some(rec)
}

/// Reads a chunked body; returns the payload and the trailer lines.
pub fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<(Vec<u8>, Vec<String>)> {
    read_chunked_raw(s, buf, stop, &mut Vec::new())
}

/// [`read_chunked`], also appending every byte of the body as received (framing included) to
/// `raw`.
fn read_chunked_raw(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
    raw: &mut Vec<u8>,
) -> Option<(Vec<u8>, Vec<String>)> {
    let mut body = Vec::new();
    // Reads one CRLF-terminated line off the front of `buf`.
    let line = |s: &mut TcpStream, buf: &mut Vec<u8>, raw: &mut Vec<u8>| -> Option<String> {
        let end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if !read_more(s, buf, stop) {
                return None;
            }
        };
        let l = String::from_utf8_lossy(&buf[..end]).to_string();
        raw.extend(buf.drain(..end + 2));
        Some(l)
    };
    loop {
        let size_line = line(s, buf, raw)?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let l = line(s, buf, raw)?;
                if l.is_empty() {
                    return Some((body, trailers));
                }
                trailers.push(l);
            }
        }
        while buf.len() < size.saturating_add(2) {
            if !read_more(s, buf, stop) {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        raw.extend(buf.drain(..size + 2));
    }
}

fn write_reply(s: &mut TcpStream, name: &str, reply: Reply, buf: &mut Vec<u8>) -> bool {
    match reply {
        Reply::Full { status, headers, body } => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nx-upstream: {name}\r\ncontent-length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&body);
            s.write_all(&bytes).is_ok()
        }
        Reply::Chunked {
            status,
            chunks,
            trailers,
        } => {
            let head = format!("HTTP/1.1 {status} X\r\nx-upstream: {name}\r\ntransfer-encoding: chunked\r\n\r\n");
            if s.write_all(head.as_bytes()).is_err() {
                return false;
            }
            for (delay, data) in chunks {
                thread::sleep(delay);
                let mut c = format!("{:x}\r\n", data.len()).into_bytes();
                c.extend_from_slice(&data);
                c.extend_from_slice(b"\r\n");
                if s.write_all(&c).is_err() {
                    return false;
                }
            }
            let mut end = String::from("0\r\n");
            for (k, v) in trailers {
                end.push_str(&format!("{k}: {v}\r\n"));
            }
            end.push_str("\r\n");
            s.write_all(end.as_bytes()).is_ok()
        }
        Reply::UntilClose { status, body } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nx-upstream: {name}\r\n\r\n").into_bytes();
            out.extend_from_slice(&body);
            let _ = s.write_all(&out);
            let _ = s.shutdown(Shutdown::Both);
            false
        }
        Reply::Delay(d, inner) => {
            thread::sleep(d);
            write_reply(s, name, *inner, buf)
        }
        Reply::Close => {
            let _ = s.shutdown(Shutdown::Both);
            false
        }
        Reply::Reset => {
            let sock = socket2::SockRef::from(&*s);
            let _ = sock.set_linger(Some(Duration::ZERO));
            false
        }
        Reply::Raw(bytes) => {
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(Shutdown::Both);
            false
        }
        Reply::ThenEnd { reply, go, end } => {
            if !write_reply(s, name, *reply, buf) {
                return false;
            }
            // Bounded: a test that never says go still ends (after 10 s).
            let _ =
                ringmesh_testkit::eventually(Duration::from_secs(10), "the test's go", || go.load(Ordering::SeqCst));
            if end == End::Reset {
                let _ = socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
            } else {
                let _ = s.shutdown(Shutdown::Both);
            }
            false
        }
        Reply::UpgradeEcho => {
            if s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                .is_err()
            {
                return false;
            }
            let mut pending = std::mem::take(buf);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            loop {
                if !pending.is_empty() && s.write_all(&pending).is_err() {
                    return false;
                }
                pending.clear();
                let mut tmp = [0u8; 4096];
                match s.read(&mut tmp) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(0) | Err(_) => return false,
                    Ok(n) => pending.extend_from_slice(&tmp[..n]),
                }
            }
        }
    }
}
