//! The proxy's control side end to end: hot reload (good and bad files), admin, health and
//! metrics endpoints, the I/O driver choice and draining.

use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};

fn hot_reload_applies_and_bad_file_keeps_old(io: IoMode) {
    let (a, b) = (Upstream::named("a"), Upstream::named("b"));
    let docs_a = vec![
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(a.addr, &[])]),
    ];
    let p = TestProxy::start(&docs_a);
    let mut c = Client::connect(p.http());
    assert_eq!(c.get("svc.test", "/").text(), "a");

    // Good change: the same keep-alive connection moves to b.
    p.rewrite(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(b.addr, &[])]),
    ]);
    eventually(Duration::from_secs(5), "the reload to apply", || {
        c.get("svc.test", "/").text() == "b"
    })
    .unwrap();

    // Bad change (typo in a field): refused, b keeps serving, the reason is visible.
    let bad = service_entry("svc", "svc.test", 80, &[(a.addr, &[])]).replace("hosts:", "hostz:");
    p.rewrite(&[proxy_config(io, "", ""), bad]);
    eventually(
        Duration::from_secs(5),
        "the reload error reported in /config_dump",
        || admin_get(p.admin(), "/config_dump").1.contains("hostz"),
    )
    .unwrap();
    for _ in 0..20 {
        assert_eq!(c.get("svc.test", "/").text(), "b");
    }
    let (_, dump) = admin_get(p.admin(), "/config_dump");
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let err = v["last_reload_error"].as_str().unwrap();
    assert!(err.contains("proxy.yaml:"), "error names the file: {err}");
    let line: String = err
        .split("proxy.yaml:")
        .nth(1)
        .unwrap_or("")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert!(!line.is_empty(), "error names the line: {err}");
    assert!(err.contains("spec.hostz"), "error names the field: {err}");
    assert!(err.contains("hosts"), "error suggests the right field: {err}");
    assert!(v["version"].as_u64().unwrap() >= 2);
}

fn admin_health_and_metrics(io: IoMode) {
    let a = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(a.addr, &[])]),
    ]);
    let mut c = Client::connect(p.http());
    for _ in 0..7 {
        assert_eq!(c.get("svc.test", "/").status, 200);
    }
    assert_eq!(c.get("nope.test", "/").status, 404);

    assert_eq!(admin_get(p.health(), "/healthz/ready"), (200, "ready\n".into()));
    assert_eq!(admin_get(p.admin(), "/ready"), (200, "LIVE\n".into()));

    let (s, body) = admin_get(p.metrics(), "/stats/prometheus");
    assert_eq!(s, 200);
    assert!(body.contains("ringmesh_downstream_rq_total 8\n"), "{body}");
    assert!(
        body.contains("ringmesh_downstream_rq_xx_total{response_code_class=\"2xx\"} 7\n"),
        "{body}"
    );
    assert!(
        body.contains("ringmesh_local_replies_total{response_flags=\"NR\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("ringmesh_cluster_upstream_rq_total{cluster_name=\"outbound|80||svc.test\"} 7\n"),
        "{body}"
    );

    let (s, clusters) = admin_get(p.admin(), "/clusters");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let cl = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|80||svc.test")
        .expect("cluster listed");
    assert_eq!(cl["endpoints"][0]["address"], a.addr.to_string());
    assert_eq!(cl["endpoints"][0]["rq_total"], 7);
    assert_eq!(cl["endpoints"][0]["cx_idle"], 1);

    let (s, dump) = admin_get(p.admin(), "/config_dump");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["io"], if io == IoMode::Epoll { "epoll" } else { "io_uring" });
    assert_eq!(v["snapshot"]["clusters"][0]["service"], "svc.test");

    assert_eq!(admin_get(p.admin(), "/nope").0, 404);
}

fn drain_stops_accepting(io: IoMode) {
    let a = Upstream::named("a");
    let mut p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(a.addr, &[])]),
    ]);
    let addr = p.http();
    assert_eq!(Client::connect(addr).get("svc.test", "/").status, 200);
    p.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener still accepting after drain"
    );
}

both_io!(
    hot_reload_applies_and_bad_file_keeps_old,
    admin_health_and_metrics,
    drain_stops_accepting
);

#[test]
fn bad_config_fails_start_with_all_errors() {
    let docs = vec![
        proxy_config(IoMode::Epoll, "", ""),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: v\nspec:\n  hosts: [x.test]\n  http:\n  - route:\n    - destination: {host: missing.test}\n      weight: 50\n    - destination: {host: missing2.test}\n      weight: 20\n    timeout: soon\n".to_string(),
    ];
    // Both errors at once (hosts no ServiceEntry defines are only warnings).
    let err = TestProxy::try_start(&docs).expect_err("must refuse").to_string();
    assert!(err.contains("proxy.yaml"), "{err}");
    assert!(err.contains("timeout"), "{err}");
    assert!(err.contains("weight"), "{err}");
}

#[test]
fn epoll_forced_is_reported() {
    let a = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(IoMode::Epoll, "", ""),
        service_entry("svc", "svc.test", 80, &[(a.addr, &[])]),
    ]);
    assert_eq!(p.handle.as_ref().unwrap().io, ringmesh_proxy::runtime::IoDriver::Epoll);
    assert_eq!(Client::connect(p.http()).get("svc.test", "/").status, 200);
}

#[test]
fn example_configs_compile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let compiled = ringmesh_api::compile_files(std::slice::from_ref(&path), 1).unwrap_or_else(|e| {
                panic!(
                    "{}: {:?}",
                    path.display(),
                    e.iter().map(|d| d.to_string()).collect::<Vec<_>>()
                )
            });
            assert!(!compiled.snapshot.listeners.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}
