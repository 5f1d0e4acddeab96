//! Whether a run was healthy, as the summary, the JSON and the exit code say it: failed
//! requests never pass for a healthy run, an overloaded run reports what it did, and the exit
//! codes are the documented ones. Runs are short (≤ 1 s) and bounded by the generator.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use ringmesh_loadgen::{run_load, spawn_echo, EchoConfig, LoadConfig, RunProblem, EXIT_UNHEALTHY};

fn short(addr: SocketAddr, path: &str) -> LoadConfig {
    let mut c = LoadConfig::new(&format!("http://{addr}{path}")).unwrap();
    c.connections = 2;
    c.rate = 200.0;
    c.duration = Duration::from_millis(400);
    c.warmup = Duration::from_millis(100);
    c.timeout = Duration::from_secs(2);
    c
}

fn loadgen(cwd: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringmesh-loadgen"))
        .current_dir(cwd)
        .args(args)
        .args(["--no-progress", "-c", "2", "--duration", "0.4s", "--warmup", "0.1s"])
        .output()
        .unwrap()
}

#[test]
fn a_run_whose_requests_all_fail_is_not_healthy() {
    let _g = common::timing_lock();
    let failing = spawn_echo(EchoConfig {
        error_rate: 1.0,
        ..EchoConfig::default()
    })
    .unwrap();
    let r = run_load(short(failing.local_addr(), "/")).unwrap();
    let s = r.summary();
    assert!(r.requests > 50 && r.ok == 0, "{s}");
    assert_eq!(r.success_rate, 0.0);
    assert!(!r.healthy, "{s}");
    assert_eq!(
        r.problems(),
        vec![RunProblem::TooManyErrors {
            error_rate: 1.0,
            max: 0.0
        }]
    );
    // The summary leads with the success rate and never shows a latency for nobody.
    let second_line = s.lines().nth(1).unwrap();
    assert!(second_line.contains("success   0.00%"), "{s}");
    assert!(s.contains("none: no request succeeded"), "{s}");
    assert!(s.contains("!!! FAILED"), "{s}");
    // Failures' latencies are kept, apart from the (empty) success histogram.
    assert_eq!(r.histogram.len(), 0);
    assert_eq!(r.error_histogram.len(), r.errors);
    assert!(r.error_latency_us.p50 > 0 && r.error_latency_us.max >= r.error_latency_us.p50);
    // And so does the JSON.
    let json = r.to_json();
    assert!(json.trim_start().starts_with("{\n  \"success_rate\": 0.0"), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["healthy"], false);
    assert!(v["error_latency_us"]["p50"].as_u64().unwrap() > 0);

    // A tolerated error rate makes the same run healthy.
    let mut c = short(failing.local_addr(), "/");
    c.max_error_rate = 1.0;
    assert!(run_load(c).unwrap().healthy);
}

#[test]
fn a_healthy_run_is_healthy() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    let r = run_load(short(echo.local_addr(), "/")).unwrap();
    assert!(r.healthy && r.problems().is_empty(), "{}", r.summary());
    assert_eq!(r.success_rate, 1.0);
    assert_eq!(r.error_histogram.len(), 0);
    assert!(r.summary().lines().nth(1).unwrap().contains("success   100.00%"));
}

#[test]
fn an_overloaded_run_reports_what_it_sent_and_received() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    let mut c = short(echo.local_addr(), "/");
    // Far beyond what two connections can carry: the schedule falls behind in the warmup.
    c.rate = 1_000_000.0;
    c.duration = Duration::from_millis(500);
    c.warmup = Duration::from_millis(200);
    let r = run_load(c).unwrap();
    let s = r.summary();
    assert!(r.requests > 100, "responses in the window are counted: {s}");
    assert_eq!(r.ok, r.requests, "{s}");
    assert!(r.late_from_warmup > 0, "{s}");
    // The achieved rate is what came back over the window, as the progress line shows.
    let expected = r.requests as f64 / r.duration_s;
    assert!((r.rate_rps - expected).abs() < 1e-6 * expected, "{s}");
    assert!(r.rate_rps > 100.0, "{s}");
    assert!(r.unsent > 0, "{s}");
    assert!(matches!(r.problems()[..], [RunProblem::UnderTarget { .. }]), "{s}");
    assert!(s.contains("UNDER TARGET RATE"), "{s}");
}

#[test]
fn exit_codes_follow_the_run_s_health_and_json_goes_to_stdout() {
    let _g = common::timing_lock();
    let cwd = tempfile::tempdir().unwrap();
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    let url = format!("http://{}/", echo.local_addr());
    let not_found = format!("http://{}/status/404", echo.local_addr());

    let ok = loadgen(cwd.path(), &[&url, "--rate", "200"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));

    // Every request answered 404: not healthy, exit 1, and the reason on stderr.
    let failed = loadgen(cwd.path(), &[&not_found, "--rate", "200"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(i32::from(EXIT_UNHEALTHY)), "{stderr}");
    assert!(
        stderr.contains("NOT healthy") && stderr.contains("max-error-rate"),
        "{stderr}"
    );
    let tolerated = loadgen(cwd.path(), &[&not_found, "--rate", "200", "--max-error-rate", "1"]);
    assert_eq!(tolerated.status.code(), Some(0));

    // Under target: exit 1 as well, as the README says.
    let overloaded = loadgen(cwd.path(), &[&url, "--rate", "1000000"]);
    let stderr = String::from_utf8_lossy(&overloaded.stderr);
    assert_eq!(overloaded.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("target rate"), "{stderr}");

    // Bad flags: exit 2.
    let bad = loadgen(cwd.path(), &[&url, "--max-error-rate", "2"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max-error-rate"));

    // `--json -`: the JSON alone on stdout, the summary on stderr, no file named `-`.
    let piped = loadgen(cwd.path(), &[&url, "--rate", "200", "--json", "-"]);
    assert_eq!(piped.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&piped.stdout).expect("stdout is one JSON document");
    assert_eq!(v["success_rate"], 1.0);
    assert!(String::from_utf8_lossy(&piped.stderr).contains("success   100.00%"));
    assert!(!cwd.path().join("-").exists(), "a file named - was written");
}

#[test]
fn echo_help_describes_the_echo() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh-echo"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("upstream test server"), "{help}");
    assert!(!help.to_lowercase().contains("load generator"), "{help}");
    assert!(help.contains("--takeover"), "{help}");
}

#[test]
fn a_second_echo_on_an_address_in_use_is_refused_unless_taking_over() {
    let first = spawn_echo(EchoConfig {
        workers: 2,
        ..EchoConfig::default()
    })
    .unwrap();
    let addr = first.local_addr();
    let err = spawn_echo(EchoConfig::new(addr)).expect_err("a second echo on a used address");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("already in use"),
        "{msg}"
    );
    let successor = spawn_echo(EchoConfig {
        takeover: true,
        ..EchoConfig::new(addr)
    })
    .unwrap();
    assert_eq!(successor.local_addr(), addr);
    // The binary says the same, naming the address.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmesh-echo"))
        .args(["--listen", &addr.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = ringmesh_testkit::eventually(Duration::from_secs(10), "the second ringmesh-echo to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if let Err(e) = exited {
        let _ = child.kill();
        panic!("{e}: a second ringmesh-echo on {addr} started instead of refusing");
    }
    let status = status.expect("exited");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("--takeover"),
        "{stderr}"
    );
}
