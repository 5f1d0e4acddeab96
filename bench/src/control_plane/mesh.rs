//! The mesh the control plane serves during the benchmark: Istio-shaped, Bookinfo-like.
//!
//! Every service gets a STATIC `ServiceEntry` without endpoints (its endpoints are the
//! simulated proxies' workloads, as in a real mesh), a `DestinationRule` with subsets `v1`/`v2`
//! by the `version` label, and a `VirtualService` splitting traffic between the subsets by
//! weight. All of it is a hand-written file in the control plane's directory except the first
//! service's `VirtualService`: that one is what the benchmark changes, through the management
//! API's `Apply` (as `ringmesh apply -f` does), so it is applied once before the proxies
//! connect and then again with new weights for every measured change.

use std::path::Path;

use anyhow::Context as _;

/// Service names, Bookinfo's first; more services than names get numbered names.
const NAMES: [&str; 4] = ["reviews", "ratings", "details", "productpage"];

/// The port every workload serves on (target port of the `http` service port).
pub const TARGET_PORT: u32 = 9080;

/// The services of a mesh of `count` services: fully qualified host names.
pub fn hosts(count: usize) -> Vec<String> {
    (0..count.max(1))
        .map(|i| match NAMES.get(i) {
            Some(n) => format!("{n}.bench.svc.cluster.local"),
            None => format!("svc{i}.bench.svc.cluster.local"),
        })
        .collect()
}

fn short(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

fn service_entry(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: bench\nspec:\n  \
         hosts: [{host}]\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n",
        name = short(host)
    )
}

fn destination_rule(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: bench\n\
         spec:\n  host: {host}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  \
         - {{name: v2, labels: {{version: v2}}}}\n",
        name = short(host)
    )
}

/// A `VirtualService` for `host` sending `w1`% to subset v1 and the rest to v2.
pub fn virtual_service(host: &str, w1: u32) -> String {
    let w1 = w1.min(100);
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  \
         namespace: bench\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    \
         - destination: {{host: {host}, subset: v1}}\n      weight: {w1}\n    \
         - destination: {{host: {host}, subset: v2}}\n      weight: {w2}\n",
        name = short(host),
        w2 = 100 - w1
    )
}

/// The v1 weight of change number `apply`: between 10 and 90, different from the previous
/// change's, so that every apply is a real change of policy (an unchanged apply pushes nothing).
pub fn weight_of(apply: u64) -> u32 {
    10 + ((apply * 17) % 81) as u32
}

/// Writes the hand-written part of the mesh (all but the applied `VirtualService`) into `dir`.
pub fn write_mesh(dir: &Path, hosts: &[String]) -> anyhow::Result<()> {
    let mut text = String::new();
    for host in hosts {
        text.push_str(&service_entry(host));
        text.push_str("---\n");
        text.push_str(&destination_rule(host));
        text.push_str("---\n");
    }
    for host in &hosts[1..] {
        text.push_str(&virtual_service(host, 50));
        text.push_str("---\n");
    }
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_compiles_with_the_applied_virtual_service() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let hosts = hosts(5);
        assert_eq!(hosts[0], "reviews.bench.svc.cluster.local");
        assert_eq!(hosts[4], "svc4.bench.svc.cluster.local");
        write_mesh(&dir, &hosts).unwrap();
        std::fs::write(dir.join("applied.yaml"), virtual_service(&hosts[0], weight_of(7))).unwrap();
        ringmesh_api::compile_files(std::slice::from_ref(&dir), 0).unwrap_or_else(|d| panic!("{d:?}"));
        for a in 0..200 {
            assert_ne!(weight_of(a), weight_of(a + 1));
            assert!((10..=90).contains(&weight_of(a)));
        }
    }
}
