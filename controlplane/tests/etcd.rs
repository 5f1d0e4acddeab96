//! The `--etcd` backend against a real etcd (`/usr/bin/etcd`, Debian's `etcd-server`; the
//! tests that need it say so and pass without it), and `controlPlane.addresses` compiled.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ringmesh_api::proto::discovery_client::DiscoveryClient;
use ringmesh_api::proto::{proxy_message, Hello, ProxyMessage, Workload, PROTOCOL_VERSION};
use ringmesh_api::{compile, load_str, CompileInput};
use ringmesh_control::etcd::{run_registry, EtcdClient, EtcdStore};
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::{Outcome, ResourceKey};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n";
const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  http:\n  - route: [{destination: {host: reviews.test}}]\n";

fn proxy_config(control_plane: &str) -> String {
    format!("apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata: {{name: p}}\nspec:\n  controlPlane:\n{control_plane}")
}

#[test]
fn control_plane_addresses_compile_in_order_and_errors_name_the_field() {
    let settings = |cp: &str| {
        let (resources, _) = load_str("p.yaml", &proxy_config(cp)).map_err(|d| format!("{d:?}"))?;
        compile(&CompileInput {
            resources,
            extra_endpoints: Vec::new(),
            version: 0,
        })
        .map(|c| c.snapshot.proxy.control_plane.expect("a control plane"))
        .map_err(|d| d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
    };
    let one = settings("    address: a:1\n").unwrap();
    assert_eq!(one.addresses, vec!["a:1"]);
    let many = settings("    addresses: [a:1, b:2]\n").unwrap();
    assert_eq!(many.addresses, vec!["a:1", "b:2"]);
    let both = settings("    address: a:1\n    addresses: [b:2]\n").unwrap();
    assert_eq!(both.addresses, vec!["a:1", "b:2"]);
    let err = settings("    nodeId: x\n").unwrap_err();
    assert!(
        err.contains("controlPlane.address") && err.contains("addresses is required"),
        "{err}"
    );
    let err = settings("    addresses: [a:1, nope]\n").unwrap_err();
    assert!(
        err.contains("controlPlane.addresses[1]") && err.contains("nope"),
        "{err}"
    );
}

/// A throwaway etcd on loopback ports the kernel picked (see `start_etcd`).
struct Etcd {
    child: Child,
    /// Its data directory and log, removed when this guard drops (after `Drop` has stopped etcd).
    dir: tempfile::TempDir,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed next, when the fields drop: etcd no longer writes to it.
    }
}

fn start_etcd(slot: u16) -> Option<Etcd> {
    if !std::path::Path::new("/usr/bin/etcd").exists() {
        eprintln!("skipped: /usr/bin/etcd not installed (apt-get install etcd-server)");
        return None;
    }
    // Ports the kernel just handed out (and took back): free, unlike a range computed from the
    // pid, which could land on a port another test or an outgoing connection holds.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port")
    };
    let (client, peer) = (free(), free());
    // A guard: removed on every way out, the early returns below included.
    let dir = tempfile::Builder::new()
        .prefix(&format!("ringmesh-etcd-{slot}-"))
        .tempdir()
        .ok()?;
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("/usr/bin/etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).ok()?)
        .spawn()
        .ok()?;
    Some(Etcd { child, dir, url })
}

/// Waits for etcd to answer: up to 30 s, since its first fsyncs are slow on a disk that a
/// parallel build keeps busy.
async fn ready(etcd: &Etcd, client: &EtcdClient) {
    let mut last = String::new();
    for _ in 0..300 {
        match client.range_prefix("/").await {
            Ok(_) => return,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    panic!(
        "etcd did not answer within 30 s: {last}; its log ends:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_applies_checks_and_deletes_like_the_directory_store() {
    let Some(etcd) = start_etcd(0) else { return };
    let client = EtcdClient::new(&etcd.url).unwrap();
    ready(&etcd, &client).await;
    let (store, set) = EtcdStore::open(client.clone(), "/t/").await.unwrap();
    assert!(set.documents.is_empty());
    assert_eq!(store.prefix(), "/t");

    // A VirtualService that does not compile (a timeout that is no duration) is refused and
    // nothing is written.
    let bad = format!("{VS}    timeout: soon\n");
    let (report, _) = store.apply(&[("vs.yaml".into(), bad)], false).await.unwrap();
    assert!(!report.applied);
    assert_eq!(report.documents[0].outcome, Outcome::Refused);
    assert!(client.range_prefix("/t/").await.unwrap().1.is_empty());

    let (report, set) = store
        .apply(&[("in.yaml".into(), format!("{SE}---\n{VS}"))], false)
        .await
        .unwrap();
    assert!(report.applied, "{report:?}");
    assert_eq!(set.unwrap().documents.len(), 2);
    let keys: Vec<String> = client
        .range_prefix("/t/")
        .await
        .unwrap()
        .1
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        keys,
        vec![
            "/t/resources/ServiceEntry/default/reviews",
            "/t/resources/VirtualService/default/reviews"
        ]
    );
    let (again, _) = store.apply(&[("in.yaml".into(), VS.into())], false).await.unwrap();
    assert_eq!(again.documents[0].outcome, Outcome::Unchanged);

    // Deleting the VirtualService works. (A ServiceEntry still routed to may go too, as in
    // Istio: the route then answers 503 until it is back.)
    let vs = ResourceKey::of_yaml(VS).unwrap();
    let (key, _) = store.delete(&vs).await.unwrap().unwrap();
    assert_eq!(key, "/t/resources/VirtualService/default/reviews");
    assert!(store.delete(&vs).await.unwrap().is_none());

    // Another replica following the prefix serves what this one applied.
    let cp = ControlPlane::new(Default::default(), ServerConfig::default());
    let follower = tokio::spawn(Arc::new(EtcdStore::open(client.clone(), "/t").await.unwrap().0).follow(cp.clone()));
    store.apply(&[("vs.yaml".into(), VS.into())], false).await.unwrap();
    let mut served = 0;
    for _ in 0..50 {
        served = cp.resources().documents.len();
        if served == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, 2);
    follower.abort();
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn hello(node: &str, services: Vec<String>, port: u32) -> ProxyMessage {
    ProxyMessage {
        message: Some(proxy_message::Message::Hello(Hello {
            node_id: node.into(),
            workload: Some(Workload {
                name: node.into(),
                namespace: "default".into(),
                addresses: vec!["127.0.0.1".into()],
                services,
                ports: [("http".to_string(), port)].into_iter().collect(),
                labels: BTreeMap::new().into_iter().collect(),
                ..Default::default()
            }),
            proxy_version: "test".into(),
            protocol_version: PROTOCOL_VERSION,
            serving_version: 0,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_on_one_replica_are_endpoints_on_the_other_until_the_lease_ends() {
    let Some(etcd) = start_etcd(1) else { return };
    let client = EtcdClient::new(&etcd.url).unwrap();
    ready(&etcd, &client).await;
    client
        .put("/r/resources/ServiceEntry/default/reviews", SE, 0)
        .await
        .unwrap();
    let config = ServerConfig {
        grace: Duration::from_secs(2),
        debounce: Duration::from_millis(20),
    };
    let (_, set) = EtcdStore::open(client.clone(), "/r").await.unwrap();
    let a = ControlPlane::new(set.clone(), config.clone());
    let b = ControlPlane::new(set, config);
    let registry_a = tokio::spawn(run_registry(
        client.clone(),
        "/r".into(),
        "a".into(),
        Duration::from_secs(2),
        a.clone(),
    ));
    tokio::spawn(run_registry(
        client.clone(),
        "/r".into(),
        "b".into(),
        Duration::from_secs(2),
        b.clone(),
    ));
    let (addr_a, addr_b) = (common::serve_discovery(&a).await, common::serve_discovery(&b).await);

    // reviews on A; a client on B.
    let (tx_a, rx_a) = mpsc::channel(4);
    tx_a.send(hello("reviews-1", vec!["reviews.test".into()], 18081))
        .await
        .unwrap();
    let mut on_a = DiscoveryClient::new(channel(addr_a).await);
    let _inbound_a = on_a.stream(ReceiverStream::new(rx_a)).await.unwrap().into_inner();
    let (tx_b, rx_b) = mpsc::channel(4);
    tx_b.send(hello("client", vec![], 1)).await.unwrap();
    let mut on_b = DiscoveryClient::new(channel(addr_b).await);
    let mut inbound_b = on_b.stream(ReceiverStream::new(rx_b)).await.unwrap().into_inner();
    let has_reviews = |s: &ringmesh_api::proto::Snapshot| {
        s.endpoints
            .iter()
            .any(|e| e.host == "reviews.test" && e.ports.get("http") == Some(&18081))
    };
    let mut assembler = ringmesh_api::delta::Assembler::new();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(m)) = inbound_b.message().await {
            if let Ok(Some(s)) = assembler.feed(m) {
                if has_reviews(&s) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "B's client never got A's workload as an endpoint");

    // A dies (its registry stops renewing): after the lease TTL the endpoint is gone at B.
    registry_a.abort();
    drop(tx_a);
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(m)) = inbound_b.message().await {
            if let Ok(Some(s)) = assembler.feed(m) {
                if !has_reviews(&s) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(gone, Ok(true), "A's workload outlived its lease");
}
