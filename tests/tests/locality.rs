//! Locality-aware balancing end to end: with outlier detection on, a proxy in `us-east/a`
//! sends everything to the endpoint in its own zone; when that endpoint fails and is ejected,
//! traffic fails over to its region's other zone, not to another region; and `distribute`
//! splits by the weights it gives — on io_uring and on epoll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ringmesh_tests::client::Client;
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

const REGION: &str = "topology.kubernetes.io/region";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Upstreams in the proxy's zone (`local`, failing while `sick` is set), its region's other
/// zone, and another region.
struct World {
    local: Upstream,
    zone_b: Upstream,
    remote: Upstream,
    sick: Arc<AtomicBool>,
}

fn world() -> World {
    let sick = Arc::new(AtomicBool::new(false));
    let s = sick.clone();
    World {
        local: Upstream::start("local", move |_| {
            if s.load(Ordering::SeqCst) {
                Reply::status(503)
            } else {
                Reply::ok("local")
            }
        }),
        zone_b: Upstream::named("zone-b"),
        remote: Upstream::named("remote"),
        sick,
    }
}

fn proxy(io: IoMode, w: &World, traffic_policy: &str) -> TestProxy {
    let spec = "  workload:\n    name: client\n    locality: us-east/a\n";
    TestProxy::start(&[
        proxy_config(io, "", spec),
        service_entry(
            "echo",
            "echo.test",
            80,
            &[
                (w.remote.addr, &[(REGION, "eu-west"), (ZONE, "c")]),
                (w.zone_b.addr, &[(REGION, "us-east"), (ZONE, "b")]),
                (w.local.addr, &[(REGION, "us-east"), (ZONE, "a")]),
            ],
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: echo\nspec:\n  host: echo.test\n  \
             trafficPolicy:\n{traffic_policy}"
        ),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: echo\nspec:\n  hosts: [echo.test]\n  \
         http:\n  - route: [{destination: {host: echo.test}}]\n    retries: {attempts: 3, retryOn: 5xx}\n"
            .to_string(),
    ])
}

/// Who answered `n` requests, in order of `names`.
fn answers(cl: &mut Client, n: usize, names: &[&str]) -> Vec<usize> {
    let mut seen = vec![0; names.len()];
    for _ in 0..n {
        let r = cl.get("echo.test", "/");
        assert_eq!(r.status, 200, "{}", r.text());
        let who = r.text();
        let k = names
            .iter()
            .position(|n| *n == who)
            .unwrap_or_else(|| panic!("answered by {who}"));
        seen[k] += 1;
    }
    seen
}

/// Own zone first; its failure moves traffic to the region's other zone, never to the other
/// region while that zone is healthy.
fn failover_stays_in_the_region(io: IoMode) {
    let w = world();
    let p = proxy(
        io,
        &w,
        "    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n",
    );
    let mut cl = Client::connect(p.http());
    let names = ["local", "zone-b", "remote"];
    assert_eq!(
        answers(&mut cl, 50, &names),
        [50, 0, 0],
        "everything stays in the own zone"
    );
    w.sick.store(true, Ordering::SeqCst);
    // The first requests meet the failing endpoint and are retried; once it is ejected (after
    // 2 failures) the region's other zone takes everything.
    let first = answers(&mut cl, 10, &names);
    assert_eq!(first[0], 0, "503s are retried elsewhere: {first:?}");
    let failed_at_local = w.local.count() - 50;
    assert_eq!(failed_at_local, 2, "ejected after consecutive5xxErrors");
    assert_eq!(answers(&mut cl, 50, &names), [0, 50, 0], "failover to the same region");
    assert_eq!(
        w.remote.count(),
        0,
        "another region is not used while the region serves"
    );
}

/// `distribute` gives 80 % to the region's other zone and 20 % to the other region; the own
/// zone, in no `to` entry, gets nothing.
fn distribute_follows_its_weights(io: IoMode) {
    let w = world();
    let p = proxy(
        io,
        &w,
        "    loadBalancer:\n      simple: RANDOM\n      localityLbSetting:\n        distribute:\n        - from: us-east/a/*\n          \
         to: {\"us-east/b/*\": 80, \"eu-west/*\": 20}\n",
    );
    let mut cl = Client::connect(p.http());
    let got = answers(&mut cl, 1_000, &["local", "zone-b", "remote"]);
    assert_eq!(got[0], 0, "{got:?}");
    assert!((700..=900).contains(&got[1]), "{got:?}");
    assert!((100..=300).contains(&got[2]), "{got:?}");
}

both_io!(failover_stays_in_the_region, distribute_follows_its_weights);
