//! The discovery service: one bidirectional stream per proxy, snapshots out, ACK/NACK in.
//!
//! The proxy's first message must be a `Hello` within [`HELLO_TIMEOUT`]; a protocol version
//! outside the supported window gets one `Refusal` naming both versions and the stream ends.
//! Every change of resources or endpoints bumps one generation counter; each proxy's stream
//! task waits for it, debounces bursts, compiles the proxy's view with the same compiler the
//! proxy runs, and sends a snapshot only when it compiles (a config that would be refused stays
//! with the control plane, reported in [`ProxyStatus::stale_reason`]). Endpoints are the union
//! of the workloads that connected proxies announce; a proxy that disconnects keeps its
//! endpoints for the grace period, a proxy that reports its workload unready loses them at once.
//!
//! **Restarts.** The registry is soft state: a control plane that just started knows no
//! workload until the proxies reconnect, in whatever order their back-off brings them. For
//! `grace` after start the registry is *warming* (it gives a freshly started registry the same
//! time it gives a disconnected proxy to come back), and every snapshot says so
//! (`registry_warming`): proxies keep the endpoints they held that it does not list yet. When
//! the warm-up ends the generation moves and every proxy is sent a snapshot without the flag,
//! so endpoints that were not announced again leave then. Generations start from the start time
//! in microseconds, so versions never repeat across restarts: a proxy's `serving_version` from
//! before the restart is older than anything this process sends, never mistaken for current.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use prost::Message as _;
use ringmesh_api::delta;
use ringmesh_api::proto::discovery_server::{Discovery, DiscoveryServer};
use ringmesh_api::proto::{
    control_message, proxy_message, skew_refusal, Certificate, CertificateRefusal, CertificateRequest, ControlMessage,
    Endpoint, Hello, ProxyMessage, Refusal, SharedDelta, SharedSnapshot, Snapshot, Workload, DELTA_VERSION,
    MIN_SUPPORTED_VERSION, PROTOCOL_VERSION,
};
use ringmesh_api::registry::ExtraEndpoint;
use ringmesh_api::{compile, load_str, CompileInput};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::ca::{Authority, SignError, StreamIdentity};
use crate::scope::Scopes;
use crate::store::ResourceSet;

/// How long a new stream may take to say who it is.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the discovery service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a disconnected proxy's endpoints stay in the registry.
    pub grace: Duration,
    /// How long to wait after a change before pushing, so that bursts become one push.
    pub debounce: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grace: Duration::from_secs(30),
            debounce: Duration::from_millis(50),
        }
    }
}

/// Sync state of one proxy, as `ringmesh proxy-status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyStatus {
    /// The proxy's node id.
    pub node_id: String,
    /// What it announced.
    pub workload: Workload,
    /// Software version it announced.
    pub proxy_version: String,
    /// Whether its stream is open.
    pub connected: bool,
    /// Whether its workload is ready (an unready one is withdrawn at once).
    pub ready: bool,
    /// Last snapshot version sent.
    pub sent_version: u64,
    /// Last snapshot version it acknowledged.
    pub acked_version: u64,
    /// The error of its last NACK, if the last answer was a NACK.
    pub nack: Option<String>,
    /// The version that NACK refused (0 when there is none).
    pub nacked_version: u64,
    /// Why the newest config was not sent to it (it would not compile for this proxy).
    pub stale_reason: Option<String>,
}

impl ProxyStatus {
    /// `SYNCED`, `NACKED`, `STALE` or `DISCONNECTED`.
    pub fn state(&self, current: u64) -> &'static str {
        if !self.connected {
            "DISCONNECTED"
        } else if self.nack.is_some() {
            "NACKED"
        } else if self.stale_reason.is_some() || self.acked_version != current || self.sent_version != current {
            "STALE"
        } else {
            "SYNCED"
        }
    }
}

#[derive(Debug)]
struct Proxy {
    status: ProxyStatus,
    /// Which stream this record belongs to. A proxy that reconnects registers on its new stream
    /// before the old one's end is handled; the old stream's late disconnect, ACKs and sends
    /// carry the old id and are ignored, so they cannot mark the new registration gone.
    session: u64,
    disconnected_at: Option<Instant>,
    /// The last snapshot sent and the last one acknowledged, for `ringmesh proxy-config` and
    /// the per-resource status of `ringmesh get` (shared, not copied, between the two).
    sent: Option<Arc<Snapshot>>,
    acked: Option<Arc<Snapshot>>,
}

/// What the control plane last sent one proxy and what it acknowledged.
#[derive(Debug, Clone)]
pub struct ProxyConfigView {
    /// Its sync state.
    pub status: ProxyStatus,
    /// The last snapshot sent on its current (or last) stream.
    pub sent: Option<Arc<Snapshot>>,
    /// The last snapshot it acknowledged since it connected to this control plane.
    pub acked: Option<Arc<Snapshot>>,
}

#[derive(Debug, Default)]
struct State {
    resources: ResourceSet,
    /// Who sees which document (`scope.rs`), scanned once per resource set.
    scopes: Scopes,
    generation: u64,
    /// When the generation last moved: what a push's time is measured from.
    changed_at: Option<Instant>,
    /// Until when the registry is warming (see the module doc); `None` once warm.
    warm_until: Option<Instant>,
    proxies: BTreeMap<String, Proxy>,
    /// Workloads announced by proxies connected to other replicas (read from etcd by
    /// `etcd.rs`), by node id; empty without `--etcd`.
    remote_workloads: BTreeMap<String, RemoteWorkload>,
    pushes: u64,
    /// Streams whose end was handled (see `ControlPlane::streams_ended`).
    streams_ended: u64,
    /// Streams registered so far (the last session id handed out).
    sessions: u64,
    views: Views,
}

/// A workload announced by a proxy connected to another control-plane replica.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWorkload {
    /// What the proxy announced.
    pub workload: Workload,
    /// Whether it is ready (an unready one gives no endpoints).
    pub ready: bool,
    /// The replica it is connected to.
    pub replica: String,
}

/// One view's snapshot, and its encodings, each made once (when first needed) for every stream
/// that sends it.
#[derive(Debug)]
struct ViewData {
    snapshot: Arc<Snapshot>,
    /// The whole `Snapshot` encoded, for protocol-2 streams.
    whole: OnceLock<Bytes>,
    /// The snapshot as encoded `reset` parts, for protocol-3 streams that hold nothing yet.
    parts: OnceLock<Arc<Vec<Bytes>>>,
}

type View = Arc<ViewData>;

impl ViewData {
    fn whole(&self) -> Bytes {
        self.whole.get_or_init(|| self.snapshot.encode_to_vec().into()).clone()
    }

    fn parts(&self) -> Arc<Vec<Bytes>> {
        self.parts
            .get_or_init(|| {
                Arc::new(
                    delta::parts(&self.snapshot)
                        .iter()
                        .map(|p| p.encode_to_vec().into())
                        .collect(),
                )
            })
            .clone()
    }
}

/// One view's compile result, made once: the first stream to need it compiles it outside the
/// state lock, and streams that need it meanwhile wait for that result instead of compiling
/// it again.
type ViewSlot = Arc<tokio::sync::OnceCell<Result<View, String>>>;

/// How a view is checked: [`check_compiles`] (a stand-in in tests, to hold a compile open).
type CheckFn = fn(&[ringmesh_api::proto::Document], &[Endpoint]) -> Result<(), String>;

/// An encoded delta (or whole snapshot in parts) and, weakly, the snapshot it starts from.
type CachedDelta = (std::sync::Weak<Snapshot>, Arc<Vec<Bytes>>);

/// The snapshots of one generation, one per distinct view (set of visible documents), shared by
/// every proxy with that view: a push to N proxies compiles each view once, not N times, and the
/// control plane holds one copy of each snapshot, not one per proxy.
#[derive(Debug, Default)]
struct Views {
    generation: u64,
    endpoints: Arc<Vec<Endpoint>>,
    by_documents: HashMap<Vec<usize>, ViewSlot>,
    /// Encoded deltas from a snapshot proxies were sent to one of this generation's, by the two
    /// snapshots' addresses: the proxies in sync share one old snapshot, so one diff serves them
    /// all. The old one is held weakly: its contents go when no stream needs them, while its
    /// allocation (and so its address) stays taken as long as the entry lives.
    deltas: HashMap<(usize, usize), CachedDelta>,
}

/// The control plane's shared state and its discovery service.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
    config: ServerConfig,
    check: CheckFn,
    /// The mesh CA and how credentials are checked; `None`: no certificates are issued.
    authority: Option<Arc<Authority>>,
    /// Pushes, ACKs, NACKs and certificates, for `--metrics-listen`.
    metrics: Arc<crate::metrics::Metrics>,
}

impl ControlPlane {
    /// A control plane serving `resources`.
    pub fn new(resources: ResourceSet, config: ServerConfig) -> Self {
        let (tx, _) = watch::channel(1);
        let state = State {
            scopes: Scopes::of(&resources.documents),
            resources,
            generation: first_generation(),
            warm_until: Some(Instant::now() + config.grace),
            ..Default::default()
        };
        ControlPlane {
            state: Arc::new(Mutex::new(state)),
            changed: Arc::new(tx),
            config,
            check: check_compiles,
            authority: None,
            metrics: Arc::default(),
        }
    }

    /// The control plane's metrics in Prometheus' text format (`--metrics-listen`'s
    /// `/metrics`).
    pub fn metrics_text(&self) -> String {
        let gauges = {
            let st = self.lock();
            crate::metrics::Gauges {
                proxies_connected: st.proxies.values().filter(|p| p.status.connected).count() as u64,
                generation: st.generation,
            }
        };
        self.metrics.render(gauges)
    }

    /// Issues certificates with `authority` to proxies whose credential it accepts.
    pub fn with_authority(mut self, authority: Arc<Authority>) -> Self {
        self.authority = Some(authority);
        self
    }

    /// The mesh CA, if this control plane runs one.
    pub fn authority(&self) -> Option<&Arc<Authority>> {
        self.authority.as_ref()
    }

    /// The tonic service to mount.
    pub fn service(&self) -> DiscoveryServer<ControlPlane> {
        DiscoveryServer::new(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this module; recover the data
        // rather than take the whole control plane down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, st: &mut State) {
        st.generation += 1;
        st.changed_at = Some(Instant::now());
        let _ = self.changed.send(st.generation);
    }

    /// Replaces the resources (a new accepted directory state) and pushes to every proxy.
    pub fn set_resources(&self, resources: ResourceSet) {
        let mut st = self.lock();
        st.scopes = Scopes::of(&resources.documents);
        st.resources = resources;
        self.bump(&mut st);
    }

    /// The current generation (the version of the next snapshots).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// How long the registry keeps warming (`None`: warm): proxies are told to keep endpoints
    /// not announced again until then.
    pub fn warming_for(&self) -> Option<Duration> {
        let mut st = self.lock();
        self.end_warm_up_if_due(&mut st);
        st.warm_until.map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Ends the warm-up once its time has come, moving the generation so that every proxy is
    /// sent a snapshot that says the registry is warm.
    fn end_warm_up_if_due(&self, st: &mut State) {
        if st.warm_until.is_some_and(|t| Instant::now() >= t) {
            st.warm_until = None;
            tracing::info!("registry warm: endpoints not announced again since the start leave now");
            self.bump(st);
        }
    }

    /// Snapshots sent so far (to measure debouncing).
    pub fn pushes(&self) -> u64 {
        self.lock().pushes
    }

    /// Streams whose end has been handled, a reconnected proxy's stale stream included: what a
    /// test waits for before it checks that a late end changed nothing.
    pub fn streams_ended(&self) -> u64 {
        self.lock().streams_ended
    }

    /// Every known proxy's status.
    pub fn proxy_status(&self) -> Vec<ProxyStatus> {
        self.lock().proxies.values().map(|p| p.status.clone()).collect()
    }

    /// Every known proxy's status with what it was last sent and acknowledged.
    pub fn proxy_configs(&self) -> Vec<ProxyConfigView> {
        self.lock()
            .proxies
            .values()
            .map(|p| ProxyConfigView {
                status: p.status.clone(),
                sent: p.sent.clone(),
                acked: p.acked.clone(),
            })
            .collect()
    }

    /// The resources being served.
    pub fn resources(&self) -> ResourceSet {
        self.lock().resources.clone()
    }

    /// Drops disconnected proxies whose grace period ended; bumps the generation if any left.
    pub fn expire(&self) {
        self.expire_at(Instant::now());
    }

    /// [`ControlPlane::expire`] as of `now`: a test passes a time past the grace period instead
    /// of waiting it out.
    pub fn expire_at(&self, now: Instant) {
        let mut st = self.lock();
        let grace = self.config.grace;
        let before = st.proxies.len();
        st.proxies.retain(|_, p| {
            p.disconnected_at
                .is_none_or(|t| now.saturating_duration_since(t) < grace)
        });
        if st.proxies.len() != before {
            self.bump(&mut st);
        }
    }

    /// Replaces the workloads announced to other replicas; pushes when they changed.
    pub fn set_remote_workloads(&self, remote: BTreeMap<String, RemoteWorkload>) {
        let mut st = self.lock();
        if st.remote_workloads != remote {
            st.remote_workloads = remote;
            self.bump(&mut st);
        }
    }

    /// The workloads announced by this replica's proxies (connected, or disconnected and still
    /// in their grace period): `(node id, workload, ready, connected)`, for the shared registry.
    pub fn local_workloads(&self) -> Vec<(String, Workload, bool, bool)> {
        self.lock()
            .proxies
            .values()
            .map(|p| {
                (
                    p.status.node_id.clone(),
                    p.status.workload.clone(),
                    p.status.ready,
                    p.status.connected,
                )
            })
            .collect()
    }

    /// Wakes on every generation change (a resource, a workload or its readiness changed).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Endpoints of the ready workloads: this replica's proxies and other replicas'. A node id
    /// known to both (a proxy that moved between replicas) counts once: the connected side wins,
    /// and a proxy disconnected from here but connected elsewhere is taken from elsewhere.
    fn endpoints(st: &State) -> Vec<Endpoint> {
        let local = st
            .proxies
            .values()
            .filter(|p| p.status.connected || !st.remote_workloads.contains_key(&p.status.node_id))
            .map(|p| (&p.status.workload, p.status.ready));
        let remote = st
            .remote_workloads
            .iter()
            .filter(|(node, _)| !st.proxies.get(*node).is_some_and(|p| p.status.connected))
            .map(|(_, r)| (&r.workload, r.ready));
        let mut out = Vec::new();
        // One endpoint per key (host, address, ports), the first announced: deltas address
        // endpoints by key, so two workloads claiming one key would not survive one.
        let mut seen = HashSet::new();
        for (w, ready) in local.chain(remote) {
            if !ready {
                continue;
            }
            for host in &w.services {
                for address in &w.addresses {
                    let e = Endpoint {
                        host: host.clone(),
                        address: address.clone(),
                        ports: w.ports.clone(),
                        labels: w.labels.clone(),
                        weight: 1,
                    };
                    if seen.insert(delta::key_of(&e)) {
                        out.push(e);
                    }
                }
            }
        }
        out
    }

    /// The snapshot for `node_id` at the current generation (its `nonce` left empty: the stream
    /// sets it), or why it does not compile. The compile runs outside the state lock, so that
    /// ACKs, health reports, registrations and other views go on meanwhile; each view is
    /// compiled once per generation ([`ViewSlot`]). A view finished after the generation moved
    /// on carries the old version; its stream was told of the change and asks again.
    async fn snapshot_for(&self, node_id: &str) -> Result<View, String> {
        let (slot, generation, documents, endpoints, registry_warming) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            self.end_warm_up_if_due(st);
            if st.views.generation != st.generation {
                st.views = Views {
                    generation: st.generation,
                    endpoints: Arc::new(Self::endpoints(st)),
                    by_documents: HashMap::new(),
                    deltas: HashMap::new(),
                };
            }
            let visible = match st.proxies.get(node_id) {
                Some(p) => st.scopes.visible_to(&p.status.workload),
                None => (0..st.resources.documents.len()).collect(),
            };
            let slot = match st.views.by_documents.get(&visible) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = ViewSlot::default();
                    st.views.by_documents.insert(visible.clone(), slot.clone());
                    slot
                }
            };
            if let Some(v) = slot.get() {
                return v.clone();
            }
            let documents: Vec<_> = visible.iter().map(|&i| st.resources.documents[i].clone()).collect();
            (
                slot,
                st.generation,
                documents,
                st.views.endpoints.clone(),
                st.warm_until.is_some(),
            )
        };
        let check = self.check;
        slot.get_or_init(|| async move {
            check(&documents, &endpoints).map(|()| {
                Arc::new(ViewData {
                    snapshot: Arc::new(Snapshot {
                        version: generation,
                        nonce: String::new(),
                        protocol_version: PROTOCOL_VERSION,
                        documents,
                        endpoints: endpoints.as_ref().clone(),
                        registry_warming,
                    }),
                    whole: OnceLock::new(),
                    parts: OnceLock::new(),
                })
            })
        })
        .await
        .clone()
    }

    /// The encoded messages that take a proxy from `old` (the last snapshot sent on its stream)
    /// to `view`: one delta, or the whole snapshot in parts when the delta would not be smaller.
    /// Diffed once per pair, outside the lock (two streams may race to diff the same pair; both
    /// get the same bytes).
    fn delta_for(&self, old: &Arc<Snapshot>, view: &View) -> Arc<Vec<Bytes>> {
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(&view.snapshot) as usize);
        if let Some((_, d)) = self.lock().views.deltas.get(&key) {
            return d.clone();
        }
        let d = delta::diff(old, &view.snapshot);
        let encoded = if d.encoded_len() < view.snapshot.encoded_len() {
            Arc::new(vec![Bytes::from(d.encode_to_vec())])
        } else {
            view.parts()
        };
        let mut st = self.lock();
        if st.views.generation == view.snapshot.version {
            st.views.deltas.insert(key, (Arc::downgrade(old), encoded.clone()));
        }
        encoded
    }

    fn register(&self, hello: &Hello) -> u64 {
        let mut st = self.lock();
        st.sessions += 1;
        let session = st.sessions;
        let status = ProxyStatus {
            node_id: hello.node_id.clone(),
            workload: hello.workload.clone().unwrap_or_default(),
            proxy_version: hello.proxy_version.clone(),
            connected: true,
            ready: true,
            sent_version: 0,
            acked_version: hello.serving_version,
            nack: None,
            nacked_version: 0,
            stale_reason: None,
        };
        st.proxies.insert(
            hello.node_id.clone(),
            Proxy {
                status,
                session,
                disconnected_at: None,
                sent: None,
                acked: None,
            },
        );
        self.bump(&mut st);
        session
    }

    /// Runs `f` on the record of `node_id` if it still belongs to stream `session`.
    fn with_proxy(&self, node_id: &str, session: u64, f: impl FnOnce(&mut Proxy) -> bool) {
        let mut st = self.lock();
        let bump = st
            .proxies
            .get_mut(node_id)
            .filter(|p| p.session == session)
            .map(f)
            .unwrap_or(false);
        if bump {
            self.bump(&mut st);
        }
    }

    fn disconnected(&self, node_id: &str, session: u64) {
        let mut st = self.lock();
        st.streams_ended += 1;
        if let Some(p) = st.proxies.get_mut(node_id).filter(|p| p.session == session) {
            p.status.connected = false;
            p.disconnected_at = Some(Instant::now());
        }
    }

    fn sent(&self, node_id: &str, session: u64, snapshot: Arc<Snapshot>) {
        let mut st = self.lock();
        st.pushes += 1;
        if let Some(p) = st.proxies.get_mut(node_id).filter(|p| p.session == session) {
            p.status.sent_version = snapshot.version;
            p.status.stale_reason = None;
            p.sent = Some(snapshot);
        }
    }
}

/// The first generation of this process: the time now in microseconds since the Unix epoch.
/// A restart within the same microsecond, or after the clock went back by more than the
/// previous process's count of changes, is the only way two processes' versions could meet.
fn first_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
}

/// Completes when the warm-up ending at `until` is due; never without one.
async fn warm_up_end(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Loads the documents as the proxy will and compiles them with the endpoints: the proxy runs
/// this same code, so what passes here is what the proxy accepts (bar its own ProxyConfig).
pub fn check_compiles(documents: &[ringmesh_api::proto::Document], endpoints: &[Endpoint]) -> Result<(), String> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for d in documents {
        match load_str(&d.source, &d.yaml) {
            Ok((mut r, _warnings)) => resources.append(&mut r),
            Err(diags) => errors.extend(diags.iter().map(|x| x.to_string())),
        }
    }
    let mut extra_endpoints = Vec::new();
    for e in endpoints {
        match ExtraEndpoint::try_from(e) {
            Ok(x) => extra_endpoints.push(x),
            Err(err) => errors.push(err.to_string()),
        }
    }
    if errors.is_empty() {
        if let Err(diags) = compile(&CompileInput {
            resources,
            extra_endpoints,
            version: 0,
        }) {
            errors.extend(diags.iter().map(|x| x.to_string()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Discovery for ControlPlane {
    type StreamStream = ControlStream;

    async fn stream(&self, request: Request<Streaming<ProxyMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))?;
        let hello = match first {
            Some(Ok(ProxyMessage {
                message: Some(proxy_message::Message::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("the first message of a stream must be Hello")),
        };
        if hello.node_id.is_empty() {
            return Err(Status::invalid_argument("Hello.node_id is required"));
        }
        let (tx, rx) = mpsc::channel::<Result<ControlMessage, Status>>(4);
        if let Some(message) = skew_refusal(hello.protocol_version) {
            tracing::warn!(node = %hello.node_id, proxy_protocol = hello.protocol_version, "refused: {message}");
            let refusal = ControlMessage {
                message: Some(control_message::Message::Refusal(Refusal {
                    message,
                    control_protocol_version: PROTOCOL_VERSION,
                    min_supported_version: MIN_SUPPORTED_VERSION,
                })),
            };
            let _ = tx.send(Ok(refusal)).await;
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let identity = match &self.authority {
            Some(a) => {
                a.stream_identity(&hello.node_id, hello.workload.as_ref(), &hello.credential)
                    .await
            }
            None => StreamIdentity::Refused("this control plane runs no CA".into()),
        };
        if let (Some(a), StreamIdentity::Refused(reason)) = (&self.authority, &identity) {
            if a.require_credential {
                tracing::warn!(node = %hello.node_id, "stream refused (--require-credential): {reason}");
                return Err(Status::unauthenticated(reason.clone()));
            }
            if !hello.credential.is_empty() {
                tracing::warn!(node = %hello.node_id, "credential refused; no certificates on this stream: {reason}");
            }
        }
        tracing::info!(node = %hello.node_id, version = %hello.proxy_version, "proxy connected");
        let session = self.register(&hello);
        let cp = self.clone();
        tokio::spawn(serve_proxy(
            cp,
            hello.node_id,
            session,
            hello.protocol_version,
            identity,
            inbound,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One proxy's stream: pushes on every generation change, records ACK/NACK/health.
async fn serve_proxy(
    cp: ControlPlane,
    node_id: String,
    session: u64,
    protocol: u32,
    identity: StreamIdentity,
    mut inbound: Streaming<ProxyMessage>,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
) {
    let mut changes = cp.changed.subscribe();
    let mut nonce = 0u64;
    let mut pending = true; // push the current state first
                            // Whether a change caused the pending push (the stream's first push has no cause to time).
    let mut caused = false;
    // The last snapshot sent on this stream: what a protocol-3 proxy holds, and the base of the
    // next delta.
    let mut last_sent: Option<Arc<Snapshot>> = None;
    // Every stream watches for the end of the warm-up, so that it is pushed at once; the first
    // to see it moves the generation and the others find it done.
    let mut warm_until = cp.lock().warm_until;
    loop {
        if pending {
            pending = false;
            let change_at = if std::mem::take(&mut caused) {
                cp.lock().changed_at
            } else {
                None
            };
            tokio::time::sleep(cp.config.debounce).await;
            let _ = changes.borrow_and_update();
            match cp.snapshot_for(&node_id).await {
                // A change this proxy was already sent (it raced the debounce): nothing to say.
                Ok(view) if last_sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, &view.snapshot)) => {}
                Ok(view) => {
                    nonce += 1;
                    let nonce = format!("{}-{nonce}", view.snapshot.version);
                    let messages: Vec<control_message::Message> = if protocol >= DELTA_VERSION {
                        let parts = match &last_sent {
                            Some(old) => cp.delta_for(old, &view),
                            None => view.parts(),
                        };
                        parts
                            .iter()
                            .map(|bytes| {
                                control_message::Message::SharedDelta(SharedDelta {
                                    delta: bytes.clone(),
                                    nonce: nonce.clone(),
                                })
                            })
                            .collect()
                    } else {
                        vec![control_message::Message::SharedSnapshot(SharedSnapshot {
                            snapshot: view.whole(),
                            nonce,
                        })]
                    };
                    let mut open = true;
                    for message in messages {
                        if tx.send(Ok(ControlMessage { message: Some(message) })).await.is_err() {
                            open = false;
                            break;
                        }
                    }
                    if !open {
                        break;
                    }
                    last_sent = Some(view.snapshot.clone());
                    cp.sent(&node_id, session, view.snapshot.clone());
                    cp.metrics.pushed(change_at.map(|t| t.elapsed()));
                }
                Err(reason) => {
                    tracing::warn!(node = %node_id, "config not sent: it does not compile for this proxy:\n{reason}");
                    cp.with_proxy(&node_id, session, |p| {
                        p.status.stale_reason = Some(reason);
                        false
                    });
                }
            }
        }
        tokio::select! {
            () = warm_up_end(warm_until) => {
                warm_until = None;
                cp.end_warm_up_if_due(&mut cp.lock());
            }
            changed = changes.changed() => {
                if changed.is_err() { break; }
                pending = true;
                caused = true;
            }
            msg = inbound.next() => match msg {
                Some(Ok(ProxyMessage { message: Some(proxy_message::Message::CertificateRequest(req)) })) => {
                    let answer = certificate(&cp, &node_id, &identity, req);
                    cp.metrics.certificate(matches!(answer, control_message::Message::Certificate(_)));
                    if tx.send(Ok(ControlMessage { message: Some(answer) })).await.is_err() {
                        break;
                    }
                }
                Some(Ok(ProxyMessage { message: Some(m) })) => handle(&cp, &node_id, session, m),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    tracing::info!(node = %node_id, "proxy disconnected");
    cp.disconnected(&node_id, session);
}

/// The answer to a CSR: signed for the identity the stream's credential proved, or refused
/// with the reason (which the proxy shows in its `/certs`).
fn certificate(
    cp: &ControlPlane,
    node_id: &str,
    identity: &StreamIdentity,
    req: CertificateRequest,
) -> control_message::Message {
    let refuse = |reason: String| {
        control_message::Message::CertificateRefusal(CertificateRefusal {
            request_id: req.request_id,
            reason,
        })
    };
    let (authority, id) = match (&cp.authority, identity) {
        (Some(a), StreamIdentity::Verified(id)) => (a, id),
        (_, StreamIdentity::Refused(reason)) => return refuse(reason.clone()),
        (None, _) => return refuse("this control plane runs no CA".into()),
    };
    match authority
        .ca
        .sign(&req.csr_der, id, Duration::from_secs(req.lifetime_seconds))
    {
        Ok(signed) => {
            tracing::info!(node = %node_id, identity = %id, "certificate issued");
            control_message::Message::Certificate(Certificate {
                request_id: req.request_id,
                chain_der: signed.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
                trust_bundle_der: signed.trust_bundle.iter().map(|c| c.as_ref().to_vec()).collect(),
            })
        }
        Err(e) => {
            match &e {
                SignError::OtherIdentity { asked, allowed } => {
                    tracing::warn!(node = %node_id, proven = %allowed, asked = %asked, "CSR for another identity refused")
                }
                SignError::Sign(_) => tracing::error!(node = %node_id, "{e}"),
                SignError::BadCsr(_) => tracing::warn!(node = %node_id, "{e}"),
            }
            refuse(e.to_string())
        }
    }
}

fn handle(cp: &ControlPlane, node_id: &str, session: u64, m: proxy_message::Message) {
    match m {
        proxy_message::Message::Ack(a) => {
            cp.metrics.acked();
            cp.with_proxy(node_id, session, |p| {
                p.status.acked_version = a.version;
                p.status.nack = None;
                p.status.nacked_version = 0;
                if p.sent.as_ref().is_some_and(|s| s.version == a.version) {
                    p.acked = p.sent.clone();
                }
                false
            })
        }
        proxy_message::Message::Nack(n) => {
            cp.metrics.nacked();
            tracing::warn!(node = %node_id, version = n.version, "NACK: {}", n.error);
            cp.with_proxy(node_id, session, |p| {
                p.status.nack = Some(n.error);
                p.status.nacked_version = n.version;
                false
            })
        }
        proxy_message::Message::Health(h) => cp.with_proxy(node_id, session, |p| {
            let changed = p.status.ready != h.ready;
            p.status.ready = h.ready;
            changed
        }),
        proxy_message::Message::Hello(_) => tracing::warn!(node = %node_id, "second Hello on a stream ignored"),
        // Answered by `serve_proxy`, which can send.
        proxy_message::Message::CertificateRequest(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc as std_mpsc;

    use super::*;

    /// What [`held_check`] is doing: how many compiles it started, where it says so, and what
    /// it waits for before it finishes.
    struct Gate {
        calls: AtomicUsize,
        entered: Mutex<std_mpsc::Sender<()>>,
        release: Mutex<std_mpsc::Receiver<()>>,
    }

    static GATE: OnceLock<Gate> = OnceLock::new();

    /// A compile that stays open until the test releases it (at most 10 s).
    fn held_check(documents: &[ringmesh_api::proto::Document], endpoints: &[Endpoint]) -> Result<(), String> {
        let gate = GATE.get().expect("the gate is set before any compile");
        gate.calls.fetch_add(1, Ordering::SeqCst);
        let _ = gate.entered.lock().unwrap().send(());
        let _ = gate.release.lock().unwrap().recv_timeout(Duration::from_secs(10));
        check_compiles(documents, endpoints)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_view_compiles_outside_the_lock_and_once_for_racing_streams() {
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel();
        let gate = Gate {
            calls: AtomicUsize::new(0),
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
        };
        assert!(GATE.set(gate).is_ok(), "one test uses the gate");
        let mut cp = ControlPlane::new(ResourceSet::default(), ServerConfig::default());
        cp.check = held_check;
        // The first generation is the start time in microseconds (versions grow across
        // restarts); nothing here moves it.
        let generation = cp.generation();
        let first = tokio::spawn({
            let cp = cp.clone();
            async move { cp.snapshot_for("a").await }
        });
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the compile started");
        // A second stream with the same view waits for that compile instead of starting another.
        let second = tokio::spawn({
            let cp = cp.clone();
            async move { cp.snapshot_for("b").await }
        });
        // While the compile is open, the state stays usable (on another thread: with the lock
        // held this call would block until the compile ends).
        let (done_tx, done) = std_mpsc::channel();
        std::thread::spawn({
            let cp = cp.clone();
            move || {
                let _ = done_tx.send((cp.generation(), cp.proxy_status().len()));
            }
        });
        let read = done.recv_timeout(Duration::from_secs(5));
        release.send(()).unwrap();
        assert_eq!(read, Ok((generation, 0)), "the state lock was held during the compile");
        let (a, b) = (first.await.unwrap().unwrap(), second.await.unwrap().unwrap());
        assert!(Arc::ptr_eq(&a, &b), "both streams share one view");
        assert_eq!(
            a.snapshot.version, generation,
            "compiled for the generation it was asked at"
        );
        assert_eq!(GATE.get().unwrap().calls.load(Ordering::SeqCst), 1);
    }
}
