//! The `--etcd` backend against a real etcd (`etcd` on `PATH`, Debian's `etcd-server`), and
//! `controlPlane.addresses` compiled. Without etcd the tests that need it fail, naming the
//! package; `RINGMESH_SKIP_ETCD=1` skips them instead, for a developer machine without etcd
//! (CI never sets it).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::FakeProxy;
use ringmesh_api::proto::{Workload, PROTOCOL_VERSION};
use ringmesh_api::{compile, load_str, CompileInput};
use ringmesh_control::admin::AdminService;
use ringmesh_control::etcd::{run_registry, EtcdClient, EtcdStore};
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::{Outcome, ResourceKey};
use tokio_stream::wrappers::TcpListenerStream;

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

/// etcd's binary, from `PATH`. Missing, it fails the test unless `RINGMESH_SKIP_ETCD=1`, which
/// makes it `None` (skip).
fn etcd_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("RINGMESH_SKIP_ETCD").is_ok_and(|v| v == "1"),
            "etcd is not installed (apt-get install etcd-server); RINGMESH_SKIP_ETCD=1 skips the tests that need it"
        );
        eprintln!("skipped: etcd is not installed and RINGMESH_SKIP_ETCD=1");
    }
    found
}

/// A free loopback port: one the kernel just handed out (and took back), unlike a range computed
/// from the pid, which could land on a port another test or an outgoing connection holds.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts etcd; `None` only when [`etcd_binary`] says to skip.
fn start_etcd(slot: u16) -> Option<Etcd> {
    let binary = etcd_binary()?;
    let (client, peer) = (free_port(), free_port());
    // A guard: removed on every way out, a failed start included.
    let dir = tempfile::Builder::new()
        .prefix(&format!("ringmesh-etcd-{slot}-"))
        .tempdir()
        .expect("a temporary directory");
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(binary)
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
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).expect("etcd's log file"))
        .spawn()
        .expect("etcd starts");
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
    if let Err(e) = common::eventually_async(Duration::from_secs(5), "the follower to serve both documents", || {
        cp.resources().documents.len() == 2
    })
    .await
    {
        panic!("{e}: {:?}", cp.resources().documents);
    }
    follower.abort();
}

/// The proxy of workload `node` serving `services` on `port`, connected to `addr`.
async fn connect(addr: SocketAddr, node: &str, services: Vec<String>, port: u32) -> FakeProxy {
    let workload = Workload {
        name: node.into(),
        namespace: "default".into(),
        addresses: vec!["127.0.0.1".into()],
        services,
        ports: [("http".to_string(), port)].into_iter().collect(),
        ..Default::default()
    };
    FakeProxy::connect(addr, common::hello(node, workload, PROTOCOL_VERSION)).await
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
    let on_a = connect(addr_a, "reviews-1", vec!["reviews.test".into()], 18081).await;
    let mut on_b = connect(addr_b, "client", vec![], 1).await;
    let has_reviews = |s: &ringmesh_api::proto::Snapshot| {
        s.endpoints
            .iter()
            .any(|e| e.host == "reviews.test" && e.ports.get("http") == Some(&18081))
    };
    assert!(
        on_b.snapshot_where(Duration::from_secs(5), has_reviews).await.is_some(),
        "B's client never got A's workload as an endpoint"
    );

    // A dies (its registry stops renewing): after the lease TTL the endpoint is gone at B.
    registry_a.abort();
    drop(on_a);
    assert!(
        on_b.snapshot_where(Duration::from_secs(10), |s| !has_reviews(s))
            .await
            .is_some(),
        "A's workload outlived its lease"
    );
}

#[tokio::test]
async fn an_unreachable_etcd_at_start_is_an_error_naming_it() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let err = EtcdStore::open(EtcdClient::new(&url).unwrap(), "/x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("etcd at {url} is unreachable")), "{err}");
}

/// A TCP relay to `to` that counts the connections it accepted; dropping it closes them all
/// (a member going away).
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the task drops its `JoinSet`, which aborts every connection's copy.
        self.task.abort();
    }
}

async fn relay(to: SocketAddr) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            connections.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Relay { addr, accepted, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_watches_share_one_connection_and_fail_over_to_the_next_member() {
    let Some(etcd) = start_etcd(2) else { return };
    let etcd_addr: SocketAddr = etcd.url.trim_start_matches("http://").parse().unwrap();
    ready(&etcd, &EtcdClient::new(&etcd.url).unwrap()).await;
    let (first, second) = (relay(etcd_addr).await, relay(etcd_addr).await);
    let client = EtcdClient::new(&format!("http://{},http://{}", first.addr, second.addr)).unwrap();

    // Many calls and a watch: one connection, to the first member.
    let (revision, _) = client.range_prefix("/c/").await.unwrap();
    let mut watch = client.watch("/c/", revision + 1).await.unwrap();
    for i in 0..20 {
        client.put(&format!("/c/{i}"), "v", 0).await.unwrap();
        assert_eq!(client.range_prefix("/c/").await.unwrap().1.len(), i + 1);
    }
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("a change within 5 s")
        .unwrap();
    assert_eq!(first.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(second.accepted.load(Ordering::SeqCst), 0);

    // The first member goes away: its watch fails, and calls move on to the second, and stay.
    drop(first);
    let err = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = watch.changed().await {
                return e;
            }
        }
    })
    .await
    .expect("the watch fails within 5 s");
    assert!(err.is_unreachable(), "{err}");
    let (revision, kvs) = client.range_prefix("/c/").await.unwrap();
    assert_eq!(kvs.len(), 20);
    let mut watch = client.watch("/c/", revision + 1).await.unwrap();
    client.delete("/c/0").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("a change within 5 s")
        .unwrap();
    for _ in 0..10 {
        client.range_prefix("/c/").await.unwrap();
    }
    assert_eq!(second.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_etcd_when_the_control_plane_cannot_reach_it() {
    let Some(mut etcd) = start_etcd(3) else { return };
    let client = EtcdClient::new(&etcd.url).unwrap();
    ready(&etcd, &client).await;
    let (store, set) = EtcdStore::open(client, "/u").await.unwrap();
    let cp = ControlPlane::new(set, ServerConfig::default());
    let admin = AdminService::with_etcd(Arc::new(store), cp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(admin.service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), SE).unwrap();
    let apply = || {
        let file = file.path().to_owned();
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ringmesh"))
                .args(["--control-plane", addr.as_str(), "apply", "-f"])
                .arg(file)
                .output()
                .unwrap()
        })
    };
    let out = apply().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    etcd.child.kill().unwrap();
    etcd.child.wait().unwrap();
    let out = apply().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the control plane at {addr} cannot reach its store: etcd at {} is unreachable",
            etcd.url
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot reach the control plane"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_registry_lease_is_replaced_and_the_workloads_rewritten() {
    let Some(etcd) = start_etcd(4) else { return };
    let client = EtcdClient::new(&etcd.url).unwrap();
    ready(&etcd, &client).await;
    let config = ServerConfig {
        grace: Duration::from_secs(2),
        debounce: Duration::from_millis(20),
    };
    let cp = ControlPlane::new(Default::default(), config);
    tokio::spawn(run_registry(
        client.clone(),
        "/l".into(),
        "a".into(),
        Duration::from_secs(2),
        cp.clone(),
    ));
    let addr = common::serve_discovery(&cp).await;
    let _w1 = connect(addr, "w1", vec!["w.test".into()], 18081).await;

    // The record's lease, once it is written under one other than `not`.
    let lease_other_than = |not: i64| {
        let client = client.clone();
        async move {
            for _ in 0..100 {
                let kvs = client.range_prefix("/l/workloads/w1").await.unwrap().1;
                if let Some(kv) = kvs.into_iter().find(|kv| kv.lease != 0 && kv.lease != not) {
                    return kv.lease;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no record of w1 under a lease other than {not} within 10 s");
        }
    };
    let lease = lease_other_than(0).await;
    // The lease ends early (as when etcd is away longer than its TTL): the registry's next
    // renewal finds it gone, and a new lease holds the record again.
    client.revoke(lease).await.unwrap();
    let renewed = lease_other_than(lease).await;
    assert_ne!(renewed, lease);
}
