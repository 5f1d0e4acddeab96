//! Operating without loss: `ringmesh-loadgen` at 2,000 rps through real `ringmesh-proxy`
//! processes in front of three `ringmesh-echo` processes, counting every failed request, while
//!
//! * the proxy is sent SIGTERM with a successor (`--takeover`) already serving the same ports:
//!   not one request fails, over HTTP/1.1 and over HTTP/2 (h2c); the old proxy exits after
//!   draining, well within its drain timeout, and the successor serves the rest;
//! * its config file is changed ten times (endpoints and routes), each change applied before
//!   the next: not one request fails;
//! * one of the three echoes is killed (`kill -9`) with Istio's retries on: under 0.1 % fail,
//!   and each failure is one the proxy answered and counted (status and response flag).
//!
//! And, in-process on both drivers, the drain's parts one by one: a response sent while
//! draining says `Connection: close`, an idle keep-alive connection is closed after the grace,
//! an HTTP/2 client gets `GOAWAY` and its stream in flight completes, a TCP proxy connection
//! runs on past the grace and the drain ends when it does.
//!
//! The load runs take turns (`LOAD`): two at once on a 2-core machine would measure the machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmesh_loadgen::{run_load_with, LoadConfig, LoadReport, Protocol, RunControl};
use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::procs::{free_ports, Proc, Programs, ProxyAddrs};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

/// The rate.
const RATE: f64 = 2000.0;
/// Each run's length: long enough for the event and what follows it, short enough for the file.
const RUN: Duration = Duration::from_secs(5);
/// The proxies' drain timeout: an old proxy must exit well within it (a quarter: the idle
/// grace is 1 s, and exits take 20–60 ms here) once its clients moved to the successor.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// One load run at a time in this file.
static LOAD: Mutex<()> = Mutex::new(());

/// Three echo processes and a folder for the proxies' config and logs.
struct Mesh {
    programs: Programs,
    dir: tempfile::TempDir,
    echoes: Vec<(Proc, SocketAddr)>,
    /// The proxies' HTTP listener (shared by a predecessor and its successor).
    http: SocketAddr,
}

impl Mesh {
    fn start() -> Mesh {
        let programs = ringmesh_tests::programs!();
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-zero-loss-")
            .tempdir()
            .expect("temp dir");
        let ports = free_ports(4);
        let echoes = ["a", "b", "c"]
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                let args = ["--listen", &addr.to_string(), "--instance", name, "--body-size", "16"].map(String::from);
                let p = Proc::spawn(
                    &format!("echo-{name}"),
                    &programs.echo,
                    &args,
                    &dir.path().join(format!("echo-{name}.log")),
                );
                (p, addr)
            })
            .collect::<Vec<_>>();
        for (p, addr) in &echoes {
            eventually(Duration::from_secs(10), &format!("{} listening", p.name), || {
                std::net::TcpStream::connect(addr).is_ok()
            })
            .unwrap();
        }
        Mesh {
            programs,
            dir,
            echoes,
            http: SocketAddr::from(([127, 0, 0, 1], ports[3])),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.yaml")
    }

    /// The proxies' config: two workers, the HTTP listener on `self.http`, `svc.test` served by
    /// the echoes at `endpoints` (indexes), round robin, with retries, and a response header
    /// naming the config's `generation`.
    fn config(&self, endpoints: &[usize], generation: usize) -> String {
        let eps: Vec<(SocketAddr, &[(&str, &str)])> = endpoints.iter().map(|i| (self.echoes[*i].1, &[][..])).collect();
        let proxy = proxy_config(IoMode::Auto, "", "")
            .replacen("workers: 1", "workers: 2", 1)
            .replacen(
                "- name: http\n    address: 127.0.0.1:0",
                &format!("- name: http\n    address: {}", self.http),
                1,
            );
        let vs = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.test]\n  http:\n  - route:\n    - destination: {{host: svc.test}}\n      headers:\n        response:\n          set: {{x-generation: \"{generation}\"}}\n    retries: {{attempts: 3, retryOn: \"connect-failure,refused-stream,reset,gateway-error\"}}\n"
        );
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.test\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n";
        [proxy, service_entry("svc", "svc.test", 80, &eps), vs, dr.to_owned()].join("\n---\n")
    }

    /// Writes the config file whole (write, then rename: the proxy never reads half of it).
    fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join("proxy.yaml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    /// Starts a proxy process on the config file with admin, health and metrics ports of its
    /// own, and waits until it is ready.
    fn proxy(&self, name: &str, takeover: bool) -> (Proc, ProxyAddrs, SocketAddr) {
        let ports = free_ports(3);
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut args = vec![
            "--config".to_owned(),
            self.config_path().display().to_string(),
            "--admin-address".to_owned(),
            addr(ports[0]).to_string(),
            "--health-address".to_owned(),
            addr(ports[1]).to_string(),
            "--metrics-address".to_owned(),
            addr(ports[2]).to_string(),
            "--drain-timeout".to_owned(),
            format!("{}s", DRAIN_TIMEOUT.as_secs()),
            "--watch-interval".to_owned(),
            "100ms".to_owned(),
        ];
        if takeover {
            args.push("--takeover".to_owned());
        }
        let p = Proc::spawn(
            name,
            &self.programs.proxy,
            &args,
            &self.dir.path().join(format!("{name}.log")),
        );
        let addrs = ProxyAddrs {
            admin: addr(ports[0]),
            health: addr(ports[1]),
            outbound: self.http,
        };
        if let Err(e) = eventually(Duration::from_secs(20), &format!("{name} ready"), || {
            addrs.ready_status() == 200
        }) {
            panic!("{e}\n{}", p.log());
        }
        (p, addrs, addr(ports[2]))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                out.push_str(&format!(
                    "--- {}\n{}\n",
                    path.display(),
                    std::fs::read_to_string(&path).unwrap_or_default()
                ));
            }
        }
        out
    }
}

/// A load run going on in the background.
struct Load {
    control: Arc<RunControl>,
    thread: std::thread::JoinHandle<anyhow::Result<LoadReport>>,
}

impl Load {
    /// `ringmesh-loadgen` at [`RATE`] for [`RUN`] to `svc.test` through `addr`: HTTP/1.1 on
    /// 32 keep-alive connections, or HTTP/2 with 8 streams on each of 4 connections. No warmup:
    /// every request counts.
    fn start(addr: SocketAddr, protocol: Protocol) -> Load {
        let mut c = LoadConfig::new(&format!("http://{addr}/")).expect("loopback URL");
        c.headers = vec![("Host".to_owned(), "svc.test".to_owned())];
        c.rate = RATE;
        c.protocol = protocol;
        (c.connections, c.streams) = match protocol {
            Protocol::Http1 => (32, 1),
            _ => (4, 8),
        };
        c.duration = RUN;
        c.warmup = Duration::ZERO;
        c.timeout = Duration::from_secs(5);
        let control = Arc::new(RunControl::ignoring_interrupt());
        let ctl = control.clone();
        let thread = std::thread::spawn(move || run_load_with(c, ctl));
        Load { control, thread }
    }

    /// Waits until `n` requests completed (the run is under way).
    fn wait_done(self, n: u64) -> Load {
        let waited = eventually(Duration::from_secs(20), &format!("{n} requests done"), || {
            self.control.counts().done >= n || self.thread.is_finished()
        });
        let counts = self.control.counts();
        if waited.is_err() || counts.done < n {
            let ended = self.thread.is_finished().then(|| self.thread.join());
            panic!("{n} requests not done: {counts:?}; the run: {ended:?}");
        }
        self
    }

    /// Whether the run's window is still open.
    fn running(&self) -> bool {
        self.control.timeline().is_some_and(|t| Instant::now() < t.end)
    }

    fn finish(self) -> LoadReport {
        self.thread.join().expect("load thread").expect("load run")
    }
}

/// Everything a report says about failures, for assertion messages.
fn failures(r: &LoadReport) -> String {
    format!(
        "{} of {} failed ({:?}), {} unsent, {} reconnects, {} refused unprocessed and sent again",
        r.errors, r.requests, r.errors_by_kind, r.unsent, r.reconnects, r.retried_unprocessed
    )
}

/// Whether the run made the requests it was due to (open loop, no warmup), up to the ones it
/// could not send in time: `unsent` are requests due while their connection still waited on
/// an earlier answer when the run ended, never written, so neither lost nor failed. A
/// machine shared with builds falls behind now and then; every request sent is counted, and
/// a run must still have sent most of its schedule to prove anything.
fn ran_its_schedule(r: &LoadReport) -> bool {
    let due = (RATE * r.duration_s) as u64;
    r.requests + r.unsent >= due * 99 / 100 && r.requests >= due / 2
}

/// One counter (no labels) from a Prometheus text page.
fn counter(metrics: SocketAddr, name: &str) -> u64 {
    let (status, text) = admin_get(metrics, "/stats/prometheus");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn handover(protocol: Protocol) {
    let _turn = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let mesh = Mesh::start();
    mesh.write_config(&mesh.config(&[0, 1, 2], 0));
    let (mut old, _, _) = mesh.proxy("proxy-old", false);
    let load = Load::start(mesh.http, protocol);
    let load = load.wait_done(1000);
    // The order README gives: the successor first, on the same ports, then SIGTERM the old one.
    let (_new, _, new_metrics) = mesh.proxy("proxy-new", true);
    let served_before = counter(new_metrics, "ringmesh_downstream_rq_total");
    let signalled = Instant::now();
    old.terminate();
    let exited = eventually(DRAIN_TIMEOUT / 4, "the old proxy exits after draining", || {
        old.exited().is_some()
    });
    if let Err(e) = exited {
        panic!("{e}\n{}", mesh.logs());
    }
    let took = signalled.elapsed();
    let status = old.exited().expect("exited");
    assert!(status.success(), "the old proxy exited with {status}\n{}", old.log());
    assert!(
        load.running(),
        "the old proxy drained only after the run ended ({took:?}); the test proves nothing"
    );
    let report = load.finish();
    assert_eq!(report.errors, 0, "{}\n{}", failures(&report), mesh.logs());
    assert!(ran_its_schedule(&report), "{}", failures(&report));
    let served_after = counter(new_metrics, "ringmesh_downstream_rq_total");
    assert!(
        served_after > served_before + 1000,
        "the successor served {served_before} → {served_after}: it should have taken the rest of the run"
    );
    assert!(old.log().contains("worker drained"), "{}", old.log());
    eprintln!(
        "handover {protocol:?}: old proxy exited {took:?} after SIGTERM; {}",
        failures(&report)
    );
}

#[test]
fn sigterm_with_a_successor_loses_nothing_http1() {
    handover(Protocol::Http1);
}

#[test]
fn sigterm_with_a_successor_loses_nothing_h2c() {
    handover(Protocol::H2);
}

/// Clients opening a new connection for every request (`Connection: close`) as fast as they
/// are answered, from `threads` threads, until `stop`: (attempts, failures with their reasons).
fn connection_churn(
    addr: SocketAddr,
    threads: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, Vec<String>)>> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut attempts, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    attempts += 1;
                    let outcome = (|| -> Result<(), String> {
                        let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))
                            .map_err(|e| e.to_string())?;
                        s.write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n")
                            .map_err(|e| format!("write: {e}"))?;
                        let mut answer = Vec::new();
                        s.read_to_end(&mut answer).map_err(|e| format!("read: {e}"))?;
                        if answer.starts_with(b"HTTP/1.1 200") {
                            Ok(())
                        } else {
                            Err(format!(
                                "answer: {:?}",
                                String::from_utf8_lossy(&answer[..answer.len().min(80)])
                            ))
                        }
                    })();
                    if let Err(why) = outcome {
                        failed.push(why);
                    }
                }
                (attempts, failed)
            })
        })
        .collect()
}

#[test]
fn new_connections_during_the_handover_are_all_answered() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _turn = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let mesh = Mesh::start();
    mesh.write_config(&mesh.config(&[0, 1, 2], 0));
    let (mut old, _, old_metrics) = mesh.proxy("proxy-old", false);
    let (_new, _, new_metrics) = mesh.proxy("proxy-new", true);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = connection_churn(mesh.http, 8, stop.clone());
    // Both proxies take new connections (the kernel spreads them over the group's sockets).
    eventually(Duration::from_secs(10), "the old proxy takes new connections", || {
        counter(old_metrics, "ringmesh_downstream_cx_total") > 200
    })
    .unwrap();
    old.terminate();
    let exited = eventually(DRAIN_TIMEOUT / 2, "the old proxy exits", || old.exited().is_some());
    // Connections go on being opened for a moment after the old proxy left.
    let at_exit = counter(new_metrics, "ringmesh_downstream_cx_total");
    let after = eventually(Duration::from_secs(10), "more connections after the exit", || {
        counter(new_metrics, "ringmesh_downstream_cx_total") > at_exit + 200
    });
    stop.store(true, Ordering::Relaxed);
    let (mut attempts, mut failed) = (0, Vec::new());
    for c in clients {
        let (a, f) = c.join().expect("client thread");
        attempts += a;
        failed.extend(f);
    }
    exited.unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    after.unwrap();
    assert!(old.exited().is_some_and(|s| s.success()), "{}", old.log());
    assert!(
        failed.is_empty(),
        "{} of {attempts} connections failed: {failed:?}",
        failed.len()
    );
    eprintln!("connection churn through the handover: {attempts} connections, none failed");
}

#[test]
fn ten_config_pushes_lose_nothing() {
    let _turn = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let mesh = Mesh::start();
    mesh.write_config(&mesh.config(&[0, 1, 2], 0));
    let (_proxy, addrs, _) = mesh.proxy("proxy", false);
    let load = Load::start(mesh.http, Protocol::Http1);
    let load = load.wait_done(500);
    let sets: [&[usize]; 5] = [&[0, 1], &[1, 2], &[0, 2], &[2], &[0, 1, 2]];
    for generation in 1..=10 {
        let before = addrs.config_version();
        mesh.write_config(&mesh.config(sets[generation % sets.len()], generation));
        if let Err(e) = eventually(Duration::from_secs(10), &format!("push {generation} applied"), || {
            addrs.config_version() > before
        }) {
            panic!("{e}\n{}", mesh.logs());
        }
    }
    assert!(load.running(), "the ten pushes must land during the run");
    let report = load.finish();
    assert_eq!(report.errors, 0, "{}\n{}", failures(&report), mesh.logs());
    assert!(ran_its_schedule(&report), "{}", failures(&report));
    // The last push routes as it says.
    let r = Client::connect(mesh.http).get("svc.test", "/");
    assert_eq!(r.header("x-generation"), Some("10"));
}

#[test]
fn one_upstream_of_three_killed_with_retries_fails_under_a_thousandth() {
    let _turn = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let mut mesh = Mesh::start();
    mesh.write_config(&mesh.config(&[0, 1, 2], 0));
    let (_proxy, _, metrics) = mesh.proxy("proxy", false);
    let load = Load::start(mesh.http, Protocol::Http1);
    let load = load.wait_done(1500);
    mesh.echoes[1].0.kill();
    assert!(load.running(), "the kill must land during the run");
    let report = load.finish();
    let (_, page) = admin_get(metrics, "/stats/prometheus");
    // Every failure is explained: the proxy answered it with a 5xx it counted under its
    // response flag (e.g. `URX`: retries exhausted, `UF`: no connection); a failure the proxy
    // did not answer (reset, timeout, unanswered) would be a proxy defect.
    let e = report.errors_by_kind;
    assert_eq!(
        e.total(),
        e.status_5xx,
        "failures other than the proxy's own answers: {}",
        failures(&report)
    );
    let answered_5xx: u64 = page
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"5"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let flags: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"5"))
        .collect();
    assert_eq!(answered_5xx, e.status_5xx, "loadgen's 5xx vs the proxy's: {flags:#?}");
    assert!(
        report.errors * 1000 < report.requests,
        "{} — 0.1 % allowed; the proxy's 5xx: {flags:#?}",
        failures(&report)
    );
    assert!(ran_its_schedule(&report), "{}", failures(&report));
    let retries = counter(metrics, "ringmesh_upstream_rq_retry_total");
    assert!(
        retries > 0,
        "the kill must have cost retries, or the test proves nothing"
    );
    eprintln!(
        "kill -9 of one echo: {}; {retries} retries; 5xx by flag: {flags:#?}",
        failures(&report)
    );
}

/// An upstream that answers `/slow` only when the test says so (or after 10 s), and every
/// other path at once.
fn gated_upstream() -> (Upstream, mpsc::Sender<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let up = Upstream::start("gated", move |r| {
        if r.target == "/slow" {
            let _ = rx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(Duration::from_secs(10));
        }
        Reply::ok("done")
    });
    (up, tx)
}

fn vs() -> String {
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.test]\n  http:\n  - route: [{destination: {host: svc.test}}]\n".to_owned()
}

/// Asks the in-process proxy to drain and waits until its worker began: its listener's only
/// socket closed (connecting is refused), then `probe`, an idle HTTP/2 connection, got its
/// GOAWAY (sent once the worker is draining; the socket closes a moment before).
fn drain(p: &TestProxy, probe: &H2Client) {
    let mut c = Client::connect(p.admin());
    c.send(b"POST /drain_listeners HTTP/1.1\r\nHost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    assert_eq!(c.response().expect("drain answer").status, 200);
    let http = p.http();
    eventually(Duration::from_secs(5), "the listener closed", || {
        std::net::TcpStream::connect(http).is_err()
    })
    .unwrap();
    let send = probe.sender();
    let goaway = probe.block_on(async move {
        tokio::time::timeout(Duration::from_secs(5), async {
            while send.clone().ready().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    });
    assert!(
        goaway.is_ok(),
        "no GOAWAY within 5 s: the worker did not begin draining"
    );
}

fn draining_http1_says_close_and_closes_idle_connections(io: IoMode) {
    let (up, release) = gated_upstream();
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(up.addr, &[])]),
        vs(),
    ]);
    let mut idle = Client::connect(p.http());
    let mut busy = Client::connect(p.http());
    let mut local = Client::connect(p.http());
    for c in [&mut idle, &mut busy, &mut local] {
        let r = c.get("svc.test", "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "kept alive before the drain");
    }
    let mut in_flight = Client::connect(p.http());
    in_flight.send(b"GET /slow HTTP/1.1\r\nHost: svc.test\r\n\r\n");
    eventually(Duration::from_secs(5), "the slow request reached the upstream", || {
        up.count() == 4
    })
    .unwrap();
    let probe = H2Client::connect(p.http());
    drain(&p, &probe);
    // A client still busy on its keep-alive connection is answered, and told to close.
    let r = busy.get("svc.test", "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        busy.closed_within(Duration::from_secs(5)),
        "closed after the answer that said so"
    );
    // So is the proxy's own answer (no route: 404).
    let r = local.get("nothing.test", "/");
    assert_eq!((r.status, r.header("connection")), (404, Some("close")));
    assert!(local.closed_within(Duration::from_secs(5)));
    // The request in flight when the drain began finishes, and says close too.
    release.send(()).expect("release");
    let r = in_flight.response().expect("the request in flight is answered");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    // The connection idle all along is closed once the grace is over (the proxy exits).
    let began = Instant::now();
    assert!(
        idle.closed_within(Duration::from_secs(10)),
        "an idle keep-alive connection is closed by the drain"
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "idle connections wait the grace, not the drain timeout"
    );
}

fn draining_http2_sends_goaway_and_finishes_the_stream(io: IoMode) {
    let (up, release) = gated_upstream();
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(up.addr, &[])]),
        vs(),
    ]);
    let mut c = H2Client::connect(p.http());
    assert_eq!(c.get("svc.test", "/").status, 200);
    let send = c.sender();
    // The stream's task is handed out unawaited on purpose: it is awaited after the drain.
    #[allow(clippy::async_yields_async)]
    let slow = c.block_on(async move {
        let mut send = send.ready().await.expect("ready");
        let req = http::Request::get("http://svc.test/slow").body(()).expect("request");
        let (resp, _) = send.send_request(req, true).expect("send");
        let task = tokio::spawn(async move { ringmesh_tests::h2client::read_response(resp.await?).await });
        ringmesh_testkit::eventually_async(Duration::from_secs(5), "the slow stream reached the upstream", || {
            up.count() == 2
        })
        .await
        .unwrap();
        task
    });
    drain(&p, &c);
    release.send(()).expect("release");
    let sender = c.sender();
    let (resp, goaway) = c.block_on(async move {
        let resp = slow.await.expect("task");
        // The GOAWAY came before (or with) the end: the connection takes no new stream.
        let goaway = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sender.clone().ready().await {
                    Err(e) => return e,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .expect("no GOAWAY within 5 s");
        (resp, goaway)
    });
    let resp = resp.expect("the stream in flight completes");
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"done");
    assert!(goaway.is_go_away() && goaway.is_remote(), "{goaway:?}");
    assert_eq!(goaway.reason(), Some(h2::Reason::NO_ERROR), "{goaway:?}");
}

/// An upstream that echoes every read back, on each connection.
fn echo_upstream() -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn draining_lets_a_tcp_connection_run_on(io: IoMode) {
    use std::io::{Read, Write};
    let up = echo_upstream();
    let listener =
        "  - name: db\n    address: 127.0.0.1:0\n    protocol: TCP\n    destination: {host: db.test, port: 5432}\n";
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.test]\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{tcp: {}}}}}\n",
        up.port()
    );
    let p = TestProxy::start(&[proxy_config(io, listener, "  limits: {drainTimeout: 30s}\n"), se]);
    let mut tcp = std::net::TcpStream::connect(p.listener("db")).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut echo = |bytes: &[u8]| {
        tcp.write_all(bytes).expect("write");
        let mut got = vec![0u8; bytes.len()];
        tcp.read_exact(&mut got).expect("echoed");
        assert_eq!(got, bytes);
    };
    echo(b"before");
    let mut idle = Client::connect(p.http());
    assert_eq!(idle.get("nothing.test", "/").status, 404);
    let probe = H2Client::connect(p.http());
    drain(&p, &probe);
    // Past the idle grace the worker is still there for the TCP connection (its idle HTTP/1.1
    // connection, closed only when the worker exits, stays open) ...
    assert!(
        !idle.closed_within(Duration::from_secs(2)),
        "the worker left while a TCP connection was open"
    );
    echo(b"during the drain");
    // ... and once the TCP connection ends, the worker closes the rest and exits.
    drop(tcp);
    assert!(
        idle.closed_within(Duration::from_secs(10)),
        "the drain ended once the TCP connection closed"
    );
}

both_io!(
    draining_lets_a_tcp_connection_run_on,
    draining_http1_says_close_and_closes_idle_connections,
    draining_http2_sends_goaway_and_finishes_the_stream
);
