//! `localityLbSetting`: endpoints grouped by locality against the proxy's, failover only with
//! outlier detection, `distribute` groups, and each refused value with its field.

use super::*;
use crate::snapshot::LocalityPlan;

/// A proxy in `us-east/a/1` (through `spec.workload.locality`), and `web.example.com` with
/// endpoints in its subzone, its zone (by labels), its region, `eu-west` and `ap-south`.
fn mesh(policy: &str) -> String {
    format!(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  workload: {{name: client, locality: us-east/a/1}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\nspec:\n  hosts: [web.example.com]\n  \
         ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  endpoints:\n  - {{address: 127.0.0.1, locality: us-east/a/1}}\n  \
         - {{address: 127.0.0.2, labels: {{topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: a}}}}\n  \
         - {{address: 127.0.0.3, locality: us-east/b}}\n  - {{address: 127.0.0.4, locality: eu-west/c}}\n  \
         - {{address: 127.0.0.5, locality: ap-south/d}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: web.example.com\n  \
         trafficPolicy:\n{policy}"
    )
}

fn plan(policy: &str) -> Option<LocalityPlan> {
    let c = ok(&mesh(policy));
    c.snapshot
        .clusters
        .iter()
        .find(|c| c.service == "web.example.com")
        .expect("cluster")
        .locality
        .clone()
}

#[test]
fn failover_groups_by_subzone_zone_region_then_the_failover_region() {
    // Istio's default: on wherever outlier detection is.
    assert_eq!(
        plan("    outlierDetection: {}\n"),
        Some(LocalityPlan::Failover(vec![vec![0], vec![1], vec![2], vec![3, 4]]))
    );
    assert_eq!(
        plan("    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east, to: eu-west}]\n"),
        Some(LocalityPlan::Failover(vec![vec![0], vec![1], vec![2], vec![3], vec![4]]))
    );
    // No outlier detection, no failover (nothing would ever leave a level), as in Istio.
    assert_eq!(plan("    loadBalancer: {simple: ROUND_ROBIN}\n"), None);
    assert_eq!(
        plan("    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting: {enabled: false}\n"),
        None
    );
}

#[test]
fn failover_priority_orders_endpoints_by_the_labels_they_share_with_the_proxy() {
    let lb = |s: &str| format!("    outlierDetection: {{}}\n    loadBalancer:\n      localityLbSetting:\n{s}");
    // Region, then zone: the proxy's zone (with or without its subzone), its region, the rest.
    assert_eq!(
        plan(&lb(
            "        failoverPriority: [topology.kubernetes.io/region, topology.kubernetes.io/zone]\n"
        )),
        Some(LocalityPlan::Failover(vec![vec![0, 1], vec![2], vec![3, 4]]))
    );
    // `key=value` compares with that value instead of the proxy's.
    assert_eq!(
        plan(&lb(
            "        failoverPriority: [\"topology.kubernetes.io/region=eu-west\"]\n"
        )),
        Some(LocalityPlan::Failover(vec![vec![3], vec![0, 1, 2, 4]]))
    );
    // Without outlier detection nothing would ever leave a level: no plan, as in Istio.
    assert_eq!(
        plan(
            "    loadBalancer:\n      localityLbSetting:\n        failoverPriority: [topology.kubernetes.io/region]\n"
        ),
        None
    );
    // With `failover` too, the labels decide, and the compiler says so.
    let text = mesh(&lb(
        "        failover: [{from: us-east, to: eu-west}]\n        failoverPriority: [topology.kubernetes.io/region]\n",
    ));
    let c = ok(&text);
    let web = c
        .snapshot
        .clusters
        .iter()
        .find(|c| c.service == "web.example.com")
        .expect("cluster");
    assert_eq!(
        web.locality,
        Some(LocalityPlan::Failover(vec![vec![0, 1, 2], vec![3, 4]]))
    );
    assert!(
        c.warnings.iter().any(|w| w.field.as_deref()
            == Some("spec.trafficPolicy.loadBalancer.localityLbSetting.failover")
            && w.message.contains("not applied while failoverPriority is set")),
        "{:#?}",
        c.warnings
    );
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.message.contains("failoverPriority") && w.message.contains("not supported")),
        "{:#?}",
        c.warnings
    );
}

#[test]
fn distribute_gives_each_locality_its_share() {
    let p = plan(
        "    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: us-east/*\n          \
         to: {\"us-east/a/*\": 80, \"eu-west/*\": 20}\n",
    );
    assert_eq!(p, Some(LocalityPlan::Distribute(vec![(20, vec![3]), (80, vec![0, 1])])));
    // A rule for another locality leaves balancing alone.
    let p = plan(
        "    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: eu-west/*\n          \
         to: {\"eu-west/*\": 100}\n",
    );
    assert_eq!(p, None);
}

#[test]
fn a_proxy_without_a_locality_balances_as_before() {
    let text = mesh("    outlierDetection: {}\n").replace(", locality: us-east/a/1}", "}");
    let c = ok(&text);
    assert!(c.snapshot.clusters.iter().all(|c| c.locality.is_none()));
}

#[test]
fn locality_mistakes_name_their_field() {
    let lb = |s: &str| format!("    outlierDetection: {{}}\n    loadBalancer:\n      localityLbSetting:\n{s}");
    let cases: &[(String, &str, &str)] = &[
        (
            lb("        distribute: [{from: us-east/*, to: {us-east/a/*: 70}}]\n"),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
            "weights must sum to 100, got 70",
        ),
        (
            lb("        distribute: [{from: us-east/*, to: {us-east/a/*: 100}}]\n        failover: [{from: us-east, to: eu-west}]\n"),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover",
            "distribute and failover cannot both be set",
        ),
        (
            lb("        distribute: [{from: us-east/*, to: {us-east/a/*: 100}}]\n        failoverPriority: [app]\n"),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority",
            "distribute and failoverPriority cannot both be set",
        ),
        (
            lb("        failoverPriority: [app, \"=v1\"]\n"),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[1]",
            "a label key is required",
        ),
        (
            lb("        failover: [{from: us-east, to: us-east}]\n"),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to",
            "another region",
        ),
        (
            lb("        failover: [{from: us-east/a, to: eu-west}]\n"),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].from",
            "a region, without zone",
        ),
    ];
    for (policy, field, message) in cases {
        let e = errors(&mesh(policy));
        assert!(
            e.iter()
                .any(|d| d.field.as_deref() == Some(*field) && d.message.contains(message)),
            "{policy}: {e:#?}"
        );
    }
    let e = errors(&mesh("    outlierDetection: {}\n").replace("locality: eu-west/c", "locality: eu-west//c"));
    assert!(
        e.iter()
            .any(|d| d.field.as_deref() == Some("spec.endpoints[3].locality")
                && d.message.contains("region/zone/subzone")),
        "{e:#?}"
    );
    // Failover without outlier detection is a warning that says why nothing happens.
    let c = ok(&mesh(
        "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east, to: eu-west}]\n",
    ));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.message.contains("only where outlierDetection is set")),
        "{:#?}",
        c.warnings
    );
}
