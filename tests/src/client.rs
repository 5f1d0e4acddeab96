//! A raw HTTP/1.1 client for tests: sends exactly the bytes a test gives it (including
//! malformed ones) and parses what comes back, so tests can assert on the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A parsed response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// De-chunked body.
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects with a 10 s read timeout (tests never hang).
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to proxy");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// A client on a connection the caller made (and set timeouts on).
    pub fn on(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends `GET path` with `Host: host` (keep-alive).
    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        self.response().expect("response")
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            return match self.stream.read(&mut tmp) {
                // A signal (io_uring's task-work notification in this process, for one) may
                // interrupt a blocking read; that is not the peer closing.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    true
                }
            };
        }
    }

    /// Reads one response; `None` when the connection closed first.
    pub fn response(&mut self) -> Option<Response> {
        self.response_to(false)
    }

    /// Reads one response to a HEAD request (no body).
    pub fn response_to(&mut self, head_request: bool) -> Option<Response> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Response::new(&mut hs);
        r.parse(&self.buf[..end]).ok()?;
        let mut resp = Response {
            status: r.code?,
            headers: r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect(),
            body: Vec::new(),
        };
        self.buf.drain(..end);
        if head_request || resp.status == 204 || resp.status == 304 || (100..200).contains(&resp.status) {
            return Some(resp);
        }
        if resp.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let (body, _trailers) = self.read_chunked()?;
            resp.body = body;
        } else if let Some(cl) = resp.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < cl {
                if !self.fill() {
                    return None;
                }
            }
            resp.body = self.buf.drain(..cl).collect();
        } else {
            while self.fill() {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// Reads a chunked body, returning payload and trailer lines.
    pub fn read_chunked(&mut self) -> Option<(Vec<u8>, Vec<String>)> {
        let mut body = Vec::new();
        loop {
            let line = self.line()?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                let mut trailers = Vec::new();
                loop {
                    let l = self.line()?;
                    if l.is_empty() {
                        return Some((body, trailers));
                    }
                    trailers.push(l);
                }
            }
            while self.buf.len() < size + 2 {
                if !self.fill() {
                    return None;
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Reads one CRLF-terminated line.
    pub fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).to_string();
                self.buf.drain(..i + 2);
                return Some(l);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads exactly `n` raw bytes.
    pub fn read_exact_bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Everything the peer sends until it closes the connection, or `None` if it is still open
    /// after `within`.
    pub fn read_until_close(&mut self, within: Duration) -> Option<Vec<u8>> {
        self.closed_within(within).then(|| std::mem::take(&mut self.buf))
    }

    /// True when the peer closed the connection (EOF) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let _ = self.stream.set_read_timeout(Some(Duration::from_millis(50)));
        let mut tmp = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// One `GET` on a fresh connection.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    Client::connect(addr).get(host, path)
}

/// A plain `GET` to an admin-style endpoint; returns (status, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nconnection: close\r\n\r\n").as_bytes());
    let r = c.response().expect("admin response");
    (r.status, r.text())
}
