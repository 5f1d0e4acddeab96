//! The simulated proxies: N discovery streams from one process, each a proxy as the control
//! plane sees it.
//!
//! A simulated proxy connects as `ringmesh-proxy` does (its own HTTP/2 connection, 2 s connect
//! timeout, `TCP_NODELAY`), says `Hello` with a unique node id and a workload, answers every
//! snapshot with an `Ack` at once and records when it arrived. It decodes only what it needs:
//! the version, the nonce and the endpoints' keys (kept hashed, to count them across deltas) —
//! prost skips the documents and the endpoints' labels without allocating them.
//! A thousand proxies then cost this process a fraction of what the control plane spends, so
//! the two cores go to what is measured. A proxy can be told to reconnect (churn: the stream
//! and its connection are dropped and a new one says `Hello` again) or to stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmesh_api::proto::{proxy_message, Ack, EndpointKey, Hello, ProxyMessage, Workload, PROTOCOL_VERSION};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;

use super::mesh;

/// The discovery stream's gRPC path (`ringmesh.v1.Discovery/Stream`).
const STREAM_PATH: &str = "/ringmesh.v1.Discovery/Stream";

/// Attempts to open one stream before the proxy gives up (and the run fails, naming why).
const CONNECT_ATTEMPTS: u32 = 5;

/// `ControlMessage` as far as a simulated proxy reads it: wire-compatible with the real one
/// (the `oneof` members are optional fields with the same tags).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LightControlMessage {
    /// `ControlMessage.refusal`.
    #[prost(message, optional, tag = "2")]
    pub refusal: Option<LightRefusal>,
    /// `ControlMessage.shared_snapshot` (protocol 2; this fleet speaks 3 and reads it only in
    /// tests).
    #[prost(message, optional, tag = "3")]
    pub shared: Option<LightShared>,
    /// `ControlMessage.shared_delta` (protocol 3).
    #[prost(message, optional, tag = "4")]
    pub delta: Option<LightShared>,
}

/// `SharedSnapshot` or `SharedDelta`: an encoded message and this send's nonce.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LightShared {
    /// `SharedSnapshot.snapshot` / `SharedDelta.delta`.
    #[prost(bytes = "bytes", tag = "1")]
    pub encoded: prost::bytes::Bytes,
    /// `SharedSnapshot.nonce` / `SharedDelta.nonce`.
    #[prost(string, tag = "2")]
    pub nonce: String,
}

/// `SnapshotDelta` without the documents and the endpoints' labels: enough to keep the set of
/// endpoint keys a proxy holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LightDelta {
    /// `SnapshotDelta.version`.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// `SnapshotDelta.base_version`.
    #[prost(uint64, tag = "2")]
    pub base_version: u64,
    /// `SnapshotDelta.reset`.
    #[prost(bool, tag = "4")]
    pub reset: bool,
    /// `SnapshotDelta.continued`.
    #[prost(bool, tag = "5")]
    pub continued: bool,
    /// `SnapshotDelta.endpoints`, read as keys (`Endpoint` and `EndpointKey` share tags 1–3).
    #[prost(message, repeated, tag = "9")]
    pub endpoints: Vec<EndpointKey>,
    /// `SnapshotDelta.removed_endpoints`.
    #[prost(message, repeated, tag = "10")]
    pub removed_endpoints: Vec<EndpointKey>,
}

/// `Snapshot` without the documents and the endpoints' contents (protocol 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LightSnapshot {
    /// `Snapshot.version`.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// `Snapshot.endpoints`, counted only.
    #[prost(message, repeated, tag = "5")]
    pub endpoints: Vec<Counted>,
}

/// Any message, read only to be counted (every field skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counted {}

/// What one stream has sent a simulated proxy, as far as it keeps it: the version and the
/// endpoint keys (hashed), rebuilt from deltas as the real proxy does with
/// `ringmesh_api::delta::Assembler`.
#[derive(Debug, Default)]
pub struct LightHeld {
    version: u64,
    endpoints: std::collections::HashSet<u64>,
    partial: Option<u64>,
}

/// A whole snapshot as far as a simulated proxy reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Complete {
    /// Its version.
    pub version: u64,
    /// The nonce to echo.
    pub nonce: String,
    /// How many endpoints it has.
    pub endpoints: usize,
}

fn key_hash(k: &EndpointKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ringmesh_api::delta::key(&k.host, &k.address, &k.ports).hash(&mut h);
    h.finish()
}

impl LightHeld {
    /// Takes one message; returns the whole snapshot it completes, `None` for a part with more
    /// to come or a message without one, and why when it cannot be applied.
    pub fn feed(&mut self, m: LightControlMessage) -> Result<Option<Complete>, String> {
        use prost::Message as _;
        if let Some(shared) = m.shared {
            let s = LightSnapshot::decode(shared.encoded).map_err(|e| e.to_string())?;
            self.version = s.version;
            self.partial = None;
            return Ok(Some(Complete {
                version: s.version,
                nonce: shared.nonce,
                endpoints: s.endpoints.len(),
            }));
        }
        let Some(shared) = m.delta else { return Ok(None) };
        let d = LightDelta::decode(shared.encoded).map_err(|e| e.to_string())?;
        match self.partial {
            Some(v) if v != d.version => return Err(format!("part of version {} inside version {v}", d.version)),
            Some(_) => {}
            None if d.reset => self.endpoints.clear(),
            None if d.base_version != self.version => {
                return Err(format!(
                    "delta to version {} based on {}, but this proxy holds {}",
                    d.version, d.base_version, self.version
                ))
            }
            None => {}
        }
        for k in &d.removed_endpoints {
            self.endpoints.remove(&key_hash(k));
        }
        for k in &d.endpoints {
            self.endpoints.insert(key_hash(k));
        }
        if d.continued {
            self.partial = Some(d.version);
            return Ok(None);
        }
        self.partial = None;
        self.version = d.version;
        Ok(Some(Complete {
            version: d.version,
            nonce: shared.nonce,
            endpoints: self.endpoints.len(),
        }))
    }
}

/// `Refusal.message`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LightRefusal {
    /// `Refusal.message`.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// One snapshot as a proxy received it.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    /// When the whole message had arrived and was decoded.
    pub at: Instant,
    /// Snapshot version (the control plane's config generation it reflects).
    pub version: u64,
    /// Index of the stream (in [`ProxyLog::streams`]) it came on.
    pub stream: usize,
}

/// One stream of a proxy, from its first snapshot to its close.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpan {
    /// When the stream's first snapshot arrived: from then on the proxy is in sync.
    pub synced: Option<Instant>,
    /// When the proxy dropped it (or saw it end).
    pub closed: Option<Instant>,
}

/// Everything one proxy saw, for the analysis after a phase.
#[derive(Debug, Default)]
pub struct ProxyLog {
    /// Every snapshot received, in order.
    pub receipts: Vec<Receipt>,
    /// Every stream opened, in order.
    pub streams: Vec<StreamSpan>,
    /// Why the proxy stopped, if it did on its own.
    pub error: Option<String>,
}

/// One simulated proxy's live state: atomics for the coordinator's polling, the log for the
/// analysis (its lock is taken once per snapshot by the proxy, and by the coordinator only
/// between phases).
#[derive(Debug, Default)]
pub struct ProxyState {
    /// Version of the newest snapshot.
    pub version: AtomicU64,
    /// Endpoints in the newest snapshot.
    pub endpoints: AtomicU32,
    /// Snapshots received over all streams.
    pub snapshots: AtomicU64,
    /// Streams opened (1 after the first connect; each reconnect adds one).
    pub streams: AtomicU32,
    /// Set when the proxy gave up; the reason is in the log.
    pub failed: AtomicBool,
    /// Receipts and streams.
    pub log: Mutex<ProxyLog>,
}

impl ProxyState {
    /// The log (recovered if a proxy task panicked while holding it: the data is append-only).
    pub fn log(&self) -> std::sync::MutexGuard<'_, ProxyLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the coordinator tells a proxy.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Drop the stream and its connection, then (after the downtime) connect and say `Hello`.
    Reconnect,
}

/// Who a simulated proxy is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unique node id.
    pub node_id: String,
    /// The workload it announces.
    pub workload: Workload,
}

/// The identity of proxy `i`: workloads spread round-robin over `hosts`, versions v1/v2
/// alternating within a service, one loopback address each (127.0.0.1 … 127.0.0.250,
/// then 127.0.1.1 …).
pub fn identity(i: usize, hosts: &[String]) -> Identity {
    let host = &hosts[i % hosts.len()];
    let service = host.split('.').next().unwrap_or(host);
    let version = if (i / hosts.len()) % 2 == 0 { "v1" } else { "v2" };
    let address = format!("127.{}.{}.{}", (i / 62_500) % 256, (i / 250) % 250, i % 250 + 1);
    Identity {
        node_id: format!("{service}-{version}-{i:05}.bench"),
        workload: Workload {
            name: format!("{service}-{version}"),
            namespace: "bench".into(),
            service_account: service.into(),
            labels: HashMap::from([
                ("app".to_string(), service.to_string()),
                ("version".to_string(), version.to_string()),
            ]),
            addresses: vec![address],
            services: vec![host.clone()],
            ports: HashMap::from([("http".to_string(), mesh::TARGET_PORT)]),
        },
    }
}

/// The running fleet of simulated proxies.
#[derive(Debug)]
pub struct Fleet {
    /// Each proxy's state, by index.
    pub proxies: Vec<Arc<ProxyState>>,
    commands: Vec<mpsc::UnboundedSender<Command>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Starts `identities.len()` proxies against `addr`; at most `concurrent_connects`
    /// connect at the same time (a thousand simultaneous handshakes would overflow the
    /// listen backlog and measure that instead). `downtime` is how long a reconnecting
    /// proxy stays away.
    pub fn start(addr: SocketAddr, identities: Vec<Identity>, concurrent_connects: usize, downtime: Duration) -> Fleet {
        let gate = Arc::new(Semaphore::new(concurrent_connects.max(1)));
        let mut fleet = Fleet {
            proxies: Vec::new(),
            commands: Vec::new(),
            tasks: Vec::new(),
        };
        for id in identities {
            let state = Arc::new(ProxyState::default());
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(run_proxy(addr, id, state.clone(), rx, gate.clone(), downtime));
            fleet.proxies.push(state);
            fleet.commands.push(tx);
            fleet.tasks.push(task);
        }
        fleet
    }

    /// Tells proxy `i` to reconnect.
    pub fn reconnect(&self, i: usize) {
        let _ = self.commands[i].send(Command::Reconnect);
    }

    /// The first failure of any proxy, if one gave up.
    pub fn failure(&self) -> Option<String> {
        self.proxies.iter().enumerate().find_map(|(i, p)| {
            if p.failed.load(Ordering::Acquire) {
                Some(format!(
                    "simulated proxy {i}: {}",
                    p.log().error.clone().unwrap_or_else(|| "failed".into())
                ))
            } else {
                None
            }
        })
    }

    /// Snapshots received by all proxies so far.
    pub fn snapshots(&self) -> u64 {
        self.proxies.iter().map(|p| p.snapshots.load(Ordering::Relaxed)).sum()
    }

    /// Stops every proxy (their streams and connections are dropped).
    pub async fn stop(self) {
        drop(self.commands);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn hello(id: &Identity, serving: u64) -> ProxyMessage {
    ProxyMessage {
        message: Some(proxy_message::Message::Hello(Hello {
            node_id: id.node_id.clone(),
            workload: Some(id.workload.clone()),
            proxy_version: concat!("ringmesh-control-bench/", env!("CARGO_PKG_VERSION")).into(),
            protocol_version: PROTOCOL_VERSION,
            serving_version: serving,
            credential: String::new(),
        })),
    }
}

type Inbound = tonic::codec::Streaming<LightControlMessage>;

/// Opens one discovery stream: a new connection, `Hello` first.
async fn open_stream(
    addr: SocketAddr,
    id: &Identity,
    serving: u64,
) -> Result<(mpsc::Sender<ProxyMessage>, Inbound), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| format!("channel not ready: {e}"))?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello(id, serving))
        .await
        .map_err(|_| "outbound closed".to_string())?;
    let codec = ringmesh_api::proto::SmallBufferCodec::<ProxyMessage, LightControlMessage>::default();
    let inbound = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(STREAM_PATH),
            codec,
        )
        .await
        .map_err(|e| format!("stream: {}", e.message()))?
        .into_inner();
    Ok((tx, inbound))
}

async fn run_proxy(
    addr: SocketAddr,
    id: Identity,
    state: Arc<ProxyState>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    gate: Arc<Semaphore>,
    downtime: Duration,
) {
    let fail = |state: &ProxyState, why: String| {
        state.log().error = Some(why);
        state.failed.store(true, Ordering::Release);
    };
    let mut serving = 0u64;
    loop {
        // Connect (bounded attempts, each bounded by the connect timeout and the stream's
        // first response), holding a slot of the connect gate.
        let mut opened = None;
        let mut last_error = String::new();
        for attempt in 0..CONNECT_ATTEMPTS {
            let Ok(permit) = gate.acquire().await else {
                return;
            };
            let res = tokio::time::timeout(Duration::from_secs(10), open_stream(addr, &id, serving)).await;
            drop(permit);
            match res {
                Ok(Ok(s)) => {
                    opened = Some(s);
                    break;
                }
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = "no response to Hello within 10 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let Some((tx, mut inbound)) = opened else {
            fail(&state, format!("{} (after {CONNECT_ATTEMPTS} attempts)", last_error));
            return;
        };
        let stream = {
            let mut log = state.log();
            log.streams.push(StreamSpan {
                synced: None,
                closed: None,
            });
            log.streams.len() - 1
        };
        state.streams.fetch_add(1, Ordering::Relaxed);
        let mut held = LightHeld::default();
        let reconnect = loop {
            tokio::select! {
                msg = inbound.message() => {
                    let at = Instant::now();
                    match msg {
                        Ok(Some(LightControlMessage { refusal: Some(r), .. })) => {
                            break Err(format!("refused: {}", r.message));
                        }
                        Ok(Some(m)) => {
                            let s = match held.feed(m) {
                                Ok(Some(s)) => s,
                                Ok(None) => continue,
                                Err(why) => break Err(why),
                            };
                            let ack = ProxyMessage {
                                message: Some(proxy_message::Message::Ack(Ack { version: s.version, nonce: s.nonce })),
                            };
                            if tx.send(ack).await.is_err() {
                                break Err("outbound stream closed".to_string());
                            }
                            serving = s.version;
                            {
                                let mut log = state.log();
                                log.receipts.push(Receipt { at, version: s.version, stream });
                                log.streams[stream].synced.get_or_insert(at);
                            }
                            state.endpoints.store(s.endpoints as u32, Ordering::Relaxed);
                            state.version.store(s.version, Ordering::Release);
                            state.snapshots.fetch_add(1, Ordering::Release);
                        }
                        Ok(None) => break Err("the control plane ended the stream".into()),
                        Err(e) => break Err(format!("stream error: {}", e.message())),
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Reconnect) => break Ok(()),
                    None => return,
                },
            }
        };
        // Dropping the sender, the inbound stream and with them the channel closes the
        // connection, as a restarting proxy's would.
        drop(tx);
        drop(inbound);
        state.log().streams[stream].closed = Some(Instant::now());
        if let Err(why) = reconnect {
            fail(&state, why);
            return;
        }
        tokio::time::sleep(downtime).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use ringmesh_api::delta;
    use ringmesh_api::proto::{control_message, ControlMessage, Document, Endpoint, SharedDelta, Snapshot};

    fn shared_delta(d: &ringmesh_api::proto::SnapshotDelta, nonce: &str) -> LightControlMessage {
        let real = ControlMessage {
            message: Some(control_message::Message::SharedDelta(SharedDelta {
                delta: d.encode_to_vec().into(),
                nonce: nonce.into(),
            })),
        };
        LightControlMessage::decode(real.encode_to_vec().as_slice()).unwrap()
    }

    #[test]
    fn light_messages_read_the_real_ones() {
        let endpoint = |i: usize| Endpoint {
            host: "reviews".into(),
            address: format!("127.0.{}.{}", i / 200, i % 200),
            ports: HashMap::from([("http".into(), 9080)]),
            labels: HashMap::from([("version".into(), "v1".into())]),
            weight: 1,
        };
        let v1 = Snapshot {
            version: 42,
            nonce: String::new(),
            protocol_version: PROTOCOL_VERSION,
            documents: vec![Document {
                source: "x.yaml:1".into(),
                yaml: mesh::virtual_service("reviews.test", 30),
            }],
            endpoints: (0..600).map(endpoint).collect(),
            registry_warming: false,
        };
        // Protocol 3: the whole set in parts, then a delta.
        let parts = delta::parts(&v1);
        assert!(parts.len() > 1, "600 endpoints take more than one part");
        let mut held = LightHeld::default();
        for (i, p) in parts.iter().enumerate() {
            let got = held.feed(shared_delta(p, "42-1")).unwrap();
            assert_eq!(got.is_some(), i + 1 == parts.len());
            if let Some(c) = got {
                assert_eq!(
                    c,
                    Complete {
                        version: 42,
                        nonce: "42-1".into(),
                        endpoints: 600
                    }
                );
            }
        }
        let mut v2 = v1.clone();
        v2.version = 43;
        v2.endpoints.remove(5);
        v2.endpoints.push(endpoint(700));
        v2.endpoints.push(endpoint(701));
        v2.endpoints[0].labels.insert("version".into(), "v2".into());
        let d = delta::diff(&v1, &v2);
        let c = held.feed(shared_delta(&d, "43-2")).unwrap().unwrap();
        assert_eq!(
            c,
            Complete {
                version: 43,
                nonce: "43-2".into(),
                endpoints: 601
            }
        );
        // A delta on a base this proxy does not hold is an error, not a silent miscount.
        assert!(held.feed(shared_delta(&d, "43-3")).unwrap_err().contains("based on 42"));

        // Protocol 2: the whole snapshot, encoded once, the nonce beside it.
        let shared = ControlMessage {
            message: Some(control_message::Message::SharedSnapshot(
                ringmesh_api::proto::SharedSnapshot {
                    snapshot: v1.encode_to_vec().into(),
                    nonce: "42-7".into(),
                },
            )),
        };
        let light = LightControlMessage::decode(shared.encode_to_vec().as_slice()).unwrap();
        assert!(light.refusal.is_none());
        let c = LightHeld::default().feed(light).unwrap().unwrap();
        assert_eq!(
            c,
            Complete {
                version: 42,
                nonce: "42-7".into(),
                endpoints: 600
            }
        );
    }

    #[test]
    fn identities_are_unique() {
        let hosts = mesh::hosts(4);
        let ids: Vec<_> = (0..70_000).map(|i| identity(i, &hosts)).collect();
        let nodes: std::collections::HashSet<_> = ids.iter().map(|i| i.node_id.clone()).collect();
        let addrs: std::collections::HashSet<_> = ids.iter().map(|i| i.workload.addresses[0].clone()).collect();
        assert_eq!((nodes.len(), addrs.len()), (70_000, 70_000));
        assert_eq!(ids[0].workload.addresses[0], "127.0.0.1");
        assert_eq!(ids[0].workload.labels["version"], "v1");
        assert_eq!(ids[4].workload.labels["version"], "v2");
        assert_eq!(ids[1].workload.services[0], hosts[1]);
    }
}
