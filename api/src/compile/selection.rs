//! Which namespace-scoped policies apply to the workload next to the proxy
//! (`ProxyConfig.spec.workload`: its namespace and labels), as Istio picks them.
//!
//! `PeerAuthentication` and `Telemetry` go by levels ([`Compiler::levels`]): the mesh's (the
//! root namespace, no selector), the namespace's (the workload's namespace, no selector) and the
//! workload's own (its namespace, a `selector.matchLabels` its labels carry). One policy per
//! level counts; Istio takes the oldest, which files cannot say, so here it is the first in
//! input order and the others are warned about. `AuthorizationPolicy`s all apply together, but
//! select with the same [`selector_matches`].

use std::collections::BTreeMap;

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources::{
    AuthorizationPolicy, PeerAuthentication, ResourceMeta, Telemetry, WorkloadSelector, ROOT_NAMESPACE,
};
use crate::snapshot::WorkloadSettings;

/// A policy kind that selects workloads with `spec.selector.matchLabels`.
pub(super) trait Selecting: ResourceMeta {
    /// `spec.selector`.
    fn selector(&self) -> Option<&WorkloadSelector>;
}

impl Selecting for AuthorizationPolicy {
    fn selector(&self) -> Option<&WorkloadSelector> {
        self.spec.selector.as_ref()
    }
}

impl Selecting for PeerAuthentication {
    fn selector(&self) -> Option<&WorkloadSelector> {
        self.spec.selector.as_ref()
    }
}

impl Selecting for Telemetry {
    fn selector(&self) -> Option<&WorkloadSelector> {
        self.spec.selector.as_ref()
    }
}

/// A policy's selector as Istio reads it: absent or empty selects every workload in scope.
pub(super) fn selector_matches(selector: Option<&WorkloadSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether the policy selects workloads (an empty `matchLabels` selects none in particular).
pub(super) fn has_selector(selector: Option<&WorkloadSelector>) -> bool {
    selector.is_some_and(|s| !s.match_labels.is_empty())
}

/// `PeerAuthentications`, `Telemetries`.
fn plural(kind: &str) -> String {
    match kind.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{kind}s"),
    }
}

/// The policy of each level that applies to one workload; any level may have none.
#[derive(Debug)]
pub(super) struct Levels<'a, P> {
    /// The root namespace's, without a selector. `None` for a workload of the root namespace,
    /// whose own namespace level is that one.
    pub(super) mesh: Option<&'a P>,
    /// The workload's namespace's, without a selector.
    pub(super) namespace: Option<&'a P>,
    /// The workload's own: its namespace, a selector that matches.
    pub(super) workload: Option<&'a P>,
}

impl<'a, P> Levels<'a, P> {
    /// Mesh, namespace, workload: the order in which each overrides the one before.
    pub(super) fn in_order(&self) -> impl Iterator<Item = &'a P> {
        [self.mesh, self.namespace, self.workload].into_iter().flatten()
    }
}

impl Compiler {
    /// The policies of `all` that apply to `w`, one per level.
    pub(super) fn levels<'a, P: Selecting>(&mut self, all: &[&'a P], w: &WorkloadSettings) -> Levels<'a, P> {
        let workload_level = all.iter().copied().filter(|p| {
            p.namespace() == w.namespace && has_selector(p.selector()) && selector_matches(p.selector(), &w.labels)
        });
        let namespace_level = all
            .iter()
            .copied()
            .filter(|p| p.namespace() == w.namespace && !has_selector(p.selector()));
        let mesh_level = all
            .iter()
            .copied()
            .filter(|p| p.namespace() == ROOT_NAMESPACE && !has_selector(p.selector()));
        Levels {
            workload: self.first_of(workload_level, "workload"),
            namespace: self.first_of(namespace_level, "namespace"),
            mesh: if w.namespace == ROOT_NAMESPACE {
                None
            } else {
                self.first_of(mesh_level, "mesh")
            },
        }
    }

    /// The first policy of a level; the others are warned about, each naming the one used.
    fn first_of<'a, P: ResourceMeta>(&mut self, mut level: impl Iterator<Item = &'a P>, name: &str) -> Option<&'a P> {
        let first = level.next()?;
        for other in level {
            self.warn(
                other,
                &FieldPath::root(),
                format!(
                    "several {name}-level {} apply to this workload; {} is used and this one is \
                     ignored (Istio keeps the oldest; here, the first in input order)",
                    plural(other.kind()),
                    first.source()
                ),
            );
        }
        Some(first)
    }

    /// `selector.matchLabels` names that are not label names.
    pub(super) fn selector_labels(&mut self, site: &Site<'_>, path: &FieldPath, labels: &BTreeMap<String, String>) {
        for key in labels.keys() {
            if key.is_empty() || key.contains(char::is_whitespace) {
                self.error(
                    site,
                    &path.key("matchLabels"),
                    format!("label name {key:?} is not valid"),
                );
            }
        }
    }
}
