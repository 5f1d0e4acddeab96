//! The control plane's metrics (`--metrics-listen`, `/metrics`) follow what proxies do over
//! real discovery streams: connected proxies, pushes and the time a change took to reach them,
//! ACKs and NACKs, under ringmesh's and Istio's names, served over HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually_async, FakeProxy};
use ringmesh_api::proto::{Workload, PROTOCOL_VERSION};
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::DirStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);
const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n";

/// The value of the sample `name` (no labels) in an exposition.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn workload() -> Workload {
    Workload {
        name: "reviews".into(),
        namespace: "default".into(),
        service_account: "reviews".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn metrics_follow_pushes_acks_nacks_and_connections() {
    let tmp = common::temp_dir("cp", "metrics");
    let dir = tmp.path();
    std::fs::write(dir.join("mesh.yaml"), SE).unwrap();
    let mut store = DirStore::open(dir).unwrap();
    let cp = ControlPlane::new(
        store.current.clone(),
        ServerConfig {
            grace: Duration::from_secs(30),
            debounce: Duration::from_millis(20),
        },
    );
    let addr = common::serve_discovery(&cp).await;
    let text = cp.metrics_text();
    assert_eq!(value(&text, "pilot_xds"), Some(0.0), "{text}");
    assert_eq!(value(&text, "ringmesh_control_pushes_total"), Some(0.0), "{text}");

    let mut p = FakeProxy::connect(addr, common::hello("p1", workload(), PROTOCOL_VERSION)).await;
    let s1 = p.snapshot().await;
    p.ack(&s1).await;
    let acked = || value(&cp.metrics_text(), "ringmesh_control_acks_total") == Some(1.0);
    eventually_async(WAIT, "the ACK counted", acked).await.unwrap();
    let text = cp.metrics_text();
    assert_eq!(value(&text, "pilot_xds"), Some(1.0), "{text}");
    assert_eq!(value(&text, "ringmesh_control_proxies_connected"), Some(1.0), "{text}");
    assert_eq!(value(&text, "ringmesh_control_pushes_total"), Some(1.0), "{text}");
    assert_eq!(value(&text, "pilot_xds_pushes"), Some(1.0), "{text}");
    // The first push has no change to time it from.
    assert_eq!(value(&text, "ringmesh_control_push_seconds_count"), Some(0.0), "{text}");

    // A change is pushed and timed; the proxy refuses it.
    std::fs::write(dir.join("mesh.yaml"), SE.replace("9080", "9081")).unwrap();
    assert_eq!(store.refresh(), Ok(true));
    cp.set_resources(store.current.clone());
    let s2 = p.snapshot().await;
    p.nack(&s2, "boom").await;
    let nacked = || value(&cp.metrics_text(), "pilot_total_xds_rejects") == Some(1.0);
    eventually_async(WAIT, "the NACK counted", nacked).await.unwrap();
    let text = cp.metrics_text();
    assert_eq!(value(&text, "ringmesh_control_nacks_total"), Some(1.0), "{text}");
    assert_eq!(value(&text, "ringmesh_control_pushes_total"), Some(2.0), "{text}");
    assert_eq!(value(&text, "ringmesh_control_push_seconds_count"), Some(1.0), "{text}");
    assert_eq!(value(&text, "pilot_proxy_convergence_time_count"), Some(1.0), "{text}");
    // At least the debounce, well under the first bucket on loopback.
    let sum = value(&text, "ringmesh_control_push_seconds_sum").unwrap();
    assert!((0.02..10.0).contains(&sum), "{sum}: {text}");
    assert_eq!(
        value(&text, "ringmesh_control_config_generation"),
        Some(cp.generation() as f64),
        "{text}"
    );

    // Served over HTTP; the proxy gone, the gauge falls.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let served = cp.clone();
    tokio::spawn(ringmesh_control::metrics::serve(
        listener,
        Arc::new(move || served.metrics_text()),
    ));
    drop(p);
    let gone = || value(&cp.metrics_text(), "pilot_xds") == Some(0.0);
    eventually_async(WAIT, "the disconnect counted", gone).await.unwrap();
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let page = get("/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("content-type: text/plain; version=0.0.4"), "{page}");
    assert!(page.lines().any(|l| l == "pilot_xds 0"), "{page}");
    assert!(page.lines().any(|l| l == "ringmesh_control_nacks_total 1"), "{page}");
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
}
