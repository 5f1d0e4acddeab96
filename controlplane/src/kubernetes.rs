//! Resources from Kubernetes: Istio's custom resources watched through the API server.
//!
//! In a cluster, users keep `kubectl apply`-ing the `VirtualService`, `DestinationRule`,
//! `ServiceEntry`, `WorkloadEntry`, `AuthorizationPolicy`, `PeerAuthentication` and `Telemetry`
//! objects they already have (Istio's CRDs, or the ones in
//! `deploy/kubernetes/crds.yaml`); `ringmesh-control --kubernetes` watches them with kube-rs and
//! serves them to proxies exactly as the directory store serves files: each object becomes one
//! YAML document (`apiVersion`, `kind`, `metadata.name/namespace/labels`, `spec`), and a set of
//! objects that does not compile as a whole is refused — logged with every diagnostic — while
//! the last good set keeps being served. A watch that breaks is resumed by kube-rs's watcher
//! with back-off; objects stay served meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt as _};
use ringmesh_api::proto::Document;

use crate::server::ControlPlane;
use crate::store::{ResourceKey, ResourceSet, StoredResource};

pub mod ca_root;
pub mod discovery;
pub mod listing;

use listing::{Listing, Name, Read};

/// The API server client, re-exported so that the binary (also built by the end-to-end tests'
/// package) needs no `kube` dependency of its own.
pub use kube::Client;

/// The kinds watched: `(group, version, kind, plural)`.
pub const WATCHED: &[(&str, &str, &str, &str)] = &[
    ("networking.istio.io", "v1", "ServiceEntry", "serviceentries"),
    ("networking.istio.io", "v1", "WorkloadEntry", "workloadentries"),
    ("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
    ("networking.istio.io", "v1", "VirtualService", "virtualservices"),
    (
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    ("security.istio.io", "v1", "PeerAuthentication", "peerauthentications"),
    ("telemetry.istio.io", "v1", "Telemetry", "telemetries"),
];

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No kubeconfig and not in a cluster, or the API server's address is bad.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The YAML document an object is served as, or `None` for an object without a name.
pub fn document(kind: &str, api_version: &str, obj: &DynamicObject) -> Option<(String, String, Document)> {
    let name = obj.metadata.name.clone()?;
    let namespace = obj.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut metadata = serde_json::json!({ "name": name, "namespace": namespace });
    if let Some(labels) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata["labels"] = serde_json::json!(labels);
    }
    let spec = obj.data.get("spec").cloned().unwrap_or(serde_json::json!({}));
    let value = serde_json::json!({ "apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec });
    let yaml = serde_yaml::to_string(&value).ok()?;
    let source = format!("kubernetes:{}/{namespace}/{name}", kind.to_ascii_lowercase());
    Some((namespace, name, Document { source, yaml }))
}

/// One Istio object as served.
#[derive(Debug, Clone, PartialEq)]
struct IstioObject {
    document: Document,
    /// A ServiceEntry's hosts, short ones expanded in its namespace: a Service with one of
    /// these hosts is not synthesized (the user's ServiceEntry takes precedence).
    hosts: Vec<String>,
}

fn istio_object(kind: &'static str, api_version: &str, (ns, _): &Name, obj: &DynamicObject) -> Read<IstioObject> {
    let Some((_, _, document)) = document(kind, api_version, obj) else {
        return Read::Unreadable("its spec cannot be written as YAML".into());
    };
    let hosts = match (kind, obj.data.pointer("/spec/hosts")) {
        ("ServiceEntry", Some(serde_json::Value::Array(hosts))) => hosts
            .iter()
            .filter_map(serde_json::Value::as_str)
            .map(|h| h.trim().to_ascii_lowercase())
            .map(|h| {
                if h.contains('.') || h.contains('*') {
                    h
                } else {
                    ringmesh_api::registry::fqdn(&h, ns)
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    Read::Keep(IstioObject { document, hosts })
}

/// A watch of every object of one kind, its events tagged with the kind.
fn watch(
    client: &kube::Client,
    (group, version, kind, plural): (&str, &str, &'static str, &str),
) -> futures_util::stream::BoxStream<'static, (&'static str, Result<watcher::Event<DynamicObject>, watcher::Error>)> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    // Back-off between retries: without it a refused list (a missing RBAC grant) is retried
    // at once, forever, with a warning each time.
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |e| (kind, e))
        .boxed()
}

/// Watches every kind in [`WATCHED`] and [`discovery::KINDS`] with `client` and serves the
/// Istio objects, and a ServiceEntry per Kubernetes Service ([`discovery`]), through `cp` until
/// the streams end (they do not, short of the process stopping). `synced` fires when the first
/// complete set was accepted: the caller opens the gRPC port only then, so that no proxy is sent
/// an empty config by a control plane that has not listed the cluster yet.
pub async fn run(client: kube::Client, cp: ControlPlane, synced: tokio::sync::oneshot::Sender<()>) {
    let mut synced = Some(synced);
    let streams = WATCHED.iter().chain(discovery::KINDS).map(|&kind| watch(&client, kind));
    let mut events = futures_util::stream::select_all(streams);
    // By kind, in the kinds' name order (the order documents are served in).
    let mut istio: BTreeMap<&'static str, (String, Listing<IstioObject>)> = WATCHED
        .iter()
        .map(|&(group, version, kind, _)| (kind, (format!("{group}/{version}"), Listing::new(kind))))
        .collect();
    let mut cluster = discovery::Cluster::default();
    let mut served: Vec<Document> = Vec::new();
    while let Some((kind, event)) = events.next().await {
        let changed = match event {
            Err(e) => {
                tracing::warn!(
                    kind,
                    "Kubernetes watch failed: {e}; retrying, still serving what was listed"
                );
                false
            }
            Ok(event) => match istio.get_mut(kind) {
                Some((api_version, listing)) => {
                    listing.event(event, |name, obj| istio_object(kind, api_version, name, obj))
                }
                None => cluster.event(kind, event),
            },
        };
        // Serve nothing until every kind was listed once: a half-listed cluster would compile
        // into routes to services that are merely not listed yet.
        if !changed || !cluster.listed() || !istio.values().all(|(_, l)| l.listed()) {
            continue;
        }
        let objects = || {
            istio
                .iter()
                .flat_map(|(kind, (_, l))| l.objects().iter().map(move |(name, o)| (*kind, name, o)))
        };
        let taken: BTreeSet<String> = objects().flat_map(|(_, _, o)| o.hosts.iter().cloned()).collect();
        let documents: Vec<Document> = objects()
            .map(|(_, _, o)| o.document.clone())
            .chain(cluster.service_entries(&taken))
            .collect();
        if documents == served {
            continue;
        }
        match crate::server::check_compiles(&documents, &[]) {
            Ok(()) => {
                tracing::info!(documents = documents.len(), "Kubernetes resources changed; pushing");
                served = documents.clone();
                // `get` lists the objects users wrote; synthesized ServiceEntries are not
                // theirs (a user's ServiceEntry may even share a synthesized one's name).
                let resources = objects()
                    .map(|(kind, (namespace, name), o)| StoredResource {
                        key: ResourceKey {
                            kind: kind.to_string(),
                            namespace: namespace.clone(),
                            name: name.clone(),
                        },
                        document: o.document.clone(),
                        file: o.document.source.clone().into(),
                        applied: false,
                    })
                    .collect();
                cp.set_resources(ResourceSet { documents, resources });
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
            }
            Err(e) => tracing::error!("Kubernetes resources refused; serving the last good set:\n{e}"),
        }
    }
}

/// A client from the in-cluster service account, or `KUBECONFIG` / `~/.kube/config`.
pub async fn client() -> Result<kube::Client, KubeError> {
    Ok(kube::Client::try_default().await?)
}

/// The identity a Kubernetes service-account token proves, asked of the API server with a
/// TokenReview (the control plane's service account needs `create` on `tokenreviews`).
pub async fn review_token(client: &kube::Client, token: &str) -> Result<crate::ca::WorkloadId, String> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    use kube::api::{Api, PostParams};
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api.create(&PostParams::default(), &review).await.map_err(|e| {
        let hint = match &e {
            kube::Error::Api(s) if s.code == 403 => {
                " (the control plane's service account needs `create` on `tokenreviews` in `authentication.k8s.io`)"
            }
            _ => "",
        };
        format!("TokenReview failed: {}{hint}", api_error(&e))
    })?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(format!(
            "TokenReview: the Kubernetes API server did not authenticate the token: {}",
            status.error.unwrap_or_else(|| "no reason given".into())
        ));
    }
    let user = status.user.and_then(|u| u.username).unwrap_or_default();
    service_account_of(&user)
}

/// What the API server answered, for people: `403 Forbidden: <its message>` for an error
/// status (kube's own `Display` adds a debug dump of the whole status), anything else as kube
/// says it.
pub fn api_error(e: &kube::Error) -> String {
    let kube::Error::Api(s) = e else {
        return e.to_string();
    };
    let head = match (s.code, s.reason.as_str()) {
        (0, r) => r.to_owned(),
        (c, "") => c.to_string(),
        (c, r) => format!("{c} {r}"),
    };
    match (head.is_empty(), s.message.is_empty()) {
        (true, true) => e.to_string(),
        (_, true) => head,
        (true, false) => s.message.clone(),
        (false, false) => format!("{head}: {}", s.message),
    }
}

/// `system:serviceaccount:<namespace>:<name>`, the user name a service-account token
/// authenticates as, to the identity it names; any other user (a person, a node) gets none.
pub fn service_account_of(username: &str) -> Result<crate::ca::WorkloadId, String> {
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(|| format!("the token belongs to {username:?}, not to a service account"))?;
    let (ns, sa) = rest
        .split_once(':')
        .ok_or_else(|| format!("{username:?} does not name a namespace and service account"))?;
    crate::ca::WorkloadId::new(ns, sa)
}

#[cfg(test)]
mod token_review_tests {
    use super::service_account_of;

    // The user names alone; the TokenReview call, its refusals and the certificates it leads
    // to are tested end to end against a fake API server in `tests/kubernetes.rs`.
    #[test]
    fn service_account_user_names_become_identities() {
        let id = service_account_of("system:serviceaccount:shop:reviews").unwrap();
        assert_eq!((id.namespace(), id.service_account()), ("shop", "reviews"));
        assert!(service_account_of("kubernetes-admin")
            .unwrap_err()
            .contains("not to a service account"));
        assert!(service_account_of("system:serviceaccount:shop").is_err());
        assert!(
            service_account_of("system:serviceaccount:shop:a/b").is_err(),
            "a name that could bend the SPIFFE id is refused"
        );
    }
}
