//! Locality-aware balancing (Istio's `localityLbSetting`), computed per proxy: each cluster's
//! endpoints are grouped by where they run against where this proxy runs, once per compile, so
//! the data plane only chooses a group and then balances inside it.
//!
//! Localities are `region/zone/subzone`. An endpoint's comes from the Kubernetes topology labels
//! (`topology.kubernetes.io/region`, `topology.kubernetes.io/zone`, `topology.istio.io/subzone`)
//! or its `locality` field (folded into those labels when they are absent); the proxy's from its
//! workload's labels or `spec.workload.locality`.
//!
//! - **Failover** (Istio's default wherever `outlierDetection` is set, unless `enabled: false`):
//!   priority 0 is the proxy's own subzone, then its zone, then its region, then the region
//!   `failover` names for the proxy's region, then the rest. Traffic stays at the best level
//!   with healthy endpoints and spills over as Envoy does (overprovisioning factor 1.4). As in
//!   Istio, failover needs outlier detection: without it nothing would ever leave a level.
//! - **Failover priority** (`failoverPriority`, Istio's ordered label list, with outlier
//!   detection): an endpoint whose labels match the proxy's on all N labels is priority 0, on
//!   the first N−1 priority 1, and so on; one that differs on the first is priority N. A
//!   `key=value` entry compares with that value instead of the proxy's. It replaces the
//!   region-based levels above (and `failover` with them), as Istio's `applyPriorityFailover`.
//! - **Distribute**: the first rule whose `from` matches the proxy gives each `to` pattern its
//!   percent of traffic; an endpoint in no `to` pattern gets none.

use std::collections::BTreeMap;

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources::LocalityLbSetting;
use crate::snapshot::{Endpoint, LocalityPlan};

/// Kubernetes' region label.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Kubernetes' zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Istio's subzone label.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// Where something runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Locality {
    region: String,
    zone: String,
    subzone: String,
}

impl Locality {
    /// The locality the topology labels give; `None` without a region.
    pub(super) fn of_labels(labels: &BTreeMap<String, String>) -> Option<Locality> {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let l = Locality {
            region: get(REGION_LABEL),
            zone: get(ZONE_LABEL),
            subzone: get(SUBZONE_LABEL),
        };
        (!l.region.is_empty()).then_some(l)
    }

    /// Whether `pattern` (`region/zone/subzone`, a `*` part matching anything from there on,
    /// fewer parts matching every locality below them) takes this locality in, as Istio's
    /// `LocalityMatch`.
    fn matches(&self, pattern: &str) -> bool {
        for (want, have) in pattern.split('/').zip([&self.region, &self.zone, &self.subzone]) {
            if want == "*" {
                return true;
            }
            if want != have {
                return false;
            }
        }
        true
    }
}

/// Adds an Istio `locality` string's parts as topology labels where the labels do not say
/// them already. `Err` names what is wrong with it.
pub(super) fn fold_into_labels(locality: &str, labels: &mut BTreeMap<String, String>) -> Result<(), String> {
    let parts: Vec<&str> = locality.split('/').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty() || p.contains('*')) {
        return Err(format!(
            "locality must be region, region/zone or region/zone/subzone, got {locality:?}"
        ));
    }
    for (label, value) in [REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL].iter().zip(parts) {
        labels.entry((*label).to_owned()).or_insert_with(|| value.to_owned());
    }
    Ok(())
}

/// A checked `localityLbSetting`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LocalitySetting {
    enabled: bool,
    /// `(from, [(to, percent)])`, in the rule's order.
    distribute: Vec<(String, Vec<(String, u32)>)>,
    /// `(from region, to region)`.
    failover: Vec<(String, String)>,
    /// `(label, the value to compare with instead of the proxy's)`, in the rule's order.
    failover_priority: Vec<(String, Option<String>)>,
}

impl Default for LocalitySetting {
    /// Istio's mesh default: on, failover by locality wherever outlier detection is set.
    fn default() -> Self {
        LocalitySetting {
            enabled: true,
            distribute: Vec::new(),
            failover: Vec::new(),
            failover_priority: Vec::new(),
        }
    }
}

impl Compiler {
    /// Checks a `localityLbSetting`, each mistake named by its field.
    pub(super) fn locality_setting(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        s: &LocalityLbSetting,
    ) -> Option<LocalitySetting> {
        let mut ok = true;
        if !s.distribute.is_empty() && !s.failover.is_empty() {
            self.error(
                site,
                &p.key("failover"),
                "distribute and failover cannot both be set (as in Istio)",
            );
            return None;
        }
        if !s.distribute.is_empty() && !s.failover_priority.is_empty() {
            self.error(
                site,
                &p.key("failoverPriority"),
                "distribute and failoverPriority cannot both be set (as in Istio)",
            );
            return None;
        }
        if !s.failover.is_empty() && !s.failover_priority.is_empty() {
            self.warn(
                site,
                &p.key("failover"),
                "failover is not applied while failoverPriority is set: the labels decide the levels",
            );
        }
        let mut failover_priority = Vec::new();
        for (i, entry) in s.failover_priority.iter().enumerate() {
            let (key, value) = match entry.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
                None => (entry.trim(), None),
            };
            if key.is_empty() {
                self.error(
                    site,
                    &p.key("failoverPriority").index(i),
                    format!("a label key is required, as `key` or `key=value`, got {entry:?}"),
                );
                ok = false;
                continue;
            }
            failover_priority.push((key.to_owned(), value));
        }
        let mut distribute = Vec::new();
        for (i, d) in s.distribute.iter().enumerate() {
            let dp = p.key("distribute").index(i);
            if d.from.is_empty() {
                self.error(site, &dp.key("from"), "from is required");
                ok = false;
            }
            if d.to.is_empty() {
                self.error(site, &dp.key("to"), "to needs at least one locality");
                ok = false;
                continue;
            }
            let mut to = Vec::new();
            let mut sum = 0i64;
            for (locality, weight) in &d.to {
                match u32::try_from(*weight) {
                    Ok(w) if w <= 100 => to.push((locality.clone(), w)),
                    _ => {
                        self.error(
                            site,
                            &dp.key("to").key(locality),
                            format!("a weight must be between 0 and 100, got {weight}"),
                        );
                        ok = false;
                    }
                }
                sum += weight;
            }
            if sum != 100 {
                self.error(site, &dp.key("to"), format!("weights must sum to 100, got {sum}"));
                ok = false;
            }
            distribute.push((d.from.clone(), to));
        }
        let mut failover = Vec::new();
        for (i, f) in s.failover.iter().enumerate() {
            let fp = p.key("failover").index(i);
            if f.from.is_empty() || f.to.is_empty() {
                let field = if f.from.is_empty() { "from" } else { "to" };
                self.error(site, &fp.key(field), format!("{field} is required"));
                ok = false;
            } else if f.from == f.to {
                self.error(site, &fp.key("to"), "to must be another region than from");
                ok = false;
            } else if f.from.contains('/') || f.to.contains('/') {
                let field = if f.from.contains('/') { "from" } else { "to" };
                self.error(site, &fp.key(field), format!("{field} is a region, without zone"));
                ok = false;
            }
            failover.push((f.from.clone(), f.to.clone()));
        }
        ok.then_some(LocalitySetting {
            enabled: s.enabled.unwrap_or(true),
            distribute,
            failover,
            failover_priority,
        })
    }

    /// The plan for a cluster's endpoints from this proxy's locality: `None` when locality
    /// plays no part (off, the proxy's locality unknown, failover without outlier detection,
    /// or everything in one group).
    pub(super) fn locality_plan(
        &self,
        setting: Option<&LocalitySetting>,
        outlier_detection: bool,
        endpoints: &[Endpoint],
    ) -> Option<LocalityPlan> {
        let default = LocalitySetting::default();
        let setting = setting.unwrap_or(&default);
        if !setting.enabled || endpoints.is_empty() {
            return None;
        }
        if !setting.failover_priority.is_empty() {
            return self.priority_plan(&setting.failover_priority, outlier_detection, endpoints);
        }
        let me = self.locality.as_ref()?;
        let of = |e: &Endpoint| Locality::of_labels(&e.labels).unwrap_or_default();
        if !setting.distribute.is_empty() {
            let (_, to) = setting.distribute.iter().find(|(from, _)| me.matches(from))?;
            let mut groups: Vec<(u32, Vec<u32>)> = to.iter().map(|(_, w)| (*w, Vec::new())).collect();
            for (i, e) in endpoints.iter().enumerate() {
                let l = of(e);
                if let Some(k) = to.iter().position(|(pattern, _)| l.matches(pattern)) {
                    groups[k].1.push(i as u32);
                }
            }
            groups.retain(|(w, g)| *w > 0 && !g.is_empty());
            return Some(LocalityPlan::Distribute(groups));
        }
        if !outlier_detection {
            return None;
        }
        let failover_to = setting
            .failover
            .iter()
            .find(|(from, _)| *from == me.region)
            .map(|(_, to)| to.as_str());
        let mut levels: Vec<Vec<u32>> = vec![Vec::new(); 5];
        for (i, e) in endpoints.iter().enumerate() {
            let l = of(e);
            let level = match (l.region == me.region, l.zone == me.zone, l.subzone == me.subzone) {
                (true, true, true) => 0,
                (true, true, false) => 1,
                (true, false, _) => 2,
                (false, ..) if failover_to == Some(l.region.as_str()) => 3,
                (false, ..) => 4,
            };
            levels[level].push(i as u32);
        }
        levels.retain(|l| !l.is_empty());
        (levels.len() > 1).then_some(LocalityPlan::Failover(levels))
    }

    /// `failoverPriority`'s levels: an endpoint's level is N minus how many of the labels, in
    /// order, it shares with the proxy (a label both lack counts as shared, as in Istio). Only
    /// with outlier detection and a proxy with labels, as Istio applies it.
    fn priority_plan(
        &self,
        labels: &[(String, Option<String>)],
        outlier_detection: bool,
        endpoints: &[Endpoint],
    ) -> Option<LocalityPlan> {
        if !outlier_detection || self.proxy_labels.is_empty() {
            return None;
        }
        let n = labels.len();
        let mut levels: Vec<Vec<u32>> = vec![Vec::new(); n + 1];
        for (i, e) in endpoints.iter().enumerate() {
            let shared = labels
                .iter()
                .take_while(|(key, value)| {
                    let want = value
                        .as_deref()
                        .or_else(|| self.proxy_labels.get(key).map(String::as_str));
                    want.unwrap_or("") == e.labels.get(key).map_or("", String::as_str)
                })
                .count();
            levels[n - shared].push(i as u32);
        }
        levels.retain(|l| !l.is_empty());
        (levels.len() > 1).then_some(LocalityPlan::Failover(levels))
    }
}
