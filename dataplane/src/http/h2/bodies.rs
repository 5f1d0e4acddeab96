//! Bodies across protocols: HTTP/2 streams to HTTP/2 streams or HTTP/1.1 sockets and back,
//! with trailers, under flow control.
//!
//! Back-pressure is end to end because no byte is acknowledged before the next hop took it:
//! DATA received from an HTTP/2 peer is released back to that peer's window only after it was
//! handed on (queued in the other stream within *its* window, or written to an HTTP/1.1
//! socket), and HTTP/2 DATA is sent only as the receiving stream grants capacity. A slow reader
//! therefore stalls its sender after at most one window per hop; nothing here buffers without
//! bound. Every wait is bounded by the idle timeout.
//!
//! The request body of a call from an HTTP/2 client is kept for retries by [`ReplayBody`]: the
//! chunks already forwarded stay referenced (no copy) up to [`HOLD_MAX`] bytes, so a retry sends
//! them again; a longer body is never replayed.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::headers::{encode_trailers, parse_trailers};
use crate::http::body::{read_more, BodyError};
use crate::http::h1::{write_chunk_header, BodyFraming, ChunkedDecoder, ChunkedLimits, CRLF, LAST_CHUNK};

/// Request body bytes kept for a retry. Envoy buffers up to its connection buffer limit; a
/// gRPC unary call or a JSON body fits well under this.
pub(crate) const HOLD_MAX: usize = 64 * 1024;

// The helpers below that wrap a future are structs polled by hand, not `async fn`s: an
// `async fn` keeps its argument in one slot and the pinned local it moves into in another
// (rustc does not overlap a moved-from local), so each layer would double the future it
// wraps, and the call's task is moved whole when it is spawned.

pin_project_lite::pin_project! {
    /// `monoio::time::timeout`, without arming a timer when the future is ready at its first
    /// poll (DATA already received, window already open): most waits on the request path end
    /// at once, and a timer costs a clock read and a wheel insertion and removal each. See
    /// [`within`].
    pub(crate) struct Within<F> {
        #[pin]
        fut: F,
        dur: Duration,
        #[pin]
        timer: Option<monoio::time::Sleep>,
    }
}

/// The wait of [`within`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Awaits `fut` for at most `dur`, counted from its first poll that found it not ready.
pub(crate) fn within<F: Future>(dur: Duration, fut: F) -> Within<F> {
    Within { fut, dur, timer: None }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if this.timer.is_none() {
            this.timer.set(Some(monoio::time::sleep(*this.dur)));
        }
        match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// A future bounded by an optional deadline: see [`until`].
    pub(crate) struct Until<F> {
        #[pin]
        fut: F,
        #[pin]
        timer: Option<monoio::time::Sleep>,
    }
}

/// Awaits `fut` until `deadline`, if there is one (`None` when it passed first). One future
/// for both cases: a `match` awaiting `fut` bare in one arm and under a timeout in the other
/// would give the caller's future room for `fut` twice.
pub(crate) fn until<F: Future>(deadline: Option<Instant>, fut: F) -> Until<F> {
    Until {
        fut,
        timer: deadline.map(|d| monoio::time::sleep_until(d.into())),
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

/// Why a body did not reach its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// The sending side failed (reset, closed early, malformed, silent past the idle timeout).
    Source,
    /// The receiving side failed (reset, closed).
    Sink,
    /// The receiving side granted no flow-control window for the idle timeout (a zero-window
    /// stall).
    Stalled,
}

/// One piece of a body, as a sink takes it.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Payload; `fresh` bytes must be released to the sender's window once forwarded.
    Data { bytes: Bytes, fresh: bool },
    /// The trailer section (ends the body).
    Trailers(HeaderMap),
    /// The end, without trailers.
    End,
}

/// The request body of a call from an HTTP/2 client, for all of its tries.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    recv: RecvStream,
    held: Vec<Bytes>,
    held_len: usize,
    /// Whether every byte read so far is held (a retry can send the whole body again). Shared
    /// with the try, which asks while its body pump still borrows this.
    replayable: Rc<Cell<bool>>,
    /// Trailers read from the client, kept for a retry.
    trailers: Option<HeaderMap>,
    /// The client's side of the body has ended.
    ended: bool,
}

/// Where one try stands in a [`ReplayBody`].
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    next_held: usize,
    done: bool,
}

impl ReplayBody {
    pub(crate) fn new(recv: RecvStream) -> Self {
        let ended = recv.is_end_stream();
        ReplayBody {
            recv,
            held: Vec::new(),
            held_len: 0,
            replayable: Rc::new(Cell::new(true)),
            trailers: None,
            ended,
        }
    }

    /// No body at all (the request's HEADERS ended the stream).
    pub(crate) fn is_empty(&self) -> bool {
        self.ended && self.held.is_empty() && self.trailers.is_none()
    }

    /// Whether another try can send the whole body again.
    pub(crate) fn replayable(&self) -> bool {
        self.replayable.get()
    }

    /// The replayable flag, readable while a pump borrows the body.
    pub(crate) fn replayable_flag(&self) -> Rc<Cell<bool>> {
        self.replayable.clone()
    }

    /// Whether the whole body has arrived from the client.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// The next piece for the try at `cursor`: held pieces first, then what the client sends.
    pub(crate) async fn next(&mut self, cursor: &mut Cursor, idle: Duration) -> Result<Piece, Broken> {
        if cursor.done {
            return Ok(Piece::End);
        }
        if cursor.next_held < self.held.len() {
            let bytes = self.held[cursor.next_held].clone();
            cursor.next_held += 1;
            return Ok(Piece::Data { bytes, fresh: false });
        }
        if self.ended {
            cursor.done = true;
            return Ok(match &self.trailers {
                Some(t) => Piece::Trailers(t.clone()),
                None => Piece::End,
            });
        }
        let next = within(idle, self.recv.data()).await.map_err(|_| Broken::Source)?;
        match next {
            Some(Ok(bytes)) => {
                if self.replayable.get() {
                    if self.held_len + bytes.len() <= HOLD_MAX {
                        self.held_len += bytes.len();
                        self.held.push(bytes.clone());
                        cursor.next_held = self.held.len();
                    } else {
                        self.replayable.set(false);
                        self.held = Vec::new();
                        self.held_len = 0;
                        cursor.next_held = 0;
                    }
                }
                if self.recv.is_end_stream() {
                    // END_STREAM came with this DATA: no trailers follow.
                    self.ended = true;
                }
                Ok(Piece::Data { bytes, fresh: true })
            }
            Some(Err(_)) => Err(Broken::Source),
            None => {
                let trailers = within(idle, self.recv.trailers())
                    .await
                    .map_err(|_| Broken::Source)?
                    .map_err(|_| Broken::Source)?;
                self.ended = true;
                cursor.done = true;
                self.trailers = trailers.clone();
                Ok(match trailers {
                    Some(t) => Piece::Trailers(t),
                    None => Piece::End,
                })
            }
        }
    }

    /// Whether the piece just taken at `cursor` was the body's last and no trailers follow (it
    /// then goes out with END_STREAM, and the cursor is done).
    fn ends_after(&self, cursor: &mut Cursor) -> bool {
        let last = self.ended && self.trailers.is_none() && cursor.next_held >= self.held.len();
        if last {
            cursor.done = true;
        }
        last
    }

    /// Gives `n` forwarded bytes back to the client's window.
    pub(crate) fn release(&mut self, n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
    }
}

/// Sends `data` on an HTTP/2 stream as the peer grants capacity; `end` ends the stream with
/// the last frame.
pub(crate) async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    idle: Duration,
) -> Result<(), Broken> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(|_| Broken::Sink);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        // A receiver that grants no window for the idle timeout stalls the stream.
        let granted = within(idle, poll_fn(|cx| send.poll_capacity(cx)))
            .await
            .map_err(|_| Broken::Stalled)?;
        let n = match granted {
            Some(Ok(n)) => n.min(data.len()),
            _ => return Err(Broken::Sink),
        };
        if n == 0 {
            continue;
        }
        let piece = data.split_to(n);
        send.send_data(piece, end && data.is_empty())
            .map_err(|_| Broken::Sink)?;
    }
    Ok(())
}

/// Streams a client's body (from its cursor) into an HTTP/2 stream, trailers included.
pub(crate) async fn replay_to_h2(
    body: &mut ReplayBody,
    cursor: &mut Cursor,
    send: &mut SendStream<Bytes>,
    idle: Duration,
) -> Result<(), Broken> {
    let mut first = true;
    loop {
        match body.next(cursor, idle).await? {
            Piece::Data { bytes, fresh } => {
                let n = bytes.len();
                let last = body.ends_after(cursor);
                if std::mem::take(&mut first) && n <= HOLD_MAX {
                    // A stream `send_request` just queued has no capacity until the
                    // connection's task opened it: waiting for capacity would send the head and
                    // the first DATA in two writes, a task hop apart (a gRPC unary call's whole
                    // body). The piece is in memory already, so `h2` holding it adds nothing;
                    // the next piece's reservation counts it as buffered, so back-pressure
                    // holds from there on.
                    send.send_data(bytes, last).map_err(|_| Broken::Sink)?;
                } else {
                    send_data(send, bytes, last, idle).await?;
                }
                if fresh {
                    body.release(n);
                }
                if last {
                    return Ok(());
                }
            }
            Piece::Trailers(t) => return send.send_trailers(t).map_err(|_| Broken::Sink),
            Piece::End => return send.send_data(Bytes::new(), true).map_err(|_| Broken::Sink),
        }
    }
}

/// Streams a client's body (from its cursor) to an HTTP/1.1 upstream, framed as `framing`
/// (`Chunked` carries trailers; `Length` and `None` pass the payload as it is).
pub(crate) async fn replay_to_h1<W: AsyncWriteRent>(
    body: &mut ReplayBody,
    cursor: &mut Cursor,
    dst: &mut W,
    framing: BodyFraming,
    idle: Duration,
) -> Result<(), Broken> {
    let chunked = framing == BodyFraming::Chunked;
    loop {
        match body.next(cursor, idle).await? {
            Piece::Data { bytes, fresh } => {
                let n = bytes.len();
                if n > 0 {
                    write_payload(dst, bytes, chunked).await?;
                }
                if fresh {
                    body.release(n);
                }
            }
            Piece::Trailers(t) if chunked => {
                let mut out = BytesMut::with_capacity(64);
                out.put_slice(b"0\r\n");
                encode_trailers(&t, &mut out);
                return write(dst, out.freeze()).await;
            }
            Piece::Trailers(_) | Piece::End => {
                return if chunked {
                    write(dst, Bytes::from_static(LAST_CHUNK)).await
                } else {
                    Ok(())
                };
            }
        }
    }
}

/// Writes one piece of payload, as a chunk when `chunked`. A small piece and its framing go
/// in one write (one copy of a few KiB is cheaper than a second syscall).
async fn write_payload<W: AsyncWriteRent>(dst: &mut W, bytes: Bytes, chunked: bool) -> Result<(), Broken> {
    if !chunked {
        return write(dst, bytes).await;
    }
    let mut head = BytesMut::with_capacity(20);
    write_chunk_header(bytes.len() as u64, &mut head);
    if bytes.len() <= 4096 {
        head.put_slice(&bytes);
        head.put_slice(CRLF);
        return write(dst, head.freeze()).await;
    }
    write(dst, head.freeze()).await?;
    write(dst, bytes).await?;
    write(dst, Bytes::from_static(CRLF)).await
}

async fn write<W: AsyncWriteRent>(dst: &mut W, bytes: Bytes) -> Result<(), Broken> {
    dst.write_all(bytes).await.0.map(|_| ()).map_err(|_| Broken::Sink)
}

pin_project_lite::pin_project! {
    /// A future raced against the reset of a stream: see [`unless_reset`].
    struct UnlessReset<'a, F> {
        send: &'a mut SendStream<Bytes>,
        #[pin]
        fut: F,
    }
}

/// Awaits `fut` unless the peer of `send` resets the stream first (then `Err(Sink)`): a
/// client that cancels a call is noticed while its response waits for upstream bytes.
fn unless_reset<F: Future>(send: &mut SendStream<Bytes>, fut: F) -> UnlessReset<'_, F> {
    UnlessReset { send, fut }
}

impl<F: Future> Future for UnlessReset<'_, F> {
    type Output = Result<F::Output, Broken>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if this.send.poll_reset(cx).is_ready() {
            return Poll::Ready(Err(Broken::Sink));
        }
        Poll::Pending
    }
}

/// Payload smaller than this is copied into one run on arrival instead of kept as its own
/// frame: a gRPC server streaming small messages sends a DATA frame per message.
const SMALL_FRAME: usize = 1024;

/// Response bytes taken off the upstream stream and not yet sent to the client: at most what
/// the upstream's window let it send, since that window is released only as bytes go on.
///
/// Taking DATA off `h2` as soon as it arrives matters: `h2` closes a connection
/// (`GOAWAY(ENHANCE_YOUR_CALM)`, "too many data frames") once its peer's small frames pile up
/// unread past a budget of half the connection window, so a server stream of small messages
/// to a client slower than the upstream would otherwise end the shared upstream connection and
/// every call on it. Small frames are copied together here, so they cost their payload and
/// nothing per frame, and reach the client as few large frames.
#[derive(Debug, Default)]
struct Backlog {
    /// Whole runs, oldest first.
    runs: std::collections::VecDeque<Bytes>,
    /// Small frames gathered after the last run.
    tail: BytesMut,
    len: usize,
}

impl Backlog {
    fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        if bytes.len() < SMALL_FRAME {
            self.tail.extend_from_slice(&bytes);
        } else {
            if !self.tail.is_empty() {
                self.runs.push_back(self.tail.split().freeze());
            }
            self.runs.push_back(bytes);
        }
    }

    /// Up to `n` bytes from the front, in one piece without copying.
    fn take(&mut self, n: usize) -> Bytes {
        if self.runs.is_empty() && !self.tail.is_empty() {
            self.runs.push_back(self.tail.split().freeze());
        }
        let piece = match self.runs.front_mut() {
            Some(front) if front.len() > n => front.split_to(n),
            Some(_) => self.runs.pop_front().unwrap_or_default(),
            None => Bytes::new(),
        };
        self.len -= piece.len();
        piece
    }
}

/// What the relay waited for.
enum Relayed {
    Data(Bytes),
    End,
    Capacity(usize),
}

/// Relays an HTTP/2 body (a response from an HTTP/2 upstream) to an HTTP/2 stream (the
/// client's), trailers included. Upstream DATA is taken as it arrives (see [`Backlog`]) and
/// sent as the client's window opens; the upstream's window is released only for bytes sent.
pub(crate) async fn h2_to_h2(
    recv: &mut RecvStream,
    send: &mut SendStream<Bytes>,
    idle: Duration,
    facts: &crate::telemetry::request::Facts,
) -> Result<(), Broken> {
    let sent = &facts.bytes_sent;
    let mut backlog = Backlog::default();
    let mut ended = false;
    // The upstream's last DATA carried END_STREAM (no trailers): the client's last DATA
    // carries it too, instead of an empty frame after it.
    let mut last_data = false;
    loop {
        if ended && backlog.len == 0 {
            let trailers = unless_reset(send, within(idle, recv.trailers()))
                .await?
                .map_err(|_| Broken::Source)?
                .map_err(|_| Broken::Source)?;
            return match trailers {
                Some(t) => {
                    if let Some(code) = crate::http::grpc::status_of(&t) {
                        facts.grpc_status.set(Some(code as u16));
                    }
                    send.send_trailers(t)
                }
                None => send.send_data(Bytes::new(), true),
            }
            .map_err(|_| Broken::Sink);
        }
        if backlog.len > 0 {
            send.reserve_capacity(backlog.len);
        }
        let event = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(Broken::Sink));
            }
            if backlog.len > 0 {
                // Capacity left from an earlier grant is used at once: `poll_capacity` reports
                // only increases.
                let left = send.capacity();
                if left > 0 {
                    return Poll::Ready(Ok(Relayed::Capacity(left)));
                }
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) => return Poll::Ready(Ok(Relayed::Capacity(n))),
                    Poll::Ready(_) => return Poll::Ready(Err(Broken::Sink)),
                    Poll::Pending => {}
                }
            }
            if !ended {
                match recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(bytes))) => return Poll::Ready(Ok(Relayed::Data(bytes))),
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(Broken::Source)),
                    Poll::Ready(None) => return Poll::Ready(Ok(Relayed::End)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        });
        // Silence past the idle timeout breaks the side that was awaited: with bytes waiting,
        // the receiver that grants no window stalls the stream.
        let stalled_side = if backlog.len > 0 {
            Broken::Stalled
        } else {
            Broken::Source
        };
        match within(idle, event).await.map_err(|_| stalled_side)?? {
            Relayed::Data(bytes) => {
                sent.set(sent.get() + bytes.len() as u64);
                backlog.push(bytes);
                if recv.is_end_stream() {
                    ended = true;
                    last_data = true;
                }
            }
            Relayed::End => ended = true,
            Relayed::Capacity(n) => {
                let piece = backlog.take(n);
                let sent = piece.len();
                let last = last_data && backlog.len == 0;
                send.send_data(piece, last).map_err(|_| Broken::Sink)?;
                let _ = recv.flow_control().release_capacity(sent);
                if last {
                    return Ok(());
                }
            }
        }
    }
}

/// Relays an HTTP/2 body to an HTTP/1.1 socket framed as `framing` (a chunked body carries the
/// trailers; otherwise they are dropped, as HTTP/1.1 has nowhere to put them).
pub(crate) async fn h2_to_h1<W: AsyncWriteRent>(
    recv: &mut RecvStream,
    dst: &mut W,
    framing: BodyFraming,
    idle: Duration,
    sent: &std::cell::Cell<u64>,
) -> Result<(), Broken> {
    let chunked = framing == BodyFraming::Chunked;
    loop {
        let next = within(idle, recv.data()).await.map_err(|_| Broken::Source)?;
        match next {
            Some(Ok(bytes)) => {
                let n = bytes.len();
                sent.set(sent.get() + n as u64);
                if n > 0 {
                    write_payload(dst, bytes, chunked).await?;
                }
                let _ = recv.flow_control().release_capacity(n);
            }
            Some(Err(_)) => return Err(Broken::Source),
            None => {
                let trailers = within(idle, recv.trailers())
                    .await
                    .map_err(|_| Broken::Source)?
                    .map_err(|_| Broken::Source)?;
                if !chunked {
                    return Ok(());
                }
                let mut out = BytesMut::with_capacity(64);
                out.put_slice(b"0\r\n");
                match trailers {
                    Some(t) => encode_trailers(&t, &mut out),
                    None => out.put_slice(CRLF),
                }
                return write(dst, out.freeze()).await;
            }
        }
    }
}

/// Reads an HTTP/1.1 body framed as `framing` from `src` (with `buf` holding bytes already
/// read), handing each run of payload to `sink` as `Bytes` split off the buffer (no copy), and
/// returns the chunked trailer section, if any. Bytes after the body stay in `buf`.
pub(crate) struct H1Source {
    framing: BodyFraming,
    left: u64,
    decoder: ChunkedDecoder,
    /// Framing bytes since the last payload: at the end, the last chunk and the trailers.
    tail: Vec<u8>,
    done: bool,
}

/// What [`H1Source::next`] produced.
#[derive(Debug)]
pub(crate) enum H1Piece {
    Data(Bytes),
    End(Option<HeaderMap>),
}

impl H1Source {
    pub(crate) fn new(framing: BodyFraming) -> Self {
        H1Source {
            framing,
            left: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::new(ChunkedLimits::default()),
            tail: Vec::new(),
            done: matches!(framing, BodyFraming::None | BodyFraming::Length(0)),
        }
    }

    /// The whole body was read and it cannot carry trailers (a `content-length` body).
    pub(crate) fn ended_without_trailers(&self) -> bool {
        self.done && matches!(self.framing, BodyFraming::Length(_))
    }

    /// The next run of payload, or the end.
    pub(crate) async fn next<R: AsyncReadRent>(
        &mut self,
        src: &mut R,
        buf: &mut BytesMut,
        idle: Duration,
    ) -> Result<H1Piece, BodyError> {
        loop {
            if self.done {
                let trailers = (!self.tail.is_empty()).then(|| take_trailers(&self.tail)).flatten();
                self.tail.clear();
                return Ok(H1Piece::End(trailers));
            }
            if !buf.is_empty() {
                match self.framing {
                    BodyFraming::Length(_) => {
                        let n = (self.left as usize).min(buf.len());
                        self.left -= n as u64;
                        self.done = self.left == 0;
                        return Ok(H1Piece::Data(buf.split_to(n).freeze()));
                    }
                    BodyFraming::CloseDelimited => return Ok(H1Piece::Data(buf.split().freeze())),
                    BodyFraming::Chunked => {
                        let step = self.decoder.decode(buf).map_err(BodyError::Framing)?;
                        let data = step.data.clone();
                        if !data.is_empty() {
                            buf.advance(data.start);
                            self.tail.clear();
                            let out = buf.split_to(data.len()).freeze();
                            buf.advance(step.consumed - data.end);
                            return Ok(H1Piece::Data(out));
                        }
                        if self.tail.len() + step.consumed > 64 * 1024 {
                            return Err(BodyError::Framing(crate::http::h1::H1Error::TrailersTooLarge));
                        }
                        self.tail.extend_from_slice(&buf[..step.consumed]);
                        buf.advance(step.consumed);
                        if step.done {
                            self.done = true;
                        }
                        if step.consumed > 0 || self.done {
                            continue;
                        }
                    }
                    BodyFraming::None => {
                        self.done = true;
                        continue;
                    }
                }
            }
            match read_more(src, buf, idle).await? {
                0 if self.framing == BodyFraming::CloseDelimited => self.done = true,
                0 => return Err(BodyError::Truncated),
                _ => {}
            }
        }
    }
}

/// The trailer fields from the framing bytes after the last payload (`\r\n` ending the last
/// data chunk, the `0` size line, the trailer lines, the empty line).
fn take_trailers(tail: &[u8]) -> Option<HeaderMap> {
    let t = tail.strip_prefix(CRLF).unwrap_or(tail);
    let end_of_size_line = t.iter().position(|&b| b == b'\n')?;
    let section = &t[end_of_size_line + 1..];
    let map = parse_trailers(section);
    (!map.is_empty()).then_some(map)
}

/// Relays an HTTP/1.1 body (a response from an HTTP/1.1 upstream) to an HTTP/2 stream;
/// returns whether the whole body was read (the connection may then be reused).
pub(crate) async fn h1_to_h2<R: AsyncReadRent>(
    framing: BodyFraming,
    src: &mut R,
    buf: &mut BytesMut,
    send: &mut SendStream<Bytes>,
    idle: Duration,
    sent: &std::cell::Cell<u64>,
) -> Result<(), Broken> {
    let mut source = H1Source::new(framing);
    loop {
        let next = unless_reset(send, source.next(src, buf, idle)).await?;
        match next.map_err(|e| if e.is_source() { Broken::Source } else { Broken::Sink })? {
            H1Piece::Data(bytes) => {
                sent.set(sent.get() + bytes.len() as u64);
                // A body of known length ends with its last byte: END_STREAM goes with it.
                let last = source.ended_without_trailers();
                send_data(send, bytes, last, idle).await?;
                if last {
                    return Ok(());
                }
            }
            H1Piece::End(Some(t)) => return send.send_trailers(t).map_err(|_| Broken::Sink),
            H1Piece::End(None) => return send.send_data(Bytes::new(), true).map_err(|_| Broken::Sink),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_are_found_after_the_last_chunk() {
        let t = take_trailers(b"\r\n0\r\ngrpc-status: 0\r\nx-a: b\r\n\r\n").unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-a"], "b");
        assert!(take_trailers(b"0\r\n\r\n").is_none());
        assert!(take_trailers(b"\r\n0;ext=1\r\n\r\n").is_none());
    }

    #[test]
    fn backlog_joins_small_frames_and_keeps_order() {
        let mut b = Backlog::default();
        let big: Bytes = (0..4000u32).map(|i| i as u8).collect();
        b.push(Bytes::from_static(b"ab"));
        b.push(Bytes::from_static(b"cd"));
        b.push(big.clone());
        b.push(Bytes::from_static(b"ef"));
        assert_eq!(b.len, 4006);
        // The small frames before the large one went out as one piece.
        assert_eq!(&b.take(100)[..], b"abcd");
        assert_eq!(b.take(1000), big.slice(..1000));
        assert_eq!(b.take(10_000), big.slice(1000..));
        assert_eq!(&b.take(10_000)[..], b"ef");
        assert_eq!(b.len, 0);
        assert!(b.take(10).is_empty());
    }

    fn decode_all(wire: &[u8], framing: BodyFraming) -> (Vec<u8>, Option<HeaderMap>) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let wire = wire.to_vec();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let (mut s, _) = listener.accept().unwrap();
                // One byte at a time: every framing state sees a buffer boundary.
                for b in wire {
                    s.write_all(&[b]).unwrap();
                }
            });
            let mut s = monoio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = BytesMut::new();
            let mut src = H1Source::new(framing);
            let mut out = Vec::new();
            let trailers = loop {
                match src.next(&mut s, &mut buf, Duration::from_secs(5)).await.unwrap() {
                    H1Piece::Data(d) => out.extend_from_slice(&d),
                    H1Piece::End(t) => break t,
                }
            };
            writer.join().unwrap();
            (out, trailers)
        })
    }

    #[test]
    fn h1_bodies_decode_to_payload_and_trailers() {
        let (body, t) = decode_all(
            b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\ngrpc-status: 7\r\n\r\n",
            BodyFraming::Chunked,
        );
        assert_eq!(body, b"hello!");
        assert_eq!(t.unwrap()["grpc-status"], "7");
        let (body, t) = decode_all(b"abcdef", BodyFraming::Length(6));
        assert_eq!((body.as_slice(), t.is_none()), (&b"abcdef"[..], true));
        let (body, _) = decode_all(b"to the end", BodyFraming::CloseDelimited);
        assert_eq!(body, b"to the end");
    }
}
