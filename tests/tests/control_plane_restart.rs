//! A control plane killed with `kill -9` and started again, under README's "Under a control
//! plane" topology run as real processes, with traffic flowing through the client's sidecar the
//! whole time: not one request may fail, whatever order the sidecars reconnect in — the client's
//! before the sidecars that announce its upstreams, between them, or after them — with the
//! directory store and with etcd.
//!
//! The order is forced, not left to timing: the sidecars that must come back later are paused
//! (SIGSTOP) before the kill and resumed (SIGCONT) one by one, each once the ones before it
//! applied a config from the new control plane. While the client's sidecar runs on a config
//! from the new control plane and an upstream's sidecar is still paused, a few hundred
//! requests go through it: a restarted control plane that sent it no endpoints for that
//! upstream fails them (503 `no healthy upstream`). Each round ends once the control plane's
//! registry is warm again (its grace period after start passed, and it said so to the client).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::Client;
use ringmesh_tests::procs::{ExampleMesh, Store};

/// The control plane's grace period (and so its warm-up) in these tests: long enough that a
/// paused sidecar is resumed well within it on a busy machine, short enough for several rounds.
const GRACE: &str = "8s";

/// Requests that must go through each critical stretch.
const REQUESTS_PER_STEP: u64 = 300;

/// Closed-loop traffic through the client's sidecar on keep-alive connections, as `wrk` sends
/// it: every answer other than 200, and every broken connection, is a failure.
struct Traffic {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<(u64, Vec<String>)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: std::net::SocketAddr, connections: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new((0u64, Vec::new())));
        let threads = (0..connections)
            .map(|_| {
                let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
                std::thread::spawn(move || {
                    let fail = |what: String| {
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.0 += 1;
                        if f.1.len() < 20 {
                            f.1.push(what);
                        }
                    };
                    let mut conn: Option<Client> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match std::net::TcpStream::connect(addr) {
                                Ok(s) => {
                                    // Long enough for a sidecar paused by the test to be resumed.
                                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                                    let _ = s.set_nodelay(true);
                                    conn.insert(Client::on(s))
                                }
                                Err(e) => {
                                    fail(format!("connect: {e}"));
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            },
                        };
                        use std::io::Write;
                        let sent = c
                            .stream
                            .write_all(b"GET / HTTP/1.1\r\nHost: reviews.local\r\n\r\n")
                            .is_ok();
                        match sent.then(|| c.response()).flatten() {
                            Some(r) if r.status == 200 => {}
                            Some(r) => fail(format!("{} {}", r.status, r.text().trim())),
                            None => {
                                fail("connection closed without an answer".into());
                                conn = None;
                            }
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            answered,
            failures,
            threads,
        }
    }

    /// Waits until `n` more requests were answered (or 60 s passed: then it says so).
    fn wait_for(&self, n: u64) -> Result<(), String> {
        let target = self.answered.load(Ordering::Relaxed) + n;
        eventually(Duration::from_secs(60), &format!("{n} more requests answered"), || {
            self.answered.load(Ordering::Relaxed) >= target
        })
        .map_err(|e| format!("traffic stalled: {e}"))
    }

    fn failures(&self) -> (u64, Vec<String>) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let (failed, examples) = self.failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.answered.load(Ordering::Relaxed), failed, examples)
    }
}

/// Whether the client's sidecar was told the control plane's registry is warm (a proxy or
/// control plane that does not know the flag counts as warm).
fn client_warm(mesh: &ExampleMesh) -> bool {
    let s = mesh.proxy("client").control_plane();
    s["state"] == "connected" && s["registry_warming"] != true
}

/// One kill and restart: the sidecars in `first` reconnect, then those in `then`, in order.
fn restart(mesh: &mut ExampleMesh, traffic: &Traffic, first: &[&str], then: &[&str]) -> Result<(), String> {
    let before: Vec<(&str, u64)> = first
        .iter()
        .chain(then)
        .map(|n| (*n, mesh.proxy(n).config_version()))
        .collect();
    let was = |n: &str| before.iter().find(|b| b.0 == n).map_or(0, |b| b.1);
    for n in then {
        mesh.proxy_proc(n).pause();
    }
    mesh.kill_control();
    mesh.start_control();
    let resynced = |mesh: &ExampleMesh, n: &str| {
        eventually(
            Duration::from_secs(30),
            &format!("{n} to apply a config from the restarted control plane"),
            || mesh.proxy(n).config_version() > was(n),
        )
        .map_err(|e| e.to_string())
    };
    for n in first {
        resynced(mesh, n)?;
    }
    if first.contains(&"client") {
        traffic.wait_for(REQUESTS_PER_STEP)?;
    }
    for n in then {
        mesh.proxy_proc(n).resume();
        resynced(mesh, n)?;
        traffic.wait_for(REQUESTS_PER_STEP)?;
    }
    mesh.control_running()?;
    // The warm-up ends within the grace period: the client is told, keeps every endpoint
    // announced again, and traffic goes on.
    if let Err(e) = eventually(Duration::from_secs(30), "the client told the registry is warm", || {
        client_warm(mesh)
    }) {
        return Err(format!("{e}: {}", mesh.proxy("client").control_plane()));
    }
    traffic.wait_for(REQUESTS_PER_STEP)
}

/// Starts the example on `store`, checks both versions serve, then kills and restarts the
/// control plane twice in each reconnect order, counting every failed request.
fn restarts_fail_no_request(store: Store) {
    let mut mesh = ExampleMesh::start(ringmesh_tests::programs!(), store, &["--grace", GRACE]);
    let client = mesh.proxy("client");
    // README's wait: the client's sidecar is ready once its first config is applied; the
    // endpoints follow when the reviews sidecars have announced themselves.
    let both = || {
        let mut c = match std::net::TcpStream::connect(client.outbound) {
            Ok(s) => Client::on(s),
            Err(_) => return false,
        };
        let _ = c.stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            use std::io::Write;
            if c.stream
                .write_all(b"GET / HTTP/1.1\r\nHost: reviews.local\r\n\r\n")
                .is_err()
            {
                return false;
            }
            match c.response() {
                Some(r) if r.status == 200 => {
                    seen.insert(r.header("x-ringmesh-instance").unwrap_or("").to_owned());
                }
                _ => return false,
            }
        }
        seen.len() == 2
    };
    if let Err(e) = eventually(Duration::from_secs(60), "the client ready, serving v1 and v2", || {
        client.ready_status() == 200 && both()
    }) {
        panic!("{e}: the example did not come up:\n{}", mesh.logs());
    }
    if let Err(e) = eventually(Duration::from_secs(30), "the client told the registry is warm", || {
        client_warm(&mesh)
    }) {
        panic!("{e}:\n{}", mesh.logs());
    }
    let traffic = Traffic::start(client.outbound, 2);
    let orders: [(&str, &[&str], &[&str]); 3] = [
        ("client first", &["client"], &["reviews-v1", "reviews-v2"]),
        ("client between", &["reviews-v1"], &["client", "reviews-v2"]),
        ("client last", &["reviews-v1", "reviews-v2"], &["client"]),
    ];
    let mut rounds = Vec::new();
    for round in 0..2 {
        for (name, first, then) in orders {
            let failed_before = traffic.failures().0;
            if let Err(e) = restart(&mut mesh, &traffic, first, then) {
                for (n, p, _) in &mesh.proxies {
                    // Resume any sidecar left paused, so that the logs below are whole.
                    if then.contains(&n.as_str()) {
                        p.resume();
                    }
                }
                panic!("round {round}, {name}: {e}\n{}", mesh.logs());
            }
            rounds.push(format!(
                "round {round}, {name}: {} failed",
                traffic.failures().0 - failed_before
            ));
        }
    }
    let (answered, failed, examples) = traffic.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {answered} requests failed across control-plane restarts:\n{}\nfirst failures: {examples:#?}\n{}",
        rounds.join("\n"),
        mesh.logs()
    );
    assert!(answered >= 6 * 3 * REQUESTS_PER_STEP, "{answered} requests");
}

#[test]
fn restarts_fail_no_request_with_the_directory_store() {
    restarts_fail_no_request(Store::Directory);
}

#[test]
fn restarts_fail_no_request_with_etcd() {
    let etcd = ringmesh_tests::procs::Etcd::start();
    restarts_fail_no_request(Store::Etcd {
        url: etcd.url.clone(),
        prefix: "/ringmesh-restart-test".into(),
    });
}
