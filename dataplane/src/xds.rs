//! The proxy's side of the discovery stream (on the control thread).
//!
//! Connects to ringmesh-control, says `Hello` (node id, workload, protocol version), and hands
//! every snapshot (whole, or rebuilt from a delta by `ringmesh_api::delta::Assembler`) to the
//! control loop, which compiles it together with the local files and
//! answers `Ack` or `Nack` with the compiler's diagnostics — a config that does not compile is
//! never half-applied. When the control plane is unreachable, refuses this proxy's protocol
//! version, or ends the stream, the proxy keeps serving its last good config and reconnects with
//! jittered exponential back-off; on reconnect it says which version it serves and gets a full
//! snapshot (resync). With several control-plane replicas (`controlPlane.addresses`), each
//! failed session moves on to the next replica in the list (wrapping around), so a proxy whose
//! replica dies is served by another one after one back-off; it stays with a replica that works.
//! A control plane that just (re)started and does not know every workload yet says so in its
//! snapshots; the proxy then keeps the endpoints that were not announced again ([`held`]).
//!
//! The same stream carries the workload certificate (`identity/manager.rs`): `Hello` carries
//! the credential (read again on every connect), and CSRs go out and certificates come in
//! between snapshots. With `controlPlane.tls` the stream runs over TLS, checking the control
//! plane's certificate against `caCertFile`.

mod held;

use std::time::Duration;

use ringmesh_api::delta::Assembler;
use ringmesh_api::proto::discovery_client::DiscoveryClient;
use ringmesh_api::proto::{
    control_message, proxy_message, Ack, Health, Hello, Nack, ProxyMessage, Workload, PROTOCOL_VERSION,
};
use ringmesh_api::snapshot::{ControlPlaneSettings, WorkloadSettings};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ControlInput;
use crate::identity::manager::CertManager;
use held::HeldEndpoints;

/// A snapshot from the control plane, waiting for the control loop to compile it.
#[derive(Debug)]
pub struct Update {
    /// What arrived.
    pub input: ControlInput,
    /// The control plane's version of it.
    pub version: u64,
    /// `Ok` once applied, `Err(diagnostics)` if refused.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Where the proxy stands with the control plane, for the admin server's `/control_plane`: the
/// first place to look when a proxy does not get the config everyone else has.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Status {
    /// `connecting`, `connected`, `retrying` (after a failed session) or `refused` (the
    /// control plane does not serve this proxy's protocol version; retried all the same, in
    /// case it is upgraded).
    pub state: &'static str,
    /// The replica tried or in use.
    pub address: String,
    /// Every replica configured.
    pub replicas: Vec<String>,
    /// The control plane's version of the config in use (0: none yet).
    pub serving_version: u64,
    /// Failed sessions in a row.
    pub failures: u64,
    /// Why the last session ended, if it failed, or why the last config from the control plane
    /// was refused (NACK), if it was.
    pub last_error: Option<String>,
    /// The protocol version this proxy speaks.
    pub protocol_version: u32,
    /// The last config came from a control plane whose registry is still warming (it started
    /// less than its grace period ago): endpoints not announced again are kept until it is warm.
    pub registry_warming: bool,
    /// How many endpoints in use were kept from before because of that.
    pub kept_endpoints: usize,
    /// Configs from the control plane this proxy refused (NACK) since it started.
    pub nacks: u64,
}

/// The shared cell the admin server reads [`Status`] from.
pub type StatusCell = std::sync::Arc<arc_swap::ArcSwapOption<Status>>;

fn update(cell: &StatusCell, f: impl FnOnce(&mut Status)) {
    let mut s = cell.load().as_deref().cloned().unwrap_or_default();
    f(&mut s);
    cell.store(Some(std::sync::Arc::new(s)));
}

/// Why a session with the control plane ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Could not connect.
    #[error("cannot reach the control plane at {0}: {1}")]
    Connect(String, String),
    /// The stream failed.
    #[error("stream to the control plane failed: {0}")]
    Stream(String),
    /// The control plane refused this proxy (protocol version skew).
    #[error("the control plane refused this proxy: {0}")]
    Refused(String),
    /// The control loop is gone (shutting down).
    #[error("shutting down")]
    Closed,
}

/// The proxy's credential: `controlPlane.credentialFile`, read now (so a rotated token file
/// is picked up on the next connect), else `RINGMESH_CREDENTIAL`, else none.
fn credential(cp: &ControlPlaneSettings) -> Result<String, String> {
    match &cp.credential_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("controlPlane.credentialFile {}: {e}", path.display())),
        None => Ok(std::env::var("RINGMESH_CREDENTIAL")
            .unwrap_or_default()
            .trim()
            .to_owned()),
    }
}

/// The host of `host:port` (`[v6]:port` without its brackets): the name the control plane's
/// certificate is checked against unless `controlPlane.tls.serverName` says otherwise.
fn host_of(address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']').to_owned()
}

/// Every cause of `e`, outermost first: tonic's `transport error` alone says nothing, the
/// innermost (`invalid peer certificate: UnknownIssuer`) says what to fix.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// The channel's endpoint: plaintext, or TLS checked against `caCertFile`.
fn endpoint(cp: &ControlPlaneSettings, address: &str) -> Result<tonic::transport::Endpoint, SessionError> {
    let connect_error = |e: String| SessionError::Connect(address.to_owned(), e);
    let scheme = if cp.tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| connect_error(causes(&e)))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(tls) = &cp.tls {
        let pem = std::fs::read(&tls.ca_cert_file).map_err(|e| {
            connect_error(format!(
                "controlPlane.tls.caCertFile {}: {e}",
                tls.ca_cert_file.display()
            ))
        })?;
        let name = tls.server_name.clone().unwrap_or_else(|| host_of(address));
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name(name);
        endpoint = endpoint.tls_config(config).map_err(|e| connect_error(causes(&e)))?;
    }
    Ok(endpoint)
}

fn hello(cp: &ControlPlaneSettings, w: &WorkloadSettings, serving_version: u64, credential: String) -> ProxyMessage {
    ProxyMessage {
        message: Some(proxy_message::Message::Hello(Hello {
            node_id: cp.node_id.clone(),
            workload: Some(Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                labels: w.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                addresses: w.addresses.iter().map(|a| a.to_string()).collect(),
                services: w.services.clone(),
                ports: w.ports.iter().map(|(k, v)| (k.clone(), u32::from(*v))).collect(),
            }),
            proxy_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            serving_version,
            credential,
        })),
    }
}

/// Runs sessions until the control loop goes away. Back-off between attempts: 100 ms doubling
/// to 10 s, each wait drawn between half and all of it (so a fleet does not reconnect in step);
/// capped at 1 s once any config was applied, so a serving proxy resyncs soon after a control
/// plane restart. After a failed session the next attempt goes to the next replica.
pub(crate) async fn run(
    cp: ControlPlaneSettings,
    workload: WorkloadSettings,
    updates: mpsc::Sender<Update>,
    status: StatusCell,
    mut certs: CertManager,
) {
    update(&status, |s| {
        s.state = "connecting";
        s.replicas = cp.addresses.clone();
        s.protocol_version = PROTOCOL_VERSION;
    });
    let mut backoff = Duration::from_millis(100);
    let mut replica = 0usize;
    let mut serving = 0u64;
    let mut held = HeldEndpoints::default();
    // The app's readiness: always ready without a probe; with one, unready until it first passes
    // (as Kubernetes starts a pod), and every change is told to the control plane at once.
    let (ready_tx, ready) = watch::channel(workload.readiness.is_none());
    if let Some(probe) = workload.readiness.clone() {
        #[allow(clippy::disallowed_methods)] // on the control thread's tokio runtime
        tokio::spawn(crate::probe::run(probe, ready_tx));
    }
    // Failed attempts in a row: the 1st, 2nd, 4th, 8th ... are logged, so an outage of an hour
    // leaves a dozen lines, not thousands.
    let mut failures = 0u64;
    loop {
        let before = serving;
        let Some(address) = cp.addresses.get(replica % cp.addresses.len().max(1)) else {
            tracing::error!("no control-plane address configured; not subscribing");
            return;
        };
        update(&status, |s| s.address = address.clone());
        let result = session(
            &cp,
            address,
            &workload,
            &updates,
            (&mut serving, &mut held),
            ready.clone(),
            (&status, &mut certs),
        )
        .await;
        certs.stream_down();
        update(&status, |s| {
            s.serving_version = serving;
            s.state = match &result {
                Err(SessionError::Refused(_)) => "refused",
                _ => "retrying",
            };
            s.last_error = result.as_ref().err().map(|e| e.to_string());
        });
        match result {
            Err(SessionError::Closed) => return,
            Err(e) => {
                failures = if serving != before { 1 } else { failures + 1 };
                update(&status, |s| s.failures = failures);
                // A session that served is a replica that died: say so whatever the count.
                if failures.is_power_of_two() || serving != before {
                    tracing::warn!(
                        control_plane = %address,
                        serving_version = serving,
                        attempts = failures,
                        "{e}; keeping the last good config"
                    )
                }
                replica = next_replica(replica, cp.addresses.len());
            }
            Ok(()) => {
                failures = 0;
                tracing::warn!(control_plane = %address, "control plane ended the stream; reconnecting");
                replica = next_replica(replica, cp.addresses.len());
            }
        }
        if updates.is_closed() {
            return;
        }
        let jitter = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()) as u64)
            % (backoff.as_millis() as u64 + 1);
        tokio::time::sleep(Duration::from_millis(jitter.max(backoff.as_millis() as u64 / 2))).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        if serving > 0 {
            backoff = backoff.min(Duration::from_secs(1));
        }
    }
}

/// Completes at `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A failed call's text: the status message, with the transport's causes when it has some
/// (a TLS failure shows up as `transport error` otherwise).
fn stream_error(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) if status.message().is_empty() || status.message() == "transport error" => causes(source),
        Some(source) => format!("{}: {}", status.message(), causes(source)),
        None => status.message().to_owned(),
    }
}

/// The replica to try after `current` failed, wrapping around.
fn next_replica(current: usize, replicas: usize) -> usize {
    if replicas == 0 {
        0
    } else {
        (current + 1) % replicas
    }
}

async fn session(
    cp: &ControlPlaneSettings,
    address: &str,
    workload: &WorkloadSettings,
    updates: &mpsc::Sender<Update>,
    (serving, held): (&mut u64, &mut HeldEndpoints),
    mut ready: watch::Receiver<bool>,
    (status, certs): (&StatusCell, &mut CertManager),
) -> Result<(), SessionError> {
    let channel = endpoint(cp, address)?
        .connect()
        .await
        .map_err(|e| SessionError::Connect(address.to_owned(), causes(&e)))?;
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let credential = credential(cp).unwrap_or_else(|e| {
        tracing::warn!("no credential sent: {e}");
        String::new()
    });
    let _ = tx.send(hello(cp, workload, *serving, credential)).await;
    // The control plane takes a new workload as ready; say so at once if it is not.
    let health = |ready: bool| ProxyMessage {
        message: Some(proxy_message::Message::Health(Health { ready })),
    };
    if !*ready.borrow_and_update() {
        let _ = tx.send(health(false)).await;
    }
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|e| SessionError::Stream(stream_error(&e)))?
        .into_inner();
    tracing::info!(
        control_plane = %address,
        replicas = cp.addresses.len(),
        node = %cp.node_id,
        "connected to the control plane"
    );
    update(status, |s| {
        s.state = "connected";
        s.failures = 0;
        s.last_error = None;
    });
    // What this stream has sent so far, rebuilt from whole snapshots and deltas.
    let mut assembler = Assembler::new();
    held.session_began();
    certs.stream_up();
    loop {
        let due = certs.due();
        let msg = tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(SessionError::Stream(stream_error(&e))),
            },
            () = sleep_until(due) => {
                if let Some(req) = certs.request() {
                    let m = ProxyMessage { message: Some(proxy_message::Message::CertificateRequest(req)) };
                    if tx.send(m).await.is_err() {
                        return Err(SessionError::Stream("request stream closed".into()));
                    }
                }
                continue;
            }
            changed = ready.changed() => {
                if changed.is_ok() {
                    let now = *ready.borrow_and_update();
                    tracing::info!(ready = now, "workload readiness changed; telling the control plane");
                    if tx.send(health(now)).await.is_err() {
                        return Err(SessionError::Stream("request stream closed".into()));
                    }
                }
                continue;
            }
        };
        if let Some(control_message::Message::Refusal(r)) = msg.message {
            tracing::error!(
                proxy_protocol = PROTOCOL_VERSION,
                control_protocol = r.control_protocol_version,
                "control plane refused this proxy: {}",
                r.message
            );
            return Err(SessionError::Refused(r.message));
        }
        let msg = match msg.message {
            Some(m @ (control_message::Message::Certificate(_) | control_message::Message::CertificateRefusal(_))) => {
                certs.answer(m);
                continue;
            }
            other => ringmesh_api::proto::ControlMessage { message: other },
        };
        match assembler.feed(msg) {
            Err(e) => return Err(SessionError::Stream(e.to_string())),
            Ok(None) => {}
            Ok(Some(s)) => {
                let (reply, answer) = oneshot::channel();
                let (endpoints, kept) = held.resolve(s.endpoints, s.registry_warming);
                let in_use = endpoints.clone();
                let input = ControlInput {
                    documents: s.documents,
                    endpoints,
                };
                updates
                    .send(Update {
                        input,
                        version: s.version,
                        reply,
                    })
                    .await
                    .map_err(|_| SessionError::Closed)?;
                let result = answer.await.map_err(|_| SessionError::Closed)?;
                let m = match result {
                    Ok(()) => {
                        *serving = s.version;
                        held.applied(in_use);
                        let was_kept = status.load().as_ref().map_or(0, |st| st.kept_endpoints);
                        if kept != was_kept {
                            tracing::info!(
                                kept,
                                "the control plane's registry is {}; endpoints it does not list yet are kept: {kept}",
                                if s.registry_warming { "warming" } else { "warm" }
                            );
                        }
                        update(status, |st| {
                            st.serving_version = s.version;
                            st.last_error = None;
                            st.registry_warming = s.registry_warming;
                            st.kept_endpoints = kept;
                        });
                        proxy_message::Message::Ack(Ack {
                            version: s.version,
                            nonce: s.nonce,
                        })
                    }
                    Err(error) => {
                        tracing::error!(
                            version = s.version,
                            "config from the control plane refused (NACK):\n{error}"
                        );
                        update(status, |st| {
                            st.last_error = Some(format!("config version {} refused: {error}", s.version));
                            st.nacks += 1;
                        });
                        proxy_message::Message::Nack(Nack {
                            version: s.version,
                            nonce: s.nonce,
                            error,
                        })
                    }
                };
                if tx.send(ProxyMessage { message: Some(m) }).await.is_err() {
                    return Err(SessionError::Stream("request stream closed".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_sessions_move_to_the_next_replica_and_wrap() {
        assert_eq!(next_replica(0, 3), 1);
        assert_eq!(next_replica(2, 3), 0);
        assert_eq!(next_replica(0, 1), 0);
        assert_eq!(next_replica(5, 0), 0);
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(
            host_of("ringmesh-control.istio-system.svc:15012"),
            "ringmesh-control.istio-system.svc"
        );
        assert_eq!(host_of("127.0.0.1:15012"), "127.0.0.1");
        assert_eq!(host_of("[::1]:15012"), "::1");
    }
}
