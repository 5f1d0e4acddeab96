//! Endpoints kept across a control-plane restart (control thread, one discovery session at a
//! time).
//!
//! Endpoints are soft state announced by proxies: a control plane that just started knows only
//! the workloads whose proxies have reconnected so far, and proxies reconnect in whatever order
//! their back-off brings them. Its snapshots say so (`registry_warming`) until its grace period
//! after start has passed. While they do, this proxy keeps the endpoints it held when the
//! session began that the snapshot does not list — labels and weight included, so subsets keep
//! their members — and compiles the union. The first snapshot from a warm registry is taken as
//! it is: what it does not list is gone.
//!
//! Why the base is fixed when the session begins: an endpoint first heard of from the warming
//! registry is known to it, so when it leaves the registry it leaves here too; only endpoints
//! the registry may not have heard of yet are kept. A restart during the warm-up begins a new
//! session whose base holds what was kept, so two restarts in a row lose nothing either.
//! Limit: an endpoint held before the restart and withdrawn during the warm-up (its app went
//! unready, or it came back on other ports) is still served until the warm-up ends.

use std::collections::{BTreeMap, HashSet};

use ringmesh_api::delta::{key_of, Key};
use ringmesh_api::proto::Endpoint;

/// What the proxy serves from the control plane's endpoints, and what it keeps while the
/// control plane's registry is warming.
#[derive(Debug, Default)]
pub(crate) struct HeldEndpoints {
    /// The endpoints of the config last applied (from any session).
    applied: Vec<Endpoint>,
    /// The endpoints applied when the current session began, by key.
    base: BTreeMap<Key, Endpoint>,
}

impl HeldEndpoints {
    /// A new session with a control plane begins: what is held now is what a warming registry
    /// may not know yet.
    pub(crate) fn session_began(&mut self) {
        self.base = self.applied.iter().map(|e| (key_of(e), e.clone())).collect();
    }

    /// The endpoints to compile for a snapshot that lists `listed`, and how many of them were
    /// kept from before because the snapshot came from a warming registry.
    pub(crate) fn resolve(&self, listed: Vec<Endpoint>, registry_warming: bool) -> (Vec<Endpoint>, usize) {
        if !registry_warming || self.base.is_empty() {
            return (listed, 0);
        }
        let listed_keys: HashSet<Key> = listed.iter().map(key_of).collect();
        let mut out = listed;
        let before = out.len();
        out.extend(
            self.base
                .iter()
                .filter(|(k, _)| !listed_keys.contains(*k))
                .map(|(_, e)| e.clone()),
        );
        let kept = out.len() - before;
        (out, kept)
    }

    /// The config holding `endpoints` was applied.
    pub(crate) fn applied(&mut self, endpoints: Vec<Endpoint>) {
        self.applied = endpoints;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(address: &str, version: &str) -> Endpoint {
        Endpoint {
            host: "reviews.local".into(),
            address: address.into(),
            ports: [("http".to_string(), 9080)].into_iter().collect(),
            labels: [("version".to_string(), version.to_string())].into_iter().collect(),
            weight: 1,
        }
    }

    fn addresses(eps: &[Endpoint]) -> Vec<&str> {
        let mut a: Vec<&str> = eps.iter().map(|e| e.address.as_str()).collect();
        a.sort();
        a
    }

    #[test]
    fn a_warming_registry_adds_to_what_was_held_and_a_warm_one_replaces_it() {
        let mut held = HeldEndpoints::default();
        held.session_began();
        // A first session: nothing held, nothing kept.
        let (eps, kept) = held.resolve(vec![ep("10.0.0.1", "v1"), ep("10.0.0.2", "v2")], true);
        assert_eq!(kept, 0);
        held.applied(eps);

        // The control plane restarted; only v1 came back so far. v2 is kept, labels and all.
        held.session_began();
        let (eps, kept) = held.resolve(vec![ep("10.0.0.1", "v1")], true);
        assert_eq!((addresses(&eps), kept), (vec!["10.0.0.1", "10.0.0.2"], 1));
        assert_eq!(eps[1].labels["version"], "v2");
        // Nobody came back yet: everything is kept.
        let (eps, kept) = held.resolve(vec![], true);
        assert_eq!((addresses(&eps), kept), (vec!["10.0.0.1", "10.0.0.2"], 2));
        held.applied(eps);

        // A second restart during the warm-up starts from what was served, kept ones included.
        held.session_began();
        let (eps, _) = held.resolve(vec![ep("10.0.0.3", "v3")], true);
        assert_eq!(addresses(&eps), vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        held.applied(eps);

        // Warm: what the registry does not list is gone.
        let (eps, kept) = held.resolve(vec![ep("10.0.0.3", "v3")], false);
        assert_eq!((addresses(&eps), kept), (vec!["10.0.0.3"], 0));
    }

    #[test]
    fn a_listed_endpoint_wins_over_the_held_one_with_its_key() {
        let mut held = HeldEndpoints::default();
        held.applied(vec![ep("10.0.0.1", "v1")]);
        held.session_began();
        let (eps, kept) = held.resolve(vec![ep("10.0.0.1", "v9")], true);
        assert_eq!((eps.len(), kept), (1, 0));
        assert_eq!(eps[0].labels["version"], "v9");
    }
}
