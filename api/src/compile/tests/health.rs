//! `outlierDetection` and `healthCheck`: defaults, overrides, and each refused value with its
//! field.

use std::time::Duration;

use super::*;
use crate::snapshot::{HealthProbe, OutlierDetection};

fn dr(policy: &str) -> String {
    format!(
        "{SVC}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: web.example.com\n  trafficPolicy:\n{policy}"
    )
}

fn outlier(policy: &str) -> Option<OutlierDetection> {
    ok(&dr(policy)).snapshot.clusters[0].outlier.clone()
}

/// The one error `policy` gives: (field, message).
fn error_of(policy: &str) -> (String, String) {
    let e = errors(&dr(policy));
    assert_eq!(e.len(), 1, "{e:#?}");
    (e[0].field.clone().unwrap_or_default(), e[0].message.clone())
}

#[test]
fn outlier_detection_defaults_are_istios() {
    assert_eq!(ok(SVC).snapshot.clusters[0].outlier, None, "absent: no ejection");
    let o = outlier("    outlierDetection: {}\n").expect("present");
    assert_eq!(o.consecutive_5xx, 5);
    assert_eq!(o.consecutive_gateway, 0);
    assert!(!o.split_local_origin);
    assert_eq!(o.interval, Duration::from_secs(10));
    assert_eq!(o.base_ejection_time, Duration::from_secs(30));
    assert_eq!(o.max_ejection_time, Duration::from_secs(300));
    assert_eq!(o.max_ejection_percent, 10);
    assert_eq!(o.min_health_percent, 0);
}

#[test]
fn outlier_detection_fields_are_read() {
    let o = outlier(
        "    outlierDetection:\n      consecutive5xxErrors: 2\n      consecutiveGatewayErrors: 3\n      splitExternalLocalOriginErrors: true\n      consecutiveLocalOriginFailures: 4\n      interval: 500ms\n      baseEjectionTime: 2s\n      maxEjectionPercent: 100\n      minHealthPercent: 50\n",
    )
    .expect("present");
    assert_eq!(
        (o.consecutive_5xx, o.consecutive_gateway, o.consecutive_local_origin),
        (2, 3, 4)
    );
    assert!(o.split_local_origin);
    assert_eq!(o.interval, Duration::from_millis(500));
    assert_eq!(o.base_ejection_time, Duration::from_secs(2));
    assert_eq!((o.max_ejection_percent, o.min_health_percent), (100, 50));
    let zero = outlier("    outlierDetection: {consecutive5xxErrors: 0, maxEjectionPercent: 0}\n").unwrap();
    assert_eq!(zero.consecutive_5xx, 0, "0 disables the detector");
    assert_eq!(zero.max_ejection_percent, 10, "0 is protobuf's unset: Envoy's default");
}

#[test]
fn outlier_detection_warnings() {
    let c = ok(&dr("    outlierDetection: {consecutive5xxErrors: 0}\n"));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.message.starts_with("every detector is disabled")),
        "{:#?}",
        c.warnings
    );
    let c = ok(&dr("    outlierDetection: {consecutiveLocalOriginFailures: 2}\n"));
    let w = c
        .warnings
        .iter()
        .find(|w| w.message.contains("splitExternalLocalOriginErrors"))
        .expect("warning");
    assert_eq!(
        w.field.as_deref(),
        Some("spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures")
    );
}

#[test]
fn outlier_detection_bad_values_name_their_field() {
    let cases = [
        ("consecutive5xxErrors: -1", "consecutive5xxErrors", "from 0 (disabled)"),
        (
            "consecutiveGatewayErrors: -3",
            "consecutiveGatewayErrors",
            "from 0 (disabled)",
        ),
        (
            "consecutiveLocalOriginFailures: 5000000000",
            "consecutiveLocalOriginFailures",
            "from 0 (disabled)",
        ),
        ("interval: 10 seconds", "interval", ""),
        ("interval: 0s", "interval", "at least 1ms"),
        ("baseEjectionTime: soon", "baseEjectionTime", ""),
        ("maxEjectionPercent: 101", "maxEjectionPercent", "from 0 to 100"),
        ("maxEjectionPercent: -5", "maxEjectionPercent", "from 0 to 100"),
        ("minHealthPercent: 150", "minHealthPercent", "from 0 to 100"),
    ];
    for (yaml, field, msg) in cases {
        let (f, m) = error_of(&format!("    outlierDetection: {{{yaml}}}\n"));
        assert_eq!(f, format!("spec.trafficPolicy.outlierDetection.{field}"), "{yaml}");
        assert!(m.contains(msg), "{yaml}: {m}");
    }
}

#[test]
fn outlier_detection_typos_are_refused() {
    let (f, m) = error_of("    outlierDetection: {consecutive5xxError: 3}\n");
    assert!(f.ends_with("consecutive5xxError"), "{f}");
    assert!(m.contains("consecutive5xxErrors"), "did you mean: {m}");
    let (f, _) = error_of("    healthCheck: {tcp: {}, intervall: 1s}\n");
    assert!(f.ends_with("intervall"), "{f}");
}

#[test]
fn subset_and_port_level_outlier_detection_override_the_rule() {
    let text = format!(
        "{}  subsets:\n  - name: strict\n    trafficPolicy:\n      outlierDetection: {{consecutive5xxErrors: 1}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web.example.com]\n  http:\n  - route:\n    - destination: {{host: web.example.com, subset: strict}}\n",
        dr("    outlierDetection: {consecutive5xxErrors: 7}\n    portLevelSettings:\n    - port: {number: 80}\n      outlierDetection: {consecutive5xxErrors: 3}\n")
    );
    let c = ok(&text);
    let by_subset = |s: Option<&str>| {
        c.snapshot
            .clusters
            .iter()
            .find(|c| c.subset.as_deref() == s)
            .and_then(|c| c.outlier.as_ref())
            .map(|o| o.consecutive_5xx)
    };
    assert_eq!(by_subset(None), Some(3), "port level beats the rule");
    assert_eq!(
        by_subset(Some("strict")),
        Some(1),
        "the subset's beats the rule's port level"
    );
}

#[test]
fn health_check_defaults_and_fields() {
    let c = ok(&dr("    healthCheck: {tcp: {}}\n"));
    let hc = c.snapshot.clusters[0].health_check.clone().expect("hc");
    assert_eq!(hc.probe, HealthProbe::Tcp);
    assert_eq!(hc.interval, Duration::from_secs(10));
    assert_eq!(hc.timeout, Duration::from_secs(1));
    assert_eq!((hc.unhealthy_threshold, hc.healthy_threshold), (3, 1));
    let c = ok(&dr(
        "    healthCheck:\n      http: {path: /healthz, expectedStatuses: [200, 204]}\n      interval: 200ms\n      timeout: 100ms\n      unhealthyThreshold: 2\n      healthyThreshold: 2\n",
    ));
    let hc = c.snapshot.clusters[0].health_check.clone().expect("hc");
    assert_eq!(
        hc.probe,
        HealthProbe::Http {
            path: "/healthz".into(),
            host: "web.example.com".into(),
            expected_statuses: vec![200, 204],
        },
        "the Host header defaults to the service host"
    );
    assert_eq!(hc.interval, Duration::from_millis(200));
    assert_eq!((hc.unhealthy_threshold, hc.healthy_threshold), (2, 2));
}

#[test]
fn health_check_bad_values_name_their_field() {
    let hc = "spec.trafficPolicy.healthCheck";
    let cases = [
        ("{}", hc.to_owned(), "needs one of http and tcp"),
        ("{tcp: {}, http: {}}", hc.to_owned(), "not both"),
        ("{tcp: {}, interval: 1 minute}", format!("{hc}.interval"), ""),
        ("{tcp: {}, timeout: 0ms}", format!("{hc}.timeout"), "at least 1ms"),
        (
            "{tcp: {}, unhealthyThreshold: 0}",
            format!("{hc}.unhealthyThreshold"),
            "at least 1",
        ),
        (
            "{tcp: {}, healthyThreshold: -2}",
            format!("{hc}.healthyThreshold"),
            "at least 1",
        ),
        (
            "{http: {path: healthz}}",
            format!("{hc}.http.path"),
            "must start with /",
        ),
        (
            "{http: {expectedStatuses: [200, 700]}}",
            format!("{hc}.http.expectedStatuses[1]"),
            "from 100 to 599",
        ),
    ];
    for (yaml, field, msg) in cases {
        let (f, m) = error_of(&format!("    healthCheck: {yaml}\n"));
        assert_eq!(f, field, "{yaml}");
        assert!(m.contains(msg), "{yaml}: {m}");
    }
}
