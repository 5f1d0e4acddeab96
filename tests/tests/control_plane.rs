//! Proxies under a control plane, end to end: endpoints from announced workloads, a canary
//! split moved by the control plane under load with no failed request, a control plane that
//! dies and comes back, a NACK that leaves the proxy on its last good config, and a control
//! plane that refuses the proxy's protocol version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringmesh_api::proto::discovery_server::{Discovery, DiscoveryServer};
use ringmesh_api::proto::{control_message, ControlMessage, ProxyMessage, Refusal, PROTOCOL_VERSION};
use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::control::{serve_on_thread, subscribe, TestControlPlane};
use ringmesh_tests::proxy::{proxy_config, service_entry, temp_dir, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::IoMode;

const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n";
const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews.test\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

fn vs(w1: u32, w2: u32) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  http:\n  - route:\n    - destination: {{host: reviews.test, subset: v1}}\n      weight: {w1}\n    - destination: {{host: reviews.test, subset: v2}}\n      weight: {w2}\n")
}

fn mesh(w1: u32, w2: u32) -> Vec<String> {
    vec![SE.to_string(), DR.to_string(), vs(w1, w2)]
}

/// Two app-side proxies announcing v1 and v2 workloads, one client-side proxy.
struct Mesh {
    cp: TestControlPlane,
    _apps: (Upstream, Upstream),
    _sidecars: (TestProxy, TestProxy),
    client: TestProxy,
    /// The control plane's resource directory: kept for the whole test, across a restart of the
    /// control plane on it, and removed when the mesh drops (last, after everything using it).
    _dir: tempfile::TempDir,
}

fn mesh_up(io: IoMode, w1: u32, w2: u32) -> Mesh {
    let dir = temp_dir();
    let cp = TestControlPlane::start(dir.path(), &mesh(w1, w2));
    let (v1, v2) = (Upstream::named("v1"), Upstream::named("v2"));
    let sidecar = |name: &str, app: &Upstream, version: &str| {
        TestProxy::start(&[proxy_config(
            io,
            "",
            &subscribe(
                cp.addr,
                name,
                &["reviews.test"],
                Some(app.addr),
                &[("version", version)],
            ),
        )])
    };
    let s1 = sidecar("reviews-v1", &v1, "v1");
    let s2 = sidecar("reviews-v2", &v2, "v2");
    let client = TestProxy::start(&[proxy_config(io, "", &subscribe(cp.addr, "client", &[], None, &[]))]);
    Mesh {
        cp,
        _apps: (v1, v2),
        _sidecars: (s1, s2),
        client,
        _dir: dir,
    }
}

fn spread(p: &TestProxy, n: usize) -> HashMap<String, usize> {
    let mut c = Client::connect(p.http());
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = c.get("reviews.test", "/");
        *m.entry(if r.status == 200 {
            r.text()
        } else {
            format!("status {}", r.status)
        })
        .or_default() += 1;
    }
    m
}

/// Closed-loop load running in the background.
struct Load {
    /// Requests answered so far, by all clients.
    answered: Arc<AtomicUsize>,
    /// (requests, failures) once the load ends.
    handle: std::thread::JoinHandle<(usize, usize)>,
}

impl Load {
    /// Waits until `n` requests were answered: the load is flowing through the proxy.
    fn flowing(&self, n: usize) {
        eventually(
            Duration::from_secs(10),
            &format!("{n} requests answered under load"),
            || self.answered.load(Ordering::SeqCst) >= n,
        )
        .unwrap();
    }

    /// Waits for the end of the load: (requests, failures).
    fn join(self) -> (usize, usize) {
        self.handle.join().unwrap()
    }
}

/// Closed-loop load from `threads` keep-alive clients for `secs`.
fn load(p: &TestProxy, threads: usize, secs: u64) -> Load {
    let addr = p.http();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let handle = std::thread::spawn(move || {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + Duration::from_secs(secs);
                    let mut c = Client::connect(addr);
                    let (mut n, mut failed) = (0, 0);
                    while std::time::Instant::now() < until {
                        c.send(b"GET / HTTP/1.1\r\nHost: reviews.test\r\n\r\n");
                        match c.response() {
                            Some(r) if r.status == 200 => {}
                            _ => {
                                failed += 1;
                                c = Client::connect(addr);
                            }
                        }
                        n += 1;
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    (n, failed)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((0, 1)))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    Load { answered, handle }
}

fn canary_moves_under_load_without_failures(io: IoMode) {
    let m = mesh_up(io, 90, 10);
    // Endpoints come from the announced workloads; the split from the control plane.
    eventually(Duration::from_secs(10), "v1 to answer most of 20 requests", || {
        spread(&m.client, 20).get("v1").copied().unwrap_or(0) > 10
    })
    .unwrap();
    let got = spread(&m.client, 2000);
    let v2 = got.get("v2").copied().unwrap_or(0);
    assert!((120..=280).contains(&v2), "90/10 over 2000: {got:?}");
    assert_eq!(
        got.values().sum::<usize>(),
        got.get("v1").copied().unwrap_or(0) + v2,
        "failures: {got:?}"
    );

    // Move everything to v2 while 2,000 rps flow: no request fails.
    let running = load(&m.client, 4, 3);
    running.flowing(200);
    m.cp.apply(&mesh(0, 100));
    let (requests, failed) = running.join();
    assert_eq!(failed, 0, "failed requests during the change");
    assert!(requests > 2000, "{requests}");
    if let Err(e) = eventually(Duration::from_secs(1), "all of 50 requests on v2", || {
        spread(&m.client, 50).get("v2") == Some(&50)
    }) {
        panic!("{e}: traffic did not move within a second");
    }
    // Every proxy acknowledged the newest version.
    let g = m.cp.cp.generation();
    if let Err(e) = eventually(
        Duration::from_secs(5),
        "every proxy SYNCED on the newest version",
        || m.cp.status().iter().all(|p| p.state(m.cp.cp.generation()) == "SYNCED"),
    ) {
        panic!("{e}: {:?} at {g}", m.cp.status());
    }
}

fn control_plane_down_loses_nothing(io: IoMode) {
    let mut m = mesh_up(io, 0, 100);
    eventually(Duration::from_secs(10), "all of 10 requests on v2", || {
        spread(&m.client, 10).get("v2") == Some(&10)
    })
    .unwrap();
    let running = load(&m.client, 4, 3);
    running.flowing(200);
    let addr = m.cp.addr;
    let dir = m.cp.dir.clone();
    m.cp.stop();
    let (requests, failed) = running.join();
    assert_eq!(failed, 0, "failed requests with the control plane down");
    assert!(requests > 1000, "{requests}");
    assert_eq!(
        spread(&m.client, 20).get("v2"),
        Some(&20),
        "proxies keep their last config"
    );
    let status = || {
        let (_, body) = admin_get(m.client.admin(), "/control_plane");
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
    };
    let serving = status()["serving_version"].as_u64().unwrap_or(0);
    assert!(serving > 0, "{}", status());
    if let Err(e) = eventually(Duration::from_secs(5), "/control_plane to say retrying", || {
        status()["state"] == "retrying"
    }) {
        panic!(
            "{e}: the admin server does not show the lost control plane: {}",
            status()
        );
    }
    assert!(
        status()["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        status()
    );

    // Restart on the same port with a changed split: proxies reconnect and resync.
    std::fs::write(dir.join("mesh.yaml"), mesh(100, 0).join("\n---\n")).unwrap();
    m.cp = TestControlPlane::serve(dir, addr);
    if let Err(e) = eventually(Duration::from_secs(15), "all of 10 requests on v1", || {
        spread(&m.client, 10).get("v1") == Some(&10)
    }) {
        panic!("{e}: proxies did not resync after the restart");
    }
    let now = status();
    assert_eq!(now["state"], "connected", "{now}");
    assert_eq!(now["last_error"], serde_json::Value::Null, "{now}");
    assert!(now["serving_version"].as_u64().unwrap_or(0) > 0, "{now}");
}

fn nack_keeps_last_good_config(io: IoMode) {
    let dir = temp_dir();
    let cp = TestControlPlane::start(dir.path(), &mesh(100, 0));
    let v1 = Upstream::named("v1");
    let app = TestProxy::start(&[proxy_config(
        io,
        "",
        &subscribe(cp.addr, "app", &["reviews.test"], Some(v1.addr), &[("version", "v1")]),
    )]);
    // This proxy's own file declares a host the control plane will also send: once it does,
    // the proxy's compiler refuses the combination, and the proxy must say so (NACK).
    let own = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: local-ratings\nspec:\n  hosts: [ratings.test]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]\n".to_string();
    let client = TestProxy::start(&[
        proxy_config(io, "", &subscribe(cp.addr, "client", &[], None, &[])),
        own.clone(),
    ]);
    eventually(Duration::from_secs(10), "all of 5 requests on v1", || {
        spread(&client, 5).get("v1") == Some(&5)
    })
    .unwrap();

    let clash = own.replace("local-ratings", "ratings");
    let mut docs = mesh(100, 0);
    docs.push(clash);
    cp.apply(&docs);
    if let Err(e) = eventually(Duration::from_secs(5), "the client proxy NACKED", || {
        cp.status()
            .iter()
            .any(|p| p.node_id == "client" && p.state(cp.cp.generation()) == "NACKED")
    }) {
        panic!("{e}: {:?}", cp.status());
    }
    let status = cp.status().into_iter().find(|p| p.node_id == "client").unwrap();
    assert!(
        status.nack.as_deref().unwrap_or("").contains("ratings.test"),
        "{status:?}"
    );
    // The app-side proxy has no clash and is in sync; the client keeps serving the last good config.
    if let Err(e) = eventually(Duration::from_secs(5), "the app proxy SYNCED", || {
        cp.status()
            .iter()
            .any(|p| p.node_id == "app" && p.state(cp.cp.generation()) == "SYNCED")
    }) {
        panic!("{e}: generation {}: {:?}", cp.cp.generation(), cp.status());
    }
    assert_eq!(spread(&client, 10).get("v1"), Some(&10));
    let (_, dump) = admin_get(client.admin(), "/config_dump");
    assert!(dump.contains("reviews.test"));
    drop(app);
}

/// An app whose readiness probe fails is withdrawn from the other proxies at once, and comes
/// back when it passes again; no request fails on the way.
fn unready_app_is_withdrawn(io: IoMode) {
    use std::sync::atomic::AtomicBool;
    let dir = temp_dir();
    let cp = TestControlPlane::start(dir.path(), &[SE.to_string()]);
    let v1 = Upstream::named("v1");
    let ready = Arc::new(AtomicBool::new(true));
    let flag = ready.clone();
    let v2 = Upstream::start("v2", move |r| match r.target.as_str() {
        "/ready" if !flag.load(Ordering::SeqCst) => ringmesh_tests::upstream::Reply::status(503),
        _ => ringmesh_tests::upstream::Reply::ok("v2"),
    });
    let probe = format!(
        "    readinessProbe: {{httpGet: {{path: /ready, port: {}}}, periodSeconds: 1, failureThreshold: 1}}\n",
        v2.addr.port()
    );
    let _s1 = TestProxy::start(&[proxy_config(
        io,
        "",
        &subscribe(cp.addr, "v1", &["reviews.test"], Some(v1.addr), &[("version", "v1")]),
    )]);
    let _s2 = TestProxy::start(&[proxy_config(
        io,
        "",
        &(subscribe(cp.addr, "v2", &["reviews.test"], Some(v2.addr), &[("version", "v2")]) + &probe),
    )]);
    let client = TestProxy::start(&[proxy_config(io, "", &subscribe(cp.addr, "client", &[], None, &[]))]);
    let both = |m: &HashMap<String, usize>| m.len() == 2 && m.contains_key("v1") && m.contains_key("v2");
    if let Err(e) = eventually(Duration::from_secs(10), "40 requests spread over v1 and v2", || {
        both(&spread(&client, 40))
    }) {
        panic!("{e}: {:?}", spread(&client, 40));
    }

    ready.store(false, Ordering::SeqCst);
    if let Err(e) = eventually(Duration::from_secs(5), "all of 40 requests on v1", || {
        spread(&client, 40).get("v1") == Some(&40)
    }) {
        panic!(
            "{e}: unready v2 still served: {:?} {:?}",
            spread(&client, 40),
            cp.status()
        );
    }
    assert!(cp.status().iter().any(|p| p.node_id == "v2" && !p.ready));

    ready.store(true, Ordering::SeqCst);
    if let Err(e) = eventually(Duration::from_secs(5), "40 requests spread over v1 and v2", || {
        both(&spread(&client, 40))
    }) {
        panic!("{e}: v2 did not come back");
    }
}

/// A control plane that serves only protocol versions newer than this proxy's: it answers every
/// stream with the `Refusal` a real one sends (`ringmesh_api::proto::skew_refusal`'s wording).
struct NewerControlPlane;

#[tonic::async_trait]
impl Discovery for NewerControlPlane {
    type StreamStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ControlMessage, tonic::Status>> + Send + 'static>>;

    async fn stream(
        &self,
        _request: tonic::Request<tonic::Streaming<ProxyMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let (min, current) = (PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2);
        let refusal = ControlMessage {
            message: Some(control_message::Message::Refusal(Refusal {
                message: format!(
                    "protocol version {PROTOCOL_VERSION} is not supported by this control plane (it speaks \
                     version {current} and serves versions {min} to {current}); upgrade the proxy"
                ),
                control_protocol_version: current,
                min_supported_version: min,
            })),
        };
        Ok(tonic::Response::new(Box::pin(tokio_stream::once(Ok(refusal)))))
    }
}

/// Serves [`NewerControlPlane`] on an ephemeral loopback port for the rest of the test process.
fn newer_control_plane() -> std::net::SocketAddr {
    let router = tonic::transport::Server::builder().add_service(DiscoveryServer::new(NewerControlPlane));
    serve_on_thread("127.0.0.1:0".parse().expect("addr"), router, std::future::pending()).0
}

/// Version skew, as the user meets it: a proxy whose control plane no longer serves its
/// protocol keeps serving its own config, and its admin server says why it has no other.
fn refused_proxy_keeps_serving_and_says_why(io: IoMode) {
    let cp = newer_control_plane();
    let v1 = Upstream::named("v1");
    let own = service_entry("reviews", "reviews.test", 9080, &[(v1.addr, &[])]);
    let proxy = TestProxy::start(&[proxy_config(io, "", &subscribe(cp, "old-proxy", &[], None, &[])), own]);
    let mut last = serde_json::Value::Null;
    let refused = eventually(Duration::from_secs(10), "/control_plane to say refused", || {
        let (code, body) = admin_get(proxy.admin(), "/control_plane");
        last = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(format!("{code} {body}")));
        last["state"] == "refused"
    });
    if let Err(e) = refused {
        panic!("{e}: admin /control_plane: {last}");
    }
    let error = last["last_error"].as_str().unwrap_or_default();
    let wanted = format!(
        "protocol version {PROTOCOL_VERSION} is not supported by this control plane (it speaks version {}",
        PROTOCOL_VERSION + 2
    );
    assert!(error.contains(&wanted) && error.contains("upgrade the proxy"), "{last}");
    assert_eq!(last["protocol_version"], PROTOCOL_VERSION, "{last}");
    assert_eq!(
        last["serving_version"], 0,
        "nothing came from the control plane: {last}"
    );
    assert_eq!(spread(&proxy, 10).get("v1"), Some(&10), "its own config keeps serving");

    // A proxy without a control plane says so rather than showing an empty state.
    let alone = TestProxy::start(&[proxy_config(io, "", "")]);
    assert_eq!(admin_get(alone.admin(), "/control_plane").0, 404);
}

/// Under a control plane, a proxy is ready once the control plane's first config is applied,
/// not before: until then `/healthz/ready` and `/ready` answer 503 and say what it waits for
/// (it could only answer 404 `no route`). Losing the control plane later does not make it
/// unready: it keeps serving its last good config.
fn ready_once_the_first_config_is_applied(io: IoMode) {
    let dir = temp_dir();
    std::fs::write(dir.path().join("mesh.yaml"), mesh(100, 0).join("\n---\n")).unwrap();
    // The control plane's port, held by a socket that is bound but not listening: connecting
    // to it is refused (nothing listens yet), and no other test's listener can take the port
    // meanwhile, as one could after a listener on port 0 was dropped.
    let reserved = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = reserved.local_addr().unwrap().as_socket().unwrap();
    let v1 = Upstream::named("v1");
    let _app = TestProxy::start(&[proxy_config(
        io,
        "",
        &subscribe(
            addr,
            "reviews-v1",
            &["reviews.test"],
            Some(v1.addr),
            &[("version", "v1")],
        ),
    )]);
    let client = TestProxy::start(&[proxy_config(io, "", &subscribe(addr, "client", &[], None, &[]))]);

    // Nothing listens at the control plane's address yet.
    let (code, body) = admin_get(client.health(), "/healthz/ready");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("waiting for the first config from the control plane"),
        "{body}"
    );
    let (code, body) = admin_get(client.admin(), "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("INITIALIZING: waiting for the first config from the control plane"),
        "{body}"
    );
    if let Err(e) = eventually(
        Duration::from_secs(10),
        "/healthz/ready to name the unreachable control plane",
        || {
            admin_get(client.health(), "/healthz/ready")
                .1
                .contains(&format!("at {addr} (last error: cannot reach the control plane"))
        },
    ) {
        panic!(
            "{e}: the reason does not name the control plane and the error: {}",
            admin_get(client.health(), "/healthz/ready").1
        );
    }
    assert_eq!(Client::connect(client.http()).get("reviews.test", "/").status, 404);

    drop(reserved);
    let mut cp = TestControlPlane::serve(dir.path().to_path_buf(), addr);
    if let Err(e) = eventually(Duration::from_secs(15), "/healthz/ready to answer 200", || {
        admin_get(client.health(), "/healthz/ready") == (200, "ready\n".into())
    }) {
        panic!("{e}: {:?}", admin_get(client.health(), "/healthz/ready"));
    }
    assert_eq!(admin_get(client.admin(), "/ready"), (200, "LIVE\n".into()));
    if let Err(e) = eventually(Duration::from_secs(10), "all of 5 requests on v1", || {
        spread(&client, 5).get("v1") == Some(&5)
    }) {
        panic!("{e}: {:?}", spread(&client, 5));
    }

    cp.stop();
    let state = || {
        serde_json::from_str::<serde_json::Value>(&admin_get(client.admin(), "/control_plane").1).unwrap_or_default()
    };
    eventually(Duration::from_secs(5), "/control_plane to say retrying", || {
        state()["state"] == "retrying"
    })
    .unwrap();
    assert_eq!(admin_get(client.health(), "/healthz/ready"), (200, "ready\n".into()));
    assert_eq!(admin_get(client.admin(), "/ready"), (200, "LIVE\n".into()));
}

ringmesh_tests::both_io!(
    ready_once_the_first_config_is_applied,
    canary_moves_under_load_without_failures,
    control_plane_down_loses_nothing,
    nack_keeps_last_good_config,
    unready_app_is_withdrawn,
    refused_proxy_keeps_serving_and_says_why
);
