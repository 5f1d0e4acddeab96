//! The suite's own OTLP collector: where `ringmesh-telemetry`'s proxy exports its spans, so
//! that the row traces as a proxy in a mesh with a collector does (spans made, batched, encoded
//! and sent over OTLP/gRPC from the proxy's control thread), and so that the suite can tell,
//! after the rounds, that they arrived ([`crate::telemetry`]).
//!
//! A `TraceService` server (the one generated in `ringmesh_api::otlp`, on tonic) on 127.0.0.1,
//! on a current-thread runtime of its own thread in the suite's process. It decodes each export
//! request, counts its spans and answers success; it keeps nothing else. At 1 % sampling the
//! proxy sends it a batch every few seconds, so it costs the load generator beside it nothing
//! measurable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use ringmesh_api::otlp::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use ringmesh_api::otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use serde::Serialize;

/// What the sink counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Received {
    /// Spans, over all export requests.
    pub spans: u64,
    /// Export requests (`TraceService/Export` calls).
    pub requests: u64,
}

#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    requests: AtomicU64,
}

/// Spans in one export request.
fn spans_in(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

struct Service(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.spans.fetch_add(spans_in(request.get_ref()), Ordering::Relaxed);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running collector on 127.0.0.1; stops (and closes its connections) on drop.
#[derive(Debug)]
pub struct SpanSink {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SpanSink {
    /// Binds a free port on 127.0.0.1 and serves OTLP/gRPC there until dropped.
    pub fn start() -> anyhow::Result<SpanSink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the span collector")?;
        listener.set_nonblocking(true).context("span collector: nonblocking")?;
        let addr = listener.local_addr().context("span collector: local address")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("span collector: building its runtime")?;
        let counts = Arc::new(Counts::default());
        let router = tonic::transport::Server::builder().add_service(TraceServiceServer::new(Service(counts.clone())));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("span-sink".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let incoming = tonic::transport::server::TcpIncoming::from(listener);
                            tokio::spawn(router.serve_with_incoming(incoming));
                        }
                        Err(e) => tracing::error!("span collector on {addr}: {e}"),
                    }
                    let _ = stopped.await;
                });
                // Dropping the runtime ends the server and its connections.
                drop(rt);
            })
            .context("span collector: spawning its thread")?;
        Ok(SpanSink {
            addr,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it received so far.
    pub fn received(&self) -> Received {
        Received {
            spans: self.counts.spans.load(Ordering::Relaxed),
            requests: self.counts.requests.load(Ordering::Relaxed),
        }
    }
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_api::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
    use ringmesh_api::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(per_scope: &[usize]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: per_scope
                    .iter()
                    .map(|&n| ScopeSpans {
                        spans: vec![Span::default(); n],
                        ..ScopeSpans::default()
                    })
                    .collect(),
                ..ResourceSpans::default()
            }],
        }
    }

    #[test]
    fn counts_the_spans_of_every_export_it_is_sent() {
        let sink = SpanSink::start().unwrap();
        assert_eq!(sink.received(), Received::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sink.addr()))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = TraceServiceClient::new(channel);
            client.export(request(&[3, 2])).await.unwrap();
            client.export(request(&[])).await.unwrap();
            client.export(request(&[7])).await.unwrap();
            client
        });
        // Each call was answered after it was counted.
        assert_eq!(sink.received(), Received { spans: 12, requests: 3 });
        // Stops on drop, with a client still connected.
        drop(sink);
        drop(client);
    }
}
