//! Locality-aware picks (`Cluster::locality`, computed by the compiler for this proxy): choose
//! the group of endpoints first, then balance inside it with the cluster's policy.
//!
//! Failover follows Envoy's priority load: each level takes `min(100, 1.4 × healthy share)`
//! percent of what the levels before it left (the overprovisioning factor 1.4 keeps a level
//! that lost a few endpoints whole), and the rest spills to the next. Health is only read when
//! the cluster is filtering (something is out and it is not in panic mode): otherwise every
//! request stays in the first level at the cost of one branch. Distribute groups take their
//! percent among the groups that have a healthy endpoint.

use ringmesh_api::snapshot::{Cluster, LbPolicy, LocalityPlan};

use super::ClusterState;
use crate::rng::FastRng;

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;

/// Levels looked at, at most (the compiler makes five at most).
const MAX_LEVELS: usize = 8;

/// An endpoint of the group the plan chooses for this request, balanced by the cluster's
/// policy inside it; `None` when no group has a healthy endpoint (the caller's plain pick then
/// decides, with its own handling of unhealthy endpoints and panic mode).
pub(crate) fn pick(cluster: &Cluster, state: &ClusterState, rng: &FastRng, plan: &LocalityPlan) -> Option<usize> {
    let filtering = state.filtering();
    let healthy = |group: &[u32]| -> u64 {
        if filtering {
            group
                .iter()
                .filter(|&&i| !state.endpoint_health.get(i as usize).is_some_and(|h| h.is_out()))
                .count() as u64
        } else {
            group.len() as u64
        }
    };
    let group: &[u32] = match plan {
        LocalityPlan::Failover(levels) => {
            if !filtering {
                levels.first()?
            } else {
                let mut load = [0u64; MAX_LEVELS];
                let mut left = 100u64;
                for (k, level) in levels.iter().take(MAX_LEVELS).enumerate() {
                    let health = (OVERPROVISIONING * healthy(level) / level.len().max(1) as u64).min(100);
                    load[k] = health.min(left);
                    left -= load[k];
                }
                choose(&load[..levels.len().min(MAX_LEVELS)], rng).map(|k| levels[k].as_slice())?
            }
        }
        LocalityPlan::Distribute(groups) => {
            let mut load = [0u64; MAX_LEVELS];
            for (k, (weight, group)) in groups.iter().take(MAX_LEVELS).enumerate() {
                load[k] = if healthy(group) > 0 { u64::from(*weight) } else { 0 };
            }
            choose(&load[..groups.len().min(MAX_LEVELS)], rng).map(|k| groups[k].1.as_slice())?
        }
    };
    within(cluster, state, rng, group, filtering)
}

/// The first endpoint `usable` takes in the best group (failover levels in order; distribute
/// groups by falling weight), for a retry that must leave the endpoints it tried.
pub(crate) fn nearest_untried(plan: &LocalityPlan, usable: impl Fn(usize) -> bool) -> Option<usize> {
    let find = |group: &[u32]| group.iter().map(|&i| i as usize).find(|&i| usable(i));
    match plan {
        LocalityPlan::Failover(levels) => levels.iter().find_map(|l| find(l)),
        LocalityPlan::Distribute(groups) => {
            let mut by_weight: Vec<&(u32, Vec<u32>)> = groups.iter().collect();
            by_weight.sort_by_key(|g| std::cmp::Reverse(g.0));
            by_weight.into_iter().find_map(|(_, g)| find(g))
        }
    }
}

/// Index of a weight chosen in proportion to it; `None` when all are zero.
fn choose(weights: &[u64], rng: &FastRng) -> Option<usize> {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.next_u64() % total;
    for (k, w) in weights.iter().enumerate() {
        if point < *w {
            return Some(k);
        }
        point -= w;
    }
    None
}

/// One endpoint of `group` by the cluster's policy, skipping unhealthy ones while the cluster
/// filters: round robin on the cluster's cursor, power of two choices on in-flight requests,
/// or random. Weights of endpoints inside a group are not used (documented).
fn within(cluster: &Cluster, state: &ClusterState, rng: &FastRng, group: &[u32], filtering: bool) -> Option<usize> {
    let n = group.len();
    let at = |k: usize| group[k] as usize;
    let ok = |k: usize| !filtering || !state.endpoint_health.get(at(k)).is_some_and(|h| h.is_out());
    // A random healthy member: a few draws, then the first healthy one after the last draw.
    let random = || -> Option<usize> {
        let mut k = 0;
        for _ in 0..4 {
            k = rng.below(n as u32) as usize;
            if ok(k) {
                return Some(k);
            }
        }
        (1..n).map(|d| (k + d) % n).find(|&k| ok(k))
    };
    if n == 0 {
        return None;
    }
    let k = match cluster.lb {
        LbPolicy::RoundRobin => {
            let start = state.cursor.get();
            let k = (0..n).map(|d| start.wrapping_add(d) % n).find(|&k| ok(k))?;
            state.cursor.set(start.wrapping_add(1));
            k
        }
        LbPolicy::LeastRequest if n > 1 => {
            let a = random()?;
            let b = random()?;
            let active = |k: usize| state.endpoints.get(at(k)).map_or(0, |e| e.rq_active.get());
            if active(a) <= active(b) {
                a
            } else {
                b
            }
        }
        _ => random()?,
    };
    Some(at(k))
}
