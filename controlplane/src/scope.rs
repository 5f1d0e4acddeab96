//! Which resources a proxy sees: Istio's `exportTo` and `DestinationRule.workloadSelector`.
//!
//! This is how a team adopts the mesh one namespace or one workload at a time: a
//! `VirtualService`, `DestinationRule` or `ServiceEntry` with `exportTo: ["."]` reaches only
//! proxies of its own namespace, one with `exportTo: [team-a, team-b]` only those namespaces, and
//! a `DestinationRule` with `workloadSelector.matchLabels` only the workloads of its namespace
//! whose labels match. Without `exportTo` a resource is visible mesh-wide (Istio's default).
//! `AuthorizationPolicy`, `PeerAuthentication` and `Telemetry` go to the workloads of their own
//! namespace (of every namespace from `istio-system`, the root namespace) that their
//! `selector.matchLabels` selects; the proxy's compiler picks among them as Istio does. A
//! resource without `metadata.namespace` is in `default`, as is a proxy that announces none.
//!
//! Each resource set is scanned once ([`Scopes::of`]); picking one proxy's view is then a pass
//! over precomputed entries, cheap enough to run for every proxy on every push.

use std::collections::BTreeMap;

use ringmesh_api::proto::{Document, Workload};
use ringmesh_api::resources::ROOT_NAMESPACE;

const DEFAULT_NAMESPACE: &str = "default";

/// Where one document may go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    namespace: String,
    /// `None`: everywhere. Entries are namespaces, with `.` already replaced by `namespace`.
    export_to: Option<Vec<String>>,
    /// `DestinationRule.workloadSelector.matchLabels`, or a policy's `selector.matchLabels`.
    selector: Option<BTreeMap<String, String>>,
    /// A policy (security kinds, `Telemetry`): it applies to its own namespace only, or to
    /// every namespace from the root namespace.
    policy: bool,
}

impl Scope {
    fn of(yaml: &str) -> Scope {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap_or(serde_yaml::Value::Null);
        let namespace = v
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_string();
        let spec = v.get("spec");
        let export_to = spec
            .and_then(|s| s.get("exportTo"))
            .and_then(|e| e.as_sequence())
            .map(|seq| {
                seq.iter()
                    .filter_map(|x| x.as_str())
                    .map(|x| if x == "." { namespace.clone() } else { x.to_string() })
                    .collect::<Vec<_>>()
            });
        let export_to = export_to.filter(|e| !e.iter().any(|x| x == "*"));
        let kind = v.get("kind").and_then(|k| k.as_str());
        let policy = matches!(kind, Some("AuthorizationPolicy" | "PeerAuthentication" | "Telemetry"));
        let selector_field = match kind {
            Some("DestinationRule") => Some("workloadSelector"),
            _ if policy => Some("selector"),
            _ => None,
        };
        let selector = spec
            .zip(selector_field)
            .and_then(|(s, field)| s.get(field))
            .and_then(|w| w.get("matchLabels"))
            .and_then(|m| m.as_mapping())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), yaml_scalar(v)?)))
                    .collect::<BTreeMap<_, _>>()
            });
        Scope {
            namespace,
            export_to,
            selector,
            policy,
        }
    }

    fn admits(&self, namespace: &str, labels: &std::collections::HashMap<String, String>) -> bool {
        if let Some(e) = &self.export_to {
            if !e.iter().any(|n| n == namespace) {
                return false;
            }
        }
        // A policy in the root namespace selects in every namespace; elsewhere only in its own.
        let home = namespace == self.namespace || (self.policy && self.namespace == ROOT_NAMESPACE);
        match &self.selector {
            None => home || !self.policy,
            Some(sel) => home && sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }
}

fn yaml_scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The scopes of one resource set, in document order.
#[derive(Debug, Clone, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Scans `documents` once. A document that does not parse here is visible everywhere: the
    /// compiler, which runs on every view, reports it.
    pub fn of(documents: &[Document]) -> Scopes {
        Scopes(documents.iter().map(|d| Scope::of(&d.yaml)).collect())
    }

    /// Whether every document goes to every proxy (the common case: one view for all).
    pub fn is_mesh_wide(&self) -> bool {
        self.0
            .iter()
            .all(|s| s.export_to.is_none() && s.selector.is_none() && !s.policy)
    }

    /// Indices of the documents `workload`'s proxy sees.
    pub fn visible_to(&self, workload: &Workload) -> Vec<usize> {
        let ns = if workload.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            workload.namespace.as_str()
        };
        (0..self.0.len())
            .filter(|&i| self.0[i].admits(ns, &workload.labels))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Document {
        Document {
            source: "t.yaml:1".into(),
            yaml: yaml.into(),
        }
    }

    fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            namespace: ns.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Workload::default()
        }
    }

    #[test]
    fn export_to_and_workload_selector_pick_the_proxies() {
        let docs = [
            doc("kind: VirtualService\nmetadata: {name: open}\nspec: {hosts: [a]}\n"),
            doc("kind: VirtualService\nmetadata: {name: own, namespace: team-a}\nspec: {hosts: [b], exportTo: [.]}\n"),
            doc("kind: ServiceEntry\nmetadata: {name: two, namespace: x}\nspec: {exportTo: [team-a, team-b]}\n"),
            doc("kind: DestinationRule\nmetadata: {name: star, namespace: x}\nspec: {exportTo: ['*', .]}\n"),
            doc("kind: DestinationRule\nmetadata: {name: sel, namespace: team-a}\n\
                 spec: {host: b, workloadSelector: {matchLabels: {app: reviews, tier: 2}}}\n"),
        ];
        let s = Scopes::of(&docs);
        assert!(!s.is_mesh_wide());
        assert_eq!(
            s.visible_to(&workload("", &[])),
            vec![0, 3],
            "no namespace is `default`"
        );
        assert_eq!(
            s.visible_to(&workload("team-b", &[("app", "reviews"), ("tier", "2")])),
            vec![0, 2, 3]
        );
        assert_eq!(
            s.visible_to(&workload("team-a", &[("app", "reviews")])),
            vec![0, 1, 2, 3],
            "selector needs every label"
        );
        assert_eq!(
            s.visible_to(&workload(
                "team-a",
                &[("app", "reviews"), ("tier", "2"), ("extra", "x")]
            )),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn security_policies_reach_the_workloads_they_select() {
        let docs = [
            doc("kind: AuthorizationPolicy\nmetadata: {name: ns-wide, namespace: shop}\nspec: {action: DENY}\n"),
            doc("kind: PeerAuthentication\nmetadata: {name: one, namespace: shop}\n\
                 spec: {selector: {matchLabels: {app: cart}}, mtls: {mode: STRICT}}\n"),
            doc("kind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n"),
            doc("kind: AuthorizationPolicy\nmetadata: {name: root-sel, namespace: istio-system}\n\
                 spec: {selector: {matchLabels: {app: cart}}}\n"),
            doc("kind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\n\
                 spec: {accessLogging: [{providers: [{name: envoy}]}]}\n"),
            doc("kind: Telemetry\nmetadata: {name: ns, namespace: shop}\nspec: {tracing: [{randomSamplingPercentage: 10}]}\n"),
            doc("kind: Telemetry\nmetadata: {name: cart, namespace: shop}\n\
                 spec: {selector: {matchLabels: {app: cart}}, accessLogging: [{disabled: true}]}\n"),
        ];
        let s = Scopes::of(&docs);
        assert!(!s.is_mesh_wide());
        assert_eq!(
            s.visible_to(&workload("shop", &[("app", "cart")])),
            vec![0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(s.visible_to(&workload("shop", &[("app", "web")])), vec![0, 2, 4, 5]);
        assert_eq!(
            s.visible_to(&workload("blog", &[("app", "cart")])),
            vec![2, 3, 4],
            "another namespace gets only the root namespace's policies"
        );
        assert_eq!(
            s.visible_to(&workload("", &[])),
            vec![2, 4],
            "no namespace is `default`"
        );
    }

    #[test]
    fn plain_resources_are_mesh_wide() {
        let s = Scopes::of(&[
            doc("kind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a]}\n"),
            doc(": bad yaml ["),
        ]);
        assert!(s.is_mesh_wide());
        assert_eq!(s.visible_to(&workload("anything", &[])), vec![0, 1]);
    }
}
