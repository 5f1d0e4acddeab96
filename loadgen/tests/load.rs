//! The load generator against real sockets on loopback: open-loop latency accuracy, the
//! coordinated-omission correction, `.hgrm`/JSON agreement, and failures counted by kind
//! instead of as latency. Each run is short (≤ 3.5 s) and bounded by the generator itself.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmesh_loadgen::{hgrm_bracket, parse_hgrm, run_load, spawn_echo, EchoConfig, LoadConfig, LoadReport};

fn config(addr: SocketAddr, path: &str) -> LoadConfig {
    let mut c = LoadConfig::new(&format!("http://{addr}{path}")).unwrap();
    c.threads = 1;
    c.connections = 4;
    c.rate = 400.0;
    c.duration = Duration::from_millis(1500);
    c.warmup = Duration::from_millis(300);
    c.timeout = Duration::from_secs(2);
    c
}

#[test]
fn fixed_2ms_upstream_reads_as_2ms_at_p50() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig {
        delay: Duration::from_millis(2),
        ..EchoConfig::default()
    })
    .unwrap();
    common::assert_2ms_p50(&echo, || {
        let mut c = config(echo.local_addr(), "/");
        c.rate = 500.0;
        c.connections = 8;
        c.duration = Duration::from_secs(2);
        c
    });
}

/// An upstream that answers at once except for one 500 ms pause (think GC or a stalled disk)
/// that starts `stall_after` into the run and holds every response until it ends.
struct StallingServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl StallingServer {
    fn start(stall_after: Duration, stall_for: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // (first request seen, stall end once the stall has begun)
        let state: Arc<Mutex<(Option<Instant>, Option<Instant>)>> = Arc::default();
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let state = state.clone();
                std::thread::spawn(move || {
                    conn.set_nodelay(true).unwrap();
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let now = Instant::now();
                            let hold_until = {
                                let mut st = state.lock().unwrap();
                                let first = *st.0.get_or_insert(now);
                                if st.1.is_none() && now >= first + stall_after {
                                    st.1 = Some(now + stall_for);
                                }
                                st.1.filter(|&end| now < end)
                            };
                            if let Some(until) = hold_until {
                                // The stall under test, not synchronization.
                                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                            }
                            if conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .is_err()
                            {
                                return;
                            }
                        }
                        match conn.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                });
            }
        });
        Self { addr, stop }
    }
}

impl Drop for StallingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

#[test]
fn a_500ms_stall_shows_in_p99_because_latency_counts_from_due_time() {
    let _g = common::timing_lock();
    let server = StallingServer::start(Duration::from_millis(1200), Duration::from_millis(500));
    let mut c = config(server.addr, "/");
    c.rate = 1000.0;
    c.connections = 10;
    c.warmup = Duration::from_millis(200);
    c.duration = Duration::from_secs(3);
    let r = run_load(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.summary());
    assert!(
        r.met_target(),
        "the generator catches up after the stall: {}",
        r.summary()
    );
    // ~500 of 3000 requests were due during the stall and waited up to 500 ms for it:
    // p99 lands near 480 ms. A generator that measured from the actual send would see ten
    // slow requests (one per connection) and report p99 of well under a millisecond.
    assert!(r.latency_us.p99 >= 250_000, "{}", r.summary());
    assert!(
        r.latency_us.max >= 450_000 && r.latency_us.max < 1_500_000,
        "{}",
        r.summary()
    );
    assert!(r.latency_us.p50 < 50_000, "{}", r.summary());
}

fn json_percentile(json: &serde_json::Value, key: &str) -> f64 {
    json["latency_us"][key].as_u64().unwrap() as f64 / 1000.0
}

#[test]
fn hgrm_file_parses_and_agrees_with_json() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig {
        delay: Duration::from_micros(500),
        delay_jitter: Duration::from_micros(400),
        ..EchoConfig::default()
    })
    .unwrap();
    let r = run_load(config(echo.local_addr(), "/")).unwrap();
    assert!(r.ok > 500, "{}", r.summary());

    // Removed when `dir` drops (here, or on a panic on the way).
    let dir = tempfile::Builder::new()
        .prefix("ringmesh-loadgen-test-")
        .tempdir()
        .unwrap();
    let hgrm_path = dir.path().join("run.hgrm");
    let mut f = std::fs::File::create(&hgrm_path).unwrap();
    r.write_hgrm(&mut f).unwrap();
    drop(f);
    let text = std::fs::read_to_string(&hgrm_path).unwrap();
    drop(dir);

    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    for key in ["requests", "errors", "duration_s", "rate_rps"] {
        assert!(json.get(key).is_some(), "json lacks {key}");
    }
    let rows = parse_hgrm(&text).unwrap();
    assert!(rows.len() > 20, "{text}");
    assert_eq!(rows.last().unwrap().total_count, json["ok"].as_u64().unwrap());
    for (q, key) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")] {
        let (lo, hi) = hgrm_bracket(&rows, q).unwrap();
        let v = json_percentile(&json, key);
        assert!(
            lo - 0.0005 <= v && v <= hi + 0.0005,
            "{key}: json {v} ms vs hgrm [{lo}, {hi}]"
        );
    }
    let max_line = text.lines().find(|l| l.starts_with("#[Max")).unwrap();
    let max_ms: f64 = max_line
        .split('=')
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((max_ms - json_percentile(&json, "max")).abs() < 0.0015, "{max_line}");
    // Jitter makes the distribution wide enough to be meaningful.
    assert!(r.latency_us.p99 > r.latency_us.p50);
}

fn assert_no_latency(r: &LoadReport) {
    assert_eq!(r.ok, 0, "{}", r.summary());
    assert_eq!(r.histogram.len(), 0, "errors must not be recorded as latency");
    assert_eq!(r.latency_us.p50, 0);
    assert_eq!(r.latency_us.max, 0);
    assert_eq!(r.requests, r.errors);
}

#[test]
fn connection_refused_counts_as_connect_errors() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = config(port, "/");
    c.rate = 200.0;
    c.duration = Duration::from_millis(500);
    c.warmup = Duration::ZERO;
    let r = run_load(c).unwrap();
    assert_no_latency(&r);
    assert!(r.errors_by_kind.connect >= 90, "{}", r.summary());
    assert_eq!(r.errors, r.errors_by_kind.connect);
    assert!(!r.met_target(), "a run with no responses is under target");
    assert_eq!(r.rate_rps, 0.0);
}

/// A server that reads each request, writes `answer` (maybe nothing, maybe part of a
/// response), then closes the connection with a TCP reset (SO_LINGER 0).
fn resetting_server(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            let mut tmp = [0u8; 1024];
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.read(&mut tmp);
            let _ = conn.write_all(answer);
            let sock = socket2::SockRef::from(&conn);
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(conn);
        }
    });
    (addr, stop)
}

/// A request written and met by a reset before any byte of its answer is `unanswered` (the
/// keep-alive race's kind), never latency.
#[test]
fn resets_before_any_answer_count_as_unanswered() {
    let (addr, stop) = resetting_server(b"");
    let mut c = config(addr, "/");
    c.rate = 200.0;
    c.duration = Duration::from_millis(500);
    c.warmup = Duration::ZERO;
    let r = run_load(c).unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr);
    assert_no_latency(&r);
    assert!(r.errors_by_kind.unanswered >= 90, "{}", r.summary());
    assert_eq!(r.errors, r.errors_by_kind.unanswered + r.errors_by_kind.connect);
}

/// A reset after part of the answer is `reset`.
#[test]
fn resets_mid_answer_count_as_reset_errors() {
    let (addr, stop) = resetting_server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial");
    let mut c = config(addr, "/");
    c.rate = 200.0;
    c.duration = Duration::from_millis(500);
    c.warmup = Duration::ZERO;
    let r = run_load(c).unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr);
    assert_no_latency(&r);
    assert!(r.errors_by_kind.reset >= 90, "{}", r.summary());
    assert_eq!(r.errors, r.errors_by_kind.reset + r.errors_by_kind.connect);
}

#[test]
fn status_errors_are_counted_by_class_not_as_latency() {
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    let mut c = config(echo.local_addr(), "/status/503");
    c.rate = 200.0;
    c.duration = Duration::from_millis(500);
    c.warmup = Duration::ZERO;
    let r = run_load(c.clone()).unwrap();
    assert_no_latency(&r);
    assert_eq!(r.errors_by_kind.status_5xx, r.errors, "{}", r.summary());
    assert!((95..=105).contains(&r.errors), "{}", r.summary());
    // The server did answer: the achieved rate counts answered requests.
    assert!(r.met_target(), "{}", r.summary());

    c.target.path = "/status/404".into();
    let r = run_load(c).unwrap();
    assert_no_latency(&r);
    assert_eq!(r.errors_by_kind.status_4xx, r.errors);

    // A 10% error rate: errors and latency samples partition the requests.
    let flaky = spawn_echo(EchoConfig {
        error_rate: 0.1,
        ..EchoConfig::default()
    })
    .unwrap();
    let mut c = config(flaky.local_addr(), "/");
    c.rate = 1000.0;
    c.duration = Duration::from_secs(1);
    c.warmup = Duration::ZERO;
    let r = run_load(c).unwrap();
    assert_eq!(r.ok + r.errors_by_kind.status_5xx, r.requests);
    assert_eq!(r.histogram.len(), r.ok);
    assert!((40..=170).contains(&r.errors_by_kind.status_5xx), "{}", r.summary());
}

#[test]
fn silent_and_garbage_servers_count_as_timeout_and_malformed() {
    // Accepts and reads, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(64).flatten() {
            held.push(c);
        }
        // Holds the connections open and silent: the behaviour under test, not synchronization.
        std::thread::sleep(Duration::from_secs(5));
    });
    let mut c = config(silent_addr, "/");
    c.rate = 40.0;
    c.connections = 2;
    c.duration = Duration::from_millis(500);
    c.warmup = Duration::ZERO;
    c.timeout = Duration::from_millis(200);
    let t = Instant::now();
    let r = run_load(c).unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "bounded by the timeout");
    assert_no_latency(&r);
    assert!(r.errors_by_kind.timeout >= 2, "{}", r.summary());

    // Answers with something that is not HTTP.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in garbage.incoming().take(200) {
            let Ok(mut conn) = conn else { continue };
            let mut tmp = [0u8; 1024];
            let _ = conn.read(&mut tmp);
            let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.0\r\n\r\n");
        }
    });
    let mut c = config(garbage_addr, "/");
    c.rate = 100.0;
    c.duration = Duration::from_millis(500);
    c.warmup = Duration::ZERO;
    let r = run_load(c).unwrap();
    assert_no_latency(&r);
    assert!(r.errors_by_kind.malformed >= 40, "{}", r.summary());
}

#[test]
fn closed_loop_measures_throughput_and_post_bodies_round_trip() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    let mut c = config(echo.local_addr(), "/");
    c.rate = 0.0;
    c.method = "POST".into();
    c.body_size = 1000;
    c.duration = Duration::from_secs(1);
    c.warmup = Duration::from_millis(200);
    let r = run_load(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.summary());
    assert!(r.rate_rps > 1000.0, "{}", r.summary());
    assert!(r.target_rate_rps.is_none() && r.met_target());
    assert_eq!(r.histogram.len(), r.ok);
}
