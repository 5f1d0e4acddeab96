//! Which pods get a sidecar: gradual adoption by namespace label, opt-in and opt-out per pod,
//! as Istio decides it.
//!
//! * Never: the pod's label or annotation `sidecar.istio.io/inject: "false"`; `hostNetwork:
//!   true` (capture would rewrite the node's own rules); a pod already injected (by us: a no-op,
//!   so injecting twice changes nothing; by Istio: two sidecars would capture each other).
//! * The webhook: the namespace's `ringmesh-injection` label decides when it is set (`enabled`
//!   or `disabled`); otherwise Istio's `istio-injection`. In a namespace neither enables nor
//!   disables, the pod's label `sidecar.istio.io/inject: "true"` opts it in.
//! * `ringmesh inject` (offline, as `istioctl kube-inject`): whatever it is given, unless
//!   opted out.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::annotations::{Annotations, INJECT, ISTIO_STATUS};
use super::{PROXY_CONTAINER, STATUS_ANNOTATION};

/// ringmesh's namespace label.
pub const NAMESPACE_LABEL: &str = "ringmesh-injection";
/// Istio's namespace label, honoured too so Istio users' namespaces work unchanged.
pub const ISTIO_NAMESPACE_LABEL: &str = "istio-injection";

/// Whether a pod gets a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Inject.
    Inject,
    /// Leave the pod as it is.
    Skip(SkipReason),
}

/// Why a pod is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `sidecar.istio.io/inject: "false"` as a label or annotation.
    OptedOut,
    /// `hostNetwork: true`.
    HostNetwork,
    /// Already carries our sidecar.
    AlreadyInjected,
    /// Carries Istio's sidecar.
    IstioSidecar,
    /// The namespace's label says `disabled`.
    NamespaceDisabled,
    /// Neither the namespace nor the pod asked for a sidecar.
    NotEnabled,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::OptedOut => "sidecar.istio.io/inject is \"false\"",
            SkipReason::HostNetwork => "the pod uses the host's network",
            SkipReason::AlreadyInjected => "already injected",
            SkipReason::IstioSidecar => "Istio's sidecar is already injected",
            SkipReason::NamespaceDisabled => "the namespace's injection label says disabled",
            SkipReason::NotEnabled => "neither the namespace nor the pod enables injection",
        })
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// What holds for every pod whoever asks: opt-out, host network, already injected.
fn never(pod: &Value) -> Option<SkipReason> {
    let meta = pod.get("metadata");
    let annotations = Annotations(meta.and_then(|m| m.get("annotations")).and_then(Value::as_object));
    let label_false = str_at(pod, &["metadata", "labels", INJECT]).is_some_and(|v| v.eq_ignore_ascii_case("false"));
    if annotations.is_false(INJECT) || label_false {
        return Some(SkipReason::OptedOut);
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Some(SkipReason::HostNetwork);
    }
    let named = |list: &str, name: &str| {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(name)))
    };
    if annotations.get(STATUS_ANNOTATION).is_some() || named("initContainers", PROXY_CONTAINER) {
        return Some(SkipReason::AlreadyInjected);
    }
    if annotations.get(ISTIO_STATUS).is_some()
        || named("containers", "istio-proxy")
        || named("initContainers", "istio-proxy")
    {
        return Some(SkipReason::IstioSidecar);
    }
    None
}

/// The offline decision (`ringmesh inject`): inject unless the pod rules it out.
pub fn offline(pod: &Value) -> Decision {
    match never(pod) {
        Some(r) => Decision::Skip(r),
        None => Decision::Inject,
    }
}

/// The webhook's decision for a pod created in a namespace with these labels.
pub fn admission(namespace_labels: &BTreeMap<String, String>, pod: &Value) -> Decision {
    if let Some(r) = never(pod) {
        return Decision::Skip(r);
    }
    let label = namespace_labels
        .get(NAMESPACE_LABEL)
        .or_else(|| namespace_labels.get(ISTIO_NAMESPACE_LABEL))
        .map(String::as_str);
    match label {
        Some("enabled") => Decision::Inject,
        Some("disabled") => Decision::Skip(SkipReason::NamespaceDisabled),
        _ if str_at(pod, &["metadata", "labels", INJECT]).is_some_and(|v| v.eq_ignore_ascii_case("true")) => {
            Decision::Inject
        }
        _ => Decision::Skip(SkipReason::NotEnabled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(meta: Value, spec: Value) -> Value {
        json!({"metadata": meta, "spec": spec})
    }

    #[test]
    fn namespace_labels_enable_and_disable() {
        let p = pod(json!({}), json!({"containers": [{"name": "a"}]}));
        assert_eq!(
            admission(&ns(&[("ringmesh-injection", "enabled")]), &p),
            Decision::Inject
        );
        assert_eq!(admission(&ns(&[("istio-injection", "enabled")]), &p), Decision::Inject);
        assert_eq!(
            admission(
                &ns(&[("ringmesh-injection", "disabled"), ("istio-injection", "enabled")]),
                &p
            ),
            Decision::Skip(SkipReason::NamespaceDisabled),
            "ours decides when set"
        );
        assert_eq!(admission(&ns(&[]), &p), Decision::Skip(SkipReason::NotEnabled));
        assert_eq!(offline(&p), Decision::Inject);
    }

    #[test]
    fn pods_opt_in_and_out() {
        let opted_in = pod(json!({"labels": {"sidecar.istio.io/inject": "true"}}), json!({}));
        assert_eq!(admission(&ns(&[]), &opted_in), Decision::Inject);
        assert_eq!(
            admission(&ns(&[("istio-injection", "disabled")]), &opted_in),
            Decision::Skip(SkipReason::NamespaceDisabled)
        );
        let enabled = ns(&[("ringmesh-injection", "enabled")]);
        for out in [
            pod(json!({"annotations": {"sidecar.istio.io/inject": "false"}}), json!({})),
            pod(json!({"labels": {"sidecar.istio.io/inject": "false"}}), json!({})),
        ] {
            assert_eq!(admission(&enabled, &out), Decision::Skip(SkipReason::OptedOut));
            assert_eq!(offline(&out), Decision::Skip(SkipReason::OptedOut));
        }
        let host = pod(json!({}), json!({"hostNetwork": true}));
        assert_eq!(admission(&enabled, &host), Decision::Skip(SkipReason::HostNetwork));
        let istio = pod(json!({"annotations": {"sidecar.istio.io/status": "{}"}}), json!({}));
        assert_eq!(offline(&istio), Decision::Skip(SkipReason::IstioSidecar));
    }
}
