//! The discovery stream end to end over real gRPC on loopback: hello, snapshots, ACK/NACK,
//! endpoint registration and withdrawal, debouncing, version skew, refused directory changes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{eventually_async, FakeProxy};
use prost::Message as _;
use ringmesh_api::proto::{
    control_message, proxy_message, Ack, ProxyMessage, Snapshot, SnapshotDelta, Workload, MIN_SUPPORTED_VERSION,
    PROTOCOL_VERSION,
};
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::DirStore;

/// How long a test waits for the control plane to record what a proxy sent.
const WAIT: Duration = Duration::from_secs(5);

const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n";
const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  http:\n  - route: [{destination: {host: reviews.test}}]\n";

async fn start(dir: &std::path::Path, grace: Duration) -> (ControlPlane, SocketAddr) {
    let store = DirStore::open(dir).expect("store opens");
    let cp = ControlPlane::new(
        store.current.clone(),
        ServerConfig {
            grace,
            debounce: Duration::from_millis(20),
        },
    );
    let addr = common::serve_discovery(&cp).await;
    (cp, addr)
}

fn hello(node: &str, services: &[&str], address: &str, version: &str, protocol: u32) -> ProxyMessage {
    common::hello(
        node,
        Workload {
            name: "reviews".into(),
            namespace: "default".into(),
            service_account: "reviews".into(),
            labels: [("version".to_string(), version.to_string())].into_iter().collect(),
            addresses: vec![address.into()],
            services: services.iter().map(|s| s.to_string()).collect(),
            ports: [("http".to_string(), 9080u32)].into_iter().collect(),
        },
        protocol,
    )
}

async fn connect(addr: SocketAddr, first: ProxyMessage) -> FakeProxy {
    FakeProxy::connect(addr, first).await
}

#[tokio::test]
async fn snapshots_acks_nacks_and_updates() {
    let tmp = common::temp_dir("cp", "sync");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), format!("{SE}---\n{VS}")).unwrap();
    let (cp, addr) = start(dir, Duration::from_secs(30)).await;
    let mut p1 = connect(
        addr,
        hello("p1", &["reviews.test"], "127.0.0.1", "v1", PROTOCOL_VERSION),
    )
    .await;
    let s1 = p1.snapshot().await;
    assert_eq!(s1.protocol_version, PROTOCOL_VERSION);
    assert_eq!(s1.documents.len(), 2);
    assert!(
        s1.documents[0].source.ends_with("mesh.yaml:1"),
        "{:?}",
        s1.documents[0].source
    );
    assert!(s1.documents[1].yaml.contains("kind: VirtualService"));
    assert_eq!(s1.endpoints.len(), 1);
    assert_eq!(
        (s1.endpoints[0].host.as_str(), s1.endpoints[0].address.as_str()),
        ("reviews.test", "127.0.0.1")
    );
    p1.ack(&s1).await;
    eventually_async(WAIT, "p1 SYNCED", || {
        cp.proxy_status()
            .iter()
            .any(|p| p.node_id == "p1" && p.state(cp.generation()) == "SYNCED")
    })
    .await
    .unwrap();

    // A changed directory is pushed with a newer version.
    let mut store = DirStore::open(dir).unwrap();
    std::fs::write(
        dir.join("mesh.yaml"),
        format!("{SE}---\n{}", VS.replace("name: reviews\nspec", "name: reviews2\nspec")),
    )
    .unwrap();
    assert_eq!(store.refresh(), Ok(true));
    cp.set_resources(store.current.clone());
    let s2 = p1.snapshot().await;
    assert!(s2.version > s1.version);
    assert!(s2.documents[1].yaml.contains("name: reviews2"));

    // A NACK is recorded with its error and shown as NACKED, never as synced.
    p1.nack(&s2, "boom: line 3").await;
    eventually_async(WAIT, "p1 NACKED with its error", || {
        cp.proxy_status()
            .iter()
            .any(|p| p.nack.as_deref() == Some("boom: line 3") && p.state(cp.generation()) == "NACKED")
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn endpoints_follow_workloads() {
    let tmp = common::temp_dir("cp", "endpoints");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), SE).unwrap();
    let (cp, addr) = start(dir, Duration::from_millis(300)).await;
    let mut p1 = connect(
        addr,
        hello("p1", &["reviews.test"], "127.0.0.1", "v1", PROTOCOL_VERSION),
    )
    .await;
    let s = p1.snapshot().await;
    assert_eq!(s.endpoints.len(), 1);

    // A second workload joins: p1 is pushed both endpoints, labels intact for subsets.
    let mut p2 = connect(
        addr,
        hello("p2", &["reviews.test"], "127.0.0.2", "v2", PROTOCOL_VERSION),
    )
    .await;
    let _ = p2.snapshot().await;
    let s = p1.snapshot().await;
    let mut v: Vec<_> = s
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.labels["version"].clone()))
        .collect();
    v.sort();
    assert_eq!(
        v,
        vec![("127.0.0.1".into(), "v1".into()), ("127.0.0.2".into(), "v2".into())]
    );

    // Unready: withdrawn at once.
    p2.health(false).await;
    let s = p1.snapshot().await;
    assert_eq!(s.endpoints.len(), 1);
    p2.health(true).await;
    assert_eq!(p1.snapshot().await.endpoints.len(), 2);

    // Disconnected: kept for the grace period, then withdrawn.
    drop(p2);
    eventually_async(WAIT, "p2's stream end handled", || {
        cp.proxy_status().iter().any(|p| p.node_id == "p2" && !p.connected)
    })
    .await
    .unwrap();
    cp.expire();
    assert!(
        cp.proxy_status().iter().any(|p| p.node_id == "p2"),
        "withdrawn before the grace period"
    );
    // Expired as of a time past the 300 ms grace period, rather than after waiting it out.
    cp.expire_at(Instant::now() + Duration::from_millis(350));
    let s = p1.snapshot().await;
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(s.endpoints[0].address, "127.0.0.1");
}

#[tokio::test]
async fn bursts_are_debounced() {
    let tmp = common::temp_dir("cp", "burst");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), SE).unwrap();
    let (cp, addr) = start(dir, Duration::from_secs(30)).await;
    let mut p1 = connect(addr, hello("p1", &[], "127.0.0.1", "v1", PROTOCOL_VERSION)).await;
    let _ = p1.snapshot().await;
    let store = DirStore::open(dir).unwrap();
    let before = cp.pushes();
    for _ in 0..100 {
        cp.set_resources(store.current.clone());
    }
    let last = cp.generation();
    let mut got = 0;
    loop {
        let s = p1.snapshot().await;
        got += 1;
        if s.version == last {
            break;
        }
    }
    let pushes = cp.pushes() - before;
    assert!(pushes <= 5, "100 applies produced {pushes} pushes");
    assert_eq!(got, pushes);
}

#[tokio::test]
async fn version_skew_is_refused_with_both_versions() {
    let tmp = common::temp_dir("cp", "skew");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), SE).unwrap();
    let (cp, addr) = start(dir, Duration::from_secs(30)).await;
    let mut p = connect(addr, hello("old", &[], "127.0.0.1", "v1", PROTOCOL_VERSION + 7)).await;
    match p.next().await.and_then(|m| m.message) {
        Some(control_message::Message::Refusal(r)) => {
            assert!(
                r.message
                    .contains(&format!("protocol version {}", PROTOCOL_VERSION + 7)),
                "{}",
                r.message
            );
            assert!(
                r.message.contains(&format!("speaks version {PROTOCOL_VERSION}")),
                "{}",
                r.message
            );
            assert_eq!(r.control_protocol_version, PROTOCOL_VERSION);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(p.next().await.is_none(), "the stream ends after a refusal");
    assert!(cp.proxy_status().is_empty(), "a refused proxy is not registered");
}

#[tokio::test]
async fn a_broken_directory_is_refused_and_the_last_good_set_served() {
    let tmp = common::temp_dir("cp", "broken");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), SE).unwrap();
    let mut store = DirStore::open(dir).unwrap();
    let good = store.current.documents.clone();
    std::fs::write(dir.join("mesh.yaml"), SE.replace("hosts:", "hostz:")).unwrap();
    let err = store.refresh().unwrap_err();
    assert!(err.contains("mesh.yaml:6"), "{err}");
    assert!(err.contains("hostz"), "{err}");
    assert_eq!(store.current.documents, good);
    assert!(store.last_error.is_some());
    // Opening a directory that does not compile fails with the same message.
    assert!(DirStore::open(dir).unwrap_err().contains("hostz"));
}

#[tokio::test]
async fn a_stream_must_start_with_hello() {
    let tmp = common::temp_dir("cp", "nohello");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), SE).unwrap();
    let (_cp, addr) = start(dir, Duration::from_secs(30)).await;
    let ack = ProxyMessage {
        message: Some(proxy_message::Message::Ack(Ack {
            version: 1,
            nonce: "x".into(),
        })),
    };
    let Err(err) = FakeProxy::try_connect(addr, ack).await else {
        panic!("a stream opened by an ACK was accepted")
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("Hello"), "{}", err.message());
}

fn hello_in(node: &str, namespace: &str, version: &str) -> ProxyMessage {
    let mut h = hello(node, &[], "127.0.0.9", version, PROTOCOL_VERSION);
    if let Some(proxy_message::Message::Hello(h)) = &mut h.message {
        if let Some(w) = &mut h.workload {
            w.namespace = namespace.into();
        }
    }
    h
}

fn names(s: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = s
        .documents
        .iter()
        .filter_map(|d| {
            d.yaml
                .lines()
                .find_map(|l| l.trim().strip_prefix("name: ").map(str::to_string))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn export_to_and_workload_selector_decide_which_proxies_see_a_resource() {
    let tmp = common::temp_dir("cp", "scope");
    let dir = tmp.path();
    let team_vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: team-a-only\n  namespace: team-a\nspec:\n  hosts: [reviews.test]\n  exportTo: [.]\n  http:\n  - route: [{destination: {host: reviews.test}}]\n";
    let canary_dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: v2-only\n  namespace: team-a\nspec:\n  host: reviews.test\n  workloadSelector: {matchLabels: {version: v2}}\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n";
    std::fs::write(dir.join("mesh.yaml"), format!("{SE}---\n{team_vs}---\n{canary_dr}")).unwrap();
    let (_cp, addr) = start(dir, Duration::from_secs(30)).await;
    let mut other = connect(addr, hello_in("other", "team-b", "v2")).await;
    let mut a1 = connect(addr, hello_in("a1", "team-a", "v1")).await;
    let mut a2 = connect(addr, hello_in("a2", "team-a", "v2")).await;
    assert_eq!(
        names(&other.snapshot().await),
        ["reviews"],
        "another namespace sees only mesh-wide resources"
    );
    assert_eq!(
        names(&a1.snapshot().await),
        ["reviews", "team-a-only"],
        "the selector needs version: v2"
    );
    assert_eq!(names(&a2.snapshot().await), ["reviews", "team-a-only", "v2-only"]);
}

/// A `Telemetry` document named `name` in `namespace`, with `spec` (lines indented by two).
fn telemetry(namespace: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}")
}

/// Istio's levels as the control plane sends them: the root namespace's `Telemetry` to every
/// proxy, a namespace's only to the workloads of that namespace, one with a selector only to
/// the workloads of its namespace whose labels match; a change to the root namespace's reaches
/// every proxy, and a namespace's `Telemetry` added later only that namespace's proxies.
#[tokio::test]
async fn telemetry_goes_to_its_namespace_and_from_the_root_namespace_everywhere() {
    let tmp = common::temp_dir("cp", "telemetry");
    let dir = tmp.path();
    let log = "  accessLogging:\n  - providers:\n    - name: envoy\n";
    let root = |pct: u32| {
        telemetry(
            "istio-system",
            "mesh-default",
            &format!("  tracing:\n  - randomSamplingPercentage: {pct}\n"),
        )
    };
    let team_a = telemetry("team-a", "team-a-logs", log);
    let canary = telemetry(
        "team-a",
        "v2-quiet",
        "  selector:\n    matchLabels: {version: v2}\n  metrics:\n  - overrides:\n    - disabled: true\n",
    );
    let file = |docs: &[&str]| docs.iter().map(|d| format!("{d}---\n")).collect::<String>();
    std::fs::write(dir.join("mesh.yaml"), file(&[SE, &root(10), &team_a, &canary])).unwrap();
    let (cp, addr) = start(dir, Duration::from_secs(30)).await;
    let mut b = connect(addr, hello_in("b", "team-b", "v2")).await;
    let mut a1 = connect(addr, hello_in("a1", "team-a", "v1")).await;
    let mut a2 = connect(addr, hello_in("a2", "team-a", "v2")).await;
    let (sb, s1, s2) = (b.snapshot().await, a1.snapshot().await, a2.snapshot().await);
    assert_eq!(
        names(&sb),
        ["mesh-default", "reviews"],
        "another namespace: the root's only"
    );
    assert_eq!(
        names(&s1),
        ["mesh-default", "reviews", "team-a-logs"],
        "the selector needs version: v2"
    );
    assert_eq!(names(&s2), ["mesh-default", "reviews", "team-a-logs", "v2-quiet"]);
    for (p, s) in [(&b, &sb), (&a1, &s1), (&a2, &s2)] {
        p.ack(s).await;
    }

    // The root's changed and team-b's added: every proxy gets the root's change, team-b's
    // goes to b alone.
    let team_b = telemetry("team-b", "team-b-logs", log);
    let mut store = DirStore::open(dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), file(&[SE, &root(20), &team_a, &canary, &team_b])).unwrap();
    assert_eq!(store.refresh(), Ok(true));
    cp.set_resources(store.current.clone());
    let root_changed = |s: &Snapshot| {
        s.documents
            .iter()
            .any(|d| d.yaml.contains("randomSamplingPercentage: 20"))
    };
    for (p, want) in [
        (&mut b, vec!["mesh-default", "reviews", "team-b-logs"]),
        (&mut a1, vec!["mesh-default", "reviews", "team-a-logs"]),
        (&mut a2, vec!["mesh-default", "reviews", "team-a-logs", "v2-quiet"]),
    ] {
        let s = p
            .snapshot_where(WAIT, root_changed)
            .await
            .expect("the root namespace's change is pushed to every proxy");
        assert_eq!(names(&s), want);
    }
}

#[tokio::test]
async fn a_fast_reconnect_is_not_undone_by_the_old_stream_closing() {
    let tmp = common::temp_dir("cp", "reconnect");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), SE).unwrap();
    let (cp, addr) = start(dir, Duration::from_millis(100)).await;
    let mut old = connect(
        addr,
        hello("same", &["reviews.test"], "127.0.0.1", "v1", PROTOCOL_VERSION),
    )
    .await;
    let s = old.snapshot().await;
    old.ack(&s).await;
    // The proxy reconnects before its old stream's end reaches the control plane.
    let mut new = connect(
        addr,
        hello("same", &["reviews.test"], "127.0.0.1", "v1", PROTOCOL_VERSION),
    )
    .await;
    let s = new.snapshot().await;
    new.ack(&s).await;
    drop(old);
    eventually_async(WAIT, "the old stream's end handled", || cp.streams_ended() == 1)
        .await
        .unwrap();
    // Expired as of a time past the 100 ms grace period, rather than after waiting it out.
    cp.expire_at(Instant::now() + Duration::from_millis(300));
    let status = cp.proxy_status();
    let me = status
        .iter()
        .find(|p| p.node_id == "same")
        .expect("still registered after the grace period");
    assert!(me.connected, "the old stream's close marked the new one gone: {me:?}");
    assert_eq!(me.acked_version, s.version);
    assert_eq!(
        new.snapshot_or_none(Duration::from_millis(200))
            .await
            .map(|s| s.endpoints.len()),
        None,
        "no withdrawal pushed"
    );
}

#[tokio::test]
async fn the_previous_protocol_gets_whole_snapshots_the_current_one_deltas() {
    let tmp = common::temp_dir("cp", "shared");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), format!("{SE}---\n{VS}")).unwrap();
    let (cp, addr) = start(dir, Duration::from_secs(30)).await;
    let mut old = connect(addr, hello("old", &[], "127.0.0.1", "v1", MIN_SUPPORTED_VERSION)).await;
    let m = old.next().await.unwrap();
    let Some(control_message::Message::SharedSnapshot(shared)) = &m.message else {
        panic!("expected a whole shared snapshot, got {m:?}")
    };
    assert!(!shared.nonce.is_empty());
    let s = old.assembler.feed(m.clone()).unwrap().unwrap();
    assert_eq!(
        s.nonce, shared.nonce,
        "the send's nonce replaces the shared encoding's empty one"
    );
    assert_eq!(s.documents.len(), 2);

    // The current protocol: the whole set first (a reset delta), then only what changed.
    let mut new = connect(
        addr,
        hello("new", &["reviews.test"], "127.0.0.2", "v1", PROTOCOL_VERSION),
    )
    .await;
    let m = new.next().await.unwrap();
    let Some(control_message::Message::SharedDelta(first)) = &m.message else {
        panic!("expected a delta, got {m:?}")
    };
    let first = SnapshotDelta::decode(first.delta.clone()).unwrap();
    assert!(first.reset && !first.continued, "{first:?}");
    let s = new.assembler.feed(m).unwrap().unwrap();
    assert_eq!((s.documents.len(), s.endpoints.len()), (2, 1), "{s:?}");
    new.ack(&s).await;
    let _ = old.snapshot().await; // the new workload's endpoint

    let changed = VS.replace(
        "route: [{destination: {host: reviews.test}}]",
        "route: [{destination: {host: reviews.test}}]\n    timeout: 2s",
    );
    std::fs::write(dir.join("mesh.yaml"), format!("{SE}---\n{changed}")).unwrap();
    let store = DirStore::open(dir).unwrap();
    cp.set_resources(store.current.clone());
    let m = new.next().await.unwrap();
    let Some(control_message::Message::SharedDelta(shared)) = &m.message else {
        panic!("expected a delta, got {m:?}")
    };
    let d = SnapshotDelta::decode(shared.delta.clone()).unwrap();
    assert!(!d.reset && !d.continued);
    assert_eq!(d.base_version, s.version);
    assert_eq!(d.documents.len(), 1, "only the changed document: {d:?}");
    assert!(d.documents[0].yaml.contains("timeout: 2s"));
    assert!(d.endpoints.is_empty() && d.removed_endpoints.is_empty() && d.removed_documents.is_empty());
    let s2 = new.assembler.feed(m).unwrap().unwrap();
    assert_eq!(s2.documents.len(), 2);
    assert_eq!(
        s2.endpoints, s.endpoints,
        "the endpoints the delta did not mention are kept"
    );
    assert!(s2.documents.iter().any(|d| d.yaml.contains("timeout: 2s")));
    let whole = old.snapshot().await;
    assert_eq!(whole.version, s2.version);
    assert_eq!(whole.documents, s2.documents, "both protocols hold the same config");
}
