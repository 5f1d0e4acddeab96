//! The management API (`admin.proto`'s `Admin` service): what `ringmesh apply`, `get`, `delete`,
//! `proxy-status` and `proxy-config` talk to. Served beside `Discovery` on the same port.
//!
//! The [`DirStore`] directory is the source of truth (see `store.rs` for its layout): `Apply`
//! and `Delete` change files there and then hand the new set to the [`ControlPlane`], which
//! pushes at once (after its debounce), without waiting for the directory watcher. The store
//! sits behind one mutex shared with the watcher, so an apply and a hand edit seen by the
//! watcher are never interleaved; file operations under it are small and short, which is why
//! they run inline rather than on a blocking thread.
//!
//! `Get` reports, for each resource, how the connected proxies took it: a proxy whose last
//! answer was a NACK is listed with its error, and is never counted as synced.

use std::sync::{Arc, Mutex, MutexGuard};

use ringmesh_api::proto::admin_server::{Admin, AdminServer};
use ringmesh_api::proto::{
    self, ApplyRequest, ApplyResponse, ApplyResult, CreateTokenRequest, CreateTokenResponse, DeleteRequest,
    DeleteResponse, GetRequest, GetResponse, ProxyConfigRequest, ProxyConfigResponse, ProxyNack, ProxyStatusEntry,
    ProxyStatusRequest, ProxyStatusResponse, ResourceRef, ResourceStatus, StoredResource as WireResource, SyncState,
    TrustBundleRequest, TrustBundleResponse,
};
use ringmesh_api::Diagnostic;
use tonic::{Request, Response, Status};

use crate::etcd::EtcdStore;
use crate::scope::Scopes;
use crate::server::{ControlPlane, ProxyConfigView, ProxyStatus};
use crate::store::{DirStore, Outcome, ResourceKey, StoreError, StoredResource};

/// Kinds the CLI and the API know by name: `(kind, plural, short names)`. The first eight are
/// compiled; the others are Istio kinds that ringmesh stores and serves but ignores (the
/// loader warns about them), so `get` still finds what was applied.
pub const KINDS: &[(&str, &str, &[&str])] = &[
    ("VirtualService", "virtualservices", &["vs"]),
    ("DestinationRule", "destinationrules", &["dr"]),
    ("ServiceEntry", "serviceentries", &["se"]),
    ("WorkloadEntry", "workloadentries", &["we"]),
    ("ProxyConfig", "proxyconfigs", &[]),
    ("AuthorizationPolicy", "authorizationpolicies", &["ap"]),
    ("PeerAuthentication", "peerauthentications", &["pa"]),
    ("Telemetry", "telemetries", &["telemetry"]),
    ("RequestAuthentication", "requestauthentications", &["ra"]),
    ("WorkloadGroup", "workloadgroups", &["wg"]),
    ("Gateway", "gateways", &["gw"]),
    ("Sidecar", "sidecars", &[]),
    ("EnvoyFilter", "envoyfilters", &[]),
    ("WasmPlugin", "wasmplugins", &[]),
];

/// Metadata of an `Unavailable` status that the control plane itself sends when its store
/// (etcd) cannot be reached, naming the store: the CLI then says that etcd is unreachable, not
/// the control plane, which answered.
pub const STORE_UNAVAILABLE: &str = "ringmesh-store-unavailable";

/// A failed management call; becomes a gRPC status in [`From<AdminError> for Status`] only.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The kind is not one ringmesh knows.
    #[error("unknown kind `{0}`; use one of {kinds} (plural and short names such as vs, dr, se work too), or `all`", kinds = kind_names())]
    UnknownKind(String),
    /// A request field that must be set is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// No proxy with that node id.
    #[error("no proxy `{0}` is known to this control plane; `ringmesh proxy-status` lists them")]
    NoProxy(String),
    /// Resources are read from Kubernetes; they change there.
    #[error("this control plane reads resources from Kubernetes: use `kubectl {0} -f …` (ringmesh analyze checks the files first)")]
    FromKubernetes(&'static str),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let msg = e.to_string();
        match e {
            AdminError::UnknownKind(_) | AdminError::Missing(_) => Status::invalid_argument(msg),
            AdminError::NoProxy(_) => Status::not_found(msg),
            AdminError::FromKubernetes(_) => Status::failed_precondition(msg),
            AdminError::Store(StoreError::NotApplied { .. } | StoreError::Refused(_)) => {
                Status::failed_precondition(msg)
            }
            AdminError::Store(StoreError::Io { .. }) => Status::internal(msg),
            AdminError::Store(StoreError::Etcd(e)) if e.is_unreachable() => {
                let mut status = Status::unavailable(msg);
                status
                    .metadata_mut()
                    .insert(STORE_UNAVAILABLE, tonic::metadata::MetadataValue::from_static("etcd"));
                status
            }
            AdminError::Store(StoreError::Etcd(_)) => Status::internal(msg),
            AdminError::Store(StoreError::Conflict(_)) => Status::aborted(msg),
        }
    }
}

fn kind_names() -> String {
    KINDS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
}

/// Resolves a kind as users type it (`VirtualService`, `virtualservices`, `vs`,
/// `virtualservices.networking.istio.io`, any case). `Ok(None)` is `all` (or empty).
pub fn canonical_kind(input: &str) -> Result<Option<&'static str>, AdminError> {
    let word = input.split('.').next().unwrap_or("").to_ascii_lowercase();
    if word.is_empty() || word == "all" {
        return Ok(None);
    }
    KINDS
        .iter()
        .find(|(kind, plural, short)| kind.to_ascii_lowercase() == word || *plural == word || short.contains(&&*word))
        .map(|k| Some(k.0))
        .ok_or_else(|| AdminError::UnknownKind(input.to_owned()))
}

/// Where applied resources are kept. Both backends share the checks (`store::plan_apply`,
/// `store::plan_delete`); they differ in how the result is written and watched.
#[derive(Debug, Clone)]
enum Backend {
    /// A watched directory ([`DirStore`]).
    Dir(Arc<Mutex<DirStore>>),
    /// etcd, shared by several replicas ([`EtcdStore`]).
    Etcd(Arc<EtcdStore>),
    /// The Kubernetes API server (`kubernetes.rs`): objects change with `kubectl`, so apply and
    /// delete are refused here rather than written where the next watch event would undo them.
    Kubernetes,
}

/// The management service: the store and the control plane it feeds.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Backend,
    cp: ControlPlane,
}

impl AdminService {
    /// Manages `store`, whose accepted set `cp` serves.
    pub fn new(store: DirStore, cp: ControlPlane) -> Self {
        AdminService {
            store: Backend::Dir(Arc::new(Mutex::new(store))),
            cp,
        }
    }

    /// Manages resources in etcd, whose accepted set `cp` serves (followed by
    /// [`EtcdStore::follow`], which the caller runs).
    pub fn with_etcd(store: Arc<EtcdStore>, cp: ControlPlane) -> Self {
        AdminService {
            store: Backend::Etcd(store),
            cp,
        }
    }

    /// Serves `get`, `proxy-status` and `proxy-config` for resources that come from Kubernetes
    /// (followed by [`crate::kubernetes::run`], which the caller runs); apply and delete are
    /// refused with a pointer to `kubectl`.
    pub fn with_kubernetes(cp: ControlPlane) -> Self {
        AdminService {
            store: Backend::Kubernetes,
            cp,
        }
    }

    /// The tonic service to mount beside [`ControlPlane::service`].
    pub fn service(&self) -> AdminServer<AdminService> {
        AdminServer::new(self.clone())
    }

    fn lock(store: &Mutex<DirStore>) -> MutexGuard<'_, DirStore> {
        // A panic while holding the lock would be a bug here; the store on disk is still the
        // truth, so carry on with it rather than refuse every later call.
        store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One tick of the directory watcher: picks up hand edits. `Ok(true)` when a new set was
    /// accepted and pushed; `Err` with every diagnostic when the directory was refused (the
    /// last good set stays). Always `Ok(false)` with etcd, which is followed by its watch.
    pub fn refresh(&self) -> Result<bool, String> {
        let Backend::Dir(store) = &self.store else {
            return Ok(false);
        };
        let mut store = Self::lock(store);
        let changed = store.refresh()?;
        if changed {
            self.cp.set_resources(store.current.clone());
        }
        Ok(changed)
    }

    async fn apply(&self, req: ApplyRequest) -> Result<ApplyResponse, AdminError> {
        let files: Vec<(String, String)> = req.files.into_iter().map(|d| (d.source, d.yaml)).collect();
        let changed = |report: &crate::store::ApplyReport| {
            report.applied
                && report
                    .documents
                    .iter()
                    .any(|d| matches!(d.outcome, Outcome::Created | Outcome::Configured))
        };
        let report = match &self.store {
            Backend::Dir(store) => {
                let mut store = Self::lock(store);
                let report = store.apply(&files, req.dry_run)?;
                if changed(&report) {
                    self.cp.set_resources(store.current.clone());
                }
                report
            }
            Backend::Kubernetes => return Err(AdminError::FromKubernetes("apply")),
            Backend::Etcd(store) => {
                let (report, set) = store.apply(&files, req.dry_run).await?;
                // Served here at once; the other replicas get it from their watch.
                if let Some(set) = set.filter(|_| changed(&report)) {
                    self.cp.set_resources(set);
                }
                report
            }
        };
        Ok(ApplyResponse {
            applied: report.applied,
            results: report
                .documents
                .into_iter()
                .map(|d| ApplyResult {
                    source: d.source,
                    resource: d.key.as_ref().map(resource_ref),
                    outcome: wire_outcome(d.outcome) as i32,
                    diagnostics: d.diagnostics.iter().map(wire_diagnostic).collect(),
                })
                .collect(),
            diagnostics: report.other.iter().map(wire_diagnostic).collect(),
            generation: self.cp.generation(),
        })
    }

    fn get(&self, req: &GetRequest) -> Result<GetResponse, AdminError> {
        let kind = canonical_kind(&req.kind)?;
        let set = self.cp.resources();
        let proxies = self.cp.proxy_configs();
        let resources = set
            .resources
            .iter()
            .filter(|r| kind.is_none_or(|k| r.key.kind == k))
            .filter(|r| req.name.is_empty() || r.key.name == req.name)
            .filter(|r| req.namespace.is_empty() || r.key.namespace == req.namespace)
            .map(|r| WireResource {
                resource: Some(resource_ref(&r.key)),
                yaml: r.document.yaml.clone(),
                source: r.document.source.clone(),
                applied: r.applied,
                status: Some(resource_status(r, &proxies)),
            })
            .collect();
        Ok(GetResponse { resources })
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse, AdminError> {
        let kind = canonical_kind(&req.kind)?.ok_or(AdminError::Missing("a kind (not `all`)"))?;
        if req.name.is_empty() {
            return Err(AdminError::Missing("name"));
        }
        let key = ResourceKey {
            kind: kind.to_owned(),
            namespace: if req.namespace.is_empty() {
                "default".to_owned()
            } else {
                req.namespace.clone()
            },
            name: req.name.clone(),
        };
        let deleted = match &self.store {
            Backend::Dir(store) => {
                let mut store = Self::lock(store);
                let deleted = store.delete(&key)?.is_some();
                if deleted {
                    self.cp.set_resources(store.current.clone());
                }
                deleted
            }
            Backend::Kubernetes => return Err(AdminError::FromKubernetes("delete")),
            Backend::Etcd(store) => match store.delete(&key).await? {
                Some((_, set)) => {
                    if let Some(set) = set {
                        self.cp.set_resources(set);
                    }
                    true
                }
                None => false,
            },
        };
        Ok(DeleteResponse {
            deleted,
            resource: Some(resource_ref(&key)),
            generation: self.cp.generation(),
        })
    }

    fn proxy_config(&self, node_id: &str) -> Result<ProxyConfigResponse, AdminError> {
        if node_id.is_empty() {
            return Err(AdminError::Missing("node_id"));
        }
        let generation = self.cp.generation();
        let view = self
            .cp
            .proxy_configs()
            .into_iter()
            .find(|p| p.status.node_id == node_id)
            .ok_or_else(|| AdminError::NoProxy(node_id.to_owned()))?;
        Ok(ProxyConfigResponse {
            status: Some(status_entry(&view.status, generation)),
            sent: view.sent.as_deref().cloned(),
            acked: view.acked.as_deref().cloned(),
        })
    }
}

fn resource_ref(k: &ResourceKey) -> ResourceRef {
    ResourceRef {
        kind: k.kind.clone(),
        namespace: k.namespace.clone(),
        name: k.name.clone(),
    }
}

fn wire_outcome(o: Outcome) -> proto::Outcome {
    match o {
        Outcome::Created => proto::Outcome::Created,
        Outcome::Configured => proto::Outcome::Configured,
        Outcome::Unchanged => proto::Outcome::Unchanged,
        Outcome::Refused => proto::Outcome::Refused,
        Outcome::NotApplied => proto::Outcome::NotApplied,
    }
}

/// The compiler's diagnostic on the wire, every part kept so the CLI prints it as `analyze` does.
pub fn wire_diagnostic(d: &Diagnostic) -> proto::Diagnostic {
    proto::Diagnostic {
        warning: !d.is_error(),
        file: d.file.clone().unwrap_or_default(),
        line: d.line.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
        resource: d.resource.clone().unwrap_or_default(),
        field: d.field.clone().unwrap_or_default(),
        message: d.message.clone(),
    }
}

/// The wire diagnostic back in the compiler's type, for printing with its `Display`.
pub fn from_wire_diagnostic(d: &proto::Diagnostic) -> Diagnostic {
    let base = if d.warning {
        Diagnostic::warning(d.message.clone())
    } else {
        Diagnostic::error(d.message.clone())
    };
    let file = (!d.file.is_empty()).then_some(d.file.as_str());
    let line = (d.line != 0).then_some(d.line as usize);
    let mut out = base.at(file, line).on_field(d.field.clone());
    if !d.resource.is_empty() {
        out = out.in_resource(d.resource.clone());
    }
    out
}

fn sync_state(s: &ProxyStatus, generation: u64) -> SyncState {
    match s.state(generation) {
        "SYNCED" => SyncState::Synced,
        "NACKED" => SyncState::Nacked,
        "DISCONNECTED" => SyncState::Disconnected,
        _ => SyncState::Stale,
    }
}

fn status_entry(s: &ProxyStatus, generation: u64) -> ProxyStatusEntry {
    ProxyStatusEntry {
        node_id: s.node_id.clone(),
        workload: Some(s.workload.clone()),
        proxy_version: s.proxy_version.clone(),
        state: sync_state(s, generation) as i32,
        sent_version: s.sent_version,
        acked_version: s.acked_version,
        nack_error: s.nack.clone().unwrap_or_default(),
        nacked_version: s.nacked_version,
        stale_reason: s.stale_reason.clone().unwrap_or_default(),
        ready: s.ready,
    }
}

/// How the connected proxies that should see `r` (its `exportTo` and selector, `scope.rs`) took
/// it as stored now. Such a proxy whose last answer was a NACK is listed under `nacked` whatever
/// it was sent: its config is not what the store holds, so it is never counted as synced.
fn resource_status(r: &StoredResource, proxies: &[ProxyConfigView]) -> ResourceStatus {
    let scope = Scopes::of(std::slice::from_ref(&r.document));
    let mut out = ResourceStatus::default();
    for p in proxies
        .iter()
        .filter(|p| p.status.connected && !scope.visible_to(&p.status.workload).is_empty())
    {
        if let Some(error) = &p.status.nack {
            out.nacked.push(ProxyNack {
                node_id: p.status.node_id.clone(),
                version: p.status.nacked_version,
                error: error.clone(),
            });
            continue;
        }
        let holds = |s: &Option<Arc<proto::Snapshot>>| {
            s.as_ref()
                .is_some_and(|s| s.documents.iter().any(|d| d.yaml == r.document.yaml))
        };
        if holds(&p.acked) && p.acked.as_ref().map(|s| s.version) == p.sent.as_ref().map(|s| s.version) {
            out.synced += 1;
        } else if holds(&p.sent) {
            out.pending += 1;
        } else {
            out.stale += 1;
        }
    }
    out
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        Ok(Response::new(AdminService::apply(self, request.into_inner()).await?))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Ok(Response::new(AdminService::get(self, request.get_ref())?))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Ok(Response::new(AdminService::delete(self, request.get_ref()).await?))
    }

    async fn proxy_status(
        &self,
        _request: Request<ProxyStatusRequest>,
    ) -> Result<Response<ProxyStatusResponse>, Status> {
        let generation = self.cp.generation();
        let proxies = self
            .cp
            .proxy_status()
            .iter()
            .map(|s| status_entry(s, generation))
            .collect();
        let registry_warming_ms = self
            .cp
            .warming_for()
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        Ok(Response::new(ProxyStatusResponse {
            generation,
            proxies,
            registry_warming_ms,
        }))
    }

    async fn proxy_config(
        &self,
        request: Request<ProxyConfigRequest>,
    ) -> Result<Response<ProxyConfigResponse>, Status> {
        Ok(Response::new(AdminService::proxy_config(
            self,
            &request.get_ref().node_id,
        )?))
    }

    /// Only for callers on this machine: a token is a certificate for its identity, so minting
    /// one must take more than reaching the port (`ringmesh token create` on the control
    /// plane's host, or `kubectl exec` into its pod).
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let authority = self
            .cp
            .authority()
            .ok_or_else(|| Status::failed_precondition("this control plane runs no CA"))?;
        match request.remote_addr() {
            Some(peer) if peer.ip().is_loopback() => {}
            peer => {
                tracing::warn!(peer = ?peer, "token creation refused: not a loopback caller");
                return Err(Status::permission_denied(
                    "tokens are made only for callers on the control plane's own machine (run `ringmesh token create`                      there, against a loopback address)",
                ));
            }
        }
        let req = request.into_inner();
        let id = crate::ca::WorkloadId::new(&req.namespace, &req.service_account).map_err(Status::invalid_argument)?;
        let ttl = if req.ttl_seconds == 0 {
            crate::ca::DEFAULT_TOKEN_TTL
        } else {
            std::time::Duration::from_secs(req.ttl_seconds)
        };
        let (token, expires_unix) = authority.ca.create_token(&id, ttl, std::time::SystemTime::now());
        let spiffe_id = id.spiffe_id(authority.ca.trust_domain());
        tracing::info!(identity = %spiffe_id, expires_unix, "bootstrap token created");
        Ok(Response::new(CreateTokenResponse {
            token,
            spiffe_id,
            expires_unix,
        }))
    }

    async fn trust_bundle(
        &self,
        _request: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        let authority = self
            .cp
            .authority()
            .ok_or_else(|| Status::failed_precondition("this control plane runs no CA"))?;
        Ok(Response::new(TrustBundleResponse {
            pem: crate::ca::to_pem(authority.ca.trust_bundle()),
            trust_domain: authority.ca.trust_domain().to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_as_users_type_them() {
        for (input, want) in [
            ("VirtualService", "VirtualService"),
            ("virtualservices", "VirtualService"),
            ("VS", "VirtualService"),
            ("dr", "DestinationRule"),
            ("serviceentries.networking.istio.io", "ServiceEntry"),
            ("se", "ServiceEntry"),
        ] {
            assert_eq!(canonical_kind(input).unwrap(), Some(want), "{input}");
        }
        assert_eq!(canonical_kind("all").unwrap(), None);
        let err = canonical_kind("virtualservise").unwrap_err().to_string();
        assert!(
            err.contains("virtualservise") && err.contains("VirtualService"),
            "{err}"
        );
    }
}
