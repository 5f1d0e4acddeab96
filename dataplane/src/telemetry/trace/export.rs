//! The span exporter: a task on the control thread (tokio) that takes the workers' batches
//! off the hand-off channel into a bounded queue and sends them to an OTLP collector, over
//! gRPC (`TraceService/Export`, a tonic channel that reconnects by itself) or HTTP (`POST
//! /v1/traces` with a protobuf body, one persistent HTTP/1.1 connection opened again after a
//! failure).
//!
//! One export is in flight at a time; while it runs, batches keep arriving into the queue, so
//! a slow collector fills the queue and the spans beyond it are dropped and counted — never
//! pushed back to the workers. An export that fails with a retryable error (gRPC
//! `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, …; HTTP 429, 502, 503, 504, or no
//! connection) is tried twice more after 100 and 200 ms, each try bounded by the configured
//! timeout; then its spans are dropped and counted with the failure. The collector's address
//! and protocol are read from the running snapshot before each export, so a reload that
//! changes them takes effect on the next one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ringmesh_api::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use ringmesh_api::otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use ringmesh_api::otlp::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use ringmesh_api::otlp::resource::v1::Resource;
use ringmesh_api::otlp::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use ringmesh_api::snapshot::{OtlpExport, OtlpProtocol, SpanIdentity, Tracing};

use super::span::{SpanKind, SpanRecord};
use super::stats::ExportStats;
use crate::state::SnapshotSource;

/// Tries of one export: the first and two retries.
const TRIES: u32 = 3;
/// Wait before the first retry; doubled for the next.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// The collector answered with a gRPC error.
    #[error("collector answered {0}")]
    Grpc(tonic::Status),
    /// The collector answered with an HTTP error status.
    #[error("collector answered HTTP {0}")]
    Http(u16),
    /// No connection, or it broke.
    #[error("connection to the collector failed: {0}")]
    Connection(String),
    /// The try took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ExportError {
    /// Whether OTLP says the same request may be sent again.
    pub(super) fn retryable(&self) -> bool {
        use tonic::Code;
        match self {
            ExportError::Grpc(s) => matches!(
                s.code(),
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::OutOfRange
                    | Code::DataLoss
            ),
            ExportError::Http(status) => matches!(status, 429 | 502 | 503 | 504),
            ExportError::Connection(_) | ExportError::Timeout(_) => true,
        }
    }
}

/// Where a client sends: the parts of [`OtlpExport`] a connection depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    service: String,
    port: u16,
    protocol: OtlpProtocol,
}

impl Target {
    fn of(e: &OtlpExport) -> Self {
        Target {
            service: e.service.clone(),
            port: e.port,
            protocol: e.protocol.clone(),
        }
    }

    /// `host:port`, an IPv6 address in brackets.
    fn authority(&self) -> String {
        if self.service.contains(':') && !self.service.starts_with('[') {
            format!("[{}]:{}", self.service, self.port)
        } else {
            format!("{}:{}", self.service, self.port)
        }
    }
}

/// A connection to the collector, moved into the export future and back out of it.
#[derive(Debug)]
enum Client {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(HttpClient),
}

impl Client {
    fn new(target: &Target, timeout: Duration) -> Result<Client, ExportError> {
        match &target.protocol {
            OtlpProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", target.authority()))
                    .map_err(|e| ExportError::Connection(e.to_string()))?
                    .connect_timeout(timeout);
                Ok(Client::Grpc(TraceServiceClient::new(endpoint.connect_lazy())))
            }
            OtlpProtocol::Http { path } => Ok(Client::Http(HttpClient {
                authority: target.authority(),
                path: path.clone(),
                sender: None,
            })),
        }
    }

    /// One try of one request.
    async fn send(&mut self, req: &ExportTraceServiceRequest) -> Result<ExportTraceServiceResponse, ExportError> {
        match self {
            Client::Grpc(c) => c
                .export(req.clone())
                .await
                .map(tonic::Response::into_inner)
                .map_err(ExportError::Grpc),
            Client::Http(c) => c.send(req).await,
        }
    }
}

/// OTLP/HTTP over one HTTP/1.1 connection, made when needed.
#[derive(Debug)]
struct HttpClient {
    authority: String,
    path: String,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    // The control thread is the one place tokio tasks are allowed (dataplane/clippy.toml).
    #[allow(clippy::disallowed_methods)]
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ExportError> {
        let conn = |e: &dyn std::fmt::Display| ExportError::Connection(e.to_string());
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| conn(&e))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| conn(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn send(&mut self, req: &ExportTraceServiceRequest) -> Result<ExportTraceServiceResponse, ExportError> {
        use prost::Message;
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| ExportError::Connection(e.to_string()))?;
        let request = http::Request::post(self.path.as_str())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(req.encode_to_vec())))
            .map_err(|e| ExportError::Connection(e.to_string()))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| ExportError::Connection(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ExportError::Connection(e.to_string()))?
            .to_bytes();
        // The connection carries the next export too.
        self.sender = Some(sender);
        if !(200..300).contains(&status) {
            return Err(ExportError::Http(status));
        }
        // An empty or undecodable body is a full success (OTLP/HTTP §"Full Success").
        Ok(ExportTraceServiceResponse::decode(body).unwrap_or_default())
    }
}

/// What one export did: the client back (with where it sends), the spans it carried, the
/// collector's answer.
type Done = (Target, Client, u64, Result<ExportTraceServiceResponse, ExportError>);

/// Runs until every worker's sender is gone (the proxy stopped).
pub(crate) async fn run(
    from_workers: flume::Receiver<Vec<SpanRecord>>,
    source: Arc<SnapshotSource>,
    stats: Arc<ExportStats>,
) {
    let mut queue: VecDeque<SpanRecord> = VecDeque::new();
    // The client while no export runs (an export owns it until it returns it).
    let mut idle: Option<(Target, Client)> = None;
    let mut in_flight: Option<Pin<Box<dyn Future<Output = Done> + Send>>> = None;
    loop {
        tokio::select! {
            batch = from_workers.recv_async() => {
                let Ok(batch) = batch else { break };
                let limit = source.load().telemetry.tracing.export.as_ref().map_or(0, |e| e.max_queue_size);
                enqueue(&mut queue, batch, limit, &stats);
            }
            (target, client, n, result) = async { in_flight.as_mut().expect("guarded by the branch condition").await }, if in_flight.is_some() => {
                in_flight = None;
                account(n, result, &stats);
                idle = Some((target, client));
            }
        }
        if in_flight.is_some() || queue.is_empty() {
            continue;
        }
        let snapshot = source.load();
        let tracing = &snapshot.telemetry.tracing;
        let Some(export) = tracing.export.as_ref().filter(|_| tracing.enabled) else {
            // Tracing or its exporter was turned off by a reload: what was queued cannot go.
            ExportStats::add(&stats.dropped_export_failed, queue.len() as u64);
            queue.clear();
            idle = None;
            continue;
        };
        let target = Target::of(export);
        let client = match idle.take() {
            Some((t, c)) if t == target => c,
            _ => match Client::new(&target, export.timeout) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(collector = %target.authority(), "span export: {e}");
                    ExportStats::add(&stats.failures, 1);
                    ExportStats::add(&stats.dropped_export_failed, queue.len() as u64);
                    queue.clear();
                    continue;
                }
            },
        };
        let n = queue.len().min(export.max_export_batch_size);
        let request = request(queue.drain(..n), tracing, &snapshot);
        in_flight = Some(Box::pin(export_with_retries(
            target,
            client,
            request,
            n as u64,
            export.timeout,
        )));
    }
}

/// Adds a worker's batch to the queue; what does not fit under `limit` is dropped and counted.
pub(super) fn enqueue(queue: &mut VecDeque<SpanRecord>, batch: Vec<SpanRecord>, limit: usize, stats: &ExportStats) {
    let room = limit.saturating_sub(queue.len());
    let lost = batch.len().saturating_sub(room);
    if lost > 0 {
        ExportStats::add(&stats.dropped_queue_full, lost as u64);
    }
    queue.extend(batch.into_iter().take(room));
}

pub(super) fn account(n: u64, result: Result<ExportTraceServiceResponse, ExportError>, stats: &ExportStats) {
    match result {
        Ok(resp) => {
            let rejected = resp
                .partial_success
                .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                .min(n);
            ExportStats::add(&stats.exported, n - rejected);
            ExportStats::add(&stats.dropped_export_failed, rejected);
        }
        Err(_) => {
            ExportStats::add(&stats.failures, 1);
            ExportStats::add(&stats.dropped_export_failed, n);
        }
    }
}

async fn export_with_retries(
    target: Target,
    mut client: Client,
    req: ExportTraceServiceRequest,
    n: u64,
    timeout: Duration,
) -> Done {
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        let result = match tokio::time::timeout(timeout, client.send(&req)).await {
            Ok(r) => r,
            Err(_) => Err(ExportError::Timeout(timeout)),
        };
        match result {
            Err(e) if e.retryable() && tries < TRIES => {
                tracing::debug!(tries, "span export failed, retrying: {e}");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                tracing::warn!(spans = n, "span export failed, spans dropped: {e}");
                return (target, client, n, Err(e));
            }
            Ok(resp) => return (target, client, n, Ok(resp)),
        }
    }
}

/// One export request: the proxy as the resource, its spans under the `ringmesh` scope.
pub(crate) fn request(
    spans: impl Iterator<Item = SpanRecord>,
    tracing: &Tracing,
    snapshot: &ringmesh_api::snapshot::Snapshot,
) -> ExportTraceServiceRequest {
    let id = &tracing.identity;
    // A node id given on the command line (`--node-id`) is what the control plane knows.
    let node_id = snapshot
        .proxy
        .control_plane
        .as_ref()
        .map_or(id.node_id.as_str(), |cp| cp.node_id.as_str());
    let spans = spans.map(|s| span_of(s, id, node_id)).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", &id.service_name),
                    kv("istio.canonical_service", &id.canonical_service),
                    kv("istio.canonical_revision", &id.canonical_revision),
                    kv("istio.mesh_id", &id.mesh_id),
                    kv("istio.namespace", &id.namespace),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "ringmesh-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A span in OTLP, with Envoy's tags as string attributes (Envoy's OpenTelemetry tracer sets
/// every tag as a string) and Istio's `istio.*` tags.
fn span_of(s: SpanRecord, id: &SpanIdentity, node_id: &str) -> Span {
    let error = s.is_error();
    let mut attributes = Vec::with_capacity(24);
    attributes.push(kv("node_id", node_id));
    attributes.push(kv("zone", &id.zone));
    if let Some(rid) = s.request_id {
        attributes.push(kv("guid:x-request-id", rid));
    }
    attributes.push(kv("http.url", s.url));
    attributes.push(kv("http.method", s.method));
    attributes.push(kv("downstream_cluster", s.downstream_cluster));
    attributes.push(kv("user_agent", s.user_agent));
    attributes.push(kv("http.protocol", s.protocol));
    attributes.push(kv("peer.address", s.peer.to_string()));
    attributes.push(kv("request_size", s.request_size.to_string()));
    attributes.push(kv("response_size", s.response_size.to_string()));
    attributes.push(kv("component", "proxy"));
    if let Some(c) = s.cluster {
        attributes.push(kv("upstream_cluster", c.clone()));
        attributes.push(kv("upstream_cluster.name", c));
    }
    attributes.push(kv("http.status_code", s.status.to_string()));
    attributes.push(kv("response_flags", s.response_flags));
    if let Some(g) = s.grpc_status {
        attributes.push(kv("grpc.status_code", g.to_string()));
    }
    if error {
        attributes.push(kv("error", "true"));
    }
    attributes.push(kv("istio.canonical_revision", &id.canonical_revision));
    attributes.push(kv("istio.canonical_service", &id.canonical_service));
    attributes.push(kv("istio.mesh_id", &id.mesh_id));
    attributes.push(kv("istio.namespace", &id.namespace));
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name,
        kind: match s.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}
