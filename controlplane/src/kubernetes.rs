//! Resources from Kubernetes: Istio's custom resources watched through the API server.
//!
//! In a cluster, users keep `kubectl apply`-ing the `VirtualService`, `DestinationRule`,
//! `ServiceEntry`, `WorkloadEntry`, `AuthorizationPolicy` and `PeerAuthentication` objects they
//! already have (Istio's CRDs, or the ones in
//! `deploy/kubernetes/crds.yaml`); `ringmesh-control --kubernetes` watches them with kube-rs and
//! serves them to proxies exactly as the directory store serves files: each object becomes one
//! YAML document (`apiVersion`, `kind`, `metadata.name/namespace/labels`, `spec`), and a set of
//! objects that does not compile as a whole is refused — logged with every diagnostic — while
//! the last good set keeps being served. A watch that breaks is resumed by kube-rs's watcher
//! with back-off; objects stay served meanwhile.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use ringmesh_api::proto::Document;

use crate::server::ControlPlane;

use crate::store::{ResourceKey, ResourceSet, StoredResource};
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
];

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No kubeconfig and not in a cluster, or the API server's address is bad.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Key of one object: kind, namespace, name.
type Key = (&'static str, String, String);

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

/// Watches every kind in [`WATCHED`] with `client` and serves the objects through `cp` until
/// the streams end (they do not, short of the process stopping). `synced` fires when the first
/// complete set was accepted: the caller opens the gRPC port only then, so that no proxy is sent
/// an empty config by a control plane that has not listed the cluster yet.
pub async fn run(client: kube::Client, cp: ControlPlane, synced: tokio::sync::oneshot::Sender<()>) {
    let mut synced = Some(synced);
    let streams = WATCHED.iter().map(|&(group, version, kind, plural)| {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let api_version = format!("{group}/{version}");
        watcher(api, watcher::Config::default())
            .map(move |e| (kind, api_version.clone(), e))
            .boxed()
    });
    let mut events = futures_util::stream::select_all(streams);
    let mut objects: BTreeMap<Key, Document> = BTreeMap::new();
    // Objects of a kind being re-listed, swapped in whole at `InitDone`.
    let mut relisting: BTreeMap<&'static str, BTreeMap<Key, Document>> = BTreeMap::new();
    let mut listed: std::collections::BTreeSet<&'static str> = std::collections::BTreeSet::new();
    let mut served: Vec<Document> = Vec::new();
    while let Some((kind, api_version, event)) = events.next().await {
        let changed = match event {
            Err(e) => {
                tracing::warn!(
                    kind,
                    "Kubernetes watch failed: {e}; retrying, still serving what was listed"
                );
                false
            }
            Ok(watcher::Event::Init) => {
                relisting.insert(kind, BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(obj)) => {
                if let Some((ns, name, doc)) = document(kind, &api_version, &obj) {
                    relisting.entry(kind).or_default().insert((kind, ns, name), doc);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                objects.retain(|k, _| k.0 != kind);
                objects.extend(relisting.remove(kind).unwrap_or_default());
                listed.insert(kind);
                true
            }
            Ok(watcher::Event::Apply(obj)) => match document(kind, &api_version, &obj) {
                Some((ns, name, doc)) => objects.insert((kind, ns, name), doc.clone()).as_ref() != Some(&doc),
                None => false,
            },
            Ok(watcher::Event::Delete(obj)) => {
                let ns = obj.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let name = obj.metadata.name.clone().unwrap_or_default();
                objects.remove(&(kind, ns, name)).is_some()
            }
        };
        // Serve nothing until every kind was listed once: a half-listed cluster would compile
        // into routes to services that are merely not listed yet.
        if !changed || listed.len() < WATCHED.len() {
            continue;
        }
        let documents: Vec<Document> = objects.values().cloned().collect();
        if documents == served {
            continue;
        }
        match crate::server::check_compiles(&documents, &[]) {
            Ok(()) => {
                tracing::info!(objects = documents.len(), "Kubernetes resources changed; pushing");
                served = documents.clone();
                let resources = objects
                    .iter()
                    .map(|((kind, namespace, name), doc)| StoredResource {
                        key: ResourceKey {
                            kind: kind.to_string(),
                            namespace: namespace.clone(),
                            name: name.clone(),
                        },
                        document: doc.clone(),
                        file: doc.source.clone().into(),
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
