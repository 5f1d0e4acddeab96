//! Helpers shared by the control plane's integration tests: a temporary directory, the
//! discovery service on a loopback port, and [`FakeProxy`], the one client that speaks the
//! discovery stream as a proxy does (Hello, snapshots rebuilt from deltas, ACK/NACK, health).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message as _;
use ringmesh_api::delta::Assembler;
use ringmesh_api::proto::discovery_client::DiscoveryClient;
use ringmesh_api::proto::{
    control_message, proxy_message, Ack, ControlMessage, Health, Hello, Nack, ProxyMessage, Snapshot, SnapshotDelta,
    Workload,
};
use ringmesh_control::server::ControlPlane;
#[allow(unused_imports)]
pub use ringmesh_testkit::{eventually, eventually_async};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

/// How long a fake proxy waits for the next message before the test fails.
const MESSAGE_WAIT: Duration = Duration::from_secs(5);

/// An empty directory for one test (named by the test binary's `prefix` and `name`, plus a
/// random suffix). The directory is removed when the returned guard drops, so the caller keeps
/// it for the whole test (a panicking test unwinds through the drop and cleans up too).
pub fn temp_dir(prefix: &str, name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ringmesh-{prefix}-{name}-"))
        .tempdir()
        .unwrap()
}

/// Serves `cp`'s Discovery service on an ephemeral loopback port.
pub async fn serve_discovery(cp: &ControlPlane) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = cp.service();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    addr
}

/// The `Hello` a proxy opens its stream with: node `node_id` running `workload`, speaking
/// `protocol_version`, serving nothing yet.
pub fn hello(node_id: &str, workload: Workload, protocol_version: u32) -> ProxyMessage {
    ProxyMessage {
        message: Some(proxy_message::Message::Hello(Hello {
            node_id: node_id.into(),
            workload: Some(workload),
            proxy_version: "test".into(),
            protocol_version,
            serving_version: 0,
            credential: String::new(),
        })),
    }
}

/// A proxy's side of one discovery stream.
pub struct FakeProxy {
    tx: mpsc::Sender<ProxyMessage>,
    rx: Streaming<ControlMessage>,
    /// Rebuilds whole snapshots from deltas, as the proxy does.
    pub assembler: Assembler,
}

impl FakeProxy {
    /// Opens a stream to `addr` whose first message is `first` (a [`hello`], as a proxy sends).
    pub async fn connect(addr: SocketAddr, first: ProxyMessage) -> FakeProxy {
        Self::try_connect(addr, first).await.expect("the stream opens")
    }

    /// Like [`FakeProxy::connect`], returning the control plane's refusal to open the stream.
    pub async fn try_connect(addr: SocketAddr, first: ProxyMessage) -> Result<FakeProxy, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = DiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(FakeProxy {
            tx,
            rx,
            assembler: Assembler::new(),
        })
    }

    /// The next message; `None` once the stream ended. Fails the test if none comes in 5 s.
    pub async fn next(&mut self) -> Option<ControlMessage> {
        tokio::time::timeout(MESSAGE_WAIT, self.rx.message())
            .await
            .expect("no message within 5s")
            .ok()
            .flatten()
    }

    /// The next snapshot that changes documents or endpoints: the push that only says the
    /// registry's warm-up ended (`grace` after start) is acknowledged and skipped.
    pub async fn snapshot(&mut self) -> Snapshot {
        loop {
            let m = self.next().await.expect("stream open");
            match self.assembler.feed(m.clone()) {
                Ok(Some(s)) => {
                    if only_ends_the_warm_up(&m) {
                        self.ack(&s).await;
                        continue;
                    }
                    return s;
                }
                Ok(None) if m.message.is_some() => {}
                other => panic!("expected a snapshot, got {m:?}: {other:?}"),
            }
        }
    }

    /// The next snapshot (as [`FakeProxy::snapshot`]) if one comes within `wait`.
    pub async fn snapshot_or_none(&mut self, wait: Duration) -> Option<Snapshot> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Ok(Ok(Some(m))) => match self.assembler.feed(m.clone()) {
                    Ok(Some(s)) if only_ends_the_warm_up(&m) => self.ack(&s).await,
                    Ok(Some(s)) => return Some(s),
                    Ok(None) => {}
                    Err(e) => panic!("{e}"),
                },
                _ => return None,
            }
        }
    }

    /// The first snapshot within `within` for which `wanted` holds, skipping the others
    /// unacknowledged; `None` if none comes or the stream ends first.
    pub async fn snapshot_where(&mut self, within: Duration, wanted: impl Fn(&Snapshot) -> bool) -> Option<Snapshot> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Ok(Ok(Some(m))) => match self.assembler.feed(m) {
                    Ok(Some(s)) if wanted(&s) => return Some(s),
                    Ok(_) => {}
                    Err(e) => panic!("{e}"),
                },
                _ => return None,
            }
        }
    }

    /// Sends `message` on the stream.
    pub async fn send(&self, message: proxy_message::Message) {
        self.tx
            .send(ProxyMessage { message: Some(message) })
            .await
            .expect("the stream's sender is open");
    }

    /// Acknowledges `s`.
    pub async fn ack(&self, s: &Snapshot) {
        self.send(proxy_message::Message::Ack(Ack {
            version: s.version,
            nonce: s.nonce.clone(),
        }))
        .await;
    }

    /// Refuses `s` with `error`.
    pub async fn nack(&self, s: &Snapshot, error: &str) {
        self.send(proxy_message::Message::Nack(Nack {
            version: s.version,
            nonce: s.nonce.clone(),
            error: error.into(),
        }))
        .await;
    }

    /// Reports the workload ready or not.
    pub async fn health(&self, ready: bool) {
        self.send(proxy_message::Message::Health(Health { ready })).await;
    }
}

/// Whether `m` is the delta that only says the registry is warm now.
fn only_ends_the_warm_up(m: &ControlMessage) -> bool {
    matches!(&m.message, Some(control_message::Message::SharedDelta(d))
    if SnapshotDelta::decode(d.delta.clone()).is_ok_and(|d| {
        !d.reset && d.documents.is_empty() && d.removed_documents.is_empty()
            && d.endpoints.is_empty() && d.removed_endpoints.is_empty() && !d.registry_warming
    }))
}
