//! The injected proxy's `ProxyConfig`, rendered from the pod.
//!
//! It travels in the pod's annotation `ringmesh.io/proxy-config` and reaches the sidecar as a
//! file through a `downwardAPI` volume, so the pod carries its whole config (`kubectl get pod -o
//! yaml` shows it) and no per-pod object has to be created or cleaned up. What only exists
//! once the pod runs (its name, its IPs) comes through the environment (`RINGMESH_NODE_ID`,
//! `RINGMESH_WORKLOAD_ADDRESS`).

use std::collections::BTreeMap;

use ringmesh_api::resources::{
    CaptureSpec, ControlPlaneSpec, ControlPlaneTlsSpec, IdentitySpec, ProbeSpec, ProxyConfigSpec, WorkloadSpec,
};
use serde_json::json;

use super::settings::InjectSettings;
use super::InjectError;

/// Where the sidecar finds the annotation's text.
pub const CONFIG_DIR: &str = "/etc/ringmesh/config";
/// The file in [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "proxy.yaml";
/// Where the mesh root's ConfigMap is mounted.
pub const CA_DIR: &str = "/etc/ringmesh/ca";
/// The ConfigMap's key.
pub const CA_FILE: &str = "root-cert.pem";
/// Where the projected service-account token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/ringmesh/tokens";
/// The token's file name.
pub const TOKEN_FILE: &str = "ringmesh-token";

/// What the pod says about its workload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadFacts {
    /// `app.kubernetes.io/name`, `app`, the owning workload's name, or the pod's.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// `spec.serviceAccountName`, default `default`.
    pub service_account: String,
    /// The pod's labels after injection.
    pub labels: BTreeMap<String, String>,
    /// Named container ports: name → number.
    pub ports: BTreeMap<String, i64>,
    /// The app's readiness probe, when the proxy can run it itself.
    pub readiness: Option<ProbeSpec>,
}

/// The `ProxyConfig` document (YAML) for this pod.
pub fn render(facts: &WorkloadFacts, settings: &InjectSettings) -> Result<String, InjectError> {
    let spec = ProxyConfigSpec {
        capture: Some(CaptureSpec::default()),
        control_plane: Some(ControlPlaneSpec {
            address: settings.discovery_address.clone(),
            tls: Some(ControlPlaneTlsSpec {
                ca_cert_file: format!("{CA_DIR}/{CA_FILE}"),
                server_name: None,
            }),
            credential_file: Some(format!("{TOKEN_DIR}/{TOKEN_FILE}")),
            ..Default::default()
        }),
        workload: Some(Box::new(WorkloadSpec {
            name: facts.name.clone(),
            namespace: Some(facts.namespace.clone()),
            service_account: Some(facts.service_account.clone()),
            labels: facts.labels.clone(),
            ports: facts.ports.clone(),
            readiness_probe: facts.readiness.clone(),
            ..Default::default()
        })),
        identity: Some(IdentitySpec {
            trust_domain: Some(settings.trust_domain.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let doc = json!({
        "apiVersion": "ringmesh.io/v1alpha1",
        "kind": "ProxyConfig",
        "metadata": {"name": facts.name, "namespace": facts.namespace},
        "spec": spec,
    });
    serde_yaml::to_string(&doc).map_err(|e| InjectError::Internal(format!("rendering the ProxyConfig: {e}")))
}
