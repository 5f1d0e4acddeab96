//! An OTLP trace collector on 127.0.0.1 that keeps every span it is sent: over gRPC (the
//! `TraceService` server generated in `ringmesh_api::otlp`, on tonic) or over HTTP/protobuf
//! (`POST /v1/traces`, a small HTTP/1.1 server with keep-alive); and one that accepts
//! connections and never answers, to stall an exporter.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use prost::Message;
use ringmesh_api::otlp::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use ringmesh_api::otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use ringmesh_api::otlp::common::v1::{any_value, KeyValue};
use ringmesh_api::otlp::trace::v1::Span;

/// One span as the collector got it, with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// The span.
    pub span: Span,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ReceivedSpan {
    /// The trace id, lower-case hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id, lower-case hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id, lower-case hex; empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string attribute.
    pub fn attr(&self, key: &str) -> Option<String> {
        string_attr(&self.span.attributes, key)
    }

    /// OTLP's span kind (2 server, 3 client).
    pub fn kind(&self) -> i32 {
        self.span.kind
    }
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

fn keep(spans: &Spans, req: ExportTraceServiceRequest) {
    let mut all = spans.lock().expect("spans");
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| string_attr(&r.attributes, "service.name"))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                all.push(ReceivedSpan {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
}

/// A running collector; stops on drop.
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Spans,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("addr", &self.addr).finish()
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// OTLP/gRPC.
    pub fn grpc() -> Collector {
        let spans = Spans::default();
        let router = tonic::transport::Server::builder().add_service(TraceServiceServer::new(Grpc(spans.clone())));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (addr, thread) = crate::control::serve_on_thread("127.0.0.1:0".parse().expect("addr"), router, async {
            let _ = rx.await;
        });
        Collector {
            addr,
            spans,
            stop: Some(tx),
            stopped: Arc::new(AtomicBool::new(false)),
            thread: Some(thread),
        }
    }

    /// OTLP/HTTP with protobuf bodies on `/v1/traces`.
    pub fn http() -> Collector {
        Self::blocking(true)
    }

    /// Accepts connections and reads, but never answers: an export to it waits for its timeout.
    pub fn stalled() -> Collector {
        Self::blocking(false)
    }

    fn blocking(answer: bool) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let spans = Spans::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let thread = {
            let (spans, stopped) = (spans.clone(), stopped.clone());
            thread::spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (spans, stopped) = (spans.clone(), stopped.clone());
                            thread::spawn(move || serve_http(s, answer, &spans, &stopped));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Collector {
            addr,
            spans,
            stop: None,
            stopped,
            thread: Some(thread),
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (up to 10 s) until at least `n` spans arrived; returns them all.
    pub fn wait_for(&self, n: usize) -> Vec<ReceivedSpan> {
        let mut got = Vec::new();
        ringmesh_testkit::eventually(Duration::from_secs(10), &format!("{n} spans at the collector"), || {
            got = self.spans();
            got.len() >= n
        })
        .unwrap_or_else(|e| panic!("{e}: got {got:#?}"));
        got
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection of the HTTP collector: requests with a `content-length` body, answered 200
/// with an empty body (OTLP/HTTP's full success), until the peer closes.
fn serve_http(mut s: TcpStream, answer: bool, spans: &Spans, stopped: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !stopped.load(Ordering::Relaxed) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = req.parse(&buf) {
            let ok = req.method == Some("POST")
                && req.path == Some("/v1/traces")
                && req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("content-type") && h.value == b"application/x-protobuf");
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_len + len {
                let body: Vec<u8> = buf.drain(..head_len + len).skip(head_len).collect();
                if !answer {
                    continue;
                }
                let status = match ExportTraceServiceRequest::decode(&body[..]) {
                    Ok(r) if ok => {
                        keep(spans, r);
                        "200 OK"
                    }
                    _ => "400 Bad Request",
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
                if s.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
