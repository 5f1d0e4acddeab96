//! Sidecar injection: one pure function from a pod (or a workload's pod template) to the pod
//! with ringmesh's sidecar, and the RFC 6902 JSON patch between the two. `ringmesh inject`
//! (offline, [`manifest`]) and the admission webhook ([`webhook`]) both call [`inject`], so a
//! pod gets the same sidecar either way.
//!
//! What a pod gets (Istio's layout, so Istio users find what they know):
//! * `ringmesh-init`, an init container running `ringmesh iptables` with the flags Istio's
//!   annotations ask for ([`annotations`]); root with `NET_ADMIN` and `NET_RAW` only.
//! * `ringmesh-proxy`, a Kubernetes native sidecar (an init container with `restartPolicy:
//!   Always`) right after it: kubelet starts the app containers once its `startupProbe`
//!   (`:15020/healthz/ready`) passes, and stops it after them. UID/GID 1337, read-only root,
//!   no capabilities.
//! * The app's `httpGet`/`tcpSocket` probes rewritten to the proxy's `:15020/app-health/…`
//!   ([`probes`]), the originals in the sidecar's `RINGMESH_KUBE_APP_PROBERS`.
//! * The proxy's `ProxyConfig` in the annotation `ringmesh.io/proxy-config`
//!   ([`proxy_config`]), mounted as a file by a `downwardAPI` volume; the mesh root from the
//!   ConfigMap `ringmesh-ca-root`; a projected service-account token as the proxy's credential
//!   (the control plane checks it with a TokenReview).
//! * `ringmesh.io/status` (what was injected), `prometheus.io/*` (15090, `/stats/prometheus`)
//!   unless the pod sets them, and the label `security.istio.io/tlsMode: istio`, which tells
//!   other proxies the endpoint is meshed.
//!
//! Injecting a pod that already has our sidecar returns it unchanged with an empty patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Map, Value};

pub mod annotations;
pub mod manifest;
pub mod policy;
pub mod probes;
pub mod proxy_config;
pub mod settings;
pub mod webhook;

pub use settings::{InjectSettings, ProxyResources};

use annotations::{Annotations, REWRITE_PROBES};
use proxy_config::WorkloadFacts;

/// What was injected (JSON, like Istio's `sidecar.istio.io/status`); its presence makes
/// injection a no-op.
pub const STATUS_ANNOTATION: &str = "ringmesh.io/status";
/// The proxy's `ProxyConfig` (YAML), which the sidecar reads as a file.
pub const PROXY_CONFIG_ANNOTATION: &str = "ringmesh.io/proxy-config";
/// The capture init container.
pub const INIT_CONTAINER: &str = "ringmesh-init";
/// The sidecar.
pub const PROXY_CONTAINER: &str = "ringmesh-proxy";
/// The label that marks a meshed endpoint (Istio's).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// The sidecar's environment variable with the app's original probes.
pub const APP_PROBERS_ENV: &str = "RINGMESH_KUBE_APP_PROBERS";
/// Volumes the injector adds.
pub const VOLUMES: [&str; 3] = ["ringmesh-config", "ringmesh-token", "ringmesh-ca-root"];

/// Why a pod could not be injected; the message names the field or annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The pod (template) is not shaped as Kubernetes says.
    #[error("{field}: {reason}")]
    Field {
        /// A JSON path, e.g. `spec.containers`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// An annotation asks for something the injector cannot do.
    #[error("annotation {name}: {reason}")]
    Annotation {
        /// The annotation.
        name: String,
        /// Why.
        reason: String,
    },
    /// A failure of the injector itself.
    #[error("{0}")]
    Internal(String),
}

fn field(field: &str, reason: impl Into<String>) -> InjectError {
    InjectError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Who the pod is, beyond what its own object says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodContext {
    /// The namespace the pod is created in (the admission request's, or the manifest's).
    pub namespace: String,
    /// The owning workload's name (a Deployment's, when its template is injected offline).
    pub owner_name: Option<String>,
}

/// The injected pod and the patch that makes it from the original.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// The pod with the sidecar.
    pub pod: Value,
    /// RFC 6902 operations from the original to [`Injected::pod`] (empty: nothing changed).
    pub patch: json_patch::Patch,
}

/// Injects the sidecar into `pod` (a Pod, or a pod template: `metadata` and `spec`). Whether
/// the pod *should* get one is [`policy`]'s call; this only refuses what cannot be done.
pub fn inject(pod: &Value, ctx: &PodContext, settings: &InjectSettings) -> Result<Injected, InjectError> {
    if !pod.is_object() {
        return Err(field("(pod)", "not an object"));
    }
    if policy::offline(pod) == policy::Decision::Skip(policy::SkipReason::AlreadyInjected) {
        return Ok(Injected {
            pod: pod.clone(),
            patch: json_patch::Patch(Vec::new()),
        });
    }
    let mut out = pod.clone();
    check_shape(&out)?;
    let annotations_before = Annotations(pod.pointer("/metadata/annotations").and_then(Value::as_object));
    let capture_args = annotations_before.capture_args(settings)?;
    let resources = annotations_before.resources(&settings.resources)?;
    let workers = annotations_before.proxy_workers(settings.proxy_workers)?;
    let rewrite = !annotations_before.is_false(REWRITE_PROBES);

    // The app's probes.
    let mut probers = Map::new();
    let mut readiness = None;
    let mut ports = BTreeMap::new();
    let containers = out
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| field("spec.containers", "missing"))?;
    for c in containers.iter_mut() {
        let Some(c) = c.as_object_mut() else { continue };
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(name), Some(number)) = (
                p.get("name").and_then(Value::as_str),
                p.get("containerPort").and_then(Value::as_i64),
            ) {
                ports.entry(name.to_string()).or_insert(number);
            }
        }
        if rewrite {
            let r = probes::rewrite_container(c, &mut probers);
            readiness = readiness.or(r);
        }
    }

    // Metadata: the label first, so the announced workload carries it too.
    let meta = object_at(&mut out, "metadata")?;
    let labels = object_in(meta, "labels", "metadata.labels")?;
    labels.insert(TLS_MODE_LABEL.into(), json!("istio"));
    let labels: BTreeMap<String, String> = labels
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let facts = WorkloadFacts {
        name: workload_name(pod, &labels, ctx),
        namespace: ctx.namespace.clone(),
        service_account: pod
            .pointer("/spec/serviceAccountName")
            .or_else(|| pod.pointer("/spec/serviceAccount"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string(),
        labels,
        ports,
        readiness,
    };
    let config = proxy_config::render(&facts, settings)?;

    let init = init_container(settings, capture_args);
    let proxy = proxy_container(settings, resources, workers, &probers)?;
    let volumes = volumes(settings);
    let status = json!({
        "initContainers": [INIT_CONTAINER, PROXY_CONTAINER],
        "containers": [],
        "volumes": VOLUMES,
        "version": env!("CARGO_PKG_VERSION"),
    });

    let meta = object_at(&mut out, "metadata")?;
    let annotations = object_in(meta, "annotations", "metadata.annotations")?;
    annotations.insert(STATUS_ANNOTATION.into(), json!(status.to_string()));
    annotations.insert(PROXY_CONFIG_ANNOTATION.into(), json!(config));
    for (k, v) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "15090"),
        ("prometheus.io/path", "/stats/prometheus"),
    ] {
        annotations.entry(k).or_insert_with(|| json!(v));
    }

    let spec = object_at(&mut out, "spec")?;
    let inits = array_in(spec, "initContainers", "spec.initContainers")?;
    inits.insert(0, to_value(&proxy)?);
    inits.insert(0, to_value(&init)?);
    let vols = array_in(spec, "volumes", "spec.volumes")?;
    for v in &volumes {
        vols.push(to_value(v)?);
    }
    let patch = json_patch::diff(pod, &out);
    Ok(Injected { pod: out, patch })
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, InjectError> {
    serde_json::to_value(v).map_err(|e| InjectError::Internal(e.to_string()))
}

/// The fields the injector reads or writes must have Kubernetes' types: a pod whose
/// `containers` is not a list is refused by name rather than half-injected.
fn check_shape(pod: &Value) -> Result<(), InjectError> {
    for (path, name) in [("/metadata", "metadata"), ("/spec", "spec")] {
        match pod.pointer(path) {
            None | Some(Value::Object(_)) => {}
            Some(_) => return Err(field(name, "not an object")),
        }
    }
    let containers = pod
        .pointer("/spec/containers")
        .ok_or_else(|| field("spec.containers", "missing"))?
        .as_array()
        .ok_or_else(|| field("spec.containers", "not a list"))?;
    if containers.is_empty() {
        return Err(field("spec.containers", "empty"));
    }
    for (i, c) in containers.iter().enumerate() {
        if c.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(field(&format!("spec.containers[{i}].name"), "missing"));
        }
        if c.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n == INIT_CONTAINER || n == PROXY_CONTAINER)
        {
            return Err(field(
                &format!("spec.containers[{i}].name"),
                "reserved for the injected sidecar",
            ));
        }
    }
    for (path, name) in [
        ("/spec/initContainers", "spec.initContainers"),
        ("/spec/volumes", "spec.volumes"),
    ] {
        match pod.pointer(path) {
            None | Some(Value::Array(_)) | Some(Value::Null) => {}
            Some(_) => return Err(field(name, "not a list")),
        }
    }
    for (path, name) in [
        ("/metadata/labels", "metadata.labels"),
        ("/metadata/annotations", "metadata.annotations"),
    ] {
        match pod.pointer(path) {
            None | Some(Value::Object(_)) | Some(Value::Null) => {}
            Some(_) => return Err(field(name, "not a map")),
        }
    }
    let ours = |list: &str| {
        pod.pointer(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|v| {
                v.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| VOLUMES.contains(&n))
            })
    };
    if ours("/spec/volumes") {
        return Err(field(
            "spec.volumes",
            "a volume's name is reserved for the injected sidecar",
        ));
    }
    Ok(())
}

fn object_at<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, InjectError> {
    let obj = v.as_object_mut().ok_or_else(|| field("(pod)", "not an object"))?;
    object_in(obj, key, key)
}

fn object_in<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
    name: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let slot = obj.entry(key).or_insert_with(|| json!({}));
    if slot.is_null() {
        *slot = json!({});
    }
    slot.as_object_mut().ok_or_else(|| field(name, "not a map"))
}

fn array_in<'a>(obj: &'a mut Map<String, Value>, key: &str, name: &str) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = obj.entry(key).or_insert_with(|| json!([]));
    if slot.is_null() {
        *slot = json!([]);
    }
    slot.as_array_mut().ok_or_else(|| field(name, "not a list"))
}

/// The workload's name as Istio picks it: `app.kubernetes.io/name`, `app`, the owner, the pod.
fn workload_name(pod: &Value, labels: &BTreeMap<String, String>, ctx: &PodContext) -> String {
    let from_pod = || {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        name.map(str::to_string).or_else(|| {
            // A ReplicaSet's pods: `<deployment>-<hash>-`.
            let generate = pod.pointer("/metadata/generateName").and_then(Value::as_str)?;
            let trimmed = generate.trim_end_matches('-');
            let base = match trimmed.rsplit_once('-') {
                Some((base, hash)) if !base.is_empty() && hash.bytes().all(|b| b.is_ascii_alphanumeric()) => base,
                _ => trimmed,
            };
            Some(base.to_string()).filter(|s| !s.is_empty())
        })
    };
    labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
        .cloned()
        .or_else(|| ctx.owner_name.clone())
        .or_else(from_pod)
        .unwrap_or_else(|| "workload".into())
}

fn quantities(pairs: [(&str, &Option<String>); 2]) -> Option<BTreeMap<String, Quantity>> {
    let m: BTreeMap<String, Quantity> = pairs
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), Quantity(v.clone()?))))
        .collect();
    (!m.is_empty()).then_some(m)
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn health_probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz/ready".into()),
            port: IntOrString::Int(probes::HEALTH_PORT as i32),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// `ringmesh-init`: the capture rules, then done. iptables needs root and `NET_ADMIN` (and
/// `NET_RAW` for the legacy back-end's raw sockets); nothing else.
fn init_container(settings: &InjectSettings, args: Vec<String>) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(settings.init_image.clone()),
        command: Some(vec!["ringmesh".into(), "iptables".into()]),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: quantities([("cpu", &Some("10m".into())), ("memory", &Some("16Mi".into()))]),
            limits: quantities([("cpu", &Some("100m".into())), ("memory", &Some("64Mi".into()))]),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `ringmesh-proxy`, the native sidecar.
fn proxy_container(
    settings: &InjectSettings,
    resources: ProxyResources,
    workers: Option<u32>,
    probers: &Map<String, Value>,
) -> Result<Container, InjectError> {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("RINGMESH_WORKLOAD_ADDRESS", "status.podIPs"),
        EnvVar {
            name: "RINGMESH_NODE_ID".into(),
            value: Some("$(POD_NAME).$(POD_NAMESPACE)".into()),
            ..Default::default()
        },
    ];
    if let Some(n) = workers {
        env.push(EnvVar {
            name: "RINGMESH_WORKERS".into(),
            value: Some(n.to_string()),
            ..Default::default()
        });
    }
    if !probers.is_empty() {
        env.push(EnvVar {
            name: APP_PROBERS_ENV.into(),
            value: Some(serde_json::to_string(probers).map_err(|e| InjectError::Internal(e.to_string()))?),
            ..Default::default()
        });
    }
    let uid = settings.proxy_uid;
    Ok(Container {
        name: PROXY_CONTAINER.into(),
        image: Some(settings.proxy_image.clone()),
        args: Some(vec![
            "--config".into(),
            format!("{}/{}", proxy_config::CONFIG_DIR, proxy_config::CONFIG_FILE),
        ]),
        restart_policy: Some("Always".into()),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("http-envoy-prom".into()),
                container_port: 15090,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http-health".into()),
                container_port: probes::HEALTH_PORT as i32,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        // Every second for up to ten minutes: the app starts as soon as the proxy holds its
        // first config (and, under STRICT mTLS, its certificate).
        startup_probe: Some(health_probe(1, 600)),
        readiness_probe: Some(health_probe(2, 30)),
        resources: Some(ResourceRequirements {
            requests: quantities([("cpu", &resources.cpu_request), ("memory", &resources.memory_request)]),
            limits: quantities([("cpu", &resources.cpu_limit), ("memory", &resources.memory_limit)]),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: VOLUMES[0].into(),
                mount_path: proxy_config::CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: VOLUMES[1].into(),
                mount_path: proxy_config::TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: VOLUMES[2].into(),
                mount_path: proxy_config::CA_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    })
}

fn volumes(settings: &InjectSettings) -> [Volume; 3] {
    [
        Volume {
            name: VOLUMES[0].into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: proxy_config::CONFIG_FILE.into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{PROXY_CONFIG_ANNOTATION}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUMES[1].into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: settings.token_audience.clone(),
                        expiration_seconds: Some(3600),
                        path: proxy_config::TOKEN_FILE.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUMES[2].into(),
            config_map: Some(ConfigMapVolumeSource {
                name: settings.ca_root_config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: proxy_config::CA_FILE.into(),
                    path: proxy_config::CA_FILE.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests;
