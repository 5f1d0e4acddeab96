//! The request body across all tries of one request: the one place that knows whether it can
//! be sent again.
//!
//! `forward` creates a [`RequestBody`] once per request, before the first try. A small body
//! (up to [`BUFFER_MAX`]) that has fully arrived with the head is taken off the connection's
//! buffer as `Bytes` (no copy) and written with the head on *every* try, so a retry sends what
//! the first try sent. A larger or later body streams from the client on the first try; from
//! the moment streaming starts it cannot be replayed, and whether it was cut short decides
//! whether the client connection can carry another request. Nothing else keeps a "sent" flag:
//! retries, the error answer and connection reuse all ask this type (pingora keeps its retry
//! buffer the same way).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::body::{self, BodyError};
use super::h1::{BodyFraming, ChunkedLimits};

/// Largest body held for retries and sent in the same write as its head (copied once per try;
/// larger bodies stream).
pub(crate) const BUFFER_MAX: u64 = 16 * 1024;

/// Where the client's side of a failed request stands: what the connection must do before it
/// can read another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientBody {
    /// The body (if any) is still on the connection: skip it to find the next request.
    Unread,
    /// The whole body was read: the next request starts at the connection's buffer.
    Consumed,
    /// Part of the body was read: the connection cannot carry another request.
    Cut,
}

#[derive(Debug)]
enum State {
    /// No body bytes (no body, or `Content-Length: 0`).
    Empty,
    /// The whole body, taken off the connection; sent with the head on every try.
    Held(Bytes),
    /// The body is still with the client (in the buffer or not yet sent); nothing taken.
    Unread,
    /// Streaming to an upstream started and did not finish: some bytes may be gone.
    Streaming,
    /// The whole body was streamed to one upstream.
    Streamed,
}

/// The request body of one request, for all of its tries.
#[derive(Debug)]
pub(crate) struct RequestBody {
    framing: BodyFraming,
    state: State,
}

impl RequestBody {
    /// Takes a small body that has fully arrived off `buf` (the connection's read buffer, which
    /// then starts at whatever follows the body); any other body stays there to be streamed.
    pub(crate) fn take(framing: BodyFraming, buf: &mut BytesMut) -> Self {
        let state = match framing {
            BodyFraming::None | BodyFraming::Length(0) => State::Empty,
            BodyFraming::Length(n) if n <= BUFFER_MAX && buf.len() as u64 >= n => {
                State::Held(buf.split_to(n as usize).freeze())
            }
            _ => State::Unread,
        };
        RequestBody { framing, state }
    }

    /// Reads the rest of a small body (by `Content-Length`, up to [`BUFFER_MAX`]) before any
    /// upstream is chosen, then [`take`](Self::take)s it, as nginx's request buffering does:
    /// a client trickling its body in ties up no upstream connection while it does (1,000
    /// slow-body clients would otherwise hold 1,000 upstream connections), the upstream never
    /// sees half a request that is then cut, and a retry can send the whole body again.
    /// Each read waits at most `idle` (`limits.requestBodyTimeout`). Chunked and larger
    /// bodies still stream as they arrive.
    pub(crate) async fn gather<R: AsyncReadRent>(
        framing: BodyFraming,
        src: &mut R,
        buf: &mut BytesMut,
        idle: Duration,
    ) -> Result<Self, BodyError> {
        if let BodyFraming::Length(n) = framing {
            if n <= BUFFER_MAX && (buf.len() as u64) < n {
                buf.reserve(n as usize - buf.len());
                while (buf.len() as u64) < n {
                    if body::read_more(src, buf, idle).await? == 0 {
                        return Err(BodyError::Truncated);
                    }
                }
            }
        }
        Ok(Self::take(framing, buf))
    }

    /// What a try writes first: the head, with the held body appended when there is one (one
    /// send instead of two is the largest saving per request on loopback).
    pub(crate) fn first_write(&self, head: &Bytes) -> Bytes {
        match &self.state {
            State::Held(body) => {
                let mut both = BytesMut::with_capacity(head.len() + body.len());
                both.extend_from_slice(head);
                both.extend_from_slice(body);
                both.freeze()
            }
            _ => head.clone(),
        }
    }

    /// Whether body bytes follow the first write, streamed from the client.
    pub(crate) fn streams(&self) -> bool {
        matches!(self.state, State::Unread)
    }

    /// Whether another try can send the whole body again.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self.state, State::Empty | State::Held(_) | State::Unread)
    }

    /// Whether an upstream that answered got the whole body first (otherwise neither
    /// connection can carry another request).
    pub(crate) fn delivered(&self) -> bool {
        matches!(self.state, State::Empty | State::Held(_) | State::Streamed)
    }

    /// Where the client's side stands, for an answer that replaces the upstream's.
    pub(crate) fn client(&self) -> ClientBody {
        match self.state {
            State::Empty | State::Held(_) | State::Streamed => ClientBody::Consumed,
            State::Unread => ClientBody::Unread,
            State::Streaming => ClientBody::Cut,
        }
    }

    /// Streams the body from the client (`src`, with `buf` holding what was already read) to
    /// an upstream, as it arrives. From the first poll on the body counts as gone, so a try that
    /// is abandoned midway (an early answer, an error) is never replayed.
    pub(crate) async fn stream<R, W>(
        &mut self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        idle: Duration,
    ) -> Result<u64, BodyError>
    where
        R: AsyncReadRent,
        W: AsyncWriteRent,
    {
        debug_assert!(self.streams(), "a body streams once, and only from the client");
        self.state = State::Streaming;
        let sent = body::stream(self.framing, src, buf, dst, idle, ChunkedLimits::default()).await?;
        self.state = State::Streamed;
        Ok(sent)
    }

    /// The whole body, when it is held (sent again on every try).
    pub(crate) fn held(&self) -> Option<&Bytes> {
        match &self.state {
            State::Held(b) => Some(b),
            _ => None,
        }
    }

    /// No body bytes at all.
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self.state, State::Empty)
    }

    /// How the client frames the body.
    pub(crate) fn framing(&self) -> BodyFraming {
        self.framing
    }

    /// Streaming from the client starts (for a sink other than an HTTP/1.1 socket): from now
    /// on the body cannot be replayed, and until [`Self::streamed`] it counts as cut.
    pub(crate) fn begin_streaming(&mut self) {
        debug_assert!(self.streams(), "a body streams once, and only from the client");
        self.state = State::Streaming;
    }

    /// The whole body went to the upstream.
    pub(crate) fn streamed(&mut self) {
        self.state = State::Streamed;
    }

    /// A body whose streaming started and stopped midway (for other modules' tests).
    #[cfg(test)]
    pub(crate) fn cut_midway() -> Self {
        RequestBody {
            framing: BodyFraming::Chunked,
            state: State::Streaming,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn a_small_arrived_body_is_held_and_leaves_what_follows() {
        let mut b = buf(b"hello GET / HTTP/1.1\r\n");
        let body = RequestBody::take(BodyFraming::Length(5), &mut b);
        assert_eq!(&b[..], b" GET / HTTP/1.1\r\n");
        let head = Bytes::from_static(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
        let want = b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello";
        // Every try writes the head and the body, however many there are.
        assert_eq!(&body.first_write(&head)[..], &want[..]);
        assert_eq!(&body.first_write(&head)[..], &want[..]);
        assert!(body.replayable());
        assert!(body.delivered());
        assert!(!body.streams());
        assert_eq!(body.client(), ClientBody::Consumed);
    }

    #[test]
    fn a_body_not_yet_arrived_or_large_streams() {
        let mut b = buf(b"hel");
        let body = RequestBody::take(BodyFraming::Length(5), &mut b);
        assert_eq!(&b[..], b"hel", "nothing is taken from the connection");
        assert!(body.streams());
        assert!(body.replayable());
        assert!(!body.delivered());
        assert_eq!(body.client(), ClientBody::Unread);
        let head = Bytes::from_static(b"HEAD");
        assert_eq!(&body.first_write(&head)[..], b"HEAD");

        let mut big = BytesMut::zeroed(BUFFER_MAX as usize + 1);
        assert!(RequestBody::take(BodyFraming::Length(BUFFER_MAX + 1), &mut big).streams());
        assert!(RequestBody::take(BodyFraming::Chunked, &mut buf(b"0\r\n\r\n")).streams());
    }

    #[test]
    fn no_body_is_always_replayable() {
        for framing in [BodyFraming::None, BodyFraming::Length(0)] {
            let mut b = buf(b"GET /next HTTP/1.1\r\n");
            let body = RequestBody::take(framing, &mut b);
            assert_eq!(b.len(), 20);
            assert!(body.replayable() && body.delivered() && !body.streams());
            assert_eq!(body.client(), ClientBody::Consumed);
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Two ends of one loopback connection: what is written to the first is read from the
    /// second.
    async fn connected() -> (monoio::net::TcpStream, monoio::net::TcpStream) {
        let l = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = monoio::net::TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, s)
    }

    #[test]
    fn a_streamed_body_is_never_replayed() {
        run(async {
            use monoio::io::AsyncWriteRentExt;
            let (mut client, mut from_client) = connected().await;
            let (mut to_upstream, _upstream) = connected().await;
            let mut b = buf(b"he");
            let mut body = RequestBody::take(BodyFraming::Length(5), &mut b);
            let (r, _) = client.write_all(b"llo".to_vec()).await;
            r.expect("feed");
            let sent = body
                .stream(&mut from_client, &mut b, &mut to_upstream, Duration::from_secs(5))
                .await
                .expect("stream");
            assert_eq!(sent, 5);
            assert!(!body.replayable());
            assert!(body.delivered());
            assert_eq!(body.client(), ClientBody::Consumed);
        });
    }

    #[test]
    fn a_small_body_sent_in_pieces_is_gathered_before_any_upstream() {
        run(async {
            use monoio::io::AsyncWriteRentExt;
            let (mut client, mut from_client) = connected().await;
            let mut b = buf(b"he");
            let gathering = monoio::spawn(async move {
                let body =
                    RequestBody::gather(BodyFraming::Length(5), &mut from_client, &mut b, Duration::from_secs(5))
                        .await
                        .expect("gathered");
                (body, b)
            });
            for piece in [&b"l"[..], b"lo", b"GET"] {
                let (r, _) = client.write_all(piece.to_vec()).await;
                r.expect("feed");
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            let (body, rest) = gathering.await;
            assert_eq!(body.held().map(|b| &b[..]), Some(&b"hello"[..]));
            assert!(!body.streams() && body.replayable());
            assert!(b"GET".starts_with(&rest[..]), "what follows the body stays: {rest:?}");
        });
    }

    #[test]
    fn a_body_that_stops_or_ends_early_is_not_gathered() {
        run(async {
            let (_client, mut from_client) = connected().await;
            let mut b = buf(b"he");
            let r = RequestBody::gather(
                BodyFraming::Length(5),
                &mut from_client,
                &mut b,
                Duration::from_millis(50),
            )
            .await;
            assert!(matches!(r, Err(BodyError::Idle)), "{r:?}");

            let (client, mut from_client) = connected().await;
            drop(client);
            let mut b = buf(b"he");
            let r = RequestBody::gather(BodyFraming::Length(5), &mut from_client, &mut b, Duration::from_secs(5)).await;
            assert!(matches!(r, Err(BodyError::Truncated)), "{r:?}");
        });
    }

    #[test]
    fn large_and_chunked_bodies_are_not_gathered() {
        run(async {
            let (_client, mut from_client) = connected().await;
            let mut b = buf(b"he");
            for framing in [BodyFraming::Length(BUFFER_MAX + 1), BodyFraming::Chunked] {
                let body = RequestBody::gather(framing, &mut from_client, &mut b, Duration::from_millis(50))
                    .await
                    .expect("no read");
                assert!(body.streams(), "{framing:?}");
            }
            assert_eq!(&b[..], b"he");
        });
    }

    #[test]
    fn a_body_cut_midway_closes_the_client_side() {
        run(async {
            let (client, mut from_client) = connected().await;
            let (mut to_upstream, _upstream) = connected().await;
            let mut b = buf(b"he");
            let mut body = RequestBody::take(BodyFraming::Length(5), &mut b);
            // The client sent two bytes and goes away.
            drop(client);
            let r = body
                .stream(&mut from_client, &mut b, &mut to_upstream, Duration::from_secs(5))
                .await;
            assert!(matches!(r, Err(BodyError::Truncated)), "{r:?}");
            assert!(!body.replayable());
            assert!(!body.delivered());
            assert_eq!(body.client(), ClientBody::Cut);
        });
    }
}
