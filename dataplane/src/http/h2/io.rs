//! The byte stream under `h2`, and telling HTTP/2 from HTTP/1.1 by the first bytes.
//!
//! `h2` reads and writes through tokio's poll-based traits; monoio's sockets pass owned
//! buffers. `monoio-compat`'s `StreamWrapper` bridges the two (the pairing DESIGN.md checked),
//! and [`Inbound`] replays the bytes the connection loop already read while deciding the
//! protocol (so the HTTP/1 path reads no byte twice and the HTTP/2 path loses none) and meters
//! the client's frames for floods `h2` does not bound by itself.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Buffer sizes of the compat wrapper, each way. A frame larger than this is read or written
/// in several calls; 16 KiB is HTTP/2's default largest frame.
const COMPAT_BUFFER: usize = 16 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// The whole HTTP/2 preface: h2c with prior knowledge.
    H2,
    /// Anything else: HTTP/1.x (malformed input is answered by the HTTP/1 parser).
    Http1,
    /// A strict prefix of the preface, or nothing yet: read more.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub(crate) fn sniff(buf: &[u8]) -> Sniff {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        Sniff::Http1
    } else if n == PREFACE.len() {
        Sniff::H2
    } else {
        Sniff::NeedMore
    }
}

/// A socket as `h2` drives it: `monoio-compat`'s wrapper, with writes sent directly.
pub(crate) type Compat = DirectWrite<StreamWrapper<TcpStream>>;

/// Wraps a socket for `h2`.
pub(crate) fn compat(stream: TcpStream) -> Compat {
    let fd = stream.as_raw_fd();
    DirectWrite {
        inner: StreamWrapper::new_with_buffer_size(stream, COMPAT_BUFFER, COMPAT_BUFFER),
        fd,
        ring_busy: false,
    }
}

/// Writes with one non-blocking `send(2)` first, and through the wrapped stream (the ring)
/// only when the socket buffer is full.
///
/// Hand-written on the hot path for the reason `http::send` gives: under io_uring every write
/// of `monoio-compat`'s wrapper is a boxed future, a copy, a submission and a wake-up on
/// completion, for a send the kernel finishes at once whenever the socket has room — which,
/// for `h2`'s frames on loopback or a LAN, is always. `h2` flushes after its writes; a write
/// that went to the ring is waited for in the next flush, and until then every write follows
/// it through the ring, so bytes never overtake each other.
#[derive(Debug)]
pub(crate) struct DirectWrite<T> {
    inner: T,
    fd: RawFd,
    /// A write went through `inner` and was not flushed yet.
    ring_busy: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for DirectWrite<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DirectWrite<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.ring_busy || buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call, and `fd`
        // is the socket `inner` owns, open for as long as `self` lives.
        let n = unsafe {
            libc::send(
                self.fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Poll::Ready(Ok(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                self.ring_busy = true;
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            _ => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ring_busy {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.ring_busy = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Frames a client may send in one second that demand an answer or carry nothing (SETTINGS
/// and PING that are not acknowledgements, empty DATA frames that do not end a stream). A
/// legitimate client sends a handful; a flood (CVE-2019-9512, -9515, -9518) sends thousands.
pub(crate) const FLOOD_BUDGET: u32 = 1000;

/// Set when a client's frames exceed [`FLOOD_BUDGET`]; the connection's task is woken to end
/// the connection with `GOAWAY(ENHANCE_YOUR_CALM)`.
#[derive(Debug, Default)]
pub(crate) struct Flood {
    flagged: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Flood {
    /// Resolves once the client flooded.
    pub(crate) fn poll_flagged(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flagged.get() {
            return Poll::Ready(());
        }
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn flag(&self) {
        self.flagged.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Walks frame headers in the bytes a client sends (payloads are skipped, not read) and counts
/// the frames that make a flood.
#[derive(Debug)]
struct FrameMeter {
    /// Bytes to pass over before the next frame header (the preface first).
    skip: usize,
    head: [u8; 9],
    have: usize,
    window_start: Instant,
    in_window: u32,
}

impl FrameMeter {
    fn new() -> Self {
        FrameMeter {
            skip: PREFACE.len(),
            head: [0; 9],
            have: 0,
            window_start: Instant::now(),
            in_window: 0,
        }
    }

    /// Accounts for `bytes`; true when the budget is exceeded.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let counted = self.count(bytes);
        if counted == 0 {
            return false;
        }
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.in_window = 0;
        }
        self.in_window = self.in_window.saturating_add(counted);
        self.in_window > FLOOD_BUDGET
    }

    /// Walks the frame headers in `bytes`; returns how many flood frames they start.
    fn count(&mut self, mut bytes: &[u8]) -> u32 {
        let mut counted = 0u32;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let len = (usize::from(self.head[0]) << 16) | (usize::from(self.head[1]) << 8) | usize::from(self.head[2]);
            let (kind, flags) = (self.head[3], self.head[4]);
            let flood = match kind {
                // SETTINGS and PING that are not ACKs must be answered.
                0x4 | 0x6 => flags & 0x1 == 0,
                // DATA with nothing in it that does not end the stream.
                0x0 => len == 0 && flags & 0x1 == 0,
                _ => false,
            };
            counted += u32::from(flood);
            self.skip = len;
        }
        counted
    }
}

/// A client connection as `h2` reads it: the bytes already read while sniffing first
/// (`tls::io::Replay`), every frame header metered for floods. Once the client flooded,
/// nothing more is read from it.
#[derive(Debug)]
pub(crate) struct Inbound<T> {
    inner: crate::tls::io::Replay<T>,
    meter: FrameMeter,
    flood: Rc<Flood>,
}

impl<T> Inbound<T> {
    pub(crate) fn new(prefix: Bytes, inner: T, flood: Rc<Flood>) -> Self {
        Inbound {
            inner: crate::tls::io::Replay::new(prefix, inner),
            meter: FrameMeter::new(),
            flood,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Inbound<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flood.flagged.get() {
            // Stop taking the flood in; the connection's task sends GOAWAY and closes.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.meter.feed(&buf.filled()[before..]) {
            this.flood.flag();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Inbound<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// For the fuzz target and property tests: counts the flood frames in a client's bytes fed
/// whole and fed in pieces cut at `cuts`; the two counts must agree.
#[doc(hidden)]
pub fn flood_frames_whole_and_in_pieces(bytes: &[u8], cuts: &[usize]) -> (u32, u32) {
    let whole = FrameMeter::new().count(bytes);
    let mut m = FrameMeter::new();
    let (mut last, mut pieces) = (0, 0);
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let c = c.clamp(last, bytes.len());
        pieces += m.count(&bytes[last..c]);
        last = c;
    }
    (whole, pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_decides() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/2"), Sniff::NeedMore);
        assert_eq!(sniff(PREFACE), Sniff::H2);
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(sniff(&more), Sniff::H2);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"PRI * HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"P"), Sniff::NeedMore);
    }

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![0, (payload >> 8) as u8, payload as u8, kind, flags, 0, 0, 0, 1];
        f.resize(9 + payload, 0xee);
        f
    }

    #[test]
    fn the_meter_counts_floods_across_read_boundaries() {
        let mut m = FrameMeter::new();
        assert!(!m.feed(PREFACE));
        // Requests, data, ACKs and WINDOW_UPDATEs are not a flood, however many.
        let mut normal = Vec::new();
        for _ in 0..2000 {
            normal.extend(frame(0x1, 0x5, 30));
            normal.extend(frame(0x0, 0x0, 100));
            normal.extend(frame(0x4, 0x1, 0));
            normal.extend(frame(0x8, 0x0, 4));
        }
        for piece in normal.chunks(7) {
            assert!(!m.feed(piece));
        }
        let mut pings = Vec::new();
        for _ in 0..FLOOD_BUDGET {
            pings.extend(frame(0x6, 0x0, 8));
        }
        assert!(!m.feed(&pings), "exactly the budget is allowed");
        assert!(m.feed(&frame(0x0, 0x0, 0)), "one more frame (an empty DATA) is a flood");
    }

    proptest::proptest! {
        #[test]
        fn counting_does_not_depend_on_read_boundaries(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(0usize..2048, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut input = PREFACE.to_vec();
            input.extend_from_slice(&bytes);
            let (whole, pieces) = flood_frames_whole_and_in_pieces(&input, &cuts);
            proptest::prop_assert_eq!(whole, pieces);
        }
    }
}
