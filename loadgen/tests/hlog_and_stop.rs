//! The interval log (`--hlog`) and stopping a run early, against a real echo on loopback:
//! the log parses back with hdrhistogram's own reader and its intervals add up to the run;
//! a stopped run ends promptly and reports what it measured up to the stop. Each run is
//! bounded by the generator itself (≤ 3 s), or by the stop.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use ringmesh_loadgen::{hlog, run_load, run_load_with, spawn_echo, EchoConfig, LoadConfig, RunControl};
use ringmesh_testkit::eventually;

fn config(addr: std::net::SocketAddr) -> LoadConfig {
    let mut c = LoadConfig::new(&format!("http://{addr}/")).unwrap();
    c.threads = 2;
    c.connections = 4;
    c.rate = 600.0;
    c.duration = Duration::from_millis(1500);
    c.warmup = Duration::from_millis(200);
    c.timeout = Duration::from_secs(2);
    c
}

#[test]
fn interval_log_parses_back_and_sums_to_the_request_count() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    let mut c = config(echo.local_addr());
    c.hlog_interval = Some(Duration::from_millis(250));
    let r = run_load(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.summary());
    let series = r.intervals.as_ref().expect("intervals recorded");
    let text = hlog::render(series, "test run").unwrap();

    let mut d = Deserializer::new();
    let mut total = 0u64;
    let mut merged: Histogram<u64> = Histogram::new(3).unwrap();
    let mut starts = Vec::new();
    let (mut saw_start, mut saw_base) = (false, false);
    for entry in IntervalLogIterator::new(&text) {
        match entry.expect("log parses") {
            LogEntry::StartTime(_) => saw_start = true,
            LogEntry::BaseTime(_) => saw_base = true,
            LogEntry::Interval(ih) => {
                assert_eq!(ih.duration(), Duration::from_millis(250));
                starts.push(ih.start_timestamp());
                let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ih.encoded_histogram())
                    .expect("base64");
                let h: Histogram<u64> = d.deserialize(&mut raw.as_slice()).expect("histogram decodes");
                total += h.len();
                merged.add(&h).unwrap();
            }
        }
    }
    assert!(saw_start && saw_base);
    // 1.5 s in 250 ms intervals: 6 intervals, plus possibly one for responses that complete
    // just after the window closes.
    assert!((6..=7).contains(&starts.len()), "{} intervals", starts.len());
    assert_eq!(starts[1], Duration::from_millis(250));
    assert_eq!(total, r.requests, "interval counts vs the run's request count");
    assert_eq!(total, r.ok);
    assert_eq!(merged.max(), r.histogram.max());
    let s = String::from_utf8(text).unwrap();
    assert!(s.contains("#[Histogram log format version 1.3]\n"), "{s}");
    assert!(s.contains("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"));
}

#[test]
fn a_stopped_run_ends_early_with_what_it_measured() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    let mut c = config(echo.local_addr());
    c.duration = Duration::from_secs(20);
    c.hlog_interval = Some(Duration::from_secs(1));
    let control = Arc::new(RunControl::ignoring_interrupt());
    // Stopped once the run has sent its warm-up (200 ms at 600/s: 120 requests) and about 1 s
    // of its window (600 more), as a user pressing Ctrl-C would.
    let stopper = {
        let control = control.clone();
        std::thread::spawn(move || {
            let sent = eventually(Duration::from_secs(10), "720 requests done", || {
                control.counts().done >= 720
            });
            control.stop();
            sent
        })
    };
    let began = Instant::now();
    let r = run_load_with(c, control.clone()).unwrap();
    stopper.join().unwrap().unwrap();
    assert!(began.elapsed() < Duration::from_secs(3), "took {:?}", began.elapsed());
    assert!(r.interrupted);
    // Stopped about 1 s into the window (after 200 ms of warmup).
    assert!((0.8..=1.3).contains(&r.duration_s), "window {}", r.duration_s);
    assert!(r.ok > 400 && r.ok < 900, "{}", r.summary());
    assert!(r.met_target(), "rate over the shortened window: {}", r.summary());
    assert_eq!(r.unsent, 0, "requests after the stop are not 'unsent'");
    assert_eq!(r.intervals.as_ref().unwrap().total_count(), r.ok);
    assert!(r.summary().contains("INTERRUPTED"));
    let live = control.counts();
    assert_eq!(live.done, r.requests + r.warmup_requests);
}
