//! gRPC and HTTP/2 flow control through the proxy, end to end, on io_uring and epoll: the four
//! kinds of call, `grpc-timeout`, retries on gRPC statuses, load balancing per call, back-pressure
//! both ways with the proxy's memory bounded by its windows, cancellation passed upstream, and a
//! response broken off upstream reaching the client as a reset.
//!
//! The upstream is [`H2Upstream`], scripted per test; the client is `h2` on a tokio runtime of
//! its own (two threads), so its connection keeps moving frames while the test's thread polls
//! counters.

use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response};
use ringmesh_loadgen::grpc::{decode_echo_payload, echo_message, MessageDecoder};
use ringmesh_testkit::eventually;
use ringmesh_tests::h2upstream::{H2Upstream, Stream};
use ringmesh_tests::proxy::{proxy_config, service_entry_speaking, TestProxy};
use ringmesh_tests::{both_io, IoMode};
use tokio::sync::Notify;

/// How long any one call may take before the test fails.
const WITHIN: Duration = Duration::from_secs(20);
/// The proxy's receive window per HTTP/2 stream, on both sides (`h2::client::STREAM_WINDOW`).
const PROXY_STREAM_WINDOW: u64 = 256 * 1024;
/// `h2`'s default initial stream window, which the test's client and upstream keep.
const PEER_WINDOW: u64 = 65_535;
/// Frames in flight and rounding: one maximum-size DATA frame and then some.
const SLACK: u64 = 64 * 1024;
/// `h2` closes a connection (`GOAWAY(ENHANCE_YOUR_CALM)`) whose peer has sent more small DATA
/// frames than the application has read yet, up to half the connection window: with the default
/// 64 KiB window, about 130 frames. A gRPC server sends a message per frame, so the test's
/// client and upstream, which keep the default windows for the flow-control bounds, raise the
/// budget as real gRPC stacks do with their larger windows.
pub(crate) const SMALL_FRAME_BUDGET: usize = 64 << 20;
/// Size of the bodies the back-pressure tests move.
const BIG: u64 = 64 << 20;

// ---- the test's side of the wire ----

/// A client's HTTP/2 connection, driven by a runtime of its own.
struct Conn {
    rt: tokio::runtime::Runtime,
    send: SendRequest<Bytes>,
}

impl Conn {
    fn connect(addr: std::net::SocketAddr) -> Conn {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let send = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (send, conn) = h2::client::Builder::new()
                .data_frame_budget(SMALL_FRAME_BUDGET)
                .handshake(tcp)
                .await
                .expect("HTTP/2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        });
        Conn { rt, send }
    }

    /// Runs `f` on the client's runtime; the test fails if it takes longer than `within`.
    fn run<F: Future>(&self, within: Duration, f: F) -> F::Output {
        self.rt
            .block_on(async { tokio::time::timeout(within, f).await })
            .expect("the exchange timed out")
    }

    /// Opens a call: the request head goes out, the body stays open.
    async fn open(&self, path: &str, extra: &[(&'static str, &'static str)]) -> (ResponseFuture, SendStream<Bytes>) {
        let mut send = self.send.clone().ready().await.expect("connection ready");
        let mut req = Request::post(format!("http://svc.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let (resp, body) = send.send_request(req.body(()).unwrap(), false).expect("send request");
        (resp, body)
    }

    /// A unary call: one message, the whole answer.
    async fn unary(&self, path: &str, payload: &[u8]) -> Answer {
        let (resp, mut body) = self.open(path, &[]).await;
        body.send_data(echo_message(payload), true).expect("send message");
        answer(resp.await.expect("response head")).await
    }
}

type ResponseFuture = h2::client::ResponseFuture;

/// A gRPC answer read to its end.
#[derive(Debug)]
struct Answer {
    head: HeaderMap,
    /// Whether the head ended the stream (a trailers-only response).
    trailers_only: bool,
    messages: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Answer {
    /// `grpc-status`: from the trailers, or from the head of a trailers-only response.
    fn status(&self) -> Option<&str> {
        let fields = if self.trailers_only {
            Some(&self.head)
        } else {
            self.trailers.as_ref()
        };
        fields?.get("grpc-status")?.to_str().ok()
    }
}

/// Reads a response: every message (payloads decoded), then the trailers.
async fn answer(resp: Response<RecvStream>) -> Answer {
    let trailers_only = resp.body().is_end_stream();
    let (parts, mut recv) = resp.into_parts();
    let mut dec = MessageDecoder::new();
    let mut messages = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("response body");
        let _ = recv.flow_control().release_capacity(chunk.len());
        dec.push(&chunk);
        while let Some(m) = dec.next_message().expect("gRPC framing") {
            messages.push(decode_echo_payload(&m).expect("protobuf"));
        }
    }
    assert!(dec.is_empty(), "the response ended inside a message");
    let trailers = recv.trailers().await.expect("trailers");
    Answer {
        head: parts.headers,
        trailers_only,
        messages,
        trailers,
    }
}

/// The next whole message on `recv` (`None` at a clean end); errors are the stream's.
/// Starts a server-streaming call on `path` and reads its first five messages (`"0"` .. `"4"`),
/// returning the stream to read on and the request side, kept open.
async fn first_five(c: &Conn, path: &str) -> (RecvStream, MessageDecoder, SendStream<Bytes>) {
    let (resp, mut body) = c.open(path, &[]).await;
    body.send_data(echo_message(b"go"), true).expect("send");
    let mut recv = resp.await.expect("head").into_body();
    let mut dec = MessageDecoder::new();
    for i in 0..5 {
        let m = next_message(&mut recv, &mut dec).await.unwrap().unwrap();
        assert_eq!(m, i.to_string().as_bytes());
    }
    (recv, dec, body)
}

async fn next_message(recv: &mut RecvStream, dec: &mut MessageDecoder) -> Result<Option<Bytes>, h2::Error> {
    loop {
        if let Some(m) = dec.next_message().expect("gRPC framing") {
            return Ok(Some(decode_echo_payload(&m).expect("protobuf")));
        }
        match recv.data().await {
            Some(chunk) => {
                let chunk = chunk?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                dec.push(&chunk);
            }
            None => return Ok(None),
        }
    }
}

/// Bytes of a body at offset `off`: a pattern that a lost, repeated or reordered byte breaks.
fn pattern(off: u64, n: usize) -> Bytes {
    static PATTERN: LazyLock<Bytes> = LazyLock::new(|| (0..251 * 1024).map(|i| (i % 251) as u8).collect());
    let start = (off % 251) as usize;
    PATTERN.slice(start..start + n)
}

/// Sends `total` pattern bytes on `send` only as the peer's window allows, counting in `sent`
/// what the window let go; `Err` when the stream was reset.
async fn send_pattern(send: &mut SendStream<Bytes>, total: u64, sent: &AtomicU64, end: bool) -> Result<(), Reason> {
    let mut off = 0u64;
    while off < total {
        send.reserve_capacity((total - off).min(64 * 1024) as usize);
        let granted = capacity(send).await?;
        let n = match granted {
            Some(Ok(n)) => n as u64,
            Some(Err(e)) => return Err(e.reason().unwrap_or(Reason::CANCEL)),
            None => return Err(Reason::CANCEL),
        };
        if n == 0 {
            continue;
        }
        send.send_data(pattern(off, n as usize), end && off + n == total)
            .map_err(|e| e.reason().unwrap_or(Reason::CANCEL))?;
        off += n;
        sent.store(off, Ordering::SeqCst);
    }
    Ok(())
}

/// Reads a body to its end, releasing the window as it goes, and checks it against the pattern.
async fn read_pattern(recv: &mut RecvStream) -> Result<u64, String> {
    let mut off = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| format!("body broke at {off}: {e}"))?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        if chunk != pattern(off, chunk.len()) {
            return Err(format!("body corrupt at {off}"));
        }
        off += chunk.len() as u64;
    }
    Ok(off)
}

/// The value of `counter` once it has stopped growing: unchanged for 300 ms, polled within a
/// bound (a counter that keeps growing fails the test).
fn settled(what: &str, counter: impl Fn() -> u64) -> u64 {
    let mut last = (counter(), Instant::now());
    eventually(Duration::from_secs(15), what, || {
        let now = counter();
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0 && last.1.elapsed() >= Duration::from_millis(300)
    })
    .unwrap();
    last.0
}

// ---- the upstream's side ----

/// An upstream with `h2`'s default windows and a small-frame budget as [`SMALL_FRAME_BUDGET`].
fn upstream<F, Fut>(handler: F) -> H2Upstream
where
    F: Fn(Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut settings = h2::server::Builder::new();
    settings.data_frame_budget(SMALL_FRAME_BUDGET);
    H2Upstream::start_with(settings, handler)
}

fn grpc_head() -> Response<()> {
    let mut r = Response::new(());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

fn status(code: u32) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    t
}

/// Sends one message within the stream's window.
async fn send_message(send: &mut SendStream<Bytes>, payload: &[u8]) -> Result<(), Reason> {
    let msg = echo_message(payload);
    send_all(send, msg).await
}

async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), Reason> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let n = match capacity(send).await? {
            Some(Ok(n)) => n.min(data.len()),
            Some(Err(e)) => return Err(e.reason().unwrap_or(Reason::CANCEL)),
            None => return Err(Reason::CANCEL),
        };
        if n > 0 {
            send.send_data(data.split_to(n), false)
                .map_err(|e| e.reason().unwrap_or(Reason::CANCEL))?;
        }
    }
    Ok(())
}

/// Waits for send capacity, or for the peer to reset the stream (`Err` with its reason).
async fn capacity(send: &mut SendStream<Bytes>) -> Result<Option<Result<usize, h2::Error>>, Reason> {
    poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = send.poll_reset(cx) {
            return std::task::Poll::Ready(Err(r.unwrap_or(Reason::CANCEL)));
        }
        send.poll_capacity(cx).map(Ok)
    })
    .await
}

/// Every message of a request.
async fn request_messages(recv: &mut RecvStream) -> Vec<Bytes> {
    let mut dec = MessageDecoder::new();
    let mut out = Vec::new();
    while let Ok(Some(m)) = next_message(recv, &mut dec).await {
        out.push(m);
    }
    out
}

/// A gRPC service on the upstream, one method per path:
/// - `Unary`: the one message back;
/// - `ClientStream`: one answer, `"<messages>:<bytes>"`, after the request ended;
/// - `ServerStream`: as many messages as the request's payload says, numbered from 0;
/// - `Bidi`: each message back as soon as it came.
async fn service((req, mut respond): Stream) {
    let path = req.uri().path().to_owned();
    let mut recv = req.into_body();
    let mut send = respond.send_response(grpc_head(), false).expect("response head");
    let _ = match path.as_str() {
        "/t.S/Unary" => {
            let msgs = request_messages(&mut recv).await;
            match msgs.first() {
                Some(m) => send_message(&mut send, m).await,
                None => Err(Reason::CANCEL),
            }
        }
        "/t.S/ClientStream" => {
            let msgs = request_messages(&mut recv).await;
            let bytes: usize = msgs.iter().map(Bytes::len).sum();
            send_message(&mut send, format!("{}:{bytes}", msgs.len()).as_bytes()).await
        }
        "/t.S/ServerStream" => {
            let msgs = request_messages(&mut recv).await;
            let n: u32 = std::str::from_utf8(&msgs[0]).unwrap().parse().unwrap();
            let mut r = Ok(());
            for i in 0..n {
                r = send_message(&mut send, i.to_string().as_bytes()).await;
                if r.is_err() {
                    break;
                }
            }
            r
        }
        "/t.S/Bidi" => {
            let mut dec = MessageDecoder::new();
            let mut r = Ok(());
            while let Ok(Some(m)) = next_message(&mut recv, &mut dec).await {
                r = send_message(&mut send, &m).await;
                if r.is_err() {
                    break;
                }
            }
            r
        }
        _ => Err(Reason::INTERNAL_ERROR),
    };
    let _ = send.send_trailers(status(0));
}

fn grpc_proxy(io: IoMode, endpoints: &[std::net::SocketAddr], extra: &[String]) -> TestProxy {
    let eps: Vec<_> = endpoints.iter().map(|a| (*a, &[][..])).collect();
    let mut docs = vec![
        proxy_config(io, "", ""),
        service_entry_speaking("GRPC", "svc", "svc.test", 80, &eps),
    ];
    docs.extend_from_slice(extra);
    TestProxy::start(&docs)
}

fn vs_with(http_extra: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.test]\n  http:\n  - route: [{{destination: {{host: svc.test}}}}]\n{http_extra}")
}

fn round_robin() -> String {
    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.test\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n".to_owned()
}

// ---- the four kinds of call ----

fn unary(io: IoMode) {
    let up = upstream(service);
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    for i in 0..20 {
        let payload = format!("ping {i}");
        let a = c.run(WITHIN, c.unary("/t.S/Unary", payload.as_bytes()));
        assert_eq!(a.messages, vec![Bytes::from(payload)], "{a:?}");
        assert_eq!(a.status(), Some("0"), "{a:?}");
        assert!(
            a.head.get("grpc-status").is_none(),
            "the status came in the head: {a:?}"
        );
    }
}

/// Many messages in one request, one answer after its end.
fn client_streaming(io: IoMode) {
    let up = upstream(service);
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let a = c.run(WITHIN, async {
        let (resp, mut body) = c.open("/t.S/ClientStream", &[]).await;
        for i in 0..1000u32 {
            send_message(&mut body, &[b'x'; 100][..(i % 100) as usize + 1])
                .await
                .expect("send");
        }
        body.send_data(Bytes::new(), true).expect("end");
        answer(resp.await.expect("head")).await
    });
    let bytes: usize = (0..1000).map(|i| i % 100 + 1).sum();
    assert_eq!(a.messages, vec![Bytes::from(format!("1000:{bytes}"))], "{a:?}");
    assert_eq!(a.status(), Some("0"), "{a:?}");
}

/// 10,000 messages in one response, in order, then the trailers.
fn server_streaming(io: IoMode) {
    let up = upstream(service);
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let a = c.run(WITHIN, async {
        let (resp, mut body) = c.open("/t.S/ServerStream", &[]).await;
        body.send_data(echo_message(b"10000"), true).expect("send");
        answer(resp.await.expect("head")).await
    });
    assert_eq!(a.messages.len(), 10_000);
    for (i, m) in a.messages.iter().enumerate() {
        assert_eq!(m, i.to_string().as_bytes(), "message {i} out of order");
    }
    assert!(!a.trailers_only);
    assert!(a.head.get("grpc-status").is_none());
    assert_eq!(a.status(), Some("0"), "trailers last: {a:?}");
}

/// Each message is echoed while the request is still open: the client waits for every echo
/// before it sends the next, so a proxy that held the request until its end would deadlock.
fn bidirectional(io: IoMode) {
    let up = upstream(service);
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let trailers = c.run(Duration::from_secs(10), async {
        let (resp, mut body) = c.open("/t.S/Bidi", &[]).await;
        body.send_data(echo_message(b"0"), false).expect("send");
        let resp = resp.await.expect("the head came while the request is open");
        let mut recv = resp.into_body();
        let mut dec = MessageDecoder::new();
        for i in 0..200u32 {
            let m = next_message(&mut recv, &mut dec).await.expect("echo").expect("an echo");
            assert_eq!(m, i.to_string().as_bytes());
            send_message(&mut body, (i + 1).to_string().as_bytes())
                .await
                .expect("send");
        }
        assert_eq!(next_message(&mut recv, &mut dec).await.unwrap().unwrap(), &b"200"[..]);
        body.send_data(Bytes::new(), true).expect("end");
        assert_eq!(next_message(&mut recv, &mut dec).await.unwrap(), None);
        recv.trailers().await.expect("trailers")
    });
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

// ---- deadlines ----

/// An upstream that answers after 2 s, and whether it saw its stream reset before that.
fn slow_upstream(after_head: bool) -> (H2Upstream, Arc<AtomicBool>) {
    let reset = Arc::new(AtomicBool::new(false));
    let r = reset.clone();
    let up = upstream(move |(req, mut respond): Stream| {
        let r = r.clone();
        async move {
            let mut recv = req.into_body();
            let msgs = request_messages(&mut recv).await;
            let mut send = after_head.then(|| respond.send_response(grpc_head(), false).expect("head"));
            let slow = tokio::time::sleep(Duration::from_secs(2));
            let cancelled = poll_fn(|cx| match send.as_mut() {
                Some(s) => s.poll_reset(cx).map(|_| ()),
                None => respond.poll_reset(cx).map(|_| ()),
            });
            tokio::select! {
                () = slow => {}
                () = cancelled => {
                    r.store(true, Ordering::SeqCst);
                    return;
                }
            }
            let mut send = match send {
                Some(s) => s,
                None => respond.send_response(grpc_head(), false).expect("head"),
            };
            let _ = send_message(&mut send, &msgs[0]).await;
            let _ = send.send_trailers(status(0));
        }
    });
    (up, reset)
}

/// `grpc-timeout: 200m` against an upstream that takes 2 s: `DEADLINE_EXCEEDED` as a
/// trailers-only answer well before then, and the upstream's stream is cancelled.
fn grpc_timeout_is_honoured(io: IoMode) {
    let (up, reset) = slow_upstream(false);
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let started = Instant::now();
    let a = c.run(WITHIN, async {
        let (resp, mut body) = c.open("/t.S/Unary", &[("grpc-timeout", "200m")]).await;
        body.send_data(echo_message(b"late"), true).expect("send");
        answer(resp.await.expect("head")).await
    });
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "the answer took {took:?}");
    assert!(
        took >= Duration::from_millis(150),
        "the answer came before the deadline: {took:?}"
    );
    assert!(a.trailers_only, "{a:?}");
    assert_eq!(a.status(), Some("4"), "{a:?}");
    eventually(Duration::from_secs(1), "the upstream's stream to be reset", || {
        reset.load(Ordering::SeqCst)
    })
    .unwrap();
}

/// The deadline still holds once the upstream has sent its response head: the call ends at
/// the deadline with `DEADLINE_EXCEEDED` in the trailers, not with the upstream's late answer,
/// and the upstream's stream is cancelled.
fn grpc_timeout_holds_after_the_head(io: IoMode) {
    let (up, reset) = slow_upstream(true);
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let started = Instant::now();
    let ended = c.run(WITHIN, async {
        let (resp, mut body) = c.open("/t.S/Unary", &[("grpc-timeout", "200m")]).await;
        body.send_data(echo_message(b"late"), true).expect("send");
        let resp = resp.await.expect("head");
        let mut recv = resp.into_body();
        let mut dec = MessageDecoder::new();
        match next_message(&mut recv, &mut dec).await {
            Ok(None) => Ok(recv.trailers().await.expect("trailers")),
            Ok(Some(m)) => panic!("the upstream's late message arrived: {m:?}"),
            Err(e) => Err(e),
        }
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the call ended after {took:?}: {ended:?}"
    );
    let trailers = ended.expect("the call ended with trailers").expect("trailers");
    assert_eq!(trailers["grpc-status"], "4");
    eventually(Duration::from_secs(1), "the upstream's stream to be reset", || {
        reset.load(Ordering::SeqCst)
    })
    .unwrap();
}

// ---- retries ----

/// An upstream that answers every call `UNAVAILABLE` (trailers-only), counting them.
fn unavailable_upstream() -> H2Upstream {
    upstream(|(req, mut respond): Stream| async move {
        let mut recv = req.into_body();
        let _ = request_messages(&mut recv).await;
        let mut head = grpc_head();
        head.headers_mut().insert("grpc-status", HeaderValue::from(14u32));
        head.headers_mut()
            .insert("grpc-message", HeaderValue::from_static("overloaded"));
        let _ = respond.send_response(head, true);
    })
}

/// `retryOn: unavailable` retries a `grpc-status: 14` on the other endpoint; `retryOn: 5xx`
/// alone does not (the HTTP status is 200).
fn retries_on_grpc_status(io: IoMode) {
    for (retry_on, retried) in [("unavailable", true), ("5xx", false)] {
        let good = H2Upstream::start(service);
        let bad = unavailable_upstream();
        let p = grpc_proxy(
            io,
            &[good.addr, bad.addr],
            &[
                vs_with(&format!("    retries: {{attempts: 2, retryOn: {retry_on}}}\n")),
                round_robin(),
            ],
        );
        let c = Conn::connect(p.http());
        let mut failed = 0;
        for i in 0..20 {
            let a = c.run(WITHIN, c.unary("/t.S/Unary", format!("call {i}").as_bytes()));
            match a.status() {
                Some("0") => assert_eq!(a.messages, vec![Bytes::from(format!("call {i}"))]),
                Some("14") => failed += 1,
                other => panic!("{retry_on}: status {other:?}: {a:?}"),
            }
        }
        let tried_bad = bad.streams.load(Ordering::SeqCst);
        assert!(tried_bad > 0, "{retry_on}: the failing endpoint was never tried");
        if retried {
            assert_eq!(failed, 0, "{retry_on}: calls failed");
            assert_eq!(good.streams.load(Ordering::SeqCst), 20);
        } else {
            assert_eq!(failed, tried_bad, "{retry_on}: a grpc-status 14 was retried");
            assert_eq!(good.streams.load(Ordering::SeqCst) + tried_bad, 20);
        }
    }
}

// ---- load balancing ----

/// Calls over one client connection are spread over all endpoints, call by call.
fn balanced_per_call_not_per_connection(io: IoMode) {
    let ups: Vec<H2Upstream> = (0..3).map(|_| upstream(service)).collect();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let p = grpc_proxy(io, &addrs, &[round_robin()]);
    let c = Conn::connect(p.http());
    for round in 0..10 {
        // 30 calls at once on the one connection.
        let answers = c.run(WITHIN, async {
            let payloads: Vec<String> = (0..30).map(|i| format!("{round}/{i}")).collect();
            let calls: Vec<_> = payloads.iter().map(|p| c.unary("/t.S/Unary", p.as_bytes())).collect();
            futures_util::future::join_all(calls).await
        });
        assert!(answers.iter().all(|a| a.status() == Some("0")), "{answers:?}");
    }
    let counts: Vec<usize> = ups.iter().map(|u| u.streams.load(Ordering::SeqCst)).collect();
    assert_eq!(counts.iter().sum::<usize>(), 300);
    assert!(counts.iter().all(|&n| (90..=110).contains(&n)), "uneven: {counts:?}");
}

// ---- back-pressure ----

/// A fast upstream sends 64 MiB to a client that does not read: the upstream stalls after the
/// windows (the proxy's stream window and the client's), so the proxy holds no more than that;
/// once the client reads, every byte arrives, intact and in order.
fn slow_reader_stalls_fast_upstream(io: IoMode) {
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let up = upstream(move |(_req, mut respond): Stream| {
        let s = s.clone();
        async move {
            let mut send = respond.send_response(Response::new(()), false).expect("head");
            if send_pattern(&mut send, BIG, &s, false).await.is_ok() {
                let _ = send.send_trailers(status(0));
            }
        }
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let resp = c.run(WITHIN, async {
        let (resp, mut body) = c.open("/big", &[]).await;
        body.send_data(Bytes::new(), true).expect("end");
        resp.await.expect("head")
    });
    let stalled = settled("the upstream to stall", || sent.load(Ordering::SeqCst));
    eprintln!("the upstream stalled after {stalled} bytes");
    let bound = PROXY_STREAM_WINDOW + PEER_WINDOW + SLACK;
    assert!(
        stalled <= bound,
        "the upstream sent {stalled} bytes to a client that reads nothing (bound {bound})"
    );
    let (got, trailers) = c.run(Duration::from_secs(120), async {
        let mut recv = resp.into_body();
        let got = read_pattern(&mut recv).await;
        (got, recv.trailers().await)
    });
    assert_eq!(got, Ok(BIG));
    assert_eq!(trailers.expect("trailers").unwrap()["grpc-status"], "0");
}

/// A server stream of many tiny messages (one DATA frame each) to a client that does not read:
/// the upstream stalls within the windows, the proxy's shared upstream connection survives
/// (`h2` closes a connection whose peer's small frames pile up unread), and once the client
/// reads, every message arrives in order.
fn slow_reader_of_small_messages(io: IoMode) {
    const N: u64 = 50_000;
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let up = upstream(move |(_req, mut respond): Stream| {
        let s = s.clone();
        async move {
            let mut send = respond.send_response(grpc_head(), false).expect("head");
            for i in 0..N {
                if send_message(&mut send, &[(i % 256) as u8]).await.is_err() {
                    return;
                }
                s.store(i + 1, Ordering::SeqCst);
            }
            let _ = send.send_trailers(status(0));
        }
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let resp = c.run(WITHIN, async {
        let (resp, mut body) = c.open("/t.S/Small", &[]).await;
        body.send_data(echo_message(b"go"), true).expect("send");
        resp.await.expect("head")
    });
    let stalled = settled("the upstream to stall", || sent.load(Ordering::SeqCst));
    eprintln!("the upstream stalled after {stalled} messages");
    // A one-byte message is 7 bytes on the wire.
    let bound = (PROXY_STREAM_WINDOW + PEER_WINDOW + SLACK) / 7;
    assert!(stalled < N, "all {N} messages went to a client that reads nothing");
    assert!(
        stalled <= bound,
        "{stalled} messages sent to a client that reads nothing (bound {bound})"
    );
    let a = c.run(Duration::from_secs(60), answer(resp));
    assert_eq!(a.messages.len() as u64, N);
    for (i, m) in a.messages.iter().enumerate() {
        assert_eq!(m[..], [(i % 256) as u8], "message {i}");
    }
    assert_eq!(a.status(), Some("0"));
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "the upstream connection was replaced"
    );
}

/// A fast client uploads 64 MiB to an upstream that does not read: the client stalls after
/// the windows; once the upstream reads, every byte arrives intact.
fn slow_upstream_stalls_fast_client(io: IoMode) {
    let go = Arc::new(Notify::new());
    let received = Arc::new(Mutex::new(None::<Result<u64, String>>));
    let (g, r) = (go.clone(), received.clone());
    let up = upstream(move |(req, mut respond): Stream| {
        let (g, r) = (g.clone(), r.clone());
        async move {
            g.notified().await;
            let mut recv = req.into_body();
            let got = read_pattern(&mut recv).await;
            *r.lock().unwrap() = Some(got);
            let mut send = respond.send_response(Response::new(()), false).expect("head");
            let _ = send.send_trailers(status(0));
        }
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let sent = Arc::new(AtomicU64::new(0));
    let (resp, mut body) = c.run(WITHIN, c.open("/sink", &[]));
    let s = sent.clone();
    let upload = c.rt.spawn(async move { send_pattern(&mut body, BIG, &s, true).await });
    let stalled = settled("the client to stall", || sent.load(Ordering::SeqCst));
    eprintln!("the client stalled after {stalled} bytes");
    let bound = PROXY_STREAM_WINDOW + PEER_WINDOW + SLACK;
    assert!(
        stalled <= bound,
        "the client sent {stalled} bytes to an upstream that reads nothing (bound {bound})"
    );
    go.notify_one();
    let a = c.run(Duration::from_secs(120), async {
        upload.await.expect("upload task").expect("upload");
        answer(resp.await.expect("head")).await
    });
    assert_eq!(a.status(), Some("0"));
    assert_eq!(*received.lock().unwrap(), Some(Ok(BIG)));
}

/// A client streaming many tiny messages (one DATA frame each) to an upstream that does not
/// read yet: the client stalls within the windows, its connection survives, and once the
/// upstream reads, every message arrives in order.
fn fast_client_of_small_messages(io: IoMode) {
    const N: u64 = 50_000;
    let go = Arc::new(Notify::new());
    let received = Arc::new(Mutex::new(None::<Vec<Bytes>>));
    let (g, r) = (go.clone(), received.clone());
    let up = upstream(move |(req, mut respond): Stream| {
        let (g, r) = (g.clone(), r.clone());
        async move {
            g.notified().await;
            let mut recv = req.into_body();
            let msgs = request_messages(&mut recv).await;
            *r.lock().unwrap() = Some(msgs);
            let mut send = respond.send_response(grpc_head(), false).expect("head");
            let _ = send.send_trailers(status(0));
        }
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let (resp, mut body) = c.run(WITHIN, c.open("/t.S/Small", &[]));
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let upload = c.rt.spawn(async move {
        for i in 0..N {
            send_message(&mut body, &[(i % 256) as u8]).await?;
            s.store(i + 1, Ordering::SeqCst);
        }
        body.send_data(Bytes::new(), true).map_err(|_| Reason::CANCEL)
    });
    let stalled = settled("the client to stall", || sent.load(Ordering::SeqCst));
    eprintln!("the client stalled after {stalled} messages");
    let bound = (PROXY_STREAM_WINDOW + PEER_WINDOW + SLACK) / 7;
    assert!(
        stalled <= bound,
        "{stalled} messages sent to an upstream that reads nothing (bound {bound})"
    );
    go.notify_one();
    let a = c.run(Duration::from_secs(60), async {
        upload.await.expect("upload task").expect("upload");
        answer(resp.await.expect("head")).await
    });
    assert_eq!(a.status(), Some("0"));
    let got = received.lock().unwrap().take().expect("the upstream read the request");
    assert_eq!(got.len() as u64, N);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m[..], [(i % 256) as u8], "message {i}");
    }
}

/// Streams of one connection served by the other worker keep flow control and cancellation:
/// with two workers, six slow-reader calls at once on one client connection (most handed to
/// the worker that does not own the connection) each stall their upstream within the windows;
/// cancelled ones are reset upstream, and the rest arrive whole.
fn handed_off_streams_keep_back_pressure_and_cancel(io: IoMode) {
    const CALLS: usize = 6;
    const SIZE: u64 = 8 << 20;
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..CALLS).map(|_| AtomicU64::new(0)).collect());
    let resets = Arc::new(AtomicUsize::new(0));
    let (s, r) = (sent.clone(), resets.clone());
    let up = upstream(move |(req, mut respond): Stream| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            let i: usize = req.uri().path().trim_start_matches("/call/").parse().unwrap();
            let mut send = respond.send_response(Response::new(()), false).expect("head");
            match send_pattern(&mut send, SIZE, &s[i], false).await {
                Ok(()) => {
                    let _ = send.send_trailers(status(0));
                }
                Err(_) => {
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", "").replace("workers: 1", "workers: 2"),
        service_entry_speaking("GRPC", "svc", "svc.test", 80, &[(up.addr, &[])]),
    ]);
    let c = Conn::connect(p.http());
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let path = format!("/call/{i}");
            c.run(WITHIN, async {
                let (resp, mut body) = c.open(&path, &[]).await;
                body.send_data(Bytes::new(), true).expect("end");
                (resp.await.expect("head"), body)
            })
        })
        .collect();
    let stats = ringmesh_tests::client::admin_get(p.admin(), "/stats/prometheus").1;
    let handed = stats
        .lines()
        .find_map(|l| l.strip_prefix("ringmesh_h2_streams_handed_off_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(handed > 0, "no stream went to the other worker:\n{stats}");
    let bound = PROXY_STREAM_WINDOW + PEER_WINDOW + SLACK;
    for (i, n) in sent.iter().enumerate() {
        let stalled = settled("an upstream stream to stall", || n.load(Ordering::SeqCst));
        assert!(
            stalled <= bound,
            "call {i}: {stalled} bytes sent to a client that reads nothing"
        );
    }
    let mut keep = Vec::new();
    for (i, (resp, mut body)) in calls.into_iter().enumerate() {
        if i % 2 == 1 {
            body.send_reset(Reason::CANCEL);
        } else {
            keep.push(resp);
        }
    }
    eventually(
        Duration::from_secs(5),
        "the cancelled calls to be reset upstream",
        || resets.load(Ordering::SeqCst) == CALLS / 2,
    )
    .unwrap();
    // Read together: the client's connection window is shared, so a stream read alone could
    // wait behind the unread ones.
    let reads = keep.into_iter().map(|resp| async {
        let mut recv = resp.into_body();
        read_pattern(&mut recv).await
    });
    let got = c.run(Duration::from_secs(60), futures_util::future::join_all(reads));
    assert!(got.iter().all(|g| *g == Ok(SIZE)), "{got:?}");
    assert_eq!(resets.load(Ordering::SeqCst), CALLS / 2);
}

/// Slow readers do not starve the other calls on a shared upstream connection: eight calls
/// whose clients read nothing each hold a stream window of unread response, more than a
/// connection window together, and a unary call on the same upstream connection still gets its
/// answer at once.
fn slow_readers_do_not_starve_a_shared_upstream_connection(io: IoMode) {
    const STALLED: usize = 8;
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..STALLED).map(|_| AtomicU64::new(0)).collect());
    let s = sent.clone();
    let up = upstream(move |(req, respond): Stream| {
        let s = s.clone();
        async move {
            let path = req.uri().path().to_owned();
            let Some(i) = path.strip_prefix("/call/") else {
                return service((req, respond)).await;
            };
            let i: usize = i.parse().unwrap();
            let mut respond = respond;
            let mut send = respond.send_response(Response::new(()), false).expect("head");
            let _ = send_pattern(&mut send, BIG, &s[i], false).await;
        }
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    // One client connection per slow reader: each has a connection window of its own, so only
    // the proxy's upstream connection is shared.
    let slow: Vec<_> = (0..STALLED)
        .map(|i| {
            let c = Conn::connect(p.http());
            let path = format!("/call/{i}");
            let held = c.run(WITHIN, async {
                let (resp, mut body) = c.open(&path, &[]).await;
                body.send_data(Bytes::new(), true).expect("end");
                (resp.await.expect("head"), body)
            });
            (c, held)
        })
        .collect();
    let total = settled("the upstream to stall", || {
        sent.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    });
    eprintln!(
        "the upstream stalled after {total} bytes: {:?}",
        sent.iter().map(|n| n.load(Ordering::SeqCst)).collect::<Vec<_>>()
    );
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "the calls share one upstream connection"
    );
    let c = Conn::connect(p.http());
    let a = c.run(Duration::from_secs(5), c.unary("/t.S/Unary", b"not starved"));
    assert_eq!(a.messages, vec![Bytes::from_static(b"not starved")]);
    assert_eq!(a.status(), Some("0"));
    drop(slow);
}

/// A few uploads stalled by a slow upstream do not stall the other calls of the same client
/// connection: three client-streaming calls each fill their stream window toward an upstream
/// that reads nothing, and a unary call on the same connection is still answered at once.
/// (The client connection's window, 1 MiB, is four stream windows: with four or more stalled
/// uploads the client's other request bodies wait, the price of bounding what one client can
/// make the proxy hold.)
fn stalled_uploads_do_not_starve_their_connection(io: IoMode) {
    const STALLED: usize = 3;
    // A connection window of its own large enough for every stalled upload, as gRPC servers
    // release theirs as bytes come off the wire: only the proxy's is under test.
    let mut settings = h2::server::Builder::new();
    settings
        .data_frame_budget(SMALL_FRAME_BUDGET)
        .initial_connection_window_size(16 << 20);
    let up = H2Upstream::start_with(settings, |(req, respond): Stream| async move {
        if req.uri().path() == "/t.S/Unary" {
            return service((req, respond)).await;
        }
        // Never reads: holds the stream until the test ends.
        let _held = (req, respond);
        std::future::pending::<()>().await;
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..STALLED).map(|_| AtomicU64::new(0)).collect());
    let mut uploads = Vec::new();
    for i in 0..STALLED {
        let (resp, mut body) = c.run(WITHIN, c.open("/t.S/Sink", &[]));
        let s = sent.clone();
        uploads.push((
            resp,
            c.rt.spawn(async move { send_pattern(&mut body, BIG, &s[i], true).await }),
        ));
    }
    let total = settled("the uploads to stall", || {
        sent.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    });
    eprintln!(
        "the client stalled after {total} bytes: {:?}",
        sent.iter().map(|n| n.load(Ordering::SeqCst)).collect::<Vec<_>>()
    );
    let a = c.run(Duration::from_secs(5), c.unary("/t.S/Unary", b"not starved"));
    assert_eq!(a.messages, vec![Bytes::from_static(b"not starved")]);
    for (_, task) in uploads {
        task.abort();
    }
}

// ---- cancellation and broken responses ----

/// What an upstream stream saw of its end.
#[derive(Default)]
struct Seen {
    reset: Mutex<Option<Reason>>,
    sent: AtomicUsize,
}

/// An upstream that streams messages for as long as it may, recording the reset that ends it;
/// with `hang`, it never answers at all and only waits for the reset.
fn endless_upstream(hang: bool) -> (H2Upstream, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let up = upstream(move |(_req, mut respond): Stream| {
        let s = s.clone();
        async move {
            if hang {
                let r = poll_fn(|cx| respond.poll_reset(cx)).await;
                *s.reset.lock().unwrap() = Some(r.unwrap_or(Reason::NO_ERROR));
                return;
            }
            let mut send = respond.send_response(grpc_head(), false).expect("head");
            for i in 0u64.. {
                if let Err(reason) = send_message(&mut send, i.to_string().as_bytes()).await {
                    *s.reset.lock().unwrap() = Some(reason);
                    return;
                }
                s.sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (up, seen)
}

/// A client that cancels a server stream (`RST_STREAM(CANCEL)`), mid-stream or before the
/// head: the upstream's stream is reset too, promptly.
fn client_cancel_reaches_the_upstream(io: IoMode) {
    for hang in [false, true] {
        let (up, seen) = endless_upstream(hang);
        let p = grpc_proxy(io, &[up.addr], &[]);
        let c = Conn::connect(p.http());
        let (resp, mut body) = c.run(WITHIN, async {
            let (resp, mut body) = c.open("/t.S/Endless", &[]).await;
            body.send_data(echo_message(b"go"), false).expect("send");
            (resp, body)
        });
        let _held = if hang {
            eventually(Duration::from_secs(5), "the call to reach the upstream", || {
                up.streams.load(Ordering::SeqCst) == 1
            })
            .unwrap();
            None
        } else {
            let recv = c.run(WITHIN, async {
                let mut recv = resp.await.expect("head").into_body();
                let mut dec = MessageDecoder::new();
                for i in 0..10 {
                    let m = next_message(&mut recv, &mut dec).await.unwrap().unwrap();
                    assert_eq!(m, i.to_string().as_bytes());
                }
                recv
            });
            Some(recv)
        };
        body.send_reset(Reason::CANCEL);
        eventually(Duration::from_secs(2), "the upstream's stream to be reset", || {
            seen.reset.lock().unwrap().is_some()
        })
        .unwrap_or_else(|e| panic!("hang={hang}: {e}"));
        let reason = seen.reset.lock().unwrap().unwrap();
        assert_eq!(reason, Reason::CANCEL, "hang={hang}");
    }
}

/// The upstream breaks a response off mid-stream — resets its stream, or closes its
/// connection — and the client's stream is reset too, never ended cleanly; the client's
/// connection goes on serving calls.
fn upstream_break_resets_the_client_stream(io: IoMode) {
    for close in [false, true] {
        let reset_now = Arc::new(Notify::new());
        let r = reset_now.clone();
        let up = upstream(move |(req, mut respond): Stream| {
            let r = r.clone();
            async move {
                if req.uri().path() == "/t.S/Unary" {
                    return service((req, respond)).await;
                }
                let mut send = respond.send_response(grpc_head(), false).expect("head");
                for i in 0..5 {
                    let _ = send_message(&mut send, i.to_string().as_bytes()).await;
                }
                r.notified().await;
                send.send_reset(Reason::INTERNAL_ERROR);
            }
        });
        let p = grpc_proxy(io, &[up.addr], &[]);
        let c = Conn::connect(p.http());
        let (mut recv, mut dec, _body) = c.run(WITHIN, first_five(&c, "/t.S/Break"));
        if close {
            up.close_connections();
        } else {
            reset_now.notify_one();
        }
        let end = c.run(WITHIN, async {
            match next_message(&mut recv, &mut dec).await {
                Ok(m) => Ok((m, recv.trailers().await)),
                Err(e) => Err(e),
            }
        });
        match end {
            Err(e) => assert!(e.is_reset(), "close={close}: {e}"),
            Ok(clean) => panic!("close={close}: the broken response ended cleanly: {clean:?}"),
        }
        let a = c.run(WITHIN, c.unary("/t.S/Unary", b"after"));
        assert_eq!(a.status(), Some("0"), "close={close}: {a:?}");
    }
}

/// An upstream that resets a call before answering it: the client gets a gRPC status,
/// `UNAVAILABLE` as a trailers-only answer, not a bare reset (after the default retry, which
/// includes resets).
fn upstream_reset_before_the_head_is_unavailable(io: IoMode) {
    let up = upstream(|(req, mut respond): Stream| async move {
        let mut recv = req.into_body();
        let _ = request_messages(&mut recv).await;
        respond.send_reset(Reason::INTERNAL_ERROR);
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let a = c.run(WITHIN, c.unary("/t.S/Unary", b"reset me"));
    assert!(a.trailers_only, "{a:?}");
    assert_eq!(a.status(), Some("14"), "{a:?}");
    assert!(up.streams.load(Ordering::SeqCst) >= 1);
}

/// An upstream that goes away gracefully (`GOAWAY`) in the middle of a server stream: the
/// stream is served to its end, and the next call goes over a new connection.
fn upstream_goaway_lets_open_streams_finish(io: IoMode) {
    let more = Arc::new(Notify::new());
    let m = more.clone();
    let up = upstream(move |(req, respond): Stream| {
        let m = m.clone();
        async move {
            if req.uri().path() == "/t.S/Unary" {
                return service((req, respond)).await;
            }
            let mut respond = respond;
            let mut send = respond.send_response(grpc_head(), false).expect("head");
            for i in 0..10u32 {
                if i == 5 {
                    m.notified().await;
                }
                let _ = send_message(&mut send, i.to_string().as_bytes()).await;
            }
            let _ = send.send_trailers(status(0));
        }
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let c = Conn::connect(p.http());
    let (mut recv, mut dec, _body) = c.run(WITHIN, first_five(&c, "/t.S/Drain"));
    up.go_away();
    // Calls go on succeeding; once the proxy has read the GOAWAY, they open a new connection.
    eventually(Duration::from_secs(5), "a call over a new connection", || {
        let a = c.run(WITHIN, c.unary("/t.S/Unary", b"after goaway"));
        assert_eq!(a.status(), Some("0"), "{a:?}");
        up.connections.load(Ordering::SeqCst) == 2
    })
    .unwrap();
    more.notify_one();
    let trailers = c.run(WITHIN, async {
        for i in 5..10 {
            let m = next_message(&mut recv, &mut dec)
                .await
                .expect("the stream goes on")
                .unwrap();
            assert_eq!(m, i.to_string().as_bytes());
        }
        assert_eq!(next_message(&mut recv, &mut dec).await.unwrap(), None);
        recv.trailers().await.expect("trailers")
    });
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

/// An HTTP/1.1 upstream that closes its connection in the middle of a body (fewer bytes than
/// its `content-length`): the HTTP/2 client's stream is reset, never ended cleanly.
fn h1_upstream_break_resets_the_client_stream(io: IoMode) {
    let up = ringmesh_tests::upstream::Upstream::start("h1", |_| {
        ringmesh_tests::upstream::Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial".to_vec())
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry_speaking("HTTP", "svc", "svc.test", 80, &[(up.addr, &[])]),
    ]);
    let c = Conn::connect(p.http());
    // The reset may come before the head (the head and the reset went out together, and
    // `h2` drops a queued head when its stream is reset) or after some of the body.
    let end = c.run(WITHIN, async {
        let (resp, mut body) = c.open("/broken", &[]).await;
        body.send_data(Bytes::new(), true).expect("end");
        let mut recv = resp.await?.into_body();
        let mut got = 0;
        loop {
            match recv.data().await {
                Some(chunk) => got += chunk?.len(),
                None => return Ok::<_, h2::Error>((got, recv.trailers().await)),
            }
        }
    });
    match end {
        Err(e) => assert!(e.is_reset(), "{e}"),
        Ok((n, t)) => panic!("a truncated body ended cleanly after {n} bytes: {t:?}"),
    }
}

/// An HTTP/1.1 client that does not read, behind the proxy from a fast HTTP/2 upstream: the
/// upstream stalls after the proxy's stream window and the sockets' buffers, not after the
/// whole body; then every byte arrives intact.
fn slow_h1_reader_stalls_fast_h2_upstream(io: IoMode) {
    use std::io::{Read, Write};
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let up = upstream(move |(_req, mut respond): Stream| {
        let s = s.clone();
        async move {
            let mut head = Response::new(());
            head.headers_mut().insert("content-length", HeaderValue::from(BIG));
            let mut send = respond.send_response(head, false).expect("head");
            if send_pattern(&mut send, BIG, &s, true).await.is_err() {
                s.store(u64::MAX, Ordering::SeqCst);
            }
        }
    });
    let p = grpc_proxy(io, &[up.addr], &[]);
    let mut tcp = std::net::TcpStream::connect(p.http()).expect("connect");
    tcp.write_all(b"GET /big HTTP/1.1\r\nHost: svc.test\r\n\r\n").unwrap();
    let stalled = settled("the upstream to stall", || sent.load(Ordering::SeqCst));
    eprintln!("the upstream stalled after {stalled} bytes");
    // Loopback socket buffers grow to a few MiB each way; the body is 64 MiB.
    assert!(
        stalled <= 16 << 20,
        "the upstream sent {stalled} bytes to a client that reads nothing"
    );
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let mut off = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    tcp.set_read_timeout(Some(WITHIN)).unwrap();
    while off < BIG {
        let n = tcp.read(&mut buf).expect("body");
        assert!(n > 0, "the body ended at {off}");
        assert!(buf[..n] == pattern(off, n)[..], "body corrupt at {off}");
        off += n as u64;
    }
    assert_eq!(off, BIG);
}

both_io!(
    unary,
    client_streaming,
    server_streaming,
    bidirectional,
    grpc_timeout_is_honoured,
    grpc_timeout_holds_after_the_head,
    retries_on_grpc_status,
    balanced_per_call_not_per_connection,
    slow_reader_stalls_fast_upstream,
    slow_reader_of_small_messages,
    slow_upstream_stalls_fast_client,
    fast_client_of_small_messages,
    handed_off_streams_keep_back_pressure_and_cancel,
    slow_readers_do_not_starve_a_shared_upstream_connection,
    stalled_uploads_do_not_starve_their_connection,
    client_cancel_reaches_the_upstream,
    upstream_break_resets_the_client_stream,
    upstream_reset_before_the_head_is_unavailable,
    upstream_goaway_lets_open_streams_finish,
    h1_upstream_break_resets_the_client_stream,
    slow_h1_reader_stalls_fast_h2_upstream,
);
